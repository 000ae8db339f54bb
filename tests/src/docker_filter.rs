//! A filtering Docker socket proxy, as an operator puts in front of a service that must
//! only read Docker: it listens on a unix socket of its own, forwards to the engine's socket
//! only the requests whose method and path match an allowed [`Rule`], answers every other
//! one `403 Forbidden` without forwarding it, and logs every request ([`FilterProxy::calls`]).
//!
//! It speaks HTTP/1.1 (hyper) on both sides, so it sees each request of a kept-alive
//! connection, and passes response bodies through as they come: `/events` streams. Paths
//! are judged without their API version prefix (`/v1.41/containers/json` is
//! `/containers/json`), and a path with a `..` segment or a percent sign is refused
//! whatever the rules say (the engine would decode it into another path). It runs on a
//! thread of its own, so it keeps working whatever the test's runtime is doing.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// One allowed request shape: a method and a path pattern whose `*` matches one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `GET`, `HEAD`, `POST`...
    pub method: &'static str,
    /// `/containers/*/json`: segments compared one by one, `*` matching any one segment.
    pub path: &'static str,
}

/// The calls the announcer needs, and nothing else: version negotiation, the container
/// list, one container's inspect, the event stream (SECURITY.md lists them).
pub const ANNOUNCER_RULES: &[Rule] = &[
    Rule {
        method: "GET",
        path: "/_ping",
    },
    Rule {
        method: "HEAD",
        path: "/_ping",
    },
    Rule {
        method: "GET",
        path: "/version",
    },
    Rule {
        method: "GET",
        path: "/containers/json",
    },
    Rule {
        method: "GET",
        path: "/containers/*/json",
    },
    Rule {
        method: "GET",
        path: "/events",
    },
];

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The request method.
    pub method: String,
    /// The path and query as sent (version prefix included).
    pub target: String,
    /// The path the rules judged (version prefix removed).
    pub path: String,
    /// Whether it was forwarded (`false`: answered 403).
    pub allowed: bool,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.allowed { "forwarded" } else { "REFUSED" };
        write!(f, "{} {} ({verdict})", self.method, self.target)
    }
}

/// The path without a leading `/vX.Y` API version segment.
#[must_use]
pub fn unversioned(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') {
        &rest[end..]
    } else {
        path
    }
}

/// Whether `rules` allow `method` on `path` (the path part of the target, no query).
#[must_use]
pub fn allows(rules: &[Rule], method: &str, path: &str) -> bool {
    if path.contains('%') || path.split('/').any(|s| s == ".." || s == ".") {
        return false;
    }
    let path = unversioned(path);
    rules.iter().any(|r| {
        r.method == method && {
            let want: Vec<&str> = r.path.split('/').collect();
            let got: Vec<&str> = path.split('/').collect();
            want.len() == got.len()
                && want
                    .iter()
                    .zip(&got)
                    .all(|(w, g)| (*w == "*" && !g.is_empty()) || w == g)
        }
    })
}

/// The running proxy; stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct FilterProxy {
    path: PathBuf,
    _dir: tempfile::TempDir,
    calls: Arc<Mutex<Vec<Call>>>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FilterProxy {
    /// Listens on `<tempdir>/docker.sock`, forwarding what `rules` allow to the unix socket
    /// `upstream` (`/var/run/docker.sock`).
    #[must_use]
    pub fn start(upstream: &str, rules: &'static [Rule]) -> FilterProxy {
        let dir = tempfile::Builder::new()
            .prefix("testbed-filter")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("docker.sock");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (path, calls, stop) = (path.clone(), calls.clone(), stop.clone());
            let upstream = PathBuf::from(upstream);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = UnixListener::bind(&path).expect("bind filter proxy socket");
                    let _ = ready_tx.send(());
                    let shared = Arc::new(Shared { upstream, rules, calls });
                    loop {
                        let accepted = tokio::select! {
                            () = stop.cancelled() => return,
                            a = listener.accept() => a,
                        };
                        let Ok((client, _)) = accepted else { continue };
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(shared.handle(req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(client), service)
                                .await;
                        });
                    }
                });
                // Dropping the runtime here ends every connection still open.
            })
        };
        ready_rx.recv().expect("filter proxy started");
        FilterProxy {
            path,
            _dir: dir,
            calls,
            stop,
            thread: Some(thread),
        }
    }

    /// The proxy's socket path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `DOCKER_HOST` value for a client that should go through the proxy.
    #[must_use]
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Every request seen so far, in order.
    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// The requests answered 403.
    #[must_use]
    pub fn refused(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| !c.allowed).collect()
    }
}

impl Drop for FilterProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

struct Shared {
    upstream: PathBuf,
    rules: &'static [Rule],
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().as_str().to_owned();
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
        let allowed = allows(self.rules, &method, req.uri().path());
        self.calls.lock().expect("calls lock").push(Call {
            method,
            target,
            path: unversioned(req.uri().path()).to_owned(),
            allowed,
        });
        if !allowed {
            return answer(StatusCode::FORBIDDEN, "forbidden by the filtering proxy");
        }
        match self.forward(req).await {
            Ok(resp) => resp.map(BodyExt::boxed),
            Err(e) => answer(StatusCode::BAD_GATEWAY, &format!("upstream: {e}")),
        }
    }

    /// Sends `req` to the engine on a fresh connection; the answer's body streams through.
    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Box<dyn std::error::Error>> {
        let stream = UnixStream::connect(&self.upstream).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender.send_request(req).await?)
    }
}

/// A JSON error answer as the engine gives them (`{"message": ...}`).
fn answer(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_method_and_path_without_the_version() {
        let cases: &[(&str, &str, bool)] = &[
            ("GET", "/_ping", true),
            ("HEAD", "/_ping", true),
            ("GET", "/version", true),
            ("GET", "/v1.41/containers/json", true),
            ("GET", "/v1.41/containers/abc123/json", true),
            ("GET", "/containers/abc123/json", true),
            ("GET", "/v1.41/events", true),
            ("POST", "/v1.41/containers/create", false),
            ("POST", "/v1.41/containers/abc/start", false),
            ("DELETE", "/v1.41/containers/abc", false),
            ("GET", "/v1.41/containers/abc/logs", false),
            ("GET", "/v1.41/containers/abc/archive", false),
            ("GET", "/v1.41/containers//json", false),
            ("GET", "/v1.41/containers/../images/json", false),
            ("GET", "/v1.41/containers/%2e%2e/json", false),
            ("GET", "/v1.41/images/json", false),
            ("GET", "/vx/version", false),
        ];
        for (m, p, want) in cases {
            assert_eq!(allows(ANNOUNCER_RULES, m, p), *want, "{m} {p}");
        }
    }
}
