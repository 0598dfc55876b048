//! Scale-out (issue 14): several active directors behind the routers' ECMP, each VIP
//! announced by a BGP daemon (BIRD, FRR) that imports a kernel routing table this module
//! keeps. The daemon puts one route per VIP it is ready to serve into that table and takes
//! it out the moment it stops being ready; the BGP daemon turns that into announcements and
//! withdrawals. No BGP is spoken here: routing is left to a proven daemon.
//!
//! ```toml
//! [announce]
//! table = 100                 # kernel routing table the BGP daemon imports (required)
//! protocol = 201              # the routes' protocol id (`ip route … proto 201`)
//! vips = ["192.0.2.100"]      # default: every VIP of a configured service
//! interface = "eth0"          # the routes' device (default: the first balanced interface)
//! ```
//!
//! A VIP is ready while the data path is attached, the director is not draining, and some
//! service on it has a real server that may take new connections (weight > 0 after health
//! checks, a sorry server included).

pub mod digest;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context;
use futures_util::TryStreamExt;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
};
use serde::Deserialize;
use toml::Spanned;

use crate::config::{Problem, ip, ranged, valid_ifname};
use crate::model::Model;

/// How long `lb-ctl drain` (and SIGUSR1) waits for connections to end by default.
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Seconds between two reads of the announce table (see [`Announcer::resync`]).
pub const RESYNC: u64 = 10;

/// The longest drain `lb-ctl drain --timeout` asks for (a day; IPVS's TCP timeout is 15 min).
pub const MAX_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(86400);

/// `[announce]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    pub table: u32,
    pub protocol: u8,
    /// `None`: every VIP of a configured service.
    pub vips: Option<Vec<IpAddr>>,
    pub interface: Option<String>,
}

/// Default protocol id of the announce routes: unassigned in `/etc/iproute2/rt_protos`, so
/// it is nobody else's (BIRD is 12, zebra 11, keepalived 18).
pub const DEFAULT_PROTOCOL: u8 = 201;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawAnnounce {
    table: Option<Spanned<i64>>,
    protocol: Option<Spanned<i64>>,
    vips: Option<Vec<Spanned<String>>>,
    interface: Option<Spanned<String>>,
}

/// Checks `[announce]`; `at` is where the table starts (for a missing `table`).
pub(crate) fn build(raw: &Spanned<RawAnnounce>) -> Result<AnnounceConfig, Problem> {
    let r = raw.get_ref();
    let table = match &r.table {
        Some(t) => {
            let n: u32 = ranged(t, "announce table", 1, u32::MAX)?;
            // 253 default, 254 main, 255 local: the kernel's own; the routes would be used
            // for forwarding on the director itself, which they are not meant for.
            if matches!(n, 253..=255) {
                return Err(Problem::at(
                    t,
                    format!(
                        "announce table {n} is the kernel's (default/main/local); \
                         use a table of its own, e.g. 100"
                    ),
                ));
            }
            n
        }
        None => {
            return Err(Problem::at(
                raw,
                "[announce] needs table (the kernel routing table the BGP daemon imports)".into(),
            ));
        }
    };
    let protocol = match &r.protocol {
        // 0..=4 are the kernel's (unspec, redirect, kernel, boot, static).
        Some(p) => ranged(p, "announce protocol", 5u8, 255u8)?,
        None => DEFAULT_PROTOCOL,
    };
    let vips = match &r.vips {
        Some(v) => {
            let mut out = Vec::new();
            for s in v {
                let a = ip(s)?;
                if out.contains(&a) {
                    return Err(Problem::at(
                        s,
                        format!("announce vips: {a} is listed twice"),
                    ));
                }
                out.push(a);
            }
            Some(out)
        }
        None => None,
    };
    let interface = match &r.interface {
        Some(i) if !valid_ifname(i.get_ref()) => {
            return Err(Problem::at(
                i,
                format!(
                    "announce interface {:?}: not an interface name",
                    i.get_ref()
                ),
            ));
        }
        Some(i) => Some(i.get_ref().clone()),
        None => None,
    };
    Ok(AnnounceConfig {
        table,
        protocol,
        vips,
        interface,
    })
}

