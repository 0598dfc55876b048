//! Connection sync, the data path's half, through `BPF_PROG_TEST_RUN`: the events a MASTER's
//! balancer writes (new connections, state changes, embryo promotion, templates, refreshes,
//! a full ring), what a BACKUP's balancer does with what it installs (DR, NAT and TUN
//! connections carried on mid-stream, templates, refused input), and `sloppy_tcp` (a
//! mid-stream segment scheduled, and with sh/mh to the same real server by two directors
//! loaded apart). Each director is a balancer with its own pins, run from inside a namespace
//! of its own with routes and neighbours (`routed::Net`). Root only.

use std::{net::IpAddr, net::Ipv4Addr, time::Duration};

mod common;
use common::Balancer;

use lb_ctl::{
    dataplane::{Dataplane, InstallReport, Paths, RsPath},
    model::{
        DestConfig, Forward, Model, Op, Persistence, Protocol, SchedFlags, Scheduler,
        ServiceConfig, ServiceKey,
    },
    sync::{SyncConn, conn_flags},
};
use lb_tests::{
    packet::{Frame, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, verify_checksums},
    routed::{CLIENT, CLIENT_MAC, INT_ADDR, Net, ROUTER, ROUTER_MAC, far_rs, rs, rs_mac},
    xdp_run::{Outcome, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const TUN_SRC: Ipv4Addr = INT_ADDR;
const DR_PORT: u16 = 80;
const NAT_PORT: u16 = 81;
const TUN_PORT: u16 = 82;

/// A director: a balancer with its own pins, in a namespace with routes and neighbours.
struct Director {
    bal: Balancer,
    net: Net,
}

impl Director {
    fn new(model: &Model) -> Self {
        Self::with_table(model, 4096)
    }

    fn with_table(model: &Model, conns: u32) -> Self {
        let mut d = Self {
            bal: Balancer::open("syncdp", conns),
            net: Net::new("syncdp", &[], None),
        };
        d.set(model);
        d
    }

    fn paths(&self) -> Paths {
        let mut p = Paths::new();
        let path = |next_hop, dmac| RsPath {
            ifindex: self.net.int,
            next_hop,
            smac: self.net.int_mac,
            dmac: Some(dmac),
            tun_src: TUN_SRC.into(),
            mtu: 1500,
        };
        for n in 1..=4 {
            p.insert(rs(n).into(), path(rs(n).into(), rs_mac(n)));
            p.insert(far_rs(n).into(), path(ROUTER.into(), ROUTER_MAC));
        }
        p
    }

    fn dp(&mut self) -> &mut Dataplane {
        self.bal.dp_mut()
    }

    fn set(&mut self, model: &Model) {
        let paths = self.paths();
        self.dp().sync(model, &paths).expect("sync");
    }

    fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> Outcome {
        self.net.ns.enter(|| self.bal.run(frame, ifindex))
    }

    /// A client's segment to the VIP, as it arrives on the director's outer interface.
    fn client_sends(&mut self, sport: u16, dport: u16, flags: u8) -> Outcome {
        let frame =
            Frame::tcp(CLIENT, sport, VIP, dport, flags, b"x").eth(self.net.ext_mac, CLIENT_MAC);
        let ext = self.net.ext;
        self.run_on(ext, &frame)
    }

    /// A DR segment's real server (1..=4), by the destination MAC it was sent to.
    fn dr_to(&mut self, sport: u16, flags: u8) -> u8 {
        let out = self.client_sends(sport, DR_PORT, flags);
        assert!(
            out.action == XDP_REDIRECT || out.action == XDP_TX,
            "DR segment {sport} flags {flags:#x}: not forwarded: {out:?}"
        );
        let n = out.data[5];
        assert_eq!(&out.data[0..6], &rs_mac(n), "destination MAC of {out:?}");
        n
    }

    fn counter(&mut self, name: &str) -> u64 {
        self.bal.counter(name)
    }
}

/// A real server of weight 1 without thresholds.
fn dest(addr: Ipv4Addr, port: u16, forward: Forward) -> DestConfig {
    DestConfig::new(addr, port, forward, 1)
}

/// A persistent DR rr service on rs1 and rs2 (`-p TIMEOUT -M NETMASK`).
fn persistent_dr_rr(timeout: u32, netmask: Ipv4Addr) -> Model {
    let mut m = Model::default();
    let key = add(
        &mut m,
        DR_PORT,
        Scheduler::Rr,
        &[
            dest(rs(1), DR_PORT, Forward::Dr),
            dest(rs(2), DR_PORT, Forward::Dr),
        ],
    );
    let mut cfg = m.services[&key].config;
    cfg.persistence = Some(Persistence {
        timeout,
        netmask: netmask.into(),
    });
    m.apply(&Op::EditService(cfg)).unwrap();
    m
}

fn add(m: &mut Model, port: u16, sched: Scheduler, dests: &[DestConfig]) -> ServiceKey {
    let key = ServiceKey {
        proto: Protocol::Tcp,
        addr: VIP.into(),
        port,
    };
    m.apply(&Op::AddService(ServiceConfig::new(key, sched)))
        .unwrap();
    for d in dests {
        m.apply(&Op::AddDest(key, *d)).unwrap();
    }
    key
}

/// DR on port 80 (rs 1, 2), NAT on 81 (rs 3:8080, rs 4:8080), TUN on 82 (far rs 1, 2).
fn three_methods() -> Model {
    let mut m = Model::default();
    add(
        &mut m,
        DR_PORT,
        Scheduler::Rr,
        &[
            dest(rs(1), DR_PORT, Forward::Dr),
            dest(rs(2), DR_PORT, Forward::Dr),
        ],
    );
    add(
        &mut m,
        NAT_PORT,
        Scheduler::Rr,
        &[
            dest(rs(3), 8080, Forward::Nat),
            dest(rs(4), 8080, Forward::Nat),
        ],
    );
    add(
        &mut m,
        TUN_PORT,
        Scheduler::Rr,
        &[
            dest(far_rs(1), TUN_PORT, Forward::Tun),
            dest(far_rs(2), TUN_PORT, Forward::Tun),
        ],
    );
    m
}

/// Everything waiting in the ring (and what arrives within a short wait).
fn drain(ev: &mut lb_ctl::dataplane::SyncEvents) -> Vec<SyncConn> {
    let mut all = Vec::new();
    loop {
        let b = ev
            .next_batch(4096, Duration::from_millis(20))
            .expect("reading sync events");
        if b.is_empty() {
            return all;
        }
        all.extend(b);
    }
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

#[test]
fn a_master_reports_new_connections_state_changes_and_promotions() {
    let mut d = Director::new(&three_methods());
    let mut ev = d.dp().sync_events().expect("a reader");
    assert!(
        d.dp().sync_events().is_err(),
        "a second reader while one lives is refused"
    );
    d.dp().set_sync_master(true).unwrap();

    // DR: SYN (embryonic), ACK (promoted), data (no change), FIN.
    let n = d.dr_to(40000, TCP_SYN);
    let got = drain(&mut ev);
    let dr = |state: u8, flags: u32, timeout: u32| SyncConn {
        protocol: 6,
        flags,
        state: state as u16,
        cport: 40000,
        vport: DR_PORT,
        dport: DR_PORT,
        fwmark: 0,
        timeout,
        caddr: v4(CLIENT),
        vaddr: v4(VIP),
        daddr: v4(rs(n)),
    };
    use lb_common::tcp_state::*;
    let dr_flags = conn_flags::DROUTE | conn_flags::NOOUTPUT;
    assert_eq!(got, vec![dr(SYN_RECV, dr_flags, 60)], "the SYN's event");
    assert_eq!(d.dr_to(40000, TCP_ACK), n);
    assert_eq!(
        drain(&mut ev),
        vec![dr(ESTABLISHED, dr_flags, 900)],
        "the promotion out of the embryonic table is a state change"
    );
    assert_eq!(d.counter("embryo_promoted"), 1);
    assert_eq!(d.dr_to(40000, TCP_ACK | TCP_PSH), n);
    assert_eq!(drain(&mut ev), vec![], "no change, no event");
    assert_eq!(d.dr_to(40000, TCP_FIN | TCP_ACK), n);
    assert_eq!(
        drain(&mut ev),
        vec![dr(FIN_WAIT, dr_flags | conn_flags::INACTIVE, 120)],
        "FIN"
    );

    // NAT: the request entry's events carry the real server's port; the real server's FIN
    // (its OUTPUT table) is a state change too, and output seen clears NOOUTPUT.
    let out = d.client_sends(40001, NAT_PORT, TCP_SYN);
    assert_eq!(out.action, XDP_REDIRECT, "{out:?}");
    let rs_n = out.data[5];
    let nat = |state: u8, flags: u32, timeout: u32| SyncConn {
        protocol: 6,
        flags,
        state: state as u16,
        cport: 40001,
        vport: NAT_PORT,
        dport: 8080,
        fwmark: 0,
        timeout,
        caddr: v4(CLIENT),
        vaddr: v4(VIP),
        daddr: v4(rs(rs_n)),
    };
    assert_eq!(
        drain(&mut ev),
        vec![nat(SYN_RECV, conn_flags::MASQ | conn_flags::NOOUTPUT, 60)]
    );
    assert_eq!(
        d.client_sends(40001, NAT_PORT, TCP_ACK).action,
        XDP_REDIRECT
    );
    assert_eq!(
        drain(&mut ev),
        vec![nat(
            ESTABLISHED,
            conn_flags::MASQ | conn_flags::NOOUTPUT,
            900
        )]
    );
    let fin = Frame::tcp(rs(rs_n), 8080, CLIENT, 40001, TCP_FIN | TCP_ACK, b"")
        .eth(d.net.int_mac, rs_mac(rs_n));
    let int = d.net.int;
    let out = d.run_on(int, &fin);
    assert_eq!(
        out.action, XDP_REDIRECT,
        "the server's FIN is SNATed: {out:?}"
    );
    assert_eq!(
        drain(&mut ev),
        vec![nat(FIN_WAIT, conn_flags::MASQ | conn_flags::INACTIVE, 120)],
        "the real server's FIN moves the state (IPVS's OUTPUT table)"
    );
    assert_eq!(d.counter("sync_dropped"), 0);
    assert_eq!(ev.stale, 0);
}

#[test]
fn a_master_off_writes_nothing() {
    let mut d = Director::new(&three_methods());
    let mut ev = d.dp().sync_events().expect("a reader");
    for port in 41000..41010 {
        let n = d.dr_to(port, TCP_SYN);
        assert_eq!(d.dr_to(port, TCP_ACK), n);
        assert_eq!(d.dr_to(port, TCP_FIN | TCP_ACK), n);
    }
    assert_eq!(drain(&mut ev), vec![], "no event with SYNC_MASTER off");
    // On, then off again: the flag is all it takes, both ways.
    d.dp().set_sync_master(true).unwrap();
    d.dr_to(41100, TCP_SYN);
    assert_eq!(drain(&mut ev).len(), 1);
    d.dp().set_sync_master(false).unwrap();
    d.dr_to(41100, TCP_ACK);
    d.dr_to(41101, TCP_SYN);
    assert_eq!(drain(&mut ev), vec![], "off again");
    // A reader dropped frees the ring for the next one (a restarted sync thread).
    drop(ev);
    d.dp()
        .sync_events()
        .expect("a new reader after the first is gone");
}

#[test]
fn a_template_is_reported_with_its_client_network() {
    let m = persistent_dr_rr(600, Ipv4Addr::new(255, 255, 255, 0));
    let mut d = Director::new(&m);
    let mut ev = d.dp().sync_events().expect("a reader");
    d.dp().set_sync_master(true).unwrap();
    let n = d.dr_to(42000, TCP_SYN);
    let got = drain(&mut ev);
    let template = SyncConn {
        protocol: 6,
        flags: conn_flags::TEMPLATE | conn_flags::DROUTE,
        state: 0,
        cport: 0,
        vport: DR_PORT,
        dport: DR_PORT,
        fwmark: 0,
        timeout: 600,
        caddr: v4(Ipv4Addr::new(198, 51, 100, 0)),
        vaddr: v4(VIP),
        daddr: v4(rs(n)),
    };
    assert_eq!(got.len(), 2, "a template and a connection: {got:?}");
    assert_eq!(got[0], template, "the template first (it is made first)");
    assert!(!got[1].is_template() && got[1].cport == 42000, "{got:?}");
    // The client's next connection follows the template: no new template, no event for it.
    assert_eq!(d.dr_to(42001, TCP_SYN), n);
    let got = drain(&mut ev);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(!got[0].is_template());
}

#[test]
fn live_connections_are_refreshed_once_per_period() {
    let mut d = Director::new(&three_methods());
    let mut ev = d.dp().sync_events().expect("a reader");
    d.dp().set_sync_master(true).unwrap();
    // The shortest period: one stamp unit (2^30 ns).
    d.dp()
        .set_sync_refresh(Some(Duration::from_millis(1100)))
        .unwrap();
    let n = d.dr_to(43000, TCP_SYN);
    assert_eq!(d.dr_to(43000, TCP_ACK), n);
    assert_eq!(drain(&mut ev).len(), 2);
    // Within the period: data moves no state and sends nothing.
    for _ in 0..5 {
        assert_eq!(d.dr_to(43000, TCP_ACK | TCP_PSH), n);
    }
    let early = drain(&mut ev);
    // Past two stamp boundaries (the clock moves by what really elapsed).
    std::thread::sleep(Duration::from_millis(2200));
    d.dp().tick_clock().unwrap();
    for _ in 0..5 {
        assert_eq!(d.dr_to(43000, TCP_ACK | TCP_PSH), n);
    }
    let late = drain(&mut ev);
    // The data before the sleep may straddle a stamp boundary (one refresh at most); after
    // it, exactly one refresh for five packets.
    assert!(early.len() <= 1, "{early:?}");
    assert_eq!(late.len(), 1, "one refresh for five packets: {late:?}");
    assert_eq!(late[0].state, lb_common::tcp_state::ESTABLISHED as u16);
    assert_eq!(late[0].timeout, 900);
}

#[test]
fn a_full_ring_drops_events_never_packets() {
    // The ring holds 65,536 events; 70,000 new connections are not read in between.
    const FLOWS: u32 = 70_000;
    let mut d = Director::with_table(&three_methods(), 1 << 17);
    let mut ev = d.dp().sync_events().expect("a reader");
    d.dp().set_sync_master(true).unwrap();
    for i in 0..FLOWS {
        let src = Ipv4Addr::from(0xc612_0000 | (i & 0xffff));
        let sport = 1024 + (i >> 16) as u16;
        let frame =
            Frame::tcp(src, sport, VIP, DR_PORT, TCP_SYN, b"").eth(d.net.ext_mac, CLIENT_MAC);
        let ext = d.net.ext;
        let out = d.run_on(ext, &frame);
        assert!(
            out.action == XDP_REDIRECT || out.action == XDP_TX,
            "SYN {i} not forwarded with the ring full: {out:?}"
        );
    }
    let dropped = d.counter("sync_dropped");
    let read = drain(&mut ev).len() as u64;
    assert!(dropped > 0, "the ring never filled ({read} read)");
    assert_eq!(
        read + dropped,
        FLOWS as u64,
        "every event is either read or counted as dropped"
    );
    // Read out, the ring takes events again.
    d.dr_to(9, TCP_SYN);
    assert_eq!(drain(&mut ev).len(), 1);
}

/// Connections of every method opened on a MASTER, installed on a BACKUP from the MASTER's
/// events, go on there mid-stream to the same real server; NAT both ways.
#[test]
fn installed_connections_carry_on_on_the_backup() {
    let model = three_methods();
    let mut master = Director::new(&model);
    // The backup's table was built in another order: its backend ids differ.
    let mut backup_model = Model::default();
    add(
        &mut backup_model,
        TUN_PORT,
        Scheduler::Rr,
        &[
            dest(far_rs(2), TUN_PORT, Forward::Tun),
            dest(far_rs(1), TUN_PORT, Forward::Tun),
        ],
    );
    for (k, s) in &model.services {
        if k.port != TUN_PORT {
            backup_model.apply(&Op::AddService(s.config)).unwrap();
            for d in s.dests.iter().rev() {
                backup_model.apply(&Op::AddDest(*k, *d)).unwrap();
            }
        }
    }
    let mut backup = Director::new(&backup_model);
    let mut ev = master.dp().sync_events().expect("a reader");
    master.dp().set_sync_master(true).unwrap();
    let mut installer = backup.dp().sync_installer().expect("an installer");

    // Two connections per method on the master, established.
    let mut sent = Vec::new();
    for (i, port) in [DR_PORT, DR_PORT, NAT_PORT, NAT_PORT, TUN_PORT, TUN_PORT]
        .into_iter()
        .enumerate()
    {
        let sport = 44000 + i as u16;
        let syn = master.client_sends(sport, port, TCP_SYN);
        let ack = master.client_sends(sport, port, TCP_ACK);
        assert_eq!(syn.action, XDP_REDIRECT, "{syn:?}");
        sent.push((sport, port, ack));
    }
    // Without sync the backup has nothing: a mid-stream ACK goes to its stack.
    let out = backup.client_sends(44000, DR_PORT, TCP_ACK);
    assert_eq!(out.action, XDP_PASS, "{out:?}");

    let events = drain(&mut ev);
    assert_eq!(events.len(), 12, "a NEW and a STATE each: {events:?}");
    let r = installer.install(&events);
    assert_eq!(
        r,
        InstallReport {
            installed: 6,
            updated: 6,
            ..Default::default()
        },
        "the SYN_RECV copies, then their promotion"
    );

    // Mid-stream on the backup: exactly the frame the master sent, MACs and all (the two
    // directors' interfaces differ in MAC only, and each sends from its own).
    for (sport, port, on_master) in &sent {
        let out = backup.client_sends(*sport, *port, TCP_ACK);
        assert_eq!(out.action, on_master.action, "{port}/{sport}: {out:?}");
        assert_eq!(
            out.data[0..6],
            on_master.data[0..6],
            "{port}/{sport}: next hop"
        );
        assert_eq!(
            out.data[14..],
            on_master.data[14..],
            "{port}/{sport}: the forwarded packet"
        );
        verify_checksums(&out.data[14..]).unwrap_or_else(|e| panic!("{port}/{sport}: {e}"));
    }
    // NAT replies from the real server are SNATed back to the VIP by the backup.
    for (sport, port, on_master) in sent.iter().filter(|s| s.1 == NAT_PORT) {
        let n = on_master.data[5];
        let reply = Frame::tcp(rs(n), 8080, CLIENT, *sport, TCP_ACK, b"reply")
            .eth(backup.net.int_mac, rs_mac(n));
        let int = backup.net.int;
        let out = backup.run_on(int, &reply);
        let want = Frame::tcp(VIP, *port, CLIENT, *sport, TCP_ACK, b"reply")
            .ttl(63)
            .eth(CLIENT_MAC, backup.net.ext_mac);
        assert_eq!(out.action, XDP_REDIRECT, "NAT reply {sport}: {out:?}");
        assert_eq!(out.data, want, "NAT reply {sport} SNATed");
    }
    // The sweep counts them like its own: three methods, two each, all active.
    backup.dp().sweep().expect("sweep");
    let snap = backup.dp().snapshot(None, &Default::default());
    let active: u32 = snap
        .services
        .iter()
        .flat_map(|s| s.dests.iter())
        .map(|d| d.active_conns)
        .sum();
    assert_eq!(active, 6, "{snap:?}");
}

#[test]
fn an_installed_template_steers_the_clients_next_connection() {
    let m = persistent_dr_rr(300, Ipv4Addr::new(255, 255, 255, 255));
    let mut d = Director::new(&m);
    let mut inst = d.dp().sync_installer().expect("an installer");
    for target in [2u8, 1] {
        let t = SyncConn {
            protocol: 6,
            flags: conn_flags::TEMPLATE | conn_flags::DROUTE,
            state: 0,
            cport: 0,
            vport: DR_PORT,
            dport: DR_PORT,
            fwmark: 0,
            timeout: 300,
            caddr: v4(CLIENT),
            vaddr: v4(VIP),
            daddr: v4(rs(target)),
        };
        let r = inst.install(&[t]);
        assert_eq!(r.installed + r.updated, 1, "{r:?}");
        // rr would alternate; the template holds every new connection of the client.
        for sport in 0..4 {
            let sport = 45000 + sport + 10 * target as u16;
            assert_eq!(d.dr_to(sport, TCP_SYN), target, "connection {sport}");
        }
    }
}

#[test]
fn refused_input_is_counted_and_changes_nothing() {
    let mut d = Director::new(&three_methods());
    let mut inst = d.dp().sync_installer().expect("an installer");
    let good = SyncConn {
        protocol: 6,
        flags: conn_flags::DROUTE,
        state: lb_common::tcp_state::ESTABLISHED as u16,
        cport: 46000,
        vport: DR_PORT,
        dport: DR_PORT,
        fwmark: 0,
        timeout: 899,
        caddr: v4(CLIENT),
        vaddr: v4(VIP),
        daddr: v4(rs(1)),
    };
    let bad = vec![
        SyncConn {
            vport: 8888,
            ..good.clone()
        },
        SyncConn {
            daddr: v4(rs(4)),
            ..good.clone()
        },
        SyncConn {
            caddr: "2001:db8::7".parse().unwrap(),
            ..good.clone()
        },
        SyncConn {
            state: 77,
            ..good.clone()
        },
        SyncConn {
            protocol: 132,
            ..good.clone()
        },
        SyncConn {
            fwmark: 5,
            ..good.clone()
        },
        // A template for a service that is not persistent.
        SyncConn {
            flags: conn_flags::TEMPLATE | conn_flags::DROUTE,
            cport: 0,
            ..good.clone()
        },
    ];
    let r = inst.install(&bad);
    assert_eq!(
        r,
        InstallReport {
            no_service: 2,
            no_real_server: 1,
            wrong_family: 1,
            invalid: 3,
            ..Default::default()
        }
    );
    let conns = d.dp().conns(&Default::default());
    assert!(conns.is_empty(), "nothing installed: {conns:?}");
    assert_eq!(d.client_sends(46000, DR_PORT, TCP_ACK).action, XDP_PASS);

    // The good one goes in, expiring when the master said (899 s left of 900). It is
    // recorded as seen 1 s ago, which takes a clock at least that old (a younger one
    // bounds the entry by the state's own timeout instead).
    std::thread::sleep(Duration::from_millis(1200));
    d.dp().tick_clock().unwrap();
    assert_eq!(inst.install(std::slice::from_ref(&good)).installed, 1);
    let conns = d.dp().conns(&Default::default());
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].expire_secs, 899, "expires in 899 s: {conns:?}");
    assert_eq!(d.dr_to(46000, TCP_ACK), 1);

    // While this director is MASTER its own entries are its own: a message for another
    // real server changes nothing.
    d.dp().set_sync_master(true).unwrap();
    let other = SyncConn {
        daddr: v4(rs(2)),
        ..good.clone()
    };
    assert_eq!(inst.install(std::slice::from_ref(&other)).kept, 1);
    assert_eq!(d.dr_to(46000, TCP_ACK), 1);
    // As a BACKUP it takes the MASTER's word (IPVS's backup does), unless the message is
    // the expiry of a connection that was replaced (INACTIVE).
    d.dp().set_sync_master(false).unwrap();
    let expired = SyncConn {
        flags: other.flags | conn_flags::INACTIVE,
        ..other.clone()
    };
    assert_eq!(inst.install(std::slice::from_ref(&expired)).kept, 1);
    assert_eq!(d.dr_to(46000, TCP_ACK), 1);
    assert_eq!(inst.install(std::slice::from_ref(&other)).updated, 1);
    assert_eq!(d.dr_to(46000, TCP_ACK), 2);
}

#[test]
fn sloppy_tcp_schedules_a_mid_stream_segment() {
    let mut d = Director::new(&three_methods());
    let out = d.client_sends(47000, DR_PORT, TCP_ACK);
    assert_eq!(out.action, XDP_PASS, "knob off: to the stack ({out:?})");
    assert_eq!(d.counter("pass_no_conn"), 1);
    d.dp().set_sloppy(true, false).unwrap();
    assert_eq!(d.dp().sloppy(), (true, false));
    // RST never opens a connection (IPVS: `(syn || sloppy_tcp) && !rst`).
    let out = d.client_sends(47001, DR_PORT, TCP_RST | TCP_ACK);
    assert_eq!(out.action, XDP_PASS, "RST: {out:?}");
    let n = d.dr_to(47000, TCP_ACK);
    // Recorded straight into the connection table, ESTABLISHED, and kept.
    let conns = d.dp().conns(&Default::default());
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].state, "ESTABLISHED");
    assert_eq!(d.counter("embryo_new"), 0);
    for _ in 0..4 {
        assert_eq!(d.dr_to(47000, TCP_ACK | TCP_PSH), n);
    }
    // A NAT connection picked up mid-stream has its reply entry as well.
    let out = d.client_sends(47002, NAT_PORT, TCP_ACK);
    assert_eq!(out.action, XDP_REDIRECT, "{out:?}");
    let n = out.data[5];
    let reply = Frame::tcp(rs(n), 8080, CLIENT, 47002, TCP_ACK, b"").eth(d.net.int_mac, rs_mac(n));
    let int = d.net.int;
    assert_eq!(d.run_on(int, &reply).action, XDP_REDIRECT, "SNATed reply");
    // A sloppy pick-up is reported like any new connection.
    let mut ev = d.dp().sync_events().expect("a reader");
    d.dp().set_sync_master(true).unwrap();
    d.dr_to(47003, TCP_ACK);
    let got = drain(&mut ev);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].state, lb_common::tcp_state::ESTABLISHED as u16);
    // Off again: mid-stream segments go to the stack again.
    d.dp().set_sloppy(false, false).unwrap();
    assert_eq!(d.client_sends(47004, DR_PORT, TCP_ACK).action, XDP_PASS);
}

