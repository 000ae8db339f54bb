//! Security: etcd with authentication whose tokens expire, etcd with TLS and client
//! certificates, least-privilege roles, and secrets that never leak (issue 17).
//!
//! Every test runs the real binaries (`cargo build --workspace --bins` first) against real
//! etcd servers from the test bed; the load balancer is the CLB simulator and the database a
//! real MariaDB. Token TTLs are 2 s and idle gaps 4 s, so each test takes seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

#[path = "security/support.rs"]
mod support;

#[path = "security/docker_proxy.rs"]
mod docker_proxy;

#[path = "security/hostile.rs"]
mod hostile;

use std::time::Duration;

use etcd_client::{ElectionClient, EventType, Permission};
use support::{IDLE, STOP, TOKEN_TTL, args, run_to_end, secret_file};
use testbed::clb_sim::ClbSim;
use testbed::docker::{self, Spec};
use testbed::eventually;
use testbed::pki::Pki;
use testbed::{Etcd, EtcdCluster, EtcdOptions, MariaDb, unique};

/// An etcd whose idle tokens die after [`TOKEN_TTL`], with auth on (root password `rootpw`).
async fn etcd_with_short_tokens() -> Etcd {
    let mut etcd = Etcd::start_with(&EtcdOptions {
        auth_token_ttl: Some(TOKEN_TTL),
        ..EtcdOptions::default()
    });
    etcd.enable_auth("rootpw").await;
    etcd
}

/// Proves the bed: a client that does not authenticate again is refused after the gap,
/// so the tests below really cross an expired token.
async fn assert_tokens_expire(etcd: &Etcd, user: &str, password: &str, key: &str) {
    let opts = etcd_client::ConnectOptions::new().with_user(user, password);
    let mut stale = etcd_client::Client::connect([etcd.endpoint()], Some(opts))
        .await
        .unwrap();
    stale.get(key, None).await.unwrap();
    tokio::time::sleep(IDLE).await;
    let err = stale.get(key, None).await.expect_err("the token expired");
    assert!(err.to_string().contains("invalid auth token"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Point 2: authentication that keeps working after the token expired.
// ---------------------------------------------------------------------------------------

/// The shared client (`sidekick::etcd`) on every call path the binaries use: each path
/// gets its own client, all idle past the token TTL, then each makes its call.
#[tokio::test]
async fn sidekick_client_authenticates_again_on_every_call_path_after_its_token_expired() {
    let etcd = etcd_with_short_tokens().await;
    etcd.add_user("app", "apppw", &[Permission::read_write("/app/").with_prefix()])
        .await;
    let pw = secret_file("apppw");
    let cli = args(&[
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--etcd-user",
        "app",
        "--etcd-password-file",
        pw.path().to_str().unwrap(),
    ]);
    let config = support::etcd_config(&cli).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(config.connect().await.expect("connect as app"));
    }
    let mut root = etcd.client().await;
    // A lease of `app`, granted before the gap, for the keep-alive path.
    let app_lease = clients[0].lease_grant(30, None).await.unwrap().id();
    tokio::time::sleep(IDLE).await;

    let mut it = clients.into_iter();
    let mut c = it.next().unwrap();
    c.get("/app/a", None).await.expect("get after the gap");
    let mut c = it.next().unwrap();
    c.put("/app/a", "1", None).await.expect("put after the gap");
    let mut c = it.next().unwrap();
    let txn = etcd_client::Txn::new().and_then([etcd_client::TxnOp::put("/app/b", "2", None)]);
    c.txn(txn).await.expect("txn after the gap");
    let mut c = it.next().unwrap();
    let granted = c.lease_grant(5, None).await.expect("lease grant after the gap");
    let mut c = it.next().unwrap();
    let (mut keeper, mut acks) = c.lease_keep_alive(app_lease).await.expect("keep-alive after the gap");
    keeper.keep_alive().await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), acks.message())
        .await
        .expect("keep-alive answered")
        .unwrap()
        .unwrap();
    assert!(ack.ttl() > 0, "the lease is alive: {ack:?}");
    // etcd 3.4 checks the token of a watch when it creates it, on a stream that is already
    // open, and answers a refusal as a cancelled watch, not as an error the client could
    // act on. Every watcher of the binaries reads first (lb-sync loads the prefix, dbhelper
    // gets its key) and watches from that read's revision: that read authenticates again.
    let mut c = it.next().unwrap();
    let mut watch = c.watch("/app/w", None).await.expect("watch after the gap");
    let refused = watch.message().await.unwrap().unwrap();
    assert!(
        refused.canceled() && refused.cancel_reason().contains("invalid auth token"),
        "{refused:?}"
    );
    c.get("/app/w", None).await.expect("the read before a watch");
    let mut watch = c.watch("/app/w", None).await.expect("watch after the read");
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created() && !created.canceled(), "{created:?}");
    root.put("/app/w", "x", None).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("watch event")
        .unwrap()
        .unwrap();
    assert_eq!(event.events().first().map(|e| e.event_type()), Some(EventType::Put));
    let mut c = it.next().unwrap();
    let resp = c
        .campaign("/app/election", "me", granted.id())
        .await
        .expect("election campaign after the gap");
    assert!(resp.leader().is_some());
    let c = it.next().unwrap();
    let mut election: ElectionClient = c.election_client();
    let leader = election
        .leader("/app/election")
        .await
        .expect("election leader after the gap");
    assert_eq!(leader.kv().map(etcd_client::KeyValue::value), Some(&b"me"[..]));

    assert_tokens_expire(&etcd, "app", "apppw", "/app/a").await;
}

