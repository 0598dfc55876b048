//! The embryonic-connection table (`maps::EMBRYO`): an array of one-cache-line slots, each
//! key in the slot its hash picks (`lb_common::embryo` has the layout and the protocol).
//!
//! Why not the LRU hash it replaces: a SYN's insert there cost ~900 ns (the kernel's
//! `htab_lru_map_update_elem` and `bpf_lru_pop_free`, cold list nodes either way), most of
//! a new flow. Here it is a hash, an inlined array lookup and a few stores. Collisions
//! overwrite (newest wins), which is what an LRU does to its oldest entry when full; an
//! established connection is never here, so a flood still reaches nothing but embryos.

use lb_common::{
    Conn, EmbryoSlot, FlowKey, TIMEOUT_UDP, conn_flags, embryo as e, proto, tcp_state,
};

use crate::maps::{EMBRYO, TIMEOUTS};

/// Slots − 1 (a power of two of slots), set by the loader (`EbpfLoader::set_global`) from
/// the map's size: read-only data, so the verifier knows it as a constant.
#[unsafe(no_mangle)]
static EMBRYO_MASK: u32 = 0;

const NS: u64 = 1_000_000_000;

#[inline(always)]
fn mask() -> u32 {
    // SAFETY: a plain read of a global; volatile so that the compiler does not fold the
    // placeholder value in.
    unsafe { core::ptr::read_volatile(&EMBRYO_MASK) }
}

/// Atomically replaces `*p` with `new` if it holds `old`; true if it did.
#[inline(always)]
unsafe fn cas(p: *mut u64, old: u64, new: u64) -> bool {
    let mut r0 = old;
    // SAFETY: `p` is valid for an 8-byte atomic access (caller).
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") r0,
            options(nostack),
        );
    }
    r0 == old
}

/// Whether slot key `s` is `k`, word by word (a derived comparison of the arrays could
/// become a `bcmp` call; or-ing the differences without branches kept every word in a
/// register at once and overflowed `lb_xdp6`'s stack).
#[inline(always)]
unsafe fn same_key(s: *const FlowKey, k: &FlowKey) -> bool {
    // SAFETY: `s` points into a map value (caller); volatile reads, one word each.
    unsafe {
        let a = core::ptr::addr_of!((*s).saddr.w) as *const u32;
        let b = core::ptr::addr_of!((*s).daddr.w) as *const u32;
        let mut i = 0;
        while i < 4 {
            if a.add(i).read_volatile() != k.saddr.w[i] || b.add(i).read_volatile() != k.daddr.w[i]
            {
                return false;
            }
            i += 1;
        }
        core::ptr::addr_of!((*s).sport).read_volatile() == k.sport
            && core::ptr::addr_of!((*s).dport).read_volatile() == k.dport
            && core::ptr::addr_of!((*s).proto).read_volatile() == k.proto
    }
}

/// Whether slot `s` holds `key` (of hash `h`) with a check word that matches: that word.
#[inline(always)]
fn holds(s: *mut EmbryoSlot, key: &FlowKey, h: u64) -> Option<u64> {
    // SAFETY: pointer into the map value; the check word first, then the fields it covers.
    unsafe {
        let c = core::ptr::addr_of!((*s).check).read_volatile();
        if c == e::EMPTY || c == e::BUSY || !same_key(core::ptr::addr_of!((*s).key), key) {
            return None;
        }
        let backend = core::ptr::addr_of!((*s).conn.backend).read_volatile();
        let flags = core::ptr::addr_of!((*s).conn.flags).read_volatile();
        if e::check(h, backend, flags & conn_flags::REPLY != 0) != c {
            return None;
        }
        Some(c)
    }
}

/// The slot of its bucket holding `key` (of hash `h`), its check word and its number in
/// the bucket.
#[inline(always)]
fn lookup(key: &FlowKey, h: u64) -> Option<(*mut EmbryoSlot, u64, u32)> {
    let base = e::bucket(h, mask());
    let mut i = 0;
    while i < e::WAYS {
        if let Some(s) = EMBRYO.get_ptr_mut(base + i)
            && let Some(c) = holds(s, key, h)
        {
            return Some((s, c, i));
        }
        i += 1;
    }
    None
}

/// Whether embryo `c` (not a NAT reply entry) has been idle past its state's timeout: such a
/// slot is empty to every reader (the sweep clears it later).
#[inline(always)]
fn expired(c: *const Conn, tcp: bool, now: u64) -> bool {
    // SAFETY: pointer into the map value.
    let (state, flags, seen) = unsafe { ((*c).state, (*c).flags, (*c).last_seen_ns) };
    if flags & conn_flags::REPLY != 0 {
        // Kept while its connection is: the sweep decides (`sweep::check_conn`).
        return false;
    }
    let idx = if !tcp {
        TIMEOUT_UDP
    } else if (state as usize) < tcp_state::COUNT {
        state as u32
    } else {
        tcp_state::CLOSE as u32
    };
    let timeout = TIMEOUTS.get(idx).copied().unwrap_or(0) as u64 * NS;
    now.saturating_sub(seen) >= timeout
}

/// The live embryo of `key` (its slot intact and not idle past its timeout).
#[inline(always)]
pub fn get(key: &FlowKey, now: u64) -> Option<*mut Conn> {
    let (s, _, _) = lookup(key, e::hash(key))?;
    // SAFETY: pointer into the map value.
    let c = unsafe { core::ptr::addr_of_mut!((*s).conn) };
    if expired(c, key.proto == proto::TCP, now) {
        return None;
    }
    Some(c)
}

