//! What the announcer tells the outside: `/healthz`, `/readyz` and `/metrics` on
//! `--metrics-addr`, and systemd's readiness, status line and watchdog
//! ([`sidekick::notify`]).
//!
//! The Docker task and the registry write their state here ([`Ops`]); the HTTP server and
//! the status line only read it. Whether the process is healthy, ready, and what its status
//! line says are pure functions of one [`State`] ([`health`], [`readiness`],
//! [`status_line`]), table-tested below.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sidekick::notify::{Heartbeat, Notifier};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::metrics::{LeaseGrant, Metrics};

/// The state of a link to an outside system.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    #[default]
    Connecting,
    /// The last round trip (etcd) / the event stream (Docker) is fine.
    Up,
    /// Broken, with the error.
    Down(String),
}

/// The lease, as far as the announcer knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lease {
    /// None granted yet.
    #[default]
    None,
    /// Held (its id).
    Held(i64),
    /// etcd said it is gone; a new one is being granted.
    Lost,
}

/// Everything the health answers are computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// etcd.
    pub etcd: Link,
    /// The lease.
    pub lease: Lease,
    /// Docker's event stream.
    pub docker: Link,
    /// The first full sync is done (Docker listed, every record it can write written).
    pub synced: bool,
    /// Records in etcd now.
    pub records: usize,
    /// Records held back, each as one line (`web/web1 held by ...`).
    pub held_back: Vec<String>,
}

/// Why `/healthz` answers 503.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The last etcd round trip failed.
    EtcdUnreachable(String),
    /// No lease granted yet.
    NoLease,
    /// The lease expired; a new one is not granted yet.
    LeaseLost,
    /// The Docker event stream is not open.
    DockerDown(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::EtcdUnreachable(e) => write!(f, "etcd unreachable: {e}"),
            Problem::NoLease => f.write_str("no lease granted yet"),
            Problem::LeaseLost => f.write_str("lease lost: granting a new one"),
            Problem::DockerDown(e) => write!(f, "docker event stream down: {e}"),
        }
    }
}

/// Why `/readyz` answers 503.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// The first full sync is not done.
    FirstSync,
    /// Records another announcer holds.
    HeldBack(Vec<String>),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::FirstSync => f.write_str("first full sync not done yet"),
            NotReady::HeldBack(lines) => write!(f, "{} record(s) held back: {}", lines.len(), lines.join("; ")),
        }
    }
}

/// `/healthz`: able to do its job (pure).
///
/// # Errors
/// The first problem, in the order etcd, lease, Docker.
pub fn health(s: &State) -> Result<(), Problem> {
    match &s.etcd {
        Link::Down(e) => return Err(Problem::EtcdUnreachable(e.clone())),
        Link::Connecting => return Err(Problem::EtcdUnreachable("not connected yet".into())),
        Link::Up => {}
    }
    match s.lease {
        Lease::Held(_) => {}
        Lease::None => return Err(Problem::NoLease),
        Lease::Lost => return Err(Problem::LeaseLost),
    }
    match &s.docker {
        Link::Down(e) => Err(Problem::DockerDown(e.clone())),
        Link::Connecting => Err(Problem::DockerDown("not connected yet".into())),
        Link::Up => Ok(()),
    }
}

/// `/readyz`: everything it should announce is announced (pure).
///
/// # Errors
/// The reason it is not.
pub fn readiness(s: &State) -> Result<(), NotReady> {
    if !s.synced {
        return Err(NotReady::FirstSync);
    }
    if !s.held_back.is_empty() {
        return Err(NotReady::HeldBack(s.held_back.clone()));
    }
    Ok(())
}

