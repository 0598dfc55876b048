//! High availability end to end: two lb-ctl directors (real XDP balancers, DR) sharing a VIP
//! by VRRP on one bridged segment, real nginx servers and curl; keepalived as the peer in
//! either role; forged adverts from a third host. Root only.
//!
//! Timing is printed, not asserted beyond bounds that cannot flake on a loaded machine.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use lb_tests::ha::{
    BOUND, DIR1_IP, DIR2_IP, DirectorOpts as Opts, HaLab, Keepalived, PEER_IP, VIP,
    director_config as config, exchange, instance, start, vrrp_state as state, vrrp_status as vrrp,
    wait_for, wait_master, wait_state,
};
use lb_tests::{Daemon, Netns, TempDir};

fn opts<'a>(state: &'a str, priority: u8, nopreempt: bool, scheduler: &'a str) -> Opts<'a> {
    Opts {
        state,
        priority,
        nopreempt,
        scheduler,
        ..Opts::default()
    }
}

#[test]
fn master_sigkill_backup_takes_over_and_master_preempts_back() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    let c1 = config(&dir, "d1.toml", &opts("MASTER", 150, false, "mh"));
    let c2 = config(&dir, "d2.toml", &opts("BACKUP", 100, false, "mh"));
    let (mut d1, d2) = lab.start_pair(&c1, &c2);
    assert!(HaLab::has_vip(&lab.dir1), "the MASTER holds the VIP");
    assert!(
        !HaLab::has_vip(&lab.dir2),
        "the BACKUP does not hold the VIP"
    );
    // The BACKUP learns the master from its adverts (one per second).
    let b = wait_master(&d2, "VI_1", DIR1_IP);
    assert!(b["counters"]["adverts_received"].as_u64() > Some(0), "{b}");
    lab.curls_ok(10);
    assert_eq!(lab.client_vip_mac(), lab.dir1.mac("eth0"));

    // 20 long-lived connections (mh) through the MASTER.
    let mut conns = lab.open(20);

    d1.kill();
    let t = wait_state(&d2, "MASTER", &d1);
    eprintln!(
        "takeover after SIGKILL of the MASTER's daemon: {:.2} s (3 × advert_int + skew = {:.2} s)",
        t.as_secs_f64(),
        3.0 + (256.0 - 100.0) / 256.0
    );
    assert!(HaLab::has_vip(&lab.dir2));
    // The gratuitous ARPs moved the client to the new MASTER.
    lab.wait_client_on(&lab.dir2);
    lab.curls_ok(20);
    let survived = exchange(&mut conns);
    eprintln!(
        "long-lived mh connections that kept working across the takeover (no connection sync \
         yet): {survived} of 20"
    );

    // Failback: the restarted daemon (priority 150, preempt) takes the VIP back.
    d1.restart();
    let t = wait_state(&d1, "MASTER", &d2);
    eprintln!(
        "failback (preempt) after the daemon's restart: {:.2} s",
        t.as_secs_f64()
    );
    wait_state(&d2, "BACKUP", &d1);
    assert!(HaLab::has_vip(&lab.dir1));
    assert!(
        !HaLab::has_vip(&lab.dir2),
        "the old BACKUP released the VIP"
    );
    lab.wait_client_on(&lab.dir1);
    lab.curls_ok(10);
}

