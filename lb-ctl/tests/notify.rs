//! Notify commands and notification mail against real processes and a real SMTP sink on
//! loopback: what keepalived would send and run, and what happens when the SMTP server or
//! the command misbehaves (refuses, hangs, hangs up, talks garbage, is missing).

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use lb_ctl::notify::{self, CommandOutcome, Event, MailConfig, Mailer};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

// ---------------------------------------------------------------------------------------
// Log capture: the module's contract is "logged once"; these tests read what it logged.

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let line = format!("{} {}", r.level(), r.args());
        eprintln!("[log] {line}");
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

fn capture() -> &'static Capture {
    static C: OnceLock<&'static Capture> = OnceLock::new();
    C.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(c).expect("logger");
        log::set_max_level(log::LevelFilter::Trace);
        c
    })
}

/// Log lines containing every one of `needles`.
fn logs_with(needles: &[&str]) -> Vec<String> {
    capture()
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .cloned()
        .collect()
}

/// Waits (polling, bounded) for `cond`; panics with `what` and the last state if it never
/// holds. A bound on waiting, not a timing assertion: on a slow machine it just waits longer.
async fn wait_for(what: &str, mut cond: impl FnMut() -> Result<(), String>) {
    let mut last = String::new();
    for _ in 0..1200 {
        match cond() {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: never happened in 60 s; last seen: {last}");
}

/// `fut`, or a panic naming `what` if it has not finished in 60 s: the operations under test
/// all end within a few seconds by design, and one that does not is the bug to report
/// (rather than a test run that hangs).
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: still not finished after 60 s"))
}

// ---------------------------------------------------------------------------------------
// A small SMTP server (RFC 5321: greeting, EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT)
// that can also misbehave on purpose.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Accept,
    /// Refuses MAIL FROM with a 550 and says why.
    RefuseMail,
    /// Accepts the connection and never says a word.
    Hang,
    /// Hangs up after reading the first line of the message body.
    CloseMidData,
    /// Answers everything with text that is not an SMTP reply.
    Garbage,
}

#[derive(Debug, Clone)]
struct Received {
    helo: String,
    mail_from: String,
    rcpt_to: Vec<String>,
    data: String,
}

struct Sink {
    addr: SocketAddr,
    mails: mpsc::UnboundedReceiver<Received>,
    /// Connections accepted so far / still open.
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    async fn start(mode: Mode) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let (tx, mails) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (tx, o) = (tx.clone(), o.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, mode, tx).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Sink {
            addr,
            mails,
            accepted,
            open,
            task,
        }
    }

    async fn next_mail(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.mails.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no mail reached the sink in 30 s; logs: {:#?}",
                    logs_with(&["SMTP"])
                )
            })
            .expect("sink stopped")
    }
}

async fn serve(
    sock: TcpStream,
    mode: Mode,
    tx: mpsc::UnboundedSender<Received>,
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    match mode {
        Mode::Hang => {
            // Say nothing; read until the client gives up and closes.
            while r.read_line(&mut line).await? > 0 {
                line.clear();
            }
            return Ok(());
        }
        Mode::Garbage => {
            w.write_all(b"hello? this is not SMTP\r\n").await?;
            while r.read_line(&mut line).await? > 0 {
                w.write_all(b"??? what\r\n").await?;
                line.clear();
            }
            return Ok(());
        }
        _ => w.write_all(b"220 sink.example ESMTP ready\r\n").await?,
    }
    let mut mail = Received {
        helo: String::new(),
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        data: String::new(),
    };
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end_matches(['\r', '\n']).to_owned();
        let verb = cmd
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                mail.helo = cmd.clone();
                w.write_all(b"250-sink.example hello\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n")
                    .await?
            }
            "HELO" => {
                mail.helo = cmd.clone();
                w.write_all(b"250 sink.example\r\n").await?
            }
            "MAIL" if mode == Mode::RefuseMail => {
                w.write_all(b"550 5.7.1 relaying denied by sink\r\n")
                    .await?
            }
            "MAIL" => {
                mail.mail_from = cmd.clone();
                w.write_all(b"250 2.1.0 ok\r\n").await?
            }
            "RCPT" => {
                mail.rcpt_to.push(cmd.clone());
                w.write_all(b"250 2.1.5 ok\r\n").await?
            }
            "DATA" => {
                w.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if mode == Mode::CloseMidData {
                        // Hang up in the middle of the message.
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    // RFC 5321 4.5.2: a leading dot was doubled by the client.
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                mail.data = data;
                w.write_all(b"250 2.0.0 queued as 42\r\n").await?;
                let _ = tx.send(mail.clone());
            }
            "RSET" | "NOOP" => w.write_all(b"250 ok\r\n").await?,
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => w.write_all(b"500 unrecognised\r\n").await?,
        }
    }
}

