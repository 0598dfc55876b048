//! The XDP balancer: LVS forwarding (DR, NAT, TUN) for IPv4 TCP/UDP virtual services (and,
//! in programs of their own reached by tail call, IPv6 ones: v6.rs).
//!
//! `lb_xdp` forwards packets of known connections; a packet that opens one goes by tail call
//! to `lb_new` with what `lb_xdp` learnt about it (`maps::Pending`), which schedules,
//! records and forwards it (see `lb_common::progs::NEW`).
#![no_std]
#![no_main]
// Inline BPF assembly for the fetching atomic add (select.rs).
#![feature(asm_experimental_arch)]

mod conntrack;
mod csum;
mod dr;
mod embryo;
mod flow;
mod fwd;
mod fwd6;
mod icmp;
mod icmp6;
mod maps;
mod mem;
mod nat;
mod nat6;
mod parse;
mod parse6;
mod select;
mod service;
mod stats;
mod sweep;
mod sync;
mod tun;
mod tun6;
mod v6;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    SvcKey, backend_flags, cnt, fwd as fwd_mode, prog_index, proto, settings_flags,
    size::{NAT_RS_SLOTS, SVC_SLOTS},
};

use crate::{
    maps::{BACKENDS, CONNS, NAT_RS, PENDING, PROGS, SETTINGS, SVC_TABLE},
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
///
/// `inline(always)` reaches the function `#[xdp]` wraps (the macro keeps its attributes):
/// left to LLVM, that body (too large to inline by its measure) stays a BPF-to-BPF call
/// under the section's entry, and every packet pays its call and return, which SRSO's
/// "Safe RET" makes dear.
#[xdp]
#[inline(always)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    verdict(balance(&ctx))
}

/// New connections: the packet `lb_xdp` handed over (`PENDING`) is scheduled, recorded and
/// forwarded here.
#[xdp]
pub fn lb_new(ctx: XdpContext) -> u32 {
    verdict(open(&ctx))
}

/// What `lb_xdp` works out first about an inbound packet for a service.
struct Inbound {
    pkt: parse::Packet,
    /// In its `SVC_TABLE` slot (`service::find`).
    svc: &'static lb_common::Service,
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
    let key = SvcKey::v4(pkt.daddr, pkt.dport, pkt.proto);
    let mut found = service::find(&SVC_TABLE, SVC_SLOTS, half, &key);
    // A persistent service on port 0 takes every port of its VIP that has no service of its
    // own (IPVS tries the exact port, then port 0).
    if found.is_none() && flags & settings_flags::HAS_PORT0 != 0 {
        let any = SvcKey { port: 0, ..key };
        found = service::find(&SVC_TABLE, SVC_SLOTS, half, &any);
    }
    let Some(svc) = found else {
        // Not for a service; from a NAT real server it may be a reply to SNAT.
        let rs = SvcKey::v4(pkt.saddr, pkt.sport, pkt.proto);
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

/// `lb_xdp`: a packet of a known connection is forwarded here; one that opens a connection
/// is handed to `lb_new` with everything learnt so far.
#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Verdict> {
    let i = match inbound(ctx)? {
        Ok(i) => i,
        Err(action) => return Ok(action),
    };
    let looked = match conntrack::lookup(&i.pkt, i.svc, i.tcp_flags, i.now, i.flags) {
        // IPVS's sloppy_tcp: a mid-stream segment without an entry is scheduled too.
        Err(Verdict::Pass(c)) if c == cnt::PASS_NO_CONN && sync::sloppy(i.flags, i.tcp_flags) => {
            conntrack::Lookup::Create { reuse: false }
        }
        r => r?,
    };
    let flow = match looked {
        conntrack::Lookup::Found(flow) => flow,
        conntrack::Lookup::Create { reuse } => {
            hand_over(&i, reuse)?;
            // SAFETY: a tail call; on success it does not return.
            unsafe { PROGS.tail_call(ctx, prog_index::NEW) };
            return Err(Verdict::Drop(cnt::DROP_TAIL_CALL));
        }
    };
    forward(
        ctx,
        &i.pkt,
        i.svc.id,
        flow.backend,
        flow.new,
        flow.embryo,
        i.now,
        i.epoch,
        i.flags,
    )
}

/// Writes what `lb_new` needs into this CPU's `PENDING` slot.
#[inline(always)]
fn hand_over(i: &Inbound, reuse: bool) -> Result<(), Verdict> {
    let p = PENDING
        .get_ptr_mut(0)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    // SAFETY: per-CPU value; this packet is the only one running on this CPU.
    unsafe {
        (*p).svc = *i.svc;
        (*p).saddr = i.pkt.saddr;
        (*p).daddr = i.pkt.daddr;
        (*p).sport = i.pkt.sport;
        (*p).dport = i.pkt.dport;
        (*p).ip_len = i.pkt.ip_len;
        (*p).frags = i.pkt.frags;
        (*p).proto = i.pkt.proto;
        (*p).tcp_flags = i.tcp_flags;
        (*p).reuse = reuse as u8;
        (*p).valid = 1;
        (*p).epoch = i.epoch;
        (*p).now = i.now;
        (*p).flags = i.flags;
    }
    Ok(())
}

/// Sends a packet of connection (`backend`, `new`) of service `svc_id` on its way: what
/// both programs do once the connection is known. `embryo`: a new connection was recorded in
/// `EMBRYO` (where a NAT one's reply entry goes too).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward(
    ctx: &XdpContext,
    pkt: &parse::Packet,
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
    // Read in place: a copy of the 88-byte value would be stores and loads on every packet.
    let be = BACKENDS
        .get(backend)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    if be.flags & backend_flags::AVAILABLE == 0 {
        // Its server was deleted. IPVS drops the packet; with expire_nodest_conn it also
        // forgets the connection, so the client's next attempt is scheduled afresh.
        if flags & settings_flags::EXPIRE_NODEST != 0 {
            let key = conntrack::flow_key(pkt);
            if CONNS.remove(&key).is_err() {
                embryo::clear(&key);
            }
        }
        return Err(Verdict::Drop(cnt::DROP_BACKEND_GONE));
    }
    // Counted where IPVS counts (ip_vs_in), before the transmit step.
    stats::inbound(svc_id, backend, new, pkt.ip_len as u64);
    match be.fwd {
        fwd_mode::DR => dr::forward(ctx, pkt, be),
        fwd_mode::NAT => nat::request(ctx, pkt, be, backend, new, embryo, now, epoch),
        fwd_mode::TUN => tun::encap(ctx, pkt, be),
        _ => Err(Verdict::Drop(cnt::DROP_INTERNAL)),
    }
}

