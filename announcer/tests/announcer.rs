//! The announcer against the real Docker engine and real etcd servers (testbed).
//!
//! Each test starts its own etcd (or cluster), uses containers with unique names and a
//! unique `--hostname`, and runs the real binary, so tests are independent and can run in
//! parallel. TTLs are 2-3 s and checks every 500 ms to keep the file fast; waits poll
//! with generous deadlines, and no test asserts a speed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

#[path = "announcer/support.rs"]
mod support;

use std::time::{Duration, Instant};

use etcd_client::{GetOptions, PutOptions, WatchOptions};
use support::{
    PATIENCE, PRIVATE, PUBLIC, announcer, dump, global_args, global_args_at, has_any, has_record, records_until,
    run_to_end,
};
use testbed::docker::{self, Spec};
use testbed::{Etcd, EtcdCluster, SocketProxy, unique};

fn args(global: Vec<String>, rest: &[&str]) -> Vec<String> {
    let mut a = global;
    a.extend(rest.iter().map(|s| (*s).to_owned()));
    a
}

fn container_args(
    endpoints: &str,
    host: &str,
    name: &str,
    service: &str,
    instance: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut a = args(
        global_args(endpoints, host),
        &["container", name, "--service", service, "--instance", instance],
    );
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

#[tokio::test]
async fn announces_on_start_five_keys_on_one_lease_at_one_revision_and_writes_nothing_while_idle() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("ann-web");
    let host = unique("host");
    // Created but not started: the announcer waits for it.
    let c = Spec::web(&image).name(&name).create(&d).await;
    let a = announcer(&container_args(&etcd.endpoint(), &host, &name, "web", "web01", &[]));
    // Docker listed (the created container in it) and the registry's first pass done.
    a.wait_log("docker listed", PATIENCE).await;
    a.wait_log("announcer started", PATIENCE).await;
    assert!(
        dump(&mut client, "/services/").await.is_empty(),
        "nothing before the container runs"
    );

    // Watch the port key, start the container, and measure how long the record takes.
    let mut events = client
        .watch("/services/web/web01/port", Some(WatchOptions::new()))
        .await
        .unwrap();
    // The first message only says the watch exists.
    let created = events.message().await.unwrap().unwrap();
    assert!(created.created());
    c.start().await;
    let started = Instant::now();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let msg = events.message().await.unwrap().unwrap();
            if !msg.events().is_empty() {
                return;
            }
        }
    })
    .await
    .expect("record appears");
    eprintln!(
        "MEASURED docker start returned -> /services/web/web01/port visible: {:?}",
        started.elapsed()
    );

    let port = c.host_port("80/tcp").await;
    let kvs = dump(&mut client, "/services/").await;
    let want = [
        ("/services/web/web01/host", host.clone()),
        ("/services/web/web01/port", port.to_string()),
        ("/services/web/web01/private_ipv4_addr", PRIVATE.to_owned()),
        ("/services/web/web01/public_ipv4_addr", PUBLIC.to_owned()),
        ("/services/web/web01/unit", name.clone()),
    ];
    let got: Vec<(&str, String)> = kvs.iter().map(|(k, v)| (k.as_str(), v.value.clone())).collect();
    let want: Vec<(&str, String)> = want.iter().map(|(k, v)| (*k, v.clone())).collect();
    assert_eq!(got, want);
    let leases: std::collections::BTreeSet<i64> = kvs.values().map(|v| v.lease).collect();
    let revisions: std::collections::BTreeSet<i64> = kvs.values().map(|v| v.mod_revision).collect();
    assert_eq!(leases.len(), 1, "one lease: {kvs:?}");
    assert_ne!(leases.first(), Some(&0), "on a lease: {kvs:?}");
    assert_eq!(revisions.len(), 1, "one transaction: {kvs:?}");

    // Idle for more than two TTLs: the lease is kept alive and nothing is rewritten.
    let before = client.get("/", None).await.unwrap().header().unwrap().revision();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_resp = client.get("/", None).await.unwrap();
    let after = after_resp.header().unwrap().revision();
    assert_eq!(before, after, "an idle announcer writes nothing");
    assert_eq!(
        dump(&mut client, "/services/").await,
        kvs,
        "the record lives on its kept-alive lease"
    );
}

#[tokio::test]
async fn withdraws_on_stop_die_and_pause_and_reannounces_on_start_restart_and_unpause() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("ann-life");
    let host = unique("host");
    let c = Spec::web(&image).name(&name).run(&d).await;
    // --check none: only Docker's events can withdraw, and they do it at once.
    let _a = announcer(&container_args(
        &etcd.endpoint(),
        &host,
        &name,
        "web",
        "w1",
        &["--check", "none"],
    ));
    let present = |k: &std::collections::BTreeMap<String, support::Kv>| has_record(k, "web", "w1");
    let absent = |k: &std::collections::BTreeMap<String, support::Kv>| k.is_empty();
    let tight = Duration::from_secs(2);
    records_until(&mut client, "/services/", PATIENCE, "announced", present).await;

    c.stop(1).await;
    records_until(&mut client, "/services/", tight, "withdrawn after stop", absent).await;
    c.start().await;
    records_until(&mut client, "/services/", PATIENCE, "announced after start", present).await;

    c.kill("SIGKILL").await;
    records_until(&mut client, "/services/", tight, "withdrawn after die", absent).await;
    c.start().await;
    records_until(&mut client, "/services/", PATIENCE, "announced after start", present).await;

    c.pause().await;
    records_until(&mut client, "/services/", tight, "withdrawn after pause", absent).await;
    c.unpause().await;
    records_until(&mut client, "/services/", PATIENCE, "announced after unpause", present).await;

    // docker restart: the record goes with the old process and comes back with the new.
    let rev_before = dump(&mut client, "/services/").await["/services/web/w1/port"].mod_revision;
    c.restart(1).await;
    records_until(&mut client, "/services/", PATIENCE, "re-announced after restart", |k| {
        k.get("/services/web/w1/port")
            .is_some_and(|v| v.mod_revision > rev_before)
            && has_record(k, "web", "w1")
    })
    .await;
}

