//! IPVS's sync messages on the wire (`net/netfilter/ipvs/ip_vs_sync.c`): the version 1 format
//! a master sends, and versions 1 and 0 as a kernel backup reads them. Pure byte work: no
//! sockets, no clock.
//!
//! Version 1 (all integers big-endian):
//!
//! ```text
//! header (8):  reserved=0 | syncid | size (u16, whole message) | nr_conns | version=1 | spare=0 (u16)
//! entry (v4: 36, v6: 72 bytes, then options), each starting 4-byte aligned:
//!   type (bit 0: IPv6) | protocol | ver_size (u16: version << 12 | entry size incl. options)
//!   flags (u32) | state (u16) | cport | vport | dport (u16) | fwmark (u32) | timeout (u32, s)
//!   caddr | vaddr | daddr (4 or 16 bytes each)
//!   options: type (u8) | len (u8, > 0) | data   (1 seq data, 2 PE data, 3 PE name;
//!            bit 0x40 set: optional, may be skipped; otherwise unknown = entry skipped)
//! ```
//!
//! The padding that aligns an entry is written before it (the master pads when it appends
//! the next one), so the last entry of a message ends unpadded and `size` counts no trailing
//! pad; a reader steps `(entry size + 3) & !3` to the next.
//!
//! Version 0 (IPv4 only, no timeouts): header `nr_conns | syncid | size` (4), entries of 24
//! bytes (`reserved | protocol | cport | vport | dport | caddr | vaddr | daddr | flags (u16) |
//! state`), each followed by 24 bytes of sequence data when its flags have `IN_SEQ|OUT_SEQ`.
//! A version 1 header starts with 0, which a version 0 reader takes as "no connections".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{SyncConn, conn_flags};

/// `SYNC_PROTO_VER`.
pub const VERSION: u8 = 1;
/// `IP_VS_SYNC_GROUP` and `IP_VS_SYNC_PORT`.
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 81);
pub const DEFAULT_PORT: u16 = 8848;
/// `sizeof(struct ip_vs_sync_mesg)` and `…_mesg_v0`.
pub const HEADER_LEN: usize = 8;
pub const HEADER_V0_LEN: usize = 4;
/// `sizeof(struct ip_vs_sync_v4)` / `…_v6` / `…_conn_v0` / `…_conn_options`.
pub const V4_LEN: usize = 36;
pub const V6_LEN: usize = 72;
pub const V0_CONN_LEN: usize = 24;
pub const SEQ_OPTIONS_LEN: usize = 24;
/// IPv4 + UDP headers: the default `sync_maxlen` is a 1500-byte MTU less these (1472), as
/// `start_sync_thread` sets it for a master.
pub const IPV4_UDP_HEADERS: usize = 28;
pub const DEFAULT_MAXLEN: usize = 1500 - IPV4_UDP_HEADERS;
/// The largest `sync_maxlen` (`65535 - hlen`).
pub const MAX_MAXLEN: usize = 65535 - IPV4_UDP_HEADERS;

/// `STYPE_F_INET6`, `SVER_SHIFT`, `SVER_MASK`.
const STYPE_F_INET6: u8 = 1;
const SVER_SHIFT: u16 = 12;
const SVER_MASK: u16 = 0x0fff;
/// Option types (`IPVS_OPT_*`); `IPVS_OPT_F_PARAM` marks an optional one.
const OPT_SEQ_DATA: u8 = 1;
const OPT_PE_DATA: u8 = 2;
const OPT_PE_NAME: u8 = 3;
const OPT_F_PARAM: u8 = 1 << (7 - 1);
/// `IP_VS_PEDATA_MAXLEN`, `IP_VS_PENAME_MAXLEN`.
const PEDATA_MAXLEN: usize = 255;
const PENAME_MAXLEN: usize = 16;

/// `IP_VS_CONN_F_BACKUP_MASK`: the flags a backup takes from a message.
pub const BACKUP_MASK: u32 = conn_flags::FWD_MASK
    | conn_flags::NOOUTPUT
    | conn_flags::INACTIVE
    | conn_flags::SEQ_MASK
    | conn_flags::NO_CPORT
    | conn_flags::TEMPLATE;

/// The most entries one message holds: `nr_conns` is one byte (the kernel's master would
/// wrap it with a `sync_maxlen` above ~9 KB; we close the message instead).
pub const MAX_CONNS: usize = 255;

