//! Seeding: once, completely, atomically (as far as the server allows).
//!
//! Each database the dump loads gets a staging database (`<db>__dbhelper_new`); the
//! tables and their rows are loaded there, never into the live databases. Only when every
//! statement succeeded, and the row counts and a marker table (`_dbhelper_seed`: dump
//! sha256, table row counts, time, and whether the objects step is done) are written there
//! too, one `RENAME TABLE` moves the live tables of the same names out (to
//! `<db>__dbhelper_old`) and the staged ones in, in every database at once. A reader sees
//! the old tables or the new ones, never half a load; the marker arrives in the same
//! rename, so it exists exactly when the data it describes does.
//!
//! Views, triggers, procedures, functions and events cannot move with `RENAME TABLE`
//! (a table with triggers cannot change database, a view cannot, routines and events
//! belong to their database): they are created in the live databases right after the swap,
//! in one short step (the "objects step"), replaying the dump's own statements with its
//! session settings. The marker says whether that step finished; a run killed inside it
//! leaves `objects_done = 0`, and the next run completes it.
//!
//! - A rerun finds the markers with the dump's sha256 and does nothing (unless `--force`).
//! - A run that died before the swap left at most staging databases, which the next run
//!   drops before loading again.
//! - Runs against the same databases are serialised by server locks
//!   (`GET_LOCK('dbhelper:<db>')`), released by the server if the holder dies.
//! - On a statement the server rejects before the swap, the staging databases are dropped
//!   and the error names the statement; the live databases are untouched.
//!
//! Invariant: before the swap, the live databases are only written by their
//! `CREATE DATABASE IF NOT EXISTS` and by dropping the triggers of the tables the swap
//! replaces (a table with triggers cannot be renamed to another database); a failed first
//! load leaves no trace at all.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::args::Credentials;
use crate::db::{self, Admin, db_error, ident};
use crate::error::{describe, server_code, snippet};
use crate::locate::Address;
use crate::plan::{self, Action, Database, Definer, ObjectKind, Route, Step, Verb};
use crate::progress::{Progress, human_bytes};
use crate::source::Source;

pub use crate::plan::MARKER_TABLE;

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

/// A dump checked by a first streaming pass: what it holds, without holding it.
#[derive(Debug)]
pub struct DumpFile {
    /// The path given.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: usize,
    /// Lowercase hex sha256 of the bytes.
    pub sha256: String,
    /// How many statements it holds.
    pub statements: usize,
    /// The databases the dump names (one unnamed entry when none).
    pub databases: Vec<Database>,
    /// How many view, trigger, routine and event statements it holds.
    pub objects: usize,
    /// The steps of the objects step (views, triggers, routines, events, the session
    /// statements around them, replayed system-schema statements): kept from this pass, as
    /// they are few and small and needed after the swap, also by a run that only completes
    /// an interrupted objects step.
    pub object_steps: Vec<plan::Step<'static>>,
    /// How many tables the tables phase writes, when each of its statements belongs to one
    /// table (it can be spread over several connections); `None` when one belongs to no
    /// single table (it loads on one connection, in dump order).
    pub spread_tables: Option<usize>,
    /// The bytes of each table's statements, in order of first appearance: the loader
    /// deals the tables to its connections by them ([`plan::Router::by_size`]).
    pub table_sizes: Vec<usize>,
    /// Whether the statements of system schemas are replayed (else refused).
    pub replay_system: bool,
    /// Its longest statement: checked against the server's `max_allowed_packet` before
    /// anything is changed (the loading passes stream, so this pass is the one that can).
    pub longest: Option<Longest>,
}

/// A dump's longest statement (the first of that length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Longest {
    /// 1-based number of the statement in the dump.
    pub number: usize,
    /// The line it starts on.
    pub line: usize,
    /// Its length in bytes (without the delimiter).
    pub len: usize,
    /// Its beginning, printable.
    pub snippet: String,
}

impl DumpFile {
    /// Reads and checks a dump before anything connects anywhere, as a stream.
    ///
    /// # Errors
    /// [`Error::DumpRead`], [`Error::DumpSplit`], [`Error::DumpPlan`] or
    /// [`Error::DumpUseless`], each naming the path.
    pub fn read(path: &Path, replay_system: bool) -> Result<DumpFile, Error> {
        let source = Source::open(path)?;
        // Planned without merging (a limit of 0) only to check it and learn its shape; the
        // loader plans again, in its own pass, with the server's packet limit.
        let mut planner = plan::Planner::new(0, replay_system);
        let mut router = Some(plan::Router::new(1));
        let plan_error = |source| Error::DumpPlan {
            path: path.to_owned(),
            source,
        };
        let mut longest: Option<Longest> = None;
        let summary = source.for_each_statement(|st| {
            if longest.as_ref().is_none_or(|l| st.bytes.len() > l.len) {
                longest = Some(Longest {
                    number: st.number,
                    line: st.line,
                    len: st.bytes.len(),
                    snippet: snippet(st.bytes, SNIPPET_BYTES),
                });
            }
            // A statement of a table already seen (its inserts, mostly) is only counted:
            // the loading pass plans it, and copying it here cost a third of this pass.
            let seen = router.as_mut().is_some_and(|r| r.dealt_lane(st.bytes).is_some());
            if !(seen && planner.skip(st.number)) {
                planner
                    .statement(st.bytes, st.number, st.line, st.end)
                    .map_err(plan_error)?;
            }
            for step in planner.take_tables() {
                if router.as_mut().is_some_and(|r| r.route(&step).is_none()) {
                    router = None;
                }
            }
            Ok(())
        })?;
        let markers = planner.marker_statements();
        if markers > 0 {
            tracing::warn!(
                statements = markers,
                "the dump holds dbhelper's marker table {MARKER_TABLE:?} (it was dumped from a database dbhelper seeded): left out, this load writes its own"
            );
        }
        let checked = planner.finish();
        for step in &checked.tables {
            if router.as_mut().is_some_and(|r| r.route(step).is_none()) {
                router = None;
            }
        }
        if checked.statements == 0 {
            return Err(Error::DumpUseless {
                path: path.to_owned(),
                reason: "it holds no SQL statement".into(),
            });
        }
        let objects = checked.object_count();
        Ok(DumpFile {
            path: path.to_owned(),
            size: summary.bytes,
            sha256: summary.sha256,
            statements: checked.statements,
            databases: checked.databases,
            objects,
            object_steps: checked.objects,
            spread_tables: router.as_ref().map(plan::Router::tables),
            table_sizes: router.map(|r| r.sizes().to_vec()).unwrap_or_default(),
            replay_system,
            longest,
        })
    }

