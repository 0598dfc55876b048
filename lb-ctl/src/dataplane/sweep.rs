//! The sweep in bounded steps: expiry and the exact per-backend counts, without ever holding a
//! CPU for long.
//!
//! One in-kernel walk of the whole table (`bpf_for_each_map_elem`) took 237 ms at 1M entries,
//! with bottom halves off on its CPU, and cannot stop and resume. Here the daemon walks the
//! tables itself with `BPF_MAP_LOOKUP_BATCH` (one bucket lock at a time, resumable by its
//! cursor), counts what is plainly alive, and runs `lb_sweep` only on what needs a decision
//! against the live entry: keys that look expired (at most `size::SWEEP_KEYS` per run,
//! re-checked in the kernel so a packet that arrived since keeps its connection), templates to
//! re-arm or expire, and ranges of backends to publish. Every system call is sized by the cost
//! the calls before it measured (`Chunker`) to do about `CALL_TARGET` of work; their longest is
//! reported, with the pass's CPU time.
//!
//! What no size can bound: a batch read goes through empty hash buckets without stopping until
//! it has an entry to return (under `rcu_read_lock` only, interrupts and softirqs on), so a
//! read of a nearly empty table goes through most of its bucket array in one call (~1–2 ns a
//! bucket here: 1.3 ms at 1M buckets, 31 ms at 16M). `get_next_key` and the map iterator walk
//! empty buckets the same way. So the large hash tables keep filler entries (`filler`), one
//! per 4,096 buckets at random places, that no packet can match: the pass skips them (no
//! count, no expiry) and puts missing ones back while the table is sparse.
//!
//! A `Sweeper` holds its own handles on the pinned maps and its own descriptor of `lb_sweep`,
//! so the daemon runs it on a thread of its own (`runtime::SweepThread`), apart from the loop
//! that answers requests: neither waits for the other. Its pace (`Pace`) spreads a pass over
//! the expiry period and caps its share of a CPU.

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use aya::{
    maps::MapData,
    programs::{ProgramFd, Xdp},
};
use lb_common::{
    Backend, Conn, EmbryoSlot, FlowKey, PersistKey, PersistVal, RsConns, Service, Settings,
    SweepOp, SweepStats, TIMEOUT_UDP, conn_flags, progs, size, svc_flags, sweep_op, sweep_result,
    tcp_state,
};

use super::*;

const NS: u64 = 1_000_000_000;
/// As `lb_sweep`'s: a NAT reply entry whose connection is gone is kept this long.
const ORPHAN_REPLY_NS: u64 = 10 * NS;
/// Entries per `BPF_MAP_LOOKUP_BATCH` of a connection table before they were sized by their
/// cost (`Chunker`): reading a full table costs about 440 ns an entry at 1M and 1.4 µs at 4M
/// (cache and TLB misses, a locked bucket each), so a fixed 4,096 took up to 2 and 6 ms, and
/// a fixed 256 spent most of a call's budget at 4M while paying a system call per 256
/// entries at 1M. Kept for benches that compare.
pub const SWEEP_CHUNK: u32 = 256;
/// Entries the first read of a table asks for, before any cost is known: few, because in a
/// sparse table each entry costs the empty buckets before it too (256 entries of a 16M table
/// holding one entry per 4,096 buckets went through a million buckets, 1 ms). The size
/// doubles call by call to what the cost allows, and the daemon's sweeper keeps it from pass
/// to pass.
pub const FIRST_READ: u32 = 32;
/// The most entries one batch read of a table asks for (its buffers are this large).
pub const MAX_SWEEP_CHUNK: u32 = 4096;
/// The work one system call of a pass aims at: a quarter of the 1 ms that no single call may
/// exceed, which leaves room for what the calls' costs cannot be predicted from (an interrupt
/// or softirq that lands in one is charged to it: no `CONFIG_IRQ_TIME_ACCOUNTING` here), and
/// few enough calls that their fixed cost (entry, `copy_to_user`, a context switch back) stays
/// small beside the entries' own.
pub const CALL_TARGET: Duration = Duration::from_micros(250);
/// Keys the first `lb_sweep` run of a sweeper takes, before their cost is known: expiring one
/// touches its bucket, its element and its LRU neighbours, a few µs each in a 16M table here
/// (1.9 GiB of entries: a TLB and cache miss per touch), so 256 keys took up to 2.5 ms there
/// and about 0.3 ms at 1M. The size doubles run by run to what the cost allows.
const FIRST_KEYS: u32 = 32;
/// Backends per `PUBLISH` run (about 20 ns each in the kernel: 8,192 stay near 0.16 ms).
const PUBLISH_CHUNK: u32 = 8192;
/// Array elements per batch read or write at first (the kernel copies array elements one by
/// one, about 0.3 µs each here), and at most.
const ARRAY_CHUNK: u32 = 512;
const MAX_ARRAY_CHUNK: u32 = 4096;

/// How many elements the next batch call of one kind should take so that it does about
/// `CALL_TARGET` of work: the cost per element is learnt from the calls so far (CPU time
/// across each over the elements it handled, which for a sparse hash table includes the empty
/// buckets scanned on the way), and the size follows it between `min` and `max`.
///
/// The estimate rises quickly (half way to a dearer call at once) and falls slowly (an
/// eighth of the way), and a size at most doubles from one call to the next: a table whose cost
/// per entry jumps (a colder part, a denser part) overshoots for a call or two at most, while
/// one call inflated by an interrupt only shrinks the next few calls a little. Too small a
/// call costs CPU (a system call's fixed cost on fewer entries), too large one breaks the
/// bound; the bound matters more.
#[derive(Clone, Debug)]
pub struct Chunker {
    size: u32,
    min: u32,
    max: u32,
    /// Estimated CPU time per element, in ns (none before the first call).
    per_ns: Option<f64>,
    target_ns: f64,
}

impl Chunker {
    pub fn new(start: u32, min: u32, max: u32) -> Self {
        Self::with_target(start, min, max, CALL_TARGET)
    }

    pub fn with_target(start: u32, min: u32, max: u32, target: Duration) -> Self {
        assert!(
            0 < min && min <= start && start <= max,
            "{min} ≤ {start} ≤ {max}"
        );
        Self {
            size: start,
            min,
            max,
            per_ns: None,
            target_ns: target.as_nanos() as f64,
        }
    }

    /// The size of the next call.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The cost per element learnt so far.
    pub fn per_element(&self) -> Option<Duration> {
        self.per_ns.map(|p| Duration::from_nanos(p as u64))
    }

    /// A call handled `n` elements in `took`: learn from it and size the next.
    pub fn observe(&mut self, n: usize, took: Duration) {
        // A call of a few elements (a map's last, short chunk) says more about the system
        // call's fixed cost than about the elements': it would shrink the next pass's start.
        if n < (self.min as usize).max(8) {
            return;
        }
        let cost = took.as_nanos() as f64 / n as f64;
        let per = match self.per_ns {
            None => cost,
            Some(p) if cost > p => p + (cost - p) / 2.0,
            Some(p) => p + (cost - p) / 8.0,
        }
        .max(1.0);
        self.per_ns = Some(per);
        let want = (self.target_ns / per) as u64;
        self.size = want
            .min(u64::from(self.size) * 2)
            .clamp(u64::from(self.min), u64::from(self.max)) as u32;
    }
}

