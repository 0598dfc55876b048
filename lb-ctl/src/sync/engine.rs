//! The decisions of connection sync, without sockets or a clock of their own: how a master
//! batches connections into messages and paces them, and which roles run when they follow
//! a VRRP instance. The shell (`shell.rs`) feeds them time and moves the bytes.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::{SyncConn, wire::Encoder};

/// A message is sent at the latest this long after its first entry (IPVS keeps a partly
/// filled buffer up to `IPVS_SYNC_FLUSH_TIME`, 2 s in its code, ~1 s in practice: a
/// takeover in between loses what waited; we aim lower).
pub const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// Messages waiting for the rate bound beyond this many are dropped and counted (IPVS's
/// `sync_qlen_max` plays the same part).
pub const QUEUE_MAX: usize = 1024;

/// A token bucket: `rate` tokens a second, at most `burst` saved.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    pub fn next_token(&self, now: Instant) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        let at = self.last + Duration::from_secs_f64(missing / self.rate);
        at.max(now)
    }
}

/// The master's side: connections in, messages out, batched to `maxlen`, flushed within
/// [`FLUSH_AFTER`], paced by a token bucket of messages; what overflows the queue is
/// dropped and counted, so the reader of the data path's events never waits on the network.
#[derive(Debug)]
pub struct Batcher {
    enc: Encoder,
    /// When the message being built got its first entry.
    first: Option<Instant>,
    queue: VecDeque<(Vec<u8>, usize)>,
    bucket: TokenBucket,
    /// Connections dropped because the queue was full (the rate bound's excess).
    pub rate_drops: u64,
    pub messages_dropped: u64,
}

impl Batcher {
    /// `rate`: messages a second; `burst`: how many may go at once after a quiet spell.
    pub fn new(syncid: u8, maxlen: usize, rate: u32, burst: u32, now: Instant) -> Batcher {
        Batcher {
            enc: Encoder::new(syncid, maxlen),
            first: None,
            queue: VecDeque::new(),
            bucket: TokenBucket::new(rate, burst, now),
            rate_drops: 0,
            messages_dropped: 0,
        }
    }

    fn enqueue(&mut self, msg: Vec<u8>) {
        let n = msg[4] as usize;
        if self.queue.len() >= QUEUE_MAX {
            self.rate_drops += n as u64;
            self.messages_dropped += 1;
        } else {
            self.queue.push_back((msg, n));
        }
    }

    pub fn add(&mut self, c: &SyncConn, now: Instant) {
        if let Some(full) = self.enc.push(c) {
            self.enqueue(full);
            self.first = Some(now);
        } else if self.first.is_none() {
            self.first = Some(now);
        }
    }

    /// The messages to send now: a partly filled one once it has waited [`FLUSH_AFTER`],
    /// then as many queued as the bucket allows. Each comes with its entry count.
    pub fn due(&mut self, now: Instant) -> Vec<(Vec<u8>, usize)> {
        if let Some(f) = self.first
            && now.saturating_duration_since(f) >= FLUSH_AFTER
        {
            if let Some(m) = self.enc.take() {
                self.enqueue(m);
            }
            self.first = None;
        }
        let mut out = Vec::new();
        while !self.queue.is_empty() && self.bucket.take(now) {
            out.extend(self.queue.pop_front());
        }
        out
    }

    /// When [`Batcher::due`] may have something next (`None`: nothing waits).
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let flush = self.first.map(|f| f + FLUSH_AFTER);
        let send = (!self.queue.is_empty()).then(|| self.bucket.next_token(now));
        match (flush, send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Connections waiting (built or queued).
    pub fn waiting(&self) -> usize {
        self.enc.pending() + self.queue.iter().map(|(_, n)| n).sum::<usize>()
    }
}

/// Which sync roles run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    pub master: bool,
    pub backup: bool,
}

/// A followed VRRP instance's state, as the sync daemon sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Followed {
    Master,
    /// BACKUP, FAULT or INIT.
    NotMaster,
    /// The instance is not running (no VRRP).
    Missing,
}

