//! IPIP tunnelling (LVS `-i`): put an outer IPv4 header (director → real server) in front of
//! the packet and route it; the real server decapsulates and answers the client directly.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{Backend, cnt, proto};

use crate::{
    Verdict, csum,
    fwd::{self, Route},
    icmp,
    parse::{IP_DF, IP_LEN, Packet, ptr_at},
};

/// Outer TTL, as IPVS (the route's default hop limit).
const OUTER_TTL: u8 = 64;

#[inline(always)]
pub fn encap(ctx: &XdpContext, pkt: &Packet, be: &Backend) -> Result<u32, Verdict> {
    // Everything needed from the inner header, read before the head moves.
    // SAFETY: bounds-checked IPv4 header.
    let (tos, id) = unsafe { ((*pkt.ip).tos, (*pkt.ip).id) };
    let df = pkt.frags & IP_DF;
    let outer_len = pkt
        .ip_len
        .checked_add(IP_LEN as u16)
        .ok_or(Verdict::Pass(cnt::PASS_TOO_BIG))?;
    let route = match fwd::backend_hop(be) {
        Some(_) if be.mtu != 0 && outer_len > be.mtu => Route::TooBig(be.mtu),
        Some(hop) => Route::Via(hop),
        None => fwd::route(ctx, be.tun_src, be.addr, proto::IPIP, 0, 0, outer_len, tos),
    };
    let hop = match route {
        Route::Via(hop) => hop,
        // IPVS answers with the MTU left for the inner packet.
        Route::TooBig(mtu) if df != 0 => {
            return icmp::send_error(
                ctx,
                icmp::DEST_UNREACH,
                icmp::FRAG_NEEDED,
                mtu.saturating_sub(IP_LEN as u16),
            );
        }
        Route::TooBig(_) => return Err(Verdict::Pass(cnt::PASS_TOO_BIG)),
        // The kernel cannot forward a packet whose source is one of its own addresses (it
        // would be a martian), so an unresolved next hop means drop until the daemon's
        // managed neighbour entry resolves it.
        Route::NoNeigh => return Err(Verdict::Drop(cnt::DROP_NO_NEIGH)),
        Route::Unreachable => return Err(Verdict::Drop(cnt::DROP_NO_ROUTE)),
    };
    // SAFETY: plain helper call; every packet pointer is derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IP_LEN as i32)) } != 0 {
        return Err(Verdict::Drop(cnt::DROP_INTERNAL));
    }
    // New layout: [Ethernet 14][outer IPv4 20][inner IPv4 …].
    let hdr: *mut [u32; 5] = ptr_at(ctx, 14).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let etype: *mut u16 = ptr_at(ctx, 12).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let len = outer_len.to_be_bytes();
    let frag = df.to_be_bytes();
    let mut w = [
        u32::from_ne_bytes([0x45, tos, len[0], len[1]]),
        u32::from_ne_bytes([id[0], id[1], frag[0], frag[1]]),
        u32::from_ne_bytes([OUTER_TTL, proto::IPIP, 0, 0]),
        be.tun_src,
        be.addr,
    ];
    let check = csum::ipv4_header(&w).to_ne_bytes();
    w[2] = u32::from_ne_bytes([OUTER_TTL, proto::IPIP, check[0], check[1]]);
    // SAFETY: both pointers bounds-checked after the head adjustment; unaligned stores are
    // fine on the BPF JITs this runs on.
    unsafe {
        *etype = 0x0800u16.to_be();
        let p = hdr as *mut u32;
        let mut i = 0;
        while i < 5 {
            p.add(i).write_unaligned(w[i]);
            i += 1;
        }
    }
    fwd::send(ctx, &hop)
}
