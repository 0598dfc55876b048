//! IPIP decapsulation for LVS-TUN real servers, for kernels (and hosts) without the `ipip`
//! module (and IPv6-in-IPv6 without `ip6_tunnel`, `decap6`): an IPv4-in-IPv4 packet whose
//! inner destination is one of the configured VIPs loses
//! its outer header here and goes up the stack as if it had arrived plain. Everything else
//! passes untouched. Scope: outer headers without options, no fragments (passed as they are); an outer header
//! the kernel would drop (total length past the frame, bad checksum) passes untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, macros::map, macros::xdp, maps::HashMap,
    programs::XdpContext,
};
use lb_common::{Addr, proto, size::MAX_DECAP_VIPS};

/// Inner destinations (VIPs) to decapsulate for: IPv4 ones IPv4-mapped, IPv6 ones as they
/// are (`lb_common::maps::DECAP_VIPS`).
#[map(name = "LB_DECAP_VIPS")]
static VIPS: HashMap<Addr, u8> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);

const ETH: usize = 14;
const IP: usize = 20;

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let _ = decap(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Option<()> {
    let etype: *const [u8; 2] = ptr_at(ctx, 12)?;
    // SAFETY: bounds-checked above.
    if unsafe { *etype } == [0x86, 0xdd] {
        return decap6(ctx);
    }
    // Ethernet, the outer IPv4 header and the inner one's first 20 bytes.
    let hdr: *mut [u8; ETH + 2 * IP] = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked above.
    let h = unsafe { &*hdr };
    let ethertype = u16::from_be_bytes([h[12], h[13]]);
    let outer_vihl = h[ETH];
    let frags = u16::from_be_bytes([h[ETH + 6], h[ETH + 7]]);
    if ethertype != 0x0800 || outer_vihl != 0x45 || h[ETH + 9] != proto::IPIP || frags & 0x3fff != 0
    {
        return None;
    }
    // The checks of the kernel's `ip_rcv`, which would drop a bad outer header before ipip
    // saw it: the total length within the frame and room for the inner header in it, and a
    // right header checksum. Anything else passes as it is, for the stack to drop.
    let frame = ctx.data_end() - ctx.data();
    let tot = usize::from(u16::from_be_bytes([h[ETH + 2], h[ETH + 3]]));
    if ETH + tot > frame || tot < 2 * IP {
        return None;
    }
    let mut sum = 0u32;
    let mut i = 0;
    while i < IP / 2 {
        sum += u32::from(u16::from_be_bytes([h[ETH + 2 * i], h[ETH + 2 * i + 1]]));
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    if sum != 0xffff {
        return None;
    }
    let inner = ETH + IP;
    if h[inner] >> 4 != 4 {
        return None;
    }
    let vip = u32::from_ne_bytes([h[inner + 16], h[inner + 17], h[inner + 18], h[inner + 19]]);
    // SAFETY: a lookup; the value is not used.
    unsafe { VIPS.get(&Addr::v4(vip)) }?;
    let macs: [u8; 12] = [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11],
    ];
    // SAFETY: plain helper call; the packet pointer is derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IP as i32) } != 0 {
        return None;
    }
    let eth: *mut [u16; 7] = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked after the adjustment.
    unsafe {
        let p = eth as *mut u16;
        let mut i = 0;
        while i < 6 {
            p.add(i)
                .write_unaligned(u16::from_ne_bytes([macs[2 * i], macs[2 * i + 1]]));
            i += 1;
        }
        p.add(6).write_unaligned(0x0800u16.to_be());
    }
    Some(())
}

const IP6: usize = 40;

/// IPv6-in-IPv6 (next header 41, as IPVS's `ip_vs_tunnel_xmit_v6` sends it) whose inner
/// destination is one of the VIPs: the outer header goes. Scope as for IPv4: no extension
/// headers on the outer packet (IPVS adds none); an outer payload length past the frame or
/// too short for the inner header passes untouched, for the stack to drop.
#[inline(always)]
fn decap6(ctx: &XdpContext) -> Option<()> {
    let hdr: *mut [u8; ETH + 2 * IP6] = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked above.
    let h = unsafe { &*hdr };
    if h[ETH] >> 4 != 6 || h[ETH + 6] != proto::IPV6 {
        return None;
    }
    let frame = ctx.data_end() - ctx.data();
    let plen = usize::from(u16::from_be_bytes([h[ETH + 4], h[ETH + 5]]));
    if ETH + IP6 + plen > frame || plen < IP6 {
        return None;
    }
    let inner = ETH + IP6;
    if h[inner] >> 4 != 6 {
        return None;
    }
    let d = inner + 24;
    let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let vip = Addr {
        w: [w(d), w(d + 4), w(d + 8), w(d + 12)],
    };
    // SAFETY: a lookup; the value is not used.
    unsafe { VIPS.get(&vip) }?;
    let macs: [u8; 12] = [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11],
    ];
    // SAFETY: plain helper call; the packet pointer is derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IP6 as i32) } != 0 {
        return None;
    }
    let eth: *mut [u16; 7] = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked after the adjustment.
    unsafe {
        let p = eth as *mut u16;
        let mut i = 0;
        while i < 6 {
            p.add(i)
                .write_unaligned(u16::from_ne_bytes([macs[2 * i], macs[2 * i + 1]]));
            i += 1;
        }
        p.add(6).write_unaligned(0x86ddu16.to_be());
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
