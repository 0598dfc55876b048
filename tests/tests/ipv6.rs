//! IPv6 services end to end (issue 13): DR6, NAT6 with port mapping, TUN6 behind a router and
//! a dual-stack director, with real nginx and `curl -6` in network namespaces on
//! `2001:db8::/32`, the XDP balancer on the director, configured through `lb-ctl`'s ipvsadm
//! commands or its TOML file. Faults: the daemon stopped and restarted under an IPv6 table
//! (the data path keeps forwarding, the new daemon adopts the table), an IPv6 route to one
//! TUN6 real server blackholed and restored (only that server goes, and it comes back by
//! itself), and the real servers' NDP silence about the VIP. Root only.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lb_tests::{
    Daemon, TempDir,
    lab6::{self, CLIENT6, Kind, Lab6, VIP4, VIP6, curl6, rs4, rs6, url6},
};

fn tally(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for b in bodies {
        *t.entry(b.clone()).or_insert(0) += 1;
    }
    t
}

/// The clients real server `i`'s nginx logged, without its own readiness checks (loopback).
fn clients(lab: &Lab6, i: usize) -> Vec<String> {
    lab.nginx(i)
        .clients()
        .into_iter()
        .filter(|c| !c.starts_with("127."))
        .collect()
}

/// `[VIP6]:port`, as ipvsadm takes it.
fn vip6(port: u16) -> String {
    format!("[{VIP6}]:{port}")
}

/// `n` curls to `url` that must all succeed; the bodies.
fn curls_ok(lab: &Lab6, d: &Daemon, url: &str, n: usize) -> Vec<String> {
    lab.curls(url, n).unwrap_or_else(|e| {
        panic!(
            "a request to {url} failed: {e}\n--- -Ln ---\n{}\n--- status ---\n{}\n--- daemon log ---\n{}",
            d.ctl_ok(&["-Ln"]),
            d.status(),
            d.log()
        )
    })
}

fn assert_split(bodies: &[String], want: &[(&str, usize)], what: &str, d: &Daemon) {
    let t = tally(bodies);
    let want: BTreeMap<String, usize> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(
        t,
        want,
        "{what}: {bodies:?}\n--- status ---\n{}\n--- daemon log ---\n{}",
        d.status(),
        d.log()
    );
}

