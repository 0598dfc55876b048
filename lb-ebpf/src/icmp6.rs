//! ICMPv6: the errors the director sends itself (Packet Too Big, Time Exceeded) for IPv6
//! packets it forwards, as `icmp::send_error` for IPv4, and the errors about a connection,
//! forwarded or translated (`forward_error`), as `icmp::forward_error`.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    Addr, Backend, FlowKey, SvcKey, backend_flags, cnt, conn_flags, fwd as fwd_mode, proto,
    size::{NAT_RS_SLOTS, SVC_SLOTS},
};

use crate::{
    Verdict, csum, dr,
    fwd::{self, Route},
    fwd6,
    maps::{BACKENDS, CONNS, NAT_RS, SVC_TABLE},
    parse::{ETH_LEN, ptr_at},
    parse6::{IP6_LEN, Packet6},
    service,
    stats::count,
};

pub const DEST_UNREACH: u8 = 1;
pub const PACKET_TOO_BIG: u8 = 2;
pub const TIME_EXCEEDED: u8 = 3;
pub const PARAM_PROBLEM: u8 = 4;

const ICMP6_LEN: usize = 8;
/// Bytes of the offending packet quoted in an error. RFC 4443 asks for as much as fits in
/// 1280 bytes; the quote is bounded here (the checksum over it is a loop the verifier walks
/// to its end) at what holds the IPv6 header, a few extension headers and the TCP/UDP
/// header, which is what a receiver matches the error to its socket by.
const QUOTE_MAX: usize = 256;
/// Hop limit of the director's own errors (the kernel's default).
const HOP_LIMIT: u8 = 64;

#[inline(always)]
fn internal<T>(_: T) -> Verdict {
    Verdict::Drop(cnt::DROP_INTERNAL)
}

/// Folds a 64-bit one's-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The one's-complement sum of the IPv6 pseudo-header (RFC 8200 8.1) of an upper-layer
/// packet of `len` bytes and protocol `nh`, as native loads of the wire bytes.
#[inline(always)]
pub fn pseudo_sum(src: &Addr, dst: &Addr, len: u32, nh: u8) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i < 4 {
        s += u64::from(src.w[i]) + u64::from(dst.w[i]);
        i += 1;
    }
    s + u64::from(len.to_be()) + u64::from((nh as u32).to_be())
}

