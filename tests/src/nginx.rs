//! nginx as a real server in a namespace, answering every request with its own name.
use std::time::{Duration, Instant};

use crate::cmd::describe;
use crate::{Netns, Process, TempDir};

/// Bound on nginx coming up and answering (it takes milliseconds when healthy).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

const NGINX: &str = "/usr/sbin/nginx";

/// Single-process nginx (`daemon off; master_process off;`) whose pid, logs and temp paths
/// live in a private temp dir. Body of every response: `NAME\n`.
pub struct Nginx {
    // Declared before `dir`: the process goes before its files.
    proc: Process,
    name: String,
    port: u16,
    netns: String,
    dir: TempDir,
}

impl Nginx {
    /// Serves `NAME\n` on port 80 in `ns`.
    pub fn start(ns: &Netns, name: &str) -> Nginx {
        Nginx::start_on(ns, name, 80)
    }

    /// Serves `NAME\n` on `port` (all addresses, so also a VIP on `lo`) in `ns`, and waits
    /// until it answers on 127.0.0.1.
    pub fn start_on(ns: &Netns, name: &str, port: u16) -> Nginx {
        Nginx::start_with(ns, name, port, false)
    }

    /// As [`Nginx::start_on`], listening on IPv6 too (`[::]:port`, so also an IPv6 VIP on
    /// `lo`); the namespace must have IPv6 on.
    pub fn start_dual(ns: &Netns, name: &str, port: u16) -> Nginx {
        Nginx::start_with(ns, name, port, true)
    }

    fn start_with(ns: &Netns, name: &str, port: u16, ipv6: bool) -> Nginx {
        assert!(
            std::path::Path::new(NGINX).exists(),
            "{NGINX} missing: install nginx-light (cargo xtask setup does)"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "nginx name {name:?}: use letters, digits, - and _ (it goes into the config verbatim)"
        );
        let dir = TempDir::new(&format!("nginx-{name}"));
        let d = dir.path().display();
        let listen6 = if ipv6 {
            format!("listen [::]:{port} ipv6only=on;")
        } else {
            String::new()
        };
        // keepalive limits far above any test so a long-lived connection is never closed by
        // nginx; the access log shows which client address and port each request came from.
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format lbt '$remote_addr:$remote_port -> $server_addr:$server_port "$request" $status conn=$connection req=$connection_requests';
    access_log {d}/access.log lbt;
    keepalive_timeout 300s;
    keepalive_requests 100000;
    default_type text/plain;
    server {{
        listen {port};
        {listen6}
        location / {{ return 200 "{name}\n"; }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf_path.display()));
        let mut cmd = ns.command(NGINX);
        // -e: the built-in error log path is used until the config is read.
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        let proc = Process::spawn_logged(
            &format!("nginx {name} in {}", ns.name()),
            cmd,
            &dir.join("stdout.log"),
        );
        let mut nginx = Nginx {
            proc,
            name: name.to_string(),
            port,
            netns: ns.name().to_string(),
            dir,
        };
        nginx.wait_ready(ns);
        nginx
    }

    fn wait_ready(&mut self, ns: &Netns) {
        let url = format!("http://127.0.0.1:{}/", self.port);
        let want = format!("{}\n", self.name);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.proc.try_status() {
                panic!(
                    "nginx {} in {} exited ({status}) before answering: `{}`\n--- error.log ---\n{}\n--- output ---\n{}",
                    self.name,
                    self.netns,
                    self.proc.cmdline(),
                    self.error_log(),
                    self.proc.log()
                );
            }
            let mut cmd = ns.command("curl");
            cmd.args(["-sS", "--max-time", "1", &url]);
            let out = cmd.output();
            if let Ok(out) = &out
                && out.status.success()
                && out.stdout == want.as_bytes()
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "nginx {} in {} does not answer {url} with {want:?} after {READY_TIMEOUT:?}; last try `{}`: {out:?}\n--- error.log ---\n{}",
                    self.name,
                    self.netns,
                    describe(&cmd),
                    self.error_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its private directory (config, logs, pid file, temp paths); removed on drop.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The access log: one line per request,
    /// `CLIENT_IP:PORT -> SERVER_IP:PORT "GET / HTTP/1.1" 200 conn=N req=M`.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Access-log lines that satisfy `keep`, once there are at least `want` of them. nginx
    /// writes a line only after sending the response, so a client can have its answer
    /// before the line exists: this polls (bounded) instead of reading once. Panics with
    /// the whole log if `want` never show up.
    pub fn wait_access_lines(&self, want: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = self.access_log();
            let lines: Vec<String> = log
                .lines()
                .filter(|l| keep(l))
                .map(str::to_string)
                .collect();
            if lines.len() >= want {
                return lines;
            }
            if Instant::now() >= deadline {
                panic!(
                    "nginx {} in {}: {} matching access-log lines after {READY_TIMEOUT:?}, want {want}:\n{log}",
                    self.name,
                    self.netns,
                    lines.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Client addresses (`IP:PORT`) of the logged requests, in order.
    pub fn clients(&self) -> Vec<String> {
        self.access_log()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}
