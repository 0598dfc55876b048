//! Running external commands (`ip`, `curl`, lb-ctl) so that failures say exactly what failed.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of a system tool: found on PATH, else in the sbin directories, which a non-login
/// root shell or CI's environment may leave off PATH (sysctl, ethtool, tcpdump live there).
/// Falls back to the bare name, so a missing tool fails with the command line shown.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| Path::new(name).to_path_buf())
}

/// The command line as a user would type it.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        let a = arg.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Command line, status, stdout and stderr of a finished command, for panic messages.
pub fn report(cmd: &Command, out: &Output) -> String {
    format!(
        "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Runs `cmd` to completion capturing its output, whatever its exit status. Panics only if it
/// cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", describe(cmd)))
}

/// Runs `cmd`, panics with the command line, status and output unless it succeeds; returns
/// stdout.
pub fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!("command failed: {}", report(cmd, &out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `Ok(stdout)` if `cmd` succeeds, else `Err` with the command line, status and output.
pub fn try_check(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(cmd)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(report(cmd, &out))
    }
}

/// `ip ARGS…` in the current (root) network namespace; only used for `ip netns` management.
pub fn ip(args: &[&str]) -> String {
    check(Command::new("ip").args(args))
}
