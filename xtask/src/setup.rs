//! `cargo xtask setup`: installs what building and testing need, idempotently, one line a step.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{describe, installing, is_root, ok, output, run_status, stdout_of};

/// Debian packages the namespace tests, the demo and the benchmarks use. Later work adds here
/// (netsniff-ng, nftables, wrk, iperf3, keepalived).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "nginx-light",
    "curl",
    "iproute2",
    "bpftool",
    "tcpdump",
    "ethtool",
    "nftables",
    "procps",
    // A real VRRP peer for the HA interop tests (`tests/tests/vrrp.rs`).
    "keepalived",
    // BIRD 2: the BGP daemon of the scale-out tests (`tests/tests/scaleout.rs`), on the
    // router and next to each director's lb-ctl.
    "bird2",
    // Operations (issue 12): promtool (`promtool check metrics`), `systemd-analyze verify`,
    // `man -l` for the packaged man page, `strip` and `dpkg-deb` for `cargo xtask dist`.
    "prometheus",
    "systemd",
    "man-db",
    "binutils",
    "dpkg",
];

/// The bpf-linker release known to build against rustc's LLVM on this image.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    if !is_root() {
        bail!(
            "not root: installing Debian packages and mounting bpffs need root; rerun `cargo xtask setup` as root"
        );
    }
    debian_packages()?;
    bpffs()?;
    Ok(())
}

/// `rustup run nightly PROGRAM`: works whether or not `cargo`/`rustc` on PATH are proxies.
fn nightly_cmd(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", program]);
    cmd
}

