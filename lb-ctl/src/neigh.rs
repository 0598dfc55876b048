//! Netlink: interfaces, routes and neighbours — how the director reaches each real server.
//!
//! For a DR real server the data path needs the outgoing interface, its MAC and the real
//! server's MAC. The route says which interface (and that the server is on-link); a kernel
//! "managed" neighbour entry (`NTF_EXT_MANAGED`, Linux ≥ 5.16, made for XDP balancers) makes
//! the kernel resolve the MAC and keep it fresh by itself. Changes to links, addresses, routes
//! and neighbours arrive as netlink notifications (`subscribe`), so the daemon re-reads only
//! what changed instead of dumping the tables.
//!
//! Both families: IPv4 real servers through ARP entries and IPv4 routes, IPv6 ones through
//! NDP entries and IPv6 routes (a managed entry makes the kernel send the neighbour
//! solicitations and keep the entry fresh, as ARP does for IPv4).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use anyhow::{Context, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage,
            NeighbourState,
        },
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType},
    },
};

/// An interface of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// Where packets to an address go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub oif: u32,
    /// Next hop when the destination is not on-link.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would use.
    pub prefsrc: Option<IpAddr>,
    pub kind: RouteType,
    /// The route's own MTU (`ip route … mtu N`), if it has one.
    pub mtu: Option<u32>,
}

/// A resolved neighbour: (interface index, address) → MAC.
pub type NeighTable = HashMap<(u32, IpAddr), [u8; 6]>;

/// A neighbour entry that changed: (interface index, address), and its MAC when usable.
pub type NeighChange = ((u32, IpAddr), Option<[u8; 6]>);

/// What a neighbour message says: (interface, address) and the MAC when the entry is usable
/// (`None`: incomplete, failed or deleted — packets to it cannot be addressed).
fn neigh_entry(msg: &NeighbourMessage, deleted: bool) -> Option<NeighChange> {
    let usable = !deleted
        && matches!(
            msg.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
    let mut dst = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some((*d).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => dst = Some((*d).into()),
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
            _ => {}
        }
    }
    Some(((msg.header.ifindex, dst?), mac.filter(|_| usable)))
}

/// More route changes than this between two reads count as "everything changed": under heavy
/// churn one full re-resolution is cheaper than remembering every prefix.
const MAX_EVENTS: usize = 4096;

/// Network changes the kernel announced since they were last taken.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetEvents {
    /// A route, link or address changed (or a notification was lost): next hops cached in
    /// connections are stale.
    pub routes_changed: bool,
    /// Every real server must be looked up again: a link or address changed (the kernel
    /// removes the routes that depended on it without announcing each), a notification was
    /// lost (`ENOBUFS`), or there were too many route changes to list.
    pub everything: bool,
    /// Destination prefixes of IPv4 and IPv6 routes added, changed or removed.
    pub routes: Vec<(IpAddr, u8)>,
    /// Neighbour entries that changed, with their MAC when usable.
    pub neigh: Vec<NeighChange>,
}

impl NetEvents {
    fn record(&mut self, payload: NetlinkPayload<RouteNetlinkMessage>) {
        let neigh = |n: &NeighbourMessage, deleted| {
            matches!(n.header.family, AddressFamily::Inet | AddressFamily::Inet6)
                .then(|| neigh_entry(n, deleted))
                .flatten()
        };
        match payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r),
            ) => {
                if !matches!(
                    r.header.address_family,
                    AddressFamily::Inet | AddressFamily::Inet6
                ) {
                    return;
                }
                self.routes_changed = true;
                if self.routes.len() >= MAX_EVENTS {
                    self.everything = true;
                    self.routes = Vec::new();
                } else if !self.everything {
                    self.routes.push(route_prefix(&r));
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                if let Some(e) = neigh(&n, false) {
                    self.neigh.push(e);
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                if let Some(e) = neigh(&n, true) {
                    self.neigh.push(e);
                }
            }
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewLink(_)
                | RouteNetlinkMessage::DelLink(_)
                | RouteNetlinkMessage::NewAddress(_)
                | RouteNetlinkMessage::DelAddress(_),
            ) => {
                self.routes_changed = true;
                self.everything = true;
            }
            // ENOBUFS: the kernel dropped notifications; only a full look-up is safe now.
            NetlinkPayload::Overrun(_) => {
                self.routes_changed = true;
                self.everything = true;
            }
            _ => {}
        }
        // Neighbour churn on a busy segment: past the bound, one full re-read instead.
        if self.neigh.len() > MAX_EVENTS {
            self.everything = true;
            self.neigh = Vec::new();
        }
    }
}

