//! `/metrics`: the daemon's figures in the Prometheus text format, on their own HTTP listener.
//!
//! The listener only reads a [`Sample`] the daemon publishes about once a second (the same
//! reads `-Ln --stats` and `status` make); it never touches the maps or the control socket,
//! so a scraper needs no privilege and a slow or hostile one cannot stall the daemon's loop.
//!
//! Names follow node_exporter's IPVS collector (`node_ipvs_*` → `lb_*`) and its label names,
//! so recording rules and dashboards written for it carry over:
//!
//! * per service (`local_address`, `local_port`, `proto`): `lb_connections_total`,
//!   `lb_incoming_packets_total`, `lb_outgoing_packets_total`, `lb_incoming_bytes_total`,
//!   `lb_outgoing_bytes_total` — node_exporter's director-wide totals are their `sum()`;
//! * per real server (those labels plus `remote_address`, `remote_port`):
//!   `lb_backend_connections_active`, `lb_backend_connections_inactive`, `lb_backend_weight`
//!   as in node_exporter, and the traffic counters under `lb_backend_*` (kept apart from the
//!   service ones so that `sum()` over either never counts a packet twice).
//!
//! The crate is `prometheus` (tikv's, the most used Rust client) rather than
//! `prometheus-client`: it writes the classic text format 0.0.4 that `promtool check metrics`
//! and every Prometheus version parse, where `prometheus-client` writes OpenMetrics (counter
//! families without `_total`, a `# EOF` line), which the 0.0.4 parser misreads. Its
//! `Registry` is also the hook other parts (health checks, VRRP) register their own
//! collectors in: see [`Metrics::register`].

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::SystemTime,
};

use anyhow::Context;
use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder, core::Collector,
};

use crate::api::Snapshot;

/// What one refresh of the daemon read: the table with its counters (as `-Ln --stats`), the
/// data path's exit counters and the connection tables' fill.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub snapshot: Snapshot,
    /// `lb_common::cnt::NAMES` with their values, summed over CPUs (as `status` shows them).
    pub counters: Vec<(&'static str, u64)>,
    pub tables: Tables,
    /// Each real server's address and whether a path to it is resolved.
    pub real_servers: Vec<(String, bool)>,
    /// How long the daemon took to read this sample (its loop waits meanwhile).
    pub read_seconds: f64,
}

/// The connection tables after the last sweep.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tables {
    pub conn_entries: u64,
    pub conn_expired_last_sweep: u64,
    pub templates: u64,
    pub templates_expired_last_sweep: u64,
    pub embryonic_size: u64,
    pub embryonic_entries: u64,
    pub embryonic_expired_last_sweep: u64,
}

