//! Connection synchronisation between directors, in IPVS's sync protocol (version 1,
//! `net/netfilter/ipvs/ip_vs_sync.c`): the MASTER sends the connections its data path opens
//! and the state changes they go through; a BACKUP installs them, so that a takeover finds
//! every connection (whatever the scheduler) already in its table.
//!
//! `SyncConn` is the one shape both halves share: the data path's side
//! (`dataplane::syncdp`: events read from the data path, entries installed into it) and the
//! protocol's side (messages, sockets, roles) speak only in it.

use std::net::IpAddr;

/// `IP_VS_CONN_F_*` (`include/uapi/linux/ip_vs.h`): the bits of `SyncConn::flags`.
pub mod conn_flags {
    /// Forwarding method (`IP_VS_CONN_F_FWD_MASK`) and its values.
    pub const FWD_MASK: u32 = 0x0007;
    pub const MASQ: u32 = 0x0000;
    pub const LOCALNODE: u32 = 0x0001;
    pub const TUNNEL: u32 = 0x0002;
    pub const DROUTE: u32 = 0x0003;
    pub const BYPASS: u32 = 0x0004;
    pub const SYNC: u32 = 0x0020;
    pub const HASHED: u32 = 0x0040;
    pub const NOOUTPUT: u32 = 0x0080;
    pub const INACTIVE: u32 = 0x0100;
    pub const OUT_SEQ: u32 = 0x0200;
    pub const IN_SEQ: u32 = 0x0400;
    pub const SEQ_MASK: u32 = 0x0600;
    pub const NO_CPORT: u32 = 0x0800;
    pub const TEMPLATE: u32 = 0x1000;
    pub const ONE_PACKET: u32 = 0x2000;
}

/// One connection (or persistence template) as a sync message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConn {
    /// IP protocol (6 TCP, 17 UDP).
    pub protocol: u8,
    /// `conn_flags::*` (the forwarding method in the low bits; `TEMPLATE` for a
    /// persistence template, whose `cport` is 0 and whose `caddr` is the client's address
    /// masked with the service's `-M`).
    pub flags: u32,
    /// IPVS's state number: for TCP `lb_common::tcp_state::*` (the same numbering as the
    /// kernel's `IP_VS_TCP_S_*`), for UDP 0 (`IP_VS_UDP_S_NORMAL`).
    pub state: u16,
    /// Ports in host byte order.
    pub cport: u16,
    pub vport: u16,
    pub dport: u16,
    /// The service's firewall mark (0: the service is (vaddr, vport, protocol)).
    pub fwmark: u32,
    /// Seconds the connection has left in its state when it was sent (v1's `timeout`).
    pub timeout: u32,
    /// Client, virtual and real server addresses (all of one family).
    pub caddr: IpAddr,
    pub vaddr: IpAddr,
    pub daddr: IpAddr,
}

impl SyncConn {
    /// Whether this is a persistence template rather than a connection.
    pub fn is_template(&self) -> bool {
        self.flags & conn_flags::TEMPLATE != 0
    }
}

pub mod config;
pub mod datapath;
pub mod engine;
pub mod shell;
pub mod wire;

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use self::{
    config::{DaemonSpec, Mode, Params, Role, SyncConfig},
    engine::{Followed, Roles},
    shell::{Nothing, RoleStatus, RoleThread},
};

/// Where a master's connections come from: the data path's events (new connections, state
/// changes, templates).
pub trait ConnSource: Send + 'static {
    /// Appends what arrived, waiting at most `wait` when nothing has.
    fn read(&mut self, out: &mut Vec<SyncConn>, wait: Duration);
    /// Events read but not sendable (stale: their real server is gone).
    fn lost(&self) -> u64 {
        0
    }
}

/// Where a backup's connections go: entries installed in the data path.
pub trait ConnSink: Send + 'static {
    fn install(&mut self, conns: &[SyncConn]) -> InstallReport;
}

/// What an install did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    pub installed: u64,
    pub updated: u64,
    /// Refused entries by reason (no such service, no such real server, table full, …).
    pub refused: BTreeMap<String, u64>,
}

