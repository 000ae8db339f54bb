//! A stateful simulator of Rackspace Identity v2.0 and Cloud Load Balancers v1.0.
//!
//! The real API cannot be reached from our machines, so lb-sync is tested against this
//! server. It follows `shared/docs/clb-api.md` point by point ("What a faithful simulator
//! reproduces"):
//!
//! 1. tokens with a configurable lifetime, revocation, and `401` with an empty body for a
//!    bad, expired or revoked token; a catalog with a `rax:load-balancer` entry per region
//!    whose `publicURL` ends in `/v1.0/{tenant}`;
//! 2. `202` for every accepted change, then `PENDING_UPDATE` for a configurable time, then
//!    `ACTIVE`;
//! 3. `422` "considered immutable" for node changes while not `ACTIVE`, and the bulk-delete
//!    variant "LoadBalancer is not ACTIVE"; GETs always answer;
//! 4. new nodes echoed with fresh integer ids; duplicates `422`; the node limit `413`; the
//!    bulk-delete limit and unknown ids `400`, all or nothing;
//! 5. `PUT` validation (immutable fields, weight range) `400`;
//! 6. per-verb rate limits answered with the `overLimit` `413` and an HTTP-date
//!    `Retry-After`;
//! 7. `404` / `410` for missing or deleted load balancers and nodes;
//! 8. fault injection: `ERROR` and `SUSPENDED` states, `5xx` answers, slow answers, token
//!    revocation, and changes refused as if another client had just made one;
//! 9. node status `ONLINE`, or `OFFLINE` when a test says the node fails its health check.
//!
//! Everything the server answers is recorded in a request log ([`ClbSim::calls`]) so a
//! test can count calls per verb and check that no request came in while a `Retry-After`
//! it had announced was still in force ([`ClbSim::requests_during_retry_after`]).
//!
//! The server runs on its own thread with its own Tokio runtime, so the handle works the
//! same from synchronous and asynchronous tests; it stops when the handle drops.

mod http;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

pub use state::{Node, Verb};

/// One verb's rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests accepted in any one-second window.
    pub per_second: u32,
    /// Requests accepted in any sixty-second window.
    pub per_minute: u32,
}

impl RateLimit {
    /// A limit of `per_second` and `per_minute`.
    #[must_use]
    pub const fn new(per_second: u32, per_minute: u32) -> RateLimit {
        RateLimit { per_second, per_minute }
    }
}

/// The rate limits of the four verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// GET: 10/s, 600/min on the real API.
    pub get: RateLimit,
    /// POST: 5/s, 300/min.
    pub post: RateLimit,
    /// PUT: 10/s, 600/min.
    pub put: RateLimit,
    /// DELETE: 5/s, 300/min.
    pub delete: RateLimit,
}

impl Default for RateLimits {
    /// The limits of the real API (clb-api.md, "Rate limits").
    fn default() -> Self {
        RateLimits {
            get: RateLimit::new(10, 600),
            post: RateLimit::new(5, 300),
            put: RateLimit::new(10, 600),
            delete: RateLimit::new(5, 300),
        }
    }
}

impl RateLimits {
    /// Limits so high no test reaches them.
    #[must_use]
    pub fn unlimited() -> RateLimits {
        let l = RateLimit::new(1_000_000, 60_000_000);
        RateLimits {
            get: l,
            post: l,
            put: l,
            delete: l,
        }
    }

    pub(crate) fn of(&self, verb: Verb) -> RateLimit {
        match verb {
            Verb::Get => self.get,
            Verb::Post => self.post,
            Verb::Put => self.put,
            Verb::Delete => self.delete,
        }
    }
}

