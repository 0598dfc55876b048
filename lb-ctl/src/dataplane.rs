//! The only code that touches the XDP programs and their maps: load them (or adopt the pinned
//! ones a previous daemon left), attach them, and bring the maps to match a `Model` as one diff.
//!
//! Pin layout under the pin directory (default `/sys/fs/bpf/lb`): `maps/<MAP>` for every map,
//! `prog_lb_xdp` for the balancer program and `links/<interface>` for each XDP attachment.
//! Because links and maps are pinned, a daemon that stops with `--keep-datapath` (or dies)
//! leaves traffic flowing; the next one adopts the maps (connections included), swaps in its
//! program atomically with `BPF_LINK_UPDATE`, and reads its table back from the maps.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapInfo, PerCpuArray, PerCpuValues, ProgramArray,
    },
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Backend, Conn, FlowKey, LAYOUT_VERSION, PersistKey, PersistVal, RsConns, Service, Settings,
    Stats, SvcKey, SvcSlot, SweepStats, backend_flags, conn_flags, maps, probe_home, progs,
    settings_flags, size, svc_flags, tcp_state, udp_state,
};

use crate::{
    api::{ConnView, DestView, RateView, ServiceView, Snapshot, StatsView, Timeouts},
    model::{
        DestConfig, Forward, Model, Persistence, Protocol, SchedFlags, Scheduler, ServiceConfig,
        ServiceKey,
    },
    sched::{self, Member},
};

/// The balancer object, built by build.rs.
pub static BALANCER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
/// The pass-through object, built by build.rs.
pub static PASS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-pass"));

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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            conn_table_size: size::DEFAULT_CONNS,
            sched_table_size: size::DEFAULT_SCHED_TABLE,
            mh_table_size: size::DEFAULT_MH_TABLE,
            persist_table_size: size::DEFAULT_PERSIST,
        }
    }
}

/// How the director reaches a real server, filled in by the daemon (route + neighbour). DR
/// uses the interface and MACs; NAT and TUN route per packet with the kernel's FIB, and TUN
/// takes its outer source address from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RsPath {
    pub ifindex: u32,
    /// The real server itself when it is on-link, else the gateway towards it.
    pub next_hop: Ipv4Addr,
    pub smac: [u8; 6],
    /// The next hop's MAC; `None` while the neighbour is unresolved.
    pub dmac: Option<[u8; 6]>,
    /// TUN: the outer source address (a service's `tunnel_source` overrides it).
    pub tun_src: Ipv4Addr,
    /// MTU of the path (the route's, else the interface's; 0: unknown).
    pub mtu: u16,
}

impl Default for RsPath {
    fn default() -> Self {
        Self {
            ifindex: 0,
            next_hop: Ipv4Addr::UNSPECIFIED,
            smac: [0; 6],
            dmac: None,
            tun_src: Ipv4Addr::UNSPECIFIED,
            mtu: 0,
        }
    }
}

/// Paths to real servers, by address.
pub type Paths = HashMap<Ipv4Addr, RsPath>;

/// A slice of `LB_SCHED_TABLE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Region {
    off: u32,
    len: u32,
}

/// First-fit allocator of `LB_SCHED_TABLE` slots (slot 0 is never handed out).
#[derive(Clone, Debug)]
struct RegionAlloc {
    /// Free extents, sorted by offset, never adjacent.
    free: Vec<Region>,
}

impl RegionAlloc {
    fn new(size: u32) -> Self {
        Self {
            free: vec![Region {
                off: 1,
                len: size.saturating_sub(1),
            }],
        }
    }

    fn alloc(&mut self, len: u32) -> Option<Region> {
        if len == 0 {
            return Some(Region::default());
        }
        let i = self.free.iter().position(|r| r.len >= len)?;
        let r = Region {
            off: self.free[i].off,
            len,
        };
        self.free[i].off += len;
        self.free[i].len -= len;
        if self.free[i].len == 0 {
            self.free.remove(i);
        }
        Some(r)
    }

    /// Marks `r` as used (adoption of pinned tables). Returns false if it was not free.
    fn take(&mut self, r: Region) -> bool {
        if r.len == 0 {
            return true;
        }
        let Some(i) = self
            .free
            .iter()
            .position(|f| f.off <= r.off && r.off + r.len <= f.off + f.len)
        else {
            return false;
        };
        let f = self.free.remove(i);
        if r.off + r.len < f.off + f.len {
            self.free.insert(
                i,
                Region {
                    off: r.off + r.len,
                    len: f.off + f.len - (r.off + r.len),
                },
            );
        }
        if f.off < r.off {
            self.free.insert(
                i,
                Region {
                    off: f.off,
                    len: r.off - f.off,
                },
            );
        }
        true
    }

    fn release(&mut self, r: Region) {
        if r.len == 0 {
            return;
        }
        let i = self.free.partition_point(|f| f.off < r.off);
        self.free.insert(i, r);
        // Merge with the neighbours.
        if i + 1 < self.free.len() && self.free[i].off + self.free[i].len == self.free[i + 1].off {
            self.free[i].len += self.free[i + 1].len;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].off + self.free[i - 1].len == self.free[i].off {
            self.free[i - 1].len += self.free[i].len;
            self.free.remove(i);
        }
    }
}

/// Ids `1..max` (0 is "unset" in the array maps).
#[derive(Clone, Debug)]
struct IdPool {
    used: Vec<bool>,
    /// Where the next search starts: ids are handed out in order, so a sync that adds many
    /// real servers does not rescan the ids it just took.
    next: usize,
}

impl IdPool {
    fn new(max: u32) -> Self {
        let mut used = vec![false; max as usize];
        used[0] = true;
        Self { used, next: 1 }
    }
    fn alloc(&mut self) -> Option<u32> {
        let n = self.used.len();
        let i = (self.next..n)
            .chain(1..self.next.min(n))
            .find(|&i| !self.used[i])?;
        self.used[i] = true;
        self.next = i + 1;
        Some(i as u32)
    }
    fn take(&mut self, id: u32) {
        if let Some(u) = self.used.get_mut(id as usize) {
            *u = true;
        }
    }
    fn release(&mut self, id: u32) {
        if id != 0
            && let Some(u) = self.used.get_mut(id as usize)
        {
            *u = false;
        }
    }
}

type DestKey = (Ipv4Addr, u16);

#[derive(Clone, Debug)]
struct SvcState {
    id: u32,
    config: ServiceConfig,
    /// Backend ids in IPVS list order: the most recently added destination first.
    members: Vec<(DestKey, u32)>,
    region: Region,
    /// What `region` holds: the scheduler's table (`table_len` slots), then the members.
    table: Vec<u32>,
    table_len: u32,
    /// What `table` was built from (scheduler, flags, mh size, members): an unchanged
    /// service is not rebuilt (a Maglev table takes milliseconds).
    built_from: Option<(Scheduler, SchedFlags, u32, Vec<Member>)>,
}

#[derive(Clone, Debug)]
struct BeState {
    svc: ServiceKey,
    dest: DestConfig,
    /// Deleted (IPVS trash): kept while connections may point at it, dropped packets.
    trashed_at: Option<Instant>,
    /// The value last written to `LB_BACKENDS`.
    written: Backend,
}

#[derive(Clone, Debug)]
struct State {
    services: BTreeMap<ServiceKey, SvcState>,
    backends: BTreeMap<u32, BeState>,
    svc_ids: IdPool,
    be_ids: IdPool,
    regions: RegionAlloc,
    /// Replaced tables, released after `TABLE_GRACE`.
    retired: Vec<(Instant, Region)>,
}

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
    svc_stats: PerCpuArray<MapData, Stats>,
    backend_stats: PerCpuArray<MapData, Stats>,
    counters: PerCpuArray<MapData, u64>,
    settings: Array<MapData, Settings>,
    /// Kept open: the tail-call targets live as long as the map has a user.
    _progs: ProgramArray<MapData>,
}

/// One of the double-buffered open-addressing tables the data path probes (`LB_SVC_TABLE`,
/// `LB_NAT_RS`): two halves of `slots` slots, `Settings::svc_half` naming the live one.
struct ProbeTable {
    map: Array<MapData, SvcSlot>,
    slots: u32,
    /// What each half holds.
    halves: [Vec<SvcSlot>; 2],
}

impl ProbeTable {
    fn open(map: Array<MapData, SvcSlot>, slots: u32, adopted: bool) -> anyhow::Result<Self> {
        let mut halves = [
            vec![SvcSlot::default(); slots as usize],
            vec![SvcSlot::default(); slots as usize],
        ];
        if adopted {
            for (h, half) in halves.iter_mut().enumerate() {
                for (i, slot) in half.iter_mut().enumerate() {
                    *slot = map.get(&(h as u32 * slots + i as u32), 0)?;
                }
            }
        }
        Ok(Self { map, slots, halves })
    }

