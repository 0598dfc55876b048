//! Filler entries in the large connection and template tables (`lb_common::filler`), through
//! `BPF_PROG_TEST_RUN` on the balancer the daemon loads: present from the start, never counted,
//! listed or matched by a packet, put back by the sweep while the table is sparse and not
//! while it is dense, kept by a restarted daemon. Root only.

mod common;

use std::{collections::HashMap, net::Ipv4Addr};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use common::*;
use lb_common::{Conn, FlowKey, PersistKey, PersistVal, filler, maps, tcp_state};
use lb_ctl::model::{Netmask, Persistence, Protocol, Scheduler};
use lb_tests::{
    packet::{Frame, TCP_ACK, TCP_FIN, TCP_SYN},
    xdp_run::XDP_PASS,
};

const CONNS: u32 = 1 << 20;
const PERSIST: u32 = 1 << 18;

fn open(f: &Fixture, name: &str) -> MapData {
    let path = f.bal.pins().join("maps").join(name);
    MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn conns(f: &Fixture) -> BpfHashMap<MapData, FlowKey, Conn> {
    BpfHashMap::try_from(Map::LruHashMap(open(f, maps::CONNS))).expect("an LRU hash")
}

fn templates(f: &Fixture) -> BpfHashMap<MapData, PersistKey, PersistVal> {
    BpfHashMap::try_from(Map::LruHashMap(open(f, maps::PERSIST))).expect("an LRU hash")
}

/// The fillers in each table, read raw from user space (index → value).
fn raw_fillers(f: &Fixture) -> (HashMap<u32, Conn>, HashMap<u32, PersistVal>) {
    let c = conns(f)
        .iter()
        .map(Result::unwrap)
        .filter_map(|(k, v)| filler::conn_index(&k).map(|i| (i, v)))
        .collect();
    let t = templates(f)
        .iter()
        .map(Result::unwrap)
        .filter_map(|(k, v)| filler::persist_index(&k).map(|i| (i, v)))
        .collect();
    (c, t)
}

fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1),
        20000 + i as u16,
    )
}

fn seg(c: (Ipv4Addr, u16), port: u16, flags: u8) -> Vec<u8> {
    Frame::tcp(c.0, c.1, VIP, port, flags, b"").eth(DIRECTOR_MAC, ROUTER_MAC)
}

/// (active, inactive) per real server number and service port, as `-Ln` shows them.
fn counts(f: &mut Fixture) -> HashMap<(u16, u8), (u32, u32)> {
    let snap = f.dp().snapshot(None, &Default::default());
    snap.services
        .iter()
        .flat_map(|s| {
            s.dests.iter().map(|d| {
                let std::net::IpAddr::V4(a) = d.config.addr else {
                    panic!("an IPv6 real server {}", d.config.addr)
                };
                (
                    (d.config.port, a.octets()[3] - 10),
                    (d.active_conns, d.inact_conns),
                )
            })
        })
        .filter(|(_, c)| *c != (0, 0))
        .collect()
}

