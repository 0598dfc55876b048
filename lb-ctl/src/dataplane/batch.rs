//! Batched map I/O (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`), which aya 0.14 does not wrap.

use anyhow::bail;
use aya::maps::MapData;
use lb_common::Stats;

use super::*;
use crate::api::StatsView;

pub(super) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
pub(super) const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Where a `BPF_MAP_LOOKUP_BATCH` walk is: the next bucket (hash maps) or index (arrays),
/// which the kernel writes as a `u32`; kept in 8 bytes, more than it needs.
#[derive(Default)]
pub(super) struct Cursor {
    next: u64,
    started: bool,
}

impl Cursor {
    /// The next bucket (or index) the walk reads: for a hash map, how far it has gone through
    /// the bucket array, empty buckets included.
    pub(super) fn position(&self) -> u64 {
        if self.started { self.next } else { 0 }
    }
}

/// One `BPF_MAP_LOOKUP_BATCH`: up to `count` elements of `map` after `cursor` into `keys` and
/// `values`, moving the cursor on. Returns how many were read and whether the map's end was
/// reached (the kernel's ENOENT, which may come with the last elements). None read and the end
/// not reached: the next bucket holds more than `count` elements (the kernel's ENOSPC; the
/// cursor stays where it was): ask again for more.
///
/// # Safety
/// `keys` and `values` hold at least `count` keys and values of `map`'s sizes (a per-CPU
/// map's value is one per possible CPU).
pub(super) unsafe fn lookup_chunk<K, V>(
    map: &MapData,
    cursor: &mut Cursor,
    keys: &mut [K],
    values: &mut [V],
    count: u32,
) -> anyhow::Result<(usize, bool)> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut out_batch = 0u64;
    let mut attr = BatchAttr {
        in_batch: if cursor.started {
            &cursor.next as *const u64 as u64
        } else {
            0
        },
        out_batch: &mut out_batch as *mut u64 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the caller vouches for the buffers; the cursors outlive the call.
    let r = unsafe { crate::bpf::sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
    if let Err(e) = &r
        && e.raw_os_error() == Some(libc::ENOSPC)
    {
        return Ok((0, false));
    }
    cursor.next = out_batch;
    cursor.started = true;
    match r {
        Ok(_) => Ok((attr.count as usize, false)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((attr.count as usize, true)),
        Err(e) => bail!("BPF_MAP_LOOKUP_BATCH: {e}"),
    }
}

/// One `BPF_MAP_UPDATE_BATCH` of `values` into the slots `keys` of array `map`; returns how
/// many the kernel wrote (it says so also when a signal interrupted it part way).
pub(super) fn update_chunk<V: aya::Pod>(
    map: &MapData,
    keys: &[u32],
    values: &[V],
) -> anyhow::Result<usize> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the key and value buffers hold `count` elements each and outlive the call.
    let r = unsafe { crate::bpf::sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr) };
    match r {
        Ok(_) => Ok(attr.count as usize),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted && attr.count > 0 => {
            Ok(attr.count as usize)
        }
        Err(e) => bail!("BPF_MAP_UPDATE_BATCH: {e}"),
    }
}

/// Every element of the per-CPU `Stats` array `map`, summed over CPUs, read with
/// `BPF_MAP_LOOKUP_BATCH` (see `update_batch`).
pub(super) fn lookup_batch_percpu(map: &MapData) -> anyhow::Result<Vec<StatsView>> {
    const CHUNK: usize = 8192;
    let cpus = possible_cpus()?;
    let mut out = Vec::new();
    let mut keys = vec![0u32; CHUNK];
    let mut values = vec![Stats::default(); CHUNK * cpus];
    let mut cursor = Cursor::default();
    loop {
        // SAFETY: the buffers hold `CHUNK` keys and values (a value of a per-CPU map is one
        // `Stats` per possible CPU, 8-byte aligned as `Stats` is).
        let (n, end) =
            unsafe { lookup_chunk(map, &mut cursor, &mut keys, &mut values, CHUNK as u32) }?;
        for k in 0..n {
            let id = keys[k] as usize;
            if out.len() <= id {
                out.resize(id + 1, StatsView::default());
            }
            out[id] = sum_stats(&values[k * cpus..(k + 1) * cpus]);
        }
        if end {
            return Ok(out);
        }
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
    let keys: Vec<u32> = (off..off + values.len() as u32).collect();
    let mut done = 0usize;
    while done < values.len() {
        done += update_chunk(map, &keys[done..], &values[done..])?;
    }
    Ok(())
}
