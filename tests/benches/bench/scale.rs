//! Scale: the connection table at 1M, 4M and 16M entries, and the control plane with a large
//! table.
//!
//! Connection table: its memory as the kernel accounts it (fdinfo `memlock`), and the cost of
//! an established DR packet's lookup, empty and full: one flow repeated (cache hot: what the
//! table's occupancy alone costs), and many flows one per call (cold, as on a busy director:
//! a full table's buckets hold chains to walk). The table is filled from user space with
//! distinct established connections; an ACK that gets `XDP_TX` proves its lookup hit (an ACK
//! without an entry is passed to the stack).
//!
//! Expiry: the sweep's longest single system call (the bound is 1 ms), with the sweeping thread
//! pinned to one CPU and each call marked by whether an interrupt or softirq landed on that CPU
//! while it ran (this kernel charges their time to the interrupted thread), and expiry's CPU
//! per second at the daemon's pace: a full table with nothing expiring, every entry expiring,
//! one entry alone (with the daemon's fillers, `lb_common::filler`, and without them, when a
//! read goes through every empty bucket), one entry per 4,096 buckets, and 1% full. `LB_BENCH_CONN_SIZES`
//! (in M, comma-separated, default `1,4,16`) picks the table sizes; `LB_BENCH_CONN_ONLY=1`
//! measures the connection tables alone (no SYN flood, no control plane).
//!
//! Control plane: the real daemon in a namespace given 1,000 services × 100 real servers from
//! TOML, then the same file with one weight changed, one `lb-ctl -a`, and one weight change on
//! a Maglev service (a 65,537-slot table rebuilt and written) beside one on a wlc service (no
//! table). Each CLI figure is the wall time of the whole `lb-ctl` run, as an operator sees it.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::Xdp,
};
use lb_common::{Conn, FlowKey, maps, size};
use lb_ctl::{
    dataplane::{Dataplane, Options, Paths, RsPath},
    model::{
        DestConfig, Forward, Model, Op, Protocol, SchedFlags, Scheduler, ServiceConfig, ServiceKey,
    },
    sched::{self, Member},
};
use lb_tests::{
    Daemon, Netns, TempDir,
    packet::{Frame, TCP_ACK, TCP_SYN},
    xdp_run::{self, XDP_TX},
};

use crate::report::Report;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const RS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const RS_MAC: [u8; 6] = [2, 0, 0, 0, 0x10, 1];

const CONN_SIZES: [u32; 3] = [1 << 20, 1 << 22, 1 << 24];

/// The table sizes to measure: `CONN_SIZES`, or `LB_BENCH_CONN_SIZES`.
fn conn_sizes() -> Vec<u32> {
    match std::env::var("LB_BENCH_CONN_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|m| {
                m.trim().parse::<u32>().unwrap_or_else(|e| {
                    panic!("LB_BENCH_CONN_SIZES: {m:?} is not a number of M entries: {e}")
                }) << 20
            })
            .collect(),
        Err(_) => CONN_SIZES.to_vec(),
    }
}
const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
/// Established flows looked up one per call, each in turn: unlike one flow repeated, each
/// finds its bucket and entry cold in the cache, as on a busy director.
const SPREAD: usize = 50_000;
/// The fill must leave the table at least this full (the LRU evicts a few entries at a time
/// once a CPU's list has no free one left).
const FULL_ENOUGH: f64 = 0.999;

const SERVICES: usize = 1000;
const SERVERS: usize = 100;
/// `-a`, `-e` and reload repetitions (medians are reported).
const CLI_ROUNDS: usize = 20;
const EDIT_ROUNDS: usize = 9;
const RELOAD_ROUNDS: usize = 3;

pub fn run(report: &mut Report) {
    let started = Instant::now();
    let ns = Netns::new("scale");
    ns.ip(&[
        "link", "add", "ext", "type", "veth", "peer", "name", "ext-peer",
    ]);
    ns.ip(&["addr", "add", "198.51.100.2/24", "dev", "ext"]);
    for i in ["ext", "ext-peer"] {
        ns.ip(&["link", "set", i, "up"]);
    }
    for entries in conn_sizes() {
        conn_table(report, &ns, entries);
    }
    if std::env::var_os("LB_BENCH_CONN_ONLY").is_some() {
        return;
    }
    flood(report, &ns, CONN_SIZES[0]);
    drop(ns);
    control_plane(report);
    println!("  ({:.0} s)", started.elapsed().as_secs_f64());
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// "1M", "4M".
fn label(entries: u32) -> String {
    format!("{}M", entries >> 20)
}

/// The connection table, typed, through its pin (the `Dataplane` keeps its own handle private).
fn conns_map(pin_dir: &Path) -> HashMap<MapData, FlowKey, Conn> {
    let pin = pin_dir.join("maps").join(maps::CONNS);
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    HashMap::try_from(Map::from_map_data(data).expect("a known map type"))
        .expect("LB_CONNS maps FlowKey to Conn")
}

/// The key the data path files a client's flow to `VIP:80` under (addresses and ports in
/// network order).
fn flow_key(client: Ipv4Addr, sport: u16) -> FlowKey {
    FlowKey::new(
        u32::from_ne_bytes(client.octets()),
        u32::from_ne_bytes(VIP.octets()),
        sport.to_be(),
        80u16.to_be(),
        lb_common::proto::TCP,
    )
}

/// The `i`th filler connection's client: from the benchmarking range 198.18.0.0/15 (at most
/// 4,096 addresses for 4M fillers), ports 20000..21023 (apart from the flood's, `spoofed`).
fn filler(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(0xc612_0000 + (i >> 10)),
        20_000 + (i & 1023) as u16,
    )
}

