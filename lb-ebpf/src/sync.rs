//! Connection sync, the data path's part: the events a MASTER's data path writes for the sync
//! thread (`SYNC_EVENTS`), and IPVS's `sloppy_tcp` pick-up of connections without an entry.
//!
//! Everything here is behind one test of `Settings::flags`, which the callers have loaded
//! already: with `SYNC_MASTER` off a packet pays that test and nothing else. An event that
//! finds the ring full is dropped and counted (`cnt::SYNC_DROPPED`); the packet never is.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::RingBuf,
};
use lb_common::{
    Addr, Conn, FlowKey, PersistKey, SyncEvent, cnt, settings_flags, sync_event, sync_stamp,
};

use crate::{maps::SETTINGS, parse::tcp_flags as tf, stats::count};

/// Kept here rather than in `maps.rs` with the others: the one map of this concern, and
/// not pinned (see `lb_common::maps::SYNC_EVENTS`).
#[map(name = "LB_SYNC_EVENTS")]
pub static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(sync_event::RING_BYTES, 0);

/// Whether this director is a sync MASTER (`flags`: `Settings::flags` as already loaded).
#[inline(always)]
pub fn master(flags: u32) -> bool {
    flags & settings_flags::SYNC_MASTER != 0
}

/// The refresh period in stamp units (`settings_flags::SYNC_PERIOD_SHIFT`).
#[inline(always)]
fn period(flags: u32) -> u16 {
    match ((flags & settings_flags::SYNC_PERIOD_MASK) >> settings_flags::SYNC_PERIOD_SHIFT) as u16 {
        0 => sync_stamp::DEFAULT_PERIOD,
        p => p,
    }
}

/// Writes one event: `what` packs kind, state and connection flags (`pack`). A BPF-to-BPF
/// function: one copy of the ring's reserve/submit for every caller (the schedulers' paths
/// in `lb_new` would otherwise each carry their own), and its own stack frame.
///
/// Wake-ups: the ring's default wakes the reader on every event it finds caught up, a
/// costly interrupt per new connection (measured: a new flow 4x dearer). Here the reader
/// is woken once for every `WAKE_BYTES` of backlog the ring gains, never otherwise; it
/// also looks every `SyncEvents` poll slice (20 ms, IPVS's own sync send delay), so a
/// trickle of events waits at most that long.
///
/// `lb_xdp`'s callers (`seen`, `promoted`, `output_state`) inline it (`emit_here`): its
/// frame on top of `lb_xdp`'s would pass the verifier's 512 bytes for all frames together.
#[inline(never)]
fn emit(key: &FlowKey, backend: u32, svc_id: u32, what: u32) -> u32 {
    emit_here(key, backend, svc_id, what)
}

/// `emit`, inlined into its caller.
#[inline(always)]
fn emit_here(key: &FlowKey, backend: u32, svc_id: u32, what: u32) -> u32 {
    let before = SYNC_EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let wake = if before / WAKE_BYTES != (before + EVENT_BYTES) / WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let Some(mut e) = SYNC_EVENTS.reserve::<SyncEvent>(0) else {
        count(cnt::SYNC_DROPPED);
        return 0;
    };
    let p = e.as_mut_ptr();
    // SAFETY: `p` points at the reserved, 8-aligned room for one `SyncEvent` in the ring;
    // every field is written before it is submitted.
    unsafe {
        (*p).key = *key;
        (*p).backend = backend;
        (*p).svc_id = svc_id;
        (*p).kind = what as u8;
        (*p).state = (what >> 8) as u8;
        (*p).flags = (what >> 16) as u8;
        (*p)._pad0 = 0;
        (*p)._pad1 = 0;
    }
    e.submit(wake as u64);
    1
}

/// Ring bytes per event (the record and the ring's 8-byte header).
const EVENT_BYTES: u64 = core::mem::size_of::<SyncEvent>() as u64 + 8;
/// The reader is woken each time the backlog grows past a multiple of this (256 events).
const WAKE_BYTES: u64 = 256 * EVENT_BYTES;

