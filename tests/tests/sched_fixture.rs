//! The data path's schedulers against `lb_ctl::sched::Model`, the reference model of IPVS's:
//! the same flows, the same connection counts, the same picks. Plus persistence templates
//! and the bounds where the XDP version differs from IPVS. `BPF_PROG_TEST_RUN`, root only.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use lb_ctl::{
    model::{
        DestConfig, Forward, Model, Op, Persistence, Protocol, SchedFlags, Scheduler,
        ServiceConfig, ServiceKey,
    },
    sched,
};
use lb_tests::{
    packet::{Frame, TCP_ACK, TCP_RST, TCP_SYN},
    xdp_run::{XDP_DROP, XDP_TX},
};

/// xorshift64*: deterministic, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 100 + i)
}

fn key(i: u8) -> ServiceKey {
    ServiceKey {
        proto: Protocol::Tcp,
        addr: vip(i).into(),
        port: 80,
    }
}

/// One real server: (number, weight, `-x`, `-y`).
type Rs = (u8, u32, u32, u32);

fn svc_model(
    vips: u8,
    sched: Scheduler,
    flags: u32,
    persistence: Option<Persistence>,
    dests: &[Rs],
) -> Model {
    let mut m = Model::default();
    for i in 0..vips {
        let cfg = ServiceConfig {
            key: key(i),
            scheduler: sched,
            sched_flags: SchedFlags(flags),
            persistence,
            ops: false,
            tunnel_source: None,
        };
        m.apply(&Op::AddService(cfg)).unwrap();
        for &(n, weight, x, y) in dests {
            let d = DestConfig {
                addr: rs(n).into(),
                port: 80,
                forward: Forward::Dr,
                weight,
                u_threshold: x,
                l_threshold: y,
            };
            m.apply(&Op::AddDest(cfg.key, d)).unwrap();
        }
    }
    m
}

fn syn(client: SocketAddrV4, dst: Ipv4Addr) -> Vec<u8> {
    Frame::tcp(*client.ip(), client.port(), dst, 80, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC)
}

fn segment(client: SocketAddrV4, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
    Frame::tcp(*client.ip(), client.port(), dst, 80, flags, b"").eth(DIRECTOR_MAC, ROUTER_MAC)
}

/// Completes the handshake, then resets: CLOSE (a RST in SYN_RECV leaves the state alone,
/// as in IPVS).
fn close(f: &mut Fixture, client: SocketAddrV4, dst: Ipv4Addr) {
    f.forwarded_to(&segment(client, dst, TCP_ACK));
    f.forwarded_to(&segment(client, dst, TCP_RST | TCP_ACK));
}

/// The real server number of a backend id, from the data path's member list.
fn rs_number(members: &[sched::Member], id: u32) -> u8 {
    let m = members.iter().find(|m| m.id == id).expect("a member");
    m.addr.octets()[3] - 10
}

