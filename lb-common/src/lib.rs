//! Types, map names, sizes and flag bits shared by the XDP program and the control plane.
//!
//! Everything that crosses into a BPF map is `#[repr(C)]` with explicit padding, holds only
//! integers (no `bool`, enums or `Option`), and keeps addresses and ports in network byte order
//! exactly as they appear on the wire, so the data path never swaps bytes. `Pod` impls for the
//! control plane are behind the `user` feature.
#![no_std]

pub mod hash;

/// Map names, as they appear in the ELF object and under the pin directory.
pub mod maps {
    /// `u32` slot → `SvcSlot`: the services, as two open-addressing tables of
    /// `size::SVC_SLOTS` slots each; `Settings::svc_half` says which half is live. The control
    /// plane rewrites the idle half and flips, so no packet ever sees a half-updated table.
    /// (An array is read with inlined loads; a hash map lookup is a kernel call per packet.)
    pub const SVC_TABLE: &str = "LB_SVC_TABLE";
    /// `u32` backend id → `Backend`. Array; id 0 is reserved ("unset").
    pub const BACKENDS: &str = "LB_BACKENDS";
    /// `u32` slot → backend id. Array holding every service's scheduling table (wrr sequence,
    /// hash buckets, Maglev table) as a region `[table_off, table_off + table_len)`.
    pub const SCHED_TABLE: &str = "LB_SCHED_TABLE";
    /// `u32` service id → `u64` round-robin cursor, shared by all CPUs (atomic add).
    pub const SVC_CURSOR: &str = "LB_SVC_CURSOR";
    /// `FlowKey` → `Conn`. LRU hash, the connection table: every connection past its
    /// handshake (and UDP ones, and NAT connections from their first packet). One LRU for the
    /// whole table (no per-CPU shares), so it evicts only when it is full as a whole.
    pub const CONNS: &str = "LB_CONNS";
    /// `u32` slot → `EmbryoSlot`. Array of embryonic TCP connections (SYN_RECV, opened by a
    /// SYN; a NAT one's reply entry too), each in the slot `embryo::index` of its key picks,
    /// moved to `CONNS` by the packet that takes them out of SYN_RECV. A flood of spoofed SYNs
    /// can only overwrite slots here, never an established connection. A power of two of
    /// slots (`embryo`).
    pub const EMBRYO: &str = "LB_EMBRYO";
    /// `u32` slot → `FlowKey`: the keys one sweep step hands to `lb_sweep` (see `sweep_op`).
    /// Scratch of one daemon (not pinned).
    pub const SWEEP_KEYS: &str = "LB_SWEEP_KEYS";
    /// `u32` backend id → `RsConns`: the sweep's tally, written by the daemon and published by
    /// `lb_sweep` (not pinned).
    pub const RS_TALLY: &str = "LB_RS_TALLY";
    /// `u32` service id → `Stats`, per CPU.
    pub const SVC_STATS: &str = "LB_SVC_STATS";
    /// `u32` backend id → `Stats`, per CPU.
    pub const BACKEND_STATS: &str = "LB_RS_STATS";
    /// `u32` counter index (`cnt::*`) → `u64`, per CPU.
    pub const COUNTERS: &str = "LB_COUNTERS";
    /// `Addr` (a NAT client) → `NatHop`: where replies towards that client go, cached so
    /// that a reply costs no FIB lookup. LRU: a client whose entry was evicted costs one
    /// lookup again. Kept apart from `CONNS` so that DR/TUN connections do not carry it.
    pub const NAT_HOPS: &str = "LB_NAT_HOPS";
    /// `u32` 0 → `Settings`: global knobs and the clock, written by the control plane.
    pub const SETTINGS: &str = "LB_SETTINGS";
    /// `u32` slot → `SvcSlot`: the (RIP, port, protocol) of every NAT real server, laid out
    /// like `SVC_TABLE` (two halves of `size::NAT_RS_SLOTS`, same `svc_half`). A packet from
    /// one of them may be a reply to SNAT; everything else skips the connection lookup.
    pub const NAT_RS: &str = "LB_NAT_RS";
    /// `Addr` VIP → `u8` (any value): the VIPs the decapsulation program (`lb-decap`, on TUN
    /// real servers) accepts inner packets for. Keyed by `Addr` since layout 5: an IPv4 VIP
    /// IPv4-mapped (`Addr::v4`), an IPv6 VIP as its 16 bytes (`Addr::from_octets`); IPv4-in-IPv4
    /// is accepted for the former, IPv6-in-IPv6 (next header 41) for the latter.
    pub const DECAP_VIPS: &str = "LB_DECAP_VIPS";
    /// `u32` service id → `Service`: the same values as in `SVC_TABLE`, by id (for the sweep).
    pub const SVC_INFO: &str = "LB_SVC_INFO";
    /// `u32` backend id → `RsConns`: connections per backend as the last sweep counted them
    /// (written only by `lb_sweep`).
    pub const RS_CONNS: &str = "LB_RS_CONNS";
    /// `u32` backend id → `u32`: connections created since the last sweep (atomic adds by the
    /// data path; the sweep takes and resets them).
    pub const RS_NEW: &str = "LB_RS_NEW";
    /// `PersistKey` → `PersistVal`: persistence templates (IPVS's), LRU.
    pub const PERSIST: &str = "LB_PERSIST";
    /// `LblcKey` → `LblcVal`: lblc/lblcr destination → server(s), LRU.
    pub const LBLC: &str = "LB_LBLC";
    /// `u32` index → `u32` seconds: timeouts by TCP state (`tcp_state::*`), then
    /// `TIMEOUT_UDP`, read by the sweep.
    pub const TIMEOUTS: &str = "LB_TIMEOUTS";
    /// `u32` 0 → `SweepStats`: what the last sweep did.
    pub const SWEEP: &str = "LB_SWEEP";
    /// `u32` → program: the tail-call targets (`prog_index::*`). Pinned, so the balancer keeps
    /// scheduling new connections while no daemon runs.
    pub const PROGS: &str = "LB_PROGS";
    /// `u32` 0 → the per-CPU hand-over from `lb_xdp` to `lb_new` (not pinned: both programs
    /// of one load share it).
    pub const PENDING: &str = "LB_PENDING";

    /// `u32` 0 → per-CPU state of the balancer's own (the ICMP error rate limiter, the TUN
    /// outer IP ID counter). Not pinned: a new program starts afresh.
    pub const CPU_STATE: &str = "LB_CPU_STATE";

    /// Ring buffer of `SyncEvent`s: what a MASTER's data path tells connection sync
    /// (`settings_flags::SYNC_MASTER`). Not pinned: a restarted daemon reads a fresh ring
    /// (the sync protocol resends what the BACKUP needs on the connections' next packets).
    pub const SYNC_EVENTS: &str = "LB_SYNC_EVENTS";

    /// `u32` 0 → the generator's template frame and flow count (object `lb-pass`).
    pub const GEN: &str = "LB_GEN";
    /// `u32` 0 → the generator's frames sent and next due time, per CPU (object `lb-pass`).
    pub const GEN_STATE: &str = "LB_GEN_STATE";
    /// `u32` 0 → `u64` frames `lb_count_drop` dropped, per CPU (object `lb-pass`).
    pub const SINK: &str = "LB_SINK";
    /// `u32` 0 → `lb_redirect`'s interface and MACs (object `lb-pass`).
    pub const FWD: &str = "LB_FWD";

    /// Every map of the balancer the daemon pins and adopts again after a restart.
    pub const ALL: [&str; 20] = [
        SVC_TABLE,
        NAT_RS,
        SVC_INFO,
        RS_CONNS,
        RS_NEW,
        PERSIST,
        LBLC,
        TIMEOUTS,
        SWEEP,
        BACKENDS,
        SCHED_TABLE,
        SVC_CURSOR,
        CONNS,
        EMBRYO,
        NAT_HOPS,
        SVC_STATS,
        BACKEND_STATS,
        COUNTERS,
        SETTINGS,
        PROGS,
    ];
}

