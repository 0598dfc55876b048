//! The loop every checker shares (keepalived's `tcp_epilog` and its twins in check_http.c and
//! check_misc.c): when to probe again, how many failures make a checker go down, and when
//! it comes back. Pure state ([`CheckerState::step`]) plus a task ([`run`]) that owns the
//! timers; the probe itself is whatever future the caller passes in.

use std::{future::Future, time::Duration};

use super::spec::Timing;

/// What one probe found: up (with a `misc_dynamic` weight, if the command gave one), or
/// down and why ("timeout", "connection refused", "status 503", "digest mismatch",
/// "exit code 1").
pub type Outcome = Result<Option<u32>, String>;

/// A checker's state, as keepalived's `checker_t` keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckerState {
    pub up: bool,
    /// Whether it has probed once.
    pub has_run: bool,
    /// Failed attempts in a row while up (keepalived's `retry_it`).
    pub retry_it: u32,
}

impl CheckerState {
    /// A new checker: up, unless `alpha` (down until its first good probe).
    pub fn new(alpha: bool) -> Self {
        CheckerState {
            up: !alpha,
            has_run: false,
            retry_it: 0,
        }
    }

    /// Takes one probe's result; returns the new up/down state if it changed, and when to
    /// probe next. keepalived's rule: a success is up at once; a failure while up is retried
    /// `retry` times, `delay_before_retry` apart, before the checker goes down; while down,
    /// probes come every `delay_loop`.
    pub fn step(&mut self, ok: bool, t: &Timing) -> (Option<bool>, Duration) {
        let mut delay = t.delay_loop;
        let mut change = None;
        if ok || ((self.up || !self.has_run) && self.retry_it >= t.retry) {
            self.retry_it = 0;
            if ok != self.up {
                self.up = ok;
                change = Some(ok);
            }
        } else if self.up {
            delay = t.delay_before_retry;
            self.retry_it += 1;
        }
        self.has_run = true;
        (change, delay)
    }
}

/// What a checker task reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Every probe: for `lb-ctl status` (`Err`: the failure reason).
    Probed(Result<(), String>),
    /// The checker went up or down; `reason` is the failure that took it down.
    Changed { up: bool, reason: String },
    /// A `misc_dynamic` command asked for another weight.
    Weight(u32),
}

