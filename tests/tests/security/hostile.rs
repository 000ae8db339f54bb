//! Issue 17, point 6: hostile values through the real binaries. Each is refused with one
//! line naming it (quoted short, never whole), nothing is written or changed because of
//! it, the binary's peak memory stays bounded (`VmHWM`, printed), it does not crash, and it
//! keeps serving the good records.

use std::time::Duration;

use testbed::clb_sim::{ClbSim, Oversized};
use testbed::{Daemon, Etcd, HaProxy, eventually, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, Binary};

/// The bound on a binary's peak resident memory while it meets a hostile value: wide (the
/// debug binaries idle at 10 to 20 MiB), and far below what holding the value would take.
const RSS_BOUND_KIB: u64 = 64 << 10;

/// How long a refusal, a recovery or a record may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// The process's peak resident set size in KiB (`VmHWM` of `/proc/PID/status`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Prints the peak RSS of `d` and fails when it passed [`RSS_BOUND_KIB`] or `d` exited.
pub fn assert_alive_and_bounded(d: &mut Daemon, what: &str) {
    if !d.is_running() {
        d.fail(format!("{} exited after {what}", d.name()));
    }
    let kib = peak_rss_kib(d.pid());
    println!("{}: peak RSS after {what}: {:.1} MiB", d.name(), kib as f64 / 1024.0);
    if kib >= RSS_BOUND_KIB {
        d.fail(format!(
            "{} peaked at {kib} KiB after {what} (bound {RSS_BOUND_KIB} KiB)",
            d.name()
        ));
    }
}

/// The lines of `d`'s log that contain `needle`; fails unless there is at least one and
/// each is short (a refusal quotes the value, never the whole of it).
pub fn refusal_lines(d: &Daemon, needle: &str) -> Vec<String> {
    let log = d.log();
    let lines: Vec<String> = log.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect();
    if lines.is_empty() {
        d.fail(format!("no log line contains {needle:?}"));
    }
    if let Some(long) = log.lines().find(|l| l.len() > 2000) {
        d.fail(format!(
            "a log line of {} bytes (a value printed whole?): {}…",
            long.len(),
            &long[..200]
        ));
    }
    lines
}

/// Waits until `d`'s log holds `n` lines with `needle`.
async fn wait_lines(d: &Daemon, needle: &str, n: usize) {
    let what = format!("{} logs {n} lines with {needle:?}", d.name());
    if let Err(e) = eventually(&what, PATIENCE, async || {
        (d.log().lines().filter(|l| l.contains(needle)).count() >= n).then_some(())
    })
    .await
    {
        d.fail(e);
    }
}

/// The CLB API answers a read with a body that never ends, then with 100 MB: lb-sync
/// refuses each read at its 4 MiB cap, changes nothing, stays small and alive, and adds the
/// record written meanwhile once the answers are sane again.
#[tokio::test]
async fn lb_sync_refuses_an_endless_or_100_mb_load_balancer_answer() {
    let etcd = Etcd::start();
    let client = etcd.client().await;
    let root = format!("/{}/services", unique("hostile"));
    let prefix = format!("{root}/web");
    let sim = ClbSim::start(support::quick_sim());
    support::put_record(&client, &root, 1).await;
    support::put_record(&client, &root, 2).await;
    let mut lb = Daemon::start(
        "lb-sync",
        support::command(
            Binary::LbSync,
            &support::lb_sync_args(&etcd.endpoint(), &prefix, &sim, &[]),
            &[("RACKSPACE_API_KEY", "k")],
        ),
    );
    wait_nodes(&sim, &[1, 2], &lb).await;
    let needle = "answer longer than 4194304 bytes";
    let mut refusals = 0;
    let mut have = vec![1, 2];
    for (n, kind) in [(3u8, Oversized::Endless), (4, Oversized::Declared(100_000_000))] {
        sim.clear_calls();
        sim.inject_oversized(1000, kind);
        support::put_record(&client, &root, n).await;
        // Two passes refused: the second proves the first left lb-sync working.
        refusals += 2;
        wait_lines(&lb, needle, refusals).await;
        refusals = lb.log().lines().filter(|l| l.contains(needle)).count();
        assert_eq!(support::nodes(&sim), have, "the nodes changed during {kind:?} answers");
        let changes: Vec<_> = sim
            .calls()
            .into_iter()
            .filter(|c| c.method != "GET" && !c.identity)
            .collect();
        assert!(changes.is_empty(), "changes during {kind:?} answers: {changes:?}");
        assert_alive_and_bounded(&mut lb, &format!("{kind:?} answers"));
        sim.inject_oversized(0, kind);
        have.push(n);
        wait_nodes(&sim, &have, &lb).await;
    }
    for line in refusal_lines(&lb, needle) {
        assert!(line.contains("/loadbalancers/1"), "the line names the call: {line}");
    }
    println!("{}", refusal_lines(&lb, needle)[0]);
    assert!(
        sim.oversized_served() >= 4,
        "{} oversized answers",
        sim.oversized_served()
    );
}

