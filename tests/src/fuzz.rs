//! Packet fuzzing for the balancer: a seeded generator of valid, mutated and random frames,
//! and the invariant checker every (input, verdict, output) goes through. Pure: no kernel,
//! no root, so the checker is unit-tested here and the same code drives the bounded test
//! (`tests/tests/fuzz_packets.rs`) and the unbounded `cargo xtask fuzz`.
//!
//! The checker knows the configured services (address, port, protocol, forwarding method) and
//! the director's own addresses, nothing about the program's internals: what it asserts is
//! what an LVS director owes the network, whatever the code path.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::packet::{
    ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Frame, IP_DF, IP_MF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    TCP_ACK, TCP_SYN, arp_request, checksum, eth_header, ipv6_frame,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

const ETH: usize = 14;
const IPPROTO_IPIP: u8 = 4;
const ETH_P_8021Q: u16 = 0x8100;

/// The seed of a run: `LB_FUZZ_SEED` (decimal or 0x-hex) reproduces one, else a fresh one.
/// Print it before running, so a failure can be replayed.
pub fn seed_from_env() -> u64 {
    match std::env::var("LB_FUZZ_SEED") {
        Ok(s) => parse_seed(&s).unwrap_or_else(|| panic!("LB_FUZZ_SEED={s:?} is not a number")),
        Err(_) => fastrand::u64(..),
    }
}

pub fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `n` from env `name` (a count or a duration bound of a fuzz run), else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a number")),
        Err(_) => default,
    }
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Forwarding method of a service's real servers (one method per service here, so that the
/// checker knows which rewrite a forwarded frame must show).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dr,
    Nat,
    Tun,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub proto: u8,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub mode: Mode,
    /// Real servers (address, port).
    pub servers: Vec<(Ipv4Addr, u16)>,
}

/// What the checker may know: the services and the director's own addresses.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub services: Vec<Service>,
    /// The director's interface addresses (a source it may use for its own ICMP errors).
    pub local: Vec<Ipv4Addr>,
}

impl World {
    pub fn service(&self, proto: u8, addr: Ipv4Addr, port: u16) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.proto == proto && s.vip == addr && s.port == port)
    }

    pub fn is_vip(&self, a: Ipv4Addr) -> bool {
        self.services.iter().any(|s| s.vip == a)
    }

    pub fn is_server(&self, a: Ipv4Addr) -> bool {
        self.services
            .iter()
            .any(|s| s.servers.iter().any(|r| r.0 == a))
    }

    /// The NAT service whose real server sends from (addr, port).
    pub fn nat_server(&self, proto: u8, addr: Ipv4Addr, port: u16) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.proto == proto && s.mode == Mode::Nat && s.servers.contains(&(addr, port)))
    }
}

/// A parsed look at an Ethernet + IPv4 frame; only the fixed 20-byte header is required.
#[derive(Clone, Copy, Debug)]
pub struct Ip<'a> {
    pub frame: &'a [u8],
    pub ihl: usize,
    pub tot: usize,
    pub proto: u8,
    pub ttl: u8,
    pub frag: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

pub fn ipv4(frame: &[u8]) -> Option<Ip<'_>> {
    if frame.len() < ETH + 20 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
        return None;
    }
    let h = &frame[ETH..];
    Some(Ip {
        frame,
        ihl: usize::from(h[0] & 0x0f) * 4,
        tot: usize::from(u16::from_be_bytes([h[2], h[3]])),
        proto: h[9],
        ttl: h[8],
        frag: u16::from_be_bytes([h[6], h[7]]),
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
    })
}

impl<'a> Ip<'a> {
    /// What the kernel's `ip_rcv` checks before anything (IPVS included) sees a packet.
    pub fn malformed(&self) -> Option<&'static str> {
        let h = &self.frame[ETH..];
        if h[0] >> 4 != 4 {
            Some("IP version is not 4")
        } else if self.ihl < 20 {
            Some("IHL below 5")
        } else if h.len() < self.ihl {
            Some("IP header truncated")
        } else if self.tot < self.ihl {
            Some("total length below the header length")
        } else if self.tot > h.len() {
            Some("total length past the end of the frame")
        } else if checksum(&[&h[..self.ihl]]) != 0 {
            Some("bad IPv4 header checksum")
        } else {
            None
        }
    }

    pub fn is_fragment(&self) -> bool {
        self.frag & 0x3fff != 0
    }

    /// The IP packet as its total length says (of a malformed one: what of it the frame
    /// holds).
    pub fn packet(&self) -> &'a [u8] {
        let end = (ETH + self.tot).clamp(ETH, self.frame.len());
        &self.frame[ETH..end]
    }

    /// L4 bytes within the total length (of a malformed one: what of them the frame holds).
    pub fn l4(&self) -> &'a [u8] {
        let start = (ETH + self.ihl).min(self.frame.len());
        let end = (ETH + self.tot).clamp(start, self.frame.len());
        &self.frame[start..end]
    }

    pub fn ports(&self) -> Option<(u16, u16)> {
        let l4 = self.l4();
        (l4.len() >= 4).then(|| {
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        })
    }

    /// Whether the whole TCP (20) / UDP (8) / ICMP (8) header is inside the total length.
    pub fn l4_complete(&self) -> bool {
        let need = match self.proto {
            IPPROTO_TCP => 20,
            IPPROTO_UDP | IPPROTO_ICMP => 8,
            _ => 0,
        };
        self.l4().len() >= need
    }

    /// Whether the L4 checksum is right (a UDP checksum of 0 means none, and is right).
    pub fn l4_checksum_ok(&self) -> bool {
        let l4 = self.l4();
        match self.proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                if self.proto == IPPROTO_UDP && l4.len() >= 8 && l4[6] == 0 && l4[7] == 0 {
                    return true;
                }
                let len = (l4.len() as u16).to_be_bytes();
                let h = &self.frame[ETH..];
                let pseudo = [&h[12..20], &[0, self.proto], &len[..]].concat();
                checksum(&[&pseudo, l4]) == 0
            }
            IPPROTO_ICMP => checksum(&[l4]) == 0,
            _ => true,
        }
    }

    pub fn icmp_error_type(&self) -> Option<u8> {
        let l4 = self.l4();
        match l4.first() {
            Some(&t)
                if self.proto == IPPROTO_ICMP
                    && l4.len() >= 8
                    && matches!(t, 3 | 4 | 5 | 11 | 12) =>
            {
                Some(t)
            }
            _ => None,
        }
    }
}

/// What the input was, for the checker: decides what the program may do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not IPv4 (ARP, IPv6, VLAN, anything): passed byte for byte.
    NotIpv4,
    /// IPv4 the kernel would drop (bad header, lengths, checksum) or a TCP/UDP packet for a
    /// service or from a NAT real server too short for its header: never forwarded, never
    /// rewritten (dropping or passing unchanged are both fine).
    Malformed(&'static str),
    /// A fragment: passed to the stack unchanged (documented scope).
    Fragment,
    /// Well-formed, and neither for a service, nor a NAT reply, nor an ICMP error that may be
    /// about a connection: passed byte for byte.
    Other,
    /// For a service with this method.
    Service(Mode),
    /// From a NAT real server's service address and port: a reply to SNAT.
    NatReply,
    /// An ICMP error quoting a packet to or from a VIP or a real server.
    IcmpAbout,
}

