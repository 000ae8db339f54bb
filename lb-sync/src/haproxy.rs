//! The HAProxy provider: keeps one backend's servers in step through the Runtime API (the
//! stats socket at `level admin`), without a reload.
//!
//! Which servers are lb-sync's: those whose name starts with `--haproxy-server-prefix`
//! (`lb-sync-` by default; the rest of the name is the endpoint, `lb-sync-10.0.0.1:8080`).
//! Every other server of the backend, from the configuration or added by hand, is
//! foreign: read, counted, never changed. This rule is the only guard: the Runtime API
//! would as well delete a server of the configuration.
//!
//! How plan steps map onto commands:
//! - add: `add server B/N ADDR:PORT check OPTIONS`, `enable health B/N`, then
//!   `set server B/N state ready` (or `drain` with `--add-draining`: enabled by a later
//!   plan once its check passes). A dynamic server starts in maintenance.
//! - enable: `set server B/N state ready`; drain: `set server B/N state drain`.
//! - delete: `set server B/N state maint`, `shutdown sessions server B/N` (also closes
//!   idle pooled connections, which would block the delete), `del server B/N`.
//!
//! The commands of one server's add or delete go on one connection, as one line separated
//! by `;` (HAProxy runs them in order): one call per server added, drained or deleted. A
//! `del server` refused because connections are still closing is sent again alone.
//!
//! A read is `show servers state B` (ids, addresses, admin and operational states, check
//! result) and, while one of lb-sync's servers is draining, `show stat` (current sessions,
//! `scur`), so a draining server with no session left is deleted before its drain period
//! ends.
//!
//! Servers added at runtime are lost when HAProxy restarts or reloads. A later read no
//! longer finds them, the plan adds them again at once, and [`HaProxy::read`] says why.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;
use crate::health::{CallVerb, Health, RuntimeStatus};
use crate::plan::{Address, Condition, Endpoint, NewNode, Node, NodeRef, NodeStatus};

/// Where the Runtime API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaSocket {
    /// A unix socket (`stats socket /run/haproxy/admin.sock level admin`).
    Unix(PathBuf),
    /// A TCP socket (`stats socket ipv4@127.0.0.1:9999 level admin`).
    Tcp(SocketAddr),
}

impl fmt::Display for HaSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaSocket::Unix(p) => write!(f, "{}", p.display()),
            HaSocket::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Why a Runtime API command failed. HAProxy answers in text; the text is read here, at
/// the edge, and nowhere else.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// No connection: HAProxy is down or restarting, or the socket is gone.
    #[error("cannot reach the Runtime API (HAProxy down or restarting?): {0}")]
    Unreachable(String),
    /// No complete answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The socket is not at `level admin`.
    #[error("permission denied: the stats socket needs `level admin`")]
    PermissionDenied,
    /// The backend does not exist.
    #[error("no such backend")]
    UnknownBackend,
    /// The server does not exist (any more): read again.
    #[error("no such server")]
    UnknownServer,
    /// The server still has connections: read again, it is deleted once they are gone.
    #[error("the server still has connections")]
    InUse,
    /// A server of that name exists already: read again.
    #[error("a server of that name exists already")]
    Duplicate,
    /// The backend's balance algorithm is static (`static-rr`, `first`, hashes without `consistent`).
    #[error("the backend's balance algorithm does not allow dynamic servers (use roundrobin or leastconn)")]
    StaticBackend,
    /// Any other refusal, as HAProxy wrote it.
    #[error("refused: {0}")]
    Refused(String),
    /// An answer that cannot be read.
    #[error("cannot read the answer: {0}")]
    Malformed(String),
    /// An answer longer than [`MAX_ANSWER`]: the read stopped there (a stats socket that
    /// streams without end, or something else on the socket), so memory stays bounded.
    #[error("answer longer than {limit} bytes, refused (it began {start})")]
    TooLarge {
        /// The cap, [`MAX_ANSWER`].
        limit: usize,
        /// The answer's first bytes, quoted, for the operator to recognise it.
        start: String,
    },
}

