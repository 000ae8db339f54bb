//! The fault campaign: the whole system (announcers in `container` mode, one per web
//! container, lb-sync, a 3- or 5-member etcd, one member per host) on a [`testbed::Cluster`]
//! of hosts, on the bad day. Each scenario asserts what a user would notice, with bounds
//! wide enough for a loaded machine, and prints the figure it measured on a line starting
//! with `figure:` (RELIABILITY.md quotes them). Run: `cargo nextest run -p testbed
//! --no-capture -E 'binary(campaign)'`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "campaign/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{Bed, Change, Sample, Tap, longest_gap, longest_unreadable, one_applier_at_a_time};
use testbed::{Cut, eventually};

/// The announcers' lease TTL in the campaign: short, so expiry scenarios are quick.
const TTL: Duration = Duration::from_secs(3);
/// How soon after etcd's first answer, once quorum is back, the records must match the
/// containers: the 1 s, plus room for a loaded 2-core machine.
const SETTLE_BOUND: Duration = Duration::from_secs(3);
/// How soon after etcd's first answer the load balancer must follow: lb-sync re-reads etcd
/// within 1 s of its return, then the debounce, a `--drain 1s` and the simulator's
/// PENDING_UPDATE; the rest is room for a loaded machine.
const FOLLOW_BOUND: Duration = Duration::from_secs(10);

/// Waits until etcd holds `n` records and the load balancer `n` ENABLED nodes.
async fn converge(bed: &Bed, client: &mut etcd_client::Client, n: usize, within: Duration) {
    let ok = eventually(&format!("{n} records and {n} ENABLED nodes"), within, async || {
        let records = bed.records(client).await?;
        let enabled: usize = bed
            .nodes_by_address()
            .values()
            .map(|c| c.iter().filter(|c| *c == "ENABLED").count())
            .sum();
        (records.len() == n && enabled == n && bed.sim.nodes(1).len() == n).then_some(())
    })
    .await;
    if let Err(e) = ok {
        let records = bed.records(client).await.map(|r| r.len());
        bed.fail(format!(
            "{e} (records: {records:?}, nodes: {:?})",
            bed.nodes_by_address()
        ));
    }
}

/// Asserts that in every sample, each host of `hosts` had `per_host` nodes, all ENABLED.
fn assert_nodes_untouched(bed: &Bed, samples: &[Sample], hosts: &[usize], per_host: usize) {
    for s in samples {
        for &h in hosts {
            let addr = bed.cluster.host(h).addr();
            let conds = s.nodes.get(&addr).cloned().unwrap_or_default();
            if conds.len() != per_host || conds.iter().any(|c| c != "ENABLED") {
                bed.fail(format!(
                    "the nodes of h{h} (not at fault) changed: {conds:?} at {:?} into the scenario",
                    s.at - samples[0].at
                ));
            }
        }
    }
}

fn all_gone(s: &Sample, instances: &BTreeSet<String>) -> bool {
    s.records
        .as_ref()
        .is_some_and(|r| instances.iter().all(|i| !r.contains_key(i)))
}

fn all_there(s: &Sample, instances: &BTreeSet<String>) -> bool {
    s.records
        .as_ref()
        .is_some_and(|r| instances.iter().all(|i| r.contains_key(i)))
}

