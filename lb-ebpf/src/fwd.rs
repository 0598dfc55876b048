//! Where a rewritten packet goes next: the kernel's FIB (`bpf_fib_lookup`: route, next hop,
//! neighbour, MTU), then out with `XDP_TX` or a redirect.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};

use lb_common::{Backend, backend_flags, cnt};

use crate::{Verdict, dr, parse::ptr_at};

/// The next hop out of the director.
pub struct Hop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

pub enum Route {
    Via(Hop),
    /// Routed, but the next hop's MAC is not known yet.
    NoNeigh,
    /// Larger than the path MTU (given) allows.
    TooBig(u16),
    /// No route, a blackhole/prohibit route, or forwarding disabled on the ingress interface.
    Unreachable,
}

const AF_INET: u8 = 2;

/// Looks up the route for a packet of `tot_len` bytes from `src` to `dst` as if it arrived on
/// the current ingress interface. Ports are network order (0 for ICMP/IPIP).
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    src: u32,
    dst: u32,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    tos: u8,
) -> Route {
    lookup(
        ctx,
        ctx.ingress_ifindex() as u32,
        src,
        dst,
        l4_protocol,
        sport,
        dport,
        tot_len,
        tos,
    )
}

/// Where the route from `src` to `dst` leads, and its MTU, for caching: the FIB is asked for
/// the largest packet first (which a small MTU answers with that MTU), then for the next hop.
/// `iif` is the interface such packets will arrive on.
#[inline(always)]
pub fn route_with_mtu(
    ctx: &XdpContext,
    iif: u32,
    src: u32,
    dst: u32,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
) -> Option<(Hop, u16)> {
    let mtu = match lookup(ctx, iif, src, dst, l4_protocol, sport, dport, u16::MAX, 0) {
        Route::Via(hop) => return Some((hop, 0)),
        Route::TooBig(mtu) => mtu,
        _ => return None,
    };
    match lookup(ctx, iif, src, dst, l4_protocol, sport, dport, 0, 0) {
        Route::Via(hop) => Some((hop, mtu)),
        _ => None,
    }
}

/// The next hop the control plane resolved for a backend, if it did.
#[inline(always)]
pub fn backend_hop(be: &Backend) -> Option<Hop> {
    if be.flags & backend_flags::NEIGH_OK == 0 || be.ifindex == 0 {
        return None;
    }
    Some(Hop {
        ifindex: be.ifindex,
        smac: be.smac,
        dmac: be.dmac,
    })
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lookup(
    ctx: &XdpContext,
    iif: u32,
    src: u32,
    dst: u32,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    tos: u8,
) -> Route {
    // Zeroed without a memset call (see mem.rs), then the fields the kernel reads.
    let mut slot = core::mem::MaybeUninit::<crate::mem::Align8<FibParams>>::uninit();
    let p = &mut crate::mem::zero(&mut slot).0;
    p.family = AF_INET;
    p.l4_protocol = l4_protocol;
    p.sport = sport;
    p.dport = dport;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = iif;
    p.__bindgen_anon_2.tos = tos;
    p.__bindgen_anon_3.ipv4_src = src;
    p.__bindgen_anon_4.ipv4_dst = dst;
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

/// The address the kernel would pick as its own source for a packet to `dst` leaving through
/// the route from the current ingress interface (`BPF_FIB_LOOKUP_SRC`, kernel 6.8+): what
/// `icmp_send` uses for an error about a packet it forwarded. `None` if there is no such
/// route or address.
#[inline(always)]
pub fn source_toward(ctx: &XdpContext, dst: u32) -> Option<u32> {
    let mut slot = core::mem::MaybeUninit::<crate::mem::Align8<FibParams>>::uninit();
    let p = &mut crate::mem::zero(&mut slot).0;
    p.family = AF_INET;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: `p` is a valid, fully initialised parameter block of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            p as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    } as u32;
    // SAFETY: the kernel set `ipv4_src` (or left it zero) for these return codes.
    let src = unsafe { p.__bindgen_anon_3.ipv4_src };
    if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && src != 0 {
        Some(src)
    } else {
        None
    }
}

/// Writes the next hop's MACs into the Ethernet header at the start of the frame and sends
/// it out of the hop's interface.
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: &Hop) -> Result<u32, Verdict> {
    let eth: *mut [u8; 14] = ptr_at(ctx, 0).map_err(|_| Verdict::Drop(cnt::DROP_INTERNAL))?;
    dr::set_macs(eth as *mut u8, &hop.dmac, &hop.smac);
    dr::out(ctx, hop.ifindex)
}