/// Runs `steps` random steps against `vips` services with `sched`/`flags` over `dests`,
/// checking after each new connection that the data path picked what the model picks given
/// the same counts. Steps: a new connection from one of a few client networks, the
/// handshake's ACK of an open one (SYN_RECV → ESTABLISHED), a RST closing one, a sweep
/// (counts and overload flags refreshed). Returns the picks per real server.
fn agree(
    sched: Scheduler,
    flags: u32,
    dests: &[Rs],
    vips: u8,
    steps: usize,
    seed: u64,
) -> Vec<u32> {
    let mut f = Fixture::new(svc_model(vips, sched, flags, None, dests));
    let mh = f.dp().mh_table_size();
    let mut models: Vec<sched::Model> = (0..vips)
        .map(|i| {
            let members = f.dp().sched_members(&key(i)).expect("service");
            sched::Model::new(sched, SchedFlags(flags), members, mh).expect("model")
        })
        .collect();
    let mut rng = Rng(seed);
    let mut open: Vec<(SocketAddrV4, u8)> = Vec::new();
    let mut picks = vec![0u32; 256];
    let mut port = 10000u16;
    for step in 0..steps {
        match rng.below(10) {
            0..=5 => {
                let i = rng.below(vips as u64) as u8;
                // Few networks, many hosts: the hashing schedulers see repeat clients.
                let client = SocketAddrV4::new(
                    Ipv4Addr::new(198, 18, rng.below(4) as u8, 1 + rng.below(200) as u8),
                    port,
                );
                port = port.wrapping_add(1).max(10000);
                let members = f.dp().sched_members(&key(i)).expect("service");
                let model = &mut models[i as usize];
                for m in model.members_mut() {
                    let now = members.iter().find(|x| x.id == m.id).expect("same ids");
                    (m.active, m.inactive, m.overloaded) =
                        (now.active, now.inactive, now.overloaded);
                }
                let want = model.pick(client, SocketAddrV4::new(vip(i), 80), 0);
                let out = f.run(&syn(client, vip(i)));
                let got = match out.action {
                    XDP_TX => Some(out.data[5]),
                    XDP_DROP => None,
                    other => panic!("step {step}: verdict {other}"),
                };
                let want_n = want.map(|id| rs_number(&members, id));
                assert_eq!(
                    got,
                    want_n,
                    "{sched} flags {flags:#x} seed {seed} step {step}: client {client} → {}: \
                     data path picked {got:?}, the model {want_n:?}; members {members:?}",
                    vip(i)
                );
                if let Some(n) = got {
                    picks[n as usize] += 1;
                    open.push((client, i));
                }
            }
            6 | 7 if !open.is_empty() => {
                let (client, i) = open[rng.below(open.len() as u64) as usize];
                f.run(&segment(client, vip(i), TCP_ACK));
            }
            8 if !open.is_empty() => {
                let (client, i) = open.swap_remove(rng.below(open.len() as u64) as usize);
                f.run(&segment(client, vip(i), TCP_RST | TCP_ACK));
            }
            _ => {
                f.dp().sweep().expect("sweep");
            }
        }
    }
    picks
}

const SEED: u64 = 0x5eed_1b0d_ca5c_ade5;

/// Weights with a quiesced server, and thresholds on one.
const MIXED: [Rs; 5] = [
    (1, 3, 0, 0),
    (2, 1, 0, 0),
    (3, 0, 0, 0),
    (4, 2, 6, 3),
    (5, 5, 0, 0),
];

#[test]
fn sh_dh_mh_pick_what_the_model_picks() {
    for (sched, flags) in [
        (Scheduler::Sh, 0),
        (Scheduler::Sh, SchedFlags::FLAG1),
        (Scheduler::Sh, SchedFlags::FLAG2),
        (Scheduler::Sh, SchedFlags::FLAG1 | SchedFlags::FLAG2),
        (Scheduler::Dh, 0),
        (Scheduler::Mh, 0),
        (Scheduler::Mh, SchedFlags::FLAG1),
        (Scheduler::Mh, SchedFlags::FLAG2),
        (Scheduler::Mh, SchedFlags::FLAG1 | SchedFlags::FLAG2),
    ] {
        let picks = agree(sched, flags, &MIXED, 3, 400, SEED);
        assert_eq!(picks[3], 0, "{sched}: the quiesced server got connections");
    }
}

#[test]
fn scanning_schedulers_pick_what_the_model_picks() {
    for sched in [
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Fo,
        Scheduler::Ovf,
    ] {
        let picks = agree(sched, 0, &MIXED, 1, 400, SEED);
        assert_eq!(picks[3], 0, "{sched}: the quiesced server got connections");
    }
}

#[test]
fn rr_wrr_lblc_lblcr_pick_what_the_model_picks() {
    for sched in [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lblc,
        Scheduler::Lblcr,
    ] {
        agree(sched, 0, &MIXED, 3, 400, SEED);
    }
}

