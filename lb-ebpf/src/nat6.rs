//! Masquerading for IPv6 (LVS `-m` on an IPv6 service): DNAT requests to the real server,
//! SNAT its replies back to the VIP, as `nat` does for IPv4. IPv6 has no header checksum:
//! only the TCP/UDP checksum changes with the 128-bit address (its pseudo-header) and the
//! port, updated incrementally. The Hop Limit is decremented as a router does, and a packet
//! with none left, or too big for the path, gets the ICMPv6 error a router sends (Time
//! Exceeded, Packet Too Big: IPv6 routers never fragment).

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, Backend, Conn, NatHop, cnt, conn_flags, proto, tcp_state};

use crate::{
    Verdict, csum,
    flow::FlowPkt,
    fwd::{self, Route},
    fwd6, icmp6,
    maps::{CONNS, NAT_HOPS},
    parse::{ptr_at, tcp_flags as tf},
    parse6::{self, Packet6},
    stats::count,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Dst,
    Src,
}

/// Rewrites one address and port, decrements the Hop Limit, and updates the L4 checksum
/// (RFC 1624, word by word over the address). The L4 header was bounds-checked by the
/// caller (`parse6::l4_checked`).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet6,
    side: Side,
    addr: &Addr,
    port: u16,
) -> Result<(), Verdict> {
    let internal = Verdict::Drop(cnt::DROP_INTERNAL);
    let check_off = if pkt.proto == proto::TCP { 16 } else { 6 };
    let check: *mut u16 = ptr_at(ctx, pkt.l4_off + check_off).map_err(|_| internal)?;
    let ports: *mut [u16; 2] =
        ptr_at(ctx, pkt.l4_off).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    let (old, old_port, at) = match side {
        Side::Dst => (&pkt.daddr, pkt.dport, 24),
        Side::Src => (&pkt.saddr, pkt.sport, 8),
    };
    // SAFETY: `pkt.ip` is the bounds-checked 40-byte header, `check` and `ports`
    // bounds-checked L4 fields; no head/tail adjustment here.
    unsafe {
        let ip = pkt.ip as *mut u8;
        *ip.add(7) = pkt.hop_limit - 1;
        let mut c = *check;
        let mut i = 0;
        while i < 4 {
            c = csum::replace4(c, old.w[i], addr.w[i]);
            (ip.add(at + 4 * i) as *mut u32).write_unaligned(addr.w[i]);
            i += 1;
        }
        c = csum::replace2(c, old_port, port);
        // A UDP checksum that comes out 0 is sent as all ones (0 means none, which IPv6
        // does not allow).
        if pkt.proto == proto::UDP && c == 0 {
            c = 0xffff;
        }
        *check = c;
        match side {
            Side::Dst => (*ports)[1] = port,
            Side::Src => (*ports)[0] = port,
        }
    }
    Ok(())
}

enum Next {
    Hop(fwd::Hop),
    Kernel,
    Done(Result<u32, Verdict>),
}