#[tokio::test]
async fn a_stop_signal_withdraws_at_once_while_the_container_finishes_and_a_survivable_signal_changes_nothing() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("ann-stopsig");
    // PID 1 traps SIGTERM and keeps serving for 8 s before it exits (a graceful drain).
    let script = "trap 'sleep 8; exit 0' TERM; httpd -p 80 -h /www; while :; do sleep 0.1; done";
    let c = Spec {
        cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Spec::web(&image)
            .name(&name)
            .label("announce.service", "hweb")
            .label("announce.instance", "h1")
    }
    .run(&d)
    .await;
    // Both scopes: `container` mode follows it by name, `host` mode by its labels. Only
    // events can withdraw (--check none), and both resync every 500 ms.
    let fast = ["--check", "none", "--resync-interval", "500ms"];
    let mut named = global_args(&etcd.endpoint(), &unique("host"));
    named.extend(fast.iter().map(|s| (*s).to_owned()));
    named.extend(["container", &name, "--service", "web", "--instance", "s1"].map(str::to_owned));
    let mut labelled = global_args(&etcd.endpoint(), &unique("host"));
    labelled.extend(fast.iter().map(|s| (*s).to_owned()));
    labelled.push("host".to_owned());
    let announcers = [announcer(&named), announcer(&labelled)];
    let both =
        |k: &std::collections::BTreeMap<String, support::Kv>| has_record(k, "web", "s1") && has_record(k, "hweb", "h1");
    let none =
        |k: &std::collections::BTreeMap<String, support::Kv>| !has_any(k, "web", "s1") && !has_any(k, "hweb", "h1");
    records_until(&mut client, "/services/", PATIENCE, "announced by both", both).await;

    // Signals a process lives through change nothing, even after a resync.
    for signal in ["SIGHUP", "SIGUSR1"] {
        let before: Vec<usize> = announcers.iter().map(|a| a.log_count("docker resynced")).collect();
        c.kill(signal).await;
        for (a, n) in announcers.iter().zip(before) {
            a.wait_log(
                &format!("signal={}\n", if signal == "SIGHUP" { 1 } else { 10 }),
                PATIENCE,
            )
            .await;
            a.wait_log_more("docker resynced", n, PATIENCE).await;
        }
        let kvs = dump(&mut client, "/services/").await;
        assert!(both(&kvs), "still announced after {signal}: {kvs:?}");
    }

    // docker stop: SIGTERM now, the process exits 8 s later.
    let signalled = Instant::now();
    let watch = async {
        records_until(
            &mut client,
            "/services/",
            PATIENCE,
            "withdrawn at the stop signal",
            none,
        )
        .await;
        let withdrawn = signalled.elapsed();
        assert_eq!(
            c.state().await.running,
            Some(true),
            "withdrawn while the container still runs"
        );
        // Resyncs that still find it running do not bring the record back.
        let before: Vec<usize> = announcers.iter().map(|a| a.log_count("docker resynced")).collect();
        for (a, n) in announcers.iter().zip(before) {
            a.wait_log_more("docker resynced", n + 1, PATIENCE).await;
        }
        let kvs = dump(&mut client, "/services/").await;
        assert!(none(&kvs), "not re-announced by a resync: {kvs:?}");
        assert_eq!(
            c.state().await.running,
            Some(true),
            "the resyncs ran while it still ran"
        );
        withdrawn
    };
    let ((), withdrawn) = tokio::join!(c.stop(30), watch);
    eprintln!(
        "MEASURED stop signal -> both records gone: {withdrawn:?}; container exited after {:?}",
        signalled.elapsed()
    );
    // Started again: announced again.
    c.start().await;
    records_until(&mut client, "/services/", PATIENCE, "announced after start", both).await;
}

