//! Masquerading (LVS `-m`): DNAT requests to the real server, SNAT its replies back to the
//! VIP, with incremental checksum updates and the TTL decremented as a router does. The
//! client's address is kept (DNAT, not full NAT), so the real server must route its replies
//! back through the director (its default gateway, as in LVS-NAT).

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use lb_common::{Addr, Backend, Conn, FlowKey, NatHop, cnt, conn_flags, proto, tcp_state};
use network_types::ip::Ipv4Hdr;

use crate::{
    Verdict, csum,
    fwd::{self, Route},
    icmp,
    maps::{CONNS, NAT_HOPS},
    parse::{IP_DF, Packet, ptr_at, tcp_flags as tf},
    stats::count,
};

/// Which end of the packet NAT rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Request: destination VIP:vport → RIP:rport.
    Dst,
    /// Reply: source RIP:rport → VIP:vport.
    Src,
}

/// Offset of the L4 checksum field, for the protocols NAT rewrites.
#[inline(always)]
fn l4_check_off(l4proto: u8) -> usize {
    if l4proto == proto::TCP { 16 } else { 6 }
}

/// Rewrites one address and port of the packet and decrements its TTL, keeping every
/// checksum right. The L4 header was bounds-checked by the caller (`l4_checked`).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    side: Side,
    addr: u32,
    port: u16,
) -> Result<(), Verdict> {
    let ip: *mut Ipv4Hdr = pkt.ip;
    let internal = Verdict::Drop(cnt::DROP_INTERNAL);
    let check: *mut u16 =
        ptr_at(ctx, pkt.l4_off + l4_check_off(pkt.proto)).map_err(|_| internal)?;
    let ports: *mut [u16; 2] =
        ptr_at(ctx, pkt.l4_off).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let (old_addr, old_port) = match side {
        Side::Dst => (pkt.daddr, pkt.dport),
        Side::Src => (pkt.saddr, pkt.sport),
    };
    // SAFETY: `ip` points at the bounds-checked 20-byte IPv4 header, `check` and `ports` at
    // bounds-checked L4 fields; all stay valid (no head/tail adjustment here).
    unsafe {
        // TTL and protocol share one 16-bit word (bytes 8-9 of the header).
        let ttl_word = ip as *mut u8 as *mut u16;
        let old_ttl = *ttl_word.add(4);
        let mut ttl_proto = old_ttl.to_ne_bytes();
        ttl_proto[0] -= 1;
        let new_ttl = u16::from_ne_bytes(ttl_proto);
        let mut ip_check = u16::from_ne_bytes((*ip).check);
        ip_check = csum::replace2(ip_check, old_ttl, new_ttl);
        ip_check = csum::replace4(ip_check, old_addr, addr);
        *ttl_word.add(4) = new_ttl;
        (*ip).check = ip_check.to_ne_bytes();
        match side {
            Side::Dst => (*ip).dst_addr = addr.to_ne_bytes(),
            Side::Src => (*ip).src_addr = addr.to_ne_bytes(),
        }
        // UDP with checksum 0 carries none.
        let l4 = *check;
        if pkt.proto == proto::TCP || l4 != 0 {
            let mut c = csum::replace4(l4, old_addr, addr);
            c = csum::replace2(c, old_port, port);
            if pkt.proto == proto::UDP && c == 0 {
                c = 0xffff;
            }
            *check = c;
        }
        match side {
            Side::Dst => (*ports)[1] = port,
            Side::Src => (*ports)[0] = port,
        }
    }
    Ok(())
}

/// TTL and DF of the packet's IP header.
#[inline(always)]
fn ttl_df(pkt: &Packet) -> (u8, bool, u8) {
    // SAFETY: bounds-checked IPv4 header.
    unsafe { ((*pkt.ip).ttl, pkt.frags & IP_DF != 0, (*pkt.ip).tos) }
}

/// What to do with a packet that is about to leave: where it goes, or the verdict when it
/// cannot (TTL run out, too big for the path, no route).
enum Next {
    Hop(fwd::Hop),
    /// Routed, next hop unresolved: the kernel forwards it and resolves the neighbour.
    Kernel,
    Done(Result<u32, Verdict>),
}

/// Checks TTL and MTU for a packet going to `hop` (MTU `mtu`, 0: no limit known). `from`:
/// the source of an ICMP error about it (`icmp::send_error`): 0 for a request (the VIP it was
/// addressed to), the VIP for a reply (a fallback for the director's own address).
#[inline(always)]
fn checked(ctx: &XdpContext, pkt: &Packet, hop: fwd::Hop, mtu: u16, from: u32) -> Next {
    let (ttl, df, _) = ttl_df(pkt);
    if ttl <= 1 {
        return Next::Done(icmp::send_error(ctx, icmp::TIME_EXCEEDED, 0, 0, from));
    }
    if mtu != 0 && pkt.ip_len > mtu {
        return too_big(ctx, df, mtu, from);
    }
    Next::Hop(hop)
}

