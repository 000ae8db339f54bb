//! The desired set, from etcd: the only code of lb-sync that reads records.
//!
//! [`follow`] loads the prefix, then watches it from the next revision, and publishes a
//! [`Desired`] after every change. It knows whether its view is complete: not before the
//! initial load, and not from the moment a watch breaks until the prefix has been read
//! again. When the watch breaks, the prefix is read again (one range read: the prefix
//! holds a few dozen keys) and the watch restarts from the revision of that read, so no
//! event can be missed and the view is complete as soon as the read answers. When the
//! revision a watch starts from has been compacted away, the same happens.
//!
//! Why not resume the broken watch from the last revision and call the view complete
//! when etcd's progress notification arrives: etcd 3.4 answers a progress request at
//! once with its current revision, even while the resumed watch is still replaying older
//! events or is about to be cancelled for compaction (a test caught it marking a stale
//! view complete). A fresh read is both simpler and sound.
//!
//! Records are decoded with the shared schema ([`sidekick::schema::decode_service`]). A
//! record that cannot be read is skipped with a warning and never makes its node absent:
//! its instance keeps the endpoint it last had, or its address is held, or, when nothing
//! can be told, removals are held (see [`Desired`]).
//!
//! lb-sync never writes records: this module only reads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use sidekick::bounded::{MAX_VALUE, Oversized, read_prefix};
use sidekick::notify::Heartbeat;
use sidekick::schema::{AddressField, DecodeError, Record, decode_service, field, normalize_prefix, shown_name};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::plan::{Desired, Endpoint};

/// Which records make the desired set, and how a record becomes a node.
#[derive(Clone, Debug)]
pub struct Source {
    /// The service directory, normalised (`/services/web`).
    pub prefix: String,
    /// Which address of a record the load balancer reaches.
    pub address_field: AddressField,
    /// A fixed node port instead of the record's `port`.
    pub node_port: Option<u16>,
}

impl Source {
    /// `prefix` normalised, with the other choices.
    #[must_use]
    pub fn new(prefix: &str, address_field: AddressField, node_port: Option<u16>) -> Source {
        Source {
            prefix: normalize_prefix(prefix),
            address_field,
            node_port,
        }
    }

    /// The key prefix watched: the directory with a trailing `/`.
    #[must_use]
    pub fn key_prefix(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The service name: the last segment of the prefix (`web`).
    #[must_use]
    pub fn service(&self) -> String {
        self.prefix.rsplit('/').next().unwrap_or_default().to_owned()
    }
}

/// Turns the stored key/values into a [`Desired`], remembering what each instance last
/// looked like so an unreadable record keeps its node.
#[derive(Debug, Default)]
pub struct Builder {
    /// What is kept of each instance, by name. A watch event decodes and judges again only
    /// the instances it touched: decoding every record at every event cost lb-sync most of
    /// its CPU under churn (a fleet of 25 hosts rewriting its 1,250 records decoded 1,250
    /// records 2,500 times), and so did judging every record again with lookups by name
    /// (at 5,000 records, 4 ms an event: issue 18).
    instances: BTreeMap<String, Instance>,
    /// Every address seen in a record.
    known_addresses: BTreeSet<IpAddr>,
}

/// What the builder keeps of one instance. Not its decoded records: once judged, only
/// what they give is needed (5,000 records held whole were 2 MB of lb-sync's memory).
#[derive(Debug, Default)]
struct Instance {
    /// The endpoint of its last readable record.
    last_known: Option<Endpoint>,
    /// The warning last logged for it (to log each problem once).
    warned: Option<String>,
    /// What it gives the desired set, worked out when its keys last changed.
    parts: Vec<Part>,
}

/// What one record of an instance gives the desired set.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// A node at this endpoint.
    Node(Endpoint),
    /// Unreadable: the endpoint it last had is kept.
    Held(Endpoint),
    /// Unreadable, with only its address known: every node there is kept.
    HeldAddress(IpAddr),
    /// Unreadable and unplaceable (why, for the log): no node is removed.
    Unknown(String),
}

