//! The thin shell of connection sync: one thread per running role, UDP sockets, counters.
//! Decisions are `engine`'s, bytes are `wire`'s; nothing here blocks forwarding (the data
//! path never waits on this thread: it drops events when its ring is full, and counts them).

use std::{
    collections::BTreeMap,
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};

use super::{
    ConnSink, ConnSource, InstallReport, SyncConn,
    config::{Params, Role},
    engine::Batcher,
    wire,
};

/// How long a role's loop waits at most before it looks at its stop flag again.
const POLL: Duration = Duration::from_millis(50);
/// A backup installs what it has read after this many connections, or when the socket is
/// momentarily empty.
const INSTALL_BATCH: usize = 4096;

/// One role's counters and settings, as `lb-ctl status` and `-L --daemon` show them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleStatus {
    pub role: String,
    pub running: bool,
    pub interface: String,
    pub syncid: u8,
    pub maxlen: usize,
    pub group: Option<Ipv4Addr>,
    pub port: u16,
    pub ttl: u8,
    pub peers: Vec<Ipv4Addr>,
    /// `vrrp_instance` it follows, if any.
    pub follows: Option<String>,
    // Master.
    pub messages_sent: u64,
    pub conns_sent: u64,
    pub send_errors: u64,
    /// Connections dropped by the rate bound (the send queue was full).
    pub rate_drops: u64,
    /// Events the data path could not hand over (its ring was full; the daemon fills it in
    /// from the data path's `sync_dropped` counter).
    pub ring_drops: u64,
    /// Events dropped by the reader as stale (their real server went away meanwhile).
    pub stale_events: u64,
    // Backup.
    pub messages_received: u64,
    pub conns_received: u64,
    pub installed: u64,
    pub updated: u64,
    pub refused: BTreeMap<String, u64>,
    /// Whole messages refused, by kind (`wire::Malformed`).
    pub malformed: BTreeMap<String, u64>,
    /// Single entries left out, by kind (`wire::Skipped`).
    pub skipped: BTreeMap<String, u64>,
    pub wrong_syncid: u64,
    pub unknown_peer: u64,
    pub receive_errors: u64,
    /// Seconds since the Unix epoch of the last message sent or received.
    pub last_message: Option<f64>,
}

impl RoleStatus {
    fn new(role: Role, p: &Params, maxlen: usize, follows: Option<String>) -> RoleStatus {
        RoleStatus {
            role: role.name().into(),
            running: true,
            interface: p.interface.clone(),
            syncid: p.syncid,
            maxlen,
            group: p.peers.is_empty().then_some(p.group),
            port: p.port,
            ttl: p.ttl,
            peers: p.peers.clone(),
            follows,
            ..Default::default()
        }
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An interface's index and MTU (`SIOCGIFMTU`: not /sys, which shows the mount namespace's
/// network namespace, not necessarily ours).
fn link(iface: &str) -> anyhow::Result<(u32, u32)> {
    let name = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        anyhow::bail!("no interface {iface}");
    }
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; the name fits (checked by the index lookup: ≤ 15 bytes).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = b as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFMTU reads the name and writes ifru_mtu of the struct it is given.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    let mtu = if r == 0 {
        // SAFETY: the kernel filled the union's mtu member.
        unsafe { req.ifr_ifru.ifru_mtu as u32 }
    } else {
        1500
    };
    Ok((index, mtu))
}

/// IPVS's `sync_maxlen` for a role: the given one clamped (a backup reads at least 1024), or
/// 1500 − 28 for a master and the interface's MTU (1500..65535) − 28 for a backup.
pub fn maxlen(role: Role, given: Option<u16>, mtu: u32) -> usize {
    let hlen = wire::IPV4_UDP_HEADERS;
    let mtu = match role {
        Role::Backup => (mtu as usize).clamp(1500, 65535),
        Role::Master => 1500,
    };
    let min = if role == Role::Backup { 1024 } else { 1 };
    match given {
        Some(m) => (m as usize).clamp(min, 65535 - hlen),
        None => mtu - hlen,
    }
}

/// The master's socket (`make_send_sock`): UDP out of the interface, multicast TTL, no
/// loopback, never blocking.
fn send_socket(p: &Params) -> anyhow::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context("opening the sync socket")?;
    s.bind_device(Some(p.interface.as_bytes()))
        .with_context(|| format!("binding the sync socket to {}", p.interface))?;
    s.set_multicast_ttl_v4(u32::from(p.ttl))?;
    s.set_ttl_v4(u32::from(p.ttl))?;
    s.set_multicast_loop_v4(false)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The backup's socket (`make_receive_sock`): bound to the group (or any address, for
/// unicast) and port on the interface, member of the group there.
fn receive_socket(p: &Params, index: u32) -> anyhow::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context("opening the sync socket")?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(p.interface.as_bytes()))
        .with_context(|| format!("binding the sync socket to {}", p.interface))?;
    // Bursts of a busy master (hundreds of messages) wait here rather than drop; the size
    // is capped by net.core.rmem_max, so failure is fine.
    let _ = s.set_recv_buffer_size(4 << 20);
    let ip = if p.peers.is_empty() {
        p.group
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    s.bind(&SockAddr::from(SocketAddrV4::new(ip, p.port)))
        .with_context(|| format!("binding the sync socket to {ip}:{}", p.port))?;
    if p.peers.is_empty() {
        s.join_multicast_v4_n(&p.group, &InterfaceIndexOrAddress::Index(index))
            .with_context(|| format!("joining {} on {}", p.group, p.interface))?;
    }
    s.set_read_timeout(Some(POLL))?;
    Ok(s)
}