/// The scene: an announcer with a user idles past the token TTL, then a container
/// starts. It must be announced.
#[tokio::test]
async fn announcer_announces_a_container_started_after_idling_past_the_token_ttl() {
    let etcd = etcd_with_short_tokens().await;
    etcd.add_user(
        "announcer",
        "annpw",
        &[Permission::read_write("/services/").with_prefix()],
    )
    .await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("sec-ttl");
    let host = unique("host");
    let c = Spec::web(&image).name(&name).create(&d).await;
    let pw = secret_file("annpw");
    let mut a = support::announcer_args(&etcd.endpoint(), &host);
    a.extend(args(&[
        "--etcd-user",
        "announcer",
        "--etcd-password-file",
        pw.path().to_str().unwrap(),
        "container",
        &name,
        "--service",
        "web",
        "--instance",
        "web01",
    ]));
    let ann = support::announcer(&a, &[]);
    // Idle: the container is not running, so nothing is written while the token dies.
    tokio::time::sleep(IDLE).await;
    c.start().await;
    let client = etcd.client().await;
    let port = eventually("web01 is announced", Duration::from_secs(20), async || {
        let r = client.clone().get("/services/web/web01/port", None).await.ok()?;
        r.kvs().first().map(|kv| kv.value_str().unwrap_or_default().to_owned())
    })
    .await
    .ok();
    assert!(port.is_some(), "never announced; log:\n{}", ann.log());
    assert!(
        !ann.log().contains("invalid auth token"),
        "the refusal was handled inside the client; log:\n{}",
        ann.log()
    );
}

