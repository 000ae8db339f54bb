//! Seeding: once, completely, atomically.
//!
//! The dump is loaded into a staging database (`<db>__dbhelper_new`), never into the live
//! one. Only when every statement succeeded, and the row counts and a marker table
//! (`_dbhelper_seed`: dump sha256, table row counts, time) are written there too, one
//! `RENAME TABLE` moves the live tables of the same names out (to `<db>__dbhelper_old`)
//! and the staged ones in. A reader therefore sees the old tables or the new ones, never
//! half a load; the marker arrives in the same rename, so it exists exactly when the data
//! it describes does.
//!
//! - A rerun finds the marker with the dump's sha256 and does nothing (unless `--force`).
//! - A run that died half-way (killed, connection dropped) left at most a staging
//!   database, which the next run drops before loading again.
//! - Runs against the same database are serialised by a server lock
//!   (`GET_LOCK('dbhelper:<db>')`), released by the server if the holder dies.
//! - On a statement the server rejects, the staging database is dropped and the error
//!   names the statement; the live database is untouched.
//!
//! Invariant: the live database is only written by the swap (preceded by its
//! `CREATE DATABASE IF NOT EXISTS`), so a failed first load leaves no trace at all.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::args::Credentials;
use crate::db::{self, Admin, db_error, ident};
use crate::dump::{self, Piece};
use crate::error::{describe, server_code, snippet};
use crate::locate::Address;
use crate::plan::{self, Action, Plan};
use crate::progress::{Progress, human_bytes};

/// The marker table, in the seeded database.
pub const MARKER_TABLE: &str = "_dbhelper_seed";

/// Bytes of a rejected statement shown in the error.
const SNIPPET_BYTES: usize = 200;

/// The staging database of `db`.
#[must_use]
pub fn staging_name(db: &str) -> String {
    format!("{db}__dbhelper_new")
}

/// Where the replaced tables of `db` go until they are dropped.
#[must_use]
pub fn retired_name(db: &str) -> String {
    format!("{db}__dbhelper_old")
}

/// A dump read, hashed and split.
#[derive(Debug)]
pub struct DumpFile {
    /// The path given.
    pub path: PathBuf,
    /// Its bytes, exactly as on disk.
    pub bytes: Vec<u8>,
    /// Lowercase hex sha256 of the bytes.
    pub sha256: String,
    /// The pieces the splitter cut.
    pub pieces: Vec<Piece>,
    /// How many statements it holds.
    pub statements: usize,
    /// The database the dump names, if any.
    pub source_database: Option<String>,
}

impl DumpFile {
    /// Reads and checks a dump before anything connects anywhere.
    ///
    /// # Errors
    /// [`Error::DumpRead`], [`Error::DumpSplit`], [`Error::DumpPlan`] or
    /// [`Error::DumpUseless`], each naming the path.
    pub fn read(path: &Path) -> Result<DumpFile, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::DumpRead {
            path: path.to_owned(),
            source,
        })?;
        let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let pieces = dump::split(&bytes).map_err(|source| Error::DumpSplit {
            path: path.to_owned(),
            source,
        })?;
        // Planned once here only to refuse a bad dump early; the loader plans again with
        // the server's packet limit.
        let checked = plan::plan(&bytes, &pieces, usize::MAX).map_err(|source| Error::DumpPlan {
            path: path.to_owned(),
            source,
        })?;
        if checked.statements == 0 {
            return Err(Error::DumpUseless {
                path: path.to_owned(),
                reason: "it holds no SQL statement".into(),
            });
        }
        let (statements, source_database) = (checked.statements, checked.source_database);
        Ok(DumpFile {
            path: path.to_owned(),
            bytes,
            sha256,
            pieces,
            statements,
            source_database,
        })
    }
}

/// What the marker records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// sha256 of the dump loaded.
    pub sha256: String,
    /// When (UTC, ISO 8601).
    pub loaded_at: String,
    /// Each table and its row count after the load, by name.
    pub tables: Vec<(String, u64)>,
}

/// What [`seed`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The database already held this dump; nothing was loaded.
    AlreadyLoaded(Marker),
    /// The dump was loaded and swapped in.
    Loaded(Marker),
}

/// How one seed runs.
#[derive(Debug)]
pub struct SeedOptions<'a> {
    /// The database to seed.
    pub database: &'a str,
    /// Reload even when the marker matches.
    pub force: bool,
    /// Upper bound of a merged statement.
    pub batch_bytes: usize,
    /// How long to wait for another dbhelper seeding the same database.
    pub lock_wait: Duration,
}

