//! dbhelper: waits for the database, seeds it from a SQL dump once and atomically, creates
//! the application user, verifies as that user, and exits.
//!
//! The flow, one module per step:
//! [`locate`] (flags, docker-link variables or an etcd key) → [`wait`] (login + `SELECT 1`
//! with backoff) → [`dump`] (pure splitter) → [`plan`] (pure: redirect database statements,
//! merge inserts) → [`load`] (staging database, marker, one atomic rename) → [`user`] →
//! [`verify`] → exit 0.
//!
//! Invariants: `dump` and `plan` do no I/O and never decode the dump's text; only `load`
//! writes the seeded database, and only with one `RENAME TABLE`; passwords are only read in
//! [`args`] and only sent by [`db::opts`] and [`user`].

pub mod args;
pub mod db;
pub mod dump;
mod error;
pub mod lex;
pub mod load;
pub mod locate;
pub mod plan;
pub mod progress;
pub mod source;
pub mod user;
pub mod verify;
pub mod wait;

use mysql_async::Conn;
use sidekick::etcd::EtcdArgs;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use args::{Args, Command, DbArgs, SeedArgs};
pub use error::{EXIT_ACCESS_DENIED, EXIT_DUMP, EXIT_FAILURE, EXIT_NOT_READY, EXIT_USAGE, Error, describe, snippet};

use args::{Credentials, Environment};
use load::{DumpFile, Outcome, SeedOptions};
use locate::{Address, Lookup};

/// Runs the command.
///
/// # Errors
/// Everything that stops it, with the offending value named; [`Error::exit_code`] gives
/// the exit status.
pub async fn run(args: Args) -> Result<(), Error> {
    let cancel = sidekick::shutdown::on_signals()
        .map_err(|e| Error::Options(format!("cannot install the signal handlers: {e}")))?;
    let env = Environment::from_process();
    if args.validate.validate {
        println!("{}", validate(&args, &env)?);
        return Ok(());
    }
    match &args.command {
        Command::Wait(db) => {
            let (address, _, conn) = ready(db, &args.etcd, &env, &cancel).await?;
            let _ = conn.disconnect().await;
            println!("database at {address} is ready");
            Ok(())
        }
        Command::Seed(seed) => run_seed(seed, &args.etcd, &env, &cancel).await,
    }
}

/// `--validate`: where the database would be looked for, and that the passwords and the
/// dump are there, without contacting the database or etcd.
fn validate(args: &Args, env: &Environment) -> Result<String, Error> {
    let db = match &args.command {
        Command::Wait(db) => db,
        Command::Seed(seed) => &seed.db,
    };
    let root = db.root_credentials(env)?;
    let lookup = lookup(db, env)?;
    let place = match &lookup {
        Lookup::Fixed(address) => format!("database at {address}"),
        Lookup::Etcd { key, .. } => {
            format!(
                "database address from etcd key {key} ({})",
                args.etcd.describe_offline()?
            )
        }
    };
    let what = match &args.command {
        Command::Wait(_) => "wait".to_owned(),
        Command::Seed(seed) => {
            seed.app_credentials(env)?;
            let dump = DumpFile::read(&seed.dump, seed.replay_system_schemas)?;
            format!(
                "seed {} from {} ({} statements, sha256 {}) with app user {}",
                seed.database,
                dump.path.display(),
                dump.statements,
                dump.sha256,
                seed.app_user
            )
        }
    };
    Ok(format!(
        "dbhelper: configuration OK: {what}; {place} as {}; wait up to {:?}",
        root.user, db.wait_timeout
    ))
}

/// Step 1's decision: where to look for the database (flags, docker-link env, etcd key).
fn lookup(db: &DbArgs, env: &Environment) -> Result<Lookup, Error> {
    locate::choose(
        db.host.as_deref(),
        db.port,
        env.link_addr.as_deref(),
        env.link_port.as_deref(),
        db.db_etcd_key.as_deref(),
    )
}

