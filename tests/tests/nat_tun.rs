//! `BPF_PROG_TEST_RUN` fixtures for NAT, TUN and ICMP: each expected packet is built from
//! scratch with freshly computed checksums and compared byte for byte with what the program
//! produced. `bpf_fib_lookup` needs routes and neighbours, so the program runs from inside a
//! namespace that has them: an "external" and an "internal" interface, static neighbours,
//! a router on the internal side, and a route with a small MTU. Root only.

use std::net::Ipv4Addr;

mod common;
use common::Balancer;

use lb_ctl::{
    dataplane::{Dataplane, Paths, RsPath},
    model::{DestConfig, Forward, Model, Op, Protocol, Scheduler, ServiceConfig, ServiceKey},
};
use lb_tests::{
    packet::{Frame, IP_DF, TCP_ACK, TCP_FIN, TCP_SYN, verify_checksums},
    routed::{CLIENT, CLIENT_MAC, INT_ADDR, Net, ROUTER, ROUTER_MAC, far_rs, rs, rs_mac},
    xdp_run::{Outcome, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const TUN_SRC: Ipv4Addr = INT_ADDR;
/// A real server behind the router, on a path with a 600-byte MTU.
const SMALL_MTU_RS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);

/// A loaded balancer with its own pins (removed on drop) and the namespace to run it in.
struct Fixture {
    bal: Balancer,
    net: Net,
    model: Model,
}

impl Fixture {
    fn new(model: Model) -> Self {
        let mut f = Self {
            bal: Balancer::with_sched_table("nat-tun", 4096, 4096),
            net: Net::new("fib", &[SMALL_MTU_RS], None),
            model: Model::default(),
        };
        f.set(model);
        f
    }

    /// What the daemon would resolve: on-link servers by their own MAC, the far ones through
    /// the router, the small-MTU path with its MTU.
    fn paths(&self) -> Paths {
        let mut p = Paths::new();
        let path = |next_hop: Ipv4Addr, dmac, mtu| RsPath {
            ifindex: self.net.int,
            next_hop: next_hop.into(),
            smac: self.net.int_mac,
            dmac: Some(dmac),
            tun_src: TUN_SRC.into(),
            mtu,
        };
        for n in 1..=4 {
            p.insert(rs(n).into(), path(rs(n), rs_mac(n), 1500));
            p.insert(far_rs(n).into(), path(ROUTER, ROUTER_MAC, 1500));
        }
        p.insert(SMALL_MTU_RS.into(), path(ROUTER, ROUTER_MAC, 600));
        p
    }

    fn dp(&mut self) -> &mut Dataplane {
        self.bal.dp_mut()
    }

    fn set(&mut self, model: Model) {
        let paths = self.paths();
        self.set_with(model, &paths);
    }

    fn set_with(&mut self, model: Model, paths: &Paths) {
        self.dp().sync(&model, paths).expect("sync");
        self.model = model;
    }

    /// Runs `frame` as if it arrived on `ifindex`, inside the namespace.
    fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> Outcome {
        self.net.ns.enter(|| self.bal.run(frame, ifindex))
    }

    fn arrives_from_client(&mut self, frame: &[u8]) -> Outcome {
        let ext = self.net.ext;
        self.run_on(ext, frame)
    }

    /// `frame` from the client, as it arrives on the outer interface.
    fn client_sends(&mut self, frame: &Frame) -> Outcome {
        let eth = client_frame(self, frame);
        self.arrives_from_client(&eth)
    }

    fn arrives_from_servers(&mut self, frame: &[u8]) -> Outcome {
        let int = self.net.int;
        self.run_on(int, frame)
    }

    fn counter(&mut self, name: &str) -> u64 {
        self.bal.counter(name)
    }
}

/// A real server of weight 1 without thresholds.
fn dest(addr: Ipv4Addr, port: u16, forward: Forward) -> DestConfig {
    DestConfig::new(addr, port, forward, 1)
}

fn one_service(proto: Protocol, port: u16, dests: &[DestConfig]) -> Model {
    let key = ServiceKey {
        proto,
        addr: VIP.into(),
        port,
    };
    let mut m = Model::default();
    m.apply(&Op::AddService(ServiceConfig::new(key, Scheduler::Rr)))
        .unwrap();
    for d in dests {
        m.apply(&Op::AddDest(key, *d)).unwrap();
    }
    m
}

/// A fixture whose one service (`proto`, `port`, rr) has rs1 on `rs_port` by NAT.
fn nat_fixture(proto: Protocol, port: u16, rs_port: u16) -> Fixture {
    Fixture::new(one_service(
        proto,
        port,
        &[dest(rs(1), rs_port, Forward::Nat)],
    ))
}

/// The client's frame as it arrives on `ext`.
fn client_frame(f: &Fixture, frame: &Frame) -> Vec<u8> {
    frame.eth(f.net.ext_mac, CLIENT_MAC)
}

/// Asserts `out` is `want` byte for byte, with a readable diff of where it differs.
fn assert_frame(what: &str, out: &Outcome, action: u32, want: &[u8]) {
    assert_eq!(
        out.action, action,
        "{what}: verdict, frame {:02x?}",
        out.data
    );
    if out.data != want {
        let first = out
            .data
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(want.len().min(out.data.len()));
        panic!(
            "{what}: frame differs from byte {first}\n got  {:02x?}\n want {:02x?}",
            out.data, want
        );
    }
    verify_checksums(&out.data[14..]).unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn nat_request_is_dnated_with_port_mapping_and_forwarded() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 8080);
    let syn = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b"");
    let out = f.client_sends(&syn);
    let want = Frame::tcp(CLIENT, 40000, rs(1), 8080, TCP_SYN, b"")
        .ttl(63)
        .eth(rs_mac(1), f.net.int_mac);
    assert_frame("DNAT", &out, XDP_REDIRECT, &want);
    assert_eq!(f.counter("redirect"), 1);
    // The client's address reaches the real server unchanged (DNAT, not full NAT).
    assert_eq!(&out.data[26..30], &CLIENT.octets());
}

