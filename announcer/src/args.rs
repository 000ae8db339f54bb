//! The command line: every option of the three subcommands, each with an environment
//! twin, parsed and checked at the edge (typed values: durations, addresses, ports,
//! layouts, checks), so the rest of the crate never sees a raw string of the user's.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use sidekick::etcd::EtcdArgs;
use sidekick::logging::LogArgs;
use sidekick::schema::{self, DEFAULT_PREFIX, Layout};

use crate::Error;
use crate::docker;
use crate::health::Check;
use crate::machine::Machine;
use crate::record::{ContainerRule, HostRule, Internal, Mode, PortSpec};

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

    /// Serve /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9101 (default: off).
    #[arg(long, env = "ANNOUNCE_METRICS_ADDR", value_name = "ADDR:PORT", global = true)]
    pub metrics_addr: Option<std::net::SocketAddr>,

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

    /// Internal addressing.
    #[command(flatten)]
    pub internal: InternalArgs,
}

/// registrator's `-internal`: the container's own address and exposed port.
#[derive(Debug, clap::Args)]
pub struct InternalArgs {
    /// Announce each container's own address on a Docker network and its exposed ports
    /// (for a load balancer on that network), instead of this host's address and the
    /// published ports.
    #[arg(long, env = "ANNOUNCE_INTERNAL")]
    pub internal: bool,

    /// The Docker network of --internal (a container's announce.network label wins;
    /// default: the container's only network).
    #[arg(
        long,
        env = "ANNOUNCE_INTERNAL_NETWORK",
        value_name = "NETWORK",
        requires = "internal"
    )]
    pub internal_network: Option<String>,
}

impl InternalArgs {
    /// The `--internal` rule, when on.
    #[must_use]
    pub fn rule(&self) -> Option<Internal> {
        self.internal.then(|| Internal {
            network: self.internal_network.clone(),
        })
    }
}

impl HostArgs {
    /// The rule `host` mode follows.
    #[must_use]
    pub fn rule(&self) -> HostRule {
        HostRule {
            layout: self.layout,
            internal: self.internal.rule(),
        }
    }
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

    /// Internal addressing (host mode).
    #[command(flatten)]
    pub internal: InternalArgs,

    /// What to print: text for a person, or one JSON object for a script.
    #[arg(long, env = "ANNOUNCE_OUTPUT", value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `explain --output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Lines for a person.
    Text,
    /// One JSON object (fields: see `explain::Explanation`).
    Json,
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
    /// This host, from the options (and the environment file for what they leave out).
    ///
    /// # Errors
    /// [`Error::Address`] or [`Error::Hostname`], naming the missing or bad value.
    pub fn machine(&self) -> Result<Machine, Error> {
        Machine::resolve(
            self.hostname.as_deref(),
            self.public_ipv4,
            self.private_ipv4,
            &self.environment_file,
        )
    }
}

impl ContainerArgs {
    /// The rule `container` mode follows: the one place it is built from the options.
    #[must_use]
    pub fn rule(&self) -> ContainerRule {
        container_rule(
            &self.name,
            &self.service,
            &self.instance,
            self.layout,
            &self.unit,
            &self.port,
        )
    }
}

/// The one place a `container` rule is built from options (`container` and `explain`).
fn container_rule(
    name: &str,
    service: &str,
    instance: &str,
    layout: Layout,
    unit: &Option<String>,
    port: &Option<PortSpec>,
) -> ContainerRule {
    ContainerRule {
        name: name.to_owned(),
        service: service.to_owned(),
        instance: instance.to_owned(),
        layout,
        unit: unit.clone(),
        port: port.clone(),
    }
}

impl ExplainArgs {
    /// The mode to explain with: `container` when `--service` and `--instance` are
    /// given, else `host`.
    #[must_use]
    pub fn mode(&self) -> Mode {
        match (&self.service, &self.instance) {
            (Some(service), Some(instance)) => Mode::Container(container_rule(
                &self.name,
                service,
                instance,
                self.layout,
                &self.unit,
                &self.port,
            )),
            _ => Mode::Host(HostRule {
                layout: self.layout,
                internal: self.internal.rule(),
            }),
        }
    }
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