/// The `STATUS=` line `systemctl status` shows (pure).
#[must_use]
pub fn status_line(s: &State) -> String {
    let what = match (s.synced, s.lease) {
        (false, _) => "starting".to_owned(),
        (true, Lease::Held(id)) => format!("announcing {} record(s) on lease {id:x}", s.records),
        (true, Lease::Lost) => format!("{} record(s), lease lost", s.records),
        (true, Lease::None) => format!("{} record(s), no lease", s.records),
    };
    let link = |l: &Link| match l {
        Link::Connecting => "connecting".to_owned(),
        Link::Up => "ok".to_owned(),
        Link::Down(e) => format!("down ({e})"),
    };
    let mut line = format!("{what}; etcd {}; docker {}", link(&s.etcd), link(&s.docker));
    if !s.held_back.is_empty() {
        line.push_str(&format!("; {} held back by another announcer", s.held_back.len()));
    }
    line
}

/// Docker events kept for the latency histogram at most this long (an event whose
/// container never becomes a record, e.g. an unlabelled one, is forgotten then).
const EVENT_MEMORY: Duration = Duration::from_secs(300);

/// The shared state, metrics and service-manager link. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ops {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    metrics: Metrics,
    notifier: Notifier,
    state: Mutex<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: State,
    /// The last status line sent, so an unchanged one is not sent again.
    status: String,
    /// `READY=1` sent.
    ready_sent: bool,
    /// The pending event of each container id, until its record's change is acknowledged.
    events: HashMap<String, Pending>,
}

/// A container's change the world waits for: from its Docker event to etcd's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Docker's own time of the event (`timeNano`).
    pub stamped: SystemTime,
    /// When the event reached the announcer.
    pub arrived: SystemTime,
    /// When a check of the container first passed after the event (none: no check, or
    /// none passed yet).
    pub checked: Option<SystemTime>,
}

impl Pending {
    /// From when the change was the announcer's to make: the later of the event reaching
    /// it and the first passing check. What came before is Docker's delivery and the
    /// service starting to listen, which the announcer cannot change (issue 18).
    #[must_use]
    pub fn ready(&self) -> SystemTime {
        self.checked.map_or(self.arrived, |c| c.max(self.arrived))
    }
}

impl Ops {
    /// Fresh state; `notifier` is the link to systemd.
    #[must_use]
    pub fn new(notifier: Notifier) -> Ops {
        Ops {
            inner: Arc::new(Inner {
                metrics: Metrics::new(),
                notifier,
                state: Mutex::new(Shared::default()),
            }),
        }
    }

    /// The metrics (for counters the state does not cover).
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers a loop with the watchdog.
    #[must_use]
    pub fn heartbeat(&self, name: &'static str) -> Heartbeat {
        self.inner.notifier.heartbeat(name)
    }

