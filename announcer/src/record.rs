//! Which record a container becomes, and why (pure: no I/O).
//!
//! [`record_for`] decides, from what Docker says about a container ([`ContainerFacts`]),
//! what this machine is ([`Machine`]) and how the announcer was started ([`Rules`]):
//! the service and instance, the published port, the addresses, the layout and the check.
//! `explain` prints the same decision, reasons included, so what it shows is what the
//! announcer does.
//!
//! In `host` mode a container is announced when it carries the label `announce.service`
//! or registrator's `SERVICE_NAME` / `SERVICE_<port>_NAME` (environment or label), unless
//! `SERVICE_IGNORE` is set. Optional labels: `announce.instance` (default: the container
//! name), `announce.port`, `announce.layout`, `announce.check`, `announce.unit`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use sidekick::schema::{Layout, Record, validate_name};

use crate::docker::{ContainerFacts, PublishedPort};
use crate::health::{Check, Target};
use crate::machine::Machine;

/// Label naming the service (host mode).
pub const LABEL_SERVICE: &str = "announce.service";
/// Label naming the instance (default: the container name).
pub const LABEL_INSTANCE: &str = "announce.instance";
/// Label choosing the container port (`80/tcp`).
pub const LABEL_PORT: &str = "announce.port";
/// Label choosing the layout (`fields`, `value`, `json`).
pub const LABEL_LAYOUT: &str = "announce.layout";
/// Label choosing the check (`tcp`, `http[:PATH]`, `docker`, `none`).
pub const LABEL_CHECK: &str = "announce.check";
/// Label giving the `unit` field (default: the container name).
pub const LABEL_UNIT: &str = "announce.unit";

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

/// How containers become records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One named container with the record given on the command line.
    Container(ContainerRule),
    /// Every labelled container; `layout` is the default of containers without `announce.layout`.
    Host {
        /// Default layout.
        layout: Layout,
    },
}

/// Everything [`record_for`] needs besides the container and the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Container or host mode.
    pub mode: Mode,
    /// `--check` (host mode: the default of containers without `announce.check`).
    pub check: Check,
}

