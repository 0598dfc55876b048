//! The VRRP state machine of one virtual router (RFC 5798 §6.4, RFC 3768 §6.4), with
//! keepalived's choices where the RFCs leave room (vrrp.c: `vrrp_state_backup`,
//! `vrrp_state_master_rx`; vrrp_scheduler.c: `vrrp_init_state`). A pure function of events
//! and a clock the caller passes in: no sockets, no sleeping, so tests drive it with a fake
//! clock and the daemon's shell only moves bytes and addresses.

use std::{net::Ipv4Addr, time::Duration};

use serde::Serialize;

/// RFC 5798's states (Initialize is `Init`), plus keepalived's FAULT: a tracked interface or
/// script says this router cannot serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Init,
    Backup,
    Master,
    Fault,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Init => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
}

/// The owner of the addresses; it becomes master at once and preempts always.
pub const PRIO_OWNER: u8 = 255;
/// A master leaving says so with priority 0: the backup takes over after its skew time
/// instead of the whole master-down interval.
pub const PRIO_STOP: u8 = 0;

/// What an instance is configured with (the parts the state machine needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub version: u8,
    pub priority: u8,
    /// Advertisement interval, in centiseconds (v2: whole seconds × 100).
    pub adver_int_cs: u16,
    /// `state MASTER`: wait one interval (not three) for a master before taking over.
    pub initial_master: bool,
    /// `nopreempt`: a backup never takes over from a live master of lower priority.
    pub nopreempt: bool,
    /// `preempt_delay`: how long a lower-priority master is tolerated before preempting.
    pub preempt_delay: Duration,
    /// Our address in adverts (the tie-break between equal priorities: the higher wins).
    pub addr: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The daemon starts the instance (and its tracked things are fine).
    Start,
    /// A checked advert from `src`.
    Advert {
        src: Ipv4Addr,
        priority: u8,
        adver_int_cs: u16,
    },
    /// The deadline from [`Fsm::deadline`] has come.
    Timer,
    /// A tracked interface or weight-0 script failed (true) or recovered (false).
    Fault(bool),
    /// The priority after track_script weights changed.
    Priority(u8),
    /// A sync group moves this member to a state another member took.
    Force(State),
    /// The daemon stops (SIGTERM): leave mastership with a priority-0 advert.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SendAdvert {
        priority: u8,
    },
    /// Add the VIPs to their interfaces and announce them (gratuitous ARP).
    TakeVips,
    /// Remove the VIPs.
    ReleaseVips,
    /// A transition, for notify scripts, logs and status.
    Entered(State),
}

#[derive(Clone, Debug)]
pub struct Fsm {
    pub params: Params,
    pub state: State,
    /// Priority after track_script weights.
    pub priority: u8,
    /// The master's advert interval (v3: learnt from its adverts), centiseconds.
    pub master_adver_int_cs: u16,
    /// When the master-down or advert timer fires.
    deadline: Option<Duration>,
    /// preempt_delay: when a lower-priority master stops being tolerated.
    preempt_at: Option<Duration>,
    /// While in fault: whether the fault has cleared (then Start/Force resume).
    faulted: bool,
    /// Last master seen (its advert's source) and its priority.
    pub master: Option<(Ipv4Addr, u8)>,
    pub transitions: u64,
}

fn cs(d: u16) -> Duration {
    Duration::from_millis(u64::from(d) * 10)
}

impl Fsm {
    pub fn new(params: Params) -> Fsm {
        Fsm {
            priority: params.priority,
            master_adver_int_cs: params.adver_int_cs,
            params,
            state: State::Init,
            deadline: None,
            preempt_at: None,
            faulted: false,
            master: None,
            transitions: 0,
        }
    }

    /// When the caller must deliver [`Event::Timer`], if at all.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Skew_Time: v2 `(256 - priority) / 256` s; v3 scaled by the master's interval.
    pub fn skew(&self) -> Duration {
        let p = 256 - u64::from(self.priority);
        if self.params.version == 3 {
            Duration::from_micros(p * u64::from(self.master_adver_int_cs) * 10_000 / 256)
        } else {
            Duration::from_micros(p * 1_000_000 / 256)
        }
    }

