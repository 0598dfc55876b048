//! Per-packet cost of each data path with `BPF_PROG_TEST_RUN`, beside the MAC-swap floor,
//! measured in the same run.
//!
//! Two methods, each with the floor measured its own way:
//! - repeats: one buffer run `REPEAT` times in one call; the program's own cost, but the
//!   kernel hands each repetition the buffer the previous one left, so only paths that leave
//!   the packet as it was (MAC rewrites, passes) can be measured so;
//! - one run per call on a fresh copy (`SINGLES` calls per round): every path, including
//!   those that rewrite the packet (NAT, TUN) and new flows (a distinct 5-tuple each time);
//!   the kernel's time per call includes its timer overhead, which the floor pays too.
//!   (Live-frames mode does not re-initialise recycled pages either, so it cannot repeat a
//!   rewriting path: after the first batch the program sees its own output.)
//!
//! Every case runs inside one namespace with real interfaces, routes and neighbours. Rounds
//! are interleaved so that drift on this shared machine hits every path alike; the tables
//! show the median and spread of the kernel's own ns/packet over the rounds.

use std::{net::Ipv4Addr, time::Instant};

use aya::{Ebpf, programs::Xdp};
use lb_ctl::{
    dataplane::{Dataplane, Options, PASS_OBJ, Paths, RsPath},
    model::{DestConfig, Forward, Model, Op, Protocol, Scheduler, ServiceConfig, ServiceKey},
};
use lb_tests::{
    Netns,
    packet::{Frame, TCP_ACK, TCP_SYN},
    xdp_run::{self, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

use crate::report::{PathRow, Report, Spread};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
const RS_MAC: [u8; 6] = [2, 0, 0, 0, 0x10, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const DR_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
/// DR services with eight real servers each, for new flows under wlc and mh.
const WLC_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 103);
const MH_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 104);
const NAT_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 101);
const TUN_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 102);
/// DR's real server shares the clients' segment (one-armed DR, as in the tutorials); NAT's
/// sits behind the internal interface; TUN's behind a router on that side.
const DR_RS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const RS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const FAR_RS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

const REPEAT: u32 = 1_000_000;
const SINGLES: usize = 150_000;
const ROUNDS: usize = 7;
/// Spoofed clients of the new-flow cases: the benchmarking range 198.18.0.0/15.
const BENCH_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const BENCH_HOSTS: usize = 1 << 17;

struct Case<'a> {
    name: String,
    /// One run per call on a fresh copy; else `REPEAT` repeats of one buffer.
    single: bool,
    prog: &'a Xdp,
    /// The frames to run, in turn (one, except for new flows: a distinct 5-tuple each).
    frames: Vec<Vec<u8>>,
    ingress: u32,
    expect: u32,
    ns: Vec<f64>,
}