#[test]
fn dr6_rr_splits_30_curl6_requests_15_15_and_survives_a_daemon_restart() {
    let mut lab = Lab6::new(Kind::Dr, 2);
    lab.realservers_up();
    let mut d = Daemon::start(&lab.director, &["eth0"], None);
    d.ctl_ok(&["-A", "-t", &vip6(80), "-s", "rr"]);
    for i in 1..=2 {
        let rip = format!("[{}]:80", rs6(Kind::Dr, i));
        d.ctl_ok(&["-a", "-t", &vip6(80), "-r", &rip, "-g", "-w", "1"]);
    }
    let bodies = curls_ok(&lab, &d, &url6(80), 30);
    assert_split(&bodies, &[("rs1", 15), ("rs2", 15)], "rr over 30", &d);
    for w in bodies.windows(2) {
        assert_ne!(
            w[0], w[1],
            "consecutive requests must alternate: {bodies:?}"
        );
    }
    // Each real server saw the client's own IPv6 address (DR rewrites MACs only).
    let seen = clients(&lab, 1);
    assert!(
        !seen.is_empty() && seen.iter().all(|c| c.starts_with(&CLIENT6.to_string())),
        "rs1's access log: {seen:?}"
    );
    // The listing in ipvsadm's IPv6 layout.
    let out = d.ctl_ok(&["-Ln"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[1..4],
        [
            "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
            "TCP  [2001:db8:1::100]:80 rr",
        ],
        "{out}"
    );
    // The MACs came from the IPv6 neighbour table.
    for i in 1..=2 {
        let st = d.real_server(&rs6(Kind::Dr, i).to_string());
        assert_eq!(st["state"], "resolved", "{st}");
        let mac = lab.rs[i - 1].mac("eth0");
        assert_eq!(st["mac"], mac.as_str(), "rs{i}: {st}");
    }
    let save = d.ctl_ok(&["-Sn"]);
    assert!(
        save.contains("-a -t [2001:db8:1::100]:80 -r [2001:db8:1::11]:80 -g -w 1\n"),
        "{save}"
    );

    // Break it: the daemon stops, keeping the data path. IPv6 traffic keeps flowing, and a
    // new daemon adopts the IPv6 table as it was.
    let before = d.ctl_ok(&["-Ln"]);
    d.ctl_ok(&["stop", "--keep-datapath"]);
    let bodies = curls_ok(&lab, &d, &url6(80), 4);
    assert_split(
        &bodies,
        &[("rs1", 2), ("rs2", 2)],
        "while no daemon runs",
        &d,
    );
    d.restart();
    assert!(d.log().contains("adopted the data path"), "{}", d.log());
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .skip(3)
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(strip(&d.ctl_ok(&["-Ln"])), strip(&before));
    let bodies = curls_ok(&lab, &d, &url6(80), 4);
    assert_split(&bodies, &[("rs1", 2), ("rs2", 2)], "after the restart", &d);
}

#[test]
fn nat6_with_port_mapping_translates_both_ways() {
    let lab = Lab6::new(Kind::Nat, 2);
    let d = Daemon::start(&lab.director, &["eth0", "eth1"], None);
    d.ctl_ok(&["-A", "-t", &vip6(80), "-s", "rr", "-p", "60", "-M", "64"]);
    for i in 1..=2 {
        let rip = format!("[{}]:8080", rs6(Kind::Nat, i));
        d.ctl_ok(&["-a", "-t", &vip6(80), "-r", &rip, "-m", "-w", "1"]);
    }
    // Persistent per /64: one client network, one real server for every request.
    let bodies = curls_ok(&lab, &d, &url6(80), 6);
    let t = tally(&bodies);
    assert_eq!(t.len(), 1, "persistence by /64: {bodies:?}");
    let first = bodies[0].clone();
    // The real server saw the client's address (NAT translates the destination only).
    let n: usize = first[2..].parse().expect("rsN");
    let seen = clients(&lab, n);
    assert!(
        !seen.is_empty() && seen.iter().all(|c| c.starts_with(&CLIENT6.to_string())),
        "rs{n}'s access log: {seen:?}"
    );
    let lines = lab
        .nginx(n)
        .wait_access_lines(6, |l| l.contains(&format!("-> {}:8080", rs6(Kind::Nat, n))));
    assert_eq!(lines.len(), 6, "{lines:?}");
    // Without persistence: rr, port mapped, replies translated back.
    d.ctl_ok(&["-E", "-t", &vip6(80), "-s", "rr"]);
    let bodies = curls_ok(&lab, &d, &url6(80), 10);
    assert_split(&bodies, &[("rs1", 5), ("rs2", 5)], "NAT6 rr", &d);
    let out = d.ctl_ok(&["-Ln"]);
    assert!(
        out.contains("  -> [2001:db8:2::11]:8080        Masq    1      "),
        "{out}"
    );
    // The connections, in ipvsadm's IPv6 layout.
    let conns = d.ctl_ok(&["-Lnc"]);
    assert!(
        conns.lines().any(|l| l.starts_with("TCP ")
            && l.contains(&format!(" [{CLIENT6}]:"))
            && l.contains(" [2001:db8:1::100]:80 ")
            && l.contains("[2001:db8:2::1")),
        "{conns}"
    );
}

#[test]
fn tun6_behind_a_router_and_one_blackholed_real_server_goes_alone() {
    let mut lab = Lab6::new(Kind::Tun, 2);
    lab.realservers_up();
    for out in lab.realserver_outputs() {
        assert!(out.contains("IPv6-in-IPv6"), "{out}");
    }
    let d = Daemon::start(&lab.director, &["eth0"], None);
    d.ctl_ok(&["-A", "-t", &vip6(80), "-s", "rr"]);
    for i in 1..=2 {
        let rip = format!("[{}]:80", rs6(Kind::Tun, i));
        d.ctl_ok(&["-a", "-t", &vip6(80), "-r", &rip, "-i", "-w", "1"]);
    }
    let bodies = curls_ok(&lab, &d, &url6(80), 10);
    assert_split(&bodies, &[("rs1", 5), ("rs2", 5)], "TUN6 rr", &d);
    let rs2 = rs6(Kind::Tun, 2).to_string();
    let st = d.real_server(&rs2);
    assert_eq!(st["tunnel_source"], lab6::TUN_DIRECTOR6.to_string(), "{st}");
    assert_eq!(st["next_hop"], lab6::ROUTER_DIRECTOR6.to_string(), "{st}");

    // Break it: an IPv6 route makes rs2 unreachable. Only rs2 goes (the IPv6 route
    // notification tells the daemon), rs1 keeps serving, and rs2 comes back by itself.
    lab.director
        .ip(&["-6", "route", "add", "blackhole", &format!("{rs2}/128")]);
    d.wait_real_server(&rs2, "went unresolved", |r| r["state"] == "unresolved");
    let results: Vec<Result<String, String>> = (0..4)
        .map(|_| curl6(&lab.client, &url6(80)).map(|b| b.trim().to_string()))
        .collect();
    let served: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        served,
        [&"rs1".to_string(), &"rs1".to_string()],
        "rs1 serves its turns, rs2's fail: {results:?}"
    );
    lab.director
        .ip(&["-6", "route", "del", "blackhole", &format!("{rs2}/128")]);
    d.wait_real_server(&rs2, "came back", |r| r["state"] == "resolved");
    let bodies = curls_ok(&lab, &d, &url6(80), 4);
    assert_split(
        &bodies,
        &[("rs1", 2), ("rs2", 2)],
        "after the route came back",
        &d,
    );
}