    /// The service-manager link.
    #[must_use]
    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    /// A copy of the state now.
    #[must_use]
    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state, then mirrors it into the gauges and the status line.
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut shared = self.lock();
        f(&mut shared.state);
        let s = &shared.state;
        self.inner.metrics.gauges(
            s.etcd == Link::Up,
            s.docker == Link::Up,
            readiness(s).is_ok(),
            s.held_back.len(),
        );
        let line = status_line(s);
        if line != shared.status {
            // First full sync: READY=1 with the line, once.
            if s.synced && !shared.ready_sent {
                self.inner.notifier.ready(&line);
                shared.ready_sent = true;
                tracing::info!(status = %line, "first full sync done: ready");
            } else {
                self.inner.notifier.status(&line);
            }
            shared.status = line;
        }
    }

    /// An etcd round trip succeeded.
    pub fn etcd_up(&self) {
        self.update(|s| s.etcd = Link::Up);
    }

    /// An etcd round trip failed.
    pub fn etcd_down(&self, error: &str) {
        self.update(|s| s.etcd = Link::Down(error.to_owned()));
    }

    /// A lease was granted (`regrant`: after an expiry).
    pub fn lease_granted(&self, id: i64, regrant: bool) {
        let kind = if regrant {
            LeaseGrant::regrant
        } else {
            LeaseGrant::grant
        };
        self.inner.metrics.lease_granted(kind);
        self.update(|s| {
            s.lease = Lease::Held(id);
            s.etcd = Link::Up;
        });
    }

    /// The lease expired.
    pub fn lease_lost(&self) {
        self.update(|s| s.lease = Lease::Lost);
    }

    /// The Docker event stream is open (`reconnect`: again, after a break).
    pub fn docker_up(&self, reconnect: bool) {
        if reconnect {
            self.inner.metrics.docker_reconnect();
        }
        self.update(|s| s.docker = Link::Up);
    }

    /// The Docker event stream broke, or Docker cannot be reached.
    pub fn docker_down(&self, error: &str) {
        self.update(|s| s.docker = Link::Down(error.to_owned()));
    }

    /// A sync of etcd ended: what is written, by service, and what is held back; `full`:
    /// Docker had been listed and every check had given its first verdict, so this was a
    /// full sync (the first one sends `READY=1`).
    pub fn synced(&self, by_service: &BTreeMap<String, i64>, held_back: Vec<String>, full: bool) {
        self.inner.metrics.records(by_service);
        let records = usize::try_from(by_service.values().sum::<i64>()).unwrap_or(0);
        self.update(|s| {
            s.etcd = Link::Up;
            s.records = records;
            s.held_back = held_back;
            s.synced |= full;
        });
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.inner.notifier.stopping();
    }

    /// A Docker event about container `id`, stamped by Docker at `at`, reaching the
    /// announcer now.
    pub fn event(&self, id: &str, at: SystemTime) {
        let now = SystemTime::now();
        let mut shared = self.lock();
        if shared.events.len() >= 1024 {
            shared
                .events
                .retain(|_, p| now.duration_since(p.stamped).unwrap_or_default() < EVENT_MEMORY);
        }
        // The oldest event not yet visible counts: that is how long the world waited.
        shared.events.entry(id.to_owned()).or_insert(Pending {
            stamped: at,
            arrived: now,
            checked: None,
        });
    }

    /// A check of container `id` passed: the first pass after its pending event is kept.
    pub fn check_passed(&self, id: &str) {
        if let Some(p) = self.lock().events.get_mut(id) {
            p.checked.get_or_insert_with(SystemTime::now);
        }
    }

    /// etcd acknowledged, at `acked`, a change of container `id`'s record (`name`): observe
    /// the latency since its event, if one is pending, and log at `debug` what the
    /// announcer itself added (`added_us`, from [`Pending::ready`]) and when it was ready
    /// (`ready_unix_ns`), which `scripts/bench` reads.
    pub fn visible(&self, id: &str, name: &str, acked: SystemTime) {
        let pending = self.lock().events.remove(id);
        if let Some(p) = pending {
            self.inner
                .metrics
                .visible_after(acked.duration_since(p.stamped).unwrap_or_default());
            let ready = p.ready();
            tracing::debug!(
                container = %name,
                added_us = acked.duration_since(ready).unwrap_or_default().as_micros(),
                ready_unix_ns = ready.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
                "visible"
            );
        }
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr` until `cancel`.
///
/// # Errors
/// [`Error::Listen`] when the address cannot be bound.
pub async fn serve(addr: SocketAddr, ops: Ops, cancel: CancellationToken) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(ops);
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::warn!("metrics server stopped: {e}");
        }
    });
    Ok(())
}

fn answer<E: fmt::Display>(verdict: Result<(), E>, ok: &str) -> (StatusCode, String) {
    match verdict {
        Ok(()) => (StatusCode::OK, format!("{ok}\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn healthz(AxState(ops): AxState<Ops>) -> impl IntoResponse {
    answer(health(&ops.state()), "ok")
}

async fn readyz(AxState(ops): AxState<Ops>) -> impl IntoResponse {
    answer(readiness(&ops.state()), "ready")
}

async fn metrics(AxState(ops): AxState<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics().render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> State {
        State {
            etcd: Link::Up,
            lease: Lease::Held(0x7587),
            docker: Link::Up,
            synced: true,
            records: 12,
            held_back: Vec::new(),
        }
    }

    #[test]
    fn health_table() {
        let with = |f: fn(&mut State)| {
            let mut s = good();
            f(&mut s);
            health(&s).map_err(|p| p.to_string())
        };
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(
            with(|s| s.etcd = Link::Down("connection refused".into())),
            Err("etcd unreachable: connection refused".into())
        );
        assert_eq!(
            with(|s| s.etcd = Link::Connecting),
            Err("etcd unreachable: not connected yet".into())
        );
        assert_eq!(
            with(|s| s.lease = Lease::Lost),
            Err("lease lost: granting a new one".into())
        );
        assert_eq!(
            with(|s| s.docker = Link::Down("broken pipe".into())),
            Err("docker event stream down: broken pipe".into())
        );
        // Health does not depend on the records.
        assert_eq!(
            with(|s| {
                s.synced = false;
                s.held_back = vec!["x".into()];
            }),
            Ok(())
        );
    }

    #[test]
    fn readiness_table() {
        assert_eq!(readiness(&good()), Ok(()));
        let mut s = good();
        s.synced = false;
        assert_eq!(readiness(&s), Err(NotReady::FirstSync));
        s.synced = true;
        s.held_back = vec!["web/web1 held by host b".into()];
        assert_eq!(
            readiness(&s).map_err(|e| e.to_string()),
            Err("1 record(s) held back: web/web1 held by host b".into())
        );
        // An etcd outage does not make it unready: what it announced stays announced.
        let mut s = good();
        s.etcd = Link::Down("x".into());
        assert_eq!(readiness(&s), Ok(()));
    }

    #[test]
    fn status_lines_read_like_sentences() {
        assert_eq!(
            status_line(&good()),
            "announcing 12 record(s) on lease 7587; etcd ok; docker ok"
        );
        let mut s = good();
        s.etcd = Link::Down("no answer within 2s".into());
        s.held_back = vec!["a".into()];
        assert_eq!(
            status_line(&s),
            "announcing 12 record(s) on lease 7587; etcd down (no answer within 2s); docker ok; 1 held back by another announcer"
        );
        assert_eq!(
            status_line(&State::default()),
            "starting; etcd connecting; docker connecting"
        );
    }

    #[test]
    fn latency_is_observed_once_per_event_and_only_for_known_containers() {
        let ops = Ops::new(Notifier::with_watchdog(None));
        ops.visible("unknown", "u", SystemTime::now());
        ops.event("c1", SystemTime::now() - Duration::from_millis(100));
        ops.event("c1", SystemTime::now());
        ops.visible("c1", "one", SystemTime::now());
        ops.visible("c1", "one", SystemTime::now());
        let text = ops.metrics().render();
        assert!(text.contains("announcer_event_to_visible_seconds_count 1"), "{text}");
        assert!(!text.contains("le=\"0.05\"} 1"), "the older event counts: {text}");
    }

    /// What the announcer adds starts at the later of the event reaching it and the first
    /// passing check; a check that passed before the event does not move it.
    #[test]
    fn the_announcers_part_starts_when_the_event_is_in_and_the_check_passed() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let p = |arrived, checked| Pending {
            stamped: t0,
            arrived,
            checked,
        };
        assert_eq!(p(ms(5), None).ready(), ms(5));
        assert_eq!(p(ms(5), Some(ms(40))).ready(), ms(40));
        assert_eq!(p(ms(5), Some(ms(2))).ready(), ms(5));
        // Through the state: the first pass is kept, a later one does not move it.
        let ops = Ops::new(Notifier::with_watchdog(None));
        ops.check_passed("c1");
        ops.event("c1", t0);
        let arrived = ops.lock().events.get("c1").map(|p| (p.arrived, p.checked));
        assert!(matches!(arrived, Some((_, None))), "{arrived:?}");
        ops.check_passed("c1");
        let first = ops.lock().events.get("c1").and_then(|p| p.checked);
        std::thread::sleep(Duration::from_millis(2));
        ops.check_passed("c1");
        assert_eq!(ops.lock().events.get("c1").and_then(|p| p.checked), first);
        assert!(first.is_some());
    }
}
