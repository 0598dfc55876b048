//! The LVS labs of the classic tutorial built from namespaces: DR ([`DrLab`]), NAT
//! ([`NatLab`]), TUN across a router ([`TunLab`]) and DR+NAT in one service ([`MixedLab`]),
//! plus [`RealServerSetup`], the guard that runs `lb-ctl realserver` on a real server.
//!
//! Every lab uses documentation address ranges only, turns IPv6 off in its namespaces, puts
//! `XdpPass` on the peer of every interface the balancer runs on, and turns TX checksum
//! offload off on the hosts whose packets cross the balancer (the comment in `plug` says why).
//!
//! The DR lab, on one bridged L2 segment:
//!
//! ```text
//!   client 192.0.2.10 ─┐
//!   director 192.0.2.2 ─┤  br0 in the "switch" netns (the root netns is never touched)
//!     (+ VIP 192.0.2.100/32 on eth0, where the balancer runs)
//!   rs1 192.0.2.11 ─────┤  each real server: VIP/32 on lo, arp_ignore=1, arp_announce=2,
//!   rs2 192.0.2.12 ─────┘  nginx answering its own name
//! ```
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{describe, output, report};
use crate::{Netns, Nginx, PinRootUse, TempDir, UdpEcho, XdpPass, veth};

/// The virtual IP of the lab's service.
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const DIRECTOR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Prefix length of the lab's segment, 192.0.2.0/24.
pub const PREFIX_LEN: u8 = 24;
/// The bridge in the switch netns.
pub const BRIDGE: &str = "br0";
/// Every host's interface on the segment.
pub const HOST_IFACE: &str = "eth0";

/// Address of real server `i` (1-based): rs1 is 192.0.2.11.
pub fn rs_ip(i: usize) -> Ipv4Addr {
    assert!((1..=89).contains(&i), "real server index {i} out of 1..=89");
    Ipv4Addr::new(192, 0, 2, 10 + i as u8)
}

/// What to build; `DrLab::new(n)` is `real_servers: n` with everything on.
#[derive(Clone, Debug)]
pub struct DrLabOpts {
    pub real_servers: usize,
    /// Attach a pass-through XDP program (needs `lb-ctl xdp-pass`) to the switch-side peer of
    /// the director's eth0, so the balancer's XDP_TX frames get delivered.
    pub xdp_pass: bool,
    /// Start nginx on every real server.
    pub nginx: bool,
}

impl Default for DrLabOpts {
    fn default() -> Self {
        DrLabOpts {
            real_servers: 2,
            xdp_pass: true,
            nginx: true,
        }
    }
}

/// One real server: its namespace, address and nginx.
pub struct RealServer {
    // Declared before `ns`: the servers stop before their namespace goes.
    nginx: Option<Nginx>,
    /// Further nginx instances on other ports (NatLab's port 8080).
    more_nginx: Vec<Nginx>,
    udp: Option<UdpEcho>,
    ns: Netns,
    name: String,
    ip: Ipv4Addr,
}

impl RealServer {
    fn new(ns: Netns, name: String, ip: Ipv4Addr) -> RealServer {
        RealServer {
            nginx: None,
            more_nginx: Vec::new(),
            udp: None,
            ns,
            name,
            ip,
        }
    }

    /// Its nginx listening on `port` (80 is [`RealServer::nginx`]); panics if there is none.
    pub fn nginx_on(&self, port: u16) -> &Nginx {
        self.nginx
            .iter()
            .chain(&self.more_nginx)
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("{} has no nginx on port {port}", self.name))
    }

    /// The body its nginx on `port` answers every request with: `rs1\n` on port 80,
    /// `rs1-8080\n` on NatLab's port 8080.
    pub fn body_on(&self, port: u16) -> String {
        format!("{}\n", self.nginx_on(port).name())
    }

    /// Stops its nginx on `port` (a dead port for failure tests); `None` if there was none.
    pub fn stop_nginx_on(&mut self, port: u16) -> Option<Nginx> {
        if self.nginx.as_ref().is_some_and(|n| n.port() == port) {
            return self.nginx.take();
        }
        let i = self.more_nginx.iter().position(|n| n.port() == port)?;
        Some(self.more_nginx.remove(i))
    }

    /// Its UDP echo server (answers `"{name}:{payload}"`); panics if it has none.
    pub fn udp_echo(&self) -> &UdpEcho {
        self.udp
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no UDP echo server", self.name))
    }

    /// Stops its UDP echo server; `None` if there was none.
    pub fn stop_udp_echo(&mut self) -> Option<UdpEcho> {
        self.udp.take()
    }

    /// `rs1`, `rs2`, …: also the body its nginx answers with (plus a newline).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Its nginx; panics if the lab was built without.
    pub fn nginx(&self) -> &Nginx {
        self.nginx
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no nginx (the lab was built without)", self.name))
    }

    pub fn nginx_mut(&mut self) -> &mut Nginx {
        let name = self.name.clone();
        self.nginx
            .as_mut()
            .unwrap_or_else(|| panic!("{name} has no nginx (the lab was built without)"))
    }

    /// Stops its nginx (a dead real server for failure tests); `None` if there was none.
    pub fn stop_nginx(&mut self) -> Option<Nginx> {
        self.nginx.take()
    }

    /// Starts its nginx on port 80 again after [`RealServer::stop_nginx`] (a real server
    /// coming back, for health-check tests); panics if one is running.
    pub fn start_nginx(&mut self) {
        assert!(
            self.nginx.is_none(),
            "{} already runs nginx on port 80",
            self.name
        );
        self.nginx = Some(Nginx::start(&self.ns, &self.name));
    }
}

