//! Loading the programs, adopting the maps a previous daemon pinned, attaching and detaching
//! interfaces, and the pin directory on bpffs.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::Ipv4Addr,
    path::Path,
    time::Instant,
};

use anyhow::{Context, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapInfo, ProgramArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Backend, Conn, FlowKey, LAYOUT_VERSION, PersistKey, PersistVal, RsConns, Service, Settings,
    Stats, SvcSlot, SweepStats, backend_flags, maps, progs, size, svc_flags,
};

use super::*;
use crate::model::{
    DestConfig, Forward, Model, Persistence, Protocol, SchedFlags, ServiceConfig, ServiceKey,
};

/// The balancer object, built by build.rs.
pub static BALANCER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The pass-through object, built by build.rs.
pub static PASS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-pass"));

/// Mounts bpffs at /sys/fs/bpf if it is not (a fresh boot leaves it unmounted).
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let bpf_mounts: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "bpf").then_some(at)
        })
        .collect();
    if bpf_mounts.iter().any(|m| dir.starts_with(m)) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        bail!(
            "{} is not on a bpf filesystem (mount one, or use a pin path under /sys/fs/bpf)",
            dir.display()
        );
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, kind) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    Ok(())
}

/// The map types, key and value sizes this build expects, to check pinned maps against.
pub(super) fn expected_layout(name: &str) -> (u32, u32) {
    use core::mem::size_of;
    let s = |k: usize, v: usize| (k as u32, v as u32);
    match name {
        maps::SVC_TABLE | maps::NAT_RS => s(4, size_of::<SvcSlot>()),
        maps::BACKENDS => s(4, size_of::<Backend>()),
        maps::SCHED_TABLE => s(4, 4),
        maps::SVC_CURSOR => s(4, 8),
        maps::CONNS => s(size_of::<FlowKey>(), size_of::<Conn>()),
        maps::EMBRYO => s(4, size_of::<lb_common::EmbryoSlot>()),
        maps::NAT_HOPS => s(size_of::<lb_common::Addr>(), size_of::<lb_common::NatHop>()),
        maps::SVC_STATS | maps::BACKEND_STATS => s(4, size_of::<Stats>()),
        maps::COUNTERS => s(4, 8),
        maps::SETTINGS => s(4, size_of::<Settings>()),
        maps::SVC_INFO => s(4, size_of::<Service>()),
        maps::RS_CONNS => s(4, size_of::<RsConns>()),
        maps::RS_NEW => s(4, 4),
        maps::PERSIST => s(size_of::<PersistKey>(), size_of::<PersistVal>()),
        maps::LBLC => s(
            size_of::<lb_common::LblcKey>(),
            size_of::<lb_common::LblcVal>(),
        ),
        maps::TIMEOUTS => s(4, 4),
        maps::SWEEP => s(4, size_of::<SweepStats>()),
        maps::PROGS => s(4, 4),
        other => unreachable!("no layout known for map {other}: add it here"),
    }
}

/// The layout version in the pinned settings under `map_dir`, if they are there and
/// readable (`Settings` has kept its size since layout 1, so any version reads).
pub fn pinned_layout(map_dir: &Path) -> Option<u32> {
    let data = MapData::from_pin(map_dir.join(maps::SETTINGS)).ok()?;
    let arr: Array<MapData, Settings> = Array::try_from(aya::maps::Map::Array(data)).ok()?;
    Some(arr.get(&0, 0).ok()?.layout_version)
}

pub(super) fn take<T>(bpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = bpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the balancer object"))?;
    T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
}

