//! The daemon as the one owner of a data path: a second daemon refuses without touching it,
//! `--set` survives adoption, and a daemon killed in the middle of a large sync leaves a data
//! path the next one reads back exactly, without leaking ids. Real daemons in network
//! namespaces, real traffic. Root only.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use lb_common::{Backend, Settings, SvcSlot, maps, size};
use lb_ctl::{
    api::{self, Request, Response},
    model::{DestConfig, Forward, Op, Scheduler, ServiceConfig, ServiceKey},
};
use lb_tests::{Daemon, DaemonOpts, DrLab, KeepAlive, TempDir, cmd::output};

const VIP_URL: &str = "http://192.0.2.100/";

/// `n` sequential curls from the client to the VIP; the bodies, in order.
fn curls(lab: &DrLab, n: usize) -> Vec<String> {
    lab.curls(VIP_URL, n)
}

fn rr_service(d: &Daemon) {
    d.ctl_ok(&["-A", "-t", "192.0.2.100:80", "-s", "rr"]);
    for rs in ["192.0.2.11:80", "192.0.2.12:80"] {
        d.ctl_ok(&["-a", "-t", "192.0.2.100:80", "-r", rs, "-g", "-w", "1"]);
    }
}

fn array<V: aya::Pod>(pin: &Path, name: &str) -> Array<MapData, V> {
    let path = pin.join("maps").join(name);
    let data = MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening pinned map {}: {e}", path.display()));
    Array::try_from(Map::Array(data)).unwrap_or_else(|e| panic!("{name} as an array: {e}"))
}

/// `LB_SETTINGS` without the clock (which the daemon advances all the time) and the route
/// epoch (bumped whenever the daemon sees routes or neighbours change, a restart included).
fn settings_but_clock(pin: &Path) -> Settings {
    let mut s = array::<Settings>(pin, maps::SETTINGS)
        .get(&0, 0)
        .expect("reading LB_SETTINGS");
    s.clock_ns = 0;
    s.route_epoch = 0;
    s
}

fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{}", lb_tests::cmd::report(cmd, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a second daemon could damage: the program attached to the director's interface, the
/// pinned links and program, the tail-call programs, the timeouts and settings, the table.
#[derive(Debug, PartialEq)]
struct Owned {
    xdp_prog_id: u64,
    links: BTreeSet<String>,
    pinned_prog: u64,
    tail_calls: String,
    timeouts_map: String,
    timeouts: String,
    settings: Settings,
    table: String,
}

fn owned(lab: &DrLab, d: &Daemon) -> Owned {
    let link = lab
        .director()
        .ip(&["-j", "link", "show", "dev", lab.director_iface()]);
    let v: serde_json::Value = serde_json::from_str(&link).expect("ip -j link");
    let xdp_prog_id = v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no XDP program on the director's interface: {link}"));
    let pin = d.pin_path();
    let links = std::fs::read_dir(pin.join("links"))
        .expect("the pinned links")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let prog = run(Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(pin.join("prog_lb_xdp")));
    let pinned_prog = serde_json::from_str::<serde_json::Value>(&prog).expect("bpftool -j")["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id in {prog}"));
    let dump = |name: &str| {
        run(Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(pin.join("maps").join(name)))
    };
    Owned {
        xdp_prog_id,
        links,
        pinned_prog,
        tail_calls: dump(maps::PROGS),
        timeouts_map: dump(maps::TIMEOUTS),
        timeouts: d.ctl_ok(&["-L", "--timeout"]),
        settings: settings_but_clock(pin),
        table: d.ctl_ok(&["-Sn"]),
    }
}

