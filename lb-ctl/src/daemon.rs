//! The daemon: owns the data plane (the only writer of its maps), serves the control socket,
//! reloads the config on request or SIGHUP, expires connections, keeps real servers' MACs
//! fresh and estimates rates.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use aya::programs::XdpMode;
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{Semaphore, mpsc, oneshot},
    time::{MissedTickBehavior, interval},
};

use crate::{
    api::{RateView, Request, Response, StatsView},
    config,
    dataplane::{Dataplane, Options, StateTimeouts},
    health::{self, Health, state::SystemNotifier},
    model::{Model, OpError},
    neigh::Netlink,
    resolve::Resolver,
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
    /// `--metrics`: where to serve `/metrics` (the config's `[metrics] listen` otherwise).
    pub metrics: Option<std::net::SocketAddr>,
}

/// IPVS estimates rates every 2 s.
const RATE_INTERVAL: Duration = Duration::from_secs(2);

/// The largest request the daemon reads. The largest legitimate one is `-R` of a full table:
/// 1,000 services × 100 real servers encode to about 18 MiB of JSON (measured by
/// `largest_restore_fits_the_request_cap`); the cap leaves room for longer addresses and
/// flags, and stops a client from making the daemon buffer without bound.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
/// How long a client has to send its request, and to take each part of the answer: a silent
/// client only holds its own task, and not for ever.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; one more is answered "busy" at once.
const MAX_CLIENTS: usize = 32;
/// Requests waiting for the daemon's loop (each client waits for its own answer).
const QUEUE: usize = 64;

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

