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

use sidekick::schema;
use tokio::sync::{mpsc, watch};

mod args;
pub mod docker;
mod error;
pub mod health;
mod lease;
pub mod machine;
pub mod metrics;
pub mod ops;
pub mod owner;
pub mod reconcile;
pub mod record;
pub mod registry;

pub use args::{Args, Command, ContainerArgs, ExplainArgs, HostArgs, InternalArgs};
pub use error::Error;

use crate::docker::Scope;
use crate::health::Check;
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
        Command::Explain(e) => explain(&args, e).await?,
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

/// `explain`: the decision for one container, printed.
async fn explain(args: &Args, e: &ExplainArgs) -> Result<(), Error> {
    let machine = args.machine()?;
    let docker = docker::connect(&args.docker_host).await?;
    // Only to show who holds the record's keys: explain works without etcd.
    let mut etcd = match args.etcd.resolve().await {
        Ok(config) => config.connect().await.ok(),
        Err(_) => None,
    };
    let facts = docker::inspect(&docker, &e.name)
        .await?
        .ok_or_else(|| Error::NoContainer(e.name.clone()))?;
    let mode = e.mode();
    let how = match &mode {
        Mode::Container(_) => "container mode",
        Mode::Host(_) => "host mode (labels)",
    };
    let rules = Rules {
        mode,
        check: args.check.clone(),
    };
    let health = facts
        .health
        .map(|h| format!(", Docker health {h:?}").to_lowercase())
        .unwrap_or_default();
    println!(
        "container {} ({}): {}{health}; explained as {how}",
        facts.name,
        docker::short(&facts.id),
        facts.state.name()
    );
    if !facts.is_up() {
        println!("not announced: the container is {}", facts.state.name());
        return Ok(());
    }
    let (planned, notes) = match record::record_for(&facts, &machine, &rules)? {
        record::Decision::Skip(skip) => {
            println!("not announced: {skip}");
            return Ok(());
        }
        record::Decision::Announce { planned, notes } => (planned, notes),
    };
    for note in &notes {
        println!("note: {note}");
    }
    for plan in &planned {
        println!("record {}/{}:", plan.record.service, plan.record.instance);
        for line in &plan.why {
            println!("  {line}");
        }
        println!("would write ({} layout, on a lease of {:?}):", plan.layout, args.ttl);
        for (key, value) in plan.record.entries_with_meta(&args.prefix, plan.layout, &plan.meta) {
            println!("  {key} = {value}");
        }
        let verdict = match &plan.check {
            Check::Docker => match facts.health {
                Some(docker::Health::Healthy) => Ok(()),
                other => Err(format!("Docker health is {other:?}")),
            },
            check => health::probe(check, &plan.target, args.check_timeout, &mut false).await,
        };
        match verdict {
            Ok(()) => println!("check {} passes now: it would be announced", plan.check),
            Err(reason) => println!("check {} fails now ({reason}): it would wait", plan.check),
        }
        println!("{}", owner_line(&mut etcd, &args.prefix, plan).await);
    }
    Ok(())
}

/// Who holds the record's keys in etcd now (one owner per record), for `explain`.
async fn owner_line(etcd: &mut Option<etcd_client::Client>, prefix: &str, plan: &record::Planned) -> String {
    let Some(client) = etcd else {
        return "etcd not reachable: who holds the record was not checked".to_owned();
    };
    let ann = reconcile::Announcement {
        record: plan.record.clone(),
        layout: plan.layout,
        meta: plan.meta.clone(),
    };
    match registry::holder_of(client, prefix, &ann).await {
        Ok((key, owner::Holder::Free)) => format!("etcd: {key} is free: it would be written"),
        Ok((key, owner::Holder::Ours | owner::Holder::OwnEarlier)) => {
            format!("etcd: {key} holds this host's record of this unit: it would be taken over")
        }
        Ok((_, owner::Holder::Other(conflict))) => format!("etcd: conflict: {conflict}"),
        Err(e) => format!("etcd: who holds the record was not checked: {e}"),
    }
}
