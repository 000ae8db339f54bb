//! `bench`: runs every benchmark of `BENCHMARKS.md` in one run and writes `target/bench/`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = bench::Args::parse();
    // The fleet runs the announcer's registry in this process: `BENCH_LOG=warn` shows
    // what its hosts log (a lease lost, a member failing), as `RUST_LOG` does for a daemon.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    bench::run(args)
}
