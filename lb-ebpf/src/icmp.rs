//! ICMP: errors the director generates itself (fragmentation needed, TTL exceeded), and
//! errors about a balanced connection, which go to where the connection goes — translated for
//! NAT (outer and embedded headers, as IPVS's `ip_vs_nat_icmp`), as they are for DR and TUN.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    Backend, FlowKey, SvcKey, backend_flags, cnt, conn_flags, fwd as fwd_mode, icmp_limit, proto,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    Verdict, csum, dr,
    fwd::{self, Route},
    maps::{BACKENDS, CONNS, CPU_STATE, NAT_RS, SETTINGS, SVC_TABLE},
    parse::{ETH_LEN, IP_LEN, IP_OFFSET, Packet, ptr_at},
    service,
    stats::count,
    tun,
};

pub const DEST_UNREACH: u8 = 3;
pub const SOURCE_QUENCH: u8 = 4;
pub const REDIRECT: u8 = 5;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROB: u8 = 12;
/// Code of DEST_UNREACH: fragmentation needed and DF set.
pub const FRAG_NEEDED: u8 = 4;

const ICMP_LEN: usize = 8;
/// Bytes of the offending datagram past its IP header quoted in an error (RFC 792).
const QUOTE: usize = 8;

#[inline(always)]
fn internal<T>(_: T) -> Verdict {
    Verdict::Drop(cnt::DROP_INTERNAL)
}

/// Whether an address may receive an ICMP error (RFC 1122 3.2.2, RFC 1812 4.3.2.7): not
/// "this network" (0/8), loopback (127/8), multicast or the reserved/broadcast 240/4.
#[inline(always)]
fn unicast_host(addr: [u8; 4]) -> bool {
    addr[0] != 0 && addr[0] != 127 && addr[0] < 224
}

/// ICMP types that are errors (`icmp_pointers[].error` in the kernel), and every type past
/// the last known one, about which no error may be sent.
#[inline(always)]
fn is_error_type(t: u8) -> bool {
    t > 18
        || matches!(
            t,
            DEST_UNREACH | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAMETER_PROB
        )
}

/// Takes a token from this CPU's ICMP error bucket (`lb_common::icmp_limit`), refilled by
/// the balancer's clock: the kernel limits its own errors the same way (`icmp_global_allow`),
/// and a director answering every TTL-1 packet at line rate would be a reflector.
#[inline(always)]
pub(crate) fn rate_allows() -> bool {
    let now = match SETTINGS.get(0) {
        Some(s) => s.clock_ns,
        None => return false,
    };
    let Some(st) = CPU_STATE.get_ptr_mut(0) else {
        return false;
    };
    const NS_PER_TOKEN: u64 = 1_000_000_000 / icmp_limit::PER_SEC;
    // SAFETY: per-CPU value; this packet is the only one running on this CPU.
    unsafe {
        let mut tokens = (*st).icmp_tokens;
        if (*st).icmp_init == 0 {
            (*st).icmp_init = 1;
            (*st).icmp_stamp_ns = now;
            tokens = icmp_limit::BURST;
        }
        let elapsed = now.wrapping_sub((*st).icmp_stamp_ns);
        if elapsed >= NS_PER_TOKEN {
            let add = (elapsed / NS_PER_TOKEN).min(icmp_limit::BURST);
            tokens = (tokens + add).min(icmp_limit::BURST);
            (*st).icmp_stamp_ns = now;
        }
        if tokens == 0 {
            (*st).icmp_tokens = 0;
            return false;
        }
        (*st).icmp_tokens = tokens - 1;
    }
    true
}

