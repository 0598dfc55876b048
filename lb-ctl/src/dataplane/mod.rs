//! The only code that touches the XDP programs and their maps: load them (or adopt the pinned
//! ones a previous daemon left), attach them, and bring the maps to match a `Model` as one diff.
//!
//! Pin layout under the pin directory (default `/sys/fs/bpf/lb`): `maps/<MAP>` for every map,
//! `prog_lb_xdp` for the balancer program and `links/<interface>` for each XDP attachment.
//! Because links and maps are pinned, a daemon that stops with `--keep-datapath` (or dies)
//! leaves traffic flowing; the next one adopts the maps (connections included), swaps in its
//! program atomically with `BPF_LINK_UPDATE`, and reads its table back from the maps.
//!
//! By concern: `load` (open, adopt, attach/detach, pins, bpffs); `plan` (a sync planned as a
//! pure function of the allocation state, the model and the paths) apart from `sync` (applying
//! a plan to the maps, refreshing paths, collecting garbage); `state` (the allocation state:
//! ids, table regions); `probe` (the double-buffered probe tables); `batch` (batched map I/O);
//! `runtime` (clock, sweep, timeouts, settings); `stats` (listings, connections, counters).

mod batch;
mod filler;
mod hashtable;
mod load;
mod plan;
mod probe;
mod runtime;
mod state;
mod stats;
mod sweep;
mod sync;
mod syncdp;

pub use load::{BALANCER_OBJ, PASS_OBJ, attach_pass, ensure_bpffs, pinned_layout};
pub use runtime::{
    ClockThread, PoolUsage, SWEEP_CPU_SHARE, SWEEP_PERIOD, SWEEP_RATE, StateTimeouts, SweepState,
    SweepThread,
};
pub use stats::ConnCounts;
pub use sweep::{
    CALL_TARGET, Chunker, MAX_SWEEP_CHUNK, Pace, SWEEP_CHUNK, SlowCall, SweepReport, Sweeper,
};
pub use syncdp::{InstallReport, SyncEvents, SyncInstaller};

use batch::*;
use plan::Plan;
use probe::*;
use state::*;
use stats::*;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::anyhow;
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::links::PinnedLink,
};
use lb_common::{
    Backend, Conn, FlowKey, PersistKey, PersistVal, RsConns, Service, Settings, Stats, SvcKey,
    SweepStats, size,
};

use crate::model::{Forward, Protocol, Scheduler, ServiceKey};

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";

/// How long a replaced scheduling table stays untouched before its slots are reused: packets
/// that read the old service entry just before the switch finish within microseconds.
const TABLE_GRACE: Duration = Duration::from_secs(2);

/// How long a deleted destination stays in the trash at least (IPVS keeps it while
/// connections use it; we also wait for the next sweeps to have counted them).
const TRASH_GRACE: Duration = Duration::from_secs(5);

/// How long a half of the service table stays untouched after it stopped being live, for the
/// same reason as `TABLE_GRACE` (a packet reads `svc_half`, then probes).
const SVC_HALF_GRACE: Duration = Duration::from_millis(20);

/// Settings chosen at load time.
#[derive(Clone, Debug)]
pub struct Options {
    pub pin_dir: PathBuf,
    pub conn_table_size: u32,
    pub sched_table_size: u32,
    /// Slots of every mh (Maglev) table: a prime.
    pub mh_table_size: u32,
    /// Entries of the persistence-template table.
    pub persist_table_size: u32,
    /// Entries of the embryonic-connection table (0: the connection table's size / 4).
    pub embryo_table_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            conn_table_size: size::DEFAULT_CONNS,
            sched_table_size: size::DEFAULT_SCHED_TABLE,
            mh_table_size: size::DEFAULT_MH_TABLE,
            persist_table_size: size::DEFAULT_PERSIST,
            embryo_table_size: 0,
        }
    }
}

/// How the director reaches a real server, filled in by the daemon (route + neighbour). DR
/// uses the interface and MACs; NAT and TUN route per packet with the kernel's FIB, and TUN
/// takes its outer source address from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RsPath {
    pub ifindex: u32,
    /// The real server itself when it is on-link, else the gateway towards it (of the real
    /// server's family).
    pub next_hop: IpAddr,
    pub smac: [u8; 6],
    /// The next hop's MAC; `None` while the neighbour is unresolved.
    pub dmac: Option<[u8; 6]>,
    /// TUN: the outer source address (a service's `tunnel_source` overrides it).
    pub tun_src: IpAddr,
    /// MTU of the path (the route's, else the interface's; 0: unknown).
    pub mtu: u16,
}

impl Default for RsPath {
    fn default() -> Self {
        Self {
            ifindex: 0,
            next_hop: Ipv4Addr::UNSPECIFIED.into(),
            smac: [0; 6],
            dmac: None,
            tun_src: Ipv4Addr::UNSPECIFIED.into(),
            mtu: 0,
        }
    }
}

/// Paths to real servers, by address.
pub type Paths = HashMap<IpAddr, RsPath>;

/// The maps, typed.
struct Maps {
    svc_info: Array<MapData, Service>,
    rs_conns: Array<MapData, RsConns>,
    rs_new: Array<MapData, u32>,
    persist: BpfHashMap<MapData, PersistKey, PersistVal>,
    timeouts: Array<MapData, u32>,
    sweep: Array<MapData, SweepStats>,
    backends: Array<MapData, Backend>,
    sched_table: Array<MapData, u32>,
    cursor: Array<MapData, u64>,
    conns: BpfHashMap<MapData, FlowKey, Conn>,
    embryo: Array<MapData, lb_common::EmbryoSlot>,
    sweep_keys: Array<MapData, FlowKey>,
    rs_tally: Array<MapData, RsConns>,
    svc_stats: PerCpuArray<MapData, Stats>,
    backend_stats: PerCpuArray<MapData, Stats>,
    counters: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    /// Kept open: the tail-call targets live as long as the map has a user.
    _progs: ProgramArray<MapData>,
}

