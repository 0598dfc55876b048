//! Scheduling tables the data path reads: the control plane turns a service's destinations
//! into a sequence of backend ids, which the XDP program walks with one shared cursor.
//!
//! Order follows IPVS: a service's destination list has the most recently added destination
//! first (`list_add_rcu` at the head in `__ip_vs_update_dest`), rr starts after the list head,
//! and wrr is `ip_vs_wrr_schedule` unrolled: the current weight `cw` starts at the largest
//! weight, steps down by the gcd of the weights, and each pass takes, in list order, every
//! destination whose weight is at least `cw`. Destinations with weight 0 get no new
//! connections in either.

use lb_common::size::MAX_SEQUENCE;

use crate::model::Scheduler;

/// One destination as the scheduler sees it, in IPVS list order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    pub weight: u32,
}

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
            id: m.id,
            weight: ((u64::from(m.weight) * u64::from(MAX_SEQUENCE) / 2 / total.max(1)) as u32)
                .max(1),
        })
        .collect()
}

/// The table the data path reads for `sched`, or `Err` for a scheduler the data path does
/// not implement.
pub fn table(sched: Scheduler, members: &[Member]) -> Result<Vec<u32>, String> {
    match sched {
        Scheduler::Rr => Ok(rr(members)),
        Scheduler::Wrr => Ok(wrr(members)),
        other => Err(format!(
            "scheduler {other} is not supported by this data path yet (supported: rr, wrr)"
        )),
    }
}

/// Whether the data path implements `sched`.
pub fn supported(sched: Scheduler) -> bool {
    table(sched, &[]).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member {
                id: i as u32 + 1,
                weight: w,
            })
            .collect()
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
    fn unsupported_scheduler_is_an_error() {
        assert!(table(Scheduler::Mh, &ms(&[1])).is_err());
        assert!(supported(Scheduler::Rr) && supported(Scheduler::Wrr));
    }
}
