//! `lb-sync plan --output json`: the plan as one JSON object whose shape is a contract
//! (documented in `lb-sync/README.md`, "`plan --output json`"): field names never change
//! within `"version": 1`, codes and reasons are fixed snake-case words a program can match,
//! and every `message` is the line the text output prints, for people only.
//!
//! Pure: it renders what [`crate::plan_once`] read; no I/O.

use serde::Serialize;

use crate::PlanOnce;
use crate::plan::{Endpoint, NewNode, NodeRef, Note, Plan, RefusalReason, Step, WaitFor};

/// The schema's version; bumped only by a change a reader must know about.
pub const VERSION: u32 = 1;

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct PlanJson {
    /// [`VERSION`].
    pub version: u32,
    /// What the load balancer is (`load balancer 1 in ORD`, `HAProxy backend web via ...`).
    pub target: String,
    /// Its status as the API says it (`ACTIVE`, `PENDING_UPDATE`, ...; HAProxy: `ACTIVE`).
    pub status: String,
    /// Nodes on it (HAProxy: every server of the backend).
    pub lb_nodes: usize,
    /// Its node limit; `null` when there is none (HAProxy).
    pub node_limit: Option<usize>,
    /// The records' etcd prefix.
    pub prefix: String,
    /// The etcd revision read.
    pub revision: i64,
    /// Nodes the records ask for.
    pub desired_nodes: usize,
    /// `--drain`: how long a drained node stays before it is deleted.
    pub drain_seconds: f64,
    /// Nothing to do now or later.
    pub converged: bool,
    /// `--force` lifted a refusal.
    pub forced: bool,
    /// Every change, in the order `run` applies them.
    pub steps: Vec<StepJson>,
    /// Nodes waited on.
    pub waiting: Vec<WaitJson>,
    /// Things left alone on purpose.
    pub notes: Vec<NoteJson>,
    /// Why the plan must not be applied (removals held; everything on `incomplete_view`).
    pub refusals: Vec<RefusalJson>,
}

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Add nodes (one POST, or `add server` commands).
    Add,
    /// Put a node back in service.
    Enable,
    /// Take a node out of service, gently.
    Drain,
    /// Delete drained nodes.
    Delete,
}

/// One change.
#[derive(Debug, Serialize)]
pub struct StepJson {
    /// What it does.
    pub action: Action,
    /// Whether `run` would apply it now: false for removals a refusal holds.
    pub allowed: bool,
    /// The nodes it changes.
    pub nodes: Vec<NodeJson>,
}

/// A node of a step or a wait.
#[derive(Debug, Serialize)]
pub struct NodeJson {
    /// The API's id; absent for a node still to be added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Its IP address.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// The condition it is added in (adds only: `ENABLED`, or `DRAINING` with `--add-draining`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// What a node is waited on for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// Its drain period (or its last session).
    Drain,
    /// Its first passing health check (`--add-draining`).
    Online,
    /// `--remove-settle`.
    Settle,
}

/// A node waited on.
#[derive(Debug, Serialize)]
pub struct WaitJson {
    /// What for.
    #[serde(rename = "for")]
    pub what: WaitKind,
    /// The node.
    pub node: NodeJson,
    /// Time left, when known.
    pub remaining_seconds: Option<f64>,
    /// Sessions it still serves, when the API reports them.
    pub sessions: Option<u64>,
}

/// A note's stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteCode {
    /// [`Note::NodeLimit`].
    NodeLimit,
    /// [`Note::Unmanaged`].
    Unmanaged,
    /// [`Note::UnknownCondition`].
    UnknownCondition,
    /// [`Note::RemovalsHeld`].
    RemovalsHeld,
    /// [`Note::HeldEndpoint`].
    HeldEndpoint,
    /// [`Note::HeldAddress`].
    HeldAddress,
    /// [`Note::Forced`].
    Forced,
}

impl NoteCode {
    /// The code of a note.
    #[must_use]
    pub fn of(note: &Note) -> NoteCode {
        match note {
            Note::NodeLimit { .. } => NoteCode::NodeLimit,
            Note::Unmanaged { .. } => NoteCode::Unmanaged,
            Note::UnknownCondition { .. } => NoteCode::UnknownCondition,
            Note::RemovalsHeld { .. } => NoteCode::RemovalsHeld,
            Note::HeldEndpoint { .. } => NoteCode::HeldEndpoint,
            Note::HeldAddress { .. } => NoteCode::HeldAddress,
            Note::Forced(_) => NoteCode::Forced,
        }
    }
}

