//! The etcd connection options every binary takes, and the client they produce.
//!
//! Each flag has an environment twin. The password never has to be on the command line:
//! it comes from `--etcd-password-file` or the `ETCD_PASSWORD` variable, and it is never
//! logged. With `--etcd-discovery-srv DOMAIN` the endpoints come from DNS SRV records
//! `_etcd-client-ssl._tcp.DOMAIN` (https) then `_etcd-client._tcp.DOMAIN` (http), as
//! etcd's own clients find them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::Error;

/// The environment variable the etcd password may come from.
pub const PASSWORD_ENV: &str = "ETCD_PASSWORD";

/// etcd connection options, shared by announcer, lb-sync and dbhelper.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (http://host:port or https://host:port).
    #[arg(
        long,
        env = "ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    pub etcd_endpoints: Vec<String>,

    /// Find the endpoints in DNS: SRV _etcd-client-ssl._tcp.DOMAIN, then _etcd-client._tcp.DOMAIN.
    /// Takes precedence over --etcd-endpoints.
    #[arg(long, env = "ETCD_DISCOVERY_SRV", value_name = "DOMAIN", global = true)]
    pub etcd_discovery_srv: Option<String>,

    /// CA certificate (PEM) that signed the etcd server certificates.
    #[arg(long, env = "ETCD_CACERT", value_name = "FILE", global = true)]
    pub etcd_cacert: Option<PathBuf>,

    /// Client certificate (PEM) for etcd client-certificate authentication.
    #[arg(long, env = "ETCD_CERT", value_name = "FILE", requires = "etcd_key", global = true)]
    pub etcd_cert: Option<PathBuf>,

    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "ETCD_KEY", value_name = "FILE", requires = "etcd_cert", global = true)]
    pub etcd_key: Option<PathBuf>,

    /// etcd user name (role-based access control).
    #[arg(long, env = "ETCD_USER", global = true)]
    pub etcd_user: Option<String>,

    /// File holding the password of --etcd-user (first line). Alternatively set ETCD_PASSWORD.
    #[arg(long, env = "ETCD_PASSWORD_FILE", value_name = "FILE", global = true)]
    pub etcd_password_file: Option<PathBuf>,

    /// Timeout of each etcd request and of the first connection.
    #[arg(long, env = "ETCD_TIMEOUT", default_value = "5s", value_parser = crate::duration::parse_positive, global = true)]
    pub etcd_timeout: Duration,
}

/// Everything needed to connect, resolved from [`EtcdArgs`] (files read, DNS asked).
#[derive(Clone)]
pub struct EtcdConfig {
    /// Client URLs, each `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// The options handed to etcd-client (TLS, user, timeouts).
    pub options: ConnectOptions,
    /// Request timeout, also used for the reachability probe.
    pub timeout: Duration,
    /// The etcd user, if any: named when etcd refuses the login.
    pub user: Option<String>,
    /// `--etcd-cacert`, named when the server's certificate does not verify against it.
    pub ca_cert: Option<PathBuf>,
    /// `--etcd-cert`, named when the server refuses the client certificate.
    pub client_cert: Option<PathBuf>,
}

impl std::fmt::Debug for EtcdConfig {
    // Hand-written so that the password inside `options` can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// The endpoints as one string for messages.
    #[must_use]
    pub fn endpoints_display(&self) -> String {
        self.endpoints.join(",")
    }