/// lb-sync with a user: a record written after an idle gap longer than the token TTL
/// reaches the load balancer, and so does one written after an etcd restart broke the
/// watch (lb-sync then reads the prefix again, which needs a valid token).
#[tokio::test]
async fn lb_sync_sees_a_new_record_after_idling_past_the_token_ttl() {
    let mut etcd = etcd_with_short_tokens().await;
    let root = format!("/{}/services", unique("t"));
    let prefix = format!("{root}/web");
    let election = format!("/{}/lb-sync-leader", unique("e"));
    etcd.add_user(
        "lbsync",
        "lbpw",
        &[
            Permission::read(format!("{prefix}/")).with_prefix(),
            Permission::read_write(format!("{election}/")).with_prefix(),
        ],
    )
    .await;
    let sim = ClbSim::start(support::quick_sim());
    let client = etcd.client().await;
    support::put_record(&client, &root, 1).await;
    let pw = secret_file("lbpw");
    let lb = support::lb_sync(
        &support::lb_sync_args(
            &etcd.endpoint(),
            &prefix,
            &sim,
            &[
                "--etcd-user",
                "lbsync",
                "--etcd-password-file",
                pw.path().to_str().unwrap(),
                "--election-key",
                &election,
                "--election-ttl",
                "3s",
            ],
        ),
        &[("RACKSPACE_API_KEY", "k")],
    );
    support::wait_nodes(&sim, &[1], &lb).await;
    tokio::time::sleep(IDLE).await;
    support::put_record(&client, &root, 2).await;
    support::wait_nodes(&sim, &[1, 2], &lb).await;
    // A restart breaks the watch: lb-sync must read the prefix again, with a token the
    // restarted member never issued or that expired.
    tokio::time::sleep(IDLE).await;
    etcd.restart();
    let client = etcd.client().await;
    support::put_record(&client, &root, 3).await;
    support::wait_nodes(&sim, &[1, 2, 3], &lb).await;
}

/// dbhelper reads the database's address from its etcd key when it appears after an idle
/// gap longer than the token TTL.
#[tokio::test]
async fn dbhelper_reads_its_db_record_written_after_idling_past_the_token_ttl() {
    let etcd = etcd_with_short_tokens().await;
    let key = format!("/{}/services/db/db_private_ip", unique("t"));
    etcd.add_user("dbhelper", "dbpw", &[Permission::read(key.as_str())])
        .await;
    let db = MariaDb::start();
    let pw = secret_file("dbpw");
    let port = db.port().to_string();
    let mut run = support::dbhelper(
        &args(&[
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--etcd-user",
            "dbhelper",
            "--etcd-password-file",
            pw.path().to_str().unwrap(),
            "wait",
            "--etcd-key",
            &key,
            "--port",
            &port,
            "--wait-timeout",
            "60s",
        ]),
        &[("MYSQL_ROOT_PASSWORD", db.root_password())],
    );
    tokio::time::sleep(IDLE).await;
    assert!(run.is_running(), "still waiting for the key; log:\n{}", run.log());
    etcd.client().await.put(key.as_str(), "127.0.0.1", None).await.unwrap();
    let status = run.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "dbhelper wait failed; log:\n{}", run.log());
}

// ---------------------------------------------------------------------------------------
// Point 1: TLS with client certificates.
// ---------------------------------------------------------------------------------------

fn tls_options(pki: &Pki) -> EtcdOptions {
    EtcdOptions {
        tls: Some(pki.into()),
        ..EtcdOptions::default()
    }
}

/// The announcer over TLS with its client certificate, against the three-member cluster.
#[tokio::test]
async fn announcer_works_with_client_certificates_on_a_tls_cluster() {
    let pki = Pki::generate();
    let cluster = EtcdCluster::start_with(3, &tls_options(&pki));
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("sec-tls");
    let host = unique("host");
    let c = Spec::web(&image).name(&name).create(&d).await;
    c.start().await;
    let mut a = support::announcer_args(&cluster.endpoints_arg(), &host);
    a.extend(pki.client_args("--etcd-key"));
    a.extend(args(&["container", &name, "--service", "web", "--instance", "web07"]));
    let ann = support::announcer(&a, &[]);
    let client = cluster.client().await;
    let found = eventually("web07 is announced over TLS", Duration::from_secs(20), async || {
        let r = client.clone().get("/services/web/web07/port", None).await.ok()?;
        r.kvs().first().map(|_| ())
    })
    .await
    .ok();
    assert!(found.is_some(), "never announced over TLS; log:\n{}", ann.log());
}

