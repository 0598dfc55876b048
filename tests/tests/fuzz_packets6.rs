//! Packet fuzzing for IPv6: valid, mutated and random IPv6 frames through `lb_xdp` (which
//! hands them to `lb_xdp6`/`lb_new6`) for DR6, NAT6 and TUN6 services, and through
//! `lb_decap`, every verdict and output checked against what a director owes the network,
//! from the test's own reading of the packets (`lb_tests::v6::read`):
//!
//! - never aborted; passed ⇒ byte for byte;
//! - forwarded ⇒ the input was a whole packet (payload within the frame, every extension
//!   header within it, at most 8 of them, the TCP/UDP header complete, a host's source) for
//!   a service, from a NAT real server, or an ICMPv6 error; and the output is exactly the
//!   method's rewrite: DR only the MACs, NAT the address/port of one side with the Hop Limit
//!   one less and a right checksum (if the input's was), TUN the input whole inside an outer
//!   header 41 from the tunnel source to one of the service's servers, or the director's
//!   own ICMPv6 error (Time Exceeded, Packet Too Big) back to the source with a right
//!   checksum, quoting the packet, within 1280 bytes;
//! - anything not for a VIP nor from a NAT real server, and every informational ICMPv6
//!   message (NDP, MLD, echo), passes untouched.
//!
//! Bounded by `LB_FUZZ_PACKETS` (default 200,000 here; `cargo xtask fuzz --packets N` sets
//! it) and `LB_FUZZ_SECONDS`; `LB_FUZZ_SEED` replays a run. Root only.

use std::{collections::BTreeMap, net::Ipv6Addr, time::Instant};

use lb_common::{fwd, proto, sched};
use lb_ctl::dataplane::{Dataplane, Options};
use lb_tests::{
    fuzz,
    packet::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN},
    v6::{self, Ext, Ip6, NH_DST, NH_HOP, NH_ICMP6, NH_ROUTING, v6},
    xdp_run::{self, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT},
};

const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd1];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const MAX_EXT: usize = lb_common::IPV6_MAX_EXT as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Dr,
    Nat,
    Tun,
}

#[derive(Clone, Debug)]
struct Service {
    vip: Ipv6Addr,
    port: u16,
    proto: u8,
    mode: Mode,
    servers: Vec<(Ipv6Addr, u16)>,
    mtu: u16,
}

fn services() -> Vec<Service> {
    let rs = |n: u8| v6(&format!("2001:db8:1::{n}"));
    let s = |vip: &str, port, proto, mode, servers: Vec<(Ipv6Addr, u16)>, mtu| Service {
        vip: v6(vip),
        port,
        proto,
        mode,
        servers,
        mtu,
    };
    vec![
        s(
            "2001:db8::100",
            80,
            proto::TCP,
            Mode::Dr,
            vec![(rs(1), 80), (rs(2), 80)],
            0,
        ),
        s(
            "2001:db8::100",
            53,
            proto::UDP,
            Mode::Dr,
            vec![(rs(1), 53)],
            0,
        ),
        s(
            "2001:db8::101",
            8080,
            proto::TCP,
            Mode::Nat,
            vec![(rs(3), 80), (rs(4), 8080)],
            1400,
        ),
        s(
            "2001:db8::101",
            5353,
            proto::UDP,
            Mode::Nat,
            vec![(rs(3), 5353)],
            0,
        ),
        s(
            "2001:db8::102",
            443,
            proto::TCP,
            Mode::Tun,
            vec![(rs(5), 443), (rs(6), 443)],
            1300,
        ),
    ]
}

fn tun_src() -> Ipv6Addr {
    v6("2001:db8::d1")
}

fn mac_of(a: Ipv6Addr) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x10, a.octets()[15]]
}

struct World {
    services: Vec<Service>,
}

impl World {
    fn service(&self, proto: u8, dst: Ipv6Addr, port: u16) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.proto == proto && s.vip == dst && s.port == port)
    }
    fn is_vip(&self, a: Ipv6Addr) -> bool {
        self.services.iter().any(|s| s.vip == a)
    }
    fn nat_server(&self, proto: u8, src: Ipv6Addr, port: u16) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.mode == Mode::Nat && s.proto == proto && s.servers.contains(&(src, port)))
    }
}

