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
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::{BRIDGE, dr_real_server, host, new_switch};
use crate::{Daemon, KeepAlive, Netns, Nginx, Process, TempDir, XdpPass};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const DIR1_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const DIR2_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 4);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The web service on the VIP, as the client asks for it.
pub const URL: &str = "http://192.0.2.100/";
/// Generous: a takeover itself is 3 × advert_int + skew (≈ 3.6 s at priority 100), and a
/// loaded 2-core machine can take several times that.
pub const BOUND: Duration = Duration::from_secs(20);

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

    /// Daemons on dir1 and dir2 with the configs `c1` and `c2`, once dir1 is MASTER and
    /// dir2 BACKUP.
    pub fn start_pair(&self, c1: &Path, c2: &Path) -> (Daemon, Daemon) {
        let d1 = start(&self.dir1, c1);
        let d2 = start(&self.dir2, c2);
        wait_state(&d1, "MASTER", &d2);
        wait_state(&d2, "BACKUP", &d1);
        (d1, d2)
    }

    /// `n` requests through the VIP from the client, each answered; panics with the first
    /// failure.
    pub fn curls_ok(&self, n: usize) {
        self.curls_ok_when(n, "");
    }

    /// [`curls_ok`](Self::curls_ok), naming the moment (`when`) in the panic.
    pub fn curls_ok_when(&self, n: usize, when: &str) {
        let when = if when.is_empty() {
            String::new()
        } else {
            format!("{when}: ")
        };
        for i in 0..n {
            if let Err(e) = crate::curl(&self.client, URL) {
                panic!("{when}request {i} through the VIP failed: {e}");
            }
        }
    }

    /// Which MAC the client sends VIP traffic to (its ARP entry; empty without one).
    pub fn client_vip_mac(&self) -> String {
        let out = self.client.ip(&["neigh", "show", &VIP.to_string()]);
        out.split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .unwrap_or("")
            .to_string()
    }

    /// Waits until the client sends VIP traffic to `ns` (the gratuitous ARPs of a new
    /// MASTER moved it); panics with the entry it still has at [`BOUND`].
    pub fn wait_client_on(&self, ns: &Netns) {
        let mac = ns.mac("eth0");
        wait_for(BOUND, || (self.client_vip_mac() == mac).then_some(())).unwrap_or_else(|| {
            panic!(
                "client's ARP entry for the VIP still {}",
                self.client_vip_mac()
            )
        });
    }

    /// `n` long-lived connections from the client to the VIP's port 80, each having had one
    /// answered request.
    pub fn open(&self, n: usize) -> Vec<KeepAlive> {
        let vip: SocketAddr = (VIP, 80).into();
        (0..n)
            .map(|i| {
                let mut k = KeepAlive::connect(&self.client, vip)
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                k.request()
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                k
            })
            .collect()
    }
}

/// One request on each connection; how many answered (a reset or a timeout is a loss).
pub fn exchange(conns: &mut [KeepAlive]) -> usize {
    conns
        .iter_mut()
        .map(|k| k.request().is_ok())
        .filter(|ok| *ok)
        .count()
}

/// What a director's config says beyond the lab's web service (VIP:80, wrr weights 2 and 1
/// on rs1 and rs2) and its VRRP instance `VI_1` (vrid 51, PASS 1111, advert_int 1).
pub struct DirectorOpts<'a> {
    pub state: &'a str,
    pub priority: u8,
    pub nopreempt: bool,
    /// Written only when not 0 (the default).
    pub preempt_delay: u32,
    pub scheduler: &'a str,
    /// TOML appended after the instance (`[[sync_daemon]]` tables), or nothing.
    pub sync: &'a str,
    /// Keys of a `[director]` table, written only when not empty.
    pub director: &'a str,
}

impl Default for DirectorOpts<'_> {
    fn default() -> Self {
        DirectorOpts {
            state: "BACKUP",
            priority: 100,
            nopreempt: false,
            preempt_delay: 0,
            scheduler: "wrr",
            sync: "",
            director: "",
        }
    }
}