/// Waits until load balancer 1 holds exactly the nodes `want` (last octets).
async fn wait_nodes(sim: &ClbSim, want: &[u8], lb: &Daemon) {
    let what = format!("the load balancer holds {want:?}");
    if let Err(e) = eventually(&what, PATIENCE, async || (support::nodes(sim) == want).then_some(())).await {
        lb.fail(format!("{e}; it holds {:?}", support::nodes(sim)));
    }
}

/// A Runtime API socket in front of a real HAProxy that, while poisoned, answers
/// `show servers state` with an endless stream and forwards everything else; it counts
/// the commands it saw.
struct PoisonedSocket {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    poisoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    commands: std::sync::Arc<std::sync::Mutex<Vec<(bool, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PoisonedSocket {
    fn start(upstream: std::path::PathBuf) -> PoisonedSocket {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("runtime.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let poisoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let commands = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, c) = (poisoned.clone(), commands.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (p, c, upstream) = (p.clone(), c.clone(), upstream.clone());
                tokio::spawn(async move {
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while s.read(&mut b).await.is_ok_and(|n| n == 1) {
                        line.push(b[0]);
                        if b[0] == b'\n' {
                            break;
                        }
                    }
                    let cmd = String::from_utf8_lossy(&line).trim().to_owned();
                    let poison = p.load(std::sync::atomic::Ordering::SeqCst) && cmd.starts_with("show servers state");
                    c.lock().unwrap().push((poison, cmd));
                    if poison {
                        let junk =
                            b"1\n3 web 1 lb-sync-10.0.0.1:80 10.0.0.1 2 0 1 1 10 1 0 0 0 0 0 0 - 80 - 0 0 - - 0\n"
                                .repeat(500);
                        while s.write_all(&junk).await.is_ok() {}
                        return;
                    }
                    let Ok(mut up) = tokio::net::UnixStream::connect(&upstream).await else {
                        return;
                    };
                    if up.write_all(&line).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                    }
                });
            }
        });
        PoisonedSocket {
            path,
            _dir: dir,
            poisoned,
            commands,
            task,
        }
    }

    fn poison(&self, on: bool) {
        self.poisoned.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The commands seen: (answered endlessly, command).
    fn commands(&self) -> Vec<(bool, String)> {
        self.commands.lock().unwrap().clone()
    }
}

