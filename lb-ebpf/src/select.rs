//! Schedulers: pick a backend for a new connection, as IPVS's do (net/netfilter/ipvs/ip_vs_*.c).
//!
//! - rr, wrr: a sequence the control plane built (IPVS order, weight 0 left out), walked by one
//!   cursor per service shared by all CPUs; an overloaded pick is skipped.
//! - sh, dh, mh: the control plane's bucket / Maglev table, indexed by a hash of the client
//!   (sh, mh) or destination (dh) address (lb_common::hash), with the `-b` fallback and port
//!   flags.
//! - lc, wlc, sed, nq, fo, ovf, lblc, lblcr: a scan of the service's members in IPVS list
//!   order with the kernel's comparisons, on the connection counts of the last sweep plus the
//!   connections created since (so a burst spreads at once).
//!
//! Persistence (`-p`) wraps them all: a template per (service, client network) keeps a client
//! on its server.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_loop};
use lb_common::{
    LblcKey, LblcVal, PersistKey, PersistVal, Service, backend_flags, hash, proto, sched,
    sched_flags, settings_flags, size, svc_flags,
};

use crate::{
    flow::FlowPkt,
    maps::{BACKENDS, LBLC, PERSIST, PICK, RS_CONNS, RS_NEW, SCHED_TABLE, SVC_CURSOR},
};

/// How many more addresses the sh/mh fallback tries when the hashed server is unavailable
/// (IPVS walks the whole table).
const FALLBACK_TRIES: u32 = 32;
/// lblc/lblcr entries unused this long are scheduled afresh (IPVS `lblc_expiration`, 24 h).
const LBLC_EXPIRATION_NS: u64 = 24 * 3600 * 1_000_000_000;
/// An lblcr set that has not changed for this long loses its most loaded server
/// (IPVS `lblcr_expiration`, 24 h).
const LBLCR_EXPIRATION_NS: u64 = LBLC_EXPIRATION_NS;

/// Atomically adds `v` to `*p` and returns the previous value (BPF_ATOMIC | BPF_FETCH, kernel
/// ≥ 5.12).
///
/// `AtomicU64::fetch_add` does not exist for the BPF target (it declares no CAS), and LLVM only
/// emits the fetching form of the instruction for `-mcpu=v3`, which aya-build does not pass
/// (rustc hands bpf-linker `--cpu generic`). The instruction itself is the same on every CPU
/// version, so it is written out here.
#[inline(always)]
pub unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut r = v;
    // SAFETY: `p` is valid for an 8-byte atomic access (caller).
    unsafe {
        core::arch::asm!(
            "{r} = atomic_fetch_add((u64 *)({p} + 0), {r})",
            p = in(reg) p,
            r = inout(reg) r,
            options(nostack),
        );
    }
    r
}

/// Atomically adds `v` to the 32-bit `*p` (no fetch: any CPU version).
#[inline(always)]
pub unsafe fn add32(p: *mut u32, v: u32) {
    // SAFETY: `p` is valid for a 4-byte atomic access (caller).
    unsafe {
        core::arch::asm!(
            "lock *(u32 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack),
        );
    }
}

/// Atomically replaces `*p` with `new` if it holds `old` (BPF_ATOMIC | BPF_CMPXCHG, kernel
/// ≥ 5.12; written out for the reason `fetch_add` is).
#[inline(always)]
unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) {
    let mut r0 = old;
    // SAFETY: `p` is valid for an 8-byte atomic access (caller).
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") r0,
            options(nostack),
        );
    }
    let _ = r0;
}

/// This CPU's rr/wrr cursor steps for the connection being opened (`maps::PICK`), so that a
/// CPU that loses the race to record it can take them back.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pick {
    pub svc_id: u32,
    /// Steps taken.
    pub steps: u32,
    /// The cursor's value after the last step.
    pub after: u64,
}

/// Notes one step of service `svc_id`'s cursor, from `n` to `n + 1`.
#[inline(always)]
fn stepped(svc_id: u32, n: u64) {
    if let Some(p) = PICK.get_ptr_mut(0) {
        // SAFETY: per-CPU value; this packet is the only one running on this CPU.
        unsafe {
            (*p).svc_id = svc_id;
            (*p).steps += 1;
            (*p).after = n.wrapping_add(1);
        }
    }
}

