//! Connection sync, the data path's half: reading the events a MASTER's data path writes
//! (`SyncEvents`), installing what a BACKUP receives (`SyncInstaller`), and the switches
//! (`set_sync_master`, the refresh period, `sloppy_tcp`). Both sides speak `sync::SyncConn`
//! only; the protocol half (messages, sockets, roles) never touches a map.
//!
//! Backend ids are the data path's own and are reused, and a BACKUP has ids of its own: so
//! neither side keeps a copy of the id ↔ address mapping. The reader resolves an event's
//! backend from `LB_BACKENDS` as it reads it and checks that the entry still belongs to the
//! event's service (an id freed and given to another service is caught; a deleted server's
//! id stays in the trash for seconds, far longer than an event waits in the ring). The
//! installer finds the local service in the live half of `LB_SVC_TABLE` and its real server
//! among the service's members, as the data path itself would. Both read the pinned maps
//! through handles of their own, so each can live on its own thread, and both stay right
//! across reloads, CLI edits and an adopting daemon without being told.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, RawFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, RingBuf};
use lb_common::{
    Addr, Backend, Conn, FlowKey, PersistKey, PersistVal, Service, Settings, SvcKey, SvcSlot,
    SyncEvent, conn_flags as cf, fwd, maps, probe_home, proto, settings_flags, size, sync_event,
    sync_stamp, tcp_state, udp_state,
};

use super::Dataplane;
use crate::sync::{SyncConn, conn_flags};

const NS: u64 = 1_000_000_000;

/// How long `SyncEvents::next_batch` sleeps at most before it looks at the ring again: the
/// data path wakes it once per 256 events, so a trickle waits up to this (IPVS's own sync
/// send delay is 20 ms).
pub const POLL_SLICE: Duration = Duration::from_millis(20);

