//! VRRP advertisements on the wire: VRRPv2 (RFC 3768) and VRRPv3 for IPv4 (RFC 5798),
//! encoded and checked the way keepalived checks them (`vrrp_check_packet` in its vrrp.c), so
//! that a keepalived peer and this one accept and refuse the same packets.

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const PROTO: u8 = 112;
/// The multicast group adverts go to (RFC 5798 §5.1.1.2).
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Adverts are sent with TTL 255 and a receiver drops any other (RFC 5798 §5.1.1.3): a packet
/// that crossed a router cannot be one.
pub const TTL: u8 = 255;
/// Type 1 is the only VRRP packet type.
const TYPE_ADVERT: u8 = 1;
/// v2's authentication data: 8 bytes after the addresses.
pub const AUTH_LEN: usize = 8;
/// The fixed part of the header, before the addresses.
const HEADER_LEN: usize = 8;

/// v2 authentication (RFC 3768 §5.3.6): none, or a simple password in clear (keepalived's
/// `auth_type PASS`, 8 bytes, zero-padded). IPsec AH (type 2) is not supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    Pass([u8; AUTH_LEN]),
}

impl Auth {
    /// keepalived's `auth_pass`: at most 8 bytes are used (longer ones are cut, as keepalived
    /// does), the rest zero.
    pub fn pass(password: &str) -> Auth {
        let mut p = [0u8; AUTH_LEN];
        let b = password.as_bytes();
        let n = b.len().min(AUTH_LEN);
        p[..n].copy_from_slice(&b[..n]);
        Auth::Pass(p)
    }

    fn type_code(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Pass(_) => 1,
        }
    }
}

/// One advertisement's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// 2 or 3.
    pub version: u8,
    pub vrid: u8,
    pub priority: u8,
    /// The advertisement interval in centiseconds (v2 carries whole seconds: ×100 here).
    pub adver_int_cs: u16,
    pub addrs: Vec<Ipv4Addr>,
    /// v2 only; always `None` for v3.
    pub auth: Auth,
}

/// The Internet checksum (RFC 1071) of `data`, continuing from `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// v3's checksum starts from the IPv4 pseudo-header (RFC 5798 §5.2.8); v2's covers the VRRP
/// message alone.
fn pseudo_sum(version: u8, src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> u32 {
    if version != 3 {
        return 0;
    }
    let mut ph = [0u8; 12];
    ph[0..4].copy_from_slice(&src.octets());
    ph[4..8].copy_from_slice(&dst.octets());
    ph[9] = PROTO;
    ph[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    sum16(0, &ph)
}

impl Advert {
    /// The VRRP message (what follows the IPv4 header), with its checksum; `src` and `dst`
    /// are the IPv4 header's addresses (v3's pseudo-header).
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + 4 * self.addrs.len() + AUTH_LEN);
        b.push((self.version << 4) | TYPE_ADVERT);
        b.push(self.vrid);
        b.push(self.priority);
        b.push(self.addrs.len() as u8);
        if self.version == 3 {
            // 4 reserved bits, then Max Adver Int in centiseconds (12 bits).
            b.extend_from_slice(&(self.adver_int_cs & 0x0fff).to_be_bytes());
        } else {
            b.push(self.auth.type_code());
            b.push((self.adver_int_cs / 100) as u8);
        }
        b.extend_from_slice(&[0, 0]);
        for a in &self.addrs {
            b.extend_from_slice(&a.octets());
        }
        if self.version != 3 {
            match self.auth {
                Auth::None => b.extend_from_slice(&[0; AUTH_LEN]),
                Auth::Pass(p) => b.extend_from_slice(&p),
            }
        }
        let csum = fold(sum16(pseudo_sum(self.version, src, dst, b.len()), &b));
        b[6..8].copy_from_slice(&csum.to_be_bytes());
        b
    }
}

/// Why a received packet was not taken as an advertisement for the instance; each is
/// counted in `lb-ctl status` under [`RxError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxError {
    /// Too short, lengths that do not add up, not IPv4, not VRRP, not an advertisement.
    Malformed,
    /// TTL other than 255 on a multicast advert.
    BadTtl,
    WrongVersion,
    BadChecksum,
    /// Another virtual router's advert (normal on a shared segment; counted apart).
    WrongVrid,
    /// Unknown auth type, another auth type than ours, or the wrong password.
    BadAuth,
    /// v2: another advert interval than ours (keepalived drops these: two routers with
    /// different timers would both be master).
    IntervalMismatch,
    /// Unicast mode: not from one of our `unicast_peer`s; or multicast when unicast is
    /// configured, and the reverse.
    UnknownPeer,
}