impl Drop for PoisonedSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HAProxy's Runtime API answers `show servers state` without end: lb-sync stops reading at
/// its 8 MiB cap, sends no change, stays small and alive, and adds the record written
/// meanwhile once the answers are sane again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_sync_refuses_an_endless_runtime_api_answer() {
    let etcd = Etcd::start();
    let client = etcd.client().await;
    let root = format!("/{}/services", unique("hostile"));
    let prefix = format!("{root}/web");
    let ha = HaProxy::start();
    let socket = PoisonedSocket::start(ha.socket());
    support::put_record(&client, &root, 1).await;
    let argv = support::args(&[
        "--provider",
        "haproxy",
        "--haproxy-socket",
        &socket.path.display().to_string(),
        "--haproxy-backend",
        ha.backend(),
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--prefix",
        &prefix,
        "--drain",
        "1s",
        "--debounce",
        "300ms:2s",
        "--resync",
        "2s",
        "run",
    ]);
    let mut lb = Daemon::start("lb-sync-haproxy", support::command(Binary::LbSync, &argv, &[]));
    let servers = |ha: &HaProxy| -> Vec<String> { ha.servers().into_iter().map(|(_, addr, _)| addr).collect() };
    let want1 = vec!["10.0.0.1:8080".to_owned()];
    if let Err(e) = eventually("HAProxy holds record 1", PATIENCE, async || {
        (servers(&ha) == want1).then_some(())
    })
    .await
    {
        lb.fail(e);
    }
    socket.poison(true);
    let seen = socket.commands().len();
    support::put_record(&client, &root, 2).await;
    let needle = "answer longer than 8388608 bytes";
    wait_lines(&lb, needle, 2).await;
    assert_eq!(servers(&ha), want1, "HAProxy changed during endless answers");
    let during: Vec<String> = socket.commands()[seen..]
        .iter()
        .filter(|(_, c)| !c.starts_with("show "))
        .map(|(_, c)| c.clone())
        .collect();
    assert!(during.is_empty(), "changes sent during endless answers: {during:?}");
    assert_alive_and_bounded(&mut lb, "endless Runtime API answers");
    socket.poison(false);
    let want2 = vec!["10.0.0.1:8080".to_owned(), "10.0.0.2:8080".to_owned()];
    if let Err(e) = eventually("HAProxy holds records 1 and 2", PATIENCE, async || {
        (servers(&ha) == want2).then_some(())
    })
    .await
    {
        lb.fail(e);
    }
    let lines = refusal_lines(&lb, needle);
    assert!(lines[0].contains("show servers state"), "{}", lines[0]);
    println!("{}", lines[0]);
    assert!(socket.commands().iter().filter(|(p, _)| *p).count() >= 2);
}

/// An etcd that takes values of 10 MB (`--max-request-bytes` 16 MiB; etcd's default is
/// 1.5 MiB).
fn etcd_for_big_values() -> Etcd {
    Etcd::start_with(&testbed::EtcdOptions {
        max_request_bytes: Some(16 << 20),
        ..testbed::EtcdOptions::default()
    })
}

/// 10 MB, and 1 MiB (under the client's 4 MiB, over the 64 KiB a value may have).
const TEN_MB: usize = 10_000_000;
const ONE_MIB: usize = 1 << 20;

/// Puts a value of `len` bytes (a JSON-looking start, then `x`s) at `key`.
async fn put_big(client: &etcd_client::Client, key: &str, len: usize) {
    let mut v = b"{\"private_ipv4_addr\": \"10.0.0.66\", \"junk\": \"".to_vec();
    v.resize(len, b'x');
    client.clone().put(key, v, None).await.expect("put a big value");
}

/// Values of 10 MB and 1 MiB under lb-sync's prefix, written while it watches (a new
/// instance, a field of an existing record, a key of its own): each is logged once by its
/// key, the other records keep their nodes, a record written afterwards is added, memory
/// stays bounded.
#[tokio::test]
async fn lb_sync_ignores_10_mb_values_under_its_prefix_and_keeps_the_good_records() {
    let etcd = etcd_for_big_values();
    let client = etcd.client().await;
    let root = format!("/{}/services", unique("hostile"));
    let prefix = format!("{root}/web");
    let sim = ClbSim::start(support::quick_sim());
    support::put_record(&client, &root, 1).await;
    support::put_record(&client, &root, 2).await;
    let mut lb = Daemon::start(
        "lb-sync",
        support::command(
            Binary::LbSync,
            &support::lb_sync_args(&etcd.endpoint(), &prefix, &sim, &[]),
            &[("RACKSPACE_API_KEY", "k")],
        ),
    );
    wait_nodes(&sim, &[1, 2], &lb).await;
    let big = [
        (format!("{prefix}/web09/private_ipv4_addr"), TEN_MB),
        (format!("{prefix}/web02/port"), TEN_MB),
        (format!("{prefix}/evil"), TEN_MB),
        (format!("{prefix}/web08/private_ipv4_addr"), ONE_MIB),
    ];
    for (key, len) in &big {
        put_big(&client, key, *len).await;
    }
    support::put_record(&client, &root, 3).await;
    wait_nodes(&sim, &[1, 2, 3], &lb).await;
    for (key, _) in &big {
        wait_lines(&lb, &format!("the value of \"{key}\" is"), 1).await;
    }
    // A restart of the read (a resync of the watch) must not log them again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (key, len) in &big {
        let lines = refusal_lines(&lb, &format!("the value of \"{key}\" is"));
        assert_eq!(lines.len(), 1, "{key} logged once: {lines:#?}");
        if *len == ONE_MIB {
            assert!(lines[0].contains("1048576 bytes"), "{}", lines[0]);
        }
    }
    assert_eq!(support::nodes(&sim), vec![1, 2, 3], "node 2 kept, nothing else added");
    assert_alive_and_bounded(&mut lb, "10 MB values under its prefix");
    println!("{}", refusal_lines(&lb, "/evil\" is")[0]);
}