fn martian(a: Ipv6Addr) -> bool {
    a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.to_ipv4_mapped().is_some()
}

fn ports(l4: &[u8]) -> Option<(u16, u16)> {
    (l4.len() >= 4).then(|| {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    })
}

fn l4_complete(p: &Ip6) -> bool {
    match p.nh {
        proto::TCP => p.l4.len() >= 20,
        proto::UDP => p.l4.len() >= 8,
        _ => false,
    }
}

type Violation = (&'static str, String);

fn v(class: &'static str, detail: impl Into<String>) -> Result<&'static str, Violation> {
    Err((class, detail.into()))
}

/// The checker: `Ok(what happened)` or the rule broken.
fn check(w: &World, input: &[u8], action: u32, output: &[u8]) -> Result<&'static str, Violation> {
    if action == XDP_ABORTED || action > XDP_REDIRECT {
        return v("aborted-or-unknown-action", format!("action {action}"));
    }
    if action == XDP_PASS {
        if output != input {
            return v("passed-but-changed", "a passed frame must be untouched");
        }
        return Ok("passed");
    }
    let ipv6 = input.len() >= 14 && input[12..14] == [0x86, 0xdd];
    let parsed = if ipv6 {
        v6::read(&input[14..], MAX_EXT)
    } else {
        Err("not IPv6".into())
    };
    // What is nobody's business here must go to the stack untouched, never dropped.
    let ours = match &parsed {
        Ok(p) => {
            let (sp, _) = ports(&p.l4).unwrap_or((0, 0));
            let is_icmp_error = p.nh == NH_ICMP6 && p.l4.first().is_some_and(|&t| t < 128);
            w.is_vip(p.dst)
                || is_icmp_error
                || (matches!(p.nh, proto::TCP | proto::UDP)
                    && w.nat_server(p.nh, p.src, sp).is_some())
        }
        Err(_) => true,
    };
    let informational = parsed
        .as_ref()
        .is_ok_and(|p| p.nh == NH_ICMP6 && p.l4.first().is_some_and(|&t| t >= 128));
    if action == XDP_DROP {
        if informational {
            return v(
                "ndp-or-informational-dropped",
                "NDP/MLD/echo belong to the stack",
            );
        }
        if let Ok(p) = &parsed
            && !ours
            && !martian(p.src)
        {
            return v(
                "not-ours-dropped",
                format!("{} → {} proto {}", p.src, p.dst, p.nh),
            );
        }
        return Ok("dropped");
    }
    // Forwarded (TX or redirect).
    let p = match parsed {
        Ok(p) => p,
        Err(e) => return v("malformed-forwarded", e),
    };
    if informational {
        return v("informational-forwarded", "NDP/MLD/echo are the stack's");
    }
    if martian(p.src) {
        return v("martian-forwarded", format!("source {}", p.src));
    }
    if output.len() < 14 + 40 || output[12..14] != [0x86, 0xdd] {
        return v("forwarded-not-ipv6", format!("{} bytes", output.len()));
    }
    let o = match v6::read(&output[14..], 64) {
        // (A frame may be longer than its packet: Ethernet padding, forwarded as it came.)
        Ok(o) => o,
        Err(e) => return v("output-malformed", e),
    };
    let in_ip = &input[14..14 + 40 + u16::from_be_bytes([input[18], input[19]]) as usize];
    let in_ok = v6::l4_ok(&p);
    // The director's own error back to the source (Time Exceeded, Packet Too Big).
    if o.nh == NH_ICMP6 && o.dst == p.src && p.nh != NH_ICMP6 {
        if !v6::l4_ok(&o) {
            return v("own-icmp-checksum", "");
        }
        if !matches!(o.l4[0], 2 | 3) {
            return v("own-icmp-type", format!("type {}", o.l4[0]));
        }
        if !w.is_vip(o.src) {
            return v("own-icmp-source", format!("from {}", o.src));
        }
        let quote = &o.l4[8..];
        if quote.is_empty() || !in_ip.starts_with(quote) {
            return v("own-icmp-quote", "not a prefix of the packet");
        }
        if output.len() - 14 > 1280 {
            return v("own-icmp-too-long", format!("{} bytes", output.len() - 14));
        }
        if o.l4[0] == 3 && p.hop > 1 {
            return v(
                "time-exceeded-with-hops-left",
                format!("hop limit {}", p.hop),
            );
        }
        return Ok("icmp-sent");
    }
    // TUN: the input whole inside.
    if o.nh == 41 {
        let Some(s) = w.services.iter().find(|s| {
            s.mode == Mode::Tun
                && s.vip
                    == if p.nh == NH_ICMP6 {
                        icmp_quoted_src(&p).unwrap_or(p.dst)
                    } else {
                        p.dst
                    }
        }) else {
            return v("tun-not-a-tun-service", format!("{}", p.dst));
        };
        if o.src != tun_src() || !s.servers.iter().any(|&(a, _)| a == o.dst) {
            return v("tun-outer-addresses", format!("{} → {}", o.src, o.dst));
        }
        if o.l4 != in_ip {
            return v("tun-inner-changed", "");
        }
        if p.nh != NH_ICMP6 && !l4_complete(&p) {
            return v("tun-incomplete-l4", "");
        }
        return Ok("tun");
    }
    if p.nh == NH_ICMP6 {
        // An error about a connection: DR leaves it alone, NAT translates it.
        if output[12..] == input[12..] {
            return Ok("icmp-forwarded");
        }
        if o.nh != NH_ICMP6 || o.l4.first() != p.l4.first() {
            return v("icmp-forwarded-changed-kind", "");
        }
        if in_ok && !v6::l4_ok(&o) {
            return v("icmp-translated-checksum", "");
        }
        if o.hop + 1 != p.hop {
            return v("icmp-translated-hop-limit", "");
        }
        return Ok("icmp-translated");
    }
    if !l4_complete(&p) {
        return v(
            "incomplete-l4-forwarded",
            format!("{} bytes of protocol {}", p.l4.len(), p.nh),
        );
    }
    let (sp, dp) = ports(&p.l4).unwrap();
    if p.nh == proto::UDP && p.l4[6..8] == [0, 0] {
        return v("zero-udp-checksum-forwarded", "");
    }
    if let Some(s) = w.service(p.nh, p.dst, dp) {
        match s.mode {
            Mode::Dr => {
                if output[12..] != input[12..] {
                    return v("dr-changed-more-than-macs", "");
                }
                if !s.servers.iter().any(|&(a, _)| output[..6] == mac_of(a)) {
                    return v("dr-wrong-mac", "");
                }
                return Ok("dr");
            }
            Mode::Nat => {
                let (osp, odp) = ports(&o.l4).unwrap_or((0, 0));
                if o.src != p.src || osp != sp || !s.servers.contains(&(o.dst, odp)) {
                    return v(
                        "nat-request-rewrite",
                        format!("{}:{osp} → {}:{odp}", o.src, o.dst),
                    );
                }
                return nat_rest(&p, &o, in_ok);
            }
            Mode::Tun => return v("tun-not-encapsulated", ""),
        }
    }
    if let Some(s) = w.nat_server(p.nh, p.src, sp) {
        let (osp, odp) = ports(&o.l4).unwrap_or((0, 0));
        if o.src != s.vip || osp != s.port || o.dst != p.dst || odp != dp {
            return v(
                "nat-reply-rewrite",
                format!("{}:{osp} → {}:{odp}", o.src, o.dst),
            );
        }
        return nat_rest(&p, &o, in_ok);
    }
    v(
        "forwarded-not-ours",
        format!("{} → {} proto {}", p.src, p.dst, p.nh),
    )
}

fn nat_rest(p: &Ip6, o: &Ip6, in_ok: bool) -> Result<&'static str, Violation> {
    if o.hop + 1 != p.hop {
        return v("nat-hop-limit", format!("{} → {}", p.hop, o.hop));
    }
    if in_ok && !v6::l4_ok(o) {
        return v("nat-checksum", "");
    }
    let c = if p.nh == proto::TCP { 16..18 } else { 6..8 };
    let strip = |l: &[u8]| {
        let mut l = l.to_vec();
        l[0..4].fill(0);
        l[c.clone()].fill(0);
        l
    };
    if strip(&p.l4) != strip(&o.l4) {
        return v("nat-changed-payload", "");
    }
    Ok("nat")
}

