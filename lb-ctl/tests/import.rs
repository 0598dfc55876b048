//! `lb-ctl import keepalived|ipvsadm`: the tutorials' files (fixtures/, addresses moved into
//! the documentation ranges), malformed files, includes, every checker keyword, and the
//! command line. No root needed.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use lb_ctl::{
    config,
    import::{Outcome, Severity, ipvsadm, keepalived},
    model::{Forward, ServiceKey},
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A directory removed on drop (also when the test panics).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "lb-import-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn value(o: &Outcome) -> toml::Value {
    assert!(!o.has_errors(), "unexpected errors: {:#?}", o.diags);
    toml::from_str(&o.toml)
        .unwrap_or_else(|e| panic!("emitted TOML does not parse: {e}\n{}", o.toml))
}

/// The diagnostics as "LINE: message" for one severity.
fn lines(o: &Outcome, sev: Severity) -> Vec<String> {
    o.diags
        .iter()
        .filter(|d| d.severity == sev)
        .map(|d| format!("{}: {}", d.line, d.message))
        .collect()
}

fn kv(text: &str) -> Outcome {
    keepalived::import_str(text, "test.conf")
}

/// One error at `line` whose message contains `needle`; no TOML.
fn assert_error(o: &Outcome, line: usize, needle: &str) {
    assert!(
        o.toml.is_empty(),
        "TOML produced despite errors:\n{}",
        o.toml
    );
    assert!(
        o.errors()
            .any(|d| d.line == line && d.message.contains(needle)),
        "expected an error at line {line} containing {needle:?}, got {:#?}",
        o.diags
    );
}

/// The emitted file through lb's own config parser.
fn parse_as_config(o: &Outcome, name: &str) -> config::Config {
    // The whole output, checkers and [global] included.
    config::parse(&o.toml, name).unwrap_or_else(|e| panic!("{e}\n{}", o.toml))
}

const SEED003_MASTER_TOML: &str = r#"
[global]
router_id = "LVS_DEVEL"

[[service]]
address = "198.51.100.135"
port = 80
protocol = "tcp"
scheduler = "wrr"
delay_loop = 3
persistence_timeout = 50

  [[service.real_server]]
  address = "198.51.100.131"
  port = 80
  weight = 1
  forward = "dr"
    [[service.real_server.check]]
    type = "tcp"
    connect_timeout = 3
    retry = 3
    delay_before_retry = 3
    connect_port = 80

  [[service.real_server]]
  address = "198.51.100.132"
  port = 80
  weight = 1
  forward = "dr"
    [[service.real_server.check]]
    type = "tcp"
    connect_timeout = 3
    retry = 3
    delay_before_retry = 3
    connect_port = 80

[[vrrp_instance]]
name = "VI_1"
state = "MASTER"
interface = "ens33"
virtual_router_id = 62
priority = 200
advert_int = 1
authentication = { auth_type = "PASS", auth_pass = "1111" }
virtual_ipaddress = ["198.51.100.135"]
"#;

/// keepalived clears nopreempt for state MASTER; the import says so at the line.
const SEED003_MASTER_NOPREEMPT: &str =
    "13: nopreempt: keepalived ignores it with state MASTER, and so does lb; left out";

#[test]
fn seed_fixtures_keep_the_tutorials_odd_spaces() {
    // The point of the whitespace handling: these bytes are in the tutorials' files.
    let s000 = std::fs::read_to_string(fixture("keepalived/seed000.conf")).unwrap();
    let s003 = std::fs::read_to_string(fixture("keepalived/seed003-master.conf")).unwrap();
    let s004 = std::fs::read_to_string(fixture("keepalived/seed004.conf")).unwrap();
    assert!(s000.contains("virtual_server\u{a0}192.0.2.100\u{a0}80\u{a0}{"));
    assert!(s003.contains("retry 3\u{3000}"), "{s003}");
    assert!(s004.contains("router_id\u{a0} LVS_MASTER\u{a0}"), "{s004}");
}

#[test]
fn seed003_master_imports_to_the_expected_toml() {
    let o = keepalived::import(&fixture("keepalived/seed003-master.conf"));
    let want: toml::Value = toml::from_str(SEED003_MASTER_TOML).unwrap();
    assert_eq!(value(&o), want, "{}", o.toml);
    // Only the master's ineffective nopreempt is left out, by name and line.
    assert_eq!(lines(&o, Severity::Warning), [SEED003_MASTER_NOPREEMPT]);
    assert!(o.toml.starts_with(&format!(
        "# Imported by `lb-ctl import keepalived` from {}.\n",
        fixture("keepalived/seed003-master.conf").display()
    )));
}

#[test]
fn seed003_backup_imports_like_the_master() {
    // The backup differs only in its VRRP state and priority, and keeps its nopreempt
    // (keepalived honours it with state BACKUP).
    let master = keepalived::import(&fixture("keepalived/seed003-master.conf"));
    let backup = keepalived::import(&fixture("keepalived/seed003-backup.conf"));
    let mut want = value(&master);
    let vi = want["vrrp_instance"][0].as_table_mut().unwrap();
    vi.insert("state".into(), "BACKUP".into());
    vi.insert("priority".into(), 100.into());
    vi.insert("nopreempt".into(), true.into());
    assert_eq!(value(&backup), want, "{}", backup.toml);
    assert_eq!(lines(&backup, Severity::Warning), Vec::<String>::new());
    // Both are what `lb-ctl check` accepts, with the VRRP semantics keepalived gives them.
    let m = config::parse(&master.toml, "master").unwrap_or_else(|e| panic!("{e}"));
    let b = config::parse(&backup.toml, "backup").unwrap_or_else(|e| panic!("{e}"));
    let (mi, bi) = (&m.vrrp.instances[0], &b.vrrp.instances[0]);
    assert_eq!(
        (mi.initial_master, mi.priority, mi.nopreempt),
        (true, 200, false)
    );
    assert_eq!(
        (bi.initial_master, bi.priority, bi.nopreempt),
        (false, 100, true)
    );
    for i in [mi, bi] {
        assert_eq!(
            (i.vrid, i.adver_int_cs, i.version, i.interface.as_str()),
            (62, 100, 2, "ens33")
        );
        assert_eq!(i.vips[0].to_string(), "198.51.100.135/32 dev ens33");
    }
}

/// `examples/ha-master.toml` and `ha-backup.toml` are seed 003's pair written by hand; the
/// import of the seed's files (on eth0, as the examples) gives the same VRRP configuration.
#[test]
fn seed003_pair_imports_to_the_ha_examples_vrrp() {
    for (seed, example) in [
        ("seed003-master.conf", "ha-master.toml"),
        ("seed003-backup.conf", "ha-backup.toml"),
    ] {
        let text = std::fs::read_to_string(fixture(&format!("keepalived/{seed}")))
            .unwrap()
            .replace("ens33", "eth0");
        let o = keepalived::import_str(&text, seed);
        assert!(!o.has_errors(), "{:#?}", o.diags);
        let imported = config::parse(&o.toml, seed).unwrap_or_else(|e| panic!("{e}"));
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example);
        let by_hand = config::parse(&std::fs::read_to_string(&path).unwrap(), example)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(imported.vrrp, by_hand.vrrp, "{seed} vs {example}");
    }
}

