//! UDP in namespaces: an echo server that tags each answer with its real server's name, and a
//! one-datagram client, for checking UDP services through the balancer.
use std::io::{self, ErrorKind};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Netns;

/// How often the server thread looks at its stop flag: bounds how long Drop waits.
const POLL: Duration = Duration::from_millis(100);

/// How long [`udp_query`] waits for the answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest datagram either side reads; the tests send short strings.
const MAX_DATAGRAM: usize = 64 * 1024;

/// A thread answering every datagram on `0.0.0.0:port` in a namespace with `"{name}:{payload}"`
/// sent back to its sender. Drop stops and joins it.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    received: Arc<Mutex<Vec<Received>>>,
    name: String,
    port: u16,
    netns: String,
}

impl UdpEcho {
    /// Binds `0.0.0.0:port` inside `ns` (panics if that fails) and starts answering. Ready when
    /// this returns: the socket exists, so datagrams queue even before the thread reads.
    pub fn start(ns: &Netns, name: &str, port: u16) -> UdpEcho {
        // Only the binding needs the namespace: a socket stays in the netns it was made in,
        // so the serving thread itself need not enter it.
        let socket = ns
            .enter(|| UdpSocket::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| {
                panic!(
                    "UDP echo {name}: binding 0.0.0.0:{port} in {}: {e}",
                    ns.name()
                )
            });
        // The destination of each datagram, so the answer can be sent from it.
        set_pktinfo(&socket).unwrap_or_else(|e| panic!("UDP echo {name}: setting IP_PKTINFO: {e}"));
        socket
            .set_read_timeout(Some(POLL))
            .unwrap_or_else(|e| panic!("UDP echo {name}: setting a read timeout: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let tag = name.to_string();
        let label = format!("udp echo {name} in {}", ns.name());
        let thread = std::thread::Builder::new()
            .name(format!("udp-echo-{name}"))
            .spawn({
                let stop = Arc::clone(&stop);
                let received = Arc::clone(&received);
                move || serve(&socket, &tag, &label, &stop, &received)
            })
            .unwrap_or_else(|e| panic!("UDP echo {name}: spawning its thread: {e}"));
        UdpEcho {
            stop,
            thread: Some(thread),
            received,
            name: name.to_string(),
            port,
            netns: ns.name().to_string(),
        }
    }

    /// The tag of its answers (`rs1`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Every datagram answered so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The source address of every datagram answered so far, in order (what the real server
    /// saw as the client: the client itself through the balancer, never the director).
    pub fn senders(&self) -> Vec<SocketAddr> {
        self.received().into_iter().map(|r| r.from).collect()
    }
}

fn set_pktinfo(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Who sent it (and got the answer).
    pub from: SocketAddr,
    /// The address it was sent to (the VIP on a DR/TUN real server), from `IP_PKTINFO`.
    pub to: Option<Ipv4Addr>,
    pub payload: String,
}

fn serve(
    socket: &UdpSocket,
    name: &str,
    label: &str,
    stop: &AtomicBool,
    received: &Mutex<Vec<Received>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !stop.load(Ordering::Relaxed) {
        let (n, from, to) = match recv_with_dst(socket, &mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // An ICMP error for an earlier answer can surface here; it is not fatal.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                eprintln!("warning: {label}: recvmsg: {e}; stopping");
                return;
            }
        };
        let payload = String::from_utf8_lossy(&buf[..n]).into_owned();
        let answer = format!("{name}:{payload}");
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Received { from, to, payload });
        if let Err(e) = send_from(socket, answer.as_bytes(), from, to) {
            eprintln!("warning: {label}: answering {from}: {e}");
        }
    }
}

/// `recvmsg` that also returns the datagram's destination address (`IP_PKTINFO`).
fn recv_with_dst(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<Ipv4Addr>)> {
    // SAFETY: all-zero is a valid sockaddr_in and msghdr.
    let mut name: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s: cmsg headers need their alignment.
    let mut control = [0u64; 16];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control) as _;
    // SAFETY: every pointer in msg is valid for the lengths given, for the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(name.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(name.sin_port),
    ));
    let mut to = None;
    // SAFETY: msg was filled in by recvmsg; the CMSG_* macros stay within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                to = Some(Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes()));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, from, to))
}

/// Sends `data` to `dst` with source address `src` (`IP_PKTINFO`), so an answer comes from
/// the address the question went to. A socket on 0.0.0.0 would otherwise answer from the
/// outgoing interface's address, not from a VIP on `lo`, and the client would drop it.
fn send_from(
    socket: &UdpSocket,
    data: &[u8],
    dst: SocketAddr,
    src: Option<Ipv4Addr>,
) -> io::Result<usize> {
    let (SocketAddr::V4(dst4), Some(src)) = (dst, src) else {
        return socket.send_to(data, dst);
    };
    let name = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dst4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = [0u64; 8];
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from_ne_bytes(src.octets()),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    // SAFETY: all-zero is a valid msghdr; the pointers set below are valid for the call, and
    // the control buffer (64 bytes, aligned) holds one in_pktinfo cmsg (CMSG_SPACE = 32).
    let n = unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&name as *const libc::sockaddr_in as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen =
            libc::CMSG_SPACE(mem::size_of::<libc::in_pktinfo>() as libc::c_uint) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in_pktinfo>() as libc::c_uint) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
        libc::sendmsg(socket.as_raw_fd(), &msg, 0)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("warning: udp echo {} in {} panicked", self.name, self.netns);
        }
    }
}

/// Sends `payload` in one datagram from inside `ns` (an ephemeral port on 0.0.0.0) to `dst`
/// and waits up to [`QUERY_TIMEOUT`] for one answer, which must come from `dst` itself (as a
/// client behind a balancer expects: in NAT mode that proves the source was rewritten back to
/// the VIP). Returns the answer's text, or what went wrong.
pub fn udp_query(ns: &Netns, dst: SocketAddr, payload: &str) -> Result<String, String> {
    let socket = ns
        .enter(|| UdpSocket::bind(("0.0.0.0", 0)))
        .map_err(|e| format!("binding a UDP socket in {}: {e}", ns.name()))?;
    let local = socket
        .local_addr()
        .map_err(|e| format!("local address of the UDP socket in {}: {e}", ns.name()))?;
    // Not connected: an answer from the wrong address is reported instead of being filtered
    // out by the kernel and showing up as a timeout.
    socket.send_to(payload.as_bytes(), dst).map_err(|e| {
        format!(
            "sending {payload:?} from {} {local} to {dst}: {e}",
            ns.name()
        )
    })?;
    let deadline = Instant::now() + QUERY_TIMEOUT;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no UDP answer within {QUERY_TIMEOUT:?} to {payload:?} sent from {} {local} to {dst}",
                ns.name()
            ));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| format!("setting a read timeout: {e}"))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                return if from == dst {
                    Ok(text)
                } else {
                    Err(format!(
                        "answer {text:?} to {payload:?} sent from {} {local} to {dst} came from {from}",
                        ns.name()
                    ))
                };
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // An ICMP error (port unreachable …) for the query: say so rather than time out.
            Err(e) => {
                return Err(format!(
                    "waiting for the answer to {payload:?} sent from {} {local} to {dst}: {e}",
                    ns.name()
                ));
            }
        }
    }
}