fn icmp_quoted_src(p: &Ip6) -> Option<Ipv6Addr> {
    let q = p.l4.get(8..)?;
    (q.len() >= 40).then(|| Ipv6Addr::from(<[u8; 16]>::try_from(&q[8..24]).unwrap()))
}

// ---------------------------------------------------------------------------------------
// The generator.

struct Gen {
    rng: fastrand::Rng,
    services: Vec<Service>,
    clients: Vec<Ipv6Addr>,
    /// NAT connections opened: (service index, client, client port, server, server port).
    nat: Vec<(usize, Ipv6Addr, u16, Ipv6Addr, u16)>,
    /// Recent forwarded outputs, for ICMPv6 errors to quote.
    recent: Vec<Vec<u8>>,
    /// DR/TUN connections (VIP, port, client, client port, protocol), whose replies (which
    /// bypass the director) ICMPv6 errors may be about.
    replies: Vec<(Ipv6Addr, u16, Ipv6Addr, u16, u8)>,
}

impl Gen {
    fn frame(
        &self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop: u8,
        exts: &[Ext],
        nh: u8,
        l4: &[u8],
    ) -> Vec<u8> {
        v6::frame6_eth(DIRECTOR_MAC, ROUTER_MAC, src, dst, hop, exts, nh, l4)
    }