    /// Where each of the dump's databases goes: a dump that names one database (or none)
    /// goes to `database`; a dump that names several loads each under its own name.
    #[must_use]
    pub fn targets(&self, database: &str) -> Vec<Target> {
        targets(&self.databases, database)
    }
}

/// Where one database of the dump goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The live database.
    pub live: String,
    /// A system schema: not staged, its statements replayed after the swap.
    pub system: bool,
    /// The dump's `CREATE DATABASE` options.
    pub options: Option<Vec<u8>>,
}

impl Target {
    /// Its staging database.
    #[must_use]
    pub fn staging(&self) -> String {
        staging_name(&self.live)
    }
}

/// See [`DumpFile::targets`].
#[must_use]
pub fn targets(databases: &[Database], database: &str) -> Vec<Target> {
    let user_databases = databases.iter().filter(|d| !d.system).count();
    databases
        .iter()
        .map(|d| Target {
            live: match (&d.name, d.system || user_databases > 1) {
                (Some(name), true) => name.clone(),
                _ => database.to_owned(),
            },
            system: d.system,
            options: d.options.clone(),
        })
        .collect()
}

/// What the marker of one database records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// sha256 of the dump loaded.
    pub sha256: String,
    /// When (UTC, ISO 8601).
    pub loaded_at: String,
    /// Each table and its row count after the load, by name.
    pub tables: Vec<(String, u64)>,
    /// Whether the views, triggers, routines and events were all created after the swap.
    pub objects_done: bool,
}

/// What [`seed`] did, with the marker of each database it seeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The databases already held this dump; nothing was loaded.
    AlreadyLoaded(Vec<(String, Marker)>),
    /// The tables were in place from an earlier run killed during the objects step; this
    /// run created the objects.
    Completed(Vec<(String, Marker)>),
    /// The dump was loaded and swapped in.
    Loaded(Vec<(String, Marker)>),
}

impl Outcome {
    /// The markers.
    #[must_use]
    pub fn markers(&self) -> &[(String, Marker)] {
        match self {
            Outcome::AlreadyLoaded(m) | Outcome::Completed(m) | Outcome::Loaded(m) => m,
        }
    }
}

/// How one seed runs.
#[derive(Debug)]
pub struct SeedOptions<'a> {
    /// The database a one-database dump goes to.
    pub database: &'a str,
    /// Reload even when the marker matches.
    pub force: bool,
    /// Upper bound of a merged statement.
    pub batch_bytes: usize,
    /// Connections loading tables in parallel.
    pub jobs: usize,
    /// How long to wait for another dbhelper seeding the same database.
    pub lock_wait: Duration,
}

/// Makes the databases hold the dump: skips when they already do, completes an
/// interrupted objects step, else loads and swaps.
///
/// # Errors
/// [`Error::Rejected`] for a statement the server refuses before the swap,
/// [`Error::ObjectRejected`] after it, [`Error::Database`] for other database failures,
/// [`Error::DumpUseless`] when the dump's result cannot be swapped in,
/// [`Error::Interrupted`] on a signal before the swap.
pub async fn seed(
    admin: &mut Admin,
    root: &Credentials,
    dump: &DumpFile,
    opts: &SeedOptions<'_>,
    cancel: &CancellationToken,
) -> Result<Outcome, Error> {
    refuse_oversized_statements(admin, dump).await?;
    let targets = dump.targets(opts.database);
    let mut names: Vec<&str> = targets.iter().filter(|t| !t.system).map(|t| t.live.as_str()).collect();
    names.sort_unstable();
    for db in &names {
        lock(admin, db, opts.lock_wait).await?;
    }
    let result = seed_locked(admin, root, dump, opts, &targets, cancel).await;
    for db in &names {
        let unlock = format!("SELECT RELEASE_LOCK({})", admin.literal(&lock_name(db)));
        if let Err(e) = admin.exec("releasing the seed lock", &unlock).await {
            tracing::warn!("{e}");
        }
    }
    result
}

/// Refuses the dump when one of its statements is longer than the server takes in one
/// packet, before any lock, staging database or row: otherwise the load would stop at
/// that statement with half the tables staged.
async fn refuse_oversized_statements(admin: &mut Admin, dump: &DumpFile) -> Result<(), Error> {
    let max: Vec<Option<u64>> = admin
        .rows("reading max_allowed_packet", "SELECT @@max_allowed_packet")
        .await?;
    let Some(max) = max.first().copied().flatten() else {
        return Ok(());
    };
    match oversized_statement(dump.longest.as_ref(), max) {
        Some(l) => Err(Error::StatementTooLarge {
            number: l.number,
            line: l.line,
            len: l.len,
            max,
            snippet: l.snippet.clone(),
        }),
        None => Ok(()),
    }
}

/// The dump's longest statement when it does not fit in a packet of `max_packet` bytes
/// (the statement and its command byte).
#[must_use]
pub fn oversized_statement(longest: Option<&Longest>, max_packet: u64) -> Option<&Longest> {
    longest.filter(|l| l.len as u64 >= max_packet)
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

/// What the live databases' markers say about this dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Every database holds it, objects included.
    Loaded,
    /// Every database holds its tables; the objects step did not finish.
    ObjectsPending,
    /// Load it.
    Load,
}

/// The decision from the markers (one per target: `None` when absent) and whether every
/// table they list still exists.
#[must_use]
pub fn state(markers: &[Option<Marker>], sha256: &str, tables_present: bool) -> State {
    let all_this_dump = !markers.is_empty() && markers.iter().all(|m| m.as_ref().is_some_and(|m| m.sha256 == sha256));
    if !all_this_dump || !tables_present {
        return State::Load;
    }
    if markers.iter().flatten().all(|m| m.objects_done) {
        State::Loaded
    } else {
        State::ObjectsPending
    }
}

