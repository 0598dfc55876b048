//! The ipvsadm-compatible command line: ipvsadm's options under their short and long names,
//! its command/option legality rules and error messages, the daemon request each command
//! becomes, and the listings printed in ipvsadm's exact layouts.
//!
//! The reference is ipvsadm 1.31 (`ipvsadm.c` and `libipvs`); older versions behave the same
//! for everything here except that they lack `-b`, `--tun-*` and `-c --persistent-conn`.
//! LVS admins and their scripts depend on byte-exact output (column widths, truncation, the
//! `-S` format that `-R` reads back), so the layouts below are the printf formats of
//! ipvsadm written with Rust's `format!`.
//!
//! Without `-n` ipvsadm prints host and service names. We take port names from
//! `/etc/services` and host names from `/etc/hosts` only: a listing must never hang on DNS.
//! Names typed on the command line are resolved like ipvsadm does (files, then the system
//! resolver).

use std::{
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    sync::OnceLock,
};

use clap::{ArgAction, Args, Parser};
use serde::Serialize;

use crate::{
    api::{ConnView, DestView, Request, Response, ServiceView, Snapshot, Timeouts},
    model::{
        self, DestConfig, Forward, Netmask, Op, Persistence, Protocol, SchedFlags, Scheduler,
        ServiceConfig, ServiceKey,
    },
};

/// ipvsadm's exit status for a bad command line (its `fail(2, …)`).
pub const EXIT_USAGE: i32 = 2;
/// ipvsadm's exit status when it prints its "Try … -h" line, when an option cannot be parsed
/// at all, and when the kernel refuses an operation (`main` returns -1).
pub const EXIT_FAILED: i32 = 255;
/// ipvsadm's exit status when a listing cannot be produced (`exit(1)`, e.g. `-L -t` of a
/// service that does not exist: "No such service").
pub const EXIT_LIST_FAILED: i32 = 1;
/// The IPVS version we report in the first line of `-L`: the last one the kernel announced.
pub const IPVS_VERSION: &str = "1.2.1";
/// The ipvsadm release whose command line, messages and layouts lb-ctl follows.
pub const IPVSADM_VERSION: &str = "1.31";

/// What `-v`/`--version` prints: ipvsadm's layout (`ipvsadm v1.31 2019/12/24 (compiled with
/// popt and IPVS v1.2.1)`) with lb-ctl's own version, so that scripts reading the first word,
/// the second or the trailing `IPVS vX.Y.Z` find what they look for.
pub fn version_line() -> String {
    format!(
        "lb-ctl v{} (ipvsadm v{IPVSADM_VERSION} compatible, XDP data path and IPVS v{IPVS_VERSION})\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// ipvsadm's `MAX_TIMEOUT`, as the model enforces it.
const MAX_TIMEOUT: i64 = model::MAX_TIMEOUT as i64;
/// What clap stores for `-p`/`-o` given without a value. A NUL can never come from argv, so it
/// cannot be mistaken for a typed value.
const NO_VALUE: &str = "\0";
const CMD_HEADING: &str = "ipvsadm commands";

// Every ipvsadm option, under ipvsadm's short and long names. Flattened into lb-ctl's
// top-level parser, so `lb-ctl -Ln` works like `ipvsadm -Ln`. (A plain comment: a doc comment
// here would replace lb-ctl's own `--help` text.)
//
// Options are collected as counts and lists rather than parsed by clap, so that `plan` can
// report repeated options and bad values with ipvsadm's own messages.
#[derive(Args, Debug, Default, Clone, PartialEq, Eq)]
#[command(next_help_heading = "ipvsadm options")]
pub struct IpvsArgs {
    /// Add virtual service with options
    #[arg(short = 'A', long = "add-service", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub add_service: u8,
    /// Edit virtual service with options
    #[arg(short = 'E', long = "edit-service", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub edit_service: u8,
    /// Delete virtual service
    #[arg(short = 'D', long = "delete-service", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub delete_service: u8,
    /// Clear the whole table
    #[arg(short = 'C', long = "clear", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub clear: u8,
    /// Restore rules from stdin
    #[arg(short = 'R', long = "restore", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub restore: u8,
    /// Save rules to stdout
    #[arg(short = 'S', long = "save", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub save: u8,
    /// Add real server with options
    #[arg(short = 'a', long = "add-server", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub add_server: u8,
    /// Edit real server with options
    #[arg(short = 'e', long = "edit-server", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub edit_server: u8,
    /// Delete real server
    #[arg(short = 'd', long = "delete-server", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub delete_server: u8,
    /// List the table
    #[arg(short = 'L', visible_short_alias = 'l', long = "list", action = ArgAction::Count,
          help_heading = CMD_HEADING)]
    pub list: u8,
    /// Zero counters in a service or all services
    #[arg(short = 'Z', long = "zero", action = ArgAction::Count, help_heading = CMD_HEADING)]
    pub zero: u8,
    /// Set connection timeout values (seconds, 0 = unchanged)
    #[arg(long = "set", num_args = 0..=3, value_names = ["tcp", "tcpfin", "udp"],
          action = ArgAction::Set, help_heading = CMD_HEADING)]
    pub set: Option<Vec<String>>,

    /// TCP virtual service; service-address is host[:port]
    #[arg(
        short = 't',
        long = "tcp-service",
        value_name = "service-address",
        allow_hyphen_values = true
    )]
    pub tcp_service: Vec<String>,
    /// UDP virtual service; service-address is host[:port]
    #[arg(
        short = 'u',
        long = "udp-service",
        value_name = "service-address",
        allow_hyphen_values = true
    )]
    pub udp_service: Vec<String>,
    /// Firewall-mark virtual service (not supported)
    #[arg(
        short = 'f',
        long = "fwmark-service",
        value_name = "fwmark",
        allow_hyphen_values = true
    )]
    pub fwmark_service: Vec<String>,
    #[arg(long = "sctp-service", hide = true, allow_hyphen_values = true)]
    pub sctp_service: Vec<String>,
    /// Scheduler: rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh (default wlc)
    #[arg(
        short = 's',
        long = "scheduler",
        value_name = "scheduler",
        allow_hyphen_values = true
    )]
    pub scheduler: Vec<String>,
    /// Persistent service (timeout in seconds, default 300)
    #[arg(short = 'p', long = "persistent", value_name = "timeout", num_args = 0..=1,
          default_missing_value = NO_VALUE)]
    pub persistent: Vec<String>,
    /// Persistent granularity mask
    #[arg(
        short = 'M',
        long = "netmask",
        value_name = "netmask",
        allow_hyphen_values = true
    )]
    pub netmask: Vec<String>,
    /// Scheduler flags, comma-separated: flag-1,flag-2,flag-3, sh-fallback,sh-port, mh-fallback,mh-port
    #[arg(
        short = 'b',
        long = "sched-flags",
        value_name = "sched-flags",
        allow_hyphen_values = true
    )]
    pub sched_flags: Vec<String>,
    #[arg(long = "pe", hide = true, allow_hyphen_values = true)]
    pub pe: Vec<String>,
    /// Real server; server-address is host (and port)
    #[arg(
        short = 'r',
        long = "real-server",
        value_name = "server-address",
        allow_hyphen_values = true
    )]
    pub real_server: Vec<String>,
    /// Gatewaying (direct routing) (default)
    #[arg(short = 'g', long = "gatewaying", action = ArgAction::Count)]
    pub gatewaying: u8,
    /// IPIP encapsulation (tunneling)
    #[arg(short = 'i', long = "ipip", action = ArgAction::Count)]
    pub ipip: u8,
    /// Masquerading (NAT)
    #[arg(short = 'm', long = "masquerading", action = ArgAction::Count)]
    pub masquerading: u8,
    #[arg(long = "tun-type", hide = true, allow_hyphen_values = true)]
    pub tun_type: Vec<String>,
    #[arg(long = "tun-port", hide = true, allow_hyphen_values = true)]
    pub tun_port: Vec<String>,
    #[arg(long = "tun-nocsum", hide = true, action = ArgAction::Count)]
    pub tun_nocsum: u8,
    #[arg(long = "tun-csum", hide = true, action = ArgAction::Count)]
    pub tun_csum: u8,
    #[arg(long = "tun-remcsum", hide = true, action = ArgAction::Count)]
    pub tun_remcsum: u8,
    /// Capacity of real server (0..65535)
    #[arg(
        short = 'w',
        long = "weight",
        value_name = "weight",
        allow_hyphen_values = true
    )]
    pub weight: Vec<String>,
    /// Upper threshold of connections
    #[arg(
        short = 'x',
        long = "u-threshold",
        value_name = "uthreshold",
        allow_hyphen_values = true
    )]
    pub u_threshold: Vec<String>,
    /// Lower threshold of connections
    #[arg(
        short = 'y',
        long = "l-threshold",
        value_name = "lthreshold",
        allow_hyphen_values = true
    )]
    pub l_threshold: Vec<String>,
    /// Numeric output of addresses and ports
    #[arg(short = 'n', long = "numeric", action = ArgAction::Count)]
    pub numeric: u8,
    /// Output of current IPVS connections
    #[arg(short = 'c', long = "connection", action = ArgAction::Count)]
    pub connection: u8,
    /// Output of timeout (tcp tcpfin udp)
    #[arg(long = "timeout", id = "list_timeout", action = ArgAction::Count)]
    pub list_timeout: u8,
    /// Output of daemon information
    #[arg(long = "daemon", id = "list_daemon", action = ArgAction::Count)]
    pub list_daemon: u8,
    /// Output of statistics information
    #[arg(long = "stats", action = ArgAction::Count)]
    pub stats: u8,
    /// Output of rate information
    #[arg(long = "rate", action = ArgAction::Count)]
    pub rate: u8,
    /// Output of thresholds information
    #[arg(long = "thresholds", action = ArgAction::Count)]
    pub thresholds: u8,
    /// Output of persistent connection info
    #[arg(long = "persistent-conn", action = ArgAction::Count)]
    pub persistent_conn: u8,
    /// Output of tunnel information
    #[arg(long = "tun-info", action = ArgAction::Count)]
    pub tun_info: u8,
    /// Disable sorting output of service/server entries
    #[arg(long = "nosort", action = ArgAction::Count)]
    pub nosort: u8,
    /// Does nothing, for backwards compatibility
    #[arg(long = "sort", action = ArgAction::Count)]
    pub sort: u8,
    /// Expand numbers (display exact values)
    #[arg(short = 'X', long = "exact", action = ArgAction::Count)]
    pub exact: u8,
    /// IPv6 firewall-mark service (after -f; -t/-u services take their family from the
    /// address: [2001:db8::1]:80)
    #[arg(short = '6', long = "ipv6", action = ArgAction::Count)]
    pub ipv6: u8,
    /// One-packet scheduling (UDP); `-o json` prints a listing as JSON
    #[arg(short = 'o', long = "ops", value_name = "json", num_args = 0..=1,
          default_missing_value = NO_VALUE)]
    pub ops: Vec<String>,
    // Connection sync (crate::sync): ipvsadm's daemon command and options.
    /// Start connection sync daemon
    #[arg(
        long = "start-daemon",
        value_name = "master|backup",
        allow_hyphen_values = true
    )]
    pub start_daemon: Vec<String>,
    /// Stop connection sync daemon
    #[arg(
        long = "stop-daemon",
        value_name = "master|backup",
        allow_hyphen_values = true
    )]
    pub stop_daemon: Vec<String>,
    /// Multicast interface for connection sync
    #[arg(
        long = "mcast-interface",
        value_name = "interface",
        allow_hyphen_values = true
    )]
    pub mcast_interface: Vec<String>,
    /// Syncid for connection sync (default=0: a backup takes every syncid)
    #[arg(long = "syncid", value_name = "sid", allow_hyphen_values = true)]
    pub syncid: Vec<String>,
    /// Max sync message length (default=1472)
    #[arg(
        long = "sync-maxlen",
        value_name = "length",
        allow_hyphen_values = true
    )]
    pub sync_maxlen: Vec<String>,
    /// IPv4/IPv6 group (default=224.0.0.81)
    #[arg(
        long = "mcast-group",
        value_name = "address",
        allow_hyphen_values = true
    )]
    pub mcast_group: Vec<String>,
    /// UDP port (default=8848)
    #[arg(long = "mcast-port", value_name = "port", allow_hyphen_values = true)]
    pub mcast_port: Vec<String>,
    /// Multicast TTL (default=1)
    #[arg(long = "mcast-ttl", value_name = "ttl", allow_hyphen_values = true)]
    pub mcast_ttl: Vec<String>,
}

/// A command line that ipvsadm would refuse, with ipvsadm's message and exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError {
    msg: String,
    code: i32,
    try_help: bool,
}

impl UsageError {
    /// ipvsadm's `fail(2, …)`.
    fn fail(msg: impl Into<String>) -> Self {
        UsageError {
            msg: msg.into(),
            code: EXIT_USAGE,
            try_help: false,
        }
    }
    /// ipvsadm's `tryhelp_exit(argv[0], -1)`.
    fn try_help(msg: impl Into<String>) -> Self {
        UsageError {
            msg: msg.into(),
            code: EXIT_FAILED,
            try_help: true,
        }
    }
    /// What ipvsadm only learns from the kernel's refusal (exit 255, no help line).
    fn refused(msg: impl Into<String>) -> Self {
        UsageError {
            msg: msg.into(),
            code: EXIT_FAILED,
            try_help: false,
        }
    }
    /// The process exit status ipvsadm uses for this error.
    pub fn exit_code(&self) -> i32 {
        self.code
    }
    /// Whether ipvsadm follows it with "Try `ipvsadm -h' or 'ipvsadm --help' for more
    /// information.".
    pub fn shows_try_help(&self) -> bool {
        self.try_help
    }
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for UsageError {}

/// What to do for a command line.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Send `req` to the daemon and print its answer with [`render_response`].
    Request { req: Request, render: Render },
    /// `-R`: read stdin, [`parse_restore`] it and send the ops as one `Request::Ops`.
    Restore,
    /// Print this and succeed, without asking the daemon (`-L --daemon`: lb-ctl runs no
    /// connection-sync daemon, and ipvsadm prints nothing when none runs).
    Print(String),
}

/// How to print the daemon's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Render {
    /// Table edits, `-Z`, `--set`: nothing on success.
    Nothing,
    /// A `Response::Snapshot`.
    List(ListFormat),
    /// A `Response::Conns` (`-Lc`).
    Conns(ListFormat),
    /// A `Response::Timeouts` (`-L --timeout`).
    Timeouts { json: bool },
    /// A `Response::Daemons` (`-L --daemon`).
    Daemon { json: bool },
}

impl Render {
    /// The exit status when the daemon answers `Response::Error`: ipvsadm exits 1 when a
    /// listing fails and 255 when an operation is refused.
    pub fn error_exit_code(&self) -> i32 {
        match self {
            Render::Nothing => EXIT_FAILED,
            Render::List(_)
            | Render::Conns(_)
            | Render::Timeouts { .. }
            | Render::Daemon { .. } => EXIT_LIST_FAILED,
        }
    }
}

/// Which of ipvsadm's listing layouts. When several are asked for, ipvsadm uses the first in
/// this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListView {
    /// Scheduler, flags, forwarding, weight, connection counts.
    #[default]
    Default,
    /// `--stats`
    Stats,
    /// `--rate`
    Rate,
    /// `--thresholds`
    Thresholds,
    /// `--persistent-conn`
    PersistentConn,
    /// `--tun-info`
    TunInfo,
    /// `-S`: the commands that rebuild the table.
    Rules,
}

/// The options that shape a listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListFormat {
    pub view: ListView,
    /// `-n`
    pub numeric: bool,
    /// `-X`/`--exact`
    pub exact: bool,
    /// `--nosort`: keep the daemon's order.
    pub nosort: bool,
    /// `-o json`
    pub json: bool,
    /// `-L -t VIP:port`: ipvsadm's list_service prints no "IP Virtual Server version" line.
    pub single_service: bool,
}

// ---------------------------------------------------------------------------------------------
// Commands, options and ipvsadm's table of which go together.