/// What every lab has: a switch netns holding the bridges, a client, a director, the real
/// servers, and any other hosts (`TunLab`'s router). Each lab derefs to its `Hosts`. Drop
/// stops the real servers' processes before the namespaces go.
pub struct Hosts {
    real_servers: Vec<RealServer>,
    client: Netns,
    director: Netns,
    switch: Netns,
    others: Vec<Netns>,
}

impl Hosts {
    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn director(&self) -> &Netns {
        &self.director
    }

    /// The netns holding the lab's bridges (its ports are named after the hosts).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    pub fn real_servers(&self) -> &[RealServer] {
        &self.real_servers
    }

    pub fn real_servers_mut(&mut self) -> &mut [RealServer] {
        &mut self.real_servers
    }

    /// Real server `i`, 1-based (`rs(1)` is rs1).
    pub fn rs(&self, i: usize) -> &RealServer {
        let n = self.real_servers.len();
        assert!((1..=n).contains(&i), "no rs{i}: the lab has rs1..rs{n}");
        &self.real_servers[i - 1]
    }

    pub fn rs_mut(&mut self, i: usize) -> &mut RealServer {
        let n = self.real_servers.len();
        assert!((1..=n).contains(&i), "no rs{i}: the lab has rs1..rs{n}");
        &mut self.real_servers[i - 1]
    }

    /// Address of real server `i` (1-based).
    pub fn rs_ip(&self, i: usize) -> Ipv4Addr {
        self.rs(i).ip()
    }

    /// Names of every namespace of the lab (to check that they are gone after drop).
    pub fn netns_names(&self) -> Vec<String> {
        [&self.switch, &self.client, &self.director]
            .into_iter()
            .chain(&self.others)
            .chain(self.real_servers.iter().map(|r| &r.ns))
            .map(|ns| ns.name().to_string())
            .collect()
    }
}

/// `Deref`/`DerefMut` from a lab to its `hosts` field.
macro_rules! lab_hosts {
    ($lab:ty) => {
        impl std::ops::Deref for $lab {
            type Target = Hosts;
            fn deref(&self) -> &Hosts {
                &self.hosts
            }
        }
        impl std::ops::DerefMut for $lab {
            fn deref_mut(&mut self) -> &mut Hosts {
                &mut self.hosts
            }
        }
    };
}

lab_hosts!(DrLab);
lab_hosts!(NatLab);
lab_hosts!(TunLab);
lab_hosts!(MixedLab);

/// The lab; Drop tears it all down (XDP pin, nginx, namespaces and with them every link).
pub struct DrLab {
    // Drop order is declaration order: the XDP pin and the servers go before the namespaces.
    xdp: Option<XdpPass>,
    hosts: Hosts,
}

impl DrLab {
    /// `n` sequential requests from the client to `url`; the bodies, in order (a failed
    /// request panics with its number and error).
    pub fn curls(&self, url: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| match crate::curl(self.client(), url) {
                Ok(body) => body.trim().to_string(),
                Err(e) => panic!("request {i} to {url} failed: {e}"),
            })
            .collect()
    }
}

impl DrLab {
    /// The full lab with `real_servers` real servers (rs1 … rsN).
    pub fn new(real_servers: usize) -> DrLab {
        DrLab::with_opts(DrLabOpts {
            real_servers,
            ..DrLabOpts::default()
        })
    }

    pub fn with_opts(opts: DrLabOpts) -> DrLab {
        crate::require_root();
        // Each guard cleans up after itself if a later step panics.
        let switch = Netns::new("sw");
        switch.disable_ipv6();
        // STP is off by default, so ports forward at once (no listening/learning delay).
        switch.ip(&["link", "add", BRIDGE, "type", "bridge"]);
        switch.ip(&["link", "set", "dev", BRIDGE, "up"]);

        let client = host(&switch, "client", CLIENT_IP);
        let director = host(&switch, "director", DIRECTOR_IP);
        // The tutorial's `ifconfig eth0:0 VIP netmask 255.255.255.255 up`.
        let vip = format!("{VIP}/32");
        director.ip(&["addr", "add", &vip, "dev", HOST_IFACE, "label", "eth0:0"]);

        let mut servers = Vec::with_capacity(opts.real_servers);
        for i in 1..=opts.real_servers {
            let name = format!("rs{i}");
            let ip = rs_ip(i);
            let ns = host(&switch, &name, ip);
            dr_real_server(&ns, VIP);
            servers.push(RealServer::new(ns, name, ip));
        }

        let mut lab = DrLab {
            xdp: None,
            hosts: Hosts {
                real_servers: servers,
                client,
                director,
                switch,
                others: Vec::new(),
            },
        };
        if opts.xdp_pass {
            lab.xdp = Some(XdpPass::attach(&lab.hosts.switch, "director"));
        }
        if opts.nginx {
            for rs in &mut lab.hosts.real_servers {
                rs.nginx = Some(Nginx::start(&rs.ns, &rs.name));
            }
        }
        lab
    }