async fn seed_locked(
    admin: &mut Admin,
    root: &Credentials,
    dump: &DumpFile,
    opts: &SeedOptions<'_>,
    targets: &[Target],
    cancel: &CancellationToken,
) -> Result<Outcome, Error> {
    let user: Vec<&Target> = targets.iter().filter(|t| !t.system).collect();
    let mut markers = Vec::with_capacity(user.len());
    let mut present = true;
    for t in &user {
        drop_leftovers(admin, &t.live).await?;
        let marker = read_marker(admin, &t.live).await?;
        if let Some(m) = &marker {
            let live = table_names(admin, &t.live).await?;
            if let Some((missing, _)) = m.tables.iter().find(|(name, _)| !live.contains(name)) {
                tracing::warn!(database = %t.live, "table {missing:?} of the last load is missing: loading again");
                present = false;
            }
        }
        markers.push(marker);
    }
    let named = |markers: Vec<Option<Marker>>| -> Vec<(String, Marker)> {
        user.iter()
            .map(|t| t.live.clone())
            .zip(markers.into_iter().flatten())
            .collect()
    };
    match (state(&markers, &dump.sha256, present), opts.force) {
        (State::Loaded, false) => return Ok(Outcome::AlreadyLoaded(named(markers))),
        (State::ObjectsPending, false) => {
            tracing::warn!(
                "the tables of this dump are in place but an earlier run stopped while creating its views, triggers, routines and events: creating them now"
            );
            create_objects(admin, root, dump, targets).await?;
            let markers = named(markers)
                .into_iter()
                .map(|(db, m)| {
                    (
                        db,
                        Marker {
                            objects_done: true,
                            ..m
                        },
                    )
                })
                .collect();
            return Ok(Outcome::Completed(markers));
        }
        (State::Loaded | State::ObjectsPending, true) => {
            tracing::info!("the databases already hold this dump; --force: loading it again");
        }
        (State::Load, _) => {
            for (t, m) in user.iter().zip(&markers) {
                if let Some(m) = m.as_ref().filter(|m| m.sha256 != dump.sha256) {
                    tracing::info!(
                        database = %t.live,
                        "database holds another dump (sha256 {}), loading this one (sha256 {})",
                        m.sha256,
                        dump.sha256
                    );
                }
            }
        }
    }
    for t in &user {
        let staging = t.staging();
        let options = String::from_utf8_lossy(t.options.as_deref().unwrap_or_default()).into_owned();
        admin
            .exec(
                &format!("creating staging database {staging:?}"),
                &format!("CREATE DATABASE {}{options}", ident(&staging)),
            )
            .await?;
    }
    let staged = async {
        load_tables(admin, root, dump, opts, targets, cancel).await?;
        let mut out = Vec::with_capacity(user.len());
        for t in &user {
            let counts = count_tables(admin, dump, &t.staging()).await?;
            out.push((t.live.clone(), write_marker(admin, &t.staging(), dump, &counts).await?));
        }
        Ok::<_, Error>(out)
    }
    .await;
    let markers = match staged {
        Ok(markers) => markers,
        Err(e) => {
            drop_staging(admin, &user).await;
            return Err(e);
        }
    };
    if cancel.is_cancelled() {
        drop_staging(admin, &user).await;
        return Err(Error::Interrupted {
            during: format!("before the swap; nothing was changed in {}", describe_databases(&user)),
        });
    }
    let window = Instant::now();
    let swapped = swap(admin, &user, &markers).await;
    let objects = match swapped {
        Ok(()) if dump.objects > 0 || dump.databases.iter().any(|d| d.system) => {
            create_objects(admin, root, dump, targets).await.map(|()| {
                tracing::info!(
                    window = ?window.elapsed(),
                    objects = dump.objects,
                    "the swap and the views, triggers, routines and events after it took this long"
                );
            })
        }
        other => other,
    };
    // The old tables (now in the retired database) and the emptied staging databases go
    // only after the objects: dropping 40 tables takes a second, and readers would wait
    // that long longer for the views and routines. A run that dies first leaves them for
    // the next run's `drop_leftovers`. The swap is one RENAME TABLE: if it failed, nothing
    // moved and the retired database is empty.
    for t in &user {
        drop_database(admin, &retired_name(&t.live)).await;
    }
    drop_staging(admin, &user).await;
    objects?;
    for t in &user {
        check_foreign_keys(admin, &t.live).await?;
    }
    let markers = markers
        .into_iter()
        .map(|(db, m)| {
            (
                db,
                Marker {
                    objects_done: true,
                    ..m
                },
            )
        })
        .collect();
    Ok(Outcome::Loaded(markers))
}

/// Drops the staging databases of `user`.
async fn drop_staging(admin: &mut Admin, user: &[&Target]) {
    for t in user {
        drop_database(admin, &t.staging()).await;
    }
}

/// `database "w"` or `databases "a", "b"`, for messages.
fn describe_databases(targets: &[&Target]) -> String {
    let names: Vec<String> = targets.iter().map(|t| format!("{:?}", t.live)).collect();
    match names.len() {
        1 => format!("database {}", names[0]),
        _ => format!("databases {}", names.join(", ")),
    }
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

/// The `TABLE_TYPE`s of `information_schema.TABLES` that hold data and move between
/// databases with `RENAME TABLE` (checked on MariaDB 10.11): base tables, system-versioned
/// tables and sequences (`CREATE SEQUENCE`, as mariadb-dump writes them with a `SETVAL`).
const TABLE_TYPES: [&str; 3] = ["BASE TABLE", "SYSTEM VERSIONED", "SEQUENCE"];

/// [`TABLE_TYPES`] as a list for `TABLE_TYPE IN (…)`.
fn table_types_sql() -> String {
    TABLE_TYPES.map(|t| format!("'{t}'")).join(", ")
}

/// The tables of `db` (every type of [`TABLE_TYPES`]).
async fn table_names(admin: &mut Admin, db: &str) -> Result<BTreeSet<String>, Error> {
    let sql = format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_TYPE IN ({})",
        admin.literal(db),
        table_types_sql()
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
        "SELECT table_name, row_count, dump_sha256, DATE_FORMAT(loaded_at, '%Y-%m-%dT%H:%i:%sZ'), objects_done FROM {}.{} ORDER BY table_name",
        ident(db),
        ident(MARKER_TABLE)
    );
    let rows: Vec<(String, u64, String, String, bool)> = match admin.conn.query(sql).await {
        Ok(rows) => rows,
        // ER_NO_SUCH_TABLE, ER_BAD_DB_ERROR: never seeded by dbhelper; ER_BAD_FIELD_ERROR:
        // a marker of an older dbhelper, which did not record the objects step: load again.
        Err(e) if matches!(server_code(&e), Some(1146 | 1049 | 1054)) => return Ok(None),
        Err(e) => return Err(db_error("reading the seed marker", &admin.address, &e)),
    };
    let Some((_, _, sha256, loaded_at, _)) = rows.first().cloned() else {
        return Ok(None);
    };
    if rows.iter().any(|r| r.2 != sha256) {
        // Not written by one load: treat as absent.
        return Ok(None);
    }
    Ok(Some(Marker {
        sha256,
        loaded_at,
        objects_done: rows.iter().all(|r| r.4),
        // Not the placeholder row of a database without tables (see `write_marker`).
        tables: rows
            .into_iter()
            .filter(|(t, ..)| !t.is_empty())
            .map(|(t, n, _, _, _)| (t, n))
            .collect(),
    }))
}

