//! lb-sync: keeps a Rackspace Cloud Load Balancer in step with the live web records in
//! etcd, and refuses to do anything a buggy view of the world would regret.
//!
//! ```text
//! etcd ──watch(rev)──▶ records.rs ──Desired{nodes, complete}──▶ reconcile.rs ──plan.rs (pure)──▶ clb.rs ──HTTPS──▶ Cloud LB
//!                                                                    ▲  debounce, resync, drains      │ auth, catalog, retries,
//!                                              election.rs ──leader──┘                                ▼ wait ACTIVE, 413/422/401
//! ```
//!
//! - [`records`]: the only reader of etcd records; publishes the desired set.
//! - [`plan`]: pure; every safety rule.
//! - [`clb`]: the only code that talks HTTP to the load balancer.
//! - [`reconcile`]: the debounced, level-triggered loop.
//! - [`election`]: leadership between instances (the only etcd writes: the election key).
//! - [`health`]: `/healthz` and `/metrics`.

pub mod clb;
pub mod election;
mod error;
pub mod health;
pub mod plan;
pub mod reconcile;
pub mod records;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sidekick::etcd::EtcdArgs;
use sidekick::logging::LogArgs;
use sidekick::schema::AddressField;

pub use error::Error;

use crate::clb::{ApiKey, Clb, ClbConfig};
use crate::election::Leadership;
use crate::health::Health;
use crate::plan::{Actual, Condition, Desired, Limits, Policy, Step, WaitFor};
use crate::reconcile::{Reconciler, Timing};
use crate::records::{Builder, Source};

/// The environment variable the API key may come from.
pub const API_KEY_ENV: &str = "RACKSPACE_API_KEY";

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Keep the load balancer in step with the records until stopped.
    Run,
    /// Print the plan (adds, drains, deletes, refusals with reasons) once and exit.
    Plan,
}

