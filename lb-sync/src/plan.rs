//! The plan: what to change on the load balancer so it matches the records, and whether
//! it is safe to do so. A pure function of its inputs: no I/O, no clock (the caller passes
//! `now`), no randomness, so every rule is proven by a table of cases.
//!
//! Every safety rule of lb-sync lives here and only here:
//! - nothing is applied while the view of etcd is incomplete (not loaded yet, or a gap);
//! - nothing is applied when no record is left while the load balancer has nodes;
//! - nothing is applied when the plan would take more than `max_remove` percent of the
//!   nodes in service out of service, or leave fewer than `min_nodes` in service (in
//!   service: ENABLED and not OFFLINE; adds are applied before removals, so a
//!   replacement is make-before-break);
//! - a node whose record is unreadable is never removed (it is "unknown", not "absent");
//! - with `managed_only`, nodes lb-sync does not manage are never touched.
//!
//! `force` lifts the emptiness and size rules (never the incomplete-view rule).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Shortest time a due delete may wait for other draining nodes to join its batch.
pub const DELETE_PATIENCE: Duration = Duration::from_secs(60);

/// Where a node listens: address and port, as the load balancer identifies it.
///
/// Ordered as the derived order would (IPv4 before IPv6, then by address, then by port),
/// by hand: a pass looks up every node of a 5,000-server backend in maps keyed by
/// endpoint, and the standard library's `IpAddr` comparison, not inlined, was a twentieth
/// of it (issue 18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The node's IP address.
    pub address: IpAddr,
    /// The node's port.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint from its parts.
    #[must_use]
    pub const fn new(address: IpAddr, port: u16) -> Endpoint {
        Endpoint { address, port }
    }
}

impl Endpoint {
    /// The address as one number, IPv4 before IPv6, each family in address order.
    #[inline]
    fn key(&self) -> (bool, u128, u16) {
        match self.address {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), self.port),
            IpAddr::V6(a) => (true, u128::from(a), self.port),
        }
    }
}

impl Ord for Endpoint {
    #[inline]
    fn cmp(&self, other: &Endpoint) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Endpoint {
    #[inline]
    fn partial_cmp(&self, other: &Endpoint) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A node's condition. Unknown strings are kept, never an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Takes traffic.
    Enabled,
    /// Takes no traffic; existing connections were cut.
    Disabled,
    /// Takes no new connections; existing ones finish.
    Draining,
    /// A condition this version does not know.
    Other(String),
}

impl Condition {
    /// Reads the API's string.
    #[must_use]
    pub fn parse(s: &str) -> Condition {
        match s {
            "ENABLED" => Condition::Enabled,
            "DISABLED" => Condition::Disabled,
            "DRAINING" => Condition::Draining,
            other => Condition::Other(other.to_owned()),
        }
    }

    /// The API's string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Condition::Enabled => "ENABLED",
            Condition::Disabled => "DISABLED",
            Condition::Draining => "DRAINING",
            Condition::Other(s) => s,
        }
    }
}

/// A node's health as the load balancer's monitor sees it. Unknown strings are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    /// Passing its health check (or no monitor).
    Online,
    /// Failing its health check.
    Offline,
    /// A status this version does not know (treated as not online).
    Other(String),
}

impl NodeStatus {
    /// Reads the API's string.
    #[must_use]
    pub fn parse(s: &str) -> NodeStatus {
        match s {
            "ONLINE" => NodeStatus::Online,
            "OFFLINE" => NodeStatus::Offline,
            other => NodeStatus::Other(other.to_owned()),
        }
    }
}

/// A node's address as the load balancer reports it, read once: an IP address, or text
/// that is not one (a Rackspace node may be a host name). Every pass looks at every node's
/// address several times (the inventory, the settle clock), so it is parsed when the answer
/// is read and not at each look: at 5,000 servers the repeated parsing was a tenth of a
/// pass (issue 18).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// An IP address: the node can be matched with a record.
    Ip(IpAddr),
    /// Anything else, kept as the API wrote it: never lb-sync's.
    Other(String),
}

impl Address {
    /// Reads the API's text.
    #[must_use]
    pub fn parse(s: &str) -> Address {
        s.parse().map_or_else(|_| Address::Other(s.to_owned()), Address::Ip)
    }

    /// The IP address, when it is one.
    #[must_use]
    pub const fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(a) => Some(*a),
            Address::Other(_) => None,
        }
    }
}

impl From<&str> for Address {
    fn from(s: &str) -> Address {
        Address::parse(s)
    }
}

impl From<String> for Address {
    fn from(s: String) -> Address {
        match s.parse() {
            Ok(a) => Address::Ip(a),
            Err(_) => Address::Other(s),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(a) => a.fmt(f),
            Address::Other(s) => f.write_str(s),
        }
    }
}

/// One node as the load balancer reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The API's id of the node.
    pub id: u64,
    /// The address as the API returned it (it may not be an IP address).
    pub address: Address,
    /// The node's port.
    pub port: u16,
    /// ENABLED, DRAINING, DISABLED, ...
    pub condition: Condition,
    /// ONLINE, OFFLINE, ...
    pub status: NodeStatus,
    /// Connections the node serves now, when the API tells (HAProxy's `scur`; Rackspace
    /// does not): a draining node with none left may go before its drain period ends.
    pub sessions: Option<u64>,
    /// The provider knows this node is not lb-sync's (HAProxy: a server whose name lacks
    /// lb-sync's prefix): it is never changed, whatever the policy.
    pub foreign: bool,
}

impl Node {
    /// The node's endpoint, when its address is an IP address.
    #[must_use]
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.address.ip().map(|a| Endpoint::new(a, self.port))
    }
}

/// What the records in etcd say should be on the load balancer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Endpoints of the readable records, each with the instance that asked for it.
    pub nodes: BTreeMap<Endpoint, String>,
    /// Endpoints of instances whose record is unreadable now: kept as they were (last
    /// readable value), never added, never removed.
    pub held: BTreeMap<Endpoint, String>,
    /// Addresses of unreadable records whose address is known but whose port is not:
    /// every node on these addresses is left alone.
    pub held_addresses: BTreeMap<IpAddr, String>,
    /// Unreadable records that cannot be placed at all (with why): while there is one,
    /// no node is removed.
    pub unknown: Vec<String>,
    /// Every address seen in a record since start: the nodes `--managed-only` manages
    /// when no `--port` is given.
    pub known_addresses: BTreeSet<IpAddr>,
    /// Whether the view is complete: initial load done and no watch gap since.
    pub complete: bool,
    /// The etcd revision the view reflects.
    pub revision: i64,
}

/// Limits of the load balancer's API (Rackspace: from `absolutelimits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nodes per load balancer.
    pub node_limit: usize,
    /// Ids per bulk delete.
    pub batch_delete: usize,
    /// Whether due deletes wait a little for other draining nodes so they share one call
    /// (Rackspace: every call locks the load balancer; HAProxy: commands cost nothing).
    pub share_deletes: bool,
}

impl Limits {
    /// No limit at all (HAProxy's Runtime API).
    #[must_use]
    pub const fn unlimited() -> Limits {
        Limits {
            node_limit: usize::MAX,
            batch_delete: usize::MAX,
            share_deletes: false,
        }
    }
}

impl Default for Limits {
    /// The Rackspace API's defaults: 25 nodes, 10 ids per bulk delete.
    fn default() -> Self {
        Limits {
            node_limit: 25,
            batch_delete: 10,
            share_deletes: true,
        }
    }
}

/// The operator's choices that shape a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long a removed node drains before it is deleted.
    pub drain: Duration,
    /// Add new nodes as DRAINING and enable them once they report ONLINE.
    pub add_draining: bool,
    /// Largest share (percent) of the nodes in service one plan may take out of service.
    pub max_remove_pct: u8,
    /// Fewest nodes a plan may leave in service.
    pub min_nodes: usize,
    /// Lift the emptiness and size rules (not the incomplete-view rule).
    pub force: bool,
    /// How long a node in service must have been missing from the records before it is
    /// drained (`--remove-settle`). Records that expire one lease at a time (a host cut
    /// off, whose announcers' leases run out a keep-alive period apart) are then judged
    /// together by the `max_remove` rule, instead of going one pass at a time. Zero
    /// drains at once (a container's withdrawal on its stop signal must drain at once).
    pub remove_settle: Duration,
    /// Touch only managed nodes (see [`Policy::managed_port`]).
    pub managed_only: bool,
    /// With `managed_only`: the port of managed nodes; without it, nodes at an address
    /// seen in a record are managed.
    pub managed_port: Option<u16>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            drain: Duration::from_secs(30),
            add_draining: false,
            max_remove_pct: 50,
            min_nodes: 1,
            force: false,
            remove_settle: Duration::ZERO,
            managed_only: false,
            managed_port: None,
        }
    }
}