/// Opens a pinned map of the data path under `pin_dir` through a handle of its own.
fn pinned<T>(pin_dir: &Path, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let pin = pin_dir.join("maps").join(name);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let map = match name {
        maps::CONNS | maps::PERSIST => Map::LruHashMap(data),
        _ => Map::Array(data),
    };
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// An address of a map as an `IpAddr` (IPv4-mapped ones as IPv4).
pub fn ip_of(a: Addr) -> IpAddr {
    if a.is_v4() {
        IpAddr::V4(Ipv4Addr::from(a.as_v4().to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in a.w.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// An `IpAddr` as the maps hold it.
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => Addr::v4(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            Addr {
                w: [w(0), w(4), w(8), w(12)],
            }
        }
    }
}

/// IPVS's forwarding-method bits of a backend's `fwd`.
fn fwd_flags(code: u8) -> u32 {
    match code {
        fwd::NAT => conn_flags::MASQ,
        fwd::TUN => conn_flags::TUNNEL,
        _ => conn_flags::DROUTE,
    }
}

/// Reads the sync events of this data path (see `Dataplane::sync_events`).
///
/// Blocking: `next_batch` waits on the ring buffer's descriptor with `poll(2)` for at most
/// its timeout, so it belongs on a thread of its own (a std thread, or tokio's
/// `spawn_blocking`). `as_raw_fd` is the ring's descriptor, for a caller that would rather
/// poll it itself (`tokio::io::unix::AsyncFd`) and then call `next_batch` with a zero
/// timeout: the data path signals it once per 256 events only (each wake-up costs the
/// packet that makes it an interrupt), so such a caller must also look every `POLL_SLICE`. One reader at a time: a second `sync_events` while this
/// one lives is refused (the ring has one consumer position).
pub struct SyncEvents {
    ring: RingBuf<MapData>,
    backends: Array<MapData, Backend>,
    timeouts: Array<MapData, u32>,
    svc_info: Array<MapData, Service>,
    busy: Arc<AtomicBool>,
    /// Events read and translated, and events dropped as stale (their backend id no longer
    /// belongs to their service).
    pub read: u64,
    pub stale: u64,
}

// SAFETY: `RingBuf` holds raw pointers to its own mmap of the ring (consumer and producer
// pages), which belong to the map's descriptor, not to a thread; `SyncEvents` owns them
// alone and only `&mut self` methods touch them, so moving it to another thread is sound.
unsafe impl Send for SyncEvents {}

impl Drop for SyncEvents {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Release);
    }
}

impl AsRawFd for SyncEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl SyncEvents {
    /// Up to `max` events as `SyncConn`s, in the order the data path wrote them: what is
    /// waiting, else what arrives within `timeout` (an empty batch when nothing does).
    pub fn next_batch(&mut self, max: usize, timeout: Duration) -> anyhow::Result<Vec<SyncConn>> {
        let deadline = Instant::now() + timeout;
        let mut raw = Vec::new();
        loop {
            while raw.len() < max {
                let Some(item) = self.ring.next() else { break };
                if item.len() >= size_of::<SyncEvent>() {
                    // SAFETY: the data path writes whole `SyncEvent`s (plain integers); the
                    // read is unaligned-safe.
                    raw.push(unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<SyncEvent>())
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !raw.is_empty() || left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // The data path wakes the reader only per batch of events (`sync.rs`, `emit`):
            // look at the ring at least every `POLL_SLICE` for a trickle below that.
            let ms = left.min(POLL_SLICE).as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the call's duration.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e).context("waiting for sync events");
                }
            }
        }
        let mut cache = Cache::default();
        let mut out = Vec::with_capacity(raw.len());
        for ev in &raw {
            match self.translate(ev, &mut cache) {
                Some(c) => out.push(c),
                None => self.stale += 1,
            }
        }
        self.read += out.len() as u64;
        Ok(out)
    }

    fn translate(&self, ev: &SyncEvent, cache: &mut Cache) -> Option<SyncConn> {
        let be = *cache
            .backends
            .entry(ev.backend)
            .or_insert_with(|| self.backends.get(&ev.backend, 0).ok());
        let be = be.filter(|b| b.svc_id != 0 && b.svc_id == ev.svc_id)?;
        let k = &ev.key;
        if ev.kind == sync_event::TEMPLATE {
            let svc = *cache
                .services
                .entry(ev.svc_id)
                .or_insert_with(|| self.svc_info.get(&ev.svc_id, 0).ok());
            let svc = svc.filter(|s| s.id == ev.svc_id)?;
            return Some(SyncConn {
                protocol: k.proto,
                flags: conn_flags::TEMPLATE | fwd_flags(be.fwd),
                state: 0,
                cport: 0,
                vport: u16::from_be(be.vport),
                dport: u16::from_be(be.port),
                fwmark: 0,
                timeout: svc.persist_timeout,
                caddr: ip_of(k.saddr),
                vaddr: ip_of(be.vaddr),
                daddr: ip_of(be.addr),
            });
        }
        let tcp = k.proto == proto::TCP;
        let idx = if tcp {
            u32::from(ev.state)
        } else {
            lb_common::TIMEOUT_UDP
        };
        let timeout = *cache
            .timeouts
            .entry(idx)
            .or_insert_with(|| self.timeouts.get(&idx, 0).unwrap_or(0));
        let mut flags = fwd_flags(be.fwd);
        if ev.flags & cf::NO_OUTPUT != 0 {
            flags |= conn_flags::NOOUTPUT;
        }
        // IPVS marks what it counts as InActConn: UDP, and TCP outside the active states.
        let active = tcp && tcp_state::ACTIVE.get(ev.state as usize) == Some(&true);
        if !active {
            flags |= conn_flags::INACTIVE;
        }
        Some(SyncConn {
            protocol: k.proto,
            flags,
            state: if tcp {
                u16::from(ev.state)
            } else {
                u16::from(udp_state::NORMAL)
            },
            cport: u16::from_be(k.sport),
            vport: u16::from_be(k.dport),
            dport: u16::from_be(be.port),
            fwmark: 0,
            timeout,
            caddr: ip_of(k.saddr),
            vaddr: ip_of(k.daddr),
            daddr: ip_of(be.addr),
        })
    }
}

/// What one batch read once (events come in bursts for the same few backends).
#[derive(Default)]
struct Cache {
    backends: HashMap<u32, Option<Backend>>,
    services: HashMap<u32, Option<Service>>,
    timeouts: HashMap<u32, u32>,
}

/// What `SyncInstaller::install` did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// New entries written (connections and templates).
    pub installed: u64,
    /// Existing entries given the MASTER's state, timeout or real server.
    pub updated: u64,
    /// Left as they were: this director is MASTER itself (its own data path decides), or an
    /// INACTIVE message about a connection already on another real server (IPVS ignores it
    /// as the expiry of a connection that was replaced).
    pub kept: u64,
    /// No local service (vaddr, vport, protocol); for a template also a local service that
    /// is not persistent.
    pub no_service: u64,
    /// The service has no real server (daddr, dport).
    pub no_real_server: u64,
    /// Client, virtual and real addresses not of one family.
    pub wrong_family: u64,
    /// Not a protocol or state the data path knows (or a firewall-mark service).
    pub invalid: u64,
    /// The map refused the write (full and unable to evict, or gone).
    pub refused: u64,
    /// NAT: the reply tuple belongs to another live connection; its replies go to the stack.
    pub reply_clash: u64,
}

