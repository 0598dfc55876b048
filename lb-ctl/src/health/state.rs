//! What the checkers' reports mean for the table (keepalived's ipwrapper.c): which real
//! servers are alive, each service's quorum and sorry server, the notify commands and mails
//! of every transition, and the table the data path gets — the configured table minus the
//! failed real servers (or with them at weight 0, `inhibit_on_failure`), plus the sorry
//! server while the quorum is lost. Pure: no sockets, no timers; the daemon feeds it.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::{
    model::{DestConfig, Model, ServiceKey},
    notify::Event,
};

use super::{
    checker::{CheckerState, Report},
    spec::{CheckSpec, GlobalDefs, HealthSpecs, RsHealthSpec, ServiceHealthSpec, defaults},
};

/// A real server of a service.
pub type RsKey = (ServiceKey, IpAddr, u16);

/// How long a notify command may run (keepalived kills a script that outlives its timeout).
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where transitions are told: the operator's commands and mail (`notify.rs`); a test
/// records them instead.
pub trait Notifier: Send {
    fn run(&mut self, command: &str);
    fn mail(&mut self, event: &Event);
}

/// The real notifier: `notify::run_command` and a `Mailer` when `[global]` has mail settings.
pub struct SystemNotifier {
    pub mailer: Option<crate::notify::Mailer>,
}

impl Notifier for SystemNotifier {
    fn run(&mut self, command: &str) {
        crate::notify::run_command(command, NOTIFY_TIMEOUT);
    }
    fn mail(&mut self, event: &Event) {
        if let Some(m) = &self.mailer {
            m.send(event);
        }
    }
}

/// What the checker runner is asked to do after a (re)configuration.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub start: Vec<(u64, CheckSpec, CheckerState)>,
    pub stop: Vec<u64>,
}

/// The last probe of one checker, for `lb-ctl status`.
#[derive(Clone, Debug, Default)]
struct ProbeInfo {
    last_check: Option<SystemTime>,
    last_failure: Option<String>,
    last_failure_at: Option<SystemTime>,
}

#[derive(Clone)]
struct Checker {
    rs: RsKey,
    spec: CheckSpec,
    up: bool,
    probe: ProbeInfo,
}

#[derive(Clone, Default)]
struct RsState {
    alive: bool,
    /// A `misc_dynamic` weight, replacing the configured one.
    weight: Option<u32>,
    transitions: u64,
    reason: Option<String>,
    since: Option<SystemTime>,
}

#[derive(Clone)]
struct SvcState {
    quorum_up: bool,
    transitions: u64,
}

/// The health of every checked service. Cloned to try a reload aside: the daemon keeps the
/// clone only if the data path takes the table it gives.
#[derive(Clone, Default)]
pub struct Health {
    specs: HealthSpecs,
    global: GlobalDefs,
    checkers: BTreeMap<u64, Checker>,
    rss: BTreeMap<RsKey, RsState>,
    svcs: BTreeMap<ServiceKey, SvcState>,
    next_id: u64,
}