    pub fn vip(&self) -> Ipv4Addr {
        VIP
    }

    /// VIP:port as a socket address (for [`crate::KeepAlive::connect`]).
    pub fn vip_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(VIP, port))
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        CLIENT_IP
    }

    pub fn director_ip(&self) -> Ipv4Addr {
        DIRECTOR_IP
    }

    /// The director's interface the balancer attaches to.
    pub fn director_iface(&self) -> &'static str {
        HOST_IFACE
    }

    /// The pass-through XDP guard on the switch side of the director's link, if any.
    pub fn xdp_pass(&self) -> Option<&XdpPass> {
        self.xdp.as_ref()
    }
}

/// A host namespace on the DR segment: `eth0` with `ip`/24, its veth peer (named `port`) on
/// the bridge in `switch`.
pub(crate) fn host(switch: &Netns, port: &str, ip: Ipv4Addr) -> Netns {
    let ns = new_host(port);
    plug(switch, BRIDGE, port, &ns, HOST_IFACE, ip);
    ns
}

/// `new_host` for the other labs of this crate.
pub(crate) fn new_host_pub(label: &str) -> Netns {
    new_host(label)
}

/// A namespace for a host, with IPv6 off before any link exists in it, so no interface ever
/// gets an IPv6 address or runs DAD.
fn new_host(label: &str) -> Netns {
    let ns = Netns::new(label);
    ns.disable_ipv6();
    ns
}

/// The "switch" namespace with one bridge per name in `bridges`, all up.
pub(crate) fn new_switch(bridges: &[&str]) -> Netns {
    let switch = new_host("sw");
    for bridge in bridges {
        // STP is off by default, so ports forward at once (no listening/learning delay).
        switch.ip(&["link", "add", bridge, "type", "bridge"]);
        switch.ip(&["link", "set", "dev", bridge, "up"]);
    }
    switch
}

/// Connects `iface` of `ns` to `bridge` in `switch` (the switch end of the veth is named
/// `port`), with `ip`/24 on `iface` and TX checksum offload off.
fn plug(switch: &Netns, bridge: &str, port: &str, ns: &Netns, iface: &str, ip: Ipv4Addr) {
    veth(switch, port, ns, iface);
    switch.ip(&["link", "set", "dev", port, "master", bridge]);
    tx_csum_off(ns, iface);
    addr(ns, iface, ip);
}

/// Turns TX checksum offload off on `iface`.
fn tx_csum_off(ns: &Netns, iface: &str) {
    // With TX checksum offload a veth sends TCP/UDP with only the pseudo-header sum and
    // marks the skb CHECKSUM_PARTIAL; native XDP on the director turns the skb into a bare
    // frame, that mark is lost, and after XDP_TX the real server drops the segment
    // (TcpInCsumErrors). Real NICs fill in the sum on the wire, so compute it in software.
    crate::cmd::check(
        ns.command(crate::cmd::tool("ethtool"))
            .args(["-K", iface, "tx", "off"]),
    );
}

/// `ip addr add IP/24 dev IFACE` (every segment of the labs is a /24).
fn addr(ns: &Netns, iface: &str, ip: Ipv4Addr) {
    ns.ip(&["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", iface]);
}

/// `ip route add default via GW`.
fn default_via(ns: &Netns, gw: Ipv4Addr) {
    ns.ip(&["route", "add", "default", "via", &gw.to_string()]);
}

/// Makes `ns` a router: `ip_forward=1` and forwarding on `all` and on each of `ifaces`.
fn forwarding(ns: &Netns, ifaces: &[&str]) {
    let keys: Vec<String> = std::iter::once("net.ipv4.ip_forward".to_string())
        .chain(std::iter::once("net.ipv4.conf.all.forwarding".to_string()))
        .chain(
            ifaces
                .iter()
                .map(|i| format!("net.ipv4.conf.{i}.forwarding")),
        )
        .collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "1")).collect();
    ns.sysctls(&pairs);
}

/// The tutorial's DR real-server script: ARP for the VIP silenced, then the VIP on `lo`.
pub(crate) fn dr_real_server(ns: &Netns, vip: Ipv4Addr) {
    // Set before the VIP exists on lo so the server never answers or announces ARP for it:
    // the VIP must resolve to the director only.
    ns.sysctls(&[
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.lo.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
        ("net.ipv4.conf.lo.arp_announce", "2"),
    ]);
    // The tutorial's `ifconfig lo:0 VIP netmask 255.255.255.255 up`.
    ns.ip(&[
        "addr",
        "add",
        &format!("{vip}/32"),
        "dev",
        "lo",
        "label",
        "lo:0",
    ]);
}

/// Adds the VIP to the director's external interface, as the tutorial's
/// `ifconfig eth0:0 VIP netmask 255.255.255.255 up`.
fn director_vip(ns: &Netns, vip: Ipv4Addr) {
    ns.ip(&[
        "addr",
        "add",
        &format!("{vip}/32"),
        "dev",
        "eth0",
        "label",
        "eth0:0",
    ]);
}

/// Panics unless `i` is a valid 1-based index into `servers`; returns the server.
fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