/// The byte limit of a merged statement on this connection.
async fn statement_limit(conn: &mut Conn, address: &Address, batch_bytes: usize) -> Result<usize, Error> {
    let max_packet: Option<u64> = conn
        .query_first("SELECT @@max_allowed_packet")
        .await
        .map_err(|e| db_error("reading max_allowed_packet", address, &e))?;
    // Leave room for the packet header and command byte.
    Ok(usize::try_from(max_packet.unwrap_or(4 << 20))
        .unwrap_or(usize::MAX)
        .saturating_sub(1024)
        .min(batch_bytes)
        .max(1024))
}

/// The first database that is not a system schema: the connection's default one.
fn first_user_target(targets: &[Target]) -> Option<&Target> {
    targets.iter().find(|t| !t.system)
}

/// Steps queued per connection: the reader stays at most this far ahead of each one,
/// so memory holds a few statements in flight, not the dump.
const QUEUE: usize = 1;

/// Runs the tables phase on connections of their own, so the dump's session settings
/// (`SET NAMES latin1`, `FOREIGN_KEY_CHECKS=0`, ...) stay there: one connection in dump
/// order, or up to `--jobs` connections each loading whole tables (see [`plan::lanes`]).
/// A reader thread streams the dump a second time, plans it and hands the steps to the
/// connections through bounded queues.
async fn load_tables(
    admin: &mut Admin,
    root: &Credentials,
    dump: &DumpFile,
    opts: &SeedOptions<'_>,
    targets: &[Target],
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let address = admin.address.clone();
    let staging: Vec<String> = targets.iter().map(Target::staging).collect();
    let default = first_user_target(targets).map(Target::staging);
    let connect = || async {
        db::connect(db::opts(&address, root, default.as_deref()), db::CONNECT_TIMEOUT)
            .await
            .map_err(|e| db_error("opening a load connection", &address, &e))
    };
    let mut conn = connect().await?;
    let limit = statement_limit(&mut conn, &address, opts.batch_bytes).await?;
    let user: Vec<&Target> = targets.iter().filter(|t| !t.system).collect();
    // More than one connection only pays when several of them get tables.
    let n = dump.spread_tables.map_or(1, |tables| tables.min(opts.jobs)).max(1);
    tracing::info!(
        databases = %describe_databases(&user),
        statements = dump.statements,
        connections = n,
        size = %human_bytes(dump.size),
        "loading the tables into the staging databases"
    );
    let started = Instant::now();
    let mut conns = vec![conn];
    while conns.len() < n {
        conns.push(connect().await?);
    }
    if n > 1 {
        // Tables load in an order of their own on each connection: a foreign key's rows
        // may arrive before the rows it references (the swap makes them visible only all
        // together, and mysqldump's data is consistent).
        for c in &mut conns {
            c.query_drop("SET SESSION FOREIGN_KEY_CHECKS = 0")
                .await
                .map_err(|e| db_error("preparing a load connection", &address, &e))?;
        }
    }
    let stop = cancel.child_token();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| tokio::sync::mpsc::channel(QUEUE)).unzip();
    // One reader per connection, each streaming the whole dump and keeping its own tables:
    // a dump holds its tables one after the other, so one reader feeding every connection
    // through small queues would keep all but one of them waiting.
    let readers = senders.into_iter().enumerate().map(|(lane, sender)| {
        let path = dump.path.clone();
        let (sha256, replay, statements, stop) =
            (dump.sha256.clone(), dump.replay_system, dump.statements, stop.clone());
        let unchanged = describe_databases(&user);
        let feed = Feed {
            lane,
            lanes: n,
            sizes: dump.table_sizes.clone(),
            sender,
        };
        tokio::task::spawn_blocking(move || {
            let r = stream_tables(&path, limit, replay, &sha256, statements, &feed, &stop, &unchanged);
            if r.is_err() {
                stop.cancel();
            }
            r
        })
    });
    let reader = futures::future::join_all(readers);
    let lane = Lane {
        address: &address,
        staging: &staging,
        unchanged: describe_databases(&user),
        cancel: &stop,
    };
    let runs = conns.iter_mut().zip(receivers).map(|(c, rx)| {
        let lane = &lane;
        let stop = &stop;
        async move {
            let r = lane.run(c, rx, limit).await;
            if r.is_err() {
                // The other connections stop at their next statement, the reader at its next.
                stop.cancel();
            }
            r
        }
    });
    let (read, lanes) = tokio::join!(reader, futures::future::join_all(runs));
    for c in conns {
        let _ = c.disconnect().await;
    }
    let trips: usize = lanes.iter().filter_map(|r| r.as_ref().ok()).sum();
    let mut results: Vec<Result<(), Error>> = lanes.into_iter().map(|r| r.map(|_| ())).collect();
    results.extend(read.into_iter().map(|r| {
        r.unwrap_or_else(|e| {
            Err(Error::Interrupted {
                during: format!(
                    "reading the dump ({e}); nothing was changed in {}",
                    describe_databases(&user)
                ),
            })
        })
    }));
    // The first real error, not the "interrupted" of the lanes and reader it stopped.
    let first = results
        .iter()
        .position(|r| matches!(r, Err(e) if !matches!(e, Error::Interrupted { .. })))
        .or_else(|| results.iter().position(Result::is_err));
    if let Some(i) = first {
        return results.swap_remove(i);
    }
    if cancel.is_cancelled() {
        return Err(Error::Interrupted {
            during: format!("during the load; nothing was changed in {}", describe_databases(&user)),
        });
    }
    tracing::info!(elapsed = ?started.elapsed(), round_trips = trips, "tables loaded into the staging databases");
    Ok(())
}

/// What one reader of the tables phase feeds: connection `lane` of `lanes`.
struct Feed {
    lane: usize,
    lanes: usize,
    /// The tables' sizes from the first pass, to deal them alike in every reader.
    sizes: Vec<usize>,
    sender: tokio::sync::mpsc::Sender<Step<'static>>,
}

