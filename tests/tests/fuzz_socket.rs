//! Control-socket fuzzing: a real daemon (in a namespace, on an interface, with a small table)
//! gets random bytes, truncated and oversized lines, deeply nested JSON, huge numbers and
//! mutated valid requests. Every connection must get an error or a valid answer (or be closed,
//! for an empty or oversized request); the daemon stays alive and answering; after an error
//! the table is exactly what it was; what it accepts is what the CLI would accept. Root only.
//! `LB_FUZZ_REQUESTS` sets the count (default 2,000), `LB_FUZZ_SEED` replays a run.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, Shutdown},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use lb_ctl::{
    api::{Request, Response, Snapshot, Timeouts},
    model::{
        DestConfig, Forward, Op, Persistence, SchedFlags, Scheduler, ServiceConfig, ServiceKey,
    },
};
use lb_tests::{Daemon, Netns, TempDir, fuzz};
use serde_json::Value;

/// Requests above this size may be refused by closing the connection (a size cap); below it,
/// every request gets an answer.
const SMALL: usize = 64 * 1024;
/// How long an answer may take: a bound for a hung daemon, not an expectation.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// ipvsadm's limit for `--set` and `-p` (31 days).
const MAX_TIMEOUT: u32 = 2_678_400;

const CONFIG: &str = r#"
[[service]]
address = "192.0.2.100"
port = 80
scheduler = "rr"
  [[service.real_server]]
  address = "192.0.2.11"
  [[service.real_server]]
  address = "192.0.2.12"
  weight = 3

[[service]]
address = "192.0.2.100"
port = 53
protocol = "udp"
scheduler = "sh"
sched_flags = ["sh-port"]
persistence_timeout = 600
  [[service.real_server]]
  address = "192.0.2.11"
  forward = "nat"
"#;

enum Answer {
    Reply(Response),
    /// Closed without a line.
    Closed,
    /// Not a `Response`.
    Garbage(String),
    TimedOut,
}

fn send(socket: &Path, bytes: &[u8]) -> Answer {
    let mut s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return Answer::Garbage(format!("connect: {e}")),
    };
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    // A daemon that stops reading (a size cap) may close while we write: that is its answer.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut line = String::new();
    match BufReader::new(&s).read_line(&mut line) {
        Ok(0) => Answer::Closed,
        Ok(_) => match serde_json::from_str::<Response>(&line) {
            Ok(r) => Answer::Reply(r),
            Err(e) => Answer::Garbage(format!("{e}: {line:?}")),
        },
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Answer::TimedOut
        }
        Err(_) => Answer::Closed,
    }
}

fn call(socket: &Path, req: &Request) -> Response {
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    match send(socket, &line) {
        Answer::Reply(r) => r,
        _ => panic!("no answer to {req:?}"),
    }
}

fn table(socket: &Path) -> Snapshot {
    match call(socket, &Request::List { service: None }) {
        Response::Snapshot(s) => s,
        r => panic!("-L answered {r:?}"),
    }
}

fn timeouts(socket: &Path) -> Timeouts {
    match call(socket, &Request::GetTimeouts) {
        Response::Timeouts(t) => t,
        r => panic!("--timeout answered {r:?}"),
    }
}

/// The table without counters: what an error must leave as it was.
fn config_of(s: &Snapshot) -> Vec<(ServiceConfig, Vec<DestConfig>)> {
    s.services
        .iter()
        .map(|v| (v.config, v.dests.iter().map(|d| d.config).collect()))
        .collect()
}

