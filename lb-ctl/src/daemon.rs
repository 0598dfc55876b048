//! The daemon: owns the data plane (the only writer of its maps), serves the control socket,
//! reloads the config on request or SIGHUP, expires connections, keeps real servers' MACs
//! fresh and estimates rates.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use aya::programs::XdpMode;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};

use crate::{
    api::{RateView, Request, Response, StatsView},
    config,
    dataplane::{Dataplane, Options, Paths, RsPath, StateTimeouts},
    model::{Forward, Model, OpError},
    neigh::Netlink,
};

/// How the daemon was asked to run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub interfaces: Vec<String>,
    pub config: Option<PathBuf>,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub conn_table_size: Option<u32>,
    pub xdp_mode: XdpMode,
}

/// How long `-a` waits for the kernel to resolve a new real server's MAC before answering
/// (packets to it are dropped and counted until it is resolved).
const RESOLVE_WAIT: Duration = Duration::from_millis(1500);
/// IPVS estimates rates every 2 s.
const RATE_INTERVAL: Duration = Duration::from_secs(2);

/// Routes and MACs of the real servers, kept fresh.
struct Resolver {
    nl: Netlink,
    paths: Paths,
    /// (real server, forwarding method) pairs whose path was checked for that method.
    checked: HashSet<(Ipv4Addr, Forward)>,
    /// Managed neighbour entries this daemon created (removed on a clean stop).
    created: HashSet<(u32, Ipv4Addr)>,
    /// Fingerprints of the routing and neighbour tables at the last tick: when either
    /// changes, next hops cached in the data path are looked up again.
    fingerprint: (u64, u64),
    /// TUN outer source per director interface (`[director] tunnel_sources`).
    tunnel_sources: BTreeMap<String, Ipv4Addr>,
    /// The interfaces the balancer runs on (NAT replies must arrive on one of them).
    attached: Vec<String>,
}

/// Whether IPv4 forwarding is on for `iface` (NAT and TUN need it: the data path's FIB lookup
/// refuses to forward otherwise, as the kernel would).
fn forwarding(iface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
}