/// Command-line options; every flag has an environment twin.
#[derive(Debug, clap::Parser)]
#[command(name = "lb-sync", version = env!("SIDEKICK_VERSION"), about, after_help = AFTER_HELP)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// The etcd directory of the web records (one record per instance below it).
    #[arg(long, env = "LB_SYNC_PREFIX", default_value = "/services/web", value_parser = parse_prefix)]
    pub prefix: String,

    /// The load balancer to keep in step.
    #[arg(long, env = "CLB_LOAD_BALANCER_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub load_balancer_id: u64,

    /// Its region (ORD, DFW, IAD, LON, SYD, HKG): picks the endpoint from the catalog.
    #[arg(long, env = "CLB_REGION", value_parser = parse_region)]
    pub region: String,

    /// Identity v2.0 base URL; tokens are requested at {identity-url}/tokens.
    #[arg(
        long,
        env = "CLB_IDENTITY_URL",
        default_value = "https://identity.api.rackspacecloud.com/v2.0",
        value_parser = parse_url
    )]
    pub identity_url: String,

    /// The Rackspace user name.
    #[arg(long, env = "RACKSPACE_USERNAME")]
    pub username: String,

    /// File holding the API key (first line). Otherwise the key comes from RACKSPACE_API_KEY.
    #[arg(long, env = "RACKSPACE_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Which address of a record the load balancer reaches the node at.
    #[arg(long, env = "LB_SYNC_ADDRESS_FIELD", value_enum, default_value = "private_ipv4_addr")]
    pub address_field: AddressField,

    /// A fixed node port instead of each record's `port`.
    #[arg(long, env = "LB_SYNC_NODE_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub node_port: Option<u16>,

    /// With --managed-only: the port of the nodes lb-sync manages (default: --node-port).
    #[arg(long, env = "LB_SYNC_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Touch only nodes on the managed port (or, without one, at addresses seen in records).
    #[arg(long, env = "LB_SYNC_MANAGED_ONLY")]
    pub managed_only: bool,

    /// How long a removed node drains (DRAINING) before it is deleted.
    #[arg(long, env = "LB_SYNC_DRAIN", default_value = "30s", value_parser = sidekick::duration::parse)]
    pub drain: Duration,

    /// Add new nodes as DRAINING and enable them once they report ONLINE.
    #[arg(long, env = "LB_SYNC_ADD_DRAINING")]
    pub add_draining: bool,

    /// Refuse a plan that takes more than this share of the nodes in service out (percent).
    #[arg(long, env = "LB_SYNC_MAX_REMOVE", default_value = "50%", value_parser = parse_percent)]
    pub max_remove: u8,

    /// Refuse a plan that leaves fewer nodes than this in service.
    #[arg(long, env = "LB_SYNC_MIN_NODES", default_value_t = 1)]
    pub min_nodes: usize,

    /// Lift the empty-set, --max-remove and --min-nodes refusals for one pass (never the incomplete-view one).
    #[arg(long, env = "LB_SYNC_FORCE")]
    pub force: bool,

    /// MIN:MAX: a pass starts once the records were quiet for MIN, at most MAX after the first change.
    #[arg(long, env = "LB_SYNC_DEBOUNCE", default_value = "1s:10s", value_parser = parse_debounce)]
    pub debounce: (Duration, Duration),

    /// Pass at least this often, changes or not.
    #[arg(long, env = "LB_SYNC_RESYNC", default_value = "60s", value_parser = sidekick::duration::parse_positive)]
    pub resync: Duration,

    /// Run the loop and log what would be done, without changing the load balancer.
    #[arg(long, env = "LB_SYNC_DRY_RUN")]
    pub dry_run: bool,

    /// etcd election name: several instances may run, only the leader applies.
    #[arg(long, env = "LB_SYNC_ELECTION_KEY")]
    pub election_key: Option<String>,

    /// Lease TTL of the election; a leader cut from etcd stops applying within it.
    #[arg(long, env = "LB_SYNC_ELECTION_TTL", default_value = "10s", value_parser = parse_ttl)]
    pub election_ttl: Duration,

    /// Serve /healthz and /metrics on this address (e.g. 127.0.0.1:9310).
    #[arg(long, env = "LB_SYNC_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Interval between reads while waiting for the load balancer to be ACTIVE.
    #[arg(long, env = "LB_SYNC_POLL", default_value = "2s", value_parser = sidekick::duration::parse_positive)]
    pub poll: Duration,

    /// Longest wait for the load balancer to be ACTIVE before a pass gives up.
    #[arg(long, env = "LB_SYNC_ACTIVE_TIMEOUT", default_value = "5m", value_parser = sidekick::duration::parse_positive)]
    pub active_timeout: Duration,

    /// PEM bundle of CA certificates to trust for the API instead of the system's
    /// (for images without /etc/ssl/certs).
    #[arg(long, env = "CLB_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Timeout of each API request.
    #[arg(long, env = "CLB_TIMEOUT", default_value = "30s", value_parser = sidekick::duration::parse_positive)]
    pub api_timeout: Duration,

    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// `--validate`: check this command line offline and exit.
    #[command(flatten)]
    pub validate: sidekick::validate::ValidateArgs,
}

const AFTER_HELP: &str = "\
The API key is read from --api-key-file or RACKSPACE_API_KEY, never from the command line.
Example:
  RACKSPACE_API_KEY=... lb-sync --etcd-endpoints http://127.0.0.1:2379 --prefix /services/web \\
      --region ORD --load-balancer-id 1 --username u --drain 30s run";

fn parse_prefix(s: &str) -> Result<String, String> {
    let p = sidekick::schema::normalize_prefix(s);
    if p.is_empty() {
        return Err(format!(
            "invalid prefix {s:?}: must name a directory such as /services/web"
        ));
    }
    Ok(p)
}

fn parse_region(s: &str) -> Result<String, String> {
    let r = s.trim();
    if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("invalid region {s:?}: expected a name such as ORD or DFW"));
    }
    Ok(r.to_ascii_uppercase())
}