/// Slots of `maps::PROGS`.
pub mod prog_index {
    /// `progs::NEW`.
    pub const NEW: u32 = 0;
    /// Slot 1 held `lb_resume` until the first packet of a connection was forwarded by
    /// `lb_new` itself; the daemon empties it in an adopted array.
    pub const UNUSED_RESUME: u32 = 1;
    /// `progs::BALANCER6`: `lb_xdp` tail-calls it for every IPv6 frame (ethertype 0x86dd).
    /// Empty, IPv6 frames are passed to the stack (`cnt::PASS_NOT_IPV4`) as before layout 5.
    pub const XDP6: u32 = 2;
    /// `progs::NEW6`: `lb_xdp6` tail-calls it for an IPv6 packet that opens a connection.
    pub const NEW6: u32 = 3;
    /// Slots in the map (4 since layout 5; a pinned array of 2 is of an older layout, which
    /// the daemon does not adopt).
    pub const LEN: u32 = 4;
}

/// Program names (the Rust function names of the `#[xdp]` entry points).
pub mod progs {
    /// The balancer (object `lb-ebpf`).
    pub const BALANCER: &str = "lb_xdp";
    /// IPIP decapsulation for TUN real servers (object `lb-decap`).
    pub const DECAP: &str = "lb_decap";
    /// The sweep (object `lb-ebpf`), run by the daemon with `BPF_PROG_TEST_RUN` every second:
    /// expires connections and templates, counts connections per backend.
    pub const SWEEP: &str = "lb_sweep";
    /// New connections (object `lb-ebpf`): `lb_xdp` tail-calls it for a packet that opens a
    /// connection, with what it learnt (the parsed packet, the service, the clock) in a
    /// per-CPU slot; it schedules, records and forwards the packet (its forwarding step a
    /// BPF-to-BPF function). Apart, each program stays well inside the verifier's budget;
    /// together, the schedulers' paths times the connection lookup exceed it.
    pub const NEW: &str = "lb_new";
    /// The IPv6 balancer (object `lb-ebpf`): what `lb_xdp` is for IPv4, for IPv6 frames,
    /// reached from `lb_xdp` by tail call (`prog_index::XDP6`), so that IPv4 packets pay one
    /// ethertype test for it and each program keeps its own verifier budget. The control
    /// plane loads it and puts it in `maps::PROGS` before `lb_xdp` is attached.
    pub const BALANCER6: &str = "lb_xdp6";
    /// New IPv6 connections (object `lb-ebpf`): what `lb_new` is for IPv4, tail-called by
    /// `lb_xdp6` (`prog_index::NEW6`). Loaded and put in `maps::PROGS` like `BALANCER6`.
    pub const NEW6: &str = "lb_new6";
    /// `XDP_PASS` for every frame (object `lb-pass`): attached to the veth peers of balancer
    /// interfaces, where a frame sent with `XDP_TX`/redirect is only reliably delivered if the
    /// peer runs XDP.
    pub const PASS: &str = "lb_pass";
    /// Swap the MACs and `XDP_TX` (object `lb-pass`): the cost floor in benchmarks.
    pub const MACSWAP: &str = "lb_macswap";
    /// Drop every frame (object `lb-pass`): the sink of benchmarks.
    pub const DROP: &str = "lb_drop";
    /// The end-to-end benchmark's packet generator (object `lb-pass`), run with
    /// `BPF_PROG_TEST_RUN` in live-frames mode: the template of `maps::GEN` spread over its
    /// flows, sent with `XDP_TX`, optionally paced.
    pub const GEN: &str = "lb_gen";
    /// Count (`maps::SINK`) and drop every frame (object `lb-pass`): the end-to-end sink.
    pub const COUNT_DROP: &str = "lb_count_drop";
    /// Rewrite the MACs and redirect as `maps::FWD` says (object `lb-pass`): the floor of the
    /// paths that leave by another interface.
    pub const REDIRECT: &str = "lb_redirect";
}

/// Map sizes. `CONNS` and `SCHED_TABLE` are the defaults; the control plane may change them at
/// load time.
pub mod size {
    /// Services (and the id space of per-service arrays; id 0 reserved).
    pub const MAX_SERVICES: u32 = 4096;
    /// Slots of one half of `SVC_TABLE`: a power of two, twice `MAX_SERVICES`, so the load
    /// factor stays at or below one half.
    pub const SVC_SLOTS: u32 = 8192;
    /// The longest probe sequence the data path follows in `SVC_TABLE`; the control plane
    /// refuses a table that would need more.
    pub const SVC_MAX_PROBE: u32 = 8;
    /// Slots of one half of `NAT_RS`: a power of two, twice `MAX_BACKENDS`.
    pub const NAT_RS_SLOTS: u32 = 1 << 18;
    /// VIPs the decapsulation program knows.
    pub const MAX_DECAP_VIPS: u32 = 1024;
    /// The most destinations a service with a dynamic scheduler (lc, wlc, sed, nq, fo, ovf,
    /// lblc, lblcr) may have: the data path scans them all for each new connection.
    pub const MAX_SCAN: u32 = 256;
    /// Buckets of the sh/dh table (IPVS's `IP_VS_SH_TAB_SIZE`, 1 << 8).
    pub const SH_BUCKETS: u32 = 256;
    /// Default Maglev table size, a prime. Maglev wants it well above 100 × the number of
    /// servers; 65537 keeps the imbalance and the disruption of a change within 1% up to a
    /// few hundred servers. (IPVS's default is 4093, `CONFIG_IP_VS_MH_TAB_INDEX` 12; set
    /// `mh_table_size` for that.)
    pub const DEFAULT_MH_TABLE: u32 = 65537;
    /// Default persistence-template table size.
    pub const DEFAULT_PERSIST: u32 = 1 << 18;
    /// NAT reply hops cached (`maps::NAT_HOPS`), one per client.
    pub const NAT_HOPS: u32 = 1 << 16;
    /// lblc/lblcr destination entries.
    pub const LBLC_ENTRIES: u32 = 1 << 16;
    /// Servers in one lblcr set.
    pub const LBLCR_SET: usize = 8;
    /// Backends, i.e. (service, real server) pairs; id 0 reserved. Room for 1,000 services of
    /// 100 real servers with deleted ones waiting in the trash.
    pub const MAX_BACKENDS: u32 = 1 << 17;
    /// Default connection-table size (entries).
    pub const DEFAULT_CONNS: u32 = 1 << 20;
    /// Default size of the embryonic-connection table (`maps::EMBRYO`), when none is given:
    /// the connection table's size divided by this.
    pub const EMBRYO_DIVISOR: u32 = 4;
    /// The smallest embryonic table (a tiny connection table still gets room for a burst).
    pub const MIN_EMBRYO: u32 = 1024;
    /// Slots of `maps::SWEEP_KEYS`: the most keys one `lb_sweep` run handles. Expiring one
    /// costs up to 1.3 µs in a full 4M table (a cold lookup, then the LRU's locked free list),
    /// so a run stays near a third of a millisecond.
    pub const SWEEP_KEYS: u32 = 256;
    /// Default number of slots in the shared scheduling-table array: room for about 30 mh
    /// services at the default table size, each rebuilt beside its old table. (32 MiB: the
    /// kernel rounds an array's elements up to 8 bytes.)
    pub const DEFAULT_SCHED_TABLE: u32 = 1 << 22;
    /// The longest wrr/rr sequence the control plane builds for one service.
    pub const MAX_SEQUENCE: u32 = 1 << 16;
}

/// Scheduler codes stored in `Service::sched` (0 = unset).
pub mod sched {
    pub const RR: u8 = 1;
    pub const WRR: u8 = 2;
    pub const LC: u8 = 3;
    pub const WLC: u8 = 4;
    pub const LBLC: u8 = 5;
    pub const LBLCR: u8 = 6;
    pub const DH: u8 = 7;
    pub const SH: u8 = 8;
    pub const SED: u8 = 9;
    pub const NQ: u8 = 10;
    pub const FO: u8 = 11;
    pub const OVF: u8 = 12;
    pub const MH: u8 = 13;
}

/// Forwarding methods stored in `Backend::fwd` (and shown as ipvsadm's Forward column).
pub mod fwd {
    /// Direct routing (`-g`, "Route"): rewrite MACs only.
    pub const DR: u8 = 1;
    /// Masquerading (`-m`, "Masq").
    pub const NAT: u8 = 2;
    /// IPIP tunnelling (`-i`, "Tunnel").
    pub const TUN: u8 = 3;
}

/// `Backend::flags` bits.
pub mod backend_flags {
    /// The backend may receive packets (existing and new flows). Cleared when it is deleted
    /// while connections may still point at it (IPVS keeps such a destination in its trash).
    pub const AVAILABLE: u8 = 1 << 0;
    /// The next hop in `ifindex`/`dmac`/`smac`/`mtu` is resolved: DR sends there always; NAT
    /// and TUN send there without asking the FIB (a kernel call per packet), and ask it when
    /// this is clear.
    pub const NEIGH_OK: u8 = 1 << 1;
}

