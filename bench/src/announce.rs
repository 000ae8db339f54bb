//! Benchmarks 1, 2 and 4: the announcer in `host` mode against a bare etcd transaction.
//!
//! 1. **Announce**: N stand-in containers (labelled `announce.service`) are started in a
//!    burst. Latency of each = arrival of the watch message that completes its record
//!    minus Docker's `timeNano` of its `start` event. In the same burst, on each `start`
//!    event the harness itself writes a record of the same size (five puts on a lease in
//!    one transaction): the bare transaction, timed from the moment it is issued to the
//!    arrival of its watch message. Nothing can announce faster than that.
//! 2. **Footprint**: more containers up to the footprint's record count, then an idle
//!    window: the announcer's RSS, its CPU time, and the etcd revisions its records used.
//! 3. **Withdraw**: every container is stopped (`docker stop`); latency = arrival of the
//!    delete minus Docker's `timeNano` of the `die` event (also from the `kill` event
//!    `docker stop` sends first, which the announcer already acts on).

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bollard::Docker;
use etcd_client::{PutOptions, Txn, TxnOp};
use sidekick::schema::{Layout, Record, field};
use testbed::{Daemon, Start};
use tokio::sync::mpsc;

use crate::Ctx;
use crate::containers::{self, RUN_LABEL};
use crate::observe::{self, DockerRecorder, EtcdRecorder, ms_between, nanos};
use crate::process;
use crate::stats::{self, Dist};
use crate::summary::Section;

/// The service name of the stand-ins.
const SERVICE: &str = "benchweb";
/// Where the bare transactions write.
const BARE: &str = "/bench-bare";
/// The announcer's lease TTL (its default).
const TTL: Duration = Duration::from_secs(10);

/// What the announce benchmark hands back.
#[derive(Debug)]
pub struct Outcome {
    /// Benchmark 1.
    pub announce: Section,
    /// Benchmark 2.
    pub withdraw: Section,
    /// Announce latencies (ms), for the plot.
    pub ours_ms: Vec<f64>,
    /// Bare transaction latencies (ms), for the plot.
    pub bare_ms: Vec<f64>,
}

/// Starts the announcer as a [`Daemon`], its log in the output directory.
fn start_announcer(ctx: &Ctx, endpoint: &str) -> anyhow::Result<Daemon> {
    let log = ctx.log("announcer.log");
    let mut cmd = Command::new(&ctx.announcer);
    cmd.args(["--etcd-endpoints", endpoint])
        .args(["--public-ipv4", "127.0.0.1", "--private-ipv4", "127.0.0.1"])
        .args(["--hostname", &format!("bench-{}", ctx.run_id)])
        .args(["--ttl", &format!("{}s", TTL.as_secs())])
        .args(["--log-filter", &ctx.settings.announcer_log_filter])
        .args(&ctx.settings.announcer_args)
        .arg("host")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    Start::new("announcer")
        .log_to(&log)
        .try_start(cmd)
        .context("start the announcer")
}

/// Waits until the announcer has listed Docker (it is then ready to follow events).
async fn wait_ready(announcer: &mut Daemon) -> anyhow::Result<()> {
    let ready = testbed::eventually("the announcer lists Docker", Duration::from_secs(30), async || {
        if let Some(status) = announcer.try_exit() {
            return Some(Err(status));
        }
        announcer.log().contains("docker listed").then_some(Ok(()))
    })
    .await;
    match ready {
        Ok(Ok(())) => Ok(()),
        Ok(Err(status)) => anyhow::bail!("the announcer exited ({status}) at start\n{}", announcer.excerpt()),
        Err(e) => anyhow::bail!("{e}\n{}", announcer.excerpt()),
    }
}

