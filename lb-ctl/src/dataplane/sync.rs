//! Bringing the maps to match a `Model` as one diff, and keeping backends' paths current.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use anyhow::{Context, anyhow, bail};
use lb_common::{
    Backend, Service, SvcKey, SvcSlot, backend_flags, settings_flags, size, svc_flags,
};

use super::*;
use crate::{
    model::{DestConfig, Forward, Model, Scheduler, ServiceConfig, ServiceKey},
    sched::{self, Member},
};

impl Dataplane {
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
    pub(super) fn service_value(s: &SvcState) -> Service {
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

    pub(super) fn backend_value(
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
    pub(super) fn publish(&mut self, svc: &[SvcSlot], rs: &[SvcSlot]) -> anyhow::Result<()> {
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
        self.maps.settings.set(0, self.settings, 0)?;
        self.half_retired_at = Instant::now();
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
}
