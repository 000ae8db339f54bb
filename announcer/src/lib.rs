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
//! - [`machine`]: hostname and addresses of this host.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use sidekick::etcd::EtcdArgs;
use sidekick::logging::LogArgs;
use sidekick::schema::{self, DEFAULT_PREFIX, Layout};
use tokio::sync::{mpsc, watch};

pub mod docker;
mod error;
pub mod health;
pub mod machine;
pub mod reconcile;
pub mod record;
pub mod registry;

pub use error::Error;

use crate::docker::Scope;
use crate::health::Check;
use crate::machine::Machine;
use crate::record::{ContainerRule, Mode, PortSpec, Rules};

/// Command-line options; every flag has an environment twin.
#[derive(Debug, clap::Parser)]
#[command(
    name = "announcer",
    version = env!("SIDEKICK_VERSION"),
    about = "Announce Docker containers as etcd records on leases",
    long_about = "Announce Docker containers as etcd records on leases.\n\n\
                  `announcer container NAME --service S --instance I` follows one container (a sidekick unit);\n\
                  `announcer host` follows every container labelled announce.service (or registrator's SERVICE_NAME);\n\
                  `announcer explain NAME` prints the record that would be written, and why."
)]
pub struct Args {
    /// etcd connection.
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,

    /// `--validate`: check this command line offline and exit.
    #[command(flatten)]
    pub validate: sidekick::validate::ValidateArgs,

    /// Root of every record: `<prefix>/<service>/<instance>`.
    #[arg(long, env = "ANNOUNCE_PREFIX", default_value = DEFAULT_PREFIX, value_parser = parse_prefix, global = true)]
    pub prefix: String,

    /// Lease TTL: records vanish this long after the announcer dies without a goodbye.
    #[arg(long, env = "ANNOUNCE_TTL", default_value = "10s", value_parser = parse_ttl, global = true)]
    pub ttl: Duration,

    /// Public IPv4 address of this host (default: COREOS_PUBLIC_IPV4 in the environment file).
    #[arg(long, env = "COREOS_PUBLIC_IPV4", value_name = "IPV4", global = true)]
    pub public_ipv4: Option<Ipv4Addr>,

    /// Private IPv4 address of this host (default: COREOS_PRIVATE_IPV4 in the environment file).
    #[arg(long, env = "COREOS_PRIVATE_IPV4", value_name = "IPV4", global = true)]
    pub private_ipv4: Option<Ipv4Addr>,

    /// `KEY=VALUE` file the addresses are read from when not given (the CoreOS convention).
    #[arg(
        long,
        env = "ANNOUNCE_ENVIRONMENT_FILE",
        default_value = "/etc/environment",
        value_name = "FILE",
        global = true
    )]
    pub environment_file: PathBuf,

    /// The `host` field of records, and how this host recognises its own (default: the machine's hostname).
    #[arg(long, env = "ANNOUNCE_HOSTNAME", global = true)]
    pub hostname: Option<String>,

    /// Health check gating announcements: tcp, http[:PATH], docker or none.
    #[arg(long, env = "ANNOUNCE_CHECK", default_value = "tcp", value_parser = parse_check, global = true)]
    pub check: Check,

    /// Time between checks of an announced container.
    #[arg(long, env = "ANNOUNCE_CHECK_INTERVAL", default_value = "5s", value_parser = sidekick::duration::parse_positive, global = true)]
    pub check_interval: Duration,

    /// Time one check may take.
    #[arg(long, env = "ANNOUNCE_CHECK_TIMEOUT", default_value = "2s", value_parser = sidekick::duration::parse_positive, global = true)]
    pub check_timeout: Duration,

    /// Period of the full comparison with Docker and etcd (events and writes happen at once anyway).
    #[arg(long, env = "ANNOUNCE_RESYNC_INTERVAL", default_value = "60s", value_parser = sidekick::duration::parse_positive, global = true)]
    pub resync_interval: Duration,

    /// Docker daemon: unix:///path/to/docker.sock or tcp://host:port.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock",
        value_parser = docker::parse_docker_host,
        global = true
    )]
    pub docker_host: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The three ways to run.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Follow one container by name and keep its record (what the monweb@ / mondb units run).
    Container(ContainerArgs),
    /// Follow every container labelled `announce.service` (or with registrator's SERVICE_NAME).
    Host(HostArgs),
    /// Print the record that would be written for a container, and why, without writing.
    Explain(ExplainArgs),
}

/// `announcer container`.
#[derive(Debug, clap::Args)]
pub struct ContainerArgs {
    /// Container name; the announcer waits for it to exist and follows it across restarts.
    #[arg(env = "ANNOUNCE_CONTAINER")]
    pub name: String,

