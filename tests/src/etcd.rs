//! Throwaway etcd servers: one member, or a three-member cluster whose members a test can
//! kill and restart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{self, free_port, http_get, require_program, wait_for};

const INSTALL: &str = "sudo apt-get install -y etcd-server etcd-client";

/// One member's fixed facts, kept so it can be restarted on the same ports and data.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self, initial_cluster: &str, state: &str) {
        // The token must be the same for every member of one cluster, and differ between
        // clusters so that stray peers of another test cannot join.
        let token = format!("testbed-{:x}", fnv(initial_cluster));
        let etcd = require_program("etcd", INSTALL);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log file");
        let mut cmd = Command::new(etcd);
        cmd.args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::from(log.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(log));
        self.child = Some(process::spawn(cmd).expect("spawn etcd"));
    }

    fn healthy(&self) -> bool {
        http_get(self.client_port, "/health").is_some_and(|r| r.contains("\"health\":\"true\""))
    }

    fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::kill(&mut c);
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Starts `n` members on fresh ports; retries with other ports when one was taken.
fn start_members(n: usize, dir: &tempfile::TempDir) -> Vec<Member> {
    let mut last_log = String::new();
    for attempt in 0..5 {
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("a{attempt}-m{i}")),
                log: dir.path().join(format!("a{attempt}-m{i}.log")),
                child: None,
            })
            .collect();
        let initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.spawn(&initial, "new");
        }
        let ok = wait_for(Duration::from_secs(20), || {
            if members.iter_mut().any(Member::exited) {
                return Some(false);
            }
            members.iter().all(Member::healthy).then_some(true)
        });
        if ok == Some(true) {
            return members;
        }
        last_log = members
            .iter()
            .map(|m| format!("--- {}:\n{}", m.name, process::tail(&m.log, 15)))
            .collect();
        for m in &mut members {
            m.kill();
        }
        if !last_log.contains("address already in use") {
            break;
        }
    }
    panic!("testbed: etcd did not become healthy; its log:\n{last_log}");
}

/// A single throwaway etcd member on free loopback ports.
#[derive(Debug)]
pub struct Etcd {
    member: Member,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts one member and waits until it is healthy (well under a second here).
    #[must_use]
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("testbed-etcd")
            .tempdir()
            .expect("temp dir");
        let mut members = start_members(1, &dir);
        Etcd {
            member: members.remove(0),
            _dir: dir,
        }
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.member.client_url()
    }

    /// A connected etcd-client.
    pub async fn client(&self) -> etcd_client::Client {
        connect(&[self.endpoint()]).await
    }

    /// Stops the member hard (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Starts the member again on the same port with the same data.
    pub fn restart(&mut self) {
        self.member.kill();
        let initial = format!("{}={}", self.member.name, self.member.peer_url());
        self.member.spawn(&initial, "existing");
        let ok = wait_for(Duration::from_secs(20), || self.member.healthy().then_some(()));
        assert!(
            ok.is_some(),
            "testbed: restarted etcd not healthy:\n{}",
            process::tail(&self.member.log, 20)
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.member.kill();
    }
}

/// A three-member (or n-member) etcd cluster on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one reports a leader.
    #[must_use]
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("testbed-etcd-cluster")
            .tempdir()
            .expect("temp dir");
        let members = start_members(n, &dir);
        let initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
        EtcdCluster {
            members,
            initial: initial.join(","),
            _dir: dir,
        }
    }

    /// Every member's client URL.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// `--etcd-endpoints` form: the client URLs joined by commas.
    #[must_use]
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// The client URL of member `i`.
    #[must_use]
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// A client over every member.
    pub async fn client(&self) -> etcd_client::Client {
        connect(&self.endpoints()).await
    }

    /// Kills member `i` (SIGKILL). The others keep quorum.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Whether member `i` is running and healthy.
    #[must_use]
    pub fn is_healthy(&self, i: usize) -> bool {
        self.members[i].healthy()
    }

    /// Restarts member `i` with its data and waits until it is healthy again.
    pub fn restart(&mut self, i: usize) {
        let initial = self.initial.clone();
        let m = &mut self.members[i];
        m.kill();
        m.spawn(&initial, "existing");
        let ok = wait_for(Duration::from_secs(30), || m.healthy().then_some(()));
        assert!(
            ok.is_some(),
            "testbed: restarted member {i} not healthy:\n{}",
            process::tail(&m.log, 20)
        );
    }

    /// Index of the current leader, asked of the live members.
    pub async fn leader(&self) -> Option<usize> {
        for m in &self.members {
            if m.child.is_none() {
                continue;
            }
            let Ok(mut c) = etcd_client::Client::connect([m.client_url()], None).await else {
                continue;
            };
            let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await else {
                continue;
            };
            let leader = status.leader();
            let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(2), c.member_list()).await else {
                continue;
            };
            let name = list
                .members()
                .iter()
                .find(|x| x.id() == leader)
                .map(|x| x.name().to_owned());
            return name.and_then(|n| self.members.iter().position(|x| x.name == n));
        }
        None
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

async fn connect(endpoints: &[String]) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    etcd_client::Client::connect(endpoints, Some(opts))
        .await
        .expect("connect to testbed etcd")
}