/// A note.
#[derive(Debug, Serialize)]
pub struct NoteJson {
    /// Its code.
    pub code: NoteCode,
    /// The line `plan` prints.
    pub message: String,
}

/// A refusal.
#[derive(Debug, Serialize)]
pub struct RefusalJson {
    /// Its reason: the `reason` label of `lb_sync_refusals_total`.
    pub reason: RefusalReason,
    /// The line `plan` prints.
    pub message: String,
}

fn existing(n: &NodeRef) -> NodeJson {
    NodeJson {
        id: Some(n.id),
        ..endpoint(&n.endpoint)
    }
}

fn new_node(n: &NewNode) -> NodeJson {
    NodeJson {
        condition: Some(n.condition.as_str().to_owned()),
        ..endpoint(&n.endpoint)
    }
}

fn endpoint(e: &Endpoint) -> NodeJson {
    NodeJson {
        id: None,
        address: e.address.to_string(),
        port: e.port,
        condition: None,
    }
}

fn step(s: &Step, allowed: bool) -> StepJson {
    let (action, nodes) = match s {
        Step::Add(n) => (Action::Add, n.iter().map(new_node).collect()),
        Step::Enable(n) => (Action::Enable, vec![existing(n)]),
        Step::Drain(n) => (Action::Drain, vec![existing(n)]),
        Step::Delete(n) => (Action::Delete, n.iter().map(existing).collect()),
    };
    StepJson { action, allowed, nodes }
}

/// The steps of `plan` with whether each may go now.
#[must_use]
pub fn steps(plan: &Plan) -> Vec<StepJson> {
    let allowed = plan.allowed_steps();
    plan.steps().iter().map(|s| step(s, allowed.contains(s))).collect()
}

/// The JSON form of what `plan` read and planned.
#[must_use]
pub fn of(once: &PlanOnce<'_>) -> PlanJson {
    let plan = once.report.plan;
    PlanJson {
        version: VERSION,
        target: once.target.clone(),
        status: once.status.as_str().to_owned(),
        lb_nodes: once.nodes,
        node_limit: (once.node_limit != usize::MAX).then_some(once.node_limit),
        prefix: once.prefix.to_owned(),
        revision: once.revision,
        desired_nodes: once.desired,
        drain_seconds: once.report.drain.as_secs_f64(),
        converged: plan.is_converged(),
        forced: plan.forced,
        steps: steps(plan),
        waiting: plan
            .waiting
            .iter()
            .map(|w| {
                let (what, remaining, sessions) = match &w.what {
                    WaitFor::Drain { remaining, sessions } => (WaitKind::Drain, Some(*remaining), *sessions),
                    WaitFor::Online => (WaitKind::Online, None, None),
                    WaitFor::Settle { remaining } => (WaitKind::Settle, Some(*remaining), None),
                };
                WaitJson {
                    what,
                    node: existing(&w.node),
                    remaining_seconds: remaining.map(|d| d.as_secs_f64()),
                    sessions,
                }
            })
            .collect(),
        notes: plan
            .notes
            .iter()
            .map(|n| NoteJson {
                code: NoteCode::of(n),
                message: n.to_string(),
            })
            .collect(),
        refusals: plan
            .refusals
            .iter()
            .map(|r| RefusalJson {
                reason: r.reason(),
                message: r.to_string(),
            })
            .collect(),
    }
}

