//! Two directors on one segment for the high-availability tests: a VRRP pair (or one
//! director and a keepalived peer) in front of DR real servers, a client, and a spare host
//! for a third party (keepalived, or a sender of forged adverts).
//!
//! ```text
//!   client 192.0.2.10 ──┐
//!   dir1   192.0.2.2  ──┤  br0 in the switch netns; the VIP 192.0.2.100 is on no host
//!   dir2   192.0.2.3  ──┤  until VRRP puts it on the MASTER's eth0
//!   peer   192.0.2.4  ──┤  keepalived, or forged adverts
//!   rs1    192.0.2.11 ──┤  VIP on lo, arp_ignore/arp_announce, nginx answering "rs1"
//!   rs2    192.0.2.12 ──┘
//! ```
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab::{BRIDGE, dr_real_server, host, new_switch};
use crate::{Netns, Nginx, Process, TempDir, XdpPass};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const DIR1_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const DIR2_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 4);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

pub struct HaLab {
    // Drop order: XDP pins and servers before the namespaces.
    _xdp: Vec<XdpPass>,
    _nginx: Vec<Nginx>,
    pub client: Netns,
    pub dir1: Netns,
    pub dir2: Netns,
    pub peer: Netns,
    _rs: Vec<Netns>,
    pub switch: Netns,
}

impl HaLab {
    pub fn new() -> HaLab {
        crate::require_root();
        let switch = new_switch(&[BRIDGE]);
        let client = host(&switch, "client", CLIENT_IP);
        let dir1 = host(&switch, "dir1", DIR1_IP);
        let dir2 = host(&switch, "dir2", DIR2_IP);
        let peer = host(&switch, "peer", PEER_IP);
        let mut rs = Vec::new();
        let mut nginx = Vec::new();
        for i in 1..=2u8 {
            let ns = host(&switch, &format!("rs{i}"), Ipv4Addr::new(192, 0, 2, 10 + i));
            dr_real_server(&ns, VIP);
            nginx.push(Nginx::start(&ns, &format!("rs{i}")));
            rs.push(ns);
        }
        // The balancers' XDP_TX frames need an XDP program on the switch-side peer.
        let xdp = vec![
            XdpPass::attach(&switch, "dir1"),
            XdpPass::attach(&switch, "dir2"),
        ];
        HaLab {
            _xdp: xdp,
            _nginx: nginx,
            client,
            dir1,
            dir2,
            peer,
            _rs: rs,
            switch,
        }
    }

    /// Whether `ns` has the VIP on eth0.
    pub fn has_vip(ns: &Netns) -> bool {
        ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
            .contains(&format!("inet {VIP}/32"))
    }
}

impl Default for HaLab {
    fn default() -> Self {
        Self::new()
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `bound`; the elapsed time and
/// the value, or `None` at the bound.
pub fn wait_for<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> Option<(Duration, T)> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((start.elapsed(), v));
        }
        if start.elapsed() > bound {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// keepalived (Debian's) running only VRRP (`--vrrp`, no IPVS needed) in a namespace, with
/// its config, pid files and log in a temp dir of its own; killed on Drop.
pub struct Keepalived {
    proc: Option<Process>,
    dir: TempDir,
    netns: PathBuf,
}

impl Keepalived {
    pub fn start(ns: &Netns, config: &str) -> Keepalived {
        let dir = TempDir::new("keepalived");
        std::fs::write(dir.join("keepalived.conf"), config).unwrap();
        let mut k = Keepalived {
            proc: None,
            dir,
            netns: ns.path(),
        };
        k.launch();
        k
    }

    fn launch(&mut self) {
        let d = self.dir.path();
        // A killed keepalived leaves its pid files, and its VRRP child may linger as a zombie
        // no one reaps here: keepalived would take that for a running daemon and refuse.
        let _ = std::fs::remove_file(d.join("keepalived.pid"));
        let _ = std::fs::remove_file(d.join("vrrp.pid"));
        let mut cmd = Command::new("nsenter");
        // Its own process group, so that a kill reaches the parent and its VRRP child at
        // once: killed one by one, the child would see its parent die and leave gracefully
        // (a priority-0 advert), which is not the death the tests mean.
        cmd.process_group(0);
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg(crate::cmd::tool("keepalived"))
            .args(["--vrrp", "--dont-fork", "--log-console", "--log-detail"])
            .arg("--use-file")
            .arg(d.join("keepalived.conf"))
            .arg("--pid")
            .arg(d.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(d.join("vrrp.pid"));
        self.proc = Some(Process::spawn_logged(
            "keepalived",
            cmd,
            &d.join("keepalived.log"),
        ));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    /// SIGKILL to keepalived and its VRRP child at once (a dead peer: no priority 0).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SAFETY: kill(2) on the process group our keepalived leads.
            unsafe { libc::kill(-(p.pid() as i32), libc::SIGKILL) };
            p.kill();
        }
        self.kill_child();
    }

    fn kill_child(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("vrrp.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: kill(2) on a pid we read from our own keepalived's pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
        self.kill_child();
    }
}

/// The daemon's first VRRP instance as `lb-ctl status` shows it.
pub fn vrrp_status(d: &crate::Daemon) -> serde_json::Value {
    d.status()["vrrp"][0].clone()
}

/// That instance's state (`MASTER`, `BACKUP`, …; `?` without one).
pub fn vrrp_state(d: &crate::Daemon) -> String {
    vrrp_status(d)["state"].as_str().unwrap_or("?").to_string()
}

/// Waits until `d` is in `want`; the time it took. Panics with both daemons' logs at `bound`.
pub fn wait_vrrp_state(
    d: &crate::Daemon,
    want: &str,
    other: &crate::Daemon,
    bound: Duration,
) -> Duration {
    match wait_for(bound, || (vrrp_state(d) == want).then_some(())) {
        Some((t, ())) => t,
        None => panic!(
            "not {want} within {bound:?}: {}\n--- this daemon ---\n{}\n--- the other ---\n{}",
            vrrp_status(d),
            d.log(),
            other.log()
        ),
    }
}