impl RxError {
    pub fn kind(&self) -> &'static str {
        match self {
            RxError::Malformed => "malformed",
            RxError::BadTtl => "bad_ttl",
            RxError::WrongVersion => "wrong_version",
            RxError::BadChecksum => "bad_checksum",
            RxError::WrongVrid => "wrong_vrid",
            RxError::BadAuth => "bad_auth",
            RxError::IntervalMismatch => "interval_mismatch",
            RxError::UnknownPeer => "unknown_peer",
        }
    }

    pub const ALL: [RxError; 8] = [
        RxError::Malformed,
        RxError::BadTtl,
        RxError::WrongVersion,
        RxError::BadChecksum,
        RxError::WrongVrid,
        RxError::BadAuth,
        RxError::IntervalMismatch,
        RxError::UnknownPeer,
    ];
}

/// What a receiver expects: its own instance's settings.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    pub version: u8,
    pub vrid: u8,
    pub auth: Auth,
    pub adver_int_cs: u16,
    /// Unicast mode: adverts must come from one of these (TTL is then not checked, as in
    /// keepalived: a unicast peer may be routed).
    pub unicast_peers: &'a [Ipv4Addr],
}

/// A checked advert: its sender and contents, and whether its address list differs from
/// ours (counted, not refused, as keepalived does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub src: Ipv4Addr,
    pub advert: Advert,
}

/// Checks a whole IPv4 packet as read from a raw socket (IP header included), in keepalived's
/// order: lengths, TTL, version, vrid, auth, interval, type, checksum, unicast source.
pub fn check(pkt: &[u8], want: &Expect) -> Result<Received, RxError> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return Err(RxError::Malformed);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    // Ethernet pads short frames to 60 bytes; the IP total length is what counts.
    if ihl < 20 || total < ihl || total > pkt.len() || pkt[9] != PROTO {
        return Err(RxError::Malformed);
    }
    let ttl = pkt[8];
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let v = &pkt[ihl..total];
    if v.len() < HEADER_LEN {
        return Err(RxError::Malformed);
    }
    let version = v[0] >> 4;
    let naddr = usize::from(v[3]);
    let expected = HEADER_LEN + 4 * naddr + if version == 3 { 0 } else { AUTH_LEN };
    if !(version == 2 || version == 3) || v.len() != expected {
        return Err(if version == want.version {
            RxError::Malformed
        } else {
            RxError::WrongVersion
        });
    }
    let unicast = !want.unicast_peers.is_empty();
    if !unicast && ttl != TTL {
        return Err(RxError::BadTtl);
    }
    if version != want.version {
        return Err(RxError::WrongVersion);
    }
    if v[1] != want.vrid {
        return Err(RxError::WrongVrid);
    }
    let auth = if version == 2 {
        let data = &v[expected - AUTH_LEN..];
        let auth = match v[4] {
            0 => Auth::None,
            1 => Auth::Pass(data.try_into().expect("8 bytes")),
            _ => return Err(RxError::BadAuth),
        };
        if auth != want.auth {
            return Err(RxError::BadAuth);
        }
        if u16::from(v[5]) * 100 != want.adver_int_cs {
            return Err(RxError::IntervalMismatch);
        }
        auth
    } else {
        Auth::None
    };
    if v[0] & 0x0f != TYPE_ADVERT {
        return Err(RxError::Malformed);
    }
    if fold(sum16(pseudo_sum(version, src, dst, v.len()), v)) != 0 {
        return Err(RxError::BadChecksum);
    }
    if dst.is_multicast() == unicast || (unicast && !want.unicast_peers.contains(&src)) {
        return Err(RxError::UnknownPeer);
    }
    let adver_int_cs = if version == 3 {
        u16::from_be_bytes([v[4], v[5]]) & 0x0fff
    } else {
        u16::from(v[5]) * 100
    };
    let addrs = v[HEADER_LEN..HEADER_LEN + 4 * naddr]
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect();
    Ok(Received {
        src,
        advert: Advert {
            version,
            vrid: v[1],
            priority: v[2],
            adver_int_cs,
            addrs,
            auth,
        },
    })
}