/// Why a VIP is (not) announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Serving,
    NoService,
    NoHealthyRealServer,
    Draining,
    Detached,
}

impl Reason {
    pub fn text(&self) -> &'static str {
        match self {
            Reason::Serving => "serving",
            Reason::NoService => "no service on this VIP",
            Reason::NoHealthyRealServer => {
                "no real server can take connections (all unhealthy or weight 0)"
            }
            Reason::Draining => "draining",
            Reason::Detached => "data path detached",
        }
    }
}

/// Which VIPs to announce and why each is or is not, from the table the data path serves
/// (`effective`: health applied). Pure, so it is tested without netlink.
pub fn readiness(
    cfg: &AnnounceConfig,
    effective: &Model,
    attached: bool,
    draining: bool,
) -> BTreeMap<IpAddr, Reason> {
    let vips: BTreeSet<IpAddr> = match &cfg.vips {
        Some(v) => v.iter().copied().collect(),
        None => effective.services.keys().map(|k| k.addr).collect(),
    };
    vips.into_iter()
        .map(|vip| {
            let mut services = effective
                .services
                .iter()
                .filter(|(k, _)| k.addr == vip)
                .peekable();
            let reason = if !attached {
                Reason::Detached
            } else if draining {
                Reason::Draining
            } else if services.peek().is_none() {
                Reason::NoService
            } else if services.any(|(_, e)| e.dests.iter().any(|d| d.weight > 0)) {
                Reason::Serving
            } else {
                Reason::NoHealthyRealServer
            };
            (vip, reason)
        })
        .collect()
}

