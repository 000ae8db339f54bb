//! Waiting until the database is really ready: a login and `SELECT 1`, not just an open port.
//!
//! Attempts back off exponentially (200 ms up to 2 s, with jitter) until the deadline. A
//! refused login (wrong user or password, host not allowed) is final at once: retrying
//! cannot fix it and would only hammer the server, so [`is_fatal`] tells the two apart.

use std::time::Duration;

use backon::BackoffBuilder;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::args::Credentials;
use crate::db;
use crate::error::{describe, server_code};
use crate::locate::Address;

/// Server error codes that no retry can fix.
const FATAL_CODES: &[u16] = &[
    1044, // ER_DBACCESS_DENIED_ERROR
    1045, // ER_ACCESS_DENIED_ERROR
    1129, // ER_HOST_IS_BLOCKED
    1130, // ER_HOST_NOT_PRIVILEGED
    1251, // ER_NOT_SUPPORTED_AUTH_MODE
    1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1862, // ER_MUST_CHANGE_PASSWORD_LOGIN
];

/// Whether a login failure with this server error code is final.
#[must_use]
pub fn is_fatal(code: u16) -> bool {
    FATAL_CODES.contains(&code)
}

/// Logs in as `creds` and runs `SELECT 1` until it works or `deadline` passes.
///
/// # Errors
/// [`Error::AccessDenied`] at once when the login is refused, [`Error::NotReady`] naming
/// host, port and the last failure at the deadline, [`Error::Interrupted`] on a signal.
pub async fn ready(
    address: &Address,
    creds: &Credentials,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Conn, Error> {
    let started = Instant::now();
    let opts = db::opts(address, creds, None);
    let mut delays = sidekick::retry::backoff(Duration::from_millis(200), Duration::from_secs(2)).build();
    let mut attempts = 0u32;
    let mut last_log = None::<Instant>;
    loop {
        attempts += 1;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .min(db::CONNECT_TIMEOUT);
        let attempt = async {
            let mut conn = db::connect(opts.clone(), budget.max(Duration::from_millis(100))).await?;
            conn.query_drop("SELECT 1").await?;
            Ok::<_, mysql_async::Error>(conn)
        };
        let err = tokio::select! {
            r = attempt => match r {
                Ok(conn) => {
                    tracing::info!(address = %address, source = %address.source, attempts, "database is ready");
                    return Ok(conn);
                }
                Err(e) => e,
            },
            () = cancel.cancelled() => return Err(Error::Interrupted { during: "while waiting for the database; nothing was changed".into() }),
        };
        if server_code(&err).is_some_and(is_fatal) {
            return Err(Error::AccessDenied {
                host: address.host.clone(),
                port: address.port,
                user: creds.user.clone(),
                reason: describe(&err),
            });
        }
        let last = describe(&err);
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::NotReady {
                host: address.host.clone(),
                port: address.port,
                waited: millis(started.elapsed()),
                attempts,
                last,
            });
        }
        if last_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            tracing::info!(address = %address, "waiting for the database: {last}");
            last_log = Some(now);
        } else {
            tracing::debug!(address = %address, "database not ready: {last}");
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(2));
        tokio::select! {
            () = tokio::time::sleep_until((now + delay).min(deadline)) => {}
            () = cancel.cancelled() => return Err(Error::Interrupted { during: "while waiting for the database; nothing was changed".into() }),
        }
    }
}

/// A duration cut to whole milliseconds, for messages.
#[must_use]
pub fn millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_codes() {
        for (code, fatal) in [
            (1045, true),
            (1044, true),
            (1698, true),
            (1130, true),
            (1040, false),
            (1053, false),
            (2013, false),
        ] {
            assert_eq!(is_fatal(code), fatal, "{code}");
        }
    }
}
