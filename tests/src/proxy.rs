//! A unix socket proxy a test can cut: it listens on a unix socket of its own and
//! forwards every connection to its upstream (`/var/run/docker.sock`, or HAProxy's Runtime
//! API, where [`SocketProxy::first_lines`] shows lb-sync's calls, one command line each).
//!
//! [`SocketProxy::cut`] drops every open connection (the announcer's event stream breaks)
//! and removes the socket file (new connections fail, as when dockerd is gone);
//! [`SocketProxy::restore`] listens again on the same path. It runs on a thread of its own,
//! so it keeps working whatever the test's runtime is doing.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

enum Command {
    Cut(mpsc::Sender<()>),
    Restore(mpsc::Sender<()>),
}

/// A cuttable forwarder in front of the Docker socket.
#[derive(Debug)]
pub struct SocketProxy {
    path: PathBuf,
    _dir: tempfile::TempDir,
    tx: Option<tokio::sync::mpsc::UnboundedSender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Cut(_) => "Cut",
            Command::Restore(_) => "Restore",
        })
    }
}

impl SocketProxy {
    /// Starts forwarding `<tempdir>/docker.sock` to `upstream`.
    #[must_use]
    pub fn start(upstream: &str) -> SocketProxy {
        let dir = tempfile::Builder::new()
            .prefix("testbed-proxy")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("docker.sock");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let upstream = upstream.to_owned();
        let listen_path = path.clone();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = lines.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut session = Some(Session::listen(&listen_path, &upstream, &seen));
                let _ = ready_tx.send(());
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Command::Cut(done) => {
                            if let Some(s) = session.take() {
                                s.stop(&listen_path);
                            }
                            let _ = done.send(());
                        }
                        Command::Restore(done) => {
                            if session.is_none() {
                                session = Some(Session::listen(&listen_path, &upstream, &seen));
                            }
                            let _ = done.send(());
                        }
                    }
                }
                if let Some(s) = session.take() {
                    s.stop(&listen_path);
                }
            });
        });
        ready_rx.recv().expect("proxy started");
        SocketProxy {
            path,
            _dir: dir,
            tx: Some(tx),
            thread: Some(thread),
            lines,
        }
    }

    /// The proxy's socket path (`unix://` + this is a `DOCKER_HOST`).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `DOCKER_HOST` value for a client that should go through the proxy.
    #[must_use]
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// The first line each connection sent (a Runtime API call's command line, an HTTP
    /// request line), in the order they were forwarded.
    #[must_use]
    pub fn first_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Drops every forwarded connection and stops listening (the socket file disappears).
    pub fn cut(&self) {
        self.send(Command::Cut);
    }

    /// Listens again on the same path.
    pub fn restore(&self) {
        self.send(Command::Restore);
    }

    fn send(&self, make: fn(mpsc::Sender<()>) -> Command) {
        let (done_tx, done_rx) = mpsc::channel();
        if let Some(tx) = &self.tx {
            tx.send(make(done_tx)).expect("proxy thread alive");
            done_rx.recv().expect("proxy answered");
        }
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One listening period: the accept loop and every connection it forwards.
struct Session {
    stop: CancellationToken,
}

impl Session {
    fn listen(path: &Path, upstream: &str, seen: &Arc<Mutex<Vec<String>>>) -> Session {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind proxy socket");
        let stop = CancellationToken::new();
        let token = stop.clone();
        let upstream = upstream.to_owned();
        let lines = seen.clone();
        tokio::spawn(async move {
            loop {
                let accepted_conn = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut client, _)) = accepted_conn else { continue };
                let token = token.clone();
                let upstream = upstream.clone();
                let lines = lines.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = UnixStream::connect(&upstream).await else {
                        return;
                    };
                    // The first line is read whole, noted, then passed on; the rest is copied.
                    let Ok(first) = first_line(&mut client).await else {
                        return;
                    };
                    lines.lock().unwrap_or_else(PoisonError::into_inner).push(
                        String::from_utf8_lossy(first.split(|b| *b == b'\n').next().unwrap_or_default())
                            .trim_end()
                            .to_owned(),
                    );
                    if server.write_all(&first).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Session { stop }
    }

    fn stop(self, path: &Path) {
        self.stop.cancel();
        let _ = std::fs::remove_file(path);
    }
}

/// What a client sends up to its first newline (or the end, or 64 KiB).
async fn first_line(client: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    while !line.contains(&b'\n') && line.len() < 64 << 10 {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&chunk[..n]);
    }
    Ok(line)
}