/// Hop Limit and MTU for a packet going to `hop` (MTU `mtu`, 0: unknown); errors from `from`.
#[inline(always)]
fn checked(ctx: &XdpContext, pkt: &Packet6, hop: fwd::Hop, mtu: u16, from: &Addr) -> Next {
    if pkt.hop_limit <= 1 {
        return Next::Done(icmp6::send_error(ctx, icmp6::TIME_EXCEEDED, 0, 0, from));
    }
    if mtu != 0 && pkt.ip_len() > mtu {
        return Next::Done(icmp6::send_error(
            ctx,
            icmp6::PACKET_TOO_BIG,
            0,
            mtu as u32,
            from,
        ));
    }
    Next::Hop(hop)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn via_fib(
    ctx: &XdpContext,
    pkt: &Packet6,
    src: &Addr,
    dst: &Addr,
    sport: u16,
    dport: u16,
    from: &Addr,
) -> Next {
    if pkt.hop_limit <= 1 {
        return Next::Done(icmp6::send_error(ctx, icmp6::TIME_EXCEEDED, 0, 0, from));
    }
    match fwd6::route(ctx, src, dst, pkt.proto, sport, dport, pkt.ip_len()) {
        Route::Via(hop) => Next::Hop(hop),
        Route::NoNeigh => Next::Kernel,
        Route::TooBig(mtu) => Next::Done(icmp6::send_error(
            ctx,
            icmp6::PACKET_TOO_BIG,
            0,
            mtu as u32,
            from,
        )),
        Route::Unreachable => Next::Done(Err(Verdict::Drop(cnt::DROP_NO_ROUTE))),
    }
}

/// `nat::hop_of` for an IPv6 client.
#[inline(always)]
pub fn hop_of(client: &Addr, epoch: u32) -> Option<(fwd::Hop, u16)> {
    let h = NAT_HOPS.get_ptr(client)?;
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
fn remember_hop(client: &Addr, h: &fwd::Hop, mtu: u16, epoch: u32) {
    let mut slot = core::mem::MaybeUninit::<crate::mem::Align8<[u64; 3]>>::uninit();
    crate::mem::zero(&mut slot);
    // SAFETY: 24 zeroed bytes, 8-aligned, the size of `NatHop` (plain data).
    let v = unsafe { &mut *(slot.as_mut_ptr() as *mut NatHop) };
    v.ifindex = h.ifindex;
    v.epoch = epoch;
    v.dmac = h.dmac;
    v.smac = h.smac;
    v.mtu = mtu;
    let _ = NAT_HOPS.insert(client, v, 0);
}

/// `nat::record_reply` for IPv6: in the table the request entry went to (`embryo`: `EMBRYO`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn record_reply(
    ctx: &XdpContext,
    pkt: &Packet6,
    be: &Backend,
    backend: u32,
    embryo: bool,
    now: u64,
    epoch: u32,
) {
    let key = pkt.key().nat_reply(be.addr, be.port);
    let mut slot = core::mem::MaybeUninit::<Conn>::uninit();
    let value = crate::mem::zero(&mut slot);
    value.backend = backend;
    value.flags = conn_flags::REPLY;
    value.last_seen_ns = now;
    if hop_of(&pkt.saddr, epoch).is_none() {
        let iif = if be.ifindex != 0 {
            be.ifindex
        } else {
            ctx.ingress_ifindex() as u32
        };
        if let Some((h, mtu)) = fwd6::route_with_mtu(
            ctx, iif, &be.vaddr, &pkt.saddr, pkt.proto, be.vport, pkt.sport,
        ) {
            remember_hop(&pkt.saddr, &h, mtu, epoch);
        }
    }
    if embryo {
        // As `nat::record_reply`: a live connection of another backend holding this reply
        // tuple in `CONNS` keeps it.
        if let Some(c) = CONNS.get_ptr(&key)
            // SAFETY: pointer into the map value.
            && unsafe { (*c).backend } != backend
        {
            count(cnt::NAT_REPLY_CLASH);
            return;
        }
        crate::nat::put_embryo_reply(&key, value, backend, now);
    } else {
        crate::nat::put_reply(&CONNS, &key, value, backend);
    }
}

/// A request of an IPv6 NAT connection: DNAT to the real server and forward.
#[inline(always)]
pub fn request(
    ctx: &XdpContext,
    pkt: &Packet6,
    be: &Backend,
    backend: u32,
    new: bool,
    embryo: bool,
    now: u64,
    epoch: u32,
) -> Result<u32, Verdict> {
    if new {
        record_reply(ctx, pkt, be, backend, embryo, now, epoch);
    }
    let next = match fwd::backend_hop(be) {
        Some(hop) => checked(ctx, pkt, hop, be.mtu, &pkt.daddr),
        None => via_fib(
            ctx, pkt, &pkt.saddr, &be.addr, pkt.sport, be.port, &pkt.daddr,
        ),
    };
    let hop = match next {
        Next::Hop(hop) => Some(hop),
        Next::Kernel => None,
        Next::Done(verdict) => return verdict,
    };
    rewrite(ctx, pkt, Side::Dst, &be.addr, be.port)?;
    match hop {
        Some(hop) => fwd::send(ctx, &hop),
        None => Err(Verdict::Pass(cnt::PASS_NO_NEIGH)),
    }
}

/// A packet from an IPv6 NAT real server: if it is a reply of a connection, SNAT it back
/// to the VIP and forward it to the client (`nat::reply`).
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    pkt: &Packet6,
    now: u64,
    epoch: u32,
) -> Result<(u32, u32, u32), Verdict> {
    let key = pkt.key();
    // As `nat::reply`: an embryonic connection's reply entry is in `EMBRYO`.
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
    let tcp = parse6::l4_checked(ctx, pkt)?;
    if seen != now {
        // SAFETY: as above.
        unsafe { (*c).last_seen_ns = now };
    }
    if pkt.proto == proto::TCP
        && (tcp & (tf::SYN | tf::FIN | tf::RST) != 0 || flags & conn_flags::OUTPUT_SEEN == 0)
    {
        let fwd_key = key.nat_request(be.vaddr, be.vport);

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
    let next = if let Some((hop, mtu)) = hop_of(&pkt.daddr, epoch) {
        checked(ctx, pkt, hop, mtu, &be.vaddr)
    } else {
        let iif = ctx.ingress_ifindex() as u32;
        match fwd6::route_with_mtu(
            ctx, iif, &be.vaddr, &pkt.daddr, pkt.proto, be.vport, pkt.dport,
        ) {
            Some((hop, mtu)) => {
                remember_hop(&pkt.daddr, &hop, mtu, epoch);
                checked(ctx, pkt, hop, mtu, &be.vaddr)
            }
            None => via_fib(
                ctx, pkt, &be.vaddr, &pkt.daddr, be.vport, pkt.dport, &be.vaddr,
            ),
        }
    };
    let hop = match next {
        Next::Hop(hop) => Some(hop),
        Next::Kernel => None,
        Next::Done(Ok(action)) => return Ok((action, be.svc_id, backend)),
        Next::Done(Err(v)) => return Err(v),
    };
    rewrite(ctx, pkt, Side::Src, &be.vaddr, be.vport)?;
    let action = match hop {
        Some(hop) => fwd::send(ctx, &hop)?,
        None => return Err(Verdict::Pass(cnt::PASS_NO_NEIGH)),
    };
    Ok((action, be.svc_id, backend))
}
