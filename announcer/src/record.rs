//! Which records a container becomes, and why (pure: no I/O).
//!
//! [`record_for`] decides, from what Docker says about a container ([`ContainerFacts`]),
//! what this machine is ([`Machine`]) and how the announcer was started ([`Rules`]):
//! for each port it announces, the service and instance, the address and port, the
//! layout and the check. `explain` prints the same [`Decision`], reasons included, so what
//! it shows is what the announcer does.
//!
//! Each rule has one place: [`reachable`] (which ports a container can be reached on:
//! published, `--net=host`, or `--internal`), [`Registrator`] (registrator's `SERVICE_*`
//! variables, read the way registrator reads them), [`default_instance`] (the identity
//! that does not collide across hosts), [`require_public_ipv4`].
//!
//! In `host` mode a container is announced when it carries the label `announce.service`
//! (one record: the `announce.*` labels) or registrator's `SERVICE_NAME` /
//! `SERVICE_<port>_NAME` (one record per named port, as `registrator -explicit` does),
//! unless `SERVICE_IGNORE` is set.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use sidekick::schema::{Layout, Meta, Record, shorten, validate_name};

use crate::docker::{ContainerFacts, PublishedPort};
use crate::health::{Check, Target};
use crate::machine::Machine;

/// Label naming the service (host mode).
pub const LABEL_SERVICE: &str = "announce.service";
/// Label naming the instance (default: [`default_instance`]).
pub const LABEL_INSTANCE: &str = "announce.instance";
/// Label choosing the container port (`80/tcp`).
pub const LABEL_PORT: &str = "announce.port";
/// Label choosing the layout (`fields`, `value`, `json`).
pub const LABEL_LAYOUT: &str = "announce.layout";
/// Label choosing the check (`tcp`, `http[:PATH]`, `docker`, `none`).
pub const LABEL_CHECK: &str = "announce.check";
/// Label giving the `unit` field (default: the container name).
pub const LABEL_UNIT: &str = "announce.unit";
/// Label choosing the Docker network of `--internal` (default: `--internal-network`).
pub const LABEL_NETWORK: &str = "announce.network";

/// A container port: `80/tcp`, `53/udp`, or `80` (tcp).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortSpec {
    /// The port number inside the container.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

impl FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (port, proto) = t.split_once('/').unwrap_or((t, "tcp"));
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {s:?}: expected PORT[/tcp|/udp], e.g. 80/tcp"))?;
        match proto {
            "tcp" | "udp" | "sctp" => Ok(PortSpec {
                port,
                proto: proto.to_owned(),
            }),
            other => Err(format!(
                "invalid port {s:?}: protocol {other:?} is not tcp, udp or sctp"
            )),
        }
    }
}

/// What `announcer container` was told: one named container, one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRule {
    /// The container name it follows.
    pub name: String,
    /// `--service`.
    pub service: String,
    /// `--instance`.
    pub instance: String,
    /// `--layout`.
    pub layout: Layout,
    /// `--unit` (default: the container name).
    pub unit: Option<String>,
    /// `--port` (default: the only published port).
    pub port: Option<PortSpec>,
}

/// What `announcer host` was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// Layout of containers without `announce.layout`.
    pub layout: Layout,
    /// `--internal`: announce the container's own address on a Docker network and its
    /// exposed port (for a load balancer on that network), `None`: the host's.
    pub internal: Option<Internal>,
}

/// `--internal` and its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Internal {
    /// `--internal-network` (a container's `announce.network` label wins; `None`: the
    /// container's only network).
    pub network: Option<String>,
}

/// How containers become records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One named container with the record given on the command line.
    Container(ContainerRule),
    /// Every labelled container.
    Host(HostRule),
}

/// Everything [`record_for`] needs besides the container and the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Container or host mode.
    pub mode: Mode,
    /// `--check` (host mode: the default of containers without `announce.check`).
    pub check: Check,
}

/// The decision for one record: what to write, how to lay it out, how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The record to write.
    pub record: Record,
    /// Its layout.
    pub layout: Layout,
    /// registrator's tags and attributes (written in the `json` layout only).
    pub meta: Meta,
    /// The check that gates it.
    pub check: Check,
    /// Where the check probes.
    pub target: Target,
    /// Why: one line per decision, for `explain` and the logs.
    pub why: Vec<String>,
}

/// Why a container is not announced at all (not an error: it did not ask to be).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// No `announce.service` label and no registrator name.
    NotOptedIn,
    /// `SERVICE_IGNORE` is set.
    Ignored,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::NotOptedIn => "no announce.service label and no registrator SERVICE_NAME / SERVICE_<port>_NAME",
            Skip::Ignored => "SERVICE_IGNORE is set",
        })
    }
}

/// A port of an announced container that is left out, and why: logged once, shown by
/// `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// `SERVICE_<port>_IGNORE` is set.
    PortIgnored {
        /// The port.
        port: PortSpec,
    },
    /// Neither `SERVICE_<port>_NAME` nor `SERVICE_NAME` names it (registrator would use
    /// the image name; the announcer announces only what is named, like `-explicit`).
    PortUnnamed {
        /// The port.
        port: PortSpec,
    },
    /// `SERVICE_<port>_NAME` names a port the container does not publish (often baked
    /// into an image): ignored, as registrator does.
    NameOfUnpublishedPort {
        /// The port number of the variable.
        port: u16,
        /// The name it gives.
        name: String,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::PortIgnored { port } => write!(f, "port {port} not announced: SERVICE_{}_IGNORE is set", port.port),
            Note::PortUnnamed { port } => write!(
                f,
                "port {port} not announced: no SERVICE_{}_NAME and no SERVICE_NAME name it",
                port.port
            ),
            Note::NameOfUnpublishedPort { port, name } => write!(
                f,
                "SERVICE_{port}_NAME={name:?} ignored: the container does not publish port {port}"
            ),
        }
    }
}

/// What [`record_for`] decided for one running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not meant to be announced.
    Skip(Skip),
    /// Announce these records (one per port; withdrawn together with the container).
    Announce {
        /// The records.
        planned: Vec<Planned>,
        /// Ports left out, and why.
        notes: Vec<Note>,
    },
}

impl Decision {
    /// The records to announce (none when skipped).
    #[must_use]
    pub fn planned(&self) -> &[Planned] {
        match self {
            Decision::Skip(_) => &[],
            Decision::Announce { planned, .. } => planned,
        }
    }
}

