//! What lb-sync tells the outside: `/healthz` (state, refusals, leadership, last error)
//! and `/metrics` (Prometheus text: API calls per verb and outcome, refusals, passes,
//! converged state), served on `--listen` when given.
//!
//! The reconcile loop and the API client write here; the HTTP server only reads.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::plan::RefusalReason;

/// What an API call is: a verb of the Rackspace API, or a HAProxy Runtime API command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)] // the label values are the HTTP method names
pub enum CallVerb {
    /// Identity: a token request.
    AUTH,
    /// HTTP GET.
    GET,
    /// HTTP POST.
    POST,
    /// HTTP PUT.
    PUT,
    /// HTTP DELETE.
    DELETE,
    /// A HAProxy Runtime API command.
    RUNTIME,
}

/// How an API call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values are the metric's documented snake_case
pub enum CallOutcome {
    /// A success answer.
    ok,
    /// A 4xx other than 401/413 rate limits (or a HAProxy command refused).
    client_error,
    /// 401.
    unauthorized,
    /// 413 rate limit.
    rate_limited,
    /// 5xx.
    server_error,
    /// No answer (connection refused or reset, timeout, socket gone).
    transport,
}

/// Labels of `lb_sync_api_calls_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallLabels {
    /// The call.
    pub verb: CallVerb,
    /// How it ended.
    pub outcome: CallOutcome,
}

/// Labels of `lb_sync_refusals_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The refusal's reason.
    pub reason: RefusalReason,
}

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

/// Counters and gauges, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    passes: Counter,
    errors: Counter,
    converged: Gauge,
    refused: Gauge,
    leader: Gauge,
    desired_nodes: Gauge,
    lb_nodes: Gauge,
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
            "Load balancer and identity API calls by verb and outcome",
            calls.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Plans refused by a safety rule, by reason",
            refusals.clone(),
        );
        let passes = Counter::default();
        registry.register("passes", "Reconcile passes run", passes.clone());
        let errors = Counter::default();
        registry.register("errors", "Reconcile passes stopped by an error", errors.clone());
        let converged = Gauge::default();
        registry.register(
            "converged",
            "1 when the load balancer matched the records at the last pass",
            converged.clone(),
        );
        let refused = Gauge::default();
        registry.register("refused", "1 when the last plan was refused", refused.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 when this instance may apply plans", leader.clone());
        let desired_nodes = Gauge::default();
        registry.register("desired_nodes", "Nodes the records ask for", desired_nodes.clone());
        let lb_nodes = Gauge::default();
        registry.register(
            "lb_nodes",
            "Nodes on the load balancer at the last read",
            lb_nodes.clone(),
        );
        Metrics {
            registry,
            calls,
            refusals,
            passes,
            errors,
            converged,
            refused,
            leader,
            desired_nodes,
            lb_nodes,
        }
    }

    /// Counts one API call.
    pub fn call(&self, verb: CallVerb, outcome: CallOutcome) {
        self.calls.get_or_create(&CallLabels { verb, outcome }).inc();
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

/// Serves `/healthz` and `/metrics` on `addr` until `cancel`.
///
/// `/healthz` answers 200 while converging, converged, waiting or standing by, and 503
/// when the last plan was refused or the last pass failed, with the status as JSON.
///
/// # Errors
/// [`Error::Listen`] when the address cannot be bound.
pub async fn serve(addr: SocketAddr, health: Arc<Health>, cancel: CancellationToken) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(health);
    tracing::info!(%addr, "serving /healthz and /metrics");
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
        h.metrics.call(CallVerb::POST, CallOutcome::ok);
        h.metrics.call(CallVerb::POST, CallOutcome::ok);
        h.metrics.call(CallVerb::PUT, CallOutcome::rate_limited);
        h.refusal(RefusalReason::max_remove);
        h.update(|s| {
            s.state = State::Converged;
            s.leader = true;
            s.desired_nodes = 3;
        });
        let text = h.metrics.render();
        assert!(
            text.contains("lb_sync_api_calls_total{verb=\"POST\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(text.contains("lb_sync_api_calls_total{verb=\"PUT\",outcome=\"rate_limited\"} 1"));
        assert!(text.contains("lb_sync_refusals_total{reason=\"max_remove\"} 1"));
        assert!(text.contains("lb_sync_converged 1"));
        assert!(text.contains("lb_sync_desired_nodes 3"));
    }
}
