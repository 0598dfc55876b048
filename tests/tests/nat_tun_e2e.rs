//! LVS-NAT and LVS-TUN end to end, and a service mixing DR and NAT: real nginx, curl and UDP
//! through the XDP director in network namespaces. Root only.

use std::collections::BTreeMap;

use lb_tests::{
    Daemon, KeepAlive, MixedLab, NatLab, TunLab, curl,
    lab::{nat, tun},
    udp_query,
};

fn tally(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for b in bodies {
        *t.entry(b.clone()).or_insert(0) += 1;
    }
    t
}

fn curls(client: &lb_tests::Netns, url: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match curl(client, url) {
            Ok(b) => b.trim().to_string(),
            Err(e) => panic!("request {i} to {url}: {e}"),
        })
        .collect()
}

/// `lb-ctl status` counters.
fn counters(d: &Daemon) -> BTreeMap<String, u64> {
    let v: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["status"])).expect("status JSON");
    v["counters"]
        .as_object()
        .expect("counters")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

#[test]
fn seed_nat_walkthrough_rr_splits_30_requests_15_15_and_servers_see_the_client() {
    let lab = NatLab::new(2);
    let d = Daemon::start(lab.director(), &lab.director_ifaces(), None);
    // The tutorial's commands (weights 1 and 2, which rr ignores).
    d.ctl_ok(&["-A", "-t", "198.51.100.100:80", "-s", "rr"]);
    d.ctl_ok(&[
        "-a",
        "-t",
        "198.51.100.100:80",
        "-r",
        "192.0.2.11",
        "-m",
        "-w",
        "1",
    ]);
    d.ctl_ok(&[
        "-a",
        "-t",
        "198.51.100.100:80",
        "-r",
        "192.0.2.12",
        "-m",
        "-w",
        "2",
    ]);
    let bodies = curls(lab.client(), "http://198.51.100.100/", 30);
    let t = tally(&bodies);
    assert_eq!(
        (t.get("rs1"), t.get("rs2")),
        (Some(&15), Some(&15)),
        "rr over 30 requests: {bodies:?}\n{}",
        d.log()
    );
    let out = d.ctl_ok(&["-Ln"]);
    assert!(out.contains("TCP  198.51.100.100:80 rr\n"), "{out}");
    assert!(
        out.contains("  -> 192.0.2.11:80                Masq    1      "),
        "{out}"
    );
    assert!(
        out.contains("  -> 192.0.2.12:80                Masq    2      "),
        "{out}"
    );
    // DNAT, not full NAT: the real servers saw the client's own address.
    for i in 1..=2 {
        // (nginx's own readiness probe from 127.0.0.1 is not VIP traffic.)
        let lines = lab
            .rs(i)
            .nginx()
            .wait_access_lines(15, |l| !l.starts_with("127.0.0.1:"));
        assert!(
            lines.iter().all(|l| l.starts_with("198.51.100.10:")),
            "rs{i} access log: {lines:?}"
        );
    }
    // Replies were translated back by the director, not by the kernel.
    let c = counters(&d);
    assert!(c["redirect"] > 0 && c["pass_no_reply_conn"] == 0, "{c:?}");
}

#[test]
fn nat_port_mapping_and_udp() {
    let lab = NatLab::new(2);
    let d = Daemon::start(lab.director(), &lab.director_ifaces(), None);
    d.ctl_ok(&["-A", "-t", "198.51.100.100:80", "-s", "rr"]);
    d.ctl_ok(&["-A", "-u", "198.51.100.100:53", "-s", "rr"]);
    for i in 1..=2 {
        let rs = lab.rs_ip(i).to_string();
        d.ctl_ok(&[
            "-a",
            "-t",
            "198.51.100.100:80",
            "-r",
            &format!("{rs}:{}", nat::ALT_PORT),
            "-m",
        ]);
        d.ctl_ok(&[
            "-a",
            "-u",
            "198.51.100.100:53",
            "-r",
            &format!("{rs}:53"),
            "-m",
        ]);
    }
    let t = tally(&curls(lab.client(), "http://198.51.100.100/", 6));
    let want: BTreeMap<String, usize> = (1..=2)
        .map(|i| (lab.rs(i).body_on(nat::ALT_PORT).trim().to_string(), 3))
        .collect();
    assert_eq!(t, want, "VIP:80 → RIP:8080");
    let mut answers = Vec::new();
    for q in 0..4 {
        let a = udp_query(lab.client(), lab.vip_addr(53), &format!("q{q}"))
            .unwrap_or_else(|e| panic!("UDP query {q}: {e}\n{}", d.log()));
        answers.push(a);
    }
    assert_eq!(answers[0].split(':').nth(1), Some("q0"), "{answers:?}");
    let servers: Vec<&str> = answers
        .iter()
        .map(|a| a.split(':').next().unwrap())
        .collect();
    assert!(
        servers.contains(&"rs1") && servers.contains(&"rs2"),
        "{answers:?}"
    );
    let out = d.ctl_ok(&["-Ln"]);
    assert!(out.contains("UDP  198.51.100.100:53 rr\n"), "{out}");
}