/// Makes `database` hold the dump: skips when it already does, else loads and swaps.
///
/// # Errors
/// [`Error::Rejected`] for a statement the server refuses, [`Error::Database`] for other
/// database failures, [`Error::DumpUseless`] when the dump's result cannot be swapped in,
/// [`Error::Interrupted`] on a signal; in every case the live database is as it was.
pub async fn seed(
    admin: &mut Admin,
    root: &Credentials,
    dump: &DumpFile,
    opts: &SeedOptions<'_>,
    cancel: &CancellationToken,
) -> Result<Outcome, Error> {
    let db = opts.database;
    lock(admin, db, opts.lock_wait).await?;
    let result = seed_locked(admin, root, dump, opts, cancel).await;
    let unlock = format!("SELECT RELEASE_LOCK({})", admin.literal(&lock_name(db)));
    if let Err(e) = admin.exec("releasing the seed lock", &unlock).await {
        tracing::warn!("{e}");
    }
    result
}

fn lock_name(db: &str) -> String {
    format!("dbhelper:{db}")
}

async fn lock(admin: &mut Admin, db: &str, wait: Duration) -> Result<(), Error> {
    let sql = format!(
        "SELECT GET_LOCK({}, {})",
        admin.literal(&lock_name(db)),
        wait.as_secs().max(1)
    );
    let got: Vec<Option<i64>> = admin.rows("taking the seed lock", &sql).await?;
    if got.first().copied().flatten() == Some(1) {
        return Ok(());
    }
    Err(Error::Database {
        what: format!("taking the seed lock {:?}", lock_name(db)),
        host: admin.address.host.clone(),
        port: admin.address.port,
        reason: format!("another dbhelper has held it for more than {wait:?}"),
    })
}

async fn seed_locked(
    admin: &mut Admin,
    root: &Credentials,
    dump: &DumpFile,
    opts: &SeedOptions<'_>,
    cancel: &CancellationToken,
) -> Result<Outcome, Error> {
    let db = opts.database;
    drop_leftovers(admin, db).await?;
    match read_marker(admin, db).await? {
        Some(marker) if marker.sha256 == dump.sha256 && !opts.force => {
            let present = table_names(admin, db).await?;
            match marker.tables.iter().find(|(t, _)| !present.contains(t)) {
                None => return Ok(Outcome::AlreadyLoaded(marker)),
                Some((missing, _)) => {
                    tracing::warn!(
                        database = db,
                        "table {missing:?} of the last load is missing: loading again"
                    );
                }
            }
        }
        Some(marker) if marker.sha256 == dump.sha256 => {
            tracing::info!(
                database = db,
                "database already holds this dump; --force: loading it again"
            );
        }
        Some(marker) => tracing::info!(
            database = db,
            "database holds another dump (sha256 {}), loading this one (sha256 {})",
            marker.sha256,
            dump.sha256
        ),
        None => {}
    }
    let staging = staging_name(db);
    admin
        .exec(
            &format!("creating staging database {staging:?}"),
            &format!("CREATE DATABASE {}", ident(&staging)),
        )
        .await?;
    let staged = async {
        load(admin, root, dump, opts, &staging, cancel).await?;
        let counts = count_tables(admin, dump, &staging).await?;
        write_marker(admin, &staging, dump, &counts).await
    }
    .await;
    let marker = match staged {
        Ok(marker) => marker,
        Err(e) => {
            drop_database(admin, &staging).await;
            return Err(e);
        }
    };
    if cancel.is_cancelled() {
        drop_database(admin, &staging).await;
        return Err(Error::Interrupted {
            during: format!("before the swap; database {db:?} is unchanged"),
        });
    }
    let swapped = swap(admin, db, &staging, &marker).await;
    drop_database(admin, &retired_name(db)).await;
    drop_database(admin, &staging).await;
    swapped?;
    check_foreign_keys(admin, db).await?;
    Ok(Outcome::Loaded(marker))
}

/// Drops staging and retired databases an interrupted run left behind.
async fn drop_leftovers(admin: &mut Admin, db: &str) -> Result<(), Error> {
    let names = [staging_name(db), retired_name(db)];
    let sql = format!(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({}, {})",
        admin.literal(&names[0]),
        admin.literal(&names[1])
    );
    let found: Vec<String> = admin.rows("looking for leftovers of an interrupted run", &sql).await?;
    for name in found {
        tracing::warn!(database = %name, "dropping the leftover of an interrupted run");
        admin
            .exec(
                &format!("dropping leftover database {name:?}"),
                &format!("DROP DATABASE IF EXISTS {}", ident(&name)),
            )
            .await?;
    }
    Ok(())
}