/// What ipvsadm (and so `lb-ctl`'s CLI) or the config file refuses, found in an accepted table.
fn cli_would_refuse(s: &Snapshot, t: Timeouts) -> Option<(&'static str, String)> {
    for (k, v) in [("tcp", t.tcp), ("tcpfin", t.tcpfin), ("udp", t.udp)] {
        if v > MAX_TIMEOUT {
            return Some((
                "accepted: --set timeout beyond ipvsadm's limit",
                format!("timeout {k} = {v} beyond {MAX_TIMEOUT}"),
            ));
        }
    }
    let known = SchedFlags::FLAG1 | SchedFlags::FLAG2 | SchedFlags::FLAG3;
    for v in &s.services {
        let c = &v.config;
        if let Some(p) = c.persistence
            && !(1..=MAX_TIMEOUT).contains(&p.timeout)
        {
            return Some((
                "accepted: persistence timeout out of 1..=2678400",
                format!("{}: persistence timeout {}", c.key, p.timeout),
            ));
        }
        // No rule for `-M`: ipvsadm and the kernel take any IPv4 mask (the data path ANDs the
        // client address with it), and so does `lb-ctl -M`; only the TOML file insists on a
        // contiguous one, as a guard against typos in a file.
        if c.sched_flags.0 & !known != 0 {
            return Some((
                "accepted: unknown scheduler flag bits",
                format!("{}: scheduler flag bits {:#x}", c.key, c.sched_flags.0),
            ));
        }
        if let Some(src) = c.tunnel_source {
            let bad = match src {
                std::net::IpAddr::V4(a) => {
                    let o = a.octets();
                    o[0] == 0 || o[0] == 127 || o[0] >= 224
                }
                std::net::IpAddr::V6(a) => {
                    a.is_unspecified()
                        || a.is_loopback()
                        || a.is_multicast()
                        || a.to_ipv4_mapped().is_some()
                }
            };
            if bad {
                return Some((
                    "accepted: tunnel source not a unicast address",
                    format!("{}: tunnel source {src}", c.key),
                ));
            }
        }
        for d in &v.dests {
            let d = d.config;
            if d.weight > DestConfig::MAX_WEIGHT {
                return Some((
                    "accepted: weight",
                    format!("{}: weight {}", c.key, d.weight),
                ));
            }
        }
    }
    None
}

/// Valid requests to start mutations from.
fn seeds() -> Vec<Request> {
    let k80 = ServiceKey::tcp(Ipv4Addr::new(192, 0, 2, 100), 80);
    let k81 = ServiceKey::tcp(Ipv4Addr::new(192, 0, 2, 100), 81);
    let mut svc = ServiceConfig::new(k81, Scheduler::Wlc);
    svc.persistence = Some(Persistence {
        timeout: 300,
        netmask: Ipv4Addr::new(255, 255, 255, 0).into(),
    });
    let dest = DestConfig::new(Ipv4Addr::new(192, 0, 2, 13), 81, Forward::Dr, 1);
    // An edit of a service that stays, with every optional field set, for mutations to hit.
    let mut edit = ServiceConfig::new(k80, Scheduler::Sh);
    edit.persistence = svc.persistence;
    edit.sched_flags = SchedFlags(SchedFlags::FLAG1);
    edit.tunnel_source = Some(Ipv4Addr::new(192, 0, 2, 1).into());
    vec![
        Request::Ops(vec![Op::EditService(edit)]),
        Request::Ops(vec![Op::EditService(edit)]),
        Request::Ops(vec![Op::AddService(svc), Op::AddDest(k81, dest)]),
        Request::Ops(vec![Op::EditService(ServiceConfig::new(
            k80,
            Scheduler::Wrr,
        ))]),
        Request::Ops(vec![Op::EditDest(
            k80,
            DestConfig::new(Ipv4Addr::new(192, 0, 2, 12), 80, Forward::Dr, 7),
        )]),
        Request::Ops(vec![Op::DelDest(
            k80,
            Ipv4Addr::new(192, 0, 2, 12).into(),
            80,
        )]),
        Request::Ops(vec![Op::DelService(k81)]),
        Request::List { service: Some(k80) },
        Request::List { service: None },
        Request::Conns,
        Request::Zero { service: None },
        Request::SetTimeouts(Timeouts {
            tcp: 900,
            tcpfin: 120,
            udp: 300,
        }),
        Request::GetTimeouts,
        Request::Status,
    ]
}

/// Replaces one leaf (or the whole) of a JSON value with something of another type, at a
/// range's edge, or huge.
fn mutate_value(rng: &mut fastrand::Rng, v: &mut Value) {
    let leaves: [Value; 16] = [
        Value::Null,
        Value::Bool(true),
        Value::from(0),
        Value::from(-1),
        Value::from(u32::MAX),
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::from(1.5),
        Value::from(65536),
        Value::from(MAX_TIMEOUT + 1),
        Value::from(""),
        Value::from("192.0.2.300"),
        Value::from("0.0.0.0"),
        Value::from("é\u{202e}"),
        Value::Array(vec![]),
        serde_json::json!({}),
    ];
    match v {
        Value::Object(m) if !m.is_empty() && rng.u8(..4) != 0 => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.usize(..keys.len())];
            if rng.u8(..8) == 0 {
                m.remove(k);
            } else {
                mutate_value(rng, m.get_mut(k).unwrap());
            }
        }
        Value::Array(a) if !a.is_empty() && rng.u8(..4) != 0 => {
            let i = rng.usize(..a.len());
            mutate_value(rng, &mut a[i]);
        }
        Value::Number(_) if rng.bool() => {
            *v = [
                Value::from(0),
                Value::from(u32::MAX),
                Value::from(u64::MAX),
                Value::from(MAX_TIMEOUT + 1),
                Value::from(rng.u32(..)),
                Value::from(16u32 << rng.u8(..27)),
            ][rng.usize(..6)]
            .clone();
        }
        _ => *v = leaves[rng.usize(..leaves.len())].clone(),
    }
}

