//! The connection table: find the backend of an existing flow, or schedule and record a new
//! one, and run the IPVS TCP state machine on every packet.
//!
//! As IPVS does, a TCP connection is created only by a SYN; other TCP segments without an
//! entry are passed to the stack. A SYN that hits an entry in TIME_WAIT or CLOSE starts a new
//! connection and is scheduled again (IPVS `conn_reuse_mode=1`). Expiry is the sweep's job
//! (`lb_sweep`, driven by the daemon every second); the LRU only evicts when the table is full.
//!
//! SYN floods: a TCP connection opened by a SYN starts in `EMBRYO`, a table of its own (an
//! array of slots, `crate::embryo`), and moves to `CONNS` with the packet that takes it out
//! of SYN_RECV (the client's ACK). A flood of spoofed SYNs, which never complete a
//! handshake, can only overwrite slots of `EMBRYO`: no established connection is ever
//! evicted by it. A NAT connection's reply entry starts in
//! `EMBRYO` beside its request entry (the real server's SYN-ACK finds it there, `nat::reply`)
//! and moves with it.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    Conn, FlowKey, Service, cnt, conn_flags, fwd as fwd_mode, proto, svc_flags, tcp_state,
    udp_state,
};

use crate::{
    Verdict,
    embryo::{self as slots, Put},
    flow::FlowPkt,
    maps::{BACKENDS, CONNS, RS_NEW},
    parse::{Packet, tcp_flags as tf},
    select::{add32, picked, rewind, select},
    stats::count,
};

/// The backend a packet goes to, and whether this packet created the connection.
pub struct Flow {
    pub backend: u32,
    pub new: bool,
    /// The connection was recorded in `EMBRYO` (a NAT connection's reply entry goes there too).
    pub embryo: bool,
}

/// The state after an inbound (client → virtual service) packet.
#[inline(always)]
fn next_state(l4proto: u8, flags: u8, state: u8, tcp_flags: u8) -> u8 {
    if l4proto != proto::TCP {
        return udp_state::NORMAL;
    }
    let dir = if flags & conn_flags::NO_OUTPUT != 0 {
        tcp_state::DIR_INPUT_ONLY
    } else {
        tcp_state::DIR_INPUT
    };
    tcp_state::next(dir, state, tcp_flags)
}

/// What the connection table says about an inbound packet.
pub enum Lookup {
    /// An existing connection (its state already advanced by this packet).
    Found(Flow),
    /// The packet opens a connection (`lb_new` schedules it); `reuse` if it replaces a
    /// finished connection on the same tuple.
    Create { reuse: bool },
}

#[inline(always)]
pub fn flow_key(pkt: &Packet) -> FlowKey {
    FlowKey::new(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto)
}

/// Finds the packet's connection and runs the state machine on it. `now` is
/// `Settings::clock_ns`: it only moves every `CLOCK_TICK_NS`, so `last_seen_ns` is written at
/// most that often per connection.
#[inline(always)]
pub fn lookup<P: FlowPkt>(
    pkt: &P,
    svc: &Service,
    tcp_flags: u8,
    now: u64,
    settings: u32,
) -> Result<Lookup, Verdict> {
    let is_tcp = pkt.proto() == proto::TCP;
    // One-packet scheduling (`-o`, UDP): every datagram is scheduled, nothing is recorded.
    if !is_tcp && svc.flags & svc_flags::ONE_PACKET != 0 {
        return Ok(Lookup::Create { reuse: false });
    }
    // IPVS `is_new_conn`: SYN without ACK/RST... (ACK and RST are checked by IPVS too).
    let new_conn_syn = is_tcp && tcp_flags & (tf::SYN | tf::ACK | tf::RST) == tf::SYN;
    let key = pkt.key();
    if new_conn_syn {
        // A SYN that finds nothing here goes on to its `EMBRYO` bucket: its lines start
        // loading now, so that their misses can overlap this lookup's own and the
        // scheduler instead of following them in `embryo::put` (the insert measured
        // ~400 ns of a ~800 ns new flow, nearly all of it those cold lines).
        slots::touch(&key);
    }
    if let Some(c) = CONNS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map value; fields are read and written one at a time.
        let (backend, state, flags, seen) =
            unsafe { ((*c).backend, (*c).state, (*c).flags, (*c).last_seen_ns) };
        let finished = state == tcp_state::TIME_WAIT || state == tcp_state::CLOSE;
        if is_tcp && new_conn_syn && finished {
            // A new connection reusing a finished one's tuple: schedule it afresh.
            return Ok(Lookup::Create { reuse: true });
        }
        let new_state = next_state(pkt.proto(), flags, state, tcp_flags);
        // SAFETY: as above.
        unsafe {
            if new_state != state {
                (*c).state = new_state;
            }
            if seen != now {
                (*c).last_seen_ns = now;
            }
        }
        crate::sync::seen(&key, c, state, svc.id, now, settings);
        return Ok(Lookup::Found(Flow {
            backend,
            new: false,
            embryo: false,
        }));
    }
    // A miss probes one table. A SYN goes on to `create`, whose insert into its `EMBRYO`
    // slot (`embryo::put`) is the probe there: it finds a retransmitted SYN's embryo (and `create`
    // then carries on as this function would have). Only other segments look in `EMBRYO`
    // here: the ACK that completes a handshake, once per connection.
    if !is_tcp || new_conn_syn {
        return Ok(Lookup::Create { reuse: false });
    }
    match slots::get(&key, now) {
        Some(e) => Ok(Lookup::Found(embryo(
            pkt, &key, e, tcp_flags, now, svc.id, settings,
        ))),
        None => Err(Verdict::Pass(cnt::PASS_NO_CONN)),
    }
}

