//! Health checks: is the service inside a container really answering?
//!
//! - `tcp` (default): a TCP connection is accepted.
//! - `http[:PATH]`: `GET PATH` answers 2xx or 3xx (like the seed's `curl -f`).
//! - `docker`: Docker's own HEALTHCHECK says `healthy` (no probing here: the status comes
//!   with Docker's `health_status` events).
//! - `none`: always passes.
//!
//! The probes go to the container's own address and port on its network when that is
//! reachable, because Docker's userland proxy accepts TCP connections on a published host
//! port even when nothing listens inside the container. When the container address cannot
//! be reached (another network namespace), the probe falls back to the published host
//! binding; there a `tcp` probe also requires that the connection is not closed at once
//! (which is what the proxy does when nothing listens behind it), and an `http` probe must
//! read a status line.
//!
//! A [`Prober`] task probes one container: quickly at first (10 ms doubling up to the
//! interval) so that a service that just started is announced within milliseconds of
//! answering, then once per interval; it reports only transitions. Dropping it stops it.

use std::fmt;
use std::net::SocketAddrV4;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The retry delay of a failing probe during its first [`FAST_RETRIES`] failures.
pub const FIRST_RETRY: Duration = Duration::from_millis(10);

/// Failures retried every [`FIRST_RETRY`] before the delay starts doubling: a service that
/// starts listening within its first quarter second is announced within 10 ms of it (a
/// refused connection costs next to nothing), one that takes longer is not polled hard.
pub const FAST_RETRIES: u32 = 25;

/// The delay after the `failures`-th failure in a row (1-based): [`FIRST_RETRY`] for the
/// first [`FAST_RETRIES`], then doubling, never above `interval` (pure).
#[must_use]
pub fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let doublings = failures.saturating_sub(FAST_RETRIES).min(20);
    FIRST_RETRY.saturating_mul(1 << doublings).min(interval)
}

/// How long a connection through the host binding must stay open to count as accepted.
const PROXY_GRACE: Duration = Duration::from_millis(50);

/// Which check gates an announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http {
        /// The request path, starting with `/`.
        path: String,
    },
    /// Docker's HEALTHCHECK status is `healthy`.
    Docker,
    /// Always passes.
    None,
}

impl Check {
    /// The forms accepted on the command line and in the `announce.check` label.
    pub const NAMES: &'static str = "tcp, http[:PATH], docker, none";

    /// Whether this check needs a probing task (tcp, http).
    #[must_use]
    pub fn probes(&self) -> bool {
        matches!(self, Check::Tcp | Check::Http { .. })
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp => f.write_str("tcp"),
            Check::Http { path } => write!(f, "http:{path}"),
            Check::Docker => f.write_str("docker"),
            Check::None => f.write_str("none"),
        }
    }
}

impl FromStr for Check {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("unknown check {s:?}: {why} (expected one of {})", Check::NAMES);
        match s.trim() {
            "tcp" => Ok(Check::Tcp),
            "http" => Ok(Check::Http { path: "/".into() }),
            "docker" => Ok(Check::Docker),
            "none" => Ok(Check::None),
            other => match other.strip_prefix("http:") {
                Some(path) if path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                    Ok(Check::Http { path: path.to_owned() })
                }
                Some(_) => Err(bad("the path must start with '/' and hold no spaces")),
                None => Err(bad("not a known check")),
            },
        }
    }
}

/// Where a probe goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The container's own address and container port (preferred: no proxy in between).
    pub container: Option<SocketAddrV4>,
    /// The published host binding (`0.0.0.0` bindings are probed on 127.0.0.1).
    pub host: SocketAddrV4,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.container {
            Some(c) => write!(f, "{c} (container address), else {} (host binding)", self.host),
            None => write!(f, "{} (host binding)", self.host),
        }
    }
}

/// Runs one probe of `check` against `target`.
///
/// `via_host` is the prober's memory that the container address is unreachable from here,
/// so later probes go straight to the host binding.
///
/// # Errors
/// A short reason when the check fails.
pub async fn probe(check: &Check, target: &Target, timeout: Duration, via_host: &mut bool) -> Result<(), String> {
    match check {
        Check::None | Check::Docker => Ok(()),
        Check::Tcp => {
            let (_stream, through_host) = connect(target, timeout, via_host).await?;
            if through_host {
                proxied_connection_stays_open(_stream).await?;
            }
            Ok(())
        }
        Check::Http { path } => {
            let (stream, _) = connect(target, timeout, via_host).await?;
            match tokio::time::timeout(timeout, http_status(stream, path)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("GET {path} answered {code}")),
                Ok(Err(e)) => Err(format!("GET {path}: {e}")),
                Err(_) => Err(format!("GET {path}: no answer within {timeout:?}")),
            }
        }
    }
}

/// Connects to the container address, or to the host binding when the container address
/// is unreachable from here. Returns the stream and whether it went through the host binding.
async fn connect(target: &Target, timeout: Duration, via_host: &mut bool) -> Result<(TcpStream, bool), String> {
    if let (Some(addr), false) = (target.container, *via_host) {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok((s, false)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(format!("{addr} refused the connection"));
            }
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "container address unreachable; probing the host binding");
                *via_host = true;
            }
            Err(_) => {
                tracing::debug!(%addr, "container address did not answer; probing the host binding");
                *via_host = true;
            }
        }
    }
    let addr = target.host;
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok((s, true)),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: no answer within {timeout:?}")),
    }
}