#[inline(always)]
fn too_big(ctx: &XdpContext, df: bool, mtu: u16, from: u32) -> Next {
    if df {
        Next::Done(icmp::send_error(
            ctx,
            icmp::DEST_UNREACH,
            icmp::FRAG_NEEDED,
            mtu,
            from,
        ))
    } else {
        Next::Done(Err(Verdict::Pass(cnt::PASS_TOO_BIG)))
    }
}

/// Asks the FIB (the slow way, a kernel call) where a packet to `dst` goes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn via_fib(
    ctx: &XdpContext,
    pkt: &Packet,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    from: u32,
) -> Next {
    let (ttl, df, tos) = ttl_df(pkt);
    if ttl <= 1 {
        return Next::Done(icmp::send_error(ctx, icmp::TIME_EXCEEDED, 0, 0, from));
    }
    match fwd::route(ctx, src, dst, pkt.proto, sport, dport, pkt.ip_len, tos) {
        Route::Via(hop) => Next::Hop(hop),
        Route::NoNeigh => Next::Kernel,
        Route::TooBig(mtu) => too_big(ctx, df, mtu, from),
        Route::Unreachable => Next::Done(Err(Verdict::Drop(cnt::DROP_NO_ROUTE))),
    }
}

/// Records the reply tuple (RIP:rport → CIP:cport) of a new NAT connection, in the table
/// its request entry went to (`embryo`: `EMBRYO`), and where replies to its client go unless
/// that is known already (one FIB lookup per client and route change instead of one per
/// reply).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn record_reply(
    ctx: &XdpContext,
    pkt: &Packet,
    be: &Backend,
    backend: u32,
    embryo: bool,
    now: u64,
    epoch: u32,
) {
    let key = crate::conntrack::flow_key(pkt).nat_reply(be.addr, be.port);
    let mut slot = core::mem::MaybeUninit::<Conn>::uninit();
    let value = crate::mem::zero(&mut slot);
    value.backend = backend;
    value.flags = conn_flags::REPLY;
    value.last_seen_ns = now;
    if hop_of(pkt.saddr, epoch).is_none() {
        // Replies arrive on the interface towards the real server.
        let iif = if be.ifindex != 0 {
            be.ifindex
        } else {
            ctx.ingress_ifindex() as u32
        };
        if let Some((h, mtu)) = fwd::route_with_mtu(
            ctx,
            iif,
            be.vaddr.as_v4(),
            pkt.saddr,
            pkt.proto,
            be.vport,
            pkt.sport,
        ) {
            remember_hop(pkt.saddr, &h, mtu, epoch);
        }
    }
    if embryo {
        // The reply path looks in `CONNS` first: a live connection of another backend that
        // holds this reply tuple there keeps it (as below), and this one's replies would go
        // its way, so it is a clash now, not at promotion.
        if let Some(c) = CONNS.get_ptr(&key)
            // SAFETY: pointer into the map value.
            && unsafe { (*c).backend } != backend
        {
            count(cnt::NAT_REPLY_CLASH);
            return;
        }
        put_embryo_reply(&key, value, backend, now);
    } else {
        put_reply(&CONNS, &key, value, backend);
    }
}

/// Inserts reply entry `key` of `backend`'s connection into `table`. A reused tuple (the same
/// client port on a new connection) replaces its stale entry; a live entry of another
/// connection for the same tuple is not taken over.
#[inline(always)]
pub fn put_reply(
    table: &aya_ebpf::maps::LruHashMap<FlowKey, Conn>,
    key: &FlowKey,
    value: &Conn,
    backend: u32,
) {
    if table.insert(key, value, BPF_NOEXIST as u64).is_err() {
        match table.get_ptr(key) {
            // SAFETY: pointer into the map value.
            Some(c) if unsafe { (*c).backend } == backend => {
                let _ = table.insert(key, value, 0);
            }
            _ => count(cnt::NAT_REPLY_CLASH),
        }
    }
}

