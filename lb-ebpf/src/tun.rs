//! IPIP tunnelling (LVS `-i`): put an outer IPv4 header (director → real server) in front of
//! the packet and route it; the real server decapsulates and answers the client directly.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Backend, cnt, proto};

use crate::{
    Verdict, csum,
    fwd::{self, Route},
    icmp,
    maps::CPU_STATE,
    parse::{ETH_LEN, IP_DF, IP_LEN, Packet, ptr_at},
};

/// Outer TTL, as IPVS (the route's default hop limit).
const OUTER_TTL: u8 = 64;

/// The outer header's IP ID (network order). Copying the inner ID would make every client's
/// ID space collide in the one director → real server flow (RFC 6864, RFC 2003 3.1). With DF
/// set the datagram is atomic and the ID is 0, as the kernel (`ip_select_ident`) and so IPVS
/// send it; without DF, a per-CPU counter with the CPU in the top 4 bits, so that CPUs do
/// not hand out the same ID (distinct across up to 16 CPUs, 4096 IDs per CPU before one is
/// reused).
#[inline(always)]
fn outer_id(df: u16) -> [u8; 2] {
    if df != 0 {
        return [0, 0];
    }
    let Some(st) = CPU_STATE.get_ptr_mut(0) else {
        return [0, 0];
    };
    // SAFETY: per-CPU value; this packet is the only one running on this CPU. Plain helper.
    let (n, cpu) = unsafe {
        let n = (*st).ip_id;
        (*st).ip_id = n.wrapping_add(1);
        (n, bpf_get_smp_processor_id())
    };
    (((cpu & 0xf) << 12 | (n & 0xfff)) as u16).to_be_bytes()
}

#[inline(always)]
pub fn encap(ctx: &XdpContext, pkt: &Packet, be: &Backend) -> Result<u32, Verdict> {
    // Everything needed from the inner header, read before the head moves.
    // SAFETY: bounds-checked IPv4 header.
    let tos = unsafe { (*pkt.ip).tos };
    let df = pkt.frags & IP_DF;
    let outer_len = pkt
        .ip_len
        .checked_add(IP_LEN as u16)
        .ok_or(Verdict::Pass(cnt::PASS_TOO_BIG))?;
    let route = match fwd::backend_hop(be) {
        Some(_) if be.mtu != 0 && outer_len > be.mtu => Route::TooBig(be.mtu),
        Some(hop) => Route::Via(hop),
        None => fwd::route(
            ctx,
            be.tun_src.as_v4(),
            be.addr.as_v4(),
            proto::IPIP,
            0,
            0,
            outer_len,
            tos,
        ),
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
                0,
            );
        }
        Route::TooBig(_) => return Err(Verdict::Pass(cnt::PASS_TOO_BIG)),
        // The kernel cannot forward a packet whose source is one of its own addresses (it
        // would be a martian), so an unresolved next hop means drop until the daemon's
        // managed neighbour entry resolves it.
        Route::NoNeigh => return Err(Verdict::Drop(cnt::DROP_NO_NEIGH)),
        Route::Unreachable => return Err(Verdict::Drop(cnt::DROP_NO_ROUTE)),
    };
    let id = outer_id(df);
    // Ethernet padding after the inner packet (a minimum-size frame) would end up inside the
    // tunnel's frame for nothing: trim it. Frames this short are rare; others pay a compare.
    let padding = (ctx.data_end() - ctx.data()).saturating_sub(ETH_LEN + pkt.ip_len as usize);
    // SAFETY: plain helper calls; every packet pointer is derived again below.
    if padding != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(padding as i32)) } != 0 {
        return Err(Verdict::Drop(cnt::DROP_INTERNAL));
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IP_LEN as i32)) } != 0 {
        return Err(Verdict::Drop(cnt::DROP_INTERNAL));
    }
    // New layout: [Ethernet 14][outer IPv4 20][inner IPv4 …].
    let hdr: *mut [u32; 5] = ptr_at(ctx, ETH_LEN).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let etype: *mut u16 = ptr_at(ctx, 12).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let len = outer_len.to_be_bytes();
    let frag = df.to_be_bytes();
    let mut w = [
        u32::from_ne_bytes([0x45, tos, len[0], len[1]]),
        u32::from_ne_bytes([id[0], id[1], frag[0], frag[1]]),
        u32::from_ne_bytes([OUTER_TTL, proto::IPIP, 0, 0]),
        be.tun_src.as_v4(),
        be.addr.as_v4(),
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
