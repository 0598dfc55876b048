//! Real-server health checks, as keepalived's checker process: TCP_CHECK, HTTP_GET, SSL_GET
//! and MISC_CHECK with keepalived's options, defaults and timing, and what their results do
//! to the table (ipwrapper.c): failed servers leave the data path or stay at weight 0,
//! quorum with hysteresis, the sorry server, notify commands and mail.
//!
//! - [`spec`]: the settings, defaults resolved (built by `config.rs`).
//! - [`checker`]: the shared loop (delay_loop, retry, delay_before_retry, warmup, alpha).
//! - [`probe`]: one probe of each type.
//! - [`state`]: the pure outcome: alive servers, quorum, the table the data path gets.
//! - [`Runner`]: the checkers' own thread.
//!
//! Why a thread of its own: the daemon's loop is a current-thread runtime that also syncs
//! the data path (30 ms for a large table), resolves routes and serves the socket. Checkers
//! there would see their timeouts stretched by that work (a false "timeout") and would
//! delay requests with TLS handshakes and MD5s. So every checker is a task on one separate
//! current-thread runtime — thousands of checks are thousands of tasks, not threads — and
//! reports over a channel that the daemon's loop reads between requests.

pub mod checker;
pub mod probe;
pub mod spec;
pub mod state;

use std::{collections::HashMap, sync::Arc};

use tokio::sync::mpsc;

pub use checker::Report;
pub use spec::{GlobalDefs, HealthSpecs};
pub use state::{Changes, Health};

enum Command {
    // Boxed: a spec with an IPv6 target is several times the size of `Stop`.
    Start(u64, Box<spec::CheckSpec>, checker::CheckerState),
    Stop(u64),
}

/// The checkers' thread. Dropping it stops every checker and the thread.
pub struct Runner {
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Reports of the checkers, by checker id.
pub type Reports = mpsc::UnboundedReceiver<(u64, Report)>;

impl Runner {
    /// Starts the thread; the daemon reads the reports from the receiver.
    pub fn start() -> std::io::Result<(Runner, Reports)> {
        let (commands, mut rx) = mpsc::unbounded_channel::<Command>();
        let (reports, out) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("lb-health".into())
            .spawn(move || {
                let tls = probe::tls_config();
                rt.block_on(async move {
                    let mut tasks: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
                    while let Some(c) = rx.recv().await {
                        match c {
                            Command::Start(id, spec, st) => {
                                let reports = reports.clone();
                                let tls = tls.clone();
                                let first = checker::warmup_delay(spec.timing.warmup, id);
                                let spec = Arc::new(*spec);
                                let timing = spec.timing;
                                let h = tokio::spawn(checker::supervise(
                                    id,
                                    timing,
                                    st,
                                    first,
                                    move || {
                                        let spec = spec.clone();
                                        let tls = tls.clone();
                                        async move { probe::probe(&spec, &tls).await }
                                    },
                                    move |r| reports.send((id, r)).is_ok(),
                                ));
                                tasks.insert(id, h.abort_handle());
                            }
                            Command::Stop(id) => {
                                if let Some(h) = tasks.remove(&id) {
                                    h.abort();
                                }
                            }
                        }
                    }
                    for h in tasks.values() {
                        h.abort();
                    }
                });
            })?;
        Ok((
            Runner {
                commands,
                thread: Some(thread),
            },
            out,
        ))
    }

    /// Starts and stops checkers as a (re)configuration asks.
    pub fn apply(&self, changes: Changes) {
        for id in changes.stop {
            let _ = self.commands.send(Command::Stop(id));
        }
        for (id, spec, st) in changes.start {
            let _ = self.commands.send(Command::Start(id, Box::new(spec), st));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop, which aborts every checker.
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