/// Docker's userland proxy accepts, then closes at once when nothing listens behind it.
async fn proxied_connection_stays_open(mut stream: TcpStream) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(PROXY_GRACE, stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err("the connection was closed at once (nothing listens behind the published port)".into()),
        Ok(Err(e)) => Err(format!("the connection failed at once: {e}")),
    }
}

/// Sends `GET path HTTP/1.0` and returns the status code of the answer.
async fn http_status(mut stream: TcpStream, path: &str) -> Result<u16, String> {
    let host = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: announcer\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf)
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(buf: &[u8]) -> Result<u16, String> {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    if line.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") && (100..600).contains(&code) => Ok(code),
        _ => Err(format!("not an HTTP status line: {line:?}")),
    }
}

/// A running probe loop for one container; stops when dropped.
#[derive(Debug)]
pub struct Prober(JoinHandle<()>);

impl Drop for Prober {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts probing: fast retries ([`retry_delay`]: every 10 ms for a quarter second, then
/// doubling up to `interval`) while failing, one probe per `interval` while passing. `report(ok, detail)` is called on the first result and on
/// every change.
///
/// Every probe is counted in `counters`.
pub fn spawn<F>(
    check: Check,
    target: Target,
    interval: Duration,
    timeout: Duration,
    counters: crate::metrics::ProbeCounters,
    mut report: F,
) -> Prober
where
    F: FnMut(bool, String) + Send + 'static,
{
    Prober(tokio::spawn(async move {
        let mut via_host = false;
        let mut last: Option<bool> = None;
        let mut failures = 0u32;
        loop {
            // Boxed: the probe's state lives only while it runs, so a prober that sleeps
            // between checks (hundreds of them on a busy host) stays small.
            let result = Box::pin(probe(&check, &target, timeout, &mut via_host)).await;
            let ok = result.is_ok();
            counters.count(ok);
            if let Err(reason) = &result {
                tracing::debug!(%target, reason = %reason, "probe failed");
            }
            if last != Some(ok) {
                report(ok, result.err().unwrap_or_default());
                last = Some(ok);
            }
            let wait = if ok {
                failures = 0;
                interval
            } else {
                failures = failures.saturating_add(1);
                retry_delay(failures, interval)
            };
            tokio::time::sleep(wait).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn retries_every_10ms_for_a_quarter_second_then_double_up_to_the_interval() {
        let i = Duration::from_secs(5);
        let ms = |f: u32| retry_delay(f, i).as_millis();
        assert_eq!((ms(1), ms(25)), (10, 10));
        assert_eq!((ms(26), ms(27), ms(28)), (20, 40, 80));
        assert_eq!((ms(34), ms(1000), ms(u32::MAX)), (5000, 5000, 5000));
        let fast: Duration = (1..=FAST_RETRIES).map(|f| retry_delay(f, i)).sum();
        assert_eq!(fast, Duration::from_millis(250));
        assert_eq!(retry_delay(30, Duration::from_millis(100)), Duration::from_millis(100));
    }

    #[test]
    fn check_parse_table() {
        let cases: &[(&str, Option<Check>)] = &[
            ("tcp", Some(Check::Tcp)),
            ("http", Some(Check::Http { path: "/".into() })),
            (
                "http:/cgi-bin/health",
                Some(Check::Http {
                    path: "/cgi-bin/health".into(),
                }),
            ),
            ("docker", Some(Check::Docker)),
            ("none", Some(Check::None)),
            ("http:health", None),
            ("http:/a b", None),
            ("ping", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Check>().ok(), *want, "{input:?}");
        }
        let err = "ping".parse::<Check>().unwrap_err();
        assert!(err.contains("\"ping\""), "{err}");
        assert_eq!(Check::Http { path: "/x".into() }.to_string(), "http:/x");
    }

    #[test]
    fn status_line_table() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"HTTP/1.0 200 OK\r\n", Some(200)),
            (b"HTTP/1.1 302 Found\r\nLocation: /\r\n", Some(302)),
            (b"HTTP/1.0 500 Internal Server Error\r\n", Some(500)),
            (b"HTTP/1.1 204", Some(204)),
            (b"", None),
            (b"SSH-2.0-OpenSSH\r\n", None),
            (b"HTTP/1.1 abc\r\n", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_status_line(input).ok(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    async fn serve_once(answer: &'static [u8]) -> SocketAddrV4 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes_against_local_servers() {
        let ok = serve_once(b"HTTP/1.0 200 OK\r\n\r\nPASS").await;
        let bad = serve_once(b"HTTP/1.0 500 Oops\r\n\r\nFAIL").await;
        let t = Duration::from_secs(2);
        let http = Check::Http { path: "/health".into() };
        let direct = |a: SocketAddrV4| Target {
            container: Some(a),
            host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
        };
        assert_eq!(probe(&http, &direct(ok), t, &mut false).await, Ok(()));
        let err = probe(&http, &direct(bad), t, &mut false).await.unwrap_err();
        assert!(err.contains("500"), "{err}");
        assert_eq!(probe(&Check::Tcp, &direct(ok), t, &mut false).await, Ok(()));

        // A refused container address fails without trying the host binding.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let std::net::SocketAddr::V4(a) = l.local_addr().unwrap() else {
                unreachable!()
            };
            a
        };
        let mut via_host = false;
        let err = probe(&Check::Tcp, &direct(closed), t, &mut via_host).await.unwrap_err();
        assert!(err.contains("refused"), "{err}");
        assert!(!via_host);

        // Through the host binding only.
        let host_only = Target {
            container: None,
            host: ok,
        };
        assert_eq!(probe(&http, &host_only, t, &mut false).await, Ok(()));
    }
}
