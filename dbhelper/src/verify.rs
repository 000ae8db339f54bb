//! Verification as the application sees it: log in as the app user, count every table.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::Error;
use crate::args::Credentials;
use crate::db::{self, ident};
use crate::error::describe;
use crate::locate::Address;

/// Logs in as `app` into `database` and counts the rows of each of `tables`.
///
/// # Errors
/// [`Error::Verify`] when the login or a count fails.
pub async fn counts(
    address: &Address,
    app: &Credentials,
    database: &str,
    tables: &[String],
) -> Result<Vec<(String, u64)>, Error> {
    let fail = |reason: String| Error::Verify {
        database: database.to_owned(),
        reason,
    };
    let mut conn = db::connect(db::opts(address, app, Some(database)), Duration::from_secs(10))
        .await
        .map_err(|e| {
            fail(format!(
                "the app user {:?} cannot log in at {address}: {}",
                app.user,
                describe(&e)
            ))
        })?;
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let n: Option<u64> = conn
            .query_first(format!("SELECT COUNT(*) FROM {}", ident(table)))
            .await
            .map_err(|e| {
                fail(format!(
                    "the app user {:?} cannot read {table:?}: {}",
                    app.user,
                    describe(&e)
                ))
            })?;
        out.push((table.clone(), n.unwrap_or(0)));
    }
    let _ = conn.disconnect().await;
    Ok(out)
}
