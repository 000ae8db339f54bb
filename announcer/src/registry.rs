//! The only code that talks to etcd.
//!
//! [`Registry`] owns one lease per announcer process (TTL `--ttl`) and keeps it alive with
//! the keep-alive stream; refreshing writes nothing, so an idle announcer creates no etcd
//! revisions. It compares the desired records with what it wrote and writes only the
//! differences: each record in ONE transaction (the five keys of a `fields` record share
//! one revision), each withdrawal one transaction deleting the record's keys (the range
//! `<prefix>/<service>/<instance>/` for `fields`; the trailing `/` keeps `web1` from
//! touching `web10`), guarded by a compare on our lease so a record someone else rewrote
//! is never deleted.
//!
//! At start and on every resync it reads what etcd holds and (a) rewrites our records that
//! are missing or different, (b) deletes stale records that no running container of ours
//! backs and that are provably ours ([`crate::owner::stale`]; in `container` mode only the
//! one instance it manages), each guarded by a compare on the mod revisions it read.
//!
//! One owner per record ([`crate::owner`]): a record is written only when its keys are
//! absent or on our lease (the transaction compares exactly that), or after a read shows
//! they are our own earlier record; otherwise the conflict is logged once, reported
//! ([`Report`]), and the keys are watched: when the other owner's record goes away the
//! record is written at once.
//!
//! It talks to one etcd member at a time, own member first, through a client bound to
//! that member alone: etcd-client's multi-endpoint client balances every request over all
//! members, and a member cut off by dropped packets still looks connected, so a balanced
//! request (or a reopened keep-alive stream) could land on it again and again. A request
//! that times out or finds the member unavailable sends the next ones to the next member.
//! The lease is kept alive by a task of its own ([`crate::lease`]), on its own connection,
//! moving to the next member as soon as a stream stays silent for one keep-alive period
//! plus a margin; a record write hanging on a bad member never delays a keep-alive.
//!
//! When etcd is away it retries with backoff; when the lease expired meanwhile (etcd
//! answers `NotFound`, or a keep-alive answers TTL 0) it grants a new one and rewrites
//! every record. On shutdown it revokes the lease: every record of this process
//! disappears at once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::BackoffBuilder;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;
use sidekick::bounded::read_prefix;
use sidekick::etcd::EtcdConfig;
use sidekick::schema::{self, Layout, field};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::lease::{self, Members};
use crate::metrics::{Op, OpResult};
use crate::ops::Ops;
use crate::owner::{self, Conflict, Holder, Me, StoredKey};
use crate::reconcile::{Announcement, Desired};

/// Who owns which records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// This host (and, in `container` mode, its unit): whose stale records it may delete.
    pub me: Me,
    /// `container` mode: the one `(service, instance)` this process manages.
    pub only: Option<(String, String)>,
}

/// What the registry reports (for a health output): the records it does not hold
/// because another announcer does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The conflicts, by record key.
    pub conflicts: Vec<Conflict>,
}

/// A watch on a contested record's keys; dropping it stops the watch.
#[derive(Debug)]
struct Watching(tokio::task::JoinHandle<()>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The outcome of one record's write.
#[derive(Debug)]
enum Outcome {
    /// Written (or taken over).
    Written,
    /// Held by another announcer; `revision`: of the read that showed it.
    Held { conflict: Conflict, revision: i64 },
}

/// How the registry behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Normalised key prefix (`/services`).
    pub prefix: String,
    /// Requested lease TTL.
    pub ttl: Duration,
    /// Timeout of each etcd request.
    pub timeout: Duration,
    /// Period of the full comparison with etcd.
    pub resync: Duration,
    /// Ownership rules for stale-record cleanup.
    pub owner: Owner,
}

/// What we wrote for one record: the desired map's own announcement (shared, not copied).
#[derive(Debug)]
struct Written {
    ann: Arc<Announcement>,
}

/// The keys of one record form found in etcd.
#[derive(Debug, Default)]
struct Stored {
    /// `<prefix>/<service>/<instance>/<field>` keys.
    fields: Vec<StoredKey>,
    /// The `<prefix>/<service>/<instance>` key (`value` or `json`).
    whole: Option<StoredKey>,
}

/// The etcd side of the announcer.
pub struct Registry {
    /// A client bound to member `member` alone (never balanced: see [`crate::lease`]).
    client: Client,
    /// Every etcd member, own first.
    members: Members,
    /// The member the requests go to; the next one after a request found it away.
    member: usize,
    settings: Settings,
    lease: Option<i64>,
    granted_ttl: Duration,
    /// The task keeping the lease alive, and what it reports.
    keeper: Option<(lease::Task, mpsc::UnboundedReceiver<lease::Event>)>,
    written: BTreeMap<(String, String), Written>,
    need_sync: bool,
    need_full: bool,
    /// Records held by another announcer, and the watch on each.
    contested: BTreeMap<Key, (Conflict, Watching)>,
    /// Keys under the prefix whose values are too long to read (`sidekick::bounded`),
    /// logged once each while they stay so.
    oversized: BTreeSet<Vec<u8>>,
    /// A watched record changed: look again.
    contest_tx: mpsc::UnboundedSender<Key>,
    contest_rx: mpsc::UnboundedReceiver<Key>,
    report: watch::Sender<Report>,
    /// Health, metrics and systemd status.
    ops: Ops,
    /// A lease was granted before (the next grant is a regrant).
    granted_before: bool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("lease", &self.lease)
            .field("written", &self.written.len())
            .finish_non_exhaustive()
    }
}