/// The shared state between the daemon (which publishes) and the HTTP thread (which renders).
pub struct Metrics {
    /// The last sample, with its refresh number and time: one lock, so a scrape never pairs
    /// one refresh's figures with another's number.
    published: Mutex<Published>,
    /// When the daemon should read the next sample (see [`Metrics::due`]).
    next: Mutex<std::time::Instant>,
    /// Collectors other parts register (health checks, VRRP); gathered at every scrape.
    extra: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What a scrape shows: the sample, which refresh read it and when (Unix time).
#[derive(Clone, Default)]
struct Published {
    sample: Sample,
    refreshes: u64,
    at: f64,
}

/// The labels of a service's series (node_exporter's).
const SVC_LABELS: [&str; 3] = ["local_address", "local_port", "proto"];
/// The labels of a real server's series (node_exporter's).
const RS_LABELS: [&str; 5] = [
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "proto",
];

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            published: Mutex::new(Published::default()),
            next: Mutex::new(std::time::Instant::now()),
            extra: Registry::new(),
        }
    }

    /// Whether the daemon should read a sample now. Reading runs in the daemon's loop, and
    /// costs about 6 µs per real server in a debug build (64 ms for 10,000): the refresh
    /// comes at most once a second and then only after ten times its last cost has passed,
    /// so it never takes more than a tenth of the loop, whatever the table's size.
    pub fn due(&self) -> bool {
        std::time::Instant::now() >= *self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the published sample (the daemon calls this after each refresh).
    pub fn publish(&self, sample: Sample) {
        let wait = std::time::Duration::from_secs_f64((sample.read_seconds * 10.0).min(60.0));
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now() + wait;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut p = self.published.lock().unwrap_or_else(|p| p.into_inner());
        *p = Published {
            sample,
            refreshes: p.refreshes + 1,
            at: now,
        };
    }

    /// The hook for health-check and VRRP metrics: register a collector (a `GaugeVec` the
    /// checker keeps up to date, say) and it is scraped with the rest. A name the daemon
    /// already exports is refused, so the output stays valid.
    pub fn register(&self, c: Box<dyn Collector>) -> anyhow::Result<()> {
        let (_, taken) = self.render_families(&Published::default());
        for d in c.desc() {
            anyhow::ensure!(
                !taken.contains(&d.fq_name),
                "metric {} is one the daemon exports itself",
                d.fq_name
            );
        }
        self.extra
            .register(c)
            .context("registering a metrics collector")
    }

    /// The text of `/metrics`.
    pub fn render(&self) -> String {
        let published = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (mut families, _) = self.render_families(&published);
        families.extend(self.extra.gather());
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a malformed family, which `gather` never yields.
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::warn!("encoding the metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The daemon's own families for `p` (its sample, refresh number and time), and the names
    /// of all of them (those without a series too: `gather` leaves such families out).
    fn render_families(
        &self,
        p: &Published,
    ) -> (Vec<prometheus::proto::MetricFamily>, Vec<String>) {
        let s = &p.sample;
        let reg = Registry::new();
        let names = std::cell::RefCell::new(Vec::new());
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg.register(Box::new(c.clone())).expect("unique name");
            names.borrow_mut().push(name.to_string());
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg.register(Box::new(g.clone())).expect("unique name");
            names.borrow_mut().push(name.to_string());
            g
        };
        let traffic = |prefix: &str, what: &str, labels: &[&str]| {
            [
                ("connections_total", "Connections scheduled"),
                ("incoming_packets_total", "Packets from clients"),
                ("outgoing_packets_total", "Packets to clients (NAT replies)"),
                ("incoming_bytes_total", "Bytes from clients"),
                ("outgoing_bytes_total", "Bytes to clients (NAT replies)"),
            ]
            .map(|(n, h)| counter(&format!("{prefix}{n}"), &format!("{h}, {what}."), labels))
        };
        let svc = traffic("lb_", "per virtual service", &SVC_LABELS);
        let rs = traffic("lb_backend_", "per real server", &RS_LABELS);
        let active = gauge(
            "lb_backend_connections_active",
            "Active connections (ipvsadm's ActiveConn) per real server.",
            &RS_LABELS,
        );
        let inactive = gauge(
            "lb_backend_connections_inactive",
            "Inactive connections (ipvsadm's InActConn) per real server.",
            &RS_LABELS,
        );
        let persistent = gauge(
            "lb_backend_connections_persistent",
            "Persistence templates per real server.",
            &RS_LABELS,
        );
        let weight = gauge(
            "lb_backend_weight",
            "Weight of the real server (0: quiesced).",
            &RS_LABELS,
        );
        for v in &s.snapshot.services {
            let k = v.config.key;
            let (addr, port) = (k.addr.to_string(), k.port.to_string());
            let proto = k.proto.label();
            let st = v.stats;
            for (c, n) in svc
                .iter()
                .zip([st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes])
            {
                c.with_label_values(&[&addr, &port, proto]).inc_by(n);
            }
            for d in &v.dests {
                let (ra, rp) = (d.config.addr.to_string(), d.config.port.to_string());
                let l = [addr.as_str(), &port, &ra, &rp, proto];
                let st = d.stats;
                for (c, n) in
                    rs.iter()
                        .zip([st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes])
                {
                    c.with_label_values(&l).inc_by(n);
                }
                active.with_label_values(&l).set(d.active_conns.into());
                inactive.with_label_values(&l).set(d.inact_conns.into());
                persistent.with_label_values(&l).set(d.persist_conns.into());
                weight.with_label_values(&l).set(d.config.weight.into());
            }
        }

        // The data path's exits by reason: what `status` lists as `counters`, split so that
        // `sum(rate(lb_xdp_drops_total[1m]))` is every drop and nothing else.
        let forwarded = counter(
            "lb_xdp_forwarded_total",
            "Packets the XDP program forwarded, by action (tx: out of the same interface, \
             redirect: out of another).",
            &["action"],
        );
        let passes = counter(
            "lb_xdp_passes_total",
            "Packets the XDP program passed to the kernel's stack, by reason.",
            &["reason"],
        );
        let drops = counter(
            "lb_xdp_drops_total",
            "Packets the XDP program dropped, by reason.",
            &["reason"],
        );
        let events = counter(
            "lb_xdp_events_total",
            "Other data-path events (new connections, ICMP errors, embryonic connections).",
            &["event"],
        );
        for (name, v) in &s.counters {
            let (c, label) = if let Some(r) = name.strip_prefix("drop_") {
                (&drops, r)
            } else if let Some(r) = name.strip_prefix("pass_") {
                (&passes, r)
            } else if matches!(*name, "tx" | "redirect") {
                (&forwarded, *name)
            } else {
                (&events, *name)
            };
            c.with_label_values(&[label]).inc_by(*v);
        }

        let t = s.tables;
        let g = |name: &str, help: &str, v: u64| {
            gauge(name, help, &[])
                .with_label_values::<&str>(&[])
                .set(v as i64);
        };
        g(
            "lb_conn_table_size",
            "Entries the connection table holds.",
            s.snapshot.conn_table_size.into(),
        );
        g(
            "lb_conn_table_entries",
            "Entries in the connection table (NAT reply entries included) at the last sweep.",
            t.conn_entries,
        );
        g(
            "lb_conn_table_expired_last_sweep",
            "Connections the last sweep (once a second) expired.",
            t.conn_expired_last_sweep,
        );
        g(
            "lb_persistence_templates",
            "Persistence templates at the last sweep.",
            t.templates,
        );
        g(
            "lb_persistence_templates_expired_last_sweep",
            "Persistence templates the last sweep expired.",
            t.templates_expired_last_sweep,
        );
        g(
            "lb_embryonic_table_size",
            "Entries the embryonic-connection table (SYN-flood defence) holds.",
            t.embryonic_size,
        );
        g(
            "lb_embryonic_table_entries",
            "Embryonic connections at the last sweep.",
            t.embryonic_entries,
        );
        g(
            "lb_embryonic_expired_last_sweep",
            "Embryonic connections the last sweep expired.",
            t.embryonic_expired_last_sweep,
        );
        g(
            "lb_services",
            "Virtual services configured.",
            s.snapshot.services.len() as u64,
        );
        let resolved = gauge(
            "lb_real_server_resolved",
            "1 if the daemon has a route and MAC for the real server, else 0.",
            &["address"],
        );
        for (addr, ok) in &s.real_servers {
            resolved.with_label_values(&[addr]).set(i64::from(*ok));
        }
        gauge(
            "lb_build_info",
            "Always 1; the labels say which build runs.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        counter(
            "lb_metrics_refreshes_total",
            "Times the daemon refreshed the figures shown here.",
            &[],
        )
        .with_label_values::<&str>(&[])
        .inc_by(p.refreshes);
        let ts = GaugeVec::new(
            Opts::new(
                "lb_metrics_last_refresh_timestamp_seconds",
                "When the daemon last refreshed the figures shown here (Unix time).",
            ),
            &[],
        )
        .expect("valid metric");
        reg.register(Box::new(ts.clone())).expect("unique name");
        ts.with_label_values::<&str>(&[]).set(p.at);
        let cost = GaugeVec::new(
            Opts::new(
                "lb_metrics_refresh_duration_seconds",
                "How long the daemon took to read the figures shown here.",
            ),
            &[],
        )
        .expect("valid metric");
        reg.register(Box::new(cost.clone())).expect("unique name");
        cost.with_label_values::<&str>(&[]).set(s.read_seconds);
        let mut names = names.into_inner();
        names.push("lb_metrics_last_refresh_timestamp_seconds".into());
        names.push("lb_metrics_refresh_duration_seconds".into());
        (reg.gather(), names)
    }

    /// Every metric name the daemon exports itself (for the dashboard's check).
    pub fn exported_names(&self) -> Vec<String> {
        self.render_families(&Published::default()).1
    }

    /// Binds `addr` now (so a bad or busy address stops the daemon before it changes
    /// anything) and serves `/metrics` from a thread of its own until the returned server is
    /// dropped.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> anyhow::Result<Server> {
        let http = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
        let http = Arc::new(http);
        let local = http
            .server_addr()
            .to_ip()
            .context("the metrics listener has no IP address")?;
        let (h, m) = (http.clone(), self.clone());
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for req in h.incoming_requests() {
                    let resp = m.answer(req.method(), req.url());
                    // A scraper that went away is its own loss.
                    let _ = req.respond(resp);
                }
            })
            .context("starting the metrics thread")?;
        log::info!("serving metrics on http://{local}/metrics");
        Ok(Server {
            http,
            thread: Some(thread),
            addr: local,
        })
    }

    fn answer(
        &self,
        method: &tiny_http::Method,
        url: &str,
    ) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let header = |v: &str| {
            tiny_http::Header::from_bytes(&b"Content-Type"[..], v.as_bytes()).expect("valid")
        };
        let path = url.split('?').next().unwrap_or("");
        let text = "text/plain; charset=utf-8";
        match (method, path) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                tiny_http::Response::from_string(self.render())
                    .with_header(header(TextEncoder::new().format_type()))
            }
            (tiny_http::Method::Get | tiny_http::Method::Head, "/") => {
                tiny_http::Response::from_string("lb-ctl: metrics at /metrics\n")
                    .with_header(header(text))
            }
            (tiny_http::Method::Get | tiny_http::Method::Head, _) => {
                tiny_http::Response::from_string("not found: metrics are at /metrics\n")
                    .with_status_code(404)
                    .with_header(header(text))
            }
            _ => tiny_http::Response::from_string("read-only: only GET and HEAD\n")
                .with_status_code(405)
                .with_header(header(text)),
        }
    }
}