#[test]
fn nat_reply_is_snated_back_to_the_vip() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 8080);
    f.client_sends(&Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b""));
    let synack = Frame::tcp(rs(1), 8080, CLIENT, 40000, TCP_SYN | TCP_ACK, b"");
    let out = f.arrives_from_servers(&synack.eth(f.net.int_mac, rs_mac(1)));
    let want = Frame::tcp(VIP, 80, CLIENT, 40000, TCP_SYN | TCP_ACK, b"")
        .ttl(63)
        .eth(CLIENT_MAC, f.net.ext_mac);
    assert_frame("SNAT", &out, XDP_REDIRECT, &want);
    let data = Frame::tcp(rs(1), 8080, CLIENT, 40000, TCP_ACK, &[0x42; 333]);
    let out = f.arrives_from_servers(&data.eth(f.net.int_mac, rs_mac(1)));
    let want = Frame::tcp(VIP, 80, CLIENT, 40000, TCP_ACK, &[0x42; 333])
        .ttl(63)
        .eth(CLIENT_MAC, f.net.ext_mac);
    assert_frame("SNAT with data", &out, XDP_REDIRECT, &want);
    let snap = f.dp().snapshot(None, &Default::default());
    assert_eq!(
        snap.services[0].stats.outpkts, 2,
        "replies count as OutPkts"
    );
}

#[test]
fn nat_connection_states_follow_both_directions() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 80);
    let c = |flags| {
        let fr = Frame::tcp(CLIENT, 40001, VIP, 80, flags, b"");
        client_frame(&f, &fr)
    };
    let s = |flags| Frame::tcp(rs(1), 80, CLIENT, 40001, flags, b"").eth(f.net.int_mac, rs_mac(1));
    let states = |f: &mut Fixture| -> Vec<String> {
        let t = Default::default();
        f.dp().conns(&t).into_iter().map(|c| c.state).collect()
    };
    let (syn, synack, ack, fin) = (
        c(TCP_SYN),
        s(TCP_SYN | TCP_ACK),
        c(TCP_ACK),
        s(TCP_FIN | TCP_ACK),
    );
    f.arrives_from_client(&syn);
    assert_eq!(states(&mut f), ["SYN_RECV"]);
    f.arrives_from_servers(&synack);
    f.arrives_from_client(&ack);
    assert_eq!(
        states(&mut f),
        ["ESTABLISHED"],
        "one entry per connection is listed"
    );
    // The server closes: OUTPUT fin in ESTABLISHED → FIN_WAIT.
    f.arrives_from_servers(&fin);
    assert_eq!(states(&mut f), ["FIN_WAIT"]);
}