// ---------------------------------------------------------------------------------------------
// LVS-NAT

/// Addresses and names of [`NatLab`].
pub mod nat {
    use std::net::Ipv4Addr;

    /// The service's VIP, on the director's external interface.
    pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
    pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    /// The director's external address (the client side, 198.51.100.0/24).
    pub const DIRECTOR_EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    /// The director's internal address (the real servers' side, 192.0.2.0/24): their gateway.
    pub const DIRECTOR_INT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    /// Bridge (in the switch netns) of the client segment.
    pub const EXT_BRIDGE: &str = "br0";
    /// Bridge (in the switch netns) of the real servers' segment.
    pub const INT_BRIDGE: &str = "br1";
    /// The director's interfaces: external (client side) and internal (real servers).
    pub const EXT_IFACE: &str = "eth0";
    pub const INT_IFACE: &str = "eth1";
    /// Every real server's second nginx listens here, answering `rsN-8080\n`.
    pub const ALT_PORT: u16 = 8080;
    /// Every real server's UDP echo listens here.
    pub const UDP_PORT: u16 = 53;

    /// Address of real server `i` (1-based): rs1 is 192.0.2.11.
    pub fn rs_ip(i: usize) -> Ipv4Addr {
        super::rs_ip(i)
    }
}

/// LVS-NAT as in the classic tutorial: the director routes between an external and an
/// internal segment, and the real servers' default gateway is its internal address.
///
/// ```text
///   client 198.51.100.10 ── br0 ── eth0 director eth1 ── br1 ─┬─ rs1 192.0.2.11
///   (default via .2)            198.51.100.2       192.0.2.1  ├─ rs2 192.0.2.12
///                               + VIP 198.51.100.100/32       └─ …  (default via 192.0.2.1)
/// ```
///
/// Both bridges are in one switch netns; its ports are `client`, `director` (the director's
/// eth0), `director-eth1` and `rs1`, `rs2`, … The director forwards (`ip_forward=1`), so the
/// client reaches the real servers' own addresses even without a balancer. Every real server
/// runs nginx on 80 answering `rsN\n`, a second nginx on 8080 answering `rsN-8080\n`
/// ([`RealServer::body_on`]) and a [`UdpEcho`] on 53 answering `rsN:PAYLOAD`. `XdpPass` is on
/// the switch ports of both director interfaces.
pub struct NatLab {
    // Drop order is declaration order: the XDP pins and the servers go before the namespaces.
    xdp: Vec<XdpPass>,
    hosts: Hosts,
}

impl NatLab {
    /// The lab with `real_servers` real servers (rs1 … rsN), all servers running.
    pub fn new(real_servers: usize) -> NatLab {
        crate::require_root();
        assert!(
            (1..=89).contains(&real_servers),
            "NatLab with {real_servers} real servers: use 1..=89"
        );
        // Each guard cleans up after itself if a later step panics.
        let switch = new_switch(&[nat::EXT_BRIDGE, nat::INT_BRIDGE]);

        let client = new_host("client");
        plug(
            &switch,
            nat::EXT_BRIDGE,
            "client",
            &client,
            "eth0",
            nat::CLIENT_IP,
        );
        default_via(&client, nat::DIRECTOR_EXT_IP);

        let director = new_host("director");
        plug(
            &switch,
            nat::EXT_BRIDGE,
            "director",
            &director,
            nat::EXT_IFACE,
            nat::DIRECTOR_EXT_IP,
        );
        plug(
            &switch,
            nat::INT_BRIDGE,
            "director-eth1",
            &director,
            nat::INT_IFACE,
            nat::DIRECTOR_INT_IP,
        );
        director_vip(&director, nat::VIP);
        forwarding(&director, &[nat::EXT_IFACE, nat::INT_IFACE]);

        let mut servers = Vec::with_capacity(real_servers);
        for i in 1..=real_servers {
            let name = format!("rs{i}");
            let ip = nat::rs_ip(i);
            let ns = new_host(&name);
            plug(&switch, nat::INT_BRIDGE, &name, &ns, "eth0", ip);
            default_via(&ns, nat::DIRECTOR_INT_IP);
            servers.push(RealServer::new(ns, name, ip));
        }

        let mut lab = NatLab {
            xdp: Vec::new(),
            hosts: Hosts {
                real_servers: servers,
                client,
                director,
                switch,
                others: Vec::new(),
            },
        };
        lab.xdp.push(XdpPass::attach(&lab.hosts.switch, "director"));
        lab.xdp
            .push(XdpPass::attach(&lab.hosts.switch, "director-eth1"));
        for rs in &mut lab.hosts.real_servers {
            rs.nginx = Some(Nginx::start(&rs.ns, &rs.name));
            // nginx names go into its config verbatim and may not contain ':'.
            let alt = format!("{}-{}", rs.name, nat::ALT_PORT);
            rs.more_nginx
                .push(Nginx::start_on(&rs.ns, &alt, nat::ALT_PORT));
            rs.udp = Some(UdpEcho::start(&rs.ns, &rs.name, nat::UDP_PORT));
        }
        lab
    }

    /// rsN's own address and `port` (what a NAT service maps the VIP to).
    pub fn rs_addr(&self, i: usize, port: u16) -> SocketAddr {
        sock(self.rs_ip(i), port)
    }

