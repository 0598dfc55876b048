//! The IPVS schedulers as the control plane sees them: the tables the data path reads, and a
//! reference model of every scheduler that says which server IPVS (and our XDP program) picks
//! for a new connection.
//!
//! Destinations are in IPVS list order: the most recently added first (`list_add_rcu` at the
//! head in `__ip_vs_update_dest`). Each model below follows one kernel function of
//! `net/netfilter/ipvs/ip_vs_*.c`, named in its comment; where the data path cannot do what
//! the kernel does (bounded loops, fixed-size map values, no timers), the difference is
//! written on [`Model`].
//!
//! - rr and wrr are sequences the data path walks with one cursor: rr starts after the list
//!   head, and wrr is `ip_vs_wrr_schedule` unrolled: the current weight `cw` starts at the
//!   largest weight, steps down by the gcd of the weights, and each pass takes, in list order,
//!   every destination whose weight is at least `cw`. Weight 0 gets no new connections.
//! - sh and dh are 256-bucket tables (`ip_vs_sh_reassign`, `ip_vs_dh_reassign`), mh a Maglev
//!   lookup table (`ip_vs_mh_populate`), all indexed with the hashes of `lb_common::hash`,
//!   which the data path uses too.
//! - lc, wlc, sed, nq, fo, ovf, lblc and lblcr scan the members live, with the connection
//!   counts of the moment; they have no table.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_common::{
    hash::{mh_hash, mh_server, sh_bucket},
    size::{LBLCR_SET, MAX_SCAN, MAX_SEQUENCE, SH_BUCKETS},
};

use crate::model::{SchedFlags, Scheduler};

/// One destination as schedulers see it, in IPVS list order (newest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Backend id (never 0: tables use 0 for "none").
    pub id: u32,
    /// Real server address and port: the Maglev permutation is derived from them.
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    /// IPVS `activeconns` and `inactconns`.
    pub active: u32,
    pub inactive: u32,
    /// `IP_VS_DEST_F_OVERLOAD`: set by the connection thresholds (`-x`/`-y`).
    pub overloaded: bool,
}

impl Member {
    /// A member with no connections and not overloaded.
    pub const fn new(id: u32, addr: Ipv4Addr, port: u16, weight: u32) -> Member {
        Member {
            id,
            addr,
            port,
            weight,
            active: 0,
            inactive: 0,
            overloaded: false,
        }
    }
}

/// lblc entries unused this long are gone (IPVS sysctl `lblc_expiration`, default 24 h).
pub const LBLC_EXPIRATION: u64 = 24 * 60 * 60;
/// An lblcr set unchanged for longer than this loses its most loaded server (IPVS sysctl
/// `lblcr_expiration`, default 24 h); an lblcr entry unused this long is gone.
pub const LBLCR_EXPIRATION: u64 = 24 * 60 * 60;
/// How many alternatives the sh/mh fallback tries after the hashed server (IPVS walks the
/// whole table: 256 buckets for sh, M slots for mh). The data path needs a bounded loop, and
/// with at most a few servers down, 32 tries miss a live one only if nearly all are down.
pub const FALLBACK_TRIES: u32 = 32;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The rr sequence: every destination with a positive weight, once.
pub fn rr(members: &[Member]) -> Vec<u32> {
    members
        .iter()
        .filter(|m| m.weight > 0)
        .map(|m| m.id)
        .collect()
}

