//! High availability: VRRPv2/v3 between directors, interoperable with keepalived, and the
//! director owning its VIPs.
//!
//! - [`packet`]: adverts on the wire, checked as keepalived checks them.
//! - [`fsm`]: the state machine, a pure function of events and a clock.
//! - [`config`]: the TOML tables (keepalived's keywords as keys; the schema is in its doc).
//! - [`net`]: sockets, addresses, gratuitous ARP, link state.
//! - this file: the shell that runs the instances on a thread of their own (so that a long
//!   table sync or sweep in the daemon's loop never delays an advert), executes the state
//!   machine's actions, runs the track scripts and answers `lb-ctl status`.
//!
//! What "serving the VIP" means for the XDP data path: the balancer matches packets by
//! VIP:port whether or not the address is on the interface, so a BACKUP would forward what
//! reaches it. What makes a director serve is that it owns the address: only the MASTER has
//! the VIP on its interface, so only it answers ARP for it, and its gratuitous ARPs move the
//! segment's caches (clients, routers) to its MAC; a BACKUP or FAULT director has removed the
//! VIP, so no traffic for it arrives there.

pub mod config;
pub mod fsm;
pub mod net;
pub mod packet;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use self::{
    config::{Instance, Notify, Vip, VrrpConfig},
    fsm::{Action, Event, Fsm, Params, State},
    packet::{Advert, Expect, RxError},
};

/// How often interfaces are looked at for `track_interface` (and the instance's own).
const LINK_POLL: Duration = Duration::from_millis(200);
/// A notify command is killed after this long (keepalived's default script timeout).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters of one instance, for `lb-ctl status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub priority_zero_received: u64,
    pub priority_zero_sent: u64,
    /// Adverts whose address list differs from ours (accepted, as keepalived does).
    pub address_list_mismatch: u64,
    pub send_errors: u64,
    /// Refused packets by kind (`bad_ttl`, `bad_auth`, `bad_checksum`, …).
    pub errors: BTreeMap<&'static str, u64>,
}

/// One instance as `lb-ctl status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub state: State,
    pub interface: String,
    pub virtual_router_id: u8,
    pub version: u8,
    pub priority: u8,
    pub effective_priority: u8,
    /// The current master's address (ours when MASTER), if known.
    pub master: Option<Ipv4Addr>,
    pub master_priority: Option<u8>,
    pub transitions: u64,
    pub vips: Vec<String>,
    pub fault_reasons: Vec<String>,
    pub counters: Counters,
}

