//! The digest of a service's hashing table (mh's Maglev table, sh's and dh's 256 buckets):
//! what every director must hold alike for a flow that moves between directors to keep its
//! real server. Computed over the real servers' addresses and ports slot by slot, never over
//! backend ids, which are each daemon's own.
//!
//! What makes two directors' tables equal (see README, Scaling out): the same real servers
//! (address:port) with the same weights after health checks, the same scheduler, `-b` flags
//! and `mh_table_size`. The tables are built from the servers sorted by address and port
//! (`sched::table`), so config order, ipvsadm edit order, backend ids and the daemon's history
//! do not matter.

use std::net::{IpAddr, Ipv4Addr};

use ring::digest::{Context, SHA256};

/// SHA-256 over the table: its length, then per slot the real server's address and port
/// (0.0.0.0:0 for an empty slot), as hex. The first 16 hex digits are enough to compare by
/// eye; the whole one is printed.
pub fn digest(slots: &[Option<(IpAddr, u16)>]) -> String {
    let mut c = Context::new(&SHA256);
    c.update(&(slots.len() as u64).to_be_bytes());
    for s in slots {
        let (a, p) = s.unwrap_or((Ipv4Addr::UNSPECIFIED.into(), 0));
        match a {
            IpAddr::V4(a) => c.update(&a.octets()),
            IpAddr::V6(a) => c.update(&a.octets()),
        }
        c.update(&p.to_be_bytes());
    }
    c.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SchedFlags, Scheduler};
    use crate::sched::{Member, table};

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, n)
    }

    /// The table as the data path holds it (ids), turned back into addresses as the daemon
    /// does for `lb-ctl --digest`.
    fn digest_of(sched: Scheduler, members: &[Member], m: u32) -> String {
        let t = table(sched, SchedFlags::default(), members, m).unwrap();
        let slots: Vec<_> = t
            .iter()
            .map(|id| {
                members
                    .iter()
                    .find(|x| x.id == *id)
                    .map(|x| (x.addr.into(), x.port))
            })
            .collect();
        digest(&slots)
    }

    #[test]
    fn two_directors_with_other_orders_and_ids_get_the_same_digest() {
        for sched in [Scheduler::Mh, Scheduler::Sh, Scheduler::Dh] {
            // Director A: servers in config order, ids 1..; director B: the reverse order
            // (ipvsadm -a in another order, or a server removed by a health check and put
            // back, which makes it the newest) and unrelated ids.
            let a: Vec<Member> = (0..5u8)
                .map(|i| Member::new(u32::from(i) + 1, ip(11 + i), 80, 1 + u32::from(i % 2)))
                .collect();
            let b: Vec<Member> = a
                .iter()
                .rev()
                .enumerate()
                .map(|(i, x)| Member::new(1000 + 7 * i as u32, x.addr, x.port, x.weight))
                .collect();
            assert_eq!(
                digest_of(sched, &a, 251),
                digest_of(sched, &b, 251),
                "{sched}"
            );
            // What must differ does: another weight, another port, another table size.
            // (dh, as IPVS's, ignores weights.)
            let mut c = a.clone();
            c[0].weight += 2;
            if sched != Scheduler::Dh {
                assert_ne!(
                    digest_of(sched, &a, 251),
                    digest_of(sched, &c, 251),
                    "{sched} weight"
                );
            }
            let mut d = a.clone();
            d[1].port = 8080;
            assert_ne!(
                digest_of(sched, &a, 251),
                digest_of(sched, &d, 251),
                "{sched} port"
            );
            if sched == Scheduler::Mh {
                assert_ne!(digest_of(sched, &a, 251), digest_of(sched, &a, 257));
            }
        }
    }
}
