//! The test bed proves itself against the real servers: etcd (one member and a
//! three-member cluster with a member killed), MariaDB, the Docker engine and the
//! cuttable socket proxy.

use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use etcd_client::{GetOptions, PutOptions};
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use testbed::docker::{self, Spec};
use testbed::{Etcd, EtcdCluster, MariaDb, SocketProxy};

#[tokio::test]
async fn etcd_single_member_put_get_and_lease_expiry() {
    let etcd = Etcd::start();
    let mut c = etcd.client().await;
    c.put("/testbed/a", "1", None).await.unwrap();
    let got = c.get("/testbed/a", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");

    let lease = c.lease_grant(1, None).await.unwrap().id();
    c.put("/testbed/leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert_eq!(c.get("/testbed/leased", None).await.unwrap().count(), 1);
    // Without keep-alives the lease lapses after its TTL and takes the key with it.
    let gone = testbed::eventually("the leased key lapses", Duration::from_secs(5), async || {
        (c.get("/testbed/leased", None).await.unwrap().count() == 0).then_some(())
    })
    .await;
    assert!(gone.is_ok(), "leased key still there after the TTL");
}

#[tokio::test]
async fn etcd_cluster_of_three_keeps_serving_with_a_member_killed() {
    let mut cluster = EtcdCluster::start(3);
    let mut c = cluster.client().await;
    c.put("/testbed/k", "before", None).await.unwrap();

    // Kill the leader: the hardest member to lose.
    let leader = cluster.leader().await.expect("a leader");
    cluster.kill(leader);
    assert!(!cluster.is_healthy(leader));

    // The two others elect a new leader and keep accepting writes.
    let survivor = (leader + 1) % 3;
    let mut s = etcd_client::Client::connect([cluster.endpoint(survivor)], None)
        .await
        .unwrap();
    let wrote = testbed::eventually("the survivors accept a write", Duration::from_secs(15), async || {
        s.put("/testbed/k", "after", None).await.ok().map(|_| ())
    })
    .await;
    assert!(wrote.is_ok(), "the two surviving members did not accept a write");
    let new_leader = cluster.leader().await.expect("a new leader");
    assert_ne!(new_leader, leader);

    // The killed member comes back with its data and catches up.
    cluster.restart(leader);
    let mut back = etcd_client::Client::connect([cluster.endpoint(leader)], None)
        .await
        .unwrap();
    let caught_up = testbed::eventually("the restarted member catches up", Duration::from_secs(10), async || {
        let r = back.get("/testbed/k", None).await.ok()?;
        (r.kvs().first().map(|kv| kv.value()) == Some(b"after".as_slice())).then_some(())
    })
    .await;
    assert!(caught_up.is_ok(), "restarted member did not catch up");
    let all = c.get("/testbed/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(all.count(), 1);
}

#[tokio::test]
async fn mariadb_answers_select_version() {
    let db = MariaDb::start();
    let pool = db.root_pool();
    let mut conn = pool.get_conn().await.unwrap();
    let version: String = conn.query_first("SELECT VERSION()").await.unwrap().unwrap();
    assert!(version.contains("MariaDB"), "{version}");
    // The command-line client sees the same server.
    assert!(db.cli(&["-N", "-e", "SELECT 1+1"]).trim() == "2");
    drop(conn);
    pool.disconnect().await.unwrap();
}

#[tokio::test]
async fn docker_runs_a_busybox_web_container_and_reports_its_events() {
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let since = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1)
    .to_string();

    let c = Spec::web(&image).create(&d).await;
    c.start().await;
    let port = c.host_port("80/tcp").await;
    c.wait_http(port, "/").await;
    let page = testbed::http_get(port, "/index.html").unwrap();
    assert!(
        page.starts_with("HTTP/1.") && page.contains("hello from testbed"),
        "{page}"
    );

    // The health CGI answers 500 until /tmp/healthy exists, then 200.
    let sick = testbed::http_get(port, "/cgi-bin/health").unwrap();
    assert!(sick.starts_with("HTTP/1.0 500"), "{sick}");
    c.exec(&["touch", "/tmp/healthy"]).await;
    let well = testbed::http_get(port, "/cgi-bin/health").unwrap();
    assert!(well.starts_with("HTTP/1.0 200"), "{well}");

    c.stop(1).await;
    let until = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string();
    let mut filters = std::collections::HashMap::new();
    filters.insert("container", vec![c.id.as_str()]);
    let opts = EventsOptionsBuilder::new()
        .since(&since)
        .until(&until)
        .filters(&filters)
        .build();
    let events: Vec<String> = d
        .events(Some(opts))
        .filter_map(|e| async move { e.ok().and_then(|e| e.action) })
        .collect()
        .await;
    assert!(events.iter().any(|a| a == "start"), "{events:?}");
    assert!(events.iter().any(|a| a == "die"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_proxy_cut_breaks_the_event_stream_and_restore_reconnects() {
    let proxy = SocketProxy::start("/var/run/docker.sock");
    let via = bollard::Docker::connect_with_unix(&proxy.docker_host(), 30, bollard::API_DEFAULT_VERSION)
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    via.ping().await.unwrap();
    // Only the events of a label no container carries: tests running beside this one
    // start containers, and their events must not count as this stream's.
    let label = format!("testbed.proxy-test={}", testbed::unique("none"));
    let mut filters = std::collections::HashMap::new();
    filters.insert("label", vec![label.as_str()]);
    let mut events = via.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
    // Nothing arrives yet; then the cut ends the stream (an error or the end).
    let pending = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(pending.is_err(), "no event expected yet");
    proxy.cut();
    let ended = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("stream reacts to the cut");
    assert!(!matches!(ended, Some(Ok(_))), "stream must break, got {ended:?}");
    assert!(via.ping().await.is_err(), "no new connection while cut");
    proxy.restore();
    via.ping().await.unwrap();
}

#[test]
#[should_panic(expected = "Install it with: sudo apt-get install -y nothing-here")]
fn a_missing_server_fails_with_how_to_install_it() {
    let _ = testbed::require_program("testbed-no-such-server", "sudo apt-get install -y nothing-here");
}