/// Values of 10 MB and 1 MiB under the announcer's prefix: its full check (every resync)
/// still reads the rest, so a record of its own that someone deleted is written again,
/// and each big key is logged once.
#[tokio::test]
async fn announcer_full_check_survives_10_mb_values_under_its_prefix() {
    let etcd = etcd_for_big_values();
    let client = etcd.client().await;
    put_big(&client, "/services/web/evil/private_ipv4_addr", TEN_MB).await;
    put_big(&client, "/services/other/x", ONE_MIB).await;
    let d = testbed::docker::connect().await;
    let image = testbed::docker::busybox_image(&d).await;
    let name = unique("sec-big");
    let _c = testbed::docker::Spec::web(&image)
        .name(&name)
        .label("announce.service", "web")
        .label("announce.instance", "web01")
        .run(&d)
        .await;
    // Host mode: its full check reads the whole prefix (a container-mode announcer reads
    // only its own record's keys).
    let mut a = support::announcer_args(&etcd.endpoint(), &unique("host"));
    a.extend(support::args(&["--resync-interval", "1s", "--check", "none", "host"]));
    let mut ann = Daemon::start("announcer", support::command(Binary::Announcer, &a, &[]));
    let port = async || {
        let r = client.clone().get("/services/web/web01/port", None).await.ok()?;
        r.kvs().first().map(|kv| kv.value().to_vec())
    };
    if let Err(e) = eventually("the record appears", PATIENCE, port).await {
        ann.fail(e);
    }
    wait_lines(&ann, "the value of \"/services/web/evil/private_ipv4_addr\" is over", 1).await;
    wait_lines(&ann, "the value of \"/services/other/x\" is 1048576 bytes", 1).await;
    client.clone().delete("/services/web/web01/port", None).await.unwrap();
    if let Err(e) = eventually("the deleted field is written again", PATIENCE, port).await {
        ann.fail(e);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(refusal_lines(&ann, "/services/web/evil/private_ipv4_addr").len(), 1);
    assert_eq!(refusal_lines(&ann, "/services/other/x").len(), 1);
    assert_alive_and_bounded(&mut ann, "10 MB values under its prefix");
}

/// dbhelper's key holds 10 MB: one line names it, nothing is done with it, memory stays
/// bounded; once a usable address is written, dbhelper goes on.
#[tokio::test]
async fn dbhelper_refuses_a_10_mb_db_record_and_waits_for_a_usable_one() {
    let etcd = etcd_for_big_values();
    let client = etcd.client().await;
    let key = format!("/{}/services/db/db_private_ip", unique("hostile"));
    put_big(&client, &key, TEN_MB).await;
    let db = testbed::MariaDb::start();
    let port = db.port().to_string();
    let argv = support::args(&[
        "--etcd-endpoints",
        &etcd.endpoint(),
        "wait",
        "--etcd-key",
        &key,
        "--port",
        &port,
        "--wait-timeout",
        "60s",
    ]);
    let mut run = Daemon::start(
        "dbhelper",
        support::command(Binary::Dbhelper, &argv, &[("MYSQL_ROOT_PASSWORD", db.root_password())]),
    );
    let needle = format!("the value of \"{key}\" is over");
    wait_lines(&run, &needle, 1).await;
    // A second big value (a new revision): still one line for the same problem.
    put_big(&client, &key, TEN_MB).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refusal_lines(&run, &needle).len(), 1);
    assert_alive_and_bounded(&mut run, "a 10 MB db record");
    client.clone().put(key.as_str(), "127.0.0.1", None).await.unwrap();
    let status = run.wait(PATIENCE).await;
    if !status.success() {
        run.fail(format!("dbhelper wait ended with {status}"));
    }
    println!("{}", refusal_lines(&run, &needle)[0]);
}