    /// Connects and checks that a member answers (etcd-client connects lazily, so without
    /// the probe an unreachable cluster would only show at the first real request).
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::ConnectTimeout`] naming the endpoints.
    pub async fn connect(&self) -> Result<Client, Error> {
        let endpoints = self.endpoints_display();
        let attempt = async {
            let mut client = Client::connect(&self.endpoints, Some(self.options.clone()))
                .await
                .map_err(|e| self.connect_error(&e, Phase::Login))?;
            client
                .status()
                .await
                .map_err(|e| self.connect_error(&e, Phase::Probe))?;
            Ok(client)
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(res) => res,
            Err(_) => Err(Error::ConnectTimeout {
                endpoints,
                timeout: self.timeout,
            }),
        }
    }

    /// Connects for long-running loops that retry on their own: an unreachable etcd is not
    /// an error here. One probe still runs, so that what no retry can fix stops the start
    /// with one line: a refused login, and a TLS setup the server refuses (a certificate
    /// that does not verify, a refused client certificate, http:// against TLS).
    ///
    /// # Errors
    /// [`Error::Auth`] for a refused login, [`Error::Connect`] for a refused configuration.
    pub async fn connect_lazy(&self) -> Result<Client, Error> {
        let mut client = Client::connect(&self.endpoints, Some(self.options.clone()))
            .await
            .map_err(|e| self.connect_error(&e, Phase::Login))?;
        if let Ok(Err(e)) = tokio::time::timeout(self.timeout, client.status()).await {
            if self.tls_hint(&e).is_some() {
                return Err(self.connect_error(&e, Phase::Probe));
            }
            tracing::debug!(endpoints = %self.endpoints_display(), "etcd not reachable yet: {}", crate::error::etcd_reason(&e));
        }
        Ok(client)
    }

    /// The one-line error of a failed connection: a refused login names the user; a TLS
    /// failure says which file to look at.
    fn connect_error(&self, err: &etcd_client::Error, phase: Phase) -> Error {
        let endpoints = self.endpoints_display();
        let reason = crate::error::etcd_reason(err);
        // With a user, `Client::connect` sends exactly one request, `Authenticate`; a refusal
        // the server itself answered (not a transport failure, not a timeout) is its verdict
        // on the login: wrong password or user (INVALID_ARGUMENT), auth not enabled
        // (FAILED_PRECONDITION), or the like.
        if let (Phase::Login, Some(user), etcd_client::Error::GRpcStatus(status)) = (phase, &self.user, err)
            && std::error::Error::source(status).is_none()
            && GRPC_LOGIN_REFUSALS.contains(&i32::from(status.code()))
        {
            return Error::Auth {
                endpoints,
                user: user.clone(),
                reason,
            };
        }
        let reason = match self.tls_hint(err) {
            Some(hint) => format!("{reason} ({hint})"),
            None => reason,
        };
        Error::Connect { endpoints, reason }
    }

    /// What a transport failure most likely means, judged from the typed errors inside it
    /// (a TLS alert, an I/O error kind, the gRPC code) and from the options given.
    fn tls_hint(&self, err: &etcd_client::Error) -> Option<String> {
        let facts = TransportFacts::of(err);
        let https = self.endpoints.iter().all(|e| e.starts_with("https://"));
        let cert = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(String::new, |p| format!(" {:?}", p.display().to_string()))
        };
        match (&facts.tls, https) {
            (Some(rustls::Error::InvalidCertificate(_)), _) => Some(match &self.ca_cert {
                Some(ca) => format!("the server's certificate does not verify against --etcd-cacert {:?}", ca.display().to_string()),
                None => "the server's certificate does not verify against the system's CA certificates: give --etcd-cacert".into(),
            }),
            (Some(rustls::Error::AlertReceived(_)), true) | (None, true) if facts.closed_early => Some(match &self.client_cert {
                Some(_) => format!(
                    "the server ended the TLS connection: it refuses the client certificate{} if it is expired, not yet valid or signed by a CA it does not trust",
                    cert(&self.client_cert)
                ),
                None => "the server ended the TLS connection: it may require a client certificate (--etcd-cert, --etcd-key)".into(),
            }),
            (None, false) if facts.closed_early => {
                Some("the server ended the connection: if it serves TLS, use an https:// endpoint and --etcd-cacert".into())
            }
            _ => None,
        }
    }
}

/// gRPC status code 1, CANCELLED (fixed by the gRPC specification): tonic answers it when
/// the connection under a request closed.
const GRPC_CANCELLED: i32 = 1;

/// The gRPC codes etcd refuses a login with: INVALID_ARGUMENT (3), PERMISSION_DENIED (7),
/// FAILED_PRECONDITION (9), UNAUTHENTICATED (16).
const GRPC_LOGIN_REFUSALS: [i32; 4] = [3, 7, 9, 16];

/// Which step of [`EtcdConfig::connect`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `Client::connect`: with a user, the `Authenticate` request.
    Login,
    /// The `status` request that proves a member answers.
    Probe,
}

/// The typed facts found inside a transport error.
#[derive(Debug, Default)]
struct TransportFacts {
    /// A TLS error (an alert the server sent, a certificate that did not verify).
    tls: Option<rustls::Error>,
    /// The TCP connection was made, then ended by the other side before an answer: a TLS
    /// alert, a reset, a broken pipe, an early end of stream, or the request cancelled
    /// because the connection closed.
    closed_early: bool,
}

impl TransportFacts {
    fn of(err: &etcd_client::Error) -> TransportFacts {
        use std::io::ErrorKind;
        let mut facts = TransportFacts::default();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = match err {
            etcd_client::Error::GRpcStatus(status) => {
                if i32::from(status.code()) == GRPC_CANCELLED {
                    facts.closed_early = true;
                }
                std::error::Error::source(status)
            }
            other => Some(other),
        };
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                // `io::Error::source` skips the error it wraps, so look at it directly.
                if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                    facts.tls = Some(tls.clone());
                    facts.closed_early = true;
                }
                // h2 keeps only the kind and text of an I/O error, so a TLS alert the server
                // sends after the handshake (a refused client certificate) arrives here as
                // `InvalidData`, no longer as a `rustls::Error`.
                if matches!(
                    io.kind(),
                    ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionReset
                        | ErrorKind::UnexpectedEof
                        | ErrorKind::InvalidData
                ) {
                    facts.closed_early = true;
                }
            }
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                facts.tls = Some(tls.clone());
                facts.closed_early = true;
            }
            cur = e.source();
        }
        facts
    }
}

impl EtcdArgs {
    /// Reads files, asks DNS when discovery is on, and validates every endpoint.
    ///
    /// The password comes from `--etcd-password-file` or, failing that, `ETCD_PASSWORD`.
    ///
    /// # Errors
    /// A message naming the offending endpoint, file or domain.
    pub async fn resolve(&self) -> Result<EtcdConfig, Error> {
        let env_password = std::env::var(PASSWORD_ENV).ok();
        let endpoints = match &self.etcd_discovery_srv {
            Some(domain) => discover(domain, None).await?,
            None => self.etcd_endpoints.clone(),
        };
        self.resolve_with(endpoints, env_password.as_deref())
    }

    /// [`resolve`](Self::resolve) with the endpoints and the environment's password given.
    ///
    /// # Errors
    /// As [`resolve`](Self::resolve).
    pub fn resolve_with(&self, endpoints: Vec<String>, env_password: Option<&str>) -> Result<EtcdConfig, Error> {
        let endpoints = endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(normalize_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::Options(
                "no etcd endpoint given (--etcd-endpoints is empty)".into(),
            ));
        }
        let mut options = ConnectOptions::new()
            .with_timeout(self.etcd_timeout)
            .with_connect_timeout(self.etcd_timeout.min(Duration::from_secs(3)))
            // HTTP/2 pings notice a dead member within seconds, so the balanced channel
            // moves to the live members of a cluster.
            .with_keep_alive(Duration::from_secs(3), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_tcp_keepalive(Duration::from_secs(10))
            // With a user, etcd-client authenticates once, in `connect`. etcd forgets a token
            // left idle for `--auth-token-ttl` (300 s by default), and from then on every call
            // would fail with `etcdserver: invalid auth token` (issue 17: an idle announcer
            // never announced again). With this, a call refused for its token authenticates
            // again and is retried once; every unary call and every stream opening (watch,
            // lease keep-alive, election campaign and observe) goes through that path.
            .with_auto_token_refresh(true);

        let tls_wanted = self.etcd_cacert.is_some() || self.etcd_cert.is_some();
        let any_https = endpoints.iter().any(|e| e.starts_with("https://"));
        if tls_wanted || any_https {
            if let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(Error::Endpoint {
                    endpoint: plain.clone(),
                    reason: "TLS options or https endpoints are given, so every endpoint must be https://".into(),
                });
            }
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.etcd_cacert {
                tls = tls.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.identity(Identity::from_pem(
                    read("client certificate", cert)?,
                    read("client key", key)?,
                ));
            }
            options = options.with_tls(tls);
        }

        match (
            &self.etcd_user,
            password(self.etcd_password_file.as_deref(), env_password)?,
        ) {
            (Some(user), Some(pw)) => options = options.with_user(user.clone(), pw),
            (Some(user), None) => {
                return Err(Error::Options(format!(
                    "--etcd-user {user:?} needs a password: --etcd-password-file FILE or {PASSWORD_ENV}"
                )));
            }
            (None, _) => {}
        }
        Ok(EtcdConfig {
            endpoints,
            options,
            timeout: self.etcd_timeout,
            user: self.etcd_user.clone(),
            ca_cert: self.etcd_cacert.clone(),
            client_cert: self.etcd_cert.clone(),
        })
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The password: the first line of the file when given, else the environment's value.
fn password(file: Option<&Path>, env: Option<&str>) -> Result<Option<String>, Error> {
    if let Some(path) = file {
        let bytes = read("etcd password file", path)?;
        let text = String::from_utf8_lossy(&bytes);
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    Ok(env.map(str::to_owned))
}

/// Checks one endpoint and gives it a scheme: `host:port` becomes `http://host:port`.
///
/// # Errors
/// [`Error::Endpoint`] naming the value: another scheme, a path, no host, no valid port.
pub fn normalize_endpoint(raw: &str) -> Result<String, Error> {
    let bad = |reason: &str| Error::Endpoint {
        endpoint: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = match raw.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        Some((other, _)) => return Err(bad(&format!("scheme {other:?} is not http or https"))),
        None => ("http", raw),
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(bad("must be scheme://host:port with no path"));
    }
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        // [v6]:port
        let (h, p) = stripped
            .split_once("]:")
            .ok_or_else(|| bad("must be scheme://host:port"))?;
        (h, p)
    } else {
        authority
            .rsplit_once(':')
            .ok_or_else(|| bad("must be scheme://host:port (the port is missing)"))?
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(format!("{scheme}://{authority}")),
        _ => Err(bad(&format!("port {port:?} is not a number between 1 and 65535"))),
    }
}

