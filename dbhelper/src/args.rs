//! The command line, and the environment read at the edge.
//!
//! Every flag has an environment twin (clap reads those). Two kinds of values are never
//! flags: passwords (from a file named by a flag, or from an environment variable) and the
//! docker-link variables `DB_PORT_3306_TCP_ADDR` / `DB_PORT_3306_TCP_PORT` (a fallback
//! for `--host` / `--port`). Both are read once, in [`Environment::from_process`], and
//! passed down; nothing deeper reads the environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sidekick::etcd::EtcdArgs;
use sidekick::logging::LogArgs;

use crate::Error;

/// Command-line options; every flag has an environment twin.
///
/// Build it with [`Args::try_parse_from`] / [`Args::parse`] (inherent, not clap's trait
/// methods): dbhelper renames one shared etcd flag, see [`Args::command`].
#[derive(Debug, clap::Parser)]
#[command(name = "dbhelper", version = env!("SIDEKICK_VERSION"), about, long_about = None)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// etcd connection options (used with `--etcd-key`).
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Logging options.
    #[command(flatten)]
    pub log: LogArgs,
    /// `--validate`: check this command line offline and exit.
    #[command(flatten)]
    pub validate: sidekick::validate::ValidateArgs,
}

impl Args {
    /// The command line parser. Issue 5 gives `--etcd-key` to the etcd key that holds the
    /// database address, so in dbhelper the shared TLS option `--etcd-key` (client key
    /// file, env ETCD_KEY) is renamed `--etcd-client-key`; the other binaries keep it.
    #[must_use]
    pub fn command() -> clap::Command {
        <Self as clap::CommandFactory>::command().mut_arg("etcd_key", |a| a.long("etcd-client-key"))
    }

    /// Parses `argv` (program name first) and the environment twins.
    ///
    /// # Errors
    /// clap's error, naming the offending value.
    pub fn try_parse_from<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut matches = Self::command().try_get_matches_from(argv)?;
        <Self as clap::FromArgMatches>::from_arg_matches_mut(&mut matches)
    }

    /// Parses the process's command line, exiting with clap's message on error.
    #[must_use]
    pub fn parse() -> Self {
        Self::try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Wait for the database, seed it from the dump (once), create the app user, verify, exit.
    Seed(SeedArgs),
    /// Wait until the database accepts a login and `SELECT 1`, then exit.
    Wait(DbArgs),
}

/// Where the database is and how to log in as its administrator.
#[derive(Clone, Debug, clap::Args)]
pub struct DbArgs {
    /// Database host name or address. Falls back to the docker-link variable
    /// DB_PORT_3306_TCP_ADDR, then to --etcd-key.
    #[arg(long, env = "DB_HOST")]
    pub host: Option<String>,

    /// Database port. Also accepts the docker-link form tcp://ADDR:PORT (what a link
    /// named `db` puts in DB_PORT). Falls back to DB_PORT_3306_TCP_PORT, then 3306.
    #[arg(long, env = "DB_PORT", value_parser = parse_port)]
    pub port: Option<u16>,

    /// etcd key holding the database's address (the announcer's `value` layout, e.g.
    /// /services/db/db_private_ip), used when no host is given; dbhelper waits for it to appear.
    /// (In dbhelper the TLS client key of the shared etcd options is --etcd-client-key.)
    #[arg(long = "etcd-key", alias = "db-etcd-key", env = "DB_ETCD_KEY", value_parser = parse_etcd_key)]
    pub db_etcd_key: Option<String>,

    /// Administrator user that seeds the database and creates the app user.
    #[arg(long, env = "DB_USER", default_value = "root", value_parser = parse_user)]
    pub user: String,

    /// File holding the administrator's password (first line). Otherwise the password comes
    /// from MYSQL_ROOT_PASSWORD, then from the docker-link variable DB_ENV_MYSQL_ROOT_PASSWORD.
    #[arg(long, env = "MYSQL_ROOT_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// How long to wait for the database (and for the etcd key) before giving up.
    #[arg(long, env = "DB_WAIT_TIMEOUT", default_value = "120s", value_parser = sidekick::duration::parse_positive)]
    pub wait_timeout: Duration,
}

/// What to seed and which application user to create.
#[derive(Clone, Debug, clap::Args)]
pub struct SeedArgs {
    /// Where the database is.
    #[command(flatten)]
    pub db: DbArgs,

    /// The SQL dump to load (e.g. world_innodb.sql), read as bytes in any character set.
    #[arg(long, env = "WORLD_DUMP", value_name = "FILE")]
    pub dump: PathBuf,