    /// Lays `entries` out by linear probing from `probe_home`; `Err` names a key that would
    /// sit further from home than the data path probes.
    fn build(
        entries: impl IntoIterator<Item = (SvcKey, Service)>,
        slots: u32,
    ) -> Result<Vec<SvcSlot>, SvcKey> {
        let mut t = vec![SvcSlot::default(); slots as usize];
        let mut seen = std::collections::HashSet::new();
        for (key, svc) in entries {
            if !seen.insert(key.as_u64()) {
                continue;
            }
            let home = probe_home(&key, slots);
            let slot = (0..size::SVC_MAX_PROBE)
                .map(|i| ((home + i) & (slots - 1)) as usize)
                .find(|&i| t[i].svc.id == 0)
                .ok_or(key)?;
            t[slot] = SvcSlot { key, svc };
        }
        Ok(t)
    }

    fn write_half(&mut self, half: usize, table: &[SvcSlot]) -> anyhow::Result<()> {
        for (i, slot) in table.iter().enumerate() {
            if self.halves[half][i] != *slot {
                self.map
                    .set(half as u32 * self.slots + i as u32, *slot, 0)?;
                self.halves[half][i] = *slot;
            }
        }
        Ok(())
    }
}

/// A probe-table key as people write it.
fn show(k: &SvcKey) -> String {
    let proto = proto_of(k.proto).map_or("?", |p| p.label());
    format!("{proto} {}:{}", ip(k.addr), u16::from_be(k.port))
}

/// Per-backend connection counts from the last sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCounts {
    pub active: u32,
    pub inactive: u32,
    /// Persistence templates pointing at the backend.
    pub persist: u32,
    /// Skipped by the schedulers: over its upper threshold (`-x`), and not yet back under
    /// its lower one (`-y`).
    pub overloaded: bool,
}

/// Connection timeouts in seconds, per TCP state, and for UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateTimeouts {
    pub tcp: [u32; tcp_state::COUNT],
    pub udp: u32,
}

impl Default for StateTimeouts {
    fn default() -> Self {
        Self {
            tcp: tcp_state::TIMEOUTS,
            udp: udp_state::TIMEOUT,
        }
    }
}

impl StateTimeouts {
    /// `ipvsadm --set tcp tcpfin udp` (0 leaves a value unchanged).
    pub fn set(&mut self, t: &Timeouts) {
        if t.tcp != 0 {
            self.tcp[tcp_state::ESTABLISHED as usize] = t.tcp;
        }
        if t.tcpfin != 0 {
            self.tcp[tcp_state::FIN_WAIT as usize] = t.tcpfin;
        }
        if t.udp != 0 {
            self.udp = t.udp;
        }
    }
    pub fn get(&self) -> Timeouts {
        Timeouts {
            tcp: self.tcp[tcp_state::ESTABLISHED as usize],
            tcpfin: self.tcp[tcp_state::FIN_WAIT as usize],
            udp: self.udp,
        }
    }
    fn of(&self, conn: &Conn, proto: u8) -> u32 {
        if proto == lb_common::proto::TCP {
            self.tcp
                .get(conn.state as usize)
                .copied()
                .unwrap_or(self.tcp[tcp_state::CLOSE as usize])
        } else {
            self.udp
        }
    }
}

/// The thread `Dataplane::start_clock` runs; dropping it stops the clock.
pub struct ClockThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ClockThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// How many ids and scheduling-table slots are in use, by the control plane's account
/// (`lb-ctl status`): after `-C` and the grace periods, all of them are free again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub service_ids: usize,
    pub backend_ids: usize,
    /// Backends kept after deletion while connections may still use them.
    pub trashed_backends: usize,
    pub table_slots_used: u64,
    pub table_slots: u64,
}

/// A connection: its request entry and the last activity of either direction.
struct Connection {
    key: FlowKey,
    conn: Conn,
    /// The later of the two entries' last activity.
    last_seen_ns: u64,
}

/// What one sweep of the connection table found.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub entries: usize,
    pub expired: usize,
    pub templates: usize,
    pub templates_expired: usize,
}

pub struct Dataplane {
    bpf: Ebpf,
    maps: Maps,
    opts: Options,
    links: BTreeMap<String, PinnedLink>,
    state: State,
    conn_table_size: u32,
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
    settings_lock: Arc<Mutex<()>>,
}

fn svc_key(k: &ServiceKey) -> SvcKey {
    SvcKey {
        addr: u32::from_ne_bytes(k.addr.octets()),
        port: k.port.to_be(),
        proto: k.proto.number(),
        _pad: 0,
    }
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

/// Mounts bpffs at /sys/fs/bpf if it is not (a fresh boot leaves it unmounted).
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let bpf_mounts: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "bpf").then_some(at)
        })
        .collect();
    if bpf_mounts.iter().any(|m| dir.starts_with(m)) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        bail!(
            "{} is not on a bpf filesystem (mount one, or use a pin path under /sys/fs/bpf)",
            dir.display()
        );
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, kind) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    Ok(())
}

/// The map types, key and value sizes this build expects, to check pinned maps against.
fn expected_layout(name: &str) -> (u32, u32) {
    use core::mem::size_of;
    let s = |k: usize, v: usize| (k as u32, v as u32);
    match name {
        maps::SVC_TABLE | maps::NAT_RS => s(4, size_of::<SvcSlot>()),
        maps::BACKENDS => s(4, size_of::<Backend>()),
        maps::SCHED_TABLE => s(4, 4),
        maps::SVC_CURSOR => s(4, 8),
        maps::CONNS => s(size_of::<FlowKey>(), size_of::<Conn>()),
        maps::SVC_STATS | maps::BACKEND_STATS => s(4, size_of::<Stats>()),
        maps::COUNTERS => s(4, 8),
        maps::SETTINGS => s(4, size_of::<Settings>()),
        maps::SVC_INFO => s(4, size_of::<Service>()),
        maps::RS_CONNS => s(4, size_of::<RsConns>()),
        maps::RS_NEW => s(4, 4),
        maps::PERSIST => s(size_of::<PersistKey>(), size_of::<PersistVal>()),
        maps::LBLC => s(
            size_of::<lb_common::LblcKey>(),
            size_of::<lb_common::LblcVal>(),
        ),
        maps::TIMEOUTS => s(4, 4),
        maps::SWEEP => s(4, size_of::<SweepStats>()),
        maps::PROGS => s(4, 4),
        other => unreachable!("no layout known for map {other}: add it here"),
    }
}

/// One counter set, summed over its per-CPU copies.
fn sum_stats(per_cpu: &[Stats]) -> StatsView {
    let mut v = StatsView::default();
    for s in per_cpu {
        v.conns += s.conns;
        v.inpkts += s.in_pkts;
        v.inbytes += s.in_bytes;
        v.outpkts += s.out_pkts;
        v.outbytes += s.out_bytes;
    }
    v
}

/// Every element of the per-CPU `Stats` array `map`, summed over CPUs, read with
/// `BPF_MAP_LOOKUP_BATCH` (see `update_batch`).
fn lookup_batch_percpu(map: &MapData) -> anyhow::Result<Vec<StatsView>> {
    use std::os::fd::{AsFd, AsRawFd};
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const CHUNK: usize = 8192;
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    let mut out = Vec::new();
    let mut keys = vec![0u32; CHUNK];
    let mut values = vec![Stats::default(); CHUNK * cpus];
    let (mut in_batch, mut out_batch) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &in_batch as *const u32 as u64
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the buffers hold `count` keys and values (a value of a per-CPU map is one
        // `Stats` per possible CPU, 8-byte aligned as `Stats` is) and outlive the call.
        let r = unsafe { crate::bpf::sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        for k in 0..attr.count as usize {
            let id = keys[k] as usize;
            if out.len() <= id {
                out.resize(id + 1, StatsView::default());
            }
            out[id] = sum_stats(&values[k * cpus..(k + 1) * cpus]);
        }
        match r {
            Ok(_) => {}
            // ENOENT: the end of the array.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => bail!("BPF_MAP_LOOKUP_BATCH: {e}"),
        }
        in_batch = out_batch;
        first = false;
    }
}

/// The batch member of `union bpf_attr` (`BPF_MAP_*_BATCH`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `values` into the `u32` array `map` from slot `off` with one
/// `BPF_MAP_UPDATE_BATCH` (aya has no wrapper for it): a 65,537-slot Maglev table costs one
/// system call instead of 65,537.
fn update_batch(map: &MapData, off: u32, values: &[u32]) -> anyhow::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let keys: Vec<u32> = (off..off + values.len() as u32).collect();
    let mut done = 0usize;
    while done < values.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (values.len() - done) as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the key and value buffers hold `count` elements each and outlive the call.
        let r = unsafe { crate::bpf::sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr) };
        // The kernel reports how many it wrote in `count`, also on an error.
        match r {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && attr.count > 0 => {}
            Err(e) => bail!("BPF_MAP_UPDATE_BATCH: {e}"),
        }
        done += attr.count as usize;
    }
    Ok(())
}

