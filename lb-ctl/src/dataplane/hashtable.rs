//! Reading back a service's hashing table (sh/dh buckets, mh Maglev slots) from
//! `LB_SCHED_TABLE`, for the scale-out digest (`lb-ctl --digest`, crate::bgp::digest).

use std::net::IpAddr;

use anyhow::Context;

use super::Dataplane;
use crate::model::{Scheduler, ServiceKey};

/// A hashing table slot by slot: the real server (address, port) each slot sends to, `None`
/// for an empty slot.
pub type HashSlots = Vec<Option<(IpAddr, u16)>>;

impl Dataplane {
    /// The scheduler and, slot by slot, the real server (address, port) the data path's
    /// table of `key` holds — read from the map, each backend id translated to the address
    /// it stands for. `None` for an unknown service; an empty table for the schedulers
    /// without one.
    pub fn hash_table(&self, key: &ServiceKey) -> anyhow::Result<Option<(Scheduler, HashSlots)>> {
        let Some(svc) = self.state.services.get(key) else {
            return Ok(None);
        };
        let sched = svc.config.scheduler;
        if !matches!(sched, Scheduler::Mh | Scheduler::Sh | Scheduler::Dh) {
            return Ok(Some((sched, Vec::new())));
        }
        let mut out = Vec::with_capacity(svc.table_len as usize);
        for slot in svc.region.off..svc.region.off + svc.table_len {
            let id = self
                .maps
                .sched_table
                .get(&slot, 0)
                .with_context(|| format!("reading slot {slot} of {key}'s table"))?;
            out.push(
                self.state
                    .backends
                    .get(&id)
                    .map(|b| (b.dest.addr, b.dest.port)),
            );
        }
        Ok(Some((sched, out)))
    }
}