/// The chunkers of one sweeper, kept from pass to pass (each pass starts at the sizes the
/// last one ended with).
#[derive(Clone, Debug)]
struct Chunks {
    conns: Chunker,
    embryo: Chunker,
    templates: Chunker,
    /// Per-backend array reads and writes (one element at a time in the kernel).
    arrays: Chunker,
    writes: Chunker,
    /// Keys per `lb_sweep` run (the run that expires them deletes each under its bucket's
    /// lock, with bottom halves off).
    keys: Chunker,
}

impl Default for Chunks {
    fn default() -> Self {
        let table = || Chunker::new(FIRST_READ, 16, MAX_SWEEP_CHUNK);
        Self {
            conns: table(),
            embryo: table(),
            templates: table(),
            arrays: Chunker::new(ARRAY_CHUNK, 64, MAX_ARRAY_CHUNK),
            writes: Chunker::new(ARRAY_CHUNK, 64, MAX_ARRAY_CHUNK),
            keys: Chunker::new(FIRST_KEYS, 16, size::SWEEP_KEYS),
        }
    }
}

/// Interrupts and softirqs handled so far by one CPU: the sum of its column in
/// `/proc/interrupts` and `/proc/softirqs`, and of those its local timer interrupts (`LOC`).
/// Read before and after a call (outside its timing) when a pass attributes its outliers: a
/// call during which the count moved had an interrupt or softirq land in it, whose time this
/// kernel charges to the call's thread. The timer ticks every 1/HZ while a CPU runs a task, so
/// a long call with far fewer ticks than its CPU time spans was not running guest code for
/// most of it (its virtual CPU stalled in the host, which the guest cannot see).
fn irqs_of(cpu: usize, buf: &mut String) -> (u64, u64) {
    use std::io::Read;
    let (mut total, mut ticks) = (0u64, 0u64);
    for path in ["/proc/interrupts", "/proc/softirqs"] {
        buf.clear();
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        if f.read_to_string(buf).is_err() {
            continue;
        }
        let mut lines = buf.lines();
        let cpus = lines.next().map_or(0, |h| h.split_whitespace().count());
        for l in lines {
            // "NAME:  c0 c1 … [description]"; rows with fewer counts (ERR, MIS) are not
            // per CPU.
            let counts: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(cpus)
                .map_while(|w| w.parse().ok())
                .collect();
            if counts.len() == cpus {
                let n = counts.get(cpu).copied().unwrap_or(0);
                total += n;
                if l.trim_start().starts_with("LOC:") {
                    ticks = n;
                }
            }
        }
    }
    (total, ticks)
}

fn current_cpu() -> i32 {
    // SAFETY: no arguments; returns the CPU or -1.
    unsafe { libc::sched_getcpu() }
}

/// What one sweep pass found and what it cost.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Entries of the connection table (NAT reply entries included) and of the embryonic one.
    pub entries: usize,
    pub embryonic: usize,
    pub expired: usize,
    pub embryonic_expired: usize,
    pub templates: usize,
    pub templates_expired: usize,
    /// Filler entries (`lb_common::filler`) the pass found in the connection and template
    /// tables (never counted in `entries` or `templates`, never expired), how many each table
    /// should hold, and how many the pass put back.
    pub fillers: usize,
    pub template_fillers: usize,
    pub fillers_expected: usize,
    pub template_fillers_expected: usize,
    pub fillers_added: usize,
    /// System calls the pass made (batch reads and writes, `lb_sweep` runs, filler inserts).
    pub calls: usize,
    /// `lb_sweep` runs among them.
    pub runs: usize,
    /// Batch reads of the connection tables (each as many entries as `Chunker` said).
    pub conn_batches: usize,
    /// Connection keys handed to `lb_sweep` to decide on, and the runs that took them (each
    /// at most `size::SWEEP_KEYS`).
    pub keys_checked: usize,
    pub key_runs: usize,
    /// The longest single call, as this thread's CPU time across it (its time in the kernel,
    /// without time the thread spent preempted), and the longest of each kind.
    pub longest_call: Duration,
    pub longest_read: Duration,
    pub longest_write: Duration,
    /// The longest single call in wall time (with any preemption: an upper bound).
    pub longest_call_wall: Duration,
    /// The 99th and 99.9th percentile of the calls' CPU time (the longest call is mostly
    /// whatever interrupt or steal landed in it on a shared machine).
    pub p99_call: Duration,
    pub p999_call: Duration,
    times: Vec<Duration>,
    /// The longest `lb_sweep` run as the kernel reports it.
    pub longest_run: Duration,
    /// Wall time and this thread's CPU time (user and kernel) for the whole pass, and the
    /// part of that CPU time spent in user space (the rest is the kernel's: batch copies,
    /// bucket locks, `lb_sweep` runs).
    pub wall: Duration,
    pub cpu: Duration,
    pub cpu_user: Duration,
    /// Time the pass slept to keep to its pace (part of `wall`).
    pub slept: Duration,
    /// Since the previous pass started (zero for a pass run on its own): expiry's CPU time
    /// per second is `cpu / interval`.
    pub interval: Duration,
    /// The sizes the connection-table reads took (`Chunker`), the most hash buckets one read
    /// of `CONNS` went through (empty ones included: what a sparse table costs; `EMBRYO` is an
    /// array, read slot by slot), and the cost per entry learnt by the end of the pass.
    pub smallest_read: usize,
    pub largest_read: usize,
    pub most_buckets_read: u64,
    pub read_cost: Duration,
    /// The most keys one `lb_sweep` run took.
    pub largest_key_run: usize,
    /// Whether the pass kept to a pace (the daemon's), or ran at once.
    pub paced: bool,
    /// Only when the pass attributes its outliers (`Sweeper::attribute_interrupts`): calls
    /// during which an interrupt or softirq landed on their CPU (or the thread changed CPU),
    /// and the longest call of each kind.
    pub attributed: bool,
    pub noisy_calls: usize,
    pub longest_quiet_call: Duration,
    pub longest_noisy_call: Duration,
    /// What the longest quiet call was ("read", "write", "run", "fill"), and how many interrupts and
    /// softirqs landed in the longest noisy one.
    pub longest_quiet_kind: &'static str,
    pub longest_noisy_irqs: u64,
    /// Calls during which the CPU's steal time (`/proc/stat`, in 10 ms ticks of the time the
    /// hypervisor ran something else on it) moved: counted as noisy too.
    pub stolen_calls: usize,
    /// Every call that took 1 ms or more, with what landed in it.
    pub slow_calls: Vec<SlowCall>,
    /// This thread's CPU time spent reading `/proc` for that, left out of `cpu` and of the
    /// pace's CPU share.
    pub probe_cpu: Duration,
    probe: String,
}

