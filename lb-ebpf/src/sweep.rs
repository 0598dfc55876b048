//! The sweep's in-kernel steps. The daemon walks the connection tables and the persistence
//! templates itself, in bounded chunks (`BPF_MAP_LOOKUP_BATCH`), counts what is plainly alive,
//! and hands `lb_sweep` only what needs a decision made against the live entry: keys that look
//! expired (at most `size::SWEEP_KEYS` per run), templates to re-arm or expire, and ranges of
//! backends whose counts to publish. Every run does a bounded amount of work, so no run holds
//! its CPU (bottom halves off, under `BPF_PROG_TEST_RUN`) for long, whatever the table size;
//! the single `bpf_for_each_map_elem` over the whole table that this replaces could not stop
//! and resume.
//!
//! The data path counts connections it creates in `RS_NEW`; the daemon notes those counts
//! before its walk and `PUBLISH` subtracts them after, so a connection created during the walk
//! is counted at least once (the schedulers prefer over- to under-counting).

use core::ffi::c_void;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_loop, macros::xdp, programs::XdpContext};
use lb_common::{
    Conn, FlowKey, PersistKey, SweepOp, TIMEOUT_UDP, conn_flags, fwd as fwd_mode, proto, size,
    svc_flags, sweep_op, sweep_result, tcp_state,
};

use crate::{
    maps::{
        BACKENDS, CONNS, PERSIST, RS_CONNS, RS_NEW, RS_TALLY, SETTINGS, SVC_INFO, SWEEP_KEYS,
        TIMEOUTS,
    },
    select::add32,
};

const NS: u64 = 1_000_000_000;
/// A NAT reply entry whose connection is gone is kept this long (covering the moment between
/// the two inserts of a new connection).
const ORPHAN_REPLY_NS: u64 = 10 * NS;

#[repr(C)]
struct Ctx {
    now: u64,
    /// `PUBLISH`: the first backend.
    start: u32,
    _pad: u32,
}

/// The live value of `k` in the table the step checks.
#[inline(always)]
fn get(embryo: bool, k: &FlowKey) -> Option<Conn> {
    let p = if embryo {
        crate::embryo::find(k)? as *const Conn
    } else {
        CONNS.get_ptr(k)?
    };
    // SAFETY: pointer into the map value, copied at once.
    Some(unsafe { *p })
}

#[inline(always)]
fn remove(embryo: bool, k: &FlowKey) {
    if embryo {
        // Swaps the check word seen for `EMPTY`: a SYN another CPU wrote into the slot
        // since stays.
        crate::embryo::clear(k);
    } else {
        let _ = CONNS.remove(k);
    }
}

/// Expires connection `k` if it is idle beyond its timeout (a NAT connection is as fresh as
/// the later of its two entries), and says how the kept ones count.
#[inline(always)]
fn check_conn(embryo: bool, k: &FlowKey, now: u64) -> u16 {
    let Some(v) = get(embryo, k) else {
        return sweep_result::GONE;
    };
    let Some(be) = BACKENDS.get(v.backend) else {
        remove(embryo, k);
        return sweep_result::GONE;
    };
    let idle = |seen: u64| now.saturating_sub(seen);
    if v.flags & conn_flags::REPLY != 0 {
        // Kept while its connection (the request entry) is.
        let fwd = k.nat_request(be.vaddr, be.vport);
        if CONNS.get_ptr(&fwd).is_none()
            && crate::embryo::find(&fwd).is_none()
            && idle(v.last_seen_ns) >= ORPHAN_REPLY_NS
        {
            remove(embryo, k);
            return sweep_result::GONE;
        }
        return sweep_result::KEPT;
    }
    let mut last = v.last_seen_ns;
    let mut reply = None;
    if be.fwd == fwd_mode::NAT {
        let r = k.nat_reply(be.addr, be.port);
        // An embryonic connection's reply entry is embryonic too (until promotion moves both).
        let (rv, in_embryo) = match CONNS.get_ptr(&r) {
            Some(rv) => (Some(rv), false),
            None => (crate::embryo::find(&r).map(|c| c as *const Conn), true),
        };
        if let Some(rv) = rv {
            // SAFETY: pointer into the map value.
            let seen = unsafe { (*rv).last_seen_ns };
            if seen > last {
                last = seen;
            }
            reply = Some((r, in_embryo));
        }
    }
    let tcp = k.proto == proto::TCP;
    let state = if (v.state as usize) < tcp_state::COUNT {
        v.state as u32
    } else {
        tcp_state::CLOSE as u32
    };
    let idx = if tcp { state } else { TIMEOUT_UDP };
    let timeout = TIMEOUTS.get(idx).copied().unwrap_or(0) as u64 * NS;
    if idle(last) >= timeout {
        remove(embryo, k);
        if let Some((r, in_embryo)) = reply {
            remove(in_embryo, &r);
        }
        return sweep_result::GONE;
    }
    if tcp && tcp_state::ACTIVE[(state as usize) % tcp_state::COUNT] {
        sweep_result::ACTIVE
    } else {
        sweep_result::INACTIVE
    }
}

