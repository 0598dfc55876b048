//! `BPF_PROG_TEST_RUN` fixtures: packets in, verdicts and packets out, through the balancer
//! the daemon loads, with its maps filled by the daemon's own `Dataplane::sync`. Root only.

mod common;

use std::net::Ipv4Addr;

use common::*;
use lb_ctl::model::{Model, Op, Protocol, Scheduler, ServiceKey};
use lb_tests::{
    packet::{self, Frame, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN},
    xdp_run::{XDP_DROP, XDP_PASS, XDP_TX},
};

#[test]
fn syn_is_forwarded_with_rewritten_macs_only() {
    let mut f = Fixture::new(web_rr());
    let syn = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC);
    let n = f.forwarded_to(&syn);
    assert!(n == 1 || n == 2);
    assert_eq!(f.counter("new_conn"), 1);
    assert_eq!(f.counter("tx"), 1);
}

#[test]
fn packets_of_a_flow_stick_to_its_backend() {
    let mut f = Fixture::new(web_rr());
    let first = f.forwarded_to(&tcp(40001, TCP_SYN));
    for flags in [
        TCP_ACK,
        TCP_ACK | TCP_PSH,
        TCP_ACK,
        TCP_FIN | TCP_ACK,
        TCP_ACK,
    ] {
        assert_eq!(
            f.forwarded_to(&tcp(40001, flags)),
            first,
            "flags {flags:#x}"
        );
    }
    assert_eq!(f.counter("new_conn"), 1);
}

#[test]
fn rr_alternates_new_flows() {
    let mut f = Fixture::new(web_rr());
    let picks: Vec<u8> = (0..10)
        .map(|i| f.forwarded_to(&tcp(41000 + i, TCP_SYN)))
        .collect();
    for w in picks.windows(2) {
        assert_ne!(w[0], w[1], "rr must alternate: {picks:?}");
    }
}

#[test]
fn wrr_2_1_gives_20_10_over_30_flows() {
    let mut f = Fixture::new(model(&[service(
        Protocol::Tcp,
        80,
        Scheduler::Wrr,
        &[(1, 2), (2, 1)],
    )]));
    let mut count = [0; 3];
    for i in 0..30 {
        count[f.forwarded_to(&tcp(42000 + i, TCP_SYN)) as usize] += 1;
    }
    assert_eq!((count[1], count[2]), (20, 10), "wrr 2:1 over 30 new flows");
}

#[test]
fn weight_zero_gets_no_new_flows_but_keeps_its_own() {
    let mut f = Fixture::new(web_rr());
    // Find a flow on rs1, then quiesce rs1.
    let mut on_rs1 = None;
    for i in 0..4 {
        if f.forwarded_to(&tcp(43000 + i, TCP_SYN)) == 1 {
            on_rs1 = Some(43000 + i);
        }
    }
    let port = on_rs1.expect("rr gave rs1 a flow");
    let (cfg, mut dests) = service(Protocol::Tcp, 80, Scheduler::Rr, &[(1, 1), (2, 1)]);
    dests[0].weight = 0;
    f.op(Op::EditDest(cfg.key, dests[0]));
    for i in 0..6 {
        assert_eq!(
            f.forwarded_to(&tcp(43100 + i, TCP_SYN)),
            2,
            "new flows avoid weight 0"
        );
    }
    assert_eq!(
        f.forwarded_to(&tcp(port, TCP_ACK)),
        1,
        "the existing flow keeps rs1"
    );
}

/// Opens flows from `base` on until rr gives rs1 one, then deletes rs1; that flow's port.
fn flow_on_deleted_rs1(f: &mut Fixture, base: u16) -> u16 {
    let port = (base..base + 4)
        .find(|&p| f.forwarded_to(&tcp(p, TCP_SYN)) == 1)
        .expect("rr gave rs1 a flow");
    f.op(Op::DelDest(
        ServiceKey {
            proto: Protocol::Tcp,
            addr: VIP.into(),
            port: 80,
        },
        rs(1).into(),
        80,
    ));
    port
}