/// The tutorials' one VRRP instance, as imported: VI_1, MASTER on eth0, router 51, priority
/// 100, a 1 s advert, PASS 1111, and the service's address `vip` as its only VIP.
fn assert_tutorial_master_instance(o: &Outcome, v: &toml::Value, vip: &toml::Value) {
    let vi = &v["vrrp_instance"][0];
    assert_eq!(vi["name"].as_str(), Some("VI_1"), "{}", o.toml);
    assert_eq!(vi["state"].as_str(), Some("MASTER"));
    assert_eq!(vi["interface"].as_str(), Some("eth0"));
    assert_eq!(vi["virtual_router_id"].as_integer(), Some(51));
    assert_eq!(vi["priority"].as_integer(), Some(100));
    assert_eq!(vi["advert_int"].as_integer(), Some(1));
    assert_eq!(vi["authentication"]["auth_type"].as_str(), Some("PASS"));
    assert_eq!(vi["authentication"]["auth_pass"].as_str(), Some("1111"));
    assert_eq!(
        vi["virtual_ipaddress"],
        toml::Value::Array(vec![vip.clone()])
    );
}

#[test]
fn seed000_imports_with_no_break_spaces_and_nb_get_retry() {
    let o = keepalived::import(&fixture("keepalived/seed000.conf"));
    let v = value(&o);
    assert_eq!(v.get("global"), None, "{}", o.toml);
    let s = &v["service"][0];
    assert_eq!(s["address"].as_str(), Some("192.0.2.100"));
    assert_eq!(s["scheduler"].as_str(), Some("wlc"));
    assert_eq!(s["delay_loop"].as_integer(), Some(6));
    assert_eq!(s["persistence_timeout"].as_integer(), Some(60));
    let rss = s["real_server"].as_array().unwrap();
    assert_eq!(rss.len(), 2, "{}", o.toml);
    for (rs, addr) in rss.iter().zip(["192.0.2.21", "192.0.2.22"]) {
        assert_eq!(rs["address"].as_str(), Some(addr));
        assert_eq!(rs["weight"].as_integer(), Some(100));
        assert_eq!(rs["forward"].as_str(), Some("dr"));
        let c = &rs["check"][0];
        assert_eq!(c["type"].as_str(), Some("tcp"));
        assert_eq!(c["connect_timeout"].as_integer(), Some(10));
        // The old spelling becomes `retry`.
        assert_eq!(c["retry"].as_integer(), Some(3));
        assert_eq!(c["delay_before_retry"].as_integer(), Some(3));
        assert_eq!(c["connect_port"].as_integer(), Some(80));
    }
    assert_eq!(lines(&o, Severity::Warning), Vec::<String>::new());
    assert_tutorial_master_instance(&o, &v, &s["address"]);
}

#[test]
fn seed004_imports_global_defs_and_mail_settings() {
    let o = keepalived::import(&fixture("keepalived/seed004.conf"));
    let v = value(&o);
    let g = &v["global"];
    assert_eq!(g["router_id"].as_str(), Some("LVS_MASTER"));
    assert_eq!(
        g["notification_email"],
        toml::Value::Array(vec!["dba.gao@gmail.com".into(), "ixdba@163.com".into()])
    );
    assert_eq!(
        g["notification_email_from"].as_str(),
        Some("Keepalived@localhost")
    );
    assert_eq!(g["smtp_server"].as_str(), Some("192.0.2.1"));
    assert_eq!(g["smtp_connect_timeout"].as_integer(), Some(30));
    let s = &v["service"][0];
    assert_eq!(s["scheduler"].as_str(), Some("rr"));
    let rss = s["real_server"].as_array().unwrap();
    assert_eq!(rss[0]["address"].as_str(), Some("203.0.113.246"));
    assert_eq!(rss[0]["weight"].as_integer(), Some(3));
    assert_eq!(rss[1]["address"].as_str(), Some("203.0.113.237"));
    assert_eq!(rss[1]["check"][0]["connect_timeout"].as_integer(), Some(3));
    // No connect_port in the file: the checker's default (the real server's port) applies.
    assert_eq!(rss[0]["check"][0].get("connect_port"), None);
    assert_eq!(lines(&o, Severity::Warning), Vec::<String>::new());
    assert_tutorial_master_instance(&o, &v, &s["address"]);
}

