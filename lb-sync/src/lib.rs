//! lb-sync (skeleton: its behaviour comes with its own issue).

use sidekick::etcd::EtcdArgs;
use sidekick::logging::LogArgs;

/// Command-line options; every flag has an environment twin.
#[derive(Debug, clap::Parser)]
#[command(name = "lb-sync", version, about)]
pub struct Args {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Runs the binary.
///
/// # Errors
/// Everything that stops it, with the offending value named.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    Ok(())
}