impl std::ops::AddAssign for InstallReport {
    fn add_assign(&mut self, o: Self) {
        self.installed += o.installed;
        self.updated += o.updated;
        self.kept += o.kept;
        self.no_service += o.no_service;
        self.no_real_server += o.no_real_server;
        self.wrong_family += o.wrong_family;
        self.invalid += o.invalid;
        self.refused += o.refused;
        self.reply_clash += o.reply_clash;
    }
}

/// Installs connections and templates a BACKUP receives (see `Dataplane::sync_installer`).
pub struct SyncInstaller {
    svc_table: Array<MapData, SvcSlot>,
    settings: Array<MapData, Settings>,
    sched_table: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    timeouts: Array<MapData, u32>,
    conns: BpfHashMap<MapData, FlowKey, Conn>,
    persist: BpfHashMap<MapData, PersistKey, PersistVal>,
}

/// The local service and real server a message names.
#[derive(Clone, Copy)]
struct Target {
    svc: Service,
    backend: u32,
    be: Backend,
}

impl SyncInstaller {
    /// Installs `batch`: each connection into the connection table with the MASTER's state,
    /// to expire `timeout` seconds from now (at most the local timeout of its state), a NAT
    /// connection with its reply entry; each template into the persistence table. Entries
    /// this director's data path recorded while it is MASTER are not touched. Never fails as
    /// a whole: what cannot be installed is counted in the report.
    pub fn install(&mut self, batch: &[SyncConn]) -> InstallReport {
        let mut r = InstallReport::default();
        let settings = match self.settings.get(&0, 0) {
            Ok(s) => s,
            Err(_) => {
                r.refused = batch.len() as u64;
                return r;
            }
        };
        let master = settings.flags & settings_flags::SYNC_MASTER != 0;
        let mut targets: HashMap<(Addr, u16, u8, Addr, u16), Option<Target>> = HashMap::new();
        let mut timeouts: HashMap<u32, u32> = HashMap::new();
        for c in batch {
            let fam = |a: &IpAddr| a.is_ipv4();
            if fam(&c.caddr) != fam(&c.vaddr) || fam(&c.vaddr) != fam(&c.daddr) {
                r.wrong_family += 1;
                continue;
            }
            let tcp = c.protocol == proto::TCP;
            if c.fwmark != 0
                || !(tcp || c.protocol == proto::UDP)
                || (tcp && !c.is_template() && c.state as usize >= tcp_state::COUNT)
            {
                r.invalid += 1;
                continue;
            }
            let (vaddr, daddr) = (addr_of(c.vaddr), addr_of(c.daddr));
            let tk = (vaddr, c.vport, c.protocol, daddr, c.dport);
            let target = match targets.get(&tk) {
                Some(t) => *t,
                None => {
                    let t = self.target(&settings, vaddr, c.vport, c.protocol, daddr, c.dport);
                    let t = match t {
                        Ok(t) => Some(t),
                        Err(Missing::Service) => {
                            r.no_service += 1;
                            targets.insert(tk, None);
                            continue;
                        }
                        Err(Missing::RealServer) => None,
                    };
                    targets.insert(tk, t);
                    t
                }
            };
            let Some(t) = target else {
                r.no_real_server += 1;
                continue;
            };
            if c.is_template() {
                self.template(c, &t, &settings, master, &mut r);
            } else {
                let idx = if tcp {
                    u32::from(c.state)
                } else {
                    lb_common::TIMEOUT_UDP
                };
                let state_to = *timeouts
                    .entry(idx)
                    .or_insert_with(|| self.timeouts.get(&idx, 0).unwrap_or(0));
                self.conn(c, &t, &settings, state_to, master, &mut r);
            }
        }
        r
    }