/// lb-sync over TLS with its client certificate.
#[tokio::test]
async fn lb_sync_works_with_client_certificates() {
    let pki = Pki::generate();
    let etcd = Etcd::start_with(&tls_options(&pki));
    let root = format!("/{}/services", unique("t"));
    let prefix = format!("{root}/web");
    let sim = ClbSim::start(support::quick_sim());
    let client = etcd.client().await;
    support::put_record(&client, &root, 3).await;
    let mut extra: Vec<String> = pki.client_args("--etcd-key");
    extra.extend(args(&["--election-key", "/lb-sync-tls-leader"]));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let lb = support::lb_sync(
        &support::lb_sync_args(&etcd.endpoint(), &prefix, &sim, &extra),
        &[("RACKSPACE_API_KEY", "k")],
    );
    support::wait_nodes(&sim, &[3], &lb).await;
}

/// dbhelper over TLS: its client key flag is `--etcd-client-key`.
#[tokio::test]
async fn dbhelper_works_with_client_certificates() {
    let pki = Pki::generate();
    let etcd = Etcd::start_with(&tls_options(&pki));
    let key = format!("/{}/db", unique("t"));
    etcd.client().await.put(key.as_str(), "127.0.0.1", None).await.unwrap();
    let db = MariaDb::start();
    let port = db.port().to_string();
    let mut a = args(&["--etcd-endpoints", &etcd.endpoint()]);
    a.extend(pki.client_args("--etcd-client-key"));
    a.extend(args(&[
        "wait",
        "--etcd-key",
        &key,
        "--port",
        &port,
        "--wait-timeout",
        "30s",
    ]));
    let mut run = support::dbhelper(&a, &[("MYSQL_ROOT_PASSWORD", db.root_password())]);
    let status = run.wait(Duration::from_secs(40)).await;
    assert!(status.success(), "dbhelper over TLS failed; log:\n{}", run.log());
}

/// A wrong CA, an expired client certificate, a certificate from an unknown CA, and a
/// plain-HTTP endpoint against a TLS server: the announcer (which needs etcd to start)
/// and lb-sync exit at start with one line naming the file or the scheme to fix (no retry
/// can fix them); dbhelper (a waiter) retries with backoff, quietly, and its one error line
/// at the deadline names the same.
#[tokio::test]
async fn tls_mistakes_fail_with_one_clear_line_and_no_retry_storm() {
    let pki = Pki::generate();
    let etcd = Etcd::start_with(&tls_options(&pki));
    let https = etcd.endpoint();
    let plain = https.replacen("https://", "http://", 1);
    let path = |p: &std::path::Path| p.display().to_string();
    let flags = |ca: &std::path::Path, files: &testbed::pki::CertFiles| {
        vec![
            "--etcd-endpoints".to_owned(),
            https.clone(),
            "--etcd-cacert".to_owned(),
            path(ca),
            "--etcd-cert".to_owned(),
            path(&files.cert),
            "--etcd-key".to_owned(),
            path(&files.key),
        ]
    };
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "wrong CA",
            flags(&pki.other_ca, &pki.client),
            format!("--etcd-cacert {:?}", path(&pki.other_ca)),
        ),
        (
            "expired client certificate",
            flags(&pki.ca, &pki.expired_client),
            format!("{:?}", path(&pki.expired_client.cert)),
        ),
        (
            "client certificate of an unknown CA",
            flags(&pki.ca, &pki.unknown_client),
            format!("{:?}", path(&pki.unknown_client.cert)),
        ),
        (
            "plain HTTP against TLS",
            args(&["--etcd-endpoints", &plain]),
            "use an https:// endpoint".to_owned(),
        ),
    ];
    for (what, etcd_args, needle) in cases {
        // The announcer: exits at once, one line.
        let mut a = support::announcer_args_without_endpoints("sec-tls-host");
        a.extend(etcd_args.clone());
        a.extend(args(&[
            "container",
            "no-such-container",
            "--service",
            "web",
            "--instance",
            "web01",
        ]));
        let (status, stdout, stderr) = run_to_end(support::Binary::Announcer, &a, &[], Duration::from_secs(30));
        assert!(!status.success(), "{what}: the announcer must not start:\n{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: one line, got:\n{stderr}\nstdout:\n{stdout}");
        assert!(
            lines[0].contains(&needle),
            "{what}: the line names {needle}: {}",
            lines[0]
        );

        // lb-sync: nothing a retry could fix, so it stops at start with the same line.
        let sim = ClbSim::start(support::quick_sim());
        let mut l = etcd_args.clone();
        l.extend(support::lb_sync_args("", "/services/web", &sim, &[]));
        let at = l.iter().rposition(|x| x == "--etcd-endpoints").unwrap();
        l.drain(at..at + 2);
        let (status, _, stderr) = run_to_end(
            support::Binary::LbSync,
            &l,
            &[("RACKSPACE_API_KEY", "k")],
            Duration::from_secs(30),
        );
        assert!(!status.success(), "{what}: lb-sync must not start:\n{stderr}");
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
        assert!(
            last.contains(&needle),
            "{what}: lb-sync's line names {needle}: {stderr}"
        );
        assert!(
            stderr.lines().count() <= 6,
            "{what}: no retry storm in lb-sync's output:\n{stderr}"
        );

        // dbhelper: waits up to its deadline, then one line naming the cause.
        let mut d: Vec<String> = etcd_args
            .iter()
            .map(|f| {
                if f == "--etcd-key" {
                    "--etcd-client-key".to_owned()
                } else {
                    f.clone()
                }
            })
            .collect();
        d.extend(args(&["wait", "--etcd-key", "/db", "--wait-timeout", "3s"]));
        let (status, _, stderr) = run_to_end(
            support::Binary::Dbhelper,
            &d,
            &[("MYSQL_ROOT_PASSWORD", "x")],
            Duration::from_secs(30),
        );
        assert!(!status.success(), "{what}: dbhelper must fail:\n{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() <= 3,
            "{what}: no retry storm in dbhelper's output:\n{stderr}"
        );
        let last = lines.last().copied().unwrap_or_default();
        assert!(last.contains(&needle), "{what}: dbhelper's line names {needle}: {last}");
    }
}