/// The wrr sequence, exactly as IPVS's wrr hands destinations out from a fresh start.
///
/// Its length is Σw/gcd(w). Weights so large and coprime that it would exceed
/// `MAX_SEQUENCE` are scaled down proportionally first (ratios kept to within
/// 1/`MAX_SEQUENCE` of the total); IPVS has no such table.
pub fn wrr(members: &[Member]) -> Vec<u32> {
    let live: Vec<Member> = members.iter().copied().filter(|m| m.weight > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    let scaled = scale_to_fit(&live);
    let g = scaled.iter().fold(0, |g, m| gcd(g, m.weight));
    let max = scaled.iter().map(|m| m.weight).max().unwrap_or(0);
    let mut seq = Vec::new();
    // cw takes the values max, max-g, …, g (IPVS: `mw = max - (di - 1)`, then down by di
    // while positive; with every weight a multiple of g that is the same set of passes).
    let mut cw = max;
    while cw > 0 {
        seq.extend(scaled.iter().filter(|m| m.weight >= cw).map(|m| m.id));
        cw = cw.saturating_sub(g);
    }
    seq
}

fn scale_to_fit(live: &[Member]) -> Vec<Member> {
    let g = live.iter().fold(0, |g, m| gcd(g, m.weight));
    let total: u64 = live.iter().map(|m| u64::from(m.weight / g)).sum();
    if total <= u64::from(MAX_SEQUENCE) {
        return live.to_vec();
    }
    live.iter()
        .map(|m| Member {
            weight: ((u64::from(m.weight) * u64::from(MAX_SEQUENCE) / 2 / total.max(1)) as u32)
                .max(1),
            ..*m
        })
        .collect()
}

/// The 256 sh buckets, filled as `ip_vs_sh_reassign` does: walk the list round and round,
/// each destination taking `weight` consecutive buckets before the next one's turn. A
/// destination of weight 0 still takes one bucket per turn (the kernel moves on once
/// `++count >= weight`), where the lookup finds it unavailable.
pub fn sh_table(members: &[Member]) -> Vec<u32> {
    let mut table = vec![0; SH_BUCKETS as usize];
    if members.is_empty() {
        return table;
    }
    let (mut p, mut count) = (0, 0u32);
    for bucket in &mut table {
        let m = &members[p];
        *bucket = m.id;
        count += 1;
        if count >= m.weight {
            p = (p + 1) % members.len();
            count = 0;
        }
    }
    table
}

/// The 256 dh buckets, filled as `ip_vs_dh_reassign` does: one bucket per destination in
/// list order, round and round. dh ignores weights here (they only make a destination of
/// weight 0 unavailable at lookup).
pub fn dh_table(members: &[Member]) -> Vec<u32> {
    if members.is_empty() {
        return vec![0; SH_BUCKETS as usize];
    }
    (0..SH_BUCKETS as usize)
        .map(|i| members[i % members.len()].id)
        .collect()
}

/// `fls`: the 1-based position of the highest set bit, 0 for 0.
fn fls(x: u32) -> u32 {
    32 - x.leading_zeros()
}

/// IPVS's `IP_VS_MH_TAB_BITS` for a table of `m` slots. The kernel picks its (compile-time)
/// table size as `primes[INDEX - 8]` with `INDEX` = ⌈log₂ size⌉ for every prime in its list,
/// and `BITS = INDEX / 2`; the same rule for any prime `m`.
fn mh_tab_bits(m: u32) -> u32 {
    fls(m.saturating_sub(1)) / 2
}

/// The Maglev lookup table of `m` slots (a prime), populated as `ip_vs_mh_populate` does.
///
/// Each member's preference list is `(offset + j * skip) % m` with `offset = h1 % m` and
/// `skip = h2 % (m - 1) + 1` from `mh_server(addr, port)` (IPVS: two hsiphash keys). Rounds
/// walk the members in list order and each member takes `turns` slots per round, its next
/// free preferred ones, until every slot is taken. `turns` is `weight / gcd`, shifted right
/// so that the largest is below `2^mh_tab_bits(m)` (`ip_vs_mh_shift_weight`: 64 for 4093
/// slots, 256 for 65537), and at least 1 for a positive weight. A member of weight 0 gets no slot: IPVS computes turns from
/// `last_weight`, the last non-zero weight, so a destination quiesced to weight 0 keeps its
/// slots there (and its clients get no server, or the fallback), while one added with weight
/// 0 gets none; `Member` has no `last_weight`, so here both get none.
pub fn mh_table(members: &[Member], m: u32) -> Result<Vec<u32>, String> {
    if !is_prime(m) {
        return Err(format!("the mh table size must be a prime (not {m})"));
    }
    if members.len() > m as usize {
        return Err(format!(
            "mh: {} destinations do not fit a table of {m} slots",
            members.len()
        ));
    }
    let size = m as usize;
    let mut table = vec![0u32; size];
    // ip_vs_mh_gcd_weight: no positive weight, no population (the table stays empty).
    let g = members
        .iter()
        .filter(|d| d.weight > 0)
        .fold(0, |g, d| gcd(d.weight, g));
    if g == 0 {
        return Ok(table);
    }
    let mw = members.iter().map(|d| d.weight).max().unwrap_or(0) / g;
    let shift = fls(mw).saturating_sub(mh_tab_bits(m));
    struct Setup {
        perm: u32,
        skip: u32,
        turns: u32,
    }
    let mut setup: Vec<Setup> = members
        .iter()
        .map(|d| {
            let (h1, h2) = mh_server(u32::from(d.addr), d.port);
            let turns = (d.weight / g) >> shift;
            Setup {
                perm: h1 % m,
                skip: h2 % (m - 1) + 1,
                turns: if turns == 0 {
                    u32::from(d.weight != 0)
                } else {
                    turns
                },
            }
        })
        .collect();
    let mut taken = vec![false; size];
    let mut n = 0;
    loop {
        for (d, s) in members.iter().zip(&mut setup) {
            for _ in 0..s.turns {
                // The member's next preferred slot that is still free; `perm` stays on it,
                // as in the kernel, and the next search starts there.
                while taken[s.perm as usize] {
                    // perm + skip < 2m, which may not fit a u32 for the largest primes.
                    s.perm = ((u64::from(s.perm) + u64::from(s.skip)) % u64::from(m)) as u32;
                }
                taken[s.perm as usize] = true;
                table[s.perm as usize] = d.id;
                n += 1;
                if n == size {
                    return Ok(table);
                }
            }
        }
    }
}

/// Whether `n` is a prime (the Maglev table size must be one).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Whether `sched` scans the members for every new connection (no table).
fn scans(sched: Scheduler) -> bool {
    !matches!(
        sched,
        Scheduler::Rr | Scheduler::Wrr | Scheduler::Sh | Scheduler::Dh | Scheduler::Mh
    )
}

/// What the data path reads for `sched`: the rr or wrr sequence, the 256 sh or dh buckets,
/// the Maglev table of `mh_size` slots for mh, and nothing for the schedulers that scan the
/// members live (lc wlc sed nq fo ovf lblc lblcr). Entries are member ids, 0 = none.
///
/// `Err` for what the data path cannot run: an mh table size that is not a prime or smaller
/// than the number of members, or more than `MAX_SCAN` members for a scanning scheduler.
/// `flags` do not change any table (sh/mh port and fallback act at lookup).
pub fn table(
    sched: Scheduler,
    _flags: SchedFlags,
    members: &[Member],
    mh_size: u32,
) -> Result<Vec<u32>, String> {
    // The hashing schedulers' tables are built from the members sorted by address and port,
    // not in list order: every director then holds the same table for the same servers and
    // weights, whatever order they were configured or added in (a flow that ECMP moves to
    // another director keeps its real server; see README, Scaling out).
    let mut sorted;
    let members = if matches!(sched, Scheduler::Sh | Scheduler::Dh | Scheduler::Mh) {
        sorted = members.to_vec();
        sorted.sort_by_key(|m| (m.addr, m.port));
        &sorted[..]
    } else {
        members
    };
    match sched {
        Scheduler::Rr => Ok(rr(members)),
        Scheduler::Wrr => Ok(wrr(members)),
        Scheduler::Sh => Ok(sh_table(members)),
        Scheduler::Dh => Ok(dh_table(members)),
        Scheduler::Mh => mh_table(members, mh_size),
        other => {
            debug_assert!(scans(other));
            if members.len() > MAX_SCAN as usize {
                return Err(format!(
                    "scheduler {other} supports at most {MAX_SCAN} destinations per service \
                     (it compares them all for each new connection); this one has {}",
                    members.len()
                ));
            }
            Ok(Vec::new())
        }
    }
}

/// Whether the data path implements `sched`: all thirteen IPVS schedulers.
pub fn supported(sched: Scheduler) -> bool {
    Scheduler::ALL.contains(&sched)
}

/// IPVS `ip_vs_dest_conn_overhead`: an active connection weighs 256 inactive ones.
fn overhead(m: &Member) -> u64 {
    (u64::from(m.active) << 8) + u64::from(m.inactive)
}

/// sed/nq's expected overhead: the active connections plus the one being scheduled.
fn sed_overhead(m: &Member) -> u64 {
    u64::from(m.active) + 1
}

/// `a_oh / a_w > b_oh / b_w` without division (the kernel's `loh * dw > doh * lw`, in s64;
/// exact here for any u32 weight and count).
fn heavier(a_oh: u64, a_w: u32, b_oh: u64, b_w: u32) -> bool {
    u128::from(a_oh) * u128::from(b_w) > u128::from(b_oh) * u128::from(a_w)
}

/// The weighted least-connection pick of `ip_vs_wlc_schedule` (also `ip_vs_sed_schedule`
/// with `sed_overhead`, and `__ip_vs_lblc_schedule` / `__ip_vs_lblcr_schedule`): the first
/// member not overloaded with a positive weight, then every later one not overloaded whose
/// overhead/weight is strictly lower replaces it (ties keep the earlier one; weight 0 never
/// wins, as `loh * 0 > doh * lw` is false).
fn least_weighted(members: &[Member], oh: fn(&Member) -> u64) -> Option<&Member> {
    let start = members.iter().position(|m| !m.overloaded && m.weight > 0)?;
    let mut least = &members[start];
    let mut loh = oh(least);
    for d in &members[start + 1..] {
        if d.overloaded {
            continue;
        }
        let doh = oh(d);
        if heavier(loh, least.weight, doh, d.weight) {
            (least, loh) = (d, doh);
        }
    }
    Some(least)
}

/// `ip_vs_lc_schedule`: the least overhead among members not overloaded with a non-zero
/// weight; ties keep the first.
fn lc(members: &[Member]) -> Option<&Member> {
    let mut least: Option<(&Member, u64)> = None;
    for d in members {
        if d.overloaded || d.weight == 0 {
            continue;
        }
        let doh = overhead(d);
        if least.is_none_or(|(_, loh)| doh < loh) {
            least = Some((d, doh));
        }
    }
    least.map(|(d, _)| d)
}

/// `ip_vs_nq_schedule`: the first idle member (no active connection) at once; otherwise as
/// sed. Overloaded and weight-0 members are skipped.
fn nq(members: &[Member]) -> Option<&Member> {
    let mut least: Option<(&Member, u64)> = None;
    for d in members {
        if d.overloaded || d.weight == 0 {
            continue;
        }
        let doh = sed_overhead(d);
        if d.active == 0 {
            return Some(d);
        }
        if least.is_none_or(|(l, loh)| heavier(loh, l.weight, doh, d.weight)) {
            least = Some((d, doh));
        }
    }
    least.map(|(d, _)| d)
}

/// `ip_vs_fo_schedule`: the highest weight among members not overloaded; ties keep the
/// first; weight 0 never (the running maximum starts at 0 and must be exceeded).
fn fo(members: &[Member]) -> Option<&Member> {
    let mut best: Option<&Member> = None;
    let mut hw = 0;
    for d in members {
        if !d.overloaded && d.weight > hw {
            (best, hw) = (Some(d), d.weight);
        }
    }
    best
}

/// `ip_vs_ovf_schedule`: the highest weight among members not overloaded, with a non-zero
/// weight and no more active connections than their weight; ties keep the first.
fn ovf(members: &[Member]) -> Option<&Member> {
    let mut best: Option<&Member> = None;
    for d in members {
        if d.overloaded || d.active > d.weight || d.weight == 0 {
            continue;
        }
        if best.is_none_or(|h| d.weight > h.weight) {
            best = Some(d);
        }
    }
    best
}

/// lblc/lblcr `is_overloaded`: more active connections than its weight while some member
/// (any, in the list) has fewer than half its weight in active connections.
fn lblc_overloaded(dest: &Member, members: &[Member]) -> bool {
    dest.active > dest.weight
        && members
            .iter()
            .any(|d| u64::from(d.active) * 2 < u64::from(d.weight))
}

/// An lblc/lblcr cache entry for one destination address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// lblc: one server. lblcr: the server set, newest first (`list_add_rcu` in
    /// `ip_vs_dest_set_insert`), at most `LBLCR_SET`.
    set: Vec<u32>,
    last_used: u64,
    /// lblcr: when the set last changed.
    last_mod: u64,
}

/// `ip_vs_dest_set_min`: the weighted least-connection server of an lblcr set, in set order,
/// skipping overloaded ones (`members` are the set's servers that still exist).
fn set_min<'a>(set: &[u32], members: &'a [Member]) -> Option<&'a Member> {
    let in_set: Vec<&Member> = set
        .iter()
        .filter_map(|id| members.iter().find(|m| m.id == *id))
        .collect();
    let start = in_set.iter().position(|m| !m.overloaded && m.weight > 0)?;
    let mut least = in_set[start];
    for d in &in_set[start + 1..] {
        if !d.overloaded && heavier(overhead(least), least.weight, overhead(d), d.weight) {
            least = d;
        }
    }
    Some(least)
}

