//! What lb-sync tells the outside: `/healthz` (state, refusals, leadership, last error),
//! `/readyz` (a first plan computed, the last one not refused) and `/metrics`
//! (Prometheus text: API calls by verb and status, plans applied and refused, node counts,
//! time to converge, rate-limit waits, drains, leadership), served on `--listen` when given.
//!
//! The reconcile loop and the API client write here; the HTTP server only reads.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::plan::RefusalReason;

/// What an API call is: a request of the Rackspace APIs (an HTTP method, or the Identity
/// token request), or a HAProxy Runtime API command (by kind, without its arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallVerb {
    /// Identity: a token request (a POST to `/tokens`).
    Auth,
    /// HTTP GET.
    Get,
    /// HTTP POST.
    Post,
    /// HTTP PUT.
    Put,
    /// HTTP DELETE.
    Delete,
    /// `show servers state B`.
    ShowServersState,
    /// `show stat B 4 -1`.
    ShowStat,
    /// `add server B/N ADDR:PORT check ...`.
    AddServer,
    /// `enable health B/N`.
    EnableHealth,
    /// `set server B/N state ready|drain|maint`.
    SetServerState,
    /// `shutdown sessions server B/N`.
    ShutdownSessions,
    /// `del server B/N`.
    DelServer,
}

impl CallVerb {
    /// The label value: the HTTP method name for Rackspace, the command in snake case for
    /// HAProxy.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CallVerb::Auth => "AUTH",
            CallVerb::Get => "GET",
            CallVerb::Post => "POST",
            CallVerb::Put => "PUT",
            CallVerb::Delete => "DELETE",
            CallVerb::ShowServersState => "show_servers_state",
            CallVerb::ShowStat => "show_stat",
            CallVerb::AddServer => "add_server",
            CallVerb::EnableHealth => "enable_health",
            CallVerb::SetServerState => "set_server_state",
            CallVerb::ShutdownSessions => "shutdown_sessions",
            CallVerb::DelServer => "del_server",
        }
    }
}

impl EncodeLabelValue for CallVerb {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// How a HAProxy Runtime API command ended (the `status` label of its calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeStatus {
    /// The answer a success gives.
    Ok,
    /// No connection.
    Unreachable,
    /// No complete answer in time.
    Timeout,
    /// The socket is not at `level admin`.
    PermissionDenied,
    /// No such backend.
    UnknownBackend,
    /// No such server.
    UnknownServer,
    /// The server still has connections.
    InUse,
    /// A server of that name exists already.
    Duplicate,
    /// The backend's algorithm does not take dynamic servers.
    StaticBackend,
    /// Any other refusal.
    Refused,
    /// An answer that cannot be read.
    Malformed,
    /// An answer longer than the cap, not read to its end.
    TooLarge,
}

impl RuntimeStatus {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Ok => "ok",
            RuntimeStatus::Unreachable => "unreachable",
            RuntimeStatus::Timeout => "timeout",
            RuntimeStatus::PermissionDenied => "permission_denied",
            RuntimeStatus::UnknownBackend => "unknown_backend",
            RuntimeStatus::UnknownServer => "unknown_server",
            RuntimeStatus::InUse => "in_use",
            RuntimeStatus::Duplicate => "duplicate",
            RuntimeStatus::StaticBackend => "static_backend",
            RuntimeStatus::Refused => "refused",
            RuntimeStatus::Malformed => "malformed",
            RuntimeStatus::TooLarge => "too_large",
        }
    }

    /// The coarse outcome of a command that ended so.
    #[must_use]
    pub fn outcome(self) -> CallOutcome {
        match self {
            RuntimeStatus::Ok => CallOutcome::ok,
            RuntimeStatus::Unreachable | RuntimeStatus::Timeout => CallOutcome::transport,
            RuntimeStatus::PermissionDenied
            | RuntimeStatus::UnknownBackend
            | RuntimeStatus::UnknownServer
            | RuntimeStatus::InUse
            | RuntimeStatus::Duplicate
            | RuntimeStatus::StaticBackend
            | RuntimeStatus::Refused
            | RuntimeStatus::Malformed
            | RuntimeStatus::TooLarge => CallOutcome::client_error,
        }
    }
}

/// The `status` label of an API call: what the API answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallStatus {
    /// Rackspace: the HTTP status code (`200`, `413`, ...).
    Http(u16),
    /// Rackspace: no HTTP answer (connection refused or reset, timeout): `none`.
    NoAnswer,
    /// HAProxy: how the command ended.
    Runtime(RuntimeStatus),
}

