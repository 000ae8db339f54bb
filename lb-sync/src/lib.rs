//! lb-sync: keeps a load balancer (Rackspace Cloud Load Balancers, or HAProxy through its
//! Runtime API) in step with the live web records in etcd, and refuses to do anything a
//! buggy view of the world would regret.
//!
//! ```text
//! etcd ──watch(rev)──▶ records.rs ──Desired{nodes, complete}──▶ reconcile.rs ──plan.rs (pure)──▶ provider.rs ─┬─ clb.rs ──HTTPS──▶ Cloud LB
//!                                                                    ▲  debounce, resync, drains                 └─ haproxy.rs ──Runtime API──▶ HAProxy
//!                                              election.rs ──leader──┘
//! ```
//!
//! - [`args`]: the command-line options.
//! - [`records`]: the only reader of etcd records; publishes the desired set.
//! - [`plan`]: pure; every safety rule, the same for both providers.
//! - [`provider`]: maps plan steps onto an API: [`clb`] (the only code that talks HTTP to
//!   a load balancer) or [`haproxy`] (the only code that talks to HAProxy).
//! - [`reconcile`]: the debounced, level-triggered loop.
//! - [`election`]: leadership between instances (the only etcd writes: the election key).
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`plan_json`]: `lb-sync plan --output json`.

pub mod args;
pub mod clb;
pub mod election;
mod error;
pub mod haproxy;
pub mod health;
pub mod plan;
pub mod plan_json;
pub mod provider;
pub mod reconcile;
pub mod records;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sidekick::notify::Notifier;

pub use args::{API_KEY_ENV, Args, Command, Output, ProviderKind};
pub use error::Error;

use crate::clb::{Clb, LbStatus};
use crate::election::Leadership;
use crate::haproxy::HaProxy;
use crate::health::Health;
use crate::plan::{Actual, Condition, Desired, Limits, Plan, Report};
use crate::provider::Provider;
use crate::reconcile::{Reconciler, Timing};
use crate::records::Builder;

/// Runs the command.
///
/// # Errors
/// Everything that stops it, with the offending value named.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.validate.validate {
        println!("{}", validate(&args)?);
        return Ok(());
    }
    let etcd = args.etcd.resolve().await?;
    let health = Arc::new(Health::new());
    let provider = provider(&args, health.clone())?;
    match args.command {
        Command::Plan { output } => {
            let mut client = etcd.connect().await?;
            let text = plan_once(&args, &mut client, &provider, output).await?;
            print!("{text}");
            Ok(())
        }
        Command::Run => run_loop(&args, etcd, provider, health).await,
    }
}

/// The provider the options name.
fn provider(args: &Args, health: Arc<Health>) -> Result<Provider, Error> {
    Ok(match args.provider {
        ProviderKind::Rackspace => {
            let env_key = std::env::var(API_KEY_ENV).ok();
            let key = args.api_key(env_key.as_deref())?;
            Provider::Rackspace(Box::new(Clb::new(args.clb_config(key)?, health)?))
        }
        ProviderKind::HaProxy => Provider::HaProxy(HaProxy::new(args.haproxy_config()?, health)),
    })
}

/// `--validate`: the line that says what the command line would do.
fn validate(args: &Args) -> Result<String, Error> {
    let etcd = args.etcd.describe_offline()?;
    let command = match args.command {
        Command::Run if args.dry_run => "run (dry run)",
        Command::Run => "run",
        Command::Plan { .. } => "plan",
    };
    let how = match args.provider {
        ProviderKind::Rackspace => {
            let env_key = std::env::var(API_KEY_ENV).ok();
            args.api_key(env_key.as_deref())?;
            format!(
                " via {} as {} (API key given)",
                args.identity_url,
                args.username.as_deref().unwrap_or("?")
            )
        }
        ProviderKind::HaProxy => String::new(),
    };
    Ok(format!(
        "lb-sync: configuration OK: {command} {}{how}; records under {}; {etcd}; election {}",
        args.target(),
        args.prefix,
        args.election_key.as_deref().unwrap_or("off"),
    ))
}

