//! The web app of `images/web`, for real: its PHP pages under Debian's `php -S`, and the
//! `FROM scratch` nginx + php-fpm image built by `images/web/build.sh` and run by the real
//! Docker engine. Both find the world database through a real etcd (the v3 JSON gateway)
//! and read it from a real MariaDB seeded with the world dump.
//!
//! The container runs with host networking: the test bed's etcd and MariaDB listen on
//! 127.0.0.1 only, and host networking lets the container reach them there, on the same
//! random ports, just as the pages reach them under `php -S`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testbed::{Etcd, MariaDb};

/// The key the db announcer keeps alive and the pages read.
const DB_KEY: &str = "/services/db/db_private_ip";
/// The application user's password in these tests.
const APP_PW: &str = "app-secret";
/// Rows of `City` in the world dump.
const CITIES: usize = 4079;
/// City 45, whose name has two non-ASCII letters stored latin1 in the dump.
const BEJAIA_ROW: &str = "<tr><td>45</td><td>Béjaïa</td><td>DZA</td>";
/// How long any one page may take before the test calls it a hang (the pages' own
/// timeouts are 2 s per etcd member or database step).
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

fn www() -> PathBuf {
    testbed::repo_root().join("images/web/www")
}

// ---------------------------------------------------------------------------------------
// The database and etcd.