#[test]
fn nat_udp_with_and_without_checksum() {
    let mut f = Fixture::new(one_service(
        Protocol::Udp,
        53,
        &[dest(rs(2), 5353, Forward::Nat)],
    ));
    let q = Frame::udp(CLIENT, 5000, VIP, 53, b"query");
    let out = f.client_sends(&q);
    let want = Frame::udp(CLIENT, 5000, rs(2), 5353, b"query")
        .ttl(63)
        .eth(rs_mac(2), f.net.int_mac);
    assert_frame("UDP DNAT", &out, XDP_REDIRECT, &want);
    // A datagram without checksum keeps none.
    let mut raw = client_frame(&f, &Frame::udp(CLIENT, 5001, VIP, 53, b"no checksum"));
    raw[14 + 20 + 6] = 0;
    raw[14 + 20 + 7] = 0;
    let out = f.arrives_from_client(&raw);
    assert_eq!(out.action, XDP_REDIRECT);
    assert_eq!(
        &out.data[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "UDP checksum 0 stays 0"
    );
    verify_checksums(&out.data[14..]).unwrap();
    // The reply.
    let r = Frame::udp(rs(2), 5353, CLIENT, 5000, b"answer").eth(f.net.int_mac, rs_mac(2));
    let out = f.arrives_from_servers(&r);
    let want = Frame::udp(VIP, 53, CLIENT, 5000, b"answer")
        .ttl(63)
        .eth(CLIENT_MAC, f.net.ext_mac);
    assert_frame("UDP SNAT", &out, XDP_REDIRECT, &want);
}

#[test]
fn packets_from_nat_servers_without_a_connection_pass() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 80);
    let stray = Frame::tcp(rs(1), 80, CLIENT, 40002, TCP_ACK, b"").eth(f.net.int_mac, rs_mac(1));
    let out = f.arrives_from_servers(&stray);
    assert_eq!((out.action, &out.data), (XDP_PASS, &stray));
    assert_eq!(f.counter("pass_no_reply_conn"), 1);
    // The real server's own traffic on other ports is not touched either.
    let other = Frame::tcp(rs(1), 22, CLIENT, 40002, TCP_ACK, b"").eth(f.net.int_mac, rs_mac(1));
    assert_eq!(f.arrives_from_servers(&other).action, XDP_PASS);
    assert_eq!(f.counter("pass_not_service"), 1);
}

#[test]
fn nat_with_an_unresolved_neighbour_hands_the_rewritten_packet_to_the_kernel() {
    // 192.0.2.15 has no neighbour entry in the namespace.
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(Ipv4Addr::new(192, 0, 2, 15), 80, Forward::Nat)],
    ));
    let out = f.client_sends(&Frame::tcp(CLIENT, 40003, VIP, 80, TCP_SYN, b""));
    assert_eq!(out.action, XDP_PASS);
    let want = Frame::tcp(
        CLIENT,
        40003,
        Ipv4Addr::new(192, 0, 2, 15),
        80,
        TCP_SYN,
        b"",
    )
    .ttl(63)
    .eth(f.net.ext_mac, CLIENT_MAC);
    assert_frame("DNAT for the kernel", &out, XDP_PASS, &want);
    assert_eq!(f.counter("pass_no_neigh"), 1);
}

#[test]
fn nat_ttl_1_gets_time_exceeded() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 80);
    let syn = Frame::tcp(CLIENT, 40004, VIP, 80, TCP_SYN, b"").ttl(1);
    let ip = syn.ip();
    let out = f.client_sends(&syn);
    let mut want = Frame::icmp_error(VIP, CLIENT, 11, 0, [0; 4], &ip[..28]);
    want.tos = 0xc0;
    want.id = 0;
    assert_frame(
        "time exceeded",
        &out,
        XDP_TX,
        &want.eth(CLIENT_MAC, f.net.ext_mac),
    );
    assert_eq!(f.counter("icmp_sent"), 1);
}

#[test]
fn tun_encapsulates_with_the_inner_packet_untouched() {
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(far_rs(1), 80, Forward::Tun)],
    ));
    for (df, payload) in [(IP_DF, &b""[..]), (0, &b"no DF"[..])] {
        let mut syn = Frame::tcp(CLIENT, 40010 + df / 0x4000, VIP, 80, TCP_SYN, payload);
        syn.frag = df;
        syn.tos = 0x10;
        let inner = syn.ip();
        let out = f.client_sends(&syn);
        let mut outer = Frame::raw(TUN_SRC, far_rs(1), 4, inner.clone());
        outer.frag = df; // DF copied from the inner packet
        outer.tos = 0x10;
        // The outer ID is the director's own, not the client's: 0 for an atomic (DF)
        // datagram, as the kernel; else from a counter (`tun_outer_ids_…` checks its values).
        outer.id = if df != 0 {
            0
        } else {
            u16::from_be_bytes([out.data[18], out.data[19]])
        };
        let want = outer.eth(ROUTER_MAC, f.net.int_mac);
        assert_frame("IPIP", &out, XDP_REDIRECT, &want);
        assert_eq!(&out.data[34..], &inner[..], "the inner packet is untouched");
    }
}

#[test]
fn tun_too_big_with_df_gets_frag_needed_and_without_df_passes() {
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(SMALL_MTU_RS, 80, Forward::Tun)],
    ));
    f.client_sends(&Frame::tcp(CLIENT, 40020, VIP, 80, TCP_SYN, b""));
    // 600 bytes inner + 20 of tunnel header > the path's 600.
    let big = Frame::tcp(CLIENT, 40020, VIP, 80, TCP_ACK, &[1; 560]);
    assert_eq!(big.ip().len(), 600);
    let ip = big.ip();
    let out = f.client_sends(&big);
    let mut want = Frame::icmp_error(VIP, CLIENT, 3, 4, [0, 0, 0x02, 0x44], &ip[..28]); // MTU 580
    want.tos = 0xc0;
    want.id = 0;
    assert_frame(
        "frag needed",
        &out,
        XDP_TX,
        &want.eth(CLIENT_MAC, f.net.ext_mac),
    );
    let mut no_df = big.clone();
    no_df.frag = 0;
    let frame = client_frame(&f, &no_df);
    let out = f.arrives_from_client(&frame);
    assert_eq!((out.action, &out.data), (XDP_PASS, &frame));
    assert_eq!(f.counter("pass_too_big"), 1);
    // A packet that fits still goes through the tunnel.
    let small = Frame::tcp(CLIENT, 40020, VIP, 80, TCP_ACK, &[1; 100]);
    assert_eq!(f.client_sends(&small).action, XDP_REDIRECT);
}