/// How the simulator starts.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The base URL written into the catalog (`None`: `http://<listen address>`).
    pub public_url: Option<String>,
    /// The one user Identity knows.
    pub username: String,
    /// That user's API key.
    pub api_key: String,
    /// The account (tenant) id: the last segment of every load balancer endpoint.
    pub tenant: String,
    /// Regions in the catalog, one `rax:load-balancer` endpoint each.
    pub regions: Vec<String>,
    /// Load balancers that exist at start: `(id, region)`, each empty and `ACTIVE`.
    pub load_balancers: Vec<(u64, String)>,
    /// How long a token lives (24 h on the real API).
    pub token_lifetime: Duration,
    /// How long a load balancer stays `PENDING_UPDATE` after an accepted change.
    pub pending_time: Duration,
    /// Nodes per load balancer (25 by default).
    pub node_limit: usize,
    /// Ids per bulk delete (10).
    pub batch_delete_limit: usize,
    /// Per-verb rate limits.
    pub rate_limits: RateLimits,
    /// Largest page of a node list (100).
    pub page_limit: usize,
    /// The status new nodes report (`ONLINE`; `OFFLINE` as if their health check failed).
    pub new_node_status: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            username: "u".into(),
            api_key: "k".into(),
            tenant: "123456".into(),
            regions: ["ORD", "DFW", "IAD", "LON", "SYD", "HKG"].map(String::from).to_vec(),
            load_balancers: vec![(1, "ORD".into())],
            token_lifetime: Duration::from_secs(24 * 3600),
            pending_time: Duration::from_secs(1),
            node_limit: 25,
            batch_delete_limit: 10,
            rate_limits: RateLimits::default(),
            page_limit: 100,
            new_node_status: "ONLINE".into(),
        }
    }
}

/// One request the simulator answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// When it arrived (wall clock, as `Retry-After` dates are).
    pub at: SystemTime,
    /// `GET`, `POST`, `PUT`, `DELETE`, ...
    pub method: String,
    /// Path and query, e.g. `/v1.0/123456/loadbalancers/1/nodes?id=4&id=5`.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// Whether it is an Identity call (`/v2.0/tokens`) rather than a load balancer call.
    pub identity: bool,
    /// Whether it came in while a `Retry-After` announced for its verb was still in force.
    pub during_retry_after: bool,
}

