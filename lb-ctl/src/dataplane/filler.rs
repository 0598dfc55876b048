//! Filler entries in the large hash tables the sweep reads in batches (`lb_common::filler`):
//! put in a fresh table at start, found by every sweep pass, and put back by the pass when
//! some are missing while the table is sparse, so that no batch read goes through more than a
//! few tens of thousands of empty buckets in one call.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::bail;
use aya::maps::MapData;
use lb_common::filler;

use super::*;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_NOEXIST: u64 = 1;

/// Which fillers of one table a pass has seen.
#[derive(Clone, Debug, Default)]
pub(super) struct Presence {
    seen: Vec<bool>,
    /// How many of them (an index seen twice cannot happen: keys are unique).
    pub count: usize,
}

impl Presence {
    /// For a table that should hold `expected` fillers.
    pub fn new(expected: u32) -> Self {
        Self {
            seen: vec![false; expected as usize],
            count: 0,
        }
    }

    pub fn expected(&self) -> usize {
        self.seen.len()
    }

    /// The filler of index `i` is in the table. (An index beyond those expected, left by a
    /// daemon that kept more, is counted but never put back.)
    pub fn note(&mut self, i: u32) {
        if let Some(s) = self.seen.get_mut(i as usize) {
            *s = true;
        }
        self.count += 1;
    }

    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.seen
            .iter()
            .enumerate()
            .filter(|(_, s)| !**s)
            .map(|(i, _)| i as u32)
    }
}

/// How many fillers the hash table `map` keeps (none for a table small enough to read
/// through whole in well under a millisecond).
pub(super) fn expected(map: &MapData) -> anyhow::Result<u32> {
    Ok(filler::count(map.info()?.max_entries()))
}

/// Whether fillers may be put into `map` now that a pass counted `live` entries in it: only
/// while it holds fewer than a half of one CPU's share of its elements. The kernel's LRU
/// preallocates every element and evicts only when a CPU finds no free one (with
/// `BPF_F_NO_COMMON_LRU`, in its own share of size / possible CPUs; with the common LRU, in
/// the global free list after its own 128-element stock): below that line an insert always
/// finds a free element and never evicts a live entry. Above it the table is dense enough that
/// its own entries bound the empty runs, and a filler the LRU evicts is not missed.
pub(super) fn may_add(map: &MapData, live: usize) -> anyhow::Result<bool> {
    let size = map.info()?.max_entries() as usize;
    Ok(live < size / (2 * possible_cpus()?.max(1)))
}

/// Inserts `key` → `value` into hash `map` unless the key is there (`BPF_NOEXIST`): whether
/// it was inserted.
pub(super) fn insert<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    key: &K,
    value: &V,
) -> anyhow::Result<bool> {
    /// The element member of `union bpf_attr`.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr = Attr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: BPF_NOEXIST,
    };
    // SAFETY: key and value are of the map's sizes (its types, checked at load) and outlive
    // the call.
    match unsafe { crate::bpf::sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => bail!("inserting a filler entry: {e}"),
    }
}

impl Dataplane {
    /// Puts every filler of the connection and template tables in (those already there are
    /// left): what a fresh data path gets at start. Returns how many were inserted. Only for
    /// a table with room: the daemon's sweep puts missing ones back only while the table is
    /// sparse (`may_add`).
    pub fn put_fillers(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        let conns = md(&self.maps.conns);
        for i in 0..expected(conns)? {
            n += insert(conns, &filler::conn_key(i), &filler::CONN)? as usize;
        }
        let persist = md(&self.maps.persist);
        for i in 0..expected(persist)? {
            n += insert(persist, &filler::persist_key(i), &filler::PERSIST)? as usize;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_says_which_are_missing() {
        let mut p = Presence::new(5);
        p.note(1);
        p.note(3);
        p.note(9);
        assert_eq!(p.count, 3);
        assert_eq!(p.missing().collect::<Vec<_>>(), [0, 2, 4]);
    }

    #[test]
    fn fillers_never_look_like_a_packets_key() {
        use lb_common::{Addr, FlowKey, PersistKey};
        assert_eq!(filler::count(1 << 20), 256);
        assert_eq!(filler::count((1 << 24) - 5), 4096);
        assert_eq!(filler::count(1 << 16), 0);
        for i in [0, 1, 4095] {
            let k = filler::conn_key(i);
            assert_eq!(filler::conn_index(&k), Some(i));
            // A key built as the data path builds them, even from the same addresses and
            // protocol 0, is not a filler: its padding is zero.
            let like = FlowKey::of(k.saddr, k.daddr, 0, 0, 0);
            assert!(!filler::is_conn(&like));
            assert_ne!(like, k);
            let t = filler::persist_key(i);
            assert_eq!(filler::persist_index(&t), Some(i));
            assert!(!filler::is_persist(&PersistKey {
                svc_id: 1,
                client: t.client
            }));
        }
        assert!(!filler::is_conn(&FlowKey::new(u32::MAX, 0, 0, 0, 6)));
        assert!(!filler::is_persist(&PersistKey {
            svc_id: 0,
            client: Addr::v4(0x0100_0000)
        }));
    }
}