#[test]
fn icmp_from_a_nat_server_is_translated_to_the_vip() {
    let mut f = nat_fixture(Protocol::Udp, 53, 5353);
    f.client_sends(&Frame::udp(CLIENT, 5000, VIP, 53, b"query"));
    // The real server's port is closed: it answers with port unreachable, quoting the
    // DNATed datagram (client → RIP:5353).
    let dnated = Frame::udp(CLIENT, 5000, rs(1), 5353, b"query").ttl(63).ip();
    let unreach = Frame::icmp_error(rs(1), CLIENT, 3, 3, [0; 4], &dnated[..28]);
    let out = f.arrives_from_servers(&unreach.eth(f.net.int_mac, rs_mac(1)));
    // Translated as IPVS does: outer source → VIP, quoted destination → VIP:53.
    let original = Frame::udp(CLIENT, 5000, VIP, 53, b"query").ttl(63).ip();
    let mut quoted = original[..28].to_vec();
    // The quote's UDP checksum is the real server's view (it covers data not quoted, so it
    // cannot be fixed up); IPVS leaves it too.
    quoted[26..28].copy_from_slice(&dnated[26..28]);
    let want = Frame::icmp_error(VIP, CLIENT, 3, 3, [0; 4], &quoted)
        .ttl(63)
        .eth(CLIENT_MAC, f.net.ext_mac);
    assert_frame("ICMP from the server side", &out, XDP_REDIRECT, &want);
    assert_eq!(f.counter("icmp_forwarded"), 1);
}

#[test]
fn icmp_about_a_reply_is_translated_to_the_real_server() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 8080);
    f.client_sends(&Frame::tcp(CLIENT, 40030, VIP, 80, TCP_SYN, b""));
    // A router on the client's side: our reply (VIP:80 → client) is too big.
    let reply = Frame::tcp(VIP, 80, CLIENT, 40030, TCP_ACK, &[0; 10]).ip();
    let err = Frame::icmp_error(CLIENT, VIP, 3, 4, [0, 0, 0x05, 0x78], &reply[..28]);
    let out = f.client_sends(&err);
    let translated = Frame::tcp(rs(1), 8080, CLIENT, 40030, TCP_ACK, &[0; 10]).ip();
    let mut quoted = translated[..28].to_vec();
    // The TCP checksum is past the 8 quoted bytes: nothing to fix there.
    quoted[24..28].copy_from_slice(&reply[24..28]);
    let want = Frame::icmp_error(CLIENT, rs(1), 3, 4, [0, 0, 0x05, 0x78], &quoted)
        .ttl(63)
        .eth(rs_mac(1), f.net.int_mac);
    assert_frame("ICMP from the client side", &out, XDP_REDIRECT, &want);
}

#[test]
fn icmp_about_a_tun_connection_is_tunnelled_and_unrelated_icmp_passes() {
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(far_rs(2), 80, Forward::Tun)],
    ));
    f.client_sends(&Frame::tcp(CLIENT, 40040, VIP, 80, TCP_SYN, b""));
    let reply = Frame::tcp(VIP, 80, CLIENT, 40040, TCP_ACK, &[0; 10]).ip();
    let err = Frame::icmp_error(CLIENT, VIP, 3, 4, [0, 0, 0x05, 0x78], &reply[..28]);
    let out = f.client_sends(&err);
    assert_eq!(out.action, XDP_REDIRECT);
    assert_eq!(out.data[23], 4, "IPIP");
    assert_eq!(
        &out.data[34..],
        &err.ip()[..],
        "the ICMP error goes to the real server as is"
    );
    // Echo requests to the VIP and errors about nothing we know are the director's own.
    for frame in [
        client_frame(&f, &Frame::icmp_echo(CLIENT, VIP)),
        client_frame(
            &f,
            &Frame::icmp_error(
                CLIENT,
                VIP,
                3,
                3,
                [0; 4],
                &Frame::tcp(VIP, 81, CLIENT, 1, TCP_ACK, b"").ip()[..28],
            ),
        ),
    ] {
        let out = f.arrives_from_client(&frame);
        assert_eq!((out.action, &out.data), (XDP_PASS, &frame));
    }
}