/// Why a container cannot be announced. Each message names the container and the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Nothing is published, so there is no port to announce.
    #[error("container {container:?} publishes no port (publish the service port with -p)")]
    NoPort {
        /// Container name.
        container: String,
    },
    /// Several ports and no choice.
    #[error("container {container:?} publishes several ports ({ports}): choose one with {how}")]
    SeveralPorts {
        /// Container name.
        container: String,
        /// The published ports, `80/tcp, 443/tcp`.
        ports: String,
        /// The option or label that chooses.
        how: &'static str,
    },
    /// The chosen port is not published.
    #[error("container {container:?} does not publish port {port} (it publishes: {published})")]
    PortNotPublished {
        /// Container name.
        container: String,
        /// The port asked for.
        port: String,
        /// What it publishes.
        published: String,
    },
    /// A label (or registrator variable) whose value is unusable.
    #[error("container {container:?}: invalid label {label}={value}: {reason}")]
    BadLabel {
        /// Container name.
        container: String,
        /// The label.
        label: String,
        /// Its value, quoted and cut (`sidekick::schema::shorten`).
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A service or instance name that cannot be an etcd path segment.
    #[error("container {container:?}: invalid {what} {value}: {reason}")]
    BadName {
        /// Container name.
        container: String,
        /// `service` or `instance`.
        what: &'static str,
        /// The name, quoted and cut (`sidekick::schema::shorten`).
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The layout needs a public address and none is configured.
    #[error(
        "container {container:?}: the {layout} layout needs a public IPv4 address: give --public-ipv4 or set COREOS_PUBLIC_IPV4"
    )]
    NoPublicIpv4 {
        /// Container name.
        container: String,
        /// The layout.
        layout: Layout,
    },
    /// `--internal` and the container is not on the chosen network (or on several and
    /// none is chosen).
    #[error(
        "container {container:?}: {reason} (it is on: {networks}); choose with --internal-network or the announce.network label"
    )]
    Network {
        /// Container name.
        container: String,
        /// What is wrong.
        reason: String,
        /// Its networks.
        networks: String,
    },
}

/// The one place of the rule "every layout but `value` carries the public address".
///
/// # Errors
/// [`RecordError::NoPublicIpv4`] naming the container and the layout.
pub fn require_public_ipv4(layout: Layout, machine: &Machine, container: &str) -> Result<(), RecordError> {
    if layout != Layout::Value && machine.public_ipv4.is_none() {
        return Err(RecordError::NoPublicIpv4 {
            container: container.to_owned(),
            layout,
        });
    }
    Ok(())
}

/// The identity of a `host` mode record without `announce.instance` or `SERVICE_ID`:
/// registrator's `<host>:<container>:<port>[:udp]`. The host name makes it unique across
/// hosts (two hosts each running a container `web` write different keys), the port
/// across the records of one container.
#[must_use]
pub fn default_instance(hostname: &str, container: &str, port: &PortSpec) -> String {
    let udp = if port.proto == "udp" { ":udp" } else { "" };
    format!("{hostname}:{container}:{}{udp}", port.port)
}

/// How a container is reached on one of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A port published on the host (`-p`): the host's address and the host port.
    Published(PublishedPort),
    /// A `--net=host` container's exposed port: the host's address and that port.
    HostNetwork(PortSpec),
    /// `--internal`: the container's own address on `network` and the exposed port.
    Internal {
        /// The Docker network.
        network: String,
        /// The container's address on it.
        ip: Ipv4Addr,
        /// The exposed port.
        port: PortSpec,
    },
}

impl Reach {
    /// The container port.
    #[must_use]
    pub fn spec(&self) -> PortSpec {
        match self {
            Reach::Published(p) => PortSpec {
                port: p.container_port,
                proto: p.proto.clone(),
            },
            Reach::HostNetwork(p) | Reach::Internal { port: p, .. } => p.clone(),
        }
    }

    /// The port records carry.
    #[must_use]
    pub fn record_port(&self) -> u16 {
        match self {
            Reach::Published(p) => p.host_port,
            Reach::HostNetwork(p) | Reach::Internal { port: p, .. } => p.port,
        }
    }

    /// The record's (public, private) addresses.
    fn addresses(&self, machine: &Machine) -> (Option<Ipv4Addr>, Ipv4Addr) {
        match self {
            Reach::Published(_) | Reach::HostNetwork(_) => (machine.public_ipv4, machine.private_ipv4),
            // The only address the service answers on: both fields carry it.
            Reach::Internal { ip, .. } => (Some(*ip), *ip),
        }
    }

    fn target(&self, facts: &ContainerFacts) -> Target {
        let spec = self.spec();
        let tcp = spec.proto == "tcp";
        match self {
            Reach::Published(p) => Target {
                container: facts
                    .networks
                    .first()
                    .filter(|_| tcp)
                    .map(|(_, ip)| SocketAddrV4::new(*ip, p.container_port)),
                host: SocketAddrV4::new(p.host_ip.unwrap_or(Ipv4Addr::LOCALHOST), p.host_port),
            },
            Reach::HostNetwork(p) => Target {
                container: None,
                host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.port),
            },
            Reach::Internal { ip, port, .. } => Target {
                container: tcp.then(|| SocketAddrV4::new(*ip, port.port)),
                host: SocketAddrV4::new(*ip, port.port),
            },
        }
    }

    fn why(&self) -> String {
        match self {
            Reach::Published(p) => format!(
                "port {} is published on host port {} (bound to {})",
                self.spec(),
                p.host_port,
                p.host_ip
                    .map_or_else(|| "every address".to_owned(), |ip| ip.to_string())
            ),
            Reach::HostNetwork(p) => format!("port {p} is exposed by a --net=host container: host port {}", p.port),
            Reach::Internal { network, ip, port } => format!(
                "--internal: address {ip} on network {network:?} and the exposed port {}",
                port.port
            ),
        }
    }
}

fn list_specs(ports: &[Reach]) -> String {
    let specs: Vec<String> = ports.iter().map(|r| r.spec().to_string()).collect();
    if specs.is_empty() {
        "nothing".to_owned()
    } else {
        specs.join(", ")
    }
}

