//! Health checks end to end: real nginx real servers behind the XDP director in network
//! namespaces, the daemon's checkers probing them, curl from the client. A web server that
//! stops leaves the data path within keepalived's bound and comes back when it starts;
//! `inhibit_on_failure` keeps it at weight 0; the sorry server answers when the quorum is
//! lost; checkers fed garbage or a hanging command do not stop the director. Root only.

use std::{
    collections::BTreeMap,
    io::Write,
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{Daemon, DrLab, Netns, TempDir};

const VIP_URL: &str = "http://192.0.2.100/";

/// The timing every test's checkers use: delay_loop 1, connect_timeout 1, retry 1,
/// delay_before_retry 1, warmup 0 (a first check at once).
const TIMING: &str = "connect_timeout = 1\nretry = 1\ndelay_before_retry = 1\nwarmup = 0\n";
/// keepalived's detection bound for that timing: delay_loop + connect_timeout × (retry + 1)
/// + delay_before_retry × retry.
const BOUND: Duration = Duration::from_secs(1 + 2 + 1);

/// The health entry of `rs` ("192.0.2.11:80") in `lb-ctl status`.
fn health(d: &Daemon, rs: &str) -> serde_json::Value {
    let st = d.status();
    st["health"]["real_servers"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no health.real_servers: {st}"))
        .iter()
        .find(|r| r["real_server"] == rs)
        .unwrap_or_else(|| panic!("status lists no checked real server {rs}: {st}"))
        .clone()
}

/// Real servers of the one service in `-Ln`, with their weights.
fn table(d: &Daemon) -> BTreeMap<String, u32> {
    d.ctl_ok(&["-Ln"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"->") && f.get(1) != Some(&"RemoteAddress:Port"))
                .then(|| (f[1].to_string(), f[3].parse().expect("weight column")))
        })
        .collect()
}