impl EncodeLabelValue for CallStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            CallStatus::Http(code) => write!(encoder, "{code}"),
            CallStatus::NoAnswer => encoder.write_str("none"),
            CallStatus::Runtime(s) => encoder.write_str(s.as_str()),
        }
    }
}

/// How an API call ended, coarsely (what an alert looks at).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values are the metric's documented snake_case
pub enum CallOutcome {
    /// A success answer.
    ok,
    /// A 4xx other than 401 and the rate limits (or a HAProxy command refused).
    client_error,
    /// 401.
    unauthorized,
    /// 413 `overLimit` or 429: the rate limiter.
    rate_limited,
    /// 5xx.
    server_error,
    /// No answer (connection refused or reset, timeout, socket gone).
    transport,
}

impl CallOutcome {
    /// The outcome of a Rackspace answer with HTTP status `code`; `over_limit` tells the
    /// rate limiter's 413 (an `overLimit` body) from the node limit's.
    #[must_use]
    pub fn of_http(code: u16, over_limit: bool) -> CallOutcome {
        match code {
            200..=399 => CallOutcome::ok,
            401 => CallOutcome::unauthorized,
            429 => CallOutcome::rate_limited,
            413 if over_limit => CallOutcome::rate_limited,
            500..=599 => CallOutcome::server_error,
            _ => CallOutcome::client_error,
        }
    }
}

/// Labels of `lb_sync_api_calls_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallLabels {
    /// The call.
    pub verb: CallVerb,
    /// What the API answered.
    pub status: CallStatus,
    /// How it ended, coarsely.
    pub outcome: CallOutcome,
}

/// Labels of `lb_sync_refusals_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The refusal's reason.
    pub reason: RefusalReason,
}

/// What a step did (the `step` label of `lb_sync_steps_applied_total`, and with the
/// `change` label of `lb_sync_nodes_changed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values are the metric's documented snake_case
pub enum StepKind {
    /// Nodes added.
    add,
    /// A node set in service.
    enable,
    /// A node set draining.
    drain,
    /// Nodes deleted.
    delete,
}

/// Labels of `lb_sync_steps_applied_total` and `lb_sync_nodes_changed_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StepLabels {
    /// The kind of step.
    pub step: StepKind,
}

/// Why the client waited before sending (the `cause` label of the rate-limit metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values are the metric's documented snake_case
pub enum WaitCause {
    /// The API answered 413 `overLimit`: the wait its `Retry-After` asked for.
    over_limit_413,
    /// The API answered 429: the wait its `Retry-After` asked for.
    too_many_requests_429,
    /// The client's own pacing: a `Retry-After` an earlier answer set for this verb was
    /// still in force, so the request waited before it was sent.
    pacing,
}

/// Labels of the rate-limit metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WaitLabels {
    /// The verb that waited.
    pub verb: CallVerb,
    /// Why.
    pub cause: WaitCause,
}

/// Buckets of `lb_sync_converge_seconds`: from a quarter second (HAProxy, one pass) to an
/// hour (a Rackspace load balancer stuck in PENDING_UPDATE, a long `--drain`).
pub const CONVERGE_BUCKETS: [f64; 14] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The state `/healthz` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No pass ended yet.
    #[default]
    Starting,
    /// A pass is applying a change.
    Applying,
    /// The load balancer matches the records.
    Converged,
    /// Drains or checks are pending.
    Waiting,
    /// A safety rule refused the plan.
    Refused,
    /// The last pass stopped on an error.
    Error,
    /// Not the leader.
    Standby,
    /// Dry run: plans are logged, not applied.
    DryRun,
}