#[test]
fn link_down_faults_the_master_nopreempt_keeps_the_new_one_sigterm_hands_over() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    let c1 = config(&dir, "d1.toml", &opts("BACKUP", 150, true, "wrr"));
    let c2 = config(&dir, "d2.toml", &opts("BACKUP", 100, true, "wrr"));
    let d1 = start(&lab.dir1, &c1);
    // Alone on the segment, dir1 becomes MASTER after its master-down interval.
    let mut d2 = start(&lab.dir2, &c2);
    wait_state(&d1, "MASTER", &d2);
    wait_state(&d2, "BACKUP", &d1);
    lab.curls_ok(5);

    // Cut dir1's link (the switch port): dir1 sees no carrier → FAULT; dir2 takes over.
    lab.switch.ip(&["link", "set", "dev", "dir1", "down"]);
    let t = wait_state(&d2, "MASTER", &d1);
    eprintln!(
        "takeover after the MASTER's link went down: {:.2} s (3 × advert_int + skew = {:.2} s)",
        t.as_secs_f64(),
        3.0 + (256.0 - 100.0) / 256.0
    );
    wait_state(&d1, "FAULT", &d2);
    assert!(!HaLab::has_vip(&lab.dir1), "FAULT releases the VIP");
    let s1 = vrrp(&d1);
    assert!(
        s1["fault_reasons"]
            .to_string()
            .contains("interface eth0 down"),
        "{s1}"
    );
    lab.curls_ok(10);

    // Link back: dir1 returns as BACKUP and, nopreempt, leaves dir2 MASTER though its
    // priority is higher. Several master-down intervals pass.
    lab.switch.ip(&["link", "set", "dev", "dir1", "up"]);
    wait_state(&d1, "BACKUP", &d2);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(state(&d1), "BACKUP", "nopreempt: {}", vrrp(&d1));
    assert_eq!(state(&d2), "MASTER");
    assert_eq!(vrrp(&d1)["master"], DIR2_IP.to_string());
    assert!(!HaLab::has_vip(&lab.dir1));
    lab.curls_ok(5);

    // SIGTERM on the MASTER: priority 0, VIP removed, dir1 takes over after its skew.
    let before = vrrp(&d1)["counters"]["priority_zero_received"]
        .as_u64()
        .unwrap();
    d2.stop();
    let t = wait_state(&d1, "MASTER", &d2);
    eprintln!(
        "takeover after SIGTERM (priority 0): {:.2} s",
        t.as_secs_f64()
    );
    assert!(
        !HaLab::has_vip(&lab.dir2),
        "a daemon stopped by SIGTERM removes its VIPs"
    );
    let after = vrrp(&d1)["counters"]["priority_zero_received"]
        .as_u64()
        .unwrap();
    assert!(after > before, "priority-0 advert counted: {}", vrrp(&d1));
    lab.curls_ok(5);
}

fn keepalived_conf(state: &str, priority: u8) -> String {
    format!(
        "global_defs {{\n  router_id peer\n}}\n\
         vrrp_instance VI_1 {{\n  state {state}\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int 1\n  authentication {{\n    auth_type PASS\n    \
         auth_pass 1111\n  }}\n  virtual_ipaddress {{\n    192.0.2.100/32 dev eth0 label eth0:0\n  }}\n}}\n"
    )
}