/// The routes of `[announce]` in the kernel: one `VIP/32 dev IFACE scope link` per ready
/// VIP in the table, tagged with the protocol id so that they are told from anyone else's.
pub struct Announcer {
    cfg: AnnounceConfig,
    nl: rtnetlink::Handle,
    oif: u32,
    ifname: String,
    /// What this daemon has put in the table.
    announced: BTreeSet<IpAddr>,
    /// Each VIP's state, as last computed.
    states: BTreeMap<IpAddr, Reason>,
    /// When each VIP last changed (seconds since the epoch), for `status`.
    changed_at: BTreeMap<IpAddr, u64>,
    errors: u64,
    last_error: Option<String>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Announcer {
    /// Opens netlink and takes out of the table every route of our protocol that is there
    /// (a daemon killed with SIGKILL left them; what is ready is put back by `update`).
    pub async fn start(cfg: AnnounceConfig, default_iface: &str) -> anyhow::Result<Announcer> {
        let nl = crate::vrrp::net::netlink()?;
        let ifname = cfg
            .interface
            .clone()
            .unwrap_or_else(|| default_iface.to_string());
        let (oif, _) = crate::vrrp::net::link(&nl, &ifname)
            .await
            .with_context(|| format!("[announce] interface {ifname}"))?;
        let mut a = Announcer {
            cfg,
            nl,
            oif,
            ifname,
            announced: BTreeSet::new(),
            states: BTreeMap::new(),
            changed_at: BTreeMap::new(),
            errors: 0,
            last_error: None,
        };
        // Found in the table at start: treated as announced, so that `update` removes the
        // ones no longer wanted and keeps (does not flap) the ones still wanted.
        a.announced = a.in_kernel().await?;
        if !a.announced.is_empty() {
            log::info!(
                "announce: found {} route(s) in table {} from an earlier daemon: {:?}",
                a.announced.len(),
                a.cfg.table,
                a.announced
            );
        }
        Ok(a)
    }

    pub fn config(&self) -> &AnnounceConfig {
        &self.cfg
    }

    /// Our routes in the table now (protocol and table match), of both families.
    async fn in_kernel(&self) -> anyhow::Result<BTreeSet<IpAddr>> {
        let mut out = BTreeSet::new();
        for req in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut s = self.nl.route().get(req).execute();
            while let Some(r) = s.try_next().await.context("dumping routes")? {
                if r.header.protocol != RouteProtocol::from(self.cfg.protocol)
                    || table_of(&r) != self.cfg.table
                {
                    continue;
                }
                let plen = r.header.destination_prefix_length;
                if let Some(d) = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) if plen == 32 => {
                        Some(IpAddr::V4(*d))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(d)) if plen == 128 => {
                        Some(IpAddr::V6(*d))
                    }
                    _ => None,
                }) {
                    out.insert(d);
                }
            }
        }
        Ok(out)
    }

    fn route(&self, vip: IpAddr) -> RouteMessage {
        match vip {
            IpAddr::V4(v) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v, 32)
                .table_id(self.cfg.table)
                .protocol(RouteProtocol::from(self.cfg.protocol))
                .scope(RouteScope::Link)
                .output_interface(self.oif)
                .build(),
            IpAddr::V6(v) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v, 128)
                .table_id(self.cfg.table)
                .protocol(RouteProtocol::from(self.cfg.protocol))
                .scope(RouteScope::Link)
                .output_interface(self.oif)
                .build(),
        }
    }

    /// Brings the table to `want` (from [`readiness`]): adds the ready VIPs' routes,
    /// removes the others'. A failure is logged and counted and tried again at the next
    /// call (the daemon calls this every second too).
    pub async fn update(&mut self, want: BTreeMap<IpAddr, Reason>) {
        for (vip, r) in &want {
            if self.states.get(vip) != Some(r) {
                log::info!(
                    "announce {vip}: {} ({})",
                    if *r == Reason::Serving {
                        "announced"
                    } else {
                        "withdrawn"
                    },
                    r.text()
                );
                self.changed_at.insert(*vip, now_secs());
            }
        }
        let ready: BTreeSet<IpAddr> = want
            .iter()
            .filter(|(_, r)| **r == Reason::Serving)
            .map(|(v, _)| *v)
            .collect();
        self.states = want;
        for vip in ready.difference(&self.announced.clone()) {
            match self
                .nl
                .route()
                .add(self.route(*vip))
                .replace()
                .execute()
                .await
            {
                Ok(()) => {
                    self.announced.insert(*vip);
                }
                Err(e) => self.failed(format!(
                    "adding the route of {vip} to table {}: {e}",
                    self.cfg.table
                )),
            }
        }
        for vip in self.announced.clone().difference(&ready) {
            match self.nl.route().del(self.route(*vip)).execute().await {
                Ok(()) => {
                    self.announced.remove(vip);
                }
                // Someone removed it already: the table is as we want it.
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ESRCH => {
                    self.announced.remove(vip);
                }
                Err(e) => self.failed(format!(
                    "removing the route of {vip} from table {}: {e}",
                    self.cfg.table
                )),
            }
        }
    }

    /// Reads the table again and repairs it: a route someone deleted is put back, one
    /// someone added with our protocol id is removed (every `RESYNC` seconds, and a dump of
    /// every route is too dear for every second on a director with a full routing table).
    pub async fn resync(&mut self) {
        match self.in_kernel().await {
            Ok(found) => {
                if found != self.announced {
                    log::warn!(
                        "announce: table {} changed behind our back (found {found:?}, \
                         expected {:?}); repairing",
                        self.cfg.table,
                        self.announced
                    );
                    self.announced = found;
                }
                let want = self.states.clone();
                self.update(want).await;
            }
            Err(e) => self.failed(format!("reading table {}: {e:#}", self.cfg.table)),
        }
    }

    fn failed(&mut self, msg: String) {
        log::error!("announce: {msg}");
        self.errors += 1;
        self.last_error = Some(msg);
    }

    /// Withdraws every VIP (the daemon stops, or detaches).
    pub async fn withdraw_all(&mut self, why: Reason) {
        let want = self
            .states
            .keys()
            .chain(self.announced.iter())
            .map(|v| (*v, why.clone()))
            .collect();
        self.update(want).await;
    }

    /// Whether no route of ours is in the table.
    pub fn nothing_announced(&self) -> bool {
        self.announced.is_empty()
    }

    /// For `lb-ctl status`: each VIP's state and reason.
    pub fn status(&self) -> serde_json::Value {
        let vips: Vec<_> = self
            .states
            .iter()
            .map(|(vip, r)| {
                serde_json::json!({
                    "vip": vip.to_string(),
                    "announced": self.announced.contains(vip),
                    "reason": r.text(),
                    "since": self.changed_at.get(vip),
                })
            })
            .collect();
        serde_json::json!({
            "table": self.cfg.table,
            "protocol": self.cfg.protocol,
            "interface": self.ifname,
            "vips": vips,
            "errors": self.errors,
            "last_error": self.last_error,
        })
    }
}