/// A reader thread of the tables phase: streams the dump, plans it with the server's
/// statement limit and sends the steps of its connection's tables and the session
/// statements to it; with one connection, everything in dump order. Every reader deals
/// the tables alike, by the sizes the first pass found ([`plan::Router::by_size`]), so each
/// table goes to exactly one connection.
/// The first connection's reader shows the progress. Fails when the file is not the one
/// the first pass read.
#[allow(clippy::too_many_arguments)]
fn stream_tables(
    path: &Path,
    limit: usize,
    replay: bool,
    sha256: &str,
    statements: usize,
    feed: &Feed,
    stop: &CancellationToken,
    unchanged: &str,
) -> Result<(), Error> {
    let source = Source::open(path)?;
    let mut progress = (feed.lane == 0).then(|| Progress::new(source.size, statements));
    let mut planner = plan::Planner::new(limit, replay);
    let mut router = plan::Router::by_size(feed.lanes, &feed.sizes);
    let interrupted = || Error::Interrupted {
        during: format!("during the load; nothing was changed in {unchanged}"),
    };
    let send = |router: &mut plan::Router, step: Step<'static>| -> Result<(), Error> {
        let mine = match feed.lanes {
            1 => true,
            // The first pass checked that every step has a route.
            _ => match router.route(&step) {
                Some(Route::Every) => true,
                Some(Route::Lane(i)) => i == feed.lane,
                Some(Route::Skip) | None => false,
            },
        };
        if !mine {
            return Ok(());
        }
        // A closed queue: that connection failed (its error is the one reported).
        feed.sender.blocking_send(step).map_err(|_| interrupted())
    };
    let summary = source.for_each_statement(|st| {
        if stop.is_cancelled() {
            return Err(interrupted());
        }
        // Another connection's table: its reader plans and copies it, this one only counts
        // it (for the bench's dump, three readers of four skip 3/4 of 50 MB of inserts).
        let theirs = feed.lanes > 1 && router.dealt_lane(st.bytes).is_some_and(|l| l != feed.lane);
        if !(theirs && planner.skip(st.number)) {
            planner
                .statement(st.bytes, st.number, st.line, st.end)
                .map_err(|source| Error::DumpPlan {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let ready: Vec<Step<'static>> = planner.take_tables().collect();
        for step in ready {
            send(&mut router, step)?;
        }
        if let Some(p) = progress.as_mut() {
            p.update(st.end, st.number);
        }
        Ok(())
    })?;
    for step in planner.finish().tables {
        send(&mut router, step)?;
    }
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    if summary.sha256 != sha256 {
        return Err(Error::DumpUseless {
            path: path.to_owned(),
            reason: format!(
                "it changed while being loaded (sha256 {sha256} when checked, {} when loaded); nothing was changed in {unchanged}",
                summary.sha256
            ),
        });
    }
    Ok(())
}

/// What every connection of the tables phase shares.
struct Lane<'r> {
    address: &'r Address,
    staging: &'r [String],
    unchanged: String,
    cancel: &'r CancellationToken,
}

impl Lane<'_> {
    /// Runs the steps that arrive on `rx` on `conn`, until the reader closes it; returns
    /// how many round trips it took.
    async fn run(
        &self,
        conn: &mut Conn,
        mut rx: tokio::sync::mpsc::Receiver<Step<'static>>,
        limit: usize,
    ) -> Result<usize, Error> {
        let mut trips = 0;
        let mut held = Held::new(limit);
        while let Some(step) = rx.recv().await {
            if self.cancel.is_cancelled() {
                return Err(Error::Interrupted {
                    during: format!("during the load; nothing was changed in {}", self.unchanged),
                });
            }
            if is_session(&step) {
                let sql = step_sql(&step, self.staging).into_owned();
                if held.push(step, sql) {
                    trips += self.send(conn, &mut held, None).await?;
                }
                continue;
            }
            // Not copied: an insert may be megabytes.
            let sql = step_sql(&step, self.staging);
            // With the held ones when it fits in their packet, else after them.
            if !held.fits(sql.len()) {
                trips += self.send(conn, &mut held, None).await?;
            }
            trips += self.send(conn, &mut held, Some((&step, &sql))).await?;
        }
        trips += self.send(conn, &mut held, None).await?;
        Ok(trips)
    }

    /// Sends the held session statements, then `then` (a step and what it sends), in one
    /// round trip; the round trips it took (0 or 1).
    async fn send(
        &self,
        conn: &mut Conn,
        held: &mut Held<Step<'static>>,
        then: Option<(&Step<'static>, &[u8])>,
    ) -> Result<usize, Error> {
        let sql: Vec<&[u8]> = then.iter().map(|(_, sql)| *sql).collect();
        match held.send(conn, &sql).await {
            Ok(trips) => Ok(trips),
            Err(Refused::Held(step, sql, e)) => {
                Err(rejected(conn, self.address, e, &step, &sql, &self.unchanged).await)
            }
            Err(Refused::Then(_, e)) => match then {
                Some((step, sql)) => Err(rejected(conn, self.address, e, step, sql, &self.unchanged).await),
                None => Err(db_error("loading the dump", self.address, &e)),
            },
        }
    }
}

/// What a step sends, with the databases of `names` (staging before the swap, live after).
fn step_sql<'s>(step: &'s Step<'_>, names: &[String]) -> Cow<'s, [u8]> {
    match &step.action {
        Action::Use(i) => Cow::Owned(format!("USE {}", ident(&names[*i])).into_bytes()),
        Action::AlterDatabase(i, options) => {
            let mut v = format!("ALTER DATABASE {}", ident(&names[*i])).into_bytes();
            v.extend_from_slice(options);
            Cow::Owned(v)
        }
        Action::Sql(bytes) | Action::Object { sql: bytes, .. } => Cow::Borrowed(bytes.as_ref()),
    }
}

/// Whether a step only sets session state (`SET`, `USE`, `ALTER DATABASE`): such steps are
/// held and sent together ([`Held`]).
fn is_session(step: &Step<'_>) -> bool {
    matches!(plan::target_of(&step.action), plan::Target::Session)
}

/// Bytes of held session statements that make a round trip of their own (under any
/// server's `max_allowed_packet`, whose least value is 1 KiB, through the `limit` given).
const HELD_BYTES: usize = 64 << 10;

/// Session statements held back to go to the server together, in one round trip
/// ([`db::exec_batch`]), just before the next statement that is not one, in dump order.
/// A dump sets and restores a dozen session variables around each table and object:
/// sent one by one they made 7,000 of the 7,480 round trips of the bench's dump (of which
/// 80 were inserts), each a wait on the network.
struct Held<S> {
    items: Vec<(S, Vec<u8>)>,
    bytes: usize,
    limit: usize,
}

impl<S> Held<S> {
    fn new(limit: usize) -> Self {
        Held {
            items: Vec::new(),
            bytes: 0,
            limit: limit.min(HELD_BYTES),
        }
    }

    /// Holds `sql` (of `step`); true when the held statements should be sent now.
    fn push(&mut self, step: S, sql: Vec<u8>) -> bool {
        self.bytes += sql.len() + 3;
        self.items.push((step, sql));
        self.bytes >= self.limit
    }

    /// Whether `bytes` more still fit in the round trip of what is held.
    fn fits(&self, bytes: usize) -> bool {
        self.bytes + bytes < self.limit
    }

    /// Sends what is held, then the statements `then`, in one round trip; the round trips
    /// taken (none when there was nothing to send). On a refusal, which statement it was
    /// (the ones before it ran, the ones after did not).
    async fn send(&mut self, conn: &mut Conn, then: &[&[u8]]) -> Result<usize, Refused<S>> {
        if self.items.is_empty() && then.is_empty() {
            return Ok(0);
        }
        let mut items = std::mem::take(&mut self.items);
        self.bytes = 0;
        let statements: Vec<&[u8]> = items
            .iter()
            .map(|(_, sql)| sql.as_slice())
            .chain(then.iter().copied())
            .collect();
        match db::exec_batch(conn, &statements).await {
            Ok(()) => Ok(1),
            Err((index, e)) if index < items.len() => {
                let (step, sql) = items.swap_remove(index);
                Err(Refused::Held(step, sql, e))
            }
            // In range of `then` (the driver's index, kept there).
            Err((index, e)) => Err(Refused::Then(
                (index - items.len()).min(then.len().saturating_sub(1)),
                e,
            )),
        }
    }
}

/// Which statement of a [`Held::send`] the server refused.
enum Refused<S> {
    /// A held one: its step, what was sent, the error.
    Held(S, Vec<u8>, mysql_async::Error),
    /// The one of `then` at this index.
    Then(usize, mysql_async::Error),
}

/// The accounts of the server, to keep the definers that exist.
async fn accounts(admin: &mut Admin) -> Result<HashSet<(Vec<u8>, Vec<u8>)>, Error> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> = admin
        .rows(
            "listing the accounts for the definers",
            "SELECT User, LOWER(Host) FROM mysql.user",
        )
        .await?;
    Ok(rows.into_iter().collect())
}

