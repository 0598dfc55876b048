//! Builds Ethernet/IPv4/TCP/UDP/ICMP frames with correct checksums for `BPF_PROG_TEST_RUN`
//! fixtures: `Frame::tcp(…).eth(dst_mac, src_mac)` gives the bytes a NIC would hand to XDP.
use std::net::Ipv4Addr;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv4 "don't fragment", which Linux sets on TCP; the default fragment field here.
pub const IP_DF: u16 = 0x4000;
/// IPv4 "more fragments".
pub const IP_MF: u16 = 0x2000;

/// An IPv4 packet being built; checksums are computed when it is turned into bytes, so the
/// modifiers (`with_ip_options`, `fragment`, …) can come in any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// The whole flags + fragment-offset field (offset in 8-byte units).
    pub frag: u16,
    pub tos: u8,
    /// IP options, a multiple of 4 bytes, at most 40.
    pub ip_options: Vec<u8>,
    /// The L4 header and payload, with its checksum field zero (filled in by `ip()`).
    l4: Vec<u8>,
}

impl Frame {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: Vec<u8>) -> Frame {
        Frame {
            src,
            dst,
            proto,
            ttl: 64,
            id: 0x1234,
            frag: IP_DF,
            tos: 0,
            ip_options: Vec::new(),
            l4,
        }
    }

    /// An IPv4 packet carrying `payload` as is (no checksum of its own filled in): an IPIP
    /// outer header around an inner packet, for instance.
    pub fn raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: Vec<u8>) -> Frame {
        Frame::new(src, dst, proto, payload)
    }

    /// An ICMP error (`icmp_type`/`code`, the 4 header bytes after the checksum in `rest`)
    /// quoting `quoted` (an IP header and the first bytes after it).
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
        quoted: &[u8],
    ) -> Frame {
        let mut l4 = vec![icmp_type, code, 0, 0];
        l4.extend_from_slice(&rest);
        l4.extend_from_slice(quoted);
        let mut f = Frame::new(src, dst, IPPROTO_ICMP, l4);
        f.frag = 0;
        f
    }

    /// A TCP segment without TCP options: seq 1000, ack 1 if ACK is set, window 64240.
    pub fn tcp(
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Frame {
        let ack: u32 = if flags & TCP_ACK != 0 { 1 } else { 0 };
        let mut l4 = Vec::with_capacity(20 + payload.len());
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&1000u32.to_be_bytes());
        l4.extend_from_slice(&ack.to_be_bytes());
        l4.push(5 << 4); // data offset 5 words, no options
        l4.push(flags);
        l4.extend_from_slice(&64240u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0]); // checksum
        l4.extend_from_slice(&[0, 0]); // urgent pointer
        l4.extend_from_slice(payload);
        Frame::new(src, dst, IPPROTO_TCP, l4)
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Frame {
        let len = u16::try_from(8 + payload.len()).expect("UDP payload fits in 64 KiB");
        let mut l4 = Vec::with_capacity(len as usize);
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&len.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(payload);
        Frame::new(src, dst, IPPROTO_UDP, l4)
    }

    /// An ICMP echo request (id 1, seq 1, 8 bytes of payload).
    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Frame {
        let mut l4 = vec![8, 0, 0, 0, 0, 1, 0, 1];
        l4.extend_from_slice(b"lbtests!");
        let mut f = Frame::new(src, dst, IPPROTO_ICMP, l4);
        f.frag = 0;
        f
    }

    /// Adds IP options (IHL grows by `options.len() / 4`).
    pub fn with_ip_options(mut self, options: &[u8]) -> Frame {
        assert!(
            options.len().is_multiple_of(4) && options.len() <= 40,
            "IP options must be a multiple of 4 bytes, at most 40: {options:?}"
        );
        self.ip_options = options.to_vec();
        self
    }

    /// Sets the whole flags + fragment-offset field, e.g. `IP_MF` for a first fragment or
    /// `0x0010` for one at byte 128.
    pub fn fragment(mut self, field: u16) -> Frame {
        self.frag = field;
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Frame {
        self.ttl = ttl;
        self
    }

    /// The L4 header and payload as built (checksum field still zero).
    pub fn l4(&self) -> &[u8] {
        &self.l4
    }

    /// The IPv4 packet with header, L4 and ICMP checksums filled in.
    pub fn ip(&self) -> Vec<u8> {
        let ihl = 20 + self.ip_options.len();
        let total = u16::try_from(ihl + self.l4.len()).expect("IPv4 packet fits in 64 KiB");
        let mut p = Vec::with_capacity(total as usize);
        p.push(0x40 | (ihl / 4) as u8);
        p.push(self.tos);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&self.id.to_be_bytes());
        p.extend_from_slice(&self.frag.to_be_bytes());
        p.push(self.ttl);
        p.push(self.proto);
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&self.ip_options);
        let sum = checksum(&[&p]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());

        let mut l4 = self.l4.clone();
        match self.proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                let at = if self.proto == IPPROTO_TCP { 16 } else { 6 };
                let len = (l4.len() as u16).to_be_bytes();
                let pseudo = [
                    &self.src.octets()[..],
                    &self.dst.octets()[..],
                    &[0, self.proto],
                    &len[..],
                ]
                .concat();
                let mut sum = checksum(&[&pseudo, &l4]);
                // UDP sends a computed 0 as all ones (0 means "no checksum").
                if self.proto == IPPROTO_UDP && sum == 0 {
                    sum = 0xffff;
                }
                l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            }
            IPPROTO_ICMP => {
                let sum = checksum(&[&l4]);
                l4[2..4].copy_from_slice(&sum.to_be_bytes());
            }
            _ => {}
        }
        p.extend_from_slice(&l4);
        p
    }

    /// The Ethernet frame: `dst` and `src` MACs, EtherType IPv4, then [`Frame::ip`].
    pub fn eth(&self, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        eth_header(dst, src, ETH_P_IP)
            .into_iter()
            .chain(self.ip())
            .collect()
    }
}

