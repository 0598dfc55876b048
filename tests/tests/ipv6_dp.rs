//! `BPF_PROG_TEST_RUN` fixtures for IPv6 in the data path (`lb_xdp6`, `lb_new6`, reached
//! from `lb_xdp` by tail call): DR6, NAT6, TUN6, the director's own ICMPv6 errors, extension
//! headers, truncations, fragments, NDP. Every frame is built here from scratch and every
//! checksum of what the program produced is recomputed here from scratch (not with the data
//! path's helpers). Root only.
//!
//! The balancer is loaded by the daemon's own `Dataplane::open`; the IPv6 service, its
//! backends and scheduling table are written into its pinned maps here, exactly as the
//! layout-5 contract in `lb_common` says the control plane writes them (the control plane's
//! IPv6 model is another change): what is tested is the data path reading them.

mod common;
// The fixture suites' MACs: the director's, the router's, real server n's.
use common::{Balancer, DIRECTOR_MAC, ROUTER_MAC, rs_mac};

use std::net::Ipv6Addr;

use lb_common::{fwd, proto, sched};
use lb_tests::{
    packet::{TCP_ACK, TCP_SYN},
    v6::{self, Ext, NH_DST, NH_HOP, NH_ICMP6, NH_ROUTING, l4_csum, tcp_seg, udp_dgram, v6},
    xdp_run::{self, Outcome, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

fn vip() -> Ipv6Addr {
    v6("2001:db8::100")
}
fn client() -> Ipv6Addr {
    v6("2001:db8:c::7")
}
fn rs(n: u8) -> Ipv6Addr {
    v6(&format!("2001:db8:1::{n}"))
}
fn tun_src() -> Ipv6Addr {
    v6("2001:db8::d1")
}
fn addr(a: Ipv6Addr) -> lb_common::Addr {
    v6::addr(a)
}

/// A frame from the router to the director.
fn frame6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, exts: &[Ext], nh: u8, l4: &[u8]) -> Vec<u8> {
    v6::frame6_eth(DIRECTOR_MAC, ROUTER_MAC, src, dst, hop, exts, nh, l4)
}

/// The test's reading of an IPv6 packet: (src, dst, hop limit, protocol, upper layer).
fn parse(ip: &[u8]) -> (Ipv6Addr, Ipv6Addr, u8, u8, Vec<u8>) {
    let p = v6::parse(ip);
    (p.src, p.dst, p.hop, p.nh, p.l4)
}

/// Checks the upper-layer checksum of an IPv6 packet from scratch.
fn verify_l4(ip: &[u8]) {
    assert!(
        v6::l4_ok(&v6::parse(ip)),
        "bad upper-layer checksum in {ip:02x?}"
    );
}

/// A TCP segment (no extension headers, hop limit 64) from the router to the director.
fn tcp_frame(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    frame6(
        src,
        dst,
        64,
        &[],
        proto::TCP,
        &tcp_seg(src, sport, dst, dport, flags),
    )
}

/// A UDP datagram (no extension headers, hop limit 64) from the router to the director.
fn udp_frame(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    frame6(
        src,
        dst,
        64,
        &[],
        proto::UDP,
        &udp_dgram(src, sport, dst, dport),
    )
}

fn syn(sport: u16) -> Vec<u8> {
    tcp_frame(client(), sport, vip(), 80, TCP_SYN)
}

fn tcp6(sport: u16, flags: u8, exts: &[Ext]) -> Vec<u8> {
    frame6(
        client(),
        vip(),
        64,
        exts,
        proto::TCP,
        &tcp_seg(client(), sport, vip(), 80, flags),
    )
}

// ---------------------------------------------------------------------------------------
// The balancer with an IPv6 service written into its maps.

struct Fixture {
    bal: Balancer,
}

/// One IPv6 service and its real servers.
struct Svc {
    port: u16,
    proto: u8,
    sched: u8,
    fwd: u8,
    /// (real server n, port).
    dests: Vec<(u8, u16)>,
    persist_plen: Option<u32>,
    mtu: u16,
}

impl Svc {
    fn new(fwd: u8, dests: &[(u8, u16)]) -> Self {
        Self {
            port: 80,
            proto: proto::TCP,
            sched: sched::RR,
            fwd,
            dests: dests.to_vec(),
            persist_plen: None,
            mtu: 0,
        }
    }
}

impl Fixture {
    fn new(s: Svc) -> Self {
        let f = Self {
            bal: Balancer::open("v6dp", 4096),
        };
        f.install(&s);
        f
    }

    /// Writes `s` into the maps as service 0. Every real server is "reached" through
    /// loopback, the interface BPF_PROG_TEST_RUN reports as ingress, so a forwarded packet
    /// comes back as XDP_TX.
    fn install(&self, s: &Svc) {
        v6::install(
            self.bal.pins(),
            &v6::Svc {
                index: 0,
                vip: vip(),
                port: s.port,
                proto: s.proto,
                sched: s.sched,
                fwd: s.fwd,
                persist_plen: s.persist_plen,
                tun_src: tun_src(),
                dests: s
                    .dests
                    .iter()
                    .map(|&(n, port)| v6::Dest {
                        addr: rs(n),
                        port,
                        ifindex: 1,
                        dmac: rs_mac(n),
                        smac: DIRECTOR_MAC,
                        mtu: s.mtu,
                    })
                    .collect(),
            },
        );
    }

    /// Where replies to `client` go, as the data path caches it after a FIB lookup (the
    /// namespace of the test has no route to the client).
    fn client_hop(&self, client: Ipv6Addr, _mtu: u16) {
        v6::client_hop(self.bal.pins(), client, 1, ROUTER_MAC, DIRECTOR_MAC);
    }

    fn run(&self, frame: &[u8]) -> Outcome {
        self.bal.run(frame, 0)
    }

    fn counter(&self, name: &str) -> u64 {
        self.bal.counter(name)
    }

    /// DR: the real server a frame went to, checking that only the MACs changed.
    fn dr_to(&self, frame: &[u8]) -> u8 {
        self.bal.forwarded_to(frame)
    }

    fn passed_untouched(&self, frame: &[u8], what: &str) {
        let out = self.run(frame);
        assert_eq!(out.action, XDP_PASS, "{what}: {out:?}");
        assert_eq!(out.data, frame, "{what}: passed byte for byte");
    }
}

// ---------------------------------------------------------------------------------------
// DR6, scheduling, connections.

#[test]
fn dr6_rr_alternates_new_flows_and_flows_stick() {
    let f = Fixture::new(Svc::new(fwd::DR, &[(1, 80), (2, 80)]));
    let picks: Vec<u8> = (0..30).map(|i| f.dr_to(&syn(40000 + i))).collect();
    assert_eq!(picks.iter().filter(|&&n| n == 1).count(), 15, "{picks:?}");
    assert_eq!(picks.iter().filter(|&&n| n == 2).count(), 15, "{picks:?}");
    for w in picks.windows(2) {
        assert_ne!(w[0], w[1], "rr alternates: {picks:?}");
    }
    // Later segments follow their connection (the SYN_RECV embryo, then the table).
    for (i, &n) in picks.iter().enumerate().take(6) {
        for flags in [TCP_ACK, TCP_ACK | 0x08, TCP_ACK | 0x01] {
            assert_eq!(f.dr_to(&tcp6(40000 + i as u16, flags, &[])), n);
        }
    }
    assert_eq!(f.counter("new_conn"), 30);
    // A segment of no connection that is not a SYN is the stack's, as for IPv4.
    f.passed_untouched(&tcp6(49999, TCP_ACK, &[]), "ACK without a connection");
    assert_eq!(f.counter("pass_no_conn"), 1);
}

#[test]
fn dr6_udp_is_balanced_and_a_zero_udp_checksum_is_dropped() {
    let mut s = Svc::new(fwd::DR, &[(1, 53), (2, 53)]);
    s.port = 53;
    s.proto = proto::UDP;
    let f = Fixture::new(s);
    let d = |sport| udp_frame(client(), sport, vip(), 53);
    let a = f.dr_to(&d(5000));
    let b = f.dr_to(&d(5001));
    assert_ne!(a, b);
    assert_eq!(f.dr_to(&d(5000)), a, "a UDP flow sticks");
    // Checksum 0 is not allowed in IPv6 (RFC 8200 8.1): the kernel drops it, so does IPVS.
    let mut zero = d(5002);
    let n = zero.len();
    let l4 = n - 18;
    zero[l4 + 6] = 0;
    zero[l4 + 7] = 0;
    assert_eq!(f.run(&zero).action, XDP_DROP);
    assert_eq!(f.counter("drop_bad_csum"), 1);
}

/// sh hashes an IPv6 client as IPVS folds it (`Addr::sched_key`): the bucket the test
/// computes says which server the data path must pick.
#[test]
fn sh6_hashes_the_folded_client_address() {
    let mut s = Svc::new(fwd::DR, &[(1, 80), (2, 80), (3, 80)]);
    s.sched = sched::SH;
    let f = Fixture::new(s);
    for i in 0..24u16 {
        let c = v6(&format!("2001:db8:{:x}::{:x}", 0xc00 + i, 7 * i + 1));
        let bucket = lb_common::hash::sh_bucket(addr(c).sched_key(), 0, 0);
        let want = (bucket % 3 + 1) as u8;
        let frame = tcp_frame(c, 1234, vip(), 80, TCP_SYN);
        assert_eq!(f.dr_to(&frame), want, "client {c}, bucket {bucket}");
    }
}

/// Persistence with an IPv6 prefix (`-M 64`): every client of one /64 sticks to one server
/// while rr alternates between networks.
#[test]
fn persistence6_keys_on_the_prefix() {
    let mut s = Svc::new(fwd::DR, &[(1, 80), (2, 80)]);
    s.persist_plen = Some(64);
    let f = Fixture::new(s);
    let from = |c: Ipv6Addr, sport| tcp_frame(c, sport, vip(), 80, TCP_SYN);
    let a = f.dr_to(&from(v6("2001:db8:aa:1::1"), 1000));
    let b = f.dr_to(&from(v6("2001:db8:bb:1::1"), 1000));
    assert_ne!(a, b, "two networks, rr");
    for i in 0..10u16 {
        let c = v6(&format!("2001:db8:aa:1:{:x}::{:x}", i * 77, i + 2));
        assert_eq!(
            f.dr_to(&from(c, 2000 + i)),
            a,
            "{c} is in 2001:db8:aa:1::/64"
        );
        let c = v6(&format!("2001:db8:bb:1:{:x}::{:x}", i * 13, i + 2));
        assert_eq!(
            f.dr_to(&from(c, 2000 + i)),
            b,
            "{c} is in 2001:db8:bb:1::/64"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Extension headers, fragments, truncations, NDP.

#[test]
fn extension_headers_are_walked_to_the_tcp_header() {
    let f = Fixture::new(Svc::new(fwd::DR, &[(1, 80), (2, 80)]));
    let chains: Vec<Vec<Ext>> = vec![
        vec![Ext::Opts(NH_HOP, 0)],
        vec![Ext::Opts(NH_ROUTING, 1)],
        vec![Ext::Opts(NH_DST, 2)],
        // A first fragment (offset 0, more fragments) carries the TCP header.
        vec![Ext::Frag(1)],
        vec![
            Ext::Opts(NH_HOP, 1),
            Ext::Opts(NH_DST, 0),
            Ext::Opts(NH_ROUTING, 0),
            Ext::Frag(1),
            Ext::Opts(NH_DST, 3),
        ],
        // Eight: the most walked.
        vec![Ext::Opts(NH_DST, 0); 8],
    ];
    for (i, chain) in chains.iter().enumerate() {
        let sport = 41000 + i as u16;
        let n = f.dr_to(&tcp6(sport, TCP_SYN, chain));
        // The connection is the same with or without the headers.
        assert_eq!(f.dr_to(&tcp6(sport, TCP_ACK, &[])), n, "chain {i}");
    }
    assert_eq!(f.counter("new_conn"), chains.len() as u64);

    // Nine headers: not walked to the end; passed untouched, counted.
    f.passed_untouched(
        &tcp6(41100, TCP_SYN, &[Ext::Opts(NH_DST, 0); 9]),
        "nine headers",
    );
    assert_eq!(f.counter("pass_ipv6_ext"), 1);
    // A later fragment has no TCP header: passed, as IPv4's.
    f.passed_untouched(
        &tcp6(41101, TCP_SYN, &[Ext::Frag(0x00b9)]),
        "a later fragment",
    );
    f.passed_untouched(
        &tcp6(41102, TCP_SYN, &[Ext::Frag(0x0008)]),
        "the last fragment",
    );
    assert_eq!(f.counter("pass_fragment"), 2);
    // An extension header claiming more than the packet holds.
    let mut long = tcp6(41103, TCP_SYN, &[Ext::Opts(NH_DST, 0)]);
    long[54 + 1] = 200;
    f.passed_untouched(&long, "a header past the payload");
    // No next header, ESP: no upper layer for a service.
    let none = frame6(client(), vip(), 64, &[Ext::Opts(NH_DST, 0)], 59, &[]);
    f.passed_untouched(&none, "no next header");
    let esp = frame6(client(), vip(), 64, &[], 50, &[0; 16]);
    f.passed_untouched(&esp, "ESP");
    assert_eq!(f.counter("new_conn"), chains.len() as u64);
}

/// Every truncation of a service packet (the payload length left as it was) is never
/// forwarded: the frame is shorter than the packet claims.
#[test]
fn no_truncation_of_an_ipv6_service_packet_is_forwarded() {
    let f = Fixture::new(Svc::new(fwd::DR, &[(1, 80), (2, 80)]));
    for chain in [vec![], vec![Ext::Opts(NH_HOP, 0), Ext::Frag(1)]] {
        let whole = tcp6(42000, TCP_SYN, &chain);
        // (BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header.)
        for len in 14..whole.len() {
            let out = f.run(&whole[..len]);
            assert!(
                out.action == XDP_PASS || out.action == XDP_DROP,
                "{len} of {} bytes: {out:?}",
                whole.len()
            );
        }
        // And a payload length shorter than the TCP header (the frame whole).
        let mut short = whole.clone();
        let claimed = (whole.len() - 54 - 10) as u16;
        short[18..20].copy_from_slice(&claimed.to_be_bytes());
        let out = f.run(&short);
        assert!(out.action == XDP_PASS || out.action == XDP_DROP, "{out:?}");
    }
    assert_eq!(f.counter("new_conn"), 0);
    assert_eq!(f.counter("tx"), 0);
}

#[test]
fn ndp_and_other_ipv6_traffic_pass_untouched() {
    let f = Fixture::new(Svc::new(fwd::DR, &[(1, 80), (2, 80)]));
    // A neighbour solicitation for the VIP, to its solicited-node multicast address.
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&vip().octets());
    ns.extend_from_slice(&[1, 1, 0x02, 0, 0, 0, 0, 0xee]);
    let snm = v6("ff02::1:ff00:100");
    let c = l4_csum(client(), snm, NH_ICMP6, &ns);
    ns[2..4].copy_from_slice(&c.to_be_bytes());
    f.passed_untouched(
        &frame6(client(), snm, 255, &[], NH_ICMP6, &ns),
        "NS (multicast)",
    );
    // ... and unicast to the VIP (a reachability probe), and an advertisement.
    let c = l4_csum(client(), vip(), NH_ICMP6, &ns);
    ns[2..4].copy_from_slice(&c.to_be_bytes());
    f.passed_untouched(
        &frame6(client(), vip(), 255, &[], NH_ICMP6, &ns),
        "NS (unicast)",
    );
    ns[0] = 136;
    f.passed_untouched(&frame6(client(), vip(), 255, &[], NH_ICMP6, &ns), "NA");
    // An echo request to the VIP, MLD with its hop-by-hop router alert.
    let echo = [128, 0, 0, 0, 0, 1, 0, 1];
    f.passed_untouched(&frame6(client(), vip(), 64, &[], NH_ICMP6, &echo), "echo");
    let mld = [143, 0, 0, 0, 0, 0, 0, 0];
    f.passed_untouched(
        &frame6(
            client(),
            v6("ff02::16"),
            1,
            &[Ext::Opts(NH_HOP, 0)],
            NH_ICMP6,
            &mld,
        ),
        "MLDv2 report",
    );
    // TCP to another address or port, and an IPv4-mapped destination (no IPv6 host's).
    let other = tcp_frame(client(), 1, rs(1), 80, TCP_SYN);
    f.passed_untouched(&other, "not a VIP");
    f.passed_untouched(
        &tcp_frame(client(), 1, vip(), 81, TCP_SYN),
        "not the service's port",
    );
    let mapped = v6("::ffff:192.0.2.100");
    f.passed_untouched(
        &tcp_frame(client(), 1, mapped, 80, TCP_SYN),
        "IPv4-mapped destination",
    );
    assert_eq!(f.counter("new_conn"), 0);
}

#[test]
fn martian_ipv6_sources_never_open_a_connection() {
    let f = Fixture::new(Svc::new(fwd::DR, &[(1, 80), (2, 80)]));
    for src in ["::", "::1", "ff02::1", "::ffff:198.51.100.7"] {
        let s = v6(src);
        let frame = tcp_frame(s, 1000, vip(), 80, TCP_SYN);
        assert_eq!(f.run(&frame).action, XDP_DROP, "source {src}");
    }
    assert_eq!(f.counter("drop_martian"), 4);
    assert_eq!(f.counter("new_conn"), 0);
}

// ---------------------------------------------------------------------------------------
// NAT6.

#[test]
fn nat6_dnats_requests_and_snats_replies_with_checksums_right() {
    let f = Fixture::new(Svc::new(fwd::NAT, &[(1, 8080), (2, 8081)]));
    f.client_hop(client(), 0);
    let mut seen = Vec::new();
    for sport in [43000u16, 43001] {
        let out = f.run(&syn(sport));
        assert!(
            out.action == XDP_TX || out.action == XDP_REDIRECT,
            "{out:?}"
        );
        let ip = &out.data[14..];
        verify_l4(ip);
        let (src, dst, hop, nh, l4) = parse(ip);
        assert_eq!(
            (src, hop, nh),
            (client(), 63, proto::TCP),
            "source kept, hop limit - 1"
        );
        let n = out.data[5];
        assert_eq!(&out.data[..6], &rs_mac(n));
        assert_eq!(dst, rs(n), "DNAT to the real server");
        let rport = u16::from_be_bytes([l4[2], l4[3]]);
        assert_eq!(rport, 8079 + n as u16, "port mapping");
        assert_eq!(u16::from_be_bytes([l4[0], l4[1]]), sport);
        seen.push((sport, n));

        // The real server's SYN-ACK comes back: SNAT to VIP:80, to the client's hop.
        let reply = tcp_frame(rs(n), rport, client(), sport, TCP_SYN | TCP_ACK);
        let out = f.run(&reply);
        assert_eq!(out.action, XDP_TX, "{out:?}");
        assert_eq!(&out.data[..6], &ROUTER_MAC);
        let ip = &out.data[14..];
        verify_l4(ip);
        let (src, dst, hop, _, l4) = parse(ip);
        assert_eq!((src, dst, hop), (vip(), client(), 63));
        assert_eq!(
            u16::from_be_bytes([l4[0], l4[1]]),
            80,
            "SNAT to the VIP's port"
        );
    }
    assert_ne!(seen[0].1, seen[1].1, "rr");
    // A packet from a real server that belongs to no connection is the stack's.
    let stray = tcp_frame(rs(1), 8080, client(), 1, TCP_ACK);
    f.passed_untouched(&stray, "no connection");
    assert_eq!(f.counter("pass_no_reply_conn"), 1);
}

#[test]
fn nat6_udp_checksum_and_hop_limit_expiry() {
    let mut s = Svc::new(fwd::NAT, &[(1, 5353)]);
    s.port = 53;
    s.proto = proto::UDP;
    let f = Fixture::new(s);
    f.client_hop(client(), 0);
    // Many source ports: the rewritten checksum is right whatever it comes out as
    // (including the 0 → 0xffff case, if one of them hits it).
    for sport in 1000..1200u16 {
        let d = udp_frame(client(), sport, vip(), 53);
        let out = f.run(&d);
        assert_eq!(out.action, XDP_TX, "{out:?}");
        let ip = &out.data[14..];
        verify_l4(ip);
        let (_, _, _, _, l4) = parse(ip);
        assert_ne!(&l4[6..8], &[0, 0], "UDP over IPv6 always has a checksum");
        assert_eq!(u16::from_be_bytes([l4[2], l4[3]]), 5353);
    }
    // Hop limit 1: a router's Time Exceeded back to the client, from the VIP.
    let d = frame6(
        client(),
        vip(),
        1,
        &[],
        proto::UDP,
        &udp_dgram(client(), 999, vip(), 53),
    );
    let out = f.run(&d);
    assert_eq!(out.action, XDP_TX, "{out:?}");
    assert_eq!(&out.data[..6], &ROUTER_MAC, "back where it came from");
    let ip = &out.data[14..];
    verify_l4(ip);
    let (src, dst, _, nh, icmp) = parse(ip);
    assert_eq!((src, dst, nh), (vip(), client(), NH_ICMP6));
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 0),
        "Time Exceeded, hop limit exceeded in transit"
    );
    assert_eq!(&icmp[8..48], &d[14..54], "quotes the packet's header");
    assert_eq!(f.counter("icmp_sent"), 1);
}

#[test]
fn nat6_too_big_for_the_path_gets_packet_too_big() {
    let mut s = Svc::new(fwd::NAT, &[(1, 8080)]);
    s.mtu = 1280;
    let f = Fixture::new(s);
    f.client_hop(client(), 0);
    let mut seg = tcp_seg(client(), 44000, vip(), 80, TCP_SYN);
    seg.resize(1400, 0x5a);
    seg[16] = 0;
    seg[17] = 0;
    let c = l4_csum(client(), vip(), proto::TCP, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let big = frame6(client(), vip(), 64, &[], proto::TCP, &seg);
    let out = f.run(&big);
    assert_eq!(out.action, XDP_TX, "{out:?}");
    let ip = &out.data[14..];
    verify_l4(ip);
    let (src, dst, _, nh, icmp) = parse(ip);
    assert_eq!((src, dst, nh), (vip(), client(), NH_ICMP6));
    assert_eq!((icmp[0], icmp[1]), (2, 0), "Packet Too Big");
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        1280
    );
    assert!(ip.len() <= 1280, "an ICMPv6 error fits the minimum MTU");
}

// ---------------------------------------------------------------------------------------
// ICMPv6 errors about connections.

/// An ICMPv6 error of `kind` from `from` to `to`, quoting `quoted` (an IPv6 packet).
fn icmp6_error(from: Ipv6Addr, to: Ipv6Addr, kind: u8, info: u32, quoted: &[u8]) -> Vec<u8> {
    frame6(
        from,
        to,
        64,
        &[],
        NH_ICMP6,
        &v6::icmp6_error(from, to, kind, info, quoted),
    )
}

fn router() -> Ipv6Addr {
    v6("2001:db8:ff::1")
}

#[test]
fn icmp6_errors_about_a_dr_connection_go_to_its_real_server() {
    let f = Fixture::new(Svc::new(fwd::DR, &[(1, 80), (2, 80)]));
    let n = f.dr_to(&syn(48000));
    // A router on the way back says the real server's reply (VIP:80 → client) was too big.
    let reply = tcp_frame(vip(), 80, client(), 48000, TCP_ACK);
    let ptb = icmp6_error(router(), vip(), 2, 1400, &reply[14..]);
    assert_eq!(f.dr_to(&ptb), n, "to the connection's real server");
    let unreach = icmp6_error(router(), vip(), 1, 0, &reply[14..]);
    assert_eq!(f.dr_to(&unreach), n);
    assert_eq!(f.counter("icmp_forwarded"), 2);
    // About no connection, or an informational message: the stack's.
    let other = tcp_frame(vip(), 80, client(), 1, TCP_ACK);
    f.passed_untouched(
        &icmp6_error(router(), vip(), 2, 1400, &other[14..]),
        "no connection",
    );
    // Sent to someone other than the quoted packet's source: about nothing of ours.
    f.passed_untouched(
        &icmp6_error(router(), rs(1), 2, 1400, &reply[14..]),
        "not to the quoted source",
    );
    assert_eq!(f.counter("icmp_forwarded"), 2);
}

#[test]
fn icmp6_errors_about_a_nat_connection_are_translated() {
    let f = Fixture::new(Svc::new(fwd::NAT, &[(1, 8080)]));
    f.client_hop(client(), 0);
    let out = f.run(&syn(49000));
    assert_eq!(out.action, XDP_TX, "{out:?}");
    let dnated = out.data[14..].to_vec();

    // About the DNATed request (client → RIP:8080), from a router near the real server, to
    // the client: the client must see it about client → VIP:80, from the VIP.
    let err = icmp6_error(router(), client(), 1, 0, &dnated);
    let out = f.run(&err);
    assert_eq!(out.action, XDP_TX, "{out:?}");
    assert_eq!(&out.data[..6], &ROUTER_MAC, "the client's hop");
    let ip = &out.data[14..];
    verify_l4(ip);
    let (src, dst, hop, nh, icmp) = parse(ip);
    assert_eq!((src, dst, hop, nh), (vip(), client(), 63, NH_ICMP6));
    let (qs, qd, _, _, ql4) = parse(&icmp[8..]);
    assert_eq!(
        (qs, qd),
        (client(), vip()),
        "the quote as the client sent it"
    );
    assert_eq!(u16::from_be_bytes([ql4[2], ql4[3]]), 80);

    // About a reply (VIP:80 → client, as SNATed) coming back to the VIP: to the real
    // server, about RIP:8080 → client.
    let reply = frame6(
        vip(),
        client(),
        63,
        &[],
        proto::TCP,
        &tcp_seg(vip(), 80, client(), 49000, TCP_ACK),
    );
    let err = icmp6_error(router(), vip(), 2, 1280, &reply[14..]);
    let out = f.run(&err);
    assert_eq!(out.action, XDP_TX, "{out:?}");
    assert_eq!(&out.data[..6], &rs_mac(1));
    let ip = &out.data[14..];
    verify_l4(ip);
    let (src, dst, _, _, icmp) = parse(ip);
    assert_eq!((src, dst), (router(), rs(1)));
    let (qs, _, _, _, ql4) = parse(&icmp[8..]);
    assert_eq!(qs, rs(1));
    assert_eq!(u16::from_be_bytes([ql4[0], ql4[1]]), 8080);
    assert_eq!(f.counter("icmp_forwarded"), 2);
}

// ---------------------------------------------------------------------------------------
// TUN6.

#[test]
fn tun6_encapsulates_ipv6_in_ipv6() {
    let f = Fixture::new(Svc::new(fwd::TUN, &[(1, 80), (2, 80)]));
    let inner = syn(45000);
    let out = f.run(&inner);
    assert_eq!(out.action, XDP_TX, "{out:?}");
    let n = out.data[5];
    assert_eq!(&out.data[..6], &rs_mac(n));
    assert_eq!(&out.data[12..14], &[0x86, 0xdd]);
    let outer = &out.data[14..];
    let (src, dst, hop, nh, payload) = parse(outer);
    assert_eq!(
        (src, dst, hop, nh),
        (tun_src(), rs(n), 64, 41),
        "outer header"
    );
    assert_eq!(&payload[..], &inner[14..], "the inner packet untouched");
    assert_eq!(&outer[..4], &inner[14..18], "class and flow label kept");
    // The connection's next packet goes the same way.
    let out = f.run(&tcp6(45000, TCP_ACK, &[]));
    assert_eq!(out.data[5], n);
}

#[test]
fn tun6_past_the_path_mtu_sends_packet_too_big() {
    let mut s = Svc::new(fwd::TUN, &[(1, 80)]);
    s.mtu = 1300;
    let f = Fixture::new(s);
    let mut seg = tcp_seg(client(), 46000, vip(), 80, TCP_SYN);
    // 40 + 1240 = 1280 bytes: 1320 with the outer header, past 1300.
    seg.resize(1240, 0x11);
    seg[16] = 0;
    seg[17] = 0;
    let c = l4_csum(client(), vip(), proto::TCP, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let out = f.run(&frame6(client(), vip(), 64, &[], proto::TCP, &seg));
    assert_eq!(out.action, XDP_TX, "{out:?}");
    let ip = &out.data[14..];
    verify_l4(ip);
    let (src, dst, _, nh, icmp) = parse(ip);
    assert_eq!((src, dst, nh), (vip(), client(), NH_ICMP6));
    assert_eq!((icmp[0], icmp[1]), (2, 0));
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        1260,
        "the MTU left for the inner packet"
    );
    // One that fits is tunnelled.
    seg.truncate(1200);
    seg[16] = 0;
    seg[17] = 0;
    let c = l4_csum(client(), vip(), proto::TCP, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    seg[0..2].copy_from_slice(&46001u16.to_be_bytes());
    let c2 = {
        let mut t = seg.clone();
        t[16] = 0;
        t[17] = 0;
        l4_csum(client(), vip(), proto::TCP, &t)
    };
    seg[16..18].copy_from_slice(&c2.to_be_bytes());
    let out = f.run(&frame6(client(), vip(), 64, &[], proto::TCP, &seg));
    assert_eq!(out.action, XDP_TX);
    assert_eq!(parse(&out.data[14..]).3, 41);
}

/// `lb_decap` (the TUN real server's program) strips IPv6-in-IPv6 for its IPv6 VIPs only.
#[test]
fn lb_decap_accepts_ipv6_in_ipv6_for_its_vips() {
    let mut bpf = aya::Ebpf::load(lb_ctl::realserver::DECAP_OBJ).expect("loading lb_decap");
    let mut vips: aya::maps::HashMap<_, lb_common::Addr, u8> =
        aya::maps::HashMap::try_from(bpf.map_mut(lb_common::maps::DECAP_VIPS).expect("decap map"))
            .unwrap();
    vips.insert(addr(vip()), 1, 0).unwrap();
    let prog: &mut aya::programs::Xdp = bpf
        .program_mut(lb_common::progs::DECAP)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().expect("loading lb_decap into the kernel");
    let encap = |inner: &[u8], plen_delta: i32| {
        let ip = &inner[14..];
        let mut f = Vec::new();
        f.extend_from_slice(&rs_mac(1));
        f.extend_from_slice(&DIRECTOR_MAC);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&((ip.len() as i32 + plen_delta) as u16).to_be_bytes());
        f.extend_from_slice(&[41, 64]);
        f.extend_from_slice(&tun_src().octets());
        f.extend_from_slice(&rs(1).octets());
        f.extend_from_slice(ip);
        f
    };
    let inner = syn(47000);
    let out = xdp_run::run_xdp(prog, &encap(&inner, 0), 1, 0).unwrap();
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(
        &out.data[..12],
        &encap(&inner, 0)[..12],
        "MACs of the outer frame"
    );
    assert_eq!(
        &out.data[12..],
        &inner[12..],
        "the inner packet, as if it came plain"
    );
    // Not for one of its VIPs, or an outer payload length past the frame: untouched.
    let other = tcp_frame(client(), 1, rs(2), 80, TCP_SYN);
    for (frame, what) in [
        (encap(&other, 0), "another inner destination"),
        (encap(&inner, 8), "payload length past the frame"),
    ] {
        let out = xdp_run::run_xdp(prog, &frame, 1, 0).unwrap();
        assert_eq!((out.action, &out.data), (XDP_PASS, &frame), "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// The IPv6 programs broken on purpose.

/// `lb_xdp6` and `lb_new6` taken out of the program array (as a control plane of an older
/// layout would leave it, or a load that failed half-way): IPv6 new connections are dropped
/// and counted, then every IPv6 frame passes untouched, while IPv4 keeps being forwarded,
/// established flows and new ones alike.
#[test]
fn without_the_ipv6_programs_ipv4_keeps_forwarding() {
    use lb_ctl::{
        dataplane::{Paths, RsPath},
        model::{DestConfig, Forward, Model, Scheduler, ServiceConfig, ServiceKey},
    };
    use std::net::Ipv4Addr;
    let mut f = Fixture {
        bal: Balancer::open("v6dp-progs", 4096),
    };
    let (vip4, rs4) = (Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 11));
    let mut m = Model::default();
    m.add(
        ServiceConfig::new(ServiceKey::tcp(vip4, 80), Scheduler::Rr),
        [DestConfig::new(rs4, 80, Forward::Dr, 1)],
    )
    .unwrap();
    let mut paths = Paths::new();
    paths.insert(
        rs4.into(),
        RsPath {
            ifindex: 1,
            next_hop: rs4.into(),
            smac: DIRECTOR_MAC,
            dmac: Some(rs_mac(11)),
            ..RsPath::default()
        },
    );
    f.bal.dp_mut().sync(&m, &paths).expect("sync");
    // The IPv6 service after the sync (which flips the live half).
    f.install(&Svc::new(fwd::DR, &[(1, 80)]));
    let tcp4 = |sport, flags| {
        lb_tests::packet::Frame::tcp(Ipv4Addr::new(198, 51, 100, 7), sport, vip4, 80, flags, b"")
            .eth(DIRECTOR_MAC, ROUTER_MAC)
    };
    assert_eq!(f.dr_to(&tcp4(1000, TCP_SYN)), 11);
    assert_eq!(f.dr_to(&syn(1000)), 1);
    assert_eq!(f.dr_to(&tcp6(1000, TCP_ACK, &[])), 1);

    let progs = aya::maps::MapData::from_pin(pins_maps(&f).join(lb_common::maps::PROGS)).unwrap();
    let mut progs = aya::maps::ProgramArray::try_from(aya::maps::Map::ProgramArray(progs)).unwrap();
    progs.clear_index(&lb_common::prog_index::NEW6).unwrap();
    let out = f.run(&syn(1001));
    assert_eq!(
        out.action, XDP_DROP,
        "a new IPv6 connection without lb_new6: {out:?}"
    );
    assert_eq!(f.counter("drop_tail_call"), 1);
    assert_eq!(
        f.dr_to(&tcp6(1000, TCP_ACK, &[])),
        1,
        "established IPv6 flows go on"
    );
    assert_eq!(f.dr_to(&tcp4(1000, TCP_ACK)), 11);
    assert_eq!(f.dr_to(&tcp4(1001, TCP_SYN)), 11);

    progs.clear_index(&lb_common::prog_index::XDP6).unwrap();
    let before = f.counter("pass_not_ipv4");
    f.passed_untouched(&tcp6(1000, TCP_ACK, &[]), "IPv6 without lb_xdp6");
    f.passed_untouched(&syn(1002), "IPv6 without lb_xdp6");
    assert_eq!(f.counter("pass_not_ipv4"), before + 2);
    assert_eq!(f.dr_to(&tcp4(1000, TCP_ACK)), 11, "IPv4 established");
    assert_eq!(f.dr_to(&tcp4(1002, TCP_SYN)), 11, "IPv4 new");
}

fn pins_maps(f: &Fixture) -> std::path::PathBuf {
    f.bal.pins().join("maps")
}
