//! The desired state: which records should exist right now.
//!
//! [`Reconciler`] keeps what Docker said about each container, the decision
//! [`record_for`] made for it, and its health. After every Docker update and every health
//! transition it recomputes the whole desired map (`(service, instance) -> record`) and
//! publishes it on a `watch` channel: the registry always sees the full, latest desired
//! set (level-triggered), never a stream of deltas it could miss.
//!
//! A container may become several records (one per announced port); they are desired
//! and withdrawn together with it, each gated by its own check.
//!
//! A container is desired when it is running (not paused, not restarting), not shutting
//! down, its record can be built, Docker does not call it `unhealthy`, and its check passes.
//! Shutting down: Docker delivered its stop signal ([`docker::stops`]); the mark holds for
//! that run only, so an inspection or a resync that still finds the container running
//! does not bring the record back, and its `die` or a new start ends it. One [`Prober`]
//! task runs per container with a `tcp` or `http` check; none for `docker` or `none`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sidekick::schema::{Layout, Meta, Record};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::docker::{self, ContainerFacts, Health, Update};
use crate::health::{self, Check, Prober};
use crate::machine::Machine;
use crate::ops::Ops;
use crate::record::{Decision, Mode, Note, Planned, RecordError, Rules, record_for};

/// One record to keep in etcd, and its layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The record.
    pub record: Record,
    /// How it is laid out.
    pub layout: Layout,
    /// registrator's tags and attributes (the `json` layout carries them).
    pub meta: Meta,
}

/// The records that should exist, keyed by `(service, instance)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// `false` until Docker has been listed once: until then nothing is known, and the
    /// registry must not delete records as stale.
    pub complete: bool,
    /// `complete`, and every check has given its first verdict: the records it can write
    /// are all in `records` (for readiness; a record waiting for its first probe is
    /// not known to be writable yet).
    pub settled: bool,
    /// The records. Shared: one allocation per record, held by the reconciler's entry,
    /// this map and the registry's memory of what it wrote (three copies otherwise,
    /// about 0.8 MB of the 500-record footprint).
    pub records: BTreeMap<(String, String), Arc<Announcement>>,
}

/// A probe result, tagged with the container and the generation of its plan so that a
/// late report of a replaced prober is ignored.
#[derive(Debug)]
struct HealthReport {
    id: String,
    generation: u64,
    /// Which of the container's records.
    index: usize,
    ok: bool,
    detail: String,
}

/// What is known about one container.
#[derive(Debug)]
struct Entry {
    /// Shared with Docker's resync cache.
    facts: Arc<ContainerFacts>,
    /// Its records (none: not announced).
    plans: Vec<Kept>,
    generation: u64,
    /// The last probe result of each record (`None`: not probed yet).
    probe_ok: Vec<Option<bool>>,
    /// The probing tasks, one per probed record; dropping them stops them.
    _probers: Vec<Prober>,
}

impl Entry {
    fn desired(&self) -> impl Iterator<Item = &Kept> {
        let up = self.facts.is_up() && self.facts.health != Some(Health::Unhealthy);
        self.plans.iter().enumerate().filter_map(move |(i, plan)| {
            let healthy = match plan.check {
                Check::None => true,
                Check::Docker => self.facts.health == Some(Health::Healthy),
                Check::Tcp | Check::Http { .. } => self.probe_ok.get(i).copied().flatten() == Some(true),
            };
            (up && healthy).then_some(plan)
        })
    }
}

/// One record a long-running announcer keeps for a container: what [`Planned`] says
/// without its `why` (the explanation is for `explain`), the announcement shared with the
/// desired map and the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept {
    ann: Arc<Announcement>,
    check: Check,
    target: health::Target,
}

