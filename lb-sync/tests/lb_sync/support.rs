//! The scene of every lb-sync integration test: a real etcd, the CLB simulator, records
//! written the way the announcer writes them (the `fields` layout, one transaction per
//! record), and the real `lb-sync` binary with its log in a file.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{DeleteOptions, Txn, TxnOp};
use sidekick::schema::{Layout, Record};
use testbed::Etcd;
use testbed::clb_sim::{ClbSim, Node, RateLimits, SimConfig};

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
        let ok = eventually(within, || (self.nodes() == expect).then_some(())).await;
        assert!(
            ok.is_some(),
            "load balancer never held {want:?} ENABLED; it holds {:?}",
            self.nodes()
        );
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

/// A running `lb-sync` process; killed on drop.
pub struct LbSync {
    child: Option<Child>,
    log: PathBuf,
    pub listen: u16,
    _dir: tempfile::TempDir,
}

/// The command with a clean environment: only the API key (start it with `testbed::spawn`
/// so it dies with the test).
pub fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb-sync"));
    cmd.args(args)
        .env_clear()
        .env("RACKSPACE_API_KEY", "k")
        .stdin(Stdio::null());
    cmd
}

impl LbSync {
    /// Starts `lb-sync ARGS` (a `--listen` on a free port is inserted first).
    pub fn start(args: &[String]) -> LbSync {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("lb-sync.log");
        let file = std::fs::File::create(&log).expect("log file");
        let listen = testbed::free_port();
        let mut all = vec!["--listen".to_owned(), format!("127.0.0.1:{listen}")];
        all.extend_from_slice(args);
        let mut cmd = command(&all);
        cmd.stdout(Stdio::null()).stderr(Stdio::from(file));
        let child = testbed::spawn(cmd).expect("spawn lb-sync");
        LbSync {
            child: Some(child),
            log,
            listen,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The body of GET /healthz (empty when it does not answer).
    pub fn healthz(&self) -> String {
        testbed::http_get(self.listen, "/healthz").unwrap_or_default()
    }

    /// The body of GET /metrics.
    pub fn metrics(&self) -> String {
        testbed::http_get(self.listen, "/metrics").unwrap_or_default()
    }

    /// Waits until /healthz contains `needle`.
    pub async fn wait_health(&self, needle: &str, within: Duration) -> String {
        let found = eventually(within, || {
            let h = self.healthz();
            h.contains(needle).then_some(h)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "/healthz never contained {needle:?}; it says:\n{}\nlog:\n{}",
                self.healthz(),
                self.log()
            )
        })
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, within: Duration) {
        let found = eventually(within, || self.log().contains(needle).then_some(())).await;
        assert!(found.is_some(), "the log never contained {needle:?}:\n{}", self.log());
    }

    /// Sends `sig` and waits for the exit.
    pub async fn stop(&mut self, sig: i32) -> ExitStatus {
        testbed::signal(self.pid(), sig);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "lb-sync did not exit:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LbSync {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `check` every 50 ms until it gives `Some` or `within` passes.
pub async fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// The real announcer binary (built by `cargo build --workspace --bins`), killed on drop.
pub struct Announcer {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Announcer {
    pub fn start(args: &[String]) -> Announcer {
        Announcer::start_bin(&testbed::bin("announcer"), args)
    }

    /// Starts another announcer binary (an older build, to compare behaviours).
    pub fn start_bin(bin: &std::path::Path, args: &[String]) -> Announcer {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("announcer.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        Announcer {
            child: testbed::spawn(cmd).expect("spawn announcer"),
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
