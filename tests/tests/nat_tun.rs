//! `BPF_PROG_TEST_RUN` fixtures for NAT, TUN and ICMP: each expected packet is built from
//! scratch with freshly computed checksums and compared byte for byte with what the program
//! produced. `bpf_fib_lookup` needs routes and neighbours, so the program runs from inside a
//! namespace that has them: an "external" and an "internal" interface, static neighbours,
//! a router on the internal side, and a route with a small MTU. Root only.

use std::net::Ipv4Addr;

use lb_ctl::{
    dataplane::{Dataplane, Options, Paths, RsPath},
    model::{DestConfig, Forward, Model, Op, Protocol, Scheduler, ServiceConfig, ServiceKey},
};
use lb_tests::{
    Netns,
    packet::{Frame, IP_DF, TCP_ACK, TCP_FIN, TCP_SYN, verify_checksums},
    xdp_run::{self, Outcome, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const TUN_SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// A real server behind the router, on a path with a 600-byte MTU.
const SMALL_MTU_RS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);

fn rs(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + n)
}
fn rs_mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x10, n]
}
fn far_rs(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + n)
}

/// The namespace the program runs in: `ext` (198.51.100.2/24, the clients' side) and `int`
/// (192.0.2.1/24, the real servers' side), a veth pair; forwarding on.
struct Net {
    ns: Netns,
    ext: u32,
    int: u32,
    ext_mac: [u8; 6],
    int_mac: [u8; 6],
}

fn read_sys(ns: &Netns, what: &str) -> String {
    ns.run(&["cat", what]).trim().to_string()
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

impl Net {
    fn new() -> Self {
        let ns = Netns::new("fib");
        ns.ip(&["link", "add", "ext", "type", "veth", "peer", "name", "int"]);
        ns.ip(&["addr", "add", "198.51.100.2/24", "dev", "ext"]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "int"]);
        ns.ip(&["link", "set", "ext", "up"]);
        ns.ip(&["link", "set", "int", "up"]);
        ns.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.forwarding", "1"),
        ]);
        let lladdr = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        for n in 1..=4 {
            ns.neigh_permanent(&rs(n).to_string(), &lladdr(rs_mac(n)), "int");
        }
        ns.neigh_permanent(&ROUTER.to_string(), &lladdr(ROUTER_MAC), "int");
        ns.neigh_permanent(&CLIENT.to_string(), &lladdr(CLIENT_MAC), "ext");
        ns.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &ROUTER.to_string(),
            "dev",
            "int",
        ]);
        ns.ip(&[
            "route",
            "add",
            &format!("{SMALL_MTU_RS}/32"),
            "via",
            &ROUTER.to_string(),
            "dev",
            "int",
            "mtu",
            "lock",
            "600",
        ]);
        let ext = read_sys(&ns, "/sys/class/net/ext/ifindex").parse().unwrap();
        let int = read_sys(&ns, "/sys/class/net/int/ifindex").parse().unwrap();
        let ext_mac = mac(&read_sys(&ns, "/sys/class/net/ext/address"));
        let int_mac = mac(&read_sys(&ns, "/sys/class/net/int/address"));
        Self {
            ns,
            ext,
            int,
            ext_mac,
            int_mac,
        }
    }
}

/// A loaded balancer with its own pins (removed on drop) and the namespace to run it in.
struct Fixture {
    net: Net,
    dp: Option<Dataplane>,
    model: Model,
    _pins: lb_tests::PinDir,
}

impl Fixture {
    fn new(model: Model) -> Self {
        let pins = lb_tests::PinDir::new("nat-tun");
        let dp = Dataplane::open(Options {
            pin_dir: pins.path().to_path_buf(),
            conn_table_size: 4096,
            sched_table_size: 4096,
            mh_table_size: 251,
            persist_table_size: 4096,
            ..Options::default()
        })
        .expect("loading the balancer (root, bpffs)");
        let net = Net::new();
        let mut f = Self {
            net,
            dp: Some(dp),
            model: Model::default(),
            _pins: pins,
        };
        f.set(model);
        f
    }

    /// What the daemon would resolve: on-link servers by their own MAC, the far ones through
    /// the router, the small-MTU path with its MTU.
    fn paths(&self) -> Paths {
        let mut p = Paths::new();
        let path = |next_hop, dmac, mtu| RsPath {
            ifindex: self.net.int,
            next_hop,
            smac: self.net.int_mac,
            dmac: Some(dmac),
            tun_src: TUN_SRC,
            mtu,
        };
        for n in 1..=4 {
            p.insert(rs(n), path(rs(n), rs_mac(n), 1500));
            p.insert(far_rs(n), path(ROUTER, ROUTER_MAC, 1500));
        }
        p.insert(SMALL_MTU_RS, path(ROUTER, ROUTER_MAC, 600));
        p
    }

    fn dp(&mut self) -> &mut Dataplane {
        self.dp.as_mut().expect("open")
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
        let prog = self.dp.as_ref().expect("open").program().expect("program");
        let out = self
            .net
            .ns
            .enter(|| xdp_run::run_xdp(prog, frame, 1, ifindex));
        let out = out.expect("BPF_PROG_TEST_RUN");
        assert_ne!(out.action, xdp_run::XDP_ABORTED, "aborted on {frame:02x?}");
        out
    }

    fn arrives_from_client(&mut self, frame: &[u8]) -> Outcome {
        let ext = self.net.ext;
        self.run_on(ext, frame)
    }

    fn arrives_from_servers(&mut self, frame: &[u8]) -> Outcome {
        let int = self.net.int;
        self.run_on(int, frame)
    }

    fn counter(&mut self, name: &str) -> u64 {
        self.dp()
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .1
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Before `_pins` removes the pins.
        if let Some(dp) = self.dp.take() {
            let _ = dp.shutdown(false);
        }
    }
}

