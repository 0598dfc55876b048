//! Small helpers for running external commands and printing setup progress.
use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// `cargo` as invoked us (cargo sets `CARGO` for `cargo run`), else the one on PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The command line as a user would type it, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio (the user sees its progress); error if it fails.
pub fn run_status(cmd: &mut Command) -> anyhow::Result<()> {
    let line = describe(cmd);
    println!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` capturing its output; `Err` only if it cannot be started.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Runs `cmd` capturing its output; error with status and stderr unless it succeeds.
pub fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ok(msg: &str) {
    println!("ok: {msg}");
}

pub fn installing(msg: &str) {
    println!("installing: {msg}");
}

/// The one-line reason a step (or the whole task) could not be done.
pub fn fail_line(msg: &str) {
    // Keep it on one line even when an error chain contains newlines (e.g. stderr).
    let one = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {one}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
