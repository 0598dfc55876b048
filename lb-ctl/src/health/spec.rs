//! What the configuration asks the health checker to do: keepalived's checker options, with
//! every default already resolved (service → real server → checker, as keepalived's
//! `check_data.c` does), so a running checker never looks anything up.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::model::{Forward, ServiceKey};

/// keepalived's `global_defs` (the `[global]` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalDefs {
    /// `router_id`; `None`: the host name.
    pub router_id: Option<String>,
    pub notification_email: Vec<String>,
    /// `None`: `keepalived@<host name>`, as keepalived.
    pub notification_email_from: Option<String>,
    pub smtp_server: Option<SocketAddr>,
    pub smtp_connect_timeout: Duration,
}

impl Default for GlobalDefs {
    fn default() -> Self {
        GlobalDefs {
            router_id: None,
            notification_email: Vec::new(),
            notification_email_from: None,
            smtp_server: None,
            smtp_connect_timeout: Self::DEFAULT_SMTP_CONNECT_TIMEOUT,
        }
    }
}

impl GlobalDefs {
    /// keepalived's `smtp_connect_timeout` default.
    pub const DEFAULT_SMTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

    /// The mail settings, when there is somewhere to send mail (an SMTP server and at least
    /// one recipient), as keepalived sends none otherwise.
    pub fn mail(&self) -> Option<crate::notify::MailConfig> {
        let server = self.smtp_server?;
        if self.notification_email.is_empty() {
            return None;
        }
        let host = host_name();
        Some(crate::notify::MailConfig {
            router_id: self.router_id.clone().unwrap_or_else(|| host.clone()),
            server,
            from: self
                .notification_email_from
                .clone()
                .unwrap_or_else(|| format!("keepalived@{host}")),
            to: self.notification_email.clone(),
            connect_timeout: self.smtp_connect_timeout,
        })
    }
}

/// The host name (`uname -n`), keepalived's default `router_id`.
pub fn host_name() -> String {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "localhost".into();
    }
    let bytes: Vec<u8> = u
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One URL of an HTTP_GET/SSL_GET checker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UrlSpec {
    pub path: String,
    /// Accepted statuses; empty: 200..=299 (keepalived's default).
    pub status_code: Vec<u16>,
    /// MD5 of the body (keepalived's `digest`, made with `genhash`).
    pub digest: Option<[u8; 16]>,
}

impl UrlSpec {
    pub fn accepts(&self, status: u16) -> bool {
        if self.status_code.is_empty() {
            (200..=299).contains(&status)
        } else {
            self.status_code.contains(&status)
        }
    }
}

/// What a checker probes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// TCP_CHECK: a connection is accepted.
    Tcp,
    /// HTTP_GET: every URL answers an accepted status (and body digest).
    Http(Vec<UrlSpec>),
    /// SSL_GET: the same over TLS.
    Ssl(Vec<UrlSpec>),
    /// MISC_CHECK: a command's exit code.
    Misc {
        /// The command line (split on whitespace, run without a shell, as keepalived does).
        path: String,
        timeout: Duration,
        /// `misc_dynamic`: exit code 2..=255 means up with weight code − 2.
        dynamic: bool,
        user: Option<String>,
    },
}

impl CheckKind {
    /// keepalived's name of the checker.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "TCP_CHECK",
            CheckKind::Http(_) => "HTTP_GET",
            CheckKind::Ssl(_) => "SSL_GET",
            CheckKind::Misc { .. } => "MISC_CHECK",
        }
    }
}

/// When a checker probes (keepalived's `checker_t` timing fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timing {
    pub delay_loop: Duration,
    /// Failed attempts retried before the checker goes down.
    pub retry: u32,
    pub delay_before_retry: Duration,
    /// The first probe comes at a random delay in `0..=warmup`.
    pub warmup: Duration,
}

/// One checker of one real server, defaults resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// `connect_ip`:`connect_port` (default: the real server's).
    pub target: SocketAddr,
    pub bindto: Option<IpAddr>,
    pub bind_port: Option<u16>,
    pub connect_timeout: Duration,
    pub timing: Timing,
    /// Starts down until its first good probe.
    pub alpha: bool,
}

/// keepalived's defaults (check_data.c, check_api.c, check_http.c, check_misc.c).
pub mod defaults {
    use std::time::Duration;
    pub const DELAY_LOOP: Duration = Duration::from_secs(60);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// TCP_CHECK, HTTP_GET, SSL_GET: one retry; MISC_CHECK: none.
    pub const RETRY: u32 = 1;
    pub const MISC_RETRY: u32 = 0;
    /// TCP_CHECK and MISC_CHECK: 1 s; HTTP_GET and SSL_GET: 3 s.
    pub const DELAY_BEFORE_RETRY: Duration = Duration::from_secs(1);
    pub const HTTP_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(3);
    pub const QUORUM: u32 = 1;
    /// The sorry server's weight (keepalived gives it the virtual server's default, 1).
    pub const SORRY_WEIGHT: u32 = 1;
}

/// A real server's health settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsHealthSpec {
    pub addr: IpAddr,
    pub port: u16,
    pub inhibit_on_failure: bool,
    pub notify_up: Option<String>,
    pub notify_down: Option<String>,
    /// No checker: always up.
    pub checks: Vec<CheckSpec>,
}

/// keepalived's `sorry_server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SorrySpec {
    pub addr: IpAddr,
    pub port: u16,
    pub forward: Forward,
    /// `sorry_server_inhibit`: kept at weight 0 while not in use instead of absent.
    pub inhibit: bool,
}

/// A service's health settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealthSpec {
    pub quorum: u32,
    pub hysteresis: u32,
    pub quorum_up: Option<String>,
    pub quorum_down: Option<String>,
    pub sorry: Option<SorrySpec>,
    pub real_servers: Vec<RsHealthSpec>,
}

impl ServiceHealthSpec {
    /// Whether anything here needs the checker (otherwise the service is left alone).
    pub fn is_active(&self) -> bool {
        self.sorry.is_some()
            || self.quorum_up.is_some()
            || self.quorum_down.is_some()
            || self
                .real_servers
                .iter()
                .any(|r| !r.checks.is_empty() || r.notify_up.is_some() || r.notify_down.is_some())
    }
}

/// Every service's health settings, by service.
pub type HealthSpecs = BTreeMap<ServiceKey, ServiceHealthSpec>;