/// Two directors loaded apart, with the same sh (or mh) service: a flow whose SYN went to
/// the first and whose mid-stream segments arrive at the second (a takeover without sync)
/// reaches the same real server there.
#[test]
fn sloppy_sh_and_mh_pick_what_the_other_director_picked() {
    for (sched, flags) in [
        (Scheduler::Sh, SchedFlags::default()),
        (Scheduler::Mh, SchedFlags::default()),
        (Scheduler::Mh, SchedFlags(SchedFlags::FLAG2)),
    ] {
        let mut m = Model::default();
        let key = add(
            &mut m,
            DR_PORT,
            sched,
            &(1..=4)
                .map(|n| dest(rs(n), DR_PORT, Forward::Dr))
                .collect::<Vec<_>>(),
        );
        let mut cfg = m.services[&key].config;
        cfg.sched_flags = flags;
        m.apply(&Op::EditService(cfg)).unwrap();
        let mut first = Director::new(&m);
        let mut second = Director::new(&m);
        second.dp().set_sloppy(true, false).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..64u16 {
            let src = Ipv4Addr::new(203, 0, 113, 1 + (i % 32) as u8);
            let sport = 48000 + i;
            let seg = |d: &mut Director, fl: u8| {
                let frame =
                    Frame::tcp(src, sport, VIP, DR_PORT, fl, b"").eth(d.net.ext_mac, CLIENT_MAC);
                let ext = d.net.ext;
                let out = d.run_on(ext, &frame);
                assert!(
                    out.action == XDP_REDIRECT || out.action == XDP_TX,
                    "{sched:?} {src}:{sport}: {out:?}"
                );
                out.data[5]
            };
            let n = seg(&mut first, TCP_SYN);
            assert_eq!(
                seg(&mut second, TCP_ACK | TCP_PSH),
                n,
                "{sched:?} {flags:?}: flow {src}:{sport} went to rs {n} on the first director"
            );
            seen.insert(n);
        }
        assert!(seen.len() > 1, "{sched:?}: every flow hashed to one server");
    }
}