/// `announcer container NAME --service web --instance w1` as host `host` with `private`.
fn unit_args(endpoints: &str, host: &str, private: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut a = global_args_at(endpoints, host, private);
    a.extend(["container", name, "--service", "web", "--instance", "w1"].map(str::to_owned));
    // After the subcommand: they override the global defaults of `global_args_at`.
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

#[tokio::test]
async fn one_owner_per_record_across_hosts_the_second_takes_over_when_the_first_stops_and_nothing_flaps() {
    const HELD: &str = "is held by";
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let (n1, n2) = (unique("ann-own-1"), unique("ann-own-2"));
    let (h1, h2) = (unique("host"), unique("host"));
    let _c1 = Spec::web(&image).name(&n1).run(&d).await;
    let _c2 = Spec::web(&image).name(&n2).run(&d).await;
    let ep = etcd.endpoint();
    let fast = ["--resync-interval", "1s"];
    let first_args = unit_args(&ep, &h1, "10.9.8.1", &n1, &fast);
    let mut first = announcer(&first_args);
    let host_is = |h: &str| {
        let h = h.to_owned();
        move |k: &std::collections::BTreeMap<String, support::Kv>| {
            has_record(k, "web", "w1") && k["/services/web/w1/host"].value == h
        }
    };
    let held = records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "the first host's record",
        host_is(&h1),
    )
    .await;

    // The second host, same instance: it does not overwrite, it says who holds the record.
    let second = announcer(&unit_args(&ep, &h2, "10.9.8.2", &n2, &fast));
    second.wait_log(HELD, PATIENCE).await;
    second.wait_log_more("docker resynced", 1, PATIENCE).await;
    let kvs = dump(&mut client, "/services/").await;
    assert_eq!(kvs, held, "the first host's record is untouched");
    let log = second.log();
    assert!(log.contains(&h1) && log.contains("another instance"), "{log}");
    assert_eq!(second.log_count(HELD), 1, "logged once:\n{log}");

    // The first stops: its record goes with its lease, the second's replaces it at once.
    let mut events = client.watch("/services/web/w1/host", None).await.unwrap();
    assert!(events.message().await.unwrap().unwrap().created());
    let _ = first.stop(libc::SIGTERM, PATIENCE).await;
    let mut deleted = None;
    let took_over = tokio::time::timeout(PATIENCE, async {
        loop {
            let msg = events.message().await.unwrap().unwrap();
            for e in msg.events() {
                match (e.event_type(), e.kv()) {
                    (etcd_client::EventType::Delete, _) => deleted = Some(Instant::now()),
                    (etcd_client::EventType::Put, Some(kv)) if kv.value_str().unwrap() == h2 => {
                        return deleted.expect("deleted first").elapsed();
                    }
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("the second host takes the record over");
    eprintln!("MEASURED first record gone -> second host's record written: {took_over:?}");
    assert!(took_over < Duration::from_secs(1), "took over after {took_over:?}");
    let kvs = records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "the second host's record",
        host_is(&h2),
    )
    .await;
    assert_eq!(kvs["/services/web/w1/private_ipv4_addr"].value, "10.9.8.2");

    // A third run (the first host again): it yields, and nothing flaps for a minute.
    drop(events);
    let third = announcer(&first_args);
    third.wait_log(HELD, PATIENCE).await;
    let revision = |r: &etcd_client::GetResponse| r.header().unwrap().revision();
    let before = revision(&client.get("/", None).await.unwrap());
    let minute = Instant::now() + Duration::from_secs(60);
    while Instant::now() < minute {
        let now = dump(&mut client, "/services/").await;
        assert_eq!(now, kvs, "the record changed while both ran");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = revision(&client.get("/", None).await.unwrap());
    assert_eq!(before, after, "nothing was written for a minute");
    assert!(
        third.log_count("docker resynced") >= 30,
        "the third resynced all along:\n{}",
        third.log()
    );
    assert_eq!(third.log_count(HELD), 1, "logged once:\n{}", third.log());
    assert_eq!(second.log_count(HELD), 1, "{}", second.log());
}

#[tokio::test]
async fn a_restarted_unit_takes_its_own_record_over_at_once_and_another_unit_on_the_host_leaves_it_alone() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let (n1, n2) = (unique("ann-crash-1"), unique("ann-crash-2"));
    let host = unique("host");
    let _c1 = Spec::web(&image).name(&n1).run(&d).await;
    let _c2 = Spec::web(&image).name(&n2).run(&d).await;
    let ep = etcd.endpoint();
    // A long TTL: only a takeover can explain a new lease soon after the crash.
    let own = unit_args(&ep, &host, PRIVATE, &n1, &["--ttl", "30s"]);
    let mut a = announcer(&own);
    let before = records_until(&mut client, "/services/", PATIENCE, "announced", |k| {
        has_record(k, "web", "w1")
    })
    .await;
    let old_lease = before["/services/web/w1/port"].lease;
    let _ = a.stop(libc::SIGKILL, PATIENCE).await;
    let restarted = Instant::now();
    let b = announcer(&own);
    let after = records_until(&mut client, "/services/", PATIENCE, "taken over on a new lease", |k| {
        has_record(k, "web", "w1") && k.values().all(|v| v.lease != old_lease)
    })
    .await;
    eprintln!("MEASURED restart -> own record taken over: {:?}", restarted.elapsed());
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "well before the old lease's 30 s"
    );
    b.wait_log("took_over=true", PATIENCE).await;

    // Another unit on this host with the same instance: a conflict, and its resyncs
    // delete nothing of the live record.
    let other = announcer(&unit_args(&ep, &host, PRIVATE, &n2, &["--resync-interval", "500ms"]));
    other.wait_log("is held by", PATIENCE).await;
    other.wait_log_more("docker resynced", 2, PATIENCE).await;
    assert_eq!(dump(&mut client, "/services/").await, after, "the live record stays");
}

#[tokio::test]
async fn container_mode_follows_the_name_across_rm_and_re_create() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("ann-recreate");
    let host = unique("host");
    let old = Spec::web(&image).name(&name).run(&d).await;
    let _a = announcer(&container_args(
        &etcd.endpoint(),
        &host,
        &name,
        "web",
        "r1",
        &["--check", "none"],
    ));
    let port =
        |k: &std::collections::BTreeMap<String, support::Kv>| k.get("/services/web/r1/port").map(|v| v.value.clone());
    let first = records_until(&mut client, "/services/", PATIENCE, "announced", |k| {
        has_record(k, "web", "r1")
    })
    .await;
    assert_eq!(port(&first), Some(old.host_port("80/tcp").await.to_string()));
    old.remove().await;
    records_until(&mut client, "/services/", PATIENCE, "withdrawn after rm", |k| {
        k.is_empty()
    })
    .await;
    // A new container of that name (another id, another host port): followed.
    let new = Spec::web(&image).name(&name).run(&d).await;
    let want = new.host_port("80/tcp").await.to_string();
    assert_ne!(new.id, old.id);
    records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "the re-created container announced",
        |k| has_record(k, "web", "r1") && port(k).as_deref() == Some(want.as_str()),
    )
    .await;
}

#[tokio::test]
async fn sigterm_revokes_the_lease_so_records_vanish_at_once() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("ann-term");
    let host = unique("host");
    let _c = Spec::web(&image).name(&name).run(&d).await;
    let mut a = announcer(&container_args(
        &etcd.endpoint(),
        &host,
        &name,
        "web",
        "t1",
        &["--ttl", "30s"],
    ));
    records_until(&mut client, "/services/", PATIENCE, "announced", |k| {
        has_record(k, "web", "t1")
    })
    .await;
    let status = a.stop(libc::SIGTERM, PATIENCE).await;
    assert!(status.success(), "graceful stop exits 0: {status:?}\n{}", a.log());
    // With a 30 s TTL, only the revoke can explain the records being gone now.
    assert!(dump(&mut client, "/services/").await.is_empty(), "records gone at exit");
}

/// A second SIGTERM during the graceful stop exits at once with 130. The first one is kept
/// busy: it revokes the lease on an etcd that is frozen (SIGSTOP), which answers nothing
/// for the 30 s `--etcd-timeout`.
#[tokio::test]
async fn a_second_sigterm_during_the_graceful_stop_exits_130_at_once() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("ann-term2");
    let host = unique("host");
    let _c = Spec::web(&image).name(&name).run(&d).await;
    let mut argv = container_args(&etcd.endpoint(), &host, &name, "web", "t2", &[]);
    let at = argv.iter().position(|a| a == "--etcd-timeout").unwrap();
    argv[at + 1] = "30s".into();
    let mut a = announcer(&argv);
    records_until(&mut client, "/services/", PATIENCE, "announced", |k| {
        has_record(k, "web", "t2")
    })
    .await;
    etcd.pause();
    a.signal(libc::SIGTERM);
    a.wait_log("SIGTERM received: stopping gracefully", PATIENCE).await;
    assert!(a.is_running(), "the revoke waits on the frozen etcd:\n{}", a.excerpt());
    let second = Instant::now();
    let status = a.stop(libc::SIGTERM, PATIENCE).await;
    let took = second.elapsed();
    etcd.resume();
    eprintln!("MEASURED second SIGTERM -> exit: {took:?}");
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", a.excerpt());
    assert!(a.log().contains("second signal: exiting now"), "{}", a.excerpt());
}