/// Forgets this CPU's cursor steps: the connection they were for is recorded, or none is.
#[inline(always)]
pub fn picked() {
    if let Some(p) = PICK.get_ptr_mut(0) {
        // SAFETY: per-CPU value, see `stepped`.
        unsafe { (*p).steps = 0 };
    }
}

/// Takes back this CPU's cursor steps for a connection it then did not record, if no other
/// CPU has moved the cursor since (then it is as if they never happened; otherwise they
/// cannot be taken back without undoing the other CPU's pick too).
#[inline(always)]
pub fn rewind() {
    let Some(p) = PICK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, see `stepped`.
    let (svc_id, steps, after) = unsafe { ((*p).svc_id, (*p).steps, (*p).after) };
    if steps != 0
        && let Some(c) = SVC_CURSOR.get_ptr_mut(svc_id)
    {
        // SAFETY: the cursor is only updated atomically.
        unsafe { cmpxchg(c, after, after.wrapping_sub(steps as u64)) };
    }
    // SAFETY: as above.
    unsafe { (*p).steps = 0 };
}

/// A backend as the schedulers see it.
#[derive(Clone, Copy)]
struct View {
    weight: u32,
    active: u32,
    inactive: u32,
    overloaded: bool,
    available: bool,
}

/// Connections created since the last sweep count as active for TCP (a new connection is in
/// SYN_RECV, which IPVS counts active) and as inactive for UDP.
#[inline(always)]
fn view(id: u32, tcp: bool) -> Option<View> {
    let be = BACKENDS.get(id)?;
    let rs = RS_CONNS.get(id)?;
    let new = *RS_NEW.get(id)?;
    let (active, inactive) = if tcp {
        (rs.active.saturating_add(new), rs.inactive)
    } else {
        (rs.active, rs.inactive.saturating_add(new))
    };
    let total = active.saturating_add(inactive);
    let overloaded = rs.overloaded != 0 || (be.u_threshold != 0 && total >= be.u_threshold);
    Some(View {
        weight: be.weight,
        active,
        inactive,
        overloaded,
        available: be.flags & backend_flags::AVAILABLE != 0,
    })
}

/// IPVS `ip_vs_dest_conn_overhead`.
#[inline(always)]
fn overhead(v: &View) -> u64 {
    ((v.active as u64) << 8) + v.inactive as u64
}

/// sh/mh: usable as the hashed choice (IPVS `is_unavailable` negated).
#[inline(always)]
fn usable(id: u32, tcp: bool) -> bool {
    id != 0 && view(id, tcp).is_some_and(|v| v.available && v.weight > 0 && !v.overloaded)
}

/// Picks the backend for a new connection (persistence first), and counts it as new.
#[inline(always)]
pub fn select<P: FlowPkt>(pkt: &P, svc: &Service, now: u64, flags: u32) -> Option<u32> {
    let id = if svc.flags & svc_flags::PERSISTENT != 0 {
        persistent(pkt, svc, now, flags)?
    } else {
        schedule(pkt, svc, now)?
    };
    if let Some(n) = RS_NEW.get_ptr_mut(id) {
        // SAFETY: a u32 map value, updated by all CPUs only atomically.
        unsafe { add32(n, 1) };
    }
    Some(id)
}

/// IPVS `ip_vs_sched_persist`: the client's template, if it points at a server that may
/// take it, else a fresh pick recorded in a new template.
#[inline(always)]
fn persistent<P: FlowPkt>(pkt: &P, svc: &Service, now: u64, flags: u32) -> Option<u32> {
    let key = PersistKey {
        svc_id: svc.id,
        client: pkt.persist_client(svc),
    };
    if let Some(t) = PERSIST.get_ptr_mut(&key) {
        // SAFETY: pointer into the map value, fields read and written one at a time.
        let id = unsafe { (*t).backend };
        // (A template can outlive its service: ids are reused, so check the owner.)
        if let Some(be) = BACKENDS.get(id)
            && be.svc_id == svc.id
        {
            let quiesced = flags & settings_flags::EXPIRE_QUIESCENT != 0 && be.weight == 0;
            if be.flags & backend_flags::AVAILABLE != 0 && !quiesced {
                // SAFETY: as above.
                unsafe { (*t).last_seen_ns = now };
                return Some(id);
            }
        }
    }
    let id = schedule(pkt, svc, now)?;
    let t = PersistVal {
        backend: id,
        _pad: 0,
        last_seen_ns: now,
    };
    // Inserted without overwriting: if another CPU has just made a template for the same
    // client, both connections follow that one, as if it had been there first. A template
    // that is there but cannot be used (why this client was scheduled) is replaced. (Decided
    // here, after scheduling, rather than carried through it: a flag live across every
    // scheduler's paths doubles what the verifier walks.)
    if PERSIST.insert(&key, &t, BPF_NOEXIST as u64).is_err() {
        if let Some(o) = PERSIST.get_ptr(&key) {
            // SAFETY: pointer into the map value.
            let other = unsafe { (*o).backend };
            if let Some(be) = BACKENDS.get(other)
                && be.svc_id == svc.id
                && be.flags & backend_flags::AVAILABLE != 0
                && !(flags & settings_flags::EXPIRE_QUIESCENT != 0 && be.weight == 0)
            {
                // This CPU's pick is not used: as if it had not been made.
                rewind();
                return Some(other);
            }
        }
        let _ = PERSIST.insert(&key, &t, 0);
    }
    crate::sync::template(&key, pkt.dst(), pkt.proto(), id, flags);
    Some(id)
}

