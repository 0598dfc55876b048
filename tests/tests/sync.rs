//! Connection sync end to end: two lb-ctl directors (real XDP balancers, DR) sharing a VIP
//! by VRRP on one bridged segment, real nginx servers, long-lived client connections; the
//! MASTER sends its connections in IPVS's sync format, the BACKUP installs them, and a
//! takeover keeps every connection. Faults: garbage to the sync port, the sync link cut,
//! the BACKUP's daemon restarted. Root only.
//!
//! Times are printed, not asserted (bounds only, generous for a loaded 2-core machine).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lb_tests::ha::{
    BOUND, CLIENT_IP, DirectorOpts as Opts, HaLab, VIP, director_config as config, exchange, start,
    vrrp_state as state, wait_for, wait_state,
};
use lb_tests::{Daemon, KeepAlive, Netns, TempDir};
use serde_json::Value;

/// The sync link of the tests that cut it: a veth of its own between the directors.
const SYNC_NET: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];

/// keepalived's `lvs_sync_daemon eth0 VI_1`, with a short refresh so a director that comes
/// back as BACKUP gets the live connections again within seconds.
const FOLLOW: &str = r#"
[[sync_daemon]]
vrrp_instance = "VI_1"
interface = "eth0"
syncid = 51
refresh_period = 2
"#;

/// This file's directors: the lab's, with [`FOLLOW`] unless a test says otherwise.
fn synced() -> Opts<'static> {
    Opts {
        sync: FOLLOW,
        ..Opts::default()
    }
}

/// The director that starts as MASTER: priority 150, [`synced`].
fn master() -> Opts<'static> {
    Opts {
        state: "MASTER",
        priority: 150,
        ..synced()
    }
}

/// A sync role's status (`master` or `backup`), if it runs.
fn role(d: &Daemon, name: &str) -> Option<Value> {
    d.status()["sync"]["roles"]
        .as_array()?
        .iter()
        .find(|r| r["role"] == name)
        .cloned()
}

fn counter(r: &Option<Value>, key: &str) -> u64 {
    r.as_ref().and_then(|r| r[key].as_u64()).unwrap_or(0)
}

