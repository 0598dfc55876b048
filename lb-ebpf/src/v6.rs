//! The IPv6 balancer: `lb_xdp6` and `lb_new6`, what `lb_xdp` and `lb_new` are for IPv4.
//!
//! `lb_xdp` tail-calls `lb_xdp6` for every IPv6 frame (an ethertype test on its non-IPv4
//! branch: IPv4 packets pay nothing for IPv6), so each program keeps its own verifier budget.
//! The connection table, the schedulers and persistence are the IPv4 code, generic over
//! `flow::FlowPkt`; the keys are the packet's 16-byte addresses. NDP, MLD and every other
//! packet not for a service, a NAT real server's connection, or (ICMPv6 errors) a
//! connection pass to the stack untouched.

use aya_ebpf::{
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::{
    Addr, SvcKey, backend_flags, cnt, fwd as fwd_mode, prog_index, proto, settings_flags,
    size::{NAT_RS_SLOTS, SVC_SLOTS},
};

use crate::{
    SCHEDULED, Verdict, conntrack, dr,
    flow::FlowPkt,
    hand_back,
    maps::{BACKENDS, CONNS, NAT_RS, PROGS, SETTINGS, SVC_TABLE},
    parse6::{self, Packet6},
    service, stats,
    stats::count,
    verdict,
};

/// Called from `lb_xdp` for an IPv6 frame: hands it to `lb_xdp6`. Returns only if the tail
/// call failed (no `lb_xdp6` in `PROGS`: a control plane of an older layout), and the frame
/// is then passed as before IPv6 was balanced.
#[inline(always)]
pub fn enter(ctx: &XdpContext) {
    // SAFETY: a tail call; on success it does not return.
    unsafe {
        let _ = PROGS.tail_call(ctx, prog_index::XDP6);
    }
}

/// What `lb_xdp6` hands to `lb_new6` (`maps::Pending` for IPv6).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending6 {
    pub svc: lb_common::Service,
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
    pub payload_len: u16,
    pub l4_off: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub reuse: u8,
    pub valid: u8,
    pub hop_limit: u8,
    pub _pad: [u8; 3],
    pub epoch: u32,
    pub now: u64,
    pub flags: u32,
    pub backend: u32,
    pub new: u32,
    /// 1 if the new connection was recorded in `EMBRYO` (`conntrack::Flow::embryo`).
    pub embryo: u32,
}

#[map(name = "LB_PENDING6")]
pub static PENDING6: PerCpuArray<Pending6> = PerCpuArray::with_max_entries(1, 0);

/// The IPv6 balancer (`lb_common::progs::BALANCER6`).
#[xdp]
// In the section's entry, as `lb_xdp` (the macro's wrapper would otherwise call it).
#[inline(always)]
pub fn lb_xdp6(ctx: XdpContext) -> u32 {
    verdict(balance(&ctx))
}

/// New IPv6 connections (`lb_common::progs::NEW6`).
#[xdp]
pub fn lb_new6(ctx: XdpContext) -> u32 {
    let r = schedule_new(ctx.ctx);
    if r != SCHEDULED {
        return r;
    }
    let r = insert_embryo(ctx.ctx);
    if r != SCHEDULED {
        return r;
    }
    forward_new(ctx.ctx)
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Verdict> {
    let pkt = parse6::parse(ctx)?;
    let settings = SETTINGS.get(0).ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    let (half, now, epoch, flags) = (
        settings.svc_half,
        settings.clock_ns,
        settings.route_epoch,
        settings.flags,
    );
    if pkt.proto == proto::ICMPV6 {
        return crate::icmp6::forward_error(ctx, &pkt, half, epoch);
    }
    let key = SvcKey::of(pkt.daddr, pkt.dport, pkt.proto);
    let mut found = service::lookup(&SVC_TABLE, SVC_SLOTS, half, &key);
    if found.is_none() && flags & settings_flags::HAS_PORT0 != 0 {
        let any = SvcKey { port: 0, ..key };
        found = service::lookup(&SVC_TABLE, SVC_SLOTS, half, &any);
    }
    let Some(svc) = found else {
        let rs = SvcKey::of(pkt.saddr, pkt.sport, pkt.proto);
        if flags & settings_flags::HAS_NAT != 0
            && service::lookup(&NAT_RS, NAT_RS_SLOTS, half, &rs).is_some()
        {
            let (action, svc_id, backend) = crate::nat6::reply(ctx, &pkt, now, epoch)?;
            stats::outbound(svc_id, backend, pkt.ip_len() as u64);
            return Ok(action);
        }
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    };
    let tcp_flags = parse6::l4_checked(ctx, &pkt)?;
    let looked = match conntrack::lookup(&pkt, &svc, tcp_flags, now, flags) {
        // IPVS's sloppy_tcp, as for IPv4 (`balance`).
        Err(Verdict::Pass(c))
            if c == cnt::PASS_NO_CONN && crate::sync::sloppy(flags, tcp_flags) =>
        {
            conntrack::Lookup::Create { reuse: false }
        }
        r => r?,
    };
    let flow = match looked {
        conntrack::Lookup::Found(flow) => flow,
        conntrack::Lookup::Create { reuse } => {
            let p = PENDING6
                .get_ptr_mut(0)
                .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
            // SAFETY: per-CPU value; this packet is the only one running on this CPU.
            unsafe {
                (*p).svc = svc;
                (*p).saddr = pkt.saddr;
                (*p).daddr = pkt.daddr;
                (*p).sport = pkt.sport;
                (*p).dport = pkt.dport;
                (*p).payload_len = pkt.payload_len;
                (*p).l4_off = pkt.l4_off as u16;
                (*p).proto = pkt.proto;
                (*p).tcp_flags = tcp_flags;
                (*p).reuse = reuse as u8;
                (*p).valid = 1;
                (*p).hop_limit = pkt.hop_limit;
                (*p).epoch = epoch;
                (*p).now = now;
                (*p).flags = flags;
            }
            // SAFETY: a tail call; on success it does not return.
            unsafe {
                let _ = PROGS.tail_call(ctx, prog_index::NEW6);
            }
            return Err(Verdict::Drop(cnt::DROP_TAIL_CALL));
        }
    };
    forward(
        ctx,
        &pkt,
        svc.id,
        flow.backend,
        flow.new,
        flow.embryo,
        now,
        epoch,
        flags,
    )
}

/// Sends a packet of connection (`backend`, `new`) on its way (`crate::forward` for IPv6).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward(
    ctx: &XdpContext,
    pkt: &Packet6,
    svc_id: u32,
    backend: u32,
    new: bool,
    embryo: bool,
    now: u64,
    epoch: u32,
    flags: u32,
) -> Result<u32, Verdict> {
    if new {
        count(cnt::NEW_CONN);
    }
    let be = BACKENDS
        .get(backend)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    if be.flags & backend_flags::AVAILABLE == 0 {
        if flags & settings_flags::EXPIRE_NODEST != 0 {
            let key = pkt.key();
            if CONNS.remove(&key).is_err() {
                crate::embryo::clear(&key);
            }
        }
        return Err(Verdict::Drop(cnt::DROP_BACKEND_GONE));
    }
    stats::inbound(svc_id, backend, new, pkt.ip_len() as u64);
    match be.fwd {
        // DR6: the MACs only; the Hop Limit is left as DR leaves IPv4's TTL (the director
        // is no router hop for the packet: the real server sees the client's packet).
        fwd_mode::DR => {
            if be.flags & backend_flags::NEIGH_OK == 0 {
                return Err(Verdict::Drop(cnt::DROP_NO_NEIGH));
            }
            dr::set_macs(pkt.eth, &be.dmac, &be.smac);
            dr::out(ctx, be.ifindex)
        }
        fwd_mode::NAT => crate::nat6::request(ctx, pkt, be, backend, new, embryo, now, epoch),
        fwd_mode::TUN => crate::tun6::encap(ctx, pkt, be),
        _ => Err(Verdict::Drop(cnt::DROP_INTERNAL)),
    }
}

