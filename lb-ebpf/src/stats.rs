//! Per-CPU counters: global exception counters and per-service / per-backend traffic.

use lb_common::Stats;

use crate::maps::{BACKEND_STATS, COUNTERS, SVC_STATS};

/// Adds one to global counter `idx` (`lb_common::cnt::*`).
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// Accounts one outbound packet (a NAT reply) of `bytes` to a service and a backend.
#[inline(always)]
pub fn outbound(svc_id: u32, backend: u32, bytes: u64) {
    for s in [
        SVC_STATS.get_ptr_mut(svc_id),
        BACKEND_STATS.get_ptr_mut(backend),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: per-CPU value, see `count`.
        unsafe {
            (*s).out_pkts += 1;
            (*s).out_bytes += bytes;
        }
    }
}

#[inline(always)]
fn add(stats: Option<*mut Stats>, new_conn: bool, bytes: u64) {
    if let Some(s) = stats {
        // SAFETY: per-CPU value, see `count`.
        unsafe {
            (*s).in_pkts += 1;
            (*s).in_bytes += bytes;
            if new_conn {
                (*s).conns += 1;
            }
        }
    }
}

/// Accounts one inbound packet of `bytes` (IP length) to a service and one of its backends.
#[inline(always)]
pub fn inbound(svc_id: u32, backend: u32, new_conn: bool, bytes: u64) {
    add(SVC_STATS.get_ptr_mut(svc_id), new_conn, bytes);
    add(BACKEND_STATS.get_ptr_mut(backend), new_conn, bytes);
}