#[test]
fn deleted_backend_drops_its_flows_and_gets_no_new_ones() {
    let mut f = Fixture::new(web_rr());
    let port = flow_on_deleted_rs1(&mut f, 44000);
    for i in 0..4 {
        assert_eq!(f.forwarded_to(&tcp(44100 + i, TCP_SYN)), 2);
    }
    let out = f.run(&tcp(port, TCP_ACK));
    assert_eq!(
        out.action, XDP_DROP,
        "IPVS expire_nodest_conn=0 drops: {out:?}"
    );
    assert_eq!(f.counter("drop_backend_gone"), 1);
}

/// `expire_nodest_conn = true`: the first packet of a connection whose server was deleted is
/// dropped and the connection forgotten, so the client's retry is scheduled afresh.
#[test]
fn expire_nodest_conn_forgets_connections_of_a_deleted_server() {
    let mut f = Fixture::new(web_rr());
    f.dp().set_expiry_rules(true, false).unwrap();
    let port = flow_on_deleted_rs1(&mut f, 46000);
    let out = f.run(&tcp(port, TCP_ACK));
    assert_eq!(out.action, XDP_DROP, "{out:?}");
    // Forgotten: a retransmitted ACK is no longer the connection's (the stack answers it),
    // and a new SYN on the same tuple goes to the remaining server.
    assert_eq!(f.run(&tcp(port, TCP_ACK)).action, XDP_PASS);
    assert_eq!(f.forwarded_to(&tcp(port, TCP_SYN)), 2);
}

#[test]
fn non_syn_without_connection_goes_to_the_stack() {
    let mut f = Fixture::new(web_rr());
    let ack = tcp(45000, TCP_ACK);
    let out = f.run(&ack);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(out.data, ack, "passed packets are untouched");
    assert_eq!(f.counter("pass_no_conn"), 1);
    let rst = tcp(45001, TCP_RST);
    assert_eq!(f.run(&rst).action, XDP_PASS);
}

#[test]
fn a_syn_after_time_wait_or_close_is_scheduled_again() {
    let mut f = Fixture::new(web_rr());
    let first = f.forwarded_to(&tcp(46000, TCP_SYN));
    f.forwarded_to(&tcp(46000, TCP_ACK));
    // RST moves an established connection to CLOSE (in SYN_RECV IPVS ignores it); a new SYN
    // on the same tuple is then a new connection.
    f.forwarded_to(&tcp(46000, TCP_RST | TCP_ACK));
    let second = f.forwarded_to(&tcp(46000, TCP_SYN));
    assert_ne!(first, second, "rescheduled with rr");
    assert_eq!(f.counter("new_conn"), 2);
}

#[test]
fn udp_flows_are_balanced_and_sticky() {
    let mut f = Fixture::new(model(&[service(
        Protocol::Udp,
        53,
        Scheduler::Rr,
        &[(1, 1), (2, 1)],
    )]));
    let q = |sport| Frame::udp(CLIENT, sport, VIP, 53, b"query").eth(DIRECTOR_MAC, ROUTER_MAC);
    let a = f.forwarded_to(&q(5000));
    assert_eq!(f.forwarded_to(&q(5000)), a);
    assert_ne!(f.forwarded_to(&q(5001)), a);
}