/// Turns the current packet into an ICMP error about it (type/code, `mtu` for
/// fragmentation-needed) back to its source, and sends it out of the interface it came in
/// on. The error's source is the packet's destination when `from` is 0 (it was addressed to
/// the director: a VIP); else (a packet the director forwards, such as a NAT reply) the
/// address the kernel would use as its own toward the packet's source, or `from` (the VIP)
/// if the FIB has none: never the client's address, which the packet only passed towards.
///
/// As the kernel's `icmp_send`, no error is sent about an ICMP error, a non-first fragment,
/// or to a source that is not a unicast host, or about a packet to a multicast or broadcast
/// address: the packet is dropped (`DROP_ICMP_SUPPRESSED`); and errors other than
/// fragmentation-needed are rate-limited (`DROP_ICMP_RATELIMIT`).
#[inline(always)]
pub fn send_error(
    ctx: &XdpContext,
    icmp_type: u8,
    code: u8,
    mtu: u16,
    from: u32,
) -> Result<u32, Verdict> {
    let eth: *mut [u8; 12] = ptr_at(ctx, 0).map_err(internal)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).map_err(internal)?;
    // SAFETY: both bounds-checked above; copied out before the head moves.
    let (macs, vihl, l4proto, frags, saddr, daddr) = unsafe {
        (
            *eth,
            (*ip).vihl,
            (*ip).proto,
            u16::from_be_bytes((*ip).frags),
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if ihl < IP_LEN {
        return Err(Verdict::Drop(cnt::DROP_MALFORMED));
    }
    let suppressed = Verdict::Drop(cnt::DROP_ICMP_SUPPRESSED);
    if frags & IP_OFFSET != 0 || !unicast_host(saddr) || daddr[0] >= 224 {
        return Err(suppressed);
    }
    if l4proto == proto::ICMP {
        let t: *mut u8 = ptr_at(ctx, ETH_LEN + ihl).map_err(|_| suppressed)?;
        // SAFETY: bounds-checked.
        if is_error_type(unsafe { *t }) {
            return Err(Verdict::Drop(cnt::DROP_ICMP_SUPPRESSED));
        }
    }
    // The kernel does not limit fragmentation-needed: path MTU discovery must keep working.
    if !(icmp_type == DEST_UNREACH && code == FRAG_NEEDED) && !rate_allows() {
        return Err(Verdict::Drop(cnt::DROP_ICMP_RATELIMIT));
    }
    let src = if from == 0 {
        u32::from_ne_bytes(daddr)
    } else {
        fwd::source_toward(ctx, u32::from_ne_bytes(saddr)).unwrap_or(from)
    };
    let quoted = ihl + QUOTE;
    let old_len = ctx.data_end() - ctx.data();
    if old_len < ETH_LEN + quoted {
        return Err(Verdict::Drop(cnt::DROP_MALFORMED));
    }
    let new_len = ETH_LEN + IP_LEN + ICMP_LEN + quoted;
    // SAFETY: plain helper calls; packet pointers are derived again below.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, -((IP_LEN + ICMP_LEN) as i32)) != 0 {
            return Err(internal(()));
        }
        let grown = old_len + IP_LEN + ICMP_LEN;
        if bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - grown as i32) != 0 {
            return Err(internal(()));
        }
    }
    // [Ethernet][IPv4 20][ICMP 8][the offending IP header + 8 bytes], the last part already
    // in place.
    let hdr: *mut [u32; 5] = ptr_at(ctx, ETH_LEN).map_err(internal)?;
    let icmp: *mut [u16; 4] = ptr_at(ctx, ETH_LEN + IP_LEN).map_err(internal)?;
    let mac: *mut [u16; 7] = ptr_at(ctx, 0).map_err(internal)?;
    let tot = ((IP_LEN + ICMP_LEN + quoted) as u16).to_be_bytes();
    let mut w = [
        // Precedence "internetwork control", as Linux's icmp_send.
        u32::from_ne_bytes([0x45, 0xc0, tot[0], tot[1]]),
        0,
        u32::from_ne_bytes([64, proto::ICMP, 0, 0]),
        src,
        u32::from_ne_bytes(saddr),
    ];
    let check = csum::ipv4_header(&w).to_ne_bytes();
    w[2] = u32::from_ne_bytes([64, proto::ICMP, check[0], check[1]]);
    let icmp_words = [
        u16::from_ne_bytes([icmp_type, code]),
        0,
        0,
        if icmp_type == DEST_UNREACH && code == FRAG_NEEDED {
            mtu.to_be()
        } else {
            0
        },
    ];
    // SAFETY: all pointers bounds-checked after the adjustments.
    unsafe {
        let m = mac as *mut u16;
        // Back to where it came from: destination = its source MAC, source = ours.
        let src = [
            u16::from_ne_bytes([macs[6], macs[7]]),
            u16::from_ne_bytes([macs[8], macs[9]]),
            u16::from_ne_bytes([macs[10], macs[11]]),
        ];
        let dst = [
            u16::from_ne_bytes([macs[0], macs[1]]),
            u16::from_ne_bytes([macs[2], macs[3]]),
            u16::from_ne_bytes([macs[4], macs[5]]),
        ];
        let mut i = 0;
        while i < 3 {
            m.add(i).write_unaligned(src[i]);
            m.add(3 + i).write_unaligned(dst[i]);
            i += 1;
        }
        m.add(6).write_unaligned(0x0800u16.to_be());
        let p = hdr as *mut u32;
        let mut i = 0;
        while i < 5 {
            p.add(i).write_unaligned(w[i]);
            i += 1;
        }
        let q = icmp as *mut u16;
        let mut i = 0;
        while i < 4 {
            q.add(i).write_unaligned(icmp_words[i]);
            i += 1;
        }
    }
    // The ICMP checksum covers the ICMP header and the quote: at most 8 + 60 + 8 bytes.
    let words = (ICMP_LEN + quoted) / 2;
    let mut sum = 0u32;
    let mut i = 0;
    while i < (ICMP_LEN + 60 + QUOTE) / 2 {
        if i >= words {
            break;
        }
        let wp: *mut u16 = ptr_at(ctx, ETH_LEN + IP_LEN + 2 * i).map_err(internal)?;
        // SAFETY: bounds-checked.
        sum += u32::from(unsafe { wp.read_unaligned() });
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    // SAFETY: bounds-checked above.
    unsafe { (icmp as *mut u16).add(1).write_unaligned(!(sum as u16)) };
    count(cnt::ICMP_SENT);
    Ok(xdp_action::XDP_TX)
}

