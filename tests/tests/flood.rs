//! A SYN flood end to end: 20 long-lived TCP connections through the XDP director (DR, and
//! NAT) keep exchanging data while another namespace floods the VIP with spoofed SYNs, many
//! times the connection table's size. Root only.
//!
//! The spoofed sources come from the benchmarking range 198.18.0.0/15. DR's real servers have
//! only their /24 on-link route, so their SYN-ACKs to those sources go nowhere; NAT's route
//! theirs through the director, which has no route to that range either.

use std::{
    io::Write,
    sync::atomic::{AtomicU32, Ordering},
};

use lb_tests::{
    Daemon, DrLab, KeepAlive, NatLab, Netns, TempDir, curl,
    lab::nat,
    packet::{Frame, TCP_ACK, TCP_SYN},
    veth,
};

const TABLE: u32 = 4096;
/// Established connections besides the 20 long-lived ones.
const BACKGROUND: u32 = 3000;
const EMBRYOS: u32 = 1024;
/// Spoofed SYNs sent: more than ten times the whole connection table.
const FLOOD: u32 = 60_000;

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|e| panic!("MAC {s:?}: {e}")))
        .collect();
    v.try_into()
        .unwrap_or_else(|v| panic!("MAC {s:?} has {v:?}"))
}

/// An `AF_PACKET` socket on `iface` of `ns` that sends whole Ethernet frames.
struct RawSender {
    fd: i32,
    addr: libc::sockaddr_ll,
}

impl RawSender {
    fn open(ns: &Netns, iface: &str) -> RawSender {
        let name = std::ffi::CString::new(iface).unwrap();
        let (fd, ifindex) = ns.enter(|| {
            // SAFETY: plain system calls with valid arguments.
            unsafe {
                (
                    libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
                    libc::if_nametoindex(name.as_ptr()),
                )
            }
        });
        assert!(
            fd >= 0 && ifindex != 0,
            "raw socket on {iface} in {}: {}",
            ns.name(),
            std::io::Error::last_os_error()
        );
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        RawSender { fd, addr }
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: the buffer and address are valid for the call.
        let rc = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &self.addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.fd) };
    }
}

/// Where the flood runs: a lab's hosts and the service in it.
struct Setup<'a> {
    director: &'a Netns,
    ifaces: &'a [&'a str],
    client: &'a Netns,
    /// The switch and the bridge of the clients' segment (the flooder joins it).
    switch: &'a Netns,
    bridge: &'a str,
    vip: std::net::Ipv4Addr,
    /// `[[service.real_server]]` lines of the two real servers.
    real_servers: String,
    /// Established connections opened with raw frames besides the 20 long-lived ones.
    background: u32,
}

#[test]
fn syn_flood_resets_no_established_connection() {
    let lab = DrLab::new(2);
    let real_servers = (1..=2)
        .map(|i| {
            format!(
                "  [[service.real_server]]\n  address = \"{}\"\n",
                lab.rs_ip(i)
            )
        })
        .collect();
    flood(Setup {
        director: lab.director(),
        ifaces: &[lab.director_iface()],
        client: lab.client(),
        switch: lab.switch(),
        bridge: "br0",
        vip: lab.vip(),
        real_servers,
        background: BACKGROUND,
    });
}

/// The same against a NAT service: its connections (and their reply entries) are embryonic
/// too, so the flood costs no established NAT connection either. No background connections
/// here: a NAT real server answers a made-up ACK with a reset, which would close them.
#[test]
fn syn_flood_on_a_nat_service_resets_no_established_connection() {
    let lab = NatLab::new(2);
    let real_servers = (1..=2)
        .map(|i| {
            format!(
                "  [[service.real_server]]\n  address = \"{}\"\n  forward = \"nat\"\n",
                nat::rs_ip(i)
            )
        })
        .collect();
    let ifaces = lab.director_ifaces();
    flood(Setup {
        director: lab.director(),
        ifaces: &ifaces,
        client: lab.client(),
        switch: lab.switch(),
        bridge: nat::EXT_BRIDGE,
        vip: lab.vip(),
        real_servers,
        background: 0,
    });
}

