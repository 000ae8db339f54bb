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
//! are missing or different, (b) deletes stale records this host owns that no running
//! container backs (owned: the `host` field is our hostname, or a `value` record holds our
//! private address; in `container` mode only the one instance it manages), each guarded by
//! a compare on the mod revisions it read.
//!
//! When etcd is away it retries with backoff; when the lease expired meanwhile it grants a
//! new one and rewrites every record. Keep-alive streams that go silent (bound to a dead
//! member of a cluster) are reopened. On shutdown it revokes the lease: every record of
//! this process disappears at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
};
use futures::StreamExt;
use sidekick::etcd::EtcdConfig;
use sidekick::schema::{self, Layout, field};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::reconcile::{Announcement, Desired};

/// Who owns which records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Records whose `host` is this are ours.
    pub hostname: String,
    /// `value` records holding this address are ours.
    pub private_ipv4: Ipv4Addr,
    /// `container` mode: the one `(service, instance)` this process manages.
    pub only: Option<(String, String)>,
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

/// What we wrote for one record.
#[derive(Debug)]
struct Written {
    ann: Announcement,
}

/// One key as read back from etcd.
#[derive(Clone, Debug)]
struct StoredKey {
    key: String,
    value: Vec<u8>,
    mod_revision: i64,
    lease: i64,
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
    client: Client,
    settings: Settings,
    lease: Option<i64>,
    granted_ttl: Duration,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    last_ack: Instant,
    written: BTreeMap<(String, String), Written>,
    need_sync: bool,
    need_full: bool,
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

/// Whether an etcd error says the lease does not exist (it expired or was revoked).
fn lease_gone(e: &Error) -> bool {
    let text = match e {
        Error::Etcd { source, .. } => source.to_string(),
        _ => return false,
    };
    text.contains("lease not found")
}

impl Registry {
    /// Connects (checking that etcd answers) and grants the lease.
    ///
    /// # Errors
    /// When etcd is unreachable or refuses the lease: the announcer does not start.
    pub async fn connect(config: &EtcdConfig, settings: Settings) -> Result<Registry, Error> {
        let client = config.connect().await?;
        let mut r = Registry {
            client,
            settings,
            lease: None,
            granted_ttl: Duration::ZERO,
            keeper: None,
            last_ack: Instant::now(),
            written: BTreeMap::new(),
            need_sync: true,
            need_full: true,
        };
        r.ensure_lease().await?;
        Ok(r)
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
        self.lease = Some(id);
        self.keeper = None;
        self.written.clear();
        self.open_keeper().await;
        Ok(id)
    }

    /// The lease is gone: forget what we wrote (it went with the lease) and start over.
    fn lease_lost(&mut self) {
        if let Some(id) = self.lease.take() {
            tracing::warn!(
                lease = format!("{id:x}"),
                "lease expired: granting a new one and rewriting every record"
            );
        }
        self.keeper = None;
        self.written.clear();
        self.need_sync = true;
        self.need_full = true;
    }

    async fn open_keeper(&mut self) {
        let Some(id) = self.lease else { return };
        let mut client = self.client.clone();
        match self.timed("keep-alive", client.lease_keep_alive(id)).await {
            Ok(k) => {
                self.keeper = Some(k);
                self.last_ack = Instant::now();
            }
            Err(e) if e.to_string().contains("lease not found") => self.lease_lost(),
            Err(e) => tracing::debug!(error = %e, "cannot open the keep-alive stream yet"),
        }
    }

    /// Sends one keep-alive; reopens a stream that went silent.
    async fn keep_alive(&mut self) {
        if self.lease.is_none() {
            return;
        }
        if self.keeper.is_some() && self.last_ack.elapsed() > self.granted_ttl * 2 / 3 {
            tracing::info!("keep-alive stream silent: reopening it");
            self.keeper = None;
        }
        let failed = match &mut self.keeper {
            Some((keeper, _)) => keeper.keep_alive().await.is_err(),
            None => {
                self.open_keeper().await;
                if self.keeper.is_some() {
                    // Back after an outage: compare with etcd in case anything changed.
                    self.need_full = true;
                }
                false
            }
        };
        if failed {
            self.keeper = None;
        }
    }

