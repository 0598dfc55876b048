//! What keepalived does when a real server or a service's quorum changes state besides
//! changing the table: run the operator's notify commands and send an e-mail per transition.
//!
//! Both are fire-and-forget from the health checker's point of view: `Mailer::send` and
//! `run_command` return at once and do their work on tasks of the daemon's tokio runtime
//! (a current-thread runtime, so anything that blocked here would stop every checker).
//!
//! Behaviour follows keepalived 2.2 (`lib/notify.c`, `keepalived/core/smtp.c`,
//! `keepalived/check/ipwrapper.c`); where we differ, the comment says so and why.

use std::{
    ffi::OsString,
    io,
    net::SocketAddr,
    os::unix::{ffi::OsStringExt, process::ExitStatusExt},
    pin::Pin,
    process::{ExitStatus, Stdio},
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use lettre::{
    Message,
    message::{
        Mailbox,
        header::{HeaderName, HeaderValue},
    },
    transport::smtp::{
        client::{AsyncSmtpConnection, AsyncTokioStream},
        extension::ClientId,
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Semaphore,
};
use tokio_io_timeout::TimeoutStream;

/// keepalived's `global_defs` mail settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailConfig {
    /// `router_id`: names this director in subjects.
    pub router_id: String,
    /// `smtp_server` (port 25 unless given).
    pub server: SocketAddr,
    /// `notification_email_from`.
    pub from: String,
    /// `notification_email`.
    pub to: Vec<String>,
    /// `smtp_connect_timeout`.
    pub connect_timeout: Duration,
}

/// A state change worth telling the operator about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A real server of a service came up or went down; `reason` says why (e.g. "timeout",
    /// "connection refused", "status 503", "digest mismatch").
    RealServer {
        service: String,
        real_server: String,
        up: bool,
        reason: String,
    },
    /// A service gained or lost its quorum.
    Quorum { service: String, up: bool },
}

/// How many deliveries may be in flight at once. keepalived has no limit besides its fd
/// limit; we bound it so that an SMTP server that accepts and then stalls cannot pile up
/// tasks and sockets while real servers flap. Each delivery ends within a few
/// `smtp_connect_timeout`s, so the bound only bites under a storm of transitions.
pub const MAX_MAILS_IN_FLIGHT: usize = 16;

/// Sends mail for events; cheap to clone, never blocks its caller (mail goes out on a task of
/// its own, failures are logged, at most one delivery in flight per event).
#[derive(Clone, Debug)]
pub struct Mailer {
    config: MailConfig,
    /// Shared by clones: one permit per delivery in flight.
    in_flight: Arc<Semaphore>,
}

impl Mailer {
    pub fn new(config: MailConfig) -> Self {
        Mailer {
            config,
            in_flight: Arc::new(Semaphore::new(MAX_MAILS_IN_FLIGHT)),
        }
    }

    pub fn config(&self) -> &MailConfig {
        &self.config
    }

    /// Deliveries started by `send` that have not finished yet (all clones together).
    pub fn in_flight(&self) -> usize {
        MAX_MAILS_IN_FLIGHT - self.in_flight.available_permits()
    }

    /// Queues one mail about `event` (keepalived's subject and body layout).
    ///
    /// Returns at once. The delivery runs on a task of the current tokio runtime; its result
    /// is logged once. As keepalived does, a failed delivery is not retried, and nothing is
    /// sent when `notification_email` is empty.
    pub fn send(&self, event: &Event) {
        if self.config.to.is_empty() {
            return;
        }
        let subject = subject(&self.config.router_id, event);
        let message = match self.message(event) {
            Ok(m) => m,
            Err(e) => {
                log::error!("SMTP alert \"{subject}\" not sent: {e:#}");
                return;
            }
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            log::warn!(
                "SMTP alert \"{subject}\" dropped: {MAX_MAILS_IN_FLIGHT} deliveries to {} \
                 already in flight",
                self.config.server
            );
            return;
        };
        let server = self.config.server;
        let timeout = self.config.connect_timeout;
        let job = async move {
            match deliver_message(server, timeout, &message).await {
                Ok(reply) => {
                    log::info!("SMTP alert \"{subject}\" sent to {server}: {reply}")
                }
                Err(e) => log::warn!("SMTP alert \"{subject}\" to {server} failed: {e:#}"),
            }
            drop(permit);
        };
        spawn_detached(job);
    }

