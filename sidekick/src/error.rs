//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong in the shared plumbing. Messages name the offending value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `--etcd-endpoints` entry that is not `http(s)://host:port`.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },

    /// A file named by an option (certificate, key, password) could not be read.
    #[error("cannot read {what} {path:?}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A combination of options that cannot work together.
    #[error("{0}")]
    Options(String),

    /// DNS SRV discovery found nothing usable.
    #[error("etcd discovery for domain {domain:?} failed: {reason}")]
    Discovery { domain: String, reason: String },

    /// The etcd client refused the configuration or could not reach any member.
    ///
    /// `reason` is the innermost cause (`Connection refused (os error 111)`), not the
    /// whole gRPC chain, so the message stays one readable line.
    #[error("etcd at {endpoints} is not reachable: {reason}")]
    Connect { endpoints: String, reason: String },

    /// etcd answered the login of `user` with a refusal (wrong password, unknown user).
    #[error("etcd at {endpoints} refused the login of user {user:?}: {reason}")]
    Auth {
        endpoints: String,
        user: String,
        reason: String,
    },

    /// The reachability probe did not answer in time.
    #[error("etcd at {endpoints} did not answer within {timeout:?}")]
    ConnectTimeout {
        endpoints: String,
        timeout: std::time::Duration,
    },

    /// A service or instance name that cannot be a single etcd path segment.
    #[error("invalid {what} {value}: {reason}")]
    Name {
        what: &'static str,
        /// The value, quoted and cut ([`crate::schema::shorten`]).
        value: String,
        reason: &'static str,
    },
}

/// The innermost message of an etcd-client error: what actually went wrong
/// (`Connection refused (os error 111)`, `etcdserver: authentication failed`).
#[must_use]
pub fn etcd_reason(err: &etcd_client::Error) -> String {
    fn innermost(mut cur: &dyn std::error::Error) -> String {
        while let Some(next) = cur.source() {
            cur = next;
        }
        cur.to_string()
    }
    match err {
        etcd_client::Error::GRpcStatus(status) => match std::error::Error::source(status) {
            Some(source) => innermost(source),
            None if status.message().is_empty() => format!("{:?}", status.code()),
            None => status.message().to_owned(),
        },
        other => innermost(other),
    }
}