/// The bytes `c` takes in a version 1 message (we send no options).
pub fn entry_len(c: &SyncConn) -> usize {
    match c.caddr {
        IpAddr::V4(_) => V4_LEN,
        IpAddr::V6(_) => V6_LEN,
    }
}

/// Appends one version 1 entry (no options) to `out`, which must be 4-byte aligned.
fn put_entry(out: &mut Vec<u8>, c: &SyncConn) {
    let v6 = c.caddr.is_ipv6();
    let len = entry_len(c) as u16;
    out.push(if v6 { STYPE_F_INET6 } else { 0 });
    out.push(c.protocol);
    out.extend_from_slice(&(len & SVER_MASK).to_be_bytes());
    out.extend_from_slice(&(c.flags & !conn_flags::HASHED).to_be_bytes());
    out.extend_from_slice(&c.state.to_be_bytes());
    out.extend_from_slice(&c.cport.to_be_bytes());
    out.extend_from_slice(&c.vport.to_be_bytes());
    out.extend_from_slice(&c.dport.to_be_bytes());
    out.extend_from_slice(&c.fwmark.to_be_bytes());
    out.extend_from_slice(&c.timeout.to_be_bytes());
    for a in [c.caddr, c.vaddr, c.daddr] {
        match (a, v6) {
            (IpAddr::V4(a), false) => out.extend_from_slice(&a.octets()),
            (IpAddr::V6(a), true) => out.extend_from_slice(&a.octets()),
            // Mixed families cannot be said in one entry: the family of caddr decides, the
            // other address is written mapped (v4 in v6) or as 0.0.0.0 (v6 in v4).
            (IpAddr::V4(a), true) => out.extend_from_slice(&a.to_ipv6_mapped().octets()),
            (IpAddr::V6(a), false) => {
                out.extend_from_slice(&a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED).octets())
            }
        }
    }
}

/// Builds version 1 messages of at most `maxlen` bytes, as the kernel's master fills its
/// sync buffer: entries appended 4-byte aligned until the next does not fit.
#[derive(Debug)]
pub struct Encoder {
    syncid: u8,
    maxlen: usize,
    buf: Vec<u8>,
}

impl Encoder {
    /// `maxlen` is clamped as the kernel clamps a master's (1 .. 65507); a message always
    /// takes one entry, whatever its size (the kernel sizes its buffer to
    /// `max(entry + header, maxlen)`).
    pub fn new(syncid: u8, maxlen: usize) -> Encoder {
        let maxlen = maxlen.clamp(1, MAX_MAXLEN);
        Encoder {
            syncid,
            maxlen,
            buf: Vec::new(),
        }
    }

    pub fn maxlen(&self) -> usize {
        self.maxlen
    }

    /// Entries in the message being built.
    pub fn pending(&self) -> usize {
        self.buf.get(4).copied().unwrap_or(0) as usize
    }

    /// Adds `c`; returns the finished message when `c` did not fit in it (`c` then starts
    /// the next one).
    pub fn push(&mut self, c: &SyncConn) -> Option<Vec<u8>> {
        let pad = (4 - self.buf.len() % 4) % 4;
        let full = !self.buf.is_empty()
            && (self.buf.len() + pad + entry_len(c) > self.maxlen || self.pending() >= MAX_CONNS);
        let done = if full { self.take() } else { None };
        if self.buf.is_empty() {
            self.buf
                .extend_from_slice(&[0, self.syncid, 0, 0, 0, VERSION, 0, 0]);
        }
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        put_entry(&mut self.buf, c);
        self.buf[4] += 1;
        let size = self.buf.len() as u16;
        self.buf[2..4].copy_from_slice(&size.to_be_bytes());
        done
    }

    /// The message being built, if it holds any entry.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        if self.pending() == 0 {
            return None;
        }
        Some(std::mem::take(&mut self.buf))
    }
}

/// One message of `conns` (which must fit: tests and tools).
pub fn encode(syncid: u8, conns: &[SyncConn]) -> Vec<u8> {
    let mut e = Encoder::new(syncid, MAX_MAXLEN);
    for c in conns {
        assert!(e.push(c).is_none(), "the entries do not fit one message");
    }
    e.take()
        .unwrap_or_else(|| vec![0, syncid, 0, 8, 0, VERSION, 0, 0])
}