#[tokio::test]
async fn sigkill_leaves_records_until_the_ttl_runs_out() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("ann-kill");
    let host = unique("host");
    let _c = Spec::web(&image).name(&name).run(&d).await;
    let mut a = announcer(&container_args(
        &etcd.endpoint(),
        &host,
        &name,
        "web",
        "k1",
        &["--ttl", "3s"],
    ));
    records_until(&mut client, "/services/", PATIENCE, "announced", |k| {
        has_record(k, "web", "k1")
    })
    .await;
    let _ = a.stop(libc::SIGKILL, PATIENCE).await;
    assert!(
        has_record(&dump(&mut client, "/services/").await, "web", "k1"),
        "a killed announcer cannot revoke: the record stays while the lease lives"
    );
    records_until(&mut client, "/services/", PATIENCE, "expired with the lease", |k| {
        k.is_empty()
    })
    .await;
}

/// The instance `host` mode gives a container publishing port 80 and naming none: unique
/// across hosts (`<host>:<container>:<port>`, registrator's id).
fn inst(host: &str, container: &str) -> String {
    format!("{host}:{container}:80")
}

fn labelled(image: &str, name: &str, service: &str) -> Spec {
    Spec::web(image).name(name).label("announce.service", service)
}

#[tokio::test]
async fn keeps_records_alive_and_writes_new_ones_when_an_etcd_member_of_three_dies() {
    let mut cluster = EtcdCluster::start(3);
    let mut client = cluster.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let (a_name, b_name) = (unique("ann-cl-a"), unique("ann-cl-b"));
    let _ca = labelled(&image, &a_name, "web").run(&d).await;
    let cb = labelled(&image, &b_name, "web").create(&d).await;
    let _a = announcer(&args(
        global_args(&cluster.endpoints_arg(), &host),
        &["host", "--ttl", "3s"],
    ));
    records_until(&mut client, "/services/", PATIENCE, "a announced", |k| {
        has_record(k, "web", &inst(&host, &a_name))
    })
    .await;

    let leader = cluster.leader().await.expect("a leader");
    cluster.kill(leader);
    // Longer than two TTLs: the lease must be kept alive through the surviving members.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut survivor = etcd_client::Client::connect([cluster.endpoint((leader + 1) % 3)], None)
        .await
        .unwrap();
    assert!(
        has_record(&dump(&mut survivor, "/services/").await, "web", &inst(&host, &a_name)),
        "record of a kept alive with a member dead"
    );
    cb.start().await;
    records_until(
        &mut survivor,
        "/services/",
        PATIENCE,
        "b announced with a member dead",
        |k| has_record(k, "web", &inst(&host, &b_name)) && has_record(k, "web", &inst(&host, &a_name)),
    )
    .await;
}

#[tokio::test]
async fn records_come_back_after_etcd_stops_and_restarts_and_reflect_what_changed_meanwhile() {
    let mut etcd = Etcd::start();
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let (a_name, b_name, c_name) = (unique("ann-er-a"), unique("ann-er-b"), unique("ann-er-c"));
    let _ca = labelled(&image, &a_name, "web").run(&d).await;
    let cb = labelled(&image, &b_name, "web").run(&d).await;
    let cc = labelled(&image, &c_name, "web").create(&d).await;
    let mut a = announcer(&args(global_args(&etcd.endpoint(), &host), &["host"]));
    {
        let mut client = etcd.client().await;
        records_until(&mut client, "/services/", PATIENCE, "a and b announced", |k| {
            has_record(k, "web", &inst(&host, &a_name)) && has_record(k, "web", &inst(&host, &b_name))
        })
        .await;
    }
    etcd.kill();
    // While etcd is away (longer than the TTL): b stops, c starts.
    cb.stop(1).await;
    cc.start().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.is_running(), "the announcer keeps running while etcd is away");
    etcd.restart();
    let mut client = etcd.client().await;
    records_until(&mut client, "/services/", PATIENCE, "a and c back, b gone", |k| {
        has_record(k, "web", &inst(&host, &a_name))
            && has_record(k, "web", &inst(&host, &c_name))
            && !has_any(k, "web", &inst(&host, &b_name))
    })
    .await;
}

#[tokio::test]
async fn a_lease_that_expired_while_etcd_was_unreachable_is_regranted_and_every_record_rewritten() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let (a_name, b_name) = (unique("ann-exp-a"), unique("ann-exp-b"));
    let _ca = labelled(&image, &a_name, "web").run(&d).await;
    let _cb = labelled(&image, &b_name, "web").run(&d).await;
    let mut a = announcer(&args(global_args(&etcd.endpoint(), &host), &["host"]));
    let before = records_until(&mut client, "/services/", PATIENCE, "announced", |k| {
        has_record(k, "web", &inst(&host, &a_name)) && has_record(k, "web", &inst(&host, &b_name))
    })
    .await;
    let old_lease = before.values().next().unwrap().lease;
    // Freeze the announcer: from etcd's side it is unreachable, and its lease expires.
    a.signal(libc::SIGSTOP);
    records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "records expired with the lease",
        |k| k.is_empty(),
    )
    .await;
    a.signal(libc::SIGCONT);
    let after = records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "records rewritten on a new lease",
        |k| has_record(k, "web", &inst(&host, &a_name)) && has_record(k, "web", &inst(&host, &b_name)),
    )
    .await;
    assert!(
        after.values().all(|v| v.lease != old_lease && v.lease != 0),
        "{after:?}"
    );
    assert!(a.is_running());
    assert!(a.log().contains("lease expired"), "{}", a.log());
}

#[tokio::test]
async fn docker_event_stream_cut_keeps_records_and_resyncs_what_changed_during_the_cut() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let proxy = SocketProxy::start("/var/run/docker.sock");
    let host = unique("host");
    let (a_name, b_name, c_name) = (unique("ann-cut-a"), unique("ann-cut-b"), unique("ann-cut-c"));
    let _ca = labelled(&image, &a_name, "web").run(&d).await;
    let cb = labelled(&image, &b_name, "web").run(&d).await;
    let cc = labelled(&image, &c_name, "web").create(&d).await;
    let mut a = announcer(&args(
        global_args(&etcd.endpoint(), &host),
        &["--docker-host", &proxy.docker_host(), "host"],
    ));
    records_until(&mut client, "/services/", PATIENCE, "a and b announced", |k| {
        has_record(k, "web", &inst(&host, &a_name)) && has_record(k, "web", &inst(&host, &b_name))
    })
    .await;

    proxy.cut();
    cb.stop(1).await;
    cc.start().await;
    // Longer than the TTL: records stay while Docker is unreachable (they are still true
    // as far as the announcer can know, and the lease is kept alive).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = dump(&mut client, "/services/").await;
    assert!(
        has_record(&during, "web", &inst(&host, &a_name)),
        "a stays during the cut: {during:?}"
    );
    assert!(a.is_running());

    proxy.restore();
    records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "after restore: a and c, not b",
        |k| {
            has_record(k, "web", &inst(&host, &a_name))
                && has_record(k, "web", &inst(&host, &c_name))
                && !has_any(k, "web", &inst(&host, &b_name))
        },
    )
    .await;
}

