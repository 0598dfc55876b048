//! The XDP balancer: LVS forwarding (DR, NAT, TUN) for IPv4 TCP/UDP virtual services.
//!
//! `lb_xdp` forwards packets of known connections; a packet that opens one goes by tail call
//! to `lb_new`, which schedules it and tail-calls `lb_resume` to forward it (see
//! `lb_common::progs::NEW`).
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
mod sweep;
mod tun;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    SvcKey, backend_flags, cnt, fwd as fwd_mode, prog_index, proto, settings_flags,
    size::{NAT_RS_SLOTS, SVC_SLOTS},
};

use crate::{
    maps::{BACKENDS, CONNS, EMBRYO, NAT_RS, PENDING, PROGS, SETTINGS, SVC_TABLE},
    stats::count,
};

/// Why a packet leaves the program other than by being forwarded; the `u32` is the counter
/// (`lb_common::cnt`) it is accounted to.
pub enum Verdict {
    Pass(u32),
    Drop(u32),
}

#[inline(always)]
fn verdict(r: Result<u32, Verdict>) -> u32 {
    match r {
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

/// The balancer: every frame of the interfaces it is attached to.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    verdict(balance(&ctx, false))
}

/// `lb_xdp` for the packet `lb_new` just scheduled (`PENDING`): the same code without the
/// connection lookup, so that no other packet pays for checking `PENDING`.
#[xdp]
pub fn lb_resume(ctx: XdpContext) -> u32 {
    verdict(balance(&ctx, true))
}

/// New connections: scheduled and recorded here, then handed back to `lb_xdp` to forward.
#[xdp]
pub fn lb_new(ctx: XdpContext) -> u32 {
    verdict(open(&ctx))
}

/// What both programs work out first about an inbound packet for a service.
struct Inbound {
    pkt: parse::Packet,
    svc: lb_common::Service,
    tcp_flags: u8,
    now: u64,
    epoch: u32,
    flags: u32,
}

/// Parses a frame and finds its service; everything else (ICMP errors, NAT replies, other
/// traffic) is dealt with here and comes back as `Err` or `Ok(Err(action))`.
#[inline(always)]
fn inbound(ctx: &XdpContext) -> Result<Result<Inbound, u32>, Verdict> {
    let pkt = parse::parse(ctx)?;
    let settings = SETTINGS.get(0).ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    let (half, now, epoch, flags) = (
        settings.svc_half,
        settings.clock_ns,
        settings.route_epoch,
        settings.flags,
    );
    if pkt.proto == proto::ICMP {
        return icmp::forward_error(ctx, &pkt, half).map(Err);
    }
    let key = SvcKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    let mut found = service::lookup(&SVC_TABLE, SVC_SLOTS, half, &key);
    // A persistent service on port 0 takes every port of its VIP that has no service of its
    // own (IPVS tries the exact port, then port 0).
    if found.is_none() && flags & settings_flags::HAS_PORT0 != 0 {
        let any = SvcKey { port: 0, ..key };
        found = service::lookup(&SVC_TABLE, SVC_SLOTS, half, &any);
    }
    let Some(svc) = found else {
        // Not for a service; from a NAT real server it may be a reply to SNAT.
        let rs = SvcKey {
            addr: pkt.saddr,
            port: pkt.sport,
            proto: pkt.proto,
            _pad: 0,
        };
        if flags & settings_flags::HAS_NAT != 0
            && service::lookup(&NAT_RS, NAT_RS_SLOTS, half, &rs).is_some()
        {
            let (action, svc_id, backend) = nat::reply(ctx, &pkt, now, epoch)?;
            stats::outbound(svc_id, backend, pkt.ip_len as u64);
            return Ok(Err(action));
        }
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    };
    let tcp_flags = parse::l4_checked(ctx, &pkt)?;
    Ok(Ok(Inbound {
        pkt,
        svc,
        tcp_flags,
        now,
        epoch,
        flags,
    }))
}

#[inline(always)]
fn balance(ctx: &XdpContext, resume: bool) -> Result<u32, Verdict> {
    let i = match inbound(ctx)? {
        Ok(i) => i,
        Err(action) => return Ok(action),
    };
    let pkt = &i.pkt;
    let flow = if resume {
        // Back from `lb_new` with this packet's connection.
        take_pending(pkt).ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?
    } else {
        match conntrack::lookup(pkt, &i.svc, i.tcp_flags, i.now)? {
            conntrack::Lookup::Found(flow) => flow,
            conntrack::Lookup::Create { .. } => {
                // SAFETY: a tail call; on success it does not return.
                unsafe { PROGS.tail_call(ctx, prog_index::NEW) };
                return Err(Verdict::Drop(cnt::DROP_TAIL_CALL));
            }
        }
    };
    if flow.new {
        count(cnt::NEW_CONN);
    }
    let be = *BACKENDS
        .get(flow.backend)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    if be.flags & backend_flags::AVAILABLE == 0 {
        // Its server was deleted. IPVS drops the packet; with expire_nodest_conn it also
        // forgets the connection, so the client's next attempt is scheduled afresh.
        if i.flags & settings_flags::EXPIRE_NODEST != 0 {
            let key = conntrack::flow_key(pkt);
            if CONNS.remove(&key).is_err() {
                let _ = EMBRYO.remove(&key);
            }
        }
        return Err(Verdict::Drop(cnt::DROP_BACKEND_GONE));
    }
    // Counted where IPVS counts (ip_vs_in), before the transmit step.
    stats::inbound(i.svc.id, flow.backend, flow.new, pkt.ip_len as u64);
    match be.fwd {
        fwd_mode::DR => dr::forward(ctx, pkt, &be),
        fwd_mode::NAT => nat::request(ctx, pkt, &be, flow.backend, flow.new, i.now, i.epoch),
        fwd_mode::TUN => tun::encap(ctx, pkt, &be),
        _ => Err(Verdict::Drop(cnt::DROP_INTERNAL)),
    }
}

/// `lb_new`: schedules and records the packet's connection, then tail-calls `lb_resume` with
/// the result in `PENDING`.
#[inline(always)]
fn open(ctx: &XdpContext) -> Result<u32, Verdict> {
    let i = match inbound(ctx)? {
        Ok(i) => i,
        Err(action) => return Ok(action),
    };
    let flow = conntrack::lookup_or_create(&i.pkt, &i.svc, i.tcp_flags, i.now, i.flags)?;
    let p = PENDING
        .get_ptr_mut(0)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    // SAFETY: per-CPU value; this packet is the only one running on this CPU.
    unsafe {
        (*p).key = conntrack::flow_key(&i.pkt);
        (*p).backend = flow.backend;
        (*p).new = flow.new as u32;
    }
    // SAFETY: a tail call; on success it does not return.
    unsafe { PROGS.tail_call(ctx, prog_index::RESUME) };
    Err(Verdict::Drop(cnt::DROP_TAIL_CALL))
}

/// The connection `lb_new` left for this packet, if any (consumed).
#[inline(always)]
fn take_pending(pkt: &parse::Packet) -> Option<conntrack::Flow> {
    let p = PENDING.get_ptr_mut(0)?;
    // SAFETY: per-CPU value, see `open`.
    unsafe {
        if (*p).backend == 0 || (*p).key != conntrack::flow_key(pkt) {
            return None;
        }
        let flow = conntrack::Flow {
            backend: (*p).backend,
            new: (*p).new != 0,
        };
        (*p).backend = 0;
        Some(flow)
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
