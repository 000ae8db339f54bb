//! Throwaway etcd servers: one member, or a three-member cluster whose members a test can
//! kill and restart; either one optionally serving clients over TLS with client-certificate
//! authentication, and with authentication (users, roles) turned on by the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually::eventually_blocking;
use crate::pki::{CertFiles, Pki};
use crate::process::{self, http_get, require_program};

const INSTALL: &str = "sudo apt-get install -y etcd-server etcd-client";

/// The files of a TLS etcd: what the members serve with and what the test bed's own client
/// presents.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA that signed the server and the accepted client certificates.
    pub ca: PathBuf,
    /// The members' certificate and key.
    pub server: CertFiles,
    /// The certificate the test bed's own client presents.
    pub client: CertFiles,
}

impl From<&Pki> for EtcdTls {
    fn from(pki: &Pki) -> EtcdTls {
        EtcdTls {
            ca: pki.ca.clone(),
            server: pki.server.clone(),
            client: pki.client.clone(),
        }
    }
}

/// How to start members beyond the defaults (plain HTTP, no auth token TTL).
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Serve clients on `https://` with `--client-cert-auth`: a client must present a
    /// certificate signed by the CA. Peers stay on plain HTTP (loopback only).
    pub tls: Option<EtcdTls>,
    /// `--auth-token-ttl` in seconds: how long an idle simple token lives (etcd: 300).
    pub auth_token_ttl: Option<u32>,
    /// `--max-request-bytes`: the largest request (so the largest value) etcd accepts
    /// (etcd: 1.5 MiB). The hostile-value tests write 10 MB values.
    pub max_request_bytes: Option<u32>,
}

