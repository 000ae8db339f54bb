//! lb-sync against a real etcd and the CLB simulator, through the real binary.
//!
//! Records are written as the announcer writes them (`fields` layout, one transaction
//! per record). Timings are short (`--drain 1s`, `--debounce 300ms:2s`, PENDING_UPDATE
//! 300 ms) so the whole file runs in a couple of minutes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "lb_sync/support.rs"]
mod support;

#[path = "lb_sync/haproxy.rs"]
mod haproxy;

#[path = "lb_sync/metrics.rs"]
mod metrics;

#[path = "lb_sync/operator.rs"]
mod operator;

use std::time::Duration;

use support::{LbSync, PORT, STOP, World, announcer, quick_sim, run_once};
use testbed::clb_sim::{RateLimit, RateLimits, SimConfig};
use testbed::eventually;

const WITHIN: Duration = Duration::from_secs(20);

/// The call of the Interface section, flag for flag, keeps the LB in step. The
/// API key (long and unique, from a file) appears nowhere in the log, even at debug level,
/// and the token's expiry, written with a UTC offset as Identity does, is understood.
#[tokio::test]
async fn the_documented_call_keeps_the_lb_in_step() {
    let key = format!("{}-{}", testbed::unique("api-key"), testbed::unique("never-logged"));
    let w = World::start(SimConfig {
        api_key: key.clone(),
        ..quick_sim()
    })
    .await;
    w.put([1, 2]).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let args: Vec<String> = [
        "--etcd-endpoints",
        &w.etcd.endpoint(),
        "--prefix",
        &w.prefix,
        "--region",
        "ORD",
        "--load-balancer-id",
        "1",
        "--username",
        "u",
        "--api-key-file",
        key_file.to_str().unwrap(),
        "--identity-url",
        &w.sim.identity_url(),
        "--drain",
        "1s",
        "--log-filter",
        "debug",
        "run",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let lb = LbSync::start(&args);
    w.wait_enabled(&[1, 2], WITHIN).await;
    assert_eq!(w.sim.auth_calls(), 1, "one token for the whole run");
    let log = lb.log();
    assert!(!log.contains(&key), "the API key is never logged:\n{log}");
    assert!(
        !log.contains("no readable expiry"),
        "the expiry with an offset is read:\n{log}"
    );
    assert!(log.contains("DEBUG"), "the log is at debug level");
}

/// A machine (or a `FROM scratch` image) without CA certificates still starts, and
/// reaches a plain-http API such as the simulator.
#[tokio::test]
async fn without_system_ca_certificates_an_http_api_is_still_reached() {
    let w = World::start(quick_sim()).await;
    w.put([1]).await;
    let mut args = w.args();
    args.push("plan".into());
    let out = support::command(&args)
        .env("SSL_CERT_FILE", "/nonexistent/ca-certificates.crt")
        .env("SSL_CERT_DIR", "/nonexistent/certs")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("add     10.0.0.1:8080"), "{stdout}");
    assert!(stderr.contains("no usable system CA certificates"), "{stderr}");
}

/// 1 -> 10 -> 3 records: the LB follows with the fewest calls the API allows:
/// ceil(adds / node limit) POSTs, one PUT per drain, ceil(deletes / 10) DELETEs.
#[tokio::test]
async fn scale_1_to_10_to_3_follows_with_the_fewest_calls() {
    let w = World::start(quick_sim()).await;
    w.put([1]).await;
    let mut a = w.lb_sync(&[]);
    w.wait_enabled(&[1], WITHIN).await;
    assert_eq!(w.counts().1, 1, "one POST for the first node");

    w.put(2..=10).await;
    let ten: Vec<u8> = (1..=10).collect();
    w.wait_enabled(&ten, WITHIN).await;
    let (_, post, put, delete) = w.counts();
    assert_eq!((post, put, delete), (2, 0, 0), "nine adds in one POST");

    // 10 -> 3 takes 70% out of service: above the default cap, so --max-remove is raised
    // for this step (a restart with the new option, as an operator would do it).
    a.stop(libc::SIGTERM, STOP).await;
    w.delete(4..=10).await;
    let _b = w.lb_sync(&["--max-remove", "80"]);
    w.wait_enabled(&[1, 2, 3], WITHIN).await;
    let (get, post, put, delete) = w.counts();
    eprintln!("API calls for 1 -> 10 -> 3: GET {get}, POST {post}, PUT {put}, DELETE {delete}");
    assert_eq!(post, 2, "ceil(9 / 25) + 1 POSTs");
    assert_eq!(put, 7, "one PUT (DRAINING) per removed node");
    assert_eq!(delete, 1, "ceil(7 / 10) bulk DELETEs");
    assert_eq!(w.sim.count_status("PUT", 202), 7);
    assert_eq!(w.sim.count_status("DELETE", 202), 1);
}

