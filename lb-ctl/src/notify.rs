//! What keepalived does when a real server or a service's quorum changes state besides
//! changing the table: run the operator's notify commands and send an e-mail per transition.
//!
//! INTERFACE ONLY (this session's work in progress): the health checker calls these; the bodies
//! are filled in on the `notify` branch. Do not change the signatures without telling the lead.

use std::{net::SocketAddr, time::Duration};

/// keepalived's `global_defs` mail settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailConfig {
    /// `router_id`: names this director in subjects.
    pub router_id: String,
    /// `smtp_server` (port 25 unless given).
    pub server: SocketAddr,
    /// `notification_email_from`.
    pub from: String,
    /// `notification_email`.
    pub to: Vec<String>,
    /// `smtp_connect_timeout`.
    pub connect_timeout: Duration,
}

/// A state change worth telling the operator about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A real server of a service came up or went down; `reason` says why (e.g. "timeout",
    /// "connection refused", "status 503", "digest mismatch").
    RealServer {
        service: String,
        real_server: String,
        up: bool,
        reason: String,
    },
    /// A service gained or lost its quorum.
    Quorum { service: String, up: bool },
}

/// Sends mail for events; cheap to clone, never blocks its caller (mail goes out on a task of
/// its own, failures are logged, at most one delivery in flight per event).
#[derive(Clone, Debug)]
pub struct Mailer {
    config: MailConfig,
}

impl Mailer {
    pub fn new(config: MailConfig) -> Self {
        Mailer { config }
    }

    pub fn config(&self) -> &MailConfig {
        &self.config
    }

    /// Queues one mail about `event` (keepalived's subject and body layout).
    pub fn send(&self, event: &Event) {
        let _ = event;
        log::warn!("mail notifications are not built yet");
    }
}

/// Runs an operator's notify command (`notify_up`, `quorum_down`, …) as keepalived does,
/// without waiting for it: the command is killed after `timeout`, its failure logged.
pub fn run_command(command: &str, timeout: Duration) {
    let _ = timeout;
    log::warn!("notify commands are not built yet: {command}");
}
