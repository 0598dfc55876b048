//! The data path's half of connection sync as the protocol's half sees it: its event
//! reader as a [`ConnSource`], its installer as a [`ConnSink`] (`dataplane::syncdp`).

use super::{ConnSink, ConnSource, SyncDaemon, shell::Nothing};
use crate::dataplane::Dataplane;

/// A sync daemon reading and installing through `dp`'s maps.
pub fn open(_dp: &Dataplane) -> anyhow::Result<SyncDaemon> {
    // TEMPORARY until the data path's half (branch syncdp) is merged.
    let source: Box<dyn ConnSource> = Box::new(Nothing);
    let sink: Box<dyn ConnSink> = Box::new(Nothing);
    Ok(SyncDaemon::new(source, sink))
}

/// `Dataplane::set_sync_master`.
pub fn set_master(_dp: &mut Dataplane, _on: bool) -> anyhow::Result<()> {
    Ok(())
}

/// Whether the data path reports connections now (an adopted one may).
pub fn is_master(_dp: &Dataplane) -> bool {
    false
}
