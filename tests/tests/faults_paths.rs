//! Real servers are resolved one by one: a route that goes away takes out only the real server
//! it led to, and a refused reload leaves every path as it was. Real nginx and curl through the
//! XDP director in network namespaces. Root only.

use std::{collections::BTreeMap, time::Duration};

use lb_tests::daemon::real_server_entry;
use lb_tests::{Daemon, DaemonOpts, DrLab, KeepAlive, TempDir, TunLab, curl, lab::tun};

const VIP_URL: &str = "http://192.0.2.100/";

fn counter(d: &Daemon, name: &str) -> u64 {
    d.status()["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// `n` sequential curls: the body of each, or the error.
fn curls(lab: &DrLab, n: usize) -> Vec<Result<String, String>> {
    (0..n)
        .map(|_| curl(lab.client(), VIP_URL).map(|b| b.trim().to_string()))
        .collect()
}

fn tally(results: &[Result<String, String>]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for r in results {
        let k = match r {
            Ok(b) => b.clone(),
            Err(_) => "failed".to_string(),
        };
        *t.entry(k).or_insert(0) += 1;
    }
    t
}

/// Each connection of `held` answers from the real server it had; `when` and the daemon's
/// log go into the failure message.
fn assert_held_answer(held: &mut [(KeepAlive, String)], when: &str, d: &Daemon) {
    for (k, who) in held.iter_mut() {
        assert_eq!(
            k.request()
                .map(|b| b.trim().to_string())
                .map_err(|e| e.to_string()),
            Ok(who.clone()),
            "the held connection to {who} {when}\n{}",
            d.log()
        );
    }
}

#[test]
fn a_route_removed_to_one_dr_real_server_takes_out_only_that_one_until_it_returns() {
    let lab = DrLab::new(3);
    let mut d = Daemon::start(lab.director(), &[lab.director_iface()], None);
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    for i in 1..=3 {
        d.ctl_ok(&[
            "-a",
            "-t",
            "192.0.2.100:80",
            "-r",
            &format!("{}:80", lab.rs_ip(i)),
            "-g",
        ]);
    }
    // One long-lived connection per real server (rr: rs1, rs2, rs3), kept across the fault.
    let mut held =
        KeepAlive::hold(lab.client(), lab.vip_addr(80), 3).unwrap_or_else(|e| panic!("{e}"));
    held.sort_by(|a, b| a.1.cmp(&b.1));
    let names: Vec<&str> = held.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(names, ["rs1", "rs2", "rs3"], "rr over 3 held connections");
    let before = tally(&curls(&lab, 6));
    assert_eq!(
        before,
        BTreeMap::from([("rs1".into(), 2), ("rs2".into(), 2), ("rs3".into(), 2)]),
        "all up: {}",
        d.log()
    );

    // The director loses its route to rs3 only (the others stay on-link through the /24).
    lab.director()
        .ip(&["route", "add", "unreachable", "192.0.2.13/32"]);
    d.wait_real_server("192.0.2.13", "became unresolved", |r| {
        r["state"] == "unresolved"
    });
    let st = d.status();
    let rs3 = real_server_entry(&st, "192.0.2.13");
    assert!(
        rs3["reason"]
            .as_str()
            .is_some_and(|s| s.contains("no route to 192.0.2.13")),
        "status gives the reason: {rs3}"
    );
    assert!(
        rs3["next_retry_ms"].as_u64().is_some(),
        "status gives the next retry: {rs3}"
    );
    for other in ["192.0.2.11", "192.0.2.12"] {
        let r = real_server_entry(&st, other);
        assert_eq!(r["state"], "resolved", "{other} is unaffected: {st}");
        assert!(r["mac"].is_string(), "{other} keeps its MAC: {st}");
    }

    // Traffic to the others goes on: held connections and new ones. rr still schedules every
    // third new connection to rs3, which is out: exactly those fail.
    let drops = counter(&d, "drop_no_neigh");
    assert_held_answer(&mut held[..2], "while rs3 is out", &d);
    let during = curls(&lab, 6);
    assert_eq!(
        tally(&during),
        BTreeMap::from([("rs1".into(), 2), ("rs2".into(), 2), ("failed".into(), 2)]),
        "while rs3 is out, every request scheduled to rs1 and rs2 succeeds: {during:?}\n{}",
        d.log()
    );
    assert!(
        counter(&d, "drop_no_neigh") > drops,
        "packets to rs3 are dropped and counted"
    );

    let reports = |log: &str| {
        log.lines()
            .filter(|l| l.contains("real server 192.0.2.13: no route"))
            .count()
    };
    // Reported once when it went, not at every retry.
    assert_eq!(reports(&d.log()), 1, "one report per change:\n{}", d.log());

    // A daemon restarted now adopts the running table and serves it, with rs3 still out
    // (it is not new: no reason to refuse the whole table).
    d.ctl_ok(&["stop", "--keep-datapath"]);
    d.restart();
    assert!(d.log().contains("adopted the data path"), "{}", d.log());
    d.wait_real_server("192.0.2.13", "stayed out after a restart", |r| {
        r["state"] == "unresolved"
    });
    assert_held_answer(&mut held[..2], "after the restart", &d);

    // The route returns: rs3 is resolved again by itself, and takes traffic again.
    lab.director()
        .ip(&["route", "del", "unreachable", "192.0.2.13/32"]);
    d.wait_real_server("192.0.2.13", "was resolved again", |r| {
        r["state"] == "resolved" && r["mac"].is_string()
    });
    let after = tally(&curls(&lab, 6));
    assert_eq!(
        after,
        BTreeMap::from([("rs1".into(), 2), ("rs2".into(), 2), ("rs3".into(), 2)]),
        "all up again: {}",
        d.log()
    );
    assert_held_answer(&mut held[..2], "after rs3 came back", &d);
    // Reported once by each daemon, and once when it came back.
    let log = d.log();
    assert_eq!(reports(&log), 2, "one report per change and daemon:\n{log}");
    assert!(
        log.contains("real server 192.0.2.13: resolved again"),
        "{log}"
    );
}

/// The TUN lab's service with rs1 and rs2, and the director's tunnel sources.
fn tun_config(tunnel_source: &str, extra: &str) -> String {
    format!(
        r#"
[director]
tunnel_sources = {{ eth0 = "{tunnel_source}" }}

[[service]]
address = "192.0.2.100"
port = 80
scheduler = "rr"

  [[service.real_server]]
  address = "203.0.113.11"
  forward = "tun"

  [[service.real_server]]
  address = "203.0.113.12"
  forward = "tun"
{extra}"#
    )
}

/// The outer source addresses of the IPIP packets to the real servers seen on the router's
/// side of the director link while `f` runs.
fn tunnel_sources_seen(lab: &TunLab, f: impl FnOnce()) -> Vec<String> {
    let dir = TempDir::new("tunsrc");
    let pcap = dir.path().join("director-link.txt");
    let log = std::fs::File::create(&pcap).unwrap();
    let notes = dir.path().join("tcpdump.stderr");
    let mut cap = lab
        .router()
        .command("tcpdump")
        .args(["-n", "-l", "-i", tun::ROUTER_DIRECTOR_IFACE, "ip proto 4"])
        .stdout(log)
        .stderr(std::fs::File::create(&notes).unwrap())
        .spawn()
        .unwrap();
    // tcpdump says "listening on …" once its socket is open; on a loaded machine that can
    // take well over a fixed pause, and packets sent before it are not seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&notes).is_ok_and(|n| n.contains("listening on")) {
        assert!(
            std::time::Instant::now() < deadline,
            "tcpdump on the router did not start listening: {:?}",
            std::fs::read_to_string(&notes)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    f();
    std::thread::sleep(Duration::from_millis(500));
    let _ = cap.kill();
    let _ = cap.wait();
    let seen = std::fs::read_to_string(&pcap).unwrap();
    let mut srcs: Vec<String> = seen
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" IP ")?;
            let (src, _) = rest.split_once(" > ")?;
            Some(src.to_string())
        })
        .collect();
    srcs.sort();
    srcs.dedup();
    srcs
}

