//! The XDP balancer: LVS forwarding (DR) for IPv4 TCP/UDP virtual services.
#![no_std]
#![no_main]
// Inline BPF assembly for the fetching atomic add (select.rs).
#![feature(asm_experimental_arch)]

mod conntrack;
mod dr;
mod maps;
mod parse;
mod select;
mod service;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{SvcKey, backend_flags, cnt, fwd};

use crate::{
    maps::{BACKENDS, SETTINGS},
    stats::count,
};

/// Why a packet leaves the program other than by being forwarded; the `u32` is the counter
/// (`lb_common::cnt`) it is accounted to.
pub enum Verdict {
    Pass(u32),
    Drop(u32),
}

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match balance(&ctx) {
        Ok(action) => action,
        Err(Verdict::Pass(c)) => {
            count(c);
            xdp_action::XDP_PASS
        }
        Err(Verdict::Drop(c)) => {
            count(c);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Verdict> {
    let pkt = parse::parse(ctx)?;
    let key = SvcKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    let settings = SETTINGS.get(0).ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    let (half, now) = (settings.svc_half, settings.clock_ns);
    let svc = service::lookup(half, &key).ok_or(Verdict::Pass(cnt::PASS_NOT_SERVICE))?;
    let tcp_flags = parse::tcp_flags(ctx, &pkt)?;
    let flow = conntrack::lookup_or_create(&pkt, &svc, tcp_flags, now)?;
    if flow.new {
        count(cnt::NEW_CONN);
    }
    let be = *BACKENDS
        .get(flow.backend)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    if be.flags & backend_flags::AVAILABLE == 0 {
        return Err(Verdict::Drop(cnt::DROP_BACKEND_GONE));
    }
    let action = match be.fwd {
        fwd::DR => dr::forward(ctx, &pkt, &be)?,
        _ => return Err(Verdict::Drop(cnt::DROP_INTERNAL)),
    };
    stats::inbound(svc.id, flow.backend, flow.new, pkt.ip_len as u64);
    Ok(action)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