/// Polls `-Ln` until `done` holds; returns how long it took. Panics after `bound` with the
/// table, the health status and the daemon's log.
fn wait_table(
    d: &Daemon,
    what: &str,
    bound: Duration,
    done: impl Fn(&BTreeMap<String, u32>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let t = table(d);
        if done(&t) {
            return start.elapsed();
        }
        if start.elapsed() > bound {
            panic!(
                "{what}: not within {bound:?}; -Ln has {t:?}\nstatus health: {}\n--- daemon log ---\n{}",
                d.status()["health"],
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every checker of `rs` has probed at least once.
fn wait_checked(d: &Daemon, rs: &str) {
    let start = Instant::now();
    loop {
        let h = health(d, rs);
        if h["checks"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| !c["last_check"].is_null()))
        {
            return;
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!("{rs} never checked: {h}\n--- daemon log ---\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tally(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for b in bodies {
        *t.entry(b.clone()).or_insert(0) += 1;
    }
    t
}

/// A DR service on the lab's VIP with rs1..rsN checked by `check` (TOML of one
/// `[[service.real_server.check]]` body, `{rs}` replaced by the server's address),
/// `svc_extra` and `rs_extra` added to the service and each real server.
fn config(
    lab: &DrLab,
    dir: &TempDir,
    n: usize,
    svc_extra: &str,
    rs_extra: &str,
    check: &str,
) -> std::path::PathBuf {
    let mut text = format!(
        "[[service]]\naddress = \"192.0.2.100\"\nport = 80\nscheduler = \"rr\"\ndelay_loop = 1\n{svc_extra}\n"
    );
    for i in 1..=n {
        let ip = lab.rs_ip(i).to_string();
        text.push_str(&format!(
            "[[service.real_server]]\naddress = \"{ip}\"\n{}\n",
            rs_extra.replace("{rs}", &format!("rs{i}"))
        ));
        if !check.is_empty() {
            text.push_str(&format!(
                "[[service.real_server.check]]\n{}\n",
                check.replace("{rs}", &ip)
            ));
        }
    }
    let path = dir.join("lb.toml");
    std::fs::write(&path, &text).unwrap();
    eprintln!("--- config ---\n{text}");
    path
}

const HTTP_CHECK: &str =
    "type = \"http\"\n{TIMING}[[service.real_server.check.url]]\npath = \"/\"\n";

fn http_check() -> String {
    HTTP_CHECK.replace("{TIMING}", TIMING)
}

#[test]
fn a_stopped_web_server_leaves_the_data_path_within_the_bound_and_comes_back() {
    let mut lab = DrLab::new(2);
    let dir = TempDir::new("health");
    let cfg = config(&lab, &dir, 2, "", "", &http_check());
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    wait_checked(&d, "192.0.2.11:80");
    wait_checked(&d, "192.0.2.12:80");
    assert_eq!(
        tally(&lab.curls(VIP_URL, 4)),
        BTreeMap::from([("rs1".into(), 2), ("rs2".into(), 2)])
    );

    lab.rs_mut(1).stop_nginx();
    // A bound three times keepalived's, so that a loaded machine does not flake the test;
    // the measured time is printed beside the bound.
    let took = wait_table(&d, "rs1 leaves the data path", BOUND * 3, |t| {
        !t.contains_key("192.0.2.11:80")
    });
    eprintln!(
        "detection: rs1 left the table {:.2} s after its nginx stopped (keepalived's bound \
         delay_loop + connect_timeout × (retry + 1) + delay_before_retry × retry = {} s)",
        took.as_secs_f64(),
        BOUND.as_secs()
    );
    let bodies = lab.curls(VIP_URL, 20);
    assert!(bodies.iter().all(|b| b == "rs2"), "{:?}", tally(&bodies));
    let h = health(&d, "192.0.2.11:80");
    assert_eq!(h["health"], "down", "{h}");
    assert_eq!(h["down_reason"], "connection refused", "{h}");
    assert_eq!(h["checkers"], serde_json::json!(["HTTP_GET"]), "{h}");
    assert_eq!(h["transitions"], 1, "{h}");
    assert_eq!(health(&d, "192.0.2.12:80")["health"], "up");

    lab.rs_mut(1).start_nginx();
    let back = wait_table(&d, "rs1 comes back", BOUND * 3, |t| {
        t.contains_key("192.0.2.11:80")
    });
    eprintln!(
        "rs1 back in the table {:.2} s after its nginx started",
        back.as_secs_f64()
    );
    assert_eq!(
        tally(&lab.curls(VIP_URL, 4)),
        BTreeMap::from([("rs1".into(), 2), ("rs2".into(), 2)])
    );
    assert_eq!(health(&d, "192.0.2.11:80")["transitions"], 2);
    // Each transition logged once, with its reason.
    let log = d.log();
    let removed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Removing service 192.0.2.11:80 from VS"))
        .collect();
    assert_eq!(removed.len(), 1, "{log}");
    assert!(removed[0].contains("HTTP_GET: connection refused"), "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("Adding service 192.0.2.11:80 to VS"))
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn inhibit_on_failure_keeps_the_failed_server_at_weight_zero() {
    let mut lab = DrLab::new(2);
    let dir = TempDir::new("health");
    let tcp = format!("type = \"tcp\"\n{TIMING}");
    let cfg = config(&lab, &dir, 2, "", "inhibit_on_failure = true", &tcp);
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    wait_checked(&d, "192.0.2.11:80");
    lab.rs_mut(1).stop_nginx();
    let took = wait_table(&d, "rs1 at weight 0", BOUND * 3, |t| {
        t.get("192.0.2.11:80") == Some(&0)
    });
    eprintln!(
        "detection (TCP_CHECK, inhibit): {:.2} s, bound {} s",
        took.as_secs_f64(),
        BOUND.as_secs()
    );
    assert_eq!(table(&d).get("192.0.2.12:80"), Some(&1));
    let bodies = lab.curls(VIP_URL, 20);
    assert!(bodies.iter().all(|b| b == "rs2"), "{:?}", tally(&bodies));
    lab.rs_mut(1).start_nginx();
    wait_table(&d, "rs1 back at weight 1", BOUND * 3, |t| {
        t.get("192.0.2.11:80") == Some(&1)
    });
    assert_eq!(
        tally(&lab.curls(VIP_URL, 4)),
        BTreeMap::from([("rs1".into(), 2), ("rs2".into(), 2)])
    );
}

#[test]
fn the_sorry_server_answers_when_every_real_server_is_down() {
    // rs3 is the sorry server: not a real server of the service, not checked.
    let mut lab = DrLab::new(3);
    let dir = TempDir::new("health");
    let cfg = config(
        &lab,
        &dir,
        2,
        "sorry_server = \"192.0.2.13\"",
        "",
        &http_check(),
    );
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    wait_checked(&d, "192.0.2.11:80");
    wait_checked(&d, "192.0.2.12:80");
    assert!(!table(&d).contains_key("192.0.2.13:80"));
    lab.rs_mut(1).stop_nginx();
    lab.rs_mut(2).stop_nginx();
    wait_table(&d, "the sorry server alone", BOUND * 3, |t| {
        t.keys().collect::<Vec<_>>() == ["192.0.2.13:80"]
    });
    let bodies = lab.curls(VIP_URL, 10);
    assert!(bodies.iter().all(|b| b == "rs3"), "{:?}", tally(&bodies));
    let svc = &d.status()["health"]["services"][0];
    assert_eq!(svc["quorum_up"], false, "{svc}");
    assert_eq!(svc["sorry_server_active"], true, "{svc}");
    // One server back: quorum (1) regained, the sorry server leaves.
    lab.rs_mut(2).start_nginx();
    wait_table(&d, "rs2 replaces the sorry server", BOUND * 3, |t| {
        t.keys().collect::<Vec<_>>() == ["192.0.2.12:80"]
    });
    let bodies = lab.curls(VIP_URL, 10);
    assert!(bodies.iter().all(|b| b == "rs2"), "{:?}", tally(&bodies));
}

/// Needs the bodies of `notify::run_command` (the notify branch): the commands are called
/// at every transition here, and run there.
#[test]
fn notify_commands_run_once_per_transition() {
    let mut lab = DrLab::new(2);
    let dir = TempDir::new("health");
    let log = dir.join("notify.log");
    let script = dir.join("notify.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = script.display();
    let cfg = config(
        &lab,
        &dir,
        2,
        &format!("quorum = 2\nquorum_up = \"{s} quorum up\"\nquorum_down = \"{s} quorum down\""),
        &format!("notify_up = \"{s} up {{rs}}\"\nnotify_down = \"{s} down {{rs}}\""),
        &http_check(),
    );
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    wait_checked(&d, "192.0.2.11:80");
    // Commands run without the daemon waiting for them (as keepalived's): two started by
    // one transition may append in either order, so each transition's lines are compared
    // as a set, transitions in order.
    let wait_lines = |want: &[&[&str]]| {
        let start = Instant::now();
        loop {
            let got = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = got.lines().collect();
            let mut at = 0;
            let mut same = true;
            for group in want {
                let mut part: Vec<&str> = lines.get(at..at + group.len()).unwrap_or(&[]).to_vec();
                part.sort();
                let mut g = group.to_vec();
                g.sort();
                same &= part == g;
                at += group.len();
            }
            if same && lines.len() == at {
                return;
            }
            if start.elapsed() > Duration::from_secs(15) {
                panic!(
                    "notify commands: expected {want:?}, the script saw {lines:?}\n--- daemon log ---\n{}",
                    d.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    lab.rs_mut(1).stop_nginx();
    wait_table(&d, "rs1 out", BOUND * 3, |t| {
        !t.contains_key("192.0.2.11:80")
    });
    wait_lines(&[&["down rs1", "quorum down"]]);
    lab.rs_mut(1).start_nginx();
    wait_table(&d, "rs1 back", BOUND * 3, |t| {
        t.contains_key("192.0.2.11:80")
    });
    wait_lines(&[&["down rs1", "quorum down"], &["up rs1", "quorum up"]]);
}

/// A TCP server in `ns` on `port` answering every connection with bytes that are not HTTP
/// (nor TLS); stops on drop.
struct GarbageServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GarbageServer {
    fn start(ns: &Netns, port: u16) -> GarbageServer {
        let l = ns.enter(|| TcpListener::bind(("0.0.0.0", port)).expect("bind garbage server"));
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        // Read the request first: closing with it unread would reset the
                        // connection, and the checker would see a reset, not the garbage.
                        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut req = [0u8; 1024];
                        let _ = std::io::Read::read(&mut c, &mut req);
                        let bytes: Vec<u8> = (0..2048)
                            .map(|_| {
                                seed ^= seed << 13;
                                seed ^= seed >> 7;
                                seed ^= seed << 17;
                                seed as u8
                            })
                            .collect();
                        let _ = c.write_all(&bytes);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        GarbageServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for GarbageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Checkers broken on purpose: rs2's HTTP check talks to a port answering random bytes,
/// rs3's SSL check to a plain-HTTP port and its MISC_CHECK command hangs. Those two leave the
/// table with their reasons; rs1 keeps getting every request, and the daemon keeps answering.
#[test]
fn garbage_answers_and_a_hanging_command_do_not_stop_the_director() {
    let lab = DrLab::new(3);
    let _garbage = GarbageServer::start(lab.rs(2).ns(), 8081);
    let dir = TempDir::new("health");
    let text = format!(
        "[[service]]\naddress = \"192.0.2.100\"\nport = 80\nscheduler = \"rr\"\ndelay_loop = 1\n\
         [[service.real_server]]\naddress = \"192.0.2.11\"\n\
         [[service.real_server.check]]\n{http}\
         [[service.real_server]]\naddress = \"192.0.2.12\"\n\
         [[service.real_server.check]]\ntype = \"http\"\nconnect_port = 8081\n{TIMING}\
         [[service.real_server.check.url]]\npath = \"/\"\n\
         [[service.real_server]]\naddress = \"192.0.2.13\"\n\
         [[service.real_server.check]]\ntype = \"ssl\"\n{TIMING}\
         [[service.real_server.check.url]]\npath = \"/\"\n\
         [[service.real_server.check]]\ntype = \"misc\"\nmisc_path = \"sleep 3600\"\n\
         misc_timeout = 1\nwarmup = 0\n",
        http = http_check()
    );
    let cfg = dir.join("lb.toml");
    std::fs::write(&cfg, &text).unwrap();
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    wait_table(&d, "rs2 and rs3 out", BOUND * 3, |t| {
        t.keys().collect::<Vec<_>>() == ["192.0.2.11:80"]
    });
    let h2 = health(&d, "192.0.2.12:80");
    assert!(
        h2["down_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("bad HTTP answer")),
        "{h2}"
    );
    let h3 = health(&d, "192.0.2.13:80");
    let reasons: Vec<String> = h3["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["last_failure"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(reasons[0].starts_with("TLS handshake failed"), "{h3}");
    // The hanging command is killed at misc_timeout: still there are checks, and they time
    // out rather than pile up.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let bodies = lab.curls(VIP_URL, 2);
        assert!(bodies.iter().all(|b| b == "rs1"), "{bodies:?}");
        table(&d);
        slowest = slowest.max(t.elapsed());
    }
    wait_checked(&d, "192.0.2.13:80");
    assert_eq!(
        health(&d, "192.0.2.13:80")["checks"][1]["last_failure"],
        "timeout"
    );
    eprintln!("slowest round of 2 curls and one -Ln while checks fail: {slowest:?}");
    let sleeps = std::process::Command::new("pgrep")
        .args(["-c", "-f", "^sleep 3600$"])
        .output()
        .unwrap();
    let n: u32 = String::from_utf8_lossy(&sleeps.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(n <= 1, "hung check commands pile up: {n} are running");
}

/// The checker's link to a real server cut: its TCP_CHECK connects time out, it leaves the
/// table, the other keeps every request; the link back, it returns.
#[test]
fn a_real_server_cut_off_times_out_and_returns_with_its_link() {
    let lab = DrLab::new(2);
    let dir = TempDir::new("health");
    let tcp = format!("type = \"tcp\"\n{TIMING}");
    let cfg = config(&lab, &dir, 2, "", "", &tcp);
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    wait_checked(&d, "192.0.2.11:80");
    lab.rs(1).ns().ip(&["link", "set", "eth0", "down"]);
    let took = wait_table(&d, "rs1 cut off leaves", BOUND * 3, |t| {
        !t.contains_key("192.0.2.11:80")
    });
    eprintln!(
        "detection of a cut link (connects time out): {:.2} s, bound {} s",
        took.as_secs_f64(),
        BOUND.as_secs()
    );
    let h = health(&d, "192.0.2.11:80");
    assert_eq!(h["down_reason"], "timeout", "{h}");
    let bodies = lab.curls(VIP_URL, 20);
    assert!(bodies.iter().all(|b| b == "rs2"), "{:?}", tally(&bodies));
    lab.rs(1).ns().ip(&["link", "set", "eth0", "up"]);
    wait_table(&d, "rs1 back with its link", Duration::from_secs(30), |t| {
        t.contains_key("192.0.2.11:80")
    });
    let bodies = lab.curls(VIP_URL, 4);
    assert_eq!(tally(&bodies).len(), 2, "{bodies:?}");
}

/// A reload keeps the state of a checker whose real server and settings are unchanged (as
/// keepalived on SIGHUP): failed rs1 stays out while rs2's weight changes; a changed check
/// is a new checker, up until it fails again.
#[test]
fn a_reload_keeps_unchanged_checkers_state() {
    let mut lab = DrLab::new(2);
    let dir = TempDir::new("health");
    let cfg = config(&lab, &dir, 2, "", "", &http_check());
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    wait_checked(&d, "192.0.2.11:80");
    lab.rs_mut(1).stop_nginx();
    wait_table(&d, "rs1 out", BOUND * 3, |t| {
        !t.contains_key("192.0.2.11:80")
    });

    // rs2 weight 2: rs1's checker is unchanged, so it stays down through the reload.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let heavier = text.replace(
        "address = \"192.0.2.12\"\n",
        "address = \"192.0.2.12\"\nweight = 2\n",
    );
    assert_ne!(heavier, text);
    std::fs::write(&cfg, &heavier).unwrap();
    d.ctl_ok(&["reload"]);
    let t = table(&d);
    assert_eq!(
        t,
        BTreeMap::from([("192.0.2.12:80".to_string(), 2)]),
        "right after the reload"
    );
    let h = health(&d, "192.0.2.11:80");
    assert_eq!(
        (h["health"].as_str(), h["transitions"].as_u64()),
        (Some("down"), Some(1)),
        "{h}"
    );

    // rs1's check changed (another connect_timeout): a new checker, up (no alpha) until
    // its first probes fail.
    let changed = heavier.replacen("connect_timeout = 1\n", "connect_timeout = 2\n", 1);
    assert_ne!(changed, heavier);
    std::fs::write(&cfg, &changed).unwrap();
    d.ctl_ok(&["reload"]);
    assert_eq!(
        table(&d).get("192.0.2.11:80"),
        Some(&1),
        "a new checker starts up (alpha off)"
    );
    wait_table(&d, "rs1 out again", Duration::from_secs(15), |t| {
        !t.contains_key("192.0.2.11:80")
    });
}

/// A minimal SMTP server (RFC 5321's commands a client sends for one mail) that keeps each
/// message's DATA; it answers every command with success.
fn smtp_sink(listener: TcpListener, mails: Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mails = mails.clone();
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut lines = BufReader::new(conn);
                let _ = out.write_all(b"220 sink.example.org ESMTP\r\n");
                let mut line = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "DATA" => {
                            let _ = out.write_all(b"354 end with <CRLF>.<CRLF>\r\n");
                            let mut body = String::new();
                            loop {
                                line.clear();
                                if lines.read_line(&mut line).unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == ".\r\n" {
                                    break;
                                }
                                body.push_str(&line);
                            }
                            mails.lock().unwrap().push(body);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = out.write_all(b"221 bye\r\n");
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = out.write_all(reply);
                }
            });
        }
    });
}

#[test]
fn one_mail_per_transition_reaches_the_smtp_server_in_keepalived_layout() {
    let mut lab = DrLab::new(2);
    let dir = TempDir::new("health");
    // The SMTP server listens on the director's own address, in its namespace.
    let smtp = std::net::SocketAddr::from((lab.director_ip(), 2525));
    let listener = lab
        .director()
        .enter(|| TcpListener::bind(smtp).expect("binding the SMTP sink"));
    let mails = Arc::new(std::sync::Mutex::new(Vec::new()));
    smtp_sink(listener, mails.clone());
    let cfg = config(&lab, &dir, 2, "", "", &http_check());
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[global]\nrouter_id = \"LB_TEST\"\nnotification_email = [\"ops@example.org\"]\n\
             notification_email_from = \"lb@example.org\"\nsmtp_server = \"{smtp}\"\n\
             smtp_connect_timeout = 5\n\n{text}"
        ),
    )
    .unwrap();
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    wait_checked(&d, "192.0.2.11:80");
    wait_checked(&d, "192.0.2.12:80");
    // Servers that start up (no alpha) are no transition: no mail yet.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        mails.lock().unwrap().len(),
        0,
        "{:?}",
        mails.lock().unwrap()
    );

    let wait_mails = |n: usize| {
        let start = Instant::now();
        while mails.lock().unwrap().len() < n {
            assert!(
                start.elapsed() < BOUND * 5,
                "expected {n} mails, the sink has {:?}\n--- daemon log ---\n{}",
                mails.lock().unwrap(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    lab.rs_mut(1).stop_nginx();
    wait_mails(1);
    lab.rs_mut(1).start_nginx();
    wait_mails(2);
    // No more than one per transition.
    std::thread::sleep(Duration::from_secs(3));
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    for (mail, state) in mails.iter().zip(["DOWN", "UP"]) {
        // The header unfolded (a long subject continues on lines that start with a space).
        let subject: String = mail
            .lines()
            .skip_while(|l| !l.starts_with("Subject:"))
            .enumerate()
            .take_while(|(i, l)| *i == 0 || l.starts_with([' ', '\t']))
            .map(|(_, l)| l)
            .collect();
        assert!(
            subject.starts_with("Subject:"),
            "no Subject header in {mail}"
        );
        for want in ["[LB_TEST]", "192.0.2.11", "192.0.2.100", state] {
            assert!(subject.contains(want), "{want} not in {subject:?}\n{mail}");
        }
        assert!(
            mail.lines()
                .any(|l| l.starts_with("From:") && l.contains("lb@example.org")),
            "{mail}"
        );
        assert!(
            mail.lines()
                .any(|l| l.starts_with("To:") && l.contains("ops@example.org")),
            "{mail}"
        );
    }
    assert!(
        mails[0].contains("=> CHECK failed on service"),
        "keepalived's body: {}",
        mails[0]
    );
}
