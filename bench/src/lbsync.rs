//! Benchmark 5: lb-sync against the Cloud Load Balancers simulator.
//!
//! The simulator keeps a load balancer `PENDING_UPDATE` for 1 s after every accepted
//! change, with the real API's rate limits, node limit (25) and bulk-delete limit (10).
//! One lb-sync process (`--drain 1s`, `--max-remove 90`, every other option at its
//! default) follows records written the way the announcer writes them. Three scenarios,
//! each timed from the last etcd write to the moment the simulator holds exactly the
//! desired nodes, all ENABLED, with its API calls counted per verb:
//!
//! - `scale_0_to_10`: ten records appear;
//! - `scale_10_to_3`: seven of them are withdrawn (drain, then delete);
//! - `churn_N`: N random changes (a record of a pool of twelve appears or is withdrawn,
//!   0-1.5 s apart) while three records stay.
//!
//! The minimum number of calls the API allows to go from the load balancer before a
//! scenario to the one after is `ceil(adds / node limit)` POSTs, one PUT (DRAINING) per
//! removed node and `ceil(removes / 10)` DELETEs ([`min_calls`]).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use etcd_client::{DeleteOptions, Txn, TxnOp};
use sidekick::schema::{Layout, Record};
use testbed::clb_sim::{ClbSim, SimConfig};
use testbed::{Daemon, Start};

use crate::Ctx;
use crate::summary::Section;

/// The port of every record (and node).
const PORT: u16 = 8080;

/// Churn changes are 0 to this many milliseconds apart: gaps over lb-sync's 1 s debounce
/// happen, so it acts on intermediate states, as it would in life.
const CHURN_GAP_MS: u64 = 1500;

/// Calls per verb.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// POST (add nodes).
    pub post: usize,
    /// PUT (change one node: DRAINING, ENABLED).
    pub put: usize,
    /// DELETE (bulk delete).
    pub delete: usize,
}

impl Calls {
    /// Total change calls.
    #[must_use]
    pub fn total(&self) -> usize {
        self.post + self.put + self.delete
    }
}

/// The fewest change calls that take a load balancer from one node set to another:
/// `adds` new nodes and `removes` nodes drained then deleted.
#[must_use]
pub fn min_calls(adds: usize, removes: usize, node_limit: usize, batch_delete: usize) -> Calls {
    Calls {
        post: adds.div_ceil(node_limit.max(1)),
        put: removes,
        delete: removes.div_ceil(batch_delete.max(1)),
    }
}

/// Calls beyond the minimum, verb by verb (a verb under its minimum does not offset another).
#[must_use]
pub fn over_min(actual: Calls, min: Calls) -> usize {
    actual.post.saturating_sub(min.post) + actual.put.saturating_sub(min.put) + actual.delete.saturating_sub(min.delete)
}

/// The record of instance `webNN` at 10.0.0.NN.
fn record(n: u8) -> Record {
    Record {
        service: "web".into(),
        instance: format!("web{n:02}"),
        unit: format!("monweb@{n:02}.service"),
        host: "core01".into(),
        public_ipv4: Some([203, 0, 113, n].into()),
        private_ipv4: [10, 0, 0, n].into(),
        port: PORT,
        container_id: String::new(),
        container_name: String::new(),
    }
}

async fn put(client: &mut etcd_client::Client, n: u8) -> anyhow::Result<()> {
    let ops: Vec<TxnOp> = record(n)
        .entries("/services", Layout::Fields)
        .into_iter()
        .map(|(k, v)| TxnOp::put(k, v, None))
        .collect();
    client.txn(Txn::new().and_then(ops)).await.context("write a record")?;
    Ok(())
}