/// `lb_new`: schedules and records the connection of the packet `lb_xdp` handed over
/// (`schedule_new`), then forwards it (`forward_new`). Both steps are BPF-to-BPF functions
/// so that each has its own stack frame (together, inlined, they need more than the 512
/// bytes a BPF program may use), called from a frame of almost nothing.
#[inline(always)]
fn open(ctx: &XdpContext) -> Result<u32, Verdict> {
    let r = schedule_new(ctx.ctx);
    if r != SCHEDULED {
        return Ok(r);
    }
    let r = insert_embryo(ctx.ctx);
    if r != SCHEDULED {
        return Ok(r);
    }
    Ok(forward_new(ctx.ctx))
}

/// `schedule_new`'s and `insert_embryo`'s answer (and `v6.rs`'s) when the packet is to be
/// forwarded (not an XDP action).
const SCHEDULED: u32 = u32::MAX;

/// Hands a new-flow step's result on to the next step through this CPU's hand-over slot
/// (`Pending`, or `v6::Pending6`: two types, hence its three fields rather than the slot):
/// `SCHEDULED`, or the (counted) action when the packet goes no further.
#[inline(always)]
fn hand_back(
    flow: Result<conntrack::Flow, Verdict>,
    backend: &mut u32,
    new: &mut u32,
    embryo: &mut u32,
) -> u32 {
    match flow {
        Ok(flow) => {
            *backend = flow.backend;
            *new = flow.new as u32;
            *embryo = flow.embryo as u32;
            SCHEDULED
        }
        Err(v) => verdict(Err(v)),
    }
}

/// Schedules and records the connection of the packet in the `PENDING` slot and leaves the
/// result there; `SCHEDULED`, or the (counted) action when the packet goes no further.
#[inline(never)]
fn schedule_new(ctx: *mut aya_ebpf::bindings::xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let Some(p) = PENDING.get_ptr_mut(0) else {
        return verdict(Err(Verdict::Drop(cnt::DROP_INTERNAL)));
    };
    // SAFETY: per-CPU value; this packet is the only one running on this CPU. Read in place.
    let s = unsafe { &mut *p };
    if s.valid == 0 {
        return verdict(Err(Verdict::Drop(cnt::DROP_INTERNAL)));
    }
    s.valid = 0;
    let flow = parse::from_pending(&ctx, s)
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
    let Some(p) = PENDING.get_ptr_mut(0) else {
        return verdict(Err(Verdict::Drop(cnt::DROP_INTERNAL)));
    };
    // SAFETY: per-CPU value; this packet is the only one running on this CPU.
    let s = unsafe { &mut *p };
    if s.new == 0 || s.embryo == 0 {
        return SCHEDULED;
    }
    let flow = parse::from_pending(&ctx, s).and_then(|pkt| {
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

/// `lb_new`'s forwarding step, a BPF-to-BPF function: everything comes from the `PENDING`
/// slot, so the state at the call is nothing but the context, and the many scheduler paths
/// that reach it are pruned as one (inlined after them, the verifier would walk the
/// forwarding code once per scheduler path: that is why it used to be a third program).
#[inline(never)]
fn forward_new(ctx: *mut aya_ebpf::bindings::xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let Some(p) = PENDING.get_ptr(0) else {
        return verdict(Err(Verdict::Drop(cnt::DROP_INTERNAL)));
    };
    // SAFETY: per-CPU value, see `open`.
    let s = unsafe { &*p };
    let r = match parse::from_pending(&ctx, s) {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
