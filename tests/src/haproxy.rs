//! A throwaway HAProxy: Debian's `haproxy` (2.6) with its own configuration, a frontend on
//! a free loopback port, an empty `web` backend for lb-sync to fill through the Runtime
//! API (a stats socket at `level admin` in a temporary directory), killed on drop.
//!
//! The backend balances `roundrobin` (a dynamic algorithm: `add server` needs one) and
//! never retries (`retries 0`, no `option redispatch`, no `retry-on`): a test that counts
//! failed requests sees every failure, none hidden by a retry. Each answer carries the
//! server that gave it in `X-Lb-Server`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually::eventually_blocking;
use crate::process::{self, free_port, require_program};

const INSTALL: &str = "sudo apt-get install -y haproxy (scripts/setup does it)";

/// The backend lb-sync manages.
pub const BACKEND: &str = "web";

/// A running HAProxy.
#[derive(Debug)]
pub struct HaProxy {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl HaProxy {
    /// Starts HAProxy with an empty `web` backend.
    #[must_use]
    pub fn start() -> HaProxy {
        HaProxy::start_with(&[])
    }

    /// Starts HAProxy whose `web` backend has these servers in its configuration (name,
    /// `ADDR:PORT`): servers lb-sync must leave alone.
    #[must_use]
    pub fn start_with(static_servers: &[(&str, &str)]) -> HaProxy {
        let dir = tempfile::Builder::new().prefix("haproxy").tempdir().expect("temp dir");
        let config = dir.path().join("haproxy.cfg");
        let mut h = HaProxy {
            dir,
            config,
            port: 0,
            child: None,
        };
        let mut last = String::new();
        for _ in 0..5 {
            h.port = free_port();
            std::fs::write(&h.config, config_text(h.dir.path(), h.port, static_servers)).expect("write haproxy.cfg");
            match h.spawn() {
                Ok(()) => return h,
                Err(log) => last = log,
            }
            if !last.contains("cannot bind") && !last.contains("Address already in use") {
                break;
            }
        }
        panic!("testbed: haproxy did not start; its output:\n{last}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let haproxy = require_program("haproxy", INSTALL);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("haproxy log file");
        let mut cmd = Command::new(haproxy);
        // -db: foreground, no daemon; the process is HAProxy itself (no master).
        cmd.arg("-db")
            .arg("-f")
            .arg(&self.config)
            .stdout(Stdio::from(log.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(log));
        self.child = Some(process::spawn(cmd).expect("spawn haproxy"));
        let up = eventually_blocking("haproxy answers `show info`", Duration::from_secs(10), || {
            if self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                return Some(false);
            }
            self.try_command("show info")
                .is_some_and(|i| i.contains("Name: HAProxy"))
                .then_some(true)
        })
        .ok();
        if up == Some(true) {
            return Ok(());
        }
        self.kill();
        Err(std::fs::read_to_string(self.log_path()).unwrap_or_default())
    }

    /// The frontend's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Runtime API socket (`level admin`).
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The backend lb-sync manages.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Sends one Runtime API command; `None` when the socket does not answer.
    #[must_use]
    pub fn try_command(&self, command: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("{command}\n").as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// Sends one Runtime API command and returns its answer.
    #[must_use]
    pub fn command(&self, command: &str) -> String {
        self.try_command(command)
            .unwrap_or_else(|| panic!("haproxy does not answer `{command}`:\n{}", self.log()))
    }

    /// The servers of the backend: (name, address:port, admin state as `show stat` says
    /// it: UP, DOWN, DRAIN, MAINT, no check).
    #[must_use]
    pub fn servers(&self) -> Vec<(String, String, String)> {
        let csv = self.command(&format!("show stat {BACKEND} 4 -1"));
        let mut lines = csv.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_owned)
            .collect();
        let col = |n: &str| header.iter().position(|c| c == n).expect("show stat column");
        let (sv, addr, status) = (col("svname"), col("addr"), col("status"));
        let mut out: Vec<(String, String, String)> = lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[sv].to_owned(), f[addr].to_owned(), f[status].to_owned())
            })
            .collect();
        out.sort();
        out
    }

    /// HAProxy's own output (alerts, warnings).
    #[must_use]
    pub fn log(&self) -> String {
        process::tail(&self.log_path(), 40)
    }

    /// Kills HAProxy (its runtime changes die with it; the socket stops answering).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::kill(&mut c);
        }
    }

    /// Kills it and starts it again from its configuration, on the same port and socket:
    /// what a restart or reload does to servers added at runtime.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn() {
            panic!("testbed: haproxy did not restart; its output:\n{log}");
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config_text(dir: &Path, port: u16, static_servers: &[(&str, &str)]) -> String {
    let servers: String = static_servers
        .iter()
        .map(|(name, addr)| format!("    server {name} {addr} check inter 500ms\n"))
        .collect();
    format!(
        "global
    stats socket {sock} mode 600 level admin
    stats timeout 10s
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # Never retry: a failed request must be seen by the test, not hidden.
    retries 0

frontend fe
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    http-response set-header X-Lb-Server %s
{servers}",
        sock = dir.join("admin.sock").display()
    )
}
