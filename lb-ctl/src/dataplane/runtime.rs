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
