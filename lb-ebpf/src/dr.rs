//! Direct routing (LVS `-g`): rewrite the MACs, leave IP and L4 untouched, send it out.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use lb_common::{Backend, backend_flags, cnt};

use crate::{
    Verdict,
    mem::{load16, load32, store16, store32},
    parse::Packet,
    stats::count,
};

#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, be: &Backend) -> Result<u32, Verdict> {
    if be.flags & backend_flags::NEIGH_OK == 0 {
        return Err(Verdict::Drop(cnt::DROP_NO_NEIGH));
    }
    set_macs_of(pkt.eth as *mut u8, be);
    out(ctx, be.ifindex)
}

/// `set_macs` with the backend's MACs, read from its map value as two words and two halves
/// (`mem::load32`: the value's `[u8; 6]` fields would be read a byte at a time).
#[inline(always)]
pub fn set_macs_of(eth: *mut u8, be: &Backend) {
    use core::mem::offset_of;
    let b = be as *const Backend as *const u8;
    const D: i16 = offset_of!(Backend, dmac) as i16;
    const S: i16 = offset_of!(Backend, smac) as i16;
    // SAFETY: `b` points at a whole `Backend` in map memory; the caller bounds-checked the
    // 14-byte Ethernet header at `eth`; the JITs this runs on allow misaligned packet and map
    // access (`mem::load32`).
    unsafe {
        let (d0, d4) = (load32::<D>(b), load16::<{ D + 4 }>(b));
        let (s0, s2) = (load16::<S>(b), load32::<{ S + 2 }>(b));
        store32::<0>(eth, d0);
        store16::<4>(eth, d4);
        store16::<6>(eth, s0);
        store32::<8>(eth, s2);
    }
}

/// Writes destination and source MAC as three 32-bit stores: assigning `[u8; 6]` fields
/// compiles to a call into a byte-loop memmove subprogram.
#[inline(always)]
pub fn set_macs(eth: *mut u8, dst: &[u8; 6], src: &[u8; 6]) {
    let w = |b: &[u8; 6], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let h = |b: &[u8; 6], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    // SAFETY: the caller bounds-checked the 14-byte Ethernet header at `eth`; x86-64 and
    // arm64 BPF JITs allow unaligned packet stores.
    unsafe {
        (eth as *mut u32).write_unaligned(w(dst, 0));
        (eth.add(4) as *mut u16).write_unaligned(h(dst, 4));
        (eth.add(6) as *mut u16).write_unaligned(h(src, 0));
        (eth.add(8) as *mut u32).write_unaligned(w(src, 2));
    }
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
