//! Logs: `tracing` with a text or JSON formatter (`--log-format`), and one structured event
//! per state change of the table and of the real servers' paths.
//!
//! Every `log::` call elsewhere keeps working: `tracing-log` forwards them into the same
//! subscriber, so they come out in the same format (a JSON line each with `--log-format json`).
//! `RUST_LOG` filters as it did with env_logger (default `info`).
//!
//! State changes are events with a `change` field naming what happened (`service_added`,
//! `real_server_resolved`, …) and the object's fields, so a log pipeline can select them
//! without parsing messages. Health-check and VRRP transitions are to emit theirs the same
//! way: `tracing::info!(change = "checker_down", service = %key, real_server = %addr, …)`,
//! `tracing::info!(change = "vrrp_transition", instance = …, from = …, to = …)`.

use std::collections::BTreeMap;

use crate::model::{DestConfig, Model, ServiceKey};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, fields as keys (for journald exporters, Loki, ELK).
    Json,
}

/// Installs the subscriber (stderr, `RUST_LOG` or `info`) and the `log` bridge. Called once,
/// first thing in `main`.
pub fn init(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs go to files and journald too.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let installed = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish(),
        ),
    };
    if installed.is_ok() {
        // `log` records become tracing events; the subscriber's filter decides which show.
        let _ = tracing_log::LogTracer::init();
    }
}

/// Emits one event per service and real server `new` adds, edits or removes from `old`.
pub fn model_changes(old: &Model, new: &Model) {
    for (key, e) in &new.services {
        match old.services.get(key) {
            None => tracing::info!(
                change = "service_added",
                service = %key,
                scheduler = %e.config.scheduler,
                real_servers = e.dests.len(),
                "service {key} added"
            ),
            Some(o) if o.config != e.config => tracing::info!(
                change = "service_edited",
                service = %key,
                scheduler = %e.config.scheduler,
                persistence = ?e.config.persistence.map(|p| p.timeout),
                "service {key} edited"
            ),
            Some(_) => {}
        }
        let before: BTreeMap<_, &DestConfig> = old
            .services
            .get(key)
            .map(|o| o.dests.iter().map(|d| ((d.addr, d.port), d)).collect())
            .unwrap_or_default();
        for d in &e.dests {
            match before.get(&(d.addr, d.port)) {
                None => dest_event("real_server_added", key, d),
                Some(o) if *o != d => dest_event("real_server_edited", key, d),
                Some(_) => {}
            }
        }
        for (addr, d) in &before {
            if !e.dests.iter().any(|n| (n.addr, n.port) == *addr) {
                dest_event("real_server_removed", key, d);
            }
        }
    }
    for (key, e) in &old.services {
        if !new.services.contains_key(key) {
            tracing::info!(
                change = "service_removed",
                service = %key,
                real_servers = e.dests.len(),
                "service {key} removed"
            );
        }
    }
}

fn dest_event(change: &str, key: &ServiceKey, d: &DestConfig) {
    tracing::info!(
        change,
        service = %key,
        real_server = %crate::model::addr_port(d.addr, d.port),
        forward = d.forward.label(),
        weight = d.weight,
        "{change}: {} in {key}",
        crate::model::addr_port(d.addr, d.port)
    );
}

/// The last path state seen of each real server, to log its transitions once each.
#[derive(Default)]
pub struct PathWatch {
    seen: BTreeMap<String, (String, Option<String>)>,
}

