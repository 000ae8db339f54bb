//! The test bed: real servers for integration tests, started on free loopback ports in
//! temporary directories and torn down when their handle drops (also when a test panics).
//!
//! - [`Etcd`] / [`EtcdCluster`]: Debian's `etcd` 3.4, one member or three; members can be
//!   killed and restarted; [`EtcdOptions`] adds TLS with client certificates and a short
//!   auth token TTL, and the handles turn auth on and add users with roles.
//! - [`pki`]: a throwaway CA with server and client certificates (rcgen).
//! - [`MariaDb`]: Debian's `mariadbd` with its own datadir, socket and port.
//! - [`docker`]: the real Docker engine on `/var/run/docker.sock`, test images built
//!   `FROM scratch` (no registry is reachable), containers removed on drop.
//! - [`HaProxy`]: Debian's `haproxy` 2.6, an empty backend for lb-sync to fill through the
//!   Runtime API, no retries (failed requests are seen).
//! - [`SocketProxy`]: a Docker socket proxy a test can cut, to break the event stream.
//! - [`docker_filter::FilterProxy`]: a Docker socket proxy that forwards only allowed
//!   calls (403 otherwise) and logs every request.
//! - [`clb_sim`]: a stateful simulator of Rackspace Identity + Cloud Load Balancers.
//! - [`Cluster`]: N hosts (network namespaces on a private bridge), one etcd member each;
//!   a test kills, partitions and heals hosts.
//! - [`NotifySocket`]: a `NOTIFY_SOCKET` bound by the test (systemd's notifications).
//! - [`Daemon`]: every process a test runs (logs to a file, signal, wait, kill on drop, a
//!   log excerpt in every failure) and [`eventually`], the one polling helper.
//!
//! A missing server is a test failure whose message says how to install it; nothing here
//! skips. Every server process dies with the test process (`PR_SET_PDEATHSIG`), so a
//! test killed by a timeout leaves nothing behind.

#![allow(clippy::missing_panics_doc, clippy::unwrap_used, clippy::expect_used)]

pub mod clb_sim;
pub mod cluster;
mod daemon;
pub mod docker;
pub mod docker_filter;
mod etcd;
mod eventually;
mod haproxy;
mod mariadb;
mod notify;
pub mod pki;
mod process;
mod proxy;

pub use cluster::{Cluster, Cut, Host};
pub use daemon::{Daemon, Start, fail_with_logs};
pub use etcd::{Etcd, EtcdCluster, EtcdOptions, EtcdTls};
pub use eventually::{NotYet, eventually, eventually_blocking};
pub use haproxy::HaProxy;
pub use mariadb::MariaDb;
pub use notify::NotifySocket;
pub use process::{bin, free_port, free_ports, http_get, require_program, signal, spawn};
pub use proxy::SocketProxy;

/// The repository's root (the parent of the `tests` crate).
#[must_use]
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of the world dump: `$TESTBED_WORLD_DUMP`, else `$WORLD_DUMP`, else
/// `../shared/data/world_innodb.sql` beside the repository. It is data from outside the
/// project and is never copied in. (`TESTBED_WORLD_DUMP` is for `scripts/mutants`, which
/// tests a copy of the tree away from `../shared`: `WORLD_DUMP` is also dbhelper's
/// `--dump` env twin, and set for every test it would change what `dbhelper`'s own
/// command-line table parses.)
#[must_use]
pub fn world_dump() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("TESTBED_WORLD_DUMP").or_else(|_| std::env::var("WORLD_DUMP")) {
        return p.into();
    }
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/world_innodb.sql");
    assert!(
        p.exists(),
        "testbed: the world dump is missing at {} (set WORLD_DUMP=/path/to/world_innodb.sql)",
        p.display()
    );
    p.canonicalize().unwrap_or(p)
}

/// A short random suffix for names that must not clash between parallel tests.
#[must_use]
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}
