//! The command-line options of lb-sync (every flag has an environment twin), parsed and
//! checked at the edge: typed values, one clear line naming a bad value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sidekick::etcd::EtcdArgs;
use sidekick::logging::LogArgs;
use sidekick::schema::AddressField;

use crate::Error;
use crate::clb::{ApiKey, ClbConfig};
use crate::haproxy::{HaProxyConfig, HaSocket};
use crate::plan::Policy;
use crate::records::Source;

/// The environment variable the API key may come from.
pub const API_KEY_ENV: &str = "RACKSPACE_API_KEY";

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Keep the load balancer in step with the records until stopped.
    Run,
    /// Print the plan (adds, drains, deletes, refusals with reasons) once and exit.
    Plan {
        /// `text` for people, `json` for programs (one object; its schema is in the README).
        #[arg(long, env = "LB_SYNC_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// How `lb-sync plan` prints the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Lines for people (the default).
    #[default]
    Text,
    /// One JSON object, stable for programs.
    Json,
}

/// Command-line options; every flag has an environment twin.
#[derive(Debug, clap::Parser)]
#[command(name = "lb-sync", version = env!("SIDEKICK_VERSION"), about, after_help = AFTER_HELP)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Which load balancer API to drive.
    #[arg(long, env = "LB_SYNC_PROVIDER", value_enum, default_value = "rackspace")]
    pub provider: ProviderKind,

    /// HAProxy's Runtime API: a unix socket path, or HOST:PORT (the stats socket, `level admin`).
    #[arg(long, env = "HAPROXY_SOCKET", value_parser = parse_socket, required_if_eq("provider", "haproxy"))]
    pub haproxy_socket: Option<HaSocket>,

    /// The HAProxy backend whose servers lb-sync manages (its algorithm must be dynamic: roundrobin, leastconn).
    #[arg(long, env = "HAPROXY_BACKEND", value_parser = parse_server_name, required_if_eq("provider", "haproxy"))]
    pub haproxy_backend: Option<String>,

    /// Name prefix of the servers lb-sync adds; servers without it are never touched.
    #[arg(long, env = "HAPROXY_SERVER_PREFIX", default_value = "lb-sync-", value_parser = parse_server_name)]
    pub haproxy_server_prefix: String,

    /// Options added after `check` on every server lb-sync adds (e.g. "inter 1s rise 2 fall 2").
    #[arg(long, env = "HAPROXY_CHECK_OPTIONS", default_value = "inter 2s rise 2 fall 2", value_parser = parse_check_options)]
    pub haproxy_check_options: String,

    /// The etcd directory of the web records (one record per instance below it).
    #[arg(long, env = "LB_SYNC_PREFIX", default_value = "/services/web", value_parser = parse_prefix)]
    pub prefix: String,

    /// The load balancer to keep in step.
    #[arg(long, env = "CLB_LOAD_BALANCER_ID", value_parser = clap::value_parser!(u64).range(1..), required_unless_present("haproxy_socket"))]
    pub load_balancer_id: Option<u64>,

    /// Its region (ORD, DFW, IAD, LON, SYD, HKG): picks the endpoint from the catalog.
    #[arg(long, env = "CLB_REGION", value_parser = parse_region, required_unless_present("haproxy_socket"))]
    pub region: Option<String>,

    /// Identity v2.0 base URL; tokens are requested at {identity-url}/tokens.
    #[arg(
        long,
        env = "CLB_IDENTITY_URL",
        default_value = "https://identity.api.rackspacecloud.com/v2.0",
        value_parser = parse_url
    )]
    pub identity_url: String,

    /// The Rackspace user name.
    #[arg(long, env = "RACKSPACE_USERNAME", required_unless_present("haproxy_socket"))]
    pub username: Option<String>,

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

    /// Refuse a plan that takes more than this share of the nodes in service out (percent);
    /// nodes still draining after an earlier removal count as taken out.
    #[arg(long, env = "LB_SYNC_MAX_REMOVE", default_value = "50%", value_parser = parse_percent)]
    pub max_remove: u8,

    /// Drain a node only once its record has been missing this long, so records that
    /// expire one lease at a time (a host cut off) are judged together by --max-remove.
    /// Set it to the announcers' keep-alive period (a third of their TTL) to refuse a
    /// mass expiry before any node goes; 0 drains at once.
    #[arg(long, env = "LB_SYNC_REMOVE_SETTLE", default_value = "0s", value_parser = sidekick::duration::parse)]
    pub remove_settle: Duration,

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
Examples:
  RACKSPACE_API_KEY=... lb-sync --etcd-endpoints http://127.0.0.1:2379 --prefix /services/web \\
      --region ORD --load-balancer-id 1 --username u --drain 30s run
  lb-sync --provider haproxy --haproxy-socket /run/haproxy/admin.sock --haproxy-backend web \\
      --etcd-endpoints http://127.0.0.1:2379 --prefix /services/web --drain 30s run";

/// Which API drives the load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    /// Rackspace Cloud Load Balancers (Identity v2.0 + CLB v1.0).
    Rackspace,
    /// HAProxy's Runtime API (stats socket at `level admin`).
    #[value(name = "haproxy")]
    HaProxy,
}

fn parse_socket(s: &str) -> Result<HaSocket, String> {
    let t = s.trim();
    if t.starts_with('/') {
        return Ok(HaSocket::Unix(PathBuf::from(t)));
    }
    t.parse::<SocketAddr>().map(HaSocket::Tcp).map_err(|_| {
        format!("invalid HAProxy socket {s:?}: expected a unix socket path (/run/haproxy/admin.sock) or IP:PORT")
    })
}