/// Drops a database, logging instead of failing (cleanup after the real error).
async fn drop_database(admin: &mut Admin, name: &str) {
    let sql = format!("DROP DATABASE IF EXISTS {}", ident(name));
    if let Err(e) = admin.exec(&format!("dropping database {name:?}"), &sql).await {
        tracing::warn!("{e}; the next run drops it");
    }
}

/// The base tables of `db`.
async fn table_names(admin: &mut Admin, db: &str) -> Result<BTreeSet<String>, Error> {
    let sql = format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {}",
        admin.literal(db)
    );
    let names: Vec<String> = admin.rows(&format!("listing the tables of {db:?}"), &sql).await?;
    Ok(names.into_iter().collect())
}

/// The marker of `db`, if it has one.
///
/// # Errors
/// [`Error::Database`] for failures other than the marker table not existing.
pub async fn read_marker(admin: &mut Admin, db: &str) -> Result<Option<Marker>, Error> {
    let sql = format!(
        "SELECT table_name, row_count, dump_sha256, DATE_FORMAT(loaded_at, '%Y-%m-%dT%H:%i:%sZ') FROM {}.{} ORDER BY table_name",
        ident(db),
        ident(MARKER_TABLE)
    );
    let rows: Vec<(String, u64, String, String)> = match admin.conn.query(sql).await {
        Ok(rows) => rows,
        // ER_NO_SUCH_TABLE, ER_BAD_DB_ERROR: never seeded by dbhelper.
        Err(e) if matches!(server_code(&e), Some(1146 | 1049)) => return Ok(None),
        Err(e) => return Err(db_error("reading the seed marker", &admin.address, &e)),
    };
    let Some((_, _, sha256, loaded_at)) = rows.first().cloned() else {
        return Ok(None);
    };
    if rows.iter().any(|r| r.2 != sha256) {
        // Not written by one load: treat as absent.
        return Ok(None);
    }
    Ok(Some(Marker {
        sha256,
        loaded_at,
        tables: rows.into_iter().map(|(t, n, _, _)| (t, n)).collect(),
    }))
}

/// Runs the plan on a connection of its own, so the dump's session settings
/// (`SET NAMES latin1`, `FOREIGN_KEY_CHECKS=0`, ...) stay there.
async fn load(
    admin: &mut Admin,
    root: &Credentials,
    dump: &DumpFile,
    opts: &SeedOptions<'_>,
    staging: &str,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let address = admin.address.clone();
    let mut conn = db::connect(db::opts(&address, root, Some(staging)), db::CONNECT_TIMEOUT)
        .await
        .map_err(|e| db_error("opening the load connection", &address, &e))?;
    let max_packet: Option<u64> = conn
        .query_first("SELECT @@max_allowed_packet")
        .await
        .map_err(|e| db_error("reading max_allowed_packet", &address, &e))?;
    // Leave room for the packet header and command byte.
    let limit = usize::try_from(max_packet.unwrap_or(4 << 20))
        .unwrap_or(usize::MAX)
        .saturating_sub(1024)
        .min(opts.batch_bytes)
        .max(1024);
    let plan = plan::plan(&dump.bytes, &dump.pieces, limit).map_err(|source| Error::DumpPlan {
        path: dump.path.clone(),
        source,
    })?;
    tracing::info!(
        database = opts.database,
        staging,
        statements = plan.statements,
        round_trips = plan.steps.len(),
        size = %human_bytes(dump.bytes.len()),
        "loading the dump into the staging database"
    );
    let started = Instant::now();
    let result = run_plan(&mut conn, &address, &plan, dump, opts.database, staging, cancel).await;
    // A broken connection cannot be closed politely; dropping it is enough.
    if result.is_ok() {
        let _ = conn.disconnect().await;
    }
    result?;
    tracing::info!(elapsed = ?started.elapsed(), "dump loaded into the staging database");
    Ok(())
}

async fn run_plan(
    conn: &mut Conn,
    address: &Address,
    plan: &Plan<'_>,
    dump: &DumpFile,
    database: &str,
    staging: &str,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let statements: Vec<&Piece> = dump.pieces.iter().filter(|p| p.statement_number().is_some()).collect();
    let mut progress = Progress::new(dump.bytes.len(), plan.statements);
    let use_staging = format!("USE {}", ident(staging)).into_bytes();
    for step in &plan.steps {
        if cancel.is_cancelled() {
            return Err(Error::Interrupted {
                during: format!("during the load; database {database:?} is unchanged"),
            });
        }
        let sql: Cow<'_, [u8]> = match &step.action {
            Action::UseStaging => Cow::Borrowed(&use_staging),
            Action::AlterStaging(options) => {
                let mut v = format!("ALTER DATABASE {}", ident(staging)).into_bytes();
                v.extend_from_slice(options);
                Cow::Owned(v)
            }
            Action::Sql(bytes) => Cow::Borrowed(bytes.as_ref()),
        };
        if let Err(e) = conn.query_drop(sql.as_ref()).await {
            return Err(rejected(conn, address, e, step, &statements, &dump.bytes, database).await);
        }
        progress.update(step.done_bytes, *step.statements.end());
    }
    progress.finish();
    Ok(())
}