// ---------------------------------------------------------------------------------------
// Point 3: least-privilege roles, and a wrong password.
// ---------------------------------------------------------------------------------------

/// The announcer's role may write only its prefix: with a role limited to
/// `/services/web/`, a `web` container is announced and a `db` container is refused, with
/// nothing written outside the prefix and the refusal in the log.
#[tokio::test]
async fn announcer_with_its_role_writes_its_prefix_and_nothing_outside_it() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("rootpw").await;
    etcd.add_user(
        "announcer",
        "annpw",
        &[Permission::read_write("/services/web/").with_prefix()],
    )
    .await;
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let pw = secret_file("annpw");
    let mut daemons = Vec::new();
    let mut containers = Vec::new();
    for (service, instance) in [("web", "web01"), ("db", "db01")] {
        let name = unique(&format!("sec-role-{service}"));
        let c = Spec::web(&image).name(&name).create(&d).await;
        c.start().await;
        containers.push(c);
        let mut a = support::announcer_args(&etcd.endpoint(), &unique("host"));
        a.extend(args(&[
            "--etcd-user",
            "announcer",
            "--etcd-password-file",
            pw.path().to_str().unwrap(),
            "container",
            &name,
            "--service",
            service,
            "--instance",
            instance,
        ]));
        daemons.push(support::announcer(&a, &[]));
    }
    let client = etcd.client().await;
    let found = eventually(
        "web01 is announced within its role",
        Duration::from_secs(20),
        async || {
            let r = client.clone().get("/services/web/web01/port", None).await.ok()?;
            r.kvs().first().map(|_| ())
        },
    )
    .await
    .ok();
    assert!(
        found.is_some(),
        "web01 announced within its role; log:\n{}",
        daemons[0].log()
    );
    let refused = eventually(
        "the write outside the role is refused",
        Duration::from_secs(20),
        async || daemons[1].log().contains("permission denied").then_some(()),
    )
    .await
    .ok();
    assert!(
        refused.is_some(),
        "the write outside the role is refused; log:\n{}",
        daemons[1].log()
    );
    let outside = client
        .clone()
        .get("/services/db/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(
        outside.kvs().is_empty(),
        "nothing outside the role: {:?}",
        outside.kvs()
    );
}