#[inline(always)]
fn schedule<P: FlowPkt>(pkt: &P, svc: &Service, now: u64) -> Option<u32> {
    let tcp = pkt.proto() == proto::TCP;
    match svc.sched {
        sched::RR | sched::WRR => sequence(svc, tcp),
        sched::SH => {
            let port = if svc.sched_flags & sched_flags::PORT != 0 {
                u16::from_be(pkt.sport())
            } else {
                0
            };
            sh(svc, pkt.src_key(), port, tcp)
        }
        sched::DH => {
            let id = table_at(svc, hash::sh_bucket(pkt.dst_key(), 0, 0))?;
            usable(id, tcp).then_some(id)
        }
        sched::MH => mh(svc, pkt, tcp),
        sched::LBLC | sched::LBLCR => lblc(pkt, svc, now, tcp),
        _ => scan(svc, svc.sched, tcp),
    }
}

#[inline(always)]
fn table_at(svc: &Service, i: u32) -> Option<u32> {
    if i >= svc.table_len {
        return None;
    }
    SCHED_TABLE.get(svc.table_off + i).copied()
}

/// rr and wrr: the next slot of the sequence; overloaded servers are skipped.
#[inline(always)]
fn sequence(svc: &Service, tcp: bool) -> Option<u32> {
    let len = svc.table_len;
    if len == 0 {
        return None;
    }
    let cursor = SVC_CURSOR.get_ptr_mut(svc.id)?;
    // SAFETY: the map value is a u64 all CPUs update only through this atomic.
    let n = unsafe { fetch_add(cursor, 1) };
    stepped(svc.id, n);
    let id = *SCHED_TABLE.get(svc.table_off.wrapping_add((n % len as u64) as u32))?;
    if id != 0 && !view(id, tcp)?.overloaded {
        return Some(id);
    }
    let tries = if len < size::MAX_SCAN {
        len
    } else {
        size::MAX_SCAN
    };
    let mut slot = core::mem::MaybeUninit::uninit();
    retry(Retry::new(&mut slot, RETRY_SEQUENCE, svc, tcp), tries - 1)
}

/// sh (IPVS `ip_vs_sh_get` / `ip_vs_sh_get_fallback`).
#[inline(always)]
fn sh(svc: &Service, addr: u32, port: u16, tcp: bool) -> Option<u32> {
    let ihash = hash::sh_bucket(addr, port, 0);
    let id = table_at(svc, ihash)?;
    hashed(svc, id, tcp, RETRY_SH, addr, port, ihash)
}

/// sh/mh: the hashed server `id` if it can take the connection, else (`-b …-fallback`) the
/// retries of `kind`; an empty slot means no server.
#[inline(always)]
fn hashed(
    svc: &Service,
    id: u32,
    tcp: bool,
    kind: u32,
    addr: u32,
    port: u16,
    ihash: u32,
) -> Option<u32> {
    if id == 0 {
        return None;
    }
    if usable(id, tcp) {
        return Some(id);
    }
    if svc.sched_flags & sched_flags::FALLBACK == 0 {
        return None;
    }
    let mut slot = core::mem::MaybeUninit::uninit();
    let r = Retry::new(&mut slot, kind, svc, tcp);
    (r.addr, r.port, r.ihash) = (addr, port as u32, ihash);
    retry(r, FALLBACK_TRIES)
}

