//! Batched map I/O (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`), which aya 0.14 does not wrap.

use anyhow::{anyhow, bail};
use aya::maps::MapData;
use lb_common::Stats;

use super::*;
use crate::api::StatsView;

/// Every element of the per-CPU `Stats` array `map`, summed over CPUs, read with
/// `BPF_MAP_LOOKUP_BATCH` (see `update_batch`).
pub(super) fn lookup_batch_percpu(map: &MapData) -> anyhow::Result<Vec<StatsView>> {
    use std::os::fd::{AsFd, AsRawFd};
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const CHUNK: usize = 8192;
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    let mut out = Vec::new();
    let mut keys = vec![0u32; CHUNK];
    let mut values = vec![Stats::default(); CHUNK * cpus];
    let (mut in_batch, mut out_batch) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &in_batch as *const u32 as u64
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the buffers hold `count` keys and values (a value of a per-CPU map is one
        // `Stats` per possible CPU, 8-byte aligned as `Stats` is) and outlive the call.
        let r = unsafe { crate::bpf::sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        for k in 0..attr.count as usize {
            let id = keys[k] as usize;
            if out.len() <= id {
                out.resize(id + 1, StatsView::default());
            }
            out[id] = sum_stats(&values[k * cpus..(k + 1) * cpus]);
        }
        match r {
            Ok(_) => {}
            // ENOENT: the end of the array.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => bail!("BPF_MAP_LOOKUP_BATCH: {e}"),
        }
        in_batch = out_batch;
        first = false;
    }
}

/// The batch member of `union bpf_attr` (`BPF_MAP_*_BATCH`).
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `values` into the `u32` array `map` from slot `off` with one
/// `BPF_MAP_UPDATE_BATCH` (aya has no wrapper for it): a 65,537-slot Maglev table costs one
/// system call instead of 65,537.
pub(super) fn update_batch(map: &MapData, off: u32, values: &[u32]) -> anyhow::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let keys: Vec<u32> = (off..off + values.len() as u32).collect();
    let mut done = 0usize;
    while done < values.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (values.len() - done) as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the key and value buffers hold `count` elements each and outlive the call.
        let r = unsafe { crate::bpf::sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr) };
        // The kernel reports how many it wrote in `count`, also on an error.
        match r {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && attr.count > 0 => {}
            Err(e) => bail!("BPF_MAP_UPDATE_BATCH: {e}"),
        }
        done += attr.count as usize;
    }
    Ok(())
}