/// Why a whole message was refused (nothing in it is installed). Names are the counters'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformed {
    /// Shorter than a version 0 header.
    Truncated,
    /// `size` is not the datagram's length.
    BadSize,
    /// A version 1 header (first byte 0) with another version, or `spare` not 0.
    BadVersion,
    /// An entry (or its fixed part) runs past the message's end, or is shorter than its
    /// fixed part.
    EntryOverrun,
    /// An entry's own version (`ver_size >> 12`) is not 0.
    EntryVersion,
    /// An entry type other than IPv4 (0) or IPv6 (1).
    UnknownType,
    /// An option that is cut, empty, repeated or of the wrong length.
    BadOption,
}

impl Malformed {
    pub fn name(self) -> &'static str {
        match self {
            Malformed::Truncated => "truncated",
            Malformed::BadSize => "bad_size",
            Malformed::BadVersion => "bad_version",
            Malformed::EntryOverrun => "entry_overrun",
            Malformed::EntryVersion => "entry_version",
            Malformed::UnknownType => "unknown_type",
            Malformed::BadOption => "bad_option",
        }
    }
}

/// Why one entry of an otherwise good message was left out (the kernel's positive return
/// codes: the rest of the message is used). Names are the counters'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skipped {
    /// A mandatory option we do not know.
    UnknownOption,
    /// Persistence-engine data (IPVS's SIP engine): there is no engine here to give it to.
    PeData,
    /// Not TCP or UDP (for a connection; a template may be anything).
    Protocol,
    /// A state number past the protocol's last.
    State,
    /// Addresses of another family than the entry's (never from a kernel).
    Family,
}

impl Skipped {
    pub fn name(self) -> &'static str {
        match self {
            Skipped::UnknownOption => "unknown_option",
            Skipped::PeData => "pe_data",
            Skipped::Protocol => "protocol",
            Skipped::State => "state",
            Skipped::Family => "family",
        }
    }
}

/// What a good message holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub syncid: u8,
    /// 1, or 0 for the old format.
    pub version: u8,
    pub conns: Vec<SyncConn>,
    pub skipped: Vec<Skipped>,
}

/// `IP_VS_TCP_S_LAST`, `IP_VS_UDP_S_LAST`.
const TCP_STATES: u16 = lb_common::tcp_state::COUNT as u16;
const UDP_STATES: u16 = 1;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn v4(b: &[u8], at: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
}
fn v6(b: &[u8], at: usize) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    IpAddr::V6(Ipv6Addr::from(o))
}

/// The kernel's per-entry checks on what it would install: protocol and state.
fn check_conn(c: &SyncConn) -> Option<Skipped> {
    if c.is_template() {
        return None;
    }
    let states = match c.protocol {
        6 => TCP_STATES,
        17 => UDP_STATES,
        _ => return Some(Skipped::Protocol),
    };
    (c.state >= states).then_some(Skipped::State)
}

/// Reads one datagram as `ip_vs_process_message` does, but all or nothing: a message the
/// kernel would stop reading part way (after installing its first entries) is refused
/// whole here, so garbage never installs half of itself. Entries the kernel skips one by
/// one are skipped and named in `skipped`. The syncid is not checked here (see
/// [`accepts_syncid`]).
pub fn decode(b: &[u8]) -> Result<Message, Malformed> {
    if b.len() < HEADER_V0_LEN {
        return Err(Malformed::Truncated);
    }
    if be16(b, 2) as usize != b.len() {
        return Err(Malformed::BadSize);
    }
    if b[0] != 0 {
        return decode_v0(b);
    }
    if b.len() < HEADER_LEN {
        return Err(Malformed::Truncated);
    }
    if b[5] != VERSION || be16(b, 6) != 0 {
        return Err(Malformed::BadVersion);
    }
    let mut m = Message {
        syncid: b[1],
        version: VERSION,
        ..Default::default()
    };
    let mut at = HEADER_LEN;
    for _ in 0..b[4] {
        if at + V4_LEN > b.len() {
            return Err(Malformed::EntryOverrun);
        }
        let ver_size = be16(b, at + 2);
        let size = (ver_size & SVER_MASK) as usize;
        let end = at + size;
        // Shorter than an IPv4 entry's fixed part (the kernel refuses it once it steps
        // past the fixed part: -20); a size of 0 would also never advance.
        if end > b.len() || size < V4_LEN {
            return Err(Malformed::EntryOverrun);
        }
        if ver_size >> SVER_SHIFT != 0 {
            return Err(Malformed::EntryVersion);
        }
        match entry(&b[at..end])? {
            Ok(c) => match check_conn(&c) {
                None => m.conns.push(c),
                Some(s) => m.skipped.push(s),
            },
            Err(s) => m.skipped.push(s),
        }
        at += (size + 3) & !3;
    }
    Ok(m)
}

