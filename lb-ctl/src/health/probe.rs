//! One probe of each checker type (keepalived's check_tcp.c, check_http.c with check_ssl.c,
//! check_misc.c): connect, ask, judge. Each returns an [`Outcome`] whose error is the reason
//! a transition is logged with.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use md5::{Digest, Md5};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::{Instant, timeout_at},
};

use super::{
    checker::Outcome,
    spec::{CheckKind, CheckSpec, UrlSpec},
};

/// The most of a body an HTTP_GET reads (a health page is small; an endless answer must not
/// grow the daemon).
pub const MAX_BODY: usize = 1 << 20;

/// Runs one probe of `spec`.
pub async fn probe(spec: &CheckSpec, tls: &Arc<rustls::ClientConfig>) -> Outcome {
    match &spec.kind {
        CheckKind::Tcp => tcp(spec).await,
        CheckKind::Http(urls) => http(spec, urls, None).await,
        CheckKind::Ssl(urls) => http(spec, urls, Some(tls)).await,
        CheckKind::Misc {
            path,
            timeout,
            dynamic,
            user,
        } => misc(path, *timeout, *dynamic, user.as_deref()).await,
    }
}

/// The words a transition is logged with for a failed connect.
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        io::ErrorKind::UnexpectedEof => "connection closed early".into(),
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) => "host unreachable".into(),
            Some(libc::ENETUNREACH) => "network unreachable".into(),
            _ => e.to_string(),
        },
    }
}

/// Connects from `bindto`:`bind_port` (if set) to the target, by `deadline`.
async fn connect(spec: &CheckSpec, deadline: Instant) -> Result<TcpStream, String> {
    // The socket of the target's family: IPv6 real servers are checked over IPv6.
    let s = if spec.target.is_ipv6() {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if spec.bindto.is_some() || spec.bind_port.is_some() {
        let any = if spec.target.is_ipv6() {
            std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
        };
        let src = SocketAddr::new(spec.bindto.unwrap_or(any), spec.bind_port.unwrap_or(0));
        // A fixed source port is reused at every probe; the last one may be in TIME_WAIT.
        let _ = s.set_reuseaddr(true);
        s.bind(src).map_err(|e| format!("bind to {src}: {e}"))?;
    }
    match timeout_at(deadline, s.connect(spec.target)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(io_reason(&e)),
        Err(_) => Err("timeout".into()),
    }
}

/// TCP_CHECK: the connection is accepted within `connect_timeout`.
pub async fn tcp(spec: &CheckSpec) -> Outcome {
    let deadline = Instant::now() + spec.connect_timeout;
    let c = connect(spec, deadline).await?;
    drop(c);
    Ok(None)
}

/// HTTP_GET / SSL_GET: each URL in turn, over its own connection, as keepalived does. One
/// URL's whole exchange (connect, TLS, request, answer) must end within `connect_timeout`
/// (keepalived applies it to each step; a whole-exchange bound also catches a server that
/// trickles bytes for ever).
pub async fn http(
    spec: &CheckSpec,
    urls: &[UrlSpec],
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Outcome {
    for url in urls {
        let deadline = Instant::now() + spec.connect_timeout;
        let conn = connect(spec, deadline).await?;
        let answer = match tls {
            None => timeout_at(deadline, exchange(conn, spec, url)).await,
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::IpAddress(spec.target.ip().into());
                let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                timeout_at(deadline, async {
                    let s = connector
                        .connect(name, conn)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {}", tls_reason(&e)))?;
                    exchange(s, spec, url).await
                })
                .await
            }
        };
        let (status, body) = answer.map_err(|_| "timeout".to_string())??;
        judge(url, status, &body)?;
    }
    Ok(None)
}

fn tls_reason(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => inner.to_string(),
        None => io_reason(e),
    }
}

/// Whether an answer passes: an accepted status, then the body's digest if one is set.
pub fn judge(url: &UrlSpec, status: u16, body: &[u8]) -> Result<(), String> {
    if !url.accepts(status) {
        return Err(format!("status {status}"));
    }
    if let Some(want) = url.digest {
        let got: [u8; 16] = Md5::digest(body).into();
        if got != want {
            return Err("digest mismatch".into());
        }
    }
    Ok(())
}

