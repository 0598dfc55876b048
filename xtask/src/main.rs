//! Task runner: `cargo xtask setup | test | demo | bench | fuzz` (see `cargo xtask --help`).
mod dist;
mod setup;
mod util;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::util::{cargo, fail_line, run_status};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, set up and test the XDP load balancer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (nightly, rust-src, bpf-linker, Debian
    /// packages) and mount bpffs. Idempotent; needs root.
    Setup,
    /// Run setup, build lb-ctl, run the unit tests, then the root namespace tests
    /// (lb-tests, one thread). Arguments go to the lb-tests run, e.g. `cargo xtask test -- dr_rr`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run setup, build lb-ctl and show an LVS-DR lab balancing HTTP between two real servers.
    Demo,
    /// Run setup, then the benchmarks in one run: per-path packet cost with BPF_PROG_TEST_RUN
    /// beside the MAC-swap floor, end-to-end throughput on veth against nftables DNAT, and the
    /// scale of tables and control plane. Prints tables, writes tests/bench/results.json and
    /// the chart tests/bench/paths.svg. Needs root. `--only paths|e2e|scale|routes|health` runs one part.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run setup, then fuzz without the test command's bounds: random and mutated frames
    /// through lb_xdp and lb_decap with every output checked (optimised build), then random
    /// and mutated requests on a live daemon's control socket, then mutated TOML examples.
    /// Prints the counts run and the violations by class with an example of each; fails if
    /// there is any. Needs root.
    Fuzz {
        /// Packets to run; 0: no count bound (stop with --seconds or Ctrl-C).
        #[arg(long, default_value_t = 10_000_000)]
        packets: u64,
        /// Stop the packet run after this many seconds (0: no time bound).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// Seed (decimal or 0x-hex) for all three, to replay a run; default: a fresh one each.
        #[arg(long)]
        seed: Option<String>,
        /// Requests sent to the control socket.
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Mutated configuration files parsed.
        #[arg(long, default_value_t = 200_000)]
        configs: u64,
    },
    /// Build the Debian package target/dist/lb-ctl_VERSION_ARCH.deb: the release binary,
    /// the systemd unit, /etc/lb/lb.toml (conffile), man pages, completions, the dashboard.
    Dist {
        /// Package this lb-ctl binary instead of building the release one (the tests pass
        /// the debug build, stripped of its debug info, to stay quick).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Where the package goes (default target/dist).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo(),
        Cmd::Bench { args } => bench(&args),
        Cmd::Fuzz {
            packets,
            seconds,
            seed,
            requests,
            configs,
        } => fuzz(packets, seconds, seed.as_deref(), requests, configs),
        Cmd::Dist { binary, out } => dist::run(binary.as_deref(), out.as_deref()).map(drop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fail_line(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Where `cargo build -p lb-ctl` puts the debug binary (honours CARGO_TARGET_DIR).
fn lb_ctl_path() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root_dir().join(dir)
            }
        }
        None => root_dir().join("target"),
    };
    target.join("debug").join("lb-ctl")
}

/// PATH plus the sbin dirs: the namespace tests run sysctl, ethtool, tcpdump and bpftool,
/// and a non-login root shell or CI may not have them on PATH.
fn path_with_sbin() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    for sbin in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|d| d == Path::new(sbin)) {
            dirs.push(PathBuf::from(sbin));
        }
    }
    std::env::join_paths(dirs).expect("PATH entries contain no ':'")
}

fn build_lb_ctl() -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "lb-ctl"]).current_dir(root_dir());
    run_status(&mut cmd)?;
    let path = lb_ctl_path();
    anyhow::ensure!(
        path.is_file(),
        "cargo build -p lb-ctl succeeded but {} does not exist",
        path.display()
    );
    Ok(path)
}

/// One stage of `cargo xtask test`, for the closing summary.
struct Stage {
    name: &'static str,
    result: anyhow::Result<()>,
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    let mut stages = Vec::new();
    let setup = setup::run();
    let setup_ok = setup.is_ok();
    stages.push(Stage {
        name: "setup",
        result: setup,
    });
    if setup_ok {
        // Leftovers of aborted runs (namespaces, pins) would collide with or confuse this run.
        match lb_tests::cleanup::remove_stale() {
            Ok(removed) => {
                for what in &removed {
                    println!("removed stale: {what}");
                }
            }
            Err(e) => println!("warning: removing stale test leftovers: {e:#}"),
        }
        let build = build_lb_ctl();
        let lb_ctl = build.as_ref().ok().cloned();
        stages.push(Stage {
            name: "build lb-ctl",
            result: build.map(|_| ()),
        });
        if let Some(lb_ctl) = lb_ctl {
            // lb-ebpf is no_std/nightly-only (built by lb-ctl's build.rs); lb-tests needs root.
            let mut unit = cargo();
            // --no-fail-fast: one failing test binary must not hide the others' results.
            unit.args([
                "test",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "lb-tests",
                "--exclude",
                "lb-ebpf",
            ])
            .current_dir(root_dir());
            stages.push(Stage {
                name: "unit tests",
                result: run_status(&mut unit),
            });

            let mut ns = cargo();
            ns.args([
                "test",
                "--no-fail-fast",
                "-p",
                "lb-tests",
                "--",
                "--test-threads=1",
            ])
            .args(extra)
            .env("LB_CTL", &lb_ctl)
            .env("PATH", path_with_sbin())
            .env("RUST_BACKTRACE", "1")
            .current_dir(root_dir());
            stages.push(Stage {
                name: "namespace tests (lb-tests)",
                result: run_status(&mut ns),
            });
        }
    }