/// How often the daemon looks at a followed VRRP instance's state.
pub const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// A running role: its thread, its parameters, the instance it follows.
type Running<T> = (RoleThread<T>, Params, Option<String>);

/// The sync daemons of one director: at most one master and one backup role, started and
/// stopped by ipvsadm's commands, the config file, or a followed VRRP instance. Owned by the
/// daemon's loop, which polls [`SyncDaemon::follow`] and applies [`SyncDaemon::take_switch`]
/// to the data path.
pub struct SyncDaemon {
    source: Option<Box<dyn ConnSource>>,
    sink: Option<Box<dyn ConnSink>>,
    master: Option<Running<Box<dyn ConnSource>>>,
    backup: Option<Running<Box<dyn ConnSink>>>,
    /// The instance followed and the parameters both roles take from it.
    following: Option<(String, Params)>,
    /// Whether the data path should report connections (the master role runs), and
    /// whether the data path has been told.
    switch: (bool, bool),
}

impl SyncDaemon {
    pub fn new(source: Box<dyn ConnSource>, sink: Box<dyn ConnSink>) -> SyncDaemon {
        SyncDaemon {
            source: Some(source),
            sink: Some(sink),
            master: None,
            backup: None,
            following: None,
            switch: (false, false),
        }
    }

    fn running(&self, role: Role) -> bool {
        match role {
            Role::Master => self.master.is_some(),
            Role::Backup => self.backup.is_some(),
        }
    }

    fn start_role(
        &mut self,
        role: Role,
        p: &Params,
        follows: Option<String>,
    ) -> anyhow::Result<()> {
        if self.running(role) {
            anyhow::bail!("Daemon has already run");
        }
        match role {
            Role::Master => {
                let src = self.source.take().unwrap_or_else(|| Box::new(Nothing));
                match shell::start_master(p, follows.clone(), src) {
                    Ok(t) => {
                        self.master = Some((t, p.clone(), follows));
                        self.switch.0 = true;
                    }
                    Err((e, src)) => {
                        self.source = Some(src);
                        return Err(e);
                    }
                }
            }
            Role::Backup => {
                let sink = self.sink.take().unwrap_or_else(|| Box::new(Nothing));
                match shell::start_backup(p, follows.clone(), sink) {
                    Ok(t) => self.backup = Some((t, p.clone(), follows)),
                    Err((e, sink)) => {
                        self.sink = Some(sink);
                        return Err(e);
                    }
                }
            }
        }
        tracing::info!(
            change = "sync_started",
            role = role.name(),
            interface = %p.interface,
            syncid = p.syncid,
            "sync_started: {} sync daemon on {} (syncid {})",
            role.name(),
            p.interface,
            p.syncid
        );
        Ok(())
    }

    fn stop_role(&mut self, role: Role) -> anyhow::Result<()> {
        let p = match role {
            Role::Master => {
                let (t, p, _) = self.master.take().context_none()?;
                self.switch.0 = false;
                self.source = t.stop();
                p
            }
            Role::Backup => {
                let (t, p, _) = self.backup.take().context_none()?;
                self.sink = t.stop();
                p
            }
        };
        tracing::info!(
            change = "sync_stopped",
            role = role.name(),
            interface = %p.interface,
            "sync_stopped: {} sync daemon on {}",
            role.name(),
            p.interface
        );
        Ok(())
    }

    /// `--start-daemon ROLE`: refused while the roles follow a VRRP instance.
    pub fn start(&mut self, role: Role, p: &Params) -> anyhow::Result<()> {
        if let Some((i, _)) = &self.following {
            anyhow::bail!(
                "the sync daemons follow vrrp_instance {i:?} (sync_daemon in the config file)"
            );
        }
        self.start_role(role, p, None)
    }

    /// `--stop-daemon ROLE`.
    pub fn stop(&mut self, role: Role) -> anyhow::Result<()> {
        if let Some((i, _)) = &self.following {
            anyhow::bail!(
                "the sync daemons follow vrrp_instance {i:?} (sync_daemon in the config file)"
            );
        }
        self.stop_role(role)
    }