/// Sends keepalived's request and reads the whole answer (HTTP/1.0: the server closes).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    spec: &CheckSpec,
    url: &UrlSpec,
) -> Result<(u16, Vec<u8>), String> {
    let req = format!(
        "GET {} HTTP/1.0\r\nUser-Agent: KeepAliveClient\r\nHost: {}\r\n\r\n",
        url.path, spec.target
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| io_reason(&e))?;
    let _ = s.flush().await;
    let mut buf = Vec::new();
    let mut limited = (&mut s).take(MAX_BODY as u64 + 64 * 1024);
    match limited.read_to_end(&mut buf).await {
        Ok(_) => {}
        // A TLS server that closes without close_notify: what arrived still counts.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(io_reason(&e)),
    }
    parse_response(&buf)
}

/// The status and body of an HTTP/1.x answer.
pub fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), String> {
    if buf.is_empty() {
        return Err("empty answer".into());
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err("bad HTTP answer (no header end)".into());
    };
    let head = &buf[..end];
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| "bad HTTP answer (status line)")?;
    let mut words = line.trim_end().split(' ');
    let (Some(version), Some(code)) = (words.next(), words.next()) else {
        return Err("bad HTTP answer (status line)".into());
    };
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err("bad HTTP answer (status line)".into());
    }
    let status: u16 = code
        .parse()
        .map_err(|_| "bad HTTP answer (status code)".to_string())?;
    let body = buf[end + 4..].to_vec();
    if body.len() > MAX_BODY {
        return Err(format!("body over {MAX_BODY} bytes"));
    }
    Ok((status, body))
}