/// Re-arms template `k` (encoded as `sweep_op::TEMPLATES` says) if it still controls a
/// connection of its backend (IPVS re-arms it then), else expires it once idle beyond its
/// service's persistence timeout.
#[inline(always)]
fn check_template(k: &FlowKey, now: u64) -> u16 {
    let tk = PersistKey {
        svc_id: k.saddr.w[0],
        client: k.daddr,
    };
    let Some(t) = PERSIST.get_ptr_mut(&tk) else {
        return sweep_result::GONE;
    };
    let backend = k.sport as u32 | ((k.dport as u32) << 16);
    // SAFETY: pointer into the map value, fields one at a time.
    let (tb, seen) = unsafe { ((*t).backend, (*t).last_seen_ns) };
    if k.proto == 1 && tb == backend {
        if seen < now {
            // SAFETY: as above.
            unsafe { (*t).last_seen_ns = now };
        }
        return sweep_result::INACTIVE;
    }
    let timeout = SVC_INFO
        .get(tk.svc_id)
        .filter(|s| s.id == tk.svc_id && s.flags & svc_flags::PERSISTENT != 0)
        .map_or(0, |s| s.persist_timeout as u64 * NS);
    if now.saturating_sub(seen) >= timeout {
        let _ = PERSIST.remove(&tk);
        return sweep_result::GONE;
    }
    sweep_result::INACTIVE
}

macro_rules! each_key {
    ($name:ident, $check:expr) => {
        extern "C" fn $name(i: u64, ctx: *mut c_void) -> i64 {
            // SAFETY: our context, see `lb_sweep`.
            let now = unsafe { (*(ctx as *const Ctx)).now };
            let Some(kp) = SWEEP_KEYS.get_ptr_mut(i as u32) else {
                return 1;
            };
            // SAFETY: pointer into the map value; only the daemon's sweep uses this map.
            let mut k = unsafe { *kp };
            // The result field: the daemon marks it unseen; a table key has it zero.
            k._pad1 = 0;
            let r: u16 = $check(&k, now);
            // SAFETY: as above.
            unsafe { (*kp)._pad1 = r };
            0
        }
    };
}

each_key!(conn_step, |k: &FlowKey, now| check_conn(false, k, now));
each_key!(embryo_step, |k: &FlowKey, now| check_conn(true, k, now));
each_key!(template_step, check_template);

/// Publishes backend `start + i`'s counts, with IPVS's overload hysteresis (set at `-x`,
/// cleared below `-y`, or below 3/4 of `-x` without one), and takes the new connections it saw.
extern "C" fn publish(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: our context, see `lb_sweep`.
    let id = unsafe { (*(ctx as *const Ctx)).start }.wrapping_add(i as u32);
    let (Some(t), Some(rs), Some(be)) =
        (RS_TALLY.get(id), RS_CONNS.get_ptr_mut(id), BACKENDS.get(id))
    else {
        return 1;
    };
    let t = *t;
    let total = t.active as u64 + t.inactive as u64;
    let (u, l) = (be.u_threshold as u64, be.l_threshold as u64);
    // Overloaded already: flagged by the last sweep, or over `-x` since with the connections
    // created since (`t.overloaded` holds their number), which the data path has been
    // treating as overloaded (IPVS flags a server the moment a new connection takes it to
    // `-x`).
    // SAFETY: pointer into the map value; the data path only reads it.
    let (flag, before) = unsafe {
        (
            (*rs).overloaded != 0,
            (*rs).active as u64 + (*rs).inactive as u64 + t.overloaded as u64,
        )
    };
    let was = flag || (u != 0 && before >= u);
    let overloaded = if u == 0 {
        false
    } else if was {
        !((l != 0 && total < l) || (l == 0 && total * 4 < u * 3))
    } else {
        total >= u
    };
    // SAFETY: as above; field by field, so a concurrent reader sees each value whole.
    unsafe {
        (*rs).active = t.active;
        (*rs).inactive = t.inactive;
        (*rs).persist = t.persist;
        (*rs).overloaded = overloaded as u32;
    }
    if t.overloaded != 0
        && let Some(n) = RS_NEW.get_ptr_mut(id)
    {
        // SAFETY: a u32 all CPUs update only atomically; adding the two's complement subtracts.
        unsafe { add32(n, 0u32.wrapping_sub(t.overloaded)) };
    }
    0
}

/// One sweep step: the `SweepOp` at the start of the frame says which.
#[xdp]
pub fn lb_sweep(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + core::mem::size_of::<SweepOp>() > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: bounds checked just above.
    let op = unsafe { *(data as *const SweepOp) };
    let Some(settings) = SETTINGS.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let mut c = Ctx {
        now: settings.clock_ns,
        start: op.start,
        _pad: 0,
    };
    let cp = &mut c as *mut Ctx as *mut c_void;
    let (f, n): (*mut c_void, u32) = match op.op {
        sweep_op::CONNS => (conn_step as *mut c_void, op.count.min(size::SWEEP_KEYS)),
        sweep_op::EMBRYO => (embryo_step as *mut c_void, op.count.min(size::SWEEP_KEYS)),
        sweep_op::TEMPLATES => (template_step as *mut c_void, op.count.min(size::SWEEP_KEYS)),
        sweep_op::PUBLISH => (publish as *mut c_void, op.count.min(size::MAX_BACKENDS)),
        _ => return xdp_action::XDP_ABORTED,
    };
    // SAFETY: a callback of the helper's signature; `c` outlives the call.
    unsafe { bpf_loop(n, f, cp, 0) };
    xdp_action::XDP_PASS
}
