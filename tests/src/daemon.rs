//! The lb-ctl daemon run in a namespace (guard), and its CLI talking to it over the socket.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use crate::cmd::{output, report};
use crate::{Netns, PinRootUse, Process, TempDir};

/// How long a daemon gets to answer `-Ln` after start, and to exit after SIGTERM. Bounds,
/// not expectations: a healthy daemon needs far less.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to start the daemon with, beyond the namespace.
#[derive(Clone, Debug, Default)]
pub struct DaemonOpts {
    /// `-i IFACE` for each (the interfaces the balancer attaches to).
    pub ifaces: Vec<String>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// Appended to the `daemon` command line as they are.
    pub extra_args: Vec<String>,
}

/// `nsenter --net=/run/netns/NS lb-ctl daemon -i … --socket SOCK --pin-path PIN`, output in a
/// log. Drop: SIGTERM, bounded wait, SIGKILL; then removes the pin dir if the daemon left it.
pub struct Daemon {
    proc: Option<Process>,
    lb_ctl: PathBuf,
    netns: String,
    netns_path: PathBuf,
    opts: DaemonOpts,
    socket: PathBuf,
    pin_path: PathBuf,
    log: PathBuf,
    /// How long `launch` waits for the socket to answer (see `set_ready_timeout`).
    ready_timeout: Duration,
    _dir: TempDir,
    _root: PinRootUse,
}

impl Daemon {
    /// Starts the daemon on `ifaces` in `ns`, optionally with a config file, and waits until
    /// its socket answers `-Ln`.
    pub fn start(ns: &Netns, ifaces: &[&str], config: Option<&Path>) -> Daemon {
        Daemon::start_with(
            ns,
            DaemonOpts {
                ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
                config: config.map(Path::to_path_buf),
                extra_args: Vec::new(),
            },
        )
    }

    pub fn start_with(ns: &Netns, opts: DaemonOpts) -> Daemon {
        let lb_ctl = crate::lb_ctl();
        let dir = TempDir::new("daemon");
        let root = PinRootUse::new();
        let mut d = Daemon {
            proc: None,
            lb_ctl,
            netns: ns.name().to_string(),
            netns_path: ns.path(),
            opts,
            socket: dir.join("lb-ctl.sock"),
            pin_path: crate::pin_root().join(format!("daemon-{}", crate::next_id())),
            log: dir.join("daemon.log"),
            ready_timeout: READY_TIMEOUT,
            _dir: dir,
            _root: root,
        };
        d.launch();
        d
    }

    fn launch(&mut self) {
        // nsenter, not `ip netns exec`: the daemon's pins must land in the host's bpffs.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path.display()))
            .arg(&self.lb_ctl)
            .arg("daemon");
        for iface in &self.opts.ifaces {
            cmd.args(["-i", iface]);
        }
        if let Some(config) = &self.opts.config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--pin-path")
            .arg(&self.pin_path)
            .args(&self.opts.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            );
        let label = format!("lb-ctl daemon in {}", self.netns);
        self.proc = Some(Process::spawn_logged(&label, cmd, &self.log));
        self.wait_ready();
    }