fn parse_url(s: &str) -> Result<String, String> {
    let t = s.trim().trim_end_matches('/');
    let rest = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .ok_or_else(|| format!("invalid URL {s:?}: must start with https:// or http://"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(format!("invalid URL {s:?}: no host"));
    }
    Ok(t.to_owned())
}

fn parse_percent(s: &str) -> Result<u8, String> {
    let t = s.trim().trim_end_matches('%');
    match t.parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("invalid percentage {s:?}: expected 0-100, e.g. 50 or 50%")),
    }
}

fn parse_debounce(s: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid debounce {s:?}: expected MIN:MAX, e.g. 1s:10s"))?;
    let min = sidekick::duration::parse(a)?;
    let max = sidekick::duration::parse_positive(b)?;
    if min > max {
        return Err(format!("invalid debounce {s:?}: MIN is longer than MAX"));
    }
    Ok((min, max))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = sidekick::duration::parse(s)?;
    if d < Duration::from_secs(2) {
        return Err(format!("invalid election TTL {s:?}: must be at least 2s"));
    }
    Ok(d)
}

impl Args {
    /// The plan policy these options ask for.
    #[must_use]
    pub fn policy(&self) -> Policy {
        Policy {
            drain: self.drain,
            add_draining: self.add_draining,
            max_remove_pct: self.max_remove,
            min_nodes: self.min_nodes,
            force: self.force,
            managed_only: self.managed_only,
            managed_port: self.port.or(self.node_port),
        }
    }

    /// The records source these options name.
    #[must_use]
    pub fn source(&self) -> Source {
        Source::new(&self.prefix, self.address_field, self.node_port)
    }

    /// The API key: `--api-key-file` (first line), else `RACKSPACE_API_KEY`.
    ///
    /// # Errors
    /// [`Error::Options`] naming the file or the variable when there is no usable key.
    pub fn api_key(&self, env_key: Option<&str>) -> Result<ApiKey, Error> {
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Options(format!("cannot read API key file {}: {e}", path.display())))?;
            let key = text.lines().next().unwrap_or_default().trim();
            if key.is_empty() {
                return Err(Error::Options(format!("API key file {} is empty", path.display())));
            }
            return Ok(ApiKey::new(key));
        }
        match env_key.map(str::trim) {
            Some(k) if !k.is_empty() => Ok(ApiKey::new(k)),
            _ => Err(Error::Options(format!(
                "no API key: give --api-key-file FILE or set {API_KEY_ENV}"
            ))),
        }
    }

    fn clb_config(&self, api_key: ApiKey) -> ClbConfig {
        ClbConfig {
            identity_url: self.identity_url.clone(),
            username: self.username.clone(),
            api_key,
            region: self.region.clone(),
            load_balancer_id: self.load_balancer_id,
            request_timeout: self.api_timeout,
            poll: self.poll,
            active_timeout: self.active_timeout,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            max_retries: 6,
            ca_file: self.ca_file.clone(),
        }
    }
}

/// Runs the command.
///
/// # Errors
/// Everything that stops it, with the offending value named.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let env_key = std::env::var(API_KEY_ENV).ok();
    let key = args.api_key(env_key.as_deref())?;
    if args.validate.validate {
        let etcd = args.etcd.describe_offline()?;
        let command = match args.command {
            Command::Run if args.dry_run => "run (dry run)",
            Command::Run => "run",
            Command::Plan => "plan",
        };
        println!(
            "lb-sync: configuration OK: {command} load balancer {} in {} via {} as {} (API key given); records under {}; {etcd}; election {}",
            args.load_balancer_id,
            args.region,
            args.identity_url,
            args.username,
            args.prefix,
            args.election_key.as_deref().unwrap_or("off"),
        );
        return Ok(());
    }
    let etcd = args.etcd.resolve().await?;
    let health = Arc::new(Health::new());
    let clb = Clb::new(args.clb_config(key), health.clone())?;
    match args.command {
        Command::Plan => {
            let mut client = etcd.connect().await?;
            let text = plan_once(&args, &mut client, &clb).await?;
            print!("{text}");
            Ok(())
        }
        Command::Run => run_loop(&args, etcd, clb, health).await,
    }
}

