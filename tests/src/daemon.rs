//! One harness for every process a test runs and leaves running: a [`Daemon`].
//!
//! A daemon is started from a [`Command`] (optionally inside a host's network namespace, see
//! [`crate::cluster::Host::start`]), logs stdout and stderr to one file of its own, can be
//! signalled, waited for and killed, and is killed and reaped when its handle drops, also
//! when the test panics. It is spawned through [`crate::spawn`], so it dies with the test
//! process even when no destructor runs (`PR_SET_PDEATHSIG`). Every failure it reports
//! carries an excerpt of its log ([`Daemon::excerpt`]), and a daemon dropped while the test
//! panics prints that excerpt too, so a red test says what the process said whatever failed.
//!
//! [`Start`] covers the variations tests need: the log at a given path (kept across a
//! restart), stdout in a file of its own (a program whose stdout is its result, such as
//! `dbhelper wait`), a process group of its own (a shell loop and everything it runs are
//! signalled together). Sync tests use the `_blocking` twins of the waits.

#![allow(unsafe_code)]

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::eventually::{eventually, eventually_blocking};

/// How many log lines a failure message quotes.
const EXCERPT_LINES: usize = 40;

/// A running process of the test, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    /// A short name for messages (`announcer-h1-w3`, `etcd-h0`).
    name: String,
    /// The process while it runs; `None` once reaped.
    child: Option<Child>,
    /// How it ended, once reaped (also after [`Daemon::kill`]).
    exit: Option<ExitStatus>,
    /// The pid, kept after the reap for messages.
    pid: u32,
    /// Whether it leads a process group of its own (signals go to the group).
    group: bool,
    /// stderr, and stdout unless [`Start::stdout_apart`] was asked.
    log: PathBuf,
    /// stdout, when kept apart from the log.
    stdout: Option<PathBuf>,
    /// Whether a failure message already quoted its log (then the drop does not print it
    /// again).
    quoted: AtomicBool,
    /// The directory of the log when the daemon made its own.
    _dir: Option<tempfile::TempDir>,
}

/// How to start a [`Daemon`]: `Start::new(name).stdout_apart().start(cmd)`.
#[derive(Debug, Clone)]
#[must_use]
pub struct Start {
    name: String,
    log: Option<PathBuf>,
    stdout_apart: bool,
    own_group: bool,
}

impl Start {
    /// A daemon called `name` (for messages and the log file's name).
    pub fn new(name: &str) -> Start {
        Start {
            name: name.to_owned(),
            log: None,
            stdout_apart: false,
            own_group: false,
        }
    }

    /// Log to `path` (appended, so a restart keeps the history) instead of a fresh file.
    pub fn log_to(mut self, path: &Path) -> Start {
        self.log = Some(path.to_owned());
        self
    }

    /// Keep stdout in a file of its own ([`Daemon::stdout`]); the log gets stderr only.
    pub fn stdout_apart(mut self) -> Start {
        self.stdout_apart = true;
        self
    }

    /// Start it as the leader of a new session and process group (`setsid`), so
    /// [`Daemon::signal`] and the kill on drop reach whatever it runs too.
    pub fn own_group(mut self) -> Start {
        self.own_group = true;
        self
    }

    /// Starts `cmd` (stdin closed).
    ///
    /// # Panics
    /// When the program cannot be started or the log cannot be opened: a test failure
    /// naming it.
    pub fn start(self, cmd: Command) -> Daemon {
        self.spawn(cmd, None)
    }

    /// [`Start::start`] for a harness that reports errors instead of failing a test (the
    /// bench): a program that cannot be started, or a log that cannot be opened, is an
    /// error.
    ///
    /// # Errors
    /// When the log file cannot be opened or the program cannot be started.
    pub fn try_start(self, cmd: Command) -> std::io::Result<Daemon> {
        self.try_spawn(cmd, None)
    }

    /// Starts `cmd` inside the network namespace open as `netns` (a file of `/run/netns`).
    /// The child enters the namespace between fork and exec.
    pub(crate) fn spawn(self, cmd: Command, netns: Option<BorrowedFd<'_>>) -> Daemon {
        let name = self.name.clone();
        let program = cmd.get_program().to_string_lossy().into_owned();
        self.try_spawn(cmd, netns)
            .unwrap_or_else(|e| panic!("testbed: daemon {name}: cannot start {program}: {e}"))
    }

    fn try_spawn(self, mut cmd: Command, netns: Option<BorrowedFd<'_>>) -> std::io::Result<Daemon> {
        let name = self.name;
        let (dir, log) = match self.log {
            Some(log) => (None, log),
            None => {
                let dir = tempfile::Builder::new().prefix("testbed-daemon").tempdir()?;
                let log = dir.path().join(format!("{}.log", name.replace('/', "-")));
                (Some(dir), log)
            }
        };
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        let file = open(&log)?;
        let stdout = self.stdout_apart.then(|| log.with_extension("stdout"));
        let out = match &stdout {
            Some(path) => open(path)?,
            None => file.try_clone()?,
        };
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(file));
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
        if self.own_group {
            // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() == -1 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                });
            }
        }
        let child = crate::spawn(cmd)?;
        Ok(Daemon {
            name,
            pid: child.id(),
            child: Some(child),
            exit: None,
            group: self.own_group,
            log,
            stdout,
            quoted: AtomicBool::new(false),
            _dir: dir,
        })
    }
}

impl Daemon {
    /// Starts `cmd` (stdin closed, stdout and stderr to a fresh log file in a directory of
    /// its own). [`Start`] has the variations.
    ///
    /// # Panics
    /// When the program cannot be started: a test failure naming it.
    #[must_use]
    pub fn start(name: &str, cmd: Command) -> Daemon {
        Start::new(name).start(cmd)
    }