/// A call of a pass that took 1 ms or more of CPU time (only when the pass attributes its
/// outliers), with what landed on its CPU while it ran.
#[derive(Clone, Debug, Default)]
pub struct SlowCall {
    pub kind: &'static str,
    pub took: Duration,
    pub wall: Duration,
    /// Interrupts and softirqs on its CPU, of which local timer ticks (one every 1/HZ while
    /// the CPU runs: 4 ms here), and steal ticks (10 ms each) of that CPU.
    pub irqs: u64,
    pub timer_ticks: u64,
    pub steal_ticks: u64,
    /// Whether the thread changed CPU (then the counts are of two CPUs and mean little).
    pub moved: bool,
}

/// The steal time of one CPU so far, in `USER_HZ` ticks (`/proc/stat`, the eighth figure of
/// its `cpuN` line): time its virtual CPU was not running on the host. The kernel keeps it in
/// ns and prints it rounded down, so a difference of one tick is about 10 ms, more or less.
fn steal_of(cpu: usize, buf: &mut String) -> u64 {
    use std::io::Read;
    buf.clear();
    let Ok(mut f) = std::fs::File::open("/proc/stat") else {
        return 0;
    };
    if f.read_to_string(buf).is_err() {
        return 0;
    }
    let name = format!("cpu{cpu}");
    buf.lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

impl SweepReport {
    fn timed<T>(&mut self, kind: &'static str, f: impl FnOnce() -> T) -> (T, Duration) {
        // Counted outside the timed region: reading them costs more than many calls.
        let p0 = self.attributed.then(thread_cpu);
        let before = self.attributed.then(|| {
            let cpu = current_cpu();
            (
                cpu,
                irqs_of(cpu as usize, &mut self.probe),
                steal_of(cpu as usize, &mut self.probe),
            )
        });
        if let Some(p0) = p0 {
            self.probe_cpu += thread_cpu().saturating_sub(p0);
        }
        let (t, cpu) = (Instant::now(), thread_cpu());
        let r = f();
        let took = thread_cpu().saturating_sub(cpu);
        let wall = t.elapsed();
        if let Some((cpu0, n0, s0)) = before {
            let p1 = thread_cpu();
            let cpu1 = current_cpu();
            let (n1, t1) = irqs_of(cpu1 as usize, &mut self.probe);
            let (n0, t0) = n0;
            let s1 = steal_of(cpu1 as usize, &mut self.probe);
            if s1 != s0 {
                self.stolen_calls += 1;
            }
            if took >= Duration::from_millis(1) {
                self.slow_calls.push(SlowCall {
                    kind,
                    took,
                    wall,
                    irqs: n1.wrapping_sub(n0),
                    timer_ticks: t1.wrapping_sub(t0),
                    steal_ticks: s1.wrapping_sub(s0),
                    moved: cpu1 != cpu0,
                });
            }
            if cpu1 != cpu0 || n1 != n0 || s1 != s0 {
                self.noisy_calls += 1;
                if took > self.longest_noisy_call {
                    self.longest_noisy_call = took;
                    self.longest_noisy_irqs = n1.wrapping_sub(n0);
                }
            } else if took > self.longest_quiet_call {
                self.longest_quiet_call = took;
                self.longest_quiet_kind = kind;
            }
            self.probe_cpu += thread_cpu().saturating_sub(p1);
        }
        self.longest_call_wall = self.longest_call_wall.max(wall);
        self.longest_call = self.longest_call.max(took);
        self.times.push(took);
        self.calls += 1;
        (r, took)
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// This thread's user-space CPU time.
fn thread_cpu_user() -> Duration {
    // SAFETY: a zeroed rusage to write into.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is this thread.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    Duration::new(ru.ru_utime.tv_sec as u64, ru.ru_utime.tv_usec as u32 * 1000)
}

/// Reads `map` from the start (its first `limit` elements at most), as many elements per
/// `BPF_MAP_LOOKUP_BATCH` as `chunk` says, handing each chunk to `f` before reading the next
/// (the cursor makes the walk resumable between calls). `table`: a connection table, whose
/// reads the report describes, and where to note the most buckets one of them went through.
fn walk<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &MapData,
    chunk: &mut Chunker,
    limit: usize,
    table: Option<fn(&mut SweepReport) -> &mut u64>,
    rep: &mut SweepReport,
    mut f: impl FnMut(&[K], &[V], &mut SweepReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let cap = (chunk.max as usize).min(limit.max(1));
    let mut keys = vec![K::default(); cap];
    let mut values = vec![V::default(); cap];
    let mut cursor = Cursor::default();
    let mut read = 0usize;
    // A hash map has a power of two of buckets, its size rounded up (`htab_map_alloc`): where
    // a read that reaches the end stopped.
    let buckets = match table {
        Some(_) => u64::from(map.info()?.max_entries()).next_power_of_two(),
        None => 0,
    };
    // More than the chunk asks, when one bucket holds more entries than that.
    let mut at_least = 0usize;
    loop {
        let ask = (chunk.size() as usize)
            .min(limit - read)
            .max(at_least)
            .min(cap) as u32;
        let at = cursor.position();
        // SAFETY: the buffers hold `cap` ≥ `ask` keys and values of the map's sizes (checked
        // at load).
        let (r, took) = rep.timed("read", || unsafe {
            lookup_chunk(map, &mut cursor, &mut keys, &mut values, ask)
        });
        rep.longest_read = rep.longest_read.max(took);
        let (n, end) = r?;
        if n == 0 && !end {
            // A bucket longer than `ask` (a long chain in a full table): read it whole.
            if ask as usize >= cap {
                bail!("a hash bucket holds more than {cap} entries: cannot read it");
            }
            at_least = (ask as usize * 2).max(1);
            continue;
        }
        at_least = 0;
        chunk.observe(n, took);
        if let Some(most) = table {
            rep.smallest_read = if rep.smallest_read == 0 {
                ask as usize
            } else {
                rep.smallest_read.min(ask as usize)
            };
            rep.largest_read = rep.largest_read.max(ask as usize);
            let to = if end { buckets } else { cursor.position() };
            let most = most(rep);
            *most = (*most).max(to.saturating_sub(at));
        }
        f(&keys[..n], &values[..n], rep)?;
        read += n;
        if end || read >= limit {
            return Ok(());
        }
    }
}

/// Writes `values` into array `map` from slot `off`, as many per `BPF_MAP_UPDATE_BATCH` as
/// `chunk` says.
fn write<V: aya::Pod>(
    map: &MapData,
    off: u32,
    values: &[V],
    chunk: &mut Chunker,
    rep: &mut SweepReport,
) -> anyhow::Result<()> {
    let keys: Vec<u32> = (off..off + values.len() as u32).collect();
    let mut done = 0usize;
    while done < values.len() {
        let n = (values.len() - done).min(chunk.size() as usize);
        let (r, took) = rep.timed("write", || {
            update_chunk(map, &keys[done..done + n], &values[done..done + n])
        });
        rep.longest_write = rep.longest_write.max(took);
        let wrote = r?;
        chunk.observe(wrote, took);
        done += wrote;
    }
    Ok(())
}

/// Per-backend facts the walk needs, from the maps the data path reads.
struct View {
    backends: Vec<Backend>,
    services: Vec<Service>,
    timeouts: [u32; lb_common::TIMEOUTS_LEN as usize],
    now: u64,
}

impl View {
    fn timeout_ns(&self, k: &FlowKey, c: &Conn) -> u64 {
        let idx = if k.proto == lb_common::proto::TCP {
            if (c.state as usize) < tcp_state::COUNT {
                c.state as usize
            } else {
                tcp_state::CLOSE as usize
            }
        } else {
            TIMEOUT_UDP as usize
        };
        self.timeouts[idx] as u64 * NS
    }

    /// The template a live connection of `backend` from `client` keeps alive, if its service
    /// is persistent.
    fn template(&self, client: lb_common::Addr, backend: u32) -> Option<(PersistKey, u32)> {
        let be = self.backends.get(backend as usize)?;
        let svc = self.services.get(be.svc_id as usize)?;
        (svc.flags & svc_flags::PERSISTENT != 0).then_some((
            PersistKey {
                svc_id: svc.id,
                client: svc.persist_client(client),
            },
            backend,
        ))
    }
}

/// The pass's running state.
struct Pass<'a> {
    view: View,
    tally: Vec<RsConns>,
    /// Templates that control a live connection, with that connection's backend.
    live: HashSet<(PersistKey, u32)>,
    /// Keys waiting for `lb_sweep`, with the backend of each.
    pending: Vec<(FlowKey, u32)>,
    prog: &'a ProgramFd,
    keys: &'a MapData,
    /// Keeps the pass to its pace, when it has one (the daemon's thread); entries walked so
    /// far, for it.
    pace: Option<&'a Pace<'a>>,
    walked: usize,
    /// How large each kind of call is.
    chunks: Chunks,
    /// The highest backend id a connection or template named (the next pass's bound, if it
    /// lies beyond this one's).
    top: u32,
    /// The fillers seen in the connection and template tables.
    conn_fillers: filler::Presence,
    persist_fillers: filler::Presence,
}

impl Pass<'_> {
    fn count(&mut self, k: &FlowKey, backend: u32, result: u16) {
        self.top = self.top.max(backend.min(size::MAX_BACKENDS - 1));
        let Some(t) = self.tally.get_mut(backend as usize) else {
            return;
        };
        match result {
            sweep_result::ACTIVE => t.active += 1,
            sweep_result::INACTIVE => t.inactive += 1,
            _ => return,
        }
        if let Some(l) = self.view.template(k.saddr, backend) {
            self.live.insert(l);
        }
    }

    /// Runs `lb_sweep` with `op` over the keys in `SWEEP_KEYS[..count]` (or, for `PUBLISH`,
    /// the backends `[start, start + count)`).
    fn run(
        &self,
        op: u32,
        count: u32,
        start: u32,
        rep: &mut SweepReport,
    ) -> anyhow::Result<Duration> {
        let cmd = SweepOp {
            op,
            count,
            start,
            _pad: 0,
        };
        // The command, then zeros: the kernel wants at least an Ethernet header.
        let mut frame = [0u8; 64];
        // SAFETY: `SweepOp` is plain integers (Pod), 16 bytes.
        let raw = unsafe {
            std::slice::from_raw_parts(&cmd as *const SweepOp as *const u8, size_of::<SweepOp>())
        };
        frame[..raw.len()].copy_from_slice(raw);
        let (r, took) = rep.timed("run", || test_run(self.prog, &frame));
        let (retval, duration) = r.context("running the sweep step")?;
        rep.runs += 1;
        rep.longest_run = rep.longest_run.max(duration);
        // XDP_PASS: the step ran to its end.
        const XDP_PASS: u32 = 2;
        if retval != XDP_PASS {
            bail!("the sweep step failed (verdict {retval})");
        }
        Ok(took)
    }

    /// After a chunk of `n` entries: keeps to the pace, and says how far the pass is.
    fn paced(&mut self, n: usize, rep: &mut SweepReport) -> anyhow::Result<()> {
        self.walked += n;
        if let Some(p) = self.pace {
            rep.slept += p.step(self.walked, rep.probe_cpu)?;
        }
        Ok(())
    }

    /// Hands the pending keys to `lb_sweep` (`op`) and reads back its verdict on each.
    fn flush(&mut self, op: u32, rep: &mut SweepReport) -> anyhow::Result<Vec<(FlowKey, u32)>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<FlowKey> = self.pending.iter().map(|(k, _)| *k).collect();
        for k in &mut keys {
            k._pad1 = sweep_result::UNSEEN;
        }
        // At most `size::SWEEP_KEYS` (256) keys, copied one by one: well inside a call's
        // budget, written and read back whole.
        let n = keys.len() as u32;
        write(self.keys, 0, &keys, &mut Chunker::new(n, n, n), rep)?;
        let took = self.run(op, n, 0, rep)?;
        self.chunks.keys.observe(keys.len(), took);
        rep.largest_key_run = rep.largest_key_run.max(keys.len());
        if op != sweep_op::TEMPLATES {
            rep.keys_checked += keys.len();
            rep.key_runs += 1;
        }
        let mut back = Vec::with_capacity(keys.len());
        let mut whole = Chunker::new(n, n, n);
        walk::<u32, FlowKey>(self.keys, &mut whole, keys.len(), None, rep, |_, v, _| {
            back.extend_from_slice(v);
            Ok(())
        })?;
        let out = self
            .pending
            .drain(..)
            .zip(back)
            .map(|((_, b), k)| (k, b))
            .collect();
        Ok(out)
    }

    /// Walks one connection table (`CONNS` or `EMBRYO`).
    fn conns(
        &mut self,
        map: &MapData,
        embryo: bool,
        rep: &mut SweepReport,
    ) -> anyhow::Result<(usize, usize)> {
        let op = if embryo {
            sweep_op::EMBRYO
        } else {
            sweep_op::CONNS
        };
        let (mut entries, mut expired) = (0usize, 0usize);
        let settle = |p: &mut Pass, rep: &mut SweepReport, expired: &mut usize| {
            for (k, b) in p.flush(op, rep)? {
                match k._pad1 {
                    sweep_result::GONE => *expired += 1,
                    sweep_result::UNSEEN => bail!("the sweep step skipped a key"),
                    r => p.count(&k, b, r),
                }
            }
            anyhow::Ok(())
        };
        let mut chunk = if embryo {
            self.chunks.embryo.clone()
        } else {
            self.chunks.conns.clone()
        };
        let mut visit = |keys: &[FlowKey], values: &[Conn], rep: &mut SweepReport| {
            rep.conn_batches += 1;
            self.paced(keys.len(), rep)?;
            for (k, c) in keys.iter().zip(values) {
                if let Some(i) = lb_common::filler::conn_index(k) {
                    // Not a connection: no count, no expiry (its last activity is 0).
                    self.conn_fillers.note(i);
                    continue;
                }
                entries += 1;
                let idle = self.view.now.saturating_sub(c.last_seen_ns);
                let doubtful = if c.flags & conn_flags::REPLY != 0 {
                    idle >= ORPHAN_REPLY_NS
                } else {
                    c.backend >= size::MAX_BACKENDS || idle >= self.view.timeout_ns(k, c)
                };
                if doubtful {
                    // Expired by its own last packet; the kernel decides against the live
                    // entry (and, for NAT, its reply entry's last packet).
                    self.pending.push((*k, c.backend));
                    if self.pending.len() >= self.chunks.keys.size() as usize {
                        settle(self, rep, &mut expired)?;
                    }
                } else if c.flags & conn_flags::REPLY == 0 {
                    let active = k.proto == lb_common::proto::TCP
                        && tcp_state::ACTIVE[(c.state as usize) % tcp_state::COUNT];
                    let r = if active {
                        sweep_result::ACTIVE
                    } else {
                        sweep_result::INACTIVE
                    };
                    self.count(k, c.backend, r);
                }
            }
            Ok(())
        };
        if embryo {
            // An array of slots: the intact ones are the embryos (see `lb_common::embryo`). An
            // array read costs the same per slot whatever it holds: no bucket scan to count.
            let mask = map.info()?.max_entries().saturating_sub(1);
            walk::<u32, EmbryoSlot>(map, &mut chunk, usize::MAX, None, rep, |idx, slots, rep| {
                let (keys, values): (Vec<FlowKey>, Vec<Conn>) = idx
                    .iter()
                    .zip(slots)
                    .filter(|(i, s)| lb_common::embryo::intact(s, **i, mask))
                    .map(|(_, s)| (s.key, s.conn))
                    .unzip();
                visit(&keys, &values, rep)
            })?;
        } else {
            walk::<FlowKey, Conn>(
                map,
                &mut chunk,
                usize::MAX,
                Some(|r| &mut r.most_buckets_read),
                rep,
                visit,
            )?;
        }
        settle(self, rep, &mut expired)?;
        rep.read_cost = rep.read_cost.max(chunk.per_element().unwrap_or_default());
        if embryo {
            self.chunks.embryo = chunk;
        } else {
            self.chunks.conns = chunk;
        }
        Ok((entries, expired))
    }

    /// Walks the persistence templates.
    fn templates(
        &mut self,
        map: &MapData,
        rep: &mut SweepReport,
    ) -> anyhow::Result<(usize, usize)> {
        let (mut kept, mut expired) = (0usize, 0usize);
        let settle =
            |p: &mut Pass, rep: &mut SweepReport, kept: &mut usize, expired: &mut usize| {
                for (k, b) in p.flush(sweep_op::TEMPLATES, rep)? {
                    match k._pad1 {
                        sweep_result::GONE => *expired += 1,
                        sweep_result::UNSEEN => bail!("the sweep step skipped a template"),
                        _ => {
                            *kept += 1;
                            p.top = p.top.max(b.min(size::MAX_BACKENDS - 1));
                            if let Some(t) = p.tally.get_mut(b as usize) {
                                t.persist += 1;
                            }
                        }
                    }
                }
                anyhow::Ok(())
            };
        let mut chunk = self.chunks.templates.clone();
        walk::<PersistKey, PersistVal>(
            map,
            &mut chunk,
            usize::MAX,
            None,
            rep,
            |keys, values, rep| {
                self.paced(keys.len(), rep)?;
                for (k, v) in keys.iter().zip(values) {
                    if let Some(i) = lb_common::filler::persist_index(k) {
                        self.persist_fillers.note(i);
                        continue;
                    }
                    let live = self.live.contains(&(*k, v.backend));
                    let timeout = self
                        .view
                        .services
                        .get(k.svc_id as usize)
                        .filter(|s| s.id == k.svc_id && s.flags & svc_flags::PERSISTENT != 0)
                        .map_or(0, |s| s.persist_timeout as u64 * NS);
                    let idle = self.view.now.saturating_sub(v.last_seen_ns);
                    if live || idle >= timeout {
                        // Re-armed (it controls a connection) or expired, in the kernel.
                        let mut key = FlowKey::of(
                            lb_common::Addr {
                                w: [k.svc_id, 0, 0, 0],
                            },
                            k.client,
                            v.backend as u16,
                            (v.backend >> 16) as u16,
                            live as u8,
                        );
                        key._pad1 = 0;
                        self.pending.push((key, v.backend));
                        if self.pending.len() >= self.chunks.keys.size() as usize {
                            settle(self, rep, &mut kept, &mut expired)?;
                        }
                    } else {
                        kept += 1;
                        self.top = self.top.max(v.backend.min(size::MAX_BACKENDS - 1));
                        if let Some(t) = self.tally.get_mut(v.backend as usize) {
                            t.persist += 1;
                        }
                    }
                }
                Ok(())
            },
        )?;
        settle(self, rep, &mut kept, &mut expired)?;
        self.chunks.templates = chunk;
        Ok((kept, expired))
    }
}