#[test]
fn keepalived_as_backup_and_as_master() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");

    // Ours MASTER (150), keepalived BACKUP (100).
    let c1 = config(&dir, "d1.toml", &opts("MASTER", 150, false, "wrr"));
    let mut d1 = start(&lab.dir1, &c1);
    let mut ka = Keepalived::start(&lab.peer, &keepalived_conf("BACKUP", 100));
    wait_for(BOUND, || (state(&d1) == "MASTER").then_some(()))
        .unwrap_or_else(|| panic!("{}\n{}", d1.log(), ka.log()));
    // keepalived has started and settled as BACKUP (on a loaded machine its start can come
    // after ours has become MASTER).
    wait_for(BOUND * 3, || {
        ka.log().contains("Entering BACKUP STATE").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "keepalived never entered BACKUP:\n{}\n{}",
            ka.log(),
            d1.log()
        )
    });
    // keepalived hears us: it never takes the VIP while we advertise.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !HaLab::has_vip(&lab.peer),
        "keepalived took the VIP:\n{}",
        ka.log()
    );
    // And it found nothing wrong in our adverts (its words for each check it makes).
    let log = ka.log();
    assert!(log.contains("Entering BACKUP STATE"), "{log}");
    for complaint in ["nvalid", "mismatch", "expected", "too short", "too long"] {
        assert!(!log.contains(complaint), "keepalived: {complaint}:\n{log}");
    }
    assert!(HaLab::has_vip(&lab.dir1));
    let s = vrrp(&d1);
    assert!(
        s["counters"]["errors"]
            .as_object()
            .is_none_or(|e| e.is_empty()),
        "{s}"
    );
    lab.curls_ok(5);

    // Failover to keepalived: our daemon stops (priority 0).
    d1.stop();
    wait_for(BOUND, || HaLab::has_vip(&lab.peer).then_some(()))
        .unwrap_or_else(|| panic!("keepalived did not take over:\n{}", ka.log()));
    assert!(!HaLab::has_vip(&lab.dir1));

    // Failback: ours preempts keepalived (higher priority), keepalived releases the VIP.
    d1.restart();
    let t = wait_state(&d1, "MASTER", &d1);
    eprintln!("ours preempted keepalived in {:.2} s", t.as_secs_f64());
    wait_for(BOUND, || (!HaLab::has_vip(&lab.peer)).then_some(()))
        .unwrap_or_else(|| panic!("keepalived kept the VIP:\n{}", ka.log()));
    lab.curls_ok(5);
    d1.stop();
    ka.kill();
    drop(ka);
    lab.peer
        .ip(&["addr", "flush", "dev", "eth0", "label", "eth0:0"]);

    // keepalived MASTER (150), ours BACKUP (100).
    let c2 = config(&dir, "d2.toml", &opts("BACKUP", 100, false, "wrr"));
    let mut ka = Keepalived::start(&lab.peer, &keepalived_conf("MASTER", 150));
    wait_for(BOUND, || HaLab::has_vip(&lab.peer).then_some(()))
        .unwrap_or_else(|| panic!("keepalived never became master:\n{}", ka.log()));
    let d2 = start(&lab.dir2, &c2);
    let (_, ()) = wait_for(BOUND, || {
        let s = vrrp(&d2);
        (s["state"] == "BACKUP" && s["master"] == PEER_IP.to_string()).then_some(())
    })
    .unwrap_or_else(|| panic!("{}\n{}", vrrp(&d2), d2.log()));
    assert!(!HaLab::has_vip(&lab.dir2));
    // keepalived's adverts pass every check.
    let s = vrrp(&d2);
    assert!(
        s["counters"]["errors"]
            .as_object()
            .is_none_or(|e| e.is_empty()),
        "{s}"
    );
    assert_eq!(s["master_priority"], 150, "{s}");

    // keepalived dies (SIGKILL): we take over by timeout.
    ka.kill();
    let t = wait_state(&d2, "MASTER", &d2);
    eprintln!(
        "ours took over from a SIGKILLed keepalived in {:.2} s",
        t.as_secs_f64()
    );
    assert!(HaLab::has_vip(&lab.dir2));
    // keepalived's VIP stays on the dead peer (as ours would); the client follows the GARPs.
    lab.wait_client_on(&lab.dir2);
    lab.curls_ok(5);

    // Failback: keepalived returns and preempts us.
    lab.peer
        .ip(&["addr", "flush", "dev", "eth0", "label", "eth0:0"]);
    ka.restart();
    wait_state(&d2, "BACKUP", &d2);
    assert!(
        !HaLab::has_vip(&lab.dir2),
        "we released the VIP to keepalived"
    );
    wait_for(BOUND, || HaLab::has_vip(&lab.peer).then_some(()))
        .unwrap_or_else(|| panic!("keepalived did not take the VIP back:\n{}", ka.log()));
}

/// An advert as a whole IPv4 packet (the kernel fills in the IP checksum).
fn forged(vrid: u8, priority: u8, pass: &[u8; 8], ttl: u8, break_csum: bool) -> Vec<u8> {
    let mut v = vec![0x21, vrid, priority, 1, 1, 1, 0, 0];
    v.extend_from_slice(&VIP.octets());
    v.extend_from_slice(pass);
    let mut sum: u32 = v
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    if break_csum {
        c ^= 0x0101;
    }
    v[6..8].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, 112, 0, 0];
    p[2..4].copy_from_slice(&((20 + v.len()) as u16).to_be_bytes());
    p.extend_from_slice(&PEER_IP.octets());
    p.extend_from_slice(&[224, 0, 0, 18]);
    p.extend_from_slice(&v);
    p
}