impl Case<'_> {
    fn median(&self) -> f64 {
        let mut v = self.ns.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

fn sys(ns: &Netns, what: &str) -> String {
    ns.run(&["cat", what]).trim().to_string()
}

pub fn run(report: &mut Report) {
    let started = Instant::now();

    // The director's namespace: `ext` towards clients, `int` towards real servers.
    let ns = Netns::new("bench");
    ns.ip(&["link", "add", "ext", "type", "veth", "peer", "name", "int"]);
    ns.ip(&["addr", "add", "198.51.100.2/24", "dev", "ext"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "int"]);
    for i in ["ext", "int"] {
        ns.ip(&["link", "set", i, "up"]);
    }
    ns.sysctls(&[("net.ipv4.ip_forward", "1")]);
    // IPv6 beside it (the DR6/NAT6/TUN6 rows): the same topology in 2001:db8::/32.
    ns.sysctls(&[("net.ipv6.conf.all.forwarding", "1")]);
    ns.ip(&["addr", "add", "2001:db8:c::2/64", "dev", "ext", "nodad"]);
    ns.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "int", "nodad"]);
    ns.neigh_permanent("2001:db8:c::7", "02:00:00:00:00:07", "ext");
    ns.neigh_permanent("2001:db8:1::11", "02:00:00:00:10:01", "int");
    ns.neigh_permanent("2001:db8:1::fe", "02:00:00:00:00:fe", "int");
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:f::/48",
        "via",
        "2001:db8:1::fe",
        "dev",
        "int",
    ]);
    ns.neigh_permanent("192.0.2.11", "02:00:00:00:10:01", "int");
    ns.neigh_permanent("192.0.2.254", "02:00:00:00:00:fe", "int");
    ns.neigh_permanent("198.51.100.7", "02:00:00:00:00:07", "ext");
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "192.0.2.254",
        "dev",
        "int",
    ]);
    let ext: u32 = sys(&ns, "/sys/class/net/ext/ifindex").parse().unwrap();
    let int: u32 = sys(&ns, "/sys/class/net/int/ifindex").parse().unwrap();

    let mut refs = Ebpf::load(PASS_OBJ).expect("loading the reference programs");
    let swap: &mut Xdp = refs
        .program_mut(lb_common::progs::MACSWAP)
        .expect("lb_macswap")
        .try_into()
        .unwrap();
    swap.load().unwrap();
    let swap: &Xdp = &*swap;
    let pins = lb_tests::PinDir::new("bench");
    let pin_dir = pins.path().to_path_buf();
    // The embryonic table twice its default size: a round's new flows (150,000 per case)
    // then fit in it with room (buckets overflow rarely), so that a new flow measures an
    // insert into a table with room, as on a director whose handshakes complete (an embryo
    // leaves with its handshake's ACK). (Its slots are plain stores: a full table costs the
    // same per SYN, the oldest embryo of the bucket giving way.)
    let mut dp = Dataplane::open(Options {
        pin_dir: pin_dir.clone(),
        embryo_table_size: lb_common::size::DEFAULT_CONNS / 2,
        ..Options::default()
    })
    .expect("loading the balancer");
    let mut model = Model::default();
    let mut paths = Paths::new();
    let ext_mac = sys(&ns, "/sys/class/net/ext/address");
    let int_mac = sys(&ns, "/sys/class/net/int/address");
    let mac = |s: &str| -> [u8; 6] {
        let v: Vec<u8> = s
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        v.try_into().unwrap()
    };
    let (ext_mac, int_mac) = (mac(&ext_mac), mac(&int_mac));
    for (vip, rs, forward) in [
        (DR_VIP, DR_RS, Forward::Dr),
        (NAT_VIP, RS, Forward::Nat),
        (TUN_VIP, FAR_RS, Forward::Tun),
    ] {
        model
            .add(
                ServiceConfig::new(ServiceKey::tcp(vip, 80), Scheduler::Rr),
                [DestConfig::new(rs, 80, forward, 1)],
            )
            .unwrap();
        let (ifindex, smac, next_hop, dmac) = match forward {
            Forward::Dr => (ext, ext_mac, rs, RS_MAC),
            Forward::Nat => (int, int_mac, rs, RS_MAC),
            Forward::Tun => (int, int_mac, Ipv4Addr::new(192, 0, 2, 254), ROUTER_MAC),
        };
        paths.insert(
            rs.into(),
            RsPath {
                ifindex,
                next_hop: next_hop.into(),
                smac,
                dmac: Some(dmac),
                tun_src: Ipv4Addr::new(192, 0, 2, 1).into(),
                mtu: 1500,
            },
        );
    }
    // wlc and mh: eight real servers on the clients' segment (DR), one MAC for all.
    for (vip, sched) in [(WLC_VIP, Scheduler::Wlc), (MH_VIP, Scheduler::Mh)] {
        let key = ServiceKey {
            proto: Protocol::Tcp,
            addr: vip.into(),
            port: 80,
        };
        model
            .apply(&Op::AddService(ServiceConfig::new(key, sched)))
            .unwrap();
        for i in 0..8u8 {
            let rs = Ipv4Addr::new(198, 51, 100, 30 + i);
            model
                .apply(&Op::AddDest(
                    key,
                    DestConfig::new(rs, 80, Forward::Dr, 1 + u32::from(i % 3)),
                ))
                .unwrap();
            paths.insert(
                rs.into(),
                RsPath {
                    ifindex: ext,
                    next_hop: rs.into(),
                    smac: ext_mac,
                    dmac: Some(RS_MAC),
                    tun_src: Ipv4Addr::new(192, 0, 2, 1).into(),
                    mtu: 1500,
                },
            );
        }
    }
    dp.sync(&model, &paths).expect("sync");
    // The IPv6 services, written as the layout-5 contract says the control plane writes
    // them (lb_tests::v6), each real server resolved (NDP) as `paths` does for IPv4.
    let v6 = lb_tests::v6::v6;
    let (vip6_dr, vip6_nat, vip6_tun) = (
        v6("2001:db8::100"),
        v6("2001:db8::101"),
        v6("2001:db8::102"),
    );
    let client6 = v6("2001:db8:c::7");
    for (index, vip, fwd, rs, ifindex, smac, dmac) in [
        (
            0,
            vip6_dr,
            lb_common::fwd::DR,
            v6("2001:db8:c::11"),
            ext,
            ext_mac,
            RS_MAC,
        ),
        (
            1,
            vip6_nat,
            lb_common::fwd::NAT,
            v6("2001:db8:1::11"),
            int,
            int_mac,
            RS_MAC,
        ),
        (
            2,
            vip6_tun,
            lb_common::fwd::TUN,
            v6("2001:db8:f::11"),
            int,
            int_mac,
            ROUTER_MAC,
        ),
    ] {
        lb_tests::v6::install(
            &pin_dir,
            &lb_tests::v6::Svc {
                index,
                vip,
                port: 80,
                proto: lb_common::proto::TCP,
                sched: lb_common::sched::RR,
                fwd,
                persist_plen: None,
                tun_src: v6("2001:db8:1::1"),
                dests: vec![lb_tests::v6::Dest {
                    addr: rs,
                    port: 80,
                    ifindex,
                    dmac,
                    smac,
                    mtu: 1500,
                }],
            },
        );
    }
    let lb = dp.program().expect("the balancer program");
    let from_client6 = |vip, flags| {
        lb_tests::v6::frame6_eth(
            [2, 0, 0, 0, 0, 2],
            CLIENT_MAC,
            client6,
            vip,
            64,
            &[],
            lb_common::proto::TCP,
            &lb_tests::v6::tcp_seg_with(client6, 40000, vip, 80, flags, b""),
        )
    };
    let rs6 = v6("2001:db8:1::11");
    let reply6 = lb_tests::v6::frame6_eth(
        [2, 0, 0, 0, 0, 3],
        RS_MAC,
        rs6,
        client6,
        64,
        &[],
        lb_common::proto::TCP,
        &lb_tests::v6::tcp_seg_with(rs6, 80, client6, 40000, TCP_ACK, b""),
    );
    let from_client = |vip, flags| {
        Frame::tcp(CLIENT, 40000, vip, 80, flags, b"").eth([2, 0, 0, 0, 0, 2], CLIENT_MAC)
    };
    let reply = Frame::tcp(RS, 80, CLIENT, 40000, TCP_ACK, b"").eth([2, 0, 0, 0, 0, 3], RS_MAC);
    let other = Frame::tcp(
        CLIENT,
        40000,
        Ipv4Addr::new(198, 51, 100, 2),
        22,
        TCP_ACK,
        b"",
    )
    .eth([2, 0, 0, 0, 0, 2], CLIENT_MAC);

    let run = |prog: &Xdp, frame: &[u8], ingress: u32, repeat: u32| {
        ns.enter(|| xdp_run::run_xdp(prog, frame, repeat, ingress).expect("BPF_PROG_TEST_RUN"))
    };
    // Create each flow once, SYN then the ACK that establishes it (a DR/TUN connection
    // leaves the embryonic table only then; the new flows below would evict it from there);
    // every measured packet then finds it.
    for vip in [DR_VIP, NAT_VIP, TUN_VIP] {
        for flags in [TCP_SYN, TCP_ACK] {
            let out = run(lb, &from_client(vip, flags), ext, 1);
            assert!(
                [XDP_TX, XDP_REDIRECT].contains(&out.action),
                "{vip}: {out:?}"
            );
        }
    }
    for vip in [vip6_dr, vip6_nat, vip6_tun] {
        for flags in [TCP_SYN, TCP_ACK] {
            let out = run(lb, &from_client6(vip, flags), ext, 1);
            assert!(
                [XDP_TX, XDP_REDIRECT].contains(&out.action),
                "{vip}: {out:?}"
            );
        }
    }

    let case = |name: &str, single, prog, frames, ingress, expect| Case {
        name: name.to_string(),
        single,
        prog,
        frames,
        ingress,
        expect,
        ns: vec![],
    };
    // New flows: SYNs from distinct clients and ports, never seen before (the connection
    // table fills and the LRU evicts, as on a busy director); clients from the benchmarking
    // range 198.18.0.0/15, each address with its own ports.
    let new_flows = |vip: Ipv4Addr| -> Vec<Vec<u8>> {
        (0..SINGLES * ROUNDS)
            .map(|i| {
                let client = Ipv4Addr::from(u32::from(BENCH_NET) + (i % BENCH_HOSTS) as u32);
                let port = 1024 + (i / BENCH_HOSTS) as u16;
                Frame::tcp(client, port, vip, 80, TCP_SYN, b"").eth([2, 0, 0, 0, 0, 2], CLIENT_MAC)
            })
            .collect()
    };
    let one = |f: Vec<u8>| vec![f];
    let mut cases = vec![
        case(
            "MAC-swap XDP_TX (floor)",
            false,
            swap,
            one(from_client(DR_VIP, TCP_ACK)),
            ext,
            XDP_TX,
        ),
        case(
            "DR, established flow",
            false,
            lb,
            one(from_client(DR_VIP, TCP_ACK)),
            ext,
            XDP_TX,
        ),
        case(
            "non-VIP packet (XDP_PASS)",
            false,
            lb,
            one(other.clone()),
            ext,
            XDP_PASS,
        ),
        case(
            "MAC-swap XDP_TX (floor)",
            true,
            swap,
            one(from_client(DR_VIP, TCP_ACK)),
            ext,
            XDP_TX,
        ),
        case(
            "DR, established flow",
            true,
            lb,
            one(from_client(DR_VIP, TCP_ACK)),
            ext,
            XDP_TX,
        ),
        case(
            "DR, new flow, rr (schedule+insert)",
            true,
            lb,
            new_flows(DR_VIP),
            ext,
            XDP_TX,
        ),
        case(
            "DR, new flow, wlc over 8",
            true,
            lb,
            new_flows(WLC_VIP),
            ext,
            XDP_TX,
        ),
        case(
            "DR, new flow, mh over 8",
            true,
            lb,
            new_flows(MH_VIP),
            ext,
            XDP_TX,
        ),
        case(
            "NAT request, established",
            true,
            lb,
            one(from_client(NAT_VIP, TCP_ACK)),
            ext,
            XDP_REDIRECT,
        ),
        case(
            "NAT reply, established",
            true,
            lb,
            one(reply),
            int,
            XDP_REDIRECT,
        ),
        case(
            "TUN encap, established",
            true,
            lb,
            one(from_client(TUN_VIP, TCP_ACK)),
            ext,
            XDP_REDIRECT,
        ),
        case(
            "non-VIP packet (XDP_PASS)",
            true,
            lb,
            one(other),
            ext,
            XDP_PASS,
        ),
        // IPv6: lb_xdp's tail call to lb_xdp6 included.
        case(
            "DR6, established flow",
            false,
            lb,
            one(from_client6(vip6_dr, TCP_ACK)),
            ext,
            XDP_TX,
        ),
        case(
            "DR6, established flow",
            true,
            lb,
            one(from_client6(vip6_dr, TCP_ACK)),
            ext,
            XDP_TX,
        ),
        case(
            "NAT6 request, established",
            true,
            lb,
            one(from_client6(vip6_nat, TCP_ACK)),
            ext,
            XDP_REDIRECT,
        ),
        case(
            "NAT6 reply, established",
            true,
            lb,
            one(reply6),
            int,
            XDP_REDIRECT,
        ),
        case(
            "TUN6 encap, established",
            true,
            lb,
            one(from_client6(vip6_tun, TCP_ACK)),
            ext,
            XDP_REDIRECT,
        ),
    ];
    // The connection tables, opened by their pins: each new-flow case starts with only the
    // established flows in them, so that new flows measure scheduling and an insert into a
    // table with room (a full table would add the LRU's eviction to every insert). From the
    // second case on the tables' free elements are scattered through their memory, as on a
    // director that has run for a while, and every insert touches cold memory: the first
    // case's new flows are markedly cheaper (the minimum), the median is the steady state.
    let mut conns = {
        let m = aya::maps::MapData::from_pin(pin_dir.join("maps").join(lb_common::maps::CONNS))
            .expect("a pinned connection table");
        let m: aya::maps::HashMap<_, lb_common::FlowKey, lb_common::Conn> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(m)).expect("an LRU hash");
        m
    };
    let mut embryos = {
        let m = aya::maps::MapData::from_pin(pin_dir.join("maps").join(lb_common::maps::EMBRYO))
            .expect("a pinned embryonic table");
        let m: aya::maps::Array<_, lb_common::EmbryoSlot> =
            aya::maps::Array::try_from(aya::maps::Map::Array(m)).expect("an array");
        m
    };
    let new_flow = |k: &lb_common::FlowKey| {
        let a = k.saddr.as_v4().to_ne_bytes();
        a[0] == 198 && (a[1] == 18 || a[1] == 19)
    };
    // Removes the new flows of earlier cases from both tables (the embryos of a director's
    // completed handshakes leave the embryonic table the same way, one by one).
    let mut forget_new_flows = || {
        let new: Vec<lb_common::FlowKey> = conns
            .keys()
            .filter_map(Result::ok)
            .filter(|k| new_flow(k))
            .collect();
        for k in &new {
            let _ = conns.remove(k);
        }
        for i in 0..embryos.len() {
            if let Ok(s) = embryos.get(&i, 0)
                && s.check != lb_common::embryo::EMPTY
                && new_flow(&s.key)
            {
                embryos
                    .set(i, lb_common::EmbryoSlot::default(), 0)
                    .expect("clearing a slot");
            }
        }
    };
    for round in 0..ROUNDS {
        for c in cases.iter_mut() {
            if c.frames.len() > 1 {
                forget_new_flows();
            }
            let ns_per_packet = if c.single {
                let prog = c.prog;
                let (frames, ingress, expect, name) = (&c.frames, c.ingress, c.expect, &c.name);
                ns.enter(|| {
                    let mut total = 0u64;
                    for i in 0..SINGLES {
                        let frame = &frames[(round * SINGLES + i) % frames.len()];
                        let out =
                            xdp_run::run_xdp(prog, frame, 1, ingress).expect("BPF_PROG_TEST_RUN");
                        assert_eq!(out.action, expect, "{name}: {out:?}");
                        total += u64::from(out.duration_ns);
                    }
                    total as f64 / SINGLES as f64
                })
            } else {
                let out = run(c.prog, &c.frames[0], c.ingress, REPEAT);
                assert_eq!(out.action, c.expect, "{}: {out:?}", c.name);
                f64::from(out.duration_ns)
            };
            c.ns.push(ns_per_packet);
        }
    }
    for single in [false, true] {
        let floor = cases.iter().find(|c| c.single == single).unwrap().median();
        for c in cases.iter().filter(|c| c.single == single) {
            let ns = Spread::of(&c.ns);
            report.paths.push(PathRow {
                path: c.name.clone(),
                method: if single { "single" } else { "repeat" },
                ns,
                x_floor: ns.median / floor,
            });
        }
    }
    let floors: Vec<f64> = [false, true]
        .iter()
        .map(|&single| cases.iter().find(|c| c.single == single).unwrap().median())
        .collect();
    drop(cases);
    sync_master_cost(&ns, &mut dp, ext, &floors, report);
    let _ = dp.shutdown(false);
    println!("  ({:.0} s)", started.elapsed().as_secs_f64());
}