/// The plans a long-running announcer keeps for one container, in a vector of exactly
/// their number. `record_for` builds them with `push`, which leaves room for four: 1 KiB
/// per container kept for its life otherwise, 0.5 MiB of the 500-record footprint
/// (measured with massif, BENCHMARKS.md).
fn kept_plans(planned: Vec<Planned>) -> Vec<Kept> {
    let mut kept: Vec<Kept> = planned
        .into_iter()
        .map(|p| Kept {
            ann: Arc::new(Announcement {
                record: p.record,
                layout: p.layout,
                meta: p.meta,
            }),
            check: p.check,
            target: p.target,
        })
        .collect();
    kept.shrink_to_fit();
    kept
}

/// The reconcile loop's state.
#[derive(Debug)]
pub struct Reconciler {
    machine: Machine,
    rules: Rules,
    check_interval: Duration,
    check_timeout: Duration,
    entries: BTreeMap<String, Entry>,
    next_generation: u64,
    complete: bool,
    /// Last error logged per container, so a bad container is logged once, not per event.
    errors: BTreeMap<String, String>,
    /// Last notes (ports left out) logged per container, likewise.
    notes: BTreeMap<String, Vec<Note>>,
    /// Instance conflicts already logged.
    conflicts: BTreeSet<(String, String)>,
    /// Containers shutting down (a stop signal was delivered), with the `started_at` of
    /// the run it was delivered to.
    stopping: BTreeMap<String, String>,
    health_tx: mpsc::UnboundedSender<HealthReport>,
    health_rx: mpsc::UnboundedReceiver<HealthReport>,
    desired_tx: watch::Sender<Desired>,
    /// Probe counters and the loop's heartbeat.
    ops: Ops,
}

impl Reconciler {
    /// A reconciler publishing on `desired_tx`.
    #[must_use]
    pub fn new(
        machine: Machine,
        rules: Rules,
        check_interval: Duration,
        check_timeout: Duration,
        desired_tx: watch::Sender<Desired>,
        ops: Ops,
    ) -> Reconciler {
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        Reconciler {
            machine,
            rules,
            check_interval,
            check_timeout,
            entries: BTreeMap::new(),
            next_generation: 0,
            complete: false,
            errors: BTreeMap::new(),
            notes: BTreeMap::new(),
            conflicts: BTreeSet::new(),
            stopping: BTreeMap::new(),
            health_tx,
            health_rx,
            desired_tx,
            ops,
        }
    }