/// Puts the fillers `seen` lacks back into `map`, if its `live` entries leave room for them
/// without evicting any (`filler::may_add`); each insert is a call of its own (an LRU hash
/// update: a few µs). Returns how many went in.
fn top_up<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    seen: &filler::Presence,
    live: usize,
    key: fn(u32) -> K,
    value: &V,
    rep: &mut SweepReport,
) -> anyhow::Result<usize> {
    if seen.count >= seen.expected() || !filler::may_add(map, live)? {
        return Ok(0);
    }
    let mut n = 0;
    for i in seen.missing() {
        let (r, _) = rep.timed("fill", || filler::insert(map, &key(i), value));
        n += r? as usize;
    }
    Ok(n)
}

/// `BPF_PROG_TEST_RUN` of the sweep program on `frame`, once: its verdict and the time the
/// kernel reports for the run. (aya's `TestRun` needs the `Xdp` program object, which the
/// daemon's loop owns; the sweep thread holds only a descriptor.)
fn test_run(prog: &ProgramFd, frame: &[u8]) -> anyhow::Result<(u32, Duration)> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    /// The `test` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = Attr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..Attr::default()
    };
    // SAFETY: `frame` outlives the call; no output buffer is given (`data_out` is null).
    unsafe { crate::bpf::sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }
        .map_err(|e| anyhow!("BPF_PROG_TEST_RUN: {e}"))?;
    Ok((attr.retval, Duration::from_nanos(attr.duration as u64)))
}

