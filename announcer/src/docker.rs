//! The only code that talks to Docker.
//!
//! [`follow`] lists the containers, then follows Docker's event stream and sends what it
//! sees as [`Update`]s: a full [`Update::Snapshot`] after every (re)connect and on the
//! resync timer, and an [`Update::Changed`] after each event that can change whether a
//! container is usable (`start`, `restart`, `die`, `stop`, `kill`, `oom`, `pause`,
//! `unpause`, `health_status`, `rename`, `destroy`). When the stream breaks or the socket
//! vanishes it reconnects with backoff, takes a fresh snapshot and resumes the events from
//! the time of the last one seen (`since`), so nothing that happened during the gap is
//! missed. It never gives up: Docker restarting is not a reason to exit.
//!
//! A `die` or `pause` event says by itself that the container stopped serving: an
//! [`Update::Down`] goes out at once, before the inspection that follows. A `kill` event
//! goes out as [`Update::Signalled`] with its signal number: whether that signal stops the
//! container ([`stops`]) depends on the container's `StopSignal`, which the reconciler
//! holds in the container's facts. Inspections of
//! `host` mode run beside the event loop, not in it: Docker answers an inspect of a
//! container it is tearing down only when the teardown is over (hundreds of milliseconds
//! on a busy host), and the events of other containers must not queue behind it.
//!
//! Docker's answers become [`ContainerFacts`] here ([`facts_from_inspect`] is pure), so
//! nothing else in the crate knows bollard's types.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::BackoffBuilder;
use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptionsBuilder};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use sidekick::notify::Heartbeat;

use crate::Error;
use crate::ops::Ops;
use crate::record::PortSpec;

/// Seconds a Docker request may take (the event stream itself is long-lived).
const REQUEST_TIMEOUT_SECS: u64 = 30;

/// Inspections running at once (during a snapshot, and beside the event loop); each one
/// holds a connection to Docker.
const PARALLEL_INSPECTS: usize = 8;

/// A container's lifecycle state as Docker reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Created, never started.
    Created,
    /// Running (and not paused).
    Running,
    /// Frozen by `docker pause`.
    Paused,
    /// Being restarted by its restart policy.
    Restarting,
    /// Being removed.
    Removing,
    /// Stopped.
    Exited,
    /// Dead (failed removal).
    Dead,
}

impl State {
    /// Lower-case name, as `docker ps` shows it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Restarting => "restarting",
            State::Removing => "removing",
            State::Exited => "exited",
            State::Dead => "dead",
        }
    }
}

/// Docker's HEALTHCHECK status of a container that has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Within the start period, no verdict yet.
    Starting,
    /// The last checks passed.
    Healthy,
    /// The checks failed `retries` times.
    Unhealthy,
}

/// One published port: container port `container_port/proto` on `host_ip:host_port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    /// The port inside the container (`80` of `80/tcp`).
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    /// The host address Docker binds (`None` or `0.0.0.0`: every address).
    pub host_ip: Option<Ipv4Addr>,
    /// The host port: what records carry as `port`.
    pub host_port: u16,
}

impl PublishedPort {
    /// `80/tcp`.
    #[must_use]
    pub fn spec(&self) -> String {
        format!("{}/{}", self.container_port, self.proto)
    }
}

/// Everything the announcer needs to know about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFacts {
    /// Full container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Lifecycle state.
    pub state: State,
    /// HEALTHCHECK status, when the image or run defines one.
    pub health: Option<Health>,
    /// Labels, sorted by key: only `announce.*` and registrator's `SERVICE_*`, the ones a
    /// record is made of (the announcer holds the facts of every container on the host; a
    /// short list costs a fraction of a map).
    pub labels: Vec<(String, String)>,
    /// Environment, `KEY=VALUE`: only registrator's `SERVICE_*`.
    pub env: Vec<String>,
    /// Published ports, sorted, one entry per container port (the first IPv4 binding).
    pub ports: Vec<PublishedPort>,
    /// The container's IPv4 address on each of its networks, sorted by network name.
    pub networks: Vec<(String, Ipv4Addr)>,
    /// Exposed ports (`EXPOSE`, `--expose`, `-p`), sorted: what a `--net=host` container
    /// listens on, and what `--internal` announces.
    pub exposed: Vec<PortSpec>,
    /// `HostConfig.NetworkMode`: `host` for `--net=host`.
    pub network_mode: String,
    /// The signal `docker stop` sends first (the image's or the run's `StopSignal`,
    /// SIGTERM when none): a `kill` event with it means the container is shutting down.
    pub stop_signal: i32,
    /// When the current run started (Docker's `State.StartedAt`, compared as text): a
    /// stop signal applies to one run, and a new run ends it.
    pub started_at: String,
}