/// Counters, gauges and the histogram, registered once. Every metric is named
/// `lb_sync_...` and documented in `lb-sync/README.md` ("Metrics").
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    plans_applied: Counter,
    steps: Family<StepLabels, Counter>,
    nodes_changed: Family<StepLabels, Counter>,
    passes: Counter,
    errors: Counter,
    converge: Histogram,
    rate_waits: Family<WaitLabels, Counter>,
    rate_wait_seconds: Family<WaitLabels, Counter<f64, AtomicU64>>,
    converged: Gauge,
    refused: Gauge,
    leader: Gauge,
    desired_nodes: Gauge,
    lb_nodes: Gauge,
    draining: Gauge,
    servers_lost: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every lb-sync metric.
    #[must_use]
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lb_sync");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "api_calls",
            "Load balancer API calls: Rackspace requests by HTTP method (AUTH for Identity) and status code, HAProxy Runtime API commands by kind and result",
            calls.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Plans refused by a safety rule, by reason (counted at every plan while the refusal lasts)",
            refusals.clone(),
        );
        let plans_applied = Counter::default();
        registry.register(
            "plans_applied",
            "Plans of which at least one step was applied",
            plans_applied.clone(),
        );
        let steps = Family::<StepLabels, Counter>::default();
        registry.register(
            "steps_applied",
            "Plan steps applied, by kind (an add or a delete may carry several nodes)",
            steps.clone(),
        );
        let nodes_changed = Family::<StepLabels, Counter>::default();
        registry.register(
            "nodes_changed",
            "Nodes added, enabled, drained and deleted by applied steps",
            nodes_changed.clone(),
        );
        let passes = Counter::default();
        registry.register("passes", "Reconcile passes run", passes.clone());
        let errors = Counter::default();
        registry.register("errors", "Reconcile passes stopped by an error", errors.clone());
        let converge = Histogram::new(CONVERGE_BUCKETS);
        registry.register_with_unit(
            "converge",
            "Time from the first plan that found the load balancer different from the records to the first that found it matching",
            prometheus_client::registry::Unit::Seconds,
            converge.clone(),
        );
        let rate_waits = Family::<WaitLabels, Counter>::default();
        registry.register(
            "rate_limit_waits",
            "Requests held back by a rate limit, by verb and cause (413/429 Retry-After, or the client's own pacing)",
            rate_waits.clone(),
        );
        let rate_wait_seconds = Family::<WaitLabels, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "rate_limit_wait",
            "Time spent waiting out rate limits, by verb and cause",
            prometheus_client::registry::Unit::Seconds,
            rate_wait_seconds.clone(),
        );
        let converged = Gauge::default();
        registry.register(
            "converged",
            "1 when the load balancer matched the records at the last pass",
            converged.clone(),
        );
        let refused = Gauge::default();
        registry.register("refused", "1 when the last plan was refused", refused.clone());
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 when this instance is the leader and may apply plans, 0 on a standby",
            leader.clone(),
        );
        let desired_nodes = Gauge::default();
        registry.register(
            "desired_nodes",
            "Nodes the records ask for (desired)",
            desired_nodes.clone(),
        );
        let lb_nodes = Gauge::default();
        registry.register(
            "lb_nodes",
            "Nodes on the load balancer at the last read (actual; HAProxy: every server of the backend)",
            lb_nodes.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "drains_in_progress",
            "Managed nodes draining at the last read (deleted once their drain period ends)",
            draining.clone(),
        );
        let servers_lost = Counter::default();
        registry.register(
            "haproxy_servers_lost",
            "Servers lb-sync had added that HAProxy no longer had at a read (it restarted or reloaded and dropped the servers added at run time); lb-sync adds them again",
            servers_lost.clone(),
        );
        // Series that exist from the start read 0 rather than missing, so `rate()` and
        // alerts on them work before the first event.
        for reason in [
            RefusalReason::incomplete_view,
            RefusalReason::empty_desired,
            RefusalReason::max_remove,
            RefusalReason::min_nodes,
        ] {
            let _ = refusals.get_or_create(&RefusalLabels { reason });
        }
        for step in [StepKind::add, StepKind::enable, StepKind::drain, StepKind::delete] {
            let _ = steps.get_or_create(&StepLabels { step });
            let _ = nodes_changed.get_or_create(&StepLabels { step });
        }
        Metrics {
            registry,
            calls,
            refusals,
            plans_applied,
            steps,
            nodes_changed,
            passes,
            errors,
            converge,
            rate_waits,
            rate_wait_seconds,
            converged,
            refused,
            leader,
            desired_nodes,
            lb_nodes,
            draining,
            servers_lost,
        }
    }

    /// Counts servers of lb-sync's that HAProxy dropped (a restart or reload).
    pub fn servers_lost(&self, n: usize) {
        self.servers_lost.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts one Rackspace call that got an HTTP answer.
    pub fn http_call(&self, verb: CallVerb, code: u16, over_limit: bool) {
        self.call(CallLabels {
            verb,
            status: CallStatus::Http(code),
            outcome: CallOutcome::of_http(code, over_limit),
        });
    }

    /// Counts one Rackspace call that got no answer.
    pub fn http_no_answer(&self, verb: CallVerb) {
        self.call(CallLabels {
            verb,
            status: CallStatus::NoAnswer,
            outcome: CallOutcome::transport,
        });
    }

    /// Counts one HAProxy Runtime API command.
    pub fn runtime_call(&self, verb: CallVerb, status: RuntimeStatus) {
        self.call(CallLabels {
            verb,
            status: CallStatus::Runtime(status),
            outcome: status.outcome(),
        });
    }

    fn call(&self, labels: CallLabels) {
        self.calls.get_or_create(&labels).inc();
    }

    /// Creates the rate-limit series of `verbs` at 0 (the Rackspace client's, at start).
    pub fn expect_rate_limits(&self, verbs: &[CallVerb]) {
        for verb in verbs {
            for cause in [
                WaitCause::over_limit_413,
                WaitCause::too_many_requests_429,
                WaitCause::pacing,
            ] {
                let labels = WaitLabels { verb: *verb, cause };
                let _ = self.rate_waits.get_or_create(&labels);
                let _ = self.rate_wait_seconds.get_or_create(&labels);
            }
        }
    }

    /// Counts a wait of `waited` before a request of `verb`.
    pub fn rate_limit_wait(&self, verb: CallVerb, cause: WaitCause, waited: Duration) {
        let labels = WaitLabels { verb, cause };
        self.rate_waits.get_or_create(&labels).inc();
        self.rate_wait_seconds
            .get_or_create(&labels)
            .inc_by(waited.as_secs_f64());
    }

    /// Counts an applied step that changed `nodes` nodes.
    pub fn step_applied(&self, step: StepKind, nodes: usize) {
        let labels = StepLabels { step };
        self.steps.get_or_create(&labels).inc();
        self.nodes_changed
            .get_or_create(&labels)
            .inc_by(u64::try_from(nodes).unwrap_or(u64::MAX));
    }

    /// Counts a plan of which at least one step was applied.
    pub fn plan_applied(&self) {
        self.plans_applied.inc();
    }

    /// Records one time to converge.
    pub fn converged_after(&self, took: Duration) {
        self.converge.observe(took.as_secs_f64());
    }

    /// Sets the number of managed nodes draining.
    pub fn set_draining(&self, n: usize) {
        self.draining.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The state `/healthz` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// What the loop is doing (serialized in snake case: `converged`, `dry_run`, ...).
    pub state: State,
    /// Whether this instance may apply plans.
    pub leader: bool,
    /// Why the last plan was refused (empty when it was not).
    pub refusals: Vec<String>,
    /// The last error of a pass, until a pass succeeds.
    pub last_error: Option<String>,
    /// Whether the view of etcd is complete.
    pub complete: bool,
    /// Nodes the records ask for.
    pub desired_nodes: usize,
    /// Nodes on the load balancer at the last read.
    pub lb_nodes: usize,
    /// When the last pass ended (RFC 3339).
    pub last_pass: Option<String>,
    /// Whether a plan has been computed since start (applied or refused): `/readyz`
    /// waits for it.
    pub planned: bool,
}

/// What `/readyz` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// 200, with a line saying why.
    Ready(String),
    /// 503, with a line saying why not.
    NotReady(String),
}