impl RuntimeError {
    /// Whether reading again and retrying can succeed.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            RuntimeError::Unreachable(_)
            | RuntimeError::Timeout(_)
            | RuntimeError::UnknownServer
            | RuntimeError::InUse
            | RuntimeError::Duplicate => true,
            RuntimeError::PermissionDenied
            | RuntimeError::UnknownBackend
            | RuntimeError::StaticBackend
            | RuntimeError::Refused(_)
            | RuntimeError::Malformed(_)
            | RuntimeError::TooLarge { .. } => false,
        }
    }

    /// The metric label of this failure.
    #[must_use]
    pub fn status(&self) -> RuntimeStatus {
        match self {
            RuntimeError::Unreachable(_) => RuntimeStatus::Unreachable,
            RuntimeError::Timeout(_) => RuntimeStatus::Timeout,
            RuntimeError::PermissionDenied => RuntimeStatus::PermissionDenied,
            RuntimeError::UnknownBackend => RuntimeStatus::UnknownBackend,
            RuntimeError::UnknownServer => RuntimeStatus::UnknownServer,
            RuntimeError::InUse => RuntimeStatus::InUse,
            RuntimeError::Duplicate => RuntimeStatus::Duplicate,
            RuntimeError::StaticBackend => RuntimeStatus::StaticBackend,
            RuntimeError::Refused(_) => RuntimeStatus::Refused,
            RuntimeError::Malformed(_) => RuntimeStatus::Malformed,
            RuntimeError::TooLarge { .. } => RuntimeStatus::TooLarge,
        }
    }

    /// The only kind of command that gives this refusal, when there is one.
    #[must_use]
    pub fn only_from(&self) -> Option<CallVerb> {
        match self {
            RuntimeError::InUse => Some(CallVerb::DelServer),
            RuntimeError::Duplicate | RuntimeError::StaticBackend => Some(CallVerb::AddServer),
            _ => None,
        }
    }

    /// Classifies a non-empty answer to a command that answers nothing on success.
    #[must_use]
    pub fn from_answer(answer: &str) -> RuntimeError {
        let a = answer.trim();
        if a.contains("Permission denied") {
            RuntimeError::PermissionDenied
        } else if a.contains("No such backend") || a.contains("Can't find backend") {
            RuntimeError::UnknownBackend
        } else if a.contains("No such server") {
            RuntimeError::UnknownServer
        } else if a.contains("still has connections") || a.contains("still in use") || a.contains("queue is not empty")
        {
            RuntimeError::InUse
        } else if a.contains("Already exists a server") {
            RuntimeError::Duplicate
        } else if a.contains("dynamic load balancing") || a.contains("dynamic load-balancing") {
            RuntimeError::StaticBackend
        } else {
            RuntimeError::Refused(shown_line(a.lines().next().unwrap_or_default()))
        }
    }
}

/// HAProxy's own one-line refusals as they are; a long line or one with control bytes
/// (something else on the socket, or a hostile answer up to [`MAX_ANSWER`]) quoted and cut,
/// so that it can neither flood nor forge a log line.
fn shown_line(line: &str) -> String {
    if line.len() <= 200 && !line.chars().any(char::is_control) {
        line.to_owned()
    } else {
        sidekick::schema::shorten(line)
    }
}

/// The provider's configuration.
#[derive(Clone, Debug)]
pub struct HaProxyConfig {
    /// The Runtime API.
    pub socket: HaSocket,
    /// The backend kept in step.
    pub backend: String,
    /// Name prefix of lb-sync's servers.
    pub prefix: String,
    /// Passed after `check` on every add.
    pub check_options: String,
    /// Add servers draining; the plan enables them once their check passes.
    pub add_draining: bool,
    /// Longest wait for one command's answer.
    pub timeout: Duration,
}

