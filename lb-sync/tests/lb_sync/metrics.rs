//! `/metrics` and `/readyz` of a running lb-sync, for each provider, and `plan --output
//! json`: the counters move as plans apply, a refused plan counts under its reason and
//! turns `/readyz` 503. Processes run under `testbed::Daemon`, polling is
//! `testbed::eventually`.

use std::collections::BTreeMap;
use std::time::Duration;

use testbed::{Daemon, eventually};

use super::haproxy::HaWorld;
use super::support::{self, World, quick_sim};

const WITHIN: Duration = Duration::from_secs(20);

/// One scrape of `/metrics`: every sample by its series (`name{labels}`).
pub struct Scrape {
    pub text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    pub fn of(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The sample of `series`, 0 when absent (a counter not yet incremented).
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of the metric `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(s, _)| s.as_str() == name || s.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

/// A running `lb-sync ... --listen 127.0.0.1:PORT run`.
struct Running {
    daemon: Daemon,
    port: u16,
}

impl Running {
    fn start(name: &str, mut args: Vec<String>) -> Running {
        let port = testbed::free_port();
        args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}"), "run".to_owned()]);
        Running {
            daemon: Daemon::start(name, support::command(&args)),
            port,
        }
    }

    /// (status code, body) of GET `path`.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let answer = testbed::http_get(self.port, path)?;
        let code = answer.split_whitespace().nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((code, body))
    }

    fn scrape(&self) -> Scrape {
        Scrape::of(&self.get("/metrics").map(|(_, b)| b).unwrap_or_default())
    }

    /// Waits until the scrape satisfies `ok`; fails with the last scrape and the log.
    async fn wait_metrics(&self, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
        match eventually(what, WITHIN, async || {
            let m = self.scrape();
            ok(&m).then_some(m)
        })
        .await
        {
            Ok(m) => m,
            Err(e) => self.daemon.fail(format!("{e}; last /metrics:\n{}", self.scrape().text)),
        }
    }

    /// Waits until `/readyz` answers `code` with a body containing `needle`.
    async fn wait_ready(&self, code: u16, needle: &str) -> String {
        let what = format!("/readyz answers {code} with {needle:?}");
        match eventually(&what, WITHIN, async || {
            self.get("/readyz")
                .filter(|(c, b)| *c == code && b.contains(needle))
                .map(|(_, b)| b)
        })
        .await
        {
            Ok(b) => b,
            Err(e) => self.daemon.fail(format!("{e}; it answers {:?}", self.get("/readyz"))),
        }
    }
}

const CONVERGED: &str = "lb_sync_converge_seconds_count";

/// Rackspace (the simulator): every counter follows the plans as they apply, and the
/// API calls counted are the calls the simulator answered, by method and status.
#[tokio::test]
async fn rackspace_metrics_move_as_plans_apply_and_a_refusal_turns_readyz_503() {
    let w = World::start(quick_sim()).await;
    w.put(1..=4).await;
    let lb = Running::start("lb-sync-rackspace", w.args());
    w.wait_enabled(&[1, 2, 3, 4], WITHIN).await;
    let m = lb
        .wait_metrics("four nodes added and converged", |m| {
            m.get("lb_sync_nodes_changed_total{step=\"add\"}") == 4.0 && m.get(CONVERGED) >= 1.0
        })
        .await;
    assert_eq!(
        m.get("lb_sync_steps_applied_total{step=\"add\"}"),
        1.0,
        "one POST:\n{}",
        m.text
    );
    assert_eq!(
        m.get("lb_sync_api_calls_total{verb=\"POST\",status=\"202\",outcome=\"ok\"}") as usize,
        w.sim.count_status("POST", 202),
        "{}",
        m.text
    );
    assert!(m.get("lb_sync_api_calls_total{verb=\"GET\",status=\"200\",outcome=\"ok\"}") >= 2.0);
    assert_eq!(
        m.get("lb_sync_api_calls_total{verb=\"AUTH\",status=\"200\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(m.get("lb_sync_leader"), 1.0);
    assert!(m.get("lb_sync_plans_applied_total") >= 1.0);
    let first_converge = m.get("lb_sync_converge_seconds_sum");
    assert!(
        first_converge > 0.0 && first_converge < WITHIN.as_secs_f64(),
        "time to converge {first_converge}"
    );
    lb.wait_metrics("4 desired, 4 on the LB", |m| {
        m.get("lb_sync_desired_nodes") == 4.0 && m.get("lb_sync_lb_nodes") == 4.0
    })
    .await;
    lb.wait_ready(200, "ready").await;

    // One record goes (25%, allowed): drained, then deleted after --drain 1s.
    w.delete([4]).await;
    lb.wait_metrics("a drain in progress", |m| m.get("lb_sync_drains_in_progress") == 1.0)
        .await;
    w.wait_enabled(&[1, 2, 3], WITHIN).await;
    let m = lb
        .wait_metrics("the node drained, deleted and converged again", |m| {
            m.get("lb_sync_nodes_changed_total{step=\"delete\"}") == 1.0
                && m.get("lb_sync_drains_in_progress") == 0.0
                && m.get(CONVERGED) >= 2.0
                && m.get("lb_sync_lb_nodes") == 3.0
        })
        .await;
    assert_eq!(m.get("lb_sync_nodes_changed_total{step=\"drain\"}"), 1.0);
    for (verb, status) in [("PUT", 202), ("DELETE", 202)] {
        assert_eq!(
            m.get(&format!(
                "lb_sync_api_calls_total{{verb=\"{verb}\",status=\"{status}\",outcome=\"ok\"}}"
            )) as usize,
            w.sim.count_status(verb, status),
            "{verb}:\n{}",
            m.text
        );
    }
    assert_eq!(w.sim.count_status("DELETE", 202), 1);

    // Two of the three go at once: 67% > --max-remove 50%, refused.
    w.delete([2, 3]).await;
    let line = lb.wait_ready(503, "refused:").await;
    assert_eq!(
        line.trim(),
        "refused: the plan would take 2 of 3 nodes out of service, more than --max-remove 50%"
    );
    let m = lb
        .wait_metrics("the refusal counted", |m| {
            m.get("lb_sync_refusals_total{reason=\"max_remove\"}") >= 1.0
        })
        .await;
    assert_eq!(m.get("lb_sync_refused"), 1.0);
    assert_eq!(m.get("lb_sync_desired_nodes"), 1.0);
    w.wait_enabled(&[1, 2, 3], Duration::ZERO).await;
    // The records come back: ready again, and that counts as converging once more.
    w.put([2, 3]).await;
    lb.wait_ready(200, "ready").await;
    lb.wait_metrics("converged after the refusal", |m| {
        m.get("lb_sync_refused") == 0.0 && m.get(CONVERGED) >= 3.0
    })
    .await;
    eprintln!("/metrics of the Rackspace run:\n{}", lb.scrape().text);
}

/// HAProxy: the Runtime API commands are counted by kind and result, nodes by step; an
/// empty record set is refused under `empty_desired`; HAProxy gone counts as unreachable.
#[tokio::test]
async fn haproxy_metrics_move_as_plans_apply_and_a_refusal_turns_readyz_503() {
    let mut w = HaWorld::start(3).await;
    w.put([1, 2, 3]).await;
    let lb = Running::start("lb-sync-haproxy", w.args());
    w.wait_up(&[1, 2, 3], WITHIN).await;
    let m = lb
        .wait_metrics("three servers added and converged", |m| {
            m.get("lb_sync_nodes_changed_total{step=\"add\"}") == 3.0 && m.get(CONVERGED) >= 1.0
        })
        .await;
    for verb in ["add_server", "enable_health", "set_server_state"] {
        assert_eq!(
            m.get(&format!(
                "lb_sync_api_calls_total{{verb=\"{verb}\",status=\"ok\",outcome=\"ok\"}}"
            )),
            3.0,
            "{verb}:\n{}",
            m.text
        );
    }
    assert!(m.get("lb_sync_api_calls_total{verb=\"show_servers_state\",status=\"ok\",outcome=\"ok\"}") >= 2.0);
    // Sessions are read only while one of lb-sync's servers drains: none has yet.
    assert_eq!(
        m.get("lb_sync_api_calls_total{verb=\"show_stat\",status=\"ok\",outcome=\"ok\"}"),
        0.0
    );
    assert_eq!(m.get("lb_sync_leader"), 1.0);
    assert_eq!(m.get("lb_sync_desired_nodes"), 3.0);
    assert_eq!(m.get("lb_sync_lb_nodes"), 3.0);
    lb.wait_ready(200, "ready").await;

    w.delete([3]).await;
    w.wait_up(&[1, 2], WITHIN).await;
    let m = lb
        .wait_metrics("one server drained, deleted, converged again", |m| {
            m.get("lb_sync_api_calls_total{verb=\"del_server\",status=\"ok\",outcome=\"ok\"}") == 1.0
                && m.get(CONVERGED) >= 2.0
                && m.get("lb_sync_lb_nodes") == 2.0
        })
        .await;
    assert_eq!(m.get("lb_sync_nodes_changed_total{step=\"drain\"}"), 1.0);
    assert_eq!(m.get("lb_sync_nodes_changed_total{step=\"delete\"}"), 1.0);
    assert_eq!(
        m.get("lb_sync_api_calls_total{verb=\"shutdown_sessions\",status=\"ok\",outcome=\"ok\"}"),
        1.0
    );
    assert!(m.get("lb_sync_api_calls_total{verb=\"show_stat\",status=\"ok\",outcome=\"ok\"}") >= 1.0);

    // Every record gone: refused, nothing removed.
    w.delete([1, 2]).await;
    let line = lb.wait_ready(503, "refused:").await;
    assert!(
        line.contains("no record is left but the load balancer has 2 node(s)"),
        "{line}"
    );
    lb.wait_metrics("the refusal counted", |m| {
        m.get("lb_sync_refusals_total{reason=\"empty_desired\"}") >= 1.0 && m.get("lb_sync_refused") == 1.0
    })
    .await;
    w.wait_up(&[1, 2], Duration::ZERO).await;
    w.put([1, 2]).await;
    lb.wait_ready(200, "ready").await;

    // HAProxy gone: reads fail, counted as unreachable.
    w.ha.kill();
    lb.wait_metrics("a read of a dead HAProxy counted", |m| {
        m.get("lb_sync_api_calls_total{verb=\"show_servers_state\",status=\"unreachable\",outcome=\"transport\"}")
            >= 1.0
    })
    .await;
    eprintln!("/metrics of the HAProxy run:\n{}", lb.scrape().text);
}

/// Before its first plan lb-sync is alive but not ready: with etcd down at start it
/// cannot plan, `/readyz` says `starting` (503) while `/healthz` says 200 `starting`; etcd
/// back, the first plan makes it ready.
#[tokio::test]
async fn readyz_waits_for_the_first_plan() {
    let mut w = World::start(quick_sim()).await;
    w.put([1]).await;
    w.etcd.kill();
    let lb = Running::start("lb-sync-no-etcd", w.args());
    let line = lb.wait_ready(503, "starting").await;
    assert_eq!(line.trim(), "starting: no plan computed yet");
    // Still so a few resyncs later, and alive meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        lb.get("/readyz"),
        Some((503, "starting: no plan computed yet\n".to_owned()))
    );
    let (code, health) = lb.get("/healthz").unwrap_or_default();
    assert!(code == 200 && health.contains("\"starting\""), "{code} {health}");
    assert_eq!(lb.scrape().get("lb_sync_passes_total"), 0.0);
    w.etcd.restart();
    lb.wait_ready(200, "ready").await;
    w.wait_enabled(&[1], WITHIN).await;
}

/// `plan --output json`, the README's scenario: nodes 1..3 on the LB, records 3 and 4:
/// web04 is added, nodes 1 and 2 would drain but the drains are refused.
#[tokio::test]
async fn plan_output_json_parses_and_matches_the_scenario() {
    let w = World::start(quick_sim()).await;
    let ids: Vec<u64> = (1..=3u8)
        .map(|n| w.sim.add_node(1, &format!("10.0.0.{n}"), support::PORT, "ENABLED"))
        .collect();
    w.put([3, 4]).await;
    let mut args = w.args();
    args.extend(["plan".to_owned(), "--output".to_owned(), "json".to_owned()]);
    let (status, stdout, stderr) = support::run_once(&args);
    assert!(status.success(), "{stderr}");
    let got: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let revision = got["revision"].as_i64().unwrap_or_default();
    assert!(revision > 0, "{got:#}");
    let port = support::PORT;
    let want = serde_json::json!({
        "version": 1,
        "target": "load balancer 1 in ORD",
        "status": "ACTIVE",
        "lb_nodes": 3,
        "node_limit": 25,
        "prefix": w.prefix,
        "revision": revision,
        "desired_nodes": 2,
        "drain_seconds": 1.0,
        "converged": false,
        "forced": false,
        "steps": [
            {"action": "add", "allowed": true,
             "nodes": [{"address": "10.0.0.4", "port": port, "condition": "ENABLED"}]},
            {"action": "drain", "allowed": false,
             "nodes": [{"id": ids[0], "address": "10.0.0.1", "port": port}]},
            {"action": "drain", "allowed": false,
             "nodes": [{"id": ids[1], "address": "10.0.0.2", "port": port}]},
        ],
        "waiting": [],
        "notes": [],
        "refusals": [{
            "reason": "max_remove",
            "message": "the plan would take 2 of 3 nodes out of service, more than --max-remove 50%",
        }],
    });
    assert_eq!(got, want, "{got:#}");
    // The text form stays the default.
    let mut text_args = w.args();
    text_args.push("plan".to_owned());
    let (_, text, _) = support::run_once(&text_args);
    assert!(text.contains("add     10.0.0.4:8080 ENABLED"), "{text}");
    assert!(text.contains("REFUSED the plan would take 2 of 3"), "{text}");
    assert_eq!(
        w.sim.count("POST") + w.sim.count("PUT") + w.sim.count("DELETE"),
        0,
        "plan changes nothing"
    );
}
