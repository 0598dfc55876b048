//! Netlink: interfaces, routes and neighbours — how the director reaches each real server.
//!
//! For a DR real server the data path needs the outgoing interface, its MAC and the real
//! server's MAC. The route says which interface (and that the server is on-link); a kernel
//! "managed" neighbour entry (`NTF_EXT_MANAGED`, Linux ≥ 5.16, made for XDP balancers) makes
//! the kernel resolve the MAC and keep it fresh by itself; the daemon reads the neighbour table
//! back periodically and rewrites backends whose MAC changed.

use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, anyhow, bail};
use futures_util::TryStreamExt;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        link::{LinkAttribute, LinkMessage},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage,
            NeighbourState,
        },
        route::{RouteAddress, RouteAttribute, RouteMetric, RouteType},
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
    pub gateway: Option<Ipv4Addr>,
    /// The source address the kernel would use.
    pub prefsrc: Option<Ipv4Addr>,
    pub kind: RouteType,
    /// The route's own MTU (`ip route … mtu N`), if it has one.
    pub mtu: Option<u32>,
}

/// A resolved neighbour: (interface index, address) → MAC.
pub type NeighTable = HashMap<(u32, Ipv4Addr), [u8; 6]>;

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
    pub async fn route_get(&self, dst: Ipv4Addr) -> anyhow::Result<Route> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let reply = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_next()
            .await
            .with_context(|| format!("no route to {dst}"))?
            .ok_or_else(|| anyhow!("no route to {dst}"))?;
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
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(g),
                RouteAttribute::PrefSource(RouteAddress::Inet(s)) => route.prefsrc = Some(s),
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
        if route.oif == 0 {
            bail!("the route to {dst} has no output interface");
        }
        Ok(route)
    }

    /// A fingerprint of every IPv4 route: it changes when any route does.
    pub async fn routes_fingerprint(&self) -> anyhow::Result<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await.context("dumping routes")? {
            format!("{:?}", r.header).hash(&mut h);
            format!("{:?}", r.attributes).hash(&mut h);
        }
        Ok(h.finish())
    }

    /// The output interface of the main table's IPv4 default route, if there is one.
    pub async fn default_route_oif(&self) -> anyhow::Result<Option<u32>> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
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
    pub async fn ensure_managed(&self, ifindex: u32, addr: Ipv4Addr) -> anyhow::Result<bool> {
        let mut req = self.handle.neighbours().add(ifindex, addr.into());
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
    pub async fn del_neigh(&self, ifindex: u32, addr: Ipv4Addr) -> anyhow::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .with_context(|| format!("deleting the neighbour entry for {addr}"))
    }

    /// Every IPv4 neighbour with a usable MAC.
    pub async fn neighbours(&self) -> anyhow::Result<NeighTable> {
        let mut out = NeighTable::new();
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(msg) = stream.try_next().await.context("dumping neighbours")? {
            let usable = matches!(
                msg.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            );
            if !usable {
                continue;
            }
            let mut dst = None;
            let mut mac = None;
            for a in &msg.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
                    _ => {}
                }
            }
            if let (Some(d), Some(m)) = (dst, mac) {
                out.insert((msg.header.ifindex, d), m);
            }
        }
        Ok(out)
    }
}
