//! Connecting to the database, and writing names and strings into SQL safely.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::Error;
use crate::args::Credentials;
use crate::error::describe;
use crate::lex;
use crate::locate::Address;

/// The longest a single login may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection options for `address` as `creds`, optionally with a default database.
///
/// Built field by field (never from a URL), so a password with any characters works and
/// cannot make the driver panic. TCP only: the driver's default of switching to the
/// server's unix socket for loopback addresses is turned off, because that socket is not
/// reachable from another container and would bypass the address the user gave.
#[must_use]
pub fn opts(address: &Address, creds: &Credentials, database: Option<&str>) -> Opts {
    OptsBuilder::default()
        .ip_or_hostname(address.host.clone())
        .tcp_port(address.port)
        .user(Some(creds.user.clone()))
        .pass(creds.password.as_ref().map(|p| p.expose().to_owned()))
        .db_name(database.map(str::to_owned))
        .prefer_socket(false)
        .stmt_cache_size(0)
        .into()
}

/// Logs in, bounded by `timeout`.
///
/// # Errors
/// The driver's error; a timeout becomes an I/O error of kind `TimedOut`.
pub async fn connect(opts: Opts, timeout: Duration) -> Result<Conn, mysql_async::Error> {
    match tokio::time::timeout(timeout, Conn::new(opts)).await {
        Ok(res) => res,
        Err(_) => Err(mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer to the login within {timeout:?}"),
        )))),
    }
}

/// Sends `statements` (each without its delimiter) in one round trip, as one
/// multi-statement query; the server runs them in order and stops at the first it refuses.
/// A statement that cannot be followed by another in one query (it holds several, under a
/// `DELIMITER $$`: see [`lex::single_statement_end`]) ends its query, and the rest go in
/// the next: one more round trip, the same order.
///
/// # Errors
/// The index of the statement the server refused, with its error (for a broken
/// connection, the index of the first statement whose answer did not arrive).
pub async fn exec_batch(conn: &mut Conn, statements: &[&[u8]]) -> Result<(), (usize, mysql_async::Error)> {
    let mut first = 0;
    while first < statements.len() {
        let mut parts: Vec<&[u8]> = Vec::new();
        for (i, &s) in statements.iter().enumerate().skip(first) {
            let last = i + 1 == statements.len();
            // Cut after its code when another follows: under a `DELIMITER $$` a statement
            // may end in `;` (`SET @a = 1;$$`) or `; # note`, an empty statement before
            // the next one (a syntax error), which the server ignores only at the end.
            match (last, lex::single_statement_end(s)) {
                (false, Some(end)) => parts.push(s.get(..end).unwrap_or(s)),
                _ => {
                    parts.push(s);
                    break;
                }
            }
        }
        match exec_query(conn, &parts).await {
            Ok(()) => first += parts.len(),
            // A version comment this server skips (mariadb-dump's `/*M!100616 … */` on an
            // older server) leaves an empty statement, which only the end of a query may
            // hold: the ones before it ran; it goes alone, as the client sends it.
            Err((i, e))
                if parts.len() > 1
                    && matches!(&e, mysql_async::Error::Server(s) if matches!(s.code, 1064 | 1065))
                    && parts.get(i).is_some_and(|p| lex::only_version_comments(p)) =>
            {
                let alone = statements.get(first + i).copied().unwrap_or_default();
                exec_query(conn, &[alone]).await.map_err(|(_, e)| (first + i, e))?;
                first += i + 1;
            }
            Err((i, e)) => return Err((first + i, e)),
        }
    }
    Ok(())
}