/// One version 1 entry (`e` is exactly its `size` bytes): the connection, or why it is
/// skipped; `Err` refuses the message (`ip_vs_proc_sync_conn`'s negative codes).
fn entry(e: &[u8]) -> Result<Result<SyncConn, Skipped>, Malformed> {
    let (is_v6, fixed) = match e[0] {
        0 => (false, V4_LEN),
        STYPE_F_INET6 => (true, V6_LEN),
        _ => return Err(Malformed::UnknownType),
    };
    if e.len() < fixed {
        return Err(Malformed::EntryOverrun);
    }
    let mut skip = None;
    let (mut seq, mut pe_data, mut pe_name) = (false, false, false);
    let mut p = fixed;
    while p < e.len() {
        if p + 2 > e.len() {
            return Err(Malformed::BadOption);
        }
        let (ty, len) = (e[p], e[p + 1] as usize);
        p += 2;
        if len == 0 || p + len > e.len() {
            return Err(Malformed::BadOption);
        }
        match ty & !OPT_F_PARAM {
            OPT_SEQ_DATA => {
                // TCP sequence adjustment (ip_vs_app helpers, FTP in NAT mode): nothing here
                // adjusts sequence numbers, so it is checked and dropped.
                if len != SEQ_OPTIONS_LEN || seq {
                    return Err(Malformed::BadOption);
                }
                seq = true;
            }
            OPT_PE_DATA => {
                if len > PEDATA_MAXLEN || pe_data {
                    return Err(Malformed::BadOption);
                }
                pe_data = true;
            }
            OPT_PE_NAME => {
                if len > PENAME_MAXLEN || pe_name {
                    return Err(Malformed::BadOption);
                }
                pe_name = true;
            }
            _ if ty & OPT_F_PARAM == 0 => skip = skip.or(Some(Skipped::UnknownOption)),
            _ => {}
        }
        p += len;
    }
    if let Some(s) = skip {
        return Ok(Err(s));
    }
    // The kernel installs PE data only with a persistence engine of that name loaded; we
    // have none, so it skips the entry as a kernel without the module does.
    if pe_data {
        return Ok(Err(Skipped::PeData));
    }
    let addr = |i: usize| {
        if is_v6 {
            v6(e, 24 + 16 * i)
        } else {
            v4(e, 24 + 4 * i)
        }
    };
    Ok(Ok(SyncConn {
        protocol: e[1],
        flags: (be32(e, 4) & BACKUP_MASK) | conn_flags::SYNC,
        state: be16(e, 8),
        cport: be16(e, 10),
        vport: be16(e, 12),
        dport: be16(e, 14),
        fwmark: be32(e, 16),
        timeout: be32(e, 20),
        caddr: addr(0),
        vaddr: addr(1),
        daddr: addr(2),
    }))
}

/// A version 0 message (`ip_vs_process_message_v0`): IPv4, no fwmark, no timeout (0: the
/// installer uses the state's timeout, as the kernel does).
fn decode_v0(b: &[u8]) -> Result<Message, Malformed> {
    let mut m = Message {
        syncid: b[1],
        version: 0,
        ..Default::default()
    };
    let mut at = HEADER_V0_LEN;
    for _ in 0..b[0] {
        if at + V0_CONN_LEN > b.len() {
            return Err(Malformed::EntryOverrun);
        }
        let e = &b[at..at + V0_CONN_LEN];
        let flags = be16(e, 20) as u32;
        at += V0_CONN_LEN;
        if flags & conn_flags::SEQ_MASK != 0 {
            at += SEQ_OPTIONS_LEN;
            if at > b.len() {
                return Err(Malformed::EntryOverrun);
            }
        }
        let c = SyncConn {
            protocol: e[1],
            flags: (flags | conn_flags::SYNC) & !conn_flags::HASHED,
            state: be16(e, 22),
            cport: be16(e, 2),
            vport: be16(e, 4),
            dport: be16(e, 6),
            fwmark: 0,
            timeout: 0,
            caddr: v4(e, 8),
            vaddr: v4(e, 12),
            daddr: v4(e, 16),
        };
        match check_conn(&c) {
            None => m.conns.push(c),
            Some(s) => m.skipped.push(s),
        }
    }
    Ok(m)
}