impl PathWatch {
    /// Compares the resolver's `status()` (an array of `{address, state, interface, next_hop,
    /// mac, reason}`) with what was last seen and emits `real_server_resolved` /
    /// `real_server_unresolved` for each change (a first sight counts as one).
    pub fn update(&mut self, status: &serde_json::Value) {
        let mut now = BTreeMap::new();
        for s in status.as_array().into_iter().flatten() {
            let field = |k: &str| s.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let (Some(addr), Some(state)) = (field("address"), field("state")) else {
                continue;
            };
            let via = field("interface").zip(field("next_hop"));
            let key = (state.clone(), field("reason").or(field("mac")));
            if self.seen.get(&addr) != Some(&key) {
                if state == "resolved" {
                    let (iface, hop) = via.unwrap_or_default();
                    tracing::info!(
                        change = "real_server_resolved",
                        real_server = %addr,
                        interface = %iface,
                        next_hop = %hop,
                        mac = field("mac").unwrap_or_default(),
                        "real server {addr} resolved via {iface}"
                    );
                } else {
                    let reason = field("reason").unwrap_or_default();
                    tracing::warn!(
                        change = "real_server_unresolved",
                        real_server = %addr,
                        reason = %reason,
                        "real server {addr} unresolved: {reason}"
                    );
                }
            }
            now.insert(addr, key);
        }
        self.seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Forward, Op, Scheduler, ServiceConfig};
    use std::{
        io::Write,
        net::Ipv4Addr,
        sync::{Arc, Mutex},
    };

    /// Collects what a JSON subscriber writes, for the duration of `f`.
    fn json_lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    #[test]
    fn each_table_change_is_one_structured_event() {
        let key = ServiceKey::tcp(Ipv4Addr::new(192, 0, 2, 1), 80);
        let mut old = Model::default();
        old.apply(&Op::AddService(ServiceConfig::new(key, Scheduler::Rr)))
            .unwrap();
        let d1 = DestConfig::new(Ipv4Addr::new(198, 51, 100, 1), 80, Forward::Dr, 1);
        old.apply(&Op::AddDest(key, d1)).unwrap();
        let mut new = old.clone();
        let mut d1w = d1;
        d1w.weight = 5;
        new.apply(&Op::EditDest(key, d1w)).unwrap();
        let key2 = ServiceKey::tcp(Ipv4Addr::new(192, 0, 2, 2), 443);
        new.apply(&Op::AddService(ServiceConfig::new(key2, Scheduler::Wrr)))
            .unwrap();
        let lines = json_lines(|| model_changes(&old, &new));
        let changes: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| {
                (
                    l["change"].as_str().unwrap(),
                    l["service"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            changes,
            [
                ("real_server_edited", "TCP 192.0.2.1:80"),
                ("service_added", "TCP 192.0.2.2:443"),
            ],
            "{lines:?}"
        );
        assert_eq!(lines[0]["weight"], 5);
        assert_eq!(lines[0]["real_server"], "198.51.100.1:80");
        // And back: the service goes, the weight returns.
        let lines = json_lines(|| model_changes(&new, &old));
        let changes: Vec<&str> = lines
            .iter()
            .map(|l| l["change"].as_str().unwrap())
            .collect();
        assert_eq!(changes, ["real_server_edited", "service_removed"]);
        assert!(json_lines(|| model_changes(&old, &old)).is_empty());
    }

    #[test]
    fn path_transitions_are_logged_once_each() {
        let mut w = PathWatch::default();
        let up = serde_json::json!([{"address": "198.51.100.1", "state": "resolved",
            "interface": "eth1", "next_hop": "198.51.100.1", "mac": "02:00:00:00:00:01"}]);
        let down = serde_json::json!([{"address": "198.51.100.1", "state": "unresolved",
            "reason": "no route to 198.51.100.1"}]);
        let l = json_lines(|| w.update(&up));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0]["change"], "real_server_resolved");
        assert_eq!(l[0]["interface"], "eth1");
        assert!(
            json_lines(|| w.update(&up)).is_empty(),
            "no change, no event"
        );
        let l = json_lines(|| w.update(&down));
        assert_eq!(l[0]["change"], "real_server_unresolved");
        assert_eq!(l[0]["reason"], "no route to 198.51.100.1");
        assert_eq!(l[0]["level"], "WARN");
        assert!(json_lines(|| w.update(&down)).is_empty());
        assert_eq!(
            json_lines(|| w.update(&up))[0]["change"],
            "real_server_resolved"
        );
    }
}