/// The knob end to end, with real TCP: `[director] sloppy_tcp` in the daemon's config, shown
/// by `lb-ctl status`; a daemon restarted afresh (SIGTERM takes the data path and its
/// connections away, as a takeover by a director that never saw them) carries on a live
/// keep-alive connection to the same real server (sh). Without the knob the same segment
/// goes to the director's own stack, which owns the VIP and resets the connection.
#[test]
fn a_fresh_daemon_with_sloppy_tcp_carries_on_a_connection_it_never_saw() {
    use lb_tests::{Daemon, DrLab, TempDir};
    for sloppy in [true, false] {
        let lab = DrLab::new(2);
        let dir = TempDir::new("sloppy");
        let cfg = dir.path().join("lb.toml");
        let mut text = format!("[director]\nsloppy_tcp = {sloppy}\n\n");
        text += &format!(
            "[[service]]\naddress = \"{}\"\nport = 80\nscheduler = \"sh\"\n",
            lab.vip()
        );
        for n in 1..=2 {
            text += &format!(
                "  [[service.real_server]]\n  address = \"192.0.2.{}\"\n",
                10 + n
            );
        }
        std::fs::write(&cfg, text).unwrap();
        let mut d = Daemon::start(lab.director(), &[lab.director_iface()], Some(&cfg));
        assert_eq!(d.status()["sloppy_tcp"], sloppy, "{}", d.status());
        assert_eq!(d.status()["sloppy_sctp"], false);
        let mut held =
            lb_tests::KeepAlive::connect(lab.client(), lab.vip_addr(80)).expect("connect");
        let first = held.request().expect("first request");
        d.restart();
        assert_eq!(d.status()["counters"]["new_conn"], 0, "a fresh data path");
        let again = held.request();
        if sloppy {
            assert_eq!(
                again.as_deref().ok(),
                Some(first.as_str()),
                "the connection goes on with its real server ({again:?})"
            );
            assert_eq!(
                d.status()["counters"]["new_conn"],
                1,
                "picked up mid-stream"
            );
        } else {
            assert!(
                again.is_err(),
                "without sloppy_tcp the director's stack answers: {again:?}"
            );
        }
    }
}