/// The host of etcd's leader dies (power cut: every process at once, its link down) while
/// 50 records are announced and lb-sync runs on another host.
#[tokio::test]
async fn the_etcd_leaders_host_dies_with_50_records_announced() {
    let mut bed = Bed::start(5, TTL).await;
    bed.add_webs(&[0, 1, 2, 3, 4], 10).await;
    let mut client = bed.cluster.client().await;
    let leader = eventually("etcd names a leader", Duration::from_secs(20), async || {
        bed.cluster.etcd_leader().await
    })
    .await
    .unwrap_or_else(|e| bed.fail(e));
    let lb_host = (leader + 1) % 5;
    bed.start_lb_sync(lb_host, &[]);
    converge(&bed, &mut client, 50, Duration::from_secs(90)).await;
    let leader = bed.cluster.etcd_leader().await.unwrap_or(leader);
    assert_ne!(
        leader, lb_host,
        "etcd's leadership moved to lb-sync's host during the set-up"
    );

    let doomed = bed.instances_of(leader);
    let others: BTreeSet<String> = bed
        .webs
        .iter()
        .map(|w| w.instance.clone())
        .filter(|i| !doomed.contains(i))
        .collect();
    let survivors: Vec<usize> = (0..5).filter(|&h| h != leader).collect();
    let dead_addr = bed.cluster.host(leader).addr();
    let mut samples = vec![bed.sample(&mut client).await];

    let killed = Instant::now();
    bed.cluster.kill_host(leader);
    let expired = bed
        .watch_until(
            &mut client,
            &mut samples,
            killed,
            "the dead host's records expire",
            TTL + Duration::from_secs(20),
            |s| all_gone(s, &doomed),
        )
        .await;
    let removed = bed
        .watch_until(
            &mut client,
            &mut samples,
            killed,
            "the dead host's nodes leave the LB",
            Duration::from_secs(60),
            |s| !s.nodes.contains_key(&dead_addr),
        )
        .await;
    // Watch a while longer: a survivor's lease lost in the election would expire by now.
    let until = Instant::now() + 2 * TTL;
    bed.watch_until(&mut client, &mut samples, killed, "two more TTLs pass", 3 * TTL, |s| {
        s.at >= until
    })
    .await;

    let (gap, which, missing) = longest_gap(&samples, &others);
    let unreadable = longest_unreadable(&samples);
    let new_leader = bed.cluster.etcd_leader().await;
    println!(
        "figure: etcd leader's host killed, 50 records: {} records of the 4 other hosts went missing \
         (longest gap {gap:?}{}); etcd unreadable for at most {unreadable:?}; the dead host's 10 records \
         expired after {expired:?} (TTL {TTL:?}); its 10 nodes left the LB after {removed:?}; new leader h{}",
        missing,
        which.map(|w| format!(", {w}")).unwrap_or_default(),
        new_leader.map_or("?".to_owned(), |l| l.to_string()),
    );
    assert_nodes_untouched(&bed, &samples, &survivors, 10);
    assert!(
        gap <= TTL,
        "a record of a live host was missing for {gap:?}, more than the TTL"
    );
    assert!(
        expired <= TTL + Duration::from_secs(10),
        "the dead host's records took {expired:?} to expire"
    );
    bed.remove_webs().await;
}

/// A web host is cut off from the other hosts for longer than the TTL, then healed.
#[tokio::test]
async fn a_web_host_partitioned_longer_than_the_ttl_leaves_and_comes_back() {
    let mut bed = Bed::start(3, TTL).await;
    bed.add_webs(&[0, 1, 2], 2).await;
    bed.start_lb_sync(0, &[]);
    let mut client = bed.cluster.client().await;
    converge(&bed, &mut client, 6, Duration::from_secs(60)).await;

    let cut = 2;
    let mine = bed.instances_of(cut);
    let addr = bed.cluster.host(cut).addr();
    let mut samples = vec![bed.sample(&mut client).await];
    let partitioned = Instant::now();
    bed.cluster.partition(cut, Cut::Both);
    let expired = bed
        .watch_until(
            &mut client,
            &mut samples,
            partitioned,
            "the cut host's records expire",
            TTL + Duration::from_secs(20),
            |s| all_gone(s, &mine),
        )
        .await;
    let removed = bed
        .watch_until(
            &mut client,
            &mut samples,
            partitioned,
            "the cut host's nodes leave the LB",
            Duration::from_secs(60),
            |s| !s.nodes.contains_key(&addr),
        )
        .await;
    let healed = Instant::now();
    bed.cluster.heal(cut);
    let back = bed
        .watch_until(
            &mut client,
            &mut samples,
            healed,
            "the healed host's records come back",
            Duration::from_secs(90),
            |s| all_there(s, &mine),
        )
        .await;
    let restored = bed
        .watch_until(
            &mut client,
            &mut samples,
            healed,
            "the healed host's nodes are ENABLED again",
            Duration::from_secs(60),
            |s| {
                s.nodes
                    .get(&addr)
                    .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c == "ENABLED"))
            },
        )
        .await;
    println!(
        "figure: web host partitioned (TTL {TTL:?}, --drain 1s): records expired after {expired:?}, \
         nodes removed after {removed:?} (partitioned for {:?}); healed: records back after {back:?}, \
         nodes ENABLED after {restored:?}",
        healed - partitioned
    );
    assert_nodes_untouched(&bed, &samples, &[0, 1], 2);
    assert!(
        expired <= TTL + Duration::from_secs(10),
        "the cut host's records took {expired:?} to expire"
    );
    bed.remove_webs().await;
}