impl ContainerFacts {
    /// Running and not paused: the only state in which a container is announced.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.state == State::Running
    }

    /// The value of label `key`.
    #[must_use]
    pub fn label(&self, key: &str) -> Option<&String> {
        self.labels.iter().find_map(|(k, v)| (k == key).then_some(v))
    }

    /// The value of environment variable `key`.
    #[must_use]
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env.iter().find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

/// Which containers to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every container on the host (`announcer host`).
    All,
    /// The container with this name, whatever its id over time (`announcer container`).
    Named(String),
}

/// What [`follow`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The full truth: every container in scope that is not stopped. Containers absent
    /// from it are gone or stopped. The facts are shared with the resync cache (held
    /// once, not once there and once in the reconciler).
    Snapshot(Vec<Arc<ContainerFacts>>),
    /// One container changed (`None`: it no longer exists).
    Changed {
        /// Container id.
        id: String,
        /// Its facts now, shared with the resync cache (and one pointer: the other
        /// updates are a few words).
        facts: Option<Arc<ContainerFacts>>,
    },
    /// An event said the container stopped serving (`die`, `stop`: exited; `pause`:
    /// paused); its full facts follow in a [`Update::Changed`] once Docker answers.
    Down {
        /// Container id.
        id: String,
        /// The state the event implies.
        state: State,
    },
    /// A `kill` event: Docker delivered `signal` to the container. Whether it is a stop
    /// signal is for [`stops`] to say, with the container's facts.
    Signalled {
        /// Container id.
        id: String,
        /// The signal number of the event's `signal` attribute.
        signal: i32,
    },
}

/// Whether delivering `signal` to a container whose `StopSignal` is `stop_signal` means
/// it is shutting down (pure): its own stop signal (what `docker stop` sends first),
/// SIGINT and SIGQUIT (the other conventional "stop now" signals), and SIGKILL (nothing
/// survives it; the `die` follows within milliseconds anyway). A signal a process lives
/// through (SIGHUP to reload, SIGUSR1 to reopen logs, SIGWINCH) changes nothing.
#[must_use]
pub fn stops(signal: i32, stop_signal: i32) -> bool {
    signal == stop_signal || signal == libc::SIGINT || signal == libc::SIGQUIT || signal == libc::SIGKILL
}

/// A signal as Docker accepts it in `StopSignal` and `docker kill -s`: `SIGTERM`, `TERM`,
/// `15`, `SIGRTMIN+3` (pure). `None` for anything else.
#[must_use]
pub fn parse_signal(s: &str) -> Option<i32> {
    const NAMES: [(&str, i32); 32] = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("IOT", libc::SIGIOT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("STKFLT", libc::SIGSTKFLT),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    // Docker's real-time range (its SignalMap: RTMIN = 34, RTMAX = 64 on Linux).
    const RTMIN: i32 = 34;
    const RTMAX: i32 = 64;
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Some(n);
    }
    // `RTMIN`, `RTMIN+n`, `RTMAX`, `RTMAX-n`.
    let offset = |rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(0);
        }
        rest.strip_prefix(sign)?.parse::<i32>().ok()
    };
    let n = if let Some(rest) = name.strip_prefix("RTMIN") {
        RTMIN + offset(rest, '+')?
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        RTMAX - offset(rest, '-')?
    } else {
        return None;
    };
    (RTMIN..=RTMAX).contains(&n).then_some(n)
}

/// The state an event implies on its own, without asking Docker: `die` and `stop` mean
/// the process is gone, `pause` that it is frozen (pure). `kill` implies nothing: the
/// signal may be one the container handles and survives.
#[must_use]
pub fn implied_down(action: &str) -> Option<State> {
    match action {
        "die" | "stop" => Some(State::Exited),
        "pause" => Some(State::Paused),
        _ => None,
    }
}

