//! Harness for the root-only namespace tests and the demo: RAII guards for network namespaces,
//! links, processes, XDP pass programs, the lb-ctl daemon, nginx real servers and clients.
//!
//! Every guard cleans up in `Drop`, also while a test panics. Names are unique per process
//! (`lbt-<pid in hex>-<counter>-…`), so parallel or aborted runs don't collide, and
//! [`cleanup::remove_stale`] can tell leftovers of dead runs from live ones.
pub mod cleanup;
pub mod client;
pub mod cmd;
pub mod daemon;
pub mod demo;
pub mod fuzz;
pub mod ha;
pub mod lab;
pub mod lab6;
pub mod netns;
pub mod nginx;
pub mod packet;
pub mod process;
pub mod routed;
pub mod scaleout;
pub mod tempdir;
pub mod udp;
pub mod v6;
pub mod xdp;
pub mod xdp_run;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

pub use client::{KeepAlive, curl, curl_from};
pub use daemon::{Daemon, DaemonOpts};
pub use lab::{
    DrLab, DrLabOpts, MixedLab, NatLab, RealServer, RealServerMode, RealServerSetup, TunLab,
};
pub use netns::{Netns, veth};
pub use nginx::Nginx;
pub use process::Process;
pub use tempdir::TempDir;
pub use udp::{UdpEcho, udp_query};
pub use xdp::XdpPass;

/// Prefix of everything this harness creates (netns names, pin dirs, temp dirs).
pub const PREFIX: &str = "lbt-";

/// Where bpffs is (to be) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Short id of this run: the process id in hex. Stale-leftover cleanup parses it back.
pub fn run_id() -> String {
    format!("{:x}", std::process::id())
}

/// A fresh `lbt-<run id>-<n>-<label>` name, unique within the machine while this process lives.
pub fn unique_name(label: &str) -> String {
    let n = next_id();
    if label.is_empty() {
        format!("{PREFIX}{}-{n}", run_id())
    } else {
        format!("{PREFIX}{}-{n}-{label}", run_id())
    }
}

/// A number not returned before in this process (for names inside this run's own dirs).
pub fn next_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// This run's directory for pins: `/sys/fs/bpf/lbt-<run id>` (not created here).
pub fn pin_root() -> PathBuf {
    Path::new(BPFFS).join(format!("{PREFIX}{}", run_id()))
}

/// A live user of [`pin_root`]: the directory exists while any is alive and is removed (if
/// empty) when the last one goes. Counted under a lock, so one test's teardown cannot remove
/// the directory under another test that is about to pin into it.
pub(crate) struct PinRootUse;

static PIN_ROOT_USERS: Mutex<usize> = Mutex::new(0);

impl PinRootUse {
    pub(crate) fn new() -> PinRootUse {
        ensure_bpffs();
        let mut users = PIN_ROOT_USERS.lock().unwrap_or_else(|e| e.into_inner());
        let root = pin_root();
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("creating pin dir {}: {e}", root.display()));
        *users += 1;
        PinRootUse
    }
}

impl Drop for PinRootUse {
    fn drop(&mut self) {
        let mut users = PIN_ROOT_USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users -= 1;
        if *users == 0 {
            let root = pin_root();
            if std::fs::read_dir(&root).is_ok_and(|mut d| d.next().is_none()) {
                let _ = std::fs::remove_dir(&root);
            }
        }
    }
}

/// A directory of this run's pin root for one loaded data path (`Dataplane::open`'s
/// `pin_dir`): removed with everything in it on drop, also while panicking, and the pin root
/// with it once nothing else uses it. Shut the data path down first.
pub struct PinDir {
    path: PathBuf,
    _root: PinRootUse,
}

impl PinDir {
    /// `<pin root>/<name>-<n>`, unique in this run.
    pub fn new(name: &str) -> PinDir {
        let _root = PinRootUse::new();
        PinDir {
            path: pin_root().join(format!("{name}-{}", next_id())),
            _root,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Panics unless running as root: the namespace tests create netns, veths and XDP programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (network namespaces, XDP); run it with `cargo xtask test`");
    }
}

/// Whether bpffs is mounted at /sys/fs/bpf in this mount namespace.
pub fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
        })
    })
}

/// Mounts bpffs at /sys/fs/bpf unless it is (a fresh boot here has it unmounted).
pub fn ensure_bpffs() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !bpffs_mounted() {
        cmd::check(std::process::Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]));
    }
}

static LB_CTL_OVERRIDE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Makes [`lb_ctl`] return `path` from now on (the demo gets the path from xtask).
pub fn set_lb_ctl(path: &Path) {
    *LB_CTL_OVERRIDE.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.to_path_buf());
}

/// The lb-ctl binary: [`set_lb_ctl`], else env `LB_CTL`, else `target/debug/lb-ctl` found
/// by walking up from the current executable. Panics if there is none.
pub fn lb_ctl() -> PathBuf {
    if let Some(p) = LB_CTL_OVERRIDE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return p;
    }
    if let Some(p) = std::env::var_os("LB_CTL") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "LB_CTL={} does not exist: build lb-ctl first (cargo xtask test does)",
            p.display()
        );
        return std::fs::canonicalize(&p).unwrap_or(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Test binaries live in target/debug/deps, xtask in target/debug.
    for dir in exe.ancestors().skip(1) {
        let candidate = match dir.file_name().and_then(|n| n.to_str()) {
            Some("target") => dir.join("debug").join("lb-ctl"),
            Some("debug") => dir.join("lb-ctl"),
            _ => continue,
        };
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "no lb-ctl binary (LB_CTL unset, none in target/debug above {}): build lb-ctl first (cargo xtask test does)",
        exe.display()
    );
}