impl Builder {
    /// The desired set of `kvs` (every key under the prefix), every record decoded.
    pub fn build(
        &mut self,
        source: &Source,
        kvs: &BTreeMap<Vec<u8>, Vec<u8>>,
        complete: bool,
        revision: i64,
    ) -> Desired {
        let mut decoded: BTreeMap<String, Vec<Result<Record, DecodeError>>> = BTreeMap::new();
        for (instance, result) in decode_service(
            &source.key_prefix(),
            &source.service(),
            kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        ) {
            decoded.entry(instance).or_default().push(result);
        }
        // What is remembered of an instance outlives a fresh read; a gone one is forgotten.
        let mut old = std::mem::take(&mut self.instances);
        for (name, results) in decoded {
            let mut inst = old.remove(&name).unwrap_or_default();
            inst.judge(&name, &results, source, kvs, &mut self.known_addresses);
            self.instances.insert(name, inst);
        }
        self.assemble(complete, revision)
    }

    /// The desired set of `kvs` after a watch event that wrote or deleted `touched` keys:
    /// only their instances are decoded again. Gives what [`Builder::build`] would.
    pub fn update<'k>(
        &mut self,
        source: &Source,
        kvs: &BTreeMap<Vec<u8>, Vec<u8>>,
        touched: impl IntoIterator<Item = &'k [u8]>,
        complete: bool,
        revision: i64,
    ) -> Desired {
        let key_prefix = source.key_prefix();
        let service = source.service();
        let instances: BTreeSet<&str> = touched
            .into_iter()
            .filter_map(|key| instance_of(key_prefix.as_bytes(), key))
            .collect();
        for instance in instances {
            // Its keys: `<prefix><instance>` (JSON) and `<prefix><instance>/…` (fields),
            // not those of an instance whose name merely starts the same.
            let own = format!("{key_prefix}{instance}");
            let keys = kvs
                .range(own.as_bytes().to_vec()..)
                .take_while(|(k, _)| k.starts_with(own.as_bytes()))
                .filter(|(k, _)| k.len() == own.len() || k.get(own.len()) == Some(&b'/'))
                .map(|(k, v)| (k.as_slice(), v.as_slice()));
            let results: Vec<_> = decode_service(&key_prefix, &service, keys)
                .into_iter()
                .map(|(_, result)| result)
                .collect();
            if results.is_empty() {
                self.instances.remove(instance);
                continue;
            }
            let inst = self.instances.entry(instance.to_owned()).or_default();
            inst.judge(instance, &results, source, kvs, &mut self.known_addresses);
        }
        self.assemble(complete, revision)
    }

    /// The desired set from what each instance gives.
    fn assemble(&self, complete: bool, revision: i64) -> Desired {
        let mut out = Desired {
            complete,
            revision,
            ..Desired::default()
        };
        let mut nodes = Vec::with_capacity(self.instances.len());
        for (name, inst) in &self.instances {
            for part in &inst.parts {
                match part {
                    Part::Node(ep) => nodes.push((*ep, name)),
                    Part::Held(ep) => {
                        out.held.insert(*ep, name.clone());
                    }
                    Part::HeldAddress(addr) => {
                        out.held_addresses.insert(*addr, name.clone());
                    }
                    Part::Unknown(why) => out.unknown.push(why.clone()),
                }
            }
        }
        // An endpoint two instances claim goes to the first by name: the sort is stable
        // and `dedup` keeps the first of each run. A sorted map is then built in one go
        // instead of by 5,000 searches.
        nodes.sort_by_key(|(ep, _)| *ep);
        nodes.dedup_by_key(|(ep, _)| *ep);
        out.nodes = nodes.into_iter().map(|(ep, name)| (ep, name.clone())).collect();
        out.known_addresses = self.known_addresses.clone();
        out
    }
}