    /// Polls `-Ln` until it succeeds; panics with the daemon's log if it exits or never does.
    fn wait_ready(&mut self) {
        let ready_timeout = self.ready_timeout;
        let deadline = Instant::now() + ready_timeout;
        loop {
            let proc = self.proc.as_mut().expect("daemon started");
            if let Some(status) = proc.try_status() {
                let cmdline = proc.cmdline().to_string();
                panic!(
                    "lb-ctl daemon exited before it was ready ({status}): `{cmdline}`\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            let mut cmd = self.ctl_command(&["-Ln"]);
            let out = output(&mut cmd);
            if out.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "lb-ctl daemon not ready after {ready_timeout:?}; last try: {}\n--- daemon log ---\n{}",
                    report(&cmd, &out),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's `--pin-path`.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// The netns it runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Process::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Process::is_running)
    }

    /// `lb-ctl --socket SOCK args…`, ready to run (from the root netns: it only talks to the
    /// socket).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.lb_ctl);
        cmd.arg("--socket").arg(&self.socket).args(args);
        cmd
    }

    /// Runs `lb-ctl --socket SOCK args…`, whatever its exit status.
    pub fn ctl(&self, args: &[&str]) -> Output {
        output(&mut self.ctl_command(args))
    }

    /// `lb-ctl status`, parsed; panics with what it printed if that is not JSON.
    pub fn status(&self) -> serde_json::Value {
        let out = self.ctl_ok(&["status"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
    }

    /// The `real_servers` entry of `lb-ctl status` for `addr`.
    pub fn real_server(&self, addr: &str) -> serde_json::Value {
        real_server_entry(&self.status(), addr)
    }

    /// Polls `status` every 200 ms until `done` holds for `addr`'s entry; panics with the
    /// last entry and the daemon's log after 30 s (route notifications are handled on the
    /// daemon's next 1 s tick: a bound, not an expectation).
    pub fn wait_real_server(
        &self,
        addr: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) {
        let mut last = serde_json::Value::Null;
        for _ in 0..150 {
            last = self.real_server(addr);
            if done(&last) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "real server {addr} never {what}; last status entry: {last}\n--- daemon log ---\n{}",
            self.log()
        );
    }

    /// Runs `lb-ctl --socket SOCK args…`; panics with its output and the daemon's log unless
    /// it succeeds. Returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let mut cmd = self.ctl_command(args);
        let out = output(&mut cmd);
        if !out.status.success() {
            panic!(
                "lb-ctl failed: {}\n--- daemon log ---\n{}",
                report(&cmd, &out),
                self.log()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the daemon printed (all runs, if restarted).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGTERM, bounded wait, SIGKILL. Leaves the pins (a restart should find them).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.proc.take().map(|mut p| p.stop(STOP_TIMEOUT))
    }

    /// SIGKILL (no cleanup by the daemon: pins, links and a half-done sync stay as they are).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut().map(Process::kill)
    }

    /// A bound on how long later (re)starts wait for the socket to answer (adopting a large
    /// table in a debug build takes longer than the default allows).
    pub fn set_ready_timeout(&mut self, t: Duration) {
        self.ready_timeout = t;
    }

    /// The options the next `restart` uses (a restart without `--config`, say).
    pub fn set_opts(&mut self, opts: DaemonOpts) {
        self.opts = opts;
    }

    /// Runs a second `lb-ctl daemon` in the same netns on this daemon's pin path, with
    /// `socket` and `ifaces`, and waits (bounded) for it to exit. Returns its exit status and
    /// everything it printed. Panics, after killing it, if it keeps running.
    pub fn run_second(&self, socket: &Path, ifaces: &[&str]) -> (ExitStatus, String) {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path.display()))
            .arg(&self.lb_ctl)
            .arg("daemon");
        for iface in ifaces {
            cmd.args(["-i", iface]);
        }
        cmd.arg("--socket")
            .arg(socket)
            .arg("--pin-path")
            .arg(&self.pin_path)
            .env("RUST_LOG", "info");
        let mut p = Process::spawn("second-daemon", cmd);
        match p.wait_timeout(READY_TIMEOUT) {
            Some(status) => (status, p.log()),
            None => {
                p.kill();
                panic!(
                    "a second daemon on {} kept running: {}\n--- first daemon's log ---\n{}",
                    self.pin_path.display(),
                    p.log(),
                    self.log()
                );
            }
        }
    }

    /// Stops the daemon and starts it again with the same options, socket and pin path.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The Process guard prints the daemon's log if a test is panicking.
        if let Some(mut p) = self.proc.take() {
            p.stop(STOP_TIMEOUT);
        }
        let removed = if self.pin_path.is_dir() {
            std::fs::remove_dir_all(&self.pin_path)
        } else {
            std::fs::remove_file(&self.pin_path)
        };
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "warning: removing daemon pins {}: {e}",
                self.pin_path.display()
            );
        }
        // `_root` then removes this run's pin dir if this was its last user.
    }
}

/// The `real_servers` entry of a parsed `lb-ctl status` for `addr`; panics without one.
pub fn real_server_entry(st: &serde_json::Value, addr: &str) -> serde_json::Value {
    st["real_servers"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no real_servers: {st}"))
        .iter()
        .find(|r| r["address"] == addr)
        .unwrap_or_else(|| panic!("status lists no real server {addr}: {st}"))
        .clone()
}
