//! The control plane's record of what the maps hold: service and backend ids, scheduling-table
//! regions, and per-service/per-backend state.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use lb_common::Backend;

use super::TABLE_GRACE;

use crate::{
    model::{DestConfig, SchedFlags, Scheduler, ServiceConfig, ServiceKey},
    sched::Member,
};

/// A slice of `LB_SCHED_TABLE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Region {
    pub(super) off: u32,
    pub(super) len: u32,
}

/// First-fit allocator of `LB_SCHED_TABLE` slots (slot 0 is never handed out).
#[derive(Clone, Debug)]
pub(super) struct RegionAlloc {
    /// Free extents, sorted by offset, never adjacent.
    pub(super) free: Vec<Region>,
}

impl RegionAlloc {
    pub(super) fn new(size: u32) -> Self {
        Self {
            free: vec![Region {
                off: 1,
                len: size.saturating_sub(1),
            }],
        }
    }

    pub(super) fn alloc(&mut self, len: u32) -> Option<Region> {
        if len == 0 {
            return Some(Region::default());
        }
        let i = self.free.iter().position(|r| r.len >= len)?;
        let r = Region {
            off: self.free[i].off,
            len,
        };
        self.free[i].off += len;
        self.free[i].len -= len;
        if self.free[i].len == 0 {
            self.free.remove(i);
        }
        Some(r)
    }

    /// Marks `r` as used (adoption of pinned tables). Returns false if it was not free.
    pub(super) fn take(&mut self, r: Region) -> bool {
        if r.len == 0 {
            return true;
        }
        let Some(i) = self
            .free
            .iter()
            .position(|f| f.off <= r.off && r.off + r.len <= f.off + f.len)
        else {
            return false;
        };
        let f = self.free.remove(i);
        if r.off + r.len < f.off + f.len {
            self.free.insert(
                i,
                Region {
                    off: r.off + r.len,
                    len: f.off + f.len - (r.off + r.len),
                },
            );
        }
        if f.off < r.off {
            self.free.insert(
                i,
                Region {
                    off: f.off,
                    len: r.off - f.off,
                },
            );
        }
        true
    }

    pub(super) fn release(&mut self, r: Region) {
        if r.len == 0 {
            return;
        }
        let i = self.free.partition_point(|f| f.off < r.off);
        self.free.insert(i, r);
        // Merge with the neighbours.
        if i + 1 < self.free.len() && self.free[i].off + self.free[i].len == self.free[i + 1].off {
            self.free[i].len += self.free[i + 1].len;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].off + self.free[i - 1].len == self.free[i].off {
            self.free[i - 1].len += self.free[i].len;
            self.free.remove(i);
        }
    }
}

/// Ids `1..max` (0 is "unset" in the array maps).
#[derive(Clone, Debug)]
pub(super) struct IdPool {
    pub(super) used: Vec<bool>,
    /// Where the next search starts: ids are handed out in order, so a sync that adds many
    /// real servers does not rescan the ids it just took.
    pub(super) next: usize,
}

impl IdPool {
    pub(super) fn new(max: u32) -> Self {
        let mut used = vec![false; max as usize];
        used[0] = true;
        Self { used, next: 1 }
    }
    pub(super) fn alloc(&mut self) -> Option<u32> {
        let n = self.used.len();
        let i = (self.next..n)
            .chain(1..self.next.min(n))
            .find(|&i| !self.used[i])?;
        self.used[i] = true;
        self.next = i + 1;
        Some(i as u32)
    }
    pub(super) fn take(&mut self, id: u32) {
        if let Some(u) = self.used.get_mut(id as usize) {
            *u = true;
        }
    }
    pub(super) fn release(&mut self, id: u32) {
        if id != 0
            && let Some(u) = self.used.get_mut(id as usize)
        {
            *u = false;
        }
    }
}

pub(super) type DestKey = (IpAddr, u16);

#[derive(Clone, Debug)]
pub(super) struct SvcState {
    pub(super) id: u32,
    pub(super) config: ServiceConfig,
    /// Backend ids in IPVS list order: the most recently added destination first.
    pub(super) members: Vec<(DestKey, u32)>,
    pub(super) region: Region,
    /// What `region` holds: the scheduler's table (`table_len` slots), then the members.
    pub(super) table: Vec<u32>,
    pub(super) table_len: u32,
    /// What `table` was built from (scheduler, flags, mh size, members): an unchanged
    /// service is not rebuilt (a Maglev table takes milliseconds).
    pub(super) built_from: Option<(Scheduler, SchedFlags, u32, Vec<Member>)>,
}

#[derive(Clone, Debug)]
pub(super) struct BeState {
    pub(super) svc: ServiceKey,
    pub(super) dest: DestConfig,
    /// Deleted (IPVS trash): kept while connections may point at it, dropped packets.
    pub(super) trashed_at: Option<Instant>,
    /// The value last written to `LB_BACKENDS`.
    pub(super) written: Backend,
}

#[derive(Clone, Debug)]
pub(super) struct State {
    pub(super) services: BTreeMap<ServiceKey, SvcState>,
    pub(super) backends: BTreeMap<u32, BeState>,
    pub(super) svc_ids: IdPool,
    pub(super) be_ids: IdPool,
    pub(super) regions: RegionAlloc,
    /// Replaced tables, released after `TABLE_GRACE`.
    pub(super) retired: Vec<(Instant, Region)>,
}

impl State {
    /// Nothing allocated: ids `1..max_services` and `1..max_backends`, and the scheduling-table
    /// map's `sched_slots` slots (slot 0 never handed out).
    pub(super) fn new(max_services: u32, max_backends: u32, sched_slots: u32) -> Self {
        Self {
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            svc_ids: IdPool::new(max_services),
            be_ids: IdPool::new(max_backends),
            regions: RegionAlloc::new(sched_slots),
            retired: Vec::new(),
        }
    }

    /// Frees the regions of tables replaced at least `TABLE_GRACE` before `now`.
    pub(super) fn release_retired(&mut self, now: Instant) {
        let (old, keep): (Vec<_>, Vec<_>) = self
            .retired
            .drain(..)
            .partition(|(t, _)| now.duration_since(*t) >= TABLE_GRACE);
        self.retired = keep;
        for (_, r) in old {
            self.regions.release(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_allocate_release_and_merge() {
        let mut a = RegionAlloc::new(101);
        let r1 = a.alloc(40).unwrap();
        let r2 = a.alloc(40).unwrap();
        assert_eq!((r1.off, r2.off), (1, 41));
        assert!(a.alloc(30).is_none());
        a.release(r1);
        assert_eq!(a.alloc(30).unwrap().off, 1);
        a.release(Region { off: 1, len: 30 });
        a.release(r2);
        assert_eq!(a.free, vec![Region { off: 1, len: 100 }]);
    }

    #[test]
    fn regions_take_splits_free_space() {
        let mut a = RegionAlloc::new(101);
        assert!(a.take(Region { off: 10, len: 5 }));
        assert!(!a.take(Region { off: 12, len: 5 }));
        assert_eq!(
            a.free,
            vec![Region { off: 1, len: 9 }, Region { off: 15, len: 86 }]
        );
    }

    #[test]
    fn ids_skip_zero() {
        let mut p = IdPool::new(3);
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), Some(2));
        assert_eq!(p.alloc(), None);
        p.release(1);
        assert_eq!(p.alloc(), Some(1));
    }
}