/// Turns an inspect answer into facts (pure).
#[must_use]
pub fn facts_from_inspect(c: &ContainerInspectResponse) -> ContainerFacts {
    let st = c.state.as_ref();
    let state = match st.and_then(|s| s.status) {
        Some(ContainerStateStatusEnum::RUNNING) => State::Running,
        Some(ContainerStateStatusEnum::PAUSED) => State::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => State::Restarting,
        Some(ContainerStateStatusEnum::REMOVING) => State::Removing,
        Some(ContainerStateStatusEnum::CREATED) => State::Created,
        Some(ContainerStateStatusEnum::DEAD) => State::Dead,
        _ => State::Exited,
    };
    // Belt and braces: some engines report `running` with the paused flag set.
    let state = if state == State::Running && st.and_then(|s| s.paused) == Some(true) {
        State::Paused
    } else {
        state
    };
    let health = st
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .and_then(|h| match h {
            HealthStatusEnum::STARTING => Some(Health::Starting),
            HealthStatusEnum::HEALTHY => Some(Health::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy),
            _ => None,
        });
    let config = c.config.as_ref();
    let mut labels: Vec<(String, String)> = config
        .and_then(|c| c.labels.as_ref())
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("announce.") || k.starts_with("SERVICE_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.sort();
    let env: Vec<String> = config
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .filter(|kv| kv.starts_with("SERVICE_"))
        .cloned()
        .collect();
    let net = c.network_settings.as_ref();
    let mut ports: Vec<PublishedPort> = Vec::new();
    for (spec, bindings) in net.and_then(|n| n.ports.as_ref()).into_iter().flatten() {
        let (port, proto) = spec.split_once('/').unwrap_or((spec.as_str(), "tcp"));
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        // Prefer an IPv4 binding; Docker lists `0.0.0.0` and `::` for the same port.
        let binding = bindings.iter().flatten().find_map(|b| {
            let host_port = b.host_port.as_deref()?.parse::<u16>().ok().filter(|p| *p != 0)?;
            let ip = b.host_ip.as_deref().unwrap_or("");
            if ip.contains(':') {
                return None;
            }
            Some((ip.parse::<Ipv4Addr>().ok().filter(|i| !i.is_unspecified()), host_port))
        });
        if let Some((host_ip, host_port)) = binding {
            ports.push(PublishedPort {
                container_port,
                proto: proto.to_owned(),
                host_ip,
                host_port,
            });
        }
    }
    ports.sort();
    let mut networks: Vec<(String, Ipv4Addr)> = net
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(name, ep)| Some((name.clone(), ep.ip_address.as_deref()?.parse().ok()?)))
        .collect();
    networks.sort();
    let mut exposed: Vec<PortSpec> = config
        .and_then(|c| c.exposed_ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|spec| spec.parse().ok())
        .collect();
    exposed.sort();
    exposed.dedup();
    let network_mode = c
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let stop_signal = config
        .and_then(|c| c.stop_signal.as_deref())
        .and_then(parse_signal)
        .unwrap_or(libc::SIGTERM);
    let started_at = st.and_then(|s| s.started_at.clone()).unwrap_or_default();
    ContainerFacts {
        id: c.id.clone().unwrap_or_default(),
        name: c.name.as_deref().unwrap_or_default().trim_start_matches('/').to_owned(),
        state,
        health,
        labels,
        env,
        ports,
        networks,
        exposed,
        network_mode,
        stop_signal,
        started_at,
    }
}

/// Connects to `--docker-host` (`unix:///path` or `tcp://host:port`) and negotiates the
/// API version (the engine here speaks 1.41; bollard would otherwise ask for its newest).
///
/// # Errors
/// [`Error::DockerHost`] for an unusable value; [`Error::Docker`] when Docker does not answer.
pub async fn connect(host: &str) -> Result<Docker, Error> {
    let docker = if let Some(path) = host.strip_prefix("unix://") {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else if host.starts_with('/') {
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else {
        return Err(Error::DockerHost(host.to_owned()));
    };
    let docker = docker.map_err(|source| Error::Docker {
        op: format!("connect to {host}"),
        source,
    })?;
    docker.negotiate_version().await.map_err(|source| Error::Docker {
        op: format!("connect to {host}"),
        source,
    })
}

/// Checks the `--docker-host` syntax without connecting.
///
/// # Errors
/// A message naming the value.
pub fn parse_docker_host(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("unix://") && s.len() > "unix://".len())
        || s.starts_with("tcp://")
        || s.starts_with("http://")
        || s.starts_with('/');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid docker host {s:?}: expected unix:///path/to/docker.sock or tcp://host:port"
        ))
    }
}