fn take<T>(bpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = bpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the balancer object"))?;
    T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
}

fn zeros<T: aya::Pod + Default>() -> anyhow::Result<PerCpuValues<T>> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    Ok(PerCpuValues::try_from(vec![T::default(); n])?)
}

impl Dataplane {
    /// Loads the balancer, adopting the maps pinned under `opts.pin_dir` if a previous daemon
    /// left them (after checking they have this build's layout), else creating and pinning
    /// fresh ones. Nothing is attached yet.
    pub fn open(opts: Options) -> anyhow::Result<Self> {
        ensure_bpffs(&opts.pin_dir)?;
        let map_dir = opts.pin_dir.join("maps");
        fs::create_dir_all(&map_dir).with_context(|| format!("creating {}", map_dir.display()))?;
        fs::create_dir_all(opts.pin_dir.join("links"))?;

        let mut adopted = false;
        let mut conn_table_size = opts.conn_table_size;
        let mut sched_table_size = opts.sched_table_size;
        for name in maps::ALL {
            let pin = map_dir.join(name);
            if !pin.exists() {
                continue;
            }
            adopted = true;
            let info = MapInfo::from_pin(&pin)
                .with_context(|| format!("reading pinned map {}", pin.display()))?;
            let (k, v) = expected_layout(name);
            if info.key_size() != k || info.value_size() != v {
                bail!(
                    "the pinned map {} has key/value sizes {}/{} but this lb-ctl expects {k}/{v}: \
                     it was made by an incompatible version; stop that data path \
                     (`lb-ctl stop`, or remove {}) to start afresh",
                    pin.display(),
                    info.key_size(),
                    info.value_size(),
                    opts.pin_dir.display()
                );
            }
            if name == maps::CONNS && info.max_entries() != opts.conn_table_size {
                log::warn!(
                    "keeping the pinned connection table's size {} (asked for {}): resizing \
                     would drop every connection",
                    info.max_entries(),
                    opts.conn_table_size
                );
                conn_table_size = info.max_entries();
            }
            if name == maps::SCHED_TABLE {
                sched_table_size = info.max_entries();
            }
        }

        let mut loader = EbpfLoader::new();
        for name in maps::ALL {
            loader.map_pin_path(name, map_dir.join(name));
        }
        loader.map_max_entries(maps::CONNS, conn_table_size);
        loader.map_max_entries(maps::SCHED_TABLE, sched_table_size);
        loader.map_max_entries(maps::PERSIST, opts.persist_table_size);
        let mut bpf = loader
            .load(BALANCER_OBJ)
            .context("loading the balancer's maps and programs")?;
        let prog: &mut Xdp = bpf
            .program_mut(progs::BALANCER)
            .ok_or_else(|| anyhow!("program {} missing", progs::BALANCER))?
            .try_into()?;
        prog.load()
            .context("the kernel refused the balancer program")?;
        let prog_pin = opts.pin_dir.join(format!("prog_{}", progs::BALANCER));
        let _ = fs::remove_file(&prog_pin);
        prog.pin(&prog_pin)
            .with_context(|| format!("pinning the program at {}", prog_pin.display()))?;

        // lb_xdp tail-calls lb_new for a packet that opens a connection, and lb_new tail-calls
        // lb_resume to forward it. Both go into the (pinned) program array before lb_xdp is
        // attached; a data path still attached from before switches to the new ones at once,
        // which is compatible (same layout version).
        let new_prog: &mut Xdp = bpf
            .program_mut(progs::NEW)
            .ok_or_else(|| anyhow!("program {} missing", progs::NEW))?
            .try_into()?;
        new_prog
            .load()
            .context("the kernel refused the new-connection program")?;
        let new_fd = new_prog.fd()?.try_clone()?;
        let resume: &mut Xdp = bpf
            .program_mut(progs::RESUME)
            .ok_or_else(|| anyhow!("program {} missing", progs::RESUME))?
            .try_into()?;
        resume
            .load()
            .context("the kernel refused the resume program")?;
        let resume_fd = resume.fd()?.try_clone()?;
        let mut prog_array: ProgramArray<MapData> = take(&mut bpf, maps::PROGS)?;
        prog_array
            .set(lb_common::prog_index::NEW, &new_fd, 0)
            .context("filling the program array")?;
        prog_array
            .set(lb_common::prog_index::RESUME, &resume_fd, 0)
            .context("filling the program array")?;

        let sweep_prog: &mut Xdp = bpf
            .program_mut(progs::SWEEP)
            .ok_or_else(|| anyhow!("program {} missing", progs::SWEEP))?
            .try_into()?;
        sweep_prog
            .load()
            .context("the kernel refused the sweep program")?;
        let mut maps = Maps {
            svc_info: take(&mut bpf, maps::SVC_INFO)?,
            rs_conns: take(&mut bpf, maps::RS_CONNS)?,
            rs_new: take(&mut bpf, maps::RS_NEW)?,
            persist: take(&mut bpf, maps::PERSIST)?,
            timeouts: take(&mut bpf, maps::TIMEOUTS)?,
            sweep: take(&mut bpf, maps::SWEEP)?,
            backends: take(&mut bpf, maps::BACKENDS)?,
            sched_table: take(&mut bpf, maps::SCHED_TABLE)?,
            cursor: take(&mut bpf, maps::SVC_CURSOR)?,
            conns: take(&mut bpf, maps::CONNS)?,
            svc_stats: take(&mut bpf, maps::SVC_STATS)?,
            backend_stats: take(&mut bpf, maps::BACKEND_STATS)?,
            counters: take(&mut bpf, maps::COUNTERS)?,
            settings: take(&mut bpf, maps::SETTINGS)?,
            _progs: prog_array,
        };
        let mut settings = maps.settings.get(&0, 0)?;
        if adopted && settings.layout_version != LAYOUT_VERSION {
            bail!(
                "the pinned maps under {} have layout version {} but this lb-ctl writes {}: \
                 stop that data path (`lb-ctl stop`) to start afresh",
                opts.pin_dir.display(),
                settings.layout_version,
                LAYOUT_VERSION
            );
        }
        settings.layout_version = LAYOUT_VERSION;
        settings.svc_half &= 1;
        maps.settings.set(0, settings, 0)?;
        if !adopted {
            // IPVS's default timeouts until the daemon sets its own.
            let d = StateTimeouts::default();
            for (i, v) in d.tcp.iter().enumerate() {
                maps.timeouts.set(i as u32, *v, 0)?;
            }
            maps.timeouts.set(lb_common::TIMEOUT_UDP, d.udp, 0)?;
        }
        let svc_table =
            ProbeTable::open(take(&mut bpf, maps::SVC_TABLE)?, size::SVC_SLOTS, adopted)?;
        let nat_rs = ProbeTable::open(take(&mut bpf, maps::NAT_RS)?, size::NAT_RS_SLOTS, adopted)?;

        let state = State {
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            svc_ids: IdPool::new(size::MAX_SERVICES),
            be_ids: IdPool::new(size::MAX_BACKENDS),
            regions: RegionAlloc::new(sched_table_size),
            retired: Vec::new(),
        };
        let mut dp = Self {
            bpf,
            maps,
            opts,
            links: BTreeMap::new(),
            state,
            conn_table_size,
            adopted,
            settings,
            svc_table,
            nat_rs,
            half_retired_at: Instant::now() - SVC_HALF_GRACE,
            clock_at: Instant::now(),
            settings_lock: Arc::new(Mutex::new(())),
        };
        if adopted {
            dp.adopt()
                .context("reading the table back from the pinned maps")?;
        }
        Ok(dp)
    }