/// Runs a checker for ever: waits `first` (the warmup), then probes and reports. `report`
/// is called for every probe and every change; it returns false when nobody listens any
/// more, which ends the loop.
pub async fn run<P, F>(
    timing: Timing,
    mut state: CheckerState,
    first: Duration,
    mut probe: P,
    mut report: impl FnMut(Report) -> bool,
) where
    P: FnMut() -> F,
    F: Future<Output = Outcome>,
{
    tokio::time::sleep(first).await;
    let mut weight: Option<u32> = None;
    loop {
        let outcome = probe().await;
        let ok = outcome.is_ok();
        if !report(Report::Probed(
            outcome.as_ref().map(|_| ()).map_err(Clone::clone),
        )) {
            return;
        }
        if let Ok(Some(w)) = outcome
            && weight != Some(w)
        {
            weight = Some(w);
            if !report(Report::Weight(w)) {
                return;
            }
        }
        let (change, delay) = state.step(ok, &timing);
        if let Some(up) = change {
            let reason = match &outcome {
                Ok(_) => "check succeeded".to_string(),
                Err(e) => e.clone(),
            };
            if !report(Report::Changed { up, reason }) {
                return;
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// [`run`] under a supervisor: a checker whose probe panics (a bug, not a failed check) is
/// logged, reported as a failed probe, and started again `delay_loop` later with the
/// up/down state it last reported, so one broken checker never stops checking for good and
/// never takes the others (tasks of the same runtime) with it. Ends when `report` does.
pub async fn supervise<P, F, R>(
    id: u64,
    timing: Timing,
    state: CheckerState,
    first: Duration,
    probe: P,
    report: R,
) where
    P: FnMut() -> F + Clone + Send + 'static,
    F: Future<Output = Outcome> + Send + 'static,
    R: FnMut(Report) -> bool + Clone + Send + 'static,
{
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let up = Arc::new(AtomicBool::new(state.up));
    let mut state = state;
    let mut first = first;
    loop {
        let seen = up.clone();
        let mut inner_report = report.clone();
        let task = tokio::spawn(run(timing, state, first, probe.clone(), move |r| {
            if let Report::Changed { up, .. } = &r {
                seen.store(*up, Ordering::Relaxed);
            }
            inner_report(r)
        }));
        // Aborting the supervisor (a checker stopped by a reload) aborts the checker.
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _guard = AbortOnDrop(task.abort_handle());
        match task.await {
            Err(e) if e.is_panic() => {
                log::error!(
                    "health checker {id} panicked; it starts again in {:?}",
                    timing.delay_loop
                );
                let mut r = report.clone();
                if !r(Report::Probed(Err("checker panicked".into()))) {
                    return;
                }
            }
            _ => return,
        }
        state = CheckerState {
            up: up.load(Ordering::Relaxed),
            has_run: true,
            retry_it: 0,
        };
        first = timing.delay_loop;
    }
}

/// A random delay in `0..=warmup`, so that checkers started together do not probe together
/// (keepalived's `warmup`).
pub fn warmup_delay(warmup: Duration, salt: u64) -> Duration {
    if warmup.is_zero() {
        return Duration::ZERO;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of the clock and the checker's id: spread, not secret.
    let mut z = nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let frac = (z >> 11) as f64 / (1u64 << 53) as f64;
    warmup.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn timing(retry: u32) -> Timing {
        Timing {
            delay_loop: Duration::from_secs(6),
            retry,
            delay_before_retry: Duration::from_secs(2),
            warmup: Duration::ZERO,
        }
    }

    #[test]
    fn retries_before_down_and_up_at_once() {
        let t = timing(2);
        let mut s = CheckerState::new(false);
        let s6 = Duration::from_secs(6);
        let s2 = Duration::from_secs(2);
        assert_eq!(s.step(true, &t), (None, s6));
        // Two retries, delay_before_retry apart, then down on the third failure.
        assert_eq!(s.step(false, &t), (None, s2));
        assert_eq!(s.step(false, &t), (None, s2));
        assert_eq!(s.step(false, &t), (Some(false), s6));
        // While down: every delay_loop, no retries.
        assert_eq!(s.step(false, &t), (None, s6));
        assert_eq!(s.step(true, &t), (Some(true), s6));
        // A success between failures resets the count.
        assert_eq!(s.step(false, &t), (None, s2));
        assert_eq!(s.step(true, &t), (None, s6));
        assert_eq!(s.step(false, &t), (None, s2));
        assert_eq!(s.step(false, &t), (None, s2));
        assert_eq!(s.step(false, &t), (Some(false), s6));
    }

    #[test]
    fn retry_zero_goes_down_at_the_first_failure() {
        let t = timing(0);
        let mut s = CheckerState::new(false);
        assert_eq!(s.step(false, &t), (Some(false), Duration::from_secs(6)));
    }

    #[test]
    fn alpha_starts_down_until_a_good_probe() {
        let t = timing(1);
        let mut s = CheckerState::new(true);
        assert!(!s.up);
        // Down already: a failure changes nothing and is not retried.
        assert_eq!(s.step(false, &t), (None, Duration::from_secs(6)));
        assert_eq!(s.step(true, &t), (Some(true), Duration::from_secs(6)));
        // Without alpha a first failure is retried like any other.
        let mut s = CheckerState::new(false);
        assert_eq!(s.step(false, &t), (None, Duration::from_secs(2)));
        assert_eq!(s.step(false, &t), (Some(false), Duration::from_secs(6)));
    }

    /// The loop on tokio's paused clock: a server that fails from the 2nd probe on is down
    /// after delay_loop + retry × delay_before_retry (the probe itself takes no time here).
    #[tokio::test(start_paused = true)]
    async fn run_reports_down_after_the_retries_and_up_again() {
        let t = timing(1);
        let start = Instant::now();
        let probes = Arc::new(Mutex::new(0u32));
        let seen: Arc<Mutex<Vec<(Duration, Report)>>> = Default::default();
        let p = probes.clone();
        let s = seen.clone();
        let task = tokio::spawn(run(
            t,
            CheckerState::new(false),
            Duration::from_secs(1),
            move || {
                let p = p.clone();
                async move {
                    let mut n = p.lock().unwrap();
                    *n += 1;
                    // Probes 2..=4 fail (server stopped), then it is back.
                    if (2..=4).contains(&*n) {
                        Err("connection refused".to_string())
                    } else {
                        Ok(None)
                    }
                }
            },
            move |r| {
                if !matches!(r, Report::Probed(_)) {
                    s.lock().unwrap().push((start.elapsed(), r));
                }
                true
            },
        ));
        tokio::time::sleep(Duration::from_secs(40)).await;
        task.abort();
        let seen = seen.lock().unwrap().clone();
        // Probes at 1 (ok), 7 (fail), 9 (retry fails: down), 15 (fail), 21 (ok: up).
        assert_eq!(
            seen,
            [
                (
                    Duration::from_secs(9),
                    Report::Changed {
                        up: false,
                        reason: "connection refused".into()
                    }
                ),
                (
                    Duration::from_secs(21),
                    Report::Changed {
                        up: true,
                        reason: "check succeeded".into()
                    }
                ),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_reports_dynamic_weights_once_each() {
        let codes = Arc::new(Mutex::new(vec![Ok(Some(5)), Ok(Some(5)), Ok(Some(9))]));
        let seen: Arc<Mutex<Vec<Report>>> = Default::default();
        let s = seen.clone();
        let c = codes.clone();
        let task = tokio::spawn(run(
            timing(0),
            CheckerState::new(false),
            Duration::ZERO,
            move || {
                let c = c.clone();
                async move {
                    let mut c = c.lock().unwrap();
                    if c.is_empty() {
                        Ok(Some(9))
                    } else {
                        c.remove(0)
                    }
                }
            },
            move |r| {
                if !matches!(r, Report::Probed(_)) {
                    s.lock().unwrap().push(r);
                }
                true
            },
        ));
        tokio::time::sleep(Duration::from_secs(30)).await;
        task.abort();
        assert_eq!(
            *seen.lock().unwrap(),
            [Report::Weight(5), Report::Weight(9)]
        );
    }

    /// A probe that panics (its 2nd call) is restarted, keeping the state it had reported.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_checker_is_restarted_with_its_state() {
        let calls = Arc::new(Mutex::new(0u32));
        let seen: Arc<Mutex<Vec<Report>>> = Default::default();
        let c = calls.clone();
        let s = seen.clone();
        let task = tokio::spawn(supervise(
            7,
            timing(0),
            CheckerState::new(false),
            Duration::ZERO,
            move || {
                let c = c.clone();
                async move {
                    let n = {
                        let mut n = c.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    match n {
                        1 => Err("connection refused".to_string()),
                        2 => panic!("a bug in a probe"),
                        _ => Ok(None),
                    }
                }
            },
            move |r| {
                s.lock().unwrap().push(r);
                true
            },
        ));
        tokio::time::sleep(Duration::from_secs(20)).await;
        task.abort();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen[..4],
            [
                Report::Probed(Err("connection refused".into())),
                Report::Changed {
                    up: false,
                    reason: "connection refused".into()
                },
                Report::Probed(Err("checker panicked".into())),
                Report::Probed(Ok(())),
            ]
        );
        // Restarted down (as it had reported), so the first good probe brings it up.
        assert_eq!(
            seen[4],
            Report::Changed {
                up: true,
                reason: "check succeeded".into()
            }
        );
        assert!(*calls.lock().unwrap() >= 4);
    }

    #[test]
    fn warmup_is_within_bounds() {
        for i in 0..100 {
            let d = warmup_delay(Duration::from_secs(6), i);
            assert!(d <= Duration::from_secs(6), "{d:?}");
        }
        assert_eq!(warmup_delay(Duration::ZERO, 1), Duration::ZERO);
    }
}
