//! The connection table under load, through `BPF_PROG_TEST_RUN` on the balancer the daemon
//! loads: expiry in bounded steps with exact counts, and a flood of spoofed SYNs many times the
//! table's size that costs no established connection. Root only.

mod common;

use std::{collections::HashMap, net::Ipv4Addr};

use common::*;
use lb_ctl::{
    api::Timeouts,
    dataplane::{SWEEP_CHUNK, StateTimeouts},
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
            let n = d.config.addr.octets()[3] - 10;
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
    // The tables were read in chunks, the walk resuming where the last one stopped.
    let min_batches = (EST + FIN).div_ceil(SWEEP_CHUNK) + EMB.div_ceil(SWEEP_CHUNK);
    assert!(r.conn_batches >= min_batches as usize, "{r:?}");
    assert_eq!(counts(&mut f), want, "counts after the first sweep ({r:?})");

    // FIN_WAIT times out after 1 s: the 3,000 closed connections go, in runs of at most
    // `SWEEP_KEYS` keys each, and nothing else does.
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
        (r.expired, r.embryonic_expired, r.keys_checked, r.key_runs),
        (
            FIN as usize,
            0,
            FIN as usize,
            FIN.div_ceil(per_run) as usize
        ),
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