#[test]
fn a_service_can_mix_dr_and_nat_real_servers() {
    let mut m = one_service(
        Protocol::Tcp,
        80,
        &[dest(rs(1), 80, Forward::Dr), dest(rs(2), 80, Forward::Nat)],
    );
    let mut f = Fixture::new(Model::default());
    let paths = f.paths();
    f.set_with(std::mem::take(&mut m), &paths);
    let mut seen = Vec::new();
    for port in 41000..41004 {
        let syn = Frame::tcp(CLIENT, port, VIP, 80, TCP_SYN, b"");
        let frame = client_frame(&f, &syn);
        let out = f.arrives_from_client(&frame);
        assert_eq!(out.action, XDP_REDIRECT);
        if out.data[30..34] == VIP.octets() {
            // DR: only the MACs changed.
            assert_eq!(&out.data[..6], &rs_mac(1));
            assert_eq!(&out.data[12..], &frame[12..]);
            seen.push("dr");
        } else {
            assert_eq!(&out.data[30..34], &rs(2).octets());
            verify_checksums(&out.data[14..]).unwrap();
            seen.push("nat");
        }
    }
    assert_eq!(
        seen,
        ["nat", "dr", "nat", "dr"],
        "rr over both kinds (newest first)"
    );
}

#[test]
fn nat_drops_nothing_silently() {
    // Every verdict above is counted; a route to nowhere is a counted drop.
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(Ipv4Addr::new(203, 0, 113, 200), 80, Forward::Nat)],
    ));
    f.net
        .ns
        .ip(&["route", "add", "blackhole", "203.0.113.128/25"]);
    let out = f.client_sends(&Frame::tcp(CLIENT, 40050, VIP, 80, TCP_SYN, b""));
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(f.counter("drop_no_route"), 1);
}

#[test]
fn nat_and_tun_ask_the_fib_when_the_daemon_has_no_next_hop() {
    // As right after `-a`, before the daemon resolved anything.
    let mut f = Fixture::new(Model::default());
    f.set_with(
        one_service(Protocol::Tcp, 80, &[dest(rs(1), 8080, Forward::Nat)]),
        &Paths::new(),
    );
    let out = f.client_sends(&Frame::tcp(CLIENT, 40060, VIP, 80, TCP_SYN, b""));
    let want = Frame::tcp(CLIENT, 40060, rs(1), 8080, TCP_SYN, b"")
        .ttl(63)
        .eth(rs_mac(1), f.net.int_mac);
    assert_frame("DNAT via the FIB", &out, XDP_REDIRECT, &want);
    f.set_with(
        one_service(Protocol::Tcp, 80, &[dest(far_rs(1), 80, Forward::Tun)]),
        &Paths::from([(
            far_rs(1).into(),
            RsPath {
                tun_src: TUN_SRC.into(),
                ..RsPath::default()
            },
        )]),
    );
    let syn = Frame::tcp(CLIENT, 40061, VIP, 80, TCP_SYN, b"");
    let out = f.client_sends(&syn);
    let mut outer = Frame::raw(TUN_SRC, far_rs(1), 4, syn.ip());
    outer.id = 0; // DF: an atomic datagram, ID 0 (RFC 6864), as the kernel sends it
    assert_frame(
        "IPIP via the FIB",
        &out,
        XDP_REDIRECT,
        &outer.eth(ROUTER_MAC, f.net.int_mac),
    );
}

#[test]
fn nat_replies_follow_a_neighbour_change() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 80);
    f.client_sends(&Frame::tcp(CLIENT, 40070, VIP, 80, TCP_SYN, b""));
    let reply = Frame::tcp(rs(1), 80, CLIENT, 40070, TCP_ACK, b"").eth(f.net.int_mac, rs_mac(1));
    assert_eq!(&f.arrives_from_servers(&reply).data[..6], &CLIENT_MAC);
    // The client's next hop gets a new MAC: the hop cached in the connection is used until
    // the daemon says the network changed, then looked up again.
    f.net.ns.ip(&[
        "neigh",
        "replace",
        &CLIENT.to_string(),
        "lladdr",
        "02:00:00:00:00:77",
        "dev",
        "ext",
        "nud",
        "permanent",
    ]);
    assert_eq!(
        &f.arrives_from_servers(&reply).data[..6],
        &CLIENT_MAC,
        "cached"
    );
    f.dp().bump_route_epoch().unwrap();
    assert_eq!(
        &f.arrives_from_servers(&reply).data[..6],
        &[2, 0, 0, 0, 0, 0x77],
        "looked up again"
    );
}

// Issue 8, the data-path faults: NAT, TUN and the director's own ICMP errors.

/// Pins this thread (and the namespace threads it starts) to CPU 0: the ICMP rate limiter
/// and the TUN ID counter are per CPU.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity on this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// The real server's reply of connection `port` to the client arrives SNATed to the VIP.
fn assert_reply_snated(f: &mut Fixture, rip: Ipv4Addr, rport: u16, port: u16, what: &str) {
    let synack = Frame::tcp(rip, rport, CLIENT, port, TCP_SYN | TCP_ACK, b"");
    let out = f.arrives_from_servers(&synack.eth(f.net.int_mac, rs_mac(1)));
    let want = Frame::tcp(VIP, 80, CLIENT, port, TCP_SYN | TCP_ACK, b"")
        .ttl(63)
        .eth(CLIENT_MAC, f.net.ext_mac);
    assert_frame(what, &out, XDP_REDIRECT, &want);
}