#[test]
fn a_second_daemon_refuses_in_one_line_and_changes_nothing() {
    let lab = DrLab::new(2);
    let a = Daemon::start(lab.director(), &[lab.director_iface()], None);
    rr_service(&a);
    a.ctl_ok(&["--set", "100", "50", "30"]);
    let before_bodies = curls(&lab, 4);
    // A connection that lives across both attempts.
    let mut kept = KeepAlive::connect(lab.client(), lab.vip_addr(80)).expect("connecting");
    let first = kept
        .request()
        .expect("first request on the kept connection");
    let before = owned(&lab, &a);
    let pid = a.pid().expect("daemon A runs");
    let other = TempDir::new("second");
    let other_socket = other.join("other.sock");
    // Same socket and pin dir; then another socket, and another interface (the old code
    // attached there, and detached A's interface, before it gave up).
    for (socket, ifaces) in [
        (a.socket(), vec![lab.director_iface()]),
        (other_socket.as_path(), vec![lab.director_iface()]),
        (other_socket.as_path(), vec!["lo"]),
    ] {
        let (status, out) = a.run_second(socket, &ifaces);
        let want = format!(
            "lb-ctl: another lb-ctl daemon (pid {pid}) owns {}",
            a.pin_path().display()
        );
        assert!(
            !status.success() && out.lines().count() == 1 && out.starts_with(&want),
            "a second daemon ({} {ifaces:?}) must refuse in one line starting {want:?}; \
             it exited {status} with:\n{out}",
            socket.display()
        );
        assert!(
            !other_socket.exists(),
            "the second daemon left a socket at {}",
            other_socket.display()
        );
        let now = owned(&lab, &a);
        assert_eq!(
            now,
            before,
            "the second daemon ({} {ifaces:?}) changed the first's data path\n{}",
            socket.display(),
            a.log()
        );
    }
    // Traffic: the kept connection goes on to the same server, new ones still alternate.
    let again = kept
        .request()
        .expect("the kept connection after the attempts");
    assert_eq!(first, again, "the kept connection moved to another server");
    let after_bodies = curls(&lab, 4);
    let count = |b: &[String], s: &str| b.iter().filter(|x| x.as_str() == s).count();
    for bodies in [&before_bodies, &after_bodies] {
        assert_eq!(
            (count(bodies, "rs1"), count(bodies, "rs2")),
            (2, 2),
            "rr over 4 requests: {before_bodies:?} then {after_bodies:?}"
        );
    }
    assert!(a.log().contains("ready"), "{}", a.log());
}

#[test]
fn set_timeouts_and_the_mh_table_size_survive_a_restart_that_adopts_the_maps() {
    let lab = DrLab::new(2);
    let dir = TempDir::new("mh");
    let cfg = dir.path().join("lb.toml");
    std::fs::File::create(&cfg)
        .and_then(|mut f| {
            f.write_all(
                br#"
[director]
mh_table_size = 251
expire_nodest_conn = true

[[service]]
address = "192.0.2.100"
port = 80
scheduler = "mh"

  [[service.real_server]]
  address = "192.0.2.11"

  [[service.real_server]]
  address = "192.0.2.12"
"#,
            )
        })
        .expect("writing the config");
    let mut d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
    d.ctl_ok(&["--set", "100", "50", "30"]);
    let status = |d: &Daemon| -> serde_json::Value {
        serde_json::from_str(&d.ctl_ok(&["status"])).expect("status is JSON")
    };
    let slots = status(&d)["pools"]["table_slots_used"].clone();
    assert_eq!(slots, 253, "251 Maglev slots and 2 members: {}", status(&d));
    let settings = settings_but_clock(d.pin_path());
    let table = d.ctl_ok(&["-Sn"]);
    curls(&lab, 2);

    // Stop keeping the data path, start again without the config file: what the previous
    // daemon set stays.
    d.ctl_ok(&["stop", "--keep-datapath"]);
    d.set_opts(DaemonOpts {
        ifaces: vec![lab.director_iface().to_string()],
        ..DaemonOpts::default()
    });
    d.restart();
    assert_eq!(
        d.ctl_ok(&["-L", "--timeout"]),
        "Timeout (tcp tcpfin udp): 100 50 30\n",
        "{}",
        d.log()
    );
    assert_eq!(d.ctl_ok(&["-Sn"]), table);
    assert_eq!(
        settings_but_clock(d.pin_path()),
        settings,
        "expire_nodest_conn and the rest of the settings"
    );
    // The Maglev table was not rebuilt at the default size (65,537 slots).
    let now = status(&d);
    assert_eq!(now["pools"]["table_slots_used"], 253, "{now}");
    curls(&lab, 2);
}

