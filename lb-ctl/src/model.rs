//! The virtual-server table as the user describes it (IPVS services and destinations), and
//! the ipvsadm operations on it with IPVS's rules and error messages.
//!
//! Config files, ipvsadm-style commands and restores all produce or edit a `Model`; the data
//! plane is then brought to match it as one diff.
//!
//! The control socket is the real API: a raw request never passes through the CLI's parser,
//! so every rule on a value lives here, with the message ipvsadm prints for it, and
//! `Model::apply` refuses what ipvsadm would. The CLI keeps its own checks of the text typed
//! (which must fail before the daemon is asked, with ipvsadm's exit status 2) and uses the
//! limits below, so the two cannot drift apart.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// ipvsadm's `MAX_TIMEOUT` (31 days): the longest persistence (`-p`) and `--set` timeout.
pub const MAX_TIMEOUT: u32 = 86400 * 31;

/// A TUN outer source address (a service's `tunnel_source`, the director's
/// `tunnel_sources`): a unicast host address (IPv4: not 0/8, loopback, multicast, 240/4;
/// IPv6: not unspecified, loopback, multicast or IPv4-mapped), since a real server drops or
/// never answers packets from anything else.
pub fn check_tunnel_source(a: impl Into<IpAddr>) -> Result<(), OpError> {
    let a = a.into();
    let bad = match a {
        // No host's address: "this network" (0/8), loopback, multicast, 240/4 and broadcast.
        IpAddr::V4(v4) => {
            let first = v4.octets()[0];
            first == 0 || first == 127 || first >= 224
        }
        IpAddr::V6(v6) => !is_unicast_v6(&v6),
    };
    if bad {
        return Err(OpError::Invalid(format!(
            "invalid tunnel source address {a}"
        )));
    }
    Ok(())
}

/// An IPv6 address a host can have and be reached at: not unspecified, loopback or multicast,
/// and not IPv4-mapped (`::ffff:a.b.c.d` is how the maps hold IPv4 addresses, so an IPv6
/// service or real server with one would stand for an IPv4 one).
fn is_unicast_v6(a: &std::net::Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.to_ipv4_mapped().is_some())
}

/// libipvs's text for `EAFNOSUPPORT`: what ipvsadm prints when a real server's family is not
/// its service's (IPVS keeps a service's real servers in its own family).
pub const AF_MISMATCH: &str = "Operation not supported with specified address family";

/// `addr:port` as ipvsadm writes it: `192.0.2.1:80`, `[2001:db8::1]:80`.
pub fn addr_port(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// ipvsadm's message for a timeout out of range (`parse_timeout`).
fn timeout_error(v: impl fmt::Display) -> OpError {
    OpError::Invalid(format!("invalid timeout value `{v}' specified"))
}

/// `--set tcp tcpfin udp` as ipvsadm checks it: each in `0..=MAX_TIMEOUT` seconds, 0 meaning
/// "leave unchanged". For the daemon's `SetTimeouts`, which a raw request reaches without the
/// CLI's parser.
pub fn check_timeouts(tcp: u32, tcpfin: u32, udp: u32) -> Result<(), OpError> {
    match [tcp, tcpfin, udp].into_iter().find(|&t| t > MAX_TIMEOUT) {
        Some(t) => Err(timeout_error(t)),
        None => Ok(()),
    }
}

/// Transport protocol of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// As ipvsadm lists it: `TCP`/`UDP`.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
    /// The ipvsadm flag that names it: `-t`/`-u`.
    pub fn flag(self) -> &'static str {
        match self {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
        }
    }
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::proto::TCP,
            Protocol::Udp => lb_common::proto::UDP,
        }
    }
}

/// A virtual service is identified by (protocol, VIP, port), as in IPVS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub proto: Protocol,
    /// The VIP, of either family (IPv6 services balance IPv6 clients to IPv6 real servers).
    pub addr: IpAddr,
    pub port: u16,
}

impl ServiceKey {
    pub fn tcp(addr: impl Into<IpAddr>, port: u16) -> Self {
        Self {
            proto: Protocol::Tcp,
            addr: addr.into(),
            port,
        }
    }
    pub fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.proto.label(),
            addr_port(self.addr, self.port)
        )
    }
}

/// The IPVS schedulers, by their ipvsadm names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Fo,
    Ovf,
    Mh,
}

