//! The control socket: requests the CLI sends to the daemon and what it answers.
//!
//! One JSON request per connection, one JSON response back, each on one line. The socket is
//! root-only (mode 0600, and the daemon checks the peer's uid).

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddrV4,
    os::unix::net::UnixStream,
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
    /// Stop the daemon. With `keep_datapath` the XDP programs stay attached and the maps
    /// pinned, so traffic keeps flowing and the next daemon adopts them.
    Shutdown { keep_datapath: bool },
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
    pub client: SocketAddrV4,
    pub virtual_addr: SocketAddrV4,
    pub dest: SocketAddrV4,
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
}

/// Sends one request to the daemon at `socket` and returns its answer.
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => bail!(
            "cannot reach the lb-ctl daemon at {}: {e}\n\
             (is it running? start it with `lb-ctl daemon -i <interface>`)",
            socket.display()
        ),
    };
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("sending the request to the daemon")?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    serde_json::from_str(&answer).context("decoding the daemon's answer")
}