/// Sends raw IPv4 packets to 224.0.0.18 from the peer host.
fn inject(ns: &Netns, packets: &[Vec<u8>]) {
    ns.enter(|| {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            // No multicast route on the test hosts: say which interface.
            let dev = b"eth0\0";
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as u32,
            );
            assert_eq!(
                rc,
                0,
                "SO_BINDTODEVICE: {}",
                std::io::Error::last_os_error()
            );
            let mut dst: libc::sockaddr_in = std::mem::zeroed();
            dst.sin_family = libc::AF_INET as u16;
            dst.sin_addr.s_addr = u32::from(Ipv4Addr::new(224, 0, 0, 18)).to_be();
            for p in packets {
                let n = libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                assert!(n >= 0, "sendto: {}", std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
    });
}

#[test]
fn forged_adverts_are_counted_and_change_nothing() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    let c1 = config(&dir, "d1.toml", &opts("MASTER", 150, false, "wrr"));
    let c2 = config(&dir, "d2.toml", &opts("BACKUP", 100, false, "wrr"));
    let (d1, d2) = lab.start_pair(&c1, &c2);
    let (t1, t2) = (
        vrrp(&d1)["transitions"].clone(),
        vrrp(&d2)["transitions"].clone(),
    );

    // Priority 254 from a third host: each would make both directors yield if accepted.
    // And priority 0 with a bad password: accepted, it would make the BACKUP take over.
    let good = *b"1111\0\0\0\0";
    let bad = *b"2222\0\0\0\0";
    let mut truncated = forged(51, 254, &good, 255, false);
    truncated.truncate(30);
    truncated[2..4].copy_from_slice(&30u16.to_be_bytes());
    let mut packets = Vec::new();
    for _ in 0..5 {
        packets.push(forged(51, 254, &bad, 255, false));
        packets.push(forged(51, 0, &bad, 255, false));
        packets.push(forged(51, 254, &good, 255, true));
        packets.push(forged(51, 254, &good, 64, false));
        packets.push(truncated.clone());
    }
    inject(&lab.peer, &packets);
    // Several advert intervals: a wrongly accepted advert would have shown by then.
    std::thread::sleep(Duration::from_secs(5));
    for (d, want, t) in [(&d1, "MASTER", &t1), (&d2, "BACKUP", &t2)] {
        let s = vrrp(d);
        assert_eq!(s["state"], want, "{s}");
        assert_eq!(&s["transitions"], t, "{s}");
        let e = &s["counters"]["errors"];
        for (kind, n) in [
            ("bad_auth", 10),
            ("bad_checksum", 5),
            ("bad_ttl", 5),
            ("malformed", 5),
        ] {
            assert_eq!(e[kind], n, "{kind}: {s}");
        }
    }
    assert_eq!(vrrp(&d2)["master"], DIR1_IP.to_string());
    assert!(HaLab::has_vip(&lab.dir1) && !HaLab::has_vip(&lab.dir2));
    lab.curls_ok(5);
}

#[test]
fn director_vips_without_vrrp_are_added_and_removed_but_not_others() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    // 192.0.2.101 is there before the daemon: it must stay after it.
    lab.dir1
        .ip(&["addr", "add", "192.0.2.101/32", "dev", "eth0"]);
    let cfg = dir.join("lb.toml");
    std::fs::write(
        &cfg,
        r#"
[director]
vips = ["192.0.2.100/32 dev eth0 label eth0:0", "192.0.2.101/32 dev eth0"]

[[service]]
address = "192.0.2.100"
port = 80
scheduler = "rr"
  [[service.real_server]]
  address = "192.0.2.11"
  [[service.real_server]]
  address = "192.0.2.12"
"#,
    )
    .unwrap();
    let mut d = start(&lab.dir1, &cfg);
    assert!(HaLab::has_vip(&lab.dir1), "{}", d.log());
    let shown = lab.dir1.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains("eth0:0"), "the label is kept: {shown}");
    lab.curls_ok(4);
    d.stop();
    let shown = lab.dir1.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(!HaLab::has_vip(&lab.dir1), "removed at stop: {shown}");
    assert!(
        shown.contains("192.0.2.101/32"),
        "not ours, left alone: {shown}"
    );
}

