//! Health checks: the daemon's CPU with 1,000 checkers at a 1 s interval, TCP_CHECK and
//! HTTP_GET, against a local nginx in the daemon's namespace. 10 services × 100 DR real
//! servers; each real server's checker connects to its own loopback address (127.0.s.j, all
//! local) on nginx's port, so the 1,000 checks are 1,000 distinct connections a second.
//! The daemon's CPU time (all threads, `/proc/PID/stat`) per wall second, beside the same
//! daemon and table without checks; its thread count shows the checks are tasks, not threads.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::{Daemon, Netns, Nginx, TempDir};

use crate::{cpu_seconds, report::Report};

const SERVICES: usize = 10;
const SERVERS: usize = 100;
const MEASURE: Duration = Duration::from_secs(10);
const PORT: u16 = 8080;

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

fn rip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (j + 1) as u8)
}

/// The table, with `check` (a check body, `{ip}` its connect_ip) on every real server.
fn config(check: &str) -> String {
    let mut c = String::new();
    for s in 0..SERVICES {
        let _ = writeln!(
            c,
            "[[service]]\naddress = \"203.0.113.{}\"\nport = 80\ndelay_loop = 1",
            s + 1
        );
        for j in 0..SERVERS {
            let _ = writeln!(c, "  [[service.real_server]]\n  address = \"{}\"", rip(j));
            if !check.is_empty() {
                let ip = Ipv4Addr::new(127, 0, s as u8, j as u8 + 1);
                let _ = writeln!(
                    c,
                    "  [[service.real_server.check]]\n{}",
                    check.replace("{ip}", &ip.to_string())
                );
            }
        }
    }
    c
}

/// Starts a daemon on `config`, waits until every checker has probed and is up, then
/// measures; returns (CPU s per s, threads).
fn measure(ns: &Netns, dir: &TempDir, name: &str, config: &str, checks: usize) -> (f64, usize) {
    let cfg = dir.join(&format!("{name}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let d = Daemon::start(ns, &["lb0"], Some(&cfg));
    let pid = d.pid().expect("daemon pid");
    let start = Instant::now();
    loop {
        let st: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["status"])).unwrap();
        let rs = st["health"]["real_servers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let up = rs
            .iter()
            .filter(|r| r["health"] == "up" && !r["last_check"].is_null())
            .count();
        let checked = rs
            .iter()
            .filter(|r| !r["checkers"].as_array().is_none_or(|c| c.is_empty()))
            .count();
        if checked == checks && up == checks {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name}: {up} of {checks} checked real servers up after 60 s\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Past start-up: a few rounds in steady state.
    std::thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(MEASURE);
    let cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    let n = threads(pid);
    // Still all up at the end (no false failures under the load).
    let st: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["status"])).unwrap();
    let down: Vec<_> = st["health"]["real_servers"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["health"] != "up").cloned().collect())
        .unwrap_or_default();
    assert!(
        down.is_empty(),
        "{name}: checks failed under load: {down:?}"
    );
    (cpu, n)
}

pub fn run(report: &mut Report) {
    let checks = SERVICES * SERVERS;
    println!("  daemon CPU with {checks} checks at a 1 s interval");
    let lb_ctl = lb_tests::lb_ctl();
    let debug = lb_ctl.components().any(|c| c.as_os_str() == "debug");
    let build = if debug { "debug lb-ctl; " } else { "" };
    let ns = Netns::new("health");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "add", "lb0", "type", "veth", "peer", "name", "lb1"]);
    ns.ip(&["addr", "add", "192.0.2.254/24", "dev", "lb0"]);
    for i in ["lb0", "lb1"] {
        ns.ip(&["link", "set", i, "up"]);
    }
    let dir = TempDir::new("health-bench");
    let mut neigh = String::new();
    for j in 0..SERVERS {
        let _ = writeln!(
            neigh,
            "neigh add {} lladdr 02:00:00:00:20:{j:02x} dev lb0 nud permanent",
            rip(j)
        );
    }
    let nb = dir.join("neigh.batch");
    std::fs::write(&nb, neigh).unwrap();
    ns.ip(&["-batch", nb.to_str().unwrap()]);
    let nginx = Nginx::start_on(&ns, "hc", PORT);

    let timing = format!(
        "  connect_ip = \"{{ip}}\"\n  connect_port = {PORT}\n  connect_timeout = 1\n  retry = 1\n  delay_before_retry = 1\n  warmup = 1"
    );
    let (base, base_threads) = measure(&ns, &dir, "none", &config(""), 0);
    println!("    no checks: {base:.4} CPU s per s, {base_threads} threads");
    let tcp = config(&format!("  type = \"tcp\"\n{timing}"));
    let (tcp_cpu, tcp_threads) = measure(&ns, &dir, "tcp", &tcp, checks);
    println!("    {checks} TCP_CHECK: {tcp_cpu:.4} CPU s per s, {tcp_threads} threads");
    let http = config(&format!(
        "  type = \"http\"\n{timing}\n  [[service.real_server.check.url]]\n  path = \"/\"\n  digest = \"{}\"",
        md5_hex(b"hc\n")
    ));
    let (http_cpu, http_threads) = measure(&ns, &dir, "http", &http, checks);
    println!("    {checks} HTTP_GET: {http_cpu:.4} CPU s per s, {http_threads} threads");
    drop(nginx);
    drop(ns);

    report.scale(
        "daemon CPU, 10 × 100 real servers, no checks",
        base,
        "CPU s/s",
        &format!(
            "{build}{base_threads} threads, over {} s",
            MEASURE.as_secs()
        ),
    );
    report.scale(
        &format!("daemon CPU, {checks} TCP_CHECK at 1 s"),
        tcp_cpu,
        "CPU s/s",
        &format!("{build}{tcp_threads} threads; against nginx on loopback"),
    );
    report.scale(
        &format!("daemon CPU, {checks} HTTP_GET (with MD5 digest) at 1 s"),
        http_cpu,
        "CPU s/s",
        &format!("{build}{http_threads} threads; against nginx on loopback"),
    );
}

/// The digest keepalived's genhash prints for `body`.
fn md5_hex(body: &[u8]) -> String {
    let out = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body)?;
            c.wait_with_output()
        })
        .expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("md5sum output")
        .to_string()
}
