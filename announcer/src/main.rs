//! The `announcer` binary: parse the options, set up logging, run.
//!
//! One current-thread runtime: the work is a handful of sockets and timers, and a single
//! thread keeps the footprint small (see the README's "Footprint").

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = announcer::Args::parse();
    sidekick::tls::install_crypto_provider();
    if let Err(e) = sidekick::logging::init(&args.log) {
        eprintln!("announcer: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("announcer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(announcer::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("announcer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
