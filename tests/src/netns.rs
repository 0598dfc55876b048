//! Network namespace guard (`ip netns add`/`del`) and veth links between namespaces.
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::Process;
use crate::cmd::{check, describe, output, report, try_check};

/// A named network namespace (`/run/netns/lbt-…`) with `lo` up. Drop kills every process
/// still inside it (whoever started them) and deletes it, which also destroys its veths.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lbt-<run id>-<n>-<label>` and brings `lo` up (the VIP on `lo` of a DR real
    /// server and every `127.0.0.1` check need it).
    pub fn new(label: &str) -> Netns {
        crate::require_root();
        let name = crate::unique_name(label);
        crate::cmd::ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "dev", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip netns exec NAME program`: runs in the namespace with a private mount namespace
    /// (its own /sys; host bpffs pins are not visible there). Add args before running.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `nsenter --net=/run/netns/NAME program`: enters only the network namespace, so the
    /// host's /sys/fs/bpf and its pins stay visible (what lb-ctl needs).
    pub fn nsenter(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg(program);
        cmd
    }

    fn command_for(&self, args: &[&str]) -> Command {
        let (program, rest) = args
            .split_first()
            .unwrap_or_else(|| panic!("no command given to run in netns {}", self.name));
        let mut cmd = self.command(program);
        cmd.args(rest);
        cmd
    }

    /// Runs `args` in the namespace to completion, whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        output(&mut self.command_for(args))
    }

    /// Runs `args` in the namespace; panics with command, status and stderr unless it
    /// succeeds. Returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        check(&mut self.command_for(args))
    }

    /// Like [`Netns::run`] but returns the failure report instead of panicking.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        try_check(&mut self.command_for(args))
    }

    /// `ip -n NAME args…` (faster than `ip netns exec NAME ip …`); panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// The MAC address of `iface`, as `ip` prints it (`aa:bb:cc:dd:ee:ff`).
    pub fn mac(&self, iface: &str) -> String {
        let out = self.ip(&["-br", "link", "show", "dev", iface]);
        // `eth0@if5  UP  aa:bb:cc:dd:ee:ff <…>`
        out.split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("no MAC in `ip -br link show dev {iface}`: {out:?}"))
            .to_string()
    }

    /// `ip neigh add IP lladdr MAC dev DEV nud permanent`: a neighbour that never expires.
    pub fn neigh_permanent(&self, ip: &str, lladdr: &str, dev: &str) {
        self.ip(&[
            "neigh",
            "add",
            ip,
            "lladdr",
            lladdr,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }

    /// Starts a long-running `args` in the namespace (`ip netns exec`, which execs it, so
    /// the guard's pid is the program's), output captured for diagnostics.
    pub fn spawn(&self, args: &[&str]) -> Process {
        let cmd = self.command_for(args);
        Process::spawn(args[0].rsplit('/').next().unwrap_or(args[0]), cmd)
    }

    /// Sets one sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.sysctls(&[(key, value)]);
    }

    /// Sets several sysctls with one `sysctl` run.
    pub fn sysctls(&self, pairs: &[(&str, &str)]) {
        let mut cmd = self.command(crate::cmd::tool("sysctl"));
        cmd.arg("-qw");
        for (k, v) in pairs {
            cmd.arg(format!("{k}={v}"));
        }
        check(&mut cmd);
    }

    /// Turns IPv6 off for every interface in the namespace, present and future: no DAD, no
    /// router solicitations or MLD reports to show up in captures and counters.
    pub fn disable_ipv6(&self) {
        self.sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ]);
    }

    /// Runs `f` on a thread that has entered this network namespace (only that thread:
    /// `setns(CLONE_NEWNET)`); sockets it creates stay in the namespace after it returns.
    pub fn enter<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                // SAFETY: setns on a valid namespace fd; it changes only this thread's netns,
                // and the thread ends when `f` returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    panic!(
                        "setns({}, CLONE_NEWNET): {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    );
                }
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Pids of the processes in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "pids", &self.name]);
        match cmd.output() {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Ok(out) => {
                eprintln!("warning: {}", report(&cmd, &out));
                Vec::new()
            }
            Err(e) => {
                eprintln!("warning: cannot start `{}`: {e}", describe(&cmd));
                Vec::new()
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // No panics here: a second panic while a test unwinds would abort the whole run.
        kill_pids(&self.pids());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", &self.name]);
        match cmd.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("warning: {}", report(&cmd, &out)),
            Err(e) => eprintln!("warning: cannot start `{}`: {e}", describe(&cmd)),
        }
    }
}

/// SIGKILLs `pids`, never this process.
pub(crate) fn kill_pids(pids: &[i32]) {
    let me = std::process::id() as i32;
    for &pid in pids {
        if pid > 1 && pid != me {
            // SAFETY: kill(2) with a plain pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A veth pair: `a_name` in `a`, `b_name` in `b`, both up. The pair is created inside `a`
/// with the peer placed straight into `b`, so the root namespace never sees either end.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    a.ip(&[
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", "dev", a_name, "up"]);
    b.ip(&["link", "set", "dev", b_name, "up"]);
}
