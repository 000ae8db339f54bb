//! What an operator does to a running lb-sync, through the real binary: stop it (a second
//! SIGTERM forces the exit; a leader resigns so a standby takes over at once), lift the
//! safety rules with `--force`, and share a load balancer (`--managed-only`, `--node-port`,
//! `--address-field`).

use std::time::{Duration, Instant};

use testbed::eventually;

use super::support::{LbSync, PORT, STOP, World, quick_sim};

const WITHIN: Duration = Duration::from_secs(20);

/// Every node of load balancer 1 as (address, port, condition), sorted.
fn lb_nodes(w: &World) -> Vec<(String, u16, String)> {
    let mut v: Vec<(String, u16, String)> = w
        .sim
        .nodes(1)
        .into_iter()
        .map(|n| (n.address, n.port, n.condition))
        .collect();
    v.sort();
    v
}

fn node(address: &str, port: u16, condition: &str) -> (String, u16, String) {
    (address.to_owned(), port, condition.to_owned())
}

/// A second SIGTERM during the graceful stop exits at once with 130. The first one waits
/// for the API call in flight to end: here the token request, sent to an Identity that
/// accepts the connection and never answers (`--api-timeout 30s`).
#[tokio::test]
async fn a_second_sigterm_during_the_graceful_stop_exits_130_at_once() {
    let w = World::start(quick_sim()).await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let url = format!("http://{}/v2.0/", silent.local_addr().unwrap());
    let mut lb = w.lb_sync(&["--identity-url", &url, "--api-timeout", "30s"]);
    // Held open, never answered, until the test ends.
    let _conn = eventually("lb-sync asks Identity for a token", WITHIN, async || {
        silent.accept().ok()
    })
    .await
    .unwrap_or_else(|e| lb.fail(e));
    lb.signal(libc::SIGTERM);
    lb.wait_log("SIGTERM received: stopping gracefully", WITHIN).await;
    assert!(lb.is_running(), "the first SIGTERM waits for the call in flight");
    let second = Instant::now();
    let status = lb.stop(libc::SIGTERM, STOP).await;
    eprintln!("MEASURED second SIGTERM -> exit: {:?}", second.elapsed());
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", lb.excerpt());
    assert!(lb.log().contains("second signal: exiting now"), "{}", lb.excerpt());
}

/// On SIGTERM the leader resigns and revokes its lease: the standby leads at once, well
/// before the 10 s election TTL a killed leader would leave behind, and applies.
#[tokio::test]
async fn a_leader_resigns_on_sigterm_and_the_standby_takes_over_at_once() {
    const TTL: Duration = Duration::from_secs(10);
    let w = World::start(quick_sim()).await;
    let key = format!("{}/lb-sync-leader", w.root);
    let election = ["--election-key", key.as_str(), "--election-ttl", "10s"];
    w.put([1]).await;
    let a = w.lb_sync(&election);
    a.wait_health("\"leader\": true", WITHIN).await;
    let b = w.lb_sync(&election);
    b.wait_health("\"standby\"", WITHIN).await;
    w.wait_enabled(&[1], WITHIN).await;
    let (mut leader, standby): (LbSync, LbSync) = (a, b);

    leader.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let took = eventually("the standby leads", TTL, async || {
        standby
            .healthz()
            .contains("\"leader\": true")
            .then(|| signalled.elapsed())
    })
    .await
    .unwrap_or_else(|e| testbed::fail_with_logs(e, [&*leader, &*standby]));
    let status = leader.wait(STOP).await;
    eprintln!("MEASURED leader SIGTERM -> standby leads: {took:?} (election TTL {TTL:?})");
    assert!(status.success(), "{status:?}\n{}", leader.excerpt());
    assert!(
        took < TTL / 2,
        "took over after {took:?}: waited out the lease instead of a resignation"
    );
    standby.wait_log("election: this instance is the leader", WITHIN).await;
    w.put([2]).await;
    w.wait_enabled(&[1, 2], WITHIN).await;
    assert!(standby.log().contains("add 1 node(s)"), "{}", standby.excerpt());
}