    let failed = summary(&stages);
    anyhow::ensure!(failed.is_empty(), "test failed in: {}", failed.join(", "));
    Ok(())
}

/// Prints each stage's result; returns the names of those that failed.
fn summary(stages: &[Stage]) -> Vec<&'static str> {
    println!();
    println!("summary:");
    let mut failed = Vec::new();
    for stage in stages {
        match &stage.result {
            Ok(()) => println!("  ok:     {}", stage.name),
            Err(e) => {
                println!("  FAILED: {}: {e:#}", stage.name);
                failed.push(stage.name);
            }
        }
    }
    failed
}

fn fuzz(
    packets: u64,
    seconds: u64,
    seed: Option<&str>,
    requests: u64,
    configs: u64,
) -> anyhow::Result<()> {
    if let Some(s) = seed {
        let s = s.trim();
        let ok = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).is_ok(),
            None => s.parse::<u64>().is_ok(),
        };
        anyhow::ensure!(ok, "--seed {s:?}: not a decimal or 0x-hex number");
    }
    setup::run()?;
    let lb_ctl = build_lb_ctl()?;
    // Each run prints its seed, counts and violations by class; the tests are the fuzzers,
    // with their bounds raised through the environment.
    let run = |name: &'static str, args: &[&str], env: &[(&str, String)]| {
        let mut cmd = cargo();
        cmd.args(["test"])
            .args(args)
            .args(["--", "--test-threads=1", "--nocapture"])
            .env("LB_CTL", &lb_ctl)
            .env("PATH", path_with_sbin())
            .current_dir(root_dir());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(s) = seed {
            cmd.env("LB_FUZZ_SEED", s);
        }
        Stage {
            name,
            result: run_status(&mut cmd),
        }
    };
    let stages = [
        // Optimised: the generator and the checker, not the kernel, bound the rate in debug.
        run(
            "packets (lb_xdp, lb_decap)",
            &["--release", "-p", "lb-tests", "--test", "fuzz_packets"],
            &[
                ("LB_FUZZ_PACKETS", packets.to_string()),
                ("LB_FUZZ_SECONDS", seconds.to_string()),
            ],
        ),
        run(
            "IPv6 packets (lb_xdp6, lb_decap)",
            &["--release", "-p", "lb-tests", "--test", "fuzz_packets6"],
            &[
                ("LB_FUZZ_PACKETS", packets.to_string()),
                ("LB_FUZZ_SECONDS", seconds.to_string()),
            ],
        ),
        run(
            "control socket",
            &["-p", "lb-tests", "--test", "fuzz_socket"],
            &[("LB_FUZZ_REQUESTS", requests.to_string())],
        ),
        run(
            "TOML",
            &["-p", "lb-ctl", "--test", "fuzz_config"],
            &[("LB_FUZZ_CONFIGS", configs.to_string())],
        ),
    ];
    let failed = summary(&stages);
    anyhow::ensure!(
        failed.is_empty(),
        "fuzzing found violations in: {}",
        failed.join(", ")
    );
    Ok(())
}

fn bench(extra: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    // The scale part times the daemon and the CLI: an optimised build, as deployed, not the
    // debug one the tests use (which lb_tests::lb_ctl() would find otherwise).
    let mut build = cargo();
    build
        .args(["build", "--release", "-p", "lb-ctl"])
        .current_dir(root_dir());
    run_status(&mut build)?;
    let lb_ctl = lb_ctl_path()
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/lb-ctl has a target dir")
        .join("release")
        .join("lb-ctl");
    anyhow::ensure!(
        lb_ctl.is_file(),
        "cargo build --release -p lb-ctl succeeded but {} does not exist",
        lb_ctl.display()
    );
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "lb-tests", "--bench", "bench", "--"])
        .args(extra)
        .current_dir(root_dir())
        .env("LB_CTL", &lb_ctl)
        .env("PATH", path_with_sbin());
    run_status(&mut cmd)
}

fn demo() -> anyhow::Result<()> {
    setup::run()?;
    let lb_ctl = build_lb_ctl()?;
    lb_tests::demo::run(&lb_ctl)
}