    pub fn vip(&self) -> Ipv4Addr {
        nat::VIP
    }

    /// VIP:port as a socket address.
    pub fn vip_addr(&self, port: u16) -> SocketAddr {
        sock(nat::VIP, port)
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        nat::CLIENT_IP
    }

    /// The director's address on the client side, 198.51.100.2.
    pub fn director_ext_ip(&self) -> Ipv4Addr {
        nat::DIRECTOR_EXT_IP
    }

    /// The director's address on the real servers' side, 192.0.2.1 (their gateway).
    pub fn director_int_ip(&self) -> Ipv4Addr {
        nat::DIRECTOR_INT_IP
    }

    /// The director's client-side interface, `eth0` (holds the VIP).
    pub fn ext_iface(&self) -> &'static str {
        nat::EXT_IFACE
    }

    /// The director's real-server-side interface, `eth1`.
    pub fn int_iface(&self) -> &'static str {
        nat::INT_IFACE
    }

    /// The interfaces the balancer attaches to: `["eth0", "eth1"]`.
    pub fn director_ifaces(&self) -> [&'static str; 2] {
        [nat::EXT_IFACE, nat::INT_IFACE]
    }

    /// The pass-through XDP guards on the switch ports of director eth0 and eth1.
    pub fn xdp_passes(&self) -> &[XdpPass] {
        &self.xdp
    }
}

// ---------------------------------------------------------------------------------------------
// LVS-TUN

/// Addresses and names of [`TunLab`].
pub mod tun {
    use std::net::Ipv4Addr;

    /// The service's VIP, on the director's eth0 (and, once [`super::RealServerSetup`] ran,
    /// on every real server's lo).
    pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    /// The router's address on the client segment: the client's gateway.
    pub const ROUTER_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// The router's address on the real servers' segment: their gateway.
    pub const ROUTER_RS_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    /// The router's address on the director's segment: the director's gateway.
    pub const ROUTER_DIRECTOR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub const DIRECTOR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    /// Bridge (in the switch netns) of the real servers' segment.
    pub const BRIDGE: &str = "br0";
    /// The router's interfaces: to the client, to the real servers, to the director.
    pub const ROUTER_CLIENT_IFACE: &str = "eth0";
    pub const ROUTER_RS_IFACE: &str = "eth1";
    pub const ROUTER_DIRECTOR_IFACE: &str = "eth2";
    /// The director's only interface, where the balancer runs.
    pub const DIRECTOR_IFACE: &str = "eth0";
    /// The real servers' interface, where the tunnelled packets arrive.
    pub const RS_IFACE: &str = "eth0";

    /// Address of real server `i` (1-based): rs1 is 203.0.113.11.
    pub fn rs_ip(i: usize) -> Ipv4Addr {
        assert!((1..=89).contains(&i), "real server index {i} out of 1..=89");
        Ipv4Addr::new(203, 0, 113, 10 + i as u8)
    }
}

/// LVS-TUN across a router: the director and the real servers are on different segments, the
/// director tunnels (IPIP) each packet for the VIP to a real server, which answers the client
/// directly with the VIP as source (direct server return).
///
/// ```text
///   client 198.51.100.10 ── eth0 router eth1 203.0.113.1 ── br0 ─┬─ rs1 203.0.113.11
///   (default via .1)      198.51.100.1                           ├─ rs2 203.0.113.12
///                                eth2 192.0.2.1                  └─ … (default via .1)
///                                  │  route 192.0.2.100/32 via 192.0.2.2
///                                eth0 director 192.0.2.2 + VIP 192.0.2.100/32
///                                     (default via 192.0.2.1)
/// ```
///
/// client–router and router–director are plain veth pairs; the real servers' segment is a
/// bridge in the switch netns (ports `router`, `rs1`, …). The router forwards with rp_filter
/// off: the answers come in on eth1 with the VIP as source, which it routes via eth2. Each real
/// server runs nginx on 80 (all addresses) answering `rsN\n`, but the lab does NOT make it a
/// TUN real server (VIP on lo, ARP sysctls, decapsulation): that is what
/// [`TunLab::realservers_up`] (`lb-ctl realserver --mode tun`) is for. `XdpPass` is on the
/// router's eth2, the peer of director eth0.
pub struct TunLab {
    // Drop order is declaration order: the XDP pin and the servers go before the namespaces.
    xdp: Option<XdpPass>,
    /// `others` holds the router.
    hosts: Hosts,
}

