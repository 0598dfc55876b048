//! The sync *plan*: a pure function from the allocation state, a model and the paths to every
//! map write one sync makes (ids to take, table regions, slot writes, the service-table halves
//! to write and flip to), and the state after it. Nothing here touches a map, so a plan that
//! does not fit (out of ids, out of table slots, too many keys hashing alike) is refused before
//! anything is written, and the planning is unit-tested without root.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use anyhow::anyhow;
use lb_common::{Backend, Service, SvcKey, SvcSlot, backend_flags, size, svc_flags};

use super::*;
use crate::{
    model::{DestConfig, Forward, Model, Netmask, ServiceConfig, ServiceKey},
    sched::{self, Member},
};

/// Every map write of one sync, in the order `Dataplane::apply` makes them, and the state
/// they leave.
#[derive(Debug)]
pub(super) struct Plan {
    /// Backend ids taken for the first time (their stats are zeroed before use).
    pub(super) fresh_backends: Vec<u32>,
    /// `LB_BACKENDS` entries that are new or changed.
    pub(super) backend_writes: Vec<(u32, Backend)>,
    /// Service ids taken for the first time (their stats are zeroed before use).
    pub(super) fresh_services: Vec<u32>,
    /// Scheduling tables to write, each into a region no live service entry points at yet.
    pub(super) table_writes: Vec<(ServiceKey, Region, Vec<u32>)>,
    /// `LB_SVC_INFO` entries that are new or changed.
    pub(super) svc_info_writes: Vec<(u32, Service)>,
    /// The service table and the NAT real-server table, as the idle halves are to hold them
    /// before the flip.
    pub(super) svc_table: Vec<SvcSlot>,
    pub(super) rs_table: Vec<SvcSlot>,
    /// Whether some service listens on port 0 / some real server is a NAT one
    /// (`settings_flags::HAS_PORT0`, `HAS_NAT`).
    pub(super) has_port0: bool,
    pub(super) has_nat: bool,
    /// Deleted backends to stop, after the flip (when no service schedules them any more).
    pub(super) trash_writes: Vec<(u32, Backend)>,
    /// The allocation state once every write is made (removed services' ids released).
    pub(super) state: State,
}