/// What the load balancer looks like now.
#[derive(Clone, Copy, Debug)]
pub struct Actual<'a> {
    /// Its nodes.
    pub nodes: &'a [Node],
    /// When each DRAINING node started draining, as far as lb-sync knows (nodes found
    /// draining count from when they were first seen).
    pub drain_started: &'a BTreeMap<u64, Instant>,
    /// Since when each endpoint of a node has been missing from the records, as far as
    /// lb-sync knows (see [`Policy::remove_settle`]; endpoints not listed count from now).
    pub missing_since: &'a BTreeMap<Endpoint, Instant>,
    /// The time the plan is made at.
    pub now: Instant,
}

/// A node to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNode {
    /// Where it listens.
    pub endpoint: Endpoint,
    /// ENABLED, or DRAINING with `--add-draining`.
    pub condition: Condition,
}

/// A change to one existing node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRef {
    /// The API's id.
    pub id: u64,
    /// Where it listens (for messages).
    pub endpoint: Endpoint,
}

/// Why a plan must not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The view of etcd is not complete (not loaded yet, or a watch gap).
    Incomplete,
    /// No record is left while the load balancer has nodes.
    EmptyDesired {
        /// Nodes the load balancer has (managed ones).
        nodes: usize,
    },
    /// The plan would take too many nodes out of service at once.
    TooManyRemovals {
        /// Nodes it would take out.
        remove: usize,
        /// Nodes in service now.
        in_service: usize,
        /// The limit, percent.
        max_pct: u8,
    },
    /// The plan would leave too few nodes in service.
    BelowMinimum {
        /// Nodes left in service.
        left: usize,
        /// The minimum.
        min: usize,
    },
}

/// A refusal's short stable name (the metric label, and `reason` in `plan --output json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelValue, serde::Serialize)]
#[allow(non_camel_case_types)] // the label values are the metric's documented snake_case
pub enum RefusalReason {
    /// [`Refusal::Incomplete`].
    incomplete_view,
    /// [`Refusal::EmptyDesired`].
    empty_desired,
    /// [`Refusal::TooManyRemovals`].
    max_remove,
    /// [`Refusal::BelowMinimum`].
    min_nodes,
}

impl Refusal {
    /// A short stable name, for metrics labels.
    #[must_use]
    pub fn reason(&self) -> RefusalReason {
        match self {
            Refusal::Incomplete => RefusalReason::incomplete_view,
            Refusal::EmptyDesired { .. } => RefusalReason::empty_desired,
            Refusal::TooManyRemovals { .. } => RefusalReason::max_remove,
            Refusal::BelowMinimum { .. } => RefusalReason::min_nodes,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Incomplete => write!(
                f,
                "the view of etcd is not complete (initial load not done, or the watch has a gap)"
            ),
            Refusal::EmptyDesired { nodes } => write!(
                f,
                "no record is left but the load balancer has {nodes} node(s): refusing to empty it (--force lifts this)"
            ),
            Refusal::TooManyRemovals {
                remove,
                in_service,
                max_pct,
            } => write!(
                f,
                "the plan would take {remove} of {in_service} nodes out of service, more than --max-remove {max_pct}%"
            ),
            Refusal::BelowMinimum { left, min } => write!(
                f,
                "the plan would leave {left} node(s) in service, fewer than --min-nodes {min}"
            ),
        }
    }
}

/// Something the plan leaves alone on purpose, told to the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// The node limit holds adds back.
    NodeLimit {
        /// The limit.
        limit: usize,
        /// Desired endpoints not added.
        left_out: Vec<Endpoint>,
    },
    /// Nodes lb-sync does not manage (by `--managed-only`, or foreign to the provider).
    Unmanaged {
        /// How many.
        count: usize,
    },
    /// A desired node in a condition this version does not know.
    UnknownCondition {
        /// The node.
        node: NodeRef,
        /// The condition as the API wrote it.
        condition: String,
    },
    /// Unreadable records that cannot be placed hold every removal.
    RemovalsHeld {
        /// Why each record cannot be read.
        unknown: Vec<String>,
    },
    /// An unreadable record: its node is kept as it is.
    HeldEndpoint {
        /// The instance.
        instance: String,
        /// Its last endpoint.
        endpoint: Endpoint,
    },
    /// An unreadable record without a port: every node at its address is kept.
    HeldAddress {
        /// The instance.
        instance: String,
        /// Its address.
        address: IpAddr,
    },
    /// `--force` lifted this refusal for one pass.
    Forced(Refusal),
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::NodeLimit { limit, left_out } => write!(
                f,
                "node limit {limit}: {} desired node(s) not added ({})",
                left_out.len(),
                left_out.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            Note::Unmanaged { count } => write!(f, "{count} node(s) not managed by lb-sync are left alone"),
            Note::UnknownCondition { node, condition } => write!(
                f,
                "node {} {} has an unknown condition {condition:?}: left alone",
                node.id, node.endpoint
            ),
            Note::RemovalsHeld { unknown } => write!(
                f,
                "no node is removed while a record cannot be read: {}",
                unknown.join("; ")
            ),
            Note::HeldEndpoint { instance, endpoint } => write!(
                f,
                "record {instance:?} is unreadable: its node {endpoint} is kept as it is"
            ),
            Note::HeldAddress { instance, address } => write!(
                f,
                "record {instance:?} is unreadable: nodes at {address} are kept as they are"
            ),
            Note::Forced(r) => write!(f, "--force lifts: {r}"),
        }
    }
}

/// One change, applied on its own and followed by a wait for ACTIVE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// One POST adding these nodes.
    Add(Vec<NewNode>),
    /// One PUT setting the node ENABLED.
    Enable(NodeRef),
    /// One PUT setting the node DRAINING.
    Drain(NodeRef),
    /// One bulk DELETE of these nodes (at most the batch limit).
    Delete(Vec<NodeRef>),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |nodes: &mut dyn Iterator<Item = String>| nodes.collect::<Vec<_>>().join(", ");
        match self {
            Step::Add(n) => write!(
                f,
                "add {} node(s): {}",
                n.len(),
                list(&mut n.iter().map(|n| format!("{} {}", n.endpoint, n.condition.as_str())))
            ),
            Step::Enable(n) => write!(f, "enable node {} {}", n.id, n.endpoint),
            Step::Drain(n) => write!(f, "drain node {} {}", n.id, n.endpoint),
            Step::Delete(n) => write!(
                f,
                "delete {} node(s): {}",
                n.len(),
                list(&mut n.iter().map(|n| format!("{} {}", n.id, n.endpoint)))
            ),
        }
    }
}

/// Something the plan waits for before the next change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// The node waited on.
    pub node: NodeRef,
    /// What for.
    pub what: WaitFor,
}

/// How often a draining node whose sessions the API reports is looked at again: it may
/// go as soon as its last session ends.
pub const SESSION_POLL: Duration = Duration::from_millis(250);

/// What a node is waited on for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// Its drain period; it is deleted after `remaining` (or with the rest of its batch),
    /// or as soon as it has no session left when the API reports them.
    Drain {
        /// Time left.
        remaining: Duration,
        /// Sessions it still serves, when known.
        sessions: Option<u64>,
    },
    /// Added as DRAINING: enabled once it reports ONLINE.
    Online,
    /// Missing from the records for less than `--remove-settle`: drained once it has
    /// been missing that long (if the safety rules allow it then).
    Settle {
        /// Time left.
        remaining: Duration,
    },
}

/// The plan: changes in the order they are applied, what is waited for, and refusals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New nodes, in one POST (as many as the node limit allows).
    pub adds: Vec<NewNode>,
    /// Desired nodes found DRAINING or DISABLED, to set ENABLED.
    pub enables: Vec<NodeRef>,
    /// Nodes no longer desired, to set DRAINING.
    pub drains: Vec<NodeRef>,
    /// Drained nodes to delete, in bulk batches.
    pub deletes: Vec<Vec<NodeRef>>,
    /// Nodes waited on (drain periods, ONLINE checks).
    pub waiting: Vec<Wait>,
    /// When non-empty, nothing is applied.
    pub refusals: Vec<Refusal>,
    /// Things left alone on purpose, for the operator (node limit, unreadable records, unmanaged nodes).
    pub notes: Vec<Note>,
    /// Whether `force` lifted a refusal.
    pub forced: bool,
}