impl Resolver {
    /// Finds how to reach every real server of `model` not seen before (route, next hop,
    /// interface, tunnel source) and makes the kernel resolve the next hops; fails, changing
    /// nothing, if one cannot be reached the way its forwarding method needs.
    async fn resolve(&mut self, model: &Model) -> anyhow::Result<()> {
        let mut todo: Vec<(Ipv4Addr, Forward)> = model
            .services
            .values()
            .flat_map(|e| e.dests.iter().map(|d| (d.addr, d.forward)))
            .filter(|k| !self.checked.contains(k))
            .collect();
        todo.sort_by_key(|(a, f)| (*a, f.code()));
        todo.dedup();
        let mut found: Vec<(Ipv4Addr, RsPath)> = Vec::new();
        for &(addr, forward) in &todo {
            let route = self.nl.route_get(addr).await?;
            if route.kind == rtnetlink::packet_route::route::RouteType::Local {
                bail!("real server {addr} is an address of the director itself");
            }
            if forward == Forward::Dr
                && let Some(gw) = route.gateway
            {
                bail!(
                    "real server {addr} is reached through the router {gw}: direct routing (-g) \
                     needs the real servers on a network the director is attached to"
                );
            }
            let link = self.nl.link_by_index(route.oif).await?;
            let mtu = route.mtu.unwrap_or(link.mtu).min(u32::from(u16::MAX)) as u16;
            let mut path = self.paths.get(&addr).copied().unwrap_or(RsPath {
                ifindex: link.index,
                next_hop: route.gateway.unwrap_or(addr),
                smac: link.mac,
                dmac: None,
                tun_src: Ipv4Addr::UNSPECIFIED,
                mtu,
            });
            if forward == Forward::Tun && path.tun_src.is_unspecified() {
                path.tun_src = self
                    .tunnel_sources
                    .get(&link.name)
                    .copied()
                    .or(route.prefsrc)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "no source address to tunnel to {addr} from {}: set `tunnel_source`",
                            link.name
                        )
                    })?;
            }
            if forward != Forward::Dr {
                if !self.attached.contains(&link.name) {
                    log::warn!(
                        "real server {addr} ({}) is reached through {}, where the balancer does \
                         not run{}",
                        forward.label(),
                        link.name,
                        if forward == Forward::Nat {
                            ": its replies will not be translated back"
                        } else {
                            ""
                        }
                    );
                }
                for i in &self.attached {
                    if !forwarding(i) {
                        log::warn!(
                            "IPv4 forwarding is off on {i}: {} forwarding needs \
                             net.ipv4.ip_forward=1, as with IPVS",
                            forward.label()
                        );
                    }
                }
            }
            found.push((addr, path));
        }
        for (addr, p) in &found {
            if self.nl.ensure_managed(p.ifindex, p.next_hop).await? {
                self.created.insert((p.ifindex, p.next_hop));
            }
            self.paths.insert(*addr, *p);
        }
        self.checked.extend(todo.iter().copied());
        // Give the kernel a moment to resolve them, so the first SYN is not dropped.
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        loop {
            self.refresh().await?;
            let missing = found
                .iter()
                .any(|(a, _)| self.paths.get(a).is_some_and(|p| p.dmac.is_none()));
            if !missing || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (a, _) in &found {
            if self.paths.get(a).is_some_and(|p| p.dmac.is_none()) {
                log::warn!("real server {a}: next hop not resolved yet");
            }
        }
        Ok(())
    }

    /// Whether routes or neighbours changed since the last call; on a route change every
    /// path is found again.
    async fn network_changed(&mut self) -> anyhow::Result<bool> {
        use std::hash::{Hash, Hasher};
        let routes = self.nl.routes_fingerprint().await?;
        let mut neigh: Vec<_> = self.nl.neighbours().await?.into_iter().collect();
        neigh.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        neigh.hash(&mut h);
        let now = (routes, h.finish());
        let changed = now != self.fingerprint;
        if now.0 != self.fingerprint.0 {
            self.paths.clear();
            self.checked.clear();
        }
        self.fingerprint = now;
        Ok(changed)
    }

    /// Re-reads the neighbour table into the paths. Returns whether anything changed.
    async fn refresh(&mut self) -> anyhow::Result<bool> {
        let table = self.nl.neighbours().await?;
        let mut changed = false;
        for (addr, p) in self.paths.iter_mut() {
            let mac = table.get(&(p.ifindex, p.next_hop)).copied();
            if mac != p.dmac {
                log::info!(
                    "real server {addr}: MAC {}",
                    mac.map_or("unresolved".into(), |m| fmt_mac(&m))
                );
                p.dmac = mac;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Forgets real servers no service uses any more.
    async fn prune(&mut self, model: &Model, remove_entries: bool) {
        let used: HashSet<Ipv4Addr> = model
            .services
            .values()
            .flat_map(|e| e.dests.iter().map(|d| d.addr))
            .collect();
        let stale: Vec<Ipv4Addr> = self
            .paths
            .keys()
            .filter(|a| !used.contains(a))
            .copied()
            .collect();
        self.checked.retain(|(a, _)| used.contains(a));
        for a in stale {
            let Some(p) = self.paths.remove(&a) else {
                continue;
            };
            // A next hop (a gateway) may serve other real servers still.
            let shared = self
                .paths
                .values()
                .any(|o| o.ifindex == p.ifindex && o.next_hop == p.next_hop);
            if remove_entries && !shared && self.created.remove(&(p.ifindex, p.next_hop)) {
                let _ = self.nl.del_neigh(p.ifindex, p.next_hop).await;
            }
        }
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// IPVS-style rate estimation (`ip_vs_est.c`): every 2 s, the per-second rate of the last
/// interval, smoothed with weight 1/4, in IPVS's fixed point (counts × 2^10, bytes × 2^5) so
/// that small rates do not round away, and read out with IPVS's rounding.
#[derive(Default)]
struct Estimator {
    last: (HashMap<u32, StatsView>, HashMap<u32, StatsView>),
    scaled: (HashMap<u32, [i64; 5]>, HashMap<u32, [i64; 5]>),
    rates: (HashMap<u32, RateView>, HashMap<u32, RateView>),
    /// Whether a first sample was taken: until then, counters are a baseline (an adopted
    /// data path's totals are not a burst); afterwards a new service or server starts
    /// from zero, as IPVS's estimator does.
    started: bool,
}

impl Estimator {
    fn update(&mut self, now: (HashMap<u32, StatsView>, HashMap<u32, StatsView>)) {
        fn one(
            last: &HashMap<u32, StatsView>,
            now: &HashMap<u32, StatsView>,
            scaled: &mut HashMap<u32, [i64; 5]>,
            rates: &mut HashMap<u32, RateView>,
            started: bool,
        ) {
            let secs = RATE_INTERVAL.as_secs().max(1) as i64;
            scaled.retain(|id, _| now.contains_key(id));
            rates.retain(|id, _| now.contains_key(id));
            for (id, s) in now {
                let prev = match last.get(id) {
                    Some(p) => *p,
                    None if started => StatsView::default(),
                    None => *s,
                };
                let e = scaled.entry(*id).or_default();
                let counters = [
                    (s.conns, prev.conns, 10),
                    (s.inpkts, prev.inpkts, 10),
                    (s.outpkts, prev.outpkts, 10),
                    (s.inbytes, prev.inbytes, 5),
                    (s.outbytes, prev.outbytes, 5),
                ];
                for (avg, (n, p, shift)) in e.iter_mut().zip(counters) {
                    // A zeroed counter (-Z) reads as no traffic, not as a negative rate.
                    let rate = (n.saturating_sub(p) as i64).saturating_mul(1 << shift) / secs;
                    *avg += (rate - *avg) >> 2;
                }
                let read =
                    |avg: i64, shift: u32| ((avg + (1 << (shift - 1)) - 1) >> shift).max(0) as u64;
                rates.insert(
                    *id,
                    RateView {
                        cps: read(e[0], 10),
                        inpps: read(e[1], 10),
                        outpps: read(e[2], 10),
                        inbps: read(e[3], 5),
                        outbps: read(e[4], 5),
                    },
                );
            }
        }
        let started = self.started;
        one(
            &self.last.0,
            &now.0,
            &mut self.scaled.0,
            &mut self.rates.0,
            started,
        );
        one(
            &self.last.1,
            &now.1,
            &mut self.scaled.1,
            &mut self.rates.1,
            started,
        );
        self.last = now;
        self.started = true;
    }
}

/// What the last sweep pass cost: it runs every second, so its CPU time is expiry's CPU time
/// per second.
fn sweep_status(r: &crate::dataplane::SweepReport) -> serde_json::Value {
    serde_json::json!({
        "cpu_us_per_s": r.cpu.as_micros() as u64,
        "wall_us": r.wall.as_micros() as u64,
        "calls": r.calls,
        "longest_call_us": r.longest_call.as_micros() as u64,
        "longest_call_wall_us": r.longest_call_wall.as_micros() as u64,
        "longest_run_us": r.longest_run.as_micros() as u64,
    })
}

struct Daemon {
    settings: Settings,
    dp: Dataplane,
    model: Model,
    timeouts: StateTimeouts,
    resolver: Resolver,
    estimator: Estimator,
    last_sweep: crate::dataplane::SweepReport,
    /// The embryonic table at the last tick: (opened, promoted, entries) and how many
    /// embryos the LRU evicted between the last two ticks (opened, less promoted, expired
    /// and still there): more than none means SYNs are arriving faster than handshakes
    /// complete or time out, a flood.
    embryo_seen: (u64, u64, u64),
    embryos_evicted: u64,
}

/// Runs the daemon until SIGTERM/SIGINT or a `Shutdown` request.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let cfg = match &settings.config {
        Some(path) => Some(config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let mut interfaces = settings.interfaces.clone();
    if let Some(c) = &cfg {
        for i in &c.director.interfaces {
            if !interfaces.contains(i) {
                interfaces.push(i.clone());
            }
        }
    }
    if interfaces.is_empty() {
        bail!("no interface to attach to: give `-i <interface>` or `interfaces` in [director]");
    }
    let nl = Netlink::new()?;
    for i in &interfaces {
        nl.link_by_name(i).await?;
    }
    let desired_size = settings
        .conn_table_size
        .or(cfg.as_ref().map(|c| c.director.conn_table_size))
        .unwrap_or(lb_common::size::DEFAULT_CONNS);
    let opts = Options {
        pin_dir: settings.pin_dir.clone(),
        conn_table_size: desired_size,
        mh_table_size: cfg.as_ref().map_or(lb_common::size::DEFAULT_MH_TABLE, |c| {
            c.director.mh_table_size
        }),
        embryo_table_size: cfg
            .as_ref()
            .and_then(|c| c.director.embryonic_table_size)
            .unwrap_or(0),
        ..Options::default()
    };
    let mut dp = Dataplane::open(opts)?;
    let model = match &cfg {
        Some(c) => c.model.clone(),
        None => dp.model(),
    };
    if dp.adopted() {
        log::info!(
            "adopted the data path pinned under {} ({} services)",
            settings.pin_dir.display(),
            dp.model().services.len()
        );
    }
    let mut timeouts = StateTimeouts::default();
    if let Some(t) = cfg.as_ref().and_then(|c| c.timeouts) {
        timeouts.set(&t);
    }
    Dataplane::check(&model)?;
    dp.set_timeouts(&timeouts)?;
    if let Some(c) = &cfg {
        dp.set_expiry_rules(
            c.director.expire_nodest_conn,
            c.director.expire_quiescent_template,
        )?;
    }
    let mut resolver = Resolver {
        nl,
        paths: Paths::new(),
        checked: HashSet::new(),
        created: HashSet::new(),
        fingerprint: (0, 0),
        tunnel_sources: cfg
            .as_ref()
            .map(|c| c.director.tunnel_sources.clone())
            .unwrap_or_default(),
        attached: interfaces.clone(),
    };
    resolver.resolve(&model).await?;
    dp.sync(&model, &resolver.paths)?;
    for i in &interfaces {
        dp.attach(i, settings.xdp_mode)?;
        log::info!("attached to {i}");
    }
    for gone in dp.detach_others(&interfaces)? {
        log::info!("detached from {gone} (not in this daemon's interfaces)");
    }

    let listener = bind_socket(&settings.socket)?;
    log::info!(
        "ready: {} services, control socket {}",
        model.services.len(),
        settings.socket.display()
    );
    let mut d = Daemon {
        settings,
        dp,
        model,
        timeouts,
        resolver,
        estimator: Estimator::default(),
        last_sweep: Default::default(),
        embryo_seen: (0, 0, 0),
        embryos_evicted: 0,
    };
    let keep = d.serve(listener).await;
    let socket = d.settings.socket.clone();
    let _ = std::fs::remove_file(&socket);
    let keep = keep?;
    if !keep {
        let empty = Model::default();
        d.resolver.prune(&empty, true).await;
    }
    d.dp.shutdown(keep)?;
    log::info!(
        "stopped ({})",
        if keep {
            "data path left running"
        } else {
            "detached and unpinned"
        }
    );
    Ok(())
}

fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon is serving {}", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

impl Daemon {
    /// Serves until told to stop; returns whether to keep the data path running.
    async fn serve(&mut self, listener: UnixListener) -> anyhow::Result<bool> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut sweep = interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rates = interval(RATE_INTERVAL);
        rates.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut clock = interval(Duration::from_nanos(lb_common::CLOCK_TICK_NS));
        clock.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(false),
                _ = int.recv() => return Ok(false),
                _ = hup.recv() => match self.reload().await {
                    Ok(()) => log::info!("reloaded the config"),
                    Err(e) => log::error!("reload refused, nothing changed: {e:#}"),
                },
                _ = sweep.tick() => self.tick().await,
                _ = rates.tick() => self.estimator.update(self.dp.all_stats()),
                _ = clock.tick() => {
                    if let Err(e) = self.dp.tick_clock() {
                        log::warn!("advancing the data path's clock: {e:#}");
                    }
                }
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    if let Some(keep) = self.client(stream).await {
                        return Ok(keep);
                    }
                }
            }
        }
    }

    /// The SYN-flood defence: the embryonic table, its fill and its counters.
    fn defence_status(&self) -> serde_json::Value {
        let counters: HashMap<&str, u64> = self.dp.counters().into_iter().collect();
        serde_json::json!({
            "state": if self.embryos_evicted > 0 { "flooded" } else { "normal" },
            "embryos_evicted_last_second": self.embryos_evicted,
            "embryonic_table_size": self.dp.embryo_table_size(),
            "embryonic_entries": self.last_sweep.embryonic,
            "embryonic_expired_last_sweep": self.last_sweep.embryonic_expired,
            "embryonic_opened": counters.get("embryo_new").copied().unwrap_or(0),
            "promoted": counters.get("embryo_promoted").copied().unwrap_or(0),
            "promote_failed": counters.get("embryo_promote_failed").copied().unwrap_or(0),
        })
    }

    async fn tick(&mut self) {
        match self.dp.sweep() {
            Ok(r) => {
                let c: HashMap<&str, u64> = self.dp.counters().into_iter().collect();
                let now = (
                    c.get("embryo_new").copied().unwrap_or(0),
                    c.get("embryo_promoted").copied().unwrap_or(0),
                    r.embryonic as u64,
                );
                let (opened, promoted, entries) = self.embryo_seen;
                let gone = now.0.saturating_sub(opened) + entries;
                // Nothing to compare with at the first tick (the counters may come from an
                // adopted data path).
                let first = self.embryo_seen == (0, 0, 0);
                self.embryos_evicted = if first {
                    0
                } else {
                    gone.saturating_sub(now.1.saturating_sub(promoted))
                        .saturating_sub(r.embryonic_expired as u64)
                        .saturating_sub(now.2)
                };
                self.embryo_seen = now;
                self.last_sweep = r;
            }
            Err(e) => log::warn!("sweeping the connection table: {e:#}"),
        }
        if let Err(e) = self.dp.collect_garbage() {
            log::warn!("releasing unused table slots: {e:#}");
        }
        match self.resolver.network_changed().await {
            Ok(true) => {
                if let Err(e) = self.dp.bump_route_epoch() {
                    log::warn!("invalidating cached next hops: {e:#}");
                }
                // A route change cleared the paths: find them again.
                if self.resolver.paths.is_empty()
                    && let Err(e) = self.resolver.resolve(&self.model).await
                {
                    log::warn!("finding the real servers again after a route change: {e:#}");
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("reading routes and neighbours: {e:#}"),
        }
        match self.resolver.refresh().await {
            Ok(_) => {
                if let Err(e) = self.dp.refresh_paths(&self.resolver.paths) {
                    log::warn!("updating real servers' next hops: {e:#}");
                }
            }
            Err(e) => log::warn!("reading the neighbour table: {e:#}"),
        }
    }

    /// Handles one client; `Some(keep)` asks the daemon to stop.
    async fn client(&mut self, stream: UnixStream) -> Option<bool> {
        let (r, mut w) = stream.into_split();
        let allowed = w
            .as_ref()
            .peer_cred()
            .is_ok_and(|c| c.uid() == 0 || c.uid() == unsafe { libc::geteuid() });
        let mut line = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(r).read_line(&mut line),
        )
        .await;
        let mut stop = None;
        let resp = if !allowed {
            Response::Error("permission denied: the control socket is for root".into())
        } else {
            match read {
                Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        if let Request::Shutdown { keep_datapath } = req {
                            stop = Some(keep_datapath);
                            Response::Ok
                        } else {
                            self.handle(req).await
                        }
                    }
                    Err(e) => Response::Error(format!("bad request: {e}")),
                },
                _ => return None,
            }
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "\"Ok\"".into());
        out.push('\n');
        let _ = w.write_all(out.as_bytes()).await;
        stop
    }

    /// Applies a new model: check, resolve, sync; all or nothing.
    async fn apply(&mut self, model: Model) -> anyhow::Result<()> {
        Dataplane::check(&model)?;
        self.resolver.resolve(&model).await?;
        self.dp.sync(&model, &self.resolver.paths)?;
        self.model = model;
        self.resolver.prune(&self.model, true).await;
        Ok(())
    }

    async fn reload(&mut self) -> anyhow::Result<()> {
        let Some(path) = self.settings.config.clone() else {
            bail!("the daemon was started without --config: nothing to reload");
        };
        let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        // As `ipvsadm --set`: a timeout the file leaves out keeps its current value.
        let mut timeouts = self.timeouts;
        if let Some(t) = cfg.timeouts {
            timeouts.set(&t);
        }
        // New tunnel sources apply to real servers resolved from now on.
        if cfg.director.tunnel_sources != self.resolver.tunnel_sources {
            self.resolver.tunnel_sources = cfg.director.tunnel_sources.clone();
            self.resolver.paths.clear();
            self.resolver.checked.clear();
        }
        // A new Maglev table size rebuilds every mh table in the same sync.
        let mh = self.dp.mh_table_size();
        self.dp.set_mh_table_size(cfg.director.mh_table_size);
        if let Err(e) = self.apply(cfg.model).await {
            self.dp.set_mh_table_size(mh);
            return Err(e);
        }
        self.dp.set_timeouts(&timeouts)?;
        self.dp.set_expiry_rules(
            cfg.director.expire_nodest_conn,
            cfg.director.expire_quiescent_template,
        )?;
        self.timeouts = timeouts;
        Ok(())
    }

    async fn handle(&mut self, req: Request) -> Response {
        let result: anyhow::Result<Response> = async {
            Ok(match req {
                Request::Ops(ops) => {
                    let mut next = self.model.clone();
                    next.apply_all(&ops)
                        .map_err(|(_, e): (usize, OpError)| anyhow::anyhow!("{e}"))?;
                    self.apply(next).await?;
                    Response::Ok
                }
                Request::List { service } => {
                    if let Some(k) = &service
                        && !self.model.services.contains_key(k)
                    {
                        return Ok(Response::Error(OpError::NoService.to_string()));
                    }
                    Response::Snapshot(self.dp.snapshot(service.as_ref(), &self.estimator.rates))
                }
                Request::Conns => Response::Conns(self.dp.conns(&self.timeouts)),
                Request::Zero { service } => {
                    if let Some(k) = &service
                        && !self.model.services.contains_key(k)
                    {
                        return Ok(Response::Error(OpError::NoService.to_string()));
                    }
                    self.dp.zero(service.as_ref())?;
                    Response::Ok
                }
                Request::SetTimeouts(t) => {
                    let mut next = self.timeouts;
                    next.set(&t);
                    self.dp.set_timeouts(&next)?;
                    self.timeouts = next;
                    Response::Ok
                }
                Request::GetTimeouts => Response::Timeouts(self.timeouts.get()),
                Request::Reload => {
                    self.reload().await?;
                    Response::Ok
                }
                Request::Status => Response::Status(serde_json::json!({
                    "interfaces": self.dp.interfaces(),
                    "pin_dir": self.dp.pin_dir(),
                    "conn_table_size": self.dp.conn_table_size(),
                    "conn_entries": self.last_sweep.entries,
                    "conns_expired_last_sweep": self.last_sweep.expired,
                    "persistence_templates": self.last_sweep.templates,
                    "syn_flood_defence": self.defence_status(),
                    "sweep": sweep_status(&self.last_sweep),
                    "services": self.model.services.len(),
                    "counters": self.dp.counters().into_iter()
                        .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                        .collect::<serde_json::Map<_, _>>(),
                })),
                Request::Shutdown { .. } => Response::Ok,
            })
        }
        .await;
        result.unwrap_or_else(|e| Response::Error(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(conns: u64, inbytes: u64) -> (HashMap<u32, StatsView>, HashMap<u32, StatsView>) {
        let s = StatsView {
            conns,
            inpkts: conns * 6,
            inbytes,
            ..StatsView::default()
        };
        (HashMap::from([(1, s)]), HashMap::new())
    }

    #[test]
    fn estimator_keeps_small_rates_and_decays_like_ipvs() {
        let mut e = Estimator::default();
        // The first sample is a baseline (an adopted data path's totals are no burst).
        e.update(sample(1000, 0));
        assert_eq!(e.rates.0[&1].cps, 0);
        // 10 connections in one 2 s interval: 5/s, smoothed by 1/4 → 1.25, shown as 1.
        e.update(sample(1010, 6000));
        assert_eq!(e.rates.0[&1].cps, 1);
        // 30/s smoothed: 7.5; IPVS reads out `(avg + 0x1ff) >> 10`, rounding a half down.
        assert_eq!(e.rates.0[&1].inpps, 7);
        assert_eq!(e.rates.0[&1].inbps, 750);
        // Then quiet: it decays over a few intervals (0.94, 0.70, 0.53, 0.40 → 0).
        let cps: Vec<u64> = (0..4)
            .map(|_| {
                e.update(sample(1010, 6000));
                e.rates.0[&1].cps
            })
            .collect();
        assert_eq!(cps, [1, 1, 1, 0]);
    }

    #[test]
    fn estimator_counts_a_service_created_between_samples_from_zero() {
        let mut e = Estimator::default();
        e.update((HashMap::new(), HashMap::new()));
        e.update(sample(20, 0));
        assert_eq!(e.rates.0[&1].cps, 2, "20 in 2 s: 10/s, smoothed 2.5 → 2");
    }
}