/// A wrong etcd password is one line naming the user, in each binary: the announcer and
/// lb-sync exit at start; dbhelper, which waits for its servers, ends at its deadline
/// with the same cause.
#[tokio::test]
async fn a_wrong_password_is_one_clear_line_in_every_binary() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("rootpw").await;
    etcd.add_user("svc", "right-password", &[Permission::read("/services/").with_prefix()])
        .await;
    let pw = secret_file("wrong-password");
    let user = args(&[
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--etcd-user",
        "svc",
        "--etcd-password-file",
        pw.path().to_str().unwrap(),
    ]);
    let sim = ClbSim::start(support::quick_sim());
    let mut ann = support::announcer_args_without_endpoints("sec-pw-host");
    ann.extend(user.clone());
    ann.extend(args(&[
        "container",
        "no-such-container",
        "--service",
        "web",
        "--instance",
        "web01",
    ]));
    let mut lb = user.clone();
    lb.extend(support::lb_sync_args(&etcd.endpoint(), "/services/web", &sim, &[]));
    let mut db = user.clone();
    // A long deadline: a refused login must end the wait at once, not at the deadline.
    db.extend(args(&[
        "wait",
        "--etcd-key",
        "/services/db/x",
        "--wait-timeout",
        "120s",
    ]));
    let runs = [
        (support::Binary::Announcer, ann, vec![]),
        (support::Binary::LbSync, lb, vec![("RACKSPACE_API_KEY", "k")]),
        (support::Binary::Dbhelper, db, vec![("MYSQL_ROOT_PASSWORD", "x")]),
    ];
    for (bin, a, env) in runs {
        let started = std::time::Instant::now();
        let (status, stdout, stderr) = run_to_end(bin, &a, &env, Duration::from_secs(30));
        assert!(!status.success(), "{bin:?} must fail:\n{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{bin:?}: a refused login is final, no waiting it out ({:?}):\n{stderr}",
            started.elapsed()
        );
        let errors: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|l| l.contains("refused the login"))
            .collect();
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
        assert!(
            last.contains("refused the login of user \"svc\"") && last.contains("authentication failed"),
            "{bin:?}: one clear last line:\n{stderr}"
        );
        assert!(errors.len() <= 2, "{bin:?}: no retry storm:\n{stderr}");
        assert!(
            !stderr.contains("wrong-password"),
            "{bin:?}: the password is not shown:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Point 4: secrets never in output (trace level), error messages, cmdline, --validate.
// ---------------------------------------------------------------------------------------

/// A long secret no log line could hold by chance.
fn long_secret(what: &str) -> String {
    format!("{what}-{}-{}-{}", unique("s"), unique("e"), unique("cret"))
}

/// The first base64 line of a PEM private key: a piece of it in any output is a leak.
fn key_material(path: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    pem.lines().nth(1).unwrap().to_owned()
}

fn assert_hidden(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        // Half of the secret is enough to count as a leak.
        let half = &s[..s.len() / 2];
        assert!(!text.contains(half), "{what} shows a secret ({half}...):\n{text}");
    }
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

/// The announcer at trace level through its life (start, announce, etcd errors while etcd
/// is down, SIGTERM) with the etcd password from ETCD_PASSWORD and a TLS client key: none
/// of them in its output, its command line or `--validate`.
#[tokio::test]
async fn announcer_never_shows_its_secrets() {
    let pki = Pki::generate();
    let mut etcd = Etcd::start_with(&tls_options(&pki));
    let password = long_secret("etcd-pw");
    etcd.enable_auth("rootpw").await;
    etcd.add_user(
        "announcer",
        &password,
        &[Permission::read_write("/services/").with_prefix()],
    )
    .await;
    let key = key_material(&pki.client.key);
    let secrets = [password.as_str(), key.as_str()];
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let name = unique("sec-secret");
    let c = Spec::web(&image).name(&name).create(&d).await;
    c.start().await;
    let mut a = support::announcer_args(&etcd.endpoint(), &unique("host"));
    a.extend(pki.client_args("--etcd-key"));
    a.extend(args(&[
        "--etcd-user",
        "announcer",
        "container",
        &name,
        "--service",
        "web",
        "--instance",
        "web09",
    ]));
    let env = [("ETCD_PASSWORD", password.as_str()), ("RUST_LOG", "trace")];

    let mut validate = a.clone();
    validate.insert(0, "--validate".into());
    let (status, out, err) = run_to_end(support::Binary::Announcer, &validate, &env, Duration::from_secs(30));
    assert!(status.success(), "--validate:\n{out}{err}");
    assert_hidden("--validate", &format!("{out}{err}"), &secrets);

    let mut ann = support::announcer(&a, &env);
    let client = etcd.client().await;
    let found = eventually("web09 is announced", Duration::from_secs(20), async || {
        let r = client.clone().get("/services/web/web09/port", None).await.ok()?;
        r.kvs().first().map(|_| ())
    })
    .await
    .ok();
    assert!(found.is_some(), "announced; log:\n{}", ann.log());
    assert_hidden("/proc/PID/cmdline", &cmdline(ann.pid()), &secrets);
    // Errors: etcd goes away for a while, then comes back.
    etcd.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    ann.stop(libc::SIGTERM, STOP).await;
    let log = ann.log();
    assert!(log.contains("TRACE"), "ran at trace level:\n{log}");
    assert_hidden("the announcer's output", &log, &secrets);
    // A refused login: the error names the user, not the password.
    let wrong = long_secret("wrong-pw");
    let (status, out, err) = run_to_end(
        support::Binary::Announcer,
        &a,
        &[("ETCD_PASSWORD", wrong.as_str()), ("RUST_LOG", "trace")],
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert_hidden(
        "the announcer's error",
        &format!("{out}{err}"),
        &[&wrong, &password, &key],
    );
}

/// lb-sync at trace level: the etcd password (file), the API key (file), through start,
/// work, a refused API key, and SIGTERM.
#[tokio::test]
async fn lb_sync_never_shows_its_secrets() {
    let mut etcd = Etcd::start();
    let password = long_secret("etcd-pw");
    let api_key = long_secret("api-key");
    etcd.enable_auth("rootpw").await;
    let root = format!("/{}/services", unique("t"));
    let prefix = format!("{root}/web");
    etcd.add_user(
        "lbsync",
        &password,
        &[Permission::read(format!("{prefix}/")).with_prefix()],
    )
    .await;
    let sim = ClbSim::start(testbed::clb_sim::SimConfig {
        api_key: api_key.clone(),
        ..support::quick_sim()
    });
    support::put_record(&etcd.client().await, &root, 4).await;
    let pw = secret_file(&password);
    let key = secret_file(&api_key);
    let flags = |key_file: &std::path::Path| {
        let mut a = args(&[
            "--etcd-user",
            "lbsync",
            "--etcd-password-file",
            pw.path().to_str().unwrap(),
            "--api-key-file",
            key_file.to_str().unwrap(),
        ]);
        a.extend(support::lb_sync_args(&etcd.endpoint(), &prefix, &sim, &[]));
        a
    };
    let a = flags(key.path());
    let env = [("RUST_LOG", "trace")];
    let secrets = [password.as_str(), api_key.as_str()];

    let mut validate = a.clone();
    validate.insert(0, "--validate".into());
    let (status, out, err) = run_to_end(support::Binary::LbSync, &validate, &env, Duration::from_secs(30));
    assert!(status.success(), "--validate:\n{out}{err}");
    assert_hidden("--validate", &format!("{out}{err}"), &secrets);

    let mut lb = support::lb_sync(&a, &env);
    support::wait_nodes(&sim, &[4], &lb).await;
    assert_hidden("/proc/PID/cmdline", &cmdline(lb.pid()), &secrets);
    lb.stop(libc::SIGTERM, STOP).await;
    let log = lb.log();
    assert!(log.contains("TRACE"), "ran at trace level:\n{log}");
    assert_hidden("lb-sync's output", &log, &secrets);

    // A key the API refuses: the error says so without showing either key.
    let wrong = long_secret("wrong-key");
    let wrong_file = secret_file(&wrong);
    let (status, out, err) = run_to_end(
        support::Binary::LbSync,
        &flags(wrong_file.path()),
        &env,
        Duration::from_secs(60),
    );
    assert!(!status.success(), "a refused API key stops lb-sync:\n{err}");
    assert_hidden(
        "lb-sync's error",
        &format!("{out}{err}"),
        &[&wrong, &password, &api_key],
    );
}

/// dbhelper at trace level: the etcd password, the root password and the app password,
/// through a seed of a small dump, and a refused root password.
#[tokio::test]
async fn dbhelper_never_shows_its_secrets() {
    let mut etcd = Etcd::start();
    let etcd_pw = long_secret("etcd-pw");
    let app_pw = long_secret("app-pw");
    etcd.enable_auth("rootpw").await;
    let key = format!("/{}/db", unique("t"));
    etcd.add_user("dbhelper", &etcd_pw, &[Permission::read(key.as_str())])
        .await;
    etcd.client().await.put(key.as_str(), "127.0.0.1", None).await.unwrap();
    let root_pw = long_secret("root-pw");
    let db = MariaDb::start_with(&root_pw, "127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("small.sql");
    std::fs::write(
        &dump,
        "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20));\nINSERT INTO t VALUES (1,'a'),(2,'b');\n",
    )
    .unwrap();
    let pw = secret_file(&etcd_pw);
    let port = db.port().to_string();
    let a = args(&[
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--etcd-user",
        "dbhelper",
        "--etcd-password-file",
        pw.path().to_str().unwrap(),
        "seed",
        "--etcd-key",
        &key,
        "--port",
        &port,
        "--dump",
        dump.to_str().unwrap(),
        "--database",
        "small",
        "--wait-timeout",
        "30s",
    ]);
    let env = [
        ("RUST_LOG", "trace"),
        ("MYSQL_ROOT_PASSWORD", root_pw.as_str()),
        ("APP_PW", app_pw.as_str()),
    ];
    let secrets = [etcd_pw.as_str(), root_pw.as_str(), app_pw.as_str()];

    let mut validate = a.clone();
    validate.insert(0, "--validate".into());
    let (status, out, err) = run_to_end(support::Binary::Dbhelper, &validate, &env, Duration::from_secs(30));
    assert!(status.success(), "--validate:\n{out}{err}");
    assert_hidden("--validate", &format!("{out}{err}"), &secrets);

    let mut run = support::dbhelper(&a, &env);
    let cmd = cmdline(run.pid());
    let status = run.wait(Duration::from_secs(60)).await;
    let log = run.log();
    assert!(status.success(), "seeded:\n{log}");
    assert!(log.contains("TRACE"), "ran at trace level:\n{log}");
    assert_hidden("/proc/PID/cmdline", &cmd, &secrets);
    assert_hidden("dbhelper's output", &log, &secrets);

    // A refused root password.
    let wrong = long_secret("wrong-root");
    let env = [
        ("RUST_LOG", "trace"),
        ("MYSQL_ROOT_PASSWORD", wrong.as_str()),
        ("APP_PW", app_pw.as_str()),
    ];
    let mut b = a.clone();
    let at = b.iter().position(|x| x == "30s").unwrap();
    b[at] = "3s".into();
    let (status, out, err) = run_to_end(support::Binary::Dbhelper, &b, &env, Duration::from_secs(60));
    assert!(!status.success(), "a refused root password fails:\n{err}");
    assert_hidden(
        "dbhelper's error",
        &format!("{out}{err}"),
        &[&wrong, &etcd_pw, &root_pw, &app_pw],
    );
}