    fn exts(&mut self) -> Vec<Ext> {
        let n = match self.rng.u8(..10) {
            0..=5 => 0,
            6 | 7 => 1,
            8 => self.rng.usize(2..5),
            _ => self.rng.usize(5..11),
        };
        (0..n)
            .map(|_| match self.rng.u8(..4) {
                0 => Ext::Opts(NH_HOP, self.rng.u8(..3)),
                1 => Ext::Opts(NH_ROUTING, self.rng.u8(..3)),
                2 => Ext::Opts(NH_DST, self.rng.u8(..3)),
                _ => Ext::Frag(if self.rng.bool() { 1 } else { self.rng.u16(..) }),
            })
            .collect()
    }

    fn flags(&mut self) -> u8 {
        *[
            TCP_SYN,
            TCP_SYN,
            TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_SYN | TCP_ACK,
            0,
        ]
        .get(self.rng.usize(..8))
        .unwrap()
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = match self.rng.u8(..10) {
            0..=6 => self.rng.usize(..64),
            7 | 8 => self.rng.usize(..1500),
            _ => self.rng.usize(1200..1460),
        };
        (0..n).map(|_| self.rng.u8(..)).collect()
    }

    fn l4(&mut self, proto: u8, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
        if proto == proto::TCP {
            let flags = self.flags();
            let pl = self.payload();
            v6::tcp_seg_with(src, sport, dst, dport, flags, &pl)
        } else {
            v6::udp_dgram(src, sport, dst, dport)
        }
    }

    fn request(&mut self) -> Vec<u8> {
        let s = self.services[self.rng.usize(..self.services.len())].clone();
        let c = self.clients[self.rng.usize(..self.clients.len())];
        let sport = 20000 + self.rng.u16(..64);
        let hop = if self.rng.u8(..20) == 0 { 1 } else { 64 };
        let exts = self.exts();
        let l4 = self.l4(s.proto, c, sport, s.vip, s.port);
        self.frame(c, s.vip, hop, &exts, s.proto, &l4)
    }

    fn reply(&mut self) -> Vec<u8> {
        if self.nat.is_empty() {
            return self.request();
        }
        let (i, c, cport, rs, rport) = self.nat[self.rng.usize(..self.nat.len())];
        let proto = self.services[i].proto;
        let l4 = self.l4(proto, rs, rport, c, cport);
        let hop = if self.rng.u8(..20) == 0 { 1 } else { 64 };
        self.frame(rs, c, hop, &[], proto, &l4)
    }