fn packet(client: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    Frame::tcp(client, sport, VIP, 80, flags, b"").eth([2, 0, 0, 0, 0, 2], CLIENT_MAC)
}

fn pin_to_cpu(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; sched_setaffinity
    // reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning a thread to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Writes `n` distinct established connections (copies of `conn`) from user space, one
/// thread per CPU. The table keeps one LRU list per CPU (`BPF_F_NO_COMMON_LRU`) and an insert
/// takes a free entry from the inserting CPU's list, so one thread alone would fill only its
/// CPU's share and then evict its own entries.
fn fill(pin_dir: &Path, n: u32, conn: Conn) -> Duration {
    let cpus = aya::util::online_cpus().expect("online CPUs");
    let started = Instant::now();
    std::thread::scope(|s| {
        for (t, &cpu) in cpus.iter().enumerate() {
            let step = cpus.len();
            s.spawn(move || {
                pin_to_cpu(cpu);
                let mut map = conns_map(pin_dir);
                for i in (t as u32..n).step_by(step) {
                    let (client, sport) = filler(i);
                    map.insert(flow_key(client, sport), conn, 0)
                        .unwrap_or_else(|e| panic!("filling the connection table: {e}"));
                }
            });
        }
    });
    started.elapsed()
}

/// The balancer loaded with its own pins and a connection table of `entries`, one DR service
/// (VIP:80 → RS) reached through `ns`'s `ext`; and `ext`'s ifindex (the ingress of every run).
fn director(ns: &Netns, pins: &lb_tests::PinDir, entries: u32) -> (Dataplane, u32) {
    let ext: u32 = ns
        .run(&["cat", "/sys/class/net/ext/ifindex"])
        .trim()
        .parse()
        .unwrap();
    let ext_mac: Vec<u8> = ns
        .run(&["cat", "/sys/class/net/ext/address"])
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let mut dp = Dataplane::open(Options {
        pin_dir: pins.path().to_path_buf(),
        conn_table_size: entries,
        ..Options::default()
    })
    .expect("loading the balancer");
    let key = ServiceKey {
        proto: Protocol::Tcp,
        addr: VIP.into(),
        port: 80,
    };
    let mut model = Model::default();
    model
        .apply(&Op::AddService(ServiceConfig::new(key, Scheduler::Rr)))
        .unwrap();
    model
        .apply(&Op::AddDest(key, DestConfig::new(RS, 80, Forward::Dr, 1)))
        .unwrap();
    let mut paths = Paths::new();
    paths.insert(
        RS.into(),
        RsPath {
            ifindex: ext,
            next_hop: RS.into(),
            smac: ext_mac.try_into().unwrap(),
            dmac: Some(RS_MAC),
            tun_src: Ipv4Addr::UNSPECIFIED.into(),
            mtu: 1500,
        },
    );
    dp.sync(&model, &paths).expect("sync");
    (dp, ext)
}

/// Memory, fill and lookup cost of a connection table of `entries`.
fn conn_table(report: &mut Report, ns: &Netns, entries: u32) {
    let l = label(entries);
    println!("  connection table of {l} entries");
    let pins = lb_tests::PinDir::new(&format!("scale-{l}"));
    let (mut dp, ext) = director(ns, &pins, entries);
    let conns_memory = |dp: &Dataplane| {
        let all = dp.map_memory().expect("reading the maps' memory");
        all.iter().find(|(n, _)| *n == maps::CONNS).unwrap().1
    };
    let mut all = dp.map_memory().expect("reading the maps' memory");
    let all_empty: u64 = all.iter().map(|(_, b)| b).sum();
    all.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    let others: Vec<String> = all
        .iter()
        .filter(|(n, _)| *n != maps::CONNS)
        .take(3)
        .map(|(n, b)| format!("{n} {:.1}", mib(*b)))
        .collect();
    let others = others.join(", ") + " MiB";
    let conns_empty = conns_memory(&dp);

    // The balancer program, borrowed from `dp` anew around the sweep (which needs `&mut dp`).
    fn lb(dp: &Dataplane) -> &Xdp {
        dp.program().expect("the balancer program")
    }
    // One run per call of each frame in turn (ns/packet averaged over them), or `repeat` runs
    // of one frame; every packet must be forwarded.
    let run = |prog: &Xdp, frames: &[Vec<u8>], repeat: u32| -> f64 {
        ns.enter(|| {
            let mut total = 0u64;
            for f in frames {
                let out = xdp_run::run_xdp(prog, f, repeat, ext).expect("BPF_PROG_TEST_RUN");
                assert_eq!(
                    out.action, XDP_TX,
                    "{l}: a DR packet of an established flow was not forwarded ({out:?}): its \
                     connection entry is missing"
                );
                total += u64::from(out.duration_ns);
            }
            total as f64 / frames.len() as f64
        })
    };
    let ack = packet(CLIENT, 40000, TCP_ACK);
    let open_flow = |prog: &Xdp| {
        run(prog, &[packet(CLIENT, 40000, TCP_SYN)], 1);
        run(prog, std::slice::from_ref(&ack), 1);
    };
    open_flow(lb(&dp));
    if entries == CONN_SIZES[0] {
        fixed_cost_row(report, &dp);
    }
    let mut map = conns_map(pins.path());
    // The daemon's fillers (`lb_common::filler`) aside: they are not connections.
    let entries_now: Vec<(FlowKey, Conn)> = map
        .iter()
        .map(Result::unwrap)
        .filter(|(k, _)| !lb_common::filler::is_conn(k))
        .collect();
    assert_eq!(
        entries_now.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [flow_key(CLIENT, 40000)],
        "{l}: after a SYN and an ACK the table should hold exactly that flow"
    );
    let established = entries_now[0].1;
    let repeated = |prog: &Xdp| {
        let v: Vec<f64> = (0..ROUNDS)
            .map(|_| run(prog, std::slice::from_ref(&ack), REPEAT))
            .collect();
        median(&v)
    };
    let empty_repeat = repeated(lb(&dp));
    // `SPREAD` filler connections picked all over the index range (a multiplicative hash is
    // a permutation of it), first with only them in the table, later among all the others.
    let spread_clients: Vec<(Ipv4Addr, u16)> = (0..SPREAD as u32)
        .map(|i| filler(i.wrapping_mul(2_654_435_761) % entries))
        .collect();
    let spread_keys: Vec<FlowKey> = spread_clients
        .iter()
        .map(|&(c, p)| flow_key(c, p))
        .collect();
    let insert_missing = |map: &mut HashMap<MapData, FlowKey, Conn>| {
        for k in &spread_keys {
            if map.get(k, 0).is_err() {
                map.insert(k, established, 0)
                    .expect("inserting a connection");
            }
        }
    };
    insert_missing(&mut map);
    let spread: Vec<Vec<u8>> = spread_clients
        .iter()
        .map(|&(c, p)| packet(c, p, TCP_ACK))
        .collect();
    let spread_rounds = |prog: &Xdp| {
        let v: Vec<f64> = (0..3).map(|_| run(prog, &spread, 1)).collect();
        median(&v)
    };
    let alone_spread = spread_rounds(lb(&dp));

    print!("    filling {entries} entries from user space… ");
    let took = fill(pins.path(), entries, established);
    println!("{:.1} s", took.as_secs_f64());
    // The last inserts on each CPU evicted a few entries: bring back any measured one.
    if map.get(&flow_key(CLIENT, 40000), 0).is_err() {
        open_flow(lb(&dp));
    }
    insert_missing(&mut map);
    let sweep = attributed(&dp, false);
    assert!(
        sweep.expired == 0 && sweep.entries as f64 >= entries as f64 * FULL_ENOUGH,
        "{l}: the table should be full after the fill, but the sweep counted {} of {entries} \
         entries (expired {})",
        sweep.entries,
        sweep.expired
    );
    sweep_rows(report, &l, "table full, nothing expires", &sweep);
    paced_row(
        report,
        &l,
        "table full, nothing expires",
        &attributed(&dp, true),
    );
    if entries <= CONN_SIZES[1] {
        chunking_row(report, &l, &dp);
    }
    let full_repeat = repeated(lb(&dp));
    let full_spread = spread_rounds(lb(&dp));
    let conns_full = conns_memory(&dp);

    let per_cpu = entries as f64 / aya::util::online_cpus().unwrap().len() as f64;
    report.scale(
        &format!("LB_CONNS {l}: memory (kernel memlock)"),
        mib(conns_empty),
        "MiB",
        &format!(
            "{:.0} B/entry; {}",
            conns_empty as f64 / entries as f64,
            if conns_full == conns_empty {
                "the same when full (preallocated)".to_string()
            } else {
                format!("{:.1} MiB when full", mib(conns_full))
            }
        ),
    );
    report.scale(
        &format!("all balancer maps, LB_CONNS {l}: memory"),
        mib(all_empty),
        "MiB",
        &format!("sum of every pinned map's memlock; next largest: {others}"),
    );
    report.scale(
        &format!("LB_CONNS {l}: fill from user space"),
        took.as_secs_f64(),
        "s",
        &format!(
            "a thread per CPU, one BPF_MAP_UPDATE_ELEM per entry: {:.0} ns each; {} entries after",
            took.as_nanos() as f64 / per_cpu,
            sweep.entries
        ),
    );
    report.scale(
        &format!("LB_CONNS {l}: DR established, one flow repeated, table empty"),
        empty_repeat,
        "ns/pkt",
        &format!("median of {ROUNDS} × {REPEAT} repeats; cache hot"),
    );
    report.scale(
        &format!("LB_CONNS {l}: DR established, one flow repeated, table full"),
        full_repeat,
        "ns/pkt",
        &format!("{:.2}x empty", full_repeat / empty_repeat),
    );
    report.scale(
        &format!("LB_CONNS {l}: DR established, {SPREAD} flows, table holds only them"),
        alone_spread,
        "ns/pkt",
        &format!("one run per call, each flow in turn; median of 3 × {SPREAD}"),
    );
    report.scale(
        &format!("LB_CONNS {l}: DR established, {SPREAD} flows, table full"),
        full_spread,
        "ns/pkt",
        &format!("{:.2}x holding only them", full_spread / alone_spread),
    );
    // Expiry of the whole table at once, at the daemon's pace: every entry is an ESTABLISHED
    // connection, and with a 1 s timeout they all go in one pass.
    let expire_all = |dp: &mut Dataplane| {
        let mut t = lb_ctl::dataplane::StateTimeouts::default();
        t.tcp[lb_common::tcp_state::ESTABLISHED as usize] = 1;
        dp.set_timeouts(&t).expect("timeouts");
        std::thread::sleep(Duration::from_millis(1100));
        dp.tick_clock().expect("clock");
    };
    expire_all(&mut dp);
    let sweep = attributed(&dp, true);
    assert!(
        sweep.expired as f64 >= entries as f64 * FULL_ENOUGH,
        "{l}: every entry should have expired: {sweep:?}"
    );
    sweep_rows(report, &l, "table full, every entry expires", &sweep);
    paced_row(report, &l, "table full, every entry expires", &sweep);

    // Sparse: the table's buckets stay (as many as its size), most of them empty. A batch read
    // goes through empty buckets until it has entries to return, so with one entry alone one
    // read goes through (on average) half the bucket array, however small the chunk asked,
    // unless the table keeps its fillers (one per 4,096 buckets): the fill evicted them, and the
    // pass that expired everything put them back (the daemon's sweep does the same).
    let fillers = lb_common::filler::count(entries) as usize;
    assert_eq!(
        (sweep.fillers_added, sweep.fillers),
        (fillers, 0),
        "{l}: the pass that emptied the table should have put its fillers back: {sweep:?}"
    );
    dp.set_timeouts(&lb_ctl::dataplane::StateTimeouts::default())
        .expect("timeouts");
    dp.tick_clock().expect("clock");
    let mut map = conns_map(pins.path());
    map.insert(flow_key(CLIENT, 40000), established, 0)
        .expect("inserting a connection");
    let sweep = attributed(&dp, false);
    assert_eq!(
        (sweep.entries, sweep.expired, sweep.fillers),
        (1, 0, fillers),
        "{l}: one connection and the fillers: {sweep:?}"
    );
    sweep_rows(report, &l, "one entry alone, with fillers", &sweep);
    // The same without them (as before they were kept), in the same run: deleted by hand, so
    // this pass's reads go through the empty buckets; it puts them back at its end.
    for i in 0..fillers as u32 {
        map.remove(&lb_common::filler::conn_key(i))
            .expect("deleting a filler");
    }
    let sweep = attributed(&dp, false);
    assert_eq!(
        (sweep.entries, sweep.fillers, sweep.fillers_added),
        (1, 0, fillers),
        "{l}: one connection, no fillers until the pass's end: {sweep:?}"
    );
    sweep_rows(
        report,
        &l,
        "one entry alone, no fillers (as before)",
        &sweep,
    );
    // The same with one entry to every 4,096 buckets: what a few thousand entries spread by
    // the table's hash (a keep-alive set the sweep could hold) would bound a read to.
    let spread = entries / 4096;
    fill(pins.path(), spread, established);
    let sweep = attributed(&dp, false);
    assert!(
        sweep.expired == 0 && sweep.entries >= spread as usize && sweep.fillers == fillers,
        "{l}: {spread} connections (and the one before), the fillers: {sweep:?}"
    );
    sweep_rows(
        report,
        &l,
        "one entry per 4,096 buckets, with fillers",
        &sweep,
    );
    let sparse = entries / 100;
    fill(pins.path(), sparse, established);
    let sweep = attributed(&dp, true);
    assert!(
        sweep.expired == 0 && sweep.entries >= sparse as usize && sweep.fillers == fillers,
        "{l}: {sparse} connections (and the one before), the fillers: {sweep:?}"
    );
    sweep_rows(report, &l, "1% full with fillers, nothing expires", &sweep);
    paced_row(report, &l, "1% full with fillers, nothing expires", &sweep);
    drop((map, dp, pins));
}

/// One sweep pass (at the daemon's pace if `paced`) on this thread pinned to the last CPU, each
/// call marked by whether an interrupt or softirq landed on that CPU while it ran.
fn attributed(dp: &Dataplane, paced: bool) -> lb_ctl::dataplane::SweepReport {
    use lb_ctl::dataplane::{Pace, SWEEP_CPU_SHARE, SWEEP_RATE};
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let cpu = *aya::util::online_cpus()
        .expect("online CPUs")
        .last()
        .unwrap();
    let mut sweeper = dp.sweeper().expect("a sweeper");
    sweeper.attribute_interrupts(true);
    pinned(cpu, || {
        let (stop, walked) = (AtomicBool::new(false), AtomicU64::new(0));
        let pace = paced.then(|| Pace::new(SWEEP_RATE, SWEEP_CPU_SHARE, &stop, &walked));
        sweeper.pass(pace.as_ref()).expect("a sweep pass")
    })
}

/// Runs `f` with this thread pinned to `cpu`, then gives it back the CPUs it had.
fn pinned<T>(cpu: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: a zeroed cpu_set_t is an empty set for sched_getaffinity to fill.
    let mut had: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `had` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut had) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    pin_to_cpu(cpu);
    let r = f();
    // SAFETY: as above, the set read before.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &had) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    r
}