/// `Service::flags` bits.
pub mod svc_flags {
    /// A `NAT_RS` entry (the slot's key is a real server's address, not a VIP).
    pub const NAT_RS: u8 = 1 << 0;
    /// Persistent service (`-p`): clients stick to a server through templates.
    pub const PERSISTENT: u8 = 1 << 1;
    /// One-packet scheduling (`-o`): every UDP datagram is scheduled on its own.
    pub const ONE_PACKET: u8 = 1 << 2;
}

/// `Service::sched_flags` bits (ipvsadm `-b`; IPVS's SCHED1..3 shifted down).
pub mod sched_flags {
    /// sh-fallback / mh-fallback (`flag-1`): if the hashed server is unavailable, try others.
    pub const FALLBACK: u8 = 1 << 0;
    /// sh-port / mh-port (`flag-2`): hash the source port too.
    pub const PORT: u8 = 1 << 1;
    /// `flag-3`: no meaning for the schedulers here.
    pub const FLAG3: u8 = 1 << 2;
}

/// `Settings::flags` bits.
pub mod settings_flags {
    /// Some service has port 0 (all ports): a packet matching no port also tries port 0.
    pub const HAS_PORT0: u32 = 1 << 0;
    /// IPVS `expire_nodest_conn=1`: a packet of a connection whose server was deleted expires
    /// the connection (and is dropped); else it is only dropped.
    pub const EXPIRE_NODEST: u32 = 1 << 1;
    /// IPVS `expire_quiescent_template=1`: a persistence template pointing at a server with
    /// weight 0 is not used for new connections.
    pub const EXPIRE_QUIESCENT: u32 = 1 << 2;
    /// Some NAT real server exists (else `NAT_RS` is not probed).
    pub const HAS_NAT: u32 = 1 << 3;
    /// This director is a connection-sync MASTER: the data path writes a `SyncEvent` for
    /// every connection it records, every TCP state change, every persistence template it
    /// creates or re-points, and a periodic refresh of live connections (`SYNC_EVENTS`).
    pub const SYNC_MASTER: u32 = 1 << 4;
    /// IPVS `sloppy_tcp=1`: a TCP segment without a connection entry is scheduled like a SYN
    /// (unless it carries RST), so a director that takes over without sync still sends a
    /// connection's mid-stream packets to a real server (with sh/mh: the same one).
    pub const SLOPPY_TCP: u32 = 1 << 5;
    /// IPVS `sloppy_sctp=1`: accepted and kept, with no effect (no SCTP services here).
    pub const SLOPPY_SCTP: u32 = 1 << 6;
    /// The refresh period of `SYNC_MASTER`, in units of `sync_stamp` (2^30 ns, about
    /// 1.07 s), in bits 8..16: a connection that keeps seeing packets is sent again at
    /// most once per period (IPVS's `sync_refresh_period`), so that the BACKUP's copy
    /// does not time out while it lives on the MASTER. 0: the default,
    /// `sync_stamp::DEFAULT_PERIOD`. Kept in the flags word the data path loads anyway.
    pub const SYNC_PERIOD_SHIFT: u32 = 8;
    pub const SYNC_PERIOD_MASK: u32 = 0xff << SYNC_PERIOD_SHIFT;
}

/// The coarse "last synced" stamp a connection keeps in `Conn::_pad` while its director
/// is a sync MASTER: `Settings::clock_ns >> SHIFT` truncated to 16 bits (wraps after
/// about 19 hours; only differences are compared).
pub mod sync_stamp {
    pub const SHIFT: u32 = 30;
    /// Default refresh period in stamp units (about 64 s; IPVS's default refreshes on the
    /// 50th packet, `sync_threshold = 3 50`, with no time bound).
    pub const DEFAULT_PERIOD: u16 = 60;

    /// The stamp of a clock reading.
    #[inline(always)]
    pub const fn of(clock_ns: u64) -> u16 {
        (clock_ns >> SHIFT) as u16
    }
}

/// `SyncEvent::kind`.
pub mod sync_event {
    /// A connection was recorded (`CONNS` or `EMBRYO`).
    pub const NEW: u8 = 1;
    /// A recorded connection's TCP state changed (an embryo's promotion included).
    pub const STATE: u8 = 2;
    /// A live connection's periodic refresh (`settings_flags::SYNC_PERIOD_SHIFT`).
    pub const REFRESH: u8 = 3;
    /// A persistence template was created or re-pointed.
    pub const TEMPLATE: u8 = 4;
    /// Bytes of `SYNC_EVENTS` (a power of two, a multiple of the page size): 65,536 events
    /// of 64 bytes (with the ring's 8-byte header) between two reads.
    pub const RING_BYTES: u32 = 4 << 20;
}

/// One event of `maps::SYNC_EVENTS`, as the data path writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncEvent {
    /// The connection's key (client → VIP, as the request arrives). A template's: `saddr`
    /// the client's network (masked), `daddr` the packet's VIP, ports 0, `proto`.
    pub key: FlowKey,
    pub backend: u32,
    /// The service the connection or template belongs to (to tell a reused backend id).
    pub svc_id: u32,
    /// `sync_event::*`.
    pub kind: u8,
    /// `tcp_state::*` (TCP) or `udp_state::NORMAL`.
    pub state: u8,
    /// The connection's `conn_flags::*` (`NO_OUTPUT`).
    pub flags: u8,
    pub _pad0: u8,
    pub _pad1: u32,
}

/// `TIMEOUTS` index of the UDP timeout (after the TCP states).
pub const TIMEOUT_UDP: u32 = tcp_state::COUNT as u32;
/// Entries of `TIMEOUTS`.
pub const TIMEOUTS_LEN: u32 = 16;

/// `Conn::flags` bits.
pub mod conn_flags {
    /// No packet of the reply direction has been seen (IPVS `IP_VS_CONN_F_NOOUTPUT`): the
    /// TCP state follows the INPUT-ONLY table. Always set for DR and TUN, where replies bypass
    /// the director.
    pub const NO_OUTPUT: u8 = 1 << 0;
    /// This entry is keyed by the reply tuple of a NAT connection (real server → client); the
    /// connection's state lives in the entry keyed by the request tuple.
    pub const REPLY: u8 = 1 << 1;
    /// On a `REPLY` entry: the request entry has been told output was seen (so plain ACKs
    /// from the real server need not look it up again).
    pub const OUTPUT_SEEN: u8 = 1 << 2;
    /// A filler entry of the daemon's (`filler`), not a connection: no packet can match its
    /// key, and every reader skips it.
    pub const FILLER: u8 = 1 << 7;
}

/// The IPVS TCP connection states, their default timeouts and the transition tables of
/// `net/netfilter/ipvs/ip_vs_proto_tcp.c` (the normal, not the secure_tcp, tables).
pub mod tcp_state {
    pub const NONE: u8 = 0;
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const TIME_WAIT: u8 = 5;
    pub const CLOSE: u8 = 6;
    pub const CLOSE_WAIT: u8 = 7;
    pub const LAST_ACK: u8 = 8;
    pub const LISTEN: u8 = 9;
    pub const SYNACK: u8 = 10;
    /// Number of states.
    pub const COUNT: usize = 11;

    pub const NAMES: [&str; COUNT] = [
        "NONE",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "SYNACK",
    ];

    /// States counted as ActiveConn (`tcp_state_active_table[]`); the others are InActConn.
    pub const ACTIVE: [bool; COUNT] = [
        false, true, true, true, false, false, false, false, false, false, true,
    ];

    /// IPVS's default timeouts in seconds (`tcp_timeouts[]`).
    pub const TIMEOUTS: [u32; COUNT] = [2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120];

    /// Table directions.
    pub const DIR_INPUT: usize = 0;
    pub const DIR_OUTPUT: usize = 1;
    pub const DIR_INPUT_ONLY: usize = 2;

    /// Packet events, in IPVS's order of precedence (`tcp_state_idx`: rst, then syn, fin, ack).
    pub const EV_SYN: usize = 0;
    pub const EV_FIN: usize = 1;
    pub const EV_ACK: usize = 2;
    pub const EV_RST: usize = 3;