impl TunLab {
    /// The lab with `real_servers` real servers (rs1 … rsN), nginx running on each.
    pub fn new(real_servers: usize) -> TunLab {
        crate::require_root();
        assert!(
            (1..=89).contains(&real_servers),
            "TunLab with {real_servers} real servers: use 1..=89"
        );
        // Each guard cleans up after itself if a later step panics.
        let switch = new_switch(&[tun::BRIDGE]);
        let router = new_host("router");
        let client = new_host("client");
        let director = new_host("director");

        veth(&client, "eth0", &router, tun::ROUTER_CLIENT_IFACE);
        tx_csum_off(&client, "eth0");
        addr(&client, "eth0", tun::CLIENT_IP);
        default_via(&client, tun::ROUTER_CLIENT_IP);
        addr(&router, tun::ROUTER_CLIENT_IFACE, tun::ROUTER_CLIENT_IP);

        plug(
            &switch,
            tun::BRIDGE,
            "router",
            &router,
            tun::ROUTER_RS_IFACE,
            tun::ROUTER_RS_IP,
        );

        veth(
            &router,
            tun::ROUTER_DIRECTOR_IFACE,
            &director,
            tun::DIRECTOR_IFACE,
        );
        addr(&router, tun::ROUTER_DIRECTOR_IFACE, tun::ROUTER_DIRECTOR_IP);
        addr(&director, tun::DIRECTOR_IFACE, tun::DIRECTOR_IP);
        director_vip(&director, tun::VIP);
        default_via(&director, tun::ROUTER_DIRECTOR_IP);
        // The director sends the IPIP packets it builds itself; ip_forward as the tutorial's
        // director has it (and for anything the balancer passes to the kernel).
        forwarding(&director, &[tun::DIRECTOR_IFACE]);
        // The VIP is on the director only: the router sends it there, never ARPs for it.
        router.ip(&[
            "route",
            "add",
            &format!("{}/32", tun::VIP),
            "via",
            &tun::DIRECTOR_IP.to_string(),
        ]);
        let ifaces = [
            tun::ROUTER_CLIENT_IFACE,
            tun::ROUTER_RS_IFACE,
            tun::ROUTER_DIRECTOR_IFACE,
        ];
        forwarding(&router, &ifaces);
        // Answers from the VIP arrive on eth1 while the route to the VIP is via eth2: strict
        // (or, were the /32 route missing, loose) reverse-path filtering would drop them.
        let keys: Vec<String> = ["all", "default"]
            .into_iter()
            .chain(ifaces)
            .map(|i| format!("net.ipv4.conf.{i}.rp_filter"))
            .collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "0")).collect();
        router.sysctls(&pairs);

        let mut servers = Vec::with_capacity(real_servers);
        for i in 1..=real_servers {
            let name = format!("rs{i}");
            let ip = tun::rs_ip(i);
            let ns = new_host(&name);
            plug(&switch, tun::BRIDGE, &name, &ns, tun::RS_IFACE, ip);
            default_via(&ns, tun::ROUTER_RS_IP);
            servers.push(RealServer::new(ns, name, ip));
        }

        let mut lab = TunLab {
            xdp: None,
            hosts: Hosts {
                real_servers: servers,
                client,
                director,
                switch,
                others: vec![router],
            },
        };
        lab.xdp = Some(XdpPass::attach(lab.router(), tun::ROUTER_DIRECTOR_IFACE));
        for rs in &mut lab.hosts.real_servers {
            rs.nginx = Some(Nginx::start(&rs.ns, &rs.name));
        }
        lab
    }

    /// Makes every real server a TUN real server for the VIP (`lb-ctl realserver --vip VIP
    /// --mode tun --interface eth0`), in order rs1, rs2, …; dropping a guard undoes its
    /// server's setup. Drop them before the lab.
    pub fn realservers_up(&self) -> Vec<RealServerSetup> {
        self.real_servers()
            .iter()
            .map(|rs| {
                RealServerSetup::up(
                    rs.ns(),
                    &[tun::VIP],
                    RealServerMode::Tun,
                    Some(tun::RS_IFACE),
                )
            })
            .collect()
    }

    pub fn router(&self) -> &Netns {
        &self.hosts.others[0]
    }

    pub fn vip(&self) -> Ipv4Addr {
        tun::VIP
    }

    /// VIP:port as a socket address.
    pub fn vip_addr(&self, port: u16) -> SocketAddr {
        sock(tun::VIP, port)
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        tun::CLIENT_IP
    }

    pub fn director_ip(&self) -> Ipv4Addr {
        tun::DIRECTOR_IP
    }

    /// The director's interface the balancer attaches to, `eth0`.
    pub fn director_iface(&self) -> &'static str {
        tun::DIRECTOR_IFACE
    }

    /// The pass-through XDP guard on the router's eth2 (the peer of director eth0).
    pub fn xdp_pass(&self) -> Option<&XdpPass> {
        self.xdp.as_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// DR and NAT real servers in one service

/// Addresses and names of [`MixedLab`].
pub mod mixed {
    use std::net::Ipv4Addr;

    pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    /// The director's address on the shared segment (with the client and rsdr).
    pub const DIRECTOR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    /// The director's address towards rsnat: rsnat's gateway.
    pub const DIRECTOR_INT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const RSDR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    pub const RSNAT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
    /// Bridge of the shared segment (client, director eth0, rsdr).
    pub const BRIDGE: &str = "br0";
    /// Bridge of the NAT segment (director eth1, rsnat).
    pub const INT_BRIDGE: &str = "br1";
    pub const EXT_IFACE: &str = "eth0";
    pub const INT_IFACE: &str = "eth1";
}

/// One service with a DR and a NAT real server.
///
/// ```text
///   client 192.0.2.10 ───────┐
///   director eth0 192.0.2.2 ─┤ br0    rsdr 192.0.2.11: VIP/32 on lo, arp_ignore=1,
///     + VIP 192.0.2.100/32   │        arp_announce=2 (as in DrLab)
///   rsdr 192.0.2.11 ─────────┘
///   director eth1 198.51.100.1 ── br1 ── rsnat 198.51.100.11 (default via 198.51.100.1)
/// ```
///
/// Both bridges are in one switch netns (ports `client`, `director`, `rsdr`; `director-eth1`,
/// `rsnat`). The director forwards (`ip_forward=1`); nginx on both real servers answers their
/// names (`rsdr\n`, `rsnat\n`); `XdpPass` is on the switch ports of both director interfaces.
pub struct MixedLab {
    // Drop order is declaration order: the XDP pins and the servers go before the namespaces.
    xdp: Vec<XdpPass>,
    /// rs1 is rsdr, rs2 rsnat.
    hosts: Hosts,
}

impl MixedLab {
    pub fn new() -> MixedLab {
        crate::require_root();
        // Each guard cleans up after itself if a later step panics.
        let switch = new_switch(&[mixed::BRIDGE, mixed::INT_BRIDGE]);

        let client = new_host("client");
        plug(
            &switch,
            mixed::BRIDGE,
            "client",
            &client,
            "eth0",
            mixed::CLIENT_IP,
        );

        let director = new_host("director");
        plug(
            &switch,
            mixed::BRIDGE,
            "director",
            &director,
            mixed::EXT_IFACE,
            mixed::DIRECTOR_IP,
        );
        plug(
            &switch,
            mixed::INT_BRIDGE,
            "director-eth1",
            &director,
            mixed::INT_IFACE,
            mixed::DIRECTOR_INT_IP,
        );
        director_vip(&director, mixed::VIP);
        forwarding(&director, &[mixed::EXT_IFACE, mixed::INT_IFACE]);

        let rsdr_ns = new_host("rsdr");
        plug(
            &switch,
            mixed::BRIDGE,
            "rsdr",
            &rsdr_ns,
            "eth0",
            mixed::RSDR_IP,
        );
        dr_real_server(&rsdr_ns, mixed::VIP);

        let rsnat_ns = new_host("rsnat");
        plug(
            &switch,
            mixed::INT_BRIDGE,
            "rsnat",
            &rsnat_ns,
            "eth0",
            mixed::RSNAT_IP,
        );
        default_via(&rsnat_ns, mixed::DIRECTOR_INT_IP);

        let mut lab = MixedLab {
            xdp: Vec::new(),
            hosts: Hosts {
                real_servers: vec![
                    RealServer::new(rsdr_ns, "rsdr".into(), mixed::RSDR_IP),
                    RealServer::new(rsnat_ns, "rsnat".into(), mixed::RSNAT_IP),
                ],
                client,
                director,
                switch,
                others: Vec::new(),
            },
        };
        lab.xdp.push(XdpPass::attach(&lab.hosts.switch, "director"));
        lab.xdp
            .push(XdpPass::attach(&lab.hosts.switch, "director-eth1"));
        for rs in &mut lab.hosts.real_servers {
            rs.nginx = Some(Nginx::start(&rs.ns, &rs.name));
        }
        lab
    }

    /// The DR real server, 192.0.2.11, on the client's segment.
    pub fn rsdr(&self) -> &RealServer {
        self.rs(1)
    }

    pub fn rsdr_mut(&mut self) -> &mut RealServer {
        self.rs_mut(1)
    }

    /// The NAT real server, 198.51.100.11, behind the director's eth1.
    pub fn rsnat(&self) -> &RealServer {
        self.rs(2)
    }

    pub fn rsnat_mut(&mut self) -> &mut RealServer {
        self.rs_mut(2)
    }

    pub fn vip(&self) -> Ipv4Addr {
        mixed::VIP
    }

    /// VIP:port as a socket address.
    pub fn vip_addr(&self, port: u16) -> SocketAddr {
        sock(mixed::VIP, port)
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        mixed::CLIENT_IP
    }

    pub fn director_ip(&self) -> Ipv4Addr {
        mixed::DIRECTOR_IP
    }

    pub fn director_int_ip(&self) -> Ipv4Addr {
        mixed::DIRECTOR_INT_IP
    }

    pub fn rsdr_ip(&self) -> Ipv4Addr {
        mixed::RSDR_IP
    }

    pub fn rsnat_ip(&self) -> Ipv4Addr {
        mixed::RSNAT_IP
    }

    /// The director's shared-segment interface, `eth0` (holds the VIP).
    pub fn ext_iface(&self) -> &'static str {
        mixed::EXT_IFACE
    }

    /// The director's interface towards rsnat, `eth1`.
    pub fn int_iface(&self) -> &'static str {
        mixed::INT_IFACE
    }

    /// The interfaces the balancer attaches to: `["eth0", "eth1"]`.
    pub fn director_ifaces(&self) -> [&'static str; 2] {
        [mixed::EXT_IFACE, mixed::INT_IFACE]
    }

    /// The pass-through XDP guards on the switch ports of director eth0 and eth1.
    pub fn xdp_passes(&self) -> &[XdpPass] {
        &self.xdp
    }
}