/// The CPU a pass costs with its table reads sized by their measured cost (as the daemon
/// does) beside a fixed `SWEEP_CHUNK` (as before), alternately in the same run, unpaced, on a
/// full table with nothing expiring; medians of three.
fn chunking_row(report: &mut Report, l: &str, dp: &Dataplane) {
    let chunk = lb_ctl::dataplane::SWEEP_CHUNK;
    let mut sweeper = dp.sweeper().expect("a sweeper");
    let (mut adaptive, mut fixed, mut longest) = (Vec::new(), Vec::new(), [Duration::ZERO; 2]);
    for _ in 0..3 {
        for (i, n) in [None, Some(chunk)].into_iter().enumerate() {
            sweeper.fix_table_reads(n);
            let r = sweeper.pass(None).expect("sweep");
            [&mut adaptive, &mut fixed][i].push(r.cpu.as_secs_f64() * 1e3);
            longest[i] = longest[i].max(r.longest_call);
        }
    }
    sweeper.fix_table_reads(None);
    report.scale(
        &format!("expiry {l}, table full, nothing expires: CPU per pass, reads sized by cost"),
        median(&adaptive),
        "ms",
        &format!(
            "fixed {chunk}-entry reads (as before): {:.0} ms, {:.2}x; longest call {:.0} µs              sized, {:.0} µs fixed (unpaced, alternating, median of 3 each)",
            median(&fixed),
            median(&adaptive) / median(&fixed),
            longest[0].as_secs_f64() * 1e6,
            longest[1].as_secs_f64() * 1e6,
        ),
    );
}

