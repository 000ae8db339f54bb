//! `bench`: runs every benchmark of `BENCHMARKS.md` in one run and writes `target/bench/`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = bench::Args::parse();
    bench::run(args)
}
