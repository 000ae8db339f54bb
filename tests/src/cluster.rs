//! A cluster of N hosts on one machine: network namespaces on a private bridge, each with
//! its own address and its own member of one etcd cluster. A test places processes on a
//! host ([`Host::start`]), then kills a host ([`Cluster::kill_host`]), cuts it off from
//! the others ([`Cluster::partition`], both ways or one way) and heals it
//! ([`Cluster::heal`]).
//!
//! Layout of cluster slot `X` (a /24 of 10.250.0.0/16 that only this cluster uses):
//!
//! ```text
//!  test process (root namespace)            namespace tbcX-sw              namespace tbcX-hI
//!  tbcXg 10.250.X.1/24  ──veth──  gw ─┐
//!                                     ├── bridge br0 ──  hI ──veth──  eth0 10.250.X.(10+I)/24
//!                                     └── ...                          etcd hI on :2379/:2380
//! ```
//!
//! The bridge lives in a namespace of its own, not in the root one, because the root
//! namespace of a Docker machine filters bridged traffic (`br_netfilter` with a FORWARD
//! policy of DROP) and its rules belong to Docker, not to us. The root end of the gateway
//! veth gives the test process (and what it runs in-process: the CLB simulator, the etcd
//! observer) the address `10.250.X.1`, reachable from every host; a partition cuts a host
//! from the other hosts only, so it can still reach the load balancer at the gateway
//! ([`Cluster::isolate`] cuts that too).
//!
//! Guarantees:
//! - Only addresses of 10.250.X.0/24 are ever configured or talked to, and only interfaces
//!   and namespaces named `tbcX…` are ever created or deleted.
//! - A slot is owned through an exclusive `flock` on `/run/testbed-cluster/slot-X.lock`,
//!   held for the cluster's life: parallel test processes never share a slot, and a lock
//!   is released by the kernel when its test process dies, however it dies.
//! - Everything is torn down on drop (processes killed, namespaces and veths deleted), also
//!   when the test panics. What a killed test left behind is deleted by the next cluster
//!   that takes the same slot, before it creates anything: only a slot's owner touches its
//!   names, and [`sweep_abandoned`] (run by every start) deletes those of any slot whose lock
//!   nobody holds.
//! - Every process started on a host dies with the test process (`PR_SET_PDEATHSIG`).

#![allow(unsafe_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::daemon::{Daemon, Start};

/// The directory of the slot locks.
const LOCK_DIR: &str = "/run/testbed-cluster";
/// The etcd client port on every host.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// The etcd peer port on every host.
const ETCD_PEER_PORT: u16 = 2380;
/// The nftables table a partition adds inside a host.
const CUT_TABLE: &str = "testbed_cut";
const IP_INSTALL: &str = "sudo apt-get install -y iproute2";
const NFT_INSTALL: &str = "sudo apt-get install -y nftables";
const ETCD_INSTALL: &str = "sudo apt-get install -y etcd-server etcd-client";

/// Which traffic a partition drops, seen from the partitioned host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing goes out and nothing comes in.
    Both,
    /// Packets from the others are dropped; its own still leave.
    Inbound,
    /// Its packets to the others are dropped; theirs still arrive.
    Outbound,
}

/// One host: a network namespace with one address.
#[derive(Debug)]
pub struct Host {
    /// 0-based position in the cluster.
    index: usize,
    /// The namespace name, `tbcX-hI`.
    netns: String,
    /// The namespace, open, so that processes can enter it.
    ns: File,
    /// Its address on the cluster's bridge.
    addr: Ipv4Addr,
    /// Where the logs of the processes started on it go.
    log_dir: PathBuf,
}

impl Host {
    /// 0-based position in the cluster.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its name, `hI`: also its etcd member's name (and a good `--hostname`).
    #[must_use]
    pub fn name(&self) -> String {
        format!("h{}", self.index)
    }

    /// Its network namespace (for `ip netns exec`).
    #[must_use]
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its etcd member's client URL, `http://ADDR:2379`.
    #[must_use]
    pub fn etcd_endpoint(&self) -> String {
        format!("http://{}:{ETCD_CLIENT_PORT}", self.addr)
    }

