//! Root-only checks of the NAT, TUN and mixed labs' wiring without the balancer, of
//! `lb-ctl realserver` through its `RealServerSetup` guard, and that every lab leaves nothing
//! behind.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use lb_tests::cleanup::{assert_netns_gone, assert_paths_gone};
use lb_tests::lab::{mixed, nat, tun};
use lb_tests::packet::Frame;
use lb_tests::{
    MixedLab, NatLab, Netns, RealServerMode, RealServerSetup, TunLab, UdpEcho, curl, udp_query,
};

fn assert_curl(ns: &Netns, url: &str, want: &str) {
    let body = curl(ns, url);
    assert_eq!(body.as_deref(), Ok(want), "curl {url} from {}", ns.name());
}

fn assert_xdp_on(ns: &Netns, iface: &str) {
    let link = ns.ip(&["link", "show", "dev", iface]);
    assert!(
        link.contains("xdp"),
        "no XDP program on {iface} in {}:\n{link}",
        ns.name()
    );
}

fn sysctl(ns: &Netns, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.run(&["cat", &path]).trim().to_string()
}

fn lo_addrs(ns: &Netns) -> String {
    ns.ip(&["-br", "addr", "show", "dev", "lo"])
}

/// Sends the ready-made IPv4 packet `ip` (header included) from a raw socket in `ns`, routed
/// by `ns`'s table towards `dst`.
fn send_raw_ipv4(ns: &Netns, ip: &[u8], dst: Ipv4Addr) {
    ns.enter(|| {
        // SAFETY: plain socket(2); the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(
            fd >= 0,
            "raw socket in {}: {}",
            ns.name(),
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: buffer and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                ip.as_ptr().cast(),
                ip.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            ip.len() as isize,
            "sendto {dst} from a raw socket in {}: {}",
            ns.name(),
            std::io::Error::last_os_error()
        );
    });
}

