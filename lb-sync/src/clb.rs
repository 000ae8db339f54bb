//! The Identity v2.0 + Cloud Load Balancers v1.0 client: the only code that talks HTTP to
//! the load balancer.
//!
//! - Authenticates with username + API key, takes the `rax:load-balancer` endpoint of the
//!   region from the catalog, and renews the token before it expires.
//! - Every call: waits out a `Retry-After` announced for its verb; on 401 re-authenticates
//!   once and retries; on the `overLimit` 413 honours `Retry-After` (an HTTP date or a
//!   number of seconds); on 5xx or no answer retries with exponential backoff and jitter,
//!   a bounded number of times. Every call is counted by verb and outcome.
//! - Node-limit 413, validation 400, duplicates and immutable 422 come back as typed
//!   [`Error`]s that say whether retrying helps; a bulk delete that names ids the load
//!   balancer does not have is retried without them.
//! - Answers are read tolerantly: unknown fields and enum strings are kept or ignored.
//!
//! The API key is never logged: [`ApiKey`]'s `Debug` hides it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::health::{CallVerb, Health, WaitCause};
use crate::plan::{Condition, Limits, NewNode, Node, NodeStatus};

/// Extra wait after a `Retry-After` date, which has whole-second precision.
const RETRY_AFTER_MARGIN: Duration = Duration::from_millis(250);
/// Longest `Retry-After` honoured as given; longer ones are capped.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);
/// Rate-limit waits one call may go through before it gives up.
const MAX_RATE_LIMIT_WAITS: usize = 30;

/// The longest API answer read. A load balancer's nodes are about 200 bytes each in JSON,
/// and a token answer with its catalog some kilobytes: 4 MiB is far past any real answer,
/// and a longer one (an endless stream, a proxy's error page gone wild) is refused rather
/// than held in memory.
pub const MAX_ANSWER: usize = 4 << 20;

/// An answer's body, read up to [`MAX_ANSWER`].
enum Body {
    /// The whole body.
    Complete(Vec<u8>),
    /// Longer than the cap: the read stopped; its first bytes, quoted.
    TooLarge(String),
}