/// mh: the Maglev slot of the client, with mh-fallback re-hashing.
#[inline(always)]
fn mh<P: FlowPkt>(svc: &Service, pkt: &P, tcp: bool) -> Option<u32> {
    let m = svc.table_len;
    if m == 0 {
        return None;
    }
    let addr = pkt.src_key();
    let port = if svc.sched_flags & sched_flags::PORT != 0 {
        u16::from_be(pkt.sport())
    } else {
        0
    };
    let id = table_at(svc, hash::mh_hash(addr, port, 0) % m)?;
    hashed(svc, id, tcp, RETRY_MH, addr, port, 0)
}

const RETRY_SEQUENCE: u32 = 0;
const RETRY_SH: u32 = 1;
const RETRY_MH: u32 = 2;

/// The retries after a first pick that cannot take the connection: rr/wrr's next slots,
/// sh's and mh's fallback probes. They run as a bpf_loop callback so the verifier walks
/// one try, not every try on every path (unrolled, they overflow its budget).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Retry {
    kind: u32,
    svc_id: u32,
    table_off: u32,
    table_len: u32,
    tcp: u32,
    addr: u32,
    port: u32,
    ihash: u32,
    /// The pick (0: none yet).
    found: u32,
    _pad: u32,
}

impl Retry {
    #[inline(always)]
    fn new<'a>(
        slot: &'a mut core::mem::MaybeUninit<Retry>,
        kind: u32,
        svc: &Service,
        tcp: bool,
    ) -> &'a mut Retry {
        let r = crate::mem::zero(slot);
        r.kind = kind;
        r.svc_id = svc.id;
        r.table_off = svc.table_off;
        r.table_len = svc.table_len;
        r.tcp = tcp as u32;
        r
    }
}

#[inline(always)]
fn retry(r: &mut Retry, tries: u32) -> Option<u32> {
    // SAFETY: `retry_one` is a callback of bpf_loop's signature; `r` lives across the call.
    unsafe {
        bpf_loop(
            tries,
            retry_one as *mut c_void,
            r as *mut Retry as *mut c_void,
            0,
        )
    };
    (r.found != 0).then_some(r.found)
}