/// The embryo of `key` whether or not it has expired (what the sweep decides about).
#[inline(always)]
pub fn find(key: &FlowKey) -> Option<*mut Conn> {
    let (s, _, _) = lookup(key, e::hash(key))?;
    // SAFETY: pointer into the map value.
    Some(unsafe { core::ptr::addr_of_mut!((*s).conn) })
}

/// Empties the slot of `key` if it still holds it (promotion, expiry, a deleted server):
/// the check word is swapped against the one seen, so a connection another CPU wrote into
/// the slot since stays.
#[inline(always)]
pub fn clear(key: &FlowKey) {
    if let Some((s, c, _)) = lookup(key, e::hash(key)) {
        // SAFETY: pointer into the map value, 8-aligned.
        let _ = unsafe { cas(core::ptr::addr_of_mut!((*s).check), c, e::EMPTY) };
    }
}

/// Starts loading the lines of `key`'s bucket (a SYN's, which `put` will read and write
/// once it is scheduled): the loads are independent, so their misses overlap one another and
/// the work that follows (the `CONNS` lookup, the scheduler) instead of coming one after
/// another inside `put`.
#[inline(always)]
pub fn touch(key: &FlowKey) {
    let base = e::bucket(e::hash(key), mask());
    let mut i = 0;
    while i < e::WAYS {
        if let Some(s) = EMBRYO.get_ptr(base + i) {
            // SAFETY: pointer into the map value; the value read is not needed.
            let _ = unsafe { core::ptr::addr_of!((*s).check).read_volatile() };
        }
        i += 1;
    }
}

/// What `put` did.
pub enum Put {
    /// The slot now holds the new embryo.
    Stored,
    /// The slot holds a live embryo of the same key (a retransmitted SYN, or another CPU's
    /// SYN of the same connection a moment ago): nothing written.
    Exists(*mut Conn),
    /// Another CPU is writing the slot right now: nothing written.
    Busy,
}

/// Records embryo `key` → `v` in its bucket unless a live one of the same key is there (the
/// insert without overwrite of a hash map): over its own expired slot, else in an empty
/// slot, else over the least recently seen (a flood's spoofed SYNs replace each other before
/// they replace a handshake in progress).
#[inline(always)]
pub fn put(key: &FlowKey, v: &Conn, now: u64) -> Put {
    put_inline(key, v, now).0
}

#[inline(always)]
fn put_inline(key: &FlowKey, v: &Conn, now: u64) -> (Put, u32) {
    let h = e::hash(key);
    let base = e::bucket(h, mask());
    // The slot to take, by its number in the bucket (`WAYS`: none), and its check word.
    let (mut victim, mut old) = (e::WAYS, 0);
    if let Some((s, c, at)) = lookup(key, h) {
        // SAFETY: pointer into the map value.
        let conn = unsafe { core::ptr::addr_of_mut!((*s).conn) };
        if !expired(conn, key.proto == proto::TCP, now) {
            return (Put::Exists(conn), base + at);
        }
        (victim, old) = (at, c);
    } else {
        // Rank 0 for an empty slot, else 1 + when it was last seen; busy ones are skipped.
        let mut oldest = u64::MAX;
        let mut i = 0;
        while i < e::WAYS {
            if let Some(s) = EMBRYO.get_ptr_mut(base + i) {
                // SAFETY: pointer into the map value.
                let (c, seen) = unsafe {
                    (
                        core::ptr::addr_of!((*s).check).read_volatile(),
                        core::ptr::addr_of!((*s).conn.last_seen_ns).read_volatile(),
                    )
                };
                let rank = if c == e::EMPTY {
                    0
                } else {
                    seen.saturating_add(1)
                };
                if c != e::BUSY && rank < oldest {
                    (victim, old, oldest) = (i, c, rank);
                }
            }
            i += 1;
        }
    }
    let c = old;
    let Some(s) = EMBRYO
        .get_ptr_mut(base + victim)
        .filter(|_| victim < e::WAYS)
    else {
        return (Put::Busy, 0);
    };
    // SAFETY: pointer into the map value; fields written one by one, the check word last.
    unsafe {
        // Claimed against the word read: if another CPU claimed or wrote it since, it wins.
        if !cas(core::ptr::addr_of_mut!((*s).check), c, e::BUSY) {
            return (Put::Busy, 0);
        }
        // Word by word (a struct copy can become a `memcpy` call).
        let d = core::ptr::addr_of_mut!((*s).key) as *mut u32;
        let k = key as *const FlowKey as *const u32;
        let mut i = 0;
        while i < core::mem::size_of::<FlowKey>() / 4 {
            d.add(i).write_volatile(k.add(i).read());
            i += 1;
        }
        let conn = core::ptr::addr_of_mut!((*s).conn);
        (*conn).backend = v.backend;
        (*conn).state = v.state;
        (*conn).flags = v.flags;
        (*conn)._pad = v._pad;
        (*conn).last_seen_ns = v.last_seen_ns;
        core::ptr::addr_of_mut!((*s).check).write_volatile(e::check(
            h,
            v.backend,
            v.flags & conn_flags::REPLY != 0,
        ));
    }
    (Put::Stored, 0)
}