/// Two web hosts of five are cut off at once: their nodes are 40% of the LB, more than
/// `--max-remove 30%`. lb-sync refuses, keeps every node and says so on /healthz.
#[tokio::test]
async fn two_web_hosts_partitioned_at_once_are_refused_and_the_lb_keeps_its_nodes() {
    let mut bed = Bed::start(5, TTL).await;
    bed.add_webs(&[0, 1, 2, 3, 4], 2).await;
    // Each web container has its own announcer and lease, so the cut hosts' records expire
    // a few hundred ms apart; --remove-settle (more than the keep-alive period, TTL/3) lets
    // lb-sync judge them together. Without it --max-remove still holds, cumulatively: at
    // most 3 of the 10 nodes go before the refusal (`removals_under_way_count_against_max_remove`).
    bed.start_lb_sync(0, &["--max-remove", "30%", "--remove-settle", "2s"]);
    let mut client = bed.cluster.client().await;
    converge(&bed, &mut client, 10, Duration::from_secs(60)).await;

    let cut: BTreeSet<String> = bed.instances_of(3).union(&bed.instances_of(4)).cloned().collect();
    let changes_before = bed.sim.count("PUT") + bed.sim.count("DELETE");
    let mut samples = vec![bed.sample(&mut client).await];
    let partitioned = Instant::now();
    bed.cluster.partition(3, Cut::Both);
    bed.cluster.partition(4, Cut::Both);
    let expired = bed
        .watch_until(
            &mut client,
            &mut samples,
            partitioned,
            "the cut hosts' records expire",
            TTL + Duration::from_secs(20),
            |s| all_gone(s, &cut),
        )
        .await;
    // Until the refusal shows, every node must stay: lb-sync must not take them out one
    // pass at a time either (records expire a few hundred ms apart, one lease each).
    let refused = eventually("/healthz reports the refusal", Duration::from_secs(30), async || {
        let enabled = bed.sim.nodes(1).iter().filter(|n| n.condition == "ENABLED").count();
        if enabled < 10 {
            return Some(Err(enabled));
        }
        let (status, body) = bed.health(0)?;
        let reason = bed.metric(0, "lb_sync_refusals_total{reason=\"max_remove\"}")?;
        (status == 503 && body["state"] == "refused" && reason >= 1.0).then_some(Ok(partitioned.elapsed()))
    })
    .await
    .unwrap_or_else(|e| bed.fail(format!("{e}; /healthz: {}", bed.healthz(0))))
    .unwrap_or_else(|enabled| {
        bed.fail(format!(
            "lb-sync took {} of 10 nodes out of service with --max-remove 30% (nodes: {:?})",
            10 - enabled,
            bed.nodes_by_address()
        ))
    });
    // Hold the partition for three more resyncs: nothing may change meanwhile.
    let until = Instant::now() + Duration::from_secs(6);
    bed.watch_until(
        &mut client,
        &mut samples,
        partitioned,
        "three resyncs pass",
        Duration::from_secs(10),
        |s| s.at >= until,
    )
    .await;
    let changes = bed.sim.count("PUT") + bed.sim.count("DELETE") - changes_before;
    assert_nodes_untouched(&bed, &samples, &[0, 1, 2, 3, 4], 2);
    assert_eq!(changes, 0, "lb-sync changed the LB during the refusal");

    let healed = Instant::now();
    bed.cluster.heal(3);
    bed.cluster.heal(4);
    let back = eventually(
        "/healthz is 200 again with every record back",
        Duration::from_secs(90),
        async || {
            let (status, _) = bed.health(0)?;
            let n = bed.records(&mut client).await?.len();
            (status == 200 && n == 10).then_some(healed.elapsed())
        },
    )
    .await
    .unwrap_or_else(|e| bed.fail(format!("{e}; /healthz: {}", bed.healthz(0))));
    println!(
        "figure: two of five web hosts partitioned (4 of 10 nodes, --max-remove 30%): records expired after \
         {expired:?}, /healthz 503 refused (max_remove) after {refused:?}, 0 LB changes while refused (10 nodes ENABLED in \
         every sample); healed: records back and /healthz 200 after {back:?}"
    );
    bed.remove_webs().await;
}