/// MISC_CHECK: runs the command (no shell, as keepalived), in its own process group so a
/// timeout kills everything it started; exit 0 is up, 2..=255 with `dynamic` is up with
/// weight code − 2, anything else (or the timeout) is down.
pub async fn misc(command: &str, timeout: Duration, dynamic: bool, user: Option<&str>) -> Outcome {
    let mut args = command.split_whitespace();
    let Some(program) = args.next() else {
        return Err("empty misc_path".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(u) = user {
        let (uid, gid) = lookup_user(u).ok_or_else(|| format!("unknown user {u:?}"))?;
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id();
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => r.map_err(|e| format!("waiting for {program}: {e}"))?,
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: signals the group the child leads (process_group(0) above).
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.wait().await;
            return Err("timeout".into());
        }
    };
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(None),
        (Some(c @ 2..=255), _) if dynamic => Ok(Some(c as u32 - 2)),
        (Some(c), _) => Err(format!("exit code {c}")),
        (None, Some(s)) => Err(format!("killed by signal {s}")),
        (None, None) => Err("ended without a status".into()),
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// SSL_GET's TLS settings. keepalived verifies the server's certificate only when a CA is
/// configured (check_ssl.c: `SSL_CTX_load_verify_locations` with `ssl { ca … }`), which this
/// schema has no key for: so, as keepalived by default, any certificate is accepted (a
/// health check asks "does it answer", not "is it who it claims"); the handshake's own
/// signatures are still checked, and a failed handshake is a failed check.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(cfg)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::spec::Timing;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;

    fn spec(kind: CheckKind, port: u16) -> CheckSpec {
        CheckSpec {
            kind,
            target: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            bindto: None,
            bind_port: None,
            connect_timeout: Duration::from_millis(500),
            timing: Timing {
                delay_loop: Duration::from_secs(1),
                retry: 0,
                delay_before_retry: Duration::from_secs(1),
                warmup: Duration::ZERO,
            },
            alpha: false,
        }
    }

    fn url(status: &[u16], digest: Option<&[u8]>) -> Vec<UrlSpec> {
        vec![UrlSpec {
            path: "/health".into(),
            status_code: status.to_vec(),
            digest: digest.map(|b| Md5::digest(b).into()),
        }]
    }

    /// A server answering every connection with `answer` (after reading the request);
    /// `None`: accepts and never answers.
    async fn server(answer: Option<Vec<u8>>) -> (u16, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                match &answer {
                    Some(a) => {
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(a).await;
                    }
                    None => held.push(s),
                }
            }
        });
        (port, h)
    }

    fn http_answer(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    async fn dead_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn tcp_accepting_refusing_hanging() {
        let (port, _h) = server(None).await;
        assert_eq!(tcp(&spec(CheckKind::Tcp, port)).await, Ok(None));
        let dead = dead_port().await;
        assert_eq!(
            tcp(&spec(CheckKind::Tcp, dead)).await,
            Err("connection refused".into())
        );
        // Hanging: a listener whose accept queue is full drops further SYNs, so the
        // connect waits until the checker's timeout.
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = sock.listen(0).unwrap();
        let addr = full.local_addr().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
            {
                fillers.push(c);
            }
        }
        assert_eq!(
            tcp(&spec(CheckKind::Tcp, addr.port())).await,
            Err("timeout".into()),
            "{} connections filled the queue",
            fillers.len()
        );
    }

    /// An IPv6 real server is checked over IPv6 (from an IPv6 `bindto` when given): HTTP_GET
    /// against a server on `[::1]`, and a refused port there.
    #[tokio::test]
    async fn ipv6_targets_are_checked_over_ipv6() {
        let l = TcpListener::bind("[::1]:0")
            .await
            .expect("binding [::1] (the IPv6 loopback this machine has)");
        let port = l.local_addr().unwrap().port();
        let seen = tokio::spawn(async move {
            let (mut s, peer) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&http_answer("200 OK", "rs1\n")).await;
            peer
        });
        let v6 = |port| CheckSpec {
            target: SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port),
            bindto: Some(std::net::Ipv6Addr::LOCALHOST.into()),
            ..spec(CheckKind::Http(url(&[200], None)), port)
        };
        assert_eq!(probe(&v6(port), &tls_config()).await, Ok(None));
        assert!(seen.await.unwrap().is_ipv6());
        let dead = TcpListener::bind("[::1]:0").await.unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        assert_eq!(tcp(&v6(dead_port)).await, Err("connection refused".into()));
    }

    #[tokio::test]
    async fn http_status_digest_garbage_and_silence() {
        let tls = tls_config();
        let (ok, _a) = server(Some(http_answer("200 OK", "rs1\n"))).await;
        assert_eq!(
            probe(&spec(CheckKind::Http(url(&[], None)), ok), &tls).await,
            Ok(None)
        );
        assert_eq!(
            probe(
                &spec(CheckKind::Http(url(&[200], Some(b"rs1\n"))), ok),
                &tls
            )
            .await,
            Ok(None)
        );
        assert_eq!(
            probe(&spec(CheckKind::Http(url(&[], Some(b"rs2\n"))), ok), &tls).await,
            Err("digest mismatch".into())
        );
        assert_eq!(
            probe(&spec(CheckKind::Http(url(&[204], None)), ok), &tls).await,
            Err("status 200".into())
        );
        let (e500, _b) = server(Some(http_answer("500 Internal Server Error", "no"))).await;
        assert_eq!(
            probe(&spec(CheckKind::Http(url(&[], None)), e500), &tls).await,
            Err("status 500".into())
        );
        // A 500 can be asked for.
        assert_eq!(
            probe(&spec(CheckKind::Http(url(&[500], None)), e500), &tls).await,
            Ok(None)
        );
        let mut noise = vec![0u8; 4096];
        for (i, b) in noise.iter_mut().enumerate() {
            *b = (i * 7919 % 251) as u8;
        }
        let (garbage, _c) = server(Some(noise)).await;
        let r = probe(&spec(CheckKind::Http(url(&[], None)), garbage), &tls).await;
        assert!(
            r.as_ref().is_err_and(|e| e.starts_with("bad HTTP answer")),
            "{r:?}"
        );
        let (silent, _d) = server(None).await;
        assert_eq!(
            probe(&spec(CheckKind::Http(url(&[], None)), silent), &tls).await,
            Err("timeout".into())
        );
        let dead = dead_port().await;
        assert_eq!(
            probe(&spec(CheckKind::Http(url(&[], None)), dead), &tls).await,
            Err("connection refused".into())
        );
    }

    #[test]
    fn responses_are_parsed_strictly() {
        assert_eq!(
            parse_response(b"HTTP/1.0 503 Busy\r\nA: b\r\n\r\nbody"),
            Ok((503, b"body".to_vec()))
        );
        for bad in [
            &b""[..],
            b"HTTP/1.0 200 OK\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.0 2000 OK\r\n\r\n",
            b"HTTP/1.0 abc OK\r\n\r\n",
        ] {
            assert!(parse_response(bad).is_err(), "{bad:?}");
        }
    }

    /// A TLS server with a self-signed certificate for another name (a "bad" certificate:
    /// keepalived's SSL_GET accepts it without a configured CA, and so does this one).
    async fn tls_server(answer: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
        let ck = rcgen::generate_simple_self_signed(vec!["not-this-host.example".into()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()),
        );
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&answer).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (port, h)
    }

    #[tokio::test]
    async fn ssl_get_accepts_any_certificate_and_fails_on_a_bad_handshake() {
        let tls = tls_config();
        let (port, _a) = tls_server(http_answer("200 OK", "secure\n")).await;
        assert_eq!(
            probe(
                &spec(CheckKind::Ssl(url(&[], Some(b"secure\n"))), port),
                &tls
            )
            .await,
            Ok(None)
        );
        assert_eq!(
            probe(
                &spec(CheckKind::Ssl(url(&[], Some(b"other\n"))), port),
                &tls
            )
            .await,
            Err("digest mismatch".into())
        );
        let (p503, _b) = tls_server(http_answer("503 Busy", "")).await;
        assert_eq!(
            probe(&spec(CheckKind::Ssl(url(&[], None)), p503), &tls).await,
            Err("status 503".into())
        );
        // A plain-HTTP server on the TLS port: the handshake fails.
        let (plain, _c) = server(Some(http_answer("200 OK", "plain\n"))).await;
        let r = probe(&spec(CheckKind::Ssl(url(&[], None)), plain), &tls).await;
        assert!(
            r.as_ref()
                .is_err_and(|e| e.starts_with("TLS handshake failed")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn misc_exit_codes_dynamic_weights_and_timeout() {
        let dir = std::env::temp_dir().join(format!("lb-misc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("check");
        std::fs::write(&script, "#!/bin/sh\nexit $1\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = script.display();
        let t = Duration::from_secs(5);
        assert_eq!(misc(&format!("{s} 0"), t, false, None).await, Ok(None));
        assert_eq!(
            misc(&format!("{s} 1"), t, false, None).await,
            Err("exit code 1".into())
        );
        assert_eq!(
            misc(&format!("{s} 7"), t, false, None).await,
            Err("exit code 7".into())
        );
        // misc_dynamic: 0 up, 1 down, 2..255 up with weight code - 2.
        assert_eq!(misc(&format!("{s} 0"), t, true, None).await, Ok(None));
        assert_eq!(
            misc(&format!("{s} 1"), t, true, None).await,
            Err("exit code 1".into())
        );
        assert_eq!(misc(&format!("{s} 2"), t, true, None).await, Ok(Some(0)));
        assert_eq!(misc(&format!("{s} 7"), t, true, None).await, Ok(Some(5)));
        assert_eq!(
            misc(&format!("{s} 255"), t, true, None).await,
            Ok(Some(253))
        );
        let started = std::time::Instant::now();
        assert_eq!(
            misc("sleep 30", Duration::from_millis(300), false, None).await,
            Err("timeout".into())
        );
        // Killed, not waited for (a bound that cannot flake: 30 s was asked).
        assert!(started.elapsed() < Duration::from_secs(20));
        let r = misc("/nonexistent/check", t, false, None).await;
        assert!(
            r.as_ref().is_err_and(|e| e.starts_with("cannot run")),
            "{r:?}"
        );
        assert_eq!(
            misc("true", t, false, Some("no-such-user-lb")).await,
            Err("unknown user \"no-such-user-lb\"".into())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