impl Plan {
    /// Whether nothing needs doing now or later.
    #[must_use]
    pub fn is_converged(&self) -> bool {
        self.refusals.is_empty() && !self.has_steps() && self.waiting.is_empty()
    }

    /// Whether there is a change to apply now (refused or not).
    #[must_use]
    pub fn has_steps(&self) -> bool {
        !self.adds.is_empty() || !self.enables.is_empty() || !self.drains.is_empty() || !self.deletes.is_empty()
    }

    /// The next change to apply, or `None` when refused or nothing is due.
    ///
    /// Order: adds (capacity first), enables, drains, deletes. When the node limit held
    /// adds back and drained nodes can go, deletes come first to make room.
    ///
    /// An incomplete view blocks everything. The other refusals block removals only:
    /// adds and enables never take capacity away, and applying them first turns a
    /// replacement (one node out, one in) into make-before-break, after which the
    /// removal is re-planned against the larger set in service.
    #[must_use]
    pub fn next_step(&self) -> Option<Step> {
        self.allowed_steps().into_iter().next()
    }

    /// Every change that may be applied now, in order, for an API that takes several
    /// changes per read (HAProxy). Same rules as [`Plan::next_step`], which is its first.
    #[must_use]
    pub fn allowed_steps(&self) -> Vec<Step> {
        let mut out = Vec::new();
        if self.refusals.contains(&Refusal::Incomplete) {
            return out;
        }
        let removals_ok = self.refusals.is_empty();
        let limit_bound = self.notes.iter().any(|n| matches!(n, Note::NodeLimit { .. }));
        let deletes = self.deletes.iter().cloned().map(Step::Delete);
        if removals_ok && limit_bound {
            out.extend(deletes.clone());
        }
        if !self.adds.is_empty() {
            out.push(Step::Add(self.adds.clone()));
        }
        out.extend(self.enables.iter().cloned().map(Step::Enable));
        if !removals_ok {
            return out;
        }
        out.extend(self.drains.iter().cloned().map(Step::Drain));
        if !limit_bound {
            out.extend(deletes);
        }
        out
    }

    /// How long until something waited on may be due (the earliest drain end), if anything is waited on.
    #[must_use]
    pub fn next_wake(&self) -> Option<Duration> {
        self.waiting
            .iter()
            .filter_map(|w| match w.what {
                WaitFor::Drain {
                    remaining,
                    sessions: Some(_),
                } => Some(remaining.min(SESSION_POLL)),
                WaitFor::Drain {
                    remaining,
                    sessions: None,
                } => Some(remaining),
                WaitFor::Settle { remaining } => Some(remaining),
                WaitFor::Online => None,
            })
            .min()
            .or_else(|| {
                self.waiting
                    .iter()
                    .any(|w| w.what == WaitFor::Online)
                    .then_some(Duration::from_secs(5))
            })
    }

    /// Every change of the plan in application order, for printing.
    #[must_use]
    pub fn steps(&self) -> Vec<Step> {
        let mut out = Vec::new();
        if !self.adds.is_empty() {
            out.push(Step::Add(self.adds.clone()));
        }
        out.extend(self.enables.iter().cloned().map(Step::Enable));
        out.extend(self.drains.iter().cloned().map(Step::Drain));
        out.extend(self.deletes.iter().cloned().map(Step::Delete));
        out
    }
}

/// A plan as `lb-sync plan` prints it: one line per change, wait, note and refusal, and
/// a last line that says what would happen.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The drain period (a drain line says when the node goes).
    pub drain: Duration,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = self.plan;
        for step in plan.steps() {
            match step {
                Step::Add(nodes) => {
                    for n in nodes {
                        writeln!(f, "add     {} {}", n.endpoint, n.condition.as_str())?;
                    }
                }
                Step::Enable(n) => writeln!(f, "enable  node {} {}", n.id, n.endpoint)?,
                Step::Drain(n) => writeln!(
                    f,
                    "drain   node {} {} (deleted {} later)",
                    n.id,
                    n.endpoint,
                    humantime::format_duration(self.drain)
                )?,
                Step::Delete(nodes) => {
                    for n in nodes {
                        writeln!(f, "delete  node {} {}", n.id, n.endpoint)?;
                    }
                }
            }
        }
        for w in &plan.waiting {
            match &w.what {
                WaitFor::Drain { .. } => writeln!(
                    f,
                    "waiting node {} {} is draining; deleted once its drain period ends",
                    w.node.id, w.node.endpoint
                )?,
                WaitFor::Online => writeln!(
                    f,
                    "waiting node {} {} is enabled once it reports ONLINE",
                    w.node.id, w.node.endpoint
                )?,
                WaitFor::Settle { remaining } => writeln!(
                    f,
                    "waiting node {} {} is missing from the records; drained in {} (--remove-settle)",
                    w.node.id,
                    w.node.endpoint,
                    humantime::format_duration(*remaining)
                )?,
            }
        }
        for note in &plan.notes {
            writeln!(f, "note    {note}")?;
        }
        for r in &plan.refusals {
            writeln!(f, "REFUSED {r}")?;
        }
        if !plan.refusals.is_empty() {
            writeln!(
                f,
                "nothing above would be applied except adds (and nothing at all on an incomplete view)"
            )?;
        } else if plan.is_converged() && plan.notes.is_empty() {
            writeln!(f, "converged: nothing to do")?;
        } else if !plan.has_steps() {
            writeln!(f, "nothing to apply now")?;
        }
        Ok(())
    }
}

/// Computes the plan that takes `actual` to `desired` under `limits` and `policy`.
///
/// Five phases, each a function: index the load balancer, plan the adds, walk the
/// managed nodes (enables, drains, drain clocks), batch the deletes, apply the safety rules.
#[must_use]
pub fn plan(desired: &Desired, actual: &Actual<'_>, limits: &Limits, policy: &Policy) -> Plan {
    let mut out = Plan::default();
    let inventory = Inventory::of(desired, actual.nodes, policy);
    if inventory.unmanaged > 0 && (policy.managed_only || inventory.foreign) {
        out.notes.push(Note::Unmanaged {
            count: inventory.unmanaged,
        });
    }
    plan_adds(desired, &inventory, actual.nodes.len(), limits, policy, &mut out);
    let removal = plan_existing(desired, &inventory, actual, policy, &mut out);
    apply_safety(desired, inventory.mine.len(), &removal, policy, &mut out);
    plan_deletes(removal.ready, removal.pending_drain, limits, policy, &mut out);
    out
}

/// The load balancer indexed by endpoint, and which of its nodes lb-sync manages.
struct Inventory<'a> {
    /// Every node with an IP endpoint (managed or not: a desired endpoint held by any
    /// node is not added again).
    present: HashSet<Endpoint>,
    /// The managed nodes.
    mine: Vec<(&'a Node, Endpoint)>,
    /// Nodes left alone.
    unmanaged: usize,
    /// Whether the provider marked a node as foreign.
    foreign: bool,
}