    /// When an entry whose state allows `state_to` seconds must have last been seen for it
    /// to expire `timeout` seconds from `now` (IPVS's backup takes the message's timeout;
    /// 0 means the state's own), never later than the state's timeout from now.
    fn last_seen(now: u64, state_to: u32, timeout: u32) -> u64 {
        let t = if timeout == 0 {
            state_to
        } else {
            timeout.min(state_to)
        };
        now.saturating_sub(u64::from(state_to - t) * NS)
    }

    fn conn(
        &mut self,
        c: &SyncConn,
        t: &Target,
        settings: &Settings,
        state_to: u32,
        master: bool,
        r: &mut InstallReport,
    ) {
        let tcp = c.protocol == proto::TCP;
        let key = FlowKey::of(
            addr_of(c.caddr),
            addr_of(c.vaddr),
            c.cport.to_be(),
            c.vport.to_be(),
            c.protocol,
        );
        let nat = t.be.fwd == fwd::NAT;
        // DR and TUN never see replies; NAT has seen one unless the MASTER says not.
        let no_output = !nat || c.flags & conn_flags::NOOUTPUT != 0;
        let seen = Self::last_seen(settings.clock_ns, state_to, c.timeout);
        let value = Conn {
            backend: t.backend,
            state: if tcp {
                c.state as u8
            } else {
                udp_state::NORMAL
            },
            flags: if no_output { cf::NO_OUTPUT } else { 0 },
            _pad: sync_stamp::of(settings.clock_ns),
            last_seen_ns: seen,
        };
        match self.conns.get(&key, 0) {
            Ok(old) => {
                if master {
                    r.kept += 1;
                    return;
                }
                if old.backend != t.backend && c.flags & conn_flags::INACTIVE != 0 {
                    // IPVS: the expiry message of a connection that was replaced since.
                    r.kept += 1;
                    return;
                }
                if old.backend != t.backend && old.flags & cf::REPLY != 0 {
                    r.refused += 1;
                    return;
                }
                if self.conns.insert(key, value, 0).is_err() {
                    r.refused += 1;
                    return;
                }
                r.updated += 1;
            }
            Err(_) => {
                if self.conns.insert(key, value, 0).is_err() {
                    r.refused += 1;
                    return;
                }
                r.installed += 1;
            }
        }
        if nat {
            // The reply entry (RIP:rport → client) that SNATs the real server's replies; where
            // they go next is looked up by the data path on the first one (`LB_NAT_HOPS`).
            let rkey = key.nat_reply(t.be.addr, t.be.port);
            let reply = Conn {
                backend: t.backend,
                state: 0,
                flags: cf::REPLY | if no_output { 0 } else { cf::OUTPUT_SEEN },
                _pad: 0,
                last_seen_ns: seen,
            };
            match self.conns.get(&rkey, 0) {
                Ok(o) if o.backend != t.backend => r.reply_clash += 1,
                _ => {
                    if self.conns.insert(rkey, reply, 0).is_err() {
                        r.refused += 1;
                    }
                }
            }
        }
    }

