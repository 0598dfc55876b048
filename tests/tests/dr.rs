//! LVS-DR end to end: client, director, real servers in network namespaces on one bridge,
//! real nginx and curl, the XDP balancer on the director's eth0. Root only.

use std::{collections::BTreeMap, io::Write};

use lb_tests::{Daemon, DrLab, KeepAlive, TempDir};

const VIP_URL: &str = "http://192.0.2.100/";

/// `n` sequential curls from the client to the VIP; the bodies, in order.
fn curls(lab: &DrLab, n: usize) -> Vec<String> {
    lab.curls(VIP_URL, n)
}

fn tally(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for b in bodies {
        *t.entry(b.clone()).or_insert(0) += 1;
    }
    t
}

fn start(lab: &DrLab) -> Daemon {
    Daemon::start(lab.director(), &[lab.director_iface()], None)
}

/// The seed tutorial's director commands, with `ipvsadm` replaced by `lb-ctl`.
fn tutorial_rr(d: &Daemon) {
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    d.ctl_ok(&[
        "-a",
        "-t",
        "192.0.2.100:80",
        "-r",
        "192.0.2.11:80",
        "-g",
        "-w",
        "1",
    ]);
    d.ctl_ok(&[
        "-a",
        "-t",
        "192.0.2.100:80",
        "-r",
        "192.0.2.12:80",
        "-g",
        "-w",
        "1",
    ]);
}

#[test]
fn seed_dr_walkthrough_rr_splits_30_requests_15_15() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    tutorial_rr(&d);
    let bodies = curls(&lab, 30);
    let t = tally(&bodies);
    assert_eq!(
        (t.get("rs1"), t.get("rs2")),
        (Some(&15), Some(&15)),
        "rr over 30 requests: {bodies:?}\n{}",
        d.log()
    );
    for w in bodies.windows(2) {
        assert_ne!(
            w[0], w[1],
            "consecutive requests must alternate: {bodies:?}"
        );
    }
    // The listing, exactly as ipvsadm lays it out (counters vary; the layout must not).
    let out = d.ctl_ok(&["-Ln"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("IP Virtual Server version 1.2.1 (size="),
        "{out}"
    );
    assert_eq!(lines[1], "Prot LocalAddress:Port Scheduler Flags", "{out}");
    assert_eq!(
        lines[2], "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
        "{out}"
    );
    assert_eq!(lines[3], "TCP  192.0.2.100:80 rr", "{out}");
    assert!(
        lines[4].starts_with("  -> 192.0.2.11:80                Route   1      "),
        "{out}"
    );
    assert!(
        lines[5].starts_with("  -> 192.0.2.12:80                Route   1      "),
        "{out}"
    );
    assert_eq!(lines.len(), 6, "{out}");
}

#[test]
fn wrr_2_1_from_a_config_file_gives_20_10() {
    let lab = DrLab::new(2);
    let dir = TempDir::new("wrr");
    let cfg = dir.path().join("lb.toml");
    std::fs::File::create(&cfg)
        .and_then(|mut f| {
            f.write_all(
                br#"
[[service]]
address = "192.0.2.100"
port = 80
scheduler = "wrr"

  [[service.real_server]]
  address = "192.0.2.11"
  weight = 2

  [[service.real_server]]
  address = "192.0.2.12"
  weight = 1
"#,
            )
        })
        .unwrap();
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    let bodies = curls(&lab, 30);
    let t = tally(&bodies);
    assert_eq!(
        (t.get("rs1"), t.get("rs2")),
        (Some(&20), Some(&10)),
        "wrr 2:1 over 30 requests: {bodies:?}"
    );
    let out = d.ctl_ok(&["-Ln"]);
    assert!(out.contains("TCP  192.0.2.100:80 wrr\n"), "{out}");
    assert!(
        out.contains("  -> 192.0.2.11:80                Route   2      "),
        "{out}"
    );
}

#[test]
fn a_long_lived_connection_keeps_its_real_server_while_new_ones_rotate() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    tutorial_rr(&d);
    let mut held = KeepAlive::connect(lab.client(), lab.vip_addr(80)).expect("connect to the VIP");
    let mine = held.request().expect("first request").trim().to_string();
    let mut rotated = Vec::new();
    for _ in 0..6 {
        rotated.extend(curls(&lab, 2));
        let again = held.request().expect("request on the held connection");
        assert_eq!(again.trim(), mine, "the held connection moved");
    }
    let t = tally(&rotated);
    assert_eq!(
        (t.get("rs1"), t.get("rs2")),
        (Some(&6), Some(&6)),
        "new connections rotate: {rotated:?}"
    );
}

#[test]
fn deleting_a_real_server_sends_new_connections_to_the_others() {
    let lab = DrLab::new(3);
    let d = start(&lab);
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    for rs in ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"] {
        d.ctl_ok(&["-a", "-t", "192.0.2.100:80", "-r", rs, "-g"]);
    }
    let t = tally(&curls(&lab, 9));
    assert_eq!(t.len(), 3, "all three serve before the delete: {t:?}");
    d.ctl_ok(&["-d", "-t", "192.0.2.100:80", "-r", "192.0.2.12:80"]);
    let after = curls(&lab, 10);
    let t = tally(&after);
    assert_eq!(t.get("rs2"), None, "rs2 was deleted: {after:?}");
    assert_eq!(
        (t.get("rs1"), t.get("rs3")),
        (Some(&5), Some(&5)),
        "{after:?}"
    );
    let out = d.ctl_ok(&["-Ln"]);
    assert!(!out.contains("192.0.2.12:80"), "{out}");
}