#[test]
fn ip_options_are_handled() {
    let mut f = Fixture::new(web_rr());
    let opts = [1u8, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6
    let syn = Frame::tcp(CLIENT, 47000, VIP, 80, TCP_SYN, b"")
        .with_ip_options(&opts)
        .eth(DIRECTOR_MAC, ROUTER_MAC);
    let n = f.forwarded_to(&syn);
    let ack = Frame::tcp(CLIENT, 47000, VIP, 80, TCP_ACK, b"x")
        .with_ip_options(&opts)
        .eth(DIRECTOR_MAC, ROUTER_MAC);
    assert_eq!(f.forwarded_to(&ack), n);
}

#[test]
fn other_traffic_passes_untouched() {
    let mut f = Fixture::new(web_rr());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "other address",
            Frame::tcp(CLIENT, 1, Ipv4Addr::new(192, 0, 2, 2), 22, TCP_SYN, b"")
                .eth(DIRECTOR_MAC, ROUTER_MAC),
            "pass_not_service",
        ),
        (
            "other port",
            Frame::tcp(CLIENT, 1, VIP, 443, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC),
            "pass_not_service",
        ),
        (
            "udp to a tcp service",
            Frame::udp(CLIENT, 1, VIP, 80, b"").eth(DIRECTOR_MAC, ROUTER_MAC),
            "pass_not_service",
        ),
        (
            "icmp",
            Frame::icmp_echo(CLIENT, VIP).eth(DIRECTOR_MAC, ROUTER_MAC),
            "pass_not_service",
        ),
        (
            "arp",
            packet::arp_request(ROUTER_MAC, CLIENT, VIP),
            "pass_not_ipv4",
        ),
        (
            // IPv6 is lb_xdp6's since layout 5: no next header is no service's.
            "ipv6",
            packet::ipv6_frame(DIRECTOR_MAC, ROUTER_MAC),
            "pass_not_service",
        ),
        (
            "fragment",
            Frame::tcp(CLIENT, 48000, VIP, 80, TCP_SYN, b"")
                .fragment(0x2000)
                .eth(DIRECTOR_MAC, ROUTER_MAC),
            "pass_fragment",
        ),
        (
            "later fragment",
            Frame::tcp(CLIENT, 48000, VIP, 80, TCP_SYN, b"")
                .fragment(0x0010)
                .eth(DIRECTOR_MAC, ROUTER_MAC),
            "pass_fragment",
        ),
        ("unknown ethertype", vec![0xff; 14], "pass_not_ipv4"),
    ];
    for (what, frame, counter) in cases {
        let before = f.counter(counter);
        let out = f.run(&frame);
        assert_eq!(out.action, XDP_PASS, "{what}: {out:?}");
        assert_eq!(out.data, frame, "{what}: passed packets are untouched");
        assert_eq!(
            f.counter(counter),
            before + 1,
            "{what}: counted in {counter}"
        );
    }
    assert_eq!(f.counter("new_conn"), 0);
}

/// A malformed packet the balancer would forward (it names a service) is dropped and counted,
/// as the kernel's `ip_rcv` would have dropped it before IPVS saw it; one too broken to name a
/// service (no ports, bad version or IHL) is the stack's business and passes untouched.
#[test]
fn truncated_and_malformed_headers_are_dropped_and_counted() {
    let mut f = Fixture::new(web_rr());
    let good = tcp(49000, TCP_SYN);
    let (drop, pass) = ((XDP_DROP, "drop_malformed"), (XDP_PASS, "pass_malformed"));
    let mut cases: Vec<(&str, Vec<u8>, (u32, &str))> = vec![
        ("ethernet only", good[..14].to_vec(), pass),
        ("half an IP header", good[..24].to_vec(), pass),
        ("IP header, no ports", good[..34].to_vec(), pass),
        ("ports but half a TCP header", good[..44].to_vec(), drop),
    ];
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44; // IHL 4: shorter than the minimum
    cases.push(("IHL below 5", bad_ihl, pass));
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    cases.push(("IP version 6 in an IPv4 frame", bad_version, pass));
    let mut long_ihl = good.clone();
    long_ihl[14] = 0x4f; // claims 60 bytes of header in a 40-byte packet
    cases.push(("IHL past the end", long_ihl, pass));
    for (what, frame, (action, counter)) in cases {
        let before = f.counter(counter);
        let out = f.run(&frame);
        assert_eq!(out.action, action, "{what}: {out:?}");
        if action == XDP_PASS {
            assert_eq!(out.data, frame, "{what}: passed untouched");
        }
        assert_eq!(
            f.counter(counter),
            before + 1,
            "{what}: counted in {counter}"
        );
    }
    assert_eq!(f.counter("new_conn"), 0);
}

