//! The announcer's Prometheus metrics (`/metrics` on `--metrics-addr`), through
//! prometheus-client as lb-sync does, with typed label sets.
//!
//! Every metric is named `announcer_*`; the README's "Operating it" lists them.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A change the registry makes to etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are snake_case
pub enum Op {
    /// A record written (new, changed or rewritten).
    announce,
    /// A record deleted.
    withdraw,
}

/// How an [`Op`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum OpResult {
    /// Done.
    ok,
    /// Not written: another announcer holds the record.
    conflict,
    /// Not deleted: the record is no longer on our lease.
    not_ours,
    /// etcd did not answer or refused; retried with backoff.
    error,
}

/// Labels of `announcer_operations_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OpLabels {
    /// What.
    pub op: Op,
    /// How it ended.
    pub result: OpResult,
}

/// Labels of `announcer_records`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The record's service (`web`, `db`).
    pub service: String,
}

/// Why a lease was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LeaseGrant {
    /// The first lease of this process.
    grant,
    /// A new lease after the previous one expired (etcd was away longer than the TTL).
    regrant,
}

/// Labels of `announcer_lease_grants_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LeaseLabels {
    /// First or again.
    pub kind: LeaseGrant,
}

/// A probing health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CheckKind {
    /// TCP connect.
    tcp,
    /// HTTP GET, 2xx.
    http,
}

/// How one probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CheckResult {
    /// The service answered.
    pass,
    /// It did not.
    fail,
}

/// Labels of `announcer_health_checks_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CheckLabels {
    /// Which check.
    pub check: CheckKind,
    /// Its result.
    pub result: CheckResult,
}

/// One prober's counters (shared with the registry: cloning a counter shares it).
#[derive(Clone, Debug, Default)]
pub struct ProbeCounters {
    /// Probes that passed.
    pub pass: Counter,
    /// Probes that failed.
    pub fail: Counter,
}

impl ProbeCounters {
    /// Counts one probe.
    pub fn count(&self, ok: bool) {
        if ok {
            self.pass.inc()
        } else {
            self.fail.inc()
        };
    }
}

/// Counters, gauges and the latency histogram, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    records: Family<ServiceLabels, Gauge>,
    operations: Family<OpLabels, Counter>,
    latency: Histogram,
    docker_reconnects: Counter,
    lease_grants: Family<LeaseLabels, Counter>,
    checks: Family<CheckLabels, Counter>,
    conflicts: Counter,
    held_back: Gauge,
    etcd_up: Gauge,
    docker_up: Gauge,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every announcer metric.
    #[must_use]
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("announcer");
        let records = Family::<ServiceLabels, Gauge>::default();
        registry.register("records", "Records announced in etcd now, by service", records.clone());
        let operations = Family::<OpLabels, Counter>::default();
        registry.register(
            "operations",
            "Record writes (announce) and deletes (withdraw) by result",
            operations.clone(),
        );
        // 5 ms .. ~41 s: a write acknowledged at once, up to a health check that took a while.
        let latency = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "event_to_visible_seconds",
            "From the Docker event (its own timestamp) to etcd acknowledging the record's write or delete",
            latency.clone(),
        );
        let docker_reconnects = Counter::default();
        registry.register(
            "docker_reconnects",
            "Docker event streams reopened after a break",
            docker_reconnects.clone(),
        );
        let lease_grants = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "lease_grants",
            "Leases granted: the first one, and regrants after an expiry",
            lease_grants.clone(),
        );
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register("health_checks", "Health probes by check and result", checks.clone());
        let conflicts = Counter::default();
        registry.register(
            "record_conflicts",
            "Records found held by another announcer (each conflict counted once)",
            conflicts.clone(),
        );
        let held_back = Gauge::default();
        registry.register(
            "records_held_back",
            "Records not announced now because another announcer holds them",
            held_back.clone(),
        );
        let etcd_up = Gauge::default();
        registry.register("etcd_up", "1 while the last etcd round trip succeeded", etcd_up.clone());
        let docker_up = Gauge::default();
        registry.register(
            "docker_up",
            "1 while the Docker event stream is open",
            docker_up.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 after the first full sync while no record is held back",
            ready.clone(),
        );
        Metrics {
            registry,
            records,
            operations,
            latency,
            docker_reconnects,
            lease_grants,
            checks,
            conflicts,
            held_back,
            etcd_up,
            docker_up,
            ready,
        }
    }

    /// Counts one etcd operation.
    pub fn op(&self, op: Op, result: OpResult) {
        self.operations.get_or_create(&OpLabels { op, result }).inc();
    }

    /// Sets the records gauge from the count per service (services gone drop out).
    pub fn records(&self, by_service: &BTreeMap<String, i64>) {
        self.records.clear();
        for (service, n) in by_service {
            self.records
                .get_or_create(&ServiceLabels {
                    service: service.clone(),
                })
                .set(*n);
        }
    }

    /// One event-to-visible latency.
    pub fn visible_after(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    /// The Docker event stream was reopened after a break.
    pub fn docker_reconnect(&self) {
        self.docker_reconnects.inc();
    }

    /// A lease was granted.
    pub fn lease_granted(&self, kind: LeaseGrant) {
        self.lease_grants.get_or_create(&LeaseLabels { kind }).inc();
    }

    /// The pass and fail counters of a probing check (`None` for `docker` and `none`,
    /// which do not probe).
    #[must_use]
    pub fn probe_counters(&self, check: &crate::health::Check) -> Option<ProbeCounters> {
        use crate::health::Check;
        let kind = match check {
            Check::Tcp => CheckKind::tcp,
            Check::Http { .. } => CheckKind::http,
            Check::Docker | Check::None => return None,
        };
        let counter = |result| self.checks.get_or_create(&CheckLabels { check: kind, result }).clone();
        Some(ProbeCounters {
            pass: counter(CheckResult::pass),
            fail: counter(CheckResult::fail),
        })
    }

    /// A new conflict was found.
    pub fn conflict(&self) {
        self.conflicts.inc();
    }

    /// The up/ready gauges.
    pub(crate) fn gauges(&self, etcd_up: bool, docker_up: bool, ready: bool, held_back: usize) {
        self.etcd_up.set(i64::from(etcd_up));
        self.docker_up.set(i64::from(docker_up));
        self.ready.set(i64::from(ready));
        self.held_back.set(i64::try_from(held_back).unwrap_or(i64::MAX));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_typed_labels_and_drops_services_that_went_away() {
        let m = Metrics::new();
        m.op(Op::announce, OpResult::ok);
        m.op(Op::announce, OpResult::ok);
        m.op(Op::withdraw, OpResult::not_ours);
        m.lease_granted(LeaseGrant::regrant);
        m.records(&BTreeMap::from([("web".to_owned(), 3), ("db".to_owned(), 1)]));
        m.records(&BTreeMap::from([("web".to_owned(), 2)]));
        m.visible_after(Duration::from_millis(30));
        m.gauges(true, false, false, 1);
        let text = m.render();
        for want in [
            "announcer_operations_total{op=\"announce\",result=\"ok\"} 2",
            "announcer_operations_total{op=\"withdraw\",result=\"not_ours\"} 1",
            "announcer_lease_grants_total{kind=\"regrant\"} 1",
            "announcer_records{service=\"web\"} 2",
            "announcer_event_to_visible_seconds_count 1",
            "announcer_etcd_up 1",
            "announcer_docker_up 0",
            "announcer_records_held_back 1",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("service=\"db\""), "{text}");
    }
}