async fn run_loop(args: &Args, etcd: sidekick::etcd::EtcdConfig, clb: Clb, health: Arc<Health>) -> anyhow::Result<()> {
    let cancel = sidekick::shutdown::on_signals().context("cannot install signal handlers")?;
    if let Some(addr) = args.listen {
        health::serve(addr, health.clone(), cancel.clone()).await?;
    }
    tracing::info!(
        lb = args.load_balancer_id,
        region = %args.region,
        prefix = %args.prefix,
        dry_run = args.dry_run,
        election = args.election_key.as_deref().unwrap_or("-"),
        "lb-sync starting"
    );
    let limits = match clb.limits().await {
        Ok(l) => l,
        Err(e) if !e.retryable() => return Err(e.into()),
        Err(e) => {
            tracing::warn!("cannot read the account limits ({e}); assuming the API defaults");
            Limits::default()
        }
    };
    tracing::info!(
        node_limit = limits.node_limit,
        batch_delete = limits.batch_delete,
        "account limits"
    );
    let client = etcd.connect_lazy().await?;
    let (tx, rx) = tokio::sync::watch::channel(Desired::default());
    let records = tokio::spawn(records::follow(client.clone(), args.source(), tx, cancel.clone()));
    let (leadership, election) = match &args.election_key {
        Some(key) => {
            let (l, task) = election::start(client.clone(), key.clone(), args.election_ttl, cancel.clone());
            (l, Some(task))
        }
        None => (Leadership::always(), None),
    };
    let timing = Timing {
        debounce_min: args.debounce.0,
        debounce_max: args.debounce.1,
        resync: args.resync,
    };
    Reconciler::new(clb, args.policy(), limits, args.dry_run, health)
        .run(rx, leadership, timing, cancel.clone())
        .await;
    if let Some(task) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), records).await;
    tracing::info!("lb-sync stopped");
    Ok(())
}