/// ipvsadm's commands, in the order of its `cmdnames` (the legality table's rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Add,
    Edit,
    Del,
    Flush,
    List,
    AddDest,
    DelDest,
    EditDest,
    Timeout,
    Restore,
    Save,
    Zero,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Add => "add-service",
            Cmd::Edit => "edit-service",
            Cmd::Del => "delete-service",
            Cmd::Flush => "flush",
            Cmd::List => "list",
            Cmd::AddDest => "add-server",
            Cmd::DelDest => "delete-server",
            Cmd::EditDest => "edit-server",
            Cmd::Timeout => "set",
            Cmd::Restore => "restore",
            Cmd::Save => "save",
            Cmd::Zero => "zero",
        }
    }

    /// ipvsadm's `commands_v_options` row, one character per entry of [`OPT_NAMES`]:
    /// `+` compulsory, `x` illegal, `1` at most one of the `1`s, ` ` optional.
    /// (The sync-daemon columns are left out: those options are refused before this check.)
    fn legality(self) -> &'static str {
        //                     n c svc s p M r fwd w x y tot dmn st rt thr pc srt ex ops pe b tinf type tprt nocs csum remc
        match self {
            Cmd::Add | Cmd::Edit => "xx+   xxxxxxxxxxxxx   xxxxxx",
            Cmd::Del => "xx+xxxxxxxxxxxxxxxxxxxxxxxxx",
            Cmd::List => " 11xxxxxxxx11      xxx xxxxx",
            Cmd::AddDest | Cmd::EditDest => "xx+xxx+    xxxxxxxxxxxx     ",
            Cmd::DelDest => "xx+xxx+xxxxxxxxxxxxxxxxxxxxx",
            Cmd::Save => " xxxxxxxxxxxxxxxxxxxxxxxxxxx",
            Cmd::Zero => "xx xxxxxxxxxxxxxxxxxxxxxxxxx",
            Cmd::Flush | Cmd::Timeout | Cmd::Restore => "xxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        }
    }
}

/// Column indexes into [`OPT_NAMES`] and the legality rows.
mod opt {
    pub const NUMERIC: usize = 0;
    pub const CONNECTION: usize = 1;
    pub const TIMEOUT: usize = 11;
    pub const DAEMON: usize = 12;
    pub const STATS: usize = 13;
    pub const RATE: usize = 14;
    pub const THRESHOLDS: usize = 15;
    pub const PERSISTENT_CONN: usize = 16;
    pub const TUN_TYPE: usize = 23;
    pub const COUNT: usize = 28;
}

/// ipvsadm's `optnames`, as its messages name the options.
const OPT_NAMES: [&str; opt::COUNT] = [
    "numeric",
    "connection",
    "service-address",
    "scheduler",
    "persistent",
    "netmask",
    "real-server",
    "forwarding-method",
    "weight",
    "u-threshold",
    "l-threshold",
    "timeout",
    "daemon",
    "stats",
    "rate",
    "thresholds",
    "persistent-conn",
    "nosort",
    "exact",
    "ops",
    "pe",
    "sched-flags",
    "tun-info",
    "tun-type",
    "tun-port",
    "tun-nocsum",
    "tun-csum",
    "tun-remcsum",
];

impl IpvsArgs {
    /// The one command given (ipvsadm: "multiple commands specified" for more).
    fn command(&self) -> Result<Cmd, UsageError> {
        let given = [
            (self.add_service, Cmd::Add),
            (self.edit_service, Cmd::Edit),
            (self.delete_service, Cmd::Del),
            (self.clear, Cmd::Flush),
            (self.list, Cmd::List),
            (self.add_server, Cmd::AddDest),
            (self.delete_server, Cmd::DelDest),
            (self.edit_server, Cmd::EditDest),
            (u8::from(self.set.is_some()), Cmd::Timeout),
            (self.restore, Cmd::Restore),
            (self.save, Cmd::Save),
            (self.zero, Cmd::Zero),
        ];
        let mut found = given.iter().filter(|(n, _)| *n > 0);
        match (found.next(), found.next()) {
            (Some((1, cmd)), None) => Ok(*cmd),
            (Some(_), _) => Err(UsageError::fail("multiple commands specified")),
            // ipvsadm insists that its first option is a command.
            (None, _) => Err(UsageError::try_help("no command specified")),
        }
    }

    /// How often each option of [`OPT_NAMES`] was given.
    fn option_counts(&self) -> [usize; opt::COUNT] {
        let n = usize::from;
        let ops = self.ops.iter().filter(|v| *v == NO_VALUE).count();
        [
            n(self.numeric),
            n(self.connection),
            self.tcp_service.len() + self.udp_service.len() + self.fwmark_service.len(),
            self.scheduler.len(),
            self.persistent.len(),
            self.netmask.len(),
            self.real_server.len(),
            n(self.gatewaying) + n(self.ipip) + n(self.masquerading),
            self.weight.len(),
            self.u_threshold.len(),
            self.l_threshold.len(),
            n(self.list_timeout),
            n(self.list_daemon),
            n(self.stats),
            n(self.rate),
            n(self.thresholds),
            n(self.persistent_conn),
            n(self.nosort),
            n(self.exact),
            ops,
            self.pe.len(),
            self.sched_flags.len(),
            n(self.tun_info),
            self.tun_type.len(),
            self.tun_port.len(),
            n(self.tun_nocsum),
            n(self.tun_csum),
            n(self.tun_remcsum),
        ]
    }

    /// ipvsadm features the data path does not have.
    fn reject_unsupported(&self) -> Result<(), UsageError> {
        if !self.sctp_service.is_empty() {
            return Err(UsageError::fail("SCTP services are not supported"));
        }
        // ipvsadm takes -6 only after -f (an IPv6 firewall-mark service); IPv6 -t/-u services
        // are IPv6 by their address. Firewall-mark services are refused below anyway.
        if self.ipv6 > 0 && self.fwmark_service.is_empty() {
            return Err(UsageError::fail("-6 used before -f"));
        }
        Ok(())
    }
}

/// ipvsadm's `generic_opt_check`: the first option that is missing, illegal or conflicting.
fn check_options(cmd: Cmd, counts: &[usize; opt::COUNT]) -> Result<(), UsageError> {
    let mut exclusive: Option<usize> = None;
    for (j, rule) in cmd.legality().bytes().enumerate() {
        let given = counts[j] > 0;
        match (rule, given) {
            (b'+', false) => {
                return Err(UsageError::fail(format!(
                    "You need to supply the '{}' option for the '{}' command",
                    OPT_NAMES[j],
                    cmd.name()
                )));
            }
            (b'x', true) => {
                return Err(UsageError::fail(format!(
                    "Illegal '{}' option with the '{}' command",
                    OPT_NAMES[j],
                    cmd.name()
                )));
            }
            (b'1', true) => match exclusive {
                None => exclusive = Some(j),
                Some(first) => {
                    return Err(UsageError::fail(format!(
                        "The option '{}' conflicts with the '{}' option in the '{}' command",
                        OPT_NAMES[j],
                        OPT_NAMES[first],
                        cmd.name()
                    )));
                }
            },
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Option values.

/// The option values, parsed and range-checked as ipvsadm's option loop does (before it checks
/// which options the command allows).
struct Values {
    service: Option<ServiceKey>,
    scheduler: Option<String>,
    persistent: Option<u32>,
    netmask: Option<Netmask>,
    server: Option<(IpAddr, u16)>,
    forward: Forward,
    weight: u32,
    u_threshold: u32,
    l_threshold: u32,
    ops: bool,
    json: bool,
    sched_flags: u32,
    gue: bool,
    timeouts: Timeouts,
}

impl Values {
    fn parse(a: &IpvsArgs, names: &Names) -> Result<Values, UsageError> {
        let service = if let Some(v) = a.tcp_service.first() {
            Some(parse_service_key(v, Protocol::Tcp, names)?)
        } else if let Some(v) = a.udp_service.first() {
            Some(parse_service_key(v, Protocol::Udp, names)?)
        } else if let Some(v) = a.fwmark_service.first() {
            parse_fwmark(v)?;
            return Err(UsageError::fail(
                "firewall-mark services (-f) are not supported",
            ));
        } else {
            None
        };

        let persistent = match a.persistent.first() {
            None => None,
            Some(v) if v == NO_VALUE => Some(Persistence::DEFAULT_TIMEOUT),
            Some(v) => Some(parse_timeout(v, 1)?),
        };

        let netmask = match a.netmask.first() {
            None => None,
            // An IPv6 service's -M is a prefix length, read with atoi as ipvsadm does.
            Some(v) if service.is_some_and(|k| k.is_v6()) => match atoi(v) {
                n @ 1..=128 => Some(Netmask::V6(n as u8)),
                _ => return Err(UsageError::fail("illegal ipv6 netmask specified")),
            },
            Some(v) => {
                let mask = inet_aton(v).or_else(|| names.host_to_addr(v));
                Some(Netmask::V4(mask.ok_or_else(|| {
                    UsageError::fail("illegal virtual server persistent mask specified")
                })?))
            }
        };

        let server = match a.real_server.first() {
            None => None,
            Some(v) => {
                let proto = service.map(|k| k.proto);
                match parse_service(v, proto, names) {
                    // A real server without a port takes the service's.
                    Some((addr, port)) => {
                        Some((addr, port.or(service.map(|k| k.port)).unwrap_or(0)))
                    }
                    None => {
                        return Err(UsageError::fail(
                            "illegal real server address[:port] specified",
                        ));
                    }
                }
            }
        };

        let forward = if a.masquerading > 0 {
            Forward::Nat
        } else if a.ipip > 0 {
            Forward::Tun
        } else {
            Forward::Dr
        };

        let weight = parse_number(
            a.weight.first(),
            1,
            i64::from(DestConfig::MAX_WEIGHT),
            "illegal weight specified",
        )?;
        let int_max = i64::from(DestConfig::MAX_THRESHOLD);
        let u_threshold = parse_number(
            a.u_threshold.first(),
            0,
            int_max,
            "illegal u_threshold specified",
        )?;
        let l_threshold = parse_number(
            a.l_threshold.first(),
            0,
            int_max,
            "illegal l_threshold specified",
        )?;

        let mut ops = false;
        let mut json = false;
        for v in &a.ops {
            match v.as_str() {
                NO_VALUE => ops = true,
                "json" => json = true,
                other => {
                    return Err(UsageError::fail(format!(
                        "invalid output format `{other}' (-o alone is one-packet scheduling, \
                         -o json prints a listing as JSON)"
                    )));
                }
            }
        }

        let gue = match a.tun_type.first().map(String::as_str) {
            None | Some("ipip") => false,
            Some("gue") => true,
            Some(_) => return Err(UsageError::fail("illegal tunnel type specified")),
        };
        if let Some(v) = a.tun_port.first() {
            string_to_number(v, 1, 65535)
                .ok_or_else(|| UsageError::fail("illegal tunnel port specified"))?;
        }

        let timeouts = match &a.set {
            None => Timeouts::default(),
            Some(v) => match v.as_slice() {
                [tcp, tcpfin, udp] => Timeouts {
                    tcp: parse_timeout(tcp, 0)?,
                    tcpfin: parse_timeout(tcpfin, 0)?,
                    udp: parse_timeout(udp, 0)?,
                },
                _ => return Err(UsageError::fail("--set option requires 3 timeout values")),
            },
        };

        let scheduler = a.scheduler.first().filter(|s| !s.is_empty()).cloned();
        let sched_flags = match a.sched_flags.first() {
            None => 0,
            Some(v) => {
                parse_sched_flags(scheduler.as_deref().unwrap_or(Scheduler::DEFAULT.name()), v)?
            }
        };

        Ok(Values {
            service,
            scheduler,
            persistent,
            netmask,
            server,
            forward,
            weight,
            u_threshold,
            l_threshold,
            ops,
            json,
            sched_flags,
            gue,
            timeouts,
        })
    }
}

/// `-t`/`-u`: ipvsadm's "illegal virtual server address[:port] specified" unless it parses.
fn parse_service_key(v: &str, proto: Protocol, names: &Names) -> Result<ServiceKey, UsageError> {
    match parse_service(v, Some(proto), names) {
        Some((addr, port)) => Ok(ServiceKey {
            proto,
            addr,
            port: port.unwrap_or(0),
        }),
        None => Err(UsageError::fail(
            "illegal virtual server address[:port] specified",
        )),
    }
}

/// ipvsadm's `parse_service`: `host[:port]` or `[ipv6]:port`. An IPv6 address goes in
/// brackets when a port follows (`[2001:db8::1]:80`; brackets without a port are refused, as
/// ipvsadm does) or stands alone without one (`2001:db8::1`). Otherwise the host is an IPv4
/// address in any form `inet_aton` takes or a name, the port a number or a service name of
/// `proto`. A bare number is refused (it would otherwise be taken as a 32-bit address).
fn parse_service(
    buf: &str,
    proto: Option<Protocol>,
    names: &Names,
) -> Option<(IpAddr, Option<u16>)> {
    if buf.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (addr, port) = if let Some(rest) = buf.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (
            IpAddr::V6(host.parse().ok()?),
            Some(after.strip_prefix(':')?),
        )
    } else if let Ok(v6) = buf.parse::<Ipv6Addr>() {
        (IpAddr::V6(v6), None)
    } else {
        let (host, port) = match buf.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (buf, None),
        };
        let v4 = inet_aton(host).or_else(|| names.host_to_addr(host))?;
        (IpAddr::V4(v4), port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            string_to_number(p, 0, 65535)
                .and_then(|n| u16::try_from(n).ok())
                .or_else(|| proto.and_then(|pr| names.service_to_port(p, pr)))?,
        ),
    };
    Some((addr, port))
}

/// C's `atoi`, which ipvsadm reads an IPv6 service's `-M` with: leading white space, a sign,
/// the digits that follow (anything after them ignored), 0 when there are none.
fn atoi(s: &str) -> i64 {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let digits: String = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .take(12)
        .collect();
    let n = digits.parse::<i64>().unwrap_or(0);
    if neg { -n } else { n }
}

/// ipvsadm's `parse_fwmark`: a decimal in 1..=UINT_MAX.
fn parse_fwmark(v: &str) -> Result<u32, UsageError> {
    string_to_number(v, 1, i64::from(u32::MAX))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| UsageError::fail(format!("invalid fwmark value `{v}' specified")))
}

/// ipvsadm's `parse_timeout` (`-p`: 1.., `--set`: 0..; at most 31 days).
fn parse_timeout(v: &str, min: i64) -> Result<u32, UsageError> {
    string_to_number(v, min, MAX_TIMEOUT)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| UsageError::fail(format!("invalid timeout value `{v}' specified")))
}

/// An optional numeric option: `default` when absent, `msg` unless in `0..=max`.
fn parse_number(v: Option<&String>, default: u32, max: i64, msg: &str) -> Result<u32, UsageError> {
    match v {
        None => Ok(default),
        Some(v) => string_to_number(v, 0, max)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| UsageError::fail(msg)),
    }
}

/// ipvsadm's `string_to_number`: what `strtol(s, &end, 10)` accepts (leading white space, a
/// sign, decimal digits, nothing after), within `min..=max`.
fn string_to_number(s: &str, min: i64, max: i64) -> Option<i64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    let n = if neg { -n } else { n };
    (min..=max).contains(&n).then_some(n)
}

/// glibc's `inet_aton`, which ipvsadm uses for addresses and netmasks: one to four parts,
/// each decimal, octal (`0…`) or hex (`0x…`), the last filling the remaining bytes; so
/// `10.1` is 10.0.0.1 and `-M 24` is 0.0.0.24, as with ipvsadm. Anything after white space
/// is ignored.
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let s = s.split([' ', '\t', '\n', '\x0b', '\x0c', '\r']).next()?;
    let mut parts = [0u32; 4];
    let mut n = 0;
    for part in s.split('.') {
        *parts.get_mut(n)? = c_number(part)?;
        n += 1;
    }
    let [a, b, c, d] = parts;
    let v = match n {
        1 => a,
        2 if a <= 0xff && b <= 0xff_ffff => (a << 24) | b,
        3 if a <= 0xff && b <= 0xff && c <= 0xffff => (a << 24) | (b << 16) | c,
        4 if a <= 0xff && b <= 0xff && c <= 0xff && d <= 0xff => {
            (a << 24) | (b << 16) | (c << 8) | d
        }
        _ => return None,
    };
    Some(Ipv4Addr::from(v))
}