impl Instance {
    /// Works out what the instance's records (`results`, as decoded: two when it has keys
    /// of both layouts) give, logging a record that became unreadable
    /// (once per problem) or readable again. The readable records are taken first, so an
    /// unreadable one beside a readable one (keys of both layouts) keeps that endpoint, and
    /// judging the same records twice gives the same: what a watch event leaves untouched
    /// need not be judged again.
    fn judge(
        &mut self,
        instance: &str,
        results: &[Result<Record, DecodeError>],
        source: &Source,
        kvs: &BTreeMap<Vec<u8>, Vec<u8>>,
        known_addresses: &mut BTreeSet<IpAddr>,
    ) {
        self.parts.clear();
        let mut problems = Vec::new();
        for result in results {
            let problem = match result {
                Ok(rec) => match rec.address(source.address_field) {
                    Some(ip) => {
                        let ep = Endpoint::new(IpAddr::V4(ip), source.node_port.unwrap_or(rec.port));
                        self.parts.push(Part::Node(ep));
                        self.last_known = Some(ep);
                        known_addresses.insert(ep.address);
                        continue;
                    }
                    None => format!("record {instance:?} has no {}", source.address_field),
                },
                Err(e) => e.to_string(),
            };
            problems.push(problem);
        }
        if problems.is_empty() && self.warned.take().is_some() {
            tracing::info!(instance, "record is readable again");
        }
        for problem in problems {
            if self.warned.as_ref() != Some(&problem) {
                tracing::warn!(instance, "skipping unreadable record: {problem}");
                self.warned = Some(problem.clone());
            }
            let salvaged = salvage_address(kvs, &source.key_prefix(), instance, source.address_field);
            let part = if let Some(ep) = self.last_known {
                Part::Held(ep)
            } else if let (Some(addr), Some(port)) = (salvaged, source.node_port) {
                // The port of the record does not matter: the node port is fixed.
                known_addresses.insert(addr);
                Part::Node(Endpoint::new(addr, port))
            } else if let Some(addr) = salvaged {
                known_addresses.insert(addr);
                Part::HeldAddress(addr)
            } else {
                // The instance comes from a key anyone under the prefix can write: a
                // name that is not safe is shown quoted and cut, not as it is.
                Part::Unknown(format!("{}: {problem}", shown_name(instance)))
            };
            self.parts.push(part);
        }
    }
}

/// The instance a key under `key_prefix` belongs to (its first segment), as
/// [`decode_service`] reads it: none for a key outside the prefix, not in UTF-8 or
/// without a name.
fn instance_of<'k>(key_prefix: &[u8], key: &'k [u8]) -> Option<&'k str> {
    let rest = key.strip_prefix(key_prefix)?;
    let name = rest.split(|b| *b == b'/').next()?;
    std::str::from_utf8(name).ok().filter(|n| !n.is_empty())
}

/// The address of an unreadable record, when that field alone can be read.
fn salvage_address(
    kvs: &BTreeMap<Vec<u8>, Vec<u8>>,
    key_prefix: &str,
    instance: &str,
    which: AddressField,
) -> Option<IpAddr> {
    let name = match which {
        AddressField::Public => field::PUBLIC_IPV4,
        AddressField::Private => field::PRIVATE_IPV4,
    };
    let parse = |s: &str| s.trim().parse::<IpAddr>().ok();
    if let Some(v) = kvs.get(format!("{key_prefix}{instance}/{name}").as_bytes()) {
        return std::str::from_utf8(v).ok().and_then(parse);
    }
    let v = kvs.get(format!("{key_prefix}{instance}").as_bytes())?;
    let doc: serde_json::Value = serde_json::from_slice(v).ok()?;
    doc.get(name)?.as_str().and_then(parse)
}

