//! IPv6 labs for issue 13's namespace tests: LVS-DR, LVS-NAT and LVS-TUN (across a router)
//! with `2001:db8::/32` addresses, and a dual-stack DR lab. The same shapes as [`crate::lab`],
//! with IPv6 on: every namespace has DAD off before its first link exists and every address
//! is added `nodad`, so no test waits for duplicate address detection; router
//! advertisements are not accepted (the routes are the lab's own).
//!
//! ```text
//!   DR6:  client 2001:db8:1::10 ─┐
//!         director 2001:db8:1::2 ─┤ br0 (VIP 2001:db8:1::100/128 on the director's eth0)
//!         rs1 2001:db8:1::11 ─────┤ `lb-ctl realserver --vip VIP --mode dr` on each
//!         rs2 2001:db8:1::12 ─────┘ (dual stack: also 192.0.2.0/24 as in `DrLab`)
//!   NAT6: client 2001:db8:1::10 ── director eth0 2001:db8:1::2 (+VIP), eth1 2001:db8:2::1
//!         ── br0 ── rsN 2001:db8:2::1N (default via the director), nginx on 8080
//!   TUN6: client 2001:db8:4::10 ── router ── director 2001:db8:2::2 (+VIP)
//!                                     └── br0 ── rsN 2001:db8:3::1N (VIP on lo, lb_decap)
//! ```
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::cmd::{check, tool};
use crate::{Netns, Nginx, RealServerMode, RealServerSetup, XdpPass, veth};

pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
pub const DIRECTOR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The IPv6 VIP of every lab (on the director's client-side interface).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x100);
/// NAT6: the director's address on the real servers' segment (their gateway).
pub const NAT_GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// TUN6: the client (on a network of its own: the VIP must not look on-link to it), the
/// router's addresses (client side, director side, real-server side) and the director's.
pub const TUN_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 0x10);
pub const ROUTER_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 1);
pub const ROUTER_DIRECTOR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const ROUTER_RS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 1);
pub const TUN_DIRECTOR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
/// The dual-stack lab's IPv4 side, as [`crate::lab`]'s DR lab.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const DIRECTOR4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

/// Which of the labs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dr,
    DualStackDr,
    Nat,
    Tun,
}

/// Real server `i` (1-based) of `kind`: 2001:db8:1::11 (DR), 2001:db8:2::11 (NAT),
/// 2001:db8:3::11 (TUN).
pub fn rs6(kind: Kind, i: usize) -> Ipv6Addr {
    assert!((1..=9).contains(&i), "real server index {i} out of 1..=9");
    let net = match kind {
        Kind::Dr | Kind::DualStackDr => 1,
        Kind::Nat => 2,
        Kind::Tun => 3,
    };
    Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, 0x10 + i as u16)
}

/// Real server `i`'s IPv4 address in the dual-stack lab: 192.0.2.11, …
pub fn rs4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + i as u8)
}

/// One of the labs. Drop order is declaration order: the real-server setups, nginx and the
/// XDP pins go before the namespaces.
pub struct Lab6 {
    pub kind: Kind,
    setups: Vec<RealServerSetup>,
    nginx: Vec<Option<Nginx>>,
    _xdp: Vec<XdpPass>,
    pub client: Netns,
    pub director: Netns,
    /// The real servers, rs1 first.
    pub rs: Vec<Netns>,
    /// The switch (and the router of the TUN lab).
    others: Vec<Netns>,
}

/// A namespace with IPv6 on and no DAD or router advertisements, before any link exists.
fn host6(label: &str) -> Netns {
    let ns = Netns::new(label);
    ns.sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.accept_ra", "0"),
        ("net.ipv6.conf.default.accept_ra", "0"),
    ]);
    ns
}

/// The switch: one bridge per name, multicast snooping off so neighbour solicitations
/// (multicast) reach every port whatever MLD reports were or were not seen.
fn switch(bridges: &[&str]) -> Netns {
    let sw = Netns::new("sw6");
    sw.disable_ipv6();
    for b in bridges {
        sw.ip(&["link", "add", b, "type", "bridge", "mcast_snooping", "0"]);
        sw.ip(&["link", "set", "dev", b, "up"]);
    }
    sw
}

/// The VIP on the director: as any address, but deprecated (`preferred_lft 0`) when IPv6,
/// so the director's own connections (health checks) never take it as their source (IPv6
/// source selection would prefer it to the director's own address, and a real server answers
/// the VIP on its own `lo`); it is still answered for in NDP and accepted as a destination.
fn director_vip(ns: &Netns, iface: &str, vip: IpAddr) {
    let len = if vip.is_ipv6() { "128" } else { "32" };
    let cidr = format!("{vip}/{len}");
    if vip.is_ipv6() {
        ns.ip(&[
            "addr",
            "add",
            &cidr,
            "dev",
            iface,
            "nodad",
            "preferred_lft",
            "0",
        ]);
    } else {
        ns.ip(&["addr", "add", &cidr, "dev", iface]);
    }
}

