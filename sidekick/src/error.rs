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
    #[error("etcd at {endpoints} is not reachable: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },

    /// The reachability probe did not answer in time.
    #[error("etcd at {endpoints} did not answer within {timeout:?}")]
    ConnectTimeout {
        endpoints: String,
        timeout: std::time::Duration,
    },

    /// A service or instance name that cannot be a single etcd path segment.
    #[error("invalid {what} {value:?}: {reason}")]
    Name {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}
