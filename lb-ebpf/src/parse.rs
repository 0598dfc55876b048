//! Header parsing: one bounds-checked accessor and the fields the balancer needs.
//!
//! Scope: Ethernet II without VLAN tags, IPv4 with or without options, TCP, UDP and ICMP
//! errors. IPv6, VLAN-tagged frames and ARP are passed to the stack. Fragments carry no L4
//! header past the first, so no flow can be matched on them: they are passed to the stack
//! (counted).

use aya_ebpf::programs::XdpContext;
use lb_common::{cnt, proto};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::Verdict;

/// Returns a pointer to a `T` at `offset` bytes into the frame, or `Err` if the frame is too
/// short. Every access to packet memory goes through here; after `bpf_xdp_adjust_head` or
/// `_tail` every pointer is derived again through it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

pub const ETH_LEN: usize = core::mem::size_of::<EthHdr>();
pub const IP_LEN: usize = core::mem::size_of::<Ipv4Hdr>();
const ETH_P_IP: u16 = 0x0800;
pub const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// TCP flag bits as found in byte 13 of the header.
pub mod tcp_flags {
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const FIN: u8 = 0x01;
    pub const ACK: u8 = 0x10;
}

/// What the balancer needs to know about an IPv4 TCP/UDP/ICMP packet.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    /// Source/destination address and port, network byte order (ports 0 for ICMP).
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Offset of the L4 header in the frame.
    pub l4_off: usize,
    /// IP total length, host order (what IPVS counts as bytes).
    pub ip_len: u16,
    /// The flags/fragment-offset field, host order.
    pub frags: u16,
}

/// Parses Ethernet + IPv4 + the L4 ports. `Err` carries the verdict for frames the balancer
/// does not handle.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).map_err(|_| Verdict::Pass(cnt::PASS_NOT_IPV4))?;
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return Err(Verdict::Pass(cnt::PASS_NOT_IPV4));
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).map_err(|_| Verdict::Drop(cnt::DROP_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, l4proto, frags, tot_len, saddr, daddr) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            u16::from_be_bytes((*ip).frags),
            u16::from_be_bytes((*ip).tot_len),
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < IP_LEN || (tot_len as usize) < ihl {
        return Err(Verdict::Drop(cnt::DROP_MALFORMED));
    }
    if l4proto != proto::TCP && l4proto != proto::UDP && l4proto != proto::ICMP {
        return Err(Verdict::Pass(cnt::PASS_NOT_SERVICE));
    }
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Err(Verdict::Pass(cnt::PASS_FRAGMENT));
    }
    // `ihl` is at most 60, which the verifier can see from the mask above.
    let l4 = ETH_LEN + ihl;
    let (mut sport, mut dport) = (0, 0);
    if l4proto != proto::ICMP {
        let ports: *mut [u16; 2] =
            ptr_at(ctx, l4).map_err(|_| Verdict::Drop(cnt::DROP_MALFORMED))?;
        // SAFETY: bounds checked by ptr_at.
        [sport, dport] = unsafe { *ports };
    }
    Ok(Packet {
        eth,
        ip,
        saddr,
        daddr,
        sport,
        dport,
        proto: l4proto,
        l4_off: l4,
        ip_len: tot_len,
        frags,
    })
}

/// Reads the TCP flags of a packet that matched a service (0 for UDP), after checking the
/// whole L4 header is there. Only then is a truncated header an error: other traffic is the
/// stack's business.
#[inline(always)]
pub fn l4_checked(ctx: &XdpContext, pkt: &Packet) -> Result<u8, Verdict> {
    if pkt.proto == proto::TCP {
        let tcp: *mut TcpHdr =
            ptr_at(ctx, pkt.l4_off).map_err(|_| Verdict::Drop(cnt::DROP_MALFORMED))?;
        // Byte 13 of the TCP header holds CWR..FIN.
        // SAFETY: bounds checked by ptr_at (the whole 20-byte header).
        return Ok(unsafe { *(tcp as *const u8).add(13) });
    }
    let _: *mut UdpHdr = ptr_at(ctx, pkt.l4_off).map_err(|_| Verdict::Drop(cnt::DROP_MALFORMED))?;
    Ok(0)
}