    /// The database to seed from a dump that names one database (or none): its tables go
    /// there whatever database the dump names. A dump naming several databases (as
    /// `--databases` and `--all-databases` write) loads each under its own name.
    #[arg(long, env = "APP_DB_NAME", default_value = "world", value_parser = parse_database)]
    pub database: String,

    /// The application user to create and grant ALL on the database to (as 'USER'@'%').
    #[arg(long, env = "APP_USER", default_value = "app", value_parser = parse_user)]
    pub app_user: String,

    /// File holding the application user's password (first line). Otherwise APP_PW.
    #[arg(long, env = "APP_PW_FILE", value_name = "FILE")]
    pub app_password_file: Option<PathBuf>,

    /// Load the dump even when the database already holds it.
    #[arg(long, env = "DB_SEED_FORCE")]
    pub force: bool,

    /// Replay the statements a dump writes into the system schemas (`mysql`, `sys`,
    /// `performance_schema`, `information_schema`) and its statements on accounts
    /// (`CREATE USER`, `GRANT`, `SET ROLE`, … from `mariadb-dump --system=users`) after the
    /// swap, as the mysql client would run them, instead of refusing the dump. They are not
    /// staged nor all-or-nothing.
    #[arg(long, env = "DB_REPLAY_SYSTEM_SCHEMAS")]
    pub replay_system_schemas: bool,

    /// Connections that load tables in parallel (1 to 16); each table's statements stay
    /// on one connection, in dump order.
    #[arg(long, env = "DB_LOAD_JOBS", default_value_t = DEFAULT_JOBS, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub jobs: u8,

    /// Upper bound of one merged statement in bytes (suffixes K, M); the server's
    /// max_allowed_packet lowers it further.
    // Not more by default: the first statement into an empty table (with the dump's
    // UNIQUE_CHECKS=0) runs in InnoDB's bulk-insert mode, which cost the server twice the
    // CPU per row on the bench dump (MariaDB 10.11); 4M batches put whole tables in it.
    #[arg(long, env = "DB_BATCH_BYTES", default_value = "256K", value_parser = parse_bytes)]
    pub batch_bytes: usize,
}

/// `--jobs` by default, as myloader's: the CPUs of the machine running dbhelper say
/// nothing of the server's, and on the 2-core bench machine 4 connections loaded the
/// generated dump faster than 2 (BENCHMARKS.md).
const DEFAULT_JOBS: u8 = 4;

/// A password: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    #[must_use]
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The password itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The environment variables dbhelper reads besides the flags' own twins.
#[derive(Clone, Default)]
pub struct Environment {
    /// `MYSQL_ROOT_PASSWORD`.
    pub mysql_root_password: Option<Secret>,
    /// `DB_ENV_MYSQL_ROOT_PASSWORD` (docker link to a container named `db`).
    pub link_root_password: Option<Secret>,
    /// `DB_PORT_3306_TCP_ADDR` (docker link).
    pub link_addr: Option<String>,
    /// `DB_PORT_3306_TCP_PORT` (docker link).
    pub link_port: Option<String>,
    /// `APP_PW`.
    pub app_password: Option<Secret>,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("mysql_root_password", &self.mysql_root_password.as_ref().map(|_| "***"))
            .field("link_root_password", &self.link_root_password.as_ref().map(|_| "***"))
            .field("link_addr", &self.link_addr)
            .field("link_port", &self.link_port)
            .field("app_password", &self.app_password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Environment {
    /// Reads the variables; empty ones count as unset.
    #[must_use]
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Environment {
            mysql_root_password: var("MYSQL_ROOT_PASSWORD").map(Secret),
            link_root_password: var("DB_ENV_MYSQL_ROOT_PASSWORD").map(Secret),
            link_addr: var("DB_PORT_3306_TCP_ADDR"),
            link_port: var("DB_PORT_3306_TCP_PORT"),
            app_password: var("APP_PW").map(Secret),
        }
    }
}

/// A user name and its password (none means an empty password).
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// Its password.
    pub password: Option<Secret>,
}

impl DbArgs {
    /// The administrator's credentials: `--password-file`, else `MYSQL_ROOT_PASSWORD`, else
    /// `DB_ENV_MYSQL_ROOT_PASSWORD`, else no password.
    ///
    /// # Errors
    /// [`Error::ReadFile`] naming an unreadable password file.
    pub fn root_credentials(&self, env: &Environment) -> Result<Credentials, Error> {
        let password = match &self.password_file {
            Some(path) => Some(read_password("root password file", path)?),
            None => env
                .mysql_root_password
                .clone()
                .or_else(|| env.link_root_password.clone()),
        };
        Ok(Credentials {
            user: self.user.clone(),
            password,
        })
    }
}

