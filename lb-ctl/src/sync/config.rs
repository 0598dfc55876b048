//! The sync daemons' settings: `[[sync_daemon]]` in the TOML file, `ipvsadm --start-daemon`
//! on the command line, keepalived's `lvs_sync_daemon` on import. Keys are IPVS's and
//! keepalived's names:
//!
//! ```toml
//! [[sync_daemon]]
//! state = "master"            # master | backup (ipvsadm --start-daemon); or, instead:
//! # vrrp_instance = "VI_1"    # keepalived's lvs_sync_daemon: master while VI_1 is MASTER,
//! #                           # backup otherwise
//! interface = "eth0"          # --mcast-interface (required)
//! syncid = 0                  # 0..255; a backup with 0 takes every syncid
//! maxlen = 1472               # --sync-maxlen: bytes of UDP payload (default: from the MTU)
//! group = "224.0.0.81"        # --mcast-group
//! port = 8848                 # --mcast-port
//! ttl = 1                     # --mcast-ttl, 1..255
//! peers = ["192.0.2.3"]       # unicast instead of multicast: the master sends to each,
//! #                           # a backup takes messages only from these
//! max_rate = 2000             # messages a second a master sends at most (excess counted)
//! refresh_period = 64         # s: a live connection is sent again at most this often
//! #                           # (IPVS's sync_refresh_period; the data path's, 1..270)
//! ```

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::wire;
use crate::config::{Problem, ipv4, ranged, valid_ifname};

/// IPVS's two sync roles (`IP_VS_STATE_MASTER`, `IP_VS_STATE_BACKUP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Backup,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Backup => "backup",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Role, ()> {
        match s {
            "master" => Ok(Role::Master),
            "backup" => Ok(Role::Backup),
            _ => Err(()),
        }
    }
}

/// Default messages a second (a master sending 40 connections per message: 80,000
/// connections a second, more than a 2-core director opens).
pub const DEFAULT_MAX_RATE: u32 = 2000;

/// One sync daemon's parameters (`struct ipvs_sync_daemon_cfg` and our additions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub interface: String,
    pub syncid: u8,
    /// `None`: IPVS's default (1472 for a master; the MTU less 28 for a backup).
    pub maxlen: Option<u16>,
    pub group: Ipv4Addr,
    pub port: u16,
    pub ttl: u8,
    /// Unicast peers (empty: multicast to `group`).
    #[serde(default)]
    pub peers: Vec<Ipv4Addr>,
    pub max_rate: u32,
    /// Seconds between two sends of a live connection (`None`: the data path's default).
    #[serde(default)]
    pub refresh_period: Option<u32>,
}

impl Params {
    pub fn new(interface: &str) -> Params {
        Params {
            interface: interface.to_string(),
            syncid: 0,
            maxlen: None,
            group: wire::DEFAULT_GROUP,
            port: wire::DEFAULT_PORT,
            ttl: 1,
            peers: Vec::new(),
            max_rate: DEFAULT_MAX_RATE,
            refresh_period: None,
        }
    }
}