/// A config with `instances` (TOML text) after the web service.
fn config_text(dir: &TempDir, name: &str, instances: &str) -> PathBuf {
    let text = format!(
        r#"
[[service]]
address = "192.0.2.100"
port = 80
scheduler = "rr"
  [[service.real_server]]
  address = "192.0.2.11"
  [[service.real_server]]
  address = "192.0.2.12"
{instances}
"#
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn wait_instance(d: &Daemon, name: &str, want: &str) -> Duration {
    match wait_for(BOUND, || (instance(d, name)["state"] == want).then_some(())) {
        Some((t, ())) => t,
        None => panic!(
            "{name} not {want} within {BOUND:?}: {}\n{}",
            instance(d, name),
            d.log()
        ),
    }
}

fn has(ns: &Netns, addr: &str) -> bool {
    ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
        .contains(&format!("inet {addr}/32"))
}

#[test]
fn v3_unicast_pair_follows_a_weighted_track_script() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    let flag = dir.join("degraded");
    let block = |prio: u8, me: Ipv4Addr, peer: Ipv4Addr, script: &str| {
        format!(
            r#"
[[vrrp_script]]
name = "chk"
script = "{script}"
interval = 1
weight = -60

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 61
priority = {prio}
version = 3
advert_int = 0.5
virtual_ipaddress = ["192.0.2.100/32"]
unicast_src_ip = "{me}"
unicast_peer = ["{peer}"]
track_script = ["chk"]
"#
        )
    };
    let c1 = config_text(
        &dir,
        "d1.toml",
        &block(
            150,
            DIR1_IP,
            DIR2_IP,
            &format!("test ! -e {}", flag.display()),
        ),
    );
    let c2 = config_text(&dir, "d2.toml", &block(100, DIR2_IP, DIR1_IP, "true"));
    let d1 = start(&lab.dir1, &c1);
    let d2 = start(&lab.dir2, &c2);
    wait_instance(&d1, "VI_1", "MASTER");
    wait_instance(&d2, "VI_1", "BACKUP");
    let s = wait_master(&d2, "VI_1", DIR1_IP);
    assert_eq!(s["version"], 3, "{s}");
    assert!(
        s["counters"]["errors"]
            .as_object()
            .is_none_or(|e| e.is_empty()),
        "{s}"
    );
    lab.curls_ok(5);

    // The script fails: 150 - 60 = 90 < 100, the peer preempts.
    std::fs::write(&flag, "").unwrap();
    let t = wait_instance(&d2, "VI_1", "MASTER");
    eprintln!(
        "v3 (advert_int 0.5 s) takeover after the MASTER's weighted script failed: {:.2} s",
        t.as_secs_f64()
    );
    wait_instance(&d1, "VI_1", "BACKUP");
    assert_eq!(instance(&d1, "VI_1")["effective_priority"], 90);
    assert!(HaLab::has_vip(&lab.dir2) && !HaLab::has_vip(&lab.dir1));
    lab.curls_ok(5);

    // It recovers: 150 again, dir1 takes the VIP back.
    std::fs::remove_file(&flag).unwrap();
    wait_instance(&d1, "VI_1", "MASTER");
    wait_instance(&d2, "VI_1", "BACKUP");
    assert!(HaLab::has_vip(&lab.dir1) && !HaLab::has_vip(&lab.dir2));
    lab.curls_ok(5);
}

#[test]
fn sync_group_members_fault_and_move_together() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    let flag = dir.join("broken");
    let block = |prio: u8, script: &str| {
        format!(
            r#"
[[vrrp_script]]
name = "chk_backend"
script = "{script}"
interval = 1

[[vrrp_instance]]
name = "VI_WEB"
interface = "eth0"
virtual_router_id = 71
priority = {prio}
virtual_ipaddress = ["192.0.2.100/32"]

[[vrrp_instance]]
name = "VI_DB"
interface = "eth0"
virtual_router_id = 72
priority = {prio}
virtual_ipaddress = ["192.0.2.101/32"]
track_script = ["chk_backend"]

[[vrrp_sync_group]]
name = "VG"
group = ["VI_WEB", "VI_DB"]
"#
        )
    };
    let c1 = config_text(
        &dir,
        "d1.toml",
        &block(150, &format!("test ! -e {}", flag.display())),
    );
    let c2 = config_text(&dir, "d2.toml", &block(100, "true"));
    let d1 = start(&lab.dir1, &c1);
    let d2 = start(&lab.dir2, &c2);
    for name in ["VI_WEB", "VI_DB"] {
        wait_instance(&d1, name, "MASTER");
        wait_instance(&d2, name, "BACKUP");
    }
    assert!(has(&lab.dir1, "192.0.2.100") && has(&lab.dir1, "192.0.2.101"));

    // VI_DB's weight-0 script fails: VI_DB goes to FAULT, and VI_WEB with it.
    std::fs::write(&flag, "").unwrap();
    for name in ["VI_WEB", "VI_DB"] {
        wait_instance(&d1, name, "FAULT");
        wait_instance(&d2, name, "MASTER");
    }
    let web = instance(&d1, "VI_WEB");
    assert!(
        web["fault_reasons"]
            .to_string()
            .contains("sync group member VI_DB in fault"),
        "{web}"
    );
    assert!(!has(&lab.dir1, "192.0.2.100") && !has(&lab.dir1, "192.0.2.101"));
    assert!(has(&lab.dir2, "192.0.2.100") && has(&lab.dir2, "192.0.2.101"));
    lab.curls_ok(5);

    // Fixed: both come back to BACKUP and, with the higher priority, take over together.
    std::fs::remove_file(&flag).unwrap();
    for name in ["VI_WEB", "VI_DB"] {
        wait_instance(&d1, name, "MASTER");
        wait_instance(&d2, name, "BACKUP");
    }
    assert!(has(&lab.dir1, "192.0.2.100") && has(&lab.dir1, "192.0.2.101"));
    assert!(!has(&lab.dir2, "192.0.2.100") && !has(&lab.dir2, "192.0.2.101"));
    lab.curls_ok(5);
}

