//! Removal of leftovers from aborted runs: `lbt-*` namespaces, pins and temp dirs whose run
//! (the process whose pid is in the name) is gone.
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::netns::kill_pids;
use crate::{BPFFS, PREFIX};

/// Whether the run that created `name` (`lbt-<pid hex>-…`) is still alive. Names that don't
/// parse count as dead: only this harness uses the prefix.
fn owner_alive(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| u32::from_str_radix(pid, 16).ok())
        .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists())
}

/// Deletes stale namespaces (killing what still runs in them), bpffs pin dirs and temp dirs.
/// Returns what was removed, one entry each.
pub fn remove_stale() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();

    for name in netns_names()? {
        let name = name.as_str();
        if !name.starts_with(PREFIX) || owner_alive(name) {
            continue;
        }
        // A process left inside would keep the namespace (and its links) alive unnamed.
        if let Ok(p) = Command::new("ip").args(["netns", "pids", name]).output() {
            let pids: Vec<i32> = String::from_utf8_lossy(&p.stdout)
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect();
            kill_pids(&pids);
        }
        let del = Command::new("ip")
            .args(["netns", "del", name])
            .output()
            .context("running `ip netns del`")?;
        if !del.status.success() {
            bail!(
                "`ip netns del {name}` failed: {}: {}",
                del.status,
                String::from_utf8_lossy(&del.stderr).trim()
            );
        }
        removed.push(format!("netns {name}"));
    }

    if crate::bpffs_mounted() {
        remove_dirs(Path::new(BPFFS), "pins", &mut removed)?;
    }
    remove_dirs(&std::env::temp_dir(), "temp dir", &mut removed)?;
    Ok(removed)
}

/// The names `ip netns list` shows.
pub fn netns_names() -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running `ip netns list`")?;
    if !out.status.success() {
        bail!(
            "`ip netns list` failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Lines look like `NAME` or `NAME (id: N)`.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Panics naming each of `names` that `ip netns list` still shows.
pub fn assert_netns_gone(names: &[String]) {
    let list = netns_names().expect("ip netns list");
    let left: Vec<&String> = names.iter().filter(|n| list.contains(n)).collect();
    assert!(
        left.is_empty(),
        "namespaces left after drop: {left:?}\n`ip netns list`: {list:?}"
    );
}

/// Panics naming each of `paths` that still exists.
pub fn assert_paths_gone(paths: &[std::path::PathBuf]) {
    let left: Vec<&std::path::PathBuf> = paths.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "paths left after drop: {left:?}");
}

/// Removes stale `lbt-*` entries directly under `parent`.
fn remove_dirs(parent: &Path, what: &str, removed: &mut Vec<String>) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) || owner_alive(&name) {
            continue;
        }
        let path = entry.path();
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.with_context(|| format!("removing {}", path.display()))?;
        removed.push(format!("{what} {}", path.display()));
    }
    Ok(())
}