/// Reads `resp`'s body, never more than [`MAX_ANSWER`] bytes (a declared longer length is
/// refused before reading anything).
async fn read_capped(mut resp: reqwest::Response) -> Result<Body, reqwest::Error> {
    if let Some(n) = resp.content_length().filter(|n| *n > MAX_ANSWER as u64) {
        return Ok(Body::TooLarge(format!("with Content-Length: {n}")));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > MAX_ANSWER {
            out.extend_from_slice(&chunk[..MAX_ANSWER - out.len()]);
            return Ok(Body::TooLarge(crate::error::quote_start(&out)));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Body::Complete(out))
}

/// The error of an answer over the cap.
fn too_large(verb: &'static str, url: &str, start: String) -> Error {
    Error::TooLarge {
        verb,
        url: url.to_owned(),
        limit: MAX_ANSWER,
        start,
    }
}

/// The API key: kept out of every log line and `Debug` output.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key (surrounding whitespace dropped).
    #[must_use]
    pub fn new(key: &str) -> ApiKey {
        ApiKey(key.trim().to_owned())
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

/// How to reach and use the API.
#[derive(Clone, Debug)]
pub struct ClbConfig {
    /// Identity v2.0 base; tokens are requested at `{identity_url}/tokens`.
    pub identity_url: String,
    /// The account's user name.
    pub username: String,
    /// The user's API key.
    pub api_key: ApiKey,
    /// The region whose catalog endpoint is used (ORD, DFW, ...).
    pub region: String,
    /// The load balancer kept in step.
    pub load_balancer_id: u64,
    /// Timeout of each HTTP request.
    pub request_timeout: Duration,
    /// Interval between polls while waiting for ACTIVE.
    pub poll: Duration,
    /// Longest wait for ACTIVE.
    pub active_timeout: Duration,
    /// First backoff delay after a 5xx or no answer.
    pub retry_min: Duration,
    /// Longest backoff delay.
    pub retry_max: Duration,
    /// Retries after a 5xx or no answer before the call fails.
    pub max_retries: usize,
    /// A PEM bundle of CA certificates to trust instead of the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The four verbs (each has its own rate limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    /// The method name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }

    /// The metric label of the verb.
    #[must_use]
    pub fn label(self) -> CallVerb {
        match self {
            Verb::Get => CallVerb::Get,
            Verb::Post => CallVerb::Post,
            Verb::Put => CallVerb::Put,
            Verb::Delete => CallVerb::Delete,
        }
    }

    fn method(self) -> reqwest::Method {
        match self {
            Verb::Get => reqwest::Method::GET,
            Verb::Post => reqwest::Method::POST,
            Verb::Put => reqwest::Method::PUT,
            Verb::Delete => reqwest::Method::DELETE,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A token and the endpoint it is good for. `Debug` hides the token.
#[derive(Clone)]
pub struct Session {
    /// Sent as `X-Auth-Token`.
    token: String,
    /// The load balancer endpoint of the region, ending in `/v1.0/{tenant}`.
    pub endpoint: String,
    /// When the token is renewed (before it expires).
    pub renew_at: SystemTime,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token", &"<hidden>")
            .field("endpoint", &self.endpoint)
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

/// A load balancer's status. Unknown strings are kept, never an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbStatus {
    /// Takes changes.
    Active,
    /// Being built.
    Build,
    /// Busy with a change: immutable until ACTIVE again.
    PendingUpdate,
    /// Being deleted.
    PendingDelete,
    /// Deleted.
    Deleted,
    /// Broken: no change can be made.
    Error,
    /// Suspended by Rackspace: no change can be made.
    Suspended,
    /// A status this version does not know (waited on like a pending one).
    Other(String),
}

impl LbStatus {
    /// Reads the API's string.
    #[must_use]
    pub fn parse(s: &str) -> LbStatus {
        match s {
            "ACTIVE" => LbStatus::Active,
            "BUILD" => LbStatus::Build,
            "PENDING_UPDATE" => LbStatus::PendingUpdate,
            "PENDING_DELETE" => LbStatus::PendingDelete,
            "DELETED" => LbStatus::Deleted,
            "ERROR" => LbStatus::Error,
            "SUSPENDED" => LbStatus::Suspended,
            other => LbStatus::Other(other.to_owned()),
        }
    }

    /// The API's string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            LbStatus::Active => "ACTIVE",
            LbStatus::Build => "BUILD",
            LbStatus::PendingUpdate => "PENDING_UPDATE",
            LbStatus::PendingDelete => "PENDING_DELETE",
            LbStatus::Deleted => "DELETED",
            LbStatus::Error => "ERROR",
            LbStatus::Suspended => "SUSPENDED",
            LbStatus::Other(s) => s,
        }
    }

    /// Whether the load balancer is going away (no change will ever be accepted).
    #[must_use]
    pub fn is_gone(&self) -> bool {
        matches!(self, LbStatus::PendingDelete | LbStatus::Deleted)
    }
}

impl std::fmt::Display for LbStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A load balancer as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancer {
    /// ACTIVE, PENDING_UPDATE, ...
    pub status: LbStatus,
    /// Its nodes (empty when the API left `nodes` out).
    pub nodes: Vec<Node>,
}

/// The client. Methods take `&self`; one task owns it.
#[derive(Debug)]
pub struct Clb {
    http: reqwest::Client,
    cfg: ClbConfig,
    session: tokio::sync::Mutex<Option<Session>>,
    /// Per verb: no request before this time (a `Retry-After` in force).
    not_before: std::sync::Mutex<[Option<SystemTime>; 4]>,
    health: Arc<Health>,
}

/// A raw answer.
struct Answer {
    status: u16,
    body: Vec<u8>,
    url: String,
}

impl Clb {
    /// A client; nothing is sent until the first call.
    ///
    /// # Errors
    /// [`Error::Options`] when the HTTP client cannot be built.
    pub fn new(cfg: ClbConfig, health: Arc<Health>) -> Result<Clb, Error> {
        let builder = || {
            reqwest::Client::builder()
                .timeout(cfg.request_timeout)
                .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
                .user_agent(concat!("lb-sync/", env!("CARGO_PKG_VERSION")))
        };
        let built = match &cfg.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Error::Options(format!("cannot read CA file {}: {e}", path.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| Error::Options(format!("CA file {} holds no PEM certificate", path.display())))?;
                builder().tls_certs_only(certs).build()
            }
            // The system's CA store; a `FROM scratch` image has none, and then only plain
            // http endpoints (a simulator, a local proxy) can be reached.
            None => builder().build().or_else(|e| {
                tracing::warn!(
                    "no usable system CA certificates ({e}); https endpoints will fail: \
                     give --ca-file or ship /etc/ssl/certs/ca-certificates.crt"
                );
                builder().tls_certs_only(Vec::new()).build()
            }),
        };
        let http = built.map_err(|e| Error::Options(format!("cannot build the HTTP client: {e}")))?;
        health
            .metrics
            .expect_rate_limits(&[CallVerb::Get, CallVerb::Post, CallVerb::Put, CallVerb::Delete]);
        Ok(Clb {
            http,
            cfg,
            session: tokio::sync::Mutex::new(None),
            not_before: std::sync::Mutex::new([None; 4]),
            health,
        })
    }

    /// The load balancer id this client works on.
    #[must_use]
    pub fn load_balancer_id(&self) -> u64 {
        self.cfg.load_balancer_id
    }

    fn tokens_url(&self) -> String {
        format!("{}/tokens", self.cfg.identity_url.trim_end_matches('/'))
    }

    /// Authenticates now (also done lazily by every call).
    ///
    /// # Errors
    /// [`Error::AuthRejected`] for refused credentials, [`Error::Catalog`] when the region
    /// has no load balancer endpoint, transport and server errors after retries.
    pub async fn authenticate(&self) -> Result<Session, Error> {
        let url = self.tokens_url();
        let body = json!({"auth": {"RAX-KSKEY:apiKeyCredentials": {
            "username": self.cfg.username,
            "apiKey": self.cfg.api_key.0,
        }}});
        let mut delays = self.delays();
        loop {
            let sent = self.http.post(&url).json(&body).send().await;
            let failure = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match read_capped(resp).await {
                        Ok(Body::TooLarge(start)) => {
                            self.health.metrics.http_call(CallVerb::Auth, status, false);
                            return Err(too_large("POST", &url, start));
                        }
                        Ok(Body::Complete(bytes)) if status == 200 || status == 203 => {
                            self.health.metrics.http_call(CallVerb::Auth, status, false);
                            let s = session_from(&bytes, &self.cfg.region, SystemTime::now())?;
                            tracing::info!(endpoint = %s.endpoint, region = %self.cfg.region, "authenticated");
                            return Ok(s);
                        }
                        Ok(Body::Complete(bytes)) if status < 500 => {
                            self.health.metrics.http_call(CallVerb::Auth, status, false);
                            return Err(Error::AuthRejected {
                                url,
                                username: self.cfg.username.clone(),
                                status,
                                message: api_message(&bytes),
                            });
                        }
                        Ok(Body::Complete(bytes)) => {
                            self.health.metrics.http_call(CallVerb::Auth, status, false);
                            Error::Server {
                                verb: "POST",
                                url: url.clone(),
                                status,
                                body: api_message(&bytes),
                            }
                        }
                        Err(e) => {
                            self.health.metrics.http_no_answer(CallVerb::Auth);
                            transport("POST", &url, &e)
                        }
                    }
                }
                Err(e) => {
                    self.health.metrics.http_no_answer(CallVerb::Auth);
                    transport("POST", &url, &e)
                }
            };
            match delays.next() {
                Some(d) => {
                    tracing::warn!("authentication failed, retrying in {d:?}: {failure}");
                    tokio::time::sleep(d).await;
                }
                None => return Err(failure),
            }
        }
    }

    fn delays(&self) -> impl Iterator<Item = Duration> {
        use backon::BackoffBuilder;
        sidekick::retry::backoff(self.cfg.retry_min, self.cfg.retry_max)
            .with_max_times(self.cfg.max_retries)
            .build()
    }

    /// The current token and endpoint, authenticating when there is none or it is due.
    async fn session(&self) -> Result<Session, Error> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref()
            && SystemTime::now() < s.renew_at
        {
            return Ok(s.clone());
        }
        let s = self.authenticate().await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    async fn forget_token(&self, token: &str) {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| s.token == token) {
            *guard = None;
        }
    }

    fn lock_not_before(&self) -> std::sync::MutexGuard<'_, [Option<SystemTime>; 4]> {
        self.not_before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sleeps until no `Retry-After` is in force for `verb`, and counts the wait under
    /// `cause`: the rate-limit answer this call just got, or the client's own pacing (an
    /// earlier call's `Retry-After` still in force).
    async fn respect_retry_after(&self, verb: Verb, cause: WaitCause) {
        let started = tokio::time::Instant::now();
        let mut waited = false;
        loop {
            let until = self.lock_not_before()[verb.index()];
            let wait = until.and_then(|u| u.duration_since(SystemTime::now()).ok());
            match wait {
                Some(w) if !w.is_zero() => {
                    waited = true;
                    tokio::time::sleep(w).await;
                }
                _ => break,
            }
        }
        if waited {
            self.health
                .metrics
                .rate_limit_wait(verb.label(), cause, started.elapsed());
        }
    }

    /// One API call with every retry rule; returns the final answer for the caller to read.
    async fn call(&self, verb: Verb, path: &str, body: Option<&Value>) -> Result<Answer, Error> {
        let mut delays = self.delays();
        let mut reauthenticated = false;
        let mut rate_waits = 0usize;
        // Why the next wait for a `Retry-After`, if any, happens.
        let mut cause = WaitCause::pacing;
        loop {
            self.respect_retry_after(verb, cause).await;
            cause = WaitCause::pacing;
            let session = self.session().await?;
            let url = format!("{}{path}", session.endpoint);
            let mut req = self
                .http
                .request(verb.method(), &url)
                .header("X-Auth-Token", &session.token)
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let failure = match req.send().await {
                Err(e) => {
                    self.health.metrics.http_no_answer(verb.label());
                    transport(verb.name(), &url, &e)
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after_header = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    match read_capped(resp).await {
                        Err(e) => {
                            self.health.metrics.http_no_answer(verb.label());
                            transport(verb.name(), &url, &e)
                        }
                        Ok(Body::TooLarge(start)) => {
                            self.health.metrics.http_call(verb.label(), status, false);
                            return Err(too_large(verb.name(), &url, start));
                        }
                        Ok(Body::Complete(bytes)) => {
                            let over_limit = status == 413 && is_over_limit(&bytes);
                            self.health.metrics.http_call(verb.label(), status, over_limit);
                            match status {
                                401 => {
                                    if reauthenticated {
                                        return Err(Error::Unauthorized { verb: verb.name(), url });
                                    }
                                    tracing::info!("{} {url}: token refused (401), authenticating again", verb.name());
                                    reauthenticated = true;
                                    self.forget_token(&session.token).await;
                                    continue;
                                }
                                // 413 `overLimit` is the documented rate-limit answer; a 429
                                // (what a proxy in front of the API, or a future API, sends)
                                // is read the same way.
                                413 | 429 if over_limit || status == 429 => {
                                    rate_waits += 1;
                                    if rate_waits > MAX_RATE_LIMIT_WAITS {
                                        return Err(Error::RateLimited {
                                            verb: verb.name(),
                                            url,
                                            attempts: rate_waits,
                                        });
                                    }
                                    let now = SystemTime::now();
                                    let wait = retry_after(retry_after_header.as_deref(), &bytes, now);
                                    tracing::info!(
                                        "{} {url}: rate-limited ({status}), waiting {wait:?} as Retry-After says",
                                        verb.name()
                                    );
                                    self.lock_not_before()[verb.index()] = Some(now + wait + RETRY_AFTER_MARGIN);
                                    cause = if status == 429 {
                                        WaitCause::too_many_requests_429
                                    } else {
                                        WaitCause::over_limit_413
                                    };
                                    continue;
                                }
                                500..=599 => Error::Server {
                                    verb: verb.name(),
                                    url: url.clone(),
                                    status,
                                    body: api_message(&bytes),
                                },
                                200..=299 => {
                                    return Ok(Answer {
                                        status,
                                        body: bytes,
                                        url,
                                    });
                                }
                                _ => {
                                    return Ok(Answer {
                                        status,
                                        body: bytes,
                                        url,
                                    });
                                }
                            }
                        }
                    }
                }
            };
            match delays.next() {
                Some(d) => {
                    tracing::warn!("{failure}; retrying in {d:?}");
                    tokio::time::sleep(d).await;
                }
                None => return Err(failure),
            }
        }
    }

    fn lb_path(&self) -> String {
        format!("/loadbalancers/{}", self.cfg.load_balancer_id)
    }

    /// Reads the load balancer: its status and nodes.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing load balancer; call errors.
    pub async fn load_balancer(&self) -> Result<LoadBalancer, Error> {
        let a = self.call(Verb::Get, &self.lb_path(), None).await?;
        match a.status {
            200 | 203 => parse_load_balancer(&a.body).map_err(|reason| Error::Decode {
                what: format!("GET {}", a.url),
                reason,
            }),
            404 => Err(Error::NotFound {
                what: format!("load balancer {}", self.cfg.load_balancer_id),
            }),
            410 => Err(Error::Gone {
                lb: self.cfg.load_balancer_id,
                status: LbStatus::Deleted,
            }),
            status => Err(self.unexpected(Verb::Get, &a, status)),
        }
    }

    /// Polls the load balancer until it is ACTIVE and returns what it read then.
    ///
    /// # Errors
    /// [`Error::Unusable`] (ERROR, SUSPENDED), [`Error::Gone`] (DELETED, PENDING_DELETE),
    /// [`Error::ActiveTimeout`], [`Error::Cancelled`], call errors.
    pub async fn wait_active(&self, cancel: &CancellationToken) -> Result<LoadBalancer, Error> {
        let start = Instant::now();
        let lb = self.cfg.load_balancer_id;
        let mut logged = false;
        loop {
            let read = self.load_balancer().await?;
            match &read.status {
                LbStatus::Active => return Ok(read),
                LbStatus::Error | LbStatus::Suspended => {
                    return Err(Error::Unusable {
                        lb,
                        status: read.status,
                    });
                }
                LbStatus::Deleted | LbStatus::PendingDelete => {
                    return Err(Error::Gone {
                        lb,
                        status: read.status,
                    });
                }
                LbStatus::Build | LbStatus::PendingUpdate | LbStatus::Other(_) => {}
            }
            if start.elapsed() >= self.cfg.active_timeout {
                return Err(Error::ActiveTimeout {
                    lb,
                    status: read.status,
                    waited: start.elapsed(),
                });
            }
            if !logged {
                tracing::debug!(status = %read.status, "waiting for the load balancer to be ACTIVE");
                logged = true;
            }
            tokio::select! {
                () = tokio::time::sleep(self.cfg.poll) => {}
                () = cancel.cancelled() => return Err(Error::Cancelled),
            }
        }
    }

    /// Reads `NODE_LIMIT` and `BATCH_DELETE_LIMIT`; the API defaults stand in for missing ones.
    ///
    /// # Errors
    /// Call errors.
    pub async fn limits(&self) -> Result<Limits, Error> {
        let a = self.call(Verb::Get, "/loadbalancers/absolutelimits", None).await?;
        if a.status != 200 && a.status != 203 {
            return Err(self.unexpected(Verb::Get, &a, a.status));
        }
        Ok(parse_limits(&a.body))
    }

    /// Adds nodes in one POST.
    ///
    /// # Errors
    /// [`Error::NodeLimit`], [`Error::Duplicate`], [`Error::Immutable`], [`Error::Validation`], call errors.
    pub async fn add_nodes(&self, nodes: &[NewNode]) -> Result<Vec<Node>, Error> {
        let list: Vec<Value> = nodes
            .iter()
            .map(|n| {
                json!({
                    "address": n.endpoint.address.to_string(),
                    "port": n.endpoint.port,
                    "condition": n.condition.as_str(),
                    "type": "PRIMARY",
                })
            })
            .collect();
        let a = self
            .call(
                Verb::Post,
                &format!("{}/nodes", self.lb_path()),
                Some(&json!({"nodes": list})),
            )
            .await?;
        match a.status {
            200..=299 => Ok(parse_nodes(&a.body)),
            413 => Err(Error::NodeLimit {
                lb: self.cfg.load_balancer_id,
                message: api_message(&a.body),
            }),
            _ => Err(self.change_error(Verb::Post, &a, None)),
        }
    }

    /// Sets one node's condition with a PUT.
    ///
    /// # Errors
    /// [`Error::StaleNode`], [`Error::Immutable`], [`Error::Validation`], call errors.
    pub async fn set_condition(&self, node: u64, condition: &Condition) -> Result<(), Error> {
        let body = json!({"node": {"condition": condition.as_str()}});
        let a = self
            .call(Verb::Put, &format!("{}/nodes/{node}", self.lb_path()), Some(&body))
            .await?;
        match a.status {
            200..=299 => Ok(()),
            _ => Err(self.change_error(Verb::Put, &a, Some(node))),
        }
    }

    /// Deletes nodes in one bulk DELETE (the caller keeps batches within the limit).
    /// Ids the load balancer no longer has are dropped and the rest deleted.
    ///
    /// # Errors
    /// [`Error::Immutable`], [`Error::Validation`], call errors.
    pub async fn delete_nodes(&self, ids: &[u64]) -> Result<(), Error> {
        let mut ids = ids.to_vec();
        loop {
            if ids.is_empty() {
                return Ok(());
            }
            let query: Vec<String> = ids.iter().map(|i| format!("id={i}")).collect();
            let a = self
                .call(
                    Verb::Delete,
                    &format!("{}/nodes?{}", self.lb_path(), query.join("&")),
                    None,
                )
                .await?;
            match a.status {
                200..=299 => return Ok(()),
                400 => match unknown_node_ids(&api_message(&a.body)) {
                    Some(unknown) if unknown.iter().any(|u| ids.contains(u)) => {
                        tracing::info!(?unknown, "these nodes are already gone; deleting the others");
                        ids.retain(|i| !unknown.contains(i));
                    }
                    _ => return Err(self.change_error(Verb::Delete, &a, None)),
                },
                _ => return Err(self.change_error(Verb::Delete, &a, None)),
            }
        }
    }

    fn unexpected(&self, verb: Verb, a: &Answer, status: u16) -> Error {
        Error::Unexpected {
            verb: verb.name(),
            url: a.url.clone(),
            status,
            body: api_message(&a.body),
        }
    }

    /// The typed error of a refused change.
    fn change_error(&self, verb: Verb, a: &Answer, node: Option<u64>) -> Error {
        let lb = self.cfg.load_balancer_id;
        let message = api_message(&a.body);
        match a.status {
            400 => Error::Validation {
                verb: verb.name(),
                url: a.url.clone(),
                messages: message,
            },
            404 => match node {
                Some(id) if !message.to_lowercase().contains("load balancer") => Error::StaleNode { lb, id },
                _ => Error::NotFound {
                    what: format!("load balancer {lb}"),
                },
            },
            410 => Error::Gone {
                lb,
                status: LbStatus::Deleted,
            },
            422 if message.contains("Duplicate") => Error::Duplicate { lb },
            422 => Error::Immutable {
                lb,
                status: immutable_status(&message)
                    .map_or_else(|| LbStatus::Other("not ACTIVE".into()), |s| LbStatus::parse(&s)),
            },
            status => self.unexpected(verb, a, status),
        }
    }
}

