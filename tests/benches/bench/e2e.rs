//! End to end on veth: Mpps through a director namespace whose work is pinned to one core, for
//! the floors, DR, NAT, TUN and nftables DNAT with conntrack, with the same generator in the
//! same run, at 1, 1k and 128k flows.
//!
//! ```text
//!   gen (g0) ──veth── (d0) director (d1) ──veth── (s0) sink
//!   CPU 0              CPU 1                       CPU 0
//! ```
//!
//! - The generator is `lb_gen` run with `BPF_PROG_TEST_RUN` in live-frames mode on g0, from a
//!   thread pinned to CPU 0: every frame is rewritten from a template and given the source
//!   address and port of a counter modulo the flow count; its `XDP_TX` sends it into d0.
//! - The director's work is d0's NAPI poll: attaching XDP to a veth gives it a NAPI instance,
//!   made threaded (`/sys/class/net/d0/threaded`) so that its kthread can be pinned to CPU 1.
//!   Whatever the director does with a frame (the balancer, a floor, or the whole kernel
//!   stack behind `XDP_PASS` for nftables) runs in that thread. Every other NAPI thread (g0,
//!   d1, s0) is pinned to CPU 0, with the generator: unthreaded, s0's poll would run as a
//!   softirq on the CPU that woke it, the director's. Those are `SCHED_FIFO`, so that the
//!   sink drains its ring as soon as frames arrive instead of waiting for the generator's
//!   time slice to end (the ring holds 256 frames; the rest would be lost).
//! - d0 and d1 each keep one XDP link for the whole run, whose program is swapped per
//!   configuration (`BPF_LINK_UPDATE`): detaching would delete the veth's NAPI instance and
//!   its pinned kthread with it.
//! - The sink is `lb_count_drop` on s0 (and on g0, where the MAC-swap floor sends back).
//!   Mpps = frames counted at the sink per second, over two seconds of a steady flood.
//! - No CPU sleeps deeper than polling while this runs (`/dev/cpu_dma_latency`): waking a
//!   halted vCPU takes longer than d0's ring lasts at these rates, and the numbers would
//!   measure that.
//!
//! With two CPUs, the generator and the sink share one: it runs out before the director does
//! when the director is fast (the floors; our paths at few flows). The share of time d0's NAPI
//! thread ran tells which side was the limit; rows where the director was not saturated say
//! so. Our paths see established connections: each flow is opened once with a SYN, the
//! measured traffic is ACKs. nftables sees the same ACKs; conntrack picks each flow up as
//! established from its first one (`nf_conntrack_tcp_loose`; after a SYN alone it would call
//! the ACKs invalid), so the flows are created with one pass of them first. Rounds are
//! interleaved over the configurations so that drift hits every one alike.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use aya::{
    Ebpf, Pod,
    maps::{Array, MapData, PerCpuArray},
    programs::{ProgramError, Xdp},
};
use lb_common::{maps, progs};
use lb_ctl::{
    dataplane::{Dataplane, Options, PASS_OBJ, Paths, RsPath},
    model::{DestConfig, Forward, Model, Scheduler, ServiceConfig, ServiceKey},
};
use lb_tests::{
    Netns,
    packet::{Frame, TCP_ACK, TCP_SYN, verify_checksums},
    veth,
    xdp_run::{self, XDP_TX},
};

use crate::report::{E2eRow, Report, Spread};

/// Interface names, distinctive because threaded NAPI kthreads are found by name
/// (`napi/<dev>-<napi id>`) among all namespaces' threads.
const G0: &str = "e2eg0";
const D0: &str = "e2ed0";
const D1: &str = "e2ed1";
const S0: &str = "e2es0";

const GEN_CPU: usize = 0;
const DIRECTOR_CPU: usize = 1;

/// Flow `i` is `CLIENT + i / 64`, port `CLIENT_PORT + i % 64` (see `lb_gen`).
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT_PORT: u16 = 1024;
const DR_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const NAT_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 101);
const TUN_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 102);
const NFT_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 103);
/// Real servers on d1's segment (all answered by s0's MAC), and TUN's behind a router there.
const DR_RS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NAT_RS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const NFT_RS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const TUN_RS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const DIRECTOR_INT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

