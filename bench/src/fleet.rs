//! Benchmark 7 (issue 18): a fleet of simulated hosts against a three-member etcd, and
//! lb-sync with the HAProxy provider following every record of the fleet.
//!
//! Each host runs the announcer's own registry ([`announcer::registry::Registry`]: its
//! lease, its keep-alive task, its transactions and its resync), in this process, fed its
//! desired records directly instead of from Docker: [`Settings::records_per_host`] records
//! on 127.0.0.1, each on a port of its own where the harness listens (HAProxy's checks
//! connect and are answered by the listen backlog; nothing is accepted). A host talks to
//! "its own" member first, the hosts spread over the three members as a fleet is spread
//! over its etcd hosts. One `lb-sync --provider haproxy` (no node limit) follows every
//! record, through a counting forwarder in front of HAProxy's Runtime API socket
//! ([`crate::cliproxy`]). TTL [`TTL`] throughout.
//!
//! In order:
//! 1. every host announces at once; then lb-sync starts and adds every server;
//! 2. **steady state** ([`Settings::steady`]): etcd revisions, keep-alive messages the
//!    members received (their `grpc_server_msg_received_total` for `LeaseKeepAlive`), the
//!    members' CPU time and database size, lb-sync's RSS and CPU;
//! 3. **a registrator-style refresher** for two TTL periods: one put per record per TTL
//!    (registrator's `-ttl-refresh`), paced evenly, under a prefix lb-sync does not
//!    follow; the same figures;
//! 4. **one record changes** (its port), [`Settings::changes`] times, one after another:
//!    lb-sync's CPU time from just before the change to converged again (a fresh read,
//!    the plan, the new server added, the old one drained and deleted), and the Runtime
//!    API commands it sent;
//! 5. **a host dies**: its registry is dropped (no revoke: the keep-alives stop, its
//!    lease runs out): time from the death to the last of its servers drained;
//! 6. **ten hosts restart at once**: each a new registry with a new lease and the same
//!    records (it takes over its own earlier records): time until every record is on
//!    the new leases, etcd writes, HAProxy changes (none are needed);
//! 7. **the etcd leader is killed** (SIGKILL), then two TTL periods observed: records
//!    gone for a watcher on a surviving member, for a poller of every live member, and
//!    servers lb-sync drained or deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use announcer::ops::Ops;
use announcer::owner::Me;
use announcer::reconcile::{Announcement, Desired};
use announcer::registry::{self, Registry};
use anyhow::Context as _;
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use futures::StreamExt as _;
use sidekick::etcd::{EtcdArgs, EtcdConfig};
use sidekick::notify::Notifier;
use sidekick::schema::{Layout, Meta, Record};
use testbed::{Daemon, EtcdCluster, HaProxy, Start};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::cliproxy::{CliProxy, Kind, Tally};
use crate::process;
use crate::summary::{Goal, Section};

/// The lease TTL of every host.
pub const TTL: Duration = Duration::from_secs(10);
/// How often etcd looks for expired leases (its lessor's revoke loop): what a lease's
/// expiry adds to the TTL at most.
pub const LEASE_CHECK_MS: f64 = 500.0;
/// lb-sync's `--debounce` (as in the haproxy benchmark): its MIN is in the drain goal.
pub const DEBOUNCE: &str = crate::haproxy::DEBOUNCE;
/// The debounce MAX, in milliseconds: how long a burst of changes may delay a pass.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
/// 16 MiB: lb-sync's memory goal with the fleet's records.
pub const SIXTEEN_MIB: f64 = 16.0 * 1024.0 * 1024.0;
/// The label of etcd's keep-alive stream in its gRPC counters.
const KEEPALIVE_LABEL: &str = "grpc_method=\"LeaseKeepAlive\"";
/// Commands after which HAProxy sends a server no new request.
const OUT_OF_SERVICE: [Kind; 3] = [Kind::Drain, Kind::Maint, Kind::DelServer];
/// The keys of one record in the `fields` layout (unit, host, public, private, port).
pub const KEYS_PER_RECORD: usize = 5;
/// lb-sync's server checks: rare, so 5,000 servers cost HAProxy little, and lenient.
const CHECK_OPTIONS: &str = "inter 30s rise 1 fall 3";
/// The announcer's resync period (its default): each host reads every record under the
/// prefix this often.
const RESYNC: Duration = Duration::from_secs(60);

/// The numbers of this benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Simulated hosts (at least 3: one dies, others restart).
    pub hosts: usize,
    /// Records each host announces.
    pub records_per_host: usize,
    /// The steady window.
    pub steady: Duration,
    /// Single-record changes timed through lb-sync.
    pub changes: usize,
}

impl Settings {
    /// All records.
    #[must_use]
    pub fn records(&self) -> usize {
        self.hosts * self.records_per_host
    }

    /// Hosts restarted at once: ten, or as many as there are beside host 0 (whose
    /// records change) and the host that died.
    #[must_use]
    pub fn restarts(&self) -> usize {
        10.min(self.hosts.saturating_sub(2))
    }
}

/// Keep-alive requests per second the fleet may send: three per TTL per host (one lease
/// per host, renewed every TTL / 3).
#[must_use]
pub fn keepalive_goal(hosts: usize, ttl: Duration) -> f64 {
    hosts as f64 * 3.0 / ttl.as_secs_f64()
}

/// The most keep-alives per second a fleet keeping to [`keepalive_goal`] can show over a
/// measured `window`: each host sends one every TTL / 3, so a window that is not a whole
/// number of those periods holds one more per host than the average rate gives, or one
/// fewer, depending on where it starts. The announcer keeps to the rate exactly (an
/// interval of TTL / 3), so a count compared with the average alone is above it in about
/// half of the runs (30.003 a second for 30 in one) without a keep-alive too many.
#[must_use]
pub fn keepalive_allowance(hosts: usize, ttl: Duration, window: Duration) -> f64 {
    let w = window.as_secs_f64();
    if w <= 0.0 {
        return keepalive_goal(hosts, ttl);
    }
    let period = ttl.as_secs_f64() / 3.0;
    hosts as f64 * (w / period).ceil() / w
}

/// How long a dead host's servers may stay in service: the TTL, etcd's lease-expiry check
/// period, lb-sync's debounce MIN, and 100 ms for lb-sync's pass.
#[must_use]
pub fn drain_goal_ms(ttl: Duration) -> f64 {
    ttl.as_secs_f64() * 1000.0 + LEASE_CHECK_MS + crate::haproxy::DEBOUNCE_MIN_MS + 100.0
}