fn rs_name(k: &RsKey) -> String {
    crate::model::addr_port(k.1, k.2)
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn global(&self) -> &GlobalDefs {
        &self.global
    }

    /// Takes a new configuration (start or reload). As keepalived on SIGHUP, a checker whose
    /// real server and settings are unchanged keeps its state and keeps running; new ones
    /// start (down with `alpha`, else up); removed ones stop. `model` is the configured
    /// table (for the quorum's weights).
    pub fn configure(
        &mut self,
        specs: HealthSpecs,
        global: GlobalDefs,
        model: &Model,
        n: &mut dyn Notifier,
    ) -> Changes {
        let mut changes = Changes::default();
        // Old checkers by (real server, spec), in order, to be matched with the new ones.
        let mut old: HashMap<(RsKey, CheckSpec), Vec<u64>> = HashMap::new();
        for (id, c) in &self.checkers {
            old.entry((c.rs, c.spec.clone())).or_default().push(*id);
        }
        let mut checkers = BTreeMap::new();
        let mut rss = BTreeMap::new();
        for (key, svc) in &specs {
            for rs in &svc.real_servers {
                let rk = (*key, rs.addr, rs.port);
                for spec in &rs.checks {
                    let kept = old
                        .get_mut(&(rk, spec.clone()))
                        .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
                    match kept.and_then(|id| self.checkers.remove(&id).map(|c| (id, c))) {
                        Some((id, c)) => {
                            checkers.insert(id, c);
                        }
                        None => {
                            // Ids start at 1 (0 is never a checker).
                            self.next_id += 1;
                            let id = self.next_id;
                            let st = CheckerState::new(spec.alpha);
                            changes.start.push((id, spec.clone(), st));
                            checkers.insert(
                                id,
                                Checker {
                                    rs: rk,
                                    spec: spec.clone(),
                                    up: st.up,
                                    probe: ProbeInfo::default(),
                                },
                            );
                        }
                    }
                }
                let alive = checkers.values().filter(|c| c.rs == rk).all(|c| c.up);
                let mut st = self.rss.remove(&rk).unwrap_or_default();
                if st.since.is_none() || st.alive != alive {
                    st.since = Some(SystemTime::now());
                }
                st.alive = alive;
                // A dynamic weight belongs to the checker that set it.
                if !rs
                    .checks
                    .iter()
                    .any(|c| matches!(c.kind, super::spec::CheckKind::Misc { dynamic: true, .. }))
                {
                    st.weight = None;
                }
                rss.insert(rk, st);
            }
        }
        changes.stop = self.checkers.keys().copied().collect();
        self.checkers = checkers;
        self.rss = rss;
        self.specs = specs;
        self.global = global;
        // Quorum as keepalived's set_quorum_states at a (re)start: kept for a service that
        // stays, else up if the live weight reaches quorum + hysteresis.
        let mut svcs = BTreeMap::new();
        for key in self.specs.keys() {
            let st = match self.svcs.remove(key) {
                Some(s) => s,
                None => {
                    let spec = &self.specs[key];
                    SvcState {
                        quorum_up: self.live_weight(key, model)
                            >= spec.quorum as u64 + spec.hysteresis as u64,
                        transitions: 0,
                    }
                }
            };
            svcs.insert(*key, st);
        }
        self.svcs = svcs;
        for key in self.specs.keys().copied().collect::<Vec<_>>() {
            self.update_quorum(&key, model, n);
        }
        changes
    }

    /// Re-evaluates every quorum against `model` (after ipvsadm-style edits changed weights
    /// or servers: keepalived's quorum follows its own table the same way).
    pub fn refresh_quorums(&mut self, model: &Model, n: &mut dyn Notifier) {
        for key in self.specs.keys().copied().collect::<Vec<_>>() {
            self.update_quorum(&key, model, n);
        }
    }

    /// Whether any service has something to check (else the runner is not needed).
    pub fn has_checks(&self) -> bool {
        !self.checkers.is_empty()
    }

    /// Sum of the weights of the live real servers of `key` (keepalived's
    /// `weigh_live_realservers`), with the configured weights of `model`.
    fn live_weight(&self, key: &ServiceKey, model: &Model) -> u64 {
        let Some(entry) = model.services.get(key) else {
            return 0;
        };
        entry
            .dests
            .iter()
            .filter_map(|d| {
                let st = self.rss.get(&(*key, d.addr, d.port));
                match st {
                    Some(s) if !s.alive => None,
                    Some(s) => Some(s.weight.unwrap_or(d.weight) as u64),
                    None => Some(d.weight as u64),
                }
            })
            .sum()
    }

    /// keepalived's `update_quorum_state`: gained at quorum + hysteresis, lost below
    /// quorum − hysteresis (or with no live weight at all).
    fn update_quorum(&mut self, key: &ServiceKey, model: &Model, n: &mut dyn Notifier) {
        let Some(spec) = self.specs.get(key) else {
            return;
        };
        let sum = self.live_weight(key, model) as i64;
        let up = self.svcs.get(key).is_some_and(|s| s.quorum_up);
        let threshold = spec.quorum as i64 + if up { -1 } else { 1 } * spec.hysteresis as i64;
        let change = if !up && sum >= threshold {
            Some(true)
        } else if up && (sum == 0 || sum < threshold) {
            Some(false)
        } else {
            None
        };
        let Some(now_up) = change else { return };
        let command = if now_up {
            &spec.quorum_up
        } else {
            &spec.quorum_down
        }
        .clone();
        let sorry = spec.sorry;
        let st = self.svcs.get_mut(key).expect("every spec has a state");
        st.quorum_up = now_up;
        st.transitions += 1;
        tracing::info!(
            change = if now_up { "quorum_gained" } else { "quorum_lost" },
            service = %key,
            live_weight = sum,
            quorum = spec.quorum,
            hysteresis = spec.hysteresis,
            "{} quorum {}+{}={} ({} live) for VS {key}{}",
            if now_up { "Gained" } else { "Lost" },
            spec.quorum,
            spec.hysteresis,
            threshold,
            sum,
            match sorry {
                Some(s) => format!(
                    ": {} sorry server {}",
                    if now_up { "removing" } else { "adding" },
                    crate::model::addr_port(s.addr, s.port)
                ),
                None => String::new(),
            },
        );
        if let Some(c) = command {
            n.run(&c);
        }
        n.mail(&Event::Quorum {
            service: key.to_string(),
            up: now_up,
        });
    }

    /// Takes a checker's report; returns whether the table the data path gets changed.
    pub fn report(&mut self, id: u64, r: Report, model: &Model, n: &mut dyn Notifier) -> bool {
        let Some(c) = self.checkers.get_mut(&id) else {
            // A checker stopped by a reload, whose last report was already on its way.
            return false;
        };
        let rk = c.rs;
        match r {
            Report::Probed(res) => {
                let now = SystemTime::now();
                c.probe.last_check = Some(now);
                if let Err(e) = res {
                    c.probe.last_failure = Some(e);
                    c.probe.last_failure_at = Some(now);
                }
                false
            }
            Report::Weight(w) => {
                let st = self.rss.entry(rk).or_default();
                if st.weight == Some(w) {
                    return false;
                }
                log::info!(
                    "Changing weight to {w} for service {} of VS {}",
                    rs_name(&rk),
                    rk.0
                );
                st.weight = Some(w);
                self.update_quorum(&rk.0, model, n);
                true
            }
            Report::Changed { up, reason } => {
                c.up = up;
                let kind = c.spec.kind.name();
                let alive = self.checkers.values().filter(|c| c.rs == rk).all(|c| c.up);
                let st = self.rss.entry(rk).or_default();
                if st.alive == alive {
                    return false;
                }
                st.alive = alive;
                st.transitions += 1;
                st.since = Some(SystemTime::now());
                st.reason = (!alive).then(|| reason.clone());
                let inhibit = self.rs_spec(&rk).is_some_and(|r| r.inhibit_on_failure);
                // Logged once per transition, with its reason.
                tracing::info!(
                    change = if alive { "checker_up" } else { "checker_down" },
                    service = %rk.0,
                    real_server = %rs_name(&rk),
                    checker = kind,
                    reason = %reason,
                    inhibit_on_failure = inhibit,
                    "{} service {} {} VS {} ({kind}: {reason})",
                    match (alive, inhibit) {
                        (true, false) => "Adding",
                        (true, true) => "Enabling",
                        (false, false) => "Removing",
                        (false, true) => "Disabling",
                    },
                    rs_name(&rk),
                    if inhibit {
                        "of"
                    } else if alive {
                        "to"
                    } else {
                        "from"
                    },
                    rk.0,
                );
                let cmd = self.rs_spec(&rk).and_then(|r| {
                    if alive {
                        r.notify_up.clone()
                    } else {
                        r.notify_down.clone()
                    }
                });
                if let Some(cmd) = cmd {
                    n.run(&cmd);
                }
                n.mail(&Event::RealServer {
                    service: rk.0.to_string(),
                    real_server: rs_name(&rk),
                    up: alive,
                    reason,
                });
                self.update_quorum(&rk.0, model, n);
                true
            }
        }
    }

    fn rs_spec(&self, rk: &RsKey) -> Option<&RsHealthSpec> {
        self.specs
            .get(&rk.0)?
            .real_servers
            .iter()
            .find(|r| r.addr == rk.1 && r.port == rk.2)
    }

    /// The table the data path gets: `model` (the configured table, with any ipvsadm-style
    /// edits) with each service's health applied.
    pub fn effective(&self, model: &Model) -> Model {
        let mut out = model.clone();
        for (key, entry) in out.services.iter_mut() {
            let Some(spec) = self.specs.get(key) else {
                continue;
            };
            apply_service(
                key,
                spec,
                self.svcs.get(key).is_none_or(|s| s.quorum_up),
                &self.rss,
                &mut entry.dests,
            );
        }
        out
    }

    /// Every checked real server and service, for `lb-ctl status`.
    pub fn status(&self) -> serde_json::Value {
        let secs = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let mut by_rs: BTreeMap<RsKey, Vec<&Checker>> = BTreeMap::new();
        for c in self.checkers.values() {
            by_rs.entry(c.rs).or_default().push(c);
        }
        let none = Vec::new();
        let mut rs_out = Vec::new();
        for (rk, st) in &self.rss {
            let spec = self.rs_spec(rk);
            let mine = by_rs.get(rk).unwrap_or(&none);
            let checks: Vec<_> = mine
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "type": c.spec.kind.name(),
                        "target": c.spec.target.to_string(),
                        "up": c.up,
                        "last_check": secs(c.probe.last_check),
                        "last_failure": c.probe.last_failure,
                        "last_failure_at": secs(c.probe.last_failure_at),
                    })
                })
                .collect();
            let last_check = mine.iter().filter_map(|c| c.probe.last_check).max();
            let last_failure = mine
                .iter()
                .filter_map(|c| Some((c.probe.last_failure_at?, c.probe.last_failure.clone()?)))
                .max_by_key(|(t, _)| *t)
                .map(|(_, r)| r);
            rs_out.push(serde_json::json!({
                "service": rk.0.to_string(),
                "real_server": rs_name(rk),
                "health": if st.alive { "up" } else { "down" },
                "checkers": checks.iter().map(|c| c["type"].clone()).collect::<Vec<_>>(),
                "checks": checks,
                "inhibit_on_failure": spec.is_some_and(|s| s.inhibit_on_failure),
                "dynamic_weight": st.weight,
                "last_check": secs(last_check),
                "last_failure_reason": last_failure,
                "down_reason": st.reason,
                "since": secs(st.since),
                "transitions": st.transitions,
            }));
        }
        let svc_out: Vec<_> = self
            .svcs
            .iter()
            .map(|(k, s)| {
                let spec = &self.specs[k];
                serde_json::json!({
                    "service": k.to_string(),
                    "quorum": spec.quorum,
                    "hysteresis": spec.hysteresis,
                    "quorum_up": s.quorum_up,
                    "sorry_server": spec.sorry.map(|s| crate::model::addr_port(s.addr, s.port)),
                    "sorry_server_active": spec.sorry.is_some() && !s.quorum_up,
                    "transitions": s.transitions,
                })
            })
            .collect();
        serde_json::json!({ "real_servers": rs_out, "services": svc_out })
    }
}

