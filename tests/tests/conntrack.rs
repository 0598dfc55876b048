//! The connection table under load, through `BPF_PROG_TEST_RUN` on the balancer the daemon
//! loads: expiry in bounded steps with exact counts, and a flood of spoofed SYNs many times the
//! table's size that costs no established connection. Root only.

mod common;

use std::{collections::HashMap, net::Ipv4Addr};

use common::*;
use lb_ctl::{
    api::Timeouts,
    dataplane::{MAX_SWEEP_CHUNK, StateTimeouts},
};
use lb_tests::{
    packet::{Frame, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN},
    xdp_run::XDP_TX,
};

/// Distinct legitimate clients: 250 documentation addresses × ports.
fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1),
        10000 + (i / 250) as u16,
    )
}

fn seg(c: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    Frame::tcp(c.0, c.1, VIP, 80, flags, b"").eth(DIRECTOR_MAC, ROUTER_MAC)
}

/// (active, inactive) per real server number, as `-Ln` shows them.
fn counts(f: &mut Fixture) -> HashMap<u8, (u32, u32)> {
    let snap = f.dp().snapshot(None, &Default::default());
    snap.services[0]
        .dests
        .iter()
        .map(|d| {
            let std::net::IpAddr::V4(a) = d.config.addr else {
                panic!("an IPv6 real server {} in an IPv4 fixture", d.config.addr)
            };
            let n = a.octets()[3] - 10;
            (n, (d.active_conns, d.inact_conns))
        })
        .collect()
}

