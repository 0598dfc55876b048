//! The CLI's faults as an operator meets them, against a real daemon: a listing piped into
//! `head`, the hint printed for each way the daemon cannot be reached or does not answer,
//! `-v`, and raw socket requests that bypass the CLI's checks. Root only (namespaces, XDP,
//! another uid).

use std::{
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, process::ExitStatusExt},
    },
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use lb_ctl::{
    api::{self, Request, Response, Timeouts},
    model::{
        DestConfig, Forward, Op, Persistence, Protocol, SchedFlags, Scheduler, ServiceConfig,
        ServiceKey,
    },
};
use lb_tests::{Daemon, DrLab, DrLabOpts, TempDir, cmd::report, lab::VIP};

const HINT_START: &str = "(is it running? start it with `lb-ctl daemon";
const HINT_ROOT: &str = "Permission denied (you must be root)";

/// A director with its daemon; no traffic is needed, so no nginx.
fn director() -> (DrLab, Daemon) {
    let lab = DrLab::with_opts(DrLabOpts {
        real_servers: 1,
        xdp_pass: true,
        nginx: false,
    });
    let d = Daemon::start(lab.director(), &[lab.director_iface()], None);
    (lab, d)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `lb-ctl --socket SOCK args…` with no daemon behind SOCK.
fn ctl_at(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(lb_tests::lb_ctl());
    cmd.arg("--socket").arg(socket).args(args);
    lb_tests::cmd::output(&mut cmd)
}

#[test]
fn a_listing_into_a_closed_pipe_dies_quietly_of_sigpipe_like_ipvsadm() {
    lb_tests::require_root();
    let (lab, d) = director();
    // 3,000 services, each with the lab's real server: a listing several pipe buffers long,
    // so lb-ctl is still writing when the reader goes away.
    let mut rules = String::new();
    let rs = lab.rs_ip(1);
    for port in 1..=3000 {
        rules += &format!("-A -t {VIP}:{port} -s rr\n-a -t {VIP}:{port} -r {rs}:{port} -g\n");
    }
    let mut restore = d.ctl_command(&["-R"]);
    restore.stdin(Stdio::piped()).stdout(Stdio::piped());
    restore.stderr(Stdio::piped());
    let mut child = restore.spawn().expect("spawn lb-ctl -R");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("writing the rules");
    let out = child.wait_with_output().expect("lb-ctl -R");
    assert!(
        out.status.success(),
        "lb-ctl -R of 3000 services: {}\n{}",
        report(&restore, &out),
        d.log()
    );
    let full = d.ctl_ok(&["-Ln"]);
    assert!(
        full.len() > 4 * 65536 && full.lines().count() > 6000,
        "the listing should be far longer than a pipe buffer: {} bytes, {} lines",
        full.len(),
        full.lines().count()
    );

    for args in [&["-Ln"][..], &["-Ln", "--stats"], &["-Sn"]] {
        let mut cmd = d.ctl_command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn lb-ctl");
        let mut head = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        head.read_line(&mut first).expect("the first line");
        // `head -1`: read one line and close the pipe.
        drop(head);
        let out = child.wait_with_output().expect("lb-ctl");
        assert!(
            !first.is_empty(),
            "{args:?}: no first line; stderr: {}",
            stderr(&out)
        );
        assert_eq!(
            (out.status.signal(), stderr(&out).as_str()),
            (Some(libc::SIGPIPE), ""),
            "{args:?} into a closed pipe must die of SIGPIPE without a word (as ipvsadm); \
             got {:?}",
            out.status
        );
    }
    // The daemon served all of it and is unharmed.
    assert_eq!(d.ctl_ok(&["-Ln"]), full);
}

#[test]
fn each_failure_to_reach_the_daemon_gets_its_own_hint() {
    lb_tests::require_root();
    let dir = TempDir::new("cli-hints");

    // No socket at all.
    let absent = dir.join("absent.sock");
    for (args, code) in [(&["-Ln"][..], 1), (&["-A", "-t", "192.0.2.1:80"], 255)] {
        let out = ctl_at(&absent, args);
        let err = stderr(&out);
        assert!(
            out.status.code() == Some(code)
                && err.contains(HINT_START)
                && err.contains("No such file"),
            "{args:?} without a socket: want exit {code} and the start hint, got {:?}: {err}",
            out.status
        );
    }
    let out = ctl_at(&absent, &["status"]);
    assert!(
        !out.status.success() && stderr(&out).contains(HINT_START),
        "status without a socket: {:?}: {}",
        out.status,
        stderr(&out)
    );

    // A socket file nobody listens on (what a killed daemon leaves).
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let out = ctl_at(&stale, &["-Ln"]);
    let err = stderr(&out);
    assert!(
        out.status.code() == Some(1) && err.contains(HINT_START) && err.contains("refused"),
        "-Ln on a stale socket: {:?}: {err}",
        out.status
    );

    // A root-only socket of a running daemon, used by another uid: run as root, not "start
    // the daemon".
    let (_lab, d) = director();
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    let before = d.ctl_ok(&["-Ln"]);
    for (args, code) in [
        (&["-Ln"][..], 1),
        (&["-D", "-t", "192.0.2.100:80"], 255),
        (&["--set", "1", "1", "1"], 255),
    ] {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(lb_tests::lb_ctl())
            .arg("--socket")
            .arg(d.socket())
            .args(args);
        let out = lb_tests::cmd::output(&mut cmd);
        let err = stderr(&out);
        assert!(
            out.status.code() == Some(code) && err.contains(HINT_ROOT) && !err.contains(HINT_START),
            "{args:?} as uid 65534: want exit {code} and the root hint only; {}",
            report(&cmd, &out)
        );
    }
    assert_eq!(
        d.ctl_ok(&["-Ln"]),
        before,
        "a refused user changed the table"
    );
}

/// A listening socket whose owner never accepts, with room for one pending connection: a
/// stopped or stuck daemon.
fn stuck_listener(path: &Path) -> OwnedFd {
    // SAFETY: plain socket/bind/listen on a sockaddr_un built here; the fd is owned at once.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let fdn = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fdn, (&raw const addr).cast(), len),
            0,
            "bind {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        // Backlog 0: Linux queues one connection, then makes the next connect wait.
        assert_eq!(libc::listen(fdn, 0), 0);
        fd
    }
}

