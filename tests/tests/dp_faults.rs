//! `BPF_PROG_TEST_RUN` fixtures for the data-path faults of issue 8 that need no routes:
//! IPv4 lengths against the frame, Ethernet padding, short L4 headers and header checksums,
//! through the balancer loaded and filled by the daemon's own code (DR services, real servers
//! "reached" through the ingress interface). The NAT/TUN/ICMP ones are in `nat_tun.rs`, which
//! has a namespace with routes and neighbours. Root only.

mod common;

use std::net::Ipv4Addr;

use common::*;
use lb_tests::packet::{Frame, TCP_ACK, TCP_SYN, checksum};
use lb_tests::xdp_run::{XDP_DROP, XDP_PASS, XDP_TX};

/// An address no service uses.
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);

/// Sets the IPv4 total length of an Ethernet frame and fixes the header checksum, so that
/// only the length is wrong.
fn with_tot_len(mut frame: Vec<u8>, tot_len: u16) -> Vec<u8> {
    frame[16..18].copy_from_slice(&tot_len.to_be_bytes());
    fix_ip_checksum(&mut frame);
    frame
}

fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum = checksum(&[&frame[14..14 + ihl]]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

fn in_bytes(f: &mut Fixture) -> (u64, u64) {
    let snap = f.dp().snapshot(None, &Default::default());
    let s = &snap.services[0].stats;
    (s.inpkts, s.inbytes)
}

#[test]
fn a_total_length_past_the_frame_is_never_forwarded_nor_counted() {
    let mut f = Fixture::new(web_rr());
    let syn = tcp(53000, TCP_SYN);
    // Claims 100 bytes more than the frame carries: the kernel's ip_rcv drops it.
    let liar = with_tot_len(syn.clone(), 140);
    let out = f.run(&liar);
    assert_eq!(
        out.action, XDP_DROP,
        "a SYN claiming 140 bytes in 40: {out:?}"
    );
    assert_eq!(f.counter("drop_malformed"), 1);
    assert_eq!(
        f.counter("new_conn"),
        0,
        "no connection from a malformed SYN"
    );
    // An established flow's packet that lies is dropped too, and not counted as traffic.
    f.forwarded_to(&syn);
    let before = in_bytes(&mut f);
    let ack = with_tot_len(tcp(53000, TCP_ACK), 1500);
    assert_eq!(f.run(&ack).action, XDP_DROP);
    assert_eq!(f.counter("drop_malformed"), 2);
    assert_eq!(
        in_bytes(&mut f),
        before,
        "InPkts/InBytes must not count a dropped packet's claim"
    );
    // A claim too short for the TCP header (ports inside the claim, the rest not).
    let short = with_tot_len(tcp(53001, TCP_SYN), 30);
    assert_eq!(f.run(&short).action, XDP_DROP);
    assert_eq!(f.counter("drop_malformed"), 3);
    // Not the balancer's business: to another address, the same lie passes untouched.
    let other = with_tot_len(
        Frame::tcp(CLIENT, 53002, OTHER, 80, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC),
        140,
    );
    let out = f.run(&other);
    assert_eq!((out.action, &out.data), (XDP_PASS, &other));
    // A claim shorter than the IP header and the ports names no service: the stack's.
    let tiny = with_tot_len(tcp(53003, TCP_SYN), 16);
    let out = f.run(&tiny);
    assert_eq!((out.action, &out.data), (XDP_PASS, &tiny));
    assert_eq!(f.counter("pass_malformed"), 1);
    assert_eq!(f.counter("new_conn"), 1);
}

#[test]
fn ethernet_padding_is_forwarded_but_not_counted_as_ip_bytes() {
    let mut f = Fixture::new(web_rr());
    // A minimum-size Ethernet frame: 54 bytes of headers, 6 of padding (not zero, as some
    // NICs leave it).
    let mut syn = tcp(53100, TCP_SYN);
    syn.extend_from_slice(&[0xaa; 6]);
    assert_eq!(syn.len(), 60);
    f.forwarded_to(&syn);
    assert_eq!(
        in_bytes(&mut f),
        (1, 40),
        "InBytes counts the IP packet (total length), not the frame"
    );
    let mut ack = tcp(53100, TCP_ACK);
    ack.extend_from_slice(&[0x55; 6]);
    f.forwarded_to(&ack);
    assert_eq!(in_bytes(&mut f), (2, 80));
}

#[test]
fn short_l4_headers_not_for_a_service_pass_untouched() {
    let mut f = Fixture::new(web_rr());
    // Well-formed IPv4 (lengths and checksum right) carrying 0..3 bytes of TCP or UDP.
    for (proto, l4_len) in [(6u8, 0usize), (6, 2), (17, 3), (17, 0)] {
        for dst in [OTHER, VIP] {
            // Built as another protocol (the builder would fill in a TCP/UDP checksum),
            // then relabelled, with the header checksum fixed.
            let mut frame =
                Frame::raw(CLIENT, dst, 253, vec![0x50; l4_len]).eth(DIRECTOR_MAC, ROUTER_MAC);
            frame[23] = proto;
            fix_ip_checksum(&mut frame);
            let out = f.run(&frame);
            assert_eq!(
                (out.action, &out.data),
                (XDP_PASS, &frame),
                "protocol {proto} with {l4_len} L4 bytes to {dst}: the stack's business"
            );
        }
    }
    assert_eq!(f.counter("pass_malformed"), 8);
    assert_eq!(f.counter("drop_malformed"), 0);
}

#[test]
fn a_bad_header_checksum_is_dropped_for_a_service_and_passed_otherwise() {
    let mut f = Fixture::new(web_rr());
    let mut syn = tcp(53200, TCP_SYN);
    syn[24] ^= 0x01;
    let out = f.run(&syn);
    assert_eq!(
        out.action, XDP_DROP,
        "a SYN with a bad header checksum: {out:?}"
    );
    assert_eq!(f.counter("drop_bad_csum"), 1);
    assert_eq!(f.counter("new_conn"), 0);
    // An established flow's packet too.
    f.forwarded_to(&tcp(53200, TCP_SYN));
    let mut ack = tcp(53200, TCP_ACK);
    ack[25] ^= 0x80;
    assert_eq!(f.run(&ack).action, XDP_DROP);
    assert_eq!(f.counter("drop_bad_csum"), 2);
    // With IP options the whole header is summed: a good one is forwarded, a bad one (the
    // error in an option word) dropped.
    let opts = Frame::tcp(CLIENT, 53201, VIP, 80, TCP_SYN, b"")
        .with_ip_options(&[1; 40])
        .eth(DIRECTOR_MAC, ROUTER_MAC);
    f.forwarded_to(&opts);
    let mut bad_opts = Frame::tcp(CLIENT, 53202, VIP, 80, TCP_SYN, b"")
        .with_ip_options(&[1; 40])
        .eth(DIRECTOR_MAC, ROUTER_MAC);
    bad_opts[14 + 56] ^= 0x10;
    assert_eq!(f.run(&bad_opts).action, XDP_DROP);
    assert_eq!(f.counter("drop_bad_csum"), 3);
    // Not for a service: untouched, for the stack to drop.
    let mut other =
        Frame::tcp(CLIENT, 53203, OTHER, 80, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC);
    other[24] ^= 0x01;
    let out = f.run(&other);
    assert_eq!((out.action, &out.data), (XDP_PASS, &other));
    assert_eq!(f.counter("new_conn"), 2);
    assert_eq!(f.counter("tx"), 2);
}

#[test]
fn every_ihl_and_truncation_of_a_service_packet_is_forwarded_only_when_whole() {
    // A SYN with each IHL (options of 0..40 bytes), cut at every length: forwarded only when
    // whole (the frame holds the total length), never aborted, never rewritten otherwise.
    let mut f = Fixture::new(web_rr());
    for (port, opt_words) in (54000..).zip(0..=10usize) {
        let frame = Frame::tcp(CLIENT, port, VIP, 80, TCP_SYN, b"data")
            .with_ip_options(&vec![1; 4 * opt_words])
            .eth(DIRECTOR_MAC, ROUTER_MAC);
        // (BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header.)
        for cut in 14..frame.len() {
            let out = f.run(&frame[..cut]);
            assert_ne!(
                out.action,
                XDP_TX,
                "IHL {}: a frame cut at {cut} of {} was forwarded",
                5 + opt_words,
                frame.len()
            );
            assert_eq!(out.data, &frame[..cut], "cut at {cut}: rewritten");
        }
        f.forwarded_to(&frame);
    }
    assert_eq!(f.counter("new_conn"), 11);
}

#[test]
fn martian_sources_never_open_a_connection() {
    // The kernel's routing drops packets from 0/8, 127/8, multicast, 240/4 and broadcast
    // before IPVS sees them; the balancer drops them too, and opens nothing for them.
    let mut f = Fixture::new(web_rr());
    let martians = [
        Ipv4Addr::new(0, 0, 0, 0),
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(240, 0, 0, 1),
        Ipv4Addr::BROADCAST,
    ];
    for (i, src) in martians.into_iter().enumerate() {
        let syn =
            Frame::tcp(src, 54000 + i as u16, VIP, 80, TCP_SYN, b"").eth(DIRECTOR_MAC, ROUTER_MAC);
        let out = f.run(&syn);
        assert_eq!(out.action, XDP_DROP, "a SYN from {src}: {out:?}");
    }
    assert_eq!(f.counter("drop_martian"), martians.len() as u64);
    assert_eq!(
        f.counter("new_conn"),
        0,
        "no connection for a martian source"
    );
    // A host address is served as before.
    f.forwarded_to(&tcp(54100, TCP_SYN));
    assert_eq!(f.counter("new_conn"), 1);
}

#[test]
fn an_icmp_error_not_sent_to_the_source_it_quotes_is_not_ours() {
    // An error about a reply of a DR connection (VIP → client) goes to the VIP; the same error
    // addressed elsewhere is about nothing of ours and passes untouched (IPVS only sees it
    // when it is addressed to the director).
    let mut f = Fixture::new(web_rr());
    f.forwarded_to(&tcp(54200, TCP_SYN));
    let reply = Frame::tcp(VIP, 80, CLIENT, 54200, TCP_ACK, b"").ip();
    let to_vip =
        Frame::icmp_error(CLIENT, VIP, 3, 3, [0; 4], &reply[..28]).eth(DIRECTOR_MAC, ROUTER_MAC);
    let out = f.run(&to_vip);
    assert_eq!(
        out.action, XDP_TX,
        "an error about a reply, to the VIP: {out:?}"
    );
    let elsewhere =
        Frame::icmp_error(CLIENT, OTHER, 3, 3, [0; 4], &reply[..28]).eth(DIRECTOR_MAC, ROUTER_MAC);
    let out = f.run(&elsewhere);
    assert_eq!(out.action, XDP_PASS, "the same error to {OTHER}: {out:?}");
    assert_eq!(out.data, elsewhere, "passed byte for byte");
    assert_eq!(f.counter("icmp_forwarded"), 1);
}

/// `lb_decap` loaded as `lb-ctl realserver --mode tun` loads it, decapsulating for `VIP`.
fn decap_program() -> aya::Ebpf {
    let mut bpf = aya::Ebpf::load(lb_ctl::realserver::DECAP_OBJ).expect("loading lb_decap");
    let mut vips: aya::maps::HashMap<_, lb_common::Addr, u8> =
        aya::maps::HashMap::try_from(bpf.map_mut(lb_common::maps::DECAP_VIPS).expect("decap map"))
            .expect("decap map type");
    vips.insert(lb_common::Addr::v4(u32::from_ne_bytes(VIP.octets())), 1, 0)
        .expect("adding the VIP");
    let prog: &mut aya::programs::Xdp = bpf
        .program_mut(lb_common::progs::DECAP)
        .expect("decap program")
        .try_into()
        .expect("XDP");
    prog.load().expect("loading lb_decap into the kernel");
    bpf
}

/// An IPIP frame (director → real server) around `inner`, with the outer total length and
/// header checksum as given (`None`: the right ones).
fn ipip(inner: &[u8], tot_len: Option<u16>, csum: Option<u16>) -> Vec<u8> {
    let tot = tot_len.unwrap_or((20 + inner.len()) as u16);
    let mut outer = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 4, 0, 0];
    outer[2..4].copy_from_slice(&tot.to_be_bytes());
    outer.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 11]);
    let sum = csum.unwrap_or_else(|| checksum(&[&outer]));
    outer[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = lb_tests::packet::eth_header(rs_mac(1), DIRECTOR_MAC, 0x0800);
    frame.extend_from_slice(&outer);
    frame.extend_from_slice(inner);
    frame
}