/// The same 10 -> 3 step with the default --max-remove 50% is refused: the LB keeps its
/// ten nodes, the refusal shows in the log, /healthz and /metrics.
#[tokio::test]
async fn scale_down_over_the_default_cap_is_refused_and_the_lb_keeps_its_10_nodes() {
    let w = World::start(quick_sim()).await;
    for n in 1..=10u8 {
        w.sim.add_node(1, &format!("10.0.0.{n}"), PORT, "ENABLED");
    }
    w.put(1..=10).await;
    let lb = w.lb_sync(&[]);
    lb.wait_health("\"converged\"", WITHIN).await;
    w.delete(4..=10).await;
    let health = lb.wait_health("\"refused\"", WITHIN).await;
    assert!(health.contains("503"), "{health}");
    assert!(health.contains("7 of 10 nodes out of service"), "{health}");
    lb.wait_log("plan refused, load balancer left unchanged", WITHIN).await;
    let metrics = lb.metrics();
    assert!(
        metrics.contains("lb_sync_refusals_total{reason=\"max_remove\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("lb_sync_refused 1"), "{metrics}");
    // Several resyncs later, still nothing changed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ten: Vec<u8> = (1..=10).collect();
    w.wait_enabled(&ten, Duration::ZERO).await;
    let (_, post, put, delete) = w.counts();
    assert_eq!((post, put, delete), (0, 0, 0));
}

/// A deleted record: its node goes DRAINING, then, after --drain, it is deleted.
#[tokio::test]
async fn a_deleted_record_drains_its_node_then_deletes_it() {
    let w = World::start(quick_sim()).await;
    w.put([1, 2]).await;
    let _lb = w.lb_sync(&["--drain", "2s"]);
    w.wait_enabled(&[1, 2], WITHIN).await;
    w.delete([2]).await;
    let draining = eventually("node 2 is DRAINING", WITHIN, async || {
        (w.nodes() == vec![(1, "ENABLED".to_owned()), (2, "DRAINING".to_owned())]).then_some(())
    })
    .await
    .ok();
    assert!(draining.is_some(), "node 2 never DRAINING: {:?}", w.nodes());
    w.wait_enabled(&[1], WITHIN).await;
    assert_eq!(w.sim.count_status("DELETE", 202), 1);
    // From the simulator's own log: the DELETE came at least --drain after the DRAINING PUT.
    let calls = w.sim.calls();
    let put = calls
        .iter()
        .find(|c| c.method == "PUT" && c.status == 202)
        .expect("the DRAINING PUT");
    let delete = calls
        .iter()
        .find(|c| c.method == "DELETE" && c.status == 202)
        .expect("the DELETE");
    let waited = delete.at.duration_since(put.at).unwrap_or_default();
    assert!(
        waited >= Duration::from_secs(2),
        "deleted {waited:?} after the drain began, --drain 2s"
    );
}

/// With a batch-delete limit of 3, 7 -> 3 records delete the four drained nodes in two
/// bulk DELETEs (3 + 1), never more ids than the limit in one.
#[tokio::test]
async fn bulk_deletes_follow_the_accounts_batch_limit() {
    let w = World::start(SimConfig {
        batch_delete_limit: 3,
        ..quick_sim()
    })
    .await;
    w.put(1..=7).await;
    let mut a = w.lb_sync(&[]);
    w.wait_enabled(&[1, 2, 3, 4, 5, 6, 7], WITHIN).await;
    a.stop(libc::SIGTERM, STOP).await;
    w.delete(4..=7).await;
    let _b = w.lb_sync(&["--max-remove", "60"]);
    w.wait_enabled(&[1, 2, 3], WITHIN).await;
    let sizes: Vec<usize> = w
        .sim
        .calls()
        .iter()
        .filter(|c| c.method == "DELETE" && c.status == 202)
        .map(|c| c.path.matches("id=").count())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 4, "{sizes:?}");
    assert!(sizes.iter().all(|s| *s <= 3), "no DELETE over the limit: {sizes:?}");
    assert_eq!(sizes.len(), 2, "ceil(4 / 3) DELETEs: {sizes:?}");
}

/// A request slower than --api-timeout is abandoned and retried: answers slower than the
/// timeout show as `transport` errors, and once they are fast again the LB converges.
#[tokio::test]
async fn an_answer_slower_than_the_api_timeout_is_retried() {
    let w = World::start(quick_sim()).await;
    w.put([1]).await;
    w.sim.set_delay(Duration::from_millis(1500));
    let lb = w.lb_sync(&["--api-timeout", "300ms"]);
    let timed_out = eventually("a timeout is counted", WITHIN, async || {
        lb.metrics().contains("outcome=\"transport\"").then_some(())
    })
    .await
    .ok();
    assert!(
        timed_out.is_some(),
        "no timeout counted:\n{}\n{}",
        lb.metrics(),
        lb.log()
    );
    assert!(w.sim.nodes(1).is_empty(), "nothing changed while every answer was late");
    w.sim.set_delay(Duration::ZERO);
    w.wait_enabled(&[1], Duration::from_secs(40)).await;
    assert!(lb.log().contains("timed out"), "the timeout is logged:\n{}", lb.log());
}

/// An LB stuck in PENDING_UPDATE, then changed under our feet by "another client": lb-sync
/// waits, retries after the 422s, and converges with no duplicate node.
#[tokio::test]
async fn a_load_balancer_stuck_pending_update_converges_without_duplicates() {
    let w = World::start(quick_sim()).await;
    w.sim.hold_pending(1, Duration::from_secs(3));
    w.sim.inject_immutable(2);
    w.put([1, 2, 3]).await;
    let lb = w.lb_sync(&[]);
    w.wait_enabled(&[1, 2, 3], Duration::from_secs(30)).await;
    assert_eq!(w.sim.count_status("POST", 202), 1, "added once");
    assert_eq!(w.sim.count_status("POST", 422), 2, "the two injected 422s were retried");
    // Sorted first: `dedup` only drops neighbours, and the simulator lists nodes by id.
    let mut addresses: Vec<(String, u16)> = w.sim.nodes(1).into_iter().map(|n| (n.address, n.port)).collect();
    addresses.sort();
    let mut unique = addresses.clone();
    unique.dedup();
    assert_eq!(addresses, unique, "no duplicates");
    assert!(lb.log().contains("immutable"), "{}", lb.log());
}

/// Tight rate limits and many changes: 413s come, lb-sync honours Retry-After, never sends
/// a request of a verb while its Retry-After is in force, and converges.
#[tokio::test]
async fn a_rate_limit_storm_converges_without_a_request_inside_retry_after() {
    let w = World::start(SimConfig {
        pending_time: Duration::ZERO,
        rate_limits: RateLimits {
            get: RateLimit::new(3, 120),
            post: RateLimit::new(1, 60),
            put: RateLimit::new(1, 60),
            delete: RateLimit::new(1, 60),
        },
        ..SimConfig::default()
    })
    .await;
    w.put(1..=6).await;
    let lb = w.lb_sync(&["--max-remove", "100", "--poll", "50ms"]);
    w.wait_enabled(&[1, 2, 3, 4, 5, 6], WITHIN).await;
    w.delete(3..=6).await;
    w.wait_enabled(&[1, 2], Duration::from_secs(60)).await;
    let limited: usize = ["GET", "POST", "PUT", "DELETE"]
        .iter()
        .map(|v| w.sim.count_status(v, 413))
        .sum();
    assert!(limited > 0, "the storm hit the rate limits");
    let inside = w.sim.requests_during_retry_after();
    assert!(
        inside.is_empty(),
        "requests sent while Retry-After was in force: {inside:?}"
    );
    assert!(lb.log().contains("rate-limited (413)"));
    // Every 413 the simulator sent is counted under its verb and status, and each one
    // made the client wait (the wait counted under its cause, the seconds too).
    let m = metrics::Scrape::of(&lb.metrics());
    for (verb, label) in [("POST", "POST"), ("PUT", "PUT"), ("DELETE", "DELETE")] {
        let sent = w.sim.count_status(verb, 413);
        let counted = m.get(&format!(
            "lb_sync_api_calls_total{{verb=\"{label}\",status=\"413\",outcome=\"rate_limited\"}}"
        ));
        assert_eq!(counted as usize, sent, "{verb} 413s:\n{}", m.text);
        let waits = m.get(&format!(
            "lb_sync_rate_limit_waits_total{{verb=\"{label}\",cause=\"over_limit_413\"}}"
        ));
        assert_eq!(waits as usize, sent, "{verb} waits:\n{}", m.text);
    }
    let waited = m.sum("lb_sync_rate_limit_wait_seconds_total");
    assert!(waited > 0.0, "time waited is counted:\n{}", m.text);
    eprintln!("rate-limit storm: {limited} 413s, {waited:.1}s waited");
}

/// Tokens that expire during the run are renewed before they expire (no call is ever
/// refused for an expired token); a revoked token (401) is replaced once and the call
/// retried; the LB keeps following.
#[tokio::test]
async fn token_expiry_and_revocation_mid_run_are_survived() {
    const LIFETIME: Duration = Duration::from_secs(5);
    let w = World::start(SimConfig {
        token_lifetime: LIFETIME,
        ..quick_sim()
    })
    .await;
    w.put([1]).await;
    let lb = w.lb_sync(&["--resync", "1s"]);
    w.wait_enabled(&[1], WITHIN).await;
    // Live past the first token's lifetime: resyncs keep calling, the token is renewed
    // ahead of its expiry (a tenth of its life early), so no call meets a 401. A client
    // that only re-authenticated after a 401 would pass the count but not the latter.
    let first = w
        .sim
        .calls()
        .iter()
        .find(|c| c.identity)
        .map(|c| c.at)
        .expect("an auth call");
    let past = first + LIFETIME + Duration::from_secs(1);
    let renewed = eventually("calls past the first token's lifetime", WITHIN, async || {
        let late = w.sim.calls().iter().any(|c| !c.identity && c.at > past);
        (late && w.sim.auth_calls() >= 2).then_some(())
    })
    .await;
    renewed.unwrap_or_else(|e| lb.fail(format!("{e}: {} auth call(s)", w.sim.auth_calls())));
    let refused: Vec<_> = w.sim.calls().into_iter().filter(|c| c.status == 401).collect();
    assert!(refused.is_empty(), "renewed only after a 401: {refused:?}");
    w.sim.revoke_tokens();
    w.put([2]).await;
    w.wait_enabled(&[1, 2], WITHIN).await;
    assert!(
        w.sim.count_status("GET", 401) + w.sim.count_status("POST", 401) >= 1,
        "the revoked token was refused"
    );
    assert!(w.sim.auth_calls() >= 3);
    lb.wait_health("\"converged\"", WITHIN).await;
}

/// Every record gone at once (etcd wiped): the LB is left as it is and the refusal is
/// visible; etcd itself gone: the view is incomplete and still nothing changes; etcd
/// back: the watch resumes and records are followed again.
#[tokio::test]
async fn etcd_wiped_leaves_the_lb_unchanged_and_reports_the_refusal() {
    let mut w = World::start(quick_sim()).await;
    w.put([1, 2, 3]).await;
    let lb = w.lb_sync(&["--max-remove", "100", "--min-nodes", "0"]);
    w.wait_enabled(&[1, 2, 3], WITHIN).await;
    w.wipe().await;
    let health = lb.wait_health("refusing to empty it", WITHIN).await;
    assert!(health.contains("503"), "{health}");
    lb.wait_log("refusing to empty it", WITHIN).await;
    assert!(
        lb.metrics()
            .contains("lb_sync_refusals_total{reason=\"empty_desired\"}")
    );

    w.etcd.kill();
    lb.wait_health("not complete", WITHIN).await;
    assert!(lb.metrics().contains("reason=\"incomplete_view\""));
    w.wait_enabled(&[1, 2, 3], Duration::ZERO).await;
    let (_, _, put, delete) = w.counts();
    assert_eq!((put, delete), (0, 0), "nothing was drained or deleted");

    // etcd back: the watch resumes from its last revision and the loop follows again.
    w.etcd.restart();
    let client = etcd_client::Client::connect([w.etcd.endpoint()], None).await.unwrap();
    w.client = client;
    w.put(1..=4).await;
    w.wait_enabled(&[1, 2, 3, 4], WITHIN).await;
    lb.wait_log("watch resumed; the view is complete again", WITHIN).await;
}

/// Two instances with --election-key: one applies, the other stands by; kill the leader
/// and the other takes over.
#[tokio::test]
async fn two_instances_elect_one_leader_and_the_other_takes_over_when_it_is_killed() {
    let w = World::start(quick_sim()).await;
    let key = format!("{}/lb-sync-leader", w.root);
    let election = ["--election-key", key.as_str(), "--election-ttl", "2s"];
    let a = w.lb_sync(&election);
    let b = w.lb_sync(&election);
    let roles = eventually("one leader and one standby", WITHIN, async || {
        let (ha, hb) = (a.healthz(), b.healthz());
        let la = ha.contains("\"leader\": true");
        let lb = hb.contains("\"leader\": true");
        let standby = |h: &str| h.contains("\"standby\"");
        match (la, lb) {
            (true, false) if standby(&hb) => Some(0),
            (false, true) if standby(&ha) => Some(1),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}\n{}", a.excerpt(), b.excerpt()));
    let (mut leader, follower) = if roles == 0 { (a, b) } else { (b, a) };
    w.put([1, 2]).await;
    w.wait_enabled(&[1, 2], WITHIN).await;
    assert_eq!(w.sim.count("POST"), 1, "one add, by the leader");
    assert!(leader.log().contains("add 2 node(s)"), "{}", leader.log());
    assert!(
        !follower.log().contains("node(s):"),
        "the standby applied nothing:\n{}",
        follower.log()
    );
    assert!(follower.healthz().contains("\"standby\""));
    // A standby is ready (it has nothing to plan until it leads); the leader gauge tells
    // the two apart.
    let ready = testbed::http_get(follower.listen, "/readyz").unwrap_or_default();
    assert!(
        ready.starts_with("HTTP/1.0 200") && ready.contains("standby: not the leader"),
        "{ready}"
    );
    assert!(
        follower.metrics().contains("lb_sync_leader 0"),
        "{}",
        follower.metrics()
    );
    assert!(leader.metrics().contains("lb_sync_leader 1"), "{}", leader.metrics());

    leader.stop(libc::SIGKILL, STOP).await;
    w.put([3]).await;
    w.wait_enabled(&[1, 2, 3], Duration::from_secs(30)).await;
    follower.wait_health("\"leader\": true", WITHIN).await;
    follower.wait_log("this instance is the leader", WITHIN).await;
    assert_eq!(w.sim.count_status("POST", 202), 2);
    assert!(
        follower.metrics().contains("lb_sync_leader 1"),
        "{}",
        follower.metrics()
    );
}

/// etcd down for longer than `--election-ttl`, then back with its data: the leader stops
/// applying while it cannot confirm its lease, but keeps the lease (etcd renews every lease
/// when a member becomes leader), so it leads again as soon as etcd answers, on the same
/// lease, and the standby never leads. Giving the lease up at its own deadline would end
/// the term at every etcd hiccup and let whichever instance campaigned next take over.
#[tokio::test]
async fn the_leader_keeps_its_lease_across_an_etcd_outage_longer_than_the_ttl() {
    let mut w = World::start(quick_sim()).await;
    let key = format!("{}/lb-sync-leader", w.root);
    let election = ["--election-key", key.as_str(), "--election-ttl", "2s"];
    let a = w.lb_sync(&election);
    let b = w.lb_sync(&election);
    let roles = eventually("one leader and one standby", WITHIN, async || {
        match (
            a.healthz().contains("\"leader\": true"),
            b.healthz().contains("\"leader\": true"),
        ) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}\n{}", a.excerpt(), b.excerpt()));
    let (leader, standby) = if roles == 0 { (a, b) } else { (b, a) };
    w.put([1]).await;
    w.wait_enabled(&[1], WITHIN).await;

    w.etcd.kill();
    // Past the TTL: the leader's own deadline lapses and it says so.
    leader.wait_health("\"leader\": false", Duration::from_secs(10)).await;
    leader
        .wait_log("lease not confirmed; applying stopped", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.etcd.restart();
    let back = std::time::Instant::now();
    leader.wait_health("\"leader\": true", WITHIN).await;
    println!(
        "figure: etcd down ~4 s (--election-ttl 2s): the leader led again {:?} after etcd answered, on the same lease",
        back.elapsed()
    );
    leader.wait_log("lease confirmed again; applying resumes", WITHIN).await;
    let log = leader.log();
    assert_eq!(
        log.matches("election: campaigning").count(),
        1,
        "the leader kept its first lease (one campaign):\n{log}"
    );
    assert!(!log.contains("leadership lost"), "{log}");
    let client = etcd_client::Client::connect([w.etcd.endpoint()], None).await.unwrap();
    w.client = client;
    w.put([2]).await;
    w.wait_enabled(&[1, 2], WITHIN).await;
    assert_eq!(
        leader.log().matches("add 1 node(s)").count(),
        2,
        "the leader added both nodes, before and after the outage:\n{}",
        leader.log()
    );
    assert!(
        !standby.log().contains("this instance is the leader"),
        "the standby never led:\n{}",
        standby.log()
    );
    assert!(standby.healthz().contains("\"standby\""), "{}", standby.healthz());
}

/// Bad records (missing port, port `abc`, address not an IP) are skipped with a warning
/// and never remove a node; a good record next to them is still added; while a record
/// cannot be placed at all, no node is removed.
#[tokio::test]
async fn bad_records_are_skipped_with_a_warning_and_never_remove_a_node() {
    let w = World::start(quick_sim()).await;
    w.put([1, 2, 3]).await;
    let lb = w.lb_sync(&[]);
    w.wait_enabled(&[1, 2, 3], WITHIN).await;

    // web02 turns bad (port abc); web04 is written without a port and web05 with an
    // address that is not an IP (never readable); web06 is good.
    w.put_raw(&format!("{}/web02/port", w.prefix), "abc").await;
    let layout = sidekick::schema::Layout::Fields;
    let no_port: Vec<(String, String)> = World::record(4)
        .entries(&w.root, layout)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("/port"))
        .collect();
    w.put_entries(no_port).await;
    let no_ip: Vec<(String, String)> = World::record(5)
        .entries(&w.root, layout)
        .into_iter()
        .map(|(k, v)| {
            if k.ends_with("/private_ipv4_addr") {
                (k, "not-an-ip".to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    w.put_entries(no_ip).await;
    w.put([6]).await;
    w.wait_enabled(&[1, 2, 3, 6], WITHIN).await;
    for inst in ["web02", "web04", "web05"] {
        lb.wait_log(&format!("skipping unreadable record: record \"{inst}\""), WITHIN)
            .await;
    }
    // web05 cannot be placed: deleting web01's record removes nothing while it is there.
    w.delete([1]).await;
    lb.wait_log("no node is removed while a record cannot be read", WITHIN)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.wait_enabled(&[1, 2, 3, 6], Duration::ZERO).await;
    let (_, _, put, delete) = w.counts();
    assert_eq!((put, delete), (0, 0));
    // Once web05 is gone, web01's node is drained and deleted; web02's node stays.
    w.delete([5]).await;
    w.wait_enabled(&[2, 3, 6], WITHIN).await;
}

/// `lb-sync plan` prints adds, drains and refusals with reasons, changes nothing, exits 0.
#[tokio::test]
async fn plan_prints_adds_drains_and_refusals_then_exits() {
    let w = World::start(quick_sim()).await;
    w.put([1, 2, 3]).await;
    for n in [1u8, 8, 9] {
        w.sim.add_node(1, &format!("10.0.0.{n}"), PORT, "ENABLED");
    }
    let mut args = w.args();
    args.push("plan".into());
    let (status, out, err) = run_once(&args);
    assert!(status.success(), "{err}");
    assert!(out.contains("add     10.0.0.2:8080 ENABLED"), "{out}");
    assert!(out.contains("add     10.0.0.3:8080 ENABLED"), "{out}");
    assert!(out.contains("drain   node") && out.contains("10.0.0.8:8080"), "{out}");
    assert!(
        out.contains("REFUSED the plan would take 2 of 3 nodes out of service"),
        "{out}"
    );
    let (_, post, put, delete) = w.counts();
    assert_eq!((post, put, delete), (0, 0, 0), "plan changes nothing");

    let mut args = w.args();
    args.extend(["--max-remove".into(), "100".into(), "plan".into()]);
    let (status, out, _) = run_once(&args);
    assert!(status.success());
    assert!(!out.contains("REFUSED"), "{out}");
}

/// Bad input is refused with a one-line error naming it, before anything is touched.
#[tokio::test]
async fn bad_input_exits_non_zero_with_a_one_line_error() {
    let w = World::start(quick_sim()).await;
    let with = |replace: &str, value: &str| -> Vec<String> {
        let mut args = w.args();
        let i = args.iter().position(|a| a == replace).unwrap();
        args[i + 1] = value.to_owned();
        args.push("run".into());
        args
    };
    let (status, _, err) = run_once(&with("--load-balancer-id", "abc"));
    assert!(!status.success() && err.contains("abc"), "{err}");
    let (status, _, err) = run_once(&with("--region", "ZZZ"));
    assert!(!status.success(), "{err}");
    assert!(err.contains("\"ZZZ\"") && err.contains("ORD"), "{err}");
    let mut args = w.args();
    args.extend(["--ca-file".into(), "/nonexistent/ca.pem".into(), "run".into()]);
    let (status, _, err) = run_once(&args);
    assert!(!status.success() && err.contains("/nonexistent/ca.pem"), "{err}");
    let (status, _, err) = run_once(&with("--username", "nobody"));
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("Unable to authenticate") && err.lines().filter(|l| l.contains("lb-sync:")).count() == 1,
        "{err}"
    );
    assert!(!err.contains("\"k\""), "the key is not shown: {err}");
    // No key at all.
    let mut args = w.args();
    args.push("run".into());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-sync"))
        .args(&args)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("RACKSPACE_API_KEY"), "{err}");
    assert_eq!(w.counts(), (0, 0, 0, 0), "nothing reached the load balancer");
}

/// --dry-run runs the loop and logs the plan without changing the LB.
#[tokio::test]
async fn dry_run_logs_the_plan_and_changes_nothing() {
    let w = World::start(quick_sim()).await;
    w.put([1, 2]).await;
    let lb = w.lb_sync(&["--dry-run"]);
    lb.wait_log("dry run: would add 2 node(s)", WITHIN).await;
    lb.wait_health("\"dry_run\"", WITHIN).await;
    assert!(w.sim.nodes(1).is_empty());
    assert_eq!(w.sim.count("POST"), 0);
}

/// systemd: READY=1 once the first plan is applied (its status line says what it found),
/// watchdog pings while the loops run, STOPPING=1 on SIGTERM; on a `NOTIFY_SOCKET` the
/// test binds.
#[tokio::test]
async fn ready_after_the_first_plan_then_watchdog_pings_and_stopping() {
    let w = World::start(quick_sim()).await;
    w.put([1, 2]).await;
    let mut notify = testbed::NotifySocket::bind();
    let mut args = w.args();
    args.extend(["--log-format".into(), "json".into(), "run".into()]);
    let mut cmd = support::command(&args);
    cmd.env("NOTIFY_SOCKET", notify.path()).env("WATCHDOG_USEC", "2000000");
    let mut lb = testbed::Daemon::start("lb-sync-notify", cmd);
    let ready = testbed::eventually("READY=1 on NOTIFY_SOCKET", WITHIN, async || notify.find("READY=1")).await;
    let ready = ready.unwrap_or_else(|e| lb.fail(e));
    assert!(
        ready.contains("STATUS=converged: 2 node(s) wanted, 2 on the load balancer"),
        "{ready:?}"
    );
    assert_eq!(w.sim.nodes(1).len(), 2, "ready once the plan is applied");
    // The log contract: one JSON "node added" line per node, with address, port and id.
    let added: Vec<serde_json::Value> = lb
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "node added")
        .collect();
    assert_eq!(added.len(), 2, "{}", lb.excerpt());
    for line in &added {
        assert!(
            line["address"].as_str().is_some_and(|a| a.starts_with("10.0.0.")),
            "{line}"
        );
        assert_eq!(line["port"], PORT, "{line}");
        assert!(line["id"].as_u64().is_some_and(|id| id > 0), "{line}");
    }
    let pings = notify.pings_during(Duration::from_secs(3)).await;
    assert!(pings >= 2, "watchdog pings every second: {pings}");
    let status = lb.stop(libc::SIGTERM, WITHIN).await;
    assert!(status.success(), "{status}\n{}", lb.excerpt());
    assert!(notify.find("STOPPING=1").is_some(), "{:?}", notify.received());
    // `--log-format json`: every line of the run, the stop included, is one JSON object.
    let log = lb.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| lb.fail(format!("a log line is not JSON ({e}): {line}")));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
    }
    assert!(log.contains("\"lb-sync stopped\""), "{log}");
}

/// End to end: two busybox web containers announced by the real announcer; lb-sync puts
/// both on the LB; one container stops, the announcer withdraws it, lb-sync drains and
/// deletes its node.
#[tokio::test]
async fn end_to_end_with_the_real_announcer_and_docker_containers() {
    use testbed::docker::{self, Spec};
    let w = World::start(quick_sim()).await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let mut containers = Vec::new();
    let mut announcers = Vec::new();
    for i in 1..=2u8 {
        let name = testbed::unique("lbsync-web");
        let c = Spec::web(&image).name(&name).run(&d).await;
        let args: Vec<String> = [
            "--etcd-endpoints",
            &w.etcd.endpoint(),
            "--prefix",
            &w.root,
            "--public-ipv4",
            "127.0.0.1",
            "--private-ipv4",
            "127.0.0.1",
            "--hostname",
            &testbed::unique("host"),
            "--ttl",
            "2s",
            "--check-interval",
            "500ms",
            "container",
            &name,
            "--service",
            "web",
            "--instance",
            &format!("web{i:02}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        announcers.push(announcer(&args));
        containers.push(c);
    }
    let mut ports = Vec::new();
    for c in &containers {
        ports.push(c.host_port("80/tcp").await);
    }
    let lb = w.lb_sync(&[]);
    let on_lb = |want: &[u16]| {
        let mut got: Vec<(String, u16, String)> = w
            .sim
            .nodes(1)
            .into_iter()
            .map(|n| (n.address, n.port, n.condition))
            .collect();
        got.sort();
        let mut expect: Vec<(String, u16, String)> = want
            .iter()
            .map(|p| ("127.0.0.1".to_owned(), *p, "ENABLED".to_owned()))
            .collect();
        expect.sort();
        got == expect
    };
    let both = eventually("both containers reach the LB", Duration::from_secs(30), async || {
        on_lb(&ports).then_some(())
    })
    .await
    .ok();
    assert!(
        both.is_some(),
        "both containers never reached the LB: {:?}\nannouncer: {}\nlb-sync: {}",
        w.sim.nodes(1),
        announcers[0].log(),
        lb.log()
    );
    containers[1].stop(1).await;
    let one = eventually(
        "the stopped container's node leaves",
        Duration::from_secs(30),
        async || on_lb(&ports[..1]).then_some(()),
    )
    .await
    .ok();
    assert!(
        one.is_some(),
        "the stopped container's node is still there: {:?}",
        w.sim.nodes(1)
    );
    assert_eq!(w.sim.count_status("PUT", 202), 1, "drained once");
    assert_eq!(w.sim.count_status("DELETE", 202), 1, "deleted once");
}

/// A watch that starts from a revision etcd has compacted away reloads the whole prefix:
/// the view ends up exactly what etcd holds.
#[tokio::test]
async fn a_watch_starting_at_a_compacted_revision_reloads_the_whole_prefix() {
    use lb_sync::records::{Snapshot, Source, follow_from};
    use sidekick::schema::{AddressField, Layout};
    let w = World::start(quick_sim()).await;
    w.put([1]).await;
    let mut client = w.client.clone();
    let head = client.get("/", None).await.unwrap();
    let old_revision = head.header().unwrap().revision();
    let old: Snapshot = Snapshot {
        kvs: World::record(1)
            .entries(&w.root, Layout::Fields)
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
            .collect(),
        revision: old_revision,
    };
    w.put([2, 3]).await;
    w.delete([1]).await;
    let now = client.get("/", None).await.unwrap().header().unwrap().revision();
    client
        .compact(now, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await
        .unwrap();

    let (tx, mut rx) = tokio::sync::watch::channel(lb_sync::plan::Desired::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    let source = Source::new(&w.prefix, AddressField::Private, None);
    let task = tokio::spawn(follow_from(
        w.client.clone(),
        source,
        tx,
        cancel.clone(),
        Some(old),
        sidekick::notify::Notifier::with_watchdog(None).heartbeat("records"),
    ));
    let fresh = |d: &lb_sync::plan::Desired| d.complete && d.revision >= now;
    let done = tokio::time::timeout(WITHIN, rx.wait_for(fresh)).await;
    let view = done.expect("the whole prefix reloaded in time").unwrap().clone();
    let got: Vec<String> = view.nodes.keys().map(ToString::to_string).collect();
    assert_eq!(got, vec!["10.0.0.2:8080", "10.0.0.3:8080"], "exactly what etcd holds");
    cancel.cancel();
    task.await.unwrap();
}

/// --add-draining: a new node comes in DRAINING and is enabled only once it reports ONLINE.
#[tokio::test]
async fn add_draining_enables_a_new_node_once_it_is_online() {
    let w = World::start(quick_sim()).await;
    w.sim.set_new_node_status("OFFLINE");
    w.put([1]).await;
    let lb = w.lb_sync(&["--add-draining"]);
    let draining = eventually("node 1 is DRAINING", WITHIN, async || {
        (w.nodes() == vec![(1, "DRAINING".to_owned())]).then_some(())
    })
    .await
    .ok();
    assert!(draining.is_some(), "{:?}", w.nodes());
    lb.wait_health("\"waiting\"", WITHIN).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.nodes(), vec![(1, "DRAINING".to_owned())], "not enabled while OFFLINE");
    w.sim.set_node_status(1, "10.0.0.1", "ONLINE");
    w.wait_enabled(&[1], WITHIN).await;
}

/// The node limit: as many nodes as fit are added, the rest is reported, nothing is retried
/// against the limit.
#[tokio::test]
async fn the_node_limit_is_respected_and_reported() {
    let w = World::start(SimConfig {
        node_limit: 3,
        ..quick_sim()
    })
    .await;
    w.put(1..=5).await;
    let lb = w.lb_sync(&[]);
    w.wait_enabled(&[1, 2, 3], WITHIN).await;
    lb.wait_log("node limit 3: 2 desired node(s) not added", WITHIN).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.sim.count("POST"), 1, "no POST against a full load balancer");
    assert_eq!(w.sim.count_status("POST", 413), 0);
}

/// 5xx answers and slow answers are retried with backoff; the LB still converges.
#[tokio::test]
async fn server_errors_and_slow_answers_are_retried() {
    let w = World::start(quick_sim()).await;
    w.sim.inject_5xx(3);
    w.sim.set_delay(Duration::from_millis(200));
    w.put([1, 2]).await;
    let lb = w.lb_sync(&[]);
    w.wait_enabled(&[1, 2], WITHIN).await;
    let errors: usize = ["GET", "POST"].iter().map(|v| w.sim.count_status(v, 500)).sum();
    assert_eq!(errors, 3);
    assert!(lb.metrics().contains("outcome=\"server_error\""));
    assert_eq!(w.sim.count_status("POST", 202), 1);
}

/// A leader that can no longer renew its lease (etcd gone) stops applying by itself within
/// the lease TTL, so it cannot still be applying when another instance is elected. (It
/// keeps the lease: see `the_leader_keeps_its_lease_across_an_etcd_outage_longer_than_the_ttl`.)
#[tokio::test]
async fn a_leader_cut_off_from_etcd_stops_applying() {
    let mut w = World::start(quick_sim()).await;
    let key = format!("{}/lb-sync-leader", w.root);
    w.put([1]).await;
    let lb = w.lb_sync(&["--election-key", key.as_str(), "--election-ttl", "2s"]);
    w.wait_enabled(&[1], WITHIN).await;
    lb.wait_health("\"leader\": true", WITHIN).await;
    w.etcd.kill();
    lb.wait_log("lease not confirmed; applying stopped", WITHIN).await;
    lb.wait_health("\"leader\": false", WITHIN).await;
    assert!(lb.metrics().contains("lb_sync_leader 0"));
}

/// A load balancer in ERROR (or SUSPENDED) cannot be changed: lb-sync reports it in
/// /healthz and changes nothing, then follows the records once it is ACTIVE again.
#[tokio::test]
async fn a_load_balancer_in_error_is_reported_then_followed_once_active() {
    let w = World::start(quick_sim()).await;
    w.sim.set_status(1, "ERROR");
    w.put([1, 2]).await;
    let lb = w.lb_sync(&[]);
    let health = lb.wait_health("\"error\"", WITHIN).await;
    assert!(health.contains("load balancer 1 is ERROR"), "{health}");
    assert_eq!(w.sim.count("POST"), 0);
    w.sim.set_status(1, "ACTIVE");
    w.wait_enabled(&[1, 2], WITHIN).await;
    lb.wait_health("\"converged\"", WITHIN).await;
}