    /// Builds and delivers the mail about `event` on the caller's task, and says how it went.
    /// `send` is this on a task of its own; tests and tools that want the outcome call it.
    pub async fn deliver(&self, event: &Event) -> anyhow::Result<String> {
        let message = self.message(event)?;
        deliver_message(self.config.server, self.config.connect_timeout, &message).await
    }

    /// The mail keepalived's `smtp_alert` would send for `event`: Date, From, Subject,
    /// X-Mailer and To headers, then the one-line body.
    pub fn message(&self, event: &Event) -> anyhow::Result<Message> {
        let from = if self.config.from.is_empty() {
            // keepalived's default notification_email_from.
            format!("keepalived@{}", hostname())
        } else {
            self.config.from.clone()
        };
        let from: Mailbox = from
            .parse()
            .with_context(|| format!("notification_email_from {from:?}"))?;
        // Date first, then From, Subject, X-Mailer, To: keepalived's header order.
        let mut builder = Message::builder()
            .date_now()
            .from(from)
            .subject(subject(&self.config.router_id, event))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Mailer"),
                "Keepalived".to_owned(),
            ));
        if self.config.to.is_empty() {
            return Err(anyhow!("notification_email is empty"));
        }
        for to in &self.config.to {
            let to: Mailbox = to
                .parse()
                .with_context(|| format!("notification_email {to:?}"))?;
            builder = builder.to(to);
        }
        // keepalived ends the body with an empty line before the final dot.
        let body = format!("{}\r\n", body(event));
        builder.body(body).context("building the mail")
    }
}

/// keepalived's subject: `[router_id] Realserver [ip]:tcp:port of virtual server
/// [vip]:tcp:port - UP` for a real server, `[router_id] Virtualserver [vip]:tcp:port - DOWN`
/// for a quorum change. The addresses are written as keepalived 2.x writes them
/// (`inet_sockaddrtotrio`: bracketed address, protocol, port), so mail filters written for
/// keepalived keep matching; see [`keepalived_addr`] for which spellings are recognised.
pub fn subject(router_id: &str, event: &Event) -> String {
    let router_id = if router_id.is_empty() {
        // keepalived's default router_id is the host name.
        hostname()
    } else {
        router_id.to_owned()
    };
    match event {
        Event::RealServer {
            service,
            real_server,
            up,
            ..
        } => {
            let proto = proto_of(service).unwrap_or("tcp");
            format!(
                "[{router_id}] Realserver {} of virtual server {} - {}",
                keepalived_addr(real_server, proto),
                keepalived_addr(service, "tcp"),
                if *up { "UP" } else { "DOWN" }
            )
        }
        Event::Quorum { service, up } => format!(
            "[{router_id}] Virtualserver {} - {}",
            keepalived_addr(service, "tcp"),
            if *up { "UP" } else { "DOWN" }
        ),
    }
}

/// keepalived's one-line body. Its checkers each word it their own way ("=> TCP CHECK failed
/// on service <=", "=> CHECK failed on service : HTTP/SSL request failed <="); we use the
/// HTTP checker's form for every checker and put the reason the checker gave after the colon,
/// which is what the operator reading the mail wants to know. The quorum body leaves out
/// keepalived's "quorum+hysteresis=threshold <= weight" figures, which `Event` does not carry.
pub fn body(event: &Event) -> String {
    match event {
        Event::RealServer { up, reason, .. } => {
            let outcome = if *up { "succeed" } else { "failed" };
            if reason.is_empty() {
                format!("=> CHECK {outcome} on service <=")
            } else {
                format!("=> CHECK {outcome} on service : {reason} <=")
            }
        }
        Event::Quorum { up: true, .. } => "=> Gained quorum <=".to_owned(),
        Event::Quorum { up: false, .. } => "=> Lost quorum <=".to_owned(),
    }
}

/// The protocol named in a service string ("TCP 198.51.100.10:80", "udp:…"), lower-cased.
fn proto_of(s: &str) -> Option<&'static str> {
    let head = s.trim().split([' ', '\t', ':']).next()?;
    ["tcp", "udp", "sctp"]
        .into_iter()
        .find(|p| head.eq_ignore_ascii_case(p))
}