pub struct Dataplane {
    bpf: Ebpf,
    maps: Maps,
    opts: Options,
    links: BTreeMap<String, PinnedLink>,
    state: State,
    conn_table_size: u32,
    embryo_table_size: u32,
    /// Whether the maps came from a previous daemon.
    adopted: bool,
    /// The value last written to `LB_SETTINGS`.
    settings: Settings,
    /// `LB_SVC_TABLE` and `LB_NAT_RS`, which flip together.
    svc_table: ProbeTable,
    nat_rs: ProbeTable,
    /// When the idle half stopped being live.
    half_retired_at: Instant,
    /// When `settings.clock_ns` was last advanced.
    clock_at: Instant,
    /// Serialises writes of `LB_SETTINGS` with the clock thread (`start_clock`), which
    /// advances `clock_ns` while this side may be busy for a while (a sync, a resolve).
    settings_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// The connection-sync event ring (`syncdp`), and whether a reader of it lives.
    sync_ring: Option<MapData>,
    sync_reader: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn svc_key(k: &ServiceKey) -> SvcKey {
    SvcKey::of(addr(k.addr), k.port.to_be(), k.proto.number())
}

/// An address as the maps hold it (`lb_common::Addr`): IPv4 mapped, IPv6 as its 16 bytes.
fn addr(a: IpAddr) -> lb_common::Addr {
    match a {
        IpAddr::V4(v4) => lb_common::Addr::v4(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => lb_common::Addr::from_octets(v6.octets()),
    }
}

/// The address a map's `Addr` holds: an IPv4-mapped one is IPv4 (the only IPv4 form the
/// maps use), anything else IPv6.
fn ip_of(a: lb_common::Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(a.octets());
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The 32 bits the schedulers' tables hash a member's address by (Maglev's permutation), as
/// the data path hashes addresses (`Addr::sched_key`): an IPv4 address itself, an IPv6 one
/// folded as IPVS folds it for AF_INET6.
fn member_addr(a: IpAddr) -> Ipv4Addr {
    Ipv4Addr::from(addr(a).sched_key())
}

fn proto_of(n: u8) -> Option<Protocol> {
    match n {
        lb_common::proto::TCP => Some(Protocol::Tcp),
        lb_common::proto::UDP => Some(Protocol::Udp),
        _ => None,
    }
}

fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn sched_code(s: Scheduler) -> u8 {
    Scheduler::ALL
        .iter()
        .position(|x| *x == s)
        .map_or(0, |i| i as u8 + 1)
}

fn sched_of(code: u8) -> Option<Scheduler> {
    Scheduler::ALL.get((code as usize).checked_sub(1)?).copied()
}

fn forward_of(code: u8) -> Option<Forward> {
    [Forward::Dr, Forward::Nat, Forward::Tun]
        .into_iter()
        .find(|f| f.code() == code)
}

/// A probe-table key as people write it.
fn show(k: &SvcKey) -> String {
    let proto = proto_of(k.proto).map_or("?", |p| p.label());
    format!(
        "{proto} {}",
        crate::model::addr_port(ip_of(k.addr), u16::from_be(k.port))
    )
}

/// The map behind a typed map handle (for the raw batch and element calls).
fn md<M: aya::maps::IterableMap<K, V>, K: aya::Pod, V>(m: &M) -> &MapData {
    m.map()
}

/// The possible CPUs: how many values a per-CPU map element holds, and among how many CPUs
/// an LRU hash without the common list divides its elements.
fn possible_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))
}

fn zeros<T: aya::Pod + Default>() -> anyhow::Result<PerCpuValues<T>> {
    Ok(PerCpuValues::try_from(vec![
        T::default();
        possible_cpus()?
    ])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_codes_round_trip() {
        for s in Scheduler::ALL {
            assert_eq!(sched_of(sched_code(s)), Some(s));
        }
        assert_eq!(sched_code(Scheduler::Rr), lb_common::sched::RR);
        assert_eq!(sched_code(Scheduler::Mh), lb_common::sched::MH);
    }

    #[test]
    fn member_addresses_hash_as_the_data_path_does() {
        let v4: IpAddr = Ipv4Addr::new(192, 0, 2, 7).into();
        assert_eq!(member_addr(v4), Ipv4Addr::new(192, 0, 2, 7));
        // IPVS's AF_INET6 fold: ntohl(a0 ^ a1 ^ a2 ^ a3).
        let v6: IpAddr = "2001:db8:aabb:ccdd:102:304:506:708".parse().unwrap();
        assert_eq!(
            u32::from(member_addr(v6)),
            0x2001_0db8 ^ 0xaabb_ccdd ^ 0x0102_0304 ^ 0x0506_0708
        );
    }

    #[test]
    fn addresses_round_trip_through_the_maps_form() {
        let v4: IpAddr = Ipv4Addr::new(192, 0, 2, 7).into();
        assert_eq!(
            addr(v4),
            lb_common::Addr::v4(u32::from_ne_bytes([192, 0, 2, 7]))
        );
        assert_eq!(ip_of(addr(v4)), v4);
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let a = addr(v6);
        assert!(!a.is_v4());
        assert_eq!(a.w[0], u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]));
        assert_eq!(a.w[3], u32::from_ne_bytes([0, 0, 0, 7]));
        assert_eq!(ip_of(a), v6);
    }
}