#[test]
fn a_nat_connection_whose_first_packet_is_not_forwarded_still_gets_its_replies_snated() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 8080);
    // The first SYN has TTL 1: time exceeded. The retransmission goes through; the server's
    // SYN-ACK must come back from the VIP.
    let syn = Frame::tcp(CLIENT, 40100, VIP, 80, TCP_SYN, b"");
    let out = f.arrives_from_client(&client_frame(&f, &syn.clone().ttl(1)));
    assert_eq!(out.action, XDP_TX, "time exceeded");
    let out = f.client_sends(&syn);
    assert_eq!(out.action, XDP_REDIRECT, "the retransmitted SYN is DNATed");
    assert_reply_snated(&mut f, rs(1), 8080, 40100, "after a TTL-1 first SYN");

    // Too big for the path: with DF, fragmentation needed; without, passed to the stack.
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(SMALL_MTU_RS, 80, Forward::Nat)],
    ));
    for (port, df, first_action) in [(40101, IP_DF, XDP_TX), (40102, 0, XDP_PASS)] {
        let mut big = Frame::tcp(CLIENT, port, VIP, 80, TCP_SYN, &[7; 700]);
        big.frag = df;
        let out = f.client_sends(&big);
        assert_eq!(out.action, first_action, "a too-big first SYN, DF {df:#x}");
        let small = Frame::tcp(CLIENT, port, VIP, 80, TCP_SYN, b"");
        let out = f.client_sends(&small);
        assert_eq!(out.action, XDP_REDIRECT, "the small SYN is DNATed");
        // Replies from the far server arrive through the router.
        let synack = Frame::tcp(SMALL_MTU_RS, 80, CLIENT, port, TCP_SYN | TCP_ACK, b"");
        let out = f.arrives_from_servers(&synack.eth(f.net.int_mac, ROUTER_MAC));
        let want = Frame::tcp(VIP, 80, CLIENT, port, TCP_SYN | TCP_ACK, b"")
            .ttl(63)
            .eth(CLIENT_MAC, f.net.ext_mac);
        assert_frame("SNAT after a too-big first SYN", &out, XDP_REDIRECT, &want);
    }
    assert_eq!(f.counter("nat_reply_clash"), 0);
}

#[test]
fn a_translated_icmp_error_has_its_ttl_tested_before_it_is_decremented() {
    let mut f = nat_fixture(Protocol::Udp, 53, 5353);
    f.client_sends(&Frame::udp(CLIENT, 5000, VIP, 53, b"query"));
    let dnated = Frame::udp(CLIENT, 5000, rs(1), 5353, b"query").ttl(63).ip();
    let int_mac = f.net.int_mac;
    let unreach = |ttl| {
        Frame::icmp_error(rs(1), CLIENT, 3, 3, [0; 4], &dnated[..28])
            .ttl(ttl)
            .eth(int_mac, rs_mac(1))
    };
    // TTL 2 is forwarded with TTL 1 (the kernel's ip_forward tests, then decrements).
    let out = f.arrives_from_servers(&unreach(2));
    assert_eq!(out.action, XDP_REDIRECT, "TTL 2: {out:?}");
    assert_eq!(out.data[14 + 8], 1, "forwarded with TTL 1");
    verify_checksums(&out.data[14..]).unwrap();
    // TTL 1 and 0 have run out: dropped, and no error about an error.
    for ttl in [1, 0] {
        let out = f.arrives_from_servers(&unreach(ttl));
        assert_eq!(out.action, XDP_DROP, "TTL {ttl}: {out:?}");
    }
    assert_eq!(f.counter("drop_icmp_suppressed"), 2);
    assert_eq!(f.counter("icmp_sent"), 0);
    // The same from the client's side (an error about a reply).
    let reply = Frame::udp(VIP, 53, CLIENT, 5000, b"answer").ip();
    for (ttl, action) in [(2, XDP_REDIRECT), (1, XDP_DROP), (0, XDP_DROP)] {
        let err = Frame::icmp_error(CLIENT, VIP, 3, 3, [0; 4], &reply[..28]).ttl(ttl);
        let out = f.client_sends(&err);
        assert_eq!(out.action, action, "client side, TTL {ttl}: {out:?}");
    }
    assert_eq!(f.counter("drop_icmp_suppressed"), 4);
}

