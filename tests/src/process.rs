//! Spawning server processes that cannot outlive the test, free ports, and waiting.

#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// Finds `program` on `PATH` or fails the test with how to install it.
#[must_use]
pub fn require_program(program: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "testbed: `{program}` is not installed, and this test needs the real server.\n\
         Install it with: {install}\n\
         (or run scripts/test, which installs everything the suite needs)"
    );
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` (stdin closed) from one long-lived thread, with `PR_SET_PDEATHSIG = SIGKILL`.
///
/// Use it for every process a test starts and leaves running. The death signal fires when the *thread* that spawned the child exits, so children are
/// spawned from a thread that lives as long as the test process: they die with it, even
/// when the test is killed and no destructor runs.
pub fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs
                    // between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the testbed spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    cmd.stdin(std::process::Stdio::null());
    tx.send((cmd, reply_tx)).expect("testbed spawner alive");
    reply_rx.recv().expect("testbed spawner answered")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Servers started on it retry with another port if they lose the race.
#[must_use]
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `n` distinct free loopback ports. Each listener is held until all are bound: separate
/// [`free_port`] calls can get the same port back (a three-member etcd was once started
/// with two members on one peer port: "initial cluster ... has duplicate url").
#[must_use]
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// The path of a binary of this workspace (`announcer`, `lb-sync`, `dbhelper`), built by
/// `cargo build --workspace --bins` (scripts/test does it before the tests run).
///
/// Integration tests of a binary's own crate use `env!("CARGO_BIN_EXE_<name>")` instead.
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps/; binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "testbed: binary {} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Last `n` lines of a log file, for failure messages.
pub(crate) fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends `signal` (`libc::SIGTERM`, ...) to the process `pid`.
pub fn signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits i32");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Freezes the process `pid` (SIGSTOP) and returns once every one of its threads is
/// stopped, or after 5 s. SIGSTOP is only queued by `kill`: a thread busy on the other core
/// goes on until the kernel gets to it, and a test that freezes a server and at once sends
/// it a request saw that request answered (etcd revoked a lease 3 ms after the SIGSTOP).
pub fn freeze(pid: u32) {
    signal(pid, libc::SIGSTOP);
    let stopped = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut all = true;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // "tid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            // 'T' stopped, 't' traced; a thread that is gone (None, 'Z', 'X') runs nothing either.
            all &= !matches!(state, Some('R' | 'S' | 'D' | 'I' | 'W' | 'P'));
        }
        all.then_some(())
    };
    let _ = crate::eventually_blocking("the frozen process stops", Duration::from_secs(5), stopped);
}

/// Kills a child and reaps it.
pub(crate) fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A blocking HTTP/1.0 GET on 127.0.0.1: the whole answer (status line, headers, body).
#[must_use]
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(64);
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 64, "{ports:?}");
        assert!(ports.iter().all(|p| *p > 0));
    }

    /// A frozen process is stopped when `freeze` returns, every thread of it.
    #[test]
    fn freeze_returns_once_the_process_is_stopped() {
        let mut child = Command::new("/bin/sleep").arg("30").spawn().expect("spawn sleep");
        freeze(child.id());
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).expect("stat");
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_owned());
        kill(&mut child);
        assert!(state.as_deref().is_some_and(|s| s.starts_with('T')), "{stat}");
    }
}
