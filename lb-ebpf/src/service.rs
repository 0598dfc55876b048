//! Service lookup: linear probing in the live half of `SVC_TABLE`, at most
//! `SVC_MAX_PROBE` slots, an empty slot ending the search early (so most non-service packets
//! cost one probe).

use lb_common::{
    Service, SvcKey,
    size::{SVC_MAX_PROBE, SVC_SLOTS},
    svc_hash,
};

use crate::maps::SVC_TABLE;

#[inline(always)]
pub fn lookup(half: u32, key: &SvcKey) -> Option<Service> {
    let base = (half & 1) * SVC_SLOTS;
    let home = svc_hash(key);
    let want = key.as_u64();
    for i in 0..SVC_MAX_PROBE {
        let slot = SVC_TABLE.get(base + ((home + i) & (SVC_SLOTS - 1)))?;
        if slot.svc.id == 0 {
            return None;
        }
        if slot.key.as_u64() == want {
            return Some(slot.svc);
        }
    }
    None
}