/// `lb_new6`'s scheduling step (`crate::schedule_new` for IPv6), a BPF-to-BPF function.
#[inline(never)]
fn schedule_new(ctx: *mut aya_ebpf::bindings::xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let Some(p) = PENDING6.get_ptr_mut(0) else {
        return verdict(Err(Verdict::Drop(cnt::DROP_INTERNAL)));
    };
    // SAFETY: per-CPU value; this packet is the only one running on this CPU.
    let s = unsafe { &mut *p };
    if s.valid == 0 {
        return verdict(Err(Verdict::Drop(cnt::DROP_INTERNAL)));
    }
    s.valid = 0;
    let flow = parse6::from_pending(&ctx, s)
        .and_then(|pkt| conntrack::create(&pkt, &s.svc, s.tcp_flags, s.now, s.flags, s.reuse != 0));
    hand_back(flow, &mut s.backend, &mut s.new, &mut s.embryo)
}

/// Records the embryonic connection `schedule_new` scheduled (a SYN's, `Flow::new` and
/// `embryo` in the hand-over slot) in its `EMBRYO` slot, a BPF-to-BPF function: the state at
/// the call is the context alone, so the verifier walks the insert once, not once per
/// scheduler path. Another connection of the tuple found there (a retransmitted SYN) is
/// followed instead; `SCHEDULED`, or the (counted) action.
#[inline(never)]
fn insert_embryo(ctx: *mut aya_ebpf::bindings::xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let Some(p) = PENDING6.get_ptr_mut(0) else {
        return verdict(Err(Verdict::Drop(cnt::DROP_INTERNAL)));
    };
    // SAFETY: per-CPU value; this packet is the only one running on this CPU.
    let s = unsafe { &mut *p };
    if s.new == 0 || s.embryo == 0 {
        return SCHEDULED;
    }
    let flow = parse6::from_pending(&ctx, s).and_then(|pkt| {
        conntrack::record(
            &pkt,
            &s.svc,
            s.tcp_flags,
            s.now,
            s.flags,
            false,
            s.backend,
            true,
        )
    });
    hand_back(flow, &mut s.backend, &mut s.new, &mut s.embryo)
}

/// `lb_new6`'s forwarding step (`crate::forward_new` for IPv6).
#[inline(never)]
fn forward_new(ctx: *mut aya_ebpf::bindings::xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let Some(p) = PENDING6.get_ptr(0) else {
        return verdict(Err(Verdict::Drop(cnt::DROP_INTERNAL)));
    };
    // SAFETY: per-CPU value, see `schedule_new`.
    let s = unsafe { &*p };
    let r = match parse6::from_pending(&ctx, s) {
        Ok(pkt) => forward(
            &ctx,
            &pkt,
            s.svc.id,
            s.backend,
            s.new != 0,
            s.embryo != 0,
            s.now,
            s.epoch,
            s.flags,
        ),
        Err(v) => Err(v),
    };
    verdict(r)
}
