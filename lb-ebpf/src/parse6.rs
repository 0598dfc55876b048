//! IPv6 header parsing: the fixed header, the extension headers before the upper-layer one,
//! and the TCP/UDP ports; what `parse` is for IPv4.
//!
//! Extension headers walked: hop-by-hop options, routing, destination options (all three
//! `(hdr_ext_len + 1) * 8` bytes long) and fragment (8 bytes). A first fragment (offset 0)
//! carries the upper-layer header and is balanced like a whole packet; a later one carries
//! none, so no flow can be matched on it: it is passed, as IPv4's are (`PASS_FRAGMENT`). At
//! most `IPV6_MAX_EXT` headers are walked, ending within `MAX_L4_OFF` bytes of the frame's
//! start (the verifier needs the offset bounded): a packet past either is passed
//! (`PASS_IPV6_EXT`). Lengths come from the payload length, never from the frame's.
//!
//! Nothing is dropped here: like `parse`, a malformed packet becomes the balancer's business
//! (`l4_checked`) only once it turns out to be for a service or a NAT real server's.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, IPV6_MAX_EXT, cnt, proto};

use crate::{
    Verdict,
    parse::{ETH_LEN, ptr_at},
};

pub const ETH_P_IPV6: u16 = 0x86dd;
/// The fixed IPv6 header.
pub const IP6_LEN: usize = 40;
/// Where the upper-layer header may start at the latest (frame offset).
pub const MAX_L4_OFF: usize = 512;

/// Extension header numbers.
pub const NH_HOPOPTS: u8 = 0;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_DSTOPTS: u8 = 60;

/// What the balancer needs to know about an IPv6 TCP/UDP/ICMPv6 packet.
pub struct Packet6 {
    /// The frame's start (Ethernet header).
    pub eth: *mut u8,
    /// The fixed IPv6 header (40 bytes, bounds-checked).
    pub ip: *mut [u8; IP6_LEN],
    pub saddr: Addr,
    pub daddr: Addr,
    /// Ports, network order (0 for ICMPv6).
    pub sport: u16,
    pub dport: u16,
    /// The upper-layer protocol (TCP, UDP, ICMPv6).
    pub proto: u8,
    /// Offset of the upper-layer header in the frame (past any extension headers).
    pub l4_off: usize,
    /// The payload length (host order): the packet is `IP6_LEN + payload_len` bytes.
    pub payload_len: u16,
    pub hop_limit: u8,
}

impl Packet6 {
    /// The IPv6 packet's length (what IPVS counts as bytes, as IPv4's total length).
    #[inline(always)]
    pub fn ip_len(&self) -> u16 {
        self.payload_len.wrapping_add(IP6_LEN as u16)
    }
}

/// Reads an address at `off` (bytes 8 or 24 of the header) word by word.
#[inline(always)]
fn addr_at(h: &[u8; IP6_LEN], off: usize) -> Addr {
    Addr {
        w: [
            u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]]),
            u32::from_ne_bytes([h[off + 4], h[off + 5], h[off + 6], h[off + 7]]),
            u32::from_ne_bytes([h[off + 8], h[off + 9], h[off + 10], h[off + 11]]),
            u32::from_ne_bytes([h[off + 12], h[off + 13], h[off + 14], h[off + 15]]),
        ],
    }
}