impl Default for MixedLab {
    fn default() -> Self {
        MixedLab::new()
    }
}

// ---------------------------------------------------------------------------------------------
// lb-ctl realserver

/// `lb-ctl realserver --mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RealServerMode {
    Dr,
    Tun,
}

impl RealServerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RealServerMode::Dr => "dr",
            RealServerMode::Tun => "tun",
        }
    }
}

/// `nsenter --net=/run/netns/NS lb-ctl realserver --vip … --mode … [--interface …] --state S
/// --pin-path P` run in a real server's namespace, with a state file of its own (in a temp
/// dir) and pins under this run's [`crate::pin_root`]. Drop runs the same with `--down`.
///
/// nsenter rather than `ip netns exec`: the latter gives the command a private /sys, so the
/// decapsulation program's pins would vanish with it (and detach the program).
pub struct RealServerSetup {
    lb_ctl: PathBuf,
    netns: String,
    netns_path: PathBuf,
    /// `--vip … --mode … [--interface …]`, the same for up and down.
    args: Vec<String>,
    state: PathBuf,
    pin_path: PathBuf,
    stdout: String,
    /// Set once `--down` has run (explicitly), so Drop does not run it again.
    done: bool,
    // Dropped last: the state file's dir, then this run's pin dir if this was its last user.
    _dir: TempDir,
    _root: PinRootUse,
}

