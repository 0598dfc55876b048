//! HTTP clients inside a namespace: one-shot `curl`, and a keep-alive connection that lets a
//! test check that a long-lived connection stays on its real server.
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::Netns;
use crate::cmd::report;

/// Bound on connecting and on each read/write of a [`KeepAlive`] request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `ip netns exec NS curl -sS --max-time 5 URL`: the body, or the command, status and
/// curl's error.
pub fn curl(ns: &Netns, url: &str) -> Result<String, String> {
    run_curl(ns, &[], url)
}

/// `curl` as above from source address `src` (one of the namespace's addresses).
pub fn curl_from(ns: &Netns, src: std::net::Ipv4Addr, url: &str) -> Result<String, String> {
    run_curl(ns, &["--interface", &src.to_string()], url)
}

/// `curl -sS --max-time 5 EXTRA… URL` in `ns`: its output, or what went wrong.
pub(crate) fn run_curl(ns: &Netns, extra: &[&str], url: &str) -> Result<String, String> {
    let mut cmd = ns.command("curl");
    cmd.args(["-sS", "--max-time", "5"]).args(extra).arg(url);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start curl in {}: {e}", ns.name()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(report(&cmd, &out))
    }
}

/// One TCP connection opened from inside a namespace, reused for HTTP/1.1 keep-alive GETs.
/// The socket belongs to the namespace it was created in, so only the connecting thread has
/// to enter it; requests can then be made from any thread.
pub struct KeepAlive {
    conn: BufReader<TcpStream>,
    host: String,
    local: SocketAddr,
    peer: SocketAddr,
}

impl KeepAlive {
    /// Connects from `ns` to `addr` (e.g. the VIP and port).
    pub fn connect(ns: &Netns, addr: SocketAddr) -> io::Result<KeepAlive> {
        let stream = ns.enter(|| TcpStream::connect_timeout(&addr, IO_TIMEOUT))?;
        Self::over(stream, addr)
    }

    /// Connects from `ns`, from its address `src` (one of several the namespace has, so a
    /// router's multipath hash sees many clients), to `addr`.
    pub fn connect_from(
        ns: &Netns,
        src: std::net::Ipv4Addr,
        addr: SocketAddr,
    ) -> io::Result<KeepAlive> {
        let stream = ns.enter(|| -> io::Result<TcpStream> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::from((src, 0)).into())?;
            s.connect_timeout(&addr.into(), IO_TIMEOUT)?;
            Ok(s.into())
        })?;
        Self::over(stream, addr)
    }

    /// A connected `stream` to `addr`, with the I/O timeouts set and Nagle off.
    fn over(stream: TcpStream, addr: SocketAddr) -> io::Result<KeepAlive> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        Ok(KeepAlive {
            conn: BufReader::new(stream),
            host: addr.ip().to_string(),
            local,
            peer: addr,
        })
    }

    /// `n` connections from `ns` to `addr`, each answered once (so each is established on
    /// its real server), with that answer's body (the real server's name), trimmed. An error
    /// says which connection failed, and at what.
    pub fn hold(ns: &Netns, addr: SocketAddr, n: usize) -> io::Result<Vec<(KeepAlive, String)>> {
        let at = |i: usize, what: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("connection {i} of {n} to {addr}: {what}: {e}"),
            )
        };
        (0..n)
            .map(|i| {
                let mut k = Self::connect(ns, addr).map_err(|e| at(i, "connect", e))?;
                let who = k.request().map_err(|e| at(i, "first request", e))?;
                Ok((k, who.trim().to_string()))
            })
            .collect()
    }

    /// The client's address of this connection (what the real server sees in DR mode).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn local_port(&self) -> u16 {
        self.local.port()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// `GET /` over this connection; returns the body (a real server's name).
    pub fn request(&mut self) -> io::Result<String> {
        self.get("/")
    }

    /// `GET path` over this connection; returns the body. Errors on a non-2xx status, on a
    /// closed connection, and on a response without Content-Length.
    pub fn get(&mut self, path: &str) -> io::Result<String> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lb-tests\r\nConnection: keep-alive\r\n\r\n",
            self.host
        );
        self.conn.get_mut().write_all(req.as_bytes())?;

        let status_line = self.read_line()?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        let mut length = None;
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response {status_line:?} has no Content-Length"),
            )
        })?;
        let mut body = vec![0; length];
        self.conn.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !(200..300).contains(&status) {
            return Err(io::Error::other(format!(
                "HTTP {status} from {} on connection from {}: {body:?}",
                self.peer, self.local
            )));
        }
        Ok(body)
    }

    /// One header line without CRLF; EOF is an error (the server closed the connection).
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.conn.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection {} -> {} closed by the peer",
                    self.local, self.peer
                ),
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}