#[test]
fn keepalived_v3_unicast_peer_accepts_ours_and_we_accept_its() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    let c1 = config_text(
        &dir,
        "d1.toml",
        &format!(
            r#"
[[vrrp_instance]]
name = "VI_1"
state = "MASTER"
interface = "eth0"
virtual_router_id = 81
priority = 150
version = 3
advert_int = 1
virtual_ipaddress = ["192.0.2.100/32"]
unicast_src_ip = "{DIR1_IP}"
unicast_peer = ["{PEER_IP}"]
"#
        ),
    );
    let ka_conf = format!(
        "global_defs {{\n  router_id peer\n  vrrp_version 3\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 81\n  \
         priority 100\n  advert_int 1\n  unicast_src_ip {PEER_IP}\n  unicast_peer {{\n    \
         {DIR1_IP}\n  }}\n  virtual_ipaddress {{\n    192.0.2.100/32 dev eth0\n  }}\n}}\n"
    );
    let mut d1 = start(&lab.dir1, &c1);
    let ka = Keepalived::start(&lab.peer, &ka_conf);
    wait_for(BOUND, || (state(&d1) == "MASTER").then_some(()))
        .unwrap_or_else(|| panic!("{}\n{}", d1.log(), ka.log()));
    std::thread::sleep(Duration::from_secs(5));
    let log = ka.log();
    assert!(
        !HaLab::has_vip(&lab.peer),
        "keepalived took the VIP:\n{log}"
    );
    assert!(log.contains("Entering BACKUP STATE"), "{log}");
    for complaint in ["nvalid", "mismatch", "expected", "too short", "too long"] {
        assert!(!log.contains(complaint), "keepalived: {complaint}:\n{log}");
    }

    // keepalived takes over when we leave, and its v3 unicast adverts pass our checks.
    d1.stop();
    wait_for(BOUND, || HaLab::has_vip(&lab.peer).then_some(()))
        .unwrap_or_else(|| panic!("keepalived did not take over:\n{}", ka.log()));
    d1.restart();
    wait_state(&d1, "MASTER", &d1);
    let s = vrrp(&d1);
    assert!(s["counters"]["adverts_received"].as_u64() > Some(0), "{s}");
    assert!(
        s["counters"]["errors"]
            .as_object()
            .is_none_or(|e| e.is_empty()),
        "{s}"
    );
    wait_for(BOUND, || (!HaLab::has_vip(&lab.peer)).then_some(()))
        .unwrap_or_else(|| panic!("keepalived kept the VIP:\n{}", ka.log()));
    lab.curls_ok(5);
}