/// Loads the whole prefix: the key/values and the revision they were read at. A value
/// over [`MAX_VALUE`] is left out and logged once per key ([`Oversize::note`]), so one
/// hostile value never costs the read of the others nor holds memory.
///
/// # Errors
/// [`Error::EtcdRequest`] when etcd does not answer.
pub async fn load(client: &mut Client, source: &Source) -> Result<(BTreeMap<Vec<u8>, Vec<u8>>, i64), Error> {
    load_noting(client, source, &mut Oversize::default()).await
}

async fn load_noting(
    client: &mut Client,
    source: &Source,
    oversize: &mut Oversize,
) -> Result<(BTreeMap<Vec<u8>, Vec<u8>>, i64), Error> {
    let read = read_prefix(&mut client.kv_client(), source.key_prefix().as_bytes())
        .await
        .map_err(|source| Error::EtcdRequest {
            what: "range read of the prefix",
            source,
        })?;
    oversize.retain_only(&read.oversized);
    for o in &read.oversized {
        oversize.note(o);
    }
    let kvs = read
        .kvs
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect();
    Ok((kvs, read.revision))
}

/// The keys whose values were left out for their size, each logged once while it stays so.
#[derive(Debug, Default)]
struct Oversize {
    warned: BTreeSet<Vec<u8>>,
}

impl Oversize {
    /// Logs `o` unless it was logged already.
    fn note(&mut self, o: &Oversized) {
        if self.warned.insert(o.key.clone()) {
            tracing::warn!("{o}");
        }
    }

    /// Forgets the keys that are no longer oversized (a later oversized value is logged again).
    fn retain_only(&mut self, now: &[Oversized]) {
        self.warned.retain(|k| now.iter().any(|o| &o.key == k));
    }

    /// Forgets `key` (it was deleted or rewritten with a usable value).
    fn forget(&mut self, key: &[u8]) {
        self.warned.remove(key);
    }
}

/// What was read up to a revision: the state a watch resumes from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every key under the prefix and its value.
    pub kvs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The revision they reflect.
    pub revision: i64,
}

/// Follows the prefix until `cancel`, publishing every new desired set on `tx`.
pub async fn follow(
    client: Client,
    source: Source,
    tx: watch::Sender<Desired>,
    cancel: CancellationToken,
    beat: Heartbeat,
) {
    follow_from(client, source, tx, cancel, None, beat).await;
}

