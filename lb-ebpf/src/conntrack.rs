//! The connection table: find the backend of an existing flow, or schedule and record a new
//! one, and run the IPVS TCP state machine on every packet.
//!
//! As IPVS does, a TCP connection is created only by a SYN; other TCP segments without an
//! entry are passed to the stack. A SYN that hits an entry in TIME_WAIT or CLOSE starts a new
//! connection and is scheduled again (IPVS `conn_reuse_mode=1`). Expiry is the sweep's job
//! (`lb_sweep`, run by the daemon every second); the LRU only evicts when the table is full.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{Conn, FlowKey, Service, cnt, conn_flags, proto, svc_flags, tcp_state, udp_state};

use crate::{
    Verdict,
    maps::CONNS,
    parse::{Packet, tcp_flags as tf},
    select::select,
};

/// The backend a packet goes to, and whether this packet created the connection.
pub struct Flow {
    pub backend: u32,
    pub new: bool,
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
pub fn lookup(pkt: &Packet, svc: &Service, tcp_flags: u8, now: u64) -> Result<Lookup, Verdict> {
    let is_tcp = pkt.proto == proto::TCP;
    // One-packet scheduling (`-o`, UDP): every datagram is scheduled, nothing is recorded.
    if !is_tcp && svc.flags & svc_flags::ONE_PACKET != 0 {
        return Ok(Lookup::Create { reuse: false });
    }
    // IPVS `is_new_conn`: SYN without ACK/RST... (ACK and RST are checked by IPVS too).
    let new_conn_syn = is_tcp && tcp_flags & (tf::SYN | tf::ACK | tf::RST) == tf::SYN;
    let key = flow_key(pkt);
    if let Some(c) = CONNS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map value; fields are read and written one at a time.
        let (backend, state, flags, seen) =
            unsafe { ((*c).backend, (*c).state, (*c).flags, (*c).last_seen_ns) };
        let finished = state == tcp_state::TIME_WAIT || state == tcp_state::CLOSE;
        if is_tcp && new_conn_syn && finished {
            // A new connection reusing a finished one's tuple: schedule it afresh.
            return Ok(Lookup::Create { reuse: true });
        }
        let new_state = next_state(pkt.proto, flags, state, tcp_flags);
        // SAFETY: as above.
        unsafe {
            if new_state != state {
                (*c).state = new_state;
            }
            if seen != now {
                (*c).last_seen_ns = now;
            }
        }
        return Ok(Lookup::Found(Flow {
            backend,
            new: false,
        }));
    }
    if is_tcp && !new_conn_syn {
        return Err(Verdict::Pass(cnt::PASS_NO_CONN));
    }
    Ok(Lookup::Create { reuse: false })
}

/// `lookup`, and for a packet that opens a connection: schedule it and record it.
#[inline(always)]
pub fn lookup_or_create(
    pkt: &Packet,
    svc: &Service,
    tcp_flags: u8,
    now: u64,
    settings_flags: u32,
) -> Result<Flow, Verdict> {
    let reuse = match lookup(pkt, svc, tcp_flags, now)? {
        Lookup::Found(flow) => return Ok(flow),
        Lookup::Create { reuse } => reuse,
    };
    let backend =
        select(pkt, svc, now, settings_flags).ok_or(Verdict::Drop(cnt::DROP_NO_BACKEND))?;
    if pkt.proto != proto::TCP && svc.flags & svc_flags::ONE_PACKET != 0 {
        return Ok(Flow { backend, new: true });
    }
    let key = flow_key(pkt);
    let flags = conn_flags::NO_OUTPUT;
    let mut slot = core::mem::MaybeUninit::<Conn>::uninit();
    let conn = crate::mem::zero(&mut slot);
    conn.backend = backend;
    conn.state = next_state(pkt.proto, flags, tcp_state::NONE, tcp_flags);
    conn.flags = flags;
    conn.last_seen_ns = now;
    // A fresh tuple is inserted with NOEXIST: if another CPU created the connection a moment
    // ago (a retransmitted SYN), keep its choice rather than overwrite it.
    let mode = if reuse { 0 } else { BPF_NOEXIST as u64 };
    if CONNS.insert(&key, &*conn, mode).is_err() {
        return match CONNS.get_ptr(&key) {
            // SAFETY: pointer into the map value.
            Some(c) => Ok(Flow {
                backend: unsafe { (*c).backend },
                new: false,
            }),
            None => Err(Verdict::Drop(cnt::DROP_CONN_INSERT)),
        };
    }
    Ok(Flow { backend, new: true })
}
