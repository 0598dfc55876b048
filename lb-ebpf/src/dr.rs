//! Direct routing (LVS `-g`): rewrite the MACs, leave IP and L4 untouched, send it out.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use lb_common::{Backend, backend_flags, cnt};

use crate::{Verdict, parse::Packet, stats::count};

#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, be: &Backend) -> Result<u32, Verdict> {
    if be.flags & backend_flags::NEIGH_OK == 0 {
        return Err(Verdict::Drop(cnt::DROP_NO_NEIGH));
    }
    // SAFETY: `pkt.eth` was bounds-checked by the parser and the frame has not moved since.
    unsafe {
        (*pkt.eth).dst_addr = be.dmac;
        (*pkt.eth).src_addr = be.smac;
    }
    out(ctx, be.ifindex)
}

/// Sends the frame out of `ifindex`: `XDP_TX` when that is where it came in.
#[inline(always)]
pub fn out(ctx: &XdpContext, ifindex: u32) -> Result<u32, Verdict> {
    if ifindex == ctx.ingress_ifindex() as u32 {
        count(cnt::TX);
        return Ok(xdp_action::XDP_TX);
    }
    count(cnt::REDIRECT);
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as u32)
}
