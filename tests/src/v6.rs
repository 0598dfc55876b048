//! IPv6 for the data-path fixtures, the IPv6 packet fuzzer and the per-path bench: frames
//! built from scratch (checksums computed here, never with the data path's helpers), the
//! test's own reading of IPv6 packets, and an IPv6 service written into a loaded balancer's
//! pinned maps exactly as the layout-5 contract in `lb_common` says the control plane
//! writes it (the control plane's IPv6 model is another change; these exercise the data
//! path reading what it is given).

use std::{net::Ipv6Addr, path::Path};

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{
    Addr, Backend, NatHop, Service, Settings, SvcKey, SvcSlot, backend_flags, fwd, probe_home,
    sched, settings_flags,
    size::{NAT_RS_SLOTS, SVC_SLOTS},
    svc_flags,
};

use crate::packet::{TCP_ACK, checksum};

pub const NH_HOP: u8 = 0;
pub const NH_TCP: u8 = 6;
pub const NH_UDP: u8 = 17;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAG: u8 = 44;
pub const NH_ICMP6: u8 = 58;
pub const NH_NONE: u8 = 59;
pub const NH_DST: u8 = 60;

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

pub fn addr(a: Ipv6Addr) -> Addr {
    Addr::from_octets(a.octets())
}

/// An extension header in a chain.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop (`NH_HOP`), routing (`NH_ROUTING`) or destination options (`NH_DST`) of
    /// `(len8 + 1) * 8` bytes.
    Opts(u8, u8),
    /// A fragment header with this offset/flags field.
    Frag(u16),
}

fn ext_bytes(e: Ext, next: u8) -> (u8, Vec<u8>) {
    match e {
        Ext::Opts(kind, len8) => {
            let total = (len8 as usize + 1) * 8;
            let mut b = vec![next, len8];
            if kind == NH_ROUTING {
                // Routing type 253 (experimental, RFC 4727), segments left 0: ignored.
                b.extend_from_slice(&[253, 0]);
            } else {
                // One PadN option filling the rest.
                b.extend_from_slice(&[1, (total - 4) as u8]);
            }
            b.resize(total, 0);
            (kind, b)
        }
        Ext::Frag(field) => {
            let mut b = vec![next, 0];
            b.extend_from_slice(&field.to_be_bytes());
            b.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            (NH_FRAG, b)
        }
    }
}

/// The upper-layer checksum over the IPv6 pseudo-header and `l4` (RFC 8200 8.1); 0 over a
/// packet whose checksum is right.
pub fn l4_csum(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, l4: &[u8]) -> u16 {
    checksum(&[
        &src.octets(),
        &dst.octets(),
        &(l4.len() as u32).to_be_bytes(),
        &[0, 0, 0, nh],
        l4,
    ])
}