    fn template(
        &mut self,
        c: &SyncConn,
        t: &Target,
        settings: &Settings,
        master: bool,
        r: &mut InstallReport,
    ) {
        if t.svc.flags & lb_common::svc_flags::PERSISTENT == 0 {
            r.no_service += 1;
            return;
        }
        let mut client = addr_of(c.caddr);
        if client.is_v4() {
            client.w[3] &= t.svc.persist_mask;
        }
        let key = PersistKey {
            svc_id: t.svc.id,
            client,
        };
        let value = PersistVal {
            backend: t.backend,
            _pad: 0,
            last_seen_ns: Self::last_seen(settings.clock_ns, t.svc.persist_timeout, c.timeout),
        };
        let existed = self.persist.get(&key, 0).is_ok();
        if existed && master {
            r.kept += 1;
            return;
        }
        if self.persist.insert(key, value, 0).is_err() {
            r.refused += 1;
        } else if existed {
            r.updated += 1;
        } else {
            r.installed += 1;
        }
    }

    /// The local service (vaddr, vport, protocol) — or the persistent port-0 service of the
    /// VIP, as the data path falls back to — and its real server (daddr, dport).
    fn target(
        &self,
        settings: &Settings,
        vaddr: Addr,
        vport: u16,
        l4: u8,
        daddr: Addr,
        dport: u16,
    ) -> Result<Target, Missing> {
        let key = SvcKey {
            addr: vaddr,
            port: vport.to_be(),
            proto: l4,
            _pad: 0,
        };
        let mut svc = self.service(settings.svc_half, &key);
        if svc.is_none() && settings.flags & settings_flags::HAS_PORT0 != 0 {
            svc = self.service(settings.svc_half, &SvcKey { port: 0, ..key });
        }
        let svc = svc.ok_or(Missing::Service)?;
        for slot in svc.members_off..svc.members_off.saturating_add(svc.members_len) {
            let Ok(id) = self.sched_table.get(&slot, 0) else {
                break;
            };
            let Ok(be) = self.backends.get(&id, 0) else {
                continue;
            };
            if be.svc_id == svc.id && be.addr == daddr && (be.port == dport.to_be() || be.port == 0)
            {
                return Ok(Target {
                    svc,
                    backend: id,
                    be,
                });
            }
        }
        Err(Missing::RealServer)
    }

    /// `service::lookup` of the data path, on the live half.
    fn service(&self, half: u32, key: &SvcKey) -> Option<Service> {
        let slots = size::SVC_SLOTS;
        let base = (half & 1) * slots;
        let home = probe_home(key, slots);
        for i in 0..size::SVC_MAX_PROBE {
            let slot = self
                .svc_table
                .get(&(base + ((home + i) & (slots - 1))), 0)
                .ok()?;
            if slot.svc.id == 0 {
                return None;
            }
            if slot.key.same(key) {
                return Some(slot.svc);
            }
        }
        None
    }
}

enum Missing {
    Service,
    RealServer,
}