/// `ip_vs_dest_set_max`: the weighted most-connection server of an lblcr set with a
/// positive weight (overloaded ones included), in set order; ties keep the first.
fn set_max(set: &[u32], members: &[Member]) -> Option<u32> {
    let mut most: Option<&Member> = None;
    for id in set {
        let Some(d) = members.iter().find(|m| m.id == *id) else {
            continue;
        };
        if d.weight == 0 {
            continue;
        }
        if most.is_none_or(|m| heavier(overhead(d), d.weight, overhead(m), m.weight)) {
            most = Some(d);
        }
    }
    most.map(|m| m.id)
}

/// The reference model of one IPVS virtual service's scheduler: which server IPVS, and the
/// XDP data path, pick for a new connection.
///
/// The caller keeps the members' connection counts and overload flags current between picks
/// (`members_mut`), as IPVS's connection accounting does; weight and membership changes go
/// through `set_members`, which rebuilds the tables as the control plane does. `now` is in
/// seconds.
///
/// Where the data path (and so this model) differs from the kernel:
/// - rr/wrr: the cursor restarts at the head of the sequence whenever the members change
///   (kernel rr keeps its place; wrr restarts at the list head but keeps its current weight
///   roughly). An overloaded pick is skipped by advancing the cursor again, at most
///   `min(len, MAX_SCAN)` times (the kernel tries a whole round), then no server. wrr
///   weights whose sequence would exceed `MAX_SEQUENCE` are scaled (see [`wrr`]).
/// - sh: the fallback (`-b sh-fallback`) tries `FALLBACK_TRIES` (32) buckets of
///   `ip_vs_sh_get_fallback`'s walk, the kernel all 256.
/// - mh: permutations from `mh_server` and lookups from `mh_hash` (the kernel's hsiphash
///   keys are fixed too, but the functions differ); the fallback tries `mh_hash(addr, port,
///   k) % M` for k = 1..=32 (the kernel rehashes with offsets `(k + slot) % M` for every k
///   below M); turns from the current weight, not `last_weight` (see [`mh_table`]); any
///   prime table size (the kernel's is fixed at build time, 4093 by default).
/// - lblc/lblcr: an entry unused for `LBLC_EXPIRATION` / `LBLCR_EXPIRATION` or longer is
///   gone at its next lookup (the kernel's timer removes it within 30 minutes after that, and
///   also removes entries idle for 6 minutes while it holds more than 16384; the data path's
///   LRU map evicts instead). An lblcr set holds at most `LBLCR_SET` servers (the kernel's
///   are unbounded): adding to a full set first drops its most loaded server
///   (`ip_vs_dest_set_max`), or its oldest when none has a positive weight. Servers no longer
///   in the service are dropped from a set when it is next used (the kernel keeps them,
///   unavailable, until `ip_vs_dest_set_max` or the entry's expiry removes them).
/// - the scanning schedulers look at the first `MAX_SCAN` members only ([`table`] refuses
///   more).
/// - weight × overhead products are exact (the kernel's are s64, the same for any weight up
///   to 65535 and realistic counts).
#[derive(Clone, Debug)]
pub struct Model {
    sched: Scheduler,
    flags: SchedFlags,
    members: Vec<Member>,
    mh_size: u32,
    /// rr/wrr sequence, sh/dh buckets or Maglev table (empty for the scanning schedulers).
    table: Vec<u32>,
    /// rr/wrr: attempts so far (the data path's shared cursor).
    cursor: u64,
    /// lblc/lblcr entries by destination address.
    entries: HashMap<Ipv4Addr, Entry>,
}

impl Model {
    /// A model of a service with `sched`, `flags` and `members`; `Err` as [`table`].
    pub fn new(
        sched: Scheduler,
        flags: SchedFlags,
        members: Vec<Member>,
        mh_size: u32,
    ) -> Result<Model, String> {
        let table = table(sched, flags, &members, mh_size)?;
        Ok(Model {
            sched,
            flags,
            members,
            mh_size,
            table,
            cursor: 0,
            entries: HashMap::new(),
        })
    }

    /// Replaces the members and rebuilds the table as the control plane does (the rr/wrr
    /// cursor restarts at 0; lblc/lblcr entries stay, as IPVS's do). Members the control
    /// plane would refuse (see [`table`]) leave an empty table: no server for sh/dh/mh/rr/wrr,
    /// and the scanning schedulers look at the first `MAX_SCAN`.
    pub fn set_members(&mut self, members: Vec<Member>) {
        self.table = table(self.sched, self.flags, &members, self.mh_size).unwrap_or_default();
        self.members = members;
        self.cursor = 0;
    }

    /// The members, to change connection counts and overload flags between picks (the tables
    /// are not rebuilt: change weights and membership with `set_members`).
    pub fn members_mut(&mut self) -> &mut [Member] {
        &mut self.members
    }

    /// The members, in list order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The table the data path would read (see [`table`]).
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The member id IPVS would pick for a new connection from `client` to `dst` at `now`
    /// (seconds), or `None` when it would find no destination.
    pub fn pick(&mut self, client: SocketAddrV4, dst: SocketAddrV4, now: u64) -> Option<u32> {
        let fallback = self.flags.0 & SchedFlags::FLAG1 != 0;
        let port = if self.flags.0 & SchedFlags::FLAG2 != 0 {
            client.port()
        } else {
            0
        };
        let caddr = u32::from(*client.ip());
        let scanned = &self.members[..self.members.len().min(MAX_SCAN as usize)];
        match self.sched {
            Scheduler::Rr | Scheduler::Wrr => self.sequence(),
            Scheduler::Sh => self.sh(caddr, port, fallback),
            Scheduler::Dh => {
                // ip_vs_dh_schedule: the destination address's bucket, no fallback.
                let id = self.at(sh_bucket(u32::from(*dst.ip()), 0, 0));
                self.usable(id).then_some(id)
            }
            Scheduler::Mh => self.mh(caddr, port, fallback),
            Scheduler::Lc => lc(scanned).map(|m| m.id),
            Scheduler::Wlc => least_weighted(scanned, overhead).map(|m| m.id),
            Scheduler::Sed => least_weighted(scanned, sed_overhead).map(|m| m.id),
            Scheduler::Nq => nq(scanned).map(|m| m.id),
            Scheduler::Fo => fo(scanned).map(|m| m.id),
            Scheduler::Ovf => ovf(scanned).map(|m| m.id),
            Scheduler::Lblc => self.lblc(*dst.ip(), now),
            Scheduler::Lblcr => self.lblcr(*dst.ip(), now),
        }
    }

    fn member(&self, id: u32) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// sh/mh/dh: the hashed server may take the connection (IPVS `is_unavailable` negated).
    fn usable(&self, id: u32) -> bool {
        id != 0
            && self
                .member(id)
                .is_some_and(|m| m.weight > 0 && !m.overloaded)
    }

    fn at(&self, i: u32) -> u32 {
        self.table.get(i as usize).copied().unwrap_or(0)
    }

    /// rr (`ip_vs_rr_schedule`) and wrr (`ip_vs_wrr_schedule`) as the data path walks their
    /// sequence: one cursor step per attempt, overloaded servers skipped.
    fn sequence(&mut self) -> Option<u32> {
        let len = self.table.len() as u64;
        if len == 0 {
            return None;
        }
        for _ in 0..len.min(u64::from(MAX_SCAN)) {
            let id = self.table[(self.cursor % len) as usize];
            self.cursor += 1;
            match self.member(id) {
                Some(m) if m.overloaded => {}
                Some(_) => return Some(id),
                None => return None,
            }
        }
        None
    }

    /// `ip_vs_sh_get`, or `ip_vs_sh_get_fallback` with sh-fallback: when the hashed server
    /// is unavailable, bucket `sh_bucket(addr, port, (offset + ihash) % 256)` for offset =
    /// 0, 1, … (the kernel's `roffset`, which `ip_vs_sh_hashkey` adds to the hash again).
    fn sh(&self, addr: u32, port: u16, fallback: bool) -> Option<u32> {
        let ihash = sh_bucket(addr, port, 0);
        let id = self.at(ihash);
        if id == 0 {
            return None;
        }
        if self.usable(id) {
            return Some(id);
        }
        if !fallback {
            return None;
        }
        for offset in 0..FALLBACK_TRIES {
            let roffset = (offset + ihash) % SH_BUCKETS;
            let id = self.at(sh_bucket(addr, port, roffset));
            if id == 0 {
                return None;
            }
            if self.usable(id) {
                return Some(id);
            }
        }
        None
    }