/// The goals of the fleet's figures; those of the keep-alives and of the drain depend on
/// the run's hosts and TTL, so they live with the section rather than in the fixed table.
#[must_use]
pub fn goals(s: &Settings) -> Vec<(&'static str, Goal)> {
    vec![
        ("steady_writes_per_ttl", Goal::Exactly(0.0)),
        ("keepalives_per_s", Goal::AtMost(keepalive_goal(s.hosts, TTL))),
        ("lb_sync_rss_bytes", Goal::AtMost(SIXTEEN_MIB)),
        ("lb_sync_pass_cpu_ms", Goal::AtMost(20.0)),
        ("host_death_to_drained_ms", Goal::AtMost(drain_goal_ms(TTL))),
        ("haproxy_calls_per_change", Goal::AtMost(1.0)),
        ("records_missing_during_leader_kill", Goal::Exactly(0.0)),
    ]
}

/// `count` events over `window`, per TTL period.
#[must_use]
pub fn per_ttl(count: f64, window: Duration, ttl: Duration) -> Option<f64> {
    (!window.is_zero()).then(|| count * ttl.as_secs_f64() / window.as_secs_f64())
}

/// `amount` over `window`, per minute.
#[must_use]
pub fn per_minute(amount: f64, window: Duration) -> Option<f64> {
    (!window.is_zero()).then(|| amount * 60.0 / window.as_secs_f64())
}

/// The slope of the least-squares line through `points` (`None` with fewer than two
/// distinct x).
#[must_use]
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The median of the rates between consecutive samples `(seconds, count)`, per second.
#[must_use]
pub fn median_rate(samples: &[(f64, u64)]) -> Option<f64> {
    let rates: Vec<f64> = samples
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| w[1].1.saturating_sub(w[0].1) as f64 / (w[1].0 - w[0].0))
        .collect();
    crate::stats::percentile(&rates, 50.0)
}

/// Records missing from a read of `present` keys when `expected` were there (a record
/// missing one key counts).
#[must_use]
pub fn missing_records(expected_keys: usize, present_keys: usize) -> usize {
    expected_keys.saturating_sub(present_keys).div_ceil(KEYS_PER_RECORD)
}