impl<'a> Inventory<'a> {
    fn of(desired: &Desired, nodes: &'a [Node], policy: &Policy) -> Inventory<'a> {
        let managed = |n: &Node, ep: &Endpoint| -> bool {
            if n.foreign {
                return false;
            }
            if !policy.managed_only {
                return true;
            }
            match policy.managed_port {
                Some(p) => n.port == p,
                None => desired.known_addresses.contains(&ep.address),
            }
        };
        let mut inv = Inventory {
            present: HashSet::with_capacity(nodes.len()),
            mine: Vec::new(),
            unmanaged: 0,
            foreign: nodes.iter().any(|n| n.foreign),
        };
        // Nodes whose address is not an IP are not ours.
        for n in nodes {
            match n.endpoint() {
                Some(ep) => {
                    inv.present.insert(ep);
                    if managed(n, &ep) {
                        inv.mine.push((n, ep));
                    } else {
                        inv.unmanaged += 1;
                    }
                }
                None => inv.unmanaged += 1,
            }
        }
        inv
    }
}

/// Adds: desired endpoints the load balancer lacks, within the node limit.
fn plan_adds(
    desired: &Desired,
    inventory: &Inventory<'_>,
    node_count: usize,
    limits: &Limits,
    policy: &Policy,
    out: &mut Plan,
) {
    let condition = if policy.add_draining {
        Condition::Draining
    } else {
        Condition::Enabled
    };
    let missing: Vec<Endpoint> = desired
        .nodes
        .keys()
        .filter(|ep| !inventory.present.contains(ep))
        .copied()
        .collect();
    let room = limits.node_limit.saturating_sub(node_count);
    if missing.len() > room {
        out.notes.push(Note::NodeLimit {
            limit: limits.node_limit,
            left_out: missing[room..].to_vec(),
        });
    }
    out.adds = missing
        .iter()
        .take(room)
        .map(|ep| NewNode {
            endpoint: *ep,
            condition: condition.clone(),
        })
        .collect();
}

/// What walking the managed nodes found about removals.
#[derive(Default)]
struct Removal {
    /// Nodes that may be deleted now, with how long they are overdue.
    ready: Vec<(NodeRef, Duration)>,
    /// Draining nodes not due yet: time left, sessions still served.
    pending_drain: Vec<(NodeRef, Duration, Option<u64>)>,
    /// Managed nodes in service (take traffic, not known to fail their check).
    in_service: usize,
    /// Of those, how many the plan takes out (drains now, or once settled).
    removed_serving: usize,
    /// Managed nodes whose removal has begun (DRAINING or DISABLED, no longer desired):
    /// they count against `max_remove` until deleted, so records that vanish one pass at a
    /// time cannot take out more than the limit in small steps.
    in_progress: usize,
}

/// Enables and drains of the managed nodes, and which draining nodes are due.
fn plan_existing(
    desired: &Desired,
    inventory: &Inventory<'_>,
    actual: &Actual<'_>,
    policy: &Policy,
    out: &mut Plan,
) -> Removal {
    let mut r = Removal::default();
    let removals_held = !desired.unknown.is_empty();
    for (n, ep) in &inventory.mine {
        let node = NodeRef {
            id: n.id,
            endpoint: *ep,
        };
        // In service: takes traffic and is not known to fail its health check.
        let serving =
            matches!(n.condition, Condition::Enabled | Condition::Other(_)) && n.status != NodeStatus::Offline;
        if serving {
            r.in_service += 1;
        }
        if desired.nodes.contains_key(ep) {
            match &n.condition {
                Condition::Enabled => {}
                Condition::Draining if policy.add_draining && n.status != NodeStatus::Online => {
                    out.waiting.push(Wait {
                        node,
                        what: WaitFor::Online,
                    });
                }
                Condition::Draining | Condition::Disabled => out.enables.push(node),
                Condition::Other(c) => out.notes.push(Note::UnknownCondition {
                    node,
                    condition: c.clone(),
                }),
            }
            continue;
        }
        if desired.held.contains_key(ep) || desired.held_addresses.contains_key(&ep.address) || removals_held {
            continue;
        }
        match &n.condition {
            Condition::Enabled | Condition::Other(_) => {
                if serving {
                    r.removed_serving += 1;
                }
                let since = actual.missing_since.get(ep).copied().unwrap_or(actual.now);
                let settled = since + policy.remove_settle;
                if settled > actual.now {
                    out.waiting.push(Wait {
                        node,
                        what: WaitFor::Settle {
                            remaining: settled.duration_since(actual.now),
                        },
                    });
                } else {
                    out.drains.push(node);
                }
            }
            Condition::Disabled => {
                r.in_progress += 1;
                r.ready.push((node, Duration::ZERO));
            }
            Condition::Draining => {
                r.in_progress += 1;
                let started = actual.drain_started.get(&n.id).copied().unwrap_or(actual.now);
                let due = started + policy.drain;
                if due <= actual.now {
                    r.ready.push((node, actual.now.duration_since(due)));
                } else if n.sessions == Some(0) {
                    // Drained before its time: nothing left to finish.
                    r.ready.push((node, Duration::ZERO));
                } else {
                    r.pending_drain.push((node, due.duration_since(actual.now), n.sessions));
                }
            }
        }
    }
    if removals_held {
        out.notes.push(Note::RemovalsHeld {
            unknown: desired.unknown.clone(),
        });
    }
    for (endpoint, instance) in &desired.held {
        out.notes.push(Note::HeldEndpoint {
            instance: instance.clone(),
            endpoint: *endpoint,
        });
    }
    for (address, instance) in &desired.held_addresses {
        out.notes.push(Note::HeldAddress {
            instance: instance.clone(),
            address: *address,
        });
    }
    r
}

/// Deletes go in as few calls as possible: wait until every draining node is due,
/// unless a full batch is ready or the oldest has waited long past its due time
/// (a whole extra drain period, and at least a minute), so churn cannot starve them.
/// An API whose calls cost nothing (`!share_deletes`) deletes each node when it is due.
fn plan_deletes(
    ready: Vec<(NodeRef, Duration)>,
    pending_drain: Vec<(NodeRef, Duration, Option<u64>)>,
    limits: &Limits,
    policy: &Policy,
    out: &mut Plan,
) {
    let overdue = ready.iter().map(|(_, o)| *o).max().unwrap_or_default();
    let batch = limits.batch_delete.max(1);
    let patience = policy.drain.max(DELETE_PATIENCE);
    let go = !ready.is_empty()
        && (!limits.share_deletes
            || (pending_drain.is_empty() && out.drains.is_empty())
            || ready.len() >= batch
            || overdue >= patience);
    if go {
        let nodes: Vec<NodeRef> = ready.iter().map(|(n, _)| n.clone()).collect();
        out.deletes = nodes.chunks(batch).map(<[NodeRef]>::to_vec).collect();
    } else {
        let next = pending_drain.iter().map(|(_, r, _)| *r).min().unwrap_or(policy.drain);
        for (n, _) in ready {
            out.waiting.push(Wait {
                node: n,
                what: WaitFor::Drain {
                    remaining: next,
                    sessions: None,
                },
            });
        }
    }
    for (n, remaining, sessions) in pending_drain {
        out.waiting.push(Wait {
            node: n,
            what: WaitFor::Drain { remaining, sessions },
        });
    }
}

/// The safety rules; `force` lifts all but the incomplete-view one.
fn apply_safety(desired: &Desired, managed: usize, removal: &Removal, policy: &Policy, out: &mut Plan) {
    let (in_service, remove) = (removal.in_service, removal.removed_serving);
    if !desired.complete {
        out.refusals.push(Refusal::Incomplete);
    }
    let mut lifted = Vec::new();
    let nothing_left = desired.nodes.is_empty() && desired.held.is_empty() && desired.held_addresses.is_empty();
    if nothing_left && managed > 0 && desired.unknown.is_empty() {
        lifted.push(Refusal::EmptyDesired { nodes: managed });
    }
    // Only nodes in service count: draining a node that fails its health check takes
    // no capacity away.
    if remove > 0 {
        // Removals already under way count as taken out, of a base that still holds them.
        let out_total = remove + removal.in_progress;
        let base = in_service + removal.in_progress;
        if out_total * 100 > usize::from(policy.max_remove_pct) * base {
            lifted.push(Refusal::TooManyRemovals {
                remove: out_total,
                in_service: base,
                max_pct: policy.max_remove_pct,
            });
        }
        let added = if policy.add_draining { 0 } else { out.adds.len() };
        let left = in_service - remove + added;
        if left < policy.min_nodes {
            lifted.push(Refusal::BelowMinimum {
                left,
                min: policy.min_nodes,
            });
        }
    }
    if !lifted.is_empty() && policy.force {
        out.forced = true;
        out.notes.extend(lifted.into_iter().map(Note::Forced));
    } else {
        out.refusals.extend(lifted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8) -> Endpoint {
        Endpoint::new(IpAddr::from([10, 0, 0, last]), 8080)
    }

    #[test]
    fn endpoints_order_as_address_then_port() {
        let addrs: Vec<IpAddr> = [
            "0.0.0.0",
            "9.255.255.255",
            "10.0.0.1",
            "10.0.0.2",
            "10.0.1.0",
            "128.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "2001:db8::1:0",
            "fe80::1",
            "ffff::",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let mut all = Vec::new();
        for a in &addrs {
            for port in [0, 80, 8080, 65535] {
                all.push(Endpoint::new(*a, port));
            }
        }
        for x in &all {
            for y in &all {
                // What `#[derive(Ord)]` on (address, port) gives.
                let want = (x.address, x.port).cmp(&(y.address, y.port));
                assert_eq!(x.cmp(y), want, "{x} vs {y}");
                assert_eq!(x.partial_cmp(y), Some(want), "{x} vs {y}");
                assert_eq!(x == y, want.is_eq(), "{x} vs {y}");
            }
        }
    }

    fn desired(lasts: &[u8]) -> Desired {
        Desired {
            nodes: lasts.iter().map(|l| (ep(*l), format!("web{l:02}"))).collect(),
            complete: true,
            ..Desired::default()
        }
    }

    fn node(id: u64, last: u8, condition: Condition) -> Node {
        Node {
            id,
            address: format!("10.0.0.{last}").into(),
            port: 8080,
            condition,
            status: NodeStatus::Online,
            sessions: None,
            foreign: false,
        }
    }

    fn enabled(lasts: &[u8]) -> Vec<Node> {
        lasts
            .iter()
            .map(|l| node(u64::from(*l) + 100, *l, Condition::Enabled))
            .collect()
    }

    fn run(d: &Desired, nodes: &[Node], policy: &Policy) -> Plan {
        run_at(d, nodes, &BTreeMap::new(), Instant::now(), policy)
    }

    fn run_at(d: &Desired, nodes: &[Node], started: &BTreeMap<u64, Instant>, now: Instant, policy: &Policy) -> Plan {
        plan(
            d,
            &Actual {
                nodes,
                drain_started: started,
                missing_since: &BTreeMap::new(),
                now,
            },
            &Limits::default(),
            policy,
        )
    }

    fn ids(nodes: &[NodeRef]) -> Vec<u64> {
        nodes.iter().map(|n| n.id).collect()
    }

    /// Records that vanish one pass at a time cannot take out more than `max_remove` in
    /// small steps: nodes still draining after an earlier pass count as taken out.
    #[test]
    fn removals_under_way_count_against_max_remove() {
        let policy = Policy {
            max_remove_pct: 30,
            ..Policy::default()
        };
        // Ten nodes; 1-2 already draining (no longer desired), 3 now missing: 3 of 10.
        let mut nodes = enabled(&[3, 4, 5, 6, 7, 8, 9, 10]);
        nodes.extend([node(101, 1, Condition::Draining), node(102, 2, Condition::Draining)]);
        let d = desired(&[4, 5, 6, 7, 8, 9, 10]);
        let p = run(&d, &nodes, &policy);
        assert!(p.refusals.is_empty(), "{p:?}");
        assert_eq!(ids(&p.drains), vec![103]);
        // A fourth: 4 of 10 is more than 30 %, refused, and nothing is drained.
        nodes = enabled(&[4, 5, 6, 7, 8, 9, 10]);
        nodes.extend([1, 2, 3].map(|l| node(100 + u64::from(l), l, Condition::Draining)));
        let d = desired(&[5, 6, 7, 8, 9, 10]);
        let p = run(&d, &nodes, &policy);
        assert_eq!(
            p.refusals,
            vec![Refusal::TooManyRemovals {
                remove: 4,
                in_service: 10,
                max_pct: 30
            }]
        );
        assert!(p.allowed_steps().is_empty(), "{:?}", p.allowed_steps());
        // Once the drained ones are deleted, the next removal is judged against what is left.
        let nodes = enabled(&[4, 5, 6, 7, 8, 9, 10]);
        let p = run(&d, &nodes, &policy);
        assert!(p.refusals.is_empty(), "{p:?}");
        assert_eq!(ids(&p.drains), vec![104]);
    }

    /// With `--remove-settle`, a node is drained only once its record has been missing that
    /// long; meanwhile it counts for the safety rules, so records expiring a little apart
    /// are refused together before any node goes.
    #[test]
    fn remove_settle_judges_records_that_vanish_apart_together() {
        let policy = Policy {
            max_remove_pct: 30,
            remove_settle: Duration::from_secs(2),
            ..Policy::default()
        };
        let now = Instant::now();
        let nodes = enabled(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let at = |missing: &[(u8, u64)], d: &Desired| {
            let since: BTreeMap<Endpoint, Instant> = missing
                .iter()
                .map(|(l, ago)| (ep(*l), now - Duration::from_millis(*ago)))
                .collect();
            plan(
                d,
                &Actual {
                    nodes: &nodes,
                    drain_started: &BTreeMap::new(),
                    missing_since: &since,
                    now,
                },
                &Limits::default(),
                &policy,
            )
        };
        // One record gone 500 ms ago: waited on, nothing drained yet, a wake in 1.5 s.
        let d = desired(&[2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let p = at(&[(1, 500)], &d);
        assert!(p.drains.is_empty() && p.refusals.is_empty(), "{p:?}");
        assert_eq!(
            p.waiting[0].what,
            WaitFor::Settle {
                remaining: Duration::from_millis(1500)
            }
        );
        assert_eq!(p.next_wake(), Some(Duration::from_millis(1500)));
        assert!(!p.is_converged());
        // Settled: drained.
        let p = at(&[(1, 2000)], &d);
        assert_eq!(ids(&p.drains), vec![101]);
        // Four gone within the settle time (one settled): refused, nothing drained.
        let d = desired(&[5, 6, 7, 8, 9, 10]);
        let p = at(&[(1, 2500), (2, 1000), (3, 400), (4, 0)], &d);
        assert_eq!(p.refusals.len(), 1, "{p:?}");
        assert_eq!(p.refusals[0].reason(), RefusalReason::max_remove);
        assert!(p.allowed_steps().is_empty());
    }

    /// One row: name, desired, load balancer, policy, added (last octets, ENABLED), drained
    /// ids, refusal reasons.
    type Row = (
        &'static str,
        Desired,
        Vec<Node>,
        Policy,
        Vec<u8>,
        Vec<u64>,
        Vec<&'static str>,
    );

    /// The table: desired records, the load balancer, the policy -> adds, drains, refusal reasons.
    #[test]
    fn table() {
        let big = Policy {
            max_remove_pct: 80,
            ..Policy::default()
        };
        let forced = Policy {
            force: true,
            ..Policy::default()
        };
        let min3 = Policy {
            min_nodes: 3,
            ..Policy::default()
        };
        let one_to_ten: Vec<u8> = (1..=10).collect();
        let cases: Vec<Row> = vec![
            (
                "empty lb, one record: one add",
                desired(&[1]),
                vec![],
                Policy::default(),
                vec![1],
                vec![],
                vec![],
            ),
            (
                "1 -> 10: nine adds in one POST",
                desired(&one_to_ten),
                enabled(&[1]),
                Policy::default(),
                (2..=10).collect(),
                vec![],
                vec![],
            ),
            (
                "converged",
                desired(&[1, 2]),
                enabled(&[1, 2]),
                Policy::default(),
                vec![],
                vec![],
                vec![],
            ),
            (
                "10 -> 3 over the default cap: refused",
                desired(&[1, 2, 3]),
                enabled(&one_to_ten),
                Policy::default(),
                vec![],
                (104..=110).collect(),
                vec!["max_remove"],
            ),
            (
                "10 -> 3 with --max-remove 80: seven drains",
                desired(&[1, 2, 3]),
                enabled(&one_to_ten),
                big.clone(),
                vec![],
                (104..=110).collect(),
                vec![],
            ),
            (
                "10 -> 5 is exactly 50%: allowed",
                desired(&[1, 2, 3, 4, 5]),
                enabled(&one_to_ten),
                Policy::default(),
                vec![],
                (106..=110).collect(),
                vec![],
            ),
            (
                "empty desired with nodes: refused",
                desired(&[]),
                enabled(&[1, 2]),
                Policy::default(),
                vec![],
                vec![101, 102],
                vec!["empty_desired", "max_remove", "min_nodes"],
            ),
            (
                "empty desired, empty lb: nothing",
                desired(&[]),
                vec![],
                Policy::default(),
                vec![],
                vec![],
                vec![],
            ),
            (
                "--force lifts the size rules",
                desired(&[]),
                enabled(&[1, 2]),
                forced,
                vec![],
                vec![101, 102],
                vec![],
            ),
            (
                "min nodes 3: 4 -> 2 refused",
                desired(&[1, 2]),
                enabled(&[1, 2, 3, 4]),
                min3.clone(),
                vec![],
                vec![103, 104],
                vec!["min_nodes"],
            ),
            (
                "min nodes 3: adds count toward it",
                desired(&[1, 2, 5]),
                enabled(&[1, 2, 3]),
                min3,
                vec![5],
                vec![103],
                vec![],
            ),
            (
                "1 -> 1 replaced: the drain waits for the add",
                desired(&[2]),
                enabled(&[1]),
                Policy::default(),
                vec![2],
                vec![101],
                vec!["max_remove"],
            ),
            (
                "1 -> 1 replaced, new node in: now the drain is half",
                desired(&[2]),
                enabled(&[1, 2]),
                Policy::default(),
                vec![],
                vec![101],
                vec![],
            ),
            (
                "2 -> 1: half is allowed",
                desired(&[1]),
                enabled(&[1, 2]),
                Policy::default(),
                vec![],
                vec![102],
                vec![],
            ),
            (
                "3 -> 1: two thirds refused",
                desired(&[1]),
                enabled(&[1, 2, 3]),
                Policy::default(),
                vec![],
                vec![102, 103],
                vec!["max_remove"],
            ),
            (
                "incomplete view: refused, even adds",
                Desired {
                    complete: false,
                    ..desired(&[1, 2])
                },
                enabled(&[1]),
                Policy::default(),
                vec![2],
                vec![],
                vec!["incomplete_view"],
            ),
        ];
        for (name, d, nodes, policy, adds, drains, refusals) in cases {
            let p = run(&d, &nodes, &policy);
            let added: Vec<NewNode> = adds
                .iter()
                .map(|l| NewNode {
                    endpoint: ep(*l),
                    condition: Condition::Enabled,
                })
                .collect();
            assert_eq!(p.adds, added, "{name}: adds {p:?}");
            assert_eq!(ids(&p.drains), drains, "{name}: drains {p:?}");
            let got: Vec<String> = p.refusals.iter().map(|r| format!("{:?}", r.reason())).collect();
            assert_eq!(got, refusals, "{name}: refusals");
            // Refused plans apply adds only (and nothing at all on an incomplete view).
            let next = p.next_step();
            match next {
                Some(Step::Add(_)) => assert!(!p.refusals.contains(&Refusal::Incomplete), "{name}"),
                Some(_) => assert!(p.refusals.is_empty(), "{name}: {next:?}"),
                None => assert!(!p.refusals.is_empty() || !p.has_steps(), "{name}"),
            }
        }
    }

    #[test]
    fn nodes_failing_their_health_check_do_not_count_as_capacity() {
        let mut nodes = enabled(&[1, 2, 3]);
        nodes[1].status = NodeStatus::Offline;
        nodes[2].status = NodeStatus::Offline;
        // Removing the two dead nodes takes nothing out of service: allowed.
        let p = run(&desired(&[1]), &nodes, &Policy::default());
        assert_eq!(ids(&p.drains), vec![102, 103]);
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
        // Removing the only live one is refused, however many dead ones stay.
        let p = run(&desired(&[2, 3]), &nodes, &Policy::default());
        assert_eq!(
            p.refusals.iter().map(Refusal::reason).collect::<Vec<_>>(),
            vec![RefusalReason::max_remove, RefusalReason::min_nodes]
        );
    }

    #[test]
    fn incomplete_is_not_lifted_by_force() {
        let d = Desired {
            complete: false,
            ..desired(&[])
        };
        let p = run(
            &d,
            &enabled(&[1]),
            &Policy {
                force: true,
                ..Policy::default()
            },
        );
        assert_eq!(p.refusals, vec![Refusal::Incomplete]);
        assert!(p.forced, "the empty-desired rule was lifted, the incomplete one stays");
        assert_eq!(p.next_step(), None);
    }

    #[test]
    fn node_limit_caps_adds_and_says_so() {
        let want: Vec<u8> = (1..=30).collect();
        let p = run(&desired(&want), &enabled(&[1, 2]), &Policy::default());
        assert_eq!(p.adds.len(), 23, "25 - 2 present");
        assert!(
            p.notes
                .iter()
                .any(|n| n.to_string().starts_with("node limit 25: 5 desired")),
            "{:?}",
            p.notes
        );
        let limits = Limits {
            node_limit: 3,
            ..Limits::default()
        };
        let p = plan(
            &desired(&[1, 2, 3, 4]),
            &Actual {
                nodes: &enabled(&[1, 2, 3]),
                drain_started: &BTreeMap::new(),
                missing_since: &BTreeMap::new(),
                now: Instant::now(),
            },
            &limits,
            &Policy::default(),
        );
        assert!(p.adds.is_empty());
        assert_eq!(p.next_step(), None);
    }

    #[test]
    fn drained_nodes_are_deleted_after_the_drain_period_in_batches_of_ten() {
        let now = Instant::now();
        let policy = Policy {
            drain: Duration::from_secs(30),
            max_remove_pct: 100,
            ..Policy::default()
        };
        // 13 draining nodes not desired; one desired node in service.
        let mut nodes: Vec<Node> = (1..=13)
            .map(|l| node(u64::from(l) + 100, l, Condition::Draining))
            .collect();
        nodes.push(node(200, 50, Condition::Enabled));
        let d = desired(&[50]);
        let early: BTreeMap<u64, Instant> = nodes.iter().map(|n| (n.id, now)).collect();
        let p = run_at(&d, &nodes, &early, now + Duration::from_secs(10), &policy);
        assert!(p.deletes.is_empty(), "still draining");
        assert_eq!(p.waiting.len(), 13);
        assert_eq!(p.next_wake(), Some(Duration::from_secs(20)));
        assert!(!p.is_converged());

        let p = run_at(&d, &nodes, &early, now + Duration::from_secs(30), &policy);
        let batches: Vec<usize> = p.deletes.iter().map(Vec::len).collect();
        assert_eq!(batches, vec![10, 3], "ceil(13 / 10) bulk deletes");
        assert_eq!(
            p.next_step().map(|s| matches!(s, Step::Delete(b) if b.len() == 10)),
            Some(true)
        );
    }

    #[test]
    fn deletes_wait_for_the_whole_batch_but_not_forever() {
        let now = Instant::now();
        let policy = Policy {
            drain: Duration::from_secs(10),
            ..Policy::default()
        };
        let nodes = vec![
            node(101, 1, Condition::Draining),
            node(102, 2, Condition::Draining),
            node(103, 3, Condition::Enabled),
        ];
        let d = desired(&[3]);
        let started: BTreeMap<u64, Instant> = [(101, now), (102, now + Duration::from_secs(4))].into();
        // 101 is due, 102 is 4 s from due: wait and delete both in one call.
        let p = run_at(&d, &nodes, &started, now + Duration::from_secs(10), &policy);
        assert!(p.deletes.is_empty());
        assert_eq!(p.next_wake(), Some(Duration::from_secs(4)));
        let p = run_at(&d, &nodes, &started, now + Duration::from_secs(14), &policy);
        assert_eq!(
            p.deletes.iter().map(|b| ids(b)).collect::<Vec<_>>(),
            vec![vec![101, 102]]
        );
        // A node drained much later does not hold an overdue one back for long
        // (a drain period, at least DELETE_PATIENCE).
        let started: BTreeMap<u64, Instant> = [(101, now), (102, now + Duration::from_secs(15))].into();
        let p = run_at(&d, &nodes, &started, now + Duration::from_secs(20), &policy);
        assert!(p.deletes.is_empty(), "101 is 10 s overdue: still waits for 102");
        let started: BTreeMap<u64, Instant> = [(101, now), (102, now + Duration::from_secs(75))].into();
        let p = run_at(&d, &nodes, &started, now + Duration::from_secs(80), &policy);
        assert_eq!(p.deletes.iter().map(|b| ids(b)).collect::<Vec<_>>(), vec![vec![101]]);
    }

    #[test]
    fn a_node_found_draining_counts_from_now_and_disabled_ones_go_at_once() {
        let now = Instant::now();
        let nodes = vec![
            node(101, 1, Condition::Draining),
            node(102, 2, Condition::Disabled),
            node(103, 3, Condition::Enabled),
            node(104, 4, Condition::Enabled),
        ];
        let p = run_at(&desired(&[3, 4]), &nodes, &BTreeMap::new(), now, &Policy::default());
        assert!(p.deletes.is_empty(), "101 has just been found draining");
        assert!(p.waiting.iter().any(|w| w.node.id == 101));
        let p = run_at(&desired(&[3, 4, 1]), &nodes, &BTreeMap::new(), now, &Policy::default());
        assert_eq!(ids(&p.enables), vec![101], "desired again: enabled back");
        assert_eq!(p.deletes.iter().map(|b| ids(b)).collect::<Vec<_>>(), vec![vec![102]]);
    }

    #[test]
    fn add_draining_adds_as_draining_and_enables_once_online() {
        let policy = Policy {
            add_draining: true,
            ..Policy::default()
        };
        let p = run(&desired(&[1, 2]), &enabled(&[1]), &policy);
        assert_eq!(p.adds[0].condition, Condition::Draining);
        let mut nodes = enabled(&[1]);
        let mut new = node(102, 2, Condition::Draining);
        new.status = NodeStatus::Offline;
        nodes.push(new.clone());
        let p = run(&desired(&[1, 2]), &nodes, &policy);
        assert!(p.enables.is_empty() && !p.is_converged());
        assert_eq!(p.waiting[0].what, WaitFor::Online);
        new.status = NodeStatus::Online;
        nodes[1] = new;
        let p = run(&desired(&[1, 2]), &nodes, &policy);
        assert_eq!(ids(&p.enables), vec![102]);
    }

    #[test]
    fn unreadable_records_never_remove_a_node() {
        let nodes = enabled(&[1, 2, 3]);
        // web02 turned unreadable: its last endpoint is held.
        let mut d = desired(&[1, 3]);
        d.held.insert(ep(2), "web02".into());
        let p = run(&d, &nodes, &Policy::default());
        assert!(p.drains.is_empty() && p.is_converged(), "{p:?}");
        // Address known, port not: every node on the address is kept.
        let mut d = desired(&[1, 3]);
        d.held_addresses.insert(ep(2).address, "web02".into());
        assert!(run(&d, &nodes, &Policy::default()).drains.is_empty());
        // Nothing known: no removal at all, adds still go ahead.
        let mut d = desired(&[1, 4]);
        d.unknown.push("web09: bad address".into());
        let p = run(&d, &nodes, &Policy::default());
        assert!(p.drains.is_empty());
        assert_eq!(p.adds.len(), 1);
        assert!(p.refusals.is_empty());
        // Only unreadable records left: not "empty", nothing removed, nothing refused.
        let mut d = desired(&[]);
        d.unknown.push("web09: bad address".into());
        let p = run(&d, &nodes, &Policy::default());
        assert!(p.drains.is_empty() && p.refusals.is_empty());
    }

    #[test]
    fn managed_only_leaves_other_nodes_alone() {
        let mut nodes = enabled(&[1, 2]);
        nodes.push(Node {
            id: 300,
            address: "192.0.2.7".into(),
            port: 443,
            condition: Condition::Enabled,
            status: NodeStatus::Online,
            sessions: None,
            foreign: false,
        });
        let policy = Policy {
            managed_only: true,
            managed_port: Some(8080),
            ..Policy::default()
        };
        let p = run(&desired(&[1]), &nodes, &policy);
        assert_eq!(ids(&p.drains), vec![102]);
        // Without --managed-only the stranger goes too (and the cap refuses it).
        let p = run(&desired(&[1]), &nodes, &Policy::default());
        assert_eq!(ids(&p.drains), vec![102, 300]);
        // By address: only addresses seen in records are managed.
        let mut d = desired(&[1]);
        d.known_addresses = [ep(1).address, ep(2).address].into();
        let policy = Policy {
            managed_only: true,
            ..Policy::default()
        };
        assert_eq!(ids(&run(&d, &nodes, &policy).drains), vec![102]);
        // Empty desired with only unmanaged nodes is not "emptying" anything.
        let p = run(&desired(&[]), &nodes[2..], &policy);
        assert!(p.refusals.is_empty() && p.is_converged());
    }

    /// Written to kill mutants scripts/mutants found alive (TESTING.md): the count of nodes
    /// left alone, and when it is worth a note.
    #[test]
    fn the_unmanaged_note_counts_the_nodes_left_alone() {
        let stranger = |id, address: &str, foreign| Node {
            id,
            address: address.into(),
            port: 443,
            condition: Condition::Enabled,
            status: NodeStatus::Online,
            sessions: None,
            foreign,
        };
        let unmanaged = |p: &Plan| {
            p.notes.iter().find_map(|n| match n {
                Note::Unmanaged { count } => Some(*count),
                _ => None,
            })
        };
        let managed_only = Policy {
            managed_only: true,
            managed_port: Some(8080),
            ..Policy::default()
        };
        let mut nodes = enabled(&[1]);
        assert_eq!(
            unmanaged(&run(&desired(&[1]), &nodes, &managed_only)),
            None,
            "none left alone"
        );
        // A node at another port and one whose address is not an IP.
        nodes.push(stranger(300, "192.0.2.7", false));
        nodes.push(stranger(301, "lb-node.example", false));
        assert_eq!(unmanaged(&run(&desired(&[1]), &nodes, &managed_only)), Some(2));
        // Without --managed-only every node is lb-sync's but the one it cannot address: no
        // note, as nothing was asked to be left alone.
        assert_eq!(unmanaged(&run(&desired(&[1]), &nodes[..2], &Policy::default())), None);
        // A node the provider marks foreign (HAProxy: not `lb-sync-` named) is left alone
        // and said so, with or without --managed-only.
        let with_foreign = vec![nodes[0].clone(), stranger(302, "10.0.0.9", true)];
        assert_eq!(
            unmanaged(&run(&desired(&[1]), &with_foreign, &Policy::default())),
            Some(1)
        );
    }

    /// Written to kill mutants scripts/mutants found alive (TESTING.md): whether a plan has a
    /// change to apply, for each kind of change alone.
    #[test]
    fn has_steps_sees_each_kind_of_change_alone() {
        let node = NodeRef {
            id: 101,
            endpoint: ep(1),
        };
        let add = NewNode {
            endpoint: ep(1),
            condition: Condition::Enabled,
        };
        let cases: Vec<(&str, Plan, bool)> = vec![
            ("nothing", Plan::default(), false),
            (
                "an add",
                Plan {
                    adds: vec![add],
                    ..Plan::default()
                },
                true,
            ),
            (
                "an enable",
                Plan {
                    enables: vec![node.clone()],
                    ..Plan::default()
                },
                true,
            ),
            (
                "a drain",
                Plan {
                    drains: vec![node.clone()],
                    ..Plan::default()
                },
                true,
            ),
            (
                "a delete",
                Plan {
                    deletes: vec![vec![node.clone()]],
                    ..Plan::default()
                },
                true,
            ),
            (
                "only a wait",
                Plan {
                    waiting: vec![Wait {
                        node,
                        what: WaitFor::Online,
                    }],
                    ..Plan::default()
                },
                false,
            ),
        ];
        for (name, p, want) in cases {
            assert_eq!(p.has_steps(), want, "{name}");
        }
    }

    /// Deletes come once, last, unless the node limit holds adds back (then first, to make
    /// room); a refusal other than the incomplete view lets adds and enables through, never a
    /// delete.
    #[test]
    fn allowed_steps_put_deletes_last_once_and_never_past_a_refusal() {
        let (a, b, c) = (
            NodeRef {
                id: 101,
                endpoint: ep(1),
            },
            NodeRef {
                id: 102,
                endpoint: ep(2),
            },
            NodeRef {
                id: 103,
                endpoint: ep(3),
            },
        );
        let add = NewNode {
            endpoint: ep(4),
            condition: Condition::Enabled,
        };
        let limit = Note::NodeLimit {
            limit: 3,
            left_out: vec![ep(5)],
        };
        let too_many = Refusal::TooManyRemovals {
            remove: 2,
            in_service: 3,
            max_pct: 50,
        };
        let base = Plan {
            enables: vec![a.clone()],
            drains: vec![b.clone()],
            deletes: vec![vec![c.clone()]],
            ..Plan::default()
        };
        let cases: Vec<(&str, Plan, Vec<Step>)> = vec![
            (
                "no refusal, no limit",
                base.clone(),
                vec![
                    Step::Enable(a.clone()),
                    Step::Drain(b.clone()),
                    Step::Delete(vec![c.clone()]),
                ],
            ),
            (
                "the limit holds adds back: deletes first",
                Plan {
                    adds: vec![add.clone()],
                    notes: vec![limit.clone()],
                    ..base.clone()
                },
                vec![
                    Step::Delete(vec![c.clone()]),
                    Step::Add(vec![add.clone()]),
                    Step::Enable(a.clone()),
                    Step::Drain(b.clone()),
                ],
            ),
            (
                "refused, with the limit note: adds and enables only",
                Plan {
                    adds: vec![add.clone()],
                    notes: vec![limit],
                    refusals: vec![too_many],
                    ..base.clone()
                },
                vec![Step::Add(vec![add]), Step::Enable(a)],
            ),
            (
                "incomplete view: nothing",
                Plan {
                    refusals: vec![Refusal::Incomplete],
                    ..base
                },
                vec![],
            ),
        ];
        for (name, p, want) in cases {
            assert_eq!(p.allowed_steps(), want, "{name}");
        }
    }

    /// A node added DRAINING and waited on until ONLINE is looked at again in 5 s; a drain
    /// clock or a session poll comes first.
    #[test]
    fn next_wake_for_each_kind_of_wait() {
        let wait = |id, what| Wait {
            node: NodeRef { id, endpoint: ep(1) },
            what,
        };
        let drain = |secs, sessions| WaitFor::Drain {
            remaining: Duration::from_secs(secs),
            sessions,
        };
        let cases: Vec<(&str, Vec<Wait>, Option<Duration>)> = vec![
            ("nothing waited on", vec![], None),
            (
                "online only",
                vec![wait(1, WaitFor::Online)],
                Some(Duration::from_secs(5)),
            ),
            (
                "online and a drain",
                vec![wait(1, WaitFor::Online), wait(2, drain(20, None))],
                Some(Duration::from_secs(20)),
            ),
            (
                "sessions are polled",
                vec![wait(2, drain(20, Some(3)))],
                Some(SESSION_POLL),
            ),
            (
                "a drain about to end",
                vec![wait(2, drain(0, Some(3)))],
                Some(Duration::ZERO),
            ),
        ];
        for (name, waiting, want) in cases {
            assert_eq!(
                Plan {
                    waiting,
                    ..Plan::default()
                }
                .next_wake(),
                want,
                "{name}"
            );
        }
    }

    /// Exactly as many missing nodes as there is room for: all added, no node-limit note
    /// (which would also put deletes first).
    #[test]
    fn adds_that_just_fit_the_node_limit_are_no_note() {
        let limits = Limits {
            node_limit: 3,
            ..Limits::default()
        };
        let plan_with = |want: &[u8]| {
            plan(
                &desired(want),
                &Actual {
                    nodes: &enabled(&[1]),
                    drain_started: &BTreeMap::new(),
                    missing_since: &BTreeMap::new(),
                    now: Instant::now(),
                },
                &limits,
                &Policy::default(),
            )
        };
        let p = plan_with(&[1, 2, 3]);
        assert_eq!((p.adds.len(), p.notes.clone()), (2, vec![]), "{p:?}");
        let p = plan_with(&[1, 2, 3, 4]);
        assert_eq!(p.adds.len(), 2);
        assert_eq!(
            p.notes,
            vec![Note::NodeLimit {
                limit: 3,
                left_out: vec![ep(4)]
            }]
        );
    }

    /// DISABLED nodes no longer desired are removals under way, as DRAINING ones are: they
    /// count against `max_remove`.
    #[test]
    fn disabled_nodes_count_against_max_remove() {
        let policy = Policy {
            max_remove_pct: 30,
            ..Policy::default()
        };
        let mut nodes = enabled(&[3, 4, 5, 6, 7, 8, 9, 10]);
        nodes.extend([node(101, 1, Condition::Disabled), node(102, 2, Condition::Disabled)]);
        // One more: 3 of 10 taken out, allowed.
        let p = run(&desired(&[4, 5, 6, 7, 8, 9, 10]), &nodes, &policy);
        assert!(p.refusals.is_empty(), "{p:?}");
        // Two more: 4 of 10 (not 2 of 8), refused.
        let p = run(&desired(&[5, 6, 7, 8, 9, 10]), &nodes, &policy);
        assert_eq!(
            p.refusals,
            vec![Refusal::TooManyRemovals {
                remove: 4,
                in_service: 10,
                max_pct: 30
            }]
        );
    }

    /// What an operator reads: each step as the daemon logs it, and `lb-sync plan`'s report
    /// with its last line.
    #[test]
    fn steps_and_reports_print_what_the_operator_reads() {
        let (a, b) = (
            NodeRef {
                id: 101,
                endpoint: ep(1),
            },
            NodeRef {
                id: 102,
                endpoint: ep(2),
            },
        );
        let adds = vec![
            NewNode {
                endpoint: ep(3),
                condition: Condition::Enabled,
            },
            NewNode {
                endpoint: ep(4),
                condition: Condition::Draining,
            },
        ];
        let steps = [
            (
                Step::Add(adds.clone()),
                "add 2 node(s): 10.0.0.3:8080 ENABLED, 10.0.0.4:8080 DRAINING",
            ),
            (Step::Enable(a.clone()), "enable node 101 10.0.0.1:8080"),
            (Step::Drain(b.clone()), "drain node 102 10.0.0.2:8080"),
            (
                Step::Delete(vec![a.clone(), b.clone()]),
                "delete 2 node(s): 101 10.0.0.1:8080, 102 10.0.0.2:8080",
            ),
        ];
        for (step, want) in steps {
            assert_eq!(step.to_string(), want);
        }
        let report = |p: &Plan| {
            Report {
                plan: p,
                drain: Duration::from_secs(30),
            }
            .to_string()
        };
        let all = Plan {
            adds,
            enables: vec![a.clone()],
            drains: vec![b.clone()],
            deletes: vec![vec![a.clone()]],
            waiting: vec![
                Wait {
                    node: b.clone(),
                    what: WaitFor::Drain {
                        remaining: Duration::from_secs(9),
                        sessions: None,
                    },
                },
                Wait {
                    node: a.clone(),
                    what: WaitFor::Online,
                },
                Wait {
                    node: b.clone(),
                    what: WaitFor::Settle {
                        remaining: Duration::from_secs(2),
                    },
                },
            ],
            notes: vec![Note::Unmanaged { count: 1 }],
            ..Plan::default()
        };
        assert_eq!(
            report(&all),
            "add     10.0.0.3:8080 ENABLED\n\
             add     10.0.0.4:8080 DRAINING\n\
             enable  node 101 10.0.0.1:8080\n\
             drain   node 102 10.0.0.2:8080 (deleted 30s later)\n\
             delete  node 101 10.0.0.1:8080\n\
             waiting node 102 10.0.0.2:8080 is draining; deleted once its drain period ends\n\
             waiting node 101 10.0.0.1:8080 is enabled once it reports ONLINE\n\
             waiting node 102 10.0.0.2:8080 is missing from the records; drained in 2s (--remove-settle)\n\
             note    1 node(s) not managed by lb-sync are left alone\n"
        );
        // The last line: refused, converged, or waiting with nothing to apply now.
        let waiting = Plan {
            waiting: vec![Wait {
                node: a.clone(),
                what: WaitFor::Online,
            }],
            ..Plan::default()
        };
        let noted = Plan {
            notes: vec![Note::Unmanaged { count: 2 }],
            ..Plan::default()
        };
        let refused = Plan {
            drains: vec![a],
            refusals: vec![Refusal::BelowMinimum { left: 0, min: 1 }],
            ..Plan::default()
        };
        let cases = [
            (Plan::default(), "converged: nothing to do\n"),
            (
                waiting,
                "waiting node 101 10.0.0.1:8080 is enabled once it reports ONLINE\nnothing to apply now\n",
            ),
            (
                noted,
                "note    2 node(s) not managed by lb-sync are left alone\nnothing to apply now\n",
            ),
            (
                refused,
                "drain   node 101 10.0.0.1:8080 (deleted 30s later)\n\
                 REFUSED the plan would leave 0 node(s) in service, fewer than --min-nodes 1\n\
                 nothing above would be applied except adds (and nothing at all on an incomplete view)\n",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(report(&p), want, "{p:?}");
        }
    }

    #[test]
    fn unknown_strings_are_kept_not_errors() {
        assert_eq!(Condition::parse("FROZEN"), Condition::Other("FROZEN".into()));
        assert_eq!(NodeStatus::parse("DEGRADED"), NodeStatus::Other("DEGRADED".into()));
        let mut nodes = enabled(&[1]);
        nodes[0].condition = Condition::Other("FROZEN".into());
        let p = run(&desired(&[1]), &nodes, &Policy::default());
        assert!(
            p.notes
                .iter()
                .any(|n| matches!(n, Note::UnknownCondition { condition, .. } if condition == "FROZEN"))
        );
        // A node whose address is not an IP is never touched.
        let odd = vec![Node {
            id: 9,
            address: "lb-node.example".into(),
            port: 80,
            condition: Condition::Enabled,
            status: NodeStatus::Online,
            sessions: None,
            foreign: false,
        }];
        assert!(run(&desired(&[1]), &odd, &Policy::default()).drains.is_empty());
    }

    #[test]
    fn endpoints_print_like_the_api_writes_them() {
        assert_eq!(ep(4).to_string(), "10.0.0.4:8080");
        let v6 = Endpoint::new("2001:db8::1".parse().unwrap(), 80);
        assert_eq!(v6.to_string(), "[2001:db8::1]:80");
    }
}