pub fn role(w: &World, frame: &[u8]) -> Role {
    let Some(ip) = ipv4(frame) else {
        if frame.len() >= ETH && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IP {
            return Role::Malformed("IP header truncated");
        }
        return Role::NotIpv4;
    };
    if let Some(why) = ip.malformed() {
        return Role::Malformed(why);
    }
    if ip.is_fragment() {
        return Role::Fragment;
    }
    if special(ip.src) && (w.is_vip(ip.dst) || w.is_server(ip.src)) {
        // The kernel drops martian sources (0/8, 127/8, multicast, broadcast) in routing,
        // before IPVS sees them.
        return Role::Malformed("martian source");
    }
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let l4 = ip.l4();
            let (sport, dport) = match ip.ports() {
                Some(p) => p,
                None if w.is_vip(ip.dst) || w.is_server(ip.src) => {
                    return Role::Malformed("TCP/UDP ports past the total length");
                }
                None => return Role::Other,
            };
            let svc = w.service(ip.proto, ip.dst, dport).map(|s| s.mode);
            let reply = w.nat_server(ip.proto, ip.src, sport).is_some();
            if (svc.is_some() || reply) && !ip.l4_complete() {
                let _ = l4;
                return Role::Malformed("L4 header past the total length");
            }
            match (svc, reply) {
                (Some(m), _) => Role::Service(m),
                (None, true) => Role::NatReply,
                _ => Role::Other,
            }
        }
        IPPROTO_ICMP => {
            // An ICMP header, or an error's quote (header and ports), cut short by the total
            // length while the frame goes on: nothing past the total length is the packet's.
            let l4 = ip.l4();
            let frame_l4 = &frame[ETH + ip.ihl..];
            // Whether the frame (read past the total length, as a careless parser would)
            // quotes a packet of ours.
            let quotes_ours = frame_l4.len() >= 8 + 20 && {
                let q = &frame_l4[8..];
                let qs = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
                let qd = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
                [qs, qd].iter().any(|a| w.is_vip(*a) || w.is_server(*a))
            };
            let ours = w.is_vip(ip.dst) || w.is_server(ip.src) || quotes_ours;
            if ours && l4.len() < 8 && frame_l4.len() >= 8 {
                return Role::Malformed("L4 header past the total length");
            }
            if ours
                && matches!(l4.first(), Some(3 | 4 | 5 | 11 | 12))
                && l4.len() < 8 + 24
                && frame_l4.len() > l4.len()
            {
                return Role::Malformed("L4 header past the total length");
            }
            if ip.icmp_error_type().is_some() {
                let q = &ip.l4()[8..];
                if q.len() >= 20 {
                    let qs = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
                    let qd = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
                    if [qs, qd].iter().any(|a| w.is_vip(*a) || w.is_server(*a)) {
                        return Role::IcmpAbout;
                    }
                }
            }
            Role::Other
        }
        _ => Role::Other,
    }
}

/// How a frame left the program, as the checker classified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Dropped,
    /// Forwarded (or passed rewritten) with only the MACs changed.
    Dr,
    /// In an outer IPv4 header (IPIP).
    Tun,
    /// Addresses/ports rewritten (DNAT, SNAT, a translated ICMP error).
    Nat,
    /// An ICMP error the director generated about the input.
    IcmpSent,
}

/// One broken invariant: a short class (for grouping) and what exactly was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub class: &'static str,
    pub detail: String,
}

fn v(class: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        class,
        detail: detail.into(),
    }
}

fn special(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 0 || o[0] == 127 || o[0] >= 224
}

