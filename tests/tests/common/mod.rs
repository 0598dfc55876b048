//! The `BPF_PROG_TEST_RUN` fixture shared by the fixture test files: the balancer loaded
//! with its own pins, its maps filled by the daemon's own `Dataplane::sync`.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use lb_ctl::{
    dataplane::{Dataplane, Options, Paths, RsPath},
    model::{DestConfig, Forward, Model, Op, Protocol, Scheduler, ServiceConfig, ServiceKey},
};
use lb_tests::{
    packet::Frame,
    xdp_run::{self, Outcome, XDP_TX},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd1];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];

pub fn rs(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + n)
}
pub fn rs_mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x10, n]
}

/// The balancer loaded with pins of its own, its tables sized for the fixtures (the
/// connection table `conns` entries, the embryonic table a quarter); shut down before its pins
/// are removed, also when a test fails. Shared by every `BPF_PROG_TEST_RUN` suite that keeps
/// the balancer's maps its own way (this module's [`Fixture`], sync_dp, ipv6_dp, nat_tun).
pub struct Balancer {
    dp: Option<Dataplane>,
    pins: lb_tests::PinDir,
    conns: u32,
    sched: u32,
    persist: u32,
}

impl Balancer {
    /// Loads it with pins under `label` in this run's pin root.
    pub fn open(label: &str, conns: u32) -> Self {
        Self::with_sched_table(label, conns, 1 << 16)
    }

    /// [`open`](Self::open) with a scheduling table of `sched` entries.
    pub fn with_sched_table(label: &str, conns: u32, sched: u32) -> Self {
        Self::with_tables(label, conns, sched, 4096)
    }

    /// [`with_sched_table`](Self::with_sched_table) with a template table of `persist`.
    pub fn with_tables(label: &str, conns: u32, sched: u32, persist: u32) -> Self {
        let pins = lb_tests::PinDir::new(label);
        let dp = Self::load(pins.path(), conns, sched, persist)
            .expect("loading the balancer (root, bpffs)");
        Self {
            dp: Some(dp),
            pins,
            conns,
            sched,
            persist,
        }
    }

    fn load(
        pins: &std::path::Path,
        conns: u32,
        sched: u32,
        persist: u32,
    ) -> anyhow::Result<Dataplane> {
        Dataplane::open(Options {
            pin_dir: pins.to_path_buf(),
            conn_table_size: conns,
            sched_table_size: sched,
            mh_table_size: 251,
            persist_table_size: persist,
            ..Options::default()
        })
    }

    /// Stops the data path keeping it pinned (a daemon's `--keep-datapath` exit) and opens it
    /// again on the same pins, as a restarted daemon does: the new one adopts the maps.
    pub fn reopen_keeping(&mut self) {
        let dp = self.dp.take().expect("open");
        dp.shutdown(true).expect("stopping, keeping the data path");
        self.dp = Some(
            Self::load(self.pins.path(), self.conns, self.sched, self.persist).expect("adopting"),
        );
    }

    pub fn dp(&self) -> &Dataplane {
        self.dp.as_ref().expect("open")
    }

    pub fn dp_mut(&mut self) -> &mut Dataplane {
        self.dp.as_mut().expect("open")
    }

    /// Where its maps and programs are pinned.
    pub fn pins(&self) -> &std::path::Path {
        self.pins.path()
    }

    /// One `BPF_PROG_TEST_RUN` of `frame`, as received on `ifindex` (0: the kernel reports
    /// loopback); panics if the program aborts.
    pub fn run(&self, frame: &[u8], ifindex: u32) -> Outcome {
        let prog = self.dp().program().expect("program");
        let out = xdp_run::run_xdp(prog, frame, 1, ifindex).expect("BPF_PROG_TEST_RUN");
        assert_ne!(
            out.action,
            xdp_run::XDP_ABORTED,
            "the program aborted on {frame:02x?}"
        );
        out
    }