/// Turns the SRV answers into endpoints: https ones first, then http ones, each list in
/// priority order (lower first) and by weight (higher first), duplicates dropped.
#[must_use]
pub fn srv_endpoints(ssl: &[SrvTarget], plain: &[SrvTarget]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (scheme, list) in [("https", ssl), ("http", plain)] {
        let mut sorted = list.to_vec();
        sorted.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then(b.weight.cmp(&a.weight))
                .then(a.target.cmp(&b.target))
        });
        for t in sorted {
            let host = t.target.trim_end_matches('.');
            let url = match host.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("{scheme}://[{v6}]:{}", t.port),
                _ => format!("{scheme}://{host}:{}", t.port),
            };
            if !out.contains(&url) {
                out.push(url);
            }
        }
    }
    out
}

/// One SRV answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// Lower is tried first.
    pub priority: u16,
    /// Higher is preferred among equal priorities.
    pub weight: u16,
    /// The port of the etcd client URL.
    pub port: u16,
    /// The host name (a trailing `.` is dropped).
    pub target: String,
}

/// Looks up `_etcd-client-ssl._tcp.DOMAIN` and `_etcd-client._tcp.DOMAIN`.
///
/// `nameserver` replaces the system resolver (`/etc/resolv.conf`); tests point it at a
/// local DNS server.
///
/// # Errors
/// [`Error::Discovery`] when neither name has SRV records.
pub async fn discover(domain: &str, nameserver: Option<SocketAddr>) -> Result<Vec<String>, Error> {
    let domain = domain.trim().trim_end_matches('.');
    let fail = |reason: String| Error::Discovery {
        domain: domain.to_owned(),
        reason,
    };
    if domain.is_empty() {
        return Err(fail("the domain is empty".into()));
    }
    let resolver: TokioResolver = match nameserver {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
            .build()
            .map_err(|e| fail(e.to_string()))?
        }
        None => TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| fail(e.to_string()))?,
    };
    let mut errors = Vec::new();
    let mut lists = Vec::new();
    for service in ["_etcd-client-ssl", "_etcd-client"] {
        let name = format!("{service}._tcp.{domain}.");
        match resolver.srv_lookup(name.as_str()).await {
            Ok(lookup) => {
                let targets: Vec<SrvTarget> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(SrvTarget {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            target: srv.target.to_utf8(),
                        }),
                        _ => None,
                    })
                    .collect();
                lists.push(targets);
            }
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                lists.push(Vec::new());
            }
        }
    }
    let endpoints = srv_endpoints(&lists[0], &lists[1]);
    if endpoints.is_empty() {
        return Err(fail(format!("no SRV records ({})", errors.join("; "))));
    }
    tracing::info!(domain, endpoints = %endpoints.join(","), "discovered etcd endpoints");
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    fn parse(args: &[&str]) -> EtcdArgs {
        let mut v = vec!["prog"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().etcd
    }

    #[test]
    fn endpoints_table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("http://127.0.0.1:2379", Ok("http://127.0.0.1:2379")),
            ("https://etcd.example:2379/", Ok("https://etcd.example:2379")),
            ("10.0.0.1:4001", Ok("http://10.0.0.1:4001")),
            ("http://[::1]:2379", Ok("http://[::1]:2379")),
            ("ftp://x:1", Err("scheme \"ftp\"")),
            ("http://host", Err("port is missing")),
            ("http://host:abc", Err("port \"abc\"")),
            ("http://host:0", Err("port \"0\"")),
            ("http://host:2379/v3", Err("no path")),
            ("http://:2379", Err("host is empty")),
        ];
        for (input, want) in cases {
            match (normalize_endpoint(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{input}"),
                (Err(e), Err(w)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(w) && msg.contains(input), "{input}: {msg}");
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn defaults_and_comma_list() {
        let a = parse(&[]);
        assert_eq!(a.etcd_endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(a.etcd_timeout, Duration::from_secs(5));
        let a = parse(&["--etcd-endpoints", "http://a:1,http://b:2,http://c:3"]);
        let cfg = a.resolve_with(a.etcd_endpoints.clone(), None).unwrap();
        assert_eq!(cfg.endpoints, vec!["http://a:1", "http://b:2", "http://c:3"]);
    }

    #[test]
    fn user_needs_a_password_and_file_wins_over_env() {
        let a = parse(&["--etcd-user", "root"]);
        let err = a.resolve_with(a.etcd_endpoints.clone(), None).unwrap_err().to_string();
        assert!(err.contains("ETCD_PASSWORD") && err.contains("\"root\""), "{err}");
        assert!(a.resolve_with(a.etcd_endpoints.clone(), Some("pw")).is_ok());

        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "from-file\nsecond line").unwrap();
        assert_eq!(
            password(Some(f.path()), Some("env")).unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(password(None, Some("env")).unwrap().as_deref(), Some("env"));
        let missing = password(Some(Path::new("/nonexistent/pw")), None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/pw"), "{missing}");
    }

    #[test]
    fn config_debug_never_shows_the_password() {
        let a = parse(&["--etcd-user", "root"]);
        let cfg = a.resolve_with(a.etcd_endpoints.clone(), Some("s3cret-pw")).unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret-pw"));
    }

    #[test]
    fn tls_needs_https_and_readable_files() {
        let a = parse(&[
            "--etcd-cacert",
            "/nonexistent/ca.pem",
            "--etcd-endpoints",
            "https://e:2379",
        ]);
        let err = a.resolve_with(a.etcd_endpoints.clone(), None).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let a = parse(&["--etcd-cacert", "/nonexistent/ca.pem"]);
        let err = a.resolve_with(a.etcd_endpoints.clone(), None).unwrap_err().to_string();
        assert!(err.contains("http://127.0.0.1:2379") && err.contains("https"), "{err}");
        assert!(
            Cli::try_parse_from(["prog", "--etcd-cert", "c.pem"]).is_err(),
            "--etcd-cert needs --etcd-key"
        );
    }

    #[test]
    fn srv_order() {
        let t = |priority, weight, port, target: &str| SrvTarget {
            priority,
            weight,
            port,
            target: target.into(),
        };
        let ssl = [t(10, 0, 2379, "b.example."), t(0, 0, 2379, "a.example.")];
        let plain = [
            t(0, 5, 2379, "c.example."),
            t(0, 10, 2380, "d.example."),
            t(0, 0, 2379, "127.0.0.1."),
        ];
        assert_eq!(
            srv_endpoints(&ssl, &plain),
            vec![
                "https://a.example:2379",
                "https://b.example:2379",
                "http://d.example:2380",
                "http://c.example:2379",
                "http://127.0.0.1:2379",
            ]
        );
        assert!(srv_endpoints(&[], &[]).is_empty());
    }

    /// A real DNS exchange: a UDP server on loopback answers SRV queries like a zone would.
    #[tokio::test]
    async fn discovery_over_real_dns() {
        use hickory_proto::op::{Message, MessageType, ResponseCode};
        use hickory_proto::rr::rdata::SRV;
        use hickory_proto::rr::{Name, Record};

        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut resp = Message::new(query.metadata.id, MessageType::Response, query.metadata.op_code);
                resp.metadata.recursion_desired = query.metadata.recursion_desired;
                resp.metadata.recursion_available = true;
                resp.metadata.authoritative = true;
                for q in &query.queries {
                    resp.add_query(q.clone());
                    let name = q.name().to_ascii();
                    if name == "_etcd-client._tcp.cluster.test." {
                        for (i, host) in ["m1.cluster.test.", "m2.cluster.test."].iter().enumerate() {
                            let srv = SRV::new(0, 0, 2379 + i as u16, Name::from_ascii(host).unwrap());
                            resp.add_answer(Record::from_rdata(q.name().clone(), 60, RData::SRV(srv)));
                        }
                    } else {
                        resp.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
                let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
            }
        });
        let got = discover("cluster.test", Some(addr)).await.unwrap();
        assert_eq!(got, vec!["http://m1.cluster.test:2379", "http://m2.cluster.test:2380"]);
        let err = discover("nothing.test", Some(addr)).await.unwrap_err().to_string();
        assert!(
            err.contains("\"nothing.test\"") && err.contains("no SRV records"),
            "{err}"
        );
    }
}
