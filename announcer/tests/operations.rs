//! What the announcer tells an operator (issue 16), against the real Docker engine and a
//! real etcd: `/metrics`, `/healthz`, `/readyz` on `--metrics-addr`, systemd's
//! notifications on a `NOTIFY_SOCKET` the test binds, and the JSON log lines' fields.
//!
//! Each test runs the real binary through [`testbed::Daemon`] and polls with
//! [`testbed::eventually`]; deadlines are wide except where the issue sets one (health
//! follows etcd within 5 s).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::docker::{self, Spec};
use testbed::{Daemon, Etcd, NotifySocket, eventually, free_port, http_get, unique};

/// Wide deadline for what has no deadline of its own (a loaded 2-core machine).
const PATIENCE: Duration = Duration::from_secs(30);

fn announcer(etcd: &str, host: &str, notify: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_announcer"));
    cmd.args([
        "--etcd-endpoints",
        etcd,
        "--public-ipv4",
        "127.0.0.1",
        "--private-ipv4",
        "10.9.8.7",
        "--hostname",
        host,
        "--ttl",
        "3s",
        "--check-interval",
        "500ms",
        "--etcd-timeout",
        "1s",
        "--log-format",
        "json",
    ])
    .args(extra)
    .env("RUST_LOG", "info")
    .env("NOTIFY_SOCKET", notify)
    .env("WATCHDOG_USEC", "2000000")
    .env_remove("WATCHDOG_PID")
    .env_remove("DOCKER_HOST")
    .env_remove("COREOS_PUBLIC_IPV4")
    .env_remove("COREOS_PRIVATE_IPV4");
    cmd
}

/// `(status code, body)` of `GET path`, or `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let resp = http_get(port, path)?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// The value of the sample `series` (name with its labels, as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn metric(port: u16, series: &str) -> f64 {
    get(port, "/metrics")
        .and_then(|(_, text)| sample(&text, series))
        .unwrap_or(0.0)
}