/// A packet of an embryonic connection: runs the state machine, and once the connection is
/// out of SYN_RECV moves it to `CONNS` (where floods cannot reach it).
#[inline(always)]
fn embryo<P: FlowPkt>(
    pkt: &P,
    key: &FlowKey,
    e: *mut Conn,
    tcp_flags: u8,
    now: u64,
    svc_id: u32,
    settings: u32,
) -> Flow {
    // SAFETY: a pointer into the map value, copied at once (16 bytes).
    let mut v = unsafe { *e };
    let backend = v.backend;
    let old = v.state;
    let state = next_state(pkt.proto(), v.flags, v.state, tcp_flags);
    v.state = state;
    v.last_seen_ns = now;
    crate::sync::promoted(key, &mut v, old, svc_id, now, settings);
    if state != tcp_state::SYN_RECV && promote(key, &v) {
        return Flow {
            backend,
            new: false,
            embryo: false,
        };
    }
    // SAFETY: as above; field by field.
    unsafe {
        if (*e).state != state {
            (*e).state = state;
        }
        if (*e).last_seen_ns != now {
            (*e).last_seen_ns = now;
        }
        (*e)._pad = v._pad;
    }
    Flow {
        backend,
        new: false,
        embryo: true,
    }
}

/// Moves embryonic connection `key` (its new value `v`, out of SYN_RECV) to `CONNS`, and a
/// NAT connection's reply entry with it; false if `CONNS` refused it (an LRU insert fails
/// only under memory pressure): it then stays in `EMBRYO` and moves with a later packet.
/// Also called from the NAT reply path (a real server's packet can end SYN_RECV).
#[inline(always)]
pub fn promote(key: &FlowKey, v: &Conn) -> bool {
    // NOEXIST: another CPU may have moved it a moment ago (two ACKs at once); its entry
    // holds the same backend.
    if CONNS.insert(key, v, BPF_NOEXIST as u64).is_err() && CONNS.get_ptr(key).is_none() {
        count(cnt::EMBRYO_PROMOTE_FAILED);
        return false;
    }
    slots::clear(key);
    // Until it moves, `nat::reply` finds a NAT connection's reply entry in `EMBRYO`.
    if let Some(be) = BACKENDS.get(v.backend)
        && be.fwd == fwd_mode::NAT
    {
        crate::nat::promote_reply(key, be, v.backend);
    }
    count(cnt::EMBRYO_PROMOTED);
    true
}