/// The JSON text `plan --output json` prints (pretty, one object, a final newline).
#[must_use]
pub fn render(once: &PlanOnce<'_>) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string_pretty(&of(once)).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::clb::LbStatus;
    use crate::plan::{Condition, Refusal, Report, Wait};

    fn ep(n: u8) -> Endpoint {
        Endpoint::new([10, 0, 0, n].into(), 8080)
    }

    fn node(id: u64, n: u8) -> NodeRef {
        NodeRef { id, endpoint: ep(n) }
    }

    fn render_plan(plan: &Plan, status: &LbStatus, node_limit: usize) -> serde_json::Value {
        let once = PlanOnce {
            target: "load balancer 1 in ORD".into(),
            status,
            nodes: 3,
            node_limit,
            prefix: "/services/web",
            revision: 27,
            desired: 2,
            report: Report {
                plan,
                drain: Duration::from_secs(30),
            },
        };
        serde_json::from_str(&render(&once)).unwrap()
    }

    /// The README's scenario: web04 appears, web01 and web02 go; the drains are refused.
    #[test]
    fn a_refused_plan_shows_what_would_go_and_what_is_held() {
        let plan = Plan {
            adds: vec![NewNode {
                endpoint: ep(4),
                condition: Condition::Enabled,
            }],
            drains: vec![node(100, 1), node(101, 2)],
            refusals: vec![Refusal::TooManyRemovals {
                remove: 2,
                in_service: 3,
                max_pct: 50,
            }],
            ..Plan::default()
        };
        let got = render_plan(&plan, &LbStatus::Active, 25);
        let want = json!({
            "version": 1,
            "target": "load balancer 1 in ORD",
            "status": "ACTIVE",
            "lb_nodes": 3,
            "node_limit": 25,
            "prefix": "/services/web",
            "revision": 27,
            "desired_nodes": 2,
            "drain_seconds": 30.0,
            "converged": false,
            "forced": false,
            "steps": [
                {"action": "add", "allowed": true, "nodes": [{"address": "10.0.0.4", "port": 8080, "condition": "ENABLED"}]},
                {"action": "drain", "allowed": false, "nodes": [{"id": 100, "address": "10.0.0.1", "port": 8080}]},
                {"action": "drain", "allowed": false, "nodes": [{"id": 101, "address": "10.0.0.2", "port": 8080}]},
            ],
            "waiting": [],
            "notes": [],
            "refusals": [{
                "reason": "max_remove",
                "message": "the plan would take 2 of 3 nodes out of service, more than --max-remove 50%",
            }],
        });
        assert_eq!(got, want, "{got:#}");
    }

    #[test]
    fn waits_notes_deletes_and_no_limit() {
        let plan = Plan {
            deletes: vec![vec![node(7, 7), node(8, 8)]],
            waiting: vec![
                Wait {
                    node: node(9, 9),
                    what: WaitFor::Drain {
                        remaining: Duration::from_millis(1500),
                        sessions: Some(2),
                    },
                },
                Wait {
                    node: node(10, 10),
                    what: WaitFor::Online,
                },
                Wait {
                    node: node(11, 11),
                    what: WaitFor::Settle {
                        remaining: Duration::from_secs(4),
                    },
                },
            ],
            notes: vec![Note::Unmanaged { count: 1 }],
            ..Plan::default()
        };
        let got = render_plan(&plan, &LbStatus::PendingUpdate, usize::MAX);
        assert_eq!(got["node_limit"], serde_json::Value::Null);
        assert_eq!(got["status"], "PENDING_UPDATE");
        assert_eq!(
            got["steps"],
            json!([{"action": "delete", "allowed": true, "nodes": [
                {"id": 7, "address": "10.0.0.7", "port": 8080},
                {"id": 8, "address": "10.0.0.8", "port": 8080},
            ]}])
        );
        assert_eq!(
            got["waiting"],
            json!([
                {"for": "drain", "node": {"id": 9, "address": "10.0.0.9", "port": 8080}, "remaining_seconds": 1.5, "sessions": 2},
                {"for": "online", "node": {"id": 10, "address": "10.0.0.10", "port": 8080}, "remaining_seconds": null, "sessions": null},
                {"for": "settle", "node": {"id": 11, "address": "10.0.0.11", "port": 8080}, "remaining_seconds": 4.0, "sessions": null},
            ])
        );
        assert_eq!(
            got["notes"],
            json!([{"code": "unmanaged", "message": "1 node(s) not managed by lb-sync are left alone"}])
        );
        assert_eq!(got["converged"], false);
    }

    #[test]
    fn note_codes_are_fixed_words() {
        let cases = [
            (
                Note::NodeLimit {
                    limit: 25,
                    left_out: vec![],
                },
                "node_limit",
            ),
            (Note::Unmanaged { count: 1 }, "unmanaged"),
            (
                Note::UnknownCondition {
                    node: node(1, 1),
                    condition: "X".into(),
                },
                "unknown_condition",
            ),
            (Note::RemovalsHeld { unknown: vec![] }, "removals_held"),
            (
                Note::HeldEndpoint {
                    instance: "web01".into(),
                    endpoint: ep(1),
                },
                "held_endpoint",
            ),
            (
                Note::HeldAddress {
                    instance: "web01".into(),
                    address: ep(1).address,
                },
                "held_address",
            ),
            (Note::Forced(Refusal::Incomplete), "forced"),
        ];
        for (note, want) in cases {
            assert_eq!(serde_json::to_value(NoteCode::of(&note)).unwrap(), want, "{note}");
        }
    }
}
