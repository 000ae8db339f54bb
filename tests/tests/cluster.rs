//! The test bed's cluster proves itself: hosts with their own addresses and one etcd
//! across them; a killed host is silent; a partition cuts both ways or one way and heals;
//! nothing is left behind.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use testbed::cluster::{ETCD_CLIENT_PORT, http_get_at};
use testbed::{Cluster, Cut, eventually};

/// Whether a UDP datagram sent from host `from` reaches host `to` (port 9 + a random one).
fn udp_reaches(cluster: &Cluster, from: usize, to: usize) -> bool {
    let to_addr = cluster.host(to).addr();
    let (tx, rx) = std::sync::mpsc::channel::<u16>();
    let receiver = cluster.host(to).in_netns(move || {
        let sock = UdpSocket::bind((to_addr, 0)).expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        tx.send(sock.local_addr().expect("addr").port()).expect("send port");
        let mut buf = [0u8; 16];
        sock.recv(&mut buf).is_ok()
    });
    let port = rx.recv().expect("receiver bound");
    let sender = cluster.host(from).in_netns(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind udp");
        for _ in 0..5 {
            let _ = sock.send_to(b"ping", (to_addr, port));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    sender.join().expect("sender");
    receiver.join().expect("receiver")
}

/// Whether `addr` answers etcd's `/health` with a leader.
fn etcd_healthy(addr: SocketAddr) -> bool {
    http_get_at(addr, "/health").is_some_and(|r| r.contains("\"health\":\"true\""))
}

#[tokio::test]
async fn hosts_have_their_own_addresses_processes_and_one_etcd() {
    let cluster = Cluster::start(3);
    let mut c = cluster.client().await;
    c.put("/testbed/cluster", "one", None).await.unwrap();

    for h in cluster.hosts() {
        // Each member serves the key written through the cluster: one etcd across hosts.
        let mut own = etcd_client::Client::connect([h.etcd_endpoint()], None).await.unwrap();
        let got = own.get("/testbed/cluster", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"one", "member of {}", h.name());

        // Its address is on its eth0, and a process started on it lives in its namespace.
        let out = h.run("ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}/24", h.addr())));
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let d = h.start("sleep", sleep);
        let ns_of = |p: String| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ns_of(format!("/proc/{}/ns/net", d.pid())),
            ns_of(format!("/run/netns/{}", h.netns()))
        );
    }
    // Hosts reach each other.
    assert!(udp_reaches(&cluster, 0, 1));
    assert!(udp_reaches(&cluster, 2, 0));
}

#[tokio::test]
async fn a_killed_host_is_silent_and_the_others_keep_a_leader() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.etcd_leader().await.expect("a leader");
    let mut sleep = Command::new("sleep");
    sleep.arg("60");
    let mut on_leader = cluster.host(leader).start("sleep", sleep);

    let killed = Instant::now();
    cluster.kill_host(leader);
    // Every process on it is gone (its exit is reaped at once).
    let status = on_leader.wait(Duration::from_secs(5)).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let dead = SocketAddr::from((cluster.host(leader).addr(), ETCD_CLIENT_PORT));
    assert!(http_get_at(dead, "/health").is_none(), "the killed host still answers");

    let mut c = cluster.client().await;
    let wrote = eventually("the two others accept a write", Duration::from_secs(20), async || {
        c.put("/testbed/after", "x", None).await.ok()
    })
    .await;
    wrote.unwrap_or_else(|e| cluster.fail(e));
    let new_leader = cluster.etcd_leader().await.expect("a new leader");
    assert_ne!(new_leader, leader, "the killed host's member still leads");
    println!(
        "figure: etcd wrote again {:?} after its leader's host was killed",
        killed.elapsed()
    );
}

