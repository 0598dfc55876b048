//! ICMPv6: the errors the director sends itself (Packet Too Big, Time Exceeded) for IPv6
//! packets it forwards, as `icmp::send_error` for IPv4, and the errors about a connection.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Addr, cnt, proto};

use crate::{
    Verdict, dr,
    parse::{ETH_LEN, ptr_at},
    parse6::{IP6_LEN, Packet6},
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

/// An ICMPv6 packet: errors about a connection are forwarded (not yet: passed, see the
/// README), everything else (NDP, MLD, echo) is the stack's, untouched.
#[inline(always)]
pub fn forward_error(_ctx: &XdpContext, _pkt: &Packet6, _half: u32) -> Result<u32, Verdict> {
    Err(Verdict::Pass(cnt::PASS_NOT_SERVICE))
}
