//! A counting forwarder in front of HAProxy's Runtime API socket.
//!
//! lb-sync talks to it as to HAProxy (one command per connection, answered, then closed);
//! it passes each command on to the real socket, passes the answer back, and notes the
//! command with the moment its answer was passed back. So the fleet benchmark counts what
//! lb-sync sends for a change, apart from its reads, and knows when a `set server ... state
//! drain` took effect (HAProxy applies a command before it answers) without polling
//! HAProxy's 5,000-line `show stat`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

/// What a Runtime API command does, as far as counting goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `show ...`: reads nothing changes.
    Read,
    /// `add server B/N ...`.
    AddServer,
    /// `enable health B/N`.
    EnableHealth,
    /// `set server B/N state ready`.
    Ready,
    /// `set server B/N state drain`.
    Drain,
    /// `set server B/N state maint`.
    Maint,
    /// `shutdown sessions server B/N`.
    Shutdown,
    /// `del server B/N`.
    DelServer,
    /// Anything else (counted as a change).
    Other,
}

impl Kind {
    /// The kind of one command line (pure).
    #[must_use]
    pub fn of(command: &str) -> Kind {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["show", ..] => Kind::Read,
            ["add", "server", ..] => Kind::AddServer,
            ["enable", "health", ..] => Kind::EnableHealth,
            ["set", "server", _, "state", "ready"] => Kind::Ready,
            ["set", "server", _, "state", "drain"] => Kind::Drain,
            ["set", "server", _, "state", "maint"] => Kind::Maint,
            ["shutdown", "sessions", "server", ..] => Kind::Shutdown,
            ["del", "server", ..] => Kind::DelServer,
            _ => Kind::Other,
        }
    }
}

/// The commands of one call: HAProxy runs a line of commands separated by `;` in one
/// connection (lb-sync sends a server's add, or its delete, as one such line).
pub fn commands(line: &str) -> impl Iterator<Item = &str> {
    line.split(';').map(str::trim).filter(|c| !c.is_empty())
}

/// The server a command names (`backend/name`, the first word holding a `/`).
#[must_use]
pub fn server_of(command: &str) -> Option<&str> {
    command.split_whitespace().find(|w| w.contains('/'))
}

/// One call lb-sync made: a connection, its command line, the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// When HAProxy's answer had been passed back (the command had taken effect).
    pub at: Instant,
    /// The command line, without its newline.
    pub command: String,
    /// What its first command does.
    pub kind: Kind,
}

impl Sent {
    /// The servers this call put in `kind` (each command of the line).
    #[must_use]
    pub fn servers(&self, kinds: &[Kind]) -> Vec<&str> {
        commands(&self.command)
            .filter(|c| kinds.contains(&Kind::of(c)))
            .filter_map(server_of)
            .collect()
    }

    /// Whether every command of the call is a read.
    #[must_use]
    pub fn is_read(&self) -> bool {
        commands(&self.command).all(|c| Kind::of(c) == Kind::Read)
    }
}

/// Calls counted over a stretch of time (pure).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Calls that only read (`show ...`).
    pub reads: usize,
    /// Every other call.
    pub changes: usize,
    /// Distinct servers added.
    pub added: usize,
    /// Distinct servers set draining.
    pub drained: usize,
    /// Distinct servers deleted.
    pub deleted: usize,
}

impl Tally {
    /// Counts `sent`.
    #[must_use]
    pub fn of(sent: &[Sent]) -> Tally {
        let servers = |kind: Kind| -> usize {
            sent.iter()
                .flat_map(|s| s.servers(&[kind]))
                .collect::<BTreeSet<_>>()
                .len()
        };
        let reads = sent.iter().filter(|s| s.is_read()).count();
        Tally {
            reads,
            changes: sent.len() - reads,
            added: servers(Kind::AddServer),
            drained: servers(Kind::Drain),
            deleted: servers(Kind::DelServer),
        }
    }

    /// Servers added, drained or deleted: the fewest change commands the Runtime API
    /// needs (one each).
    #[must_use]
    pub fn servers_changed(&self) -> usize {
        self.added + self.drained + self.deleted
    }

    /// Change calls per server added, drained or deleted (goal 1); `None` when nothing
    /// changed.
    #[must_use]
    pub fn per_server_changed(&self) -> Option<f64> {
        let n = self.servers_changed();
        (n > 0).then(|| self.changes as f64 / n as f64)
    }
}

