//! Benchmark 6: lb-sync's HAProxy provider, with real traffic through a real HAProxy
//! (`testbed::HaProxy`: Debian's 2.6, `balance roundrobin`, `retries 0`, no redispatch, so
//! every failed request is seen).
//!
//! - **rolling restart under load**: three `sidekick/web` containers (`STOP_GRACE=3`), each
//!   followed by the announcer measured; one `lb-sync --provider haproxy` (debounce
//!   [`DEBOUNCE`], `--drain 10s`, checks `inter 500ms rise 1 fall 2`). Two clients send
//!   `GET /` one after another, each on a new connection: [`STEADY`] of steady state, then
//!   each container is restarted in turn (`docker restart -t 10`, the next once HAProxy has
//!   all three UP again), then one more second. Figures: requests sent and failed
//!   (connection error, timeout or non-2xx; goal 0), latency p50/p99 through HAProxy in
//!   steady state and during the restart.
//! - **withdrawal to drain**: beside those three, the harness writes the record of a fourth
//!   server (a listener of its own on 127.0.0.1), waits until HAProxy has it UP, deletes the
//!   record and polls the Runtime API (`show stat`, one command per connection, about 1 ms
//!   each) until the server is in DRAIN or MAINT or gone: from then on HAProxy sends it no
//!   new request. Timed from just before the etcd delete; repeated [`Settings::withdrawals`]
//!   times. Goal: p99 < 100 ms plus the debounce MIN.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bollard::Docker;
use etcd_client::{DeleteOptions, Txn, TxnOp};
use sidekick::schema::{Layout, Record};
use testbed::docker::{Container, Spec};
use testbed::{Daemon, HaProxy, Start};

use crate::containers::RUN_LABEL;
use crate::stats::Dist;
use crate::summary::Section;
use crate::{Ctx, stats};

/// The web image the containers run.
const IMAGE: &str = "sidekick/web:latest";

/// lb-sync's `--debounce`: its MIN is what the withdrawal goal adds to 100 ms.
pub const DEBOUNCE: &str = "100ms:1s";
/// The debounce MIN, in milliseconds.
pub const DEBOUNCE_MIN_MS: f64 = 100.0;

/// Steady state before the restart (and the window its latencies come from).
const STEADY: Duration = Duration::from_secs(5);

/// Web containers restarted one by one.
const WEBS: u8 = 3;

/// The numbers of this benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Records withdrawn one after another for the withdrawal figures.
    pub withdrawals: usize,
}

/// Whether a server HAProxy reports with this `show stat` status (`None`: no such server)
/// still takes new requests: gone, or in DRAIN or MAINT (`DRAIN`, `MAINT`, `MAINT (via
/// ...)`, `DRAIN (agent)`), it does not. A DOWN server takes none either, but not because
/// of a withdrawal: it counts as still routed, so a health check cannot shorten the figure.
#[must_use]
pub fn still_routed(status: Option<&str>) -> bool {
    status.is_some_and(|s| !(s.starts_with("DRAIN") || s.starts_with("MAINT")))
}

/// Whether an answer is a failure: no answer, or a status outside 2xx.
#[must_use]
pub fn failed(answer: &Result<u16, String>) -> bool {
    !matches!(answer, Ok(code) if (200..300).contains(code))
}

/// One request of the load.
struct Sample {
    sent: Instant,
    took: Duration,
    answer: Result<u16, String>,
}

/// `GET /` through HAProxy on a new connection; the status code, or what went wrong.
fn get(port: u16) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET / HTTP/1.0\r\nHost: lb\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read: {e}"))?;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {:?}", out.chars().take(80).collect::<String>()))
}

/// The record of instance `name` at 127.0.0.1:`port`.
fn record(name: &str, port: u16) -> Record {
    Record {
        service: "web".into(),
        instance: name.into(),
        unit: format!("{name}.service"),
        host: "bench".into(),
        public_ipv4: None,
        private_ipv4: [127, 0, 0, 1].into(),
        port,
        container_id: String::new(),
        container_name: String::new(),
    }
}