/// Writes an address the way keepalived 2.x does in mail: `[198.51.100.1]:tcp:80`,
/// `[2001:db8::1]:udp:53`, `FWM 5`. Accepts `IP:PORT`, `[IPv6]:PORT`, and either with a
/// protocol in front (`TCP 198.51.100.1:80`, as ipvsadm lists services, or `tcp:…`);
/// `default_proto` applies when none is given (a real server takes its service's protocol).
/// Anything else is passed through unchanged rather than guessed at.
pub fn keepalived_addr(s: &str, default_proto: &str) -> String {
    let t = s.trim();
    let (proto, rest) = match proto_of(t) {
        Some(p) => (p, t[p.len()..].trim_start_matches([' ', '\t', ':'])),
        None => (default_proto, t),
    };
    match rest.parse::<SocketAddr>() {
        Ok(a) => format!("[{}]:{proto}:{}", a.ip(), a.port()),
        Err(_) => s.to_owned(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// One SMTP conversation, as keepalived's `smtp_connect` runs it: connect within the
/// timeout, then every read and write gets the same timeout (keepalived's
/// `smtp_connection_to` on each `thread_add_read`). lettre speaks the protocol (EHLO where
/// keepalived says HELO; every server that speaks SMTP since 1995 takes EHLO), including
/// dot-stuffing and the multi-line replies keepalived parses by hand.
async fn deliver_message(
    server: SocketAddr,
    timeout: Duration,
    message: &Message,
) -> anyhow::Result<String> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(server))
        .await
        .map_err(|_| anyhow!("timeout connecting to SMTP server {server}"))?
        .with_context(|| format!("connecting to SMTP server {server}"))?;
    let mut stream = TimeoutStream::new(tcp);
    stream.set_read_timeout(Some(timeout));
    stream.set_write_timeout(Some(timeout));
    let stream = SmtpStream {
        peer: server,
        inner: Box::pin(stream),
    };
    // keepalived's HELO name defaults to "localhost" (smtp_helo_name unset).
    let hello = ClientId::Domain("localhost".to_owned());
    let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
        .await
        .map_err(|e| anyhow!("SMTP server {server} greeting/EHLO: {e}"))?;
    match conn.send(message.envelope(), &message.formatted()).await {
        Ok(reply) => {
            let reply = format!(
                "{} {}",
                reply.code(),
                reply.message().collect::<Vec<_>>().join(" ")
            );
            // keepalived sends QUIT and does not care what comes back.
            let _ = conn.quit().await;
            Ok(reply)
        }
        Err(e) => {
            // lettre has already sent QUIT and closed the stream on a negative reply.
            conn.abort().await;
            Err(anyhow!("{e}"))
        }
    }
}

/// The TCP stream handed to lettre: a `TimeoutStream` (per-read and per-write timeouts)
/// plus the `peer_addr` lettre's stream trait wants.
#[derive(Debug)]
struct SmtpStream {
    peer: SocketAddr,
    inner: Pin<Box<TimeoutStream<TcpStream>>>,
}

impl AsyncRead for SmtpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

impl AsyncTokioStream for SmtpStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// Runs `job` on the current tokio runtime, or — when called outside one (a tool, a test
/// without a runtime) — on a thread with a runtime of its own, so the caller never waits.
fn spawn_detached<F>(job: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(job);
        }
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("lb-notify".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(job),
                        Err(e) => log::error!("notify: no runtime for a notification: {e}"),
                    }
                });
            if let Err(e) = spawned {
                log::error!("notify: cannot start a thread for a notification: {e}");
            }
        }
    }
}

/// How a notify command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// It exited with this status.
    Exited(i32),
    /// It was killed by this signal (by someone else than us).
    Signalled(i32),
    /// It ran past the timeout and we killed its process group with this signal (SIGTERM,
    /// or SIGKILL when SIGTERM did not end it within a second).
    TimedOut { signal: i32 },
    /// It could not be started (not found, not executable, …).
    NotStarted(String),
    /// The command line is malformed (an unmatched quote, a trailing backslash).
    BadCommand(String),
}