/// The statement with its definer replaced by `CURRENT_USER` when that account does not
/// exist here (the server would create an object that fails when used).
fn with_definer<'a>(
    sql: &'a [u8],
    definer: Option<&Definer>,
    accounts: &HashSet<(Vec<u8>, Vec<u8>)>,
) -> Option<Cow<'a, [u8]>> {
    let d = definer?;
    if accounts.contains(&(d.user.clone(), d.host.to_ascii_lowercase())) {
        return None;
    }
    let mut v = Vec::with_capacity(sql.len());
    v.extend_from_slice(&sql[..d.span.start]);
    v.extend_from_slice(b"CURRENT_USER");
    v.extend_from_slice(&sql[d.span.end..]);
    Some(Cow::Owned(v))
}

/// The objects step: views, triggers, routines and events (and replayed system-schema
/// statements) created in the live databases by replaying the dump's statements with
/// their session settings, then the markers set to done. Safe to run again: each
/// `CREATE` is preceded by a `DROP … IF EXISTS` of the same object.
async fn create_objects(
    admin: &mut Admin,
    root: &Credentials,
    dump: &DumpFile,
    targets: &[Target],
) -> Result<(), Error> {
    let address = admin.address.clone();
    // The accounts that will exist: the server's, and those the dump creates when its
    // account statements are replayed (the client keeps a definer the dump creates later).
    let mut accounts = accounts(admin).await?;
    accounts.extend(dump.object_steps.iter().filter_map(|step| match &step.action {
        Action::Sql(sql) => plan::created_account(sql),
        _ => None,
    }));
    let live: Vec<String> = targets.iter().map(|t| t.live.clone()).collect();
    let user: Vec<&Target> = targets.iter().filter(|t| !t.system).collect();
    let default = first_user_target(targets).map(|t| t.live.clone());
    let mut conn = db::connect(db::opts(&address, root, default.as_deref()), db::CONNECT_TIMEOUT)
        .await
        .map_err(|e| db_error("opening the connection for views, triggers and routines", &address, &e))?;
    let done = describe_databases(&user);
    let packet = statement_limit(&mut conn, &address, usize::MAX).await?;
    let mut held = Held::new(packet);
    let refused = async |conn: &mut Conn, step: &Step<'_>, sql: &[u8], e| {
        after_swap(rejected(conn, &address, e, step, sql, &done).await)
    };
    // Sends the held session statements alone.
    let send_held = async |conn: &mut Conn, held: &mut Held<&Step<'static>>| match held.send(conn, &[]).await {
        Ok(_) => Ok(()),
        Err(Refused::Held(step, sent, e)) => Err(refused(conn, step, &sent, e).await),
        Err(Refused::Then(_, e)) => Err(db_error(
            "creating the views, triggers, routines and events",
            &address,
            &e,
        )),
    };
    for step in &dump.object_steps {
        if is_session(step) {
            if held.push(step, step_sql(step, &live).into_owned()) {
                send_held(&mut conn, &mut held).await?;
            }
            continue;
        }
        let (sql, drop): (Cow<'_, [u8]>, Option<Vec<u8>>) = match &step.action {
            Action::Object {
                verb,
                kind,
                name,
                definer,
                sql,
            } => {
                let sql = match with_definer(sql, definer.as_ref(), &accounts) {
                    Some(rewritten) => {
                        if let Some(d) = definer {
                            tracing::warn!(
                                "the definer {}@{} of the {kind} {} (line {}) does not exist on this server: created with the loading user as its definer",
                                String::from_utf8_lossy(&d.user),
                                String::from_utf8_lossy(&d.host),
                                String::from_utf8_lossy(name.as_deref().unwrap_or_default()),
                                step.line
                            );
                        }
                        rewritten
                    }
                    None => Cow::Borrowed(sql.as_ref()),
                };
                let drop = match (verb, name) {
                    (Verb::Create, Some(name)) => Some(drop_object_sql(*kind, name)),
                    _ => None,
                };
                (sql, drop)
            }
            _ => (step_sql(step, &live), None),
        };
        // The held session statements, the DROP … IF EXISTS and the statement: one round
        // trip, or two when they would not fit in one packet.
        let then: Vec<&[u8]> = drop.iter().map(Vec::as_slice).chain([sql.as_ref()]).collect();
        let then_bytes = then.iter().map(|s| s.len() + 3).sum();
        if !held.fits(then_bytes) {
            send_held(&mut conn, &mut held).await?;
        }
        if then_bytes >= packet {
            // A CREATE just under max_allowed_packet: with its DROP it would be over, the
            // server would close the connection, and the objects would stop half made.
            if let Some(drop) = &drop
                && let Err(e) = conn.query_drop(drop.as_slice()).await
            {
                tracing::debug!("dropping the object before creating it: {}", describe(&e));
            }
            if let Err(e) = conn.query_drop(sql.as_ref()).await {
                return Err(refused(&mut conn, step, &sql, e).await);
            }
            continue;
        }
        match held.send(&mut conn, &then).await {
            Ok(_) => {}
            Err(Refused::Held(step, sent, e)) => return Err(refused(&mut conn, step, &sent, e).await),
            Err(Refused::Then(0, e)) if drop.is_some() => {
                // The DROP … IF EXISTS failed: left to the CREATE to report.
                tracing::debug!("dropping the object before creating it: {}", describe(&e));
                if let Err(e) = conn.query_drop(sql.as_ref()).await {
                    return Err(refused(&mut conn, step, &sql, e).await);
                }
            }
            Err(Refused::Then(_, e)) => return Err(refused(&mut conn, step, &sql, e).await),
        }
    }
    send_held(&mut conn, &mut held).await?;
    let _ = conn.disconnect().await;
    for t in &user {
        admin
            .exec(
                "recording that the objects step is done",
                &format!("UPDATE {}.{} SET objects_done = 1", ident(&t.live), ident(MARKER_TABLE)),
            )
            .await?;
    }
    Ok(())
}