/// A MariaDB holding the world database, with the application user `app` allowed in it,
/// seeded by the project's own `dbhelper seed` (built by `cargo build --workspace --bins`).
fn seeded_world() -> MariaDb {
    let db = MariaDb::start();
    let out = Command::new(testbed::bin("dbhelper"))
        .args([
            "seed",
            "--host",
            "127.0.0.1",
            "--port",
            &db.port().to_string(),
            "--dump",
        ])
        .arg(testbed::world_dump())
        .env("MYSQL_ROOT_PASSWORD", db.root_password())
        .env("APP_PW", APP_PW)
        .output()
        .expect("run dbhelper seed");
    assert!(
        out.status.success(),
        "dbhelper seed failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let count = db.cli(&["-N", "-e", "SELECT COUNT(*) FROM world.City"]);
    assert_eq!(count.trim(), CITIES.to_string(), "the world dump did not load");
    db
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Writes `value` at `key`, as the db announcer does.
fn etcd_put(rt: &tokio::runtime::Runtime, etcd: &Etcd, key: &str, value: &str) {
    rt.block_on(async {
        let mut c = etcd.client().await;
        c.put(key, value, None).await.expect("etcd put");
    });
}

fn etcd_delete(rt: &tokio::runtime::Runtime, etcd: &Etcd, key: &str) {
    rt.block_on(async {
        let mut c = etcd.client().await;
        c.delete(key, None).await.expect("etcd delete");
    });
}

/// An etcd that holds the db address in the announcer's `value` layout.
fn etcd_pointing_at_localhost(rt: &tokio::runtime::Runtime) -> Etcd {
    let etcd = Etcd::start();
    etcd_put(rt, &etcd, DB_KEY, "{\"value\": \"127.0.0.1\"}");
    etcd
}

/// A TCP port that accepts connections (the kernel completes the handshake) but never
/// answers: an etcd member that hangs.
fn black_hole() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

// ---------------------------------------------------------------------------------------
// HTTP.

/// One HTTP answer.
#[derive(Debug)]
struct Page {
    status: u16,
    head: String,
    body: String,
}

impl Page {
    /// Data rows of the City table (`<tr><td>`; the header row has `<th>`).
    fn city_rows(&self) -> usize {
        self.body.matches("<tr><td>").count()
    }
}

/// `GET path` on 127.0.0.1:port over HTTP/1.0, or why there is no answer. The body must be
/// UTF-8 (a latin1 byte would fail here).
fn get(port: u16, path: &str) -> Result<Page, String> {
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
        .map_err(|e| format!("connect to port {port}: {e}"))?;
    s.set_read_timeout(Some(PAGE_TIMEOUT)).map_err(|e| e.to_string())?;
    // One write: PHP's built-in server rejects some requests that arrive in pieces.
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send GET {path}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("GET {path} on port {port}: no complete answer within {PAGE_TIMEOUT:?}: {e}"))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        format!(
            "GET {path} on port {port}: not HTTP: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = String::from_utf8(raw[split + 4..].to_vec())
        .unwrap_or_else(|e| panic!("GET {path}: the body is not UTF-8: {e}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path} on port {port}: no status in {head:?}"))?;
    Ok(Page { status, head, body })
}

/// `get`, failing the test when nothing answers.
fn page(port: u16, path: &str) -> Page {
    get(port, path).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until the server on `port` answers `GET /home.php` with 200.
fn wait_until_serving(port: u16, what: &str) {
    let up = testbed::eventually_blocking("the server answers GET /home.php", Duration::from_secs(20), || {
        get(port, "/home.php").ok().filter(|p| p.status == 200)
    })
    .ok();
    assert!(
        up.is_some(),
        "{what} does not answer HTTP: {:?}",
        get(port, "/home.php")
    );
}

/// What every healthy server of the app shows.
fn assert_pages_work(port: u16, hostname: &str) {
    let index = page(port, "/");
    assert_eq!(index.status, 200, "{index:?}");
    for link in ["home.php", "world.php", "health.php"] {
        assert!(
            index.body.contains(&format!("href=\"/{link}\"")),
            "index lacks a link to {link}: {}",
            index.body
        );
    }

    let home = page(port, "/home.php");
    assert_eq!(home.status, 200, "{home:?}");
    assert!(
        home.body
            .contains(&format!("<strong id=\"hostname\">{hostname}</strong>")),
        "home.php does not show the host name {hostname}: {}",
        home.body
    );
    assert!(
        home.body.contains(" UTC</strong>"),
        "home.php does not show the time: {}",
        home.body
    );

    let world = page(port, "/world.php");
    assert_eq!(world.status, 200, "{}", world.head);
    assert!(
        world
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "world.php is not declared UTF-8: {}",
        world.head
    );
    assert_eq!(world.city_rows(), CITIES, "world.php does not list every city");
    assert!(
        world.body.contains(BEJAIA_ROW),
        "world.php does not show city 45 as Béjaïa in UTF-8"
    );
    assert!(
        world.body.contains("<th>Population</th>"),
        "world.php lacks the City columns"
    );

    let health = page(port, "/health.php");
    assert_eq!((health.status, health.body.trim()), (200, "PASS"), "{health:?}");
}

/// Asserts that health.php answers FAIL with 503 (soon: the test polls, the pages time out
/// within seconds).
fn assert_health_fails(port: u16, why: &str) {
    let failed = testbed::eventually_blocking("health.php says FAIL", Duration::from_secs(15), || {
        let p = page(port, "/health.php");
        (p.status == 503 && p.body.trim() == "FAIL").then_some(p)
    })
    .ok();
    assert!(
        failed.is_some(),
        "health.php did not say FAIL with 503 when {why}: last answer {:?}",
        get(port, "/health.php")
    );
}

fn assert_health_passes(port: u16, why: &str) {
    let passed = testbed::eventually_blocking("health.php says PASS", Duration::from_secs(15), || {
        let p = page(port, "/health.php");
        (p.status == 200 && p.body.trim() == "PASS").then_some(p)
    })
    .ok();
    assert!(
        passed.is_some(),
        "health.php did not say PASS when {why}: last answer {:?}",
        get(port, "/health.php")
    );
}

// ---------------------------------------------------------------------------------------
// The pages under `php -S`.

/// Debian's PHP built-in server on the pages, with the app's environment; killed on drop.
struct PhpServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PhpServer {
    /// Starts `php -S` with these `KEY=VALUE` settings (and nothing else of this process's
    /// environment but `PATH`).
    fn start(env: &[(&str, String)]) -> PhpServer {
        let php = testbed::require_program("php", "sudo apt-get install -y php-cli php-mysql");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("php.log");
        for _ in 0..5 {
            let port = testbed::free_port();
            let out = std::fs::File::create(&log).expect("log");
            // setpriv: the server gets SIGKILL when this test's thread ends, even if no
            // destructor runs.
            let mut cmd = Command::new("setpriv");
            cmd.args(["--pdeathsig", "KILL", "--"])
                .arg(&php)
                .args(["-S", &format!("127.0.0.1:{port}"), "-t"])
                .arg(www())
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone().expect("log")))
                .stderr(Stdio::from(out));
            let mut child = cmd.spawn().expect("spawn php -S (setpriv is util-linux)");
            // Its own "started" line, not just an open port: the port may have been taken
            // by another test's server since free_port() saw it free.
            let started = format!("Development Server (http://127.0.0.1:{port}) started");
            let up = testbed::eventually_blocking("php -S says it started", Duration::from_secs(10), || {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return Some(false);
                }
                std::fs::read_to_string(&log).ok()?.contains(&started).then_some(true)
            })
            .ok();
            if up == Some(true) {
                return PhpServer {
                    child,
                    port,
                    log,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "php -S did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// What the pages logged (their reasons for FAIL).
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PhpServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- php -S on port {} logged:\n{}", self.port, self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of the pages for this etcd and MariaDB.
fn app_env(etcd_endpoints: &str, db: &MariaDb) -> Vec<(&'static str, String)> {
    vec![
        ("ETCD_ENDPOINTS", etcd_endpoints.to_owned()),
        ("DB_PORT", db.port().to_string()),
        ("APP_PW", APP_PW.to_owned()),
    ]
}

fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_owned()
}

#[test]
fn pages_find_the_db_through_etcd_and_show_host_cities_and_health() {
    let rt = runtime();
    let db = seeded_world();
    let etcd = etcd_pointing_at_localhost(&rt);
    let php = PhpServer::start(&app_env(&etcd.endpoint(), &db));
    assert_pages_work(php.port, &machine_hostname());
}

#[test]
fn health_says_fail_503_without_the_etcd_key_or_etcd_and_pass_again_when_they_return() {
    let rt = runtime();
    let db = seeded_world();
    let mut etcd = etcd_pointing_at_localhost(&rt);
    let php = PhpServer::start(&app_env(&etcd.endpoint(), &db));
    assert_health_passes(php.port, "etcd holds the key");

    // A member that hangs: the pages give up on it after their timeout and ask the next;
    // when it is the only one, they say FAIL instead of hanging.
    let (_hole, hole_port) = black_hole();
    let hole = format!("http://127.0.0.1:{hole_port}");
    let fallback = PhpServer::start(&app_env(&format!("{hole},{}", etcd.endpoint()), &db));
    assert_health_passes(
        fallback.port,
        "the first etcd member hangs and the second holds the key",
    );
    let only_hole = PhpServer::start(&app_env(&hole, &db));
    assert_health_fails(only_hole.port, "the only etcd member hangs");

    etcd_delete(&rt, &etcd, DB_KEY);
    assert_health_fails(php.port, "the db key is missing from etcd");
    let world = page(php.port, "/world.php");
    assert_eq!(world.status, 503, "world.php without a db address: {world:?}");
    assert!(php.log().contains("etcd has no key"), "no reason logged: {}", php.log());

    // A bare address (not the announcer's JSON) is accepted too.
    etcd_put(&rt, &etcd, DB_KEY, "127.0.0.1");
    assert_health_passes(php.port, "the key is back as a bare address");

    etcd_put(&rt, &etcd, DB_KEY, "{\"value\": \"not-an-address\"}");
    assert_health_fails(php.port, "the key holds no address");
    etcd_put(&rt, &etcd, DB_KEY, "{\"value\": \"127.0.0.1\"}");
    assert_health_passes(php.port, "the key is back");

    etcd.kill();
    assert_health_fails(php.port, "etcd is down");

    // DB_HOST skips etcd altogether; the password may come from a file.
    let pw_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(pw_file.path(), format!("{APP_PW}\n")).expect("write password file");
    let direct = PhpServer::start(&[
        ("ETCD_ENDPOINTS", etcd.endpoint()),
        ("DB_HOST", "127.0.0.1".to_owned()),
        ("DB_PORT", db.port().to_string()),
        ("APP_PW_FILE", pw_file.path().display().to_string()),
    ]);
    assert_health_passes(direct.port, "DB_HOST names the db while etcd is down");

    etcd.restart();
    assert_health_passes(php.port, "etcd is back");
}

#[test]
fn health_says_fail_503_when_the_db_dies_or_refuses_the_user() {
    let rt = runtime();
    let mut db = seeded_world();
    let etcd = etcd_pointing_at_localhost(&rt);
    let php = PhpServer::start(&app_env(&etcd.endpoint(), &db));
    let wrong_pw = PhpServer::start(&[
        ("ETCD_ENDPOINTS", etcd.endpoint()),
        ("DB_PORT", db.port().to_string()),
        ("APP_PW", "not-the-password".to_owned()),
    ]);
    assert_health_passes(php.port, "the db runs");
    assert_health_fails(wrong_pw.port, "the password is wrong");

    db.kill();
    assert_health_fails(php.port, "the db was killed");
    let world = page(php.port, "/world.php");
    assert_eq!(world.status, 503, "world.php with the db down: {world:?}");
    assert!(world.body.contains("does not answer"), "{}", world.body);

    db.restart();
    assert_health_passes(php.port, "the db is back");
}

// ---------------------------------------------------------------------------------------
// The image.

const IMAGE: &str = "sidekick/web:latest";

/// Runs `images/web/build.sh` (idempotent: a second run is answered by Docker's cache).
fn build_image() {
    testbed::docker::build_with_script("images/web/build.sh", IMAGE);
}

/// Creates and starts a container of [`IMAGE`] with host networking (a testbed
/// `Container`: force-removed on drop).
async fn run_web(docker: &bollard::Docker, hostname: &str, env: Vec<String>) -> testbed::docker::Container {
    testbed::docker::Spec {
        image: IMAGE.to_owned(),
        ..Default::default()
    }
    .name(&testbed::unique("web-test"))
    .hostname(hostname)
    .envs(env)
    .host_network()
    .run(docker)
    .await
}

#[test]
fn image_serves_the_pages_as_non_root_and_stops_both_servers_on_docker_stop() {
    let rt = runtime();
    build_image();
    let docker = rt.block_on(testbed::docker::connect());

    // The image holds no secret and runs as a non-root user.
    let config = rt
        .block_on(docker.inspect_image(IMAGE))
        .expect("inspect image")
        .config
        .expect("image config");
    let user = config.user.unwrap_or_default();
    assert!(
        !user.is_empty() && !user.starts_with('0') && !user.starts_with("root"),
        "image user {user:?}"
    );
    let env = config.env.unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.starts_with("APP_PW")),
        "the image env holds a password: {env:?}"
    );

    let mut db = seeded_world();
    let etcd = etcd_pointing_at_localhost(&rt);
    let port = testbed::free_port();
    let hostname = testbed::unique("web");
    let web = rt.block_on(run_web(
        &docker,
        &hostname,
        vec![
            format!("PORT={port}"),
            format!("ETCD_ENDPOINTS={}", etcd.endpoint()),
            format!("DB_PORT={}", db.port()),
            format!("APP_PW={APP_PW}"),
        ],
    ));
    wait_until_serving(port, &format!("container {}", web.name));
    assert_pages_work(port, &hostname);

    let procs: Vec<String> = rt.block_on(web.processes()).into_iter().map(|(_, args)| args).collect();
    assert!(
        procs.iter().any(|p| p.starts_with("nginx: master")) && procs.iter().any(|p| p.starts_with("php-fpm: master")),
        "nginx and php-fpm should both run in the container: {procs:?}"
    );

    db.kill();
    assert_health_fails(port, "the db was killed (in the container)");
    let logs = rt.block_on(web.logs());
    assert!(
        logs.contains("health.php: FAIL: cannot connect"),
        "the reason is not in the logs:\n{logs}"
    );
    assert!(!logs.contains(APP_PW), "the password reached the logs:\n{logs}");

    // docker stop sends SIGTERM; the entrypoint stops both servers and exits 0. Had it
    // ignored the signal, Docker would have killed it after 20 s (exit 137).
    rt.block_on(async {
        let opts = bollard::query_parameters::StopContainerOptionsBuilder::new()
            .t(20)
            .build();
        docker.stop_container(&web.id, Some(opts)).await.expect("docker stop");
    });
    let state = rt.block_on(web.state());
    assert_eq!(state.running, Some(false));
    let logs = rt.block_on(web.logs());
    assert_eq!(
        state.exit_code,
        Some(0),
        "the entrypoint did not exit by itself:\n{logs}"
    );
    assert!(
        logs.contains("entrypoint: stopped (nginx exit 0, php-fpm exit 0)"),
        "both servers should stop cleanly:\n{logs}"
    );
    assert!(
        get(port, "/home.php").is_err(),
        "something still answers on port {port}"
    );
}

#[test]
fn image_rebuild_is_idempotent_and_the_container_refuses_a_bad_port() {
    let rt = runtime();
    let docker = rt.block_on(testbed::docker::connect());
    rt.block_on(testbed::docker::assert_rebuild_gives_the_same_image(
        &docker,
        "images/web/build.sh",
        IMAGE,
    ));

    let web = rt.block_on(run_web(&docker, "bad-port", vec!["PORT=80x".to_owned()]));
    let stopped = testbed::eventually_blocking("the container exits on a bad PORT", Duration::from_secs(20), || {
        let s = rt.block_on(web.state());
        (s.running == Some(false)).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stopped.exit_code, Some(2));
    let logs = rt.block_on(web.logs());
    assert!(logs.contains("PORT must be a port number, not '80x'"), "{logs}");
}
