//! The one error type of the announcer. Messages name the offending value.

/// Everything that stops the announcer or refuses one container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared plumbing (etcd options, names).
    #[error(transparent)]
    Sidekick(#[from] sidekick::Error),

    /// An address that is missing or not an IPv4 address.
    #[error("invalid {what} {value:?}: {reason}")]
    Address {
        what: String,
        value: String,
        reason: String,
    },

    /// The machine's hostname could not be found.
    #[error("cannot find this machine's hostname (give --hostname)")]
    Hostname,

    /// A container whose record cannot be built (see [`crate::record::RecordError`]).
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),

    /// `--docker-host` that is not `unix://PATH`, `tcp://HOST:PORT` or `http://HOST:PORT`.
    #[error("invalid --docker-host {0:?}: expected unix:///path/to/docker.sock or tcp://host:port")]
    DockerHost(String),

    /// A Docker request failed.
    #[error("docker {op}: {source}")]
    Docker {
        op: String,
        #[source]
        source: bollard::errors::Error,
    },

    /// `explain` was asked about a container that does not exist.
    #[error("no container named {0:?}")]
    NoContainer(String),

    /// An etcd request failed.
    #[error("etcd {op}: {source}")]
    Etcd {
        op: String,
        #[source]
        source: etcd_client::Error,
    },

    /// An etcd request did not answer in time.
    #[error("etcd {op}: no answer within {timeout:?}")]
    EtcdTimeout { op: String, timeout: std::time::Duration },

    /// A record's keys changed between our read and our write, several times in a row.
    #[error("etcd write of {key}: the keys kept changing under us; retrying")]
    Contended { key: String },

    /// `--metrics-addr` cannot be bound.
    #[error("cannot listen on --metrics-addr {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// Process plumbing (signal handlers).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