/// HAProxy accepts letters, digits and `.:-_` in proxy and server names.
fn parse_server_name(s: &str) -> Result<String, String> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || ".:-_".contains(c)) {
        return Err(format!(
            "invalid HAProxy name {s:?}: only letters, digits and . : - _ are allowed"
        ));
    }
    Ok(s.to_owned())
}

/// The options end up on a Runtime API command line: one line, no `;` (which would
/// start another command).
fn parse_check_options(s: &str) -> Result<String, String> {
    if s.contains(['\n', '\r', ';']) {
        return Err(format!("invalid check options {s:?}: no newline or ';' allowed"));
    }
    Ok(s.trim().to_owned())
}

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
            remove_settle: self.remove_settle,
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

    /// The Rackspace client's configuration.
    ///
    /// # Errors
    /// [`Error::Options`] when a Rackspace option is missing (clap requires them with
    /// `--provider rackspace`, so only a hand-built `Args` can lack one).
    pub fn clb_config(&self, api_key: ApiKey) -> Result<ClbConfig, Error> {
        let missing = |flag: &str| Error::Options(format!("--provider rackspace needs {flag}"));
        Ok(ClbConfig {
            identity_url: self.identity_url.clone(),
            username: self.username.clone().ok_or_else(|| missing("--username"))?,
            api_key,
            region: self.region.clone().ok_or_else(|| missing("--region"))?,
            load_balancer_id: self.load_balancer_id.ok_or_else(|| missing("--load-balancer-id"))?,
            request_timeout: self.api_timeout,
            poll: self.poll,
            active_timeout: self.active_timeout,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            max_retries: 6,
            ca_file: self.ca_file.clone(),
        })
    }

    /// The HAProxy client's configuration.
    ///
    /// # Errors
    /// [`Error::Options`] when a HAProxy option is missing.
    pub fn haproxy_config(&self) -> Result<HaProxyConfig, Error> {
        let missing = |flag: &str| Error::Options(format!("--provider haproxy needs {flag}"));
        Ok(HaProxyConfig {
            socket: self.haproxy_socket.clone().ok_or_else(|| missing("--haproxy-socket"))?,
            backend: self
                .haproxy_backend
                .clone()
                .ok_or_else(|| missing("--haproxy-backend"))?,
            prefix: self.haproxy_server_prefix.clone(),
            check_options: self.haproxy_check_options.clone(),
            add_draining: self.add_draining,
            timeout: self.api_timeout,
        })
    }

    /// What the load balancer is called in messages.
    #[must_use]
    pub fn target(&self) -> String {
        match self.provider {
            ProviderKind::Rackspace => format!(
                "load balancer {} in {}",
                self.load_balancer_id.unwrap_or_default(),
                self.region.as_deref().unwrap_or("?")
            ),
            ProviderKind::HaProxy => format!(
                "HAProxy backend {} via {}",
                self.haproxy_backend.as_deref().unwrap_or("?"),
                self.haproxy_socket
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), ToString::to_string)
            ),
        }
    }
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
        assert_eq!(
            parse(&["plan"]).unwrap().command,
            Command::Plan { output: Output::Text }
        );
        assert_eq!(
            parse(&["plan", "--output", "json"]).unwrap().command,
            Command::Plan { output: Output::Json }
        );
        let bad = parse(&["plan", "--output", "yaml"]).unwrap_err();
        assert!(bad.contains("invalid value 'yaml' for '--output"), "{bad}");
        assert_eq!(a.region.as_deref(), Some("ORD"));
        assert_eq!(a.provider, ProviderKind::Rackspace);
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
    fn the_haproxy_provider_needs_its_socket_and_backend_not_the_rackspace_options() {
        let a = Args::try_parse_from([
            "lb-sync",
            "--provider",
            "haproxy",
            "--haproxy-socket",
            "/run/haproxy/admin.sock",
            "--haproxy-backend",
            "web",
            "run",
        ])
        .unwrap();
        assert_eq!(a.provider, ProviderKind::HaProxy);
        let cfg = a.haproxy_config().unwrap();
        assert_eq!(cfg.socket, HaSocket::Unix("/run/haproxy/admin.sock".into()));
        assert_eq!(cfg.prefix, "lb-sync-");
        assert!(a.clb_config(ApiKey::new("k")).is_err(), "no Rackspace options given");
        let tcp = Args::try_parse_from([
            "lb-sync",
            "--provider",
            "haproxy",
            "--haproxy-socket",
            "127.0.0.1:9999",
            "--haproxy-backend",
            "web",
            "plan",
        ])
        .unwrap();
        assert_eq!(
            tcp.haproxy_socket,
            Some(HaSocket::Tcp("127.0.0.1:9999".parse().unwrap()))
        );
        let cases: &[(&[&str], &str)] = &[
            (&["--haproxy-backend", "web", "run"], "--haproxy-socket"),
            (&["--haproxy-socket", "/s", "run"], "--haproxy-backend"),
            (
                &["--haproxy-socket", "nowhere", "--haproxy-backend", "web", "run"],
                "\"nowhere\"",
            ),
            (
                &["--haproxy-socket", "/s", "--haproxy-backend", "we b", "run"],
                "\"we b\"",
            ),
            (
                &[
                    "--haproxy-socket",
                    "/s",
                    "--haproxy-backend",
                    "web",
                    "--haproxy-check-options",
                    "inter 1s; del server web/x",
                    "run",
                ],
                "no newline or ';'",
            ),
        ];
        for (extra, needle) in cases {
            let mut argv = vec!["lb-sync", "--provider", "haproxy"];
            argv.extend_from_slice(extra);
            let err = Args::try_parse_from(argv).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
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