/// What the TUN director does to one client datagram, done by hand: the client's UDP packet
/// to VIP:53 inside an IPIP packet from the director to rs1, sent from the director. Returns
/// the answer the client's socket got (within `wait`) and where it came from, if any.
fn tunnelled_udp_probe(
    lab: &TunLab,
    payload: &str,
    wait: Duration,
) -> Option<(String, SocketAddr)> {
    let client = lab
        .client()
        .enter(|| UdpSocket::bind(("0.0.0.0", 0)))
        .expect("binding a UDP socket in the client");
    let port = client.local_addr().expect("client socket address").port();
    let inner = Frame::udp(tun::CLIENT_IP, port, tun::VIP, 53, payload.as_bytes()).ip();
    // Protocol 4: IPv4 in IPv4.
    let outer = Frame::raw(tun::DIRECTOR_IP, lab.rs_ip(1), 4, inner).ip();
    send_raw_ipv4(lab.director(), &outer, lab.rs_ip(1));
    client
        .set_read_timeout(Some(wait))
        .expect("setting a read timeout");
    let mut buf = [0u8; 1500];
    client
        .recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

#[test]
fn nat_lab_wiring_and_teardown() {
    lb_tests::require_root();
    let lab = NatLab::new(2);
    let names = lab.netns_names();
    let pins: Vec<PathBuf> = lab
        .xdp_passes()
        .iter()
        .map(|x| x.pin().to_path_buf())
        .collect();
    let dirs: Vec<PathBuf> = lab
        .real_servers()
        .iter()
        .flat_map(|rs| {
            [
                rs.nginx().dir().to_path_buf(),
                rs.nginx_on(nat::ALT_PORT).dir().to_path_buf(),
            ]
        })
        .collect();

    // Client side: the director's external address and the VIP are on its segment (UDP,
    // not ping: iputils-ping is not among the packages the tests may rely on). The answer
    // from the VIP also shows UdpEcho answers from the address it was asked on.
    let director_echo = UdpEcho::start(lab.director(), "director", 7);
    for ip in [nat::DIRECTOR_EXT_IP, nat::VIP] {
        let dst = SocketAddr::V4(SocketAddrV4::new(ip, 7));
        let answer = udp_query(lab.client(), dst, "hi");
        assert_eq!(answer.as_deref(), Ok("director:hi"), "client -> {dst}");
    }
    drop(director_echo);
    let neigh = lab
        .client()
        .ip(&["neigh", "show", &nat::VIP.to_string(), "dev", "eth0"]);
    let director_mac = lab.director().mac(lab.ext_iface());
    assert!(
        neigh.contains(&director_mac),
        "client resolved the VIP to {neigh:?}, want the director's eth0 MAC {director_mac}"
    );

    // Real servers' side: every service port answers the director.
    for i in 1..=2 {
        let rs = lab.rs(i);
        let ip = lab.rs_ip(i);
        assert_eq!(ip, nat::rs_ip(i));
        assert_curl(
            lab.director(),
            &format!("http://{ip}/"),
            &format!("rs{i}\n"),
        );
        assert_curl(
            lab.director(),
            &format!("http://{ip}:{}/", nat::ALT_PORT),
            &rs.body_on(nat::ALT_PORT),
        );
        assert_eq!(rs.body_on(nat::ALT_PORT), format!("rs{i}-8080\n"));
        let dst = lab.rs_addr(i, nat::UDP_PORT);
        let answer = udp_query(lab.director(), dst, "ping")
            .unwrap_or_else(|e| panic!("udp_query director -> {dst}: {e}"));
        assert_eq!(answer, format!("rs{i}:ping"), "UDP answer from {dst}");
        let senders = rs.udp_echo().senders();
        assert!(
            senders
                .iter()
                .any(|s| s.ip() == std::net::IpAddr::V4(nat::DIRECTOR_INT_IP)),
            "rs{i}'s UDP echo did not see the director's internal address: {senders:?}"
        );
    }

    // The director routes: the client reaches a real server's own address through it, and
    // the answer comes back through it (the real servers' default gateway).
    assert_curl(lab.client(), &format!("http://{}/", nat::rs_ip(2)), "rs2\n");
    let answer = udp_query(lab.client(), lab.rs_addr(1, nat::UDP_PORT), "via-director");
    assert_eq!(answer.as_deref(), Ok("rs1:via-director"));
    assert_eq!(sysctl(lab.director(), "net.ipv4.ip_forward"), "1");

    for port in ["director", "director-eth1"] {
        assert_xdp_on(lab.switch(), port);
    }
    let ports = lab
        .switch()
        .ip(&["-br", "link", "show", "master", nat::INT_BRIDGE]);
    for port in ["director-eth1", "rs1", "rs2"] {
        assert!(
            ports.lines().any(|l| l.starts_with(&format!("{port}@"))),
            "{port} is not a port of {}:\n{ports}",
            nat::INT_BRIDGE
        );
    }

    drop(lab);
    assert_netns_gone(&names);
    assert_paths_gone(&pins);
    assert_paths_gone(&dirs);
}

#[test]
fn nat_lab_udp_query_reports_silence() {
    lb_tests::require_root();
    let mut lab = NatLab::new(1);
    let dst = lab.rs_addr(1, nat::UDP_PORT);
    lab.rs_mut(1).stop_udp_echo();
    let err =
        udp_query(lab.director(), dst, "anyone?").expect_err("nothing listens on rs1:53 any more");
    assert!(
        err.contains("no UDP answer") && err.contains(&dst.to_string()),
        "unhelpful error: {err}"
    );
}

#[test]
fn tun_lab_wiring_and_realserver_setup() {
    lb_tests::require_root();
    let lab = TunLab::new(2);
    let names = lab.netns_names();
    let xdp_pin = lab
        .xdp_pass()
        .expect("TunLab attaches XdpPass")
        .pin()
        .to_path_buf();

    // The client reaches the real servers' own addresses through the router, and the
    // director reaches them through its default route.
    for i in 1..=2 {
        let url = format!("http://{}/", tun::rs_ip(i));
        assert_curl(lab.client(), &url, &format!("rs{i}\n"));
        assert_curl(lab.director(), &url, &format!("rs{i}\n"));
    }
    // The router sends the VIP to the director.
    let director_echo = UdpEcho::start(lab.director(), "director", 7);
    let answer = udp_query(lab.client(), lab.vip_addr(7), "hi");
    assert_eq!(answer.as_deref(), Ok("director:hi"), "client -> VIP:7");
    drop(director_echo);
    assert_xdp_on(lab.router(), tun::ROUTER_DIRECTOR_IFACE);
    for key in ["all", "eth1"] {
        let v = sysctl(lab.router(), &format!("net.ipv4.conf.{key}.rp_filter"));
        assert_eq!(v, "0", "router {key}.rp_filter");
    }
    // Not a real server yet: no VIP on lo.
    assert!(
        !lo_addrs(lab.rs(1).ns()).contains(&tun::VIP.to_string()),
        "rs1 has the VIP before realservers_up"
    );

    // A tunnelled datagram is dropped by a server without decapsulation (no ipip here).
    let echo = UdpEcho::start(lab.rs(1).ns(), "rs1", 53);
    let before = tunnelled_udp_probe(&lab, "before", Duration::from_secs(1));
    assert_eq!(before, None, "answer to a tunnelled datagram before decap");

    let setups = lab.realservers_up();
    assert_eq!(setups.len(), 2);
    for (i, setup) in setups.iter().enumerate() {
        let rs = lab.rs(i + 1);
        let out = setup.stdout();
        for want in [
            "decap:",
            "added: 192.0.2.100/32 on lo",
            "set: net.ipv4.conf.all.arp_ignore = 1",
            "set: net.ipv4.conf.lo.arp_announce = 2",
        ] {
            assert!(
                out.contains(want),
                "`lb-ctl realserver` on {} printed no {want:?}:\n{out}",
                rs.name()
            );
        }
        assert!(
            lo_addrs(rs.ns()).contains(&format!("{}/32", tun::VIP)),
            "{} has no VIP on lo after setup: {}",
            rs.name(),
            lo_addrs(rs.ns())
        );
        assert_eq!(sysctl(rs.ns(), "net.ipv4.conf.all.arp_ignore"), "1");
        assert_eq!(sysctl(rs.ns(), "net.ipv4.conf.lo.arp_announce"), "2");
        assert_xdp_on(rs.ns(), tun::RS_IFACE);
        assert!(
            setup.pin_path().is_dir() && setup.state_file().is_file(),
            "pins {} / state {} missing after setup",
            setup.pin_path().display(),
            setup.state_file().display()
        );
    }

    // The same datagram is now decapsulated, answered from the VIP, and routed straight back
    // to the client (direct server return through the router, rp_filter off).
    let after = tunnelled_udp_probe(&lab, "after", Duration::from_secs(3));
    assert_eq!(
        after,
        Some((
            "rs1:after".to_string(),
            SocketAddr::V4(SocketAddrV4::new(tun::VIP, 53))
        )),
        "answer to a tunnelled datagram with decap on rs1"
    );
    // Its nginx also answers on the VIP now that it is on lo.
    assert_curl(lab.rs(1).ns(), &format!("http://{}/", tun::VIP), "rs1\n");

    let pins: Vec<PathBuf> = setups.iter().map(|s| s.pin_path().to_path_buf()).collect();
    let states: Vec<PathBuf> = setups
        .iter()
        .map(|s| s.state_file().to_path_buf())
        .collect();
    drop(setups);
    assert_paths_gone(&pins);
    assert_paths_gone(&states);
    for rs in lab.real_servers() {
        let lo = lo_addrs(rs.ns());
        assert!(
            !lo.contains(&tun::VIP.to_string()),
            "{} still has the VIP on lo after --down: {lo}",
            rs.name()
        );
        assert_eq!(sysctl(rs.ns(), "net.ipv4.conf.all.arp_ignore"), "0");
        assert_eq!(sysctl(rs.ns(), "net.ipv4.conf.lo.arp_announce"), "0");
        let link = rs.ns().ip(&["link", "show", "dev", tun::RS_IFACE]);
        assert!(
            !link.contains("xdp"),
            "decapsulation still attached on {} after --down:\n{link}",
            rs.name()
        );
    }
    let gone = tunnelled_udp_probe(&lab, "gone", Duration::from_secs(1));
    assert_eq!(gone, None, "answer to a tunnelled datagram after --down");

    drop(echo);
    drop(lab);
    assert_netns_gone(&names);
    assert_paths_gone(&[xdp_pin]);
}

/// `--down` undoes only what `up` changed: a VIP and a sysctl that were there before stay.
#[test]
fn realserver_dr_undoes_only_its_own_changes() {
    lb_tests::require_root();
    let ns = Netns::new("rs");
    ns.disable_ipv6();
    let vip = Ipv4Addr::new(192, 0, 2, 100);
    let other = Ipv4Addr::new(192, 0, 2, 101);
    ns.ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"]);
    ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");

    let setup = RealServerSetup::up(&ns, &[vip, other], RealServerMode::Dr, None);
    let out = setup.stdout().to_string();
    for want in [
        "ok: 192.0.2.100 already on lo",
        "added: 192.0.2.101/32 on lo",
        "ok: net.ipv4.conf.all.arp_ignore = 1",
        "set: net.ipv4.conf.lo.arp_ignore = 1",
        "set: net.ipv4.conf.all.arp_announce = 2",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    assert!(
        !out.contains("decap:"),
        "DR mode set up decapsulation:\n{out}"
    );
    assert!(
        !setup.pin_path().exists(),
        "DR mode pinned something at {}",
        setup.pin_path().display()
    );
    let down = setup.down();
    assert!(
        down.contains("removed: 192.0.2.101/32 from lo"),
        "--down printed:\n{down}"
    );
    let lo = lo_addrs(&ns);
    assert!(
        lo.contains(&format!("{vip}/32")) && !lo.contains(&other.to_string()),
        "after --down lo should keep {vip} (there before) and lose {other}: {lo}"
    );
    assert_eq!(sysctl(&ns, "net.ipv4.conf.all.arp_ignore"), "1");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.lo.arp_ignore"), "0");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.all.arp_announce"), "0");
}