/// keepalived's `lvs_sync_daemon IFACE INSTANCE`: the master role while the instance is
/// MASTER, the backup role otherwise (it starts the backup daemon at start unless the
/// instance is already MASTER, and on each transition stops one role and starts the other:
/// `ipvs_syncd_master` / `ipvs_syncd_backup`). FAULT and INIT are "otherwise".
pub fn follow(state: Followed) -> Roles {
    match state {
        Followed::Master => Roles {
            master: true,
            backup: false,
        },
        Followed::NotMaster | Followed::Missing => Roles {
            master: false,
            backup: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::tests::conn;
    use crate::sync::wire;

    #[test]
    fn a_lone_connection_goes_within_the_flush_interval() {
        let t0 = Instant::now();
        let mut b = Batcher::new(1, wire::DEFAULT_MAXLEN, 100, 10, t0);
        b.add(&conn(1), t0);
        assert!(b.due(t0).is_empty(), "a partly filled message waits");
        assert_eq!(b.next_wake(t0), Some(t0 + FLUSH_AFTER));
        assert!(
            b.due(t0 + FLUSH_AFTER - Duration::from_millis(1))
                .is_empty()
        );
        let out = b.due(t0 + FLUSH_AFTER);
        assert_eq!(out.len(), 1);
        assert_eq!(wire::decode(&out[0].0).unwrap().conns.len(), 1);
        assert_eq!(b.next_wake(t0 + FLUSH_AFTER), None);
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn full_messages_go_at_once_and_keep_their_order() {
        let t0 = Instant::now();
        let mut b = Batcher::new(1, wire::DEFAULT_MAXLEN, 1000, 100, t0);
        for i in 0..100 {
            b.add(&conn(i), t0);
        }
        let out = b.due(t0);
        assert_eq!(out.iter().map(|m| m.1).collect::<Vec<_>>(), vec![40, 40]);
        let out2 = b.due(t0 + FLUSH_AFTER);
        assert_eq!(out2.len(), 1);
        let ports: Vec<u16> = out
            .iter()
            .chain(&out2)
            .flat_map(|(m, _)| wire::decode(m).unwrap().conns)
            .map(|c| c.cport)
            .collect();
        assert_eq!(ports, (0..100).collect::<Vec<_>>());
    }

    /// The bound: 10 messages a second, burst 2. A flood of connections fills the queue;
    /// messages leave at the rate, the excess beyond the queue is counted, and adding never
    /// blocks (the loop below is the reader).
    #[test]
    fn the_rate_is_bounded_and_the_excess_counted() {
        let t0 = Instant::now();
        let mut b = Batcher::new(1, wire::DEFAULT_MAXLEN, 10, 2, t0);
        let total = 40 * (QUEUE_MAX + 10);
        for i in 0..total {
            b.add(&conn(i as u16), t0);
        }
        // 2 (burst) at once, then one per 100 ms.
        assert_eq!(b.due(t0).len(), 2);
        assert!(b.due(t0 + Duration::from_millis(50)).is_empty());
        assert_eq!(b.next_wake(t0), Some(t0 + Duration::from_millis(100)));
        assert_eq!(b.due(t0 + Duration::from_millis(100)).len(), 1);
        assert_eq!(
            b.due(t0 + Duration::from_secs(1)).len(),
            2,
            "burst caps the saved tokens"
        );
        // The queue held QUEUE_MAX messages; the rest (10 messages less the one still
        // being built) were dropped and counted.
        assert_eq!(b.messages_dropped, 9);
        assert_eq!(b.rate_drops, 9 * 40);
        assert_eq!(
            b.waiting() + 5 * 40 + b.rate_drops as usize,
            total,
            "every connection is sent, waiting or counted"
        );
    }

    #[test]
    fn roles_follow_the_instance_as_keepalived_does() {
        assert_eq!(
            follow(Followed::Master),
            Roles {
                master: true,
                backup: false
            }
        );
        for s in [Followed::NotMaster, Followed::Missing] {
            assert_eq!(
                follow(s),
                Roles {
                    master: false,
                    backup: true
                }
            );
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut tb = TokenBucket::new(4, 1, t0);
        assert!(tb.take(t0));
        assert!(!tb.take(t0));
        assert_eq!(tb.next_token(t0), t0 + Duration::from_millis(250));
        assert!(tb.take(t0 + Duration::from_millis(250)));
    }
}