/// Bytes of `v` as a protobuf varint.
#[must_use]
pub fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes one key takes in a range answer (etcd's `KeyValue` message inside the repeated
/// `kvs` field): the client refuses an answer over 4 MiB, and the announcer's resync and
/// lb-sync's load then read key by key.
#[must_use]
pub fn kv_wire_len(
    key: usize,
    value: usize,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
) -> usize {
    let bytes = |n: usize| if n == 0 { 0 } else { 1 + varint_len(n as u64) + n };
    let int = |v: i64| if v == 0 { 0 } else { 1 + varint_len(v as u64) };
    let inner = bytes(key) + int(create_revision) + int(mod_revision) + int(version) + bytes(value) + int(lease);
    1 + varint_len(inner as u64) + inner
}

/// The client's largest answer (tonic's default decoding limit, kept on purpose).
pub const CLIENT_MAX_ANSWER: f64 = 4.0 * 1024.0 * 1024.0;

/// `items` starting at `first` and wrapping around: a host's members, its own first.
#[must_use]
pub fn rotate<T: Clone>(items: &[T], first: usize) -> Vec<T> {
    let n = items.len();
    (0..n).map(|k| items[(first + k) % n].clone()).collect()
}

/// The sum of the samples of the Prometheus counter `name` whose labels contain `label`
/// (`None` when there is none).
#[must_use]
pub fn metric_sum(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if !labels.contains(label) {
            continue;
        }
        if let Some(v) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Instance name of record `r` of host `h`: the hosts' names sort with their records.
#[must_use]
pub fn instance(h: usize, r: usize) -> String {
    format!("h{h:04}-r{r:03}")
}

/// The `--hostname` of host `h`.
#[must_use]
pub fn hostname(h: usize) -> String {
    format!("fleet-h{h:04}")
}

/// The server name lb-sync gives the endpoint 127.0.0.1:`port`.
#[must_use]
pub fn server(port: u16) -> String {
    format!("web/lb-sync-127.0.0.1:{port}")
}

fn announcement(h: usize, r: usize, port: u16) -> Announcement {
    let name = instance(h, r);
    Announcement {
        record: Record {
            service: "web".into(),
            instance: name.clone(),
            unit: format!("{name}.service"),
            host: hostname(h),
            public_ipv4: None,
            private_ipv4: Ipv4Addr::LOCALHOST,
            port,
            container_id: format!("{:064x}", h * 100_000 + r),
            container_name: name,
        },
        layout: Layout::Fields,
        meta: Meta::default(),
    }
}

/// One simulated host: a registry task and the channel its desired records go through.
struct Host {
    desired: watch::Sender<Desired>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Host {
    /// Connects host `h`'s registry (lease granted) and gives it `records`.
    async fn start(h: usize, endpoints: &[String], records: Desired) -> anyhow::Result<Host> {
        let config = etcd_config(rotate(endpoints, h % endpoints.len().max(1)))?;
        let settings = registry::Settings {
            prefix: "/services".into(),
            ttl: TTL,
            timeout: config.timeout,
            resync: RESYNC,
            owner: registry::Owner {
                me: Me {
                    hostname: hostname(h),
                    private_ipv4: Ipv4Addr::LOCALHOST,
                },
                only: None,
            },
        };
        let ops = Ops::new(Notifier::with_watchdog(None));
        let registry = Box::pin(Registry::connect(&config, settings, ops))
            .await
            .with_context(|| format!("host {h}: connect the registry"))?;
        // The records go in as a change, as the reconciler's first settled set does: the
        // registry syncs on a change (or its resync), not on the channel's first value.
        let (desired, rx) = watch::channel(Desired::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(registry.run(rx, stop.clone()));
        desired.send_replace(records);
        Ok(Host { desired, stop, task })
    }

    /// The host dies: the registry is dropped where it stands (its keep-alive task with
    /// it); its lease is not revoked and runs out.
    fn kill(&self) {
        self.task.abort();
    }

    /// A clean stop: the registry revokes its lease.
    async fn stop(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for Host {
    // A run that stops on an error leaves no registry running on.
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn etcd_config(endpoints: Vec<String>) -> anyhow::Result<EtcdConfig> {
    let args = EtcdArgs {
        etcd_timeout: Duration::from_secs(5),
        ..EtcdArgs::default()
    };
    args.resolve_with(endpoints, None).context("etcd options")
}

fn desired_of(h: usize, ports: &[u16]) -> Desired {
    let records = ports
        .iter()
        .enumerate()
        .map(|(r, port)| (("web".to_owned(), instance(h, r)), Arc::new(announcement(h, r, *port))))
        .collect();
    Desired {
        complete: true,
        settled: true,
        records,
    }
}

/// What the etcd members are doing, summed over the live ones.
#[derive(Clone, Copy, Debug, Default)]
struct EtcdSample {
    revision: i64,
    cpu_ticks: u64,
    keepalives: f64,
    db_bytes: i64,
}

/// The scene: etcd, HAProxy, the forwarder, lb-sync, one client per member.
struct Scene {
    etcd: EtcdCluster,
    ha: HaProxy,
    proxy: CliProxy,
    lb: Option<Daemon>,
    lb_listen: u16,
    /// One client per member (unbalanced), by member index.
    members: Vec<Client>,
}

impl Scene {
    async fn sample(&mut self) -> EtcdSample {
        let mut s = EtcdSample::default();
        for i in 0..self.members.len() {
            let Some(pid) = self.etcd.pid(i) else { continue };
            s.cpu_ticks += process::cpu_ticks(pid).map(|t| t.own()).unwrap_or_default();
            if let Some(text) = testbed::http_get(self.etcd.metrics_port(i), "/metrics") {
                s.keepalives +=
                    metric_sum(&text, "grpc_server_msg_received_total", KEEPALIVE_LABEL).unwrap_or_default();
            }
            let status = tokio::time::timeout(Duration::from_secs(2), self.members[i].status()).await;
            if let Ok(Ok(st)) = status {
                s.db_bytes = s.db_bytes.max(st.db_size());
                s.revision = s.revision.max(st.header().map(|h| h.revision()).unwrap_or_default());
            }
        }
        s
    }

    /// CPU ticks of the live members so far.
    fn cpu_ticks(&self) -> u64 {
        (0..self.members.len())
            .filter_map(|i| self.etcd.pid(i))
            .filter_map(|pid| process::cpu_ticks(pid).map(|t| t.own()))
            .sum()
    }

    /// Keep-alive messages received so far, summed over the live members.
    fn keepalives(&self) -> f64 {
        (0..self.members.len())
            .filter(|i| self.etcd.pid(*i).is_some())
            .filter_map(|i| testbed::http_get(self.etcd.metrics_port(i), "/metrics"))
            .filter_map(|text| metric_sum(&text, "grpc_server_msg_received_total", KEEPALIVE_LABEL))
            .sum()
    }

    fn lb_pid(&self) -> Option<u32> {
        self.lb.as_ref().map(Daemon::pid)
    }

    fn healthz(&self) -> String {
        testbed::http_get(self.lb_listen, "/healthz").unwrap_or_default()
    }

    /// Waits until `done` holds of the commands since `mark` and lb-sync says it converged.
    async fn wait_lb(
        &mut self,
        what: &str,
        mark: usize,
        within: Duration,
        done: impl Fn(&[crate::cliproxy::Sent]) -> bool,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(lb) = self.lb.as_mut()
                && let Some(status) = lb.try_exit()
            {
                anyhow::bail!("{what}: lb-sync exited ({status})\n{}", lb.excerpt());
            }
            if done(&self.proxy.since(mark)) && self.healthz().contains("\"converged\"") {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                let tally = Tally::of(&self.proxy.since(mark));
                anyhow::bail!(
                    "{what}: not done within {within:?} ({tally:?}); /healthz: {}\n{}",
                    self.healthz(),
                    self.lb.as_ref().map(Daemon::excerpt).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Keys under `prefix` on one member (a serializable read: what that member holds).
async fn count_keys(client: &mut Client, prefix: &str) -> Option<usize> {
    let opts = GetOptions::new().with_prefix().with_count_only().with_serializable();
    let r = tokio::time::timeout(Duration::from_secs(1), client.get(prefix, Some(opts))).await;
    match r {
        Ok(Ok(resp)) => usize::try_from(resp.count()).ok(),
        _ => None,
    }
}

/// Waits until `expected` keys are under `prefix`.
async fn wait_keys(client: &mut Client, prefix: &str, expected: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let n = count_keys(client, prefix).await;
        if n == Some(expected) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{prefix}: {n:?} keys after {within:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leases of the keys under `prefix`.
async fn leases_under(client: &mut Client, prefix: &str) -> anyhow::Result<Vec<i64>> {
    let r = client
        .get(prefix, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .with_context(|| format!("read {prefix}"))?;
    Ok(r.kvs().iter().map(etcd_client::KeyValue::lease).collect())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ticks_ms(ticks: u64) -> f64 {
    ticks as f64 * 1000.0 / process::clock_ticks_per_second()
}

/// Runs benchmark 7.
///
/// # Errors
/// When etcd, HAProxy or lb-sync fail, or a step does not complete in its time.
pub async fn run(ctx: &Ctx, s: Settings) -> (Section, anyhow::Result<()>) {
    let started = Instant::now();
    let mut section = Section::new("fleet");
    for (figure, goal) in goals(&s) {
        section.goal(figure, goal);
    }
    // A step that fails keeps the figures of the steps before it.
    let result = Box::pin(steps(ctx, s, &mut section)).await;
    section.note(format!(
        "{} simulated hosts, each the announcer's registry (lease TTL {} s, keep-alive every TTL/3, resync {} s, own etcd \
         member first, members spread over the hosts) in the harness process, fed {} records each (fields layout: {} \
         keys per record) on 127.0.0.1 ports where the harness listens; a three-member etcd on loopback (testbed); \
         lb-sync --provider haproxy --debounce {DEBOUNCE} --drain 5s --haproxy-check-options '{CHECK_OPTIONS}', \
         through a forwarder that counts its Runtime API calls; the fleet took {:.0} s",
        s.hosts,
        TTL.as_secs(),
        RESYNC.as_secs(),
        s.records_per_host,
        KEYS_PER_RECORD,
        started.elapsed().as_secs_f64()
    ));
    section.note(
        "steady: revisions (steady_writes_per_ttl), keep-alive messages the three members received \
         (grpc_server_msg_received_total, LeaseKeepAlive), the members' utime+stime and the largest db size, \
         over the window; lb_sync_rss_bytes = VmRSS after it; haproxy_calls_per_change = Runtime API calls \
         (connections) other than reads per server added, drained or deleted, over the single-record changes (a \
         port change: one server added, one drained, then deleted); lb_sync_pass_cpu_ms = lb-sync's CPU from just \
         before the change to converged, averaged (the threads' schedstat run time, in ns); host_death_to_drained = from dropping the \
         host's registry to HAProxy's answer to the last of its servers' drain; records_missing_during_leader_kill = \
         the most of: records a watcher on a surviving member saw deleted, records missing from a serializable \
         count on any live member (polled every 200 ms), servers lb-sync drained or deleted, over 2 TTLs after the kill",
    );
    (section, result)
}

/// The steps of [`run`], in order, each adding its figures to `section`.
async fn steps(ctx: &Ctx, s: Settings, section: &mut Section) -> anyhow::Result<()> {
    anyhow::ensure!(s.hosts >= 3, "the fleet needs at least 3 hosts, not {}", s.hosts);
    anyhow::ensure!(s.records_per_host >= 1, "the fleet needs at least 1 record per host");
    // Where HAProxy's checks connect: one listener per record, plus one per change.
    let listeners: Vec<TcpListener> = (0..s.records() + s.changes)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()
        .context("listen for HAProxy's checks")?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let (ports, spare) = ports.split_at(s.records());

    let etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints();
    let mut members = Vec::new();
    for e in &endpoints {
        members.push(
            Client::connect([e.as_str()], None)
                .await
                .with_context(|| format!("connect to {e}"))?,
        );
    }
    let ha = HaProxy::start();
    let proxy = CliProxy::start(&ha.socket())?;
    let mut scene = Scene {
        etcd,
        ha,
        proxy,
        lb: None,
        lb_listen: testbed::free_port(),
        members,
    };
    let mut client = scene.etcd.client().await;

    // 1. Every host announces at once.
    let rev0 = scene.sample().await.revision;
    let t0 = Instant::now();
    let mut desired: Vec<Desired> = (0..s.hosts)
        .map(|h| desired_of(h, &ports[h * s.records_per_host..(h + 1) * s.records_per_host]))
        .collect();
    let starts = futures::future::join_all((0..s.hosts).map(|h| Host::start(h, &endpoints, desired[h].clone()))).await;
    let mut hosts: Vec<Option<Host>> = Vec::new();
    for h in starts {
        hosts.push(Some(h?));
    }
    let all_keys = s.records() * KEYS_PER_RECORD;
    wait_keys(&mut client, "/services/web/", all_keys, Duration::from_secs(600)).await?;
    let announced = t0.elapsed();
    let rev1 = scene.sample().await.revision;
    section.add("hosts", s.hosts as f64);
    section.add("records_per_host", s.records_per_host as f64);
    section.add("records", s.records() as f64);
    section.add("ttl_s", TTL.as_secs_f64());
    section.add("announce_all_ms", ms(announced));
    section.add("announce_writes", (rev1 - rev0) as f64);
    eprintln!(
        "bench:   {} hosts announced {} records in {:.1} s ({} etcd revisions)",
        s.hosts,
        s.records(),
        announced.as_secs_f64(),
        rev1 - rev0
    );

    // lb-sync starts from a fresh read of every record and adds every server.
    let lb_log = ctx.log("lb-sync-fleet.log");
    let mut cmd = Command::new(&ctx.lb_sync);
    cmd.args(["--provider", "haproxy", "--haproxy-socket"])
        .arg(scene.proxy.path())
        .args(["--haproxy-backend", scene.ha.backend()])
        .args(["--haproxy-check-options", CHECK_OPTIONS])
        .args(["--etcd-endpoints", &endpoints.join(","), "--prefix", "/services/web"])
        .args(["--drain", "5s", "--debounce", DEBOUNCE])
        .args(["--listen", &format!("127.0.0.1:{}", scene.lb_listen)])
        .arg("run")
        .env_clear();
    let mark = scene.proxy.mark();
    let t0 = Instant::now();
    scene.lb = Some(
        Start::new("lb-sync-fleet")
            .log_to(&lb_log)
            .try_start(cmd)
            .context("start lb-sync")?,
    );
    let records = s.records();
    let converged = scene
        .wait_lb("lb-sync adds every server", mark, Duration::from_secs(300), |sent| {
            Tally::of(sent).added >= records
        })
        .await?;
    let first = Tally::of(&scene.proxy.since(mark));
    section.add("lb_sync_first_converge_ms", ms(converged - t0));
    section.add("lb_sync_first_converge_commands", (first.reads + first.changes) as f64);
    eprintln!(
        "bench:   lb-sync added {} servers in {:.1} s ({} commands, {} of them reads)",
        first.added,
        (converged - t0).as_secs_f64(),
        first.reads + first.changes,
        first.reads
    );
    let lb_pid = scene.lb_pid().context("lb-sync is running")?;

    // 2. Steady state.
    let a = scene.sample().await;
    let lb_a = process::cpu_ticks(lb_pid).unwrap_or_default().own();
    let mark = scene.proxy.mark();
    let t0 = Instant::now();
    // The keep-alive counter every second: the hosts started together, so their
    // keep-alives come in steps, and a count between two instants is off by up to one
    // per host; the slope of a line through every sample is not.
    // etcd's CPU every second too: each host's resync (a read of every record, once a
    // minute) comes in a burst; the median second is what the fleet costs between them.
    let mut counts = vec![(0.0, a.keepalives)];
    let mut cpu = vec![(0.0, a.cpu_ticks)];
    while t0.elapsed() + Duration::from_secs(1) < s.steady {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at = t0.elapsed().as_secs_f64();
        counts.push((at, scene.keepalives()));
        cpu.push((at, scene.cpu_ticks()));
    }
    tokio::time::sleep(s.steady.saturating_sub(t0.elapsed())).await;
    let b = scene.sample().await;
    let window = t0.elapsed();
    counts.push((window.as_secs_f64(), b.keepalives));
    let lb_b = process::cpu_ticks(lb_pid).unwrap_or_default().own();
    let steady_calls = Tally::of(&scene.proxy.since(mark));
    section.add("steady_window_s", window.as_secs_f64());
    section.add(
        "steady_writes_per_ttl",
        per_ttl((b.revision - a.revision) as f64, window, TTL),
    );
    // The count over the window, against the most three keep-alives per TTL per host can
    // put in it (`keepalive_allowance`); the slope through the per-second samples is kept
    // as a figure (it estimates the average rate, which is the goal itself).
    section.add("keepalives_per_s", (b.keepalives - a.keepalives) / window.as_secs_f64());
    section.add("keepalives_per_s_slope", slope(&counts));
    section.add("keepalives_in_window", b.keepalives - a.keepalives);
    section.goal(
        "keepalives_per_s",
        Goal::AtMost(keepalive_allowance(s.hosts, TTL, window)),
    );
    section.add(
        "etcd_cpu_s_per_min",
        per_minute(ticks_ms(b.cpu_ticks - a.cpu_ticks) / 1000.0, window),
    );
    section.add(
        "etcd_cpu_s_per_min_median_second",
        median_rate(&cpu).map(|t| t * 60.0 / process::clock_ticks_per_second()),
    );
    section.add("etcd_db_bytes", b.db_bytes as f64);
    section.add(
        "etcd_db_growth_bytes_per_min",
        per_minute((b.db_bytes - a.db_bytes) as f64, window),
    );
    section.add("lb_sync_cpu_ms_per_min", per_minute(ticks_ms(lb_b - lb_a), window));
    section.add("lb_sync_steady_haproxy_changes", steady_calls.changes as f64);
    section.add("lb_sync_rss_bytes", process::rss_bytes(lb_pid).map(|b| b as f64));
    section.add(
        "lb_sync_peak_rss_bytes",
        process::peak_rss_bytes(lb_pid).map(|b| b as f64),
    );
    eprintln!(
        "bench:   steady {:.0} s: {} revisions, {:.1} keep-alives/s, etcd CPU {:.2} s, db {} bytes",
        window.as_secs_f64(),
        b.revision - a.revision,
        (b.keepalives - a.keepalives) / window.as_secs_f64(),
        ticks_ms(b.cpu_ticks - a.cpu_ticks) / 1000.0,
        b.db_bytes
    );

    sizes(&mut scene, section, &s).await?;

    // 3. A registrator-style refresher: every record rewritten once per TTL.
    refresher(&mut scene, &mut client, section, s.records(), ports).await?;

    // 4. One record changes, one change after another.
    let mut cpu_ms = Vec::new();
    let mut converge_ms = Vec::new();
    let mut change_log = Vec::new();
    for (i, new_port) in spare.iter().enumerate() {
        let r = i % s.records_per_host;
        let key = ("web".to_owned(), instance(0, r));
        let old_port = desired[0].records.get(&key).map(|a| a.record.port).unwrap_or_default();
        if let Some(a) = desired[0].records.get_mut(&key) {
            Arc::make_mut(a).record.port = *new_port;
        }
        let mark = scene.proxy.mark();
        let cpu0 = process::cpu_ns(lb_pid).unwrap_or_default();
        let t0 = Instant::now();
        if let Some(h) = &hosts[0] {
            h.desired.send_replace(desired[0].clone());
        }
        let gone = server(old_port);
        let at = scene
            .wait_lb("one record changes", mark, Duration::from_secs(30), |sent| {
                sent.iter()
                    .any(|x| x.servers(&[Kind::DelServer]).contains(&gone.as_str()))
            })
            .await?;
        let cpu1 = process::cpu_ns(lb_pid).unwrap_or_default();
        cpu_ms.push(cpu1.saturating_sub(cpu0) as f64 / 1e6);
        converge_ms.push(ms(at - t0));
        change_log.extend(scene.proxy.since(mark));
    }
    if !spare.is_empty() {
        let n = spare.len() as f64;
        let tally = Tally::of(&change_log);
        section.add("changes", n);
        section.add("lb_sync_pass_cpu_ms", cpu_ms.iter().sum::<f64>() / n);
        section.add("change_converge_ms", converge_ms.iter().sum::<f64>() / n);
        section.add("haproxy_calls_per_change", tally.per_server_changed());
        section.add("haproxy_commands_per_change", tally.changes as f64 / n);
        section.add("haproxy_reads_per_change", tally.reads as f64 / n);
        // What one read of the whole backend costs, with the planning on it: the CPU over
        // the `show servers state` reads (a drain's `show stat` is of one server).
        let full_reads = change_log
            .iter()
            .filter(|x| x.command.starts_with("show servers state"))
            .count();
        if full_reads > 0 {
            section.add("lb_sync_full_reads_per_change", full_reads as f64 / n);
            section.add(
                "lb_sync_cpu_ms_per_full_read",
                cpu_ms.iter().sum::<f64>() / full_reads as f64,
            );
        }
        eprintln!(
            "bench:   {} single-record changes: lb-sync CPU {:.1} ms each, {:.0} ms to converge; per change {:.1} \
             commands and {:.1} reads for {:.1} servers changed",
            spare.len(),
            cpu_ms.iter().sum::<f64>() / n,
            converge_ms.iter().sum::<f64>() / n,
            tally.changes as f64 / n,
            tally.reads as f64 / n,
            tally.servers_changed() as f64 / n
        );
    }

    // 5. A host dies.
    let dead = s.hosts - 1;
    let dead_servers: BTreeSet<String> = desired[dead].records.values().map(|a| server(a.record.port)).collect();
    let mark = scene.proxy.mark();
    let rev_before = scene.sample().await.revision;
    let t0 = Instant::now();
    if let Some(h) = hosts[dead].take() {
        h.kill();
    }
    let drained_at = wait_drained(&mut scene, mark, &dead_servers, TTL + Duration::from_secs(30)).await?;
    let servers = dead_servers.clone();
    scene
        .wait_lb(
            "the dead host's servers deleted",
            mark,
            Duration::from_secs(30),
            move |sent| {
                let gone: BTreeSet<&str> = sent.iter().flat_map(|x| x.servers(&[Kind::DelServer])).collect();
                servers.iter().all(|n| gone.contains(n.as_str()))
            },
        )
        .await?;
    let death = Tally::of(&scene.proxy.since(mark));
    let rev_after = scene.sample().await.revision;
    section.add("host_death_to_drained_ms", ms(drained_at - t0));
    section.add("host_death_haproxy_commands", death.changes as f64);
    section.add("host_death_haproxy_reads", death.reads as f64);
    section.add("host_death_writes", (rev_after - rev_before) as f64);
    eprintln!(
        "bench:   a host died: its {} servers drained {:.0} ms later; {} commands and {} reads to drain and delete them",
        dead_servers.len(),
        ms(drained_at - t0),
        death.changes,
        death.reads
    );

    // 6. Hosts restart at once.
    let restarted: Vec<usize> = (1..=s.restarts()).collect();
    let mut old_leases = BTreeMap::new();
    for &h in &restarted {
        let leases = leases_under(&mut client, &format!("/services/web/h{h:04}-")).await?;
        old_leases.insert(h, leases.into_iter().collect::<BTreeSet<i64>>());
    }
    let mark = scene.proxy.mark();
    let rev_before = scene.sample().await.revision;
    let t0 = Instant::now();
    for &h in &restarted {
        if let Some(old) = hosts[h].take() {
            old.kill();
        }
    }
    let starts = futures::future::join_all(
        restarted
            .iter()
            .map(|&h| Host::start(h, &endpoints, desired[h].clone())),
    )
    .await;
    for (&h, started) in restarted.iter().zip(starts) {
        hosts[h] = Some(started?);
    }
    let per_host_keys = s.records_per_host * KEYS_PER_RECORD;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = true;
        for &h in &restarted {
            let leases = leases_under(&mut client, &format!("/services/web/h{h:04}-")).await?;
            let old = old_leases.get(&h).cloned().unwrap_or_default();
            if leases.len() != per_host_keys || leases.iter().any(|l| old.contains(l)) {
                all = false;
                break;
            }
        }
        if all {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "restarted hosts did not rewrite their records within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rewritten = t0.elapsed();
    let rev_after = scene.sample().await.revision;
    // lb-sync has seen every rewrite once its debounce MAX is past.
    tokio::time::sleep(DEBOUNCE_MAX + Duration::from_millis(500)).await;
    scene
        .wait_lb("after the restarts", mark, Duration::from_secs(30), |_| true)
        .await?;
    let restart = Tally::of(&scene.proxy.since(mark));
    section.add("restart_hosts", restarted.len() as f64);
    section.add("restart_rewrite_ms", ms(rewritten));
    section.add("restart_writes", (rev_after - rev_before) as f64);
    section.add("restart_haproxy_changes", restart.changes as f64);
    eprintln!(
        "bench:   {} hosts restarted at once: every record on the new leases in {:.0} ms, {} etcd revisions, {} HAProxy changes",
        restarted.len(),
        ms(rewritten),
        rev_after - rev_before,
        restart.changes
    );

    // 7. The etcd leader is killed.
    leader_kill(
        &mut scene,
        section,
        (s.hosts - 1) * s.records_per_host * KEYS_PER_RECORD,
    )
    .await?;

    // Clean stops: leases revoked, lb-sync terminated.
    futures::future::join_all(hosts.into_iter().flatten().map(Host::stop)).await;
    if let Some(mut lb) = scene.lb.take() {
        let _ = lb.terminate_blocking(Duration::from_secs(10));
    }
    drop(listeners);
    Ok(())
}

/// Waits until every one of `servers` has been drained (or put in maintenance, or
/// deleted) by a command answered since `mark`; the time of the last of them.
async fn wait_drained(
    scene: &mut Scene,
    mark: usize,
    servers: &BTreeSet<String>,
    within: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let sent = scene.proxy.since(mark);
        let mut first: BTreeMap<&str, Instant> = BTreeMap::new();
        for x in &sent {
            for name in x.servers(&OUT_OF_SERVICE) {
                first.entry(name).or_insert(x.at);
            }
        }
        let times: Vec<Instant> = servers.iter().filter_map(|n| first.get(n.as_str()).copied()).collect();
        if times.len() == servers.len() {
            return times.into_iter().max().context("no server to drain");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {} servers drained after {within:?}\n{}",
            times.len(),
            servers.len(),
            scene.lb.as_ref().map(Daemon::excerpt).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What one full read costs at this size, against the limits that stop a larger fleet:
/// the client's 4 MiB answer (a range read of the records) and lb-sync's cap on a
/// Runtime API answer (`show stat`, `show servers state`).
async fn sizes(scene: &mut Scene, section: &mut Section, s: &Settings) -> anyhow::Result<()> {
    let records = s.records();
    let resp = scene.members[0]
        .get("/services/web/", Some(GetOptions::new().with_prefix()))
        .await
        .context("read every record")?;
    let bytes: usize = resp
        .kvs()
        .iter()
        .map(|kv| {
            kv_wire_len(
                kv.key().len(),
                kv.value().len(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .sum();
    let per_record = bytes as f64 / records.max(1) as f64;
    section.add("records_read_bytes", bytes as f64);
    section.add("records_at_client_limit", (CLIENT_MAX_ANSWER / per_record).floor());
    // Every host reads every record once per resync: what the fleet reads from etcd.
    let per_min = s.hosts as f64 * bytes as f64 * 60.0 / RESYNC.as_secs_f64();
    section.add("resync_read_bytes_per_min", per_min);
    let backend = scene.ha.backend();
    let cap = lb_sync::haproxy::MAX_ANSWER as f64;
    let stat = scene
        .ha
        .try_command(&format!("show stat {backend} 4 -1"))
        .unwrap_or_default()
        .len();
    let state = scene
        .ha
        .try_command(&format!("show servers state {backend}"))
        .unwrap_or_default()
        .len();
    section.add("haproxy_show_stat_bytes", stat as f64);
    section.add("haproxy_servers_state_bytes", state as f64);
    let per_server = stat.max(state) as f64 / records.max(1) as f64;
    section.add("servers_at_lb_sync_answer_cap", (cap / per_server).floor());
    eprintln!(
        "bench:   one read of every record: {bytes} bytes ({per_record:.0} per record: {:.0} records fit the client's 4 MiB); \
         show stat {stat} bytes, show servers state {state} bytes ({:.0} servers fit lb-sync's {} MiB cap)",
        CLIENT_MAX_ANSWER / per_record,
        cap / per_server,
        lb_sync::haproxy::MAX_ANSWER >> 20
    );
    Ok(())
}

/// Step 3: one put per record per TTL, paced evenly, for two TTL periods.
async fn refresher(
    scene: &mut Scene,
    client: &mut Client,
    section: &mut Section,
    records: usize,
    ports: &[u16],
) -> anyhow::Result<()> {
    let window = TTL * 2;
    // A grant can time out on a machine this loaded: try again before giving up.
    let mut grant = Err(anyhow::anyhow!("no attempt"));
    for _ in 0..5 {
        match client
            .lease_grant(i64::try_from(TTL.as_secs() * 3).unwrap_or(30), None)
            .await
        {
            Ok(r) => {
                grant = Ok(r.id());
                break;
            }
            Err(e) => grant = Err(e.into()),
        }
    }
    let lease = grant.context("refresher lease")?;
    let gap = TTL / u32::try_from(records.max(1)).unwrap_or(u32::MAX);
    let total = records * 2;
    let a = scene.sample().await;
    let t0 = tokio::time::Instant::now();
    let failed = Arc::new(Mutex::new(0usize));
    futures::stream::iter(0..total)
        .map(|n| {
            let mut c = client.clone();
            let failed = failed.clone();
            let key = format!("/refresher/web/{}", n % records);
            let value = format!("127.0.0.1:{}", ports.get(n % records).copied().unwrap_or_default());
            async move {
                tokio::time::sleep_until(t0 + gap * u32::try_from(n).unwrap_or(u32::MAX)).await;
                if c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
                    .is_err()
                {
                    *failed.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let b = scene.sample().await;
    let took = t0.elapsed();
    let _ = client.lease_revoke(lease).await;
    let failed = *failed.lock().unwrap_or_else(PoisonError::into_inner);
    section.add("refresher_writes_per_ttl_computed", records as f64);
    section.add(
        "refresher_writes_per_ttl",
        per_ttl((b.revision - a.revision) as f64, took, TTL),
    );
    section.add(
        "refresher_etcd_cpu_s_per_min",
        per_minute(ticks_ms(b.cpu_ticks - a.cpu_ticks) / 1000.0, took),
    );
    section.add(
        "refresher_db_growth_bytes_per_min",
        per_minute((b.db_bytes - a.db_bytes) as f64, took),
    );
    section.add("refresher_failed_writes", failed as f64);
    eprintln!(
        "bench:   registrator-style refresher: {} puts in {:.1} s (planned {:.0} s), {} revisions, etcd CPU {:.2} s, {} failed",
        total,
        took.as_secs_f64(),
        window.as_secs_f64(),
        b.revision - a.revision,
        ticks_ms(b.cpu_ticks - a.cpu_ticks) / 1000.0,
        failed
    );
    Ok(())
}

/// Step 7: kill the leader, watch for two TTL periods.
async fn leader_kill(scene: &mut Scene, section: &mut Section, expected_keys: usize) -> anyhow::Result<()> {
    let leader = scene.etcd.leader().await.context("no etcd leader")?;
    let survivors: Vec<usize> = (0..scene.members.len()).filter(|i| *i != leader).collect();
    let watch_on = survivors.first().copied().context("no surviving member")?;
    // A watcher on a member that survives: every record deleted is seen.
    let mut wc = Client::connect([scene.etcd.endpoint(watch_on)], None)
        .await
        .context("connect the watcher")?;
    let mut stream = wc
        .watch("/services/web/", Some(WatchOptions::new().with_prefix()))
        .await
        .context("watch the records")?;
    let deleted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let sink = deleted.clone();
    let watcher = tokio::spawn(async move {
        let _wc = wc;
        while let Ok(Some(msg)) = stream.message().await {
            for e in msg.events() {
                if e.event_type() == EventType::Delete
                    && let Some(kv) = e.kv()
                {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let inst = key.split('/').nth(3).unwrap_or_default().to_owned();
                    sink.lock().unwrap_or_else(PoisonError::into_inner).insert(inst);
                }
            }
        }
    });
    // A poller of every live member.
    let stop = CancellationToken::new();
    let worst = Arc::new(Mutex::new(0usize));
    let mut pollers = Vec::new();
    for i in 0..scene.members.len() {
        let (mut c, stop, worst) = (scene.members[i].clone(), stop.clone(), worst.clone());
        pollers.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Some(n) = count_keys(&mut c, "/services/web/").await {
                    let m = missing_records(expected_keys, n);
                    let mut w = worst.lock().unwrap_or_else(PoisonError::into_inner);
                    *w = (*w).max(m);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    // Both readers see everything before the kill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = *worst.lock().unwrap_or_else(PoisonError::into_inner);
    anyhow::ensure!(before == 0, "{before} records missing before the leader was killed");
    let mark = scene.proxy.mark();
    let t0 = Instant::now();
    scene.etcd.kill(leader);
    let mut elected = None;
    while t0.elapsed() < TTL * 2 {
        if elected.is_none()
            && let Some(l) = scene.etcd.leader().await
            && l != leader
        {
            elected = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for p in pollers {
        let _ = p.await;
    }
    watcher.abort();
    let sent = scene.proxy.since(mark);
    let lb_lost: BTreeSet<&str> = sent.iter().flat_map(|x| x.servers(&OUT_OF_SERVICE)).collect();
    let watch_lost = deleted.lock().unwrap_or_else(PoisonError::into_inner).len();
    let polled_lost = *worst.lock().unwrap_or_else(PoisonError::into_inner);
    let missing = watch_lost.max(polled_lost).max(lb_lost.len());
    section.add("leader_kill_new_leader_ms", elected.map(ms));
    section.add("records_missing_during_leader_kill", missing as f64);
    section.add("leader_kill_deleted_seen_by_watch", watch_lost as f64);
    section.add("leader_kill_missing_polled", polled_lost as f64);
    section.add("leader_kill_haproxy_changes", Tally::of(&sent).changes as f64);
    eprintln!(
        "bench:   etcd leader (member {leader}) killed: new leader after {:?}; records missing: watch {watch_lost}, polls \
         {polled_lost}, lb-sync drained {}",
        elected,
        lb_lost.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_scale_with_the_fleet() {
        let s = Settings {
            hosts: 100,
            records_per_host: 50,
            steady: Duration::from_secs(60),
            changes: 5,
        };
        assert_eq!(s.records(), 5000);
        assert_eq!(s.restarts(), 10);
        assert_eq!(Settings { hosts: 5, ..s }.restarts(), 3);
        assert_eq!(Settings { hosts: 2, ..s }.restarts(), 0);
        // 100 hosts, TTL 10 s: 30 keep-alives a second at most.
        assert!((keepalive_goal(100, TTL) - 30.0).abs() < 1e-9);
        assert!((keepalive_goal(25, Duration::from_secs(5)) - 15.0).abs() < 1e-9);
        // Over 60 s (18 periods of 10/3 s) exactly the rate; over 62 s, 19 periods'
        // worth: one more per host. Never less than the rate.
        assert!((keepalive_allowance(100, TTL, Duration::from_secs(60)) - 30.0).abs() < 1e-9);
        let w = Duration::from_secs(62);
        assert!((keepalive_allowance(100, TTL, w) - 1900.0 / 62.0).abs() < 1e-9);
        for ms in [1_000, 3_333, 3_334, 59_999, 61_500, 62_043] {
            let w = Duration::from_millis(ms);
            assert!(
                keepalive_allowance(100, TTL, w) >= keepalive_goal(100, TTL) - 1e-9,
                "{ms}"
            );
            // And never more than one keep-alive per host above it.
            assert!(
                keepalive_allowance(100, TTL, w) <= keepalive_goal(100, TTL) + 100.0 / w.as_secs_f64() + 1e-9,
                "{ms}"
            );
        }
        // 10 s + 500 ms + debounce MIN 100 ms + 100 ms.
        assert!((drain_goal_ms(TTL) - 10_700.0).abs() < 1e-9);
        let g: BTreeMap<&str, Goal> = goals(&s).into_iter().collect();
        assert_eq!(g["keepalives_per_s"], Goal::AtMost(30.0));
        assert_eq!(g["host_death_to_drained_ms"], Goal::AtMost(10_700.0));
        assert_eq!(g["lb_sync_rss_bytes"], Goal::AtMost(16.0 * 1024.0 * 1024.0));
        assert_eq!(g["steady_writes_per_ttl"], Goal::Exactly(0.0));
        assert_eq!(g["records_missing_during_leader_kill"], Goal::Exactly(0.0));
        assert_eq!(g["lb_sync_pass_cpu_ms"], Goal::AtMost(20.0));
        assert_eq!(g["haproxy_calls_per_change"], Goal::AtMost(1.0));
        assert_eq!(
            goals(&Settings { hosts: 10, ..s })[1],
            ("keepalives_per_s", Goal::AtMost(3.0))
        );
    }

    #[test]
    fn rates_per_ttl_and_per_minute() {
        let cases = [
            // (count, window s) -> per TTL of 10 s
            ((0.0, 60.0), Some(0.0)),
            ((10_000.0, 20.0), Some(5000.0)),
            ((3.0, 60.0), Some(0.5)),
            ((5.0, 0.0), None),
        ];
        for ((count, window), want) in cases {
            assert_eq!(
                per_ttl(count, Duration::from_secs_f64(window), TTL),
                want,
                "{count} in {window} s"
            );
        }
        assert_eq!(per_minute(1.5, Duration::from_secs(30)), Some(3.0));
        assert_eq!(per_minute(1.5, Duration::ZERO), None);
    }

    #[test]
    fn the_rate_of_a_staircase_is_its_slope_not_its_end_points() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 3.0)]), None);
        assert_eq!(slope(&[]), None);
        // 100 hosts in step, one keep-alive each every 10/3 s from 0.2 s on, sampled every
        // second for 60.5 s: the end points hold 19 steps (31.4/s), the slope says 30/s.
        let step = 10.0 / 3.0;
        let count = |t: f64| 100.0 * ((t - 0.2) / step).floor().max(-1.0) + 100.0;
        let mut points: Vec<(f64, f64)> = (0..=60).map(|i| (f64::from(i), count(f64::from(i)))).collect();
        points.push((60.5, count(60.5)));
        let ends = (count(60.5) - count(0.0)) / 60.5;
        assert!(ends > 31.0, "{ends}");
        let rate = slope(&points).unwrap();
        assert!((rate - 30.0).abs() < 0.6, "{rate}");
    }

    #[test]
    fn the_median_second_leaves_out_a_burst() {
        // 2 ticks a second, and 40 in the second of the resync burst.
        let mut samples = vec![(0.0, 0u64)];
        let mut total = 0;
        for i in 1..=10u32 {
            total += if i == 6 { 40 } else { 2 };
            samples.push((f64::from(i), total));
        }
        assert_eq!(median_rate(&samples), Some(2.0));
        assert_eq!(median_rate(&samples[..1]), None);
    }

    #[test]
    fn a_record_missing_one_key_is_missing() {
        assert_eq!(missing_records(25_000, 25_000), 0);
        assert_eq!(missing_records(25_000, 24_999), 1);
        assert_eq!(missing_records(25_000, 24_750), 50);
        assert_eq!(missing_records(25_000, 24_749), 51);
        // More keys than expected (a record being rewritten): nothing missing.
        assert_eq!(missing_records(25_000, 25_005), 0);
    }

    #[test]
    fn each_host_starts_on_its_own_member() {
        let m = ["a", "b", "c"];
        assert_eq!(rotate(&m, 0), ["a", "b", "c"]);
        assert_eq!(rotate(&m, 1), ["b", "c", "a"]);
        assert_eq!(rotate(&m, 5), ["c", "a", "b"]);
        assert!(rotate::<&str>(&[], 3).is_empty());
    }

    #[test]
    fn keep_alive_messages_are_summed_from_etcds_metrics() {
        let text = "# HELP grpc_server_msg_received_total Total number of RPC stream messages received on the server.\n\
# TYPE grpc_server_msg_received_total counter\n\
grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 1234\n\
grpc_server_msg_received_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 7\n\
grpc_server_msg_received_total_other{grpc_method=\"LeaseKeepAlive\"} 99\n\
etcd_debugging_lease_renewed_total 12\n";
        let keepalive = "grpc_method=\"LeaseKeepAlive\"";
        assert_eq!(
            metric_sum(text, "grpc_server_msg_received_total", keepalive),
            Some(1234.0)
        );
        assert_eq!(metric_sum(text, "grpc_server_msg_received_total", ""), Some(1241.0));
        assert_eq!(metric_sum(text, "etcd_debugging_lease_renewed_total", ""), Some(12.0));
        assert_eq!(metric_sum(text, "grpc_server_started_total", keepalive), None);
    }

    #[test]
    fn the_wire_size_of_a_key_follows_protobuf() {
        let cases = [
            (0, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ];
        for (v, len) in cases {
            assert_eq!(varint_len(v), len, "{v}");
        }
        // key 10 bytes (1+1+10), value 4 (1+1+4), revisions 300 (1+2 each), version 1 (1+1),
        // lease 2^40 (1+6): 33 bytes inside, 1 + 1 around.
        assert_eq!(kv_wire_len(10, 4, 300, 300, 1, 1 << 40), 35);
        // Zero fields are left out, as protobuf 3 does.
        assert_eq!(kv_wire_len(10, 0, 1, 1, 1, 0), 2 + 12 + 2 + 2 + 2);
    }

    #[test]
    fn names_sort_by_host_and_name_the_servers_lb_sync_adds() {
        assert_eq!(instance(7, 3), "h0007-r003");
        assert!(instance(9, 49) < instance(10, 0));
        assert_eq!(hostname(99), "fleet-h0099");
        assert_eq!(server(8080), "web/lb-sync-127.0.0.1:8080");
        let a = announcement(3, 4, 9000);
        let keys: Vec<String> = a
            .record
            .entries("/services", a.layout)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys.len(), KEYS_PER_RECORD);
        assert!(
            keys.iter().all(|k| k.starts_with("/services/web/h0003-r004/")),
            "{keys:?}"
        );
        // The restart's read of one host's records does not reach another's.
        assert!(!instance(10, 0).starts_with("h0001-"));
    }
}
