//! A `NOTIFY_SOCKET` bound by the test: what a binary sends systemd (`READY=1`, `STATUS=`,
//! `WATCHDOG=1`, `STOPPING=1`) arrives here, as it would at systemd's socket.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A bound datagram socket and everything received on it.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
    got: Vec<String>,
}

impl NotifySocket {
    /// Binds a fresh socket in a directory of its own.
    #[must_use]
    pub fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new().prefix("notify").tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_nonblocking(true).expect("non-blocking");
        NotifySocket {
            sock,
            path,
            _dir: dir,
            got: Vec::new(),
        }
    }

    /// The path to give the process as `NOTIFY_SOCKET`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every datagram waiting; returns how many were `WATCHDOG=1` pings.
    pub fn drain(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        let mut pings = 0;
        while let Ok(len) = self.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
            if msg == "WATCHDOG=1\n" {
                pings += 1;
            }
            self.got.push(msg);
        }
        pings
    }

    /// The first datagram received so far that contains `needle`.
    pub fn find(&mut self, needle: &str) -> Option<String> {
        self.drain();
        self.got.iter().find(|m| m.contains(needle)).cloned()
    }

    /// Every datagram received so far.
    pub fn received(&mut self) -> &[String] {
        self.drain();
        &self.got
    }

    /// The `WATCHDOG=1` pings received during the next `d`.
    pub async fn pings_during(&mut self, d: Duration) -> usize {
        self.drain();
        tokio::time::sleep(d).await;
        self.drain()
    }
}
