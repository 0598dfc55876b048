//! What the connection table and the schedulers need to know about a packet, for either
//! family: `conntrack` and `select` are generic over it, so the IPv4 programs compile to
//! exactly what they were (every method is inlined to the field it reads) and the IPv6 ones
//! get their own copies.

use lb_common::{Addr, FlowKey, Service};

pub trait FlowPkt {
    /// TCP or UDP.
    fn proto(&self) -> u8;
    /// Source port, network order.
    fn sport(&self) -> u16;
    /// The connection-table key of the packet (client → VIP).
    fn key(&self) -> FlowKey;
    /// The client's address as sh and mh hash it (`Addr::sched_key`), host order.
    fn src_key(&self) -> u32;
    /// The destination address as dh hashes it (`Addr::sched_key`), host order.
    fn dst_key(&self) -> u32;
    /// The destination address (lblc/lblcr's key).
    fn dst(&self) -> Addr;
    /// The persistence template's client network (`Service::persist_client`).
    fn persist_client(&self, svc: &Service) -> Addr;
}

impl FlowPkt for crate::parse::Packet {
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn sport(&self) -> u16 {
        self.sport
    }
    #[inline(always)]
    fn key(&self) -> FlowKey {
        FlowKey::new(self.saddr, self.daddr, self.sport, self.dport, self.proto)
    }
    #[inline(always)]
    fn src_key(&self) -> u32 {
        u32::from_be(self.saddr)
    }
    #[inline(always)]
    fn dst_key(&self) -> u32 {
        u32::from_be(self.daddr)
    }
    #[inline(always)]
    fn dst(&self) -> Addr {
        Addr::v4(self.daddr)
    }
    #[inline(always)]
    fn persist_client(&self, svc: &Service) -> Addr {
        Addr::v4(self.saddr & svc.persist_mask)
    }
}

impl FlowPkt for crate::parse6::Packet6 {
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn sport(&self) -> u16 {
        self.sport
    }
    #[inline(always)]
    fn key(&self) -> FlowKey {
        FlowKey::of(self.saddr, self.daddr, self.sport, self.dport, self.proto)
    }
    #[inline(always)]
    fn src_key(&self) -> u32 {
        // An IPv6 packet's addresses are never IPv4-mapped (`parse6` passes those), so
        // this is `Addr::sched_key` without its family test.
        u32::from_be(self.saddr.fold())
    }
    #[inline(always)]
    fn dst_key(&self) -> u32 {
        u32::from_be(self.daddr.fold())
    }
    #[inline(always)]
    fn dst(&self) -> Addr {
        self.daddr
    }
    #[inline(always)]
    fn persist_client(&self, svc: &Service) -> Addr {
        self.saddr.prefix(svc.persist_mask)
    }
}