#[test]
fn every_seed_passes_configs_own_parser_for_the_keys_it_knows() {
    let want = [
        (
            "seed000.conf",
            [192, 0, 2, 100],
            [[192, 0, 2, 21], [192, 0, 2, 22]],
            [100, 100],
            60,
        ),
        (
            "seed003-master.conf",
            [198, 51, 100, 135],
            [[198, 51, 100, 131], [198, 51, 100, 132]],
            [1, 1],
            50,
        ),
        (
            "seed003-backup.conf",
            [198, 51, 100, 135],
            [[198, 51, 100, 131], [198, 51, 100, 132]],
            [1, 1],
            50,
        ),
        (
            "seed004.conf",
            [203, 0, 113, 135],
            [[203, 0, 113, 246], [203, 0, 113, 237]],
            [3, 1],
            50,
        ),
    ];
    for (name, vip, rss, weights, persistence) in want {
        let o = keepalived::import(&fixture(&format!("keepalived/{name}")));
        let c = parse_as_config(&o, name);
        assert_eq!(c.model.services.len(), 1, "{name}");
        let e = &c.model.services[&ServiceKey::tcp(vip, 80)];
        assert_eq!(
            e.config.persistence.map(|p| p.timeout),
            Some(persistence),
            "{name}"
        );
        let got: Vec<_> = e
            .dests
            .iter()
            .map(|d| (d.addr, d.port, d.weight, d.forward))
            .collect();
        let want: Vec<_> = rss
            .iter()
            .zip(weights)
            .map(|(a, w)| ((*a).into(), 80, w, Forward::Dr))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn comments_braces_quotes_and_continuations_as_keepalived_reads_them() {
    let o = kv(concat!(
        "! a comment\n",                                                   // 1
        "virtual_server 192.0.2.100 80{lb_algo rr! trailing\n",            // 2: glued braces
        "  lb_kind NAT # a comment\n",                                     // 3
        "  real_server 192.0.2.11 8080\n",                                 // 4: `{` on its own line
        "  {\n",                                                           // 5
        "    weight 2}\n",                                                 // 6
        "  real_server 192.0.2.12 8080 { notify_up \"/bin/up a#b\" }\n",   // 7: quoted #
        "  real_server 192.0.2.13 8080 { notify_down /bin/down \\#1 \\\n", // 8: \# and a continuation
        "      arg2 }\n",                                                  // 9
        "}\n",
    ));
    let v = value(&o);
    let s = &v["service"][0];
    assert_eq!(s["scheduler"].as_str(), Some("rr"), "{}", o.toml);
    let rss = s["real_server"].as_array().unwrap();
    assert_eq!(rss.len(), 3, "{}", o.toml);
    assert_eq!(rss[0]["weight"].as_integer(), Some(2));
    assert_eq!(rss[0]["port"].as_integer(), Some(8080));
    assert_eq!(rss[0]["forward"].as_str(), Some("nat"));
    assert_eq!(rss[1]["notify_up"].as_str(), Some("/bin/up a#b"));
    assert_eq!(rss[2]["notify_down"].as_str(), Some("/bin/down #1 arg2"));
    assert!(o.diags.is_empty(), "{:#?}", o.diags);
}

#[test]
fn unicode_spaces_separate_words_everywhere() {
    let o = kv(
        "virtual_server\u{3000}192.0.2.100\u{a0}80\u{a0}{\n\u{a0}\u{a0}lb_algo\u{3000}sh\u{a0}\u{a0}#\u{a0}c\n}\n",
    );
    assert_eq!(value(&o)["service"][0]["scheduler"].as_str(), Some("sh"));
}

#[test]
fn keepalived_defaults_are_written_out() {
    // No lb_algo, lb_kind or protocol: keepalived's wlc, NAT and TCP, not lb's DR.
    let o = kv("virtual_server 192.0.2.100 80 {\n real_server 192.0.2.11 80 {\n }\n}\n");
    let s = &value(&o)["service"][0];
    assert_eq!(s["scheduler"].as_str(), Some("wlc"));
    assert_eq!(s["protocol"].as_str(), Some("tcp"));
    assert_eq!(s["real_server"][0]["forward"].as_str(), Some("nat"));
    assert_eq!(s["real_server"][0].get("weight"), None);
}

#[test]
fn every_checker_and_service_option() {
    let o = kv(r#"
global_defs {
  notification_email { a@example.org
     b@example.org }
  smtp_server 2001:db8::25 2525
}
virtual_server 192.0.2.100 443 {
  delay_loop 2.5
  lb_algo mh
  mh-port
  lb_kind DR
  protocol UDP
  persistence_granularity 255.255.255.0
  alpha
  quorum 2
  hysteresis 1
  quorum_up "/bin/q up"
  quorum_down /bin/q down
  sorry_server 192.0.2.200 8443
  sorry_server_inhibit
  sorry_server_lvs_method NAT
  retry 4
  connect_timeout 7
  inhibit_on_failure
  real_server 192.0.2.11 443 {
    weight 5
    uthreshold 100
    lthreshold 10
    notify_up /bin/rs up
    delay_before_retry 2
    HTTP_GET {
      url { path /health
            digest 9B3A0C85A887A256D6939DA88AABD8CD
            status_code 200 301-302 }
      url { path /other }
      connect_ip 198.51.100.11
      connect_port 8080
      bindto 192.0.2.2
      bind_port 4000
      nb_get_retry 2
      delay_loop 9
      warmup 1
    }
    SSL_GET { url { path / } }
    MISC_CHECK {
      misc_path "/usr/bin/check -x"
      misc_timeout 4
      misc_dynamic
      user nobody
    }
    TCP_CHECK { connect_timeout 1 }
  }
  real_server 192.0.2.12 443 {
    inhibit_on_failure false
    lvs_method TUN
  }
}
"#);
    let v = value(&o);
    assert!(o.diags.is_empty(), "{:#?}", o.diags);
    assert_eq!(
        v["global"]["notification_email"],
        toml::Value::Array(vec!["a@example.org".into(), "b@example.org".into()])
    );
    assert_eq!(
        v["global"]["smtp_server"].as_str(),
        Some("[2001:db8::25]:2525")
    );
    let s = &v["service"][0];
    assert_eq!(s["delay_loop"].as_float(), Some(2.5));
    assert_eq!(s["scheduler"].as_str(), Some("mh"));
    assert_eq!(s["sched_flags"], toml::Value::Array(vec!["mh-port".into()]));
    assert_eq!(s["protocol"].as_str(), Some("udp"));
    // Granularity alone turns persistence on with keepalived's 360 s.
    assert_eq!(s["persistence_timeout"].as_integer(), Some(360));
    assert_eq!(s["persistence_netmask"].as_str(), Some("255.255.255.0"));
    assert_eq!(s["alpha"].as_bool(), Some(true));
    assert_eq!(s["quorum"].as_integer(), Some(2));
    assert_eq!(s["hysteresis"].as_integer(), Some(1));
    assert_eq!(s["quorum_up"].as_str(), Some("/bin/q up"));
    assert_eq!(s["quorum_down"].as_str(), Some("/bin/q down"));
    assert_eq!(s["sorry_server"].as_str(), Some("192.0.2.200:8443"));
    assert_eq!(s["sorry_server_inhibit"].as_bool(), Some(true));
    assert_eq!(s["sorry_server_forward"].as_str(), Some("nat"));
    let rs = &s["real_server"][0];
    assert_eq!(rs["weight"].as_integer(), Some(5));
    assert_eq!(rs["upper_threshold"].as_integer(), Some(100));
    assert_eq!(rs["lower_threshold"].as_integer(), Some(10));
    assert_eq!(rs["notify_up"].as_str(), Some("/bin/rs up"));
    assert_eq!(
        rs["inhibit_on_failure"].as_bool(),
        Some(true),
        "from the virtual server"
    );
    assert_eq!(rs["forward"].as_str(), Some("dr"));
    let checks = rs["check"].as_array().unwrap();
    let types: Vec<_> = checks.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["http", "ssl", "misc", "tcp"]);
    let http = &checks[0];
    assert_eq!(http["connect_ip"].as_str(), Some("198.51.100.11"));
    assert_eq!(http["connect_port"].as_integer(), Some(8080));
    assert_eq!(http["bindto"].as_str(), Some("192.0.2.2"));
    assert_eq!(http["bind_port"].as_integer(), Some(4000));
    assert_eq!(
        http["retry"].as_integer(),
        Some(2),
        "its own, not the virtual server's"
    );
    assert_eq!(http["delay_loop"].as_integer(), Some(9));
    assert_eq!(http["warmup"].as_integer(), Some(1));
    assert_eq!(
        http["connect_timeout"].as_integer(),
        Some(7),
        "from the virtual server"
    );
    assert_eq!(
        http["delay_before_retry"].as_integer(),
        Some(2),
        "from the real server"
    );
    let url = &http["url"][0];
    assert_eq!(url["path"].as_str(), Some("/health"));
    assert_eq!(
        url["digest"].as_str(),
        Some("9b3a0c85a887a256d6939da88aabd8cd")
    );
    assert_eq!(
        url["status_code"],
        toml::Value::Array(vec![200.into(), 301.into(), 302.into()])
    );
    assert_eq!(http["url"][1].get("status_code"), None);
    assert_eq!(checks[1]["url"][0]["path"].as_str(), Some("/"));
    assert_eq!(checks[1]["retry"].as_integer(), Some(4));
    let misc = &checks[2];
    assert_eq!(misc["misc_path"].as_str(), Some("/usr/bin/check -x"));
    assert_eq!(misc["misc_timeout"].as_integer(), Some(4));
    assert_eq!(misc["misc_dynamic"].as_bool(), Some(true));
    assert_eq!(misc["user"].as_str(), Some("nobody"));
    assert_eq!(
        misc.get("connect_timeout"),
        None,
        "MISC_CHECK does not connect"
    );
    assert_eq!(checks[3]["connect_timeout"].as_integer(), Some(1));
    let rs2 = &s["real_server"][1];
    assert_eq!(rs2["inhibit_on_failure"].as_bool(), Some(false));
    assert_eq!(rs2["forward"].as_str(), Some("tun"));
    assert_eq!(rs2.get("check"), None);
    // What config.rs knows today (sched_flags, persistence_netmask, thresholds, UDP, mixed
    // forwarding) it accepts as imported.
    let c = parse_as_config(&o, "t");
    let e = c.model.services.values().next().unwrap();
    assert_eq!(
        e.config
            .persistence
            .map(|p| p.netmask.to_string())
            .as_deref(),
        Some("255.255.255.0")
    );
    assert_eq!(e.dests[0].u_threshold, 100);
    assert_eq!(e.dests[1].forward, Forward::Tun);
}

#[test]
fn unsupported_and_unknown_keywords_are_reported_by_name_and_line() {
    let o = kv(concat!(
        "global_defs {\n",                             // 1
        "  router_id r1\n",                            // 2
        "  lvs_sync_daemon eth0 VI_1\n",               // 3
        "  vrrp_strict\n",                             // 4
        "  enable_script_security\n",                  // 5
        "}\n",                                         // 6
        "vrrp_script chk { script /bin/true }\n",      // 7
        "vrrp_track_process p { process x }\n",        // 8
        "virtual_server fwmark 1 { lb_algo rr }\n",    // 9
        "virtual_server group web { lb_algo rr }\n",   // 10
        "virtual_server 192.0.2.100 80 {\n",           // 11
        "  lb_algo rr\n",                              // 12
        "  ha_suspend\n",                              // 13
        "  lb_algoo rr\n",                             // 14
        "  real_server 192.0.2.11 80 {\n",             // 15
        "    SMTP_CHECK { }\n",                        // 16
        "    HTTP_GET { virtualhost x\n",              // 17
        "      url { path /\n",                        // 18
        "        regex ok } }\n",                      // 19
        "    colour blue\n",                           // 20
        "  }\n",                                       // 21
        "}\n",                                         // 22
        "$DEF=1\n",                                    // 23
        "virtual_server_group web { 192.0.2.1 80 }\n", // 24
    ));
    assert!(!o.has_errors(), "{:#?}", o.diags);
    let w = lines(&o, Severity::Warning);
    let expect = [
        "3: lvs_sync_daemon: no vrrp_instance VI_1, left out (as keepalived does)",
        "4: vrrp_strict in global_defs: not supported by lb, left out",
        "5: enable_script_security in global_defs: not supported by lb, left out",
        "8: vrrp_track_process p block in keepalived.conf: not supported by lb, left out",
        "9: virtual_server fwmark 1: firewall-mark and group virtual servers are not supported, left out",
        "10: virtual_server group web: firewall-mark and group virtual servers are not supported, left out",
        "13: ha_suspend in virtual_server: not supported by lb, left out",
        "14: unknown keyword \"lb_algoo\" in virtual_server, left out",
        "16: SMTP_CHECK: checker not supported by lb, left out (real server 192.0.2.11 is checked by its other checkers only, or always up)",
        "17: virtualhost x in HTTP_GET: not supported by lb, left out",
        "19: regex ok in url: not supported by lb, left out",
        "20: unknown keyword \"colour\" in real_server, left out",
        "23: \"$DEF=1\": keepalived's parameter substitution and conditional lines are not supported; line ignored",
        "24: virtual_server_group web block in keepalived.conf: not supported by lb, left out",
    ];
    assert_eq!(w, expect);
    // Each is also a comment at the top of the TOML.
    assert!(
        o.toml
            .contains("#   test.conf:14: unknown keyword \"lb_algoo\""),
        "{}",
        o.toml
    );
    assert_eq!(value(&o)["service"].as_array().unwrap().len(), 1);
}

/// keepalived's IPv6 virtual and real servers (and IPv6 checkers, sorry server and
/// persistence prefix) become an IPv6 service `lb-ctl check` accepts.
#[test]
fn ipv6_virtual_and_real_servers_import() {
    let o = kv("virtual_server 2001:db8::100 80 {\n\
         lb_algo rr\n\
         lb_kind NAT\n\
         ip_family inet6\n\
         persistence_timeout 60\n\
         persistence_granularity 64\n\
         sorry_server 2001:db8::200 8080\n\
         real_server 2001:db8::11 8080 {\n\
           TCP_CHECK {\n\
             connect_ip 2001:db8::11\n\
             connect_timeout 3\n\
           }\n\
         }\n\
         real_server 2001:db8::12 8080 {\n\
         }\n\
         }\n");
    let c = parse_as_config(&o, "v6.toml");
    let vip: std::net::IpAddr = "2001:db8::100".parse().unwrap();
    let e = &c.model.services[&ServiceKey::tcp(vip, 80)];
    assert_eq!(
        e.dests
            .iter()
            .map(|d| (d.addr.to_string(), d.port, d.forward))
            .collect::<Vec<_>>(),
        [
            ("2001:db8::11".to_string(), 8080, Forward::Nat),
            ("2001:db8::12".to_string(), 8080, Forward::Nat)
        ]
    );
    assert_eq!(
        e.config.persistence.map(|p| p.netmask),
        Some(lb_ctl::model::Netmask::V6(64))
    );
    let h = &c.health[&ServiceKey::tcp(vip, 80)];
    assert_eq!(
        h.sorry.map(|s| (s.addr, s.port)),
        Some(("2001:db8::200".parse().unwrap(), 8080))
    );
    assert_eq!(
        h.real_servers[0].checks[0].target,
        "[2001:db8::11]:8080".parse().unwrap()
    );
    // A real server of the other family: IPVS's refusal, at the file's line.
    let o = kv("virtual_server 2001:db8::100 80 {\n real_server 192.0.2.11 80 {\n }\n}\n");
    assert!(o.has_errors(), "{:#?}\n{}", o.diags, o.toml);
    assert!(
        o.errors().any(|d| d
            .message
            .contains("Operation not supported with specified address family")),
        "{:#?}",
        o.diags
    );
}

/// `lb-ctl import ipvsadm` of a `-S` file with IPv6 services, as ipvsadm saves them.
#[test]
fn ipvsadm_save_of_ipv6_services_imports() {
    let saved = "-A -t [2001:db8::100]:80 -s rr -p 60 -M 64\n\
                 -a -t [2001:db8::100]:80 -r [2001:db8::11]:8080 -m -w 1\n\
                 -A -u 2001:db8::100 -s wlc -p\n\
                 -a -u [2001:db8::100]:0 -r 2001:db8::12 -g -w 2\n";
    let o = ipvsadm::import_str(saved, "rules");
    let c = parse_as_config(&o, "rules.toml");
    let vip: std::net::IpAddr = "2001:db8::100".parse().unwrap();
    let web = &c.model.services[&ServiceKey::tcp(vip, 80)];
    assert_eq!(
        web.config.persistence.map(|p| p.netmask),
        Some(lb_ctl::model::Netmask::V6(64))
    );
    assert_eq!(
        web.dests[0].addr,
        "2001:db8::11".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(web.dests[0].port, 8080);
    assert_eq!(c.model.services.len(), 2);
    // A bad prefix names its line.
    let o = ipvsadm::import_str(
        "-A -t [2001:db8::100]:80 -s rr\n-E -t [2001:db8::100]:80 -p -M 0\n",
        "rules",
    );
    assert!(
        o.errors()
            .any(|d| d.line == 2 && d.message.contains("illegal ipv6 netmask specified")),
        "{:#?}",
        o.diags
    );
}

#[test]
fn malformed_files_fail_with_the_line() {
    // A block never closed: the line that opened it.
    assert_error(
        &kv("virtual_server 192.0.2.100 80 {\n  lb_algo rr\n  real_server 192.0.2.11 80 {\n}\n"),
        1,
        "never closed",
    );
    assert_error(&kv("global_defs {\n}\n}\n"), 3, "extra '}'");
    assert_error(&kv("\n{\n lb_algo rr\n}\n"), 2, "'{' without a keyword");
    assert_error(
        &kv("virtual_server 192.0.2.300 80 {\n}\n"),
        1,
        "invalid IPv4 address \"192.0.2.300\"",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n real_server 192.0.2.1x 80 { }\n}\n"),
        2,
        "invalid IPv4 address \"192.0.2.1x\"",
    );
    assert_error(
        &kv("virtual_server 2001:db8::1::2 80 {\n}\n"),
        1,
        "invalid IPv6 address \"2001:db8::1::2\"",
    );
    assert_error(
        &kv("virtual_server 2001:db8::1 80 {\n persistence_granularity 255.255.255.0\n}\n"),
        2,
        "invalid IPv6 prefix length \"255.255.255.0\"",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80000 {\n}\n"),
        1,
        "invalid port \"80000\"",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n real_server 192.0.2.2 80 {\n  weight 7x\n }\n}\n"),
        3,
        "weight: invalid number \"7x\"",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n real_server 192.0.2.2 80 {\n  weight 65536\n }\n}\n"),
        3,
        "weight: invalid number \"65536\" (an integer in 0..=65535)",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n delay_loop soon\n}\n"),
        2,
        "delay_loop: invalid time \"soon\"",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n lb_algo fastest\n}\n"),
        2,
        "unknown scheduler 'fastest'",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n lb_kind FAST\n}\n"),
        2,
        "unknown method \"FAST\"",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n protocol SCTP\n}\n"),
        2,
        "TCP and UDP only",
    );
    assert_error(
        &kv("global_defs {\n router_id \"unterminated\n}\n"),
        2,
        "unterminated quote",
    );
    assert_error(
        &kv(
            "virtual_server 192.0.2.1 80 {\n real_server 192.0.2.2 80 {\n  HTTP_GET {\n   connect_timeout 3\n  }\n }\n}\n",
        ),
        3,
        "HTTP_GET needs at least one url",
    );
    assert_error(
        &kv(
            "virtual_server 192.0.2.1 80 {\n real_server 192.0.2.2 80 {\n  MISC_CHECK { misc_timeout 3 }\n }\n}\n",
        ),
        3,
        "MISC_CHECK needs misc_path",
    );
    assert_error(
        &kv(
            "virtual_server 192.0.2.1 80 {\n real_server 192.0.2.2 80 {\n  HTTP_GET { url { path / \n digest 12 } }\n }\n}\n",
        ),
        4,
        "not an MD5 sum",
    );
    assert_error(&kv("virtual_server 192.0.2.1 80\n"), 1, "needs a { } block");
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n}\n\nvirtual_server 192.0.2.1 80 {\n}\n"),
        4,
        "duplicate virtual_server 192.0.2.1 80 tcp (first at test.conf:1)",
    );
    // The same address and port over UDP is another service.
    assert!(
        !kv("virtual_server 192.0.2.1 80 {\n}\nvirtual_server 192.0.2.1 80 {\n protocol UDP\n}\n")
            .has_errors()
    );
    assert_error(
        &kv(
            "virtual_server 192.0.2.1 80 {\n real_server 192.0.2.2 80 { }\n real_server 192.0.2.2 { }\n}\n",
        ),
        3,
        "duplicate real_server 192.0.2.2 80 (first at line 2)",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n lb_kind DR\n real_server 192.0.2.2 8080 { }\n}\n"),
        3,
        "real server port 8080 differs from the virtual server's 80: only NAT can map ports",
    );
    // What lb (and ipvsadm) refuse, at the keepalived line that says it.
    assert_error(
        &kv(
            "virtual_server 192.0.2.1 80 {\n real_server 192.0.2.2 80 { }\n real_server 192.0.2.3 80 {\n  uthreshold 10\n  lthreshold 20\n }\n}\n",
        ),
        3,
        "lb refuses this: lower threshold 20 above upper threshold 10",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n ops\n}\n"),
        1,
        "lb refuses this: One-Packet Scheduling is only for UDP virtual services",
    );
    assert_error(
        &kv("virtual_server 192.0.2.1 80 {\n lb_algo rr\n sh-port\n}\n"),
        1,
        "lb refuses this: scheduler flag \"sh-port\" is only for scheduler sh, not rr",
    );
    // Several errors are all reported, each with its line.
    let o = kv("virtual_server 192.0.2.1 80 {\n delay_loop x\n lb_algo y\n}\n");
    assert_eq!(o.errors().map(|d| d.line).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn includes_follow_globs_relative_to_the_including_file() {
    let dir = Scratch::new();
    let main = dir.write(
        "etc/keepalived.conf",
        "global_defs {\n router_id main\n}\ninclude conf.d/*.conf\ninclude more/extra.conf\n",
    );
    dir.write(
        "etc/conf.d/b.conf",
        "virtual_server 192.0.2.101 80 {\n  lb_algo rr\n}\n",
    );
    dir.write(
        "etc/conf.d/a.conf",
        "virtual_server 192.0.2.100 80 {\n  lb_algo wrr\n}\n",
    );
    dir.write(
        "etc/conf.d/ignored.txt",
        "this is not keepalived syntax {\n",
    );
    // Relative to this file's own directory, not the main file's.
    dir.write("etc/more/extra.conf", "include ../extra2.cfg\n");
    dir.write(
        "etc/extra2.cfg",
        "virtual_server 192.0.2.102 80 {\n  lb_algo sh\n  bogus 1\n}\n",
    );
    let o = keepalived::import(&main);
    let v = value(&o);
    let addrs: Vec<_> = v["service"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    // Glob matches in name order, as glob(3) returns them.
    assert_eq!(addrs, ["192.0.2.100", "192.0.2.101", "192.0.2.102"]);
    // A problem in an included file names that file and its line.
    let w: Vec<String> = o.warnings().map(|d| d.to_string()).collect();
    assert_eq!(
        w,
        [format!(
            "{}:3: warning: unknown keyword \"bogus\" in virtual_server, left out",
            dir.0.join("etc/more/../extra2.cfg").display()
        )]
    );

    // Nothing matches: an error at the include line (keepalived would go on without it,
    // and the import would silently lose its services).
    let lonely = dir.write("lonely.conf", "\ninclude nothing/*.conf\n");
    let o = keepalived::import(&lonely);
    assert_error(&o, 2, "no file matches");

    // An include loop stops with an error instead of recursing forever.
    let looped = dir.write("loop.conf", "include loop.conf\n");
    let o = keepalived::import(&looped);
    assert!(
        o.errors().any(|d| d.message.contains("an include loop")),
        "{:#?}",
        o.diags
    );
}

#[test]
fn a_vrrp_only_file_gives_its_instance_and_no_service() {
    let o = kv(concat!(
        "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 7\n state MASTER\n",
        " virtual_ipaddress {\n 192.0.2.100\n }\n}\n"
    ));
    let v = value(&o);
    assert_eq!(v.get("service"), None);
    assert_eq!(
        v["vrrp_instance"][0]["virtual_router_id"].as_integer(),
        Some(7)
    );
    assert!(lines(&o, Severity::Warning).is_empty(), "{:#?}", o.diags);
    let c = config::parse(&o.toml, "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.vrrp.instances[0].vips[0].to_string(),
        "192.0.2.100/32 dev eth0"
    );
    // keepalived needs an interface to send adverts on, and so does lb: the error is at the
    // block's line, with config.rs's message.
    let o = kv("vrrp_instance VI_1 {\n state MASTER\n virtual_ipaddress {\n 192.0.2.100\n }\n}\n");
    assert_error(&o, 1, "interface");
}

/// Every keyword of the three VRRP blocks and global_defs' VRRP defaults, carried over as
/// config.rs reads them.
#[test]
fn vrrp_blocks_map_keyword_for_keyword() {
    let o = kv(concat!(
        "global_defs {\n",                                                       // 1
        "  vrrp_version 3\n",                                                    // 2
        "  vrrp_garp_master_delay 2\n",                                          // 3
        "  vrrp_garp_master_repeat 3\n",                                         // 4
        "}\n",                                                                   // 5
        "vrrp_instance VI_1 {\n",                                                // 6
        "  state BACKUP\n",                                                      // 7
        "  interface eth0\n",                                                    // 8
        "  virtual_router_id 51\n",                                              // 9
        "  priority 150\n",                                                      // 10
        "  advert_int 0.5\n",                                                    // 11
        "  nopreempt\n",                                                         // 12
        "  preempt_delay 30\n",                                                  // 13
        "  virtual_ipaddress {\n",                                               // 14
        "    192.0.2.100/24 dev eth0 label eth0:1\n",                            // 15
        "    192.0.2.101 brd 192.0.2.255 scope global\n",                        // 16
        "  }\n",                                                                 // 17
        "  mcast_src_ip 192.0.2.2\n",                                            // 18
        "  unicast_peer {\n    192.0.2.3\n    192.0.2.4\n  }\n",                 // 19-22
        "  track_interface {\n    eth1\n    eth2 weight -10\n  }\n",             // 23-26
        "  track_script {\n    chk_web\n  }\n",                                  // 27-29
        "  notify_master \"/etc/lb/n.sh master\"\n",                             // 30
        "  notify_backup /etc/lb/n.sh backup\n",                                 // 31
        "  notify_fault /etc/lb/fault.sh\n",                                     // 32
        "  notify /etc/lb/any.sh\n",                                             // 33
        "  use_vmac\n",                                                          // 34
        "  accept\n",                                                            // 35
        "  strict_mode\n",                                                       // 36
        "  track_file {\n    f1\n  }\n",                                         // 37-39
        "  virtual_routes {\n    0.0.0.0/0 via 192.0.2.1\n  }\n",                // 40-42
        "  mystery 1\n",                                                         // 43
        "}\n",                                                                   // 44
        "vrrp_instance VI_2 {\n",                                                // 45
        "  interface eth1\n  virtual_router_id 52\n  version 2\n",               // 46-48
        "  garp_master_repeat 9\n",                                              // 49
        "  authentication {\n    auth_type PASS\n    auth_pass secret99\n  }\n", // 50-53
        "  virtual_ipaddress {\n    203.0.113.9\n  }\n",                         // 54-56
        "}\n",                                                                   // 57
        "vrrp_script chk_web {\n",                                               // 58
        "  script \"curl -sf http://127.0.0.1/\"\n",                             // 59
        "  interval 2\n  timeout 3\n  weight -20\n  fall 2\n  rise 4\n",         // 60-64
        "  user nobody\n",                                                       // 65
        "}\n",                                                                   // 66
        "vrrp_sync_group VG_1 {\n",                                              // 67
        "  group {\n    VI_1\n    VI_2\n  }\n",                                  // 68-71
        "  notify_master /etc/lb/g.sh\n",                                        // 72
        "  notify /etc/lb/gany.sh\n",                                            // 73
        "  global_tracking\n",                                                   // 74
        "}\n",                                                                   // 75
    ));
    let v = value(&o);
    assert_eq!(
        lines(&o, Severity::Warning),
        [
            "16: virtual_ipaddress 192.0.2.101: \"brd 192.0.2.255 scope global\" not supported by lb, left out (the address is added as \"192.0.2.101\")",
            "25: track_interface eth2: \"weight -10\" not supported by lb, left out",
            "34: use_vmac in vrrp_instance: not supported by lb, left out",
            "35: accept in vrrp_instance: not supported by lb, left out",
            "36: strict_mode in vrrp_instance: not supported by lb, left out",
            "37: track_file block in vrrp_instance: not supported by lb, left out",
            "40: virtual_routes block in vrrp_instance: not supported by lb, left out",
            "43: unknown keyword \"mystery\" in vrrp_instance, left out",
            "65: user nobody in vrrp_script: not supported by lb, left out",
            "74: global_tracking in vrrp_sync_group: not supported by lb, left out",
        ]
    );
    let want: toml::Value = toml::from_str(
        r#"
[[vrrp_script]]
name = "chk_web"
script = "curl -sf http://127.0.0.1/"
interval = 2
timeout = 3
weight = -20
fall = 2
rise = 4

[[vrrp_instance]]
name = "VI_1"
state = "BACKUP"
interface = "eth0"
virtual_router_id = 51
priority = 150
advert_int = 0.5
nopreempt = true
preempt_delay = 30
virtual_ipaddress = ["192.0.2.100/24 dev eth0 label eth0:1", "192.0.2.101"]
unicast_src_ip = "192.0.2.2"
unicast_peer = ["192.0.2.3", "192.0.2.4"]
track_interface = ["eth1", "eth2"]
track_script = ["chk_web"]
notify_master = "/etc/lb/n.sh master"
notify_backup = "/etc/lb/n.sh backup"
notify_fault = "/etc/lb/fault.sh"
notify = "/etc/lb/any.sh"
version = 3
garp_master_delay = 2
garp_master_repeat = 3

[[vrrp_instance]]
name = "VI_2"
interface = "eth1"
virtual_router_id = 52
version = 2
garp_master_repeat = 9
authentication = { auth_type = "PASS", auth_pass = "secret99" }
virtual_ipaddress = ["203.0.113.9"]
garp_master_delay = 2

[[vrrp_sync_group]]
name = "VG_1"
group = ["VI_1", "VI_2"]
notify_master = "/etc/lb/g.sh"
notify = "/etc/lb/gany.sh"
"#,
    )
    .unwrap();
    assert_eq!(v, want, "{}", o.toml);
    // And config.rs reads it as keepalived would run it.
    let c = config::parse(&o.toml, "t").unwrap_or_else(|e| panic!("{e}\n{}", o.toml));
    let (i1, i2) = (&c.vrrp.instances[0], &c.vrrp.instances[1]);
    assert_eq!((i1.version, i1.adver_int_cs, i1.nopreempt), (3, 50, true));
    assert_eq!(i1.preempt_delay, std::time::Duration::from_secs(30));
    assert_eq!(i1.vips[1].to_string(), "192.0.2.101/32 dev eth0");
    assert_eq!(i1.unicast_src_ip, Some("192.0.2.2".parse().unwrap()));
    assert_eq!((i2.version, i2.garp_master_repeat), (2, 9));
    assert_eq!(c.vrrp.sync_groups[0].group, ["VI_1", "VI_2"]);
    assert_eq!(c.vrrp.scripts[0].weight, -20);
}

/// What lb cannot run is an error at the keepalived line (no TOML), whether the import sees
/// it itself or config.rs refuses the block.
#[test]
fn bad_vrrp_blocks_are_errors_at_their_lines() {
    let inst = |body: &str| {
        format!(
            "vrrp_instance VI_1 {{\n interface eth0\n virtual_router_id 51\n{body}\n              virtual_ipaddress {{\n 192.0.2.100\n }}\n}}\n"
        )
    };
    for (body, line, needle) in [
        (
            " state master",
            4,
            "state \"master\": expected MASTER or BACKUP",
        ),
        (" priority 256", 4, "priority: invalid number \"256\""),
        (" version 4", 4, "version: invalid number \"4\""),
        (
            " authentication {\n auth_type AH\n auth_pass x\n }",
            5,
            "auth_type AH (IPsec) is not supported by lb",
        ),
        // config.rs's rules, at the block's line.
        (
            " advert_int 1.5",
            1,
            "advert_int 1.5 must be whole seconds 1..255 with VRRPv2",
        ),
        (
            " track_script {\n nope\n }",
            1,
            "no vrrp_script named \"nope\"",
        ),
        (
            " version 3\n authentication {\n auth_type PASS\n auth_pass x\n }",
            1,
            "authentication is VRRPv2 only",
        ),
    ] {
        assert_error(&kv(&inst(body)), line, needle);
    }
    // A bad address line is reported at its own line.
    let o = kv(&inst("").replace("192.0.2.100", "192.0.2.300/24"));
    assert_error(&o, 6, "invalid IPv4 address \"192.0.2.300\"");
    let o = kv(&inst("").replace("192.0.2.100", "2001:db8::1"));
    assert_error(&o, 6, "IPv6 addresses are not supported");
    // The second instance on the same interface and vrid: at its own line.
    let two = format!("{}{}", inst(""), inst("").replace("VI_1", "VI_2"));
    assert_error(
        &kv(&two),
        9,
        "virtual_router_id 51 on eth0 is already used by vrrp_instance \"VI_1\"",
    );
    // A sync group naming an instance that is not there.
    let g = format!(
        "{}vrrp_sync_group G {{\n group {{\n VI_9\n }}\n}}\n",
        inst("")
    );
    assert_error(&kv(&g), 9, "no vrrp_instance named \"VI_9\"");
    // global_defs is checked by config.rs keyword by keyword too.
    assert_error(
        &kv("global_defs {\n router_id r\n notification_email {\n lb_algo rr\n }\n}\n"),
        3,
        "lb refuses this: invalid e-mail address \"lb_algo\"",
    );
    // A vrrp_script without its script.
    assert_error(
        &kv("vrrp_script s {\n interval 2\n}\n"),
        1,
        "vrrp_script needs a script",
    );
}

#[test]
fn ipvsadm_seed001_rules_become_services() {
    let o = ipvsadm::import(&fixture("ipvsadm/seed001.rules"));
    let v = value(&o);
    assert!(o.diags.is_empty(), "{:#?}", o.diags);
    let want: toml::Value = toml::from_str(
        r#"
[[service]]
address = "203.0.113.213"
port = 80
protocol = "tcp"
scheduler = "rr"
  [[service.real_server]]
  address = "203.0.113.216"
  port = 80
  weight = 1
  forward = "dr"
  [[service.real_server]]
  address = "203.0.113.217"
  port = 80
  weight = 1
  forward = "dr"
"#,
    )
    .unwrap();
    assert_eq!(v, want);
    // The full output is a valid config as it is: ipvsadm has no health-check keys.
    let c = config::parse(&o.toml, "seed001").unwrap_or_else(|e| panic!("{e}\n{}", o.toml));
    assert_eq!(c.model.services.len(), 1);
}

#[test]
fn ipvsadm_save_output_round_trips_through_the_config() {
    // What `lb-ctl -S` / ipvsadm-save print, every option the config has.
    let saved = "\
-A -t 192.0.2.100:80 -s sh -b sh-port,sh-fallback -p 120 -M 255.255.255.0
-a -t 192.0.2.100:80 -r 192.0.2.11:80 -g -w 3 -x 100 -y 10
-a -t 192.0.2.100:80 -r 192.0.2.12:80 -i -w 1
-A -u 192.0.2.53:53 -s rr -o
-a -u 192.0.2.53:53 -r 192.0.2.21:5353 -m -w 0
-A -t 192.0.2.200:443 -s wlc -b flag-3
-a -t 192.0.2.200:443 -r 192.0.2.31:443 -g -w 1
-D -t 192.0.2.200:443
";
    let o = ipvsadm::import_str(saved, "rules");
    assert!(o.diags.is_empty(), "{:#?}", o.diags);
    let c = config::parse(&o.toml, "rules").unwrap_or_else(|e| panic!("{e}\n{}", o.toml));
    let direct = lb_ctl::cli::parse_restore(saved).unwrap();
    let mut model = lb_ctl::model::Model::default();
    model.apply_all(&direct).unwrap();
    assert_eq!(c.model, model, "{}", o.toml);
    // File order, not sorted order.
    let v = value(&o);
    let addrs: Vec<_> = v["service"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, ["192.0.2.100", "192.0.2.53"]);
}

#[test]
fn ipvsadm_errors_name_the_line() {
    let o = ipvsadm::import_str(
        "# saved\n-A -t 192.0.2.100:80 -s rr\n-a -t 192.0.2.100:80 -r 192.0.2.11:80 -w 70000\n-A -t 192.0.2.100:80 -s rr\n-L -n\n",
        "rules",
    );
    assert!(o.toml.is_empty());
    let e: Vec<String> = o.errors().map(|d| d.to_string()).collect();
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].starts_with("rules:3: error: "), "{e:#?}");
    assert!(e[1].starts_with("rules:4: error: "), "{e:#?}");
    assert!(
        e[2].starts_with("rules:5: error: only table edits"),
        "{e:#?}"
    );
}