/// (a) rustup is there and has a `nightly` toolchain (lb-ebpf needs nightly for build-std).
fn nightly() -> anyhow::Result<()> {
    let list = match output(Command::new("rustup").args(["toolchain", "list"])) {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            bail!("rustup not found or not working (is $HOME/.cargo/bin on PATH?); install rustup")
        }
    };
    // `nightly-<host>` is what `+nightly` resolves to; a dated `nightly-2026-…` is another one.
    let has_nightly = list.lines().any(|line| {
        line.split_whitespace().next().is_some_and(|name| {
            name.strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
    });
    if has_nightly {
        ok("rustup nightly toolchain installed");
        return Ok(());
    }
    installing("rustup nightly toolchain (minimal profile)");
    run_status(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .context("installing the nightly toolchain")?;
    ok("rustup nightly toolchain installed");
    Ok(())
}

/// (b) nightly `rust-src`, which aya-build's `-Z build-std=core` needs.
fn rust_src() -> anyhow::Result<()> {
    let installed = stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src"))
    {
        ok("nightly rust-src component installed");
        return Ok(());
    }
    installing("nightly rust-src component");
    run_status(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("adding rust-src to nightly")?;
    ok("nightly rust-src component installed");
    Ok(())
}

/// What `rustc +nightly -vV` says about itself.
struct Nightly {
    /// First line, e.g. `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`.
    version: String,
    llvm_major: u32,
    sysroot: PathBuf,
}

fn nightly_info() -> anyhow::Result<Nightly> {
    let vv = stdout_of(nightly_cmd("rustc").arg("-vV"))?;
    let version = vv.lines().next().unwrap_or_default().trim().to_string();
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .with_context(|| format!("`rustc +nightly -vV` reports no LLVM version:\n{vv}"))?
        .trim()
        .to_string();
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {llvm:?}"))?;
    let sysroot = PathBuf::from(
        stdout_of(nightly_cmd("rustc").args(["--print", "sysroot"]))?
            .trim()
            .to_string(),
    );
    Ok(Nightly {
        version,
        llvm_major,
        sysroot,
    })
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// (c) bpf-linker on PATH, built against the LLVM of nightly rustc (they exchange bitcode).
///
/// bpf-linker cannot tell which LLVM it links, so we record it in a stamp file when we build
/// it and rebuild when nightly (its version or LLVM major) changed or the binary doesn't run.
fn bpf_linker() -> anyhow::Result<()> {
    let nightly = nightly_info()?;
    let major = nightly.llvm_major;
    let cache = home()?.join(".cache").join("lb-toolchain");
    // A lasting directory: bpf-linker keeps an rpath to prefix/lib.
    let prefix = cache.join(format!("llvm-{major}"));
    let stamp_path = cache.join("bpf-linker.stamp");
    let stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION}\nllvm-major {major}\nnightly {}\n",
        nightly.version
    );

    let runs = bpf_linker_runs();
    let recorded = std::fs::read_to_string(&stamp_path).ok();
    match (&runs, recorded.as_deref()) {
        (Ok(v), Some(s)) if s == stamp => {
            ok(&format!(
                "{v} built against LLVM {major} of {}",
                nightly.version
            ));
            return Ok(());
        }
        (Ok(v), Some(_)) => installing(&format!(
            "bpf-linker {BPF_LINKER_VERSION} for LLVM {major} ({v} was built for another nightly, see {})",
            stamp_path.display()
        )),
        (Ok(v), None) => installing(&format!(
            "bpf-linker {BPF_LINKER_VERSION} for LLVM {major} ({v} has no record of its LLVM in {})",
            stamp_path.display()
        )),
        (Err(why), _) => installing(&format!(
            "bpf-linker {BPF_LINKER_VERSION} for LLVM {major} ({why})"
        )),
    }

    link_rust_llvm(&nightly.sysroot, &prefix)?;
    // Stale stamp first: an interrupted build must not look like a good one.
    let _ = std::fs::remove_file(&stamp_path);
    let install = |locked: bool| {
        let mut cmd = nightly_cmd("cargo");
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
        if locked {
            cmd.arg("--locked");
        }
        cmd.args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            // Rebuild even when cargo thinks the same version is already installed.
            .arg("--force")
            // Outside the workspace, so its .cargo/config.toml plays no part.
            .current_dir(&cache);
        run_status(&mut cmd)
    };
    if let Err(e) = install(true) {
        println!("note: {e:#}; retrying without --locked");
        install(false).context("building bpf-linker")?;
    }
    let v = bpf_linker_runs().map_err(|why| {
        anyhow::anyhow!("bpf-linker was installed but {why} (is $HOME/.cargo/bin on PATH?)")
    })?;
    std::fs::write(&stamp_path, &stamp)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    ok(&format!(
        "{v} built against LLVM {major} of {}",
        nightly.version
    ));
    Ok(())
}

/// `Ok(version line)` if `bpf-linker --version` runs, else why not.
fn bpf_linker_runs() -> Result<String, String> {
    let mut cmd = Command::new("bpf-linker");
    cmd.arg("--version");
    match cmd.output() {
        Err(e) => Err(format!("bpf-linker not found on PATH: {e}")),
        Ok(out) if !out.status.success() => Err(format!(
            "`{}` fails: {}: {}",
            describe(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
    }
}

/// Makes `prefix/lib` look like an LLVM install holding rustc's own libLLVM: `libLLVM.so` and
/// the library under its own file name (its soname) link to the file in nightly's sysroot.
fn link_rust_llvm(sysroot: &Path, prefix: &Path) -> anyhow::Result<()> {
    let sys_lib = sysroot.join("lib");
    let mut names: Vec<String> = std::fs::read_dir(&sys_lib)
        .with_context(|| format!("listing {}", sys_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("libLLVM"))
        .collect();
    names.sort();
    // The real library is `libLLVM.so.<ver>-rust-<ver>-nightly`; its soname is that name.
    let versioned = names
        .iter()
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.<version> in {} (found: {names:?})",
                sys_lib.display()
            )
        })?
        .clone();
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // Links from an older nightly would point at files that no longer exist.
    for entry in std::fs::read_dir(&lib)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("libLLVM") {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    let mut links = vec![("libLLVM.so".to_string(), versioned.clone())];
    links.extend(names.iter().map(|n| (n.clone(), n.clone())));
    for (link, target) in links {
        let from = lib.join(&link);
        let to = sys_lib.join(&target);
        std::os::unix::fs::symlink(&to, &from)
            .with_context(|| format!("symlink {} -> {}", from.display(), to.display()))?;
    }
    ok(&format!(
        "{}/libLLVM.so -> {}",
        lib.display(),
        sys_lib.join(&versioned).display()
    ));
    Ok(())
}

/// (d) Debian packages, installed only when missing.
fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        ok(&format!(
            "Debian packages installed: {}",
            DEBIAN_PACKAGES.join(" ")
        ));
        return Ok(());
    }
    installing(&format!("Debian packages: {}", missing.join(" ")));
    run_status(Command::new("apt-get").args(["update", "-q"])).context("apt-get update")?;
    run_status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !still.is_empty() {
        bail!("apt-get install finished but these are still not installed: {still:?}");
    }
    ok(&format!(
        "Debian packages installed: {}",
        DEBIAN_PACKAGES.join(" ")
    ));
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout) == "install ok installed"
        })
}

/// (e) bpffs at /sys/fs/bpf: not mounted on a fresh boot here, and pins need it.
fn bpffs() -> anyhow::Result<()> {
    if lb_tests::bpffs_mounted() {
        ok("bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    installing("bpffs at /sys/fs/bpf");
    run_status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs")?;
    ok("bpffs mounted at /sys/fs/bpf");
    Ok(())
}
