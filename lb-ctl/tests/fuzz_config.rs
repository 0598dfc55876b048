//! TOML fuzzing: mutations of every example file through `config::parse` must give a valid
//! configuration or an error located as `file:line:col`, never a panic. No root needed: it
//! runs with the unit tests. `LB_FUZZ_SEED` replays a run, `LB_FUZZ_CONFIGS` sets the count.

mod common;

use std::{collections::BTreeMap, panic::AssertUnwindSafe, path::Path};

use lb_ctl::{
    config::{self, Config},
    model::{Model, Op},
};

const ORIGIN: &str = "fuzz.toml";

/// Values of every TOML type and of the ranges' edges, put where a value was.
const VALUES: &[&str] = &[
    "\"\"",
    "\"x\"",
    "\"192.0.2.300\"",
    "\"255.255.255.255\"",
    "\"0.0.0.0\"",
    "\"198.51.100.1:80\"",
    "\"tcp\"",
    "\"udp\"",
    "\"sctp\"",
    "\"dr\"",
    "\"nat\"",
    "\"tun\"",
    "\"mh\"",
    "\"é\u{202e}\u{0}\"",
    "\"\u{1F600}\"",
    "'literal'",
    "\"\"\"multi\nline\"\"\"",
    "[]",
    "[1, 2]",
    "[\"sh-fallback\", \"mh-port\", \"flag-3\", \"nope\"]",
    "[[]]",
    "{}",
    "{ eth0 = \"192.0.2.2\" }",
    "{ eth0 = 5 }",
    "true",
    "false",
    "0",
    "1",
    "-1",
    "17",
    "1.5",
    "-0.0",
    "nan",
    "inf",
    "1e400",
    "255",
    "256",
    "65535",
    "65536",
    "65537",
    "2678400",
    "2678401",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999999",
    "0x7fffffff",
    "0o777",
    "0b101",
    "1979-05-27T07:32:00Z",
    "07:32:00",
];

/// Things to insert anywhere: TOML syntax, control characters, unicode.
const INSERTS: &[&str] = &[
    "=",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "\"",
    "'",
    "#",
    ",",
    ".",
    "\n",
    "\r\n",
    "\t",
    "\0",
    "\u{feff}",
    "\u{202e}",
    "é",
    "\u{1F600}",
    "\u{10FFFF}",
    "[director]\n",
    "[[service]]\n",
    "[[service.real_server]]\n",
    "[timeouts]\n",
    "address = \"192.0.2.1\"\n",
    "port = 80\n",
];

/// A char boundary of `s` at or before `i`.
fn boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One mutation of `text`; its name says which.
fn mutate(rng: &mut fastrand::Rng, text: &str) -> (String, &'static str) {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let n = lines.len().max(1);
    match rng.u8(..9) {
        0 => {
            let mut b = text.as_bytes().to_vec();
            if !b.is_empty() {
                let i = rng.usize(..b.len());
                b[i] ^= 1 << rng.u8(..8);
            }
            (String::from_utf8_lossy(&b).into_owned(), "byte-flip")
        }
        1 => {
            let i = rng.usize(..n);
            let mut l = lines.clone();
            if i < l.len() {
                l.remove(i);
            }
            (l.concat(), "line-deleted")
        }
        2 => {
            let mut l = lines.clone();
            if !l.is_empty() {
                let i = rng.usize(..l.len());
                l.insert(i, lines[i]);
            }
            (l.concat(), "line-duplicated")
        }
        3 => {
            let mut l = lines.clone();
            if l.len() >= 2 {
                let (a, b) = (rng.usize(..l.len()), rng.usize(..l.len()));
                l.swap(a, b);
            }
            (l.concat(), "lines-swapped")
        }
        4 => {
            let at = boundary(text, rng.usize(..=text.len()));
            (text[..at].to_string(), "truncated")
        }
        5 | 6 => {
            // A value replaced with one of another type or at a range's edge.
            let candidates: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains('=') && !l.trim_start().starts_with('#'))
                .map(|(i, _)| i)
                .collect();
            if candidates.is_empty() {
                return (text.to_string(), "value-replaced");
            }
            let i = candidates[rng.usize(..candidates.len())];
            let key = lines[i].split('=').next().unwrap_or("");
            let value = VALUES[rng.usize(..VALUES.len())];
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            l[i] = format!("{key}= {value}\n");
            (l.concat(), "value-replaced")
        }
        7 => {
            let at = boundary(text, rng.usize(..=text.len()));
            let ins = INSERTS[rng.usize(..INSERTS.len())];
            (format!("{}{ins}{}", &text[..at], &text[at..]), "inserted")
        }
        _ => {
            // A key renamed: unknown keys, or a key moved to another table.
            let candidates: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains('='))
                .map(|(i, _)| i)
                .collect();
            if candidates.is_empty() {
                return (text.to_string(), "key-renamed");
            }
            let i = candidates[rng.usize(..candidates.len())];
            let keys = [
                "adress",
                "port",
                "weight",
                "scheduler",
                "tcp",
                "interfaces",
                "persistence_timeout",
                "x.y",
                "\"quoted key\"",
                "é",
            ];
            let rest = lines[i].split_once('=').map_or("", |(_, r)| r);
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            l[i] = format!("{} ={rest}", keys[rng.usize(..keys.len())]);
            (l.concat(), "key-renamed")
        }
    }
}

