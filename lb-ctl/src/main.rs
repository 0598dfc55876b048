//! `lb-ctl`: the daemon (`lb-ctl daemon`), config checks, and the ipvsadm-style CLI that talks
//! to the running daemon (`lb-ctl -A -t VIP:80 -s rr`, `lb-ctl -Ln`, …).

use std::{io::Read, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use lb_ctl::{api, cli, config, daemon, dataplane, logging, model, realserver};

#[derive(Parser, Debug)]
#[command(
    name = "lb-ctl",
    disable_version_flag = true,
    about = "XDP layer-4 load balancer: LVS/ipvsadm semantics, eBPF data path"
)]
struct Cli {
    /// Print the version (ipvsadm's -v, in ipvsadm's layout)
    #[arg(short = 'v', long = "version", short_alias = 'V', action = clap::ArgAction::SetTrue)]
    version: bool,
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "LB_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Log lines as text or as one JSON object each (filter with RUST_LOG, default info).
    #[arg(
        long,
        global = true,
        env = "LB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    ipvs: cli::IpvsArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Native XDP in the driver (veth, most NICs).
    Driver,
    /// Generic XDP in the stack (any interface, slower).
    Generic,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground: attach to the interfaces, pin programs and maps, serve
    /// the control socket. SIGTERM/SIGINT detach and unpin; SIGHUP reloads the config.
    Daemon {
        /// Interface to balance on (repeatable; adds to `interfaces` of the config).
        #[arg(short = 'i', long = "interface")]
        interfaces: Vec<String>,
        /// TOML config applied at start and on reload.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where programs, maps and links are pinned.
        #[arg(long, default_value = dataplane::DEFAULT_PIN_DIR)]
        pin_path: PathBuf,
        /// Connection-table entries (default 1048576, or the config's).
        #[arg(long)]
        conn_table_size: Option<u32>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value = "driver")]
        xdp_mode: Mode,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics (read-only; off by default;
        /// overrides the config's `[metrics] listen`).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Validate a config file without applying it.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Stop the daemon.
    Stop {
        /// Leave the XDP programs attached and the maps pinned: traffic keeps flowing and the
        /// next daemon adopts it, connections included.
        #[arg(long)]
        keep_datapath: bool,
    },
    /// Make the daemon re-read its config file (as SIGHUP does).
    Reload,
    /// Scale-out: withdraw this director's VIPs from BGP (`[announce]`), keep forwarding the
    /// connections that still arrive until none is active or TIMEOUT seconds pass, then stop
    /// (as SIGUSR1 does, with 300 s).
    Drain {
        /// Seconds to wait for active connections to end.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Scale-out: print the SHA-256 digest of a service's hashing table (mh, sh, dh) as the
    /// data path holds it, by real servers' addresses: equal on every director that would
    /// send a flow to the same real server.
    Digest {
        /// The TCP service, VIP:PORT or [VIP6]:PORT.
        #[arg(short = 't', long = "tcp-service", conflicts_with = "udp")]
        tcp: Option<std::net::SocketAddr>,
        /// The UDP service, VIP:PORT.
        #[arg(short = 'u', long = "udp-service")]
        udp: Option<std::net::SocketAddr>,
    },
    /// Data-path counters and daemon facts, as JSON.
    Status {
        /// Output format; JSON is the only one (accepted for scripts written as `-o json`).
        #[arg(short = 'o', long = "output", value_parser = ["json"])]
        output: Option<String>,
    },
    /// Configure this host as an LVS real server (what the tutorials' script does): the VIPs on
    /// `lo`, ARP for them silenced, and for TUN the IPIP decapsulation program on the
    /// receiving interface. Prints each change; idempotent. `--down` undoes exactly those.
    Realserver {
        /// A VIP this host serves (repeatable).
        #[arg(long = "vip")]
        vips: Vec<std::net::IpAddr>,
        #[arg(long, value_enum, default_value = "dr")]
        mode: realserver::Mode,
        /// TUN: the interface the tunnelled packets arrive on (default: the default route's).
        #[arg(long)]
        interface: Option<String>,
        /// Undo what an earlier run changed.
        #[arg(long)]
        down: bool,
        /// Where the record of the changes is kept.
        #[arg(long, default_value = realserver::DEFAULT_STATE)]
        state: PathBuf,
        /// Where the decapsulation program's link and map are pinned.
        #[arg(long, default_value = realserver::DEFAULT_PIN_DIR)]
        pin_path: PathBuf,
    },
    /// Print the TOML equivalent of a keepalived.conf or an ipvsadm rules file; what is not
    /// carried over is reported on stderr as FILE:LINE. Exits non-zero, printing no TOML,
    /// only when the file cannot be imported as written.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
    /// Attach a pass-through XDP program to IFACE and pin its link at PIN (removing PIN
    /// detaches it). For the veth peers of balancer interfaces.
    XdpPass {
        iface: String,
        #[arg(long)]
        pin: PathBuf,
    },
    /// Write the man pages (lb-ctl.8, lb-ctl-SUBCOMMAND.8) and the bash, zsh and fish
    /// completions generated from these definitions into DIR (`cargo xtask dist` uses it).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
enum ImportFrom {
    /// A keepalived.conf (includes followed): global_defs, virtual_server, checkers.
    Keepalived {
        file: PathBuf,
        /// Write the TOML here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// An ipvsadm-save dump or /etc/sysconfig/ipvsadm (what `lb-ctl -R` reads).
    Ipvsadm {
        file: PathBuf,
        /// Write the TOML here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

/// `lb-ctl import …`: diagnostics to stderr, the TOML to stdout or `output`.
fn import(from: ImportFrom) -> anyhow::Result<()> {
    let (outcome, file, output) = match from {
        ImportFrom::Keepalived { file, output } => {
            (lb_ctl::import::keepalived::import(&file), file, output)
        }
        ImportFrom::Ipvsadm { file, output } => {
            (lb_ctl::import::ipvsadm::import(&file), file, output)
        }
    };
    for d in &outcome.diags {
        eprintln!("{d}");
    }
    let errors = outcome.errors().count();
    anyhow::ensure!(
        errors == 0,
        "{}: not imported ({errors} error{})",
        file.display(),
        if errors == 1 { "" } else { "s" }
    );
    match output {
        Some(path) => std::fs::write(&path, &outcome.toml)
            .with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{}", outcome.toml);
            Ok(())
        }
    }
}

fn call_ok(socket: &std::path::Path, req: &api::Request) -> anyhow::Result<api::Response> {
    match api::call(socket, req)? {
        api::Response::Error(e) => anyhow::bail!("{e}"),
        r => Ok(r),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Some(Cmd::Daemon {
            interfaces,
            config,
            pin_path,
            conn_table_size,
            xdp_mode,
            metrics,
        }) => {
            let settings = daemon::Settings {
                interfaces,
                config,
                socket: cli.socket,
                pin_dir: pin_path,
                conn_table_size,
                xdp_mode: match xdp_mode {
                    Mode::Driver => aya::programs::XdpMode::Driver,
                    Mode::Generic => aya::programs::XdpMode::Skb,
                },
                metrics,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(settings))
        }
        Some(Cmd::Check { config }) => {
            let c = config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            dataplane::Dataplane::check(&c.model)
                .with_context(|| format!("{}", config.display()))?;
            let dests: usize = c.model.services.values().map(|e| e.dests.len()).sum();
            println!(
                "{}: ok ({} services, {} real servers)",
                config.display(),
                c.model.services.len(),
                dests
            );
            Ok(())
        }
        Some(Cmd::Stop { keep_datapath }) => {
            call_ok(&cli.socket, &api::Request::Shutdown { keep_datapath }).map(drop)
        }
        Some(Cmd::Reload) => call_ok(&cli.socket, &api::Request::Reload).map(drop),
        Some(Cmd::Drain { timeout }) => call_ok(
            &cli.socket,
            &api::Request::Drain {
                timeout_secs: timeout,
            },
        )
        .map(drop),
        Some(Cmd::Digest { tcp, udp }) => {
            let (proto, a) = match (tcp, udp) {
                (Some(a), _) => (model::Protocol::Tcp, a),
                (None, Some(a)) => (model::Protocol::Udp, a),
                (None, None) => anyhow::bail!("digest: give the service with -t or -u VIP:PORT"),
            };
            let service = model::ServiceKey {
                proto,
                addr: a.ip(),
                port: a.port(),
            };
            if let api::Response::Status(v) =
                call_ok(&cli.socket, &api::Request::Digest { service })?
            {
                println!(
                    "{} {} {} slots {}",
                    v["service"].as_str().unwrap_or_default(),
                    v["scheduler"].as_str().unwrap_or_default(),
                    v["slots"],
                    v["digest"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        Some(Cmd::Status { output: _ }) => {
            if let api::Response::Status(v) = call_ok(&cli.socket, &api::Request::Status)? {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Ok(())
        }
        Some(Cmd::Import { from }) => import(from),
        Some(Cmd::XdpPass { iface, pin }) => dataplane::attach_pass(&iface, &pin),
        Some(Cmd::GenerateDocs { dir }) => generate_docs(&dir),
        Some(Cmd::Realserver {
            vips,
            mode,
            interface,
            down,
            state,
            pin_path,
        }) => {
            let o = realserver::Options {
                vips,
                mode,
                interface,
                state,
                pin_dir: pin_path,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                if down {
                    realserver::down(&o).await
                } else {
                    realserver::up(&o).await
                }
            })
        }
        None => unreachable!("ipvsadm-style arguments are handled by `ipvsadm`"),
    }
}

/// The man pages and shell completions, from the clap definitions (the ipvsadm-style options
/// are clap arguments too, so they are documented with the rest).
fn generate_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let page = |c: clap::Command, name: &str| -> anyhow::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c)
            .title(name.to_uppercase())
            .section("8")
            .manual("System Administration")
            .source(format!("lb-ctl {}", env!("CARGO_PKG_VERSION")))
            .render(&mut out)?;
        let path = dir.join(format!("{name}.8"));
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    };
    page(cmd.clone(), "lb-ctl")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("lb-ctl-{}", sub.get_name());
        page(sub.clone().name(name.clone()), &name)?;
    }
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "lb-ctl", dir)
            .with_context(|| format!("writing the {shell} completion"))?;
    }
    Ok(())
}

const TRY_HELP: &str = "Try `lb-ctl -h' or 'lb-ctl --help' for more information.";

/// The ipvsadm-style command line: plan, ask the daemon, print the answer. Exit codes are
/// ipvsadm's (2 usage, 255 refused, 1 listing failed).
fn ipvsadm(socket: &std::path::Path, args: &cli::IpvsArgs) -> ExitCode {
    let code = |c: i32| ExitCode::from(c.clamp(0, 255) as u8);
    let plan = match cli::plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lb-ctl: {e}");
            if e.shows_try_help() {
                eprintln!("{TRY_HELP}");
            }
            return code(e.exit_code());
        }
    };
    let (req, render) = match plan {
        cli::Plan::Print(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        cli::Plan::Restore => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("lb-ctl: reading the rules from stdin: {e}");
                return code(cli::EXIT_FAILED);
            }
            match cli::parse_restore(&input) {
                Ok(ops) => (api::Request::Ops(ops), cli::Render::Nothing),
                Err((line, e)) => {
                    eprintln!("lb-ctl: line {line}: {e}");
                    return code(e.exit_code());
                }
            }
        }
        cli::Plan::Request { req, render } => (req, render),
    };
    let resp = match api::call(socket, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lb-ctl: {e:#}");
            return code(render.error_exit_code());
        }
    };
    match cli::render_response(&resp, &render) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("{msg}");
            code(render.error_exit_code())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            let _ = e.print();
            // ipvsadm exits 255 on an option it cannot parse.
            return if help {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(255)
            };
        }
    };
    logging::init(cli.log_format);
    // The daemon writes only to sockets and keeps Rust's ignored SIGPIPE. Every other command
    // dies of it quietly on a closed stdout, as ipvsadm does (`lb-ctl -Lnc | head`), instead of
    // panicking in `print!`; the control socket is written with MSG_NOSIGNAL (api::call).
    if !matches!(cli.cmd, Some(Cmd::Daemon { .. })) {
        // SAFETY: setting a signal's disposition to the default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if cli.version {
        // ipvsadm prints its version and exits at -v, whatever else is given.
        print!("{}", cli::version_line());
        return ExitCode::SUCCESS;
    }
    if cli.cmd.is_none() {
        return ipvsadm(&cli.socket, &cli.ipvs);
    }
    if cli.ipvs != cli::IpvsArgs::default() {
        eprintln!("lb-ctl: ipvsadm-style options cannot be combined with a subcommand");
        eprintln!("{TRY_HELP}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
