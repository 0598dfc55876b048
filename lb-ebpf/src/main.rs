//! The XDP balancer: LVS forwarding (DR) for IPv4 TCP/UDP virtual services.
#![no_std]
#![no_main]
// Inline BPF assembly for the fetching atomic add (select.rs).
#![feature(asm_experimental_arch)]

mod conntrack;
mod csum;
mod dr;
mod fwd;
mod icmp;
mod maps;
mod mem;
mod nat;
mod parse;
mod select;
mod service;
mod stats;
mod tun;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    SvcKey, backend_flags, cnt, fwd as fwd_mode, proto,
    size::{NAT_RS_SLOTS, SVC_SLOTS},
};

use crate::{
    maps::{BACKENDS, NAT_RS, SETTINGS, SVC_TABLE},
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
    let settings = SETTINGS.get(0).ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    let (half, now, epoch) = (settings.svc_half, settings.clock_ns, settings.route_epoch);
    if pkt.proto == proto::ICMP {
        return icmp::forward_error(ctx, &pkt, half);
    }
    let key = SvcKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    let Some(svc) = service::lookup(&SVC_TABLE, SVC_SLOTS, half, &key) else {
        // Not for a service; from a NAT real server it may be a reply to SNAT.
        let rs = SvcKey {
            addr: pkt.saddr,
            port: pkt.sport,
            proto: pkt.proto,
            _pad: 0,
        };
        if service::lookup(&NAT_RS, NAT_RS_SLOTS, half, &rs).is_some() {
            let (action, svc_id, backend) = nat::reply(ctx, &pkt, now, epoch)?;
            stats::outbound(svc_id, backend, pkt.ip_len as u64);
            return Ok(action);
        }
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    };
    let tcp_flags = parse::l4_checked(ctx, &pkt)?;
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
    // Counted where IPVS counts (ip_vs_in), before the transmit step.
    stats::inbound(svc.id, flow.backend, flow.new, pkt.ip_len as u64);
    match be.fwd {
        fwd_mode::DR => dr::forward(ctx, &pkt, &be),
        fwd_mode::NAT => nat::request(ctx, &pkt, &be, flow.backend, flow.new, now, epoch),
        fwd_mode::TUN => tun::encap(ctx, &pkt, &be),
        _ => Err(Verdict::Drop(cnt::DROP_INTERNAL)),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