#[test]
fn a_service_with_no_backend_drops_new_flows() {
    let mut f = Fixture::new(model(&[service(Protocol::Tcp, 80, Scheduler::Rr, &[])]));
    let out = f.run(&tcp(50000, TCP_SYN));
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(f.counter("drop_no_backend"), 1);
}

#[test]
fn an_unresolved_real_server_is_not_sent_garbage() {
    let mut f = Fixture::new(Model::default());
    f.paths.get_mut(&rs(1).into()).unwrap().dmac = None;
    f.set(model(&[service(
        Protocol::Tcp,
        80,
        Scheduler::Rr,
        &[(1, 1)],
    )]));
    let out = f.run(&tcp(51000, TCP_SYN));
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(f.counter("drop_no_neigh"), 1);
}

#[test]
fn random_frames_never_abort() {
    let mut f = Fixture::new(web_rr());
    // A fixed-seed generator: mostly well-formed prefixes with random tails and lengths, so
    // the parser is exercised at every boundary.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let template = tcp(52000, TCP_SYN);
    for _ in 0..3000 {
        let len = (next() % 80) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let keep = (next() % 40) as usize;
        for (i, b) in frame.iter_mut().enumerate().take(keep.min(template.len())) {
            *b = template[i];
        }
        if frame.len() < 14 {
            // The kernel refuses test-run input shorter than an Ethernet header.
            continue;
        }
        let out = f.run(&frame);
        assert!(
            [XDP_PASS, XDP_DROP, XDP_TX].contains(&out.action),
            "{frame:02x?} -> {out:?}"
        );
    }
}

#[test]
fn stats_count_packets_and_bytes_per_service_and_backend() {
    let mut f = Fixture::new(web_rr());
    let syn = tcp(53000, TCP_SYN);
    let n = f.forwarded_to(&syn);
    let data = Frame::tcp(CLIENT, 53000, VIP, 80, TCP_ACK | TCP_PSH, &[7; 100])
        .eth(DIRECTOR_MAC, ROUTER_MAC);
    f.forwarded_to(&data);
    let snap = f.dp().snapshot(None, &Default::default());
    let svc = &snap.services[0];
    assert_eq!(svc.stats.conns, 1);
    assert_eq!(svc.stats.inpkts, 2);
    assert_eq!(svc.stats.inbytes, (syn.len() - 14 + data.len() - 14) as u64);
    let dest = svc
        .dests
        .iter()
        .find(|d| d.config.addr == rs(n))
        .expect("listed");
    assert_eq!((dest.stats.conns, dest.stats.inpkts), (1, 2));
}

/// The rate estimator reads every backend's counters; with many backends it reads the
/// whole per-CPU array in batches. Both ways must agree.
#[test]
fn stats_read_in_batches_match_one_by_one() {
    let mut m = web_rr();
    let key = ServiceKey {
        proto: Protocol::Tcp,
        addr: VIP.into(),
        port: 80,
    };
    // Enough real servers to take the batched path (they need no path: unresolved ones
    // drop, after the stats count the packet).
    for i in 0..300u32 {
        let (_, d) = service(Protocol::Tcp, 80, Scheduler::Rr, &[(1, 1)]);
        let mut d = d[0];
        d.addr = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8).into();
        m.apply(&Op::AddDest(key, d)).unwrap();
    }
    let mut f = Fixture::new(m);
    for i in 0..40 {
        f.run(&tcp(54000 + i, TCP_SYN));
    }
    let (svcs, backends) = f.dp().all_stats();
    let snap = f.dp().snapshot(None, &Default::default());
    assert_eq!(backends.len(), 302);
    let one_by_one: u64 = snap.services[0].dests.iter().map(|d| d.stats.inpkts).sum();
    assert_eq!(one_by_one, 40);
    assert_eq!(backends.values().map(|s| s.inpkts).sum::<u64>(), 40);
    assert_eq!(svcs.values().map(|s| s.conns).sum::<u64>(), 40);
    for d in &snap.services[0].dests {
        let id = f
            .dp()
            .sched_members(&key)
            .unwrap()
            .iter()
            .find(|m| m.addr == d.config.addr)
            .unwrap()
            .id;
        assert_eq!(backends[&id], d.stats, "{}", d.config.addr);
    }
}

