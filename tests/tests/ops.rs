//! Running it in production (issue 12): `/metrics` against `-Ln --stats` under real traffic
//! and through `promtool`, the Grafana dashboard's queries, JSON logs, systemd readiness and
//! unit, the unit's capability set, and the Debian package installed into a scratch root.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    Daemon, DaemonOpts, DrLab, Netns, PinDir, Process, TempDir,
    cmd::{output, report},
};

const VIP_URL: &str = "http://192.0.2.100/";
const METRICS_PORT: u16 = 9595;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The seed tutorial's DR table: rr over rs1 and rs2.
fn tutorial_rr(d: &Daemon) {
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    for rs in ["192.0.2.11:80", "192.0.2.12:80"] {
        d.ctl_ok(&["-a", "-t", "192.0.2.100:80", "-r", rs, "-g", "-w", "1"]);
    }
}

/// `GET /metrics` from inside `ns` (the daemon listens on the director's loopback).
fn scrape(ns: &Netns, port: u16) -> String {
    let (head, body) = http(ns, port, "GET /metrics HTTP/1.0\r\n\r\n")
        .unwrap_or_else(|e| panic!("scraping 127.0.0.1:{port} in {}: {e}", ns.name()));
    assert!(head.starts_with("HTTP/1.0 200"), "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

fn http(ns: &Netns, port: u16, request: &str) -> std::io::Result<(String, String)> {
    let mut s = ns.enter(|| {
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((head.to_string(), body.to_string()))
}

/// The samples of a text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (
                k.to_string(),
                v.parse()
                    .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}")),
            )
        })
        .collect()
}

fn refreshes(s: &BTreeMap<String, f64>) -> f64 {
    s["lb_metrics_refreshes_total"]
}

/// Scrapes until the daemon has refreshed the figures after `after` (a refresh count).
fn scrape_after(ns: &Netns, after: f64) -> (String, BTreeMap<String, f64>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(ns, METRICS_PORT);
        let s = samples(&text);
        if refreshes(&s) > after {
            return (text, s);
        }
        assert!(
            Instant::now() < deadline,
            "no metrics refresh after #{after} within 20 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const TRAFFIC: [&str; 5] = [
    "connections_total",
    "incoming_packets_total",
    "outgoing_packets_total",
    "incoming_bytes_total",
    "outgoing_bytes_total",
];

/// `-Ln --stats --exact` as series keys of `/metrics` and their values: a service line
/// gives `lb_<counter>{local_*,proto}`, a real server line `lb_backend_<counter>{…}`.
fn stats_as_series(listing: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut svc: Option<(String, String, String)> = None;
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (labels, prefix, nums) = match f.as_slice() {
            [proto @ ("TCP" | "UDP"), addr, rest @ ..] if rest.len() == 5 => {
                let (a, p) = addr.rsplit_once(':').expect("VIP:port");
                svc = Some((proto.to_string(), a.to_string(), p.to_string()));
                (
                    format!(r#"local_address="{a}",local_port="{p}",proto="{proto}""#),
                    "lb_",
                    rest,
                )
            }
            ["->", addr, rest @ ..] if rest.len() == 5 && addr.contains(':') => {
                let (proto, va, vp) = svc.clone().expect("a real server under a service");
                let (a, p) = addr.rsplit_once(':').expect("RIP:port");
                (
                    format!(
                        r#"local_address="{va}",local_port="{vp}",proto="{proto}",remote_address="{a}",remote_port="{p}""#
                    ),
                    "lb_backend_",
                    rest,
                )
            }
            _ => continue,
        };
        for (name, n) in TRAFFIC.iter().zip(nums) {
            let v: f64 = n
                .parse()
                .unwrap_or_else(|e| panic!("{n:?} in {line:?}: {e}"));
            out.insert(format!("{prefix}{name}{{{labels}}}"), v);
        }
    }
    out
}

/// `-Ln`'s real server lines as `lb_backend_{weight,connections_active,connections_inactive}`.
fn conns_as_series(listing: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut svc = None;
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [proto @ ("TCP" | "UDP"), addr, ..] => {
                let (a, p) = addr.rsplit_once(':').expect("VIP:port");
                svc = Some(format!(
                    r#"local_address="{a}",local_port="{p}",proto="{proto}""#
                ));
            }
            ["->", addr, _fwd, w, act, inact] if w.parse::<u32>().is_ok() => {
                let (a, p) = addr.rsplit_once(':').expect("RIP:port");
                let (act, inact) = (act.to_string(), inact.to_string());
                let l = format!(
                    r#"{},remote_address="{a}",remote_port="{p}""#,
                    svc.as_ref().expect("a service first")
                );
                for (name, v) in [
                    ("weight", w.to_string()),
                    ("connections_active", act),
                    ("connections_inactive", inact),
                ] {
                    out.insert(format!("lb_backend_{name}{{{l}}}"), v.parse().unwrap());
                }
            }
            _ => {}
        }
    }
    out
}

