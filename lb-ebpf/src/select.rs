//! Schedulers: pick a backend for a new connection.
//!
//! rr and wrr read a sequence the control plane built (IPVS order, weight-0 and unavailable
//! backends left out) from the service's region of `SCHED_TABLE`, advanced by one cursor per
//! service shared by all CPUs, so consecutive new connections rotate exactly as with IPVS
//! whatever CPU they arrive on.

use lb_common::Service;

use crate::maps::{SCHED_TABLE, SVC_CURSOR};

/// Returns the backend id for a new connection, or `None` if the service has none available.
#[inline(always)]
pub fn select(svc: &Service) -> Option<u32> {
    let len = svc.table_len;
    if len == 0 {
        return None;
    }
    let cursor = SVC_CURSOR.get_ptr_mut(svc.id)?;
    // SAFETY: the map value is a u64 that lives as long as the map; all CPUs update it only
    // through this atomic.
    let n = unsafe { fetch_add(cursor, 1) };
    let slot = svc.table_off.wrapping_add((n % len as u64) as u32);
    let id = *SCHED_TABLE.get(slot)?;
    (id != 0).then_some(id)
}

/// Atomically adds `v` to `*p` and returns the previous value (BPF_ATOMIC | BPF_FETCH, kernel
/// ≥ 5.12).
///
/// `AtomicU64::fetch_add` does not exist for the BPF target (it declares no CAS), and LLVM only
/// emits the fetching form of the instruction for `-mcpu=v3`, which aya-build does not pass
/// (rustc hands bpf-linker `--cpu generic`). The instruction itself is the same on every CPU
/// version, so it is written out here.
#[inline(always)]
unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
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