/// The datagram quoted in an ICMP error.
struct Quoted {
    off: usize,
    ihl: usize,
    proto: u8,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn pass<T>(_: T) -> Verdict {
    Verdict::Pass(cnt::PASS_NOT_SERVICE)
}

#[inline(always)]
fn quoted(ctx: &XdpContext, pkt: &Packet) -> Result<Quoted, Verdict> {
    let icmp: *mut [u8; ICMP_LEN] = ptr_at(ctx, pkt.l4_off).map_err(pass)?;
    // SAFETY: bounds-checked.
    let icmp_type = unsafe { (*icmp)[0] };
    if !matches!(
        icmp_type,
        DEST_UNREACH | SOURCE_QUENCH | TIME_EXCEEDED | PARAMETER_PROB
    ) {
        // Echo and the rest are the director's own business.
        return Err(pass(()));
    }
    let off = pkt.l4_off + ICMP_LEN;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, off).map_err(pass)?;
    // SAFETY: bounds-checked.
    let (vihl, qproto, saddr, daddr) =
        unsafe { ((*ip).vihl, (*ip).proto, (*ip).src_addr, (*ip).dst_addr) };
    let ihl = (vihl & 0x0f) as usize * 4;
    if ihl < IP_LEN || (qproto != proto::TCP && qproto != proto::UDP) {
        return Err(pass(()));
    }
    let ports: *mut [u16; 2] = ptr_at(ctx, off + ihl).map_err(pass)?;
    // SAFETY: bounds-checked.
    let [sport, dport] = unsafe { *ports };
    Ok(Quoted {
        off,
        ihl,
        proto: qproto,
        saddr: u32::from_ne_bytes(saddr),
        daddr: u32::from_ne_bytes(daddr),
        sport,
        dport,
    })
}