const FLOWS: [u32; 3] = [1, 1000, 131_072];
const ROUNDS: usize = 3;
const WARMUP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(2);
/// Below this share of the wall time on a CPU, d0's NAPI thread was waiting for frames: the
/// generator and the sink, which share CPU 0, were the limit and not the director.
const SATURATED: f64 = 0.9;
/// While opening flows, the generator sends at most one frame per this: slower than the
/// slowest director takes new flows (the kernel's conntrack), so that none is lost to a full
/// veth ring.
const OPEN_INTERVAL: Duration = Duration::from_micros(5);
/// Frames per batch of `BPF_PROG_TEST_RUN` in live-frames mode: the most the kernel takes
/// (`TEST_XDP_MAX_BATCH`), which spreads the per-batch work (flushing the redirects, checking
/// for signals and rescheduling) over the most frames.
const BATCH: u32 = 256;
/// Length of `lb_gen`'s frames (its `GEN_LEN`).
const GEN_LEN: usize = 60;

/// `lb_gen`'s `Gen`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gen {
    frame: [u32; GEN_LEN / 4],
    flows: u32,
    interval_ns: u64,
}

// SAFETY: plain integers, no padding (60 + 4 + 8 bytes).
unsafe impl Pod for Gen {}

/// `lb_gen`'s `GenState`.
#[repr(C)]
#[derive(Clone, Copy)]
struct GenState {
    sent: u64,
    next_ns: u64,
}

// SAFETY: plain integers, no padding.
unsafe impl Pod for GenState {}

/// `lb_redirect`'s `Fwd`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Fwd {
    ifindex: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
}

// SAFETY: plain integers, no padding (4 + 6 + 6 bytes, 4-aligned).
unsafe impl Pod for Fwd {}

/// What runs on the director for one configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `lb_count_drop` on d0: what the generator can deliver into the director at most.
    Generator,
    /// `lb_macswap` on d0, counted back at g0.
    MacSwap,
    /// `lb_redirect` on d0 to d1, counted at s0.
    Redirect,
    /// The balancer on d0 and d1.
    Balancer,
    /// `lb_pass` on d0 (and d1), nftables DNAT in the stack.
    Nftables,
}

struct Config {
    name: &'static str,
    kind: Kind,
    vip: Ipv4Addr,
    note: &'static str,
    /// (flows, samples) per flow count.
    samples: Vec<(u32, Vec<Sample>)>,
}

/// One measurement.
struct Sample {
    /// Delivered to the sink, Mpps.
    mpps: f64,
    /// Frames the generator produced, Mpps (the rest was dropped on the way).
    offered: f64,
    /// Share of the wall time d0's NAPI thread ran.
    busy: f64,
    /// Frames counted at the sink.
    delivered: u64,
    /// Frames the balancer forwarded (0 for the others).
    forwarded: u64,
    /// Pinning problems, if any.
    pinning: Option<String>,
    /// `NET_RX` softirqs on the director's CPU (0 when all NAPI work is in the threads).
    net_rx: u64,
}

/// An XDP link (`BPF_LINK_CREATE`, driver mode) whose program can be swapped in place. aya
/// 0.14 cannot create one for a program it did not load (the balancer's is inside
/// `Dataplane`), nor update one to another object's program.
struct Link(OwnedFd);

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `enum bpf_attach_type`'s `BPF_XDP`.
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The `bpf(2)` syscall with the first words of `union bpf_attr` (the rest zero).
fn bpf(cmd: libc::c_long, words: &[u32]) -> io::Result<i64> {
    let mut attr = [0u32; 16];
    attr[..words.len()].copy_from_slice(words);
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix; the link commands take no
    // pointers.
    unsafe { lb_ctl::bpf::sys_bpf(cmd, &mut attr) }
}

