//! Logging: human-readable lines by default, one JSON object per line with
//! `--log-format json`; the filter follows `RUST_LOG` syntax (`info`, `announcer=debug`).
//! Logs go to standard error so standard output stays for what a command prints.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-24T10:00:00Z  INFO announcer: announced web01 ...`
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The logging options every binary takes.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,announcer=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
}

/// Installs the global subscriber. Call once, at the top of `main`.
///
/// # Errors
/// A message naming the filter when it does not parse.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(&args.log_filter).map_err(|e| format!("invalid log filter {:?}: {e}", args.log_filter))?;
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let res = match args.log_format {
        LogFormat::Text => builder.with_target(true).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = res;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filter_is_named() {
        let args = LogArgs {
            log_format: LogFormat::Text,
            log_filter: "info,=[".into(),
        };
        let err = init(&args).unwrap_err();
        assert!(err.contains("\"info,=[\""), "{err}");
    }

    #[test]
    fn good_filter_initialises() {
        let args = LogArgs {
            log_format: LogFormat::Json,
            log_filter: "info,sidekick=debug".into(),
        };
        assert_eq!(init(&args), Ok(()));
    }
}