impl Scheduler {
    pub const ALL: [Scheduler; 13] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Dh,
        Scheduler::Sh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Fo,
        Scheduler::Ovf,
        Scheduler::Mh,
    ];
    /// ipvsadm's default (`-s` not given).
    pub const DEFAULT: Scheduler = Scheduler::Wlc;

    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Lblc => "lblc",
            Scheduler::Lblcr => "lblcr",
            Scheduler::Dh => "dh",
            Scheduler::Sh => "sh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Fo => "fo",
            Scheduler::Ovf => "ovf",
            Scheduler::Mh => "mh",
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scheduler::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scheduler::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scheduler '{s}' (one of {})", names.join(", "))
            })
    }
}

/// Scheduler flags (`-b`): bit values as in the kernel's `IP_VS_SVC_F_SCHED1..3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchedFlags(pub u32);

impl SchedFlags {
    pub const FLAG1: u32 = 0x0008;
    pub const FLAG2: u32 = 0x0010;
    pub const FLAG3: u32 = 0x0020;
    /// Every bit `-b` can set; the kernel's other service flags (persistent, one-packet,
    /// hashed) have their own fields here.
    pub const ALL: u32 = Self::FLAG1 | Self::FLAG2 | Self::FLAG3;
}

/// Persistence (`-p [timeout] [-M netmask]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Persistence {
    /// Seconds (ipvsadm's default: 300).
    pub timeout: u32,
    /// Client granularity (ipvsadm's default: 255.255.255.255, or /128 for IPv6).
    pub netmask: Netmask,
}

impl Persistence {
    pub const DEFAULT_TIMEOUT: u32 = 300;
}

/// The persistence granularity (`-M`) as ipvsadm and IPVS take it: an IPv4 netmask for an
/// IPv4 service, a prefix length (1..=128) for an IPv6 one. In JSON and TOML the IPv4 one is
/// its dotted string and the IPv6 one a number, so IPv4 files and requests read as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Netmask {
    V4(Ipv4Addr),
    V6(u8),
}

impl Netmask {
    /// One client per template: /32 or /128, ipvsadm's default.
    pub fn host(v6: bool) -> Self {
        if v6 {
            Netmask::V6(128)
        } else {
            Netmask::V4(Ipv4Addr::BROADCAST)
        }
    }
    pub fn is_host(self) -> bool {
        matches!(self, Netmask::V4(Ipv4Addr::BROADCAST) | Netmask::V6(128))
    }
}

impl From<Ipv4Addr> for Netmask {
    fn from(a: Ipv4Addr) -> Self {
        Netmask::V4(a)
    }
}

impl fmt::Display for Netmask {
    /// As ipvsadm prints it after `mask`/`-M`: dotted for IPv4, the prefix length for IPv6.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netmask::V4(a) => write!(f, "{a}"),
            Netmask::V6(n) => write!(f, "{n}"),
        }
    }
}

/// A virtual service's own settings (`-A`/`-E`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceConfig {
    pub key: ServiceKey,
    pub scheduler: Scheduler,
    #[serde(default)]
    pub sched_flags: SchedFlags,
    #[serde(default)]
    pub persistence: Option<Persistence>,
    /// One-packet scheduling (`-o`, `--ops`; UDP only).
    #[serde(default)]
    pub ops: bool,
    /// TUN: the outer source address for this service's tunnels (config `tunnel_source`; no
    /// ipvsadm flag, so `-E` keeps it). `None`: the director interface's, else the route's.
    #[serde(default)]
    pub tunnel_source: Option<IpAddr>,
}

/// LVS forwarding method of a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// `-g`, gatewaying / direct routing; ipvsadm's default.
    Dr,
    /// `-m`, masquerading.
    Nat,
    /// `-i`, IPIP tunnelling.
    Tun,
}

impl Forward {
    /// The Forward column of `ipvsadm -L`.
    pub fn label(self) -> &'static str {
        match self {
            Forward::Dr => "Route",
            Forward::Nat => "Masq",
            Forward::Tun => "Tunnel",
        }
    }
    /// The ipvsadm switch (`-S` output).
    pub fn flag(self) -> &'static str {
        match self {
            Forward::Dr => "-g",
            Forward::Nat => "-m",
            Forward::Tun => "-i",
        }
    }
    pub fn code(self) -> u8 {
        match self {
            Forward::Dr => lb_common::fwd::DR,
            Forward::Nat => lb_common::fwd::NAT,
            Forward::Tun => lb_common::fwd::TUN,
        }
    }
}

