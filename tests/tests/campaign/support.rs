//! The bed of the fault campaign: a [`Cluster`], the CLB simulator at the cluster's
//! gateway, web containers on the real Docker engine each followed by an `announcer
//! container` on its host (the seed's `monweb@` pattern), and `lb-sync` instances on hosts.
//! Everything is a [`Daemon`] or a [`Container`] owned here, so it dies with the test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::Docker;
use etcd_client::GetOptions;
use futures::StreamExt;
use testbed::clb_sim::{ClbSim, RateLimits, SimConfig};
use testbed::cluster::http_get_at;
use testbed::docker::{self, Container, Spec};
use testbed::{Cluster, Daemon, SocketProxy};

/// The record prefix of the web service.
pub const PREFIX: &str = "/services/web";
/// The port every lb-sync serves `/healthz` on, at its host's address.
pub const LB_SYNC_PORT: u16 = 9310;

/// One web container and the announcer that follows it.
#[derive(Debug)]
pub struct Web {
    /// The host whose announcer follows it.
    pub host: usize,
    /// The record's instance, `hIwJ`.
    pub instance: String,
    /// The container (removed on drop).
    pub container: Container,
    /// `announcer container NAME` on the host.
    pub announcer: Daemon,
}

/// The campaign's world.
#[derive(Debug)]
pub struct Bed {
    /// Every web container and its announcer.
    pub webs: Vec<Web>,
    /// lb-sync instances: (host, daemon).
    pub lb_syncs: Vec<(usize, Daemon)>,
    /// The load balancer (load balancer 1 in ORD), bound at the gateway.
    pub sim: ClbSim,
    /// The announcers' lease TTL.
    pub ttl: Duration,
    /// Hosts whose announcers reach Docker through a cuttable proxy.
    pub docker_proxies: BTreeMap<usize, SocketProxy>,
    docker: Docker,
    image: String,
    /// Declared last: dropped after every process on its hosts.
    pub cluster: Cluster,
}

impl Bed {
    /// `hosts` hosts, the simulator (100 nodes allowed, 100 ms PENDING_UPDATE, no rate
    /// limit: the campaign is about faults, not about the API's pace).
    pub async fn start(hosts: usize, ttl: Duration) -> Bed {
        let cluster = Cluster::start(hosts);
        let sim = ClbSim::start(SimConfig {
            listen: SocketAddr::from((cluster.gateway(), 0)),
            node_limit: 100,
            pending_time: Duration::from_millis(100),
            rate_limits: RateLimits::unlimited(),
            ..SimConfig::default()
        });
        let docker = docker::connect().await;
        let image = docker::busybox_image(&docker).await;
        Bed {
            webs: Vec::new(),
            lb_syncs: Vec::new(),
            sim,
            ttl,
            docker_proxies: BTreeMap::new(),
            docker,
            image,
            cluster,
        }
    }

    /// Starts `per_host` web containers on each host of `hosts` (created a few at a time)
    /// and one announcer per container on its host.
    pub async fn add_webs(&mut self, hosts: &[usize], per_host: usize) {
        let tag = format!("tbc{}", std::process::id());
        let wanted: Vec<(usize, String)> = hosts
            .iter()
            .flat_map(|&h| (0..per_host).map(move |j| (h, format!("h{h}w{j:02}"))))
            .collect();
        let docker = self.docker.clone();
        let image = self.image.clone();
        let made: Vec<(usize, String, Container)> = futures::stream::iter(wanted)
            .map(|(h, instance)| {
                let docker = docker.clone();
                let spec = Spec::web(&image).name(&testbed::unique(&format!("{tag}-{instance}")));
                async move { (h, instance, spec.run(&docker).await) }
            })
            .buffer_unordered(6)
            .collect()
            .await;
        for (h, instance, container) in made {
            let announcer = self.announcer(h, &container.name, &instance);
            self.webs.push(Web {
                host: h,
                instance,
                container,
                announcer,
            });
        }
    }

