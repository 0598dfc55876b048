//! Reference XDP programs that are not the balancer: `lb_pass` (`XDP_PASS` for every frame),
//! attached to the veth peer of a balancer interface, where a frame sent into a veth with
//! `XDP_TX` or a redirect is reliably delivered only when the peer runs an XDP program
//! (platform.md, "veth and XDP"); and `lb_macswap`, the cheapest useful forwarder (swap the
//! MACs, `XDP_TX`), the floor every data path is measured against; `lb_drop`, the sink of
//! benchmarks.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame: the sink benchmarks send forwarded frames into, so that every path pays
/// the same (small) price for delivery.
#[xdp]
pub fn lb_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Swaps source and destination MAC and sends the frame back out.
#[xdp]
pub fn lb_macswap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    let p = start as *mut [u8; 6];
    // SAFETY: 12 bytes bounds-checked above.
    unsafe {
        let dst = *p;
        *p = *p.add(1);
        *p.add(1) = dst;
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