/// The switches live in the pinned settings: a daemon that adopts the data path (a restart
/// with `--keep-datapath`) finds this director still MASTER with sloppy_tcp on, its reader
/// gets the events of the adopted table's connections, and its installer works on them.
#[test]
fn the_switches_survive_adoption_of_the_pinned_maps() {
    let model = three_methods();
    let mut d = Director::new(&model);
    d.dp().set_sync_master(true).unwrap();
    d.dp().set_sloppy(true, true).unwrap();
    let n = d.dr_to(49000, TCP_SYN);
    assert_eq!(d.dr_to(49000, TCP_ACK), n);
    d.bal.reopen_keeping();
    assert!(d.dp().adopted());
    d.set(&model);
    assert!(d.dp().sync_master());
    assert_eq!(d.dp().sloppy(), (true, true));
    let mut ev = d.dp().sync_events().expect("a reader");
    // The adopted connection's next state change is reported with its real server.
    assert_eq!(d.dr_to(49000, TCP_FIN | TCP_ACK), n);
    let got = drain(&mut ev);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].cport, got[0].daddr), (49000, v4(rs(n))));
    // And sloppy still picks up mid-stream segments.
    d.dr_to(49001, TCP_ACK);
    assert_eq!(drain(&mut ev).len(), 1);
    // The installer of the adopted data path finds its services and servers.
    let mut inst = d.dp().sync_installer().expect("an installer");
    let m = 3 - n;
    let c = SyncConn {
        cport: 49002,
        daddr: v4(rs(m)),
        ..got[0].clone()
    };
    d.dp().set_sync_master(false).unwrap();
    // Without sloppy, only the installed entry can forward this ACK.
    d.dp().set_sloppy(false, false).unwrap();
    assert_eq!(inst.install(&[c]).installed, 1);
    assert_eq!(d.dr_to(49002, TCP_ACK), m);
}