/// `--force` in `run` holds through passes that fail (the load balancer in ERROR) and
/// through the drain wait, until the removals it allowed are done (the nodes of an empty
/// record set drained and deleted); then it lapses: the next empty record set is refused.
#[tokio::test]
async fn force_holds_until_a_clean_pass_then_lapses() {
    let w = World::start(quick_sim()).await;
    for n in 1..=3 {
        w.sim.add_node(1, &format!("10.0.0.{n}"), PORT, "ENABLED");
    }
    w.sim.set_status(1, "ERROR");
    let lb = w.lb_sync(&["--force"]);
    // No record at all: only --force lets lb-sync empty the load balancer, and not yet.
    lb.wait_health("\"error\"", WITHIN).await;
    assert_eq!(w.sim.nodes(1).len(), 3);
    w.sim.set_status(1, "ACTIVE");
    let emptied = eventually("the forced removals are done", WITHIN, async || {
        w.sim.nodes(1).is_empty().then_some(())
    })
    .await;
    emptied.unwrap_or_else(|e| lb.fail(format!("{e}: {:?}", lb_nodes(&w))));
    lb.wait_log("--force has served its purpose and is lifted", WITHIN)
        .await;
    assert_eq!(w.sim.count_status("PUT", 202), 3, "drained first");
    lb.wait_health("\"converged\"", WITHIN).await;

    // Lapsed: records come and go again; now emptying the load balancer is refused.
    w.put([4, 5]).await;
    w.wait_enabled(&[4, 5], WITHIN).await;
    w.wipe().await;
    let health = lb.wait_health("refusing to empty it", WITHIN).await;
    assert!(health.contains("503"), "{health}");
    assert_eq!(
        lb_nodes(&w),
        vec![node("10.0.0.4", PORT, "ENABLED"), node("10.0.0.5", PORT, "ENABLED")]
    );
    assert_eq!(lb.log_count("--force has served its purpose"), 1, "{}", lb.excerpt());
}

/// `--managed-only --node-port 9000 --address-field public_ipv4_addr`: nodes are the
/// records' public addresses on port 9000; a node on another port is not lb-sync's and is
/// left alone (and said so); a node on the managed port that no record names is removed.
#[tokio::test]
async fn managed_only_node_port_and_address_field_through_the_binary() {
    let w = World::start(quick_sim()).await;
    w.put([1, 2]).await;
    w.sim.add_node(1, "10.0.0.50", 7000, "ENABLED");
    w.sim.add_node(1, "198.51.100.9", 9000, "ENABLED");
    let lb = w.lb_sync(&[
        "--managed-only",
        "--node-port",
        "9000",
        "--address-field",
        "public_ipv4_addr",
    ]);
    let want = |lasts: &[u8]| {
        let mut v: Vec<(String, u16, String)> = lasts
            .iter()
            .map(|n| node(&format!("203.0.113.{n}"), 9000, "ENABLED"))
            .collect();
        v.push(node("10.0.0.50", 7000, "ENABLED"));
        v.sort();
        v
    };
    let on_lb = async |lasts: &[u8]| {
        let expect = want(lasts);
        let got = eventually("the load balancer holds what the flags say", WITHIN, async || {
            (lb_nodes(&w) == expect).then_some(())
        })
        .await;
        got.unwrap_or_else(|e| lb.fail(format!("{e}: it holds {:?}, not {expect:?}", lb_nodes(&w))));
    };
    on_lb(&[1, 2]).await;
    lb.wait_log("1 node(s) not managed by lb-sync are left alone", WITHIN)
        .await;
    w.delete([2]).await;
    on_lb(&[1]).await;
    assert_eq!(w.sim.count_status("DELETE", 202), 2, "198.51.100.9 and web02's node");
}
