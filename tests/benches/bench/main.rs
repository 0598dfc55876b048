//! `cargo xtask bench`: the data path's speed, measured side by side in one run (root only).
//!
//! 1. `paths`: ns/packet of every path with `BPF_PROG_TEST_RUN`, beside a MAC-swap floor.
//! 2. `e2e`: Mpps through a director namespace on veth, pinned to one core, for the floor, DR,
//!    NAT, TUN and nftables DNAT with conntrack, at 1, 1k and 100k+ flows.
//! 3. `scale`: the connection table at 1M and 4M entries (memory, lookup cost full vs empty)
//!    and the control plane (a large config, one `lb-ctl -a`, a Maglev rebuild).
//! 4. `routes`: the daemon's CPU with 100,000 routes in the main table, idle and under churn.
//! 5. `health`: the daemon's CPU with 1,000 TCP_CHECK, then 1,000 HTTP_GET, at a 1 s interval.
//!
//! Prints the tables and writes `tests/bench/results.json` and `tests/bench/paths.svg`.
//! `--only NAME` runs one part (and writes nothing unless it is all of them).

mod e2e;
mod health;
mod paths;
mod report;
mod routes;
mod scale;

use std::{path::PathBuf, time::Instant};

use report::Report;

fn main() {
    lb_tests::require_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    // `cargo bench` passes `--bench`; anything else is a mistake worth a clear word.
    for a in &args {
        if a.starts_with("--") && !["--only", "--bench"].contains(&a.as_str()) {
            eprintln!(
                "unknown argument {a}; usage: cargo xtask bench [--only paths|e2e|scale|routes|health]"
            );
            std::process::exit(2);
        }
    }
    if let Some(o) = &only
        && !["paths", "e2e", "scale", "routes", "health"].contains(&o.as_str())
    {
        eprintln!("--only takes paths, e2e, scale, routes or health, not {o}");
        std::process::exit(2);
    }
    let wants = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let started = Instant::now();
    let mut report = Report::new();
    if wants("paths") {
        println!("== per-path cost (BPF_PROG_TEST_RUN)");
        paths::run(&mut report);
    }
    if wants("e2e") {
        println!("== end to end on veth");
        e2e::run(&mut report);
        report.relate_e2e();
    }
    if wants("scale") {
        println!("== scale");
        scale::run(&mut report);
    }
    if wants("routes") {
        println!("== routes");
        routes::run(&mut report);
    }
    if wants("health") {
        println!("== health checks");
        health::run(&mut report);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.print();
    if only.is_none() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench");
        report.write(&dir).expect("writing the results");
        println!(
            "wrote {} and {}",
            dir.join("results.json").display(),
            dir.join("paths.svg").display()
        );
    }
}

/// The process's CPU time (all threads, user + system), seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from field 3 on: utime and stime
    // are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11] + f[12]) as f64 / hz
}
