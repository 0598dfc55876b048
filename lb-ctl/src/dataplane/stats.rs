//! Listings and stats: what `-L`, `-Lc`, `--stats`, `--zero` and the rate estimator read.

use std::{collections::HashMap, net::SocketAddr};

use aya::maps::{MapData, PerCpuArray};
use lb_common::{Conn, FlowKey, Stats, conn_flags, tcp_state};

use super::*;
use crate::{
    api::{ConnView, DestView, RateView, ServiceView, Snapshot, StatsView},
    model::{Forward, Protocol, ServiceKey},
    sched::Member,
};

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

/// A connection: its request entry and the last activity of either direction.
pub(super) struct Connection {
    key: FlowKey,
    conn: Conn,
    /// The later of the two entries' last activity.
    last_seen_ns: u64,
}

/// One counter set, summed over its per-CPU copies.
pub(super) fn sum_stats(per_cpu: &[Stats]) -> StatsView {
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

impl Dataplane {
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
                    addr: member_addr(dk.0),
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

    /// The connections among connection-table entries: request entries, each with the last
    /// activity of either direction (a NAT connection's reply entry has its own).
    pub(super) fn pair(&self, entries: &[(FlowKey, Conn)]) -> Vec<Connection> {
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
                let reply = nat.map(|b| k.nat_reply(addr(b.dest.addr), b.dest.port.to_be()));
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

    pub(super) fn stats(map: &PerCpuArray<MapData, Stats>, id: u32) -> StatsView {
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
    pub(super) fn stats_of(
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

    /// The embryonic table's intact slots (`lb_common::embryo::intact`): its connections,
    /// expired ones included.
    pub fn embryos(&self) -> Vec<(FlowKey, Conn)> {
        let mask = self.embryo_table_size.saturating_sub(1);
        self.embryo_slots()
            .into_iter()
            .filter(|(i, s)| lb_common::embryo::intact(s, *i, mask))
            .map(|(_, s)| (s.key, s.conn))
            .collect()
    }

    /// Every slot of the embryonic table, read 1,024 at a time (`BPF_MAP_LOOKUP_BATCH`; a
    /// syscall a slot would take about a second for a million).
    fn embryo_slots(&self) -> Vec<(u32, lb_common::EmbryoSlot)> {
        const CHUNK: u32 = 1024;
        let map = aya::maps::IterableMap::map(&self.maps.embryo);
        let mut idx = vec![0u32; CHUNK as usize];
        let mut slots = vec![lb_common::EmbryoSlot::default(); CHUNK as usize];
        let mut cursor = batch::Cursor::default();
        let mut out = Vec::new();
        loop {
            // SAFETY: the buffers hold `CHUNK` keys and values of the map's sizes.
            let Ok((n, end)) =
                (unsafe { batch::lookup_chunk(map, &mut cursor, &mut idx, &mut slots, CHUNK) })
            else {
                return out;
            };
            out.extend(idx[..n].iter().copied().zip(slots[..n].iter().copied()));
            if end || n == 0 {
                return out;
            }
        }
    }

    /// The connection entries (`-Lc`).
    pub fn conns(&self, timeouts: &StateTimeouts) -> Vec<ConnView> {
        let now = self.clock_now();
        // Embryonic connections (SYN_RECV, `LB_EMBRYO`) are listed with the others: the
        // intact slots, but not those idle past their timeout, which the data path treats as
        // empty already.
        let mut entries: Vec<(FlowKey, Conn)> = self
            .maps
            .conns
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| !lb_common::filler::is_conn(k))
            .collect();
        entries.extend(self.embryos().into_iter().filter(|(k, c)| {
            c.flags & lb_common::conn_flags::REPLY != 0
                || now.saturating_sub(c.last_seen_ns)
                    < u64::from(timeouts.of(c, k.proto)) * 1_000_000_000
        }));
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
                client: SocketAddr::new(ip_of(k.saddr), u16::from_be(k.sport)),
                virtual_addr: SocketAddr::new(ip_of(k.daddr), u16::from_be(k.dport)),
                dest: SocketAddr::new(b.dest.addr, b.dest.port),
            });
        }
        // Persistence templates, as IPVS lists them: protocol "IP", client network and port 0.
        for item in self.maps.persist.iter() {
            let Ok((k, t)) = item else { continue };
            if lb_common::filler::is_persist(&k) {
                continue;
            }
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
                client: SocketAddr::new(ip_of(k.client), 0),
                virtual_addr: SocketAddr::new(svc.config.key.addr, svc.config.key.port),
                dest: SocketAddr::new(b.dest.addr, b.dest.port),
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
}

impl Dataplane {
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
}