    /// DR: the real server (1..) a frame went to, by its destination MAC, checking that it
    /// went back out (XDP_TX, loopback being every real server's interface here) from the
    /// director's MAC with nothing past the MACs changed.
    pub fn forwarded_to(&self, frame: &[u8]) -> u8 {
        let out = self.run(frame, 0);
        assert_eq!(
            out.action, XDP_TX,
            "expected XDP_TX for {frame:02x?}, got {out:?}"
        );
        assert_eq!(&out.data[6..12], &DIRECTOR_MAC, "source MAC");
        assert_eq!(
            &out.data[12..],
            &frame[12..],
            "DR must leave everything after the MACs untouched"
        );
        let n = out.data[5];
        assert_eq!(&out.data[0..6], &rs_mac(n), "destination MAC");
        n
    }

    /// The data path's counter `name`; panics if there is none.
    pub fn counter(&self, name: &str) -> u64 {
        self.dp()
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .1
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // Before `pins` removes the pins.
        if let Some(dp) = self.dp.take() {
            let _ = dp.shutdown(false);
        }
    }
}

/// A loaded balancer whose maps the daemon's own `Dataplane::sync` fills from a model.
pub struct Fixture {
    pub bal: Balancer,
    pub model: Model,
    pub paths: Paths,
}

impl Fixture {
    pub fn new(model: Model) -> Self {
        Self::with_table(model, 4096)
    }

    /// A fixture whose connection table has `conns` entries (the embryonic table a quarter).
    pub fn with_table(model: Model, conns: u32) -> Self {
        Self::with_tables(model, conns, 4096)
    }

    /// A fixture whose connection table has `conns` entries and template table `persist`.
    pub fn with_tables(model: Model, conns: u32, persist: u32) -> Self {
        let bal = Balancer::with_tables("fixture", conns, 1 << 16, persist);
        // Every real server is "reached" through loopback, the interface BPF_PROG_TEST_RUN
        // reports as ingress, so a forwarded packet comes back as XDP_TX.
        let paths = (1..=8)
            .map(|n| {
                (
                    rs(n).into(),
                    RsPath {
                        ifindex: 1,
                        next_hop: rs(n).into(),
                        smac: DIRECTOR_MAC,
                        dmac: Some(rs_mac(n)),
                        ..RsPath::default()
                    },
                )
            })
            .collect();
        let mut f = Self {
            bal,
            model: Model::default(),
            paths,
        };
        f.set(model);
        f
    }

    pub fn dp(&mut self) -> &mut Dataplane {
        self.bal.dp_mut()
    }

    pub fn set(&mut self, model: Model) {
        let paths = self.paths.clone();
        self.dp().sync(&model, &paths).expect("sync");
        self.model = model;
    }

    pub fn op(&mut self, op: Op) {
        let mut m = self.model.clone();
        m.apply(&op).expect("op");
        self.set(m);
    }

    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        self.bal.run(frame, 0)
    }

    pub fn counter(&mut self, name: &str) -> u64 {
        self.bal.counter(name)
    }

    /// The real server a forwarded frame went to, by its destination MAC.
    pub fn forwarded_to(&mut self, frame: &[u8]) -> u8 {
        self.bal.forwarded_to(frame)
    }
}

pub fn service(
    proto: Protocol,
    port: u16,
    sched: Scheduler,
    dests: &[(u8, u32)],
) -> (ServiceConfig, Vec<DestConfig>) {
    let cfg = ServiceConfig {
        key: ServiceKey {
            proto,
            addr: VIP.into(),
            port,
        },
        scheduler: sched,
        sched_flags: Default::default(),
        persistence: None,
        ops: false,
        tunnel_source: None,
    };
    let dests = dests
        .iter()
        .map(|&(n, weight)| DestConfig {
            addr: rs(n).into(),
            port,
            forward: Forward::Dr,
            weight,
            u_threshold: 0,
            l_threshold: 0,
        })
        .collect();
    (cfg, dests)
}

pub fn model(services: &[(ServiceConfig, Vec<DestConfig>)]) -> Model {
    let mut m = Model::default();
    for (cfg, dests) in services {
        m.apply(&Op::AddService(*cfg)).unwrap();
        for d in dests {
            m.apply(&Op::AddDest(cfg.key, *d)).unwrap();
        }
    }
    m
}

pub fn web_rr() -> Model {
    model(&[service(Protocol::Tcp, 80, Scheduler::Rr, &[(1, 1), (2, 1)])])
}

pub fn tcp(sport: u16, flags: u8) -> Vec<u8> {
    Frame::tcp(CLIENT, sport, VIP, 80, flags, b"").eth(DIRECTOR_MAC, ROUTER_MAC)
}