#[tokio::test]
async fn stale_records_of_this_host_are_deleted_at_start_and_others_are_left_alone() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let live = unique("ann-live");
    // Leftovers without a lease (what a crashed writer of another kind leaves behind).
    for (instance, owner) in [("stale1", host.as_str()), ("other1", "another-host")] {
        for (f, v) in [
            ("unit", "u"),
            ("host", owner),
            ("public_ipv4_addr", "1.1.1.1"),
            ("private_ipv4_addr", "10.0.0.1"),
            ("port", "1234"),
        ] {
            client
                .put(format!("/services/web/{instance}/{f}"), v, None)
                .await
                .unwrap();
        }
    }
    client
        .put(
            "/services/api/stalejson",
            format!("{{\"host\":\"{host}\",\"private_ipv4_addr\":\"10.0.0.1\",\"port\":1}}"),
            None,
        )
        .await
        .unwrap();
    // web1 must not be mistaken for web10.
    client
        .put("/services/web/stale10/host", "another-host", None)
        .await
        .unwrap();
    let _c = labelled(&image, &live, "web").run(&d).await;
    let _a = announcer(&args(global_args(&etcd.endpoint(), &host), &["host"]));
    let kvs = records_until(&mut client, "/services/", PATIENCE, "live announced, stale gone", |k| {
        has_record(k, "web", &inst(&host, &live)) && !has_any(k, "web", "stale1") && !has_any(k, "api", "stalejson")
    })
    .await;
    assert!(
        has_record(&kvs, "web", "other1"),
        "another host's record is left alone: {kvs:?}"
    );
    assert!(kvs.contains_key("/services/web/stale10/host"), "{kvs:?}");
}

#[tokio::test]
async fn value_layout_writes_the_seeds_db_record_and_container_mode_cleans_its_own_stale_key() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let name = unique("ann-db");
    // A stale record of this host's db (pointing at our private address), and another
    // instance that this process does not manage.
    client
        .put(
            "/services/db/db_private_ip",
            format!("{{\"value\": \"{PRIVATE}\"}}"),
            None,
        )
        .await
        .unwrap();
    client
        .put("/services/db/other", format!("{{\"value\": \"{PRIVATE}\"}}"), None)
        .await
        .unwrap();
    let c = Spec::web(&image).name(&name).create(&d).await;
    let _a = announcer(&container_args(
        &etcd.endpoint(),
        &host,
        &name,
        "db",
        "db_private_ip",
        &["--layout", "value"],
    ));
    records_until(&mut client, "/services/", PATIENCE, "stale db key deleted", |k| {
        !k.contains_key("/services/db/db_private_ip")
    })
    .await;
    assert!(
        dump(&mut client, "/services/db/other").await.len() == 1,
        "only its own instance is managed"
    );
    c.start().await;
    let kvs = records_until(
        &mut client,
        "/services/db/db_private_ip",
        PATIENCE,
        "db announced",
        |k| k.contains_key("/services/db/db_private_ip"),
    )
    .await;
    let v = &kvs["/services/db/db_private_ip"];
    assert_eq!(v.value, format!("{{\"value\": \"{PRIVATE}\"}}"));
    assert_ne!(v.lease, 0);
}

#[tokio::test]
async fn http_health_gate_announces_only_while_the_check_answers_2xx() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let name = unique("ann-health");
    let c = Spec::web(&image).name(&name).run(&d).await;
    let port = c.host_port("80/tcp").await;
    c.wait_http(port, "/cgi-bin/health").await;
    let mut argv = global_args(&etcd.endpoint(), &host);
    argv.extend(["--check".to_owned(), "http:/cgi-bin/health".to_owned()]);
    argv.extend(
        ["container", &name, "--service", "web", "--instance", "h1"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    let a = announcer(&argv);
    // The health page answers 500: several checks happen, nothing is announced.
    a.wait_log("check does not pass yet", PATIENCE).await;
    a.wait_log_more("probe failed", 5, PATIENCE).await;
    assert!(dump(&mut client, "/services/").await.is_empty(), "500 is not announced");

    c.exec(&["touch", "/tmp/healthy"]).await;
    records_until(&mut client, "/services/", PATIENCE, "announced once healthy", |k| {
        has_record(k, "web", "h1")
    })
    .await;
    c.exec(&["rm", "/tmp/healthy"]).await;
    records_until(&mut client, "/services/", PATIENCE, "withdrawn when failing", |k| {
        k.is_empty()
    })
    .await;
    c.exec(&["touch", "/tmp/healthy"]).await;
    records_until(&mut client, "/services/", PATIENCE, "re-announced on recovery", |k| {
        has_record(k, "web", "h1")
    })
    .await;
}

/// `http` passes on 3xx, like `curl -f`: busybox httpd answers `/moved` (a directory
/// without its trailing slash) with 302. Before the directory exists it answers 404, and
/// nothing is announced.
#[tokio::test]
async fn http_check_passes_on_a_redirect_and_fails_on_404() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let name = unique("ann-3xx");
    let c = Spec::web(&image).name(&name).run(&d).await;
    c.wait_http(c.host_port("80/tcp").await, "/").await;
    let mut argv = global_args(&etcd.endpoint(), &host);
    argv.extend(
        [
            "--check",
            "http:/moved",
            "container",
            &name,
            "--service",
            "web",
            "--instance",
            "r1",
        ]
        .map(str::to_owned),
    );
    let a = announcer(&argv);
    a.wait_log("answered 404", PATIENCE).await;
    a.wait_log_more("probe failed", 5, PATIENCE).await;
    assert!(dump(&mut client, "/services/").await.is_empty(), "404 is not announced");
    c.exec(&["mkdir", "/www/moved"]).await;
    records_until(&mut client, "/services/", PATIENCE, "announced on a 302", |k| {
        has_record(k, "web", "r1")
    })
    .await;
}

