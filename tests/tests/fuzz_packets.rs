//! Packet fuzzing: random, valid and mutated frames through `lb_xdp` (DR, NAT and TUN
//! services, loaded and filled by the daemon's own `Dataplane`) and `lb_decap`, every verdict
//! and output checked by `lb_tests::fuzz::check` (never aborted; not ours → passed byte for
//! byte; forwarded → valid headers, checksums and lengths, the method's rewrite and nothing
//! else; malformed → never forwarded). Root only.
//!
//! Bounded here (`LB_FUZZ_PACKETS`, default 1,000,000: 20–45 s on the shared 2-core VM);
//! `cargo xtask fuzz` runs the same loop with its own bounds. `LB_FUZZ_SEED` replays a run.
//! It fails listing every class of violation with a count and the first frame in hex.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::{Ebpf, maps::HashMap as BpfHashMap, programs::Xdp};
use lb_ctl::{
    dataplane::{Dataplane, Options, Paths, RsPath},
    model::{DestConfig, Forward, Model, Op, Protocol, Scheduler, ServiceConfig, ServiceKey},
};
use lb_tests::{
    fuzz::{self, Gen, Macs, Mode, Outcome, Report, Service, World},
    packet::{IPPROTO_TCP, IPPROTO_UDP},
    routed::{CLIENT, CLIENT_MAC, EXT_ADDR, INT_ADDR, Net, ROUTER, ROUTER_MAC, far_rs, rs, rs_mac},
    xdp_run,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 101);
/// The clients' router: the default route.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Far real servers behind the router on a 600-byte-MTU path (frag-needed), TUN and NAT.
const SMALL_MTU_TUN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const SMALL_MTU_NAT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 98);

/// The services, once for the daemon's model and once for the checker.
fn services() -> Vec<Service> {
    let s = |proto, vip, port, mode, servers: &[(Ipv4Addr, u16)]| Service {
        proto,
        vip,
        port,
        mode,
        servers: servers.to_vec(),
    };
    vec![
        s(IPPROTO_TCP, VIP, 80, Mode::Dr, &[(rs(1), 80), (rs(2), 80)]),
        s(IPPROTO_UDP, VIP, 53, Mode::Dr, &[(rs(1), 53)]),
        s(
            IPPROTO_TCP,
            VIP,
            8080,
            Mode::Nat,
            &[(rs(3), 80), (rs(4), 8080)],
        ),
        s(IPPROTO_UDP, VIP, 5353, Mode::Nat, &[(rs(3), 5353)]),
        s(IPPROTO_TCP, VIP2, 443, Mode::Nat, &[(SMALL_MTU_NAT, 443)]),
        s(
            IPPROTO_TCP,
            VIP2,
            80,
            Mode::Tun,
            &[(far_rs(1), 80), (SMALL_MTU_TUN, 80)],
        ),
        s(IPPROTO_UDP, VIP2, 53, Mode::Tun, &[(far_rs(2), 53)]),
    ]
}

fn model(services: &[Service]) -> Model {
    let mut m = Model::default();
    for s in services {
        let key = ServiceKey {
            proto: if s.proto == IPPROTO_TCP {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            addr: s.vip.into(),
            port: s.port,
        };
        m.apply(&Op::AddService(ServiceConfig::new(key, Scheduler::Rr)))
            .expect("service");
        for &(addr, port) in &s.servers {
            let forward = match s.mode {
                Mode::Dr => Forward::Dr,
                Mode::Nat => Forward::Nat,
                Mode::Tun => Forward::Tun,
            };
            m.apply(&Op::AddDest(key, DestConfig::new(addr, port, forward, 1)))
                .expect("real server");
        }
    }
    m
}

/// What the daemon would resolve for each real server.
fn paths(net: &Net) -> Paths {
    let mut p = Paths::new();
    let path = |next_hop: Ipv4Addr, dmac, mtu| RsPath {
        ifindex: net.int,
        next_hop: next_hop.into(),
        smac: net.int_mac,
        dmac: Some(dmac),
        tun_src: INT_ADDR.into(),
        mtu,
    };
    for n in 1..=4 {
        p.insert(rs(n).into(), path(rs(n), rs_mac(n), 1500));
        p.insert(far_rs(n).into(), path(ROUTER, ROUTER_MAC, 1500));
    }
    p.insert(SMALL_MTU_TUN.into(), path(ROUTER, ROUTER_MAC, 600));
    p.insert(SMALL_MTU_NAT.into(), path(ROUTER, ROUTER_MAC, 600));
    p
}

/// The balancer with its own pins, shut down before the pins go (also on panic).
struct Balancer {
    dp: Option<Dataplane>,
    _pins: lb_tests::PinDir,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            let _ = dp.shutdown(false);
        }
    }
}