/// The decision for one container: the record, how to lay it out, how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The record to write.
    pub record: Record,
    /// Its layout.
    pub layout: Layout,
    /// The check that gates it.
    pub check: Check,
    /// Where the check probes.
    pub target: Target,
    /// Why: one line per decision, for `explain` and the logs.
    pub why: Vec<String>,
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
    #[error("container {container:?}: invalid label {label}={value:?}: {reason}")]
    BadLabel {
        /// Container name.
        container: String,
        /// The label.
        label: String,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A service or instance name that cannot be an etcd path segment.
    #[error("container {container:?}: invalid {what} {value:?}: {reason}")]
    BadName {
        /// Container name.
        container: String,
        /// `service` or `instance`.
        what: &'static str,
        /// The name.
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
}

/// Registrator's variables of a container: `SERVICE_*` from the environment, overridden
/// by `SERVICE_*` labels (registrator reads both).
fn registrator_vars(facts: &ContainerFacts) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kv in &facts.env {
        if let Some((k, v)) = kv.split_once('=')
            && k.starts_with("SERVICE_")
        {
            out.insert(k.to_owned(), v.to_owned());
        }
    }
    for (k, v) in &facts.labels {
        if k.starts_with("SERVICE_") {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// `SERVICE_<port>_NAME` entries by port number.
fn port_names(vars: &BTreeMap<String, String>) -> BTreeMap<u16, String> {
    vars.iter()
        .filter_map(|(k, v)| {
            let port = k.strip_prefix("SERVICE_")?.strip_suffix("_NAME")?.parse::<u16>().ok()?;
            (!v.trim().is_empty()).then(|| (port, v.trim().to_owned()))
        })
        .collect()
}

fn list_ports(ports: &[PublishedPort]) -> String {
    ports.iter().map(PublishedPort::spec).collect::<Vec<_>>().join(", ")
}

/// Picks the published port: the one asked for, else the only one.
fn choose_port<'a>(
    facts: &'a ContainerFacts,
    wanted: Option<&PortSpec>,
    how: &'static str,
) -> Result<&'a PublishedPort, RecordError> {
    match wanted {
        Some(spec) => facts
            .ports
            .iter()
            .find(|p| p.container_port == spec.port && p.proto == spec.proto)
            .ok_or_else(|| RecordError::PortNotPublished {
                container: facts.name.clone(),
                port: spec.to_string(),
                published: if facts.ports.is_empty() {
                    "nothing".into()
                } else {
                    list_ports(&facts.ports)
                },
            }),
        None => match facts.ports.as_slice() {
            [] => Err(RecordError::NoPort {
                container: facts.name.clone(),
            }),
            [only] => Ok(only),
            many => Err(RecordError::SeveralPorts {
                container: facts.name.clone(),
                ports: list_ports(many),
                how,
            }),
        },
    }
}

fn label_parse<T: FromStr<Err = String>>(facts: &ContainerFacts, label: &str) -> Result<Option<T>, RecordError> {
    match facts.label(label) {
        None => Ok(None),
        Some(v) => v.parse::<T>().map(Some).map_err(|reason| RecordError::BadLabel {
            container: facts.name.clone(),
            label: label.to_owned(),
            value: v.clone(),
            reason,
        }),
    }
}

fn check_name(facts: &ContainerFacts, what: &'static str, value: &str) -> Result<(), RecordError> {
    validate_name(what, value).map_err(|e| RecordError::BadName {
        container: facts.name.clone(),
        what,
        value: value.to_owned(),
        reason: match e {
            sidekick::Error::Name { reason, .. } => reason.to_owned(),
            other => other.to_string(),
        },
    })
}

/// Decides the record of one running container.
///
/// `Ok(None)`: the container is not meant to be announced (host mode without labels, or
/// `SERVICE_IGNORE`). Whether it is running and healthy is decided elsewhere.
///
/// # Errors
/// [`RecordError`] naming the container and the offending value.
pub fn record_for(facts: &ContainerFacts, machine: &Machine, rules: &Rules) -> Result<Option<Planned>, RecordError> {
    let mut why = Vec::new();
    let (service, instance, layout, unit, check, port) = match &rules.mode {
        Mode::Container(rule) => {
            let port = choose_port(facts, rule.port.as_ref(), "--port")?;
            why.push(format!(
                "service {:?} and instance {:?} from --service and --instance",
                rule.service, rule.instance
            ));
            why.push(match &rule.port {
                Some(spec) => format!("port {spec} from --port"),
                None => format!("port {}: the only published port", port.spec()),
            });
            let unit = rule.unit.clone().unwrap_or_else(|| facts.name.clone());
            (
                rule.service.clone(),
                rule.instance.clone(),
                rule.layout,
                unit,
                rules.check.clone(),
                port,
            )
        }
        Mode::Host { layout: default_layout } => {
            let vars = registrator_vars(facts);
            if vars.get("SERVICE_IGNORE").is_some_and(|v| !v.trim().is_empty()) {
                return Ok(None);
            }
            let label_service = facts.label(LABEL_SERVICE).map(|s| s.trim().to_owned());
            let by_port = port_names(&vars);
            let service_name = vars
                .get("SERVICE_NAME")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty());
            if label_service.is_none() && service_name.is_none() && by_port.is_empty() {
                return Ok(None);
            }
            let label_port: Option<PortSpec> = label_parse(facts, LABEL_PORT)?;
            let port = match (&label_port, label_service.is_none() && by_port.len() == 1) {
                (Some(_), _) => choose_port(facts, label_port.as_ref(), "the announce.port label")?,
                (None, true) => {
                    let (n, _) = by_port.iter().next().unwrap_or((&0, &String::new()));
                    facts
                        .ports
                        .iter()
                        .filter(|p| p.container_port == *n)
                        .min_by_key(|p| p.proto != "tcp")
                        .ok_or_else(|| RecordError::PortNotPublished {
                            container: facts.name.clone(),
                            port: format!("{n} (from SERVICE_{n}_NAME)"),
                            published: if facts.ports.is_empty() {
                                "nothing".into()
                            } else {
                                list_ports(&facts.ports)
                            },
                        })?
                }
                (None, false) => choose_port(facts, None, "the announce.port label")?,
            };
            why.push(match (&label_port, by_port.contains_key(&port.container_port)) {
                (Some(spec), _) => format!("port {spec} from label {LABEL_PORT}"),
                (None, true) if label_service.is_none() => {
                    format!("port {} from SERVICE_{}_NAME", port.spec(), port.container_port)
                }
                _ => format!("port {}: the only published port", port.spec()),
            });
            let service = if let Some(s) = label_service {
                why.push(format!("service {s:?} from label {LABEL_SERVICE}"));
                s
            } else if let Some(s) = by_port.get(&port.container_port) {
                why.push(format!("service {s:?} from SERVICE_{}_NAME", port.container_port));
                s.clone()
            } else if let Some(s) = service_name {
                why.push(format!("service {s:?} from SERVICE_NAME"));
                s
            } else {
                return Ok(None);
            };
            let instance = match facts.label(LABEL_INSTANCE) {
                Some(i) => {
                    why.push(format!("instance {i:?} from label {LABEL_INSTANCE}"));
                    i.trim().to_owned()
                }
                None => {
                    why.push(format!("instance {:?}: the container name", facts.name));
                    facts.name.clone()
                }
            };
            let layout = label_parse::<Layout>(facts, LABEL_LAYOUT)?.unwrap_or(*default_layout);
            let check = label_parse::<Check>(facts, LABEL_CHECK)?.unwrap_or_else(|| rules.check.clone());
            let unit = facts.label(LABEL_UNIT).cloned().unwrap_or_else(|| facts.name.clone());
            (service, instance, layout, unit, check, port)
        }
    };
    check_name(facts, "service", &service)?;
    check_name(facts, "instance", &instance)?;
    if layout != Layout::Value && machine.public_ipv4.is_none() {
        return Err(RecordError::NoPublicIpv4 {
            container: facts.name.clone(),
            layout,
        });
    }
    why.push(format!(
        "port {} is published on host port {} (bound to {})",
        port.spec(),
        port.host_port,
        port.host_ip
            .map_or_else(|| "every address".to_owned(), |ip| ip.to_string())
    ));
    why.push(format!("host {:?}", machine.hostname));
    why.push(match machine.public_ipv4 {
        Some(ip) => format!("public address {ip} from {}", machine.public_source),
        None => format!("public address: {}", machine.public_source),
    });
    why.push(format!(
        "private address {} from {}",
        machine.private_ipv4, machine.private_source
    ));
    let target = Target {
        container: match (facts.ips.first(), port.proto.as_str()) {
            (Some(ip), "tcp") => Some(SocketAddrV4::new(*ip, port.container_port)),
            _ => None,
        },
        host: SocketAddrV4::new(port.host_ip.unwrap_or(Ipv4Addr::LOCALHOST), port.host_port),
    };
    why.push(match &check {
        Check::None => "check none: announced while running".to_owned(),
        Check::Docker => "check docker: announced while Docker's HEALTHCHECK says healthy".to_owned(),
        c => format!("check {c}: probes {target}"),
    });
    why.push(format!("layout {layout}"));
    Ok(Some(Planned {
        record: Record {
            service,
            instance,
            unit,
            host: machine.hostname.clone(),
            public_ipv4: machine.public_ipv4,
            private_ipv4: machine.private_ipv4,
            port: port.host_port,
            container_id: facts.id.clone(),
            container_name: facts.name.clone(),
        },
        layout,
        check,
        target,
        why,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::State;

    fn machine(public: Option<Ipv4Addr>) -> Machine {
        Machine {
            hostname: "core01".into(),
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
            ips: vec![Ipv4Addr::new(172, 17, 0, 5)],
            stop_signal: libc::SIGTERM,
            started_at: String::new(),
        }
    }

    fn host_rules() -> Rules {
        Rules {
            mode: Mode::Host { layout: Layout::Fields },
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

    /// What a decision boils down to: (service, instance, host port, layout, check) or the error text.
    type Outcome = Result<Option<(String, String, u16, Layout, String)>, String>;

    fn outcome(f: &ContainerFacts, rules: &Rules, public: Option<Ipv4Addr>) -> Outcome {
        record_for(f, &machine(public), rules)
            .map(|o| {
                o.map(|p| {
                    (
                        p.record.service,
                        p.record.instance,
                        p.record.port,
                        p.layout,
                        p.check.to_string(),
                    )
                })
            })
            .map_err(|e| e.to_string())
    }

    fn ok(s: &str, i: &str, port: u16, layout: Layout, check: &str) -> Outcome {
        Ok(Some((s.into(), i.into(), port, layout, check.into())))
    }

    #[test]
    fn host_mode_table() {
        let pub_ip = Some(Ipv4Addr::new(1, 2, 3, 4));
        let one = [("80/tcp", 18001)];
        let two = [("80/tcp", 18001), ("443/tcp", 18443)];
        let f = Layout::Fields;
        // (labels, env, ports, expected outcome; Err(fragment) means an error containing it)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [(&'a str, u16)], Outcome);
        let cases: Vec<Case> = vec![
            // Not ours: no label, no registrator variable.
            (&[], &["PATH=/bin"], &one, Ok(None)),
            // Labels.
            (
                &[("announce.service", "web")],
                &[],
                &one,
                ok("web", "web-01", 18001, f, "tcp"),
            ),
            (
                &[
                    ("announce.service", "web"),
                    ("announce.instance", "w1"),
                    ("announce.layout", "json"),
                ],
                &[],
                &one,
                ok("web", "w1", 18001, Layout::Json, "tcp"),
            ),
            (
                &[
                    ("announce.service", "web"),
                    ("announce.port", "443/tcp"),
                    ("announce.check", "http:/h"),
                ],
                &[],
                &two,
                ok("web", "web-01", 18443, f, "http:/h"),
            ),
            (
                &[("announce.service", "web"), ("announce.port", "443")],
                &[],
                &two,
                ok("web", "web-01", 18443, f, "tcp"),
            ),
            // Registrator.
            (&[], &["SERVICE_NAME=api"], &one, ok("api", "web-01", 18001, f, "tcp")),
            (
                &[],
                &["SERVICE_443_NAME=tls"],
                &two,
                ok("tls", "web-01", 18443, f, "tcp"),
            ),
            (
                &[("SERVICE_NAME", "lbl")],
                &["SERVICE_NAME=env"],
                &one,
                ok("lbl", "web-01", 18001, f, "tcp"),
            ),
            (
                &[("announce.service", "web")],
                &["SERVICE_NAME=api"],
                &one,
                ok("web", "web-01", 18001, f, "tcp"),
            ),
            (&[], &["SERVICE_NAME=api", "SERVICE_IGNORE=1"], &one, Ok(None)),
            (
                &[("announce.service", "web"), ("SERVICE_IGNORE", "true")],
                &[],
                &one,
                Ok(None),
            ),
            // Bad input.
            (
                &[("announce.service", "web")],
                &[],
                &two,
                Err("several ports (80/tcp, 443/tcp)".into()),
            ),
            (&[], &["SERVICE_NAME=api"], &two, Err("several ports".into())),
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
                &[],
                &["SERVICE_9000_NAME=x"],
                &one,
                Err("does not publish port 9000".into()),
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
        for (labels, env, ports, want) in cases {
            let f = facts(labels, env, ports);
            let got = outcome(&f, &host_rules(), pub_ip);
            match (&want, &got) {
                (Err(fragment), Err(msg)) => {
                    assert!(msg.contains(fragment.as_str()), "{labels:?} {env:?}: {msg}");
                    assert!(msg.contains("web-01"), "the error names the container: {msg}");
                }
                _ => assert_eq!(got, want, "labels {labels:?} env {env:?} ports {ports:?}"),
            }
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
                ok("web", "web01", 18001, Layout::Fields, h),
            ),
            (
                Some("443/tcp"),
                Layout::Json,
                &[("80/tcp", 1), ("443/tcp", 2)],
                pub_ip,
                ok("web", "web01", 2, Layout::Json, h),
            ),
            // The value layout needs no public address.
            (
                None,
                Layout::Value,
                &[("3306/tcp", 3306)],
                None,
                ok("web", "web01", 3306, Layout::Value, h),
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
            let f = facts(&[("announce.service", "ignored-in-container-mode")], &[], ports);
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
        let p = record_for(
            &f,
            &machine(Some(Ipv4Addr::LOCALHOST)),
            &container_rules(None, Layout::Fields),
        )
        .unwrap()
        .unwrap();
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
        let p = record_for(&f, &machine(Some(Ipv4Addr::LOCALHOST)), &rules)
            .unwrap()
            .unwrap();
        assert_eq!(p.record.unit, "web-01");
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