    const ES: u8 = ESTABLISHED;
    const SS: u8 = SYN_SENT;
    const SR: u8 = SYN_RECV;
    const FW: u8 = FIN_WAIT;
    const TW: u8 = TIME_WAIT;
    const CL: u8 = CLOSE;
    const CW: u8 = CLOSE_WAIT;
    const LA: u8 = LAST_ACK;
    const LI: u8 = LISTEN;

    /// `TABLE[direction][event][state]` → next state.
    #[rustfmt::skip]
    pub const TABLE: [[[u8; COUNT]; 4]; 3] = [
        // INPUT
        [
            // NO  ES  SS  SR  FW  TW  CL  CW  LA  LI  SA
            [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR], // syn
            [CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, TW], // fin
            [ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES], // ack
            [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, SR], // rst
        ],
        // OUTPUT
        [
            [SS, ES, SS, SR, SS, SS, SS, SS, SS, LI, SR], // syn
            [TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW], // fin
            [ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES], // ack
            [CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL], // rst
        ],
        // INPUT-ONLY
        [
            [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR], // syn
            [CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW], // fin
            [ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES], // ack
            [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL], // rst
        ],
    ];

    /// The event a TCP flags byte stands for, `None` for a segment with none of
    /// RST/SYN/FIN/ACK (IPVS then moves the connection to CLOSE).
    #[inline(always)]
    pub const fn event(tcp_flags: u8) -> Option<usize> {
        if tcp_flags & 0x04 != 0 {
            Some(EV_RST)
        } else if tcp_flags & 0x02 != 0 {
            Some(EV_SYN)
        } else if tcp_flags & 0x01 != 0 {
            Some(EV_FIN)
        } else if tcp_flags & 0x10 != 0 {
            Some(EV_ACK)
        } else {
            None
        }
    }

    /// The state after a packet with `tcp_flags` in `dir`.
    #[inline(always)]
    pub const fn next(dir: usize, state: u8, tcp_flags: u8) -> u8 {
        let s = state as usize;
        if s >= COUNT || dir >= 3 {
            return CLOSE;
        }
        match event(tcp_flags) {
            Some(ev) => TABLE[dir][ev][s],
            None => CLOSE,
        }
    }
}

/// The state of UDP connection entries (IPVS has one, "UDP", timeout 300 s).
pub mod udp_state {
    pub const NORMAL: u8 = 0;
    pub const TIMEOUT: u32 = 300;
}

/// Indices into the per-CPU `COUNTERS` array: every path out of the program that is not a
/// normal forward is counted here.
pub mod cnt {
    /// Forwarded with `XDP_TX`.
    pub const TX: u32 = 1;
    /// Forwarded with `bpf_redirect`.
    pub const REDIRECT: u32 = 2;
    /// Passed: neither IPv4 nor IPv6 (ARP, VLAN, …), or IPv6 while `lb_xdp6` is not in
    /// `maps::PROGS`.
    pub const PASS_NOT_IPV4: u32 = 3;
    /// Passed: IPv4 but not TCP/UDP, or not addressed to a service.
    pub const PASS_NOT_SERVICE: u32 = 4;
    /// Passed: an IPv4 fragment (no L4 header to match a flow on).
    pub const PASS_FRAGMENT: u32 = 5;
    /// Passed: a TCP segment for a service with no connection entry that is not a SYN (IPVS
    /// schedules only on SYN; the stack answers it).
    pub const PASS_NO_CONN: u32 = 6;
    /// Dropped: a packet the balancer would forward (for a service, a NAT reply, an ICMP error
    /// about a connection) that is shorter than it claims or claims too little: IPv4 total
    /// length past the end of the frame, or too short for the IP header and the L4 header
    /// (the checks of the kernel's `ip_rcv`, which drops such packets before IPVS sees them).
    pub const DROP_MALFORMED: u32 = 7;
    /// Dropped: the service has no available backend.
    pub const DROP_NO_BACKEND: u32 = 8;
    /// Dropped: the backend's MAC is not resolved yet.
    pub const DROP_NO_NEIGH: u32 = 9;
    /// Dropped: the connection's backend was deleted (IPVS `expire_nodest_conn=0`).
    pub const DROP_BACKEND_GONE: u32 = 10;
    /// Dropped: the connection table refused an insert.
    pub const DROP_CONN_INSERT: u32 = 11;
    /// Dropped: a map lookup that cannot fail did (a bug; never expected).
    pub const DROP_INTERNAL: u32 = 12;
    /// New connections created.
    pub const NEW_CONN: u32 = 13;
    /// NAT: the next hop is not resolved; the rewritten packet went to the kernel, which
    /// forwards it and resolves the neighbour.
    pub const PASS_NO_NEIGH: u32 = 14;
    /// No route (unreachable, blackhole, prohibited) or forwarding disabled on the ingress
    /// interface (NAT and TUN need `net.ipv4.ip_forward=1`, as with IPVS).
    pub const DROP_NO_ROUTE: u32 = 15;
    /// Too big for the path with DF clear: passed to the stack.
    pub const PASS_TOO_BIG: u32 = 16;
    /// ICMP errors generated (fragmentation needed, TTL exceeded).
    pub const ICMP_SENT: u32 = 17;
    /// ICMP errors about a connection translated and forwarded.
    pub const ICMP_FORWARDED: u32 = 18;
    /// A NAT connection's reply entry could not be recorded (another connection owns that
    /// reply tuple); its replies go to the stack.
    pub const NAT_REPLY_CLASH: u32 = 19;
    /// Packets from a NAT real server that belong to no connection: passed.
    pub const PASS_NO_REPLY_CONN: u32 = 20;
    /// Dropped: a tail call between `lb_xdp` and `lb_new` failed (the program array not
    /// filled yet: only while a data path is being loaded).
    pub const DROP_TAIL_CALL: u32 = 21;
    /// Dropped: a packet the balancer would forward (for a service, a NAT reply, an ICMP
    /// error about a connection) whose IPv4 header checksum is wrong. The kernel's `ip_rcv`
    /// drops such packets before IPVS sees them; packets for anything else are passed and the
    /// stack drops them itself.
    pub const DROP_BAD_CSUM: u32 = 22;
    /// Dropped: a packet that called for an ICMP error from the director (TTL exceeded), over
    /// the director's ICMP rate limit (`icmp_limit`), as the kernel's `icmp_msgs_per_sec`.
    pub const DROP_ICMP_RATELIMIT: u32 = 23;
    /// Dropped without the ICMP error it called for (TTL exceeded, fragmentation needed)
    /// because none may be sent (RFC 1122 3.2.2, RFC 1812 4.3.2.7): it is itself an ICMP
    /// error, a non-first fragment, or its source is not a unicast host address (0/8, 127/8,
    /// multicast, broadcast) or its destination multicast or broadcast.
    pub const DROP_ICMP_SUPPRESSED: u32 = 24;
    /// Passed: a malformed IPv4 packet that is nobody's business here (bad version or IHL,
    /// truncated header, TCP/UDP without room for its ports): the stack drops it and counts
    /// it. (A malformed packet the balancer would forward is dropped: `DROP_MALFORMED`.)
    pub const PASS_MALFORMED: u32 = 25;
    /// Dropped: a packet the balancer would forward whose source is no host's address (0/8,
    /// 127/8, multicast, 240/4 and broadcast): the kernel's routing drops such "martian"
    /// sources before IPVS sees them.
    pub const DROP_MARTIAN: u32 = 26;
    /// SYNs that opened an embryonic connection (`maps::EMBRYO`).
    pub const EMBRYO_NEW: u32 = 27;
    /// Embryonic connections moved to the connection table (their handshake went on).
    pub const EMBRYO_PROMOTED: u32 = 28;
    /// Embryonic connections that could not be moved (the connection table refused the
    /// insert); they stay embryonic with their new state.
    pub const EMBRYO_PROMOTE_FAILED: u32 = 29;
    /// Sync events lost because `SYNC_EVENTS` was full (the packet itself is forwarded).
    pub const SYNC_DROPPED: u32 = 30;
    /// Passed: an IPv6 packet whose extension headers the data path does not walk to their
    /// end (more than `IPV6_MAX_EXT` of them, or one it cannot read): its upper-layer
    /// protocol is unknown, so it cannot be a service's; the stack has the last word.
    pub const PASS_IPV6_EXT: u32 = 31;
    /// Number of counters (room to grow without changing the map's size).
    pub const MAX: u32 = 32;