/// Naps shorter than this are not taken: every nap is a context switch, after which the
/// walk finds the caches and TLB full of other work (with 1 ms naps a paced pass over 1M
/// entries cost 520 ms of CPU where an unpaced one cost 383 ms).
const MIN_NAP: Duration = Duration::from_millis(10);

/// How fast a pass may go: at most `rate` entries a second, so that a pass over a million
/// entries spreads over the second between the daemon's passes instead of running in one
/// burst, and at most `share` of one CPU (user and kernel time of the sweeping thread), so
/// that a table too large to walk in a second takes longer passes rather than more CPU.
pub struct Pace<'a> {
    rate: f64,
    share: f64,
    started: Instant,
    cpu0: Duration,
    /// Set when the pass should stop where it is (the daemon is stopping).
    stop: &'a AtomicBool,
    /// Entries walked so far in this pass, for `lb-ctl status`.
    walked: &'a AtomicU64,
}

impl<'a> Pace<'a> {
    pub fn new(rate: f64, share: f64, stop: &'a AtomicBool, walked: &'a AtomicU64) -> Self {
        walked.store(0, Ordering::Relaxed);
        Self {
            rate,
            share,
            started: Instant::now(),
            cpu0: thread_cpu(),
            stop,
            walked,
        }
    }

    /// Called after each chunk with the entries walked so far: sleeps while the pass is
    /// ahead of its pace; returns how long it slept.
    fn step(&self, walked: usize, not_counted: Duration) -> anyhow::Result<Duration> {
        self.walked.store(walked as u64, Ordering::Relaxed);
        if self.stop.load(Ordering::Relaxed) {
            bail!("the sweep was stopped part way");
        }
        let elapsed = self.started.elapsed();
        let by_rate = Duration::from_secs_f64(walked as f64 / self.rate);
        let cpu = thread_cpu()
            .saturating_sub(self.cpu0)
            .saturating_sub(not_counted);
        let by_cpu = Duration::from_secs_f64(cpu.as_secs_f64() / self.share);
        let due = by_rate.max(by_cpu);
        if due < elapsed + MIN_NAP {
            return Ok(Duration::ZERO);
        }
        // Parked, not slept: stopping the thread unparks it.
        let t = Instant::now();
        std::thread::park_timeout(due - elapsed);
        Ok(t.elapsed())
    }
}

