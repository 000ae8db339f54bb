//! The benchmark harness.

/// Options.
#[derive(Debug, clap::Parser)]
pub struct Args {}

/// Runs the benchmarks.
///
/// # Errors
/// Any failure.
pub fn run(_args: Args) -> anyhow::Result<()> {
    Ok(())
}