impl Link {
    /// Attaches `prog` to `ifindex` of `ns` (interface indexes are per namespace).
    fn create(ns: &Netns, ifindex: u32, prog: &OwnedFd) -> Link {
        let prog = prog.as_raw_fd() as u32;
        let fd = ns
            .enter(|| {
                bpf(
                    BPF_LINK_CREATE,
                    &[prog, ifindex, BPF_XDP, XDP_FLAGS_DRV_MODE],
                )
            })
            .unwrap_or_else(|e| panic!("attaching XDP to ifindex {ifindex} in {}: {e}", ns.name()));
        // SAFETY: a fresh link fd the kernel just returned, owned by nobody else.
        Link(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn set(&self, prog: &OwnedFd) {
        let words = [self.0.as_raw_fd() as u32, prog.as_raw_fd() as u32];
        bpf(BPF_LINK_UPDATE, &words).expect("BPF_LINK_UPDATE of an XDP link");
    }
}

/// Pins thread `pid` (0: the caller) to `cpu`.
fn pin(pid: i32, cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get a pointer to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes thread `pid` real-time (`SCHED_FIFO`), so that it preempts the generator as soon as
/// it has work.
fn realtime(pid: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: a valid `sched_param` for the duration of the call.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kthreads of `dev`'s threaded NAPI instances.
fn napi_threads(dev: &str) -> Vec<i32> {
    let prefix = format!("napi/{dev}-");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(&prefix))
        })
        .collect()
}

/// Time `pid` has spent on a CPU, ns.
fn cpu_ns(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Pins the director's NAPI threads to `DIRECTOR_CPU` and every other one to `GEN_CPU`
/// (again before every measurement: cheap, and robust to a kthread being recreated).
/// Returns d0's threads, and what went wrong if anything.
fn place() -> (Vec<i32>, Option<String>) {
    let mut problems = Vec::new();
    for (dev, cpu) in [
        (D0, DIRECTOR_CPU),
        (D1, GEN_CPU),
        (G0, GEN_CPU),
        (S0, GEN_CPU),
    ] {
        let pids = napi_threads(dev);
        if pids.is_empty() {
            problems.push(format!("no napi/{dev} thread"));
        }
        for pid in pids {
            if let Err(e) = pin(pid, cpu) {
                problems.push(format!("napi/{dev} to CPU {cpu}: {e}"));
            }
            if cpu == GEN_CPU
                && let Err(e) = realtime(pid)
            {
                problems.push(format!("napi/{dev} SCHED_FIFO: {e}"));
            }
        }
    }
    let problems = (!problems.is_empty()).then(|| problems.join(", "));
    (napi_threads(D0), problems)
}

fn sys(ns: &Netns, what: &str) -> String {
    ns.run(&["cat", what]).trim().to_string()
}

fn mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let s = sys(ns, &format!("/sys/class/net/{dev}/address"));
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn ifindex(ns: &Netns, dev: &str) -> u32 {
    sys(ns, &format!("/sys/class/net/{dev}/ifindex"))
        .parse()
        .unwrap()
}

/// The generator: `lb_gen` on g0, driven from a thread in the generator's namespace pinned
/// to `GEN_CPU`.
struct Generator<'a> {
    ns: &'a Netns,
    prog: &'a Xdp,
    ifindex: u32,
    config: Array<MapData, Gen>,
    state: PerCpuArray<MapData, GenState>,
    /// The template, for `BPF_PROG_TEST_RUN` to start each page from.
    frame: Vec<u8>,
}

impl Generator<'_> {
    /// Makes the generator send `frame` spread over `flows` flows, at most one frame per
    /// `interval` (zero: as fast as it can).
    fn set(&mut self, frame: Vec<u8>, flows: u32, interval: Duration) {
        assert_eq!(frame.len(), GEN_LEN);
        let mut words = [0u32; GEN_LEN / 4];
        for (w, b) in words.iter_mut().zip(frame.chunks_exact(4)) {
            *w = u32::from_ne_bytes(b.try_into().unwrap());
        }
        let config = Gen {
            frame: words,
            flows,
            interval_ns: interval.as_nanos() as u64,
        };
        self.config.set(0, config, 0).expect("writing LB_GEN");
        self.frame = frame;
    }

    /// Frames sent so far.
    fn sent(&self) -> u64 {
        let state = self.state.get(&0, 0).expect("reading LB_GEN_STATE");
        state.iter().map(|s| s.sent).sum()
    }