fn transport(verb: &'static str, url: &str, e: &reqwest::Error) -> Error {
    let reason = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s
    };
    Error::Transport {
        verb,
        url: url.to_owned(),
        reason,
    }
}

/// Reads a token answer: the token, when to renew it, and the region's endpoint.
///
/// # Errors
/// [`Error::Decode`] for an answer without a token; [`Error::Catalog`] when the region
/// has no `rax:load-balancer` endpoint.
pub fn session_from(body: &[u8], region: &str, now: SystemTime) -> Result<Session, Error> {
    #[derive(Deserialize)]
    struct Doc {
        access: Access,
    }
    #[derive(Deserialize)]
    struct Access {
        token: Token,
        #[serde(rename = "serviceCatalog", default)]
        catalog: Vec<Service>,
    }
    #[derive(Deserialize)]
    struct Token {
        id: String,
        #[serde(default)]
        expires: Option<String>,
    }
    #[derive(Deserialize)]
    struct Service {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        endpoints: Vec<Endpoint>,
    }
    #[derive(Deserialize)]
    struct Endpoint {
        #[serde(rename = "publicURL", default)]
        public_url: String,
        #[serde(default)]
        region: Option<String>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| Error::Decode {
        what: "identity token answer".into(),
        reason: e.to_string(),
    })?;
    let lbs: Vec<&Endpoint> = doc
        .access
        .catalog
        .iter()
        .filter(|s| s.kind == "rax:load-balancer")
        .flat_map(|s| s.endpoints.iter())
        .collect();
    let endpoint = lbs
        .iter()
        .find(|e| e.region.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(region)) && !e.public_url.is_empty())
        .ok_or_else(|| Error::Catalog {
            region: region.to_owned(),
            found: if lbs.is_empty() {
                "no rax:load-balancer service".into()
            } else {
                lbs.iter()
                    .map(|e| e.region.clone().unwrap_or_else(|| "(no region)".into()))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })?;
    let expires = doc.access.token.expires.as_deref().and_then(parse_rfc3339);
    let renew_at = match expires {
        Some(exp) => {
            let lifetime = exp.duration_since(now).unwrap_or_default();
            exp - (lifetime / 10).min(Duration::from_secs(300))
        }
        None => {
            tracing::warn!("the token has no readable expiry; renewing it within the hour");
            now + Duration::from_secs(3600)
        }
    };
    Ok(Session {
        token: doc.access.token.id,
        endpoint: endpoint.public_url.trim_end_matches('/').to_owned(),
        renew_at,
    })
}