    /// Brings the roles to what the config file says, changing only what differs (a role
    /// whose parameters are unchanged keeps running, its counters with it). On an error the
    /// roles are as before, as far as they can be restarted.
    pub fn apply(&mut self, cfg: &SyncConfig) -> anyhow::Result<()> {
        let follow = cfg.daemons.iter().find_map(|d| match &d.mode {
            Mode::Follow(i) => Some((i.clone(), d.params.clone())),
            Mode::Role(_) => None,
        });
        let fixed = |r: Role| {
            cfg.daemons
                .iter()
                .find_map(|d: &DaemonSpec| (d.mode == Mode::Role(r)).then(|| d.params.clone()))
        };
        if follow != self.following {
            for r in [Role::Master, Role::Backup] {
                if self.running(r) {
                    self.stop_role(r)?;
                }
            }
            self.following = follow;
            // The roles start at the next `follow` call, from the instance's state.
            if self.following.is_some() {
                return Ok(());
            }
        } else if self.following.is_some() {
            return Ok(());
        }
        for r in [Role::Master, Role::Backup] {
            let want = fixed(r);
            let have = match r {
                Role::Master => self.master.as_ref().map(|m| m.1.clone()),
                Role::Backup => self.backup.as_ref().map(|b| b.1.clone()),
            };
            if want == have {
                continue;
            }
            if have.is_some() {
                self.stop_role(r)?;
            }
            if let Some(p) = want
                && let Err(e) = self.start_role(r, &p, None)
            {
                if let Some(old) = have {
                    let _ = self.start_role(r, &old, None);
                }
                return Err(e.context(format!("starting the {} sync daemon", r.name())));
            }
        }
        Ok(())
    }

    /// Called often by the daemon with the followed instance's state (`lookup(name)`):
    /// starts and stops the roles as keepalived's `lvs_sync_daemon` does, and restarts a
    /// role whose thread died.
    pub fn follow(&mut self, lookup: impl Fn(&str) -> Followed) {
        for r in [Role::Master, Role::Backup] {
            let died = match r {
                Role::Master => self
                    .master
                    .as_ref()
                    .filter(|m| m.0.died())
                    .map(|(_, p, f)| (p.clone(), f.clone())),
                Role::Backup => self
                    .backup
                    .as_ref()
                    .filter(|b| b.0.died())
                    .map(|(_, p, f)| (p.clone(), f.clone())),
            };
            if let Some((p, f)) = died {
                log::error!("the {} sync thread died; starting it again", r.name());
                let _ = self.stop_role(r);
                if let Err(e) = self.start_role(r, &p, f) {
                    log::error!("starting the {} sync daemon: {e:#}", r.name());
                }
            }
        }
        let Some((inst, p)) = self.following.clone() else {
            return;
        };
        let want: Roles = engine::follow(lookup(&inst));
        // Stop first, so the data path's reader or installer is free for the other role.
        for (r, on) in [(Role::Master, want.master), (Role::Backup, want.backup)] {
            if !on && self.running(r) {
                let _ = self.stop_role(r);
            }
        }
        for (r, on) in [(Role::Master, want.master), (Role::Backup, want.backup)] {
            if on
                && !self.running(r)
                && let Err(e) = self.start_role(r, &p, Some(inst.clone()))
            {
                log::error!("starting the {} sync daemon: {e:#}", r.name());
            }
        }
    }

    /// The data path's "report connections" switch, when it has to change: the caller
    /// calls `set_sync_master(on)`, then [`SyncDaemon::switched`].
    pub fn take_switch(&self) -> Option<bool> {
        (self.switch.0 != self.switch.1).then_some(self.switch.0)
    }

    pub fn switched(&mut self, on: bool) {
        self.switch.1 = on;
    }

    /// Both roles' settings and counters (running ones only).
    pub fn status(&self) -> Vec<RoleStatus> {
        let mut v = Vec::new();
        if let Some(m) = &self.master {
            v.push(m.0.snapshot());
        }
        if let Some(b) = &self.backup {
            v.push(b.0.snapshot());
        }
        v
    }

    /// The followed instance, if any.
    pub fn following(&self) -> Option<&str> {
        self.following.as_ref().map(|f| f.0.as_str())
    }

    /// Stops both roles (at the daemon's stop) and follows nothing any more.
    pub fn shutdown(&mut self) {
        self.following = None;
        for r in [Role::Master, Role::Backup] {
            if self.running(r) {
                let _ = self.stop_role(r);
            }
        }
    }
}