/// Schedules and records the connection a packet opens (`lookup` said `Create { reuse }`,
/// in `lb_xdp`: the miss is not looked up again here). The insert without overwrite finds
/// an entry recorded for the same tuple by another CPU since, or a retransmitted SYN's
/// embryo (`lookup` leaves `EMBRYO` to it).
#[inline(always)]
pub fn create<P: FlowPkt>(
    pkt: &P,
    svc: &Service,
    tcp_flags: u8,
    now: u64,
    settings_flags: u32,
    reuse: bool,
) -> Result<Flow, Verdict> {
    // One picked up mid-stream (`sync::sloppy`) is past its handshake: straight into `CONNS`.
    let embryonic = pkt.proto() == proto::TCP && !reuse && tcp_flags & tf::SYN != 0;
    let key = pkt.key();
    let Some(backend) = select(pkt, svc, now, settings_flags) else {
        picked();
        // A retransmitted SYN of an embryo (which `lookup` does not probe for) keeps going
        // to its server, as every packet of a connection does, even one no longer scheduled.
        if embryonic && let Some(e) = slots::get(&key, now) {
            return Ok(embryo(pkt, &key, e, tcp_flags, now, svc.id, settings_flags));
        }
        return Err(Verdict::Drop(cnt::DROP_NO_BACKEND));
    };
    if pkt.proto() != proto::TCP && svc.flags & svc_flags::ONE_PACKET != 0 {
        picked();
        return Ok(Flow {
            backend,
            new: true,
            embryo: false,
        });
    }
    if embryonic {
        // Recorded by `record(.., true)` in a function of its own (`lb_new`'s
        // `insert_embryo`): inlined here, after every scheduler's path, the slot insert made
        // the verifier walk it once per path (`lb_new6` went from 180k to 490k instructions).
        return Ok(Flow {
            backend,
            new: true,
            embryo: true,
        });
    }
    record(
        pkt,
        svc,
        tcp_flags,
        now,
        settings_flags,
        reuse,
        backend,
        false,
    )
}

/// Records the connection a packet opens on `backend` (`create` chose it): in `CONNS`, or
/// (`embryonic`, a SYN's) in `EMBRYO`. If another CPU recorded the tuple first, the
/// packet follows that connection and this CPU's pick is taken back.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn record<P: FlowPkt>(
    pkt: &P,
    svc: &Service,
    tcp_flags: u8,
    now: u64,
    settings_flags: u32,
    reuse: bool,
    backend: u32,
    embryonic: bool,
) -> Result<Flow, Verdict> {
    let key = pkt.key();
    let flags = conn_flags::NO_OUTPUT;
    let mut slot = core::mem::MaybeUninit::<Conn>::uninit();
    let conn = crate::mem::zero(&mut slot);
    conn.backend = backend;
    conn.state = next_state(pkt.proto(), flags, tcp_state::NONE, tcp_flags);
    conn.flags = flags;
    conn.last_seen_ns = now;
    conn._pad = crate::sync::stamp(now);
    // A TCP connection opened by a SYN is embryonic until its handshake goes on (a NAT one's
    // reply entry joins it there, `nat::request`); a reused tuple replaces its finished entry
    // in `CONNS` in place.
    let lost = if embryonic {
        // Stored in its slot unless a live embryo of this tuple is there (a retransmitted
        // SYN, or another CPU's SYN of it a moment ago), or another CPU is writing the slot.
        match slots::put(&key, conn, now) {
            Put::Stored => None,
            Put::Exists(e) => Some(Some(e)),
            Put::Busy => Some(None),
        }
    } else {
        // A fresh tuple is inserted with NOEXIST: if another CPU created the connection a
        // moment ago, keep its choice rather than overwrite it.
        let mode = if reuse { 0 } else { BPF_NOEXIST as u64 };
        match CONNS.insert(&key, &*conn, mode) {
            Ok(()) => None,
            Err(_) => Some(CONNS.get_ptr_mut(&key)),
        }
    };
    if let Some(found) = lost {
        // Another CPU recorded this tuple first (or the table refused it): this CPU's pick
        // was not used, so it neither counts as a new connection nor moves rr/wrr on.
        if let Some(n) = RS_NEW.get_ptr_mut(backend) {
            // SAFETY: a u32 all CPUs update only atomically; adding the two's complement
            // subtracts.
            unsafe { add32(n, 0u32.wrapping_sub(1)) };
        }
        rewind();
        return match found {
            // A retransmitted SYN (or a SYN another CPU just recorded): the embryo's own
            // packet, state machine and all, as `lookup` would have found it.
            Some(e) if embryonic => {
                Ok(embryo(pkt, &key, e, tcp_flags, now, svc.id, settings_flags))
            }
            // SAFETY: pointer into the map value.
            Some(c) => Ok(Flow {
                backend: unsafe { (*c).backend },
                new: false,
                embryo: false,
            }),
            None => Err(Verdict::Drop(cnt::DROP_CONN_INSERT)),
        };
    }
    picked();
    if embryonic {
        count(cnt::EMBRYO_NEW);
    }
    crate::sync::recorded(&key, conn, svc.id, settings_flags);
    Ok(Flow {
        backend,
        new: true,
        embryo: embryonic,
    })
}