#[test]
fn a_dual_stack_director_serves_an_ipv4_and_an_ipv6_service_from_one_config() {
    let mut lab = Lab6::new(Kind::DualStackDr, 2);
    lab.realservers_up();
    let dir = TempDir::new("v6cfg");
    let cfg = dir.join("lb.toml");
    let mut text = format!(
        "[[service]]\naddress = \"{VIP4}\"\nport = 80\nscheduler = \"rr\"\n\n\
         [[service]]\naddress = \"[{VIP6}]\"\nport = 80\nscheduler = \"wrr\"\n"
    );
    for i in 1..=2 {
        text += &format!(
            "\n[[service.real_server]]\naddress = \"{}\"\nweight = {i}\n",
            rs6(Kind::DualStackDr, i)
        );
    }
    // The IPv4 service's real servers, after its own [[service]] table.
    let text = text.replacen(
        "scheduler = \"rr\"\n",
        &format!(
            "scheduler = \"rr\"\n\
             [[service.real_server]]\naddress = \"{}\"\n\
             [[service.real_server]]\naddress = \"{}\"\n",
            rs4(1),
            rs4(2)
        ),
        1,
    );
    std::fs::write(&cfg, &text).unwrap();
    let d = Daemon::start(&lab.director, &["eth0"], Some(&cfg));
    let out = d.ctl_ok(&["-Ln"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[3], "TCP  192.0.2.100:80 rr",
        "IPv4 first, as libipvs sorts: {out}"
    );
    assert_eq!(lines[6], "TCP  [2001:db8:1::100]:80 wrr", "{out}");

    let url4 = format!("http://{VIP4}/");
    let v4 = curls_ok(&lab, &d, &url4, 10);
    assert_split(&v4, &[("rs1", 5), ("rs2", 5)], "IPv4 rr", &d);
    let v6 = curls_ok(&lab, &d, &url6(80), 9);
    assert_split(&v6, &[("rs1", 3), ("rs2", 6)], "IPv6 wrr 1:2", &d);
    // The real servers saw both families from the client.
    let seen = clients(&lab, 2);
    assert!(
        seen.iter().any(|c| c.starts_with("192.0.2.10:"))
            && seen.iter().any(|c| c.starts_with(&CLIENT6.to_string())),
        "rs2's access log: {seen:?}"
    );
    // -Lnc lists the connections of both families, IPv6 ones bracketed.
    let conns = d.ctl_ok(&["-Lnc"]);
    let v6_conns = conns
        .lines()
        .filter(|l| l.contains(&format!(" [{CLIENT6}]:")) && l.contains(" [2001:db8:1::100]:80 "))
        .count();
    let v4_conns = conns
        .lines()
        .filter(|l| l.contains(" 192.0.2.10:") && l.contains(" 192.0.2.100:80 "))
        .count();
    assert!(v6_conns >= 1 && v4_conns >= 1, "{conns}");
    // JSON of the connections parses back to socket addresses of both families.
    let json = d.ctl_ok(&["-Lnc", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let families: Vec<bool> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["client"]
                .as_str()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .is_ipv6()
        })
        .collect();
    assert!(
        families.contains(&true) && families.contains(&false),
        "{json}"
    );
    // A reload that would mix the families in one service is refused with IPVS's message,
    // at its place in the file, and changes nothing.
    let bad = text.replacen(
        &format!("address = \"{}\"", rs6(Kind::DualStackDr, 1)),
        &format!("address = \"{}\"", rs4(1)),
        1,
    );
    std::fs::write(&cfg, &bad).unwrap();
    let out = d.ctl(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "reload accepted a mixed service");
    assert!(
        err.contains("Operation not supported with specified address family")
            && err.contains("lb.toml:"),
        "{err}"
    );
    let v6 = curls_ok(&lab, &d, &url6(80), 3);
    assert_split(
        &v6,
        &[("rs1", 1), ("rs2", 2)],
        "after the refused reload",
        &d,
    );
}

/// keepalived's TCP_CHECK against IPv6 real servers: a stopped nginx takes its server out of
/// the table, and back in when it answers again; the other keeps serving throughout.
#[test]
fn a_tcp_check_takes_a_stopped_ipv6_real_server_out_and_back() {
    let mut lab = Lab6::new(Kind::Dr, 2);
    lab.realservers_up();
    let dir = TempDir::new("v6hc");
    let cfg = dir.join("lb.toml");
    let mut text = format!("[[service]]\naddress = \"{VIP6}\"\nport = 80\nscheduler = \"rr\"\n");
    for i in 1..=2 {
        text += &format!(
            "[[service.real_server]]\naddress = \"{}\"\n\
             [[service.real_server.check]]\ntype = \"tcp\"\ndelay_loop = 1\n\
             connect_timeout = 1\nretry = 0\n",
            rs6(Kind::Dr, i)
        );
    }
    std::fs::write(&cfg, &text).unwrap();
    let d = Daemon::start(&lab.director, &["eth0"], Some(&cfg));
    let listed = |d: &Daemon| {
        d.ctl_ok(&["-Ln"])
            .lines()
            .filter(|l| l.starts_with("  -> [2001:db8:1::"))
            .count()
    };
    let wait_listed = |d: &Daemon, n: usize, what: &str| {
        for _ in 0..100 {
            if listed(d) == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{what}: -Ln\n{}\nstatus {}\n{}",
            d.ctl_ok(&["-Ln"]),
            d.status(),
            d.log()
        );
    };
    wait_listed(&d, 2, "both checked up");
    lab.stop_nginx(1);
    wait_listed(&d, 1, "rs1 never taken out");
    let bodies = curls_ok(&lab, &d, &url6(80), 4);
    assert_split(&bodies, &[("rs2", 4)], "with rs1 down", &d);
    lab.start_nginx(1);
    wait_listed(&d, 2, "rs1 never back");
    let bodies = curls_ok(&lab, &d, &url6(80), 4);
    assert_split(&bodies, &[("rs1", 2), ("rs2", 2)], "with rs1 back", &d);
}

/// The NDP counterpart of arp_ignore/arp_announce: with `lb-ctl realserver` done on both
/// real servers and the VIP taken off the director, nobody on the segment answers a
/// neighbour solicitation for the VIP (the real servers hold it on `lo` only).
#[test]
fn the_real_servers_never_answer_neighbour_solicitations_for_the_vip() {
    let mut lab = Lab6::new(Kind::Dr, 2);
    lab.realservers_up();
    for (i, ns) in lab.rs.iter().enumerate() {
        let lo = ns.ip(&["-6", "addr", "show", "dev", "lo"]);
        assert!(
            lo.contains(&format!("inet6 {VIP6}/128")),
            "rs{} lo: {lo}",
            i + 1
        );
        assert!(!lo.contains("tentative"), "rs{}: DAD ran: {lo}", i + 1);
    }
    lab.director
        .ip(&["-6", "addr", "del", &format!("{VIP6}/128"), "dev", "eth0"]);
    // Solicit the VIP from the client: send it a datagram, which needs its MAC first.
    for _ in 0..2 {
        lab.client.enter(|| {
            let s = std::net::UdpSocket::bind("[::]:0").unwrap();
            let _ = s.send_to(b"x", (IpAddr::from(VIP6), 9));
        });
        std::thread::sleep(Duration::from_millis(1500));
    }
    let neigh = lab.client.ip(&["-6", "neigh", "show", "dev", "eth0"]);
    let entry = neigh
        .lines()
        .find(|l| l.starts_with(&format!("{VIP6} ")))
        .unwrap_or_else(|| panic!("the client never solicited {VIP6}: {neigh}"));
    assert!(
        !entry.contains("lladdr"),
        "someone answered for the VIP: {entry}\nrs MACs: {} {}",
        lab.rs[0].mac("eth0"),
        lab.rs[1].mac("eth0")
    );
    // The director's own address is answered (the segment works).
    let probe = lab6::DIRECTOR6;
    lab.client.enter(|| {
        let s = std::net::UdpSocket::bind("[::]:0").unwrap();
        let _ = s.send_to(b"x", (IpAddr::from(probe), 9));
    });
    std::thread::sleep(Duration::from_millis(500));
    let neigh = lab.client.ip(&["-6", "neigh", "show", "dev", "eth0"]);
    assert!(
        neigh
            .lines()
            .any(|l| l.starts_with(&format!("{probe} ")) && l.contains(&lab.director.mac("eth0"))),
        "{neigh}"
    );
    // --down takes the VIP off lo again, and nothing else.
    for out in lab.realservers_down() {
        assert!(
            out.contains(&format!("removed: {VIP6}/128 from lo")),
            "{out}"
        );
    }
    for (i, ns) in lab.rs.iter().enumerate() {
        let lo = ns.ip(&["-6", "addr", "show", "dev", "lo"]);
        assert!(!lo.contains(&VIP6.to_string()), "rs{}: {lo}", i + 1);
        assert!(lo.contains("inet6 ::1/128"), "rs{}: {lo}", i + 1);
    }
}