#[test]
fn fillers_are_kept_out_of_every_count_and_listing_and_put_back_while_sparse() {
    // Port 80 plain rr, port 443 persistent (a template per client).
    let mut persistent = service(Protocol::Tcp, 443, Scheduler::Rr, &[(1, 1), (2, 1)]);
    persistent.0.persistence = Some(Persistence {
        timeout: 300,
        netmask: Netmask::V4(Ipv4Addr::BROADCAST),
    });
    let m = model(&[
        service(Protocol::Tcp, 80, Scheduler::Rr, &[(1, 1), (2, 1)]),
        persistent,
    ]);
    let mut f = Fixture::with_tables(m, CONNS, PERSIST);
    let (want_c, want_t) = (filler::count(CONNS), filler::count(PERSIST));
    assert_eq!((want_c, want_t), (256, 64));

    // 1. A fresh data path starts with every filler in both tables.
    let (c, t) = raw_fillers(&f);
    assert_eq!(
        (c.len(), t.len()),
        (want_c as usize, want_t as usize),
        "fillers at start"
    );
    assert!(c.values().all(|v| *v == filler::CONN), "{c:?}");
    assert!(t.values().all(|v| *v == filler::PERSIST), "{t:?}");

    // 2. Known connections: 30 established on :80, 10 of them closed (FIN: inactive),
    //    20 established on :443 with a template each.
    const EST: u32 = 30;
    const FIN: u32 = 10;
    const PERS: u32 = 20;
    let mut want: HashMap<(u16, u8), (u32, u32)> = HashMap::new();
    for i in 0..EST + PERS {
        let port = if i < EST { 80 } else { 443 };
        let c = client(i);
        let n = f.forwarded_to(&seg(c, port, TCP_SYN));
        assert_eq!(f.forwarded_to(&seg(c, port, TCP_ACK)), n, "flow {i}");
        let e = want.entry((port, n)).or_default();
        if i < FIN {
            assert_eq!(f.forwarded_to(&seg(c, port, TCP_FIN | TCP_ACK)), n);
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    let r = f.dp().sweep().expect("sweep");
    assert_eq!(
        (r.entries, r.expired, r.templates, r.templates_expired),
        ((EST + PERS) as usize, 0, PERS as usize, 0),
        "fillers are not connections or templates: {r:?}"
    );
    assert_eq!(
        (r.fillers, r.template_fillers, r.fillers_added),
        (want_c as usize, want_t as usize, 0),
        "{r:?}"
    );
    assert_eq!(counts(&mut f), want, "ActiveConn/InActConn after a sweep");

    // 3. `-Lnc` lists the connections and templates, no filler.
    let listed = f.dp().conns(&Default::default());
    let tcp = listed.iter().filter(|c| c.proto == "TCP").count();
    let ip = listed.iter().filter(|c| c.proto == "IP").count();
    assert_eq!(
        (tcp, ip, listed.len()),
        (
            (EST + PERS) as usize,
            PERS as usize,
            (EST + 2 * PERS) as usize
        ),
        "{listed:?}"
    );

    // 4. A packet as near a filler's key as a packet gets (its addresses, protocol 0, ports
    //    0) is not matched by one, nor is a TCP segment to the VIP from that address: the
    //    fillers stay as they were (a match would have stamped its last activity).
    let like = Frame::raw(Ipv4Addr::BROADCAST, Ipv4Addr::UNSPECIFIED, 0, vec![0; 20])
        .eth(DIRECTOR_MAC, ROUTER_MAC);
    let out = f.run(&like);
    assert_eq!(
        out.action, XDP_PASS,
        "protocol 0 goes to the stack: {out:?}"
    );
    let spoofed =
        Frame::tcp(Ipv4Addr::BROADCAST, 0, VIP, 80, TCP_ACK, b"").eth(DIRECTOR_MAC, ROUTER_MAC);
    f.run(&spoofed);
    let (c, t) = raw_fillers(&f);
    assert_eq!(c.len(), want_c as usize);
    assert!(
        c.values().all(|v| *v == filler::CONN) && t.values().all(|v| *v == filler::PERSIST),
        "a packet touched a filler: {c:?} {t:?}"
    );

    // 5. Fillers deleted by hand come back with the next pass (the table is sparse), and
    //    the counts do not move.
    let mut table = conns(&f);
    for i in (0..want_c).step_by(3) {
        table
            .remove(&filler::conn_key(i))
            .expect("deleting a filler");
    }
    let mut tt = templates(&f);
    for i in 0..want_t / 2 {
        tt.remove(&filler::persist_key(i))
            .expect("deleting a filler");
    }
    let gone = want_c.div_ceil(3) + want_t / 2;
    let r = f.dp().sweep().expect("sweep");
    assert_eq!(
        (r.fillers, r.template_fillers, r.fillers_added),
        (
            (want_c - want_c.div_ceil(3)) as usize,
            (want_t / 2) as usize,
            gone as usize
        ),
        "{r:?}"
    );
    assert_eq!(
        (r.entries, r.templates),
        ((EST + PERS) as usize, PERS as usize)
    );
    let (c, t) = raw_fillers(&f);
    assert_eq!((c.len(), t.len()), (want_c as usize, want_t as usize));
    let r = f.dp().sweep().expect("sweep");
    assert_eq!((r.fillers, r.fillers_added), (want_c as usize, 0), "{r:?}");
    assert_eq!(
        counts(&mut f),
        want,
        "ActiveConn/InActConn after the fillers came back"
    );

    // 6. A dense table gets none back: past half a CPU's share of the table (size / 2 /
    //    possible CPUs) an insert could evict a live entry. Established connections from user
    //    space up to that line, then fillers deleted.
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
    let dense = CONNS / (2 * cpus);
    let est = {
        // The value of an established connection, from the table.
        conns(&f)
            .iter()
            .map(Result::unwrap)
            .find(|(k, v)| !filler::is_conn(k) && v.state == tcp_state::ESTABLISHED)
            .expect("an established connection")
            .1
    };
    // Client `i`'s connection, from 198.18.0.0/15, the benchmarking range.
    let bench_client = |i: u32| {
        FlowKey::new(
            u32::from_ne_bytes(Ipv4Addr::from(0xc612_0000 | (i & 0x1_ffff)).octets()),
            u32::from_ne_bytes(VIP.octets()),
            (1024 + (i >> 17) as u16).to_be(),
            80u16.to_be(),
            lb_common::proto::TCP,
        )
    };
    for i in 0..dense {
        table.insert(bench_client(i), est, 0).expect("filling");
    }
    for i in 0..10 {
        table
            .remove(&filler::conn_key(i))
            .expect("deleting a filler");
    }
    let r = f.dp().sweep().expect("sweep");
    assert!(
        r.entries >= dense as usize && r.fillers == (want_c - 10) as usize,
        "{r:?}"
    );
    assert_eq!(r.fillers_added, 0, "fillers added to a dense table: {r:?}");
    // Sparse again: they come back.
    for i in 0..dense {
        table.remove(&bench_client(i)).expect("emptying");
    }
    let r = f.dp().sweep().expect("sweep");
    assert_eq!(
        (r.entries, r.fillers, r.fillers_added),
        ((EST + PERS) as usize, (want_c - 10) as usize, 10),
        "{r:?}"
    );
    assert_eq!(counts(&mut f), want, "counts after the dense spell");

    // 7. A restarted daemon adopts the table with its fillers, and counts as before.
    drop((table, tt));
    f.bal.reopen_keeping();
    let r = f.dp().sweep().expect("sweep");
    assert_eq!(
        (
            r.entries,
            r.templates,
            r.fillers,
            r.template_fillers,
            r.fillers_added
        ),
        (
            (EST + PERS) as usize,
            PERS as usize,
            want_c as usize,
            want_t as usize,
            0
        ),
        "after a restart: {r:?}"
    );
    assert_eq!(counts(&mut f), want, "counts after a restart");
    // And the connections still go where they went.
    for i in FIN..EST {
        let c = client(i);
        let n = f.forwarded_to(&seg(c, 80, TCP_ACK));
        assert!(want.contains_key(&(80, n)), "flow {i} went to rs{n}");
    }
}
