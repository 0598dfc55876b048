//! The thin shell's system calls: VRRP's raw IP sockets, the VIPs on interfaces (netlink),
//! gratuitous ARP (a packet socket) and link state. Nothing here decides anything.

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::Context;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::{config::Vip, packet};

/// A netlink connection on the current runtime.
pub fn netlink() -> anyhow::Result<rtnetlink::Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The kernel's description of interface `name`; `Ok(None)`: there is none.
async fn link_message(
    h: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    h.link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
}

/// An interface's index and MAC.
pub async fn link(h: &rtnetlink::Handle, name: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let msg = link_message(h, name)
        .await
        .with_context(|| format!("interface {name}"))?
        .with_context(|| format!("no interface {name}"))?;
    let mac = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or([0; 6]);
    Ok((msg.header.index, mac))
}

/// Whether the interface is up and has carrier (`UP` and `RUNNING`); a missing interface is
/// down.
pub async fn link_up(h: &rtnetlink::Handle, name: &str) -> bool {
    match link_message(h, name).await {
        Ok(Some(m)) => {
            m.header.flags.contains(LinkFlags::Up) && m.header.flags.contains(LinkFlags::Running)
        }
        _ => false,
    }
}

/// The interface's IPv4 addresses, in the kernel's order (primary first).
pub async fn addresses(h: &rtnetlink::Handle, index: u32) -> anyhow::Result<Vec<(Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = s.try_next().await? {
        for a in &m.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip)) = a {
                out.push((*ip, m.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// Adds `vip` to interface `index`. `Ok(false)`: it was already there (not ours to remove).
pub async fn add_vip(h: &rtnetlink::Handle, index: u32, vip: &Vip) -> anyhow::Result<bool> {
    let mut req = h.address().add(index, IpAddr::V4(vip.addr), vip.prefix);
    if let Some(l) = &vip.label {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Label(l.clone()));
    }
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(false),
        Err(e) => Err(e).with_context(|| format!("adding {vip}")),
    }
}

/// Removes `vip` from interface `index`; `Ok(false)`: it was not there.
pub async fn del_vip(h: &rtnetlink::Handle, index: u32, vip: &Vip) -> anyhow::Result<bool> {
    let mut found: Vec<AddressMessage> = Vec::new();
    let mut s = h
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(IpAddr::V4(vip.addr))
        .execute();
    while let Some(m) = s.try_next().await? {
        found.push(m);
    }
    let any = !found.is_empty();
    for m in found {
        match h.address().del(m).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
            Err(e) => return Err(e).with_context(|| format!("removing {vip}")),
        }
    }
    Ok(any)
}

/// A raw IPv4 socket for protocol 112 bound to one interface: receives every VRRP packet
/// arriving there (IP header included), joined to 224.0.0.18 unless unicast.
pub struct Receiver(AsyncFd<Socket>);

impl Receiver {
    pub fn new(iface: &str, index: u32, multicast: bool) -> anyhow::Result<Receiver> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(packet::PROTO))),
        )
        .context("opening a raw socket for VRRP (needs CAP_NET_RAW)")?;
        s.bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("binding the VRRP socket to {iface}"))?;
        if multicast {
            s.join_multicast_v4_n(&packet::GROUP, &InterfaceIndexOrAddress::Index(index))
                .with_context(|| format!("joining {} on {iface}", packet::GROUP))?;
        }
        s.set_nonblocking(true)?;
        // SAFETY: the socket owns its fd and moves into the AsyncFd, which drops it last.
        let fd = unsafe { AsyncFd::register(s) }.map_err(io::Error::from)?;
        Ok(Receiver(fd))
    }

    /// The next packet (IP header included).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            let r = guard.try_io(|s| {
                // SAFETY: recv only writes initialised bytes into the buffer it is given;
                // u8 and MaybeUninit<u8> have the same layout.
                let b = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
                s.get_ref().recv(b)
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }
}

/// The sending side: a raw socket bound to the advert's source address, TTL 255 for
/// multicast and unicast, multicast on this interface without loopback to ourselves.
pub struct Sender {
    sock: Socket,
}

impl Sender {
    pub fn new(iface: &str, src: Ipv4Addr) -> anyhow::Result<Sender> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(packet::PROTO))),
        )
        .context("opening a raw socket for VRRP (needs CAP_NET_RAW)")?;
        s.bind_device(Some(iface.as_bytes()))?;
        s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))
            .with_context(|| format!("binding the VRRP socket to {src}"))?;
        s.set_multicast_if_v4(&src)?;
        s.set_multicast_ttl_v4(u32::from(packet::TTL))?;
        s.set_ttl_v4(u32::from(packet::TTL))?;
        s.set_multicast_loop_v4(false)?;
        // Adverts are small and rare; never let a full queue block the state machine.
        s.set_nonblocking(true)?;
        // A receiver is not wanted on this socket: drop what arrives at once.
        let _ = s.set_recv_buffer_size(0);
        Ok(Sender { sock: s })
    }

    pub fn send(&self, payload: &[u8], dst: Ipv4Addr) -> io::Result<usize> {
        self.sock
            .send_to(payload, &SockAddr::from(SocketAddrV4::new(dst, 0)))
    }
}

/// Sends `count` gratuitous ARPs for `ip` out of interface `index` with `mac`.
pub fn send_garp(index: u32, mac: [u8; 6], ip: Ipv4Addr, count: u32) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ARP as u16).to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let frame = packet::garp(mac, ip);
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..count {
        // SAFETY: the frame and address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