/// Turns the current packet (an IPv6 packet the director would forward) into an ICMPv6
/// error about it (`icmp_type`/`code`; `info`: the MTU of Packet Too Big, else 0) from `src`
/// (the address the packet was for: the VIP) back to its source, out of the interface it came
/// in on. Errors other than Packet Too Big are rate-limited as IPv4's
/// (`DROP_ICMP_RATELIMIT`); none is sent to a source that is not a unicast host (parse6
/// already dropped such packets for services) (RFC 4443 2.4).
#[inline(always)]
pub fn send_error(
    ctx: &XdpContext,
    icmp_type: u8,
    code: u8,
    info: u32,
    src: &Addr,
) -> Result<u32, Verdict> {
    if icmp_type != PACKET_TOO_BIG && !crate::icmp::rate_allows() {
        return Err(Verdict::Drop(cnt::DROP_ICMP_RATELIMIT));
    }
    let eth: *mut [u8; 12] = ptr_at(ctx, 0).map_err(internal)?;
    let ip: *mut [u8; IP6_LEN] = ptr_at(ctx, ETH_LEN).map_err(internal)?;
    // SAFETY: both bounds-checked above; copied out before the head moves.
    let (macs, h) = unsafe { (*eth, *ip) };
    let dst = Addr {
        w: [
            u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
            u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
            u32::from_ne_bytes([h[20], h[21], h[22], h[23]]),
        ],
    };
    if crate::parse6::martian_source(&dst) {
        return Err(Verdict::Drop(cnt::DROP_ICMP_SUPPRESSED));
    }
    let ip_len = IP6_LEN + u16::from_be_bytes([h[4], h[5]]) as usize;
    let frame = ctx.data_end() - ctx.data();
    // Whole words only (the checksum loop reads words): at most 3 bytes less than the
    // packet, which a receiver does not need (RFC 4443 2.4 (c) allows any truncation).
    let quote = ip_len.min(frame - ETH_LEN).min(QUOTE_MAX) & !3;
    let new_len = ETH_LEN + IP6_LEN + ICMP6_LEN + quote;
    // SAFETY: plain helper calls; every packet pointer is derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -((IP6_LEN + ICMP6_LEN) as i32)) } != 0 {
        return Err(Verdict::Drop(cnt::DROP_INTERNAL));
    }
    let grown = ctx.data_end() - ctx.data();
    if grown > new_len
        && unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - grown as i32) } != 0
    {
        return Err(Verdict::Drop(cnt::DROP_INTERNAL));
    }
    let hdr: *mut [u8; ETH_LEN + IP6_LEN + ICMP6_LEN] = ptr_at(ctx, 0).map_err(internal)?;
    let icmp_len = (ICMP6_LEN + quote) as u32;
    // The sum of the quote, word by word.
    let mut sum = 0u64;
    let mut i = 0;
    while i < QUOTE_MAX / 4 {
        let at = 4 * i;
        if at >= quote {
            break;
        }
        let w: *const u32 = ptr_at(ctx, ETH_LEN + IP6_LEN + ICMP6_LEN + at).map_err(internal)?;
        // SAFETY: bounds-checked.
        sum += u64::from(unsafe { w.read_unaligned() });
        i += 1;
    }
    let info_b = info.to_be_bytes();
    sum += pseudo_sum(src, &dst, icmp_len, proto::ICMPV6);
    sum += u64::from(u32::from_ne_bytes([icmp_type, code, 0, 0]));
    sum += u64::from(u32::from_ne_bytes(info_b));
    let check = (!fold(sum)).to_ne_bytes();
    let len_b = (icmp_len as u16).to_be_bytes();
    // SAFETY: the whole new header block was bounds-checked after the adjustments.
    unsafe {
        let p = hdr as *mut u8;
        // Back to where it came from: the MACs swapped.
        let d = [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]];
        let s = [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]];
        dr::set_macs(p, &d, &s);
        let h16 = p.add(12) as *mut u16;
        h16.write_unaligned(0x86ddu16.to_be());
        let ip = p.add(ETH_LEN);
        (ip as *mut u32).write_unaligned(u32::from_ne_bytes([0x60, 0, 0, 0]));
        (ip.add(4) as *mut u32).write_unaligned(u32::from_ne_bytes([
            len_b[0],
            len_b[1],
            proto::ICMPV6,
            HOP_LIMIT,
        ]));
        let mut k = 0;
        while k < 4 {
            (ip.add(8 + 4 * k) as *mut u32).write_unaligned(src.w[k]);
            (ip.add(24 + 4 * k) as *mut u32).write_unaligned(dst.w[k]);
            k += 1;
        }
        let ic = ip.add(IP6_LEN);
        (ic as *mut u32).write_unaligned(u32::from_ne_bytes([icmp_type, code, check[0], check[1]]));
        (ic.add(4) as *mut u32).write_unaligned(u32::from_ne_bytes(info_b));
    }
    count(cnt::ICMP_SENT);
    dr::out(ctx, ctx.ingress_ifindex() as u32)
}

