//! The LVS-DR lab of the classic tutorial, built from namespaces on one bridged L2 segment.
//!
//! ```text
//!   client 192.0.2.10 ─┐
//!   director 192.0.2.2 ─┤  br0 in the "switch" netns (the root netns is never touched)
//!     (+ VIP 192.0.2.100/32 on eth0, where the balancer runs)
//!   rs1 192.0.2.11 ─────┤  each real server: VIP/32 on lo, arp_ignore=1, arp_announce=2,
//!   rs2 192.0.2.12 ─────┘  nginx answering its own name
//! ```
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::{Netns, Nginx, XdpPass, veth};

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
    // Declared before `ns`: nginx stops before its namespace goes.
    nginx: Option<Nginx>,
    ns: Netns,
    name: String,
    ip: Ipv4Addr,
}

impl RealServer {
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
            .unwrap_or_else(|| panic!("{} has no nginx (DrLabOpts::nginx was false)", self.name))
    }

    pub fn nginx_mut(&mut self) -> &mut Nginx {
        let name = self.name.clone();
        self.nginx
            .as_mut()
            .unwrap_or_else(|| panic!("{name} has no nginx (DrLabOpts::nginx was false)"))
    }

    /// Stops its nginx (a dead real server for failure tests); `None` if there was none.
    pub fn stop_nginx(&mut self) -> Option<Nginx> {
        self.nginx.take()
    }
}

/// The lab; Drop tears it all down (XDP pin, nginx, namespaces and with them every link).
pub struct DrLab {
    // Drop order is declaration order: the XDP pin and the servers go before the namespaces.
    xdp: Option<XdpPass>,
    real_servers: Vec<RealServer>,
    client: Netns,
    director: Netns,
    switch: Netns,
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
            // Set before the VIP exists on lo so the server never answers or announces ARP
            // for it: the VIP must resolve to the director only.
            ns.sysctls(&[
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.lo.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                ("net.ipv4.conf.lo.arp_announce", "2"),
            ]);
            // The tutorial's `ifconfig lo:0 VIP netmask 255.255.255.255 up`.
            ns.ip(&["addr", "add", &vip, "dev", "lo", "label", "lo:0"]);
            servers.push(RealServer {
                nginx: None,
                ns,
                name,
                ip,
            });
        }

        let mut lab = DrLab {
            xdp: None,
            real_servers: servers,
            client,
            director,
            switch,
        };
        if opts.xdp_pass {
            lab.xdp = Some(XdpPass::attach(&lab.switch, "director"));
        }
        if opts.nginx {
            for rs in &mut lab.real_servers {
                rs.nginx = Some(Nginx::start(&rs.ns, &rs.name));
            }
        }
        lab
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn director(&self) -> &Netns {
        &self.director
    }

    /// The netns holding the bridge; its ports are named after the hosts (`client`,
    /// `director`, `rs1`, …).
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
        assert!(
            (1..=self.real_servers.len()).contains(&i),
            "no rs{i}: the lab has rs1..rs{}",
            self.real_servers.len()
        );
        &self.real_servers[i - 1]
    }

    pub fn rs_mut(&mut self, i: usize) -> &mut RealServer {
        let n = self.real_servers.len();
        assert!((1..=n).contains(&i), "no rs{i}: the lab has rs1..rs{n}");
        &mut self.real_servers[i - 1]
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

    /// Names of every namespace of the lab (to check that they are gone after drop).
    pub fn netns_names(&self) -> Vec<String> {
        let mut v = vec![
            self.switch.name().to_string(),
            self.client.name().to_string(),
            self.director.name().to_string(),
        ];
        v.extend(self.real_servers.iter().map(|r| r.ns.name().to_string()));
        v
    }
}

/// A host namespace on the segment: `eth0` with `ip`/24, its veth peer (named `port`) on the
/// bridge in `switch`.
fn host(switch: &Netns, port: &str, ip: Ipv4Addr) -> Netns {
    let ns = Netns::new(port);
    // Before the veth exists, so it never gets an IPv6 address or runs DAD.
    ns.disable_ipv6();
    veth(switch, port, &ns, HOST_IFACE);
    switch.ip(&["link", "set", "dev", port, "master", BRIDGE]);
    // With TX checksum offload a veth sends TCP/UDP with only the pseudo-header sum and
    // marks the skb CHECKSUM_PARTIAL; native XDP on the director turns the skb into a bare
    // frame, that mark is lost, and after XDP_TX the real server drops the segment
    // (TcpInCsumErrors). Real NICs fill in the sum on the wire, so compute it in software.
    crate::cmd::check(
        ns.command(crate::cmd::tool("ethtool"))
            .args(["-K", HOST_IFACE, "tx", "off"]),
    );
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{PREFIX_LEN}"),
        "dev",
        HOST_IFACE,
    ]);
    ns
}