/// What connection sync's MASTER bit costs (`settings_flags::SYNC_MASTER`): the DR
/// established flow (the bit tested, the refresh stamp compared) and the DR new flow (an
/// event written to the ring, drained meanwhile by a reader thread as the sync daemon
/// would), each measured with the bit off and on, alternating, in rounds.
fn sync_master_cost(ns: &Netns, dp: &mut Dataplane, ext: u32, floors: &[f64], report: &mut Report) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    const FLOWS: usize = 20_000;
    const ROUNDS: usize = 5;
    let mut reader = dp.sync_events().expect("a sync event reader");
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let drain = {
        let (stop, read) = (stop.clone(), read.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let b = reader
                    .next_batch(4096, std::time::Duration::from_millis(20))
                    .expect("reading sync events");
                read.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let established =
        Frame::tcp(CLIENT, 40000, DR_VIP, 80, TCP_ACK, b"").eth([2, 0, 0, 0, 0, 2], CLIENT_MAC);
    // New flows from the other half of the benchmarking range (198.19.0.0/16), never seen.
    let mut next_flow = 0usize;
    let mut new_flow = || {
        let i = next_flow;
        next_flow += 1;
        let client = Ipv4Addr::from(0xc613_0000u32 + (i % 65_536) as u32);
        Frame::tcp(client, 2000 + (i / 65_536) as u16, DR_VIP, 80, TCP_SYN, b"")
            .eth([2, 0, 0, 0, 0, 2], CLIENT_MAC)
    };
    let mut est = [Vec::new(), Vec::new()];
    let mut new = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for on in [false, true] {
            dp.set_sync_master(on).expect("SYNC_MASTER");
            let lb = dp.program().expect("the balancer program");
            let frames: Vec<Vec<u8>> = (0..FLOWS).map(|_| new_flow()).collect();
            let (e, n) = ns.enter(|| {
                let out = xdp_run::run_xdp(lb, &established, REPEAT, ext).expect("test run");
                assert_eq!(out.action, XDP_TX, "established, sync {on}: {out:?}");
                let mut total = 0u64;
                for f in &frames {
                    let out = xdp_run::run_xdp(lb, f, 1, ext).expect("test run");
                    assert_eq!(out.action, XDP_TX, "new flow, sync {on}: {out:?}");
                    total += u64::from(out.duration_ns);
                }
                (f64::from(out.duration_ns), total as f64 / FLOWS as f64)
            });
            est[on as usize].push(e);
            new[on as usize].push(n);
        }
    }
    dp.set_sync_master(false).expect("SYNC_MASTER off");
    std::thread::sleep(std::time::Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    drain.join().expect("the reader thread");
    let dropped = dp
        .counters()
        .into_iter()
        .find(|(n, _)| *n == "sync_dropped")
        .map_or(0, |c| c.1);
    for (name, single, samples) in [
        ("DR, established flow, sync MASTER off", false, &est[0]),
        ("DR, established flow, sync MASTER on", false, &est[1]),
        ("DR, new flow, rr, sync MASTER off", true, &new[0]),
        ("DR, new flow, rr, sync MASTER on (event)", true, &new[1]),
    ] {
        let ns = Spread::of(samples);
        report.paths.push(PathRow {
            path: name.to_string(),
            method: if single { "single" } else { "repeat" },
            ns,
            x_floor: ns.median / floors[single as usize],
        });
    }
    let ratio = |v: &[Vec<f64>; 2]| Spread::of(&v[1]).median / Spread::of(&v[0]).median;
    println!(
        "  sync MASTER on/off: established x{:.3}, new flow x{:.3} ({} events read, {dropped} dropped)",
        ratio(&est),
        ratio(&new),
        read.load(Ordering::Relaxed)
    );
}
