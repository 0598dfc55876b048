//! The maps of the balancer; their names and sizes come from `lb_common`.
//!
//! `#[map(name = …)]` needs a literal, so the names are spelled here again; the control plane
//! looks every `lb_common::maps::ALL` name up at load time and the fixture tests load this
//! object, so a mismatch fails loudly before any packet is seen.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    Addr, Backend, Conn, EmbryoSlot, FlowKey, LblcKey, LblcVal, NatHop, PersistKey, PersistVal,
    RsConns, Service, Settings, Stats, SvcSlot, SweepStats, TIMEOUTS_LEN, prog_index,
    size::{
        DEFAULT_CONNS, DEFAULT_PERSIST, DEFAULT_SCHED_TABLE, EMBRYO_DIVISOR, LBLC_ENTRIES,
        MAX_BACKENDS, MAX_SERVICES, NAT_HOPS as NAT_HOPS_LEN, NAT_RS_SLOTS, SVC_SLOTS,
        SWEEP_KEYS as SWEEP_KEYS_LEN,
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

/// One LRU for the whole table: with per-CPU shares (`BPF_F_NO_COMMON_LRU`) a CPU whose share
/// is full evicts its own (established) entries while the rest of the table is free. The
/// common LRU refills each CPU's free list from the global one (128 at a time) and evicts
/// only when that runs dry. SYN floods never reach it (see `EMBRYO`).
#[map(name = "LB_CONNS")]
pub static CONNS: LruHashMap<FlowKey, Conn> = LruHashMap::with_max_entries(DEFAULT_CONNS, 0);

/// Embryonic TCP connections (and NAT ones' reply entries) until their handshake moves on
/// (`lb_common::maps::EMBRYO`, `crate::embryo`): an array of slots, sized by the loader (a
/// power of two), so that a SYN's insert is a few stores instead of an LRU hash update.
#[map(name = "LB_EMBRYO")]
pub static EMBRYO: Array<EmbryoSlot> = Array::with_max_entries(DEFAULT_CONNS / EMBRYO_DIVISOR, 0);

/// Where NAT replies go, per client (`lb_common::maps::NAT_HOPS`).
#[map(name = "LB_NAT_HOPS")]
pub static NAT_HOPS: LruHashMap<Addr, NatHop> = LruHashMap::with_max_entries(NAT_HOPS_LEN, 0);

/// The keys one sweep step checks (written by the daemon, results in `_pad1`).
#[map(name = "LB_SWEEP_KEYS")]
pub static SWEEP_KEYS: Array<FlowKey> = Array::with_max_entries(SWEEP_KEYS_LEN, 0);

#[map(name = "LB_SVC_STATS")]
pub static SVC_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "LB_RS_STATS")]
pub static BACKEND_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "LB_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(lb_common::cnt::MAX, 0);

#[map(name = "LB_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Services by id (the sweep needs a service's persistence settings).
#[map(name = "LB_SVC_INFO")]
pub static SVC_INFO: Array<Service> = Array::with_max_entries(MAX_SERVICES, 0);

/// Connections per backend as the last sweep counted them (only the sweep writes).
#[map(name = "LB_RS_CONNS")]
pub static RS_CONNS: Array<RsConns> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Connections created per backend since the last sweep (atomic adds).
#[map(name = "LB_RS_NEW")]
pub static RS_NEW: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The sweep's tally, per backend (written by the daemon, published by `lb_sweep`).
#[map(name = "LB_RS_TALLY")]
pub static RS_TALLY: Array<RsConns> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Persistence templates.
#[map(name = "LB_PERSIST")]
pub static PERSIST: LruHashMap<PersistKey, PersistVal> =
    LruHashMap::with_max_entries(DEFAULT_PERSIST, 0);

/// lblc/lblcr destination → server(s).
#[map(name = "LB_LBLC")]
pub static LBLC: LruHashMap<LblcKey, LblcVal> = LruHashMap::with_max_entries(LBLC_ENTRIES, 0);

/// Timeouts in seconds by TCP state, then UDP.
#[map(name = "LB_TIMEOUTS")]
pub static TIMEOUTS: Array<u32> = Array::with_max_entries(TIMEOUTS_LEN, 0);

/// What the last sweep did.
#[map(name = "LB_SWEEP")]
pub static SWEEP: Array<SweepStats> = Array::with_max_entries(1, 0);

/// Tail-call targets (`lb_common::prog_index`).
#[map(name = "LB_PROGS")]
pub static PROGS: ProgramArray = ProgramArray::with_max_entries(prog_index::LEN, 0);

/// What `lb_xdp` learned about a packet that opens a connection, handed to `lb_new` with the
/// tail call (per CPU: a packet runs both programs on one CPU, start to end, and nothing else
/// runs on that CPU in between), so that `lb_new` neither parses the packet, nor probes the
/// service table, nor looks the miss up again. Read in place (never copied onto the stack).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// The packet's service (a copy of its `SVC_TABLE` slot's value).
    pub svc: lb_common::Service,
    /// The packet's addresses and ports, network order, as `parse::Packet`.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// `parse::Packet::ip_len` and `frags`.
    pub ip_len: u16,
    pub frags: u16,
    pub proto: u8,
    /// The TCP flags `parse::l4_checked` read (the packet passed its checks).
    pub tcp_flags: u8,
    /// 1 if the connection replaces a finished one on the same tuple (`Lookup::Create`).
    pub reuse: u8,
    /// 1 from `lb_xdp`'s write until `lb_new` takes it: `lb_new` entered any other way (a
    /// failed hand-over, a test run of it alone) finds 0 and drops the packet, counted.
    pub valid: u8,
    /// `Settings::route_epoch`, `Settings::clock_ns` and `Settings::flags` as `lb_xdp` read them.
    pub epoch: u32,
    pub now: u64,
    pub flags: u32,
    /// `lb_new`'s result for its forwarding step: the backend, 1 if the connection is new,
    /// 1 if it was recorded in `EMBRYO`.
    pub backend: u32,
    pub new: u32,
    pub embryo: u32,
}

/// This CPU's rr/wrr cursor steps for the connection being opened (`select::Pick`).
#[map(name = "LB_PICK")]
pub static PICK: PerCpuArray<crate::select::Pick> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "LB_PENDING")]
pub static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU state of the data path's own (`lb_common::maps::CPU_STATE`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuState {
    /// ICMP errors this CPU may still send (`lb_common::icmp_limit`).
    pub icmp_tokens: u64,
    /// `Settings::clock_ns` when the bucket was last refilled.
    pub icmp_stamp_ns: u64,
    /// 1 once the bucket has been filled the first time (the map starts zeroed).
    pub icmp_init: u32,
    /// The next outer IP ID of a tunnelled packet without DF (this CPU's count).
    pub ip_id: u32,
}

#[map(name = "LB_CPU_STATE")]
pub static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);