/// What keepalived's exporters show beside IPVS: each checked real server's health and each
/// VRRP instance's state, registered through [`Metrics::register`] and set from the
/// daemon's `status` figures at every refresh.
#[derive(Clone)]
pub struct HaGauges {
    /// `lb_backend_up`: 1 while the checkers find the real server up, 0 while down.
    backend_up: IntGaugeVec,
    /// `lb_vrrp_state`: 1 on the instance's current state (INIT, BACKUP, MASTER, FAULT).
    vrrp_state: IntGaugeVec,
    /// `lb_vrrp_priority`: the priority the instance advertises now.
    vrrp_priority: IntGaugeVec,
}

impl HaGauges {
    /// Creates the gauges and registers them with `m`.
    pub fn register(m: &Metrics) -> anyhow::Result<Self> {
        let g = HaGauges {
            backend_up: IntGaugeVec::new(
                Opts::new(
                    "lb_backend_up",
                    "Whether the health checks find the real server up (1) or down (0).",
                ),
                &RS_LABELS,
            )?,
            vrrp_state: IntGaugeVec::new(
                Opts::new(
                    "lb_vrrp_state",
                    "1 on the VRRP instance's current state (INIT, BACKUP, MASTER, FAULT).",
                ),
                &["instance", "state"],
            )?,
            vrrp_priority: IntGaugeVec::new(
                Opts::new(
                    "lb_vrrp_priority",
                    "The priority the VRRP instance advertises now.",
                ),
                &["instance"],
            )?,
        };
        m.register(Box::new(g.backend_up.clone()))?;
        m.register(Box::new(g.vrrp_state.clone()))?;
        m.register(Box::new(g.vrrp_priority.clone()))?;
        Ok(g)
    }