    /// `ip_vs_mh_get`, or with mh-fallback the rehashes `mh_hash(addr, port, k) % M` for
    /// k = 1..=`FALLBACK_TRIES` (`ip_vs_mh_get_fallback`'s idea, our hash).
    fn mh(&self, addr: u32, port: u16, fallback: bool) -> Option<u32> {
        let m = self.table.len() as u32;
        if m == 0 {
            return None;
        }
        let id = self.at(mh_hash(addr, port, 0) % m);
        if id == 0 {
            return None;
        }
        if self.usable(id) {
            return Some(id);
        }
        if !fallback {
            return None;
        }
        for k in 1..=FALLBACK_TRIES {
            let id = self.at(mh_hash(addr, port, k) % m);
            if id == 0 {
                return None;
            }
            if self.usable(id) {
                return Some(id);
            }
        }
        None
    }

    /// `ip_vs_lblc_schedule`: the destination address's server while it exists, has a
    /// positive weight and is not `lblc_overloaded` (the kernel does not look at the
    /// threshold flag here); otherwise a fresh wlc pick (`__ip_vs_lblc_schedule`) becomes the
    /// entry's server.
    fn lblc(&mut self, daddr: Ipv4Addr, now: u64) -> Option<u32> {
        let scanned = &self.members[..self.members.len().min(MAX_SCAN as usize)];
        if let Some(en) = self.entries.get_mut(&daddr) {
            if now.saturating_sub(en.last_used) >= LBLC_EXPIRATION {
                self.entries.remove(&daddr);
            } else {
                // The kernel stamps the entry before it checks the server.
                en.last_used = now;
                if let Some(d) = en
                    .set
                    .first()
                    .and_then(|id| scanned.iter().find(|m| m.id == *id))
                    && d.weight > 0
                    && !lblc_overloaded(d, scanned)
                {
                    return Some(d.id);
                }
            }
        }
        self.start_entry(daddr, now)
    }

    /// lblc/lblcr with no live entry for `daddr`: a wlc pick in a new entry
    /// (`ip_vs_lblc_new`, `ip_vs_lblcr_new`), stamped now.
    fn start_entry(&mut self, daddr: Ipv4Addr, now: u64) -> Option<u32> {
        let scanned = &self.members[..self.members.len().min(MAX_SCAN as usize)];
        let id = least_weighted(scanned, overhead)?.id;
        self.entries.insert(
            daddr,
            Entry {
                set: vec![id],
                last_used: now,
                last_mod: now,
            },
        );
        Some(id)
    }

    /// `ip_vs_lblcr_schedule`: the least loaded server of the destination address's set
    /// (`ip_vs_dest_set_min`) unless it is `lblc_overloaded`; otherwise a fresh wlc pick
    /// (`__ip_vs_lblcr_schedule`) joins the set. A set of more than one server that has not
    /// changed for longer than `LBLCR_EXPIRATION` loses its most loaded one
    /// (`ip_vs_dest_set_max`) first, after the least loaded was chosen (so the choice may be
    /// the server just dropped, as in the kernel).
    fn lblcr(&mut self, daddr: Ipv4Addr, now: u64) -> Option<u32> {
        let scanned = &self.members[..self.members.len().min(MAX_SCAN as usize)];
        if let Some(en) = self.entries.get_mut(&daddr) {
            if now.saturating_sub(en.last_used) >= LBLCR_EXPIRATION {
                self.entries.remove(&daddr);
            } else {
                en.last_used = now;
                en.set.retain(|id| scanned.iter().any(|m| m.id == *id));
                let min = set_min(&en.set, scanned).map(|m| m.id);
                if en.set.len() > 1
                    && now.saturating_sub(en.last_mod) > LBLCR_EXPIRATION
                    && let Some(max) = set_max(&en.set, scanned)
                {
                    en.set.retain(|id| *id != max);
                    en.last_mod = now;
                }
                if let Some(d) = min.and_then(|id| scanned.iter().find(|m| m.id == id))
                    && !lblc_overloaded(d, scanned)
                {
                    return Some(d.id);
                }
                let id = least_weighted(scanned, overhead)?.id;
                // ip_vs_dest_set_insert with `check`: a server already there changes nothing.
                if !en.set.contains(&id) {
                    if en.set.len() >= LBLCR_SET {
                        match set_max(&en.set, scanned) {
                            Some(max) => en.set.retain(|x| *x != max),
                            None => {
                                en.set.pop();
                            }
                        }
                    }
                    en.set.insert(0, id);
                    en.last_mod = now;
                }
                return Some(id);
            }
        }
        self.start_entry(daddr, now)
    }