#[test]
fn lb_decap_strips_only_outer_headers_the_kernel_would_accept() {
    let bpf = decap_program();
    let prog: &aya::programs::Xdp = bpf
        .program(lb_common::progs::DECAP)
        .expect("decap program")
        .try_into()
        .expect("XDP");
    let inner = Frame::tcp(CLIENT, 55000, VIP, 80, TCP_SYN, b"").ip();
    let run = |frame: &[u8]| lb_tests::xdp_run::run_xdp(prog, frame, 1, 0).expect("test run");

    let good = ipip(&inner, None, None);
    let out = run(&good);
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(
        &out.data[14..],
        &inner[..],
        "the inner packet, decapsulated: {out:?}"
    );

    // The outer header claims more than the frame carries, or less than two headers, or its
    // checksum is wrong: the kernel's ip_rcv would drop it, so it is left as it is.
    let bad = [
        (
            "total length past the frame",
            ipip(&inner, Some(0xffff), None),
        ),
        (
            "total length short of the inner header",
            ipip(&inner, Some(30), None),
        ),
        ("bad header checksum", ipip(&inner, None, Some(0x1234))),
    ];
    for (what, frame) in bad {
        let frame = if what == "bad header checksum" {
            frame
        } else {
            // Only the length is wrong: the checksum matches the lying header.
            let mut f = frame;
            f[24..26].copy_from_slice(&[0, 0]);
            let sum = checksum(&[&f[14..34]]);
            f[24..26].copy_from_slice(&sum.to_be_bytes());
            f
        };
        let out = run(&frame);
        assert_eq!(out.action, XDP_PASS, "{what}: {out:?}");
        assert_eq!(out.data, frame, "{what}: passed untouched");
    }
}
