//! The one error type of dbhelper, and the exit status each error means.

use std::path::PathBuf;
use std::time::Duration;

use crate::dump::SplitError;
use crate::plan::PlanError;

/// Exit status: the command line or an option value cannot be used (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the dump is missing, unreadable or malformed.
pub const EXIT_DUMP: u8 = 3;
/// Exit status: the database was not found or not ready before `--wait-timeout`.
pub const EXIT_NOT_READY: u8 = 4;
/// Exit status: the database refused the root login (wrong user or password).
pub const EXIT_ACCESS_DENIED: u8 = 5;
/// Exit status: anything else (a statement the server rejected, a broken connection, ...).
pub const EXIT_FAILURE: u8 = 1;

/// Everything that stops dbhelper. Messages name the offending value and fit on one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option value or combination that cannot work.
    #[error("{0}")]
    Options(String),

    /// A file named by an option could not be read.
    #[error("cannot read {what} {path:?}: {source}")]
    ReadFile {
        /// What the file is for.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The dump file could not be read.
    #[error("cannot read the dump {path:?}: {source}")]
    DumpRead {
        /// The path given with `--dump`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The dump could not be split into statements.
    #[error("cannot use the dump {path:?}: {source}")]
    DumpSplit {
        /// The path given with `--dump`.
        path: PathBuf,
        /// Where it goes wrong.
        #[source]
        source: SplitError,
    },

    /// The dump's statements cannot be loaded into one database.
    #[error("cannot use the dump {path:?}: {source}")]
    DumpPlan {
        /// The path given with `--dump`.
        path: PathBuf,
        /// Why.
        #[source]
        source: PlanError,
    },

    /// The dump holds no statement, or loading it created no table.
    #[error("cannot use the dump {path:?}: {reason}")]
    DumpUseless {
        /// The path given with `--dump`.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The shared etcd plumbing refused the options or could not connect.
    #[error("{0}")]
    Etcd(#[from] sidekick::Error),

    /// The etcd key naming the database did not appear in time.
    #[error("etcd key {key:?} did not give a database address at {endpoints} within {waited:?}{last}")]
    EtcdKeyTimeout {
        /// The key from `--etcd-key`.
        key: String,
        /// The etcd endpoints asked.
        endpoints: String,
        /// How long dbhelper waited.
        waited: Duration,
        /// `"; last error: ..."` or empty.
        last: String,
    },

    /// The database did not accept a login and `SELECT 1` in time.
    #[error("database at {host}:{port} is not ready after {waited:?} ({attempts} attempts); last error: {last}")]
    NotReady {
        /// Host tried.
        host: String,
        /// Port tried.
        port: u16,
        /// How long dbhelper waited.
        waited: Duration,
        /// How many logins were tried.
        attempts: u32,
        /// The last failure.
        last: String,
    },

    /// The server refused the login: retrying cannot help.
    #[error("database at {host}:{port} refused the login of {user:?}: {reason}")]
    AccessDenied {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The user that was refused.
        user: String,
        /// The server's answer.
        reason: String,
    },

    /// A statement of the dump was rejected; the load was rolled back.
    /// A statement longer than the server's `max_allowed_packet`: the server would refuse
    /// it in the middle of the load, so the dump is refused before anything is changed.
    #[error(
        "statement {number} (line {line}) of the dump is {len} bytes, more than the server's max_allowed_packet of {max} bytes; it begins: {snippet}; nothing was loaded (raise max_allowed_packet or split the statement)"
    )]
    StatementTooLarge {
        /// 1-based number of the statement in the dump.
        number: usize,
        /// Its line.
        line: usize,
        /// Its length in bytes.
        len: usize,
        /// The server's `max_allowed_packet`.
        max: u64,
        /// Its first 200 bytes, printable.
        snippet: String,
    },

    #[error(
        "statement {number} (line {line}) of the dump was rejected: {reason}; it begins: {snippet}; nothing was changed in {database}"
    )]
    Rejected {
        /// 1-based number of the statement in the dump.
        number: String,
        /// Its line.
        line: usize,
        /// The server's error.
        reason: String,
        /// Its first 200 bytes, printable.
        snippet: String,
        /// The target databases (`database "w"`), left as they were.
        database: String,
    },

    /// A statement of the objects step (after the swap) was rejected.
    #[error(
        "statement {number} (line {line}) of the dump was rejected after the swap: {reason}; it begins: {snippet}; the tables of {database} are in place, the views, triggers, routines and events from this statement on are missing (the marker says so; the next run creates them again)"
    )]
    ObjectRejected {
        /// 1-based number of the statement in the dump.
        number: String,
        /// Its line.
        line: usize,
        /// The server's error.
        reason: String,
        /// Its first 200 bytes, printable.
        snippet: String,
        /// The target databases.
        database: String,
    },

    /// A database operation failed.
    #[error("{what} at {host}:{port} failed: {reason}")]
    Database {
        /// What dbhelper was doing.
        what: String,
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The server's or driver's error.
        reason: String,
    },

    /// The seeded database does not hold what the load recorded.
    #[error("verification of database {database:?} failed: {reason}")]
    Verify {
        /// The target database.
        database: String,
        /// What does not match.
        reason: String,
    },

    /// A signal stopped dbhelper before it finished.
    #[error("stopped by a signal {during}")]
    Interrupted {
        /// What was going on, and what it means for the database.
        during: String,
    },
}

