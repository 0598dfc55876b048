//! How the director reaches each real server: routes, next hops, MACs and tunnel sources,
//! found with netlink and kept fresh for the data path.
//!
//! Each real server is resolved on its own. A configuration IPVS users expect refused (a DR
//! server behind a router, the director's own address, no route at all) is refused when the
//! server is added, changing nothing. A server that becomes unreachable later (its route
//! removed) is taken out alone: its path goes, so its backend has no next hop (packets to it
//! are dropped and counted), it is reported once per change, shown in `lb-ctl status`, and
//! looked up again with backoff; every other server keeps its path. Route, address, link and
//! neighbour changes arrive as netlink notifications; a slow full resync is the safety net.
//!
//! IPv6 real servers are resolved the same way, through IPv6 routes and NDP: the next hop of
//! a gatewayed route is the router's (usually link-local) address on the outgoing interface,
//! and a TUN6 tunnel source is an IPv6 address (`tunnel_sources` entries of the other family
//! are not used for it).

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::bail;
use rtnetlink::packet_route::route::RouteType;

use crate::{
    dataplane::{Paths, RsPath},
    model::{Forward, Model},
    neigh::{NeighTable, Netlink, Subscription},
};

/// How long `-a` waits for the kernel to resolve a new real server's MAC before answering
/// (packets to it are dropped and counted until it is resolved).
const RESOLVE_WAIT: Duration = Duration::from_millis(1500);
/// The first wait before looking an unresolved real server up again; it doubles up to
/// `RETRY_MAX`. Route notifications make it sooner when the route comes back.
pub(crate) const RETRY_FIRST: Duration = Duration::from_secs(1);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(30);
/// Every real server is looked up again this often, in case a notification was lost in a way
/// the kernel did not report.
const FULL_RESYNC: Duration = Duration::from_secs(60);

/// The wait before the next look-up of an unresolved real server, after `prev`.
pub(crate) fn next_backoff(prev: Option<Duration>) -> Duration {
    prev.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX))
}

