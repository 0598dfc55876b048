//! The maps of the balancer; their names and sizes come from `lb_common`.
//!
//! `#[map(name = …)]` needs a literal, so the names are spelled here again; the control plane
//! looks every `lb_common::maps::ALL` name up at load time and the fixture tests load this
//! object, so a mismatch fails loudly before any packet is seen.

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, Conn, FlowKey, Service, Settings, Stats, SvcKey,
    size::{DEFAULT_CONNS, DEFAULT_SCHED_TABLE, MAX_BACKENDS, MAX_SERVICES},
};

/// No prealloc: an updated value is swapped in and the old one freed after an RCU grace
/// period, so a packet that looked a service up never reads a half-written entry.
#[map(name = "LB_SERVICES")]
pub static SERVICES: HashMap<SvcKey, Service> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

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