/// How long a command that got SIGTERM at its timeout has before SIGKILL: keepalived's
/// `script_killall` gives one second (`TIMER_HZ`) before `child_killed_thread` sends SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Runs an operator's notify command (`notify_up`, `quorum_down`, …) as keepalived does,
/// without waiting for it: the command is killed after `timeout`, its failure logged.
///
/// As keepalived 2.2's `notify_exec`: the command line is split into words with keepalived's
/// quoting rules ([`parse_command`]) and the program is exec'd directly — no shell — with
/// those words as its arguments and no others (real-server and quorum notifies get no extra
/// arguments; only VRRP's append instance/state/priority); a bare name is looked up in PATH;
/// it inherits the daemon's environment; stdin/stdout/stderr are /dev/null; it runs in a
/// process group of its own (so a kill reaches its children) and gets SIGTERM if the daemon
/// dies. It runs as keepalived's default script user: `keepalived_script` when that user
/// exists, else the daemon's own user (root), exactly keepalived's default.
///
/// keepalived never times out notify scripts (only its shutdown does); we do, because a
/// hung script would otherwise hold a process forever: at `timeout` its process group gets
/// SIGTERM, and SIGKILL a second later if still there. The child is always reaped, and its
/// exit is logged once.
pub fn run_command(command: &str, timeout: Duration) {
    let command = command.to_owned();
    spawn_detached(async move {
        run_command_wait(&command, timeout).await;
    });
}

/// `run_command` on the caller's task: waits for the command (at most `timeout` plus the
/// kill grace) and says how it ended, after logging it.
pub async fn run_command_wait(command: &str, timeout: Duration) -> CommandOutcome {
    run_command_as_wait(command, timeout, default_script_user()).await
}

/// `run_command_wait` as a given `(uid, gid)` (None: the daemon's own user).
pub async fn run_command_as_wait(
    command: &str,
    timeout: Duration,
    user: Option<(u32, u32)>,
) -> CommandOutcome {
    let outcome = run_inner(command, timeout, user).await;
    match &outcome {
        CommandOutcome::Exited(0) => log::info!("notify command `{command}` exited with status 0"),
        CommandOutcome::Exited(c) => {
            log::warn!("notify command `{command}` exited with status {c}")
        }
        CommandOutcome::Signalled(s) => {
            log::warn!("notify command `{command}` was killed by signal {s}")
        }
        CommandOutcome::TimedOut { signal } => log::warn!(
            "notify command `{command}` still running after {timeout:?}: killed with {}",
            if *signal == libc::SIGKILL {
                "SIGKILL (it ignored SIGTERM)"
            } else {
                "SIGTERM"
            }
        ),
        CommandOutcome::NotStarted(e) => {
            log::error!("notify command `{command}` could not be started: {e}")
        }
        CommandOutcome::BadCommand(e) => {
            log::error!("notify command `{command}` is malformed: {e}")
        }
    }
    outcome
}

async fn run_inner(command: &str, timeout: Duration, user: Option<(u32, u32)>) -> CommandOutcome {
    let words = match parse_command(command) {
        Ok(w) => w,
        Err(e) => return CommandOutcome::BadCommand(e),
    };
    let mut cmd = tokio::process::Command::new(&words[0]);
    cmd.args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    if let Some((uid, gid)) = user {
        // std drops supplementary groups when it changes uid as root, as keepalived's
        // setgroups(1, &gid) does.
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            // If the daemon dies, its notify scripts die with it (keepalived does the same).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return CommandOutcome::NotStarted(format!("cannot find {:?}", words[0]));
        }
        Err(e) => return CommandOutcome::NotStarted(format!("{:?}: {e}", words[0])),
    };
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => outcome_of(status),
        Ok(Err(e)) => CommandOutcome::NotStarted(format!("waiting for it: {e}")),
        Err(_) => {
            let mut signal = libc::SIGTERM;
            if let Some(pid) = pid {
                // The child is not reaped yet, so its pid (= its process group id) cannot
                // have been reused.
                kill_group(pid, libc::SIGTERM);
                if tokio::time::timeout(KILL_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    signal = libc::SIGKILL;
                    kill_group(pid, libc::SIGKILL);
                }
            }
            // Reap it (tokio would too, later; doing it here keeps the count of children
            // honest for whoever looks).
            let _ = child.wait().await;
            CommandOutcome::TimedOut { signal }
        }
    }
}