/// [`follow`], starting from `start` (taken as a complete view at its revision) instead
/// of loading first; the watch then starts at `start.revision + 1`.
pub async fn follow_from(
    mut client: Client,
    source: Source,
    tx: watch::Sender<Desired>,
    cancel: CancellationToken,
    start: Option<Snapshot>,
    beat: Heartbeat,
) {
    // Alive while it waits on the watch or out a backoff; each etcd request is bounded by
    // the client's timeout.
    let mut alive = beat.interval();
    let mut builder = Builder::default();
    let mut oversize = Oversize::default();
    // Every (re)start of the watch is preceded by a fresh read, except the first with `start`.
    let mut need_load = start.is_none();
    let Snapshot { mut kvs, mut revision } = start.unwrap_or_default();
    if !need_load {
        tx.send_replace(builder.build(&source, &kvs, true, revision));
    }
    let mut delays = backoff();
    loop {
        beat.beat();
        if cancel.is_cancelled() {
            return;
        }
        if need_load {
            match load_noting(&mut client, &source, &mut oversize).await {
                Ok((fresh, rev)) => {
                    let first = revision == 0;
                    let missed = rev > revision || fresh != kvs;
                    kvs = fresh;
                    revision = rev;
                    delays = backoff();
                    if first {
                        tracing::info!(prefix = %source.prefix, revision, keys = kvs.len(), "loaded the records");
                    } else {
                        tracing::info!(revision, reloaded = missed, "watch resumed; the view is complete again");
                    }
                    tx.send_replace(builder.build(&source, &kvs, true, revision));
                }
                Err(e) => {
                    tracing::warn!("{e}; retrying");
                    if sleep_or_cancel(&mut delays, &cancel, &beat).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let opts = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = match client.watch(source.key_prefix(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(revision, "cannot watch the records: {e}; retrying");
                mark_incomplete(&tx);
                need_load = true;
                if sleep_or_cancel(&mut delays, &cancel, &beat).await {
                    return;
                }
                continue;
            }
        };
        loop {
            beat.beat();
            let msg = tokio::select! {
                () = cancel.cancelled() => return,
                _ = alive.tick() => continue,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            tracing::warn!(
                                revision,
                                compacted_to = resp.compact_revision(),
                                "the revision to watch from was compacted: loading the whole prefix again"
                            );
                        } else {
                            tracing::warn!(reason = resp.cancel_reason(), "etcd cancelled the watch; loading again");
                        }
                        mark_incomplete(&tx);
                        break;
                    }
                    let events = resp.events();
                    if events.is_empty() {
                        continue;
                    }
                    delays = backoff();
                    let mut touched: Vec<&[u8]> = Vec::with_capacity(events.len());
                    for ev in events {
                        let Some(kv) = ev.kv() else { continue };
                        touched.push(kv.key());
                        match ev.event_type() {
                            EventType::Put if kv.value().len() > MAX_VALUE => {
                                kvs.remove(kv.key());
                                oversize.note(&Oversized {
                                    key: kv.key().to_vec(),
                                    len: Some(kv.value().len()),
                                });
                            }
                            EventType::Put => {
                                kvs.insert(kv.key().to_vec(), kv.value().to_vec());
                                oversize.forget(kv.key());
                            }
                            EventType::Delete => {
                                kvs.remove(kv.key());
                                oversize.forget(kv.key());
                            }
                        }
                        revision = revision.max(kv.mod_revision());
                    }
                    tx.send_replace(builder.update(&source, &kvs, touched, true, revision));
                }
                Ok(None) | Err(_) => {
                    let why = match msg {
                        Err(e) => e.to_string(),
                        _ => "stream ended".into(),
                    };
                    tracing::warn!(
                        revision,
                        "the watch broke ({why}); the view is incomplete until it is read again"
                    );
                    mark_incomplete(&tx);
                    break;
                }
            }
        }
        need_load = true;
        if sleep_or_cancel(&mut delays, &cancel, &beat).await {
            return;
        }
    }
}

fn mark_incomplete(tx: &watch::Sender<Desired>) {
    tx.send_if_modified(|d| {
        let was = d.complete;
        d.complete = false;
        was
    });
}

/// Retries of the read and the watch: the shared etcd outage policy, so the records are
/// read again within a second of etcd's return.
fn backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    sidekick::retry::etcd_outage().build()
}