impl Dataplane {
    /// A reader of the connection-sync events this data path writes while it is MASTER
    /// (`set_sync_master`), for a thread of its own (see `SyncEvents`). Refused while
    /// another reader lives.
    pub fn sync_events(&self) -> anyhow::Result<SyncEvents> {
        let ring = self
            .sync_ring
            .as_ref()
            .ok_or_else(|| anyhow!("the balancer object has no {} map", maps::SYNC_EVENTS))?;
        if self
            .sync_reader
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            bail!("another reader of the sync events is running");
        }
        let open = || -> anyhow::Result<SyncEvents> {
            let fd = ring.fd().as_fd().try_clone_to_owned()?;
            let data = MapData::from_fd(fd).context("reopening the sync event ring")?;
            let ring = RingBuf::try_from(Map::RingBuf(data))?;
            let dir = &self.opts.pin_dir;
            Ok(SyncEvents {
                ring,
                backends: pinned(dir, maps::BACKENDS)?,
                timeouts: pinned(dir, maps::TIMEOUTS)?,
                svc_info: pinned(dir, maps::SVC_INFO)?,
                busy: self.sync_reader.clone(),
                read: 0,
                stale: 0,
            })
        };
        open().inspect_err(|_| self.sync_reader.store(false, Ordering::Release))
    }

    /// An installer of synced connections into this data path (a BACKUP's), for a thread of
    /// its own (see `SyncInstaller::install`).
    pub fn sync_installer(&self) -> anyhow::Result<SyncInstaller> {
        let dir = &self.opts.pin_dir;
        Ok(SyncInstaller {
            svc_table: pinned(dir, maps::SVC_TABLE)?,
            settings: pinned(dir, maps::SETTINGS)?,
            sched_table: pinned(dir, maps::SCHED_TABLE)?,
            backends: pinned(dir, maps::BACKENDS)?,
            timeouts: pinned(dir, maps::TIMEOUTS)?,
            conns: pinned(dir, maps::CONNS)?,
            persist: pinned(dir, maps::PERSIST)?,
        })
    }

    /// Makes this data path a sync MASTER (its events are written) or not. Kept in the
    /// pinned settings, so a daemon that adopts them carries on as the last one left it.
    pub fn set_sync_master(&mut self, on: bool) -> anyhow::Result<()> {
        self.set_flag(settings_flags::SYNC_MASTER, on)
    }

    /// Whether this data path writes sync events.
    pub fn sync_master(&self) -> bool {
        self.settings.flags & settings_flags::SYNC_MASTER != 0
    }

    /// How often a live connection is sent again (IPVS's `sync_refresh_period`), rounded to
    /// the data path's stamp units (2^30 ns), 1 to 255 of them; `None`: the default.
    pub fn set_sync_refresh(&mut self, period: Option<Duration>) -> anyhow::Result<()> {
        let units = match period {
            None => 0,
            Some(p) => (p.as_nanos() >> sync_stamp::SHIFT).clamp(1, 255) as u32,
        };
        self.settings.flags = (self.settings.flags & !settings_flags::SYNC_PERIOD_MASK)
            | (units << settings_flags::SYNC_PERIOD_SHIFT);
        self.write_settings()
    }

    /// IPVS's `sloppy_tcp` and `sloppy_sctp` sysctls.
    pub fn set_sloppy(&mut self, tcp: bool, sctp: bool) -> anyhow::Result<()> {
        let mut f =
            self.settings.flags & !(settings_flags::SLOPPY_TCP | settings_flags::SLOPPY_SCTP);
        if tcp {
            f |= settings_flags::SLOPPY_TCP;
        }
        if sctp {
            f |= settings_flags::SLOPPY_SCTP;
        }
        self.settings.flags = f;
        self.write_settings()
    }

    /// (`sloppy_tcp`, `sloppy_sctp`) as the settings hold them.
    pub fn sloppy(&self) -> (bool, bool) {
        let f = self.settings.flags;
        (
            f & settings_flags::SLOPPY_TCP != 0,
            f & settings_flags::SLOPPY_SCTP != 0,
        )
    }

    fn set_flag(&mut self, bit: u32, on: bool) -> anyhow::Result<()> {
        if on {
            self.settings.flags |= bit;
        } else {
            self.settings.flags &= !bit;
        }
        self.write_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_both_families() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            IpAddr::V6("2001:db8::1".parse().unwrap()),
        ] {
            assert_eq!(ip_of(addr_of(ip)), ip);
        }
        assert!(addr_of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))).is_v4());
    }

    #[test]
    fn installed_entries_expire_when_the_master_said_bounded_by_the_local_timeout() {
        let now = 1_000 * NS;
        // 900 s allowed, 300 s left: seen 600 s ago.
        assert_eq!(SyncInstaller::last_seen(now, 900, 300), now - 600 * NS);
        // More left than the local state allows: as if seen now.
        assert_eq!(SyncInstaller::last_seen(now, 60, 900), now);
        // 0: the state's own timeout (IPVS's backup does the same).
        assert_eq!(SyncInstaller::last_seen(now, 120, 0), now);
        // A young clock: never before 0 (the entry then lives at most the state's timeout).
        assert_eq!(SyncInstaller::last_seen(5 * NS, 900, 10), 0);
    }

    #[test]
    fn readers_and_installers_can_move_to_threads() {
        fn send<T: Send>() {}
        send::<SyncEvents>();
        send::<SyncInstaller>();
    }
}
