//! Header parsing: one bounds-checked accessor and the fields the balancer needs.
//!
//! Scope: Ethernet II without VLAN tags, IPv4 with or without options, TCP, UDP and ICMP
//! errors. IPv6 goes to `lb_xdp6` (v6.rs, parse6.rs); VLAN-tagged frames and ARP are passed
//! to the stack. Fragments carry no L4 header past the first, so no flow can be matched on
//! them: they are passed to the stack (counted). Lengths come from the IPv4 total length,
//! never from the frame's (which may carry Ethernet padding).

use aya_ebpf::programs::XdpContext;
use lb_common::{cnt, proto};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    Verdict,
    mem::{load16, load32},
};

/// Returns a pointer to a `T` at `offset` bytes into the frame, or `Err` if the frame is too
/// short. Every access to packet memory goes through here; after `bpf_xdp_adjust_head` or
/// `_tail` every pointer is derived again through it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

pub const ETH_LEN: usize = core::mem::size_of::<EthHdr>();
pub const IP_LEN: usize = core::mem::size_of::<Ipv4Hdr>();
const ETH_P_IP: u16 = 0x0800;
pub const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

/// TCP flag bits as found in byte 13 of the header.
pub mod tcp_flags {
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const FIN: u8 = 0x01;
    pub const ACK: u8 = 0x10;
}

/// What the balancer needs to know about an IPv4 TCP/UDP/ICMP packet.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    /// Source/destination address and port, network byte order (ports 0 for ICMP).
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Offset of the L4 header in the frame.
    pub l4_off: usize,
    /// IP total length, host order (what IPVS counts as bytes).
    pub ip_len: u16,
    /// The flags/fragment-offset field, host order.
    pub frags: u16,
}

/// Parses Ethernet + IPv4 + the L4 ports. `Err` carries the verdict for frames the balancer
/// does not handle. Nothing is dropped here: a malformed packet is only the balancer's business
/// (and dropped, by `valid`) once it turns out to be for a service, a NAT reply or an ICMP
/// error about a connection; anything else goes to the stack untouched, which drops what
/// `ip_rcv` refuses and counts it.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).map_err(|_| Verdict::Pass(cnt::PASS_NOT_IPV4))?;
    // SAFETY: bounds checked by ptr_at.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type != ETH_P_IP {
        // IPv6 goes to its own program (v6.rs) and does not come back, unless that program
        // is not loaded (then it passes, as before IPv6 was balanced).
        if ether_type == crate::parse6::ETH_P_IPV6 {
            crate::v6::enter(ctx);
        }
        return Err(Verdict::Pass(cnt::PASS_NOT_IPV4));
    }
    let malformed = Verdict::Pass(cnt::PASS_MALFORMED);
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).map_err(|_| malformed)?;
    // Whole-field loads (`mem::load32`): the header's fields are byte arrays, which LLVM
    // would read a byte at a time.
    let h = ip as *const u8;
    // SAFETY: bounds checked by ptr_at (the 20-byte header).
    let (vihl, l4proto, frags, tot_len, saddr, daddr) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            u16::from_be(load16::<6>(h)),
            u16::from_be(load16::<2>(h)),
            load32::<12>(h),
            load32::<16>(h),
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < IP_LEN {
        return Err(Verdict::Pass(cnt::PASS_MALFORMED));
    }
    if l4proto != proto::TCP && l4proto != proto::UDP && l4proto != proto::ICMP {
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    }
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Err(Verdict::Pass(cnt::PASS_FRAGMENT));
    }
    // `ihl` is at most 60, which the verifier can see from the mask above.
    let l4 = ETH_LEN + ihl;
    let (mut sport, mut dport) = (0, 0);
    if l4proto != proto::ICMP {
        // Ports only from bytes the packet claims (never from Ethernet padding), and only if
        // the frame has them: a TCP/UDP packet without room for its ports matches no
        // service; the stack has the last word on it.
        if (tot_len as usize) < ihl + 4 {
            return Err(Verdict::Pass(cnt::PASS_MALFORMED));
        }
        let ports: *mut [u16; 2] =
            ptr_at(ctx, l4).map_err(|_| Verdict::Pass(cnt::PASS_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        [sport, dport] = unsafe { *ports };
    }
    Ok(Packet {
        eth,
        ip,
        saddr,
        daddr,
        sport,
        dport,
        proto: l4proto,
        l4_off: l4,
        ip_len: tot_len,
        frags,
    })
}

/// The `Packet` `lb_xdp` parsed, again in `lb_new` (after a tail call only the context
/// survives): the header pointers re-derived and bounds-checked, the fields from `lb_xdp`'s
/// hand-over. The frame is unchanged since (`lb_xdp` only reads a packet it hands over).
/// The L4 offset is recomputed from the header's IHL: the verifier needs it bounded for the
/// packet-pointer arithmetic, which a value read from a map is not.
#[inline(always)]
pub fn from_pending(ctx: &XdpContext, p: &crate::maps::Pending) -> Result<Packet, Verdict> {
    let internal = Verdict::Drop(cnt::DROP_INTERNAL);
    let eth: *mut EthHdr = ptr_at(ctx, 0).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).map_err(|_| internal)?;
    // SAFETY: bounds checked by ptr_at.
    let ihl = (unsafe { (*ip).vihl } & 0x0f) as usize * 4;
    Ok(Packet {
        eth,
        ip,
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        l4_off: ETH_LEN + ihl,
        ip_len: p.ip_len,
        frags: p.frags,
    })
}

