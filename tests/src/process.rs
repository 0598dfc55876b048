//! A child process guard: killed and reaped on drop; stdout/stderr optionally kept in a log file.
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;
use crate::cmd::describe;

/// How much of a log a panicking test prints (the tail is what explains a failure).
const LOG_TAIL_BYTES: usize = 16 * 1024;

pub struct Process {
    label: String,
    cmdline: String,
    child: Child,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
    // Holds the log when the caller gave no place for it; dropped after the child is reaped.
    _dir: Option<TempDir>,
}

impl Process {
    /// Starts `cmd` with stdout and stderr captured to a log file in a private temp dir.
    pub fn spawn(label: &str, cmd: Command) -> Process {
        let dir = TempDir::new(label);
        let log = dir.join("output.log");
        let mut p = Process::spawn_logged(label, cmd, &log);
        p._dir = Some(dir);
        p
    }

    /// Starts `cmd` with stdout and stderr appended to `log` (so a restarted process keeps
    /// the earlier run's output before its own).
    pub fn spawn_logged(label: &str, mut cmd: Command, log: &Path) -> Process {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening log {}: {e}", log.display()));
        let file2 = file
            .try_clone()
            .unwrap_or_else(|e| panic!("dup of {}: {e}", log.display()));
        cmd.stdout(file).stderr(file2);
        let mut p = Process::start(label, cmd);
        p.log = Some(log.to_path_buf());
        p
    }

    /// Starts `cmd` with stdout and stderr inherited (the demo shows them).
    pub fn spawn_inherit(label: &str, cmd: Command) -> Process {
        Process::start(label, cmd)
    }

    fn start(label: &str, mut cmd: Command) -> Process {
        cmd.stdin(Stdio::null());
        let cmdline = describe(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: `{cmdline}`: {e}"));
        Process {
            label: label.to_string(),
            cmdline,
            child,
            status: None,
            log: None,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The command line it was started with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Its exit status if it has exited (reaps it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waitpid of {} ({}): {e}", self.label, self.cmdline));
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` unless it has been reaped already.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_status().is_none() {
            // SAFETY: kill(2) on our own unreaped child's pid; no memory is involved.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    /// Waits up to `timeout` for it to exit (polling); `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_timeout(grace) {
            return s;
        }
        eprintln!(
            "warning: {} did not exit within {grace:?} of SIGTERM; killing it",
            self.label
        );
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let _ = self.child.kill();
        let s = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for {} ({}): {e}", self.label, self.cmdline));
        self.status = Some(s);
        s
    }

    /// The captured stdout+stderr so far (empty if not captured).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Prints the tail of the log to stderr (used when a test is panicking).
    pub fn dump_log(&self) {
        let log = self.log();
        if log.trim().is_empty() {
            return;
        }
        let mut start = log.len().saturating_sub(LOG_TAIL_BYTES);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        eprintln!(
            "--- output of {} (`{}`) ---\n{}\n--- end of {} ---",
            self.label,
            self.cmdline,
            &log[start..],
            self.label
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // No panics here: a second panic while a test unwinds would abort the whole run.
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        if std::thread::panicking() {
            self.dump_log();
        }
    }
}