/// One service's table under health: ipwrapper.c's outcome. With quorum (or no sorry
/// server): the live real servers at their weight, the dead ones gone or, with
/// `inhibit_on_failure`, at weight 0; the sorry server absent, or at weight 0 with
/// `sorry_server_inhibit`. Quorum lost with a sorry server: the sorry server alone takes
/// new connections — keepalived's `perform_quorum_state(vs, false)` also takes the remaining
/// live servers out (an inhibited one stays at weight 0).
fn apply_service(
    key: &ServiceKey,
    spec: &ServiceHealthSpec,
    quorum_up: bool,
    rss: &BTreeMap<RsKey, RsState>,
    dests: &mut Vec<DestConfig>,
) {
    let sorry_active = !quorum_up && spec.sorry.is_some();
    let inhibit = |d: &DestConfig| {
        spec.real_servers
            .iter()
            .any(|r| r.addr == d.addr && r.port == d.port && r.inhibit_on_failure)
    };
    dests.retain_mut(|d| {
        let st = rss.get(&(*key, d.addr, d.port));
        let alive = st.is_none_or(|s| s.alive);
        if alive && !sorry_active {
            if let Some(w) = st.and_then(|s| s.weight) {
                d.weight = w;
            }
            true
        } else if inhibit(d) {
            d.weight = 0;
            true
        } else {
            false
        }
    });
    if let Some(s) = spec.sorry
        && (sorry_active || s.inhibit)
    {
        let weight = if sorry_active {
            defaults::SORRY_WEIGHT
        } else {
            0
        };
        // A sorry server that is also a real server takes that entry over.
        dests.retain(|d| !(d.addr == s.addr && d.port == s.port));
        dests.push(DestConfig::new(s.addr, s.port, s.forward, weight));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::spec::{CheckKind, SorrySpec, Timing};
    use crate::model::{Forward, Scheduler, ServiceConfig};
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);
    impl Notifier for Recorder {
        fn run(&mut self, command: &str) {
            self.0.lock().unwrap().push(format!("run {command}"));
        }
        fn mail(&mut self, event: &Event) {
            self.0.lock().unwrap().push(format!("mail {event:?}"));
        }
    }

    const VS: ServiceKey = ServiceKey {
        proto: crate::model::Protocol::Tcp,
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)),
        port: 80,
    };

    fn rs(i: u8) -> IpAddr {
        Ipv4Addr::new(192, 0, 2, 10 + i).into()
    }

    fn tcp(i: u8, alpha: bool) -> CheckSpec {
        CheckSpec {
            kind: CheckKind::Tcp,
            target: SocketAddr::new(rs(i), 80),
            bindto: None,
            bind_port: None,
            connect_timeout: Duration::from_secs(1),
            timing: Timing {
                delay_loop: Duration::from_secs(1),
                retry: 1,
                delay_before_retry: Duration::from_secs(1),
                warmup: Duration::ZERO,
            },
            alpha,
        }
    }

    fn rs_spec(i: u8, inhibit: bool) -> RsHealthSpec {
        RsHealthSpec {
            addr: rs(i),
            port: 80,
            inhibit_on_failure: inhibit,
            notify_up: Some(format!("/bin/up rs{i}")),
            notify_down: Some(format!("/bin/down rs{i}")),
            checks: vec![tcp(i, false)],
        }
    }

    fn setup(
        weights: &[u32],
        inhibit: bool,
        sorry: Option<SorrySpec>,
        quorum: u32,
        hysteresis: u32,
    ) -> (Health, Model, Recorder, Vec<u64>) {
        let mut model = Model::default();
        model
            .add(
                ServiceConfig::new(VS, Scheduler::Rr),
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| DestConfig::new(rs(i as u8 + 1), 80, Forward::Dr, *w)),
            )
            .unwrap();
        let spec = ServiceHealthSpec {
            quorum,
            hysteresis,
            quorum_up: Some("/bin/qup".into()),
            quorum_down: Some("/bin/qdown".into()),
            sorry,
            real_servers: (1..=weights.len() as u8)
                .map(|i| rs_spec(i, inhibit))
                .collect(),
        };
        let mut rec = Recorder::default();
        let mut h = Health::new();
        let ch = h.configure(
            BTreeMap::from([(VS, spec)]),
            GlobalDefs::default(),
            &model,
            &mut rec,
        );
        let ids = ch.start.iter().map(|s| s.0).collect();
        (h, model, rec, ids)
    }

    fn down(reason: &str) -> Report {
        Report::Changed {
            up: false,
            reason: reason.into(),
        }
    }
    fn up() -> Report {
        Report::Changed {
            up: true,
            reason: "check succeeded".into(),
        }
    }

    fn dests(m: &Model) -> Vec<(IpAddr, u32)> {
        m.services[&VS]
            .dests
            .iter()
            .map(|d| (d.addr, d.weight))
            .collect()
    }

    #[test]
    fn a_failed_server_leaves_and_comes_back_with_notifies() {
        let (mut h, model, mut rec, ids) = setup(&[1, 1], false, None, 1, 0);
        assert_eq!(dests(&h.effective(&model)), [(rs(1), 1), (rs(2), 1)]);
        assert!(h.report(ids[0], down("connection refused"), &model, &mut rec));
        assert_eq!(dests(&h.effective(&model)), [(rs(2), 1)]);
        assert!(h.report(ids[0], up(), &model, &mut rec));
        assert_eq!(dests(&h.effective(&model)), [(rs(1), 1), (rs(2), 1)]);
        assert_eq!(
            *rec.0.lock().unwrap(),
            [
                "run /bin/down rs1".to_string(),
                format!(
                    "mail {:?}",
                    Event::RealServer {
                        service: VS.to_string(),
                        real_server: "192.0.2.11:80".into(),
                        up: false,
                        reason: "connection refused".into()
                    }
                ),
                "run /bin/up rs1".to_string(),
                format!(
                    "mail {:?}",
                    Event::RealServer {
                        service: VS.to_string(),
                        real_server: "192.0.2.11:80".into(),
                        up: true,
                        reason: "check succeeded".into()
                    }
                ),
            ]
        );
        let s = h.status();
        assert_eq!(s["real_servers"][0]["transitions"], 2);
        assert_eq!(s["real_servers"][0]["health"], "up");
    }

    #[test]
    fn inhibit_on_failure_keeps_weight_zero() {
        let (mut h, model, mut rec, ids) = setup(&[3, 1], true, None, 1, 0);
        h.report(ids[0], down("timeout"), &model, &mut rec);
        assert_eq!(dests(&h.effective(&model)), [(rs(1), 0), (rs(2), 1)]);
        assert_eq!(h.status()["real_servers"][0]["down_reason"], "timeout");
    }

    /// The tests' sorry server, 192.0.2.200:80 by DR; `inhibit`: `sorry_server_inhibit`.
    fn sorry_server(inhibit: bool) -> SorrySpec {
        SorrySpec {
            addr: Ipv4Addr::new(192, 0, 2, 200).into(),
            port: 80,
            forward: Forward::Dr,
            inhibit,
        }
    }

    #[test]
    fn sorry_server_takes_over_when_quorum_is_lost() {
        let sorry = sorry_server(false);
        // quorum 2: one server down leaves weight 1 < 2.
        let (mut h, model, mut rec, ids) = setup(&[1, 1], false, Some(sorry), 2, 0);
        assert_eq!(dests(&h.effective(&model)).len(), 2);
        h.report(ids[0], down("status 503"), &model, &mut rec);
        // keepalived removes the remaining live servers too: the sorry server alone.
        assert_eq!(dests(&h.effective(&model)), [(sorry.addr, 1)]);
        h.report(ids[1], down("status 503"), &model, &mut rec);
        assert_eq!(dests(&h.effective(&model)), [(sorry.addr, 1)]);
        h.report(ids[1], up(), &model, &mut rec);
        assert_eq!(
            dests(&h.effective(&model)),
            [(sorry.addr, 1)],
            "1 < quorum 2"
        );
        h.report(ids[0], up(), &model, &mut rec);
        assert_eq!(dests(&h.effective(&model)), [(rs(1), 1), (rs(2), 1)]);
        let log = rec.0.lock().unwrap().clone();
        let runs: Vec<_> = log.iter().filter(|l| l.starts_with("run")).collect();
        assert_eq!(
            runs,
            [
                "run /bin/down rs1",
                "run /bin/qdown",
                "run /bin/down rs2",
                "run /bin/up rs2",
                "run /bin/up rs1",
                "run /bin/qup"
            ]
        );
        assert_eq!(
            log.iter().filter(|l| l.starts_with("mail")).count(),
            6,
            "one mail per transition: {log:?}"
        );
    }

    #[test]
    fn sorry_server_inhibit_and_hysteresis() {
        let sorry = sorry_server(true);
        // quorum 2, hysteresis 1: lost below 1 (all down), regained at 3.
        let (mut h, model, mut rec, ids) = setup(&[1, 1, 1], false, Some(sorry), 2, 1);
        let m = h.effective(&model);
        assert_eq!(dests(&m).last(), Some(&(sorry.addr, 0)));
        h.report(ids[0], down("timeout"), &model, &mut rec);
        h.report(ids[1], down("timeout"), &model, &mut rec);
        assert_eq!(dests(&h.effective(&model)), [(rs(3), 1), (sorry.addr, 0)]);
        h.report(ids[2], down("timeout"), &model, &mut rec);
        assert_eq!(dests(&h.effective(&model)), [(sorry.addr, 1)]);
        h.report(ids[0], up(), &model, &mut rec);
        h.report(ids[1], up(), &model, &mut rec);
        assert_eq!(dests(&h.effective(&model)), [(sorry.addr, 1)], "2 < 2 + 1");
        h.report(ids[2], up(), &model, &mut rec);
        assert_eq!(dests(&h.effective(&model)).len(), 4);
    }

    #[test]
    fn dynamic_weight_replaces_the_configured_one() {
        let (mut h, model, mut rec, ids) = setup(&[5, 1], false, None, 1, 0);
        assert!(h.report(ids[0], Report::Weight(7), &model, &mut rec));
        assert!(!h.report(ids[0], Report::Weight(7), &model, &mut rec));
        assert_eq!(dests(&h.effective(&model)), [(rs(1), 7), (rs(2), 1)]);
    }

    #[test]
    fn reload_keeps_unchanged_checkers_and_starts_new_ones_per_alpha() {
        let (mut h, model, mut rec, ids) = setup(&[1, 1], false, None, 1, 0);
        h.report(ids[0], down("timeout"), &model, &mut rec);
        let mut specs = h.specs.clone();
        let svc = specs.get_mut(&VS).unwrap();
        // rs2's check changes (alpha now): a new checker, down until it succeeds.
        svc.real_servers[1].checks = vec![tcp(2, true)];
        let ch = h.configure(specs, GlobalDefs::default(), &model, &mut rec);
        assert_eq!(ch.stop, [ids[1]]);
        assert_eq!(ch.start.len(), 1);
        assert!(!ch.start[0].2.up);
        // rs1 is still down (its state was kept), rs2 is down (alpha).
        assert!(dests(&h.effective(&model)).is_empty());
        // A report from the stopped checker is ignored.
        assert!(!h.report(ids[1], up(), &model, &mut rec));
        assert!(h.report(ch.start[0].0, up(), &model, &mut rec));
        assert_eq!(dests(&h.effective(&model)), [(rs(2), 1)]);
    }

    #[test]
    fn an_edit_that_lowers_the_live_weight_loses_the_quorum() {
        let sorry = sorry_server(false);
        let (mut h, mut model, mut rec, _) = setup(&[1, 1], false, Some(sorry), 2, 0);
        // ipvsadm -e -w 0 on rs2: live weight 1 < quorum 2.
        model.services.get_mut(&VS).unwrap().dests[1].weight = 0;
        h.refresh_quorums(&model, &mut rec);
        assert_eq!(dests(&h.effective(&model)), [(sorry.addr, 1)]);
        assert!(
            rec.0
                .lock()
                .unwrap()
                .contains(&"run /bin/qdown".to_string())
        );
    }

    #[test]
    fn unchecked_services_and_servers_are_untouched() {
        let (h, mut model, _, _) = setup(&[1], false, None, 1, 0);
        let other = ServiceKey::tcp(Ipv4Addr::new(192, 0, 2, 101), 80);
        model
            .add(
                ServiceConfig::new(other, Scheduler::Wlc),
                [DestConfig::new(rs(9), 80, Forward::Dr, 4)],
            )
            .unwrap();
        // An ipvsadm-style -a of a server the config does not check: always up.
        model
            .services
            .get_mut(&VS)
            .unwrap()
            .dests
            .push(DestConfig::new(rs(8), 80, Forward::Dr, 2));
        let m = h.effective(&model);
        assert_eq!(m.services[&other], model.services[&other]);
        assert_eq!(dests(&m), [(rs(1), 1), (rs(8), 2)]);
    }
}