/// A container whose service is down but whose port Docker publishes on 127.0.0.1 (the
/// userland proxy accepts there even with nothing behind it).
async fn silent_container(d: &bollard::Docker, image: &str, name: &str, host_ip: Option<String>) -> docker::Container {
    Spec {
        cmd: Some(vec!["sleep".into(), "3600".into()]),
        host_ip,
        ..Spec::web(image).name(name)
    }
    .run(d)
    .await
}

/// The `tcp` probe goes to the container's own address, so Docker's userland proxy, which
/// accepts on the published host port with nothing listening inside, cannot make a dead
/// service look alive. Where the container address is unreachable (the announcer in a
/// network namespace of its own, the port published on an address that namespace reaches)
/// the probe falls back to the published host binding, and still fails while nothing
/// listens.
#[tokio::test]
async fn tcp_probes_see_through_the_userland_proxy_and_fall_back_to_the_host_binding() {
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;

    // The root namespace: the container address is reachable.
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let name = unique("ann-proxy");
    let c = silent_container(&d, &image, &name, None).await;
    let port = c.host_port("80/tcp").await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the premise: Docker's userland proxy accepts on 127.0.0.1:{port} with nothing behind it"
    );
    let a = announcer(&container_args(
        &etcd.endpoint(),
        &unique("host"),
        &name,
        "web",
        "p1",
        &[],
    ));
    a.wait_log("refused the connection", PATIENCE).await;
    a.wait_log_more("probe failed", 5, PATIENCE).await;
    assert!(
        dump(&mut client, "/services/").await.is_empty(),
        "the proxy's accept is not a pass"
    );
    c.exec(&["httpd", "-p", "80", "-h", "/www"]).await;
    records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "announced once httpd listens",
        |k| has_record(k, "web", "p1"),
    )
    .await;
    assert!(!a.log().contains("probing the host binding"), "{}", a.excerpt());

    // A network namespace of its own: Docker's bridge is not routed there; the port is
    // published on the address of the test bed's gateway, which it reaches.
    let cluster = testbed::Cluster::start(1);
    let mut client = cluster.client().await;
    let name = unique("ann-fallback");
    let c = silent_container(&d, &image, &name, Some(cluster.gateway().to_string())).await;
    let argv = container_args(&cluster.etcd_endpoints_arg(0), &unique("host"), &name, "web", "f1", &[]);
    let a = cluster.host(0).start("announcer", support::command(&argv));
    a.wait_log("container address unreachable; probing the host binding", PATIENCE)
        .await;
    a.wait_log_more("probe failed", 5, PATIENCE).await;
    assert!(
        dump(&mut client, "/services/").await.is_empty(),
        "nothing listens: not announced"
    );
    c.exec(&["httpd", "-p", "80", "-h", "/www"]).await;
    let found = testbed::eventually("announced through the host binding", PATIENCE, async || {
        let kvs = dump(&mut client, "/services/").await;
        has_record(&kvs, "web", "f1").then_some(())
    })
    .await;
    found.unwrap_or_else(|e| a.fail(e));
}

#[tokio::test]
async fn docker_check_follows_the_containers_own_healthcheck() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let name = unique("ann-dhc");
    let spec = Spec {
        healthcheck: Some(
            ["CMD", "test", "-f", "/tmp/healthy"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        ),
        ..Spec::web(&image).name(&name)
    };
    let c = spec.run(&d).await;
    let a = announcer(&args(
        global_args(&etcd.endpoint(), &host),
        &[
            "--check",
            "docker",
            "--resync-interval",
            "500ms",
            "container",
            &name,
            "--service",
            "web",
            "--instance",
            "d1",
        ],
    ));
    // Docker calls it unhealthy (no /tmp/healthy yet): nothing is announced.
    a.wait_log("action=\"health_status\"", PATIENCE).await;
    a.wait_log_more("docker resynced", 0, PATIENCE).await;
    assert!(
        dump(&mut client, "/services/").await.is_empty(),
        "not healthy, not announced"
    );
    c.exec(&["touch", "/tmp/healthy"]).await;
    records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "announced once Docker says healthy",
        |k| has_record(k, "web", "d1"),
    )
    .await;
    c.exec(&["rm", "/tmp/healthy"]).await;
    records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "withdrawn once Docker says unhealthy",
        |k| k.is_empty(),
    )
    .await;
}

#[tokio::test]
async fn host_mode_follows_labels_and_registrator_env_and_skips_a_bad_container() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let (l, r, p, bad, ign, none) = (
        unique("ann-lbl"),
        unique("ann-reg"),
        unique("ann-regp"),
        unique("ann-bad"),
        unique("ann-ign"),
        unique("ann-none"),
    );
    let cl = Spec::web(&image)
        .name(&l)
        .label("announce.service", "web")
        .label("announce.instance", "l1")
        .label("announce.layout", "json")
        .run(&d)
        .await;
    let cr = Spec::web(&image).name(&r).env("SERVICE_NAME=api").run(&d).await;
    let cp = Spec::web(&image).name(&p).env("SERVICE_80_NAME=www").run(&d).await;
    let _cb = labelled(&image, &bad, "web")
        .label("announce.port", "abc")
        .run(&d)
        .await;
    let _ci = Spec::web(&image)
        .name(&ign)
        .env("SERVICE_NAME=api")
        .env("SERVICE_IGNORE=1")
        .run(&d)
        .await;
    let _cn = Spec::web(&image).name(&none).run(&d).await;
    let a = announcer(&args(
        global_args(&etcd.endpoint(), &host),
        &["--resync-interval", "500ms", "host"],
    ));
    let kvs = records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "labelled and registrator containers",
        |k| {
            k.contains_key("/services/web/l1")
                && has_record(k, "api", &inst(&host, &r))
                && has_record(k, "www", &inst(&host, &p))
        },
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(&kvs["/services/web/l1"].value).unwrap();
    assert_eq!(doc["port"], cl.host_port("80/tcp").await);
    assert_eq!(doc["host"], host.as_str());
    assert_eq!(doc["container_name"], l.as_str());
    assert_eq!(
        kvs[&format!("/services/api/{}/port", inst(&host, &r))].value,
        cr.host_port("80/tcp").await.to_string()
    );
    assert_eq!(
        kvs[&format!("/services/www/{}/port", inst(&host, &p))].value,
        cp.host_port("80/tcp").await.to_string()
    );
    a.wait_log("announce.port=\"abc\"", PATIENCE).await;
    // Give the skipped ones every chance (a resync after the first pass), then check
    // they never appeared.
    a.wait_log_more("docker resynced", 0, PATIENCE).await;
    let kvs = dump(&mut client, "/services/").await;
    for name in [&bad, &ign, &none] {
        assert!(
            !kvs.keys().any(|k| k.contains(name.as_str())),
            "{name} must not be announced: {kvs:?}"
        );
    }
}