/// Sends `parts` (each one statement, but for the last) as one query; which of them the
/// server refused.
async fn exec_query(conn: &mut Conn, parts: &[&[u8]]) -> Result<(), (usize, mysql_async::Error)> {
    let query: std::borrow::Cow<'_, [u8]> = match parts {
        // Alone (an insert of megabytes, often): not copied once more.
        [one] => std::borrow::Cow::Borrowed(one),
        _ => {
            let mut query = Vec::with_capacity(parts.iter().map(|s| s.len() + 3).sum());
            for (i, s) in parts.iter().enumerate() {
                if i > 0 {
                    query.extend_from_slice(b"\n;\n");
                }
                query.extend_from_slice(s);
            }
            std::borrow::Cow::Owned(query)
        }
    };
    // The last part may run as several statements on the server: its answers count as its.
    let at = |answered: usize| answered.min(parts.len().saturating_sub(1));
    // How the driver (mysql_async 0.37) hands out the answers, pinned by the test
    // `a_batch_runs_in_order_and_names_the_statement_the_server_refuses`: `query_iter`
    // reads the first; each `collect` reads the rows of one and the head of the next,
    // keeping a server's refusal there for the following read (a broken connection is
    // returned at once), and then `is_empty` is true, as it is when the head read is the
    // last answer.
    let mut result = conn.query_iter(query.as_ref()).await.map_err(|e| (0, e))?;
    // Statements whose answer (or its head) has been read.
    let mut answered = 1;
    loop {
        if let Err(e) = result.collect::<mysql_async::Row>().await {
            return Err(match e {
                // Waiting for the head of the next one (the statements of a dump return
                // no rows to read first).
                mysql_async::Error::Io(_) => (at(answered), e),
                // Failed among the rows of the last one read.
                e => (at(answered - 1), e),
            });
        }
        if result.is_empty() {
            // The last answer, or the refusal of the statement after the last one read.
            return result
                .collect::<mysql_async::Row>()
                .await
                .map(|_| ())
                .map_err(|e| (at(answered), e));
        }
        answered += 1;
    }
}

/// A name as a quoted identifier: `` `a``b` ``.
#[must_use]
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal that reads back as `s` whether or not the session has
/// `NO_BACKSLASH_ESCAPES` (say which with `backslash_escapes`).
#[must_use]
pub fn literal(s: &str, backslash_escapes: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if backslash_escapes => out.push_str("\\\\"),
            '\0' if backslash_escapes => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An administrator connection with what dbhelper needs to know about its session.
#[derive(Debug)]
pub struct Admin {
    /// The connection.
    pub conn: Conn,
    /// Where it goes, for messages.
    pub address: Address,
    /// Whether backslashes escape in string literals (no `NO_BACKSLASH_ESCAPES`).
    pub backslash_escapes: bool,
}

impl Admin {
    /// Reads the session facts of a fresh connection.
    ///
    /// # Errors
    /// [`Error::Database`] when the server does not answer.
    pub async fn new(mut conn: Conn, address: Address) -> Result<Admin, Error> {
        let mode: Option<String> = conn
            .query_first("SELECT @@SESSION.sql_mode")
            .await
            .map_err(|e| db_error("reading sql_mode", &address, &e))?;
        let backslash_escapes = !mode
            .unwrap_or_default()
            .to_ascii_uppercase()
            .contains("NO_BACKSLASH_ESCAPES");
        Ok(Admin {
            conn,
            address,
            backslash_escapes,
        })
    }

    /// A string literal for this session.
    #[must_use]
    pub fn literal(&self, s: &str) -> String {
        literal(s, self.backslash_escapes)
    }

    /// Runs a statement that returns nothing.
    ///
    /// # Errors
    /// [`Error::Database`] naming `what`.
    pub async fn exec(&mut self, what: &str, sql: &str) -> Result<(), Error> {
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| db_error(what, &self.address, &e))
    }

    /// Runs a query and collects its rows.
    ///
    /// # Errors
    /// [`Error::Database`] naming `what`.
    pub async fn rows<T>(&mut self, what: &str, sql: &str) -> Result<Vec<T>, Error>
    where
        T: mysql_async::prelude::FromRow + Send + 'static,
    {
        self.conn
            .query(sql)
            .await
            .map_err(|e| db_error(what, &self.address, &e))
    }
}

/// An [`Error::Database`] for `what` at `address`.
#[must_use]
pub fn db_error(what: &str, address: &Address, e: &mysql_async::Error) -> Error {
    Error::Database {
        what: what.to_owned(),
        host: address.host.clone(),
        port: address.port,
        reason: describe(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers() {
        let cases: &[(&str, bool, &str)] = &[
            ("plain", true, "'plain'"),
            ("it's", true, "'it''s'"),
            (r"back\slash", true, r"'back\\slash'"),
            (r"back\slash", false, r"'back\slash'"),
            ("nul\0", true, r"'nul\0'"),
            ("é", true, "'é'"),
        ];
        for (input, escapes, want) in cases {
            assert_eq!(literal(input, *escapes), *want, "{input:?} {escapes}");
        }
        assert_eq!(ident("City"), "`City`");
        assert_eq!(ident("a`b"), "`a``b`");
    }
}