    fn icmp_error(&mut self) -> Vec<u8> {
        // About a DR/TUN connection's reply (VIP → client), back to the VIP.
        if self.rng.bool() && !self.replies.is_empty() {
            let (vip, vport, c, cport, proto) = self.replies[self.rng.usize(..self.replies.len())];
            let l4 = self.l4(proto, vip, vport, c, cport);
            let q = v6::frame6_eth([0; 6], [0; 6], vip, c, 64, &[], proto, &l4);
            let from = v6("2001:db8:ff::2");
            let kind = self.rng.u8(1..5);
            let take = (q.len() - 14).min(self.rng.usize(44..200));
            let m = v6::icmp6_error(from, vip, kind, 1280, &q[14..14 + take]);
            return self.frame(from, vip, 64, &[], NH_ICMP6, &m);
        }
        let quoted: Vec<u8> = match self.recent.len() {
            0 => return self.request(),
            n => self.recent[self.rng.usize(..n)][14..].to_vec(),
        };
        let Ok(q) = v6::read(&quoted, 64) else {
            return self.request();
        };
        // Back to the quoted packet's source (the client for a NATed request, the VIP for
        // what went towards a client) or, sometimes, somewhere else.
        let to = if self.rng.u8(..5) == 0 {
            self.clients[0]
        } else {
            q.src
        };
        let from = v6("2001:db8:ff::1");
        let kind = self.rng.u8(1..5);
        let take = quoted.len().min(self.rng.usize(40..200));
        let m = v6::icmp6_error(from, to, kind, 1280, &quoted[..take]);
        self.frame(from, to, 64, &[], NH_ICMP6, &m)
    }

    fn informational(&mut self) -> Vec<u8> {
        let s = &self.services[self.rng.usize(..self.services.len())];
        let c = self.clients[0];
        let kind = *[128u8, 129, 133, 134, 135, 136, 143]
            .get(self.rng.usize(..7))
            .unwrap();
        let mut m = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&s.vip.octets());
        let dst = if self.rng.bool() {
            s.vip
        } else {
            v6("ff02::1:ff00:100")
        };
        let sum = v6::l4_csum(c, dst, NH_ICMP6, &m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        self.frame(c, dst, 255, &[], NH_ICMP6, &m)
    }

    fn mutate(&mut self, f: &mut Vec<u8>) {
        match self.rng.u8(..6) {
            0 => {
                let n = self.rng.usize(14..f.len().max(15));
                f.truncate(n);
            }
            1 if f.len() > 14 => {
                for _ in 0..self.rng.usize(1..4) {
                    let i = self.rng.usize(14..f.len());
                    f[i] = self.rng.u8(..);
                }
            }
            2 if f.len() >= 20 => {
                let v = self.rng.u16(..);
                f[18..20].copy_from_slice(&v.to_be_bytes());
            }
            3 if f.len() >= 21 => {
                f[20] = *[0u8, 6, 17, 41, 43, 44, 50, 58, 59, 60]
                    .get(self.rng.usize(..10))
                    .unwrap()
            }
            4 => f.extend((0..self.rng.usize(1..40)).map(|_| self.rng.u8(..))),
            _ => {
                let i = self.rng.usize(..f.len().clamp(1, 60));
                if i < f.len() {
                    f[i] ^= 1 << self.rng.u8(..8);
                }
            }
        }
    }

    fn next(&mut self, n: u64) -> (Vec<u8>, &'static str) {
        if n < 500 {
            return (self.request(), "request");
        }
        let (mut f, how) = match self.rng.u8(..12) {
            0..=4 => (self.request(), "request"),
            5 | 6 => (self.reply(), "reply"),
            7 => (self.icmp_error(), "icmp-error"),
            8 => (self.informational(), "informational"),
            9 => {
                let c = self.clients[0];
                let d = v6(&format!("2001:db8:9::{:x}", self.rng.u16(..)));
                let l4 = self.l4(proto::TCP, c, 1, d, 80);
                (self.frame(c, d, 64, &[], proto::TCP, &l4), "not-ours")
            }
            _ => {
                let mut f = if self.rng.bool() {
                    self.request()
                } else {
                    self.reply()
                };
                self.mutate(&mut f);
                return (f, "mutated");
            }
        };
        if self.rng.u8(..8) == 0 {
            self.mutate(&mut f);
            return (f, "mutated");
        }
        (f, how)
    }