/// The packet quoted in an ICMPv6 error: its fixed header directly followed by TCP or UDP
/// (what the director and the real servers send; a quote with extension headers is about
/// nothing of ours).
struct Quoted {
    /// Frame offset of the quoted IPv6 header.
    off: usize,
    proto: u8,
    saddr: Addr,
    daddr: Addr,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn pass<T>(_: T) -> Verdict {
    Verdict::Pass(cnt::PASS_NOT_SERVICE)
}

#[inline(always)]
fn quoted(ctx: &XdpContext, pkt: &Packet6) -> Result<Quoted, Verdict> {
    let icmp: *const [u8; ICMP6_LEN] = ptr_at(ctx, pkt.l4_off).map_err(pass)?;
    // SAFETY: bounds-checked.
    let icmp_type = unsafe { (*icmp)[0] };
    // Errors only (types below 128); NDP, MLD, echo and the rest are the stack's.
    if !matches!(
        icmp_type,
        DEST_UNREACH | PACKET_TOO_BIG | TIME_EXCEEDED | PARAM_PROBLEM
    ) {
        return Err(pass(()));
    }
    let off = pkt.l4_off + ICMP6_LEN;
    let ip: *const [u8; IP6_LEN] = ptr_at(ctx, off).map_err(pass)?;
    // SAFETY: bounds-checked.
    let h = unsafe { &*ip };
    let qproto = h[6];
    if h[0] >> 4 != 6 || (qproto != proto::TCP && qproto != proto::UDP) {
        return Err(pass(()));
    }
    let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let saddr = Addr {
        w: [w(8), w(12), w(16), w(20)],
    };
    let daddr = Addr {
        w: [w(24), w(28), w(32), w(36)],
    };
    let ports: *const [u16; 2] = ptr_at(ctx, off + IP6_LEN).map_err(pass)?;
    // SAFETY: bounds-checked.
    let [sport, dport] = unsafe { *ports };
    Ok(Quoted {
        off,
        proto: qproto,
        saddr,
        daddr,
        sport,
        dport,
    })
}

/// The checks of the kernel's input on an error the balancer is about to forward: the
/// payload within the frame and holding the ICMPv6 header, the quoted header and its ports.
#[inline(always)]
fn valid(ctx: &XdpContext, pkt: &Packet6) -> Result<(), Verdict> {
    let frame = ctx.data_end() - ctx.data();
    let end = ETH_LEN + IP6_LEN + pkt.payload_len as usize;
    if end > frame || end < pkt.l4_off + ICMP6_LEN + IP6_LEN + 4 {
        return Err(Verdict::Drop(cnt::DROP_MALFORMED));
    }
    if crate::parse6::martian_source(&pkt.saddr) {
        return Err(Verdict::Drop(cnt::DROP_MARTIAN));
    }
    Ok(())
}

/// Rewrites a NATed ICMPv6 error (as IPVS's `ip_vs_nat_icmp_v6`): one outer address
/// (`outer_src` picks which), the quoted packet's address and port on the same side of the
/// connection, the ICMPv6 checksum (its pseudo-header holds the outer addresses) updated for
/// all three; the Hop Limit decremented.
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    pkt: &Packet6,
    q: &Quoted,
    outer_src: bool,
    addr: &Addr,
    port: u16,
) -> Result<(), Verdict> {
    let check: *mut u16 = ptr_at(ctx, pkt.l4_off + 2).map_err(internal)?;
    let qip: *mut [u8; IP6_LEN] = ptr_at(ctx, q.off).map_err(internal)?;
    let qports: *mut [u16; 2] = ptr_at(ctx, q.off + IP6_LEN).map_err(internal)?;
    let (outer_old, outer_at) = if outer_src {
        (&pkt.saddr, 8)
    } else {
        (&pkt.daddr, 24)
    };
    // The quote is the packet as the connection's other side sent it: an error about a
    // DNATed request (outer source rewritten) quotes client → real server, whose
    // destination becomes the VIP; one about a reply quotes VIP → client, whose source
    // becomes the real server.
    let (q_old, q_at, q_old_port) = if outer_src {
        (&q.daddr, 24, q.dport)
    } else {
        (&q.saddr, 8, q.sport)
    };
    // SAFETY: all bounds-checked above; no head/tail adjustment in between.
    unsafe {
        let ip = pkt.ip as *mut u8;
        *ip.add(7) = pkt.hop_limit - 1;
        let qp = qip as *mut u8;
        let mut c = *check;
        let mut i = 0;
        while i < 4 {
            c = csum::replace4(c, outer_old.w[i], addr.w[i]);
            c = csum::replace4(c, q_old.w[i], addr.w[i]);
            (ip.add(outer_at + 4 * i) as *mut u32).write_unaligned(addr.w[i]);
            (qp.add(q_at + 4 * i) as *mut u32).write_unaligned(addr.w[i]);
            i += 1;
        }
        c = csum::replace2(c, q_old_port, port);
        if outer_src {
            (*qports)[1] = port;
        } else {
            (*qports)[0] = port;
        }
        *check = c;
    }
    Ok(())
}

/// Routes a translated error and sends it.
#[inline(always)]
fn route_icmp(ctx: &XdpContext, pkt: &Packet6, src: &Addr, dst: &Addr) -> Result<u32, Verdict> {
    match fwd6::route(ctx, src, dst, proto::ICMPV6, 0, 0, pkt.ip_len()) {
        Route::Via(hop) => fwd::send(ctx, &hop),
        Route::NoNeigh => Err(Verdict::Pass(cnt::PASS_NO_NEIGH)),
        Route::TooBig(_) => Err(Verdict::Pass(cnt::PASS_TOO_BIG)),
        Route::Unreachable => Err(Verdict::Drop(cnt::DROP_NO_ROUTE)),
    }
}