/// What the last sweep pass cost, and how the sweep thread is doing. Expiry's CPU time per
/// second is the pass's CPU time over the time since the pass before it started (a second,
/// or longer when the table is too large to walk in one at the thread's CPU share).
fn sweep_status(
    r: &crate::dataplane::SweepReport,
    t: &crate::dataplane::SweepState,
) -> serde_json::Value {
    let per_s = if r.interval.is_zero() {
        0
    } else {
        (r.cpu.as_secs_f64() / r.interval.as_secs_f64() * 1e6) as u64
    };
    serde_json::json!({
        "cpu_us_per_s": per_s,
        "cpu_us_per_pass": r.cpu.as_micros() as u64,
        "user_cpu_us_per_pass": r.cpu_user.as_micros() as u64,
        "wall_us": r.wall.as_micros() as u64,
        "slept_us": r.slept.as_micros() as u64,
        "interval_us": r.interval.as_micros() as u64,
        "calls": r.calls,
        "longest_call_us": r.longest_call.as_micros() as u64,
        "p99_call_us": r.p99_call.as_micros() as u64,
        "p999_call_us": r.p999_call.as_micros() as u64,
        "longest_call_wall_us": r.longest_call_wall.as_micros() as u64,
        "longest_run_us": r.longest_run.as_micros() as u64,
        // Never-matching entries that keep batch reads of a sparse table short (see
        // `lb_common::filler`): found by the last pass / kept per table, put back by it.
        "fillers": {
            "conns": r.fillers,
            "conns_kept": r.fillers_expected,
            "templates": r.template_fillers,
            "templates_kept": r.template_fillers_expected,
            "added": r.fillers_added,
        },
        "passes": t.passes,
        "in_pass": t.in_pass,
        "walked_this_pass": t.walked,
        "failed_passes": t.failed,
        "last_error": t.last_error,
        "thread_restarts": t.restarts,
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
    /// The sweep's own thread (`None` only while stopping).
    sweeper: Option<crate::dataplane::SweepThread>,
    /// The embryonic table at the last tick: (opened, promoted, entries) and how many
    /// embryos the LRU evicted between the last two ticks (opened, less promoted, expired
    /// and still there): more than none means SYNs are arriving faster than handshakes
    /// complete or time out, a flood.
    embryo_seen: (u64, u64, u64),
    embryos_evicted: u64,
    /// Operations (issue 12): the figures `/metrics` serves (if enabled) and the real
    /// servers' path states last logged.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Health and VRRP gauges on `/metrics` (with `metrics`).
    ha_gauges: Option<crate::metrics::HaGauges>,
    paths_seen: crate::logging::PathWatch,
    // High availability (crate::vrrp): the VRRP instances, and `[director] vips` this
    // daemon added. Released on a graceful stop, left on SIGKILL.
    vrrp: Option<crate::vrrp::Ha>,
    director_vips: Option<crate::vrrp::OwnedVips>,
    vrrp_config: crate::vrrp::config::VrrpConfig,
    vips_config: Vec<crate::vrrp::config::Vip>,
    /// Health checks: `model` is the configured table (config file and ipvsadm-style
    /// edits); the data path gets `health.effective(&model)`.
    hc: HealthWiring,
    /// Connection sync (crate::sync): the roles' threads, and the `[[sync_daemon]]` tables
    /// they were last configured from.
    sync: crate::sync::SyncDaemon,
    sync_config: crate::sync::config::SyncConfig,
    /// Sync figures on `/metrics` (with `metrics`).
    sync_gauges: Option<crate::metrics::SyncGauges>,
    /// Scale-out (crate::bgp): the VIPs' routes for the BGP daemon, and a drain in
    /// progress (when it gives up waiting for connections to end).
    announce: Option<crate::bgp::Announcer>,
    draining: Option<std::time::Instant>,
    announce_ticks: u64,
}

/// The daemon's side of the health checker: its state, its thread (started when some
/// checker is configured) and where transitions are told.
struct HealthWiring {
    health: Health,
    runner: Option<health::Runner>,
    reports: Option<health::Reports>,
    notifier: SystemNotifier,
}

impl HealthWiring {
    fn notifier_for(global: &health::GlobalDefs) -> SystemNotifier {
        SystemNotifier {
            mailer: global.mail().map(crate::notify::Mailer::new),
        }
    }

    /// Starts the checkers' thread if it is needed and not running, then the changes.
    fn start(&mut self, changes: health::Changes) -> anyhow::Result<()> {
        if self.runner.is_none() && !changes.start.is_empty() {
            let (r, rx) = health::Runner::start().context("starting the health checker")?;
            self.runner = Some(r);
            self.reports = Some(rx);
        }
        if let Some(r) = &self.runner {
            r.apply(changes);
        }
        Ok(())
    }
}

/// The next batch of checker reports (never, without a checker thread).
async fn next_reports(
    rx: &mut Option<health::Reports>,
    buf: &mut Vec<(u64, health::Report)>,
) -> usize {
    match rx {
        Some(rx) => rx.recv_many(buf, 1024).await,
        None => std::future::pending().await,
    }
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
    // VRRP's interfaces, addresses and sockets, before anything is touched.
    if let Some(c) = &cfg {
        crate::vrrp::preflight(&c.vrrp).await?;
        crate::sync::preflight(&c.sync)?;
    }
    // One owner: nothing below (maps, programs, links, settings) is touched before this
    // daemon holds the pin directory, and the socket is its own.
    let _lock = lock_pin_dir(&settings.pin_dir)?;
    let listener = bind_socket(&settings.socket)?;
    let socket_file = SocketFile(settings.socket.clone());
    // Bound before the data path is touched: a bad or busy address changes nothing.
    let (metrics, metrics_server) = match settings
        .metrics
        .or(cfg.as_ref().and_then(|c| c.metrics_listen))
    {
        Some(addr) => {
            let m = Arc::new(crate::metrics::Metrics::new());
            let server = m.serve(addr)?;
            (Some(m), Some(server))
        }
        None => (None, None),
    };
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
    // Health: the data path starts with what the checkers' initial states allow (alpha
    // servers out until their first good check).
    let mut hc = HealthWiring {
        health: Health::new(),
        runner: None,
        reports: None,
        notifier: HealthWiring::notifier_for(
            &cfg.as_ref().map(|c| c.global.clone()).unwrap_or_default(),
        ),
    };
    let hc_changes = match &cfg {
        Some(c) => {
            hc.health
                .configure(c.health.clone(), c.global.clone(), &model, &mut hc.notifier)
        }
        None => health::Changes::default(),
    };
    let effective = hc.health.effective(&model);
    if dp.adopted() {
        log::info!(
            "adopted the data path pinned under {} ({} services)",
            settings.pin_dir.display(),
            dp.model().services.len()
        );
    }
    // What the previous daemon set (`--set`, its config) stays, unless this daemon's config
    // says otherwise, as a reload keeps a timeout the file leaves out.
    let mut timeouts = if dp.adopted() {
        dp.read_timeouts()
            .context("reading the pinned connection timeouts")?
    } else {
        StateTimeouts::default()
    };
    if let Some(t) = cfg.as_ref().and_then(|c| c.timeouts) {
        timeouts.set(&t);
    }
    if cfg.is_none()
        && let Some(mh) = dp.adopted_mh_table_size()
    {
        dp.set_mh_table_size(mh);
    }
    Dataplane::check(&model)?;
    Dataplane::check(&effective)?;
    dp.set_timeouts(&timeouts)?;
    if let Some(c) = &cfg {
        dp.set_expiry_rules(
            c.director.expire_nodest_conn,
            c.director.expire_quiescent_template,
        )?;
        dp.set_sloppy(c.director.sloppy_tcp, c.director.sloppy_sctp)?;
    }
    let mut resolver = Resolver::new(
        nl,
        cfg.as_ref()
            .map(|c| c.director.tunnel_sources.clone())
            .unwrap_or_default(),
        interfaces.clone(),
    )?;
    // A daemon taking over a running table keeps serving it even if a real server cannot be
    // resolved now; a fresh start refuses, as `-a` would.
    let plan = resolver.plan(&effective, None, dp.adopted()).await?;
    dp.sync(&effective, &plan.paths)?;
    resolver.commit(plan).await;
    for i in &interfaces {
        dp.attach(i, settings.xdp_mode)?;
        log::info!("attached to {i}");
    }
    for gone in dp.detach_others(&interfaces)? {
        log::info!("detached from {gone} (not in this daemon's interfaces)");
    }

    let clock = dp.start_clock()?;
    let sweeper = dp.start_sweep()?;
    // Connection sync: the fixed roles start now (before the VIPs, so a backup is
    // listening before it can become master); roles that follow VRRP start in the loop.
    let mut sync = crate::sync::datapath::open(&dp);
    sync.switched(crate::sync::datapath::is_master(&dp));
    let sync_config = cfg.as_ref().map(|c| c.sync.clone()).unwrap_or_default();
    sync.apply(&sync_config)?;
    dp.set_sync_refresh(sync_config.refresh_period())?;
    // High availability: the VIPs come last, once the data path serves them.
    let director_vips = crate::vrrp::OwnedVips::add(
        &cfg.as_ref()
            .map(|c| c.director.vips.clone())
            .unwrap_or_default(),
        &interfaces[0],
    )
    .await?;
    let vrrp = match cfg.as_ref().map(|c| &c.vrrp) {
        Some(v) if !v.instances.is_empty() => Some(crate::vrrp::Ha::start(v.clone())?),
        _ => None,
    };
    // Scale-out: the routes go in once the data path serves (`announce_update` below).
    let announce = match cfg.as_ref().and_then(|c| c.announce.clone()) {
        Some(a) => Some(crate::bgp::Announcer::start(a, &interfaces[0]).await?),
        None => None,
    };
    log::info!(
        "ready: {} services, control socket {}",
        model.services.len(),
        settings.socket.display()
    );
    crate::logging::model_changes(&Model::default(), &model);
    let sync_gauges = match &metrics {
        Some(m) => Some(crate::metrics::SyncGauges::register(m)?),
        None => None,
    };
    let mut d = Daemon {
        settings,
        dp,
        model,
        timeouts,
        resolver,
        estimator: Estimator::default(),
        last_sweep: Default::default(),
        sweeper: Some(sweeper),
        embryo_seen: (0, 0, 0),
        embryos_evicted: 0,
        hc,
        vrrp,
        director_vips: Some(director_vips),
        vrrp_config: cfg.as_ref().map(|c| c.vrrp.clone()).unwrap_or_default(),
        vips_config: cfg
            .as_ref()
            .map(|c| c.director.vips.clone())
            .unwrap_or_default(),
        ha_gauges: match &metrics {
            Some(m) => Some(crate::metrics::HaGauges::register(m)?),
            None => None,
        },
        metrics,
        paths_seen: Default::default(),
        sync,
        sync_config,
        sync_gauges,
        announce,
        draining: None,
        announce_ticks: 0,
    };
    d.announce_update().await;
    d.sync_tick();
    d.hc.start(hc_changes)?;
    d.ops_tick();
    // systemd (Type=notify): ready only now, with the programs attached and the config
    // applied; without $NOTIFY_SOCKET this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        log::warn!("telling systemd we are ready: {e}");
    }
    let keep = d.serve(listener).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Withdrawn first, while the data path still forwards what the routers send until
    // BGP has told them.
    if let Some(a) = d.announce.as_mut() {
        a.withdraw_all(crate::bgp::Reason::Detached).await;
    }
    drop(metrics_server);
    // A graceful stop hands the VIPs over first: priority 0, addresses removed.
    if let Some(v) = d.vrrp.take() {
        v.stop();
    }
    d.sync.shutdown();
    d.sync_tick();
    if let Some(v) = d.director_vips.take() {
        v.remove().await;
    }
    drop(socket_file);
    drop(clock);
    // Stopped (a pass part way through stops where it is) before the maps may go.
    drop(d.sweeper.take());
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

/// Removes the control socket when the daemon stops, or fails after binding it.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Takes the daemon's exclusive lock on its pin directory (`flock`, which bpffs supports as
/// any filesystem: it is VFS-level), held until the returned file is closed, at exit, even on
/// SIGKILL. A second daemon on the same directory gives up here, before it reads or writes
/// anything in it.
fn lock_pin_dir(dir: &Path) -> anyhow::Result<File> {
    crate::dataplane::ensure_bpffs(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on an fd this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e).with_context(|| format!("locking {}", dir.display()));
        }
        let who = f
            .metadata()
            .ok()
            .and_then(|m| lock_holder(&std::fs::read_to_string("/proc/locks").ok()?, &m))
            .map_or(String::new(), |pid| format!(" (pid {pid})"));
        bail!(
            "another lb-ctl daemon{who} owns {}: stop it first, or give this one another \
             --pin-path",
            dir.display()
        );
    }
    Ok(f)
}