/// IPVS's rule: a backup with syncid 0 takes every message; otherwise only its own.
pub fn accepts_syncid(ours: u8, theirs: u8) -> bool {
    ours == 0 || ours == theirs
}

/// Whether a datagram is for another syncid, judged where `ip_vs_process_message` judges
/// it: after the header-length and size checks, before anything else is read (so another
/// director pair's messages are ignored as such, whatever they hold).
pub fn other_syncid(b: &[u8], ours: u8) -> bool {
    b.len() >= HEADER_V0_LEN && be16(b, 2) as usize == b.len() && !accepts_syncid(ours, b[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(c: [u8; 4], cport: u16, d: [u8; 4]) -> SyncConn {
        SyncConn {
            protocol: 6,
            flags: conn_flags::DROUTE,
            state: lb_common::tcp_state::ESTABLISHED as u16,
            cport,
            vport: 80,
            dport: 80,
            fwmark: 0,
            timeout: 900,
            caddr: IpAddr::from(c),
            vaddr: IpAddr::from([198, 51, 100, 100]),
            daddr: IpAddr::from(d),
        }
    }

    /// What the kernel's backup yields: the flags masked, with `SYNC`.
    fn received(mut c: SyncConn) -> SyncConn {
        c.flags = (c.flags & BACKUP_MASK) | conn_flags::SYNC;
        c
    }

    /// Two IPv4 entries laid out by hand from `struct ip_vs_sync_mesg` and
    /// `struct ip_vs_sync_v4` (syncid 7): byte for byte what a kernel master sends.
    #[rustfmt::skip]
    const GOLDEN_V4: [u8; 8 + 36 + 36] = [
        // header: reserved, syncid, size=80, nr_conns=2, version=1, spare
        0x00, 0x07, 0x00, 0x50, 0x02, 0x01, 0x00, 0x00,
        // entry 1: type 0, TCP, ver_size=36
        0x00, 0x06, 0x00, 0x24,
        0x00, 0x00, 0x00, 0x03,             // flags: DROUTE
        0x00, 0x01, 0x9c, 0x40,             // state ESTABLISHED, cport 40000
        0x00, 0x50, 0x00, 0x50,             // vport 80, dport 80
        0x00, 0x00, 0x00, 0x00,             // fwmark
        0x00, 0x00, 0x03, 0x84,             // timeout 900
        203, 0, 113, 7,                     // caddr
        198, 51, 100, 100,                  // vaddr
        198, 51, 100, 11,                   // daddr
        // entry 2: a persistence template (cport 0, TEMPLATE|DROUTE), UDP, 360 s
        0x00, 0x11, 0x00, 0x24,
        0x00, 0x00, 0x10, 0x03,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x35, 0x00, 0x35,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x68,
        203, 0, 113, 0,
        198, 51, 100, 100,
        198, 51, 100, 12,
    ];

    fn golden_conns() -> Vec<SyncConn> {
        let a = conn([203, 0, 113, 7], 40000, [198, 51, 100, 11]);
        let t = SyncConn {
            protocol: 17,
            flags: conn_flags::TEMPLATE | conn_flags::DROUTE,
            state: 0,
            cport: 0,
            vport: 53,
            dport: 53,
            fwmark: 0,
            timeout: 360,
            caddr: IpAddr::from([203, 0, 113, 0]),
            vaddr: IpAddr::from([198, 51, 100, 100]),
            daddr: IpAddr::from([198, 51, 100, 12]),
        };
        vec![a, t]
    }

    #[test]
    fn encodes_ipv4_entries_and_a_template_byte_for_byte() {
        assert_eq!(encode(7, &golden_conns()), GOLDEN_V4.to_vec());
    }

    #[test]
    fn decodes_the_kernels_ipv4_message() {
        let m = decode(&GOLDEN_V4).unwrap();
        assert_eq!((m.syncid, m.version), (7, 1));
        let want: Vec<_> = golden_conns().into_iter().map(received).collect();
        assert_eq!(m.conns, want);
        assert!(m.conns[1].is_template());
        assert!(m.skipped.is_empty());
    }

    /// An IPv6 entry (type 1, 72 bytes) after an IPv4 one, by hand.
    #[test]
    fn decodes_an_ipv6_entry_laid_out_by_hand() {
        let mut b = vec![0x00, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00];
        b.extend_from_slice(&GOLDEN_V4[8..44]);
        let mut e = vec![
            0x01, 0x06, 0x00, 0x48, 0, 0, 0, 0x02, 0x00, 0x05, 0x30, 0x39,
        ];
        e.extend_from_slice(&[0x01, 0xbb, 0x01, 0xbb, 0, 0, 0, 9, 0, 0, 0, 120]);
        for last in [1u8, 0x64, 0x0b] {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a[15] = last;
            e.extend_from_slice(&a);
        }
        assert_eq!(e.len(), V6_LEN);
        b.extend_from_slice(&e);
        let n = b.len() as u16;
        b[2..4].copy_from_slice(&n.to_be_bytes());
        let m = decode(&b).unwrap();
        assert_eq!(m.conns.len(), 2);
        let c = &m.conns[1];
        assert_eq!(c.caddr, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.vaddr, "2001:db8::64".parse::<IpAddr>().unwrap());
        assert_eq!(c.daddr, "2001:db8::b".parse::<IpAddr>().unwrap());
        assert_eq!((c.cport, c.vport, c.dport), (12345, 443, 443));
        assert_eq!((c.state, c.fwmark, c.timeout), (5, 9, 120));
        assert_eq!(c.flags, conn_flags::TUNNEL | conn_flags::SYNC);
        // And our encoder writes the same bytes for it.
        let mut sent = c.clone();
        sent.flags = conn_flags::TUNNEL;
        let mut first = golden_conns()[0].clone();
        first.flags = conn_flags::DROUTE;
        let mut again = encode(0, &[first, sent]);
        again[0..8].copy_from_slice(&b[0..8]);
        assert_eq!(again, b);
    }

    #[test]
    fn round_trips_mixed_families_and_many_entries() {
        let mut conns = Vec::new();
        for i in 0..30u16 {
            let mut c = conn([203, 0, 113, (i % 250) as u8], 1000 + i, [198, 51, 100, 11]);
            if i % 3 == 0 {
                c.caddr = format!("2001:db8::{i:x}").parse().unwrap();
                c.vaddr = "2001:db8::100".parse().unwrap();
                c.daddr = "2001:db8::11".parse().unwrap();
            }
            c.flags |= if i % 2 == 0 { conn_flags::INACTIVE } else { 0 };
            c.state = i % 11;
            c.timeout = u32::from(i) * 7;
            conns.push(c);
        }
        let m = decode(&encode(200, &conns)).unwrap();
        assert_eq!(m.syncid, 200);
        assert_eq!(m.conns, conns.into_iter().map(received).collect::<Vec<_>>());
    }

    #[test]
    fn the_encoder_closes_a_message_at_maxlen_and_pads_entries_to_four_bytes() {
        // maxlen 8 + 3 × 36: three IPv4 entries fit, the fourth starts a new message.
        let mut e = Encoder::new(1, HEADER_LEN + 3 * V4_LEN);
        let c = conn([203, 0, 113, 1], 1, [198, 51, 100, 11]);
        assert!(e.push(&c).is_none());
        assert!(e.push(&c).is_none());
        assert!(e.push(&c).is_none());
        let first = e.push(&c).expect("the fourth does not fit");
        assert_eq!(first.len(), HEADER_LEN + 3 * V4_LEN);
        assert_eq!(first[4], 3);
        assert_eq!(e.take().unwrap()[4], 1);
        assert!(e.take().is_none(), "nothing left after take");
        // The default fits 40 IPv4 entries (8 + 40 × 36 = 1448 ≤ 1472).
        let mut e = Encoder::new(1, DEFAULT_MAXLEN);
        let sent: Vec<_> = (0..41).filter_map(|_| e.push(&c)).collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0][4], 40);
        // A maxlen below one entry: one entry per message, as the kernel's master sends.
        let mut e = Encoder::new(1, 20);
        assert!(e.push(&c).is_none());
        assert_eq!(
            e.push(&c).expect("one per message").len(),
            HEADER_LEN + V4_LEN
        );
        // Never more than 255 entries, whatever maxlen says.
        let mut e = Encoder::new(1, MAX_MAXLEN);
        let sent: Vec<_> = (0..300).filter_map(|_| e.push(&c)).collect();
        assert_eq!(sent[0][4], 255);
        assert_eq!(decode(&sent[0]).unwrap().conns.len(), 255);
    }

    /// An entry with sequence data (62 bytes) is followed by 2 bytes of pad; the message's
    /// size counts no pad after its last entry.
    #[test]
    fn steps_over_options_and_their_padding() {
        let mut b = GOLDEN_V4[..44].to_vec();
        b[4] = 2;
        b[8 + 3] = 36 + 26; // ver_size: with the seq option
        b.extend_from_slice(&[OPT_SEQ_DATA, 24]);
        b.extend_from_slice(&[0xaa; 24]);
        b.extend_from_slice(&[0, 0]); // pad to 4
        b.extend_from_slice(&GOLDEN_V4[44..]);
        let n = b.len() as u16;
        b[2..4].copy_from_slice(&n.to_be_bytes());
        let m = decode(&b).unwrap();
        assert_eq!(m.conns.len(), 2, "{m:?}");
        assert_eq!(m.conns[1].vport, 53);
    }

    fn with_option(opt: &[u8]) -> Vec<u8> {
        let mut b = GOLDEN_V4[..44].to_vec();
        b[4] = 1;
        b[8 + 3] = (36 + opt.len()) as u8;
        b.extend_from_slice(opt);
        let n = b.len() as u16;
        b[2..4].copy_from_slice(&n.to_be_bytes());
        b
    }

    #[test]
    fn options_skip_or_refuse_as_the_kernel_does() {
        // PE data with its engine's name: no engine here, the entry is skipped.
        let mut o = vec![OPT_PE_DATA, 4, 1, 2, 3, 4, OPT_PE_NAME, 3];
        o.extend_from_slice(b"sip");
        let m = decode(&with_option(&o)).unwrap();
        assert_eq!(
            (m.conns.len(), m.skipped.clone()),
            (0, vec![Skipped::PeData])
        );
        // An unknown mandatory option skips the entry; an optional one (0x40) is ignored.
        let m = decode(&with_option(&[9, 2, 0, 0])).unwrap();
        assert_eq!(m.skipped, vec![Skipped::UnknownOption]);
        let m = decode(&with_option(&[9 | OPT_F_PARAM, 2, 0, 0])).unwrap();
        assert_eq!(m.conns.len(), 1);
        // Cut, empty, overlong or repeated options refuse the message.
        for bad in [
            vec![OPT_SEQ_DATA],
            vec![OPT_SEQ_DATA, 0],
            vec![OPT_SEQ_DATA, 8, 0, 0],
            vec![OPT_SEQ_DATA, 4, 0, 0, 0, 0],
            [[OPT_PE_NAME, 1, b'a'], [OPT_PE_NAME, 1, b'b']].concat(),
        ] {
            assert_eq!(
                decode(&with_option(&bad)),
                Err(Malformed::BadOption),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_malformed_form_is_named() {
        let g = GOLDEN_V4.to_vec();
        let set = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = g.clone();
            f(&mut b);
            decode(&b)
        };
        assert_eq!(decode(&[]), Err(Malformed::Truncated));
        assert_eq!(decode(&[0, 1, 0]), Err(Malformed::Truncated));
        assert_eq!(decode(&[0, 1, 0, 6, 0, 1]), Err(Malformed::Truncated));
        assert_eq!(decode(&g[..40]), Err(Malformed::BadSize));
        assert_eq!(set(&|b| b.push(0)), Err(Malformed::BadSize));
        assert_eq!(set(&|b| b[5] = 2), Err(Malformed::BadVersion));
        assert_eq!(set(&|b| b[7] = 1), Err(Malformed::BadVersion));
        // nr_conns says 3: the third would start at the end.
        assert_eq!(set(&|b| b[4] = 3), Err(Malformed::EntryOverrun));
        // The second entry claims 40 bytes: past the end.
        assert_eq!(set(&|b| b[44 + 3] = 40), Err(Malformed::EntryOverrun));
        // An entry size below its fixed part.
        assert_eq!(set(&|b| b[8 + 3] = 20), Err(Malformed::EntryOverrun));
        assert_eq!(set(&|b| b[8 + 2] = 0x10), Err(Malformed::EntryVersion));
        assert_eq!(set(&|b| b[8] = 2), Err(Malformed::UnknownType));
        // A v6 type on a 36-byte entry.
        assert_eq!(set(&|b| b[44] = 1), Err(Malformed::EntryOverrun));
    }

    #[test]
    fn bad_protocol_or_state_skips_only_that_entry() {
        let mut b = GOLDEN_V4.to_vec();
        b[9] = 132; // SCTP: not served here
        let m = decode(&b).unwrap();
        assert_eq!(
            (m.conns.len(), m.skipped.clone()),
            (1, vec![Skipped::Protocol])
        );
        let mut b = GOLDEN_V4.to_vec();
        b[16..18].copy_from_slice(&11u16.to_be_bytes()); // past IP_VS_TCP_S_LAST
        assert_eq!(decode(&b).unwrap().skipped, vec![Skipped::State]);
    }

    /// A version 0 message laid out from `ip_vs_sync_mesg_v0` / `ip_vs_sync_conn_v0`: one
    /// entry, then one with sequence data (24 more bytes).
    #[test]
    fn decodes_version_0_as_the_kernels_backup() {
        #[rustfmt::skip]
        let e1 = [
            0, 6, 0x9c, 0x40, 0x00, 0x50, 0x00, 0x50,
            203, 0, 113, 7, 198, 51, 100, 100, 198, 51, 100, 11,
            0x00, 0x43, 0x00, 0x01, // flags DROUTE|HASHED, state ESTABLISHED
        ];
        let mut e2 = e1;
        e2[3] = 0x41;
        e2[20] = 0x04; // IN_SEQ (0x0400) with DROUTE: 24 bytes of sequence data follow
        e2[21] = 0x03;
        let mut b = vec![2, 9, 0, 0];
        b.extend_from_slice(&e1);
        b.extend_from_slice(&e2);
        b.extend_from_slice(&[0; SEQ_OPTIONS_LEN]);
        let n = b.len() as u16;
        b[2..4].copy_from_slice(&n.to_be_bytes());
        let m = decode(&b).unwrap();
        assert_eq!((m.version, m.syncid, m.conns.len()), (0, 9, 2));
        let c = &m.conns[0];
        assert_eq!(
            c.flags,
            conn_flags::DROUTE | conn_flags::SYNC,
            "HASHED is dropped"
        );
        assert_eq!((c.cport, c.timeout, c.state), (40000, 0, 1));
        assert_eq!(m.conns[1].cport, 40001);
        // The sequence data cut off: refused.
        assert_eq!(
            decode(&{
                let mut t = b[..b.len() - 1].to_vec();
                let n = t.len() as u16;
                t[2..4].copy_from_slice(&n.to_be_bytes());
                t
            }),
            Err(Malformed::EntryOverrun)
        );
    }

    #[test]
    fn syncid_zero_takes_all() {
        assert!(accepts_syncid(0, 17));
        assert!(accepts_syncid(17, 17));
        assert!(!accepts_syncid(17, 18));
        // Judged after the size check, before the version: a bad version of another pair
        // is that pair's business.
        let mut b = GOLDEN_V4.to_vec();
        b[5] = 9;
        assert!(other_syncid(&b, 8));
        assert!(!other_syncid(&b, 7));
        assert!(!other_syncid(&b, 0));
        assert!(!other_syncid(&b[..10], 8), "a bad size is malformed first");
    }

    /// Whatever the bytes, decode answers (no panic), and what it accepts re-encodes.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = GOLDEN_V4.to_vec();
            let n = (next() % 6) as usize;
            for _ in 0..n {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            let cut = (next() % (b.len() as u64 + 1)) as usize;
            let mut b = b[..cut].to_vec();
            if next() % 2 == 0 && b.len() >= 4 {
                let l = b.len() as u16;
                b[2..4].copy_from_slice(&l.to_be_bytes());
            }
            let _ = decode(&b);
        }
    }
}