#[test]
fn a_daemon_that_does_not_answer_is_reported_busy_not_absent() {
    let dir = TempDir::new("cli-busy");
    let path = dir.join("stuck.sock");
    let _listener = stuck_listener(&path);
    let wait = Duration::from_millis(200);
    let req = Request::List { service: None };

    // Queued but never read: the answer does not come.
    let e = format!(
        "{:#}",
        api::call_with(&path, &req, wait, wait).expect_err("no answer")
    );
    assert!(
        e.contains("did not answer within 0.2 s: it is busy or not responding")
            && !e.contains("is it running"),
        "{e}"
    );
    // The queue is now full: the connection itself is not taken.
    let e = format!(
        "{:#}",
        api::call_with(&path, &req, wait, wait).expect_err("no connection")
    );
    assert!(
        e.contains("no connection within 0.2 s: the daemon is busy or not responding")
            && !e.contains("is it running"),
        "{e}"
    );
}

#[test]
fn version_in_ipvsadms_layout() {
    for flag in ["-v", "--version", "-V"] {
        let out = lb_tests::cmd::output(Command::new(lb_tests::lb_ctl()).arg(flag));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{flag}: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert_eq!(text, lb_ctl::cli::version_line(), "{flag}");
        // ipvsadm: "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)".
        assert!(
            text.starts_with(concat!("lb-ctl v", env!("CARGO_PKG_VERSION"), " ("))
                && text.ends_with(" and IPVS v1.2.1)\n"),
            "{flag}: {text:?}"
        );
    }
}

