//! The harness of the security tests: the real binaries run with a clean environment and
//! their log in a file, plus the etcd records and simulator scenes they work on.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use clap::Parser;
use etcd_client::{Txn, TxnOp};
use sidekick::schema::{Layout, Record};
use testbed::Daemon;
use testbed::clb_sim::{ClbSim, RateLimits, SimConfig};

/// `--auth-token-ttl` of the etcd servers whose tokens must expire (seconds).
pub const TOKEN_TTL: u32 = 2;
/// An idle gap past the token TTL: etcd drops expired tokens once a second, so TTL + 2 s.
pub const IDLE: Duration = Duration::from_secs(4);

/// The private address every announcer test announces.
pub const PRIVATE: &str = "10.9.8.7";

/// `&[&str]` to owned arguments.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// A file holding `secret` (one line), as a password file is given.
pub fn secret_file(secret: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(f, "{secret}").expect("write secret");
    f
}

#[derive(Parser)]
struct EtcdCli {
    #[command(flatten)]
    etcd: sidekick::etcd::EtcdArgs,
}

/// The shared etcd configuration every binary builds, from `--etcd-*` flags.
pub async fn etcd_config(cli: &[String]) -> sidekick::etcd::EtcdConfig {
    let parsed =
        EtcdCli::try_parse_from(std::iter::once("test".to_owned()).chain(cli.iter().cloned())).expect("etcd flags");
    parsed.etcd.resolve().await.expect("resolve etcd flags")
}

/// The three binaries.
#[derive(Clone, Copy, Debug)]
pub enum Binary {
    Announcer,
    LbSync,
    Dbhelper,
}

impl Binary {
    pub fn path(self) -> PathBuf {
        testbed::bin(match self {
            Binary::Announcer => "announcer",
            Binary::LbSync => "lb-sync",
            Binary::Dbhelper => "dbhelper",
        })
    }
}

/// The command with a clean environment: `PATH`, `RUST_LOG` (unless `env` sets it) and `env`.
pub fn command(bin: Binary, args: &[String], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin.path());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// How long a stopped daemon may take to exit.
pub const STOP: Duration = Duration::from_secs(20);

/// Starts `bin` with [`command`]'s clean environment as a [`Daemon`] (stdout and stderr in
/// its log, killed on drop, the log printed when the test fails).
pub fn start(bin: Binary, args: &[String], env: &[(&str, &str)]) -> Daemon {
    Daemon::start(&format!("{bin:?}"), command(bin, args, env))
}

pub fn announcer(args: &[String], env: &[(&str, &str)]) -> Daemon {
    start(Binary::Announcer, args, env)
}

pub fn lb_sync(args: &[String], env: &[(&str, &str)]) -> Daemon {
    start(Binary::LbSync, args, env)
}

pub fn dbhelper(args: &[String], env: &[(&str, &str)]) -> Daemon {
    start(Binary::Dbhelper, args, env)
}

/// Runs to the end (killed after `timeout`, which fails the test): (status, stdout, stderr).
pub fn run_to_end(
    bin: Binary,
    args: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let mut cmd = command(bin, args, env);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = testbed::spawn(cmd).expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            testbed::signal(pid, libc::SIGKILL);
            panic!("{bin:?} {args:?} did not exit within {timeout:?}");
        }
    };
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The announcer's options before the subcommand, endpoints included.
pub fn announcer_args(endpoints: &str, hostname: &str) -> Vec<String> {
    let mut a = args(&["--etcd-endpoints", endpoints]);
    a.extend(announcer_args_without_endpoints(hostname));
    a
}

/// The announcer's options before the subcommand: addresses, short TTL and checks.
pub fn announcer_args_without_endpoints(hostname: &str) -> Vec<String> {
    args(&[
        "--public-ipv4",
        "127.0.0.1",
        "--private-ipv4",
        PRIVATE,
        "--hostname",
        hostname,
        "--ttl",
        "2s",
        "--check-interval",
        "500ms",
        "--etcd-timeout",
        "2s",
    ])
}

/// A simulator that answers fast: short PENDING_UPDATE, rate limits off.
pub fn quick_sim() -> SimConfig {
    SimConfig {
        pending_time: Duration::from_millis(300),
        rate_limits: RateLimits::unlimited(),
        ..SimConfig::default()
    }
}

/// `lb-sync` flags with quick timings, `extra` appended, then `run`.
pub fn lb_sync_args(endpoints: &str, prefix: &str, sim: &ClbSim, extra: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "--etcd-endpoints",
        endpoints,
        "--prefix",
        prefix,
        "--region",
        "ORD",
        "--load-balancer-id",
        "1",
        "--username",
        "u",
        "--identity-url",
        &sim.identity_url(),
        "--drain",
        "1s",
        "--debounce",
        "300ms:2s",
        "--resync",
        "2s",
        "--poll",
        "100ms",
    ]);
    a.extend(args(extra));
    a.push("run".into());
    a
}

/// The record of instance `webNN` at 10.0.0.NN:8080.
pub fn record(n: u8) -> Record {
    Record {
        service: "web".into(),
        instance: format!("web{n:02}"),
        unit: format!("monweb@{n:02}.service"),
        host: format!("core{n:02}"),
        public_ipv4: Some([203, 0, 113, n].into()),
        private_ipv4: [10, 0, 0, n].into(),
        port: 8080,
        container_id: String::new(),
        container_name: String::new(),
    }
}

/// Writes record `n` under `root` as the announcer does (fields layout, one transaction).
pub async fn put_record(client: &etcd_client::Client, root: &str, n: u8) {
    let ops: Vec<TxnOp> = record(n)
        .entries(root, Layout::Fields)
        .into_iter()
        .map(|(k, v)| TxnOp::put(k, v, None))
        .collect();
    client.clone().txn(Txn::new().and_then(ops)).await.expect("txn");
}

/// The last octets of load balancer 1's nodes.
pub fn nodes(sim: &ClbSim) -> Vec<u8> {
    let mut v: Vec<u8> = sim
        .nodes(1)
        .iter()
        .filter_map(|n| n.address.rsplit('.').next().and_then(|s| s.parse().ok()))
        .collect();
    v.sort_unstable();
    v
}

/// Waits until load balancer 1 holds exactly the nodes `want` (last octets).
pub async fn wait_nodes(sim: &ClbSim, want: &[u8], lb: &Daemon) {
    let what = format!("the load balancer holds {want:?}");
    if let Err(e) = testbed::eventually(&what, Duration::from_secs(30), async || {
        (nodes(sim) == want).then_some(())
    })
    .await
    {
        lb.fail(format!("{e}; it holds {:?}", nodes(sim)));
    }
}