/// A running role: its thread, told to stop by `stop`, hands back what it borrowed.
pub struct RoleThread<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<T>>,
    pub status: Arc<Mutex<RoleStatus>>,
}

impl<T> RoleThread<T> {
    /// Stops the thread and returns what it held (the data path's reader or installer).
    pub fn stop(mut self) -> Option<T> {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.thread.take().and_then(|t| t.join().ok());
        lock(&self.status).running = false;
        r
    }

    /// Whether the thread ended by itself (it panicked: it holds nothing any more).
    pub fn died(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    pub fn snapshot(&self) -> RoleStatus {
        lock(&self.status).clone()
    }
}

impl<T> Drop for RoleThread<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A started role, or why not with what it was given back.
pub type Started<T> = Result<RoleThread<T>, (anyhow::Error, T)>;

/// Runs a role's `body` (given its status and stop flag) on a thread named `name`; `gone`
/// stands in for what the body held when the thread cannot be spawned.
fn spawn_role<T: Send + 'static>(
    name: &str,
    status: RoleStatus,
    gone: T,
    body: impl FnOnce(Arc<Mutex<RoleStatus>>, Arc<AtomicBool>) -> T + Send + 'static,
) -> Started<T> {
    let status = Arc::new(Mutex::new(status));
    let stop = Arc::new(AtomicBool::new(false));
    let (st, sp) = (status.clone(), stop.clone());
    match std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(st, sp))
    {
        Ok(t) => Ok(RoleThread {
            stop,
            thread: Some(t),
            status,
        }),
        Err(e) => Err((anyhow::anyhow!("starting the sync thread: {e}"), gone)),
    }
}

/// Starts the master role: reads `source`, sends messages. Fails (with `source` back)
/// when the interface or socket cannot be had.
pub fn start_master(
    p: &Params,
    follows: Option<String>,
    mut source: Box<dyn ConnSource>,
) -> Started<Box<dyn ConnSource>> {
    let setup = || -> anyhow::Result<(Socket, usize)> {
        let (_, mtu) = link(&p.interface)?;
        Ok((send_socket(p)?, maxlen(Role::Master, p.maxlen, mtu)))
    };
    let (sock, maxlen) = match setup() {
        Ok(x) => x,
        Err(e) => return Err((e, source)),
    };
    let status = RoleStatus::new(Role::Master, p, maxlen, follows);
    let dests: Vec<SockAddr> = if p.peers.is_empty() {
        vec![SockAddr::from(SocketAddrV4::new(p.group, p.port))]
    } else {
        p.peers
            .iter()
            .map(|a| SockAddr::from(SocketAddrV4::new(*a, p.port)))
            .collect()
    };
    let (syncid, rate) = (p.syncid, p.max_rate);
    // The closure (and the source with it) is gone with a failed spawn.
    spawn_role("sync-master", status, Box::new(Nothing), move |st, sp| {
        // A burst of a tenth of a second's rate may go at once.
        let mut b = Batcher::new(syncid, maxlen, rate, (rate / 10).max(1), Instant::now());
        let mut buf: Vec<SyncConn> = Vec::new();
        while !sp.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = b
                .next_wake(now)
                .map_or(POLL, |t| t.saturating_duration_since(now))
                .min(POLL);
            buf.clear();
            source.read(&mut buf, wait);
            let now = Instant::now();
            for c in &buf {
                b.add(c, now);
            }
            let out = b.due(now);
            let mut s = lock(&st);
            for (msg, n) in out {
                for d in &dests {
                    match sock.send_to(&msg, d) {
                        Ok(_) => {
                            s.messages_sent += 1;
                            s.conns_sent += n as u64;
                            s.last_message = Some(now_unix());
                        }
                        // The link is down, the queue full, no route: counted; the
                        // connections of this message are not sent again (IPVS does
                        // not either: the next state change sends them).
                        Err(_) => s.send_errors += 1,
                    }
                }
            }
            s.rate_drops = b.rate_drops;
            s.stale_events = source.lost();
        }
        source
    })
}