    /// Names for listings, indexed by counter.
    pub const NAMES: [&str; MAX as usize] = [
        "",
        "tx",
        "redirect",
        "pass_not_ipv4",
        "pass_not_service",
        "pass_fragment",
        "pass_no_conn",
        "drop_malformed",
        "drop_no_backend",
        "drop_no_neigh",
        "drop_backend_gone",
        "drop_conn_insert",
        "drop_internal",
        "new_conn",
        "pass_no_neigh",
        "drop_no_route",
        "pass_too_big",
        "icmp_sent",
        "icmp_forwarded",
        "nat_reply_clash",
        "pass_no_reply_conn",
        "drop_tail_call",
        "drop_bad_csum",
        "drop_icmp_ratelimit",
        "drop_icmp_suppressed",
        "pass_malformed",
        "drop_martian",
        "embryo_new",
        "embryo_promoted",
        "embryo_promote_failed",
        "sync_dropped",
        "pass_ipv6_ext",
    ];
}

/// IP protocol numbers used in `SvcKey::proto` and `FlowKey::proto` (TCP and UDP for both
/// families; a key never holds an extension header's number).
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// IPv6-in-IPv6 (TUN for IPv6 services, as IPVS's `ip_vs_tunnel_xmit_v6`).
    pub const IPV6: u8 = 41;
    pub const ICMPV6: u8 = 58;
}

/// The most IPv6 extension headers the data path walks before the upper-layer header;
/// a packet with more is passed (`cnt::PASS_IPV6_EXT`).
pub const IPV6_MAX_EXT: u32 = 8;

/// An IP address in the 16 bytes of an IPv6 one, as every key and value holds it, so that
/// IPv6 services and real servers fit the same maps. An IPv4 address is stored IPv4-mapped
/// (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2) rather than beside a family byte: a key compares and
/// hashes as plain bytes with no family to keep in step, and a mapped address never occurs
/// as a real IPv6 packet's address (it is not routed), so the two families cannot collide.
/// Four words, each in network byte order as on the wire; `w[3]` is the IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub w: [u32; 4],
}

impl Addr {
    /// The third word of an IPv4-mapped address (`0000:ffff`), in network order.
    pub const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

    /// The IPv4 address `a` (network order), mapped.
    #[inline(always)]
    pub const fn v4(a: u32) -> Self {
        Self {
            w: [0, 0, Self::V4_MAPPED, a],
        }
    }

    /// The IPv4 address (network order) of a mapped address.
    #[inline(always)]
    pub const fn as_v4(&self) -> u32 {
        self.w[3]
    }

    /// Whether this is an IPv4-mapped address.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.w[0] == 0 && self.w[1] == 0 && self.w[2] == Self::V4_MAPPED
    }

    /// The four words folded into one (for hashing).
    #[inline(always)]
    pub const fn fold(&self) -> u32 {
        self.w[0] ^ self.w[1] ^ self.w[2] ^ self.w[3]
    }

    /// An IPv6 address from its 16 bytes as on the wire (`Ipv6Addr::octets`). (An
    /// IPv4-mapped address given here is an IPv4 address, `Addr::v4`.)
    #[inline(always)]
    pub const fn from_octets(b: [u8; 16]) -> Self {
        Self {
            w: [
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
                u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            ],
        }
    }

    /// The 16 bytes as on the wire (an IPv4 address IPv4-mapped).
    #[inline(always)]
    pub const fn octets(&self) -> [u8; 16] {
        let [a, b, c, d] = [
            self.w[0].to_ne_bytes(),
            self.w[1].to_ne_bytes(),
            self.w[2].to_ne_bytes(),
            self.w[3].to_ne_bytes(),
        ];
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    /// The address as the sh, dh and mh schedulers hash it (`hash::sh_bucket`,
    /// `hash::mh_hash`), host order: an IPv4 address itself; an IPv6 address folded as
    /// IPVS's `ip_vs_sh_hashkey`/`ip_vs_dh_hashkey` fold it for AF_INET6
    /// (`ntohl(a[0] ^ a[1] ^ a[2] ^ a[3])`). The data path and the control plane's models
    /// both hash through this.
    #[inline(always)]
    pub const fn sched_key(&self) -> u32 {
        if self.is_v4() {
            u32::from_be(self.w[3])
        } else {
            u32::from_be(self.fold())
        }
    }

    /// The first `plen` bits of an (IPv6) address, the rest zero: an IPv6 persistence
    /// network (`-M` prefix length). `plen` ≥ 128 keeps the whole address.
    #[inline(always)]
    pub const fn prefix(&self, plen: u32) -> Self {
        let mut w = self.w;
        let mut i = 0;
        while i < 4 {
            let bits = plen.saturating_sub(32 * i as u32);
            let mask: u32 = if bits >= 32 {
                u32::MAX
            } else if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            w[i] &= mask.to_be();
            i += 1;
        }
        Self { w }
    }
}

/// Service lookup key: (VIP, port, protocol), network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SvcKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A virtual service as the data path needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into the per-service arrays (`SVC_STATS`, `SVC_CURSOR`); never 0.
    pub id: u32,
    /// `sched::*`.
    pub sched: u8,
    /// `svc_flags::*`.
    pub flags: u8,
    /// `sched_flags::*`.
    pub sched_flags: u8,
    pub _pad: u8,
    /// This service's table in `SCHED_TABLE`: the rr/wrr sequence, the sh/dh buckets or the
    /// Maglev slots (empty for the dynamic schedulers).
    pub table_off: u32,
    pub table_len: u32,
    /// The service's backends in IPVS list order (newest first) in `SCHED_TABLE`, for the
    /// schedulers that scan them; `members_len == 0`: no backend.
    pub members_off: u32,
    pub members_len: u32,
    /// Persistence timeout in seconds (with `svc_flags::PERSISTENT`).
    pub persist_timeout: u32,
    /// Persistence netmask (`-M`), as IPVS's `ip_vs_service::netmask`: for an IPv4 service
    /// the netmask in network byte order (255.255.255.255 when not given); for an IPv6
    /// service the prefix length, 0..=128, in host order (ipvsadm takes `-M 64` for IPv6;
    /// 128 when not given). `Service::persist_client` applies it.
    pub persist_mask: u32,
}

impl Service {
    /// The client network a persistence template of this service is keyed by
    /// (`PersistKey::client`): an IPv4 client's address & `persist_mask`, an IPv6 client's
    /// first `persist_mask` bits (IPVS `ip_vs_sched_persist`'s `ipv6_addr_prefix`).
    #[inline(always)]
    pub const fn persist_client(&self, client: Addr) -> Addr {
        if client.is_v4() {
            Addr::v4(client.w[3] & self.persist_mask)
        } else {
            client.prefix(self.persist_mask)
        }
    }
}

/// Connections of one backend, as the last sweep counted them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RsConns {
    pub active: u32,
    pub inactive: u32,
    /// Persistence templates pointing at it.
    pub persist: u32,
    /// 1 while overloaded (`-x`/`-y`, IPVS's hysteresis).
    pub overloaded: u32,
}

/// Persistence template key: the service and the client's network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKey {
    pub svc_id: u32,
    /// Client address & netmask.
    pub client: Addr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistVal {
    pub backend: u32,
    pub _pad: u32,
    /// `Settings::clock_ns` when last used or last seen controlling a connection.
    pub last_seen_ns: u64,
}

/// lblc/lblcr key: the service and the packet's destination address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LblcKey {
    pub svc_id: u32,
    pub daddr: Addr,
}

/// lblc/lblcr value: the server (lblc: `set[0]`) or server set (lblcr).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LblcVal {
    pub set: [u32; size::LBLCR_SET],
    pub len: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
    /// lblcr: when the set last changed.
    pub last_mod_ns: u64,
}

/// What the last sweep did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub entries: u64,
    pub expired: u64,
    pub templates: u64,
    pub templates_expired: u64,
}