/// Scale: 10,000 connections opened and established on a MASTER, read from its ring and
/// installed on a BACKUP in batches as the sync daemon would, are all there and each
/// carries on to its real server. (How long reading and installing took is printed for
/// the sync protocol's bound; nothing here depends on it.)
#[test]
fn ten_thousand_connections_reach_the_backup() {
    const FLOWS: u32 = 10_000;
    let model = three_methods();
    let mut master = Director::with_table(&model, 1 << 16);
    let mut backup = Director::with_table(&model, 1 << 16);
    let mut ev = master.dp().sync_events().expect("a reader");
    master.dp().set_sync_master(true).unwrap();
    let flow = |i: u32| {
        (
            Ipv4Addr::from(0xc612_0000 | (i & 0xff)),
            1024 + (i >> 8) as u16,
        )
    };
    let mut server = Vec::new();
    for i in 0..FLOWS {
        let (src, sport) = flow(i);
        let mut n = 0;
        for flags in [TCP_SYN, TCP_ACK] {
            let frame = Frame::tcp(src, sport, VIP, DR_PORT, flags, b"")
                .eth(master.net.ext_mac, CLIENT_MAC);
            let ext = master.net.ext;
            let out = master.run_on(ext, &frame);
            assert_eq!(out.action, XDP_REDIRECT, "flow {i}: {out:?}");
            n = out.data[5];
        }
        server.push(n);
    }
    let mut inst = backup.dp().sync_installer().expect("an installer");
    let started = std::time::Instant::now();
    let mut total = InstallReport::default();
    let mut events = 0;
    loop {
        let b = ev
            .next_batch(1024, Duration::from_millis(50))
            .expect("reading");
        if b.is_empty() {
            break;
        }
        events += b.len();
        total += inst.install(&b);
    }
    eprintln!(
        "{events} events read and installed in {:.0} ms: {total:?}",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(events, 2 * FLOWS as usize, "a NEW and a STATE per flow");
    assert_eq!(
        (total.installed, total.updated),
        (FLOWS as u64, FLOWS as u64),
        "{total:?}"
    );
    assert_eq!(master.counter("sync_dropped"), 0);
    let conns = backup.dp().conns(&Default::default());
    assert_eq!(conns.len(), FLOWS as usize);
    assert!(conns.iter().all(|c| c.state == "ESTABLISHED"));
    for i in (0..FLOWS).step_by(7) {
        let (src, sport) = flow(i);
        let frame = Frame::tcp(src, sport, VIP, DR_PORT, TCP_ACK | TCP_PSH, b"")
            .eth(backup.net.ext_mac, CLIENT_MAC);
        let ext = backup.net.ext;
        let out = backup.run_on(ext, &frame);
        assert_eq!(
            (out.action, out.data[5]),
            (XDP_REDIRECT, server[i as usize]),
            "flow {i} on the backup"
        );
    }
}