/// A real server of a service (`-a`/`-e`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DestConfig {
    /// Of the service's family (IPVS's rule, `Model::apply` enforces it).
    pub addr: IpAddr,
    pub port: u16,
    pub forward: Forward,
    /// 0..=65535; 0 = quiesced (no new connections).
    pub weight: u32,
    /// `-x`: upper connection threshold, 0 = none.
    #[serde(default)]
    pub u_threshold: u32,
    /// `-y`: lower connection threshold, 0 = none.
    #[serde(default)]
    pub l_threshold: u32,
}

impl DestConfig {
    pub const MAX_WEIGHT: u32 = 65535;
    /// ipvsadm's limit for `-x`/`-y` (`INT_MAX`: the kernel keeps thresholds in signed ints).
    pub const MAX_THRESHOLD: u32 = i32::MAX as u32;

    /// A destination without thresholds.
    pub fn new(addr: impl Into<IpAddr>, port: u16, forward: Forward, weight: u32) -> Self {
        Self {
            addr: addr.into(),
            port,
            forward,
            weight,
            u_threshold: 0,
            l_threshold: 0,
        }
    }
}

impl ServiceConfig {
    /// A service with `scheduler` and ipvsadm's defaults for everything else (no flags, not
    /// persistent).
    pub fn new(key: ServiceKey, scheduler: Scheduler) -> Self {
        Self {
            key,
            scheduler,
            sched_flags: SchedFlags::default(),
            persistence: None,
            ops: false,
            tunnel_source: None,
        }
    }
}

/// One service with its destinations, in the order they were added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub config: ServiceConfig,
    pub dests: Vec<DestConfig>,
}

/// Why an ipvsadm operation was refused. The messages are libipvs's `ipvs_strerror` texts,
/// which LVS admins and their scripts know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    ServiceExists,
    NoService,
    /// A destination operation on a missing service (libipvs words it differently).
    ServiceNotDefined,
    DestExists,
    NoDest,
    Invalid(String),
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::ServiceExists => f.write_str("Service already exists"),
            OpError::NoService => f.write_str("No such service"),
            OpError::ServiceNotDefined => f.write_str("Service not defined"),
            OpError::DestExists => f.write_str("Destination already exists"),
            OpError::NoDest => f.write_str("No such destination"),
            OpError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for OpError {}

/// An ipvsadm operation on the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    AddService(ServiceConfig),
    EditService(ServiceConfig),
    DelService(ServiceKey),
    AddDest(ServiceKey, DestConfig),
    EditDest(ServiceKey, DestConfig),
    DelDest(ServiceKey, IpAddr, u16),
    Clear,
}

/// The whole virtual-server table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
}

impl Model {
    /// What ipvsadm and IPVS refuse in a destination of `svc`, with ipvsadm's message where
    /// it has one.
    fn check_dest(svc: &ServiceConfig, d: &DestConfig) -> Result<(), OpError> {
        if d.weight > DestConfig::MAX_WEIGHT {
            return Err(OpError::Invalid("illegal weight specified".into()));
        }
        if d.u_threshold > DestConfig::MAX_THRESHOLD {
            return Err(OpError::Invalid("illegal u_threshold specified".into()));
        }
        if d.l_threshold > DestConfig::MAX_THRESHOLD {
            return Err(OpError::Invalid("illegal l_threshold specified".into()));
        }
        if d.l_threshold > d.u_threshold && d.u_threshold != 0 {
            return Err(OpError::Invalid(format!(
                "lower threshold {} above upper threshold {}",
                d.l_threshold, d.u_threshold
            )));
        }
        if d.forward != Forward::Nat && d.port != svc.key.port {
            return Err(OpError::Invalid(format!(
                "port mapping ({} -> {}) needs masquerading (-m): {} forwarding keeps the port",
                svc.key.port,
                d.port,
                d.forward.label()
            )));
        }
        // IPVS keeps a service's real servers in its family (the kernel refuses a mixed
        // pool except for tunnels, which the data path does not do across families).
        if d.addr.is_ipv6() != svc.key.is_v6() {
            return Err(OpError::Invalid(AF_MISMATCH.into()));
        }
        // IPVS takes only unicast real servers (the kernel's RTN_UNICAST/RTN_LOCAL check);
        // loopback ones are "local" real servers, which need the kernel's own stack and cannot
        // be reached by forwarding a frame out of an interface.
        let bad = match d.addr {
            IpAddr::V4(a) => {
                a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback()
            }
            IpAddr::V6(a) => !is_unicast_v6(&a),
        };
        if bad {
            return Err(OpError::Invalid(format!(
                "invalid real server address {}",
                d.addr
            )));
        }
        Ok(())
    }