/// Starts the backup role: reads messages, installs what they hold through `sink`.
pub fn start_backup(
    p: &Params,
    follows: Option<String>,
    mut sink: Box<dyn ConnSink>,
) -> Started<Box<dyn ConnSink>> {
    let setup = || -> anyhow::Result<(Socket, usize)> {
        let (index, mtu) = link(&p.interface)?;
        Ok((
            receive_socket(p, index)?,
            maxlen(Role::Backup, p.maxlen, mtu),
        ))
    };
    let (sock, maxlen) = match setup() {
        Ok(x) => x,
        Err(e) => return Err((e, sink)),
    };
    let status = RoleStatus::new(Role::Backup, p, maxlen, follows);
    let (syncid, peers) = (p.syncid, p.peers.clone());
    // The closure (and the sink with it) is gone with a failed spawn.
    spawn_role("sync-backup", status, Box::new(Nothing), move |st, sp| {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 65536];
        let mut pending: Vec<SyncConn> = Vec::new();
        while !sp.load(Ordering::Relaxed) {
            // Block (up to POLL) for the first datagram, then take what is queued
            // without waiting, and install it as one batch.
            let mut flags = 0;
            loop {
                // SAFETY: recv_from_with_flags writes only initialised bytes into buf.
                let r = sock.recv_from_with_flags(&mut buf, flags);
                flags = libc::MSG_DONTWAIT;
                let (n, from) = match r {
                    Ok((n, from)) => (n, from),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(_) => {
                        lock(&st).receive_errors += 1;
                        break;
                    }
                };
                // SAFETY: the first n bytes were written by recv.
                let data: &[u8] =
                    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                let mut s = lock(&st);
                s.messages_received += 1;
                s.last_message = Some(now_unix());
                let src = from.as_socket_ipv4().map(|a| *a.ip());
                if !peers.is_empty() && !src.is_some_and(|a| peers.contains(&a)) {
                    s.unknown_peer += 1;
                    continue;
                }
                if wire::other_syncid(data, syncid) {
                    s.wrong_syncid += 1;
                    continue;
                }
                match wire::decode(data) {
                    Err(k) => *s.malformed.entry(k.name().into()).or_default() += 1,
                    Ok(m) => {
                        for k in &m.skipped {
                            *s.skipped.entry(k.name().into()).or_default() += 1;
                        }
                        s.conns_received += m.conns.len() as u64;
                        pending.extend(m.conns);
                    }
                }
                if pending.len() >= INSTALL_BATCH {
                    break;
                }
            }
            if !pending.is_empty() {
                let r = sink.install(&pending);
                pending.clear();
                let mut s = lock(&st);
                s.installed += r.installed;
                s.updated += r.updated;
                for (k, v) in r.refused {
                    *s.refused.entry(k).or_default() += v;
                }
            }
        }
        sink
    })
}

/// Stands in for a reader or installer lost with a thread that could not start or died:
/// reads nothing, refuses everything (counted as `no_data_path`).
pub struct Nothing;

impl ConnSource for Nothing {
    fn read(&mut self, _: &mut Vec<SyncConn>, wait: Duration) {
        std::thread::sleep(wait);
    }
}

impl ConnSink for Nothing {
    fn install(&mut self, conns: &[SyncConn]) -> InstallReport {
        let mut r = InstallReport::default();
        r.refused.insert("no_data_path".into(), conns.len() as u64);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxlen_follows_ipvs() {
        assert_eq!(maxlen(Role::Master, None, 9000), 1472);
        assert_eq!(maxlen(Role::Backup, None, 9000), 8972);
        assert_eq!(maxlen(Role::Backup, None, 1280), 1472);
        assert_eq!(maxlen(Role::Backup, Some(100), 1500), 1024);
        assert_eq!(maxlen(Role::Master, Some(100), 1500), 100);
    }
}
