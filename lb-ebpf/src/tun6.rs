//! IPv6-in-IPv6 tunnelling (LVS `-i` on an IPv6 service, as IPVS's `ip_vs_tunnel_xmit_v6`):
//! an outer IPv6 header (next header 41, director → real server) in front of the packet.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Backend, cnt, proto};

use crate::{
    Verdict,
    fwd::{self, Route},
    fwd6, icmp6,
    parse::{ETH_LEN, ptr_at},
    parse6::{IP6_LEN, Packet6},
};

/// Outer Hop Limit (the route's default, as for IPv4's outer TTL).
const OUTER_HOP_LIMIT: u8 = 64;

#[inline(always)]
pub fn encap(ctx: &XdpContext, pkt: &Packet6, be: &Backend) -> Result<u32, Verdict> {
    let inner_len = pkt.ip_len();
    let outer_len = inner_len
        .checked_add(IP6_LEN as u16)
        .ok_or(Verdict::Drop(cnt::DROP_MALFORMED))?;
    let route = match fwd::backend_hop(be) {
        Some(_) if be.mtu != 0 && outer_len > be.mtu => Route::TooBig(be.mtu),
        Some(hop) => Route::Via(hop),
        None => fwd6::route(ctx, &be.tun_src, &be.addr, proto::IPV6, 0, 0, outer_len),
    };
    let hop = match route {
        Route::Via(hop) => hop,
        // Packet Too Big with the MTU left for the inner packet (IPv6 has no DF: a router
        // never fragments).
        Route::TooBig(mtu) => {
            return icmp6::send_error(
                ctx,
                icmp6::PACKET_TOO_BIG,
                0,
                mtu.saturating_sub(IP6_LEN as u16) as u32,
                &pkt.daddr,
            );
        }
        Route::NoNeigh => return Err(Verdict::Drop(cnt::DROP_NO_NEIGH)),
        Route::Unreachable => return Err(Verdict::Drop(cnt::DROP_NO_ROUTE)),
    };
    // The inner header's first word (version, traffic class, flow label) goes outside too:
    // the tunnel keeps the packet's class and flow (RFC 2473 6.5, 6.6).
    // SAFETY: bounds-checked header, read before the head moves.
    let first = unsafe { (pkt.ip as *const u32).read_unaligned() };
    let padding = (ctx.data_end() - ctx.data()).saturating_sub(ETH_LEN + inner_len as usize);
    // SAFETY: plain helper calls; every packet pointer is derived again below.
    if padding != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(padding as i32)) } != 0 {
        return Err(Verdict::Drop(cnt::DROP_INTERNAL));
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IP6_LEN as i32)) } != 0 {
        return Err(Verdict::Drop(cnt::DROP_INTERNAL));
    }
    // New layout: [Ethernet 14][outer IPv6 40][inner IPv6 …]; the ethertype stays.
    let hdr: *mut [u8; ETH_LEN + IP6_LEN] =
        ptr_at(ctx, 0).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let len = inner_len.to_be_bytes();
    // SAFETY: bounds-checked after the head adjustment; unaligned stores are fine on the
    // BPF JITs this runs on.
    unsafe {
        let p = hdr as *mut u8;
        (p.add(12) as *mut u16).write_unaligned(0x86ddu16.to_be());
        let ip = p.add(ETH_LEN);
        (ip as *mut u32).write_unaligned(first);
        (ip.add(4) as *mut u32).write_unaligned(u32::from_ne_bytes([
            len[0],
            len[1],
            proto::IPV6,
            OUTER_HOP_LIMIT,
        ]));
        let mut k = 0;
        while k < 4 {
            (ip.add(8 + 4 * k) as *mut u32).write_unaligned(be.tun_src.w[k]);
            (ip.add(24 + 4 * k) as *mut u32).write_unaligned(be.addr.w[k]);
            k += 1;
        }
    }
    fwd::send(ctx, &hop)
}