/// The facts of one container by name or id; `None` when it does not exist.
///
/// # Errors
/// [`Error::Docker`] for anything but "no such container".
pub async fn inspect(docker: &Docker, name_or_id: &str) -> Result<Option<ContainerFacts>, Error> {
    match docker.inspect_container(name_or_id, None).await {
        Ok(c) => Ok(Some(facts_from_inspect(&c))),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
        Err(source) => Err(Error::Docker {
            op: format!("inspect {name_or_id}"),
            source,
        }),
    }
}

/// What a container looked like in the last list, and its facts then: a periodic resync
/// re-inspects only containers whose list entry changed (or that an event touched), so an
/// idle host costs one list call per resync, not one inspect per container.
type Cache = HashMap<String, (String, Arc<ContainerFacts>)>;

/// The part of a list entry that tells whether a container changed: its state and the
/// health in its status (`Up 2 minutes (healthy)`).
fn signature(c: &bollard::models::ContainerSummary) -> String {
    let state = c.state.map(|s| s.to_string()).unwrap_or_default();
    let status = c.status.as_deref().unwrap_or_default();
    let health = status.find('(').map_or("", |i| &status[i..]);
    format!("{state}|{health}")
}

/// The [`signature`] the list will show for a container with these facts, so that an
/// inspection made for an event also serves the next resync (`Up 2 minutes (healthy)`,
/// `Up 1 second (health: starting)`, `Up 5 minutes (Paused)`). A guess that does not
/// match only costs one inspection more.
fn facts_signature(f: &ContainerFacts) -> String {
    let health = match (f.state, f.health) {
        (State::Paused, _) => "(Paused)",
        (_, Some(Health::Starting)) => "(health: starting)",
        (_, Some(Health::Healthy)) => "(healthy)",
        (_, Some(Health::Unhealthy)) => "(unhealthy)",
        (_, None) => "",
    };
    format!("{}|{health}", f.state.name())
}