/// Whether lb-sync on host `h` says it leads (`None` when it does not answer).
fn leads(bed: &Bed, h: usize) -> Option<bool> {
    bed.health(h).and_then(|(_, body)| body["leader"].as_bool())
}

/// The changes sent after `since`.
fn after(changes: &[Change], since: Instant) -> Vec<Change> {
    changes.iter().filter(|c| c.at >= since).cloned().collect()
}

/// The lb-sync leader's host is cut off from the other hosts, so from etcd's quorum, but
/// still reaches the load balancer. A web container stops meanwhile: the standby takes
/// over and drains its node; the old leader, whose view of etcd is stale, must not apply
/// anything (it would re-enable the node the new leader drains). Healed, it stays standby.
#[tokio::test]
async fn the_lb_sync_leader_cut_off_from_etcd_stops_applying_and_the_standby_takes_over() {
    let mut bed = Bed::start(3, TTL).await;
    bed.add_webs(&[0], 3).await;
    let mut tap = Tap::default();
    tap.attach(&bed, 1).await;
    tap.attach(&bed, 2).await;
    let election = ["--election-key", "/lb-sync/leader", "--election-ttl", "3s"];
    bed.start_lb_sync(1, &election);
    bed.start_lb_sync(2, &election);
    let mut client = bed.cluster.client().await;
    converge(&bed, &mut client, 3, Duration::from_secs(60)).await;
    let leader = eventually("exactly one lb-sync leads", Duration::from_secs(20), async || {
        match (leads(&bed, 1)?, leads(&bed, 2)?) {
            (true, false) => Some(1),
            (false, true) => Some(2),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|e| bed.fail(e));
    let standby = 3 - leader;

    let cut_at = Instant::now();
    bed.cluster.partition(leader, Cut::Both);
    bed.webs[0].container.stop(1).await;
    let took_over = eventually("the standby leads", Duration::from_secs(30), async || {
        (leads(&bed, standby) == Some(true)).then(|| cut_at.elapsed())
    })
    .await
    .unwrap_or_else(|e| bed.fail(e));
    let drained = eventually(
        "the stopped container's node leaves the LB",
        Duration::from_secs(30),
        async || (bed.sim.nodes(1).len() == 2).then(|| cut_at.elapsed()),
    )
    .await
    .unwrap_or_else(|e| bed.fail(e));
    // Two more resyncs with the old leader cut off: a stale leader would re-add the node.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        bed.sim.nodes(1).len(),
        2,
        "the removed node came back: a stale instance applied"
    );

    bed.cluster.heal(leader);
    // After the heal, exactly one instance leads, and never both. Which one is etcd's
    // doing: the healed member's return can start an etcd election (etcd 3.4 has no
    // pre-vote by default) that stalls keep-alives past this test's 3 s election lease
    // (seen once in a full `scripts/test`: both instances standing by 6 s after the
    // heal), and then either instance may win the next campaign.
    // Settled: the same one has led for 6 s (the old test's wait), polled every 500 ms.
    let healed_at = Instant::now();
    let mut settled: Option<(&str, Duration)> = None;
    loop {
        match (leads(&bed, leader), leads(&bed, standby)) {
            (Some(true), Some(true)) => bed.fail("after the heal both lb-sync instances lead"),
            (Some(old), Some(new)) if old != new => {
                let who = if new { "the new leader" } else { "the old leader" };
                match settled {
                    Some((w, since)) if w == who => {
                        if healed_at.elapsed() - since >= Duration::from_secs(6) {
                            break;
                        }
                    }
                    _ => settled = Some((who, healed_at.elapsed())),
                }
            }
            _ => settled = None,
        }
        if healed_at.elapsed() > Duration::from_secs(40) {
            bed.fail("40 s after the heal, not one lb-sync instance leading for 6 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some((who_leads, settled_after)) = settled else {
        bed.fail("after the heal: no instance settled as the leader");
    };

    let changes = tap.changes();
    let order = one_applier_at_a_time(&changes).unwrap_or_else(|e| bed.fail(e));
    let old_last = changes.iter().filter(|c| c.host == leader).map(|c| c.at).max();
    let stale = old_last.filter(|t| *t > cut_at);
    println!(
        "figure: lb-sync leader cut off from etcd (--election-ttl 3s): the standby led after {took_over:?} and \
         drained the stopped container's node after {drained:?}; the old leader sent {} change(s) after the cut; \
         {} change requests in all, senders in turn {order:?} (never interleaved); healed, {who_leads} led \
         (from {settled_after:?} after the heal, for 6 s)",
        after(&changes, cut_at).iter().filter(|c| c.host == leader).count(),
        changes.len(),
    );
    assert!(
        stale.is_none(),
        "the cut-off leader applied {:?} after the cut",
        stale.map(|t| t - cut_at)
    );
    bed.remove_webs().await;
}

/// What fencing prevents, made to happen: beside the leader, a second instance without
/// `--election-key` applies a stale but complete view (a frozen copy of the records, as a
/// leader cut off from etcd would hold if nothing fenced it). A web container stops: the
/// leader drains its node, the stale instance re-enables or re-adds it, and the
/// one-applier check fails. This shows that check can fail. (Simply cutting an unfenced
/// lb-sync off etcd does not show it: its watch breaks, its view turns incomplete and it
/// refuses every change; that rule is a second line of defence.)
#[tokio::test]
async fn without_fencing_a_stale_instance_applies_beside_the_leader_and_the_check_catches_it() {
    let mut bed = Bed::start(3, TTL).await;
    bed.add_webs(&[0], 3).await;
    let mut tap = Tap::default();
    tap.attach(&bed, 1).await;
    tap.attach(&bed, 2).await;
    bed.start_lb_sync(2, &[]);
    let mut client = bed.cluster.client().await;
    converge(&bed, &mut client, 3, Duration::from_secs(60)).await;
    let records = client
        .get(
            format!("{}/", support::PREFIX),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    for kv in records.kvs() {
        let key = kv.key_str().unwrap().replacen(support::PREFIX, "/services/stale", 1);
        client.put(key, kv.value(), None).await.unwrap();
    }
    bed.start_lb_sync_on(1, "/services/stale", &[]);
    let steady = eventually(
        "the stale instance finds the LB converged",
        Duration::from_secs(30),
        async || {
            bed.health(1)
                .and_then(|(_, b)| (b["state"] == "converged").then_some(()))
        },
    )
    .await;
    steady.unwrap_or_else(|e| bed.fail(e));

    let stopped = Instant::now();
    bed.webs[0].container.stop(1).await;
    let caught = eventually("two instances apply", Duration::from_secs(30), async || {
        one_applier_at_a_time(&after(&tap.changes(), stopped)).err()
    })
    .await
    .unwrap_or_else(|e| bed.fail(format!("{e}: changes: {:?}", after(&tap.changes(), stopped))));
    let changes = after(&tap.changes(), stopped);
    println!(
        "figure: without fencing, {} change requests from 2 instances within {:?} of the stop; the check says: {caught}",
        changes.len(),
        stopped.elapsed()
    );
    bed.remove_webs().await;
}

/// etcd loses quorum (2 of 3 members down) for a minute, as the issue asks (twenty TTLs: no
/// lease can expire without a leader), while a container stops and another starts. Quorum
/// back: live records are all there at the first answer, the
/// stopped container's record is withdrawn and the new one's appears (measured from the
/// first answer), and the load balancer follows; lb-sync changed nothing meanwhile.
#[tokio::test]
async fn etcd_quorum_lost_while_containers_stop_and_start() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let mut bed = Bed::start(3, TTL).await;
    bed.add_webs(&[0], 3).await;
    let (new_name, new_announcer) = bed.announce_future_container(0, "h0w09");
    bed.start_lb_sync(0, &[]);
    let mut client = bed.cluster.client().await;
    converge(&bed, &mut client, 3, Duration::from_secs(60)).await;
    let stopped_port = bed.webs[0].container.host_port("80/tcp").await;
    let live: BTreeSet<String> = bed.webs[1..].iter().map(|w| w.instance.clone()).collect();

    bed.cluster.stop_etcd(1);
    bed.cluster.stop_etcd(2);
    let lost = Instant::now();
    let changes_before = bed.sim.count("POST") + bed.sim.count("PUT") + bed.sim.count("DELETE");
    bed.webs[0].container.stop(1).await;
    let new_container = bed.run_web(&new_name).await;
    let new_port = new_container.host_port("80/tcp").await;
    tokio::time::sleep(OUTAGE.saturating_sub(lost.elapsed())).await;
    let changes_during = bed.sim.count("POST") + bed.sim.count("PUT") + bed.sim.count("DELETE") - changes_before;

    bed.cluster.start_etcd(1);
    bed.cluster.start_etcd(2);
    let restarted = Instant::now();
    let first = eventually("etcd answers again", Duration::from_secs(30), async || {
        bed.records(&mut client).await
    })
    .await
    .unwrap_or_else(|e| bed.fail(e));
    let answered = Instant::now();
    let mut samples = vec![bed.sample(&mut client).await];
    let mut want = live.clone();
    want.insert("h0w09".to_owned());
    let settled = bed
        .watch_until(
            &mut client,
            &mut samples,
            answered,
            "the records match the containers",
            Duration::from_secs(20),
            |s| {
                s.records
                    .as_ref()
                    .is_some_and(|r| r.keys().cloned().collect::<BTreeSet<_>>() == want)
            },
        )
        .await;
    let followed = eventually("the LB follows", Duration::from_secs(30), async || {
        let mut ports: Vec<u16> = bed
            .sim
            .nodes(1)
            .iter()
            .filter(|n| n.condition == "ENABLED")
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        (bed.sim.nodes(1).len() == 3 && ports.contains(&new_port) && !ports.contains(&stopped_port))
            .then(|| answered.elapsed())
    })
    .await
    .unwrap_or_else(|e| bed.fail(format!("{e}: nodes {:?}", bed.sim.nodes(1))));
    let (gap, which, _) = longest_gap(&samples, &live);
    println!(
        "figure: etcd quorum lost for {:?} (TTL {TTL:?}); first answer {:?} after the restart, holding {}/{} live \
         records; records matched the containers {settled:?} after the first answer; the LB followed after \
         {followed:?}; {changes_during} LB changes during the outage",
        restarted - lost,
        answered - restarted,
        live.iter().filter(|i| first.contains_key(*i)).count(),
        live.len(),
    );
    let missing: Vec<&String> = live.iter().filter(|i| !first.contains_key(*i)).collect();
    if !missing.is_empty() {
        testbed::fail_with_logs(
            format!("live records lost in the outage: {missing:?}"),
            [&new_announcer],
        );
    }
    assert!(
        gap.is_zero(),
        "live record {which:?} went missing for {gap:?} after quorum came back"
    );
    assert_eq!(changes_during, 0, "lb-sync changed the LB while etcd had no quorum");
    // The issue asks for 1 s. The announcer retries etcd at most 1 s apart through an
    // outage (sidekick::retry::etcd_outage); the rest of the bound is room for a loaded
    // machine (before that policy, up to 4.3 s was measured with a 2 s cap).
    assert!(
        settled <= SETTLE_BOUND,
        "records took {settled:?} to match the containers"
    );
    assert!(
        followed <= FOLLOW_BOUND,
        "the LB took {followed:?} to follow the records"
    );
    drop(new_container);
    bed.remove_webs().await;
}

/// The Docker engine's socket is unreachable for one host's announcers for 30 s, as the issue
/// asks (ten TTLs), while one of its containers stops and another starts. Once it is back, etcd matches what Docker runs.
#[tokio::test]
async fn the_docker_socket_unreachable_while_containers_start_and_stop() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let mut bed = Bed::start(3, TTL).await;
    bed.proxy_docker(1);
    bed.add_webs(&[0, 1], 3).await;
    let (new_name, new_announcer) = bed.announce_future_container(1, "h1w09");
    let mut client = bed.cluster.client().await;
    let six = eventually("6 records", Duration::from_secs(60), async || {
        (bed.records(&mut client).await?.len() == 6).then_some(())
    })
    .await;
    six.unwrap_or_else(|e| bed.fail(e));

    let proxy = &bed.docker_proxies[&1];
    let cut_at = Instant::now();
    proxy.cut();
    let victim = bed.webs.iter().position(|w| w.host == 1).unwrap();
    bed.webs[victim].container.stop(1).await;
    let new_container = bed.run_web(&new_name).await;
    tokio::time::sleep(OUTAGE.saturating_sub(cut_at.elapsed())).await;
    let during = bed.records(&mut client).await.map(|r| r.len());
    let restored = Instant::now();
    bed.docker_proxies[&1].restore();

    // What Docker runs now, asked of Docker.
    let mut running: BTreeSet<String> = BTreeSet::new();
    for w in &bed.webs {
        if w.container.state().await.running == Some(true) {
            running.insert(w.instance.clone());
        }
    }
    if new_container.state().await.running == Some(true) {
        running.insert("h1w09".to_owned());
    }
    let matched = eventually("etcd matches docker ps", Duration::from_secs(60), async || {
        let r = bed.records(&mut client).await?;
        (r.keys().cloned().collect::<BTreeSet<_>>() == running).then(|| restored.elapsed())
    })
    .await
    .unwrap_or_else(|e| {
        testbed::fail_with_logs(
            format!("{e}: docker runs {running:?}"),
            [&bed.webs[victim].announcer, &new_announcer],
        )
    });
    println!(
        "figure: Docker socket unreachable for {OUTAGE:?} on one host (1 container stopped, 1 started meanwhile; \
         {} records in etcd at the end of the outage): etcd matched `docker ps` ({} records) {matched:?} after \
         the socket came back",
        during.map_or("?".to_owned(), |n| n.to_string()),
        running.len()
    );
    assert_eq!(running.len(), 6, "the set-up: 5 old containers running and the new one");
    drop(new_container);
    bed.remove_webs().await;
}

/// `dbhelper seed` as the seed's unit runs it, against `port`, with the passwords of a
/// testbed server.
fn seed(port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new(testbed::bin("dbhelper"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("MYSQL_ROOT_PASSWORD", "secret")
        .env("APP_PW", "apppw")
        .args(["seed", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dump")
        .arg(testbed::world_dump());
    cmd
}

/// The first value `query` answers as root, or `None` when the server refuses or is down.
fn ask(port: u16, query: &str) -> Option<String> {
    let client = testbed::require_program("mariadb", "sudo apt-get install -y mariadb-client");
    let out = std::process::Command::new(client)
        .args(["-h127.0.0.1", &format!("-P{port}"), "-uroot", "-N", "-B", "-e", query])
        .env("MYSQL_PWD", "secret")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// MariaDB is killed (SIGKILL, a crash) while `dbhelper seed` has the whole world staged
/// and is about to swap it in: after the restart the live database is exactly as it was
/// before the seed, and the rerun completes.
///
/// The moment is made, not raced. A reader's open transaction on the live `world.City`
/// holds that table's metadata lock, so the swap's `RENAME TABLE` waits for it (MariaDB
/// shows "Waiting for table metadata lock") with every table loaded in staging. An earlier
/// version polled for the staging tables and missed a load that took 0.5 s on CI.
#[tokio::test]
async fn mariadb_killed_in_the_middle_of_dbhelper_seed() {
    use mysql_async::prelude::Queryable;
    let mut db = testbed::MariaDb::start();
    let port = db.port();
    // What the database held before: a `world` that dbhelper did not write (no marker).
    let _ = db.cli(&[
        "-e",
        "CREATE DATABASE world; CREATE TABLE world.City (ID INT PRIMARY KEY, Name CHAR(35)); \
         INSERT INTO world.City VALUES (1, 'before the seed')",
    ]);
    let pool = db.root_pool();
    let mut reader = pool.get_conn().await.expect("a root connection");
    reader.query_drop("START TRANSACTION").await.expect("START TRANSACTION");
    let before: Option<i64> = reader
        .query_first("SELECT COUNT(*) FROM world.City")
        .await
        .expect("the reader's SELECT");
    assert_eq!(before, Some(1), "the set-up: one row in the live world.City");

    let started = Instant::now();
    let mut seeding = testbed::Daemon::start("dbhelper-seed", seed(port));
    let waiting = "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                   WHERE STATE = 'Waiting for table metadata lock' AND INFO LIKE 'RENAME TABLE%'";
    eventually(
        "the seed's swap waits for the reader's lock",
        Duration::from_secs(60),
        async || ask(port, waiting).filter(|n| n == "1"),
    )
    .await
    .unwrap_or_else(|e| seeding.fail(e));
    let staged = ask(port, "SELECT COUNT(*) FROM world__dbhelper_new.City");
    assert_eq!(
        staged.as_deref(),
        Some("4079"),
        "the set-up: every city staged before the swap"
    );
    let killed_after = started.elapsed();
    db.kill();
    let status = seeding.wait(Duration::from_secs(120)).await;
    assert!(
        !status.success(),
        "seed succeeded although its server died:\n{}",
        seeding.excerpt()
    );
    drop(reader);
    let _ = pool.disconnect().await;

    db.restart();
    let live = ask(port, "SELECT CONCAT(ID, ' ', Name) FROM world.City");
    let tables = ask(
        port,
        "SELECT GROUP_CONCAT(TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'world'",
    );
    assert_eq!(
        (live.as_deref(), tables.as_deref()),
        (Some("1 before the seed"), Some("City")),
        "the interrupted seed changed the live database"
    );
    let rerun_at = Instant::now();
    let mut rerun = testbed::Daemon::start("dbhelper-seed-rerun", seed(port));
    let rerun_status = rerun.wait(Duration::from_secs(180)).await;
    if !rerun_status.success() {
        rerun.fail(format!("the rerun failed: {rerun_status}"));
    }
    let cities = ask(port, "SELECT COUNT(*) FROM world.City");
    let leftovers = ask(
        port,
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'world\\_\\_dbhelper%'",
    );
    println!(
        "figure: MariaDB killed {killed_after:?} into `dbhelper seed`, its swap waiting with {} cities staged: \
         seed exited with {status}, the live world unchanged after the restart; the rerun completed in {:?} with {} cities",
        staged.as_deref().unwrap_or("?"),
        rerun_at.elapsed(),
        cities.as_deref().unwrap_or("?")
    );
    assert_eq!(
        (cities.as_deref(), leftovers.as_deref()),
        (Some("4079"), Some("0")),
        "after the rerun: (cities, staging databases left)"
    );
}
