//! The maps of the balancer; their names and sizes come from `lb_common`.
//!
//! `#[map(name = …)]` needs a literal, so the names are spelled here again; the control plane
//! looks every `lb_common::maps::ALL` name up at load time and the fixture tests load this
//! object, so a mismatch fails loudly before any packet is seen.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, Conn, FlowKey, Settings, Stats, SvcSlot,
    size::{
        DEFAULT_CONNS, DEFAULT_SCHED_TABLE, MAX_BACKENDS, MAX_SERVICES, NAT_RS_SLOTS, SVC_SLOTS,
    },
};

/// Two halves of `SVC_SLOTS` slots; `Settings::svc_half` picks the live one.
#[map(name = "LB_SVC_TABLE")]
pub static SVC_TABLE: Array<SvcSlot> = Array::with_max_entries(2 * SVC_SLOTS, 0);

/// NAT real servers' (address, port, protocol), laid out like `SVC_TABLE`.
#[map(name = "LB_NAT_RS")]
pub static NAT_RS: Array<SvcSlot> = Array::with_max_entries(2 * NAT_RS_SLOTS, 0);

#[map(name = "LB_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "LB_SCHED_TABLE")]
pub static SCHED_TABLE: Array<u32> = Array::with_max_entries(DEFAULT_SCHED_TABLE, 0);

#[map(name = "LB_SVC_CURSOR")]
pub static SVC_CURSOR: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU LRU lists (no common LRU): eviction never takes a global lock; lookups still see
/// every CPU's entries.
#[map(name = "LB_CONNS")]
pub static CONNS: LruHashMap<FlowKey, Conn> =
    LruHashMap::with_max_entries(DEFAULT_CONNS, BPF_F_NO_COMMON_LRU);

#[map(name = "LB_SVC_STATS")]
pub static SVC_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "LB_RS_STATS")]
pub static BACKEND_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "LB_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(lb_common::cnt::MAX, 0);

#[map(name = "LB_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