/// The figures of one sweep pass: its longest single system call (each is bounded), the
/// longest `lb_sweep` run the kernel reports, and the pass's CPU time, which is expiry's CPU
/// time per second (the daemon sweeps every second).
fn sweep_rows(report: &mut Report, l: &str, what: &str, s: &lb_ctl::dataplane::SweepReport) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    report.scale(
        &format!("expiry {l}, {what}: longest single call"),
        us(s.longest_call),
        "µs",
        &format!(
            "CPU time across each of {} calls, 99th/99.9th percentile {:.0}/{:.0} µs (wall: \
             {:.0} µs): batch reads of {}–{} entries (longest {:.0} µs, at most {} buckets \
             gone through in one, {:.0} ns an entry learnt), \
             batch writes (longest {:.0} µs), \
             lb_sweep runs of at most {} keys (longest in the kernel {:.0} µs over {} runs); \
             before: one run of the whole table",
            s.calls,
            us(s.p99_call),
            us(s.p999_call),
            us(s.longest_call_wall),
            s.smallest_read,
            s.largest_read,
            us(s.longest_read),
            s.most_buckets_read,
            s.read_cost.as_nanos(),
            us(s.longest_write),
            s.largest_key_run,
            us(s.longest_run),
            s.runs
        ),
    );
    if s.attributed {
        report.scale(
            &format!("expiry {l}, {what}: longest call with nothing landing in it"),
            us(s.longest_quiet_call),
            "µs",
            &format!(
                "a {}; sweeping thread pinned to one CPU: {} of {} calls had an interrupt or \
                 softirq land on it (/proc/interrupts, /proc/softirqs), the longest of those \
                 {:.0} µs with {} landing in it",
                s.longest_quiet_kind,
                s.noisy_calls,
                s.calls,
                us(s.longest_noisy_call),
                s.longest_noisy_irqs
            ),
        );
        slow_row(report, l, what, s);
    }
    report.scale(
        &format!(
            "expiry {l}, {what}: CPU per pass, {}",
            if s.paced { "paced" } else { "unpaced" }
        ),
        s.cpu.as_secs_f64() * 1e3,
        "ms",
        &format!(
            "user + kernel time of the sweeping thread ({:.0} ms of it in user space); {:.0} ms \
             wall; {} entries, {} expired; {} fillers found, {} put back",
            s.cpu_user.as_secs_f64() * 1e3,
            s.wall.as_secs_f64() * 1e3,
            s.entries,
            s.expired,
            s.fillers,
            s.fillers_added
        ),
    );
}