/// The bare transaction of the harness: five puts on a lease in one transaction, like a
/// `fields` record, with the time it was issued.
async fn bare_txn(mut client: etcd_client::Client, lease: i64, name: String, issued: Arc<Mutex<HashMap<String, i64>>>) {
    let record = Record {
        service: "bare".into(),
        instance: name.clone(),
        unit: name.clone(),
        host: "bench".into(),
        public_ipv4: Some([127, 0, 0, 1].into()),
        private_ipv4: [127, 0, 0, 1].into(),
        port: 8080,
        container_id: String::new(),
        container_name: String::new(),
    };
    let ops: Vec<TxnOp> = record
        .entries(BARE, Layout::Fields)
        .into_iter()
        // entries() puts them under /bench-bare/bare/<name>/...
        .map(|(k, v)| TxnOp::put(k, v, Some(PutOptions::new().with_lease(lease))))
        .collect();
    let at = nanos(SystemTime::now());
    if let Ok(mut m) = issued.lock() {
        m.insert(name, at);
    }
    let _ = client.txn(Txn::new().and_then(ops)).await;
}

/// The bare delete of the harness: the bare record of `name` (written by [`bare_txn`] in
/// the burst) deleted in one transaction, like the announcer's withdraw, with the time it
/// was issued. Issued on the container's `kill`, while the 500 stops load Docker and the
/// disk: the reference a withdraw is compared with must meet what the withdraw meets.
async fn bare_delete(mut client: etcd_client::Client, name: String, issued: Arc<Mutex<HashMap<String, i64>>>) {
    let dir = format!("{BARE}/bare/{name}/");
    let at = nanos(SystemTime::now());
    if let Ok(mut m) = issued.lock() {
        m.insert(name, at);
    }
    let op = TxnOp::delete(dir, Some(etcd_client::DeleteOptions::new().with_prefix()));
    let _ = client.txn(Txn::new().and_then([op])).await;
}

/// Writes `announce-samples.csv` (one line per container, times in ns since the epoch)
/// and `etcd-events.csv` / `docker-events.csv` (everything the observers saw), for
/// profiling and for checking the figures by hand.
#[allow(clippy::too_many_arguments)]
fn write_samples(
    ctx: &Ctx,
    names: &[(String, String)],
    starts: &BTreeMap<String, observe::DockerEvent>,
    dies: &BTreeMap<String, observe::DockerEvent>,
    kills: &BTreeMap<String, observe::DockerEvent>,
    intervals: &BTreeMap<String, Vec<observe::Interval>>,
    issued: &HashMap<String, i64>,
    bare: &BTreeMap<String, Vec<observe::Interval>>,
) {
    use std::fmt::Write as _;
    let t = |e: Option<&observe::DockerEvent>| e.map(|e| e.time_ns.to_string()).unwrap_or_default();
    let mut out = String::from(
        "container,instance,start_ns,start_seen_ns,visible_ns,kill_ns,die_ns,gone_ns,bare_issued_ns,bare_visible_ns\n",
    );
    for (name, inst) in names {
        let iv = intervals.get(inst);
        let first = iv.and_then(|v| v.first());
        let last = iv.and_then(|v| v.last());
        let _ = writeln!(
            out,
            "{name},{inst},{},{},{},{},{},{},{},{}",
            t(starts.get(name)),
            starts.get(name).map(|e| e.at_ns.to_string()).unwrap_or_default(),
            first.map(|i| i.visible_ns.to_string()).unwrap_or_default(),
            t(kills.get(name)),
            t(dies.get(name)),
            last.and_then(|i| i.gone_ns).map(|g| g.to_string()).unwrap_or_default(),
            issued.get(name).map(ToString::to_string).unwrap_or_default(),
            bare.get(name)
                .and_then(|v| v.first())
                .map(|i| i.visible_ns.to_string())
                .unwrap_or_default(),
        );
    }
    let _ = std::fs::write(ctx.log("announce-samples.csv"), out);
}

/// The instance name of container `i`.
fn instance(i: usize) -> String {
    format!("i{i:04}")
}

