//! Root-only checks of the test harness itself: the LVS-DR lab's wiring, its clients, and that
//! every guard leaves nothing behind, also when a test panics.
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use lb_tests::cleanup::{assert_netns_gone, assert_paths_gone};
use lb_tests::lab::{BRIDGE, VIP, rs_ip};
use lb_tests::{DrLab, DrLabOpts, KeepAlive, curl};

/// The lab without anything that needs lb-ctl (no XDP pass program, no daemon).
fn lab_without_lb_ctl(real_servers: usize) -> DrLab {
    DrLab::with_opts(DrLabOpts {
        real_servers,
        xdp_pass: false,
        nginx: true,
    })
}

#[test]
fn dr_lab_wiring_and_teardown() {
    lb_tests::require_root();
    let lab = lab_without_lb_ctl(2);
    let names = lab.netns_names();
    let dirs: Vec<PathBuf> = lab
        .real_servers()
        .iter()
        .map(|rs| rs.nginx().dir().to_path_buf())
        .collect();

    for i in 1..=2 {
        let url = format!("http://{}/", rs_ip(i));
        let body = curl(lab.client(), &url).unwrap_or_else(|e| panic!("curl {url}: {e}"));
        assert_eq!(body, format!("rs{i}\n"), "body of {url} from the client");
    }

    // Every host is on the bridge, and the real servers hold the VIP on lo but must not
    // answer ARP for it: the client has to resolve the VIP to the director's MAC. Nothing
    // listens on the director, so this curl fails (refused), but it makes the client ARP.
    let ports = lab.switch().ip(&["-br", "link", "show", "master", BRIDGE]);
    for port in ["client", "director", "rs1", "rs2"] {
        assert!(
            ports.lines().any(|l| l.starts_with(&format!("{port}@"))),
            "{port} is not a port of {BRIDGE}:\n{ports}"
        );
    }
    let refused = curl(lab.client(), &format!("http://{VIP}/"));
    assert!(
        refused.is_err(),
        "nothing should answer on the VIP without a balancer, got {refused:?}"
    );
    let neigh = lab
        .client()
        .ip(&["neigh", "show", &VIP.to_string(), "dev", "eth0"]);
    let director_mac = lab.director().mac("eth0");
    assert!(
        neigh.contains(&director_mac),
        "client resolved the VIP to {neigh:?}, want the director's MAC {director_mac}"
    );
    for rs in lab.real_servers() {
        let addrs = rs.ns().ip(&["-br", "addr", "show", "dev", "lo"]);
        assert!(
            addrs.contains(&format!("{VIP}/32")),
            "{} has no VIP on lo: {addrs}",
            rs.name()
        );
    }

    drop(lab);
    assert_netns_gone(&names);
    assert_paths_gone(&dirs);
}

#[test]
fn keepalive_connection_stays_on_one_server() {
    lb_tests::require_root();
    let lab = lab_without_lb_ctl(1);
    let addr = SocketAddr::V4(SocketAddrV4::new(rs_ip(1), 80));
    let mut conn = KeepAlive::connect(lab.client(), addr)
        .unwrap_or_else(|e| panic!("connect from client to {addr}: {e}"));
    for n in 0..3 {
        let body = conn
            .request()
            .unwrap_or_else(|e| panic!("request {n} over {}: {e}", conn.local_addr()));
        assert_eq!(body, "rs1\n", "request {n}");
    }
    // nginx saw all three on the one connection, from the client's own address and port.
    let nginx = lab.rs(1).nginx();
    let from = format!("{}:{} ", lab.client_ip(), conn.local_port());
    let lines = nginx.wait_access_lines(3, |l| l.starts_with(&from));
    assert_eq!(
        lines.len(),
        3,
        "access log lines from {from:?}, want 3:\n{}",
        nginx.access_log()
    );
    let conns: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("conn=")))
        .collect();
    assert!(
        conns.windows(2).all(|w| w[0] == w[1]),
        "requests were served on different connections: {conns:?}\n{lines:#?}"
    );
}

#[test]
fn lab_is_torn_down_when_a_test_panics() {
    lb_tests::require_root();
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = lab_without_lb_ctl(1);
        names = lab.netns_names();
        panic!("deliberate panic with the lab up");
    }));
    assert!(result.is_err(), "the closure should have panicked");
    assert_eq!(names.len(), 4, "switch, client, director, rs1: {names:?}");
    assert_netns_gone(&names);
}

/// The full lab, with lb-ctl's pass-through XDP program on the director's switch port.
#[test]
fn dr_lab_with_xdp_pass() {
    lb_tests::require_root();
    let lab = DrLab::new(2);
    let names = lab.netns_names();
    let pin = lab
        .xdp_pass()
        .expect("DrLab::new attaches XdpPass")
        .pin()
        .to_path_buf();
    assert!(pin.exists(), "no pin at {}", pin.display());
    let link = lab.switch().ip(&["link", "show", "dev", "director"]);
    assert!(
        link.contains("xdp"),
        "no XDP program on the switch side of the director's link:\n{link}"
    );
    // Frames still pass both ways through the port with the pass-through program.
    let body = curl(lab.director(), &format!("http://{}/", rs_ip(2)));
    assert_eq!(
        body.as_deref(),
        Ok("rs2\n"),
        "director -> rs2 through XDP pass"
    );

    drop(lab);
    assert_netns_gone(&names);
    // (Not the run's pin root: other tests of this binary may be using it right now.)
    assert_paths_gone(&[pin]);
}

/// The Daemon guard with the real lb-ctl: ready when `-Ln` answers, survives a restart, and
/// leaves no pins and no XDP program behind.
#[test]
fn daemon_guard_starts_restarts_and_cleans_up() {
    lb_tests::require_root();
    let lab = DrLab::new(2);
    let dir = lb_tests::TempDir::new("harness-cfg");
    let config = dir.join("dr-demo.toml");
    std::fs::write(&config, lb_tests::demo::CONFIG).expect("writing the demo config");
    let mut daemon = lb_tests::Daemon::start(lab.director(), &["eth0"], Some(&config));
    let table = daemon.ctl_ok(&["-Ln"]);
    for rs in ["192.0.2.11:80", "192.0.2.12:80"] {
        assert!(table.contains(rs), "`-Ln` lacks {rs}:\n{table}");
    }
    let body = curl(lab.client(), &format!("http://{VIP}/"));
    assert!(
        matches!(body.as_deref(), Ok("rs1\n") | Ok("rs2\n")),
        "curl to the VIP through the balancer: {body:?}\n--- daemon log ---\n{}",
        daemon.log()
    );

    daemon.restart();
    assert!(
        daemon.is_running(),
        "daemon after restart:\n{}",
        daemon.log()
    );
    daemon.ctl_ok(&["-Ln"]);

    let pins = daemon.pin_path().to_path_buf();
    drop(daemon);
    assert_paths_gone(&[pins]);
    let link = lab.director().ip(&["link", "show", "dev", "eth0"]);
    assert!(
        !link.contains("prog/xdp"),
        "XDP still attached to the director's eth0 after the daemon was dropped:\n{link}"
    );
}