/// An RFC 3339 time with any UTC offset (`2031-03-14T08:10:14.000-05:00`, `...Z`).
/// humantime reads only UTC; the offset is taken off here.
#[must_use]
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let t = s.find('T')?;
    let Some(at) = s[t..].rfind(['+', '-']).map(|i| t + i) else {
        return humantime::parse_rfc3339_weak(s).ok();
    };
    let (local, offset) = s.split_at(at);
    let digits: Vec<u64> = offset[1..]
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_digit(10).map(u64::from))
        .collect::<Option<_>>()?;
    let [h1, h2, m1, m2] = digits[..] else {
        return None;
    };
    let (hours, minutes) = (h1 * 10 + h2, m1 * 10 + m2);
    if hours > 23 || minutes > 59 {
        return None;
    }
    let at_local = humantime::parse_rfc3339_weak(local).ok()?;
    let offset = Duration::from_secs(hours * 3600 + minutes * 60);
    // Local time = UTC + offset.
    if s.as_bytes()[at] == b'+' {
        at_local.checked_sub(offset)
    } else {
        at_local.checked_add(offset)
    }
}

/// Whether a 413 is the rate limiter's (`overLimit` wrapper) rather than the node limit.
#[must_use]
pub fn is_over_limit(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| v.get("overLimit").is_some())
}

