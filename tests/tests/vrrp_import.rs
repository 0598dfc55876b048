//! Seed 003's director pair ("keepalived+lvs实战案例") brought up from `lb-ctl import
//! keepalived` of its own two files: two XDP directors in DR on one segment, VRRP between
//! them as the import wrote it, the seed's TCP_CHECKs, real nginx servers and curl. Root only.
//!
//! The files are the fixtures `lb-ctl/tests/fixtures/keepalived/seed003-{master,backup}.conf`
//! (the tutorial's bytes, its 192.168.59.x addresses already moved to 198.51.100.x). This
//! test moves the three addresses and the interface name (`ens33`) onto the HA lab's by plain
//! substitution and adds notify lines (the seed has none) to record the transitions; every
//! other byte is kept, odd spaces and comments included.
//!
//! Timing is printed, not asserted beyond bounds that cannot flake on a loaded machine.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use lb_tests::ha::{
    BOUND, DIR1_IP, HaLab, import_keepalived as import, seed003_on_lab, wait_for, wait_master,
    wait_state,
};
use lb_tests::{Daemon, TempDir};

/// The seed's file on the lab ([`seed003_on_lab`]), with notify lines that run `script`
/// (keepalived's way: `notify_master`/`notify_backup` as written, `notify` with INSTANCE name
/// state priority appended) inserted after `nopreempt`.
fn seed_on_lab(name: &str, script: &Path) -> String {
    let s = script.display();
    let text = seed003_on_lab(name).replacen(
        "nopreempt\n",
        &format!(
            "nopreempt\n      notify_master \"{s} master\"\n      notify_backup \"{s} backup\"\n      notify {s}\n"
        ),
        1,
    );
    assert!(text.contains("notify "), "no notify line inserted:\n{text}");
    text
}

/// Both real servers are checked by the seed's TCP_CHECK (port 80) and up, each check having
/// run at least once.
fn tcp_checks_run(d: &Daemon, who: &str) {
    let res = wait_for(BOUND, || {
        let h = d.status()["health"]["real_servers"].clone();
        let rss = h.as_array()?;
        let ok = rss.len() == 2
            && rss.iter().all(|r| {
                r["health"] == "up"
                    && r["checkers"] == serde_json::json!(["TCP_CHECK"])
                    && r["checks"][0]["target"]
                        .as_str()
                        .is_some_and(|t| t.ends_with(":80"))
                    && !r["last_check"].is_null()
            });
        ok.then_some(h)
    });
    if res.is_none() {
        panic!(
            "{who}: the seed's TCP_CHECKs did not report both real servers up: {}\n{}",
            d.status()["health"],
            d.log()
        );
    }
}

/// The lines the notify script wrote so far, counted (two commands run per transition,
/// concurrently, so their order within a transition is not fixed).
fn notified(log: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *m.entry(l.to_string()).or_default() += 1;
    }
    m
}

fn counted(lines: &[(&str, usize)]) -> BTreeMap<String, usize> {
    lines.iter().map(|(l, n)| (l.to_string(), *n)).collect()
}

