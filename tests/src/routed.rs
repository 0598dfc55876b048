//! A director's network namespace with real interfaces, routes and neighbours, for the
//! `BPF_PROG_TEST_RUN` fixtures whose NAT and TUN paths ask the kernel's FIB: `ext`
//! (198.51.100.2/24, the clients' side) and `int` (192.0.2.1/24, the real servers' side), a
//! veth pair, forwarding on, permanent neighbours for the real servers, the router and the
//! client, and the far real servers' network (203.0.113.0/24) behind the router.

use std::net::Ipv4Addr;

use crate::Netns;

pub const EXT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const INT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
/// The real servers' router (the far real servers and the small-MTU paths are behind it).
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// Real server `n` on the real servers' segment (1..=4 have neighbour entries).
pub fn rs(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + n)
}
pub fn rs_mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x10, n]
}
/// A real server behind the router.
pub fn far_rs(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + n)
}

/// `aa:bb:…` for `ip neigh`.
pub fn lladdr(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The director's namespace (removed on drop with its `Netns`).
pub struct Net {
    pub ns: Netns,
    pub ext: u32,
    pub int: u32,
    pub ext_mac: [u8; 6],
    pub int_mac: [u8; 6],
}

impl Net {
    /// `small_mtu`: far real servers reached through the router on a path locked at 600
    /// bytes (fragmentation needed). `gateway`: the clients' router, made the default route,
    /// so that any client address (spoofed, mutated) has a way back.
    pub fn new(label: &str, small_mtu: &[Ipv4Addr], gateway: Option<(Ipv4Addr, [u8; 6])>) -> Net {
        let ns = Netns::new(label);
        ns.ip(&["link", "add", "ext", "type", "veth", "peer", "name", "int"]);
        ns.ip(&["addr", "add", &format!("{EXT_ADDR}/24"), "dev", "ext"]);
        ns.ip(&["addr", "add", &format!("{INT_ADDR}/24"), "dev", "int"]);
        ns.ip(&["link", "set", "ext", "up"]);
        ns.ip(&["link", "set", "int", "up"]);
        ns.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.forwarding", "1"),
        ]);
        for n in 1..=4 {
            ns.neigh_permanent(&rs(n).to_string(), &lladdr(rs_mac(n)), "int");
        }
        ns.neigh_permanent(&ROUTER.to_string(), &lladdr(ROUTER_MAC), "int");
        ns.neigh_permanent(&CLIENT.to_string(), &lladdr(CLIENT_MAC), "ext");
        let via = |dst: &str, gw: Ipv4Addr, dev: &str, mtu: Option<&str>| {
            let gw = gw.to_string();
            let mut args = vec!["route", "add", dst, "via", &gw, "dev", dev];
            if let Some(m) = mtu {
                args.extend(["mtu", "lock", m]);
            }
            ns.ip(&args);
        };
        via("203.0.113.0/24", ROUTER, "int", None);
        for a in small_mtu {
            via(&format!("{a}/32"), ROUTER, "int", Some("600"));
        }
        if let Some((gw, gw_mac)) = gateway {
            ns.neigh_permanent(&gw.to_string(), &lladdr(gw_mac), "ext");
            via("default", gw, "ext", None);
        }
        let ifindex = |i: &str| {
            ns.run(&["cat", &format!("/sys/class/net/{i}/ifindex")])
                .trim()
                .parse()
                .expect("ifindex")
        };
        let (ext, int) = (ifindex("ext"), ifindex("int"));
        let mac = |i: &str| parse_mac(&ns.mac(i));
        let (ext_mac, int_mac) = (mac("ext"), mac("int"));
        Net {
            ns,
            ext,
            int,
            ext_mac,
            int_mac,
        }
    }
}

/// `aa:bb:…` back into bytes.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}