/// One pass at a time per process: passes share `LB_SWEEP_KEYS` and `LB_RS_TALLY`.
static ONE_PASS: Mutex<()> = Mutex::new(());

/// Everything a sweep pass reads and writes, through its own handles on the pinned maps and
/// its own descriptor of `lb_sweep`: it can run on any thread, apart from the `Dataplane`.
pub struct Sweeper {
    conns: MapData,
    embryo: MapData,
    persist: MapData,
    backends: MapData,
    svc_info: MapData,
    timeouts: MapData,
    rs_new: MapData,
    rs_tally: MapData,
    keys: MapData,
    stats: Array<MapData, SweepStats>,
    settings: Array<MapData, Settings>,
    prog: ProgramFd,
    /// How large each kind of call is, learnt pass after pass.
    chunks: Chunks,
    /// Whether passes attribute their outliers (`attribute_interrupts`).
    attribute: bool,
    /// Backend ids below this are all the pass reads, counts and publishes (see
    /// `Dataplane::backend_id_bound`).
    bound: Arc<AtomicU32>,
}

impl Dataplane {
    /// A `Sweeper` on this data path's maps, with handles of its own (duplicates of this
    /// side's descriptors: the same maps, whatever happens to the pins).
    pub fn sweeper(&self) -> anyhow::Result<Sweeper> {
        fn dup(m: &MapData) -> anyhow::Result<MapData> {
            let fd = m
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating a map descriptor for the sweep")?;
            Ok(MapData::from_fd(fd)?)
        }
        let m = &self.maps;
        let prog: &Xdp = self
            .bpf
            .program(progs::SWEEP)
            .ok_or_else(|| anyhow!("program {} missing", progs::SWEEP))?
            .try_into()?;
        Ok(Sweeper {
            conns: dup(md(&m.conns))?,
            embryo: dup(md(&m.embryo))?,
            persist: dup(md(&m.persist))?,
            backends: dup(md(&m.backends))?,
            svc_info: dup(md(&m.svc_info))?,
            timeouts: dup(md(&m.timeouts))?,
            rs_new: dup(md(&m.rs_new))?,
            rs_tally: dup(md(&m.rs_tally))?,
            keys: dup(md(&m.sweep_keys))?,
            stats: Array::try_from(aya::maps::Map::Array(dup(md(&m.sweep))?))?,
            settings: Array::try_from(aya::maps::Map::Array(dup(md(&m.settings))?))?,
            prog: prog.fd()?.try_clone()?,
            chunks: Chunks::default(),
            attribute: false,
            bound: Arc::new(AtomicU32::new(self.backend_id_bound())),
        })
    }

    /// One more than the highest backend id in use (deleted ones kept in the trash
    /// included). A pass reads, counts and publishes only the ids below it: every per-backend
    /// array holds `size::MAX_BACKENDS` (131,072) slots, which the kernel copies one by one
    /// in a batch (about 0.3 µs each here), so reading two of them and writing a third cost
    /// about 115 ms a pass however few real servers there are. An id above it has no
    /// connection and no count: ids are released only once their counts are zero.
    pub fn backend_id_bound(&self) -> u32 {
        self.state
            .backends
            .keys()
            .next_back()
            .map_or(1, |id| id + 1)
    }

    /// One sweep pass, at once (no pace), on this thread: what tests and benches call; the
    /// daemon sweeps on its own thread (`start_sweep`).
    pub fn sweep(&mut self) -> anyhow::Result<SweepReport> {
        self.sweeper()?.pass(None)
    }
}

impl Sweeper {
    /// Makes each pass note, for every call, whether an interrupt or softirq landed on its CPU
    /// while it ran (`SweepReport::noisy_calls`, `longest_quiet_call`): two reads of `/proc`
    /// around each call, so for benches, not the daemon. Pin the calling thread to one CPU
    /// first, or a call that changes CPU counts as noisy.
    pub fn attribute_interrupts(&mut self, on: bool) {
        self.attribute = on;
    }

    /// Makes every batch read of a connection table ask for `n` entries (`None`: sized by
    /// their measured cost, as the daemon does): for benches comparing the two.
    pub fn fix_table_reads(&mut self, n: Option<u32>) {
        let c = match n {
            Some(n) => Chunker::new(n, n, n),
            None => Chunker::new(FIRST_READ, 16, MAX_SWEEP_CHUNK),
        };
        (self.chunks.conns, self.chunks.embryo) = (c.clone(), c);
    }

    /// Where the owner of the backend ids (the daemon's loop) tells this sweeper their bound.
    pub fn bound(&self) -> Arc<AtomicU32> {
        self.bound.clone()
    }