    /// Sets the health gauges from `Health::status()`'s `real_servers` ("service":
    /// "TCP 192.0.2.100:80", "real_server": "192.0.2.11:80", "health": "up"|"down").
    pub fn set_health(&self, status: &serde_json::Value) {
        self.backend_up.reset();
        for rs in status["real_servers"].as_array().into_iter().flatten() {
            let (Some(svc), Some(real), Some(health)) = (
                rs["service"].as_str(),
                rs["real_server"].as_str(),
                rs["health"].as_str(),
            ) else {
                continue;
            };
            let Some((proto, local)) = svc.split_once(' ') else {
                continue;
            };
            let (Ok(local), Ok(remote)) = (
                local.parse::<std::net::SocketAddr>(),
                real.parse::<std::net::SocketAddr>(),
            ) else {
                continue;
            };
            let labels = [
                local.ip().to_string(),
                local.port().to_string(),
                remote.ip().to_string(),
                remote.port().to_string(),
                proto.to_string(),
            ];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.backend_up
                .with_label_values(&labels)
                .set(i64::from(health == "up"));
        }
    }

    /// Sets the VRRP gauges from the instances' status.
    pub fn set_vrrp(&self, instances: &[crate::vrrp::InstanceStatus]) {
        self.vrrp_state.reset();
        self.vrrp_priority.reset();
        for i in instances {
            for state in ["INIT", "BACKUP", "MASTER", "FAULT"] {
                self.vrrp_state
                    .with_label_values(&[i.name.as_str(), state])
                    .set(i64::from(i.state.name() == state));
            }
            self.vrrp_priority
                .with_label_values(&[i.name.as_str()])
                .set(i64::from(i.effective_priority));
        }
    }
}