    /// Sends each of the `flows` flows' `frame` once, paced by `OPEN_INTERVAL` (the caller
    /// checks that they arrived).
    fn send_once(&mut self, frame: Vec<u8>, flows: u32) {
        self.set(frame, flows, OPEN_INTERVAL);
        let until = self.sent() + u64::from(flows);
        let deadline = Instant::now() + OPEN_INTERVAL * flows * 4 + Duration::from_secs(1);
        self.flood(|| {
            while self.sent() < until && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }

    /// Runs `f(prog, template, g0's ifindex)` on a thread in the namespace on `GEN_CPU`.
    fn on_cpu<T: Send>(&self, f: impl FnOnce(&Xdp, &[u8], u32) -> T + Send) -> T {
        let (prog, frame, ifindex) = (self.prog, &self.frame, self.ifindex);
        self.ns.enter(move || {
            pin(0, GEN_CPU).expect("pinning the generator thread");
            f(prog, frame, ifindex)
        })
    }

    /// Sends while `measure` runs on the calling thread.
    ///
    /// One `BPF_PROG_TEST_RUN` call of `u32::MAX` frames, stopped with a signal (the kernel
    /// checks for one after every batch): each call costs about 25 ms of set-up and teardown
    /// here, and a generator that paused that long between calls would let the director idle.
    fn flood<T>(&self, measure: impl FnOnce() -> T) -> T {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            extern "C" fn wake(_: libc::c_int) {}
            // SAFETY: a zeroed sigaction with a handler that does nothing, installed once;
            // SIGUSR1 is used by nothing else in this process.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = wake as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                assert_eq!(
                    libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()),
                    0,
                    "installing a SIGUSR1 handler"
                );
            }
        });
        let done = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            let generator = s.spawn(|| {
                self.on_cpu(|prog, frame, ifindex| {
                    // SAFETY: gettid has no preconditions.
                    tx.send(unsafe { libc::gettid() }).unwrap();
                    while !done.load(Ordering::Relaxed) {
                        match xdp_run::run_xdp_live(prog, frame, u32::MAX, ifindex, BATCH) {
                            // EINTR: the signal that ends the flood.
                            Err(ProgramError::SyscallError(e))
                                if e.io_error.raw_os_error() == Some(libc::EINTR) => {}
                            Err(e) => panic!("lb_gen (live): {e}"),
                            Ok(_) => {}
                        }
                    }
                })
            });
            let tid = rx.recv().expect("the generator thread died");
            let out = measure();
            done.store(true, Ordering::Relaxed);
            // Again until it is gone: a signal that lands just before the call is lost. By
            // thread id, which stays harmless once the thread is gone: at worst another of
            // this process's threads has a system call interrupted.
            while !generator.is_finished() {
                // SAFETY: tgkill takes plain integers.
                unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_millis(5));
            }
            generator
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            out
        })
    }
}

/// The frame the generator starts from: TCP from the first client to `vip`:80, from g0 to d0.
fn template(vip: Ipv4Addr, flags: u8, d0: [u8; 6], g0: [u8; 6]) -> Vec<u8> {
    let mut f = Frame::tcp(CLIENT, CLIENT_PORT, vip, 80, flags, b"").eth(d0, g0);
    f.resize(GEN_LEN, 0);
    f
}

/// Asks the kernel to keep every CPU out of idle states with any exit latency (the request
/// stands while the file is open, and the kernel drops it when this process exits however it
/// ends). `None` when it cannot be made.
fn no_deep_idle() -> Option<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .ok()?;
    f.write_all(&0i32.to_ne_bytes()).ok()?;
    Some(f)
}

/// Counters read at the start and the end of a measurement.
struct Snapshot {
    at: Instant,
    /// Frames the sink counted.
    sunk: u64,
    /// Frames the generator made.
    generated: u64,
    /// CPU time of d0's NAPI threads.
    d0_cpu_ns: u64,
    /// `NET_RX` softirqs on the director's CPU: NAPI polls that ran outside the threads.
    net_rx: u64,
    /// The balancer's counters.
    lb: HashMap<&'static str, u64>,
}

/// `NET_RX` softirqs so far on `cpu` (`/proc/softirqs`).
fn net_rx_softirqs(cpu: usize) -> u64 {
    std::fs::read_to_string("/proc/softirqs")
        .expect("/proc/softirqs")
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("NET_RX:"))
        .and_then(|l| l.split_whitespace().nth(cpu)?.parse().ok())
        .expect("NET_RX in /proc/softirqs")
}