/// The destination prefix a route message is about (0.0.0.0/0 or ::/0 for a default route).
fn route_prefix(r: &RouteMessage) -> (IpAddr, u8) {
    let default = if r.header.address_family == AddressFamily::Inet6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let dst = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(IpAddr::V4(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
            _ => None,
        })
        .unwrap_or(default);
    (dst, r.header.destination_prefix_length)
}

/// Netlink notifications, gathered by a background task until taken.
#[derive(Clone)]
pub struct Subscription {
    events: Arc<Mutex<NetEvents>>,
}

impl Subscription {
    /// Subscribes to IPv4 and IPv6 route and address, link and neighbour notifications (the
    /// neighbour group carries ARP and NDP entries alike). A socket of its
    /// own, apart from the one requests use: when notifications overflow its buffer the
    /// kernel drops them (and says so: `ENOBUFS`), and a request's answer must never be what
    /// gets dropped.
    pub fn new() -> anyhow::Result<Self> {
        use rtnetlink::constants::{
            RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE,
            RTMGRP_LINK, RTMGRP_NEIGH,
        };
        let (mut conn, handle, mut messages) =
            rtnetlink::new_connection().context("opening a netlink socket for notifications")?;
        let socket = rtnetlink::sys::AsyncSocket::socket_mut(conn.socket_mut());
        socket
            .bind(&rtnetlink::sys::SocketAddr::new(
                0,
                RTMGRP_LINK
                    | RTMGRP_NEIGH
                    | RTMGRP_IPV4_ROUTE
                    | RTMGRP_IPV4_IFADDR
                    | RTMGRP_IPV6_ROUTE
                    | RTMGRP_IPV6_IFADDR,
            ))
            .context("subscribing to route, link and neighbour notifications")?;
        // Room for a burst (a routing daemon installing a full table); past it, ENOBUFS
        // triggers a full resync, which is correct, just slower.
        let _ = socket.set_rx_buf_sz(4 << 20);
        tokio::spawn(conn);
        let events = Arc::new(Mutex::new(NetEvents::default()));
        let shared = events.clone();
        tokio::spawn(async move {
            // The connection ends when its last handle goes: keep one for as long as we read.
            let _handle = handle;
            while let Some((msg, _)) = messages.next().await {
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(msg.payload);
            }
            log::error!("the netlink notification socket closed: only periodic resyncs now");
        });
        Ok(Self { events })
    }

    /// The changes announced since the last call.
    pub fn take(&self) -> NetEvents {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A netlink connection (runs on the current tokio runtime).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}

fn link_from(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
    };
    for a in msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) => link.mac = mac_of(&a).unwrap_or([0; 6]),
            LinkAttribute::Mtu(m) => link.mtu = m,
            _ => {}
        }
    }
    link
}

impl Netlink {
    pub fn new() -> anyhow::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The raw rtnetlink handle, for requests this module does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn link_by_name(&self, name: &str) -> anyhow::Result<Link> {
        let msg = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .with_context(|| format!("no interface named {name}"))?
            .ok_or_else(|| anyhow!("no interface named {name}"))?;
        Ok(link_from(msg))
    }

    pub async fn link_by_index(&self, index: u32) -> anyhow::Result<Link> {
        let msg = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .with_context(|| format!("no interface with index {index}"))?
            .ok_or_else(|| anyhow!("no interface with index {index}"))?;
        Ok(link_from(msg))
    }