impl Error {
    /// The process exit status for this error (see the README's table).
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Options(_) | Error::ReadFile { .. } => EXIT_USAGE,
            Error::Etcd(sidekick::Error::Connect { .. } | sidekick::Error::ConnectTimeout { .. }) => EXIT_NOT_READY,
            Error::Etcd(_) => EXIT_USAGE,
            Error::DumpRead { .. } | Error::DumpSplit { .. } | Error::DumpPlan { .. } | Error::DumpUseless { .. } => {
                EXIT_DUMP
            }
            Error::EtcdKeyTimeout { .. } | Error::NotReady { .. } => EXIT_NOT_READY,
            Error::AccessDenied { .. } => EXIT_ACCESS_DENIED,
            Error::Rejected { .. }
            | Error::StatementTooLarge { .. }
            | Error::ObjectRejected { .. }
            | Error::Database { .. }
            | Error::Verify { .. }
            | Error::Interrupted { .. } => EXIT_FAILURE,
        }
    }
}

/// A driver error as one readable line: `ERROR 1045 (28000): Access denied ...` for the
/// server's errors, the I/O or protocol problem otherwise.
#[must_use]
pub fn describe(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("ERROR {} ({}): {}", s.code, s.state, s.message),
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => io.to_string(),
        #[allow(unreachable_patterns)]
        mysql_async::Error::Io(io) => io.to_string(),
        mysql_async::Error::Driver(d) => format!("driver error: {d}"),
        other => other.to_string(),
    }
}

/// The server's error code, when the error came from the server.
#[must_use]
pub fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// The first `max` bytes of a statement as one printable line: valid UTF-8 shown as text,
/// other bytes as `\xNN`, control characters (newlines too) as spaces, `…` when cut.
#[must_use]
pub fn snippet(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut out = String::with_capacity(cut.len() + 8);
    for chunk in cut.utf8_chunks() {
        for c in chunk.valid().chars() {
            out.push(if c.is_control() { ' ' } else { c });
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    if bytes.len() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets() {
        assert_eq!(snippet(b"SELECT\n1", 200), "SELECT 1");
        assert_eq!(snippet(b"INSERT 'B\xe9ja\xefa'", 200), "INSERT 'B\\xE9ja\\xEFa'");
        assert_eq!(snippet("é".as_bytes(), 200), "é");
        assert_eq!(snippet(b"abcdef", 3), "abc…");
        // A cut through a UTF-8 character shows the cut bytes, never panics.
        assert_eq!(snippet("aé".as_bytes(), 2), "a\\xC3…");
    }

    #[test]
    fn exit_codes() {
        let not_ready = Error::NotReady {
            host: "h".into(),
            port: 1,
            waited: Duration::from_secs(1),
            attempts: 1,
            last: "x".into(),
        };
        assert_eq!(not_ready.exit_code(), EXIT_NOT_READY);
        let denied = Error::AccessDenied {
            host: "h".into(),
            port: 1,
            user: "root".into(),
            reason: "x".into(),
        };
        assert_eq!(denied.exit_code(), EXIT_ACCESS_DENIED);
        assert_eq!(Error::Options("x".into()).exit_code(), EXIT_USAGE);
        let dump = Error::DumpUseless {
            path: "d".into(),
            reason: "x".into(),
        };
        assert_eq!(dump.exit_code(), EXIT_DUMP);
    }
}