#[test]
fn an_instance_that_cannot_run_stops_the_daemon_before_it_touches_anything() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    // v0 exists but has no IPv4 address to advertise from.
    lab.dir1
        .ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    lab.dir1.ip(&["link", "set", "dev", "v0", "up"]);
    let cfg = config_text(
        &dir,
        "bad.toml",
        r#"
[director]
vips = ["192.0.2.150/32 dev eth0"]

[[vrrp_instance]]
name = "VI_X"
interface = "v0"
virtual_router_id = 9
virtual_ipaddress = ["192.0.2.100/32"]
"#,
    );
    let pin = lb_tests::pin_root().join(format!("never-{}", lb_tests::next_id()));
    let out = lab
        .dir1
        .nsenter(lb_tests::lb_ctl())
        .args(["daemon", "-i", "eth0", "--config"])
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--pin-path")
        .arg(&pin)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let exists = pin.exists();
    if exists {
        let _ = std::fs::remove_dir_all(&pin);
    }
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("vrrp_instance VI_X: v0 has no IPv4 address to send adverts from"),
        "{err}"
    );
    assert!(
        !exists,
        "the daemon made its pin dir before refusing: {err}"
    );
    let shown = lab.dir1.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(!shown.contains("192.0.2.150"), "a vip was added: {shown}");
    let xdp = lab.dir1.ip(&["link", "show", "dev", "eth0"]);
    assert!(!xdp.contains("xdp"), "an XDP program was attached: {xdp}");
}

#[test]
fn a_tracked_interface_going_down_faults_the_instance_and_its_return_restores_it() {
    let lab = HaLab::new();
    let dir = TempDir::new("vrrp");
    // t0 stands for a second NIC (the real servers' side, say): its carrier follows t1.
    lab.dir1
        .ip(&["link", "add", "t0", "type", "veth", "peer", "name", "t1"]);
    lab.dir1.ip(&["link", "set", "dev", "t0", "up"]);
    lab.dir1.ip(&["link", "set", "dev", "t1", "up"]);
    let cfg = config_text(
        &dir,
        "d1.toml",
        r#"
[[vrrp_instance]]
name = "VI_1"
state = "MASTER"
interface = "eth0"
virtual_router_id = 91
priority = 150
virtual_ipaddress = ["192.0.2.100/32"]
track_interface = ["t0"]
"#,
    );
    let d1 = start(&lab.dir1, &cfg);
    wait_state(&d1, "MASTER", &d1);
    lab.curls_ok(3);
    lab.dir1.ip(&["link", "set", "dev", "t1", "down"]);
    wait_state(&d1, "FAULT", &d1);
    let s = vrrp(&d1);
    assert!(
        s["fault_reasons"].to_string().contains("interface t0 down"),
        "{s}"
    );
    assert!(!HaLab::has_vip(&lab.dir1), "FAULT releases the VIP");
    assert!(
        s["counters"]["priority_zero_sent"].as_u64() > Some(0),
        "a MASTER going to FAULT hands over with priority 0: {s}"
    );
    lab.dir1.ip(&["link", "set", "dev", "t1", "up"]);
    wait_state(&d1, "MASTER", &d1);
    assert!(HaLab::has_vip(&lab.dir1));
    lab.curls_ok(3);
}