#[test]
fn a_refused_reload_that_changed_tunnel_sources_leaves_paths_and_traffic_as_they_were() {
    let lab = TunLab::new(2);
    let _setups = lab.realservers_up();
    let dir = TempDir::new("tunreload");
    let cfg = dir.path().join("lb.toml");
    // The VIP as outer source: not what the route would pick (192.0.2.2), so a lost setting
    // shows.
    std::fs::write(&cfg, tun_config("192.0.2.100", "")).unwrap();
    let d = Daemon::start_with(
        lab.director(),
        DaemonOpts {
            ifaces: vec![tun::DIRECTOR_IFACE.into()],
            config: Some(cfg.clone()),
            extra_args: Vec::new(),
        },
    );
    let run = |n| {
        (0..n)
            .map(|i| match curl(lab.client(), VIP_URL) {
                Ok(b) => b.trim().to_string(),
                Err(e) => panic!("request {i}: {e}\n{}", d.log()),
            })
            .collect::<Vec<_>>()
    };
    let srcs = tunnel_sources_seen(&lab, || {
        assert_eq!(run(4).len(), 4);
    });
    assert_eq!(srcs, ["192.0.2.100"], "outer source before the reload");
    // The table as `-Sn` saves it (the listing's connection counts move with traffic).
    let listing = d.ctl_ok(&["-Sn"]);
    assert!(
        listing.contains("-a -t 192.0.2.100:80 -r 203.0.113.12:80 -i"),
        "{listing}"
    );
    let paths = d.status()["real_servers"].clone();
    for r in paths.as_array().unwrap() {
        assert_eq!(r["tunnel_source"], "192.0.2.100", "{paths}");
    }

    // New tunnel sources, and a DR real server behind the router elsewhere in the file: the
    // reload is refused as a whole.
    let bad = tun_config(
        "192.0.2.2",
        r#"
[[service]]
address = "192.0.2.100"
port = 443

  [[service.real_server]]
  address = "203.0.113.13"
  forward = "dr"
"#,
    );
    std::fs::write(&cfg, bad).unwrap();
    let out = d.ctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("reached through the router"),
        "the reload is refused with the reason: {stderr}"
    );

    // Nothing changed: table, paths (with their tunnel source), traffic's outer source — also
    // after the daemon's next ticks, which on the old code rewrote the backends from the
    // cleared paths.
    assert_eq!(d.ctl_ok(&["-Sn"]), listing);
    let strip = |v: serde_json::Value| {
        let mut v = v;
        for r in v.as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("next_retry_ms");
        }
        v
    };
    assert_eq!(
        strip(d.status()["real_servers"].clone()),
        strip(paths.clone())
    );
    let srcs = tunnel_sources_seen(&lab, || {
        let bodies = run(4);
        assert_eq!(
            bodies.iter().filter(|b| *b == "rs1").count(),
            2,
            "{bodies:?}"
        );
        assert_eq!(
            bodies.iter().filter(|b| *b == "rs2").count(),
            2,
            "{bodies:?}"
        );
    });
    assert_eq!(
        srcs,
        ["192.0.2.100"],
        "outer source after the refused reload"
    );
    assert_eq!(d.ctl_ok(&["-Sn"]), listing);
    assert_eq!(strip(d.status()["real_servers"].clone()), strip(paths));

    // And an accepted reload does change it.
    std::fs::write(&cfg, tun_config("192.0.2.2", "")).unwrap();
    d.ctl_ok(&["reload"]);
    let srcs = tunnel_sources_seen(&lab, || {
        run(2);
    });
    assert_eq!(srcs, ["192.0.2.2"], "outer source after an accepted reload");
}

