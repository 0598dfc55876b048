//! The control socket: requests the CLI sends to the daemon and what it answers.
//!
//! One JSON request per connection, one JSON response back, each on one line. The socket is
//! root-only (mode 0600, and the daemon checks the peer's uid).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::model::{DestConfig, Op, ServiceConfig, ServiceKey};

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Table edits, applied in order, all or nothing (`-R` sends many).
    Ops(Vec<Op>),
    /// The table with counters (`-L`), optionally one service.
    List { service: Option<ServiceKey> },
    /// The connection entries (`-Lc`).
    Conns,
    /// Zero the counters of one service or all (`-Z`).
    Zero { service: Option<ServiceKey> },
    /// Connection timeouts (`--set tcp tcpfin udp`; 0 = unchanged).
    SetTimeouts(Timeouts),
    /// `--timeout` listing.
    GetTimeouts,
    /// Re-read the config file the daemon was started with.
    Reload,
    /// Data-path counters and daemon facts.
    Status,
    /// `--start-daemon ROLE` with its options (connection sync).
    StartDaemon {
        role: crate::sync::config::Role,
        params: crate::sync::config::Params,
    },
    /// `--stop-daemon ROLE`.
    StopDaemon { role: crate::sync::config::Role },
    /// `-L --daemon`.
    ListDaemon,
    /// Stop the daemon. With `keep_datapath` the XDP programs stay attached and the maps
    /// pinned, so traffic keeps flowing and the next daemon adopts them.
    Shutdown { keep_datapath: bool },
    /// Scale-out: withdraw the VIPs' routes, keep forwarding until no connection is active
    /// or `timeout_secs` pass, then stop (`lb-ctl drain`).
    Drain { timeout_secs: u64 },
    /// Scale-out: the digest of a service's hashing table (`lb-ctl --digest -t VIP:PORT`);
    /// answered with `Status` (scheduler, slots, digest).
    Digest { service: ServiceKey },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcpfin: u32,
    pub udp: u32,
}

/// Traffic counters (IPVS `ip_vs_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
}

/// Rates over the last estimation interval, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateView {
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    pub inbps: u64,
    pub outbps: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestView {
    pub config: DestConfig,
    pub active_conns: u32,
    pub inact_conns: u32,
    pub persist_conns: u32,
    pub stats: StatsView,
    pub rates: RateView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub config: ServiceConfig,
    pub stats: StatsView,
    pub rates: RateView,
    pub dests: Vec<DestView>,
}

/// What `-L` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Connection-table size (the `size=` of ipvsadm's first line).
    pub conn_table_size: u32,
    pub services: Vec<ServiceView>,
}

/// One connection entry (a line of `-Lc`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnView {
    /// "TCP", "UDP" (or "IP" for persistence templates).
    pub proto: String,
    /// Seconds until the entry expires.
    pub expire_secs: u32,
    /// IPVS state name: "ESTABLISHED", "SYN_RECV", …, "UDP", "NONE".
    pub state: String,
    pub client: SocketAddr,
    pub virtual_addr: SocketAddr,
    pub dest: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok,
    Error(String),
    Snapshot(Snapshot),
    Conns(Vec<ConnView>),
    Timeouts(Timeouts),
    Status(serde_json::Value),
    /// The running sync daemons (`-L --daemon`).
    Daemons(Vec<crate::sync::shell::RoleStatus>),
}

/// How long the CLI waits for the daemon to take a connection, and then for its answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one request to the daemon at `socket` and returns its answer. Each failure says
/// what to do about it, as ipvsadm's messages do: start the daemon (no socket, or nobody
/// listening), run as root (permission), or wait (a daemon that does not answer in time).
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    call_with(socket, req, CONNECT_TIMEOUT, ANSWER_TIMEOUT)
}

/// [`call`] with the waits given.
pub fn call_with(
    socket: &Path,
    req: &Request,
    connect_timeout: Duration,
    answer_timeout: Duration,
) -> anyhow::Result<Response> {
    let reach = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot reach the lb-ctl daemon at {}: {}",
            socket.display(),
            connect_hint(&e, connect_timeout)
        )
    };
    let stream = connect(socket, connect_timeout).map_err(reach)?;
    stream.set_read_timeout(Some(answer_timeout))?;
    stream.set_write_timeout(Some(answer_timeout))?;
    let busy = |e: std::io::Error, doing: &str| {
        if is_timeout(&e) {
            anyhow::anyhow!(
                "the lb-ctl daemon at {} did not answer within {} s: it is busy or not \
                 responding",
                socket.display(),
                answer_timeout.as_secs_f64()
            )
        } else {
            anyhow::Error::new(e).context(format!("{doing} the daemon at {}", socket.display()))
        }
    };
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    send_all(&stream, line.as_bytes()).map_err(|e| busy(e, "sending the request to"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| busy(e, "reading the answer of"))?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    serde_json::from_str(&answer).context("decoding the daemon's answer")
}

/// The message for a failed connect, with the hint that fits its cause.
fn connect_hint(e: &std::io::Error, timeout: Duration) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        // No socket, or a socket file nobody listens on (a daemon that was killed).
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            format!("{e}\n(is it running? start it with `lb-ctl daemon -i <interface>`)")
        }
        // libipvs's words for EPERM/EACCES: the socket is root-only.
        ErrorKind::PermissionDenied => "Permission denied (you must be root)".into(),
        _ if is_timeout(e) => format!(
            "no connection within {} s: the daemon is busy or not responding",
            timeout.as_secs_f64()
        ),
        _ => e.to_string(),
    }
}

/// A socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` report it as `EAGAIN`).
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Connects to the UNIX socket at `path`, waiting at most `timeout` when the daemon's accept
/// backlog is full (a stopped or stuck daemon): Linux bounds that wait by `SO_SNDTIMEO`, which
/// `UnixStream::connect` cannot set beforehand.
fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use std::os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    };
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "socket path too long for a UNIX socket (or contains NUL)",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = UnixStream::from(fd);
    stream.set_write_timeout(Some(timeout))?;
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
        let r = unsafe {
            libc::connect(
                stream.as_raw_fd(),
                (&raw const addr).cast(),
                len as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(stream);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes all of `buf` with `MSG_NOSIGNAL`: the CLI dies of SIGPIPE on a closed stdout, as
/// ipvsadm does, but a daemon that closes the socket early is an error to report, not that.
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the fd is `stream`'s.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}
