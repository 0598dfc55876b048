//! `BPF_PROG_TEST_RUN` for XDP programs, on aya's `TestRun`: run a packet through a loaded
//! program without a network and get the verdict, the rewritten packet and the kernel's own
//! timing. The fixture tests and the benchmarks share this one wrapper.

use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

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

/// `struct xdp_md` as test-run input context: only `data_end` and `ingress_ifindex` are set
/// (the kernel requires `data` and `data_meta` to be 0 and `data_end` to be the packet's size).
fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields = [0, len as u32, 0, ingress_ifindex, 0, 0];
    let mut ctx = [0u8; 24];
    for (i, f) in fields.iter().enumerate() {
        ctx[i * 4..i * 4 + 4].copy_from_slice(&f.to_ne_bytes());
    }
    ctx
}

/// Runs `packet` through the XDP program `prog` `repeat` times (≥ 1). The kernel runs the
/// program again on the same buffer, so a program that rewrites the packet sees its own output
/// from the second repetition on: repeat only what leaves the packet as it was (or use
/// `run_xdp_live`). `ingress_ifindex` (0 = the kernel's default, loopback) is what the program
/// sees as the receiving interface; it must exist in the caller's network namespace.
pub fn run_xdp(
    prog: &Xdp,
    packet: &[u8],
    repeat: u32,
    ingress_ifindex: u32,
) -> Result<Outcome, ProgramError> {
    // Room for programs that grow the packet (encapsulation).
    let mut out = vec![0u8; packet.len() + 256];
    let ctx = xdp_md(packet.len(), ingress_ifindex);
    let r = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        // Without a context the kernel reports loopback as ingress.
        ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok(Outcome {
        action: r.return_value,
        data: out,
        duration_ns: r.duration.as_nanos() as u32,
    })
}

/// Runs `packet` through `prog` `repeat` times in live-frames mode, arriving on
/// `ingress_ifindex` (required), in batches of `batch` (0: the kernel's default, 64). Every run
/// starts from the original packet, so programs that rewrite it can be repeated; the verdicts
/// are carried out for real (TX, redirect, pass to the stack). Returns the average ns per
/// packet, as the kernel measured it (program, and the transmit or pass work of each verdict).
pub fn run_xdp_live(
    prog: &Xdp,
    packet: &[u8],
    repeat: u32,
    ingress_ifindex: u32,
    batch: u32,
) -> Result<u32, ProgramError> {
    let ctx = xdp_md(packet.len(), ingress_ifindex);
    let r = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        ctx_in: Some(&ctx),
        repeat: repeat.max(1),
        attrs: TestRunAttrs::new().xdp_live_frames(batch),
        ..TestRunOptions::default()
    })?;
    Ok(r.duration.as_nanos() as u32)
}