#[test]
fn no_icmp_error_about_an_icmp_error_or_toward_a_non_unicast_source() {
    // An ICMP error about a TUN connection that is too big for the tunnel, with DF: the
    // director must not answer it with fragmentation-needed (an error about an error).
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(SMALL_MTU_RS, 80, Forward::Tun)],
    ));
    f.client_sends(&Frame::tcp(CLIENT, 40200, VIP, 80, TCP_SYN, b""));
    let reply = Frame::tcp(VIP, 80, CLIENT, 40200, TCP_ACK, &[0; 600]).ip();
    let mut err = Frame::icmp_error(CLIENT, VIP, 3, 4, [0, 0, 0x05, 0x00], &reply);
    err.frag = IP_DF;
    let out = f.client_sends(&err);
    assert_eq!(out.action, XDP_DROP, "an error about an error: {out:?}");
    assert_eq!(f.counter("drop_icmp_suppressed"), 1);
    assert_eq!(f.counter("icmp_sent"), 0);

    // TTL-1 SYNs from sources that must never get an error.
    let mut f = nat_fixture(Protocol::Tcp, 80, 80);
    let sources = [
        Ipv4Addr::new(127, 0, 0, 5),
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(240, 0, 0, 1),
        Ipv4Addr::BROADCAST,
    ];
    for (i, src) in sources.into_iter().enumerate() {
        let syn = Frame::tcp(src, 40300 + i as u16, VIP, 80, TCP_SYN, b"").ttl(1);
        let out = f.client_sends(&syn);
        assert_eq!(out.action, XDP_DROP, "TTL 1 from {src}: {out:?}");
    }
    // Such martian sources are dropped before anything else is considered (the kernel's
    // routing drops them before IPVS sees them); `send_error` refuses them too, as a second
    // line, which the fixture cannot reach any more.
    assert_eq!(f.counter("drop_martian"), sources.len() as u64);
    assert_eq!(f.counter("icmp_sent"), 0);
}

#[test]
fn time_exceeded_about_a_nat_reply_comes_from_the_director_not_the_client() {
    let mut f = nat_fixture(Protocol::Tcp, 80, 8080);
    f.client_sends(&Frame::tcp(CLIENT, 40400, VIP, 80, TCP_SYN, b""));
    let synack = Frame::tcp(rs(1), 8080, CLIENT, 40400, TCP_SYN | TCP_ACK, b"").ttl(1);
    let ip = synack.ip();
    let out = f.arrives_from_servers(&synack.eth(f.net.int_mac, rs_mac(1)));
    // From the director's address on the real servers' side (what the kernel's icmp_send
    // would pick for an error about a packet it forwards), back to the real server.
    let mut want = Frame::icmp_error(Ipv4Addr::new(192, 0, 2, 1), rs(1), 11, 0, [0; 4], &ip[..28]);
    want.tos = 0xc0;
    want.id = 0;
    assert_frame(
        "time exceeded about a reply",
        &out,
        XDP_TX,
        &want.eth(rs_mac(1), f.net.int_mac),
    );
    assert_eq!(f.counter("icmp_sent"), 1);
}

#[test]
fn the_directors_icmp_errors_are_rate_limited() {
    pin_to_cpu0();
    let burst = lb_common::icmp_limit::BURST;
    let mut f = nat_fixture(Protocol::Tcp, 80, 80);
    let ttl1 = |f: &Fixture, port: u16| {
        client_frame(f, &Frame::tcp(CLIENT, port, VIP, 80, TCP_SYN, b"").ttl(1))
    };
    // The clock stands still: a full bucket, then nothing.
    let mut port = 41000;
    for _ in 0..burst {
        let frame = ttl1(&f, port);
        assert_eq!(f.arrives_from_client(&frame).action, XDP_TX, "port {port}");
        port += 1;
    }
    for _ in 0..5 {
        let frame = ttl1(&f, port);
        let out = f.arrives_from_client(&frame);
        assert_eq!(out.action, XDP_DROP, "over the limit, port {port}: {out:?}");
        port += 1;
    }
    assert_eq!(f.counter("icmp_sent"), burst);
    assert_eq!(f.counter("drop_icmp_ratelimit"), 5);
    // Fragmentation-needed is not limited (path MTU discovery must work), as in the kernel.
    f.set(one_service(
        Protocol::Tcp,
        80,
        &[dest(SMALL_MTU_RS, 80, Forward::Nat)],
    ));
    let big = Frame::tcp(CLIENT, port, VIP, 80, TCP_SYN, &[7; 700]);
    let out = f.client_sends(&big);
    assert_eq!(
        out.action, XDP_TX,
        "frag needed while the bucket is empty: {out:?}"
    );
    // A clock step (the daemon's tick, at least 100 ms) refills the bucket.
    std::thread::sleep(std::time::Duration::from_millis(110));
    f.dp().tick_clock().unwrap();
    port += 1;
    let frame = ttl1(&f, port);
    assert_eq!(f.arrives_from_client(&frame).action, XDP_TX, "after a tick");
    assert_eq!(f.counter("drop_icmp_ratelimit"), 5);
}

