//! The scene of every lb-sync integration test: a real etcd, the CLB simulator, records
//! written the way the announcer writes them (the `fields` layout, one transaction per
//! record), and the real `lb-sync` binary with its log in a file.

#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use etcd_client::{DeleteOptions, Txn, TxnOp};
use sidekick::schema::{Layout, Record};
use testbed::clb_sim::{ClbSim, Node, RateLimits, SimConfig};
use testbed::{Daemon, Etcd};

/// The port every test record's web server publishes.
pub const PORT: u16 = 8080;

/// A simulator that answers fast: short PENDING_UPDATE, rate limits off.
pub fn quick_sim() -> SimConfig {
    SimConfig {
        pending_time: Duration::from_millis(300),
        rate_limits: RateLimits::unlimited(),
        ..SimConfig::default()
    }
}

/// etcd + simulator + a unique record prefix.
pub struct World {
    pub etcd: Etcd,
    pub sim: ClbSim,
    /// The root passed to `Record::entries` (`/t-xxxx/services`).
    pub root: String,
    /// The `--prefix` of lb-sync (`/t-xxxx/services/web`).
    pub prefix: String,
    pub client: etcd_client::Client,
}

impl World {
    pub async fn start(sim: SimConfig) -> World {
        let etcd = Etcd::start();
        let client = etcd.client().await;
        let root = format!("/{}/services", testbed::unique("t"));
        World {
            sim: ClbSim::start(sim),
            prefix: format!("{root}/web"),
            root,
            etcd,
            client,
        }
    }

    /// The record of instance `webNN` at 10.0.0.NN:PORT.
    pub fn record(n: u8) -> Record {
        Record {
            service: "web".into(),
            instance: format!("web{n:02}"),
            unit: format!("monweb@{n:02}.service"),
            host: format!("core{n:02}"),
            public_ipv4: Some([203, 0, 113, n].into()),
            private_ipv4: [10, 0, 0, n].into(),
            port: PORT,
            container_id: String::new(),
            container_name: String::new(),
        }
    }

    /// Writes records in the announcer's `fields` layout, one transaction each.
    pub async fn put(&self, ns: impl IntoIterator<Item = u8>) {
        for n in ns {
            self.put_record(&World::record(n)).await;
        }
    }

    pub async fn put_record(&self, rec: &Record) {
        let ops: Vec<TxnOp> = rec
            .entries(&self.root, Layout::Fields)
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        self.client.clone().txn(Txn::new().and_then(ops)).await.expect("txn");
    }

    /// Writes key/values in one transaction (a record as a buggy writer would leave it).
    pub async fn put_entries(&self, entries: Vec<(String, String)>) {
        let ops: Vec<TxnOp> = entries.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect();
        self.client.clone().txn(Txn::new().and_then(ops)).await.expect("txn");
    }

    /// Writes one raw key (to make a record bad).
    pub async fn put_raw(&self, key: &str, value: &str) {
        self.client.clone().put(key, value, None).await.expect("put");
    }

    /// Deletes records as the announcer withdraws them (the instance directory).
    pub async fn delete(&self, ns: impl IntoIterator<Item = u8>) {
        for n in ns {
            let key = format!("{}/web{n:02}/", self.prefix);
            self.client
                .clone()
                .delete(key, Some(DeleteOptions::new().with_prefix()))
                .await
                .expect("delete");
        }
    }

    /// Deletes every record under the prefix at once.
    pub async fn wipe(&self) {
        self.client
            .clone()
            .delete(format!("{}/", self.prefix), Some(DeleteOptions::new().with_prefix()))
            .await
            .expect("wipe");
    }

