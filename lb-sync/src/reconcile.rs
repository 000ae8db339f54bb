//! The reconcile loop: level-triggered, debounced.
//!
//! A pass starts after the records change (debounced: quiet for `MIN`, or `MAX` after
//! the first change at most), every `--resync`, when a drain period ends, and when this
//! instance becomes the leader. A pass reads the load balancer (Rackspace: waiting until
//! it is ACTIVE), plans from scratch with [`plan::plan`], applies the first step (HAProxy:
//! every step the plan allows), and starts over from a fresh read, until nothing is left
//! to do or the plan is refused. Each step is applied only after a fresh
//! [`Leadership::may_apply`].
//!
//! The loop remembers one thing across passes: when it drained each node, so the drain
//! period survives re-plans (nodes found draining count from when they were first seen).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidekick::notify::{Heartbeat, Notifier};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::clb::LoadBalancer;
use crate::election::Leadership;
use crate::health::{Health, State, StepKind};
use crate::plan::{self, Actual, Condition, Desired, Endpoint, Limits, Note, Plan, Policy, Refusal, Step};
use crate::provider::Provider;

/// Most steps one pass may apply before it yields (a guard against a loop that never converges).
const MAX_STEPS_PER_PASS: usize = 500;

/// The loop's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Quiet time after a change before a pass.
    pub debounce_min: Duration,
    /// Longest delay after the first change of a burst.
    pub debounce_max: Duration,
    /// Pass at least this often.
    pub resync: Duration,
}

/// How a pass ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The load balancer matches the records.
    Converged,
    /// Drains or ONLINE checks are pending; pass again after the duration.
    Waiting(Duration),
    /// A safety rule refused the plan.
    Refused(Vec<Refusal>),
    /// Not the leader: nothing applied.
    Standby,
    /// Dry run: the plan was logged, not applied.
    DryRun,
    /// The pass stopped on an error.
    Failed(Arc<Error>),
}

/// What one plan showed, for the converge clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The load balancer differs from the records (steps, waits or refusals).
    Differs,
    /// The load balancer matches the records.
    Matches,
    /// This instance does not apply plans (standby, dry run): whatever it saw is not its
    /// work to converge, so a divergence it saw is forgotten.
    NotApplying,
}

/// Times convergence: from the first plan that found a difference to the first that
/// found none (`lb_sync_converge_seconds`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvergeClock {
    /// When the current difference was first seen.
    since: Option<Instant>,
}

impl ConvergeClock {
    /// Takes in what a plan at `now` saw; gives the time to converge when it ends a
    /// difference.
    pub fn observe(&mut self, seen: Seen, now: Instant) -> Option<Duration> {
        match seen {
            Seen::Differs => {
                self.since.get_or_insert(now);
                None
            }
            Seen::Matches => self.since.take().map(|s| now.saturating_duration_since(s)),
            Seen::NotApplying => {
                self.since = None;
                None
            }
        }
    }
}

/// The metric label of a step and how many nodes it changes.
#[must_use]
pub fn step_kind(step: &Step) -> (StepKind, usize) {
    match step {
        Step::Add(n) => (StepKind::add, n.len()),
        Step::Enable(_) => (StepKind::enable, 1),
        Step::Drain(_) => (StepKind::drain, 1),
        Step::Delete(n) => (StepKind::delete, n.len()),
    }
}

/// The loop's state.
#[derive(Debug)]
pub struct Reconciler {
    provider: Provider,
    policy: Policy,
    limits: Limits,
    dry_run: bool,
    health: Arc<Health>,
    /// Node id -> when it started draining.
    drain_started: BTreeMap<u64, Instant>,
    /// Since when each node's endpoint has been missing from the records (`--remove-settle`).
    missing_since: BTreeMap<Endpoint, Instant>,
    /// The refusal last logged, to log each new one once at error level.
    last_refusal: Vec<Refusal>,
    /// The plan notes last logged, to log each new one once.
    last_notes: Vec<Note>,
    /// Time to converge.
    converge: ConvergeClock,
    /// systemd: readiness after the first plan, the status line, the watchdog.
    notifier: Notifier,
    /// The loop's heartbeat while it runs.
    beat: Option<Heartbeat>,
    /// How long one read or step of a pass may take by its own timeouts (waiting for
    /// ACTIVE included): the loop counts as alive that long within a pass.
    busy_limit: Duration,
}