/// Turns a failed step into an error naming the statement. When the step merged several
/// statements, they are replayed one by one to find the one the server refuses.
async fn rejected(
    conn: &mut Conn,
    address: &Address,
    err: mysql_async::Error,
    step: &plan::Step<'_>,
    statements: &[&Piece],
    input: &[u8],
    database: &str,
) -> Error {
    let piece = |n: usize| statements.get(n.wrapping_sub(1)).copied();
    let bytes_of = |n: usize| piece(n).map_or(&[][..], |p| &input[p.range.clone()]);
    let (first, last) = (*step.statements.start(), *step.statements.end());
    let mut found: Option<(usize, mysql_async::Error)> = None;
    if err.is_fatal() {
        // The connection broke: no replay possible.
        let number = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        return Error::Database {
            what: format!("loading statement {number} (line {}) of the dump", step.line),
            host: address.host.clone(),
            port: address.port,
            reason: format!("{}; nothing was changed in database {database:?}", describe(&err)),
        };
    }
    if first != last {
        for n in first..=last {
            if let Err(e) = conn.query_drop(bytes_of(n)).await {
                found = Some((n, e));
                break;
            }
        }
    }
    let (number, reason, line, bytes) = match found {
        Some((n, e)) => (
            n.to_string(),
            describe(&e),
            piece(n).map_or(step.line, |p| p.line),
            bytes_of(n),
        ),
        None if first == last => (first.to_string(), describe(&err), step.line, bytes_of(first)),
        None => (
            format!("{first}-{last} (merged)"),
            describe(&err),
            step.line,
            bytes_of(first),
        ),
    };
    Error::Rejected {
        number,
        line,
        reason,
        snippet: snippet(bytes, SNIPPET_BYTES),
        database: database.to_owned(),
    }
}

/// Checks what the load created and counts the rows of each table.
async fn count_tables(admin: &mut Admin, dump: &DumpFile, staging: &str) -> Result<Vec<(String, u64)>, Error> {
    let sql = format!(
        "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} ORDER BY TABLE_NAME",
        admin.literal(staging)
    );
    let tables: Vec<(String, String)> = admin.rows("listing the loaded tables", &sql).await?;
    let useless = |reason: String| Error::DumpUseless {
        path: dump.path.clone(),
        reason,
    };
    if tables.is_empty() {
        return Err(useless("loading it created no table".into()));
    }
    if let Some((name, kind)) = tables.iter().find(|(_, kind)| kind != "BASE TABLE") {
        return Err(useless(format!(
            "it creates {name:?} of type {kind}; dbhelper swaps base tables only"
        )));
    }
    // Routines, triggers and events live in the staging database and would be lost with
    // it (or, for triggers, make the cross-database rename fail): refuse them by name.
    let lit = admin.literal(staging);
    let sql = format!(
        "SELECT 'routine', ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {lit} \
         UNION ALL SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {lit} \
         UNION ALL SELECT 'event', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {lit} LIMIT 1"
    );
    let others: Vec<(String, String)> = admin.rows("listing the loaded routines", &sql).await?;
    if let Some((kind, name)) = others.first() {
        return Err(useless(format!(
            "it creates the {kind} {name:?}; dbhelper swaps base tables only"
        )));
    }
    if tables.iter().any(|(name, _)| name == MARKER_TABLE) {
        return Err(useless(format!(
            "it creates a table named {MARKER_TABLE:?}, dbhelper's marker"
        )));
    }
    let mut counts = Vec::with_capacity(tables.len());
    for (name, _) in tables {
        let sql = format!("SELECT COUNT(*) FROM {}.{}", ident(staging), ident(&name));
        let n: Vec<u64> = admin.rows(&format!("counting the rows of {name:?}"), &sql).await?;
        counts.push((name, n.first().copied().unwrap_or(0)));
    }
    Ok(counts)
}