    /// Runs until `shutdown`, or until Docker updates stop coming.
    ///
    /// # Errors
    /// In `container` mode, the [`RecordError`] of the followed container: its record
    /// cannot be built, which is a configuration error the announcer refuses.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<Update>,
        shutdown: CancellationToken,
    ) -> Result<(), RecordError> {
        let beat = self.ops.heartbeat("reconcile");
        let mut alive = beat.interval();
        loop {
            beat.beat();
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = alive.tick() => continue,
                update = updates.recv() => match update {
                    Some(u) => self.apply(u)?,
                    None => return Ok(()),
                },
                Some(report) = self.health_rx.recv() => self.on_health(report),
            }
            self.publish();
        }
    }

    fn apply(&mut self, update: Update) -> Result<(), RecordError> {
        match update {
            Update::Snapshot(all) => {
                self.complete = true;
                let ids: BTreeSet<String> = all.iter().map(|f| f.id.clone()).collect();
                self.entries.retain(|id, _| ids.contains(id));
                self.errors.retain(|id, _| ids.contains(id));
                self.notes.retain(|id, _| ids.contains(id));
                self.stopping.retain(|id, _| ids.contains(id));
                for facts in all {
                    self.upsert(facts)?;
                }
            }
            Update::Changed { id, facts: None } => {
                self.entries.remove(&id);
                self.errors.remove(&id);
                self.notes.remove(&id);
                self.stopping.remove(&id);
            }
            Update::Changed { facts: Some(facts), .. } => self.upsert(facts)?,
            Update::Down { id, state } => {
                // Withdrawn at once; the inspection that follows replaces these facts.
                self.stopping.remove(&id);
                if let Some(e) = self.entries.get_mut(&id) {
                    Arc::make_mut(&mut e.facts).state = state;
                }
            }
            Update::Signalled { id, signal } => self.on_signal(&id, signal),
        }
        Ok(())
    }

    /// A stop signal withdraws the container's record for the rest of this run.
    fn on_signal(&mut self, id: &str, signal: i32) {
        let Some(e) = self.entries.get(id) else { return };
        if !e.facts.is_up() || !docker::stops(signal, e.facts.stop_signal) {
            return;
        }
        if !e.plans.is_empty() {
            tracing::info!(container = %e.facts.name, signal, "stop signal delivered: withdrawing while it shuts down");
        }
        self.stopping.insert(id.to_owned(), e.facts.started_at.clone());
    }

    fn upsert(&mut self, facts: Arc<ContainerFacts>) -> Result<(), RecordError> {
        // The shutdown of a run ends when that run does: stopped, or started anew (a
        // `die` missed while Docker was unreachable).
        if self
            .stopping
            .get(&facts.id)
            .is_some_and(|run| !facts.is_up() || *run != facts.started_at)
        {
            self.stopping.remove(&facts.id);
        }
        let plans = if facts.is_up() {
            self.decide(&facts)?
        } else {
            Vec::new()
        };
        if let Some(e) = self.entries.get_mut(&facts.id)
            && e.plans == plans
        {
            // Same records, same checks, same targets: keep the health verdicts and the probers.
            e.facts = facts;
            return Ok(());
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        // Kept for the container's life: sized exactly, like the plans (`kept_plans`).
        let mut probers = Vec::with_capacity(plans.iter().filter(|p| p.check.probes()).count());
        for (index, p) in plans.iter().enumerate().filter(|(_, p)| p.check.probes()) {
            tracing::debug!(container = %facts.name, check = %p.check, target = %p.target, "probing");
            let tx = self.health_tx.clone();
            let id = facts.id.clone();
            probers.push(health::spawn(
                p.check.clone(),
                p.target.clone(),
                self.check_interval,
                self.check_timeout,
                self.ops.metrics().probe_counters(&p.check).unwrap_or_default(),
                move |ok, detail| {
                    let _ = tx.send(HealthReport {
                        id: id.clone(),
                        generation,
                        index,
                        ok,
                        detail,
                    });
                },
            ));
        }
        let probe_ok = vec![None; plans.len()];
        self.entries.insert(
            facts.id.clone(),
            Entry {
                facts,
                plans,
                generation,
                probe_ok,
                _probers: probers,
            },
        );
        Ok(())
    }

    /// The records of a running container; an error or a note is logged once.
    fn decide(&mut self, facts: &ContainerFacts) -> Result<Vec<Kept>, RecordError> {
        match record_for(facts, &self.machine, &self.rules) {
            Ok(Decision::Skip(_)) => {
                self.errors.remove(&facts.id);
                self.notes.remove(&facts.id);
                Ok(Vec::new())
            }
            Ok(Decision::Announce { planned, notes }) => {
                self.errors.remove(&facts.id);
                if self.notes.get(&facts.id) != Some(&notes) {
                    for note in &notes {
                        tracing::warn!(container = %facts.name, "{note}");
                    }
                    self.notes.insert(facts.id.clone(), notes);
                }
                // The explanation is for `explain`; a long-running announcer keeps
                // hundreds of plans and does not need it.
                Ok(kept_plans(planned))
            }
            Err(e) => {
                if matches!(self.rules.mode, Mode::Container(_)) {
                    return Err(e);
                }
                let msg = e.to_string();
                if self.errors.get(&facts.id) != Some(&msg) {
                    tracing::warn!(container = %facts.name, error = %msg, "not announced");
                    self.errors.insert(facts.id.clone(), msg);
                }
                Ok(Vec::new())
            }
        }
    }

    fn on_health(&mut self, r: HealthReport) {
        let Some(e) = self.entries.get_mut(&r.id) else { return };
        if e.generation != r.generation {
            return;
        }
        let name = &e.facts.name;
        let Some(slot) = e.probe_ok.get_mut(r.index) else {
            return;
        };
        let port = e.plans.get(r.index).map(|p| p.ann.record.port).unwrap_or_default();
        if r.ok && !self.stopping.contains_key(&r.id) {
            self.ops.check_passed(&r.id);
        }
        match (*slot, r.ok) {
            (_, true) => tracing::info!(container = %name, port, "check passes"),
            (None, false) => tracing::info!(container = %name, port, reason = %r.detail, "check does not pass yet"),
            (Some(_), false) => tracing::warn!(container = %name, port, reason = %r.detail, "check fails"),
        }
        *slot = Some(r.ok);
    }

    /// The desired map from the current entries (pure).
    fn desired(&mut self) -> Desired {
        let mut records: BTreeMap<(String, String), (String, Arc<Announcement>)> = BTreeMap::new();
        let mut conflicts = BTreeSet::new();
        for (id, e) in &self.entries {
            if self.stopping.contains_key(id) {
                continue;
            }
            for plan in e.desired() {
                let key = (plan.ann.record.service.clone(), plan.ann.record.instance.clone());
                let ann = Arc::clone(&plan.ann);
                match records.get(&key) {
                    // Two containers claim one instance: the first by name wins, deterministically.
                    Some((other, _)) if *other <= e.facts.name => {
                        conflicts.insert(key);
                    }
                    Some(_) => {
                        conflicts.insert(key.clone());
                        records.insert(key, (e.facts.name.clone(), ann));
                    }
                    None => {
                        records.insert(key, (e.facts.name.clone(), ann));
                    }
                }
            }
        }
        for c in conflicts.difference(&self.conflicts) {
            tracing::warn!(service = %c.0, instance = %c.1, "several containers claim this instance; announcing the first by name");
        }
        self.conflicts = conflicts;
        let probed = self.entries.values().all(|e| {
            e.plans
                .iter()
                .zip(&e.probe_ok)
                .all(|(p, ok)| !p.check.probes() || ok.is_some())
        });
        Desired {
            complete: self.complete,
            settled: self.complete && probed,
            records: records.into_iter().map(|(k, (_, a))| (k, a)).collect(),
        }
    }

    fn publish(&mut self) {
        let desired = self.desired();
        self.desired_tx.send_if_modified(|current| {
            if *current == desired {
                return false;
            }
            for (k, a) in &desired.records {
                if current.records.get(k) != Some(a) {
                    tracing::debug!(service = %k.0, instance = %k.1, container = %docker::short(&a.record.container_id), "desired");
                }
            }
            *current = desired;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::docker::{PublishedPort, State};
    use crate::record::Mode;

    fn facts(state: State, started_at: &str, stop_signal: i32) -> ContainerFacts {
        ContainerFacts {
            id: "c1".into(),
            name: "web-01".into(),
            state,
            health: None,
            labels: vec![("announce.service".into(), "web".into())],
            env: Vec::new(),
            ports: vec![PublishedPort {
                container_port: 80,
                proto: "tcp".into(),
                host_ip: None,
                host_port: 18001,
            }],
            networks: Vec::new(),
            exposed: Vec::new(),
            network_mode: String::new(),
            stop_signal,
            started_at: started_at.into(),
        }
    }

    fn reconciler() -> (Reconciler, watch::Receiver<Desired>) {
        let machine = Machine {
            hostname: "core01".into(),
            public_ipv4: Some(Ipv4Addr::new(1, 2, 3, 4)),
            private_ipv4: Ipv4Addr::new(10, 0, 0, 2),
            public_source: "test".into(),
            private_source: "test".into(),
        };
        let rules = Rules {
            mode: Mode::Host(crate::record::HostRule {
                layout: Layout::Fields,
                internal: None,
            }),
            check: Check::None,
        };
        let (tx, rx) = watch::channel(Desired::default());
        let ops = Ops::new(sidekick::notify::Notifier::with_watchdog(None));
        let r = Reconciler::new(machine, rules, Duration::from_secs(1), Duration::from_secs(1), tx, ops);
        (r, rx)
    }

    /// Feeds `steps` in order; after each, whether the container's record is desired.
    fn run(steps: Vec<(Update, bool)>) {
        let (mut r, rx) = reconciler();
        for (i, (update, want)) in steps.into_iter().enumerate() {
            let what = format!("{update:?}");
            r.apply(update).unwrap();
            r.publish();
            let announced = !rx.borrow().records.is_empty();
            assert_eq!(announced, want, "step {i}: {what}");
        }
    }

    /// A long-running announcer keeps one container's plans in a vector of exactly their
    /// number (1 KiB per container otherwise: BENCHMARKS.md), and each announcement once:
    /// the desired map holds the entry's own.
    #[test]
    fn kept_plans_are_exactly_sized_and_shared_with_the_desired_map() {
        let (mut r, rx) = reconciler();
        r.apply(Update::Changed {
            id: "c1".into(),
            facts: Some(Arc::new(facts(State::Running, "t1", 15))),
        })
        .unwrap();
        r.publish();
        let e = r.entries.get("c1").expect("the container is known");
        assert_eq!(e.plans.len(), 1, "{:?}", e.plans);
        assert_eq!(e.plans.capacity(), e.plans.len(), "plans kept with spare room");
        assert_eq!(e._probers.capacity(), e._probers.len(), "probers kept with spare room");
        let desired = rx.borrow();
        let shared = desired
            .records
            .values()
            .next()
            .expect("the container is desired once its check passes or has none");
        assert!(
            Arc::ptr_eq(shared, &e.plans[0].ann),
            "the desired map holds its own copy of the announcement"
        );
    }

    fn signal(signal: i32) -> Update {
        Update::Signalled {
            id: "c1".into(),
            signal,
        }
    }

    fn seen(state: State, run: &str, stop_signal: i32) -> Update {
        Update::Changed {
            id: "c1".into(),
            facts: Some(Arc::new(facts(state, run, stop_signal))),
        }
    }

    #[test]
    fn a_stop_signal_withdraws_for_the_rest_of_the_run_and_a_survivable_one_changes_nothing() {
        let term = libc::SIGTERM;
        let running = |run: &str| seen(State::Running, run, term);
        let resync = |run: &str| Update::Snapshot(vec![Arc::new(facts(State::Running, run, term))]);
        run(vec![
            (resync("run1"), true),
            (signal(libc::SIGHUP), true),
            (signal(libc::SIGUSR1), true),
            (running("run1"), true),
            // docker stop: SIGTERM, the container traps it and keeps running a while.
            (signal(libc::SIGTERM), false),
            (running("run1"), false),
            (resync("run1"), false),
            (signal(libc::SIGHUP), false),
            (
                Update::Down {
                    id: "c1".into(),
                    state: State::Exited,
                },
                false,
            ),
            (seen(State::Exited, "run1", term), false),
            // Started again: announced again.
            (running("run2"), true),
            (signal(libc::SIGQUIT), false),
            // Its die was missed (Docker unreachable) and it runs again: a new run.
            (resync("run3"), true),
            (signal(libc::SIGINT), false),
            (
                Update::Changed {
                    id: "c1".into(),
                    facts: None,
                },
                false,
            ),
            // A replayed kill of a container that is not running marks nothing.
            (seen(State::Exited, "run3", term), false),
            (signal(libc::SIGTERM), false),
            (running("run4"), true),
        ]);
    }

    #[test]
    fn the_containers_own_stop_signal_is_the_one_that_counts() {
        let winch = libc::SIGWINCH;
        run(vec![
            (seen(State::Running, "run1", winch), true),
            (signal(libc::SIGTERM), true),
            (signal(libc::SIGWINCH), false),
            (seen(State::Running, "run1", winch), false),
        ]);
    }
}