#[test]
fn nat_long_lived_connection_survives_edits_of_other_servers() {
    let lab = NatLab::new(2);
    let d = Daemon::start(lab.director(), &lab.director_ifaces(), None);
    d.ctl_ok(&["-A", "-t", "198.51.100.100:80", "-s", "rr"]);
    for i in 1..=2 {
        d.ctl_ok(&[
            "-a",
            "-t",
            "198.51.100.100:80",
            "-r",
            &lab.rs_ip(i).to_string(),
            "-m",
        ]);
    }
    let mut held = KeepAlive::connect(lab.client(), lab.vip_addr(80)).unwrap();
    let mine = held.request().unwrap().trim().to_string();
    let other = if mine == "rs1" {
        lab.rs_ip(2)
    } else {
        lab.rs_ip(1)
    };
    d.ctl_ok(&[
        "-e",
        "-t",
        "198.51.100.100:80",
        "-r",
        &other.to_string(),
        "-m",
        "-w",
        "3",
    ]);
    for _ in 0..5 {
        assert_eq!(held.request().unwrap().trim(), mine);
    }
    let out = d.ctl_ok(&["-lnc"]);
    assert!(
        out.contains("ESTABLISHED"),
        "the held connection is listed: {out}"
    );
}

#[test]
fn tun_through_a_router_with_lb_ctl_realserver_and_replies_bypass_the_director() {
    let lab = TunLab::new(2);
    let setups = lab.realservers_up();
    for s in &setups {
        assert!(s.stdout().contains("decap:"), "{}", s.stdout());
    }
    let d = Daemon::start(lab.director(), &[tun::DIRECTOR_IFACE], None);
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    for i in 1..=2 {
        d.ctl_ok(&[
            "-a",
            "-t",
            "192.0.2.100:80",
            "-r",
            &lab.rs_ip(i).to_string(),
            "-i",
        ]);
    }
    let bodies = curls(lab.client(), "http://192.0.2.100/", 10);
    let t = tally(&bodies);
    assert_eq!(
        (t.get("rs1"), t.get("rs2")),
        (Some(&5), Some(&5)),
        "{bodies:?}\n{}",
        d.log()
    );
    let out = d.ctl_ok(&["-Ln"]);
    assert!(
        out.contains(&format!("  -> {:<28} Tunnel  1      ", "203.0.113.11:80")),
        "{out}"
    );
    // The requests went out tunnelled; not one reply came back through the director.
    let c = counters(&d);
    assert!(c["redirect"] + c["tx"] >= 10, "{c:?}");
    let snap: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["-Ln", "-o", "json"])).unwrap();
    let outpkts = snap["services"][0]["stats"]["outpkts"].as_u64().unwrap();
    assert_eq!(outpkts, 0, "no reply traffic at the director");
}

#[test]
fn tun_capture_shows_requests_tunnelled_and_no_reply_on_the_director_link() {
    let lab = TunLab::new(1);
    let _setups = lab.realservers_up();
    let d = Daemon::start(lab.director(), &[tun::DIRECTOR_IFACE], None);
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    d.ctl_ok(&[
        "-a",
        "-t",
        "192.0.2.100:80",
        "-r",
        &lab.rs_ip(1).to_string(),
        "-i",
    ]);
    // The router's side of the director link sees everything the director sends and gets
    // (a capture on the director itself would not: XDP acts before packet taps).
    let dir = lb_tests::TempDir::new("tuncap");
    let pcap = dir.path().join("director-link.txt");
    let log = std::fs::File::create(&pcap).unwrap();
    let mut cap = lab
        .router()
        .command("tcpdump")
        .args(["-n", "-l", "-i", tun::ROUTER_DIRECTOR_IFACE, "ip"])
        .stdout(log)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let bodies = curls(lab.client(), "http://192.0.2.100/", 3);
    assert!(bodies.iter().all(|b| b == "rs1"), "{bodies:?}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = cap.kill();
    let _ = cap.wait();
    let seen = std::fs::read_to_string(&pcap).unwrap();
    assert!(
        seen.lines()
            .any(|l| l.contains("198.51.100.10.") && l.contains("> 192.0.2.100.80")),
        "requests go to the director: {seen}"
    );
    assert!(
        seen.lines().any(|l| l.contains("192.0.2.2 > 203.0.113.11")),
        "the director tunnels them to the real server: {seen}"
    );
    assert!(
        !seen
            .lines()
            .any(|l| l.contains("192.0.2.100.80 > 198.51.100.10.")),
        "a reply passed through the director: {seen}"
    );
}

#[test]
fn one_service_mixes_dr_and_nat_real_servers() {
    let lab = MixedLab::new();
    let d = Daemon::start(lab.director(), &lab.director_ifaces(), None);
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    d.ctl_ok(&["-a", "-t", "192.0.2.100:80", "-r", "192.0.2.11:80", "-g"]);
    d.ctl_ok(&["-a", "-t", "192.0.2.100:80", "-r", "198.51.100.11:80", "-m"]);
    let bodies = curls(lab.client(), "http://192.0.2.100/", 10);
    let t = tally(&bodies);
    assert_eq!(
        (t.get("rsdr"), t.get("rsnat")),
        (Some(&5), Some(&5)),
        "{bodies:?}\n{}",
        d.log()
    );
    let out = d.ctl_ok(&["-Ln"]);
    assert!(out.contains("Route") && out.contains("Masq"), "{out}");
}