/// An overloaded server (over `-x`) gets no new connection until it drops under `-y`.
#[test]
fn thresholds_hold_a_server_off_between_x_and_y() {
    let dests: [Rs; 2] = [(1, 1, 3, 1), (2, 1, 0, 0)];
    let mut f = Fixture::new(svc_model(1, Scheduler::Rr, 0, None, &dests));
    let client = |p| SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), p);
    // rr alternates until rs1 holds 3 connections (-x 3): then only rs2.
    let picks: Vec<u8> = (0..8)
        .map(|p| f.forwarded_to(&syn(client(20000 + p), vip(0))))
        .collect();
    let on_rs1: Vec<u16> = (0..8)
        .filter(|&p| picks[p as usize] == 1)
        .map(|p| 20000 + p)
        .collect();
    assert_eq!(on_rs1.len(), 3, "rs1 takes 3 (-x 3): {picks:?}");
    assert_eq!(picks[6..], [2, 2], "then only rs2: {picks:?}");
    // Close two of rs1's: 1 left, not yet under -y 1: still overloaded after a sweep.
    for &p in &on_rs1[..2] {
        close(&mut f, client(p), vip(0));
    }
    f.dp().set_timeouts(&quick_close()).unwrap();
    tick_and_sweep(&mut f);
    let members = f.dp().sched_members(&key(0)).unwrap();
    let rs1 = members.iter().find(|m| m.addr == rs(1)).unwrap();
    assert_eq!(
        (rs1.active + rs1.inactive, rs1.overloaded),
        (1, true),
        "{members:?}"
    );
    for p in 0..3 {
        assert_eq!(
            f.forwarded_to(&syn(client(20100 + p), vip(0))),
            2,
            "rs1 held off at 1 (-y 1)"
        );
    }
    // The last one goes: under -y, rs1 takes connections again.
    close(&mut f, client(on_rs1[2]), vip(0));
    tick_and_sweep(&mut f);
    let next: Vec<u8> = (0..4)
        .map(|p| f.forwarded_to(&syn(client(20200 + p), vip(0))))
        .collect();
    assert!(next.contains(&1), "rs1 back under -y: {next:?}");
}

/// CLOSE entries expire after 1 s (IPVS: 10 s), so a test can wait for them.
fn quick_close() -> lb_ctl::dataplane::StateTimeouts {
    let mut t = lb_ctl::dataplane::StateTimeouts::default();
    t.tcp[lb_common::tcp_state::CLOSE as usize] = 1;
    t
}

fn tick_and_sweep(f: &mut Fixture) {
    std::thread::sleep(std::time::Duration::from_millis(2100));
    f.dp().tick_clock().unwrap();
    f.dp().sweep().unwrap();
}

#[test]
fn persistence_template_is_created_and_honoured() {
    let p = Persistence {
        timeout: 1,
        netmask: Ipv4Addr::new(255, 255, 255, 0).into(),
    };
    let dests: [Rs; 3] = [(1, 1, 0, 0), (2, 1, 0, 0), (3, 1, 0, 0)];
    let mut f = Fixture::new(svc_model(1, Scheduler::Rr, 0, Some(p), &dests));
    let a = |host, port| SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, host), port);
    let first = f.forwarded_to(&syn(a(1, 30000), vip(0)));
    // Other hosts and ports of the same /24 follow the template, whatever rr would say.
    for (host, port) in [(1, 30001), (2, 30002), (200, 30003), (77, 30004)] {
        assert_eq!(f.forwarded_to(&syn(a(host, port), vip(0))), first);
    }
    // Listed as IPVS lists a template: protocol IP, client network, port 0.
    let t = lb_ctl::dataplane::StateTimeouts::default();
    let conns = f.dp().conns(&t);
    let templates: Vec<_> = conns.iter().filter(|c| c.proto == "IP").collect();
    assert_eq!(templates.len(), 1, "{conns:?}");
    assert_eq!(
        templates[0].client,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 0), 0).into()
    );
    assert_eq!(
        templates[0].virtual_addr,
        SocketAddrV4::new(vip(0), 80).into()
    );
    assert_eq!(templates[0].dest.ip(), rs(first));
    // Another /24 is scheduled by rr: the next server in turn.
    let other = f.forwarded_to(&syn(
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 1), 30010),
        vip(0),
    ));
    assert_ne!(other, first);
    // The template counts in the server's PersistConn after a sweep.
    f.dp().sweep().unwrap();
    let members = f.dp().sched_members(&key(0)).unwrap();
    let id = members.iter().find(|m| m.addr == rs(first)).unwrap().id;
    assert_eq!(f.dp().conn_counts(id).persist, 1);
    // Connections closed and expired, the template outlives them by its own timeout (1 s)
    // and then goes too.
    for (host, port) in [
        (1, 30000),
        (1, 30001),
        (2, 30002),
        (200, 30003),
        (77, 30004),
    ] {
        close(&mut f, a(host, port), vip(0));
    }
    f.dp().set_timeouts(&quick_close()).unwrap();
    tick_and_sweep(&mut f);
    let left = f.dp().conns(&t);
    assert!(
        !left
            .iter()
            .any(|c| c.proto == "IP" && c.client.ip() == Ipv4Addr::new(198, 18, 1, 0)),
        "template still there: {left:?}"
    );
}