/// Sleeps the next backoff delay; true when cancelled meanwhile.
async fn sleep_or_cancel(
    delays: &mut impl Iterator<Item = Duration>,
    cancel: &CancellationToken,
    beat: &Heartbeat,
) -> bool {
    let d = delays.next().unwrap_or(Duration::from_millis(500));
    tokio::select! {
        () = cancel.cancelled() => true,
        () = beat.sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use sidekick::schema::{Layout, Record};

    use super::*;

    impl Builder {
        /// What the builder remembers of each instance: its last endpoint and warning.
        fn memory(&self) -> Vec<(&str, Option<Endpoint>, Option<&str>)> {
            self.instances
                .iter()
                .map(|(name, i)| (name.as_str(), i.last_known, i.warned.as_deref()))
                .collect()
        }
    }

    fn record(instance: &str, ip: [u8; 4], port: u16) -> Record {
        Record {
            service: "web".into(),
            instance: instance.into(),
            unit: format!("monweb@{instance}.service"),
            host: "core01".into(),
            public_ipv4: Some([203, 0, 113, ip[3]].into()),
            private_ipv4: ip.into(),
            port,
            container_id: String::new(),
            container_name: String::new(),
        }
    }

    fn put(kvs: &mut BTreeMap<Vec<u8>, Vec<u8>>, rec: &Record, layout: Layout) {
        for (k, v) in rec.entries("/services", layout) {
            kvs.insert(k.into_bytes(), v.into_bytes());
        }
    }

    fn set(kvs: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &str, value: &str) {
        kvs.insert(key.as_bytes().to_vec(), value.as_bytes().to_vec());
    }

    fn ep(ip: [u8; 4], port: u16) -> Endpoint {
        Endpoint::new(IpAddr::from(ip), port)
    }

    #[test]
    fn fields_and_json_records_become_nodes() {
        let source = Source::new("/services/web/", AddressField::Private, None);
        assert_eq!(source.key_prefix(), "/services/web/");
        assert_eq!(source.service(), "web");
        let mut kvs = BTreeMap::new();
        put(&mut kvs, &record("web01", [10, 0, 0, 1], 8001), Layout::Fields);
        put(&mut kvs, &record("web02", [10, 0, 0, 2], 8002), Layout::Json);
        // Another service is not ours.
        set(&mut kvs, "/services/db/db_private_ip", "{\"value\": \"10.0.0.9\"}");
        let d = Builder::default().build(&source, &kvs, true, 5);
        let got: Vec<Endpoint> = d.nodes.keys().copied().collect();
        assert_eq!(got, vec![ep([10, 0, 0, 1], 8001), ep([10, 0, 0, 2], 8002)]);
        assert!(d.complete && d.unknown.is_empty());

        let public = Source::new("/services/web", AddressField::Public, Some(80));
        let d = Builder::default().build(&public, &kvs, true, 5);
        let got: Vec<Endpoint> = d.nodes.keys().copied().collect();
        assert_eq!(got, vec![ep([203, 0, 113, 1], 80), ep([203, 0, 113, 2], 80)]);
    }

    #[test]
    fn a_record_gone_bad_keeps_its_node_and_a_deleted_one_does_not() {
        let source = Source::new("/services/web", AddressField::Private, None);
        let mut b = Builder::default();
        let mut kvs = BTreeMap::new();
        put(&mut kvs, &record("web01", [10, 0, 0, 1], 8001), Layout::Fields);
        put(&mut kvs, &record("web02", [10, 0, 0, 2], 8002), Layout::Fields);
        b.build(&source, &kvs, true, 1);
        // web02's port turns to "abc": its last endpoint is held.
        set(&mut kvs, "/services/web/web02/port", "abc");
        let d = b.build(&source, &kvs, true, 2);
        assert_eq!(d.nodes.len(), 1);
        assert_eq!(d.held.get(&ep([10, 0, 0, 2], 8002)).map(String::as_str), Some("web02"));
        // Deleted: absent.
        kvs.retain(|k, _| !k.starts_with(b"/services/web/web02/"));
        let d = b.build(&source, &kvs, true, 3);
        assert!(d.held.is_empty() && d.nodes.len() == 1);
    }

    #[test]
    fn never_seen_bad_records_hold_their_address_or_all_removals() {
        let source = Source::new("/services/web", AddressField::Private, None);
        let mut kvs = BTreeMap::new();
        put(&mut kvs, &record("web01", [10, 0, 0, 1], 8001), Layout::Fields);
        // web03: no port key at all; web04: address not an IP.
        put(&mut kvs, &record("web03", [10, 0, 0, 3], 8003), Layout::Fields);
        kvs.remove(b"/services/web/web03/port".as_slice());
        put(&mut kvs, &record("web04", [10, 0, 0, 4], 8004), Layout::Fields);
        set(&mut kvs, "/services/web/web04/private_ipv4_addr", "not-an-ip");
        let d = Builder::default().build(&source, &kvs, true, 1);
        assert_eq!(d.nodes.len(), 1);
        assert_eq!(
            d.held_addresses.keys().copied().collect::<Vec<_>>(),
            vec![IpAddr::from([10, 0, 0, 3])]
        );
        assert_eq!(d.unknown.len(), 1);
        assert!(d.unknown[0].starts_with("web04"), "{:?}", d.unknown);
        // With a fixed node port, an address is all a record needs.
        let fixed = Source::new("/services/web", AddressField::Private, Some(80));
        let d = Builder::default().build(&fixed, &kvs, true, 1);
        assert!(d.nodes.contains_key(&ep([10, 0, 0, 3], 80)));
    }

    #[test]
    fn a_record_with_an_unsafe_name_is_no_node_and_is_shown_quoted() {
        let source = Source::new("/services/web", AddressField::Private, None);
        let mut kvs = BTreeMap::new();
        put(&mut kvs, &record("web01", [10, 0, 0, 1], 8001), Layout::Fields);
        // A good JSON record under a name with NUL bytes, and a bare port under a name
        // with a newline (which would forge a log line if printed as it is).
        put(&mut kvs, &record("w\x00\x002", [10, 0, 0, 2], 8002), Layout::Json);
        set(&mut kvs, "/services/web/web\n03/port", "8003");
        let d = Builder::default().build(&source, &kvs, true, 1);
        assert_eq!(
            d.nodes.keys().copied().collect::<Vec<_>>(),
            vec![ep([10, 0, 0, 1], 8001)]
        );
        // Its address alone is held, as for any unreadable record.
        assert_eq!(
            d.held_addresses.keys().copied().collect::<Vec<_>>(),
            vec![IpAddr::from([10, 0, 0, 2])]
        );
        assert_eq!(d.unknown.len(), 1, "{:?}", d.unknown);
        assert!(d.unknown[0].starts_with("\"web\\n03\": "), "{:?}", d.unknown);
        assert!(!d.unknown[0].contains('\n'), "{:?}", d.unknown);
    }

    /// A watch event decodes only the instances it touched; what comes out must be what
    /// decoding everything gives, whatever the events: random puts (good, bad, of both
    /// layouts, under names that start like others) and deletes, one or three keys an
    /// event, compared with a full build after each (each builder keeps its own memory of
    /// last endpoints and warnings, so those are compared too).
    #[test]
    fn updates_give_what_a_full_build_gives() {
        let source = Source::new("/services/web", AddressField::Private, None);
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        for (n, instance) in ["web1", "web10", "web1x", "w\n3"].into_iter().enumerate() {
            let rec = record(instance, [10, 0, 0, n as u8 + 1], 8000 + n as u16);
            for layout in [Layout::Fields, Layout::Json] {
                for (k, v) in rec.entries("/services", layout) {
                    let other = record(instance, [10, 0, 1, n as u8 + 1], 9000 + n as u16);
                    let alt = other.entries("/services", layout).into_iter().find(|(ok, _)| *ok == k);
                    let mut values = vec![v, "abc".to_owned()];
                    values.extend(alt.map(|(_, v)| v));
                    keys.push((k, values));
                }
            }
        }
        keys.push(("/services/web/web1/x/y".into(), vec!["1".into()]));
        keys.push(("/services/web/".into(), vec!["1".into()]));
        keys.push(("/services/webx/web1/port".into(), vec!["1".into()]));
        let (mut inc, mut full) = (Builder::default(), Builder::default());
        let mut kvs = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for step in 0..3000 {
            let mut touched = Vec::new();
            for _ in 0..if next(4) == 0 { 3 } else { 1 } {
                let (key, values) = &keys[next(keys.len())];
                match next(values.len() + 1) {
                    0 => kvs.remove(key.as_bytes()),
                    i => kvs.insert(key.as_bytes().to_vec(), values[i - 1].as_bytes().to_vec()),
                };
                touched.push(key.as_bytes().to_vec());
            }
            let got = inc.update(&source, &kvs, touched.iter().map(Vec::as_slice), true, step);
            let want = full.build(&source, &kvs, true, step);
            assert_eq!(got, want, "step {step}: {kvs:?}");
            assert_eq!(inc.memory(), full.memory(), "step {step}");
        }
    }
}
