//! `BPF_PROG_TEST_RUN` for XDP programs: run a packet through a loaded program without a
//! network, and get the verdict, the rewritten packet and the kernel's own timing. Used by the
//! fixture tests and the benchmark. aya 0.14 has no wrapper for this command.

use std::{io, os::fd::AsRawFd};

/// `enum bpf_cmd` value of `BPF_PROG_TEST_RUN`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as test-run input context.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The outcome of a test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, …).
    pub action: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// Average run time per repetition as the kernel measured it, in ns.
    pub duration_ns: u32,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// `BPF_F_TEST_XDP_LIVE_FRAMES`: every repetition gets a fresh copy of the packet and its
/// verdict is carried out (TX, redirect, pass to the stack), as on a real interface.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Runs `packet` through `prog` `repeat` times in live-frames mode, arriving on
/// `ingress_ifindex` (required), in batches of `batch` (0: the kernel's default, 64). Every
/// run starts from the original packet, so programs that rewrite it can be repeated; the
/// verdicts are carried out for real. Returns the average ns per packet, as the kernel
/// measured it (program, and the transmit or pass work of each verdict).
pub fn run_xdp_live(
    prog: &impl AsRawFd,
    packet: &[u8],
    repeat: u32,
    ingress_ifindex: u32,
    batch: u32,
) -> io::Result<u32> {
    let ctx = XdpMd {
        data_end: packet.len() as u32,
        ingress_ifindex,
        ..Default::default()
    };
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat: repeat.max(1),
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    // SAFETY: `attr` points at live buffers of the sizes given, for the duration of the call.
    unsafe { crate::bpf::sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(attr.duration)
}

/// Runs `packet` through the XDP program `prog` `repeat` times (≥ 1). The kernel runs the
/// program again on the same buffer, so a program that rewrites the packet sees its own
/// output from the second repetition on: repeat only what leaves the packet as it was (or
/// use `run_xdp_live`). `ingress_ifindex`
/// (0 = the kernel's default, loopback) is what the program sees as the receiving interface;
/// it must exist in the caller's network namespace.
pub fn run_xdp(
    prog: &impl AsRawFd,
    packet: &[u8],
    repeat: u32,
    ingress_ifindex: u32,
) -> io::Result<Outcome> {
    // Room for programs that grow the packet (encapsulation).
    let mut out = vec![0u8; packet.len() + 256];
    let ctx = XdpMd {
        data_end: packet.len() as u32,
        ingress_ifindex,
        ..Default::default()
    };
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    if ingress_ifindex != 0 {
        attr.ctx_size_in = size_of::<XdpMd>() as u32;
        attr.ctx_in = &ctx as *const XdpMd as u64;
    }
    // SAFETY: `attr` points at live buffers of the sizes given, for the duration of the call.
    unsafe { crate::bpf::sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    out.truncate(attr.data_size_out as usize);
    Ok(Outcome {
        action: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}