/// Headers of a received message, unfolded, and its body.
fn split_message(data: &str) -> (Vec<(String, String)>, String) {
    let (head, body) = data
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body separator in {data:?}"));
    let mut headers: Vec<(String, String)> = Vec::new();
    for l in head.split("\r\n") {
        if l.starts_with([' ', '\t']) {
            let last = headers.last_mut().expect("continuation first");
            last.1.push(' ');
            last.1.push_str(l.trim());
        } else {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            headers.push((k.to_owned(), v.trim().to_owned()));
        }
    }
    (headers, body.to_owned())
}

fn header<'a>(h: &'a [(String, String)], name: &str, data: &str) -> &'a str {
    let found: Vec<_> = h
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .collect();
    assert_eq!(found.len(), 1, "header {name} in {data:?}");
    &found[0].1
}

fn config(server: SocketAddr, timeout: Duration) -> MailConfig {
    MailConfig {
        router_id: "LVS_DEVEL".into(),
        server,
        from: "lb@example.com".into(),
        to: vec!["ops@example.com".into(), "oncall@example.org".into()],
        connect_timeout: timeout,
    }
}

fn rs_event(rs: &str, up: bool, reason: &str) -> Event {
    Event::RealServer {
        service: "198.51.100.10:80".into(),
        real_server: rs.into(),
        up,
        reason: reason.into(),
    }
}

/// Every delivery started by `mailer` has finished.
async fn drained(mailer: &Mailer) {
    wait_for("mail deliveries to finish", || match mailer.in_flight() {
        0 => Ok(()),
        n => Err(format!("{n} in flight")),
    })
    .await;
}

async fn sink_idle(sink: &Sink) {
    wait_for("the sink's connections to close", || {
        match sink.open.load(Ordering::SeqCst) {
            0 => Ok(()),
            n => Err(format!("{n} connections still open")),
        }
    })
    .await;
}

#[tokio::test]
async fn mail_per_transition_in_keepalived_layout() {
    capture();
    let mut sink = Sink::start(Mode::Accept).await;
    let mailer = Mailer::new(config(sink.addr, Duration::from_secs(5)));
    let cases = [
        (
            rs_event("198.51.100.21:80", false, "connection refused"),
            "[LVS_DEVEL] Realserver [198.51.100.21]:tcp:80 of virtual server \
             [198.51.100.10]:tcp:80 - DOWN",
            "=> CHECK failed on service : connection refused <=",
        ),
        (
            rs_event("198.51.100.21:80", true, ""),
            "[LVS_DEVEL] Realserver [198.51.100.21]:tcp:80 of virtual server \
             [198.51.100.10]:tcp:80 - UP",
            "=> CHECK succeed on service <=",
        ),
        (
            Event::Quorum {
                service: "198.51.100.10:80".into(),
                up: false,
            },
            "[LVS_DEVEL] Virtualserver [198.51.100.10]:tcp:80 - DOWN",
            "=> Lost quorum <=",
        ),
        (
            Event::Quorum {
                service: "198.51.100.10:80".into(),
                up: true,
            },
            "[LVS_DEVEL] Virtualserver [198.51.100.10]:tcp:80 - UP",
            "=> Gained quorum <=",
        ),
    ];
    for (event, subject, body) in cases {
        mailer.send(&event);
        let m = sink.next_mail().await;
        eprintln!("received:\n{}", m.data);
        assert!(m.helo.starts_with("EHLO "), "greeting {:?}", m.helo);
        assert_eq!(m.mail_from, "MAIL FROM:<lb@example.com>", "{m:?}");
        assert_eq!(
            m.rcpt_to,
            ["RCPT TO:<ops@example.com>", "RCPT TO:<oncall@example.org>"],
            "{m:?}"
        );
        let (h, b) = split_message(&m.data);
        assert_eq!(header(&h, "Subject", &m.data), subject);
        assert_eq!(header(&h, "From", &m.data), "lb@example.com");
        assert_eq!(
            header(&h, "To", &m.data),
            "ops@example.com, oncall@example.org"
        );
        assert_eq!(header(&h, "X-Mailer", &m.data), "Keepalived");
        assert_eq!(
            h[0].0, "Date",
            "Date first, as keepalived writes it: {:?}",
            m.data
        );
        // RFC 5322 date as keepalived writes it: "Wed, 02 Dec 2026 10:36:23 +0000".
        let date = header(&h, "Date", &m.data);
        let parts: Vec<&str> = date.split(' ').collect();
        assert!(
            parts.len() == 6
                && parts[0].ends_with(',')
                && parts[3].len() == 4
                && parts[4].split(':').count() == 3
                && (parts[5].starts_with('+') || parts[5].starts_with('-')),
            "Date header {date:?}"
        );
        assert_eq!(b.lines().next(), Some(body), "body of {:?}", m.data);
        // Logged once, as sent.
        drained(&mailer).await;
        let sent = logs_with(&[subject, "sent to"]);
        assert_eq!(sent.len(), 1, "log lines for {subject}: {sent:#?}");
    }
    sink_idle(&sink).await;
    assert_eq!(
        sink.accepted.load(Ordering::SeqCst),
        4,
        "one connection per mail"
    );
}