fn lb_ctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lb-ctl"))
        .args(args)
        // No daemon is involved; keep the test away from a real one's socket all the same.
        .env("LB_SOCKET", "/nonexistent/lb.sock")
        .output()
        .expect("run lb-ctl")
}

#[test]
fn the_import_command() {
    let seed = fixture("keepalived/seed003-master.conf");
    let seed = seed.to_str().unwrap();
    let out = lb_ctl(&["import", "keepalived", seed]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let want = keepalived::import(Path::new(seed)).toml;
    assert_eq!(stdout, want);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        format!(
            "{seed}:13: warning: nopreempt: keepalived ignores it with state MASTER, and so does lb; left out\n"
        )
    );

    // -o FILE
    let dir = Scratch::new();
    let dest = dir.0.join("lb.toml");
    let out = lb_ctl(&["import", "keepalived", seed, "-o", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), want);

    // An error: non-zero, nothing on stdout, the output file untouched.
    let bad = dir.write(
        "bad.conf",
        "virtual_server 192.0.2.1 80 {\n lb_algo nope\n}\n",
    );
    let out = lb_ctl(&[
        "import",
        "keepalived",
        bad.to_str().unwrap(),
        "-o",
        dest.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "{}:2: error: lb_algo: unknown scheduler 'nope'",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("not imported (1 error)"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), want);

    // A missing file.
    let out = lb_ctl(&["import", "ipvsadm", "/nonexistent/ipvsadm"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/ipvsadm: error: cannot read the file"),
        "{out:?}"
    );

    let rules = fixture("ipvsadm/seed001.rules");
    let out = lb_ctl(&["import", "ipvsadm", rules.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("address = \"203.0.113.216\""));
}

/// Garbage in: 3,000 mutations of the tutorials' files (random bytes, braces, quotes,
/// comment marks, odd spaces, backslashes, lines cut, duplicated or swapped). The import
/// never panics; it gives either errors with a line inside the file and no TOML, or TOML
/// that parses. `LB_FUZZ_SEED` replays a run.
#[test]
fn mutated_keepalived_files_never_panic_and_errors_have_lines() {
    let seed = common::fuzz_seed();
    eprintln!("import fuzz: seed {seed:#x} (LB_FUZZ_SEED={seed:#x} replays)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let seeds: Vec<String> = [
        "seed000.conf",
        "seed003-master.conf",
        "seed003-backup.conf",
        "seed004.conf",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(fixture(&format!("keepalived/{f}"))).unwrap())
    .collect();
    const PIECES: [&str; 20] = [
        "{",
        "}",
        "\"",
        "#",
        "!",
        "\\",
        "\u{a0}",
        "\u{3000}",
        "\n",
        " ",
        "real_server 192.0.2.9 80 {",
        "TCP_CHECK {",
        "HTTP_GET { url { path / } }",
        "weight 99999999999999999999",
        "include *",
        "virtual_server",
        "state BACKUP",
        "virtual_router_id 0",
        "track_script { chk }",
        "virtual_ipaddress { 192.0.2.1/33 dev x label y }",
    ];
    for case in 0..3000 {
        let mut text = seeds[rng.usize(..seeds.len())].clone();
        for _ in 0..rng.usize(1..4) {
            let mut at = rng.usize(..=text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            match rng.u8(..4) {
                0 => text.insert_str(at, PIECES[rng.usize(..PIECES.len())]),
                1 => {
                    let mut end = (at + rng.usize(..40)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(at..end, "");
                }
                2 => text.insert(at, char::from_u32(rng.u32(..0x3100)).unwrap_or('x')),
                _ => {
                    let lines: Vec<&str> = text.lines().collect();
                    let i = rng.usize(..lines.len());
                    let mut l: Vec<&str> = lines.clone();
                    l.insert(rng.usize(..=l.len()), lines[i]);
                    text = l.join("\n");
                }
            }
        }
        // A name that no include pattern of the mutations ("include *") can reach.
        let name = "/nonexistent-dir/keepalived.conf";
        let o = std::panic::catch_unwind(|| keepalived::import_str(&text, name))
            .unwrap_or_else(|_| panic!("case {case} (seed {seed:#x}) panicked on:\n{text}"));
        let n_lines = text.lines().count().max(1);
        for d in &o.diags {
            assert!(
                d.file == name && (1..=n_lines).contains(&d.line),
                "case {case} (seed {seed:#x}): diagnostic without a line in the file: {d}\n{text}"
            );
        }
        if o.has_errors() {
            assert!(o.toml.is_empty(), "case {case}: TOML despite errors");
        } else if let Err(e) = toml::from_str::<toml::Value>(&o.toml) {
            panic!(
                "case {case} (seed {seed:#x}): invalid TOML: {e}\n{}\nfrom:\n{text}",
                o.toml
            );
        }
    }
}