/// A dump with a statement longer than the server's `max_allowed_packet` (1 MiB here, a
/// 2 MiB INSERT after a small table): refused with one line naming the statement before
/// anything is loaded (no database, no staging database, no table), and the sampled peak
/// memory stays bounded.
#[tokio::test]
async fn dbhelper_refuses_a_dump_statement_over_max_allowed_packet_before_loading() {
    let db = testbed::MariaDb::start();
    let _ = db.cli(&["-e", "SET GLOBAL max_allowed_packet = 1048576"]);
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("big.sql");
    let mut sql = b"CREATE TABLE small (a int);\nINSERT INTO small VALUES (1),(2);\nCREATE TABLE big (b longtext);\nINSERT INTO big VALUES ('".to_vec();
    sql.resize(sql.len() + (2 << 20), b'x');
    sql.extend_from_slice(b"');\n");
    std::fs::write(&dump, &sql).unwrap();
    let port = db.port().to_string();
    let argv = support::args(&[
        "seed",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--dump",
        dump.to_str().unwrap(),
        "--database",
        "hostile",
    ]);
    let mut run = Daemon::start(
        "dbhelper-seed",
        support::command(
            Binary::Dbhelper,
            &argv,
            &[("MYSQL_ROOT_PASSWORD", db.root_password()), ("APP_PW", "apppw")],
        ),
    );
    // It exits within moments: sample its peak memory until then.
    let mut peak = 0;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = run.try_exit() {
            break status;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", run.pid())) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if started.elapsed() > PATIENCE {
            run.fail("dbhelper seed did not exit");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!("dbhelper seed: sampled peak RSS {:.1} MiB", peak as f64 / 1024.0);
    assert!(peak < RSS_BOUND_KIB, "peak {peak} KiB");
    assert!(!status.success(), "the dump was accepted:\n{}", run.excerpt());
    let lines = refusal_lines(&run, "more than the server's max_allowed_packet of 1048576 bytes");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("statement 4 (line 4)") && lines[0].contains("nothing was loaded"),
        "{}",
        lines[0]
    );
    println!("{}", &lines[0][..lines[0].len().min(400)]);
    let dbs = db.cli(&["-N", "-e", "SHOW DATABASES LIKE 'hostile%'"]);
    assert!(dbs.trim().is_empty(), "databases were created: {dbs}");
}