#[test]
fn tun_outer_ids_are_the_directors_own() {
    pin_to_cpu0();
    let mut f = Fixture::new(one_service(
        Protocol::Udp,
        53,
        &[dest(far_rs(1), 53, Forward::Tun)],
    ));
    // Two clients whose datagrams (without DF) carry the same ID.
    let mut ids = Vec::new();
    for client in [CLIENT, Ipv4Addr::new(198, 51, 100, 8)] {
        let mut q = Frame::udp(client, 5000, VIP, 53, b"query");
        q.frag = 0;
        q.id = 0x4242;
        let out = f.client_sends(&q);
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(
            &out.data[34..],
            &q.ip()[..],
            "the inner packet is untouched"
        );
        verify_checksums(&out.data[14..]).unwrap();
        ids.push(u16::from_be_bytes([out.data[18], out.data[19]]));
    }
    assert_ne!(
        ids[0], ids[1],
        "two clients' datagrams with one inner ID got outer IDs {ids:04x?}"
    );
    // With DF the datagram is atomic: ID 0, as the kernel sends it.
    let q = Frame::udp(CLIENT, 5001, VIP, 53, b"query");
    assert_eq!(q.frag, IP_DF);
    let out = f.client_sends(&q);
    assert_eq!(&out.data[18..20], &[0, 0], "DF: outer ID 0");
}

#[test]
fn tun_leaves_ethernet_padding_out_of_the_tunnel() {
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(far_rs(1), 80, Forward::Tun)],
    ));
    let syn = Frame::tcp(CLIENT, 40500, VIP, 80, TCP_SYN, b"");
    let mut frame = client_frame(&f, &syn);
    frame.extend_from_slice(&[0xaa; 6]); // a 60-byte minimum frame
    let out = f.arrives_from_client(&frame);
    let mut outer = Frame::raw(TUN_SRC, far_rs(1), 4, syn.ip());
    outer.id = 0;
    assert_frame(
        "IPIP of a padded frame",
        &out,
        XDP_REDIRECT,
        &outer.eth(ROUTER_MAC, f.net.int_mac),
    );
    // A NAT request or reply claiming more than it carries is never forwarded.
    let mut f = nat_fixture(Protocol::Tcp, 80, 80);
    let mut liar = client_frame(&f, &Frame::tcp(CLIENT, 40501, VIP, 80, TCP_SYN, b""));
    liar[16..18].copy_from_slice(&1000u16.to_be_bytes());
    liar[24..26].copy_from_slice(&[0, 0]);
    let sum = lb_tests::packet::checksum(&[&liar[14..34]]);
    liar[24..26].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(f.arrives_from_client(&liar).action, XDP_DROP);
    assert_eq!(f.counter("drop_malformed"), 1);
}

#[test]
fn malformed_nat_replies_and_icmp_errors_about_connections_are_never_forwarded() {
    let mut f = nat_fixture(Protocol::Udp, 53, 5353);
    f.client_sends(&Frame::udp(CLIENT, 5000, VIP, 53, b"query"));
    let set_len_fix_sum = |mut frame: Vec<u8>, tot_len: u16| {
        frame[16..18].copy_from_slice(&tot_len.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = lb_tests::packet::checksum(&[&frame[14..34]]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        frame
    };
    let reply = Frame::udp(rs(1), 5353, CLIENT, 5000, b"answer").eth(f.net.int_mac, rs_mac(1));
    let dnated = Frame::udp(CLIENT, 5000, rs(1), 5353, b"query").ttl(63).ip();
    let unreach =
        Frame::icmp_error(rs(1), CLIENT, 3, 3, [0; 4], &dnated[..28]).eth(f.net.int_mac, rs_mac(1));
    for (what, frame) in [("NAT reply", reply), ("ICMP error", unreach)] {
        // Claiming 200 bytes more than the frame carries.
        let len = u16::from_be_bytes([frame[16], frame[17]]);
        let liar = set_len_fix_sum(frame.clone(), len + 200);
        let before = f.counter("drop_malformed");
        let out = f.arrives_from_servers(&liar);
        assert_eq!(out.action, XDP_DROP, "{what} claiming more: {out:?}");
        assert_eq!(f.counter("drop_malformed"), before + 1, "{what}");
        // A bad header checksum.
        let mut bad = frame.clone();
        bad[24] ^= 0x01;
        let before = f.counter("drop_bad_csum");
        let out = f.arrives_from_servers(&bad);
        assert_eq!(out.action, XDP_DROP, "{what} with a bad checksum: {out:?}");
        assert_eq!(f.counter("drop_bad_csum"), before + 1, "{what}");
        // Whole, it goes through.
        assert_eq!(
            f.arrives_from_servers(&frame).action,
            XDP_REDIRECT,
            "{what}, well-formed"
        );
    }
    let snap = f.dp().snapshot(None, &Default::default());
    assert_eq!(
        snap.services[0].stats.outpkts, 1,
        "only the well-formed reply counts as OutPkts"
    );
}