#[test]
fn fuzz_packets() {
    let packets = fuzz::env_u64("LB_FUZZ_PACKETS", 1_000_000);
    let seconds = fuzz::env_u64("LB_FUZZ_SECONDS", 0);
    let seed = fuzz::seed_from_env();
    eprintln!(
        "fuzz_packets: seed {seed:#x} (LB_FUZZ_SEED={seed:#x} replays), up to {} packets{}",
        if packets == 0 {
            "unbounded".to_string()
        } else {
            packets.to_string()
        },
        if seconds == 0 {
            String::new()
        } else {
            format!(", {seconds} s")
        }
    );

    let pins = lb_tests::PinDir::new("fuzz");
    let dp = Dataplane::open(Options {
        pin_dir: pins.path().to_path_buf(),
        // Room for every connection the generator's client and port pools can open, so that
        // no entry it expects to find is evicted.
        conn_table_size: 1 << 16,
        sched_table_size: 4096,
        mh_table_size: 251,
        persist_table_size: 4096,
        ..Options::default()
    })
    .expect("loading the balancer (root, bpffs)");
    let mut bal = Balancer {
        dp: Some(dp),
        _pins: pins,
    };
    let net = Net::new(
        "fuzz",
        &[SMALL_MTU_TUN, SMALL_MTU_NAT],
        Some((GATEWAY, GATEWAY_MAC)),
    );
    let svcs = services();
    bal.dp
        .as_mut()
        .unwrap()
        .sync(&model(&svcs), &paths(&net))
        .expect("sync");

    // LB_FUZZ_SYNC=1: the same run as a connection-sync MASTER with sloppy_tcp on (every
    // segment without an entry but RST opens one; events fill the ring, then are dropped).
    let sync = std::env::var_os("LB_FUZZ_SYNC").is_some_and(|v| v != "0");
    let mut sync_events = None;
    if sync {
        let dp = bal.dp.as_mut().unwrap();
        dp.set_sync_master(true).expect("SYNC_MASTER");
        dp.set_sloppy(true, true).expect("sloppy_tcp");
        sync_events = Some(dp.sync_events().expect("a sync event reader"));
        eprintln!("fuzz_packets: SYNC_MASTER and sloppy_tcp on");
    }

    // The decapsulation program, as `lb-ctl realserver --mode tun` loads it (unpinned).
    let mut decap = Ebpf::load(lb_ctl::realserver::DECAP_OBJ).expect("loading lb_decap");
    let decap_vips = [VIP, VIP2];
    {
        let mut map: BpfHashMap<_, lb_common::Addr, u8> = BpfHashMap::try_from(
            decap
                .map_mut(lb_common::maps::DECAP_VIPS)
                .expect("decap map"),
        )
        .expect("decap map type");
        for v in decap_vips {
            map.insert(lb_common::Addr::v4(u32::from_ne_bytes(v.octets())), 1, 0)
                .unwrap();
        }
    }
    let prog: &mut Xdp = decap
        .program_mut(lb_common::progs::DECAP)
        .expect("decap program")
        .try_into()
        .expect("XDP");
    prog.load().expect("loading lb_decap into the kernel");
    let dc: &Xdp = prog;
    let lb = bal
        .dp
        .as_ref()
        .unwrap()
        .program()
        .expect("the balancer program");

    let world = World {
        services: svcs,
        local: vec![EXT_ADDR, INT_ADDR],
    };
    let macs = Macs {
        ext: net.ext_mac,
        int: net.int_mac,
        client: CLIENT_MAC,
        server: rs_mac(3),
    };
    // Mostly real clients; a few addresses no ICMP error may go to (RFC 1122 3.2.2).
    let mut clients = vec![CLIENT];
    clients.extend((1..=12).map(|n| Ipv4Addr::new(198, 18, n, 7)));
    clients.extend([
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(0, 0, 0, 0),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(255, 255, 255, 255),
    ]);
    let mut gen_ = Gen::new(seed, world.clone(), macs, clients);
    let (ext, int) = (net.ext, net.int);

    // LB_FUZZ_VERBOSE=1: every violation, not only the first of each class.
    let verbose = std::env::var_os("LB_FUZZ_VERBOSE").is_some();
    let start = Instant::now();
    let report = net.ns.enter(move || {
        let mut report = Report::default();
        // Per service (proto, VIP, port): the IP bytes its packets really carried, which
        // its InBytes counter may not exceed.
        let mut received: std::collections::HashMap<(u8, Ipv4Addr, u16), u64> =
            Default::default();
        let deadline = (seconds > 0).then(|| start + Duration::from_secs(seconds));
        let mut n = 0u64;
        while packets == 0 || n < packets {
            if n.is_multiple_of(4096) && deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            // Long runs (cargo xtask fuzz) say how far they are, so that one stopped with
            // Ctrl-C has told what it found.
            if n > 0 && n.is_multiple_of(1_000_000) {
                let classes: Vec<String> = report
                    .classes
                    .iter()
                    .map(|(c, e)| format!("{c} {}", e.0))
                    .collect();
                eprintln!(
                    "fuzz_packets: {n} packets, {} violations so far {classes:?} ({:.0} s)",
                    report.violations(),
                    start.elapsed().as_secs_f64()
                );
            }
            // Connections first, so that what follows meets established ones.
            let case = if n < 2000 { gen_.opener() } else { gen_.next_case() };
            n += 1;
            if let Some(ip) = fuzz::ipv4(&case.frame)
                && case.frame.len() >= 14 + ip.ihl.max(20) + 4
            {
                let l4 = &case.frame[14 + ip.ihl.max(20)..];
                let dport = u16::from_be_bytes([l4[2], l4[3]]);
                *received.entry((ip.proto, ip.dst, dport)).or_default() +=
                    (case.frame.len() - 14) as u64;
            }
            let ifindex = if case.from_servers { int } else { ext };
            let out = xdp_run::run_xdp(lb, &case.frame, 1, ifindex).expect("BPF_PROG_TEST_RUN");
            let mut r = fuzz::check(&world, &case.frame, out.action, &out.data);
            if case.expect_snat && !matches!(r, Ok(Outcome::Nat) | Err(_)) {
                r = Err(fuzz::Violation {
                    class: "nat-reply-not-snated",
                    detail: format!(
                        "a reply of a connection whose last request was DNATed to its sender: {:?}, verdict {}; the connection's requests: {}",
                        r,
                        out.action,
                        gen_.history_of_reply(&case.frame)
                    ),
                });
            }
            gen_.learn(&case.frame, r.as_ref().ok().copied(), &out.data);
            if verbose && let Err(e) = &r {
                eprintln!("violation {}: {} | {}", e.class, e.detail, fuzz::hex(&case.frame));
            }
            report.add("lb_xdp", case.how, &case.frame, &out.data, &r);

            // The decapsulation program on the same input, and on what TUN produced: it must
            // give back the client's packet.
            let d = xdp_run::run_xdp(dc, &case.frame, 1, 0).expect("BPF_PROG_TEST_RUN decap");
            let rd = fuzz::check_decap(&decap_vips, &case.frame, d.action, &d.data)
                .map(|()| Outcome::Passed);
            report.add("lb_decap", case.how, &case.frame, &d.data, &rd);
            // (Only for packets to a VIP: lb_decap rightly leaves anything else alone.)
            if r == Ok(Outcome::Tun) && fuzz::ipv4(&case.frame).is_some_and(|i| decap_vips.contains(&i.dst)) {
                let d = xdp_run::run_xdp(dc, &out.data, 1, 0).expect("BPF_PROG_TEST_RUN decap");
                let inp = fuzz::ipv4(&case.frame).expect("forwarded IPv4");
                let mut rd = fuzz::check_decap(&decap_vips, &out.data, d.action, &d.data)
                    .map(|()| Outcome::Passed);
                if rd.is_ok() && (d.data.len() < 14 + inp.tot || d.data[14..14 + inp.tot] != *inp.packet()) {
                    rd = Err(fuzz::Violation {
                        class: "tun-decap-round-trip",
                        detail: "lb_decap(lb_xdp TUN output) is not the client's packet".into(),
                    });
                }
                report.add("lb_decap(tun)", case.how, &out.data, &d.data, &rd);
            }
        }
        (report, received)
    });
    let (mut report, received) = report;
    // Bytes counted are bytes received: a length field's claim is not (IPVS counts skb->len).
    let snap = bal.dp.as_ref().unwrap().snapshot(None, &Default::default());
    for v in &snap.services {
        let k = v.config.key;
        let std::net::IpAddr::V4(vip) = k.addr else {
            panic!("an IPv6 service {k} in the IPv4 packet fuzzer")
        };
        let got = received
            .get(&(k.proto.number(), vip, k.port))
            .copied()
            .unwrap_or(0);
        if v.stats.inbytes > got {
            let e = fuzz::Violation {
                class: "inbytes-beyond-bytes-received",
                detail: format!(
                    "service {k}: InBytes {} but its packets carried at most {got} IP bytes",
                    v.stats.inbytes
                ),
            };
            report.add("lb_xdp", "stats", &[], &[], &Err(e));
        }
    }
    if let Some(mut ev) = sync_events {
        let mut read = 0;
        while let Ok(b) = ev.next_batch(65536, Duration::ZERO)
            && !b.is_empty()
        {
            read += b.len();
        }
        let dropped = bal.dp.as_ref().unwrap().counters();
        eprintln!(
            "fuzz_packets: sync events read {read} ({} stale), dropped {:?}",
            ev.stale,
            dropped.iter().find(|(n, _)| *n == "sync_dropped")
        );
    }
    let took = start.elapsed();
    let text = report.render();
    eprintln!(
        "fuzz_packets: seed {seed:#x}, {:.1} s, {:.0} runs/s\n{text}",
        took.as_secs_f64(),
        report.runs as f64 / took.as_secs_f64()
    );
    drop(decap);
    drop(bal);
    assert_eq!(
        report.violations(),
        0,
        "packet fuzzing found violations (seed {seed:#x}, LB_FUZZ_SEED={seed:#x} replays):\n{text}"
    );
}
