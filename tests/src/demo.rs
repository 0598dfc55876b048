//! `cargo xtask demo`: the LVS-DR lab with the balancer on the director, shown step by step.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::lab::{CLIENT_IP, DIRECTOR_IP, VIP, rs_ip};
use crate::{Daemon, DrLab, TempDir, curl};

/// The demo's lb-ctl configuration (also a readable example of the format).
pub const CONFIG: &str = include_str!("../../examples/dr-demo.toml");

const REQUESTS: usize = 10;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Restores the default SIGINT action when the demo ends, however it ends.
struct SigintGuard;

impl SigintGuard {
    fn install() -> SigintGuard {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                libc::SIGINT,
                on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        SigintGuard
    }
}

impl Drop for SigintGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the default disposition.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    }
}

fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C); tearing down");
    }
    Ok(())
}

/// Builds the lab, starts the daemon with the demo config, sends requests to the VIP from the
/// client and prints what answered. Everything is torn down on return, on error and on Ctrl-C
/// (which also reaches the children, so the step in progress fails and unwinds).
pub fn run(lb_ctl: &Path) -> anyhow::Result<()> {
    crate::set_lb_ctl(lb_ctl);
    INTERRUPTED.store(false, Ordering::SeqCst);
    let _sigint = SigintGuard::install();
    // The harness panics with full diagnostics; turn that into an error after the guards
    // have cleaned up during unwinding.
    match std::panic::catch_unwind(demo) {
        Ok(result) => result,
        Err(panic) => {
            check_interrupt()?;
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(anyhow!("demo failed: {msg}"))
        }
    }
}

fn demo() -> anyhow::Result<()> {
    println!("demo: building the LVS-DR lab in network namespaces (bridge br0 in a switch netns):");
    println!("        client   {CLIENT_IP}/24");
    println!("        director {DIRECTOR_IP}/24, VIP {VIP}/32 on eth0 (runs the XDP balancer)");
    for i in 1..=2 {
        println!(
            "        rs{i}      {}/24, VIP on lo, arp_ignore=1 arp_announce=2, nginx answers \"rs{i}\"",
            rs_ip(i)
        );
    }
    let lab = DrLab::new(2);
    check_interrupt()?;

    let dir = TempDir::new("demo");
    let config = dir.join("dr-demo.toml");
    std::fs::write(&config, CONFIG)?;
    println!("demo: config ({}):", config.display());
    for line in CONFIG
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
    {
        println!("        {line}");
    }

    println!(
        "demo: starting `lb-ctl daemon -i eth0 --config …` in the director's namespace ({})",
        lab.director().name()
    );
    let daemon = Daemon::start(lab.director(), &["eth0"], Some(&config));
    check_interrupt()?;

    let url = format!("http://{VIP}/");
    println!("demo: {REQUESTS} requests from the client: curl {url}");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = 0;
    for n in 1..=REQUESTS {
        check_interrupt()?;
        match curl(lab.client(), &url) {
            Ok(body) => {
                let body = body.trim().to_string();
                println!("  {n:2}: {body}");
                *seen.entry(body).or_default() += 1;
            }
            Err(e) => {
                check_interrupt()?;
                failures += 1;
                // The full report (command, status, stdout) is noise here; curl's own
                // message is the last line.
                let why = e.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                println!("  {n:2}: FAILED: {why}");
            }
        }
        // Slow enough to watch, bounded: REQUESTS × 200 ms.
        std::thread::sleep(Duration::from_millis(200));
    }
    let counts: Vec<String> = seen.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("demo: answers per real server: {}", counts.join(", "));

    println!("demo: lb-ctl -Ln");
    for line in daemon.ctl_ok(&["-Ln"]).lines() {
        println!("        {line}");
    }

    println!("demo: tearing down (daemon, nginx, namespaces)");
    drop(daemon);
    drop(lab);
    if failures > 0 {
        bail!("{failures} of {REQUESTS} requests failed");
    }
    println!("demo: done");
    Ok(())
}