/// A destination of one service (IPVS `ip_vs_dest`), indexed by backend id.
///
/// IPv6 (layout 5): a real server has its service's family (IPVS refuses a mix). For an IPv6
/// one, `addr`/`vaddr` are IPv6 (`Addr::from_octets`); DR6: `dmac` is the real server's MAC
/// from the IPv6 neighbour table (NDP), `smac`/`ifindex` the director's interface, with
/// `NEIGH_OK`, kept fresh as for IPv4; NAT6: the next hop towards the real server as for
/// IPv4 (or `NEIGH_OK` clear: the data path asks the FIB, AF_INET6); TUN6: `tun_src` is the
/// director's IPv6 source address for the outer IPv6 header, and `mtu` the path MTU (the
/// outer packet is 40 bytes longer; Packet Too Big is sent past it). NAT6 and TUN6 need
/// `net.ipv6.conf.all.forwarding=1` on the director (the FIB lookup refuses otherwise), as
/// NAT and TUN need `ip_forward`. `NAT_RS` holds an IPv6 NAT real server's `SvcKey` as for
/// IPv4; `NAT_HOPS` is keyed by the IPv6 client and filled by the data path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Real server address and port, network byte order.
    pub addr: Addr,
    pub port: u16,
    /// `fwd::*`.
    pub fwd: u8,
    /// `backend_flags::*`.
    pub flags: u8,
    /// The service this backend belongs to.
    pub svc_id: u32,
    /// Interface that leads to the backend (or its next hop).
    pub ifindex: u32,
    /// Next-hop MAC (the real server's, in DR mode).
    pub dmac: [u8; 6],
    /// MAC of `ifindex`, used as the source MAC.
    pub smac: [u8; 6],
    pub weight: u32,
    /// The service's VIP and port, network byte order (NAT replies are SNATed to them).
    pub vaddr: Addr,
    pub vport: u16,
    /// MTU of the path to `ifindex`'s next hop (0: unknown, ask the FIB).
    pub mtu: u16,
    /// TUN: the outer source address, network byte order.
    pub tun_src: Addr,
    /// `-x`/`-y` connection thresholds (0: none).
    pub u_threshold: u32,
    pub l_threshold: u32,
}

/// Connection-table key: the packet's 5-tuple as seen on the wire, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    // Integer padding, not `[u8; 3]`: zeroing an array compiles to a call into a byte-loop
    // memset subprogram on the hot path.
    pub _pad0: u8,
    pub _pad1: u16,
}

impl FlowKey {
    /// The key of an IPv4 packet from `saddr:sport` to `daddr:dport` (network byte order).
    #[inline(always)]
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> Self {
        Self::of(Addr::v4(saddr), Addr::v4(daddr), sport, dport, proto)
    }

    /// The key of a packet from `saddr:sport` to `daddr:dport` (network byte order).
    #[inline(always)]
    pub const fn of(saddr: Addr, daddr: Addr, sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }

    /// For the request key of a NAT connection (client → VIP) DNATed to `rip:rport`: the key
    /// of its reply entry (RIP:rport → client).
    #[inline(always)]
    pub const fn nat_reply(&self, rip: Addr, rport: u16) -> Self {
        Self::of(rip, self.saddr, rport, self.sport, self.proto)
    }

    /// For the key of a NAT reply entry (RIP → client) of the service `vip:vport`: the key
    /// of its connection's request entry (client → VIP).
    #[inline(always)]
    pub const fn nat_request(&self, vip: Addr, vport: u16) -> Self {
        Self::of(self.daddr, vip, self.dport, vport, self.proto)
    }
}

/// Connection-table value: what every connection needs, 16 bytes. Where a NAT connection's
/// replies go is cached apart (`NatHop`), since DR and TUN connections never need it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub backend: u32,
    /// `tcp_state::*` for TCP, `udp_state::NORMAL` for UDP.
    pub state: u8,
    /// `conn_flags::*`.
    pub flags: u8,
    /// `sync_stamp::of(clock)` when the connection was last sent to the sync BACKUP (or
    /// recorded): the refresh of `settings_flags::SYNC_MASTER` compares against it.
    pub _pad: u16,
    /// `Settings::clock_ns` when the last packet was seen. (A 32-bit coarse clock would not
    /// make the entry smaller: the kernel rounds a value up to 8 bytes.)
    pub last_seen_ns: u64,
}

/// Filler entries: a few never-matching entries the daemon keeps in a large, nearly empty hash
/// table that it reads in batches (`CONNS`, `PERSIST`). `BPF_MAP_LOOKUP_BATCH` goes through
/// empty buckets without stopping until it has an entry to return, so one read of a table
/// holding a single entry walks most of its bucket array in one system call (31 ms at 16M
/// buckets here). Entries hashed to random buckets bound the gaps between non-empty buckets:
/// with m of them in n buckets the longest gap is about (n/m)·ln m buckets, so one per
/// `SPACING` buckets keeps any read to a few tens of thousands of buckets (tens of µs).
///
/// Why no packet can match one: every key the data path looks up or inserts is built by
/// `FlowKey::of` (or `new`, `nat_reply`, the ICMP error's inner key, the embryo's copy, the
/// sync installer's), all with `_pad0 = _pad1 = 0` and the protocol of a parsed TCP or UDP
/// header; a filler's key has `_pad1 = MARK` and protocol 0, and the kernel compares whole
/// keys. A filler template has service id 0, which no service has (ids start at 1).
pub mod filler {
    use super::{Addr, Conn, FlowKey, PersistKey, PersistVal, conn_flags};

    /// One filler per this many hash buckets.
    pub const SPACING: u32 = 4096;
    /// Tables with fewer buckets get none: a read through all of 2^18 empty buckets costs
    /// about 0.35 ms here.
    pub const MIN_BUCKETS: u32 = 1 << 18;
    /// In a filler connection key's `_pad1`, which every real key has 0.
    pub const MARK: u16 = 0xf11e;

    /// How many fillers a hash table of `max_entries` keeps (the kernel gives it that many
    /// buckets, rounded up to a power of two).
    pub const fn count(max_entries: u32) -> u32 {
        let buckets = max_entries.next_power_of_two();
        if buckets < MIN_BUCKETS {
            0
        } else {
            buckets / SPACING
        }
    }

    /// The address a filler's key carries: all ones, then its index. Not what keeps packets
    /// off it (`MARK` and protocol 0 do, service id 0 for templates), but it keeps a filler
    /// apart from any key a listing or a test builds.
    const fn addr(i: u32) -> Addr {
        Addr {
            w: [u32::MAX, i, 0, 0],
        }
    }

    /// The `i`th filler of the connection table.
    pub const fn conn_key(i: u32) -> FlowKey {
        FlowKey {
            saddr: addr(i),
            daddr: Addr { w: [0; 4] },
            sport: 0,
            dport: 0,
            proto: 0,
            _pad0: 0,
            _pad1: MARK,
        }
    }

    /// What every connection filler holds: no backend (id 0 is reserved), never seen.
    pub const CONN: Conn = Conn {
        backend: 0,
        state: 0,
        flags: conn_flags::FILLER,
        _pad: 0,
        last_seen_ns: 0,
    };

    /// The index of the connection filler `k`, if it is one.
    pub const fn conn_index(k: &FlowKey) -> Option<u32> {
        if k._pad1 == MARK && k.proto == 0 && k.saddr.w[0] == u32::MAX {
            Some(k.saddr.w[1])
        } else {
            None
        }
    }

    pub const fn is_conn(k: &FlowKey) -> bool {
        conn_index(k).is_some()
    }

    /// The `i`th filler of the template table.
    pub const fn persist_key(i: u32) -> PersistKey {
        PersistKey {
            svc_id: 0,
            client: addr(i),
        }
    }

    pub const PERSIST: PersistVal = PersistVal {
        backend: 0,
        _pad: MARK as u32,
        last_seen_ns: 0,
    };

    /// The index of the template filler `k`, if it is one.
    pub const fn persist_index(k: &PersistKey) -> Option<u32> {
        if k.svc_id == 0 && k.client.w[0] == u32::MAX {
            Some(k.client.w[1])
        } else {
            None
        }
    }

    pub const fn is_persist(k: &PersistKey) -> bool {
        persist_index(k).is_some()
    }
}

/// One slot of the embryonic-connection table (`maps::EMBRYO`): a connection key, its value
/// and a check word over both, one 64-byte cache line. See `embryo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbryoSlot {
    pub key: FlowKey,
    pub conn: Conn,
    /// `embryo::check` of `key` and `conn`; `embryo::EMPTY` or `embryo::BUSY` otherwise.
    pub check: u64,
}

const _: () = assert!(core::mem::size_of::<EmbryoSlot>() == 64);