#[test]
fn many_services_are_all_found_and_deleted_ones_are_not() {
    let vips = [
        VIP,
        Ipv4Addr::new(192, 0, 2, 101),
        Ipv4Addr::new(203, 0, 113, 9),
    ];
    let mut m = Model::default();
    let mut keys = Vec::new();
    for (v, vip) in vips.iter().enumerate() {
        for port in 1000..1100u16 {
            let (mut cfg, mut dests) = service(
                Protocol::Tcp,
                port,
                Scheduler::Rr,
                &[((port % 8) as u8 + 1, 1)],
            );
            cfg.key.addr = (*vip).into();
            dests[0].port = port;
            m.apply(&Op::AddService(cfg)).unwrap();
            m.apply(&Op::AddDest(cfg.key, dests[0])).unwrap();
            keys.push((v, cfg.key));
        }
    }
    let mut f = Fixture::new(m);
    // The services here are IPv4 ones.
    let v4 = |k: &ServiceKey| match k.addr {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("an IPv6 VIP {a} in an IPv4 test"),
    };
    let syn = |k: &ServiceKey| {
        Frame::tcp(CLIENT, 40000, v4(k), k.port, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC)
    };
    for (_, k) in &keys {
        assert_eq!(
            f.forwarded_to(&syn(k)),
            (k.port % 8) as u8 + 1,
            "service {k}"
        );
    }
    // Delete every other service: the rest must still be found (probe chains rebuilt).
    let mut m = f.model.clone();
    for (i, (_, k)) in keys.iter().enumerate() {
        if i % 2 == 0 {
            m.apply(&Op::DelService(*k)).unwrap();
        }
    }
    f.set(m);
    for (i, (_, k)) in keys.iter().enumerate() {
        let frame =
            Frame::tcp(CLIENT, 40001, v4(k), k.port, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC);
        let out = f.run(&frame);
        let want = if i % 2 == 0 { XDP_PASS } else { XDP_TX };
        assert_eq!(out.action, want, "service {k} (deleted: {})", i % 2 == 0);
    }
}

#[test]
fn idle_connections_expire_by_their_state_timeout() {
    use lb_ctl::{api::Timeouts, dataplane::StateTimeouts};
    let mut f = Fixture::new(model(&[
        service(Protocol::Udp, 53, Scheduler::Rr, &[(1, 1)]),
        service(Protocol::Tcp, 80, Scheduler::Rr, &[(1, 1)]),
    ]));
    f.forwarded_to(&Frame::udp(CLIENT, 5353, VIP, 53, b"q").eth(DIRECTOR_MAC, ROUTER_MAC));
    f.forwarded_to(&tcp(54000, TCP_SYN));
    f.forwarded_to(&tcp(54000, TCP_ACK));
    let mut t = StateTimeouts::default();
    t.set(&Timeouts {
        tcp: 0,
        tcpfin: 0,
        udp: 1,
    });
    f.dp().set_timeouts(&t).unwrap();
    let report = f.dp().sweep().unwrap();
    assert_eq!((report.entries, report.expired), (2, 0));
    // The data path's clock only moves when the control plane ticks it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.dp().tick_clock().unwrap();
    let conns = f.dp().conns(&t);
    let udp = conns.iter().find(|c| c.proto == "UDP").expect("udp entry");
    assert_eq!(udp.expire_secs, 0, "{conns:?}");
    let tcp_entry = conns.iter().find(|c| c.proto == "TCP").expect("tcp entry");
    assert_eq!(tcp_entry.state, "ESTABLISHED");
    assert!(tcp_entry.expire_secs >= 898, "{conns:?}");
    let report = f.dp().sweep().unwrap();
    assert_eq!(
        (report.entries, report.expired),
        (2, 1),
        "only the UDP entry expired"
    );
    assert_eq!(f.dp().conns(&t).len(), 1);
}