#[test]
fn mixed_lab_wiring_and_teardown() {
    lb_tests::require_root();
    let lab = MixedLab::new();
    let names = lab.netns_names();
    let pins: Vec<PathBuf> = lab
        .xdp_passes()
        .iter()
        .map(|x| x.pin().to_path_buf())
        .collect();

    assert_curl(
        lab.client(),
        &format!("http://{}/", mixed::RSDR_IP),
        "rsdr\n",
    );
    assert_curl(
        lab.director(),
        &format!("http://{}/", mixed::RSNAT_IP),
        "rsnat\n",
    );
    assert_curl(
        lab.director(),
        &format!("http://{}/", mixed::RSDR_IP),
        "rsdr\n",
    );
    assert_eq!(lab.rsdr().name(), "rsdr");
    assert_eq!(lab.rsnat().name(), "rsnat");

    // rsdr holds the VIP but must not answer ARP for it: the client resolves it to the
    // director. Nothing listens on the director, so this fails, but it makes the client ARP.
    let lo = lo_addrs(lab.rsdr().ns());
    assert!(
        lo.contains(&format!("{}/32", mixed::VIP)),
        "rsdr has no VIP on lo: {lo}"
    );
    let refused = curl(lab.client(), &format!("http://{}/", mixed::VIP));
    assert!(
        refused.is_err(),
        "nothing should answer on the VIP without a balancer, got {refused:?}"
    );
    let neigh = lab
        .client()
        .ip(&["neigh", "show", &mixed::VIP.to_string(), "dev", "eth0"]);
    let director_mac = lab.director().mac(lab.ext_iface());
    assert!(
        neigh.contains(&director_mac),
        "client resolved the VIP to {neigh:?}, want the director's MAC {director_mac}"
    );
    for port in ["director", "director-eth1"] {
        assert_xdp_on(lab.switch(), port);
    }

    drop(lab);
    assert_netns_gone(&names);
    assert_paths_gone(&pins);
}