#[inline(always)]
fn available(backend: u32) -> Result<&'static Backend, Verdict> {
    let be = BACKENDS
        .get(backend)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    if be.flags & backend_flags::AVAILABLE == 0 {
        return Err(Verdict::Drop(cnt::DROP_BACKEND_GONE));
    }
    Ok(be)
}

/// An ICMPv6 packet: an error (Destination Unreachable, Packet Too Big, Time Exceeded,
/// Parameter Problem) about a balanced connection goes where that connection goes —
/// forwarded for DR and TUN, translated for NAT — as `icmp::forward_error` for IPv4;
/// everything else (NDP, MLD, echo, errors about anything else) passes untouched.
#[inline(always)]
pub fn forward_error(
    ctx: &XdpContext,
    pkt: &Packet6,
    half: u32,
    epoch: u32,
) -> Result<u32, Verdict> {
    let q = quoted(ctx, pkt)?;
    // An error goes to the source of the packet it quotes (RFC 4443 2.4).
    if pkt.daddr != q.saddr {
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    }
    let key = FlowKey::of(q.daddr, q.saddr, q.dport, q.sport, q.proto);
    // About a packet the VIP sent (a reply): the connection is client → VIP.
    let vip = SvcKey::of(q.saddr, q.sport, q.proto);
    if service::lookup(&SVC_TABLE, SVC_SLOTS, half, &vip).is_some() {
        let c = CONNS
            .get_ptr(&key)
            // An error about an embryo's packet goes its way until the sweep clears it,
            // expired or not: it changes no state.
            .or_else(|| crate::embryo::find(&key).map(|c| c as *const _))
            .ok_or(Verdict::Pass(cnt::PASS_NO_CONN))?;
        // SAFETY: pointer into the map value.
        let be = available(unsafe { (*c).backend })?;
        valid(ctx, pkt)?;
        if be.fwd == fwd_mode::NAT && pkt.hop_limit <= 1 {
            // Never an error about an error.
            return Err(Verdict::Drop(cnt::DROP_ICMP_SUPPRESSED));
        }
        count(cnt::ICMP_FORWARDED);
        return match be.fwd {
            fwd_mode::DR => {
                if be.flags & backend_flags::NEIGH_OK == 0 {
                    return Err(Verdict::Drop(cnt::DROP_NO_NEIGH));
                }
                dr::set_macs(pkt.eth, &be.dmac, &be.smac);
                dr::out(ctx, be.ifindex)
            }
            fwd_mode::TUN => crate::tun6::encap(ctx, pkt, be),
            fwd_mode::NAT => {
                translate(ctx, pkt, &q, false, &be.addr, be.port)?;
                // To the real server: its resolved next hop, as the requests go.
                match fwd::backend_hop(be) {
                    Some(hop) => fwd::send(ctx, &hop),
                    None => route_icmp(ctx, pkt, &pkt.saddr, &be.addr),
                }
            }
            _ => Err(Verdict::Drop(cnt::DROP_INTERNAL)),
        };
    }
    // About a packet the director sent to a NAT real server (a DNATed request).
    let rs = SvcKey::of(q.daddr, q.dport, q.proto);
    if service::lookup(&NAT_RS, NAT_RS_SLOTS, half, &rs).is_none() {
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    }
    // An embryonic NAT connection's reply entry is in `EMBRYO` (as in `icmp.rs`).
    let c = CONNS
        .get_ptr(&key)
        // An error about an embryo's packet goes its way until the sweep clears it,
        // expired or not: it changes no state.
        .or_else(|| crate::embryo::find(&key).map(|c| c as *const _))
        .ok_or(Verdict::Pass(cnt::PASS_NO_REPLY_CONN))?;
    // SAFETY: pointer into the map value.
    let (flags, backend) = unsafe { ((*c).flags, (*c).backend) };
    if flags & conn_flags::REPLY == 0 {
        return Err(Verdict::Pass(cnt::PASS_NO_REPLY_CONN));
    }
    let be = available(backend)?;
    valid(ctx, pkt)?;
    if pkt.hop_limit <= 1 {
        return Err(Verdict::Drop(cnt::DROP_ICMP_SUPPRESSED));
    }
    count(cnt::ICMP_FORWARDED);
    translate(ctx, pkt, &q, true, &be.vaddr, be.vport)?;
    // To the client: the hop its replies take, if known.
    match crate::nat6::hop_of(&pkt.daddr, epoch) {
        Some((hop, _)) => fwd::send(ctx, &hop),
        None => route_icmp(ctx, pkt, &be.vaddr, &pkt.daddr),
    }
}
