//! Per-packet cost of each data path with `BPF_PROG_TEST_RUN`, beside the MAC-swap floor,
//! measured in the same run (root only). `cargo xtask bench` runs it.

use std::{net::Ipv4Addr, time::Instant};

use aya::{Ebpf, programs::Xdp};
use lb_ctl::{
    dataplane::{Dataplane, Options, PASS_OBJ, Path_, Paths},
    model::{DestConfig, Forward, Model, Op, Protocol, Scheduler, ServiceConfig, ServiceKey},
    testrun::{self, XDP_TX},
};
use lb_tests::packet::{Frame, TCP_ACK, TCP_SYN};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;

struct Result {
    name: &'static str,
    ns: Vec<f64>,
}

impl Result {
    fn median(&self) -> f64 {
        let mut v = self.ns.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    fn spread(&self) -> (f64, f64) {
        let min = self.ns.iter().copied().fold(f64::MAX, f64::min);
        let max = self.ns.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
}

/// Runs `frame` `REPEAT` times; the kernel's ns/packet.
fn round(prog: &impl std::os::fd::AsRawFd, frame: &[u8], expect: u32) -> f64 {
    let out = testrun::run_xdp(prog, frame, REPEAT, 0).expect("BPF_PROG_TEST_RUN");
    assert_eq!(out.action, expect, "unexpected verdict {out:?}");
    f64::from(out.duration_ns)
}

fn main() {
    lb_tests::require_root();
    let started = Instant::now();

    let mut refs = Ebpf::load(PASS_OBJ).expect("loading the reference programs");
    let swap: &mut Xdp = refs
        .program_mut(lb_common::progs::MACSWAP)
        .expect("lb_macswap")
        .try_into()
        .unwrap();
    swap.load().unwrap();
    let swap_fd = {
        use std::os::fd::AsFd;
        swap.fd().unwrap().as_fd().try_clone_to_owned().unwrap()
    };

    let pin_dir = lb_tests::pin_root().join("bench");
    let mut dp = Dataplane::open(Options {
        pin_dir: pin_dir.clone(),
        ..Options::default()
    })
    .expect("loading the balancer");
    let key = ServiceKey {
        proto: Protocol::Tcp,
        addr: VIP,
        port: 80,
    };
    let mut model = Model::default();
    model
        .apply(&Op::AddService(ServiceConfig {
            key,
            scheduler: Scheduler::Rr,
            sched_flags: Default::default(),
            persistence: None,
            ops: false,
        }))
        .unwrap();
    let mut paths = Paths::new();
    for n in 11..=12u8 {
        let addr = Ipv4Addr::new(192, 0, 2, n);
        model
            .apply(&Op::AddDest(
                key,
                DestConfig {
                    addr,
                    port: 80,
                    forward: Forward::Dr,
                    weight: 1,
                    u_threshold: 0,
                    l_threshold: 0,
                },
            ))
            .unwrap();
        paths.insert(
            addr,
            Path_ {
                ifindex: 1,
                smac: MAC_A,
                dmac: Some([2, 0, 0, 0, 1, n]),
            },
        );
    }
    dp.sync(&model, &paths).expect("sync");
    let lb_fd = dp.program_fd().unwrap().try_clone_to_owned().unwrap();

    let syn = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_SYN, b"").eth(MAC_A, MAC_B);
    let ack = Frame::tcp(CLIENT, 40000, VIP, 80, TCP_ACK, b"").eth(MAC_A, MAC_B);
    let other =
        Frame::tcp(CLIENT, 40000, Ipv4Addr::new(192, 0, 2, 2), 22, TCP_ACK, b"").eth(MAC_A, MAC_B);
    // Create the flow once; every measured packet then finds it.
    assert_eq!(testrun::run_xdp(&lb_fd, &syn, 1, 0).unwrap().action, XDP_TX);

    // Interleave the rounds so drift on this shared machine hits every path alike.
    let mut results = vec![
        Result {
            name: "MAC-swap XDP_TX (floor)",
            ns: vec![],
        },
        Result {
            name: "DR, established flow",
            ns: vec![],
        },
        Result {
            name: "non-VIP packet (XDP_PASS)",
            ns: vec![],
        },
    ];
    for _ in 0..ROUNDS {
        results[0].ns.push(round(&swap_fd, &ack, XDP_TX));
        results[1].ns.push(round(&lb_fd, &ack, XDP_TX));
        results[2].ns.push(round(&lb_fd, &other, testrun::XDP_PASS));
    }
    drop(lb_fd);
    let _ = dp.shutdown(false);
    let _ = std::fs::remove_dir_all(&pin_dir);
    let _ = std::fs::remove_dir(lb_tests::pin_root());

    let floor = results[0].median();
    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} repeats x {ROUNDS} rounds per path, kernel-measured ns/packet"
    );
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>9}",
        "path", "median", "min", "max", "x floor"
    );
    for r in &results {
        let (min, max) = r.spread();
        println!(
            "{:<30} {:>8.1} {:>8.1} {:>8.1} {:>8.2}x",
            r.name,
            r.median(),
            min,
            max,
            r.median() / floor
        );
    }
    println!("({:.1} s)", started.elapsed().as_secs_f64());
}