/// Writes the marker into the staging database, so it moves in with the data.
async fn write_marker(
    admin: &mut Admin,
    staging: &str,
    dump: &DumpFile,
    counts: &[(String, u64)],
) -> Result<Marker, Error> {
    let table = format!("{}.{}", ident(staging), ident(MARKER_TABLE));
    let create = format!(
        "CREATE TABLE {table} (\
           table_name VARCHAR(64) NOT NULL PRIMARY KEY,\
           row_count BIGINT UNSIGNED NOT NULL,\
           dump_sha256 CHAR(64) NOT NULL,\
           dump_bytes BIGINT UNSIGNED NOT NULL,\
           dump_statements BIGINT UNSIGNED NOT NULL,\
           loaded_at DATETIME NOT NULL,\
           loaded_by VARCHAR(64) NOT NULL\
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='dbhelper: the dump this database was seeded from'"
    );
    admin.exec("creating the seed marker", &create).await?;
    let by = admin.literal(concat!("dbhelper ", env!("CARGO_PKG_VERSION")));
    let sha = admin.literal(&dump.sha256);
    let rows: Vec<String> = counts
        .iter()
        .map(|(name, n)| {
            format!(
                "({}, {n}, {sha}, {}, {}, @t, {by})",
                admin.literal(name),
                dump.bytes.len(),
                dump.statements
            )
        })
        .collect();
    admin
        .exec("writing the seed marker", "SET @t = UTC_TIMESTAMP()")
        .await?;
    admin
        .exec(
            "writing the seed marker",
            &format!("INSERT INTO {table} VALUES {}", rows.join(", ")),
        )
        .await?;
    let loaded_at: Vec<String> = admin
        .rows("reading the seed time", "SELECT DATE_FORMAT(@t, '%Y-%m-%dT%H:%i:%sZ')")
        .await?;
    Ok(Marker {
        sha256: dump.sha256.clone(),
        loaded_at: loaded_at.into_iter().next().unwrap_or_default(),
        tables: counts.to_vec(),
    })
}

/// The one statement that changes the live database: live tables of the same names out,
/// staged tables (and the marker) in.
async fn swap(admin: &mut Admin, db: &str, staging: &str, marker: &Marker) -> Result<(), Error> {
    // Created only now, so that a failed first load leaves no trace at all.
    admin
        .exec(
            &format!("creating database {db:?}"),
            &format!("CREATE DATABASE IF NOT EXISTS {}", ident(db)),
        )
        .await?;
    let live = table_names(admin, db).await?;
    let retired = retired_name(db);
    let moving: Vec<&str> = marker
        .tables
        .iter()
        .map(|(t, _)| t.as_str())
        .chain([MARKER_TABLE])
        .collect();
    let mut renames: Vec<String> = moving
        .iter()
        .filter(|t| live.contains(**t))
        .map(|t| format!("{}.{} TO {}.{}", ident(db), ident(t), ident(&retired), ident(t)))
        .collect();
    if !renames.is_empty() {
        admin
            .exec(
                &format!("creating database {retired:?}"),
                &format!("CREATE DATABASE {}", ident(&retired)),
            )
            .await?;
    }
    renames.extend(
        moving
            .iter()
            .map(|t| format!("{}.{} TO {}.{}", ident(staging), ident(t), ident(db), ident(t))),
    );
    admin
        .exec(
            &format!("swapping the loaded tables into {db:?}"),
            &format!("RENAME TABLE {}", renames.join(", ")),
        )
        .await?;
    tracing::info!(database = db, tables = moving.len() - 1, "swapped the loaded tables in");
    Ok(())
}

/// After the swap, no foreign key of `db` may point into the staging or retired database.
async fn check_foreign_keys(admin: &mut Admin, db: &str) -> Result<(), Error> {
    let sql = format!(
        "SELECT TABLE_NAME, CONSTRAINT_NAME, UNIQUE_CONSTRAINT_SCHEMA FROM information_schema.REFERENTIAL_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = {} AND UNIQUE_CONSTRAINT_SCHEMA <> CONSTRAINT_SCHEMA AND UNIQUE_CONSTRAINT_SCHEMA IN ({}, {})",
        admin.literal(db),
        admin.literal(&staging_name(db)),
        admin.literal(&retired_name(db)),
    );
    let wrong: Vec<(String, String, String)> = admin.rows("checking foreign keys", &sql).await?;
    match wrong.first() {
        None => Ok(()),
        Some((table, constraint, schema)) => Err(Error::Verify {
            database: db.to_owned(),
            reason: format!("foreign key {constraint:?} of table {table:?} references database {schema:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_server_limit() {
        let longest = "x".repeat(40);
        assert!(staging_name(&longest).len() <= 64);
        assert!(retired_name(&longest).len() <= 64);
        assert_ne!(staging_name("w"), retired_name("w"));
    }
}
