//! `--validate`: check a command line without touching anything.
//!
//! Every binary takes it. With it, the binary parses its options (clap, env twins
//! included), reads the files and variables they name (addresses, passwords, keys,
//! certificates), prints one line with the resolved configuration (secrets never shown)
//! and exits 0 — or exits non-zero with the usual one-line error. It contacts neither
//! etcd, Docker, the database nor the load balancer. The unit-file test runs every
//! `ExecStart=` of `units/` through it, and operators can run it before `systemctl start`.

use crate::Error;
use crate::etcd::{EtcdArgs, PASSWORD_ENV};

/// The `--validate` flag.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct ValidateArgs {
    /// Check the options and the files and variables they name, print the resolved
    /// configuration (secrets hidden) and exit, without contacting any server.
    #[arg(long, env = "SIDEKICK_VALIDATE", global = true)]
    pub validate: bool,
}

impl EtcdArgs {
    /// What [`EtcdArgs::resolve`] would use, without asking DNS: for `--validate`.
    ///
    /// # Errors
    /// As [`EtcdArgs::resolve_with`]: bad endpoints, unreadable files, a user without password.
    pub fn describe_offline(&self) -> Result<String, Error> {
        let env_password = std::env::var(PASSWORD_ENV).ok();
        if let Some(domain) = &self.etcd_discovery_srv {
            // Check everything but the endpoints with a stand-in endpoint.
            self.resolve_with(vec!["http://127.0.0.1:2379".into()], env_password.as_deref())
                .or_else(|e| {
                    // TLS options need https endpoints, which discovery may well provide.
                    match e {
                        Error::Endpoint { .. } => {
                            self.resolve_with(vec!["https://127.0.0.1:2379".into()], env_password.as_deref())
                        }
                        other => Err(other),
                    }
                })?;
            return Ok(format!("etcd from DNS SRV of {domain}"));
        }
        let cfg = self.resolve_with(self.etcd_endpoints.clone(), env_password.as_deref())?;
        let user = self
            .etcd_user
            .as_deref()
            .map(|u| format!(" as user {u}"))
            .unwrap_or_default();
        Ok(format!("etcd {}{user}", cfg.endpoints_display()))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        validate: ValidateArgs,
    }

    #[test]
    fn describes_endpoints_and_refuses_bad_ones() {
        let cli = Cli::try_parse_from(["p", "--validate", "--etcd-endpoints", "http://a:1,b:2"]).unwrap();
        assert!(cli.validate.validate);
        assert_eq!(cli.etcd.describe_offline().unwrap(), "etcd http://a:1,http://b:2");
        let cli = Cli::try_parse_from(["p", "--etcd-endpoints", "http://a"]).unwrap();
        assert!(
            cli.etcd
                .describe_offline()
                .unwrap_err()
                .to_string()
                .contains("\"http://a\"")
        );
        let cli = Cli::try_parse_from(["p", "--etcd-discovery-srv", "example.com"]).unwrap();
        assert_eq!(cli.etcd.describe_offline().unwrap(), "etcd from DNS SRV of example.com");
    }
}
