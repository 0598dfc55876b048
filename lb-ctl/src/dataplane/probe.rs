//! The double-buffered open-addressing tables the data path probes (`LB_SVC_TABLE`, `LB_NAT_RS`).

use aya::maps::{Array, MapData};
use lb_common::{Service, SvcKey, SvcSlot, probe_home, size};

/// One of the double-buffered open-addressing tables the data path probes (`LB_SVC_TABLE`,
/// `LB_NAT_RS`): two halves of `slots` slots, `Settings::svc_half` naming the live one.
pub(super) struct ProbeTable {
    pub(super) map: Array<MapData, SvcSlot>,
    pub(super) slots: u32,
    /// What each half holds.
    pub(super) halves: [Vec<SvcSlot>; 2],
}

impl ProbeTable {
    pub(super) fn open(
        map: Array<MapData, SvcSlot>,
        slots: u32,
        adopted: bool,
    ) -> anyhow::Result<Self> {
        let mut halves = [
            vec![SvcSlot::default(); slots as usize],
            vec![SvcSlot::default(); slots as usize],
        ];
        if adopted {
            for (h, half) in halves.iter_mut().enumerate() {
                for (i, slot) in half.iter_mut().enumerate() {
                    *slot = map.get(&(h as u32 * slots + i as u32), 0)?;
                }
            }
        }
        Ok(Self { map, slots, halves })
    }

    /// Lays `entries` out by linear probing from `probe_home`; `Err` names a key that would
    /// sit further from home than the data path probes.
    pub(super) fn build(
        entries: impl IntoIterator<Item = (SvcKey, Service)>,
        slots: u32,
    ) -> Result<Vec<SvcSlot>, SvcKey> {
        let mut t = vec![SvcSlot::default(); slots as usize];
        let mut seen = std::collections::HashSet::new();
        for (key, svc) in entries {
            if !seen.insert(key) {
                continue;
            }
            let home = probe_home(&key, slots);
            let slot = (0..size::SVC_MAX_PROBE)
                .map(|i| ((home + i) & (slots - 1)) as usize)
                .find(|&i| t[i].svc.id == 0)
                .ok_or(key)?;
            t[slot] = SvcSlot { key, svc };
        }
        Ok(t)
    }

    pub(super) fn write_half(&mut self, half: usize, table: &[SvcSlot]) -> anyhow::Result<()> {
        for (i, slot) in table.iter().enumerate() {
            if self.halves[half][i] != *slot {
                self.map
                    .set(half as u32 * self.slots + i as u32, *slot, 0)?;
                self.halves[half][i] = *slot;
            }
        }
        Ok(())
    }
}
