//! What the daemon runs periodically or sets at run time: the clock, the sweep, timeouts and
//! expiry rules, the mh table size.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use anyhow::Context;
use lb_common::{Conn, settings_flags, tcp_state, udp_state};

use super::*;
use crate::api::Timeouts;

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
    pub(super) fn of(&self, conn: &Conn, proto: u8) -> u32 {
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

impl Dataplane {
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

    /// Makes every next hop cached in connections stale (after a route or neighbour change):
    /// the data path looks each up again on its next packet.
    pub fn bump_route_epoch(&mut self) -> anyhow::Result<()> {
        self.settings.route_epoch = self.settings.route_epoch.wrapping_add(1);
        self.write_settings()?;
        Ok(())
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

    /// The size every mh table is built with.
    pub fn mh_table_size(&self) -> u32 {
        self.opts.mh_table_size
    }

    /// Sets the mh table size (a prime) the next `sync` builds every mh table with.
    pub fn set_mh_table_size(&mut self, slots: u32) {
        self.opts.mh_table_size = slots;
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

impl Dataplane {
    /// Writes `self.settings` to `LB_SETTINGS`, keeping the clock the map holds: the clock
    /// thread (`start_clock`) may have advanced it since this side last looked.
    pub(super) fn write_settings(&mut self) -> anyhow::Result<()> {
        let _held = self.settings_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.settings.clock_ns = self.maps.settings.get(&0, 0)?.clock_ns;
        self.maps.settings.set(0, self.settings, 0)?;
        Ok(())
    }

    /// The balancer's clock as the data path reads it now.
    pub(super) fn clock_now(&self) -> u64 {
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
        let pin = self
            .opts
            .pin_dir
            .join("maps")
            .join(lb_common::maps::SETTINGS);
        let data = MapData::from_pin(&pin)
            .with_context(|| format!("opening {} for the clock", pin.display()))?;
        let mut map: Array<MapData, Settings> = Array::try_from(aya::maps::Map::Array(data))?;
        let lock = self.settings_lock.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let tick = std::time::Duration::from_nanos(lb_common::CLOCK_TICK_NS);
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
}

/// The sweep thread's pace: a pass walks at most this many entries a second, so one over a
/// million entries spreads over about the second between passes rather than running in one
/// burst (a pass over fewer entries is done sooner and waits for the next second)…
pub const SWEEP_RATE: f64 = 1.15e6;
/// …and uses at most this share of one CPU: a table too large to walk within the second at
/// that cost (4M entries cost 2.5 CPU-seconds here) gets longer passes, and expiry runs that
/// much later, instead of taking a whole CPU from the director.
pub const SWEEP_CPU_SHARE: f64 = 0.5;
/// A pass starts this long after the previous one started, or as soon as it ended if it took
/// longer: the expiry period (IPVS's timers are per second too).
pub const SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// What the sweep thread shares with the daemon's loop: its last report and where it is.
#[derive(Default)]
pub struct SweepShared {
    /// The last pass's report, and how many passes have completed (the report's number).
    last: std::sync::Mutex<(u64, SweepReport)>,
    /// Whether a pass is under way, and how many entries it has walked.
    in_pass: AtomicBool,
    walked: std::sync::atomic::AtomicU64,
    /// Passes that failed (each logged), and the last failure.
    failed: std::sync::atomic::AtomicU64,
    last_error: std::sync::Mutex<String>,
}

/// The sweep, on its own thread at the lowest priority (`SCHED_IDLE`), with its own handles
/// on the maps (`Dataplane::sweeper`): a pass neither waits for a request to the daemon nor
/// delays one. Started by `Dataplane::start_sweep`; stopped (and joined) when dropped; a
/// thread that died (a panic) is started again by `revive`.
pub struct SweepThread {
    stop: Arc<AtomicBool>,
    shared: Arc<SweepShared>,
    thread: Option<JoinHandle<()>>,
    /// Passes already handed to the daemon by `take_report`.
    taken: u64,
    /// How many times the thread died and was started again.
    restarts: u64,
    /// The sweeper's bound on backend ids (`Dataplane::backend_id_bound`).
    bound: Arc<std::sync::atomic::AtomicU32>,
}

/// How the sweep thread is doing, for `lb-ctl status`.
#[derive(Clone, Debug, Default)]
pub struct SweepState {
    pub passes: u64,
    pub in_pass: bool,
    pub walked: u64,
    pub failed: u64,
    pub last_error: String,
    pub restarts: u64,
}

/// Lowers the calling thread to `SCHED_IDLE`: it runs when its CPU has nothing else to run, a
/// request's thread waking up takes the CPU from it at once, and the scheduler still gives it
/// a sliver of time on a CPU that is never idle (unlike a real idle class, it is not starved
/// for ever). nice 19 would hold the CPU a while longer against a waking daemon thread.
fn idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `LB_FAULT_SWEEP_PANIC=N`: the sweep thread panics at the start of its Nth pass, once per
/// process. A fault to inject, for the test that shows the daemon outlives it.
fn injected_panic(pass: u64) {
    static DONE: AtomicBool = AtomicBool::new(false);
    let at = std::env::var("LB_FAULT_SWEEP_PANIC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if at == Some(pass) && !DONE.swap(true, Ordering::Relaxed) {
        panic!("LB_FAULT_SWEEP_PANIC: the sweep thread panics at pass {pass}, as asked");
    }
}

fn sweep_loop(mut sweeper: super::sweep::Sweeper, stop: Arc<AtomicBool>, shared: Arc<SweepShared>) {
    if let Err(e) = idle_priority() {
        log::warn!("the sweep thread keeps its priority (SCHED_IDLE refused: {e})");
    }
    let mut last_start: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let passes = shared.last.lock().unwrap_or_else(|e| e.into_inner()).0;
        injected_panic(passes + 1);
        shared.in_pass.store(true, Ordering::Relaxed);
        let pace = super::sweep::Pace::new(SWEEP_RATE, SWEEP_CPU_SHARE, &stop, &shared.walked);
        let r = sweeper.pass(Some(&pace));
        shared.in_pass.store(false, Ordering::Relaxed);
        match r {
            Ok(mut rep) => {
                rep.interval = last_start.map_or(rep.wall, |t| started.duration_since(t));
                let mut last = shared.last.lock().unwrap_or_else(|e| e.into_inner());
                *last = (last.0 + 1, rep);
            }
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => {
                // A failed pass changed nothing it had not finished (every expiry is its own
                // decision in the kernel; counts are published at the end): the next one
                // starts over.
                let n = shared.failed.fetch_add(1, Ordering::Relaxed) + 1;
                let msg = format!("{e:#}");
                if n == 1 || n.is_power_of_two() {
                    log::warn!("sweeping the connection table (failure {n}): {msg}");
                }
                *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = msg;
            }
        }
        last_start = Some(started);
        let next = started + SWEEP_PERIOD;
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
        }
    }
}

impl SweepThread {
    fn spawn(
        sweeper: super::sweep::Sweeper,
        stop: Arc<AtomicBool>,
        shared: Arc<SweepShared>,
    ) -> anyhow::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("lb-sweep".into())
            .spawn(move || sweep_loop(sweeper, stop, shared))
            .context("starting the sweep thread")
    }

    /// Tells the sweep the backend ids now in use (`Dataplane::backend_id_bound`): a pass
    /// starting after this covers them.
    pub fn set_backend_bound(&self, bound: u32) {
        self.bound.store(bound, Ordering::Relaxed);
    }

    /// The report of a pass completed since the last call, if any.
    pub fn take_report(&mut self) -> Option<SweepReport> {
        let last = self.shared.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 == self.taken {
            return None;
        }
        self.taken = last.0;
        Some(last.1.clone())
    }

    pub fn state(&self) -> SweepState {
        SweepState {
            passes: self.shared.last.lock().unwrap_or_else(|e| e.into_inner()).0,
            in_pass: self.shared.in_pass.load(Ordering::Relaxed),
            walked: self.shared.walked.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            last_error: self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            restarts: self.restarts,
        }
    }

    /// If the thread died (it panicked), says why and starts it again on fresh handles from
    /// `dp`: forwarding never depended on it, but without it nothing expires and the counts
    /// freeze, so an operator wants it back more than a daemon that exits. Returns the
    /// reason it died, for the log.
    pub fn revive(&mut self, dp: &Dataplane) -> Option<anyhow::Result<String>> {
        let why = match self.thread.take() {
            Some(t) if !t.is_finished() => {
                self.thread = Some(t);
                return None;
            }
            Some(t) => match t.join() {
                Err(p) => p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into()),
                Ok(()) => "it stopped".into(),
            },
            // The last attempt to start it failed: try again.
            None => "it could not be started again".into(),
        };
        self.shared.in_pass.store(false, Ordering::Relaxed);
        let r = dp.sweeper().and_then(|s| {
            self.bound = s.bound();
            self.thread = Some(Self::spawn(s, self.stop.clone(), self.shared.clone())?);
            self.restarts += 1;
            Ok(why)
        });
        Some(r)
    }
}

impl Drop for SweepThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Dataplane {
    /// Starts the sweep on its own thread (see `SweepThread`), a pass every `SWEEP_PERIOD`
    /// at the pace `SWEEP_RATE` and `SWEEP_CPU_SHARE` set.
    pub fn start_sweep(&self) -> anyhow::Result<SweepThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(SweepShared::default());
        let sweeper = self.sweeper()?;
        let bound = sweeper.bound();
        let thread = SweepThread::spawn(sweeper, stop.clone(), shared.clone())?;
        Ok(SweepThread {
            bound,
            stop,
            shared,
            thread: Some(thread),
            taken: 0,
            restarts: 0,
        })
    }
}
