//! The `dbhelper` binary: parse the options, set up logging, run, exit with the error's status.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = dbhelper::Args::parse();
    sidekick::tls::install_crypto_provider();
    if let Err(e) = sidekick::logging::init(&args.log) {
        eprintln!("dbhelper: {e}");
        return ExitCode::from(dbhelper::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dbhelper: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dbhelper::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dbhelper: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