/// A record's `(service, instance)`.
type Key = (String, String);

/// Record transactions in flight at once.
const PARALLEL_WRITES: usize = 16;

/// One record's transaction for [`Registry::pipeline`].
enum Job {
    /// Write `ann` (`prev`: what this registry last wrote of it, if it is there).
    Write {
        key: Key,
        ann: Arc<Announcement>,
        prev: Option<Arc<Announcement>>,
    },
    /// Delete the record we wrote as `ann`.
    Delete { key: Key, ann: Arc<Announcement> },
}

impl Job {
    fn key(&self) -> &Key {
        match self {
            Job::Write { key, .. } | Job::Delete { key, .. } => key,
        }
    }
}

/// What a [`Job`] did.
enum Done {
    /// `outcome`: none when the write failed.
    Write {
        key: Key,
        ann: Arc<Announcement>,
        outcome: Option<Outcome>,
        acked: SystemTime,
    },
    Delete {
        key: Key,
        deleted: bool,
    },
}

/// Whether an etcd error says the lease does not exist (it expired or was revoked): etcd
/// answers a request naming an unknown lease with gRPC status `NotFound`.
fn lease_gone(e: &Error) -> bool {
    matches!(e, Error::Etcd { source: etcd_client::Error::GRpcStatus(s), .. } if s.code() == tonic::Code::NotFound)
}

/// Whether an error says etcd did not answer or refused (not a contention of ours).
fn etcd_failure(e: &Error) -> bool {
    matches!(e, Error::Etcd { .. } | Error::EtcdTimeout { .. })
}