trait ContextNone<T> {
    fn context_none(self) -> anyhow::Result<T>;
}

impl<T> ContextNone<T> for Option<T> {
    /// ipvsadm's message for a role that is not running (`ESRCH`).
    fn context_none(self) -> anyhow::Result<T> {
        self.ok_or_else(|| anyhow::anyhow!("No daemon is running"))
    }
}

/// Checks what a sync config needs from the system before anything is changed: every
/// interface it names exists.
pub fn preflight(cfg: &SyncConfig) -> anyhow::Result<()> {
    for d in &cfg.daemons {
        let name = std::ffi::CString::new(d.params.interface.as_str())?;
        // SAFETY: a NUL-terminated name.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            anyhow::bail!("sync_daemon: no interface {}", d.params.interface);
        }
    }
    Ok(())
}

/// `-L --daemon` in ipvsadm 1.31's layout: one line per running role, master first.
pub fn list_daemon(status: &[RoleStatus]) -> String {
    let mut out = String::new();
    for role in ["master", "backup"] {
        for s in status.iter().filter(|s| s.role == role) {
            out += &format!(
                "{role} sync daemon (mcast={}, syncid={}",
                s.interface, s.syncid
            );
            if s.maxlen != 0 {
                out += &format!(", maxlen={}", s.maxlen);
            }
            if let Some(g) = s.group {
                out += &format!(", group={g}");
            }
            if s.port != 0 {
                out += &format!(", port={}", s.port);
            }
            if s.ttl != 0 {
                out += &format!(", ttl={}", s.ttl);
            }
            out += ")\n";
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        sync::{Arc, Mutex, mpsc},
        time::Instant,
    };

    use super::*;

    /// A data path stand-in: hands out the connections it is given, records installs.
    struct FakeSource(mpsc::Receiver<SyncConn>);
    impl ConnSource for FakeSource {
        fn read(&mut self, out: &mut Vec<SyncConn>, wait: Duration) {
            if let Ok(c) = self.0.recv_timeout(wait) {
                out.push(c);
                out.extend(self.0.try_iter());
            }
        }
        fn lost(&self) -> u64 {
            3
        }
    }
    struct FakeSink(Arc<Mutex<Vec<SyncConn>>>);
    impl ConnSink for FakeSink {
        fn install(&mut self, conns: &[SyncConn]) -> InstallReport {
            self.0.lock().unwrap().extend_from_slice(conns);
            InstallReport {
                installed: conns.len() as u64,
                ..Default::default()
            }
        }
    }

    /// A DR connection of client port `i` (also the engine's tests' connection).
    pub(crate) fn conn(i: u16) -> SyncConn {
        SyncConn {
            protocol: 6,
            flags: conn_flags::DROUTE,
            state: 1,
            cport: i,
            vport: 80,
            dport: 80,
            fwmark: 0,
            timeout: 900,
            caddr: IpAddr::from([203, 0, 113, 1]),
            vaddr: IpAddr::from([198, 51, 100, 100]),
            daddr: IpAddr::from([198, 51, 100, 11]),
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Both roles on the loopback interface, unicast: what the master's source yields is
    /// what the backup installs; garbage and a wrong syncid are counted and install
    /// nothing; the data path switch follows the master role; stop gives the reader back.
    #[test]
    fn master_to_backup_over_loopback() {
        let port = 20000 + (std::process::id() % 20000) as u16;
        let mut p = config::Params::new("lo");
        p.peers = vec![Ipv4Addr::LOCALHOST];
        p.port = port;
        p.syncid = 5;
        let (tx, rx) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut d = SyncDaemon::new(Box::new(FakeSource(rx)), Box::new(FakeSink(got.clone())));
        assert_eq!(d.take_switch(), None);
        d.start(Role::Backup, &p).unwrap();
        d.start(Role::Master, &p).unwrap();
        assert_eq!(
            d.start(Role::Master, &p).unwrap_err().to_string(),
            "Daemon has already run"
        );
        assert_eq!(d.take_switch(), Some(true));
        d.switched(true);
        for i in 0..100 {
            tx.send(conn(i)).unwrap();
        }
        wait_for("100 installed", || got.lock().unwrap().len() == 100);
        let ports: Vec<u16> = got.lock().unwrap().iter().map(|c| c.cport).collect();
        assert_eq!(ports, (0..100).collect::<Vec<_>>());
        // Garbage, a truncated message, another syncid: counted, nothing installed.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = ("127.0.0.1", port);
        s.send_to(b"\x00\x05\x00\x09garbage", to).unwrap();
        let good = wire::encode(5, &[conn(500)]);
        s.send_to(&good[..20], to).unwrap();
        s.send_to(&wire::encode(6, &[conn(501)]), to).unwrap();
        wait_for("three counted", || {
            let b = d.status().into_iter().find(|s| s.role == "backup").unwrap();
            b.malformed.values().sum::<u64>() == 2 && b.wrong_syncid == 1
        });
        let st = d.status();
        let (m, b) = (&st[0], &st[1]);
        assert_eq!(
            (m.role.as_str(), m.conns_sent, m.stale_events),
            ("master", 100, 3),
            "{m:?}"
        );
        assert_eq!((b.conns_received, b.installed), (100, 100), "{b:?}");
        assert_eq!(b.malformed.get("bad_size"), Some(&2), "{b:?}");
        assert_eq!(got.lock().unwrap().len(), 100);
        // -L --daemon, ipvsadm's layout (unicast: no group).
        assert_eq!(
            list_daemon(&st),
            format!(
                "master sync daemon (mcast=lo, syncid=5, maxlen=1472, port={port}, ttl=1)\n\
                 backup sync daemon (mcast=lo, syncid=5, maxlen={}, port={port}, ttl=1)\n",
                b.maxlen
            )
        );
        d.stop(Role::Master).unwrap();
        assert_eq!(
            d.stop(Role::Master).unwrap_err().to_string(),
            "No daemon is running"
        );
        assert_eq!(d.take_switch(), Some(false));
        d.switched(false);
        // The reader came back: a new master sends again.
        d.start(Role::Master, &p).unwrap();
        tx.send(conn(1000)).unwrap();
        wait_for("the second master's connection", || {
            got.lock().unwrap().len() == 101
        });
        d.shutdown();
        assert!(d.status().is_empty());
    }

    /// keepalived's lvs_sync_daemon: roles follow the instance; the switch follows the
    /// master role.
    #[test]
    fn roles_follow_a_vrrp_instance() {
        let port = 40000 + (std::process::id() % 20000) as u16;
        let mut p = config::Params::new("lo");
        p.peers = vec![Ipv4Addr::LOCALHOST];
        p.port = port;
        let (_tx, rx) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut d = SyncDaemon::new(Box::new(FakeSource(rx)), Box::new(FakeSink(got)));
        let cfg = SyncConfig {
            daemons: vec![DaemonSpec {
                mode: Mode::Follow("VI_1".into()),
                params: p.clone(),
            }],
        };
        d.apply(&cfg).unwrap();
        assert!(
            d.status().is_empty(),
            "nothing runs before the instance's state is known"
        );
        let roles = |d: &SyncDaemon| {
            d.status()
                .iter()
                .map(|s| s.role.clone())
                .collect::<Vec<_>>()
        };
        d.follow(|_| Followed::NotMaster);
        assert_eq!(roles(&d), ["backup"]);
        assert_eq!(d.take_switch(), None);
        d.follow(|n| {
            if n == "VI_1" {
                Followed::Master
            } else {
                Followed::Missing
            }
        });
        assert_eq!(roles(&d), ["master"]);
        assert_eq!(d.status()[0].follows.as_deref(), Some("VI_1"));
        assert_eq!(d.take_switch(), Some(true));
        d.switched(true);
        assert!(
            d.start(Role::Backup, &p).is_err(),
            "CLI start refused while following"
        );
        d.follow(|_| Followed::NotMaster);
        assert_eq!(roles(&d), ["backup"]);
        assert_eq!(d.take_switch(), Some(false));
        // A reload that drops the sync_daemon stops everything.
        d.apply(&SyncConfig::default()).unwrap();
        d.follow(|_| Followed::Master);
        assert!(d.status().is_empty());
    }
}