/// Readiness from the status: ready once a first plan was computed (applied or refused)
/// and while the last plan was not refused. A standby is ready: it has nothing to plan
/// until it leads, and taking it out of rotation or restarting it would not help the
/// leader (`/healthz` says `standby`). Errors of a pass are `/healthz`'s business: a plan
/// that could not be computed leaves the last answer standing.
#[must_use]
pub fn readiness(status: &Status) -> Readiness {
    match status.state {
        State::Standby => Readiness::Ready("standby: not the leader, ready to take over".into()),
        State::Refused => Readiness::NotReady(format!(
            "refused: {}",
            if status.refusals.is_empty() {
                "the last plan was refused".to_owned()
            } else {
                status.refusals.join("; ")
            }
        )),
        _ if !status.planned => Readiness::NotReady("starting: no plan computed yet".into()),
        State::DryRun => Readiness::Ready("ready: dry run, plans are logged, not applied".into()),
        State::Starting | State::Applying | State::Converged | State::Waiting | State::Error => {
            Readiness::Ready("ready: the last plan was not refused".into())
        }
    }
}

/// Shared by the loop (writer) and the server (reader).
#[derive(Debug, Default)]
pub struct Health {
    status: Mutex<Status>,
    /// The metrics registry.
    pub metrics: Metrics,
}