fn table_of(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DestConfig, Forward, Op, Protocol, Scheduler, ServiceConfig, ServiceKey};

    fn model(vip: [u8; 4], weights: &[u32]) -> Model {
        let mut m = Model::default();
        let key = ServiceKey {
            proto: Protocol::Tcp,
            addr: Ipv4Addr::from(vip).into(),
            port: 80,
        };
        m.apply(&Op::AddService(ServiceConfig::new(key, Scheduler::Mh)))
            .unwrap();
        for (i, w) in weights.iter().enumerate() {
            m.apply(&Op::AddDest(
                key,
                DestConfig::new(Ipv4Addr::new(192, 0, 2, 11 + i as u8), 80, Forward::Dr, *w),
            ))
            .unwrap();
        }
        m
    }

    fn cfg(vips: Option<Vec<IpAddr>>) -> AnnounceConfig {
        AnnounceConfig {
            table: 100,
            protocol: DEFAULT_PROTOCOL,
            vips,
            interface: None,
        }
    }

    #[test]
    fn a_vip_is_ready_only_with_a_server_that_takes_connections() {
        let vip: IpAddr = Ipv4Addr::new(192, 0, 2, 100).into();
        let r = |m: &Model, attached, draining| {
            readiness(&cfg(None), m, attached, draining)[&vip].clone()
        };
        assert_eq!(
            r(&model([192, 0, 2, 100], &[1, 0]), true, false),
            Reason::Serving
        );
        assert_eq!(
            r(&model([192, 0, 2, 100], &[0, 0]), true, false),
            Reason::NoHealthyRealServer
        );
        assert_eq!(
            r(&model([192, 0, 2, 100], &[]), true, false),
            Reason::NoHealthyRealServer
        );
        assert_eq!(
            r(&model([192, 0, 2, 100], &[1]), false, false),
            Reason::Detached
        );
        assert_eq!(
            r(&model([192, 0, 2, 100], &[1]), true, true),
            Reason::Draining
        );
        // Listed but with no service: not announced, and said so.
        let other: IpAddr = Ipv4Addr::new(192, 0, 2, 101).into();
        let st = readiness(
            &cfg(Some(vec![other])),
            &model([192, 0, 2, 100], &[1]),
            true,
            false,
        );
        assert_eq!(st.len(), 1);
        assert_eq!(st[&other], Reason::NoService);
    }

    #[test]
    fn announce_section_errors_name_the_line() {
        let err = |t: &str| crate::config::parse(t, "lb.toml").unwrap_err().to_string();
        assert_eq!(
            err("[announce]\nprotocol = 201\n"),
            "lb.toml:1:1: [announce] needs table (the kernel routing table the BGP daemon imports)"
        );
        assert!(
            err("[announce]\ntable = 254\n")
                .starts_with("lb.toml:2:9: announce table 254 is the kernel's"),
            "{}",
            err("[announce]\ntable = 254\n")
        );
        assert_eq!(
            err("[announce]\ntable = 100\nprotocol = 2\n"),
            "lb.toml:3:12: announce protocol 2 out of range 5..255"
        );
        assert_eq!(
            err("[announce]\ntable = 100\nvips = [\"192.0.2.300\"]\n"),
            "lb.toml:3:9: invalid IPv4 address \"192.0.2.300\""
        );
        assert_eq!(
            err("[announce]\ntable = 100\nbogus = 1\n"),
            "lb.toml:3:1: unknown key \"bogus\" (expected one of: table, protocol, vips, interface)"
        );
        let c = crate::config::parse(
            "[announce]\ntable = 100\nvips = [\"192.0.2.100\"]\n",
            "lb.toml",
        )
        .unwrap();
        assert_eq!(
            c.announce,
            Some(AnnounceConfig {
                table: 100,
                protocol: 201,
                vips: Some(vec![Ipv4Addr::new(192, 0, 2, 100).into()]),
                interface: None
            })
        );
    }
}