/// How long a rate-limit 413 says to wait: the `Retry-After` header as delta-seconds or
/// an HTTP date, else the body's `overLimit.retryAfter`, else one second. Capped at 10 minutes.
#[must_use]
pub fn retry_after(header: Option<&str>, body: &[u8], now: SystemTime) -> Duration {
    let from_header = header.map(str::trim).and_then(|h| {
        if let Ok(secs) = h.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        httpdate::parse_http_date(h)
            .ok()
            .map(|t| t.duration_since(now).unwrap_or_default())
    });
    let from_body = || {
        let v: Value = serde_json::from_slice(body).ok()?;
        let s = v.get("overLimit")?.get("retryAfter")?.as_str()?;
        let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
        Some(t.duration_since(now).unwrap_or_default())
    };
    from_header
        .or_else(from_body)
        .unwrap_or(Duration::from_secs(1))
        .min(RETRY_AFTER_CAP)
}

/// The message of an error answer: `message`, nested `{"x": {"message"}}`, or validation messages.
#[must_use]
pub fn api_message(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return text.chars().take(300).collect();
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(msgs) = v.pointer("/validationErrors/messages").and_then(Value::as_array) {
        parts.extend(msgs.iter().filter_map(|m| m.as_str().map(str::to_owned)));
    }
    // `message` is a list in some answers (`["JSON does not match the expected schema"]`).
    if let Some(msgs) = v.get("message").and_then(Value::as_array) {
        parts.extend(msgs.iter().filter_map(|m| m.as_str().map(str::to_owned)));
    }
    if parts.is_empty() {
        let msg = v.get("message").and_then(Value::as_str).map(str::to_owned).or_else(|| {
            v.as_object().and_then(|o| {
                o.values()
                    .find_map(|inner| inner.get("message")?.as_str().map(str::to_owned))
            })
        });
        parts.extend(msg);
    }
    if parts.is_empty() {
        return v.to_string().chars().take(300).collect();
    }
    parts.join("; ")
}

/// The status named by an immutable 422: `... has a status of 'PENDING_UPDATE' and is ...`.
fn immutable_status(message: &str) -> Option<String> {
    let rest = message.split("status of '").nth(1)?;
    Some(rest.split('\'').next()?.to_owned())
}

/// The ids of `Node ids 1,3 are not a part of your loadbalancer`.
#[must_use]
pub fn unknown_node_ids(message: &str) -> Option<Vec<u64>> {
    let rest = message.split("Node ids ").nth(1)?;
    let list = rest.split(" are not").next()?;
    let ids: Vec<u64> = list.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    (!ids.is_empty()).then_some(ids)
}

#[derive(Deserialize)]
struct NodeDoc {
    id: u64,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    condition: String,
    #[serde(default)]
    status: String,
}

impl From<NodeDoc> for Node {
    fn from(n: NodeDoc) -> Node {
        Node {
            id: n.id,
            address: n.address.into(),
            port: n.port,
            condition: Condition::parse(&n.condition),
            status: NodeStatus::parse(&n.status),
            sessions: None,
            foreign: false,
        }
    }
}

pub fn parse_load_balancer(body: &[u8]) -> Result<LoadBalancer, String> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(rename = "loadBalancer")]
        lb: Body,
    }
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        status: String,
        #[serde(default)]
        nodes: Vec<NodeDoc>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(LoadBalancer {
        status: LbStatus::parse(&doc.lb.status),
        nodes: doc.lb.nodes.into_iter().map(Node::from).collect(),
    })
}

pub fn parse_nodes(body: &[u8]) -> Vec<Node> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        nodes: Vec<NodeDoc>,
    }
    serde_json::from_slice::<Doc>(body)
        .map(|d| d.nodes.into_iter().map(Node::from).collect())
        .unwrap_or_default()
}