/// The one place of the rule "which ports can this container be reached on": with
/// `--internal`, its exposed ports on the chosen network; for a `--net=host` container,
/// its exposed ports on the host; else its published ports.
///
/// # Errors
/// [`RecordError::Network`] when `--internal` cannot find the network.
pub fn reachable(facts: &ContainerFacts, internal: Option<&Internal>) -> Result<Vec<Reach>, RecordError> {
    if let Some(internal) = internal {
        let label = facts.label(LABEL_NETWORK).map(|s| s.trim().to_owned());
        let wanted = label.or_else(|| internal.network.clone());
        let networks = || {
            let names: Vec<&str> = facts.networks.iter().map(|(n, _)| n.as_str()).collect();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        let (network, ip) = match (&wanted, facts.networks.as_slice()) {
            (Some(w), all) => all
                .iter()
                .find(|(n, _)| n == w)
                .cloned()
                .ok_or_else(|| RecordError::Network {
                    container: facts.name.clone(),
                    reason: format!("--internal: not on network {w:?}"),
                    networks: networks(),
                })?,
            (None, [only]) => only.clone(),
            (None, _) => {
                return Err(RecordError::Network {
                    container: facts.name.clone(),
                    reason: "--internal: not on exactly one network".to_owned(),
                    networks: networks(),
                });
            }
        };
        let mut ports = facts.exposed.clone();
        ports.extend(facts.ports.iter().map(|p| PortSpec {
            port: p.container_port,
            proto: p.proto.clone(),
        }));
        ports.sort();
        ports.dedup();
        return Ok(ports
            .into_iter()
            .map(|port| Reach::Internal {
                network: network.clone(),
                ip,
                port,
            })
            .collect());
    }
    if facts.network_mode == "host" {
        return Ok(facts.exposed.iter().cloned().map(Reach::HostNetwork).collect());
    }
    Ok(facts.ports.iter().cloned().map(Reach::Published).collect())
}

/// Picks one port: the one asked for, else the only one.
fn choose_port(
    facts: &ContainerFacts,
    ports: Vec<Reach>,
    wanted: Option<&PortSpec>,
    how: &'static str,
) -> Result<Reach, RecordError> {
    match wanted {
        Some(spec) => {
            let published = list_specs(&ports);
            ports
                .into_iter()
                .find(|r| r.spec() == *spec)
                .ok_or_else(|| RecordError::PortNotPublished {
                    container: facts.name.clone(),
                    port: spec.to_string(),
                    published,
                })
        }
        None => {
            let several = ports.len() > 1;
            let listed = list_specs(&ports);
            match (ports.into_iter().next(), several) {
                (None, _) => Err(RecordError::NoPort {
                    container: facts.name.clone(),
                }),
                (Some(only), false) => Ok(only),
                (Some(_), true) => Err(RecordError::SeveralPorts {
                    container: facts.name.clone(),
                    ports: listed,
                    how,
                }),
            }
        }
    }
}

/// registrator's `SERVICE_*` variables of a container, read as registrator reads them:
/// environment first, then labels (a label wins); the suffix without regard to case
/// (`SERVICE_Name`); `SERVICE_<port>_<key>` applies to that exposed port only and wins over
/// `SERVICE_<key>`; an empty value counts as unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registrator {
    /// `SERVICE_<key>`, key lower-cased.
    general: BTreeMap<String, String>,
    /// `SERVICE_<port>_<key>`, key lower-cased.
    by_port: BTreeMap<u16, BTreeMap<String, String>>,
}

/// The keys registrator gives a meaning; every other key is an attribute.
const KNOWN_KEYS: [&str; 4] = ["name", "id", "tags", "ignore"];

impl Registrator {
    /// Reads the variables of `facts`.
    #[must_use]
    pub fn read(facts: &ContainerFacts) -> Registrator {
        let mut r = Registrator::default();
        let env = facts.env.iter().filter_map(|kv| kv.split_once('='));
        let labels = facts.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in env.chain(labels) {
            // The prefix is matched exactly (as registrator does), the rest in any case.
            let Some(suffix) = k.strip_prefix("SERVICE_") else {
                continue;
            };
            let key = suffix.to_ascii_lowercase();
            let value = v.trim();
            let (map, key) = match key.split_once('_') {
                Some((port, rest)) if !rest.is_empty() && port.parse::<u16>().is_ok() => {
                    let port = port.parse::<u16>().unwrap_or_default();
                    (r.by_port.entry(port).or_default(), rest.to_owned())
                }
                _ => (&mut r.general, key),
            };
            if value.is_empty() {
                map.remove(&key);
            } else {
                map.insert(key, value.to_owned());
            }
        }
        r
    }

    /// `SERVICE_<port>_<key>` or else `SERVICE_<key>`, with the variable's name.
    fn get(&self, port: u16, key: &str) -> Option<(String, &str)> {
        if let Some(v) = self.by_port.get(&port).and_then(|m| m.get(key)) {
            return Some((format!("SERVICE_{port}_{}", key.to_ascii_uppercase()), v.as_str()));
        }
        self.general
            .get(key)
            .map(|v| (format!("SERVICE_{}", key.to_ascii_uppercase()), v.as_str()))
    }

    /// Whether any `SERVICE_NAME` or `SERVICE_<port>_NAME` is set: the container opted in.
    fn names_something(&self) -> bool {
        self.general.contains_key("name") || self.by_port.values().any(|m| m.contains_key("name"))
    }