/// Every call of 1 ms or more of a pass, with what landed in it (a call's own work, or not).
fn slow_row(report: &mut Report, l: &str, what: &str, s: &lb_ctl::dataplane::SweepReport) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    // The twelve longest, longest first.
    let mut calls = s.slow_calls.clone();
    calls.sort_by_key(|c| std::cmp::Reverse(c.took));
    let slow: Vec<String> = calls
        .iter()
        .take(12)
        .map(|c| {
            format!(
                "{} {:.0} µs (wall {:.0}): {} irqs ({} timer ticks), {} steal ticks{}",
                c.kind,
                us(c.took),
                us(c.wall),
                c.irqs,
                c.timer_ticks,
                c.steal_ticks,
                if c.moved { ", changed CPU" } else { "" }
            )
        })
        .collect();
    report.scale(
        &format!("expiry {l}, {what}: calls of 1 ms or more"),
        s.slow_calls.len() as f64,
        "calls",
        &format!(
            "{} calls had steal time land in them; {}",
            s.stolen_calls,
            if slow.is_empty() {
                "none".to_string()
            } else {
                slow.join("; ")
            }
        ),
    );
}

/// What a pass costs apart from the entries it walks, with one connection in the table:
/// over the backend ids in use (as the sweep does now), and over every one of the
/// `size::MAX_BACKENDS` slots of the per-backend arrays (as it did: each read or written
/// element by element in the kernel), alternately in the same run; medians of five.
fn fixed_cost_row(report: &mut Report, dp: &Dataplane) {
    let mut sweeper = dp.sweeper().expect("a sweeper");
    let bound = sweeper.bound();
    let used = bound.load(std::sync::atomic::Ordering::Relaxed);
    let (mut now, mut all) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (b, v) in [(used, &mut now), (size::MAX_BACKENDS, &mut all)] {
            bound.store(b, std::sync::atomic::Ordering::Relaxed);
            let r = sweeper.pass(None).expect("sweep");
            assert_eq!(r.entries, 1, "one connection: {r:?}");
            v.push(r.cpu.as_secs_f64() * 1e3);
        }
    }
    report.scale(
        "expiry, one connection in the table: CPU per pass",
        median(&now),
        "ms",
        &format!(
            "over the {used} backend ids in use; over all {} slots (as before): {:.1} ms \
             (median of 5 each, alternating)",
            size::MAX_BACKENDS,
            median(&all)
        ),
    );
}

