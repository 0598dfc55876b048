//! The TOML configuration file: director settings, connection timeouts and the virtual-server
//! table (what keepalived's `virtual_server` blocks or an `ipvsadm-save` dump describe).
//!
//! The whole file is checked before anything is used, and every error names the file, line and
//! column of the offending key or value. The table is built by running the equivalent ipvsadm
//! operations through [`Model::apply`], so a config file and ipvsadm obey the same rules.
//!
//! See `examples/dr.toml` and `examples/full.toml` for the format.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    api::Timeouts,
    health::spec::{
        CheckKind, CheckSpec, GlobalDefs, HealthSpecs, RsHealthSpec, ServiceHealthSpec, SorrySpec,
        Timing, UrlSpec, defaults,
    },
    model::{
        DestConfig, Forward, Model, Netmask, Op, OpError, Persistence, Protocol, SchedFlags,
        Scheduler, ServiceConfig, ServiceKey,
    },
};

/// A checked configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub director: Director,
    /// `[timeouts]`, if given; a key left out is 0, which means "unchanged" as in `ipvsadm --set`.
    pub timeouts: Option<Timeouts>,
    pub model: Model,
    /// `[global]`: keepalived's `global_defs`.
    pub global: GlobalDefs,
    /// Health checks, quorum and sorry servers, by service (every service has an entry).
    pub health: HealthSpecs,
    /// `[[vrrp_instance]]`, `[[vrrp_script]]`, `[[vrrp_sync_group]]` (see `crate::vrrp`).
    pub vrrp: crate::vrrp::config::VrrpConfig,
    /// `[metrics] listen`: where `/metrics` is served (off when absent; `--metrics` wins).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[[sync_daemon]]`: connection sync (see `crate::sync::config`).
    pub sync: crate::sync::config::SyncConfig,
    /// `[announce]`: the VIPs' routes for a BGP daemon (see `crate::bgp`).
    pub announce: Option<crate::bgp::AnnounceConfig>,
}

/// Settings of the balancer itself (`[director]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Director {
    /// Interfaces to attach to; `lb-ctl daemon -i` adds to these.
    pub interfaces: Vec<String>,
    /// Entries in the connection table.
    pub conn_table_size: u32,
    /// Slots in the embryonic-connection table (TCP connections until the client's
    /// handshake ACK), where SYN floods are absorbed; `None`: a quarter of `conn_table_size`.
    /// The data path rounds it up to a power of two (the slot is a hash of the key).
    pub embryonic_table_size: Option<u32>,
    /// TUN: outer source address per director interface (the one towards the real server);
    /// a service's `tunnel_source` overrides it, the route's source address is the default.
    pub tunnel_sources: std::collections::BTreeMap<String, IpAddr>,
    /// Slots of every mh (Maglev) table; a prime (IPVS's default 65537).
    pub mh_table_size: u32,
    /// IPVS `expire_nodest_conn`: a connection whose real server was deleted is forgotten at
    /// its next packet (else its packets are dropped until it times out).
    pub expire_nodest_conn: bool,
    /// IPVS `expire_quiescent_template`: persistence does not send new connections to a
    /// real server with weight 0.
    pub expire_quiescent_template: bool,
    /// IPVS `sloppy_tcp`: a TCP segment of a connection this director has no entry for (not
    /// only a SYN; never a RST) is scheduled, so that after a takeover without connection
    /// sync a connection's next packets still reach a real server (with sh/mh the one the
    /// old director chose).
    pub sloppy_tcp: bool,
    /// IPVS `sloppy_sctp`: accepted for compatibility; there are no SCTP services here.
    pub sloppy_sctp: bool,
    /// `vips`: addresses the daemon adds at start and removes at stop (without VRRP; the
    /// seeds' `ifconfig eth0:0 VIP`). A `dev`-less one goes on the first interface.
    pub vips: Vec<crate::vrrp::config::Vip>,
}

impl Director {
    pub const DEFAULT_CONN_TABLE_SIZE: u32 = lb_common::size::DEFAULT_CONNS;
    /// Smaller tables would make the LRU evict live connections under the lightest load.
    pub const MIN_CONN_TABLE_SIZE: u32 = 1024;
}

impl Default for Director {
    fn default() -> Self {
        Director {
            interfaces: Vec::new(),
            conn_table_size: Self::DEFAULT_CONN_TABLE_SIZE,
            embryonic_table_size: None,
            tunnel_sources: Default::default(),
            mh_table_size: lb_common::size::DEFAULT_MH_TABLE,
            expire_nodest_conn: false,
            expire_quiescent_template: false,
            sloppy_tcp: false,
            sloppy_sctp: false,
            vips: Vec::new(),
        }
    }
}

/// Why a configuration file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    file: String,
    /// 1-based line and column (in characters), when the error is at a place in the file.
    location: Option<(usize, usize)>,
    message: String,
}

impl ConfigError {
    /// The file as the caller named it.
    pub fn file(&self) -> &str {
        &self.file
    }
    /// 1-based line of the offending key or value.
    pub fn line(&self) -> Option<usize> {
        self.location.map(|(line, _)| line)
    }
    /// 1-based column, in characters, of the offending key or value.
    pub fn column(&self) -> Option<usize> {
        self.location.map(|(_, column)| column)
    }
    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn at(file: &str, text: &str, offset: Option<usize>, message: String) -> Self {
        ConfigError {
            file: file.to_owned(),
            location: offset.map(|o| line_column(text, o)),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: origin.clone(),
        location: None,
        message: format!("cannot read the file: {e}"),
    })?;
    parse(&text, &origin)
}

/// Checks the configuration `text`; `origin` names it in errors (usually the file name).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        ConfigError::at(
            origin,
            text,
            e.span().map(|s| s.start),
            serde_message(e.message()),
        )
    })?;
    build(raw, text).map_err(|p| ConfigError::at(origin, text, Some(p.offset), p.message))
}