/// `promtool check metrics` on `text`: no problems reported.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; cargo xtask setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- input ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names a PromQL expression reads: identifiers outside `{…}`, `[…]` and strings
/// that are not functions (followed by `(`), keywords or label names of `by`/`without`/`on`/
/// `ignoring`/`group_*` lists. (Grafana's `label_values(metric, label)` counts its metric.)
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 24] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf", // aggregation operators, before `by`/`without` or `(`:
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let (mut i, mut depth_brace, mut depth_bracket) = (0, 0, 0);
    let mut label_list = false;
    while i < b.len() {
        let c = b[i] as char;
        match c {
            '"' | '\'' => {
                i += 1;
                while i < b.len() && b[i] as char != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            ')' => label_list = false,
            '$' => {
                // A Grafana variable ($__rate_interval, $vip): not a name.
                while i + 1 < b.len() && ((b[i + 1] as char).is_alphanumeric() || b[i + 1] == b'_')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i + 1 < b.len()
                    && ((b[i + 1] as char).is_ascii_alphanumeric()
                        || b[i + 1] == b'_'
                        || b[i + 1] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..=i];
                let mut j = i + 1;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                let call = j < b.len() && b[j] == b'(';
                if KEYWORDS.contains(&word) {
                    label_list = matches!(word, "by" | "without" | "on" | "ignoring")
                        || word.starts_with("group_");
                } else if call {
                    // A function's own parentheses are not a label list.
                } else if depth_brace == 0 && depth_bracket == 0 && !label_list {
                    out.insert(word.to_string());
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets and variable queries.
fn dashboard_exprs() -> Vec<String> {
    let path = repo().join("dist/grafana/lb.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

#[test]
fn promql_names_are_extracted_from_expressions() {
    assert_eq!(
        promql_metrics(
            r#"sum by (local_address, proto) (rate(lb_connections_total{instance=~"$i",x="a b"}[$__rate_interval])) / on (proto) group_left () lb_y"#
        ),
        BTreeSet::from(["lb_connections_total".into(), "lb_y".into()])
    );
    assert_eq!(
        promql_metrics("label_values(lb_build_info, instance)"),
        BTreeSet::from(["lb_build_info".into(), "instance".into()]),
        "label_values' second argument is a label; the caller drops it"
    );
}

/// The names the dashboard's queries read (label_values' label argument dropped).
fn dashboard_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for e in dashboard_exprs() {
        let e = match e.strip_prefix("label_values(") {
            Some(rest) => rest.split(',').next().unwrap().to_string(),
            None => e,
        };
        names.extend(promql_metrics(&e));
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_one_the_daemon_exports() {
    let exported: BTreeSet<String> = lb_ctl::metrics::Metrics::new()
        .exported_names()
        .into_iter()
        .collect();
    let used = dashboard_metrics();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which the daemon does not export ({exported:?})"
    );
    // The panels the issue asks for are there.
    for m in [
        "lb_connections_total",
        "lb_backend_connections_active",
        "lb_real_server_resolved",
        "lb_xdp_drops_total",
        "lb_conn_table_entries",
    ] {
        assert!(used.contains(m), "no panel reads {m}: {used:?}");
    }
}

/// Traffic from the client until `stop`, bounded in count: sequential curls to the VIP.
fn traffic(client: &str, stop: &AtomicBool) -> usize {
    let mut ok = 0;
    for _ in 0..3000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let out = Command::new("ip")
            .args(["netns", "exec", client, "curl", "-sS", "--max-time", "5"])
            .arg(VIP_URL)
            .output()
            .expect("curl");
        if out.status.success() {
            ok += 1;
        }
    }
    ok
}

#[test]
fn metrics_match_ipvsadm_stats_during_traffic_and_pass_promtool() {
    let lab = DrLab::new(2);
    let d = Daemon::start_with(
        lab.director(),
        DaemonOpts {
            ifaces: vec![lab.director_iface().into()],
            config: None,
            extra_args: [
                "--metrics",
                &format!("127.0.0.1:{METRICS_PORT}"),
                "--log-format",
                "json",
            ]
            .map(String::from)
            .to_vec(),
        },
    );
    tutorial_rr(&d);
    let stop = AtomicBool::new(false);
    let client = lab.client().name().to_string();
    let director = lab.director();
    std::thread::scope(|s| {
        let t = s.spawn(|| traffic(&client, &stop));
        let check = || {
            let mut moved = false;
            let mut n = samples(&scrape(director, METRICS_PORT));
            for round in 0..4 {
                // A (refresh k) ≤ `-Ln --stats` ≤ B (the first refresh after it): counters
                // only grow, so the listing must sit between two consecutive refreshes.
                let (_, a) = scrape_after(director, refreshes(&n));
                let listing = d.ctl_ok(&["-Ln", "--stats", "--exact"]);
                let st = stats_as_series(&listing);
                let (text, b) = scrape_after(director, refreshes(&a));
                assert_eq!(st.len(), 3 * TRAFFIC.len(), "{listing}");
                for (k, v) in &st {
                    let (va, vb) = (a.get(k), b.get(k));
                    assert!(
                        va.is_some_and(|x| x <= v) && vb.is_some_and(|x| x >= v),
                        "round {round}: {k}: -Ln --stats says {v}, the refreshes around it \
                         {va:?} and {vb:?}\n{listing}\n{text}"
                    );
                }
                moved |= st.iter().any(|(k, v)| a[k] < *v || b[k] > *v);
                n = b;
            }
            moved
        };
        let moved = check();
        stop.store(true, Ordering::Relaxed);
        let ok = t.join().unwrap();
        assert!(moved, "the counters did not move while traffic ran");
        assert!(ok >= 10, "only {ok} requests got through");
    });

    // Quiet: the next refresh equals the listing exactly, counters and connections.
    let (text, m) = scrape_after(director, refreshes(&samples(&scrape(director, 9595))));
    let listing = d.ctl_ok(&["-Ln", "--stats", "--exact"]);
    for (k, v) in stats_as_series(&listing) {
        assert_eq!(m.get(&k), Some(&v), "{k}\n{listing}\n{text}");
    }
    let conns_total: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("lb_connections_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(conns_total >= 10.0, "{text}");
    // Connection counts change as entries expire: compare when two refreshes around the
    // listing agree.
    let mut agreed = false;
    for _ in 0..10 {
        let a = samples(&scrape(director, METRICS_PORT));
        let listing = d.ctl_ok(&["-Ln"]);
        let (_, b) = scrape_after(director, refreshes(&a));
        let want = conns_as_series(&listing);
        assert_eq!(want.len(), 6, "{listing}");
        if want.keys().all(|k| a.get(k) == b.get(k)) {
            for (k, v) in &want {
                assert_eq!(a.get(k), Some(v), "{k}\n{listing}");
            }
            agreed = true;
            break;
        }
    }
    assert!(agreed, "connection counts never held still over a refresh");
    let size: f64 = listing
        .split("size=")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size= in {listing}"));
    assert_eq!(m["lb_conn_table_size"], size);
    assert!(m[r#"lb_xdp_forwarded_total{action="tx"}"#] > 0.0, "{text}");
    for rs in ["192.0.2.11", "192.0.2.12"] {
        assert_eq!(
            m[&format!(r#"lb_real_server_resolved{{address="{rs}"}}"#)],
            1.0,
            "{text}"
        );
    }
    promtool_check(&text);
    // The live output has every family the dashboard reads.
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in dashboard_metrics() {
        assert!(families.contains(name.as_str()), "{name} not in\n{text}");
    }

    // JSON logs: one object per line, the table's changes as structured events, and the
    // `log::` lines of the rest of the daemon through the bridge.
    let log = d.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let change = |c: &str| {
        events
            .iter()
            .filter(|e| e["change"] == c)
            .cloned()
            .collect::<Vec<_>>()
    };
    let added = change("service_added");
    assert_eq!(added.len(), 1, "{log}");
    assert_eq!(added[0]["service"], "TCP 192.0.2.100:80");
    assert_eq!(change("real_server_added").len(), 2, "{log}");
    let resolved: BTreeSet<_> = change("real_server_resolved")
        .iter()
        .map(|e| e["real_server"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        resolved,
        BTreeSet::from(["192.0.2.11".into(), "192.0.2.12".into()]),
        "{log}"
    );
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("attached to "))),
        "the log:: lines are not JSON:\n{log}"
    );
}

#[test]
fn garbage_and_stalled_scrapers_leave_metrics_and_forwarding_working() {
    let lab = DrLab::new(2);
    let d = Daemon::start_with(
        lab.director(),
        DaemonOpts {
            ifaces: vec![lab.director_iface().into()],
            config: None,
            extra_args: vec!["--metrics".into(), format!("127.0.0.1:{METRICS_PORT}")],
        },
    );
    tutorial_rr(&d);
    let director = lab.director();
    // Connections that never send a request, held open through what follows.
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            director
                .enter(|| TcpStream::connect(("127.0.0.1", METRICS_PORT)))
                .unwrap()
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(12);
    for i in 0..50 {
        let mut junk: Vec<u8> = (0..rng.usize(1..2000)).map(|_| rng.u8(..)).collect();
        if i % 5 == 0 {
            junk = b"GET /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\nabc".to_vec();
        }
        if let Ok(mut s) = director.enter(|| TcpStream::connect(("127.0.0.1", METRICS_PORT))) {
            let _ = s.write_all(&junk);
        }
    }
    let (head, _) = http(director, METRICS_PORT, "DELETE /metrics HTTP/1.0\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 405"), "{head}");
    // The first refresh after the services were added has them.
    let n = refreshes(&samples(&scrape(director, METRICS_PORT)));
    let (body, _) = scrape_after(director, n);
    assert!(body.contains("lb_connections_total{"), "{body}");
    let bodies = lab.curls(VIP_URL, 10);
    assert_eq!(
        bodies.iter().filter(|b| *b == "rs1").count(),
        5,
        "{bodies:?}"
    );
    drop(stalled);
    assert!(scrape(director, METRICS_PORT).contains("lb_build_info"));
}

/// A daemon started by hand (systemd-style), stopped on drop before its pins go.
struct Manual {
    proc: Process,
    _pins: PinDir,
    _dir: TempDir,
}

impl Drop for Manual {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
    }
}

fn xdp_attached(ns: &Netns, iface: &str) -> bool {
    ns.run(&["ip", "-d", "link", "show", "dev", iface])
        .contains("prog/xdp")
}

/// `lb-ctl daemon` in `ns` through `wrap` (e.g. setpriv), with `config` and `env`.
fn manual(
    ns: &Netns,
    wrap: &[&str],
    config: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> (Manual, PathBuf) {
    let dir = TempDir::new("ops");
    let conf = dir.join("lb.toml");
    std::fs::write(&conf, config).unwrap();
    let pins = PinDir::new("ops");
    let socket = dir.join("lb.sock");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display()))
        .args(wrap)
        .arg(lb_tests::lb_ctl())
        .arg("daemon")
        .arg("--config")
        .arg(&conf)
        .arg("--socket")
        .arg(&socket)
        .arg("--pin-path")
        .arg(pins.path())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Process::spawn("lb-ctl daemon (manual)", cmd);
    (
        Manual {
            proc,
            _pins: pins,
            _dir: dir,
        },
        socket,
    )
}

fn dr_config(iface: &str) -> String {
    format!(
        "[director]\ninterfaces = [\"{iface}\"]\n\
         [[service]]\naddress = \"192.0.2.100\"\nport = 80\nscheduler = \"rr\"\n\
         [[service.real_server]]\naddress = \"192.0.2.11\"\nport = 80\nforward = \"dr\"\n\
         [[service.real_server]]\naddress = \"192.0.2.12\"\nport = 80\nforward = \"dr\"\n"
    )
}

#[test]
fn ready_is_notified_only_once_attached_and_applied() {
    let lab = DrLab::new(2);
    let dir = TempDir::new("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let iface = lab.director_iface();
    assert!(!xdp_attached(lab.director(), iface));

    // A config that cannot start (an interface that does not exist): no READY, an error,
    // nothing attached.
    let (mut bad, _) = manual(
        lab.director(),
        &[],
        &dr_config("nosuch0"),
        &[],
        &[("NOTIFY_SOCKET", &sock_path)],
    );
    let status = bad.proc.wait_timeout(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}: {}",
        bad.proc.log()
    );
    assert!(bad.proc.log().contains("nosuch0"), "{}", bad.proc.log());
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    assert!(
        sock.recv(&mut buf).is_err(),
        "a daemon that failed to start notified systemd"
    );
    sock.set_nonblocking(false).unwrap();
    drop(bad);

    let (mut good, socket) = manual(
        lab.director(),
        &[],
        &dr_config(iface),
        &[],
        &[("NOTIFY_SOCKET", &sock_path)],
    );
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 within 30 s ({e}): {}", good.proc.log()));
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    // At the moment READY=1 arrives the program is attached and the table applied.
    let attached = xdp_attached(lab.director(), iface);
    let out = output(
        Command::new(lb_tests::lb_ctl())
            .arg("--socket")
            .arg(&socket)
            .arg("-Ln"),
    );
    assert_eq!(msg.lines().collect::<Vec<_>>(), ["READY=1"], "{msg:?}");
    assert!(attached, "READY=1 before XDP was attached");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("192.0.2.100:80") && listing.contains("192.0.2.12:80"),
        "{listing}"
    );
    assert_eq!(
        lab.curls(VIP_URL, 4).iter().filter(|b| *b == "rs1").count(),
        2
    );
    assert!(good.proc.is_running());
}

/// The unit's capability set, from the unit file.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(repo().join("dist/systemd/lb-ctl.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_units_capability_set_is_enough_to_balance_and_restart_keeps_connections() {
    let caps = unit_capabilities();
    assert!(
        !caps.iter().any(|c| c == "CAP_SYS_ADMIN"),
        "the unit keeps CAP_SYS_ADMIN: {caps:?}"
    );
    // setpriv --bounding-set: root then holds exactly these after exec, as under systemd's
    // CapabilityBoundingSet=.
    let bounding = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| {
            format!(
                "+{}",
                c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase()
            )
        }))
        .collect::<Vec<_>>()
        .join(",");
    let lab = DrLab::new(2);
    let iface = lab.director_iface();
    let bset = format!("--bounding-set={bounding}");
    let wrap = ["setpriv", bset.as_str(), "--"];
    let (mut m, socket) = manual(lab.director(), &wrap, &dr_config(iface), &[], &[]);
    let ctl = |args: &[&str]| {
        let mut cmd = Command::new(lb_tests::lb_ctl());
        cmd.arg("--socket").arg(&socket).args(args);
        let out = output(&mut cmd);
        (out.status.success(), report(&cmd, &out))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctl(&["-Ln"]).0 {
        assert!(
            m.proc.is_running() && Instant::now() < deadline,
            "the daemon did not start with {bounding}: {}",
            m.proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.proc.pid())).unwrap();
    let bnd = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .unwrap()
        .to_string();
    let bodies = lab.curls(VIP_URL, 6);
    assert_eq!(
        bodies.iter().filter(|b| *b == "rs1").count(),
        3,
        "{bodies:?}\n{bnd}\n{}",
        m.proc.log()
    );
    // What ExecStop does: the data path stays, a held connection keeps its server.
    let mut held = lb_tests::KeepAlive::connect(lab.client(), lab.vip_addr(80)).unwrap();
    let first = held.request().unwrap();
    let (ok, r) = ctl(&["stop", "--keep-datapath"]);
    assert!(ok, "{r}");
    let st = m.proc.wait_timeout(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?} {}", m.proc.log());
    assert!(xdp_attached(lab.director(), iface));
    assert_eq!(held.request().unwrap(), first, "the held connection moved");
    // The daemon really ran with only these capabilities.
    let number = |c: &str| match c {
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other}'s number here"),
    };
    let want: u64 = caps.iter().map(|c| 1u64 << number(c)).sum();
    assert_eq!(bnd, format!("CapBnd:\t{want:016x}"));
}

/// `cargo xtask dist` with the debug binary (stripped of debug info): a release build would
/// take minutes on the shared machine; `cargo xtask dist` alone builds the release one.
fn build_package(out: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "-q", "-p", "xtask", "--", "dist", "--binary"])
        .arg(lb_tests::lb_ctl())
        .arg("--out")
        .arg(out)
        .current_dir(repo());
    let o = output(&mut cmd);
    assert!(o.status.success(), "{}", report(&cmd, &o));
    let debs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs[0].clone()
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let o = output(cmd);
    assert!(o.status.success(), "{}", report(cmd, &o));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_package_installs_into_a_scratch_root_and_its_unit_verifies() {
    let dir = TempDir::new("dist");
    let deb = build_package(&dir.join("out"));
    let root = dir.join("root");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let (conffiles, _) = run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Package"));
    assert_eq!(conffiles.trim(), "lb-ctl");
    let ctl_dir = dir.join("control");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl_dir));
    assert_eq!(
        std::fs::read_to_string(ctl_dir.join("conffiles")).unwrap(),
        "/etc/lb/lb.toml\n"
    );

    let bin = root.join("usr/sbin/lb-ctl");
    let (v, _) = run_ok(Command::new(&bin).arg("-v"));
    assert!(v.starts_with("lb-ctl v"), "{v}");
    let conf = root.join("etc/lb/lb.toml");
    let (c, _) = run_ok(Command::new(&bin).args(["check", "--config"]).arg(&conf));
    assert!(c.contains(": ok (1 services, 2 real servers)"), "{c}");
    for ex in ["full.toml", "nat.toml", "tun.toml"] {
        let p = root.join("usr/share/doc/lb-ctl/examples").join(ex);
        run_ok(Command::new(&bin).args(["check", "--config"]).arg(&p));
    }
    // A broken conffile is refused with its line, by the installed binary.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[metrics]\nlisten = \"nowhere\"\n").unwrap();
    let o = output(Command::new(&bin).args(["check", "--config"]).arg(&bad));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.toml:2:"), "{err}");

    // The man page renders, without groff warnings, with the ipvsadm options in it.
    let page = root.join("usr/share/man/man8/lb-ctl.8.gz");
    let (text, warnings) = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0"),
    );
    assert!(warnings.trim().is_empty(), "{warnings}");
    // Without a terminal, man may still emit overstrike bold ("N\x08N"): keep the letters.
    let plain = |t: &str| {
        let mut out = String::new();
        for c in t.chars() {
            if c == '\x08' {
                out.pop();
            } else {
                out.push(c);
            }
        }
        out
    };
    let text = plain(&text);
    for want in [
        "LB-CTL(8)",
        "--add-service",
        "--real-server",
        "lb-ctl-daemon(8)",
    ] {
        assert!(text.contains(want), "{want} not in the man page:\n{text}");
    }
    let (daemon_page, _) = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(root.join("usr/share/man/man8/lb-ctl-daemon.8.gz")),
    );
    let daemon_page = plain(&daemon_page);
    assert!(daemon_page.contains("--metrics"), "{daemon_page}");
    // Completions: bash parses its file; zsh's and fish's are there.
    let bash = root.join("usr/share/bash-completion/completions/lb-ctl");
    run_ok(Command::new("bash").arg("-n").arg(&bash));
    assert!(
        std::fs::read_to_string(&bash)
            .unwrap()
            .contains("--add-service")
    );
    for f in [
        "usr/share/zsh/vendor-completions/_lb-ctl",
        "usr/share/fish/vendor_completions.d/lb-ctl.fish",
        "usr/share/lb-ctl/grafana/lb.json",
        "lib/systemd/system/lb-ctl.service",
    ] {
        assert!(root.join(f).is_file(), "{f} missing from the package");
    }

    // systemd-analyze verify on the installed unit, its commands pointed at the scratch root
    // (verify checks that they exist) and its Documentation= at the packaged man page. It
    // exits 0 on warnings, so silence is the pass; a broken copy shows it is listening.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/lb-ctl.service")).unwrap();
    let verify = |text: &str| {
        let d = dir.join("unit");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("lb-ctl.service");
        std::fs::write(
            &p,
            text.replace("/usr/sbin/lb-ctl", &bin.display().to_string()),
        )
        .unwrap();
        let o = output(
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(&p)
                .env("MANPATH", root.join("usr/share/man")),
        );
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, said) = verify(&unit);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    for want in [
        "Type=notify",
        "ExecReload=/usr/sbin/lb-ctl reload",
        "ExecStop=/usr/sbin/lb-ctl stop --keep-datapath",
        "ProtectSystem=strict",
        "ProtectHome=yes",
    ] {
        assert!(unit.lines().any(|l| l == want), "{want} not in the unit");
    }
    let (_, said) = verify(&unit.replace("Type=notify", "Type=notfy"));
    assert!(
        said.contains("notfy"),
        "verify missed a bad Type=: {said:?}"
    );
}