#[test]
fn real_servers_ipvs_users_expect_refused_are_refused_when_added_and_change_nothing() {
    let lab = DrLab::new(1);
    // A route through a router, for the DR case (the lab's segment has none).
    lab.director().ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.1",
        "dev",
        "eth0",
    ]);
    let d = Daemon::start(lab.director(), &[lab.director_iface()], None);
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    d.ctl_ok(&["-a", "-t", "192.0.2.100:80", "-r", "192.0.2.11:80", "-g"]);
    let table = d.ctl_ok(&["-Sn"]);
    let before = d.status()["real_servers"].clone();
    for (args, why) in [
        (
            ["-r", "198.51.100.7:80", "-g"],
            "is reached through the router 192.0.2.1",
        ),
        (
            ["-r", "192.0.2.2:80", "-g"],
            "is an address of the director itself",
        ),
        (["-r", "203.0.113.7:80", "-m"], "no route to 203.0.113.7"),
    ] {
        let mut cmd = vec!["-a", "-t", "192.0.2.100:80"];
        cmd.extend(args);
        let out = d.ctl(&cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "`lb-ctl {}` is refused ({why}): {err}",
            cmd.join(" ")
        );
        assert_eq!(d.ctl_ok(&["-Sn"]), table, "after `{}`", cmd.join(" "));
    }
    assert_eq!(d.status()["real_servers"], before);
    let bodies = curls(&lab, 2);
    assert_eq!(tally(&bodies), BTreeMap::from([("rs1".into(), 2)]));
}