/// `-R` of `services` services × `dests` DR real servers on the lab's segment (addresses no
/// host answers: their MACs stay unresolved, which changes nothing here), as the CLI sends it
/// (one request of table edits; built here, as parsing 101,000 lines in a debug CLI is slow).
fn big_table(services: u32, dests: u32) -> Request {
    let mut ops = Vec::new();
    for i in 0..services {
        let key = ServiceKey::tcp(
            Ipv4Addr::new(203, 0, 113, 1 + (i % 250) as u8),
            1000 + (i / 250) as u16,
        );
        ops.push(Op::AddService(ServiceConfig::new(key, Scheduler::Wrr)));
        for j in 0..dests {
            let rs = Ipv4Addr::new(192, 0, 2, 101 + j as u8);
            let dest = DestConfig::new(rs, key.port, Forward::Dr, 1 + j % 3);
            ops.push(Op::AddDest(key, dest));
        }
    }
    Request::Ops(ops)
}

/// Sends `req` to the daemon from a thread (the caller may kill the daemon meanwhile).
fn send(d: &Daemon, req: &Request) -> std::thread::JoinHandle<anyhow::Result<Response>> {
    let (socket, req) = (d.socket().to_path_buf(), req.clone());
    std::thread::spawn(move || api::call(&socket, &req))
}

fn applied(d: &Daemon, req: &Request, what: &str) {
    match send(d, req).join().expect("the request thread") {
        Ok(Response::Ok) => {}
        other => panic!("{what}: {other:?}\n{}", d.log()),
    }
}

/// The table as the data path holds it: the live half of the service table, each service's
/// members from its region of the scheduling table, each member's backend entry.
/// (vip, port) → (scheduler code, [(real server, port, weight)] in list order).
type Members = Vec<(Ipv4Addr, u16, u32)>;
type Held = BTreeMap<(Ipv4Addr, u16), (u8, Members)>;

fn held_by_the_data_path(pin: &Path) -> Held {
    let settings: Array<MapData, Settings> = array(pin, maps::SETTINGS);
    let half = settings.get(&0, 0).expect("settings").svc_half & 1;
    let table: Array<MapData, SvcSlot> = array(pin, maps::SVC_TABLE);
    let sched: Array<MapData, u32> = array(pin, maps::SCHED_TABLE);
    let backends: Array<MapData, Backend> = array(pin, maps::BACKENDS);
    let ip = |raw: u32| Ipv4Addr::from(raw.to_ne_bytes());
    let mut held = Held::new();
    for i in half * size::SVC_SLOTS..(half + 1) * size::SVC_SLOTS {
        let slot = table.get(&i, 0).expect("service slot");
        if slot.svc.id == 0 {
            continue;
        }
        let mut members = Vec::new();
        for off in slot.svc.members_off..slot.svc.members_off + slot.svc.members_len {
            let id = sched.get(&off, 0).expect("member slot");
            let b = backends.get(&id, 0).expect("backend");
            assert_eq!(
                b.svc_id, slot.svc.id,
                "backend {id} listed by service {} belongs to {}",
                slot.svc.id, b.svc_id
            );
            members.push((ip(b.addr.as_v4()), u16::from_be(b.port), b.weight));
        }
        // The region holds IPVS list order, the listing the order of addition: compare sets.
        members.sort();
        held.insert(
            (ip(slot.key.addr.as_v4()), u16::from_be(slot.key.port)),
            (slot.svc.sched, members),
        );
    }
    held
}

