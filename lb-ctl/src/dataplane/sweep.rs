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

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use aya::{
    maps::MapData,
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    Backend, Conn, FlowKey, PersistKey, PersistVal, RsConns, Service, SweepOp, SweepStats,
    TIMEOUT_UDP, conn_flags, progs, size, svc_flags, sweep_op, sweep_result, tcp_state,
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
    /// Wall time and this thread's CPU time (user and kernel) for the whole pass.
    pub wall: Duration,
    pub cpu: Duration,
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
                client: lb_common::Addr::v4(client.as_v4() & svc.persist_mask),
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
    prog: &'a Xdp,
    keys: &'a MapData,
}

impl Pass<'_> {
    fn count(&mut self, k: &FlowKey, backend: u32, result: u16) {
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
        let out = rep
            .timed(|| {
                self.prog.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ..TestRunOptions::default()
                })
            })
            .0
            .context("running the sweep step")?;
        rep.runs += 1;
        rep.longest_run = rep.longest_run.max(out.duration);
        // XDP_PASS: the step ran to its end.
        const XDP_PASS: u32 = 2;
        if out.return_value != XDP_PASS {
            bail!("the sweep step failed (verdict {})", out.return_value);
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
        walk::<FlowKey, Conn>(map, SWEEP_CHUNK, usize::MAX, rep, |keys, values, rep| {
            rep.conn_batches += 1;
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
        })?;
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
                            if let Some(t) = p.tally.get_mut(b as usize) {
                                t.persist += 1;
                            }
                        }
                    }
                }
                anyhow::Ok(())
            };
        walk::<PersistKey, PersistVal>(map, SWEEP_CHUNK, usize::MAX, rep, |keys, values, rep| {
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

impl Dataplane {
    /// One sweep pass: expires idle connections (both tables) and templates, and publishes
    /// every backend's exact counts, in steps that each stay well under a millisecond.
    pub fn sweep(&mut self) -> anyhow::Result<SweepReport> {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let mut rep = SweepReport::default();
        let prog: &Xdp = self
            .bpf
            .program(progs::SWEEP)
            .ok_or_else(|| anyhow!("program {} missing", progs::SWEEP))?
            .try_into()?;
        let m = &self.maps;
        // What the data path reads: backends, services, timeouts, and the connections it
        // created so far (published counts are taken relative to these).
        let mut backends = vec![Backend::default(); size::MAX_BACKENDS as usize];
        walk::<u32, Backend>(
            md(&m.backends),
            ARRAY_CHUNK as u32,
            usize::MAX,
            &mut rep,
            |k, v, _| {
                for (i, b) in k.iter().zip(v) {
                    backends[*i as usize] = *b;
                }
                Ok(())
            },
        )?;
        let mut services = vec![Service::default(); size::MAX_SERVICES as usize];
        walk::<u32, Service>(md(&m.svc_info), 4096, usize::MAX, &mut rep, |k, v, _| {
            for (i, s) in k.iter().zip(v) {
                services[*i as usize] = *s;
            }
            Ok(())
        })?;
        let mut timeouts = [0u32; lb_common::TIMEOUTS_LEN as usize];
        walk::<u32, u32>(md(&m.timeouts), 64, usize::MAX, &mut rep, |k, v, _| {
            for (i, t) in k.iter().zip(v) {
                timeouts[*i as usize] = *t;
            }
            Ok(())
        })?;
        let mut tally = vec![RsConns::default(); size::MAX_BACKENDS as usize];
        walk::<u32, u32>(
            md(&m.rs_new),
            ARRAY_CHUNK as u32,
            usize::MAX,
            &mut rep,
            |k, v, _| {
                for (i, n) in k.iter().zip(v) {
                    tally[*i as usize].overloaded = *n;
                }
                Ok(())
            },
        )?;
        let mut pass = Pass {
            view: View {
                backends,
                services,
                timeouts,
                now: self.settings.clock_ns,
            },
            tally,
            live: HashSet::new(),
            pending: Vec::new(),
            prog,
            keys: md(&m.sweep_keys),
        };
        let (entries, expired) = pass.conns(md(&m.conns), false, &mut rep)?;
        let (embryonic, embryonic_expired) = pass.conns(md(&m.embryo), true, &mut rep)?;
        let (templates, templates_expired) = pass.templates(md(&m.persist), &mut rep)?;
        write(md(&m.rs_tally), 0, &pass.tally, ARRAY_CHUNK, &mut rep)?;
        for start in (0..size::MAX_BACKENDS).step_by(PUBLISH_CHUNK as usize) {
            pass.run(sweep_op::PUBLISH, PUBLISH_CHUNK, start, &mut rep)?;
        }
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
        self.maps.sweep.set(0, stats, 0)?;
        let mut times = std::mem::take(&mut rep.times);
        times.sort_unstable();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        (rep.p99_call, rep.p999_call) = (at(0.99), at(0.999));
        rep.wall = wall.elapsed();
        rep.cpu = thread_cpu().saturating_sub(cpu);
        Ok(rep)
    }
}