/// Plans bringing the maps from `current` to `model`, with every mh table of `mh_table_size`
/// slots in a scheduling-table map of `sched_table_size` slots. `now` stamps what goes to the
/// trash or retires. `Err` when the model does not fit; `current` is never changed.
pub(super) fn plan(
    current: &State,
    model: &Model,
    paths: &Paths,
    mh_table_size: u32,
    sched_table_size: u32,
    now: Instant,
) -> anyhow::Result<Plan> {
    Dataplane::check(model)?;
    let mut st = current.clone();
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
            let value = backend_value(&entry.config, svc.id, &dest, true, paths);
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
                addr: member_addr(dk.0),
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
            mh_table_size,
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
        if fresh || table != svc.table || st.services.get(key).map(|s| s.config) != Some(svc.config)
        {
            let region = st.regions.alloc(table.len() as u32).ok_or_else(|| {
                anyhow!(
                    "service {key}: no room for a {}-slot scheduling table \
                         (the table map has {} slots)",
                    table.len(),
                    sched_table_size
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
        .map(|(k, s)| (svc_key(k), service_value(s)));
    let svc_table = ProbeTable::build(svc_entries, size::SVC_SLOTS)
        .map_err(|k| anyhow!("service {}: too many services hash alike", show(&k)))?;
    // Where NAT replies come from: every live NAT real server's (address, port).
    let rs_entries = st
        .backends
        .iter()
        .filter(|(_, b)| b.trashed_at.is_none() && b.dest.forward == Forward::Nat)
        .map(|(id, b)| {
            let key = SvcKey::of(addr(b.dest.addr), b.dest.port.to_be(), b.svc.proto.number());
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

    let svc_info_writes = st
        .services
        .iter()
        .map(|(k, s)| (k, s.id, service_value(s)))
        .filter(|(k, _, v)| current.services.get(k).map(service_value) != Some(*v))
        .map(|(_, id, v)| (id, v))
        .collect();
    let has_port0 = st.services.keys().any(|k| k.port == 0);
    let has_nat = rs_table.iter().any(|s| s.svc.id != 0);
    // Removed services' ids are free once the flip has taken their entries out of the live
    // table; no service of this plan reuses them (they were still taken while it allocated).
    for k in &removed_services {
        if let Some(id) = current.services.get(k).map(|s| s.id) {
            st.svc_ids.release(id);
        }
    }
    Ok(Plan {
        fresh_backends,
        backend_writes,
        fresh_services,
        table_writes,
        svc_info_writes,
        svc_table,
        rs_table,
        has_port0,
        has_nat,
        trash_writes,
        state: st,
    })
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
        // As IPVS's svc->netmask: an IPv4 netmask in network order, an IPv6 prefix length
        // in host order (`Service::persist_client` applies either).
        persist_mask: c.persistence.map_or(0, |p| match p.netmask {
            Netmask::V4(m) => u32::from_ne_bytes(m.octets()),
            Netmask::V6(len) => u32::from(len),
        }),
    }
}

/// The persistence granularity a pinned service entry holds (for adoption).
pub(super) fn netmask_of(key: &ServiceKey, v: &Service) -> Netmask {
    if key.is_v6() {
        Netmask::V6(v.persist_mask.clamp(1, 128) as u8)
    } else {
        Netmask::V4(ip(v.persist_mask))
    }
}

pub(super) fn backend_value(
    svc: &ServiceConfig,
    svc_id: u32,
    dest: &DestConfig,
    available: bool,
    paths: &Paths,
) -> Backend {
    let path = paths.get(&dest.addr).copied().unwrap_or_else(|| {
        // No path (unresolved): addresses of the real server's family, unspecified.
        let none = if dest.addr.is_ipv6() {
            IpAddr::from(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::from(Ipv4Addr::UNSPECIFIED)
        };
        RsPath {
            next_hop: none,
            tun_src: none,
            ..RsPath::default()
        }
    });
    let mut flags = 0;
    if available {
        flags |= backend_flags::AVAILABLE;
    }
    if path.dmac.is_some() {
        flags |= backend_flags::NEIGH_OK;
    }
    Backend {
        addr: addr(dest.addr),
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
        vaddr: addr(svc.key.addr),
        vport: svc.key.port.to_be(),
        mtu: path.mtu,
        tun_src: addr(svc.tunnel_source.unwrap_or(path.tun_src)),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    use super::*;
    use crate::model::{Scheduler, ServiceEntry};

    const MH: u32 = 251;

    fn vip(n: u8) -> ServiceKey {
        ServiceKey::tcp(Ipv4Addr::new(192, 0, 2, 100 + n), 80)
    }
    fn rs(n: u8) -> IpAddr {
        Ipv4Addr::new(198, 51, 100, n).into()
    }

    /// Services `vip(n)` under `sched`, each with DR real servers `rs(m)` of weight `w`, added
    /// in the order given.
    fn model(sched: Scheduler, services: &[(u8, &[(u8, u32)])]) -> Model {
        let mut m = Model::default();
        for (n, dests) in services {
            m.add(
                ServiceConfig::new(vip(*n), sched),
                dests
                    .iter()
                    .map(|(r, w)| DestConfig::new(rs(*r), 80, Forward::Dr, *w)),
            )
            .unwrap();
        }
        m
    }

    fn planned(st: &State, m: &Model, now: Instant) -> Plan {
        let slots = st.regions.free.iter().map(|r| r.len).sum::<u32>() + 1;
        plan(st, m, &Paths::new(), MH, slots, now).unwrap_or_else(|e| panic!("plan: {e:#}"))
    }

    /// An IPv6 service as the v6 contract has the maps hold it: keys and addresses as their
    /// 16 bytes, the persistence prefix length in host order, NAT real servers in the reply
    /// table, the resolved path (next hop MAC, IPv6 tunnel source) in the backend.
    #[test]
    fn an_ipv6_service_is_planned_as_the_contract_says() {
        use crate::model::{Netmask, Persistence};
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let v6 = |s: &str| lb_common::Addr::from_octets(s.parse::<Ipv6Addr>().unwrap().octets());
        let key = ServiceKey::tcp(a("2001:db8::100"), 80);
        let mut cfg = ServiceConfig::new(key, Scheduler::Mh);
        cfg.persistence = Some(Persistence {
            timeout: 60,
            netmask: Netmask::V6(64),
        });
        let mut m = Model::default();
        m.add(
            cfg,
            [
                DestConfig::new(a("2001:db8:2::11"), 8080, Forward::Nat, 1),
                DestConfig::new(a("2001:db8:3::12"), 80, Forward::Tun, 2),
            ],
        )
        .unwrap();
        let mut paths = Paths::new();
        paths.insert(
            a("2001:db8:3::12"),
            RsPath {
                ifindex: 7,
                next_hop: a("fe80::1"),
                smac: [2, 0, 0, 0, 0, 1],
                dmac: Some([2, 0, 0, 0, 0, 2]),
                tun_src: a("2001:db8:2::2"),
                mtu: 1480,
            },
        );
        let st = State::new(16, 64, 1024);
        let p = plan(&st, &m, &paths, MH, 1024, Instant::now()).unwrap();
        // The service entry, under its 16-byte key.
        let slot = p
            .svc_table
            .iter()
            .find(|s| s.svc.id != 0)
            .expect("a live slot");
        assert_eq!(slot.key, SvcKey::of(v6("2001:db8::100"), 80u16.to_be(), 6));
        assert_eq!(
            slot.svc.persist_mask, 64,
            "the -M prefix length, host order"
        );
        assert_eq!(slot.svc.persist_timeout, 60);
        assert_eq!(
            slot.svc.flags & svc_flags::PERSISTENT,
            svc_flags::PERSISTENT
        );
        // The NAT real server in the reply table.
        let rs = p
            .rs_table
            .iter()
            .find(|s| s.svc.id != 0)
            .expect("a NAT slot");
        assert_eq!(rs.key, SvcKey::of(v6("2001:db8:2::11"), 8080u16.to_be(), 6));
        // The backends.
        let by_addr = |x: &str| {
            p.backend_writes
                .iter()
                .map(|(_, b)| b)
                .find(|b| b.addr == v6(x))
                .unwrap_or_else(|| panic!("no backend {x}: {:?}", p.backend_writes))
        };
        let nat = by_addr("2001:db8:2::11");
        assert_eq!(nat.vaddr, v6("2001:db8::100"));
        assert_eq!((nat.port, nat.fwd), (8080u16.to_be(), lb_common::fwd::NAT));
        assert_eq!(
            nat.flags & backend_flags::NEIGH_OK,
            0,
            "unresolved: the FIB's"
        );
        assert_eq!(nat.tun_src, v6("::"), "no path: unspecified, of its family");
        let tun = by_addr("2001:db8:3::12");
        assert_eq!(tun.tun_src, v6("2001:db8:2::2"));
        assert_eq!((tun.ifindex, tun.mtu), (7, 1480));
        assert_eq!(tun.dmac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(tun.flags & backend_flags::NEIGH_OK, backend_flags::NEIGH_OK);
        // Maglev hashed the members by their folded addresses, as the data path does.
        let (_, _, table) = &p.table_writes[0];
        assert_eq!(table.len(), MH as usize + 2);
        // The same plan read back on adoption keeps the prefix.
        assert_eq!(netmask_of(&key, &slot.svc), Netmask::V6(64));
        let v4key = ServiceKey::tcp(Ipv4Addr::new(192, 0, 2, 1), 80);
        let v4svc = Service {
            persist_mask: u32::from_ne_bytes([255, 255, 255, 0]),
            ..Service::default()
        };
        assert_eq!(
            netmask_of(&v4key, &v4svc),
            Netmask::V4(Ipv4Addr::new(255, 255, 255, 0))
        );
    }

    fn refused(st: &State, m: &Model) -> String {
        let before = format!("{st:?}");
        let slots = st.regions.free.iter().map(|r| r.len).sum::<u32>() + 1;
        let e = match plan(st, m, &Paths::new(), MH, slots, Instant::now()) {
            Ok(p) => panic!("expected the plan to be refused, got {p:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert_eq!(
            format!("{st:?}"),
            before,
            "a refused plan changed the state"
        );
        e
    }

    /// The ids of the services in `t` (a probe table), sorted.
    fn live_ids(t: &[SvcSlot]) -> Vec<u32> {
        let mut v: Vec<u32> = t.iter().map(|s| s.svc.id).filter(|&id| id != 0).collect();
        v.sort();
        v
    }

    #[test]
    fn adding_a_service_takes_ids_a_region_and_every_entry() {
        let st = State::new(16, 64, 1024);
        let m = model(Scheduler::Rr, &[(1, &[(1, 1), (2, 1)])]);
        let p = planned(&st, &m, Instant::now());
        assert_eq!(p.fresh_services, [1]);
        assert_eq!(p.fresh_backends, [1, 2]);
        let written: Vec<(u32, IpAddr, bool)> = p
            .backend_writes
            .iter()
            .map(|(id, b)| {
                let up = b.flags & backend_flags::AVAILABLE != 0;
                (*id, ip_of(b.addr), up)
            })
            .collect();
        // In IPVS list order: the latest added first.
        assert_eq!(written, [(2, rs(2), true), (1, rs(1), true)]);
        // rr: the live members in IPVS list order (the latest added first), then the members.
        assert_eq!(p.table_writes.len(), 1, "{:?}", p.table_writes);
        let (key, region, table) = &p.table_writes[0];
        assert_eq!(*key, vip(1));
        assert_eq!(*region, Region { off: 1, len: 4 });
        assert_eq!(table, &[2, 1, 2, 1]);
        assert_eq!(p.svc_info_writes.len(), 1);
        let (id, v) = p.svc_info_writes[0];
        assert_eq!(
            (id, v.id, v.table_off, v.table_len, v.members_len),
            (1, 1, 1, 2, 2)
        );
        assert_eq!(live_ids(&p.svc_table), [1]);
        let slot = p.svc_table.iter().find(|s| s.svc.id == 1).unwrap();
        assert_eq!(slot.key, svc_key(&vip(1)));
        assert_eq!(live_ids(&p.rs_table), Vec::<u32>::new());
        assert!(!p.has_port0 && !p.has_nat && p.trash_writes.is_empty());
        // The same model again: nothing to write.
        let again = planned(&p.state, &m, Instant::now());
        assert!(
            again.fresh_services.is_empty()
                && again.fresh_backends.is_empty()
                && again.backend_writes.is_empty()
                && again.table_writes.is_empty()
                && again.svc_info_writes.is_empty(),
            "an unchanged model planned writes: {again:?}"
        );
        assert_eq!(again.svc_table, p.svc_table);
    }

    #[test]
    fn removing_a_service_trashes_its_backends_and_frees_its_id_after_the_flip() {
        let now = Instant::now();
        let st = State::new(16, 64, 1024);
        let m = model(Scheduler::Rr, &[(1, &[(1, 1)]), (2, &[(2, 1), (3, 1)])]);
        let added = planned(&st, &m, now).state;
        let id2 = added.services[&vip(2)].id;
        let region2 = added.services[&vip(2)].region;
        let mut m2 = m.clone();
        m2.services.remove(&vip(2));
        let p = planned(&added, &m2, now);
        assert!(p.fresh_services.is_empty() && p.fresh_backends.is_empty());
        assert!(p.table_writes.is_empty() && p.backend_writes.is_empty());
        assert_eq!(live_ids(&p.svc_table), [added.services[&vip(1)].id]);
        // Its backends stop after the flip, and stay (trashed) while connections may use them.
        let mut stopped: Vec<u32> = p.trash_writes.iter().map(|(id, _)| *id).collect();
        stopped.sort();
        let mut members: Vec<u32> = added.services[&vip(2)]
            .members
            .iter()
            .map(|(_, id)| *id)
            .collect();
        members.sort();
        assert_eq!(stopped, members);
        assert!(
            p.trash_writes
                .iter()
                .all(|(_, b)| b.flags & backend_flags::AVAILABLE == 0)
        );
        for id in &members {
            assert_eq!(p.state.backends[id].trashed_at, Some(now));
        }
        // Its table region waits out the grace; its id is free for the next plan.
        assert_eq!(p.state.retired, [(now, region2)]);
        assert!(!p.state.svc_ids.used[id2 as usize]);
        assert!(
            added.svc_ids.used[id2 as usize],
            "the current state must not change"
        );
    }

    #[test]
    fn a_weight_change_rewrites_the_backend_and_the_table_elsewhere() {
        let now = Instant::now();
        let st = State::new(16, 64, 1024);
        let m = model(Scheduler::Wrr, &[(1, &[(1, 1), (2, 1)])]);
        let before = planned(&st, &m, now).state;
        let old_region = before.services[&vip(1)].region;
        let mut m2 = m.clone();
        let entry: &mut ServiceEntry = m2.services.get_mut(&vip(1)).unwrap();
        entry.dests[0].weight = 3;
        let p = planned(&before, &m2, now);
        assert!(p.fresh_services.is_empty() && p.fresh_backends.is_empty());
        let id1 = before
            .backends
            .iter()
            .find(|(_, b)| b.dest.addr == rs(1))
            .unwrap()
            .0;
        assert_eq!(p.backend_writes.len(), 1, "{:?}", p.backend_writes);
        assert_eq!(
            (p.backend_writes[0].0, p.backend_writes[0].1.weight),
            (*id1, 3)
        );
        // wrr with weights 3 and 1 (members: rs(2), then rs(1)), then the members.
        let id2 = before
            .backends
            .iter()
            .find(|(_, b)| b.dest.addr == rs(2))
            .unwrap()
            .0;
        let (_, region, table) = &p.table_writes[0];
        assert_eq!(table, &[*id1, *id1, *id2, *id1, *id2, *id1]);
        // A live entry still points at the old region: the new table goes elsewhere, the old
        // one retires.
        assert!(
            region.off >= old_region.off + old_region.len,
            "{region:?} overlaps the live {old_region:?}"
        );
        assert_eq!(p.state.retired, [(now, old_region)]);
        let (_, v) = p.svc_info_writes[0];
        assert_eq!((v.table_off, v.table_len), (region.off, 4));
    }

    #[test]
    fn a_deleted_service_id_is_reused_only_by_a_later_plan() {
        // Ids 1 and 2 only.
        let st = State::new(3, 64, 1024);
        let ab = model(Scheduler::Rr, &[(1, &[(1, 1)]), (2, &[(2, 1)])]);
        let s = planned(&st, &ab, Instant::now()).state;
        assert_eq!((s.services[&vip(1)].id, s.services[&vip(2)].id), (1, 2));
        // Removing a and adding c in one plan: c cannot take a's id, which the live half of
        // the service table holds until the flip.
        let bc = model(Scheduler::Rr, &[(2, &[(2, 1)]), (3, &[(3, 1)])]);
        let e = refused(&s, &bc);
        assert!(e.contains("too many services"), "{e}");
        // Once a's removal is applied, c gets its id.
        let b = model(Scheduler::Rr, &[(2, &[(2, 1)])]);
        let s = planned(&s, &b, Instant::now()).state;
        let p = planned(&s, &bc, Instant::now());
        assert_eq!(p.fresh_services, [1]);
        assert_eq!(p.state.services[&vip(3)].id, 1);
    }

    #[test]
    fn regions_are_allocated_first_fit_and_merge_when_released() {
        let t0 = Instant::now();
        let st = State::new(16, 64, 101);
        let m = model(Scheduler::Rr, &[(1, &[(1, 1), (2, 1)]), (2, &[(3, 1)])]);
        let s = planned(&st, &m, t0).state;
        assert_eq!(s.services[&vip(1)].region, Region { off: 1, len: 4 });
        assert_eq!(s.services[&vip(2)].region, Region { off: 5, len: 2 });
        assert_eq!(s.regions.free, [Region { off: 7, len: 94 }]);
        // Both go; their regions come back after the grace, merged into one free extent.
        let s = planned(&s, &Model::default(), t0).state;
        let mut early = s.clone();
        early.release_retired(t0 + TABLE_GRACE / 2);
        assert_eq!(early.regions.free, [Region { off: 7, len: 94 }]);
        let mut late = s;
        late.release_retired(t0 + TABLE_GRACE + Duration::from_millis(1));
        assert_eq!(late.regions.free, [Region { off: 1, len: 100 }]);
        assert!(late.retired.is_empty());
    }

    #[test]
    fn a_plan_that_does_not_fit_is_refused_and_changes_nothing() {
        // Out of service ids: ids 1 and 2 only.
        let st = State::new(3, 64, 1024);
        let three = model(
            Scheduler::Rr,
            &[(1, &[(1, 1)]), (2, &[(2, 1)]), (3, &[(3, 1)])],
        );
        let e = refused(&st, &three);
        assert!(e.contains("too many services"), "{e}");
        let two = model(Scheduler::Rr, &[(1, &[(1, 1)]), (2, &[(2, 1)])]);
        assert_eq!(planned(&st, &two, Instant::now()).fresh_services, [1, 2]);

        // Out of backend ids.
        let st = State::new(16, 3, 1024);
        let e = refused(
            &st,
            &model(Scheduler::Rr, &[(1, &[(1, 1), (2, 1), (3, 1)])]),
        );
        assert!(e.contains("too many real servers"), "{e}");

        // Out of table slots: 8 slots (7 usable); rr with 4 members needs 8. The first
        // service fits, the second does not: nothing of either is planned.
        let st = State::new(16, 64, 8);
        let small = model(Scheduler::Rr, &[(1, &[(1, 1)])]);
        let s = planned(&st, &small, Instant::now()).state;
        let e = refused(
            &s,
            &model(
                Scheduler::Rr,
                &[(1, &[(1, 1)]), (2, &[(2, 1), (3, 1), (4, 1), (5, 1)])],
            ),
        );
        assert!(e.contains("no room"), "{e}");
        let p = planned(
            &s,
            &model(Scheduler::Rr, &[(1, &[(1, 1)]), (2, &[(2, 1)])]),
            Instant::now(),
        );
        assert_eq!(
            (p.fresh_services.as_slice(), p.fresh_backends.as_slice()),
            (&[2][..], &[2][..])
        );
    }
}