#[inline(always)]
fn pack(kind: u8, state: u8, flags: u8) -> u32 {
    kind as u32 | (state as u32) << 8 | (flags as u32) << 16
}

/// A connection was just recorded with `conn` (its `_pad` already stamped by `stamp`).
#[inline(always)]
pub fn recorded(key: &FlowKey, conn: &Conn, svc_id: u32, flags: u32) {
    if master(flags) {
        emit(
            key,
            conn.backend,
            svc_id,
            pack(sync_event::NEW, conn.state, conn.flags),
        );
    }
}

/// The "last synced" stamp of a connection recorded at `now`.
#[inline(always)]
pub fn stamp(now: u64) -> u16 {
    sync_stamp::of(now)
}

/// A packet of the recorded connection `c` (in `CONNS` or `EMBRYO`) moved its state from
/// `old` to its current one: a state change is sent at once; otherwise a connection not
/// sent for a refresh period is sent again (IPVS's `sync_refresh_period`), so the BACKUP's
/// copy lives as long as it does here.
#[inline(always)]
pub fn seen(key: &FlowKey, c: *mut Conn, old: u8, svc_id: u32, now: u64, flags: u32) {
    if !master(flags) {
        return;
    }
    // SAFETY: a pointer into the map value, fields read and written one at a time.
    let (backend, state, cflags, last) =
        unsafe { ((*c).backend, (*c).state, (*c).flags, (*c)._pad) };
    let now_stamp = stamp(now);
    let kind = if state != old {
        sync_event::STATE
    } else if now_stamp.wrapping_sub(last) >= period(flags) {
        sync_event::REFRESH
    } else {
        return;
    };
    if emit_here(key, backend, svc_id, pack(kind, state, cflags)) != 0 {
        // SAFETY: as above.
        unsafe { (*c)._pad = now_stamp };
    }
}

/// An embryonic connection's copy `v` (about to move to `CONNS`) left state `old`: sent as
/// a state change, stamped before it is written.
#[inline(always)]
pub fn promoted(key: &FlowKey, v: &mut Conn, old: u8, svc_id: u32, now: u64, flags: u32) {
    if master(flags) && v.state != old {
        v._pad = stamp(now);
        emit_here(
            key,
            v.backend,
            svc_id,
            pack(sync_event::STATE, v.state, v.flags),
        );
    }
}

/// A NAT connection's request entry `c` changed state on a reply (IPVS's OUTPUT table): the
/// caller has not loaded the settings, so they are read here, on state changes only.
#[inline(always)]
pub fn output_state(key: &FlowKey, c: *mut Conn, svc_id: u32) {
    let Some(s) = SETTINGS.get(0) else { return };
    if !master(s.flags) {
        return;
    }
    // SAFETY: a pointer into the map value, fields read one at a time.
    let (backend, state, cflags) = unsafe { ((*c).backend, (*c).state, (*c).flags) };
    emit_here(key, backend, svc_id, pack(sync_event::STATE, state, cflags));
}

/// A persistence template of `key` (for a packet to `vaddr`, protocol `l4proto`) was
/// created or re-pointed at `backend`.
#[inline(always)]
pub fn template(key: &PersistKey, vaddr: Addr, l4proto: u8, backend: u32, flags: u32) {
    if master(flags) {
        let k = FlowKey::of(key.client, vaddr, 0, 0, l4proto);
        emit(&k, backend, key.svc_id, pack(sync_event::TEMPLATE, 0, 0));
    }
}

/// IPVS's `tcp_conn_schedule` with `sloppy_tcp`: a TCP segment without an entry is scheduled
/// unless it carries RST (`(th->syn || sloppy_tcp) && !th->rst`); without the knob only a
/// SYN is (`conntrack::lookup` decided that already).
#[inline(always)]
pub fn sloppy(flags: u32, tcp_flags: u8) -> bool {
    flags & settings_flags::SLOPPY_TCP != 0 && tcp_flags & tf::RST == 0
}