/// registrator's conventions with real containers, labelled the way registrator users do.
#[tokio::test]
async fn registrator_conventions_ports_ignore_ids_tags_host_network_and_internal() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let (two, ign, baked, ids, hostnet, int) = (
        unique("ann-rg-two"),
        unique("ann-rg-ign"),
        unique("ann-rg-baked"),
        unique("ann-rg-ids"),
        unique("ann-rg-hostnet"),
        unique("ann-rg-int"),
    );
    // Two published ports, one SERVICE_NAME: one record per port, `<name>-<port>`.
    let c_two = Spec::web(&image)
        .name(&two)
        .env("SERVICE_NAME=api")
        .publish("8443/tcp", 0)
        .run(&d)
        .await;
    // SERVICE_<port>_IGNORE leaves that port out.
    let _c_ign = Spec::web(&image)
        .name(&ign)
        .env("SERVICE_NAME=ign")
        .env("SERVICE_8443_IGNORE=true")
        .publish("8443/tcp", 0)
        .run(&d)
        .await;
    // A port name baked into the image for a port this run does not publish: ignored.
    let c_baked = Spec::web(&image)
        .name(&baked)
        .label("SERVICE_NAME", "baked")
        .label("SERVICE_9000_NAME", "admin")
        .run(&d)
        .await;
    // SERVICE_ID, tags and attributes, a suffix in another case, in the json layout.
    let _c_ids = Spec::web(&image)
        .name(&ids)
        .env("SERVICE_Name=idsvc")
        .env("SERVICE_ID=custom-id")
        .env("SERVICE_TAGS=master,backups")
        .env("SERVICE_REGION=us2")
        .label("announce.layout", "json")
        .run(&d)
        .await;
    // --net=host: the exposed port (httpd listens on it on the host's loopback).
    let port = testbed::free_port();
    let _c_hostnet = Spec {
        cmd: Some(
            ["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h", "/www"]
                .map(str::to_owned)
                .to_vec(),
        ),
        publish: vec![(format!("{port}/tcp"), 0)],
        ..Spec::web(&image)
            .name(&hostnet)
            .env("SERVICE_NAME=hostnet")
            .host_network()
    }
    .run(&d)
    .await;
    let _c_int = Spec::web(&image)
        .name(&int)
        .env("SERVICE_NAME=internal")
        .label("announce.network", "bridge")
        .run(&d)
        .await;
    let mut argv = global_args(&etcd.endpoint(), &host);
    argv.extend(["--check", "none", "host"].map(str::to_owned));
    let a = announcer(&argv);
    let id = |name: &str, port: u16| format!("{host}:{name}:{port}");
    let kvs = records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "every registrator container",
        |k| {
            has_record(k, "api-80", &id(&two, 80))
                && has_record(k, "api-8443", &id(&two, 8443))
                && has_record(k, "ign-80", &id(&ign, 80))
                && has_record(k, "baked", &id(&baked, 80))
                && k.contains_key("/services/idsvc/custom-id")
                && has_record(k, "hostnet", &id(&hostnet, port))
                && has_record(k, "internal", &id(&int, 80))
        },
    )
    .await;
    let value = |k: &str| kvs[k].value.clone();
    assert_eq!(
        value(&format!("/services/api-8443/{}/port", id(&two, 8443))),
        c_two.host_port("8443/tcp").await.to_string()
    );
    assert!(!has_any(&kvs, "ign-8443", &id(&ign, 8443)), "{kvs:?}");
    assert_eq!(
        value(&format!("/services/baked/{}/port", id(&baked, 80))),
        c_baked.host_port("80/tcp").await.to_string()
    );
    let doc: serde_json::Value = serde_json::from_str(&value("/services/idsvc/custom-id")).unwrap();
    assert_eq!(doc["tags"], serde_json::json!(["master", "backups"]));
    assert_eq!(doc["attrs"], serde_json::json!({"region": "us2"}));
    assert_eq!(doc["host"], host.as_str());
    assert_eq!(
        value(&format!("/services/hostnet/{}/port", id(&hostnet, port))),
        port.to_string()
    );
    // Without --internal, announce.network changes nothing: the host's address.
    assert_eq!(
        value(&format!("/services/internal/{}/private_ipv4_addr", id(&int, 80))),
        PRIVATE
    );
    a.wait_log("SERVICE_9000_NAME=\"admin\" ignored", PATIENCE).await;

    // --internal: the container's own address on its network and the exposed port.
    let host2 = unique("host");
    let mut argv = global_args(&etcd.endpoint(), &host2);
    argv.extend(["--check", "none", "host", "--internal"].map(str::to_owned));
    let _b = announcer(&argv);
    let want = format!("/services/internal/{host2}:{int}:80/");
    let kvs = records_until(&mut client, "/services/", PATIENCE, "the internal record", |k| {
        k.contains_key(&format!("{want}port"))
    })
    .await;
    let ip = docker::connect()
        .await
        .inspect_container(&int, None)
        .await
        .unwrap()
        .network_settings
        .unwrap()
        .networks
        .unwrap()["bridge"]
        .ip_address
        .clone()
        .unwrap();
    assert_eq!(kvs[&format!("{want}port")].value, "80");
    assert_eq!(kvs[&format!("{want}private_ipv4_addr")].value, ip);

    // Both records of a container go together.
    c_two.stop(1).await;
    records_until(
        &mut client,
        "/services/",
        PATIENCE,
        "both records of a stopped container gone",
        |k| !has_any(k, "api-80", &id(&two, 80)) && !has_any(k, "api-8443", &id(&two, 8443)),
    )
    .await;
}

