//! The simulator's model: tokens, load balancers, nodes, rate-limit windows, the request
//! log, and the answer to each request. No I/O: `http.rs` feeds requests in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::{Call, SimConfig};

/// The four rate-limited verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    fn parse(method: &str) -> Option<Verb> {
        match method {
            "GET" => Some(Verb::Get),
            "POST" => Some(Verb::Post),
            "PUT" => Some(Verb::Put),
            "DELETE" => Some(Verb::Delete),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }
}

/// One node of a load balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The integer id the API gave it.
    pub id: u64,
    /// Its IP address as sent.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// `ENABLED`, `DISABLED` or `DRAINING`.
    pub condition: String,
    /// `ONLINE` or `OFFLINE`.
    pub status: String,
    /// 1-100 when set.
    pub weight: Option<u64>,
    /// `PRIMARY` or `SECONDARY`.
    pub node_type: String,
}

impl Node {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "address": self.address,
            "port": self.port,
            "condition": self.condition,
            "status": self.status,
            "type": self.node_type,
        });
        if let Some(w) = self.weight {
            v["weight"] = json!(w);
        }
        v
    }
}

/// One load balancer.
#[derive(Debug)]
pub(crate) struct Lb {
    id: u64,
    region: String,
    /// The status it was put in; `PENDING_UPDATE` with `pending_until` turns `ACTIVE` by itself.
    status: String,
    pending_until: Option<Instant>,
    pub(crate) nodes: BTreeMap<u64, Node>,
    created: SystemTime,
    updated: SystemTime,
}

impl Lb {
    /// The status now; a finished `PENDING_UPDATE` becomes `ACTIVE`.
    pub(crate) fn status(&mut self, now: Instant) -> &str {
        if let Some(until) = self.pending_until
            && now >= until
        {
            self.pending_until = None;
            self.status = "ACTIVE".into();
        }
        &self.status
    }

    fn start_pending(&mut self, now: Instant, pending: Duration) {
        self.updated = SystemTime::now();
        if pending.is_zero() {
            return;
        }
        self.status = "PENDING_UPDATE".into();
        self.pending_until = Some(now + pending);
    }

    fn deleted(&self) -> bool {
        self.status == "DELETED"
    }
}

/// An answer: status, extra headers, optional JSON body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Option<Value>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    fn message(status: u16, message: &str) -> Reply {
        Reply::json(status, json!({"message": message, "code": status}))
    }

    fn validation(messages: &[String]) -> Reply {
        Reply::json(
            400,
            json!({
                "validationErrors": {"messages": messages},
                "message": "Validation Failure",
                "code": 400,
                "details": "The object is not valid",
            }),
        )
    }

    /// The API's answer to a body that is not JSON or not of the expected shape (its
    /// `message` is a list).
    fn schema() -> Reply {
        Reply::json(
            400,
            json!({"message": ["JSON does not match the expected schema"], "code": 400}),
        )
    }

    /// The API's 404 for a node id the load balancer does not have.
    fn node_not_found(lb: u64, nid: &str) -> Reply {
        Reply::message(404, &format!("Node with id #{nid} not found for loadbalancer #{lb}"))
    }

    fn immutable(lb: u64, status: &str) -> Reply {
        Reply::message(
            422,
            &format!("Load Balancer '{lb}' has a status of '{status}' and is considered immutable."),
        )
    }
}

/// The whole simulated world.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: SimConfig,
    base: String,
    /// Token -> expiry.
    pub(crate) tokens: HashMap<String, SystemTime>,
    pub(crate) user_disabled: bool,
    pub(crate) lbs: BTreeMap<u64, Lb>,
    next_node_id: u64,
    pub(crate) log: Vec<Call>,
    /// Accepted requests per verb within the last minute.
    windows: HashMap<Verb, VecDeque<Instant>>,
    /// The `Retry-After` last announced per verb.
    retry_after: HashMap<Verb, SystemTime>,
    pub(crate) inject_5xx: u32,
    pub(crate) inject_immutable: u32,
    /// The next this many load balancer `GET`s answer an oversized body of this kind.
    pub(crate) oversized: (u32, super::Oversized),
    /// How many oversized answers were started.
    pub(crate) oversized_served: u32,
    pub(crate) delay: Duration,
}

