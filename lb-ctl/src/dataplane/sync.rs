//! Applying a sync plan to the maps (see `plan`), keeping backends' paths current, and
//! releasing what nothing uses any more.

use std::time::Instant;

use anyhow::{Context, bail};
use lb_common::{Backend, SvcSlot, settings_flags, size};

use super::*;
use crate::{
    model::{Model, Scheduler},
    sched,
};

impl Dataplane {
    /// Checks that the data path can run `model` (schedulers and forwarding methods it
    /// implements), without changing anything.
    pub fn check(model: &Model) -> anyhow::Result<()> {
        for (k, e) in &model.services {
            if !sched::supported(e.config.scheduler) {
                bail!(
                    "service {k}: scheduler {} is not supported",
                    e.config.scheduler
                );
            }
            let scans = matches!(
                e.config.scheduler,
                Scheduler::Lc
                    | Scheduler::Wlc
                    | Scheduler::Sed
                    | Scheduler::Nq
                    | Scheduler::Fo
                    | Scheduler::Ovf
                    | Scheduler::Lblc
                    | Scheduler::Lblcr
            );
            if scans && e.dests.len() > size::MAX_SCAN as usize {
                bail!(
                    "service {k}: {} real servers, but scheduler {} scans them all for each \
                     new connection and takes at most {}",
                    e.dests.len(),
                    e.config.scheduler,
                    size::MAX_SCAN
                );
            }
        }
        Ok(())
    }

    /// Brings the maps to match `model` as one diff. The whole change is planned first (ids,
    /// table slots, see `plan`); if anything does not fit, nothing is written.
    pub fn sync(&mut self, model: &Model, paths: &Paths) -> anyhow::Result<()> {
        let plan = plan::plan(
            &self.state,
            model,
            paths,
            self.opts.mh_table_size,
            self.opts.sched_table_size,
            Instant::now(),
        )?;
        self.apply(plan)
    }

    /// Makes the writes of `plan`, in an order no packet can trip over, then adopts its state.
    fn apply(&mut self, plan: Plan) -> anyhow::Result<()> {
        let Plan {
            fresh_backends,
            backend_writes,
            fresh_services,
            table_writes,
            svc_info_writes,
            svc_table,
            rs_table,
            has_port0,
            has_nat,
            trash_writes,
            state,
        } = plan;
        for id in &fresh_backends {
            self.maps.backend_stats.set(*id, zeros()?, 0)?;
        }
        for (id, v) in &backend_writes {
            self.maps.backends.set(*id, *v, 0)?;
        }
        for id in &fresh_services {
            self.maps.svc_stats.set(*id, zeros()?, 0)?;
        }
        for (key, region, table) in &table_writes {
            update_batch(
                aya::maps::IterableMap::map(&self.maps.sched_table),
                region.off,
                table,
            )
            .with_context(|| format!("writing the scheduling table of {key}"))?;
            // IPVS restarts its wrr walk when destinations change; so do we.
            self.maps.cursor.set(state.services[key].id, 0, 0)?;
        }
        for (id, v) in &svc_info_writes {
            self.maps.svc_info.set(*id, *v, 0)?;
        }
        let mut flags =
            self.settings.flags & !(settings_flags::HAS_PORT0 | settings_flags::HAS_NAT);
        if has_port0 {
            flags |= settings_flags::HAS_PORT0;
        }
        if has_nat {
            flags |= settings_flags::HAS_NAT;
        }
        self.settings.flags = flags;
        self.publish(&svc_table, &rs_table)?;
        for (id, v) in &trash_writes {
            self.maps.backends.set(*id, *v, 0)?;
        }
        self.state = state;
        Ok(())
    }

    /// Makes the tables live: writes the slots of the idle halves that differ, then flips
    /// `svc_half` once for both. Nothing is written when the live halves already match.
    pub(super) fn publish(&mut self, svc: &[SvcSlot], rs: &[SvcSlot]) -> anyhow::Result<()> {
        let live = self.settings.svc_half as usize & 1;
        if self.svc_table.halves[live] == svc && self.nat_rs.halves[live] == rs {
            return Ok(());
        }
        let idle = live ^ 1;
        // A packet that read `svc_half` just before the last flip may still probe the idle
        // half; it is done within microseconds, the grace is generous.
        let since = self.half_retired_at.elapsed();
        if since < SVC_HALF_GRACE {
            std::thread::sleep(SVC_HALF_GRACE - since);
        }
        self.svc_table.write_half(idle, svc)?;
        self.nat_rs.write_half(idle, rs)?;
        self.settings.svc_half = idle as u32;
        self.write_settings()?;
        self.half_retired_at = Instant::now();
        Ok(())
    }

    /// Rewrites backends whose path (interface, MACs) changed.
    pub fn refresh_paths(&mut self, paths: &Paths) -> anyhow::Result<usize> {
        let mut n = 0;
        for (id, b) in self.state.backends.iter_mut() {
            if b.trashed_at.is_some() {
                continue;
            }
            let Some(svc) = self.state.services.get(&b.svc) else {
                continue;
            };
            let v = plan::backend_value(&svc.config, svc.id, &b.dest, true, paths);
            if v != b.written {
                self.maps.backends.set(*id, v, 0)?;
                b.written = v;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Releases replaced tables and trashed backends that nothing uses any more.
    pub fn collect_garbage(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        self.state.release_retired(now);
        // A deleted backend is forgotten once nothing uses it: no connection, no template.
        let dead: Vec<u32> = self
            .state
            .backends
            .iter()
            .filter(|(id, b)| {
                b.trashed_at
                    .is_some_and(|t| now.duration_since(t) >= TRASH_GRACE)
                    && {
                        let c = self.conn_counts(**id);
                        c.active + c.inactive + c.persist == 0
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.state.backends.remove(&id);
            self.maps.backends.set(id, Backend::default(), 0)?;
            self.state.be_ids.release(id);
        }
        Ok(())
    }
}