/// Checks one run of the balancer (`lb_xdp`): `input`, the verdict, and the frame it left.
/// Returns how the frame left, or the first invariant it breaks.
pub fn check(w: &World, input: &[u8], action: u32, output: &[u8]) -> Result<Outcome, Violation> {
    let role = role(w, input);
    let forwarded = action == XDP_TX || action == XDP_REDIRECT;
    match action {
        XDP_ABORTED => return Err(v("aborted", "XDP_ABORTED")),
        XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT => {}
        a => return Err(v("unknown-verdict", format!("verdict {a}"))),
    }
    let unchanged = input == output;
    match role {
        Role::NotIpv4 | Role::Other | Role::Fragment => {
            if action != XDP_PASS || !unchanged {
                let short = ipv4(input).is_some_and(|i| {
                    matches!(i.proto, IPPROTO_TCP | IPPROTO_UDP) && i.ports().is_none()
                });
                let class = match role {
                    Role::NotIpv4 => "non-ipv4-not-passed-unchanged",
                    Role::Fragment => "fragment-not-passed-unchanged",
                    _ if short => {
                        "not-for-a-service-not-passed-unchanged: TCP/UDP with under 4 L4 bytes"
                    }
                    _ => "not-for-a-service-not-passed-unchanged",
                };
                return Err(v(
                    class,
                    format!("{role:?}: verdict {action}, output changed: {}", !unchanged),
                ));
            }
            return Ok(Outcome::Passed);
        }
        Role::Malformed(why) => {
            if forwarded || (action == XDP_PASS && !unchanged) {
                let icmp_back = ipv4(output)
                    .zip(ipv4(input))
                    .is_some_and(|(o, i)| o.proto == IPPROTO_ICMP && o.dst == i.src);
                let class = match why {
                    "martian source" if icmp_back => "icmp-error-to-special-address",
                    "bad IPv4 header checksum" => "malformed-forwarded: bad IP checksum",
                    "total length past the end of the frame" => {
                        "malformed-forwarded: total length past the frame"
                    }
                    "L4 header past the total length" | "TCP/UDP ports past the total length" => {
                        "malformed-forwarded: L4 header past the total length"
                    }
                    "martian source" => "malformed-forwarded: martian source",
                    _ => "malformed-forwarded: other",
                };
                let how = if forwarded {
                    format!("forwarded with verdict {action}")
                } else {
                    "passed to the stack rewritten".into()
                };
                return Err(v(class, format!("{why}: {how}")));
            }
            return Ok(if action == XDP_DROP {
                Outcome::Dropped
            } else {
                Outcome::Passed
            });
        }
        Role::Service(_) | Role::NatReply | Role::IcmpAbout => {}
    }
    if action == XDP_DROP {
        return Ok(Outcome::Dropped);
    }
    if action == XDP_PASS && unchanged {
        return Ok(Outcome::Passed);
    }
    // Forwarded, or handed to the kernel rewritten: the frame must be one a router would
    // accept, and the rewrite the one the role allows.
    let inp = ipv4(input).expect("checked above");
    let Some(out) = ipv4(output) else {
        return Err(v(
            "output-not-ipv4",
            "the frame left is not Ethernet + IPv4",
        ));
    };
    if let Some(why) = out.malformed() {
        return Err(v("output-malformed", format!("output: {why}")));
    }
    let in_pad = input.len() - ETH - inp.tot;
    let out_pad = output.len() - ETH - out.tot;
    if out_pad > in_pad {
        return Err(v(
            "output-length",
            format!(
                "output total length {} but frame carries {} (input padding {in_pad})",
                out.tot,
                output.len() - ETH
            ),
        ));
    }
    if out.is_fragment() {
        return Err(v("output-fragment", "output is a fragment"));
    }
    // An ICMP error about the input, from the director.
    if out.proto == IPPROTO_ICMP
        && let Some(t) = out.icmp_error_type()
        && out.dst == inp.src
        && out.l4().len() >= 8 + 20
        && out.l4()[8..8 + 12.min(out.l4().len() - 8)] == inp.packet()[..12]
    {
        if !out.l4_checksum_ok() {
            return Err(v("icmp-sent-bad-checksum", "ICMP checksum wrong"));
        }
        let quote = &out.l4()[8..];
        if inp.packet().len() < inp.ihl + 8 || quote != &inp.packet()[..inp.ihl + 8] {
            return Err(v(
                "icmp-sent-bad-quote",
                "the quote is not the input's IP header and first 8 bytes",
            ));
        }
        if inp.icmp_error_type().is_some() {
            return Err(v(
                "icmp-error-about-icmp-error",
                format!("type {t} sent about an ICMP error (RFC 1122 3.2.2)"),
            ));
        }
        if special(out.dst) {
            return Err(v(
                "icmp-error-to-special-address",
                format!("type {t} sent to {} (RFC 1122 3.2.2)", out.dst),
            ));
        }
        if !(w.is_vip(out.src) || w.local.contains(&out.src)) {
            return Err(v(
                "icmp-error-foreign-source",
                format!(
                    "type {t} sent from {}, not a VIP nor the director's address",
                    out.src
                ),
            ));
        }
        if t == 11 && inp.ttl > 1 {
            return Err(v(
                "time-exceeded-with-ttl-left",
                format!("time exceeded for TTL {}", inp.ttl),
            ));
        }
        if t == 3 && out.l4()[1] == 4 && inp.frag & IP_DF == 0 {
            return Err(v(
                "frag-needed-without-df",
                "frag needed for a packet without DF",
            ));
        }
        if role == Role::Service(Mode::Dr) {
            return Err(v("icmp-sent-for-dr", "an ICMP error about a DR packet"));
        }
        return Ok(Outcome::IcmpSent);
    }
    let in_ip = inp.packet();
    // DR: nothing past the MACs changes.
    if output.len() >= ETH && output[ETH..] == input[ETH..] {
        if !matches!(role, Role::Service(Mode::Dr) | Role::IcmpAbout) {
            return Err(v(
                "dr-rewrite-for-non-dr",
                format!("{role:?} forwarded with only its MACs changed"),
            ));
        }
        if role == Role::IcmpAbout && !w.is_vip(inp.dst) {
            return Err(v(
                "icmp-error-not-for-a-vip-forwarded",
                format!(
                    "an ICMP error to {} (not a VIP) sent to a real server",
                    inp.dst
                ),
            ));
        }
        return Ok(Outcome::Dr);
    }
    if role == Role::Service(Mode::Dr) {
        return Err(v(
            "dr-changed-ip-or-l4",
            "a DR packet left with bytes past the MACs changed",
        ));
    }
    if out.proto == IPPROTO_IPIP && inp.proto != IPPROTO_IPIP {
        if !matches!(role, Role::Service(Mode::Tun) | Role::IcmpAbout) {
            return Err(v("tun-for-non-tun", format!("{role:?} encapsulated")));
        }
        if out.ihl != 20 {
            return Err(v("tun-outer-header", format!("outer IHL {}", out.ihl)));
        }
        if out.tot != 20 + inp.tot {
            return Err(v(
                "tun-outer-length",
                format!(
                    "outer total length {} for an inner packet of {}",
                    out.tot, inp.tot
                ),
            ));
        }
        if out.l4() != in_ip {
            return Err(v(
                "tun-inner-changed",
                "the inner packet is not the input's",
            ));
        }
        if role == Role::IcmpAbout && !w.is_vip(inp.dst) {
            return Err(v(
                "icmp-error-not-for-a-vip-forwarded",
                format!(
                    "an ICMP error to {} (not a VIP) tunnelled to a real server",
                    inp.dst
                ),
            ));
        }
        if out.ttl == 0 {
            return Err(v("tun-outer-header", "outer TTL 0"));
        }
        return Ok(Outcome::Tun);
    }
    // NAT: a DNAT, an SNAT or a translated ICMP error.
    if !matches!(
        role,
        Role::Service(Mode::Nat) | Role::NatReply | Role::IcmpAbout
    ) {
        return Err(v("nat-rewrite-for-non-nat", format!("{role:?} rewritten")));
    }
    if out.ihl != inp.ihl || out.tot != inp.tot || out.proto != inp.proto {
        return Err(v(
            "nat-length-changed",
            format!(
                "IHL/total length/protocol {}/{}/{} became {}/{}/{}",
                inp.ihl, inp.tot, inp.proto, out.ihl, out.tot, out.proto
            ),
        ));
    }
    if inp.ttl < 2 || out.ttl != inp.ttl - 1 {
        return Err(v(
            "nat-ttl",
            format!("TTL {} forwarded as TTL {}", inp.ttl, out.ttl),
        ));
    }
    if inp.l4_checksum_ok() && !out.l4_checksum_ok() {
        return Err(v(
            "nat-l4-checksum",
            format!("protocol {}: a right checksum became wrong", out.proto),
        ));
    }
    if !inp.l4_checksum_ok() && out.l4_checksum_ok() && out.proto != IPPROTO_UDP {
        return Err(v(
            "nat-l4-checksum-repaired",
            "a wrong checksum became right (the real server cannot tell corruption)",
        ));
    }
    // The payload after the L4 header is the sender's.
    let (il4, ol4) = (inp.l4(), out.l4());
    let hdr = match inp.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        // The ICMP header, and the quoted IP header with its first 8 bytes, translated.
        _ => il4.get(8).map_or(8, |v| 8 + usize::from(v & 0x0f) * 4 + 8),
    };
    if il4.len() > hdr && il4[hdr..] != ol4[hdr..] {
        return Err(v("nat-payload-changed", "bytes past the L4 header changed"));
    }
    match role {
        Role::Service(_) => {
            let (dport, sport) = (out.ports().map(|p| p.1), out.ports().map(|p| p.0));
            let ok = out.src == inp.src
                && sport == inp.ports().map(|p| p.0)
                && w.services.iter().any(|s| {
                    s.mode == Mode::Nat
                        && s.proto == inp.proto
                        && s.vip == inp.dst
                        && s.servers
                            .iter()
                            .any(|r| Some(r.1) == dport && r.0 == out.dst)
                });
            if !ok {
                return Err(v(
                    "dnat-wrong-address",
                    format!("DNAT to {}:{:?} from {}", out.dst, dport, out.src),
                ));
            }
        }
        Role::NatReply => {
            let (sport, _) = inp.ports().expect("complete");
            let svc = w
                .nat_server(inp.proto, inp.src, sport)
                .expect("role says so");
            let ok = out.dst == inp.dst
                && out.ports().map(|p| p.1) == inp.ports().map(|p| p.1)
                && w.services.iter().any(|s| {
                    s.mode == Mode::Nat
                        && s.proto == svc.proto
                        && s.vip == out.src
                        && s.servers.contains(&(inp.src, sport))
                        && out.ports().map(|p| p.0) == Some(s.port)
                });
            if !ok {
                return Err(v(
                    "snat-wrong-address",
                    format!("reply from {}:{sport} SNATed to {}", inp.src, out.src),
                ));
            }
        }
        _ => {}
    }
    Ok(Outcome::Nat)
}

/// Checks one run of the decapsulation program (`lb_decap`): it always passes; it either
/// leaves the frame alone or strips an outer header that was well-formed, plain IPIP, not a
/// fragment, around an IPv4 packet for one of `vips`.
pub fn check_decap(
    vips: &[Ipv4Addr],
    input: &[u8],
    action: u32,
    output: &[u8],
) -> Result<(), Violation> {
    if action != XDP_PASS {
        return Err(v("decap-verdict", format!("verdict {action}")));
    }
    if input == output {
        return Ok(());
    }
    let Some(outer) = ipv4(input) else {
        return Err(v("decap-non-ipv4-changed", "a non-IPv4 frame was changed"));
    };
    if outer.proto != IPPROTO_IPIP {
        return Err(v("decap-non-ipip-changed", "a non-IPIP packet was changed"));
    }
    if output.len() + 20 != input.len()
        || output[..12] != input[..12]
        || output[12..14] != ETH_P_IP.to_be_bytes()
        || output[ETH..] != input[ETH + 20..]
    {
        return Err(v(
            "decap-wrong-strip",
            "the output is not the input without its outer header",
        ));
    }
    if let Some(why) = outer.malformed() {
        return Err(v("decap-malformed-outer", format!("outer header: {why}")));
    }
    if outer.ihl != 20 || outer.is_fragment() {
        return Err(v(
            "decap-out-of-scope",
            "outer header with options or a fragment was stripped",
        ));
    }
    let inner = &input[ETH + 20..];
    let dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
    if inner[0] >> 4 != 4 || !vips.contains(&dst) {
        return Err(v(
            "decap-not-for-a-vip",
            format!("stripped for inner destination {dst}"),
        ));
    }
    Ok(())
}

/// A class's count, and its first case: what was seen, the input and the output.
pub type Example = (u64, String, Vec<u8>, Vec<u8>);