    /// From now on, the announcers started on host `h` reach Docker through a proxy the
    /// test can cut ([`SocketProxy`]).
    pub fn proxy_docker(&mut self, h: usize) {
        self.docker_proxies
            .insert(h, SocketProxy::start("/var/run/docker.sock"));
    }

    /// Starts an announcer on host `h` for a container that does not exist yet (it waits
    /// for the name, as `monweb@` units do); returns the container's name.
    pub fn announce_future_container(&mut self, h: usize, instance: &str) -> (String, Daemon) {
        let name = testbed::unique(&format!("tbc{}-{instance}", std::process::id()));
        let d = self.announcer(h, &name, instance);
        (name, d)
    }

    /// Creates and starts the web container `name`.
    pub async fn run_web(&self, name: &str) -> Container {
        Spec::web(&self.image).name(name).run(&self.docker).await
    }

    fn announcer(&self, h: usize, container: &str, instance: &str) -> Daemon {
        let host = self.cluster.host(h);
        let addr = host.addr().to_string();
        let mut cmd = Command::new(testbed::bin("announcer"));
        cmd.env_clear()
            .args(["--etcd-endpoints", &self.cluster.etcd_endpoints_arg(h)])
            .args(["--etcd-timeout", "2s"])
            .args(["--public-ipv4", &addr, "--private-ipv4", &addr])
            .args(["--hostname", &host.name()])
            .args(["--ttl", &format!("{}s", self.ttl.as_secs())])
            .args(["--check", "none"])
            .args(["--log-filter", "info"]);
        if let Some(proxy) = self.docker_proxies.get(&h) {
            cmd.args(["--docker-host", &proxy.docker_host()]);
        }
        cmd.args(["container", container, "--service", "web", "--instance", instance]);
        host.start(&format!("announcer-{instance}"), cmd)
    }

    /// Starts lb-sync on host `h` with the campaign's quick timings and `extra` flags.
    pub fn start_lb_sync(&mut self, h: usize, extra: &[&str]) {
        self.start_lb_sync_on(h, PREFIX, extra);
    }

    /// Starts lb-sync on host `h` following the records under `prefix`.
    pub fn start_lb_sync_on(&mut self, h: usize, prefix: &str, extra: &[&str]) {
        let host = self.cluster.host(h);
        let mut cmd = Command::new(testbed::bin("lb-sync"));
        cmd.env_clear()
            .env("RACKSPACE_API_KEY", "k")
            .args(["--etcd-endpoints", &self.cluster.etcd_endpoints_arg(h)])
            .args(["--etcd-timeout", "2s"])
            .args(["--prefix", prefix, "--region", "ORD", "--load-balancer-id", "1"])
            .args(["--username", "u", "--identity-url", &self.sim.identity_url()])
            .args([
                "--drain",
                "1s",
                "--debounce",
                "200ms:2s",
                "--resync",
                "2s",
                "--poll",
                "100ms",
            ])
            .args(["--listen", &format!("{}:{LB_SYNC_PORT}", host.addr())])
            .args(["--log-filter", "info,lb_sync=debug"])
            .args(extra)
            .arg("run");
        let d = host.start("lb-sync", cmd);
        self.lb_syncs.push((h, d));
    }

    /// `/healthz` of the lb-sync on host `h` (status line included; empty when silent).
    pub fn healthz(&self, h: usize) -> String {
        http_get_at(
            SocketAddr::from((self.cluster.host(h).addr(), LB_SYNC_PORT)),
            "/healthz",
        )
        .unwrap_or_default()
    }

    /// `/healthz` of the lb-sync on host `h`: the HTTP status and the JSON body.
    pub fn health(&self, h: usize) -> Option<(u16, serde_json::Value)> {
        let answer = self.healthz(h);
        let status = answer.split_whitespace().nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n")?.1;
        Some((status, serde_json::from_str(body).ok()?))
    }