#[cfg(test)]
impl HaProxyConfig {
    /// The tests' configuration: servers named `lb-sync-…`, checks once an hour (their
    /// loopback ports have nothing listening), not added draining, 5 s per command.
    pub(crate) fn for_test(socket: std::path::PathBuf, backend: &str) -> HaProxyConfig {
        HaProxyConfig {
            socket: HaSocket::Unix(socket),
            backend: backend.to_owned(),
            prefix: "lb-sync-".into(),
            check_options: "inter 1h".into(),
            add_draining: false,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The client of one backend.
#[derive(Debug)]
pub struct HaProxy {
    cfg: HaProxyConfig,
    health: Arc<Health>,
    /// Name of each server by id, from the last read (steps name nodes by id), sorted by
    /// id: a sorted vector and not a map, as 5,000 map inserts a read were a twentieth of
    /// a pass.
    names: Mutex<Vec<(u64, String)>>,
    /// lb-sync's servers as known: at the last read, plus its adds, less its deletes since
    /// (to tell a restart from its own deletes).
    last_mine: Mutex<usize>,
    /// Bytes of the last `show servers state` answer: the next one's buffer is sized from
    /// it instead of growing from 64 KiB by doubling (each step a copy and fresh pages:
    /// a read of 5,000 servers is 450 KB).
    state_size: AtomicUsize,
}

/// Bits of `srv_admin_state` (HAProxy's `SRV_ADMF_*`): maintenance, forced or inherited,
/// from the configuration, from DNS resolution, or from a missing address.
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
/// Forced or inherited drain.
const ADMIN_DRAIN: u32 = 0x08 | 0x10;
/// `srv_op_state` of a running server.
const OP_RUNNING: u32 = 2;
/// `srv_check_result` of a failed check.
const CHECK_FAILED: u32 = 2;
/// `srv_check_state` bit: checks enabled.
const CHECK_ENABLED: u32 = 0x04;

impl HaProxy {
    /// A client; nothing is sent until the first read.
    #[must_use]
    pub fn new(cfg: HaProxyConfig, health: Arc<Health>) -> HaProxy {
        HaProxy {
            cfg,
            health,
            names: Mutex::new(Vec::new()),
            last_mine: Mutex::new(0),
            state_size: AtomicUsize::new(0),
        }
    }

    /// What it drives, for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        format!("HAProxy backend {} via {}", self.cfg.backend, self.cfg.socket)
    }

    /// The name lb-sync gives the server of `endpoint`.
    #[must_use]
    pub fn server_name(&self, endpoint: &Endpoint) -> String {
        server_name(&self.cfg.prefix, endpoint)
    }

    /// Sends one command (of kind `verb`, for the metrics) and returns the whole answer;
    /// a command that got no answer is counted here, the others by the caller, which
    /// reads the answer.
    ///
    /// # Errors
    /// [`Error::Runtime`] when the socket cannot be reached or does not answer in time.
    pub async fn command(&self, verb: CallVerb, command: &str) -> Result<String, Error> {
        let err = |kind| Error::Runtime {
            socket: self.cfg.socket.to_string(),
            command: command.to_owned(),
            kind,
        };
        let size = if verb == CallVerb::ShowServersState {
            self.state_size.load(Ordering::Relaxed)
        } else {
            0
        };
        // A little over the last answer, for servers added since.
        let capacity = (size + size / 8).clamp(64 << 10, MAX_ANSWER + 1);
        let exchange = async {
            match &self.cfg.socket {
                HaSocket::Unix(p) => exchange(tokio::net::UnixStream::connect(p).await?, command, capacity).await,
                HaSocket::Tcp(a) => exchange(tokio::net::TcpStream::connect(a).await?, command, capacity).await,
            }
        };
        let answer = match tokio::time::timeout(self.cfg.timeout, exchange).await {
            Ok(Ok(Answer::Complete(a))) => a,
            Ok(Ok(Answer::TooLarge(start))) => {
                self.health.metrics.runtime_call(verb, RuntimeStatus::TooLarge);
                return Err(err(RuntimeError::TooLarge {
                    limit: MAX_ANSWER,
                    start,
                }));
            }
            Ok(Err(e)) => {
                self.health.metrics.runtime_call(verb, RuntimeStatus::Unreachable);
                return Err(err(RuntimeError::Unreachable(e.to_string())));
            }
            Err(_) => {
                self.health.metrics.runtime_call(verb, RuntimeStatus::Timeout);
                return Err(err(RuntimeError::Timeout(self.cfg.timeout)));
            }
        };
        if verb == CallVerb::ShowServersState {
            self.state_size.store(answer.len(), Ordering::Relaxed);
        }
        Ok(answer)
    }

    /// Sends a command that answers nothing (or `expect`) on success.
    async fn change(&self, verb: CallVerb, command: &str, expect: Option<&'static str>) -> Result<(), Error> {
        self.batch(&[Cmd {
            verb,
            text: command.to_owned(),
            expect,
        }])
        .await
    }

    /// Sends `cmds` on one connection, as one line of commands separated by `;` (HAProxy
    /// runs them in order and answers each in turn), and checks the answer with
    /// [`judge_batch`]. One call per server change instead of three: a fleet's host death
    /// drains and deletes its servers in one command line each.
    async fn batch(&self, cmds: &[Cmd]) -> Result<(), Error> {
        let line = cmds.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join("; ");
        let first = cmds.first().map_or(CallVerb::SetServerState, |c| c.verb);
        let answer = self.command(first, &line).await?;
        match judge_batch(cmds, &answer) {
            Ok(()) => {
                for c in cmds {
                    self.health.metrics.runtime_call(c.verb, RuntimeStatus::Ok);
                }
                Ok(())
            }
            Err((failed, kind)) => {
                // The commands before the failed one are known to have succeeded; the
                // ones after it ran too, but their answers cannot be told apart: not counted.
                for c in cmds.iter().take(failed) {
                    self.health.metrics.runtime_call(c.verb, RuntimeStatus::Ok);
                }
                let (verb, command) = cmds
                    .get(failed)
                    .map_or((first, line.clone()), |c| (c.verb, c.text.clone()));
                self.health.metrics.runtime_call(verb, kind.status());
                Err(Error::Runtime {
                    socket: self.cfg.socket.to_string(),
                    command,
                    kind,
                })
            }
        }
    }

    /// Reads the backend's servers.
    ///
    /// # Errors
    /// [`Error::Runtime`]: unreachable socket, unknown backend, permission denied.
    pub async fn read(&self) -> Result<Vec<Node>, Error> {
        let state_cmd = format!("show servers state {}", self.cfg.backend);
        let state = self.command(CallVerb::ShowServersState, &state_cmd).await?;
        let servers = parse_servers_state(&state).map_err(|kind| {
            self.health
                .metrics
                .runtime_call(CallVerb::ShowServersState, kind.status());
            Error::Runtime {
                socket: self.cfg.socket.to_string(),
                command: state_cmd.clone(),
                kind,
            }
        })?;
        self.health
            .metrics
            .runtime_call(CallVerb::ShowServersState, RuntimeStatus::Ok);
        // Sessions matter only for a draining server of ours (it goes once the last one
        // ends): `show stat` of the whole backend is three quarters of a read's bytes, so
        // it is skipped when none is draining, which is most passes, and asked of the
        // draining servers alone when few are (`stat_command`).
        let sessions = if let Some(stat_cmd) = stat_command(&servers, &self.cfg.prefix, &self.cfg.backend) {
            let stat = self.command(CallVerb::ShowStat, &stat_cmd).await?;
            self.health.metrics.runtime_call(CallVerb::ShowStat, RuntimeStatus::Ok);
            parse_stat_sessions(&stat, &self.cfg.backend)
        } else {
            BTreeMap::new()
        };
        let mut names = Vec::with_capacity(servers.len());
        let nodes: Vec<Node> = servers
            .into_iter()
            .map(|s| {
                let found = if sessions.is_empty() {
                    None
                } else {
                    sessions.get(&s.name).copied()
                };
                let (node, name) = s.into_node(&self.cfg.prefix, found);
                names.push((node.id, name));
                node
            })
            .collect();
        // HAProxy lists a backend's servers by id already; sorted here should it not.
        if !names.is_sorted_by_key(|(id, _)| *id) {
            names.sort_unstable_by_key(|(id, _)| *id);
        }
        let mine = nodes.iter().filter(|n| !n.foreign).count();
        if let Some(lost) = self.note_mine(mine) {
            self.health.metrics.servers_lost(lost);
            tracing::warn!(
                backend = %self.cfg.backend,
                "HAProxy lost the {lost} server(s) lb-sync added (restarted or reloaded?): adding them again"
            );
        }
        *self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = names;
        Ok(nodes)
    }

    /// Records how many of lb-sync's servers a read found; `Some(n)` when `n` were known
    /// (the last read's, plus lb-sync's answered adds, less its answered deletes) and this
    /// read finds none: HAProxy restarted or reloaded.
    fn note_mine(&self, mine: usize) -> Option<usize> {
        let mut known = self.last_mine.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lost = (*known > 0 && mine == 0).then_some(*known);
        *known = mine;
        lost
    }

    /// One server of lb-sync's added (`true`) or deleted by lb-sync itself.
    fn mine_changed(&self, added: bool) {
        let mut known = self.last_mine.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *known = if added {
            known.saturating_add(1)
        } else {
            known.saturating_sub(1)
        };
    }

    fn name_of(&self, node: &NodeRef) -> String {
        let names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        names
            .binary_search_by_key(&node.id, |(id, _)| *id)
            .ok()
            .and_then(|i| names.get(i))
            .map_or_else(|| self.server_name(&node.endpoint), |(_, name)| name.clone())
    }

    /// Adds servers, with health checks, in service (or draining with `--add-draining`).
    ///
    /// # Errors
    /// [`Error::Runtime`] of the first command that fails.
    pub async fn add(&self, nodes: &[NewNode]) -> Result<(), Error> {
        let b = &self.cfg.backend;
        for n in nodes {
            let name = self.server_name(&n.endpoint);
            let opts = &self.cfg.check_options;
            let state = if n.condition == Condition::Draining {
                "drain"
            } else {
                "ready"
            };
            self.batch(&[
                Cmd {
                    verb: CallVerb::AddServer,
                    text: format!("add server {b}/{name} {} check {opts}", n.endpoint)
                        .trim_end()
                        .to_owned(),
                    expect: Some(ADDED),
                },
                Cmd {
                    verb: CallVerb::EnableHealth,
                    text: format!("enable health {b}/{name}"),
                    expect: None,
                },
                Cmd {
                    verb: CallVerb::SetServerState,
                    text: format!("set server {b}/{name} state {state}"),
                    expect: None,
                },
            ])
            .await?;
            // Known before the next read: a restart right after an add loses this one too.
            self.mine_changed(true);
        }
        Ok(())
    }

    /// Sets a server ready (enable) or draining.
    ///
    /// # Errors
    /// [`Error::Runtime`].
    pub async fn set_condition(&self, node: &NodeRef, condition: &Condition) -> Result<(), Error> {
        let state = match condition {
            Condition::Draining => "drain",
            Condition::Disabled => "maint",
            Condition::Enabled | Condition::Other(_) => "ready",
        };
        let name = self.name_of(node);
        self.change(
            CallVerb::SetServerState,
            &format!("set server {}/{name} state {state}", self.cfg.backend),
            None,
        )
        .await
    }

    /// Deletes servers: maintenance, close what is left, delete.
    ///
    /// # Errors
    /// [`Error::Runtime`]; [`RuntimeError::InUse`] when connections outlive the shutdown.
    pub async fn delete(&self, nodes: &[NodeRef]) -> Result<(), Error> {
        let b = &self.cfg.backend;
        for n in nodes {
            let name = self.name_of(n);
            let del = Cmd {
                verb: CallVerb::DelServer,
                text: format!("del server {b}/{name}"),
                expect: Some(DELETED),
            };
            let first = self
                .batch(&[
                    Cmd {
                        verb: CallVerb::SetServerState,
                        text: format!("set server {b}/{name} state maint"),
                        expect: None,
                    },
                    Cmd {
                        verb: CallVerb::ShutdownSessions,
                        text: format!("shutdown sessions server {b}/{name}"),
                        expect: None,
                    },
                    del.clone(),
                ])
                .await;
            // Closing is asynchronous: the delete right after the shutdown may still see the
            // connections; it alone is sent again.
            let mut result = first;
            let mut tries = 0;
            while let Err(Error::Runtime {
                kind: RuntimeError::InUse,
                ..
            }) = result
            {
                if tries >= 20 {
                    break;
                }
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                result = self.batch(std::slice::from_ref(&del)).await;
            }
            result?;
            // Ours and gone by our own hand: a read that finds none left is no restart.
            self.mine_changed(false);
        }
        Ok(())
    }
}

/// What `add server` answers on success.
const ADDED: &str = "New server registered";
/// What `del server` answers on success.
const DELETED: &str = "Server deleted";

/// One Runtime API command of a batch.
#[derive(Clone, Debug)]
struct Cmd {
    /// Its kind, for the metrics.
    verb: CallVerb,
    /// The command, without `;` (the options that reach it are refused with one).
    text: String,
    /// What it answers on success; `None`: nothing.
    expect: Option<&'static str>,
}

/// Reads the answer to a line of commands (pure). HAProxy answers each command in turn,
/// a silent success with an empty line, so the non-empty lines must be exactly the success
/// texts expected, in order. `Err((i, why))`: the first line that is not names the first
/// command not yet known to have succeeded (`i`), with the refusal it carries.
fn judge_batch(cmds: &[Cmd], answer: &str) -> Result<(), (usize, RuntimeError)> {
    let mut done = 0; // commands known to have succeeded
    for line in answer.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let next = cmds
            .iter()
            .enumerate()
            .skip(done)
            .find_map(|(i, c)| c.expect.map(|e| (i, e)));
        match next {
            Some((i, e)) if line.contains(e) => done = i + 1,
            _ => {
                let why = RuntimeError::from_answer(line);
                // Silent successes cannot be told from silent skips, so the refusal names
                // the first command not known to have succeeded, unless only one kind of
                // command gives it (a server in use is refused by `del server` alone).
                let by = why.only_from().and_then(|verb| {
                    cmds.iter()
                        .enumerate()
                        .skip(done)
                        .find(|(_, c)| c.verb == verb)
                        .map(|(i, _)| i)
                });
                return Err((by.unwrap_or(done), why));
            }
        }
    }
    match cmds.iter().enumerate().skip(done).find(|(_, c)| c.expect.is_some()) {
        // A success text that never came (an empty answer to `add server`).
        Some((i, _)) => Err((i, RuntimeError::from_answer(""))),
        None => Ok(()),
    }
}

/// Past this many draining servers of lb-sync's, one `show stat` of the whole backend is
/// read instead of one per server: it costs less to parse than a long line of commands,
/// and it keeps that line far under HAProxy's request buffer (`tune.bufsize`, 16 KB).
const STAT_BY_ID_MAX: usize = 64;

/// The `show stat` command line of a read (pure): none while no server of lb-sync's is
/// draining; while a few are, `show stat B 4 ID` for each of them, on one line (a port
/// change drains one server: its one CSV line instead of the backend's 400 bytes a
/// server, at every read of the drain period); while many are, the whole backend.
fn stat_command(servers: &[ServerState], prefix: &str, backend: &str) -> Option<String> {
    let draining: Vec<u64> = servers
        .iter()
        .filter(|s| s.name.starts_with(prefix) && s.admin_state & ADMIN_DRAIN != 0)
        .map(|s| s.id)
        .collect();
    match draining.len() {
        0 => None,
        n if n <= STAT_BY_ID_MAX => Some(
            draining
                .iter()
                .map(|id| format!("show stat {backend} 4 {id}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => Some(format!("show stat {backend} 4 -1")),
    }
}

/// The name of the server lb-sync adds for `endpoint`.
#[must_use]
pub fn server_name(prefix: &str, endpoint: &Endpoint) -> String {
    format!("{prefix}{}", endpoint.address).replace(['[', ']'], "") + &format!(":{}", endpoint.port)
}

/// The longest Runtime API answer read. `show stat` of a backend is about 400 bytes a
/// server, so 8 MiB is some 20 000 servers; a longer answer is refused rather than held.
pub const MAX_ANSWER: usize = 8 << 20;

/// What one command got back.
enum Answer {
    /// The whole answer (the server closed the connection).
    Complete(String),
    /// More than [`MAX_ANSWER`] bytes: the read stopped; the first bytes, quoted.
    TooLarge(String),
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    command: &str,
    capacity: usize,
) -> std::io::Result<Answer> {
    s.write_all(format!("{command}\n").as_bytes()).await?;
    // Without `prompt`, HAProxy answers one command and closes the connection. One byte
    // past the cap tells a full answer from a longer one.
    let mut out = Vec::with_capacity(capacity);
    (&mut s).take(MAX_ANSWER as u64 + 1).read_to_end(&mut out).await?;
    if out.len() > MAX_ANSWER {
        return Ok(Answer::TooLarge(crate::error::quote_start(&out)));
    }
    // HAProxy answers in ASCII: the bytes become the string as they are, without a copy.
    Ok(Answer::Complete(String::from_utf8(out).unwrap_or_else(|e| {
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    })))
}

/// One line of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    /// `srv_id`.
    pub id: u64,
    /// `srv_name`.
    pub name: String,
    /// `srv_addr`.
    pub address: Address,
    /// `srv_port`.
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// `srv_admin_state`: `SRV_ADMF_*` bits.
    pub admin_state: u32,
    /// `srv_check_result`: 0 unknown, 1 neutral, 2 failed, 3 passed, 4 conditionally passed.
    pub check_result: u32,
    /// `srv_check_state`: `CHK_ST_*` bits.
    pub check_state: u32,
}

impl ServerState {
    /// The plan's view of the server, and its name (moved, not copied: a read of 5,000
    /// servers makes 5,000 of each).
    #[must_use]
    pub fn into_node(self, prefix: &str, sessions: Option<u64>) -> (Node, String) {
        let condition = if self.admin_state & ADMIN_MAINT != 0 {
            Condition::Disabled
        } else if self.admin_state & ADMIN_DRAIN != 0 {
            Condition::Draining
        } else {
            Condition::Enabled
        };
        let checked = self.check_state & CHECK_ENABLED != 0;
        // Online: running, and when checked, its check passed at least once (a server just
        // added is "running" before its first check).
        let status = if self.op_state == OP_RUNNING && (!checked || matches!(self.check_result, 3 | 4)) {
            NodeStatus::Online
        } else if self.op_state == OP_RUNNING && self.check_result != CHECK_FAILED {
            NodeStatus::Other("CHECKING".into())
        } else {
            NodeStatus::Offline
        };
        let node = Node {
            id: self.id,
            address: self.address,
            port: self.port,
            condition,
            status,
            sessions,
            foreign: !self.name.starts_with(prefix),
        };
        (node, self.name)
    }
}

/// Parses `show servers state B` (format 1: a version line, a `#` header naming the
/// columns, one line per server).
///
/// # Errors
/// [`RuntimeError`] for an error answer or a table that cannot be read.
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, RuntimeError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or_default().trim();
    if first != "1" {
        return Err(RuntimeError::from_answer(text));
    }
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or_else(|| RuntimeError::Malformed("no header line".into()))?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| RuntimeError::Malformed(format!("no column {name}")))
    };
    let (id, name, addr, port) = (col("srv_id")?, col("srv_name")?, col("srv_addr")?, col("srv_port")?);
    let (op, admin, result, cstate) = (
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_check_result")?,
        col("srv_check_state")?,
    );
    let wanted = [id, name, addr, port, op, admin, result, cstate];
    let last = wanted.iter().copied().max().unwrap_or_default();
    // Column -> its slot in `wanted`, so each field is placed with one look-up.
    let mut slot_of = vec![None; last + 1];
    for (k, w) in wanted.iter().enumerate() {
        if let Some(s) = slot_of.get_mut(*w) {
            *s = Some(k);
        }
    }
    // One server a line: sized once instead of grown by doubling (a read of 5,000 servers
    // would otherwise copy the table a dozen times).
    let mut out = Vec::with_capacity(text.bytes().filter(|b| *b == b'\n').count());
    for line in lines {
        // The wanted fields of the line, read in one pass without collecting the others
        // (a read of 5,000 servers is 5,000 lines of 25 fields: issue 18's pass CPU).
        let mut f = [None; 8];
        for (field, slot) in line.split_ascii_whitespace().zip(&slot_of) {
            if let Some(v) = slot.and_then(|k| f.get_mut(k)) {
                *v = Some(field);
            }
        }
        // `k`: the index in `wanted`.
        let get = |k: usize| {
            f.get(k)
                .copied()
                .flatten()
                .ok_or_else(|| RuntimeError::Malformed(format!("short line {line:?}")))
        };
        let num = |i: usize| -> Result<u32, RuntimeError> {
            get(i)?
                .parse()
                .map_err(|_| RuntimeError::Malformed(format!("not a number in {line:?}")))
        };
        out.push(ServerState {
            id: u64::from(num(0)?),
            name: get(1)?.to_owned(),
            address: Address::parse(get(2)?),
            port: u16::try_from(num(3)?).map_err(|_| RuntimeError::Malformed(format!("bad port in {line:?}")))?,
            op_state: num(4)?,
            admin_state: num(5)?,
            check_result: num(6)?,
            check_state: num(7)?,
        });
    }
    Ok(out)
}

