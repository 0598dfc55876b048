//! Reference XDP programs that are not the balancer: `lb_pass` (`XDP_PASS` for every frame),
//! attached to the veth peer of a balancer interface, where a frame sent into a veth with
//! `XDP_TX` or a redirect is reliably delivered only when the peer runs an XDP program
//! (platform.md, "veth and XDP"); and `lb_macswap`, the cheapest useful forwarder (swap the
//! MACs, `XDP_TX`), the floor every data path is measured against; `lb_drop`, the sink of
//! benchmarks.
//!
//! For the end-to-end benchmark: `lb_gen`, a packet generator run with `BPF_PROG_TEST_RUN` in
//! live-frames mode; `lb_count_drop`, a sink that counts what it drops; `lb_redirect`, the
//! floor of the paths that leave by another interface (rewrite the MACs, redirect).
#![no_std]
#![no_main]

// The incremental checksum updates of the balancer (`ipv4_header` is not needed here).
#[allow(dead_code)]
mod csum;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame: the sink benchmarks send forwarded frames into, so that every path pays
/// the same (small) price for delivery.
#[xdp]
pub fn lb_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Swaps source and destination MAC and sends the frame back out.
#[xdp]
pub fn lb_macswap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    let p = start as *mut [u8; 6];
    // SAFETY: 12 bytes bounds-checked above.
    unsafe {
        let dst = *p;
        *p = *p.add(1);
        *p.add(1) = dst;
    }
    xdp_action::XDP_TX
}

/// Length of `lb_gen`'s frames: the Ethernet minimum (64 bytes on a wire, with the FCS).
const GEN_LEN: usize = 60;

/// `lb_gen`'s traffic: a template frame (Ethernet, IPv4 without options, TCP), how many flows
/// to spread it over and how fast. The user side mirrors this layout.
#[repr(C)]
pub struct Gen {
    /// The template, as the words it is stored as (word-aligned reads from the map).
    pub frame: [u32; GEN_LEN / 4],
    /// Distinct source tuples (≥ 1).
    pub flows: u32,
    /// At most one frame per this many ns (the others are dropped unsent); 0: no limit.
    pub interval_ns: u64,
}

#[map(name = "LB_GEN")]
static GEN: Array<Gen> = Array::with_max_entries(1, 0);

/// The generator's progress on one CPU.
#[repr(C)]
pub struct GenState {
    /// Frames sent so far: frame `n` belongs to flow `n % flows`.
    pub sent: u64,
    /// When the next frame is due, with `interval_ns`.
    pub next_ns: u64,
}

#[map(name = "LB_GEN_STATE")]
static GEN_STATE: PerCpuArray<GenState> = PerCpuArray::with_max_entries(1, 0);

/// Frames `lb_count_drop` dropped, per CPU.
#[map(name = "LB_SINK")]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Where `lb_redirect` sends frames, and with which MACs.
#[repr(C)]
pub struct Fwd {
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

#[map(name = "LB_FWD")]
static FWD: Array<Fwd> = Array::with_max_entries(1, 0);

/// The generator: overwrites frame `n` with the template, makes it flow `i = n % flows` (source
/// address `base + i / 64`, source port `base + i % 64`: many clients with many connections
/// each), fixes both checksums incrementally and sends it out with `XDP_TX`. With an
/// `interval_ns`, frames that come before it is due are dropped instead: a paced generator.
///
/// Run with `BPF_PROG_TEST_RUN` in live-frames mode, whose pages are recycled without being
/// initialised again: a frame may hold whatever the director or the sink left in it (a NAT
/// rewrite, a tunnel header), so every byte is written each time.
#[xdp]
pub fn lb_gen(ctx: XdpContext) -> u32 {
    let (Some(g), Some(st)) = (GEN.get(0), GEN_STATE.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let start = ctx.data();
    if start + GEN_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: per-CPU value; one program runs at a time on a CPU.
    let n = unsafe {
        if g.interval_ns != 0 {
            let now = bpf_ktime_get_ns();
            if now < (*st).next_ns {
                return xdp_action::XDP_DROP;
            }
            (*st).next_ns = now + g.interval_ns;
        }
        let n = (*st).sent;
        (*st).sent = n + 1;
        n
    };
    let i = (n % u64::from(g.flows.max(1))) as u32;
    let p = start as *mut u8;
    let words = p as *mut u32;
    let mut w = 0;
    while w < GEN_LEN / 4 {
        // SAFETY: `GEN_LEN` bytes bounds-checked above; the volatile read keeps LLVM from
        // turning the loop into a `memcpy` call; unaligned packet stores are fine on the
        // x86-64 and arm64 JITs.
        unsafe {
            let v = core::ptr::read_volatile(&g.frame[w]);
            words.add(w).write_unaligned(v);
        }
        w += 1;
    }
    // Offsets in an Ethernet + 20-byte IPv4 + TCP frame.
    // SAFETY: all within the `GEN_LEN` bytes checked above.
    unsafe {
        let ip_check = p.add(24) as *mut u16;
        let saddr = p.add(26) as *mut u32;
        let sport = p.add(34) as *mut u16;
        let tcp_check = p.add(50) as *mut u16;
        let (old_addr, old_port) = (saddr.read_unaligned(), sport.read_unaligned());
        let addr = (u32::from_be(old_addr).wrapping_add(i / 64)).to_be();
        let port = (u16::from_be(old_port).wrapping_add((i % 64) as u16)).to_be();
        saddr.write_unaligned(addr);
        sport.write_unaligned(port);
        ip_check.write_unaligned(csum::replace4(ip_check.read_unaligned(), old_addr, addr));
        let c = csum::replace4(tcp_check.read_unaligned(), old_addr, addr);
        tcp_check.write_unaligned(csum::replace2(c, old_port, port));
    }
    xdp_action::XDP_TX
}

/// Counts the frame (per CPU) and drops it: the sink of the end-to-end benchmark.
#[xdp]
pub fn lb_count_drop(_ctx: XdpContext) -> u32 {
    if let Some(c) = SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU value; one program runs at a time on a CPU.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

/// Writes the MACs of `LB_FWD` and redirects the frame to its interface: what DR does once it
/// has found the connection, without finding it.
#[xdp]
pub fn lb_redirect(ctx: XdpContext) -> u32 {
    let Some(f) = FWD.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    let w = |b: &[u8; 6], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let h = |b: &[u8; 6], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let eth = start as *mut u8;
    // SAFETY: 12 bytes bounds-checked above; three stores as in the balancer's DR (assigning
    // the `[u8; 6]` fields would compile to a `memmove` call).
    unsafe {
        (eth as *mut u32).write_unaligned(w(&f.dmac, 0));
        (eth.add(4) as *mut u16).write_unaligned(h(&f.dmac, 4));
        (eth.add(6) as *mut u16).write_unaligned(h(&f.smac, 0));
        (eth.add(8) as *mut u32).write_unaligned(w(&f.smac, 2));
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(f.ifindex, 0) as u32 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