/// An answer of the kind no client should hold in memory ([`ClbSim::inject_oversized`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversized {
    /// A chunked body that never ends.
    Endless,
    /// A body of this many bytes, declared in `Content-Length`.
    Declared(u64),
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct ClbSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the server thread and the handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<state::State>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, state::State> {
        // A test that panicked while holding the lock must not hide the simulator's state.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClbSim {
    /// Starts the simulator with `config` and returns once it accepts connections.
    ///
    /// # Panics
    /// When the address cannot be bound.
    #[must_use]
    pub fn start(config: SimConfig) -> ClbSim {
        let listener = std::net::TcpListener::bind(config.listen)
            .unwrap_or_else(|e| panic!("clb-sim: cannot listen on {}: {e}", config.listen));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let base = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_owned();
        let shared = Arc::new(Shared {
            state: Mutex::new(state::State::new(config, base.clone())),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("clb-sim".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("clb-sim runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let app = http::router(server_shared);
                    tokio::select! {
                        res = axum::serve(listener, app) => {
                            if let Err(e) = res {
                                eprintln!("clb-sim: server stopped: {e}");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels the connections still open.
            })
            .expect("spawn the clb-sim thread");
        ClbSim {
            shared,
            addr,
            base,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The address the server listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        self.base.clone()
    }

    /// The Identity v2.0 base a client is given (`--identity-url`); tokens are at `/tokens` below it.
    #[must_use]
    pub fn identity_url(&self) -> String {
        format!("{}/v2.0", self.base)
    }

    /// The load balancer endpoint of the catalog: `{url}/v1.0/{tenant}`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("{}/v1.0/{}", self.base, self.shared.lock().config.tenant)
    }

    /// The nodes of load balancer `lb`, by id (empty when it does not exist).
    #[must_use]
    pub fn nodes(&self, lb: u64) -> Vec<Node> {
        self.shared.lock().nodes(lb)
    }

    /// The status load balancer `lb` reports now (`ACTIVE`, `PENDING_UPDATE`, ...).
    #[must_use]
    pub fn lb_status(&self, lb: u64) -> Option<String> {
        let mut st = self.shared.lock();
        let now = Instant::now();
        st.lbs.get_mut(&lb).map(|l| l.status(now).to_owned())
    }

    /// Puts `lb` into `status` until told otherwise (`ERROR`, `SUSPENDED`, `DELETED`,
    /// `PENDING_DELETE`, `PENDING_UPDATE` for a stuck one, `ACTIVE` to heal it).
    pub fn set_status(&self, lb: u64, status: &str) {
        self.shared.lock().set_status(lb, status, None);
    }

    /// Keeps `lb` in `PENDING_UPDATE` for `duration`, as a slow change would.
    pub fn hold_pending(&self, lb: u64, duration: Duration) {
        self.shared
            .lock()
            .set_status(lb, "PENDING_UPDATE", Some(Instant::now() + duration));
    }

    /// Sets the status (`ONLINE`, `OFFLINE`) of the nodes of `lb` at `address` (any port).
    pub fn set_node_status(&self, lb: u64, address: &str, status: &str) {
        let mut st = self.shared.lock();
        if let Some(l) = st.lbs.get_mut(&lb) {
            for n in l.nodes.values_mut().filter(|n| n.address == address) {
                n.status = status.to_owned();
            }
        }
    }

    /// Sets the status new nodes report from now on.
    pub fn set_new_node_status(&self, status: &str) {
        self.shared.lock().config.new_node_status = status.to_owned();
    }

    /// Adds a node directly (no API call, no pending time): for setting the scene.
    pub fn add_node(&self, lb: u64, address: &str, port: u16, condition: &str) -> u64 {
        self.shared.lock().add_node_direct(lb, address, port, condition)
    }

    /// Removes every node of load balancer `lb` directly (no API call): for resetting the scene.
    pub fn clear_nodes(&self, lb: u64) {
        if let Some(l) = self.shared.lock().lbs.get_mut(&lb) {
            l.nodes.clear();
        }
    }

    /// The next `n` load balancer calls answer `500` (after the delay, before any check).
    pub fn inject_5xx(&self, n: u32) {
        self.shared.lock().inject_5xx = n;
    }

    /// The next `n` node changes answer `422` immutable and start a `PENDING_UPDATE`, as
    /// if another client had just changed the load balancer.
    pub fn inject_immutable(&self, n: u32) {
        self.shared.lock().inject_immutable = n;
    }

    /// The next `n` load balancer `GET`s answer `200` with a body of `kind` that starts
    /// like a node list and never ends or ends far too late (`n = 0` stops it).
    pub fn inject_oversized(&self, n: u32, kind: Oversized) {
        self.shared.lock().oversized = (n, kind);
    }

    /// How many oversized answers were started so far.
    #[must_use]
    pub fn oversized_served(&self) -> u32 {
        self.shared.lock().oversized_served
    }

    /// Delays every answer by `delay` (zero to stop).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Invalidates every token issued so far.
    pub fn revoke_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    /// Sets the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().config.token_lifetime = lifetime;
    }

    /// Disables (`true`) or enables the user: Identity answers `403` while disabled.
    pub fn disable_user(&self, disabled: bool) {
        self.shared.lock().user_disabled = disabled;
    }

    /// Replaces the rate limits (the request windows are kept).
    pub fn set_rate_limits(&self, limits: RateLimits) {
        self.shared.lock().config.rate_limits = limits;
    }

    /// Every request answered so far, in order.
    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().log.clone()
    }

    /// Forgets the request log (not the rate-limit windows).
    pub fn clear_calls(&self) {
        self.shared.lock().log.clear();
    }

    /// Load balancer calls (not Identity) with `method`, whatever they were answered.
    #[must_use]
    pub fn count(&self, method: &str) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|c| !c.identity && c.method == method)
            .count()
    }

    /// Load balancer calls with `method` answered `status`.
    #[must_use]
    pub fn count_status(&self, method: &str, status: u16) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|c| !c.identity && c.method == method && c.status == status)
            .count()
    }

    /// Token requests answered so far (any status).
    #[must_use]
    pub fn auth_calls(&self) -> usize {
        self.shared.lock().log.iter().filter(|c| c.identity).count()
    }

    /// Requests that came in while a `Retry-After` announced for their verb was in force.
    #[must_use]
    pub fn requests_during_retry_after(&self) -> Vec<Call> {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|c| c.during_retry_after)
            .cloned()
            .collect()
    }
}

impl Drop for ClbSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