/// Try `i` (from 0) of a `Retry`; returns 1 to stop.
extern "C" fn retry_one(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Retry` on the caller's stack (bpf_loop passes it through).
    let r = unsafe { &mut *(ctx as *mut Retry) };
    let len = r.table_len;
    if len == 0 {
        return 1;
    }
    let tcp = r.tcp != 0;
    let slot = match r.kind {
        RETRY_SEQUENCE => {
            let Some(cursor) = SVC_CURSOR.get_ptr_mut(r.svc_id) else {
                return 1;
            };
            // SAFETY: as in `sequence`.
            let n = unsafe { fetch_add(cursor, 1) };
            stepped(r.svc_id, n);
            (n % len as u64) as u32
        }
        RETRY_SH => {
            let roffset = (i as u32 + r.ihash) % size::SH_BUCKETS;
            hash::sh_bucket(r.addr, r.port as u16, roffset)
        }
        _ => hash::mh_hash(r.addr, r.port as u16, i as u32 + 1) % len,
    };
    if slot >= len {
        return 1;
    }
    let Some(&id) = SCHED_TABLE.get(r.table_off.wrapping_add(slot)) else {
        return 1;
    };
    if r.kind == RETRY_SEQUENCE {
        // A hole in the sequence (a removed server) is skipped; an overloaded one too.
        match view(id, tcp) {
            Some(v) if id != 0 && !v.overloaded => {
                r.found = id;
                return 1;
            }
            _ => return 0,
        }
    }
    // sh/mh: an empty bucket ends the search (IPVS returns no server).
    if id == 0 {
        return 1;
    }
    if usable(id, tcp) {
        r.found = id;
        return 1;
    }
    0
}

/// State of one scan over a service's members.
#[repr(C)]
#[derive(Clone, Copy)]
struct Scan {
    off: u32,
    len: u32,
    sched: u8,
    tcp: u8,
    _pad: u16,
    /// The pick so far (0: none), its weight and overhead.
    best: u32,
    best_w: u32,
    _pad2: u32,
    best_oh: u64,
    /// lblc's `is_overloaded`: whether some member has `active * 2 < weight`.
    some_half_idle: u32,
    _pad3: u32,
}

/// One member of a scan: the kernel's loop body for `sched`.
extern "C" fn scan_member(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` on the caller's stack (bpf_loop passes it through).
    let s = unsafe { &mut *(ctx as *mut Scan) };
    if i >= s.len as u64 {
        return 1;
    }
    let Some(&id) = SCHED_TABLE.get(s.off.wrapping_add(i as u32)) else {
        return 1;
    };
    let Some(v) = view(id, s.tcp != 0) else {
        return 0;
    };
    if (v.active as u64) * 2 < v.weight as u64 {
        s.some_half_idle = 1;
    }
    if !v.available {
        return 0;
    }
    match s.sched {
        // ip_vs_lc_schedule: least overhead, weight > 0, not overloaded; ties: first.
        sched::LC => {
            if v.overloaded || v.weight == 0 {
                return 0;
            }
            let doh = overhead(&v);
            if s.best == 0 || doh < s.best_oh {
                (s.best, s.best_w, s.best_oh) = (id, v.weight, doh);
            }
        }
        // ip_vs_wlc_schedule (and lblc/lblcr's): least overhead/weight; sed: overhead
        // active + 1.
        sched::WLC | sched::SED | sched::LBLC | sched::LBLCR => {
            if v.overloaded {
                return 0;
            }
            let doh = if s.sched == sched::SED {
                v.active as u64 + 1
            } else {
                overhead(&v)
            };
            if s.best == 0 {
                if v.weight > 0 {
                    (s.best, s.best_w, s.best_oh) = (id, v.weight, doh);
                }
            } else if s.best_oh * v.weight as u64 > doh * s.best_w as u64 {
                (s.best, s.best_w, s.best_oh) = (id, v.weight, doh);
            }
        }
        // ip_vs_nq_schedule: an idle server at once, else as sed.
        sched::NQ => {
            if v.overloaded || v.weight == 0 {
                return 0;
            }
            let doh = v.active as u64 + 1;
            if v.active == 0 {
                (s.best, s.best_w, s.best_oh) = (id, v.weight, doh);
                return 1;
            }
            if s.best == 0 || s.best_oh * v.weight as u64 > doh * s.best_w as u64 {
                (s.best, s.best_w, s.best_oh) = (id, v.weight, doh);
            }
        }
        // ip_vs_fo_schedule: the highest weight; ties: first.
        sched::FO => {
            if !v.overloaded && v.weight > s.best_w {
                (s.best, s.best_w) = (id, v.weight);
            }
        }
        // ip_vs_ovf_schedule: the highest weight whose active connections do not exceed it.
        sched::OVF => {
            if v.overloaded || v.active > v.weight || v.weight == 0 {
                return 0;
            }
            if s.best == 0 || v.weight > s.best_w {
                (s.best, s.best_w) = (id, v.weight);
            }
        }
        _ => return 1,
    }
    0
}

/// Runs `scan_member` over the service's members; returns the pick and whether some member
/// had `active * 2 < weight`.
#[inline(always)]
fn scan_all(svc: &Service, sched: u8, tcp: bool) -> (u32, bool) {
    let mut slot = core::mem::MaybeUninit::<Scan>::uninit();
    let s = crate::mem::zero(&mut slot);
    s.off = svc.members_off;
    s.len = svc.members_len;
    s.sched = sched;
    s.tcp = tcp as u8;
    let n = if svc.members_len < size::MAX_SCAN {
        svc.members_len
    } else {
        size::MAX_SCAN
    };
    // SAFETY: `scan_member` is a callback of bpf_loop's signature; `s` lives across the call.
    unsafe {
        bpf_loop(
            n,
            scan_member as *mut c_void,
            s as *mut Scan as *mut c_void,
            0,
        )
    };
    (s.best, s.some_half_idle != 0)
}

#[inline(always)]
fn scan(svc: &Service, sched: u8, tcp: bool) -> Option<u32> {
    let (id, _) = scan_all(svc, sched, tcp);
    (id != 0).then_some(id)
}

/// Whether backend `id` still belongs to `svc` (ids are reused after a service goes).
#[inline(always)]
fn owned(id: u32, svc: &Service) -> bool {
    BACKENDS.get(id).is_some_and(|b| b.svc_id == svc.id)
}

/// lblc/lblcr `is_overloaded`: more active connections than weight while some member is less
/// than half busy (`half_idle`).
#[inline(always)]
fn lblc_overloaded(v: &View, half_idle: bool) -> bool {
    v.active > v.weight && half_idle
}