/// A statement refused after the swap: the tables are in, the objects step is not done.
fn after_swap(err: Error) -> Error {
    match err {
        Error::Rejected {
            number,
            line,
            reason,
            snippet,
            database,
        } => Error::ObjectRejected {
            number,
            line,
            reason,
            snippet,
            database,
        },
        other => other,
    }
}

/// `DROP <kind> IF EXISTS name`, sent before a `CREATE`, so a rerun of the objects step
/// (after a run killed inside it) does not stop at "already exists"; a failure is left to
/// the `CREATE` to report.
fn drop_object_sql(kind: ObjectKind, name: &[u8]) -> Vec<u8> {
    let mut sql = format!("DROP {} IF EXISTS `", kind.keyword()).into_bytes();
    for &b in name {
        if b == b'`' {
            sql.push(b'`');
        }
        sql.push(b);
    }
    sql.push(b'`');
    sql
}

/// Turns a failed step (`sent` is what was sent) into an error naming the statement.
/// When the step merged several statements, they are replayed one by one to find the one
/// the server refuses.
async fn rejected(
    conn: &mut Conn,
    address: &Address,
    err: mysql_async::Error,
    step: &Step<'_>,
    sent: &[u8],
    database: &str,
) -> Error {
    let (first, last) = (*step.statements.start(), *step.statements.end());
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
            reason: format!("{}; nothing was changed in {database}", describe(&err)),
        };
    }
    let mut found: Option<(usize, usize, mysql_async::Error, Cow<'_, [u8]>)> = None;
    if let Some(merged) = &step.merged {
        for (k, &line) in merged.lines.iter().enumerate() {
            let one = step.statement(k);
            if let Err(e) = conn.query_drop(one.as_ref()).await {
                found = Some((first + k, line, e, one));
                break;
            }
        }
    }
    let (number, line, reason, bytes) = match found {
        Some((n, line, e, one)) => (n.to_string(), line, describe(&e), one),
        None if first == last => (first.to_string(), step.line, describe(&err), Cow::Borrowed(sent)),
        None => (
            format!("{first}-{last} (merged)"),
            step.line,
            describe(&err),
            step.statement(0),
        ),
    };
    Error::Rejected {
        number,
        line,
        reason,
        snippet: snippet(&bytes, SNIPPET_BYTES),
        database: database.to_owned(),
    }
}