impl Reconciler {
    /// A reconciler; `policy.force` holds until a pass ends with nothing refused and
    /// nothing left for it to lift, then lapses.
    #[must_use]
    pub fn new(provider: Provider, policy: Policy, limits: Limits, dry_run: bool, health: Arc<Health>) -> Reconciler {
        Reconciler {
            provider,
            policy,
            limits,
            dry_run,
            health,
            drain_started: BTreeMap::new(),
            missing_since: BTreeMap::new(),
            last_refusal: Vec::new(),
            last_notes: Vec::new(),
            converge: ConvergeClock::default(),
            notifier: Notifier::with_watchdog(None),
            beat: None,
            busy_limit: Duration::from_secs(60),
        }
    }

    /// Reports to systemd through `notifier`; `busy_limit`: the longest one read or step of
    /// a pass may take by its own timeouts.
    #[must_use]
    pub fn with_notifier(mut self, notifier: Notifier, busy_limit: Duration) -> Reconciler {
        self.notifier = notifier;
        self.busy_limit = busy_limit;
        self
    }

    fn busy(&self, limit: Duration) {
        if let Some(b) = &self.beat {
            b.busy(limit);
        }
    }

    /// Runs until `cancel`.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Desired>,
        mut leadership: Leadership,
        timing: Timing,
        cancel: CancellationToken,
    ) {
        let beat = self.notifier.heartbeat("reconcile");
        let mut alive = beat.interval();
        self.beat = Some(beat);
        // The first pass waits for the first view from etcd (complete or not).
        loop {
            self.busy(Duration::ZERO);
            tokio::select! {
                () = cancel.cancelled() => return,
                r = desired.changed() => if r.is_err() { return } else { break },
                _ = alive.tick() => {}
            }
        }
        let mut wake: Option<Instant> = None;
        let mut was_leader;
        let mut ready = false;
        let mut status = String::new();
        loop {
            let outcome = self.pass(&desired, &leadership, &cancel).await;
            let line = status_line(&outcome, &self.health.status());
            // READY=1 after the first plan computed or refused (a standby instance is
            // ready too: it is doing its job); a pass that failed before planning is not.
            if !ready && !matches!(outcome, Outcome::Failed(_)) {
                self.notifier.ready(&line);
                tracing::info!(status = %line, "first plan done: ready");
                ready = true;
            } else if line != status {
                self.notifier.status(&line);
            }
            status = line;
            // What this pass saw, not what the watch last said: `may_apply` also turns
            // false by the clock alone (a keep-alive answer late), without any change on
            // the watch. A pass that stood by must run again at the next renewal, or the
            // change it skipped would wait for the resync.
            was_leader = match outcome {
                Outcome::Standby => false,
                Outcome::DryRun => leadership.may_apply(),
                _ => true,
            };
            let next_resync = Instant::now() + timing.resync;
            wake = match &outcome {
                Outcome::Waiting(d) => Some(Instant::now() + *d),
                Outcome::Failed(_) => Some(Instant::now() + timing.resync.min(Duration::from_secs(10))),
                _ => None,
            }
            .or(wake.filter(|w| *w > Instant::now()));
            let deadline = wake.map_or(next_resync, |w| w.min(next_resync));
            loop {
                self.busy(Duration::ZERO);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = alive.tick() => {}
                    r = desired.changed() => {
                        if r.is_err() {
                            return;
                        }
                        self.busy(timing.debounce_max);
                        debounce(&mut desired, timing, &cancel).await;
                        break;
                    }
                    () = tokio::time::sleep_until(deadline.into()) => break,
                    () = leadership.changed() => {
                        let now_leader = leadership.may_apply();
                        let changed = now_leader != was_leader;
                        was_leader = now_leader;
                        if changed {
                            break;
                        }
                    }
                }
            }
            if wake.is_some_and(|w| w <= Instant::now()) {
                wake = None;
            }
        }
    }

    /// One pass: read, plan, apply one step, again, until done, refused or failed.
    pub async fn pass(
        &mut self,
        desired: &watch::Receiver<Desired>,
        leadership: &Leadership,
        cancel: &CancellationToken,
    ) -> Outcome {
        let outcome = self.pass_inner(desired, leadership, cancel).await;
        let failed = matches!(outcome, Outcome::Failed(_));
        self.health.pass(failed);
        let leader = leadership.may_apply();
        self.health.update(|s| {
            s.leader = leader;
            s.state = match &outcome {
                Outcome::Converged => State::Converged,
                Outcome::Waiting(_) => State::Waiting,
                Outcome::Refused(_) => State::Refused,
                Outcome::Standby => State::Standby,
                Outcome::DryRun => State::DryRun,
                Outcome::Failed(_) => State::Error,
            };
            s.refusals = match &outcome {
                Outcome::Refused(r) => r.iter().map(ToString::to_string).collect(),
                _ => Vec::new(),
            };
            match &outcome {
                Outcome::Failed(e) => s.last_error = Some(e.to_string()),
                Outcome::Standby => {}
                _ => s.last_error = None,
            }
        });
        if !matches!(outcome, Outcome::Refused(_)) {
            self.last_refusal.clear();
        }
        outcome
    }

    async fn pass_inner(
        &mut self,
        desired: &watch::Receiver<Desired>,
        leadership: &Leadership,
        cancel: &CancellationToken,
    ) -> Outcome {
        if !leadership.may_apply() && !self.dry_run {
            tracing::debug!("not the leader: nothing to do");
            self.converge.observe(Seen::NotApplying, Instant::now());
            return Outcome::Standby;
        }
        let mut steps = 0usize;
        // The load balancer as it must be after a batch of deletes that all succeeded: the
        // last read without the deleted nodes (see `after_deletes`).
        let mut known: Option<LoadBalancer> = None;
        loop {
            if cancel.is_cancelled() {
                return Outcome::Failed(Arc::new(Error::Cancelled));
            }
            self.busy(self.busy_limit);
            let predicted = known.is_some();
            let lb = match known.take() {
                Some(lb) => lb,
                None => match self.provider.read(cancel).await {
                    Ok(lb) => lb,
                    Err(Error::Cancelled) => return Outcome::Failed(Arc::new(Error::Cancelled)),
                    Err(e) => {
                        tracing::error!("cannot read {}: {e}", self.provider.describe());
                        return Outcome::Failed(Arc::new(e));
                    }
                },
            };
            let now = Instant::now();
            // Planned on the watch's own value, not a copy (a copy of 5,000 nodes cost a
            // tenth of a pass): the records task waits for this borrow to end before it
            // publishes a newer view, so it ends before anything is applied.
            let (plan, complete, desired_nodes) = {
                let view = desired.borrow();
                self.note_drains(&lb, now);
                self.note_missing(&view, &lb, now);
                let plan = plan::plan(
                    &view,
                    &Actual {
                        nodes: &lb.nodes,
                        drain_started: &self.drain_started,
                        missing_since: &self.missing_since,
                        now,
                    },
                    &self.limits,
                    &self.policy,
                );
                (plan, view.complete, view.nodes.len())
            };
            self.health.update(|s| {
                s.complete = complete;
                s.desired_nodes = desired_nodes;
                s.lb_nodes = lb.nodes.len();
                s.planned = true;
            });
            self.health.metrics.set_draining(
                lb.nodes
                    .iter()
                    .filter(|n| !n.foreign && n.condition == Condition::Draining)
                    .count(),
            );
            let seen = if self.dry_run {
                Seen::NotApplying
            } else if plan.is_converged() {
                Seen::Matches
            } else {
                Seen::Differs
            };
            if let Some(took) = self.converge.observe(seen, now) {
                tracing::debug!("converged after {took:?}");
                self.health.metrics.converged_after(took);
            }
            if !plan.refusals.is_empty() {
                self.report_refusal(&plan);
            }
            if plan.notes != self.last_notes {
                for note in plan.notes.iter().filter(|n| !self.last_notes.contains(n)) {
                    tracing::warn!("{note}");
                }
                self.last_notes.clone_from(&plan.notes);
            }
            let batch = if self.provider.batches() {
                plan.allowed_steps()
            } else {
                plan.next_step().into_iter().collect()
            };
            let Some(step) = batch.first() else {
                return self.settle(&plan);
            };
            if predicted {
                // Nothing is ever applied on a prediction: read for real first.
                continue;
            }
            if self.dry_run {
                for s in plan.steps() {
                    tracing::info!("dry run: would {s}");
                }
                return Outcome::DryRun;
            }
            if !leadership.may_apply() {
                tracing::warn!("leadership not confirmed: stopping before {step}");
                return Outcome::Standby;
            }
            steps += 1;
            if steps > MAX_STEPS_PER_PASS {
                let e = Error::NoConvergence {
                    steps: MAX_STEPS_PER_PASS,
                };
                tracing::error!("{e}");
                return Outcome::Failed(Arc::new(e));
            }
            self.health.update(|s| {
                s.state = State::Applying;
                s.leader = true;
            });
            let mut applied = 0usize;
            let mut deleted = Vec::new();
            for step in &batch {
                self.busy(self.busy_limit);
                // The change itself is logged once done, one line per node (`log_change`).
                tracing::debug!("{step}");
                let result = self.apply(step).await;
                if result.is_ok() {
                    let (kind, nodes) = step_kind(step);
                    self.health.metrics.step_applied(kind, nodes);
                    applied += 1;
                    if applied == 1 {
                        self.health.metrics.plan_applied();
                    }
                }
                match result {
                    Ok(()) => {
                        if plan.forced {
                            tracing::warn!("applied under --force");
                        }
                        if let Step::Delete(nodes) = step {
                            deleted.extend(nodes.iter().map(|n| n.id));
                        }
                    }
                    Err(e) if e.retryable() => {
                        tracing::info!("{step}: {e}; reading the load balancer again");
                        break;
                    }
                    Err(e) => {
                        tracing::error!("{step} failed: {e}");
                        return Outcome::Failed(Arc::new(e));
                    }
                }
            }
            // Deletes leave nothing to observe: HAProxy answered "Server deleted." to each
            // (`haproxy::judge_batch`), and a deleted server has no state to wait for. So
            // after a batch of deletes alone, all applied, the next plan is made on the
            // last read without those servers, not on a fresh read: one read of the whole
            // backend less per change (450 KB and a third of a change's CPU at 5,000
            // servers: issue 18). That plan only confirms; should it find anything to do,
            // the load balancer is read again before anything is applied. Adds, drains and
            // enables are always read back: their servers' checks, sessions and states
            // are what the next plan waits on. Rackspace's load balancer changes state
            // after every call, so its next step always follows a read.
            if self.provider.batches() && applied == batch.len() && batch.iter().all(|s| matches!(s, Step::Delete(_))) {
                known = Some(after_deletes(lb, &deleted));
            }
        }
    }

    /// The end of a pass with nothing left to apply now.
    fn settle(&mut self, plan: &Plan) -> Outcome {
        if !plan.refusals.is_empty() {
            return Outcome::Refused(plan.refusals.clone());
        }
        // `--force` lapses at the first pass that ends with nothing refused and nothing it
        // still has to lift. Lapsing at a pass that only drained (the drained nodes of an
        // emptied record set still count as "no record is left but the LB has nodes")
        // would refuse their deletion and leave them DRAINING for good.
        if self.policy.force && !plan.forced {
            tracing::info!("--force has served its purpose and is lifted");
            self.policy.force = false;
        }
        match plan.next_wake() {
            Some(d) => Outcome::Waiting(d),
            None => {
                tracing::debug!("converged");
                Outcome::Converged
            }
        }
    }

    fn report_refusal(&mut self, plan: &Plan) {
        for r in &plan.refusals {
            self.health.refusal(r.reason());
        }
        if plan.refusals != self.last_refusal {
            for r in &plan.refusals {
                tracing::error!(
                    lb = %self.provider.describe(),
                    "plan refused, load balancer left unchanged: {r}"
                );
            }
            self.last_refusal.clone_from(&plan.refusals);
        }
    }

    /// Keeps the drain clock: nodes seen draining without a start time start now.
    fn note_drains(&mut self, lb: &LoadBalancer, now: Instant) {
        self.drain_started.retain(|id, _| {
            lb.nodes
                .iter()
                .any(|n| n.id == *id && n.condition == Condition::Draining)
        });
        for n in &lb.nodes {
            if n.condition == Condition::Draining {
                self.drain_started.entry(n.id).or_insert(now);
            }
        }
    }

    /// Keeps the settle clock: a node's endpoint missing from the records starts now; one
    /// desired again (or gone from the load balancer) is forgotten.
    fn note_missing(&mut self, view: &Desired, lb: &LoadBalancer, now: Instant) {
        let missing: BTreeSet<Endpoint> = lb
            .nodes
            .iter()
            .filter_map(plan::Node::endpoint)
            .filter(|ep| !view.nodes.contains_key(ep))
            .collect();
        self.missing_since.retain(|ep, _| missing.contains(ep));
        for ep in missing {
            self.missing_since.entry(ep).or_insert(now);
        }
    }

    async fn apply(&mut self, step: &Step) -> Result<(), Error> {
        let added = self.provider.apply(step).await?;
        self.log_change(step, &added);
        // A node added draining (--add-draining) waits for ONLINE, not for a drain clock.
        for n in added {
            if n.condition == Condition::Draining {
                self.drain_started.remove(&n.id);
            }
        }
        if let Step::Drain(n) = step {
            self.drain_started.insert(n.id, Instant::now());
        }
        Ok(())
    }
}