/// A 1 MiB `announce.unit` label and a 100 kB `SERVICE_TAGS` variable on containers the
/// announcer follows: each container is refused with one line naming the setting (cut),
/// nothing of it is written, a good container beside them is announced, memory stays
/// bounded.
#[tokio::test]
async fn announcer_refuses_a_container_with_a_1_mib_label() {
    let etcd = Etcd::start();
    let client = etcd.client().await;
    let d = testbed::docker::connect().await;
    let image = testbed::docker::busybox_image(&d).await;
    let service = unique("bigl");
    let huge = "u".repeat(ONE_MIB);
    let _bad = testbed::docker::Spec::web(&image)
        .name(&unique("sec-biglabel"))
        .label("announce.service", &service)
        .label("announce.instance", "bad1")
        .label("announce.unit", &huge)
        .run(&d)
        .await;
    let _bad_env = testbed::docker::Spec::web(&image)
        .name(&unique("sec-bigenv"))
        .env(&format!("SERVICE_NAME={service}"))
        .env("SERVICE_ID=bad2")
        // 100 kB: Linux refuses one environment string over 128 KiB at exec (E2BIG).
        .env(&format!("SERVICE_TAGS={}", "u".repeat(100_000)))
        .run(&d)
        .await;
    let _good = testbed::docker::Spec::web(&image)
        .name(&unique("sec-goodlabel"))
        .label("announce.service", &service)
        .label("announce.instance", "good")
        .run(&d)
        .await;
    let mut a = support::announcer_args(&etcd.endpoint(), &unique("host"));
    a.extend(support::args(&["--check", "none", "host"]));
    let mut ann = Daemon::start("announcer", support::command(Binary::Announcer, &a, &[]));
    let good = format!("/services/{service}/good/port");
    if let Err(e) = eventually("the good record appears", PATIENCE, async || {
        let r = client.clone().get(good.as_str(), None).await.ok()?;
        r.kvs().first().map(|_| ())
    })
    .await
    {
        ann.fail(e);
    }
    wait_lines(&ann, "invalid label announce.unit=\"uuuu", 1).await;
    wait_lines(&ann, "invalid label SERVICE_TAGS (environment)=\"uuuu", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (needle, len) in [("announce.unit=", ONE_MIB), ("SERVICE_TAGS (environment)=", 100_000)] {
        let lines = refusal_lines(&ann, needle);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains(&format!("({len} bytes): longer than 4096 bytes")),
            "{}",
            lines[0]
        );
    }
    let keys = client
        .clone()
        .get(
            format!("/services/{service}/"),
            Some(etcd_client::GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let written: Vec<String> = keys
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert!(
        written.iter().all(|k| k.contains("/good/")),
        "only the good record is written: {written:?}"
    );
    assert_alive_and_bounded(&mut ann, "1 MiB labels");
    println!("{}", refusal_lines(&ann, "announce.unit=")[0]);
}

/// Keys under the prefix that no writer makes: `..`, an empty segment, NUL, bytes that are
/// not UTF-8, a key too deep. lb-sync and the announcer read past them: lb-sync keeps its
/// nodes and adds a record written afterwards, the announcer keeps its record; neither
/// crashes, prints a raw NUL or an unescaped byte, or grows.
#[tokio::test]
async fn bad_keys_under_the_prefix_are_skipped_by_lb_sync_and_the_announcer() {
    let etcd = Etcd::start();
    let client = etcd.client().await;
    let root = "/services";
    let prefix = format!("{root}/web");
    let sim = ClbSim::start(support::quick_sim());
    support::put_record(&client, root, 1).await;
    support::put_record(&client, root, 2).await;
    let lb = Daemon::start(
        "lb-sync",
        support::command(
            Binary::LbSync,
            &support::lb_sync_args(&etcd.endpoint(), &prefix, &sim, &[]),
            &[("RACKSPACE_API_KEY", "k")],
        ),
    );
    wait_nodes(&sim, &[1, 2], &lb).await;
    let bad: Vec<Vec<u8>> = vec![
        format!("{prefix}/../admin/private_ipv4_addr").into_bytes(),
        format!("{prefix}/web07/../../x").into_bytes(),
        format!("{prefix}//private_ipv4_addr").into_bytes(),
        [prefix.as_bytes(), b"/we\0b/private_ipv4_addr"].concat(),
        [prefix.as_bytes(), b"/\xff\xfe/private_ipv4_addr"].concat(),
        [prefix.as_bytes(), b"/web01/\xc3"].concat(),
        format!("{prefix}/web06/a/b/c/d").into_bytes(),
    ];
    for k in &bad {
        client.clone().put(k.clone(), "10.0.0.77", None).await.unwrap();
    }
    support::put_record(&client, root, 3).await;
    wait_nodes(&sim, &[1, 2, 3], &lb).await;
    let d = testbed::docker::connect().await;
    let image = testbed::docker::busybox_image(&d).await;
    let _c = testbed::docker::Spec::web(&image)
        .name(&unique("sec-badkeys"))
        .label("announce.service", "web")
        .label("announce.instance", "web09")
        .run(&d)
        .await;
    let mut a = support::announcer_args(&etcd.endpoint(), &unique("host"));
    a.extend(support::args(&["--resync-interval", "1s", "--check", "none", "host"]));
    let ann = Daemon::start("announcer", support::command(Binary::Announcer, &a, &[]));
    let port = async || {
        let r = client.clone().get("/services/web/web09/port", None).await.ok()?;
        r.kvs().first().map(|_| ())
    };
    if let Err(e) = eventually("the announcer's record appears", PATIENCE, port).await {
        ann.fail(e);
    }
    // Three resyncs of the announcer over the bad keys; lb-sync meanwhile sees web09.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(port().await.is_some(), "the announcer's record stays");
    for mut daemon in [lb, ann] {
        let log = daemon.log();
        assert!(!log.contains('\0'), "a raw NUL in the log of {}", daemon.name());
        assert!(
            !log.contains('\u{fffd}'),
            "an unescaped byte in the log of {}",
            daemon.name()
        );
        assert_alive_and_bounded(&mut daemon, "bad keys under the prefix");
        for l in log.lines().filter(|l| l.contains("WARN")) {
            println!("{}: {l}", daemon.name());
        }
    }
    let nodes = support::nodes(&sim);
    assert!(nodes.starts_with(&[1, 2, 3]) && !nodes.contains(&77), "{nodes:?}");
}
