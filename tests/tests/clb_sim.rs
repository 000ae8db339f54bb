//! The CLB simulator proves itself against the facts sheet (`shared/docs/clb-api.md`),
//! one test per group of points of "What a faithful simulator reproduces".

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use testbed::clb_sim::{ClbSim, RateLimit, RateLimits, SimConfig};

/// A tiny client: a token and the endpoint from the catalog.
struct Api {
    http: reqwest::Client,
    token: String,
    endpoint: String,
}

async fn post_tokens(sim: &ClbSim, body: &str) -> (u16, Value) {
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/tokens", sim.identity_url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn creds(user: &str, key: &str) -> String {
    json!({"auth": {"RAX-KSKEY:apiKeyCredentials": {"username": user, "apiKey": key}}}).to_string()
}

impl Api {
    async fn login(sim: &ClbSim, region: &str) -> Api {
        let (status, doc) = post_tokens(sim, &creds("u", "k")).await;
        assert_eq!(status, 200, "{doc}");
        let token = doc["access"]["token"]["id"].as_str().unwrap().to_owned();
        let endpoint = doc["access"]["serviceCatalog"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["type"] == "rax:load-balancer")
            .and_then(|s| {
                s["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["region"] == region)
            })
            .map(|e| e["publicURL"].as_str().unwrap().to_owned())
            .expect("a load balancer endpoint for the region");
        Api {
            http: reqwest::Client::new(),
            token,
            endpoint,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.endpoint))
            .header("x-auth-token", &self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let doc = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, headers, doc)
    }

    async fn status(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, _, d) = self.call(method, path, body).await;
        (s, d)
    }

    async fn wait_active(&self, lb: u64) {
        let what = format!("load balancer {lb} becomes ACTIVE");
        let active = testbed::eventually(&what, Duration::from_secs(10), async || {
            let (s, d) = self.status("GET", &format!("/loadbalancers/{lb}"), None).await;
            assert_eq!(s, 200);
            (d["loadBalancer"]["status"] == "ACTIVE").then_some(())
        })
        .await;
        active.unwrap_or_else(|e| panic!("{e}"));
    }
}

fn quick() -> SimConfig {
    SimConfig {
        pending_time: Duration::from_millis(100),
        rate_limits: RateLimits::unlimited(),
        ..SimConfig::default()
    }
}

fn nodes(addrs: &[(&str, u16)]) -> Value {
    let list: Vec<Value> = addrs
        .iter()
        .map(|(a, p)| json!({"address": a, "port": p, "condition": "ENABLED", "type": "PRIMARY"}))
        .collect();
    json!({ "nodes": list })
}

#[tokio::test]
async fn identity_issues_tokens_with_expiry_and_a_load_balancer_endpoint_per_region() {
    let sim = ClbSim::start(quick());
    let (status, doc) = post_tokens(&sim, &creds("u", "k")).await;
    assert_eq!(status, 200);
    let token = &doc["access"]["token"];
    assert_eq!(token["tenant"]["id"], "123456");
    // Identity writes expiries with a UTC offset, as the real one does.
    let raw = token["expires"].as_str().unwrap();
    assert!(raw.ends_with("-05:00"), "{raw}");
    let expires =
        humantime::parse_rfc3339_weak(raw.trim_end_matches("-05:00")).unwrap() + Duration::from_secs(5 * 3600);
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(23 * 3600),
        "default lifetime 24 h, got {left:?}"
    );
    assert!(
        token["expires"].as_str().unwrap().contains('.'),
        "milliseconds are shown"
    );
    let catalog = doc["access"]["serviceCatalog"].as_array().unwrap();
    let lb = catalog.iter().find(|s| s["type"] == "rax:load-balancer").unwrap();
    assert_eq!(lb["name"], "cloudLoadBalancers");
    let regions: Vec<&str> = lb["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["ORD", "DFW", "IAD", "LON", "SYD", "HKG"]);
    for e in lb["endpoints"].as_array().unwrap() {
        assert!(e["publicURL"].as_str().unwrap().ends_with("/v1.0/123456"), "{e}");
    }
    assert!(catalog.len() > 1, "other services are in the catalog too");
    assert_eq!(sim.auth_calls(), 1);
}