/// Reads the records and the load balancer once and renders the plan as text.
///
/// # Errors
/// etcd and API errors.
pub async fn plan_once(args: &Args, client: &mut etcd_client::Client, clb: &Clb) -> Result<String, Error> {
    use std::fmt::Write;
    let source = args.source();
    let (kvs, revision) = records::load(client, &source).await?;
    let desired = Builder::default().build(&source, &kvs, true, revision);
    let limits = match clb.limits().await {
        Ok(l) => l,
        Err(e) if !e.retryable() => return Err(e),
        Err(_) => Limits::default(),
    };
    let lb = clb.load_balancer().await?;
    let now = Instant::now();
    let drain_started = lb
        .nodes
        .iter()
        .filter(|n| n.condition == Condition::Draining)
        .map(|n| (n.id, now))
        .collect();
    let plan = plan::plan(
        &desired,
        &Actual {
            nodes: &lb.nodes,
            drain_started: &drain_started,
            now,
        },
        &limits,
        &args.policy(),
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "load balancer {} in {}: {}, {} node(s), limit {}",
        args.load_balancer_id,
        args.region,
        lb.status,
        lb.nodes.len(),
        limits.node_limit
    );
    let _ = writeln!(
        out,
        "records under {} at revision {}: {} node(s)",
        source.prefix,
        revision,
        desired.nodes.len()
    );
    for step in plan.steps() {
        match step {
            Step::Add(nodes) => {
                for n in nodes {
                    let _ = writeln!(out, "add     {} {}", n.endpoint, n.condition.as_str());
                }
            }
            Step::Enable(n) => {
                let _ = writeln!(out, "enable  node {} {}", n.id, n.endpoint);
            }
            Step::Drain(n) => {
                let _ = writeln!(
                    out,
                    "drain   node {} {} (deleted {} later)",
                    n.id,
                    n.endpoint,
                    humantime::format_duration(args.drain)
                );
            }
            Step::Delete(nodes) => {
                for n in nodes {
                    let _ = writeln!(out, "delete  node {} {}", n.id, n.endpoint);
                }
            }
        }
    }
    for w in &plan.waiting {
        match &w.what {
            WaitFor::Drain { .. } => {
                let _ = writeln!(
                    out,
                    "waiting node {} {} is draining; deleted once its drain period ends",
                    w.node.id, w.node.endpoint
                );
            }
            WaitFor::Online => {
                let _ = writeln!(
                    out,
                    "waiting node {} {} is enabled once it reports ONLINE",
                    w.node.id, w.node.endpoint
                );
            }
        }
    }
    for note in &plan.notes {
        let _ = writeln!(out, "note    {note}");
    }
    for r in &plan.refusals {
        let _ = writeln!(out, "REFUSED {r}");
    }
    if !plan.refusals.is_empty() {
        let _ = writeln!(
            out,
            "nothing above would be applied except adds (and nothing at all on an incomplete view)"
        );
    } else if plan.is_converged() && plan.notes.is_empty() {
        let _ = writeln!(out, "converged: nothing to do");
    } else if !plan.has_steps() {
        let _ = writeln!(out, "nothing to apply now");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn base() -> Vec<&'static str> {
        vec![
            "lb-sync",
            "--region",
            "ord",
            "--load-balancer-id",
            "1",
            "--username",
            "u",
        ]
    }

    fn parse(extra: &[&str]) -> Result<Args, String> {
        let mut argv = base();
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_documentation() {
        let a = parse(&["run"]).unwrap();
        assert_eq!(a.command, Command::Run);
        assert_eq!(a.region, "ORD");
        assert_eq!(a.prefix, "/services/web");
        assert_eq!(a.identity_url, "https://identity.api.rackspacecloud.com/v2.0");
        assert_eq!(a.address_field, AddressField::Private);
        assert_eq!(a.drain, Duration::from_secs(30));
        assert_eq!(a.max_remove, 50);
        assert_eq!(a.min_nodes, 1);
        assert_eq!(a.debounce, (Duration::from_secs(1), Duration::from_secs(10)));
        assert_eq!(a.resync, Duration::from_secs(60));
        assert!(!a.force && !a.dry_run && !a.managed_only);
    }

    #[test]
    fn bad_values_are_refused_naming_them() {
        let cases: &[(&[&str], &str)] = &[
            (&["--max-remove", "150", "run"], "\"150\""),
            (&["--debounce", "10s", "run"], "\"10s\""),
            (&["--debounce", "10s:1s", "run"], "MIN is longer"),
            (&["--drain", "soon", "run"], "\"soon\""),
            (&["--identity-url", "ftp://x", "run"], "\"ftp://x\""),
            (&["--election-ttl", "1s", "run"], "\"1s\""),
            (&["--node-port", "0", "run"], "0"),
            (&["--prefix", "/", "run"], "\"/\""),
        ];
        for (extra, needle) in cases {
            let err = parse(extra).unwrap_err();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
        assert!(
            Args::try_parse_from(["lb-sync", "--region", "ORD", "--username", "u", "run"]).is_err(),
            "the load balancer id is required"
        );
        let err = Args::try_parse_from([
            "lb-sync",
            "--load-balancer-id",
            "abc",
            "--region",
            "ORD",
            "--username",
            "u",
            "run",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("abc"), "{err}");
        assert_eq!(parse(&["--max-remove", "80%", "plan"]).unwrap().max_remove, 80);
        let err = Args::try_parse_from([
            "lb-sync",
            "--load-balancer-id",
            "1",
            "--region",
            "O R D",
            "--username",
            "u",
            "run",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"O R D\""), "{err}");
    }

    #[test]
    fn the_api_key_comes_from_a_file_or_the_environment_never_shown() {
        let a = parse(&["run"]).unwrap();
        assert!(a.api_key(None).unwrap_err().to_string().contains(API_KEY_ENV));
        let key = a.api_key(Some("s3cret")).unwrap();
        assert!(!format!("{key:?}").contains("s3cret"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "from-file\n").unwrap();
        let a = parse(&["--api-key-file", f.to_str().unwrap(), "run"]).unwrap();
        assert!(a.api_key(None).is_ok());
        let missing = dir.path().join("nope");
        let a = parse(&["--api-key-file", missing.to_str().unwrap(), "run"]).unwrap();
        let err = a.api_key(Some("env")).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