/// The pid holding a `flock` on the file `m` describes, from `/proc/locks` (lines such as
/// `1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF`, the device as major:minor in hex).
fn lock_holder(locks: &str, m: &std::fs::Metadata) -> Option<u32> {
    let dev = m.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        m.ino()
    );
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "->" marks a waiter, shifting the fields.
        let f = if f.get(1) == Some(&"->") {
            &f[1..]
        } else {
            &f[..]
        };
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
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

/// Ids and table slots in use, for `lb-ctl status` (a leak shows there).
fn pools_json(u: crate::dataplane::PoolUsage) -> serde_json::Value {
    serde_json::json!({
        "service_ids": u.service_ids,
        "backend_ids": u.backend_ids,
        "trashed_backends": u.trashed_backends,
        "table_slots_used": u.table_slots_used,
        "table_slots": u.table_slots,
    })
}

/// What a client task hands the daemon's loop: a request and where its answer goes.
struct Call {
    req: Request,
    reply: oneshot::Sender<Answer>,
}

/// The daemon's answer to a call; `written`, if given, is told once the answer is sent (the
/// daemon waits for that before it exits after a `Shutdown`).
struct Answer {
    resp: Response,
    written: Option<oneshot::Sender<()>>,
}

impl From<Response> for Answer {
    fn from(resp: Response) -> Self {
        Answer {
            resp,
            written: None,
        }
    }
}