/// Loads the pass-through program and attaches it to `iface` (driver mode), pinning the link at
/// `pin` so it outlives this process; removing the pin detaches it.
pub fn attach_pass(iface: &str, pin: &Path) -> anyhow::Result<()> {
    if let Some(dir) = pin.parent() {
        ensure_bpffs(dir)?;
        fs::create_dir_all(dir)?;
    }
    let mut bpf = Ebpf::load(PASS_OBJ).context("loading the pass-through program")?;
    let prog: &mut Xdp = bpf
        .program_mut(progs::PASS)
        .ok_or_else(|| anyhow!("program {} missing", progs::PASS))?
        .try_into()?;
    prog.load()?;
    let id = prog
        .attach(iface, XdpMode::Driver)
        .with_context(|| format!("attaching XDP to {iface}"))?;
    let link = FdLink::try_from(prog.take_link(id)?)?;
    link.pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(())
}

impl Dataplane {
    /// Loads the balancer, adopting the maps pinned under `opts.pin_dir` if a previous daemon
    /// left them (after checking they have this build's layout), else creating and pinning
    /// fresh ones. Nothing is attached yet.
    pub fn open(opts: Options) -> anyhow::Result<Self> {
        ensure_bpffs(&opts.pin_dir)?;
        let map_dir = opts.pin_dir.join("maps");
        fs::create_dir_all(&map_dir).with_context(|| format!("creating {}", map_dir.display()))?;
        fs::create_dir_all(opts.pin_dir.join("links"))?;

        // A data path of an older layout is not adopted: say so in one line and start afresh
        // (its maps are unpinned; programs still attached keep using them until this
        // daemon's replace them). Layout 2 had no embryonic table; from 3 on, the pinned
        // settings say which layout they belong to.
        let pinned = pinned_layout(&map_dir);
        let old_layout = match pinned {
            Some(v) => v < LAYOUT_VERSION,
            None => map_dir.join(maps::CONNS).exists(),
        };
        if old_layout {
            log::warn!(
                "the pinned data path under {} has an older layout ({}, this lb-ctl writes {}): \
                 starting afresh, its connections are not adopted",
                opts.pin_dir.display(),
                pinned.map_or_else(|| "before 3".to_string(), |v| v.to_string()),
                LAYOUT_VERSION
            );
            for name in maps::ALL {
                let _ = fs::remove_file(map_dir.join(name));
            }
        }
        let mut adopted = false;
        let mut conn_table_size = opts.conn_table_size;
        // A power of two of slots: the data path finds a key's slot by masking its hash.
        let mut embryo_table_size = lb_common::embryo::slots(match opts.embryo_table_size {
            0 => (opts.conn_table_size / size::EMBRYO_DIVISOR).max(size::MIN_EMBRYO),
            n => n,
        });
        let mut sched_table_size = opts.sched_table_size;
        for name in maps::ALL {
            let pin = map_dir.join(name);
            if !pin.exists() {
                continue;
            }
            adopted = true;
            let info = MapInfo::from_pin(&pin)
                .with_context(|| format!("reading pinned map {}", pin.display()))?;
            let (k, v) = expected_layout(name);
            if info.key_size() != k || info.value_size() != v {
                bail!(
                    "the pinned map {} has key/value sizes {}/{} but this lb-ctl expects {k}/{v}: \
                     it was made by an incompatible version; stop that data path \
                     (`lb-ctl stop`, or remove {}) to start afresh",
                    pin.display(),
                    info.key_size(),
                    info.value_size(),
                    opts.pin_dir.display()
                );
            }
            if name == maps::CONNS && info.max_entries() != opts.conn_table_size {
                log::warn!(
                    "keeping the pinned connection table's size {} (asked for {}): resizing \
                     would drop every connection",
                    info.max_entries(),
                    opts.conn_table_size
                );
                conn_table_size = info.max_entries();
            }
            if name == maps::SCHED_TABLE {
                sched_table_size = info.max_entries();
            }
            // aya reuses a pinned map whatever its size: a counter array pinned by an older
            // lb-ctl keeps its length, and the counters added since are not kept (they read
            // 0). Forwarding and the connections are unaffected, so say so and go on rather
            // than refuse to adopt.
            if name == maps::COUNTERS && info.max_entries() < lb_common::cnt::MAX {
                log::warn!(
                    "the pinned counter map holds {} counters, this lb-ctl has {}: the newer \
                     ones read 0 until the data path is started afresh",
                    info.max_entries(),
                    lb_common::cnt::MAX
                );
            }
            if name == maps::EMBRYO {
                // Adopted with its embryos: the programs must mask hashes by its size.
                embryo_table_size = info.max_entries();
            }
        }

        let mut loader = EbpfLoader::new();
        for name in maps::ALL {
            loader.map_pin_path(name, map_dir.join(name));
        }
        loader.map_max_entries(maps::CONNS, conn_table_size);
        loader.map_max_entries(maps::SCHED_TABLE, sched_table_size);
        loader.map_max_entries(maps::PERSIST, opts.persist_table_size);
        loader.map_max_entries(maps::EMBRYO, embryo_table_size);
        // Read-only data of the programs: the verifier sees the mask as a constant.
        let embryo_mask = embryo_table_size - 1;
        loader.override_global("EMBRYO_MASK", &embryo_mask, true);
        let mut bpf = loader
            .load(BALANCER_OBJ)
            .context("loading the balancer's maps and programs")?;
        let prog: &mut Xdp = bpf
            .program_mut(progs::BALANCER)
            .ok_or_else(|| anyhow!("program {} missing", progs::BALANCER))?
            .try_into()?;
        prog.load()
            .context("the kernel refused the balancer program")?;
        let prog_pin = opts.pin_dir.join(format!("prog_{}", progs::BALANCER));
        let _ = fs::remove_file(&prog_pin);
        prog.pin(&prog_pin)
            .with_context(|| format!("pinning the program at {}", prog_pin.display()))?;

        // lb_xdp tail-calls lb_new for a packet that opens a connection (lb_new schedules,
        // records and forwards it). It goes into the (pinned) program array before lb_xdp is
        // attached. A data path still attached from before switches to the new lb_new at
        // once; its old lb_xdp does not fill the new lb_new's hand-over slot, so until the
        // new lb_xdp is attached a moment later new connections' first packets are dropped
        // (`drop_internal`; the client retransmits), established ones are unaffected.
        let new_prog: &mut Xdp = bpf
            .program_mut(progs::NEW)
            .ok_or_else(|| anyhow!("program {} missing", progs::NEW))?
            .try_into()?;
        new_prog
            .load()
            .context("the kernel refused the new-connection program")?;
        let new_fd = new_prog.fd()?.try_clone()?;
        let mut prog_array: ProgramArray<MapData> = take(&mut bpf, maps::PROGS)?;
        prog_array
            .set(lb_common::prog_index::NEW, &new_fd, 0)
            .context("filling the program array")?;
        // IPv6: lb_xdp tail-calls lb_xdp6 for every IPv6 frame, which tail-calls lb_new6
        // for a packet that opens a connection; both in place before lb_xdp is attached.
        for (name, slot) in [
            (progs::BALANCER6, lb_common::prog_index::XDP6),
            (progs::NEW6, lb_common::prog_index::NEW6),
        ] {
            let p: &mut Xdp = bpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            p.load()
                .with_context(|| format!("the kernel refused the program {name}"))?;
            let fd = p.fd()?.try_clone()?;
            prog_array
                .set(slot, &fd, 0)
                .context("filling the program array")?;
        }
        // An older lb-ctl's lb_resume, if adopted: nothing calls it any more.
        let _ = prog_array.clear_index(&lb_common::prog_index::UNUSED_RESUME);

        let sweep_prog: &mut Xdp = bpf
            .program_mut(progs::SWEEP)
            .ok_or_else(|| anyhow!("program {} missing", progs::SWEEP))?
            .try_into()?;
        sweep_prog
            .load()
            .context("the kernel refused the sweep program")?;
        let mut maps = Maps {
            svc_info: take(&mut bpf, maps::SVC_INFO)?,
            rs_conns: take(&mut bpf, maps::RS_CONNS)?,
            rs_new: take(&mut bpf, maps::RS_NEW)?,
            persist: take(&mut bpf, maps::PERSIST)?,
            timeouts: take(&mut bpf, maps::TIMEOUTS)?,
            sweep: take(&mut bpf, maps::SWEEP)?,
            backends: take(&mut bpf, maps::BACKENDS)?,
            sched_table: take(&mut bpf, maps::SCHED_TABLE)?,
            cursor: take(&mut bpf, maps::SVC_CURSOR)?,
            conns: take(&mut bpf, maps::CONNS)?,
            embryo: take(&mut bpf, maps::EMBRYO)?,
            sweep_keys: take(&mut bpf, maps::SWEEP_KEYS)?,
            rs_tally: take(&mut bpf, maps::RS_TALLY)?,
            svc_stats: take(&mut bpf, maps::SVC_STATS)?,
            backend_stats: take(&mut bpf, maps::BACKEND_STATS)?,
            counters: take(&mut bpf, maps::COUNTERS)?,
            settings: take(&mut bpf, maps::SETTINGS)?,
            _progs: prog_array,
        };
        let mut settings = maps.settings.get(&0, 0)?;
        if adopted && settings.layout_version != LAYOUT_VERSION {
            bail!(
                "the pinned maps under {} have layout version {} but this lb-ctl writes {}: \
                 stop that data path (`lb-ctl stop`) to start afresh",
                opts.pin_dir.display(),
                settings.layout_version,
                LAYOUT_VERSION
            );
        }
        settings.layout_version = LAYOUT_VERSION;
        settings.svc_half &= 1;
        maps.settings.set(0, settings, 0)?;
        if !adopted {
            // IPVS's default timeouts until the daemon sets its own.
            let d = StateTimeouts::default();
            for (i, v) in d.tcp.iter().enumerate() {
                maps.timeouts.set(i as u32, *v, 0)?;
            }
            maps.timeouts.set(lb_common::TIMEOUT_UDP, d.udp, 0)?;
        }
        // Not pinned: each loaded data path writes a ring of its own.
        let sync_ring = match bpf.take_map(maps::SYNC_EVENTS) {
            Some(aya::maps::Map::RingBuf(data)) => Some(data),
            _ => None,
        };
        let svc_table =
            ProbeTable::open(take(&mut bpf, maps::SVC_TABLE)?, size::SVC_SLOTS, adopted)?;
        let nat_rs = ProbeTable::open(take(&mut bpf, maps::NAT_RS)?, size::NAT_RS_SLOTS, adopted)?;

        let state = State::new(size::MAX_SERVICES, size::MAX_BACKENDS, sched_table_size);
        let mut dp = Self {
            bpf,
            maps,
            opts,
            links: BTreeMap::new(),
            state,
            conn_table_size,
            embryo_table_size,
            adopted,
            settings,
            svc_table,
            nat_rs,
            half_retired_at: Instant::now() - SVC_HALF_GRACE,
            clock_at: Instant::now(),
            settings_lock: Default::default(),
            sync_ring,
            sync_reader: Default::default(),
        };
        if adopted {
            dp.adopt()
                .context("reading the table back from the pinned maps")?;
        } else {
            // An adopted table has them already (or gets them from the first sweep pass).
            dp.put_fillers().context("filling the empty tables")?;
        }
        Ok(dp)
    }