    fn on_keep_alive_answer(&mut self, msg: Option<Result<etcd_client::LeaseKeepAliveResponse, etcd_client::Error>>) {
        match msg {
            Some(Ok(r)) if r.ttl() > 0 => self.last_ack = Instant::now(),
            Some(Ok(_)) => self.lease_lost(),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "keep-alive stream broke");
                self.keeper = None;
            }
            None => self.keeper = None,
        }
    }

    /// Runs until `shutdown` is cancelled or the desired channel closes, then revokes the lease.
    pub async fn run(mut self, mut desired: watch::Receiver<Desired>, shutdown: CancellationToken) {
        let period = (self.granted_ttl / 3).max(Duration::from_millis(200));
        let mut keep_alive = tokio::time::interval_at(Instant::now() + period, period);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval_at(Instant::now() + self.settings.resync, self.settings.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = sidekick::retry::backoff(Duration::from_millis(50), Duration::from_secs(2)).build();
        let mut retry_at: Option<Instant> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.need_sync = true;
                }
                msg = next_answer(&mut self.keeper) => {
                    let had_lease = self.lease.is_some();
                    self.on_keep_alive_answer(msg);
                    if had_lease && self.lease.is_none() {
                        retry_at = None;
                    }
                }
                _ = keep_alive.tick() => {
                    let was_open = self.keeper.is_some();
                    self.keep_alive().await;
                    if !was_open && self.keeper.is_some() {
                        // etcd answers again: retry a pending sync at once.
                        retry_at = None;
                    }
                }
                _ = resync.tick() => self.need_full = true,
                () = sleep_until(retry_at) => retry_at = None,
            }
            if !(self.need_sync || self.need_full) || retry_at.is_some() {
                continue;
            }
            let snapshot = desired.borrow_and_update().clone();
            match self.sync(&snapshot).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(records = self.written.len(), "etcd is back: records in place");
                    }
                    failing = false;
                    backoff = sidekick::retry::backoff(Duration::from_millis(50), Duration::from_secs(2)).build();
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "etcd still failing");
                    } else {
                        tracing::warn!(error = %e, "etcd write failed; retrying with backoff");
                    }
                    failing = true;
                    let delay = backoff.next().unwrap_or(Duration::from_secs(2));
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
        self.revoke().await;
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

    /// Makes etcd match `desired`: one attempt; a vanished lease is regranted once at once.
    async fn sync(&mut self, desired: &Desired) -> Result<(), Error> {
        match self.sync_once(desired).await {
            Err(e) if lease_gone(&e) => {
                self.lease_lost();
                self.sync_once(desired).await
            }
            other => other,
        }
    }

    async fn sync_once(&mut self, desired: &Desired) -> Result<(), Error> {
        self.ensure_lease().await?;
        if self.need_full && desired.complete {
            self.full_check(desired).await?;
            self.need_full = false;
        }
        // Records are independent: their transactions go out together (etcd commits
        // concurrent proposals in one log flush), so a burst of starts does not queue
        // behind one slow write.
        let lease = self.ensure_lease().await?;
        let changed: Vec<(Key, Announcement)> = desired
            .records
            .iter()
            .filter(|(k, ann)| self.written.get(*k).map(|w| &w.ann) != Some(*ann))
            .map(|(k, ann)| (k.clone(), ann.clone()))
            .collect();
        let this = &*self;
        let results: Vec<(Key, Announcement, Result<(), Error>)> = futures::stream::iter(changed)
            .map(|(k, ann)| async move {
                let result = this.write_txn(&k, &ann, lease).await;
                (k, ann, result)
            })
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        let mut failed = None;
        for (k, ann, result) in results {
            match result {
                Ok(()) => {
                    self.written.insert(k, Written { ann });
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let gone: Vec<(String, String)> = self
            .written
            .keys()
            .filter(|k| !desired.records.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.withdraw(&k).await?;
        }
        self.need_sync = false;
        Ok(())
    }

    /// Writes one record in one transaction on `lease` (and deletes its keys of another
    /// layout, if it changed layout; those never overlap the new keys).
    async fn write_txn(&self, k: &(String, String), ann: &Announcement, lease: i64) -> Result<(), Error> {
        let prefix = &self.settings.prefix;
        let mut ops = Vec::new();
        if let Some(old) = self.written.get(k)
            && old.ann.layout != ann.layout
        {
            ops.push(delete_op(prefix, &k.0, &k.1, old.ann.layout));
        }
        for (key, value) in ann.record.entries_with_meta(prefix, ann.layout, &ann.meta) {
            ops.push(TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))));
        }
        let mut client = self.client.clone();
        let resp = self.timed("write record", client.txn(Txn::new().and_then(ops))).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        tracing::info!(
            service = %k.0,
            instance = %k.1,
            port = ann.record.port,
            layout = %ann.layout,
            revision,
            "announced"
        );
        Ok(())
    }

    /// Deletes one record we wrote, unless it is no longer on our lease.
    async fn withdraw(&mut self, k: &(String, String)) -> Result<(), Error> {
        let Some(w) = self.written.get(k) else { return Ok(()) };
        let Some(lease) = self.lease else {
            self.written.remove(k);
            return Ok(());
        };
        let layout = w.ann.layout;
        let probe = probe_key(&self.settings.prefix, &k.0, &k.1, layout);
        let txn = Txn::new()
            .when([Compare::lease(probe, CompareOp::Equal, lease)])
            .and_then([delete_op(&self.settings.prefix, &k.0, &k.1, layout)]);
        let mut client = self.client.clone();
        let resp = self.timed("withdraw record", client.txn(txn)).await?;
        if resp.succeeded() {
            tracing::info!(service = %k.0, instance = %k.1, "withdrawn");
        } else {
            tracing::info!(service = %k.0, instance = %k.1, "not withdrawn: the record is no longer ours");
        }
        self.written.remove(k);
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
        let mut client = self.client.clone();
        let resp = self
            .timed(
                "read records",
                client.get(read_from.as_bytes(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut stored: BTreeMap<(String, String), Stored> = BTreeMap::new();
        for kv in resp.kvs() {
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
        // Stale records: owned by this host, backed by no running container.
        for (k, st) in &stored {
            let wanted = desired.records.get(k).map(|a| a.layout);
            if !st.fields.is_empty() && wanted != Some(Layout::Fields) && self.owns_fields(&st.fields) {
                self.delete_stale(k, &st.fields, Layout::Fields).await?;
            }
            if let Some(whole) = &st.whole
                && !matches!(wanted, Some(Layout::Value | Layout::Json))
                && self.owns_whole(whole)
            {
                self.delete_stale(k, std::slice::from_ref(whole), Layout::Json).await?;
            }
        }
        Ok(())
    }

    fn owns_fields(&self, keys: &[StoredKey]) -> bool {
        keys.iter().any(|sk| {
            sk.key.ends_with(&format!("/{}", field::HOST)) && sk.value == self.settings.owner.hostname.as_bytes()
        })
    }

    fn owns_whole(&self, sk: &StoredKey) -> bool {
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&sk.value) else {
            return false;
        };
        if let Some(host) = doc.get(field::HOST).and_then(|h| h.as_str()) {
            return host == self.settings.owner.hostname;
        }
        doc.get("value").is_some() && schema::decode_value(&sk.value).ok() == Some(self.settings.owner.private_ipv4)
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

/// Deletes one record: the `fields` directory (trailing `/`) or the single key.
fn delete_op(prefix: &str, service: &str, instance: &str, layout: Layout) -> TxnOp {
    let key = schema::instance_key(prefix, service, instance, layout);
    match layout {
        Layout::Fields => TxnOp::delete(key, Some(DeleteOptions::new().with_prefix())),
        Layout::Value | Layout::Json => TxnOp::delete(key, None),
    }
}

/// The next keep-alive answer, or never when no stream is open.
async fn next_answer(
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Option<Result<etcd_client::LeaseKeepAliveResponse, etcd_client::Error>> {
    match keeper {
        Some((_, stream)) => stream.message().await.transpose(),
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
        assert!(lease_gone(&Error::Etcd {
            op: "x".into(),
            source: etcd_client::Error::LeaseKeepAliveError("etcdserver: requested lease not found".into()),
        }));
        assert!(!lease_gone(&Error::Etcd {
            op: "x".into(),
            source: etcd_client::Error::LeaseKeepAliveError("connection reset".into()),
        }));
    }
}