/// Whether a change to the route for `prefix/len` may change how `addr` is reached: the
/// route covers it (a more specific route added, the one in use removed). Routes of the other
/// family never concern it.
pub(crate) fn route_concerns(prefix: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (prefix, addr) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            let len = u32::from(len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(p) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            let len = u32::from(len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(p) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Why a real server has no path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    /// A configuration IPVS users expect refused: reached through a router for DR, the
    /// director's own address, no tunnel source for TUN.
    Config(String),
    /// No route (removed, unreachable, blackhole): out until one appears.
    NoRoute(String),
    /// The kernel could not be asked: the last good path stays.
    Transient(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Config(s) | Fault::NoRoute(s) | Fault::Transient(s) => f.write_str(s),
        }
    }
}

/// One real server, as the resolver sees it.
#[derive(Clone, Debug)]
struct Server {
    /// The forwarding methods services use it with: its path must suit all of them.
    forwards: Vec<Forward>,
    /// The interface of its last good path.
    iface: String,
    /// Why it is not resolved (`None`: resolved).
    fault: Option<Fault>,
    /// When to look it up again, and the wait that led there.
    retry: Option<(Instant, Duration)>,
}

/// What the last `tick` found.
#[derive(Debug, Default)]
pub(crate) struct Tick {
    /// Routes, links, addresses or a neighbour's MAC changed: next hops cached in
    /// connections are stale.
    pub(crate) network_changed: bool,
    /// Some real server's path changed: backends must be rewritten.
    pub(crate) paths_changed: bool,
}

/// The resolver state a new model needs, computed aside: it replaces the current one only
/// when the data path took the model (`commit`), else it is dropped (`discard`).
pub(crate) struct Plan {
    pub(crate) paths: Paths,
    servers: BTreeMap<IpAddr, Server>,
    tunnel_sources: BTreeMap<String, IpAddr>,
    /// Managed neighbour entries made for it (removed again if it is discarded).
    created: Vec<(u32, IpAddr)>,
}

/// Routes and MACs of the real servers, kept fresh.
pub(crate) struct Resolver {
    nl: Netlink,
    events: Subscription,
    /// The last good path of every resolved real server (what the data path is given).
    pub(crate) paths: Paths,
    servers: BTreeMap<IpAddr, Server>,
    /// The kernel's usable neighbour entries, as last read or announced.
    neigh: NeighTable,
    /// Managed neighbour entries this daemon created (removed when unused or on a clean stop).
    created: HashSet<(u32, IpAddr)>,
    /// TUN outer source per director interface (`[director] tunnel_sources`).
    pub(crate) tunnel_sources: BTreeMap<String, IpAddr>,
    /// The interfaces the balancer runs on (NAT replies must arrive on one of them).
    attached: Vec<String>,
    next_full: Instant,
}

/// Whether forwarding of `addr`'s family is on for `iface` (NAT and TUN need it: the data
/// path's FIB lookup refuses to forward otherwise, as the kernel would).
fn forwarding(iface: &str, v6: bool) -> bool {
    let family = if v6 { "ipv6" } else { "ipv4" };
    std::fs::read_to_string(format!("/proc/sys/net/{family}/conf/{iface}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
}

/// The real servers of `model` with the forwarding methods each is used with.
fn needs(model: &Model) -> BTreeMap<IpAddr, Vec<Forward>> {
    let mut out: BTreeMap<IpAddr, Vec<Forward>> = BTreeMap::new();
    for d in model.services.values().flat_map(|e| e.dests.iter()) {
        let f = out.entry(d.addr).or_default();
        if !f.contains(&d.forward) {
            f.push(d.forward);
            f.sort_by_key(|f| f.code());
        }
    }
    out
}

/// Finds how to reach `addr` for `forwards`: route, next hop, interface, tunnel source (the
/// MAC is filled in from the neighbour table by the caller).
async fn lookup(
    nl: &Netlink,
    addr: IpAddr,
    forwards: &[Forward],
    tunnel_sources: &BTreeMap<String, IpAddr>,
) -> Result<(RsPath, String), Fault> {
    let route = match nl.route_lookup(addr).await {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => return Err(Fault::NoRoute(format!("no route to {addr}: {why}"))),
        Err(e) => return Err(Fault::Transient(format!("{e:#}"))),
    };
    if route.kind == RouteType::Local {
        return Err(Fault::Config(format!(
            "real server {addr} is an address of the director itself"
        )));
    }
    if forwards.contains(&Forward::Dr)
        && let Some(gw) = route.gateway
    {
        return Err(Fault::Config(format!(
            "real server {addr} is reached through the router {gw}: direct routing (-g) \
             needs the real servers on a network the director is attached to"
        )));
    }
    let link = nl
        .link_by_index(route.oif)
        .await
        .map_err(|e| Fault::Transient(format!("{e:#}")))?;
    let mut path = RsPath {
        ifindex: link.index,
        next_hop: route.gateway.unwrap_or(addr),
        smac: link.mac,
        dmac: None,
        tun_src: if addr.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        },
        mtu: route.mtu.unwrap_or(link.mtu).min(u32::from(u16::MAX)) as u16,
    };
    if forwards.contains(&Forward::Tun) {
        // The outer header is of the real server's family: a configured source of the other
        // family (a dual-stack director names one per interface) is not for it.
        path.tun_src = tunnel_sources
            .get(&link.name)
            .copied()
            .filter(|s| s.is_ipv6() == addr.is_ipv6())
            .or(route.prefsrc.filter(|s| s.is_ipv6() == addr.is_ipv6()))
            .ok_or_else(|| {
                Fault::Config(format!(
                    "no source address to tunnel to {addr} from {}: set `tunnel_source`",
                    link.name
                ))
            })?;
    }
    Ok((path, link.name))
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Resolver {
    /// A resolver subscribed to the kernel's network notifications.
    pub(crate) fn new(
        nl: Netlink,
        tunnel_sources: BTreeMap<String, IpAddr>,
        attached: Vec<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            nl,
            events: Subscription::new()?,
            paths: Paths::new(),
            servers: BTreeMap::new(),
            neigh: NeighTable::new(),
            created: HashSet::new(),
            tunnel_sources,
            attached,
            // The first tick reads the neighbour table in full.
            next_full: Instant::now(),
        })
    }

    /// Warns about a new real server the balancer will forward to without translating
    /// replies, or with forwarding off (as IPVS would not refuse either).
    fn warn_reach(&self, addr: IpAddr, forwards: &[Forward], iface: &str) {
        for &forward in forwards.iter().filter(|f| **f != Forward::Dr) {
            if !self.attached.iter().any(|a| a == iface) {
                log::warn!(
                    "real server {addr} ({}) is reached through {iface}, where the balancer does \
                     not run{}",
                    forward.label(),
                    if forward == Forward::Nat {
                        ": its replies will not be translated back"
                    } else {
                        ""
                    }
                );
            }
            for i in &self.attached {
                if !forwarding(i, addr.is_ipv6()) {
                    let (family, sysctl) = if addr.is_ipv6() {
                        ("IPv6", "net.ipv6.conf.all.forwarding")
                    } else {
                        ("IPv4", "net.ipv4.ip_forward")
                    };
                    log::warn!(
                        "{family} forwarding is off on {i}: {} forwarding needs {sysctl}=1, \
                         as with IPVS",
                        forward.label()
                    );
                }
            }
        }
    }

    /// Computes, without changing anything, the paths `model` needs with `tunnel_sources`
    /// (the current ones when `None`): real servers already known keep their state, new ones
    /// (or ones used with a new forwarding method, or TUN servers when the tunnel sources
    /// change) are looked up. Fails if a new server cannot be reached the way its forwarding
    /// method needs; a known server that is out (its route gone) does not fail it. With
    /// `adopted` (a restarted daemon taking over a running table) no server is new: one that
    /// cannot be resolved is out, not a reason to stop serving the others.
    pub(crate) async fn plan(
        &self,
        model: &Model,
        tunnel_sources: Option<&BTreeMap<String, IpAddr>>,
        adopted: bool,
    ) -> anyhow::Result<Plan> {
        let tunnel_sources = tunnel_sources.unwrap_or(&self.tunnel_sources).clone();
        let sources_changed = tunnel_sources != self.tunnel_sources;
        let now = Instant::now();
        let mut plan = Plan {
            paths: Paths::new(),
            servers: BTreeMap::new(),
            tunnel_sources,
            created: Vec::new(),
        };
        let mut fresh = Vec::new();
        for (addr, forwards) in needs(model) {
            let known = self
                .servers
                .get(&addr)
                .filter(|s| forwards.iter().all(|f| s.forwards.contains(f)));
            let redo = known.is_none() || (sources_changed && forwards.contains(&Forward::Tun));
            if let (Some(s), false) = (known, redo) {
                if let Some(p) = self.paths.get(&addr) {
                    plan.paths.insert(addr, *p);
                }
                plan.servers.insert(
                    addr,
                    Server {
                        forwards,
                        ..s.clone()
                    },
                );
                continue;
            }
            match lookup(&self.nl, addr, &forwards, &plan.tunnel_sources).await {
                Ok((mut path, iface)) => {
                    path.dmac = self.neigh.get(&(path.ifindex, path.next_hop)).copied();
                    if known.is_none() {
                        self.warn_reach(addr, &forwards, &iface);
                    }
                    plan.paths.insert(addr, path);
                    plan.servers.insert(
                        addr,
                        Server {
                            forwards,
                            iface,
                            fault: None,
                            retry: None,
                        },
                    );
                    fresh.push(addr);
                }
                // A new server, or a new configuration error (a tunnel source taken away
                // from a server that had a path): refused, nothing changes.
                Err(f)
                    if !adopted
                        && known
                            .is_none_or(|s| s.fault.is_none() && matches!(f, Fault::Config(_))) =>
                {
                    bail!("{f}")
                }
                // A known server that is out (or whose route went): it stays out, and is
                // retried.
                Err(f) => {
                    if matches!(f, Fault::Transient(_))
                        && let Some(p) = self.paths.get(&addr)
                    {
                        plan.paths.insert(addr, *p);
                    }
                    if known.is_none_or(|s| s.fault.as_ref() != Some(&f)) {
                        log::warn!("real server {addr}: {f}; out of service until it resolves");
                    }
                    let wait = next_backoff(known.and_then(|s| s.retry.map(|(_, d)| d)));
                    plan.servers.insert(
                        addr,
                        Server {
                            forwards,
                            iface: known.map(|s| s.iface.clone()).unwrap_or_default(),
                            fault: Some(f),
                            retry: Some((now + wait, wait)),
                        },
                    );
                }
            }
        }
        // Make the kernel resolve the new next hops and keep them fresh.
        for addr in &fresh {
            let p = plan.paths[addr];
            let hop = (p.ifindex, p.next_hop);
            if self.created.contains(&hop) || plan.created.contains(&hop) {
                continue;
            }
            match self.nl.ensure_managed(hop.0, hop.1).await {
                Ok(true) => plan.created.push(hop),
                Ok(false) => {}
                Err(e) => {
                    self.discard(plan).await;
                    return Err(e);
                }
            }
        }
        // Give the kernel a moment to resolve them, so the first SYN is not dropped.
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        while fresh.iter().any(|a| plan.paths[a].dmac.is_none()) {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let table = match self.nl.neighbours().await {
                Ok(t) => t,
                Err(e) => {
                    log::warn!("reading the neighbour table: {e:#}");
                    break;
                }
            };
            for a in &fresh {
                let p = plan.paths.get_mut(a).expect("fresh paths are in the plan");
                p.dmac = table.get(&(p.ifindex, p.next_hop)).copied();
            }
        }
        for a in &fresh {
            if plan.paths[a].dmac.is_none() {
                log::warn!("real server {a}: next hop not resolved yet");
            }
        }
        Ok(plan)
    }

    /// Makes `plan` the current state (the data path took it).
    pub(crate) async fn commit(&mut self, plan: Plan) {
        for (addr, p) in &plan.paths {
            if let Some(m) = p.dmac {
                self.neigh.insert((p.ifindex, p.next_hop), m);
            }
            if self.paths.get(addr) != Some(p) {
                log::debug!("real server {addr}: path {p:?}");
            }
        }
        self.paths = plan.paths;
        self.servers = plan.servers;
        self.tunnel_sources = plan.tunnel_sources;
        self.created.extend(plan.created);
        self.release_unused().await;
    }

    /// Drops `plan` (the data path refused it): removes the neighbour entries made for it.
    pub(crate) async fn discard(&self, plan: Plan) {
        for (ifindex, hop) in plan.created {
            let _ = self.nl.del_neigh(ifindex, hop).await;
        }
    }

    /// Removes the managed neighbour entries this daemon made that no path uses any more.
    async fn release_unused(&mut self) {
        let used: HashSet<(u32, IpAddr)> = self
            .paths
            .values()
            .map(|p| (p.ifindex, p.next_hop))
            .collect();
        let unused: Vec<_> = self.created.difference(&used).copied().collect();
        for (ifindex, hop) in unused {
            self.created.remove(&(ifindex, hop));
            let _ = self.nl.del_neigh(ifindex, hop).await;
        }
    }

    /// Forgets real servers `model` does not use; with `remove_entries`, also removes the
    /// neighbour entries made for them (a clean stop passes an empty model).
    pub(crate) async fn prune(&mut self, model: &Model, remove_entries: bool) {
        let used = needs(model);
        self.servers.retain(|a, _| used.contains_key(a));
        self.paths.retain(|a, _| used.contains_key(a));
        if remove_entries {
            self.release_unused().await;
        }
    }

    /// Follows what changed in the network since the last tick: looks up again the real
    /// servers a route change concerns and those due for a retry (every one after a link or
    /// address change, a lost notification, or `FULL_RESYNC`), each on its own, and updates
    /// the MACs neighbour changes announce.
    pub(crate) async fn tick(&mut self) -> Tick {
        let now = Instant::now();
        let ev = self.events.take();
        let full = ev.everything || now >= self.next_full;
        let mut out = Tick {
            network_changed: ev.routes_changed,
            paths_changed: false,
        };
        // A neighbour's MAC that changed (or went) also makes cached next hops stale; states
        // that keep the MAC (reachable, stale, probe…) do not.
        if full {
            self.next_full = now + FULL_RESYNC;
            match self.nl.neighbours().await {
                Ok(t) => {
                    out.network_changed |= t != self.neigh;
                    self.neigh = t;
                }
                Err(e) => log::warn!("reading the neighbour table: {e:#}"),
            }
        } else {
            for (k, mac) in ev.neigh {
                let old = match mac {
                    Some(m) => self.neigh.insert(k, m),
                    None => self.neigh.remove(&k),
                };
                out.network_changed |= old != mac;
            }
        }
        let todo: Vec<IpAddr> = self
            .servers
            .iter()
            .filter(|(a, s)| {
                full || s.retry.is_some_and(|(t, _)| t <= now)
                    || ev.routes.iter().any(|&(p, l)| {
                        route_concerns(p, l, **a)
                            || self
                                .paths
                                .get(a)
                                .is_some_and(|x| route_concerns(p, l, x.next_hop))
                    })
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in todo {
            out.paths_changed |= self.relookup(addr, now).await;
        }
        for (addr, p) in self.paths.iter_mut() {
            let mac = self.neigh.get(&(p.ifindex, p.next_hop)).copied();
            if mac != p.dmac {
                log::info!(
                    "real server {addr}: MAC {}",
                    mac.map_or("unresolved".into(), |m| fmt_mac(&m))
                );
                p.dmac = mac;
                out.paths_changed = true;
            }
        }
        if out.paths_changed {
            self.release_unused().await;
        }
        out
    }

    /// Looks one real server up again; returns whether its path changed.
    async fn relookup(&mut self, addr: IpAddr, now: Instant) -> bool {
        let Some(forwards) = self.servers.get(&addr).map(|s| s.forwards.clone()) else {
            return false;
        };
        let found = lookup(&self.nl, addr, &forwards, &self.tunnel_sources).await;
        let s = self.servers.get_mut(&addr).expect("looked up above");
        match found {
            Ok((mut path, iface)) => {
                path.dmac = self.neigh.get(&(path.ifindex, path.next_hop)).copied();
                if s.fault.is_some() {
                    log::info!(
                        "real server {addr}: resolved again, through {iface} via {}",
                        path.next_hop
                    );
                }
                s.fault = None;
                s.retry = None;
                s.iface = iface;
                let old = self.paths.insert(addr, path);
                let hop = (path.ifindex, path.next_hop);
                let moved = old.map(|o| (o.ifindex, o.next_hop)) != Some(hop);
                // No MAC: the entry may be gone although we created it (a link that lost
                // carrier flushes its neighbours, managed ones too): create it again, or
                // the server stays unreachable until the next full resync (VRRP's link-down
                // failback found this).
                if (moved && !self.created.contains(&hop)) || path.dmac.is_none() {
                    match self.nl.ensure_managed(hop.0, hop.1).await {
                        Ok(true) => {
                            self.created.insert(hop);
                        }
                        Ok(false) => {}
                        Err(e) => log::warn!("real server {addr}: {e:#}"),
                    }
                }
                old != Some(path)
            }
            Err(f) => {
                let wait = next_backoff(s.retry.map(|(_, d)| d));
                if s.fault.as_ref() != Some(&f) {
                    log::warn!(
                        "real server {addr}: {f}; {}, looked up again on route changes and \
                         with backoff (up to {} s)",
                        if matches!(f, Fault::Transient(_)) {
                            "keeping its last path"
                        } else {
                            "out of service until it resolves"
                        },
                        RETRY_MAX.as_secs()
                    );
                }
                s.retry = Some((now + wait, wait));
                let transient = matches!(f, Fault::Transient(_));
                s.fault = Some(f);
                !transient && self.paths.remove(&addr).is_some()
            }
        }
    }

    /// Per real server: resolved (interface, next hop, MAC) or not (reason, next retry), for
    /// `lb-ctl status`.
    pub(crate) fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        self.servers
            .iter()
            .map(|(addr, s)| {
                let path = self.paths.get(addr);
                let mut v = serde_json::json!({
                    "address": addr.to_string(),
                    "state": if s.fault.is_none() { "resolved" } else { "unresolved" },
                    "interface": path.map(|_| s.iface.clone()),
                    "next_hop": path.map(|p| p.next_hop.to_string()),
                    "mac": path.and_then(|p| p.dmac).map(|m| fmt_mac(&m)),
                    "forward": s.forwards.iter().map(|f| f.label()).collect::<Vec<_>>(),
                });
                if s.forwards.contains(&Forward::Tun) {
                    v["tunnel_source"] = path.map(|p| p.tun_src.to_string()).into();
                }
                if let Some(f) = &s.fault {
                    v["reason"] = f.to_string().into();
                }
                if let Some((at, _)) = s.retry {
                    v["next_retry_ms"] =
                        (at.saturating_duration_since(now).as_millis() as u64).into();
                }
                v
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_a_second_and_doubles_to_thirty() {
        let mut d = None;
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                let w = next_backoff(d);
                d = Some(w);
                w.as_secs()
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_route_concerns_the_addresses_it_covers() {
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(route_concerns(ip("192.0.2.0"), 24, a));
        assert!(route_concerns(ip("192.0.2.10"), 32, a));
        assert!(route_concerns(ip("192.0.0.0"), 16, a));
        assert!(
            route_concerns(Ipv4Addr::UNSPECIFIED.into(), 0, a),
            "a default route"
        );
        assert!(!route_concerns(ip("192.0.2.11"), 32, a));
        assert!(!route_concerns(ip("198.51.100.0"), 24, a));
        assert!(!route_concerns(ip("198.18.0.1"), 32, a), "churn elsewhere");
        assert!(!route_concerns(ip("192.0.2.128"), 25, a));
        // IPv6: prefixes of 128 bits, and never across families.
        let b = ip("2001:db8:0:1::11");
        assert!(route_concerns(ip("2001:db8:0:1::"), 64, b));
        assert!(route_concerns(ip("2001:db8::"), 32, b));
        assert!(route_concerns(ip("2001:db8:0:1::11"), 128, b));
        assert!(route_concerns(ip("::"), 0, b), "an IPv6 default route");
        assert!(!route_concerns(ip("2001:db8:0:2::"), 64, b));
        assert!(!route_concerns(ip("2001:db8:0:1::12"), 128, b));
        assert!(
            !route_concerns(ip("0.0.0.0"), 0, b),
            "an IPv4 default route"
        );
        assert!(!route_concerns(ip("::"), 0, a), "an IPv6 default route");
    }

    #[test]
    fn needs_lists_each_server_once_with_every_method() {
        use crate::model::{DestConfig, Op, SchedFlags, Scheduler, ServiceConfig, ServiceKey};
        let svc = |port| ServiceConfig {
            key: ServiceKey::tcp(Ipv4Addr::new(203, 0, 113, 1), port),
            scheduler: Scheduler::Rr,
            sched_flags: SchedFlags::default(),
            persistence: None,
            ops: false,
            tunnel_source: None,
        };
        let rs = |last| IpAddr::from(Ipv4Addr::new(192, 0, 2, last));
        let mut m = Model::default();
        m.apply_all(&[
            Op::AddService(svc(80)),
            Op::AddService(svc(443)),
            Op::AddDest(svc(80).key, DestConfig::new(rs(11), 80, Forward::Tun, 1)),
            Op::AddDest(svc(80).key, DestConfig::new(rs(12), 80, Forward::Dr, 1)),
            Op::AddDest(svc(443).key, DestConfig::new(rs(11), 443, Forward::Dr, 1)),
            Op::AddDest(svc(443).key, DestConfig::new(rs(12), 443, Forward::Dr, 1)),
        ])
        .unwrap();
        let n = needs(&m);
        assert_eq!(
            n.into_iter().collect::<Vec<_>>(),
            [
                (rs(11), vec![Forward::Dr, Forward::Tun]),
                (rs(12), vec![Forward::Dr])
            ]
        );
    }
}