    /// The flags every test passes, quick timings included.
    pub fn args(&self) -> Vec<String> {
        [
            "--etcd-endpoints",
            &self.etcd.endpoint(),
            "--prefix",
            &self.prefix,
            "--region",
            "ORD",
            "--load-balancer-id",
            "1",
            "--username",
            "u",
            "--identity-url",
            &self.sim.identity_url(),
            "--drain",
            "1s",
            "--debounce",
            "300ms:2s",
            "--resync",
            "2s",
            "--poll",
            "100ms",
            "--log-filter",
            "info,lb_sync=debug",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Starts `lb-sync <args()> <extra> run`.
    /// Flags in `extra` that `args()` already has replace their value there.
    pub fn lb_sync(&self, extra: &[&str]) -> LbSync {
        let mut args = self.args();
        let mut i = 0;
        while i < extra.len() {
            let flag = extra[i];
            let value = extra.get(i + 1).filter(|v| !v.starts_with("--"));
            match (args.iter().position(|a| a == flag), value) {
                (Some(at), Some(v)) => {
                    args[at + 1] = (*v).to_owned();
                    i += 2;
                }
                (None, Some(v)) => {
                    args.push(flag.to_owned());
                    args.push((*v).to_owned());
                    i += 2;
                }
                (_, None) => {
                    args.push(flag.to_owned());
                    i += 1;
                }
            }
        }
        args.push("run".into());
        LbSync::start(&args)
    }

    /// The nodes of load balancer 1 as (last octet, condition). A node whose address is not
    /// exactly `10.0.0.N` or whose port is not [`PORT`] shows as octet 0, so no comparison
    /// with the records' nodes can pass by the last octet alone.
    pub fn nodes(&self) -> Vec<(u8, String)> {
        let mut v: Vec<(u8, String)> = self
            .sim
            .nodes(1)
            .iter()
            .map(|n: &Node| {
                let last: u8 = n.address.rsplit('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let exact = n.address == format!("10.0.0.{last}") && n.port == PORT;
                (if exact { last } else { 0 }, n.condition.clone())
            })
            .collect();
        v.sort();
        v
    }

    /// Waits until the load balancer holds exactly `want` (last octets), all ENABLED.
    pub async fn wait_enabled(&self, want: &[u8], within: Duration) {
        let expect: Vec<(u8, String)> = want.iter().map(|n| (*n, "ENABLED".to_owned())).collect();
        let what = format!("the load balancer holds {want:?} ENABLED");
        if let Err(e) = testbed::eventually(&what, within, async || (self.nodes() == expect).then_some(())).await {
            panic!("{e}; it holds {:?}", self.nodes());
        }
    }

    /// Calls per verb: (GET, POST, PUT, DELETE).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.sim.count("GET"),
            self.sim.count("POST"),
            self.sim.count("PUT"),
            self.sim.count("DELETE"),
        )
    }
}

/// How long a stopped process may take to exit.
pub const STOP: Duration = Duration::from_secs(15);

/// A running `lb-sync`: a [`Daemon`] (log, signal, wait, kill on drop; everything it does
/// is reachable through `Deref`) and the port of its `--listen`.
pub struct LbSync {
    daemon: Daemon,
    pub listen: u16,
}

impl Deref for LbSync {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for LbSync {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// The command with a clean environment: only the API key (start it with `testbed::spawn`
/// so it dies with the test).
pub fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-sync"));
    cmd.args(args).env_clear().env("RACKSPACE_API_KEY", "k");
    cmd
}

impl LbSync {
    /// Starts `lb-sync ARGS` (a `--listen` on a free port is inserted first).
    pub fn start(args: &[String]) -> LbSync {
        let listen = testbed::free_port();
        let mut all = vec!["--listen".to_owned(), format!("127.0.0.1:{listen}")];
        all.extend_from_slice(args);
        LbSync {
            daemon: Daemon::start("lb-sync", command(&all)),
            listen,
        }
    }

    /// The body of GET /healthz (empty when it does not answer).
    pub fn healthz(&self) -> String {
        testbed::http_get(self.listen, "/healthz").unwrap_or_default()
    }

    /// The body of GET /metrics.
    pub fn metrics(&self) -> String {
        testbed::http_get(self.listen, "/metrics").unwrap_or_default()
    }

    /// Waits until /healthz contains `needle`, and gives it.
    pub async fn wait_health(&self, needle: &str, within: Duration) -> String {
        let what = format!("/healthz says {needle:?}");
        let found = testbed::eventually(&what, within, async || {
            let h = self.healthz();
            h.contains(needle).then_some(h)
        })
        .await;
        found.unwrap_or_else(|e| self.fail(format!("{e}; it says:\n{}", self.healthz())))
    }
}

/// Runs `lb-sync ARGS` to completion: (exit status, stdout, stderr).
pub fn run_once(args: &[String]) -> (ExitStatus, String, String) {
    let out = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run lb-sync");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real announcer binary (built by `cargo build --workspace --bins`) as a [`Daemon`].
pub fn announcer(args: &[String]) -> Daemon {
    announcer_bin(&testbed::bin("announcer"), args)
}

/// Another announcer binary (an older build, to compare behaviours) as a [`Daemon`].
pub fn announcer_bin(bin: &std::path::Path, args: &[String]) -> Daemon {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_clear();
    Daemon::start("announcer", cmd)
}
