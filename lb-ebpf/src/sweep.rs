//! The sweep, run by the daemon every second with `BPF_PROG_TEST_RUN`: it walks the connection
//! table and the persistence templates inside the kernel (one call, not one syscall per
//! entry), expires what has been idle longer than its IPVS timeout, and publishes exact
//! per-backend counts (active, inactive, templates) with IPVS's overload hysteresis.
//!
//! The data path counts connections it creates in `RS_NEW`; the sweep notes those counts
//! before its walk and subtracts them after, so a connection created during the walk is
//! counted at least once (the schedulers prefer over- to under-counting).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_for_each_map_elem, bpf_loop},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    Conn, FlowKey, PersistKey, PersistVal, RsConns, SweepStats, TIMEOUT_UDP, conn_flags,
    fwd as fwd_mode, proto, size, svc_flags, tcp_state,
};

use crate::{
    maps::{
        BACKENDS, CONNS, PERSIST, RS_CONNS, RS_NEW, RS_TALLY, SETTINGS, SVC_INFO, SWEEP, TIMEOUTS,
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
    stats: SweepStats,
}

/// Zeroes backend `i`'s tally and notes its new-connection count (kept in `overloaded`, which
/// the tally does not otherwise use).
extern "C" fn prepare(i: u64, _ctx: *mut c_void) -> i64 {
    let id = i as u32;
    let seen = RS_NEW.get(id).copied().unwrap_or(0);
    if let Some(t) = RS_TALLY.get_ptr_mut(id) {
        // SAFETY: pointer into the map value; only the sweep touches the tally.
        unsafe {
            *t = RsConns {
                active: 0,
                inactive: 0,
                persist: 0,
                overloaded: seen,
            };
        }
    }
    0
}

#[inline(always)]
fn delete(k: &FlowKey, c: &mut Ctx) {
    if CONNS.remove(k).is_ok() {
        c.stats.expired += 1;
    }
}

extern "C" fn walk_conn(
    _map: *mut c_void,
    key: *mut FlowKey,
    val: *mut Conn,
    ctx: *mut c_void,
) -> i64 {
    // SAFETY: pointers the kernel passes for this entry and our context; copied at once.
    let (c, k, v) = unsafe { (&mut *(ctx as *mut Ctx), *key, *val) };
    c.stats.entries += 1;
    let Some(be) = BACKENDS.get(v.backend) else {
        delete(&k, c);
        return 0;
    };
    let idle = |seen: u64| c.now.saturating_sub(seen);
    if v.flags & conn_flags::REPLY != 0 {
        // Kept while its connection (the request entry) is.
        let fwd = k.nat_request(be.vaddr, be.vport);
        if CONNS.get_ptr(&fwd).is_none() && idle(v.last_seen_ns) >= ORPHAN_REPLY_NS {
            delete(&k, c);
        }
        return 0;
    }
    // A NAT connection is as fresh as the later of its two entries.
    let mut last = v.last_seen_ns;
    let mut reply = None;
    if be.fwd == fwd_mode::NAT {
        let r = k.nat_reply(be.addr, be.port);
        if let Some(rv) = CONNS.get_ptr(&r) {
            // SAFETY: pointer into the map value.
            let seen = unsafe { (*rv).last_seen_ns };
            if seen > last {
                last = seen;
            }
            reply = Some(r);
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
        delete(&k, c);
        if let Some(r) = reply {
            let _ = CONNS.remove(&r);
        }
        return 0;
    }
    if let Some(t) = RS_TALLY.get_ptr_mut(v.backend) {
        let active = tcp && tcp_state::ACTIVE[(state as usize) % tcp_state::COUNT];
        // SAFETY: pointer into the map value; only the sweep touches the tally.
        unsafe {
            if active {
                (*t).active += 1;
            } else {
                (*t).inactive += 1;
            }
        }
    }
    // A template lives on while it controls a connection (IPVS re-arms it then).
    if let Some(svc) = SVC_INFO.get(be.svc_id)
        && svc.flags & svc_flags::PERSISTENT != 0
    {
        let tk = PersistKey {
            svc_id: svc.id,
            client: k.saddr & svc.persist_mask,
        };
        if let Some(t) = PERSIST.get_ptr_mut(&tk) {
            // SAFETY: pointer into the map value.
            unsafe {
                if (*t).backend == v.backend && (*t).last_seen_ns < c.now {
                    (*t).last_seen_ns = c.now;
                }
            }
        }
    }
    0
}

extern "C" fn walk_template(
    _map: *mut c_void,
    key: *mut PersistKey,
    val: *mut PersistVal,
    ctx: *mut c_void,
) -> i64 {
    // SAFETY: pointers the kernel passes for this entry and our context; copied at once.
    let (c, k, v) = unsafe { (&mut *(ctx as *mut Ctx), *key, *val) };
    let timeout = SVC_INFO
        .get(k.svc_id)
        .filter(|s| s.id == k.svc_id && s.flags & svc_flags::PERSISTENT != 0)
        .map_or(0, |s| s.persist_timeout as u64 * NS);
    if c.now.saturating_sub(v.last_seen_ns) >= timeout {
        if PERSIST.remove(&k).is_ok() {
            c.stats.templates_expired += 1;
        }
        return 0;
    }
    c.stats.templates += 1;
    if let Some(t) = RS_TALLY.get_ptr_mut(v.backend) {
        // SAFETY: pointer into the map value; only the sweep touches the tally.
        unsafe { (*t).persist += 1 };
    }
    0
}

/// Publishes backend `i`'s counts, with IPVS's overload hysteresis (set at `-x`, cleared
/// below `-y`, or below 3/4 of `-x` without one), and takes the new connections it saw.
extern "C" fn publish(i: u64, _ctx: *mut c_void) -> i64 {
    let id = i as u32;
    let (Some(t), Some(rs), Some(be)) =
        (RS_TALLY.get(id), RS_CONNS.get_ptr_mut(id), BACKENDS.get(id))
    else {
        return 0;
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

#[xdp]
pub fn lb_sweep(_ctx: XdpContext) -> u32 {
    let Some(settings) = SETTINGS.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let mut c = Ctx {
        now: settings.clock_ns,
        stats: SweepStats::default(),
    };
    let cp = &mut c as *mut Ctx as *mut c_void;
    // SAFETY: callbacks of the helpers' signatures; `c` outlives the calls; the map pointers
    // are the map definitions the loader relocates.
    unsafe {
        bpf_loop(size::MAX_BACKENDS, prepare as *mut c_void, cp, 0);
        bpf_for_each_map_elem(
            &CONNS as *const _ as *mut c_void,
            walk_conn as *mut c_void,
            cp,
            0,
        );
        bpf_for_each_map_elem(
            &PERSIST as *const _ as *mut c_void,
            walk_template as *mut c_void,
            cp,
            0,
        );
        bpf_loop(size::MAX_BACKENDS, publish as *mut c_void, cp, 0);
    }
    let _ = SWEEP.set(0, c.stats, 0);
    xdp_action::XDP_PASS
}