#[tokio::test]
async fn refusing_server_is_logged_with_its_reply() {
    capture();
    let mut sink = Sink::start(Mode::RefuseMail).await;
    let mailer = Mailer::new(config(sink.addr, Duration::from_secs(5)));
    let ev = rs_event("198.51.100.31:80", false, "status 503");
    let err = mailer.deliver(&ev).await.expect_err("550 must fail");
    let err = format!("{err:#}");
    assert!(
        err.contains("550") && err.contains("relaying denied by sink"),
        "error {err:?}"
    );
    mailer.send(&ev);
    drained(&mailer).await;
    let failed = logs_with(&["198.51.100.31", "failed", "relaying denied by sink"]);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    // keepalived does not retry: two attempts above, two connections, no more.
    sink_idle(&sink).await;
    assert_eq!(sink.accepted.load(Ordering::SeqCst), 2);
    assert!(sink.mails.try_recv().is_err(), "a refused mail arrived");
}

#[tokio::test]
async fn hanging_server_times_out_without_delaying_the_caller() {
    capture();
    let sink = Sink::start(Mode::Hang).await;
    let mailer = Mailer::new(config(sink.addr, Duration::from_millis(300)));
    let ev = rs_event("198.51.100.32:80", false, "timeout");
    // This test runs on a current-thread runtime shared with the sink: had `send` waited
    // for the delivery, it would never return (the sink could not run to accept).
    mailer.send(&ev);
    assert_eq!(mailer.in_flight(), 1, "delivery should be under way");
    drained(&mailer).await;
    let failed = logs_with(&["198.51.100.32", "failed", "timed out"]);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let err = bounded("delivery to a hanging server", mailer.deliver(&ev))
        .await
        .expect_err("must time out");
    let err = format!("{err:#}");
    assert!(err.contains("timed out"), "error {err:?}");
    // We hung up: the sink saw both connections close.
    sink_idle(&sink).await;
    assert_eq!(sink.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn server_hanging_up_mid_data_is_logged() {
    capture();
    let mut sink = Sink::start(Mode::CloseMidData).await;
    let mailer = Mailer::new(config(sink.addr, Duration::from_secs(5)));
    let ev = rs_event("198.51.100.33:80", false, "digest mismatch");
    mailer.send(&ev);
    drained(&mailer).await;
    let failed = logs_with(&["198.51.100.33", "failed"]);
    assert_eq!(failed.len(), 1, "{:#?}", logs_with(&["198.51.100.33"]));
    assert!(bounded("delivery", mailer.deliver(&ev)).await.is_err());
    sink_idle(&sink).await;
    assert!(sink.mails.try_recv().is_err(), "a cut mail arrived");
}

#[tokio::test]
async fn garbage_replies_are_logged_not_fatal() {
    capture();
    let sink = Sink::start(Mode::Garbage).await;
    let mailer = Mailer::new(config(sink.addr, Duration::from_secs(5)));
    let ev = rs_event("198.51.100.34:80", true, "");
    mailer.send(&ev);
    drained(&mailer).await;
    let failed = logs_with(&["198.51.100.34", "failed"]);
    assert_eq!(failed.len(), 1, "{:#?}", logs_with(&["198.51.100.34"]));
    assert!(bounded("delivery", mailer.deliver(&ev)).await.is_err());
    sink_idle(&sink).await;
}

#[tokio::test]
async fn nothing_listening_is_logged() {
    capture();
    // Bind and drop to get a loopback port with nothing behind it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mailer = Mailer::new(config(addr, Duration::from_secs(5)));
    let ev = rs_event("198.51.100.35:80", false, "timeout");
    mailer.send(&ev);
    drained(&mailer).await;
    let failed = logs_with(&["198.51.100.35", "failed", "refused"]);
    assert_eq!(failed.len(), 1, "{:#?}", logs_with(&["198.51.100.35"]));
}

#[tokio::test]
async fn in_flight_deliveries_are_bounded() {
    capture();
    let sink = Sink::start(Mode::Hang).await;
    let mailer = Mailer::new(config(sink.addr, Duration::from_secs(2)));
    let clone = mailer.clone();
    let extra = 5;
    for i in 0..notify::MAX_MAILS_IN_FLIGHT + extra {
        // Clones share the bound.
        let m = if i % 2 == 0 { &mailer } else { &clone };
        m.send(&rs_event(
            &format!("198.51.100.40:{}", 1000 + i),
            false,
            "timeout",
        ));
    }
    assert_eq!(mailer.in_flight(), notify::MAX_MAILS_IN_FLIGHT);
    let dropped = logs_with(&["198.51.100.40]", "dropped"]);
    assert_eq!(dropped.len(), extra, "{dropped:#?}");
    drained(&mailer).await;
    let failed = logs_with(&["198.51.100.40]", "failed", "timed out"]);
    assert_eq!(failed.len(), notify::MAX_MAILS_IN_FLIGHT, "{failed:#?}");
    sink_idle(&sink).await;
    assert_eq!(
        sink.accepted.load(Ordering::SeqCst),
        notify::MAX_MAILS_IN_FLIGHT
    );
}

#[tokio::test]
async fn no_recipients_no_mail() {
    capture();
    let sink = Sink::start(Mode::Accept).await;
    let mut c = config(sink.addr, Duration::from_secs(5));
    c.to.clear();
    let mailer = Mailer::new(c);
    mailer.send(&rs_event("198.51.100.36:80", false, "timeout"));
    assert_eq!(mailer.in_flight(), 0);
    // Give a wrongly started delivery every chance to connect before looking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.accepted.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// Notify commands.

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "lb-notify-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn script(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// When a test fails, SIGKILLs the processes whose pids are in the file, so a broken kill
/// does not leave them behind. Only on failure: on success they are gone and their pids
/// may already belong to someone else.
struct KillIfPanicking(PathBuf);

impl Drop for KillIfPanicking {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// State letter of a process from /proc, None when it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Our own children that are zombies (exited, not reaped).
fn our_zombies() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        if f.first() == Some(&"Z") && f.get(1) == Some(&me.as_str()) {
            z.push(pid);
        }
    }
    z
}

#[tokio::test]
async fn command_gets_keepalived_s_arguments_and_environment() {
    capture();
    let dir = Scratch::new("args");
    let out = dir.0.join("out");
    let script = dir.script(
        "notify.sh",
        "#!/bin/sh\nout=$1; shift\n{\n  echo \"argc=$#\"\n  for a in \"$@\"; do printf '<%s>\\n' \"$a\"; done\n  \
         echo \"PATH=$PATH\"\n  echo \"stdin=$(readlink /proc/$$/fd/0)\"\n  \
         echo \"pid=$$ pgid=$(cut -d' ' -f5 /proc/$$/stat)\"\n} > \"$out.tmp\"\nmv \"$out.tmp\" \"$out\"\n",
    );
    let command = format!(
        "{} {} plain 'two words' \"dq \\\"x\\\"\" a\\ b \\x41\\t",
        script.display(),
        out.display()
    );
    let outcome = notify::run_command_wait(&command, Duration::from_secs(30)).await;
    assert_eq!(outcome, CommandOutcome::Exited(0), "{command}");
    let text = read(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..6],
        [
            "argc=5",
            "<plain>",
            "<two words>",
            "<dq \"x\">",
            "<a b>",
            "<A\t>"
        ],
        "script saw:\n{text}"
    );
    // The daemon's environment, unchanged.
    assert_eq!(
        lines[6],
        format!("PATH={}", std::env::var("PATH").unwrap_or_default()),
        "{text}"
    );
    assert_eq!(lines[7], "stdin=/dev/null", "{text}");
    // A process group of its own, so a kill reaches whatever it started.
    let (pid, pgid) = lines[8].split_once(' ').unwrap();
    assert_eq!(
        pid.trim_start_matches("pid="),
        pgid.trim_start_matches("pgid="),
        "{text}"
    );
    let logged = logs_with(&[&command, "exited with status 0"]);
    assert_eq!(logged.len(), 1, "{logged:#?}");
}

#[tokio::test]
async fn exit_status_is_logged_once() {
    capture();
    let command = "/bin/sh -c 'exit 3' lb-notify-exit3";
    assert_eq!(
        notify::run_command_wait(command, Duration::from_secs(30)).await,
        CommandOutcome::Exited(3)
    );
    let logged = logs_with(&["lb-notify-exit3"]);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert!(logged[0].contains("status 3"), "{logged:#?}");
}

#[tokio::test]
async fn hanging_command_is_killed_with_its_children() {
    capture();
    let dir = Scratch::new("hang");
    // One that dies of SIGTERM, one that ignores it (and so does the sleep it starts, as an
    // ignored signal survives exec) and needs the SIGKILL that follows.
    for (name, trap, signal, how) in [
        ("polite", "", libc::SIGTERM, "killed with SIGTERM"),
        (
            "stubborn",
            "trap '' TERM\n",
            libc::SIGKILL,
            "killed with SIGKILL",
        ),
    ] {
        let pids = dir.0.join(format!("{name}.pids"));
        let script = dir.script(
            &format!("{name}.sh"),
            &format!(
                "#!/bin/sh\n{trap}sleep 1000 &\necho \"$$ $!\" > {p}.tmp\nmv {p}.tmp {p}\nwait\nwait\n",
                p = pids.display()
            ),
        );
        let command = script.display().to_string();
        let _reaper = KillIfPanicking(pids.clone());
        let outcome = bounded(
            &format!("{name}: the timeout's kill"),
            // Long enough for sh to start and write its pids on a loaded machine: the
            // point is what happens at the timeout, not how soon it comes.
            notify::run_command_wait(&command, Duration::from_secs(3)),
        )
        .await;
        assert_eq!(outcome, CommandOutcome::TimedOut { signal }, "{name}");
        let text = std::fs::read_to_string(&pids).unwrap_or_else(|e| {
            panic!(
                "{name}: the script was killed before it wrote its pids ({e}): machine too slow?"
            )
        });
        let mut it = text.split_whitespace().map(|p| p.parse::<u32>().unwrap());
        let (sh, sleep) = (it.next().unwrap(), it.next().unwrap());
        // We reaped the script itself: it is gone, not a zombie.
        assert_eq!(proc_state(sh), None, "{name}: script {sh} still there");
        // Its child was killed with it (then reaped by whoever inherited it, or a zombie
        // of init's until then).
        wait_for(
            &format!("{name}: sleep {sleep} to die"),
            || match proc_state(sleep) {
                None | Some('Z') => Ok(()),
                Some(s) => Err(format!("state {s}")),
            },
        )
        .await;
        let logged = logs_with(&[&command, how]);
        assert_eq!(logged.len(), 1, "{logged:#?}");
    }
}

#[tokio::test]
async fn missing_or_malformed_command_is_logged() {
    capture();
    let missing = "/nonexistent/lb-notify-missing 1 2";
    match notify::run_command_wait(missing, Duration::from_secs(5)).await {
        CommandOutcome::NotStarted(e) => assert!(e.contains("cannot find"), "{e}"),
        o => panic!("{missing}: {o:?}"),
    }
    assert_eq!(logs_with(&[missing, "could not be started"]).len(), 1);
    // A bare name is looked up in PATH, and not found there either.
    let bare = "lb-notify-no-such-program-in-path";
    assert!(matches!(
        notify::run_command_wait(bare, Duration::from_secs(5)).await,
        CommandOutcome::NotStarted(_)
    ));
    let bad = "/bin/true 'lb-notify-unterminated";
    match notify::run_command_wait(bad, Duration::from_secs(5)).await {
        CommandOutcome::BadCommand(e) => assert!(e.contains("terminating '"), "{e}"),
        o => panic!("{bad}: {o:?}"),
    }
    assert_eq!(logs_with(&[bad, "malformed"]).len(), 1);
}

#[tokio::test]
async fn many_commands_at_once_do_not_block_the_caller() {
    capture();
    let dir = Scratch::new("many");
    let go = dir.0.join("go");
    let script = dir.script(
        "wait-for-go.sh",
        &format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.05; done\n: > {}/done.$1\n",
            go.display(),
            dir.0.display()
        ),
    );
    // A watchdog for the one failure this test is about: run_command waiting for its
    // command. Every command waits for `go`, which is only created after all calls return,
    // so a blocking run_command would hang here forever.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            eprintln!("run_command blocked its caller: 50 calls did not return in 120 s");
            std::process::exit(101);
        }
    });
    let n = 50;
    for i in 0..n {
        notify::run_command(
            &format!("{} {i}", script.display()),
            Duration::from_secs(120),
        );
    }
    tx.send(()).unwrap();
    // Not one of them can have finished: they wait for `go`.
    let done = |d: &Path| -> HashSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("done."))
            .collect()
    };
    assert!(
        done(&dir.0).is_empty(),
        "finished before go: {:?}",
        done(&dir.0)
    );
    std::fs::write(&go, "").unwrap();
    wait_for("all 50 commands to finish", || {
        let d = done(&dir.0);
        if d.len() == n {
            Ok(())
        } else {
            Err(format!("{} of {n} done", d.len()))
        }
    })
    .await;
    // Every one reaped, none left a zombie behind.
    wait_for("no zombie children", || match our_zombies() {
        z if z.is_empty() => Ok(()),
        z => Err(format!("zombies {z:?}")),
    })
    .await;
    let exited = logs_with(&[&script.display().to_string(), "exited with status 0"]);
    assert_eq!(exited.len(), n, "{exited:#?}");
}