    /// Master_Down_Interval: 3 × the master's advert interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        3 * cs(self.master_adver_int_cs) + self.skew()
    }

    fn enter(&mut self, state: State, out: &mut Vec<Action>) {
        if self.state != state {
            self.state = state;
            self.transitions += 1;
            out.push(Action::Entered(state));
        }
    }

    fn become_master(&mut self, now: Duration, out: &mut Vec<Action>) {
        // The advert first, so the old master lets go of the addresses before our ARPs
        // (keepalived's order in vrrp_state_master_tx).
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::TakeVips);
        self.master = Some((self.params.addr, self.priority));
        self.preempt_at = None;
        self.deadline = Some(now + cs(self.params.adver_int_cs));
        self.enter(State::Master, out);
    }

    fn become_backup(&mut self, now: Duration, down: Duration, out: &mut Vec<Action>) {
        if self.state == State::Master {
            out.push(Action::ReleaseVips);
        }
        self.deadline = Some(now + down);
        self.enter(State::Backup, out);
    }

    fn become_fault(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Master {
            // Hand over at once, as keepalived does when a master goes to fault.
            out.push(Action::SendAdvert {
                priority: PRIO_STOP,
            });
            out.push(Action::ReleaseVips);
        }
        self.deadline = None;
        self.master = None;
        self.enter(State::Fault, out);
    }

    /// The first state after Init or Fault.
    fn start(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.master_adver_int_cs = self.params.adver_int_cs;
        if self.params.priority == PRIO_OWNER {
            self.become_master(now, out);
        } else if self.params.initial_master {
            // keepalived: a MASTER waits one interval (plus skew) for a live master, then
            // takes over; a BACKUP waits the full master-down interval.
            let wait = cs(self.master_adver_int_cs) + self.skew();
            self.become_backup(now, wait, out);
        } else {
            let wait = self.master_down_interval();
            self.become_backup(now, wait, out);
        }
    }

    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state, event) {
            // A router whose tracked things are down at start begins in FAULT (keepalived).
            (State::Init, Event::Start) if self.faulted => self.enter(State::Fault, &mut out),
            (State::Init, Event::Start) => self.start(now, &mut out),
            (_, Event::Fault(true)) => {
                self.faulted = true;
                if self.state != State::Init {
                    self.become_fault(&mut out);
                }
            }
            (State::Fault, Event::Fault(false)) => {
                self.faulted = false;
                self.start(now, &mut out);
            }
            (_, Event::Fault(false)) => self.faulted = false,
            (_, Event::Priority(p)) => {
                // The owner keeps 255 whatever the scripts say (keepalived does the same).
                if self.params.priority != PRIO_OWNER {
                    self.priority = p.clamp(1, PRIO_OWNER - 1);
                }
            }
            (State::Master, Event::Shutdown) => {
                out.push(Action::SendAdvert {
                    priority: PRIO_STOP,
                });
                out.push(Action::ReleaseVips);
                self.deadline = None;
                self.enter(State::Init, &mut out);
            }
            (_, Event::Shutdown) => {
                self.deadline = None;
                self.enter(State::Init, &mut out);
            }
            (State::Backup, Event::Timer) if self.deadline.is_some_and(|d| now >= d) => {
                self.become_master(now, &mut out)
            }
            (State::Master, Event::Timer) if self.deadline.is_some_and(|d| now >= d) => {
                out.push(Action::SendAdvert {
                    priority: self.priority,
                });
                self.deadline = Some(now + cs(self.params.adver_int_cs));
            }
            (_, Event::Timer) => {}
            (
                State::Backup,
                Event::Advert {
                    src,
                    priority,
                    adver_int_cs,
                },
            ) => self.backup_rx(now, src, priority, adver_int_cs),
            (
                State::Master,
                Event::Advert {
                    src,
                    priority,
                    adver_int_cs,
                },
            ) => self.master_rx(now, src, priority, adver_int_cs, &mut out),
            (_, Event::Advert { .. }) => {}
            (State::Backup, Event::Force(State::Master)) => self.become_master(now, &mut out),
            (State::Master, Event::Force(State::Backup)) => {
                let down = self.master_down_interval();
                self.become_backup(now, down, &mut out)
            }
            (State::Init | State::Fault, Event::Force(_)) | (_, Event::Force(_)) => {}
            (_, Event::Start) => {}
        }
        out
    }

    fn backup_rx(&mut self, now: Duration, src: Ipv4Addr, priority: u8, adver_int_cs: u16) {
        if priority == PRIO_STOP {
            self.deadline = Some(now + self.skew());
            return;
        }
        let tolerate_lower =
            self.params.preempt_delay > Duration::ZERO && self.preempt_at.is_none_or(|t| now < t);
        if self.params.nopreempt || priority >= self.priority || tolerate_lower {
            if self.params.version == 3 {
                self.master_adver_int_cs = adver_int_cs;
            }
            self.deadline = Some(now + self.master_down_interval());
            self.master = Some((src, priority));
            if self.params.preempt_delay > Duration::ZERO {
                if priority >= self.priority {
                    self.preempt_at = None;
                } else if self.preempt_at.is_none() {
                    self.preempt_at = Some(now + self.params.preempt_delay);
                }
            }
        }
        // Otherwise a lower-priority master is ignored: our timer runs out and we preempt.
    }

    fn master_rx(
        &mut self,
        now: Duration,
        src: Ipv4Addr,
        priority: u8,
        adver_int_cs: u16,
        out: &mut Vec<Action>,
    ) {
        if priority == PRIO_STOP {
            // Another master is leaving: make sure backups hear us at once.
            out.push(Action::SendAdvert {
                priority: self.priority,
            });
            self.deadline = Some(now + cs(self.params.adver_int_cs));
            return;
        }
        let higher = priority > self.priority
            || (priority == self.priority && u32::from(src) > u32::from(self.params.addr));
        if higher {
            if self.params.version == 3 {
                self.master_adver_int_cs = adver_int_cs;
            }
            self.master = Some((src, priority));
            let down = self.master_down_interval();
            self.become_backup(now, down, out);
        } else {
            // A lower-priority master: answer at once so it steps down ("forcing a new
            // election", keepalived).
            out.push(Action::SendAdvert {
                priority: self.priority,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

    fn params(priority: u8) -> Params {
        Params {
            version: 2,
            priority,
            adver_int_cs: 100,
            initial_master: false,
            nopreempt: false,
            preempt_delay: Duration::ZERO,
            addr: ME,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn advert(priority: u8) -> Event {
        Event::Advert {
            src: PEER,
            priority,
            adver_int_cs: 100,
        }
    }

    /// Delivers timers due up to `until` (as the shell does) and returns every action.
    fn run_until(f: &mut Fsm, until: Duration) -> Vec<(Duration, Action)> {
        let mut out = Vec::new();
        while let Some(d) = f.deadline().filter(|d| *d <= until) {
            for a in f.handle(d, Event::Timer) {
                out.push((d, a));
            }
        }
        out
    }

    const TAKE: [Action; 3] = [
        Action::SendAdvert { priority: 100 },
        Action::TakeVips,
        Action::Entered(State::Master),
    ];

    #[test]
    fn timers_follow_the_rfc() {
        let mut f = Fsm::new(params(100));
        // v2: skew (256-100)/256 s = 609.375 ms; master down 3 s + skew.
        assert_eq!(f.skew(), Duration::from_micros(609_375));
        assert_eq!(f.master_down_interval(), Duration::from_micros(3_609_375));
        let mut v3 = params(100);
        v3.version = 3;
        v3.adver_int_cs = 50;
        let f3 = Fsm::new(v3);
        // v3: ((256-100) × 50 cs) / 256 = 30.47 cs.
        assert_eq!(f3.skew(), Duration::from_micros(304_687));
        assert_eq!(
            f3.master_down_interval(),
            ms(1500) + Duration::from_micros(304_687)
        );

        assert_eq!(
            f.handle(ms(0), Event::Start),
            [Action::Entered(State::Backup)]
        );
        assert_eq!(f.deadline(), Some(Duration::from_micros(3_609_375)));
        // An advert from a higher master resets the timer.
        assert!(f.handle(ms(2000), advert(150)).is_empty());
        assert_eq!(f.master, Some((PEER, 150)));
        assert_eq!(
            f.deadline(),
            Some(ms(2000) + Duration::from_micros(3_609_375))
        );
        // A timer delivered early does nothing.
        assert!(f.handle(ms(3000), Event::Timer).is_empty());
        // Silence: master at 2000 + 3609.375 ms, then an advert every second.
        let acts = run_until(&mut f, ms(8000));
        let t0 = ms(2000) + Duration::from_micros(3_609_375);
        assert_eq!(
            acts[..3].iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(),
            TAKE
        );
        assert!(acts[..3].iter().all(|(t, _)| *t == t0));
        let sends: Vec<Duration> = acts[3..].iter().map(|(t, _)| *t).collect();
        assert_eq!(sends, [t0 + ms(1000), t0 + ms(2000)]);
    }

    #[test]
    fn owner_is_master_at_once_and_initial_master_waits_one_interval() {
        let mut f = Fsm::new(params(255));
        let acts = f.handle(ms(0), Event::Start);
        assert_eq!(
            acts[1..],
            [Action::TakeVips, Action::Entered(State::Master)]
        );
        assert_eq!(acts[0], Action::SendAdvert { priority: 255 });

        let mut p = params(100);
        p.initial_master = true;
        let mut f = Fsm::new(p);
        f.handle(ms(0), Event::Start);
        assert_eq!(
            f.deadline(),
            Some(ms(1000) + Duration::from_micros(609_375))
        );
    }

    #[test]
    fn priority_zero_means_take_over_after_skew() {
        let mut f = Fsm::new(params(100));
        f.handle(ms(0), Event::Start);
        f.handle(ms(500), advert(150));
        f.handle(ms(700), advert(0));
        assert_eq!(f.deadline(), Some(ms(700) + Duration::from_micros(609_375)));
        let acts = run_until(&mut f, ms(1400));
        assert_eq!(
            acts.iter()
                .map(|(_, a)| a.clone())
                .take(3)
                .collect::<Vec<_>>(),
            TAKE
        );
    }

    #[test]
    fn master_steps_down_to_higher_and_answers_lower() {
        let mut f = Fsm::new(params(100));
        f.handle(ms(0), Event::Start);
        run_until(&mut f, ms(4000));
        assert_eq!(f.state, State::Master);
        // Lower priority: we answer with an advert at once and stay.
        assert_eq!(
            f.handle(ms(4100), advert(50)),
            [Action::SendAdvert { priority: 100 }]
        );
        // Equal priority: the higher address wins (PEER .3 > ME .2).
        assert_eq!(
            f.handle(ms(4200), advert(100)),
            [Action::ReleaseVips, Action::Entered(State::Backup)]
        );
        assert_eq!(f.master, Some((PEER, 100)));
        assert_eq!(f.transitions, 3, "INIT→BACKUP→MASTER→BACKUP");
    }

    #[test]
    fn preempt_nopreempt_and_preempt_delay() {
        // A higher-priority backup preempts a lower master: it ignores its adverts.
        let mut f = Fsm::new(params(200));
        f.handle(ms(0), Event::Start);
        let mut t = ms(0);
        while f.state == State::Backup && t < ms(10_000) {
            t += ms(1000);
            f.handle(t, advert(100));
            run_until(&mut f, t + ms(999));
        }
        assert_eq!(f.state, State::Master, "preempted by {t:?}");
        assert!(t < ms(5000), "{t:?}");

        // nopreempt: the lower master is accepted for ever.
        let mut p = params(200);
        p.nopreempt = true;
        let mut f = Fsm::new(p);
        f.handle(ms(0), Event::Start);
        for s in 1..60 {
            f.handle(ms(s * 1000), advert(100));
            run_until(&mut f, ms(s * 1000 + 999));
        }
        assert_eq!(f.state, State::Backup);
        assert_eq!(f.master, Some((PEER, 100)));

        // preempt_delay 10 s: tolerated for 10 s from the first lower advert, then preempt.
        let mut p = params(200);
        p.preempt_delay = Duration::from_secs(10);
        let mut f = Fsm::new(p);
        f.handle(ms(0), Event::Start);
        let mut became = None;
        for s in 1..30 {
            f.handle(ms(s * 1000), advert(100));
            run_until(&mut f, ms(s * 1000 + 999));
            if f.state == State::Master && became.is_none() {
                became = Some(s);
            }
        }
        let s = became.expect("preempted");
        // First lower advert at 1 s; tolerated until 11 s: the one at 10 s was the last
        // accepted, so the down timer (3 s + skew) runs out at 13.2 s.
        assert_eq!(s, 13, "became master at {s} s");
    }

    #[test]
    fn fault_releases_and_recovers_through_backup() {
        let mut f = Fsm::new(params(100));
        f.handle(ms(0), Event::Start);
        run_until(&mut f, ms(4000));
        assert_eq!(
            f.handle(ms(4100), Event::Fault(true)),
            [
                Action::SendAdvert { priority: 0 },
                Action::ReleaseVips,
                Action::Entered(State::Fault)
            ]
        );
        assert_eq!(f.deadline(), None);
        // Adverts and timers change nothing in fault.
        assert!(f.handle(ms(4200), advert(10)).is_empty());
        assert!(f.handle(ms(9000), Event::Timer).is_empty());
        assert_eq!(
            f.handle(ms(9100), Event::Fault(false)),
            [Action::Entered(State::Backup)]
        );
        assert_eq!(f.deadline(), Some(ms(9100) + f.master_down_interval()));
        // A fault before Start: it starts in FAULT, and leaves it when the fault clears.
        let mut g = Fsm::new(params(100));
        g.handle(ms(0), Event::Fault(true));
        assert_eq!(g.state, State::Init);
        assert_eq!(
            g.handle(ms(1), Event::Start),
            [Action::Entered(State::Fault)]
        );
        assert_eq!(
            g.handle(ms(2), Event::Fault(false)),
            [Action::Entered(State::Backup)]
        );
    }

    #[test]
    fn shutdown_sends_priority_zero_only_as_master() {
        let mut f = Fsm::new(params(100));
        f.handle(ms(0), Event::Start);
        assert_eq!(
            f.handle(ms(10), Event::Shutdown),
            [Action::Entered(State::Init)]
        );
        let mut f = Fsm::new(params(255));
        f.handle(ms(0), Event::Start);
        assert_eq!(
            f.handle(ms(10), Event::Shutdown),
            [
                Action::SendAdvert { priority: 0 },
                Action::ReleaseVips,
                Action::Entered(State::Init)
            ]
        );
    }

    #[test]
    fn weights_change_the_advertised_priority_but_not_the_owner() {
        let mut f = Fsm::new(params(100));
        f.handle(ms(0), Event::Start);
        run_until(&mut f, ms(4000));
        f.handle(ms(4000), Event::Priority(80));
        let acts = run_until(&mut f, ms(5000));
        assert_eq!(acts.last().unwrap().1, Action::SendAdvert { priority: 80 });
        // Now a peer at 90 wins.
        assert_eq!(f.handle(ms(5100), advert(90))[0], Action::ReleaseVips);
        let mut o = Fsm::new(params(255));
        o.handle(ms(0), Event::Priority(200));
        assert_eq!(o.priority, 255);
    }

    #[test]
    fn sync_group_forces() {
        let mut f = Fsm::new(params(100));
        f.handle(ms(0), Event::Start);
        assert_eq!(f.handle(ms(10), Event::Force(State::Master)), TAKE);
        assert_eq!(
            f.handle(ms(20), Event::Force(State::Backup)),
            [Action::ReleaseVips, Action::Entered(State::Backup)]
        );
    }
}