const STOPPING: &str = "the daemon is stopping (signal): the request was interrupted";

/// Accepts clients for as long as the daemon's loop runs, each in its own task.
async fn accept(listener: UnixListener, tx: mpsc::Sender<Call>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                log::warn!("accepting a client: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = slots.clone().try_acquire_owned().ok();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit.as_ref();
            client(stream, tx, permit.is_some()).await;
        });
    }
}

/// Serves one client: one request, one answer, each bounded in size and time.
async fn client(stream: UnixStream, tx: mpsc::Sender<Call>, admitted: bool) {
    let (mut r, mut w) = stream.into_split();
    let allowed = w
        .as_ref()
        .peer_cred()
        .is_ok_and(|c| c.uid() == 0 || c.uid() == unsafe { libc::geteuid() });
    let answer: Answer = if !allowed {
        Response::Error("permission denied: the control socket is for root".into()).into()
    } else if !admitted {
        Response::Error(format!(
            "the daemon is busy: {MAX_CLIENTS} clients are connected; try again"
        ))
        .into()
    } else {
        match tokio::time::timeout(CLIENT_TIMEOUT, read_request(&mut r, MAX_REQUEST_BYTES)).await {
            // Connected and closed without a word (a liveness probe): nothing to answer.
            Ok(Ok(None)) => return,
            Ok(Ok(Some(req))) => {
                let (reply, answer) = oneshot::channel();
                if tx.send(Call { req, reply }).await.is_err() {
                    Response::Error(STOPPING.into()).into()
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| Response::Error(STOPPING.into()).into())
                }
            }
            Ok(Err(e)) => Response::Error(e).into(),
            Err(_) => Response::Error(format!(
                "no complete request within {} s",
                CLIENT_TIMEOUT.as_secs()
            ))
            .into(),
        }
    };
    let out = encode_reply(&answer.resp);
    // A large listing takes a while to read: the bound is on a client that stops reading,
    // not on the whole answer.
    for chunk in out.as_bytes().chunks(64 << 10) {
        match tokio::time::timeout(CLIENT_TIMEOUT, w.write_all(chunk)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    // End the answer, then discard what the client may still be sending (an oversized
    // request): closing with unread input would reset the connection, and the client would
    // lose the answer. Bounded like the request.
    let _ = w.shutdown().await;
    if let Some(written) = answer.written {
        let _ = written.send(());
    }
    let mut rest = (&mut r).take(MAX_REQUEST_BYTES as u64);
    let _ = tokio::time::timeout(
        CLIENT_TIMEOUT,
        tokio::io::copy(&mut rest, &mut tokio::io::sink()),
    )
    .await;
}

/// Reads one request: a line of JSON of at most `cap` bytes. `Ok(None)`: the client closed
/// the connection without sending anything.
async fn read_request<R: AsyncRead + Unpin>(r: R, cap: usize) -> Result<Option<Request>, String> {
    let mut buf = Vec::new();
    // One byte over the cap tells an oversized request from one that fits exactly.
    let mut limited = BufReader::new(r).take(cap as u64 + 1);
    limited
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() > cap {
        return Err(format!(
            "request too large: over {cap} bytes (the limit is {} MiB)",
            cap >> 20
        ));
    }
    serde_json::from_slice::<Request>(&buf)
        .map(Some)
        .map_err(|e| format!("bad request: {e}"))
}

/// The answer as one line of JSON; an answer that cannot be encoded becomes an error, never
/// a false `Ok`.
fn encode_reply<T: Serialize>(resp: &T) -> String {
    let mut out = serde_json::to_string(resp).unwrap_or_else(|e| {
        serde_json::to_string(&Response::Error(format!(
            "the answer could not be encoded: {e}"
        )))
        .expect("a string always encodes")
    });
    out.push('\n');
    out
}

impl Daemon {
    /// Serves until told to stop; returns whether to keep the data path running.
    ///
    /// This loop is the one owner of the data path's maps: clients are read and answered in
    /// their own tasks (`accept`), which hand each parsed request here and wait for the
    /// answer, so a slow or silent client holds only itself. The clock runs on its own
    /// thread (`Dataplane::start_clock`), so a long sync or resolve here does not stop it;
    /// SIGTERM/SIGINT also interrupt a request in progress.
    async fn serve(&mut self, listener: UnixListener) -> anyhow::Result<bool> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        // SIGUSR1: drain (as `lb-ctl drain`, with the default timeout).
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut sweep = interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rates = interval(RATE_INTERVAL);
        rates.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ops = interval(Duration::from_secs(1));
        ops.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sync = interval(crate::sync::FOLLOW_POLL);
        sync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (tx, mut rx) = mpsc::channel::<Call>(QUEUE);
        let acceptor = tokio::spawn(accept(listener, tx));
        let mut reports = Vec::new();
        let stop = loop {
            if self.drain_done() {
                break false;
            }
            tokio::select! {
                _ = usr1.recv() => self.start_drain(crate::bgp::DEFAULT_DRAIN_TIMEOUT).await,
                _ = term.recv() => break false,
                _ = int.recv() => break false,
                _ = hup.recv() => match self.reload().await {
                    Ok(()) => log::info!("reloaded the config"),
                    Err(e) => log::error!("reload refused, nothing changed: {e:#}"),
                },
                _ = sweep.tick() => self.tick().await,
                _ = rates.tick() => self.estimator.update(self.dp.all_stats()),
                n = next_reports(&mut self.hc.reports, &mut reports) => {
                    if n == 0 {
                        log::error!("the health checker's thread stopped; checks are frozen");
                        self.hc.reports = None;
                    }
                    self.health_reports(&mut reports).await;
                }
                _ = ops.tick() => self.ops_tick(),
                _ = sync.tick() => self.sync_tick(),
                call = rx.recv() => {
                    let Some(Call { req, reply }) = call else {
                        bail!("the control socket's listener stopped");
                    };
                    if let Request::Shutdown { keep_datapath } = req {
                        // Answer before stopping: the client task must get to write it.
                        let (written, sent) = oneshot::channel();
                        let answer = Answer { resp: Response::Ok, written: Some(written) };
                        if reply.send(answer).is_ok() {
                            let _ = tokio::time::timeout(Duration::from_secs(2), sent).await;
                        }
                        break keep_datapath;
                    }
                    let resp = tokio::select! {
                        r = self.handle(req) => r,
                        _ = term.recv() => {
                            let _ = reply.send(Response::Error(STOPPING.into()).into());
                            break false;
                        }
                        _ = int.recv() => {
                            let _ = reply.send(Response::Error(STOPPING.into()).into());
                            break false;
                        }
                    };
                    let _ = reply.send(resp.into());
                }
            }
        };
        acceptor.abort();
        Ok(stop)
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
        // The sweep runs on its own thread: here only its news, and a thread that died comes
        // back (forwarding never needed it; expiry and counts do).
        let sweeper = self.sweeper.as_mut().expect("running");
        sweeper.set_backend_bound(self.dp.backend_id_bound());
        match sweeper.revive(&self.dp) {
            Some(Ok(why)) => log::error!("the sweep thread died ({why}); started it again"),
            Some(Err(e)) => {
                log::error!("the sweep thread died and could not be started again: {e:#}")
            }
            None => {}
        }
        if let Some(r) = sweeper.take_report() {
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
        if let Err(e) = self.dp.collect_garbage() {
            log::warn!("releasing unused table slots: {e:#}");
        }
        // Routes, links and neighbours: only the real servers a change concerns are looked
        // up again, each on its own.
        let t = self.resolver.tick().await;
        if t.network_changed
            && let Err(e) = self.dp.bump_route_epoch()
        {
            log::warn!("invalidating cached next hops: {e:#}");
        }
        if t.paths_changed
            && let Err(e) = self.dp.refresh_paths(&self.resolver.paths)
        {
            log::warn!("updating real servers' next hops: {e:#}");
        }
        // Also once a second: a failed add or delete is tried again; and every RESYNC
        // seconds the table is read back, so a route someone deleted by hand comes back.
        self.announce_update().await;
        self.announce_ticks += 1;
        if self.announce_ticks.is_multiple_of(crate::bgp::RESYNC)
            && let Some(a) = self.announce.as_mut()
        {
            a.resync().await;
        }
    }

    /// Applies a new model: check, resolve, sync; all or nothing.
    async fn apply(&mut self, model: Model) -> anyhow::Result<()> {
        self.apply_with(model, None, None).await
    }

    /// Takes the checkers' reports; when one changes the table, the data path gets the
    /// new one (the configured table is unchanged).
    async fn health_reports(&mut self, reports: &mut Vec<(u64, health::Report)>) {
        let mut changed = false;
        for (id, r) in reports.drain(..) {
            changed |= self
                .hc
                .health
                .report(id, r, &self.model, &mut self.hc.notifier);
        }
        if changed {
            let model = self.model.clone();
            if let Err(e) = self.apply(model).await {
                log::error!("applying a health-check transition to the data path: {e:#}");
            }
        }
    }

    /// `apply`, with new tunnel sources if given: the resolver's new state is computed aside
    /// and replaces the current one only if the data path takes the model.
    /// `health`, if given, replaces the daemon's health state with the table (a reload).
    async fn apply_with(
        &mut self,
        model: Model,
        tunnel_sources: Option<&BTreeMap<String, std::net::IpAddr>>,
        health: Option<Health>,
    ) -> anyhow::Result<()> {
        Dataplane::check(&model)?;
        // The data path gets the table with health applied (see `health::state`).
        let effective = health.as_ref().unwrap_or(&self.hc.health).effective(&model);
        Dataplane::check(&effective)?;
        let plan = self
            .resolver
            .plan(&effective, tunnel_sources, false)
            .await?;
        if let Err(e) = self.dp.sync(&effective, &plan.paths) {
            self.resolver.discard(plan).await;
            return Err(e);
        }
        self.resolver.commit(plan).await;
        crate::logging::model_changes(&self.model, &model);
        self.model = model;
        if let Some(h) = health {
            self.hc.health = h;
        }
        self.resolver.prune(&effective, true).await;
        self.announce_update().await;
        Ok(())
    }

    /// Scale-out: the VIPs' routes follow what the data path serves now.
    async fn announce_update(&mut self) {
        let Some(a) = self.announce.as_mut() else {
            return;
        };
        let effective = self.hc.health.effective(&self.model);
        let attached = !self.dp.interfaces().is_empty();
        let want = crate::bgp::readiness(a.config(), &effective, attached, self.draining.is_some());
        a.update(want).await;
    }

    /// `lb-ctl drain`: withdraw every VIP, then stop once no connection is active or at
    /// `timeout` (checked every second by `drain_done`).
    async fn start_drain(&mut self, timeout: Duration) {
        if self.draining.is_none() {
            log::info!(
                "draining: VIPs withdrawn; stopping when no connection is active, at the latest in {} s",
                timeout.as_secs()
            );
        }
        self.draining = Some(std::time::Instant::now() + timeout);
        self.announce_update().await;
    }

    /// Connections the data path counts as active, over every real server.
    fn active_conns(&self) -> u64 {
        self.dp
            .snapshot(None, &self.estimator.rates)
            .services
            .iter()
            .flat_map(|s| s.dests.iter())
            .map(|d| u64::from(d.active_conns))
            .sum()
    }

    /// Whether a drain is over: no active connection, or its time is up.
    fn drain_done(&self) -> bool {
        let Some(deadline) = self.draining else {
            return false;
        };
        let active = self.active_conns();
        if active == 0 {
            log::info!("drained: no active connection left; stopping");
            true
        } else if std::time::Instant::now() >= deadline {
            log::warn!("drain timeout: stopping with {active} active connection(s)");
            true
        } else {
            false
        }
    }

    /// Once a second: log the real servers' path transitions and publish the figures
    /// `/metrics` serves (the reads `-Ln --stats` and `status` make).
    fn ops_tick(&mut self) {
        self.paths_seen.update(&self.resolver.status());
        let Some(m) = self.metrics.as_ref().filter(|m| m.due()) else {
            return;
        };
        let started = std::time::Instant::now();
        let r = &self.last_sweep;
        let real_servers = self
            .resolver
            .status()
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some((
                    s.get("address")?.as_str()?.to_string(),
                    s.get("state")?.as_str()? == "resolved",
                ))
            })
            .collect();
        let mut sample = crate::metrics::Sample {
            snapshot: self.dp.snapshot(None, &self.estimator.rates),
            counters: self.dp.counters(),
            tables: crate::metrics::Tables {
                conn_entries: r.entries as u64,
                conn_expired_last_sweep: r.expired as u64,
                templates: r.templates as u64,
                templates_expired_last_sweep: r.templates_expired as u64,
                embryonic_size: self.dp.embryo_table_size().into(),
                embryonic_entries: r.embryonic as u64,
                embryonic_expired_last_sweep: r.embryonic_expired as u64,
            },
            real_servers,
            read_seconds: 0.0,
        };
        if let Some(g) = &self.ha_gauges {
            g.set_health(&self.hc.health.status());
            g.set_vrrp(&self.vrrp.as_ref().map(|v| v.status()).unwrap_or_default());
        }
        if let Some(g) = &self.sync_gauges {
            g.set(&self.sync_status());
        }
        sample.read_seconds = started.elapsed().as_secs_f64();
        m.publish(sample);
    }

    /// Connection sync: roles that follow a VRRP instance start and stop with its state,
    /// and the data path reports connections exactly while the master role runs.
    fn sync_tick(&mut self) {
        if self.sync.following().is_some() {
            let states = self.vrrp.as_ref().map(|v| v.status()).unwrap_or_default();
            self.sync.follow(|name| {
                match states.iter().find(|s| s.name == name).map(|s| s.state) {
                    Some(crate::vrrp::fsm::State::Master) => crate::sync::engine::Followed::Master,
                    Some(_) => crate::sync::engine::Followed::NotMaster,
                    None => crate::sync::engine::Followed::Missing,
                }
            });
        } else {
            self.sync.follow(|_| crate::sync::engine::Followed::Missing);
        }
        if let Some(on) = self.sync.take_switch() {
            match crate::sync::datapath::set_master(&mut self.dp, on) {
                Ok(()) => self.sync.switched(on),
                Err(e) => log::error!("connection sync: switching the data path's events: {e:#}"),
            }
        }
    }

    /// The sync roles' status, with the data path's count of events its ring dropped.
    fn sync_status(&self) -> Vec<crate::sync::shell::RoleStatus> {
        let dropped = self
            .dp
            .counters()
            .into_iter()
            .find(|(k, _)| *k == "sync_dropped")
            .map_or(0, |(_, v)| v);
        let mut v = self.sync.status();
        for s in v.iter_mut().filter(|s| s.role == "master") {
            s.ring_drops = dropped;
        }
        v
    }

    async fn reload(&mut self) -> anyhow::Result<()> {
        let Some(path) = self.settings.config.clone() else {
            bail!("the daemon was started without --config: nothing to reload");
        };
        let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::sync::preflight(&cfg.sync)?;
        if cfg.announce.as_ref() != self.announce.as_ref().map(|a| a.config()) {
            log::warn!(
                "reload: [announce] is applied at start only; the running one is kept \
                 (restart the daemon to change it)"
            );
        }
        if cfg.vrrp != self.vrrp_config || cfg.director.vips != self.vips_config {
            log::warn!(
                "reload: VRRP instances and [director] vips are applied at start only; the \
                 running ones are kept (restart the daemon to change them)"
            );
        }
        // As `ipvsadm --set`: a timeout the file leaves out keeps its current value.
        let mut timeouts = self.timeouts;
        if let Some(t) = cfg.timeouts {
            timeouts.set(&t);
        }
        // A new Maglev table size rebuilds every mh table in the same sync; new tunnel
        // sources re-resolve the TUN real servers, kept aside until the sync succeeds.
        let mh = self.dp.mh_table_size();
        self.dp.set_mh_table_size(cfg.director.mh_table_size);
        // Health is tried aside: unchanged checkers keep their state, new ones start per
        // alpha, and nothing changes if the data path refuses the table.
        let mut health = self.hc.health.clone();
        let mut notifier = HealthWiring::notifier_for(&cfg.global);
        let changes = health.configure(cfg.health, cfg.global, &cfg.model, &mut notifier);
        if let Err(e) = self
            .apply_with(cfg.model, Some(&cfg.director.tunnel_sources), Some(health))
            .await
        {
            self.dp.set_mh_table_size(mh);
            return Err(e);
        }
        self.hc.notifier = notifier;
        self.hc.start(changes)?;
        self.dp.set_timeouts(&timeouts)?;
        self.dp.set_expiry_rules(
            cfg.director.expire_nodest_conn,
            cfg.director.expire_quiescent_template,
        )?;
        self.dp
            .set_sloppy(cfg.director.sloppy_tcp, cfg.director.sloppy_sctp)?;
        self.timeouts = timeouts;
        if cfg.sync != self.sync_config {
            self.sync.apply(&cfg.sync)?;
            self.dp.set_sync_refresh(cfg.sync.refresh_period())?;
            self.sync_config = cfg.sync;
            self.sync_tick();
        }
        Ok(())
    }

    async fn handle(&mut self, req: Request) -> Response {
        let result: anyhow::Result<Response> = async {
            Ok(match req {
                Request::Ops(ops) => {
                    let mut next = self.model.clone();
                    next.apply_all(&ops)
                        .map_err(|(_, e): (usize, OpError)| anyhow::anyhow!("{e}"))?;
                    // A weight or server change may gain or lose a quorum.
                    let mut health = self.hc.health.clone();
                    health.refresh_quorums(&next, &mut self.hc.notifier);
                    self.apply_with(next, None, Some(health)).await?;
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
                    crate::model::check_timeouts(t.tcp, t.tcpfin, t.udp)?;
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
                    "sloppy_tcp": self.dp.sloppy().0,
                    "sloppy_sctp": self.dp.sloppy().1,
                    "announce": self.announce.as_ref().map(|a| a.status()),
                    "draining": self.draining.map(|d| serde_json::json!({
                        "active_conns": self.active_conns(),
                        "timeout_in_secs": d.saturating_duration_since(std::time::Instant::now()).as_secs(),
                    })),
                    "sweep": sweep_status(
                        &self.last_sweep,
                        &self.sweeper.as_ref().map(|s| s.state()).unwrap_or_default(),
                    ),
                    "services": self.model.services.len(),
                    "real_servers": self.resolver.status(),
                    "health": self.hc.health.status(),
                    "pools": pools_json(self.dp.pool_usage()),
                    "vrrp": self.vrrp.as_ref().map(|v| v.status()).unwrap_or_default(),
                    "sync": serde_json::json!({
                        "follows": self.sync.following(),
                        "data_path_reports": self.sync.take_switch().is_none()
                            && self.sync.status().iter().any(|s| s.role == "master"),
                        "roles": self.sync_status(),
                    }),
                    "counters": self.dp.counters().into_iter()
                        .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                        .collect::<serde_json::Map<_, _>>(),
                })),
                Request::StartDaemon { role, params } => {
                    self.sync.start(role, &params)?;
                    self.sync_tick();
                    Response::Ok
                }
                Request::StopDaemon { role } => {
                    self.sync.stop(role)?;
                    self.sync_tick();
                    Response::Ok
                }
                Request::ListDaemon => Response::Daemons(self.sync_status()),
                Request::Shutdown { .. } => Response::Ok,
                Request::Drain { timeout_secs } => {
                    // A raw request may carry any number: refused, not an overflow.
                    if timeout_secs > crate::bgp::MAX_DRAIN_TIMEOUT.as_secs() {
                        bail!(
                            "drain timeout {timeout_secs} s out of range 0..{}",
                            crate::bgp::MAX_DRAIN_TIMEOUT.as_secs()
                        );
                    }
                    self.start_drain(Duration::from_secs(timeout_secs)).await;
                    Response::Ok
                }
                Request::Digest { service } => match self.dp.hash_table(&service)? {
                    None => Response::Error(OpError::NoService.to_string()),
                    Some((sched, slots)) if slots.is_empty() => Response::Error(format!(
                        "service {service} uses {sched}, which has no hashing table \
                         (only mh, sh and dh have one)"
                    )),
                    Some((sched, slots)) => Response::Status(serde_json::json!({
                        "service": service.to_string(),
                        "scheduler": sched.to_string(),
                        "slots": slots.len(),
                        "digest": crate::bgp::digest::digest(&slots),
                    })),
                },
            })
        }
        .await;
        result.unwrap_or_else(|e| Response::Error(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Forward;
    use std::net::Ipv4Addr;

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

    /// `-R` of 1,000 services × 100 real servers (the largest table a director is sized
    /// for, 100,000 of the 131,071 backend ids), as the CLI sends it.
    fn largest_restore() -> Request {
        use crate::model::{DestConfig, Op, Scheduler, ServiceConfig, ServiceKey};
        let mut ops = Vec::new();
        for s in 0..1000u32 {
            let key = ServiceKey::tcp(
                Ipv4Addr::new(203, 0, (s / 250) as u8, (s % 250) as u8 + 1),
                65535 - s as u16,
            );
            let mut cfg = ServiceConfig::new(key, Scheduler::Wrr);
            cfg.persistence = Some(crate::model::Persistence {
                timeout: 86400,
                netmask: Ipv4Addr::new(255, 255, 255, 255).into(),
            });
            ops.push(Op::AddService(cfg));
            for d in 0..100u32 {
                let addr = Ipv4Addr::new(198, 51, 100 + (d / 250) as u8, (d % 250) as u8 + 1);
                let mut dest = DestConfig::new(addr, 65535, Forward::Tun, 65535);
                dest.u_threshold = 4_000_000_000;
                dest.l_threshold = 4_000_000_000;
                ops.push(Op::AddDest(key, dest));
            }
        }
        Request::Ops(ops)
    }

    #[test]
    fn largest_restore_fits_the_request_cap() {
        let line = encode_reply(&largest_restore());
        eprintln!(
            "-R of 1,000 × 100: {} bytes ({:.1} MiB) of JSON",
            line.len(),
            line.len() as f64 / (1 << 20) as f64
        );
        assert!(
            line.len() * 2 < MAX_REQUEST_BYTES,
            "the largest legitimate request ({} bytes) must fit the cap ({MAX_REQUEST_BYTES}) \
             with room to spare",
            line.len()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let read = rt.block_on(read_request(line.as_bytes(), MAX_REQUEST_BYTES));
        assert_eq!(read, Ok(Some(largest_restore())));
    }

    #[test]
    fn a_request_over_the_cap_is_refused_with_its_size() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let line = encode_reply(&Request::GetTimeouts);
        let fits = line.len();
        // Exactly the cap (newline included) is read; one byte more is not.
        assert_eq!(
            rt.block_on(read_request(line.as_bytes(), fits)),
            Ok(Some(Request::GetTimeouts))
        );
        let err = rt
            .block_on(read_request(line.as_bytes(), fits - 1))
            .unwrap_err();
        assert!(err.starts_with("request too large: over "), "{err}");
        // Without a newline the cap still holds: an endless line is not buffered.
        let endless = vec![b'x'; 4096];
        let err = rt.block_on(read_request(&endless[..], 100)).unwrap_err();
        assert!(err.starts_with("request too large"), "{err}");
        // Nothing at all: the client hung up (no answer is due).
        assert_eq!(rt.block_on(read_request(&b""[..], 100)), Ok(None));
        let err = rt
            .block_on(read_request(&b"{\"ops\":7}\n"[..], 100))
            .unwrap_err();
        assert!(err.starts_with("bad request: "), "{err}");
    }

    #[test]
    fn an_answer_that_cannot_be_encoded_is_an_error_not_ok() {
        struct Unencodable;
        impl Serialize for Unencodable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("a value JSON cannot hold"))
            }
        }
        let line = encode_reply(&Unencodable);
        assert!(line.ends_with('\n'), "{line:?}");
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(
            back,
            Response::Error("the answer could not be encoded: a value JSON cannot hold".into())
        );
        assert_eq!(encode_reply(&Response::Ok), "\"ok\"\n");
    }

    #[test]
    fn the_lock_holder_is_found_in_proc_locks() {
        let dir = std::env::temp_dir();
        let m = std::fs::metadata(&dir).unwrap();
        let dev = m.dev();
        let id = format!(
            "{:02x}:{:02x}:{}",
            libc::major(dev),
            libc::minor(dev),
            m.ino()
        );
        let locks = format!(
            "1: POSIX  ADVISORY  WRITE 77 {id} 0 EOF\n\
             2: FLOCK  ADVISORY  WRITE 1234 {id} 0 EOF\n\
             2: -> FLOCK  ADVISORY  WRITE 999 {id} 0 EOF\n\
             3: FLOCK  ADVISORY  WRITE 55 00:01:1 0 EOF\n"
        );
        assert_eq!(lock_holder(&locks, &m), Some(1234));
        assert_eq!(lock_holder("", &m), None);
    }

    #[test]
    fn estimator_counts_a_service_created_between_samples_from_zero() {
        let mut e = Estimator::default();
        e.update((HashMap::new(), HashMap::new()));
        e.update(sample(20, 0));
        assert_eq!(e.rates.0[&1].cps, 2, "20 in 2 s: 10/s, smoothed 2.5 → 2");
    }
}