    /// Whether the maps (and so the table and connections) came from a previous daemon.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn conn_table_size(&self) -> u32 {
        self.conn_table_size
    }

    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }

    /// Rebuilds the control plane's view from the maps a previous daemon filled.
    fn adopt(&mut self) -> anyhow::Result<()> {
        let mut by_id = HashMap::new();
        let live = self.svc_table.halves[self.settings.svc_half as usize & 1].clone();
        for slot in live.iter().filter(|s| s.svc.id != 0) {
            let (k, v) = (slot.key, slot.svc);
            let (Some(proto), Some(scheduler)) = (proto_of(k.proto), sched_of(v.sched)) else {
                log::warn!("ignoring a pinned service entry with unknown protocol/scheduler");
                continue;
            };
            let key = ServiceKey {
                proto,
                addr: ip(k.addr),
                port: u16::from_be(k.port),
            };
            // The region holds the scheduler's table, then the members.
            let region = Region {
                off: v.table_off,
                len: v.table_len + v.members_len,
            };
            if !self.state.regions.take(region) {
                bail!("service {key}: its scheduling table overlaps another's");
            }
            self.state.svc_ids.take(v.id);
            let mut table = Vec::with_capacity(region.len as usize);
            for slot in region.off..region.off + region.len {
                table.push(self.maps.sched_table.get(&slot, 0)?);
            }
            by_id.insert(v.id, key);
            self.state.services.insert(
                key,
                SvcState {
                    id: v.id,
                    config: ServiceConfig {
                        key,
                        scheduler,
                        sched_flags: SchedFlags(u32::from(v.sched_flags) << 3),
                        persistence: (v.flags & svc_flags::PERSISTENT != 0).then(|| Persistence {
                            timeout: v.persist_timeout,
                            netmask: ip(v.persist_mask),
                        }),
                        ops: v.flags & svc_flags::ONE_PACKET != 0,
                        tunnel_source: None,
                    },
                    members: Vec::new(),
                    region,
                    table,
                    table_len: v.table_len,
                    built_from: None,
                },
            );
        }
        let now = Instant::now();
        for id in 1..size::MAX_BACKENDS {
            let b = self.maps.backends.get(&id, 0)?;
            if b.svc_id == 0 {
                continue;
            }
            self.state.be_ids.take(id);
            let svc = by_id.get(&b.svc_id).copied();
            let forward = forward_of(b.fwd).unwrap_or(Forward::Dr);
            let dest = DestConfig {
                addr: ip(b.addr),
                port: u16::from_be(b.port),
                forward,
                weight: b.weight,
                u_threshold: b.u_threshold,
                l_threshold: b.l_threshold,
            };
            let available = b.flags & backend_flags::AVAILABLE != 0;
            let Some(svc) = svc else {
                // Its service is gone: keep the id in the trash until its connections are.
                self.state.backends.insert(
                    id,
                    BeState {
                        svc: ServiceKey {
                            proto: Protocol::Tcp,
                            addr: Ipv4Addr::UNSPECIFIED,
                            port: 0,
                        },
                        dest,
                        trashed_at: Some(now),
                        written: b,
                    },
                );
                continue;
            };
            self.state.backends.insert(
                id,
                BeState {
                    svc,
                    dest,
                    trashed_at: (!available).then_some(now),
                    written: b,
                },
            );
        }
        // The members in IPVS list order, as the table region recorded them.
        for s in self.state.services.values_mut() {
            for id in s.table[s.table_len as usize..].iter() {
                if let Some(b) = self.state.backends.get(id)
                    && b.trashed_at.is_none()
                {
                    s.members.push(((b.dest.addr, b.dest.port), *id));
                }
            }
            // The tunnel source its TUN backends were given is kept as the service's own, so
            // a restart without a config file changes nothing.
            let mut sources: Vec<u32> = s
                .members
                .iter()
                .filter_map(|(_, id)| self.state.backends.get(id))
                .filter(|b| b.dest.forward == Forward::Tun)
                .map(|b| b.written.tun_src)
                .collect();
            sources.dedup();
            if let [one] = sources[..] {
                s.config.tunnel_source = Some(ip(one));
            }
        }
        self.trash_orphans(now);
        Ok(())
    }

    /// After adoption: a backend that no live service lists is trashed (its id is reclaimed
    /// once no connection uses it). A daemon killed in the middle of a sync leaves such
    /// backends: it writes new and edited backends before the service table flips, and stops
    /// deleted ones after; only the live half of the service table says which count.
    fn trash_orphans(&mut self, now: Instant) {
        let listed: HashSet<u32> = self
            .state
            .services
            .values()
            .flat_map(|s| s.members.iter().map(|(_, id)| *id))
            .collect();
        let mut n = 0;
        for (id, b) in self.state.backends.iter_mut() {
            if b.trashed_at.is_none() && !listed.contains(id) {
                b.trashed_at = Some(now);
                n += 1;
            }
        }
        if n > 0 {
            log::info!("adoption: {n} real server entries no live service lists, trashed");
        }
    }

    /// The connection timeouts the pinned maps hold (after adoption: what the previous daemon
    /// set, `--set` included).
    pub fn read_timeouts(&self) -> anyhow::Result<StateTimeouts> {
        let mut t = StateTimeouts::default();
        for (i, v) in t.tcp.iter_mut().enumerate() {
            *v = self.maps.timeouts.get(&(i as u32), 0)?;
        }
        t.udp = self.maps.timeouts.get(&lb_common::TIMEOUT_UDP, 0)?;
        Ok(t)
    }

    /// `expire_nodest_conn` and `expire_quiescent_template` as the settings map holds them.
    pub fn expiry_rules(&self) -> (bool, bool) {
        let f = self.settings.flags;
        (
            f & settings_flags::EXPIRE_NODEST != 0,
            f & settings_flags::EXPIRE_QUIESCENT != 0,
        )
    }

    /// The Maglev table size the adopted mh services were built with (none: `None`).
    pub fn adopted_mh_table_size(&self) -> Option<u32> {
        self.state
            .services
            .values()
            .filter(|s| s.config.scheduler == Scheduler::Mh && s.table_len > 0)
            .map(|s| s.table_len)
            .max()
    }

    /// Ids and table slots in use (see `PoolUsage`).
    pub fn pool_usage(&self) -> PoolUsage {
        let used = |p: &IdPool| p.used.iter().skip(1).filter(|u| **u).count();
        let free: u64 = self
            .state
            .regions
            .free
            .iter()
            .map(|r| u64::from(r.len))
            .sum();
        let used_slots: u64 = self
            .state
            .services
            .values()
            .map(|s| u64::from(s.region.len))
            .chain(self.state.retired.iter().map(|(_, r)| u64::from(r.len)))
            .sum();
        PoolUsage {
            service_ids: used(&self.state.svc_ids),
            backend_ids: used(&self.state.be_ids),
            trashed_backends: self
                .state
                .backends
                .values()
                .filter(|b| b.trashed_at.is_some())
                .count(),
            table_slots_used: used_slots,
            table_slots: free + used_slots,
        }
    }

    /// The table as the data path has it (after `open` on adopted maps: what the previous
    /// daemon left).
    pub fn model(&self) -> Model {
        let mut m = Model::default();
        for (k, s) in &self.state.services {
            let mut dests: Vec<DestConfig> = s
                .members
                .iter()
                .filter_map(|(_, id)| self.state.backends.get(id).map(|b| b.dest))
                .collect();
            // The model lists destinations in the order they were added.
            dests.reverse();
            m.services.insert(
                *k,
                crate::model::ServiceEntry {
                    config: s.config,
                    dests,
                },
            );
        }
        m
    }

    /// Attaches the balancer to `iface`: takes over the pinned link a previous daemon left
    /// there (atomic program replacement, no packet sees an empty hook), else attaches anew.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> anyhow::Result<()> {
        let pin = self.opts.pin_dir.join("links").join(iface);
        let prog: &mut Xdp = self
            .bpf
            .program_mut(progs::BALANCER)
            .ok_or_else(|| anyhow!("program {} missing", progs::BALANCER))?
            .try_into()?;
        let mut link_id = None;
        if pin.exists() {
            match PinnedLink::from_pin(&pin) {
                Ok(pinned) => {
                    let fd_link = pinned.unpin().context("unpinning the previous link")?;
                    match XdpLink::try_from(fd_link) {
                        Ok(l) => match prog.attach_to_link(l) {
                            Ok(id) => link_id = Some(id),
                            Err(e) => log::warn!("{iface}: could not take over the old link: {e}"),
                        },
                        Err(e) => log::warn!("{iface}: pinned link is not an XDP link: {e}"),
                    }
                }
                Err(e) => {
                    log::warn!("{iface}: stale link pin {} ({e}); removing", pin.display());
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        let link_id = match link_id {
            Some(id) => id,
            None => prog
                .attach(iface, mode)
                .with_context(|| format!("attaching XDP ({mode:?}) to {iface}"))?,
        };
        let link = prog.take_link(link_id)?;
        let fd_link = FdLink::try_from(link).map_err(|e| {
            anyhow!("{iface}: the kernel attached XDP without a bpf_link ({e}); cannot pin it")
        })?;
        let pinned = fd_link
            .pin(&pin)
            .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
        self.links.insert(iface.to_string(), pinned);
        Ok(())
    }

    /// Detaches interfaces a previous daemon attached that are not in `keep`.
    pub fn detach_others(&mut self, keep: &[String]) -> anyhow::Result<Vec<String>> {
        let dir = self.opts.pin_dir.join("links");
        let mut gone = Vec::new();
        for e in fs::read_dir(&dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || self.links.contains_key(&name) {
                continue;
            }
            if let Ok(p) = PinnedLink::from_pin(dir.join(&name)) {
                drop(p.unpin()?);
            } else {
                let _ = fs::remove_file(dir.join(&name));
            }
            gone.push(name);
        }
        Ok(gone)
    }

    /// Stops: with `keep`, leaves programs attached and maps pinned (traffic keeps flowing,
    /// the next daemon adopts it all); else detaches everything and removes every pin.
    pub fn shutdown(mut self, keep: bool) -> anyhow::Result<()> {
        if keep {
            // Dropping a PinnedLink closes our fd; the pin keeps the link (and program) alive.
            return Ok(());
        }
        for (iface, pinned) in std::mem::take(&mut self.links) {
            match pinned.unpin() {
                Ok(link) => drop(link),
                Err(e) => log::warn!("{iface}: unpinning the XDP link: {e}"),
            }
        }
        let dir = self.opts.pin_dir.clone();
        drop(self);
        let _ = fs::remove_file(dir.join(format!("prog_{}", progs::BALANCER)));
        for name in maps::ALL {
            let _ = fs::remove_file(dir.join("maps").join(name));
        }
        for sub in ["maps", "links", ""] {
            let _ = fs::remove_dir(dir.join(sub));
        }
        Ok(())
    }

    /// Checks that the data path can run `model` (schedulers and forwarding methods it
    /// implements), without changing anything.
    pub fn check(model: &Model) -> anyhow::Result<()> {
        for (k, e) in &model.services {
            if !sched::supported(e.config.scheduler) {
                bail!(
                    "service {k}: scheduler {} is not supported",
                    e.config.scheduler
                );
            }
            let scans = matches!(
                e.config.scheduler,
                Scheduler::Lc
                    | Scheduler::Wlc
                    | Scheduler::Sed
                    | Scheduler::Nq
                    | Scheduler::Fo
                    | Scheduler::Ovf
                    | Scheduler::Lblc
                    | Scheduler::Lblcr
            );
            if scans && e.dests.len() > size::MAX_SCAN as usize {
                bail!(
                    "service {k}: {} real servers, but scheduler {} scans them all for each \
                     new connection and takes at most {}",
                    e.dests.len(),
                    e.config.scheduler,
                    size::MAX_SCAN
                );
            }
        }
        Ok(())
    }

    /// The data path's view of a service.
    fn service_value(s: &SvcState) -> Service {
        let c = &s.config;
        let mut flags = 0;
        if c.persistence.is_some() {
            flags |= svc_flags::PERSISTENT;
        }
        if c.ops {
            flags |= svc_flags::ONE_PACKET;
        }
        Service {
            id: s.id,
            sched: sched_code(c.scheduler),
            flags,
            sched_flags: ((c.sched_flags.0 >> 3) & 0x7) as u8,
            _pad: 0,
            table_off: s.region.off,
            table_len: s.table_len,
            members_off: s.region.off + s.table_len,
            members_len: s.members.len() as u32,
            persist_timeout: c.persistence.map_or(0, |p| p.timeout),
            persist_mask: c
                .persistence
                .map_or(0, |p| u32::from_ne_bytes(p.netmask.octets())),
        }
    }

    fn backend_value(
        svc: &ServiceConfig,
        svc_id: u32,
        dest: &DestConfig,
        available: bool,
        paths: &Paths,
    ) -> Backend {
        let path = paths.get(&dest.addr).copied().unwrap_or_default();
        let mut flags = 0;
        if available {
            flags |= backend_flags::AVAILABLE;
        }
        if path.dmac.is_some() {
            flags |= backend_flags::NEIGH_OK;
        }
        Backend {
            addr: u32::from_ne_bytes(dest.addr.octets()),
            port: dest.port.to_be(),
            fwd: dest.forward.code(),
            flags,
            svc_id,
            ifindex: path.ifindex,
            dmac: path.dmac.unwrap_or([0; 6]),
            smac: path.smac,
            weight: dest.weight,
            u_threshold: dest.u_threshold,
            l_threshold: dest.l_threshold,
            vaddr: u32::from_ne_bytes(svc.key.addr.octets()),
            vport: svc.key.port.to_be(),
            mtu: path.mtu,
            tun_src: u32::from_ne_bytes(svc.tunnel_source.unwrap_or(path.tun_src).octets()),
        }
    }

    /// Brings the maps to match `model` as one diff. The whole change is planned first (ids,
    /// table slots); if anything does not fit, nothing is written.
    pub fn sync(&mut self, model: &Model, paths: &Paths) -> anyhow::Result<()> {
        Self::check(model)?;
        let now = Instant::now();
        let mut st = self.state.clone();
        // Map writes, in the order they must happen.
        let mut backend_writes: Vec<(u32, Backend)> = Vec::new();
        let mut fresh_backends: Vec<u32> = Vec::new();
        let mut fresh_services: Vec<u32> = Vec::new();
        let mut table_writes: Vec<(ServiceKey, Region, Vec<u32>)> = Vec::new();
        let mut removed_services: Vec<ServiceKey> = Vec::new();

        // Services that go away.
        let gone: Vec<ServiceKey> = st
            .services
            .keys()
            .filter(|k| !model.services.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            let s = st.services.remove(&k).expect("listed above");
            for (_, id) in &s.members {
                if let Some(b) = st.backends.get_mut(id) {
                    b.trashed_at = Some(now);
                }
            }
            st.retired.push((now, s.region));
            removed_services.push(k);
        }

        // Deleted destinations by (service, address, port), for reviving (see below).
        let mut trash: HashMap<(ServiceKey, DestKey), u32> = st
            .backends
            .iter()
            .filter(|(_, b)| b.trashed_at.is_some())
            .map(|(id, b)| ((b.svc, (b.dest.addr, b.dest.port)), *id))
            .collect();

        for (key, entry) in &model.services {
            let mut svc = match st.services.get(key) {
                Some(s) => s.clone(),
                None => {
                    let id = st.svc_ids.alloc().ok_or_else(|| {
                        anyhow!("too many services (at most {})", size::MAX_SERVICES - 1)
                    })?;
                    fresh_services.push(id);
                    SvcState {
                        id,
                        config: entry.config,
                        members: Vec::new(),
                        region: Region::default(),
                        table: Vec::new(),
                        table_len: 0,
                        built_from: None,
                    }
                }
            };
            svc.config = entry.config;
            // Members that go away: to the trash (their connections' packets are dropped,
            // as IPVS does with expire_nodest_conn=0).
            let dests: HashMap<DestKey, &DestConfig> =
                entry.dests.iter().map(|d| ((d.addr, d.port), d)).collect();
            svc.members.retain(|(dk, id)| {
                let keep = dests.contains_key(dk);
                if !keep && let Some(b) = st.backends.get_mut(id) {
                    b.trashed_at = Some(now);
                    trash.insert((*key, *dk), *id);
                }
                keep
            });
            // New members go to the head of the list, as IPVS adds them.
            let present: HashSet<DestKey> = svc.members.iter().map(|(k, _)| *k).collect();
            for d in &entry.dests {
                let dk = (d.addr, d.port);
                if present.contains(&dk) {
                    continue;
                }
                // A destination deleted a moment ago comes back from the trash with its
                // connections, as in IPVS.
                let id = match trash.remove(&(*key, dk)) {
                    Some(id) => id,
                    None => {
                        let id = st.be_ids.alloc().ok_or_else(|| {
                            anyhow!("too many real servers (at most {})", size::MAX_BACKENDS - 1)
                        })?;
                        fresh_backends.push(id);
                        id
                    }
                };
                svc.members.insert(0, (dk, id));
            }
            // Write every member whose value changed (new, edited, revived, re-resolved).
            for (dk, id) in &svc.members {
                let dest = *dests[dk];
                let value = Self::backend_value(&entry.config, svc.id, &dest, true, paths);
                let b = st.backends.entry(*id).or_insert(BeState {
                    svc: *key,
                    dest,
                    trashed_at: None,
                    written: Backend::default(),
                });
                b.svc = *key;
                b.dest = dest;
                b.trashed_at = None;
                if b.written != value {
                    b.written = value;
                    backend_writes.push((*id, value));
                }
            }
            let members: Vec<Member> = svc
                .members
                .iter()
                .map(|(dk, id)| Member {
                    id: *id,
                    addr: dk.0,
                    port: dk.1,
                    weight: dests[dk].weight,
                    active: 0,
                    inactive: 0,
                    overloaded: false,
                })
                .collect();
            // The region holds the scheduler's table, then the members in IPVS list order
            // (which the scanning schedulers walk).
            let inputs = (
                entry.config.scheduler,
                entry.config.sched_flags,
                self.opts.mh_table_size,
                members,
            );
            let table = if svc.built_from.as_ref() == Some(&inputs) {
                svc.table.clone()
            } else {
                let mut t = sched::table(inputs.0, inputs.1, &inputs.3, inputs.2)
                    .map_err(|e| anyhow!("service {key}: {e}"))?;
                svc.table_len = t.len() as u32;
                t.extend(inputs.3.iter().map(|m| m.id));
                svc.built_from = Some(inputs);
                t
            };
            let fresh = fresh_services.last() == Some(&svc.id);
            if fresh
                || table != svc.table
                || st.services.get(key).map(|s| s.config) != Some(svc.config)
            {
                let region = st.regions.alloc(table.len() as u32).ok_or_else(|| {
                    anyhow!(
                        "service {key}: no room for a {}-slot scheduling table \
                         (the table map has {} slots)",
                        table.len(),
                        self.opts.sched_table_size
                    )
                })?;
                if !fresh {
                    st.retired.push((now, svc.region));
                }
                svc.region = region;
                svc.table = table.clone();
                table_writes.push((*key, region, table));
            }
            st.services.insert(*key, svc);
        }
        // Trashed backends: stop them (after their services no longer schedule them).
        let mut trash_writes = Vec::new();
        for (id, b) in st.backends.iter_mut() {
            if b.trashed_at.is_some() && b.written.flags & backend_flags::AVAILABLE != 0 {
                b.written.flags &= !backend_flags::AVAILABLE;
                trash_writes.push((*id, b.written));
            }
        }

        let svc_entries = st
            .services
            .iter()
            .map(|(k, s)| (svc_key(k), Self::service_value(s)));
        let svc_table = ProbeTable::build(svc_entries, size::SVC_SLOTS)
            .map_err(|k| anyhow!("service {}: too many services hash alike", show(&k)))?;
        // Where NAT replies come from: every live NAT real server's (address, port).
        let rs_entries = st
            .backends
            .iter()
            .filter(|(_, b)| b.trashed_at.is_none() && b.dest.forward == Forward::Nat)
            .map(|(id, b)| {
                let key = SvcKey {
                    addr: u32::from_ne_bytes(b.dest.addr.octets()),
                    port: b.dest.port.to_be(),
                    proto: b.svc.proto.number(),
                    _pad: 0,
                };
                let marker = Service {
                    id: *id,
                    flags: svc_flags::NAT_RS,
                    ..Service::default()
                };
                (key, marker)
            });
        let rs_table = ProbeTable::build(rs_entries, size::NAT_RS_SLOTS).map_err(|k| {
            anyhow!(
                "real server {}: too many NAT real servers hash alike",
                show(&k)
            )
        })?;

        // Everything fits: write, in an order no packet can trip over.
        for id in &fresh_backends {
            self.maps.backend_stats.set(*id, zeros()?, 0)?;
        }
        for (id, v) in &backend_writes {
            self.maps.backends.set(*id, *v, 0)?;
        }
        for id in &fresh_services {
            self.maps.svc_stats.set(*id, zeros()?, 0)?;
        }
        for (key, region, table) in &table_writes {
            update_batch(
                aya::maps::IterableMap::map(&self.maps.sched_table),
                region.off,
                table,
            )
            .with_context(|| format!("writing the scheduling table of {key}"))?;
            // IPVS restarts its wrr walk when destinations change; so do we.
            self.maps.cursor.set(st.services[key].id, 0, 0)?;
        }
        for (k, s) in &st.services {
            let v = Self::service_value(s);
            if self.state.services.get(k).map(Self::service_value) != Some(v) {
                self.maps.svc_info.set(s.id, v, 0)?;
            }
        }
        let mut flags =
            self.settings.flags & !(settings_flags::HAS_PORT0 | settings_flags::HAS_NAT);
        if st.services.keys().any(|k| k.port == 0) {
            flags |= settings_flags::HAS_PORT0;
        }
        if rs_table.iter().any(|s| s.svc.id != 0) {
            flags |= settings_flags::HAS_NAT;
        }
        self.settings.flags = flags;
        self.publish(&svc_table, &rs_table)?;
        for (id, v) in &trash_writes {
            self.maps.backends.set(*id, *v, 0)?;
        }
        for k in &removed_services {
            if let Some(id) = self.state.services.get(k).map(|s| s.id) {
                st.svc_ids.release(id);
            }
        }
        self.state = st;
        Ok(())
    }

    /// Makes the tables live: writes the slots of the idle halves that differ, then flips
    /// `svc_half` once for both. Nothing is written when the live halves already match.
    fn publish(&mut self, svc: &[SvcSlot], rs: &[SvcSlot]) -> anyhow::Result<()> {
        let live = self.settings.svc_half as usize & 1;
        if self.svc_table.halves[live] == svc && self.nat_rs.halves[live] == rs {
            return Ok(());
        }
        let idle = live ^ 1;
        // A packet that read `svc_half` just before the last flip may still probe the idle
        // half; it is done within microseconds, the grace is generous.
        let since = self.half_retired_at.elapsed();
        if since < SVC_HALF_GRACE {
            std::thread::sleep(SVC_HALF_GRACE - since);
        }
        self.svc_table.write_half(idle, svc)?;
        self.nat_rs.write_half(idle, rs)?;
        self.settings.svc_half = idle as u32;
        self.write_settings()?;
        self.half_retired_at = Instant::now();
        Ok(())
    }

    /// Advances the balancer's clock (`Settings::clock_ns`) by the time since the last call.
    /// The daemon calls it every `CLOCK_TICK_NS`; connections record it as their last activity.
    pub fn tick_clock(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.clock_at).as_nanos() as u64;
        self.clock_at = now;
        let _held = self.settings_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.maps.settings.get(&0, 0)?.clock_ns;
        self.settings.clock_ns = current.wrapping_add(elapsed);
        self.maps.settings.set(0, self.settings, 0)?;
        Ok(())
    }

    /// Writes `self.settings` to `LB_SETTINGS`, keeping the clock the map holds: the clock
    /// thread (`start_clock`) may have advanced it since this side last looked.
    fn write_settings(&mut self) -> anyhow::Result<()> {
        let _held = self.settings_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.settings.clock_ns = self.maps.settings.get(&0, 0)?.clock_ns;
        self.maps.settings.set(0, self.settings, 0)?;
        Ok(())
    }

    /// The balancer's clock as the data path reads it now.
    fn clock_now(&self) -> u64 {
        self.maps
            .settings
            .get(&0, 0)
            .map_or(self.settings.clock_ns, |s| s.clock_ns)
    }

    /// Starts a thread that advances the balancer's clock every `CLOCK_TICK_NS`, apart from
    /// the daemon's loop: a long sync or resolve there must not stop the clock (connections
    /// would record stale activity, and expire late). It writes through its own handle on the
    /// pinned settings map, read-modify-write under the lock every other settings write takes,
    /// so neither side undoes the other's change. Stopped (and joined) when dropped.
    pub fn start_clock(&self) -> anyhow::Result<ClockThread> {
        let pin = self.opts.pin_dir.join("maps").join(maps::SETTINGS);
        let data = MapData::from_pin(&pin)
            .with_context(|| format!("opening {} for the clock", pin.display()))?;
        let mut map: Array<MapData, Settings> = Array::try_from(aya::maps::Map::Array(data))?;
        let lock = self.settings_lock.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let tick = Duration::from_nanos(lb_common::CLOCK_TICK_NS);
        let thread = std::thread::Builder::new()
            .name("lb-clock".into())
            .spawn(move || {
                let mut at = Instant::now();
                let mut warned = false;
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::park_timeout(tick.saturating_sub(at.elapsed()));
                    if at.elapsed() < tick {
                        continue;
                    }
                    let now = Instant::now();
                    let elapsed = now.duration_since(at).as_nanos() as u64;
                    at = now;
                    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let r = map.get(&0, 0).and_then(|mut s| {
                        s.clock_ns = s.clock_ns.wrapping_add(elapsed);
                        map.set(0, s, 0)
                    });
                    if let Err(e) = r
                        && !std::mem::replace(&mut warned, true)
                    {
                        log::warn!("advancing the data path's clock: {e}");
                    }
                }
            })
            .context("starting the clock thread")?;
        Ok(ClockThread {
            stop,
            thread: Some(thread),
        })
    }

    /// Makes every next hop cached in connections stale (after a route or neighbour change):
    /// the data path looks each up again on its next packet.
    pub fn bump_route_epoch(&mut self) -> anyhow::Result<()> {
        self.settings.route_epoch = self.settings.route_epoch.wrapping_add(1);
        self.write_settings()?;
        Ok(())
    }

    /// Rewrites backends whose path (interface, MACs) changed.
    pub fn refresh_paths(&mut self, paths: &Paths) -> anyhow::Result<usize> {
        let mut n = 0;
        for (id, b) in self.state.backends.iter_mut() {
            if b.trashed_at.is_some() {
                continue;
            }
            let Some(svc) = self.state.services.get(&b.svc) else {
                continue;
            };
            let v = Self::backend_value(&svc.config, svc.id, &b.dest, true, paths);
            if v != b.written {
                self.maps.backends.set(*id, v, 0)?;
                b.written = v;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Releases replaced tables and trashed backends that nothing uses any more.
    pub fn collect_garbage(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let (old, keep): (Vec<_>, Vec<_>) = self
            .state
            .retired
            .drain(..)
            .partition(|(t, _)| now.duration_since(*t) >= TABLE_GRACE);
        self.state.retired = keep;
        for (_, r) in old {
            self.state.regions.release(r);
        }
        // A deleted backend is forgotten once nothing uses it: no connection, no template.
        let dead: Vec<u32> = self
            .state
            .backends
            .iter()
            .filter(|(id, b)| {
                b.trashed_at
                    .is_some_and(|t| now.duration_since(t) >= TRASH_GRACE)
                    && {
                        let c = self.conn_counts(**id);
                        c.active + c.inactive + c.persist == 0
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.state.backends.remove(&id);
            self.maps.backends.set(id, Backend::default(), 0)?;
            self.state.be_ids.release(id);
        }
        Ok(())
    }

    /// How many instructions the verifier walked to accept each loaded program (its limit
    /// is 1,000,000): the headroom left for data-path code.
    pub fn verified_insns(&self) -> Vec<(&'static str, u32)> {
        [progs::BALANCER, progs::NEW, progs::RESUME, progs::SWEEP]
            .into_iter()
            .filter_map(|name| {
                let prog: &Xdp = self.bpf.program(name)?.try_into().ok()?;
                let n = prog.info().ok()?.verified_instruction_count()?;
                Some((name, n))
            })
            .collect()
    }

    /// Runs the in-kernel sweep (`lb_sweep`): expires idle connections and templates (the data
    /// path never does) and recounts every backend's connections.
    pub fn sweep(&mut self) -> anyhow::Result<SweepReport> {
        use std::os::fd::AsFd;
        let prog: &Xdp = self
            .bpf
            .program(progs::SWEEP)
            .ok_or_else(|| anyhow!("program {} missing", progs::SWEEP))?
            .try_into()?;
        // The program ignores its packet; the kernel wants at least an Ethernet header.
        let out = crate::testrun::run_xdp(&prog.fd()?.as_fd(), &[0u8; 64], 1, 0)
            .context("running the sweep")?;
        if out.action != crate::testrun::XDP_PASS {
            bail!("the sweep program failed (verdict {})", out.action);
        }
        let s = self.maps.sweep.get(&0, 0)?;
        Ok(SweepReport {
            entries: s.entries as usize,
            expired: s.expired as usize,
            templates: s.templates as usize,
            templates_expired: s.templates_expired as usize,
        })
    }

    /// The connection timeouts the sweep applies (`ipvsadm --set`).
    pub fn set_timeouts(&mut self, t: &StateTimeouts) -> anyhow::Result<()> {
        for (i, v) in t.tcp.iter().enumerate() {
            self.maps.timeouts.set(i as u32, *v, 0)?;
        }
        self.maps.timeouts.set(lb_common::TIMEOUT_UDP, t.udp, 0)?;
        Ok(())
    }

    /// IPVS's `expire_nodest_conn` and `expire_quiescent_template` sysctls.
    pub fn set_expiry_rules(&mut self, nodest: bool, quiescent: bool) -> anyhow::Result<()> {
        let mut f = self.settings.flags
            & !(settings_flags::EXPIRE_NODEST | settings_flags::EXPIRE_QUIESCENT);
        if nodest {
            f |= settings_flags::EXPIRE_NODEST;
        }
        if quiescent {
            f |= settings_flags::EXPIRE_QUIESCENT;
        }
        self.settings.flags = f;
        self.write_settings()?;
        Ok(())
    }

    /// A backend's connections as the data path sees them: the last sweep's counts, plus
    /// the connections created since (active for TCP, inactive for UDP), and its templates.
    pub fn conn_counts(&self, id: u32) -> ConnCounts {
        let rs = self.maps.rs_conns.get(&id, 0).unwrap_or_default();
        let new = self.maps.rs_new.get(&id, 0).unwrap_or(0);
        let udp = self
            .state
            .backends
            .get(&id)
            .is_some_and(|b| b.svc.proto == Protocol::Udp);
        let (mut active, mut inactive) = (rs.active, rs.inactive);
        if udp {
            inactive = inactive.saturating_add(new);
        } else {
            active = active.saturating_add(new);
        }
        // As the data path's `view`: the sweep's hysteresis flag, or over the threshold
        // already with the connections created since.
        let u = self
            .state
            .backends
            .get(&id)
            .map_or(0, |b| b.dest.u_threshold);
        let overloaded = rs.overloaded != 0 || (u != 0 && active.saturating_add(inactive) >= u);
        ConnCounts {
            active,
            inactive,
            persist: rs.persist,
            overloaded,
        }
    }

    /// A service's members as the data path's schedulers see them now: backend ids in IPVS
    /// list order, with their weights, connection counts and overload state (what
    /// `sched::Model` needs to make the same pick).
    pub fn sched_members(&self, key: &ServiceKey) -> Option<Vec<Member>> {
        let svc = self.state.services.get(key)?;
        let members = svc
            .members
            .iter()
            .filter_map(|(dk, id)| {
                let b = self.state.backends.get(id)?;
                let c = self.conn_counts(*id);
                Some(Member {
                    id: *id,
                    addr: dk.0,
                    port: dk.1,
                    weight: b.dest.weight,
                    active: c.active,
                    inactive: c.inactive,
                    overloaded: c.overloaded,
                })
            })
            .collect();
        Some(members)
    }

    /// The size every mh table is built with.
    pub fn mh_table_size(&self) -> u32 {
        self.opts.mh_table_size
    }

    /// Sets the mh table size (a prime) the next `sync` builds every mh table with.
    pub fn set_mh_table_size(&mut self, slots: u32) {
        self.opts.mh_table_size = slots;
    }

    /// The connections among connection-table entries: request entries, each with the last
    /// activity of either direction (a NAT connection's reply entry has its own).
    fn pair(&self, entries: &[(FlowKey, Conn)]) -> Vec<Connection> {
        let replies: HashMap<FlowKey, Conn> = entries
            .iter()
            .filter(|(_, c)| c.flags & conn_flags::REPLY != 0)
            .map(|(k, c)| (*k, *c))
            .collect();
        entries
            .iter()
            .filter(|(_, c)| c.flags & conn_flags::REPLY == 0)
            .map(|(k, c)| {
                let nat = self
                    .state
                    .backends
                    .get(&c.backend)
                    .filter(|b| b.dest.forward == Forward::Nat);
                let reply = nat.map(|b| {
                    k.nat_reply(
                        u32::from_ne_bytes(b.dest.addr.octets()),
                        b.dest.port.to_be(),
                    )
                });
                let reply_seen = reply
                    .and_then(|r| replies.get(&r))
                    .map_or(0, |r| r.last_seen_ns);
                Connection {
                    key: *k,
                    conn: *c,
                    last_seen_ns: c.last_seen_ns.max(reply_seen),
                }
            })
            .collect()
    }

    fn stats(map: &PerCpuArray<MapData, Stats>, id: u32) -> StatsView {
        map.get(&id, 0)
            .map_or_else(|_| StatsView::default(), |per_cpu| sum_stats(&per_cpu))
    }

    /// Per-service and per-backend stats, by id (for the rate estimator).
    pub fn all_stats(&self) -> (HashMap<u32, StatsView>, HashMap<u32, StatsView>) {
        let svcs = Self::stats_of(
            &self.maps.svc_stats,
            self.state.services.values().map(|s| s.id),
        );
        let bes = Self::stats_of(
            &self.maps.backend_stats,
            self.state.backends.keys().copied(),
        );
        (svcs, bes)
    }

    /// The stats of `ids`: one lookup each when they are few, else the whole per-CPU array in
    /// a few `BPF_MAP_LOOKUP_BATCH` calls (100,000 real servers would take 100,000 system
    /// calls, a tenth of a second every time the rates are estimated).
    fn stats_of(
        map: &PerCpuArray<MapData, Stats>,
        ids: impl Iterator<Item = u32> + Clone,
    ) -> HashMap<u32, StatsView> {
        const BATCH_ABOVE: usize = 256;
        if ids.clone().count() > BATCH_ABOVE
            && let Ok(all) = lookup_batch_percpu(aya::maps::IterableMap::map(map))
        {
            return ids
                .map(|id| (id, all.get(id as usize).copied().unwrap_or_default()))
                .collect();
        }
        ids.map(|id| (id, Self::stats(map, id))).collect()
    }

    /// What `-L` shows. `rates` gives (service id → rates, backend id → rates).
    pub fn snapshot(
        &self,
        only: Option<&ServiceKey>,
        rates: &(HashMap<u32, RateView>, HashMap<u32, RateView>),
    ) -> Snapshot {
        let mut services = Vec::new();
        for (k, s) in &self.state.services {
            if only.is_some_and(|o| o != k) {
                continue;
            }
            let mut dests = Vec::new();
            for (_, id) in s.members.iter().rev() {
                let Some(b) = self.state.backends.get(id) else {
                    continue;
                };
                let c = self.conn_counts(*id);
                dests.push(DestView {
                    config: b.dest,
                    active_conns: c.active,
                    inact_conns: c.inactive,
                    persist_conns: c.persist,
                    stats: Self::stats(&self.maps.backend_stats, *id),
                    rates: rates.1.get(id).copied().unwrap_or_default(),
                });
            }
            services.push(ServiceView {
                config: s.config,
                stats: Self::stats(&self.maps.svc_stats, s.id),
                rates: rates.0.get(&s.id).copied().unwrap_or_default(),
                dests,
            });
        }
        Snapshot {
            conn_table_size: self.conn_table_size,
            services,
        }
    }

    /// The connection entries (`-Lc`).
    pub fn conns(&self, timeouts: &StateTimeouts) -> Vec<ConnView> {
        let now = self.clock_now();
        let entries: Vec<(FlowKey, Conn)> = self.maps.conns.iter().filter_map(Result::ok).collect();
        let conns = self.pair(&entries);
        let mut out = Vec::new();
        for c in conns {
            let (k, conn) = (c.key, c.conn);
            let Some(b) = self.state.backends.get(&conn.backend) else {
                continue;
            };
            let timeout = u64::from(timeouts.of(&conn, k.proto));
            let idle = now.saturating_sub(c.last_seen_ns) / 1_000_000_000;
            let (proto, state) = if k.proto == lb_common::proto::TCP {
                (
                    "TCP",
                    tcp_state::NAMES
                        .get(conn.state as usize)
                        .copied()
                        .unwrap_or("ERR!"),
                )
            } else {
                ("UDP", "UDP")
            };
            out.push(ConnView {
                proto: proto.into(),
                expire_secs: timeout.saturating_sub(idle) as u32,
                state: state.into(),
                client: SocketAddrV4::new(ip(k.saddr), u16::from_be(k.sport)),
                virtual_addr: SocketAddrV4::new(ip(k.daddr), u16::from_be(k.dport)),
                dest: SocketAddrV4::new(b.dest.addr, b.dest.port),
            });
        }
        // Persistence templates, as IPVS lists them: protocol "IP", client network and port 0.
        for item in self.maps.persist.iter() {
            let Ok((k, t)) = item else { continue };
            let (Some(b), Some(svc)) = (
                self.state.backends.get(&t.backend),
                self.state.services.values().find(|s| s.id == k.svc_id),
            ) else {
                continue;
            };
            let timeout = u64::from(svc.config.persistence.map_or(0, |p| p.timeout));
            let idle = now.saturating_sub(t.last_seen_ns) / 1_000_000_000;
            out.push(ConnView {
                proto: "IP".into(),
                expire_secs: timeout.saturating_sub(idle) as u32,
                state: "NONE".into(),
                client: SocketAddrV4::new(ip(k.client), 0),
                virtual_addr: SocketAddrV4::new(svc.config.key.addr, svc.config.key.port),
                dest: SocketAddrV4::new(b.dest.addr, b.dest.port),
            });
        }
        out
    }

    /// Zeroes the stats of one service (and its destinations) or of all.
    pub fn zero(&mut self, only: Option<&ServiceKey>) -> anyhow::Result<()> {
        for (k, s) in &self.state.services {
            if only.is_some_and(|o| o != k) {
                continue;
            }
            self.maps.svc_stats.set(s.id, zeros()?, 0)?;
            for (_, id) in &s.members {
                self.maps.backend_stats.set(*id, zeros()?, 0)?;
            }
        }
        Ok(())
    }

    /// Global data-path counters (`lb_common::cnt`), summed over CPUs.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        (0..lb_common::cnt::MAX)
            .filter_map(|i| {
                let name = lb_common::cnt::NAMES[i as usize];
                if name.is_empty() {
                    return None;
                }
                let v = self
                    .maps
                    .counters
                    .get(&i, 0)
                    .map(|p| p.iter().sum())
                    .unwrap_or(0);
                Some((name, v))
            })
            .collect()
    }

    /// The balancer program (for `BPF_PROG_TEST_RUN`).
    pub fn program_fd(&self) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        let p: &Xdp = self
            .bpf
            .program(progs::BALANCER)
            .ok_or_else(|| anyhow!("program {} missing", progs::BALANCER))?
            .try_into()?;
        Ok(p.fd()?.as_fd())
    }

    /// Interfaces the balancer is attached to.
    pub fn interfaces(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// The kernel's own accounting of each pinned map's memory in bytes: the `memlock:` line
    /// of the map's `/proc/self/fdinfo` entry, which `bpftool map show` prints too. The hash
    /// maps are preallocated, so this is what they take whether full or empty.
    pub fn map_memory(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        use std::os::fd::{AsFd, AsRawFd};
        maps::ALL
            .iter()
            .map(|&name| {
                let pin = self.opts.pin_dir.join("maps").join(name);
                let map = MapData::from_pin(&pin)
                    .with_context(|| format!("opening the pinned map {}", pin.display()))?;
                let fdinfo = format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd());
                let text =
                    fs::read_to_string(&fdinfo).with_context(|| format!("reading {fdinfo}"))?;
                let bytes = text
                    .lines()
                    .find_map(|l| l.strip_prefix("memlock:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| anyhow!("{fdinfo} ({name}) has no memlock line"))?;
                Ok((name, bytes))
            })
            .collect()
    }
}

/// Loads the pass-through program and attaches it to `iface` (driver mode), pinning the link at
/// `pin` so it outlives this process; removing the pin detaches it.
pub fn attach_pass(iface: &str, pin: &Path) -> anyhow::Result<()> {
    if let Some(dir) = pin.parent() {
        ensure_bpffs(dir)?;
        fs::create_dir_all(dir)?;
    }
    let mut bpf = Ebpf::load(PASS_OBJ).context("loading the pass-through program")?;
    let prog: &mut Xdp = bpf
        .program_mut(progs::PASS)
        .ok_or_else(|| anyhow!("program {} missing", progs::PASS))?
        .try_into()?;
    prog.load()?;
    let id = prog
        .attach(iface, XdpMode::Driver)
        .with_context(|| format!("attaching XDP to {iface}"))?;
    let link = FdLink::try_from(prog.take_link(id)?)?;
    link.pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_allocate_release_and_merge() {
        let mut a = RegionAlloc::new(101);
        let r1 = a.alloc(40).unwrap();
        let r2 = a.alloc(40).unwrap();
        assert_eq!((r1.off, r2.off), (1, 41));
        assert!(a.alloc(30).is_none());
        a.release(r1);
        assert_eq!(a.alloc(30).unwrap().off, 1);
        a.release(Region { off: 1, len: 30 });
        a.release(r2);
        assert_eq!(a.free, vec![Region { off: 1, len: 100 }]);
    }

    #[test]
    fn regions_take_splits_free_space() {
        let mut a = RegionAlloc::new(101);
        assert!(a.take(Region { off: 10, len: 5 }));
        assert!(!a.take(Region { off: 12, len: 5 }));
        assert_eq!(
            a.free,
            vec![Region { off: 1, len: 9 }, Region { off: 15, len: 86 }]
        );
    }

    #[test]
    fn every_pinned_map_has_a_known_layout() {
        for name in maps::ALL {
            let (k, v) = expected_layout(name);
            assert!(k > 0 && v > 0, "{name}");
        }
    }

    #[test]
    fn ids_skip_zero() {
        let mut p = IdPool::new(3);
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), Some(2));
        assert_eq!(p.alloc(), None);
        p.release(1);
        assert_eq!(p.alloc(), Some(1));
    }

    #[test]
    fn scheduler_codes_round_trip() {
        for s in Scheduler::ALL {
            assert_eq!(sched_of(sched_code(s)), Some(s));
        }
        assert_eq!(sched_code(Scheduler::Rr), lb_common::sched::RR);
        assert_eq!(sched_code(Scheduler::Mh), lb_common::sched::MH);
    }
}