// The file as written. Values whose errors we report ourselves are `Spanned` so the error can
// point at them; integers are read as `i64` (TOML's integer type) and range-checked here, so
// that the message names the key and its range rather than a Rust type.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawFile {
    #[serde(default)]
    global: Option<RawGlobal>,
    #[serde(default)]
    director: Option<RawDirector>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    #[serde(default)]
    vrrp_instance: Vec<Spanned<crate::vrrp::config::RawInstance>>,
    #[serde(default)]
    vrrp_script: Vec<Spanned<crate::vrrp::config::RawScript>>,
    #[serde(default)]
    vrrp_sync_group: Vec<Spanned<crate::vrrp::config::RawSyncGroup>>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    sync_daemon: Vec<Spanned<crate::sync::config::RawSyncDaemon>>,
    announce: Option<Spanned<crate::bgp::RawAnnounce>>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawDirector {
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
    conn_table_size: Option<Spanned<i64>>,
    embryonic_table_size: Option<Spanned<i64>>,
    #[serde(default)]
    tunnel_sources: std::collections::BTreeMap<String, Spanned<String>>,
    mh_table_size: Option<Spanned<i64>>,
    #[serde(default)]
    expire_nodest_conn: bool,
    #[serde(default)]
    expire_quiescent_template: bool,
    #[serde(default)]
    sloppy_tcp: bool,
    #[serde(default)]
    sloppy_sctp: bool,
    #[serde(default)]
    vips: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTimeouts {
    tcp: Option<Spanned<i64>>,
    tcpfin: Option<Spanned<i64>>,
    udp: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawService {
    address: Spanned<String>,
    port: Spanned<i64>,
    protocol: Option<Spanned<String>>,
    scheduler: Option<Spanned<String>>,
    #[serde(default)]
    sched_flags: Vec<Spanned<String>>,
    persistence_timeout: Option<Spanned<i64>>,
    persistence_netmask: Option<Spanned<String>>,
    #[serde(default)]
    ops: bool,
    tunnel_source: Option<Spanned<String>>,
    delay_loop: Option<Spanned<RawSecs>>,
    #[serde(default)]
    alpha: bool,
    quorum: Option<Spanned<i64>>,
    hysteresis: Option<Spanned<i64>>,
    quorum_up: Option<Spanned<String>>,
    quorum_down: Option<Spanned<String>>,
    sorry_server: Option<Spanned<String>>,
    sorry_server_forward: Option<Spanned<String>>,
    #[serde(default)]
    sorry_server_inhibit: bool,
    #[serde(default)]
    real_server: Vec<Spanned<RawRealServer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawRealServer {
    address: Spanned<String>,
    port: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
    forward: Option<Spanned<String>>,
    upper_threshold: Option<Spanned<i64>>,
    lower_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    inhibit_on_failure: bool,
    notify_up: Option<Spanned<String>>,
    notify_down: Option<Spanned<String>>,
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
}

/// keepalived's `global_defs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawGlobal {
    router_id: Option<Spanned<String>>,
    #[serde(default)]
    notification_email: Vec<Spanned<String>>,
    notification_email_from: Option<Spanned<String>>,
    smtp_server: Option<Spanned<String>>,
    smtp_connect_timeout: Option<Spanned<RawSecs>>,
}

/// A checker (keepalived's TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK blocks).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawCheck {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    connect_ip: Option<Spanned<String>>,
    connect_port: Option<Spanned<i64>>,
    bindto: Option<Spanned<String>>,
    bind_port: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<RawSecs>>,
    retry: Option<Spanned<i64>>,
    /// keepalived's old spelling of `retry`.
    nb_get_retry: Option<Spanned<i64>>,
    delay_before_retry: Option<Spanned<RawSecs>>,
    delay_loop: Option<Spanned<RawSecs>>,
    warmup: Option<Spanned<RawSecs>>,
    #[serde(default)]
    url: Vec<Spanned<RawUrl>>,
    misc_path: Option<Spanned<String>>,
    misc_timeout: Option<Spanned<RawSecs>>,
    misc_dynamic: Option<Spanned<bool>>,
    user: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawUrl {
    path: Spanned<String>,
    #[serde(default)]
    status_code: Vec<Spanned<i64>>,
    digest: Option<Spanned<String>>,
}

/// Seconds, as a TOML integer or float (keepalived takes fractions for its timers).
struct RawSecs(f64);

impl<'de> Deserialize<'de> for RawSecs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawSecs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawSecs, E> {
                Ok(RawSecs(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawSecs, E> {
                Ok(RawSecs(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawSecs, E> {
                Ok(RawSecs(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A semantic error at a byte offset of the text.
pub(crate) struct Problem {
    offset: usize,
    message: String,
}

impl Problem {
    pub(crate) fn at<T>(value: &Spanned<T>, message: String) -> Self {
        Problem {
            offset: value.span().start,
            message,
        }
    }
}

/// ipvsadm's limit for `-p` and `--set` (31 days).
const MAX_TIMEOUT: u32 = 86400 * 31;

/// `sched_flags` names as ipvsadm `-b` takes them: the scheduler they belong to (none: any)
/// and the kernel flag they set.
const SCHED_FLAGS: [(&str, Option<Scheduler>, u32); 7] = [
    ("sh-fallback", Some(Scheduler::Sh), SchedFlags::FLAG1),
    ("sh-port", Some(Scheduler::Sh), SchedFlags::FLAG2),
    ("mh-fallback", Some(Scheduler::Mh), SchedFlags::FLAG1),
    ("mh-port", Some(Scheduler::Mh), SchedFlags::FLAG2),
    ("flag-1", None, SchedFlags::FLAG1),
    ("flag-2", None, SchedFlags::FLAG2),
    ("flag-3", None, SchedFlags::FLAG3),
];

fn build(raw: RawFile, text: &str) -> Result<Config, Problem> {
    let director = match raw.director {
        Some(d) => build_director(d)?,
        None => Director::default(),
    };
    let timeouts = raw.timeouts.map(build_timeouts).transpose()?;
    let global = match &raw.global {
        Some(g) => build_global(g)?,
        None => GlobalDefs::default(),
    };
    let mut health = HealthSpecs::new();
    let vrrp =
        crate::vrrp::config::build(&raw.vrrp_instance, &raw.vrrp_script, &raw.vrrp_sync_group)?;
    let instance_names: Vec<String> = vrrp.instances.iter().map(|i| i.name.clone()).collect();
    let sync = crate::sync::config::build(&raw.sync_daemon, &instance_names)?;

    let mut model = Model::default();
    // Where each service began, for the "first defined at" of a duplicate.
    let mut services: HashMap<ServiceKey, usize> = HashMap::new();
    for svc in &raw.service {
        let config = build_service(svc.get_ref())?;
        let key = config.key;
        model
            .apply(&Op::AddService(config))
            .map_err(|e| match (e, services.get(&key)) {
                (OpError::ServiceExists, Some(&first)) => Problem::at(
                    svc,
                    format!(
                        "duplicate service {key} (first defined at line {})",
                        line_column(text, first).0
                    ),
                ),
                (e, _) => Problem::at(svc, e.to_string()),
            })?;
        services.insert(key, svc.span().start);

        let mut dests: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for rs in &svc.get_ref().real_server {
            let dest = build_dest(rs.get_ref(), key.port)?;
            model.apply(&Op::AddDest(key, dest)).map_err(|e| {
                match (e, dests.get(&(dest.addr, dest.port))) {
                    (OpError::DestExists, Some(&first)) => Problem::at(
                        rs,
                        format!(
                            "duplicate real server {} in service {key} \
                             (first defined at line {})",
                            crate::model::addr_port(dest.addr, dest.port),
                            line_column(text, first).0
                        ),
                    ),
                    (e, _) => Problem::at(rs, e.to_string()),
                }
            })?;
            dests.insert((dest.addr, dest.port), rs.span().start);
        }
        health.insert(key, build_health(svc.get_ref(), &model.services[&key])?);
    }
    let metrics_listen = match raw.metrics.and_then(|m| m.listen) {
        Some(l) => Some(l.get_ref().parse().map_err(|_| {
            Problem::at(
                &l,
                format!(
                    "metrics listen {:?}: not an ADDRESS:PORT (e.g. \"127.0.0.1:9595\")",
                    l.get_ref()
                ),
            )
        })?),
        None => None,
    };
    Ok(Config {
        director,
        timeouts,
        model,
        global,
        health,
        vrrp,
        metrics_listen,
        sync,
        announce: raw.announce.as_ref().map(crate::bgp::build).transpose()?,
    })
}

fn build_director(raw: RawDirector) -> Result<Director, Problem> {
    let mut interfaces: Vec<String> = Vec::new();
    for name in raw.interfaces {
        let n = name.get_ref();
        // Linux's rules for interface names (dev_valid_name): 1..15 bytes, no '/', ':' or
        // whitespace, not "." or "..".
        if n.is_empty()
            || n.len() > 15
            || n == "."
            || n == ".."
            || n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(Problem::at(&name, format!("invalid interface name {n:?}")));
        }
        if interfaces.contains(n) {
            return Err(Problem::at(&name, format!("duplicate interface {n:?}")));
        }
        interfaces.push(name.into_inner());
    }
    let conn_table_size = match &raw.conn_table_size {
        Some(v) => ranged(
            v,
            "conn_table_size",
            Director::MIN_CONN_TABLE_SIZE,
            u32::MAX,
        )?,
        None => Director::DEFAULT_CONN_TABLE_SIZE,
    };
    let embryonic_table_size = match &raw.embryonic_table_size {
        Some(v) => Some(ranged(
            v,
            "embryonic_table_size",
            lb_common::size::MIN_EMBRYO,
            u32::MAX,
        )?),
        None => None,
    };
    let mut tunnel_sources = std::collections::BTreeMap::new();
    for (iface, addr) in &raw.tunnel_sources {
        let a = ip(addr)?;
        // Either family (one per interface; a TUN real server uses the one of its own
        // family, else the route's), and a host's unicast address.
        crate::model::check_tunnel_source(a).map_err(|e| Problem::at(addr, e.to_string()))?;
        tunnel_sources.insert(iface.clone(), a);
    }
    let mh_table_size = match &raw.mh_table_size {
        Some(v) => {
            let n = ranged(v, "mh_table_size", 17, 1 << 20)?;
            if !crate::sched::is_prime(n) {
                return Err(Problem::at(v, format!("mh_table_size {n} is not a prime")));
            }
            n
        }
        None => lb_common::size::DEFAULT_MH_TABLE,
    };
    let mut vips: Vec<crate::vrrp::config::Vip> = Vec::new();
    for v in &raw.vips {
        let vip = crate::vrrp::config::parse_vip(v.get_ref()).map_err(|m| Problem::at(v, m))?;
        if vips.iter().any(|x| x.addr == vip.addr) {
            return Err(Problem::at(v, format!("duplicate address {}", vip.addr)));
        }
        vips.push(vip);
    }
    Ok(Director {
        vips,
        interfaces,
        conn_table_size,
        embryonic_table_size,
        tunnel_sources,
        mh_table_size,
        expire_nodest_conn: raw.expire_nodest_conn,
        expire_quiescent_template: raw.expire_quiescent_template,
        sloppy_tcp: raw.sloppy_tcp,
        sloppy_sctp: raw.sloppy_sctp,
    })
}

fn build_timeouts(raw: RawTimeouts) -> Result<Timeouts, Problem> {
    let get = |v: &Option<Spanned<i64>>, name: &str| match v {
        Some(v) => ranged(v, name, 1, MAX_TIMEOUT),
        None => Ok(0),
    };
    Ok(Timeouts {
        tcp: get(&raw.tcp, "tcp")?,
        tcpfin: get(&raw.tcpfin, "tcpfin")?,
        udp: get(&raw.udp, "udp")?,
    })
}

fn build_service(raw: &RawService) -> Result<ServiceConfig, Problem> {
    let addr = ip(&raw.address)?;
    let port = ranged(&raw.port, "port", 0, u16::MAX)?;
    let proto = match &raw.protocol {
        None => Protocol::Tcp,
        Some(p) => match p.get_ref().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(Problem::at(
                    p,
                    format!("unknown protocol {other:?} (expected one of: tcp, udp)"),
                ));
            }
        },
    };
    let scheduler = match &raw.scheduler {
        None => Scheduler::DEFAULT,
        Some(s) => s.get_ref().parse::<Scheduler>().map_err(|_| {
            let names: Vec<_> = Scheduler::ALL.iter().map(|s| s.name()).collect();
            Problem::at(
                s,
                format!(
                    "unknown scheduler {:?} (expected one of: {})",
                    s.get_ref(),
                    names.join(", ")
                ),
            )
        })?,
    };
    let mut flags = 0;
    for f in &raw.sched_flags {
        let Some((_, only, bit)) = SCHED_FLAGS.iter().find(|(n, ..)| n == f.get_ref()) else {
            let names: Vec<_> = SCHED_FLAGS.iter().map(|(n, ..)| *n).collect();
            return Err(Problem::at(
                f,
                format!(
                    "unknown scheduler flag {:?} (expected one of: {})",
                    f.get_ref(),
                    names.join(", ")
                ),
            ));
        };
        if let Some(only) = only.filter(|s| *s != scheduler) {
            return Err(Problem::at(
                f,
                format!(
                    "scheduler flag {:?} is only for scheduler {only}, not {scheduler}",
                    f.get_ref()
                ),
            ));
        }
        flags |= bit;
    }
    let persistence = match (&raw.persistence_timeout, &raw.persistence_netmask) {
        (None, None) => None,
        (None, Some(mask)) => {
            return Err(Problem::at(
                mask,
                "persistence_netmask needs persistence_timeout".into(),
            ));
        }
        (Some(timeout), mask) => Some(Persistence {
            timeout: ranged(timeout, "persistence_timeout", 1, MAX_TIMEOUT)?,
            netmask: match mask {
                Some(m) => netmask(m, addr.is_ipv6())?,
                // ipvsadm's default: each client address on its own.
                None => Netmask::host(addr.is_ipv6()),
            },
        }),
    };
    Ok(ServiceConfig {
        key: ServiceKey { proto, addr, port },
        scheduler,
        sched_flags: SchedFlags(flags),
        persistence,
        ops: raw.ops,
        tunnel_source: raw.tunnel_source.as_ref().map(ip).transpose()?,
    })
}

fn build_dest(raw: &RawRealServer, service_port: u16) -> Result<DestConfig, Problem> {
    let addr = ip(&raw.address)?;
    let port = match &raw.port {
        Some(p) => ranged(p, "port", 0, u16::MAX)?,
        None => service_port,
    };
    let weight = match &raw.weight {
        Some(w) => ranged(w, "weight", 0, DestConfig::MAX_WEIGHT)?,
        None => 1,
    };
    let forward = match &raw.forward {
        None => Forward::Dr,
        Some(f) => match f.get_ref().as_str() {
            "dr" => Forward::Dr,
            "nat" => Forward::Nat,
            "tun" => Forward::Tun,
            other => {
                return Err(Problem::at(
                    f,
                    format!("unknown forwarding method {other:?} (expected one of: dr, nat, tun)"),
                ));
            }
        },
    };
    let threshold = |v: &Option<Spanned<i64>>, name: &str| match v {
        Some(v) => ranged(v, name, 0, u32::MAX),
        None => Ok(0),
    };
    Ok(DestConfig {
        addr,
        port,
        forward,
        weight,
        u_threshold: threshold(&raw.upper_threshold, "upper_threshold")?,
        l_threshold: threshold(&raw.lower_threshold, "lower_threshold")?,
    })
}

/// The longest time a health-check key takes (keepalived reads them into `unsigned`
/// microseconds or seconds; a day is more than any check needs).
const MAX_CHECK_SECS: f64 = 86400.0;

/// Seconds as a duration: `min_zero` allows 0, else it must be positive.
fn secs(v: &Spanned<RawSecs>, name: &str, allow_zero: bool) -> Result<Duration, Problem> {
    let s = v.get_ref().0;
    let ok = s.is_finite() && s <= MAX_CHECK_SECS && if allow_zero { s >= 0.0 } else { s > 0.0 };
    if !ok {
        let lo = if allow_zero { "0" } else { "above 0" };
        return Err(Problem::at(
            v,
            format!("{name} {s} out of range ({lo} up to {MAX_CHECK_SECS} seconds)"),
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

/// A command line (notify, quorum, misc_path): not empty.
fn command(v: &Option<Spanned<String>>, name: &str) -> Result<Option<String>, Problem> {
    match v {
        None => Ok(None),
        Some(c) if c.get_ref().trim().is_empty() => {
            Err(Problem::at(c, format!("{name} is an empty command")))
        }
        Some(c) => Ok(Some(c.get_ref().trim().to_string())),
    }
}

fn build_global(raw: &RawGlobal) -> Result<GlobalDefs, Problem> {
    let mut to = Vec::new();
    for e in &raw.notification_email {
        check_mail_address(e)?;
        to.push(e.get_ref().clone());
    }
    if let Some(f) = &raw.notification_email_from {
        check_mail_address(f)?;
    }
    if let Some(r) = &raw.router_id
        && (r.get_ref().is_empty() || r.get_ref().chars().any(|c| c.is_control()))
    {
        return Err(Problem::at(
            r,
            format!("invalid router_id {:?}", r.get_ref()),
        ));
    }
    let smtp_server = match &raw.smtp_server {
        None => None,
        Some(v) => {
            let s = v.get_ref();
            let addr = s.parse::<std::net::SocketAddr>().ok().or_else(|| {
                s.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| std::net::SocketAddr::new(ip, 25))
            });
            match addr {
                Some(a) if a.port() != 0 => Some(a),
                _ => {
                    return Err(Problem::at(
                        v,
                        format!(
                            "invalid smtp_server {s:?} (expected \"IP\", \"IP:PORT\" or \"[IPv6]:PORT\")"
                        ),
                    ));
                }
            }
        }
    };
    Ok(GlobalDefs {
        router_id: raw.router_id.as_ref().map(|r| r.get_ref().clone()),
        notification_email: to,
        notification_email_from: raw
            .notification_email_from
            .as_ref()
            .map(|f| f.get_ref().clone()),
        smtp_server,
        smtp_connect_timeout: match &raw.smtp_connect_timeout {
            Some(t) => secs(t, "smtp_connect_timeout", false)?,
            None => GlobalDefs::DEFAULT_SMTP_CONNECT_TIMEOUT,
        },
    })
}

/// An e-mail address as SMTP takes it: local@domain, no spaces or angle brackets (they would
/// break the envelope).
fn check_mail_address(v: &Spanned<String>) -> Result<(), Problem> {
    let s = v.get_ref();
    let ok = s
        .split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Problem::at(v, format!("invalid e-mail address {s:?}")))
    }
}

/// The health settings of one service, defaults resolved as keepalived does: checker →
/// (real server) → virtual server → built-in.
fn build_health(
    raw: &RawService,
    entry: &crate::model::ServiceEntry,
) -> Result<ServiceHealthSpec, Problem> {
    let key = entry.config.key;
    let delay_loop = match &raw.delay_loop {
        Some(v) => secs(v, "delay_loop", false)?,
        None => defaults::DELAY_LOOP,
    };
    let quorum = match &raw.quorum {
        Some(v) => ranged(v, "quorum", 1, u32::MAX)?,
        None => defaults::QUORUM,
    };
    let hysteresis = match &raw.hysteresis {
        Some(v) => ranged(v, "hysteresis", 0, u32::MAX)?,
        None => 0,
    };
    let sorry = match &raw.sorry_server {
        None => {
            if let Some(f) = &raw.sorry_server_forward {
                return Err(Problem::at(
                    f,
                    "sorry_server_forward needs sorry_server".into(),
                ));
            }
            None
        }
        Some(v) => {
            let s = v.get_ref();
            let (addr, port) = match s.parse::<SocketAddr>() {
                Ok(a) => (a.ip(), a.port()),
                Err(_) => (ip(v)?, key.port),
            };
            // keepalived: sorry_server_lvs_method, default the virtual server's lb_kind,
            // which is the real servers' method when they share one.
            let forward = match &raw.sorry_server_forward {
                Some(f) => forward(f)?,
                None => {
                    let mut methods = entry.dests.iter().map(|d| d.forward);
                    match methods.next() {
                        Some(first) if methods.all(|m| m == first) => first,
                        _ => Forward::Dr,
                    }
                }
            };
            // The rules of `-a` (port mapping needs NAT, unicast addresses, …).
            let mut scratch = Model::default();
            scratch
                .apply(&Op::AddService(entry.config))
                .and_then(|_| {
                    scratch.apply(&Op::AddDest(
                        key,
                        DestConfig::new(addr, port, forward, defaults::SORRY_WEIGHT),
                    ))
                })
                .map_err(|e| Problem::at(v, format!("sorry_server: {e}")))?;
            Some(SorrySpec {
                addr,
                port,
                forward,
                inhibit: raw.sorry_server_inhibit,
            })
        }
    };
    let mut real_servers = Vec::new();
    for (rs, dest) in raw.real_server.iter().zip(&entry.dests) {
        let r = rs.get_ref();
        let mut checks = Vec::new();
        for c in &r.check {
            checks.push(build_check(c.get_ref(), dest, delay_loop, raw.alpha)?);
        }
        real_servers.push(RsHealthSpec {
            addr: dest.addr,
            port: dest.port,
            inhibit_on_failure: r.inhibit_on_failure,
            notify_up: command(&r.notify_up, "notify_up")?,
            notify_down: command(&r.notify_down, "notify_down")?,
            checks,
        });
    }
    Ok(ServiceHealthSpec {
        quorum,
        hysteresis,
        quorum_up: command(&raw.quorum_up, "quorum_up")?,
        quorum_down: command(&raw.quorum_down, "quorum_down")?,
        sorry,
        real_servers,
    })
}

fn forward(f: &Spanned<String>) -> Result<Forward, Problem> {
    match f.get_ref().as_str() {
        "dr" => Ok(Forward::Dr),
        "nat" => Ok(Forward::Nat),
        "tun" => Ok(Forward::Tun),
        other => Err(Problem::at(
            f,
            format!("unknown forwarding method {other:?} (expected one of: dr, nat, tun)"),
        )),
    }
}

/// Names the first key of `keys` that is set, for "… is only for … checks".
fn misplaced(keys: &[(bool, Option<usize>, &str)], what: &str) -> Result<(), Problem> {
    match keys.iter().find(|(set, ..)| *set) {
        Some((_, offset, name)) => Err(Problem {
            offset: offset.unwrap_or(0),
            message: format!("{name} is only for {what}"),
        }),
        None => Ok(()),
    }
}

fn build_check(
    raw: &RawCheck,
    dest: &DestConfig,
    service_delay_loop: Duration,
    alpha: bool,
) -> Result<CheckSpec, Problem> {
    let kind_name = raw.kind.get_ref().as_str();
    let http = matches!(kind_name, "http" | "ssl");
    let misc = kind_name == "misc";
    if !matches!(kind_name, "tcp" | "http" | "ssl" | "misc") {
        return Err(Problem::at(
            &raw.kind,
            format!("unknown check type {kind_name:?} (expected one of: tcp, http, ssl, misc)"),
        ));
    }
    let at = |o: Option<std::ops::Range<usize>>| o.map(|r| r.start);
    if !http {
        misplaced(
            &[(
                !raw.url.is_empty(),
                at(raw.url.first().map(|u| u.span())),
                "url",
            )],
            "http and ssl checks",
        )?;
    }
    if !misc {
        misplaced(
            &[
                (
                    raw.misc_path.is_some(),
                    at(raw.misc_path.as_ref().map(|v| v.span())),
                    "misc_path",
                ),
                (
                    raw.misc_timeout.is_some(),
                    at(raw.misc_timeout.as_ref().map(|v| v.span())),
                    "misc_timeout",
                ),
                (
                    raw.misc_dynamic.is_some(),
                    at(raw.misc_dynamic.as_ref().map(|v| v.span())),
                    "misc_dynamic",
                ),
                (
                    raw.user.is_some(),
                    at(raw.user.as_ref().map(|v| v.span())),
                    "user",
                ),
            ],
            "misc checks",
        )?;
    } else {
        // A command has no address or connection of its own.
        misplaced(
            &[
                (
                    raw.connect_ip.is_some(),
                    at(raw.connect_ip.as_ref().map(|v| v.span())),
                    "connect_ip",
                ),
                (
                    raw.connect_port.is_some(),
                    at(raw.connect_port.as_ref().map(|v| v.span())),
                    "connect_port",
                ),
                (
                    raw.bindto.is_some(),
                    at(raw.bindto.as_ref().map(|v| v.span())),
                    "bindto",
                ),
                (
                    raw.bind_port.is_some(),
                    at(raw.bind_port.as_ref().map(|v| v.span())),
                    "bind_port",
                ),
                (
                    raw.connect_timeout.is_some(),
                    at(raw.connect_timeout.as_ref().map(|v| v.span())),
                    "connect_timeout",
                ),
            ],
            "tcp, http and ssl checks",
        )?;
    }
    let delay_loop = match &raw.delay_loop {
        Some(v) => secs(v, "delay_loop", false)?,
        None => service_delay_loop,
    };
    let retry = match (&raw.retry, &raw.nb_get_retry) {
        (Some(_), Some(old)) => {
            return Err(Problem::at(
                old,
                "give retry or nb_get_retry (its old name), not both".into(),
            ));
        }
        (Some(v), None) => ranged(v, "retry", 0, u32::MAX)?,
        (None, Some(v)) => ranged(v, "nb_get_retry", 0, u32::MAX)?,
        (None, None) if misc => defaults::MISC_RETRY,
        (None, None) => defaults::RETRY,
    };
    let delay_before_retry = match &raw.delay_before_retry {
        Some(v) => secs(v, "delay_before_retry", true)?,
        None if http => defaults::HTTP_DELAY_BEFORE_RETRY,
        None => defaults::DELAY_BEFORE_RETRY,
    };
    let warmup = match &raw.warmup {
        Some(v) => secs(v, "warmup", true)?,
        None => delay_loop,
    };
    let connect_timeout = match &raw.connect_timeout {
        Some(v) => secs(v, "connect_timeout", false)?,
        None => defaults::CONNECT_TIMEOUT,
    };
    let ip = match &raw.connect_ip {
        Some(v) => self::ip(v)?,
        None => dest.addr,
    };
    let port = match &raw.connect_port {
        Some(v) => ranged(v, "connect_port", 1, u16::MAX)?,
        None if dest.port == 0 => {
            return Err(Problem::at(
                &raw.kind,
                "connect_port is needed: the real server's port is 0 (all ports)".into(),
            ));
        }
        None => dest.port,
    };
    let bindto = raw.bindto.as_ref().map(self::ip).transpose()?;
    // A socket has one family: the source must be of the target's.
    if let (Some(b), Some(v)) = (bindto, &raw.bindto)
        && b.is_ipv6() != ip.is_ipv6()
    {
        return Err(Problem::at(
            v,
            format!("bindto {b} is not of the checked address {ip}'s family"),
        ));
    }
    let bind_port = match &raw.bind_port {
        Some(v) => Some(ranged(v, "bind_port", 1, u16::MAX)?),
        None => None,
    };
    let mut urls = Vec::new();
    for u in &raw.url {
        let r = u.get_ref();
        let path = r.path.get_ref();
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Problem::at(
                &r.path,
                format!("invalid url path {path:?} (an absolute path without spaces)"),
            ));
        }
        let mut status_code = Vec::new();
        for c in &r.status_code {
            status_code.push(ranged(c, "status_code", 100, 599)?);
        }
        let digest = match &r.digest {
            None => None,
            Some(d) => {
                let h = d.get_ref();
                let bytes: Option<Vec<u8>> = (h.len() == 32)
                    .then(|| {
                        (0..16)
                            .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                            .collect()
                    })
                    .flatten();
                match bytes {
                    Some(b) => Some(b.try_into().expect("16 bytes")),
                    None => {
                        return Err(Problem::at(
                            d,
                            format!(
                                "invalid digest {h:?} (32 hex digits: an MD5, as genhash prints)"
                            ),
                        ));
                    }
                }
            }
        };
        urls.push(UrlSpec {
            path: path.clone(),
            status_code,
            digest,
        });
    }
    let kind = match kind_name {
        "tcp" => CheckKind::Tcp,
        "http" | "ssl" => {
            if urls.is_empty() {
                return Err(Problem::at(
                    &raw.kind,
                    format!(
                        "a {kind_name} check needs at least one [[service.real_server.check.url]]"
                    ),
                ));
            }
            if kind_name == "http" {
                CheckKind::Http(urls)
            } else {
                CheckKind::Ssl(urls)
            }
        }
        _ => {
            let Some(cmd) = command(&raw.misc_path, "misc_path")? else {
                return Err(Problem::at(
                    &raw.kind,
                    "a misc check needs misc_path".into(),
                ));
            };
            CheckKind::Misc {
                path: cmd,
                timeout: match &raw.misc_timeout {
                    Some(v) => secs(v, "misc_timeout", false)?,
                    None => delay_loop,
                },
                dynamic: raw.misc_dynamic.as_ref().is_some_and(|v| *v.get_ref()),
                user: match &raw.user {
                    Some(u) if u.get_ref().is_empty() => {
                        return Err(Problem::at(u, "user is empty".into()));
                    }
                    Some(u) => Some(u.get_ref().clone()),
                    None => None,
                },
            }
        }
    };
    Ok(CheckSpec {
        kind,
        target: SocketAddr::new(ip, port),
        bindto,
        bind_port,
        connect_timeout,
        timing: Timing {
            delay_loop,
            retry,
            delay_before_retry,
            warmup,
        },
        alpha,
    })
}

/// Linux's rules for interface names (dev_valid_name): 1..15 bytes, no '/', ':' or
/// whitespace, not "." or "..".
pub(crate) fn valid_ifname(n: &str) -> bool {
    !(n.is_empty()
        || n.len() > 15
        || n == "."
        || n == ".."
        || n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()))
}

/// The integer `v` as a `T` within `lo..=hi`.
pub(crate) fn ranged<T>(v: &Spanned<i64>, name: &str, lo: T, hi: T) -> Result<T, Problem>
where
    T: TryFrom<i64> + PartialOrd + fmt::Display + Copy,
{
    match T::try_from(*v.get_ref()) {
        Ok(n) if lo <= n && n <= hi => Ok(n),
        _ => Err(Problem::at(
            v,
            format!("{name} {} out of range {lo}..{hi}", v.get_ref()),
        )),
    }
}

/// An IPv4 address, where only IPv4 is taken (VRRP's peers: VRRP runs over IPv4 here).
pub(crate) fn ipv4(v: &Spanned<String>) -> Result<Ipv4Addr, Problem> {
    let s = v.get_ref();
    s.parse::<Ipv4Addr>().map_err(|_| {
        if s.parse::<Ipv6Addr>().is_ok() {
            Problem::at(v, format!("IPv6 address {s:?}: VRRP runs over IPv4 only"))
        } else {
            Problem::at(v, format!("invalid IPv4 address {s:?}"))
        }
    })
}

/// An address of either family, IPv6 plain (`2001:db8::1`) or bracketed (`[2001:db8::1]`,
/// as ipvsadm and URLs write it before a port).
pub(crate) fn ip(v: &Spanned<String>) -> Result<IpAddr, Problem> {
    let s = v.get_ref();
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .map(|r| r.parse::<Ipv6Addr>().map(IpAddr::V6));
    match bare {
        Some(r) => r.ok(),
        None => s.parse::<IpAddr>().ok(),
    }
    .ok_or_else(|| {
        // Named after the family it looks like it was meant to be.
        let family = if s.contains(':') { "IPv6" } else { "IPv4" };
        Problem::at(v, format!("invalid {family} address {s:?}"))
    })
}

/// `persistence_netmask`: for an IPv4 service a contiguous dotted netmask; for an IPv6 one a
/// prefix length, `"64"` or `"/64"` (ipvsadm's `-M` of an IPv6 service), 1..=128.
fn netmask(v: &Spanned<String>, v6: bool) -> Result<Netmask, Problem> {
    let s = v.get_ref();
    if v6 {
        return match s.strip_prefix('/').unwrap_or(s).parse::<u8>() {
            Ok(n) if (1..=128).contains(&n) => Ok(Netmask::V6(n)),
            _ => Err(Problem::at(
                v,
                format!(
                    "invalid IPv6 persistence prefix length {s:?} (the service is IPv6: \
                     1..128, e.g. \"64\")"
                ),
            )),
        };
    }
    let mask = s
        .parse::<Ipv4Addr>()
        .map_err(|_| Problem::at(v, format!("invalid netmask {s:?}")))?;
    // Contiguous: some one bits, then only zero bits.
    let bits = u32::from(mask);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err(Problem::at(v, format!("non-contiguous netmask {s:?}")));
    }
    Ok(Netmask::V4(mask))
}

/// 1-based line and column (counted in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Rewrites serde's messages in the terms of a TOML file ("key", "table", "array") and quotes
/// the way our own messages do. Messages it does not know are kept.
fn serde_message(msg: &str) -> String {
    if let Some((key, expected)) = msg
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once("`, expected "))
    {
        // serde lists the expected names in backquotes: "`a`", "`a` or `b`", "one of `a`, `b`".
        let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return format!(
            "unknown key {key:?} (expected one of: {})",
            names.join(", ")
        );
    }
    if let Some(key) = msg
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return format!("missing key {key:?}");
    }
    msg.replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        match parse(text, "t.toml") {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the error's line, column and message.
    fn assert_err(text: &str, line: usize, column: usize, message: &str) {
        let e = err(text);
        assert_eq!(
            (e.line(), e.column(), e.message()),
            (Some(line), Some(column), message),
            "{e}"
        );
        assert_eq!(e.file(), "t.toml");
        assert_eq!(e.to_string(), format!("t.toml:{line}:{column}: {message}"));
    }

    fn key(proto: Protocol, addr: [u8; 4], port: u16) -> ServiceKey {
        ServiceKey {
            proto,
            addr: addr.into(),
            port,
        }
    }

    #[test]
    fn dr_example() {
        let c = parse(include_str!("../../examples/dr.toml"), "dr.toml").unwrap();
        assert_eq!(c.director.interfaces, ["ens33"]);
        assert_eq!(c.timeouts, None);
        assert_eq!(c.model.services.len(), 1);
        let s = &c.model.services[&key(Protocol::Tcp, [192, 168, 59, 135], 80)];
        assert_eq!(s.config.scheduler, Scheduler::Rr);
        assert_eq!(s.config.persistence, None);
        let dests: Vec<_> = s
            .dests
            .iter()
            .map(|d| (d.addr, d.port, d.weight, d.forward))
            .map(|(a, p, w, f)| (a.to_string().parse::<Ipv4Addr>().unwrap(), p, w, f))
            .collect();
        assert_eq!(
            dests,
            [
                (Ipv4Addr::new(192, 168, 59, 131), 80, 1, Forward::Dr),
                (Ipv4Addr::new(192, 168, 59, 132), 80, 1, Forward::Dr),
            ]
        );
    }

    #[test]
    fn sloppy_switches_default_off_and_take_only_booleans() {
        let c = parse("[director]\n", "t.toml").unwrap();
        assert_eq!(
            (c.director.sloppy_tcp, c.director.sloppy_sctp),
            (false, false)
        );
        let c = parse(
            "[director]\nsloppy_tcp = true\nsloppy_sctp = true\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            (c.director.sloppy_tcp, c.director.sloppy_sctp),
            (true, true)
        );
        let e = err("[director]\nsloppy_tcp = \"yes\"\n");
        assert_eq!(e.line(), Some(2), "{e}");
    }

    #[test]
    fn full_example() {
        for (name, text) in [
            ("nat.toml", include_str!("../../examples/nat.toml")),
            ("tun.toml", include_str!("../../examples/tun.toml")),
        ] {
            let c = parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.model.services.is_empty(), "{name}");
        }
        let tun = parse(include_str!("../../examples/tun.toml"), "tun.toml").unwrap();
        assert_eq!(
            tun.director.tunnel_sources.get("eth0"),
            Some(&IpAddr::from([192, 168, 59, 130]))
        );
        let c = parse(include_str!("../../examples/full.toml"), "full.toml").unwrap();
        assert_eq!(c.director.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.sync.daemons.len(), 1);
        assert_eq!(
            c.announce.as_ref().map(|a| (a.table, a.protocol)),
            Some((100, 201))
        );
        assert_eq!(c.director.conn_table_size, 2 * 1024 * 1024);
        assert_eq!(
            (c.director.sloppy_tcp, c.director.sloppy_sctp),
            (true, false)
        );
        assert_eq!(
            c.timeouts,
            Some(Timeouts {
                tcp: 900,
                tcpfin: 120,
                udp: 300
            })
        );
        assert_eq!(c.model.services.len(), 3);

        let web = &c.model.services[&key(Protocol::Tcp, [192, 0, 2, 100], 80)];
        assert_eq!(web.config.scheduler, Scheduler::Sh);
        assert_eq!(
            web.config.sched_flags,
            SchedFlags(SchedFlags::FLAG1 | SchedFlags::FLAG2)
        );
        assert_eq!(
            web.config.persistence,
            Some(Persistence {
                timeout: 600,
                netmask: Ipv4Addr::new(255, 255, 255, 0).into()
            })
        );
        assert_eq!(
            web.dests[0],
            DestConfig {
                addr: Ipv4Addr::new(10, 0, 0, 11).into(),
                port: 8080,
                forward: Forward::Nat,
                weight: 3,
                u_threshold: 1000,
                l_threshold: 800,
            }
        );
        assert_eq!(web.dests[1].weight, 0);
        assert_eq!(web.dests[1].port, 8080);

        let dns = &c.model.services[&key(Protocol::Udp, [192, 0, 2, 100], 53)];
        assert!(dns.config.ops);
        assert_eq!(dns.config.scheduler, Scheduler::Mh);
        assert_eq!(dns.config.sched_flags, SchedFlags(SchedFlags::FLAG2));
        assert_eq!(dns.dests[0].forward, Forward::Tun);
        assert_eq!(dns.dests[1].forward, Forward::Dr);

        let all = &c.model.services[&key(Protocol::Tcp, [192, 0, 2, 101], 0)];
        assert_eq!(all.config.persistence.map(|p| p.timeout), Some(300));

        // Health checks and global_defs.
        assert_eq!(c.global.router_id.as_deref(), Some("LVS_DEVEL"));
        assert_eq!(c.global.smtp_server, Some("192.0.2.25:25".parse().unwrap()));
        let h = &c.health[&key(Protocol::Tcp, [192, 0, 2, 100], 80)];
        assert!(h.is_active());
        assert_eq!(
            h.sorry.map(|s| (s.port, s.forward)),
            Some((8080, Forward::Nat))
        );
        let kinds: Vec<_> = h.real_servers[0]
            .checks
            .iter()
            .map(|c| c.kind.name())
            .collect();
        assert_eq!(kinds, ["TCP_CHECK", "HTTP_GET", "MISC_CHECK"]);
        assert!(h.real_servers[1].checks.is_empty());
        assert!(!c.health[&key(Protocol::Udp, [192, 0, 2, 100], 53)].is_active());
    }

    #[test]
    fn defaults() {
        let c = parse(
            "[[service]]\naddress = \"192.0.2.100\"\nport = 443\n\
             [[service.real_server]]\naddress = \"192.0.2.11\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.director, Director::default());
        assert_eq!(c.director.conn_table_size, 1048576);
        assert!(c.director.interfaces.is_empty());
        assert_eq!(c.timeouts, None);
        let s = &c.model.services[&key(Protocol::Tcp, [192, 0, 2, 100], 443)];
        assert_eq!(
            s.config,
            ServiceConfig {
                key: key(Protocol::Tcp, [192, 0, 2, 100], 443),
                scheduler: Scheduler::Wlc,
                sched_flags: SchedFlags(0),
                persistence: None,
                ops: false,
                tunnel_source: None,
            }
        );
        assert_eq!(
            s.dests,
            [DestConfig {
                addr: Ipv4Addr::new(192, 0, 2, 11).into(),
                port: 443,
                forward: Forward::Dr,
                weight: 1,
                u_threshold: 0,
                l_threshold: 0,
            }]
        );

        // An empty file is an empty table; a timeout left out is 0 ("unchanged").
        assert_eq!(parse("", "t.toml").unwrap(), Config::default());
        let c = parse("[timeouts]\ntcpfin = 30\n", "t.toml").unwrap();
        assert_eq!(
            c.timeouts,
            Some(Timeouts {
                tcp: 0,
                tcpfin: 30,
                udp: 0
            })
        );
        // A persistent service without a netmask persists per client address.
        let c = parse(
            "[[service]]\naddress = \"192.0.2.1\"\nport = 0\npersistence_timeout = 60\n",
            "t.toml",
        )
        .unwrap();
        let s = &c.model.services[&key(Protocol::Tcp, [192, 0, 2, 1], 0)];
        assert_eq!(
            s.config.persistence.map(|p| p.netmask),
            Some(Ipv4Addr::BROADCAST.into())
        );
    }

    /// A DR-style file whose lines the error tests below refer to; `{}` marks what each test
    /// puts in.
    fn web(svc_extra: &str, rs_extra: &str) -> String {
        format!(
            "# line 1\n\
             [director]\n\
             interfaces = [\"eth0\"]\n\
             \n\
             [[service]]\n\
             protocol = \"tcp\"\n\
             address = \"192.0.2.100\"\n\
             port = 80\n\
             {svc_extra}\n\
             [[service.real_server]]\n\
             address = \"192.0.2.11\"\n\
             {rs_extra}\n"
        )
    }

    /// A dual-stack director: IPv6 addresses plain or bracketed, an IPv6 service's
    /// persistence as a prefix length, tunnel sources of both families.
    #[test]
    fn ipv6_services_real_servers_and_errors() {
        let text = "[director]\n\
            interfaces = [\"eth0\"]\n\
            tunnel_sources = { eth0 = \"2001:db8::2\", eth1 = \"192.0.2.2\" }\n\
            [[service]]\n\
            address = \"2001:db8::100\"\n\
            port = 80\n\
            scheduler = \"rr\"\n\
            persistence_timeout = 60\n\
            persistence_netmask = \"/64\"\n\
            [[service.real_server]]\n\
            address = \"[2001:db8::11]\"\n\
            port = 8080\n\
            forward = \"nat\"\n\
            [[service.real_server]]\n\
            address = \"2001:db8::12\"\n\
            port = 8080\n\
            forward = \"nat\"\n\
            [[service]]\n\
            address = \"[2001:db8::100]\"\n\
            port = 53\n\
            protocol = \"udp\"\n\
            persistence_timeout = 60\n\
            [[service]]\n\
            address = \"192.0.2.100\"\n\
            port = 80\n\
            [[service.real_server]]\n\
            address = \"192.0.2.11\"\n";
        let c = parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        let www = &c.model.services[&ServiceKey::tcp(v6, 80)];
        assert_eq!(
            www.config.persistence,
            Some(Persistence {
                timeout: 60,
                netmask: Netmask::V6(64)
            })
        );
        assert_eq!(
            www.dests
                .iter()
                .map(|d| (d.addr, d.port))
                .collect::<Vec<_>>(),
            [
                ("2001:db8::11".parse().unwrap(), 8080),
                ("2001:db8::12".parse().unwrap(), 8080)
            ]
        );
        let dns = ServiceKey {
            proto: Protocol::Udp,
            addr: v6,
            port: 53,
        };
        // Without a netmask: one client per template, /128.
        assert_eq!(
            c.model.services[&dns].config.persistence.map(|p| p.netmask),
            Some(Netmask::V6(128))
        );
        assert_eq!(
            c.director.tunnel_sources["eth0"],
            "2001:db8::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.model.services.len(), 3);
        // A checker's source of the other family than its target.
        let check = "[[service]]\naddress = \"2001:db8::100\"\nport = 80\n\
            [[service.real_server]]\naddress = \"2001:db8::11\"\n\
            [[service.real_server.check]]\ntype = \"tcp\"\nbindto = \"192.0.2.2\"\n";
        assert_err(
            check,
            8,
            10,
            "bindto 192.0.2.2 is not of the checked address 2001:db8::11's family",
        );
        let c = parse(&check.replace("192.0.2.2", "2001:db8::2"), "t.toml").unwrap();
        let spec = &c.health[&ServiceKey::tcp(v6, 80)].real_servers[0].checks[0];
        assert_eq!(spec.target, "[2001:db8::11]:80".parse().unwrap());
        assert_eq!(
            spec.bindto,
            Some(IpAddr::from("2001:db8::2".parse::<Ipv6Addr>().unwrap()))
        );
        assert_err(
            "[director]\ntunnel_sources = { eth0 = \"ff02::1\" }\n",
            2,
            27,
            "invalid tunnel source address ff02::1",
        );

        // Errors, each at its place in the file.
        let v6web = |svc_extra: &str, rs_extra: &str| {
            web(svc_extra, rs_extra)
                .replace("192.0.2.100", "2001:db8::100")
                .replace("192.0.2.11", "2001:db8::11")
        };
        assert_err(
            &v6web(
                "persistence_timeout = 60\npersistence_netmask = \"255.255.255.0\"",
                "",
            ),
            10,
            23,
            "invalid IPv6 persistence prefix length \"255.255.255.0\" (the service is IPv6: \
             1..128, e.g. \"64\")",
        );
        assert_err(
            &v6web(
                "persistence_timeout = 60\npersistence_netmask = \"129\"",
                "",
            ),
            10,
            23,
            "invalid IPv6 persistence prefix length \"129\" (the service is IPv6: 1..128, \
             e.g. \"64\")",
        );
        // An IPv4 service does not take a prefix length.
        assert_err(
            &web("persistence_timeout = 60\npersistence_netmask = \"64\"", ""),
            10,
            23,
            "invalid netmask \"64\"",
        );
        assert_err(
            &v6web("", "").replace("2001:db8::11", "[2001:db8::11]:80"),
            11,
            11,
            "invalid IPv6 address \"[2001:db8::11]:80\"",
        );
        assert_err(
            &v6web("", "").replace("2001:db8::11", "::ffff:192.0.2.11"),
            10,
            1,
            "invalid real server address ::ffff:192.0.2.11",
        );
        assert_err(
            &v6web("", "").replace("2001:db8::100", "ff02::1"),
            5,
            1,
            "invalid virtual address ff02::1",
        );
        assert_err(
            &v6web("tunnel_source = \"192.0.2.2\"", ""),
            5,
            1,
            "tunnel source address 192.0.2.2 is not of the service's address family",
        );
    }

    #[test]
    fn bad_address() {
        let text = web("", "").replace("192.0.2.100", "192.0.2.300");
        assert_err(&text, 7, 11, "invalid IPv4 address \"192.0.2.300\"");
        // A real server of the other family than its service's: IPVS's refusal.
        let text = web("", "").replace("192.0.2.11", "2001:db8::11");
        assert_err(
            &text,
            10,
            1,
            "Operation not supported with specified address family",
        );
        let text = web("", "").replace("192.0.2.11", "2001:db8::1::1");
        assert_err(&text, 11, 11, "invalid IPv6 address \"2001:db8::1::1\"");
        // Leading zeros are refused rather than guessed at (octal or decimal?).
        let text = web("", "").replace("192.0.2.11", "192.0.2.011");
        assert_err(&text, 11, 11, "invalid IPv4 address \"192.0.2.011\"");
    }

    #[test]
    fn unknown_key() {
        assert_err(
            &web("", "wieght = 2"),
            12,
            1,
            "unknown key \"wieght\" (expected one of: address, port, weight, forward, \
             upper_threshold, lower_threshold, inhibit_on_failure, notify_up, notify_down, check)",
        );
        assert_err(
            &web("  persistance_timeout = 2", ""),
            9,
            3,
            "unknown key \"persistance_timeout\" (expected one of: address, port, protocol, \
             scheduler, sched_flags, persistence_timeout, persistence_netmask, ops, tunnel_source, \
             delay_loop, alpha, quorum, hysteresis, quorum_up, quorum_down, sorry_server, \
             sorry_server_forward, sorry_server_inhibit, real_server)",
        );
        assert_err(
            "[director]\ninterface = []\n",
            2,
            1,
            "unknown key \"interface\" (expected one of: interfaces, conn_table_size, embryonic_table_size, tunnel_sources, mh_table_size, expire_nodest_conn, expire_quiescent_template, sloppy_tcp, sloppy_sctp, vips)",
        );
        assert_err(
            "[[services]]\n",
            1,
            3,
            "unknown key \"services\" (expected one of: global, director, timeouts, service, vrrp_instance, vrrp_script, vrrp_sync_group, metrics, sync_daemon, announce)",
        );
    }

    #[test]
    fn missing_key_and_wrong_type() {
        assert_err(
            &web("", "").replace("address = \"192.0.2.11\"", "port = 80"),
            10,
            1,
            "missing key \"address\"",
        );
        assert_err(
            &web("", "").replace("port = 80", "port = \"80\""),
            8,
            8,
            "invalid type: string \"80\", expected an integer",
        );
        assert_err(
            "[service]\naddress = \"192.0.2.1\"\n",
            1,
            1,
            "invalid type: table, expected an array",
        );
        assert_err(
            "director = 1\n",
            1,
            12,
            "invalid type: integer `1`, expected a table",
        );
    }

    #[test]
    fn duplicates() {
        let mut text = web("", "");
        text.push_str(
            "\n[[service]]\naddress = \"192.0.2.100\"\nport = 80\n\
             [[service]]\naddress = \"192.0.2.100\"\nport = 80\nprotocol = \"udp\"\n\
             [[service]]\naddress = \"192.0.2.100\"\nport = 80\n",
        );
        // Lines 14..16 repeat TCP 192.0.2.100:80 from line 5; the UDP one is another service.
        assert_err(
            &text,
            14,
            1,
            "duplicate service TCP 192.0.2.100:80 (first defined at line 5)",
        );

        let text = web(
            "",
            "[[service.real_server]]\naddress = \"192.0.2.12\"\n\
             [[service.real_server]]\naddress = \"192.0.2.11\"\nport = 80",
        );
        assert_err(
            &text,
            14,
            1,
            "duplicate real server 192.0.2.11:80 in service TCP 192.0.2.100:80 \
             (first defined at line 10)",
        );

        assert_err(
            "[director]\ninterfaces = [\"eth0\", \"eth0\"]\n",
            2,
            23,
            "duplicate interface \"eth0\"",
        );
    }

    #[test]
    fn unknown_names() {
        assert_err(
            &web("scheduler = \"rrr\"", ""),
            9,
            13,
            "unknown scheduler \"rrr\" (expected one of: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, \
             sed, nq, fo, ovf, mh)",
        );
        assert_err(
            &web("", "").replace("\"tcp\"", "\"TCP\""),
            6,
            12,
            "unknown protocol \"TCP\" (expected one of: tcp, udp)",
        );
        assert_err(
            &web("", "forward = \"masq\""),
            12,
            11,
            "unknown forwarding method \"masq\" (expected one of: dr, nat, tun)",
        );
    }

    #[test]
    fn sched_flags() {
        assert_err(
            &web("scheduler = \"wrr\"\nsched_flags = [\"sh-port\"]", ""),
            10,
            16,
            "scheduler flag \"sh-port\" is only for scheduler sh, not wrr",
        );
        assert_err(
            &web(
                "scheduler = \"sh\"\nsched_flags = [\"sh-port\", \"port\"]",
                "",
            ),
            10,
            27,
            "unknown scheduler flag \"port\" (expected one of: sh-fallback, sh-port, \
             mh-fallback, mh-port, flag-1, flag-2, flag-3)",
        );
        let c = parse(
            &web(
                "scheduler = \"mh\"\nsched_flags = [\"mh-fallback\", \"flag-3\"]",
                "",
            ),
            "t",
        )
        .unwrap();
        let s = &c.model.services[&key(Protocol::Tcp, [192, 0, 2, 100], 80)];
        assert_eq!(
            s.config.sched_flags,
            SchedFlags(SchedFlags::FLAG1 | SchedFlags::FLAG3)
        );
    }

    #[test]
    fn persistence() {
        assert_err(
            &web("persistence_netmask = \"255.255.255.0\"", ""),
            9,
            23,
            "persistence_netmask needs persistence_timeout",
        );
        assert_err(
            &web(
                "persistence_timeout = 60\npersistence_netmask = \"255.0.255.0\"",
                "",
            ),
            10,
            23,
            "non-contiguous netmask \"255.0.255.0\"",
        );
        assert_err(
            &web("persistence_timeout = 0", ""),
            9,
            23,
            "persistence_timeout 0 out of range 1..2678400",
        );
        for mask in ["0.0.0.0", "255.255.255.255", "255.255.128.0"] {
            let text = web(
                &format!("persistence_timeout = 60\npersistence_netmask = \"{mask}\""),
                "",
            );
            assert!(parse(&text, "t").is_ok(), "{mask}");
        }
    }

    #[test]
    fn model_rules() {
        // From Model::apply, at the real server (line 10) or the service (line 5).
        assert_err(
            &web("", "port = 8080"),
            10,
            1,
            "port mapping (80 -> 8080) needs masquerading (-m): Route forwarding keeps the port",
        );
        assert!(parse(&web("", "port = 8080\nforward = \"nat\""), "t").is_ok());
        assert_err(
            &web("", "upper_threshold = 10\nlower_threshold = 20"),
            10,
            1,
            "lower threshold 20 above upper threshold 10",
        );
        assert_err(
            &web("ops = true", ""),
            5,
            1,
            "One-Packet Scheduling is only for UDP virtual services",
        );
        assert_err(
            &web("", "").replace("port = 80", "port = 0"),
            5,
            1,
            "Zero port specified for non-persistent service",
        );
    }

    #[test]
    fn ranges() {
        assert_err(
            &web("", "weight = 65536"),
            12,
            10,
            "weight 65536 out of range 0..65535",
        );
        assert_err(
            &web("", "").replace("port = 80", "port = -1"),
            8,
            8,
            "port -1 out of range 0..65535",
        );
        assert_err(
            "[director]\nconn_table_size = 1000\n",
            2,
            19,
            "conn_table_size 1000 out of range 1024..4294967295",
        );
        assert_err(
            "[director]\nembryonic_table_size = 10\n",
            2,
            24,
            "embryonic_table_size 10 out of range 1024..4294967295",
        );
        assert_err(
            "[timeouts]\ntcp = 0\n",
            2,
            7,
            "tcp 0 out of range 1..2678400",
        );
        assert_err(
            "[director]\ninterfaces = [\"a-very-long-name0\"]\n",
            2,
            15,
            "invalid interface name \"a-very-long-name0\"",
        );
    }

    #[test]
    fn toml_syntax() {
        let e = err(&web("scheduler = \"rr", ""));
        assert_eq!((e.line(), e.column()), (Some(9), Some(16)), "{e}");
        assert!(e.to_string().starts_with("t.toml:9:16: "), "{e}");
        let e = err(&web("scheduler \"rr\"", ""));
        assert_eq!((e.line(), e.column()), (Some(9), Some(11)), "{e}");
        assert_err(
            &web("", "").replace("port = 80", "port = 80\nport = 81"),
            9,
            1,
            "duplicate key",
        );
    }

    #[test]
    fn columns_count_characters() {
        // "é" is two bytes but one column.
        assert_err(
            "[director] # é\ninterfaces = [\"é\", \"a/b\"]\n",
            2,
            20,
            "invalid interface name \"a/b\"",
        );
        assert_eq!(line_column("é\né", 5), (2, 2));
        // An offset inside a character counts as that character.
        assert_eq!(line_column("é\né", 4), (2, 1));
    }

    #[test]
    fn health_keys_and_keepalived_defaults() {
        let text = "[global]\nrouter_id = \"LVS_DEVEL\"\n\
            notification_email = [\"ops@example.org\", \"noc@example.org\"]\n\
            notification_email_from = \"lb@example.org\"\nsmtp_server = \"192.0.2.25:2525\"\n\
            smtp_connect_timeout = 7.5\n\
            [[service]]\naddress = \"192.0.2.100\"\nport = 80\ndelay_loop = 6\nalpha = true\n\
            quorum = 2\nhysteresis = 1\nquorum_up = \"/bin/qup a\"\nquorum_down = \"/bin/qdown\"\n\
            sorry_server = \"192.0.2.200\"\nsorry_server_inhibit = true\n\
            [[service.real_server]]\naddress = \"192.0.2.11\"\nforward = \"nat\"\n\
            inhibit_on_failure = true\nnotify_up = \"/bin/up\"\nnotify_down = \"/bin/down\"\n\
            [[service.real_server.check]]\ntype = \"tcp\"\n\
            [[service.real_server.check]]\ntype = \"http\"\nconnect_ip = \"198.51.100.11\"\n\
            connect_port = 8080\nbindto = \"192.0.2.2\"\nbind_port = 4000\nconnect_timeout = 0.5\n\
            nb_get_retry = 3\ndelay_before_retry = 2\ndelay_loop = 1.5\nwarmup = 0\n\
            [[service.real_server.check.url]]\npath = \"/health\"\nstatus_code = [200, 204]\n\
            digest = \"9b3a0c85a887a256d6939da88aabd8cd\"\n\
            [[service.real_server.check]]\ntype = \"ssl\"\n\
            [[service.real_server.check.url]]\npath = \"/\"\n\
            [[service.real_server.check]]\ntype = \"misc\"\nmisc_path = \"/bin/check x\"\n\
            misc_dynamic = true\nuser = \"nobody\"\n";
        let c = parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.global.router_id.as_deref(), Some("LVS_DEVEL"));
        assert_eq!(c.global.notification_email.len(), 2);
        assert_eq!(
            c.global.smtp_server,
            Some("192.0.2.25:2525".parse().unwrap())
        );
        assert_eq!(c.global.smtp_connect_timeout, Duration::from_millis(7500));
        let mail = c.global.mail().unwrap();
        assert_eq!(mail.from, "lb@example.org");
        assert_eq!(mail.router_id, "LVS_DEVEL");
        let h = &c.health[&key(Protocol::Tcp, [192, 0, 2, 100], 80)];
        assert_eq!((h.quorum, h.hysteresis), (2, 1));
        assert_eq!(h.quorum_up.as_deref(), Some("/bin/qup a"));
        // The sorry server takes the service's port and its real servers' one method.
        assert_eq!(
            h.sorry,
            Some(SorrySpec {
                addr: Ipv4Addr::new(192, 0, 2, 200).into(),
                port: 80,
                forward: Forward::Nat,
                inhibit: true
            })
        );
        let rs = &h.real_servers[0];
        assert!(rs.inhibit_on_failure);
        assert_eq!(rs.notify_down.as_deref(), Some("/bin/down"));
        let [tcp, http, ssl, misc] = &rs.checks[..] else {
            panic!("{:?}", rs.checks)
        };
        // keepalived's defaults: the service's delay_loop, warmup = delay_loop, 5 s connect
        // timeout, retry 1 (misc 0), delay_before_retry 1 s (http/ssl 3 s), alpha inherited.
        assert_eq!(tcp.kind, CheckKind::Tcp);
        assert_eq!(tcp.target, "192.0.2.11:80".parse().unwrap());
        assert_eq!(tcp.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            tcp.timing,
            Timing {
                delay_loop: Duration::from_secs(6),
                retry: 1,
                delay_before_retry: Duration::from_secs(1),
                warmup: Duration::from_secs(6),
            }
        );
        assert!(tcp.alpha);
        assert_eq!(http.target, "198.51.100.11:8080".parse().unwrap());
        assert_eq!(http.bindto, Some(IpAddr::from([192, 0, 2, 2])));
        assert_eq!(http.bind_port, Some(4000));
        assert_eq!(http.connect_timeout, Duration::from_millis(500));
        assert_eq!(
            http.timing,
            Timing {
                delay_loop: Duration::from_millis(1500),
                retry: 3,
                delay_before_retry: Duration::from_secs(2),
                warmup: Duration::ZERO,
            }
        );
        let CheckKind::Http(urls) = &http.kind else {
            panic!("{:?}", http.kind)
        };
        assert_eq!(urls[0].status_code, [200, 204]);
        assert_eq!(urls[0].digest.map(|d| d[0]), Some(0x9b));
        assert_eq!(ssl.timing.delay_before_retry, Duration::from_secs(3));
        let CheckKind::Ssl(urls) = &ssl.kind else {
            panic!("{:?}", ssl.kind)
        };
        assert!(urls[0].accepts(299) && !urls[0].accepts(300));
        assert_eq!(
            misc.kind,
            CheckKind::Misc {
                path: "/bin/check x".into(),
                timeout: Duration::from_secs(6),
                dynamic: true,
                user: Some("nobody".into())
            }
        );
        assert_eq!(misc.timing.retry, 0);

        // Without any of it: keepalived's global defaults, no checks.
        let c = parse(&web("", ""), "t.toml").unwrap();
        assert_eq!(c.global, GlobalDefs::default());
        assert_eq!(c.global.smtp_connect_timeout, Duration::from_secs(30));
        assert!(c.global.mail().is_none());
        let h = &c.health[&key(Protocol::Tcp, [192, 0, 2, 100], 80)];
        assert!(!h.is_active());
        assert_eq!(h.quorum, 1);
    }

    #[test]
    fn health_errors_name_the_line() {
        // Service keys go on line 9, real-server keys on line 12: a check starts there.
        let check = |body: &str| web("", &format!("[[service.real_server.check]]\n{body}"));
        assert_err(
            &check("type = \"icmp\""),
            13,
            8,
            "unknown check type \"icmp\" (expected one of: tcp, http, ssl, misc)",
        );
        assert_err(
            &check("type = \"http\""),
            13,
            8,
            "a http check needs at least one [[service.real_server.check.url]]",
        );
        assert_err(
            &check("type = \"misc\""),
            13,
            8,
            "a misc check needs misc_path",
        );
        assert_err(
            &check("type = \"tcp\"\nmisc_path = \"/bin/x\""),
            14,
            13,
            "misc_path is only for misc checks",
        );
        assert_err(
            &check("type = \"misc\"\nmisc_path = \"/bin/x\"\nconnect_port = 80"),
            15,
            16,
            "connect_port is only for tcp, http and ssl checks",
        );
        assert_err(
            &check("type = \"tcp\"\nconnect_timeout = 0"),
            14,
            19,
            "connect_timeout 0 out of range (above 0 up to 86400 seconds)",
        );
        assert_err(
            &check("type = \"tcp\"\ndelay_before_retry = -1"),
            14,
            22,
            "delay_before_retry -1 out of range (0 up to 86400 seconds)",
        );
        assert_err(
            &check("type = \"tcp\"\nwarmup = \"6\""),
            14,
            10,
            "invalid type: string \"6\", expected a number of seconds",
        );
        assert_err(
            &check("type = \"tcp\"\nretry = 1\nnb_get_retry = 2"),
            15,
            16,
            "give retry or nb_get_retry (its old name), not both",
        );
        assert_err(
            &check("type = \"tcp\"\nretry = -1"),
            14,
            9,
            "retry -1 out of range 0..4294967295",
        );
        assert_err(
            &check("type = \"tcp\"\nconnect_ip = \"192.0.2.300\""),
            14,
            14,
            "invalid IPv4 address \"192.0.2.300\"",
        );
        assert_err(
            &check("type = \"tcp\"\ntimeout = 3"),
            14,
            1,
            "unknown key \"timeout\" (expected one of: type, connect_ip, connect_port, bindto, \
             bind_port, connect_timeout, retry, nb_get_retry, delay_before_retry, delay_loop, \
             warmup, url, misc_path, misc_timeout, misc_dynamic, user)",
        );
        let url = |body: &str| {
            check(&format!(
                "type = \"http\"\n[[service.real_server.check.url]]\n{body}"
            ))
        };
        assert_err(
            &url("path = \"/\"\nstatus_code = [200, 600]"),
            16,
            21,
            "status_code 600 out of range 100..599",
        );
        assert_err(
            &url("path = \"/\"\ndigest = \"abc\""),
            16,
            10,
            "invalid digest \"abc\" (32 hex digits: an MD5, as genhash prints)",
        );
        assert_err(
            &url("path = \"health\""),
            15,
            8,
            "invalid url path \"health\" (an absolute path without spaces)",
        );
        assert_err(
            &check("type = \"tcp\"\n[[service.real_server.check.url]]\npath = \"/\""),
            14,
            1,
            "url is only for http and ssl checks",
        );
        // Service keys.
        assert_err(
            &web("quorum = 0", ""),
            9,
            10,
            "quorum 0 out of range 1..4294967295",
        );
        assert_err(
            &web("delay_loop = 0", ""),
            9,
            14,
            "delay_loop 0 out of range (above 0 up to 86400 seconds)",
        );
        assert_err(
            &web("sorry_server = \"192.0.2.200:8080\"", ""),
            9,
            16,
            "sorry_server: port mapping (80 -> 8080) needs masquerading (-m): Route forwarding \
             keeps the port",
        );
        assert!(
            parse(
                &web(
                    "sorry_server = \"192.0.2.200:8080\"\nsorry_server_forward = \"nat\"",
                    ""
                ),
                "t"
            )
            .is_ok()
        );
        assert_err(
            &web("sorry_server_forward = \"nat\"", ""),
            9,
            24,
            "sorry_server_forward needs sorry_server",
        );
        assert_err(
            &web(
                "sorry_server = \"192.0.2.200\"\nsorry_server_forward = \"fwd\"",
                "",
            ),
            10,
            24,
            "unknown forwarding method \"fwd\" (expected one of: dr, nat, tun)",
        );
        assert_err(
            &web("quorum_up = \" \"", ""),
            9,
            13,
            "quorum_up is an empty command",
        );
        assert_err(
            &web("", "notify_up = \"\""),
            12,
            13,
            "notify_up is an empty command",
        );
        // [global]
        assert_err(
            "[global]\nsmtp_server = \"mail.example.org\"\n",
            2,
            15,
            "invalid smtp_server \"mail.example.org\" (expected \"IP\", \"IP:PORT\" or \"[IPv6]:PORT\")",
        );
        assert_err(
            "[global]\nnotification_email = [\"ops\"]\n",
            2,
            23,
            "invalid e-mail address \"ops\"",
        );
        assert_err(
            "[global]\nrouter = \"a\"\n",
            2,
            1,
            "unknown key \"router\" (expected one of: router_id, notification_email, \
             notification_email_from, smtp_server, smtp_connect_timeout)",
        );
        let c = parse("[global]\nsmtp_server = \"[2001:db8::25]:25\"\n", "t").unwrap();
        assert_eq!(
            c.global.smtp_server,
            Some("[2001:db8::25]:25".parse().unwrap())
        );
        let c = parse("[global]\nsmtp_server = \"192.0.2.25\"\n", "t").unwrap();
        assert_eq!(c.global.smtp_server, Some("192.0.2.25:25".parse().unwrap()));
        // A port-0 real server needs connect_port.
        assert_err(
            "[[service]]\naddress = \"192.0.2.1\"\nport = 0\npersistence_timeout = 60\n\
             [[service.real_server]]\naddress = \"192.0.2.11\"\n\
             [[service.real_server.check]]\ntype = \"tcp\"\n",
            8,
            8,
            "connect_port is needed: the real server's port is 0 (all ports)",
        );
    }

    #[test]
    fn load_names_the_file() {
        let path = Path::new("/nonexistent/lb.toml");
        let e = load(path).unwrap_err();
        assert_eq!(e.file(), "/nonexistent/lb.toml");
        assert_eq!(e.line(), None);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/lb.toml: cannot read the file: "),
            "{e}"
        );
    }

    #[test]
    fn metrics_listen_is_parsed_and_a_bad_one_located() {
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9595\"\n", "t.toml").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9595".parse().unwrap()));
        assert_eq!(parse("", "t.toml").unwrap().metrics_listen, None);
        assert_err(
            "[metrics]\nlisten = \"localhost\"\n",
            2,
            10,
            "metrics listen \"localhost\": not an ADDRESS:PORT (e.g. \"127.0.0.1:9595\")",
        );
        assert_err(
            "[metrics]\nport = 1\n",
            2,
            1,
            "unknown key \"port\" (expected one of: listen)",
        );
    }

    #[test]
    fn sync_daemons_are_parsed_with_ipvs_defaults() {
        use crate::sync::config::{Mode, Role};
        let c = parse(
            "[[sync_daemon]]\nstate = \"master\"\ninterface = \"eth0\"\nsyncid = 7\n\
             [[sync_daemon]]\nstate = \"backup\"\ninterface = \"eth1\"\nmaxlen = 9000\n\
             group = \"239.1.2.3\"\nport = 9000\nttl = 4\nmax_rate = 100\n",
            "t.toml",
        )
        .unwrap();
        let d = &c.sync.daemons;
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].mode, Mode::Role(Role::Master));
        let p = &d[0].params;
        assert_eq!(
            (p.interface.as_str(), p.syncid, p.maxlen),
            ("eth0", 7, None)
        );
        assert_eq!(
            (p.group, p.port, p.ttl),
            ("224.0.0.81".parse().unwrap(), 8848, 1)
        );
        let p = &d[1].params;
        assert_eq!(
            (p.maxlen, p.port, p.ttl, p.max_rate),
            (Some(9000), 9000, 4, 100)
        );
        assert_eq!(p.group, "239.1.2.3".parse::<Ipv4Addr>().unwrap());
        let vi = "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\n\
                  virtual_router_id = 51\nvirtual_ipaddress = [\"192.0.2.100\"]\n";
        let c = parse(
            &format!(
                "{vi}[[sync_daemon]]\nvrrp_instance = \"VI_1\"\ninterface = \"eth0\"\n\
                 peers = [\"192.0.2.3\"]\n"
            ),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.sync.daemons[0].mode, Mode::Follow("VI_1".into()));
        assert_eq!(
            c.sync.daemons[0].params.peers,
            vec!["192.0.2.3".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn sync_daemon_errors_name_the_line() {
        let d = "[[sync_daemon]]\n";
        assert_err(
            &format!("{d}state = \"primary\"\ninterface = \"eth0\"\n"),
            2,
            9,
            "unknown sync state \"primary\" (expected one of: master, backup)",
        );
        assert_err(
            &format!("{d}state = \"master\"\ninterface = \"eth0\"\nsyncid = 256\n"),
            4,
            10,
            "syncid 256 out of range 0..255",
        );
        assert_err(
            &format!("{d}state = \"master\"\ninterface = \"eth0\"\ngroup = \"192.0.2.1\"\n"),
            4,
            9,
            "group 192.0.2.1 is not a multicast address",
        );
        assert_err(
            &format!("{d}state = \"master\"\ninterface = \"eth0\"\nmaxlen = 70000\n"),
            4,
            10,
            "maxlen 70000 out of range 1..65507",
        );
        assert_err(
            &format!("{d}vrrp_instance = \"VI_9\"\ninterface = \"eth0\"\n"),
            2,
            17,
            "no vrrp_instance \"VI_9\" to follow",
        );
        assert_err(
            &format!("{d}interface = \"eth0\"\n"),
            1,
            1,
            "a sync_daemon needs state (\"master\" or \"backup\") or vrrp_instance",
        );
        assert_err(
            &format!(
                "{d}state = \"master\"\ninterface = \"eth0\"\n{d}state = \"master\"\ninterface = \"eth1\"\n"
            ),
            4,
            1,
            "a second master sync daemon",
        );
        assert_err(
            &format!("{d}state = \"master\"\ninterface = \"eth0\"\nmcast_group = 1\n"),
            4,
            1,
            "unknown key \"mcast_group\" (expected one of: state, vrrp_instance, interface, \
             syncid, maxlen, group, port, ttl, peers, max_rate, refresh_period)",
        );
    }
}
