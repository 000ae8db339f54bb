//! The desired state: which records should exist right now.
//!
//! [`Reconciler`] keeps what Docker said about each container, the decision
//! [`record_for`] made for it, and its health. After every Docker update and every health
//! transition it recomputes the whole desired map (`(service, instance) -> record`) and
//! publishes it on a `watch` channel: the registry always sees the full, latest desired
//! set (level-triggered), never a stream of deltas it could miss.
//!
//! A container is desired when it is running (not paused, not restarting), its record can
//! be built, Docker does not call it `unhealthy`, and its check passes. One [`Prober`]
//! task runs per container with a `tcp` or `http` check; none for `docker` or `none`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sidekick::schema::{Layout, Record};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::docker::{self, ContainerFacts, Health, Update};
use crate::health::{self, Check, Prober};
use crate::machine::Machine;
use crate::record::{Mode, Planned, RecordError, Rules, record_for};

/// One record to keep in etcd, and its layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The record.
    pub record: Record,
    /// How it is laid out.
    pub layout: Layout,
}

/// The records that should exist, keyed by `(service, instance)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// `false` until Docker has been listed once: until then nothing is known, and the
    /// registry must not delete records as stale.
    pub complete: bool,
    /// The records.
    pub records: BTreeMap<(String, String), Announcement>,
}

/// A probe result, tagged with the container and the generation of its plan so that a
/// late report of a replaced prober is ignored.
#[derive(Debug)]
struct HealthReport {
    id: String,
    generation: u64,
    ok: bool,
    detail: String,
}

/// What is known about one container.
#[derive(Debug)]
struct Entry {
    facts: ContainerFacts,
    plan: Option<Planned>,
    generation: u64,
    /// The last probe result (`None`: not probed yet).
    probe_ok: Option<bool>,
    /// The probing task; dropping it stops it.
    _prober: Option<Prober>,
}

impl Entry {
    fn desired(&self) -> Option<&Planned> {
        let plan = self.plan.as_ref()?;
        if !self.facts.is_up() || self.facts.health == Some(Health::Unhealthy) {
            return None;
        }
        let healthy = match plan.check {
            Check::None => true,
            Check::Docker => self.facts.health == Some(Health::Healthy),
            Check::Tcp | Check::Http { .. } => self.probe_ok == Some(true),
        };
        healthy.then_some(plan)
    }
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
    /// Instance conflicts already logged.
    conflicts: BTreeSet<(String, String)>,
    health_tx: mpsc::UnboundedSender<HealthReport>,
    health_rx: mpsc::UnboundedReceiver<HealthReport>,
    desired_tx: watch::Sender<Desired>,
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
            conflicts: BTreeSet::new(),
            health_tx,
            health_rx,
            desired_tx,
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
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
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
                for facts in all {
                    self.upsert(facts)?;
                }
            }
            Update::Changed { id, facts: None } => {
                self.entries.remove(&id);
                self.errors.remove(&id);
            }
            Update::Changed { facts: Some(facts), .. } => self.upsert(facts)?,
            Update::Down { id, state } => {
                // Withdrawn at once; the inspection that follows replaces these facts.
                if let Some(e) = self.entries.get_mut(&id) {
                    e.facts.state = state;
                }
            }
        }
        Ok(())
    }

    fn upsert(&mut self, facts: ContainerFacts) -> Result<(), RecordError> {
        let plan = if facts.is_up() {
            match record_for(&facts, &self.machine, &self.rules) {
                Ok(p) => {
                    self.errors.remove(&facts.id);
                    // The explanation is for `explain`; a long-running announcer keeps
                    // hundreds of plans and does not need it.
                    p.map(|p| Planned { why: Vec::new(), ..p })
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
                    None
                }
            }
        } else {
            None
        };
        if let Some(e) = self.entries.get_mut(&facts.id)
            && e.plan == plan
        {
            // Same record, same check, same target: keep the health verdict and the prober.
            e.facts = facts;
            return Ok(());
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let prober = plan.as_ref().filter(|p| p.check.probes()).map(|p| {
            tracing::debug!(container = %facts.name, check = %p.check, target = %p.target, "probing");
            let tx = self.health_tx.clone();
            let id = facts.id.clone();
            health::spawn(
                p.check.clone(),
                p.target.clone(),
                self.check_interval,
                self.check_timeout,
                move |ok, detail| {
                    let _ = tx.send(HealthReport {
                        id: id.clone(),
                        generation,
                        ok,
                        detail,
                    });
                },
            )
        });
        self.entries.insert(
            facts.id.clone(),
            Entry {
                facts,
                plan,
                generation,
                probe_ok: None,
                _prober: prober,
            },
        );
        Ok(())
    }

    fn on_health(&mut self, r: HealthReport) {
        let Some(e) = self.entries.get_mut(&r.id) else { return };
        if e.generation != r.generation {
            return;
        }
        let name = &e.facts.name;
        match (e.probe_ok, r.ok) {
            (_, true) => tracing::info!(container = %name, "check passes"),
            (None, false) => tracing::info!(container = %name, reason = %r.detail, "check does not pass yet"),
            (Some(_), false) => tracing::warn!(container = %name, reason = %r.detail, "check fails"),
        }
        e.probe_ok = Some(r.ok);
    }

    /// The desired map from the current entries (pure).
    fn desired(&mut self) -> Desired {
        let mut records: BTreeMap<(String, String), (String, Announcement)> = BTreeMap::new();
        let mut conflicts = BTreeSet::new();
        for e in self.entries.values() {
            let Some(plan) = e.desired() else { continue };
            let key = (plan.record.service.clone(), plan.record.instance.clone());
            let ann = Announcement {
                record: plan.record.clone(),
                layout: plan.layout,
            };
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
        for c in conflicts.difference(&self.conflicts) {
            tracing::warn!(service = %c.0, instance = %c.1, "several containers claim this instance; announcing the first by name");
        }
        self.conflicts = conflicts;
        Desired {
            complete: self.complete,
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