    /// lblc/lblcr: the entry of `daddr`, its server (lblc) or server set newest first (lblcr).
    pub fn lblc_set(&self, daddr: Ipv4Addr) -> Option<&[u32]> {
        self.entries.get(&daddr).map(|e| e.set.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::size::DEFAULT_MH_TABLE;

    const NO_FLAGS: SchedFlags = SchedFlags(0);
    const FALLBACK: SchedFlags = SchedFlags(SchedFlags::FLAG1);
    const PORT: SchedFlags = SchedFlags(SchedFlags::FLAG2);

    fn member(id: u32, weight: u32) -> Member {
        Member::new(
            id,
            Ipv4Addr::new(10, 0, (id >> 8) as u8, id as u8),
            80,
            weight,
        )
    }

    fn ms(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| member(i as u32 + 1, w))
            .collect()
    }

    /// Members from (weight, active, inactive, overloaded).
    fn loaded(spec: &[(u32, u32, u32, bool)]) -> Vec<Member> {
        spec.iter()
            .enumerate()
            .map(|(i, &(w, a, ina, o))| Member {
                active: a,
                inactive: ina,
                overloaded: o,
                ..member(i as u32 + 1, w)
            })
            .collect()
    }

    fn client(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0xc633_6400 + i), 40000 + (i % 1000) as u16)
    }

    fn vip() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80)
    }

    fn model(sched: Scheduler, flags: SchedFlags, members: Vec<Member>) -> Model {
        Model::new(sched, flags, members, DEFAULT_MH_TABLE).unwrap()
    }

    fn pick_once(sched: Scheduler, members: Vec<Member>) -> Option<u32> {
        model(sched, NO_FLAGS, members).pick(client(1), vip(), 0)
    }

    #[test]
    fn wrr_matches_ipvs_4_3_2() {
        // IPVS wrr with A=4, B=3, C=2: cw=4: A; cw=3: A B; cw=2: A B C; cw=1: A B C.
        assert_eq!(wrr(&ms(&[4, 3, 2])), vec![1, 1, 2, 1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn wrr_uses_the_gcd() {
        // 4:2 is 2:1, so the sequence is three long, not six.
        assert_eq!(wrr(&ms(&[4, 2])), vec![1, 1, 2]);
        assert_eq!(wrr(&ms(&[2, 1])), vec![1, 1, 2]);
    }

    #[test]
    fn weight_zero_gets_nothing() {
        assert_eq!(wrr(&ms(&[0, 1, 0, 2])), vec![4, 2, 4]);
        assert_eq!(rr(&ms(&[1, 0, 5])), vec![1, 3]);
        assert!(wrr(&ms(&[0, 0])).is_empty());
        assert!(rr(&[]).is_empty());
    }

    #[test]
    fn wrr_ratio_over_a_cycle_is_the_weight_ratio() {
        let seq = wrr(&ms(&[5, 3, 1]));
        assert_eq!(seq.len(), 9);
        for (id, w) in [(1, 5), (2, 3), (3, 1)] {
            assert_eq!(seq.iter().filter(|&&x| x == id).count(), w);
        }
    }

    #[test]
    fn huge_coprime_weights_are_scaled_to_fit() {
        let seq = wrr(&ms(&[65535, 65534, 65533]));
        assert!(seq.len() <= MAX_SEQUENCE as usize, "{}", seq.len());
        let counts: Vec<usize> = (1..=3)
            .map(|id| seq.iter().filter(|&&x| x == id).count())
            .collect();
        assert!(
            counts[0] >= counts[1] && counts[1] >= counts[2],
            "{counts:?}"
        );
        assert!(counts[0] - counts[2] <= 2, "{counts:?}");
    }

    #[test]
    fn every_scheduler_is_supported() {
        for s in Scheduler::ALL {
            assert!(supported(s), "{s}");
            assert!(
                table(s, NO_FLAGS, &ms(&[1, 2]), DEFAULT_MH_TABLE).is_ok(),
                "{s}"
            );
        }
        assert!(
            table(Scheduler::Lc, NO_FLAGS, &ms(&[1, 2]), 0)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn table_refuses_what_the_data_path_cannot_run() {
        assert!(table(Scheduler::Mh, NO_FLAGS, &ms(&[1]), 65536).is_err());
        assert!(table(Scheduler::Mh, NO_FLAGS, &ms(&[1, 1, 1, 1]), 3).is_err());
        let many = ms(&vec![1; MAX_SCAN as usize + 1]);
        assert!(table(Scheduler::Wlc, NO_FLAGS, &many, 0).is_err());
        assert!(table(Scheduler::Wlc, NO_FLAGS, &many[1..], 0).is_ok());
        assert!(table(Scheduler::Rr, NO_FLAGS, &many, 0).is_ok());
        assert!(Model::new(Scheduler::Mh, NO_FLAGS, ms(&[1]), 4096).is_err());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(4093) && is_prime(251) && is_prime(2));
        assert!(is_prime(131071) && is_prime(65521) && is_prime(4_294_967_291));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(65536) && !is_prime(4095));
        assert!(!is_prime(65535) && !is_prime(25) && !is_prime(4_294_967_295));
    }

    #[test]
    fn rr_skips_an_overloaded_member() {
        let mut m = model(Scheduler::Rr, NO_FLAGS, ms(&[1, 1, 1]));
        let mut picks = Vec::new();
        for _ in 0..4 {
            picks.push(m.pick(client(1), vip(), 0).unwrap());
        }
        assert_eq!(picks, vec![1, 2, 3, 1]);
        // B overloaded: the cursor (at B) steps over it to C, then A, C, A…
        m.members_mut()[1].overloaded = true;
        let picks: Vec<u32> = (0..4)
            .map(|_| m.pick(client(1), vip(), 0).unwrap())
            .collect();
        assert_eq!(picks, vec![3, 1, 3, 1]);
        for x in m.members_mut() {
            x.overloaded = true;
        }
        assert_eq!(m.pick(client(1), vip(), 0), None);
        // Three failed attempts went round once; the order is unchanged.
        m.members_mut()[1].overloaded = false;
        m.members_mut()[2].overloaded = false;
        let picks: Vec<u32> = (0..3)
            .map(|_| m.pick(client(1), vip(), 0).unwrap())
            .collect();
        assert_eq!(picks, vec![2, 3, 2]);
        // New members: the cursor restarts at the head.
        m.set_members(ms(&[1, 0, 1]));
        let picks: Vec<u32> = (0..3)
            .map(|_| m.pick(client(1), vip(), 0).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 3, 1]);
    }

    #[test]
    fn wrr_skips_an_overloaded_member_as_ipvs() {
        // Sequence A A B A B C A B C; with A overloaded IPVS's walk gives B B C B C B (the
        // passes cw=4..1 find B at cw=3, 2, 1 and C at 2, 1, then B again at cw=3).
        let mut members = ms(&[4, 3, 2]);
        members[0].overloaded = true;
        let mut m = model(Scheduler::Wrr, NO_FLAGS, members);
        let picks: Vec<u32> = (0..6)
            .map(|_| m.pick(client(1), vip(), 0).unwrap())
            .collect();
        assert_eq!(picks, vec![2, 2, 3, 2, 3, 2]);
    }

    #[test]
    fn lc_least_overhead_first_of_ties() {
        // Overheads (active << 8) + inactive: 522, 556, 522, 10 (overloaded), 0 (weight 0).
        let members = loaded(&[
            (1, 2, 10, false),
            (5, 1, 300, false),
            (1, 2, 10, false),
            (1, 0, 10, true),
            (0, 0, 0, false),
        ]);
        assert_eq!(pick_once(Scheduler::Lc, members.clone()), Some(1));
        // lc ignores weights otherwise: B's 556 loses to A's 522 despite weight 5.
        let mut m = members;
        m[0].inactive = 100; // 612
        assert_eq!(pick_once(Scheduler::Lc, m.clone()), Some(3));
        m[2].overloaded = true;
        assert_eq!(pick_once(Scheduler::Lc, m.clone()), Some(2));
        for x in &mut m[..3] {
            x.overloaded = true;
        }
        assert_eq!(pick_once(Scheduler::Lc, m), None);
    }

    #[test]
    fn wlc_overhead_per_weight() {
        // Loads 256/1, 512/2, 512/3: C is least.
        let m = loaded(&[(1, 1, 0, false), (2, 2, 0, false), (3, 2, 0, false)]);
        assert_eq!(pick_once(Scheduler::Wlc, m.clone()), Some(3));
        // A tie between A (256/1) and B (512/2) keeps the first.
        assert_eq!(pick_once(Scheduler::Wlc, m[..2].to_vec()), Some(1));
        // The inactive connections count, 1/256 of an active one: A 258/1 > B 512/2.
        let mut t = m[..2].to_vec();
        t[0].inactive = 2;
        assert_eq!(pick_once(Scheduler::Wlc, t), Some(2));
        // A weight-0 member, even idle, never wins, first or later; overloaded D (idle,
        // weight 4) is skipped: E's 1280/2 beats B's 768/1.
        let m = loaded(&[
            (0, 0, 0, false),
            (1, 3, 0, false),
            (0, 0, 0, false),
            (4, 0, 0, true),
            (2, 5, 0, false),
        ]);
        assert_eq!(pick_once(Scheduler::Wlc, m.clone()), Some(5));
        let mut t = m.clone();
        t[4].overloaded = true;
        assert_eq!(pick_once(Scheduler::Wlc, t.clone()), Some(2));
        t[1].overloaded = true;
        assert_eq!(pick_once(Scheduler::Wlc, t), None);
    }

    #[test]
    fn sed_counts_the_new_connection() {
        // wlc: A (w1, 0 active) is idle, so it wins; sed: A (0+1)/1 = 1 > B (1+1)/3 = 0.67.
        let m = loaded(&[(1, 0, 0, false), (3, 1, 0, false)]);
        assert_eq!(pick_once(Scheduler::Wlc, m.clone()), Some(1));
        assert_eq!(pick_once(Scheduler::Sed, m.clone()), Some(2));
        // sed ignores inactive connections: (1+1)/2 = 1 vs (0+1)/1 = 1, a tie: the first.
        let m = loaded(&[(2, 1, 0, false), (1, 0, 900, false)]);
        assert_eq!(pick_once(Scheduler::Sed, m), Some(1));
        // Weight 0 and overloaded skipped.
        let m = loaded(&[(0, 0, 0, false), (5, 0, 0, true), (1, 4, 0, false)]);
        assert_eq!(pick_once(Scheduler::Sed, m), Some(3));
    }

    #[test]
    fn nq_takes_the_first_idle_member() {
        // B is the first idle member: taken at once, though C (idle, weight 10) is better.
        let m = loaded(&[(1, 1, 0, false), (1, 0, 50, false), (10, 0, 0, false)]);
        assert_eq!(pick_once(Scheduler::Nq, m), Some(2));
        // Idle but weight 0 or overloaded does not count.
        let m = loaded(&[
            (0, 0, 0, false),
            (3, 0, 0, true),
            (1, 2, 0, false),
            (3, 5, 0, false),
        ]);
        // No idle one: as sed, C (2+1)/1 = 3 > D (5+1)/3 = 2.
        assert_eq!(pick_once(Scheduler::Nq, m.clone()), Some(4));
        let mut t = m;
        t[3].active = 8; // (8+1)/3 = 3: a tie with C, which comes first
        assert_eq!(pick_once(Scheduler::Nq, t), Some(3));
        assert_eq!(pick_once(Scheduler::Nq, loaded(&[(0, 0, 0, false)])), None);
    }

    #[test]
    fn fo_highest_weight_available() {
        let m = loaded(&[
            (2, 0, 0, false),
            (5, 9, 0, false),
            (5, 0, 0, false),
            (7, 0, 0, true),
        ]);
        // D (7) overloaded; B and C tie at 5: the first, whatever its connections.
        assert_eq!(pick_once(Scheduler::Fo, m.clone()), Some(2));
        let mut t = m.clone();
        t[1].overloaded = true;
        assert_eq!(pick_once(Scheduler::Fo, t.clone()), Some(3));
        t[3].overloaded = false;
        assert_eq!(pick_once(Scheduler::Fo, t), Some(4));
        assert_eq!(pick_once(Scheduler::Fo, loaded(&[(0, 0, 0, false)])), None);
        assert_eq!(pick_once(Scheduler::Fo, Vec::new()), None);
    }

    #[test]
    fn ovf_overflows_to_the_next_weight() {
        // B (w10) takes connections until it has more active than its weight, then A (w5).
        let mut m = model(
            Scheduler::Ovf,
            NO_FLAGS,
            loaded(&[(5, 0, 0, false), (10, 0, 0, false)]),
        );
        let mut picks = Vec::new();
        for _ in 0..17 {
            let id = m.pick(client(1), vip(), 0).unwrap();
            m.members_mut()[id as usize - 1].active += 1;
            picks.push(id);
        }
        // 11 to B (active 0..=10 is not above 10), then 6 to A (0..=5), then none: both
        // have more active connections than their weight.
        assert_eq!(picks[..11], [2; 11]);
        assert_eq!(picks[11..], [1; 6]);
        assert_eq!(m.pick(client(1), vip(), 0), None);
        m.members_mut()[1].active = 10;
        assert_eq!(m.pick(client(1), vip(), 0), Some(2));
        // Ties keep the first; weight 0 and overloaded are skipped.
        let m = loaded(&[
            (0, 0, 0, false),
            (3, 0, 0, true),
            (2, 1, 0, false),
            (2, 0, 0, false),
        ]);
        assert_eq!(pick_once(Scheduler::Ovf, m), Some(3));
    }

    #[test]
    fn sh_fills_256_buckets_by_weight() {
        // A (w2) B (w1): A A B A A B …; 256 = 85 * 3 + 1, so the last bucket is A's.
        let t = sh_table(&ms(&[2, 1]));
        assert_eq!(t.len(), 256);
        for (i, &id) in t.iter().enumerate() {
            assert_eq!(id, if i % 3 == 2 { 2 } else { 1 }, "bucket {i}");
        }
        assert_eq!(t.iter().filter(|&&x| x == 1).count(), 171);
        // Weight 0 still takes one bucket per turn (and is unavailable at lookup).
        let t = sh_table(&ms(&[0, 2]));
        assert_eq!(t[..6], [1, 2, 2, 1, 2, 2]);
        // A weight above 256 takes everything, as in the kernel.
        assert!(sh_table(&ms(&[300, 1])).iter().all(|&x| x == 1));
        assert!(sh_table(&[]).iter().all(|&x| x == 0));
    }

    #[test]
    fn sh_maps_a_client_to_its_bucket_always() {
        let mut m = model(Scheduler::Sh, NO_FLAGS, ms(&[2, 1, 3]));
        let t = sh_table(&ms(&[2, 1, 3]));
        let mut seen = [0; 4];
        for i in 0..300 {
            let c = client(i);
            let want = t[sh_bucket(u32::from(*c.ip()), 0, 0) as usize];
            for port in [1, 2, 40000] {
                // The port does not count without sh-port.
                let c = SocketAddrV4::new(*c.ip(), port);
                assert_eq!(m.pick(c, vip(), u64::from(i)), Some(want));
            }
            seen[want as usize] += 1;
        }
        assert!(seen[1] > 0 && seen[2] > 0 && seen[3] > 0, "{seen:?}");
        // Unavailable (weight 0 or overloaded) without fallback: no server.
        let c = client(7);
        let id = m.pick(c, vip(), 0).unwrap();
        m.members_mut()[id as usize - 1].overloaded = true;
        assert_eq!(m.pick(c, vip(), 0), None);
    }

    #[test]
    fn sh_port_changes_the_choice_by_port() {
        let members = ms(&[1, 1, 1, 1]);
        let t = sh_table(&members);
        let mut m = model(Scheduler::Sh, PORT, members);
        let ip = Ipv4Addr::new(198, 51, 100, 7);
        let mut distinct = std::collections::BTreeSet::new();
        for port in 1000..1032u16 {
            let want = t[sh_bucket(u32::from(ip), port, 0) as usize];
            let got = m.pick(SocketAddrV4::new(ip, port), vip(), 0).unwrap();
            assert_eq!(got, want);
            assert_eq!(m.pick(SocketAddrV4::new(ip, port), vip(), 5), Some(got));
            distinct.insert(got);
        }
        assert!(distinct.len() > 1, "{distinct:?}");
    }

    #[test]
    fn sh_fallback_walks_as_ipvs() {
        // A B A B …: A in the even buckets. The walk's first bucket is (ihash + ihash) % 256,
        // always even, so an unavailable B falls back to A at once, and an unavailable A to
        // B at the second step (odd bucket 2 * ihash + 1).
        let members = ms(&[1, 1]);
        let mut m = model(Scheduler::Sh, FALLBACK, members.clone());
        let (mut to_a, mut to_b) = (None, None);
        for i in 0..64 {
            let c = client(i);
            let b = sh_bucket(u32::from(*c.ip()), 0, 0);
            if b.is_multiple_of(2) {
                to_a.get_or_insert(c);
            } else {
                to_b.get_or_insert(c);
            }
        }
        let (to_a, to_b) = (to_a.unwrap(), to_b.unwrap());
        assert_eq!(m.pick(to_a, vip(), 0), Some(1));
        assert_eq!(m.pick(to_b, vip(), 0), Some(2));
        m.members_mut()[0].overloaded = true;
        assert_eq!(m.pick(to_a, vip(), 0), Some(2));
        assert_eq!(m.pick(to_b, vip(), 0), Some(2));
        m.members_mut()[0].overloaded = false;
        m.members_mut()[1].overloaded = true;
        assert_eq!(m.pick(to_b, vip(), 0), Some(1));
        m.members_mut()[0].overloaded = true;
        assert_eq!(m.pick(to_a, vip(), 0), None);
        // Without the flag no fallback.
        let mut n = model(Scheduler::Sh, NO_FLAGS, members);
        n.members_mut()[0].overloaded = true;
        assert_eq!(n.pick(to_a, vip(), 0), None);
        // Weight 0 is unavailable too: its bucket falls back.
        let mut w = model(Scheduler::Sh, FALLBACK, ms(&[0, 1]));
        for i in 0..64 {
            assert_eq!(w.pick(client(i), vip(), 0), Some(2));
        }
    }

    #[test]
    fn dh_hashes_the_destination() {
        // One bucket each, round and round, weights ignored.
        let members = ms(&[5, 1, 1]);
        let t = dh_table(&members);
        assert_eq!(t[..7], [1, 2, 3, 1, 2, 3, 1]);
        let mut m = model(Scheduler::Dh, FALLBACK, members);
        for d in 0..40u32 {
            let dst = SocketAddrV4::new(Ipv4Addr::from(0xcb00_7100 + d), 80);
            let want = t[sh_bucket(u32::from(*dst.ip()), 0, 0) as usize];
            // Any client, same destination: same server.
            for i in 0..5 {
                assert_eq!(m.pick(client(i), dst, 0), Some(want));
            }
        }
        // Unavailable: none, even with flag 1 (dh has no fallback).
        let dst = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 80);
        let id = m.pick(client(0), dst, 0).unwrap();
        m.members_mut()[id as usize - 1].overloaded = true;
        assert_eq!(m.pick(client(0), dst, 0), None);
        m.members_mut()[id as usize - 1].overloaded = false;
        m.members_mut()[id as usize - 1].weight = 0;
        assert_eq!(m.pick(client(0), dst, 0), None);
        assert!(dh_table(&[]).iter().all(|&x| x == 0));
    }

    fn share(t: &[u32], id: u32) -> f64 {
        t.iter().filter(|&&x| x == id).count() as f64 / t.len() as f64
    }

    #[test]
    fn mh_fills_every_slot() {
        for m in [251, 4093, DEFAULT_MH_TABLE] {
            let t = mh_table(&ms(&[1, 1, 1, 1, 1, 1, 1]), m).unwrap();
            assert_eq!(t.len(), m as usize);
            assert!(t.iter().all(|&x| (1..=7).contains(&x)));
            for id in 1..=7 {
                // Equal weights: each within 1% of 1/7 (rounds hand out one slot each).
                assert!((share(&t, id) - 1.0 / 7.0).abs() < 0.01, "{m} {id}");
            }
        }
        assert!(mh_table(&[], 251).unwrap().iter().all(|&x| x == 0));
        assert!(mh_table(&ms(&[0, 0]), 251).unwrap().iter().all(|&x| x == 0));
        // The same members give the same table (every director builds the same one).
        assert_eq!(
            mh_table(&ms(&[3, 1, 2]), 4093).unwrap(),
            mh_table(&ms(&[3, 1, 2]), 4093).unwrap()
        );
    }

    #[test]
    fn mh_weights_3_1_share_3_to_1() {
        let t = mh_table(&ms(&[3, 1]), DEFAULT_MH_TABLE).unwrap();
        // Each round hands out 3 + 1 slots, so the shares are exact to a round.
        assert!((share(&t, 1) - 0.75).abs() < 1e-4, "{}", share(&t, 1));
        assert!((share(&t, 2) - 0.25).abs() < 1e-4);
        // Weight 0 gets no slot; 6:2 is 3:1.
        let t = mh_table(&ms(&[6, 0, 2]), 4093).unwrap();
        assert_eq!(share(&t, 2), 0.0);
        assert!((share(&t, 1) - 0.75).abs() < 1e-3);
        // Big weights are shifted down (turns below 2^(bits+1)) but keep their ratio.
        let t = mh_table(&ms(&[60000, 20000]), 4093).unwrap();
        assert!((share(&t, 1) - 0.75).abs() < 1e-3);
        let t = mh_table(&ms(&[1000, 1]), 4093).unwrap();
        // 1000 >> 4 = 62 turns against 1: about 62/63.
        assert!(
            (share(&t, 1) - 62.0 / 63.0).abs() < 1e-3,
            "{}",
            share(&t, 1)
        );
    }

    /// Removes one of `n` equal members and measures (moved slots, slots of the remaining
    /// members that moved), as fractions of the table.
    fn mh_disruption(n: u32, removed: usize) -> (f64, f64) {
        let all = ms(&vec![1; n as usize]);
        let before = mh_table(&all, DEFAULT_MH_TABLE).unwrap();
        let mut rest = all.clone();
        let gone = rest.remove(removed).id;
        let after = mh_table(&rest, DEFAULT_MH_TABLE).unwrap();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let kept_moved = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| **a != gone && a != b)
            .count();
        let size = before.len() as f64;
        (moved as f64 / size, kept_moved as f64 / size)
    }

    #[test]
    fn mh_removing_one_of_n_moves_about_one_nth() {
        // Maglev's promise: the removed member's slots (1/N of the table, to within a round
        // of the fill) must move, and the others' mostly stay; a few still change hands
        // because the population now interleaves differently near its end. With M = 65537
        // and N = 5 or 10 that extra is 0.1-0.3% of the table (measured), so the bounds are
        // at least 1/N - 0.5% (the removed share, to within the fill imbalance), at most
        // 1/N + 1%, and under 1% of the table taken from remaining members: a margin of
        // three times the measured extra or more, whichever member goes.
        for n in [5u32, 10] {
            for removed in [0, n as usize / 2, n as usize - 1] {
                let (moved, kept_moved) = mh_disruption(n, removed);
                let ideal = 1.0 / f64::from(n);
                assert!(
                    moved >= ideal - 0.005,
                    "n={n} removed={removed} moved={moved}"
                );
                assert!(
                    moved <= ideal + 0.01,
                    "n={n} removed={removed} moved={moved}"
                );
                assert!(kept_moved < 0.01, "n={n} removed={removed} {kept_moved}");
            }
        }
    }

    #[test]
    fn mh_picks_the_clients_slot_with_port_and_fallback() {
        let members = ms(&[1, 1, 1]);
        let t = mh_table(&members, 4093).unwrap();
        let mut m = Model::new(Scheduler::Mh, NO_FLAGS, members.clone(), 4093).unwrap();
        for i in 0..100 {
            let c = client(i);
            let want = t[(mh_hash(u32::from(*c.ip()), 0, 0) % 4093) as usize];
            assert_eq!(m.pick(c, vip(), 0), Some(want));
            assert_eq!(m.pick(SocketAddrV4::new(*c.ip(), 1), vip(), 9), Some(want));
        }
        // mh-port: the source port counts.
        let mut p = Model::new(Scheduler::Mh, PORT, members.clone(), 4093).unwrap();
        let ip = Ipv4Addr::new(198, 51, 100, 3);
        let got: std::collections::BTreeSet<u32> = (2000..2030u16)
            .map(|port| {
                let want = t[(mh_hash(u32::from(ip), port, 0) % 4093) as usize];
                let id = p.pick(SocketAddrV4::new(ip, port), vip(), 0).unwrap();
                assert_eq!(id, want);
                id
            })
            .collect();
        assert!(got.len() > 1);
        // Overloaded: none without the flag; with it, the first usable rehash.
        let c = client(3);
        let id = m.pick(c, vip(), 0).unwrap();
        m.members_mut()[id as usize - 1].overloaded = true;
        assert_eq!(m.pick(c, vip(), 0), None);
        let mut f = Model::new(Scheduler::Mh, FALLBACK, members, 4093).unwrap();
        f.members_mut()[id as usize - 1].overloaded = true;
        let addr = u32::from(*c.ip());
        let want = (1..=FALLBACK_TRIES)
            .map(|k| t[(mh_hash(addr, 0, k) % 4093) as usize])
            .find(|&x| x != id)
            .unwrap();
        assert_eq!(f.pick(c, vip(), 0), Some(want));
        for x in f.members_mut() {
            x.overloaded = true;
        }
        assert_eq!(f.pick(c, vip(), 0), None);
        // Clients of other servers are not moved by the overload.
        for i in 0..100 {
            let c = client(i);
            let home = t[(mh_hash(u32::from(*c.ip()), 0, 0) % 4093) as usize];
            if home != id {
                let mut g = Model::new(Scheduler::Mh, FALLBACK, ms(&[1, 1, 1]), 4093).unwrap();
                g.members_mut()[id as usize - 1].overloaded = true;
                assert_eq!(g.pick(c, vip(), 0), Some(home));
            }
        }
    }

    fn dst(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0xcb00_7100 + i), 80)
    }

    #[test]
    fn lblc_sticks_then_moves_when_overloaded() {
        // wlc picks for fresh destinations; each sticks to its server.
        let mut m = model(Scheduler::Lblc, NO_FLAGS, ms(&[1, 1]));
        assert_eq!(m.pick(client(1), dst(1), 0), Some(1));
        m.members_mut()[0].active = 1;
        assert_eq!(m.pick(client(2), dst(2), 1), Some(2));
        m.members_mut()[1].active = 1;
        // Same destination from any client: its server, though wlc would now pick A or B.
        m.members_mut()[0].active = 5;
        m.members_mut()[1].active = 2;
        m.members_mut()[1].weight = 4;
        for i in 0..5 {
            assert_eq!(m.pick(client(i), dst(1), 2), Some(1));
        }
        // A (5 active > weight 1) is lblc-overloaded only while someone is under half its
        // weight: B (2 * 2 < 4). Then dst 1 moves to the wlc pick, B, and stays there.
        let mut m = model(Scheduler::Lblc, NO_FLAGS, ms(&[1, 4]));
        m.members_mut()[1].active = 3; // 3 * 2 = 6 ≥ 4: nobody is half idle
        m.members_mut()[0].active = 0;
        assert_eq!(m.pick(client(1), dst(1), 0), Some(1));
        m.members_mut()[0].active = 5;
        assert_eq!(m.pick(client(1), dst(1), 1), Some(1));
        m.members_mut()[1].active = 1;
        assert_eq!(m.pick(client(1), dst(1), 2), Some(2));
        m.members_mut()[0].active = 0;
        assert_eq!(m.pick(client(1), dst(1), 3), Some(2));
        // The threshold flag alone does not move an entry (the kernel's lblc ignores it for
        // the cached server), but it keeps wlc from choosing the flagged server.
        m.members_mut()[1].overloaded = true;
        assert_eq!(m.pick(client(1), dst(1), 4), Some(2));
        assert_eq!(m.pick(client(1), dst(2), 4), Some(1));
        // Weight 0 moves it.
        let mut ms2 = m.members().to_vec();
        ms2[1].weight = 0;
        ms2[1].overloaded = false;
        m.set_members(ms2);
        assert_eq!(m.pick(client(1), dst(1), 5), Some(1));
    }

    #[test]
    fn lblc_entries_expire_after_a_day_unused() {
        let mut m = model(Scheduler::Lblc, NO_FLAGS, ms(&[1, 1]));
        assert_eq!(m.pick(client(1), dst(1), 0), Some(1));
        m.members_mut()[0].active = 1;
        // Used within the day: kept, and the use restarts the clock.
        assert_eq!(m.pick(client(1), dst(1), LBLC_EXPIRATION - 1), Some(1));
        assert_eq!(m.pick(client(1), dst(1), 2 * LBLC_EXPIRATION - 2), Some(1));
        // A day unused: gone, scheduled afresh (wlc: B now).
        assert_eq!(m.pick(client(1), dst(1), 3 * LBLC_EXPIRATION - 2), Some(2));
        // A member that left: its entries move.
        assert_eq!(m.pick(client(1), dst(2), 0), Some(2));
        m.set_members(vec![m.members()[0]]);
        assert_eq!(m.pick(client(1), dst(2), 1), Some(1));
    }

    #[test]
    fn lblcr_grows_its_set_under_overload_and_shrinks_when_quiet() {
        let mut m = model(Scheduler::Lblcr, NO_FLAGS, ms(&[1, 1, 4]));
        // All idle: wlc's tie keeps the first, A (0/1 against C's 0/4).
        assert_eq!(m.pick(client(1), dst(1), 0), Some(1));
        assert_eq!(m.lblc_set(dst(1).ip().to_owned()), Some(&[1][..]));
        // A busy (2 > 1) while C is idle (0 * 2 < 4): wlc over all picks B (0/1), which
        // joins the set at the head.
        m.members_mut()[0].active = 2;
        assert_eq!(m.pick(client(1), dst(1), 10), Some(2));
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[2, 1][..]));
        // The set's least loaded is now B.
        assert_eq!(m.pick(client(1), dst(1), 11), Some(2));
        m.members_mut()[1].active = 3;
        // B busy too: C joins.
        assert_eq!(m.pick(client(1), dst(1), 12), Some(3));
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[3, 2, 1][..]));
        m.members_mut()[2].active = 1;
        // C: 256/4 vs A 512/1, B 768/1: C is the set's least, not lblc-overloaded.
        assert_eq!(m.pick(client(1), dst(1), 13), Some(3));
        // Quiet for more than a day (the set last changed at 12; the entry used at 13):
        // the most loaded, B, is dropped, the pick is still C.
        let later = 12 + LBLCR_EXPIRATION + 1;
        assert_eq!(
            m.pick(client(1), dst(1), 13 + LBLCR_EXPIRATION - 1),
            Some(3)
        );
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[3, 2, 1][..]));
        assert_eq!(m.pick(client(1), dst(1), later), Some(3));
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[3, 1][..]));
        // One more shrink needs another quiet day (A, 512/1, goes); a set of one stays.
        // (Each step uses the entry within a day of its last use, or it would be gone.)
        assert_eq!(
            m.pick(client(1), dst(1), later + LBLCR_EXPIRATION / 2),
            Some(3)
        );
        assert_eq!(m.pick(client(1), dst(1), later + LBLCR_EXPIRATION), Some(3));
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[3, 1][..]));
        let t = later + LBLCR_EXPIRATION + 1;
        assert_eq!(m.pick(client(1), dst(1), t), Some(3));
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[3][..]));
        assert_eq!(m.pick(client(1), dst(1), t + LBLCR_EXPIRATION - 1), Some(3));
        assert_eq!(
            m.pick(client(1), dst(1), t + 2 * LBLCR_EXPIRATION - 2),
            Some(3)
        );
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[3][..]));
        // A day unused: the entry is gone and the destination scheduled afresh (wlc: B,
        // idle now, before C).
        m.members_mut()[1].active = 0;
        let t = t + 3 * LBLCR_EXPIRATION;
        assert_eq!(m.pick(client(1), dst(1), t), Some(2));
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[2][..]));
    }

    #[test]
    fn lblcr_set_min_skips_the_overloaded_flag_and_ties_go_to_the_newest() {
        let mut m = model(Scheduler::Lblcr, NO_FLAGS, ms(&[1, 1, 1]));
        m.pick(client(1), dst(1), 0);
        m.members_mut()[0].active = 5;
        m.members_mut()[2].active = 5;
        // A overloaded in the lblc sense (5 > 1, B half idle): B joins.
        assert_eq!(m.pick(client(1), dst(1), 1), Some(2));
        // Equal loads in the set {B, A}: the first, B (the newest).
        m.members_mut()[0].active = 0;
        m.members_mut()[1].active = 0;
        assert_eq!(m.pick(client(1), dst(1), 2), Some(2));
        // B flagged overloaded: the set's least is A.
        m.members_mut()[1].overloaded = true;
        assert_eq!(m.pick(client(1), dst(1), 3), Some(1));
        // Both flagged: no least in the set; wlc over all finds C (active 5, weight 1).
        m.members_mut()[0].overloaded = true;
        assert_eq!(m.pick(client(1), dst(1), 4), Some(3));
        assert_eq!(m.lblc_set(*dst(1).ip()), Some(&[3, 2, 1][..]));
        m.members_mut()[2].overloaded = true;
        assert_eq!(m.pick(client(1), dst(1), 5), None);
    }

    #[test]
    fn lblcr_sets_hold_at_most_lblcr_set_servers() {
        let n = LBLCR_SET as u32 + 3;
        let mut m = model(Scheduler::Lblcr, NO_FLAGS, ms(&vec![1; n as usize]));
        // Each pick makes the set's only least server busy while others are idle, so a new
        // server joins every time.
        for t in 0..n {
            let id = m.pick(client(1), dst(1), u64::from(t)).unwrap();
            assert_eq!(id, t + 1);
            m.members_mut()[id as usize - 1].active = 2 + t;
        }
        let set = m.lblc_set(*dst(1).ip()).unwrap();
        assert_eq!(set.len(), LBLCR_SET);
        // The newest first; each time the set was full its most loaded (the latest, busiest
        // joiner before the new one) made room.
        assert_eq!(set[0], n);
        assert!(set.contains(&1) && set.contains(&2));
    }

    /// A small simulator: connections arrive one per tick and last 50..150 ticks (active),
    /// then 20 ticks in TIME_WAIT (inactive). Returns each member's mean active count after
    /// a warm-up, and how many connections each got.
    fn simulate(sched: Scheduler, weights: &[u32]) -> (Vec<f64>, Vec<u64>) {
        let mut m = model(sched, NO_FLAGS, ms(weights));
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // (end of active, end of TIME_WAIT, member index)
        let mut conns: Vec<(u64, u64, usize)> = Vec::new();
        let n = weights.len();
        let (mut sum, mut got) = (vec![0u64; n], vec![0u64; n]);
        let (ticks, warm) = (20_000u64, 2_000u64);
        for t in 0..ticks {
            conns.retain(|&(end, tw, i)| {
                if t == end {
                    m.members_mut()[i].active -= 1;
                    m.members_mut()[i].inactive += 1;
                }
                if t == tw {
                    m.members_mut()[i].inactive -= 1;
                    return false;
                }
                true
            });
            let id = m.pick(client(t as u32), vip(), t).unwrap();
            let i = id as usize - 1;
            m.members_mut()[i].active += 1;
            let end = t + 50 + next() % 101;
            conns.push((end, end + 20, i));
            if t >= warm {
                got[i] += 1;
                for (s, x) in sum.iter_mut().zip(m.members()) {
                    *s += u64::from(x.active);
                }
            }
        }
        let mean = sum
            .iter()
            .map(|&s| s as f64 / (ticks - warm) as f64)
            .collect();
        (mean, got)
    }

    #[test]
    fn simulated_load_follows_the_weights() {
        // About 100 connections open at a time. wlc keeps active/weight level to within a
        // connection, so the means are within 5% of the weight shares; lc ignores weights.
        let weights = [1, 2, 3, 0];
        let (mean, got) = simulate(Scheduler::Wlc, &weights);
        let total: f64 = mean.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let want = total * f64::from(w) / 6.0;
            assert!((mean[i] - want).abs() <= 0.05 * total / 3.0, "{mean:?}");
        }
        assert_eq!(got[3], 0);
        let all: u64 = got.iter().sum();
        assert!((got[2] as f64 / all as f64 - 0.5).abs() < 0.03, "{got:?}");
        let (mean, got) = simulate(Scheduler::Lc, &weights);
        let total: f64 = mean.iter().sum();
        for m in &mean[..3] {
            assert!((m - total / 3.0).abs() <= 0.05 * total / 3.0, "{mean:?}");
        }
        assert_eq!(got[3], 0);
    }
}