/// A TCP segment (20-byte header, `payload`) with its checksum.
pub fn tcp_seg_with(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes());
    t.extend_from_slice(&(if flags & TCP_ACK != 0 { 1u32 } else { 0 }).to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = l4_csum(src, dst, NH_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

pub fn tcp_seg(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    tcp_seg_with(src, sport, dst, dport, flags, b"hello v6")
}

/// A UDP datagram with its checksum.
pub fn udp_dgram(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let payload = b"a datagram";
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = l4_csum(src, dst, NH_UDP, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An Ethernet frame (`dmac` ← `smac`) with an IPv6 packet: `exts`, then `nh`/`l4`.
#[allow(clippy::too_many_arguments)]
pub fn frame6_eth(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    exts: &[Ext],
    nh: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut chain = Vec::new();
    let mut next = nh;
    for &e in exts.iter().rev() {
        let (kind, mut b) = ext_bytes(e, next);
        b.extend_from_slice(&chain);
        chain = b;
        next = kind;
    }
    chain.extend_from_slice(l4);
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(chain.len() as u16).to_be_bytes());
    f.push(next);
    f.push(hop);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&chain);
    f
}

/// An ICMPv6 error of `kind` (`info`: Packet Too Big's MTU) from `from` to `to` quoting the
/// IPv6 packet `quoted`, with its checksum.
pub fn icmp6_error(from: Ipv6Addr, to: Ipv6Addr, kind: u8, info: u32, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&info.to_be_bytes());
    m.extend_from_slice(quoted);
    let c = l4_csum(from, to, NH_ICMP6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An IPv6 packet as the test reads it.
#[derive(Clone, Debug)]
pub struct Ip6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop: u8,
    /// The upper-layer protocol (past the extension headers).
    pub nh: u8,
    /// The upper-layer bytes, to the payload length's end.
    pub l4: Vec<u8>,
}

/// Reads an IPv6 packet (no Ethernet header): `Err` says what is wrong with it (truncated,
/// a header past the payload, a chain longer than `max_ext`).
pub fn read(ip: &[u8], max_ext: usize) -> Result<Ip6, String> {
    if ip.len() < 40 {
        return Err(format!("{} bytes: no IPv6 header", ip.len()));
    }
    if ip[0] >> 4 != 6 {
        return Err("version is not 6".into());
    }
    let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if ip.len() < 40 + plen {
        return Err(format!("payload length {plen} past the {} bytes", ip.len()));
    }
    let ip = &ip[..40 + plen];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    let mut nh = ip[6];
    let mut off = 40;
    let mut n = 0;
    while matches!(nh, NH_HOP | NH_ROUTING | NH_DST | NH_FRAG) {
        n += 1;
        if n > max_ext {
            return Err(format!("more than {max_ext} extension headers"));
        }
        if off + 8 > ip.len() {
            return Err("an extension header past the payload".into());
        }
        let len = if nh == NH_FRAG {
            8
        } else {
            (ip[off + 1] as usize + 1) * 8
        };
        if off + len > ip.len() {
            return Err("an extension header past the payload".into());
        }
        nh = ip[off];
        off += len;
    }
    Ok(Ip6 {
        src,
        dst,
        hop: ip[7],
        nh,
        l4: ip[off..].to_vec(),
    })
}

/// `read`, panicking with the packet when it is not a whole IPv6 packet.
pub fn parse(ip: &[u8]) -> Ip6 {
    let p = read(ip, 64).unwrap_or_else(|e| panic!("{e}: {ip:02x?}"));
    assert_eq!(
        ip.len(),
        40 + u16::from_be_bytes([ip[4], ip[5]]) as usize,
        "payload length vs packet: {ip:02x?}"
    );
    p
}

/// Whether the upper-layer checksum of a parsed packet is right.
pub fn l4_ok(p: &Ip6) -> bool {
    l4_csum(p.src, p.dst, p.nh, &p.l4) == 0
}

// ---------------------------------------------------------------------------------------
// An IPv6 service in a loaded balancer's pinned maps.

/// Ids the IPv6 services take, clear of what `Dataplane::sync` hands out for the IPv4 ones
/// of the same test (from 1 up); their scheduling tables go at the top of the shared table
/// (600 slots each, from the end down), clear of the IPv4 services' regions (from slot 0).
pub const FIRST_SVC_ID: u32 = 4000;
pub const FIRST_BACKEND: u32 = 100_000;
const TABLE_ROOM: u32 = 600;

/// A real server of an IPv6 service, as the control plane resolves it.
#[derive(Clone, Debug)]
pub struct Dest {
    pub addr: Ipv6Addr,
    pub port: u16,
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub mtu: u16,
}

#[derive(Clone, Debug)]
pub struct Svc {
    /// 0, 1, 2…: which of the IPv6 services of this balancer (ids, tables).
    pub index: u32,
    pub vip: Ipv6Addr,
    pub port: u16,
    pub proto: u8,
    pub sched: u8,
    pub fwd: u8,
    pub persist_plen: Option<u32>,
    pub tun_src: Ipv6Addr,
    pub dests: Vec<Dest>,
}

fn map(pins: &Path, name: &str) -> MapData {
    MapData::from_pin(pins.join("maps").join(name)).unwrap_or_else(|e| panic!("map {name}: {e}"))
}

fn array<V: aya::Pod>(pins: &Path, name: &str) -> Array<MapData, V> {
    Array::try_from(Map::Array(map(pins, name))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Writes `s` into the live half of the balancer pinned under `pins` (its
/// `Dataplane::open` `pin_dir`), as the control plane would; sh gets 256 buckets, bucket
/// `b` → the `b % n`-th real server. Returns the backend ids in `dests` order.
pub fn install(pins: &Path, s: &Svc) -> Vec<u32> {
    let mut settings: Array<_, Settings> = array(pins, lb_common::maps::SETTINGS);
    let mut st = settings.get(&0, 0).unwrap();
    let half = st.svc_half & 1;
    if s.fwd == fwd::NAT {
        st.flags |= settings_flags::HAS_NAT;
    }
    settings.set(0, st, 0).unwrap();
    let id = FIRST_SVC_ID + s.index;
    let n = s.dests.len() as u32;
    let mut table: Array<_, u32> = array(pins, lb_common::maps::SCHED_TABLE);
    let base = table.len() - (s.index + 1) * TABLE_ROOM;
    let svc = Service {
        id,
        sched: s.sched,
        flags: if s.persist_plen.is_some() {
            svc_flags::PERSISTENT
        } else {
            0
        },
        table_off: base,
        table_len: if s.sched == sched::SH { 256 } else { n },
        members_off: base + 300,
        members_len: n,
        persist_timeout: 300,
        persist_mask: s.persist_plen.unwrap_or(128),
        ..Service::default()
    };
    let mut backends: Array<_, Backend> = array(pins, lb_common::maps::BACKENDS);
    let mut nat_rs: Array<_, SvcSlot> = array(pins, lb_common::maps::NAT_RS);
    let mut ids = Vec::new();
    for (i, d) in s.dests.iter().enumerate() {
        let bid = FIRST_BACKEND + s.index * 100 + i as u32;
        ids.push(bid);
        let be = Backend {
            addr: addr(d.addr),
            port: d.port.to_be(),
            fwd: s.fwd,
            flags: backend_flags::AVAILABLE | backend_flags::NEIGH_OK,
            svc_id: id,
            ifindex: d.ifindex,
            dmac: d.dmac,
            smac: d.smac,
            weight: 1,
            vaddr: addr(s.vip),
            vport: s.port.to_be(),
            mtu: d.mtu,
            tun_src: addr(s.tun_src),
            ..Backend::default()
        };
        backends.set(bid, be, 0).unwrap();
        table.set(base + 300 + i as u32, bid, 0).unwrap();
        if s.sched != sched::SH {
            table.set(base + i as u32, bid, 0).unwrap();
        }
        if s.fwd == fwd::NAT {
            let key = SvcKey::of(addr(d.addr), d.port.to_be(), s.proto);
            let v = Service {
                id,
                flags: svc_flags::NAT_RS,
                ..Service::default()
            };
            set_slot(&mut nat_rs, half, NAT_RS_SLOTS, key, v);
        }
    }
    if s.sched == sched::SH {
        for b in 0..256u32 {
            table.set(base + b, ids[(b % n) as usize], 0).unwrap();
        }
    }
    let mut svcs: Array<_, SvcSlot> = array(pins, lb_common::maps::SVC_TABLE);
    let key = SvcKey::of(addr(s.vip), s.port.to_be(), s.proto);
    set_slot(&mut svcs, half, SVC_SLOTS, key, svc);
    let mut info: Array<_, Service> = array(pins, lb_common::maps::SVC_INFO);
    info.set(id, svc, 0).unwrap();
    ids
}

/// Linear probing from the key's home slot, as the control plane fills the table.
fn set_slot(t: &mut Array<MapData, SvcSlot>, half: u32, slots: u32, key: SvcKey, svc: Service) {
    let home = probe_home(&key, slots);
    for i in 0..lb_common::size::SVC_MAX_PROBE {
        let slot = half * slots + ((home + i) & (slots - 1));
        let cur = t.get(&slot, 0).unwrap();
        if cur.svc.id == 0 || cur.key.same(&key) {
            t.set(slot, SvcSlot { key, svc }, 0).unwrap();
            return;
        }
    }
    panic!("no free slot for {key:?} within the probe limit");
}

/// Where replies to NAT client `client` go, as the data path caches it after a FIB lookup.
pub fn client_hop(pins: &Path, client: Ipv6Addr, ifindex: u32, dmac: [u8; 6], smac: [u8; 6]) {
    let settings: Array<_, Settings> = array(pins, lb_common::maps::SETTINGS);
    let epoch = settings.get(&0, 0).unwrap().route_epoch;
    let mut hops: HashMap<_, Addr, NatHop> =
        HashMap::try_from(Map::LruHashMap(map(pins, lb_common::maps::NAT_HOPS))).unwrap();
    hops.insert(
        addr(client),
        NatHop {
            ifindex,
            epoch,
            dmac,
            smac,
            mtu: 0,
            _pad: 0,
        },
        0,
    )
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_with_right_checksums() {
        let (c, v) = (v6("2001:db8:c::7"), v6("2001:db8::100"));
        let f = frame6_eth(
            [2; 6],
            [3; 6],
            c,
            v,
            64,
            &[Ext::Opts(NH_HOP, 0), Ext::Frag(1), Ext::Opts(NH_DST, 2)],
            NH_TCP,
            &tcp_seg(c, 1, v, 80, 2),
        );
        let p = parse(&f[14..]);
        assert_eq!((p.src, p.dst, p.hop, p.nh), (c, v, 64, NH_TCP));
        assert!(l4_ok(&p));
        assert_eq!(p.l4.len(), 28);
        // One flipped bit: the checksum says so.
        let mut g = f.clone();
        let n = g.len();
        g[n - 1] ^= 1;
        assert!(!l4_ok(&parse(&g[14..])));
        assert!(read(&f[14..f.len() - 1], 8).is_err(), "truncated");
        assert!(read(&f[14..], 2).is_err(), "three headers, two allowed");
    }
}