    /// What ipvsadm and IPVS refuse in a service, with ipvsadm's message where it has one.
    fn check_service(svc: &ServiceConfig) -> Result<(), OpError> {
        let a = svc.key.addr;
        let bad = match a {
            IpAddr::V4(a) => a.is_unspecified() || a.is_broadcast() || a.is_multicast(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast() || a.to_ipv4_mapped().is_some(),
        };
        if bad {
            return Err(OpError::Invalid(format!("invalid virtual address {a}")));
        }
        if svc.key.port == 0 && svc.persistence.is_none() {
            return Err(OpError::Invalid(
                "Zero port specified for non-persistent service".into(),
            ));
        }
        if svc.ops && svc.key.proto != Protocol::Udp {
            return Err(OpError::Invalid(
                "One-Packet Scheduling is only for UDP virtual services".into(),
            ));
        }
        if let Some(p) = svc.persistence {
            if p.timeout == 0 || p.timeout > MAX_TIMEOUT {
                return Err(timeout_error(p.timeout));
            }
            // Any IPv4 netmask is valid, as in ipvsadm and the kernel: the data path ANDs the
            // client address with it, so even a non-contiguous mask groups clients
            // consistently. An IPv6 service takes a prefix length, 1..=128 (ipvsadm's check).
            match (p.netmask, svc.key.is_v6()) {
                (Netmask::V4(_), false) => {}
                (Netmask::V6(n), true) if (1..=128).contains(&n) => {}
                (Netmask::V6(_), true) => {
                    return Err(OpError::Invalid("illegal ipv6 netmask specified".into()));
                }
                (Netmask::V4(m), true) => {
                    return Err(OpError::Invalid(format!(
                        "persistence netmask {m} is IPv4, the service IPv6 (a prefix length \
                         1..128)"
                    )));
                }
                (Netmask::V6(n), false) => {
                    return Err(OpError::Invalid(format!(
                        "persistence prefix length {n} is IPv6's, the service IPv4 (a netmask)"
                    )));
                }
            }
        }
        let unknown = svc.sched_flags.0 & !SchedFlags::ALL;
        if unknown != 0 {
            return Err(OpError::Invalid(format!(
                "invalid scheduler flag `{unknown:#x}'"
            )));
        }
        if let Some(t) = svc.tunnel_source {
            check_tunnel_source(t)?;
            if t.is_ipv6() != svc.key.is_v6() {
                return Err(OpError::Invalid(format!(
                    "tunnel source address {t} is not of the service's address family"
                )));
            }
        }
        Ok(())
    }

    /// `-A` of `cfg`, then `-a` of each of `dests`.
    pub fn add(
        &mut self,
        cfg: ServiceConfig,
        dests: impl IntoIterator<Item = DestConfig>,
    ) -> Result<(), OpError> {
        self.apply(&Op::AddService(cfg))?;
        dests
            .into_iter()
            .try_for_each(|d| self.apply(&Op::AddDest(cfg.key, d)))
    }

    /// Applies one operation, or changes nothing and says why.
    pub fn apply(&mut self, op: &Op) -> Result<(), OpError> {
        match op {
            Op::AddService(c) => {
                Self::check_service(c)?;
                if self.services.contains_key(&c.key) {
                    return Err(OpError::ServiceExists);
                }
                self.services.insert(
                    c.key,
                    ServiceEntry {
                        config: *c,
                        dests: Vec::new(),
                    },
                );
            }
            Op::EditService(c) => {
                Self::check_service(c)?;
                let e = self.services.get_mut(&c.key).ok_or(OpError::NoService)?;
                for d in &e.dests {
                    Self::check_dest(c, d)?;
                }
                let tunnel_source = c.tunnel_source.or(e.config.tunnel_source);
                e.config = ServiceConfig {
                    tunnel_source,
                    ..*c
                };
            }
            Op::DelService(k) => {
                self.services.remove(k).ok_or(OpError::NoService)?;
            }
            Op::AddDest(k, d) => {
                let e = self.services.get_mut(k).ok_or(OpError::ServiceNotDefined)?;
                Self::check_dest(&e.config, d)?;
                if e.dests.iter().any(|x| x.addr == d.addr && x.port == d.port) {
                    return Err(OpError::DestExists);
                }
                e.dests.push(*d);
            }
            Op::EditDest(k, d) => {
                let e = self.services.get_mut(k).ok_or(OpError::ServiceNotDefined)?;
                Self::check_dest(&e.config, d)?;
                let x = e
                    .dests
                    .iter_mut()
                    .find(|x| x.addr == d.addr && x.port == d.port)
                    .ok_or(OpError::NoDest)?;
                *x = *d;
            }
            Op::DelDest(k, addr, port) => {
                let e = self.services.get_mut(k).ok_or(OpError::ServiceNotDefined)?;
                let before = e.dests.len();
                e.dests.retain(|x| !(x.addr == *addr && x.port == *port));
                if e.dests.len() == before {
                    return Err(OpError::NoDest);
                }
            }
            Op::Clear => self.services.clear(),
        }
        Ok(())
    }

    /// Applies operations in order; all or nothing.
    pub fn apply_all(&mut self, ops: &[Op]) -> Result<(), (usize, OpError)> {
        let mut next = self.clone();
        for (i, op) in ops.iter().enumerate() {
            next.apply(op).map_err(|e| (i, e))?;
        }
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServiceKey {
        ServiceKey {
            proto: Protocol::Tcp,
            addr: Ipv4Addr::new(192, 0, 2, 100).into(),
            port: 80,
        }
    }
    fn svc() -> ServiceConfig {
        ServiceConfig {
            key: key(),
            scheduler: Scheduler::Rr,
            sched_flags: SchedFlags::default(),
            persistence: None,
            ops: false,
            tunnel_source: None,
        }
    }
    fn dest(last: u8, port: u16, forward: Forward) -> DestConfig {
        DestConfig {
            addr: Ipv4Addr::new(192, 0, 2, last).into(),
            port,
            forward,
            weight: 1,
            u_threshold: 0,
            l_threshold: 0,
        }
    }

    #[test]
    fn ipvsadm_errors() {
        let mut m = Model::default();
        assert_eq!(
            m.apply(&Op::AddDest(key(), dest(11, 80, Forward::Dr))),
            Err(OpError::ServiceNotDefined)
        );
        m.apply(&Op::AddService(svc())).unwrap();
        assert_eq!(m.apply(&Op::AddService(svc())), Err(OpError::ServiceExists));
        m.apply(&Op::AddDest(key(), dest(11, 80, Forward::Dr)))
            .unwrap();
        assert_eq!(
            m.apply(&Op::AddDest(key(), dest(11, 80, Forward::Dr))),
            Err(OpError::DestExists)
        );
        assert_eq!(
            m.apply(&Op::DelDest(key(), Ipv4Addr::new(192, 0, 2, 12).into(), 80)),
            Err(OpError::NoDest)
        );
        assert_eq!(
            m.apply(&Op::DelService(ServiceKey { port: 81, ..key() })),
            Err(OpError::NoService)
        );
        assert_eq!(OpError::NoService.to_string(), "No such service");
        assert_eq!(
            OpError::ServiceNotDefined.to_string(),
            "Service not defined"
        );
    }

    #[test]
    fn port_mapping_needs_nat() {
        let mut m = Model::default();
        m.apply(&Op::AddService(svc())).unwrap();
        assert!(matches!(
            m.apply(&Op::AddDest(key(), dest(11, 8080, Forward::Dr))),
            Err(OpError::Invalid(_))
        ));
        m.apply(&Op::AddDest(key(), dest(11, 8080, Forward::Nat)))
            .unwrap();
    }

    #[test]
    fn apply_all_is_all_or_nothing() {
        let mut m = Model::default();
        let ops = [
            Op::AddService(svc()),
            Op::AddDest(key(), dest(11, 80, Forward::Dr)),
            Op::AddDest(key(), dest(11, 80, Forward::Dr)),
        ];
        assert_eq!(m.apply_all(&ops).unwrap_err().0, 2);
        assert!(m.services.is_empty());
    }
    /// `op` refused with `message`, and the table left exactly as it was.
    fn refused(m: &mut Model, op: Op, message: &str) {
        let before = m.clone();
        match m.apply(&op) {
            Err(e) => assert_eq!(e.to_string(), message, "{op:?}"),
            Ok(()) => panic!("{op:?} accepted; the table is now {m:?}"),
        }
        assert_eq!(*m, before, "{op:?} was refused but changed the table");
    }

    /// A table with the service of `svc()` and one DR real server.
    fn table() -> Model {
        let mut m = Model::default();
        m.add(svc(), [dest(11, 80, Forward::Dr)]).unwrap();
        m
    }

    /// Raw ops as a socket client can send them, bypassing the CLI's parser: each is refused
    /// with the message the CLI prints for the same value, by `-A` and `-E` alike.
    #[test]
    fn service_rules_hold_for_raw_ops() {
        let mut m = table();
        let persistent = |timeout| ServiceConfig {
            persistence: Some(Persistence {
                timeout,
                netmask: Ipv4Addr::BROADCAST.into(),
            }),
            ..svc()
        };
        // The same settings on a service not in the table yet (port 0 stays 0).
        let other = |c: ServiceConfig| ServiceConfig {
            key: ServiceKey {
                port: if c.key.port == 0 { 0 } else { 81 },
                ..c.key
            },
            ..c
        };
        let cases: Vec<(ServiceConfig, String)> = vec![
            (persistent(0), "invalid timeout value `0' specified".into()),
            (
                persistent(MAX_TIMEOUT + 1),
                "invalid timeout value `2678401' specified".into(),
            ),
            (
                persistent(u32::MAX),
                "invalid timeout value `4294967295' specified".into(),
            ),
            (
                ServiceConfig {
                    key: ServiceKey { port: 0, ..key() },
                    ..svc()
                },
                "Zero port specified for non-persistent service".into(),
            ),
            (
                ServiceConfig { ops: true, ..svc() },
                "One-Packet Scheduling is only for UDP virtual services".into(),
            ),
            (
                ServiceConfig {
                    sched_flags: SchedFlags(0x40),
                    ..svc()
                },
                "invalid scheduler flag `0x40'".into(),
            ),
            (
                // IP_VS_SVC_F_PERSISTENT: persistence has its own field, not a -b flag.
                ServiceConfig {
                    sched_flags: SchedFlags(SchedFlags::FLAG1 | 0x1),
                    ..svc()
                },
                "invalid scheduler flag `0x1'".into(),
            ),
            (
                ServiceConfig {
                    key: ServiceKey {
                        addr: Ipv4Addr::UNSPECIFIED.into(),
                        ..key()
                    },
                    ..svc()
                },
                "invalid virtual address 0.0.0.0".into(),
            ),
            (
                ServiceConfig {
                    key: ServiceKey {
                        addr: Ipv4Addr::new(224, 0, 0, 1).into(),
                        ..key()
                    },
                    ..svc()
                },
                "invalid virtual address 224.0.0.1".into(),
            ),
        ];
        let sources = [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(239, 1, 2, 3),
            Ipv4Addr::new(127, 0, 0, 1),
        ];
        let cases = cases.into_iter().chain(sources.into_iter().map(|t| {
            (
                ServiceConfig {
                    tunnel_source: Some(t.into()),
                    ..svc()
                },
                format!("invalid tunnel source address {t}"),
            )
        }));
        for (c, message) in cases {
            refused(&mut m, Op::EditService(c), &message);
            refused(&mut m, Op::AddService(other(c)), &message);
        }
        // The limits themselves are accepted.
        m.apply(&Op::EditService(persistent(MAX_TIMEOUT))).unwrap();
        m.apply(&Op::EditService(persistent(1))).unwrap();
        m.apply(&Op::EditService(ServiceConfig {
            sched_flags: SchedFlags(SchedFlags::ALL),
            tunnel_source: Some(Ipv4Addr::new(198, 51, 100, 1).into()),
            persistence: Some(Persistence {
                timeout: 60,
                // ipvsadm and the kernel take any IPv4 mask.
                netmask: Ipv4Addr::new(255, 0, 255, 0).into(),
            }),
            ..svc()
        }))
        .unwrap();
        let udp = ServiceConfig {
            key: ServiceKey {
                proto: Protocol::Udp,
                port: 0,
                ..key()
            },
            ops: true,
            ..persistent(300)
        };
        m.apply(&Op::AddService(udp)).unwrap();
    }

    #[test]
    fn dest_rules_hold_for_raw_ops() {
        let mut m = table();
        let d = |f: fn(&mut DestConfig)| {
            let mut d = dest(11, 80, Forward::Dr);
            f(&mut d);
            d
        };
        let cases = [
            (
                d(|d| d.weight = DestConfig::MAX_WEIGHT + 1),
                "illegal weight specified",
            ),
            (d(|d| d.weight = u32::MAX), "illegal weight specified"),
            (
                d(|d| d.u_threshold = DestConfig::MAX_THRESHOLD + 1),
                "illegal u_threshold specified",
            ),
            (
                d(|d| d.l_threshold = u32::MAX),
                "illegal l_threshold specified",
            ),
            (
                d(|d| {
                    d.u_threshold = 10;
                    d.l_threshold = 11;
                }),
                "lower threshold 11 above upper threshold 10",
            ),
            (
                d(|d| d.port = 8080),
                "port mapping (80 -> 8080) needs masquerading (-m): Route forwarding keeps the port",
            ),
            (
                d(|d| {
                    d.port = 8080;
                    d.forward = Forward::Tun;
                }),
                "port mapping (80 -> 8080) needs masquerading (-m): Tunnel forwarding keeps the port",
            ),
            (
                d(|d| d.addr = Ipv4Addr::UNSPECIFIED.into()),
                "invalid real server address 0.0.0.0",
            ),
            (
                d(|d| d.addr = Ipv4Addr::new(224, 0, 0, 5).into()),
                "invalid real server address 224.0.0.5",
            ),
            (
                d(|d| d.addr = Ipv4Addr::new(127, 0, 0, 1).into()),
                "invalid real server address 127.0.0.1",
            ),
            (
                d(|d| d.addr = Ipv4Addr::BROADCAST.into()),
                "invalid real server address 255.255.255.255",
            ),
        ];
        for (bad, message) in cases {
            // -e of the existing destination (same address and port) where that applies,
            // and -a of a new one.
            if bad.addr == IpAddr::from([192, 0, 2, 11]) && bad.port == 80 {
                refused(&mut m, Op::EditDest(key(), bad), message);
            }
            refused(&mut m, Op::AddDest(key(), bad), message);
        }
        // The limits themselves are accepted.
        m.apply(&Op::EditDest(
            key(),
            d(|d| {
                d.weight = DestConfig::MAX_WEIGHT;
                d.u_threshold = DestConfig::MAX_THRESHOLD;
                d.l_threshold = DestConfig::MAX_THRESHOLD;
            }),
        ))
        .unwrap();
        m.apply(&Op::AddDest(key(), dest(12, 8080, Forward::Nat)))
            .unwrap();
    }

    #[test]
    fn edit_service_checks_the_existing_dests_against_the_new_settings() {
        // A service whose port changes cannot be expressed (the port is the key), but -E
        // re-checks the dests; a NAT dest with another port stays valid.
        let mut m = Model::default();
        m.add(svc(), [dest(11, 8080, Forward::Nat)]).unwrap();
        m.apply(&Op::EditService(ServiceConfig {
            scheduler: Scheduler::Wrr,
            ..svc()
        }))
        .unwrap();
        assert_eq!(m.services[&key()].config.scheduler, Scheduler::Wrr);
    }

    /// IPv6 services: real servers of their family, IPv6 prefix persistence, and the
    /// addresses IPVS refuses (multicast, unspecified, loopback real servers) plus the
    /// IPv4-mapped ones, which the maps use for IPv4 and so cannot stand for IPv6 hosts.
    #[test]
    fn ipv6_rules() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let k6 = ServiceKey::tcp(a("2001:db8::100"), 80);
        let s6 = ServiceConfig::new(k6, Scheduler::Rr);
        let mut m = Model::default();
        m.add(
            s6,
            [DestConfig::new(a("2001:db8::11"), 8080, Forward::Nat, 1)],
        )
        .unwrap();
        refused(
            &mut m,
            Op::AddDest(k6, DestConfig::new(a("192.0.2.11"), 80, Forward::Dr, 1)),
            AF_MISMATCH,
        );
        refused(
            &mut m,
            Op::AddDest(
                key(),
                DestConfig::new(a("2001:db8::11"), 80, Forward::Dr, 1),
            ),
            "Service not defined",
        );
        m.apply(&Op::AddService(svc())).unwrap();
        refused(
            &mut m,
            Op::AddDest(
                key(),
                DestConfig::new(a("2001:db8::11"), 80, Forward::Tun, 1),
            ),
            AF_MISMATCH,
        );
        for bad in ["::", "ff02::1", "::1", "::ffff:192.0.2.11"] {
            refused(
                &mut m,
                Op::AddDest(k6, DestConfig::new(a(bad), 80, Forward::Dr, 1)),
                &format!("invalid real server address {bad}"),
            );
        }
        for bad in ["::", "ff02::1", "::ffff:192.0.2.100"] {
            refused(
                &mut m,
                Op::AddService(ServiceConfig::new(
                    ServiceKey::tcp(a(bad), 80),
                    Scheduler::Rr,
                )),
                &format!("invalid virtual address {bad}"),
            );
        }
        let persistent = |netmask| ServiceConfig {
            persistence: Some(Persistence {
                timeout: 60,
                netmask,
            }),
            ..s6
        };
        for n in [0, 129, 255] {
            refused(
                &mut m,
                Op::EditService(persistent(Netmask::V6(n))),
                "illegal ipv6 netmask specified",
            );
        }
        refused(
            &mut m,
            Op::EditService(persistent(Netmask::V4(Ipv4Addr::BROADCAST))),
            "persistence netmask 255.255.255.255 is IPv4, the service IPv6 (a prefix length \
             1..128)",
        );
        refused(
            &mut m,
            Op::EditService(ServiceConfig {
                persistence: Some(Persistence {
                    timeout: 60,
                    netmask: Netmask::V6(64),
                }),
                ..svc()
            }),
            "persistence prefix length 64 is IPv6's, the service IPv4 (a netmask)",
        );
        refused(
            &mut m,
            Op::EditService(ServiceConfig {
                tunnel_source: Some(a("192.0.2.1")),
                ..s6
            }),
            "tunnel source address 192.0.2.1 is not of the service's address family",
        );
        refused(
            &mut m,
            Op::EditService(ServiceConfig {
                tunnel_source: Some(a("ff02::2")),
                ..s6
            }),
            "invalid tunnel source address ff02::2",
        );
        m.apply(&Op::EditService(ServiceConfig {
            tunnel_source: Some(a("2001:db8::2")),
            ..persistent(Netmask::V6(64))
        }))
        .unwrap();
        m.apply(&Op::DelDest(k6, a("2001:db8::11"), 8080)).unwrap();
        assert_eq!(k6.to_string(), "TCP [2001:db8::100]:80");
    }

    #[test]
    fn tunnel_sources_are_unicast() {
        assert_eq!(check_tunnel_source(Ipv4Addr::new(198, 51, 100, 1)), Ok(()));
        assert_eq!(
            check_tunnel_source(Ipv4Addr::new(127, 0, 0, 2)).map_err(|e| e.to_string()),
            Err("invalid tunnel source address 127.0.0.2".into())
        );
    }

    #[test]
    fn timeouts_as_ipvsadm_set_takes_them() {
        assert_eq!(check_timeouts(0, 0, 0), Ok(()));
        assert_eq!(check_timeouts(MAX_TIMEOUT, 1, MAX_TIMEOUT), Ok(()));
        for (t, bad) in [
            ((MAX_TIMEOUT + 1, 0, 0), MAX_TIMEOUT + 1),
            ((0, u32::MAX, 0), u32::MAX),
            ((900, 120, 2_678_401), 2_678_401),
        ] {
            assert_eq!(
                check_timeouts(t.0, t.1, t.2).map_err(|e| e.to_string()),
                Err(format!("invalid timeout value `{bad}' specified")),
                "{t:?}"
            );
        }
    }

    #[test]
    fn apply_all_refuses_a_raw_rule_breaker_and_keeps_the_table() {
        let mut m = table();
        let before = m.clone();
        let ops = [
            Op::Clear,
            Op::AddService(ServiceConfig {
                sched_flags: SchedFlags(0x100),
                ..svc()
            }),
        ];
        let (i, e) = m.apply_all(&ops).unwrap_err();
        assert_eq!(
            (i, e.to_string().as_str()),
            (1, "invalid scheduler flag `0x100'")
        );
        assert_eq!(m, before);
    }
}