impl State {
    pub(crate) fn new(config: SimConfig, base: String) -> State {
        let now = SystemTime::now();
        let lbs = config
            .load_balancers
            .iter()
            .map(|(id, region)| {
                (
                    *id,
                    Lb {
                        id: *id,
                        region: region.clone(),
                        status: "ACTIVE".into(),
                        pending_until: None,
                        nodes: BTreeMap::new(),
                        created: now,
                        updated: now,
                    },
                )
            })
            .collect();
        State {
            config,
            base,
            tokens: HashMap::new(),
            user_disabled: false,
            lbs,
            next_node_id: 100,
            log: Vec::new(),
            windows: HashMap::new(),
            retry_after: HashMap::new(),
            inject_5xx: 0,
            inject_immutable: 0,
            oversized: (0, super::Oversized::Endless),
            oversized_served: 0,
            delay: Duration::ZERO,
        }
    }

    /// One oversized answer to serve now, if any is injected.
    pub(crate) fn take_oversized(&mut self) -> Option<super::Oversized> {
        let (n, kind) = self.oversized;
        if n == 0 {
            return None;
        }
        self.oversized.0 -= 1;
        self.oversized_served += 1;
        Some(kind)
    }

    pub(crate) fn nodes(&self, lb: u64) -> Vec<Node> {
        self.lbs
            .get(&lb)
            .map(|l| l.nodes.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn set_status(&mut self, lb: u64, status: &str, until: Option<Instant>) {
        if let Some(l) = self.lbs.get_mut(&lb) {
            l.status = status.to_owned();
            l.pending_until = until;
        }
    }

    pub(crate) fn add_node_direct(&mut self, lb: u64, address: &str, port: u16, condition: &str) -> u64 {
        let id = self.next_node_id;
        self.next_node_id += 1;
        let status = self.config.new_node_status.clone();
        if let Some(l) = self.lbs.get_mut(&lb) {
            l.nodes.insert(
                id,
                Node {
                    id,
                    address: address.to_owned(),
                    port,
                    condition: condition.to_owned(),
                    status,
                    weight: None,
                    node_type: "PRIMARY".into(),
                },
            );
        }
        id
    }

    /// Answers one request and records it in the log.
    pub(crate) fn handle(&mut self, method: &str, path: &str, query: &str, token: Option<&str>, body: &[u8]) -> Reply {
        let now = Instant::now();
        let wall = SystemTime::now();
        let identity = path.starts_with("/v2.0");
        let verb = Verb::parse(method);
        let during_retry_after = verb
            .and_then(|v| self.retry_after.get(&v))
            .is_some_and(|until| wall < *until);
        let reply = if identity {
            self.identity(method, path, body, wall)
        } else {
            self.clb(verb, path, query, token, body, now, wall)
        };
        let full_path = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        self.log.push(Call {
            at: wall,
            method: method.to_owned(),
            path: full_path,
            status: reply.status,
            identity,
            during_retry_after: during_retry_after && !identity,
        });
        reply
    }

    fn identity(&mut self, method: &str, path: &str, body: &[u8], wall: SystemTime) -> Reply {
        if path.trim_end_matches('/') != "/v2.0/tokens" {
            return Reply::json(
                404,
                json!({"itemNotFound": {"code": 404, "message": "Resource not found"}}),
            );
        }
        if method != "POST" {
            return Reply::json(
                405,
                json!({"badMethod": {"code": 405, "message": "Method not allowed"}}),
            );
        }
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return Reply::json(
                400,
                json!({"badRequest": {"code": 400, "message": "Invalid json request body"}}),
            );
        };
        let creds = &doc["auth"]["RAX-KSKEY:apiKeyCredentials"];
        let (Some(user), Some(key)) = (creds["username"].as_str(), creds["apiKey"].as_str()) else {
            return Reply::json(
                400,
                json!({"badRequest": {"code": 400, "message": "Invalid request body: unable to parse Auth data. Please review XML or JSON formatting."}}),
            );
        };
        if user != self.config.username || key != self.config.api_key {
            return Reply::json(
                401,
                json!({"unauthorized": {"code": 401, "message": "Unable to authenticate user with credentials provided."}}),
            );
        }
        if self.user_disabled {
            return Reply::json(
                403,
                json!({"forbidden": {"code": 403, "message": format!("User '{user}' is disabled.")}}),
            );
        }
        let token = format!("{:032x}", rand::random::<u128>());
        let expires = wall + self.config.token_lifetime;
        self.tokens.insert(token.clone(), expires);
        let tenant = self.config.tenant.clone();
        let lb_endpoints: Vec<Value> = self
            .config
            .regions
            .iter()
            .map(|r| {
                json!({
                    "region": r,
                    "tenantId": tenant,
                    "publicURL": format!("{}/v1.0/{tenant}", self.base),
                })
            })
            .collect();
        let compute: Vec<Value> = self
            .config
            .regions
            .iter()
            .map(|r| json!({"region": r, "tenantId": tenant, "publicURL": format!("{}/compute/v2/{tenant}", self.base), "versionInfo": "https://example.invalid/v2", "versionId": "2"}))
            .collect();
        Reply::json(
            200,
            json!({
                "access": {
                    "token": {
                        "id": token,
                        // Identity writes expiries in its own zone, with the offset (US Central).
                        "expires": central_time(expires),
                        "tenant": {"id": tenant, "name": tenant},
                        "RAX-AUTH:authenticatedBy": ["APIKEY"],
                    },
                    "serviceCatalog": [
                        {"name": "cloudServersOpenStack", "type": "compute", "endpoints": compute},
                        {"name": "cloudLoadBalancers", "type": "rax:load-balancer", "endpoints": lb_endpoints},
                        {"name": "cloudFiles", "type": "object-store", "endpoints": [{"region": "ORD", "tenantId": "MossoCloudFS_x", "publicURL": "https://storage.example.invalid/v1/MossoCloudFS_x", "internalURL": "https://snet-storage.example.invalid/v1/MossoCloudFS_x"}]},
                    ],
                    "user": {
                        "id": "10040001",
                        "name": user,
                        "RAX-AUTH:defaultRegion": self.config.regions.first().cloned().unwrap_or_default(),
                        "roles": [{"id": "3", "name": "identity:user-admin", "description": "User Admin Role."}],
                    },
                }
            }),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn clb(
        &mut self,
        verb: Option<Verb>,
        path: &str,
        query: &str,
        token: Option<&str>,
        body: &[u8],
        now: Instant,
        wall: SystemTime,
    ) -> Reply {
        if self.inject_5xx > 0 {
            self.inject_5xx -= 1;
            return Reply::message(500, "Internal Server Error (injected by the simulator)");
        }
        // Authentication comes first: an unknown, expired or revoked token is a bare 401.
        let authed = token
            .and_then(|t| self.tokens.get(t))
            .is_some_and(|expires| wall < *expires);
        if !authed {
            return Reply::empty(401);
        }
        let Some(rest) = path.strip_prefix("/v1.0/") else {
            return Reply::message(404, "Resource not found");
        };
        let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if segs.first() != Some(&self.config.tenant.as_str()) {
            return Reply::empty(401);
        }
        let Some(verb) = verb else {
            return Reply::message(405, "Method not allowed");
        };
        if let Some(limited) = self.rate_limit(verb, now, wall) {
            return limited;
        }
        let route: Vec<&str> = segs[1..].to_vec();
        match (verb, route.as_slice()) {
            (Verb::Get, ["limits"]) => self.limits(now),
            (Verb::Get, ["loadbalancers"]) => self.list_lbs(now),
            (Verb::Get, ["loadbalancers", "absolutelimits"]) => self.absolute_limits(),
            (_, ["loadbalancers", id, rest @ ..]) => {
                let Ok(id) = id.parse::<u64>() else {
                    return Reply::message(404, "Load balancer not found");
                };
                // POST nodes checks its body before the load balancer (the API's order).
                let post_nodes = matches!((verb, rest), (Verb::Post, ["nodes"]));
                if !post_nodes && !self.lbs.contains_key(&id) {
                    return Reply::message(404, "Load balancer not found");
                }
                match (verb, rest) {
                    (Verb::Get, []) => self.get_lb(id, now),
                    (_, []) => Reply::message(405, "Method not allowed"),
                    (_, ["nodes", more @ ..]) => {
                        if self.lbs.get(&id).is_some_and(Lb::deleted) {
                            return Reply::message(410, "The loadbalancer is marked as deleted.");
                        }
                        match (verb, more) {
                            (Verb::Get, []) => self.list_nodes(id, query),
                            (Verb::Post, []) => self.add_nodes(id, body, now),
                            (Verb::Delete, []) => self.bulk_delete(id, query, now),
                            (Verb::Get, [nid]) => self.get_node(id, nid),
                            (Verb::Put, [nid]) => self.put_node(id, nid, body, now),
                            (Verb::Delete, [nid]) => self.delete_node(id, nid, now),
                            _ => Reply::message(405, "Method not allowed"),
                        }
                    }
                    _ => Reply::message(404, "Resource not found"),
                }
            }
            _ => Reply::message(404, "Resource not found"),
        }
    }

    /// Sliding one-second and one-minute windows per verb; over either: the `overLimit` 413.
    fn rate_limit(&mut self, verb: Verb, now: Instant, wall: SystemTime) -> Option<Reply> {
        let limit = self.config.rate_limits.of(verb);
        let window = self.windows.entry(verb).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        let in_second: Vec<Instant> = window
            .iter()
            .copied()
            .filter(|t| now.duration_since(*t) < Duration::from_secs(1))
            .collect();
        let mut free_at: Option<Instant> = None;
        if in_second.len() >= limit.per_second as usize {
            let idx = in_second.len() - limit.per_second as usize;
            free_at = Some(in_second[idx] + Duration::from_secs(1));
        }
        if window.len() >= limit.per_minute as usize {
            let idx = window.len() - limit.per_minute as usize;
            let t = window[idx] + Duration::from_secs(60);
            free_at = Some(free_at.map_or(t, |f| f.max(t)));
        }
        match free_at {
            None => {
                window.push_back(now);
                None
            }
            Some(free_at) => {
                // Retry-After is an HTTP date, whole seconds: round up so it is never early.
                let exact = wall + free_at.saturating_duration_since(now);
                let secs = exact
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
                    .unwrap_or(0);
                let until = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
                let prev = self.retry_after.entry(verb).or_insert(until);
                *prev = (*prev).max(until);
                let mut reply = Reply::json(
                    413,
                    json!({
                        "overLimit": {
                            "code": 413,
                            "message": "OverLimit Retry...",
                            "details": format!("Error Details... {} limit {}/s {}/min", verb.name(), limit.per_second, limit.per_minute),
                            "retryAfter": humantime::format_rfc3339_seconds(until).to_string(),
                        }
                    }),
                );
                reply.headers.push(("retry-after", httpdate::fmt_http_date(until)));
                Some(reply)
            }
        }
    }

    fn limits(&mut self, now: Instant) -> Reply {
        let mut rates = Vec::new();
        for verb in [Verb::Get, Verb::Post, Verb::Put, Verb::Delete] {
            let limit = self.config.rate_limits.of(verb);
            let window = self.windows.get(&verb).cloned().unwrap_or_default();
            let last_second = window
                .iter()
                .filter(|t| now.duration_since(**t) < Duration::from_secs(1))
                .count();
            let last_minute = window
                .iter()
                .filter(|t| now.duration_since(**t) < Duration::from_secs(60))
                .count();
            rates.push(json!({"verb": verb.name(), "value": limit.per_second, "remaining": (limit.per_second as usize).saturating_sub(last_second), "unit": "SECOND"}));
            rates.push(json!({"verb": verb.name(), "value": limit.per_minute, "remaining": (limit.per_minute as usize).saturating_sub(last_minute), "unit": "MINUTE"}));
        }
        Reply::json(
            200,
            json!({
                "limits": {
                    "rate": [{"uri": "/loadbalancers*", "regex": "/loadbalancers", "limit": rates}],
                    "absolute": self.absolute_values(),
                }
            }),
        )
    }

    fn absolute_values(&self) -> Value {
        json!({
            "NODE_LIMIT": self.config.node_limit,
            "BATCH_DELETE_LIMIT": self.config.batch_delete_limit,
            "LOADBALANCER_LIMIT": 25,
            "IPV6_LIMIT": 25,
            "ACCESS_LIST_LIMIT": 100,
            "NODE_META_LIMIT": 25,
            "LOADBALANCER_META_LIMIT": 25,
            "CERTIFICATE_MAPPING_LIMIT": 20,
        })
    }

    fn absolute_limits(&self) -> Reply {
        let absolute: Vec<Value> = self
            .absolute_values()
            .as_object()
            .map(|o| o.iter().map(|(k, v)| json!({"name": k, "value": v})).collect())
            .unwrap_or_default();
        Reply::json(200, json!({"absolute": absolute}))
    }

    fn lb_json(&mut self, id: u64, now: Instant, with_nodes: bool) -> Value {
        let Some(lb) = self.lbs.get_mut(&id) else {
            return Value::Null;
        };
        let status = lb.status(now).to_owned();
        let mut v = json!({
            "id": lb.id,
            "name": format!("lb-{}", lb.id),
            "protocol": "HTTP",
            "port": 80,
            "algorithm": "ROUND_ROBIN",
            "status": status,
            "timeout": 30,
            "nodeCount": lb.nodes.len(),
            "virtualIps": [{"address": "198.51.100.10", "id": 1000 + lb.id, "type": "PUBLIC", "ipVersion": "IPV4"}],
            "cluster": {"name": format!("ztm-n01.{}1.lbaas.example.invalid", lb.region.to_lowercase())},
            "created": {"time": humantime::format_rfc3339_seconds(lb.created).to_string()},
            "updated": {"time": humantime::format_rfc3339_seconds(lb.updated).to_string()},
            "connectionLogging": {"enabled": false},
            "sourceAddresses": {"ipv4Servicenet": "10.0.0.1", "ipv4Public": "203.0.113.1"},
        });
        // The real API leaves `nodes` out entirely when the load balancer has none.
        if with_nodes && !lb.nodes.is_empty() {
            v["nodes"] = Value::Array(lb.nodes.values().map(Node::to_json).collect());
        }
        v
    }

    fn get_lb(&mut self, id: u64, now: Instant) -> Reply {
        Reply::json(200, json!({"loadBalancer": self.lb_json(id, now, true)}))
    }

    fn list_lbs(&mut self, now: Instant) -> Reply {
        let ids: Vec<u64> = self.lbs.keys().copied().collect();
        let list: Vec<Value> = ids.into_iter().map(|id| self.lb_json(id, now, false)).collect();
        Reply::json(200, json!({"loadBalancers": list}))
    }

    fn list_nodes(&mut self, id: u64, query: &str) -> Reply {
        let params = parse_query(query);
        let page = self.config.page_limit;
        let limit = params
            .iter()
            .find(|(k, _)| k == "limit")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .map_or(page, |l| l.clamp(1, page));
        let marker = params
            .iter()
            .find(|(k, _)| k == "marker")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        let Some(lb) = self.lbs.get(&id) else {
            return Reply::message(404, "Load balancer not found");
        };
        let after: Vec<&Node> = lb.nodes.values().filter(|n| marker.is_none_or(|m| n.id > m)).collect();
        let shown: Vec<Value> = after.iter().take(limit).map(|n| n.to_json()).collect();
        let mut body = json!({"nodes": shown});
        if after.len() > limit
            && let Some(last) = after.get(limit - 1)
        {
            body["links"] = json!([{
                "href": format!("{}/v1.0/{}/loadbalancers/{id}/nodes?limit={limit}&marker={}", self.base, self.config.tenant, last.id),
                "rel": "next",
            }]);
        }
        Reply::json(200, body)
    }

    fn get_node(&mut self, id: u64, nid: &str) -> Reply {
        let node = nid
            .parse::<u64>()
            .ok()
            .and_then(|n| self.lbs.get(&id).and_then(|l| l.nodes.get(&n)));
        match node {
            Some(n) => Reply::json(200, json!({"node": n.to_json()})),
            None => Reply::message(404, "Node not found"),
        }
    }

    /// Whether a change may go ahead; the 422 to answer otherwise.
    fn check_mutable(&mut self, id: u64, now: Instant, bulk: bool) -> Option<Reply> {
        let pending = self.config.pending_time;
        let injected = self.inject_immutable > 0;
        let lb = self.lbs.get_mut(&id)?;
        if injected && lb.status(now) == "ACTIVE" {
            // Another client's change got in first.
            self.inject_immutable -= 1;
            lb.start_pending(now, pending.max(Duration::from_millis(200)));
        }
        let status = lb.status(now).to_owned();
        if status == "ACTIVE" {
            return None;
        }
        if bulk {
            return Some(Reply::message(422, "LoadBalancer is not ACTIVE"));
        }
        Some(Reply::immutable(id, &status))
    }

    /// POST nodes, checked in the API's order: body (400), load balancer (404),
    /// immutable (422), node limit (413), duplicate of an existing node (422).
    fn add_nodes(&mut self, id: u64, body: &[u8], now: Instant) -> Reply {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return Reply::schema();
        };
        let Some(list) = doc.get("nodes") else {
            return Reply::schema();
        };
        let Some(list) = list.as_array() else {
            return Reply::schema();
        };
        if list.is_empty() {
            return Reply::validation(&["Must provide at least one node".into()]);
        }
        if list.iter().any(|n| !n.is_object()) {
            return Reply::schema();
        }
        let mut wanted: Vec<Node> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for n in list {
            let address = n["address"].as_str().unwrap_or_default().to_owned();
            if address.parse::<IpAddr>().is_err() {
                errors.push(format!("Node ip '{address}' is invalid. Please specify a valid ip."));
            }
            let port = n["port"].as_u64().filter(|p| (1..=65535).contains(p));
            if port.is_none() {
                errors.push("Port must be between 1 and 65535.".into());
            }
            let condition = n["condition"].as_str().unwrap_or_default().to_owned();
            if !["ENABLED", "DISABLED", "DRAINING"].contains(&condition.as_str()) {
                errors.push("Node condition is invalid. Must be ENABLED, DISABLED or DRAINING.".into());
            }
            let node_type = n["type"].as_str().unwrap_or("PRIMARY").to_owned();
            if !["PRIMARY", "SECONDARY"].contains(&node_type.as_str()) {
                errors.push("Node type is invalid. Must be PRIMARY or SECONDARY.".into());
            }
            if n.get("status").is_some() {
                errors.push("Node status field cannot be modified.".into());
            }
            if n.get("id").is_some() {
                errors.push("Node id field cannot be modified.".into());
            }
            // The API stores and answers weight 1 when none is given.
            let weight = match &n["weight"] {
                Value::Null => Some(1),
                w => match w.as_u64().filter(|w| (1..=100).contains(w)) {
                    Some(w) => Some(w),
                    None => {
                        errors.push("Node weight is invalid. Range is 1-100. Please specify a valid weight.".into());
                        None
                    }
                },
            };
            wanted.push(Node {
                id: 0,
                address,
                port: port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
                condition,
                status: self.config.new_node_status.clone(),
                weight,
                node_type,
            });
        }
        let mut in_request: Vec<(String, u16)> = Vec::new();
        for n in &wanted {
            let key = (normal_ip(&n.address), n.port);
            if in_request.contains(&key) {
                errors.push(
                    "Duplicate nodes detected. Please ensure that the ip address and port are unique for each node."
                        .into(),
                );
                break;
            }
            in_request.push(key);
        }
        if !errors.is_empty() {
            return Reply::validation(&errors);
        }
        if !self.lbs.contains_key(&id) {
            return Reply::message(404, "Load balancer not found");
        }
        if let Some(r) = self.check_mutable(id, now, false) {
            return r;
        }
        let node_limit = self.config.node_limit;
        let pending = self.config.pending_time;
        let Some(lb) = self.lbs.get_mut(&id) else {
            return Reply::message(404, "Load balancer not found");
        };
        if lb.nodes.len() + wanted.len() > node_limit {
            return Reply::message(413, &format!("Nodes must not exceed {node_limit} per load balancer."));
        }
        let existing: Vec<(String, u16)> = lb.nodes.values().map(|n| (normal_ip(&n.address), n.port)).collect();
        if in_request.iter().any(|k| existing.contains(k)) {
            return Reply::message(
                422,
                "Duplicate nodes detected. One or more nodes already configured on load balancer.",
            );
        }
        let mut created = Vec::new();
        for mut n in wanted {
            n.id = self.next_node_id;
            self.next_node_id += 1;
            created.push(n.to_json());
            lb.nodes.insert(n.id, n);
        }
        lb.start_pending(now, pending);
        Reply::json(202, json!({"nodes": created}))
    }

    /// PUT a node: body (400), load balancer (404), node (404), immutable (422).
    fn put_node(&mut self, id: u64, nid: &str, body: &[u8], now: Instant) -> Reply {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return Reply::schema();
        };
        let Some(node) = doc.get("node").and_then(Value::as_object) else {
            return Reply::schema();
        };
        let mut errors = Vec::new();
        if node.contains_key("address") {
            errors.push("Node ip field cannot be modified.".to_owned());
        }
        if node.contains_key("port") {
            errors.push("Port field cannot be modified.".to_owned());
        }
        if node.contains_key("id") {
            errors.push("Node id field cannot be modified.".to_owned());
        }
        if node.contains_key("status") {
            errors.push("Node status field cannot be modified.".to_owned());
        }
        let condition = node.get("condition").map(|c| c.as_str().unwrap_or_default().to_owned());
        if let Some(c) = &condition
            && !["ENABLED", "DISABLED", "DRAINING"].contains(&c.as_str())
        {
            errors.push("Node condition is invalid. Must be ENABLED, DISABLED or DRAINING.".into());
        }
        let node_type = node.get("type").map(|t| t.as_str().unwrap_or_default().to_owned());
        if let Some(t) = &node_type
            && !["PRIMARY", "SECONDARY"].contains(&t.as_str())
        {
            errors.push("Node type is invalid. Must be PRIMARY or SECONDARY.".into());
        }
        let weight = node.get("weight").map(|w| w.as_u64().filter(|w| (1..=100).contains(w)));
        if let Some(None) = weight {
            errors.push("Node weight is invalid. Range is 1-100. Please specify a valid weight.".into());
        }
        if errors.is_empty() && condition.is_none() && node_type.is_none() && weight.is_none() {
            errors.push("The node must have at least one of the following to update: condition, weight, type.".into());
        }
        if !errors.is_empty() {
            return Reply::validation(&errors);
        }
        if let Some(r) = self.node_missing(id, nid) {
            return r;
        }
        if let Some(r) = self.check_mutable(id, now, false) {
            return r;
        }
        let pending = self.config.pending_time;
        let Some(lb) = self.lbs.get_mut(&id) else {
            return Reply::message(404, "Load balancer not found");
        };
        let Some(n) = nid.parse::<u64>().ok().and_then(|n| lb.nodes.get_mut(&n)) else {
            return Reply::node_not_found(id, nid);
        };
        if let Some(c) = condition {
            n.condition = c;
        }
        if let Some(t) = node_type {
            n.node_type = t;
        }
        if let Some(Some(w)) = weight {
            n.weight = Some(w);
        }
        lb.start_pending(now, pending);
        Reply::empty(202)
    }

    /// The 404 of a missing load balancer or node, checked before the immutable 422.
    fn node_missing(&self, id: u64, nid: &str) -> Option<Reply> {
        let Some(lb) = self.lbs.get(&id) else {
            return Some(Reply::message(404, "Load balancer not found"));
        };
        let found = nid.parse::<u64>().ok().is_some_and(|n| lb.nodes.contains_key(&n));
        (!found).then(|| Reply::node_not_found(id, nid))
    }

    /// DELETE a node: load balancer (404), node (404), immutable (422).
    fn delete_node(&mut self, id: u64, nid: &str, now: Instant) -> Reply {
        if let Some(r) = self.node_missing(id, nid) {
            return r;
        }
        if let Some(r) = self.check_mutable(id, now, false) {
            return r;
        }
        let pending = self.config.pending_time;
        let Some(lb) = self.lbs.get_mut(&id) else {
            return Reply::message(404, "Load balancer not found");
        };
        match nid.parse::<u64>().ok().and_then(|n| lb.nodes.remove(&n)) {
            Some(_) => {
                lb.start_pending(now, pending);
                Reply::empty(202)
            }
            None => Reply::node_not_found(id, nid),
        }
    }

    /// Bulk DELETE: no id (400), not ACTIVE (422), then one 400 listing every problem:
    /// over the batch limit (counting only ids of this load balancer) and unknown ids.
    fn bulk_delete(&mut self, id: u64, query: &str, now: Instant) -> Reply {
        let raw: Vec<String> = parse_query(query)
            .into_iter()
            .filter(|(k, _)| k == "id")
            .map(|(_, v)| v)
            .collect();
        if raw.is_empty() {
            return Reply::message(400, "Must supply one or more id's to process this request.");
        }
        let mut ids = Vec::new();
        for r in &raw {
            match r.parse::<u64>() {
                Ok(i) => ids.push(i),
                Err(_) => return Reply::validation(&[format!("Node id '{r}' is not a number")]),
            }
        }
        let limit = self.config.batch_delete_limit;
        if !self.lbs.contains_key(&id) {
            return Reply::message(404, "Load balancer not found");
        }
        if let Some(r) = self.check_mutable(id, now, true) {
            return r;
        }
        let pending = self.config.pending_time;
        let Some(lb) = self.lbs.get_mut(&id) else {
            return Reply::message(404, "Load balancer not found");
        };
        let (known, unknown): (Vec<u64>, Vec<u64>) = ids.iter().partition(|i| lb.nodes.contains_key(i));
        let mut errors = Vec::new();
        if known.len() > limit {
            errors.push(format!(
                "Request to delete {} nodes exceeds the account limit BATCH_DELETE_LIMIT of {limit} please attempt to delete fewer then {limit} nodes",
                known.len()
            ));
        }
        if !unknown.is_empty() {
            // All or nothing: one unknown id and no node is deleted.
            let list: Vec<String> = unknown.iter().map(u64::to_string).collect();
            errors.push(format!(
                "Node ids {} are not a part of your loadbalancer",
                list.join(",")
            ));
        }
        if !errors.is_empty() {
            return Reply::validation(&errors);
        }
        for i in &ids {
            lb.nodes.remove(i);
        }
        lb.start_pending(now, pending);
        Reply::empty(202)
    }
}

/// `t` as Identity writes it: `2031-03-14T08:10:14.000-05:00`.
fn central_time(t: SystemTime) -> String {
    let local = t.checked_sub(Duration::from_secs(5 * 3600)).unwrap_or(t);
    let utc = humantime::format_rfc3339_millis(local).to_string();
    format!("{}-05:00", utc.trim_end_matches('Z'))
}

/// `a=1&b=2&a=3` into pairs, repeated keys kept (bulk delete sends `id` many times).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

/// An address in canonical form, so `10.0.0.1` and a differently written equal address match.
fn normal_ip(s: &str) -> String {
    s.parse::<IpAddr>().map_or_else(|_| s.to_owned(), |ip| ip.to_string())
}