    /// One sweep pass: expires idle connections (both tables) and templates, and publishes
    /// every backend's exact counts, in steps that each stay well under a millisecond, at
    /// `pace` if given.
    pub fn pass(&mut self, pace: Option<&Pace>) -> anyhow::Result<SweepReport> {
        let _one = ONE_PASS.lock().unwrap_or_else(|e| e.into_inner());
        let (wall, cpu, user) = (Instant::now(), thread_cpu(), thread_cpu_user());
        let mut rep = SweepReport {
            attributed: self.attribute,
            paced: pace.is_some(),
            ..SweepReport::default()
        };
        let bound = self
            .bound
            .load(Ordering::Relaxed)
            .clamp(1, size::MAX_BACKENDS);
        // Back in `self` only if the pass ends well (a failed one starts the next afresh).
        let mut chunks = std::mem::take(&mut self.chunks);
        // What the data path reads: backends, services, timeouts, and the connections it
        // created so far (published counts are taken relative to these).
        let mut backends = vec![Backend::default(); bound as usize];
        walk::<u32, Backend>(
            &self.backends,
            &mut chunks.arrays,
            bound as usize,
            None,
            &mut rep,
            |k, v, _| {
                for (i, b) in k.iter().zip(v) {
                    if let Some(slot) = backends.get_mut(*i as usize) {
                        *slot = *b;
                    }
                }
                Ok(())
            },
        )?;
        let mut services = vec![Service::default(); size::MAX_SERVICES as usize];
        walk::<u32, Service>(
            &self.svc_info,
            &mut chunks.arrays,
            usize::MAX,
            None,
            &mut rep,
            |k, v, _| {
                for (i, s) in k.iter().zip(v) {
                    services[*i as usize] = *s;
                }
                Ok(())
            },
        )?;
        let mut timeouts = [0u32; lb_common::TIMEOUTS_LEN as usize];
        let n = lb_common::TIMEOUTS_LEN;
        let mut all = Chunker::new(n, n, n);
        walk::<u32, u32>(
            &self.timeouts,
            &mut all,
            usize::MAX,
            None,
            &mut rep,
            |k, v, _| {
                for (i, t) in k.iter().zip(v) {
                    timeouts[*i as usize] = *t;
                }
                Ok(())
            },
        )?;
        let mut tally = vec![RsConns::default(); bound as usize];
        walk::<u32, u32>(
            &self.rs_new,
            &mut chunks.arrays,
            bound as usize,
            None,
            &mut rep,
            |k, v, _| {
                for (i, n) in k.iter().zip(v) {
                    if let Some(t) = tally.get_mut(*i as usize) {
                        t.overloaded = *n;
                    }
                }
                Ok(())
            },
        )?;
        // The data path's clock as it is now (the clock thread advances it): what entries
        // recorded as their last activity is measured against it.
        let now = self.settings.get(&0, 0)?.clock_ns;
        let mut pass = Pass {
            view: View {
                backends,
                services,
                timeouts,
                now,
            },
            tally,
            live: HashSet::new(),
            pending: Vec::new(),
            prog: &self.prog,
            keys: &self.keys,
            pace,
            walked: 0,
            chunks,
            top: 0,
            conn_fillers: filler::Presence::new(filler::expected(&self.conns)?),
            persist_fillers: filler::Presence::new(filler::expected(&self.persist)?),
        };
        let (entries, expired) = pass.conns(&self.conns, false, &mut rep)?;
        let (embryonic, embryonic_expired) = pass.conns(&self.embryo, true, &mut rep)?;
        let (templates, templates_expired) = pass.templates(&self.persist, &mut rep)?;
        // Fillers missing (evicted while the table was full, deleted by hand, or never put
        // in: a table adopted from a daemon without them) go back while the table is sparse.
        rep.fillers_added += top_up(
            &self.conns,
            &pass.conn_fillers,
            entries.saturating_sub(expired),
            lb_common::filler::conn_key,
            &lb_common::filler::CONN,
            &mut rep,
        )?;
        rep.fillers_added += top_up(
            &self.persist,
            &pass.persist_fillers,
            templates,
            lb_common::filler::persist_key,
            &lb_common::filler::PERSIST,
            &mut rep,
        )?;
        (rep.fillers, rep.fillers_expected) =
            (pass.conn_fillers.count, pass.conn_fillers.expected());
        (rep.template_fillers, rep.template_fillers_expected) =
            (pass.persist_fillers.count, pass.persist_fillers.expected());
        write(
            &self.rs_tally,
            0,
            &pass.tally,
            &mut pass.chunks.writes,
            &mut rep,
        )?;
        for start in (0..bound).step_by(PUBLISH_CHUNK as usize) {
            pass.run(
                sweep_op::PUBLISH,
                PUBLISH_CHUNK.min(bound - start),
                start,
                &mut rep,
            )?;
        }
        // A backend added since the bound was last set, whose connections this pass could
        // not count (it took no snapshot of their number): the next pass takes it in. Until
        // then its count is the connections created on it, as for any new backend.
        self.bound.fetch_max(pass.top + 1, Ordering::Relaxed);
        self.chunks = pass.chunks;
        rep.entries = entries;
        rep.expired = expired;
        rep.embryonic = embryonic;
        rep.embryonic_expired = embryonic_expired;
        rep.templates = templates;
        rep.templates_expired = templates_expired;
        let stats = SweepStats {
            entries: (entries + embryonic) as u64,
            expired: (expired + embryonic_expired) as u64,
            templates: templates as u64,
            templates_expired: templates_expired as u64,
        };
        self.stats.set(0, stats, 0)?;
        let mut times = std::mem::take(&mut rep.times);
        times.sort_unstable();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        (rep.p99_call, rep.p999_call) = (at(0.99), at(0.999));
        rep.wall = wall.elapsed();
        rep.cpu = thread_cpu()
            .saturating_sub(cpu)
            .saturating_sub(rep.probe_cpu);
        rep.cpu_user = thread_cpu_user().saturating_sub(user);
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks `total` elements through `c` with calls costing `cost(done, n)`: the sizes
    /// asked, every element taken exactly once, and the calls' costs.
    fn simulate(
        c: &mut Chunker,
        total: usize,
        cost: impl Fn(usize, usize) -> Duration,
    ) -> Vec<(usize, Duration)> {
        let mut done = 0;
        let mut calls = Vec::new();
        while done < total {
            let n = (c.size() as usize).min(total - done);
            let took = cost(done, n);
            c.observe(n, took);
            calls.push((n, took));
            done += n;
        }
        assert_eq!(calls.iter().map(|(n, _)| n).sum::<usize>(), total);
        calls
    }

    fn us(v: f64) -> Duration {
        Duration::from_secs_f64(v * 1e-6)
    }

    #[test]
    fn the_size_converges_on_the_target_and_each_entry_is_read_once() {
        // 1.4 µs an entry (a full 4M table here) and 3 µs per call: 256 a call cost 361 µs.
        let mut c = Chunker::new(SWEEP_CHUNK, 16, MAX_SWEEP_CHUNK);
        let calls = simulate(&mut c, 1 << 20, |_, n| us(3.0 + 1.4 * n as f64));
        assert!(
            calls.iter().all(|(_, t)| *t < us(400.0)),
            "{:?}",
            &calls[..8]
        );
        // After a few calls every call is within 10% of the target (the fixed cost makes
        // each a little dearer than its share of the entries).
        for (n, t) in &calls[4..calls.len() - 1] {
            assert!(
                (us(225.0)..=us(275.0)).contains(t),
                "{n} entries took {t:?}"
            );
        }
        // 0.44 µs an entry (a full 1M table): larger calls, fewer of them.
        let mut c = Chunker::new(SWEEP_CHUNK, 16, MAX_SWEEP_CHUNK);
        let calls = simulate(&mut c, 1 << 20, |_, n| us(3.0 + 0.44 * n as f64));
        let (n, t) = calls[calls.len() / 2];
        assert!(
            (500..=600).contains(&n) && t <= us(275.0),
            "{n} entries, {t:?}"
        );
        assert!(calls.len() < (1 << 20) / 480, "{} calls", calls.len());
    }

    #[test]
    fn a_dearer_part_of_the_table_shrinks_the_calls_within_a_few() {
        // The second half costs 4× as much an entry (colder, or denser buckets).
        let mut c = Chunker::new(SWEEP_CHUNK, 16, MAX_SWEEP_CHUNK);
        let half = 200_000;
        let calls = simulate(&mut c, 2 * half, |at, n| {
            us(if at < half { 0.5 } else { 2.0 } * n as f64)
        });
        // The first call over the line overshoots (up to its size × 4 at most), later ones
        // come back under the bound within three calls and near the target soon after.
        let over = calls
            .iter()
            .scan(0, |at, (n, t)| {
                *at += n;
                Some((*at, *t))
            })
            .position(|(at, _)| at > half)
            .unwrap();
        assert!(calls[over].1 <= us(1000.0), "{:?}", &calls[over..over + 4]);
        for (n, t) in &calls[over + 3..calls.len() - 1] {
            assert!(*t <= us(500.0), "{n} entries took {t:?}");
        }
        for (n, t) in &calls[over + 10..calls.len() - 1] {
            assert!(*t <= us(300.0), "{n} entries took {t:?}");
        }
    }

    #[test]
    fn one_call_inflated_by_an_interrupt_does_not_collapse_the_size() {
        let mut c = Chunker::new(SWEEP_CHUNK, 16, MAX_SWEEP_CHUNK);
        simulate(&mut c, 100_000, |_, n| us(0.5 * n as f64));
        let settled = c.size();
        // A call of the settled size charged an extra millisecond (an interrupt landed in it).
        c.observe(settled as usize, us(0.5 * settled as f64 + 1000.0));
        assert!(c.size() >= settled / 4, "{} from {settled}", c.size());
        // And the size comes back as calls are cheap again.
        simulate(&mut c, 100_000, |_, n| us(0.5 * n as f64));
        assert!(c.size() >= settled * 9 / 10, "{} from {settled}", c.size());
    }

    #[test]
    fn sizes_stay_between_their_bounds_and_short_calls_teach_nothing() {
        let mut c = Chunker::new(64, 16, 256);
        simulate(&mut c, 10_000, |_, n| us(0.001 * n as f64));
        assert_eq!(c.size(), 256, "cheap calls: the most");
        // Growth at most doubles a call: from 16 to 256 takes 4 calls, not one.
        let mut c = Chunker::new(16, 16, 256);
        c.observe(16, us(0.016));
        assert_eq!(c.size(), 32);
        let mut c = Chunker::new(64, 16, 256);
        simulate(&mut c, 10_000, |_, n| us(100.0 * n as f64));
        assert_eq!(c.size(), 16, "dear calls: the fewest");
        // A map's last, short chunk (3 entries) costs the call's fixed cost alone.
        let before = c.per_element();
        c.observe(3, us(50.0));
        assert_eq!(c.per_element(), before);
    }

    /// A plain hash map of `u32` → `u32` with room for `n` (and as many buckets, rounded up to
    /// a power of two), holding keys `0..n`. Needs root (`BPF_MAP_CREATE`).
    fn hash_of(n: u32) -> MapData {
        use std::os::fd::{FromRawFd, OwnedFd};
        #[repr(C)]
        #[derive(Default)]
        struct Create {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        let mut attr = Create {
            map_type: 1, // BPF_MAP_TYPE_HASH
            key_size: 4,
            value_size: 4,
            max_entries: n,
            ..Create::default()
        };
        // SAFETY: a BPF_MAP_CREATE attribute prefix; the kernel zero-extends the rest.
        let fd = unsafe { crate::bpf::sys_bpf(0, &mut attr) }
            .unwrap_or_else(|e| panic!("BPF_MAP_CREATE (run as root): {e}"));
        // SAFETY: a new descriptor, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let other = MapData::from_fd(fd.try_clone().unwrap()).unwrap();
        let mut h: aya::maps::HashMap<MapData, u32, u32> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(other)).unwrap();
        for k in 0..n {
            h.insert(k, k * 10, 0).unwrap();
        }
        MapData::from_fd(fd).unwrap()
    }

    #[test]
    fn a_bucket_longer_than_the_chunk_is_read_whole_and_every_entry_once() {
        // 64 keys in 64 buckets: some bucket holds two or more (all apart: 64!/64^64), which a
        // one-entry read cannot take (the kernel's ENOSPC).
        let map = hash_of(64);
        let mut chunk = Chunker::with_target(1, 1, 64, Duration::from_nanos(1));
        let mut rep = SweepReport::default();
        let mut seen = Vec::new();
        walk::<u32, u32>(
            &map,
            &mut chunk,
            usize::MAX,
            Some(|r| &mut r.most_buckets_read),
            &mut rep,
            |k, v, _| {
                for (k, v) in k.iter().zip(v) {
                    assert_eq!(*v, k * 10);
                    seen.push(*k);
                }
                Ok(())
            },
        )
        .expect("the walk");
        seen.sort_unstable();
        assert_eq!(seen, (0..64).collect::<Vec<_>>(), "{rep:?}");
        assert!(
            rep.largest_read >= 2,
            "no bucket needed more than one: {rep:?}"
        );
    }

    #[test]
    fn interrupt_counts_are_read_per_cpu_from_proc() {
        let mut buf = String::new();
        let cpus = aya::util::online_cpus().expect("online CPUs");
        // Every CPU that has run has taken timer ticks at least; a column past the last
        // CPU's counts nothing.
        for &cpu in &cpus {
            assert!(
                irqs_of(cpu as usize, &mut buf).0 > 0,
                "CPU {cpu}: nothing counted"
            );
        }
        let past = *cpus.iter().max().unwrap() as usize + 1;
        assert_eq!(irqs_of(past, &mut buf), (0, 0), "CPU {past} does not exist");
    }
}
