//! The `lb-sync` binary: parse the options, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = lb_sync::Args::parse();
    sidekick::tls::install_crypto_provider();
    if let Err(e) = sidekick::logging::init(&args.log) {
        eprintln!("lb-sync: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-sync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(lb_sync::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-sync: {e:#}");
            ExitCode::FAILURE
        }
    }
}