#[test]
fn expiry_runs_in_bounded_steps_with_exact_counts() {
    const EST: u32 = 6000;
    const FIN: u32 = 3000;
    const EMB: u32 = 1000;
    let mut f = Fixture::with_table(web_rr(), 65536);
    let mut want: HashMap<u8, (u32, u32)> = HashMap::new();
    for i in 0..EST + FIN + EMB {
        let c = client(i);
        let n = f.forwarded_to(&seg(c, TCP_SYN));
        let e = want.entry(n).or_default();
        if i < EST + FIN {
            assert_eq!(f.forwarded_to(&seg(c, TCP_ACK)), n, "flow {i}");
        }
        if (EST..EST + FIN).contains(&i) {
            assert_eq!(f.forwarded_to(&seg(c, TCP_FIN | TCP_ACK)), n, "flow {i}");
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    let r = f.dp().sweep().expect("sweep");
    assert_eq!(
        (r.entries, r.embryonic, r.expired, r.keys_checked),
        ((EST + FIN) as usize, EMB as usize, 0, 0),
        "{r:?}"
    );
    // The tables were read in chunks, sized by their measured cost, the walk resuming where
    // the last one stopped.
    assert!(
        (1..=MAX_SWEEP_CHUNK as usize).contains(&r.largest_read) && r.smallest_read >= 1,
        "{r:?}"
    );
    let min_batches =
        (EST + FIN).div_ceil(r.largest_read as u32) + EMB.div_ceil(r.largest_read as u32);
    assert!(r.conn_batches >= min_batches as usize, "{r:?}");
    assert_eq!(counts(&mut f), want, "counts after the first sweep ({r:?})");

    // FIN_WAIT times out after 1 s: the 3,000 closed connections go, in runs of at most
    // `SWEEP_KEYS` keys each (fewer if runs of that many measured dear), and nothing else
    // does.
    let mut t = StateTimeouts::default();
    t.set(&Timeouts {
        tcp: 0,
        tcpfin: 1,
        udp: 0,
    });
    f.dp().set_timeouts(&t).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.dp().tick_clock().unwrap();
    let r = f.dp().sweep().expect("sweep");
    let per_run = lb_common::size::SWEEP_KEYS;
    assert_eq!(
        (r.expired, r.embryonic_expired, r.keys_checked),
        (FIN as usize, 0, FIN as usize),
        "{r:?}"
    );
    assert!(
        (1..=per_run as usize).contains(&r.largest_key_run)
            && r.key_runs >= FIN.div_ceil(r.largest_key_run as u32) as usize,
        "{r:?}"
    );
    assert_eq!(r.entries, (EST + FIN) as usize, "counted before expiring");
    for e in want.values_mut() {
        e.1 = 0;
    }
    assert_eq!(counts(&mut f), want, "counts after expiry ({r:?})");
    let r = f.dp().sweep().expect("sweep");
    assert_eq!(
        (r.entries, r.embryonic, r.expired),
        (EST as usize, EMB as usize, 0)
    );
    assert_eq!(counts(&mut f), want, "counts are stable ({r:?})");
    // The established ones still go where they went.
    for i in (0..EST).step_by(97) {
        let c = client(i);
        let n = f.forwarded_to(&seg(c, TCP_ACK | TCP_PSH));
        assert!(n == 1 || n == 2);
    }
}

#[test]
fn syn_flood_ten_times_the_table_costs_no_established_connection() {
    const TABLE: u32 = 65536;
    const ESTABLISHED: u32 = 10_000;
    const FLOOD: u32 = 1_000_000;
    let mut f = Fixture::with_table(web_rr(), TABLE);
    let mut backend = Vec::new();
    for i in 0..ESTABLISHED {
        let c = client(i);
        let n = f.forwarded_to(&seg(c, TCP_SYN));
        assert_eq!(f.forwarded_to(&seg(c, TCP_ACK)), n, "flow {i}");
        backend.push(n);
    }
    assert_eq!(f.counter("embryo_promoted"), ESTABLISHED as u64);

    // Spoofed SYNs from the benchmarking range 198.18.0.0/15, every one its own 5-tuple.
    for j in 0..FLOOD {
        let src = Ipv4Addr::from(0xc612_0000 | (j & 0x1_ffff));
        let sport = 1024 + (j >> 17) as u16;
        let syn = Frame::tcp(src, sport, VIP, 80, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC);
        let out = f.run(&syn);
        assert_eq!(
            out.action, XDP_TX,
            "spoofed SYN {j} ({src}:{sport}): {out:?}"
        );
    }
    assert_eq!(
        f.counter("embryo_new"),
        (ESTABLISHED + FLOOD) as u64,
        "every SYN opened an embryonic connection"
    );

    // Every established connection keeps its real server: none was evicted (a lost entry
    // would make the ACK go to the stack, which answers with a reset).
    let mut lost = Vec::new();
    for (i, n) in backend.iter().enumerate() {
        let out = f.run(&seg(client(i as u32), TCP_ACK | TCP_PSH));
        if out.action != XDP_TX || out.data[5] != *n {
            lost.push((i, *n, out.action));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {ESTABLISHED} established connections lost to the flood, first: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // A new legitimate client is still served: handshake, data, close.
    let fresh = (Ipv4Addr::new(203, 0, 113, 9), 40000);
    let n = f.forwarded_to(&seg(fresh, TCP_SYN));
    for flags in [TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK] {
        assert_eq!(f.forwarded_to(&seg(fresh, flags)), n, "flags {flags:#x}");
    }
    let r = f.dp().sweep().expect("sweep");
    assert_eq!(
        r.entries,
        ESTABLISHED as usize + 1,
        "the connection table holds the established ones and the new client ({r:?})"
    );
    let embryo_size = f.dp().embryo_table_size() as usize;
    assert!(
        r.embryonic > 0 && r.embryonic <= embryo_size,
        "the flood stays within the embryonic table ({r:?}, size {embryo_size})"
    );
}

/// A paced pass (as the daemon's sweep thread runs it) finds and counts exactly what an
/// unpaced one does, sleeps to keep to its pace, and stops part way when told, publishing
/// nothing half done.
#[test]
fn a_paced_pass_counts_exactly_and_stops_when_told() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    const FLOWS: u32 = 3000;
    let mut f = Fixture::with_table(web_rr(), 65536);
    let mut want: HashMap<u8, (u32, u32)> = HashMap::new();
    for i in 0..FLOWS {
        let c = client(i);
        let n = f.forwarded_to(&seg(c, TCP_SYN));
        assert_eq!(f.forwarded_to(&seg(c, TCP_ACK)), n, "flow {i}");
        want.entry(n).or_default().0 += 1;
    }
    let mut sweeper = f.dp().sweeper().expect("a sweeper");
    let (stop, walked) = (AtomicBool::new(false), AtomicU64::new(0));
    // 2,000 entries a second: the 3,000 take at least 1.5 s, so the pass must nap.
    let pace = lb_ctl::dataplane::Pace::new(2_000.0, 1.0, &stop, &walked);
    let r = sweeper.pass(Some(&pace)).expect("a paced pass");
    assert_eq!((r.entries, r.expired), (FLOWS as usize, 0), "{r:?}");
    assert!(
        !r.slept.is_zero(),
        "the pass never slept to keep its pace: {r:?}"
    );
    assert_eq!(
        walked.load(std::sync::atomic::Ordering::Relaxed),
        FLOWS as u64,
        "progress as status shows it"
    );
    assert_eq!(counts(&mut f), want, "counts after a paced pass ({r:?})");

    // Told to stop: the pass ends at its next chunk with an error, and what it publishes at
    // its end (the counts) is left as the last complete pass left it.
    for i in FLOWS..FLOWS + 500 {
        let c = client(i);
        let n = f.forwarded_to(&seg(c, TCP_SYN));
        assert_eq!(f.forwarded_to(&seg(c, TCP_ACK)), n, "flow {i}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pace = lb_ctl::dataplane::Pace::new(20_000.0, 1.0, &stop, &walked);
    let e = sweeper
        .pass(Some(&pace))
        .expect_err("a stopped pass ends early");
    assert!(format!("{e:#}").contains("stopped"), "{e:#}");
    let (a, b) = (counts(&mut f), want.clone());
    // The 500 new ones show as created since the last pass (RS_NEW), on top of its counts.
    assert_eq!(
        a.values().map(|c| c.0).sum::<u32>(),
        b.values().map(|c| c.0).sum::<u32>() + 500,
        "{a:?} vs {b:?}"
    );
    let r = f.dp().sweep().expect("an unpaced pass after");
    assert_eq!(r.entries, FLOWS as usize + 500, "{r:?}");
}

mod daemon_sweep {
    //! The daemon's sweep thread with the real daemon: neither it nor a request waits for the
    //! other, and the daemon outlives the thread's death.

    use std::{
        io::Write,
        net::Ipv4Addr,
        os::unix::fs::OpenOptionsExt,
        path::Path,
        time::{Duration, Instant},
    };

    use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
    use lb_common::{Backend, Conn, FlowKey, RsConns, Settings, maps, tcp_state};
    use lb_tests::{Daemon, DrLab, TempDir};

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

    fn config(lab: &DrLab) -> String {
        let mut s = format!(
            "[[service]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"rr\"\n"
        );
        for i in 1..=2 {
            s += &format!(
                "[[service.real_server]]\naddress = \"{}\"\nport = 80\nweight = 1\nforward = \"dr\"\n",
                lab.rs_ip(i)
            );
        }
        s
    }

    fn open(pin: &Path, name: &str) -> Map {
        let path = pin.join("maps").join(name);
        let data = MapData::from_pin(&path)
            .unwrap_or_else(|e| panic!("opening pinned map {}: {e}", path.display()));
        Map::from_map_data(data).expect("a known map type")
    }

    /// The backend id of real server `addr`, from the pinned `LB_BACKENDS`.
    fn backend_id(pin: &Path, addr: Ipv4Addr) -> u32 {
        let b: Array<MapData, Backend> = Array::try_from(open(pin, maps::BACKENDS)).unwrap();
        let want = lb_common::Addr::v4(u32::from_ne_bytes(addr.octets()));
        (1..lb_common::size::MAX_BACKENDS)
            .find(|&i| b.get(&i, 0).is_ok_and(|v| v.addr == want && v.svc_id != 0))
            .unwrap_or_else(|| panic!("no backend for {addr}"))
    }

    /// ESTABLISHED connection `i` of the filler clients (198.18.0.0/15), for `backend`.
    fn filler(i: u32) -> FlowKey {
        FlowKey::new(
            u32::from_ne_bytes(Ipv4Addr::from(0xc612_0000 + (i >> 10)).octets()),
            u32::from_ne_bytes(VIP.octets()),
            (20_000 + (i & 1023) as u16).to_be(),
            80u16.to_be(),
            lb_common::proto::TCP,
        )
    }

    fn rs_active(pin: &Path, id: u32) -> u32 {
        let a: Array<MapData, RsConns> = Array::try_from(open(pin, maps::RS_CONNS)).unwrap();
        a.get(&id, 0).expect("LB_RS_CONNS").active
    }

    /// A request held in the daemon's loop (a reload whose config file is a FIFO nobody has
    /// written yet, as a config on a hung file system would) does not hold the sweep: a pass
    /// completes and publishes new counts while the request waits. And a request is answered
    /// while a pass is under way: `status` itself says so. Orderings, not durations: each wait
    /// is only bounded.
    #[test]
    fn a_held_request_and_a_sweep_pass_do_not_wait_for_each_other() {
        const FILL: u32 = 400_000;
        const GONE: u32 = 1000;
        let lab = DrLab::new(2);
        let dir = TempDir::new("sweep-order");
        let cfg = dir.join("lb.toml");
        std::fs::write(&cfg, config(&lab)).unwrap();
        let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
        let pin = d.pin_path().to_path_buf();
        let rs1 = backend_id(&pin, lab.rs_ip(1));

        // A table of 400,000 established connections to rs1, seen now: a paced pass over them
        // takes a good part of each second.
        let clock = Array::<MapData, Settings>::try_from(open(&pin, maps::SETTINGS))
            .unwrap()
            .get(&0, 0)
            .unwrap()
            .clock_ns;
        let conn = Conn {
            backend: rs1,
            state: tcp_state::ESTABLISHED,
            last_seen_ns: clock,
            ..Conn::default()
        };
        let mut table: BpfHashMap<MapData, FlowKey, Conn> =
            BpfHashMap::try_from(open(&pin, maps::CONNS)).unwrap();
        for i in 0..FILL {
            table.insert(filler(i), conn, 0).expect("filling LB_CONNS");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while rs_active(&pin, rs1) != FILL {
            assert!(
                Instant::now() < deadline,
                "rs1's ActiveConn never became {FILL}: {}\n{}",
                rs_active(&pin, rs1),
                d.status()["sweep"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        // 1. A request answered in the middle of a pass.
        let mut mid_pass = None;
        for _ in 0..2000 {
            let s = d.status();
            if s["sweep"]["in_pass"] == true {
                mid_pass = Some(s["sweep"].clone());
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mid = mid_pass.unwrap_or_else(|| {
            panic!(
                "no status answer came during a pass: {}",
                d.status()["sweep"]
            )
        });
        assert!(
            mid["walked_this_pass"].as_u64().unwrap() < FILL as u64 + 10,
            "{mid}"
        );

        // 2. A pass completing while a request is held: the config becomes a FIFO, a reload
        //    reads it and waits for a writer; once the daemon holds it open, 1,000
        //    connections go from the table, and the sweep must publish the new count while
        //    the reload still waits.
        std::fs::remove_file(&cfg).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&cfg)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", cfg.display());
        let mut reload = d.ctl_command(&["reload"]).spawn().expect("lb-ctl reload");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut fifo = loop {
            // Opening for writing without blocking succeeds once a reader has it open.
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&cfg)
            {
                Ok(f) => break f,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the daemon never opened the config to reload: {e}\n{}",
                        d.log()
                    );
                    assert!(reload.try_wait().unwrap().is_none(), "reload ended early");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        for i in 0..GONE {
            table.remove(&filler(i)).expect("removing a connection");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while rs_active(&pin, rs1) != FILL - GONE {
            assert!(
                Instant::now() < deadline,
                "no pass published while the reload was held: rs1 ActiveConn {}\n{}",
                rs_active(&pin, rs1),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            reload.try_wait().unwrap().is_none(),
            "the reload finished before its config was written"
        );
        // Let the reload finish: the same config, through the FIFO.
        fifo.write_all(config(&lab).as_bytes()).unwrap();
        drop(fifo);
        let st = reload.wait().expect("lb-ctl reload");
        assert!(st.success(), "reload failed: {st}\n{}", d.log());
        let s = d.status();
        assert_eq!(s["sweep"]["failed_passes"], 0, "{}", s["sweep"]);
        let ln = d.ctl_ok(&["-Ln"]);
        assert!(
            ln.contains(&format!("{}", FILL - GONE)),
            "-Ln shows rs1's {} connections:\n{ln}",
            FILL - GONE
        );
    }

    /// The sweep thread dies (a panic injected at its second pass): the daemon logs it and
    /// starts it again, traffic flows through it all, and the new thread counts exactly.
    #[test]
    fn the_sweep_thread_dies_and_comes_back_while_traffic_flows() {
        let lab = DrLab::new(2);
        // SAFETY: set before the daemon starts, and removed after, while this test's thread
        // is the only one that reads the environment (`--test-threads=1`).
        unsafe { std::env::set_var("LB_FAULT_SWEEP_PANIC", "2") };
        let dir = TempDir::new("sweep-dies");
        let cfg = dir.join("lb.toml");
        std::fs::write(&cfg, config(&lab)).unwrap();
        let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
        unsafe { std::env::remove_var("LB_FAULT_SWEEP_PANIC") };
        let url = format!("http://{VIP}/");
        let mut made = 0usize;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let bodies = lab.curls(&url, 2);
            made += 2;
            assert_eq!(bodies.len(), 2);
            let s = d.status()["sweep"].clone();
            if s["thread_restarts"].as_u64() >= Some(1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sweep thread was never started again: {s}\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = d.log();
        assert!(
            log.contains("the sweep thread died") && log.contains("LB_FAULT_SWEEP_PANIC"),
            "the death is logged with its reason:\n{log}"
        );
        // Traffic still goes to both real servers.
        let bodies = lab.curls(&url, 4);
        made += 4;
        assert!(
            bodies.iter().any(|b| b == "rs1") && bodies.iter().any(|b| b == "rs2"),
            "{bodies:?}"
        );
        // The new thread sweeps: passes go on, and -Ln counts every connection made, each
        // closed one once (they stay within their timeouts).
        let passes = d.status()["sweep"]["passes"].as_u64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = d.status()["sweep"].clone();
            if s["passes"].as_u64().unwrap() >= passes + 2 {
                break;
            }
            assert!(Instant::now() < deadline, "no pass after the restart: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let ln = d.ctl_ok(&["-Ln"]);
        let total: usize = ln
            .lines()
            .filter(|l| l.trim_start().starts_with("->") && l.contains(":80"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(f.get(4)?.parse::<usize>().ok()? + f.get(5)?.parse::<usize>().ok()?)
            })
            .sum();
        assert_eq!(
            total, made,
            "ActiveConn + InActConn over both real servers:\n{ln}"
        );
        // The daemon's fillers (`lb_common::filler`, one per 4,096 buckets of its 1M table)
        // are all there, and none was counted above.
        let fillers = &d.status()["sweep"]["fillers"];
        assert!(
            fillers["conns_kept"].as_u64() > Some(0) && fillers["conns"] == fillers["conns_kept"],
            "the sweep's fillers in `lb-ctl status`: {fillers}"
        );
    }
}

/// A SYN without a connection probes only the connection table; the embryonic one is probed
/// by the insert. A retransmitted SYN of an embryo therefore reaches the scheduler, loses the
/// insert, and must come out as if it had been found: its server, not counted again, the rr
/// cursor not moved, the embryo refreshed; and it keeps its server when no server is
/// schedulable any more (weight 0), as every packet of a connection does.
#[test]
fn a_retransmitted_syn_of_an_embryo_is_the_same_connection() {
    let mut f = Fixture::with_table(web_rr(), 65536);
    let a = client(1);
    let n = f.forwarded_to(&seg(a, TCP_SYN));
    for _ in 0..3 {
        assert_eq!(f.forwarded_to(&seg(a, TCP_SYN)), n, "retransmitted SYN");
    }
    assert_eq!(f.counter("embryo_new"), 1, "one embryo");
    let snap = f.dp().snapshot(None, &Default::default());
    assert_eq!(snap.services[0].stats.conns, 1, "one connection counted");
    // rr moved once: the next client gets the other server.
    let b = client(2);
    let m = f.forwarded_to(&seg(b, TCP_SYN));
    assert_ne!(m, n, "rr after one connection and three retransmissions");
    // No server schedulable: the embryos' retransmissions still reach theirs.
    let mut quiet = f.model.clone();
    for d in quiet.services.values_mut().flat_map(|s| s.dests.iter_mut()) {
        d.weight = 0;
    }
    f.set(quiet);
    assert_eq!(
        f.forwarded_to(&seg(a, TCP_SYN)),
        n,
        "an embryo's SYN at weight 0"
    );
    assert_eq!(
        f.forwarded_to(&seg(b, TCP_SYN)),
        m,
        "an embryo's SYN at weight 0"
    );
    let out = f.run(&seg(client(3), TCP_SYN));
    assert_eq!(
        out.action,
        lb_tests::xdp_run::XDP_DROP,
        "a new client at weight 0: {out:?}"
    );
    // And the handshakes complete where they started.
    assert_eq!(f.forwarded_to(&seg(a, TCP_ACK)), n);
    assert_eq!(f.forwarded_to(&seg(b, TCP_ACK)), m);
    assert_eq!(f.counter("embryo_promoted"), 2);
}

/// The embryonic table is an array of slots in buckets of `embryo::WAYS`, written with
/// plain stores: a full bucket gives its oldest embryo's slot to a new SYN (never an
/// established connection's entry, which is not there); an embryo idle past its timeout is
/// a miss before the sweep clears it; and a slot whose check word does not match what it
/// holds (torn by two writers, forged) is a miss, so no packet goes where it says.
#[test]
fn embryo_slots_collide_expire_and_refuse_torn_entries() {
    use aya::maps::{Array, Map, MapData};
    use lb_common::{EmbryoSlot, FlowKey, embryo};
    use lb_tests::xdp_run::XDP_PASS;

    let mut f = Fixture::with_table(web_rr(), 4096);
    let slots = f.dp().embryo_table_size();
    assert_eq!(slots, 1024, "a quarter of the connection table");
    // The key and bucket as the data path makes them (addresses and ports in network order).
    let key = |c: (Ipv4Addr, u16)| {
        FlowKey::new(
            u32::from_ne_bytes(c.0.octets()),
            u32::from_ne_bytes(VIP.octets()),
            c.1.to_be(),
            80u16.to_be(),
            lb_common::proto::TCP,
        )
    };
    let bucket = |c| embryo::bucket(embryo::hash(&key(c)), slots - 1);

    let est: Vec<_> = (0..200).map(client).collect();
    let mut server = HashMap::new();
    for &c in &est {
        let n = f.forwarded_to(&seg(c, TCP_SYN));
        assert_eq!(f.forwarded_to(&seg(c, TCP_ACK)), n);
        server.insert(c, n);
    }

    // A bucket's worth of newer SYNs after one: the oldest embryo gives way.
    let first = client(1000);
    let mates: Vec<_> = (1001..)
        .map(client)
        .filter(|&c| bucket(c) == bucket(first))
        .take(embryo::WAYS as usize)
        .collect();
    f.forwarded_to(&seg(first, TCP_SYN));
    let listed = f.dp().embryos();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].0, key(first), "the key as the test computes it");
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.dp().tick_clock().unwrap();
    let ns: Vec<u8> = mates
        .iter()
        .map(|&c| f.forwarded_to(&seg(c, TCP_SYN)))
        .collect();
    let out = f.run(&seg(first, TCP_ACK));
    assert_eq!(
        out.action, XDP_PASS,
        "the oldest embryo of a full bucket was replaced: {out:?}"
    );
    for (&c, &n) in mates.iter().zip(&ns) {
        assert_eq!(
            f.forwarded_to(&seg(c, TCP_ACK)),
            n,
            "a newer embryo completes"
        );
    }
    for &c in &est {
        assert_eq!(
            f.forwarded_to(&seg(c, TCP_ACK | TCP_PSH)),
            server[&c],
            "established {c:?}"
        );
    }
    assert_eq!(
        f.dp().embryos().len(),
        0,
        "promoted embryos leave their slots"
    );

    // A torn slot: another backend under the check word of this one.
    let z = client(6000);
    let nz = f.forwarded_to(&seg(z, TCP_SYN));
    let pin = f.dp().pin_dir().join("maps").join(lb_common::maps::EMBRYO);
    let mut arr: Array<MapData, EmbryoSlot> =
        Array::try_from(Map::Array(MapData::from_pin(&pin).expect("pinned"))).expect("array");
    let base = bucket(z);
    let (i, good) = (base..base + embryo::WAYS)
        .map(|i| (i, arr.get(&i, 0).expect("slot")))
        .find(|(_, s)| s.key == key(z))
        .expect("z's slot in its bucket");
    assert_eq!(good.check, embryo::check_of(&good.key, &good.conn));
    let mut torn = good;
    torn.conn.backend = good.conn.backend ^ 3;
    arr.set(i, torn, 0).expect("write");
    let out = f.run(&seg(z, TCP_ACK));
    assert_eq!(out.action, XDP_PASS, "a torn slot is a miss: {out:?}");
    assert_eq!(f.dp().embryos().len(), 0, "and is not listed or counted");
    assert_eq!(f.dp().sweep().expect("sweep").embryonic, 0);
    // The same slot with its own backend back: the check word alone made the difference.
    arr.set(i, good, 0).expect("write");
    assert_eq!(f.forwarded_to(&seg(z, TCP_ACK)), nz);

    // An expired embryo is a miss before any sweep, and the sweep then clears it.
    let y = client(7000);
    f.forwarded_to(&seg(y, TCP_SYN));
    let mut t = StateTimeouts::default();
    t.tcp[lb_common::tcp_state::SYN_RECV as usize] = 1;
    f.dp().set_timeouts(&t).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.dp().tick_clock().unwrap();
    let out = f.run(&seg(y, TCP_ACK));
    assert_eq!(out.action, XDP_PASS, "an expired embryo is a miss: {out:?}");
    let r = f.dp().sweep().expect("sweep");
    assert_eq!((r.embryonic, r.embryonic_expired), (1, 1), "{r:?}");
    let r = f.dp().sweep().expect("sweep");
    assert_eq!((r.embryonic, r.embryonic_expired), (0, 0), "cleared: {r:?}");
    assert_eq!(f.counter("embryo_promoted"), 200 + embryo::WAYS as u64 + 1);
}

/// NAT connections are embryonic too: the request entry and its reply entry start in the
/// embryonic table and move to the connection table together, so a flood of spoofed SYNs on
/// a NAT service cannot evict an established NAT connection either.
mod nat_embryos {
    use std::{collections::HashMap, net::Ipv4Addr};

    use lb_ctl::{
        dataplane::{Dataplane, Options, Paths, RsPath, StateTimeouts},
        model::{DestConfig, Forward, Model, Op, Protocol, Scheduler, ServiceConfig, ServiceKey},
    };
    use lb_tests::{
        packet::{Frame, TCP_ACK, TCP_PSH, TCP_SYN},
        routed::{CLIENT, CLIENT_MAC, INT_ADDR, Net, rs, rs_mac},
        xdp_run::{self, Outcome, XDP_ABORTED, XDP_REDIRECT},
    };

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);

    /// A balancer in a routed director namespace (`lb_tests::routed`) with one NAT service,
    /// rr over rs1 and rs2 on port 8080.
    struct Nat {
        net: Net,
        dp: Option<Dataplane>,
        _pins: lb_tests::PinDir,
    }

    impl Nat {
        fn new(table: u32) -> Nat {
            let pins = lb_tests::PinDir::new("ct-nat");
            let dp = Dataplane::open(Options {
                pin_dir: pins.path().to_path_buf(),
                conn_table_size: table,
                sched_table_size: 4096,
                mh_table_size: 251,
                persist_table_size: 4096,
                ..Options::default()
            })
            .expect("loading the balancer (root, bpffs)");
            let net = Net::new("ct-nat", &[], None);
            let mut model = Model::default();
            let key = ServiceKey {
                proto: Protocol::Tcp,
                addr: VIP.into(),
                port: 80,
            };
            model
                .apply(&Op::AddService(ServiceConfig::new(key, Scheduler::Rr)))
                .unwrap();
            let mut paths = Paths::new();
            for n in 1..=2 {
                model
                    .apply(&Op::AddDest(
                        key,
                        DestConfig::new(rs(n), 8080, Forward::Nat, 1),
                    ))
                    .unwrap();
                paths.insert(
                    rs(n).into(),
                    RsPath {
                        ifindex: net.int,
                        next_hop: rs(n).into(),
                        smac: net.int_mac,
                        dmac: Some(rs_mac(n)),
                        tun_src: INT_ADDR.into(),
                        mtu: 1500,
                    },
                );
            }
            let mut f = Nat {
                net,
                dp: Some(dp),
                _pins: pins,
            };
            f.dp().sync(&model, &paths).expect("sync");
            f
        }

        fn dp(&mut self) -> &mut Dataplane {
            self.dp.as_mut().expect("open")
        }

        fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> Outcome {
            let prog = self.dp.as_ref().expect("open").program().expect("program");
            let out = self
                .net
                .ns
                .enter(|| xdp_run::run_xdp(prog, frame, 1, ifindex))
                .expect("BPF_PROG_TEST_RUN");
            assert_ne!(out.action, XDP_ABORTED, "aborted on {frame:02x?}");
            out
        }

        /// A client's segment: the real server (1 or 2) it was DNATed to.
        fn request(&mut self, src: Ipv4Addr, sport: u16, flags: u8) -> u8 {
            let frame =
                Frame::tcp(src, sport, VIP, 80, flags, b"").eth(self.net.ext_mac, CLIENT_MAC);
            let ext = self.net.ext;
            let out = self.run_on(ext, &frame);
            assert_eq!(
                out.action, XDP_REDIRECT,
                "{src}:{sport} flags {flags:#x}: {out:?}"
            );
            let dst = Ipv4Addr::new(out.data[30], out.data[31], out.data[32], out.data[33]);
            assert_eq!(&out.data[36..38], &8080u16.to_be_bytes(), "DNAT port");
            (1..=2)
                .find(|n| rs(*n) == dst)
                .unwrap_or_else(|| panic!("{src}:{sport} DNATed to {dst}"))
        }

        /// Real server `n`'s segment to a client, as it leaves the director.
        fn reply(&mut self, n: u8, dst: Ipv4Addr, dport: u16, flags: u8) -> Outcome {
            let frame =
                Frame::tcp(rs(n), 8080, dst, dport, flags, b"").eth(self.net.int_mac, rs_mac(n));
            let int = self.net.int;
            self.run_on(int, &frame)
        }

        /// Asserts real server `n`'s reply to `CLIENT:port` is SNATed back to the VIP.
        fn reply_snated(&mut self, n: u8, port: u16, flags: u8, what: &str) {
            let out = self.reply(n, CLIENT, port, flags);
            assert_eq!(out.action, XDP_REDIRECT, "{what}: {out:?}");
            assert_eq!(&out.data[26..30], &VIP.octets(), "{what}: SNAT source");
            assert_eq!(&out.data[34..36], &80u16.to_be_bytes(), "{what}: SNAT port");
        }

        fn counter(&mut self, name: &str) -> u64 {
            self.dp()
                .counters()
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no counter {name}"))
                .1
        }

        /// `-Lnc`'s states, counted.
        fn states(&mut self) -> HashMap<String, usize> {
            let mut m = HashMap::new();
            for c in self.dp().conns(&StateTimeouts::default()) {
                *m.entry(c.state).or_default() += 1;
            }
            m
        }

        /// (ActiveConn, InActConn) summed over the real servers, as `-Ln` shows them.
        fn counts(&mut self) -> (u32, u32) {
            let snap = self.dp().snapshot(None, &Default::default());
            snap.services[0]
                .dests
                .iter()
                .fold((0, 0), |a, d| (a.0 + d.active_conns, a.1 + d.inact_conns))
        }
    }

    impl Drop for Nat {
        fn drop(&mut self) {
            // Before `_pins` removes the pins.
            if let Some(dp) = self.dp.take() {
                let _ = dp.shutdown(false);
            }
        }
    }

    /// Opens a NAT connection from `CLIENT:port`: SYN, the real server's SYN-ACK, the client's
    /// ACK. Returns its real server.
    fn handshake(f: &mut Nat, port: u16) -> u8 {
        let n = f.request(CLIENT, port, TCP_SYN);
        f.reply_snated(n, port, TCP_SYN | TCP_ACK, "SYN-ACK");
        assert_eq!(f.request(CLIENT, port, TCP_ACK), n, "ACK of {port}");
        n
    }

    /// A NAT connection waits in the embryonic table with its reply entry (the real server's
    /// SYN-ACK is SNATed from there), is listed and counted once, moves with the client's ACK,
    /// and embryos that never complete expire with their reply entries, counts exact.
    #[test]
    fn nat_embryos_are_listed_counted_promoted_and_expired_exactly() {
        const EMB: u16 = 300;
        let mut f = Nat::new(65536);
        // 300 embryos, every third answered by its real server (still SYN_RECV).
        let mut of = HashMap::new();
        for i in 0..EMB {
            let port = 20000 + i;
            let n = f.request(CLIENT, port, TCP_SYN);
            if i % 3 == 0 {
                f.reply_snated(n, port, TCP_SYN | TCP_ACK, "SYN-ACK of an embryo");
            }
            of.insert(port, n);
        }
        assert_eq!(f.counter("embryo_new"), EMB as u64);
        assert_eq!(f.counter("nat_reply_clash"), 0);
        let r = f.dp().sweep().expect("sweep");
        assert_eq!(
            (r.entries, r.embryonic, r.expired),
            (0, 2 * EMB as usize, 0),
            "request and reply entries of every embryo in the embryonic table: {r:?}"
        );
        assert_eq!(
            f.states(),
            HashMap::from([("SYN_RECV".to_string(), EMB as usize)])
        );
        assert_eq!(
            f.counts(),
            (EMB as u32, 0),
            "SYN_RECV counts as ActiveConn (IPVS)"
        );

        // One established connection besides, and 100 of the embryos complete.
        let est = handshake(&mut f, 40000);
        for i in 0..100 {
            let port = 20000 + i;
            assert_eq!(f.request(CLIENT, port, TCP_ACK), of[&port]);
        }
        assert_eq!(f.counter("embryo_promoted"), 101);
        let r = f.dp().sweep().expect("sweep");
        assert_eq!(
            (r.entries, r.embryonic),
            (2 * 101, 2 * (EMB as usize - 100)),
            "both entries of a connection moved together: {r:?}"
        );
        assert_eq!(f.counts(), (101 + EMB as u32 - 100, 0));
        // Promoted replies are SNATed from the connection table.
        for i in (0..100).step_by(7) {
            let port = 20000 + i;
            f.reply_snated(of[&port], port, TCP_ACK, "reply of a promoted connection");
        }
        f.reply_snated(est, 40000, TCP_ACK, "reply of the established connection");

        // SYN_RECV times out after 1 s: the 200 embryos go, reply entries with them.
        let mut t = StateTimeouts::default();
        t.tcp[lb_common::tcp_state::SYN_RECV as usize] = 1;
        f.dp().set_timeouts(&t).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // Keep the 101 established ones fresh.
        f.dp().tick_clock().unwrap();
        let r = f.dp().sweep().expect("sweep");
        assert_eq!(
            r.embryonic_expired,
            EMB as usize - 100,
            "embryos expired (each with its reply entry): {r:?}"
        );
        let r = f.dp().sweep().expect("sweep");
        assert_eq!((r.entries, r.embryonic), (2 * 101, 0), "{r:?}");
        assert_eq!(f.counts(), (101, 0));
        assert_eq!(
            f.states(),
            HashMap::from([("ESTABLISHED".to_string(), 101)])
        );
        // An expired embryo's late ACK finds nothing (the stack answers it, as IPVS would).
        let before = f.counter("pass_no_conn");
        let frame = Frame::tcp(CLIENT, 20299, VIP, 80, TCP_ACK, b"").eth(f.net.ext_mac, CLIENT_MAC);
        let ext = f.net.ext;
        let out = f.run_on(ext, &frame);
        assert_eq!(out.action, xdp_run::XDP_PASS, "{out:?}");
        assert_eq!(f.counter("pass_no_conn"), before + 1);
    }

    /// issue 9 for NAT: a 64K table, 10,000 established NAT connections, then 1M SYNs from
    /// distinct spoofed sources (every 16th answered by its real server): every established
    /// connection still goes to its real server both ways, and a new client is served.
    #[test]
    fn syn_flood_ten_times_the_table_costs_no_established_nat_connection() {
        const TABLE: u32 = 65536;
        const ESTABLISHED: u16 = 10_000;
        const FLOOD: u32 = 1_000_000;
        let mut f = Nat::new(TABLE);
        let port = |i: u16| 10000 + i;
        let backend: Vec<u8> = (0..ESTABLISHED)
            .map(|i| handshake(&mut f, port(i)))
            .collect();
        assert_eq!(f.counter("embryo_promoted"), ESTABLISHED as u64);

        let before_clash = f.counter("nat_reply_clash");
        // In the namespace once for the whole flood (entering it costs more than a run).
        let prog = f.dp.as_ref().expect("open").program().expect("program");
        let (ext, int, ext_mac, int_mac) = (f.net.ext, f.net.int, f.net.ext_mac, f.net.int_mac);
        f.net.ns.enter(|| {
            for j in 0..FLOOD {
                let src = Ipv4Addr::from(0xc612_0000 | (j & 0x1_ffff));
                let sport = 1024 + (j >> 17) as u16;
                let syn = Frame::tcp(src, sport, VIP, 80, TCP_SYN, b"").eth(ext_mac, CLIENT_MAC);
                let out = xdp_run::run_xdp(prog, &syn, 1, ext).expect("BPF_PROG_TEST_RUN");
                assert_eq!(
                    out.action, XDP_REDIRECT,
                    "spoofed SYN {j} ({src}:{sport}): {out:?}"
                );
                if j % 16 == 0 {
                    // Its SYN-ACK is SNATed, then finds no route to the spoofed source.
                    let n = out.data[33] - 10;
                    let synack = Frame::tcp(rs(n), 8080, src, sport, TCP_SYN | TCP_ACK, b"")
                        .eth(int_mac, rs_mac(n));
                    let out = xdp_run::run_xdp(prog, &synack, 1, int).expect("BPF_PROG_TEST_RUN");
                    assert!(
                        out.action != XDP_REDIRECT && out.action != XDP_ABORTED,
                        "a reply to {src} has no way out: {out:?}"
                    );
                }
            }
        });
        assert_eq!(
            f.counter("embryo_new"),
            ESTABLISHED as u64 + FLOOD as u64,
            "every SYN opened an embryonic connection"
        );
        assert_eq!(f.counter("nat_reply_clash"), before_clash);

        let mut lost = Vec::new();
        for (i, n) in backend.iter().enumerate() {
            let p = port(i as u16);
            let frame = Frame::tcp(CLIENT, p, VIP, 80, TCP_ACK | TCP_PSH, b"")
                .eth(f.net.ext_mac, CLIENT_MAC);
            let ext = f.net.ext;
            let out = f.run_on(ext, &frame);
            let to = out
                .data
                .get(30..34)
                .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            if out.action != XDP_REDIRECT || to != Some(rs(*n)) {
                lost.push((p, *n, out.action, "request"));
                continue;
            }
            let out = f.reply(*n, CLIENT, p, TCP_ACK | TCP_PSH);
            if out.action != XDP_REDIRECT || out.data[26..30] != VIP.octets() {
                lost.push((p, *n, out.action, "reply"));
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {ESTABLISHED} established NAT connections lost to the flood, first: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );

        // A new legitimate client is still served, both ways.
        let n = handshake(&mut f, 40000);
        f.reply_snated(n, 40000, TCP_ACK | TCP_PSH, "the new client's data");
        let r = f.dp().sweep().expect("sweep");
        assert_eq!(
            r.entries,
            2 * (ESTABLISHED as usize + 1),
            "the connection table holds the established ones and the new client, each with \
             its reply entry ({r:?})"
        );
        let embryo_size = f.dp().embryo_table_size() as usize;
        assert!(
            r.embryonic > 0 && r.embryonic <= embryo_size,
            "the flood stays within the embryonic table ({r:?}, size {embryo_size})"
        );
        // ActiveConn: the established ones, the new client and the flood's embryos that are
        // left (SYN_RECV is active, as in IPVS), each listed once.
        let states = f.states();
        let syn_recv = states.get("SYN_RECV").copied().unwrap_or(0);
        assert_eq!(states.get("ESTABLISHED"), Some(&(ESTABLISHED as usize + 1)));
        assert_eq!(
            f.counts(),
            (ESTABLISHED as u32 + 1 + syn_recv as u32, 0),
            "ActiveConn/InActConn over both servers ({states:?})"
        );
    }
}