#[test]
fn weight_zero_drains_a_real_server() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    tutorial_rr(&d);
    // Hold a connection on each server, then quiesce rs1.
    let mut held =
        KeepAlive::hold(lab.client(), lab.vip_addr(80), 2).unwrap_or_else(|e| panic!("{e}"));
    d.ctl_ok(&[
        "-e",
        "-t",
        "192.0.2.100:80",
        "-r",
        "192.0.2.11:80",
        "-g",
        "-w",
        "0",
    ]);
    let t = tally(&curls(&lab, 6));
    assert_eq!(
        t.get("rs1"),
        None,
        "weight 0 takes no new connections: {t:?}"
    );
    for (k, who) in held.iter_mut() {
        assert_eq!(
            k.request().unwrap().trim(),
            who,
            "existing connections continue"
        );
    }
    let out = d.ctl_ok(&["-Ln"]);
    assert!(
        out.contains("  -> 192.0.2.11:80                Route   0      "),
        "{out}"
    );
}

#[test]
fn editing_the_scheduler_and_weights_takes_effect_at_once() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    tutorial_rr(&d);
    d.ctl_ok(&["-E", "-t", "192.0.2.100:80", "-s", "wrr"]);
    d.ctl_ok(&[
        "-e",
        "-t",
        "192.0.2.100:80",
        "-r",
        "192.0.2.12:80",
        "-g",
        "-w",
        "3",
    ]);
    let t = tally(&curls(&lab, 8));
    assert_eq!(
        (t.get("rs1"), t.get("rs2")),
        (Some(&2), Some(&6)),
        "wrr 1:3: {t:?}"
    );
}

#[test]
fn the_cli_reports_ipvsadm_errors_and_changes_nothing() {
    let lab = DrLab::new(2);
    let d = start(&lab);
    tutorial_rr(&d);
    let before = d.ctl_ok(&["-Sn"]);
    let out = d.ctl(&["-a", "-t", "192.0.2.100:81", "-r", "192.0.2.11:81"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Service not defined"),
        "{out:?}"
    );
    let out = d.ctl(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Service already exists"),
        "{out:?}"
    );
    // A real server the director cannot reach on its segment.
    let out = d.ctl(&["-a", "-t", "192.0.2.100:80", "-r", "203.0.113.5:80", "-g"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("203.0.113.5"),
        "the error names the server: {out:?}"
    );
    assert_eq!(
        d.ctl_ok(&["-Sn"]),
        before,
        "a refused command changes nothing"
    );
    assert_eq!(tally(&curls(&lab, 4)).len(), 2);
}

#[test]
fn without_a_daemon_the_cli_fails_clearly() {
    let dir = TempDir::new("nodaemon");
    let sock = dir.path().join("none.sock");
    let out = std::process::Command::new(lb_tests::lb_ctl())
        .args(["--socket", sock.to_str().unwrap(), "-Ln"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the lb-ctl daemon"), "{err}");
}

#[test]
fn connections_survive_a_reload_and_a_daemon_restart() {
    let lab = DrLab::new(3);
    let dir = TempDir::new("reload");
    let cfg = dir.path().join("lb.toml");
    let write = |servers: &[&str]| {
        let mut s =
            String::from("[[service]]\naddress = \"192.0.2.100\"\nport = 80\nscheduler = \"rr\"\n");
        for a in servers {
            s += &format!("[[service.real_server]]\naddress = \"{a}\"\n");
        }
        std::fs::write(&cfg, s).unwrap();
    };
    write(&["192.0.2.11", "192.0.2.12"]);
    let mut d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    let mut held = KeepAlive::connect(lab.client(), lab.vip_addr(80)).unwrap();
    let mine = held.request().unwrap().trim().to_string();

    // Reload with a third server: the held connection stays, new ones reach all three.
    write(&["192.0.2.11", "192.0.2.12", "192.0.2.13"]);
    d.ctl_ok(&["reload"]);
    assert_eq!(held.request().unwrap().trim(), mine, "after reload");
    assert_eq!(tally(&curls(&lab, 6)).len(), 3);

    // A bad config is refused and changes nothing.
    std::fs::write(&cfg, "[[service]]\naddress = \"192.0.2.300\"\nport = 80\n").unwrap();
    let out = d.ctl(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lb.toml:2:11"), "file:line:col in {err}");
    assert_eq!(
        held.request().unwrap().trim(),
        mine,
        "after a refused reload"
    );
    assert_eq!(tally(&curls(&lab, 6)).len(), 3);

    // Restart: the data path keeps running while no daemon does; the new one adopts it.
    write(&["192.0.2.11", "192.0.2.12", "192.0.2.13"]);
    d.ctl_ok(&["stop", "--keep-datapath"]);
    assert_eq!(
        held.request().unwrap().trim(),
        mine,
        "while the daemon is down"
    );
    d.restart();
    assert!(d.log().contains("adopted the data path"), "{}", d.log());
    assert_eq!(held.request().unwrap().trim(), mine, "after the restart");
    assert_eq!(tally(&curls(&lab, 6)).len(), 3);
    let out = d.ctl_ok(&["-Ln"]);
    assert!(out.contains("  -> 192.0.2.13:80"), "{out}");
}