/// `ip addr add ADDR/LEN dev IFACE nodad` (IPv6) or without `nodad` (IPv4).
pub fn addr(ns: &Netns, iface: &str, a: IpAddr, len: u8) {
    let cidr = format!("{a}/{len}");
    if a.is_ipv6() {
        ns.ip(&["addr", "add", &cidr, "dev", iface, "nodad"]);
    } else {
        ns.ip(&["addr", "add", &cidr, "dev", iface]);
    }
}

/// Turns TX checksum offload off (see `lab::tx_csum_off`: XDP forwarding passes partial
/// checksums on unfinished).
fn tx_csum_off(ns: &Netns, iface: &str) {
    check(ns.command(tool("ethtool")).args(["-K", iface, "tx", "off"]));
}

/// Connects `iface` of `ns` to `bridge` in `sw` (switch-side end named `port`).
fn plug(sw: &Netns, bridge: &str, port: &str, ns: &Netns, iface: &str) {
    veth(sw, port, ns, iface);
    sw.ip(&["link", "set", "dev", port, "master", bridge]);
    tx_csum_off(ns, iface);
}

fn forwarding6(ns: &Netns) {
    ns.sysctls(&[
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.default.forwarding", "1"),
    ]);
}

fn route6(ns: &Netns, dst: &str, via: Ipv6Addr) {
    ns.ip(&["-6", "route", "add", dst, "via", &via.to_string()]);
}

impl Lab6 {
    /// The lab of `kind` with `n` real servers, each running nginx answering its own name
    /// (`rs1\n`, …) on port 80 (8080 for NAT), on IPv6 (and IPv4). The real servers are not
    /// set up as LVS real servers yet: see [`Lab6::realservers_up`].
    pub fn new(kind: Kind, n: usize) -> Lab6 {
        crate::require_root();
        let sw = switch(&["br0"]);
        let client = host6("client6");
        let director = host6("director6");
        let mut rs = Vec::new();
        let mut others = vec![sw];
        let mut xdp = Vec::new();
        match kind {
            Kind::Dr | Kind::DualStackDr => {
                let sw = &others[0];
                plug(sw, "br0", "client", &client, "eth0");
                plug(sw, "br0", "director", &director, "eth0");
                addr(&client, "eth0", CLIENT6.into(), 64);
                addr(&director, "eth0", DIRECTOR6.into(), 64);
                director_vip(&director, "eth0", VIP6.into());
                if kind == Kind::DualStackDr {
                    addr(&client, "eth0", CLIENT4.into(), 24);
                    addr(&director, "eth0", DIRECTOR4.into(), 24);
                    director_vip(&director, "eth0", VIP4.into());
                }
                for i in 1..=n {
                    let ns = host6(&format!("rs{i}"));
                    plug(sw, "br0", &format!("rs{i}"), &ns, "eth0");
                    addr(&ns, "eth0", rs6(kind, i).into(), 64);
                    if kind == Kind::DualStackDr {
                        addr(&ns, "eth0", rs4(i).into(), 24);
                    }
                    rs.push(ns);
                }
                xdp.push(XdpPass::attach(sw, "director"));
            }
            Kind::Nat => {
                let sw = &others[0];
                veth(&client, "eth0", &director, "eth0");
                tx_csum_off(&client, "eth0");
                addr(&client, "eth0", CLIENT6.into(), 64);
                addr(&director, "eth0", DIRECTOR6.into(), 64);
                director_vip(&director, "eth0", VIP6.into());
                plug(sw, "br0", "director-eth1", &director, "eth1");
                addr(&director, "eth1", NAT_GW6.into(), 64);
                forwarding6(&director);
                for i in 1..=n {
                    let ns = host6(&format!("rs{i}"));
                    plug(sw, "br0", &format!("rs{i}"), &ns, "eth0");
                    addr(&ns, "eth0", rs6(kind, i).into(), 64);
                    route6(&ns, "default", NAT_GW6);
                    rs.push(ns);
                }
                xdp.push(XdpPass::attach(&client, "eth0"));
                xdp.push(XdpPass::attach(sw, "director-eth1"));
            }
            Kind::Tun => {
                let router = host6("router6");
                veth(&client, "eth0", &router, "eth0");
                tx_csum_off(&client, "eth0");
                addr(&client, "eth0", TUN_CLIENT6.into(), 64);
                addr(&router, "eth0", ROUTER_CLIENT6.into(), 64);
                route6(&client, "default", ROUTER_CLIENT6);
                veth(&router, "eth2", &director, "eth0");
                tx_csum_off(&director, "eth0");
                addr(&router, "eth2", ROUTER_DIRECTOR6.into(), 64);
                addr(&director, "eth0", TUN_DIRECTOR6.into(), 64);
                director_vip(&director, "eth0", VIP6.into());
                route6(&director, "default", ROUTER_DIRECTOR6);
                forwarding6(&director);
                plug(&others[0], "br0", "router", &router, "eth1");
                addr(&router, "eth1", ROUTER_RS6.into(), 64);
                // The VIP is the director's: the router sends it there.
                route6(&router, &format!("{VIP6}/128"), TUN_DIRECTOR6);
                forwarding6(&router);
                for i in 1..=n {
                    let ns = host6(&format!("rs{i}"));
                    plug(&others[0], "br0", &format!("rs{i}"), &ns, "eth0");
                    addr(&ns, "eth0", rs6(kind, i).into(), 64);
                    route6(&ns, "default", ROUTER_RS6);
                    rs.push(ns);
                }
                xdp.push(XdpPass::attach(&router, "eth2"));
                others.push(router);
            }
        }
        let port = if kind == Kind::Nat { 8080 } else { 80 };
        let nginx = rs
            .iter()
            .enumerate()
            .map(|(i, ns)| Some(Nginx::start_dual(ns, &format!("rs{}", i + 1), port)))
            .collect();
        Lab6 {
            kind,
            setups: Vec::new(),
            nginx,
            _xdp: xdp,
            client,
            director,
            rs,
            others,
        }
    }