/// The entries of the test's client in `d`'s connection table (`-Lnc`).
fn client_entries(d: &Daemon) -> Vec<Value> {
    let out = d.ctl_ok(&["-Lnc", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mine = format!("{CLIENT_IP}:");
    v.as_array()
        .unwrap_or_else(|| panic!("-Lnc -o json is not a list: {v}"))
        .iter()
        .filter(|c| c["client"].as_str().is_some_and(|a| a.starts_with(&mine)))
        .cloned()
        .collect()
}

/// Established connections of the test's client in `d`'s table.
fn established(d: &Daemon) -> usize {
    client_entries(d)
        .iter()
        .filter(|c| c["state"] == "ESTABLISHED")
        .count()
}

/// Waits until `d` has at least `n` of the client's established connections; the time.
fn wait_established(d: &Daemon, n: usize, what: &str) -> Duration {
    match wait_for(BOUND, || (established(d) >= n).then_some(())) {
        Some((t, ())) => t,
        None => panic!(
            "{what}: {} of {n} connections on this director; sync: {}\n{}",
            established(d),
            d.status()["sync"],
            d.log()
        ),
    }
}

/// Waits until `d`'s data path reports connections (its master role runs): the role
/// follows a VRRP transition within the daemon's 50 ms poll, and a connection that opens
/// and settles inside that gap is sent only at its next refresh.
fn wait_reporting(d: &Daemon) {
    wait_for(BOUND, || {
        (d.status()["sync"]["data_path_reports"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("the master role does not run: {}", d.status()["sync"]));
}

/// After a takeover or failback by `to` (its namespace and daemon): the client follows the
/// gratuitous ARPs, and every one of `conns` still answers.
fn all_kept(lab: &HaLab, to: (&Netns, &Daemon), conns: &mut [KeepAlive], what: &str) {
    let (ns, d) = to;
    lab.wait_client_on(ns);
    let survived = exchange(conns);
    eprintln!("{what}: {survived} of {} kept working", conns.len());
    assert_eq!(
        survived,
        conns.len(),
        "{what}: sync: {}\n{}",
        d.status()["sync"],
        d.log()
    );
}

/// Keeps the connections talking for `d` (so the MASTER refreshes them to a BACKUP).
fn talk_for(conns: &mut [KeepAlive], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let ok = exchange(conns);
        assert_eq!(ok, conns.len(), "connections lost while nothing failed");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// wrr (which a takeover cannot recompute, unlike sh/mh): 20 long-lived connections through
/// the MASTER; SIGKILL its daemon; the BACKUP takes the VIP and all 20 go on. 5 more open on
/// the new MASTER; the old one comes back (preempt, after `preempt_delay`, which gives it
/// time to get the live connections again as BACKUP) and all 25 go on.
#[test]
fn sigkill_takeover_and_preempting_failback_keep_every_wrr_connection() {
    let lab = HaLab::new();
    let dir = TempDir::new("sync");
    let c1 = config(
        &dir,
        "d1.toml",
        &Opts {
            preempt_delay: 6,
            ..master()
        },
    );
    let c2 = config(&dir, "d2.toml", &synced());
    let (mut d1, d2) = lab.start_pair(&c1, &c2);
    wait_reporting(&d1);
    let m = role(&d1, "master").unwrap_or_else(|| panic!("no master role: {}", d1.status()));
    assert_eq!(m["follows"], "VI_1");
    assert!(role(&d2, "backup").is_some(), "{}", d2.status()["sync"]);
    // ipvsadm's listing of the running daemons.
    let listed = d1.ctl_ok(&["-L", "--daemon"]);
    assert_eq!(
        listed,
        "master sync daemon (mcast=eth0, syncid=51, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    );

    let mut conns = lab.open(20);
    let t = wait_established(&d2, 20, "the BACKUP before the takeover");
    eprintln!(
        "20 connections on the BACKUP {:.2} s after they opened",
        t.as_secs_f64()
    );

    d1.kill();
    let t = wait_state(&d2, "MASTER", &d1);
    eprintln!(
        "takeover after SIGKILL of the MASTER's daemon: {:.2} s",
        t.as_secs_f64()
    );
    all_kept(
        &lab,
        (&lab.dir2, &d2),
        &mut conns,
        "wrr connections across the takeover (sync)",
    );
    // The new MASTER now sends; its backup role stopped.
    wait_for(BOUND, || role(&d2, "master").map(|_| ()))
        .unwrap_or_else(|| panic!("{}", d2.status()["sync"]));
    assert!(role(&d2, "backup").is_none());

    conns.extend(lab.open(5));
    let restarted = Instant::now();
    d1.restart();
    // Back as BACKUP for preempt_delay: the new MASTER refreshes the live connections to it.
    wait_state(&d1, "BACKUP", &d2);
    talk_for(&mut conns, Duration::from_secs(3));
    wait_state(&d1, "MASTER", &d2);
    eprintln!(
        "failback (preempt, preempt_delay 6 s): MASTER again {:.2} s after the daemon's restart",
        restarted.elapsed().as_secs_f64()
    );
    all_kept(
        &lab,
        (&lab.dir1, &d1),
        &mut conns,
        "connections across the failback",
    );
    lab.curls_ok(5);
}

/// The MASTER's link goes down (VRRP and sync both cut): the BACKUP takes over with every
/// connection. The link returns: nopreempt keeps the new MASTER, the old one stays BACKUP
/// and gets the connections (5 new, 20 refreshed); the new MASTER stops (SIGTERM): the old
/// one takes over again with all 25.
#[test]
fn link_down_takeover_and_nopreempt_failback_keep_every_wrr_connection() {
    let lab = HaLab::new();
    let dir = TempDir::new("sync");
    let o = |prio| Opts {
        priority: prio,
        nopreempt: true,
        ..synced()
    };
    let c1 = config(&dir, "d1.toml", &o(150));
    let c2 = config(&dir, "d2.toml", &o(100));
    let (d1, mut d2) = lab.start_pair(&c1, &c2);
    wait_reporting(&d1);
    let mut conns = lab.open(20);
    wait_established(&d2, 20, "the BACKUP before the link went down");

    lab.switch.ip(&["link", "set", "dev", "dir1", "down"]);
    let t = wait_state(&d2, "MASTER", &d1);
    eprintln!(
        "takeover after the MASTER's link went down: {:.2} s",
        t.as_secs_f64()
    );
    all_kept(
        &lab,
        (&lab.dir2, &d2),
        &mut conns,
        "wrr connections across the link-down takeover (sync)",
    );

    lab.switch.ip(&["link", "set", "dev", "dir1", "up"]);
    wait_state(&d1, "BACKUP", &d2);
    conns.extend(lab.open(5));
    // The 5 new ones as they open; the 20 others at their next refresh (2 s).
    talk_for(&mut conns, Duration::from_secs(5));
    assert_eq!(state(&d2), "MASTER", "nopreempt");
    let backup = role(&d1, "backup");
    assert!(
        counter(&backup, "installed") + counter(&backup, "updated") >= 25,
        "{backup:?}"
    );

    d2.stop();
    let t = wait_state(&d1, "MASTER", &d2);
    eprintln!(
        "takeover after SIGTERM of the new MASTER: {:.2} s",
        t.as_secs_f64()
    );
    all_kept(
        &lab,
        (&lab.dir1, &d1),
        &mut conns,
        "connections across the nopreempt failback",
    );
}

/// Without sync, sh/mh with IPVS's `sloppy_tcp`: the new MASTER schedules a connection's
/// mid-stream segment to the real server the old one chose, so mh connections survive too.
#[test]
fn mh_with_sloppy_tcp_survives_a_takeover_without_sync() {
    let lab = HaLab::new();
    let dir = TempDir::new("sync");
    let o = |state, prio| Opts {
        state,
        priority: prio,
        scheduler: "mh",
        sync: "",
        director: "sloppy_tcp = true",
        ..synced()
    };
    let c1 = config(&dir, "d1.toml", &o("MASTER", 150));
    let c2 = config(&dir, "d2.toml", &o("BACKUP", 100));
    let (mut d1, d2) = lab.start_pair(&c1, &c2);
    let mut conns = lab.open(20);
    assert_eq!(established(&d2), 0, "no sync: the BACKUP has none of them");
    d1.kill();
    let t = wait_state(&d2, "MASTER", &d1);
    eprintln!(
        "takeover (mh, sloppy_tcp, no sync): {:.2} s",
        t.as_secs_f64()
    );
    all_kept(
        &lab,
        (&lab.dir2, &d2),
        &mut conns,
        "mh connections across the takeover with sloppy_tcp, no sync",
    );
}

/// A sync link of its own (a veth between the directors, 198.51.100.0/24), the roles
/// following VRRP on eth0.
fn sync_link(lab: &HaLab) {
    lb_tests::veth(&lab.dir1, "sync0", &lab.dir2, "sync0");
    lab.dir1.ip(&[
        "addr",
        "add",
        &format!("{}/24", SYNC_NET[0]),
        "dev",
        "sync0",
    ]);
    lab.dir2.ip(&[
        "addr",
        "add",
        &format!("{}/24", SYNC_NET[1]),
        "dev",
        "sync0",
    ]);
}

/// Garbage and truncated datagrams to the BACKUP's sync port are counted by kind and
/// install nothing; forwarding and sync go on. The sync link is cut while connections
/// open: those are missing on the BACKUP (and counted as send errors on the MASTER),
/// nothing else breaks; when it returns, sync resumes. The BACKUP's daemon is restarted:
/// it joins the group again and installs what follows.
#[test]
fn garbage_a_cut_sync_link_and_a_restarted_backup_change_nothing_else() {
    let lab = HaLab::new();
    sync_link(&lab);
    let dir = TempDir::new("sync");
    let unicast = |peer: Ipv4Addr| {
        format!(
            "[[sync_daemon]]\nvrrp_instance = \"VI_1\"\ninterface = \"sync0\"\nsyncid = 7\n\
             peers = [\"{peer}\"]\n"
        )
    };
    let (s1, s2) = (unicast(SYNC_NET[1]), unicast(SYNC_NET[0]));
    let c1 = config(
        &dir,
        "d1.toml",
        &Opts {
            sync: &s1,
            ..master()
        },
    );
    let c2 = config(
        &dir,
        "d2.toml",
        &Opts {
            sync: &s2,
            ..synced()
        },
    );
    let (d1, mut d2) = lab.start_pair(&c1, &c2);
    wait_reporting(&d1);
    let mut conns = lab.open(5);
    wait_established(&d2, 5, "over the sync link");

    // Garbage from the MASTER's address (a peer's), and from elsewhere.
    let before = role(&d2, "backup");
    let bad: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        vec![0, 7, 0, 80, 2, 1, 0, 0], // size says 80, 8 bytes came
        vec![0, 7, 0, 8, 0, 9, 0, 0],  // version 9
        vec![0, 7, 0, 12, 1, 1, 0, 0, 0, 6, 0, 36], // one entry, cut after 4 bytes
        vec![1],                       // shorter than any header
    ];
    lab.dir1.enter(|| {
        let s = std::net::UdpSocket::bind((SYNC_NET[0], 0)).unwrap();
        for b in &bad {
            s.send_to(b, (SYNC_NET[1], 8848)).unwrap();
        }
    });
    lab.dir1
        .ip(&["addr", "add", "198.51.100.9/24", "dev", "sync0"]);
    lab.dir1.enter(|| {
        let s = std::net::UdpSocket::bind(("198.51.100.9", 0)).unwrap();
        s.send_to(b"not from a peer", (SYNC_NET[1], 8848)).unwrap();
    });
    let (_, after) = wait_for(BOUND, || {
        let b = role(&d2, "backup");
        (counter(&b, "unknown_peer") > counter(&before, "unknown_peer")).then_some(b)
    })
    .unwrap_or_else(|| panic!("{}", d2.status()["sync"]));
    let malformed: u64 = after.as_ref().unwrap()["malformed"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    eprintln!(
        "garbage counted on the BACKUP: {}",
        after.as_ref().unwrap()["malformed"]
    );
    assert_eq!(malformed, bad.len() as u64, "{after:?}");
    assert_eq!(
        counter(&after, "installed"),
        counter(&before, "installed"),
        "{after:?}"
    );
    assert_eq!(exchange(&mut conns), 5);
    lab.curls_ok(3);

    // The sync link cut while 5 more open.
    lab.dir1.ip(&["link", "set", "dev", "sync0", "down"]);
    let on_backup = established(&d2);
    let mut cut = lab.open(5);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        established(&d2),
        on_backup,
        "the BACKUP got connections over a cut link"
    );
    assert_eq!(
        exchange(&mut conns),
        5,
        "forwarding while the sync link is cut"
    );
    assert_eq!(exchange(&mut cut), 5);
    assert_eq!(state(&d1), "MASTER", "VRRP is on eth0, untouched");
    let m = role(&d1, "master");
    eprintln!(
        "MASTER while its sync link is cut: send_errors {}",
        counter(&m, "send_errors")
    );
    lab.dir1.ip(&["link", "set", "dev", "sync0", "up"]);
    let mut back = lab.open(5);
    let t = wait_established(&d2, on_backup + 5, "after the sync link returned");
    eprintln!(
        "sync resumed {:.2} s after the link returned",
        t.as_secs_f64()
    );
    assert_eq!(exchange(&mut back), 5);

    // The BACKUP's daemon killed (SIGKILL) and started again: it rejoins and installs what
    // follows.
    d2.kill();
    lab.curls_ok(3);
    d2.restart();
    wait_state(&d2, "BACKUP", &d1);
    wait_for(BOUND, || role(&d2, "backup").map(|_| ()))
        .unwrap_or_else(|| panic!("{}", d2.status()["sync"]));
    let mut later = lab.open(5);
    wait_for(BOUND, || {
        (counter(&role(&d2, "backup"), "installed") >= 5).then_some(())
    })
    .unwrap_or_else(|| panic!("restarted BACKUP installs nothing: {}", d2.status()["sync"]));
    assert_eq!(exchange(&mut later), 5);
    assert_eq!(exchange(&mut conns), 5);
}

/// 10,000 connections opened through the MASTER (handshake, then closed by the client) are
/// all on the BACKUP; the time from the last connect to the last one installed is printed.
#[test]
fn ten_thousand_connections_reach_the_backup() {
    const N: usize = 10_000;
    let lab = HaLab::new();
    let dir = TempDir::new("sync");
    let c1 = config(&dir, "d1.toml", &master());
    let c2 = config(&dir, "d2.toml", &synced());
    let (d1, d2) = lab.start_pair(&c1, &c2);
    wait_reporting(&d1);
    let vip: SocketAddr = (VIP, 80).into();
    let started = Instant::now();
    // Each from a source port of its own (20000..30000), so no two share a 5-tuple (the
    // kernel may hand out a port again once its last connection is closed); each closed
    // by the client once open.
    let opened = lab.client.enter(|| {
        let mut ok = 0;
        for i in 0..N {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let src: SocketAddr = (CLIENT_IP, 20000 + i as u16).into();
            s.bind(&src.into())
                .unwrap_or_else(|e| panic!("binding {src}: {e}"));
            if s.connect_timeout(&vip.into(), Duration::from_secs(5))
                .is_ok()
            {
                ok += 1;
            }
        }
        ok
    });
    let opening = started.elapsed();
    let loop_end = Instant::now();
    assert_eq!(opened, N, "connections that opened through the MASTER");
    // What the MASTER's table holds of them (its -Lnc), and when the BACKUP holds them all.
    let on_master = clients(&d1);
    assert!(on_master.len() >= N, "{} on the MASTER", on_master.len());
    let missing = |d: &Daemon| {
        let b = clients(d);
        on_master.iter().filter(|c| !b.contains(*c)).count()
    };
    wait_for(Duration::from_secs(60), || {
        (missing(&d2) == 0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{} of {} missing on the BACKUP\nBACKUP: {}\nMASTER: {}",
            missing(&d2),
            on_master.len(),
            d2.status()["sync"],
            d1.status()["sync"]
        )
    });
    let (m, b) = (role(&d1, "master"), role(&d2, "backup"));
    eprintln!(
        "{N} connections opened through the MASTER in {:.2} s; all {} of its entries were on \
         the BACKUP at most {:.2} s after the last one opened (polling both tables); master: {} \
         messages, {} connection events; backup: installed {}, updated {}, refused {}; ring \
         drops {}, rate drops {}",
        opening.as_secs_f64(),
        on_master.len(),
        loop_end.elapsed().as_secs_f64(),
        counter(&m, "messages_sent"),
        counter(&m, "conns_sent"),
        counter(&b, "installed"),
        counter(&b, "updated"),
        b.as_ref().unwrap()["refused"],
        counter(&m, "ring_drops"),
        counter(&m, "rate_drops"),
    );
    assert_eq!(counter(&m, "ring_drops"), 0, "{m:?}");
    assert_eq!(counter(&m, "rate_drops"), 0, "{m:?}");
}

/// The client endpoints (`address:port`) of every entry in `d`'s connection table.
fn clients(d: &Daemon) -> std::collections::HashSet<String> {
    client_entries(d)
        .iter()
        .filter_map(|c| c["client"].as_str().map(str::to_string))
        .collect()
}

fn plain_config(dir: &TempDir, name: &str, sync: &str) -> PathBuf {
    let text = format!(
        "[[service]]\naddress = \"192.0.2.100\"\nport = 80\nscheduler = \"wrr\"\n  \
         [[service.real_server]]\n  address = \"192.0.2.11\"\n{sync}"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn ctl_err(d: &Daemon, args: &[&str]) -> (i32, String) {
    let o = d.ctl(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// ipvsadm's daemon commands against a running director: start, list, refuse a second,
/// stop, refuse a stop of nothing; a reload adds a `[[sync_daemon]]`, and a reload naming
/// a missing interface is refused with the running roles unchanged.
#[test]
fn ipvsadm_daemon_commands_and_reloads() {
    let lab = HaLab::new();
    let dir = TempDir::new("sync");
    let cfg = plain_config(&dir, "d.toml", "");
    let d = Daemon::start(&lab.dir1, &["eth0"], Some(&cfg));
    assert_eq!(
        d.ctl_ok(&["-L", "--daemon"]),
        "",
        "ipvsadm prints nothing without one"
    );
    d.ctl_ok(&[
        "--start-daemon",
        "backup",
        "--mcast-interface",
        "eth0",
        "--syncid",
        "3",
    ]);
    d.ctl_ok(&[
        "--start-daemon",
        "master",
        "--mcast-interface",
        "eth0",
        "--mcast-ttl",
        "2",
    ]);
    assert_eq!(
        d.ctl_ok(&["-L", "--daemon"]),
        "master sync daemon (mcast=eth0, syncid=0, maxlen=1472, group=224.0.0.81, port=8848, ttl=2)\n\
         backup sync daemon (mcast=eth0, syncid=3, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    );
    assert_eq!(d.status()["sync"]["data_path_reports"], true);
    let (code, err) = ctl_err(
        &d,
        &["--start-daemon", "backup", "--mcast-interface", "eth0"],
    );
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("Daemon has already run"), "{err}");
    d.ctl_ok(&["--stop-daemon", "master"]);
    assert_eq!(d.status()["sync"]["data_path_reports"], false);
    let (code, err) = ctl_err(&d, &["--stop-daemon", "master"]);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("No daemon is running"), "{err}");
    let (_, err) = ctl_err(
        &d,
        &["--start-daemon", "master", "--mcast-interface", "nosuch0"],
    );
    assert!(err.contains("no interface nosuch0"), "{err}");
    let (code, err) = ctl_err(&d, &["--start-daemon", "master"]);
    assert_eq!(code, 2, "{err}");
    d.ctl_ok(&["--stop-daemon", "backup"]);
    assert_eq!(d.ctl_ok(&["-L", "--daemon"]), "");

    // Reloads: a [[sync_daemon]] added; then one on a missing interface, refused whole.
    plain_config(
        &dir,
        "d.toml",
        "[[sync_daemon]]\nstate = \"backup\"\ninterface = \"eth0\"\nsyncid = 9\n",
    );
    d.ctl_ok(&["reload"]);
    assert_eq!(
        d.ctl_ok(&["-L", "--daemon"]),
        "backup sync daemon (mcast=eth0, syncid=9, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    );
    plain_config(
        &dir,
        "d.toml",
        "[[sync_daemon]]\nstate = \"backup\"\ninterface = \"nosuch0\"\n",
    );
    let (_, err) = ctl_err(&d, &["reload"]);
    assert!(err.contains("no interface nosuch0"), "{err}");
    assert!(
        d.ctl_ok(&["-L", "--daemon"]).contains("syncid=9"),
        "unchanged"
    );
}

/// Seed 003's keepalived.conf (the fixture, its addresses moved onto the HA lab's by plain
/// substitution) with keepalived's `lvs_sync_daemon eth0 VI_1` added to `global_defs`.
fn seed003_with_sync(name: &str) -> String {
    let text = lb_tests::ha::seed003_on_lab(name).replacen(
        "router_id LVS_DEVEL\n",
        "router_id LVS_DEVEL\n     lvs_sync_daemon eth0 VI_1\n",
        1,
    );
    assert!(
        text.contains("lvs_sync_daemon"),
        "no lvs_sync_daemon inserted:\n{text}"
    );
    text
}

/// Seed 003's pair imported with `lb-ctl import keepalived` (wrr, persistence 50 s, DR)
/// plus `lvs_sync_daemon`: connections and their persistence template reach the BACKUP,
/// and all 20 go on after the MASTER's daemon is killed.
#[test]
fn seed_003_imported_with_lvs_sync_daemon_keeps_every_connection() {
    let lab = HaLab::new();
    let dir = TempDir::new("sync");
    let mut cfgs = Vec::new();
    for (conf, out) in [
        ("seed003-master.conf", "master.toml"),
        ("seed003-backup.conf", "backup.toml"),
    ] {
        let src = dir.join(conf);
        std::fs::write(&src, seed003_with_sync(conf)).unwrap();
        let toml = dir.join(out);
        lb_tests::ha::import_keepalived(&src, &toml);
        let text = std::fs::read_to_string(&toml).unwrap();
        assert!(
            text.contains("[[sync_daemon]]") && text.contains("vrrp_instance = \"VI_1\""),
            "{text}"
        );
        cfgs.push(toml);
    }
    let mut d1 = start(&lab.dir1, &cfgs[0]);
    let d2 = start(&lab.dir2, &cfgs[1]);
    wait_state(&d1, "MASTER", &d2);
    wait_state(&d2, "BACKUP", &d1);
    wait_reporting(&d1);
    // keepalived's default syncid: the instance's virtual_router_id.
    assert_eq!(role(&d1, "master").unwrap()["syncid"], 62);
    let mut conns = lab.open(20);
    let t = wait_established(&d2, 20, "the BACKUP (seed 003)");
    eprintln!(
        "seed 003: 20 connections on the BACKUP {:.2} s after they opened",
        t.as_secs_f64()
    );
    // The persistence template went along (the BACKUP's -Lnc lists it, proto IP).
    let out = d2.ctl_ok(&["-Lnc"]);
    assert!(
        out.lines().any(|l| l.starts_with("IP ")),
        "no template on the BACKUP:\n{out}"
    );
    d1.kill();
    let t = wait_state(&d2, "MASTER", &d1);
    eprintln!("seed 003: takeover after SIGKILL {:.2} s", t.as_secs_f64());
    all_kept(
        &lab,
        (&lab.dir2, &d2),
        &mut conns,
        "seed 003 (wrr, persistent)",
    );
    lab.curls_ok(5);
}