/// Violations grouped by class: a count and the first input and detail of each.
#[derive(Default)]
pub struct Report {
    pub runs: u64,
    pub classes: BTreeMap<&'static str, Example>,
    /// Inputs by how they were made, and outcomes by kind (to show what was exercised).
    pub made: BTreeMap<&'static str, u64>,
    pub outcomes: BTreeMap<String, u64>,
}

impl Report {
    pub fn add(
        &mut self,
        prog: &str,
        how: &'static str,
        input: &[u8],
        output: &[u8],
        r: &Result<Outcome, Violation>,
    ) {
        self.runs += 1;
        *self.made.entry(how).or_default() += 1;
        match r {
            Ok(o) => *self.outcomes.entry(format!("{prog} {o:?}")).or_default() += 1,
            Err(e) => {
                let entry = self.classes.entry(e.class).or_insert_with(|| {
                    (
                        0,
                        format!("{prog}, {how}: {}", e.detail),
                        input.to_vec(),
                        output.to_vec(),
                    )
                });
                entry.0 += 1;
            }
        }
    }

    pub fn violations(&self) -> u64 {
        self.classes.values().map(|c| c.0).sum()
    }

    /// The counts, and per class of violation its count and first example in hex.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} frames checked, {} violations in {} classes\n",
            self.runs,
            self.violations(),
            self.classes.len()
        );
        let _ = writeln!(s, "inputs: {:?}", self.made);
        let _ = writeln!(s, "outcomes: {:?}", self.outcomes);
        for (class, (n, detail, input, output)) in &self.classes {
            let _ = writeln!(s, "VIOLATION {class}: {n}× — e.g. {detail}");
            if !input.is_empty() {
                let _ = writeln!(s, "  input  {}\n  output {}", hex(input), hex(output));
            }
        }
        s
    }
}

// ------------------------------------------------------------------------------------------
// Generation.

/// A connection the generator opened and saw forwarded, to aim later packets, replies and
/// ICMP errors at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub client: Ipv4Addr,
    pub cport: u16,
    pub vip: Ipv4Addr,
    pub vport: u16,
    pub mode: Mode,
    /// NAT: the real server the last request was DNATed to (unknown when the last request
    /// was not DNATed: then the connection may have been rescheduled).
    pub server: Option<(Ipv4Addr, u16)>,
}

/// One generated frame: where it arrives (the servers' side or the clients') and how it was
/// made; `expect_snat` marks an unmutated reply of a NAT connection whose last request was
/// DNATed to its sender: it must be SNATed.
#[derive(Clone, Debug)]
pub struct Case {
    pub frame: Vec<u8>,
    pub from_servers: bool,
    pub how: &'static str,
    pub expect_snat: bool,
}

/// MACs of the test topology: the frames' destination on each side, and the peers'.
#[derive(Clone, Copy, Debug)]
pub struct Macs {
    pub ext: [u8; 6],
    pub int: [u8; 6],
    pub client: [u8; 6],
    pub server: [u8; 6],
}

pub struct Gen {
    pub rng: fastrand::Rng,
    pub world: World,
    pub macs: Macs,
    /// Known connections by (proto, client, cport, vip, vport).
    pub flows: HashMap<(u8, Ipv4Addr, u16, Ipv4Addr, u16), Flow>,
    keys: Vec<(u8, Ipv4Addr, u16, Ipv4Addr, u16)>,
    pub clients: Vec<Ipv4Addr>,
    /// The last outcomes of each connection's packets, to explain a violation about it.
    history: HashMap<(u8, Ipv4Addr, u16, Ipv4Addr, u16), Vec<String>>,
}

impl Gen {
    /// `clients` are the sources of client traffic: a small pool, so that packets meet
    /// connections that exist (and the connection table is not flooded).
    pub fn new(seed: u64, world: World, macs: Macs, clients: Vec<Ipv4Addr>) -> Gen {
        Gen {
            rng: fastrand::Rng::with_seed(seed),
            world,
            macs,
            flows: HashMap::new(),
            keys: Vec::new(),
            clients,
            history: HashMap::new(),
        }
    }

    fn client(&mut self) -> Ipv4Addr {
        self.clients[self.rng.usize(..self.clients.len())]
    }

    fn cport(&mut self) -> u16 {
        // 64 ports per client: connections repeat.
        40000 + self.rng.u16(..64)
    }

