//! What the daemon runs periodically or sets at run time: the clock, the sweep, timeouts and
//! expiry rules, the mh table size.

use std::time::Instant;

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
        self.settings.clock_ns = self.settings.clock_ns.wrapping_add(elapsed);
        self.maps.settings.set(0, self.settings, 0)?;
        Ok(())
    }

    /// Makes every next hop cached in connections stale (after a route or neighbour change):
    /// the data path looks each up again on its next packet.
    pub fn bump_route_epoch(&mut self) -> anyhow::Result<()> {
        self.settings.route_epoch = self.settings.route_epoch.wrapping_add(1);
        self.maps.settings.set(0, self.settings, 0)?;
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
        self.maps.settings.set(0, self.settings, 0)?;
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
