//! `cargo xtask dist`: the Debian package (`target/dist/lb-ctl_VERSION_ARCH.deb`).
//!
//! Built with `dpkg-deb` from a staging tree, as Debian's own tools do at their core; no
//! cargo-deb, which would need installing and knows nothing of the generated man pages and
//! completions. Contents: the binary, the systemd unit, `/etc/lb/lb.toml` (a conffile made
//! from `examples/dr.toml`), the man pages and bash/zsh/fish completions the binary generates
//! from its clap definitions (`lb-ctl generate-docs`), the Grafana dashboard and the examples.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{cargo, ok, run_status, stdout_of};
use crate::{lb_ctl_path, root_dir};

/// The conffile's path in the package.
pub const CONFFILE: &str = "etc/lb/lb.toml";

pub fn run(binary: Option<&Path>, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let root = root_dir();
    let binary = match binary {
        Some(b) => b.to_path_buf(),
        None => {
            let mut build = cargo();
            build
                .args(["build", "--release", "-p", "lb-ctl"])
                .current_dir(&root);
            run_status(&mut build)?;
            lb_ctl_path()
                .parent()
                .and_then(Path::parent)
                .expect("target/debug/lb-ctl has a target dir")
                .join("release")
                .join("lb-ctl")
        }
    };
    anyhow::ensure!(binary.is_file(), "{} does not exist", binary.display());
    let out = out.map_or_else(|| root.join("target").join("dist"), Path::to_path_buf);
    // The workspace shares one version, xtask's included.
    let version = env!("CARGO_PKG_VERSION");
    let arch = stdout_of(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();

    let stage = out.join(format!("lb-ctl_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let put = |rel: &str, data: &[u8], mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = stage.join(rel);
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let read = |rel: &str| {
        std::fs::read(root.join(rel)).with_context(|| format!("reading {rel} of the repository"))
    };

    put("usr/sbin/lb-ctl", &std::fs::read(&binary)?, 0o755)?;
    // Debug info is most of a debug build's size; the package carries the program.
    run_status(
        Command::new("strip")
            .arg("--strip-debug")
            .arg(stage.join("usr/sbin/lb-ctl")),
    )?;
    put(
        "lib/systemd/system/lb-ctl.service",
        &read("dist/systemd/lb-ctl.service")?,
        0o644,
    )?;
    let mut conf =
        b"# /etc/lb/lb.toml: the configuration `lb-ctl daemon` (lb-ctl.service) applies.\n\
        # Edit it for this director, check it with `lb-ctl check --config /etc/lb/lb.toml`, then\n\
        # `systemctl reload lb-ctl`. Every key: /usr/share/doc/lb-ctl/examples/full.toml.\n\
        # Below: the LVS-DR example.\n#\n"
            .to_vec();
    conf.extend(read("examples/dr.toml")?);
    conf.extend_from_slice(
        b"\n# Prometheus metrics at http://ADDRESS:PORT/metrics (off when absent; read-only).\n\
          # [metrics]\n# listen = \"127.0.0.1:9595\"\n",
    );
    put(CONFFILE, &conf, 0o644)?;
    put(
        "usr/share/lb-ctl/grafana/lb.json",
        &read("dist/grafana/lb.json")?,
        0o644,
    )?;
    for e in std::fs::read_dir(root.join("examples"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") {
            put(
                &format!("usr/share/doc/lb-ctl/examples/{name}"),
                &std::fs::read(e.path())?,
                0o644,
            )?;
        }
    }
    put(
        "usr/share/doc/lb-ctl/copyright",
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
          Upstream-Name: lb-ctl\n\nFiles: *\nLicense: MIT or Apache-2.0\n",
        0o644,
    )?;

    // Man pages and completions, from the clap definitions of the binary being packaged.
    let docs = out.join("docs");
    if docs.exists() {
        std::fs::remove_dir_all(&docs)?;
    }
    run_status(Command::new(&binary).arg("generate-docs").arg(&docs))?;
    let mut pages = 0;
    for e in std::fs::read_dir(&docs)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(e.path())?;
        let dest = if name.ends_with(".8") {
            pages += 1;
            // gzip -n: no name or time stamp, so the same input gives the same package.
            let gz = std::process::Command::new("gzip")
                .args(["-9nc"])
                .arg(e.path())
                .output()?;
            anyhow::ensure!(gz.status.success(), "gzip {name} failed");
            put(&format!("usr/share/man/man8/{name}.gz"), &gz.stdout, 0o644)?;
            continue;
        } else if name == "lb-ctl.bash" {
            "usr/share/bash-completion/completions/lb-ctl".to_string()
        } else if name == "_lb-ctl" {
            "usr/share/zsh/vendor-completions/_lb-ctl".to_string()
        } else if name == "lb-ctl.fish" {
            "usr/share/fish/vendor_completions.d/lb-ctl.fish".to_string()
        } else {
            bail!("generate-docs wrote an unexpected file {name}");
        };
        put(&dest, &data, 0o644)?;
    }
    anyhow::ensure!(pages > 0, "generate-docs wrote no man page");

    let size_kib = du_kib(&stage)?;
    let control = format!(
        "Package: lb-ctl\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: lb-ctl developers <lb-ctl@example.org>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6, libgcc-s1\n\
         Recommends: systemd\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP layer-4 load balancer with LVS/ipvsadm semantics\n \
         lb-ctl balances TCP and UDP services over real servers like LVS (DR, NAT and\n \
         TUN forwarding, the IPVS schedulers), with the per-packet work in an XDP\n \
         program. The package holds the daemon and its ipvsadm-compatible CLI, a\n \
         systemd unit, Prometheus metrics and a Grafana dashboard.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        "DEBIAN/conffiles",
        format!("/{CONFFILE}\n").as_bytes(),
        0o644,
    )?;
    // Only make systemd see the unit; a load balancer is not started before it is configured.
    let reload = b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n\
        \tsystemctl daemon-reload >/dev/null || true\nfi\n";
    put("DEBIAN/postinst", reload, 0o755)?;
    put("DEBIAN/postrm", reload, 0o755)?;

    let deb = out.join(format!("lb-ctl_{version}_{arch}.deb"));
    run_status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    ok(&format!("built {}", deb.display()));
    Ok(deb)
}

/// Installed size in KiB, as dpkg counts it (apparent sizes, rounded up per file).
fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_dir() {
            total += du_kib(&e.path())?;
        } else {
            total += m.len().div_ceil(1024);
        }
    }
    Ok(total)
}