    fn ttl(&mut self) -> u8 {
        match self.rng.u8(..20) {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => 64,
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = match self.rng.u8(..8) {
            0..=3 => 0,
            4..=6 => self.rng.usize(..64),
            _ => self.rng.usize(..1400),
        };
        (0..n).map(|_| self.rng.u8(..)).collect()
    }

    fn options(&mut self, f: Frame) -> Frame {
        if self.rng.u8(..10) != 0 {
            return f;
        }
        // NOPs and an end-of-list, or random bytes: the header grows either way.
        let words = self.rng.usize(1..=10);
        let opts: Vec<u8> = if self.rng.bool() {
            let mut o = vec![1u8; words * 4];
            o[words * 4 - 1] = 0;
            o
        } else {
            (0..words * 4).map(|_| self.rng.u8(..)).collect()
        };
        f.with_ip_options(&opts)
    }

    fn pick_flow(&mut self, mode: Option<Mode>) -> Option<Flow> {
        for _ in 0..8 {
            if self.keys.is_empty() {
                return None;
            }
            let k = self.keys[self.rng.usize(..self.keys.len())];
            let f = self.flows[&k];
            if mode.is_none_or(|m| f.mode == m) {
                return Some(f);
            }
        }
        None
    }

    /// A well-formed TCP segment or UDP datagram for a service, from a client (a new or a
    /// known connection).
    fn for_service(&mut self) -> Frame {
        let (proto, client, cport, vip, vport) = match self.pick_flow(None) {
            Some(f) if self.rng.bool() => (f.proto, f.client, f.cport, f.vip, f.vport),
            _ => {
                let s = &self.world.services[self.rng.usize(..self.world.services.len())];
                let (proto, vip, port) = (s.proto, s.vip, s.port);
                (proto, self.client(), self.cport(), vip, port)
            }
        };
        let payload = self.payload();
        let mut f = if proto == IPPROTO_TCP {
            let flags = match self.rng.u8(..10) {
                0..=3 => TCP_SYN,
                4..=7 => TCP_ACK,
                8 => TCP_SYN | TCP_ACK,
                _ => self.rng.u8(..),
            };
            let p = if flags & TCP_SYN != 0 {
                &[][..]
            } else {
                &payload
            };
            Frame::tcp(client, cport, vip, vport, flags, p)
        } else {
            Frame::udp(client, cport, vip, vport, &payload)
        };
        f.ttl = self.ttl();
        f.id = self.rng.u16(..);
        if self.rng.u8(..4) == 0 {
            f.frag = 0;
        }
        self.options(f)
    }

    /// A NAT real server's packet back to a client of a known connection.
    fn nat_reply(&mut self) -> Option<(Frame, bool)> {
        let f = self.pick_flow(Some(Mode::Nat))?;
        let (server, known) = match f.server {
            Some(s) => (s, true),
            None => {
                let svc = self.world.service(f.proto, f.vip, f.vport)?;
                (svc.servers[self.rng.usize(..svc.servers.len())], false)
            }
        };
        let payload = self.payload();
        let mut fr = if f.proto == IPPROTO_TCP {
            let flags = match self.rng.u8(..4) {
                0 => TCP_SYN | TCP_ACK,
                1 | 2 => TCP_ACK,
                _ => self.rng.u8(..),
            };
            Frame::tcp(server.0, server.1, f.client, f.cport, flags, &payload)
        } else {
            Frame::udp(server.0, server.1, f.client, f.cport, &payload)
        };
        fr.ttl = self.ttl();
        fr.id = self.rng.u16(..);
        // Replies to martian clients may not be routable: no expectation there. A client
        // with one of the director's own addresses is martian too (the kernel would have
        // dropped its request, `fib_validate_source`), and its reply has nowhere to go.
        let plain =
            fr.ttl > 1 && known && !special(f.client) && !self.world.local.contains(&f.client);
        Some((self.options(fr), plain))
    }

    /// An ICMP error quoting a known connection's packet (request, DNATed request or reply),
    /// or a random flow.
    fn icmp_error(&mut self) -> (Frame, bool) {
        let (t, code, rest) = match self.rng.u8(..5) {
            0 => (3, 4, [0, 0, 0x05, 0x78]),
            1 => (3, self.rng.u8(..16), [0; 4]),
            2 => (11, 0, [0; 4]),
            3 => (12, 0, [0x14, 0, 0, 0]),
            _ => (self.rng.u8(..20), self.rng.u8(..16), [0; 4]),
        };
        // Some errors quote a lot (as Linux's do, up to 576 bytes in all) and carry DF, so
        // that they can meet a path too small for them.
        let long = self.rng.u8(..6) == 0;
        let quote_len = if long {
            self.rng.usize(400..1200)
        } else {
            [28, 28, 48, 20, 24, 8][self.rng.usize(..6)]
        };
        let filler = vec![0u8; if long { quote_len } else { 10 }];
        let flow = self.pick_flow(None);
        let (quoted, src, dst, from_servers) = match flow {
            Some(f) if self.rng.u8(..5) != 0 => {
                let mk = |p: u8, s, sp, d, dp| {
                    if p == IPPROTO_TCP {
                        Frame::tcp(s, sp, d, dp, TCP_ACK, &filler)
                    } else {
                        Frame::udp(s, sp, d, dp, &filler)
                    }
                };
                match (f.mode, f.server, self.rng.bool()) {
                    // The real server complains about the DNATed request.
                    (Mode::Nat, Some((rs, rp)), true) => (
                        mk(f.proto, f.client, f.cport, rs, rp).ttl(63).ip(),
                        rs,
                        f.client,
                        true,
                    ),
                    // A router on the clients' side complains about our reply.
                    _ => {
                        let router = self.client();
                        (
                            mk(f.proto, f.vip, f.vport, f.client, f.cport).ip(),
                            router,
                            f.vip,
                            false,
                        )
                    }
                }
            }
            _ => {
                let s = &self.world.services[self.rng.usize(..self.world.services.len())];
                let (vip, port, proto) = (s.vip, s.port, s.proto);
                let q = if self.rng.bool() {
                    Frame::tcp(vip, port, self.client(), self.rng.u16(..), TCP_ACK, b"").ip()
                } else {
                    let p = if self.rng.bool() { proto } else { IPPROTO_ICMP };
                    let bytes = (0..8).map(|_| self.rng.u8(..)).collect();
                    short_l4(vip, self.client(), p, bytes)[ETH..].to_vec()
                };
                (q, self.client(), vip, false)
            }
        };
        let mut f = Frame::icmp_error(
            src,
            dst,
            t,
            code,
            rest,
            &quoted[..quote_len.min(quoted.len())],
        );
        f.ttl = self.ttl();
        if long {
            f.frag = IP_DF;
        }
        (f, from_servers)
    }

    /// Traffic that is none of the balancer's business: other addresses, other ports of the
    /// VIPs, other protocols, echo requests.
    fn other(&mut self) -> Vec<u8> {
        let vip = self.world.services[0].vip;
        let dst = match self.rng.u8(..4) {
            0 => vip,
            1 => Ipv4Addr::new(203, 0, 113, self.rng.u8(..)),
            2 => Ipv4Addr::new(192, 0, 2, self.rng.u8(..)),
            _ => Ipv4Addr::new(198, 51, 100, self.rng.u8(..)),
        };
        let src = self.client();
        let payload = self.payload();
        let mut f = match self.rng.u8(..5) {
            0 => Frame::tcp(src, self.cport(), dst, 22, self.rng.u8(..), &payload),
            1 => Frame::udp(src, self.cport(), dst, self.rng.u16(1..), &payload),
            2 => Frame::icmp_echo(src, dst),
            3 => Frame::raw(src, dst, [47, 50, 89, 132][self.rng.usize(..4)], payload),
            // A packet with fewer than 4 L4 bytes (well-formed at the IP level).
            _ => {
                let n = self.rng.usize(..4);
                let p = [IPPROTO_TCP, IPPROTO_UDP][self.rng.usize(..2)];
                let mut f = short_l4(src, dst, p, payload.into_iter().take(n).collect());
                f[..6].copy_from_slice(&self.macs.ext);
                f[6..12].copy_from_slice(&self.macs.client);
                return f;
            }
        };
        f.ttl = self.ttl();
        self.options(f).eth(self.macs.ext, self.macs.client)
    }

    /// A valid first packet of a connection (a SYN, a datagram) to a random service from a
    /// random client: sent first, so that later packets meet established connections.
    pub fn opener(&mut self) -> Case {
        let s = &self.world.services[self.rng.usize(..self.world.services.len())];
        let (proto, vip, port) = (s.proto, s.vip, s.port);
        let (client, cport) = (self.client(), self.cport());
        let f = if proto == IPPROTO_TCP {
            Frame::tcp(client, cport, vip, port, TCP_SYN, b"")
        } else {
            Frame::udp(client, cport, vip, port, b"hello")
        };
        Case {
            frame: f.eth(self.macs.ext, self.macs.client),
            from_servers: false,
            how: "opener",
            expect_snat: false,
        }
    }

    /// The next frame to try.
    pub fn next_case(&mut self) -> Case {
        let m = self.macs;
        let (mut frame, from_servers, how, plain) = match self.rng.u8(..100) {
            0..=34 => {
                let f = self.for_service();
                (f.eth(m.ext, m.client), false, "service", false)
            }
            35..=49 => match self.nat_reply() {
                Some((f, plain)) => (f.eth(m.int, m.server), true, "nat-reply", plain),
                None => (
                    self.for_service().eth(m.ext, m.client),
                    false,
                    "service",
                    false,
                ),
            },
            50..=61 => {
                let (f, srv) = self.icmp_error();
                let mac = if srv {
                    (m.int, m.server)
                } else {
                    (m.ext, m.client)
                };
                (f.eth(mac.0, mac.1), srv, "icmp-error", false)
            }
            62..=73 => (self.other(), false, "other", false),
            74..=79 => {
                let f = match self.rng.u8(..4) {
                    0 => arp_request(m.client, self.client(), self.world.services[0].vip),
                    1 => ipv6_frame(m.ext, m.client),
                    2 => {
                        // A VLAN-tagged frame for a service.
                        let inner = self.for_service().eth(m.ext, m.client);
                        let mut f = inner[..12].to_vec();
                        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
                        f.extend_from_slice(&self.rng.u16(..4096).to_be_bytes());
                        f.extend_from_slice(&inner[12..]);
                        f
                    }
                    _ => {
                        let mut f = eth_header(m.ext, m.client, self.rng.u16(..));
                        f.extend((0..self.rng.usize(..80)).map(|_| self.rng.u8(..)));
                        f
                    }
                };
                (f, false, "not-ipv4", false)
            }
            80..=84 => {
                // IPIP for the decapsulation program (and the balancer: not its business).
                let inner = self.for_service();
                let mut outer = Frame::raw(
                    Ipv4Addr::new(192, 0, 2, 1),
                    self.world.services[0].servers[0].0,
                    IPPROTO_IPIP,
                    inner.ip(),
                );
                outer.id = self.rng.u16(..);
                (outer.eth(m.ext, m.client), false, "ipip", false)
            }
            _ => {
                // Random bytes, often behind a plausible Ethernet + IPv4 start.
                let n = self.rng.usize(ETH..120);
                let mut f: Vec<u8> = (0..n).map(|_| self.rng.u8(..)).collect();
                if self.rng.bool() && f.len() >= 15 {
                    f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
                    f[14] = 0x40 | (f[14] & 0x0f);
                    if f.len() >= 34 && self.rng.bool() {
                        let s = &self.world.services[self.rng.usize(..self.world.services.len())];
                        f[23] = s.proto;
                        f[30..34].copy_from_slice(&s.vip.octets());
                        if f.len() >= 38 && self.rng.bool() {
                            f[36..38].copy_from_slice(&s.port.to_be_bytes());
                        }
                        fix_checksums(&mut f);
                    }
                }
                (f, self.rng.u8(..4) == 0, "random", false)
            }
        };
        let mut how = how;
        let mut mutated = false;
        if how != "random" && self.rng.u8(..10) < 6 {
            for _ in 0..self.rng.usize(1..=3) {
                how = self.mutate(&mut frame);
            }
            mutated = true;
        }
        Case {
            frame,
            from_servers,
            how,
            expect_snat: plain && !mutated,
        }
    }

    /// One mutation of a frame (the name says which): truncation, IHL, total length,
    /// fragments, TTL, checksums, TCP flags, byte flips, padding; half of them with the
    /// checksums made right again, so that what is odd is the mutation and not only a
    /// checksum.
    pub fn mutate(&mut self, f: &mut Vec<u8>) -> &'static str {
        let ip = ipv4(f).is_some();
        let what = self.rng.u8(..13);
        let name = match what {
            0 => {
                // Not below 14 bytes: BPF_PROG_TEST_RUN refuses shorter frames (EINVAL),
                // as no NIC hands XDP less than an Ethernet header.
                let at = self.rng.usize(ETH.min(f.len())..=f.len());
                f.truncate(at);
                "truncated"
            }
            1 if ip => {
                f[ETH] = (f[ETH] & 0xf0) | self.rng.u8(..16);
                "ihl"
            }
            2 if ip => {
                let tot = u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]);
                let new = match self.rng.u8(..4) {
                    0 => tot.wrapping_add(self.rng.u16(1..64)),
                    1 => tot.saturating_sub(self.rng.u16(1..64)),
                    2 => self.rng.u16(..),
                    _ => 0xffff,
                };
                f[ETH + 2..ETH + 4].copy_from_slice(&new.to_be_bytes());
                "tot-len"
            }
            3 if ip => {
                let field: u16 = match self.rng.u8(..4) {
                    0 => IP_MF,
                    1 => self.rng.u16(1..0x2000),
                    2 => IP_MF | IP_DF | self.rng.u16(..0x2000),
                    _ => 0x8000, // the reserved bit
                };
                f[ETH + 6..ETH + 8].copy_from_slice(&field.to_be_bytes());
                "fragment"
            }
            4 if ip => {
                f[ETH + 8] = [0, 1, 2, 255][self.rng.usize(..4)];
                "ttl"
            }
            5 if ip => {
                f[ETH + 10] ^= 1 << self.rng.u8(..8);
                return "bad-ip-checksum";
            }
            6 if ip && f.len() > ETH + 20 + 8 => {
                // Damage the L4 checksum, whichever protocol: the last bytes are payload or
                // header, both covered.
                let at = f.len() - 1;
                f[at] ^= 0x5a;
                let ihl = usize::from(f[ETH] & 0x0f) * 4;
                let sum_at = match f[ETH + 9] {
                    IPPROTO_TCP => ETH + ihl + 16,
                    IPPROTO_UDP => ETH + ihl + 6,
                    _ => ETH + ihl + 2,
                };
                if sum_at + 1 < f.len() {
                    f[sum_at] ^= 0x11;
                }
                fix_ip_checksum(f);
                return "bad-l4-checksum";
            }
            7 if ip && f.len() > ETH + 20 + 13 => {
                let ihl = usize::from(f[ETH] & 0x0f) * 4;
                if ETH + ihl + 13 < f.len() {
                    f[ETH + ihl + 13] = self.rng.u8(..);
                }
                "tcp-flags"
            }
            8 if !f.is_empty() => {
                let at = self.rng.usize(..f.len());
                f[at] ^= 1 << self.rng.u8(..8);
                "bit-flip"
            }
            9 if !f.is_empty() => {
                let at = self.rng.usize(..f.len());
                f[at] = self.rng.u8(..);
                "byte"
            }
            10 => {
                // Ethernet padding (or trailing junk) past the IP packet.
                let n = self.rng.usize(1..48);
                f.extend((0..n).map(|_| if self.rng.bool() { 0 } else { self.rng.u8(..) }));
                "padding"
            }
            11 if ip && f.len() > ETH + 24 => {
                // IP options after the fact: IHL grows over what was the L4 header.
                let words = self.rng.u8(1..=10);
                f[ETH] = 0x40 | (5 + words).min(15);
                "options"
            }
            12 if f.len() >= 14 => {
                let t = [ETH_P_IP, ETH_P_ARP, ETH_P_IPV6, ETH_P_8021Q][self.rng.usize(..4)];
                f[12..14].copy_from_slice(&t.to_be_bytes());
                "ethertype"
            }
            _ => return self.mutate(f),
        };
        if self.rng.bool() {
            fix_checksums(f);
        }
        name
    }

    /// What happened to the last packets of the connection a reply (`frame`, from the real
    /// server) belongs to.
    pub fn history_of_reply(&self, frame: &[u8]) -> String {
        let Some(ip) = ipv4(frame) else {
            return String::new();
        };
        let Some((sport, dport)) = ip.ports() else {
            return String::new();
        };
        self.flows
            .values()
            .find(|f| {
                f.proto == ip.proto
                    && f.client == ip.dst
                    && f.cport == dport
                    && f.server == Some((ip.src, sport))
            })
            .and_then(|f| {
                self.history
                    .get(&(f.proto, f.client, f.cport, f.vip, f.vport))
            })
            .map(|h| h.join("; "))
            .unwrap_or_default()
    }

    /// Learns from a run what the generator aims at next: a cleanly forwarded packet of a
    /// service opens (or confirms) a connection; for NAT, the server it was DNATed to. Any
    /// other outcome for a connection's packet (including a violation: `None`), even of a
    /// malformed one that the data path still took for the connection's, makes its server
    /// unknown, as the connection may have been closed or rescheduled.
    pub fn learn(&mut self, input: &[u8], outcome: Option<Outcome>, output: &[u8]) {
        let Some(ip) = ipv4(input) else { return };
        if ip.ihl < 20 || input.len() < ETH + ip.ihl + 4 {
            return;
        }
        // Ports as the frame has them, whatever the total length says.
        let l4 = &input[ETH + ip.ihl..];
        let (sport, dport) = (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        );
        let Some(svc) = self.world.service(ip.proto, ip.dst, dport) else {
            return;
        };
        let clean = ip.malformed().is_none() && !ip.is_fragment();
        let key = (ip.proto, ip.src, sport, ip.dst, dport);
        let h = self.history.entry(key).or_default();
        if h.len() >= 6 {
            h.remove(0);
        }
        let flags = if ip.proto == IPPROTO_TCP && l4.len() >= 14 {
            format!(" flags {:#04x}", l4[13])
        } else {
            String::new()
        };
        let shown = outcome.map_or("a violation".to_string(), |o| format!("{o:?}"));
        let malformed = if clean { "" } else { " (malformed)" };
        h.push(format!("ttl {}{flags}{malformed}: {shown}", ip.ttl));
        let server = match (clean, outcome, ipv4(output)) {
            (true, Some(Outcome::Nat), Some(o)) => o.ports().map(|p| (o.dst, p.1)),
            _ => None,
        };
        match self.flows.get_mut(&key) {
            Some(f) => f.server = server,
            None if clean && matches!(outcome, Some(Outcome::Dr | Outcome::Tun | Outcome::Nat)) => {
                self.flows.insert(
                    key,
                    Flow {
                        proto: ip.proto,
                        client: ip.src,
                        cport: sport,
                        vip: ip.dst,
                        vport: dport,
                        mode: svc.mode,
                        server,
                    },
                );
                self.keys.push(key);
            }
            None => {}
        }
    }
}

