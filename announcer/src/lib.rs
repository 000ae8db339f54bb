//! `announcer`: publishes where Docker containers live as etcd records on leases.
//!
//! ```text
//! Docker ──list/events──▶ docker.rs ──Update──▶ reconcile.rs ──Desired (watch)──▶ registry.rs ──txn/lease──▶ etcd
//!                                                  │  record.rs (pure decision)
//!                                                  └─ health.rs (one prober per checked container)
//! ```
//!
//! - [`docker`]: the only code that talks to Docker.
//! - [`record`]: which record a container becomes, and why (pure).
//! - [`health`]: the checks that gate an announcement.
//! - [`reconcile`]: the desired set of records, recomputed on every change.
//! - [`registry`]: the only code that talks to etcd (lease, transactions, cleanup).
//! - [`lease`]: the lease keep-alive, one etcd member at a time.
//! - [`owner`]: who owns a record, and which stale records may be deleted (pure).
//! - [`machine`]: hostname and addresses of this host.
//! - [`explain`]: `announcer explain`, as text or JSON.
//! - [`ops`], [`metrics`]: `/healthz`, `/readyz`, `/metrics` and systemd's notifications.

use sidekick::schema;
use tokio::sync::{mpsc, watch};

mod args;
pub mod docker;
mod error;
pub mod explain;
pub mod health;
mod lease;
pub mod machine;
pub mod metrics;
pub mod ops;
pub mod owner;
pub mod reconcile;
pub mod record;
pub mod registry;

pub use args::{Args, Command, ContainerArgs, ExplainArgs, HostArgs, InternalArgs, Output};
pub use error::Error;

use crate::docker::Scope;
use crate::record::{Mode, Rules};

/// Runs the command.
///
/// # Errors
/// Everything that stops it, with the offending value named: bad addresses, etcd
/// unreachable at start, a followed container whose record cannot be built, a failing
/// `explain`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.validate.validate {
        println!("{}", validate(&args)?);
        return Ok(());
    }
    match &args.command {
        Command::Explain(e) => explain::run(&args, e).await?,
        Command::Container(c) => {
            Box::pin(announce(&args, Mode::Container(c.rule()), Scope::Named(c.name.clone()))).await?;
        }
        Command::Host(h) => Box::pin(announce(&args, Mode::Host(h.rule()), Scope::All)).await?,
    }
    Ok(())
}

/// `--validate`: what this command line would do, checked without contacting Docker or etcd.
fn validate(args: &Args) -> Result<String, Error> {
    let machine = args.machine()?;
    let etcd = args.etcd.describe_offline()?;
    let what = match &args.command {
        Command::Container(c) => {
            record::require_public_ipv4(c.layout, &machine, &c.name)?;
            let key = schema::instance_key(&args.prefix, &c.service, &c.instance, c.layout);
            format!("follow container {} as {key} ({} layout)", c.name, c.layout)
        }
        Command::Host(h) => format!(
            "follow labelled containers under {}/ (default layout {})",
            args.prefix, h.layout
        ),
        Command::Explain(e) => format!("explain container {}", e.name),
    };
    let public = machine.public_ipv4.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    Ok(format!(
        "announcer: configuration OK: {what}; host {} public {public} private {}; {etcd}; ttl {}s; check {} every {:?}",
        machine.hostname,
        machine.private_ipv4,
        args.ttl.as_secs(),
        args.check,
        args.check_interval,
    ))
}

/// `container` and `host`: the long-running announcer.
async fn announce(args: &Args, mode: Mode, scope: Scope) -> Result<(), Error> {
    let shutdown = sidekick::shutdown::on_signals()?;
    let machine = args.machine()?;
    let only = match &mode {
        Mode::Container(rule) => {
            record::require_public_ipv4(rule.layout, &machine, &rule.name)?;
            Some((rule.service.clone(), rule.instance.clone()))
        }
        Mode::Host { .. } => None,
    };
    let ops = ops::Ops::new(sidekick::notify::Notifier::from_env());
    if let Some(addr) = args.metrics_addr {
        ops::serve(addr, ops.clone(), shutdown.clone()).await?;
    }
    let watchdog = tokio::spawn(ops.notifier().clone().watchdog(shutdown.child_token()));
    let etcd = args.etcd.resolve().await?;
    let settings = registry::Settings {
        prefix: args.prefix.clone(),
        ttl: args.ttl,
        timeout: etcd.timeout,
        resync: args.resync_interval,
        owner: registry::Owner {
            me: owner::Me {
                hostname: machine.hostname.clone(),
                private_ipv4: machine.private_ipv4,
            },
            only,
        },
    };
    let registry = Box::pin(registry::Registry::connect(&etcd, settings, ops.clone())).await?;
    tracing::info!(
        host = %machine.hostname,
        private = %machine.private_ipv4,
        public = ?machine.public_ipv4,
        etcd = %etcd.endpoints_display(),
        docker = %args.docker_host,
        "announcer started"
    );

    let rules = Rules {
        mode,
        check: args.check.clone(),
    };
    let (desired_tx, desired_rx) = watch::channel(reconcile::Desired::default());
    let (docker_tx, docker_rx) = mpsc::channel(64);
    let stop_docker = shutdown.child_token();
    let docker_task = tokio::spawn(docker::follow(
        args.docker_host.clone(),
        scope,
        docker_tx,
        args.resync_interval,
        stop_docker.clone(),
        ops.clone(),
    ));
    let registry_task = tokio::spawn(registry.run(desired_rx, shutdown.clone()));
    let reconciler = reconcile::Reconciler::new(
        machine,
        rules,
        args.check_interval,
        args.check_timeout,
        desired_tx,
        ops.clone(),
    );
    // The reconciler ends on shutdown or on a fatal error; dropping it closes the desired
    // channel, which makes the registry revoke its lease and return.
    let result = reconciler.run(docker_rx, shutdown.clone()).await;
    ops.stopping();
    stop_docker.cancel();
    let _ = registry_task.await;
    let _ = docker_task.await;
    watchdog.abort();
    result.map_err(Error::from)
}