/// HAProxy's status of the server lb-sync names for 127.0.0.1:`port`, `None` when absent.
fn status_of(ha: &HaProxy, port: u16) -> Option<String> {
    let name = format!("lb-sync-127.0.0.1:{port}");
    ha.servers().into_iter().find(|(n, _, _)| *n == name).map(|(_, _, s)| s)
}

/// Ports of the servers HAProxy has UP.
fn up_ports(ha: &HaProxy) -> Vec<u16> {
    let mut v: Vec<u16> = ha
        .servers()
        .into_iter()
        .filter(|(_, _, status)| status.starts_with("UP"))
        .filter_map(|(name, _, _)| name.rsplit(':').next()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

struct Scene {
    ha: HaProxy,
    lb: Daemon,
    lb_log: std::path::PathBuf,
}

impl Scene {
    /// Waits until HAProxy has exactly `want` UP.
    async fn wait_up(&mut self, want: &[u16], what: &str) -> anyhow::Result<()> {
        let mut want = want.to_vec();
        want.sort_unstable();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if up_ports(&self.ha) == want {
                return Ok(());
            }
            if let Some(status) = self.lb.try_exit() {
                anyhow::bail!("lb-sync exited ({status}):\n{}", self.lb_log_tail());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{what}: HAProxy never held {want:?} UP; it holds {:?}\nlb-sync:\n{}",
                    self.ha.servers(),
                    self.lb_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn lb_log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.lb_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Runs benchmark 6.
///
/// # Errors
/// When a server, a container or lb-sync fails, or HAProxy does not converge within a minute.
pub async fn run(ctx: &Ctx, docker: &Docker, settings: Settings) -> anyhow::Result<Section> {
    tokio::task::spawn_blocking(|| testbed::docker::build_with_script("images/web/build.sh", IMAGE))
        .await
        .context("build the web image")?;
    let etcd = testbed::Etcd::start();
    let mut client = etcd.client().await;
    let ha = HaProxy::start();
    let lb_log = ctx.log("lb-sync-haproxy.log");
    let mut cmd = Command::new(&ctx.lb_sync);
    cmd.args(["--provider", "haproxy", "--haproxy-socket"])
        .arg(ha.socket())
        .args(["--haproxy-backend", ha.backend()])
        .args(["--haproxy-check-options", "inter 500ms rise 1 fall 2"])
        .args(["--etcd-endpoints", &etcd.endpoint(), "--prefix", "/services/web"])
        .args(["--drain", "10s", "--debounce", DEBOUNCE, "--resync", "5s"])
        .arg("run")
        .env_clear();
    let lb = Start::new("lb-sync-haproxy")
        .log_to(&lb_log)
        .try_start(cmd)
        .context("start lb-sync")?;
    let mut scene = Scene { ha, lb, lb_log };
    let mut section = Section::new("haproxy");

    // Three web containers, each with its announcer.
    let mut webs: Vec<(Container, u16, Daemon)> = Vec::new();
    for i in 1..=WEBS {
        let name = format!("bench-{}-web{i:02}", ctx.run_id);
        let port = testbed::free_port();
        let container = Spec {
            image: IMAGE.to_owned(),
            publish: vec![("80/tcp".into(), port)],
            ..Spec::default()
        }
        .name(&name)
        .hostname(&format!("web{i:02}"))
        .env("STOP_GRACE=3")
        .label(RUN_LABEL, &ctx.run_id)
        .run(docker)
        .await;
        let log = ctx.log(&format!("announcer-haproxy-web{i:02}.log"));
        let mut cmd = Command::new(&ctx.announcer);
        cmd.args(["--etcd-endpoints", &etcd.endpoint(), "--prefix", "/services"])
            .args(["--public-ipv4", "127.0.0.1", "--private-ipv4", "127.0.0.1"])
            .args(["--hostname", "bench", "--ttl", "5s", "--check-interval", "500ms"])
            .args([
                "container",
                &name,
                "--service",
                "web",
                "--instance",
                &format!("web{i:02}"),
            ])
            .env_clear();
        let announcer = Start::new(&format!("announcer-web{i:02}"))
            .log_to(&log)
            .try_start(cmd)
            .context("start an announcer")?;
        webs.push((container, port, announcer));
    }
    let ports: Vec<u16> = webs.iter().map(|(_, p, _)| *p).collect();
    scene.wait_up(&ports, "three web containers").await?;

    // (a) The rolling restart under load.
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, samples, port) = (stop.clone(), samples.clone(), scene.ha.port());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = get(port);
                    if let Ok(mut s) = samples.lock() {
                        s.push(Sample {
                            sent,
                            took: sent.elapsed(),
                            answer,
                        });
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(STEADY).await;
    let restart_from = Instant::now();
    let mut restarted = Ok(());
    for (container, _, _) in &webs {
        container.restart(10).await;
        if let Err(e) = scene
            .wait_up(&ports, &format!("after restarting {}", container.name))
            .await
        {
            restarted = Err(e);
            break;
        }
    }
    let restart_took = restart_from.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    restarted?;
    let samples = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("a client panicked"))?);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let steady: Vec<f64> = samples
        .iter()
        .filter(|s| s.sent < restart_from)
        .map(|s| ms(s.took))
        .collect();
    let during: Vec<f64> = samples
        .iter()
        .filter(|s| s.sent >= restart_from)
        .map(|s| ms(s.took))
        .collect();
    let failures: Vec<String> = samples
        .iter()
        .filter(|s| failed(&s.answer))
        .map(|s| {
            let at = s.sent.saturating_duration_since(restart_from);
            match &s.answer {
                Ok(code) => format!("+{at:?}: HTTP {code}"),
                Err(e) => format!("+{at:?}: {e}"),
            }
        })
        .collect();
    section.add("rolling_containers", f64::from(WEBS));
    section.add("rolling_restart_s", restart_took.as_secs_f64());
    section.add("rolling_requests_sent", samples.len() as f64);
    section.add("rolling_requests_during_restart", during.len() as f64);
    section.add("rolling_requests_failed", failures.len() as f64);
    if let Some(d) = Dist::of(&steady) {
        section.add("steady_p50_ms", d.p50);
        section.add("steady_p99_ms", d.p99);
    }
    if let Some(d) = Dist::of(&during) {
        section.add("restart_p50_ms", d.p50);
        section.add("restart_p99_ms", d.p99);
        section.add("restart_max_ms", d.max);
    }
    if !failures.is_empty() {
        section.note(format!(
            "{} failed request(s), the first: {}",
            failures.len(),
            failures.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    eprintln!(
        "bench:   rolling restart of {WEBS} in {:.1} s: {} requests, {} failed; latency p50/p99 steady {:.1}/{:.1} ms, \
         during {:.1}/{:.1} ms",
        restart_took.as_secs_f64(),
        samples.len(),
        failures.len(),
        stats::percentile(&steady, 50.0).unwrap_or(f64::NAN),
        stats::percentile(&steady, 99.0).unwrap_or(f64::NAN),
        stats::percentile(&during, 50.0).unwrap_or(f64::NAN),
        stats::percentile(&during, 99.0).unwrap_or(f64::NAN),
    );

    // (b) Withdrawal to drain, against a listener of the harness's own.
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("bind the fourth server")?;
    let vport = listener.local_addr()?.port();
    let accepting = Arc::new(AtomicBool::new(true));
    let acceptor = {
        let accepting = accepting.clone();
        listener.set_nonblocking(true)?;
        std::thread::spawn(move || {
            // Accepts and closes: enough for HAProxy's tcp check.
            while accepting.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let mut with_victim = ports.clone();
    with_victim.push(vport);
    let mut latencies: Vec<f64> = Vec::new();
    // Per withdrawal: when the delete was sent (wall clock, to read beside lb-sync's log)
    // and how long HAProxy kept routing.
    let mut csv = String::from("withdrawn_at_unix_ms,withdraw_to_drain_ms\n");
    let mut outcome = Ok(());
    for _ in 0..settings.withdrawals {
        let ops: Vec<TxnOp> = record("bench-victim", vport)
            .entries("/services", Layout::Fields)
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        client.txn(Txn::new().and_then(ops)).await.context("write a record")?;
        if let Err(e) = scene.wait_up(&with_victim, "the fourth server added").await {
            outcome = Err(e);
            break;
        }
        // lb-sync idle again (its debounce MAX long past), at a random phase.
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..600))).await;
        let t0 = Instant::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        client
            .delete("/services/web/bench-victim/", Some(DeleteOptions::new().with_prefix()))
            .await
            .context("withdraw the record")?;
        let took = {
            let ha = &scene.ha;
            let deadline = t0 + Duration::from_secs(30);
            loop {
                if !still_routed(status_of(ha, vport).as_deref()) {
                    break Some(t0.elapsed());
                }
                if Instant::now() > deadline {
                    break None;
                }
                // Each `show stat` is its own connection and takes about a millisecond.
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        let Some(took) = took else {
            outcome = Err(anyhow::anyhow!(
                "HAProxy still routed to the withdrawn server after 30 s: {:?}\nlb-sync:\n{}",
                scene.ha.servers(),
                scene.lb_log_tail()
            ));
            break;
        };
        latencies.push(ms(took));
        csv.push_str(&format!("{},{:.3}\n", wall.as_millis(), ms(took)));
        if let Err(e) = scene.wait_up(&ports, "the fourth server deleted").await {
            outcome = Err(e);
            break;
        }
    }
    accepting.store(false, Ordering::Relaxed);
    let _ = acceptor.join();
    let csv_path = ctx.log("haproxy-withdrawals.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("write {}", csv_path.display()))?;
    outcome?;
    section.add("withdrawals", latencies.len() as f64);
    section.add("debounce_min_ms", DEBOUNCE_MIN_MS);
    if let Some(d) = Dist::of(&latencies) {
        section.add("withdraw_to_drain_min_ms", d.min);
        section.add("withdraw_to_drain_p50_ms", d.p50);
        section.add("withdraw_to_drain_p90_ms", d.p90);
        section.add("withdraw_to_drain_p99_ms", d.p99);
        section.add("withdraw_to_drain_max_ms", d.max);
        eprintln!(
            "bench:   withdrawal -> HAProxy stops routing ({} withdrawals, debounce {DEBOUNCE}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            d.n, d.p50, d.p99, d.max
        );
    }
    section.note(format!(
        "HAProxy 2.6 (testbed: roundrobin, retries 0, no redispatch); lb-sync --provider haproxy --debounce {DEBOUNCE} \
         --drain 10s --haproxy-check-options 'inter 500ms rise 1 fall 2'; {WEBS} sidekick/web containers (STOP_GRACE=3) \
         each followed by the announcer (--ttl 5s --check-interval 500ms); 2 clients, GET / one after another on new \
         connections; steady = the {} s before the restart, restart = from the first docker restart -t 10 to 1 s after \
         HAProxy had all {WEBS} UP again after the last; failed = connection error, timeout or non-2xx",
        STEADY.as_secs()
    ));
    section.note(
        "withdraw_to_drain: from just before the etcd delete of a fourth record (a listener of the harness) to the \
         Runtime API's show stat saying DRAIN or MAINT or no such server (HAProxy sends it no new request from then), \
         polled about every millisecond; measured on the Runtime API, not from client traffic; p99 of 40 samples is \
         the largest; per sample: haproxy-withdrawals.csv",
    );

    let _ = scene.lb.terminate_blocking(Duration::from_secs(10));
    drop(webs);
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_stops_taking_requests_once_draining_in_maintenance_or_gone() {
        let cases = [
            (None, false),
            (Some("UP"), true),
            (Some("UP 1/2"), true),
            (Some("no check"), true),
            (Some("DOWN"), true),
            (Some("DRAIN"), false),
            (Some("DRAIN (agent)"), false),
            (Some("MAINT"), false),
            (Some("MAINT (via web/x)"), false),
        ];
        for (status, routed) in cases {
            assert_eq!(still_routed(status), routed, "{status:?}");
        }
    }

    #[test]
    fn failures_are_errors_and_non_2xx() {
        assert!(!failed(&Ok(200)));
        assert!(!failed(&Ok(204)));
        assert!(failed(&Ok(502)));
        assert!(failed(&Ok(301)));
        assert!(failed(&Err("connect: refused".into())));
    }
}