/// The JSON log lines whose message is `message`.
fn json_lines(a: &Daemon, message: &str) -> Vec<serde_json::Value> {
    a.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[tokio::test]
async fn metrics_health_readiness_notifications_and_json_logs_follow_containers_and_etcd() {
    let mut etcd = Etcd::start();
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let service = unique("opsweb").replace('-', "");
    let name = unique("ann-ops");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Running before the announcer starts: its record is part of the first full sync.
    let c0 = Spec::web(&image)
        .name(&unique("ann-ops-early"))
        .label("announce.service", &format!("{service}early"))
        .run(&d)
        .await;
    // Answering already (a check that fails at first would rightly leave it out).
    c0.wait_http(c0.host_port("80/tcp").await, "/").await;
    let mut notify = NotifySocket::bind();
    let mut a = Daemon::start(
        "announcer-ops",
        announcer(
            &etcd.endpoint(),
            &host,
            notify.path(),
            &["--metrics-addr", &addr, "--resync-interval", "2s", "host"],
        ),
    );

    // READY=1 once Docker is listed and etcd synced; its status line says so.
    let ready = eventually("READY=1 on NOTIFY_SOCKET", PATIENCE, async || notify.find("READY=1")).await;
    let ready = ready.unwrap_or_else(|e| a.fail(e));
    assert!(
        ready.contains("STATUS=announcing 1 record(s) on lease") && ready.contains("etcd ok; docker ok"),
        "{ready:?}"
    );
    assert_eq!(get(port, "/healthz"), Some((200, "ok\n".into())));
    assert_eq!(get(port, "/readyz"), Some((200, "ready\n".into())));
    assert_eq!(metric(port, "announcer_lease_grants_total{kind=\"grant\"}"), 1.0);

    // A labelled container starts: the counters move.
    let records = format!("announcer_records{{service=\"{service}\"}}");
    let c = Spec::web(&image)
        .name(&name)
        .label("announce.service", &service)
        .run(&d)
        .await;
    let announced = eventually("the record is announced", PATIENCE, async || {
        (metric(port, &records) == 1.0).then_some(())
    })
    .await;
    announced.unwrap_or_else(|e| a.fail(e));
    assert!(metric(port, "announcer_operations_total{op=\"announce\",result=\"ok\"}") >= 1.0);
    assert!(metric(port, "announcer_health_checks_total{check=\"tcp\",result=\"pass\"}") >= 1.0);
    let seen = metric(port, "announcer_event_to_visible_seconds_count");
    assert!(seen >= 1.0, "the start event's latency is observed");
    eprintln!(
        "MEASURED event-to-visible sum after one start: {}s",
        metric(port, "announcer_event_to_visible_seconds_sum")
    );

    // It stops: withdrawn, gauge back to nothing, one more latency.
    c.stop(1).await;
    let withdrawn = eventually("the record is withdrawn", PATIENCE, async || {
        (metric(port, "announcer_operations_total{op=\"withdraw\",result=\"ok\"}") >= 1.0).then_some(())
    })
    .await;
    withdrawn.unwrap_or_else(|e| a.fail(e));
    assert_eq!(metric(port, &records), 0.0, "the service's gauge is gone");
    assert!(metric(port, "announcer_event_to_visible_seconds_count") > seen);
    eprintln!(
        "/metrics after one start and one stop:\n{}",
        get(port, "/metrics").map(|(_, t)| t).unwrap_or_default()
    );

    // The log lines of both changes carry the documented fields.
    let key_prefix = format!("/services/{service}/");
    for message in ["announced", "withdrawn"] {
        let lines = json_lines(&a, message);
        let line = lines
            .iter()
            .find(|v| v["service"] == service.as_str())
            .unwrap_or_else(|| a.fail(format!("no JSON {message:?} line for {service}")));
        for field in ["key", "service", "instance", "lease"] {
            assert!(line[field].is_string(), "{message}: field {field} in {line}");
        }
        assert!(line["key"].as_str().unwrap().starts_with(&key_prefix), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }

    // Another host holds the record a new container would get: held back, /readyz 503
    // naming it, a conflict counted; the other owner goes away: written, ready again.
    let mut client = etcd.client().await;
    let held = format!("/services/{service}/held/");
    for (f, v) in [("host", "other-host"), ("unit", "web-9"), ("port", "1")] {
        client.put(format!("{held}{f}"), v, None).await.unwrap();
    }
    let _c2 = Spec::web(&image)
        .name(&unique("ann-ops-held"))
        .label("announce.service", &service)
        .label("announce.instance", "held")
        .run(&d)
        .await;
    let not_ready = eventually("/readyz turns 503", PATIENCE, async || {
        get(port, "/readyz").filter(|(code, _)| *code == 503)
    })
    .await;
    let (_, reason) = not_ready.unwrap_or_else(|e| a.fail(e));
    assert!(
        reason.starts_with("1 record(s) held back: ") && reason.contains("other-host"),
        "{reason:?}"
    );
    assert_eq!(metric(port, "announcer_record_conflicts_total"), 1.0);
    assert_eq!(metric(port, "announcer_records_held_back"), 1.0);
    assert!(metric(port, "announcer_operations_total{op=\"announce\",result=\"conflict\"}") >= 1.0);
    assert_eq!(
        get(port, "/healthz").map(|r| r.0),
        Some(200),
        "held back is not unhealthy"
    );
    client
        .delete(held.as_str(), Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let ready_again = eventually("/readyz turns 200 again", PATIENCE, async || {
        get(port, "/readyz").filter(|(code, _)| *code == 200)
    })
    .await;
    ready_again.unwrap_or_else(|e| a.fail(e));
    assert_eq!(metric(port, &records), 1.0, "the held record is written now");
    assert_eq!(metric(port, "announcer_records_held_back"), 0.0);

    // etcd stops: /healthz says so within 5 s; the watchdog keeps pinging (a backoff is
    // alive); readiness stands (what was announced stays announced).
    etcd.kill();
    let stopped = Instant::now();
    let down = eventually("/healthz turns 503", Duration::from_secs(5), async || {
        get(port, "/healthz").filter(|(code, _)| *code == 503)
    })
    .await;
    let (_, reason) = down.unwrap_or_else(|e| a.fail(e));
    eprintln!(
        "MEASURED etcd killed -> /healthz 503: {:?} ({reason:?})",
        stopped.elapsed()
    );
    assert!(reason.starts_with("etcd unreachable: "), "{reason:?}");
    assert_eq!(reason.lines().count(), 1, "one line: {reason:?}");
    let pings = notify.pings_during(Duration::from_secs(4)).await;
    assert!(
        pings >= 3,
        "watchdog pings every second during the etcd outage: {pings}"
    );
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));

    etcd.restart();
    let back = Instant::now();
    let up = eventually("/healthz turns 200", Duration::from_secs(5), async || {
        get(port, "/healthz").filter(|(code, _)| *code == 200)
    })
    .await;
    up.unwrap_or_else(|e| a.fail(e));
    eprintln!("MEASURED etcd back -> /healthz 200: {:?}", back.elapsed());
    assert!(a.is_running());

    // SIGTERM: STOPPING=1.
    let status = a.stop(libc::SIGTERM, PATIENCE).await;
    assert!(status.success(), "{status}\n{}", a.excerpt());
    assert!(notify.find("STOPPING=1").is_some(), "{:?}", notify.received());
    // `--log-format json`: every line of the whole run (start, changes, the etcd outage,
    // the stop) is one JSON object, not only the lines looked up above.
    let log = a.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| a.fail(format!("a log line is not JSON ({e}): {line}")));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines > 10, "{lines} lines");
}

/// A Docker socket that accepts connections and never answers: the Docker loop waits on
/// its first request (bollard gives up after 30 s), and nothing else can unstick it.
struct SilentDocker {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SilentDocker {
    fn start() -> SilentDocker {
        let dir = tempfile::Builder::new().prefix("silent-docker").tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepted connections are kept open, unread, until the test process ends.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                held.push(conn);
            }
        });
        SilentDocker { path, _dir: dir }
    }
}

#[tokio::test]
async fn watchdog_pings_stop_while_a_loop_is_stuck() {
    let etcd = Etcd::start();
    let docker = SilentDocker::start();
    let mut notify = NotifySocket::bind();
    let docker_host = format!("unix://{}", docker.path.display());
    let started = Instant::now();
    let a = Daemon::start(
        "announcer-stuck",
        announcer(
            &etcd.endpoint(),
            &unique("host"),
            notify.path(),
            &["--docker-host", &docker_host, "host"],
        ),
    );
    // Alive at first: the loops beat at start.
    let first = eventually("a first WATCHDOG=1", PATIENCE, async || notify.find("WATCHDOG=1")).await;
    first.unwrap_or_else(|e| a.fail(e));
    // The Docker loop hangs on its first request; two periods later the pings have stopped.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    let pings = notify.pings_during(Duration::from_secs(4)).await;
    assert_eq!(pings, 0, "no ping while the docker loop is stuck\n{}", a.excerpt());
    assert!(notify.find("READY=1").is_none(), "never ready: Docker was never listed");
    let stalled = json_lines(
        &a,
        "a loop has not come round for 2s: watchdog pings stop, systemd will restart this unit",
    );
    assert!(
        stalled
            .iter()
            .any(|l| l["stalled"].as_str().is_some_and(|s| s.contains("docker events"))),
        "the log names the stuck loop\n{}",
        a.excerpt()
    );
}