/// JSON pointers of every number and string in `v`.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| leaves(x, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| leaves(x, format!("{at}/{i}"), out)),
        Value::Number(_) | Value::String(_) => out.push(at),
        _ => {}
    }
}

/// A valid request with one number or address set to a range's edge (same type, so that it
/// decodes and reaches the daemon's own checks).
fn edge_field(rng: &mut fastrand::Rng, req: &Request) -> Vec<u8> {
    let mut v = serde_json::to_value(req).expect("serialising a request");
    let mut paths = Vec::new();
    leaves(&v, String::new(), &mut paths);
    if let Some(p) = paths.get(rng.usize(..paths.len().max(1))) {
        let leaf = v.pointer_mut(p).expect("a path just found");
        *leaf = if leaf.is_number() {
            let edges = [0, 1, 65535, 65536, MAX_TIMEOUT, MAX_TIMEOUT + 1, u32::MAX];
            Value::from(edges[rng.usize(..edges.len())])
        } else {
            let edges = [
                "0.0.0.0",
                "127.0.0.1",
                "224.0.0.1",
                "255.255.255.255",
                "255.0.255.0",
                "0.0.0.1",
            ];
            Value::from(edges[rng.usize(..edges.len())])
        };
    }
    serde_json::to_vec(&v).expect("serialising JSON")
}