fn parse_limits(body: &[u8]) -> Limits {
    let mut limits = Limits::default();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return limits;
    };
    for item in v.get("absolute").and_then(Value::as_array).into_iter().flatten() {
        let value = item
            .get("value")
            .and_then(Value::as_u64)
            .and_then(|x| usize::try_from(x).ok());
        match (item.get("name").and_then(Value::as_str), value) {
            (Some("NODE_LIMIT"), Some(x)) => limits.node_limit = x,
            (Some("BATCH_DELETE_LIMIT"), Some(x)) if x > 0 => limits.batch_delete = x,
            _ => {}
        }
    }
    limits
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{body_partial_json, header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::plan::Endpoint;

    #[test]
    fn token_expiries_with_any_utc_offset_are_read() {
        let utc = parse_rfc3339("2031-03-14T13:10:14.000Z").unwrap();
        assert_eq!(parse_rfc3339("2031-03-14T08:10:14.000-05:00"), Some(utc));
        assert_eq!(parse_rfc3339("2031-03-14T18:40:14+05:30"), Some(utc));
        assert_eq!(parse_rfc3339("2031-03-14T13:10:14.000+00:00"), Some(utc));
        assert_eq!(parse_rfc3339("2031-03-14T13:10:14"), Some(utc));
        for bad in ["2031-03-14T13:10:14+25:00", "2031-03-14T13:10:14-5", "tomorrow", ""] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(
            api_message(br#"{"message": ["JSON does not match the expected schema"], "code": 400}"#),
            "JSON does not match the expected schema"
        );
    }

    fn token_doc(server: &str, token: &str, expires: &str) -> Value {
        json!({"access": {
            "token": {"id": token, "expires": expires, "tenant": {"id": "123"}},
            "serviceCatalog": [
                {"name": "cloudServersOpenStack", "type": "compute", "endpoints": [{"region": "ORD", "publicURL": "https://compute.invalid/v2/123"}]},
                {"name": "cloudLoadBalancers", "type": "rax:load-balancer", "endpoints": [
                    {"region": "DFW", "tenantId": "123", "publicURL": format!("{server}/dfw/v1.0/123")},
                    {"region": "ORD", "tenantId": "123", "publicURL": format!("{server}/ord/v1.0/123/")}
                ]}
            ],
            "user": {"id": "1", "name": "u", "unknownField": [1, 2]}
        }})
    }

    fn config(server: &MockServer) -> ClbConfig {
        ClbConfig {
            identity_url: format!("{}/v2.0/", server.uri()),
            username: "u".into(),
            api_key: ApiKey::new("secret-key\n"),
            region: "ord".into(),
            load_balancer_id: 7,
            request_timeout: Duration::from_secs(5),
            poll: Duration::from_millis(10),
            active_timeout: Duration::from_secs(5),
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(50),
            max_retries: 3,
            ca_file: None,
        }
    }

    async fn identity(server: &MockServer, token: &str, times: u64) {
        Mock::given(method("POST"))
            .and(path("/v2.0/tokens"))
            .and(body_partial_json(
                json!({"auth": {"RAX-KSKEY:apiKeyCredentials": {"username": "u", "apiKey": "secret-key"}}}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(token_doc(
                &server.uri(),
                token,
                "2099-01-01T00:00:00.000Z",
            )))
            .up_to_n_times(times)
            .mount(server)
            .await;
    }

    fn lb_body(status: &str) -> Value {
        json!({"loadBalancer": {"id": 7, "status": status, "protocol": "HTTP", "somethingNew": {"x": 1},
            "nodes": [{"id": 1, "address": "10.0.0.1", "port": 80, "condition": "ENABLED", "status": "ONLINE", "type": "PRIMARY"},
                      {"id": 2, "address": "10.0.0.2", "port": 80, "condition": "SOMETHING_NEW", "status": "MAINTENANCE"}]}})
    }

    #[test]
    fn catalog_parsing_picks_the_region_and_renews_before_expiry() {
        let now = SystemTime::now();
        let exp = humantime::format_rfc3339_millis(now + Duration::from_secs(24 * 3600)).to_string();
        let doc = token_doc("http://x", "t1", &exp).to_string();
        let s = session_from(doc.as_bytes(), "ORD", now).unwrap();
        assert_eq!(s.endpoint, "http://x/ord/v1.0/123");
        assert_eq!(s.token, "t1");
        let early = now + Duration::from_secs(24 * 3600 - 300);
        let diff = s.renew_at.duration_since(early).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1), "renewed 5 minutes before expiry");
        let err = session_from(doc.as_bytes(), "SYD", now).unwrap_err().to_string();
        assert!(err.contains("\"SYD\"") && err.contains("DFW, ORD"), "{err}");
        assert!(session_from(b"{\"access\":{}}", "ORD", now).is_err());
    }

    #[test]
    fn retry_after_in_both_forms_and_the_body_fallback() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(Some("7"), b"", now), Duration::from_secs(7));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(3));
        assert!(date.ends_with("GMT"), "{date}");
        assert_eq!(retry_after(Some(&date), b"", now), Duration::from_secs(3));
        assert_eq!(
            retry_after(Some("Tue, 14 Nov 2023 22:13:10 GMT"), b"", now),
            Duration::from_secs(0),
            "a date in the past means now"
        );
        let body = json!({"overLimit": {"code": 413, "retryAfter": humantime::format_rfc3339_seconds(now + Duration::from_secs(4)).to_string()}});
        assert_eq!(
            retry_after(None, body.to_string().as_bytes(), now),
            Duration::from_secs(4)
        );
        assert_eq!(retry_after(Some("soon"), b"{}", now), Duration::from_secs(1));
        assert_eq!(retry_after(Some("99999"), b"", now), RETRY_AFTER_CAP);
    }

    #[test]
    fn error_bodies_are_read() {
        assert_eq!(
            unknown_node_ids("Node ids 1,3 are not a part of your loadbalancer"),
            Some(vec![1, 3])
        );
        assert_eq!(unknown_node_ids("Validation Failure"), None);
        assert_eq!(
            immutable_status("Load Balancer '375263' has a status of 'PENDING_UPDATE' and is considered immutable."),
            Some("PENDING_UPDATE".into())
        );
        let v = json!({"validationErrors": {"messages": ["Node ip field cannot be modified."]}, "message": "Validation Failure"});
        assert_eq!(
            api_message(v.to_string().as_bytes()),
            "Node ip field cannot be modified."
        );
        let v = json!({"unauthorized": {"code": 401, "message": "Unable to authenticate"}});
        assert_eq!(api_message(v.to_string().as_bytes()), "Unable to authenticate");
        assert!(is_over_limit(br#"{"overLimit":{"code":413}}"#));
        assert!(!is_over_limit(
            br#"{"message":"Nodes must not exceed 25 per load balancer.","code":413}"#
        ));
        assert_eq!(format!("{:?}", ApiKey::new("s3cret")), "ApiKey(<hidden>)");
        let exp = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(60)).to_string();
        let doc = token_doc("http://x", "tok-s3cret", &exp).to_string();
        let s = session_from(doc.as_bytes(), "ORD", SystemTime::now()).unwrap();
        assert!(!format!("{s:?}").contains("tok-s3cret"));
    }

    /// A TLS front on 127.0.0.1 with `pki`'s server certificate: each connection is
    /// forwarded, decrypted, to `upstream` (a mock server).
    async fn tls_front(pki: &testbed::pki::Pki, upstream: std::net::SocketAddr) -> std::net::SocketAddr {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        sidekick::tls::install_crypto_provider();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.server.key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await
                        && let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                });
            }
        });
        addr
    }

    /// Every status string the API documents, read, written back and classified.
    #[test]
    fn load_balancer_statuses_are_read_and_written_back() {
        let cases: &[(&str, LbStatus, bool)] = &[
            ("ACTIVE", LbStatus::Active, false),
            ("BUILD", LbStatus::Build, false),
            ("PENDING_UPDATE", LbStatus::PendingUpdate, false),
            ("PENDING_DELETE", LbStatus::PendingDelete, true),
            ("DELETED", LbStatus::Deleted, true),
            ("ERROR", LbStatus::Error, false),
            ("SUSPENDED", LbStatus::Suspended, false),
            ("MIGRATING", LbStatus::Other("MIGRATING".into()), false),
            ("active", LbStatus::Other("active".into()), false),
        ];
        for (text, status, gone) in cases {
            assert_eq!(LbStatus::parse(text), *status, "{text}");
            assert_eq!(status.as_str(), *text);
            assert_eq!(status.to_string(), *text);
            assert_eq!(status.is_gone(), *gone, "{text}");
        }
    }

    /// Offsets at the edges of the valid range, and minutes that are not a multiple of ten.
    #[test]
    fn token_expiry_offsets_at_their_limits() {
        let utc = |s: &str| humantime::parse_rfc3339_weak(s).unwrap();
        let cases: &[(&str, Option<SystemTime>)] = &[
            ("2031-03-14T22:55:14+09:45", Some(utc("2031-03-14T13:10:14"))),
            ("2031-03-14T00:00:00+23:59", Some(utc("2031-03-13T00:01:00"))),
            ("2031-03-14T00:00:00-23:59", Some(utc("2031-03-14T23:59:00"))),
            ("2031-03-14T00:00:00+1000", Some(utc("2031-03-13T14:00:00"))),
            ("2031-03-14T00:00:00+00:59", Some(utc("2031-03-13T23:01:00"))),
            ("2031-03-14T00:00:00+24:00", None),
            ("2031-03-14T00:00:00+00:60", None),
            ("2031-03-14T00:00:00+0a:00", None),
            ("2031-03-14T00:00:00+05:00:00", None),
            ("  2031-03-14T00:00:00Z\n", Some(utc("2031-03-14T00:00:00"))),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339(text), *want, "{text:?}");
        }
    }

    /// A token is renewed a tenth of its life before it expires, at most 5 minutes before,
    /// and within the hour when its expiry cannot be read.
    #[test]
    fn tokens_are_renewed_a_tenth_of_their_life_early() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let cases: &[(u64, u64)] = &[(1000, 900), (24 * 3600, 24 * 3600 - 300), (3000, 2700)];
        for (life, renew_after) in cases {
            let exp = humantime::format_rfc3339_seconds(now + Duration::from_secs(*life)).to_string();
            let doc = token_doc("http://x", "t", &exp).to_string();
            let s = session_from(doc.as_bytes(), "ord", now).unwrap();
            assert_eq!(s.renew_at, now + Duration::from_secs(*renew_after), "life {life} s");
        }
        for expires in ["", "next week"] {
            let doc = token_doc("http://x", "t", expires).to_string();
            let s = session_from(doc.as_bytes(), "ORD", now).unwrap();
            assert_eq!(s.renew_at, now + Duration::from_secs(3600), "expires {expires:?}");
        }
        // A catalog whose load-balancer service lists no region, or an empty URL for it.
        let doc = json!({"access": {"token": {"id": "t"}, "serviceCatalog": [
            {"type": "rax:load-balancer", "endpoints": [{"publicURL": "http://none"}, {"region": "ORD", "publicURL": ""}]}
        ]}});
        let err = session_from(doc.to_string().as_bytes(), "ORD", now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(no region), ORD"), "{err}");
        let doc = json!({"access": {"token": {"id": "t"}, "serviceCatalog": [{"type": "compute"}]}});
        let err = session_from(doc.to_string().as_bytes(), "ORD", now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no rax:load-balancer service"), "{err}");
    }

    /// The bodies of a load balancer, of added nodes and of the limits, as the API sends
    /// them and as it might.
    #[test]
    fn answers_are_parsed_field_by_field() {
        let node = |id, address: &str, port, condition, status| Node {
            id,
            address: address.into(),
            port,
            condition,
            status,
            sessions: None,
            foreign: false,
        };
        let lb = parse_load_balancer(lb_body("PENDING_UPDATE").to_string().as_bytes()).unwrap();
        assert_eq!(
            lb,
            LoadBalancer {
                status: LbStatus::PendingUpdate,
                nodes: vec![
                    node(1, "10.0.0.1", 80, Condition::Enabled, NodeStatus::Online),
                    node(
                        2,
                        "10.0.0.2",
                        80,
                        Condition::Other("SOMETHING_NEW".into()),
                        NodeStatus::Other("MAINTENANCE".into())
                    ),
                ],
            }
        );
        let lb = parse_load_balancer(br#"{"loadBalancer": {"status": "BUILD"}}"#).unwrap();
        assert_eq!((lb.status, lb.nodes.len()), (LbStatus::Build, 0));
        assert!(parse_load_balancer(br#"{"nodes": []}"#).is_err());
        let nodes: &[(&[u8], Vec<Node>)] = &[
            (
                br#"{"nodes": [{"id": 9, "address": "203.0.113.9", "port": 8080, "condition": "DRAINING", "status": "OFFLINE"}]}"#,
                vec![node(9, "203.0.113.9", 8080, Condition::Draining, NodeStatus::Offline)],
            ),
            (
                br#"{"nodes": [{"id": 3}]}"#,
                vec![node(3, "", 0, Condition::Other(String::new()), NodeStatus::Other(String::new()))],
            ),
            (br#"{"nodes": []}"#, vec![]),
            (b"not json", vec![]),
        ];
        for (body, want) in nodes {
            assert_eq!(parse_nodes(body), *want, "{}", String::from_utf8_lossy(body));
        }
        let limits = |node_limit, batch_delete| Limits {
            node_limit,
            batch_delete,
            ..Limits::default()
        };
        let cases: &[(&[u8], Limits)] = &[
            (
                br#"{"absolute": [{"name": "NODE_LIMIT", "value": 50}, {"name": "BATCH_DELETE_LIMIT", "value": 3}, {"name": "LOADBALANCER_LIMIT", "value": 7}]}"#,
                limits(50, 3),
            ),
            (br#"{"absolute": [{"name": "BATCH_DELETE_LIMIT", "value": 1}]}"#, limits(25, 1)),
            // A limit of 0 ids per delete would never delete: the default stays.
            (br#"{"absolute": [{"name": "BATCH_DELETE_LIMIT", "value": 0}]}"#, limits(25, 10)),
            (br#"{"absolute": [{"name": "NODE_LIMIT", "value": "many"}]}"#, limits(25, 10)),
            (br#"{"absolute": [{"value": 5}]}"#, limits(25, 10)),
            (b"{}", limits(25, 10)),
            (b"<html>", limits(25, 10)),
        ];
        for (body, want) in cases {
            assert_eq!(parse_limits(body), *want, "{}", String::from_utf8_lossy(body));
        }
    }

    /// `--ca-file` is what the TLS handshake trusts: with the CA that signed the server the
    /// token and the load balancer are read over https; with another CA, or none, the
    /// handshake fails and no request reaches the server. An unusable file is named.
    #[tokio::test]
    async fn a_ca_file_is_used_and_a_bad_one_is_named() {
        let server = MockServer::start().await;
        let pki = testbed::pki::Pki::generate();
        let front = tls_front(&pki, *server.address()).await;
        let https = format!("https://127.0.0.1:{}", front.port());
        let exp = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(3600)).to_string();
        Mock::given(method("POST"))
            .and(path("/v2.0/tokens"))
            .respond_with(ResponseTemplate::new(200).set_body_json(token_doc(&https, "tok-tls", &exp)))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/ord/v1.0/123/loadbalancers/7"))
            .and(header("x-auth-token", "tok-tls"))
            .respond_with(ResponseTemplate::new(200).set_body_json(lb_body("ACTIVE")))
            .mount(&server)
            .await;
        let mut cfg = config(&server);
        cfg.identity_url = format!("{https}/v2.0/");
        let received = async || server.received_requests().await.unwrap_or_default().len();

        cfg.ca_file = Some(pki.ca.clone());
        let clb = Clb::new(cfg.clone(), Arc::new(Health::new())).unwrap();
        let lb = clb.load_balancer().await.expect("read over https with --ca-file");
        assert_eq!(lb.nodes.len(), 2);
        assert_eq!(received().await, 2, "the token and the load balancer, both through TLS");

        for (what, ca) in [("another CA", Some(pki.other_ca.clone())), ("no CA file", None)] {
            cfg.ca_file = ca;
            let clb = Clb::new(cfg.clone(), Arc::new(Health::new())).unwrap();
            let err = clb.authenticate().await.unwrap_err().to_string();
            assert!(
                err.contains(&https) && err.to_lowercase().contains("certificate"),
                "{what}: {err}"
            );
            assert_eq!(received().await, 2, "{what}: the handshake failed, nothing was sent");
        }

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        cfg.ca_file = Some(junk);
        let err = Clb::new(cfg.clone(), Arc::new(Health::new())).unwrap_err().to_string();
        assert!(err.contains("junk.pem") && err.contains("no PEM certificate"), "{err}");
        cfg.ca_file = Some(dir.path().join("missing.pem"));
        let err = Clb::new(cfg, Arc::new(Health::new())).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[tokio::test]
    async fn authenticates_reads_the_lb_and_parses_tolerantly() {
        let server = MockServer::start().await;
        identity(&server, "tok-1", 1).await;
        Mock::given(method("GET"))
            .and(path("/ord/v1.0/123/loadbalancers/7"))
            .and(header("x-auth-token", "tok-1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(lb_body("ACTIVE")))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        let lb = clb.load_balancer().await.unwrap();
        assert_eq!(lb.status, LbStatus::Active);
        assert_eq!(lb.nodes.len(), 2);
        assert_eq!(lb.nodes[1].condition, Condition::Other("SOMETHING_NEW".into()));
        assert_eq!(lb.nodes[1].status, NodeStatus::Other("MAINTENANCE".into()));
        // The session is reused.
        clb.load_balancer().await.unwrap();
        let auths = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/v2.0/tokens")
            .count();
        assert_eq!(auths, 1);
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused_once_naming_its_start() {
        let server = MockServer::start().await;
        identity(&server, "tok-1", 1).await;
        let huge = format!("{{\"loadBalancer\": {{\"nodes\": [{}", " ".repeat(MAX_ANSWER));
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string(huge))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        let err = clb.load_balancer().await.unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { limit: MAX_ANSWER, .. }) && !err.retryable(),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("loadbalancers/7") && text.len() < 300, "{text}");
        let gets = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() == "GET")
            .count();
        assert_eq!(gets, 1, "refused without retrying");
    }

    #[tokio::test]
    async fn a_401_reauthenticates_once_and_retries() {
        let server = MockServer::start().await;
        identity(&server, "old", 1).await;
        identity(&server, "new", 1).await;
        Mock::given(method("GET"))
            .and(header("x-auth-token", "old"))
            .respond_with(ResponseTemplate::new(401))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(header("x-auth-token", "new"))
            .respond_with(ResponseTemplate::new(200).set_body_json(lb_body("ACTIVE")))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        assert_eq!(clb.load_balancer().await.unwrap().status, LbStatus::Active);
    }

    #[tokio::test]
    async fn a_second_401_is_an_error_and_bad_credentials_are_fatal() {
        let server = MockServer::start().await;
        identity(&server, "t", 10).await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(401))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        let err = clb.load_balancer().await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");

        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v2.0/tokens"))
            .respond_with(ResponseTemplate::new(401).set_body_json(
                json!({"unauthorized": {"code": 401, "message": "Unable to authenticate user with credentials provided."}}),
            ))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        let err = clb.load_balancer().await.unwrap_err();
        assert!(!err.retryable());
        let text = err.to_string();
        assert!(
            text.contains("Unable to authenticate") && !text.contains("secret-key"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn rate_limit_413_waits_for_retry_after_then_succeeds() {
        let server = MockServer::start().await;
        identity(&server, "t", 1).await;
        Mock::given(method("PUT"))
            .respond_with(
                ResponseTemplate::new(413)
                    .insert_header("Retry-After", "1")
                    .set_body_json(json!({"overLimit": {"code": 413, "message": "OverLimit Retry..."}})),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("PUT"))
            .and(path("/ord/v1.0/123/loadbalancers/7/nodes/5"))
            .and(body_partial_json(json!({"node": {"condition": "DRAINING"}})))
            .respond_with(ResponseTemplate::new(202))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        let t = Instant::now();
        clb.set_condition(5, &Condition::Draining).await.unwrap();
        assert!(t.elapsed() >= Duration::from_secs(1), "waited for Retry-After");
    }

    #[tokio::test]
    async fn node_limit_413_and_validation_400_are_not_retried() {
        let server = MockServer::start().await;
        identity(&server, "t", 1).await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(413)
                    .set_body_json(json!({"message": "Nodes must not exceed 25 per load balancer.", "code": 413})),
            )
            .mount(&server)
            .await;
        Mock::given(method("PUT"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({"validationErrors": {"messages": ["Node ip field cannot be modified."]}, "message": "Validation Failure", "code": 400})))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        let add = NewNode {
            endpoint: Endpoint::new("10.0.0.9".parse().unwrap(), 80),
            condition: Condition::Enabled,
        };
        let err = clb.add_nodes(&[add]).await.unwrap_err();
        assert!(matches!(err, Error::NodeLimit { .. }) && !err.retryable(), "{err}");
        let err = clb.set_condition(1, &Condition::Enabled).await.unwrap_err();
        assert!(matches!(err, Error::Validation { .. }) && !err.retryable(), "{err}");
        assert!(err.to_string().contains("Node ip field cannot be modified."));
        let calls = server.received_requests().await.unwrap();
        assert_eq!(
            calls
                .iter()
                .filter(|r| r.method.as_str() == "POST" && r.url.path().contains("nodes"))
                .count(),
            1
        );
        assert_eq!(calls.iter().filter(|r| r.method.as_str() == "PUT").count(), 1);
    }

    #[tokio::test]
    async fn server_errors_are_retried_with_backoff_then_reported() {
        let server = MockServer::start().await;
        identity(&server, "t", 1).await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(lb_body("ACTIVE")))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        assert!(clb.load_balancer().await.is_ok());

        let server = MockServer::start().await;
        identity(&server, "t", 1).await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        let err = clb.load_balancer().await.unwrap_err();
        assert!(matches!(err, Error::Server { status: 500, .. }), "{err}");
        let gets = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() == "GET")
            .count();
        assert_eq!(gets, 4, "one call and three retries");
    }

    #[tokio::test]
    async fn bulk_delete_drops_unknown_ids_and_retries_the_rest() {
        let server = MockServer::start().await;
        identity(&server, "t", 1).await;
        Mock::given(method("DELETE"))
            .and(query_param("id", "3"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({"validationErrors": {"messages": ["Node ids 3 are not a part of your loadbalancer"]}, "message": "Validation Failure", "code": 400})))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .respond_with(ResponseTemplate::new(202))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        clb.delete_nodes(&[1, 3, 4]).await.unwrap();
        let deletes: Vec<String> = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() == "DELETE")
            .map(|r| r.url.query().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(deletes, vec!["id=1&id=3&id=4", "id=1&id=4"]);
    }

    #[tokio::test]
    async fn immutable_and_duplicate_422_are_typed() {
        let server = MockServer::start().await;
        identity(&server, "t", 1).await;
        Mock::given(method("PUT"))
            .respond_with(ResponseTemplate::new(422).set_body_json(json!({"message": "Load Balancer '7' has a status of 'PENDING_UPDATE' and is considered immutable.", "code": 422})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(422).set_body_json(json!({"message": "Duplicate nodes detected. One or more nodes already configured on load balancer.", "code": 422})))
            .mount(&server)
            .await;
        let clb = Clb::new(config(&server), Arc::new(Health::new())).unwrap();
        let err = clb.set_condition(1, &Condition::Draining).await.unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Immutable {
                    status: LbStatus::PendingUpdate,
                    ..
                }
            ) && err.retryable()
        );
        let add = NewNode {
            endpoint: Endpoint::new("10.0.0.9".parse().unwrap(), 80),
            condition: Condition::Enabled,
        };
        let err = clb.add_nodes(&[add]).await.unwrap_err();
        assert!(matches!(err, Error::Duplicate { .. }));
    }
}