/// Every container in scope that is not stopped, inspected (or taken from `cache` when
/// its list entry did not change).
async fn snapshot(docker: &Docker, scope: &Scope, cache: &mut Cache) -> Result<Vec<Arc<ContainerFacts>>, Error> {
    match scope {
        Scope::Named(name) => Ok(inspect(docker, name).await?.into_iter().map(Arc::new).collect()),
        Scope::All => {
            // Running and paused containers; stopped ones are announced by nobody.
            let list = docker
                .list_containers(Some(ListContainersOptionsBuilder::new().all(false).build()))
                .await
                .map_err(|source| Error::Docker {
                    op: "list containers".into(),
                    source,
                })?;
            let mut out = Vec::new();
            let mut to_inspect = Vec::new();
            let mut seen = HashMap::new();
            for c in &list {
                let Some(id) = c.id.clone() else { continue };
                let sig = signature(c);
                match cache.get(&id) {
                    Some((cached, facts)) if *cached == sig => out.push(Arc::clone(facts)),
                    _ => to_inspect.push((id.clone(), sig.clone())),
                }
                seen.insert(id, sig);
            }
            // The list of a busy host is large: free it before the inspections start.
            drop(list);
            cache.retain(|id, _| seen.contains_key(id));
            let results: Vec<(String, Result<Option<ContainerFacts>, Error>)> = futures::stream::iter(to_inspect)
                .map(|(id, sig)| async move { (sig, inspect(docker, &id).await) })
                .buffer_unordered(PARALLEL_INSPECTS)
                .collect()
                .await;
            for (sig, r) in results {
                if let Some(facts) = r? {
                    let facts = Arc::new(facts);
                    cache.insert(facts.id.clone(), (sig, Arc::clone(&facts)));
                    out.push(facts);
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        }
    }
}

/// Event actions that can change whether a container is usable.
const ACTIONS: [&str; 11] = [
    "start",
    "restart",
    "die",
    "stop",
    "kill",
    "oom",
    "pause",
    "unpause",
    "health_status",
    "rename",
    "destroy",
];

/// The action of an event without its detail (`health_status: healthy` -> `health_status`).
fn base_action(action: &str) -> &str {
    action.split(':').next().unwrap_or_default().trim()
}

/// `since` for Docker: `seconds.nanoseconds`.
fn since_value(time_nano: i64) -> String {
    format!(
        "{}.{:09}",
        time_nano.div_euclid(1_000_000_000),
        time_nano.rem_euclid(1_000_000_000)
    )
}

/// Follows Docker until `shutdown` is cancelled or the receiver is gone. Never fails:
/// errors are logged and retried with backoff.
pub async fn follow(
    host: String,
    scope: Scope,
    tx: mpsc::Sender<Update>,
    resync: Duration,
    shutdown: CancellationToken,
    ops: Ops,
) {
    let mut since: Option<i64> = None;
    let mut backoff = sidekick::retry::reconnect().build();
    // Alive while it waits for events or out a backoff; not while a Docker request hangs
    // (bollard gives up after REQUEST_TIMEOUT_SECS).
    let beat = ops.heartbeat("docker events");
    let mut link = Link {
        ops: &ops,
        beat: &beat,
        sessions: 0,
        failures: 0,
    };
    loop {
        if shutdown.is_cancelled() || tx.is_closed() {
            return;
        }
        match session(&host, &scope, &tx, resync, &shutdown, &mut since, &mut link).await {
            Ok(()) => return,
            Err(e) => {
                link.failures += 1;
                let failures = link.failures;
                ops.docker_down(&e.to_string());
                // The first failure of an outage is a warning; repeats are quieter.
                if failures == 1 {
                    tracing::warn!(error = %e, "docker unavailable; retrying with backoff (records stay while their lease lives)");
                } else {
                    tracing::debug!(error = %e, failures, "docker still unavailable");
                }
            }
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = beat.sleep(delay) => {}
        }
    }
}

/// What a session reports to the outside: the stream's state and the loop's heartbeat.
struct Link<'a> {
    ops: &'a Ops,
    beat: &'a Heartbeat,
    /// Sessions whose event stream opened so far (the second one is a reconnect).
    sessions: u32,
    /// Failures in a row (0: the last session listed Docker).
    failures: u32,
}

/// One connection to Docker: snapshot, then events until the stream breaks (`Err`) or
/// the announcer stops (`Ok`).
async fn session(
    host: &str,
    scope: &Scope,
    tx: &mpsc::Sender<Update>,
    resync: Duration,
    shutdown: &CancellationToken,
    since: &mut Option<i64>,
    link: &mut Link<'_>,
) -> Result<(), Error> {
    let docker = connect(host).await?;
    let listed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    // A new connection starts from a clean slate: everything is inspected once.
    let mut cache = Cache::new();
    let facts = snapshot(&docker, scope, &mut cache).await?;
    if link.failures > 0 {
        tracing::info!(containers = facts.len(), "docker is back: resynced");
    } else {
        tracing::info!(containers = facts.len(), "docker listed");
    }
    link.failures = 0;
    let mut current_id: Option<String> = match scope {
        Scope::Named(_) => facts.first().map(|f| f.id.clone()),
        Scope::All => None,
    };
    if tx.send(Update::Snapshot(facts)).await.is_err() {
        return Ok(());
    }
    // Events from the last one seen (or from just before the list, with a second of
    // margin): replays cost an idempotent re-inspection, a gap would cost a wrong record.
    let from = since.unwrap_or(listed_at - 1_000_000_000);
    let mut filters = HashMap::new();
    filters.insert("type".to_owned(), vec!["container".to_owned()]);
    let opts = EventsOptions {
        since: Some(since_value(from)),
        until: None,
        filters: Some(filters),
    };
    let mut events = docker.events(Some(opts));
    link.ops.docker_up(link.sessions > 0);
    link.sessions += 1;
    let mut alive = link.beat.interval();
    let mut resync_timer = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    resync_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `host` mode's inspections, in flight beside the event loop (at most
    // PARALLEL_INSPECTS, the others queued); only the newest one of a container may report
    // (`newest` holds its ticket), so an answer can never be older than one already sent.
    let mut inspections = futures::stream::FuturesUnordered::new();
    let mut queued: VecDeque<(String, u64)> = VecDeque::new();
    let mut newest: HashMap<String, u64> = HashMap::new();
    let mut tickets = 0u64;
    loop {
        link.beat.beat();
        let msg = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = alive.tick() => continue,
            _ = resync_timer.tick() => {
                let facts = snapshot(&docker, scope, &mut cache).await?;
                tracing::debug!(containers = facts.len(), "docker resynced");
                if tx.send(Update::Snapshot(facts)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            Some((id, ticket, answer)) = inspections.next(), if !inspections.is_empty() => {
                while inspections.len() < PARALLEL_INSPECTS
                    && let Some((next, t)) = queued.pop_front()
                {
                    if newest.get(&next) == Some(&t) {
                        inspections.push(inspection(docker.clone(), next, t));
                    }
                }
                if newest.get(&id) != Some(&ticket) {
                    continue;
                }
                newest.remove(&id);
                let facts: Option<Arc<ContainerFacts>> = answer?.map(Arc::new);
                if let Some(f) = &facts {
                    cache.insert(id.clone(), (facts_signature(f), Arc::clone(f)));
                }
                if tx.send(Update::Changed { id, facts }).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            msg = events.next() => msg,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(source)) => {
                return Err(Error::Docker {
                    op: "event stream".into(),
                    source,
                });
            }
            None => {
                return Err(Error::Docker {
                    op: "event stream".into(),
                    source: bollard::errors::Error::IOError {
                        err: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by the daemon"),
                    },
                });
            }
        };
        if let Some(t) = msg.time_nano {
            *since = Some(t);
        }
        let action = msg.action.as_deref().map(base_action).unwrap_or_default();
        if !ACTIONS.contains(&action) {
            continue;
        }
        let actor = msg.actor.unwrap_or_default();
        let id = actor.id.unwrap_or_default();
        if let Some(t) = msg.time_nano.and_then(|t| u64::try_from(t).ok()) {
            link.ops.event(&id, UNIX_EPOCH + Duration::from_nanos(t));
        }
        let name = actor.attributes.as_ref().and_then(|a| a.get("name")).cloned();
        // `kill` events carry the signal number (`"15"`).
        let signal = (action == "kill")
            .then(|| actor.attributes.as_ref().and_then(|a| a.get("signal")))
            .flatten()
            .and_then(|s| parse_signal(s));
        tracing::debug!(action, id = %short(&id), name = name.as_deref().unwrap_or(""), signal, "docker event");
        let signalled = signal.map(|signal| Update::Signalled { id: id.clone(), signal });
        let update = match scope {
            Scope::Named(wanted) => {
                // Follow the name: a new container of that name, a rename to or from it.
                let concerns = name.as_deref() == Some(wanted.as_str()) || current_id.as_deref() == Some(id.as_str());
                if !concerns {
                    continue;
                }
                if let Some(state) = implied_down(action)
                    && current_id.as_deref() == Some(id.as_str())
                    && tx.send(Update::Down { id: id.clone(), state }).await.is_err()
                {
                    return Ok(());
                }
                if let Some(s) = signalled
                    && current_id.as_deref() == Some(id.as_str())
                    && tx.send(s).await.is_err()
                {
                    return Ok(());
                }
                let facts = inspect(&docker, wanted).await?;
                current_id = facts.as_ref().map(|f| f.id.clone());
                Update::Snapshot(facts.into_iter().map(Arc::new).collect())
            }
            Scope::All => {
                // The next resync inspects this container afresh.
                cache.remove(&id);
                if action == "destroy" {
                    newest.remove(&id);
                    Update::Changed { id, facts: None }
                } else {
                    tickets += 1;
                    newest.insert(id.clone(), tickets);
                    if inspections.len() < PARALLEL_INSPECTS {
                        inspections.push(inspection(docker.clone(), id.clone(), tickets));
                    } else {
                        queued.push_back((id.clone(), tickets));
                    }
                    match (implied_down(action), signalled) {
                        (Some(state), _) => Update::Down { id, state },
                        (None, Some(s)) => s,
                        (None, None) => continue,
                    }
                }
            }
        };
        if tx.send(update).await.is_err() {
            return Ok(());
        }
    }
}

/// One inspection of `host` mode's event loop, tagged with its container and ticket.
async fn inspection(docker: Docker, id: String, ticket: u64) -> (String, u64, Result<Option<ContainerFacts>, Error>) {
    let answer = inspect(&docker, &id).await;
    (id, ticket, answer)
}

/// The first 12 characters of an id, as Docker shows it.
#[must_use]
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use bollard::models::{
        ContainerConfig, ContainerState, EndpointSettings, HealthStatusEnum, NetworkSettings, PortBinding,
    };

    use super::*;

    fn binding(ip: &str, port: &str) -> PortBinding {
        PortBinding {
            host_ip: Some(ip.into()),
            host_port: Some(port.into()),
        }
    }

    #[test]
    fn the_signature_of_inspected_facts_is_the_one_the_list_shows() {
        use bollard::models::{ContainerSummary, ContainerSummaryStateEnum as S};
        let summary = |state: S, status: &str| ContainerSummary {
            state: Some(state),
            status: Some(status.to_owned()),
            ..ContainerSummary::default()
        };
        let facts = |state: State, health: Option<Health>| ContainerFacts {
            id: "x".into(),
            name: "x".into(),
            state,
            health,
            labels: Vec::new(),
            env: Vec::new(),
            ports: Vec::new(),
            networks: Vec::new(),
            exposed: Vec::new(),
            network_mode: String::new(),
            stop_signal: libc::SIGTERM,
            started_at: String::new(),
        };
        let cases = [
            (summary(S::RUNNING, "Up 2 minutes"), facts(State::Running, None)),
            (
                summary(S::RUNNING, "Up 2 minutes (healthy)"),
                facts(State::Running, Some(Health::Healthy)),
            ),
            (
                summary(S::RUNNING, "Up 1 second (health: starting)"),
                facts(State::Running, Some(Health::Starting)),
            ),
            (
                summary(S::RUNNING, "Up 9 minutes (unhealthy)"),
                facts(State::Running, Some(Health::Unhealthy)),
            ),
            (
                summary(S::PAUSED, "Up 5 minutes (Paused)"),
                facts(State::Paused, Some(Health::Healthy)),
            ),
        ];
        for (s, f) in &cases {
            assert_eq!(signature(s), facts_signature(f), "{:?}", s.status);
        }
        assert_ne!(
            signature(&summary(S::RUNNING, "Up 2 minutes (unhealthy)")),
            facts_signature(&facts(State::Running, Some(Health::Healthy)))
        );
    }

    #[test]
    fn die_stop_and_pause_imply_the_container_is_down_kill_does_not() {
        assert_eq!(implied_down("die"), Some(State::Exited));
        assert_eq!(implied_down("stop"), Some(State::Exited));
        assert_eq!(implied_down("pause"), Some(State::Paused));
        for action in ["kill", "start", "oom", "health_status", "unpause", "destroy", "rename"] {
            assert_eq!(implied_down(action), None, "{action}");
        }
    }

    #[test]
    fn stop_signals_table() {
        // (signal delivered, the container's StopSignal, shutting down?)
        let cases = [
            (libc::SIGTERM, libc::SIGTERM, true),
            (libc::SIGINT, libc::SIGTERM, true),
            (libc::SIGQUIT, libc::SIGTERM, true),
            (libc::SIGKILL, libc::SIGTERM, true),
            (libc::SIGHUP, libc::SIGTERM, false),
            (libc::SIGUSR1, libc::SIGTERM, false),
            (libc::SIGUSR2, libc::SIGTERM, false),
            (libc::SIGWINCH, libc::SIGTERM, false),
            // An image whose StopSignal is SIGWINCH (Apache's graceful stop): that is the stop.
            (libc::SIGWINCH, libc::SIGWINCH, true),
            (libc::SIGUSR1, libc::SIGUSR1, true),
            (libc::SIGHUP, libc::SIGQUIT, false),
            // With another StopSignal, SIGTERM is a signal the container may handle.
            (libc::SIGTERM, libc::SIGWINCH, false),
        ];
        for (signal, stop_signal, want) in cases {
            assert_eq!(
                stops(signal, stop_signal),
                want,
                "signal {signal} stop signal {stop_signal}"
            );
        }
    }

    #[test]
    fn signal_names_table() {
        let cases: &[(&str, Option<i32>)] = &[
            ("SIGTERM", Some(libc::SIGTERM)),
            ("TERM", Some(libc::SIGTERM)),
            ("sigterm", Some(libc::SIGTERM)),
            ("15", Some(15)),
            (" 9 ", Some(9)),
            ("SIGQUIT", Some(libc::SIGQUIT)),
            ("SIGWINCH", Some(libc::SIGWINCH)),
            ("SIGSYS", Some(libc::SIGSYS)),
            ("SIGRTMIN", Some(34)),
            ("SIGRTMIN+3", Some(37)),
            ("RTMAX-1", Some(63)),
            ("SIGRTMAX", Some(64)),
            ("SIGRTMIN+40", None),
            ("SIGRTMIN3", None),
            ("0", None),
            ("65", None),
            ("-1", None),
            ("SIGNOPE", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_signal(input), *want, "{input:?}");
        }
    }

    #[test]
    fn inspect_answer_becomes_facts() {
        let mut ports = HashMap::new();
        ports.insert(
            "80/tcp".to_owned(),
            Some(vec![binding("0.0.0.0", "18001"), binding("::", "18001")]),
        );
        ports.insert("443/tcp".to_owned(), Some(vec![binding("::", "18443")]));
        ports.insert("9000/tcp".to_owned(), None);
        ports.insert("53/udp".to_owned(), Some(vec![binding("127.0.0.1", "1053")]));
        let mut networks = HashMap::new();
        networks.insert(
            "bridge".to_owned(),
            EndpointSettings {
                ip_address: Some("172.17.0.3".into()),
                ..EndpointSettings::default()
            },
        );
        let c = ContainerInspectResponse {
            id: Some("abc".into()),
            name: Some("/web-01".into()),
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                started_at: Some("2026-11-29T08:00:00.123456789Z".into()),
                health: Some(bollard::models::Health {
                    status: Some(HealthStatusEnum::HEALTHY),
                    ..Default::default()
                }),
                ..ContainerState::default()
            }),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("bridge".into()),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                exposed_ports: Some(vec!["80/tcp".into(), "8080".into(), "nonsense".into()]),
                stop_signal: Some("SIGQUIT".into()),
                env: Some(vec!["SERVICE_NAME=web".into(), "PATH=/bin".into()]),
                labels: Some(HashMap::from([
                    ("announce.instance".to_owned(), "web01".to_owned()),
                    ("SERVICE_80_NAME".to_owned(), "www".to_owned()),
                    ("com.docker.compose.project".to_owned(), "shop".to_owned()),
                ])),
                ..ContainerConfig::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(ports),
                networks: Some(networks),
                ..NetworkSettings::default()
            }),
            ..ContainerInspectResponse::default()
        };
        let f = facts_from_inspect(&c);
        assert_eq!(f.name, "web-01");
        assert_eq!(f.state, State::Running);
        assert_eq!(f.health, Some(Health::Healthy));
        assert_eq!(f.networks, vec![("bridge".to_owned(), Ipv4Addr::new(172, 17, 0, 3))]);
        let exposed: Vec<String> = f.exposed.iter().map(ToString::to_string).collect();
        assert_eq!(exposed, ["80/tcp", "8080/tcp"]);
        assert_eq!(f.network_mode, "bridge");
        assert_eq!(f.env_var("SERVICE_NAME"), Some("web"));
        assert_eq!(f.env_var("SERVICE"), None);
        assert_eq!(f.env, ["SERVICE_NAME=web"], "only what a record is made of is kept");
        let labels: Vec<&str> = f.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(f.label("announce.instance").map(String::as_str), Some("web01"));
        assert_eq!(labels, ["SERVICE_80_NAME", "announce.instance"]);
        let got: Vec<(String, Option<Ipv4Addr>, u16)> =
            f.ports.iter().map(|p| (p.spec(), p.host_ip, p.host_port)).collect();
        assert_eq!(
            got,
            vec![
                ("53/udp".into(), Some(Ipv4Addr::LOCALHOST), 1053),
                ("80/tcp".into(), None, 18001),
            ]
        );
        assert!(f.is_up());
        assert_eq!(f.stop_signal, libc::SIGQUIT);
        assert_eq!(f.started_at, "2026-11-29T08:00:00.123456789Z");
        // No StopSignal: docker stop sends SIGTERM.
        assert_eq!(
            facts_from_inspect(&ContainerInspectResponse::default()).stop_signal,
            libc::SIGTERM
        );
    }

    #[test]
    fn paused_and_stopped_are_not_up() {
        for (status, paused, want) in [
            (ContainerStateStatusEnum::PAUSED, false, State::Paused),
            (ContainerStateStatusEnum::RUNNING, true, State::Paused),
            (ContainerStateStatusEnum::EXITED, false, State::Exited),
            (ContainerStateStatusEnum::RESTARTING, false, State::Restarting),
        ] {
            let c = ContainerInspectResponse {
                state: Some(ContainerState {
                    status: Some(status),
                    paused: Some(paused),
                    ..ContainerState::default()
                }),
                ..ContainerInspectResponse::default()
            };
            let f = facts_from_inspect(&c);
            assert_eq!(f.state, want);
            assert!(!f.is_up());
        }
    }

    #[test]
    fn event_helpers() {
        assert_eq!(base_action("health_status: healthy"), "health_status");
        assert_eq!(base_action("exec_start: sh"), "exec_start");
        assert_eq!(since_value(1_700_000_000_123_456_789), "1700000000.123456789");
        assert_eq!(since_value(5), "0.000000005");
        assert!(parse_docker_host("unix:///var/run/docker.sock").is_ok());
        assert!(parse_docker_host("tcp://127.0.0.1:2375").is_ok());
        assert!(parse_docker_host("ssh://x").unwrap_err().contains("\"ssh://x\""));
    }
}
