//! Scale-out lab (issue 14): three active directors behind a router that spreads the VIP's
//! traffic over them by ECMP, the VIP announced by BIRD on each director (from the table
//! `lb-ctl` keeps) to BIRD on the router, which installs a kernel multipath route.
//!
//! ```text
//!   client 203.0.113.10-29 ── eth1 router 203.0.113.1 / 192.0.2.1 (BIRD, AS 64496,
//!                                   │ merge paths, fib_multipath_hash_policy=1)
//!                                  br0 (switch netns)
//!   dir1 192.0.2.2 ───┤  lb-ctl (DR, mh, sloppy_tcp, [announce] table 100) + BIRD AS 64497
//!   dir2 192.0.2.3 ───┤  the same
//!   dir3 192.0.2.4 ───┤  the same
//!   rs1  192.0.2.11 ──┤  VIP on lo, nginx "rs1", default via the router
//!   rs2  192.0.2.12 ──┘
//! ```
//!
//! Addresses are from the documentation ranges only; AS numbers from RFC 5398's
//! documentation range (64496-64511).
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::lab::{BRIDGE, dr_real_server, host, new_switch};
use crate::{Netns, Nginx, Process, TempDir, XdpPass, veth};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ROUTER_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const ROUTER_AS: u32 = 64496;
pub const DIRECTOR_AS: u32 = 64497;
/// The kernel table the directors' `lb-ctl` fills and their BIRD imports.
pub const TABLE: u32 = 100;
/// BGP hold time in the lab's BIRD configs (keepalive 1 s): the bound on withdrawing the
/// routes of a director whose BIRD dies without a word.
pub const HOLD_TIME: u64 = 3;

pub fn director_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1 + i as u8)
}

pub fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + i as u8)
}

/// BIRD 2 in a namespace, with its config, control socket, pid file and log in a temp dir
/// of its own; killed on Drop.
pub struct Bird {
    proc: Option<Process>,
    dir: TempDir,
    netns: std::path::PathBuf,
}

impl Bird {
    pub fn start(ns: &Netns, config: &str) -> Bird {
        let dir = TempDir::new("bird");
        std::fs::write(dir.join("bird.conf"), config).unwrap();
        let mut b = Bird {
            proc: None,
            dir,
            netns: ns.path(),
        };
        b.launch();
        b
    }

    fn launch(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg(crate::cmd::tool("bird"))
            .arg("-f")
            .arg("-c")
            .arg(d.join("bird.conf"))
            .arg("-s")
            .arg(d.join("bird.ctl"))
            .arg("-P")
            .arg(d.join("bird.pid"));
        self.proc = Some(Process::spawn_logged("bird", cmd, &d.join("bird.log")));
    }