/// What a valid configuration owes: what the model itself would accept, op by op, and the
/// documented ranges.
fn check_valid(c: &Config) -> Result<(), String> {
    let mut m = Model::default();
    for e in c.model.services.values() {
        m.apply(&Op::AddService(e.config))
            .map_err(|err| format!("service {}: the model refuses it: {err}", e.config.key))?;
        for d in &e.dests {
            m.apply(&Op::AddDest(e.config.key, *d)).map_err(|err| {
                format!(
                    "service {} real server {}: the model refuses it: {err}",
                    e.config.key, d.addr
                )
            })?;
        }
    }
    if m != c.model {
        return Err("the model rebuilt op by op differs from the parsed one".into());
    }
    if let Some(t) = c.timeouts {
        for (k, v) in [("tcp", t.tcp), ("tcpfin", t.tcpfin), ("udp", t.udp)] {
            if v > 2_678_400 {
                return Err(format!("timeout {k} = {v} past ipvsadm's limit"));
            }
        }
    }
    if c.director.conn_table_size < config::Director::MIN_CONN_TABLE_SIZE {
        return Err(format!(
            "conn_table_size {} below the minimum",
            c.director.conn_table_size
        ));
    }
    for e in c.model.services.values() {
        if let Some(p) = e.config.persistence
            && !(1..=2_678_400).contains(&p.timeout)
        {
            return Err(format!("persistence timeout {} out of range", p.timeout));
        }
    }
    Ok(())
}

/// An error must say where: `fuzz.toml:LINE:COL: message`, a line in the text.
fn check_error(text: &str, e: &config::ConfigError) -> Result<(), String> {
    let shown = e.to_string();
    let (Some(line), Some(col)) = (e.line(), e.column()) else {
        return Err(format!("no line:col in {shown:?}"));
    };
    let lines = text.split('\n').count();
    if line == 0 || line > lines || col == 0 {
        return Err(format!(
            "{line}:{col} is not in the file ({lines} lines): {shown:?}"
        ));
    }
    if !shown.starts_with(&format!("{ORIGIN}:{line}:{col}: ")) || e.message().trim().is_empty() {
        return Err(format!("not in the file:line:col: message form: {shown:?}"));
    }
    Ok(())
}

#[test]
fn mutated_example_configs_parse_or_fail_with_a_location() {
    let seed = common::fuzz_seed();
    let count = std::env::var("LB_FUZZ_CONFIGS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(20_000u64);
    eprintln!("fuzz_config: seed {seed:#x} (LB_FUZZ_SEED={seed:#x} replays), {count} cases");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut examples: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml").then(|| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
        })
        .collect();
    examples.sort();
    assert!(examples.len() >= 5, "examples: {examples:?}");
    for (name, text) in &examples {
        config::parse(text, name).unwrap_or_else(|e| panic!("the example itself fails: {e}"));
    }

    // The panic hook would print every caught panic; the report below says it once.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut ok, mut refused) = (0u64, 0u64);
    let mut bad: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for _ in 0..count {
        let (_, base) = &examples[rng.usize(..examples.len())];
        let mut text = base.clone();
        let mut how = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            let (t, h) = mutate(&mut rng, &text);
            text = t;
            how.push(h);
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| config::parse(&text, ORIGIN)));
        let verdict = match result {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(("panic", msg))
            }
            Ok(Ok(c)) => {
                ok += 1;
                check_valid(&c).map_err(|m| ("accepted-invalid", m))
            }
            Ok(Err(e)) => {
                refused += 1;
                check_error(&text, &e).map_err(|m| ("error-without-location", m))
            }
        };
        if let Err((class, msg)) = verdict {
            let entry = bad.entry(class.to_string()).or_insert_with(|| {
                (
                    0,
                    format!("{msg} (mutations {how:?})\n--- text ---\n{text}\n---"),
                )
            });
            entry.0 += 1;
        }
    }
    std::panic::set_hook(hook);
    eprintln!("fuzz_config: {count} cases: {ok} valid, {refused} refused with a location");
    let report: String = bad
        .iter()
        .map(|(class, (n, example))| format!("{class}: {n}× — e.g. {example}\n"))
        .collect();
    assert!(
        bad.is_empty(),
        "config fuzzing (seed {seed:#x}, LB_FUZZ_SEED={seed:#x} replays) found:\n{report}"
    );
    // A fuzzer whose mutations never get past the parser tests nothing.
    assert!(
        ok > count / 50 && refused > count / 10,
        "too few cases on either side: {ok} valid, {refused} refused"
    );
}

#[test]
fn the_config_checks_catch_what_they_are_for() {
    use lb_ctl::model::{DestConfig, Forward, Scheduler, ServiceConfig, ServiceEntry, ServiceKey};
    // A model the model itself refuses (weight past 65535) is caught.
    let key = ServiceKey::tcp("192.0.2.100".parse::<std::net::IpAddr>().unwrap(), 80);
    let mut c = Config::default();
    c.model.services.insert(
        key,
        ServiceEntry {
            config: ServiceConfig::new(key, Scheduler::Rr),
            dests: vec![DestConfig::new(
                "192.0.2.11".parse::<std::net::IpAddr>().unwrap(),
                80,
                Forward::Dr,
                70_000,
            )],
        },
    );
    assert!(check_valid(&c).unwrap_err().contains("weight"));
    // A real error passes the location check; one pointing past the file does not.
    let e = config::parse("[director]\nconn_table_size = 1\n", ORIGIN).unwrap_err();
    check_error("[director]\nconn_table_size = 1\n", &e).unwrap();
    assert!(check_error("", &e).is_err());
}