    /// Starts `cmd` with its log at `log` (appended, so a restart keeps the history).
    ///
    /// # Panics
    /// When the program cannot be started or the log file cannot be opened.
    #[must_use]
    pub fn start_logging_to(name: &str, cmd: Command, log: &Path) -> Daemon {
        Start::new(name).log_to(log).start(cmd)
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

    /// Everything it wrote to stdout so far, when started with [`Start::stdout_apart`]
    /// (empty otherwise: stdout is then in the log).
    #[must_use]
    pub fn stdout(&self) -> String {
        self.stdout
            .as_ref()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned())
            .unwrap_or_default()
    }

    /// How many times its log says `needle` (a positive sign that a pass ran again).
    #[must_use]
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// The last lines of its log under a header naming it, for failure messages.
    #[must_use]
    pub fn excerpt(&self) -> String {
        self.quoted.store(true, Ordering::Relaxed);
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
        self.try_exit().is_none()
    }

    /// Its exit status once it exited, without waiting (also after [`Daemon::kill`]).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            self.exit = Some(status);
        }
        self.exit
    }

    /// Sends `sig` (`libc::SIGTERM`, `libc::SIGSTOP`, ...) if it still runs; to its whole
    /// process group when started with [`Start::own_group`].
    pub fn signal(&self, sig: i32) {
        if self.child.is_some() {
            if self.group {
                let pgid = i32::try_from(self.pid).expect("pid fits i32");
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(-pgid, sig);
                }
            } else {
                crate::signal(self.pid, sig);
            }
        }
    }

    /// Waits up to `within` for the process to exit (at once if it already did).
    ///
    /// # Panics
    /// When it is still running then, with its log excerpt.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                self.fail(format!("daemon {} did not exit within {within:?}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Daemon::wait`] for sync tests: blocks the thread.
    ///
    /// # Panics
    /// When it is still running after `within`, with its log excerpt.
    pub fn wait_blocking(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                self.fail(format!("daemon {} did not exit within {within:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and waits up to `within` for the exit.
    pub async fn stop(&mut self, sig: i32, within: Duration) -> ExitStatus {
        self.signal(sig);
        self.wait(within).await
    }

    /// SIGTERM, up to `grace` for the exit, then SIGKILL: a graceful stop that never fails,
    /// for a harness that reports how it ended instead of failing a test (the bench).
    /// Blocks the thread.
    pub fn terminate_blocking(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        self.exit
    }

    /// SIGKILL (to its group too, when it has one) and reap, now (a crash). The exit
    /// status stays readable ([`Daemon::try_exit`], [`Daemon::wait`]).
    pub fn kill(&mut self) {
        if self.child.is_some() && self.group {
            self.signal(libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.exit = c.wait().ok();
        }
    }

    /// Waits until its log contains `needle`; fails with the excerpt otherwise.
    pub async fn wait_log(&self, needle: &str, within: Duration) {
        let what = format!("daemon {} logs {needle:?}", self.name);
        if let Err(e) = eventually(&what, within, async || self.log().contains(needle).then_some(())).await {
            self.fail(e);
        }
    }

    /// [`Daemon::wait_log`] for sync tests: blocks the thread.
    pub fn wait_log_blocking(&self, needle: &str, within: Duration) {
        let what = format!("daemon {} logs {needle:?}", self.name);
        if let Err(e) = eventually_blocking(&what, within, || self.log().contains(needle).then_some(())) {
            self.fail(e);
        }
    }

    /// Waits until its log says `needle` more than `before` times (a pass ran again);
    /// fails with the excerpt otherwise.
    pub async fn wait_log_more(&self, needle: &str, before: usize, within: Duration) {
        let what = format!("daemon {} logs {needle:?} more than {before} times", self.name);
        if let Err(e) = eventually(&what, within, async || (self.log_count(needle) > before).then_some(())).await {
            self.fail(e);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        // Whatever assertion failed, the test's output ends with what the process said.
        if std::thread::panicking() && !self.quoted.load(Ordering::Relaxed) {
            eprintln!("{}", self.excerpt());
        }
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

    #[test]
    fn keeps_stdout_apart_signals_its_group_and_remembers_how_it_ended() {
        let mut cmd = Command::new("/bin/sh");
        // The child sleep is in the daemon's group: a signal to the group reaches it too.
        cmd.args(["-c", "echo result; echo said >&2; sleep 30 & wait"]);
        let mut d = Start::new("sh-group").stdout_apart().own_group().start(cmd);
        d.wait_log_blocking("said", Duration::from_secs(10));
        let stdout = eventually_blocking("stdout is written", Duration::from_secs(10), || {
            d.stdout().contains("result").then_some(())
        });
        assert!(stdout.is_ok(), "{}", d.excerpt());
        assert!(!d.log().contains("result"), "stdout stays out of the log: {}", d.log());
        let pgid = i32::try_from(d.pid()).unwrap();
        let status = d.terminate_blocking(Duration::from_secs(10));
        assert!(status.is_some_and(|s| !s.success()), "{status:?}");
        // SAFETY: kill with signal 0 only asks whether the group still has a member.
        let group_left = eventually_blocking("the group is gone", Duration::from_secs(10), || {
            (unsafe { libc::kill(-pgid, 0) } != 0).then_some(())
        });
        assert!(group_left.is_ok(), "the sleep of the group outlived the stop");
        assert_eq!(d.try_exit(), status, "the exit status stays readable");
        assert_eq!(d.wait_blocking(Duration::from_secs(1)), status.unwrap());
        let missing = Start::new("missing").try_start(Command::new("/nonexistent/program"));
        assert!(missing.is_err());
    }
}