    /// Tags (`SERVICE_TAGS`, comma-separated, `\,` escapes a comma; `udp` added for a UDP
    /// port, as registrator does) and attributes (every other key) of `port`.
    fn meta(&self, port: &PortSpec) -> Meta {
        let mut tags = self
            .get(port.port, "tags")
            .map(|(_, v)| split_tags(v))
            .unwrap_or_default();
        if port.proto == "udp" {
            tags.push("udp".to_owned());
        }
        let mut attrs: BTreeMap<String, String> = self.general.clone();
        if let Some(m) = self.by_port.get(&port.port) {
            attrs.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        attrs.retain(|k, _| !KNOWN_KEYS.contains(&k.as_str()));
        Meta { tags, attrs }
    }
}

/// Splits `a,b\,c` into `a`, `b,c` (registrator's escaped commas); empty parts dropped.
fn split_tags(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                cur.push(',');
                chars.next();
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn label_parse<T: FromStr<Err = String>>(facts: &ContainerFacts, label: &str) -> Result<Option<T>, RecordError> {
    match facts.label(label) {
        None => Ok(None),
        Some(v) => v.parse::<T>().map(Some).map_err(|reason| RecordError::BadLabel {
            container: facts.name.clone(),
            label: label.to_owned(),
            value: shorten(v),
            reason,
        }),
    }
}

/// The longest `announce.*` label or `SERVICE_*` label or variable value read: names are
/// at most 128 bytes, tags and attributes short; anything longer is a mistake or an attack
/// and is refused before it is parsed, logged or written.
pub const MAX_SETTING: usize = 4096;

/// Refuses a container whose `announce.*` / `SERVICE_*` settings hold a value over
/// [`MAX_SETTING`], naming the first.
fn refuse_oversized_settings(facts: &ContainerFacts) -> Result<(), RecordError> {
    let ours = |k: &str| k.starts_with("announce.") || k.starts_with("SERVICE_");
    let labels = facts.labels.iter().map(|(k, v)| (k.clone(), v.as_str()));
    let env = facts
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (format!("{k} (environment)"), v));
    match labels.chain(env).find(|(k, v)| ours(k) && v.len() > MAX_SETTING) {
        Some((label, v)) => Err(RecordError::BadLabel {
            container: facts.name.clone(),
            label,
            value: shorten(v),
            reason: format!("longer than {MAX_SETTING} bytes"),
        }),
        None => Ok(()),
    }
}

fn check_name(facts: &ContainerFacts, what: &'static str, value: &str) -> Result<(), RecordError> {
    validate_name(what, value).map_err(|e| RecordError::BadName {
        container: facts.name.clone(),
        what,
        value: shorten(value),
        reason: match e {
            sidekick::Error::Name { reason, .. } => reason.to_owned(),
            other => other.to_string(),
        },
    })
}

/// What names one record, and where each part came from (for `explain`).
struct Naming {
    service: String,
    instance: String,
    unit: String,
    layout: Layout,
    check: Check,
    meta: Meta,
    why: Vec<String>,
}

/// Decides the records of one running container.
///
/// Whether it is running and healthy is decided elsewhere.
///
/// # Errors
/// [`RecordError`] naming the container and the offending value.
pub fn record_for(facts: &ContainerFacts, machine: &Machine, rules: &Rules) -> Result<Decision, RecordError> {
    match &rules.mode {
        Mode::Container(rule) => {
            let ports = reachable(facts, None)?;
            let reach = choose_port(facts, ports, rule.port.as_ref(), "--port")?;
            let why = vec![
                format!(
                    "service {:?} and instance {:?} from --service and --instance",
                    rule.service, rule.instance
                ),
                match &rule.port {
                    Some(spec) => format!("port {spec} from --port"),
                    None => format!("port {}: the only published port", reach.spec()),
                },
            ];
            let naming = Naming {
                service: rule.service.clone(),
                instance: rule.instance.clone(),
                unit: rule.unit.clone().unwrap_or_else(|| facts.name.clone()),
                layout: rule.layout,
                check: rules.check.clone(),
                meta: Meta::default(),
                why,
            };
            Ok(Decision::Announce {
                planned: vec![plan(facts, machine, &reach, naming)?],
                notes: Vec::new(),
            })
        }
        Mode::Host(host) => host_mode(facts, machine, host, &rules.check),
    }
}

fn host_mode(
    facts: &ContainerFacts,
    machine: &Machine,
    host: &HostRule,
    check: &Check,
) -> Result<Decision, RecordError> {
    let vars = Registrator::read(facts);
    if vars.general.contains_key("ignore") {
        return Ok(Decision::Skip(Skip::Ignored));
    }
    let label_service = facts.label(LABEL_SERVICE).map(|s| s.trim().to_owned());
    if label_service.is_none() && !vars.names_something() {
        return Ok(Decision::Skip(Skip::NotOptedIn));
    }
    refuse_oversized_settings(facts)?;
    let label_port: Option<PortSpec> = label_parse(facts, LABEL_PORT)?;
    let layout = label_parse::<Layout>(facts, LABEL_LAYOUT)?.unwrap_or(host.layout);
    let check = label_parse::<Check>(facts, LABEL_CHECK)?.unwrap_or_else(|| check.clone());
    let unit = facts.label(LABEL_UNIT).cloned().unwrap_or_else(|| facts.name.clone());
    let label_instance = facts.label(LABEL_INSTANCE).map(|s| s.trim().to_owned());
    let all = reachable(facts, host.internal.as_ref())?;
    if all.is_empty() {
        return Err(RecordError::NoPort {
            container: facts.name.clone(),
        });
    }
    let mut notes = Vec::new();
    // Port-specific names of ports the container cannot be reached on: ignored.
    for (port, m) in &vars.by_port {
        if let Some(name) = m.get("name")
            && !all.iter().any(|r| r.spec().port == *port)
        {
            notes.push(Note::NameOfUnpublishedPort {
                port: *port,
                name: name.clone(),
            });
        }
    }
    // `announce.port` chooses one port; else every reachable one is a candidate.
    let chosen = match &label_port {
        Some(_) => vec![choose_port(facts, all, label_port.as_ref(), "the announce.port label")?],
        None => all,
    };
    // Registrator names a port `<name>-<port>` when the container has several (counted
    // before SERVICE_<port>_IGNORE, as registrator counts them).
    let group = chosen.len() > 1;
    let mut candidates = Vec::new();
    for reach in chosen {
        let spec = reach.spec();
        if vars.by_port.get(&spec.port).is_some_and(|m| m.contains_key("ignore")) {
            notes.push(Note::PortIgnored { port: spec });
        } else {
            candidates.push(reach);
        }
    }
    let mut planned = Vec::new();
    if let Some(service) = &label_service {
        // The announcer's own labels: one container, one record.
        if candidates.is_empty() && !notes.is_empty() {
            // Its port is ignored (SERVICE_<port>_IGNORE).
            return Ok(Decision::Announce { planned, notes });
        }
        let reach = choose_port(facts, candidates, None, "the announce.port label")?;
        let spec = reach.spec();
        let mut why = vec![
            match &label_port {
                Some(p) => format!("port {p} from label {LABEL_PORT}"),
                None => format!("port {spec}: the only published port"),
            },
            format!("service {service:?} from label {LABEL_SERVICE}"),
        ];
        let instance = instance_for(facts, machine, &vars, &spec, label_instance.as_deref(), &mut why);
        let naming = Naming {
            service: service.clone(),
            instance,
            unit,
            layout,
            check,
            meta: vars.meta(&spec),
            why,
        };
        planned.push(plan(facts, machine, &reach, naming)?);
        return Ok(Decision::Announce { planned, notes });
    }
    for reach in candidates {
        let spec = reach.spec();
        let mut why = Vec::new();
        let service = match (
            vars.by_port.get(&spec.port).and_then(|m| m.get("name")),
            vars.general.get("name"),
        ) {
            (Some(name), _) => {
                why.push(format!("service {name:?} from SERVICE_{}_NAME", spec.port));
                name.clone()
            }
            (None, Some(name)) if group => {
                why.push(format!(
                    "service \"{name}-{}\": SERVICE_NAME and the exposed port (the container has several ports)",
                    spec.port
                ));
                format!("{name}-{}", spec.port)
            }
            (None, Some(name)) => {
                why.push(format!("service {name:?} from SERVICE_NAME"));
                name.clone()
            }
            (None, None) => {
                notes.push(Note::PortUnnamed { port: spec });
                continue;
            }
        };
        why.insert(0, format!("port {spec}"));
        let instance = instance_for(facts, machine, &vars, &spec, label_instance.as_deref(), &mut why);
        let naming = Naming {
            service,
            instance,
            unit: unit.clone(),
            layout,
            check: check.clone(),
            meta: vars.meta(&spec),
            why,
        };
        planned.push(plan(facts, machine, &reach, naming)?);
    }
    Ok(Decision::Announce { planned, notes })
}

/// The instance of a `host` mode record: `announce.instance`, else `SERVICE_<port>_ID` /
/// `SERVICE_ID`, else [`default_instance`].
fn instance_for(
    facts: &ContainerFacts,
    machine: &Machine,
    vars: &Registrator,
    port: &PortSpec,
    label: Option<&str>,
    why: &mut Vec<String>,
) -> String {
    if let Some(i) = label {
        why.push(format!("instance {i:?} from label {LABEL_INSTANCE}"));
        return i.to_owned();
    }
    if let Some((var, id)) = vars.get(port.port, "id") {
        why.push(format!("instance {id:?} from {var}"));
        return id.to_owned();
    }
    let i = default_instance(&machine.hostname, &facts.name, port);
    why.push(format!(
        "instance {i:?}: host, container name and port (unique across hosts; set announce.instance to choose)"
    ));
    i
}

/// The record for one port, with the reasons shared by every mode.
fn plan(facts: &ContainerFacts, machine: &Machine, reach: &Reach, naming: Naming) -> Result<Planned, RecordError> {
    let Naming {
        service,
        instance,
        unit,
        layout,
        check,
        meta,
        mut why,
    } = naming;
    check_name(facts, "service", &service)?;
    check_name(facts, "instance", &instance)?;
    if !matches!(reach, Reach::Internal { .. }) {
        require_public_ipv4(layout, machine, &facts.name)?;
    }
    let (public_ipv4, private_ipv4) = reach.addresses(machine);
    why.push(reach.why());
    why.push(format!("host {:?}", machine.hostname));
    match reach {
        Reach::Internal { .. } => why.push(format!(
            "public and private address {private_ipv4}: the container's own"
        )),
        Reach::Published(_) | Reach::HostNetwork(_) => {
            why.push(match machine.public_ipv4 {
                Some(ip) => format!("public address {ip} from {}", machine.public_source),
                None => format!("public address: {}", machine.public_source),
            });
            why.push(format!(
                "private address {} from {}",
                machine.private_ipv4, machine.private_source
            ));
        }
    }
    if !meta.tags.is_empty() || !meta.attrs.is_empty() {
        why.push(match layout {
            Layout::Json => format!("tags {:?} and attributes {:?} (registrator's)", meta.tags, meta.attrs),
            Layout::Fields | Layout::Value => format!(
                "tags {:?} and attributes {:?} not written: only the json layout carries them",
                meta.tags, meta.attrs
            ),
        });
    }
    let target = reach.target(facts);
    why.push(match &check {
        Check::None => "check none: announced while running".to_owned(),
        Check::Docker => "check docker: announced while Docker's HEALTHCHECK says healthy".to_owned(),
        c => format!("check {c}: probes {target}"),
    });
    why.push(format!("layout {layout}"));
    Ok(Planned {
        record: Record {
            service,
            instance,
            unit,
            host: machine.hostname.clone(),
            public_ipv4,
            private_ipv4,
            port: reach.record_port(),
            container_id: facts.id.clone(),
            container_name: facts.name.clone(),
        },
        layout,
        meta,
        check,
        target,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::State;

    const HOST: &str = "core01";

    fn machine(public: Option<Ipv4Addr>) -> Machine {
        Machine {
            hostname: HOST.into(),
            public_ipv4: public,
            private_ipv4: Ipv4Addr::new(10, 0, 0, 2),
            public_source: "--public-ipv4".into(),
            private_source: "--private-ipv4".into(),
        }
    }

    fn port(spec: &str, host_port: u16) -> PublishedPort {
        let p: PortSpec = spec.parse().unwrap();
        PublishedPort {
            container_port: p.port,
            proto: p.proto,
            host_ip: None,
            host_port,
        }
    }

    fn facts(labels: &[(&str, &str)], env: &[&str], ports: &[(&str, u16)]) -> ContainerFacts {
        ContainerFacts {
            id: "0123456789abcdef".into(),
            name: "web-01".into(),
            state: State::Running,
            health: None,
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            env: env.iter().map(|s| (*s).to_owned()).collect(),
            ports: ports.iter().map(|(s, p)| port(s, *p)).collect(),
            networks: vec![("bridge".into(), Ipv4Addr::new(172, 17, 0, 5))],
            exposed: ports.iter().map(|(s, _)| s.parse().unwrap()).collect(),
            network_mode: "bridge".into(),
            stop_signal: libc::SIGTERM,
            started_at: String::new(),
        }
    }

    fn host_rules() -> Rules {
        Rules {
            mode: Mode::Host(HostRule {
                layout: Layout::Fields,
                internal: None,
            }),
            check: Check::Tcp,
        }
    }

    fn container_rules(port: Option<&str>, layout: Layout) -> Rules {
        Rules {
            mode: Mode::Container(ContainerRule {
                name: "web-01".into(),
                service: "web".into(),
                instance: "web01".into(),
                layout,
                unit: Some("monweb@01.service".into()),
                port: port.map(|p| p.parse().unwrap()),
            }),
            check: Check::Http { path: "/".into() },
        }
    }

    /// One record boiled down: (service, instance, record port, layout, check).
    type Rec = (String, String, u16, Layout, String);
    /// A decision boiled down: the records, or `Err(fragment of the error)`.
    type Outcome = Result<Vec<Rec>, String>;

    fn outcome(f: &ContainerFacts, rules: &Rules, public: Option<Ipv4Addr>) -> Outcome {
        record_for(f, &machine(public), rules)
            .map(|d| {
                d.planned()
                    .iter()
                    .map(|p| {
                        (
                            p.record.service.clone(),
                            p.record.instance.clone(),
                            p.record.port,
                            p.layout,
                            p.check.to_string(),
                        )
                    })
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    fn rec(s: &str, i: &str, port: u16, layout: Layout, check: &str) -> Rec {
        (s.into(), i.into(), port, layout, check.into())
    }

    /// The default instance of web-01 on core01.
    fn def(port: &str) -> String {
        default_instance(HOST, "web-01", &port.parse().unwrap())
    }

    fn assert_cases(cases: Vec<Case>, rules: &Rules) {
        let pub_ip = Some(Ipv4Addr::new(1, 2, 3, 4));
        for (labels, env, ports, want) in cases {
            let f = facts(labels, env, ports);
            let got = outcome(&f, rules, pub_ip);
            match (&want, &got) {
                (Err(fragment), Err(msg)) => {
                    assert!(msg.contains(fragment.as_str()), "{labels:?} {env:?}: {msg}");
                    assert!(msg.contains("web-01"), "the error names the container: {msg}");
                }
                _ => assert_eq!(got, want, "labels {labels:?} env {env:?} ports {ports:?}"),
            }
        }
    }

    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [(&'a str, u16)], Outcome);

    #[test]
    fn host_mode_table() {
        let one = [("80/tcp", 18001)];
        let two = [("80/tcp", 18001), ("443/tcp", 18443)];
        let f = Layout::Fields;
        let cases: Vec<Case> = vec![
            // Not ours: no label, no registrator variable.
            (&[], &["PATH=/bin"], &one, Ok(vec![])),
            // Labels.
            (
                &[("announce.service", "web")],
                &[],
                &one,
                Ok(vec![rec("web", &def("80/tcp"), 18001, f, "tcp")]),
            ),
            (
                &[
                    ("announce.service", "web"),
                    ("announce.instance", "w1"),
                    ("announce.layout", "json"),
                ],
                &[],
                &one,
                Ok(vec![rec("web", "w1", 18001, Layout::Json, "tcp")]),
            ),
            (
                &[
                    ("announce.service", "web"),
                    ("announce.port", "443/tcp"),
                    ("announce.check", "http:/h"),
                ],
                &[],
                &two,
                Ok(vec![rec("web", &def("443/tcp"), 18443, f, "http:/h")]),
            ),
            (
                &[("announce.service", "web")],
                &["SERVICE_NAME=api"],
                &one,
                Ok(vec![rec("web", &def("80/tcp"), 18001, f, "tcp")]),
            ),
            (
                &[("announce.service", "web"), ("SERVICE_IGNORE", "true")],
                &[],
                &one,
                Ok(vec![]),
            ),
            // Bad input.
            (
                &[("announce.service", "web")],
                &[],
                &two,
                Err("several ports (80/tcp, 443/tcp): choose one with the announce.port label".into()),
            ),
            (
                &[("announce.service", "web")],
                &[],
                &[],
                Err("publishes no port".into()),
            ),
            (
                &[("announce.service", "web"), ("announce.port", "abc")],
                &[],
                &one,
                Err("invalid label announce.port=\"abc\"".into()),
            ),
            (
                &[("announce.service", "web"), ("announce.port", "8080/tcp")],
                &[],
                &one,
                Err("does not publish port 8080/tcp (it publishes: 80/tcp)".into()),
            ),
            (
                &[("announce.service", "web"), ("announce.layout", "yaml")],
                &[],
                &one,
                Err("announce.layout=\"yaml\"".into()),
            ),
            (
                &[("announce.service", "web"), ("announce.check", "ping")],
                &[],
                &one,
                Err("announce.check=\"ping\"".into()),
            ),
            (
                &[("announce.service", "web"), ("announce.instance", "a/b")],
                &[],
                &one,
                Err("invalid instance \"a/b\"".into()),
            ),
            (
                &[("announce.service", "we b")],
                &[],
                &one,
                Err("invalid service \"we b\"".into()),
            ),
        ];
        assert_cases(cases, &host_rules());
    }

    /// registrator's conventions, one row each (the README's compatibility table points here).
    #[test]
    fn registrator_table() {
        let one = [("80/tcp", 18001)];
        let two = [("80/tcp", 18001), ("443/tcp", 18443)];
        let f = Layout::Fields;
        let cases: Vec<Case> = vec![
            // SERVICE_NAME, from the environment or a label (a label wins).
            (
                &[],
                &["SERVICE_NAME=api"],
                &one,
                Ok(vec![rec("api", &def("80/tcp"), 18001, f, "tcp")]),
            ),
            (
                &[("SERVICE_NAME", "lbl")],
                &["SERVICE_NAME=env"],
                &one,
                Ok(vec![rec("lbl", &def("80/tcp"), 18001, f, "tcp")]),
            ),
            // Suffixes without regard to case.
            (
                &[],
                &["SERVICE_Name=api", "SERVICE_80_id=x1"],
                &one,
                Ok(vec![rec("api", "x1", 18001, f, "tcp")]),
            ),
            // SERVICE_IGNORE.
            (&[], &["SERVICE_NAME=api", "SERVICE_IGNORE=1"], &one, Ok(vec![])),
            // Several published ports: one record per port, `<name>-<port>`.
            (
                &[],
                &["SERVICE_NAME=api"],
                &two,
                Ok(vec![
                    rec("api-80", &def("80/tcp"), 18001, f, "tcp"),
                    rec("api-443", &def("443/tcp"), 18443, f, "tcp"),
                ]),
            ),
            // ... or the port's own name, without the suffix.
            (
                &[],
                &["SERVICE_NAME=api", "SERVICE_443_NAME=tls"],
                &two,
                Ok(vec![
                    rec("api-80", &def("80/tcp"), 18001, f, "tcp"),
                    rec("tls", &def("443/tcp"), 18443, f, "tcp"),
                ]),
            ),
            // Only one port named: the other is left out (a note says so), not dropped silently.
            (
                &[],
                &["SERVICE_443_NAME=tls"],
                &two,
                Ok(vec![rec("tls", &def("443/tcp"), 18443, f, "tcp")]),
            ),
            // SERVICE_<port>_IGNORE.
            (
                &[],
                &["SERVICE_NAME=api", "SERVICE_443_IGNORE=true"],
                &two,
                Ok(vec![rec("api-80", &def("80/tcp"), 18001, f, "tcp")]),
            ),
            (
                &[("announce.service", "web")],
                &["SERVICE_443_IGNORE=true"],
                &two,
                Ok(vec![rec("web", &def("80/tcp"), 18001, f, "tcp")]),
            ),
            // A name for a port that is not published: ignored, SERVICE_NAME used.
            (
                &[],
                &["SERVICE_NAME=api", "SERVICE_9000_NAME=x"],
                &one,
                Ok(vec![rec("api", &def("80/tcp"), 18001, f, "tcp")]),
            ),
            (&[], &["SERVICE_9000_NAME=x"], &one, Ok(vec![])),
            // SERVICE_ID and SERVICE_<port>_ID as the instance (the port's wins).
            (
                &[],
                &["SERVICE_NAME=api", "SERVICE_ID=api.1"],
                &one,
                Ok(vec![rec("api", "api.1", 18001, f, "tcp")]),
            ),
            (
                &[],
                &["SERVICE_NAME=api", "SERVICE_ID=a", "SERVICE_443_ID=https.12345"],
                &two,
                Ok(vec![
                    rec("api-80", "a", 18001, f, "tcp"),
                    rec("api-443", "https.12345", 18443, f, "tcp"),
                ]),
            ),
            // announce.instance wins over SERVICE_ID.
            (
                &[("announce.instance", "i1")],
                &["SERVICE_NAME=api", "SERVICE_ID=a"],
                &one,
                Ok(vec![rec("api", "i1", 18001, f, "tcp")]),
            ),
            // A UDP port's default identity says so, as registrator's does.
            (
                &[],
                &["SERVICE_NAME=dns"],
                &[("53/udp", 1053)],
                Ok(vec![rec("dns", &def("53/udp"), 1053, f, "tcp")]),
            ),
            (&[], &["SERVICE_NAME=api"], &[], Err("publishes no port".into())),
        ];
        assert_cases(cases, &host_rules());
        assert_eq!(def("53/udp"), "core01:web-01:53:udp");
        assert_eq!(def("80/tcp"), "core01:web-01:80");
    }

    #[test]
    fn notes_say_which_ports_are_left_out_and_why() {
        let two = [("80/tcp", 18001), ("443/tcp", 18443)];
        /// (environment, published ports, the notes).
        type NoteCase<'a> = (&'a [&'a str], &'a [(&'a str, u16)], &'a [&'a str]);
        let cases: &[NoteCase] = &[
            (
                &["SERVICE_443_NAME=tls"],
                &two,
                &["port 80/tcp not announced: no SERVICE_80_NAME and no SERVICE_NAME name it"],
            ),
            (
                &["SERVICE_NAME=api", "SERVICE_443_IGNORE=1"],
                &two,
                &["port 443/tcp not announced: SERVICE_443_IGNORE is set"],
            ),
            (
                &["SERVICE_NAME=api", "SERVICE_9000_NAME=x"],
                &[("80/tcp", 1)],
                &["SERVICE_9000_NAME=\"x\" ignored: the container does not publish port 9000"],
            ),
            (&["SERVICE_NAME=api"], &two, &[]),
        ];
        for (env, ports, want) in cases {
            let d = record_for(
                &facts(&[], env, ports),
                &machine(Some(Ipv4Addr::LOCALHOST)),
                &host_rules(),
            )
            .unwrap();
            let Decision::Announce { notes, .. } = d else {
                panic!("{env:?}: announced")
            };
            let got: Vec<String> = notes.iter().map(ToString::to_string).collect();
            assert_eq!(got, *want, "{env:?}");
        }
        let skip = |env: &[&str]| record_for(&facts(&[], env, &two), &machine(None), &host_rules()).unwrap();
        assert_eq!(skip(&[]), Decision::Skip(Skip::NotOptedIn));
        assert_eq!(
            skip(&["SERVICE_NAME=a", "SERVICE_IGNORE=1"]),
            Decision::Skip(Skip::Ignored)
        );
    }

    // Written to kill the mutants scripts/mutants found alive (TESTING.md).

    #[test]
    fn skips_say_why_in_words() {
        assert_eq!(
            Skip::NotOptedIn.to_string(),
            "no announce.service label and no registrator SERVICE_NAME / SERVICE_<port>_NAME"
        );
        assert_eq!(Skip::Ignored.to_string(), "SERVICE_IGNORE is set");
    }

    #[test]
    fn attributes_with_underscores_are_not_taken_for_port_variables() {
        let env = [
            "SERVICE_NAME=api",
            "SERVICE_MY_ATTR=x",
            "SERVICE_80_=y",
            "SERVICE_80_WEIGHT=3",
        ];
        let d = record_for(
            &facts(&[], &env, &[("80/tcp", 18001)]),
            &machine(Some(Ipv4Addr::LOCALHOST)),
            &host_rules(),
        )
        .unwrap();
        let attrs: Vec<(String, String)> = d.planned()[0].meta.attrs.clone().into_iter().collect();
        assert_eq!(
            attrs,
            [
                ("80_".to_owned(), "y".to_owned()),
                ("my_attr".to_owned(), "x".to_owned()),
                ("weight".to_owned(), "3".to_owned()),
            ]
        );
    }

    #[test]
    fn a_backslash_escapes_only_a_comma() {
        assert_eq!(split_tags("a\\b,c\\,d"), ["a\\b", "c,d"]);
    }

    #[test]
    fn an_announced_container_whose_only_port_is_ignored_gets_no_record_and_a_note() {
        let d = record_for(
            &facts(
                &[("announce.service", "web")],
                &["SERVICE_80_IGNORE=1"],
                &[("80/tcp", 18001)],
            ),
            &machine(Some(Ipv4Addr::LOCALHOST)),
            &host_rules(),
        )
        .unwrap();
        let Decision::Announce { planned, notes } = d else {
            panic!("announced: {d:?}")
        };
        assert!(planned.is_empty(), "{planned:?}");
        assert_eq!(
            notes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["port 80/tcp not announced: SERVICE_80_IGNORE is set"]
        );
    }

    #[test]
    fn the_reasons_mention_tags_and_attributes_only_when_there_are_some() {
        let why = |env: &[&str]| {
            record_for(
                &facts(&[], env, &[("80/tcp", 18001)]),
                &machine(Some(Ipv4Addr::LOCALHOST)),
                &host_rules(),
            )
            .unwrap()
            .planned()[0]
                .why
                .clone()
        };
        assert!(!why(&["SERVICE_NAME=api"]).iter().any(|w| w.contains("tags")));
        for env in [
            &["SERVICE_NAME=api", "SERVICE_REGION=us2"][..],
            &["SERVICE_NAME=api", "SERVICE_TAGS=a"],
        ] {
            assert!(
                why(env)
                    .iter()
                    .any(|w| w.contains("not written: only the json layout carries them")),
                "{env:?}: {:?}",
                why(env)
            );
        }
    }

    #[test]
    fn tags_and_attributes_as_registrator_reads_them() {
        let two = [("80/tcp", 18001), ("443/tcp", 18443)];
        let env = [
            "SERVICE_NAME=db",
            "SERVICE_TAGS=master,backups,a\\,b",
            "SERVICE_REGION=us2",
            "SERVICE_443_SNI=enabled",
            "SERVICE_443_TAGS=tls",
            "SERVICE_80_ID=x",
        ];
        let d = record_for(
            &facts(&[], &env, &two),
            &machine(Some(Ipv4Addr::LOCALHOST)),
            &host_rules(),
        )
        .unwrap();
        let metas: Vec<(String, Meta)> = d
            .planned()
            .iter()
            .map(|p| (p.record.service.clone(), p.meta.clone()))
            .collect();
        let attrs = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        assert_eq!(
            metas,
            vec![
                (
                    "db-80".to_owned(),
                    Meta {
                        tags: vec!["master".into(), "backups".into(), "a,b".into()],
                        attrs: attrs(&[("region", "us2")]),
                    }
                ),
                (
                    "db-443".to_owned(),
                    Meta {
                        tags: vec!["tls".into()],
                        attrs: attrs(&[("region", "us2"), ("sni", "enabled")]),
                    }
                ),
            ]
        );
        let udp = record_for(
            &facts(&[], &["SERVICE_NAME=dns"], &[("53/udp", 1053)]),
            &machine(Some(Ipv4Addr::LOCALHOST)),
            &host_rules(),
        )
        .unwrap();
        assert_eq!(udp.planned()[0].meta.tags, ["udp"]);
        assert_eq!(split_tags(",a,, b ,"), ["a", "b"]);
    }

    #[test]
    fn host_network_and_internal_reach() {
        let mut hostnet = facts(&[], &["SERVICE_NAME=api"], &[]);
        hostnet.network_mode = "host".into();
        hostnet.networks.clear();
        hostnet.exposed = vec!["8080/tcp".parse().unwrap()];
        let p = &record_for(&hostnet, &machine(Some(Ipv4Addr::LOCALHOST)), &host_rules())
            .unwrap()
            .planned()[0]
            .clone();
        assert_eq!(
            (p.record.port, p.record.private_ipv4),
            (8080, Ipv4Addr::new(10, 0, 0, 2))
        );
        assert_eq!(p.target.host, "127.0.0.1:8080".parse().unwrap());
        assert!(p.why.iter().any(|w| w.contains("--net=host")), "{:?}", p.why);

        // --internal: the container's address on the chosen network and its exposed port.
        let mut f = facts(&[], &["SERVICE_NAME=api"], &[("80/tcp", 18001)]);
        f.exposed.push("9000/tcp".parse().unwrap());
        f.networks = vec![
            ("backend".into(), Ipv4Addr::new(172, 30, 0, 9)),
            ("bridge".into(), Ipv4Addr::new(172, 17, 0, 5)),
        ];
        let rules = |network: Option<&str>| Rules {
            mode: Mode::Host(HostRule {
                layout: Layout::Fields,
                internal: Some(Internal {
                    network: network.map(str::to_owned),
                }),
            }),
            check: Check::Tcp,
        };
        // No public address needed: the record carries the container's.
        let d = record_for(&f, &machine(None), &rules(Some("backend"))).unwrap();
        let got: Vec<(String, u16, Option<Ipv4Addr>, Ipv4Addr)> = d
            .planned()
            .iter()
            .map(|p| {
                (
                    p.record.service.clone(),
                    p.record.port,
                    p.record.public_ipv4,
                    p.record.private_ipv4,
                )
            })
            .collect();
        let ip = Ipv4Addr::new(172, 30, 0, 9);
        assert_eq!(
            got,
            vec![
                ("api-80".into(), 80, Some(ip), ip),
                ("api-9000".into(), 9000, Some(ip), ip)
            ]
        );
        assert_eq!(d.planned()[0].target.host, "172.30.0.9:80".parse().unwrap());
        // The label chooses the network over the flag.
        f.labels.push((LABEL_NETWORK.into(), "bridge".into()));
        let d = record_for(&f, &machine(None), &rules(Some("backend"))).unwrap();
        assert_eq!(d.planned()[0].record.private_ipv4, Ipv4Addr::new(172, 17, 0, 5));
        f.labels.clear();
        for (network, fragment) in [
            (Some("nope"), "not on network \"nope\" (it is on: backend, bridge)"),
            (None, "not on exactly one network"),
        ] {
            let e = record_for(&f, &machine(None), &rules(network)).unwrap_err().to_string();
            assert!(e.contains(fragment) && e.contains("web-01"), "{e}");
        }
    }

    #[test]
    fn container_mode_table() {
        let pub_ip = Some(Ipv4Addr::new(1, 2, 3, 4));
        let h = "http:/";
        type Case<'a> = (Option<&'a str>, Layout, &'a [(&'a str, u16)], Option<Ipv4Addr>, Outcome);
        let cases: Vec<Case> = vec![
            (
                None,
                Layout::Fields,
                &[("80/tcp", 18001)],
                pub_ip,
                Ok(vec![rec("web", "web01", 18001, Layout::Fields, h)]),
            ),
            (
                Some("443/tcp"),
                Layout::Json,
                &[("80/tcp", 1), ("443/tcp", 2)],
                pub_ip,
                Ok(vec![rec("web", "web01", 2, Layout::Json, h)]),
            ),
            // The value layout needs no public address.
            (
                None,
                Layout::Value,
                &[("3306/tcp", 3306)],
                None,
                Ok(vec![rec("web", "web01", 3306, Layout::Value, h)]),
            ),
            (
                None,
                Layout::Fields,
                &[("3306/tcp", 3306)],
                None,
                Err("needs a public IPv4".into()),
            ),
            (
                None,
                Layout::Fields,
                &[("80/tcp", 1), ("443/tcp", 2)],
                pub_ip,
                Err("choose one with --port".into()),
            ),
            (
                Some("8080"),
                Layout::Fields,
                &[("80/tcp", 1)],
                pub_ip,
                Err("does not publish port 8080/tcp".into()),
            ),
        ];
        for (port, layout, ports, public, want) in cases {
            // Labels and registrator variables play no part in container mode.
            let f = facts(&[("announce.service", "x")], &["SERVICE_80_IGNORE=1"], ports);
            let got = outcome(&f, &container_rules(port, layout), public);
            match (&want, &got) {
                (Err(fragment), Err(msg)) => assert!(msg.contains(fragment.as_str()), "{msg}"),
                _ => assert_eq!(got, want, "port {port:?} layout {layout}"),
            }
        }
    }

    #[test]
    fn record_fields_targets_and_reasons() {
        let f = facts(&[], &[], &[("80/tcp", 18001)]);
        let d = record_for(
            &f,
            &machine(Some(Ipv4Addr::LOCALHOST)),
            &container_rules(None, Layout::Fields),
        )
        .unwrap();
        let p = &d.planned()[0];
        assert_eq!(p.record.unit, "monweb@01.service");
        assert_eq!(p.record.host, "core01");
        assert_eq!(p.record.private_ipv4, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.record.container_name, "web-01");
        assert_eq!(p.target.container, Some("172.17.0.5:80".parse().unwrap()));
        assert_eq!(p.target.host, "127.0.0.1:18001".parse().unwrap());
        let why = p.why.join("\n");
        for fragment in [
            "only published port",
            "host port 18001",
            "--private-ipv4",
            "check http:/",
            "layout fields",
        ] {
            assert!(why.contains(fragment), "{fragment} missing from:\n{why}");
        }
        // The unit defaults to the container name.
        let mut rules = container_rules(None, Layout::Fields);
        if let Mode::Container(r) = &mut rules.mode {
            r.unit = None;
        }
        let d = record_for(&f, &machine(Some(Ipv4Addr::LOCALHOST)), &rules).unwrap();
        assert_eq!(d.planned()[0].record.unit, "web-01");
        // Host mode says where every part came from.
        let f = facts(&[], &["SERVICE_NAME=api", "SERVICE_TAGS=a"], &[("80/tcp", 18001)]);
        let d = record_for(&f, &machine(Some(Ipv4Addr::LOCALHOST)), &host_rules()).unwrap();
        let why = d.planned()[0].why.join("\n");
        for fragment in [
            "service \"api\" from SERVICE_NAME",
            "instance \"core01:web-01:80\": host, container name and port",
            "not written: only the json layout carries them",
        ] {
            assert!(why.contains(fragment), "{fragment} missing from:\n{why}");
        }
    }

    #[test]
    fn port_spec_table() {
        let cases: &[(&str, Option<(u16, &str)>)] = &[
            ("80/tcp", Some((80, "tcp"))),
            ("80", Some((80, "tcp"))),
            ("53/udp", Some((53, "udp"))),
            ("0", None),
            ("abc", None),
            ("80/icmp", None),
            ("70000", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<PortSpec>().ok();
            assert_eq!(got.as_ref().map(|p| (p.port, p.proto.as_str())), *want, "{input:?}");
        }
        assert!("abc".parse::<PortSpec>().unwrap_err().contains("\"abc\""));
    }
}