/// The running listener; dropping it stops the thread.
pub struct Server {
    http: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    /// The address bound (the port chosen, if 0 was given).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connection sync's figures on `/metrics` (crate::sync): which roles run, and each role's
/// totals as `lb-ctl status` shows them.
pub struct SyncGauges {
    /// `lb_sync_running`: 1 while the role (master, backup) runs.
    running: IntGaugeVec,
    /// `lb_sync_events`: a running role's totals since it started, by kind.
    events: IntGaugeVec,
}

impl SyncGauges {
    pub fn register(m: &Metrics) -> anyhow::Result<Self> {
        let g = SyncGauges {
            running: IntGaugeVec::new(
                Opts::new(
                    "lb_sync_running",
                    "1 while the connection-sync role (master, backup) runs.",
                ),
                &["role"],
            )?,
            events: IntGaugeVec::new(
                Opts::new(
                    "lb_sync_events",
                    "A running connection-sync role's totals since it started, by kind \
                     (messages_sent, conns_sent, installed, malformed, ...).",
                ),
                &["role", "kind"],
            )?,
        };
        m.register(Box::new(g.running.clone()))?;
        m.register(Box::new(g.events.clone()))?;
        Ok(g)
    }

    pub fn set(&self, roles: &[crate::sync::shell::RoleStatus]) {
        self.running.reset();
        self.events.reset();
        for role in ["master", "backup"] {
            let r = roles.iter().find(|r| r.role == role);
            self.running
                .with_label_values(&[role])
                .set(i64::from(r.is_some()));
            let Some(r) = r else { continue };
            let sum = |m: &std::collections::BTreeMap<String, u64>| m.values().sum::<u64>();
            let kinds: &[(&str, u64)] = match role {
                "master" => &[
                    ("messages_sent", r.messages_sent),
                    ("conns_sent", r.conns_sent),
                    ("send_errors", r.send_errors),
                    ("rate_drops", r.rate_drops),
                    ("ring_drops", r.ring_drops),
                    ("stale_events", r.stale_events),
                ],
                _ => &[
                    ("messages_received", r.messages_received),
                    ("conns_received", r.conns_received),
                    ("installed", r.installed),
                    ("updated", r.updated),
                    ("refused", sum(&r.refused)),
                    ("malformed", sum(&r.malformed)),
                    ("skipped", sum(&r.skipped)),
                    ("wrong_syncid", r.wrong_syncid),
                    ("unknown_peer", r.unknown_peer),
                ],
            };
            for (k, v) in kinds {
                self.events
                    .with_label_values(&[role, k])
                    .set(i64::try_from(*v).unwrap_or(i64::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DestView, RateView, ServiceView, StatsView};
    use crate::model::{DestConfig, Forward, Scheduler, ServiceConfig, ServiceKey};
    use std::net::Ipv4Addr;

    pub(crate) fn sample() -> Sample {
        let key = ServiceKey::tcp(Ipv4Addr::new(192, 0, 2, 100), 80);
        let dest = |last, conns| DestView {
            config: DestConfig::new(Ipv4Addr::new(198, 51, 100, last), 8080, Forward::Dr, 3),
            active_conns: 2,
            inact_conns: 1,
            persist_conns: 0,
            stats: StatsView {
                conns,
                inpkts: conns * 5,
                outpkts: 0,
                inbytes: conns * 300,
                outbytes: 0,
            },
            rates: RateView::default(),
        };
        Sample {
            snapshot: Snapshot {
                conn_table_size: 4096,
                services: vec![ServiceView {
                    config: ServiceConfig::new(key, Scheduler::Rr),
                    stats: StatsView {
                        conns: 7,
                        inpkts: 35,
                        outpkts: 0,
                        inbytes: 2100,
                        outbytes: 0,
                    },
                    rates: RateView::default(),
                    dests: vec![dest(11, 4), dest(12, 3)],
                }],
            },
            counters: vec![("tx", 35), ("drop_no_backend", 2), ("pass_not_ipv4", 9)],
            tables: Tables {
                conn_entries: 7,
                ..Tables::default()
            },
            real_servers: vec![
                ("198.51.100.11".into(), true),
                ("198.51.100.12".into(), false),
            ],
            read_seconds: 0.0,
        }
    }

    #[test]
    fn the_sample_renders_with_node_exporters_names_and_labels() {
        let m = Metrics::new();
        m.publish(sample());
        let text = m.render();
        for line in [
            "# TYPE lb_connections_total counter",
            r#"lb_connections_total{local_address="192.0.2.100",local_port="80",proto="TCP"} 7"#,
            r#"lb_incoming_bytes_total{local_address="192.0.2.100",local_port="80",proto="TCP"} 2100"#,
            r#"lb_backend_connections_active{local_address="192.0.2.100",local_port="80",proto="TCP",remote_address="198.51.100.11",remote_port="8080"} 2"#,
            r#"lb_backend_connections_total{local_address="192.0.2.100",local_port="80",proto="TCP",remote_address="198.51.100.12",remote_port="8080"} 3"#,
            r#"lb_backend_weight{local_address="192.0.2.100",local_port="80",proto="TCP",remote_address="198.51.100.12",remote_port="8080"} 3"#,
            r#"lb_xdp_drops_total{reason="no_backend"} 2"#,
            r#"lb_xdp_passes_total{reason="not_ipv4"} 9"#,
            r#"lb_xdp_forwarded_total{action="tx"} 35"#,
            r#"lb_real_server_resolved{address="198.51.100.12"} 0"#,
            "lb_conn_table_size 4096",
            "lb_conn_table_entries 7",
            "lb_metrics_refreshes_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(text.contains("lb_build_info{version=\""), "{text}");
    }

    /// A scrape racing a refresh shows one refresh's figures with that refresh's number: a
    /// test that waits for "a refresh after N" must not get N's figures under N+1's number
    /// (the ops test's quiet check once did, six connections short).
    #[test]
    fn a_scrape_racing_a_refresh_pairs_its_figures_with_its_number() {
        let m = Metrics::new();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Refresh k carries k as its table fill.
                for k in 1u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let mut x = sample();
                    x.tables.conn_entries = k;
                    m.publish(x);
                }
            });
            let value = |text: &str, name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                    .map(str::to_string)
            };
            // Judged after the publisher stopped: a panic here would leave it running.
            let mut texts = (0..300).map(|_| m.render());
            let odd = texts.find(|t| {
                let n = value(t, "lb_metrics_refreshes_total");
                n.is_none() || n.as_deref() != Some("0") && value(t, "lb_conn_table_entries") != n
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(
                odd.is_none(),
                "figures and number disagree:\n{}",
                odd.unwrap_or_default()
            );
        });
    }