/// The verifier walks every path of the balancer up to a limit of 1,000,000 instructions; a
/// change that gets close to it will soon fail to load on some kernel. Keep half in reserve.
#[test]
fn the_balancer_leaves_the_verifier_headroom() {
    let f = Fixture::new(model(&[]));
    let counts = f.bal.dp().verified_insns();
    eprintln!("verified instructions: {counts:?}");
    assert_eq!(counts.len(), 5, "{counts:?}");
    for (name, n) in counts {
        assert!(n < 500_000, "{name}: {n} instructions verified");
    }
}

/// A daemon meeting the data path an lb-ctl of layout 3 pinned (16-byte flow keys, 40-byte
/// connections) says so and starts afresh with this layout, rather than refusing to start
/// or misreading the old maps. The old maps are made here with bpftool, as that lb-ctl
/// pinned them (sizes and the layout version in the settings).
#[test]
fn a_pinned_data_path_of_layout_3_is_replaced_by_a_fresh_one() {
    let pins = lb_tests::PinDir::new("layout3");
    let maps = pins.path().join("maps");
    std::fs::create_dir_all(&maps).expect("creating the pin directory");
    let bpftool = |args: &[&str]| {
        let out = std::process::Command::new("bpftool")
            .args(args)
            .output()
            .expect("running bpftool");
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let pin = |name: &str| maps.join(name).to_str().unwrap().to_string();
    let settings = pin(lb_common::maps::SETTINGS);
    bpftool(&[
        "map",
        "create",
        &settings,
        "type",
        "array",
        "key",
        "4",
        "value",
        "24",
        "entries",
        "1",
        "name",
        "LB_SETTINGS",
    ]);
    let mut update = vec![
        "map", "update", "pinned", &settings, "key", "0", "0", "0", "0",
    ];
    update.extend(["value", "3"]);
    update.extend(["0"; 23]);
    bpftool(&update);
    for name in [lb_common::maps::CONNS, lb_common::maps::EMBRYO] {
        bpftool(&[
            "map",
            "create",
            &pin(name),
            "type",
            "lru_hash",
            "key",
            "16",
            "value",
            "40",
            "entries",
            "1024",
            "name",
            name,
        ]);
    }
    let dp = lb_ctl::dataplane::Dataplane::open(lb_ctl::dataplane::Options {
        pin_dir: pins.path().to_path_buf(),
        conn_table_size: 4096,
        sched_table_size: 1 << 16,
        mh_table_size: 251,
        persist_table_size: 4096,
        ..lb_ctl::dataplane::Options::default()
    })
    .expect("a daemon meeting layout 3 starts afresh");
    let conns = aya::maps::MapInfo::from_pin(maps.join(lb_common::maps::CONNS)).expect("LB_CONNS");
    assert_eq!(
        (conns.key_size(), conns.value_size()),
        (
            size_of::<lb_common::FlowKey>() as u32,
            size_of::<lb_common::Conn>() as u32
        ),
        "the pinned connection table should be the new layout's"
    );
    assert_eq!(
        lb_ctl::dataplane::pinned_layout(&maps),
        Some(lb_common::LAYOUT_VERSION),
        "the pinned settings should carry the new layout version"
    );
    drop(dp);
}
