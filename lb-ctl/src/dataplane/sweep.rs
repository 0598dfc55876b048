//! The sweep in bounded steps: expiry and the exact per-backend counts, without ever holding a
//! CPU for long.
//!
//! One in-kernel walk of the whole table (`bpf_for_each_map_elem`) took 237 ms at 1M entries,
//! with bottom halves off on its CPU, and cannot stop and resume. Here the daemon walks the
//! tables itself with `BPF_MAP_LOOKUP_BATCH` (one bucket lock at a time, `SWEEP_CHUNK` entries
//! per call, resumable by its cursor), counts what is plainly alive, and runs `lb_sweep` only
//! on what needs a decision against the live entry: keys that look expired (at most
//! `size::SWEEP_KEYS` per run, re-checked in the kernel so a packet that arrived since keeps its
//! connection), templates to re-arm or expire, and ranges of backends to publish. Every system
//! call does a bounded amount of work; their longest is reported, with the pass's CPU time.
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
/// Entries per `BPF_MAP_LOOKUP_BATCH` of a connection table. Reading a full table costs about
/// 440 ns an entry at 1M and 1.4 µs at 4M (cache and TLB misses, a locked bucket each), so
/// 4,096 took up to 2 and 6 ms; 256 take about 0.1 ms at 1M and 0.35 ms at 4M. (128 made
/// no difference to the longest call, which is mostly what lands in it on a shared machine,
/// and cost 40% more CPU per pass.)
pub const SWEEP_CHUNK: u32 = 256;
/// Backends per `PUBLISH` run (about 20 ns each in the kernel).
const PUBLISH_CHUNK: u32 = 8192;
/// Array elements per batch read or write (the kernel copies array elements one by one).
const ARRAY_CHUNK: usize = 1024;

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
    /// System calls the pass made (batch reads and writes, `lb_sweep` runs).
    pub calls: usize,
    /// `lb_sweep` runs among them.
    pub runs: usize,
    /// Batch reads of the connection tables (`SWEEP_CHUNK` entries each, the last short).
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
}

