//! Running the real `announcer` binary against testbed servers, and reading etcd back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

/// The private address every test announces (distinct from the public one, so a test
/// can tell them apart).
pub const PRIVATE: &str = "10.9.8.7";
/// The public address every test announces.
pub const PUBLIC: &str = "127.0.0.1";

/// A running announcer; killed when dropped.
pub struct Announcer {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The options every test passes before the subcommand: a unique hostname, both
/// addresses, short TTL and check interval.
pub fn global_args(endpoints: &str, hostname: &str) -> Vec<String> {
    global_args_at(endpoints, hostname, PRIVATE)
}

/// [`global_args`] with another private address (another host).
pub fn global_args_at(endpoints: &str, hostname: &str, private: &str) -> Vec<String> {
    [
        "--etcd-endpoints",
        endpoints,
        "--public-ipv4",
        PUBLIC,
        "--private-ipv4",
        private,
        "--hostname",
        hostname,
        "--ttl",
        "2s",
        "--check-interval",
        "500ms",
        "--etcd-timeout",
        "2s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_announcer"));
    cmd.args(args)
        .env("RUST_LOG", "info,announcer=debug")
        .env_remove("DOCKER_HOST")
        .env_remove("COREOS_PUBLIC_IPV4")
        .env_remove("COREOS_PRIVATE_IPV4")
        .stdin(Stdio::null());
    cmd
}

impl Announcer {
    /// Starts `announcer ARGS...` with its log in a temp file.
    pub fn start(args: &[String]) -> Announcer {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("announcer.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = command(args);
        cmd.stdout(Stdio::from(file.try_clone().expect("clone")))
            .stderr(Stdio::from(file));
        // It dies with the test process, even when the test is killed.
        let child = testbed::spawn(cmd).expect("spawn announcer");
        Announcer {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` and waits (up to `timeout`) for the exit.
    pub async fn signal_and_wait(&mut self, sig: i32, timeout: Duration) -> ExitStatus {
        testbed::signal(self.pid(), sig);
        self.wait(timeout).await
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "announcer did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- announcer log:\n{}", self.log());
        }
    }
}

/// Runs `announcer ARGS...` to completion: (status, stdout, stderr).
pub fn run_to_end(args: &[String]) -> (ExitStatus, String, String) {
    let out = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run announcer");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub value: String,
    pub lease: i64,
    pub mod_revision: i64,
}

/// Every key under `prefix`.
pub async fn dump(client: &mut Client, prefix: &str) -> BTreeMap<String, Kv> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("etcd get");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().expect("utf8 key").to_owned(),
                Kv {
                    value: kv.value_str().expect("utf8 value").to_owned(),
                    lease: kv.lease(),
                    mod_revision: kv.mod_revision(),
                },
            )
        })
        .collect()
}

/// Polls etcd every 20 ms until `check` holds for the keys under `prefix`, or panics
/// after `timeout` showing what etcd holds.
pub async fn wait_until<F>(
    client: &mut Client,
    prefix: &str,
    timeout: Duration,
    what: &str,
    check: F,
) -> BTreeMap<String, Kv>
where
    F: Fn(&BTreeMap<String, Kv>) -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(resp) = tokio::time::timeout(Duration::from_secs(2), dump(client, prefix)).await
            && check(&resp)
        {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}\netcd holds: {:#?}",
            tokio::time::timeout(Duration::from_secs(2), dump(client, prefix))
                .await
                .ok()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the five keys of a `fields` record `<prefix>/<service>/<instance>/` exist.
pub fn has_record(kvs: &BTreeMap<String, Kv>, service: &str, instance: &str) -> bool {
    let dir = format!("/services/{service}/{instance}/");
    ["unit", "host", "public_ipv4_addr", "private_ipv4_addr", "port"]
        .iter()
        .all(|f| kvs.contains_key(&format!("{dir}{f}")))
}

/// Whether any key of `<service>/<instance>` (any layout) exists.
pub fn has_any(kvs: &BTreeMap<String, Kv>, service: &str, instance: &str) -> bool {
    let whole = format!("/services/{service}/{instance}");
    kvs.keys().any(|k| *k == whole || k.starts_with(&format!("{whole}/")))
}

/// The generous deadline of every wait (a loaded 2-core machine).
pub const PATIENCE: Duration = Duration::from_secs(20);