/// Credentials the test bed's own client logs in with once auth is on.
#[derive(Clone)]
struct Login {
    user: String,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// One member's fixed facts, kept so it can be restarted on the same ports and data.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// A plain-HTTP port serving `/health` and `/metrics` (`--listen-metrics-urls`), so
    /// health can be polled without TLS.
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    options: EtcdOptions,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
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
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", self.metrics_port),
            ]);
        if let Some(tls) = &self.options.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server.cert)
                .arg("--key-file")
                .arg(&tls.server.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        if let Some(ttl) = self.options.auth_token_ttl {
            cmd.args(["--auth-token-ttl", &ttl.to_string()]);
        }
        if let Some(n) = self.options.max_request_bytes {
            cmd.args(["--max-request-bytes", &n.to_string()]);
        }
        cmd.stdout(Stdio::from(log.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(log));
        self.child = Some(process::spawn(cmd).expect("spawn etcd"));
    }

    fn healthy(&self) -> bool {
        http_get(self.metrics_port, "/health").is_some_and(|r| r.contains("\"health\":\"true\""))
    }

    fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            process::signal(c.id(), sig);
        }
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
fn start_members(n: usize, dir: &tempfile::TempDir, options: &EtcdOptions) -> Vec<Member> {
    let mut last_log = String::new();
    for attempt in 0..5 {
        let ports = process::free_ports(3 * n);
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
                data_dir: dir.path().join(format!("a{attempt}-m{i}")),
                log: dir.path().join(format!("a{attempt}-m{i}.log")),
                options: options.clone(),
                child: None,
            })
            .collect();
        let initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.spawn(&initial, "new");
        }
        let ok = eventually_blocking("every etcd member is healthy", Duration::from_secs(20), || {
            if members.iter_mut().any(Member::exited) {
                return Some(false);
            }
            members.iter().all(Member::healthy).then_some(true)
        })
        .ok();
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
    login: Option<Login>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts one member and waits until it is healthy (well under a second here).
    #[must_use]
    pub fn start() -> Etcd {
        Etcd::start_with(&EtcdOptions::default())
    }

    /// Starts one member with `options` (TLS, auth token TTL).
    #[must_use]
    pub fn start_with(options: &EtcdOptions) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("testbed-etcd")
            .tempdir()
            .expect("temp dir");
        let mut members = start_members(1, &dir, options);
        Etcd {
            member: members.remove(0),
            login: None,
            _dir: dir,
        }
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.member.client_url()
    }

    /// A connected etcd-client (with the test bed's client certificate under TLS, as root
    /// once [`Etcd::enable_auth`] ran).
    pub async fn client(&self) -> etcd_client::Client {
        connect(&[self.endpoint()], &self.member.options, self.login.as_ref()).await
    }

    /// Turns authentication on: user `root` with `root_password` and the `root` role, then
    /// `auth enable`. From then on [`Etcd::client`] logs in as root.
    pub async fn enable_auth(&mut self, root_password: &str) {
        let mut c = self.client().await;
        enable_auth(&mut c, root_password).await;
        self.login = Some(Login {
            user: "root".into(),
            password: root_password.into(),
        });
    }

    /// Adds `user` with `password` and a role of the same name holding `permissions`
    /// (needs [`Etcd::enable_auth`] first, or works before it as well).
    pub async fn add_user(&self, user: &str, password: &str, permissions: &[etcd_client::Permission]) {
        add_user(&mut self.client().await, user, password, permissions).await;
    }

    /// Stops the member hard (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Freezes the member (SIGSTOP): connections stay open and requests hang unanswered,
    /// as on a member that stopped responding. [`Etcd::resume`] thaws it; a kill or the
    /// drop works on a frozen member too.
    pub fn pause(&self) {
        if let Some(c) = &self.member.child {
            process::freeze(c.id());
        }
    }

    /// Thaws a member frozen by [`Etcd::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.member.signal(libc::SIGCONT);
    }

    /// Starts the member again on the same port with the same data.
    pub fn restart(&mut self) {
        self.member.kill();
        let initial = format!("{}={}", self.member.name, self.member.peer_url());
        self.member.spawn(&initial, "existing");
        let ok = eventually_blocking("etcd is healthy", Duration::from_secs(20), || {
            self.member.healthy().then_some(())
        })
        .ok();
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
    options: EtcdOptions,
    login: Option<Login>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one reports a leader.
    #[must_use]
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, &EtcdOptions::default())
    }

    /// Starts `n` members with `options` (TLS, auth token TTL).
    #[must_use]
    pub fn start_with(n: usize, options: &EtcdOptions) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("testbed-etcd-cluster")
            .tempdir()
            .expect("temp dir");
        let members = start_members(n, &dir, options);
        let initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
        EtcdCluster {
            members,
            initial: initial.join(","),
            options: options.clone(),
            login: None,
            _dir: dir,
        }
    }

    /// As [`Etcd::enable_auth`], for the whole cluster.
    pub async fn enable_auth(&mut self, root_password: &str) {
        let mut c = self.client().await;
        enable_auth(&mut c, root_password).await;
        self.login = Some(Login {
            user: "root".into(),
            password: root_password.into(),
        });
    }

    /// As [`Etcd::add_user`].
    pub async fn add_user(&self, user: &str, password: &str, permissions: &[etcd_client::Permission]) {
        add_user(&mut self.client().await, user, password, permissions).await;
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
        connect(&self.endpoints(), &self.options, self.login.as_ref()).await
    }

    /// Kills member `i` (SIGKILL). The others keep quorum.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// The process id of member `i` (`None` while it is stopped): its CPU time and memory
    /// are read from `/proc` (the benchmark harness).
    #[must_use]
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The plain-HTTP port of member `i`'s `/metrics` and `/health`.
    #[must_use]
    pub fn metrics_port(&self, i: usize) -> u16 {
        self.members[i].metrics_port
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
        let ok = eventually_blocking("the member is healthy", Duration::from_secs(30), || {
            m.healthy().then_some(())
        })
        .ok();
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
            let Ok(mut c) = etcd_client::Client::connect(
                [m.client_url()],
                Some(connect_options(&self.options, self.login.as_ref())),
            )
            .await
            else {
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

fn connect_options(options: &EtcdOptions, login: Option<&Login>) -> etcd_client::ConnectOptions {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        // Tests idle longer than a short --auth-token-ttl too.
        .with_auto_token_refresh(true);
    if let Some(tls) = &options.tls {
        let read = |p: &std::path::Path| std::fs::read(p).expect("read PEM");
        opts = opts.with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
                .identity(etcd_client::Identity::from_pem(
                    read(&tls.client.cert),
                    read(&tls.client.key),
                )),
        );
    }
    if let Some(l) = login {
        opts = opts.with_user(l.user.clone(), l.password.clone());
    }
    opts
}

async fn connect(endpoints: &[String], options: &EtcdOptions, login: Option<&Login>) -> etcd_client::Client {
    etcd_client::Client::connect(endpoints, Some(connect_options(options, login)))
        .await
        .expect("connect to testbed etcd")
}

async fn enable_auth(c: &mut etcd_client::Client, root_password: &str) {
    c.user_add("root", root_password, None)
        .await
        .expect("etcd: user add root");
    c.role_add("root").await.expect("etcd: role add root");
    c.user_grant_role("root", "root").await.expect("etcd: grant root");
    c.auth_enable().await.expect("etcd: auth enable");
}

async fn add_user(c: &mut etcd_client::Client, user: &str, password: &str, permissions: &[etcd_client::Permission]) {
    c.user_add(user, password, None)
        .await
        .unwrap_or_else(|e| panic!("etcd: user add {user}: {e}"));
    c.role_add(user)
        .await
        .unwrap_or_else(|e| panic!("etcd: role add {user}: {e}"));
    for p in permissions {
        c.role_grant_permission(user, p.clone())
            .await
            .unwrap_or_else(|e| panic!("etcd: grant {p:?} to {user}: {e}"));
    }
    c.user_grant_role(user, user)
        .await
        .unwrap_or_else(|e| panic!("etcd: grant role {user}: {e}"));
}