    /// The kernel's route to `dst` (`ip route get`).
    pub async fn route_get(&self, dst: IpAddr) -> anyhow::Result<Route> {
        match self.route_lookup(dst).await? {
            Ok(r) => Ok(r),
            Err(why) => bail!("no route to {dst}: {why}"),
        }
    }

    /// The kernel's route to `dst`: `Ok(Err(why))` when the kernel answers that there is none
    /// (unreachable, blackhole, no output interface), `Err` when it could not be asked.
    pub async fn route_lookup(&self, dst: IpAddr) -> anyhow::Result<Result<Route, String>> {
        let msg = match dst {
            IpAddr::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d, 32)
                .build(),
            IpAddr::V6(d) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d, 128)
                .build(),
        };
        let reply = match self.handle.route().get(msg).execute().try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Err("the kernel returned no route".into())),
            Err(rtnetlink::Error::NetlinkError(e)) => {
                let code = e.raw_code().unsigned_abs() as i32;
                return Ok(Err(std::io::Error::from_raw_os_error(code).to_string()));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("asking the kernel for a route to {dst}"));
            }
        };
        let mut route = Route {
            oif: 0,
            gateway: None,
            prefsrc: None,
            kind: reply.header.kind,
            mtu: None,
        };
        for a in reply.attributes {
            match a {
                RouteAttribute::Oif(i) => route.oif = i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(g.into()),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => route.gateway = Some(g.into()),
                RouteAttribute::PrefSource(RouteAddress::Inet(s)) => route.prefsrc = Some(s.into()),
                RouteAttribute::PrefSource(RouteAddress::Inet6(s)) => {
                    route.prefsrc = Some(s.into())
                }
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        if let RouteMetric::Mtu(v) = m {
                            route.mtu = Some(v);
                        }
                    }
                }
                _ => {}
            }
        }
        if matches!(
            route.kind,
            RouteType::Unreachable | RouteType::BlackHole | RouteType::Prohibit | RouteType::Throw
        ) {
            return Ok(Err(format!("the route is of type {:?}", route.kind)));
        }
        if route.oif == 0 {
            return Ok(Err("the route has no output interface".into()));
        }
        Ok(Ok(route))
    }

    /// The output interface of the main table's IPv4 (or, with `v6`, IPv6) default route, if
    /// there is one.
    pub async fn default_route_oif(&self, v6: bool) -> anyhow::Result<Option<u32>> {
        let msg = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut routes = self.handle.route().get(msg).execute();
        while let Some(r) = routes.try_next().await.context("dumping routes")? {
            if r.header.destination_prefix_length != 0 || r.header.table != 254 {
                continue;
            }
            for a in r.attributes {
                if let RouteAttribute::Oif(i) = a {
                    return Ok(Some(i));
                }
            }
        }
        Ok(None)
    }

    /// Makes sure the kernel keeps `addr` on `ifindex` resolved: adds a managed neighbour
    /// entry unless an entry exists already. Returns whether it created one.
    pub async fn ensure_managed(&self, ifindex: u32, addr: IpAddr) -> anyhow::Result<bool> {
        let mut req = self.handle.neighbours().add(ifindex, addr);
        let m = req.message_mut();
        // A managed entry starts unresolved; the kernel probes it at once and keeps it fresh.
        m.header.state = NeighbourState::None;
        m.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        match req.execute().await {
            Ok(()) => Ok(true),
            // EEXIST: an entry is there (learnt, static or ours from before): leave it.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(false),
            Err(e) => Err(e).with_context(|| format!("adding a managed neighbour for {addr}")),
        }
    }

    /// Removes the neighbour entry for `addr` on `ifindex` (one we created).
    pub async fn del_neigh(&self, ifindex: u32, addr: IpAddr) -> anyhow::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.ifindex = ifindex;
        let (family, dst) = match addr {
            IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
        };
        msg.header.family = family;
        msg.attributes.push(NeighbourAttribute::Destination(dst));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .with_context(|| format!("deleting the neighbour entry for {addr}"))
    }

    /// Every IPv4 (ARP) and IPv6 (NDP) neighbour with a usable MAC.
    pub async fn neighbours(&self) -> anyhow::Result<NeighTable> {
        let mut out = NeighTable::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut stream = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute();
            while let Some(msg) = stream.try_next().await.context("dumping neighbours")? {
                if let Some((k, Some(mac))) = neigh_entry(&msg, false) {
                    out.insert(k, mac);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteHeader;

    fn route(dst: Ipv4Addr, len: u8) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut r = RouteMessage::default();
        r.header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: len,
            ..r.header
        };
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r))
    }

    fn neigh(
        addr: Ipv4Addr,
        state: NeighbourState,
        deleted: bool,
    ) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet;
        n.header.ifindex = 3;
        n.header.state = state;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        NetlinkPayload::InnerMessage(if deleted {
            RouteNetlinkMessage::DelNeighbour(n)
        } else {
            RouteNetlinkMessage::NewNeighbour(n)
        })
    }

    #[test]
    fn route_notifications_are_kept_as_prefixes_until_too_many() {
        let mut ev = NetEvents::default();
        ev.record(route(Ipv4Addr::new(192, 0, 2, 13), 32));
        assert_eq!(
            ev,
            NetEvents {
                routes_changed: true,
                routes: vec![(Ipv4Addr::new(192, 0, 2, 13).into(), 32)],
                ..NetEvents::default()
            }
        );
        for i in 0..MAX_EVENTS as u32 {
            ev.record(route(Ipv4Addr::from(0xc612_0000 + i), 32));
        }
        assert!(ev.everything, "past {MAX_EVENTS} prefixes: a full resync");
        assert!(ev.routes.is_empty());
    }

    #[test]
    fn a_lost_notification_asks_for_a_full_resync() {
        let mut ev = NetEvents::default();
        ev.record(NetlinkPayload::Overrun(Vec::new()));
        assert!(ev.everything && ev.routes_changed, "{ev:?}");
    }

    #[test]
    fn neighbour_notifications_carry_the_mac_only_when_usable() {
        let a4 = Ipv4Addr::new(192, 0, 2, 11);
        let a = IpAddr::from(a4);
        let mac = Some([2, 0, 0, 0, 0, 1]);
        let mut ev = NetEvents::default();
        ev.record(neigh(a4, NeighbourState::Reachable, false));
        ev.record(neigh(a4, NeighbourState::Failed, false));
        ev.record(neigh(a4, NeighbourState::Stale, false));
        ev.record(neigh(a4, NeighbourState::Reachable, true));
        assert_eq!(
            ev.neigh,
            [((3, a), mac), ((3, a), None), ((3, a), mac), ((3, a), None)]
        );
        assert!(!ev.routes_changed && !ev.everything, "{ev:?}");
    }

    /// NDP entries and IPv6 routes are followed as ARP entries and IPv4 routes are.
    #[test]
    fn ipv6_neighbours_and_routes_are_recorded() {
        let a: Ipv6Addr = "2001:db8::11".parse().unwrap();
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet6;
        n.header.ifindex = 4;
        n.header.state = NeighbourState::Reachable;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 2]));
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet6;
        r.header.destination_prefix_length = 64;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(
                "2001:db8:1::".parse().unwrap(),
            )));
        let mut default = RouteMessage::default();
        default.header.address_family = AddressFamily::Inet6;
        let mut ev = NetEvents::default();
        ev.record(NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewNeighbour(n),
        ));
        ev.record(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(
            r,
        )));
        ev.record(NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(
            default,
        )));
        assert_eq!(ev.neigh, [((4, IpAddr::V6(a)), Some([2, 0, 0, 0, 0, 2]))]);
        assert_eq!(
            ev.routes,
            [
                ("2001:db8:1::".parse().unwrap(), 64),
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
            ]
        );
        assert!(ev.routes_changed && !ev.everything, "{ev:?}");
    }
}