/// Expiry's CPU time per second at the pace the daemon's sweep thread keeps (`SWEEP_RATE`
/// entries a second, at most `SWEEP_CPU_SHARE` of a CPU): pass `s`'s CPU over the time until
/// the next pass may start (`SWEEP_PERIOD` at least).
fn paced_row(report: &mut Report, l: &str, what: &str, s: &lb_ctl::dataplane::SweepReport) {
    if s.attributed {
        slow_row(report, l, &format!("{what}, paced"), s);
    }
    use lb_ctl::dataplane::SWEEP_PERIOD;
    let period = s.wall.max(SWEEP_PERIOD);
    report.scale(
        &format!("expiry {l}, {what}, paced as the daemon sweeps: CPU per second"),
        s.cpu.as_secs_f64() / period.as_secs_f64() * 1e3,
        "ms/s",
        &format!(
            "{:.0} ms CPU over a {:.0} ms pass (slept {:.0} ms), a pass every {:.1} s; longest \
             call {:.0} µs ({:.0} µs with nothing landing in it), 99.9th percentile {:.0} µs",
            s.cpu.as_secs_f64() * 1e3,
            s.wall.as_secs_f64() * 1e3,
            s.slept.as_secs_f64() * 1e3,
            period.as_secs_f64(),
            s.longest_call.as_secs_f64() * 1e6,
            s.longest_quiet_call.as_secs_f64() * 1e6,
            s.p999_call.as_secs_f64() * 1e6,
        ),
    );
}

/// A spoofed SYN from the benchmarking range 198.18.0.0/15, the `j`th of a flood.
fn spoofed(j: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(0xc612_0000 | (j & 0x1_ffff)),
        1024 + (j >> 17) as u16,
    )
}

/// A flood of spoofed SYNs ten times the table's size, one per `BPF_PROG_TEST_RUN` call,
/// against a table half full of established connections: how many of those it costs, and
/// whether legitimate clients, one handshake among every `LEGIT_EVERY` SYNs with `RTT_SYNS`
/// flood SYNs between its SYN and its ACK, are still served.
fn flood(report: &mut Report, ns: &Netns, entries: u32) {
    const LEGIT_EVERY: u32 = 1000;
    const RTT_SYNS: u32 = 500;
    let l = label(entries);
    println!(
        "  SYN flood of {}M against a {l} table",
        (entries * 10) >> 20
    );
    let pins = lb_tests::PinDir::new(&format!("flood-{l}"));
    let (mut dp, ext) = director(ns, &pins, entries);
    let established = entries / 2;
    // The fill's connections: ESTABLISHED, seen now.
    let conn = Conn {
        backend: {
            let prog = dp.program().expect("program");
            ns.enter(|| {
                xdp_run::run_xdp(prog, &packet(CLIENT, 40000, TCP_SYN), 1, ext).unwrap();
                xdp_run::run_xdp(prog, &packet(CLIENT, 40000, TCP_ACK), 1, ext).unwrap();
            });
            conns_map(pins.path())
                .get(&flow_key(CLIENT, 40000), 0)
                .expect("the handshake's entry")
                .backend
        },
        state: lb_common::tcp_state::ESTABLISHED,
        ..Conn::default()
    };
    fill(pins.path(), established, conn);
    let before = dp.sweep().expect("sweep");
    let flood = entries * 10;
    let (mut legit, mut served, mut kernel_ns) = (0u32, 0u32, 0u64);
    let mut waiting: Vec<(u32, Vec<u8>)> = Vec::new();
    let started = Instant::now();
    let prog = dp.program().expect("program");
    ns.enter(|| {
        for j in 0..flood {
            let (src, sport) = spoofed(j);
            let syn =
                Frame::tcp(src, sport, VIP, 80, TCP_SYN, b"").eth([2, 0, 0, 0, 0, 2], CLIENT_MAC);
            let out = xdp_run::run_xdp(prog, &syn, 1, ext).expect("run");
            assert_eq!(out.action, XDP_TX, "spoofed SYN {j}: {out:?}");
            kernel_ns += u64::from(out.duration_ns);
            if j % LEGIT_EVERY == 0 {
                let c = (
                    Ipv4Addr::new(203, 0, 113, (legit % 250) as u8 + 1),
                    1024 + (legit / 250) as u16,
                );
                legit += 1;
                let syn =
                    Frame::tcp(c.0, c.1, VIP, 80, TCP_SYN, b"").eth([2, 0, 0, 0, 0, 2], CLIENT_MAC);
                let out = xdp_run::run_xdp(prog, &syn, 1, ext).expect("run");
                assert_eq!(out.action, XDP_TX, "legitimate SYN: {out:?}");
                let ack =
                    Frame::tcp(c.0, c.1, VIP, 80, TCP_ACK, b"").eth([2, 0, 0, 0, 0, 2], CLIENT_MAC);
                waiting.push((j + RTT_SYNS, ack));
            }
            while waiting.first().is_some_and(|(due, _)| *due <= j) {
                let (_, ack) = waiting.remove(0);
                let out = xdp_run::run_xdp(prog, &ack, 1, ext).expect("run");
                served += (out.action == XDP_TX) as u32;
            }
        }
    });
    let wall = started.elapsed();
    let after = dp.sweep().expect("sweep");
    // Every established connection still there and still on its server.
    let map = conns_map(pins.path());
    let lost = (0..established)
        .filter(|&i| {
            let (c, p) = filler(i);
            map.get(&flow_key(c, p), 0)
                .map_or(true, |v| v.backend != conn.backend)
        })
        .count();
    report.scale(
        &format!(
            "SYN flood {l}: ESTABLISHED lost to {}M spoofed SYNs",
            flood >> 20
        ),
        lost as f64,
        "conns",
        &format!(
            "of {established} established (table half full); embryonic table {} entries, \
             {} after; connection table {} → {} entries",
            dp.embryo_table_size(),
            after.embryonic,
            before.entries,
            after.entries
        ),
    );
    report.scale(
        &format!("SYN flood {l}: legitimate handshakes completed"),
        served as f64 / legit.max(1) as f64 * 100.0,
        "%",
        &format!(
            "{served} of {legit}, one per {LEGIT_EVERY} spoofed SYNs, {RTT_SYNS} flood SYNs \
             between each SYN and its ACK"
        ),
    );
    let per_syn = kernel_ns as f64 / flood as f64;
    // One table for all CPUs (an array of slots, the oldest of a bucket giving way).
    let share = dp.embryo_table_size() as f64;
    report.scale(
        &format!("SYN flood {l}: a spoofed SYN, kernel time"),
        per_syn,
        "ns",
        &format!(
            "{:.1} M SYN/s per CPU at most; at that rate an embryo lives about {:.0} ms in the \
             table ({share:.0} slots): a client whose ACK comes sooner is served ({:.0} s wall)",
            1e3 / per_syn,
            share * per_syn / 1e6,
            wall.as_secs_f64()
        ),
    );
    drop((map, dp, pins));
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn rip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (j + 1) as u8)
}

