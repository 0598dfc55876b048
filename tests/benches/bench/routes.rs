//! Routes: what the daemon costs on a director with a full routing table. 100,000 blackhole
//! /32 routes in 198.18.0.0/15 in the main table (as a BGP-fed router might hold), a daemon with
//! one service of `SERVERS` DR real servers, and its CPU time (utime + stime from
//! `/proc/PID/stat`, every thread) per wall second: idle for `IDLE`, then while every route is
//! deleted and added again (200,000 notifications). The daemon follows routes by netlink
//! notifications and looks up only the real servers a change concerns; before that it dumped
//! every route every second.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::{Daemon, Netns, TempDir};

use crate::{cpu_seconds, report::Report};

const ROUTES: u32 = 100_000;
const SERVERS: usize = 10;
const IDLE: Duration = Duration::from_secs(10);

fn route(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)
}

fn rip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (j + 1) as u8)
}

/// `ip -batch` of `verb` for every route.
fn batch(ns: &Netns, dir: &TempDir, verb: &str) -> f64 {
    let mut s = String::with_capacity(ROUTES as usize * 48);
    for i in 0..ROUTES {
        let _ = writeln!(s, "route {verb} blackhole {}/32", route(i));
    }
    let path = dir.join(&format!("routes-{verb}.batch"));
    std::fs::write(&path, s).unwrap();
    let t = Instant::now();
    ns.ip(&["-batch", path.to_str().unwrap()]);
    t.elapsed().as_secs_f64()
}

pub fn run(report: &mut Report) {
    println!("  daemon CPU with {ROUTES} routes in the main table");
    let lb_ctl = lb_tests::lb_ctl();
    let debug = lb_ctl.components().any(|c| c.as_os_str() == "debug");
    let build = if debug { "debug lb-ctl; " } else { "" };
    let ns = Netns::new("routes");
    ns.ip(&["link", "add", "lb0", "type", "veth", "peer", "name", "lb1"]);
    ns.ip(&["addr", "add", "192.0.2.254/24", "dev", "lb0"]);
    for i in ["lb0", "lb1"] {
        ns.ip(&["link", "set", i, "up"]);
    }
    let dir = TempDir::new("routes");
    let mut neigh = String::new();
    let mut config = String::from("[[service]]\naddress = \"192.0.2.100\"\nport = 80\n");
    for j in 0..SERVERS {
        let _ = writeln!(
            neigh,
            "neigh add {} lladdr 02:00:00:00:20:{j:02x} dev lb0 nud permanent",
            rip(j)
        );
        let _ = writeln!(
            config,
            "  [[service.real_server]]\n  address = \"{}\"",
            rip(j)
        );
    }
    let nb = dir.join("neigh.batch");
    std::fs::write(&nb, neigh).unwrap();
    ns.ip(&["-batch", nb.to_str().unwrap()]);
    let cfg = dir.join("lb.toml");
    std::fs::write(&cfg, config).unwrap();
    let add = batch(&ns, &dir, "add");
    println!("    {ROUTES} routes added in {add:.1} s");

    let d = Daemon::start(&ns, &["lb0"], Some(&cfg));
    let pid = d.pid().expect("daemon pid");
    // Past start-up (the first ticks, the first full neighbour read).
    std::thread::sleep(Duration::from_secs(3));
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(IDLE);
    let idle = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    println!("    idle: {:.4} CPU s per s", idle);

    // Churn: every route deleted, then added again; measured until the daemon has had two
    // ticks to take in the last notifications.
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    let del = batch(&ns, &dir, "del");
    let add = batch(&ns, &dir, "add");
    std::thread::sleep(Duration::from_secs(2));
    let wall = t0.elapsed().as_secs_f64();
    let churn_cpu = cpu_seconds(pid) - c0;
    println!(
        "    churn: {} route changes in {:.1} s (del {del:.1} s, add {add:.1} s): daemon {churn_cpu:.2} CPU s, {:.3} CPU s per s",
        2 * ROUTES,
        wall,
        churn_cpu / wall
    );
    // The churn concerned none of the real servers: all still resolved.
    let st: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["status"])).unwrap();
    if let Some(rs) = st["real_servers"].as_array() {
        let resolved = rs.iter().filter(|r| r["state"] == "resolved").count();
        assert_eq!(resolved, SERVERS, "real servers after the churn: {st}");
    }
    drop(d);
    drop(ns);

    report.scale(
        &format!("daemon CPU, idle, {ROUTES} routes in the table"),
        idle,
        "CPU s/s",
        &format!("{build}over {} s", IDLE.as_secs()),
    );
    report.scale(
        &format!("daemon CPU, {} route changes", 2 * ROUTES),
        churn_cpu,
        "CPU s",
        &format!(
            "{build}{:.3} CPU s/s over {wall:.1} s of churn; none concerns a real server",
            churn_cpu / wall
        ),
    );
}