/// One request's bytes, and what kind it is.
fn make(rng: &mut fastrand::Rng, seeds: &[Request]) -> (Vec<u8>, &'static str) {
    let valid = |rng: &mut fastrand::Rng| {
        serde_json::to_vec(&seeds[rng.usize(..seeds.len())]).expect("serialising a request")
    };
    let mut bytes: Vec<u8>;
    let kind = match rng.u8(..20) {
        0..=1 => {
            bytes = (0..rng.usize(..512)).map(|_| rng.u8(..)).collect();
            "random-bytes"
        }
        2 => {
            bytes = valid(rng);
            bytes.truncate(rng.usize(..bytes.len()));
            "truncated"
        }
        3 => {
            // Oversized: a valid request after megabytes of whitespace, or a huge string.
            let n = rng.usize(100_000..3_000_000);
            bytes = if rng.bool() {
                let mut b = vec![b' '; n];
                b.extend(valid(rng));
                b
            } else {
                format!("{{\"list\":{{\"service\":\"{}\"}}}}", "x".repeat(n)).into_bytes()
            };
            "oversized"
        }
        4 => {
            let depth = [64, 127, 128, 129, 1000, 100_000][rng.usize(..6)];
            bytes = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
            if rng.bool() {
                bytes = format!("{{\"ops\":{}}}", String::from_utf8(bytes).unwrap()).into_bytes();
            }
            "nested"
        }
        5 => {
            let n = [
                "1e400",
                "99999999999999999999999999",
                "-99999999999999999999",
                "18446744073709551616",
                "4294967296",
                "NaN",
                "-0",
            ][rng.usize(..7)];
            bytes = format!(r#"{{"set_timeouts":{{"tcp":{n},"tcpfin":1,"udp":1}}}}"#).into_bytes();
            "huge-number"
        }
        6..=8 => {
            let req = &seeds[rng.usize(..seeds.len())];
            bytes = edge_field(rng, req);
            "edge-field"
        }
        9..=11 => {
            bytes = valid(rng);
            for _ in 0..rng.usize(1..=4) {
                if bytes.is_empty() {
                    break;
                }
                let i = rng.usize(..bytes.len());
                match rng.u8(..3) {
                    0 => bytes[i] ^= 1 << rng.u8(..8),
                    1 => bytes[i] = rng.u8(..),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            "mutated-bytes"
        }
        _ => {
            let mut v: Value = serde_json::from_slice(&valid(rng)).unwrap();
            for _ in 0..rng.usize(1..=3) {
                mutate_value(rng, &mut v);
            }
            bytes = serde_json::to_vec(&v).unwrap();
            "mutated-json"
        }
    };
    // Most requests end their line; some don't (the daemon sees the end of the stream).
    if rng.u8(..8) != 0 {
        bytes.push(b'\n');
    }
    (bytes, kind)
}

#[test]
fn fuzz_socket() {
    let count = fuzz::env_u64("LB_FUZZ_REQUESTS", 2_000);
    let seed = fuzz::seed_from_env();
    eprintln!("fuzz_socket: seed {seed:#x} (LB_FUZZ_SEED={seed:#x} replays), {count} requests");
    let ns = Netns::new("fuzzsock");
    ns.ip(&["link", "add", "lb0", "type", "veth", "peer", "name", "lb1"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "lb0"]);
    ns.ip(&["link", "set", "lb0", "up"]);
    ns.ip(&["link", "set", "lb1", "up"]);
    let dir = TempDir::new("fuzzsock");
    let config = dir.join("lb.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut d = Daemon::start(&ns, &["lb0"], Some(&config));
    let socket = d.socket().to_path_buf();

    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut before = table(&socket);
    let mut before_timeouts = timeouts(&socket);
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    let mut answers: BTreeMap<&str, u64> = BTreeMap::new();
    let mut bad: BTreeMap<&str, (u64, String)> = BTreeMap::new();
    let mut note = |class: &'static str, what: String| {
        bad.entry(class).or_insert((0, what)).0 += 1;
    };
    let start = Instant::now();
    for i in 0..count {
        let (bytes, kind) = make(&mut rng, &seeds);
        // Never ask it to stop: that is a valid request, not a fault. (The daemon reads the
        // first line; check that as well as the whole.)
        let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        if [bytes.trim_ascii(), first.trim_ascii()].iter().any(|b| {
            matches!(
                serde_json::from_slice::<Request>(b),
                Ok(Request::Shutdown { .. })
            )
        }) {
            continue;
        }
        *kinds.entry(kind).or_default() += 1;
        let shown = || {
            let head = &bytes[..bytes.len().min(200)];
            match std::str::from_utf8(head) {
                Ok(s) => format!("{kind} request of {} bytes: {s:?}", bytes.len()),
                Err(_) => format!(
                    "{kind} request of {} bytes, hex {}",
                    bytes.len(),
                    fuzz::hex(head)
                ),
            }
        };
        match send(&socket, &bytes) {
            Answer::Reply(Response::Error(e)) => {
                *answers.entry("error").or_default() += 1;
                let after = table(&socket);
                let after_t = timeouts(&socket);
                if config_of(&after) != config_of(&before) || after_t != before_timeouts {
                    note(
                        "error-but-state-changed",
                        format!("{} answered {e:?}, the table or timeouts changed", shown()),
                    );
                    before = after;
                    before_timeouts = after_t;
                }
            }
            Answer::Reply(r) => {
                *answers.entry("answer").or_default() += 1;
                let after = table(&socket);
                let after_t = timeouts(&socket);
                if let Some((class, why)) = cli_would_refuse(&after, after_t) {
                    note(class, format!("{} answered {r:?}: {why}", shown()));
                    // Back to a table the CLI accepts, so later checks are about later requests.
                    let mut reset = vec![Op::Clear];
                    for (cfg, dests) in config_of(&before) {
                        reset.push(Op::AddService(cfg));
                        reset.extend(dests.into_iter().map(|d| Op::AddDest(cfg.key, d)));
                    }
                    call(&socket, &Request::Ops(reset));
                    call(&socket, &Request::SetTimeouts(before_timeouts));
                } else {
                    before = after;
                    before_timeouts = after_t;
                }
            }
            Answer::Closed if bytes.trim_ascii().is_empty() || bytes.len() > SMALL => {
                *answers.entry("closed").or_default() += 1;
            }
            Answer::Closed => note("closed-without-answer", shown()),
            Answer::Garbage(g) => note("not-a-response", format!("{}: {g}", shown())),
            Answer::TimedOut => note("no-answer", format!("{} after {ANSWER_TIMEOUT:?}", shown())),
        }
        if i % 100 == 0 {
            assert!(
                d.is_running(),
                "the daemon died after request {i} (seed {seed:#x}): {}\n--- log ---\n{}",
                shown(),
                d.log()
            );
        }
    }
    let took = start.elapsed();
    assert!(
        d.is_running(),
        "the daemon died (seed {seed:#x})\n{}",
        d.log()
    );
    // Still answering, with the table it had.
    let last = table(&socket);
    assert_eq!(config_of(&last), config_of(&before), "the table at the end");
    let report: String = bad
        .iter()
        .map(|(class, (n, e))| format!("VIOLATION {class}: {n}× — e.g. {e}\n"))
        .collect();
    eprintln!(
        "fuzz_socket: {count} requests in {:.1} s; sent {kinds:?}; answered {answers:?}\n{report}",
        took.as_secs_f64()
    );
    assert!(
        bad.is_empty(),
        "socket fuzzing (seed {seed:#x}, LB_FUZZ_SEED={seed:#x} replays) found:\n{report}"
    );
}