/// Latencies (ms) of the records visible after their container's Docker event.
fn latencies(
    names: &[(String, String)],
    events: &BTreeMap<String, observe::DockerEvent>,
    intervals: &BTreeMap<String, Vec<observe::Interval>>,
) -> (Vec<f64>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (name, inst) in names {
        let Some(start) = events.get(name) else {
            missing.push(name.clone());
            continue;
        };
        let visible = intervals
            .get(inst)
            .and_then(|iv| observe::first_visible_after(iv, start.time_ns - 1_000_000_000));
        match visible {
            Some(iv) => out.push(ms_between(start.time_ns, iv.visible_ns)),
            None => missing.push(name.clone()),
        }
    }
    (out, missing)
}

/// When each container's change became the announcer's to make (the later of its event
/// reaching the announcer and its first passing check), from the announcer's `visible`
/// debug lines (`announcer::ops`): container name -> `ready_unix_ns`, the first line at
/// or after `from_ns` for each container.
fn readiness(log: &str, from_ns: i64) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for line in log
        .lines()
        .filter(|l| l.contains(" visible ") || l.ends_with(" visible"))
    {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .map(|v| v.trim_matches('"'))
        };
        let (Some(name), Some(ready)) = (
            field("container"),
            field("ready_unix_ns").and_then(|v| v.parse::<i64>().ok()),
        ) else {
            continue;
        };
        if ready >= from_ns {
            out.entry(name.to_owned()).or_insert(ready);
        }
    }
    out
}

fn add_dist(section: &mut Section, prefix: &str, d: Option<Dist>) {
    if let Some(d) = d {
        section.add(&format!("{prefix}_p50_ms"), d.p50);
        section.add(&format!("{prefix}_p90_ms"), d.p90);
        section.add(&format!("{prefix}_p99_ms"), d.p99);
        section.add(&format!("{prefix}_max_ms"), d.max);
    }
}

/// What the announcer added (`samples`, ms): its distribution as `{prefix}_*_ms`, its p99
/// over the bare transaction's (`{prefix}_over_bare_p99`, the target) and the count.
fn add_added(section: &mut Section, prefix: &str, samples: &[f64], bare: Option<Dist>) {
    let d = Dist::of(samples);
    add_dist(section, prefix, d);
    section.add(
        &format!("{prefix}_over_bare_p99"),
        d.zip(bare).and_then(|(o, b)| stats::ratio(o.p99, b.p99)),
    );
    section.add(&format!("{prefix}_samples"), samples.len() as f64);
}

async fn header_revision(client: &mut etcd_client::Client) -> anyhow::Result<i64> {
    let r = client
        .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
        .await
        .context("read the etcd revision")?;
    Ok(r.header().map(|h| h.revision()).unwrap_or_default())
}

