//! The FIB for IPv6 (`bpf_fib_lookup` with AF_INET6): `fwd::route` and
//! `fwd::route_with_mtu` for the IPv6 paths. The hop and route types are IPv4's.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::Addr;

use crate::fwd::{Hop, Route};

const AF_INET6: u8 = 10;

/// The route for an IPv6 packet of `len` bytes (header included; 0: no MTU check) from
/// `src` to `dst`, as if it arrived on `iif`. Ports network order (0 for tunnelled packets).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn lookup(
    ctx: &XdpContext,
    iif: u32,
    src: &Addr,
    dst: &Addr,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    len: u16,
) -> Route {
    let mut slot = core::mem::MaybeUninit::<crate::mem::Align8<FibParams>>::uninit();
    let p = &mut crate::mem::zero(&mut slot).0;
    p.family = AF_INET6;
    p.l4_protocol = l4_protocol;
    p.sport = sport;
    p.dport = dport;
    p.__bindgen_anon_1.tot_len = len;
    p.ifindex = iif;
    p.__bindgen_anon_3.ipv6_src = src.w;
    p.__bindgen_anon_4.ipv6_dst = dst.w;
    // SAFETY: `p` is a valid, fully initialised parameter block of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            p as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Via(Hop {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeigh,
        // SAFETY: the kernel filled `mtu_result` for this return code.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Route::TooBig(unsafe { p.__bindgen_anon_1.mtu_result }),
        _ => Route::Unreachable,
    }
}

/// The route from the current ingress interface.
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    src: &Addr,
    dst: &Addr,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    len: u16,
) -> Route {
    lookup(
        ctx,
        ctx.ingress_ifindex() as u32,
        src,
        dst,
        l4_protocol,
        sport,
        dport,
        len,
    )
}

/// Where the route leads and its MTU, for caching (`fwd::route_with_mtu`).
#[inline(always)]
pub fn route_with_mtu(
    ctx: &XdpContext,
    iif: u32,
    src: &Addr,
    dst: &Addr,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
) -> Option<(Hop, u16)> {
    let mtu = match lookup(ctx, iif, src, dst, l4_protocol, sport, dport, u16::MAX) {
        Route::Via(hop) => return Some((hop, 0)),
        Route::TooBig(mtu) => mtu,
        _ => return None,
    };
    match lookup(ctx, iif, src, dst, l4_protocol, sport, dport, 0) {
        Route::Via(hop) => Some((hop, mtu)),
        _ => None,
    }
}