/// A gratuitous ARP frame announcing `ip` at `mac`: keepalived sends an ARP request with the
/// sender and target both the VIP, to the broadcast address.
pub fn garp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&[0xff; 6]);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    /// An IPv4 header for `payload` (checksum left 0: the receiver does not check it, the
    /// kernel did).
    fn ip(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, PROTO, 0, 0];
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    /// RFC 1071 written out differently from the code under test: a plain sum of 16-bit
    /// words with the carries added at the end.
    fn rfc1071(bytes: &[u8]) -> u16 {
        let mut words: Vec<u64> = bytes
            .chunks(2)
            .map(|c| (u64::from(c[0]) << 8) | u64::from(*c.get(1).unwrap_or(&0)))
            .collect();
        let mut s: u64 = words.drain(..).sum();
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    fn expect_v2(pass: &str) -> Expect<'static> {
        Expect {
            version: 2,
            vrid: 51,
            auth: Auth::pass(pass),
            adver_int_cs: 100,
            unicast_peers: &[],
        }
    }

    #[test]
    fn v2_matches_a_hand_built_packet() {
        // vrid 51, priority 100, one address 192.0.2.100, PASS "1111", advert_int 1.
        let mut want = vec![
            0x21, 51, 100, 1, 1, 1, 0, 0, 192, 0, 2, 100, b'1', b'1', b'1', b'1', 0, 0, 0, 0,
        ];
        let c = rfc1071(&want);
        want[6..8].copy_from_slice(&c.to_be_bytes());
        let a = Advert {
            version: 2,
            vrid: 51,
            priority: 100,
            adver_int_cs: 100,
            addrs: vec![Ipv4Addr::new(192, 0, 2, 100)],
            auth: Auth::pass("1111"),
        };
        assert_eq!(a.encode(SRC, GROUP), want);
        let got = check(&ip(SRC, GROUP, 255, &want), &expect_v2("1111")).unwrap();
        assert_eq!(
            got,
            Received {
                src: SRC,
                advert: a
            }
        );
    }

    #[test]
    fn v3_checksum_covers_the_pseudo_header() {
        let addrs = [
            Ipv4Addr::new(198, 51, 100, 100),
            Ipv4Addr::new(198, 51, 100, 101),
        ];
        let mut msg = vec![0x31, 7, 200, 2, 0x00, 100, 0, 0];
        for a in addrs {
            msg.extend_from_slice(&a.octets());
        }
        let mut ph = Vec::new();
        ph.extend_from_slice(&SRC.octets());
        ph.extend_from_slice(&GROUP.octets());
        ph.extend_from_slice(&[0, PROTO, 0, msg.len() as u8]);
        ph.extend_from_slice(&msg);
        let c = rfc1071(&ph);
        msg[6..8].copy_from_slice(&c.to_be_bytes());
        let a = Advert {
            version: 3,
            vrid: 7,
            priority: 200,
            adver_int_cs: 100,
            addrs: addrs.to_vec(),
            auth: Auth::None,
        };
        assert_eq!(a.encode(SRC, GROUP), msg);
        let e = Expect {
            version: 3,
            vrid: 7,
            auth: Auth::None,
            adver_int_cs: 100,
            unicast_peers: &[],
        };
        assert_eq!(check(&ip(SRC, GROUP, 255, &msg), &e).unwrap().advert, a);
        // The same message from another source fails: the pseudo-header is in the sum.
        let other = Ipv4Addr::new(192, 0, 2, 3);
        assert_eq!(
            check(&ip(other, GROUP, 255, &msg), &e),
            Err(RxError::BadChecksum)
        );
        // 12-bit interval: 40.95 s is the largest.
        let mut big = a.clone();
        big.adver_int_cs = 4095;
        let e = Expect {
            adver_int_cs: 4095,
            ..e
        };
        assert_eq!(
            check(&ip(SRC, GROUP, 255, &big.encode(SRC, GROUP)), &e)
                .unwrap()
                .advert
                .adver_int_cs,
            4095
        );
    }

    #[test]
    fn round_trips() {
        for version in [2, 3] {
            for n in [0usize, 1, 5, 20] {
                let a = Advert {
                    version,
                    vrid: 255,
                    priority: 0,
                    adver_int_cs: if version == 2 { 300 } else { 50 },
                    addrs: (0..n)
                        .map(|i| Ipv4Addr::new(203, 0, 113, i as u8))
                        .collect(),
                    auth: if version == 2 {
                        Auth::pass("secretlong")
                    } else {
                        Auth::None
                    },
                };
                let e = Expect {
                    version,
                    vrid: 255,
                    auth: a.auth,
                    adver_int_cs: a.adver_int_cs,
                    unicast_peers: &[],
                };
                let got = check(&ip(SRC, GROUP, 255, &a.encode(SRC, GROUP)), &e).unwrap();
                assert_eq!(got.advert, a, "v{version} with {n} addresses");
            }
        }
        // Only the first 8 bytes of a password count, as in keepalived.
        assert_eq!(Auth::pass("secretlong"), Auth::pass("secretlo"));
    }

    #[test]
    fn bad_packets_are_refused_with_their_kind() {
        let a = Advert {
            version: 2,
            vrid: 51,
            priority: 100,
            adver_int_cs: 100,
            addrs: vec![Ipv4Addr::new(192, 0, 2, 100)],
            auth: Auth::pass("1111"),
        };
        let good = a.encode(SRC, GROUP);
        let e = expect_v2("1111");
        assert!(check(&ip(SRC, GROUP, 255, &good), &e).is_ok());
        // Every truncation of the message is refused.
        for n in 0..good.len() {
            let r = check(&ip(SRC, GROUP, 255, &good[..n]), &e);
            assert!(
                matches!(r, Err(RxError::Malformed) | Err(RxError::WrongVersion)),
                "{n}: {r:?}"
            );
        }
        assert_eq!(check(&[0x45; 10], &e), Err(RxError::Malformed));
        assert_eq!(check(&ip(SRC, GROUP, 64, &good), &e), Err(RxError::BadTtl));
        assert_eq!(
            check(&ip(SRC, GROUP, 255, &good), &expect_v2("2222")),
            Err(RxError::BadAuth)
        );
        let mut bad = good.clone();
        bad[7] ^= 1;
        assert_eq!(
            check(&ip(SRC, GROUP, 255, &bad), &e),
            Err(RxError::BadChecksum)
        );
        let mut other = a.clone();
        other.vrid = 52;
        assert_eq!(
            check(&ip(SRC, GROUP, 255, &other.encode(SRC, GROUP)), &e),
            Err(RxError::WrongVrid)
        );
        let mut v3 = a.clone();
        v3.version = 3;
        v3.auth = Auth::None;
        assert_eq!(
            check(&ip(SRC, GROUP, 255, &v3.encode(SRC, GROUP)), &e),
            Err(RxError::WrongVersion)
        );
        let mut slow = a.clone();
        slow.adver_int_cs = 200;
        assert_eq!(
            check(&ip(SRC, GROUP, 255, &slow.encode(SRC, GROUP)), &e),
            Err(RxError::IntervalMismatch)
        );
        // A count that does not match the length.
        let mut count = good.clone();
        count[3] = 2;
        assert_eq!(
            check(&ip(SRC, GROUP, 255, &count), &e),
            Err(RxError::Malformed)
        );
        // Type 2 does not exist.
        let mut t = good.clone();
        t[0] = 0x22;
        assert_eq!(check(&ip(SRC, GROUP, 255, &t), &e), Err(RxError::Malformed));
        // Auth type 2 (AH) is not supported: refused as bad auth.
        let mut ah = good.clone();
        ah[4] = 2;
        assert_eq!(check(&ip(SRC, GROUP, 255, &ah), &e), Err(RxError::BadAuth));
        // Unicast mode: only the peers; multicast refused.
        let peer = [Ipv4Addr::new(192, 0, 2, 3)];
        let uni = Expect {
            unicast_peers: &peer,
            ..e.clone()
        };
        let me = Ipv4Addr::new(192, 0, 2, 9);
        let from_peer = a.encode(peer[0], me);
        // TTL is not checked for unicast (a peer may be routed).
        assert!(check(&ip(peer[0], me, 7, &from_peer), &uni).is_ok());
        assert_eq!(
            check(&ip(SRC, me, 255, &a.encode(SRC, me)), &uni),
            Err(RxError::UnknownPeer)
        );
        assert_eq!(
            check(&ip(peer[0], GROUP, 255, &good), &uni),
            Err(RxError::UnknownPeer)
        );
        // Ethernet padding after the IP total length is fine.
        let mut padded = ip(SRC, GROUP, 255, &good);
        padded.extend_from_slice(&[0; 6]);
        assert!(check(&padded, &e).is_ok());
    }

    /// Random and mutated packets never panic the checker, and only a packet that still
    /// passes every check is taken (the checker is the daemon's only input from the wire).
    #[test]
    fn garbage_never_panics() {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let a = Advert {
            version: 2,
            vrid: 51,
            priority: 100,
            adver_int_cs: 100,
            addrs: vec![Ipv4Addr::new(192, 0, 2, 100)],
            auth: Auth::pass("1111"),
        };
        let good = ip(SRC, GROUP, 255, &a.encode(SRC, GROUP));
        let e = expect_v2("1111");
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut p = if rng.bool() {
                good.clone()
            } else {
                (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect()
            };
            for _ in 0..rng.usize(1..4) {
                if p.is_empty() {
                    break;
                }
                match rng.u8(0..3) {
                    0 => {
                        let i = rng.usize(..p.len());
                        p[i] = rng.u8(..);
                    }
                    1 => p.truncate(rng.usize(..p.len())),
                    _ => p.push(rng.u8(..)),
                }
            }
            if let Ok(r) = check(&p, &e) {
                // Whatever got through re-encodes to the same message (its checksum held).
                assert_eq!(r.advert.vrid, 51, "seed {seed}: {p:?}");
                assert_eq!(r.advert.auth, e.auth, "seed {seed}: {p:?}");
                accepted += 1;
            }
        }
        eprintln!("seed {seed}: {accepted} of 200000 mutated packets passed every check");
    }

    #[test]
    fn garp_is_an_arp_request_for_the_vip() {
        let f = garp([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &[192, 0, 2, 100]);
        assert_eq!(&f[38..42], &[192, 0, 2, 100]);
    }
}