/// Parses Ethernet (already known to carry IPv6) + IPv6 + extension headers + ports. `Err`
/// carries the verdict for frames the balancer does not handle.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet6, Verdict> {
    let malformed = || Verdict::Pass(cnt::PASS_MALFORMED);
    let eth: *mut u8 = ptr_at(ctx, 0).map_err(|_| Verdict::Pass(cnt::PASS_MALFORMED))?;
    let ip: *mut [u8; IP6_LEN] = ptr_at(ctx, ETH_LEN).map_err(|_| malformed())?;
    // SAFETY: bounds-checked by ptr_at.
    let h = unsafe { &*ip };
    if h[0] >> 4 != 6 {
        return Err(Verdict::Pass(cnt::PASS_MALFORMED));
    }
    let payload_len = u16::from_be_bytes([h[4], h[5]]);
    let mut next = h[6];
    let hop_limit = h[7];
    let daddr = addr_at(h, 24);
    // An IPv4-mapped destination would look up IPv4 services (the keys share one space);
    // such a packet is no IPv6 host's business anyway (RFC 4291 2.5.5.2: not on the wire).
    if daddr.is_v4() {
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    }
    let saddr = addr_at(h, 8);
    let end = ETH_LEN + IP6_LEN + payload_len as usize;
    let mut off = ETH_LEN + IP6_LEN;
    let mut i = 0;
    loop {
        if next == proto::TCP || next == proto::UDP || next == proto::ICMPV6 {
            break;
        }
        if i >= IPV6_MAX_EXT {
            return Err(Verdict::Pass(cnt::PASS_IPV6_EXT));
        }
        i += 1;
        let len = match next {
            NH_HOPOPTS | NH_ROUTING | NH_DSTOPTS => {
                let e: *const [u8; 2] = ptr_at(ctx, off).map_err(|_| malformed())?;
                // SAFETY: bounds-checked by ptr_at.
                let e = unsafe { *e };
                next = e[0];
                (e[1] as usize + 1) * 8
            }
            NH_FRAGMENT => {
                let e: *const [u8; 4] = ptr_at(ctx, off).map_err(|_| malformed())?;
                // SAFETY: bounds-checked by ptr_at.
                let e = unsafe { *e };
                // Offset in 8-byte units in the top 13 bits; a later fragment has no
                // upper-layer header.
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    return Err(Verdict::Pass(cnt::PASS_FRAGMENT));
                }
                next = e[0];
                8
            }
            // ESP, AH, no next header, another protocol: not a service's.
            _ => return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE)),
        };
        off += len;
        // The header must lie within the payload (never read past what the packet claims)
        // and the walk within what the verifier can bound.
        if off > end {
            return Err(Verdict::Pass(cnt::PASS_MALFORMED));
        }
        if off > MAX_L4_OFF {
            return Err(Verdict::Pass(cnt::PASS_IPV6_EXT));
        }
    }
    // Bounded for the verifier (checked above on every step).
    let l4 = off & (MAX_L4_OFF * 2 - 1);
    let (mut sport, mut dport) = (0, 0);
    if next != proto::ICMPV6 {
        // Ports only from bytes the packet claims, and only if the frame has them.
        if end < l4 + 4 {
            return Err(Verdict::Pass(cnt::PASS_MALFORMED));
        }
        let ports: *mut [u16; 2] =
            ptr_at(ctx, l4).map_err(|_| Verdict::Pass(cnt::PASS_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        [sport, dport] = unsafe { *ports };
    }
    Ok(Packet6 {
        eth,
        ip,
        saddr,
        daddr,
        sport,
        dport,
        proto: next,
        l4_off: l4,
        payload_len,
        hop_limit,
    })
}

/// The `Packet6` `lb_xdp6` parsed, again in `lb_new6` (after a tail call only the context
/// survives): pointers re-derived and bounds-checked, fields from the hand-over (the frame is
/// unchanged since). The L4 offset is masked so the verifier sees it bounded.
#[inline(always)]
pub fn from_pending(ctx: &XdpContext, p: &crate::v6::Pending6) -> Result<Packet6, Verdict> {
    let eth: *mut u8 = ptr_at(ctx, 0).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let ip: *mut [u8; IP6_LEN] =
        ptr_at(ctx, ETH_LEN).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    Ok(Packet6 {
        eth,
        ip,
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        l4_off: p.l4_off as usize & (MAX_L4_OFF * 2 - 1),
        payload_len: p.payload_len,
        hop_limit: p.hop_limit,
    })
}

/// Whether `a` may be a packet's source: not unspecified (::), loopback (::1), multicast
/// (ff00::/8) or IPv4-mapped; the kernel's `ipv6_rcv` and routing drop those.
#[inline(always)]
pub fn martian_source(a: &Addr) -> bool {
    let first = a.w[0].to_ne_bytes()[0];
    first == 0xff
        || a.is_v4()
        || (a.w[0] == 0 && a.w[1] == 0 && a.w[2] == 0 && (a.w[3] == 0 || a.w[3] == 1u32.to_be()))
}

/// The checks of the kernel's IPv6 input made only on a packet the balancer is about to
/// forward: the payload fits in the frame (so a packet claiming more than it carries is never
/// forwarded, counted or tunnelled by its claim) and holds the whole TCP or UDP header, the
/// source is a host's, and a UDP checksum is present (0 is invalid in IPv6, RFC 8200 8.1:
/// the kernel drops it). Returns the TCP flags (0 for UDP).
#[inline(always)]
pub fn l4_checked(ctx: &XdpContext, pkt: &Packet6) -> Result<u8, Verdict> {
    let frame = ctx.data_end() - ctx.data();
    let end = ETH_LEN + IP6_LEN + pkt.payload_len as usize;
    let need = if pkt.proto == proto::TCP { 20 } else { 8 };
    if end > frame || end < pkt.l4_off + need {
        return Err(Verdict::Drop(cnt::DROP_MALFORMED));
    }
    if martian_source(&pkt.saddr) {
        return Err(Verdict::Drop(cnt::DROP_MARTIAN));
    }
    if pkt.proto == proto::TCP {
        let tcp: *const [u8; 20] =
            ptr_at(ctx, pkt.l4_off).map_err(|_| Verdict::Drop(cnt::DROP_MALFORMED))?;
        // SAFETY: bounds-checked by ptr_at; byte 13 holds CWR..FIN.
        return Ok(unsafe { (*tcp)[13] });
    }
    let udp: *const [u8; 8] =
        ptr_at(ctx, pkt.l4_off).map_err(|_| Verdict::Drop(cnt::DROP_MALFORMED))?;
    // SAFETY: bounds-checked by ptr_at.
    let u = unsafe { *udp };
    if u[6] == 0 && u[7] == 0 {
        return Err(Verdict::Drop(cnt::DROP_BAD_CSUM));
    }
    Ok(0)
}