/// Finds the database and waits until it takes a login: steps 1 and 2.
async fn ready(
    db: &DbArgs,
    etcd: &EtcdArgs,
    env: &Environment,
    cancel: &CancellationToken,
) -> Result<(Address, Credentials, Conn), Error> {
    let root = db.root_credentials(env)?;
    let deadline = Instant::now() + db.wait_timeout;
    let lookup = lookup(db, env)?;
    let address = match lookup {
        Lookup::Fixed(address) => address,
        // Boxed: waiting on etcd is a large future, and every command awaits it.
        Lookup::Etcd { key, port } => Box::pin(locate::from_etcd(etcd, &key, port, deadline, cancel)).await?,
    };
    tracing::info!(address = %address, source = %address.source, "found the database");
    let conn = wait::ready(&address, &root, deadline, cancel).await?;
    Ok((address, root, conn))
}

async fn run_seed(
    seed: &SeedArgs,
    etcd: &EtcdArgs,
    env: &Environment,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let started = Instant::now();
    let app = seed.app_credentials(env)?;
    let dump = DumpFile::read(&seed.dump, seed.replay_system_schemas)?;
    let named: Vec<&str> = dump.databases.iter().filter_map(|d| d.name.as_deref()).collect();
    tracing::info!(
        path = %dump.path.display(),
        size = %progress::human_bytes(dump.size),
        statements = dump.statements,
        objects = dump.objects,
        sha256 = %dump.sha256,
        databases = %if named.is_empty() { "-".to_owned() } else { named.join(", ") },
        "dump read"
    );
    let targets = dump.targets(&seed.database);
    if targets.iter().filter(|t| !t.system).count() > 1 {
        tracing::info!(
            "the dump names several databases: each is loaded under its own name (--database applies to one-database dumps)"
        );
    }
    let (address, root, conn) = ready(&seed.db, etcd, env, cancel).await?;
    let mut admin = db::Admin::new(conn, address.clone()).await?;
    let opts = SeedOptions {
        database: &seed.database,
        force: seed.force,
        batch_bytes: seed.batch_bytes,
        jobs: usize::from(seed.jobs),
        lock_wait: seed.db.wait_timeout,
    };
    let outcome = load::seed(&mut admin, &root, &dump, &opts, cancel).await?;
    let name = dump
        .path
        .file_name()
        .map_or_else(|| dump.path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut summary = Vec::new();
    for (db, m) in outcome.markers() {
        let s = match &outcome {
            Outcome::AlreadyLoaded(_) => format!(
                "{db}: already seeded from {name} (sha256 {}, loaded {}); nothing loaded (--force reloads)",
                short(&m.sha256),
                m.loaded_at
            ),
            Outcome::Completed(_) => format!(
                "{db}: seeded from {name} (sha256 {}); completed the views, triggers, routines and events an earlier run left undone",
                short(&m.sha256)
            ),
            Outcome::Loaded(_) => format!(
                "{db}: seeded from {name} (sha256 {}, {} statements) in {:.2?}",
                short(&m.sha256),
                dump.statements,
                started.elapsed()
            ),
        };
        if matches!(outcome, Outcome::Loaded(_)) {
            // The log contract (README, "Operating it"): one line per load, fixed fields.
            tracing::info!(
                database = %db,
                tables = m.tables.len(),
                rows = m.tables.iter().map(|(_, n)| n).sum::<u64>(),
                seconds = started.elapsed().as_secs_f64(),
                sha256 = %m.sha256,
                "dump loaded"
            );
        } else {
            tracing::info!("{s}");
        }
        summary.push(s);
    }
    for (db, _) in outcome.markers() {
        user::ensure(&mut admin, &app, db).await?;
    }
    let _ = admin.conn.disconnect().await;

    let mut lines = Vec::new();
    for (db, marker) in outcome.markers() {
        let tables: Vec<String> = marker.tables.iter().map(|(t, _)| t.clone()).collect();
        let seen = verify::counts(&address, &app, db, &tables).await?;
        for ((table, recorded), (_, now)) in marker.tables.iter().zip(&seen) {
            if recorded != now {
                if matches!(outcome, Outcome::Loaded(_)) {
                    return Err(Error::Verify {
                        database: db.clone(),
                        reason: format!("table {table:?} has {now} rows, the load counted {recorded}"),
                    });
                }
                tracing::warn!(database = %db, "table {table:?} has {now} rows, {recorded} when seeded (changed since)");
            }
        }
        lines.extend(seen.into_iter().map(|(table, n)| format!("{db}.{table}: {n} rows")));
    }
    for s in summary.iter().chain(&lines) {
        println!("{s}");
    }
    tracing::info!(user = %app.user, "the app user can log in and read every table");
    Ok(())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