impl SeedArgs {
    /// The app user's credentials: `--app-password-file`, else `APP_PW`; one is required.
    ///
    /// # Errors
    /// [`Error::Options`] when no password is given or it is empty, [`Error::ReadFile`]
    /// naming an unreadable file.
    pub fn app_credentials(&self, env: &Environment) -> Result<Credentials, Error> {
        let password = match &self.app_password_file {
            Some(path) => read_password("app password file", path)?,
            None => env.app_password.clone().ok_or_else(|| {
                Error::Options(format!(
                    "no password for the app user {:?}: set APP_PW or --app-password-file FILE",
                    self.app_user
                ))
            })?,
        };
        if password.expose().is_empty() {
            return Err(Error::Options(format!(
                "the password for the app user {:?} is empty",
                self.app_user
            )));
        }
        Ok(Credentials {
            user: self.app_user.clone(),
            password: Some(password),
        })
    }
}

/// The first line of a password file.
fn read_password(what: &'static str, path: &Path) -> Result<Secret, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Options(format!("{what} {path:?} is not UTF-8")))?;
    Ok(Secret(text.lines().next().unwrap_or_default().to_owned()))
}

/// A port number, or the docker-link form `tcp://ADDR:PORT`.
///
/// # Errors
/// A message naming the value.
pub fn parse_port(s: &str) -> Result<u16, String> {
    let t = s.trim();
    let digits = match t.strip_prefix("tcp://") {
        Some(rest) => rest.rsplit_once(':').map(|(_, p)| p).unwrap_or_default(),
        None => t,
    };
    match digits.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!(
            "invalid port {s:?}: expected a number between 1 and 65535 or tcp://ADDR:PORT"
        )),
    }
}

/// A database name dbhelper can also derive its staging names from: 1 to 40 bytes of
/// `A-Z a-z 0-9 _ $ -`.
///
/// # Errors
/// A message naming the value.
pub fn parse_database(s: &str) -> Result<String, String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '-');
    if s.is_empty() || s.len() > 40 || !s.chars().all(ok_char) {
        return Err(format!(
            "invalid database name {s:?}: use 1 to 40 characters among A-Z a-z 0-9 _ $ -"
        ));
    }
    Ok(s.to_owned())
}

/// A MariaDB/MySQL user name: 1 to 80 characters, no quote, backslash, `@`, whitespace or
/// control character.
///
/// # Errors
/// A message naming the value.
pub fn parse_user(s: &str) -> Result<String, String> {
    let bad = |c: char| matches!(c, '\'' | '"' | '`' | '\\' | '@') || c.is_whitespace() || c.is_control();
    if s.is_empty() || s.chars().count() > 80 || s.chars().any(bad) {
        return Err(format!(
            "invalid user name {s:?}: use 1 to 80 characters without quotes, backslash, @ or spaces"
        ));
    }
    Ok(s.to_owned())
}

/// An etcd key: not empty.
///
/// # Errors
/// A message naming the value.
pub fn parse_etcd_key(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err(format!("invalid etcd key {s:?}: it is empty"));
    }
    Ok(s.to_owned())
}

