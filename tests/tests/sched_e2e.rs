//! Schedulers, persistence, thresholds and connection states end to end: real TCP from a
//! client namespace through the XDP director (DR) to nginx real servers, driven with
//! ipvsadm's commands. Root only.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{Daemon, DrLab, KeepAlive, curl, curl_from};

const VIP_URL: &str = "http://192.0.2.100/";
const SVC: &str = "192.0.2.100:80";

fn start(lab: &DrLab) -> Daemon {
    Daemon::start(lab.director(), &[lab.director_iface()], None)
}

fn get(lab: &DrLab) -> String {
    curl(lab.client(), VIP_URL)
        .unwrap_or_else(|e| panic!("request to the VIP failed: {e}"))
        .trim()
        .to_string()
}

fn get_from(lab: &DrLab, src: Ipv4Addr) -> String {
    curl_from(lab.client(), src, VIP_URL)
        .unwrap_or_else(|e| panic!("request from {src} to the VIP failed: {e}"))
        .trim()
        .to_string()
}

fn add_rs(d: &Daemon, rs: &str, extra: &[&str]) {
    let mut args = vec!["-a", "-t", SVC, "-r", rs, "-g"];
    args.extend_from_slice(extra);
    d.ctl_ok(&args);
}

/// (ActiveConn, InActConn) of real server `rs` in `lb-ctl -Ln`.
fn conns_of(d: &Daemon, rs: &str) -> (u32, u32) {
    let out = d.ctl_ok(&["-Ln"]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("->") && l.contains(&format!(" {rs} ")))
        .unwrap_or_else(|| panic!("{rs} not listed:\n{out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    // ->  ADDR  Forward  Weight  ActiveConn  InActConn
    (cols[4].parse().unwrap(), cols[5].parse().unwrap())
}

/// Polls `f` every 100 ms until it holds or `secs` pass; the last value.
fn wait_for<T>(secs: u64, mut f: impl FnMut() -> T, ok: impl Fn(&T) -> bool) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = f();
        if ok(&v) || Instant::now() >= end {
            return v;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Holds `n` keep-alive connections; each answered once (so established on its server).
fn hold(lab: &DrLab, n: usize) -> Vec<(KeepAlive, String)> {
    KeepAlive::hold(lab.client(), lab.vip_addr(80), n).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn lc_and_wlc_send_new_connections_away_from_a_server_holding_long_lived_ones() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    for sched in ["lc", "wlc"] {
        d.ctl_ok(&["-C"]);
        d.ctl_ok(&["-A", "-t", SVC, "-s", sched]);
        add_rs(&d, "192.0.2.11:80", &["-w", "1"]);
        // rs2 quiesced while the long-lived connections open: they all pile on rs1.
        add_rs(&d, "192.0.2.12:80", &["-w", "0"]);
        let held = hold(&lab, 4);
        assert!(
            held.iter().all(|(_, w)| w == "rs1"),
            "{sched}: {:?}",
            held.iter().map(|h| &h.1).collect::<Vec<_>>()
        );
        let (active, _) = wait_for(3, || conns_of(&d, "192.0.2.11:80"), |c| c.0 == 4);
        assert_eq!(
            active, 4,
            "{sched}: -Ln counts rs1's four established connections"
        );
        d.ctl_ok(&["-e", "-t", SVC, "-r", "192.0.2.12:80", "-g", "-w", "1"]);
        // rs1 carries 4 × 256 of overhead; each new connection adds 256 to rs2 until the
        // next sweep finds it finished (then 1): the next four all go to rs2.
        let next: Vec<String> = (0..4).map(|_| get(&lab)).collect();
        assert_eq!(
            next, ["rs2"; 4],
            "{sched}: new connections avoid the loaded server"
        );
        drop(held);
    }
}

#[test]
fn sh_keeps_each_client_on_one_server() {
    let lab = DrLab::new(3);
    let d = start(&lab);
    d.ctl_ok(&["-A", "-t", SVC, "-s", "sh"]);
    for rs in ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"] {
        add_rs(&d, rs, &[]);
    }
    let clients: Vec<Ipv4Addr> = (20..26).map(|h| Ipv4Addr::new(192, 0, 2, h)).collect();
    for c in &clients {
        lab.client()
            .ip(&["addr", "add", &format!("{c}/24"), "dev", "eth0"]);
    }
    let mut seen = BTreeMap::new();
    for round in 0..4 {
        for &c in &clients {
            let who = get_from(&lab, c);
            let first = seen.entry(c).or_insert_with(|| who.clone());
            assert_eq!(&who, first, "client {c} moved in round {round}");
        }
    }
    let servers: std::collections::BTreeSet<_> = seen.values().collect();
    assert!(
        servers.len() >= 2,
        "six clients hashed onto one server: {seen:?}"
    );
}

#[test]
fn persistence_with_a_netmask_keeps_a_client_network_on_one_server() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    let a = Ipv4Addr::new(192, 0, 2, 10);
    let b = Ipv4Addr::new(192, 0, 2, 20);
    lab.client()
        .ip(&["addr", "add", &format!("{b}/24"), "dev", "eth0"]);
    // -p 60 -M 255.255.255.0: both addresses are one client network, one server.
    d.ctl_ok(&[
        "-A",
        "-t",
        SVC,
        "-s",
        "rr",
        "-p",
        "60",
        "-M",
        "255.255.255.0",
    ]);
    add_rs(&d, "192.0.2.11:80", &[]);
    add_rs(&d, "192.0.2.12:80", &[]);
    let first = get_from(&lab, a);
    for i in 0..6 {
        let src = if i % 2 == 0 { b } else { a };
        assert_eq!(get_from(&lab, src), first, "request {i} from {src}");
    }
    let rs = if first == "rs1" {
        "192.0.2.11:80"
    } else {
        "192.0.2.12:80"
    };
    let out = d.ctl_ok(&["-Lnc"]);
    let templates: Vec<&str> = out.lines().filter(|l| l.starts_with("IP ")).collect();
    assert_eq!(templates.len(), 1, "one template for the /24:\n{out}");
    let cols: Vec<&str> = templates[0].split_whitespace().collect();
    assert_eq!(
        (cols[2], cols[3], cols[4], cols[5]),
        ("NONE", "192.0.2.0:0", SVC, rs),
        "{out}"
    );
    // `--persistent-conn` counts it on its server (after the next sweep).
    let persist_conn = |o: &String| {
        o.lines()
            .find(|l| l.contains(rs))
            .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
    };
    let out = wait_for(
        3,
        || d.ctl_ok(&["-Ln", "--persistent-conn"]),
        |o| persist_conn(o).as_deref() == Some("1"),
    );
    assert_eq!(
        persist_conn(&out).as_deref(),
        Some("1"),
        "PersistConn of {rs}:\n{out}"
    );
    // Per address (-M 255.255.255.255): each address gets its own template, and rr sends
    // the two to different servers.
    d.ctl_ok(&[
        "-E",
        "-t",
        SVC,
        "-s",
        "rr",
        "-p",
        "60",
        "-M",
        "255.255.255.255",
    ]);
    let (first_a, first_b) = (get_from(&lab, a), get_from(&lab, b));
    assert_ne!(first_a, first_b, "two /32 templates, rr between them");
    for _ in 0..3 {
        assert_eq!(get_from(&lab, a), first_a);
        assert_eq!(get_from(&lab, b), first_b);
    }
}

#[test]
fn upper_threshold_holds_a_server_off() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    d.ctl_ok(&["-A", "-t", SVC, "-s", "rr"]);
    add_rs(&d, "192.0.2.11:80", &["-x", "2"]);
    add_rs(&d, "192.0.2.12:80", &[]);
    // rr alternates: four held connections put two on each server; rs1 is then at -x 2.
    let held = hold(&lab, 4);
    let on_rs1 = held.iter().filter(|(_, w)| w == "rs1").count();
    assert_eq!(
        on_rs1,
        2,
        "{:?}",
        held.iter().map(|h| &h.1).collect::<Vec<_>>()
    );
    let next: Vec<String> = (0..6).map(|_| get(&lab)).collect();
    assert_eq!(next, ["rs2"; 6], "rs1 is at its upper threshold");
    // --thresholds: Uthreshold Lthreshold ActiveConn InActConn.
    let row = |o: &String| -> Vec<String> {
        o.lines()
            .find(|l| l.contains("192.0.2.11:80"))
            .map(|l| l.split_whitespace().skip(2).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let out = wait_for(
        3,
        || d.ctl_ok(&["-Ln", "--thresholds"]),
        |o| row(o).get(2).map(String::as_str) == Some("2"),
    );
    assert_eq!(
        row(&out)[..3],
        ["2", "0", "2"],
        "-x 2, no -y, 2 active:\n{out}"
    );
    drop(held);
}

/// Runs `nft` in `ns`; panics on failure.
fn nft(ns: &lb_tests::Netns, rules: &str) {
    let mut cmd = ns.command("nft");
    cmd.arg(rules);
    let out = cmd.output().expect("nft");
    assert!(
        out.status.success(),
        "nft {rules}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The state of the client's connection (from `port`, or its only one) in `lb-ctl -lnc`.
fn state_of(d: &Daemon, port: Option<u16>) -> Option<String> {
    let out = d.ctl_ok(&["-lnc"]);
    out.lines()
        .filter(|l| l.starts_with("TCP "))
        .find(|l| {
            let src = l.split_whitespace().nth(3).unwrap_or("");
            match port {
                Some(p) => src == format!("192.0.2.10:{p}"),
                None => src.starts_with("192.0.2.10:"),
            }
        })
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}

#[test]
fn lnc_follows_a_connection_from_syn_recv_to_established_to_closing() {
    let lab = DrLab::new(1);
    let d = start(&lab);
    d.ctl_ok(&["-A", "-t", SVC, "-s", "rr"]);
    add_rs(&d, "192.0.2.11:80", &[]);
    // The real server drops SYNs for a while: the director has seen one, nothing more.
    let rs = lab.rs(1).ns();
    nft(rs, "add table inet lbt");
    nft(
        rs,
        "add chain inet lbt in { type filter hook input priority 0; }",
    );
    nft(rs, "add rule inet lbt in tcp dport 80 drop");
    let vip = lab.vip_addr(80);
    let mut k = thread::scope(|scope| {
        // The client's connect blocks until a retransmitted SYN gets through.
        let connecting = scope.spawn(|| KeepAlive::connect(lab.client(), vip));
        let s = wait_for(5, || state_of(&d, None), |s| s.is_some());
        assert_eq!(s.as_deref(), Some("SYN_RECV"), "{}", d.ctl_ok(&["-lnc"]));
        // Let the next SYN through: the handshake completes.
        nft(rs, "delete table inet lbt");
        connecting
            .join()
            .unwrap()
            .expect("connect after the SYN drop")
    });
    let port = Some(k.local_port());
    // The client's ACK (and its request) establish the connection.
    assert_eq!(k.request().unwrap().trim(), "rs1");
    let s = wait_for(
        3,
        || state_of(&d, port),
        |s| s.as_deref() == Some("ESTABLISHED"),
    );
    assert_eq!(s.as_deref(), Some("ESTABLISHED"), "{}", d.ctl_ok(&["-lnc"]));
    // The client closes: its FIN moves the connection on.
    drop(k);
    let closing = |s: &Option<String>| matches!(s.as_deref(), Some("FIN_WAIT" | "TIME_WAIT"));
    let s = wait_for(3, || state_of(&d, port), closing);
    assert!(closing(&s), "{s:?}\n{}", d.ctl_ok(&["-lnc"]));
    // The layout is ipvsadm's.
    let out = d.ctl_ok(&["-lnc"]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("IPVS connection entries"));
    assert_eq!(
        lines.next(),
        Some("pro expire state       source             virtual            destination")
    );
}

/// Numbers of the row of `addr` in a `--stats`/`--rate` listing.
fn row(out: &str, addr: &str) -> Vec<u64> {
    let line = out
        .lines()
        .find(|l| l.contains(&format!(" {addr} ")))
        .unwrap_or_else(|| panic!("{addr} not listed:\n{out}"));
    line.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn stats_rates_zero_and_timeouts_as_ipvsadm_shows_them() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    d.ctl_ok(&["-A", "-t", SVC, "-s", "rr"]);
    add_rs(&d, "192.0.2.11:80", &[]);
    add_rs(&d, "192.0.2.12:80", &[]);
    for _ in 0..10 {
        get(&lab);
    }
    let out = d.ctl_ok(&["-Ln", "--stats", "--exact"]);
    assert_eq!(
        out.lines().nth(1),
        Some("Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes"),
        "{out}"
    );
    // Conns InPkts OutPkts InBytes OutBytes; DR: the director never sees a reply.
    let svc = row(&out, SVC);
    assert_eq!(svc[0], 10, "ten connections: {out}");
    assert!(svc[1] >= 50, "each curl sends at least 5 segments: {out}");
    assert_eq!(
        (svc[2], svc[4]),
        (0, 0),
        "no replies through a DR director: {out}"
    );
    assert!(svc[3] > svc[1] * 40, "bytes are IP lengths: {out}");
    let (r1, r2) = (row(&out, "192.0.2.11:80"), row(&out, "192.0.2.12:80"));
    assert_eq!((r1[0], r2[0]), (5, 5), "{out}");
    assert_eq!(r1[1] + r2[1], svc[1], "per-server packets add up: {out}");
    // --rate: the estimator (2 s period) sees the burst.
    let out = wait_for(
        5,
        || d.ctl_ok(&["-Ln", "--rate"]),
        |o| row(o, SVC).first().is_some_and(|&cps| cps > 0),
    );
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .contains("CPS    InPPS   OutPPS    InBPS   OutBPS"),
        "{out}"
    );
    assert!(row(&out, SVC)[0] > 0, "connections per second: {out}");
    // -Z zeroes the counters; the next connection counts from 0.
    d.ctl_ok(&["-Z"]);
    get(&lab);
    let svc = row(&d.ctl_ok(&["-Ln", "--stats", "--exact"]), SVC);
    assert_eq!(svc[0], 1, "after -Z");
    // --set tcp tcpfin udp, shown by -L --timeout.
    d.ctl_ok(&["--set", "600", "60", "120"]);
    assert_eq!(
        d.ctl_ok(&["-L", "--timeout"]),
        "Timeout (tcp tcpfin udp): 600 60 120\n"
    );
    // Every listing also as JSON.
    for args in [
        &["-Ln", "-o", "json"][..],
        &["-Lnc", "-o", "json"],
        &["-Ln", "--stats", "-o", "json"],
    ] {
        let out = d.ctl_ok(args);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"));
    }
}
