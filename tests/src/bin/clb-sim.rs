//! `clb-sim`: the Cloud Load Balancers + Identity simulator on a port, for local trials
//! and the demo. Prints the Identity URL and runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use testbed::clb_sim::{ClbSim, RateLimits, SimConfig};

/// Command-line options; every flag has an environment twin.
#[derive(Debug, Parser)]
#[command(
    name = "clb-sim",
    about = "A stateful simulator of Rackspace Identity v2.0 + Cloud Load Balancers v1.0"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "CLB_SIM_LISTEN", default_value = "127.0.0.1:8900")]
    listen: SocketAddr,
    /// Base URL written into the catalog, when clients reach the simulator by another name.
    #[arg(long, env = "CLB_SIM_PUBLIC_URL")]
    public_url: Option<String>,
    /// The user Identity accepts.
    #[arg(long, env = "CLB_SIM_USERNAME", default_value = "u")]
    username: String,
    /// The API key Identity accepts (a test credential, not a secret).
    #[arg(long, env = "CLB_SIM_API_KEY", default_value = "k")]
    api_key: String,
    /// The account (tenant) id.
    #[arg(long, env = "CLB_SIM_TENANT", default_value = "123456")]
    tenant: String,
    /// Load balancer ids that exist at start (repeat or comma-separate).
    #[arg(long, env = "CLB_SIM_LOAD_BALANCER_ID", value_delimiter = ',', default_value = "1")]
    load_balancer_id: Vec<u64>,
    /// The region of those load balancers.
    #[arg(long, env = "CLB_SIM_REGION", default_value = "ORD")]
    region: String,
    /// How long a load balancer stays PENDING_UPDATE after a change.
    #[arg(long, env = "CLB_SIM_PENDING", default_value = "2s", value_parser = humantime::parse_duration)]
    pending: Duration,
    /// Lifetime of the tokens Identity issues.
    #[arg(long, env = "CLB_SIM_TOKEN_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    token_lifetime: Duration,
    /// Nodes per load balancer.
    #[arg(long, env = "CLB_SIM_NODE_LIMIT", default_value_t = 25)]
    node_limit: usize,
    /// Turn the per-verb rate limits off.
    #[arg(long, env = "CLB_SIM_NO_RATE_LIMITS")]
    no_rate_limits: bool,
}

fn main() {
    let args = Args::parse();
    let mut regions: Vec<String> = ["ORD", "DFW", "IAD", "LON", "SYD", "HKG"].map(String::from).to_vec();
    if !regions.contains(&args.region) {
        regions.push(args.region.clone());
    }
    let sim = ClbSim::start(SimConfig {
        listen: args.listen,
        public_url: args.public_url,
        username: args.username,
        api_key: args.api_key,
        tenant: args.tenant,
        regions,
        load_balancers: args
            .load_balancer_id
            .iter()
            .map(|id| (*id, args.region.clone()))
            .collect(),
        token_lifetime: args.token_lifetime,
        pending_time: args.pending,
        node_limit: args.node_limit,
        rate_limits: if args.no_rate_limits {
            RateLimits::unlimited()
        } else {
            RateLimits::default()
        },
        ..SimConfig::default()
    });
    println!(
        "clb-sim: identity {} (POST /tokens), load balancers {}",
        sim.identity_url(),
        sim.endpoint()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
    let calls = sim.calls();
    eprintln!("clb-sim: stopping after {} requests", calls.len());
}