    fn learn(&mut self, input: &[u8], out: &[u8], what: &str) {
        if what == "nat" || what == "tun" || what == "dr" {
            if self.recent.len() < 64 {
                self.recent.push(out.to_vec());
            } else {
                let i = self.rng.usize(..64);
                self.recent[i] = out.to_vec();
            }
        }
        if (what == "dr" || what == "tun")
            && self.replies.len() < 4096
            && let Ok(p) = v6::read(&input[14..], 64)
            && let Some((sp, dp)) = ports(&p.l4)
        {
            self.replies.push((p.dst, dp, p.src, sp, p.nh));
        }
        if what == "nat"
            && let (Ok(p), Ok(o)) = (v6::read(&input[14..], 64), v6::read(&out[14..], 64))
            && let Some(i) = self
                .services
                .iter()
                .position(|s| s.mode == Mode::Nat && s.vip == p.dst && s.proto == p.nh)
            && let (Some((cport, _)), Some((_, rport))) = (ports(&p.l4), ports(&o.l4))
            && self.nat.len() < 4096
        {
            self.nat.push((i, p.src, cport, o.dst, rport));
        }
    }
}

#[test]
fn fuzz_packets6() {
    // 0 (as `cargo xtask fuzz --packets 0 --seconds S` passes it): bounded by time alone.
    let packets = fuzz::env_u64("LB_FUZZ_PACKETS", 200_000);
    let seconds = fuzz::env_u64("LB_FUZZ_SECONDS", 0);
    let packets = if packets == 0 && seconds == 0 {
        200_000
    } else {
        packets
    };
    let seed = fuzz::seed_from_env();
    eprintln!("fuzz_packets6: seed {seed:#x} (LB_FUZZ_SEED={seed:#x} replays), {packets} packets");
    let pins = lb_tests::PinDir::new("fuzz6");
    let dp = Dataplane::open(Options {
        pin_dir: pins.path().to_path_buf(),
        conn_table_size: 1 << 16,
        sched_table_size: 1 << 16,
        mh_table_size: 251,
        persist_table_size: 4096,
        ..Options::default()
    })
    .expect("loading the balancer (root, bpffs)");
    let svcs = services();
    let mut clients: Vec<Ipv6Addr> = (1..=12u16)
        .map(|n| v6(&format!("2001:db8:c::{n:x}")))
        .collect();
    clients.extend(["::", "::1", "ff02::1", "::ffff:198.51.100.7"].map(v6));
    for (i, s) in svcs.iter().enumerate() {
        v6::install(
            pins.path(),
            &v6::Svc {
                index: i as u32,
                vip: s.vip,
                port: s.port,
                proto: s.proto,
                sched: sched::RR,
                fwd: match s.mode {
                    Mode::Dr => fwd::DR,
                    Mode::Nat => fwd::NAT,
                    Mode::Tun => fwd::TUN,
                },
                persist_plen: None,
                tun_src: tun_src(),
                dests: s
                    .servers
                    .iter()
                    .map(|&(addr, port)| v6::Dest {
                        addr,
                        port,
                        ifindex: 1,
                        dmac: mac_of(addr),
                        smac: DIRECTOR_MAC,
                        mtu: s.mtu,
                    })
                    .collect(),
            },
        );
    }
    // Where NAT replies go: known for the real clients (as after the data path's FIB lookup).
    for &c in &clients[..12] {
        v6::client_hop(pins.path(), c, 1, ROUTER_MAC, DIRECTOR_MAC);
    }
    // lb_decap with the TUN VIP.
    let mut decap = aya::Ebpf::load(lb_ctl::realserver::DECAP_OBJ).expect("loading lb_decap");
    let mut vips: aya::maps::HashMap<_, lb_common::Addr, u8> = aya::maps::HashMap::try_from(
        decap
            .map_mut(lb_common::maps::DECAP_VIPS)
            .expect("decap map"),
    )
    .unwrap();
    let tun_vip = svcs.iter().find(|s| s.mode == Mode::Tun).unwrap().vip;
    vips.insert(v6::addr(tun_vip), 1, 0).unwrap();
    let dc: &mut aya::programs::Xdp = decap
        .program_mut(lb_common::progs::DECAP)
        .unwrap()
        .try_into()
        .unwrap();
    dc.load().expect("loading lb_decap");
    let dc: &aya::programs::Xdp = dc;

    let world = World {
        services: svcs.clone(),
    };
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
        services: svcs,
        clients,
        nat: vec![],
        recent: vec![],
        replies: vec![],
    };
    let lb = dp.program().expect("program");
    let start = Instant::now();
    let mut outcomes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut violations: BTreeMap<&str, (u64, String)> = BTreeMap::new();
    let mut n = 0u64;
    while packets == 0 || n < packets {
        if seconds > 0 && n.is_multiple_of(4096) && start.elapsed().as_secs() >= seconds {
            break;
        }
        let (frame, how) = g.next(n);
        n += 1;
        let out = xdp_run::run_xdp(lb, &frame, 1, 0).expect("BPF_PROG_TEST_RUN");
        let r = check(&world, &frame, out.action, &out.data);
        match &r {
            Ok(what) => {
                *outcomes.entry((how, what)).or_default() += 1;
                g.learn(&frame, &out.data, what);
            }
            Err((class, detail)) => {
                let e = violations.entry(class).or_insert((0, String::new()));
                if e.0 == 0 {
                    e.1 = format!(
                        "{how}: {detail}; action {}; in {}; out {}",
                        out.action,
                        fuzz::hex(&frame),
                        fuzz::hex(&out.data)
                    );
                }
                e.0 += 1;
            }
        }
        // The real server's side: lb_decap on every TUN output gives back the packet whole;
        // on anything else it changes nothing.
        if r == Ok("tun") {
            let d = xdp_run::run_xdp(dc, &out.data, 1, 0).expect("decap run");
            let inner = &out.data[14 + 40..];
            if d.action != XDP_PASS || d.data[14..] != *inner || d.data[12..14] != [0x86, 0xdd] {
                let e = violations
                    .entry("tun-decap-round-trip")
                    .or_insert((0, fuzz::hex(&out.data)));
                e.0 += 1;
            }
        } else {
            let d = xdp_run::run_xdp(dc, &frame, 1, 0).expect("decap run");
            if d.action != XDP_PASS || d.data != frame {
                let e = violations
                    .entry("decap-touched-other")
                    .or_insert((0, fuzz::hex(&frame)));
                e.0 += 1;
            }
        }
    }
    let took = start.elapsed().as_secs_f64();
    let mut text = String::new();
    for ((how, what), n) in &outcomes {
        text.push_str(&format!("  {how:>14} → {what:<16} {n}\n"));
    }
    for (class, (n, first)) in &violations {
        text.push_str(&format!("  VIOLATION {class}: {n}, first: {first}\n"));
    }
    eprintln!("fuzz_packets6: seed {seed:#x}, {n} packets in {took:.1} s\n{text}");
    drop(decap);
    let _ = dp.shutdown(false);
    // Forwarded, passed, dropped, errors sent, NAT replies: the generator reached them all.
    for what in [
        "dr",
        "nat",
        "tun",
        "icmp-sent",
        "icmp-forwarded",
        "icmp-translated",
        "passed",
        "dropped",
    ] {
        assert!(
            n < 20_000 || outcomes.keys().any(|(_, w)| *w == what),
            "no packet came out as {what}:\n{text}"
        );
    }
    assert!(
        violations.is_empty(),
        "IPv6 packet fuzzing found violations (LB_FUZZ_SEED={seed:#x} replays):\n{text}"
    );
}
