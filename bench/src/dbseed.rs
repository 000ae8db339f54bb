//! Benchmark 6: `dbhelper seed` against `mariadb < world_innodb.sql` on the same server.
//!
//! The server runs with MariaDB's default durability (the InnoDB log flushed at every
//! commit), not the test bed's relaxed setting: the seed's way commits once per `INSERT`,
//! and that cost is real. The runs alternate (client, dbhelper, dbhelper, client, ...),
//! after one untimed warm-up of each, and each loads into a fresh database: the client
//! into `world` dropped just before (the dump names it), dbhelper into a new name. Each
//! timing is the wall time of the whole process, connection and exit included.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use testbed::MariaDb;

use crate::Ctx;
use crate::stats::{self, median};
use crate::summary::Section;

/// Whether run `i` puts the client first (the order alternates to share any drift).
#[must_use]
pub fn client_first(i: usize) -> bool {
    i.is_multiple_of(2)
}

fn time_client(db: &MariaDb, dump: &std::path::Path) -> anyhow::Result<Duration> {
    let _ = db.cli(&["-e", "DROP DATABASE IF EXISTS world"]);
    let client = testbed::require_program("mariadb", "apt-get install -y mariadb-client");
    let input = std::fs::File::open(dump).with_context(|| format!("open {}", dump.display()))?;
    let started = Instant::now();
    let out = Command::new(client)
        .args(["-h127.0.0.1", &format!("-P{}", db.port()), "-uroot"])
        .env("MYSQL_PWD", db.root_password())
        .stdin(Stdio::from(input))
        .output()
        .context("run the mariadb client")?;
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "mariadb < dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = db.cli(&["-N", "-e", "SELECT COUNT(*) FROM world.City"]);
    anyhow::ensure!(count.trim() == "4079", "the client loaded {count:?} cities, not 4079");
    Ok(took)
}

fn time_dbhelper(ctx: &Ctx, db: &MariaDb, dump: &std::path::Path, database: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = Command::new(&ctx.dbhelper)
        .args(["seed", "--host", "127.0.0.1", "--port", &db.port().to_string()])
        .arg("--dump")
        .arg(dump)
        .args(["--database", database])
        .env_clear()
        .env("MYSQL_ROOT_PASSWORD", db.root_password())
        .env("APP_PW", "bench-app-pw")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .context("run dbhelper seed")?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && stdout.contains("seeded from"),
        "dbhelper seed failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(stdout.contains("City: 4079 rows"), "dbhelper seed loaded: {stdout}");
    Ok(took)
}

/// Runs benchmark 6 (blocking work, off the async threads).
///
/// # Errors
/// When the server cannot start or a load fails.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    tokio::task::block_in_place(|| run_blocking(ctx))
}

fn run_blocking(ctx: &Ctx) -> anyhow::Result<Section> {
    let dump = testbed::world_dump();
    let db = MariaDb::start_durable();
    let runs = ctx.settings.seed_runs;
    // Warm-up: the first load of each pays for cold files and an empty buffer pool.
    time_client(&db, &dump)?;
    time_dbhelper(ctx, &db, &dump, "bench_warmup")?;
    let mut client_ms = Vec::new();
    let mut seed_ms = Vec::new();
    for i in 0..runs {
        let database = format!("bench_seed_{i}");
        if client_first(i) {
            client_ms.push(time_client(&db, &dump)?.as_secs_f64() * 1000.0);
            seed_ms.push(time_dbhelper(ctx, &db, &dump, &database)?.as_secs_f64() * 1000.0);
        } else {
            seed_ms.push(time_dbhelper(ctx, &db, &dump, &database)?.as_secs_f64() * 1000.0);
            client_ms.push(time_client(&db, &dump)?.as_secs_f64() * 1000.0);
        }
        eprintln!(
            "bench:   run {}/{runs}: mariadb < dump {:.0} ms, dbhelper seed {:.0} ms",
            i + 1,
            client_ms[i],
            seed_ms[i]
        );
    }
    let mut section = Section::new("dbhelper");
    let seed = median(&seed_ms);
    let cli = median(&client_ms);
    section.add("runs", runs as f64);
    section.add("seed_ms", seed);
    section.add("cli_ms", cli);
    section.add("seed_speedup", cli.zip(seed).and_then(|(c, s)| stats::ratio(c, s)));
    section.add("seed_min_ms", seed_ms.iter().copied().reduce(f64::min));
    section.add("seed_max_ms", seed_ms.iter().copied().reduce(f64::max));
    section.add("cli_min_ms", client_ms.iter().copied().reduce(f64::min));
    section.add("cli_max_ms", client_ms.iter().copied().reduce(f64::max));
    section.note(format!(
        "world_innodb.sql (5337 statements) into a fresh database, {runs} alternating runs each after a warm-up; \
         MariaDB with its default durability (innodb_flush_log_at_trx_commit=1); seed_ms and cli_ms are medians \
         (nearest rank) of the whole process's wall time; dbhelper's includes creating the app user and counting \
         every table as that user"
    ));
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_alternates() {
        let order: Vec<bool> = (0..4).map(client_first).collect();
        assert_eq!(order, [true, false, true, false]);
    }
}
