//! Probe-table lookup (services in `SVC_TABLE`, NAT real servers in `NAT_RS`): linear
//! probing in the live half, at most `SVC_MAX_PROBE` slots, an empty slot ending the search
//! early (so most packets that match nothing cost one probe).

use aya_ebpf::maps::Array;
use lb_common::{Service, SvcKey, SvcSlot, probe_home, size::SVC_MAX_PROBE};

#[inline(always)]
pub fn lookup(table: &Array<SvcSlot>, slots: u32, half: u32, key: &SvcKey) -> Option<Service> {
    find(table, slots, half, key).copied()
}

/// `lookup`, answering with the service in its slot: the forwarding path reads the few
/// fields it needs in place rather than copy the whole value onto the stack (a 28-byte copy
/// in 2-byte pieces on every packet).
#[inline(always)]
pub fn find<'a>(
    table: &'a Array<SvcSlot>,
    slots: u32,
    half: u32,
    key: &SvcKey,
) -> Option<&'a Service> {
    let base = (half & 1) * slots;
    let home = probe_home(key, slots);
    for i in 0..SVC_MAX_PROBE {
        let slot = table.get(base + ((home + i) & (slots - 1)))?;
        if slot.svc.id == 0 {
            return None;
        }
        if slot.key.same(key) {
            return Some(&slot.svc);
        }
    }
    None
}