/// The large config: `SERVICES` services of `SERVERS` DR real servers each, all wlc (ipvsadm's
/// default) but the first, which is mh; the second service's first real server has
/// `weight`.
fn big_config(weight: u32) -> String {
    let mut s = String::new();
    for i in 0..SERVICES {
        let _ = writeln!(s, "[[service]]\naddress = \"{}\"\nport = 80", vip(i));
        if i == 0 {
            s.push_str("scheduler = \"mh\"\n");
        }
        for j in 0..SERVERS {
            let w = if i == 1 && j == 0 { weight } else { 1 };
            let _ = writeln!(
                s,
                "  [[service.real_server]]\n  address = \"{}\"\n  weight = {w}",
                rip(j)
            );
        }
    }
    s
}

/// (services, real servers) in a `-Ln` listing.
fn count_listing(text: &str) -> (usize, usize) {
    let services = text.lines().filter(|l| l.starts_with("TCP ")).count();
    let dests = text
        .lines()
        .filter(|l| l.starts_with("  -> ") && !l.contains("RemoteAddress"))
        .count();
    (services, dests)
}

/// The weight `-Ln -t service` shows for `rs`.
fn weight_of(d: &Daemon, service: &str, rs: &str) -> u32 {
    let text = d.ctl_ok(&["-Ln", "-t", service]);
    text.lines()
        .find(|l| l.starts_with(&format!("  -> {rs} ")))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no weight for {rs} in `-Ln -t {service}`:\n{text}"))
}

/// Wall time of one `lb-ctl` run.
fn timed(d: &Daemon, args: &[&str]) -> f64 {
    let t = Instant::now();
    d.ctl_ok(args);
    t.elapsed().as_secs_f64()
}