/// Whether an error says the member did not serve the request (no answer in time, no
/// connection, no leader on its side): the next request goes to the next member.
fn member_away(e: &Error) -> bool {
    match e {
        Error::EtcdTimeout { .. } => true,
        Error::Etcd { source, .. } => match source {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            etcd_client::Error::GRpcStatus(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
            _ => false,
        },
        _ => false,
    }
}

impl Registry {
    /// Connects (checking that etcd answers) and grants the lease.
    ///
    /// # Errors
    /// When etcd is unreachable or refuses the lease: the announcer does not start.
    pub async fn connect(config: &EtcdConfig, settings: Settings, ops: Ops) -> Result<Registry, Error> {
        // The balanced client only checks that the cluster answers (the start-up error names
        // every endpoint); the registry then talks to one member at a time.
        drop(config.connect().await?);
        let members = Members::new(config.endpoints.clone(), config.options.clone(), config.timeout);
        let client = members.client(0).await?;
        let (contest_tx, contest_rx) = mpsc::unbounded_channel();
        let mut r = Registry {
            client,
            members,
            member: 0,
            settings,
            lease: None,
            granted_ttl: Duration::ZERO,
            keeper: None,
            written: BTreeMap::new(),
            need_sync: true,
            need_full: true,
            contested: BTreeMap::new(),
            oversized: BTreeSet::new(),
            contest_tx,
            contest_rx,
            report: watch::Sender::new(Report::default()),
            ops,
            granted_before: false,
        };
        // Own member first; one that does not answer gives its turn to the next.
        let mut tries = r.members.len();
        loop {
            match r.ensure_lease().await {
                Ok(_) => return Ok(r),
                Err(e) if member_away(&e) && tries > 1 => {
                    tries -= 1;
                    r.next_member(&e).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The conflicts, as they change (a typed state for a health output).
    #[must_use]
    pub fn report(&self) -> watch::Receiver<Report> {
        self.report.subscribe()
    }

    async fn timed<T, F>(&self, op: &str, fut: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.settings.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Etcd {
                op: op.to_owned(),
                source,
            }),
            Err(_) => Err(Error::EtcdTimeout {
                op: op.to_owned(),
                timeout: self.settings.timeout,
            }),
        }
    }

    async fn ensure_lease(&mut self) -> Result<i64, Error> {
        if let Some(id) = self.lease {
            return Ok(id);
        }
        let ttl = i64::try_from(self.settings.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut client = self.client.clone();
        let resp = self.timed("grant lease", client.lease_grant(ttl, None)).await?;
        let id = resp.id();
        self.granted_ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(1).max(1));
        tracing::info!(lease = format!("{id:x}"), ttl = ?self.granted_ttl, "lease granted");
        self.ops.lease_granted(id, self.granted_before);
        self.granted_before = true;
        self.lease = Some(id);
        self.written.clear();
        let period = self.keep_alive_period();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(lease::keep(self.members.clone(), id, period, self.member, tx));
        self.keeper = Some((lease::Task(task), rx));
        Ok(id)
    }

    /// Keep-alives go out three times per TTL: two may go unanswered before it runs out.
    fn keep_alive_period(&self) -> Duration {
        (self.granted_ttl / 3).max(Duration::from_millis(200))
    }

    /// The current member did not serve a request: send the next ones to the next member.
    async fn next_member(&mut self, e: &Error) {
        if self.members.len() < 2 {
            return;
        }
        let next = lease::next_member(self.member, self.members.len());
        tracing::info!(member = self.members.url(self.member), next = self.members.url(next), error = %e, "etcd member did not serve a request: moving to the next one");
        self.member = next;
        match self.members.client(next).await {
            Ok(c) => self.client = c,
            // Keep the old client; the next failure moves on again.
            Err(e) => tracing::debug!(error = %e, "cannot connect to the next etcd member yet"),
        }
    }

    /// The lease is gone: forget what we wrote (it went with the lease) and start over.
    fn lease_lost(&mut self) {
        if let Some(id) = self.lease.take() {
            tracing::warn!(
                lease = format!("{id:x}"),
                "lease expired: granting a new one and rewriting every record"
            );
            self.ops.lease_lost();
        }
        self.keeper = None;
        self.written.clear();
        self.need_sync = true;
        self.need_full = true;
    }

    /// Runs until `shutdown` is cancelled or the desired channel closes, then revokes the lease.
    pub async fn run(mut self, mut desired: watch::Receiver<Desired>, shutdown: CancellationToken) {
        let mut resync = tokio::time::interval_at(Instant::now() + self.settings.resync, self.settings.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = sidekick::retry::etcd_outage().build();
        let mut retry_at: Option<Instant> = None;
        let mut failing = false;
        // The loop comes round at least every tick: a wait for a backoff is alive, a sync
        // stuck past every etcd timeout is not.
        let beat = self.ops.heartbeat("etcd registry");
        let mut alive = beat.interval();
        loop {
            beat.beat();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.need_sync = true;
                }
                event = next_event(&mut self.keeper) => {
                    match event {
                        // Back after an outage: compare with etcd in case anything changed,
                        // and retry a pending sync at once.
                        Some(lease::Event::Back) => {
                            self.ops.etcd_up();
                            self.need_full = true;
                        }
                        Some(lease::Event::Failing(why)) => {
                            self.ops.etcd_down(&format!("lease keep-alive {why}"));
                            continue;
                        }
                        // The task ends only after saying the lease is gone.
                        Some(lease::Event::Gone) | None => self.lease_lost(),
                    }
                    retry_at = None;
                }
                _ = resync.tick() => self.need_full = true,
                Some(k) = self.contest_rx.recv() => {
                    tracing::debug!(service = %k.0, instance = %k.1, "a contested record changed");
                    self.need_sync = true;
                }
                () = sleep_until(retry_at) => retry_at = None,
                _ = alive.tick() => continue,
            }
            if !(self.need_sync || self.need_full) || retry_at.is_some() {
                continue;
            }
            match self.sync(&mut desired).await {
                Ok(settled) => {
                    if failing {
                        tracing::info!(records = self.written.len(), "etcd is back: records in place");
                    }
                    failing = false;
                    backoff = sidekick::retry::etcd_outage().build();
                    self.report_sync(settled);
                }
                Err(e) => {
                    if etcd_failure(&e) {
                        self.ops.etcd_down(&e.to_string());
                    }
                    if member_away(&e) {
                        self.next_member(&e).await;
                    }
                    if failing {
                        tracing::debug!(error = %e, "etcd still failing");
                    } else {
                        tracing::warn!(error = %e, "etcd write failed; retrying with backoff");
                    }
                    failing = true;
                    let delay = backoff.next().unwrap_or(Duration::from_millis(500));
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
        self.revoke().await;
    }

    /// Tells [`Ops`] what a successful sync left in etcd; `settled`: of a settled desired
    /// set (the first one makes the announcer ready).
    fn report_sync(&self, settled: bool) {
        let mut by_service: BTreeMap<String, i64> = BTreeMap::new();
        for (service, _) in self.written.keys() {
            *by_service.entry(service.clone()).or_default() += 1;
        }
        let held_back = self
            .contested
            .iter()
            .map(|((s, i), (c, _))| format!("{s}/{i}: {c}"))
            .collect();
        self.ops.synced(&by_service, held_back, settled);
    }

    async fn revoke(&mut self) {
        let Some(id) = self.lease.take() else { return };
        self.keeper = None;
        let mut client = self.client.clone();
        match self.timed("revoke lease", client.lease_revoke(id)).await {
            Ok(_) => tracing::info!(
                lease = format!("{id:x}"),
                records = self.written.len(),
                "lease revoked: records withdrawn"
            ),
            Err(e) => tracing::warn!(error = %e, "could not revoke the lease; records vanish when its TTL runs out"),
        }
    }

    /// Makes etcd match the desired set (the latest value of `desired`, followed while
    /// the sync runs): one attempt; a vanished lease is regranted once at once. Gives
    /// whether the last desired set it worked on was settled.
    async fn sync(&mut self, desired: &mut watch::Receiver<Desired>) -> Result<bool, Error> {
        match self.sync_once(desired).await {
            Err(e) if lease_gone(&e) => {
                self.lease_lost();
                self.sync_once(desired).await
            }
            other => other,
        }
    }

    async fn sync_once(&mut self, desired: &mut watch::Receiver<Desired>) -> Result<bool, Error> {
        self.ensure_lease().await?;
        let mut snapshot = desired.borrow_and_update().clone();
        if self.need_full && snapshot.complete {
            self.full_check(&snapshot).await?;
            self.need_full = false;
        }
        let lease = self.ensure_lease().await?;
        let (done, failed) = self.pipeline(desired, &mut snapshot, lease).await;
        for d in done {
            match d {
                Done::Write {
                    key,
                    ann,
                    outcome,
                    acked,
                } => {
                    let (op_result, seen) = match &outcome {
                        Some(Outcome::Written) => (OpResult::ok, true),
                        Some(Outcome::Held { .. }) => (OpResult::conflict, true),
                        None => (OpResult::error, false),
                    };
                    self.ops.metrics().op(Op::announce, op_result);
                    if seen {
                        self.ops
                            .visible(&ann.record.container_id, &ann.record.container_name, acked);
                    }
                    match outcome {
                        Some(Outcome::Written) => {
                            self.contested.remove(&key);
                            self.written.insert(key, Written { ann });
                        }
                        Some(Outcome::Held { conflict, revision }) => self.contest(key, conflict, revision),
                        // Failed (the error is `failed`, below): the next sync writes it again.
                        None => {}
                    }
                }
                Done::Delete { key, deleted } => {
                    // Kept in `written` when it failed: the next sync deletes it again.
                    if deleted {
                        self.written.remove(&key);
                    }
                }
            }
        }
        // A record no longer wanted is no longer contested.
        self.contested.retain(|k, _| snapshot.records.contains_key(k));
        self.report.send_if_modified(|r| {
            let now: Vec<Conflict> = self.contested.values().map(|(c, _)| c.clone()).collect();
            let changed = r.conflicts != now;
            r.conflicts = now;
            changed
        });
        if let Some(e) = failed {
            return Err(e);
        }
        self.need_sync = false;
        Ok(snapshot.settled)
    }

    /// Writes and deletes what `snapshot` asks for, at most [`PARALLEL_WRITES`] in flight,
    /// and takes each newer desired set as it comes (into `snapshot`) instead of after the
    /// last transaction of the previous one. Records are independent, so their
    /// transactions go out together (etcd commits concurrent proposals in one log flush),
    /// and a record that became ready, or a container that stopped, while others were in
    /// flight does not wait for them: waiting for the batch made the announcer's p99 twice
    /// a bare transaction's, for announces and for withdraws alike (issue 18). One
    /// transaction per record at a time; no new one after a failure. What each did is
    /// given back in the order they ended, for the caller to record.
    async fn pipeline(
        &self,
        desired: &mut watch::Receiver<Desired>,
        snapshot: &mut Desired,
        lease: i64,
    ) -> (Vec<Done>, Option<Error>) {
        // What this sync did so far to each record: written (`Some`) or deleted (`None`).
        let mut now: BTreeMap<Key, Option<Arc<Announcement>>> = BTreeMap::new();
        // Held by another announcer with this announcement: not tried again in this sync.
        let mut held: BTreeMap<Key, Arc<Announcement>> = BTreeMap::new();
        let mut in_flight: BTreeSet<Key> = BTreeSet::new();
        let mut running = futures::stream::FuturesUnordered::new();
        let mut done = Vec::new();
        let mut failed: Option<Error> = None;
        let mut follow = true;
        loop {
            if failed.is_none() {
                let room = PARALLEL_WRITES.saturating_sub(running.len());
                for job in next_jobs(snapshot, &self.written, &now, &held, &in_flight, room) {
                    in_flight.insert(job.key().clone());
                    running.push(self.run_job(job, lease));
                }
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some((d, error)) = running.next() => {
                    match &d {
                        Done::Write { key, ann, outcome, .. } => {
                            in_flight.remove(key);
                            match outcome {
                                Some(Outcome::Written) => {
                                    now.insert(key.clone(), Some(Arc::clone(ann)));
                                }
                                Some(Outcome::Held { .. }) => {
                                    held.insert(key.clone(), Arc::clone(ann));
                                }
                                None => {}
                            }
                        }
                        Done::Delete { key, deleted } => {
                            in_flight.remove(key);
                            if *deleted {
                                now.insert(key.clone(), None);
                            }
                        }
                    }
                    failed = failed.or(error);
                    done.push(d);
                }
                changed = desired.changed(), if follow => {
                    if changed.is_ok() {
                        *snapshot = desired.borrow_and_update().clone();
                    } else {
                        follow = false;
                    }
                }
            }
        }
        (done, failed)
    }

    /// Runs one transaction: what it did, and its error if it failed.
    async fn run_job(&self, job: Job, lease: i64) -> (Done, Option<Error>) {
        match job {
            Job::Write { key, ann, prev } => {
                let result = self.write_txn(&key, &ann, prev.as_deref(), lease).await;
                // When this write was acknowledged, not when the last of the sync was.
                let acked = SystemTime::now();
                let (outcome, error) = match result {
                    Ok(o) => (Some(o), None),
                    Err(e) => (None, Some(e)),
                };
                (
                    Done::Write {
                        key,
                        ann,
                        outcome,
                        acked,
                    },
                    error,
                )
            }
            Job::Delete { key, ann } => {
                let error = self.withdraw(&key, &ann, lease).await.err();
                (
                    Done::Delete {
                        deleted: error.is_none(),
                        key,
                    },
                    error,
                )
            }
        }
    }

    /// Logs a conflict once, reports it, and watches the record's keys from `revision`.
    fn contest(&mut self, k: Key, conflict: Conflict, revision: i64) {
        let known = self
            .contested
            .get(&k)
            .is_some_and(|(c, w)| *c == conflict && !w.0.is_finished());
        if known {
            return;
        }
        if self.contested.get(&k).map(|(c, _)| c) != Some(&conflict) {
            tracing::error!(service = %k.0, instance = %k.1, key = %conflict.key, "{conflict}");
            self.ops.metrics().conflict();
        }
        let mut client = self.client.clone();
        let tx = self.contest_tx.clone();
        let key = conflict.key.clone();
        let mut opts = WatchOptions::new().with_start_revision(revision + 1);
        if key.ends_with('/') {
            opts = opts.with_prefix();
        }
        let nudge = k.clone();
        let task = tokio::spawn(async move {
            if let Ok(mut stream) = client.watch(key, Some(opts)).await {
                while let Ok(Some(msg)) = stream.message().await {
                    if msg.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        let _ = tx.send(nudge.clone());
                    }
                }
            }
            // The watch failed or ended (etcd away, compaction): look again; the next
            // sync watches anew.
            let _ = tx.send(nudge);
        });
        self.contested.insert(k, (conflict, Watching(task)));
    }

    /// Writes one record in one transaction on `lease` (and deletes its keys of another
    /// layout, if it changed layout; those never overlap the new keys), if it is ours to
    /// write: absent, on our lease, or our own earlier record.
    /// `prev`: what this registry last wrote of it, if it is there.
    async fn write_txn(
        &self,
        k: &(String, String),
        ann: &Announcement,
        prev: Option<&Announcement>,
        lease: i64,
    ) -> Result<Outcome, Error> {
        let prefix = &self.settings.prefix;
        let key = schema::instance_key(prefix, &k.0, &k.1, ann.layout);
        let range = |c: Compare| {
            if ann.layout == Layout::Fields {
                c.with_prefix()
            } else {
                c
            }
        };
        let mut ops = Vec::new();
        if let Some(old) = prev
            && old.layout != ann.layout
        {
            ops.push(delete_op(prefix, &k.0, &k.1, old.layout));
        }
        for (key, value) in ann.record.entries_with_meta(prefix, ann.layout, &ann.meta) {
            ops.push(TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))));
        }
        let read = TxnOp::get(
            key.as_str(),
            (ann.layout == Layout::Fields).then(|| GetOptions::new().with_prefix()),
        );
        // First try: a rewrite of our record (every key on our lease) or a new one (no key).
        let mut guard = if prev.is_some() {
            range(Compare::lease(key.as_str(), CompareOp::Equal, lease))
        } else {
            range(Compare::version(key.as_str(), CompareOp::Equal, 0))
        };
        let mut took_over = false;
        for _ in 0..3 {
            let txn = Txn::new().when([guard]).and_then(ops.clone()).or_else([read.clone()]);
            let mut client = self.client.clone();
            let resp = self.timed("write record", client.txn(txn)).await?;
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            if resp.succeeded() {
                tracing::info!(
                    key = %key,
                    service = %k.0,
                    instance = %k.1,
                    lease = %format!("{lease:x}"),
                    container = %crate::docker::short(&ann.record.container_id),
                    port = ann.record.port,
                    layout = %ann.layout,
                    revision,
                    took_over,
                    "announced"
                );
                return Ok(Outcome::Written);
            }
            let keys = stored_keys(&resp);
            match owner::holder(&keys, &key, &ann.record, Some(lease)) {
                Holder::Other(conflict) => return Ok(Outcome::Held { conflict, revision }),
                Holder::OwnEarlier => took_over = true,
                Holder::Free | Holder::Ours => {}
            }
            // Ours to write: unless a key changed since this read.
            guard = range(Compare::mod_revision(key.as_str(), CompareOp::Less, revision + 1));
        }
        Err(Error::Contended { key })
    }

    /// Deletes one record we wrote, unless it is no longer on our lease (the caller then
    /// forgets it; without a lease there is nothing to delete: the record went with it).
    async fn withdraw(&self, k: &(String, String), ann: &Announcement, lease: i64) -> Result<(), Error> {
        let layout = ann.layout;
        let probe = probe_key(&self.settings.prefix, &k.0, &k.1, layout);
        let txn = Txn::new()
            .when([Compare::lease(probe, CompareOp::Equal, lease)])
            .and_then([delete_op(&self.settings.prefix, &k.0, &k.1, layout)]);
        let key = schema::instance_key(&self.settings.prefix, &k.0, &k.1, layout);
        let (container, name) = (&ann.record.container_id, &ann.record.container_name);
        let mut client = self.client.clone();
        let resp = match self.timed("withdraw record", client.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                self.ops.metrics().op(Op::withdraw, OpResult::error);
                return Err(e);
            }
        };
        let lease = format!("{lease:x}");
        if resp.succeeded() {
            self.ops.metrics().op(Op::withdraw, OpResult::ok);
            tracing::info!(key = %key, service = %k.0, instance = %k.1, lease = %lease, container = %crate::docker::short(container), "withdrawn");
        } else {
            self.ops.metrics().op(Op::withdraw, OpResult::not_ours);
            tracing::info!(key = %key, service = %k.0, instance = %k.1, lease = %lease, "not withdrawn: the record is no longer ours");
        }
        self.ops.visible(container, name, SystemTime::now());
        Ok(())
    }

    /// Reads what etcd holds, forgets records of ours that are missing or different there
    /// (so they are rewritten), and deletes stale records this host owns.
    async fn full_check(&mut self, desired: &Desired) -> Result<(), Error> {
        let lease = self.ensure_lease().await?;
        let prefix = self.settings.prefix.clone();
        let read_from = match &self.settings.owner.only {
            Some((s, i)) => format!("{prefix}/{s}/{i}"),
            None => format!("{prefix}/"),
        };
        let mut kv_client = self.client.kv_client();
        let read = self
            .timed("read records", read_prefix(&mut kv_client, read_from.as_bytes()))
            .await?;
        self.oversized.retain(|k| read.oversized.iter().any(|o| &o.key == k));
        for o in &read.oversized {
            if self.oversized.insert(o.key.clone()) {
                tracing::warn!("{o}");
            }
        }
        let mut stored: BTreeMap<(String, String), Stored> = BTreeMap::new();
        for kv in &read.kvs {
            let Ok(key) = kv.key_str() else { continue };
            let Some(rest) = key.strip_prefix(&format!("{prefix}/")) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            let sk = StoredKey {
                key: key.to_owned(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
                lease: kv.lease(),
            };
            match parts.as_slice() {
                [s, i] if !s.is_empty() && !i.is_empty() => {
                    stored.entry(((*s).to_owned(), (*i).to_owned())).or_default().whole = Some(sk);
                }
                [s, i, f] if !s.is_empty() && !i.is_empty() && field::ALL.contains(f) => {
                    stored
                        .entry(((*s).to_owned(), (*i).to_owned()))
                        .or_default()
                        .fields
                        .push(sk);
                }
                _ => {}
            }
        }
        if let Some(only) = &self.settings.owner.only {
            stored.retain(|k, _| k == only);
        }
        // Our records that vanished or changed in etcd: rewrite them.
        let written_keys: Vec<(String, String)> = self.written.keys().cloned().collect();
        for k in written_keys {
            let intact = match (self.written.get(&k), stored.get(&k)) {
                (Some(w), Some(st)) => matches_stored(&prefix, &w.ann, st, lease),
                _ => false,
            };
            if !intact {
                tracing::info!(service = %k.0, instance = %k.1, "record missing or changed in etcd: rewriting it");
                self.written.remove(&k);
            }
        }
        // Stale records: provably ours, backed by no running container.
        let me = self.settings.owner.me.clone();
        for (k, st) in &stored {
            let wanted = desired.records.get(k).map(|a| a.layout);
            if !st.fields.is_empty() && wanted != Some(Layout::Fields) && owner::stale(&st.fields, &me, lease) {
                self.delete_stale(k, &st.fields, Layout::Fields).await?;
            }
            if let Some(whole) = &st.whole
                && !matches!(wanted, Some(Layout::Value | Layout::Json))
                && owner::stale(std::slice::from_ref(whole), &me, lease)
            {
                self.delete_stale(k, std::slice::from_ref(whole), Layout::Json).await?;
            }
        }
        Ok(())
    }

    /// Deletes keys read at known mod revisions, unless any changed since.
    async fn delete_stale(&mut self, k: &(String, String), keys: &[StoredKey], layout: Layout) -> Result<(), Error> {
        let compares: Vec<Compare> = keys
            .iter()
            .map(|sk| Compare::mod_revision(sk.key.as_bytes(), CompareOp::Equal, sk.mod_revision))
            .collect();
        let txn = Txn::new()
            .when(compares)
            .and_then([delete_op(&self.settings.prefix, &k.0, &k.1, layout)]);
        let mut client = self.client.clone();
        let resp = self.timed("delete stale record", client.txn(txn)).await?;
        if resp.succeeded() {
            tracing::info!(service = %k.0, instance = %k.1, "deleted a stale record of this host (no running container backs it)");
        }
        Ok(())
    }
}

/// Who holds the keys `ann` would be written to, for `explain` (which holds no lease).
///
/// # Errors
/// [`Error::Etcd`] when etcd does not answer.
pub async fn holder_of(client: &mut Client, prefix: &str, ann: &Announcement) -> Result<(String, Holder), Error> {
    let key = schema::instance_key(prefix, &ann.record.service, &ann.record.instance, ann.layout);
    let opts = (ann.layout == Layout::Fields).then(|| GetOptions::new().with_prefix());
    let resp = client.get(key.as_str(), opts).await.map_err(|source| Error::Etcd {
        op: format!("read {key}"),
        source,
    })?;
    let keys: Vec<StoredKey> = resp
        .kvs()
        .iter()
        .map(|kv| StoredKey {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
        .collect();
    let holder = owner::holder(&keys, &key, &ann.record, None);
    Ok((key, holder))
}

/// The keys the `else` branch of a record's write read back.
fn stored_keys(resp: &etcd_client::TxnResponse) -> Vec<StoredKey> {
    let mut out = Vec::new();
    for r in resp.op_responses() {
        if let TxnOpResponse::Get(get) = r {
            out.extend(get.kvs().iter().map(|kv| StoredKey {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
                lease: kv.lease(),
            }));
        }
    }
    out
}

/// Whether etcd holds exactly `ann` on `lease`.
fn matches_stored(prefix: &str, ann: &Announcement, st: &Stored, lease: i64) -> bool {
    let want = ann.record.entries_with_meta(prefix, ann.layout, &ann.meta);
    let have: BTreeMap<&str, &StoredKey> = st
        .fields
        .iter()
        .chain(st.whole.iter())
        .map(|sk| (sk.key.as_str(), sk))
        .collect();
    want.iter().all(|(key, value)| {
        have.get(key.as_str())
            .is_some_and(|sk| sk.value == value.as_bytes() && sk.lease == lease)
    })
}

/// The key whose lease tells whether a record is still ours.
fn probe_key(prefix: &str, service: &str, instance: &str, layout: Layout) -> String {
    let key = schema::instance_key(prefix, service, instance, layout);
    match layout {
        Layout::Fields => format!("{key}{}", field::PORT),
        Layout::Value | Layout::Json => key,
    }
}

/// The next transactions `snapshot` asks for, at most `room`, none of them in flight
/// (pure): records to write (new, or changed since last written; not one another
/// announcer held with the same announcement in this sync) and records to delete
/// (written, no longer desired). What is in etcd of ours is `written` as this sync
/// changed it (`now`: written, `Some`, or deleted, `None`).
fn next_jobs(
    snapshot: &Desired,
    written: &BTreeMap<Key, Written>,
    now: &BTreeMap<Key, Option<Arc<Announcement>>>,
    held: &BTreeMap<Key, Arc<Announcement>>,
    in_flight: &BTreeSet<Key>,
    room: usize,
) -> Vec<Job> {
    // What etcd holds of ours, as far as this registry knows.
    let current = |k: &Key| -> Option<Arc<Announcement>> {
        match now.get(k) {
            Some(v) => v.clone(),
            None => written.get(k).map(|w| Arc::clone(&w.ann)),
        }
    };
    let mut jobs = Vec::new();
    for (k, ann) in &snapshot.records {
        if jobs.len() >= room {
            return jobs;
        }
        if in_flight.contains(k) || held.get(k) == Some(ann) {
            continue;
        }
        let prev = current(k);
        if prev.as_ref() != Some(ann) {
            jobs.push(Job::Write {
                key: k.clone(),
                ann: Arc::clone(ann),
                prev,
            });
        }
    }
    let ours = written.keys().chain(now.keys());
    for k in ours {
        if jobs.len() >= room {
            break;
        }
        if in_flight.contains(k) || snapshot.records.contains_key(k) || jobs.iter().any(|j| j.key() == k) {
            continue;
        }
        if let Some(ann) = current(k) {
            jobs.push(Job::Delete { key: k.clone(), ann });
        }
    }
    jobs
}

/// What deleting one record removes: the `fields` directory (trailing `/`, as a prefix) or
/// the single key. Pure, so the web1/web10 boundary is tested on the key itself.
fn delete_range(prefix: &str, service: &str, instance: &str, layout: Layout) -> (String, bool) {
    let key = schema::instance_key(prefix, service, instance, layout);
    match layout {
        Layout::Fields => (key, true),
        Layout::Value | Layout::Json => (key, false),
    }
}

/// Deletes one record ([`delete_range`]).
fn delete_op(prefix: &str, service: &str, instance: &str, layout: Layout) -> TxnOp {
    match delete_range(prefix, service, instance, layout) {
        (key, true) => TxnOp::delete(key, Some(DeleteOptions::new().with_prefix())),
        (key, false) => TxnOp::delete(key, None),
    }
}

/// The next report of the keep-alive task, or never when there is none.
async fn next_event(keeper: &mut Option<(lease::Task, mpsc::UnboundedReceiver<lease::Event>)>) -> Option<lease::Event> {
    match keeper {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_and_probe_keys_keep_web1_apart_from_web10() {
        assert_eq!(
            probe_key("/services", "web", "web1", Layout::Fields),
            "/services/web/web1/port"
        );
        assert_eq!(
            probe_key("/services", "db", "db_private_ip", Layout::Value),
            "/services/db/db_private_ip"
        );
        // A `fields` delete is a prefix delete: its prefix must end at the instance, or
        // withdrawing web1 would take web10's keys with it.
        let (range, is_prefix) = delete_range("/services", "web", "web1", Layout::Fields);
        assert_eq!((range.as_str(), is_prefix), ("/services/web/web1/", true));
        let web10 = schema::Record {
            service: "web".into(),
            instance: "web10".into(),
            unit: "monweb@10.service".into(),
            host: "core10".into(),
            public_ipv4: Some([203, 0, 113, 10].into()),
            private_ipv4: [10, 0, 0, 10].into(),
            port: 8080,
            container_id: String::new(),
            container_name: String::new(),
        };
        let entries = web10.entries("/services", Layout::Fields);
        assert!(entries.len() > 1, "{entries:?}");
        for (key, _) in entries {
            assert!(!key.starts_with(&range), "{key} is inside web1's delete range {range}");
        }
        assert!(
            format!("{range}port").starts_with(&range),
            "web1's own keys are in its range"
        );
        // A single-key layout deletes exactly that key, never a prefix.
        for layout in [Layout::Value, Layout::Json] {
            assert_eq!(
                delete_range("/services", "web", "web1", layout),
                ("/services/web/web1".to_owned(), false),
                "{layout:?}"
            );
        }
        assert_eq!(
            delete_range("/services/", "db", "db_private_ip", Layout::Value),
            ("/services/db/db_private_ip".to_owned(), false)
        );
    }

    /// An announcement of instance `i` on `port` (a changed port is a changed record).
    fn ann(i: &str, port: u16) -> Arc<Announcement> {
        Arc::new(Announcement {
            record: schema::Record {
                service: "web".into(),
                instance: i.into(),
                unit: String::new(),
                host: "core01".into(),
                public_ipv4: None,
                private_ipv4: [10, 0, 0, 1].into(),
                port,
                container_id: format!("c-{i}"),
                container_name: i.into(),
            },
            layout: Layout::Fields,
            meta: schema::Meta::default(),
        })
    }

    fn key(i: &str) -> Key {
        ("web".to_owned(), i.to_owned())
    }

    /// The transactions a sync starts, as `W i port (prev port)` and `D i`.
    fn shown(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| match j {
                Job::Write { key, ann, prev } => format!(
                    "W {} {} ({})",
                    key.1,
                    ann.record.port,
                    prev.as_ref().map_or("-".to_owned(), |p| p.record.port.to_string())
                ),
                Job::Delete { key, ann } => format!("D {} {}", key.1, ann.record.port),
            })
            .collect()
    }

    /// What a sync starts, from the desired set, what was written before it, what it did
    /// so far (`now`), what another announcer holds and what is in flight: every new or
    /// changed record is written and every record no longer desired deleted, but never
    /// two transactions of one record at once, never what this sync found held again, and
    /// a record written or deleted earlier in the same sync is judged by what was done.
    #[test]
    fn a_sync_starts_one_transaction_per_record_that_differs_and_none_for_one_in_flight() {
        type Records = Vec<(&'static str, u16)>;
        type Now = Vec<(&'static str, Option<u16>)>;
        // (what, desired, written, now, held, in flight, room, jobs)
        type Case = (
            &'static str,
            Records,
            Records,
            Now,
            Records,
            Vec<&'static str>,
            usize,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            // (what, desired, written, now, held, in flight, room, jobs)
            (
                "new records",
                vec![("a", 1), ("b", 1)],
                vec![],
                vec![],
                vec![],
                vec![],
                16,
                vec!["W a 1 (-)", "W b 1 (-)"],
            ),
            (
                "nothing changed",
                vec![("a", 1)],
                vec![("a", 1)],
                vec![],
                vec![],
                vec![],
                16,
                vec![],
            ),
            (
                "a changed record",
                vec![("a", 2)],
                vec![("a", 1)],
                vec![],
                vec![],
                vec![],
                16,
                vec!["W a 2 (1)"],
            ),
            (
                "a record no longer desired",
                vec![("a", 1)],
                vec![("a", 1), ("b", 1)],
                vec![],
                vec![],
                vec![],
                16,
                vec!["D b 1"],
            ),
            (
                "in flight: no second transaction",
                vec![("a", 2)],
                vec![("a", 1), ("b", 1)],
                vec![],
                vec![],
                vec!["a", "b"],
                16,
                vec![],
            ),
            (
                "written in this sync, unchanged since",
                vec![("a", 2)],
                vec![("a", 1)],
                vec![("a", Some(2))],
                vec![],
                vec![],
                16,
                vec![],
            ),
            (
                "written in this sync, changed since",
                vec![("a", 3)],
                vec![("a", 1)],
                vec![("a", Some(2))],
                vec![],
                vec![],
                16,
                vec!["W a 3 (2)"],
            ),
            (
                "deleted in this sync, desired again",
                vec![("b", 1)],
                vec![("b", 1)],
                vec![("b", None)],
                vec![],
                vec![],
                16,
                vec!["W b 1 (-)"],
            ),
            (
                "deleted in this sync, still gone",
                vec![],
                vec![("b", 1)],
                vec![("b", None)],
                vec![],
                vec![],
                16,
                vec![],
            ),
            (
                "written in this sync, then gone",
                vec![],
                vec![],
                vec![("c", Some(1))],
                vec![],
                vec![],
                16,
                vec!["D c 1"],
            ),
            (
                "held: not tried again",
                vec![("a", 1)],
                vec![],
                vec![],
                vec![("a", 1)],
                vec![],
                16,
                vec![],
            ),
            (
                "held, then changed",
                vec![("a", 2)],
                vec![],
                vec![],
                vec![("a", 1)],
                vec![],
                16,
                vec!["W a 2 (-)"],
            ),
            (
                "no more than the room",
                vec![("a", 1), ("b", 1), ("c", 1)],
                vec![("d", 1)],
                vec![],
                vec![],
                vec![],
                2,
                vec!["W a 1 (-)", "W b 1 (-)"],
            ),
            (
                "the room left for a delete",
                vec![("a", 1)],
                vec![("d", 1)],
                vec![],
                vec![],
                vec![],
                2,
                vec!["W a 1 (-)", "D d 1"],
            ),
            (
                "no room",
                vec![("a", 1)],
                vec![("d", 1)],
                vec![],
                vec![],
                vec![],
                0,
                vec![],
            ),
        ];
        for (what, desired, written, now, held, in_flight, room, want) in cases {
            let snapshot = Desired {
                complete: true,
                settled: true,
                records: desired.iter().map(|(i, p)| (key(i), ann(i, *p))).collect(),
            };
            let written: BTreeMap<Key, Written> = written
                .iter()
                .map(|(i, p)| (key(i), Written { ann: ann(i, *p) }))
                .collect();
            let now: BTreeMap<Key, Option<Arc<Announcement>>> =
                now.iter().map(|(i, p)| (key(i), p.map(|p| ann(i, p)))).collect();
            let held: BTreeMap<Key, Arc<Announcement>> = held.iter().map(|(i, p)| (key(i), ann(i, *p))).collect();
            let in_flight: BTreeSet<Key> = in_flight.iter().map(|i| key(i)).collect();
            let got = next_jobs(&snapshot, &written, &now, &held, &in_flight, room);
            assert_eq!(shown(&got), want, "{what}");
        }
    }

    #[test]
    fn the_lease_is_gone_on_not_found_and_the_member_away_on_unavailable_or_timeout() {
        let status = |s: tonic::Status| Error::Etcd {
            op: "x".into(),
            source: etcd_client::Error::GRpcStatus(s),
        };
        assert!(lease_gone(&status(tonic::Status::not_found(
            "etcdserver: requested lease not found"
        ))));
        // Decided by the code, not the text.
        assert!(!lease_gone(&status(tonic::Status::unavailable("lease not found"))));
        assert!(!member_away(&status(tonic::Status::not_found(
            "etcdserver: requested lease not found"
        ))));
        assert!(member_away(&status(tonic::Status::unavailable(
            "etcdserver: no leader"
        ))));
        assert!(member_away(&Error::EtcdTimeout {
            op: "x".into(),
            timeout: Duration::from_secs(2),
        }));
        assert!(!member_away(&Error::Contended { key: "k".into() }));
    }
}