/// Records reply entry `key` of `backend`'s embryonic connection in its `EMBRYO` slot, as
/// `put_reply` does in `CONNS`: a live entry of the same tuple is refreshed if it is this
/// backend's, and kept (a clash) otherwise.
#[inline(always)]
pub fn put_embryo_reply(key: &FlowKey, value: &Conn, backend: u32, now: u64) {
    match crate::embryo::put(key, value, now) {
        crate::embryo::Put::Stored => {}
        // SAFETY: pointer into the map value; the check word covers backend and flags'
        // `REPLY` bit, which stay, so the fields are written in place one by one.
        crate::embryo::Put::Exists(c) if unsafe { (*c).backend } == backend => unsafe {
            (*c).state = value.state;
            (*c).flags = value.flags;
            (*c)._pad = value._pad;
            (*c).last_seen_ns = value.last_seen_ns;
        },
        _ => count(cnt::NAT_REPLY_CLASH),
    }
}

/// Moves the reply entry of NAT connection `request` (of `backend`, on `be`) from `EMBRYO`
/// to `CONNS`, as its request entry was just moved (`conntrack`). One already gone (the
/// clash above, a flood's eviction) stays gone: replies then pass to the stack, as they
/// would have before.
#[inline(always)]
pub fn promote_reply(request: &FlowKey, be: &Backend, backend: u32) {
    let key = request.nat_reply(be.addr, be.port);
    let Some(r) = crate::embryo::find(&key) else {
        return;
    };
    // SAFETY: pointer into the map value, copied at once (16 bytes).
    let v = unsafe { *r };
    if v.backend != backend || v.flags & conn_flags::REPLY == 0 {
        return;
    }
    put_reply(&CONNS, &key, &v, backend);
    crate::embryo::clear(&key);
}

/// The cached next hop (and path MTU) towards NAT client `client`, if it was looked up
/// since the routes last changed (`epoch`). Keyed by the client alone: every connection of
/// a client shares it (with ECMP towards clients, the path of the client's first
/// connection after a route change).
#[inline(always)]
fn hop_of(client: u32, epoch: u32) -> Option<(fwd::Hop, u16)> {
    let h = NAT_HOPS.get_ptr(&Addr::v4(client))?;
    // SAFETY: pointer into the map value, fields read one at a time.
    unsafe {
        if (*h).ifindex == 0 || (*h).epoch != epoch {
            return None;
        }
        Some((
            fwd::Hop {
                ifindex: (*h).ifindex,
                dmac: (*h).dmac,
                smac: (*h).smac,
            },
            (*h).mtu,
        ))
    }
}

#[inline(always)]
fn remember_hop(client: u32, h: &fwd::Hop, mtu: u16, epoch: u32) {
    let mut slot = core::mem::MaybeUninit::<crate::mem::Align8<[u64; 3]>>::uninit();
    crate::mem::zero(&mut slot);
    // SAFETY: 24 zeroed bytes, 8-aligned, the size of `NatHop` (plain data).
    let v = unsafe { &mut *(slot.as_mut_ptr() as *mut NatHop) };
    v.ifindex = h.ifindex;
    v.epoch = epoch;
    v.dmac = h.dmac;
    v.smac = h.smac;
    v.mtu = mtu;
    let _ = NAT_HOPS.insert(&Addr::v4(client), v, 0);
}

/// A request of a NAT connection: DNAT to the real server and forward.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn request(
    ctx: &XdpContext,
    pkt: &Packet,
    be: &Backend,
    backend: u32,
    new: bool,
    embryo: bool,
    now: u64,
    epoch: u32,
) -> Result<u32, Verdict> {
    // The connection exists from here on, whatever becomes of this packet (TTL exceeded, too
    // big, no route): IPVS creates the connection, both directions, before it transmits, so
    // the reply entry is recorded first, or the connection's later packets would be DNATed
    // and its replies left un-SNATed.
    if new {
        record_reply(ctx, pkt, be, backend, embryo, now, epoch);
    }
    let next = match fwd::backend_hop(be) {
        Some(hop) => checked(ctx, pkt, hop, be.mtu, 0),
        None => via_fib(ctx, pkt, pkt.saddr, be.addr.as_v4(), pkt.sport, be.port, 0),
    };
    let hop = match next {
        Next::Hop(hop) => Some(hop),
        Next::Kernel => None,
        Next::Done(verdict) => return verdict,
    };
    rewrite(ctx, pkt, Side::Dst, be.addr.as_v4(), be.port)?;
    match hop {
        Some(hop) => fwd::send(ctx, &hop),
        // The kernel forwards it (ip_forward is on for NAT) and resolves the neighbour.
        None => Err(Verdict::Pass(cnt::PASS_NO_NEIGH)),
    }
}