/// Writes a director's config as `dir/name`; its path.
pub fn director_config(dir: &TempDir, name: &str, o: &DirectorOpts) -> PathBuf {
    let director = if o.director.is_empty() {
        String::new()
    } else {
        format!("\n[director]\n{}\n", o.director)
    };
    let preempt_delay = if o.preempt_delay == 0 {
        String::new()
    } else {
        format!("preempt_delay = {}\n", o.preempt_delay)
    };
    let text = format!(
        r#"{director}
[[service]]
address = "192.0.2.100"
port = 80
scheduler = "{sched}"
  [[service.real_server]]
  address = "192.0.2.11"
  weight = 2
  [[service.real_server]]
  address = "192.0.2.12"
  weight = 1

[[vrrp_instance]]
name = "VI_1"
state = "{state}"
interface = "eth0"
virtual_router_id = 51
priority = {prio}
advert_int = 1
nopreempt = {nopreempt}
{preempt_delay}authentication = {{ auth_type = "PASS", auth_pass = "1111" }}
virtual_ipaddress = ["192.0.2.100/32 dev eth0 label eth0:0"]
{sync}
"#,
        sched = o.scheduler,
        state = o.state,
        prio = o.priority,
        nopreempt = o.nopreempt,
        sync = o.sync,
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An lb-ctl daemon on `ns`'s eth0 with the config at `cfg`.
pub fn start(ns: &Netns, cfg: &Path) -> Daemon {
    Daemon::start(ns, &["eth0"], Some(cfg))
}

/// Seed 003's keepalived file `name` (the fixture `lb-ctl/tests/fixtures/keepalived/NAME`,
/// the tutorial's bytes with its addresses in 198.51.100.0/24) moved onto this lab by plain
/// substitution: the VIP, the two real servers and the interface (`ens33` → `eth0`). Every
/// other byte is kept; panics if an address or the interface was missed.
pub fn seed003_on_lab(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lb-ctl/tests/fixtures/keepalived")
        .join(name);
    let seed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("seed 003 fixture {}: {e}", path.display()));
    let text = seed
        .replace("198.51.100.135", &VIP.to_string())
        .replace("198.51.100.131", "192.0.2.11")
        .replace("198.51.100.132", "192.0.2.12")
        .replace("ens33", "eth0");
    assert!(
        !text.contains("198.51.100.") && !text.contains("ens33"),
        "the substitution missed something:\n{text}"
    );
    text
}

/// `lb-ctl import keepalived CONF -o TOML`, which must succeed; its stderr (the warnings).
pub fn import_keepalived(conf: &Path, toml: &Path) -> String {
    let out = Command::new(crate::lb_ctl())
        .args(["import", "keepalived"])
        .arg(conf)
        .arg("-o")
        .arg(toml)
        .output()
        .expect("run lb-ctl import");
    assert!(out.status.success(), "lb-ctl import failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
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

/// VRRP instance `name` of `d` as `lb-ctl status` shows it; panics without one.
pub fn instance(d: &Daemon, name: &str) -> Value {
    let out = d.ctl_ok(&["status"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["vrrp"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no instance {name}: {v}"))
}

/// Waits until instance `name` of `d` names `master` as the master; its status then.
pub fn wait_master(d: &Daemon, name: &str, master: Ipv4Addr) -> Value {
    match wait_for(BOUND, || {
        let s = instance(d, name);
        (s["master"] == master.to_string()).then_some(s)
    }) {
        Some((_, s)) => s,
        None => panic!(
            "{name}: master not {master} within {BOUND:?}: {}\n{}",
            instance(d, name),
            d.log()
        ),
    }
}

/// [`wait_vrrp_state`] with the lab's [`BOUND`].
pub fn wait_state(d: &Daemon, want: &str, other: &Daemon) -> Duration {
    wait_vrrp_state(d, want, other, BOUND)
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