    /// Service name: `<prefix>/<service>/...`.
    #[arg(long, env = "ANNOUNCE_SERVICE", value_parser = parse_service)]
    pub service: String,

    /// Instance name: `<prefix>/<service>/<instance>`.
    #[arg(long, env = "ANNOUNCE_INSTANCE", value_parser = parse_instance)]
    pub instance: String,

    /// Key layout.
    #[arg(long, env = "ANNOUNCE_LAYOUT", value_enum, default_value_t = Layout::Fields)]
    pub layout: Layout,

    /// The `unit` field (default: the container name).
    #[arg(long, env = "ANNOUNCE_UNIT")]
    pub unit: Option<String>,

    /// Container port to announce, e.g. 80/tcp (default: the only published port).
    #[arg(long, env = "ANNOUNCE_PORT", value_parser = parse_port)]
    pub port: Option<PortSpec>,
}

/// `announcer host`.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// Layout of containers without an `announce.layout` label.
    #[arg(long, env = "ANNOUNCE_LAYOUT", value_enum, default_value_t = Layout::Fields)]
    pub layout: Layout,
}

/// `announcer explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Container name or id.
    #[arg(env = "ANNOUNCE_CONTAINER")]
    pub name: String,

    /// Explain as `container` mode with this service (default: as `host` mode, from labels).
    #[arg(long, env = "ANNOUNCE_SERVICE", value_parser = parse_service, requires = "instance")]
    pub service: Option<String>,

    /// Instance name (with --service).
    #[arg(long, env = "ANNOUNCE_INSTANCE", value_parser = parse_instance, requires = "service")]
    pub instance: Option<String>,

    /// Key layout (host mode: the default of containers without a label).
    #[arg(long, env = "ANNOUNCE_LAYOUT", value_enum, default_value_t = Layout::Fields)]
    pub layout: Layout,

    /// The `unit` field (with --service).
    #[arg(long, env = "ANNOUNCE_UNIT")]
    pub unit: Option<String>,

    /// Container port (with --service).
    #[arg(long, env = "ANNOUNCE_PORT", value_parser = parse_port)]
    pub port: Option<PortSpec>,
}

fn parse_name(what: &'static str, s: &str) -> Result<String, String> {
    schema::validate_name(what, s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn parse_service(s: &str) -> Result<String, String> {
    parse_name("service", s)
}

fn parse_instance(s: &str) -> Result<String, String> {
    parse_name("instance", s)
}

fn parse_port(s: &str) -> Result<PortSpec, String> {
    s.parse()
}

fn parse_check(s: &str) -> Result<Check, String> {
    s.parse()
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid prefix {s:?}: must not contain whitespace"));
    }
    Ok(schema::normalize_prefix(s))
}

/// A lease TTL: whole seconds, at least 1 s (etcd may grant a little more: its minimum).
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = sidekick::duration::parse_positive(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("invalid ttl {s:?}: must be at least 1s"));
    }
    Ok(Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)))
}

impl Args {
    fn machine(&self) -> Result<Machine, Error> {
        Machine::resolve(
            self.hostname.as_deref(),
            self.public_ipv4,
            self.private_ipv4,
            &self.environment_file,
        )
    }
}

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
            let rule = ContainerRule {
                name: c.name.clone(),
                service: c.service.clone(),
                instance: c.instance.clone(),
                layout: c.layout,
                unit: c.unit.clone(),
                port: c.port.clone(),
            };
            Box::pin(announce(&args, Mode::Container(rule), Scope::Named(c.name.clone()))).await?;
        }
        Command::Host(h) => Box::pin(announce(&args, Mode::Host { layout: h.layout }, Scope::All)).await?,
    }
    Ok(())
}