    /// Starts `cmd` on this host (inside its network namespace); logs to `<name>.log` in
    /// the cluster's directory. Unix sockets (the Docker engine's) stay reachable: only
    /// the network is the host's own.
    #[must_use]
    pub fn start(&self, name: &str, cmd: Command) -> Daemon {
        let log = self.log_dir.join(format!("{}-{name}.log", self.name()));
        Start::new(&format!("{}/{name}", self.name()))
            .log_to(&log)
            .spawn(cmd, Some(self.ns.as_fd()))
    }

    /// Runs `f` on a thread of its own that entered this host's network namespace, so the
    /// sockets it opens are the host's (to probe reachability from a host).
    ///
    /// # Panics
    /// When the namespace cannot be entered.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let ns = self.ns.try_clone().expect("dup the namespace fd");
        let name = self.name();
        std::thread::spawn(move || {
            // SAFETY: setns only reads the descriptor; it moves this thread alone.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert!(
                rc == 0,
                "testbed: entering {name}'s namespace: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
    }

    /// Runs `program args` to completion on this host.
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let ip = crate::require_program("ip", IP_INSTALL);
        Command::new(ip)
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("testbed: running {program} on {}: {e}", self.name()))
    }
}

/// N hosts, one etcd cluster across them, and the faults a test can inject.
#[derive(Debug)]
pub struct Cluster {
    /// `X` of 10.250.X.0/24 and of every name.
    slot: u8,
    /// The exclusive lock on the slot (released by closing, also by the kernel on death).
    _lock: File,
    hosts: Vec<Host>,
    /// The etcd member of each host (`None` while stopped).
    etcd: Vec<Option<Daemon>>,
    /// `--initial-cluster` of the etcd cluster.
    initial_cluster: String,
    /// The etcd cluster token (unique, so no stray member of another cluster joins).
    token: String,
    /// Hosts killed by [`Cluster::kill_host`].
    dead: Vec<bool>,
    /// Logs and etcd data.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Creates `n` hosts (3 to 5 make sense; at most 8) and starts one etcd member on each;
    /// returns once every member is healthy.
    ///
    /// # Panics
    /// When `ip`, `nft` or `etcd` is missing (with the install command), when no slot is
    /// free, or when the etcd cluster does not become healthy (with its logs).
    #[must_use]
    pub fn start(n: usize) -> Cluster {
        assert!((1..=8).contains(&n), "testbed: a cluster has 1 to 8 hosts, not {n}");
        let _ = crate::require_program("ip", IP_INSTALL);
        let _ = crate::require_program("nft", NFT_INSTALL);
        let _ = crate::require_program("etcd", ETCD_INSTALL);
        let (slot, lock) = take_slot();
        remove_leftovers(slot);
        sweep_abandoned();
        let dir = tempfile::Builder::new()
            .prefix(&format!("testbed-cluster{slot}-"))
            .tempdir()
            .expect("temp dir");
        let mut cluster = Cluster {
            slot,
            _lock: lock,
            hosts: Vec::new(),
            etcd: Vec::new(),
            initial_cluster: String::new(),
            token: format!("tbc{slot}-{}-{:08x}", std::process::id(), rand::random::<u32>()),
            dead: vec![false; n],
            dir,
        };
        // From here on, Drop cleans up whatever was created if a step panics.
        cluster.create_network(n);
        cluster.initial_cluster = cluster
            .hosts
            .iter()
            .map(|h| format!("{}=http://{}:{ETCD_PEER_PORT}", h.name(), h.addr))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..n {
            let member = cluster.spawn_etcd(i, "new");
            cluster.etcd.push(Some(member));
        }
        cluster.wait_etcd_healthy(&(0..n).collect::<Vec<_>>(), Duration::from_secs(30));
        cluster
    }

    fn switch_ns(&self) -> String {
        format!("tbc{}-sw", self.slot)
    }

    fn gateway_link(&self) -> String {
        format!("tbc{}g", self.slot)
    }