/// The daemon's `-Ln -o json` listing in the same shape (scheduler compared separately).
fn listed(d: &Daemon) -> BTreeMap<(Ipv4Addr, u16), Members> {
    let v: serde_json::Value =
        serde_json::from_str(&d.ctl_ok(&["-Ln", "--nosort", "-o", "json"])).expect("-o json");
    let mut out = BTreeMap::new();
    for s in v["services"].as_array().expect("services") {
        let key = &s["config"]["key"];
        let addr: Ipv4Addr = key["addr"].as_str().unwrap().parse().unwrap();
        let port = key["port"].as_u64().unwrap() as u16;
        let mut dests: Members = s["dests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let c = &d["config"];
                (
                    c["addr"].as_str().unwrap().parse().unwrap(),
                    c["port"].as_u64().unwrap() as u16,
                    c["weight"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        dests.sort();
        out.insert((addr, port), dests);
    }
    out
}

fn pools(d: &Daemon) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&d.ctl_ok(&["status"])).expect("status");
    v["pools"].clone()
}

/// Polls `status` until the pools satisfy `ok` (ids are released after grace periods, when
/// the sweep finds no connection using them); panics with the last reading after `bound`.
fn wait_pools(d: &Daemon, bound: Duration, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + bound;
    loop {
        let p = pools(d);
        if ok(&p) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: pools still {p} after {bound:?}\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check_listing_equals_data_path(d: &Daemon, when: &str) {
    let held = held_by_the_data_path(d.pin_path());
    let listed = listed(d);
    let held_members: BTreeMap<_, _> = held.iter().map(|(k, (_, m))| (*k, m.clone())).collect();
    if held_members != listed {
        let only_held: Vec<_> = held_members
            .iter()
            .filter(|(k, v)| listed.get(*k) != Some(*v))
            .take(3)
            .collect();
        let only_listed: Vec<_> = listed
            .iter()
            .filter(|(k, v)| held_members.get(*k) != Some(*v))
            .take(3)
            .collect();
        panic!(
            "{when}: the listing ({} services) is not what the data path holds ({} services); \
             held but not listed so: {only_held:?}; listed but not held so: {only_listed:?}",
            listed.len(),
            held_members.len()
        );
    }
    let p = pools(d);
    let dests: usize = listed.values().map(Vec::len).sum();
    assert_eq!(p["service_ids"], listed.len(), "{when}: {p}");
    assert_eq!(
        p["backend_ids"].as_u64().unwrap() - p["trashed_backends"].as_u64().unwrap(),
        dests as u64,
        "{when}: every backend id in use is a listed real server or in the trash: {p}"
    );
}

/// SIGKILL while a daemon applies 1,000 services × 100 real servers, at three points: during
/// the writes before the service table flips (the new table must not appear, nothing may
/// leak), during the writes after the flip of deletions from every service, and after the
/// flip of a `-C` (the flipped table is what counts). Each time a new daemon adopts the maps:
/// its listing is what the data path holds, every id in use is listed or in the trash, and
/// after a clear every id and table slot comes back, so the full table fits again.
#[test]
fn sigkill_in_the_middle_of_a_large_sync_then_a_new_daemon_reads_back_the_data_path() {
    let lab = DrLab::new(2);
    let mut d = Daemon::start(lab.director(), &[lab.director_iface()], None);
    d.set_ready_timeout(Duration::from_secs(120));
    rr_service(&d);
    let full = big_table(1000, 100);
    let backends: Array<MapData, Backend> = array(d.pin_path(), maps::BACKENDS);
    let settings: Array<MapData, Settings> = array(d.pin_path(), maps::SETTINGS);

    // 1. Kill once the new backends are being written (ids 3.. are the table's; 1 and 2 are
    //    the rr service's), before the flip that makes them live.
    let cli = send(&d, &full);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if backends.get(&1000, 0).is_ok_and(|b| b.svc_id != 0) {
            break;
        }
        assert!(
            Instant::now() < deadline && !cli.is_finished(),
            "the daemon never started writing the table: {:?}\n{}",
            cli.is_finished().then(|| cli.join()),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    d.kill();
    let _ = cli.join();
    d.restart();
    check_listing_equals_data_path(&d, "after a kill during the writes before the flip");
    let listed_now = listed(&d);
    assert!(
        listed_now.len() == 1 || listed_now.len() == 1001,
        "the table is either the old or the new one, not a mix: {} services",
        listed_now.len()
    );
    // (No traffic here: its connections would keep rs1 and rs2's ids for their timeouts.)

    // Clear, and every id and slot comes back.
    d.ctl_ok(&["-C"]);
    wait_pools(&d, Duration::from_secs(60), "after -C", |p| {
        p["service_ids"] == 0 && p["backend_ids"] == 0 && p["table_slots_used"] == 0
    });

    // 2. The full table, applied to the end.
    applied(&d, &full, "-R of the full table");
    check_listing_equals_data_path(&d, "after -R of the full table");
    assert_eq!(listed(&d).len(), 1000);

    // 3. Kill while deleting half of every service's real servers, after the flip: the
    //    50,000 deleted backends are no longer listed but not yet stopped in the map.
    let deletions: Vec<Op> = (0..1000u32)
        .flat_map(|i| {
            let key = ServiceKey::tcp(
                Ipv4Addr::new(203, 0, 113, 1 + (i % 250) as u8),
                1000 + (i / 250) as u16,
            );
            (0..50u8)
                .map(move |j| Op::DelDest(key, Ipv4Addr::new(192, 0, 2, 101 + j).into(), key.port))
        })
        .collect();
    let half = settings.get(&0, 0).unwrap().svc_half;
    let del = send(&d, &Request::Ops(deletions));
    let deadline = Instant::now() + Duration::from_secs(300);
    while settings.get(&0, 0).unwrap().svc_half == half {
        assert!(
            Instant::now() < deadline && !del.is_finished(),
            "the deletions never flipped\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    d.kill();
    let _ = del.join();
    d.restart();
    check_listing_equals_data_path(&d, "after a kill during the deletions after the flip");
    let now = listed(&d);
    assert!(
        now.len() == 1000 && now.values().all(|m| m.len() == 50),
        "the deletions flipped: 1,000 services of 50 real servers each, not {} services / {} \
         real servers",
        now.len(),
        now.values().map(Vec::len).sum::<usize>()
    );

    // 4. Kill during a `-C`'s writes after the flip (the trashing of 50,000 backends).
    let half = settings.get(&0, 0).unwrap().svc_half;
    let clear = send(&d, &Request::Ops(vec![Op::Clear]));
    let deadline = Instant::now() + Duration::from_secs(300);
    while settings.get(&0, 0).unwrap().svc_half == half {
        assert!(
            Instant::now() < deadline && !clear.is_finished(),
            "-C never flipped\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    d.kill();
    let _ = clear.join();
    d.restart();
    check_listing_equals_data_path(&d, "after a kill during the writes after the flip");
    assert!(listed(&d).is_empty(), "-C flipped: the table is empty");
    wait_pools(&d, Duration::from_secs(60), "after the killed -C", |p| {
        p["service_ids"] == 0 && p["backend_ids"] == 0 && p["table_slots_used"] == 0
    });
    // And the full table fits again.
    applied(&d, &full, "-R after the recovery");
    check_listing_equals_data_path(&d, "after -R following the recovery");
}

/// A client that connects and says nothing holds only itself: another client is answered
/// meanwhile and the clock keeps moving; an oversized request gets an error, not a stall,
/// and leaves the table as it was.
#[test]
fn a_silent_or_oversized_client_holds_only_itself() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let lab = DrLab::new(2);
    let d = Daemon::start(lab.director(), &[lab.director_iface()], None);
    rr_service(&d);
    let table = d.ctl_ok(&["-Sn"]);
    let clock = |d: &Daemon| {
        array::<Settings>(d.pin_path(), maps::SETTINGS)
            .get(&0, 0)
            .expect("LB_SETTINGS")
            .clock_ns
    };

    let mut silent = UnixStream::connect(d.socket()).expect("connecting the silent client");
    let before = clock(&d);
    // Answered while the silent client is still connected and unanswered (the daemon used
    // to serve one client at a time: this listing came only after the silent one timed out).
    assert_eq!(d.ctl_ok(&["-Sn"]), table);
    std::thread::sleep(Duration::from_secs(1));
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match silent.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the silent client was answered or dropped already: {other:?}"),
    }
    let after = clock(&d);
    assert!(
        after > before,
        "the data path's clock stood still ({before} → {after}) while a client was silent"
    );

    // Over the cap: 64 MiB and more without a newline.
    let mut big = UnixStream::connect(d.socket()).expect("connecting");
    let writer = {
        let mut w = big.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 20];
            // The daemon stops reading (and closes) at the cap: a write error ends this.
            for _ in 0..80 {
                if std::io::Write::write_all(&mut w, &chunk).is_err() {
                    break;
                }
            }
        })
    };
    let mut answer = String::new();
    big.read_to_string(&mut answer).expect("reading the answer");
    writer.join().unwrap();
    let resp: Response = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("answer {answer:?} is not a response: {e}"));
    match resp {
        Response::Error(e) if e.starts_with("request too large") => {}
        other => panic!("an oversized request must be refused as too large, got {other:?}"),
    }
    assert_eq!(
        d.ctl_ok(&["-Sn"]),
        table,
        "the table after the oversized request"
    );
    drop(silent);
    let bodies = curls(&lab, 2);
    assert_eq!(bodies.len(), 2);
}
