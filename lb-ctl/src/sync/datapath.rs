//! The data path's half of connection sync as the protocol's half sees it: its event
//! reader as a [`ConnSource`], its installer as a [`ConnSink`] (`dataplane::syncdp`).

use std::time::Duration;

use super::{ConnSink, ConnSource, InstallReport, SyncConn, SyncDaemon, shell::Nothing};
use crate::dataplane::{self, Dataplane, SyncEvents, SyncInstaller};

/// At most this many events per read (a few messages' worth; the ring holds 65,536).
const READ_BATCH: usize = 4096;

struct Events {
    ev: SyncEvents,
    /// The last read error, logged once until reads work again.
    failing: bool,
}

impl ConnSource for Events {
    fn read(&mut self, out: &mut Vec<SyncConn>, wait: Duration) {
        match self.ev.next_batch(READ_BATCH, wait) {
            Ok(v) => {
                self.failing = false;
                out.extend(v);
            }
            Err(e) => {
                if !self.failing {
                    log::error!("connection sync: reading the data path's events: {e:#}");
                    self.failing = true;
                }
                std::thread::sleep(wait);
            }
        }
    }

    fn lost(&self) -> u64 {
        self.ev.stale
    }
}

struct Installer(SyncInstaller);

impl ConnSink for Installer {
    fn install(&mut self, conns: &[SyncConn]) -> InstallReport {
        convert(self.0.install(conns))
    }
}

/// The data path's report in the status' terms: what was written, and every other outcome
/// by name.
fn convert(r: dataplane::InstallReport) -> InstallReport {
    let mut out = InstallReport {
        installed: r.installed,
        updated: r.updated,
        ..Default::default()
    };
    for (k, v) in [
        ("kept", r.kept),
        ("no_service", r.no_service),
        ("no_real_server", r.no_real_server),
        ("wrong_family", r.wrong_family),
        ("invalid", r.invalid),
        ("table_full", r.refused),
        ("reply_clash", r.reply_clash),
    ] {
        if v > 0 {
            out.refused.insert(k.to_string(), v);
        }
    }
    out
}

/// A sync daemon reading and installing through `dp`'s maps.
/// A data path that cannot give them (never with this build's object) still runs: the
/// roles then send nothing and refuse every install (`no_data_path`), and the error is
/// logged once, rather than a director not starting over its sync.
pub fn open(dp: &Dataplane) -> SyncDaemon {
    let source: Box<dyn ConnSource> = match dp.sync_events() {
        Ok(ev) => Box::new(Events { ev, failing: false }),
        Err(e) => {
            log::error!("connection sync: the data path's events cannot be read: {e:#}");
            Box::new(Nothing)
        }
    };
    let sink: Box<dyn ConnSink> = match dp.sync_installer() {
        Ok(i) => Box::new(Installer(i)),
        Err(e) => {
            log::error!("connection sync: the data path cannot install connections: {e:#}");
            Box::new(Nothing)
        }
    };
    SyncDaemon::new(source, sink)
}

/// `Dataplane::set_sync_master`.
pub fn set_master(dp: &mut Dataplane, on: bool) -> anyhow::Result<()> {
    dp.set_sync_master(on)
}

/// Whether the data path reports connections now (an adopted one may).
pub fn is_master(dp: &Dataplane) -> bool {
    dp.sync_master()
}