    /// The value of the metric line `name` (labels included) of the lb-sync on host `h`.
    pub fn metric(&self, h: usize, name: &str) -> Option<f64> {
        let answer = http_get_at(
            SocketAddr::from((self.cluster.host(h).addr(), LB_SYNC_PORT)),
            "/metrics",
        )?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The instances whose complete record is in etcd now, with the host that owns each;
    /// `None` when etcd does not answer within a second.
    pub async fn records(&self, client: &mut etcd_client::Client) -> Option<BTreeMap<String, String>> {
        let read = client.get(format!("{PREFIX}/"), Some(GetOptions::new().with_prefix()));
        let resp = tokio::time::timeout(Duration::from_secs(1), read).await.ok()?.ok()?;
        let mut hosts = BTreeMap::new();
        for kv in resp.kvs() {
            let key = kv.key_str().unwrap_or_default();
            if let Some(instance) = key
                .strip_prefix(&format!("{PREFIX}/"))
                .and_then(|rest| rest.strip_suffix("/host"))
            {
                hosts.insert(instance.to_owned(), kv.value_str().unwrap_or_default().to_owned());
            }
        }
        Some(hosts)
    }

    /// The load balancer's nodes: address -> conditions of its nodes.
    pub fn nodes_by_address(&self) -> BTreeMap<Ipv4Addr, Vec<String>> {
        let mut m: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        for n in self.sim.nodes(1) {
            if let Ok(a) = n.address.parse() {
                m.entry(a).or_default().push(n.condition);
            }
        }
        m
    }

    /// The instances of host `h`.
    pub fn instances_of(&self, h: usize) -> BTreeSet<String> {
        self.webs
            .iter()
            .filter(|w| w.host == h)
            .map(|w| w.instance.clone())
            .collect()
    }

    /// Fails with `msg` and the logs of etcd, every lb-sync and the first announcer of each host.
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        let mut seen = BTreeSet::new();
        let firsts = self.webs.iter().filter(|w| seen.insert(w.host)).map(|w| &w.announcer);
        let lbs = self.lb_syncs.iter().map(|(_, d)| d);
        testbed::fail_with_logs(format!("{msg}\n{}", self.cluster.excerpts()), lbs.chain(firsts));
    }

    /// Removes every web container at once (a drop removes them one by one).
    pub async fn remove_webs(&self) {
        futures::future::join_all(self.webs.iter().map(|w| w.container.remove())).await;
    }
}

/// One look at the world.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// instance -> host, or `None` when etcd did not answer.
    pub records: Option<BTreeMap<String, String>>,
    /// address -> conditions of its nodes.
    pub nodes: BTreeMap<Ipv4Addr, Vec<String>>,
}

impl Bed {
    /// Looks at the records and the load balancer now.
    pub async fn sample(&self, client: &mut etcd_client::Client) -> Sample {
        let at = Instant::now();
        let records = self.records(client).await;
        Sample {
            at,
            records,
            nodes: self.nodes_by_address(),
        }
    }