/// The embryonic table's slots (`EmbryoSlot`), shared by the data path, the sweep and the
/// tests that read or forge them.
///
/// A SYN's insert is a plain store into a slot of the bucket its key hashes to (no kernel
/// call, no lock, no list to pop a node from: the LRU hash this replaces spent ~900 ns a new
/// flow there). In a full bucket the new key overwrites the oldest (as an LRU evicts its
/// oldest). Writers
/// claim a slot by swapping its check word to `BUSY` (atomically, against the value they
/// read), write key and value, then store the check: two CPUs opening the same connection
/// agree on one backend (the one whose claim failed re-reads), and a reader that meets a
/// slot being written (or torn by any other means) finds a check that does not match and
/// treats the slot as empty. The check covers what never changes while a connection lives
/// (key, backend, `REPLY`): state, flags and last-seen are updated in place as in `CONNS`.
/// An expired slot needs no delete: readers treat a slot idle past its state's timeout as
/// empty, and the sweep clears it (again by swapping the check word it saw).
pub mod embryo {
    use super::{Conn, EmbryoSlot, FlowKey, conn_flags};

    /// The check word of a slot never written, or cleared.
    pub const EMPTY: u64 = 0;
    /// The check word of a slot a CPU is writing.
    pub const BUSY: u64 = 1;

    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

    /// The 64-bit hash of a key: where its slot is (`index`) and what its check word starts
    /// from. Two multiplies per 8 bytes of key; the words are read as `u32`s (the key is
    /// 4-aligned on the BPF stack, where the verifier refuses misaligned loads).
    #[inline(always)]
    pub const fn hash(k: &FlowKey) -> u64 {
        let mut h = K1;
        h = (h ^ w(k.saddr.w[0], k.saddr.w[1])).wrapping_mul(K2);
        h = (h ^ w(k.saddr.w[2], k.saddr.w[3])).wrapping_mul(K1);
        h = (h ^ w(k.daddr.w[0], k.daddr.w[1])).wrapping_mul(K2);
        h = (h ^ w(k.daddr.w[2], k.daddr.w[3])).wrapping_mul(K1);
        let ports = ((k.sport as u32) << 16) | k.dport as u32;
        h = (h ^ w(ports, k.proto as u32)).wrapping_mul(K2);
        // MurmurHash3's finaliser: a multiply carries a bit only upwards, so without it the
        // high bits of the last words (the source port) would barely move the slot.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    #[inline(always)]
    const fn w(a: u32, b: u32) -> u64 {
        ((a as u64) << 32) | b as u64
    }

    /// Slots a key may take: the `WAYS` adjacent slots of its bucket. Measured on the
    /// fixtures' keys: one slot a key lost 13% of 1,000 embryos in 16K slots to collisions,
    /// two 0.2%, four none (a bucket overflows only when five of its embryos live at once).
    pub const WAYS: u32 = 4;

    /// The first slot of the bucket of a key whose `hash` is `h`, in a table of `mask + 1`
    /// slots (a power of two, at least `WAYS`).
    #[inline(always)]
    pub const fn bucket(h: u64, mask: u32) -> u32 {
        (h >> 32) as u32 & mask & !(WAYS - 1)
    }

    /// The check word of a slot holding a key of hash `h` and a connection of `backend`
    /// (`reply`: a NAT reply entry): never `EMPTY` nor `BUSY`.
    #[inline(always)]
    pub const fn check(h: u64, backend: u32, reply: bool) -> u64 {
        let x = (h ^ ((backend as u64) << 1) ^ reply as u64).wrapping_mul(K1);
        (x ^ (x >> 31)) | 2
    }

    /// The check word `key` and `conn` make.
    #[inline(always)]
    pub const fn check_of(key: &FlowKey, conn: &Conn) -> u64 {
        check(hash(key), conn.backend, conn.flags & conn_flags::REPLY != 0)
    }

    /// Whether `slot`, read at index `i` of a table of `mask + 1` slots, holds a connection:
    /// its check word matches, and its key belongs in that slot (what user space counts and
    /// lists; a torn, forged or half-written slot is empty).
    pub const fn intact(slot: &EmbryoSlot, i: u32, mask: u32) -> bool {
        slot.check != EMPTY
            && slot.check != BUSY
            && slot.check == check_of(&slot.key, &slot.conn)
            && bucket(hash(&slot.key), mask) == i & !(WAYS - 1)
    }

    /// Slots for a table asked to hold `n` entries: the power of two at or above it (and
    /// at least a bucket).
    pub const fn slots(n: u32) -> u32 {
        if n <= WAYS {
            WAYS
        } else {
            n.next_power_of_two()
        }
    }
}

/// Where a NAT connection's replies go towards a client (`maps::NAT_HOPS`): looked up in the
/// FIB once and again whenever `Settings::route_epoch` has moved past `epoch`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatHop {
    /// 0: not known.
    pub ifindex: u32,
    pub epoch: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// MTU of the path towards the client (0: unknown).
    pub mtu: u16,
    pub _pad: u16,
}

/// Per-service and per-backend traffic counters (summed over CPUs by the control plane).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub conns: u64,
    pub in_pkts: u64,
    pub in_bytes: u64,
    pub out_pkts: u64,
    pub out_bytes: u64,
}

/// One slot of `SVC_TABLE`; `svc.id == 0` marks an empty slot, which ends a probe sequence.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcSlot {
    pub key: SvcKey,
    pub svc: Service,
}

impl SvcKey {
    /// The key of a service (or NAT real server) `addr:port` of either family (port in
    /// network order).
    #[inline(always)]
    pub const fn of(addr: Addr, port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }

    /// The key of an IPv4 service `addr:port` (network order).
    #[inline(always)]
    pub const fn v4(addr: u32, port: u16, proto: u8) -> Self {
        Self {
            addr: Addr::v4(addr),
            port,
            proto,
            _pad: 0,
        }
    }

    /// The key as one integer with the address folded (its padding byte is always zero),
    /// for hashing: equal keys give equal values.
    #[inline(always)]
    pub const fn folded(&self) -> u64 {
        (self.addr.fold() as u64) | ((self.port as u64) << 32) | ((self.proto as u64) << 48)
    }

    /// Whether two keys are equal, word by word (what the data path compares in a probe).
    #[inline(always)]
    pub const fn same(&self, o: &SvcKey) -> bool {
        self.addr.w[0] == o.addr.w[0]
            && self.addr.w[1] == o.addr.w[1]
            && self.addr.w[2] == o.addr.w[2]
            && self.addr.w[3] == o.addr.w[3]
            && self.port == o.port
            && self.proto == o.proto
    }
}

/// Home slot of a key in a probe table of `slots` slots (a power of two): `SVC_TABLE` and
/// `NAT_RS`, shared by both sides so they agree. Multiplicative hashing; the keys are the
/// admin's, so the only thing a packet controls is which (short, bounded) probe sequence it
/// walks.
#[inline(always)]
pub const fn probe_home(key: &SvcKey, slots: u32) -> u32 {
    let x = key.folded().wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((x >> 32) as u32) & (slots - 1)
}

/// Global knobs (array of one), written only by the control plane.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Bumped whenever the layout of a map changes meaning; the data path does not read it,
    /// the daemon checks it when it adopts pinned maps.
    pub layout_version: u32,
    /// Which half of `SVC_TABLE` is live (0 or 1).
    pub svc_half: u32,
    /// The balancer's clock in ns, advanced by the daemon every `CLOCK_TICK_NS` while it runs
    /// (and so standing still while no daemon runs: connections do not age then either).
    /// Connections record it as their last activity: reading it is an inlined array load,
    /// where a clock helper costs a kernel call on every packet.
    pub clock_ns: u64,
    /// Bumped by the daemon whenever routes or neighbours change: next hops cached in
    /// connections with an older epoch are looked up again.
    pub route_epoch: u32,
    /// `settings_flags::*`.
    pub flags: u32,
}

/// The director's own ICMP errors (time exceeded), limited as the kernel's
/// `icmp_msgs_per_sec`/`icmp_msgs_burst` limit its own: a token bucket per CPU, refilled from
/// `Settings::clock_ns`. Fragmentation-needed is not limited (the kernel does not limit it
/// either: path MTU discovery must not fail).
pub mod icmp_limit {
    /// Errors per second and CPU.
    pub const PER_SEC: u64 = 1000;
    /// The bucket: one clock step's worth (`CLOCK_TICK_NS` is 100 ms), so that a clock that
    /// moves in steps still lets `PER_SEC` through on average (the kernel: 50, refilled every
    /// jiffy).
    pub const BURST: u64 = PER_SEC * super::CLOCK_TICK_NS / 1_000_000_000;
}

