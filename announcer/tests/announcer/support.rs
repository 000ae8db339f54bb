//! Running the real `announcer` binary against testbed servers, and reading etcd back.

use std::collections::BTreeMap;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use testbed::Daemon;

/// The private address every test announces (distinct from the public one, so a test
/// can tell them apart).
pub const PRIVATE: &str = "10.9.8.7";
/// The public address every test announces.
pub const PUBLIC: &str = "127.0.0.1";

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

pub fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_announcer"));
    cmd.args(args)
        .env("RUST_LOG", "info,announcer=debug")
        .env_remove("DOCKER_HOST")
        .env_remove("COREOS_PUBLIC_IPV4")
        .env_remove("COREOS_PRIVATE_IPV4")
        .stdin(Stdio::null());
    cmd
}

/// Starts `announcer ARGS...` as a [`Daemon`]: its log in a temp file, killed on drop, the
/// log quoted when the test fails.
pub fn announcer(args: &[String]) -> Daemon {
    Daemon::start("announcer", command(args))
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

/// Waits (with [`testbed::eventually`]) until the keys under `prefix` satisfy `check`, and
/// gives them; fails after `within` showing what etcd holds.
pub async fn records_until<F>(
    client: &mut Client,
    prefix: &str,
    within: Duration,
    what: &str,
    check: F,
) -> BTreeMap<String, Kv>
where
    F: Fn(&BTreeMap<String, Kv>) -> bool,
{
    let found = testbed::eventually(what, within, async || {
        let kvs = tokio::time::timeout(Duration::from_secs(2), dump(client, prefix))
            .await
            .ok()?;
        check(&kvs).then_some(kvs)
    })
    .await;
    match found {
        Ok(kvs) => kvs,
        Err(e) => panic!(
            "{e}\netcd holds: {:#?}",
            tokio::time::timeout(Duration::from_secs(2), dump(client, prefix))
                .await
                .ok()
        ),
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