impl RealServerSetup {
    /// Runs `lb-ctl realserver` (up) in `ns`; panics with its output unless it succeeds (the
    /// guard then undoes whatever it had changed before failing). `iface` is `--interface`.
    pub fn up(
        ns: &Netns,
        vips: &[Ipv4Addr],
        mode: RealServerMode,
        iface: Option<&str>,
    ) -> RealServerSetup {
        let vips: Vec<std::net::IpAddr> = vips.iter().map(|v| (*v).into()).collect();
        RealServerSetup::up_addrs(ns, &vips, mode, iface)
    }

    /// As [`RealServerSetup::up`], with VIPs of either family.
    pub fn up_addrs(
        ns: &Netns,
        vips: &[std::net::IpAddr],
        mode: RealServerMode,
        iface: Option<&str>,
    ) -> RealServerSetup {
        let mut args = Vec::new();
        for vip in vips {
            args.push("--vip".to_string());
            args.push(vip.to_string());
        }
        args.push("--mode".to_string());
        args.push(mode.as_str().to_string());
        if let Some(iface) = iface {
            args.push("--interface".to_string());
            args.push(iface.to_string());
        }
        let dir = TempDir::new("realserver");
        let root = PinRootUse::new();
        let mut setup = RealServerSetup {
            lb_ctl: crate::lb_ctl(),
            netns: ns.name().to_string(),
            netns_path: ns.path(),
            args,
            state: dir.join("realserver.json"),
            pin_path: crate::pin_root().join(format!("realserver-{}", crate::next_id())),
            stdout: String::new(),
            done: false,
            _dir: dir,
            _root: root,
        };
        let mut cmd = setup.command(false);
        let out = output(&mut cmd);
        if !out.status.success() {
            panic!("lb-ctl realserver failed: {}", report(&cmd, &out));
        }
        setup.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        setup
    }

    fn command(&self, down: bool) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path.display()))
            .arg(&self.lb_ctl)
            .arg("realserver")
            .args(&self.args);
        if down {
            cmd.arg("--down");
        }
        cmd.arg("--state")
            .arg(&self.state)
            .arg("--pin-path")
            .arg(&self.pin_path);
        cmd
    }

    /// What `lb-ctl realserver` printed (`added: …`, `set: …`, `ok: …`, `decap: …`).
    pub fn stdout(&self) -> &str {
        &self.stdout
    }

    /// The `--state` file (exists while something is recorded as changed).
    pub fn state_file(&self) -> &Path {
        &self.state
    }

    /// The `--pin-path` directory (TUN: the decapsulation program's link and map).
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// The namespace it configured.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Runs `--down` now; panics with its output unless it succeeds or if it left pins.
    /// Returns what it printed.
    pub fn down(mut self) -> String {
        self.done = true;
        match self.run_down() {
            Ok(stdout) => stdout,
            Err(e) => panic!("{e}"),
        }
    }

    /// `--down`, then a check that the pin dir is gone (removing it if not, so nothing is left
    /// behind either way).
    fn run_down(&self) -> Result<String, String> {
        let mut cmd = self.command(true);
        let out = output(&mut cmd);
        let mut problems = Vec::new();
        if !self.netns_path.exists() {
            problems.push(format!(
                "netns {} is gone already: drop a RealServerSetup before its lab",
                self.netns
            ));
        }
        if !out.status.success() {
            problems.push(format!(
                "lb-ctl realserver --down failed: {}",
                report(&cmd, &out)
            ));
        }
        if self.pin_path.exists() {
            let left: Vec<String> = std::fs::read_dir(&self.pin_path)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            problems.push(format!(
                "`{}` left {} with {left:?} (removed now)",
                describe(&cmd),
                self.pin_path.display()
            ));
            if let Err(e) = std::fs::remove_dir_all(&self.pin_path) {
                problems.push(format!("removing {}: {e}", self.pin_path.display()));
            }
        }
        if problems.is_empty() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "undoing the real-server setup in {}: {}",
                self.netns,
                problems.join("\n")
            ))
        }
    }
}

impl Drop for RealServerSetup {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.run_down() {
            // A second panic while a test unwinds would abort the whole run.
            if std::thread::panicking() {
                eprintln!("warning: {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}