async fn run_loop(
    args: &Args,
    etcd: sidekick::etcd::EtcdConfig,
    provider: Provider,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let cancel = sidekick::shutdown::on_signals().context("cannot install signal handlers")?;
    if let Some(addr) = args.listen {
        health::serve(addr, health.clone(), cancel.clone()).await?;
    }
    tracing::info!(
        lb = %args.target(),
        prefix = %args.prefix,
        dry_run = args.dry_run,
        election = args.election_key.as_deref().unwrap_or("-"),
        "lb-sync starting"
    );
    let limits = match provider.limits().await {
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
        "limits"
    );
    let notifier = Notifier::from_env();
    let watchdog = tokio::spawn(notifier.clone().watchdog(cancel.child_token()));
    let client = etcd.connect_lazy().await?;
    let (tx, rx) = tokio::sync::watch::channel(Desired::default());
    let records = tokio::spawn(records::follow(
        client.clone(),
        args.source(),
        tx,
        cancel.clone(),
        notifier.heartbeat("records"),
    ));
    let (leadership, election) = match &args.election_key {
        Some(key) => {
            let (l, task) = election::start(
                client.clone(),
                key.clone(),
                args.election_ttl,
                cancel.clone(),
                notifier.heartbeat("election"),
            );
            (l, Some(task))
        }
        None => (Leadership::always(), None),
    };
    let timing = Timing {
        debounce_min: args.debounce.0,
        debounce_max: args.debounce.1,
        resync: args.resync,
    };
    // One read may wait for ACTIVE (--active-timeout) after requests bounded by their own
    // timeouts: the reconcile loop is stuck only past that.
    let busy_limit = args.active_timeout + Duration::from_secs(120);
    Reconciler::new(provider, args.policy(), limits, args.dry_run, health)
        .with_notifier(notifier.clone(), busy_limit)
        .run(rx, leadership, timing, cancel.clone())
        .await;
    notifier.stopping();
    if let Some(task) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), records).await;
    watchdog.abort();
    tracing::info!("lb-sync stopped");
    Ok(())
}

/// What `lb-sync plan` prints: the load balancer, the records, then the plan.
#[derive(Debug)]
pub struct PlanOnce<'a> {
    /// What the load balancer is (`load balancer 1 in ORD`, `HAProxy backend web via ...`).
    pub target: String,
    /// Its status.
    pub status: &'a LbStatus,
    /// Nodes on it.
    pub nodes: usize,
    /// Its node limit.
    pub node_limit: usize,
    /// The records' prefix.
    pub prefix: &'a str,
    /// The etcd revision read.
    pub revision: i64,
    /// Nodes the records ask for.
    pub desired: usize,
    /// The plan and the drain period.
    pub report: Report<'a>,
}

impl fmt::Display for PlanOnce<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = if self.node_limit == usize::MAX {
            "none".to_owned()
        } else {
            self.node_limit.to_string()
        };
        writeln!(
            f,
            "{}: {}, {} node(s), limit {limit}",
            self.target, self.status, self.nodes
        )?;
        writeln!(
            f,
            "records under {} at revision {}: {} node(s)",
            self.prefix, self.revision, self.desired
        )?;
        write!(f, "{}", self.report)
    }
}

/// Reads the records and the load balancer once and renders the plan as text or JSON.
///
/// # Errors
/// etcd and API errors.
pub async fn plan_once(
    args: &Args,
    client: &mut etcd_client::Client,
    provider: &Provider,
    output: Output,
) -> Result<String, Error> {
    let source = args.source();
    let (kvs, revision) = records::load(client, &source).await?;
    let desired = Builder::default().build(&source, &kvs, true, revision);
    let limits = match provider.limits().await {
        Ok(l) => l,
        Err(e) if !e.retryable() => return Err(e),
        Err(_) => Limits::default(),
    };
    let lb = provider.read_now().await?;
    let now = Instant::now();
    let drain_started = lb
        .nodes
        .iter()
        .filter(|n| n.condition == Condition::Draining)
        .map(|n| (n.id, now))
        .collect();
    let plan: Plan = plan::plan(
        &desired,
        &Actual {
            nodes: &lb.nodes,
            drain_started: &drain_started,
            missing_since: &std::collections::BTreeMap::new(),
            now,
        },
        &limits,
        &args.policy(),
    );
    let out = PlanOnce {
        target: args.target(),
        status: &lb.status,
        nodes: lb.nodes.len(),
        node_limit: limits.node_limit,
        prefix: &source.prefix,
        revision,
        desired: desired.nodes.len(),
        report: Report {
            plan: &plan,
            drain: args.drain,
        },
    };
    Ok(match output {
        Output::Text => out.to_string(),
        Output::Json => plan_json::render(&out),
    })
}