/// One part of an `inet_aton` address: starts with a digit, base as in C (`strtoul(…, 0)`).
fn c_number(part: &str) -> Option<u32> {
    if !part.as_bytes().first()?.is_ascii_digit() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or(part.strip_prefix("0X")) {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// ipvsadm's `parse_sched_flags`: the `sh-*`/`mh-*` names only with their scheduler (the
/// scheduler being wlc when `-s` is absent).
fn parse_sched_flags(sched: &str, arg: &str) -> Result<u32, UsageError> {
    let mut flags = 0;
    for flag in arg.split(',').filter(|f| !f.is_empty()) {
        let (bit, only_for) = match flag {
            "flag-1" => (SchedFlags::FLAG1, None),
            "flag-2" => (SchedFlags::FLAG2, None),
            "flag-3" => (SchedFlags::FLAG3, None),
            "sh-fallback" => (SchedFlags::FLAG1, Some("sh")),
            "sh-port" => (SchedFlags::FLAG2, Some("sh")),
            "mh-fallback" => (SchedFlags::FLAG1, Some("mh")),
            "mh-port" => (SchedFlags::FLAG2, Some("mh")),
            _ => return Err(UsageError::fail(format!("invalid scheduler flag `{flag}'"))),
        };
        if only_for.is_some_and(|s| s != sched) {
            return Err(UsageError::fail(format!(
                "incompatible scheduler flag `{flag}'"
            )));
        }
        flags |= bit;
    }
    Ok(flags)
}

/// The scheduler flags as ipvsadm's `print_sched_flags` names them (by scheduler).
fn sched_flags_text(c: &ServiceConfig) -> String {
    let f = c.sched_flags.0;
    let names: &[(u32, &str)] = match c.scheduler {
        Scheduler::Sh => &[
            (SchedFlags::FLAG1, "sh-fallback"),
            (SchedFlags::FLAG2, "sh-port"),
        ],
        Scheduler::Mh => &[
            (SchedFlags::FLAG1, "mh-fallback"),
            (SchedFlags::FLAG2, "mh-port"),
        ],
        _ => &[
            (SchedFlags::FLAG1, "flag-1"),
            (SchedFlags::FLAG2, "flag-2"),
            (SchedFlags::FLAG3, "flag-3"),
        ],
    };
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    set.join(",")
}

fn has_sched_flags(c: &ServiceConfig) -> bool {
    c.sched_flags.0 & (SchedFlags::FLAG1 | SchedFlags::FLAG2 | SchedFlags::FLAG3) != 0
}

// ---------------------------------------------------------------------------------------------
// Planning.

/// Turns a command line into what to ask the daemon and how to print its answer, or into
/// ipvsadm's error for it.
pub fn plan(args: &IpvsArgs) -> Result<Plan, UsageError> {
    plan_with(args, Names::system())
}

fn plan_with(a: &IpvsArgs, names: &Names) -> Result<Plan, UsageError> {
    // ipvsadm without arguments lists the table.
    if *a == IpvsArgs::default() {
        return Ok(Plan::Request {
            req: Request::List { service: None },
            render: Render::List(ListFormat::default()),
        });
    }
    a.reject_unsupported()?;
    if let Some(p) = plan_daemon(a)? {
        return Ok(p);
    }
    let cmd = a.command()?;
    let counts = a.option_counts();
    if let Some(j) = counts.iter().position(|&n| n > 1) {
        return Err(UsageError::fail(format!(
            "multiple '{}' options specified",
            OPT_NAMES[j]
        )));
    }
    let v = Values::parse(a, names)?;
    check_options(cmd, &counts)?;
    if v.json && !matches!(cmd, Cmd::List | Cmd::Save) {
        return Err(UsageError::fail(
            "-o json is only for listings (-L, -l, -S)",
        ));
    }
    let given = |j: usize| counts[j] > 0;
    let ops = |op: Op| Plan::Request {
        req: Request::Ops(vec![op]),
        render: Render::Nothing,
    };
    // Compulsory for the commands that use it (checked above), so never missing here.
    let service = || {
        v.service
            .ok_or_else(|| UsageError::fail("You need to supply the 'service-address' option"))
    };

    Ok(match cmd {
        Cmd::Add | Cmd::Edit => {
            let config = service_config(&service()?, &v, !a.pe.is_empty())?;
            ops(if cmd == Cmd::Add {
                Op::AddService(config)
            } else {
                Op::EditService(config)
            })
        }
        Cmd::Del => ops(Op::DelService(service()?)),
        Cmd::Flush => ops(Op::Clear),
        Cmd::AddDest | Cmd::EditDest => {
            let key = service()?;
            let dest = dest_config(&key, &v, &counts)?;
            ops(if cmd == Cmd::AddDest {
                Op::AddDest(key, dest)
            } else {
                Op::EditDest(key, dest)
            })
        }
        Cmd::DelDest => {
            let key = service()?;
            let (addr, port) = v
                .server
                .ok_or_else(|| UsageError::fail("You need to supply the 'real-server' option"))?;
            ops(Op::DelDest(key, addr, port))
        }
        Cmd::Timeout => Plan::Request {
            req: Request::SetTimeouts(v.timeouts),
            render: Render::Nothing,
        },
        Cmd::Zero => Plan::Request {
            req: Request::Zero { service: v.service },
            render: Render::Nothing,
        },
        Cmd::Restore => Plan::Restore,
        Cmd::Save => Plan::Request {
            req: Request::List { service: None },
            render: Render::List(ListFormat {
                view: ListView::Rules,
                numeric: given(opt::NUMERIC),
                json: v.json,
                ..ListFormat::default()
            }),
        },
        Cmd::List => {
            let any = |js: &[usize]| js.iter().any(|&j| given(j));
            if (any(&[opt::CONNECTION, opt::TIMEOUT, opt::DAEMON])
                && any(&[opt::STATS, opt::RATE, opt::THRESHOLDS]))
                || (any(&[opt::TIMEOUT, opt::DAEMON]) && given(opt::PERSISTENT_CONN))
            {
                return Err(UsageError::fail("options conflicts in the list command"));
            }
            let fmt = ListFormat {
                view: list_view(a),
                numeric: given(opt::NUMERIC),
                exact: a.exact > 0,
                nosort: a.nosort > 0,
                json: v.json,
                single_service: v.service.is_some(),
            };
            if given(opt::CONNECTION) {
                Plan::Request {
                    req: Request::Conns,
                    render: Render::Conns(fmt),
                }
            } else if let Some(key) = v.service {
                Plan::Request {
                    req: Request::List { service: Some(key) },
                    render: Render::List(fmt),
                }
            } else if given(opt::TIMEOUT) {
                Plan::Request {
                    req: Request::GetTimeouts,
                    render: Render::Timeouts { json: v.json },
                }
            } else if given(opt::DAEMON) {
                Plan::Request {
                    req: Request::ListDaemon,
                    render: Render::Daemon { json: v.json },
                }
            } else {
                Plan::Request {
                    req: Request::List { service: None },
                    render: Render::List(fmt),
                }
            }
        }
    })
}

/// ipvsadm's `--start-daemon` / `--stop-daemon` and their options, planned apart from the
/// table's commands (their own rows of ipvsadm's legality table): `None` when the command
/// line is not about the sync daemon.
fn plan_daemon(a: &IpvsArgs) -> Result<Option<Plan>, UsageError> {
    use crate::sync::config::{Params, Role};
    let sync_opts: [(&str, &Vec<String>); 6] = [
        ("mcast-interface", &a.mcast_interface),
        ("syncid", &a.syncid),
        ("sync-maxlen", &a.sync_maxlen),
        ("mcast-group", &a.mcast_group),
        ("mcast-port", &a.mcast_port),
        ("mcast-ttl", &a.mcast_ttl),
    ];
    let daemon_cmds = a.start_daemon.len() + a.stop_daemon.len();
    if daemon_cmds == 0 {
        // A sync option with a table command: ipvsadm's table marks it illegal.
        if let Some((name, _)) = sync_opts.iter().find(|(_, v)| !v.is_empty()) {
            let cmd = a.command()?;
            return Err(UsageError::fail(format!(
                "Illegal '{name}' option with the '{}' command",
                cmd.name()
            )));
        }
        return Ok(None);
    }
    let other_cmds = [
        a.add_service,
        a.edit_service,
        a.delete_service,
        a.clear,
        a.list,
        a.add_server,
        a.delete_server,
        a.edit_server,
        u8::from(a.set.is_some()),
        a.restore,
        a.save,
        a.zero,
    ];
    if daemon_cmds > 1 || other_cmds.iter().any(|&n| n > 0) {
        return Err(UsageError::fail("multiple commands specified"));
    }
    let start = !a.start_daemon.is_empty();
    let (cmd_name, arg) = if start {
        ("start-daemon", &a.start_daemon[0])
    } else {
        ("stop-daemon", &a.stop_daemon[0])
    };
    let role: Role = arg.parse().map_err(|_| {
        UsageError::fail(if start {
            "illegal start-daemon parameter specified"
        } else {
            // ipvsadm's own wording for a bad --stop-daemon argument.
            "illegal start_daemon specified"
        })
    })?;
    if let Some((name, _)) = sync_opts.iter().find(|(_, v)| v.len() > 1) {
        return Err(UsageError::fail(format!(
            "multiple '{name}' options specified"
        )));
    }
    let one = |v: &Vec<String>| v.first().cloned();
    let number =
        |v: &Vec<String>, lo: u32, hi: u32, what: &str| -> Result<Option<u32>, UsageError> {
            match one(v) {
                None => Ok(None),
                Some(s) => match s.parse::<u32>() {
                    Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
                    _ => Err(UsageError::fail(format!("illegal {what} specified"))),
                },
            }
        };
    // Parsed in ipvsadm's order, each with its message.
    let syncid = number(&a.syncid, 0, 255, "syncid")?;
    let maxlen = number(&a.sync_maxlen, 1, 65535 - 28, "sync-maxlen")?;
    let group = match one(&a.mcast_group) {
        None => None,
        Some(g) => match g.parse::<Ipv4Addr>() {
            Ok(ip) if ip.is_multicast() => Some(ip),
            _ if g.parse::<std::net::Ipv6Addr>().is_ok() => {
                return Err(UsageError::fail("IPv6 mcast-group is not supported yet"));
            }
            _ => return Err(UsageError::fail(format!("invalid IPv4 mcast-group `{g}'"))),
        },
    };
    let port = number(&a.mcast_port, 1, 65535, "mcast-port")?;
    let ttl = number(&a.mcast_ttl, 1, 255, "mcast-ttl")?;
    // The legality rows: every table option is illegal with the daemon commands; start
    // needs the interface, stop takes nothing but the role.
    if let Some(j) = a.option_counts().iter().position(|&n| n > 0) {
        return Err(UsageError::fail(format!(
            "Illegal '{}' option with the '{cmd_name}' command",
            OPT_NAMES[j]
        )));
    }
    if !start {
        if let Some((name, _)) = sync_opts.iter().find(|(_, v)| !v.is_empty()) {
            return Err(UsageError::fail(format!(
                "Illegal '{name}' option with the '{cmd_name}' command"
            )));
        }
        return Ok(Some(Plan::Request {
            req: Request::StopDaemon { role },
            render: Render::Nothing,
        }));
    }
    let Some(iface) = one(&a.mcast_interface) else {
        return Err(UsageError::fail(format!(
            "You need to supply the 'mcast-interface' option for the '{cmd_name}' command"
        )));
    };
    if !crate::config::valid_ifname(&iface) {
        return Err(UsageError::fail(format!(
            "illegal mcast-interface `{iface}'"
        )));
    }
    let mut p = Params::new(&iface);
    if let Some(n) = syncid {
        p.syncid = n as u8;
    }
    p.maxlen = maxlen.map(|n| n as u16);
    if let Some(g) = group {
        p.group = g;
    }
    if let Some(n) = port {
        p.port = n as u16;
    }
    if let Some(n) = ttl {
        p.ttl = n as u8;
    }
    Ok(Some(Plan::Request {
        req: Request::StartDaemon { role, params: p },
        render: Render::Nothing,
    }))
}

/// `-A`/`-E`: ipvsadm sends the whole service, so `-E` without `-s` sets wlc again and
/// without `-p` drops persistence.
fn service_config(key: &ServiceKey, v: &Values, pe: bool) -> Result<ServiceConfig, UsageError> {
    if key.port == 0 && v.persistent.is_none() {
        return Err(UsageError::fail(
            "Zero port specified for non-persistent service",
        ));
    }
    if v.ops && key.proto != Protocol::Udp {
        return Err(UsageError::fail(
            "One-Packet Scheduling is only for UDP virtual services",
        ));
    }
    if pe {
        return Err(UsageError::fail(
            "persistence engines (--pe) are not supported",
        ));
    }
    let scheduler = match &v.scheduler {
        None => Scheduler::DEFAULT,
        // ipvsadm passes the name on and the kernel refuses it with this libipvs message.
        Some(s) => s
            .parse()
            .map_err(|_| UsageError::refused("Scheduler or persistence engine not found"))?,
    };
    Ok(ServiceConfig {
        key: *key,
        scheduler,
        sched_flags: SchedFlags(v.sched_flags),
        persistence: v.persistent.map(|timeout| Persistence {
            timeout,
            netmask: v.netmask.unwrap_or(Netmask::host(key.is_v6())),
        }),
        ops: v.ops,
        tunnel_source: None,
    })
}

/// `-a`/`-e`: ipvsadm sends the whole destination (`-e` without `-w` sets weight 1 again);
/// with gatewaying or tunnelling the real server's port is the service's, whatever `-r` says.
fn dest_config(
    key: &ServiceKey,
    v: &Values,
    counts: &[usize; opt::COUNT],
) -> Result<DestConfig, UsageError> {
    let (addr, port) = v
        .server
        .ok_or_else(|| UsageError::fail("You need to supply the 'real-server' option"))?;
    // IPVS keeps a service's real servers in its family; the kernel's refusal, in libipvs's
    // words.
    if addr.is_ipv6() != key.is_v6() {
        return Err(UsageError::refused(model::AF_MISMATCH));
    }
    let port = if v.forward == Forward::Nat {
        port
    } else {
        key.port
    };
    let tunnel_opts = opt::TUN_TYPE..opt::COUNT;
    if counts[tunnel_opts.clone()].iter().any(|&n| n > 0) && v.forward != Forward::Tun {
        return Err(UsageError::fail(
            "Tunnel options conflict with forward method",
        ));
    }
    if v.gue {
        return Err(UsageError::fail(
            "GUE tunnels (--tun-type gue) are not supported",
        ));
    }
    // Only IPIP tunnels remain, and IPIP takes no tunnel options.
    if let Some(j) = tunnel_opts.skip(1).find(|&j| counts[j] > 0) {
        return Err(UsageError::fail(format!(
            "Illegal '{}' option with the 'ipip' tunnel type",
            OPT_NAMES[j]
        )));
    }
    Ok(DestConfig {
        addr,
        port,
        forward: v.forward,
        weight: v.weight,
        u_threshold: v.u_threshold,
        l_threshold: v.l_threshold,
    })
}

/// The listing layout; ipvsadm's `print_title` picks the first of these that was given.
fn list_view(a: &IpvsArgs) -> ListView {
    if a.stats > 0 {
        ListView::Stats
    } else if a.rate > 0 {
        ListView::Rate
    } else if a.thresholds > 0 {
        ListView::Thresholds
    } else if a.persistent_conn > 0 {
        ListView::PersistentConn
    } else if a.tun_info > 0 {
        ListView::TunInfo
    } else {
        ListView::Default
    }
}

// ---------------------------------------------------------------------------------------------
// -R

/// One line of a restore file, parsed with the same options as the command line.
#[derive(Parser)]
#[command(
    no_binary_name = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
struct RestoreLine {
    #[command(flatten)]
    args: IpvsArgs,
}

/// Parses `-R` input: one ipvsadm command per line as `-S` prints them. Blank lines are
/// skipped, `#` starts a comment, and the word `ipvsadm` is ignored (as ipvsadm does, so
/// `ipvsadm -A …` lines work). Only table edits can be restored. On error, returns the
/// 1-based line number with ipvsadm's message.
pub fn parse_restore(input: &str) -> Result<Vec<Op>, (usize, UsageError)> {
    parse_restore_with(input, Names::system())
}

fn parse_restore_with(input: &str, names: &Names) -> Result<Vec<Op>, (usize, UsageError)> {
    let mut ops = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let words: Vec<&str> = line
            .split([' ', '\t', '\r'])
            .filter(|w| !w.is_empty())
            .take_while(|w| !w.starts_with('#'))
            .filter(|w| *w != "ipvsadm")
            .collect();
        if words.is_empty() {
            continue;
        }
        let at = |e| (i + 1, e);
        let args = RestoreLine::try_parse_from(words.iter().copied())
            .map_err(|e| at(clap_error(&e)))?
            .args;
        match plan_with(&args, names).map_err(at)? {
            Plan::Request {
                req: Request::Ops(mut o),
                ..
            } => ops.append(&mut o),
            // ipvsadm refuses to nest -R.
            Plan::Restore => {
                return Err(at(UsageError::try_help(
                    "-R cannot be used in restore input",
                )));
            }
            _ => {
                return Err(at(UsageError::fail(
                    "only table edits (-A, -E, -D, -C, -a, -e, -d) can be restored",
                )));
            }
        }
    }
    Ok(ops)
}

/// clap's first line without its `error: ` prefix. ipvsadm's own parser (popt) fails such
/// lines with status 255.
fn clap_error(e: &clap::Error) -> UsageError {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    UsageError::refused(first.strip_prefix("error: ").unwrap_or(first))
}

// ---------------------------------------------------------------------------------------------
// Listings.

/// Prints the daemon's answer as `render` says, or returns the daemon's error message (exit
/// with [`Render::error_exit_code`]).
pub fn render_response(resp: &Response, render: &Render) -> Result<String, String> {
    match (render, resp) {
        (_, Response::Error(e)) => Err(e.clone()),
        (Render::Nothing, Response::Ok) => Ok(String::new()),
        (Render::List(f), Response::Snapshot(s)) => Ok(render_list(s, f)),
        (Render::Conns(f), Response::Conns(c)) => Ok(render_conns(c, f)),
        (Render::Timeouts { json: true }, Response::Timeouts(t)) => Ok(to_json(t)),
        (Render::Timeouts { json: false }, Response::Timeouts(t)) => Ok(render_timeouts(t)),
        (Render::Daemon { json: true }, Response::Daemons(d)) => Ok(to_json(d)),
        (Render::Daemon { json: false }, Response::Daemons(d)) => Ok(crate::sync::list_daemon(d)),
        _ => Err("unexpected answer from the daemon".into()),
    }
}

/// `-L`, `-S` and their variants, or the (sorted) snapshot as JSON.
pub fn render_list(snapshot: &Snapshot, fmt: &ListFormat) -> String {
    render_list_with(snapshot, fmt, names_for(fmt.numeric))
}

/// `-Lc`: ipvsadm's `list_conn`.
pub fn render_conns(conns: &[ConnView], fmt: &ListFormat) -> String {
    render_conns_with(conns, fmt, names_for(fmt.numeric))
}

/// `-L --timeout`.
pub fn render_timeouts(t: &Timeouts) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        t.tcp, t.tcpfin, t.udp
    )
}

fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    // Plain structs with string keys: serializing cannot fail.
    let mut s = serde_json::to_string_pretty(v).expect("API types serialize to JSON");
    s.push('\n');
    s
}

fn names_for(numeric: bool) -> &'static Names {
    static NONE: Names = Names::NONE;
    if numeric { &NONE } else { Names::system() }
}

/// Services as libipvs `ipvs_cmp_services` orders them (family, IPv4 first; protocol,
/// address, port) and each one's destinations as `ipvs_cmp_dests` (address, port), unless
/// `--nosort`.
fn ordered(snapshot: &Snapshot, nosort: bool) -> Snapshot {
    let mut s = snapshot.clone();
    if !nosort {
        s.services
            .sort_by_key(|v| (v.config.key.is_v6(), v.config.key));
        for v in &mut s.services {
            v.dests.sort_by_key(|d| (d.config.addr, d.config.port));
        }
    }
    s
}

fn render_list_with(snapshot: &Snapshot, fmt: &ListFormat, names: &Names) -> String {
    let snapshot = ordered(snapshot, fmt.nosort);
    if fmt.json {
        return to_json(&snapshot);
    }
    let mut out = String::new();
    if !fmt.single_service && fmt.view != ListView::Rules {
        let _ = writeln!(
            out,
            "IP Virtual Server version {IPVS_VERSION} (size={})",
            snapshot.conn_table_size
        );
    }
    out.push_str(&title(fmt.view));
    for s in &snapshot.services {
        service_entry(&mut out, s, fmt, names);
    }
    out
}

/// ipvsadm's `print_title`.
fn title(view: ListView) -> String {
    const PROT: &str = "Prot LocalAddress:Port";
    const REMOTE: &str = "  -> RemoteAddress:Port";
    match view {
        ListView::Stats => format!(
            "{PROT:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n{REMOTE}\n",
            "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
        ),
        ListView::Rate => format!(
            "{PROT:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n{REMOTE}\n",
            "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        ),
        ListView::Thresholds => format!(
            "{PROT:<33} {:<10} {:<10} {:<10} {:<10}\n{REMOTE}\n",
            "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
        ),
        ListView::PersistentConn => format!(
            "{PROT:<33} {:<9} {:<11} {:<10} {:<10}\n{REMOTE}\n",
            "Weight", "PersistConn", "ActiveConn", "InActConn"
        ),
        ListView::TunInfo => format!(
            "{PROT} Scheduler Flags\n{REMOTE}           Forward TunnelInfo    Weight ActiveConn InActConn\n"
        ),
        ListView::Default => format!(
            "{PROT} Scheduler Flags\n{REMOTE}           Forward Weight ActiveConn InActConn\n"
        ),
        ListView::Rules => String::new(),
    }
}

/// ipvsadm's `print_service_entry`: the service line, then its destinations.
fn service_entry(out: &mut String, s: &ServiceView, fmt: &ListFormat, names: &Names) {
    let c = &s.config;
    let k = c.key;
    let vname = addrport(k.addr, k.port, Some(k.proto), fmt.numeric, names);
    let svc_name = if fmt.view == ListView::Rules {
        format!("{} {vname}", k.proto.flag())
    } else {
        let mut n = format!("{:<4} {vname}", k.proto.label());
        // ipvsadm cuts an IPv4 service's name to its column, never an IPv6 one's.
        if !k.is_v6() {
            truncate(&mut n, 33);
        }
        n
    };
    // `mask 255.255.255.0` / `-M 64`: only when not one client per template.
    let persist_mask = |p: &Persistence| (!p.netmask.is_host()).then_some(p.netmask);
    match fmt.view {
        ListView::Rules => {
            let _ = write!(out, "-A {svc_name} -s {}", c.scheduler);
            if let Some(p) = &c.persistence {
                let _ = write!(out, " -p {}", p.timeout);
                if let Some(m) = persist_mask(p) {
                    let _ = write!(out, " -M {m}");
                }
            }
            if c.ops {
                out.push_str(" -o");
            }
            if has_sched_flags(c) {
                let _ = write!(out, " -b {}", sched_flags_text(c));
            }
        }
        ListView::Stats => {
            let _ = write!(out, "{svc_name:<33}");
            let st = &s.stats;
            for n in [st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes] {
                largenum(out, n, fmt.exact);
            }
        }
        ListView::Rate => {
            let _ = write!(out, "{svc_name:<33}");
            let r = &s.rates;
            for n in [r.cps, r.inpps, r.outpps, r.inbps, r.outbps] {
                largenum(out, n, fmt.exact);
            }
        }
        _ => {
            let _ = write!(out, "{svc_name} {}", c.scheduler);
            if has_sched_flags(c) {
                let _ = write!(out, " ({})", sched_flags_text(c));
            }
            if let Some(p) = &c.persistence {
                let _ = write!(out, " persistent {}", p.timeout);
                if let Some(m) = persist_mask(p) {
                    let _ = write!(out, " mask {m}");
                }
            }
            if c.ops {
                out.push_str(" ops");
            }
        }
    }
    out.push('\n');
    for d in &s.dests {
        dest_entry(out, &svc_name, k.proto, d, fmt, names);
    }
}

fn dest_entry(
    out: &mut String,
    svc_name: &str,
    proto: Protocol,
    d: &DestView,
    fmt: &ListFormat,
    names: &Names,
) {
    let c = &d.config;
    let mut dname = addrport(c.addr, c.port, Some(proto), fmt.numeric, names);
    // As ipvsadm: an IPv4 name is cut to its column, an IPv6 one overflows it.
    if fmt.view != ListView::Rules && c.addr.is_ipv4() {
        truncate(&mut dname, 28);
    }
    let (act, inact) = (d.active_conns, d.inact_conns);
    let _ = match fmt.view {
        ListView::Rules => {
            // ipvsadm 1.31 names the tunnel type of every tunnel destination.
            let tun = if c.forward == Forward::Tun {
                " --tun-type ipip"
            } else {
                ""
            };
            writeln!(
                out,
                "-a {svc_name} -r {dname} {} -w {}{tun}",
                c.forward.flag(),
                c.weight
            )
        }
        ListView::Stats => {
            let _ = write!(out, "  -> {dname:<28}");
            let st = &d.stats;
            for n in [st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes] {
                largenum(out, n, fmt.exact);
            }
            writeln!(out)
        }
        ListView::Rate => {
            let r = &d.rates;
            let _ = write!(
                out,
                "  -> {dname:<28} {:>8} {:>8} {:>8}",
                r.cps, r.inpps, r.outpps
            );
            largenum(out, r.inbps, fmt.exact);
            largenum(out, r.outbps, fmt.exact);
            writeln!(out)
        }
        ListView::Thresholds => writeln!(
            out,
            "  -> {dname:<28} {:<10} {:<10} {act:<10} {inact:<10}",
            c.u_threshold, c.l_threshold
        ),
        ListView::PersistentConn => writeln!(
            out,
            "  -> {dname:<28} {:<9} {:<11} {act:<10} {inact:<10}",
            c.weight, d.persist_conns
        ),
        ListView::TunInfo => {
            let info = if c.forward == Forward::Tun {
                "ipip"
            } else {
                "n/a"
            };
            writeln!(
                out,
                "  -> {dname:<28} {:<7} {info:<13} {:<6} {act:<10} {inact:<10}",
                c.forward.label(),
                c.weight
            )
        }
        ListView::Default => writeln!(
            out,
            "  -> {dname:<28} {:<7} {:<6} {act:<10} {inact:<10}",
            c.forward.label(),
            c.weight
        ),
    };
}

/// ipvsadm's `print_largenum`: nine columns, scaled to K/M/G/T unless `--exact`.
fn largenum(out: &mut String, n: u64, exact: bool) {
    let _ = if exact {
        let width = n.to_string().len().max(8) + 1;
        write!(out, "{n:>width$}")
    } else if n < 100_000_000 {
        write!(out, "{n:>9}")
    } else if n < 1_000_000_000 {
        write!(out, "{:>8}K", n / 1_000)
    } else if n < 100_000_000_000 {
        write!(out, "{:>8}M", n / 1_000_000)
    } else if n < 100_000_000_000_000 {
        write!(out, "{:>8}G", n / 1_000_000_000)
    } else {
        write!(out, "{:>8}T", n / 1_000_000_000_000)
    };
}

fn render_conns_with(conns: &[ConnView], fmt: &ListFormat, names: &Names) -> String {
    if fmt.json {
        return to_json(conns);
    }
    let mut out = String::from("IPVS connection entries\n");
    let _ = if fmt.view == ListView::PersistentConn {
        writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} {:<18} {:<16} pe_data",
            "state", "source", "virtual", "destination", "pe name"
        )
    } else {
        writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} destination",
            "state", "source", "virtual"
        )
    };
    for c in conns {
        let proto = match c.proto.as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        };
        let name = |a: &SocketAddr| addrport(a.ip(), a.port(), proto, fmt.numeric, names);
        let expire = format!("{:02}:{:02}", c.expire_secs / 60, c.expire_secs % 60);
        // Without persistence engines there is no pe data, and ipvsadm prints such entries in
        // the short form even under --persistent-conn.
        let _ = writeln!(
            out,
            "{:<3} {expire:<6} {:<11} {:<18} {:<18} {}",
            c.proto,
            c.state,
            name(&c.client),
            name(&c.virtual_addr),
            name(&c.dest)
        );
    }
    out
}

/// ipvsadm's `addrport_to_anyname` (its 60-byte buffer included): `addr:port`, an IPv6
/// address in brackets. ipvsadm never finds a host name for an IPv6 address (it asks
/// `gethostbyaddr` with an IPv4 length), so it prints those numerically even without `-n`.
fn addrport(
    addr: IpAddr,
    port: u16,
    proto: Option<Protocol>,
    numeric: bool,
    names: &Names,
) -> String {
    let mut s = if numeric {
        model::addr_port(addr, port)
    } else {
        let host = match addr {
            IpAddr::V4(a) => names
                .addr_to_host(a)
                .map_or_else(|| a.to_string(), str::to_owned),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let serv = proto
            .and_then(|p| names.port_to_service(port, p))
            .map_or_else(|| port.to_string(), str::to_owned);
        format!("{host}:{serv}")
    };
    truncate(&mut s, 59);
    s
}

/// Cuts `s` to at most `max` bytes as ipvsadm's fixed buffers do (never inside a character).
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let at = s.floor_char_boundary(max);
        s.truncate(at);
    }
}

// ---------------------------------------------------------------------------------------------
// Names.

/// Host and service names: `/etc/hosts` and `/etc/services` (both ways), plus the system
/// resolver for names typed on the command line.
struct Names {
    /// (address, canonical name then aliases), in file order.
    hosts: Vec<(Ipv4Addr, Vec<String>)>,
    /// (port, protocol, name then aliases), in file order.
    services: Vec<(u16, String, Vec<String>)>,
    /// Ask the system resolver (DNS) for host names not in `hosts`.
    resolve: bool,
}

impl Names {
    /// No names: `-n` listings.
    const NONE: Names = Names {
        hosts: Vec::new(),
        services: Vec::new(),
        resolve: false,
    };

    fn system() -> &'static Names {
        static NAMES: OnceLock<Names> = OnceLock::new();
        NAMES.get_or_init(|| {
            let read = |p| std::fs::read_to_string(p).unwrap_or_default();
            Names {
                resolve: true,
                ..Names::parse(&read("/etc/hosts"), &read("/etc/services"))
            }
        })
    }

    fn parse(hosts: &str, services: &str) -> Names {
        let entries = |text: &str| -> Vec<Vec<String>> {
            text.lines()
                .map(|l| l.split('#').next().unwrap_or_default())
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .filter(|w| w.len() >= 2)
                .collect()
        };
        let hosts = entries(hosts)
            .into_iter()
            .filter_map(|mut w| {
                let addr = w.remove(0).parse().ok()?;
                Some((addr, w))
            })
            .collect();
        let services = entries(services)
            .into_iter()
            .filter_map(|mut w| {
                let (port, proto) = w
                    .remove(1)
                    .split_once('/')
                    .map(|(p, q)| (p.parse().ok(), q.to_owned()))?;
                Some((port?, proto, w))
            })
            .collect();
        Names {
            hosts,
            services,
            resolve: false,
        }
    }

    /// gethostbyname: the hosts file (names compare without case), then the resolver.
    fn host_to_addr(&self, name: &str) -> Option<Ipv4Addr> {
        if name.is_empty() {
            return None;
        }
        let listed = self
            .hosts
            .iter()
            .find(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
            .map(|(a, _)| *a);
        listed.or_else(|| {
            self.resolve
                .then(|| (name, 0).to_socket_addrs().ok())
                .flatten()?
                .find_map(|a| match a {
                    SocketAddr::V4(a) => Some(*a.ip()),
                    SocketAddr::V6(_) => None,
                })
        })
    }

    /// gethostbyaddr, from the hosts file only: the first line's canonical name.
    fn addr_to_host(&self, addr: Ipv4Addr) -> Option<&str> {
        self.hosts
            .iter()
            .find(|(a, _)| *a == addr)
            .and_then(|(_, names)| names.first())
            .map(String::as_str)
    }

    /// getservbyname: a service name or alias of `proto`.
    fn service_to_port(&self, name: &str, proto: Protocol) -> Option<u16> {
        let proto = proto_name(proto);
        self.services
            .iter()
            .find(|(_, p, names)| p == proto && names.iter().any(|n| n == name))
            .map(|(port, _, _)| *port)
    }

    /// getservbyport: the first entry's name.
    fn port_to_service(&self, port: u16, proto: Protocol) -> Option<&str> {
        let proto = proto_name(proto);
        self.services
            .iter()
            .find(|(p, q, _)| *p == port && q == proto)
            .and_then(|(_, _, names)| names.first())
            .map(String::as_str)
    }
}