/// Current sessions (`scur`) of each server of `backend`, from `show stat` CSV.
#[must_use]
pub fn parse_stat_sessions(text: &str, backend: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return BTreeMap::new();
    };
    let cols: Vec<&str> = header.split(',').collect();
    let pos = |n: &str| cols.iter().position(|c| *c == n);
    let (Some(px), Some(sv), Some(scur)) = (pos("pxname"), pos("svname"), pos("scur")) else {
        return BTreeMap::new();
    };
    let last = px.max(sv).max(scur);
    lines
        .filter_map(|l| {
            // Three of some 80 fields, read without collecting the others.
            let (mut p, mut name, mut cur) = (None, None, None);
            for (i, field) in l.split(',').take(last + 1).enumerate() {
                if i == px {
                    p = Some(field);
                }
                if i == sv {
                    name = Some(field);
                }
                if i == scur {
                    cur = Some(field);
                }
            }
            if p != Some(backend) {
                return None;
            }
            let name = name?;
            if name == "BACKEND" || name == "FRONTEND" {
                return None;
            }
            Some((name.to_owned(), cur?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 web 1 static1 127.0.0.1 2 0 1 1 10 1 0 0 0 0 0 0 - 9001 - 0 0 - - 0
3 web 2 lb-sync-127.0.0.2:8080 127.0.0.2 2 0 1 1 3 6 3 4 6 0 0 0 - 8080 - 0 0 - - 0
3 web 3 lb-sync-127.0.0.3:8080 127.0.0.3 2 8 1 1 3 6 3 4 6 0 0 0 - 8080 - 0 0 - - 0
3 web 4 lb-sync-127.0.0.4:8080 127.0.0.4 0 1 1 1 3 6 2 0 6 0 0 0 - 8080 - 0 0 - - 0
";

    /// A read that finds none of lb-sync's servers counts them as lost (and warns) only
    /// when lb-sync did not delete them itself: deleting its last servers is no HAProxy
    /// restart, servers deleted behind its back are. Against a real HAProxy.
    #[tokio::test]
    async fn servers_count_as_lost_only_when_lb_sync_did_not_delete_them() {
        let ha = testbed::HaProxy::start();
        let health = Arc::new(Health::new());
        let client = HaProxy::new(HaProxyConfig::for_test(ha.socket(), ha.backend()), health.clone());
        let lost = || -> u64 {
            health
                .metrics
                .render()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("lb_sync_haproxy_servers_lost_total ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(u64::MAX)
        };
        let two = [1, 2].map(|p| NewNode {
            endpoint: Endpoint::new([127, 0, 0, 1].into(), p),
            condition: Condition::Enabled,
        });
        let ours = |nodes: Vec<Node>| -> Vec<NodeRef> {
            nodes
                .into_iter()
                .filter(|n| !n.foreign)
                .filter_map(|n| {
                    Some(NodeRef {
                        id: n.id,
                        endpoint: n.endpoint()?,
                    })
                })
                .collect()
        };

        client.add(&two).await.unwrap();
        let mine = ours(client.read().await.unwrap());
        assert_eq!(mine.len(), 2);
        client.delete(&mine).await.unwrap();
        assert!(ours(client.read().await.unwrap()).is_empty());
        assert_eq!(lost(), 0, "lb-sync deleted its own servers: nothing was lost");

        client.add(&two).await.unwrap();
        for n in ours(client.read().await.unwrap()) {
            let name = client.server_name(&n.endpoint);
            let b = ha.backend();
            let _ = ha.command(&format!("set server {b}/{name} state maint"));
            let _ = ha.command(&format!("del server {b}/{name}"));
        }
        assert!(ours(client.read().await.unwrap()).is_empty());
        assert_eq!(lost(), 2, "deleted behind lb-sync's back, as a reload does");

        // Added and lost before any read saw them: still counted.
        client.add(&two).await.unwrap();
        for p in [1, 2] {
            let name = client.server_name(&Endpoint::new([127, 0, 0, 1].into(), p));
            let b = ha.backend();
            let _ = ha.command(&format!("set server {b}/{name} state maint"));
            let _ = ha.command(&format!("del server {b}/{name}"));
        }
        assert!(ours(client.read().await.unwrap()).is_empty());
        assert_eq!(lost(), 4, "added, then lost before the next read");
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_cap() {
        let (ours, mut theirs) = tokio::io::duplex(64 << 10);
        tokio::spawn(async move {
            let line = b"1\n# be_id be_name srv_id srv_name srv_addr\n".repeat(100);
            while theirs.write_all(&line).await.is_ok() {}
        });
        let Ok(Answer::TooLarge(start)) = exchange(ours, "show servers state web", 64 << 10).await else {
            panic!("an endless answer must be refused");
        };
        assert!(
            start.starts_with("\"1\\n# be_id") && start.ends_with('…') && start.len() < 100,
            "{start}"
        );
        let (ours, mut theirs) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = theirs.write_all(b"Server deleted.\n").await;
        });
        let Ok(Answer::Complete(a)) = exchange(ours, "del server web/x", 64 << 10).await else {
            panic!("a short answer is read whole");
        };
        assert_eq!(a, "Server deleted.\n");
    }

    #[test]
    fn servers_state_becomes_typed_nodes() {
        let servers = parse_servers_state(STATE).unwrap();
        let stat = "# pxname,svname,qcur,qmax,scur,smax\nweb,static1,0,0,1,3\nweb,lb-sync-127.0.0.3:8080,0,0,2,2\nweb,BACKEND,0,0,3,3\nother,x,0,0,9,9\n";
        let sessions = parse_stat_sessions(stat, "web");
        assert_eq!(sessions.len(), 2, "{sessions:?}");
        let nodes: Vec<Node> = servers
            .into_iter()
            .map(|s| {
                let found = sessions.get(&s.name).copied();
                s.into_node("lb-sync-", found).0
            })
            .collect();
        let got: Vec<(u64, bool, Condition, NodeStatus, Option<u64>)> = nodes
            .iter()
            .map(|n| (n.id, n.foreign, n.condition.clone(), n.status.clone(), n.sessions))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, true, Condition::Enabled, NodeStatus::Online, Some(1)),
                (2, false, Condition::Enabled, NodeStatus::Online, None),
                (3, false, Condition::Draining, NodeStatus::Online, Some(2)),
                (4, false, Condition::Disabled, NodeStatus::Offline, None),
            ]
        );
        assert_eq!(nodes[1].endpoint().unwrap().to_string(), "127.0.0.2:8080");
    }

    #[test]
    fn sessions_are_read_only_while_one_of_ours_drains_and_of_it_alone() {
        let server = |id: u64, name: &str, admin_state: u32| ServerState {
            id,
            name: name.into(),
            address: "10.0.0.1".into(),
            port: 80,
            op_state: OP_RUNNING,
            admin_state,
            check_result: 3,
            check_state: CHECK_ENABLED,
        };
        let cases = [
            (vec![], None),
            (vec![server(1, "lb-sync-a", 0)], None),
            (vec![server(1, "lb-sync-a", 0x01)], None),
            (
                vec![server(1, "lb-sync-a", 0), server(7, "lb-sync-b", 0x08)],
                Some("show stat web 4 7"),
            ),
            (
                vec![server(3, "lb-sync-a", 0x10), server(4, "lb-sync-c", 0x08)],
                Some("show stat web 4 3; show stat web 4 4"),
            ),
            // A foreign server draining is not ours to delete.
            (vec![server(1, "static", 0x08), server(2, "lb-sync-a", 0)], None),
        ];
        for (servers, want) in cases {
            assert_eq!(
                stat_command(&servers, "lb-sync-", "web").as_deref(),
                want,
                "{servers:?}"
            );
        }
        // Many draining: the whole backend at once, not a line of 65 commands.
        let many: Vec<ServerState> = (1..=STAT_BY_ID_MAX as u64 + 1)
            .map(|id| server(id, "lb-sync-x", 0x08))
            .collect();
        assert_eq!(
            stat_command(&many[1..], "lb-sync-", "web").map(|c| c.matches("show stat").count()),
            Some(STAT_BY_ID_MAX)
        );
        assert_eq!(
            stat_command(&many, "lb-sync-", "web").as_deref(),
            Some("show stat web 4 -1")
        );
    }

    /// A line of `show stat B 4 ID` commands answers one CSV table per server, each with
    /// its header and a blank line (HAProxy 2.6.12, recorded with `socat`); an unknown id
    /// answers the header alone.
    #[test]
    fn sessions_of_a_line_of_stat_commands() {
        let answer = "# pxname,svname,qcur,qmax,scur,smax,slim\nweb,b,0,0,3,4,\n\n\
                      # pxname,svname,qcur,qmax,scur,smax,slim\nweb,a,0,0,0,0,\n\n\
                      # pxname,svname,qcur,qmax,scur,smax,slim\n\n";
        let got = parse_stat_sessions(answer, "web");
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [("a".to_owned(), 0), ("b".to_owned(), 3)]
        );
    }

    /// The answers are HAProxy 2.6's own, recorded from its Runtime API with `socat`.
    #[test]
    fn a_line_of_commands_is_judged_command_by_command() {
        let cmd = |verb, expect| Cmd {
            verb,
            text: String::new(),
            expect,
        };
        let add = [
            cmd(CallVerb::AddServer, Some(ADDED)),
            cmd(CallVerb::EnableHealth, None),
            cmd(CallVerb::SetServerState, None),
        ];
        let del = [
            cmd(CallVerb::SetServerState, None),
            cmd(CallVerb::ShutdownSessions, None),
            cmd(CallVerb::DelServer, Some(DELETED)),
        ];
        let in_use = "\n\nServer still has connections attached to it, cannot remove it.\n";
        type Judged = Result<(), (usize, RuntimeError)>;
        let cases: [(&[Cmd], &str, Judged); 9] = [
            (&add, "New server registered.\n\n\n\n", Ok(())),
            (
                &add,
                "Already exists a server with the same name in backend.\n\n\n\n",
                Err((0, RuntimeError::Duplicate)),
            ),
            // The add passed, the next command did not.
            (
                &add,
                "New server registered.\n\nNo such server.\n\n\n",
                Err((1, RuntimeError::UnknownServer)),
            ),
            // No success text at all: the add is the one that failed.
            (&add, "\n\n\n", Err((0, RuntimeError::Refused(String::new())))),
            (&del, "\n\nServer deleted.\n", Ok(())),
            (&del, in_use, Err((2, RuntimeError::InUse))),
            (
                &del,
                "No such server.\n\nNo such server.\n\nNo such server.\n",
                Err((0, RuntimeError::UnknownServer)),
            ),
            // A success text twice is not two successes.
            (
                &del,
                "\n\nServer deleted.\nServer deleted.\n",
                Err((3, RuntimeError::Refused("Server deleted.".into()))),
            ),
            (&add[1..], "\n\n", Ok(())),
        ];
        for (cmds, answer, want) in cases {
            assert_eq!(judge_batch(cmds, answer), want, "{answer:?}");
        }
    }

    #[test]
    fn error_answers_are_typed() {
        let cases = [
            ("Permission denied\n", RuntimeError::PermissionDenied),
            ("Can't find backend.\n", RuntimeError::UnknownBackend),
            ("No such backend.\n", RuntimeError::UnknownBackend),
            ("No such server.\n", RuntimeError::UnknownServer),
            (
                "Server still has connections attached to it, cannot remove it.\n",
                RuntimeError::InUse,
            ),
            (
                "Already exists a server with the same name in backend.\n",
                RuntimeError::Duplicate,
            ),
            (
                "Backend must use a dynamic load balancing to support dynamic servers.\n",
                RuntimeError::StaticBackend,
            ),
            ("Unknown command\n", RuntimeError::Refused("Unknown command".into())),
            (
                "a\x1b[2Jforged\r\n",
                RuntimeError::Refused("\"a\\u{1b}[2Jforged\"".into()),
            ),
        ];
        for (answer, want) in cases {
            assert_eq!(RuntimeError::from_answer(answer), want, "{answer:?}");
        }
        assert_eq!(
            parse_servers_state("Can't find backend.\n").unwrap_err(),
            RuntimeError::UnknownBackend
        );
        assert!(RuntimeError::InUse.retryable() && !RuntimeError::PermissionDenied.retryable());
        // A megabyte on one line is named by its length, not printed.
        let long = format!("{}\n", "x".repeat(1 << 20));
        let shown = RuntimeError::from_answer(&long).to_string();
        assert!(shown.len() < 120 && shown.ends_with("(1048576 bytes)"), "{shown}");
    }

    #[test]
    fn server_names_carry_the_endpoint() {
        let v4 = Endpoint::new("10.0.0.1".parse().unwrap(), 8080);
        assert_eq!(server_name("lb-sync-", &v4), "lb-sync-10.0.0.1:8080");
        let v6 = Endpoint::new("2001:db8::1".parse().unwrap(), 80);
        assert_eq!(server_name("lb-sync-", &v6), "lb-sync-2001:db8::1:80");
    }
}