impl Health {
    /// A health record in state `starting`.
    #[must_use]
    pub fn new() -> Health {
        Health::default()
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of the current status.
    #[must_use]
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    /// Updates the status with `f` and mirrors it into the gauges.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.lock();
        f(&mut s);
        s.last_pass = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        let m = &self.metrics;
        m.converged.set(i64::from(s.state == State::Converged));
        m.refused.set(i64::from(s.state == State::Refused));
        m.leader.set(i64::from(s.leader));
        m.desired_nodes.set(i64::try_from(s.desired_nodes).unwrap_or(i64::MAX));
        m.lb_nodes.set(i64::try_from(s.lb_nodes).unwrap_or(i64::MAX));
    }

    /// Counts a refused plan.
    pub fn refusal(&self, reason: RefusalReason) {
        self.metrics.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts a pass, and an error when it ended in one.
    pub fn pass(&self, failed: bool) {
        self.metrics.passes.inc();
        if failed {
            self.metrics.errors.inc();
        }
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr` until `cancel`.
///
/// `/healthz` answers 200 while converging, converged, waiting or standing by, and 503
/// when the last plan was refused or the last pass failed, with the status as JSON.
/// `/readyz` answers one line, 200 or 503, as [`readiness`] decides.
///
/// # Errors
/// [`Error::Listen`] when the address cannot be bound.
pub async fn serve(addr: SocketAddr, health: Arc<Health>, cancel: CancellationToken) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(health);
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::warn!("health server stopped: {e}");
        }
    });
    Ok(())
}

async fn healthz(AxState(health): AxState<Arc<Health>>) -> impl IntoResponse {
    let status = health.status();
    let code = if matches!(status.state, State::Refused | State::Error) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::to_string_pretty(&status).unwrap_or_default() + "\n";
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn readyz(AxState(health): AxState<Arc<Health>>) -> impl IntoResponse {
    let (code, line) = match readiness(&health.status()) {
        Readiness::Ready(l) => (StatusCode::OK, l),
        Readiness::NotReady(l) => (StatusCode::SERVICE_UNAVAILABLE, l),
    };
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line + "\n")
}

async fn metrics(AxState(health): AxState<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_calls_refusals_and_gauges() {
        let h = Health::new();
        h.metrics.http_call(CallVerb::Post, 202, false);
        h.metrics.http_call(CallVerb::Post, 202, false);
        h.metrics.http_call(CallVerb::Put, 413, true);
        h.metrics.http_no_answer(CallVerb::Get);
        h.metrics.runtime_call(CallVerb::AddServer, RuntimeStatus::Ok);
        h.metrics.runtime_call(CallVerb::DelServer, RuntimeStatus::InUse);
        h.metrics.step_applied(StepKind::add, 3);
        h.metrics
            .rate_limit_wait(CallVerb::Put, WaitCause::over_limit_413, Duration::from_millis(1500));
        h.metrics.converged_after(Duration::from_secs(3));
        h.refusal(RefusalReason::max_remove);
        h.update(|s| {
            s.state = State::Converged;
            s.leader = true;
            s.desired_nodes = 3;
        });
        let text = h.metrics.render();
        for want in [
            "lb_sync_api_calls_total{verb=\"POST\",status=\"202\",outcome=\"ok\"} 2",
            "lb_sync_api_calls_total{verb=\"PUT\",status=\"413\",outcome=\"rate_limited\"} 1",
            "lb_sync_api_calls_total{verb=\"GET\",status=\"none\",outcome=\"transport\"} 1",
            "lb_sync_api_calls_total{verb=\"add_server\",status=\"ok\",outcome=\"ok\"} 1",
            "lb_sync_api_calls_total{verb=\"del_server\",status=\"in_use\",outcome=\"client_error\"} 1",
            "lb_sync_steps_applied_total{step=\"add\"} 1",
            "lb_sync_nodes_changed_total{step=\"add\"} 3",
            "lb_sync_rate_limit_waits_total{verb=\"PUT\",cause=\"over_limit_413\"} 1",
            "lb_sync_rate_limit_wait_seconds_total{verb=\"PUT\",cause=\"over_limit_413\"} 1.5",
            "lb_sync_converge_seconds_count 1",
            "lb_sync_converge_seconds_bucket{le=\"5.0\"} 1",
            "lb_sync_refusals_total{reason=\"max_remove\"} 1",
            "lb_sync_converged 1",
            "lb_sync_leader 1",
            "lb_sync_desired_nodes 3",
            "# HELP lb_sync_drains_in_progress ",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn http_answers_map_to_outcomes() {
        let cases = [
            (200, false, CallOutcome::ok),
            (202, false, CallOutcome::ok),
            (401, false, CallOutcome::unauthorized),
            (413, true, CallOutcome::rate_limited),
            (413, false, CallOutcome::client_error),
            (429, false, CallOutcome::rate_limited),
            (422, false, CallOutcome::client_error),
            (404, false, CallOutcome::client_error),
            (500, false, CallOutcome::server_error),
            (503, false, CallOutcome::server_error),
        ];
        for (code, over_limit, want) in cases {
            assert_eq!(CallOutcome::of_http(code, over_limit), want, "{code} {over_limit}");
        }
    }

    #[test]
    fn runtime_statuses_have_labels_and_outcomes() {
        let cases = [
            (RuntimeStatus::Ok, "ok", CallOutcome::ok),
            (RuntimeStatus::Unreachable, "unreachable", CallOutcome::transport),
            (RuntimeStatus::Timeout, "timeout", CallOutcome::transport),
            (
                RuntimeStatus::PermissionDenied,
                "permission_denied",
                CallOutcome::client_error,
            ),
            (
                RuntimeStatus::UnknownBackend,
                "unknown_backend",
                CallOutcome::client_error,
            ),
            (
                RuntimeStatus::UnknownServer,
                "unknown_server",
                CallOutcome::client_error,
            ),
            (RuntimeStatus::InUse, "in_use", CallOutcome::client_error),
            (RuntimeStatus::Duplicate, "duplicate", CallOutcome::client_error),
            (
                RuntimeStatus::StaticBackend,
                "static_backend",
                CallOutcome::client_error,
            ),
            (RuntimeStatus::Refused, "refused", CallOutcome::client_error),
            (RuntimeStatus::Malformed, "malformed", CallOutcome::client_error),
            (RuntimeStatus::TooLarge, "too_large", CallOutcome::client_error),
        ];
        for (status, label, outcome) in cases {
            assert_eq!((status.as_str(), status.outcome()), (label, outcome), "{status:?}");
        }
    }

    #[test]
    fn readiness_follows_the_last_plan() {
        let status = |state: State, planned: bool, refusals: &[&str]| Status {
            state,
            planned,
            refusals: refusals.iter().map(|r| (*r).to_owned()).collect(),
            ..Status::default()
        };
        let ready = |l: &str| Readiness::Ready(l.to_owned());
        let not = |l: &str| Readiness::NotReady(l.to_owned());
        let cases = [
            (
                status(State::Starting, false, &[]),
                not("starting: no plan computed yet"),
            ),
            (status(State::Error, false, &[]), not("starting: no plan computed yet")),
            (
                status(State::Applying, false, &[]),
                not("starting: no plan computed yet"),
            ),
            (
                status(State::Applying, true, &[]),
                ready("ready: the last plan was not refused"),
            ),
            (
                status(State::Converged, true, &[]),
                ready("ready: the last plan was not refused"),
            ),
            (
                status(State::Waiting, true, &[]),
                ready("ready: the last plan was not refused"),
            ),
            (
                status(State::Error, true, &[]),
                ready("ready: the last plan was not refused"),
            ),
            (
                status(State::Refused, true, &["would remove 3 of 4 nodes", "fewer than 2"]),
                not("refused: would remove 3 of 4 nodes; fewer than 2"),
            ),
            (
                status(State::Refused, true, &[]),
                not("refused: the last plan was refused"),
            ),
            (
                status(State::Standby, false, &[]),
                ready("standby: not the leader, ready to take over"),
            ),
            (
                status(State::DryRun, true, &[]),
                ready("ready: dry run, plans are logged, not applied"),
            ),
            (status(State::DryRun, false, &[]), not("starting: no plan computed yet")),
        ];
        for (s, want) in cases {
            assert_eq!(readiness(&s), want, "{:?} planned {}", s.state, s.planned);
        }
    }
}