/// The protocol as `/etc/services` names it.
fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Subcommand};

    use super::*;
    use crate::{
        api::{RateView, StatsView},
        model::Model,
    };

    /// lb-ctl's top level as main.rs builds it: ipvsadm options flattened next to subcommands
    /// and a global `--socket`.
    #[derive(Parser, Debug)]
    #[command(version)]
    struct Top {
        #[arg(long, global = true)]
        socket: Option<String>,
        #[command(subcommand)]
        sub: Option<Sub>,
        #[command(flatten)]
        ipvs: IpvsArgs,
    }

    #[derive(Subcommand, Debug, PartialEq)]
    enum Sub {
        Daemon {
            #[arg(short, long)]
            interface: Vec<String>,
            #[arg(short, long)]
            config: Option<String>,
        },
        Check,
        Stop,
    }

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: IpvsArgs,
    }

    const HOSTS: &str = "127.0.0.1 localhost\n\
        198.51.100.135 vip.example vip # the VIP\n\
        198.51.100.131 rs1.example rs1\n\
        198.51.100.132 a-very-long-host-name.example.com\n";
    const SERVICES: &str = "# services\n\
        http 80/tcp www # WorldWideWeb\n\
        http 80/udp\n\
        domain 53/tcp\n\
        domain 53/udp\n\
        https 443/tcp\n";

    fn names() -> Names {
        Names::parse(HOSTS, SERVICES)
    }

    fn args(v: &[&str]) -> IpvsArgs {
        match T::try_parse_from(std::iter::once("lb-ctl").chain(v.iter().copied())) {
            Ok(t) => t.a,
            Err(e) => panic!("{v:?} does not parse: {e}"),
        }
    }

    pub(super) fn plan_of(v: &[&str]) -> Result<Plan, UsageError> {
        plan_with(&args(v), &names())
    }

    fn ok(v: &[&str]) -> Plan {
        plan_of(v).unwrap_or_else(|e| panic!("{v:?}: {e}"))
    }

    /// The single op of a table edit.
    fn op(v: &[&str]) -> Op {
        match ok(v) {
            Plan::Request {
                req: Request::Ops(ops),
                render: Render::Nothing,
            } if ops.len() == 1 => ops[0].clone(),
            p => panic!("{v:?}: not one op: {p:?}"),
        }
    }

    fn err(v: &[&str]) -> UsageError {
        match plan_of(v) {
            Err(e) => e,
            Ok(p) => panic!("{v:?} accepted: {p:?}"),
        }
    }

    pub(super) fn msg(v: &[&str]) -> String {
        let e = err(v);
        assert_eq!(e.exit_code(), EXIT_USAGE, "{v:?}: {e}");
        assert!(!e.shows_try_help());
        e.to_string()
    }

    fn key(proto: Protocol, a: [u8; 4], port: u16) -> ServiceKey {
        ServiceKey {
            proto,
            addr: Ipv4Addr::from(a).into(),
            port,
        }
    }

    const VIP: [u8; 4] = [198, 51, 100, 135];
    const RIP: [u8; 4] = [198, 51, 100, 131];

    fn svc(k: ServiceKey, scheduler: Scheduler) -> ServiceConfig {
        ServiceConfig {
            key: k,
            scheduler,
            sched_flags: SchedFlags::default(),
            persistence: None,
            ops: false,
            tunnel_source: None,
        }
    }

    fn dest(a: [u8; 4], port: u16, forward: Forward, weight: u32) -> DestConfig {
        DestConfig {
            addr: Ipv4Addr::from(a).into(),
            port,
            forward,
            weight,
            u_threshold: 0,
            l_threshold: 0,
        }
    }

    fn list(fmt: ListFormat, service: Option<ServiceKey>) -> Plan {
        Plan::Request {
            req: Request::List { service },
            render: Render::List(fmt),
        }
    }

    // --- clap -----------------------------------------------------------------------------

    #[test]
    fn clap_definitions_are_consistent() {
        T::command().debug_assert();
        Top::command().debug_assert();
        RestoreLine::command().debug_assert();
    }

    #[test]
    fn flattened_next_to_subcommands() {
        let t = Top::try_parse_from(["lb-ctl", "--socket", "/tmp/s", "-Ln"]).expect("parses");
        assert_eq!((t.ipvs.list, t.ipvs.numeric, t.sub), (1, 1, None));
        let t = Top::try_parse_from(["lb-ctl", "daemon", "-i", "eth0", "-c", "/etc/lb.toml"])
            .expect("parses");
        assert_eq!(t.ipvs, IpvsArgs::default());
        assert!(matches!(t.sub, Some(Sub::Daemon { .. })));
        let t = Top::try_parse_from(["lb-ctl"]).expect("parses");
        assert_eq!(t.ipvs, IpvsArgs::default());
    }

    #[test]
    fn combined_short_options() {
        let a = args(&["-lnc"]);
        assert_eq!((a.list, a.numeric, a.connection), (1, 1, 1));
        let a = args(&["-Lnc"]);
        assert_eq!((a.list, a.numeric, a.connection), (1, 1, 1));
        let a = args(&["-At", "192.0.2.1:80", "-s", "rr"]);
        assert_eq!(
            (a.add_service, a.tcp_service.as_slice()),
            (1, &["192.0.2.1:80".to_owned()][..])
        );
        let a = args(&["-p", "-M", "255.255.255.0"]);
        assert_eq!(a.persistent, [NO_VALUE]);
        let a = args(&["-p60"]);
        assert_eq!(a.persistent, ["60"]);
    }

    // --- the seed commands ----------------------------------------------------------------

    /// A command line without empty arguments, split at white space.
    pub(super) fn words(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    /// Each line gives its single op.
    fn ops_are(cases: &[(&str, Op)]) {
        for (line, want) in cases {
            assert_eq!(&op(&words(line)), want, "{line}");
        }
    }

    #[test]
    fn add_edit_delete_service() {
        let k = key(Protocol::Tcp, VIP, 80);
        ops_are(&[
            (
                "-A -t 198.51.100.135:80 -s rr",
                Op::AddService(svc(k, Scheduler::Rr)),
            ),
            (
                "-At 198.51.100.135:80 -s rr",
                Op::AddService(svc(k, Scheduler::Rr)),
            ),
            (
                "-E -t 198.51.100.135:80 -s wrr",
                Op::EditService(svc(k, Scheduler::Wrr)),
            ),
            // ipvsadm -E sends the whole service: without -s it is wlc again.
            (
                "-E -t 198.51.100.135:80",
                Op::EditService(svc(k, Scheduler::Wlc)),
            ),
            (
                "--add-service --tcp-service 198.51.100.135:80",
                Op::AddService(svc(k, Scheduler::Wlc)),
            ),
            ("-D -t 198.51.100.135:80", Op::DelService(k)),
            ("-C", Op::Clear),
            ("--clear", Op::Clear),
        ]);
    }

    #[test]
    fn persistence_and_flags() {
        let k = key(Protocol::Tcp, VIP, 80);
        assert_eq!(
            op(&[
                "-A",
                "-t",
                "198.51.100.135:80",
                "-s",
                "wrr",
                "-p",
                "60",
                "-M",
                "255.255.255.0"
            ]),
            Op::AddService(ServiceConfig {
                persistence: Some(Persistence {
                    timeout: 60,
                    netmask: Ipv4Addr::new(255, 255, 255, 0).into()
                }),
                ..svc(k, Scheduler::Wrr)
            })
        );
        // -p without a value: 300 s, and a port-0 service is fine when persistent.
        assert_eq!(
            op(&["-A", "-t", "198.51.100.135", "-p"]),
            Op::AddService(ServiceConfig {
                persistence: Some(Persistence {
                    timeout: 300,
                    netmask: Ipv4Addr::BROADCAST.into()
                }),
                ..svc(key(Protocol::Tcp, VIP, 0), Scheduler::Wlc)
            })
        );
        // -M without -p is accepted and has no effect.
        assert_eq!(
            op(&["-A", "-t", "198.51.100.135:80", "-M", "255.255.0.0"]),
            Op::AddService(svc(k, Scheduler::Wlc))
        );
        let u = key(Protocol::Udp, VIP, 53);
        assert_eq!(
            op(&["-A", "-u", "198.51.100.135:53", "-s", "rr", "-o"]),
            Op::AddService(ServiceConfig {
                ops: true,
                tunnel_source: None,
                ..svc(u, Scheduler::Rr)
            })
        );
        let flags = |v: &[&str]| match op(v) {
            Op::AddService(c) => c.sched_flags.0,
            o => panic!("{o:?}"),
        };
        let base = ["-A", "-t", "198.51.100.135:80"];
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        assert_eq!(
            flags(&with(&["-s", "sh", "-b", "sh-fallback,sh-port"])),
            SchedFlags::FLAG1 | SchedFlags::FLAG2
        );
        assert_eq!(
            flags(&with(&["-s", "mh", "-b", "mh-port"])),
            SchedFlags::FLAG2
        );
        assert_eq!(
            flags(&with(&["-s", "mh", "-b", "mh-fallback"])),
            SchedFlags::FLAG1
        );
        assert_eq!(flags(&with(&["-b", "flag-3"])), SchedFlags::FLAG3);
        assert_eq!(flags(&with(&["-s", "rr", "-b", "flag-1,flag-2"])), 0x18);
        assert_eq!(flags(&with(&["-b", ""])), 0);
    }

    #[test]
    fn add_edit_delete_server() {
        let k = key(Protocol::Tcp, VIP, 80);
        let u = key(Protocol::Udp, VIP, 53);
        let rip = IpAddr::from(Ipv4Addr::from(RIP));
        ops_are(&[
            (
                "-a -t 198.51.100.135:80 -r 198.51.100.131:80 -g -w 1",
                Op::AddDest(k, dest(RIP, 80, Forward::Dr, 1)),
            ),
            // Defaults: -g, weight 1, the service's port.
            (
                "-a -t 198.51.100.135:80 -r 198.51.100.131",
                Op::AddDest(k, dest(RIP, 80, Forward::Dr, 1)),
            ),
            (
                "-a -t 198.51.100.135:80 -r 198.51.100.131:8080 -m -w 2",
                Op::AddDest(k, dest(RIP, 8080, Forward::Nat, 2)),
            ),
            // Gatewaying and tunnelling keep the service's port, whatever -r says.
            (
                "-a -t 198.51.100.135:80 -r 198.51.100.131:8080 -g",
                Op::AddDest(k, dest(RIP, 80, Forward::Dr, 1)),
            ),
            (
                "-a -t 198.51.100.135:80 -r 198.51.100.131:8080 -i -w 0",
                Op::AddDest(k, dest(RIP, 80, Forward::Tun, 0)),
            ),
            (
                "-a -t 198.51.100.135:80 -r 198.51.100.131 -i --tun-type ipip",
                Op::AddDest(k, dest(RIP, 80, Forward::Tun, 1)),
            ),
            (
                "-a -t 198.51.100.135:80 -r 198.51.100.131 -x 100 -y 10",
                Op::AddDest(
                    k,
                    DestConfig {
                        u_threshold: 100,
                        l_threshold: 10,
                        ..dest(RIP, 80, Forward::Dr, 1)
                    },
                ),
            ),
            (
                "-e -t 198.51.100.135:80 -r 198.51.100.131:80 -w 5",
                Op::EditDest(k, dest(RIP, 80, Forward::Dr, 5)),
            ),
            (
                "-d -t 198.51.100.135:80 -r 198.51.100.131:80",
                Op::DelDest(k, rip, 80),
            ),
            // -d does not force the port: a masqueraded server on another port can be deleted.
            (
                "-d -t 198.51.100.135:80 -r 198.51.100.131:8080",
                Op::DelDest(k, rip, 8080),
            ),
            (
                "-a -u 198.51.100.135:53 -r 198.51.100.131",
                Op::AddDest(u, dest(RIP, 53, Forward::Dr, 1)),
            ),
        ]);
    }

    #[test]
    fn listings() {
        let numeric = ListFormat {
            numeric: true,
            ..ListFormat::default()
        };
        assert_eq!(ok(&["-Ln"]), list(numeric, None));
        assert_eq!(ok(&["-l", "--numeric"]), list(numeric, None));
        assert_eq!(ok(&[]), list(ListFormat::default(), None));
        assert_eq!(ok(&["-L"]), list(ListFormat::default(), None));
        let conns = Plan::Request {
            req: Request::Conns,
            render: Render::Conns(numeric),
        };
        assert_eq!(ok(&["-lnc"]), conns);
        assert_eq!(ok(&["-Lnc"]), conns);
        let stats = ListFormat {
            view: ListView::Stats,
            ..numeric
        };
        assert_eq!(ok(&["-Ln", "--stats"]), list(stats, None));
        assert_eq!(ok(&["-L", "-n", "--stats"]), list(stats, None));
        // --stats wins over --rate, as in ipvsadm's print_title.
        assert_eq!(ok(&["-Ln", "--rate", "--stats"]), list(stats, None));
        let rate_exact = ListFormat {
            view: ListView::Rate,
            exact: true,
            nosort: true,
            ..ListFormat::default()
        };
        assert_eq!(
            ok(&["-L", "--rate", "-X", "--nosort", "--sort"]),
            list(rate_exact, None)
        );
        let view = |v: &[&str]| match ok(v) {
            Plan::Request {
                render: Render::List(f),
                ..
            } => f.view,
            p => panic!("{p:?}"),
        };
        assert_eq!(view(&["-L", "--thresholds"]), ListView::Thresholds);
        assert_eq!(view(&["-L", "--persistent-conn"]), ListView::PersistentConn);
        assert_eq!(view(&["-L", "--tun-info"]), ListView::TunInfo);

        let one = ListFormat {
            single_service: true,
            numeric: true,
            ..ListFormat::default()
        };
        assert_eq!(
            ok(&["-Ln", "-t", "198.51.100.135:80"]),
            list(one, Some(key(Protocol::Tcp, VIP, 80)))
        );
        assert_eq!(
            ok(&["-L", "--timeout"]),
            Plan::Request {
                req: Request::GetTimeouts,
                render: Render::Timeouts { json: false }
            }
        );
        assert_eq!(
            ok(&["-L", "--daemon"]),
            Plan::Request {
                req: Request::ListDaemon,
                render: Render::Daemon { json: false }
            }
        );
        assert_eq!(
            ok(&["-L", "--daemon", "-o", "json"]),
            Plan::Request {
                req: Request::ListDaemon,
                render: Render::Daemon { json: true }
            }
        );
        let rules = ListFormat {
            view: ListView::Rules,
            ..ListFormat::default()
        };
        assert_eq!(ok(&["-S"]), list(rules, None));
        assert_eq!(
            ok(&["-S", "-n"]),
            list(
                ListFormat {
                    numeric: true,
                    ..rules
                },
                None
            )
        );
        assert_eq!(ok(&["-R"]), Plan::Restore);
    }

    #[test]
    fn json_output() {
        let json = ListFormat {
            json: true,
            numeric: true,
            ..ListFormat::default()
        };
        assert_eq!(ok(&["-Ln", "-o", "json"]), list(json, None));
        assert_eq!(ok(&["-Ln", "-ojson"]), list(json, None));
        assert_eq!(
            ok(&["-Lnc", "-o", "json"]),
            Plan::Request {
                req: Request::Conns,
                render: Render::Conns(json)
            }
        );
        assert_eq!(
            ok(&["-L", "--timeout", "-o", "json"]),
            Plan::Request {
                req: Request::GetTimeouts,
                render: Render::Timeouts { json: true }
            }
        );
        assert_eq!(
            msg(&["-A", "-u", "198.51.100.135:53", "-o", "json"]),
            "-o json is only for listings (-L, -l, -S)"
        );
        assert!(msg(&["-L", "-o", "yaml"]).starts_with("invalid output format `yaml'"));
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            ok(&["--set", "900", "120", "300"]),
            Plan::Request {
                req: Request::SetTimeouts(Timeouts {
                    tcp: 900,
                    tcpfin: 120,
                    udp: 300
                }),
                render: Render::Nothing
            }
        );
        assert_eq!(
            ok(&["-Z"]),
            Plan::Request {
                req: Request::Zero { service: None },
                render: Render::Nothing
            }
        );
        assert_eq!(
            ok(&["-Z", "-u", "198.51.100.135:53"]),
            Plan::Request {
                req: Request::Zero {
                    service: Some(key(Protocol::Udp, VIP, 53))
                },
                render: Render::Nothing
            }
        );
    }

    #[test]
    fn names_on_the_command_line() {
        // Host and service names (and aliases), as getservbyname/gethostbyname would.
        assert_eq!(
            op(&["-a", "-t", "vip.example:www", "-r", "RS1:http", "-m"]),
            Op::AddDest(key(Protocol::Tcp, VIP, 80), dest(RIP, 80, Forward::Nat, 1))
        );
        assert_eq!(
            op(&["-D", "-u", "vip:domain"]),
            Op::DelService(key(Protocol::Udp, VIP, 53))
        );
        // https is a TCP name only.
        assert_eq!(
            msg(&["-D", "-u", "vip:https"]),
            "illegal virtual server address[:port] specified"
        );
        // inet_aton forms.
        assert_eq!(
            op(&["-D", "-t", "10.1:80"]),
            Op::DelService(key(Protocol::Tcp, [10, 0, 0, 1], 80))
        );
    }

    // --- errors ---------------------------------------------------------------------------

    #[test]
    fn legality_table_messages() {
        let vip = "198.51.100.135:80";
        let rip = "198.51.100.131";
        assert_eq!(
            msg(&["-A", "-t", vip, "-r", rip]),
            "Illegal 'real-server' option with the 'add-service' command"
        );
        assert_eq!(
            msg(&["-A", "-s", "rr"]),
            "You need to supply the 'service-address' option for the 'add-service' command"
        );
        assert_eq!(
            msg(&["-a", "-t", vip]),
            "You need to supply the 'real-server' option for the 'add-server' command"
        );
        // The first offending column wins: scheduler comes before real-server.
        assert_eq!(
            msg(&["-a", "-t", vip, "-s", "rr"]),
            "Illegal 'scheduler' option with the 'add-server' command"
        );
        assert_eq!(
            msg(&["-d", "-t", vip, "-r", rip, "-w", "2"]),
            "Illegal 'weight' option with the 'delete-server' command"
        );
        assert_eq!(
            msg(&["-C", "-n"]),
            "Illegal 'numeric' option with the 'flush' command"
        );
        assert_eq!(
            msg(&["-S", "-t", vip]),
            "Illegal 'service-address' option with the 'save' command"
        );
        assert_eq!(
            msg(&["-S", "--nosort"]),
            "Illegal 'nosort' option with the 'save' command"
        );
        assert_eq!(
            msg(&["-R", "-n"]),
            "Illegal 'numeric' option with the 'restore' command"
        );
        assert_eq!(
            msg(&["--set", "1", "2", "3", "-n"]),
            "Illegal 'numeric' option with the 'set' command"
        );
        assert_eq!(
            msg(&["-Z", "-n"]),
            "Illegal 'numeric' option with the 'zero' command"
        );
        assert_eq!(
            msg(&["-D", "-t", vip, "-s", "rr"]),
            "Illegal 'scheduler' option with the 'delete-service' command"
        );
        assert_eq!(
            msg(&["-E", "-t", vip, "-w", "1"]),
            "Illegal 'weight' option with the 'edit-service' command"
        );
        assert_eq!(
            msg(&["-L", "-c", "-t", vip]),
            "The option 'service-address' conflicts with the 'connection' option in the 'list' command"
        );
        assert_eq!(
            msg(&["-L", "--timeout", "--daemon"]),
            "The option 'daemon' conflicts with the 'timeout' option in the 'list' command"
        );
        assert_eq!(
            msg(&["-L", "-s", "rr"]),
            "Illegal 'scheduler' option with the 'list' command"
        );
        assert_eq!(
            msg(&["-L", "-o"]),
            "Illegal 'ops' option with the 'list' command"
        );
        assert_eq!(
            msg(&["-Lc", "--stats"]),
            "options conflicts in the list command"
        );
        assert_eq!(
            msg(&["-L", "--timeout", "--rate"]),
            "options conflicts in the list command"
        );
        assert_eq!(
            msg(&["-L", "--timeout", "--persistent-conn"]),
            "options conflicts in the list command"
        );
        // ipvsadm 1.31 lists connections with --persistent-conn.
        assert!(plan_of(&["-Lc", "--persistent-conn"]).is_ok());
    }

    #[test]
    fn legality_rows_cover_every_option() {
        use Cmd::*;
        for cmd in [
            Add, Edit, Del, Flush, List, AddDest, DelDest, EditDest, Timeout, Restore, Save, Zero,
        ] {
            let row = cmd.legality();
            assert_eq!(row.len(), opt::COUNT, "{cmd:?}");
            assert!(row.bytes().all(|b| b" x+1".contains(&b)), "{cmd:?}");
        }
    }

    #[test]
    fn commands_count() {
        assert_eq!(
            msg(&["-A", "-L", "-t", "1.2.3.4:80"]),
            "multiple commands specified"
        );
        assert_eq!(msg(&["-LL"]), "multiple commands specified");
        assert_eq!(
            msg(&["-C", "--set", "1", "2", "3"]),
            "multiple commands specified"
        );
        // Options without a command: ipvsadm only prints its "Try … -h" line, exit 255.
        for v in [
            &["-n"][..],
            &["-t", "1.2.3.4:80"],
            &["--sort"],
            &["-o", "json"],
        ] {
            let e = err(v);
            assert!(e.shows_try_help(), "{v:?}");
            assert_eq!(e.exit_code(), EXIT_FAILED);
        }
    }

    #[test]
    fn repeated_options() {
        let vip = "198.51.100.135:80";
        let rip = "198.51.100.131";
        assert_eq!(msg(&["-Lnn"]), "multiple 'numeric' options specified");
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", rip, "-g", "-m"]),
            "multiple 'forwarding-method' options specified"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-u", "198.51.100.135:53"]),
            "multiple 'service-address' options specified"
        );
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", rip, "-w", "1", "-w", "2"]),
            "multiple 'weight' options specified"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-p", "-p", "5"]),
            "multiple 'persistent' options specified"
        );
    }

    /// Every value the CLI refuses that a raw socket request can still carry (a number in
    /// range for its type) is refused by the model with the same message: the daemon, which
    /// only sees the op, answers a script exactly as ipvsadm would.
    #[test]
    fn the_model_refuses_what_the_cli_refuses_with_its_message() {
        let vip = "198.51.100.135:80";
        let rip = "198.51.100.131";
        let k = key(Protocol::Tcp, VIP, 80);
        let persistent = |timeout| ServiceConfig {
            persistence: Some(Persistence {
                timeout,
                netmask: Ipv4Addr::BROADCAST.into(),
            }),
            ..svc(k, Scheduler::Wlc)
        };
        let d = |f: fn(&mut DestConfig)| {
            let mut d = dest(RIP, 80, Forward::Dr, 1);
            f(&mut d);
            d
        };
        let cases: Vec<(Vec<&str>, Op)> = vec![
            (
                vec!["-A", "-t", vip, "-p", "0"],
                Op::AddService(persistent(0)),
            ),
            (
                vec!["-A", "-t", vip, "-p", "2678401"],
                Op::AddService(persistent(2_678_401)),
            ),
            (
                vec!["-A", "-t", "198.51.100.135:0"],
                Op::AddService(svc(key(Protocol::Tcp, VIP, 0), Scheduler::Wlc)),
            ),
            (
                vec!["-A", "-t", vip, "-o"],
                Op::AddService(ServiceConfig {
                    ops: true,
                    ..svc(k, Scheduler::Wlc)
                }),
            ),
            (
                vec!["-a", "-t", vip, "-r", rip, "-w", "65536"],
                Op::AddDest(k, d(|d| d.weight = 65536)),
            ),
            (
                vec!["-a", "-t", vip, "-r", rip, "-x", "2147483648"],
                Op::AddDest(k, d(|d| d.u_threshold = 2_147_483_648)),
            ),
            (
                vec!["-a", "-t", vip, "-r", rip, "-y", "4294967295"],
                Op::AddDest(k, d(|d| d.l_threshold = u32::MAX)),
            ),
        ];
        for (argv, raw) in cases {
            let cli = msg(&argv);
            let mut m = Model::default();
            // A table the dest ops apply to (-A is legal for the service ops' key too: the
            // check comes before the lookup).
            m.apply(&Op::AddService(svc(k, Scheduler::Wlc))).unwrap();
            let before = m.clone();
            let model = m.apply(&raw).map_err(|e| e.to_string());
            assert_eq!(model, Err(cli), "{argv:?} vs the raw {raw:?}");
            assert_eq!(m, before, "{raw:?} refused but changed the table");
        }
        // --set: the daemon's check_timeouts.
        let cli = msg(&["--set", "0", "2678401", "0"]);
        assert_eq!(
            model::check_timeouts(0, 2_678_401, 0).map_err(|e| e.to_string()),
            Err(cli)
        );
        let Plan::Request {
            req: Request::SetTimeouts(t),
            ..
        } = ok(&["--set", "2678400", "0", "1"])
        else {
            panic!("--set is not a SetTimeouts request");
        };
        assert_eq!(model::check_timeouts(t.tcp, t.tcpfin, t.udp), Ok(()));
    }

    #[test]
    fn version_line_has_ipvsadms_layout() {
        // ipvsadm: "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)".
        let v = version_line();
        let words: Vec<&str> = v.split_whitespace().collect();
        assert_eq!(words[0], "lb-ctl");
        assert_eq!(words[1], concat!("v", env!("CARGO_PKG_VERSION")));
        assert!(words[2].starts_with('('), "{v}");
        assert!(v.ends_with(" and IPVS v1.2.1)\n"), "{v:?}");
        assert!(v.contains("ipvsadm v1.31 compatible"), "{v}");
        assert_eq!(v.lines().count(), 1, "{v:?}");
    }

    #[test]
    fn bad_values() {
        let vip = "198.51.100.135:80";
        let rip = "198.51.100.131";
        for w in ["65536", "-1", "abc", "", "1x"] {
            assert_eq!(
                msg(&["-a", "-t", vip, "-r", rip, "-w", w]),
                "illegal weight specified"
            );
        }
        assert!(plan_of(&["-a", "-t", vip, "-r", rip, "-w", "65535"]).is_ok());
        assert!(plan_of(&["-a", "-t", vip, "-r", rip, "-w", " +0"]).is_ok());
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", rip, "-x", "2147483648"]),
            "illegal u_threshold specified"
        );
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", rip, "-y", "-3"]),
            "illegal l_threshold specified"
        );
        // Value errors come before the legality check, as in ipvsadm.
        assert_eq!(
            msg(&["-A", "-t", vip, "-w", "x"]),
            "illegal weight specified"
        );
        for bad in [
            "80",
            "",
            "1.2.3.4:99999",
            "1.2.3.4:",
            "nosuchhost:80",
            "1.2.3.4:nosuchport",
            "1.2.3.256:80",
        ] {
            assert_eq!(
                msg(&["-A", "-t", bad]),
                "illegal virtual server address[:port] specified",
                "{bad}"
            );
        }
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", "rs9"]),
            "illegal real server address[:port] specified"
        );
        assert_eq!(
            msg(&["-A", "-t", "198.51.100.135:0"]),
            "Zero port specified for non-persistent service"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-o"]),
            "One-Packet Scheduling is only for UDP virtual services"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-p", "0"]),
            "invalid timeout value `0' specified"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-p", "2678401"]),
            "invalid timeout value `2678401' specified"
        );
        assert!(plan_of(&["-A", "-t", vip, "-p", "2678400"]).is_ok());
        assert_eq!(
            msg(&["-A", "-t", vip, "-p", "60", "-M", "255.255.255.foo"]),
            "illegal virtual server persistent mask specified"
        );
        assert_eq!(
            msg(&["--set", "1", "2"]),
            "--set option requires 3 timeout values"
        );
        assert_eq!(msg(&["--set"]), "--set option requires 3 timeout values");
        assert_eq!(
            msg(&["--set", "1", "2", "x"]),
            "invalid timeout value `x' specified"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-b", "sh-port"]),
            "incompatible scheduler flag `sh-port'"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-s", "sh", "-b", "mh-port"]),
            "incompatible scheduler flag `mh-port'"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-b", "flag-4"]),
            "invalid scheduler flag `flag-4'"
        );
        // An unknown scheduler is what the kernel refuses: libipvs's message, exit 255.
        let e = err(&["-A", "-t", vip, "-s", "foo"]);
        assert_eq!(e.to_string(), "Scheduler or persistence engine not found");
        assert_eq!((e.exit_code(), e.shows_try_help()), (EXIT_FAILED, false));
    }

    #[test]
    fn tunnel_options() {
        let vip = "198.51.100.135:80";
        let rip = "198.51.100.131";
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", rip, "--tun-type", "ipip"]),
            "Tunnel options conflict with forward method"
        );
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", rip, "-i", "--tun-port", "6080"]),
            "Illegal 'tun-port' option with the 'ipip' tunnel type"
        );
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", rip, "-i", "--tun-csum"]),
            "Illegal 'tun-csum' option with the 'ipip' tunnel type"
        );
        assert_eq!(
            msg(&["-a", "-t", vip, "-r", rip, "-i", "--tun-type", "vxlan"]),
            "illegal tunnel type specified"
        );
        assert_eq!(
            msg(&[
                "-a",
                "-t",
                vip,
                "-r",
                rip,
                "-i",
                "--tun-type",
                "gue",
                "--tun-port",
                "6080"
            ]),
            "GUE tunnels (--tun-type gue) are not supported"
        );
    }

    #[test]
    fn unsupported_features() {
        let vip = "198.51.100.135:80";
        assert_eq!(
            msg(&["-A", "-f", "1"]),
            "firewall-mark services (-f) are not supported"
        );
        assert_eq!(
            msg(&["-A", "-f", "0"]),
            "invalid fwmark value `0' specified"
        );
        // ipvsadm: -6 only after -f; -f itself is refused.
        assert_eq!(msg(&["-A", "-t", vip, "-6"]), "-6 used before -f");
        assert_eq!(
            msg(&["-A", "-f", "1", "-6"]),
            "firewall-mark services (-f) are not supported"
        );
        assert_eq!(
            msg(&["-A", "--sctp-service", vip]),
            "SCTP services are not supported"
        );
        assert_eq!(
            msg(&["-A", "-t", vip, "-p", "--pe", "sip"]),
            "persistence engines (--pe) are not supported"
        );
        assert_eq!(
            msg(&["-L", "--pe", "sip"]),
            "Illegal 'pe' option with the 'list' command"
        );
    }

    // --- IPv6 -------------------------------------------------------------------------------

    const V6VIP: &str = "[2001:db8::100]:80";

    fn v6(s: &str) -> IpAddr {
        s.parse::<Ipv6Addr>().expect("an IPv6 address").into()
    }

    fn v6key(port: u16) -> ServiceKey {
        ServiceKey {
            proto: Protocol::Tcp,
            addr: v6("2001:db8::100"),
            port,
        }
    }

    #[test]
    fn ipv6_service_and_real_server_addresses() {
        // ipvsadm's parse_service: brackets before a port, a bare address without one.
        assert_eq!(
            op(&["-A", "-t", V6VIP, "-s", "rr"]),
            Op::AddService(svc(v6key(80), Scheduler::Rr))
        );
        assert_eq!(
            op(&["-A", "-u", "[2001:db8::100]:domain", "-s", "rr"]),
            Op::AddService(svc(
                ServiceKey {
                    proto: Protocol::Udp,
                    ..v6key(53)
                },
                Scheduler::Rr
            ))
        );
        match op(&["-A", "-t", "2001:db8::100", "-p"]) {
            Op::AddService(c) => {
                assert_eq!(c.key, v6key(0));
                assert_eq!(c.persistence.map(|p| p.netmask), Some(Netmask::V6(128)));
            }
            o => panic!("{o:?}"),
        }
        for bad in [
            "[2001:db8::100]",
            "[2001:db8::100]:",
            "[2001:db8::100]80",
            "[2001:db8::100:80",
            "[192.0.2.1]:80",
            "[2001:db8::zz]:80",
            "2001:db8::100]:80",
        ] {
            assert_eq!(
                msg(&["-A", "-t", bad]),
                "illegal virtual server address[:port] specified",
                "{bad}"
            );
        }
        // -M is a prefix length for an IPv6 service (atoi, 1..=128), as in ipvsadm.
        for (m, want) in [
            ("64", 64),
            ("128", 128),
            ("1", 1),
            (" 48", 48),
            ("56abc", 56),
        ] {
            match op(&["-A", "-t", V6VIP, "-p", "60", "-M", m]) {
                Op::AddService(c) => assert_eq!(
                    c.persistence,
                    Some(Persistence {
                        timeout: 60,
                        netmask: Netmask::V6(want)
                    }),
                    "-M {m:?}"
                ),
                o => panic!("{o:?}"),
            }
        }
        for m in ["0", "129", "255.255.255.0", "-64", "x"] {
            assert_eq!(
                msg(&["-A", "-t", V6VIP, "-p", "-M", m]),
                "illegal ipv6 netmask specified",
                "-M {m:?}"
            );
        }
        // An IPv4 service's -M is still a netmask.
        assert_eq!(
            msg(&["-A", "-t", "192.0.2.1:80", "-p", "-M", "x"]),
            "illegal virtual server persistent mask specified"
        );
        // Real servers: bracketed with a port, bare taking the service's port.
        let rip6 =
            |port, forward, weight| DestConfig::new(v6("2001:db8::11"), port, forward, weight);
        ops_are(&[
            (
                "-a -t [2001:db8::100]:80 -r [2001:db8::11]:8080 -m -w 2",
                Op::AddDest(v6key(80), rip6(8080, Forward::Nat, 2)),
            ),
            (
                "-a -t [2001:db8::100]:80 -r 2001:db8::11 -g",
                Op::AddDest(v6key(80), rip6(80, Forward::Dr, 1)),
            ),
            (
                "-e -t [2001:db8::100]:80 -r [2001:db8::11]:80 -i -w 5",
                Op::EditDest(v6key(80), rip6(80, Forward::Tun, 5)),
            ),
            (
                "-d -t [2001:db8::100]:80 -r [2001:db8::11]:80",
                Op::DelDest(v6key(80), v6("2001:db8::11"), 80),
            ),
        ]);
        assert_eq!(
            msg(&["-a", "-t", V6VIP, "-r", "[2001:db8::11]"]),
            "illegal real server address[:port] specified"
        );
        assert_eq!(
            ok(&["-L", "-n", "-t", V6VIP]),
            list(
                ListFormat {
                    numeric: true,
                    single_service: true,
                    ..ListFormat::default()
                },
                Some(v6key(80))
            )
        );
        assert_eq!(
            ok(&["-Z", "-t", V6VIP]),
            Plan::Request {
                req: Request::Zero {
                    service: Some(v6key(80))
                },
                render: Render::Nothing,
            }
        );
    }

    /// A service's real servers are of its family, refused as the kernel refuses a mix (the
    /// message libipvs gives EAFNOSUPPORT, ipvsadm's status for a refused operation), by the
    /// CLI and by the model alike.
    #[test]
    fn real_servers_are_of_their_services_family() {
        for (vip, rip) in [
            (V6VIP, "192.0.2.11:80"),
            ("192.0.2.1:80", "[2001:db8::11]:80"),
        ] {
            let e = err(&["-a", "-t", vip, "-r", rip]);
            assert_eq!(e.to_string(), model::AF_MISMATCH, "{vip} {rip}");
            assert_eq!(e.exit_code(), EXIT_FAILED, "{vip} {rip}");
        }
        let mut m = Model::default();
        m.apply(&Op::AddService(svc(v6key(80), Scheduler::Rr)))
            .unwrap();
        let mixed = DestConfig::new(Ipv4Addr::new(192, 0, 2, 11), 80, Forward::Tun, 1);
        assert_eq!(
            m.apply(&Op::AddDest(v6key(80), mixed))
                .map_err(|e| e.to_string()),
            Err(model::AF_MISMATCH.to_string())
        );
    }

    /// An IPv6 service and an IPv4 one, listed and saved in ipvsadm's layouts.
    fn dual_stack() -> Snapshot {
        let long = ServiceKey {
            proto: Protocol::Udp,
            addr: v6("2001:db8:ffff:ffff:ffff:ffff:ffff:100"),
            port: 65535,
        };
        let mut nat = dview(
            DestConfig::new(v6("2001:db8::12"), 8080, Forward::Nat, 2),
            1,
            4,
        );
        nat.stats.conns = 7;
        nat.stats.inpkts = 70;
        Snapshot {
            conn_table_size: 4096,
            services: vec![
                sview(
                    ServiceConfig {
                        persistence: Some(Persistence {
                            timeout: 60,
                            netmask: Netmask::V6(64),
                        }),
                        ..svc(v6key(80), Scheduler::Rr)
                    },
                    vec![
                        nat,
                        dview(
                            DestConfig::new(v6("2001:db8::11"), 8080, Forward::Nat, 1),
                            0,
                            0,
                        ),
                    ],
                ),
                sview(
                    svc(long, Scheduler::Wlc),
                    vec![dview(
                        DestConfig::new(
                            v6("2001:db8:ffff:ffff:ffff:ffff:ffff:11"),
                            65535,
                            Forward::Dr,
                            1,
                        ),
                        0,
                        0,
                    )],
                ),
                sview(
                    svc(key(Protocol::Tcp, [192, 0, 2, 1], 80), Scheduler::Rr),
                    vec![dview(dest([192, 0, 2, 11], 80, Forward::Dr, 1), 0, 0)],
                ),
            ],
        }
    }

    const SAVED6: &str = "\
        -A -t 192.0.2.1:80 -s rr\n\
        -a -t 192.0.2.1:80 -r 192.0.2.11:80 -g -w 1\n\
        -A -t [2001:db8::100]:80 -s rr -p 60 -M 64\n\
        -a -t [2001:db8::100]:80 -r [2001:db8::11]:8080 -m -w 1\n\
        -a -t [2001:db8::100]:80 -r [2001:db8::12]:8080 -m -w 2\n\
        -A -u [2001:db8:ffff:ffff:ffff:ffff:ffff:100]:65535 -s wlc\n\
        -a -u [2001:db8:ffff:ffff:ffff:ffff:ffff:100]:65535 -r [2001:db8:ffff:ffff:ffff:ffff:ffff:11]:65535 -g -w 1\n";

    /// ipvsadm's IPv6 layout: IPv4 services first (libipvs sorts by family), bracketed
    /// addresses, `mask 64`, and IPv6 names never cut to their column (IPv4 ones are).
    #[test]
    fn render_ipv6_listings_in_ipvsadms_layout() {
        let s = dual_stack();
        assert_eq!(
            render_list(&s, &fmt(ListView::Default)),
            lines(&[
                "IP Virtual Server version 1.2.1 (size=4096)",
                "Prot LocalAddress:Port Scheduler Flags",
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
                "TCP  192.0.2.1:80 rr",
                "  -> 192.0.2.11:80                Route   1      0          0         ",
                "TCP  [2001:db8::100]:80 rr persistent 60 mask 64",
                "  -> [2001:db8::11]:8080          Masq    1      0          0         ",
                "  -> [2001:db8::12]:8080          Masq    2      1          4         ",
                "UDP  [2001:db8:ffff:ffff:ffff:ffff:ffff:100]:65535 wlc",
                "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:11]:65535 Route   1      0          0         ",
            ])
        );
        assert_eq!(render_list(&s, &fmt(ListView::Rules)), SAVED6);
        assert_eq!(
            render_list(&s, &fmt(ListView::Stats)),
            lines(&[
                "IP Virtual Server version 1.2.1 (size=4096)",
                "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
                "  -> RemoteAddress:Port",
                "TCP  192.0.2.1:80                        0        0        0        0        0",
                "  -> 192.0.2.11:80                       0        0        0        0        0",
                "TCP  [2001:db8::100]:80                  0        0        0        0        0",
                "  -> [2001:db8::11]:8080                 0        0        0        0        0",
                "  -> [2001:db8::12]:8080                 7       70        0        0        0",
                "UDP  [2001:db8:ffff:ffff:ffff:ffff:ffff:100]:65535        0        0        0        0        0",
                "  -> [2001:db8:ffff:ffff:ffff:ffff:ffff:11]:65535        0        0        0        0        0",
            ])
        );
        let rate = render_list(&s, &fmt(ListView::Rate));
        assert!(
            rate.contains(
                "\n  -> [2001:db8::12]:8080                 0        0        0        0        0\n"
            ),
            "{rate}"
        );
        // Without -n: port names, but no host names for IPv6 (ipvsadm asks gethostbyaddr
        // with an IPv4 length, which never finds one).
        let named = render_list_with(&s, &ListFormat::default(), &names());
        assert!(
            named.contains("\nTCP  [2001:db8::100]:http rr persistent 60 mask 64\n"),
            "{named}"
        );
        // JSON keeps the prefix length as a number, and reads back.
        let json = render_list(
            &s,
            &ListFormat {
                json: true,
                ..ListFormat::default()
            },
        );
        assert!(json.contains("\"netmask\": 64"), "{json}");
        assert!(json.contains("\"addr\": \"2001:db8::100\""), "{json}");
        let back: Snapshot = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(
            back.services[1].config.persistence.unwrap().netmask,
            Netmask::V6(64)
        );
    }

    #[test]
    fn ipv6_save_then_restore_rebuilds_the_table() {
        let ops = parse_restore_with(SAVED6, &names()).expect("restores");
        let mut m = Model::default();
        m.apply_all(&ops).expect("applies");
        let s = dual_stack();
        assert_eq!(m.services.len(), s.services.len());
        for v in &s.services {
            let got = &m.services[&v.config.key];
            assert_eq!(got.config, v.config);
            let mut a: Vec<_> = got.dests.clone();
            let mut b: Vec<_> = v.dests.iter().map(|d| d.config).collect();
            a.sort_by_key(|d| d.addr);
            b.sort_by_key(|d| d.addr);
            assert_eq!(a, b);
        }
        // A saved IPv6 rule with a bad prefix names its line.
        let (line, e) = parse_restore_with(
            "-A -t 192.0.2.1:80 -s rr\n-A -t [2001:db8::1]:80 -s rr -p 60 -M 200\n",
            &names(),
        )
        .unwrap_err();
        assert_eq!(
            (line, e.to_string().as_str()),
            (2, "illegal ipv6 netmask specified")
        );
    }

    #[test]
    fn render_ipv6_connections() {
        let sa = |a: &str, p| SocketAddr::new(v6(a), p);
        let conns = vec![
            ConnView {
                proto: "TCP".into(),
                expire_secs: 899,
                state: "ESTABLISHED".into(),
                client: sa("2001:db8:1::c", 53324),
                virtual_addr: sa("2001:db8::100", 80),
                dest: sa("2001:db8::11", 8080),
            },
            ConnView {
                proto: "IP".into(),
                expire_secs: 60,
                state: "NONE".into(),
                client: sa("2001:db8:1::", 0),
                virtual_addr: sa("2001:db8::100", 80),
                dest: sa("2001:db8::11", 8080),
            },
        ];
        assert_eq!(
            render_conns(&conns, &fmt(ListView::Default)),
            lines(&[
                "IPVS connection entries",
                "pro expire state       source             virtual            destination",
                "TCP 14:59  ESTABLISHED [2001:db8:1::c]:53324 [2001:db8::100]:80 [2001:db8::11]:8080",
                "IP  01:00  NONE        [2001:db8:1::]:0   [2001:db8::100]:80 [2001:db8::11]:8080",
            ])
        );
    }

    #[test]
    fn number_parsing() {
        assert_eq!(
            inet_aton("198.51.100.135"),
            Some(Ipv4Addr::new(198, 51, 100, 135))
        );
        assert_eq!(inet_aton("10.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(inet_aton("10.1.258"), Some(Ipv4Addr::new(10, 1, 1, 2)));
        assert_eq!(inet_aton("24"), Some(Ipv4Addr::new(0, 0, 0, 24)));
        assert_eq!(inet_aton("0x0a.0.0.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(inet_aton("010.0.0.1"), Some(Ipv4Addr::new(8, 0, 0, 1)));
        assert_eq!(inet_aton("0.0.0.0"), Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(inet_aton("4294967295"), Some(Ipv4Addr::BROADCAST));
        for bad in [
            "",
            "1.2.3.256",
            "08.1.1.1",
            "1.2.3.4.5",
            "1..2",
            "1.2.3.",
            "0x",
            "a.b.c.d",
            "4294967296",
            "+1.2.3.4",
        ] {
            assert_eq!(inet_aton(bad), None, "{bad}");
        }
        assert_eq!(string_to_number("80", 0, 65535), Some(80));
        assert_eq!(string_to_number(" +80", 0, 65535), Some(80));
        assert_eq!(string_to_number("-0", 0, 65535), Some(0));
        for bad in ["", "+", "80x", "0x50", "65536", "99999999999999999999"] {
            assert_eq!(string_to_number(bad, 0, 65535), None, "{bad}");
        }
    }

    // --- rendering ------------------------------------------------------------------------

    fn dview(d: DestConfig, active: u32, inact: u32) -> DestView {
        DestView {
            config: d,
            active_conns: active,
            inact_conns: inact,
            persist_conns: 0,
            stats: StatsView::default(),
            rates: RateView::default(),
        }
    }

    fn sview(config: ServiceConfig, dests: Vec<DestView>) -> ServiceView {
        ServiceView {
            config,
            stats: StatsView::default(),
            rates: RateView::default(),
            dests,
        }
    }

    /// Three services, neither they nor their destinations in ipvsadm's order.
    fn snapshot() -> Snapshot {
        let web = key(Protocol::Tcp, VIP, 80);
        let dns = key(Protocol::Udp, VIP, 53);
        let tls = key(Protocol::Tcp, [10, 0, 0, 1], 443);
        Snapshot {
            conn_table_size: 4096,
            services: vec![
                sview(
                    ServiceConfig {
                        persistence: Some(Persistence {
                            timeout: 60,
                            netmask: Ipv4Addr::new(255, 255, 255, 0).into(),
                        }),
                        ops: true,
                        tunnel_source: None,
                        ..svc(dns, Scheduler::Rr)
                    },
                    vec![dview(dest(RIP, 53, Forward::Tun, 3), 0, 0)],
                ),
                sview(
                    svc(web, Scheduler::Wrr),
                    vec![
                        dview(dest([198, 51, 100, 132], 80, Forward::Dr, 1), 2, 5),
                        dview(dest(RIP, 80, Forward::Dr, 1), 0, 0),
                    ],
                ),
                sview(
                    ServiceConfig {
                        sched_flags: SchedFlags(SchedFlags::FLAG2),
                        ..svc(tls, Scheduler::Sh)
                    },
                    vec![dview(dest([10, 0, 0, 2], 8443, Forward::Nat, 0), 0, 0)],
                ),
            ],
        }
    }

    fn fmt(view: ListView) -> ListFormat {
        ListFormat {
            view,
            numeric: true,
            ..ListFormat::default()
        }
    }

    fn lines(l: &[&str]) -> String {
        l.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn render_default() {
        let want = lines(&[
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
            "TCP  10.0.0.1:443 sh (sh-port)",
            "  -> 10.0.0.2:8443                Masq    0      0          0         ",
            "TCP  198.51.100.135:80 wrr",
            "  -> 198.51.100.131:80            Route   1      0          0         ",
            "  -> 198.51.100.132:80            Route   1      2          5         ",
            "UDP  198.51.100.135:53 rr persistent 60 mask 255.255.255.0 ops",
            "  -> 198.51.100.131:53            Tunnel  3      0          0         ",
        ]);
        assert_eq!(render_list(&snapshot(), &fmt(ListView::Default)), want);
    }

    #[test]
    fn render_nosort_keeps_the_daemons_order() {
        let f = ListFormat {
            nosort: true,
            ..fmt(ListView::Default)
        };
        let got = render_list(&snapshot(), &f);
        let services: Vec<&str> = got
            .lines()
            .filter(|l| !l.starts_with("  ->"))
            .skip(2)
            .collect();
        assert_eq!(
            services,
            [
                "UDP  198.51.100.135:53 rr persistent 60 mask 255.255.255.0 ops",
                "TCP  198.51.100.135:80 wrr",
                "TCP  10.0.0.1:443 sh (sh-port)",
            ]
        );
        assert!(got.contains(
            "  -> 198.51.100.132:80            Route   1      2          5         \n  -> 198.51.100.131:80  "
        ));
    }

    #[test]
    fn render_single_service() {
        let mut s = snapshot();
        s.services.retain(|v| v.config.key.port == 80);
        let f = ListFormat {
            single_service: true,
            ..fmt(ListView::Default)
        };
        let want = lines(&[
            "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
            "TCP  198.51.100.135:80 wrr",
            "  -> 198.51.100.131:80            Route   1      0          0         ",
            "  -> 198.51.100.132:80            Route   1      2          5         ",
        ]);
        assert_eq!(render_list(&s, &f), want);
    }

    #[test]
    fn render_empty_table() {
        let s = Snapshot {
            conn_table_size: 4096,
            services: vec![],
        };
        assert_eq!(
            render_list(&s, &fmt(ListView::Default)),
            lines(&[
                "IP Virtual Server version 1.2.1 (size=4096)",
                "Prot LocalAddress:Port Scheduler Flags",
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
            ])
        );
        assert_eq!(render_list(&s, &fmt(ListView::Rules)), "");
    }

    /// The destination of the (one-service) snapshot `s` whose address ends in `last`.
    fn dest_at(s: &mut Snapshot, last: u8) -> &mut DestView {
        s.services[0]
            .dests
            .iter_mut()
            .find(|d| d.config.addr == IpAddr::from([198, 51, 100, last]))
            .expect("fixture destination")
    }

    /// The web service with counters large enough to be scaled (on 198.51.100.132).
    fn counted() -> Snapshot {
        let mut s = snapshot();
        s.services.retain(|v| v.config.key.port == 80);
        let v = &mut s.services[0];
        v.stats = StatsView {
            conns: 12,
            inpkts: 345,
            outpkts: 0,
            inbytes: 123_456_789,
            outbytes: 9_876_543_210,
        };
        v.rates = RateView {
            cps: 1,
            inpps: 22,
            outpps: 333,
            inbps: 4444,
            outbps: 123_456_789_012_345,
        };
        let d = dest_at(&mut s, 132);
        d.stats = StatsView {
            conns: 99_999_999,
            inpkts: 100_000_000,
            outpkts: 999_999_999_999,
            inbytes: 100_000_000_000_000,
            outbytes: 7,
        };
        d.rates = RateView {
            cps: 123_456_789,
            inpps: 2,
            outpps: 3,
            inbps: 1_000_000_000,
            outbps: 5,
        };
        s
    }

    #[test]
    fn render_stats() {
        let want = lines(&[
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
            "  -> RemoteAddress:Port",
            "TCP  198.51.100.135:80                  12      345        0  123456K    9876M",
            "  -> 198.51.100.131:80                   0        0        0        0        0",
            "  -> 198.51.100.132:80            99999999  100000K     999G     100T        7",
        ]);
        assert_eq!(render_list(&counted(), &fmt(ListView::Stats)), want);
    }

    #[test]
    fn render_stats_exact() {
        let f = ListFormat {
            exact: true,
            ..fmt(ListView::Stats)
        };
        let want = lines(&[
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
            "  -> RemoteAddress:Port",
            "TCP  198.51.100.135:80                  12      345        0 123456789 9876543210",
            "  -> 198.51.100.131:80                   0        0        0        0        0",
            "  -> 198.51.100.132:80            99999999 100000000 999999999999 100000000000000        7",
        ]);
        assert_eq!(render_list(&counted(), &f), want);
    }

    #[test]
    fn render_rate() {
        let want = lines(&[
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS",
            "  -> RemoteAddress:Port",
            "TCP  198.51.100.135:80                   1       22      333     4444     123T",
            "  -> 198.51.100.131:80                   0        0        0        0        0",
            "  -> 198.51.100.132:80            123456789        2        3    1000M        5",
        ]);
        assert_eq!(render_list(&counted(), &fmt(ListView::Rate)), want);
    }

    #[test]
    fn render_thresholds() {
        let mut s = counted();
        dest_at(&mut s, 132).config.u_threshold = 1000;
        dest_at(&mut s, 132).config.l_threshold = 800;
        let want = lines(&[
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn ",
            "  -> RemoteAddress:Port",
            "TCP  198.51.100.135:80 wrr",
            "  -> 198.51.100.131:80            0          0          0          0         ",
            "  -> 198.51.100.132:80            1000       800        2          5         ",
        ]);
        assert_eq!(render_list(&s, &fmt(ListView::Thresholds)), want);
    }

    #[test]
    fn render_persistent_conn() {
        let mut s = counted();
        dest_at(&mut s, 132).persist_conns = 17;
        let want = lines(&[
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn ",
            "  -> RemoteAddress:Port",
            "TCP  198.51.100.135:80 wrr",
            "  -> 198.51.100.131:80            1         0           0          0         ",
            "  -> 198.51.100.132:80            1         17          2          5         ",
        ]);
        assert_eq!(render_list(&s, &fmt(ListView::PersistentConn)), want);
    }

    #[test]
    fn render_tun_info() {
        let want = lines(&[
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn",
            "TCP  10.0.0.1:443 sh (sh-port)",
            "  -> 10.0.0.2:8443                Masq    n/a           0      0          0         ",
            "TCP  198.51.100.135:80 wrr",
            "  -> 198.51.100.131:80            Route   n/a           1      0          0         ",
            "  -> 198.51.100.132:80            Route   n/a           1      2          5         ",
            "UDP  198.51.100.135:53 rr persistent 60 mask 255.255.255.0 ops",
            "  -> 198.51.100.131:53            Tunnel  ipip          3      0          0         ",
        ]);
        assert_eq!(render_list(&snapshot(), &fmt(ListView::TunInfo)), want);
    }

    const SAVED: &str = "-A -t 10.0.0.1:443 -s sh -b sh-port\n\
        -a -t 10.0.0.1:443 -r 10.0.0.2:8443 -m -w 0\n\
        -A -t 198.51.100.135:80 -s wrr\n\
        -a -t 198.51.100.135:80 -r 198.51.100.131:80 -g -w 1\n\
        -a -t 198.51.100.135:80 -r 198.51.100.132:80 -g -w 1\n\
        -A -u 198.51.100.135:53 -s rr -p 60 -M 255.255.255.0 -o\n\
        -a -u 198.51.100.135:53 -r 198.51.100.131:53 -i -w 3 --tun-type ipip\n";

    #[test]
    fn render_save() {
        assert_eq!(render_list(&snapshot(), &fmt(ListView::Rules)), SAVED);
    }

    #[test]
    fn save_then_restore_rebuilds_the_table() {
        let ops = parse_restore_with(SAVED, &names()).expect("restores");
        let mut m = Model::default();
        m.apply_all(&ops).expect("applies");
        let mut want = Model::default();
        for s in snapshot().services {
            want.apply(&Op::AddService(s.config)).expect("service");
            for d in s.dests {
                want.apply(&Op::AddDest(s.config.key, d.config))
                    .expect("dest");
            }
        }
        // Destinations come back in -S order (sorted), so compare as sets.
        assert_eq!(m.services.len(), want.services.len());
        for (k, e) in &want.services {
            let got = &m.services[k];
            assert_eq!(got.config, e.config);
            let mut a = got.dests.clone();
            let mut b = e.dests.clone();
            a.sort_by_key(|d| d.addr);
            b.sort_by_key(|d| d.addr);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn render_names() {
        let n = names();
        let f = ListFormat::default();
        let want = lines(&[
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
            "TCP  10.0.0.1:https sh (sh-port)",
            "  -> 10.0.0.2:8443                Masq    0      0          0         ",
            "TCP  vip.example:http wrr",
            "  -> rs1.example:http             Route   1      0          0         ",
            "  -> a-very-long-host-name.exampl Route   1      2          5         ",
            "UDP  vip.example:domain rr persistent 60 mask 255.255.255.0 ops",
            "  -> rs1.example:domain           Tunnel  3      0          0         ",
        ]);
        assert_eq!(render_list_with(&snapshot(), &f, &n), want);
        let rules = ListFormat {
            view: ListView::Rules,
            ..f
        };
        let saved = render_list_with(&snapshot(), &rules, &n);
        assert!(saved.contains(
            "-a -t vip.example:http -r a-very-long-host-name.example.com:http -g -w 1\n"
        ));
        // Named -S output restores to the same table.
        assert_eq!(
            parse_restore_with(&saved, &n),
            parse_restore_with(SAVED, &n)
        );
    }

    #[test]
    fn render_truncates_like_ipvsadm() {
        let long = "h".repeat(70);
        let n = Names::parse(&format!("198.51.100.135 {long}\n"), SERVICES);
        let mut s = snapshot();
        s.services.retain(|v| v.config.key.port == 80);
        let got = render_list_with(&s, &ListFormat::default(), &n);
        // "TCP  " + the name, cut at 33 bytes.
        assert!(
            got.contains(&format!("\nTCP  {} wrr\n", "h".repeat(28))),
            "{got}"
        );
        let rules = ListFormat {
            view: ListView::Rules,
            ..ListFormat::default()
        };
        // 59 bytes of "host:port" (ipvsadm's 60-byte buffer).
        let got = render_list_with(&s, &rules, &n);
        assert!(
            got.starts_with(&format!("-A -t {} -s wrr\n", "h".repeat(59))),
            "{got}"
        );
    }

    #[test]
    fn render_json() {
        let f = ListFormat {
            json: true,
            ..fmt(ListView::Default)
        };
        let text = render_list(&snapshot(), &f);
        let back: Snapshot = serde_json::from_str(&text).expect("valid JSON");
        let keys: Vec<u16> = back.services.iter().map(|s| s.config.key.port).collect();
        assert_eq!(keys, [443, 80, 53]);
        assert_eq!(back.services[1].dests[0].config.addr, Ipv4Addr::from(RIP));
        assert!(text.ends_with("}\n"));
    }

    fn conns() -> Vec<ConnView> {
        let sa = |a: [u8; 4], p| SocketAddr::new(Ipv4Addr::from(a).into(), p);
        vec![
            ConnView {
                proto: "TCP".into(),
                expire_secs: 899,
                state: "ESTABLISHED".into(),
                client: sa([198, 51, 100, 1], 53324),
                virtual_addr: sa(VIP, 80),
                dest: sa(RIP, 80),
            },
            ConnView {
                proto: "UDP".into(),
                expire_secs: 5,
                state: "UDP".into(),
                client: sa([198, 51, 100, 1], 40000),
                virtual_addr: sa(VIP, 53),
                dest: sa(RIP, 53),
            },
            ConnView {
                proto: "IP".into(),
                expire_secs: 6000,
                state: "NONE".into(),
                client: sa([198, 51, 100, 1], 0),
                virtual_addr: sa(VIP, 80),
                dest: sa(RIP, 80),
            },
        ]
    }

    #[test]
    fn render_connections() {
        let want = lines(&[
            "IPVS connection entries",
            "pro expire state       source             virtual            destination",
            "TCP 14:59  ESTABLISHED 198.51.100.1:53324 198.51.100.135:80  198.51.100.131:80",
            "UDP 00:05  UDP         198.51.100.1:40000 198.51.100.135:53  198.51.100.131:53",
            "IP  100:00 NONE        198.51.100.1:0     198.51.100.135:80  198.51.100.131:80",
        ]);
        assert_eq!(render_conns(&conns(), &fmt(ListView::Default)), want);

        let want = lines(&[
            "IPVS connection entries",
            "pro expire state       source             virtual            destination        pe name          pe_data",
            "TCP 14:59  ESTABLISHED 198.51.100.1:53324 198.51.100.135:80  198.51.100.131:80",
            "UDP 00:05  UDP         198.51.100.1:40000 198.51.100.135:53  198.51.100.131:53",
            "IP  100:00 NONE        198.51.100.1:0     198.51.100.135:80  198.51.100.131:80",
        ]);
        assert_eq!(render_conns(&conns(), &fmt(ListView::PersistentConn)), want);

        // Names: ports by the entry's protocol, none for persistence templates ("IP").
        let got = render_conns_with(&conns(), &ListFormat::default(), &names());
        assert!(got.contains(
            "\nTCP 14:59  ESTABLISHED 198.51.100.1:53324 vip.example:http   rs1.example:http\n"
        ));
        assert!(got.contains(
            "\nUDP 00:05  UDP         198.51.100.1:40000 vip.example:domain rs1.example:domain\n"
        ));
        assert!(got.contains(
            "\nIP  100:00 NONE        198.51.100.1:0     vip.example:80     rs1.example:80\n"
        ));

        let json = ListFormat {
            json: true,
            ..ListFormat::default()
        };
        let back: Vec<ConnView> =
            serde_json::from_str(&render_conns(&conns(), &json)).expect("valid JSON");
        assert_eq!(back, conns());
    }

    #[test]
    fn render_timeout_listing() {
        let t = Timeouts {
            tcp: 900,
            tcpfin: 120,
            udp: 300,
        };
        assert_eq!(
            render_timeouts(&t),
            "Timeout (tcp tcpfin udp): 900 120 300\n"
        );
        assert_eq!(
            render_response(&Response::Timeouts(t), &Render::Timeouts { json: true }),
            Ok("{\n  \"tcp\": 900,\n  \"tcpfin\": 120,\n  \"udp\": 300\n}\n".into())
        );
    }

    #[test]
    fn responses() {
        assert_eq!(
            render_response(&Response::Ok, &Render::Nothing),
            Ok(String::new())
        );
        assert_eq!(
            render_response(&Response::Error("No such service".into()), &Render::Nothing),
            Err("No such service".into())
        );
        assert_eq!(
            render_response(&Response::Ok, &Render::List(ListFormat::default())),
            Err("unexpected answer from the daemon".into())
        );
        let f = fmt(ListView::Default);
        assert_eq!(
            render_response(&Response::Snapshot(snapshot()), &Render::List(f)),
            Ok(render_list(&snapshot(), &f))
        );
        assert_eq!(Render::Nothing.error_exit_code(), EXIT_FAILED);
        assert_eq!(Render::List(f).error_exit_code(), EXIT_LIST_FAILED);
    }

    // --- -R -------------------------------------------------------------------------------

    #[test]
    fn restore_input() {
        let input = "# saved by ipvsadm -S\n\
            \n\
            ipvsadm -A -t 198.51.100.135:80 -s rr   # web\n\
            \t-a -t 198.51.100.135:80 -r 198.51.100.131:80 -g -w 1\r\n\
            -C\n";
        let k = key(Protocol::Tcp, VIP, 80);
        assert_eq!(
            parse_restore_with(input, &names()),
            Ok(vec![
                Op::AddService(svc(k, Scheduler::Rr)),
                Op::AddDest(k, dest(RIP, 80, Forward::Dr, 1)),
                Op::Clear,
            ])
        );
        assert_eq!(parse_restore_with("", &names()), Ok(vec![]));
    }

    #[test]
    fn restore_errors_name_the_line() {
        let n = names();
        let input = "-A -t 198.51.100.135:80\n-a -t 198.51.100.135:80 -r 198.51.100.131 -w 99999\n";
        let (line, e) = parse_restore_with(input, &n).expect_err("bad weight");
        assert_eq!(
            (line, e.to_string().as_str()),
            (2, "illegal weight specified")
        );

        let (line, e) = parse_restore_with("\n-Ln\n", &n).expect_err("listing");
        assert_eq!(line, 2);
        assert_eq!(
            e.to_string(),
            "only table edits (-A, -E, -D, -C, -a, -e, -d) can be restored"
        );

        let (line, e) = parse_restore_with("-R\n", &n).expect_err("nested");
        assert_eq!((line, e.shows_try_help()), (1, true));

        let (line, e) = parse_restore_with("-C\n-A --bogus\n", &n).expect_err("unknown option");
        assert_eq!(line, 2);
        assert_eq!(e.exit_code(), EXIT_FAILED);
        assert!(e.to_string().contains("--bogus"), "{e}");
    }
}

/// ipvsadm's sync-daemon command lines (crate::sync).
#[cfg(test)]
mod daemon_tests {
    use super::tests::{msg, plan_of, words};
    use super::*;
    use crate::sync::config::{Params, Role};

    fn req(v: &[&str]) -> Request {
        match plan_of(v) {
            Ok(Plan::Request {
                req,
                render: Render::Nothing,
            }) => req,
            other => panic!("{v:?}: {other:?}"),
        }
    }

    #[test]
    fn start_and_stop_daemon_take_ipvsadms_options() {
        assert_eq!(
            req(&["--start-daemon", "master", "--mcast-interface", "eth0"]),
            Request::StartDaemon {
                role: Role::Master,
                params: Params::new("eth0"),
            }
        );
        let mut p = Params::new("eth1");
        p.syncid = 9;
        p.maxlen = Some(1400);
        p.group = "239.0.0.9".parse().unwrap();
        p.port = 9000;
        p.ttl = 3;
        assert_eq!(
            req(&[
                "--start-daemon",
                "backup",
                "--mcast-interface",
                "eth1",
                "--syncid",
                "9",
                "--sync-maxlen",
                "1400",
                "--mcast-group",
                "239.0.0.9",
                "--mcast-port",
                "9000",
                "--mcast-ttl",
                "3",
            ]),
            Request::StartDaemon {
                role: Role::Backup,
                params: p
            }
        );
        assert_eq!(
            req(&["--stop-daemon", "backup"]),
            Request::StopDaemon { role: Role::Backup }
        );
    }

    #[test]
    fn daemon_errors_are_ipvsadms() {
        // "+ X" stands for `--start-daemon master --mcast-interface eth0 X`.
        let start = "--start-daemon master --mcast-interface eth0";
        for (line, want) in [
            (
                "--start-daemon primary --mcast-interface eth0",
                "illegal start-daemon parameter specified",
            ),
            ("--stop-daemon x", "illegal start_daemon specified"),
            (
                "--start-daemon master",
                "You need to supply the 'mcast-interface' option for the 'start-daemon' command",
            ),
            ("+ --syncid 256", "illegal syncid specified"),
            ("+ --sync-maxlen 0", "illegal sync-maxlen specified"),
            ("+ --mcast-port 65536", "illegal mcast-port specified"),
            ("+ --mcast-ttl 0", "illegal mcast-ttl specified"),
            (
                "+ --mcast-group 192.0.2.1",
                "invalid IPv4 mcast-group `192.0.2.1'",
            ),
            (
                "+ -t 192.0.2.1:80",
                "Illegal 'service-address' option with the 'start-daemon' command",
            ),
            (
                "--stop-daemon master --syncid 1",
                "Illegal 'syncid' option with the 'stop-daemon' command",
            ),
            (
                "-L --mcast-interface eth0",
                "Illegal 'mcast-interface' option with the 'list' command",
            ),
            ("+ -C", "multiple commands specified"),
            (
                "--start-daemon master --stop-daemon master",
                "multiple commands specified",
            ),
        ] {
            let line = match line.strip_prefix("+ ") {
                Some(extra) => format!("{start} {extra}"),
                None => line.to_string(),
            };
            assert_eq!(msg(&words(&line)), want, "{line}");
        }
    }

    #[test]
    fn list_daemon_renders_ipvsadms_lines_or_json() {
        let plan = plan_of(&["-L", "--daemon"]).unwrap();
        let Plan::Request { req, render } = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(req, Request::ListDaemon);
        let roles = vec![crate::sync::shell::RoleStatus {
            role: "backup".into(),
            interface: "eth0".into(),
            syncid: 3,
            maxlen: 1472,
            group: Some("224.0.0.81".parse().unwrap()),
            port: 8848,
            ttl: 1,
            ..Default::default()
        }];
        assert_eq!(
            render_response(&Response::Daemons(roles.clone()), &render).unwrap(),
            "backup sync daemon (mcast=eth0, syncid=3, maxlen=1472, group=224.0.0.81, \
             port=8848, ttl=1)\n"
        );
        assert_eq!(
            render_response(&Response::Daemons(vec![]), &render).unwrap(),
            "",
            "ipvsadm prints nothing when no daemon runs"
        );
        let json = render_response(&Response::Daemons(roles), &Render::Daemon { json: true });
        assert!(json.unwrap().contains("\"syncid\": 3"));
    }
}
