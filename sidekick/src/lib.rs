//! `sidekick`: the little that announcer, lb-sync and dbhelper truly share.
//!
//! - [`etcd`]: the etcd connection options every binary takes (endpoints, DNS SRV
//!   discovery, TLS, user and password) and the connected client they produce.
//! - [`schema`]: the etcd key layout of the seed system, written by the announcer and
//!   read by lb-sync and dbhelper, so that writer and readers cannot disagree.
//! - [`notify`]: systemd readiness, status and a watchdog fed by every loop's heartbeat.
//! - [`logging`], [`shutdown`], [`retry`], [`tls`], [`duration`], [`validate`]: process plumbing.
//!
//! Nothing here talks to Docker, the load balancer or the database.

pub mod bounded;
pub mod duration;
pub mod etcd;
pub mod logging;
pub mod notify;
pub mod retry;
pub mod schema;
pub mod shutdown;
pub mod tls;
pub mod validate;

mod error;
pub use error::Error;