/// Runs benchmarks 1, 2 and 4; footprint figures go into `footprint`.
///
/// # Errors
/// When a server cannot be started, the announcer fails, or Docker refuses a container.
pub async fn run(ctx: &Ctx, docker: &Docker, footprint: &mut Section) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let etcd = testbed::Etcd::start();
    let endpoint = etcd.endpoint();
    let mut client = etcd.client().await;
    let image = testbed::docker::busybox_image(docker).await;
    let run_label = format!("{RUN_LABEL}={}", ctx.run_id);
    let service_dir = format!("/services/{SERVICE}");
    let bare_dir = format!("{BARE}/bare");

    let watcher = EtcdRecorder::start(&endpoint, &["/services/", &format!("{BARE}/")]).await?;
    let (start_tx, mut start_rx) = mpsc::unbounded_channel::<(String, String)>();
    let events = DockerRecorder::start(docker, &run_label, Some(start_tx));
    let lease = client
        .lease_grant(3600, None)
        .await
        .context("grant the bare transactions' lease")?
        .id();
    let issued: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let issued_delete: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let bare_enabled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bare_delete_enabled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let issuer = {
        let (issued, issued_delete) = (issued.clone(), issued_delete.clone());
        let (enabled, delete_enabled) = (bare_enabled.clone(), bare_delete_enabled.clone());
        let client = client.clone();
        tokio::spawn(async move {
            while let Some((action, name)) = start_rx.recv().await {
                let on = |flag: &std::sync::atomic::AtomicBool| flag.load(std::sync::atomic::Ordering::SeqCst);
                if action == "start" && on(&enabled) {
                    tokio::spawn(bare_txn(client.clone(), lease, name, issued.clone()));
                } else if action == "kill"
                    && on(&delete_enabled)
                    && issued.lock().is_ok_and(|m| m.contains_key(&name))
                    && !issued_delete.lock().is_ok_and(|m| m.contains_key(&name))
                {
                    // The first `kill` of a container that has a bare record.
                    if let Ok(mut m) = issued_delete.lock() {
                        m.insert(name.clone(), 0);
                    }
                    tokio::spawn(bare_delete(client.clone(), name, issued_delete.clone()));
                }
            }
        })
    };

    let mut announcer = start_announcer(ctx, &endpoint)?;
    wait_ready(&mut announcer).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = announcer.pid();
    let rss_empty = process::rss_bytes(pid).unwrap_or_default() as f64;

    // --- 1. the burst -----------------------------------------------------------------
    let name_of = |i: usize| format!("bench-{}-{}", ctx.run_id, instance(i));
    let spec = |i: usize| {
        let inst = instance(i);
        containers::web_spec(
            &image,
            &ctx.run_id,
            &name_of(i),
            0,
            &[("announce.service", SERVICE), ("announce.instance", &inst)],
        )
    };
    eprintln!("bench:   creating {} containers ...", s.containers);
    let mut all = containers::create_all(docker, (0..s.containers).map(spec).collect(), 4).await;
    let burst_names: Vec<(String, String)> = (0..s.containers).map(|i| (name_of(i), instance(i))).collect();
    let cpu_before_burst = process::cpu_ticks(pid).unwrap_or_default();
    let burst_from = nanos(SystemTime::now());
    bare_enabled.store(true, std::sync::atomic::Ordering::SeqCst);
    eprintln!("bench:   starting {} containers in a burst ...", s.containers);
    let result = containers::start_all(docker, &all, s.concurrency).await;
    let all_visible = |n: usize, w: &EtcdRecorder| {
        let iv = observe::record_intervals(&w.events(), &service_dir, &field::ALL);
        iv.values().filter(|v| v.iter().any(|i| i.gone_ns.is_none())).count() >= n
    };
    let patience = Duration::from_secs(30) + Duration::from_millis(100) * u32::try_from(s.containers).unwrap_or(1000);
    let announced_all = result.is_ok()
        && testbed::eventually("every record is announced", patience, async || {
            all_visible(s.containers, &watcher).then_some(())
        })
        .await
        .is_ok();
    // The bare transactions of the last starts are in flight: let them land.
    let bare_all = testbed::eventually("every bare transaction lands", Duration::from_secs(10), async || {
        (observe::record_intervals(&watcher.events(), &bare_dir, &field::ALL).len() >= s.containers).then_some(())
    })
    .await
    .is_ok();
    bare_enabled.store(false, std::sync::atomic::Ordering::SeqCst);
    let cpu_after_burst = process::cpu_ticks(pid).unwrap_or_default();
    if let Err(e) = result {
        containers::remove_all(docker, all, s.concurrency).await;
        return Err(e);
    }

    let docker_events = events.events();
    let starts = observe::first_event(&docker_events, "start", burst_from - 1_000_000_000);
    let intervals = observe::record_intervals(&watcher.events(), &service_dir, &field::ALL);
    let (ours, missing) = latencies(&burst_names, &starts, &intervals);
    let issued_now = issued.lock().map(|m| m.clone()).unwrap_or_default();
    let bare_iv = observe::record_intervals(&watcher.events(), &bare_dir, &field::ALL);
    let bare: Vec<f64> = issued_now
        .iter()
        .filter_map(|(name, at)| Some(ms_between(*at, bare_iv.get(name)?.first()?.visible_ns)))
        .collect();
    let delivery: Vec<f64> = starts.values().map(|e| ms_between(e.time_ns, e.at_ns)).collect();
    let burst_span_ms = {
        let t: Vec<i64> = starts.values().map(|e| e.time_ns).collect();
        match (t.iter().min(), t.iter().max()) {
            (Some(a), Some(b)) => ms_between(*a, *b),
            _ => 0.0,
        }
    };

    // What the announcer added: watch arrival of the record - when it was the announcer's
    // to write (`readiness`).
    let ready = readiness(&announcer.log(), burst_from - 1_000_000_000);
    let added: Vec<f64> = burst_names
        .iter()
        .filter_map(|(name, inst)| {
            let from = *ready.get(name)?;
            let iv = observe::first_visible_after(intervals.get(inst)?, from)?;
            Some(ms_between(from, iv.visible_ns))
        })
        .collect();

    let mut announce = Section::new("announce");
    let d_ours = Dist::of(&ours);
    let d_bare = Dist::of(&bare);
    add_added(&mut announce, "announcer_added", &added, d_bare);
    announce.add("containers", s.containers as f64);
    announce.add("announced", ours.len() as f64);
    add_dist(&mut announce, "announce", d_ours);
    add_dist(&mut announce, "bare_txn", d_bare);
    announce.add(
        "announce_over_bare_p99",
        d_ours.zip(d_bare).and_then(|(o, b)| stats::ratio(o.p99, b.p99)),
    );
    announce.add(
        "announce_over_bare_p50",
        d_ours.zip(d_bare).and_then(|(o, b)| stats::ratio(o.p50, b.p50)),
    );
    add_dist(&mut announce, "docker_event_delivery", Dist::of(&delivery));
    announce.add("burst_span_ms", burst_span_ms);
    let tck = process::clock_ticks_per_second();
    announce.add(
        "burst_cpu_ms_per_container",
        (cpu_after_burst.own().saturating_sub(cpu_before_burst.own())) as f64 / tck * 1000.0 / s.containers as f64,
    );
    announce.note(format!(
        "{} busybox containers started by {} concurrent `docker start` calls ({:.1} s from first to last start \
         event); announcer in host mode with its defaults (tcp check, TTL 10 s); latency = watch arrival of the \
         complete record - Docker's timeNano of `start`",
        s.containers,
        s.concurrency,
        burst_span_ms / 1000.0
    ));
    announce.note(
        "bare_txn: the harness writes 5 puts on a lease in one transaction when it sees each `start` event, during \
         the same burst; latency = txn issued -> its watch message arrives",
    );
    announce.note(
        "docker_event_delivery: Docker's timeNano of `start` -> the event reaches the harness's own event stream; \
         the announcer pays the same before it can do anything",
    );
    announce.note(
        "announcer_added: watch arrival of the complete record - the later of the `start` event reaching the \
         announcer and its first passing tcp check (the announcer's `visible` debug line, `ready_unix_ns`, same \
         clock); announcer_added_over_bare_p99 = its p99 / bare_txn's p99 (the target; announce_over_bare_p99 \
         also holds Docker's delivery and the service starting to listen)",
    );
    if !missing.is_empty() || !announced_all {
        announce.note(format!(
            "{} container(s) not announced within {:?}: {}",
            missing.len(),
            patience,
            missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !bare_all {
        announce.note(format!(
            "only {} of {} bare transactions seen",
            bare.len(),
            s.containers
        ));
    }
    eprintln!(
        "bench:   announce p50 {:.1} ms p99 {:.1} ms; bare p50 {:.2} ms p99 {:.2} ms",
        d_ours.map(|d| d.p50).unwrap_or(f64::NAN),
        d_ours.map(|d| d.p99).unwrap_or(f64::NAN),
        d_bare.map(|d| d.p50).unwrap_or(f64::NAN),
        d_bare.map(|d| d.p99).unwrap_or(f64::NAN)
    );

    // --- 4. footprint -----------------------------------------------------------------
    let records = s.footprint_records;
    if records > s.containers {
        eprintln!(
            "bench:   creating and starting {} more containers ...",
            records - s.containers
        );
        let more = containers::create_all(docker, (s.containers..records).map(spec).collect(), 4).await;
        let started = containers::start_all(docker, &more, s.concurrency).await;
        all.extend(more);
        if let Err(e) = started {
            containers::remove_all(docker, all, s.concurrency).await;
            return Err(e);
        }
    }
    let patience = Duration::from_secs(30) + Duration::from_millis(100) * u32::try_from(records).unwrap_or(1000);
    let have_all = testbed::eventually("every record is announced", patience, async || {
        all_visible(records, &watcher).then_some(())
    })
    .await
    .is_ok();
    let announced = observe::record_intervals(&watcher.events(), &service_dir, &field::ALL)
        .values()
        .filter(|v| v.iter().any(|i| i.gone_ns.is_none()))
        .count();
    // Let the first probes settle into their interval before the idle window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("bench:   idle for {:?} with {announced} records ...", s.idle);
    let rev0 = header_revision(&mut client).await?;
    let cpu0 = process::cpu_ticks(pid).unwrap_or_default();
    let t0 = nanos(SystemTime::now());
    tokio::time::sleep(s.idle).await;
    let t1 = nanos(SystemTime::now());
    let cpu1 = process::cpu_ticks(pid).unwrap_or_default();
    let rev1 = header_revision(&mut client).await?;
    let rss = process::rss_bytes(pid).unwrap_or_default() as f64;
    let hwm = process::peak_rss_bytes(pid).unwrap_or_default() as f64;
    let (anon, file) = process::rss_split_bytes(pid).unwrap_or_default();
    let window_s = (t1 - t0) as f64 / 1e9;
    let idle_events: Vec<observe::KeyEvent> = watcher
        .events()
        .into_iter()
        .filter(|e| e.revision > rev0 && e.revision <= rev1)
        .collect();
    let our_revisions: std::collections::BTreeSet<i64> = idle_events
        .iter()
        .filter(|e| e.key.starts_with(&format!("{service_dir}/")))
        .map(|e| e.revision)
        .collect();
    let ttls = window_s / TTL.as_secs_f64();
    let cpu_s = (cpu1.own().saturating_sub(cpu0.own())) as f64 / tck;
    let idle_cpu_s_per_min = cpu_s / window_s * 60.0;

    footprint.add("records", announced as f64);
    footprint.add("rss_empty_bytes", rss_empty);
    footprint.add("rss_bytes", rss);
    footprint.add("rss_anon_bytes", anon as f64);
    footprint.add("rss_file_bytes", file as f64);
    footprint.add("peak_rss_bytes", hwm);
    let per_record = (rss - rss_empty) / (announced.max(1) as f64);
    footprint.add("rss_per_record_bytes", per_record.max(0.0));
    if announced >= 500 {
        footprint.add("rss_500_bytes", rss);
    } else {
        let extrapolated = rss_empty + per_record.max(0.0) * 500.0;
        footprint.add("rss_500_bytes", extrapolated.round());
        footprint.note(format!(
            "rss_500_bytes is EXTRAPOLATED from {announced} records: RSS with no record + {announced}-record \
             growth per record x 500"
        ));
    }
    footprint.add("idle_window_s", window_s);
    footprint.add("idle_cpu_s_per_min", idle_cpu_s_per_min);
    footprint.add(
        "announcer_cpu_ms_per_container_min",
        idle_cpu_s_per_min * 1000.0 / announced.max(1) as f64,
    );
    footprint.add("idle_writes_per_ttl", our_revisions.len() as f64 / ttls);
    footprint.add("idle_revisions_total", (rev1 - rev0) as f64);
    footprint.note(format!(
        "announcer in host mode with {announced} records (tcp check every 5 s per container, TTL 10 s, resync 60 s); \
         RSS = VmRSS after a {window_s:.0} s idle window, CPU = utime+stime over it; idle_writes_per_ttl = etcd \
         revisions that touched the records / ({window_s:.0} s / 10 s)"
    ));
    if (rev1 - rev0) as usize != our_revisions.len() {
        footprint.note(format!(
            "{} revision(s) in the idle window were not the bench records' (other labelled containers on this host)",
            (rev1 - rev0) as usize - our_revisions.len()
        ));
    }
    if !have_all {
        footprint.note(format!(
            "only {announced} of {records} containers were announced within {patience:?}"
        ));
    }
    eprintln!(
        "bench:   RSS {:.2} MiB with {announced} records; idle CPU {:.3} s/min; {} idle writes",
        rss / 1024.0 / 1024.0,
        idle_cpu_s_per_min,
        our_revisions.len()
    );

    // --- 2. withdraw --------------------------------------------------------------------
    eprintln!("bench:   stopping {} containers ...", all.len());
    let stop_from = nanos(SystemTime::now());
    bare_delete_enabled.store(true, std::sync::atomic::Ordering::SeqCst);
    // Docker has been seen to hang in `docker stop` on this machine: give up in time.
    let stop_patience = Duration::from_secs(60) + Duration::from_millis(200) * u32::try_from(all.len()).unwrap_or(1000);
    let stopped = match tokio::time::timeout(stop_patience, containers::stop_all(docker, &all, 10, s.concurrency)).await
    {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "docker stop of {} containers did not end within {stop_patience:?}",
            all.len()
        )),
    };
    let names: Vec<(String, String)> = (0..all.len()).map(|i| (name_of(i), instance(i))).collect();
    let gone_all = testbed::eventually("every record is withdrawn", Duration::from_secs(30), async || {
        observe::record_intervals(&watcher.events(), &service_dir, &field::ALL)
            .values()
            .all(|v| v.iter().all(|i| i.gone_ns.is_some()))
            .then_some(())
    })
    .await
    .is_ok();
    let docker_events = events.events();
    let dies = observe::first_event(&docker_events, "die", stop_from - 1_000_000_000);
    let kills = observe::first_event(&docker_events, "kill", stop_from - 1_000_000_000);
    let intervals = observe::record_intervals(&watcher.events(), &service_dir, &field::ALL);
    let ready = readiness(&announcer.log(), stop_from - 1_000_000_000);
    let mut from_die = Vec::new();
    let mut from_kill = Vec::new();
    let mut added = Vec::new();
    for (name, inst) in &names {
        let Some(gone) = intervals
            .get(inst)
            .and_then(|v| v.last())
            .and_then(|i| i.gone_ns)
            .filter(|g| *g >= stop_from)
        else {
            continue;
        };
        if let Some(r) = ready.get(name) {
            added.push(ms_between(*r, gone));
        }
        if let Some(d) = dies.get(name) {
            from_die.push(ms_between(d.time_ns, gone));
        }
        if let Some(k) = kills.get(name) {
            from_kill.push(ms_between(k.time_ns, gone));
        }
    }
    let starts_all = observe::first_event(&docker_events, "start", burst_from - 1_000_000_000);
    write_samples(
        ctx,
        &names,
        &starts_all,
        &dies,
        &kills,
        &intervals,
        &issued_now,
        &bare_iv,
    );
    let mut withdraw = Section::new("withdraw");
    withdraw.add("containers", all.len() as f64);
    withdraw.add("withdrawn", from_die.len() as f64);
    add_dist(&mut withdraw, "withdraw", Dist::of(&from_die));
    add_dist(&mut withdraw, "withdraw_from_kill", Dist::of(&from_kill));
    // The reference of a withdraw: a bare delete issued on the same `kill`, under the same
    // stops (the burst's bare write never meets the etcd stalls of 500 containers torn
    // down at once: its p99 was half the withdraws' in the runs of 2026-11-30).
    bare_delete_enabled.store(false, std::sync::atomic::Ordering::SeqCst);
    let deletes_issued = issued_delete.lock().map(|m| m.clone()).unwrap_or_default();
    let bare_gone = observe::record_intervals(&watcher.events(), &bare_dir, &field::ALL);
    let bare_deletes: Vec<f64> = deletes_issued
        .iter()
        .filter(|(_, at)| **at > 0)
        .filter_map(|(name, at)| {
            let gone = bare_gone.get(name)?.last()?.gone_ns?;
            Some(ms_between(*at, gone))
        })
        .collect();
    let d_bare_delete = Dist::of(&bare_deletes);
    add_dist(&mut withdraw, "bare_delete", d_bare_delete);
    withdraw.add("bare_delete_samples", bare_deletes.len() as f64);
    add_added(&mut withdraw, "withdraw_added", &added, d_bare_delete);
    withdraw.add(
        "withdraw_added_over_burst_bare_p99",
        Dist::of(&added)
            .zip(d_bare)
            .and_then(|(o, b)| stats::ratio(o.p99, b.p99)),
    );
    withdraw.note(
        "withdraw_added: watch arrival of the delete - the first event of the stop (the `kill` of SIGTERM, or \
         the `die`) reaching the announcer (its `visible` debug line); withdraw_added_over_bare_p99 = its p99 / \
         the p99 of bare_delete (the target): the harness deletes the bare record of each burst container on its \
         first `kill`, one transaction, timed from issue to the watch's delete; withdraw_added_over_burst_bare_p99 \
         divides by the announce burst's bare_txn p99 instead (the target until 2026-11-30)",
    );
    withdraw.note(format!(
        "{} containers stopped by {} concurrent `docker stop` calls; withdraw = watch arrival of the delete - \
         Docker's timeNano of `die`; `docker stop` first sends SIGTERM (a `kill` event), on which the announcer \
         already withdraws, so a negative value means the record was gone before the process died",
        all.len(),
        s.concurrency
    ));
    if !gone_all || stopped.is_err() {
        withdraw.note(format!(
            "not every record was withdrawn within 30 s ({} of {})",
            from_die.len(),
            all.len()
        ));
    }

    // --- shutdown ---------------------------------------------------------------------------
    let exit = tokio::task::block_in_place(|| announcer.terminate_blocking(Duration::from_secs(10)));
    if !exit.is_some_and(|s| s.success()) {
        announce.note(format!("the announcer's graceful stop ended with {exit:?}"));
    }
    issuer.abort();
    drop(events);
    drop(watcher);
    containers::remove_all(docker, all, s.concurrency).await;
    stopped?;
    Ok(Outcome {
        announce,
        withdraw,
        ours_ms: ours,
        bare_ms: bare,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The announcer's text log line, as `tracing-subscriber` writes it.
    #[test]
    fn readiness_reads_the_announcers_visible_lines() {
        let log = "2026-11-29T22:00:00.000001Z DEBUG announcer::ops: visible container=benchweb-0001 added_us=812 ready_unix_ns=2000\n\
                   2026-11-29T22:00:00.000002Z  INFO announcer::registry: announced key=/k container=abc\n\
                   2026-11-29T22:00:00.000003Z DEBUG announcer::ops: visible container=benchweb-0002 added_us=1 ready_unix_ns=500\n\
                   2026-11-29T22:00:00.000004Z DEBUG announcer::ops: visible container=benchweb-0001 added_us=3 ready_unix_ns=9000\n\
                   2026-11-29T22:00:00.000005Z DEBUG announcer::ops: visible container=\"benchweb-0003\" added_us=3 ready_unix_ns=3000\n";
        let got = readiness(log, 1000);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [("benchweb-0001".to_owned(), 2000), ("benchweb-0003".to_owned(), 3000)]
        );
        assert_eq!(readiness(log, 5000).get("benchweb-0001"), Some(&9000));
    }
}