/// Requests a script can write to the socket itself, which the CLI would never send: each is
/// refused with the CLI's own message, and nothing changes.
#[test]
fn raw_requests_are_refused_as_the_cli_refuses_them() {
    lb_tests::require_root();
    let (lab, d) = director();
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    d.ctl_ok(&["-a", "-t", "192.0.2.100:80", "-r", "192.0.2.11:80", "-g"]);
    let listing = d.ctl_ok(&["-Ln"]);
    let timeouts = d.ctl_ok(&["-L", "--timeout"]);

    let key = |port| ServiceKey {
        proto: Protocol::Tcp,
        addr: VIP.into(),
        port,
    };
    let svc = |port| ServiceConfig::new(key(port), Scheduler::Rr);
    let persistent = |timeout| ServiceConfig {
        persistence: Some(Persistence {
            timeout,
            netmask: Ipv4Addr::BROADCAST.into(),
        }),
        ..svc(81)
    };
    let rs = DestConfig::new(lab.rs_ip(1), 80, Forward::Dr, 1);
    let cases: Vec<(Request, &str)> = vec![
        (
            Request::Ops(vec![Op::AddService(persistent(0))]),
            "invalid timeout value `0' specified",
        ),
        (
            Request::Ops(vec![Op::EditService(ServiceConfig {
                key: key(80),
                ..persistent(2_678_401)
            })]),
            "invalid timeout value `2678401' specified",
        ),
        (
            Request::Ops(vec![Op::AddService(ServiceConfig {
                sched_flags: SchedFlags(0x40),
                ..svc(81)
            })]),
            "invalid scheduler flag `0x40'",
        ),
        (
            Request::Ops(vec![Op::AddService(ServiceConfig {
                tunnel_source: Some(Ipv4Addr::new(224, 0, 0, 1).into()),
                ..svc(81)
            })]),
            "invalid tunnel source address 224.0.0.1",
        ),
        (
            // All or nothing: the valid service before the bad weight is not added either.
            Request::Ops(vec![
                Op::AddService(svc(81)),
                Op::AddDest(
                    key(81),
                    DestConfig {
                        port: 81,
                        weight: 65536,
                        ..rs
                    },
                ),
            ]),
            "illegal weight specified",
        ),
        (
            Request::Ops(vec![Op::EditDest(
                key(80),
                DestConfig {
                    u_threshold: 1 << 31,
                    ..rs
                },
            )]),
            "illegal u_threshold specified",
        ),
        (
            Request::Ops(vec![Op::AddService(ServiceConfig {
                ops: true,
                ..svc(81)
            })]),
            "One-Packet Scheduling is only for UDP virtual services",
        ),
        (
            Request::Ops(vec![Op::AddService(svc(0))]),
            "Zero port specified for non-persistent service",
        ),
        (
            Request::SetTimeouts(Timeouts {
                tcp: 900,
                tcpfin: 2_678_401,
                udp: 0,
            }),
            "invalid timeout value `2678401' specified",
        ),
    ];
    for (req, want) in cases {
        let got =
            api::call(d.socket(), &req).unwrap_or_else(|e| panic!("{req:?}: {e:#}\n{}", d.log()));
        assert_eq!(got, Response::Error(want.into()), "{req:?}");
        assert_eq!(d.ctl_ok(&["-Ln"]), listing, "{req:?} changed the table");
        assert_eq!(
            d.ctl_ok(&["-L", "--timeout"]),
            timeouts,
            "{req:?} changed the timeouts"
        );
    }
    // The same socket takes a valid raw request.
    assert_eq!(
        api::call(
            d.socket(),
            &Request::Ops(vec![Op::AddService(persistent(60))])
        )
        .expect("valid request"),
        Response::Ok
    );
    assert!(
        d.ctl_ok(&["-Ln"])
            .contains("TCP  192.0.2.100:81 rr persistent 60"),
        "{}",
        d.ctl_ok(&["-Ln"])
    );
}