/// Checks what the load created in one staging database and counts the rows of each table.
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
    // Views, routines, triggers and events are created after the swap; one found in the
    // staging database was created by a statement dbhelper did not recognise as one, and
    // would be lost with it (or, for a trigger, make the cross-database rename fail).
    if let Some((name, kind)) = tables.iter().find(|(_, kind)| !TABLE_TYPES.contains(&kind.as_str())) {
        return Err(useless(format!(
            "a statement it holds creates {name:?} of type {kind} in a form dbhelper does not recognise as such (write it CREATE … VIEW)"
        )));
    }
    let lit = admin.literal(staging);
    let sql = format!(
        "SELECT 'routine', ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {lit} \
         UNION ALL SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {lit} \
         UNION ALL SELECT 'event', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {lit} LIMIT 1"
    );
    let others: Vec<(String, String)> = admin.rows("listing the loaded routines", &sql).await?;
    if let Some((kind, name)) = others.first() {
        return Err(useless(format!(
            "a statement it holds creates the {kind} {name:?} in a form dbhelper does not recognise as such"
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

/// Writes the marker into a staging database, so it moves in with the data. It records
/// the objects step as not done; that step sets it when it finishes.
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
           loaded_by VARCHAR(64) NOT NULL,\
           objects_done BOOLEAN NOT NULL\
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='dbhelper: the dump this database was seeded from'"
    );
    admin.exec("creating the seed marker", &create).await?;
    let by = admin.literal(concat!("dbhelper ", env!("CARGO_PKG_VERSION")));
    let sha = admin.literal(&dump.sha256);
    let done = u8::from(dump.objects == 0 && !dump.databases.iter().any(|d| d.system));
    // A database without tables (only views or routines) still gets a marker row.
    let mut names: Vec<(String, u64)> = counts.to_vec();
    if names.is_empty() {
        names.push((String::new(), 0));
    }
    let rows: Vec<String> = names
        .iter()
        .map(|(name, n)| {
            format!(
                "({}, {n}, {sha}, {}, {}, @t, {by}, {done})",
                admin.literal(name),
                dump.size,
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
        objects_done: done == 1,
    })
}

/// The one statement that changes the live tables: in every database, live tables of the
/// same names out, staged tables (and the marker) in. Before it, the live markers are set
/// to "objects step not done" and the triggers of the tables being replaced are dropped
/// (`RENAME TABLE` cannot move a table with triggers to another database).
async fn swap(admin: &mut Admin, user: &[&Target], markers: &[(String, Marker)]) -> Result<(), Error> {
    let mut renames: Vec<String> = Vec::new();
    for (t, (_, marker)) in user.iter().zip(markers) {
        let db = &t.live;
        // Created only now, so that a failed first load leaves no trace at all.
        let options = String::from_utf8_lossy(t.options.as_deref().unwrap_or_default()).into_owned();
        admin
            .exec(
                &format!("creating database {db:?}"),
                &format!("CREATE DATABASE IF NOT EXISTS {}{options}", ident(db)),
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
        let out: Vec<&str> = moving.iter().copied().filter(|t| live.contains(*t)).collect();
        if !out.is_empty() {
            admin
                .exec(
                    &format!("creating database {retired:?}"),
                    &format!("CREATE DATABASE {}", ident(&retired)),
                )
                .await?;
            if live.contains(MARKER_TABLE) {
                admin
                    .exec(
                        "recording that the objects step is not done",
                        &format!("UPDATE {}.{} SET objects_done = 0", ident(db), ident(MARKER_TABLE)),
                    )
                    .await?;
            }
            drop_triggers(admin, db, &out).await?;
        }
        renames.extend(
            out.iter()
                .map(|t| format!("{}.{} TO {}.{}", ident(db), ident(t), ident(&retired), ident(t))),
        );
        let staging = t.staging();
        renames.extend(
            moving
                .iter()
                .map(|name| format!("{}.{} TO {}.{}", ident(&staging), ident(name), ident(db), ident(name))),
        );
    }
    admin
        .exec(
            "swapping the loaded tables in",
            &format!("RENAME TABLE {}", renames.join(", ")),
        )
        .await?;
    tracing::info!(databases = %describe_databases(user), "swapped the loaded tables in");
    Ok(())
}

/// Drops the triggers of `tables` in `db` (they belong to the data being replaced; the
/// dump's own triggers are created after the swap).
async fn drop_triggers(admin: &mut Admin, db: &str, tables: &[&str]) -> Result<(), Error> {
    let sql = format!(
        "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {}",
        admin.literal(db)
    );
    let triggers: Vec<(String, String)> = admin.rows("listing the triggers", &sql).await?;
    for (name, _) in triggers.iter().filter(|(_, table)| tables.contains(&table.as_str())) {
        admin
            .exec(
                &format!("dropping trigger {name:?} of the replaced data"),
                &format!("DROP TRIGGER IF EXISTS {}.{}", ident(db), ident(name)),
            )
            .await?;
    }
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
    fn the_longest_statement_is_checked_against_the_packet_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump.sql");
        // The statements are 22, 28 and 24 bytes long (without their `;`); a packet holds
        // the statement and one command byte.
        std::fs::write(
            &path,
            b"CREATE TABLE a (x int);\nINSERT INTO a VALUES (22222);\nINSERT INTO a VALUES (1);\n",
        )
        .unwrap();
        let dump = DumpFile::read(&path, false).unwrap();
        let longest = dump.longest.as_ref().unwrap();
        assert_eq!((longest.number, longest.line, longest.len), (2, 2, 28));
        assert_eq!(longest.snippet, "INSERT INTO a VALUES (22222)");
        for (max, want) in [(1000, None), (29, None), (28, Some(2)), (25, Some(2)), (1, Some(2))] {
            let got = oversized_statement(dump.longest.as_ref(), max).map(|l| l.number);
            assert_eq!(got, want, "max_allowed_packet {max}");
        }
    }

    fn marker(sha: &str, done: bool) -> Option<Marker> {
        Some(Marker {
            sha256: sha.into(),
            loaded_at: String::new(),
            tables: vec![("t".into(), 1)],
            objects_done: done,
        })
    }

    #[test]
    fn state_table() {
        let cases: Vec<(Vec<Option<Marker>>, bool, State)> = vec![
            (vec![marker("a", true)], true, State::Loaded),
            (vec![marker("a", true), marker("a", true)], true, State::Loaded),
            (vec![marker("a", true), marker("a", false)], true, State::ObjectsPending),
            (vec![marker("a", false)], true, State::ObjectsPending),
            (vec![marker("a", true)], false, State::Load),
            (vec![marker("a", false)], false, State::Load),
            (vec![marker("b", true)], true, State::Load),
            (vec![marker("a", true), marker("b", true)], true, State::Load),
            (vec![marker("a", true), None], true, State::Load),
            (vec![None], true, State::Load),
            (vec![], true, State::Load),
        ];
        for (markers, present, want) in cases {
            assert_eq!(state(&markers, "a", present), want, "{markers:?} {present}");
        }
    }

    #[test]
    fn targets_map_one_database_and_keep_several() {
        let db = |name: Option<&str>, system: bool| Database {
            name: name.map(str::to_owned),
            options: None,
            system,
            line: 1,
        };
        let lives = |dbs: &[Database]| -> Vec<String> { targets(dbs, "app").into_iter().map(|t| t.live).collect() };
        assert_eq!(lives(&[db(None, false)]), ["app"]);
        assert_eq!(lives(&[db(Some("world"), false)]), ["app"]);
        assert_eq!(lives(&[db(Some("a"), false), db(Some("b"), false)]), ["a", "b"]);
        assert_eq!(
            lives(&[db(Some("a"), false), db(Some("mysql"), true)]),
            ["app", "mysql"]
        );
    }

    #[test]
    fn missing_definers_become_the_loading_user() {
        let sql = b"CREATE DEFINER=`gone`@`%` VIEW v AS SELECT 1";
        let definer = Definer {
            user: b"gone".to_vec(),
            host: b"%".to_vec(),
            span: 15..25,
        };
        let mut accounts = HashSet::new();
        assert_eq!(
            with_definer(sql, Some(&definer), &accounts).as_deref(),
            Some(&b"CREATE DEFINER=CURRENT_USER VIEW v AS SELECT 1"[..])
        );
        accounts.insert((b"gone".to_vec(), b"%".to_vec()));
        assert_eq!(with_definer(sql, Some(&definer), &accounts), None);
        assert_eq!(with_definer(sql, None, &HashSet::new()), None);
    }

    /// A load pass that reads other bytes than the first pass checked fails (before the
    /// swap); the same bytes pass, every step in order on the one connection.
    #[test]
    fn a_dump_changed_between_the_passes_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sql");
        std::fs::write(
            &path,
            "CREATE TABLE t (a int);\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\n",
        )
        .unwrap();
        let checked = DumpFile::read(&path, false).unwrap();
        let stop = CancellationToken::new();
        let run = |sha: &str| {
            let (sender, mut rx) = tokio::sync::mpsc::channel(16);
            let feed = Feed {
                lane: 0,
                lanes: 1,
                sizes: checked.table_sizes.clone(),
                sender,
            };
            let r = stream_tables(&path, 1 << 20, false, sha, checked.statements, &feed, &stop, "db");
            drop(feed);
            let mut steps = Vec::new();
            while let Ok(step) = rx.try_recv() {
                steps.push(step.sql().to_vec());
            }
            (r, steps)
        };
        let (r, steps) = run(&checked.sha256);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            steps,
            [
                b"CREATE TABLE t (a int)".to_vec(),
                b"INSERT INTO t VALUES (1),(2)".to_vec()
            ]
        );
        let (r, _) = run(&"0".repeat(64));
        let err = r.unwrap_err().to_string();
        assert!(err.contains("it changed while being loaded"), "{err}");
    }

    #[test]
    fn names_fit_the_server_limit() {
        let longest = "x".repeat(40);
        assert!(staging_name(&longest).len() <= 64);
        assert!(retired_name(&longest).len() <= 64);
        assert_ne!(staging_name("w"), retired_name("w"));
    }
}