/// A panic with a TUN lab and its real-server setups up still removes everything: the
/// setups' `--down` runs while unwinding, before the namespaces go.
#[test]
fn tun_lab_is_torn_down_when_a_test_panics() {
    lb_tests::require_root();
    let mut names = Vec::new();
    let mut pins = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = TunLab::new(1);
        names = lab.netns_names();
        pins.push(lab.xdp_pass().expect("XdpPass").pin().to_path_buf());
        let setups = lab.realservers_up();
        pins.extend(setups.iter().map(|s| s.pin_path().to_path_buf()));
        pins.extend(setups.iter().map(|s| s.state_file().to_path_buf()));
        panic!("deliberate panic with the lab and its real-server setups up");
    }));
    assert!(result.is_err(), "the closure should have panicked");
    assert_eq!(
        names.len(),
        5,
        "switch, client, router, director, rs1: {names:?}"
    );
    assert_eq!(pins.len(), 3, "{pins:?}");
    assert_netns_gone(&names);
    assert_paths_gone(&pins);
}

/// A failing `lb-ctl realserver` (no such interface) panics with its output, and the guard's
/// `--down` while unwinding restores what the run had changed before it failed.
#[test]
fn realserver_setup_failure_is_undone() {
    lb_tests::require_root();
    let ns = Netns::new("rs");
    ns.disable_ipv6();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        RealServerSetup::up(&ns, &[tun::VIP], RealServerMode::Tun, Some("no-such-if"))
    }));
    let msg = match result {
        Ok(_) => panic!("lb-ctl realserver --interface no-such-if succeeded"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "<not a string>".into()),
    };
    assert!(
        msg.contains("no-such-if") && msg.contains("exited with"),
        "panic message should show the failed command and its output:\n{msg}"
    );
    let pin_path = msg
        .split_whitespace()
        .skip_while(|w| *w != "--pin-path")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no --pin-path in the panic message:\n{msg}"));
    assert_paths_gone(&[pin_path]);
    let lo = lo_addrs(&ns);
    assert!(
        !lo.contains(&tun::VIP.to_string()),
        "VIP left on lo after a failed setup: {lo}"
    );
    assert_eq!(sysctl(&ns, "net.ipv4.conf.all.arp_ignore"), "0");
}