    #[test]
    fn an_expensive_read_spaces_the_next_one_out() {
        let m = Metrics::new();
        assert!(m.due(), "the first refresh is due at once");
        m.publish(Sample::default());
        assert!(
            m.due(),
            "a free read leaves the next one due at the next tick"
        );
        m.publish(Sample {
            read_seconds: 0.5,
            ..sample()
        });
        assert!(!m.due(), "0.5 s of reading: the next waits 5 s");
        assert!(
            m.render()
                .contains("lb_metrics_refresh_duration_seconds 0.5")
        );
    }

    #[test]
    fn health_and_vrrp_gauges_follow_the_status_they_are_given() {
        let m = Metrics::new();
        let g = HaGauges::register(&m).unwrap();
        g.set_health(&serde_json::json!({ "real_servers": [
            { "service": "TCP 192.0.2.100:80", "real_server": "198.51.100.11:8080", "health": "up" },
            { "service": "TCP 192.0.2.100:80", "real_server": "198.51.100.12:8080", "health": "down" },
        ]}));
        let status = |state| crate::vrrp::InstanceStatus {
            name: "VI_1".into(),
            state,
            interface: "eth0".into(),
            virtual_router_id: 51,
            version: 2,
            priority: 150,
            effective_priority: 130,
            master: None,
            master_priority: None,
            transitions: 1,
            vips: vec![],
            fault_reasons: vec![],
            counters: Default::default(),
        };
        g.set_vrrp(&[status(crate::vrrp::fsm::State::Master)]);
        let text = m.render();
        for want in [
            r#"lb_backend_up{local_address="192.0.2.100",local_port="80",proto="TCP",remote_address="198.51.100.11",remote_port="8080"} 1"#,
            r#"lb_backend_up{local_address="192.0.2.100",local_port="80",proto="TCP",remote_address="198.51.100.12",remote_port="8080"} 0"#,
            r#"lb_vrrp_state{instance="VI_1",state="MASTER"} 1"#,
            r#"lb_vrrp_state{instance="VI_1",state="BACKUP"} 0"#,
            r#"lb_vrrp_priority{instance="VI_1"} 130"#,
        ] {
            assert!(text.contains(want), "missing {want} in:\n{text}");
        }
        // A server that is no longer checked leaves no stale series behind.
        g.set_health(&serde_json::json!({ "real_servers": [] }));
        g.set_vrrp(&[status(crate::vrrp::fsm::State::Backup)]);
        let text = m.render();
        assert!(!text.contains("lb_backend_up{"), "{text}");
        assert!(
            text.contains(r#"lb_vrrp_state{instance="VI_1",state="BACKUP"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn registered_collectors_are_scraped_and_clashing_names_refused() {
        let m = Metrics::new();
        let g = IntGaugeVec::new(Opts::new("lb_test_checker_up", "test"), &["address"]).unwrap();
        m.register(Box::new(g.clone())).unwrap();
        g.with_label_values(&["198.51.100.11"]).set(1);
        assert!(
            m.render()
                .contains("lb_test_checker_up{address=\"198.51.100.11\"} 1"),
            "{}",
            m.render()
        );
        let clash = IntGaugeVec::new(Opts::new("lb_backend_weight", "x"), &["a"]).unwrap();
        let err = m.register(Box::new(clash)).unwrap_err();
        assert!(err.to_string().contains("lb_backend_weight"), "{err}");
    }

    #[test]
    fn the_listener_serves_metrics_and_refuses_writes() {
        use std::io::{Read, Write};
        let m = Arc::new(Metrics::new());
        m.publish(sample());
        let server = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        let ask = |req: &str| {
            let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let get = ask("GET /metrics HTTP/1.0\r\n\r\n");
        assert!(get.starts_with("HTTP/1.0 200"), "{get}");
        assert!(get.contains("text/plain; version=0.0.4"), "{get}");
        assert!(get.contains("lb_connections_total{"), "{get}");
        let post = ask("POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.0 405"), "{post}");
        let other = ask("GET /other HTTP/1.0\r\n\r\n");
        assert!(other.starts_with("HTTP/1.0 404"), "{other}");
        // Garbage instead of HTTP: the listener answers (or drops) it and keeps serving.
        let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
        let _ = s.write_all(b"\x00\xff garbage \r\n\r\n");
        drop(s);
        assert!(ask("GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 200"));
    }

    #[test]
    fn sync_gauges_show_the_running_roles() {
        let m = Metrics::new();
        let g = SyncGauges::register(&m).unwrap();
        let backup = crate::sync::shell::RoleStatus {
            role: "backup".into(),
            installed: 7,
            malformed: [("bad_size".to_string(), 2u64)].into_iter().collect(),
            ..Default::default()
        };
        g.set(&[backup]);
        let text = m.render();
        for want in [
            r#"lb_sync_running{role="backup"} 1"#,
            r#"lb_sync_running{role="master"} 0"#,
            r#"lb_sync_events{kind="installed",role="backup"} 7"#,
            r#"lb_sync_events{kind="malformed",role="backup"} 2"#,
        ] {
            assert!(text.contains(want), "missing {want} in:\n{text}");
        }
        g.set(&[]);
        assert!(!m.render().contains("lb_sync_events{"));
    }
}
