//! A director brought up from `lb-ctl import keepalived` of seed 003's master file: the
//! tutorial's DR lab in namespaces, real nginx and curl through the XDP balancer. Root only.
//!
//! The seed's file is the fixture `lb-ctl/tests/fixtures/keepalived/seed003-master.conf`
//! (the tutorial's bytes, its 192.168.59.x addresses already moved to 198.51.100.x). This
//! test moves the three addresses the file names (and its interface, ens33) onto the DR lab's by plain substitution
//! and keeps every other byte, odd spaces and VRRP block included.

use std::path::{Path, PathBuf};
use std::process::Command;

use lb_tests::{Daemon, DrLab, TempDir, curl_from};

const VIP: &str = "192.0.2.100";

fn seed_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lb-ctl/tests/fixtures/keepalived/seed003-master.conf")
}

#[test]
fn a_director_from_seed003s_keepalived_conf_balances_as_the_seed_describes() {
    let lab = DrLab::new(2);
    let dir = TempDir::new("import");

    let seed = std::fs::read_to_string(seed_file()).expect("seed 003 fixture");
    let conf = seed
        .replace("198.51.100.135", VIP)
        .replace("198.51.100.131", &lab.rs_ip(1).to_string())
        .replace("198.51.100.132", &lab.rs_ip(2).to_string())
        .replace("ens33", lab.director_iface());
    assert!(
        !conf.contains("198.51.100."),
        "an address was left out:\n{conf}"
    );
    let conf_path = dir.join("keepalived.conf");
    std::fs::write(&conf_path, &conf).unwrap();

    let toml_path = dir.join("lb.toml");
    let out = Command::new(lb_tests::lb_ctl())
        .args(["import", "keepalived"])
        .arg(&conf_path)
        .arg("-o")
        .arg(&toml_path)
        .output()
        .expect("run lb-ctl import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lb-ctl import failed: {out:?}");
    // Only the master's nopreempt is left out (keepalived ignores it with state MASTER),
    // reported with its line.
    assert_eq!(
        stderr,
        format!(
            "{}:13: warning: nopreempt: keepalived ignores it with state MASTER, and so does lb; left out\n",
            conf_path.display()
        )
    );
    let imported = std::fs::read_to_string(&toml_path).unwrap();
    assert!(
        imported.contains("[[service.real_server.check]]") && imported.contains("type = \"tcp\""),
        "the seed's TCP_CHECKs are imported:\n{imported}"
    );

    // The imported file as it is, checkers and [global] included.
    let d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&toml_path));
    // Alone on the segment, the seed's VRRP instance (state MASTER) starts as BACKUP, which
    // releases the VIP the lab put on eth0, and takes it back as MASTER an interval later.
    let started = std::time::Instant::now();
    loop {
        let st: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["status"])).unwrap();
        if st["vrrp"][0]["state"] == "MASTER" {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the seed's VRRP instance never became MASTER: {}\n{}",
            st["vrrp"],
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The table the seed shows under keepalived (`ipvsadm -Ln`), plus the persistence the
    // seed's file configures.
    let table = d.ctl_ok(&["-Ln"]);
    for want in [
        "TCP  192.0.2.100:80 wrr persistent 50\n",
        "  -> 192.0.2.11:80                Route   1      ",
        "  -> 192.0.2.12:80                Route   1      ",
    ] {
        assert!(table.contains(want), "missing {want:?} in:\n{table}");
    }

    // persistence_timeout 50: each client sticks to one real server; wrr with equal weights
    // sends the next new client to the other one.
    let second = std::net::Ipv4Addr::new(192, 0, 2, 20);
    lab.client()
        .ip(&["addr", "add", &format!("{second}/24"), "dev", "eth0"]);
    let url = format!("http://{VIP}/");
    let from = |src| -> Vec<String> {
        (0..6)
            .map(|i| match curl_from(lab.client(), src, &url) {
                Ok(body) => body.trim().to_string(),
                Err(e) => panic!("request {i} from {src} failed: {e}"),
            })
            .collect()
    };
    let first = from(lab.client_ip());
    let other = from(second);
    assert!(
        first.iter().all(|b| *b == first[0]) && other.iter().all(|b| *b == other[0]),
        "a client changed real server within the persistence timeout: \
         {first:?} from {}, {other:?} from {second}",
        lab.client_ip()
    );
    let mut servers = vec![first[0].clone(), other[0].clone()];
    servers.sort();
    assert_eq!(
        servers,
        ["rs1", "rs2"],
        "two clients should be spread over both real servers: {first:?} / {other:?}\n{}",
        d.ctl_ok(&["-Lnc"])
    );

    // And it checks as the seed describes: TCP_CHECK on port 80 every 3 s (connect_timeout 3,
    // retry 3, delay_before_retry 3). rs1's web server stops → rs1 leaves the table, and both
    // clients, the one whose persistence pointed at rs1 included, are served by rs2.
    let mut lab = lab;
    lab.rs_mut(1).stop_nginx();
    let started = std::time::Instant::now();
    // keepalived's bound: delay_loop + connect_timeout x (retry + 1) + delay_before_retry x
    // retry = 3 + 12 + 9 = 24 s; waiting three times that cannot flake.
    while d.ctl_ok(&["-Ln"]).contains("192.0.2.11:80") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(72),
            "rs1 still in the table long after its web server stopped:\n{}\n{}",
            d.ctl_ok(&["-Ln"]),
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!(
        "rs1 left the table {:?} after its nginx stopped",
        started.elapsed()
    );
    for src in [lab.client_ip(), second] {
        for i in 0..4 {
            let body = curl_from(lab.client(), src, &url)
                .unwrap_or_else(|e| panic!("request {i} from {src} with rs1 down: {e}"));
            assert_eq!(body.trim(), "rs2", "request {i} from {src} with rs1 down");
        }
    }
}