#[tokio::test]
async fn command_runs_as_the_script_user() {
    capture();
    let dir = Scratch::new("user");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = dir.0.join("id");
    let script = dir.script(
        "whoami.sh",
        &format!(
            "#!/bin/sh\necho \"$(id -u) $(id -g) $(id -G)\" > {}\n",
            out.display()
        ),
    );
    let nobody = notify::lookup_user("nobody").expect("user nobody");
    let outcome = notify::run_command_as_wait(
        &script.display().to_string(),
        Duration::from_secs(30),
        Some(nobody),
    )
    .await;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(outcome, CommandOutcome::Exited(0));
        let (uid, gid) = nobody;
        // uid, gid, and no supplementary groups but its own.
        assert_eq!(read(&out).trim(), format!("{uid} {gid} {gid}"));
    } else {
        // Not root: changing user must fail, and say so, rather than run as us.
        assert!(
            matches!(outcome, CommandOutcome::NotStarted(_)),
            "{outcome:?}"
        );
    }
}

#[test]
fn command_outside_a_runtime_still_runs() {
    capture();
    let dir = Scratch::new("nort");
    let mark = dir.0.join("ran");
    notify::run_command(
        &format!("/bin/sh -c ': > {}'", mark.display()),
        Duration::from_secs(30),
    );
    for _ in 0..600 {
        if mark.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the command never ran; logs {:#?}", logs_with(&["ran"]));
}