/// `--validate`: what this command line would do, checked without contacting Docker or etcd.
fn validate(args: &Args) -> Result<String, Error> {
    let machine = args.machine()?;
    let etcd = args.etcd.describe_offline()?;
    let what = match &args.command {
        Command::Container(c) => {
            if c.layout != Layout::Value && machine.public_ipv4.is_none() {
                return Err(record::RecordError::NoPublicIpv4 {
                    container: c.name.clone(),
                    layout: c.layout,
                }
                .into());
            }
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
            if rule.layout != Layout::Value && machine.public_ipv4.is_none() {
                return Err(record::RecordError::NoPublicIpv4 {
                    container: rule.name.clone(),
                    layout: rule.layout,
                }
                .into());
            }
            Some((rule.service.clone(), rule.instance.clone()))
        }
        Mode::Host { .. } => None,
    };
    let etcd = args.etcd.resolve().await?;
    let settings = registry::Settings {
        prefix: args.prefix.clone(),
        ttl: args.ttl,
        timeout: etcd.timeout,
        resync: args.resync_interval,
        owner: registry::Owner {
            hostname: machine.hostname.clone(),
            private_ipv4: machine.private_ipv4,
            only,
        },
    };
    let registry = registry::Registry::connect(&etcd, settings).await?;
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
    ));
    let registry_task = tokio::spawn(registry.run(desired_rx, shutdown.clone()));
    let reconciler = reconcile::Reconciler::new(machine, rules, args.check_interval, args.check_timeout, desired_tx);
    // The reconciler ends on shutdown or on a fatal error; dropping it closes the desired
    // channel, which makes the registry revoke its lease and return.
    let result = reconciler.run(docker_rx, shutdown.clone()).await;
    stop_docker.cancel();
    let _ = registry_task.await;
    let _ = docker_task.await;
    result.map_err(Error::from)
}

/// `explain`: the decision for one container, printed.
async fn explain(args: &Args, e: &ExplainArgs) -> Result<(), Error> {
    let machine = args.machine()?;
    let docker = docker::connect(&args.docker_host).await?;
    let facts = docker::inspect(&docker, &e.name)
        .await?
        .ok_or_else(|| Error::NoContainer(e.name.clone()))?;
    let (mode, how) = match (&e.service, &e.instance) {
        (Some(service), Some(instance)) => (
            Mode::Container(ContainerRule {
                name: e.name.clone(),
                service: service.clone(),
                instance: instance.clone(),
                layout: e.layout,
                unit: e.unit.clone(),
                port: e.port.clone(),
            }),
            "container mode",
        ),
        _ => (Mode::Host { layout: e.layout }, "host mode (labels)"),
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
    let Some(plan) = record::record_for(&facts, &machine, &rules)? else {
        println!(
            "not announced: no {} label and no registrator SERVICE_NAME / SERVICE_<port>_NAME (or SERVICE_IGNORE is set)",
            record::LABEL_SERVICE
        );
        return Ok(());
    };
    for line in &plan.why {
        println!("  {line}");
    }
    println!("would write ({} layout, on a lease of {:?}):", plan.layout, args.ttl);
    for (key, value) in plan.record.entries(&args.prefix, plan.layout) {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_command_line_parses() {
        let a = parse(&[
            "announcer",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--public-ipv4",
            "127.0.0.1",
            "--private-ipv4",
            "127.0.0.1",
            "--ttl",
            "5s",
            "container",
            "web-01",
            "--service",
            "web",
            "--instance",
            "web01",
        ])
        .unwrap();
        assert_eq!(a.ttl, Duration::from_secs(5));
        assert_eq!(a.prefix, "/services");
        assert_eq!(a.check, Check::Tcp);
        let Command::Container(c) = a.command else {
            panic!("container")
        };
        assert_eq!(
            (c.name.as_str(), c.service.as_str(), c.instance.as_str()),
            ("web-01", "web", "web01")
        );
        assert_eq!(c.layout, Layout::Fields);
    }

    #[test]
    fn bad_command_lines_name_the_value() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["announcer", "container", "db", "--service", "db", "--instance", "a/b"],
                "a/b",
            ),
            (
                &[
                    "announcer",
                    "container",
                    "db",
                    "--service",
                    "db",
                    "--instance",
                    "x",
                    "--layout",
                    "yaml",
                ],
                "yaml",
            ),
            (&["announcer", "--check", "ping", "host"], "ping"),
            (&["announcer", "--check", "http:nopath", "host"], "http:nopath"),
            (&["announcer", "--ttl", "500ms", "host"], "500ms"),
            (&["announcer", "--public-ipv4", "1.2.3", "host"], "1.2.3"),
            (
                &[
                    "announcer",
                    "container",
                    "db",
                    "--service",
                    "db",
                    "--instance",
                    "x",
                    "--port",
                    "abc",
                ],
                "abc",
            ),
            (&["announcer", "--docker-host", "ssh://h", "host"], "ssh://h"),
        ];
        for (argv, value) in cases {
            let err = parse(argv).unwrap_err();
            assert!(err.contains(value), "{argv:?}: {err}");
        }
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(parse_ttl("2500ms"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_ttl("10"), Ok(Duration::from_secs(10)));
        assert!(parse_ttl("0").is_err());
        assert_eq!(parse_prefix("services/"), Ok("/services".to_owned()));
    }
}