#[tokio::test]
async fn explain_prints_the_record_and_why_without_writing() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let name = unique("ann-explain");
    let c = labelled(&image, &name, "web")
        .label("announce.instance", "e1")
        .run(&d)
        .await;
    let port = c.host_port("80/tcp").await;
    c.wait_http(port, "/").await;
    let (status, out, err) = run_to_end(&args(global_args(&etcd.endpoint(), &host), &["explain", &name]));
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    for fragment in [
        "explained as host mode".to_owned(),
        "service \"web\" from label announce.service".to_owned(),
        "instance \"e1\" from label announce.instance".to_owned(),
        "port 80/tcp: the only published port".to_owned(),
        format!("private address {PRIVATE} from --private-ipv4"),
        format!("/services/web/e1/port = {port}"),
        format!("/services/web/e1/host = {host}"),
        "check tcp passes now".to_owned(),
        "etcd: /services/web/e1/ is free: it would be written".to_owned(),
    ] {
        assert!(out.contains(&fragment), "{fragment:?} missing from:\n{out}");
    }
    // The same answer for a script: one JSON object.
    let (status, out, err) = run_to_end(&args(
        global_args(&etcd.endpoint(), &host),
        &["explain", &name, "--output", "json"],
    ));
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    let x: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(x["container"], name.as_str(), "{x}");
    assert_eq!(x["mode"], "host", "{x}");
    assert_eq!(x["not_announced"], serde_json::Value::Null, "{x}");
    let rec = &x["records"][0];
    assert_eq!(
        (&rec["service"], &rec["instance"]),
        (&"web".into(), &"e1".into()),
        "{x}"
    );
    assert_eq!(rec["check"], "tcp", "{x}");
    assert_eq!(rec["check_passes"], true, "{x}");
    assert_eq!(rec["etcd"]["holder"], "free", "{x}");
    assert_eq!(rec["etcd"]["key"], "/services/web/e1/", "{x}");
    let port_key = rec["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == "/services/web/e1/port")
        .unwrap_or_else(|| panic!("no port key: {x}"));
    assert_eq!(port_key["value"], port.to_string(), "{x}");
    assert!(
        rec["why"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "instance \"e1\" from label announce.instance"),
        "{x}"
    );
    // Container mode explanation with another layout.
    let (status, out, _) = run_to_end(&args(
        global_args(&etcd.endpoint(), &host),
        &[
            "explain",
            &name,
            "--service",
            "db",
            "--instance",
            "db_private_ip",
            "--layout",
            "value",
        ],
    ));
    assert!(status.success());
    assert!(
        out.contains(&format!("/services/db/db_private_ip = {{\"value\": \"{PRIVATE}\"}}")),
        "{out}"
    );
    assert!(dump(&mut client, "/").await.is_empty(), "explain writes nothing");
    // Another host holds the record: explain says so, and how to fix it.
    for (f, v) in [("host", "other-host"), ("unit", "web-9"), ("port", "1")] {
        client.put(format!("/services/web/e1/{f}"), v, None).await.unwrap();
    }
    let (status, out, _) = run_to_end(&args(global_args(&etcd.endpoint(), &host), &["explain", &name]));
    assert!(status.success());
    assert!(
        out.contains("etcd: conflict: /services/web/e1/ is held by host \"other-host\" (unit \"web-9\") on no lease")
            && out.contains("another instance"),
        "{out}"
    );
    client
        .delete(
            "/services/web/e1/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();

    // A container that does not exist, and one with a bad label: one-line errors, exit 1.
    let (status, _, err) = run_to_end(&args(
        global_args(&etcd.endpoint(), &host),
        &["explain", "no-such-ann-x"],
    ));
    assert_eq!(status.code(), Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-ann-x"), "{err}");
    let bad = unique("ann-explain-bad");
    let _cb = labelled(&image, &bad, "web")
        .label("announce.port", "abc")
        .run(&d)
        .await;
    let (status, _, err) = run_to_end(&args(global_args(&etcd.endpoint(), &host), &["explain", &bad]));
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("announce.port=\"abc\""), "{err}");
}

#[tokio::test]
async fn bad_input_exits_non_zero_naming_the_value_and_writes_nothing() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let host = unique("host");
    let name = unique("ann-badin");
    let c = Spec::web(&image).name(&name).run(&d).await;
    let two = unique("ann-two");
    let _c2 = Spec::web(&image).name(&two).publish("8080/tcp", 0).run(&d).await;
    let ep = etcd.endpoint();
    let dead = format!("http://127.0.0.1:{}", testbed::free_port());
    let g = |endpoints: &str| global_args(endpoints, &host);
    let cases: Vec<(Vec<String>, &str, i32)> = vec![
        (
            args(
                g(&ep),
                &[
                    "container",
                    &name,
                    "--service",
                    "web",
                    "--instance",
                    "x",
                    "--layout",
                    "yaml",
                ],
            ),
            "yaml",
            2,
        ),
        (
            args(
                g(&ep),
                &[
                    "--check",
                    "ping",
                    "container",
                    &name,
                    "--service",
                    "web",
                    "--instance",
                    "x",
                ],
            ),
            "ping",
            2,
        ),
        (
            args(
                g(&ep),
                &["container", &name, "--service", "web", "--instance", "web/01"],
            ),
            "web/01",
            2,
        ),
        (
            args(
                g(&ep),
                &[
                    "container",
                    &name,
                    "--service",
                    "web",
                    "--instance",
                    "x",
                    "--port",
                    "abc",
                ],
            ),
            "abc",
            2,
        ),
        // Runtime refusals: a port the container does not publish, several ports and no choice.
        (
            args(
                g(&ep),
                &[
                    "container",
                    &name,
                    "--service",
                    "web",
                    "--instance",
                    "x",
                    "--port",
                    "8080/tcp",
                ],
            ),
            "8080/tcp",
            1,
        ),
        (
            args(g(&ep), &["container", &two, "--service", "web", "--instance", "x"]),
            "several ports",
            1,
        ),
        (
            args(g(&dead), &["container", &name, "--service", "web", "--instance", "x"]),
            dead.as_str(),
            1,
        ),
    ];
    // The README's exit codes: 2 for a bad command line, 1 for a refusal at run time.
    for (argv, value, code) in cases {
        let (status, _, err) = run_to_end(&argv);
        assert_eq!(status.code(), Some(code), "{argv:?}: {err}");
        let first = err
            .lines()
            .find(|l| l.contains("error") || l.starts_with("announcer:"))
            .unwrap_or_default();
        assert!(first.contains(value), "the error names {value:?}: {err}");
    }
    assert!(dump(&mut client, "/").await.is_empty(), "nothing written");
    drop(c);
    let kvs = client.get("/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(kvs.count(), 0);
    // An unreachable etcd is also refused by `host` mode.
    let (status, _, err) = run_to_end(&args(g(&dead), &["host"]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&dead), "{err}");
    let _ = PutOptions::new();
}
