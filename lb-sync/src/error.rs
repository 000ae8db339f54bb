//! The one error type of lb-sync. Each variant says whether retrying can help
//! ([`Error::retryable`]); messages name the call and the offending value.

use std::time::Duration;

use crate::clb::LbStatus;
use crate::haproxy::RuntimeError;

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A combination of options that cannot work, or a secret that cannot be read.
    #[error("{0}")]
    Options(String),

    /// etcd connection options or connection.
    #[error(transparent)]
    Etcd(#[from] sidekick::Error),

    /// An etcd request failed.
    #[error("etcd {what} failed: {source}")]
    EtcdRequest {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },

    /// Identity refused the credentials (400/401/403 on `/tokens`): fatal.
    #[error("identity at {url} refused user {username:?}: HTTP {status}: {message}")]
    AuthRejected {
        url: String,
        username: String,
        status: u16,
        message: String,
    },

    /// The catalog has no load balancer endpoint for the region: fatal.
    #[error("the service catalog has no rax:load-balancer endpoint in region {region:?} (found: {found})")]
    Catalog { region: String, found: String },

    /// No answer: connection refused, reset, or the request timed out.
    #[error("{verb} {url}: {reason}")]
    Transport {
        verb: &'static str,
        url: String,
        reason: String,
    },

    /// A 5xx answer after every retry.
    #[error("{verb} {url}: server error HTTP {status}: {body}")]
    Server {
        verb: &'static str,
        url: String,
        status: u16,
        body: String,
    },

    /// 401 again right after re-authenticating.
    #[error("{verb} {url}: unauthorized (401) even with a fresh token")]
    Unauthorized { verb: &'static str, url: String },

    /// Rate-limited again and again.
    #[error("{verb} {url}: still rate-limited after {attempts} waits")]
    RateLimited {
        verb: &'static str,
        url: String,
        attempts: usize,
    },

    /// A change refused because the load balancer is busy with another (422): retryable
    /// after it is ACTIVE again, unless the status says it is going away.
    #[error("load balancer {lb} is {status}: change refused as immutable")]
    Immutable { lb: u64, status: LbStatus },

    /// The account's node limit (413, not a rate limit): not retried.
    #[error("node limit reached on load balancer {lb}: {message}")]
    NodeLimit { lb: u64, message: String },

    /// A request the API finds invalid (400): not retried.
    #[error("{verb} {url}: validation failure: {messages}")]
    Validation {
        verb: &'static str,
        url: String,
        messages: String,
    },

    /// A node is already on the load balancer (422): re-read the node list.
    #[error("load balancer {lb} already has one of the nodes (duplicate)")]
    Duplicate { lb: u64 },

    /// The load balancer or a node does not exist (404).
    #[error("{what} not found (404)")]
    NotFound { what: String },

    /// The load balancer is deleted (410) or going away.
    #[error("load balancer {lb} is deleted or being deleted ({status})")]
    Gone { lb: u64, status: LbStatus },

    /// The load balancer is in a state where no change can be made (ERROR, SUSPENDED).
    #[error("load balancer {lb} is {status}: no change can be made until it is ACTIVE again")]
    Unusable { lb: u64, status: LbStatus },

    /// The load balancer did not become ACTIVE in time.
    #[error("load balancer {lb} still {status} after {waited:?}")]
    ActiveTimeout {
        lb: u64,
        status: LbStatus,
        waited: Duration,
    },

    /// An answer that could not be read.
    /// An API answer longer than `clb::MAX_ANSWER`: the read stopped there, nothing of it
    /// was used.
    #[error("{verb} {url}: answer longer than {limit} bytes, refused (it began {start})")]
    TooLarge {
        verb: &'static str,
        url: String,
        limit: usize,
        /// The answer's first bytes, quoted ([`quote_start`]).
        start: String,
    },

    #[error("{what}: cannot read the answer: {reason}")]
    Decode { what: String, reason: String },

    /// A status the client has no rule for.
    #[error("{verb} {url}: unexpected HTTP {status}: {body}")]
    Unexpected {
        verb: &'static str,
        url: String,
        status: u16,
        body: String,
    },

    /// A node the plan named is no longer there (404): re-read the node list.
    #[error("node {id} of load balancer {lb} is gone (404)")]
    StaleNode { lb: u64, id: u64 },

    /// A HAProxy Runtime API command failed.
    #[error("HAProxy {socket}: `{command}`: {kind}")]
    Runtime {
        socket: String,
        command: String,
        #[source]
        kind: RuntimeError,
    },

    /// A pass applied this many steps without converging.
    #[error("no convergence after {steps} steps; trying again later")]
    NoConvergence { steps: usize },

    /// Shutdown was asked for while waiting.
    #[error("stopped by shutdown")]
    Cancelled,

    /// The health/metrics listener could not start.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether doing the same again later can succeed.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            Error::Immutable { status, .. } => !status.is_gone(),
            Error::Runtime { kind, .. } => kind.retryable(),
            Error::Transport { .. }
            | Error::Server { .. }
            | Error::RateLimited { .. }
            | Error::Duplicate { .. }
            | Error::StaleNode { .. }
            | Error::ActiveTimeout { .. }
            | Error::EtcdRequest { .. }
            | Error::Unusable { .. } => true,
            Error::Options(_)
            | Error::Etcd(_)
            | Error::AuthRejected { .. }
            | Error::Catalog { .. }
            | Error::Unauthorized { .. }
            | Error::NodeLimit { .. }
            | Error::Validation { .. }
            | Error::NotFound { .. }
            | Error::Gone { .. }
            | Error::Decode { .. }
            | Error::TooLarge { .. }
            | Error::Unexpected { .. }
            | Error::Cancelled
            | Error::NoConvergence { .. }
            | Error::Listen { .. } => false,
        }
    }
}

/// How many bytes of a refused answer an error quotes.
const QUOTED: usize = 60;

/// The first bytes of a refused answer, escaped and quoted, with `…` when cut: enough for
/// an operator to recognise it, never the whole of it.
#[must_use]
pub fn quote_start(answer: &[u8]) -> String {
    let head = String::from_utf8_lossy(&answer[..answer.len().min(QUOTED)]).into_owned();
    let more = if answer.len() > QUOTED { "…" } else { "" };
    format!("{head:?}{more}")
}