fn kill_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: plain syscall; a negative pid names the process group.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

fn outcome_of(status: ExitStatus) -> CommandOutcome {
    match (status.code(), status.signal()) {
        (Some(c), _) => CommandOutcome::Exited(c),
        (None, Some(s)) => CommandOutcome::Signalled(s),
        (None, None) => CommandOutcome::Exited(-1),
    }
}

/// keepalived's default script user: `keepalived_script` if it exists (looked up once, as
/// keepalived does at start), else None — run as ourselves.
pub fn default_script_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| lookup_user("keepalived_script"))
}

/// The uid and primary gid of a user name, from the passwd database.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the right size.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some((pwd.pw_uid, pwd.pw_gid))
}

/// Splits a notify command line into words as keepalived's `alloc_strvec_quoted_escaped`
/// does: unquoted whitespace separates words; `"…"` and `'…'` quote (the quotes go, the
/// whitespace inside stays, and quoted parts join the text around them); a backslash
/// escapes anywhere, with C's `\a \b \f \n \r \t \v`, `\E` (ESC), `\nnn` octal, `\xXX` hex,
/// `\cC` (control-C), and any other `\C` giving C. An unmatched quote or a trailing
/// backslash is an error (keepalived refuses such a script). Written by hand because no
/// shell-words crate has these rules (they are bash's `$'…'` escapes applied everywhere).
/// The config loader can call this to reject a bad command at load time.
pub fn parse_command(command: &str) -> Result<Vec<OsString>, String> {
    let b = command.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    let is_space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    while i < b.len() {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let mut word = Vec::new();
        let mut quote: Option<u8> = None;
        while i < b.len() {
            let c = b[i];
            if c == b'\\' {
                i += 1;
                let Some(&e) = b.get(i) else {
                    return Err("backslash at the end of the command".into());
                };
                let (byte, used) = unescape(&b[i..], e);
                word.push(byte);
                i += used;
                continue;
            }
            match quote {
                Some(q) if c == q => {
                    quote = None;
                    i += 1;
                }
                Some(_) => {
                    word.push(c);
                    i += 1;
                }
                None if c == b'"' || c == b'\'' => {
                    quote = Some(c);
                    i += 1;
                }
                None if is_space(c) => break,
                None => {
                    word.push(c);
                    i += 1;
                }
            }
        }
        if let Some(q) = quote {
            return Err(format!("missing terminating {}", q as char));
        }
        words.push(OsString::from_vec(word));
    }
    if words.is_empty() {
        return Err("empty command".into());
    }
    Ok(words)
}