/// A packet from a NAT real server (a `NAT_RS` address and port): if it is a reply of a
/// connection, SNAT it back to the VIP and forward it to the client. Returns the backend id
/// (for the outbound stats) with the action.
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    pkt: &Packet,
    now: u64,
    epoch: u32,
) -> Result<(u32, u32, u32), Verdict> {
    let key = crate::conntrack::flow_key(pkt);
    // An embryonic connection's reply entry is in `EMBRYO` (the SYN-ACK finds it there);
    // `CONNS` first, where every established connection's is.
    let (c, embryo) = match CONNS.get_ptr_mut(&key) {
        Some(c) => (c, false),
        None if pkt.proto == proto::TCP => (
            crate::embryo::get(&key, now).ok_or(Verdict::Pass(cnt::PASS_NO_REPLY_CONN))?,
            true,
        ),
        None => return Err(Verdict::Pass(cnt::PASS_NO_REPLY_CONN)),
    };
    // SAFETY: pointer into the map value, fields read and written one at a time.
    let (backend, flags, seen) = unsafe { ((*c).backend, (*c).flags, (*c).last_seen_ns) };
    if flags & conn_flags::REPLY == 0 {
        return Err(Verdict::Pass(cnt::PASS_NO_REPLY_CONN));
    }
    let be = crate::maps::BACKENDS
        .get(backend)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    if be.flags & lb_common::backend_flags::AVAILABLE == 0 {
        return Err(Verdict::Drop(cnt::DROP_BACKEND_GONE));
    }
    let tcp = crate::parse::l4_checked(ctx, pkt)?;
    if seen != now {
        // SAFETY: as above.
        unsafe { (*c).last_seen_ns = now };
    }
    // The connection's state lives in its request entry: tell it about the reply when the
    // segment can change it (IPVS's OUTPUT table; plain ACKs only move SYN_RECV, LISTEN and
    // SYNACK on, which the client's own ACK does too).
    if pkt.proto == proto::TCP
        && (tcp & (tf::SYN | tf::FIN | tf::RST) != 0 || flags & conn_flags::OUTPUT_SEEN == 0)
    {
        let fwd_key = key.nat_request(be.vaddr, be.vport);
        // The request entry is most likely where its reply entry is.

        // An embryo the real server's packet took out of SYN_RECV (an ACK before the
        // client's) keeps its new state where it is and moves to `CONNS` with the client's
        // next packet (`conntrack::embryo`): moving it here too would put `conntrack::promote`
        // on top of this program's stack, past the verifier's 512 bytes with the sync hooks.
        let f = if embryo {
            crate::embryo::get(&fwd_key, now).or_else(|| CONNS.get_ptr_mut(&fwd_key))
        } else {
            CONNS
                .get_ptr_mut(&fwd_key)
                .or_else(|| crate::embryo::get(&fwd_key, now))
        };
        if let Some(f) = f {
            // SAFETY: pointer into the map value.
            unsafe {
                let st = (*f).state;
                let next = tcp_state::next(tcp_state::DIR_OUTPUT, st, tcp);
                if next != st {
                    (*f).state = next;
                }
                (*f).flags &= !conn_flags::NO_OUTPUT;
                if next != st {
                    crate::sync::output_state(&fwd_key, f, be.svc_id);
                }
                (*f).last_seen_ns = now;
                (*c).flags = flags | conn_flags::OUTPUT_SEEN;
            }
        }
    }
    // Where replies go: cached per client, looked up again after a route or neighbour change.
    let next = if let Some((hop, mtu)) = hop_of(pkt.daddr, epoch) {
        checked(ctx, pkt, hop, mtu, be.vaddr.as_v4())
    } else {
        let iif = ctx.ingress_ifindex() as u32;
        match fwd::route_with_mtu(
            ctx,
            iif,
            be.vaddr.as_v4(),
            pkt.daddr,
            pkt.proto,
            be.vport,
            pkt.dport,
        ) {
            Some((hop, mtu)) => {
                remember_hop(pkt.daddr, &hop, mtu, epoch);
                checked(ctx, pkt, hop, mtu, be.vaddr.as_v4())
            }
            None => via_fib(
                ctx,
                pkt,
                be.vaddr.as_v4(),
                pkt.daddr,
                be.vport,
                pkt.dport,
                be.vaddr.as_v4(),
            ),
        }
    };
    let hop = match next {
        Next::Hop(hop) => Some(hop),
        Next::Kernel => None,
        Next::Done(Ok(action)) => return Ok((action, be.svc_id, backend)),
        Next::Done(Err(v)) => return Err(v),
    };
    rewrite(ctx, pkt, Side::Src, be.vaddr.as_v4(), be.vport)?;
    let action = match hop {
        Some(hop) => fwd::send(ctx, &hop)?,
        None => return Err(Verdict::Pass(cnt::PASS_NO_NEIGH)),
    };
    Ok((action, be.svc_id, backend))
}