/// Waits until the notify log holds `want` (the commands run detached); panics with what it
/// holds. Then a little longer, to see that nothing more comes (once per transition).
fn wait_notified(log: &Path, want: &[(&str, usize)], d: &Daemon) {
    let want = counted(want);
    if wait_for(BOUND, || (notified(log) == want).then_some(())).is_none() {
        panic!(
            "notify lines in {}: {:?}, want {want:?}\n{}",
            log.display(),
            notified(log),
            d.log()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(notified(log), want, "a notify command ran twice");
}

#[test]
fn seed003_pair_from_the_import_fails_over_and_back_with_keepalived_semantics() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp-import");
    // Notify commands may run as keepalived_script when that user exists: let it in.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut logs = Vec::new();
    let mut confs = Vec::new();
    for (who, file) in [("d1", "seed003-master.conf"), ("d2", "seed003-backup.conf")] {
        let log = dir.join(&format!("{who}-notify.log"));
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let script = dir.join(&format!("{who}-notify.sh"));
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = dir.join(&format!("{who}-keepalived.conf"));
        std::fs::write(&conf, seed_on_lab(file, &script)).unwrap();
        let toml = dir.join(&format!("{who}.toml"));
        let stderr = import(&conf, &toml);
        confs.push((conf, toml, stderr));
        logs.push(log);
    }
    // The master's nopreempt (line 13) is what keepalived ignores with state MASTER; the
    // backup's file imports whole.
    assert_eq!(
        confs[0].2,
        format!(
            "{}:13: warning: nopreempt: keepalived ignores it with state MASTER, and so does lb; \
             left out\n",
            confs[0].0.display()
        )
    );
    assert_eq!(
        confs[1].2, "",
        "the backup's file imports without a warning"
    );
    let t1 = std::fs::read_to_string(&confs[0].1).unwrap();
    let t2 = std::fs::read_to_string(&confs[1].1).unwrap();
    for (t, state, prio) in [(&t1, "MASTER", 200), (&t2, "BACKUP", 100)] {
        for want in [
            format!("state = \"{state}\""),
            format!("priority = {prio}"),
            "virtual_router_id = 62".into(),
            "virtual_ipaddress = [\"192.0.2.100\"]".into(),
            "[[service.real_server.check]]".into(),
        ] {
            assert!(t.contains(&want), "{want:?} not in the import:\n{t}");
        }
    }
    assert!(
        !t1.contains("nopreempt =") && t2.contains("nopreempt = true"),
        "{t1}\n{t2}"
    );

    let mut d1 = Daemon::start(&lab.dir1, &["eth0"], Some(&confs[0].1));
    let d2 = Daemon::start(&lab.dir2, &["eth0"], Some(&confs[1].1));
    let t = wait_state(&d1, "MASTER", &d2);
    eprintln!(
        "the seed's MASTER was MASTER {:.2} s after both daemons answered",
        t.as_secs_f64()
    );
    wait_state(&d2, "BACKUP", &d1);
    assert!(HaLab::has_vip(&lab.dir1), "the MASTER holds the VIP");
    assert!(!HaLab::has_vip(&lab.dir2), "the BACKUP does not");
    // The BACKUP learns the master from its adverts (one a second).
    wait_master(&d2, "VI_1", DIR1_IP);
    lab.curls_ok_when(10, "through the seed's MASTER");
    lab.wait_client_on(&lab.dir1);
    tcp_checks_run(&d1, "MASTER");
    tcp_checks_run(&d2, "BACKUP");
    // keepalived's sequence: a `state MASTER` instance starts as BACKUP and becomes MASTER
    // after one advert interval; the BACKUP enters BACKUP once.
    wait_notified(
        &logs[0],
        &[
            ("backup", 1),
            ("INSTANCE VI_1 BACKUP 200", 1),
            ("master", 1),
            ("INSTANCE VI_1 MASTER 200", 1),
        ],
        &d1,
    );
    wait_notified(
        &logs[1],
        &[("backup", 1), ("INSTANCE VI_1 BACKUP 100", 1)],
        &d2,
    );

    // SIGKILL the MASTER's daemon: the BACKUP takes the VIP by timeout.
    d1.kill();
    let t = wait_state(&d2, "MASTER", &d1);
    eprintln!(
        "takeover after SIGKILL of the seed MASTER's daemon: {:.2} s (3 × advert_int + skew = \
         {:.2} s)",
        t.as_secs_f64(),
        3.0 + (256.0 - 100.0) / 256.0
    );
    assert!(HaLab::has_vip(&lab.dir2));
    lab.wait_client_on(&lab.dir2);
    lab.curls_ok_when(20, "through the BACKUP turned MASTER");
    wait_notified(
        &logs[1],
        &[
            ("backup", 1),
            ("INSTANCE VI_1 BACKUP 100", 1),
            ("master", 1),
            ("INSTANCE VI_1 MASTER 100", 1),
        ],
        &d2,
    );

    // Failback. The seed's master says nopreempt, but with state MASTER keepalived ignores
    // it: the restarted master (priority 200) preempts the BACKUP (100) and takes the VIP
    // back, and the BACKUP's own nopreempt does not stop that (it only keeps a BACKUP from
    // preempting a lower-priority master).
    d1.restart();
    let t = wait_state(&d1, "MASTER", &d2);
    eprintln!(
        "failback: the restarted seed MASTER preempted after {:.2} s (its nopreempt ignored, \
         as keepalived does)",
        t.as_secs_f64()
    );
    wait_state(&d2, "BACKUP", &d1);
    assert!(HaLab::has_vip(&lab.dir1));
    assert!(!HaLab::has_vip(&lab.dir2), "the BACKUP released the VIP");
    wait_master(&d2, "VI_1", DIR1_IP);
    lab.wait_client_on(&lab.dir1);
    lab.curls_ok_when(10, "after failback");
    wait_notified(
        &logs[0],
        &[
            ("backup", 2),
            ("INSTANCE VI_1 BACKUP 200", 2),
            ("master", 2),
            ("INSTANCE VI_1 MASTER 200", 2),
        ],
        &d1,
    );
    wait_notified(
        &logs[1],
        &[
            ("backup", 2),
            ("INSTANCE VI_1 BACKUP 100", 2),
            ("master", 1),
            ("INSTANCE VI_1 MASTER 100", 1),
        ],
        &d2,
    );
}