    fn create_network(&mut self, n: usize) {
        let sw = self.switch_ns();
        let gw = self.gateway_link();
        let prefix = format!("10.250.{}", self.slot);
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        ip(&["link", "add", &gw, "type", "veth", "peer", "name", "gw", "netns", &sw]);
        ip(&["-n", &sw, "link", "set", "gw", "master", "br0", "up"]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &gw]);
        ip(&["link", "set", &gw, "up"]);
        for i in 0..n {
            let netns = format!("tbc{}-h{i}", self.slot);
            let port = format!("h{i}");
            let addr = Ipv4Addr::new(10, 250, self.slot, 10 + u8::try_from(i).expect("i < 8"));
            ip(&["netns", "add", &netns]);
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &netns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
            let ns = File::open(format!("/run/netns/{netns}"))
                .unwrap_or_else(|e| panic!("testbed: open /run/netns/{netns}: {e}"));
            self.hosts.push(Host {
                index: i,
                netns,
                ns,
                addr,
                log_dir: self.dir.path().to_owned(),
            });
        }
    }

    fn spawn_etcd(&self, i: usize, state: &str) -> Daemon {
        let h = &self.hosts[i];
        let etcd = crate::require_program("etcd", ETCD_INSTALL);
        let client = h.etcd_endpoint();
        let peer = format!("http://{}:{ETCD_PEER_PORT}", h.addr);
        let mut cmd = Command::new(etcd);
        cmd.args(["--name", &h.name()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("etcd-{}", h.name())))
            .args([
                "--listen-client-urls",
                &format!("{client},http://127.0.0.1:{ETCD_CLIENT_PORT}"),
            ])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        h.start("etcd", cmd)
    }

    fn wait_etcd_healthy(&mut self, members: &[usize], within: Duration) {
        let addrs: Vec<SocketAddr> = members
            .iter()
            .map(|&i| SocketAddr::from((self.hosts[i].addr, ETCD_CLIENT_PORT)))
            .collect();
        // Synchronous on purpose: `start` runs inside or outside a runtime.
        let healthy = crate::eventually_blocking("every etcd member reports health", within, || {
            addrs
                .iter()
                .all(|a| http_get_at(*a, "/health").is_some_and(|r| r.contains("\"health\":\"true\"")))
                .then_some(())
        });
        if let Err(e) = healthy {
            self.fail(e);
        }
    }

    /// The hosts.
    #[must_use]
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    #[must_use]
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The test process's own address on the cluster's network (the root end of the
    /// gateway veth): bind what every host must reach here (the CLB simulator).
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.slot, 1)
    }

    /// Every member's client URL.
    #[must_use]
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.hosts.iter().map(Host::etcd_endpoint).collect()
    }

    /// `--etcd-endpoints` for a process on host `i`: its own member first, then the others.
    #[must_use]
    pub fn etcd_endpoints_arg(&self, i: usize) -> String {
        let mut v = vec![self.hosts[i].etcd_endpoint()];
        v.extend(self.hosts.iter().filter(|h| h.index != i).map(Host::etcd_endpoint));
        v.join(",")
    }

    /// An etcd client of the test process over every member of a host not killed (the
    /// client balances over them; a member cut off later makes its requests time out
    /// after 2 s, so retry them with [`crate::eventually`]).
    pub async fn client(&self) -> etcd_client::Client {
        let endpoints: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| !self.dead[h.index])
            .map(Host::etcd_endpoint)
            .collect();
        let connected = crate::eventually(
            "the test connects to the cluster's etcd",
            Duration::from_secs(20),
            async || {
                let opts = etcd_client::ConnectOptions::new()
                    .with_timeout(Duration::from_secs(2))
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
                    .with_keep_alive_while_idle(true);
                etcd_client::Client::connect(endpoints.clone(), Some(opts)).await.ok()
            },
        )
        .await;
        connected.unwrap_or_else(|e| self.fail(e))
    }

    /// The index of the host whose member leads etcd, asked of the members one by one.
    pub async fn etcd_leader(&self) -> Option<usize> {
        for h in &self.hosts {
            if self.dead[h.index] {
                continue;
            }
            let opts = etcd_client::ConnectOptions::new()
                .with_timeout(Duration::from_secs(1))
                .with_connect_timeout(Duration::from_secs(1));
            let Ok(mut c) = etcd_client::Client::connect([h.etcd_endpoint()], Some(opts)).await else {
                continue;
            };
            let Ok(status) = c.status().await else { continue };
            let leader = status.leader();
            if leader == 0 {
                // This member knows no leader (an election, or it is cut off): ask another.
                continue;
            }
            let Ok(list) = c.member_list().await else { continue };
            let name = list
                .members()
                .iter()
                .find(|m| m.id() == leader)
                .map(|m| m.name().to_owned());
            return name.and_then(|n| self.hosts.iter().position(|x| x.name() == n));
        }
        None
    }

    /// The etcd member of host `i` (for its log).
    #[must_use]
    pub fn etcd_member(&self, i: usize) -> Option<&Daemon> {
        self.etcd[i].as_ref()
    }

    /// Kills every process on host `i` at once (SIGKILL to each pid in its namespace) and
    /// unplugs it from the bridge, as a host that loses power: its peers see silence, not
    /// refused connections. A killed host stays dead.
    pub fn kill_host(&mut self, i: usize) {
        self.dead[i] = true;
        ip(&["-n", &self.switch_ns(), "link", "set", &format!("h{i}"), "down"]);
        kill_all_in(&self.hosts[i].netns);
        if let Some(mut m) = self.etcd[i].take() {
            m.kill();
        }
    }

    /// Whether host `i` was killed.
    #[must_use]
    pub fn is_dead(&self, i: usize) -> bool {
        self.dead[i]
    }

    /// Stops host `i`'s etcd member (SIGKILL) and leaves the host running.
    pub fn stop_etcd(&mut self, i: usize) {
        if let Some(mut m) = self.etcd[i].take() {
            m.kill();
        }
    }

    /// Starts host `i`'s etcd member again with its data (after [`Cluster::stop_etcd`]).
    /// Returns at once: with quorum lost it cannot report healthy alone.
    pub fn start_etcd(&mut self, i: usize) {
        assert!(self.etcd[i].is_none(), "testbed: etcd on h{i} is running");
        let m = self.spawn_etcd(i, "existing");
        self.etcd[i] = Some(m);
    }

    /// Cuts host `i` from every other host (`cut` says which directions); the gateway
    /// (the test process, the load balancer) stays reachable.
    pub fn partition(&self, i: usize, cut: Cut) {
        let peers: Vec<usize> = (0..self.hosts.len()).filter(|&j| j != i).collect();
        self.partition_from(i, &peers, cut);
    }

    /// Cuts host `i` from every other host and from the gateway.
    pub fn isolate(&self, i: usize, cut: Cut) {
        let mut addrs: Vec<Ipv4Addr> = self.hosts.iter().filter(|h| h.index != i).map(|h| h.addr).collect();
        addrs.push(self.gateway());
        self.cut(i, &addrs, cut);
    }

    /// Cuts host `i` from the hosts `peers` only.
    pub fn partition_from(&self, i: usize, peers: &[usize], cut: Cut) {
        let addrs: Vec<Ipv4Addr> = peers.iter().map(|&j| self.hosts[j].addr).collect();
        self.cut(i, &addrs, cut);
    }

    fn cut(&self, i: usize, addrs: &[Ipv4Addr], cut: Cut) {
        let set = addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let mut rules = format!("table ip {CUT_TABLE} {{\n");
        if matches!(cut, Cut::Both | Cut::Inbound) {
            let _ = writeln!(
                rules,
                "  chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}"
            );
        }
        if matches!(cut, Cut::Both | Cut::Outbound) {
            let _ = writeln!(
                rules,
                "  chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}"
            );
        }
        rules.push_str("}\n");
        self.heal(i);
        self.nft(i, &rules);
    }

    /// Loads the nftables `ruleset` (`table ip NAME { ... }`) inside host `i`: for faults
    /// of a test's own (a redirect, a delay). Its tables die with the host.
    ///
    /// # Panics
    /// When nft refuses it, with nft's message.
    pub fn nft(&self, i: usize, ruleset: &str) {
        let path = self.dir.path().join(format!("h{i}-{:08x}.nft", rand::random::<u32>()));
        std::fs::write(&path, ruleset).expect("write the nft rules");
        let out = self.hosts[i].run("nft", &["-f", &path.to_string_lossy()]);
        assert!(
            out.status.success(),
            "testbed: nft -f on h{i} failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Removes any partition of host `i`.
    pub fn heal(&self, i: usize) {
        let out = self.hosts[i].run("nft", &["list", "tables"]);
        if String::from_utf8_lossy(&out.stdout).contains(CUT_TABLE) {
            let out = self.hosts[i].run("nft", &["delete", "table", "ip", CUT_TABLE]);
            assert!(
                out.status.success(),
                "testbed: healing h{i} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Fails the test with `msg` and the log excerpts of every etcd member.
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        crate::fail_with_logs(msg, self.etcd.iter().flatten());
    }

    /// The log excerpts of every etcd member (to add to a failure message).
    #[must_use]
    pub fn excerpts(&self) -> String {
        self.etcd
            .iter()
            .flatten()
            .map(Daemon::excerpt)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in self.etcd.iter_mut().flatten() {
            m.kill();
        }
        remove_leftovers(self.slot);
    }
}

/// Takes the first free slot, starting at one derived from the pid (so parallel test
/// processes rarely even try the same lock).
fn take_slot() -> (u8, File) {
    std::fs::create_dir_all(LOCK_DIR).unwrap_or_else(|e| panic!("testbed: cannot create {LOCK_DIR}: {e}"));
    let start = std::process::id() as usize;
    for k in 0..250 {
        let slot = u8::try_from(1 + (start + k) % 250).expect("slot < 256");
        let path = format!("{LOCK_DIR}/slot-{slot}.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("testbed: cannot open {path}: {e}"));
        if file.try_lock().is_ok() {
            return (slot, file);
        }
    }
    panic!("testbed: every cluster slot of 10.250.0.0/16 is taken (250 clusters at once?)");
}

/// Deletes what killed tests left in slots nobody holds now: for each slot that has a
/// namespace `tbcX-…`, takes its lock if it is free (a live cluster holds its own), removes
/// the leftovers and lets the lock go.
pub fn sweep_abandoned() {
    let list = Command::new(crate::require_program("ip", IP_INSTALL))
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let slots: std::collections::BTreeSet<u8> = list
        .lines()
        .filter_map(|l| l.strip_prefix("tbc"))
        .filter_map(|rest| rest.split_once('-'))
        .filter_map(|(slot, _)| slot.parse().ok())
        .collect();
    for slot in slots {
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{LOCK_DIR}/slot-{slot}.lock"))
        else {
            continue;
        };
        if file.try_lock().is_ok() {
            remove_leftovers(slot);
        }
    }
}

/// Deletes whatever carries the names of `slot`: processes in its namespaces, the
/// namespaces (their veths go with them) and the gateway veth. Only the slot's owner calls it.
fn remove_leftovers(slot: u8) {
    let list = Command::new(crate::require_program("ip", IP_INSTALL))
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let prefix = format!("tbc{slot}-");
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(&prefix) {
            kill_all_in(ns);
            let _ = ip_status(&["netns", "del", ns]);
        }
    }
    let gw = format!("tbc{slot}g");
    if ip_status(&["link", "show", &gw]) {
        let _ = ip_status(&["link", "del", &gw]);
    }
}

/// SIGKILLs every process in the namespace `netns` and returns once none is left (a dead
/// process leaves its namespace before its parent reaps it), or after 10 s.
fn kill_all_in(netns: &str) {
    let pids = || {
        Command::new(crate::require_program("ip", IP_INSTALL))
            .args(["netns", "pids", netns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .collect::<Vec<u32>>()
            })
            .unwrap_or_default()
    };
    let _ = crate::eventually_blocking("the leftover processes are gone", Duration::from_secs(10), || {
        let left = pids();
        for &pid in &left {
            crate::signal(pid, libc::SIGKILL);
        }
        left.is_empty().then_some(())
    });
}

/// Runs `ip ARGS`; a failure fails the test with ip's own message.
fn ip(args: &[&str]) {
    let out = Command::new(crate::require_program("ip", IP_INSTALL))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("testbed: cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "testbed: `ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `ip ARGS` quietly; whether it succeeded.
fn ip_status(args: &[&str]) -> bool {
    Command::new(crate::require_program("ip", IP_INSTALL))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A blocking HTTP/1.0 GET on `addr` (a host of a cluster, or loopback): the whole answer,
/// or `None` when nothing answers within a second or two.
#[must_use]
pub fn http_get_at(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}