async fn withdraw(client: &mut etcd_client::Client, n: u8) -> anyhow::Result<()> {
    client
        .delete(
            format!("/services/web/web{n:02}/"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .context("withdraw a record")?;
    Ok(())
}

struct Scene {
    sim: ClbSim,
    lb: Daemon,
    listen: u16,
}

impl Scene {
    fn healthz(&self) -> String {
        testbed::http_get(self.listen, "/healthz").unwrap_or_default()
    }

    /// The load balancer's nodes as (last octet, condition).
    fn nodes(&self) -> Vec<(u8, String)> {
        let mut v: Vec<(u8, String)> = self
            .sim
            .nodes(1)
            .into_iter()
            .map(|n| {
                let last = n.address.rsplit('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                (last, n.condition)
            })
            .collect();
        v.sort();
        v
    }

    fn holds(&self, want: &BTreeSet<u8>) -> bool {
        let expect: Vec<(u8, String)> = want.iter().map(|n| (*n, "ENABLED".to_owned())).collect();
        self.nodes() == expect
    }

    fn calls(&self) -> (usize, Calls, usize) {
        (
            self.sim.count("GET"),
            Calls {
                post: self.sim.count("POST"),
                put: self.sim.count("PUT"),
                delete: self.sim.count("DELETE"),
            },
            self.sim.auth_calls(),
        )
    }

    async fn wait_health(&mut self, needle: &str, within: Duration) -> anyhow::Result<()> {
        let what = format!("lb-sync reports {needle}");
        let found = testbed::eventually(&what, within, async || {
            if let Some(status) = self.lb.try_exit() {
                return Some(Err(status));
            }
            self.healthz().contains(needle).then_some(Ok(()))
        })
        .await;
        match found {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => anyhow::bail!("lb-sync exited ({status})\n{}", self.lb.excerpt()),
            Err(e) => anyhow::bail!("{e}; /healthz: {}\n{}", self.healthz(), self.lb.excerpt()),
        }
    }
}

/// One scenario: apply `change`, time until the LB holds `want`, count the calls.
async fn scenario(
    scene: &mut Scene,
    section: &mut Section,
    name: &str,
    before: &BTreeSet<u8>,
    want: &BTreeSet<u8>,
    changed_at: Instant,
) -> anyhow::Result<()> {
    let within = Duration::from_secs(120);
    let deadline = changed_at + within;
    let converged_at = loop {
        if scene.holds(want) {
            break Instant::now();
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{name}: the load balancer never held {want:?}; it holds {:?}\nlog:\n{}",
                scene.nodes(),
                scene.lb.excerpt()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Every call of the scenario is in once lb-sync itself says it converged.
    scene.wait_health("\"converged\"", Duration::from_secs(30)).await?;
    let (get, calls, auth) = scene.calls();
    let adds = want.difference(before).count();
    let removes = before.difference(want).count();
    let min = min_calls(adds, removes, 25, 10);
    section.add(
        &format!("{name}_converge_ms"),
        (converged_at - changed_at).as_secs_f64() * 1000.0,
    );
    section.add(&format!("{name}_get"), get as f64);
    section.add(&format!("{name}_post"), calls.post as f64);
    section.add(&format!("{name}_put"), calls.put as f64);
    section.add(&format!("{name}_delete"), calls.delete as f64);
    section.add(&format!("{name}_auth"), auth as f64);
    section.add(&format!("{name}_min_calls"), min.total() as f64);
    section.add(&format!("{name}_calls_over_min"), over_min(calls, min) as f64);
    eprintln!(
        "bench:   {name}: converged in {:.0} ms; POST {} PUT {} DELETE {} (minimum {}), GET {}",
        (converged_at - changed_at).as_secs_f64() * 1000.0,
        calls.post,
        calls.put,
        calls.delete,
        min.total(),
        get
    );
    scene.sim.clear_calls();
    Ok(())
}

/// Runs benchmark 5.
///
/// # Errors
/// When etcd or lb-sync fail, or the load balancer does not converge within 2 minutes.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let etcd = testbed::Etcd::start();
    let mut client = etcd.client().await;
    let sim = ClbSim::start(SimConfig {
        pending_time: Duration::from_secs(1),
        ..SimConfig::default()
    });
    let listen = testbed::free_port();
    let log = ctx.log("lb-sync.log");
    let mut cmd = Command::new(&ctx.lb_sync);
    cmd.args(["--etcd-endpoints", &etcd.endpoint()])
        .args([
            "--prefix",
            "/services/web",
            "--region",
            "ORD",
            "--load-balancer-id",
            "1",
        ])
        .args(["--username", "u", "--identity-url", &sim.identity_url()])
        .args(["--drain", "1s", "--max-remove", "90"])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .arg("run")
        .env_clear()
        .env("RACKSPACE_API_KEY", "k");
    let lb = Start::new("lb-sync")
        .log_to(&log)
        .try_start(cmd)
        .context("start lb-sync")?;
    let mut scene = Scene { sim, lb, listen };
    scene.wait_health("\"converged\"", Duration::from_secs(30)).await?;
    scene.sim.clear_calls();

    let mut section = Section::new("lb_sync");
    let empty = BTreeSet::new();
    let ten: BTreeSet<u8> = (1..=10).collect();
    for n in &ten {
        put(&mut client, *n).await?;
    }
    scenario(&mut scene, &mut section, "scale_0_to_10", &empty, &ten, Instant::now()).await?;

    let three: BTreeSet<u8> = (1..=3).collect();
    for n in ten.difference(&three) {
        withdraw(&mut client, *n).await?;
    }
    scenario(&mut scene, &mut section, "scale_10_to_3", &ten, &three, Instant::now()).await?;

    let churn = ctx.settings.churn;
    let pool: Vec<u8> = (4..=15).collect();
    let mut desired = three.clone();
    for i in 0..churn {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..CHURN_GAP_MS))).await;
        }
        let n = pool[rand::random_range(0..pool.len())];
        if desired.remove(&n) {
            withdraw(&mut client, n).await?;
        } else {
            desired.insert(n);
            put(&mut client, n).await?;
        }
    }
    let last_change = Instant::now();
    let name = format!("churn_{churn}");
    scenario(&mut scene, &mut section, &name, &three, &desired, last_change).await?;

    section.note(
        "simulator: PENDING_UPDATE 1 s after each change, the real API's rate limits, node limit 25, bulk delete 10; \
         lb-sync --drain 1s --max-remove 90, other options at their defaults (debounce 1s:10s, poll 2s); \
         converge = last etcd write -> the simulator holds exactly the desired nodes, all ENABLED; \
         calls_over_min counts POST/PUT/DELETE beyond ceil(adds/25) + removes + ceil(removes/10), any answer",
    );
    section.note(format!(
        "{name}: {churn} random appear/withdraw changes of 12 records, 0-{CHURN_GAP_MS} ms apart, beside 3 that \
         stay; its minimum counts only the net change, so nodes added and removed on the way show as calls over it"
    ));
    let _ = scene.lb.terminate_blocking(Duration::from_secs(10));
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fewest_calls_the_api_allows() {
        let cases = [
            // (adds, removes) -> (post, put, delete)
            ((0, 0), (0, 0, 0)),
            ((10, 0), (1, 0, 0)),
            ((25, 0), (1, 0, 0)),
            ((26, 0), (2, 0, 0)),
            ((0, 7), (0, 7, 1)),
            ((0, 10), (0, 10, 1)),
            ((0, 11), (0, 11, 2)),
            ((3, 21), (1, 21, 3)),
        ];
        for ((adds, removes), (post, put, delete)) in cases {
            assert_eq!(
                min_calls(adds, removes, 25, 10),
                Calls { post, put, delete },
                "{adds} adds, {removes} removes"
            );
        }
        assert_eq!(min_calls(0, 7, 25, 10).total(), 8);
    }

    #[test]
    fn calls_over_the_minimum_are_counted_per_verb() {
        let min = min_calls(0, 7, 25, 10);
        let exact = Calls {
            post: 0,
            put: 7,
            delete: 1,
        };
        assert_eq!(over_min(exact, min), 0);
        let retried = Calls {
            post: 0,
            put: 9,
            delete: 2,
        };
        assert_eq!(over_min(retried, min), 3);
        // A missing DELETE does not hide an extra POST.
        let odd = Calls {
            post: 1,
            put: 7,
            delete: 0,
        };
        assert_eq!(over_min(odd, min), 1);
    }

    #[test]
    fn records_land_where_lb_sync_reads_them() {
        let keys: Vec<String> = record(7)
            .entries("/services", Layout::Fields)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(keys.iter().all(|k| k.starts_with("/services/web/web07/")), "{keys:?}");
        assert!(record(7).entries("/services", Layout::Fields).contains(&(
            "/services/web/web07/private_ipv4_addr".to_owned(),
            "10.0.0.7".to_owned()
        )));
    }
}