/// lblc (IPVS `ip_vs_lblc_schedule`) and lblcr (`ip_vs_lblcr_schedule`), keyed by the
/// destination address. lblcr sets hold at most `LBLCR_SET` servers, newest first.
///
/// One scan of the members gives both the wlc pick a miss needs and `is_overloaded`'s "some
/// member less than half busy" (IPVS walks the list for each; the counts are the same). It
/// runs whether or not the cached server is taken: one walk on every path keeps the
/// verifier's work linear.
#[inline(always)]
fn lblc<P: FlowPkt>(pkt: &P, svc: &Service, now: u64, tcp: bool) -> Option<u32> {
    let (fresh, half_idle) = scan_all(svc, svc.sched, tcp);
    let key = LblcKey {
        svc_id: svc.id,
        daddr: pkt.dst(),
    };
    if let Some(en) = LBLC.get_ptr_mut(&key) {
        // SAFETY: pointer into the map value, fields read and written one at a time.
        let (last_used, len) = unsafe { ((*en).last_used_ns, (*en).len) };
        if now.wrapping_sub(last_used) < LBLC_EXPIRATION_NS && len > 0 {
            // SAFETY: as above.
            unsafe { (*en).last_used_ns = now };
            if svc.sched == sched::LBLCR {
                return lblcr(en, svc, now, tcp, fresh, half_idle);
            }
            // SAFETY: as above.
            let id = unsafe { (*en).set[0] };
            if owned(id, svc)
                && let Some(v) = view(id, tcp)
                && v.available
                && v.weight > 0
                && !lblc_overloaded(&v, half_idle)
            {
                return Some(id);
            }
            if fresh == 0 {
                return None;
            }
            // SAFETY: as above.
            unsafe {
                (*en).set[0] = fresh;
                (*en).len = 1;
                (*en).last_mod_ns = now;
            }
            return Some(fresh);
        }
    }
    if fresh == 0 {
        return None;
    }
    let mut slot = core::mem::MaybeUninit::<LblcVal>::uninit();
    let v = crate::mem::zero(&mut slot);
    v.set[0] = fresh;
    v.len = 1;
    v.last_used_ns = now;
    v.last_mod_ns = now;
    let _ = LBLC.insert(&key, &*v, 0);
    Some(fresh)
}

/// lblcr with a live entry (IPVS `ip_vs_lblcr_schedule`): the least loaded server of the
/// set unless it is `lblc_overloaded`, else a fresh wlc pick that joins the set (newest
/// first). A set of more than one server unchanged for `LBLCR_EXPIRATION_NS` loses its most
/// loaded one; a full set (IPVS's are unbounded) makes room by dropping its most loaded.
///
/// The set is walked and rebuilt by bpf_loop callbacks: unrolled, its eight places times
/// the branches of each overflow the verifier's budget.
#[inline(always)]
fn lblcr(
    en: *mut LblcVal,
    svc: &Service,
    now: u64,
    tcp: bool,
    fresh: u32,
    half_idle: bool,
) -> Option<u32> {
    let mut slot = core::mem::MaybeUninit::<SetScan>::uninit();
    let s = crate::mem::zero(&mut slot);
    // SAFETY: pointer into the map value.
    crate::mem::copy_words(&mut s.ids, unsafe { &raw const (*en).set });
    // SAFETY: as above.
    s.len = unsafe { (*en).len }.min(size::LBLCR_SET as u32);
    s.svc_id = svc.id;
    s.tcp = tcp as u32;
    // SAFETY: `set_member` is a callback of bpf_loop's signature; `s` lives across the call.
    unsafe {
        bpf_loop(
            size::LBLCR_SET as u32,
            set_member as *mut c_void,
            s as *mut SetScan as *mut c_void,
            0,
        )
    };
    // Counted here rather than in the callback: a counter the callback bumps is a known
    // constant on each pass, and the verifier then walks the callback once per count.
    s.live = s.len - s.stale.count_ones();
    let mut changed = s.stale != 0;
    // SAFETY: as above.
    let last_mod = unsafe { (*en).last_mod_ns };
    if s.live > 1 && now.wrapping_sub(last_mod) > LBLCR_EXPIRATION_NS && s.most != 0 {
        // Dropped after the least loaded was chosen, as IPVS does.
        s.skip = s.most;
        s.live -= 1;
        changed = true;
        // SAFETY: as above.
        unsafe { (*en).last_mod_ns = now };
    }
    let mut pick = 0;
    if s.least != 0
        && let Some(v) = view(s.least, tcp)
        && !lblc_overloaded(&v, half_idle)
    {
        pick = s.least;
    } else if fresh != 0 {
        pick = fresh;
        if !s.contains(fresh) {
            if s.live >= size::LBLCR_SET as u32 {
                // Full: the most loaded makes room, or the oldest when none has a weight.
                // (Nothing was dropped above: a full set still has its `most`.)
                s.skip = if s.most != 0 { s.most } else { s.last };
            }
            s.out[0] = fresh;
            s.out_len = 1;
            changed = true;
            // SAFETY: as above.
            unsafe { (*en).last_mod_ns = now };
        }
    }
    if changed {
        // SAFETY: `set_keep` is a callback of bpf_loop's signature; `s` lives across it.
        unsafe {
            bpf_loop(
                size::LBLCR_SET as u32,
                set_keep as *mut c_void,
                s as *mut SetScan as *mut c_void,
                0,
            )
        };
        // SAFETY: as above.
        unsafe {
            crate::mem::copy_words(&mut (*en).set, &raw const s.out);
            (*en).len = s.out_len;
        }
    }
    (pick != 0).then_some(pick)
}