/// A byte count: `1048576`, `512K`, `4M` (binary units), at least 1 KiB.
///
/// # Errors
/// A message naming the value.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let mult: usize = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("invalid size {s:?}: use e.g. 4M, 512K or a number of bytes")),
    };
    match digits.parse::<usize>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) if n >= 1024 => Ok(n),
        _ => Err(format!(
            "invalid size {s:?}: use e.g. 4M, 512K or a number of bytes (at least 1K)"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ports_table() {
        let cases: &[(&str, Option<u16>)] = &[
            ("3306", Some(3306)),
            (" 3307 ", Some(3307)),
            ("tcp://172.17.0.5:3306", Some(3306)),
            ("tcp://[::1]:3308", Some(3308)),
            ("0", None),
            ("65536", None),
            ("tcp://172.17.0.5", None),
            ("http://x:1", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_port(input).ok(), *want, "input {input:?}");
        }
        assert!(parse_port("abc").unwrap_err().contains("\"abc\""));
    }

    #[test]
    fn names_table() {
        for ok in ["world", "app_db", "w-1", "$x"] {
            assert!(parse_database(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a`b", "a b", "é", &"x".repeat(41)] {
            assert!(parse_database(bad).unwrap_err().contains(&format!("{bad:?}")), "{bad}");
        }
        for ok in ["app", "root", "web.user", "a-b"] {
            assert!(parse_user(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a'b", "a@b", "a b", "a\\b"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_table() {
        let cases: &[(&str, Option<usize>)] = &[
            ("4M", Some(4 << 20)),
            ("512K", Some(512 << 10)),
            ("2048", Some(2048)),
            ("1 MiB", Some(1 << 20)),
            ("100", None),
            ("4X", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_bytes(input).ok(), *want, "input {input:?}");
        }
    }

    #[test]
    fn command_lines() {
        let a = Args::try_parse_from(["dbhelper", "seed", "--dump", "d.sql", "--host", "h", "--port", "3307"]).unwrap();
        let Command::Seed(s) = a.command else { panic!("seed") };
        assert_eq!(s.db.host.as_deref(), Some("h"));
        assert_eq!(s.db.port, Some(3307));
        assert_eq!(s.database, "world");
        assert_eq!(s.app_user, "app");
        assert_eq!(s.db.user, "root");
        assert_eq!(s.db.wait_timeout, Duration::from_secs(120));
        assert!(!s.force);
        let a = Args::try_parse_from([
            "dbhelper",
            "wait",
            "--etcd-key",
            "/services/db/db_private_ip",
            "--wait-timeout",
            "5s",
        ])
        .unwrap();
        let Command::Wait(w) = a.command else { panic!("wait") };
        assert_eq!(w.db_etcd_key.as_deref(), Some("/services/db/db_private_ip"));
        assert_eq!(
            a.etcd.etcd_key, None,
            "--etcd-key is the record's key in dbhelper, not the TLS key"
        );
        // The shared TLS client key keeps its env twin under its dbhelper name.
        let a = Args::try_parse_from([
            "dbhelper",
            "--etcd-cert",
            "c.pem",
            "--etcd-client-key",
            "k.pem",
            "wait",
            "--db-etcd-key",
            "/services/db/db_private_ip",
        ])
        .unwrap();
        assert_eq!(a.etcd.etcd_key.as_deref(), Some(std::path::Path::new("k.pem")));
        let Command::Wait(w) = a.command else { panic!("wait") };
        assert_eq!(
            w.db_etcd_key.as_deref(),
            Some("/services/db/db_private_ip"),
            "old spelling still works"
        );
        assert!(
            Args::try_parse_from(["dbhelper", "seed"]).is_err(),
            "--dump is required"
        );
        assert!(Args::try_parse_from(["dbhelper", "seed", "--dump", "d", "--database", "a.b"]).is_err());
        assert!(Args::try_parse_from(["dbhelper", "wait", "--wait-timeout", "0s"]).is_err());
        assert!(
            Args::try_parse_from(["dbhelper", "wait", "--password", "x"]).is_err(),
            "no password flag"
        );
    }

    #[test]
    fn passwords_come_from_files_then_env_and_never_show() {
        let a = Args::try_parse_from(["dbhelper", "seed", "--dump", "d"]).unwrap();
        let Command::Seed(s) = a.command else { panic!("seed") };
        let mut env = Environment::default();
        assert!(s.db.root_credentials(&env).unwrap().password.is_none());
        env.link_root_password = Some(Secret::new("linkpw"));
        assert_eq!(
            s.db.root_credentials(&env).unwrap().password,
            Some(Secret::new("linkpw"))
        );
        env.mysql_root_password = Some(Secret::new("rootpw"));
        assert_eq!(
            s.db.root_credentials(&env).unwrap().password,
            Some(Secret::new("rootpw"))
        );

        let err = s.app_credentials(&env).unwrap_err().to_string();
        assert!(err.contains("APP_PW") && err.contains("\"app\""), "{err}");
        env.app_password = Some(Secret::new("apppw"));
        let app = s.app_credentials(&env).unwrap();
        assert_eq!(app.password, Some(Secret::new("apppw")));
        let shown = format!("{app:?} {env:?}");
        for pw in ["apppw", "rootpw", "linkpw"] {
            assert!(!shown.contains(pw), "{shown}");
        }

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let mut db = s.db.clone();
        db.password_file = Some(file.clone());
        assert_eq!(
            db.root_credentials(&env).unwrap().password,
            Some(Secret::new("from-file"))
        );
        db.password_file = Some(dir.path().join("missing"));
        let err = db.root_credentials(&env).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