/// An Ethernet + IPv4 frame of protocol `proto` carrying `l4` as is, checksum of the IP
/// header only (`Frame` fills in TCP/UDP checksums, which needs whole headers).
pub fn short_l4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: Vec<u8>) -> Vec<u8> {
    let mut f = Frame::raw(src, dst, 253, l4).eth([2, 0, 0, 0, 0, 0xfe], [2, 0, 0, 0, 0, 0xfd]);
    f[ETH + 9] = proto;
    fix_ip_checksum(&mut f);
    f
}

/// Makes the IPv4 header checksum right for whatever the header says now (if the frame
/// holds a whole header).
pub fn fix_ip_checksum(f: &mut [u8]) {
    if f.len() < ETH + 20 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_IP {
        return;
    }
    let ihl = usize::from(f[ETH] & 0x0f) * 4;
    if ihl < 20 || f.len() < ETH + ihl {
        return;
    }
    f[ETH + 10] = 0;
    f[ETH + 11] = 0;
    let sum = checksum(&[&f[ETH..ETH + ihl]]);
    f[ETH + 10..ETH + 12].copy_from_slice(&sum.to_be_bytes());
}

/// Makes the IPv4 header and TCP/UDP/ICMP checksums right for the bytes as they are now,
/// over the L4 bytes the total length covers (or the frame holds, if fewer).
pub fn fix_checksums(f: &mut [u8]) {
    fix_ip_checksum(f);
    let Some(ip) = ipv4(f) else { return };
    let ihl = ip.ihl;
    if ihl < 20 || f.len() < ETH + ihl {
        return;
    }
    let end = (ETH + ip.tot).min(f.len()).max(ETH + ihl);
    let proto = ip.proto;
    let at = match proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        IPPROTO_ICMP => 2,
        _ => return,
    };
    let l4 = ETH + ihl;
    if l4 + at + 2 > end {
        return;
    }
    f[l4 + at] = 0;
    f[l4 + at + 1] = 0;
    let sum = if proto == IPPROTO_ICMP {
        checksum(&[&f[l4..end]])
    } else {
        let len = ((end - l4) as u16).to_be_bytes();
        let pseudo = [&f[ETH + 12..ETH + 20], &[0, proto], &len[..]].concat();
        let s = checksum(&[&pseudo, &f[l4..end]]);
        if proto == IPPROTO_UDP && s == 0 {
            0xffff
        } else {
            s
        }
    };
    f[l4 + at..l4 + at + 2].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::TCP_RST;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const RS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    const NAT_RS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 13);
    const TUN_RS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
    const M: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const N: [u8; 6] = [2, 0, 0, 0, 0, 2];
    /// The MACs both generator tests run with.
    const MACS: Macs = Macs {
        ext: M,
        int: N,
        client: N,
        server: M,
    };

    fn world() -> World {
        World {
            services: vec![
                Service {
                    proto: IPPROTO_TCP,
                    vip: VIP,
                    port: 80,
                    mode: Mode::Dr,
                    servers: vec![(RS, 80)],
                },
                Service {
                    proto: IPPROTO_TCP,
                    vip: VIP,
                    port: 8080,
                    mode: Mode::Nat,
                    servers: vec![(NAT_RS, 80)],
                },
                Service {
                    proto: IPPROTO_UDP,
                    vip: VIP,
                    port: 53,
                    mode: Mode::Tun,
                    servers: vec![(TUN_RS, 53)],
                },
            ],
            local: vec![Ipv4Addr::new(198, 51, 100, 2)],
        }
    }

    fn class(r: Result<Outcome, Violation>) -> &'static str {
        match r {
            Ok(o) => panic!("expected a violation, got {o:?}"),
            Err(e) => e.class,
        }
    }

    #[test]
    fn dr_forward_is_accepted_and_a_changed_byte_is_caught() {
        let w = world();
        let input = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b"x").eth(M, N);
        let mut out = input.clone();
        out[..6].copy_from_slice(&[2, 0, 0, 0, 0x10, 1]);
        assert_eq!(check(&w, &input, XDP_TX, &out), Ok(Outcome::Dr));
        let mut bad = out.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            class(check(&w, &input, XDP_TX, &bad)),
            "dr-changed-ip-or-l4"
        );
        assert_eq!(class(check(&w, &input, XDP_ABORTED, &out)), "aborted");
    }

    #[test]
    fn other_traffic_must_pass_unchanged() {
        let w = world();
        for input in [
            Frame::tcp(CLIENT, 40000, VIP, 22, TCP_ACK, b"").eth(M, N),
            short_l4(
                CLIENT,
                Ipv4Addr::new(203, 0, 113, 5),
                IPPROTO_TCP,
                vec![0, 1],
            ),
            arp_request(M, CLIENT, VIP),
            Frame::tcp(CLIENT, 1, VIP, 80, TCP_SYN, b"")
                .fragment(IP_MF)
                .eth(M, N),
        ] {
            assert_eq!(check(&w, &input, XDP_PASS, &input), Ok(Outcome::Passed));
            assert!(check(&w, &input, XDP_DROP, &input).is_err(), "{input:02x?}");
            let mut changed = input.clone();
            changed[0] ^= 1;
            assert!(check(&w, &input, XDP_PASS, &changed).is_err());
        }
    }

    #[test]
    fn malformed_is_never_forwarded() {
        let w = world();
        let good = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b"").eth(M, N);
        // Total length claims 10 more bytes than the frame has.
        let mut long = good.clone();
        long[ETH + 3] += 10;
        fix_ip_checksum(&mut long);
        let mut badsum = good.clone();
        badsum[ETH + 10] ^= 1;
        let mut shorttcp = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b"").eth(M, N);
        shorttcp.truncate(ETH + 20 + 10);
        shorttcp[ETH + 3] = 30;
        fix_ip_checksum(&mut shorttcp);
        for f in [long, badsum, shorttcp] {
            assert!(
                matches!(role(&w, &f), Role::Malformed(_)),
                "{:?}",
                role(&w, &f)
            );
            assert!(class(check(&w, &f, XDP_TX, &f)).starts_with("malformed-forwarded"));
            assert_eq!(check(&w, &f, XDP_DROP, &f), Ok(Outcome::Dropped));
            assert_eq!(check(&w, &f, XDP_PASS, &f), Ok(Outcome::Passed));
        }
    }

    #[test]
    fn nat_rewrites_are_checked() {
        let w = world();
        let input = Frame::tcp(CLIENT, 40000, VIP, 8080, TCP_SYN, b"").eth(M, N);
        let good = Frame::tcp(CLIENT, 40000, NAT_RS, 80, TCP_SYN, b"")
            .ttl(63)
            .eth(N, M);
        assert_eq!(check(&w, &input, XDP_REDIRECT, &good), Ok(Outcome::Nat));
        // The L4 checksum left as it was.
        let mut stale = good.clone();
        stale[ETH + 20 + 16..ETH + 20 + 18].copy_from_slice(&input[ETH + 20 + 16..ETH + 20 + 18]);
        assert_eq!(
            class(check(&w, &input, XDP_REDIRECT, &stale)),
            "nat-l4-checksum"
        );
        // TTL not decremented.
        let same_ttl = Frame::tcp(CLIENT, 40000, NAT_RS, 80, TCP_SYN, b"").eth(N, M);
        assert_eq!(class(check(&w, &input, XDP_REDIRECT, &same_ttl)), "nat-ttl");
        // To a server that is not the service's.
        let wrong = Frame::tcp(CLIENT, 40000, RS, 80, TCP_SYN, b"")
            .ttl(63)
            .eth(N, M);
        assert_eq!(
            class(check(&w, &input, XDP_REDIRECT, &wrong)),
            "dnat-wrong-address"
        );
        // A reply SNATed back, and one SNATed from the wrong address.
        let reply = Frame::tcp(NAT_RS, 80, CLIENT, 40000, TCP_RST, b"").eth(M, N);
        let snat = Frame::tcp(VIP, 8080, CLIENT, 40000, TCP_RST, b"")
            .ttl(63)
            .eth(N, M);
        assert_eq!(check(&w, &reply, XDP_REDIRECT, &snat), Ok(Outcome::Nat));
        let bad = Frame::tcp(RS, 8080, CLIENT, 40000, TCP_RST, b"")
            .ttl(63)
            .eth(N, M);
        assert_eq!(
            class(check(&w, &reply, XDP_REDIRECT, &bad)),
            "snat-wrong-address"
        );
        // A translated ICMP error with TTL 0 that wrapped.
        let q = Frame::tcp(VIP, 8080, CLIENT, 40000, TCP_ACK, b"").ip();
        let err = Frame::icmp_error(CLIENT, VIP, 3, 4, [0; 4], &q[..28])
            .ttl(0)
            .eth(M, N);
        let wrapped = Frame::icmp_error(CLIENT, NAT_RS, 3, 4, [0; 4], &q[..28])
            .ttl(255)
            .eth(N, M);
        assert_eq!(role(&w, &err), Role::IcmpAbout);
        assert_eq!(class(check(&w, &err, XDP_REDIRECT, &wrapped)), "nat-ttl");
    }

    #[test]
    fn tun_encapsulation_is_checked() {
        let w = world();
        let inner = Frame::udp(CLIENT, 5000, VIP, 53, b"query");
        let input = inner.eth(M, N);
        let good = Frame::raw(
            Ipv4Addr::new(192, 0, 2, 1),
            TUN_RS,
            IPPROTO_IPIP,
            inner.ip(),
        )
        .eth(N, M);
        assert_eq!(check(&w, &input, XDP_REDIRECT, &good), Ok(Outcome::Tun));
        let mut changed = good.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(
            class(check(&w, &input, XDP_REDIRECT, &changed)),
            "tun-inner-changed"
        );
        // An outer total length computed from a larger claim (with trailing bytes to hold it).
        let mut long = good.clone();
        long.extend_from_slice(&[0; 6]);
        long[ETH + 3] += 6;
        fix_ip_checksum(&mut long);
        assert_eq!(
            class(check(&w, &input, XDP_REDIRECT, &long)),
            "tun-outer-length"
        );
        // A DR service's packet encapsulated.
        let dr = Frame::tcp(CLIENT, 1, VIP, 80, TCP_SYN, b"");
        let enc = Frame::raw(Ipv4Addr::new(192, 0, 2, 1), TUN_RS, IPPROTO_IPIP, dr.ip()).eth(N, M);
        assert_eq!(
            class(check(&w, &dr.eth(M, N), XDP_REDIRECT, &enc)),
            "dr-changed-ip-or-l4"
        );
    }

    #[test]
    fn generated_icmp_errors_are_checked() {
        let w = world();
        let syn = Frame::tcp(CLIENT, 40004, VIP, 8080, TCP_SYN, b"").ttl(1);
        let ip = syn.ip();
        let input = syn.eth(M, N);
        let mut te = Frame::icmp_error(VIP, CLIENT, 11, 0, [0; 4], &ip[..28]);
        te.tos = 0xc0;
        assert_eq!(
            check(&w, &input, XDP_TX, &te.eth(N, M)),
            Ok(Outcome::IcmpSent)
        );
        // From the client's own address (as about a NAT reply), from elsewhere.
        let mut foreign = te.clone();
        foreign.src = Ipv4Addr::new(203, 0, 113, 50);
        assert_eq!(
            class(check(&w, &input, XDP_TX, &foreign.eth(N, M))),
            "icmp-error-foreign-source"
        );
        // Toward loopback.
        let lo = Frame::tcp(Ipv4Addr::new(127, 0, 0, 1), 1, VIP, 8080, TCP_SYN, b"").ttl(1);
        let te_lo = Frame::icmp_error(
            VIP,
            Ipv4Addr::new(127, 0, 0, 1),
            11,
            0,
            [0; 4],
            &lo.ip()[..28],
        );
        assert_eq!(
            class(check(&w, &lo.eth(M, N), XDP_TX, &te_lo.eth(N, M))),
            "icmp-error-to-special-address"
        );
        // About an ICMP error.
        let q = Frame::tcp(VIP, 8080, CLIENT, 40000, TCP_ACK, b"").ip();
        let err = Frame::icmp_error(CLIENT, VIP, 3, 3, [0; 4], &q[..28]).ttl(1);
        let eip = err.ip();
        let about = Frame::icmp_error(VIP, CLIENT, 11, 0, [0; 4], &eip[..28]);
        assert_eq!(
            class(check(&w, &err.eth(M, N), XDP_TX, &about.eth(N, M))),
            "icmp-error-about-icmp-error"
        );
        // Time exceeded although TTL was left.
        let ok_ttl = Frame::tcp(CLIENT, 40004, VIP, 8080, TCP_SYN, b"");
        let te2 = Frame::icmp_error(VIP, CLIENT, 11, 0, [0; 4], &ok_ttl.ip()[..28]);
        assert_eq!(
            class(check(&w, &ok_ttl.eth(M, N), XDP_TX, &te2.eth(N, M))),
            "time-exceeded-with-ttl-left"
        );
    }

    #[test]
    fn decap_is_checked() {
        let vips = [VIP];
        let inner = Frame::udp(CLIENT, 5000, VIP, 53, b"q").ip();
        let input = Frame::raw(
            Ipv4Addr::new(192, 0, 2, 1),
            TUN_RS,
            IPPROTO_IPIP,
            inner.clone(),
        )
        .eth(M, N);
        let mut out = input[..12].to_vec();
        out.extend_from_slice(&ETH_P_IP.to_be_bytes());
        out.extend_from_slice(&inner);
        assert_eq!(check_decap(&vips, &input, XDP_PASS, &out), Ok(()));
        assert_eq!(check_decap(&vips, &input, XDP_PASS, &input), Ok(()));
        let mut bad_outer = input.clone();
        bad_outer[ETH + 10] ^= 1;
        assert_eq!(
            check_decap(&vips, &bad_outer, XDP_PASS, &out)
                .unwrap_err()
                .class,
            "decap-malformed-outer"
        );
        assert_eq!(
            check_decap(&[], &input, XDP_PASS, &out).unwrap_err().class,
            "decap-not-for-a-vip"
        );
        assert_eq!(
            check_decap(&vips, &input, XDP_DROP, &input)
                .unwrap_err()
                .class,
            "decap-verdict"
        );
    }

    #[test]
    fn generator_is_reproducible_and_mutations_keep_frames_sane() {
        let w = world();
        let mut a = Gen::new(7, w.clone(), MACS, vec![CLIENT]);
        let mut b = Gen::new(7, w, MACS, vec![CLIENT]);
        for _ in 0..2000 {
            let (x, y) = (a.next_case(), b.next_case());
            assert_eq!(x.frame, y.frame);
        }
    }

    #[test]
    fn generator_and_checker_never_panic() {
        // Every frame the generator makes, checked against itself and against a mutated copy
        // as "output", under every verdict: the checker must judge, never panic (overflow
        // checks are on in this build).
        let w = world();
        let mut g = Gen::new(
            0x5eed,
            w.clone(),
            MACS,
            vec![CLIENT, Ipv4Addr::new(127, 0, 0, 1)],
        );
        let mut other = fastrand::Rng::with_seed(1);
        for i in 0..100_000 {
            let c = if i < 500 { g.opener() } else { g.next_case() };
            let mut out = c.frame.clone();
            g.mutate(&mut out);
            for action in 0..5 {
                let _ = check(&w, &c.frame, action, &c.frame);
                let _ = check(&w, &c.frame, action, &out);
                let _ = check_decap(&[VIP], &c.frame, action, &out);
            }
            let o = [Outcome::Dr, Outcome::Nat, Outcome::Tun, Outcome::Passed][other.usize(..4)];
            g.learn(&c.frame, Some(o), &out);
        }
    }

    #[test]
    fn fix_checksums_makes_valid_frames() {
        let mut f = Frame::tcp(CLIENT, 1, VIP, 80, TCP_SYN, b"abc").eth(M, N);
        f[ETH + 20 + 13] = 0xff;
        fix_checksums(&mut f);
        let ip = ipv4(&f).unwrap();
        assert!(ip.malformed().is_none() && ip.l4_checksum_ok());
    }
}
