//! One harness for every process a test runs and leaves running: a [`Daemon`].
//!
//! A daemon is started from a [`Command`] (optionally inside a host's network namespace, see
//! [`crate::cluster::Host::start`]), logs stdout and stderr to one file of its own, can be
//! signalled, waited for and killed, and is killed and reaped when its handle drops, also
//! when the test panics. It is spawned through [`crate::spawn`], so it dies with the test
//! process even when no destructor runs (`PR_SET_PDEATHSIG`). Every failure it reports
//! carries an excerpt of its log ([`Daemon::excerpt`]), so a red test says what the process
//! said.

#![allow(unsafe_code)]

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::eventually::eventually;

/// How many log lines a failure message quotes.
const EXCERPT_LINES: usize = 40;

/// A running process of the test, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    /// A short name for messages (`announcer-h1-w3`, `etcd-h0`).
    name: String,
    /// The process while it runs; `None` once reaped.
    child: Option<Child>,
    /// The pid, kept after the reap for messages.
    pid: u32,
    /// stdout and stderr, appended.
    log: PathBuf,
    /// The directory of the log when the daemon made its own.
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts `cmd` (stdin closed, stdout and stderr to a fresh log file in a directory of
    /// its own).
    ///
    /// # Panics
    /// When the program cannot be started: a test failure naming it.
    #[must_use]
    pub fn start(name: &str, cmd: Command) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("testbed-daemon")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join(format!("{name}.log"));
        let mut d = Daemon::spawn(name, cmd, &log, None);
        d._dir = Some(dir);
        d
    }

    /// Starts `cmd` with its log at `log` (appended, so a restart keeps the history).
    ///
    /// # Panics
    /// When the program cannot be started or the log file cannot be opened.
    #[must_use]
    pub fn start_logging_to(name: &str, cmd: Command, log: &Path) -> Daemon {
        Daemon::spawn(name, cmd, log, None)
    }

    /// Starts `cmd` inside the network namespace open at `netns` (a file of `/run/netns`),
    /// logging to `log`. The child enters the namespace between fork and exec.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path, netns: Option<BorrowedFd<'_>>) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("testbed: daemon {name}: log file {}: {e}", log.display()));
        cmd.stdout(Stdio::from(file.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(file));
        if let Some(fd) = netns {
            let raw = fd.as_raw_fd();
            // SAFETY: setns is async-signal-safe and only reads the descriptor, which stays
            // open in the parent (and so in the child) until the spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(raw, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = crate::spawn(cmd).unwrap_or_else(|e| panic!("testbed: daemon {name}: cannot start {program}: {e}"));
        Daemon {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log: log.to_owned(),
            _dir: None,
        }
    }

    /// The name given at start.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also after it exited).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The path of the log file.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last lines of its log under a header naming it, for failure messages.
    #[must_use]
    pub fn excerpt(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(EXCERPT_LINES);
        format!(
            "--- {} (pid {}), last {} of {} log lines ({}):\n{}",
            self.name,
            self.pid,
            lines.len() - from,
            lines.len(),
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Fails the test with `msg` and this daemon's log excerpt.
    pub fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!("{msg}\n{}", self.excerpt());
    }

    /// Whether the process still runs (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none() && self.child.is_some()
    }

    /// Its exit status once it exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Sends `sig` (`libc::SIGTERM`, `libc::SIGSTOP`, ...) if it still runs.
    pub fn signal(&self, sig: i32) {
        if self.child.is_some() {
            crate::signal(self.pid, sig);
        }
    }

    /// Waits up to `within` for the process to exit.
    ///
    /// # Panics
    /// When it is still running then, with its log excerpt.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let Some(child) = self.child.as_mut() else {
                self.fail(format!("daemon {}: waited for an exit already reaped", self.name));
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                self.fail(format!("daemon {} did not exit within {within:?}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `sig` and waits up to `within` for the exit.
    pub async fn stop(&mut self, sig: i32, within: Duration) -> ExitStatus {
        self.signal(sig);
        self.wait(within).await
    }

    /// SIGKILL and reap, now (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until its log contains `needle`; fails with the excerpt otherwise.
    pub async fn wait_log(&self, needle: &str, within: Duration) {
        let what = format!("daemon {} logs {needle:?}", self.name);
        if let Err(e) = eventually(&what, within, async || self.log().contains(needle).then_some(())).await {
            self.fail(e);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fails the test with `msg` and the log excerpts of `daemons`.
pub fn fail_with_logs<'a>(msg: impl fmt::Display, daemons: impl IntoIterator<Item = &'a Daemon>) -> ! {
    let excerpts: Vec<String> = daemons.into_iter().map(Daemon::excerpt).collect();
    panic!("{msg}\n{}", excerpts.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logs_waits_and_quotes_its_log_in_failures() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo hello from sh; exec sleep 30"]);
        let mut d = Daemon::start("sh", cmd);
        d.wait_log("hello from sh", Duration::from_secs(10)).await;
        assert!(d.is_running());
        assert!(d.excerpt().contains("hello from sh"), "{}", d.excerpt());
        let status = d.stop(libc::SIGTERM, Duration::from_secs(10)).await;
        assert!(!status.success());
        assert!(!d.is_running());
        let failed = std::panic::catch_unwind(|| d.fail("boom"));
        let msg = failed
            .err()
            .and_then(|p| p.downcast::<String>().ok())
            .expect("a String panic");
        assert!(msg.contains("boom") && msg.contains("hello from sh"), "{msg}");
    }
}