#[test]
fn a_busy_metrics_address_stops_the_daemon_before_it_changes_anything() {
    let lab = DrLab::new(2);
    let iface = lab.director_iface();
    // Something else already listens there.
    let _taken = lab
        .director()
        .enter(|| std::net::TcpListener::bind(("127.0.0.1", METRICS_PORT)))
        .unwrap();
    let addr = format!("127.0.0.1:{METRICS_PORT}");
    let (mut m, _) = manual(
        lab.director(),
        &[],
        &dr_config(iface),
        &["--metrics", &addr],
        &[],
    );
    let st = m.proc.wait_timeout(Duration::from_secs(20));
    let log = m.proc.log();
    assert!(st.is_some_and(|s| !s.success()), "{st:?}: {log}");
    assert!(
        log.contains(&format!("metrics listener on {addr}")),
        "no clear error: {log}"
    );
    assert!(!xdp_attached(lab.director(), iface), "{log}");
    // The same from the config file: a bad address there is refused with its line.
    let (mut m, _) = manual(
        lab.director(),
        &[],
        &format!("{}[metrics]\nlisten = \"9595\"\n", dr_config(iface)),
        &[],
        &[],
    );
    let st = m.proc.wait_timeout(Duration::from_secs(20));
    let log = m.proc.log();
    assert!(st.is_some_and(|s| !s.success()), "{st:?}: {log}");
    assert!(
        log.contains(&format!(
            "lb.toml:{}:10: metrics listen \"9595\"",
            dr_config(iface).lines().count() + 2
        )),
        "{log}"
    );
    assert!(!xdp_attached(lab.director(), iface), "{log}");
}
