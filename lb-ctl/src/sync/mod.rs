//! Connection synchronisation between directors, in IPVS's sync protocol (version 1,
//! `net/netfilter/ipvs/ip_vs_sync.c`): the MASTER sends the connections its data path opens
//! and the state changes they go through; a BACKUP installs them, so that a takeover finds
//! every connection (whatever the scheduler) already in its table.
//!
//! `SyncConn` is the one shape both halves share: the data path's side
//! (`dataplane::syncdp`: events read from the data path, entries installed into it) and the
//! protocol's side (messages, sockets, roles) speak only in it.

use std::net::IpAddr;

/// `IP_VS_CONN_F_*` (`include/uapi/linux/ip_vs.h`): the bits of `SyncConn::flags`.
pub mod conn_flags {
    /// Forwarding method (`IP_VS_CONN_F_FWD_MASK`) and its values.
    pub const FWD_MASK: u32 = 0x0007;
    pub const MASQ: u32 = 0x0000;
    pub const LOCALNODE: u32 = 0x0001;
    pub const TUNNEL: u32 = 0x0002;
    pub const DROUTE: u32 = 0x0003;
    pub const BYPASS: u32 = 0x0004;
    pub const SYNC: u32 = 0x0020;
    pub const HASHED: u32 = 0x0040;
    pub const NOOUTPUT: u32 = 0x0080;
    pub const INACTIVE: u32 = 0x0100;
    pub const OUT_SEQ: u32 = 0x0200;
    pub const IN_SEQ: u32 = 0x0400;
    pub const SEQ_MASK: u32 = 0x0600;
    pub const NO_CPORT: u32 = 0x0800;
    pub const TEMPLATE: u32 = 0x1000;
    pub const ONE_PACKET: u32 = 0x2000;
}

/// One connection (or persistence template) as a sync message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConn {
    /// IP protocol (6 TCP, 17 UDP).
    pub protocol: u8,
    /// `conn_flags::*` (the forwarding method in the low bits; `TEMPLATE` for a
    /// persistence template, whose `cport` is 0 and whose `caddr` is the client's address
    /// masked with the service's `-M`).
    pub flags: u32,
    /// IPVS's state number: for TCP `lb_common::tcp_state::*` (the same numbering as the
    /// kernel's `IP_VS_TCP_S_*`), for UDP 0 (`IP_VS_UDP_S_NORMAL`).
    pub state: u16,
    /// Ports in host byte order.
    pub cport: u16,
    pub vport: u16,
    pub dport: u16,
    /// The service's firewall mark (0: the service is (vaddr, vport, protocol)).
    pub fwmark: u32,
    /// Seconds the connection has left in its state when it was sent (v1's `timeout`).
    pub timeout: u32,
    /// Client, virtual and real server addresses (all of one family).
    pub caddr: IpAddr,
    pub vaddr: IpAddr,
    pub daddr: IpAddr,
}

impl SyncConn {
    /// Whether this is a persistence template rather than a connection.
    pub fn is_template(&self) -> bool {
        self.flags & conn_flags::TEMPLATE != 0
    }
}
