//! How the director reaches each real server: routes, next hops, MACs and tunnel sources,
//! found with netlink and kept fresh for the data path.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::bail;

use crate::{
    dataplane::{Paths, RsPath},
    model::{Forward, Model},
    neigh::Netlink,
};

/// How long `-a` waits for the kernel to resolve a new real server's MAC before answering
/// (packets to it are dropped and counted until it is resolved).
const RESOLVE_WAIT: Duration = Duration::from_millis(1500);

/// Routes and MACs of the real servers, kept fresh.
pub(crate) struct Resolver {
    pub(crate) nl: Netlink,
    pub(crate) paths: Paths,
    /// (real server, forwarding method) pairs whose path was checked for that method.
    pub(crate) checked: HashSet<(Ipv4Addr, Forward)>,
    /// Managed neighbour entries this daemon created (removed on a clean stop).
    pub(crate) created: HashSet<(u32, Ipv4Addr)>,
    /// Fingerprints of the routing and neighbour tables at the last tick: when either
    /// changes, next hops cached in the data path are looked up again.
    pub(crate) fingerprint: (u64, u64),
    /// TUN outer source per director interface (`[director] tunnel_sources`).
    pub(crate) tunnel_sources: BTreeMap<String, Ipv4Addr>,
    /// The interfaces the balancer runs on (NAT replies must arrive on one of them).
    pub(crate) attached: Vec<String>,
}

/// Whether IPv4 forwarding is on for `iface` (NAT and TUN need it: the data path's FIB lookup
/// refuses to forward otherwise, as the kernel would).
fn forwarding(iface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
}

impl Resolver {
    /// Finds how to reach every real server of `model` not seen before (route, next hop,
    /// interface, tunnel source) and makes the kernel resolve the next hops; fails, changing
    /// nothing, if one cannot be reached the way its forwarding method needs.
    pub(crate) async fn resolve(&mut self, model: &Model) -> anyhow::Result<()> {
        let mut todo: Vec<(Ipv4Addr, Forward)> = model
            .services
            .values()
            .flat_map(|e| e.dests.iter().map(|d| (d.addr, d.forward)))
            .filter(|k| !self.checked.contains(k))
            .collect();
        todo.sort_by_key(|(a, f)| (*a, f.code()));
        todo.dedup();
        let mut found: Vec<(Ipv4Addr, RsPath)> = Vec::new();
        for &(addr, forward) in &todo {
            let route = self.nl.route_get(addr).await?;
            if route.kind == rtnetlink::packet_route::route::RouteType::Local {
                bail!("real server {addr} is an address of the director itself");
            }
            if forward == Forward::Dr
                && let Some(gw) = route.gateway
            {
                bail!(
                    "real server {addr} is reached through the router {gw}: direct routing (-g) \
                     needs the real servers on a network the director is attached to"
                );
            }
            let link = self.nl.link_by_index(route.oif).await?;
            let mtu = route.mtu.unwrap_or(link.mtu).min(u32::from(u16::MAX)) as u16;
            let mut path = self.paths.get(&addr).copied().unwrap_or(RsPath {
                ifindex: link.index,
                next_hop: route.gateway.unwrap_or(addr),
                smac: link.mac,
                dmac: None,
                tun_src: Ipv4Addr::UNSPECIFIED,
                mtu,
            });
            if forward == Forward::Tun && path.tun_src.is_unspecified() {
                path.tun_src = self
                    .tunnel_sources
                    .get(&link.name)
                    .copied()
                    .or(route.prefsrc)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "no source address to tunnel to {addr} from {}: set `tunnel_source`",
                            link.name
                        )
                    })?;
            }
            if forward != Forward::Dr {
                if !self.attached.contains(&link.name) {
                    log::warn!(
                        "real server {addr} ({}) is reached through {}, where the balancer does \
                         not run{}",
                        forward.label(),
                        link.name,
                        if forward == Forward::Nat {
                            ": its replies will not be translated back"
                        } else {
                            ""
                        }
                    );
                }
                for i in &self.attached {
                    if !forwarding(i) {
                        log::warn!(
                            "IPv4 forwarding is off on {i}: {} forwarding needs \
                             net.ipv4.ip_forward=1, as with IPVS",
                            forward.label()
                        );
                    }
                }
            }
            found.push((addr, path));
        }
        for (addr, p) in &found {
            if self.nl.ensure_managed(p.ifindex, p.next_hop).await? {
                self.created.insert((p.ifindex, p.next_hop));
            }
            self.paths.insert(*addr, *p);
        }
        self.checked.extend(todo.iter().copied());
        // Give the kernel a moment to resolve them, so the first SYN is not dropped.
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        loop {
            self.refresh().await?;
            let missing = found
                .iter()
                .any(|(a, _)| self.paths.get(a).is_some_and(|p| p.dmac.is_none()));
            if !missing || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (a, _) in &found {
            if self.paths.get(a).is_some_and(|p| p.dmac.is_none()) {
                log::warn!("real server {a}: next hop not resolved yet");
            }
        }
        Ok(())
    }

    /// Whether routes or neighbours changed since the last call; on a route change every
    /// path is found again.
    pub(crate) async fn network_changed(&mut self) -> anyhow::Result<bool> {
        use std::hash::{Hash, Hasher};
        let routes = self.nl.routes_fingerprint().await?;
        let mut neigh: Vec<_> = self.nl.neighbours().await?.into_iter().collect();
        neigh.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        neigh.hash(&mut h);
        let now = (routes, h.finish());
        let changed = now != self.fingerprint;
        if now.0 != self.fingerprint.0 {
            self.paths.clear();
            self.checked.clear();
        }
        self.fingerprint = now;
        Ok(changed)
    }

    /// Re-reads the neighbour table into the paths. Returns whether anything changed.
    pub(crate) async fn refresh(&mut self) -> anyhow::Result<bool> {
        let table = self.nl.neighbours().await?;
        let mut changed = false;
        for (addr, p) in self.paths.iter_mut() {
            let mac = table.get(&(p.ifindex, p.next_hop)).copied();
            if mac != p.dmac {
                log::info!(
                    "real server {addr}: MAC {}",
                    mac.map_or("unresolved".into(), |m| fmt_mac(&m))
                );
                p.dmac = mac;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Forgets real servers no service uses any more.
    pub(crate) async fn prune(&mut self, model: &Model, remove_entries: bool) {
        let used: HashSet<Ipv4Addr> = model
            .services
            .values()
            .flat_map(|e| e.dests.iter().map(|d| d.addr))
            .collect();
        let stale: Vec<Ipv4Addr> = self
            .paths
            .keys()
            .filter(|a| !used.contains(a))
            .copied()
            .collect();
        self.checked.retain(|(a, _)| used.contains(a));
        for a in stale {
            let Some(p) = self.paths.remove(&a) else {
                continue;
            };
            // A next hop (a gateway) may serve other real servers still.
            let shared = self
                .paths
                .values()
                .any(|o| o.ifindex == p.ifindex && o.next_hop == p.next_hop);
            if remove_entries && !shared && self.created.remove(&(p.ifindex, p.next_hop)) {
                let _ = self.nl.del_neigh(p.ifindex, p.next_hop).await;
            }
        }
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