/// Rewrites a NATed ICMP error: one outer address (`outer_src` picks which), the quoted
/// datagram's address and port on the same side of the connection, and every checksum,
/// decrementing the outer TTL.
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    pkt: &Packet,
    q: &Quoted,
    outer_src: bool,
    addr: u32,
    port: u16,
) -> Result<(), Verdict> {
    let ip = pkt.ip;
    let icmp_check: *mut u16 = ptr_at(ctx, pkt.l4_off + 2).map_err(internal)?;
    let qip: *mut Ipv4Hdr = ptr_at(ctx, q.off).map_err(internal)?;
    let qports: *mut [u16; 2] = ptr_at(ctx, q.off + q.ihl).map_err(internal)?;
    // SAFETY: all bounds-checked above; no head/tail adjustment in between.
    unsafe {
        let ttl_word = (ip as *mut u16).add(4);
        let old_ttl = *ttl_word;
        let mut tp = old_ttl.to_ne_bytes();
        tp[0] -= 1;
        let new_ttl = u16::from_ne_bytes(tp);
        let mut c = u16::from_ne_bytes((*ip).check);
        c = csum::replace2(c, old_ttl, new_ttl);
        *ttl_word = new_ttl;
        if outer_src {
            c = csum::replace4(c, u32::from_ne_bytes((*ip).src_addr), addr);
            (*ip).src_addr = addr.to_ne_bytes();
        } else {
            c = csum::replace4(c, u32::from_ne_bytes((*ip).dst_addr), addr);
            (*ip).dst_addr = addr.to_ne_bytes();
        }
        (*ip).check = c.to_ne_bytes();

        // The quote is the datagram as the connection's other side sent it: an error about a
        // request (outer source rewritten) quotes client → real server, so its destination
        // becomes the VIP; an error about a reply quotes VIP → client, so its source becomes
        // the real server.
        let mut ic = *icmp_check;
        let old_qcheck = u16::from_ne_bytes((*qip).check);
        let (old_addr, old_port) = if outer_src {
            (q.daddr, q.dport)
        } else {
            (q.saddr, q.sport)
        };
        let qc = csum::replace4(old_qcheck, old_addr, addr);
        (*qip).check = qc.to_ne_bytes();
        if outer_src {
            (*qip).dst_addr = addr.to_ne_bytes();
            (*qports)[1] = port;
        } else {
            (*qip).src_addr = addr.to_ne_bytes();
            (*qports)[0] = port;
        }
        ic = csum::replace4(ic, old_addr, addr);
        ic = csum::replace2(ic, old_qcheck, qc);
        ic = csum::replace2(ic, old_port, port);
        *icmp_check = ic;
    }
    Ok(())
}

/// Routes a translated ICMP error and sends it.
#[inline(always)]
fn route_icmp(ctx: &XdpContext, pkt: &Packet, src: u32, dst: u32) -> Result<u32, Verdict> {
    // SAFETY: bounds-checked IPv4 header.
    let tos = unsafe { (*pkt.ip).tos };
    match fwd::route(ctx, src, dst, proto::ICMP, 0, 0, pkt.ip_len, tos) {
        Route::Via(hop) => fwd::send(ctx, &hop),
        Route::NoNeigh => Err(Verdict::Pass(cnt::PASS_NO_NEIGH)),
        Route::TooBig(_) => Err(Verdict::Pass(cnt::PASS_TOO_BIG)),
        Route::Unreachable => Err(Verdict::Drop(cnt::DROP_NO_ROUTE)),
    }
}

/// The test of the kernel's forward path (`ip_forward`), made before `translate` decrements
/// the TTL: an ICMP error whose TTL has run out is dropped, with no time-exceeded about it
/// (never an error about an error).
#[inline(always)]
fn ttl_left(pkt: &Packet) -> Result<(), Verdict> {
    // SAFETY: bounds-checked IPv4 header.
    if unsafe { (*pkt.ip).ttl } <= 1 {
        return Err(Verdict::Drop(cnt::DROP_ICMP_SUPPRESSED));
    }
    Ok(())
}