    /// `birdc -s SOCKET ARGS…`: its output (errors included, for a panic message).
    pub fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new(crate::cmd::tool("birdc"))
            .arg("-s")
            .arg(self.dir.join("bird.ctl"))
            .args(args)
            .output()
            .expect("birdc");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: a BIRD that dies without closing its sessions.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGSTOP / SIGCONT: a BIRD that goes silent without closing anything (a hung
    /// process, a cut link): the router must notice by the hold time.
    pub fn freeze(&mut self, frozen: bool) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(if frozen { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.freeze(false);
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }
}

/// The router's BIRD: one eBGP session per director, every route learnt is installed in the
/// main table, equal ones merged into one multipath route.
pub fn router_bird_conf(directors: usize) -> String {
    let mut s = format!(
        "router id {ROUTER_IP};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{\n  merge paths on;\n  ipv4 {{ import none; export all; }};\n}}\n\
         template bgp dirs {{\n  local {ROUTER_IP} as {ROUTER_AS};\n  hold time {HOLD_TIME};\n  \
         keepalive time 1;\n  connect delay time 1;\n  connect retry time 1;\n  \
         error wait time 1, 2;\n  ipv4 {{ import all; export none; }};\n}}\n"
    );
    for i in 1..=directors {
        s += &format!(
            "protocol bgp dir{i} from dirs {{ neighbor {} as {DIRECTOR_AS}; }}\n",
            director_ip(i)
        );
    }
    s
}

/// A director's BIRD: `dist/bird.conf`'s shape with the lab's addresses and short timers.
pub fn director_bird_conf(i: usize) -> String {
    let me = director_ip(i);
    format!(
        "router id {me};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel lbvips {{\n  kernel table {TABLE};\n  learn;\n  scan time 1;\n  \
         ipv4 {{ import where krt_source = 201; export none; }};\n}}\n\
         protocol bgp uplink {{\n  local {me} as {DIRECTOR_AS};\n  neighbor {ROUTER_IP} as {ROUTER_AS};\n  \
         hold time {HOLD_TIME};\n  keepalive time 1;\n  connect delay time 1;\n  \
         connect retry time 1;\n  error wait time 1, 2;\n  \
         ipv4 {{ import none; export where proto = \"lbvips\"; }};\n}}\n"
    )
}

pub struct ScaleLab {
    // Drop order: XDP pins and servers before the namespaces.
    _xdp: Vec<XdpPass>,
    _nginx: Vec<Nginx>,
    pub client: Netns,
    pub router: Netns,
    pub dirs: Vec<Netns>,
    pub rs: Vec<Netns>,
    pub switch: Netns,
    pub clients: usize,
}

impl ScaleLab {
    pub fn new(directors: usize, clients: usize) -> ScaleLab {
        crate::require_root();
        let switch = new_switch(&[BRIDGE]);
        let router = host(&switch, "router", ROUTER_IP);
        let client = crate::lab::new_host_pub("client");
        veth(&router, "eth1", &client, "eth0");
        router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_CLIENT_IP}/24"),
            "dev",
            "eth1",
        ]);
        for i in 0..clients {
            client.ip(&[
                "addr",
                "add",
                &format!("{}/24", client_ip(i)),
                "dev",
                "eth0",
            ]);
        }
        client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &ROUTER_CLIENT_IP.to_string(),
        ]);
        // Native XDP on the directors loses a CHECKSUM_PARTIAL mark (see lab::tx_csum_off):
        // the client's segments are summed in software.
        crate::cmd::check(
            client
                .command(crate::cmd::tool("ethtool"))
                .args(["-K", "eth0", "tx", "off"]),
        );
        router.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.forwarding", "1"),
            // L4 hash: connections from one client address spread too.
            ("net.ipv4.fib_multipath_hash_policy", "1"),
        ]);
        let mut dirs = Vec::new();
        let mut xdp = Vec::new();
        for i in 1..=directors {
            let name = format!("dir{i}");
            let ns = host(&switch, &name, director_ip(i));
            xdp.push(XdpPass::attach(&switch, &name));
            dirs.push(ns);
        }
        let mut rs = Vec::new();
        let mut nginx = Vec::new();
        for i in 1..=2u8 {
            let ns = host(&switch, &format!("rs{i}"), Ipv4Addr::new(192, 0, 2, 10 + i));
            dr_real_server(&ns, VIP);
            ns.ip(&["route", "add", "default", "via", &ROUTER_IP.to_string()]);
            nginx.push(Nginx::start(&ns, &format!("rs{i}")));
            rs.push(ns);
        }
        ScaleLab {
            _xdp: xdp,
            _nginx: nginx,
            client,
            router,
            dirs,
            rs,
            switch,
            clients,
        }
    }

    /// The router's next hops for the VIP (its multipath route), sorted.
    pub fn next_hops(&self) -> Vec<Ipv4Addr> {
        let out = self.router.ip(&["-4", "route", "show", &VIP.to_string()]);
        let mut hops: Vec<Ipv4Addr> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        hops.sort();
        hops.dedup();
        hops
    }
}