/// The forwarder; dropping it stops it and removes its socket.
#[derive(Debug)]
pub struct CliProxy {
    path: PathBuf,
    _dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<Sent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CliProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CliProxy {
    /// Listens on a socket of its own and forwards to `upstream`.
    ///
    /// # Errors
    /// When the socket cannot be created.
    pub fn start(upstream: &Path) -> anyhow::Result<CliProxy> {
        let dir = tempfile::Builder::new()
            .prefix("bench-cliproxy")
            .tempdir()
            .context("temp dir for the Runtime API forwarder")?;
        let path = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
        let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let (sink, upstream) = (log.clone(), upstream.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (sink, upstream) = (sink.clone(), upstream.clone());
                tokio::spawn(async move {
                    if let Ok(sent) = relay(client, &upstream).await {
                        sink.lock().unwrap_or_else(PoisonError::into_inner).push(sent);
                    }
                });
            }
        });
        Ok(CliProxy {
            path,
            _dir: dir,
            log,
            task,
        })
    }

    /// The socket lb-sync is given.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A mark: the commands from here on are [`CliProxy::since`] it.
    #[must_use]
    pub fn mark(&self) -> usize {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The commands answered since `mark`.
    #[must_use]
    pub fn since(&self, mark: usize) -> Vec<Sent> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.get(mark..).map(<[Sent]>::to_vec).unwrap_or_default()
    }
}

/// One connection: the command line, then HAProxy's whole answer back.
async fn relay(mut client: UnixStream, upstream: &Path) -> std::io::Result<Sent> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 1024];
    while !line.contains(&b'\n') {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&chunk[..n]);
    }
    let mut up = UnixStream::connect(upstream).await?;
    up.write_all(&line).await?;
    // Without `prompt`, HAProxy answers one command and closes.
    tokio::io::copy(&mut up, &mut client).await?;
    client.shutdown().await?;
    let command = String::from_utf8_lossy(&line).trim().to_owned();
    Ok(Sent {
        at: Instant::now(),
        kind: Kind::of(&command),
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_told_apart_by_what_they_do() {
        let cases = [
            ("show servers state web", Kind::Read),
            ("show stat web 4 -1", Kind::Read),
            (
                "add server web/lb-sync-127.0.0.1:8080 127.0.0.1:8080 check inter 30s",
                Kind::AddServer,
            ),
            ("enable health web/lb-sync-127.0.0.1:8080", Kind::EnableHealth),
            ("set server web/lb-sync-127.0.0.1:8080 state ready", Kind::Ready),
            ("set server web/lb-sync-127.0.0.1:8080 state drain", Kind::Drain),
            ("set server web/lb-sync-127.0.0.1:8080 state maint", Kind::Maint),
            ("shutdown sessions server web/lb-sync-127.0.0.1:8080", Kind::Shutdown),
            ("del server web/lb-sync-127.0.0.1:8080", Kind::DelServer),
            ("set weight web/x 10", Kind::Other),
            ("", Kind::Other),
        ];
        for (command, kind) in cases {
            assert_eq!(Kind::of(command), kind, "{command:?}");
        }
        assert_eq!(
            server_of("add server web/lb-sync-127.0.0.1:8080 127.0.0.1:8080 check"),
            Some("web/lb-sync-127.0.0.1:8080")
        );
        assert_eq!(server_of("show stat web 4 -1"), None);
        let batch = "add server web/a 127.0.0.1:1 check; enable health web/a ;set server web/a state ready;";
        assert_eq!(
            commands(batch).collect::<Vec<_>>(),
            [
                "add server web/a 127.0.0.1:1 check",
                "enable health web/a",
                "set server web/a state ready"
            ]
        );
    }

    #[test]
    fn a_tally_counts_reads_apart_and_servers_once() {
        let at = Instant::now();
        let sent = |command: &str| Sent {
            at,
            command: command.to_owned(),
            kind: Kind::of(command),
        };
        // One record moved: add the new server (3 commands), drain the old (1), delete
        // it (3, one retried), with the reads of three passes.
        let log = [
            sent("show servers state web"),
            sent("show stat web 4 -1"),
            sent("add server web/n 127.0.0.1:2 check"),
            sent("enable health web/n"),
            sent("set server web/n state ready"),
            sent("set server web/o state drain"),
            sent("show servers state web"),
            sent("show stat web 4 -1"),
            sent("set server web/o state maint"),
            sent("shutdown sessions server web/o"),
            sent("del server web/o"),
            sent("del server web/o"),
            sent("show servers state web"),
            sent("show stat web 4 -1"),
        ];
        let t = Tally::of(&log);
        assert_eq!(
            t,
            Tally {
                reads: 6,
                changes: 8,
                added: 1,
                drained: 1,
                deleted: 1
            }
        );
        assert_eq!(t.servers_changed(), 3);
        assert_eq!(t.per_server_changed(), Some(8.0 / 3.0));
        assert_eq!(Tally::of(&log[..2]).per_server_changed(), None);
        // The same change batched, one call per server: the goal of one call each.
        let batched = [
            sent("show servers state web; show stat web 4 -1"),
            sent("add server web/n 127.0.0.1:2 check; enable health web/n; set server web/n state ready"),
            sent("set server web/o state drain"),
            sent("set server web/o state maint; shutdown sessions server web/o; del server web/o"),
        ];
        let t = Tally::of(&batched);
        assert_eq!((t.reads, t.changes, t.servers_changed()), (1, 3, 3));
        assert_eq!(t.per_server_changed(), Some(1.0));
        assert_eq!(batched[3].servers(&[Kind::DelServer]), ["web/o"]);
    }
}