impl SweepReport {
    fn timed<T>(&mut self, f: impl FnOnce() -> T) -> (T, Duration) {
        let (t, cpu) = (Instant::now(), thread_cpu());
        let r = f();
        let took = thread_cpu().saturating_sub(cpu);
        self.longest_call_wall = self.longest_call_wall.max(t.elapsed());
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

fn md<M: aya::maps::IterableMap<K, V>, K: aya::Pod, V>(m: &M) -> &MapData {
    m.map()
}

/// Reads `map` from the start, `chunk` elements per `BPF_MAP_LOOKUP_BATCH`, handing each chunk
/// to `f` before reading the next (the cursor makes the walk resumable between calls).
fn walk<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &MapData,
    chunk: u32,
    limit: usize,
    rep: &mut SweepReport,
    mut f: impl FnMut(&[K], &[V], &mut SweepReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut keys = vec![K::default(); chunk as usize];
    let mut values = vec![V::default(); chunk as usize];
    let mut cursor = Cursor::default();
    let mut read = 0usize;
    loop {
        // SAFETY: the buffers hold `chunk` keys and values of the map's sizes (checked at
        // load).
        let (r, took) =
            rep.timed(|| unsafe { lookup_chunk(map, &mut cursor, &mut keys, &mut values, chunk) });
        rep.longest_read = rep.longest_read.max(took);
        let (n, end) = r?;
        f(&keys[..n], &values[..n], rep)?;
        read += n;
        if end || read >= limit {
            return Ok(());
        }
    }
}

/// Writes `values` into array `map` from slot `off`, at most `chunk` per `BPF_MAP_UPDATE_BATCH`.
fn write<V: aya::Pod>(
    map: &MapData,
    off: u32,
    values: &[V],
    chunk: usize,
    rep: &mut SweepReport,
) -> anyhow::Result<()> {
    let keys: Vec<u32> = (off..off + values.len() as u32).collect();
    let mut done = 0usize;
    while done < values.len() {
        let n = (values.len() - done).min(chunk);
        let (r, took) =
            rep.timed(|| update_chunk(map, &keys[done..done + n], &values[done..done + n]));
        rep.longest_write = rep.longest_write.max(took);
        done += r?;
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
    /// The highest backend id a connection or template named (the next pass's bound, if it
    /// lies beyond this one's).
    top: u32,
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
    fn run(&self, op: u32, count: u32, start: u32, rep: &mut SweepReport) -> anyhow::Result<()> {
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
        let (retval, duration) = rep
            .timed(|| test_run(self.prog, &frame))
            .0
            .context("running the sweep step")?;
        rep.runs += 1;
        rep.longest_run = rep.longest_run.max(duration);
        // XDP_PASS: the step ran to its end.
        const XDP_PASS: u32 = 2;
        if retval != XDP_PASS {
            bail!("the sweep step failed (verdict {retval})");
        }
        Ok(())
    }

    /// After a chunk of `n` entries: keeps to the pace, and says how far the pass is.
    fn paced(&mut self, n: usize, rep: &mut SweepReport) -> anyhow::Result<()> {
        self.walked += n;
        if let Some(p) = self.pace {
            rep.slept += p.step(self.walked)?;
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
        write(self.keys, 0, &keys, keys.len(), rep)?;
        self.run(op, keys.len() as u32, 0, rep)?;
        if op != sweep_op::TEMPLATES {
            rep.keys_checked += keys.len();
            rep.key_runs += 1;
        }
        let mut back = Vec::with_capacity(keys.len());
        walk::<u32, FlowKey>(self.keys, keys.len() as u32, keys.len(), rep, |_, v, _| {
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
        let mut visit = |keys: &[FlowKey], values: &[Conn], rep: &mut SweepReport| {
            rep.conn_batches += 1;
            self.paced(keys.len(), rep)?;
            for (k, c) in keys.iter().zip(values) {
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
                    if self.pending.len() >= size::SWEEP_KEYS as usize {
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
            // An array of slots: the intact ones are the embryos (see `lb_common::embryo`).
            let mask = map.info()?.max_entries().saturating_sub(1);
            walk::<u32, EmbryoSlot>(map, SWEEP_CHUNK, usize::MAX, rep, |idx, slots, rep| {
                let (keys, values): (Vec<FlowKey>, Vec<Conn>) = idx
                    .iter()
                    .zip(slots)
                    .filter(|(i, s)| lb_common::embryo::intact(s, **i, mask))
                    .map(|(_, s)| (s.key, s.conn))
                    .unzip();
                visit(&keys, &values, rep)
            })?;
        } else {
            walk::<FlowKey, Conn>(map, SWEEP_CHUNK, usize::MAX, rep, visit)?;
        }
        settle(self, rep, &mut expired)?;
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
        walk::<PersistKey, PersistVal>(map, SWEEP_CHUNK, usize::MAX, rep, |keys, values, rep| {
            self.paced(keys.len(), rep)?;
            for (k, v) in keys.iter().zip(values) {
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
                    if self.pending.len() >= size::SWEEP_KEYS as usize {
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
        })?;
        settle(self, rep, &mut kept, &mut expired)?;
        Ok((kept, expired))
    }
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
    fn step(&self, walked: usize) -> anyhow::Result<Duration> {
        self.walked.store(walked as u64, Ordering::Relaxed);
        if self.stop.load(Ordering::Relaxed) {
            bail!("the sweep was stopped part way");
        }
        let elapsed = self.started.elapsed();
        let by_rate = Duration::from_secs_f64(walked as f64 / self.rate);
        let cpu = thread_cpu().saturating_sub(self.cpu0);
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
        let mut rep = SweepReport::default();
        let bound = self
            .bound
            .load(Ordering::Relaxed)
            .clamp(1, size::MAX_BACKENDS);
        let chunk = (bound as usize).min(ARRAY_CHUNK);
        // What the data path reads: backends, services, timeouts, and the connections it
        // created so far (published counts are taken relative to these).
        let mut backends = vec![Backend::default(); bound as usize];
        walk::<u32, Backend>(
            &self.backends,
            chunk as u32,
            bound as usize,
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
        walk::<u32, Service>(&self.svc_info, 4096, usize::MAX, &mut rep, |k, v, _| {
            for (i, s) in k.iter().zip(v) {
                services[*i as usize] = *s;
            }
            Ok(())
        })?;
        let mut timeouts = [0u32; lb_common::TIMEOUTS_LEN as usize];
        walk::<u32, u32>(&self.timeouts, 64, usize::MAX, &mut rep, |k, v, _| {
            for (i, t) in k.iter().zip(v) {
                timeouts[*i as usize] = *t;
            }
            Ok(())
        })?;
        let mut tally = vec![RsConns::default(); bound as usize];
        walk::<u32, u32>(
            &self.rs_new,
            chunk as u32,
            bound as usize,
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
            top: 0,
        };
        let (entries, expired) = pass.conns(&self.conns, false, &mut rep)?;
        let (embryonic, embryonic_expired) = pass.conns(&self.embryo, true, &mut rep)?;
        let (templates, templates_expired) = pass.templates(&self.persist, &mut rep)?;
        write(&self.rs_tally, 0, &pass.tally, ARRAY_CHUNK, &mut rep)?;
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
        rep.cpu = thread_cpu().saturating_sub(cpu);
        rep.cpu_user = thread_cpu_user().saturating_sub(user);
        Ok(rep)
    }
}