    /// Whether the maps (and so the table and connections) came from a previous daemon.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn conn_table_size(&self) -> u32 {
        self.conn_table_size
    }

    /// Entries of the embryonic-connection table.
    pub fn embryo_table_size(&self) -> u32 {
        self.embryo_table_size
    }

    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }

    /// Rebuilds the control plane's view from the maps a previous daemon filled.
    pub(super) fn adopt(&mut self) -> anyhow::Result<()> {
        let mut by_id = HashMap::new();
        let live = self.svc_table.halves[self.settings.svc_half as usize & 1].clone();
        for slot in live.iter().filter(|s| s.svc.id != 0) {
            let (k, v) = (slot.key, slot.svc);
            let (Some(proto), Some(scheduler)) = (proto_of(k.proto), sched_of(v.sched)) else {
                log::warn!("ignoring a pinned service entry with unknown protocol/scheduler");
                continue;
            };
            let key = ServiceKey {
                proto,
                addr: ip_of(k.addr),
                port: u16::from_be(k.port),
            };
            // The region holds the scheduler's table, then the members.
            let region = Region {
                off: v.table_off,
                len: v.table_len + v.members_len,
            };
            if !self.state.regions.take(region) {
                bail!("service {key}: its scheduling table overlaps another's");
            }
            self.state.svc_ids.take(v.id);
            let mut table = Vec::with_capacity(region.len as usize);
            for slot in region.off..region.off + region.len {
                table.push(self.maps.sched_table.get(&slot, 0)?);
            }
            by_id.insert(v.id, key);
            self.state.services.insert(
                key,
                SvcState {
                    id: v.id,
                    config: ServiceConfig {
                        key,
                        scheduler,
                        sched_flags: SchedFlags(u32::from(v.sched_flags) << 3),
                        persistence: (v.flags & svc_flags::PERSISTENT != 0).then(|| Persistence {
                            timeout: v.persist_timeout,
                            netmask: plan::netmask_of(&key, &v),
                        }),
                        ops: v.flags & svc_flags::ONE_PACKET != 0,
                        tunnel_source: None,
                    },
                    members: Vec::new(),
                    region,
                    table,
                    table_len: v.table_len,
                    built_from: None,
                },
            );
        }
        let now = Instant::now();
        for id in 1..size::MAX_BACKENDS {
            let b = self.maps.backends.get(&id, 0)?;
            if b.svc_id == 0 {
                continue;
            }
            self.state.be_ids.take(id);
            let svc = by_id.get(&b.svc_id).copied();
            let forward = forward_of(b.fwd).unwrap_or(Forward::Dr);
            let dest = DestConfig {
                addr: ip_of(b.addr),
                port: u16::from_be(b.port),
                forward,
                weight: b.weight,
                u_threshold: b.u_threshold,
                l_threshold: b.l_threshold,
            };
            let available = b.flags & backend_flags::AVAILABLE != 0;
            let Some(svc) = svc else {
                // Its service is gone: keep the id in the trash until its connections are.
                self.state.backends.insert(
                    id,
                    BeState {
                        svc: ServiceKey {
                            proto: Protocol::Tcp,
                            addr: Ipv4Addr::UNSPECIFIED.into(),
                            port: 0,
                        },
                        dest,
                        trashed_at: Some(now),
                        written: b,
                    },
                );
                continue;
            };
            self.state.backends.insert(
                id,
                BeState {
                    svc,
                    dest,
                    trashed_at: (!available).then_some(now),
                    written: b,
                },
            );
        }
        // The members in IPVS list order, as the table region recorded them.
        for s in self.state.services.values_mut() {
            for id in s.table[s.table_len as usize..].iter() {
                if let Some(b) = self.state.backends.get(id)
                    && b.trashed_at.is_none()
                {
                    s.members.push(((b.dest.addr, b.dest.port), *id));
                }
            }
            // The tunnel source its TUN backends were given is kept as the service's own, so
            // a restart without a config file changes nothing.
            let mut sources: Vec<lb_common::Addr> = s
                .members
                .iter()
                .filter_map(|(_, id)| self.state.backends.get(id))
                .filter(|b| b.dest.forward == Forward::Tun)
                .map(|b| b.written.tun_src)
                .collect();
            sources.dedup();
            if let [one] = sources[..] {
                s.config.tunnel_source = Some(ip_of(one));
            }
        }
        self.trash_orphans(now);
        Ok(())
    }

    /// The table as the data path has it (after `open` on adopted maps: what the previous
    /// daemon left).
    pub fn model(&self) -> Model {
        let mut m = Model::default();
        for (k, s) in &self.state.services {
            let mut dests: Vec<DestConfig> = s
                .members
                .iter()
                .filter_map(|(_, id)| self.state.backends.get(id).map(|b| b.dest))
                .collect();
            // The model lists destinations in the order they were added.
            dests.reverse();
            m.services.insert(
                *k,
                crate::model::ServiceEntry {
                    config: s.config,
                    dests,
                },
            );
        }
        m
    }

    /// Attaches the balancer to `iface`: takes over the pinned link a previous daemon left
    /// there (atomic program replacement, no packet sees an empty hook), else attaches anew.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> anyhow::Result<()> {
        let pin = self.opts.pin_dir.join("links").join(iface);
        let prog: &mut Xdp = self
            .bpf
            .program_mut(progs::BALANCER)
            .ok_or_else(|| anyhow!("program {} missing", progs::BALANCER))?
            .try_into()?;
        let mut link_id = None;
        if pin.exists() {
            match PinnedLink::from_pin(&pin) {
                Ok(pinned) => {
                    let fd_link = pinned.unpin().context("unpinning the previous link")?;
                    match XdpLink::try_from(fd_link) {
                        Ok(l) => match prog.attach_to_link(l) {
                            Ok(id) => link_id = Some(id),
                            Err(e) => log::warn!("{iface}: could not take over the old link: {e}"),
                        },
                        Err(e) => log::warn!("{iface}: pinned link is not an XDP link: {e}"),
                    }
                }
                Err(e) => {
                    log::warn!("{iface}: stale link pin {} ({e}); removing", pin.display());
                    let _ = fs::remove_file(&pin);
                }
            }
        }
        let link_id = match link_id {
            Some(id) => id,
            None => prog
                .attach(iface, mode)
                .with_context(|| format!("attaching XDP ({mode:?}) to {iface}"))?,
        };
        let link = prog.take_link(link_id)?;
        let fd_link = FdLink::try_from(link).map_err(|e| {
            anyhow!("{iface}: the kernel attached XDP without a bpf_link ({e}); cannot pin it")
        })?;
        let pinned = fd_link
            .pin(&pin)
            .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
        self.links.insert(iface.to_string(), pinned);
        Ok(())
    }

    /// Detaches interfaces a previous daemon attached that are not in `keep`.
    pub fn detach_others(&mut self, keep: &[String]) -> anyhow::Result<Vec<String>> {
        let dir = self.opts.pin_dir.join("links");
        let mut gone = Vec::new();
        for e in fs::read_dir(&dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || self.links.contains_key(&name) {
                continue;
            }
            if let Ok(p) = PinnedLink::from_pin(dir.join(&name)) {
                drop(p.unpin()?);
            } else {
                let _ = fs::remove_file(dir.join(&name));
            }
            gone.push(name);
        }
        Ok(gone)
    }

    /// Stops: with `keep`, leaves programs attached and maps pinned (traffic keeps flowing,
    /// the next daemon adopts it all); else detaches everything and removes every pin.
    pub fn shutdown(mut self, keep: bool) -> anyhow::Result<()> {
        if keep {
            // Dropping a PinnedLink closes our fd; the pin keeps the link (and program) alive.
            return Ok(());
        }
        for (iface, pinned) in std::mem::take(&mut self.links) {
            match pinned.unpin() {
                Ok(link) => drop(link),
                Err(e) => log::warn!("{iface}: unpinning the XDP link: {e}"),
            }
        }
        let dir = self.opts.pin_dir.clone();
        drop(self);
        let _ = fs::remove_file(dir.join(format!("prog_{}", progs::BALANCER)));
        for name in maps::ALL {
            let _ = fs::remove_file(dir.join("maps").join(name));
        }
        for sub in ["maps", "links", ""] {
            let _ = fs::remove_dir(dir.join(sub));
        }
        Ok(())
    }

    /// How many instructions the verifier walked to accept each loaded program (its limit
    /// is 1,000,000): the headroom left for data-path code.
    pub fn verified_insns(&self) -> Vec<(&'static str, u32)> {
        [
            progs::BALANCER,
            progs::NEW,
            progs::SWEEP,
            progs::BALANCER6,
            progs::NEW6,
        ]
        .into_iter()
        .filter_map(|name| {
            let prog: &Xdp = self.bpf.program(name)?.try_into().ok()?;
            let n = prog.info().ok()?.verified_instruction_count()?;
            Some((name, n))
        })
        .collect()
    }

    /// The balancer program (for `BPF_PROG_TEST_RUN` through aya's `TestRun`).
    pub fn program(&self) -> anyhow::Result<&Xdp> {
        let p: &Xdp = self
            .bpf
            .program(progs::BALANCER)
            .ok_or_else(|| anyhow!("program {} missing", progs::BALANCER))?
            .try_into()?;
        Ok(p)
    }

    /// The balancer program's file descriptor.
    pub fn program_fd(&self) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        let p: &Xdp = self
            .bpf
            .program(progs::BALANCER)
            .ok_or_else(|| anyhow!("program {} missing", progs::BALANCER))?
            .try_into()?;
        Ok(p.fd()?.as_fd())
    }

    /// Interfaces the balancer is attached to.
    pub fn interfaces(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// The kernel's own accounting of each pinned map's memory in bytes: the `memlock:` line
    /// of the map's `/proc/self/fdinfo` entry, which `bpftool map show` prints too. The hash
    /// maps are preallocated, so this is what they take whether full or empty.
    pub fn map_memory(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        use std::os::fd::{AsFd, AsRawFd};
        maps::ALL
            .iter()
            .map(|&name| {
                let pin = self.opts.pin_dir.join("maps").join(name);
                let map = MapData::from_pin(&pin)
                    .with_context(|| format!("opening the pinned map {}", pin.display()))?;
                let fdinfo = format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd());
                let text =
                    fs::read_to_string(&fdinfo).with_context(|| format!("reading {fdinfo}"))?;
                let bytes = text
                    .lines()
                    .find_map(|l| l.strip_prefix("memlock:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| anyhow!("{fdinfo} ({name}) has no memlock line"))?;
                Ok((name, bytes))
            })
            .collect()
    }
}

impl Dataplane {
    /// After adoption: a backend that no live service lists is trashed (its id is reclaimed
    /// once no connection uses it). A daemon killed in the middle of a sync leaves such
    /// backends: it writes new and edited backends before the service table flips, and stops
    /// deleted ones after; only the live half of the service table says which count.
    fn trash_orphans(&mut self, now: Instant) {
        let listed: std::collections::HashSet<u32> = self
            .state
            .services
            .values()
            .flat_map(|s| s.members.iter().map(|(_, id)| *id))
            .collect();
        let mut n = 0;
        for (id, b) in self.state.backends.iter_mut() {
            if b.trashed_at.is_none() && !listed.contains(id) {
                b.trashed_at = Some(now);
                n += 1;
            }
        }
        if n > 0 {
            log::info!("adoption: {n} real server entries no live service lists, trashed");
        }
    }

    /// The Maglev table size the adopted mh services were built with (none: `None`).
    pub fn adopted_mh_table_size(&self) -> Option<u32> {
        self.state
            .services
            .values()
            .filter(|s| s.config.scheduler == Scheduler::Mh && s.table_len > 0)
            .map(|s| s.table_len)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_known_layout() {
        for name in maps::ALL {
            let (k, v) = expected_layout(name);
            assert!(k > 0 && v > 0, "{name}");
        }
    }
}