#[tokio::test]
async fn identity_refuses_bad_credentials_bad_json_and_disabled_users() {
    let sim = ClbSim::start(quick());
    let (status, doc) = post_tokens(&sim, &creds("u", "wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(
        doc["unauthorized"]["message"],
        "Unable to authenticate user with credentials provided."
    );
    let (status, _) = post_tokens(&sim, "{not json").await;
    assert_eq!(status, 400);
    sim.disable_user(true);
    let (status, doc) = post_tokens(&sim, &creds("u", "k")).await;
    assert_eq!(status, 403, "{doc}");
    sim.disable_user(false);
    assert_eq!(post_tokens(&sim, &creds("u", "k")).await.0, 200);
}

#[tokio::test]
async fn bad_expired_or_revoked_tokens_get_a_401_with_an_empty_body() {
    let sim = ClbSim::start(quick());
    let mut api = Api::login(&sim, "ORD").await;
    assert_eq!(api.status("GET", "/loadbalancers/1", None).await.0, 200);

    sim.revoke_tokens();
    let (status, _, body) = api.call("GET", "/loadbalancers/1", None).await;
    assert_eq!((status, body), (401, Value::Null));

    sim.set_token_lifetime(Duration::from_millis(300));
    api = Api::login(&sim, "ORD").await;
    assert_eq!(api.status("GET", "/loadbalancers/1", None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(api.status("GET", "/loadbalancers/1", None).await.0, 401, "expired");

    api.token = "not-a-token".into();
    assert_eq!(api.status("GET", "/loadbalancers/1", None).await.0, 401);
}

#[tokio::test]
async fn a_change_is_202_then_pending_update_then_active_and_the_lb_is_immutable_meanwhile() {
    let sim = ClbSim::start(SimConfig {
        pending_time: Duration::from_millis(500),
        ..quick()
    });
    let api = Api::login(&sim, "ORD").await;
    let (status, doc) = api.status("GET", "/loadbalancers/1", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["loadBalancer"]["status"], "ACTIVE");
    assert!(
        doc["loadBalancer"].get("nodes").is_none(),
        "no nodes: the key is left out"
    );

    let (status, doc) = api
        .status(
            "POST",
            "/loadbalancers/1/nodes",
            Some(nodes(&[("10.0.0.1", 80), ("10.0.0.2", 80)])),
        )
        .await;
    assert_eq!(status, 202);
    let created = doc["nodes"].as_array().unwrap();
    assert_eq!(created.len(), 2);
    assert!(created[0]["id"].as_u64().is_some() && created[0]["id"] != created[1]["id"]);
    let (_, doc) = api.status("GET", "/loadbalancers/1", None).await;
    assert_eq!(doc["loadBalancer"]["status"], "PENDING_UPDATE");
    assert_eq!(
        doc["loadBalancer"]["nodes"].as_array().unwrap().len(),
        2,
        "GETs always answer"
    );

    let id = created[0]["id"].as_u64().unwrap();
    let (status, doc) = api
        .status(
            "PUT",
            &format!("/loadbalancers/1/nodes/{id}"),
            Some(json!({"node": {"condition": "DRAINING"}})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        doc["message"],
        "Load Balancer '1' has a status of 'PENDING_UPDATE' and is considered immutable."
    );
    let (status, doc) = api
        .status("DELETE", &format!("/loadbalancers/1/nodes?id={id}"), None)
        .await;
    assert_eq!(
        (status, doc["message"].as_str()),
        (422, Some("LoadBalancer is not ACTIVE"))
    );

    api.wait_active(1).await;
    let (status, _, body) = api
        .call(
            "PUT",
            &format!("/loadbalancers/1/nodes/{id}"),
            Some(json!({"node": {"condition": "DRAINING"}})),
        )
        .await;
    assert_eq!((status, body), (202, Value::Null));
    api.wait_active(1).await;
    let draining = sim.nodes(1).into_iter().find(|n| n.id == id).unwrap();
    assert_eq!(draining.condition, "DRAINING");
    assert_eq!(draining.status, "ONLINE");
    // Another client's change got in first: the next change is refused as immutable.
    sim.inject_immutable(1);
    let (status, _) = api
        .status("DELETE", &format!("/loadbalancers/1/nodes/{id}"), None)
        .await;
    assert_eq!(status, 422);
    api.wait_active(1).await;
    assert_eq!(
        api.status("DELETE", &format!("/loadbalancers/1/nodes/{id}"), None)
            .await
            .0,
        202
    );
    assert_eq!(sim.nodes(1).len(), 1);
}

#[tokio::test]
async fn node_limit_duplicates_and_put_validation() {
    let sim = ClbSim::start(SimConfig {
        pending_time: Duration::ZERO,
        ..quick()
    });
    let api = Api::login(&sim, "ORD").await;
    let many: Vec<(String, u16)> = (1..=26).map(|i| (format!("10.0.1.{i}"), 80)).collect();
    let refs: Vec<(&str, u16)> = many.iter().map(|(a, p)| (a.as_str(), *p)).collect();
    let (status, doc) = api.status("POST", "/loadbalancers/1/nodes", Some(nodes(&refs))).await;
    assert_eq!(status, 413);
    assert_eq!(doc["message"], "Nodes must not exceed 25 per load balancer.");
    assert!(doc.get("overLimit").is_none(), "the node limit is not a rate limit");
    assert!(sim.nodes(1).is_empty(), "all or nothing");

    assert_eq!(
        api.status("POST", "/loadbalancers/1/nodes", Some(nodes(&refs[..25])))
            .await
            .0,
        202
    );
    assert_eq!(sim.nodes(1).len(), 25);
    api.status(
        "DELETE",
        &format!("/loadbalancers/1/nodes/{}", sim.nodes(1)[24].id),
        None,
    )
    .await;

    let (status, doc) = api
        .status("POST", "/loadbalancers/1/nodes", Some(nodes(&[("10.0.1.1", 80)])))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        doc["message"],
        "Duplicate nodes detected. One or more nodes already configured on load balancer."
    );
    assert_eq!(sim.nodes(1).len(), 24);

    let id = sim.nodes(1)[0].id;
    let path = format!("/loadbalancers/1/nodes/{id}");
    for body in [
        json!({"node": {"address": "10.9.9.9"}}),
        json!({"node": {"port": 81}}),
        json!({"node": {"id": 5}}),
        json!({"node": {"weight": 0}}),
        json!({"node": {"weight": 101}}),
        json!({"node": {"condition": "SLEEPING"}}),
    ] {
        let (status, doc) = api.status("PUT", &path, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(doc["message"], "Validation Failure");
        assert!(!doc["validationErrors"]["messages"].as_array().unwrap().is_empty());
    }
    let (_, doc) = api
        .status("PUT", &path, Some(json!({"node": {"address": "10.9.9.9"}})))
        .await;
    assert_eq!(
        doc["validationErrors"]["messages"][0],
        "Node ip field cannot be modified."
    );
    assert_eq!(
        api.status("PUT", &path, Some(json!({"node": {"weight": 100}}))).await.0,
        202
    );
    assert_eq!(sim.nodes(1)[0].weight, Some(100));
    assert_eq!(
        api.status(
            "PUT",
            "/loadbalancers/1/nodes/999999",
            Some(json!({"node": {"weight": 5}}))
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn bulk_delete_limit_unknown_ids_and_all_or_nothing() {
    let sim = ClbSim::start(SimConfig {
        pending_time: Duration::ZERO,
        ..quick()
    });
    let api = Api::login(&sim, "ORD").await;
    let many: Vec<(String, u16)> = (1..=12).map(|i| (format!("10.0.2.{i}"), 8080)).collect();
    let refs: Vec<(&str, u16)> = many.iter().map(|(a, p)| (a.as_str(), *p)).collect();
    api.status("POST", "/loadbalancers/1/nodes", Some(nodes(&refs))).await;
    let ids: Vec<u64> = sim.nodes(1).iter().map(|n| n.id).collect();
    let q = |ids: &[u64]| {
        let parts: Vec<String> = ids.iter().map(|i| format!("id={i}")).collect();
        format!("/loadbalancers/1/nodes?{}", parts.join("&"))
    };

    let (status, doc) = api.status("DELETE", &q(&ids[..11]), None).await;
    assert_eq!(status, 400, "more than 10 ids: {doc}");
    assert_eq!(doc["message"], "Validation Failure");
    assert_eq!(
        api.status("DELETE", "/loadbalancers/1/nodes", None).await.0,
        400,
        "no ids"
    );

    let (status, doc) = api.status("DELETE", &q(&[ids[0], 1, ids[1], 3]), None).await;
    assert_eq!(status, 400);
    assert_eq!(
        doc["validationErrors"]["messages"][0],
        "Node ids 1,3 are not a part of your loadbalancer"
    );
    assert_eq!(sim.nodes(1).len(), 12, "all or nothing: nothing deleted");

    assert_eq!(api.status("DELETE", &q(&ids[..10]), None).await.0, 202);
    assert_eq!(sim.nodes(1).len(), 2);
    assert_eq!(sim.count("DELETE"), 4);
}

#[tokio::test]
async fn rate_limits_answer_over_limit_413_with_an_http_date_retry_after() {
    let sim = ClbSim::start(SimConfig {
        pending_time: Duration::ZERO,
        rate_limits: RateLimits {
            get: RateLimit::new(3, 100),
            ..RateLimits::unlimited()
        },
        ..SimConfig::default()
    });
    let api = Api::login(&sim, "ORD").await;
    let mut limited = None;
    for _ in 0..4 {
        let (status, headers, doc) = api.call("GET", "/loadbalancers/1", None).await;
        if status == 413 {
            limited = Some((headers, doc));
            break;
        }
    }
    let (headers, doc) = limited.expect("the fourth GET within a second is over the limit");
    assert_eq!(doc["overLimit"]["code"], 413);
    assert!(doc["overLimit"]["retryAfter"].as_str().is_some());
    let retry_after = headers["retry-after"].to_str().unwrap();
    let when = httpdate::parse_http_date(retry_after).expect("an RFC 1123 date");
    let wait = when.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(wait <= Duration::from_secs(2), "{retry_after}");
    // Other verbs have their own budget.
    assert_eq!(
        api.status("POST", "/loadbalancers/1/nodes", Some(nodes(&[("10.0.3.1", 80)])))
            .await
            .0,
        202
    );
    // A request before the date is logged as one that ignored Retry-After.
    api.status("GET", "/loadbalancers/1", None).await;
    assert_eq!(sim.requests_during_retry_after().len(), 1);
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let (status, _) = api.status("GET", "/loadbalancers/1", None).await;
    assert_eq!(status, 200, "the limit has passed at the announced date");
    assert_eq!(sim.requests_during_retry_after().len(), 1);
    assert!(sim.count_status("GET", 413) >= 1);
}

#[tokio::test]
async fn missing_and_deleted_load_balancers_and_nodes_are_404_and_410() {
    let sim = ClbSim::start(SimConfig {
        load_balancers: vec![(1, "ORD".into()), (2, "ORD".into())],
        ..quick()
    });
    let api = Api::login(&sim, "ORD").await;
    let (status, doc) = api.status("GET", "/loadbalancers/77", None).await;
    assert_eq!(
        (status, doc["message"].as_str()),
        (404, Some("Load balancer not found"))
    );
    assert_eq!(api.status("GET", "/loadbalancers/1/nodes/5", None).await.0, 404);
    sim.set_status(2, "DELETED");
    let (status, doc) = api.status("GET", "/loadbalancers/2", None).await;
    assert_eq!((status, doc["loadBalancer"]["status"].as_str()), (200, Some("DELETED")));
    let (status, doc) = api.status("GET", "/loadbalancers/2/nodes", None).await;
    assert_eq!(status, 410);
    assert_eq!(doc["message"], "The loadbalancer is marked as deleted.");
    assert_eq!(
        api.status("POST", "/loadbalancers/2/nodes", Some(nodes(&[("10.0.4.1", 80)])))
            .await
            .0,
        410
    );
}

#[tokio::test]
async fn faults_error_and_suspended_states_5xx_slow_answers_and_offline_nodes() {
    let sim = ClbSim::start(SimConfig {
        pending_time: Duration::ZERO,
        ..quick()
    });
    let api = Api::login(&sim, "ORD").await;
    for state in ["ERROR", "SUSPENDED"] {
        sim.set_status(1, state);
        let (_, doc) = api.status("GET", "/loadbalancers/1", None).await;
        assert_eq!(doc["loadBalancer"]["status"], state);
        let (status, doc) = api
            .status("POST", "/loadbalancers/1/nodes", Some(nodes(&[("10.0.5.1", 80)])))
            .await;
        assert_eq!(status, 422);
        assert!(doc["message"].as_str().unwrap().contains(&format!("'{state}'")));
    }
    sim.set_status(1, "ACTIVE");
    sim.inject_5xx(2);
    assert_eq!(api.status("GET", "/loadbalancers/1", None).await.0, 500);
    assert_eq!(api.status("GET", "/loadbalancers/1", None).await.0, 500);
    assert_eq!(api.status("GET", "/loadbalancers/1", None).await.0, 200);

    sim.set_delay(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(api.status("GET", "/loadbalancers/1", None).await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300), "the answer was delayed");
    sim.set_delay(Duration::ZERO);

    sim.set_new_node_status("OFFLINE");
    api.status("POST", "/loadbalancers/1/nodes", Some(nodes(&[("10.0.5.1", 80)])))
        .await;
    let (_, doc) = api.status("GET", "/loadbalancers/1/nodes", None).await;
    assert_eq!(doc["nodes"][0]["status"], "OFFLINE");
    sim.set_node_status(1, "10.0.5.1", "ONLINE");
    let (_, doc) = api.status("GET", "/loadbalancers/1/nodes", None).await;
    assert_eq!(doc["nodes"][0]["status"], "ONLINE");
}

#[tokio::test]
async fn absolute_limits_rate_limits_and_node_pages_of_100() {
    let sim = ClbSim::start(SimConfig {
        node_limit: 150,
        pending_time: Duration::ZERO,
        ..quick()
    });
    let api = Api::login(&sim, "ORD").await;
    let (status, doc) = api.status("GET", "/loadbalancers/absolutelimits", None).await;
    assert_eq!(status, 200);
    let get = |name: &str| {
        doc["absolute"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| l["value"].clone())
    };
    assert_eq!(get("NODE_LIMIT"), Some(json!(150)));
    assert_eq!(get("BATCH_DELETE_LIMIT"), Some(json!(10)));
    let (status, doc) = api.status("GET", "/limits", None).await;
    assert_eq!(status, 200);
    assert!(
        doc["limits"]["rate"][0]["limit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["verb"] == "DELETE")
    );

    for i in 0..120 {
        sim.add_node(1, &format!("10.1.{}.{}", i / 200, i % 200 + 1), 80, "ENABLED");
    }
    let (_, page1) = api.status("GET", "/loadbalancers/1/nodes", None).await;
    let first = page1["nodes"].as_array().unwrap();
    assert_eq!(first.len(), 100);
    let marker = first[99]["id"].as_u64().unwrap();
    assert!(
        page1["links"][0]["href"]
            .as_str()
            .unwrap()
            .contains(&format!("marker={marker}"))
    );
    let (_, page2) = api
        .status(
            "GET",
            &format!("/loadbalancers/1/nodes?marker={marker}&limit=100"),
            None,
        )
        .await;
    assert_eq!(page2["nodes"].as_array().unwrap().len(), 20);
    assert!(page2.get("links").is_none());
}

/// The order of checks and the messages of the real API's server code: POST nodes (400
/// body, 404, 422 immutable, 413 limit, 422 duplicate; weight 1 by default; a pair twice
/// in one request; `status`/`id` refused), PUT/DELETE of a missing node (404 before the
/// immutable 422), bulk delete (400 empty, 422 not ACTIVE, one 400 listing the limit and
/// the unknown ids), and the schema 400 whose `message` is a list.
#[tokio::test]
async fn checks_come_in_the_apis_order_with_its_messages() {
    let sim = ClbSim::start(SimConfig {
        pending_time: Duration::ZERO,
        ..quick()
    });
    let api = Api::login(&sim, "ORD").await;
    let post = |body: Value| {
        let api = &api;
        async move { api.status("POST", "/loadbalancers/1/nodes", Some(body)).await }
    };
    // Body checks come first, even on a missing load balancer.
    let schema = json!({"message": ["JSON does not match the expected schema"], "code": 400});
    assert_eq!(post(json!({"nodes": "x"})).await, (400, schema.clone()));
    assert_eq!(
        api.status("POST", "/loadbalancers/999/nodes", Some(json!({"nodes": 3})))
            .await,
        (400, schema.clone())
    );
    let (status, doc) = post(nodes(&[("10.0.3.1", 80), ("10.0.3.1", 80)])).await;
    assert_eq!(status, 400);
    assert_eq!(
        doc["validationErrors"]["messages"][0],
        "Duplicate nodes detected. Please ensure that the ip address and port are unique for each node."
    );
    let (status, doc) =
        post(json!({"nodes": [{"address": "10.0.3.1", "port": 80, "condition": "ENABLED", "status": "ONLINE"}]})).await;
    assert_eq!(status, 400);
    assert_eq!(
        doc["validationErrors"]["messages"][0],
        "Node status field cannot be modified."
    );
    assert_eq!(
        api.status("POST", "/loadbalancers/999/nodes", Some(nodes(&[("10.0.3.1", 80)])))
            .await
            .0,
        404
    );
    // Weight 1 when none is given.
    let (status, doc) = post(nodes(&[("10.0.3.1", 80)])).await;
    assert_eq!(status, 202);
    assert_eq!(doc["nodes"][0]["weight"], 1, "{doc}");
    // Immutable before the node limit, the limit before the duplicate.
    sim.hold_pending(1, Duration::from_secs(30));
    let many: Vec<(String, u16)> = (1..=30).map(|i| (format!("10.0.4.{i}"), 80)).collect();
    let mut refs: Vec<(&str, u16)> = many.iter().map(|(a, p)| (a.as_str(), *p)).collect();
    refs.push(("10.0.3.1", 80));
    assert_eq!(post(nodes(&refs)).await.0, 422, "immutable first");
    let id = sim.nodes(1)[0].id;
    // A missing node is a 404 even while immutable; an existing one gets the 422.
    let (status, doc) = api
        .status(
            "PUT",
            "/loadbalancers/1/nodes/424242",
            Some(json!({"node": {"condition": "DRAINING"}})),
        )
        .await;
    assert_eq!(
        (status, doc["message"].as_str()),
        (404, Some("Node with id #424242 not found for loadbalancer #1"))
    );
    assert_eq!(api.status("DELETE", "/loadbalancers/1/nodes/424242", None).await.0, 404);
    assert_eq!(
        api.status("DELETE", &format!("/loadbalancers/1/nodes/{id}"), None)
            .await
            .0,
        422
    );
    let (status, _) = api.status("DELETE", "/loadbalancers/1/nodes?id=424242", None).await;
    assert_eq!(status, 422, "bulk: not ACTIVE before the id checks");
    assert_eq!(
        api.status("DELETE", "/loadbalancers/1/nodes", None).await.0,
        400,
        "bulk: no id first"
    );
    sim.hold_pending(1, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.wait_active(1).await;
    assert_eq!(post(nodes(&refs)).await.0, 413, "the limit before the duplicate");
    assert_eq!(post(nodes(&[("10.0.3.1", 80)])).await.0, 422, "then the duplicate");
    // PUT bodies: `status` and `id` refused; not JSON: the schema answer.
    let path = format!("/loadbalancers/1/nodes/{id}");
    let (status, doc) = api
        .status("PUT", &path, Some(json!({"node": {"status": "OFFLINE"}})))
        .await;
    assert_eq!(
        (status, doc["validationErrors"]["messages"][0].as_str()),
        (400, Some("Node status field cannot be modified."))
    );
    assert_eq!(api.status("PUT", &path, Some(json!([1]))).await, (400, schema));
    // Bulk delete: one 400 with both the limit (ids of this LB only) and the unknown ids.
    let more: Vec<(String, u16)> = (1..=11).map(|i| (format!("10.0.5.{i}"), 80)).collect();
    let refs: Vec<(&str, u16)> = more.iter().map(|(a, p)| (a.as_str(), *p)).collect();
    assert_eq!(post(nodes(&refs)).await.0, 202);
    api.wait_active(1).await;
    let ids: Vec<String> = sim.nodes(1).iter().map(|n| n.id.to_string()).collect();
    let mut q: Vec<String> = ids.iter().map(|i| format!("id={i}")).collect();
    q.push("id=7".into());
    q.push("id=9".into());
    let (status, doc) = api
        .status("DELETE", &format!("/loadbalancers/1/nodes?{}", q.join("&")), None)
        .await;
    assert_eq!(status, 400);
    let msgs = doc["validationErrors"]["messages"].as_array().unwrap();
    assert_eq!(
        msgs[0],
        "Request to delete 12 nodes exceeds the account limit BATCH_DELETE_LIMIT of 10 please attempt to delete fewer then 10 nodes"
    );
    assert_eq!(msgs[1], "Node ids 7,9 are not a part of your loadbalancer");
    assert_eq!(sim.nodes(1).len(), 12, "nothing deleted");
}