fn per_cpu_sum(map: &PerCpuArray<MapData, u64>) -> u64 {
    map.get(&0, 0)
        .expect("reading a per-CPU counter")
        .iter()
        .sum()
}

fn load(refs: &mut Ebpf, name: &str) -> OwnedFd {
    let p: &mut Xdp = refs
        .program_mut(name)
        .unwrap_or_else(|| panic!("{name} missing from lb-pass"))
        .try_into()
        .unwrap();
    p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
    p.fd().unwrap().as_fd().try_clone_to_owned().unwrap()
}

pub fn run(report: &mut Report) {
    let started = Instant::now();
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) > DIRECTOR_CPU,
        "the end-to-end bench needs CPUs {GEN_CPU} and {DIRECTOR_CPU}"
    );
    let idle = no_deep_idle();
    if idle.is_none() {
        eprintln!("warning: cannot restrict idle states through /dev/cpu_dma_latency");
    }
    let gen_ns = Netns::new("e2e-gen");
    let dir = Netns::new("e2e-dir");
    let sink = Netns::new("e2e-sink");
    for ns in [&gen_ns, &dir, &sink] {
        ns.disable_ipv6();
    }
    veth(&gen_ns, G0, &dir, D0);
    veth(&dir, D1, &sink, S0);
    let (g0_mac, d0_mac, d1_mac, s0_mac) = (
        mac(&gen_ns, G0),
        mac(&dir, D0),
        mac(&dir, D1),
        mac(&sink, S0),
    );
    let (g0, d0, d1, s0) = (
        ifindex(&gen_ns, G0),
        ifindex(&dir, D0),
        ifindex(&dir, D1),
        ifindex(&sink, S0),
    );
    let s0_mac_str = s0_mac.map(|b| format!("{b:02x}")).join(":");
    dir.ip(&["addr", "add", "198.19.255.254/15", "dev", D0]);
    dir.ip(&["addr", "add", &format!("{DIRECTOR_INT}/24"), "dev", D1]);
    dir.sysctls(&[("net.ipv4.ip_forward", "1")]);
    // The director's lookups (ours and the kernel's) find every next hop resolved.
    for a in [DR_RS, NAT_RS, NFT_RS, ROUTER] {
        let a = a.to_string();
        dir.neigh_permanent(&a, &s0_mac_str, D1);
    }
    dir.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        &ROUTER.to_string(),
        "dev",
        D1,
    ]);
    // The kernel baseline: DNAT with conntrack, for its own VIP.
    let nft = lb_tests::cmd::tool("nft");
    let nft = nft.to_str().unwrap();
    dir.run(&[nft, "add", "table", "ip", "e2e"]);
    dir.run(&[
        nft,
        "add chain ip e2e pre { type nat hook prerouting priority dstnat; }",
    ]);
    dir.run(&[
        nft,
        &format!("add rule ip e2e pre ip daddr {NFT_VIP} tcp dport 80 dnat to {NFT_RS}:80"),
    ]);
    let ct_max: u32 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .expect("nf_conntrack_max")
        .trim()
        .parse()
        .unwrap();
    let most = *FLOWS.iter().max().unwrap();
    assert!(
        ct_max > most,
        "net.netfilter.nf_conntrack_max is {ct_max}: too few for {most} flows"
    );

    let mut refs = Ebpf::load(PASS_OBJ).expect("loading lb-pass");
    let pass = load(&mut refs, progs::PASS);
    let swap = load(&mut refs, progs::MACSWAP);
    let count = load(&mut refs, progs::COUNT_DROP);
    let redirect = load(&mut refs, progs::REDIRECT);
    load(&mut refs, progs::GEN);
    let take = |refs: &mut Ebpf, name: &str| {
        refs.take_map(name)
            .unwrap_or_else(|| panic!("map {name} missing from lb-pass"))
    };
    let sink_count: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(take(&mut refs, maps::SINK)).unwrap();
    let mut fwd: Array<MapData, Fwd> = Array::try_from(take(&mut refs, maps::FWD)).unwrap();
    fwd.set(
        0,
        Fwd {
            ifindex: d1,
            dmac: s0_mac,
            smac: d1_mac,
        },
        0,
    )
    .unwrap();
    let gen_config = Array::try_from(take(&mut refs, maps::GEN)).unwrap();
    let gen_state = PerCpuArray::try_from(take(&mut refs, maps::GEN_STATE)).unwrap();
    let gen_prog: &Xdp = refs.program(progs::GEN).unwrap().try_into().unwrap();
    let mut generator = Generator {
        ns: &gen_ns,
        prog: gen_prog,
        ifindex: g0,
        config: gen_config,
        state: gen_state,
        frame: Vec::new(),
    };
    // The generator's frames are what the template says, with both checksums right.
    generator.set(
        template(DR_VIP, TCP_ACK, d0_mac, g0_mac),
        1000,
        Duration::ZERO,
    );
    let outs: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            let out = xdp_run::run_xdp(gen_prog, &generator.frame, 1, 0).expect("lb_gen");
            assert_eq!(out.action, XDP_TX, "lb_gen: {out:?}");
            verify_checksums(&out.data[14..]).unwrap_or_else(|e| panic!("lb_gen: {e}"));
            out.data
        })
        .collect();
    assert!(
        outs[0][26..36] != outs[1][26..36] && outs[1][26..36] != outs[2][26..36],
        "lb_gen does not vary the source: {outs:02x?}"
    );

    // The balancer, with one service per forwarding method.
    let pins = lb_tests::PinDir::new("e2e");
    let mut dp = Dataplane::open(Options {
        pin_dir: pins.path().to_path_buf(),
        // The connections are opened with SYNs (and wait in the embryonic table until the
        // setup's ACKs move them on): 131,072 flows of one service (NAT's take two slots
        // each) in the default quarter of 1M slots, four to a bucket, would overwrite some
        // embryos before their first ACK, which the stack then gets.
        embryo_table_size: 1 << 20,
        ..Options::default()
    })
    .expect("loading the balancer");
    let mut model = Model::default();
    let mut paths = Paths::new();
    for (vip, rs, forward, next_hop) in [
        (DR_VIP, DR_RS, Forward::Dr, DR_RS),
        (NAT_VIP, NAT_RS, Forward::Nat, NAT_RS),
        (TUN_VIP, TUN_RS, Forward::Tun, ROUTER),
    ] {
        model
            .add(
                ServiceConfig::new(ServiceKey::tcp(vip, 80), Scheduler::Rr),
                [DestConfig::new(rs, 80, forward, 1)],
            )
            .unwrap();
        paths.insert(
            rs.into(),
            RsPath {
                ifindex: d1,
                next_hop: next_hop.into(),
                smac: d1_mac,
                dmac: Some(s0_mac),
                tun_src: DIRECTOR_INT.into(),
                mtu: 1500,
            },
        );
    }
    dp.sync(&model, &paths).expect("sync");
    let lb = dp.program_fd().unwrap().try_clone_to_owned().unwrap();
    let counters =
        |dp: &Dataplane| -> HashMap<&'static str, u64> { dp.counters().into_iter().collect() };

    // One link per interface for the whole run; then threaded NAPI, which needs the NAPI
    // instances the links created.
    let _g0_link = Link::create(&gen_ns, g0, &count);
    let _s0_link = Link::create(&sink, s0, &count);
    let d0_link = Link::create(&dir, d0, &pass);
    let d1_link = Link::create(&dir, d1, &pass);
    for (ns, dev) in [(&gen_ns, G0), (&dir, D0), (&dir, D1), (&sink, S0)] {
        ns.run(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{dev}/threaded"),
        ]);
    }
    let configure = |kind: Kind| {
        let (on_d0, on_d1) = match kind {
            Kind::Generator => (&count, &pass),
            Kind::MacSwap => (&swap, &pass),
            Kind::Redirect => (&redirect, &pass),
            Kind::Balancer => (&lb, &lb),
            Kind::Nftables => (&pass, &pass),
        };
        d0_link.set(on_d0);
        d1_link.set(on_d1);
    };

    let mut configs: Vec<Config> = [
        (
            "generator (drop on d0)",
            Kind::Generator,
            DR_VIP,
            "counted and dropped on d0, no sink on CPU 0: the generator's own rate",
        ),
        (
            "floor (MAC swap, XDP_TX)",
            Kind::MacSwap,
            DR_VIP,
            "XDP_TX back to g0, counted there",
        ),
        (
            "floor (redirect to d1)",
            Kind::Redirect,
            DR_VIP,
            "MAC rewrite + redirect to d1: DR without its lookups",
        ),
        ("DR", Kind::Balancer, DR_VIP, ""),
        ("NAT", Kind::Balancer, NAT_VIP, ""),
        ("TUN", Kind::Balancer, TUN_VIP, ""),
        (
            "nftables DNAT",
            Kind::Nftables,
            NFT_VIP,
            "the stack behind lb_pass (XDP_PASS) on d0, in d0's NAPI thread",
        ),
    ]
    .into_iter()
    .map(|(name, kind, vip, note)| Config {
        name,
        kind,
        vip,
        note,
        samples: Vec::new(),
    })
    .collect();

    // Flows `0..n` of one count include those of the smaller ones.
    let mut opened: HashMap<Ipv4Addr, u32> = HashMap::new();
    for flows in FLOWS {
        // Open the balancer's connections with SYNs, until all are there.
        for vip in [DR_VIP, NAT_VIP, TUN_VIP] {
            configure(Kind::Balancer);
            let want = u64::from(flows - opened.get(&vip).copied().unwrap_or(0));
            // A SYN opens a connection in the embryonic table; the client's next packet (one
            // ACK per flow here) moves it to the connection table, so that the measurement
            // sees established flows only (and no promotion). Rounds of both until every flow
            // is established: on a loaded machine some frames are lost on the veth, and a
            // bucket of four slots that a fifth SYN finds full gives up its least recently
            // seen embryo (rare at 1M slots, not impossible), whose flow the next round's
            // SYN opens again. Every flow is established exactly once whatever the rounds:
            // a SYN or ACK of an established flow finds it in the connection table.
            let (mut opened_now, mut promoted) = (0, 0);
            for _ in 0..10 {
                let before = counters(&dp);
                generator.send_once(template(vip, TCP_SYN, d0_mac, g0_mac), flows);
                std::thread::sleep(Duration::from_millis(20));
                generator.send_once(template(vip, TCP_ACK, d0_mac, g0_mac), flows);
                std::thread::sleep(Duration::from_millis(20));
                let after = counters(&dp);
                opened_now += after["new_conn"] - before["new_conn"];
                promoted += after["embryo_promoted"] - before["embryo_promoted"];
                if promoted >= want {
                    break;
                }
            }
            assert!(
                promoted == want && opened_now >= want,
                "{vip}: {flows} flows, {want} new: {opened_now} connections opened, {promoted} \
                 established; counters: {:?}",
                counters(&dp)
            );
            opened.insert(vip, flows);
        }
        // nftables: conntrack picks up the flows from their first ACKs.
        configure(Kind::Nftables);
        let tracked = || -> u32 {
            sys(&dir, "/proc/sys/net/netfilter/nf_conntrack_count")
                .parse()
                .unwrap()
        };
        for _ in 0..10 {
            if tracked() >= flows {
                break;
            }
            generator.send_once(template(NFT_VIP, TCP_ACK, d0_mac, g0_mac), flows);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            tracked() >= flows,
            "conntrack tracks {} of {flows} flows",
            tracked()
        );

        for c in configs.iter_mut() {
            c.samples.push((flows, Vec::new()));
        }
        for round in 0..ROUNDS {
            for c in configs.iter_mut() {
                configure(c.kind);
                generator.set(
                    template(c.vip, TCP_ACK, d0_mac, g0_mac),
                    flows,
                    Duration::ZERO,
                );
                let (d0_threads, pinning) = place();
                let snap = || Snapshot {
                    at: Instant::now(),
                    sunk: per_cpu_sum(&sink_count),
                    generated: generator.sent(),
                    d0_cpu_ns: d0_threads.iter().map(|&p| cpu_ns(p)).sum(),
                    net_rx: net_rx_softirqs(DIRECTOR_CPU),
                    lb: counters(&dp),
                };
                let (a, b) = generator.flood(|| {
                    std::thread::sleep(WARMUP);
                    let a = snap();
                    std::thread::sleep(MEASURE);
                    (a, snap())
                });
                let secs = (b.at - a.at).as_secs_f64();
                let (delivered, sent) = (b.sunk - a.sunk, b.generated - a.generated);
                assert!(
                    delivered * 100 > sent,
                    "{} at {flows} flows: the sink counted {delivered} of {sent} frames sent; \
                     the setup is broken",
                    c.name
                );
                let mut forwarded = 0;
                if c.kind == Kind::Balancer {
                    let delta = |k: &str| b.lb[k] - a.lb[k];
                    forwarded = delta("tx") + delta("redirect");
                    // Anything else (passes, drops, new connections) means the flows are not
                    // what the setup made them.
                    let odd: Vec<String> =
                        b.lb.keys()
                            .filter(|k| !["tx", "redirect"].contains(k) && delta(k) > 0)
                            .map(|k| format!("{k} {}", delta(k)))
                            .collect();
                    assert!(
                        odd.is_empty(),
                        "{} at {flows} flows: the balancer forwarded {forwarded} but also \
                         counted {odd:?}",
                        c.name
                    );
                }
                let s = Sample {
                    mpps: delivered as f64 / secs / 1e6,
                    offered: sent as f64 / secs / 1e6,
                    busy: (b.d0_cpu_ns - a.d0_cpu_ns) as f64 / 1e9 / secs,
                    delivered,
                    forwarded,
                    pinning,
                    net_rx: b.net_rx - a.net_rx,
                };
                println!(
                    "  {flows:>6} flows, round {}/{ROUNDS}: {:<24} {:>7.3} Mpps (offered {:.2}, d0 NAPI busy {:.0}%)",
                    round + 1,
                    c.name,
                    s.mpps,
                    s.offered,
                    s.busy * 100.0
                );
                c.samples.last_mut().unwrap().1.push(s);
            }
        }
    }

    let median = |v: Vec<f64>| Spread::of(&v).median;
    for c in &configs {
        for (flows, samples) in &c.samples {
            let mpps = Spread::of(&samples.iter().map(|s| s.mpps).collect::<Vec<_>>());
            let offered = median(samples.iter().map(|s| s.offered).collect());
            let busy = median(samples.iter().map(|s| s.busy).collect());
            let mut note = vec![if c.kind == Kind::Generator || busy >= SATURATED {
                format!(
                    "d0 NAPI {:.0}% busy; generator offered {offered:.2}",
                    busy * 100.0
                )
            } else {
                format!(
                    "GENERATOR-BOUND: CPU 0 (generator + sink) saturated first, d0 NAPI {:.0}% \
                     busy (≈ {:.1} Mpps at 100%)",
                    busy * 100.0,
                    mpps.median / busy
                )
            }];
            let forwarded: u64 = samples.iter().map(|s| s.forwarded).sum();
            let delivered: u64 = samples.iter().map(|s| s.delivered).sum();
            if forwarded > 0 {
                let lost = 1.0 - delivered as f64 / forwarded as f64;
                if lost > 0.01 {
                    note.push(format!("{:.0}% lost between d1 and the sink", lost * 100.0));
                }
            }
            if let Some(p) = samples.iter().find_map(|s| s.pinning.clone()) {
                note.push(format!("NOT PINNED: {p}"));
            }
            let net_rx: u64 = samples.iter().map(|s| s.net_rx).sum();
            if net_rx > 0 {
                note.push(format!("{net_rx} NET_RX softirqs on CPU {DIRECTOR_CPU}"));
            }
            if idle.is_none() {
                note.push("CPUs allowed to halt".into());
            }
            if !c.note.is_empty() {
                note.push(c.note.into());
            }
            report.end_to_end.push(E2eRow {
                path: c.name.into(),
                flows: *flows,
                mpps,
                x_nftables: 0.0,
                note: note.join("; "),
            });
        }
    }

    drop(generator);
    let _ = dp.shutdown(false);
    drop(pins);
    drop(idle);
    println!("  ({:.0} s)", started.elapsed().as_secs_f64());
}