impl Reconciler {
    /// The log contract (README, "Operating it"): one info line per node changed, with
    /// `address`, `port`, and the node's `id` (the API's; on HAProxy its server id, once
    /// known) and, on HAProxy, its `server` name.
    fn log_change(&self, step: &Step, added: &[crate::plan::Node]) {
        let haproxy = match &self.provider {
            Provider::HaProxy(h) => Some(h),
            Provider::Rackspace(_) => None,
        };
        let one = |what: &str, id: Option<u64>, ep: &Endpoint| match haproxy {
            Some(h) => {
                let server = h.server_name(ep);
                match id {
                    Some(id) => tracing::info!(address = %ep.address, port = ep.port, id, server, "{what}"),
                    None => tracing::info!(address = %ep.address, port = ep.port, server, "{what}"),
                }
            }
            None => tracing::info!(address = %ep.address, port = ep.port, id = id.unwrap_or_default(), "{what}"),
        };
        match step {
            // Rackspace answers with the new nodes' ids; HAProxy's come with the next read.
            Step::Add(new) if added.is_empty() => {
                for n in new {
                    one("node added", None, &n.endpoint);
                }
            }
            Step::Add(_) => {
                for n in added {
                    tracing::info!(address = %n.address, port = n.port, id = n.id, "node added");
                }
            }
            Step::Enable(n) => one("node enabled", Some(n.id), &n.endpoint),
            Step::Drain(n) => one("node drained", Some(n.id), &n.endpoint),
            Step::Delete(nodes) => {
                for n in nodes {
                    one("node removed", Some(n.id), &n.endpoint);
                }
            }
        }
    }
}