fn dest(addr: Ipv4Addr, port: u16, forward: Forward) -> DestConfig {
    DestConfig {
        addr,
        port,
        forward,
        weight: 1,
        u_threshold: 0,
        l_threshold: 0,
    }
}

fn one_service(proto: Protocol, port: u16, dests: &[DestConfig]) -> Model {
    let key = ServiceKey {
        proto,
        addr: VIP,
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
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(rs(1), 8080, Forward::Nat)],
    ));
    let syn = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b"");
    let out = f.arrives_from_client(&client_frame(&f, &syn));
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
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(rs(1), 8080, Forward::Nat)],
    ));
    f.arrives_from_client(&client_frame(
        &f,
        &Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b""),
    ));
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
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(rs(1), 80, Forward::Nat)],
    ));
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
    let out = f.arrives_from_client(&client_frame(&f, &q));
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
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(rs(1), 80, Forward::Nat)],
    ));
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
    let out = f.arrives_from_client(&client_frame(
        &f,
        &Frame::tcp(CLIENT, 40003, VIP, 80, TCP_SYN, b""),
    ));
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
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(rs(1), 80, Forward::Nat)],
    ));
    let syn = Frame::tcp(CLIENT, 40004, VIP, 80, TCP_SYN, b"").ttl(1);
    let ip = syn.ip();
    let out = f.arrives_from_client(&client_frame(&f, &syn));
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
        let out = f.arrives_from_client(&client_frame(&f, &syn));
        let mut outer = Frame::raw(TUN_SRC, far_rs(1), 4, inner.clone());
        outer.frag = df; // DF copied from the inner packet
        outer.tos = 0x10;
        outer.id = syn.id;
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
    f.arrives_from_client(&client_frame(
        &f,
        &Frame::tcp(CLIENT, 40020, VIP, 80, TCP_SYN, b""),
    ));
    // 600 bytes inner + 20 of tunnel header > the path's 600.
    let big = Frame::tcp(CLIENT, 40020, VIP, 80, TCP_ACK, &[1; 560]);
    assert_eq!(big.ip().len(), 600);
    let ip = big.ip();
    let out = f.arrives_from_client(&client_frame(&f, &big));
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
    assert_eq!(
        f.arrives_from_client(&client_frame(&f, &small)).action,
        XDP_REDIRECT
    );
}

#[test]
fn icmp_from_a_nat_server_is_translated_to_the_vip() {
    let mut f = Fixture::new(one_service(
        Protocol::Udp,
        53,
        &[dest(rs(1), 5353, Forward::Nat)],
    ));
    f.arrives_from_client(&client_frame(
        &f,
        &Frame::udp(CLIENT, 5000, VIP, 53, b"query"),
    ));
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
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(rs(1), 8080, Forward::Nat)],
    ));
    f.arrives_from_client(&client_frame(
        &f,
        &Frame::tcp(CLIENT, 40030, VIP, 80, TCP_SYN, b""),
    ));
    // A router on the client's side: our reply (VIP:80 → client) is too big.
    let reply = Frame::tcp(VIP, 80, CLIENT, 40030, TCP_ACK, &[0; 10]).ip();
    let err = Frame::icmp_error(CLIENT, VIP, 3, 4, [0, 0, 0x05, 0x78], &reply[..28]);
    let out = f.arrives_from_client(&client_frame(&f, &err));
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
    f.arrives_from_client(&client_frame(
        &f,
        &Frame::tcp(CLIENT, 40040, VIP, 80, TCP_SYN, b""),
    ));
    let reply = Frame::tcp(VIP, 80, CLIENT, 40040, TCP_ACK, &[0; 10]).ip();
    let err = Frame::icmp_error(CLIENT, VIP, 3, 4, [0, 0, 0x05, 0x78], &reply[..28]);
    let out = f.arrives_from_client(&client_frame(&f, &err));
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
    let out = f.arrives_from_client(&client_frame(
        &f,
        &Frame::tcp(CLIENT, 40050, VIP, 80, TCP_SYN, b""),
    ));
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
    let out = f.arrives_from_client(&client_frame(
        &f,
        &Frame::tcp(CLIENT, 40060, VIP, 80, TCP_SYN, b""),
    ));
    let want = Frame::tcp(CLIENT, 40060, rs(1), 8080, TCP_SYN, b"")
        .ttl(63)
        .eth(rs_mac(1), f.net.int_mac);
    assert_frame("DNAT via the FIB", &out, XDP_REDIRECT, &want);
    f.set_with(
        one_service(Protocol::Tcp, 80, &[dest(far_rs(1), 80, Forward::Tun)]),
        &Paths::from([(
            far_rs(1),
            RsPath {
                tun_src: TUN_SRC,
                ..RsPath::default()
            },
        )]),
    );
    let syn = Frame::tcp(CLIENT, 40061, VIP, 80, TCP_SYN, b"");
    let out = f.arrives_from_client(&client_frame(&f, &syn));
    let mut outer = Frame::raw(TUN_SRC, far_rs(1), 4, syn.ip());
    outer.id = syn.id;
    assert_frame(
        "IPIP via the FIB",
        &out,
        XDP_REDIRECT,
        &outer.eth(ROUTER_MAC, f.net.int_mac),
    );
}

#[test]
fn nat_replies_follow_a_neighbour_change() {
    let mut f = Fixture::new(one_service(
        Protocol::Tcp,
        80,
        &[dest(rs(1), 80, Forward::Nat)],
    ));
    f.arrives_from_client(&client_frame(
        &f,
        &Frame::tcp(CLIENT, 40070, VIP, 80, TCP_SYN, b""),
    ));
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