fn flood(lab: Setup) {
    // The flooder: one more host on the clients' bridge.
    let flooder = Netns::new("flood");
    flooder.disable_ipv6();
    veth(lab.switch, "flood", &flooder, "eth0");
    lab.switch
        .ip(&["link", "set", "dev", "flood", "master", lab.bridge]);

    let dir = TempDir::new("flood");
    let cfg = dir.path().join("lb.toml");
    std::fs::File::create(&cfg)
        .and_then(|mut f| {
            write!(
                f,
                r#"
[director]
conn_table_size = {TABLE}
embryonic_table_size = {EMBRYOS}

[[service]]
address = "{}"
port = 80
scheduler = "rr"

{}
"#,
                lab.vip, lab.real_servers
            )
        })
        .expect("writing the config");
    let d = Daemon::start(lab.director, lab.ifaces, Some(&cfg));
    let vip_addr = std::net::SocketAddr::from((lab.vip, 80));

    // 20 long-lived connections, each to the real server rr gave it.
    let mut conns: Vec<(KeepAlive, String)> = (0..20)
        .map(|i| {
            let mut c = KeepAlive::connect(lab.client, vip_addr)
                .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", d.log()));
            let body = c
                .request()
                .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", d.log()));
            (c, body.trim().to_string())
        })
        .collect();
    let director_mac = mac(lab.director.mac("eth0").trim());
    let flooder_mac = mac(flooder.mac("eth0").trim());
    let sender = RawSender::open(&flooder, "eth0");

    // A director's table is mostly established connections: `background` more, from
    // 198.19.0.0/16, opened with a SYN and taken to ESTABLISHED by an ACK (all a DR director
    // sees of a client), so that the table is three quarters full of them.
    let background = |j: u32, flags: u8| {
        let src = std::net::Ipv4Addr::from(0xc613_0000 | j);
        Frame::tcp(src, 2000, lab.vip, 80, flags, b"").eth(director_mac, flooder_mac)
    };
    for j in 0..lab.background {
        for flags in [TCP_SYN, TCP_ACK] {
            sender.send(&background(j, flags)).expect("sending");
        }
        if j % 128 == 127 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    // Delivered and counted: the listing reads the table itself.
    std::thread::sleep(std::time::Duration::from_millis(100));
    // ESTABLISHED connections other than the flood's: the background and the 20.
    let established = || {
        let out = d.ctl_ok(&["-Lnc"]);
        out.lines()
            .filter(|l| l.contains("ESTABLISHED") && !l.contains(" 198.18."))
            .count()
    };
    let want = lab.background as usize + conns.len();
    assert_eq!(
        established(),
        want,
        "background and long-lived connections established\n{}",
        d.ctl_ok(&["status"])
    );
    let before = d.status();
    // SYNs sent so far.
    let sent = AtomicU32::new(0);
    let rounds = std::thread::scope(|s| {
        s.spawn(|| {
            for j in 0..FLOOD {
                let src = std::net::Ipv4Addr::from(0xc612_0000 | (j & 0x1_ffff));
                let sport = 1024 + (j % 50_000) as u16;
                let syn = Frame::tcp(src, sport, lab.vip, 80, TCP_SYN, b"")
                    .eth(director_mac, flooder_mac);
                // A full queue drops a frame (ENOBUFS); the flood goes on.
                let _ = sender.send(&syn);
                if j % 256 == 255 {
                    // Paced so the veth backlog (1,000 frames) does not drop most of it.
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
                sent.store(j + 1, Ordering::SeqCst);
            }
        });
        // Meanwhile every connection exchanges data again after every `GAP` SYNs, on the same
        // socket, with the same real server. Between rounds they are idle, as long-lived
        // connections mostly are, while more than twice the table's size of SYNs arrive: an
        // LRU shared with the SYNs would evict them, and the next segment of an evicted one
        // would go to the director's own stack, which answers with a reset.
        const GAP: u32 = 10_000;
        let mut rounds = 0;
        let mut next = GAP;
        while next <= FLOOD {
            while sent.load(Ordering::SeqCst) < next {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            for (i, (c, body)) in conns.iter_mut().enumerate() {
                let got = c.request().unwrap_or_else(|e| {
                    panic!(
                        "connection {i} ({}) failed during the flood (after {next} SYNs): {e}\n{}",
                        c.local_addr(),
                        d.log()
                    )
                });
                assert_eq!(got.trim(), body, "connection {i} changed real server");
            }
            rounds += 1;
            next += GAP;
        }
        rounds
    });
    for (i, (c, body)) in conns.iter_mut().enumerate() {
        let got = c
            .request()
            .unwrap_or_else(|e| panic!("connection {i} failed after the flood: {e}"));
        assert_eq!(got.trim(), body, "connection {i} changed real server");
    }
    let after = d.status();
    // New clients are still served.
    for i in 0..5 {
        curl(lab.client, &format!("http://{}/", lab.vip))
            .unwrap_or_else(|e| panic!("new client {i} after the flood: {e}"));
    }

    assert_eq!(
        established(),
        want,
        "every connection is still established after the flood\n{after:#}"
    );
    let opened = |s: &serde_json::Value| s["syn_flood_defence"]["embryonic_opened"].as_u64();
    let flood_seen = opened(&after).unwrap_or(0) - opened(&before).unwrap_or(0);
    assert!(
        flood_seen > 10 * TABLE as u64,
        "the flood should have reached the balancer (over 10x the table): {flood_seen} of \
         {FLOOD} SYNs opened embryonic connections\n{after:#}"
    );
    // A client's segment whose entry was gone would go to the director's stack, which resets
    // it. (Not `pass_no_reply_conn`: under a NAT flood the real servers' SYN-ACKs to spoofed
    // sources whose embryos were evicted count there. A lost reply entry of one of the 20
    // would have failed its request above.)
    let pass_no_conn = |s: &serde_json::Value| s["counters"]["pass_no_conn"].as_u64();
    assert_eq!(
        pass_no_conn(&after),
        pass_no_conn(&before),
        "no segment of a connection found its entry gone\n{after:#}"
    );
    eprintln!(
        "{rounds} rounds of 20 requests during the flood; {flood_seen} spoofed SYNs balanced; \
         defence: {}",
        after["syn_flood_defence"]
    );
}