/// rr and wrr walk one cursor shared by every CPU: new connections arriving on different
/// CPUs still rotate exactly (the bound on per-CPU effects is zero).
#[test]
fn rr_rotation_is_exact_across_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dests: [Rs; 3] = [(1, 1, 0, 0), (2, 1, 0, 0), (3, 1, 0, 0)];
    let mut f = Fixture::new(svc_model(1, Scheduler::Rr, 0, None, &dests));
    let mut picks = Vec::new();
    for p in 0..60u16 {
        // Each packet on the next CPU (BPF_PROG_TEST_RUN runs on the caller's).
        pin_to_cpu(p as usize % cpus);
        let c = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000 + p);
        picks.push(f.forwarded_to(&syn(c, vip(0))));
    }
    pin_to_cpu_any(cpus);
    for w in picks.windows(3) {
        let mut s = w.to_vec();
        s.sort();
        assert_eq!(
            s,
            [1, 2, 3],
            "every 3 consecutive picks cover all servers: {picks:?}"
        );
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain libc calls on a local cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

fn pin_to_cpu_any(cpus: usize) {
    // SAFETY: as above.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A persistent client keeps going to its server when that server is quiesced (weight 0),
/// as in IPVS; with `expire_quiescent_template` its template is dropped instead and it is
/// scheduled afresh.
#[test]
fn quiesced_server_keeps_persistent_clients_unless_expire_quiescent_template() {
    let p = Persistence {
        timeout: 300,
        netmask: Ipv4Addr::BROADCAST.into(),
    };
    let dests: [Rs; 2] = [(1, 1, 0, 0), (2, 1, 0, 0)];
    let mut f = Fixture::new(svc_model(1, Scheduler::Rr, 0, Some(p), &dests));
    let c = |host, port| SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, host), port);
    let (x, y) = (
        f.forwarded_to(&syn(c(1, 31000), vip(0))),
        f.forwarded_to(&syn(c(2, 31000), vip(0))),
    );
    assert_ne!(x, y);
    // Quiesce client 1's server.
    let mut m = f.model.clone();
    let mut d = *m.services[&key(0)]
        .dests
        .iter()
        .find(|d| d.addr == rs(x))
        .unwrap();
    d.weight = 0;
    m.apply(&Op::EditDest(key(0), d)).unwrap();
    f.set(m);
    assert_eq!(
        f.forwarded_to(&syn(c(1, 31001), vip(0))),
        x,
        "the template still holds"
    );
    f.dp().set_expiry_rules(false, true).unwrap();
    assert_eq!(
        f.forwarded_to(&syn(c(1, 31002), vip(0))),
        y,
        "expire_quiescent_template: rescheduled"
    );
    // And the new template sticks.
    assert_eq!(f.forwarded_to(&syn(c(1, 31003), vip(0))), y);
}