fn available(backend: u32) -> Result<Backend, Verdict> {
    let be = *BACKENDS
        .get(backend)
        .ok_or(Verdict::Drop(cnt::DROP_INTERNAL))?;
    if be.flags & backend_flags::AVAILABLE == 0 {
        return Err(Verdict::Drop(cnt::DROP_BACKEND_GONE));
    }
    Ok(be)
}

/// An ICMP error: if it is about a balanced connection, send it where that connection goes.
#[inline(always)]
pub fn forward_error(ctx: &XdpContext, pkt: &Packet, half: u32) -> Result<u32, Verdict> {
    let q = quoted(ctx, pkt)?;
    // An error goes to the source of the datagram it quotes (RFC 792, RFC 1812 4.3.2.2): the
    // VIP for a reply the director or a DR/TUN real server sent, the client for a DNATed
    // request. One addressed elsewhere is about nothing of ours.
    if pkt.daddr != q.saddr {
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    }
    // The quoted datagram, reversed: the key of the connection (client → VIP) or of the NAT
    // reply entry (RIP → client) it belongs to.
    let key = FlowKey::new(q.daddr, q.saddr, q.dport, q.sport, q.proto);
    // About a datagram the VIP sent (a reply): the connection is client → VIP.
    let vip = SvcKey {
        addr: lb_common::Addr::v4(q.saddr),
        port: q.sport,
        proto: q.proto,
        _pad: 0,
    };
    if service::lookup(&SVC_TABLE, lb_common::size::SVC_SLOTS, half, &vip).is_some() {
        // An embryonic (SYN_RECV) connection is in its own table.
        let c = CONNS
            .get_ptr(&key)
            // An error about an embryo's packet goes its way until the sweep clears it,
            // expired or not: it changes no state.
            .or_else(|| crate::embryo::find(&key).map(|c| c as *const _))
            .ok_or(Verdict::Pass(cnt::PASS_NO_CONN))?;
        // SAFETY: pointer into the map value.
        let be = available(unsafe { (*c).backend })?;
        crate::parse::valid(ctx, pkt, ICMP_LEN + q.ihl + 4)?;
        if be.fwd == fwd_mode::NAT {
            ttl_left(pkt)?;
        }
        count(cnt::ICMP_FORWARDED);
        return match be.fwd {
            fwd_mode::DR => dr::forward(ctx, pkt, &be),
            fwd_mode::TUN => tun::encap(ctx, pkt, &be),
            fwd_mode::NAT => {
                translate(ctx, pkt, &q, false, be.addr.as_v4(), be.port)?;
                route_icmp(ctx, pkt, pkt.saddr, be.addr.as_v4())
            }
            _ => Err(Verdict::Drop(cnt::DROP_INTERNAL)),
        };
    }
    // About a datagram the director sent to a NAT real server (a DNATed request).
    let rs = SvcKey {
        addr: lb_common::Addr::v4(q.daddr),
        port: q.dport,
        proto: q.proto,
        _pad: 0,
    };
    if service::lookup(&NAT_RS, lb_common::size::NAT_RS_SLOTS, half, &rs).is_none() {
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    }
    // An embryonic NAT connection's reply entry is in its own table.
    let c = CONNS
        .get_ptr(&key)
        // An error about an embryo's packet goes its way until the sweep clears it,
        // expired or not: it changes no state.
        .or_else(|| crate::embryo::find(&key).map(|c| c as *const _))
        .ok_or(Verdict::Pass(cnt::PASS_NO_REPLY_CONN))?;
    // SAFETY: pointer into the map value.
    let (flags, backend) = unsafe { ((*c).flags, (*c).backend) };
    if flags & conn_flags::REPLY == 0 {
        return Err(Verdict::Pass(cnt::PASS_NO_REPLY_CONN));
    }
    let be = available(backend)?;
    crate::parse::valid(ctx, pkt, ICMP_LEN + q.ihl + 4)?;
    ttl_left(pkt)?;
    count(cnt::ICMP_FORWARDED);
    translate(ctx, pkt, &q, true, be.vaddr.as_v4(), be.vport)?;
    route_icmp(ctx, pkt, be.vaddr.as_v4(), pkt.daddr)
}