/// The running VRRP instances (a thread of their own). Dropping it without [`Ha::stop`] is
/// what SIGKILL does: nothing is released.
pub struct Ha {
    status: Arc<Mutex<Vec<InstanceStatus>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ha {
    /// Starts every instance; fails (and starts nothing) if an interface or socket is
    /// missing.
    pub fn start(cfg: VrrpConfig) -> anyhow::Result<Ha> {
        let status = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name("vrrp".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("vrrp runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Shell::new(cfg, shared).await {
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                        Ok(mut shell) => {
                            let _ = ready_tx.send(Ok(()));
                            shell.run(stop_rx).await;
                        }
                    }
                });
            })?;
        ready_rx
            .recv()
            .context("the VRRP thread died while starting")??;
        Ok(Ha {
            status,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn status(&self) -> Vec<InstanceStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A graceful stop: a MASTER sends priority 0 and removes its VIPs.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Per-instance state of the shell.
struct Inst {
    cfg: Instance,
    fsm: Fsm,
    /// (index, MAC) of each VIP's interface (a VIP may name another `dev`).
    vip_links: Vec<(u32, [u8; 6])>,
    sender: net::Sender,
    counters: Counters,
    /// The own interface's and each tracked interface's state, and each script's.
    fault_reasons: Vec<String>,
    /// When the second round of gratuitous ARPs is due.
    garp_again: Option<Instant>,
    group: Option<usize>,
}

struct ScriptState {
    cfg: config::Script,
    good: bool,
    streak: u32,
}

enum Input {
    Packet(usize, Vec<u8>),
    Script(usize, bool),
}

struct Shell {
    nl: rtnetlink::Handle,
    insts: Vec<Inst>,
    scripts: Vec<ScriptState>,
    groups: Vec<config::SyncGroup>,
    status: Arc<Mutex<Vec<InstanceStatus>>>,
    rx: mpsc::Receiver<Input>,
    epoch: Instant,
    /// Socket readers and script runners, aborted with the shell.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Shell {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Shell {
    async fn new(
        cfg: VrrpConfig,
        status: Arc<Mutex<Vec<InstanceStatus>>>,
    ) -> anyhow::Result<Shell> {
        let nl = net::netlink()?;
        let (tx, rx) = mpsc::channel(1024);
        let mut tasks = Vec::new();
        let mut insts = Vec::new();
        for (i, c) in cfg.instances.into_iter().enumerate() {
            let Resolved {
                vip_links,
                src,
                sender,
                receiver,
            } = resolve(&nl, &c).await?;
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    match receiver.recv(&mut buf).await {
                        Ok(n) => {
                            if tx.send(Input::Packet(i, buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            log::warn!("vrrp: receiving: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
            let fsm = Fsm::new(Params {
                version: c.version,
                priority: c.priority,
                adver_int_cs: c.adver_int_cs,
                initial_master: c.initial_master,
                nopreempt: c.nopreempt,
                preempt_delay: c.preempt_delay,
                addr: src,
            });
            let group = cfg
                .sync_groups
                .iter()
                .position(|g| g.group.contains(&c.name));
            insts.push(Inst {
                cfg: c,
                fsm,
                vip_links,
                sender,
                counters: Counters::default(),
                fault_reasons: Vec::new(),
                garp_again: None,
                group,
            });
        }
        let mut scripts = Vec::new();
        for (i, s) in cfg.scripts.into_iter().enumerate() {
            let tx = tx.clone();
            let cmd = s.script.clone();
            let (interval, timeout) = (s.interval, s.timeout);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    let ok = run_script(&cmd, timeout).await;
                    if tx.send(Input::Script(i, ok)).await.is_err() {
                        return;
                    }
                }
            }));
            // keepalived assumes a script good until it says otherwise (`init_fail` not set).
            scripts.push(ScriptState {
                cfg: s,
                good: true,
                streak: 0,
            });
        }
        let mut shell = Shell {
            nl,
            insts,
            scripts,
            groups: cfg.sync_groups,
            status,
            rx,
            epoch: Instant::now(),
            tasks,
        };
        // The VIPs belong to the instance: a BACKUP does not hold them, whoever added them
        // (keepalived removes them at start too).
        for i in 0..shell.insts.len() {
            shell.release(i).await;
        }
        Ok(shell)
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn run(&mut self, mut stop: oneshot::Receiver<()>) {
        self.poll_faults().await;
        for i in 0..self.insts.len() {
            self.event(i, Event::Start).await;
        }
        self.publish();
        let mut poll = tokio::time::interval(LINK_POLL);
        loop {
            let next = self
                .insts
                .iter()
                .filter_map(|i| i.fsm.deadline())
                .min()
                .map(|d| self.epoch + d);
            let garp = self.insts.iter().filter_map(|i| i.garp_again).min();
            let wake = [next, garp].into_iter().flatten().min();
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                _ = sleep => {
                    let now = self.now();
                    for i in 0..self.insts.len() {
                        if self.insts[i].fsm.deadline().is_some_and(|d| d <= now) {
                            self.event(i, Event::Timer).await;
                        }
                        if self.insts[i].garp_again.is_some_and(|t| t <= Instant::now()) {
                            self.insts[i].garp_again = None;
                            if self.insts[i].fsm.state == State::Master {
                                self.garp(i);
                            }
                        }
                    }
                }
                _ = poll.tick() => self.poll_faults().await,
                input = self.rx.recv() => match input {
                    Some(Input::Packet(i, pkt)) => self.packet(i, &pkt).await,
                    Some(Input::Script(s, ok)) => {
                        self.script_result(s, ok);
                        self.poll_faults().await;
                    }
                    None => break,
                },
            }
            self.publish();
        }
        for i in 0..self.insts.len() {
            self.event(i, Event::Shutdown).await;
        }
        self.publish();
        log::info!("vrrp: stopped");
    }

    fn script_result(&mut self, s: usize, ok: bool) {
        let st = &mut self.scripts[s];
        if ok == st.good {
            st.streak = 0;
            return;
        }
        st.streak += 1;
        let need = if ok { st.cfg.rise } else { st.cfg.fall };
        if st.streak >= need {
            st.good = ok;
            st.streak = 0;
            log::info!(
                "vrrp: script {} {}",
                st.cfg.name,
                if ok { "succeeded" } else { "failed" }
            );
        }
    }

    /// Re-evaluates every instance's fault (own interface, tracked interfaces, weight-0
    /// scripts, a sync group member's fault) and its priority (weighted scripts).
    async fn poll_faults(&mut self) {
        let mut own: Vec<Vec<String>> = Vec::new();
        for inst in &self.insts {
            let mut reasons = Vec::new();
            for iface in std::iter::once(&inst.cfg.interface).chain(&inst.cfg.track_interface) {
                if !net::link_up(&self.nl, iface).await {
                    reasons.push(format!("interface {iface} down"));
                }
            }
            for name in &inst.cfg.track_script {
                if let Some(s) = self.scripts.iter().find(|s| &s.cfg.name == name)
                    && s.cfg.weight == 0
                    && !s.good
                {
                    reasons.push(format!("script {name} failed"));
                }
            }
            own.push(reasons);
        }
        for i in 0..self.insts.len() {
            let mut reasons = own[i].clone();
            if let Some(g) = self.insts[i].group {
                for (j, other) in self.insts.iter().enumerate() {
                    if j != i && other.group == Some(g) && !own[j].is_empty() {
                        reasons.push(format!("sync group member {} in fault", other.cfg.name));
                    }
                }
            }
            let mut prio = i32::from(self.insts[i].cfg.priority);
            // keepalived ignores weights in a sync group (members with priorities moving
            // apart would pull the group both ways); only faults count there.
            let weighted = self.insts[i].group.is_none();
            for name in self.insts[i].cfg.track_script.iter().filter(|_| weighted) {
                if let Some(s) = self.scripts.iter().find(|s| &s.cfg.name == name) {
                    // keepalived: a positive weight is added while the script succeeds, a
                    // negative one while it fails.
                    if (s.cfg.weight > 0) == s.good && s.cfg.weight != 0 {
                        prio += s.cfg.weight;
                    }
                }
            }
            let prio = prio.clamp(1, 254) as u8;
            if prio != self.insts[i].fsm.priority {
                self.event(i, Event::Priority(prio)).await;
            }
            let was = !self.insts[i].fault_reasons.is_empty();
            let is = !reasons.is_empty();
            if is != was
                || (is
                    && self.insts[i].fsm.state != State::Fault
                    && self.insts[i].fsm.state != State::Init)
            {
                if is {
                    log::warn!(
                        "vrrp: {}: fault: {}",
                        self.insts[i].cfg.name,
                        reasons.join(", ")
                    );
                }
                self.insts[i].fault_reasons = reasons;
                self.event(i, Event::Fault(is)).await;
            } else {
                self.insts[i].fault_reasons = reasons;
            }
        }
    }

    async fn packet(&mut self, i: usize, pkt: &[u8]) {
        let inst = &mut self.insts[i];
        let want = Expect {
            version: inst.cfg.version,
            vrid: inst.cfg.vrid,
            auth: inst.cfg.auth,
            adver_int_cs: inst.cfg.adver_int_cs,
            unicast_peers: &inst.cfg.unicast_peer,
        };
        match packet::check(pkt, &want) {
            Err(e) => {
                *inst.counters.errors.entry(e.kind()).or_default() += 1;
                // Other routers' adverts are normal on a shared segment: not worth a log line.
                if e != RxError::WrongVrid {
                    log::debug!("vrrp: {}: refused a packet: {}", inst.cfg.name, e.kind());
                }
            }
            Ok(r) => {
                inst.counters.adverts_received += 1;
                if r.advert.priority == 0 {
                    inst.counters.priority_zero_received += 1;
                }
                let mut ours: Vec<Ipv4Addr> = inst.cfg.vips.iter().map(|v| v.addr).collect();
                let mut theirs = r.advert.addrs.clone();
                ours.sort();
                theirs.sort();
                if ours != theirs {
                    inst.counters.address_list_mismatch += 1;
                }
                self.event(
                    i,
                    Event::Advert {
                        src: r.src,
                        priority: r.advert.priority,
                        adver_int_cs: r.advert.adver_int_cs,
                    },
                )
                .await;
            }
        }
    }

    /// Feeds one event to instance `i`, carries out its actions, and moves its sync group
    /// along with a transition it made on its own.
    async fn event(&mut self, i: usize, ev: Event) {
        let before = self.insts[i].fsm.state;
        let forced = matches!(ev, Event::Force(_));
        let now = self.now();
        let actions = self.insts[i].fsm.handle(now, ev);
        self.execute(i, actions).await;
        let after = self.insts[i].fsm.state;
        if forced || before == after {
            return;
        }
        let Some(g) = self.insts[i].group else { return };
        let force = match (before, after) {
            (_, State::Master) => Some(State::Master),
            (State::Master, State::Backup) => Some(State::Backup),
            _ => None,
        };
        if let Some(to) = force {
            for j in 0..self.insts.len() {
                if j != i && self.insts[j].group == Some(g) {
                    let now = self.now();
                    let actions = self.insts[j].fsm.handle(now, Event::Force(to));
                    self.execute(j, actions).await;
                }
            }
        }
        self.group_notify(g);
    }

    async fn execute(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SendAdvert { priority } => self.send_advert(i, priority),
                Action::TakeVips => {
                    self.take(i).await;
                    self.garp(i);
                    let d = self.insts[i].cfg.garp_master_delay;
                    self.insts[i].garp_again = (d > Duration::ZERO).then(|| Instant::now() + d);
                }
                Action::ReleaseVips => {
                    self.insts[i].garp_again = None;
                    self.release(i).await;
                }
                Action::Entered(s) => {
                    let inst = &self.insts[i];
                    tracing::info!(
                        change = "vrrp_transition",
                        instance = %inst.cfg.name,
                        to = s.name(),
                        priority = inst.fsm.priority,
                        "vrrp: ({}) entering {} state (priority {})",
                        inst.cfg.name,
                        s.name(),
                        inst.fsm.priority,
                    );
                    notify(
                        &inst.cfg.notify,
                        "INSTANCE",
                        &inst.cfg.name,
                        s,
                        inst.fsm.priority,
                    );
                }
            }
        }
    }

    fn group_notify(&self, g: usize) {
        // A group's state is its members' once they agree (keepalived notifies then).
        let members: Vec<&Inst> = self.insts.iter().filter(|x| x.group == Some(g)).collect();
        let Some(first) = members.first() else { return };
        let s = first.fsm.state;
        if members.iter().all(|m| m.fsm.state == s) && s != State::Init {
            let grp = &self.groups[g];
            notify(&grp.notify, "GROUP", &grp.name, s, 0);
        }
    }

    fn send_advert(&mut self, i: usize, priority: u8) {
        let inst = &mut self.insts[i];
        let sender = &inst.sender;
        let advert = Advert {
            version: inst.cfg.version,
            vrid: inst.cfg.vrid,
            priority,
            adver_int_cs: inst.cfg.adver_int_cs,
            addrs: inst.cfg.vips.iter().map(|v| v.addr).collect(),
            auth: inst.cfg.auth,
        };
        let src = inst.fsm.params.addr;
        let dsts: Vec<Ipv4Addr> = if inst.cfg.unicast_peer.is_empty() {
            vec![packet::GROUP]
        } else {
            inst.cfg.unicast_peer.clone()
        };
        for dst in dsts {
            match sender.send(&advert.encode(src, dst), dst) {
                Ok(_) => {
                    inst.counters.adverts_sent += 1;
                    if priority == 0 {
                        inst.counters.priority_zero_sent += 1;
                    }
                }
                Err(e) => {
                    inst.counters.send_errors += 1;
                    log::debug!("vrrp: {}: sending an advert to {dst}: {e}", inst.cfg.name);
                }
            }
        }
    }

    async fn take(&mut self, i: usize) {
        let inst = &self.insts[i];
        for (v, (idx, _)) in inst.cfg.vips.iter().zip(&inst.vip_links) {
            if let Err(e) = net::add_vip(&self.nl, *idx, v).await {
                log::error!("vrrp: {}: {e:#}", inst.cfg.name);
            }
        }
    }

    async fn release(&mut self, i: usize) {
        let inst = &self.insts[i];
        for (v, (idx, _)) in inst.cfg.vips.iter().zip(&inst.vip_links) {
            match net::del_vip(&self.nl, *idx, v).await {
                Ok(true) => log::info!("vrrp: {}: removed {v}", inst.cfg.name),
                Ok(false) => {}
                Err(e) => log::error!("vrrp: {}: {e:#}", inst.cfg.name),
            }
        }
    }

    /// keepalived's `garp_master_repeat` gratuitous ARPs for every VIP.
    fn garp(&self, i: usize) {
        let inst = &self.insts[i];
        for (v, (idx, mac)) in inst.cfg.vips.iter().zip(&inst.vip_links) {
            // From the VIP's own interface, with its MAC: the one its ARP replies carry.
            if let Err(e) = net::send_garp(*idx, *mac, v.addr, inst.cfg.garp_master_repeat) {
                log::warn!(
                    "vrrp: {}: gratuitous ARP for {}: {e}",
                    inst.cfg.name,
                    v.addr
                );
            }
        }
    }

    fn publish(&self) {
        let v = self
            .insts
            .iter()
            .map(|i| InstanceStatus {
                name: i.cfg.name.clone(),
                state: i.fsm.state,
                interface: i.cfg.interface.clone(),
                virtual_router_id: i.cfg.vrid,
                version: i.cfg.version,
                priority: i.cfg.priority,
                effective_priority: i.fsm.priority,
                master: match i.fsm.state {
                    State::Master => Some(i.fsm.params.addr),
                    State::Backup => i.fsm.master.map(|m| m.0),
                    _ => None,
                },
                master_priority: match i.fsm.state {
                    State::Master => Some(i.fsm.priority),
                    State::Backup => i.fsm.master.map(|m| m.1),
                    _ => None,
                },
                transitions: i.fsm.transitions,
                vips: i.cfg.vips.iter().map(|v| v.to_string()).collect(),
                fault_reasons: i.fault_reasons.clone(),
                counters: i.counters.clone(),
            })
            .collect();
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// What an instance needs from the system: its VIPs' interfaces, its advert source, its
/// sockets.
struct Resolved {
    vip_links: Vec<(u32, [u8; 6])>,
    src: Ipv4Addr,
    sender: net::Sender,
    receiver: net::Receiver,
}

async fn resolve(nl: &rtnetlink::Handle, c: &Instance) -> anyhow::Result<Resolved> {
    let ctx = || format!("vrrp_instance {}", c.name);
    let (index, _) = net::link(nl, &c.interface).await.with_context(ctx)?;
    let mut vip_links = Vec::new();
    for v in &c.vips {
        let dev = v.dev.as_deref().unwrap_or(&c.interface);
        vip_links.push(net::link(nl, dev).await.with_context(ctx)?);
    }
    // Our address in adverts: unicast_src_ip, else the interface's primary address (not one
    // of the VIPs, which come and go).
    let addrs = net::addresses(nl, index).await.with_context(ctx)?;
    let src = c.unicast_src_ip.or_else(|| {
        addrs
            .iter()
            .map(|(a, _)| *a)
            .find(|a| !c.vips.iter().any(|v| v.addr == *a))
    });
    let Some(src) = src else {
        anyhow::bail!(
            "vrrp_instance {}: {} has no IPv4 address to send adverts from",
            c.name,
            c.interface
        );
    };
    let sender = net::Sender::new(&c.interface, src).with_context(ctx)?;
    let receiver =
        net::Receiver::new(&c.interface, index, c.unicast_peer.is_empty()).with_context(ctx)?;
    Ok(Resolved {
        vip_links,
        src,
        sender,
        receiver,
    })
}

/// Checks, before the daemon touches anything, that every instance can run: its interfaces
/// exist, it has an address to advertise from, its sockets open. Nothing is kept.
pub async fn preflight(cfg: &VrrpConfig) -> anyhow::Result<()> {
    if cfg.instances.is_empty() {
        return Ok(());
    }
    let nl = net::netlink()?;
    for c in &cfg.instances {
        resolve(&nl, c).await?;
    }
    Ok(())
}

/// Runs `sh -c script`; good when it exits 0 within `timeout` (killed otherwise).
async fn run_script(script: &str, timeout: Duration) -> bool {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return false };
    matches!(
        tokio::time::timeout(timeout, child.wait()).await,
        Ok(Ok(s)) if s.success()
    )
}

/// The commands keepalived runs on entering `state`: `notify_<state>` as written, and
/// `notify` with `INSTANCE|GROUP name state priority` appended.
pub fn notify_commands(
    n: &Notify,
    kind: &str,
    name: &str,
    state: State,
    priority: u8,
) -> Vec<String> {
    let mut out = Vec::new();
    let specific = match state {
        State::Master => &n.master,
        State::Backup => &n.backup,
        State::Fault => &n.fault,
        State::Init => &None,
    };
    if let Some(c) = specific {
        out.push(c.clone());
    }
    if let Some(c) = &n.any
        && state != State::Init
    {
        out.push(format!(
            "{c} {kind} {} {} {priority}",
            shell_quote(name),
            state.name()
        ));
    }
    out
}

fn notify(n: &Notify, kind: &str, name: &str, state: State, priority: u8) {
    for c in notify_commands(n, kind, name, state, priority) {
        crate::notify::run_command(&c, NOTIFY_TIMEOUT);
    }
}

/// Quotes a word for `sh` unless it needs none.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `[director] vips` without VRRP: added at start, removed at stop, only those this daemon
/// added (an address that was already there is left alone).
pub struct OwnedVips {
    added: Vec<(u32, Vip)>,
}

impl OwnedVips {
    pub async fn add(vips: &[Vip], default_iface: &str) -> anyhow::Result<OwnedVips> {
        let mut owned = OwnedVips { added: Vec::new() };
        if vips.is_empty() {
            return Ok(owned);
        }
        let nl = net::netlink()?;
        for v in vips {
            let dev = v.dev.as_deref().unwrap_or(default_iface);
            let (idx, mac) = net::link(&nl, dev).await?;
            if net::add_vip(&nl, idx, v).await? {
                log::info!("added {v} on {dev}");
                // Announce it, as the MASTER does: caches holding another MAC move here.
                let _ = net::send_garp(idx, mac, v.addr, 1);
                owned.added.push((idx, v.clone()));
            } else {
                log::info!("{v} was already on {dev}: left as it is, also at stop");
            }
        }
        Ok(owned)
    }

    pub async fn remove(self) {
        if self.added.is_empty() {
            return;
        }
        let Ok(nl) = net::netlink() else { return };
        for (idx, v) in self.added {
            match net::del_vip(&nl, idx, &v).await {
                Ok(_) => log::info!("removed {v}"),
                Err(e) => log::warn!("{e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_arguments_are_keepalived_s() {
        let n = Notify {
            master: Some("/bin/m.sh".into()),
            backup: None,
            fault: None,
            any: Some("/bin/n.sh".into()),
        };
        assert_eq!(
            notify_commands(&n, "INSTANCE", "VI_1", State::Master, 100),
            ["/bin/m.sh", "/bin/n.sh INSTANCE VI_1 MASTER 100"]
        );
        assert_eq!(
            notify_commands(&n, "GROUP", "my group", State::Fault, 0),
            ["/bin/n.sh GROUP 'my group' FAULT 0"]
        );
        assert!(notify_commands(&n, "INSTANCE", "VI_1", State::Init, 1).is_empty());
    }
}