/// The daemon and CLI (the binary `lb_tests::lb_ctl()` names) with `SERVICES` × `SERVERS`
/// loaded: applying it, reloading it, `-a`, and `-e` with and without a table to rebuild.
fn control_plane(report: &mut Report) {
    println!("  control plane: {SERVICES} services × {SERVERS} real servers");
    let lb_ctl = lb_tests::lb_ctl();
    let debug = lb_ctl.components().any(|c| c.as_os_str() == "debug");
    if debug {
        println!(
            "    note: {} is a debug build; `cargo xtask bench` measures a release one",
            lb_ctl.display()
        );
    }
    let build = if debug { "debug lb-ctl; " } else { "" };
    let ns = Netns::new("scale-cp");
    ns.ip(&["link", "add", "lb0", "type", "veth", "peer", "name", "lb1"]);
    ns.ip(&["addr", "add", "192.0.2.254/24", "dev", "lb0"]);
    for i in ["lb0", "lb1"] {
        ns.ip(&["link", "set", i, "up"]);
    }
    // Every real server (and the one `-a` adds) has a static MAC: the daemon finds each at
    // once instead of waiting for ARP.
    let dir = TempDir::new("scale");
    let batch = dir.join("neigh.batch");
    let mut neigh = String::new();
    for j in 0..=SERVERS {
        let _ = writeln!(
            neigh,
            "neigh add {} lladdr 02:00:00:00:20:{:02x} dev lb0 nud permanent",
            rip(j),
            j
        );
    }
    std::fs::write(&batch, neigh).unwrap();
    ns.ip(&["-batch", batch.to_str().unwrap()]);
    // The daemon starts with an empty file and the big one is applied by `lb-ctl reload`: the
    // same load, check, resolve and sync as a start with it, timed to the CLI's answer, and
    // bounded by the CLI's 60 s wait rather than the harness's 20 s for a starting daemon.
    let config = dir.join("lb.toml");
    std::fs::write(&config, "# no services yet\n").unwrap();
    let d = Daemon::start(&ns, &["lb0"], Some(&config));

    // (a) The whole table from TOML.
    print!("    applying {SERVICES} × {SERVERS} from TOML… ");
    std::fs::write(&config, big_config(1)).unwrap();
    let apply = timed(&d, &["reload"]);
    println!("{apply:.2} s");
    let t = Instant::now();
    let listing = d.ctl_ok(&["-Ln"]);
    let list = t.elapsed().as_secs_f64();
    assert_eq!(
        count_listing(&listing),
        (SERVICES, SERVICES * SERVERS),
        "the daemon should list every service and real server of the config"
    );

    // (b) Reload with one weight changed (the diff path), back and forth.
    let mut reloads = Vec::new();
    for r in 0..RELOAD_ROUNDS {
        let w = if r % 2 == 0 { 2 } else { 1 };
        std::fs::write(&config, big_config(w)).unwrap();
        reloads.push(timed(&d, &["reload"]));
        assert_eq!(weight_of(&d, "198.18.0.2:80", "192.0.2.1:80"), w, "reload");
    }
    println!("    reload: {:.2} s", median(&reloads));

    // (c) One real server added (and deleted again, untimed).
    let (svc, new_rs) = (vip(1).to_string() + ":80", rip(SERVERS).to_string() + ":80");
    let mut adds = Vec::new();
    for _ in 0..CLI_ROUNDS {
        adds.push(timed(
            &d,
            &["-a", "-t", &svc, "-r", &new_rs, "-g", "-w", "1"],
        ));
        assert_eq!(weight_of(&d, &svc, &new_rs), 1, "-a");
        d.ctl_ok(&["-d", "-t", &svc, "-r", &new_rs]);
    }
    println!("    -a: {:.1} ms", median(&adds) * 1e3);
    // The CLI's floor: a process, a round trip on the socket, one service listed.
    let floors: Vec<f64> = (0..CLI_ROUNDS)
        .map(|_| timed(&d, &["-Ln", "-t", &svc]))
        .collect();

    // (d) A weight change on the mh service (its Maglev table rebuilt and written anew) and
    // on a wlc one (no table: only the real server's entry is written).
    let edit = |service: usize| -> f64 {
        let (svc, rs) = (vip(service).to_string() + ":80", rip(2).to_string() + ":80");
        let times: Vec<f64> = (0..EDIT_ROUNDS)
            .map(|r| {
                let w = (2 + r % 2).to_string();
                let t = timed(&d, &["-e", "-t", &svc, "-r", &rs, "-g", "-w", &w]);
                assert_eq!(weight_of(&d, &svc, &rs).to_string(), w, "-e");
                t
            })
            .collect();
        median(&times)
    };
    let edit_mh = edit(0);
    let edit_wlc = edit(1);
    println!(
        "    -e: mh {:.1} ms, wlc {:.1} ms",
        edit_mh * 1e3,
        edit_wlc * 1e3
    );
    drop(d);
    drop(ns);

    // The Maglev build alone, in this process.
    let members: Vec<Member> = (0..SERVERS)
        .map(|j| Member {
            id: j as u32 + 1,
            addr: rip(j),
            port: 80,
            weight: 1 + u32::from(j == 2),
            active: 0,
            inactive: 0,
            overloaded: false,
        })
        .collect();
    let builds: Vec<f64> = (0..EDIT_ROUNDS)
        .map(|_| {
            let t = Instant::now();
            let table = sched::table(
                Scheduler::Mh,
                SchedFlags::default(),
                &members,
                size::DEFAULT_MH_TABLE,
            )
            .expect("mh table");
            assert!(table.iter().all(|&id| id != 0), "every Maglev slot filled");
            t.elapsed().as_secs_f64()
        })
        .collect();

    let n = SERVICES * SERVERS;
    report.scale(
        &format!("apply {SERVICES} services × {SERVERS} real servers from TOML"),
        apply,
        "s",
        &format!("{build}lb-ctl reload into an empty daemon"),
    );
    report.scale(
        &format!("one -Ln of {n} real servers"),
        list * 1e3,
        "ms",
        build,
    );
    report.scale(
        "lb-ctl reload, one weight changed",
        median(&reloads),
        "s",
        &format!("{build}median of {RELOAD_ROUNDS}"),
    );
    report.scale(
        "one lb-ctl -a on the loaded table",
        median(&adds) * 1e3,
        "ms",
        &format!("{build}a new real server; median of {CLI_ROUNDS}"),
    );
    report.scale(
        "one lb-ctl -Ln -t (one service)",
        median(&floors) * 1e3,
        "ms",
        &format!("{build}the CLI's floor; median of {CLI_ROUNDS}"),
    );
    report.scale(
        &format!("one lb-ctl -e, mh service of {SERVERS} (Maglev rebuild)"),
        edit_mh * 1e3,
        "ms",
        &format!(
            "{build}{} slots written; median of {EDIT_ROUNDS}",
            size::DEFAULT_MH_TABLE as usize + SERVERS
        ),
    );
    report.scale(
        &format!("one lb-ctl -e, wlc service of {SERVERS} (no table)"),
        edit_wlc * 1e3,
        "ms",
        &format!("{build}median of {EDIT_ROUNDS}"),
    );
    report.scale(
        &format!(
            "Maglev table build, {SERVERS} servers, {} slots",
            size::DEFAULT_MH_TABLE
        ),
        median(&builds) * 1e3,
        "ms",
        "sched::table in this process, no map writes",
    );
}