    /// Samples every 100 ms into `samples` until `done` holds for a sample; returns the
    /// time from `since` to that sample.
    pub async fn watch_until(
        &self,
        client: &mut etcd_client::Client,
        samples: &mut Vec<Sample>,
        since: Instant,
        what: &str,
        within: Duration,
        done: impl Fn(&Sample) -> bool,
    ) -> Duration {
        let deadline = Instant::now() + within;
        loop {
            let s = self.sample(client).await;
            let hit = done(&s);
            let at = s.at;
            samples.push(s);
            if hit {
                return at - since;
            }
            if Instant::now() >= deadline {
                self.fail(format!("{what} did not happen within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100).saturating_sub(at.elapsed())).await;
        }
    }
}

/// For each instance of `watched`, the longest time it was missing from the records
/// (from the first sample without it to the next one with it, or to the last sample),
/// counting only samples where etcd answered. Returns (longest gap, instance, how many
/// instances were ever missing).
pub fn longest_gap(samples: &[Sample], watched: &BTreeSet<String>) -> (Duration, Option<String>, usize) {
    let mut longest = (Duration::ZERO, None);
    let mut ever = BTreeSet::new();
    for inst in watched {
        let mut missing_since: Option<Instant> = None;
        for s in samples {
            let Some(records) = &s.records else { continue };
            match (records.contains_key(inst), missing_since) {
                (false, None) => {
                    missing_since = Some(s.at);
                    ever.insert(inst.clone());
                }
                (true, Some(since)) => {
                    if s.at - since > longest.0 {
                        longest = (s.at - since, Some(inst.clone()));
                    }
                    missing_since = None;
                }
                _ => {}
            }
        }
        if let (Some(since), Some(last)) = (missing_since, samples.last())
            && last.at - since > longest.0
        {
            longest = (last.at - since, Some(inst.clone()));
        }
    }
    (longest.0, longest.1, ever.len())
}

/// The longest stretch during which etcd did not answer the sampler.
pub fn longest_unreadable(samples: &[Sample]) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for s in samples {
        match (&s.records, since) {
            (None, None) => since = Some(s.at),
            (Some(_), Some(t)) => {
                longest = longest.max(s.at - t);
                since = None;
            }
            _ => {}
        }
    }
    longest
}

/// One change request (POST, PUT, DELETE) the load balancer received, and from which host.
#[derive(Debug, Clone)]
pub struct Change {
    /// When its first bytes reached the tap.
    pub at: Instant,
    /// The host that sent it.
    pub host: usize,
    /// `POST`, `PUT` or `DELETE`.
    pub method: String,
}

/// Records, per host, the change requests sent to the simulator: each tapped host's
/// connections to the simulator are redirected (nftables DNAT inside the host) to a proxy
/// of the test process that notes the request line and forwards the bytes unchanged.
#[derive(Debug, Default)]
pub struct Tap {
    changes: std::sync::Arc<std::sync::Mutex<Vec<Change>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Tap {
    /// Every change request so far, in order of arrival.
    pub fn changes(&self) -> Vec<Change> {
        let mut v = self.changes.lock().unwrap().clone();
        v.sort_by_key(|c| c.at);
        v
    }

    /// Routes host `h`'s traffic to the simulator through the recording proxy.
    pub async fn attach(&mut self, bed: &Bed, h: usize) {
        let sim = bed.sim.addr();
        let listener = tokio::net::TcpListener::bind((bed.cluster.gateway(), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let changes = self.changes.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let changes = changes.clone();
                tokio::spawn(forward(client, sim, h, changes));
            }
        }));
        let rules = format!(
            "table ip testbed_tap {{\n  chain out {{\n    type nat hook output priority -100; policy accept;\n    \
             ip daddr {} tcp dport {} dnat to {}:{port}\n  }}\n}}\n",
            sim.ip(),
            sim.port(),
            bed.cluster.gateway()
        );
        bed.cluster.nft(h, &rules);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn forward(
    mut client: tokio::net::TcpStream,
    sim: SocketAddr,
    host: usize,
    changes: std::sync::Arc<std::sync::Mutex<Vec<Change>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(sim).await else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = tokio::io::split(server);
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            // A request's head arrives in one write; a change starts with its method.
            for method in ["POST", "PUT", "DELETE"] {
                if buf[..n].starts_with(format!("{method} /v1.0/").as_bytes()) {
                    changes.lock().unwrap().push(Change {
                        at: Instant::now(),
                        host,
                        method: method.to_owned(),
                    });
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = tokio::io::copy(&mut sr, &mut cw);
    let _ = tokio::join!(up, down);
}

/// Whether two instances ever applied at once, judged from the change requests: the
/// senders must take turns in one block each (`a a a b b b`), never interleave
/// (`a b a`). Returns the hosts in the order their blocks came, or the first interleaving.
///
/// # Errors
/// A message naming the change that came from an instance after another had taken over.
pub fn one_applier_at_a_time(changes: &[Change]) -> Result<Vec<usize>, String> {
    let mut blocks: Vec<usize> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        if blocks.last() == Some(&c.host) {
            continue;
        }
        if blocks.contains(&c.host) {
            return Err(format!(
                "change #{i} ({} from h{}) came after h{} had taken over: two instances applied",
                c.method,
                c.host,
                blocks.last().copied().unwrap_or_default()
            ));
        }
        blocks.push(c.host);
    }
    Ok(blocks)
}