/// The `STATUS=` line after a pass (pure).
fn status_line(outcome: &Outcome, s: &crate::health::Status) -> String {
    let counts = format!(
        "{} node(s) wanted, {} on the load balancer",
        s.desired_nodes, s.lb_nodes
    );
    match outcome {
        Outcome::Converged => format!("converged: {counts}"),
        Outcome::Waiting(d) => format!(
            "waiting {} for drains or checks: {counts}",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        Outcome::Refused(r) => format!(
            "refused: {}",
            r.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        ),
        Outcome::Standby => "standby: another instance leads".to_owned(),
        Outcome::DryRun => format!("dry run: {counts}"),
        Outcome::Failed(e) => format!("pass failed: {e}"),
    }
}

/// Waits until the records have been quiet for `debounce_min`, or `debounce_max` has
/// passed since the first change, whichever comes first.
/// `lb` without the nodes of `deleted` (ids).
fn after_deletes(mut lb: LoadBalancer, deleted: &[u64]) -> LoadBalancer {
    let gone: std::collections::HashSet<u64> = deleted.iter().copied().collect();
    lb.nodes.retain(|n| !gone.contains(&n.id));
    lb
}

async fn debounce(desired: &mut watch::Receiver<Desired>, timing: Timing, cancel: &CancellationToken) {
    // Tokio's clock, so that tests with a paused clock see the debounce.
    let first = tokio::time::Instant::now();
    let mut last = first;
    loop {
        let deadline = (last + timing.debounce_min).min(first + timing.debounce_max);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => return,
            r = desired.changed() => {
                if r.is_err() {
                    return;
                }
                last = tokio::time::Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clb::{ApiKey, Clb, ClbConfig};
    use crate::haproxy::{HaProxy, HaProxyConfig};

    /// A pass against a real HAProxy reads back its adds and drains, but not its deletes:
    /// after a batch of deletes alone the pass ends on the last read less the deleted
    /// servers, and the next pass's real read finds what that prediction said.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_reads_back_its_adds_and_drains_but_not_its_deletes() {
        let ha = testbed::HaProxy::start();
        let calls = testbed::SocketProxy::start(&ha.socket().display().to_string());
        let health = Arc::new(Health::new());
        let client = HaProxy::new(
            HaProxyConfig::for_test(calls.path().to_path_buf(), ha.backend()),
            health.clone(),
        );
        let policy = Policy {
            remove_settle: Duration::ZERO,
            drain: Duration::from_secs(60),
            ..Policy::default()
        };
        let mut r = Reconciler::new(
            Provider::HaProxy(client),
            policy,
            Limits::unlimited(),
            false,
            health.clone(),
        );
        let (lead, leadership) = Leadership::manual(Duration::ZERO);
        lead.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        let cancel = CancellationToken::new();
        // Loopback ports nothing listens on: the checks run once an hour.
        let at = |ports: &[u16]| Desired {
            nodes: ports
                .iter()
                .map(|p| (Endpoint::new([127, 0, 0, 1].into(), *p), format!("web{p}")))
                .collect(),
            complete: true,
            ..Desired::default()
        };
        let (tx, rx) = watch::channel(at(&[1, 2, 3]));
        let mut seen = 0;
        let mut since = || {
            let lines = calls.first_lines();
            let new = lines.get(seen..).unwrap_or_default().to_vec();
            seen = lines.len();
            new
        };
        let is_read = |l: &String| l.starts_with("show servers state");

        let outcome = r.pass(&rx, &leadership, &cancel).await;
        assert!(matches!(outcome, Outcome::Converged), "{outcome:?}");
        let lines = since();
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("add server")).count(),
            3,
            "{lines:#?}"
        );
        assert!(lines.last().is_some_and(is_read), "the adds are read back: {lines:#?}");

        tx.send_replace(at(&[1, 2]));
        let outcome = r.pass(&rx, &leadership, &cancel).await;
        assert!(matches!(outcome, Outcome::Converged), "{outcome:?}");
        let lines = since();
        let drain = lines.iter().position(|l| l.contains("state drain")).expect("a drain");
        let delete = lines.iter().position(|l| l.contains("del server")).expect("a delete");
        assert!(
            lines[drain..delete].iter().any(is_read),
            "the drain is read back before its server is deleted: {lines:#?}"
        );
        assert_eq!(delete, lines.len() - 1, "the delete is not read back: {lines:#?}");
        assert_eq!(health.status().lb_nodes, 2, "the pass ended on two servers");
        assert_eq!(ha.servers().len(), 2, "{:?}", ha.servers());

        // The next pass reads, and finds nothing to do.
        let outcome = r.pass(&rx, &leadership, &cancel).await;
        assert!(matches!(outcome, Outcome::Converged), "{outcome:?}");
        let lines = since();
        assert!(
            !lines.is_empty() && lines.iter().all(is_read),
            "a read and no change: {lines:#?}"
        );
    }
    use crate::records::{Builder, Source};

    /// The desired set of records `web01..webN` (fields layout), complete.
    fn desired(n: u8) -> Desired {
        let mut kvs = BTreeMap::new();
        for i in 1..=n {
            let rec = sidekick::schema::Record {
                service: "web".into(),
                instance: format!("web{i:02}"),
                unit: format!("monweb@{i:02}.service"),
                host: "core01".into(),
                public_ipv4: None,
                private_ipv4: std::net::Ipv4Addr::new(10, 0, 0, i),
                port: 80,
                container_id: String::new(),
                container_name: String::new(),
            };
            for (k, v) in rec.entries("/services", sidekick::schema::Layout::Fields) {
                kvs.insert(k.into_bytes(), v.into_bytes());
            }
        }
        let source = Source::new("/services/web", sidekick::schema::AddressField::Private, None);
        Builder::default().build(&source, &kvs, true, 1)
    }

    /// A leader's lease can look stale by the clock alone (a keep-alive answer late, no
    /// change on the watch). A pass in that moment stands by; the next renewal must run
    /// it again instead of leaving the change to the resync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_skipped_while_the_lease_looked_stale_runs_at_the_next_renewal() {
        use testbed::clb_sim::{ClbSim, RateLimits, SimConfig};
        let sim = ClbSim::start(SimConfig {
            pending_time: Duration::from_millis(50),
            rate_limits: RateLimits::unlimited(),
            ..SimConfig::default()
        });
        let health = Arc::new(Health::new());
        let clb = Clb::new(
            ClbConfig {
                identity_url: sim.identity_url(),
                username: "u".into(),
                api_key: ApiKey::new("k"),
                region: "ORD".into(),
                load_balancer_id: 1,
                request_timeout: Duration::from_secs(5),
                poll: Duration::from_millis(20),
                active_timeout: Duration::from_secs(10),
                retry_min: Duration::from_millis(10),
                retry_max: Duration::from_millis(100),
                max_retries: 3,
                ca_file: None,
            },
            health.clone(),
        )
        .expect("client");
        let (lead, leadership) = Leadership::manual(Duration::ZERO);
        lead.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        let (tx, rx) = watch::channel(Desired::default());
        let timing = Timing {
            debounce_min: Duration::from_millis(10),
            debounce_max: Duration::from_millis(50),
            resync: Duration::from_secs(600),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            Reconciler::new(
                Provider::Rackspace(Box::new(clb)),
                Policy::default(),
                Limits::default(),
                false,
                health.clone(),
            )
            .run(rx, leadership, timing, cancel.clone()),
        );
        let nodes = || sim.nodes(1).len();
        let wait_for = |want: usize| async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while nodes() != want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            nodes()
        };
        tx.send_replace(desired(1));
        assert_eq!(wait_for(1).await, 1, "the leader adds the first node");

        // A renewal whose deadline then passes by the clock alone, without a watch change.
        lead.send_replace(Some(Instant::now() + Duration::from_millis(100)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send_replace(desired(3));
        let deadline = Instant::now() + Duration::from_secs(5);
        while health.status().state != State::Standby && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(health.status().state, State::Standby, "the pass stood by");
        assert_eq!(sim.nodes(1).len(), 1, "nothing applied while the lease looked stale");

        // The next keep-alive answer renews it: the skipped change is applied now.
        lead.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(wait_for(3).await, 3, "the renewal runs the pass that stood by");
        cancel.cancel();
        task.await.expect("reconciler task");
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_waits_for_quiet_but_not_past_max() {
        let timing = Timing {
            debounce_min: Duration::from_secs(1),
            debounce_max: Duration::from_secs(5),
            resync: Duration::from_secs(60),
        };
        let (tx, mut rx) = watch::channel(Desired::default());
        let cancel = CancellationToken::new();
        // Quiet: returns after MIN.
        let t = tokio::time::Instant::now();
        debounce(&mut rx, timing, &cancel).await;
        let near = |got: Duration, want: Duration| got >= want && got < want + Duration::from_millis(10);
        assert!(near(t.elapsed(), Duration::from_secs(1)), "{:?}", t.elapsed());
        // A change every 500 ms forever: returns at MAX.
        let writer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if tx.send(Desired::default()).is_err() {
                    return;
                }
            }
        });
        let t = tokio::time::Instant::now();
        debounce(&mut rx, timing, &cancel).await;
        assert!(near(t.elapsed(), Duration::from_secs(5)), "{:?}", t.elapsed());
        writer.abort();
    }

    #[test]
    fn the_converge_clock_runs_from_the_first_difference_to_the_first_match() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // (plans seen in order with the second they were seen, the observations they give)
        type Case<'a> = (&'a [(Seen, u64)], &'a [Option<u64>]);
        let cases: [Case<'_>; 6] = [
            (&[(Seen::Matches, 0), (Seen::Matches, 5)], &[None, None]),
            (
                &[(Seen::Differs, 1), (Seen::Differs, 3), (Seen::Matches, 7)],
                &[None, None, Some(6)],
            ),
            (
                &[
                    (Seen::Differs, 1),
                    (Seen::Matches, 2),
                    (Seen::Differs, 10),
                    (Seen::Matches, 13),
                ],
                &[None, Some(1), None, Some(3)],
            ),
            (
                &[(Seen::Differs, 1), (Seen::NotApplying, 2), (Seen::Matches, 9)],
                &[None, None, None],
            ),
            (
                &[
                    (Seen::Differs, 1),
                    (Seen::NotApplying, 2),
                    (Seen::Differs, 4),
                    (Seen::Matches, 5),
                ],
                &[None, None, None, Some(1)],
            ),
            (&[(Seen::NotApplying, 0), (Seen::Matches, 1)], &[None, None]),
        ];
        for (seen, want) in cases {
            let mut clock = ConvergeClock::default();
            let got: Vec<Option<u64>> = seen
                .iter()
                .map(|(s, t)| clock.observe(*s, at(*t)).map(|d| d.as_secs()))
                .collect();
            assert_eq!(got, want, "{seen:?}");
        }
    }

    #[test]
    fn steps_count_their_nodes() {
        let ep = |n: u8| Endpoint::new([10, 0, 0, n].into(), 80);
        let node = |n: u8| plan::NodeRef {
            id: u64::from(n),
            endpoint: ep(n),
        };
        let new = |n: u8| plan::NewNode {
            endpoint: ep(n),
            condition: Condition::Enabled,
        };
        let cases = [
            (Step::Add(vec![new(1), new(2), new(3)]), (StepKind::add, 3)),
            (Step::Enable(node(1)), (StepKind::enable, 1)),
            (Step::Drain(node(1)), (StepKind::drain, 1)),
            (Step::Delete(vec![node(1), node(2)]), (StepKind::delete, 2)),
        ];
        for (step, want) in cases {
            assert_eq!(step_kind(&step), want, "{step}");
        }
    }
}
