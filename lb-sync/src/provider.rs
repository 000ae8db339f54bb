//! The load balancer APIs behind one face: read the nodes, apply a plan step. The plan
//! ([`crate::plan`]) is the same for both; only how its steps become calls differs.
//!
//! - Rackspace ([`Clb`]): each change locks the load balancer (PENDING_UPDATE), so one
//!   step is applied per fresh read, after waiting for ACTIVE.
//! - HAProxy ([`HaProxy`]): no lock, so every step the plan allows is applied after one
//!   read (a scale-up of 5,000 servers costs one read, not 5,000).

use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::clb::{Clb, LbStatus, LoadBalancer};
use crate::haproxy::HaProxy;
use crate::plan::{Condition, Limits, Node, Step};

/// One of the supported load balancer APIs.
#[derive(Debug)]
pub enum Provider {
    /// Rackspace Cloud Load Balancers (boxed: the client is much larger than HAProxy's).
    Rackspace(Box<Clb>),
    /// HAProxy's Runtime API.
    HaProxy(HaProxy),
}

impl Provider {
    /// What it drives, for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Provider::Rackspace(c) => format!("load balancer {}", c.load_balancer_id()),
            Provider::HaProxy(h) => h.describe(),
        }
    }

    /// Whether several steps may follow one read.
    #[must_use]
    pub fn batches(&self) -> bool {
        matches!(self, Provider::HaProxy(_))
    }

    /// The API's limits (Rackspace: the account's; HAProxy: none).
    ///
    /// # Errors
    /// API errors.
    pub async fn limits(&self) -> Result<Limits, Error> {
        match self {
            Provider::Rackspace(c) => c.limits().await,
            Provider::HaProxy(_) => Ok(Limits::unlimited()),
        }
    }

    /// Reads the load balancer once it takes changes (Rackspace: waits for ACTIVE).
    ///
    /// # Errors
    /// API errors, [`Error::Cancelled`].
    pub async fn read(&self, cancel: &CancellationToken) -> Result<LoadBalancer, Error> {
        match self {
            Provider::Rackspace(c) => c.wait_active(cancel).await,
            Provider::HaProxy(h) => Ok(LoadBalancer {
                status: LbStatus::Active,
                nodes: h.read().await?,
            }),
        }
    }

    /// Reads the load balancer as it is, without waiting.
    ///
    /// # Errors
    /// API errors.
    pub async fn read_now(&self) -> Result<LoadBalancer, Error> {
        match self {
            Provider::Rackspace(c) => c.load_balancer().await,
            Provider::HaProxy(h) => Ok(LoadBalancer {
                status: LbStatus::Active,
                nodes: h.read().await?,
            }),
        }
    }

    /// Applies one step; returns the nodes an add created, when the API tells.
    ///
    /// # Errors
    /// API errors (see [`Error::retryable`]).
    pub async fn apply(&self, step: &Step) -> Result<Vec<Node>, Error> {
        match (self, step) {
            (Provider::Rackspace(c), Step::Add(nodes)) => c.add_nodes(nodes).await,
            (Provider::Rackspace(c), Step::Enable(n)) => {
                c.set_condition(n.id, &Condition::Enabled).await.map(|()| Vec::new())
            }
            (Provider::Rackspace(c), Step::Drain(n)) => {
                c.set_condition(n.id, &Condition::Draining).await.map(|()| Vec::new())
            }
            (Provider::Rackspace(c), Step::Delete(nodes)) => {
                let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
                c.delete_nodes(&ids).await.map(|()| Vec::new())
            }
            (Provider::HaProxy(h), Step::Add(nodes)) => h.add(nodes).await.map(|()| Vec::new()),
            (Provider::HaProxy(h), Step::Enable(n)) => {
                h.set_condition(n, &Condition::Enabled).await.map(|()| Vec::new())
            }
            (Provider::HaProxy(h), Step::Drain(n)) => {
                h.set_condition(n, &Condition::Draining).await.map(|()| Vec::new())
            }
            (Provider::HaProxy(h), Step::Delete(nodes)) => h.delete(nodes).await.map(|()| Vec::new()),
        }
    }
}