/// One pass over an lblcr set.
#[repr(C)]
#[derive(Clone, Copy)]
struct SetScan {
    ids: [u32; size::LBLCR_SET],
    len: u32,
    svc_id: u32,
    tcp: u32,
    /// Places whose server left the service, one bit each.
    stale: u32,
    /// Servers still in the service.
    live: u32,
    /// The least and the most loaded (`ip_vs_dest_set_min` / `_max`), and the oldest live.
    least: u32,
    most: u32,
    last: u32,
    lw: u64,
    loh: u64,
    mw: u64,
    moh: u64,
    /// Rebuilding: the server to leave out, and the new set so far.
    skip: u32,
    out_len: u32,
    out: [u32; size::LBLCR_SET],
}

impl SetScan {
    /// Whether `id` stays in the set (present, not gone, not being dropped).
    #[inline(always)]
    fn contains(&self, id: u32) -> bool {
        if id == self.skip {
            return false;
        }
        let mut i = 0;
        while i < size::LBLCR_SET {
            if (i as u32) < self.len && self.stale & (1 << i) == 0 && self.ids[i] == id {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// One place of an lblcr set: min and max by overhead/weight (skipping overloaded servers
/// for the min and weight-0 ones for both; ties go to the newer), and whether the server
/// is gone (deleted, or its id reused by another service: IPVS drops a destination from
/// every set when it goes).
extern "C" fn set_member(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `SetScan` on the caller's stack (bpf_loop passes it through).
    let s = unsafe { &mut *(ctx as *mut SetScan) };
    if i >= s.len as u64 || i >= size::LBLCR_SET as u64 {
        return 1;
    }
    let id = s.ids[i as usize];
    let v = match BACKENDS.get(id) {
        Some(b) if b.svc_id == s.svc_id => view(id, s.tcp != 0),
        _ => None,
    };
    let Some(v) = v.filter(|v| v.available) else {
        s.stale |= 1 << i;
        return 0;
    };
    s.last = id;
    let doh = overhead(&v);
    let w = v.weight as u64;
    if w > 0 && !v.overloaded && (s.least == 0 || s.loh * w > doh * s.lw) {
        (s.least, s.lw, s.loh) = (id, w, doh);
    }
    if w > 0 && (s.most == 0 || s.moh * w < doh * s.mw) {
        (s.most, s.mw, s.moh) = (id, w, doh);
    }
    0
}

/// One place of an lblcr set being rebuilt: kept, in order, unless gone or `skip`.
extern "C" fn set_keep(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `SetScan` on the caller's stack (bpf_loop passes it through).
    let s = unsafe { &mut *(ctx as *mut SetScan) };
    if i >= s.len as u64 || i >= size::LBLCR_SET as u64 {
        return 1;
    }
    let id = s.ids[i as usize];
    if s.stale & (1 << i) != 0 || id == s.skip {
        return 0;
    }
    let k = s.out_len as usize;
    if k >= size::LBLCR_SET {
        return 1;
    }
    s.out[k] = id;
    s.out_len += 1;
    0
}