    /// Runs `lb-ctl realserver` on every real server for this lab's VIPs (DR: `--mode dr`;
    /// TUN: `--mode tun --interface eth0`); undone when the lab goes.
    pub fn realservers_up(&mut self) {
        let mut vips: Vec<IpAddr> = vec![VIP6.into()];
        if self.kind == Kind::DualStackDr {
            vips.push(VIP4.into());
        }
        let (mode, iface) = match self.kind {
            Kind::Tun => (RealServerMode::Tun, Some("eth0")),
            _ => (RealServerMode::Dr, None),
        };
        for ns in &self.rs {
            self.setups
                .push(RealServerSetup::up_addrs(ns, &vips, mode, iface));
        }
    }

    /// Runs `lb-ctl realserver --down` on every real server now; what each printed.
    pub fn realservers_down(&mut self) -> Vec<String> {
        self.setups.drain(..).map(RealServerSetup::down).collect()
    }

    /// What `lb-ctl realserver` printed on each real server.
    pub fn realserver_outputs(&self) -> Vec<&str> {
        self.setups.iter().map(|s| s.stdout()).collect()
    }

    /// The router (TUN lab).
    pub fn router(&self) -> &Netns {
        assert_eq!(self.kind, Kind::Tun, "only the TUN lab has a router");
        &self.others[1]
    }

    /// The switch's namespace.
    pub fn switch(&self) -> &Netns {
        &self.others[0]
    }

    /// The director's interfaces the balancer runs on.
    pub fn director_ifaces(&self) -> Vec<&'static str> {
        match self.kind {
            Kind::Nat => vec!["eth0", "eth1"],
            _ => vec!["eth0"],
        }
    }

    /// Every namespace of the lab (for leak checks and logs).
    pub fn netns_names(&self) -> Vec<String> {
        [&self.client, &self.director]
            .into_iter()
            .chain(&self.rs)
            .chain(&self.others)
            .map(|n| n.name().to_string())
            .collect()
    }

    /// Real server `i`'s nginx (1-based).
    pub fn nginx(&self, i: usize) -> &Nginx {
        self.nginx[i - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("rs{i}'s nginx is stopped"))
    }

    /// Stops real server `i`'s nginx (a dead server for health checks).
    pub fn stop_nginx(&mut self, i: usize) {
        self.nginx[i - 1] = None;
    }

    /// Starts real server `i`'s nginx again.
    pub fn start_nginx(&mut self, i: usize) {
        let port = if self.kind == Kind::Nat { 8080 } else { 80 };
        self.nginx[i - 1] = Some(Nginx::start_dual(&self.rs[i - 1], &format!("rs{i}"), port));
    }

    /// The body of real server `i`'s nginx.
    pub fn body(i: usize) -> String {
        format!("rs{i}\n")
    }

    /// `n` sequential GETs from the client to `url`; the bodies (trimmed), in order, or the
    /// first failure with curl's report.
    pub fn curls(&self, url: &str, n: usize) -> Result<Vec<String>, String> {
        (0..n)
            .map(|_| curl6(&self.client, url).map(|b| b.trim().to_string()))
            .collect()
    }
}

/// `curl -sS --max-time 5 -g URL` in `ns` (`-g`: brackets in an IPv6 URL are not a glob).
pub fn curl6(ns: &Netns, url: &str) -> Result<String, String> {
    crate::client::run_curl(ns, &["-g"], url)
}

/// `http://[VIP6]:port/`.
pub fn url6(port: u16) -> String {
    format!("http://{}/", SocketAddr::new(VIP6.into(), port))
}