/// One escape after a backslash: `s` starts at the escaped character `e`. Returns the byte
/// and how many input bytes it used. Bytes, not chars: keepalived works on bytes, and so
/// does `\xXX` (it keeps the low 8 bits of however many hex digits follow).
fn unescape(s: &[u8], e: u8) -> (u8, usize) {
    match e {
        b'x' if s.get(1).is_some_and(u8::is_ascii_hexdigit) => {
            let mut v: u8 = 0;
            let mut n = 1;
            while let Some(d) = s.get(n).filter(|d| d.is_ascii_hexdigit()) {
                v = (v << 4) | (*d as char).to_digit(16).unwrap_or(0) as u8;
                n += 1;
            }
            (v, n)
        }
        b'c' if s.len() > 1 => (s[1] & 0x1f, 2),
        b'0'..=b'7' => {
            let mut v: u8 = 0;
            let mut n = 0;
            while n < 3 && matches!(s.get(n), Some(b'0'..=b'7')) {
                v = (v << 3).wrapping_add(s[n] - b'0');
                n += 1;
            }
            (v, n)
        }
        b'a' => (0x07, 1),
        b'b' => (0x08, 1),
        b'E' => (0x1b, 1),
        b'f' => (0x0c, 1),
        b'n' => (b'\n', 1),
        b'r' => (b'\r', 1),
        b't' => (b'\t', 1),
        b'v' => (0x0b, 1),
        other => (other, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        parse_command(s)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .into_iter()
            .map(|w| w.into_string().unwrap())
            .collect()
    }

    #[test]
    fn splits_like_keepalived() {
        assert_eq!(words("/bin/echo a  b\tc"), ["/bin/echo", "a", "b", "c"]);
        // keepalived.conf(5): 'abcd" efg h jkl "mnop' is one string.
        assert_eq!(words(r#"abcd" efg h jkl "mnop"#), ["abcd efg h jkl mnop"]);
        assert_eq!(
            words(r#"abcd "efg h jkl" mnop"#),
            ["abcd", "efg h jkl", "mnop"]
        );
        // The man page's advice for a parameter with spaces inside a quoted notify_up.
        assert_eq!(
            words("/usr/local/bin/notify.sh 'RS down' 198.51.100.1"),
            ["/usr/local/bin/notify.sh", "RS down", "198.51.100.1"]
        );
        // A quote of the other kind is literal inside quotes.
        assert_eq!(words(r#"x "it's""#), ["x", "it's"]);
        assert_eq!(words(r#"x 'say "hi"'"#), ["x", r#"say "hi""#]);
        // Escapes work outside and inside quotes.
        assert_eq!(words(r"x a\ b"), ["x", "a b"]);
        assert_eq!(words(r#"x "a\"b""#), ["x", "a\"b"]);
        assert_eq!(words(r"x \x41\102\t\n\E\cA\q"), ["x", "AB\t\n\x1b\x01q"]);
        assert_eq!(words(r"x ''"), ["x", ""]);
    }

    #[test]
    fn rejects_malformed_commands() {
        for bad in ["", "   ", "x 'open", "x \"open", "x trailing\\"] {
            assert!(
                parse_command(bad).is_err(),
                "{bad:?} parsed as {:?}",
                parse_command(bad)
            );
        }
    }

    #[test]
    fn subjects_and_bodies_are_keepalived_s() {
        let down = Event::RealServer {
            service: "198.51.100.10:80".into(),
            real_server: "198.51.100.21:80".into(),
            up: false,
            reason: "connection refused".into(),
        };
        assert_eq!(
            subject("LVS_DEVEL", &down),
            "[LVS_DEVEL] Realserver [198.51.100.21]:tcp:80 of virtual server \
             [198.51.100.10]:tcp:80 - DOWN"
        );
        assert_eq!(
            body(&down),
            "=> CHECK failed on service : connection refused <="
        );
        let up = Event::RealServer {
            service: "UDP [2001:db8::10]:53".into(),
            real_server: "[2001:db8::21]:53".into(),
            up: true,
            reason: String::new(),
        };
        assert_eq!(
            subject("r1", &up),
            "[r1] Realserver [2001:db8::21]:udp:53 of virtual server [2001:db8::10]:udp:53 - UP"
        );
        assert_eq!(body(&up), "=> CHECK succeed on service <=");
        // The other two: a failure without a reason, a success with one.
        let bare_down = Event::RealServer {
            service: String::new(),
            real_server: String::new(),
            up: false,
            reason: String::new(),
        };
        assert_eq!(body(&bare_down), "=> CHECK failed on service <=");
        let up_why = Event::RealServer {
            service: String::new(),
            real_server: String::new(),
            up: true,
            reason: "HTTP status 200".into(),
        };
        assert_eq!(
            body(&up_why),
            "=> CHECK succeed on service : HTTP status 200 <="
        );
        let q = Event::Quorum {
            service: "TCP 203.0.113.5:443".into(),
            up: false,
        };
        assert_eq!(
            subject("r1", &q),
            "[r1] Virtualserver [203.0.113.5]:tcp:443 - DOWN"
        );
        assert_eq!(body(&q), "=> Lost quorum <=");
        assert_eq!(
            body(&Event::Quorum {
                service: String::new(),
                up: true
            }),
            "=> Gained quorum <="
        );
        // What we cannot parse we pass through rather than mangle.
        assert_eq!(keepalived_addr("FWM 5", "tcp"), "FWM 5");
        assert_eq!(
            keepalived_addr("tcp:198.51.100.1:8080", "udp"),
            "[198.51.100.1]:tcp:8080"
        );
    }
}