/// How often the daemon advances `Settings::clock_ns`.
pub const CLOCK_TICK_NS: u64 = 100_000_000;

/// Layout version of the pinned maps; bump when any type above changes.
/// 6: `EMBRYO` an array of `EmbryoSlot`s (a plain store per SYN instead of an LRU insert).
/// 5: IPv6 in the data path: `PROGS` of 4 (`lb_xdp6`, `lb_new6`), `DECAP_VIPS` keyed by
/// `Addr`, an IPv6 service's `persist_mask` a prefix length.
/// 3: `EMBRYO` and `SWEEP_KEYS`, one common LRU for `CONNS`, `lb_sweep` driven in steps.
/// 4: 16-byte addresses (`Addr`) in every key and value, a 16-byte `Conn`, NAT reply hops
/// in `NAT_HOPS`.
pub const LAYOUT_VERSION: u32 = 6;

/// `lb_sweep`'s commands: the first 8 bytes of the frame it is run on are `SweepOp`.
pub mod sweep_op {
    /// Check the `count` connection keys in `SWEEP_KEYS` against `CONNS`: expire what is idle
    /// beyond its timeout; write each key's `sweep_result` into its `_pad1`.
    pub const CONNS: u32 = 1;
    /// The same against `EMBRYO`.
    pub const EMBRYO: u32 = 2;
    /// Check the `count` templates in `SWEEP_KEYS` (`saddr.w[0]` = service id, `daddr` =
    /// client network, `sport`/`dport` = backend low/high 16 bits, `proto` = 1 to re-arm): re-arm
    /// those that still control a connection of their backend, expire the idle ones.
    pub const TEMPLATES: u32 = 3;
    /// Publish backends `[start, start + count)`'s tallies from `RS_TALLY` into `RS_CONNS`,
    /// with IPVS's overload hysteresis, and take the new connections counted since.
    pub const PUBLISH: u32 = 4;
}

/// What `lb_sweep` found for one key (written into the key's `_pad1`).
pub mod sweep_result {
    /// Expired and deleted, or already gone.
    pub const GONE: u16 = 0;
    /// Kept, counts as active.
    pub const ACTIVE: u16 = 1;
    /// Kept, counts as inactive (or a kept template).
    pub const INACTIVE: u16 = 2;
    /// Kept, not counted (a NAT reply entry).
    pub const KEPT: u16 = 3;
    /// Not looked at yet (what user space writes).
    pub const UNSEEN: u16 = 0xffff;
}

/// The command at the start of `lb_sweep`'s frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepOp {
    /// `sweep_op::*`.
    pub op: u32,
    pub count: u32,
    /// `PUBLISH`: the first backend.
    pub start: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made only of integers and byte arrays, with every
    // padding byte spelled out as a field, so any bit pattern is a valid value.
    unsafe impl aya::Pod for SvcKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Conn {}
    unsafe impl aya::Pod for EmbryoSlot {}
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for NatHop {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for SvcSlot {}
    unsafe impl aya::Pod for RsConns {}
    unsafe impl aya::Pod for PersistKey {}
    unsafe impl aya::Pod for PersistVal {}
    unsafe impl aya::Pod for LblcKey {}
    unsafe impl aya::Pod for LblcVal {}
    unsafe impl aya::Pod for SweepStats {}
    unsafe impl aya::Pod for SweepOp {}
    unsafe impl aya::Pod for SyncEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Addr>(), 16);
        assert_eq!(size_of::<SvcKey>(), 20);
        assert_eq!(size_of::<Service>(), 32);
        assert_eq!(size_of::<Backend>(), 88);
        assert_eq!(size_of::<RsConns>(), 16);
        assert_eq!(size_of::<PersistKey>(), 20);
        assert_eq!(size_of::<PersistVal>(), 16);
        assert_eq!(size_of::<LblcKey>(), 20);
        assert_eq!(size_of::<LblcVal>(), 56);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<Conn>(), 16);
        assert_eq!(size_of::<NatHop>(), 24);
        assert_eq!(size_of::<Stats>(), 40);
        assert_eq!(size_of::<Settings>(), 24);
        assert_eq!(size_of::<SvcSlot>(), 52);
        assert_eq!(size_of::<SyncEvent>(), 56);
    }

    #[test]
    fn ipv4_addresses_are_stored_ipv4_mapped() {
        let a = Addr::v4(u32::from_ne_bytes([192, 0, 2, 7]));
        // ::ffff:192.0.2.7, byte for byte as an IPv6 address on the wire.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(a) };
        assert_eq!(
            bytes,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]
        );
        assert!(a.is_v4());
        assert_eq!(a.as_v4().to_ne_bytes(), [192, 0, 2, 7]);
        assert!(
            !Addr {
                w: [0x20010db8u32.to_be(), 0, 0, 1u32.to_be()]
            }
            .is_v4()
        );
        // The reply key of a NAT connection turns back into its request key.
        let k = FlowKey::new(1u32.to_be(), 2u32.to_be(), 1000, 80, proto::TCP);
        let r = k.nat_reply(Addr::v4(3u32.to_be()), 8080);
        assert_eq!(r.nat_request(k.daddr, k.dport), k);
    }

    #[test]
    fn ipv6_helpers() {
        let b = [
            0x20, 0x01, 0x0d, 0xb8, 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        let a = Addr::from_octets(b);
        assert_eq!(a.octets(), b);
        assert!(!a.is_v4());
        assert_eq!(
            a.sched_key(),
            0x20010db8 ^ 0xaabbccdd ^ 0x01020304 ^ 0x05060708,
            "IPVS's AF_INET6 fold"
        );
        let v4 = Addr::v4(u32::from_ne_bytes([192, 0, 2, 7]));
        assert_eq!(v4.sched_key(), 0xc0000207);
        // Prefixes: /64, /0, /128, and one not on a word boundary.
        let p64 = a.prefix(64).octets();
        assert_eq!(&p64[..8], &b[..8]);
        assert_eq!(&p64[8..], &[0; 8]);
        assert_eq!(a.prefix(0), Addr::default());
        assert_eq!(a.prefix(128), a);
        assert_eq!(a.prefix(200), a);
        let p36 = a.prefix(36).octets();
        assert_eq!(&p36[..5], &[0x20, 0x01, 0x0d, 0xb8, 0xa0]);
        assert_eq!(&p36[5..], &[0; 11]);
        let v6svc = Service {
            persist_mask: 48,
            ..Service::default()
        };
        assert_eq!(v6svc.persist_client(a), a.prefix(48));
        let v4svc = Service {
            persist_mask: u32::from_ne_bytes([255, 255, 255, 0]),
            ..Service::default()
        };
        assert_eq!(
            v4svc.persist_client(v4),
            Addr::v4(u32::from_ne_bytes([192, 0, 2, 0]))
        );
    }

    #[test]
    fn svc_hash_spreads_neighbouring_vips_and_ports() {
        let mut seen = [false; size::SVC_SLOTS as usize];
        let mut collisions = 0;
        for last in 1..=64u8 {
            for port in [80u16, 443, 53] {
                let k = SvcKey::v4(
                    u32::from_ne_bytes([192, 0, 2, last]),
                    port.to_be(),
                    proto::TCP,
                );
                let h = probe_home(&k, size::SVC_SLOTS) as usize;
                if seen[h] {
                    collisions += 1;
                }
                seen[h] = true;
            }
        }
        assert!(collisions < 8, "{collisions} collisions among 192 services");
    }

    #[test]
    fn tcp_input_only_walk() {
        use tcp_state::*;
        // A client-side view of a connection through a DR director: SYN, ACK, FIN, ACK.
        let mut s = NONE;
        s = next(DIR_INPUT_ONLY, s, 0x02);
        assert_eq!(s, SYN_RECV);
        s = next(DIR_INPUT_ONLY, s, 0x10);
        assert_eq!(s, ESTABLISHED);
        s = next(DIR_INPUT_ONLY, s, 0x11);
        assert_eq!(s, FIN_WAIT);
        s = next(DIR_INPUT_ONLY, s, 0x10);
        assert_eq!(s, FIN_WAIT);
        // RST wins over every other flag.
        assert_eq!(next(DIR_INPUT_ONLY, ESTABLISHED, 0x14), CLOSE);
        // No flags at all: CLOSE, as IPVS.
        assert_eq!(next(DIR_INPUT_ONLY, ESTABLISHED, 0), CLOSE);
    }
}