#[tokio::test]
async fn a_partition_cuts_both_ways_then_heals() {
    let cluster = Cluster::start(3);
    let cut = 2;
    cluster.partition(cut, Cut::Both);
    assert!(!udp_reaches(&cluster, 0, cut));
    assert!(!udp_reaches(&cluster, cut, 1));
    assert!(udp_reaches(&cluster, 0, 1), "the others still talk");

    // The cut member loses its leader; the majority goes on and takes a write.
    let cut_addr = SocketAddr::from((cluster.host(cut).addr(), ETCD_CLIENT_PORT));
    let lost = eventually(
        "the cut member reports no leader",
        Duration::from_secs(20),
        async || (!etcd_healthy(cut_addr)).then_some(()),
    )
    .await;
    lost.unwrap_or_else(|e| cluster.fail(e));
    let mut c = etcd_client::Client::connect([cluster.host(0).etcd_endpoint()], None)
        .await
        .unwrap();
    c.put("/testbed/during", "cut", None).await.unwrap();

    let healed = Instant::now();
    cluster.heal(cut);
    assert!(udp_reaches(&cluster, 0, cut));
    let mut back = etcd_client::Client::connect([cluster.host(cut).etcd_endpoint()], None)
        .await
        .unwrap();
    let caught_up = eventually(
        "the healed member serves the write it missed",
        Duration::from_secs(20),
        async || {
            let r = back.get("/testbed/during", None).await.ok()?;
            (r.kvs().first().map(etcd_client::KeyValue::value) == Some(b"cut".as_slice())).then_some(())
        },
    )
    .await;
    caught_up.unwrap_or_else(|e| cluster.fail(e));
    println!(
        "figure: a healed member caught up {:?} after the heal",
        healed.elapsed()
    );
}

#[tokio::test]
async fn a_one_way_partition_drops_one_direction_only() {
    let cluster = Cluster::start(3);
    cluster.partition(1, Cut::Outbound);
    assert!(!udp_reaches(&cluster, 1, 0), "h1 -> h0 must be dropped");
    assert!(udp_reaches(&cluster, 0, 1), "h0 -> h1 must still arrive");
    cluster.partition(1, Cut::Inbound);
    assert!(udp_reaches(&cluster, 1, 0), "h1 -> h0 must arrive again");
    assert!(!udp_reaches(&cluster, 0, 1), "h0 -> h1 must be dropped");
    // The gateway (the test process, the load balancer) is never cut by a partition.
    let own = SocketAddr::from((cluster.host(1).addr(), ETCD_CLIENT_PORT));
    assert!(http_get_at(own, "/version").is_some());
    cluster.heal(1);
    assert!(udp_reaches(&cluster, 0, 1) && udp_reaches(&cluster, 1, 0));
}

#[tokio::test]
async fn nothing_is_left_behind_after_a_cluster_drops() {
    let cluster = Cluster::start(3);
    let netns: Vec<String> = cluster.hosts().iter().map(|h| h.netns().to_owned()).collect();
    let mut c = cluster.client().await;
    c.put("/testbed/x", "y", None).await.unwrap();
    assert!(
        c.get("/testbed/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count()
            == 1
    );
    drop(c);
    drop(cluster);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for ns in &netns {
        assert!(
            !list.lines().any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} survived the drop"
        );
    }
}

/// A killed test leaves its namespaces behind (its processes die with it, its lock goes
/// with it): the next cluster to start deletes them.
#[test]
fn the_leftovers_of_a_killed_test_are_deleted_by_the_next_cluster() {
    // Play the killed test: a namespace named for a slot whose lock nobody holds.
    let slot = (1..=250u8)
        .rev()
        .find(|s| {
            std::fs::create_dir_all("/run/testbed-cluster").unwrap();
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(format!("/run/testbed-cluster/slot-{s}.lock"))
                .unwrap();
            f.try_lock().is_ok()
        })
        .expect("a free slot");
    let leftover = format!("tbc{slot}-h7");
    let made = Command::new("ip").args(["netns", "add", &leftover]).status().unwrap();
    assert!(made.success());
    let cluster = Cluster::start(1);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let survived = list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(leftover.as_str()));
    if survived {
        let _ = Command::new("ip").args(["netns", "del", &leftover]).status();
    }
    assert!(!survived, "{leftover} survived the next cluster's start");
    drop(cluster);
}