/// 14-byte Ethernet header.
pub fn eth_header(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(14);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&src);
    h.extend_from_slice(&ethertype.to_be_bytes());
    h
}

/// A broadcast ARP request: who has `target`? tell `sender_ip` (at `src`).
pub fn arp_request(src: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = eth_header([0xff; 6], src, ETH_P_ARP);
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&src);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// An IPv6 frame (2001:db8::1 -> 2001:db8::2, no next header, no payload).
pub fn ipv6_frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = eth_header(dst, src, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no class/flow
    f.extend_from_slice(&0u16.to_be_bytes()); // payload length
    f.push(59); // no next header
    f.push(64); // hop limit
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[15] = 1;
    f.extend_from_slice(&a);
    a[15] = 2;
    f.extend_from_slice(&a);
    f
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes every checksum of the IPv4 packet `ip` from scratch (header, and TCP/UDP with
/// the pseudo-header, or ICMP) and says which one is wrong, with the packet.
pub fn verify_checksums(ip: &[u8]) -> Result<(), String> {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if checksum(&[&ip[..ihl]]) != 0 {
        return Err(format!("bad IPv4 header checksum in {ip:02x?}"));
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total > ip.len() {
        return Err(format!(
            "IPv4 total length {total} past the end ({}): {ip:02x?}",
            ip.len()
        ));
    }
    let l4 = &ip[ihl..total];
    let ok = match ip[9] {
        IPPROTO_TCP | IPPROTO_UDP => {
            let udp_none = ip[9] == IPPROTO_UDP && l4[6] == 0 && l4[7] == 0;
            let len = (l4.len() as u16).to_be_bytes();
            let pseudo = [&ip[12..20], &[0, ip[9]], &len[..]].concat();
            udp_none || checksum(&[&pseudo, l4]) == 0
        }
        IPPROTO_ICMP => checksum(&[l4]) == 0,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad L4 checksum (protocol {}) in {ip:02x?}", ip[9]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is ddf2, so the checksum is !ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
    }

    #[test]
    fn tcp_syn_layout_and_checksums_verify() {
        let f = Frame::tcp(A, 40000, B, 80, TCP_SYN, b"").eth([1; 6], [2; 6]);
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(f[23], IPPROTO_TCP);
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&[&f[14..34]]), 0, "IP header checksum");
        let pseudo = [&A.octets()[..], &B.octets()[..], &[0, 6, 0, 20]].concat();
        assert_eq!(checksum(&[&pseudo, &f[34..]]), 0, "TCP checksum");
        assert_eq!(f[34 + 13], TCP_SYN);
    }

    #[test]
    fn udp_and_icmp_checksums_verify() {
        let u = Frame::udp(A, 5000, B, 53, b"query").ip();
        let pseudo = [&A.octets()[..], &B.octets()[..], &[0, 17, 0, 13]].concat();
        assert_eq!(checksum(&[&pseudo, &u[20..]]), 0);
        let i = Frame::icmp_echo(A, B).ip();
        assert_eq!(checksum(&[&i[20..]]), 0);
    }

    #[test]
    fn options_and_fragments_go_into_the_header() {
        let f = Frame::tcp(A, 1, B, 80, TCP_SYN, b"")
            .with_ip_options(&[1, 1, 1, 0])
            .fragment(IP_MF)
            .ip();
        assert_eq!(f[0], 0x46);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 44);
        assert_eq!(u16::from_be_bytes([f[6], f[7]]), IP_MF);
        assert_eq!(checksum(&[&f[..24]]), 0);
    }

    #[test]
    fn arp_and_ipv6_sizes() {
        assert_eq!(arp_request([2; 6], A, B).len(), 42);
        assert_eq!(ipv6_frame([1; 6], [2; 6]).len(), 14 + 40);
    }
}