/// What runs the roles: fixed, or a VRRP instance's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Role(Role),
    Follow(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonSpec {
    pub mode: Mode,
    pub params: Params,
}

/// Every `[[sync_daemon]]`: at most one master and one backup (as IPVS runs at most one of
/// each), or one that follows a VRRP instance (which runs both in turn).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncConfig {
    pub daemons: Vec<DaemonSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSyncDaemon {
    state: Option<Spanned<String>>,
    vrrp_instance: Option<Spanned<String>>,
    interface: Spanned<String>,
    syncid: Option<Spanned<i64>>,
    maxlen: Option<Spanned<i64>>,
    group: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    ttl: Option<Spanned<i64>>,
    #[serde(default)]
    peers: Vec<Spanned<String>>,
    max_rate: Option<Spanned<i64>>,
    refresh_period: Option<Spanned<i64>>,
}

/// Checks the `[[sync_daemon]]` tables; `instances` are the configured VRRP instances' names.
pub(crate) fn build(
    raw: &[Spanned<RawSyncDaemon>],
    instances: &[String],
) -> Result<SyncConfig, Problem> {
    let mut out = SyncConfig::default();
    for s in raw {
        let r = s.get_ref();
        let mode = match (&r.state, &r.vrrp_instance) {
            (Some(_), Some(v)) => {
                return Err(Problem::at(
                    v,
                    "a sync_daemon has either state (fixed) or vrrp_instance (follows it), \
                     not both"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(Problem::at(
                    s,
                    "a sync_daemon needs state (\"master\" or \"backup\") or vrrp_instance".into(),
                ));
            }
            (Some(st), None) => Mode::Role(st.get_ref().parse().map_err(|_| {
                Problem::at(
                    st,
                    format!(
                        "unknown sync state {:?} (expected one of: master, backup)",
                        st.get_ref()
                    ),
                )
            })?),
            (None, Some(v)) => {
                if !instances.contains(v.get_ref()) {
                    return Err(Problem::at(
                        v,
                        format!("no vrrp_instance {:?} to follow", v.get_ref()),
                    ));
                }
                Mode::Follow(v.get_ref().clone())
            }
        };
        if !valid_ifname(r.interface.get_ref()) {
            return Err(Problem::at(
                &r.interface,
                format!("invalid interface name {:?}", r.interface.get_ref()),
            ));
        }
        let mut p = Params::new(r.interface.get_ref());
        if let Some(v) = &r.syncid {
            p.syncid = ranged(v, "syncid", 0u8, 255)?;
        }
        if let Some(v) = &r.maxlen {
            p.maxlen = Some(ranged(v, "maxlen", 1u16, wire::MAX_MAXLEN as u16)?);
        }
        if let Some(v) = &r.group {
            p.group = ipv4(v)?;
            if !p.group.is_multicast() {
                return Err(Problem::at(
                    v,
                    format!("group {} is not a multicast address", p.group),
                ));
            }
        }
        if let Some(v) = &r.port {
            p.port = ranged(v, "port", 1u16, 65535)?;
        }
        if let Some(v) = &r.ttl {
            p.ttl = ranged(v, "ttl", 1u8, 255)?;
        }
        for v in &r.peers {
            let a = ipv4(v)?;
            if a.is_multicast() || a.is_unspecified() || a.is_broadcast() {
                return Err(Problem::at(v, format!("peer {a} is not a unicast address")));
            }
            if p.peers.contains(&a) {
                return Err(Problem::at(v, format!("duplicate peer {a}")));
            }
            p.peers.push(a);
        }
        if let Some(v) = &r.max_rate {
            p.max_rate = ranged(v, "max_rate", 1u32, 1_000_000)?;
        }
        if let Some(v) = &r.refresh_period {
            // The data path keeps it in 8 bits of ~1.07 s units.
            p.refresh_period = Some(ranged(v, "refresh_period", 1u32, 270)?);
        }
        let clash = out.daemons.iter().find(|d| match (&d.mode, &mode) {
            (Mode::Follow(_), _) | (_, Mode::Follow(_)) => true,
            (Mode::Role(a), Mode::Role(b)) => a == b,
        });
        if let Some(other) = clash {
            let what = match (&other.mode, &mode) {
                (Mode::Role(a), Mode::Role(_)) => format!("a second {} sync daemon", a.name()),
                _ => "a sync_daemon that follows a vrrp_instance runs both roles; it cannot \
                      share them with another sync_daemon"
                    .to_string(),
            };
            return Err(Problem::at(s, what));
        }
        out.daemons.push(DaemonSpec { mode, params: p });
    }
    Ok(out)
}

impl SyncConfig {
    /// The refresh period the data path is to use (the first daemon's that sets one).
    pub fn refresh_period(&self) -> Option<std::time::Duration> {
        self.daemons
            .iter()
            .find_map(|d| d.params.refresh_period)
            .map(|s| std::time::Duration::from_secs(s.into()))
    }
}