/// The checks of the kernel's IPv4 input (`ip_rcv`) that `parse` left out, made only on a
/// packet the balancer is about to forward: the total length fits in the frame (so a packet
/// claiming more than it carries is never forwarded, counted or tunnelled by its claim) and
/// covers the IP header and `l4_need` bytes after it, and the header checksum is right.
/// Ethernet padding past the total length is fine (60-byte minimum frames): everything reads
/// lengths from the total length.
#[inline(always)]
pub fn valid(ctx: &XdpContext, pkt: &Packet, l4_need: usize) -> Result<(), Verdict> {
    let frame = ctx.data_end() - ctx.data();
    let tot = pkt.ip_len as usize;
    if ETH_LEN + tot > frame || tot < pkt.l4_off - ETH_LEN + l4_need {
        return Err(Verdict::Drop(cnt::DROP_MALFORMED));
    }
    if !header_checksum_ok(ctx, pkt) {
        return Err(Verdict::Drop(cnt::DROP_BAD_CSUM));
    }
    // A martian source (0/8, 127/8, multicast, 240/4 and broadcast) — the kernel's
    // `ip_route_input` drops it, so IPVS never opens a connection for one.
    let first = pkt.saddr.to_ne_bytes()[0];
    if first == 0 || first == 127 || first >= 224 {
        return Err(Verdict::Drop(cnt::DROP_MARTIAN));
    }
    Ok(())
}

/// Whether the IPv4 header's one's-complement sum (checksum included) is all ones. Without
/// options that is five 32-bit loads and adds on the header `parse` already bounds-checked;
/// options (rare) add a bounded loop.
#[inline(always)]
fn header_checksum_ok(ctx: &XdpContext, pkt: &Packet) -> bool {
    let h = pkt.ip as *const u8;
    // SAFETY: the 20-byte header was bounds-checked by `parse`; misaligned packet loads
    // are fine on the BPF JITs this runs on (`mem::load32`).
    let mut s = unsafe {
        u64::from(load32::<0>(h))
            + u64::from(load32::<4>(h))
            + u64::from(load32::<8>(h))
            + u64::from(load32::<12>(h))
            + u64::from(load32::<16>(h))
    };
    let words = (pkt.l4_off - ETH_LEN) / 4;
    let mut i = 5;
    while i < 15 {
        if i >= words {
            break;
        }
        match ptr_at::<u32>(ctx, ETH_LEN + 4 * i) {
            // SAFETY: bounds-checked.
            Ok(p) => s += u64::from(unsafe { load32::<0>(p as *const u8) }),
            Err(()) => return false,
        }
        i += 1;
    }
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s == 0xffff
}

/// Validates a packet that matched a service or a NAT real server's connection (`valid`,
/// with the whole TCP or UDP header) and reads its TCP flags (0 for UDP). Only then is a
/// malformed packet an error: other traffic is the stack's business.
#[inline(always)]
pub fn l4_checked(ctx: &XdpContext, pkt: &Packet) -> Result<u8, Verdict> {
    if pkt.proto == proto::TCP {
        valid(ctx, pkt, core::mem::size_of::<TcpHdr>())?;
        let tcp: *mut TcpHdr =
            ptr_at(ctx, pkt.l4_off).map_err(|_| Verdict::Drop(cnt::DROP_MALFORMED))?;
        // Byte 13 of the TCP header holds CWR..FIN.
        // SAFETY: bounds checked by ptr_at (the whole 20-byte header).
        return Ok(unsafe { *(tcp as *const u8).add(13) });
    }
    valid(ctx, pkt, core::mem::size_of::<UdpHdr>())?;
    let _: *mut UdpHdr = ptr_at(ctx, pkt.l4_off).map_err(|_| Verdict::Drop(cnt::DROP_MALFORMED))?;
    Ok(0)
}
