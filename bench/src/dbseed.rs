//! Benchmark 6: `dbhelper seed` against `mariadb < world_innodb.sql` on the same server,
//! then against `mariadb < gen.sql`, a second dump written by the real `mariadb-dump` from
//! a schema generated here (about 50 MB, 10 MB in the quick run: many tables with long
//! extended inserts, views, triggers, procedures and functions), with dbhelper's peak
//! resident memory.
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
    let mut section = world(ctx, &db, &dump)?;
    generated(ctx, &db, &mut section)?;
    Ok(section)
}

/// Tables of the generated schema.
const GEN_TABLES: usize = 40;

/// The generated schema's statements: `GEN_TABLES` tables of `rows` rows each (about 190
/// bytes a row in the dump), a view, a trigger and a procedure per table, some functions.
#[must_use]
pub fn generated_schema(rows: usize) -> String {
    let mut sql = String::from("CREATE DATABASE bench_gen CHARACTER SET utf8mb4;\nUSE bench_gen;\n");
    for t in 0..GEN_TABLES {
        sql.push_str(&format!(
            "CREATE TABLE t{t:02} (id INT PRIMARY KEY, k INT NOT NULL, name VARCHAR(64) NOT NULL, note TEXT, \
             amount DECIMAL(12,2), created DATETIME, KEY (k)) ENGINE=InnoDB;\n\
             INSERT INTO t{t:02} SELECT seq, seq % 1000, CONCAT('name-{t}-', seq), REPEAT(MD5(seq), 4), seq / 7, \
             '2020-01-01' + INTERVAL seq SECOND FROM seq_1_to_{rows};\n\
             CREATE TABLE t{t:02}_log (id INT AUTO_INCREMENT PRIMARY KEY, ref INT) ENGINE=InnoDB;\n\
             CREATE VIEW v{t:02} AS SELECT k, COUNT(*) AS n, SUM(amount) AS total FROM t{t:02} GROUP BY k;\n\
             CREATE TRIGGER t{t:02}_ai AFTER INSERT ON t{t:02} FOR EACH ROW INSERT INTO t{t:02}_log (ref) VALUES (NEW.id);\n\
             CREATE PROCEDURE p{t:02}(IN n INT) SELECT * FROM t{t:02} WHERE k = n;\n"
        ));
    }
    for f in 0..5 {
        sql.push_str(&format!(
            "CREATE FUNCTION f{f}(x INT) RETURNS INT DETERMINISTIC RETURN x + {f};\n"
        ));
    }
    sql
}

/// The second dump: generated, dumped with `mariadb-dump`, loaded both ways.
fn generated(ctx: &Ctx, db: &MariaDb, section: &mut Section) -> anyhow::Result<()> {
    let target: usize = if ctx.settings.mode == "quick" {
        10 << 20
    } else {
        50 << 20
    };
    let rows = target / GEN_TABLES / 190;
    let started = Instant::now();
    let client = testbed::require_program("mariadb", "apt-get install -y mariadb-client");
    let out = Command::new(&client)
        .args(["-h127.0.0.1", &format!("-P{}", db.port()), "-uroot"])
        .env("MYSQL_PWD", db.root_password())
        .args(["-e", &generated_schema(rows)])
        .output()
        .context("generate the schema")?;
    anyhow::ensure!(
        out.status.success(),
        "generating the schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = ctx.out.join("gen.sql");
    let mariadb_dump = testbed::require_program("mariadb-dump", "apt-get install -y mariadb-client");
    let out = Command::new(mariadb_dump)
        .args(["-h127.0.0.1", &format!("-P{}", db.port()), "-uroot"])
        .env("MYSQL_PWD", db.root_password())
        .args(["--routines", "--triggers", "--events", "--databases", "bench_gen"])
        .output()
        .context("run mariadb-dump")?;
    anyhow::ensure!(
        out.status.success(),
        "mariadb-dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&dump, &out.stdout).with_context(|| format!("write {}", dump.display()))?;
    let bytes = out.stdout.len();
    eprintln!(
        "bench:   generated dump: {:.1} MiB, {GEN_TABLES} tables of {rows} rows, in {:.1?}",
        bytes as f64 / f64::from(1 << 20),
        started.elapsed()
    );
    let runs = ctx.settings.seed_runs;
    let expect = format!("t00: {rows} rows");
    let tables = floor_tables(&dump)?;
    let objects = object_statements(&dump)?;
    let mut client_ms = Vec::new();
    let mut seed_ms = Vec::new();
    let mut floor_ms = Vec::new();
    let mut objects_ms = Vec::new();
    let mut peak = Vec::new();
    for i in 0..runs {
        let database = format!("bench_gen_{i}");
        let mut one_seed = |seed_ms: &mut Vec<f64>| -> anyhow::Result<()> {
            let (took, rss) = time_dbhelper_peak(ctx, db, &dump, &database, &expect)?;
            seed_ms.push(took.as_secs_f64() * 1000.0);
            peak.push(rss as f64);
            Ok(())
        };
        let one_client = |client_ms: &mut Vec<f64>| -> anyhow::Result<()> {
            let _ = db.cli(&["-e", "DROP DATABASE IF EXISTS bench_gen"]);
            let input = std::fs::File::open(&dump).with_context(|| format!("open {}", dump.display()))?;
            let started = Instant::now();
            let out = Command::new(&client)
                .args(["-h127.0.0.1", &format!("-P{}", db.port()), "-uroot"])
                .env("MYSQL_PWD", db.root_password())
                .stdin(Stdio::from(input))
                .output()
                .context("run the mariadb client")?;
            client_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(
                out.status.success(),
                "mariadb < gen.sql: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        if client_first(i) {
            one_client(&mut client_ms)?;
            one_seed(&mut seed_ms)?;
        } else {
            one_seed(&mut seed_ms)?;
            one_client(&mut client_ms)?;
        }
        let _ = db.cli(&["-e", &format!("DROP DATABASE IF EXISTS {database}")]);
        let (rows, objs) = floor(db, &tables, &objects, FLOOR_JOBS)?;
        floor_ms.push(rows.as_secs_f64() * 1000.0);
        objects_ms.push(objs.as_secs_f64() * 1000.0);
        eprintln!(
            "bench:   gen run {}/{runs}: mariadb < dump {:.0} ms, dbhelper seed {:.0} ms (peak RSS {:.1} MiB); \
             from memory, the tables and their rows alone {:.0} ms, then the views, triggers and routines {:.0} ms",
            i + 1,
            client_ms[i],
            seed_ms[i],
            peak[i] / f64::from(1 << 20),
            floor_ms[i],
            objects_ms[i]
        );
    }
    let seed = median(&seed_ms);
    let cli = median(&client_ms);
    let floor = median(&floor_ms);
    let objects_floor = median(&objects_ms);
    section.add("gen_dump_bytes", bytes as f64);
    section.add("gen_seed_ms", seed);
    section.add("gen_cli_ms", cli);
    section.add("gen_speedup", cli.zip(seed).and_then(|(c, s)| stats::ratio(c, s)));
    section.add("gen_seed_peak_rss_bytes", peak.iter().copied().reduce(f64::max));
    section.add("gen_tables_floor_ms", floor);
    section.add("gen_objects_floor_ms", objects_floor);
    section.add(
        "gen_tables_speedup_ceiling",
        cli.zip(floor).and_then(|(c, f)| stats::ratio(c, f)),
    );
    section.add(
        "gen_speedup_ceiling",
        cli.zip(floor.zip(objects_floor))
            .and_then(|(c, (f, o))| stats::ratio(c, f + o)),
    );
    section.note(format!(
        "gen_tables_floor_ms: the dump's {} CREATE TABLE and {} INSERT statements alone, held in memory, sent on \
         {FLOOR_JOBS} connections (tables dealt by size as dbhelper deals them, each table's statements in dump \
         order) into an empty database with the dump's session settings: no views or routines, no reading, no \
         staging; no loader that sends the dump's statements creates and fills the tables faster on this server \
         (gen_tables_speedup_ceiling is gen_cli_ms over it). gen_objects_floor_ms: then, on those tables, the {} \
         statements of the views, triggers, procedures and functions (with the session statements around them) \
         in one multi-statement round trip, nothing else. A loader that creates them after the rows (the client \
         does, and must for the triggers, which would fire on the rows; dbhelper does, after the swap) cannot \
         beat gen_cli_ms over their sum, gen_speedup_ceiling",
        tables.len(),
        tables.iter().map(|t| t.inserts.len()).sum::<usize>(),
        objects.len()
    ));
    section.note(format!(
        "gen.sql: mariadb-dump --routines --triggers --events of a generated schema ({GEN_TABLES} tables of {rows} rows \
         in extended inserts, {GEN_TABLES} views, triggers and procedures, 5 functions), {runs} alternating runs, \
         no warm-up; gen_seed_peak_rss_bytes is dbhelper's VmHWM, sampled every 5 ms"
    ));
    Ok(())
}

/// Connections of the rows floor: dbhelper's default.
const FLOOR_JOBS: usize = 4;

/// One table of the dump: its `CREATE TABLE` and `INSERT` statements, in dump order.
#[derive(Debug)]
struct FloorTable {
    name: String,
    create: Vec<u8>,
    inserts: Vec<Vec<u8>>,
    bytes: usize,
}

/// The dump's tables (`CREATE TABLE `t` …`, then `INSERT INTO `t` …`), split by dbhelper's
/// own splitter.
fn floor_tables(dump: &std::path::Path) -> anyhow::Result<Vec<FloorTable>> {
    let mut tables: Vec<FloorTable> = Vec::new();
    dbhelper::source::Source::open(dump)?.for_each_statement(|st| {
        if let Some(name) = named(st.bytes, b"CREATE TABLE `") {
            tables.push(FloorTable {
                name,
                create: st.bytes.to_vec(),
                inserts: Vec::new(),
                bytes: st.bytes.len(),
            });
        } else if let Some(name) = named(st.bytes, b"INSERT INTO `")
            && let Some(t) = tables.iter_mut().rev().find(|t| t.name == name)
        {
            t.bytes += st.bytes.len();
            t.inserts.push(st.bytes.to_vec());
        }
        Ok(())
    })?;
    anyhow::ensure!(
        tables.iter().any(|t| !t.inserts.is_empty()),
        "{} holds no CREATE TABLE `…` with INSERT INTO `…` statements",
        dump.display()
    );
    Ok(tables)
}

/// The table a statement that starts with `prefix` (ending in a backquote) names, as
/// mariadb-dump writes `` CREATE TABLE `name` `` and `` INSERT INTO `name` ``.
#[must_use]
pub fn named(statement: &[u8], prefix: &[u8]) -> Option<String> {
    let rest = statement.strip_prefix(prefix)?;
    let end = rest.iter().position(|&b| b == b'`')?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// The statements dbhelper's objects step replays (views, triggers, routines, events and
/// the session statements around them), as dbhelper plans them, with each `USE` made
/// `USE bench_floor`.
fn object_statements(dump: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    use dbhelper::plan::{Action, Planner};
    let mut planner = Planner::new(0, false);
    dbhelper::source::Source::open(dump)?.for_each_statement(|st| {
        planner
            .statement(st.bytes, st.number, st.line, st.end)
            .map_err(|source| dbhelper::Error::DumpPlan {
                path: dump.to_owned(),
                source,
            })?;
        planner.take_tables().for_each(drop);
        Ok(())
    })?;
    Ok(planner
        .finish()
        .objects
        .iter()
        .filter_map(|step| match &step.action {
            Action::Use(_) => Some(b"USE bench_floor".to_vec()),
            Action::AlterDatabase(..) => None,
            Action::Sql(sql) | Action::Object { sql, .. } => Some(sql.to_vec()),
        })
        .collect())
}

/// The server's own time for the dump's tables, then for its objects: its `CREATE TABLE`
/// and `INSERT` statements, already in memory, on `jobs` connections into an empty
/// database with the dump's session settings, timed from the first statement sent to the
/// last answer; then the object statements in one round trip. The database is created
/// before and dropped after.
fn floor(
    db: &MariaDb,
    tables: &[FloorTable],
    objects: &[Vec<u8>],
    jobs: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let _ = db.cli(&[
        "-e",
        "DROP DATABASE IF EXISTS bench_floor; CREATE DATABASE bench_floor CHARACTER SET utf8mb4",
    ]);
    let sizes: Vec<usize> = tables.iter().map(|t| t.bytes).collect();
    // Dealt as dbhelper deals them.
    let lane_of = dbhelper::plan::deal_by_size(&sizes, jobs);
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(db.port())
        .user(Some("root"))
        .pass(Some(db.root_password()))
        .db_name(Some("bench_floor"));
    let took = tokio::runtime::Handle::current().block_on(async {
        use mysql_async::prelude::Queryable as _;
        let mut conns = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            let mut c = mysql_async::Conn::new(opts.clone()).await?;
            // What mariadb-dump's header sets before the rows.
            c.query_drop(
                "SET NAMES utf8mb4, TIME_ZONE = '+00:00', UNIQUE_CHECKS = 0, FOREIGN_KEY_CHECKS = 0, \
                 SQL_MODE = 'NO_AUTO_VALUE_ON_ZERO', SQL_NOTES = 0",
            )
            .await?;
            conns.push(c);
        }
        let started = Instant::now();
        let lanes = conns.iter_mut().enumerate().map(|(lane, c)| {
            let mine: Vec<&[u8]> = tables
                .iter()
                .zip(&lane_of)
                .filter(|(_, l)| **l == lane)
                .flat_map(|(t, _)| std::iter::once(t.create.as_slice()).chain(t.inserts.iter().map(Vec::as_slice)))
                .collect();
            async move {
                for sql in mine {
                    c.query_drop(sql).await?;
                }
                Ok::<_, mysql_async::Error>(())
            }
        });
        futures::future::try_join_all(lanes).await?;
        let rows = started.elapsed();
        let started = Instant::now();
        let statements: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
        if let Some(c) = conns.first_mut() {
            dbhelper::db::exec_batch(c, &statements)
                .await
                .map_err(|(i, e)| anyhow::anyhow!("object statement {i} of the floor: {e}"))?;
        }
        let objects = started.elapsed();
        for c in conns {
            let _ = c.disconnect().await;
        }
        Ok::<_, anyhow::Error>((rows, objects))
    })?;
    let _ = db.cli(&["-e", "DROP DATABASE bench_floor"]);
    Ok(took)
}

/// Times one `dbhelper seed` of the generated dump and samples its peak resident memory.
fn time_dbhelper_peak(
    ctx: &Ctx,
    db: &MariaDb,
    dump: &std::path::Path,
    database: &str,
    expect: &str,
) -> anyhow::Result<(Duration, u64)> {
    let stdout = ctx.log(&format!("dbhelper-gen-{database}.out"));
    let stderr = ctx.log(&format!("dbhelper-gen-{database}.log"));
    let started = Instant::now();
    let mut child = Command::new(&ctx.dbhelper)
        .args(["seed", "--host", "127.0.0.1", "--port", &db.port().to_string()])
        .arg("--dump")
        .arg(dump)
        .args(["--database", database])
        .env_clear()
        .env("MYSQL_ROOT_PASSWORD", db.root_password())
        .env("APP_PW", "bench-app-pw")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout)?)
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .context("run dbhelper seed")?;
    let mut peak = 0;
    let status = loop {
        if let Some(p) = crate::process::peak_rss_bytes(child.id()) {
            peak = peak.max(p);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    anyhow::ensure!(
        status.success() && out.contains(expect),
        "dbhelper seed of gen.sql failed ({status}): {out} (see {})",
        stderr.display()
    );
    Ok((took, peak))
}

/// The world dump, loaded both ways `seed_runs` times after a warm-up.
fn world(ctx: &Ctx, db: &MariaDb, dump: &std::path::Path) -> anyhow::Result<Section> {
    let runs = ctx.settings.seed_runs;
    // Warm-up: the first load of each pays for cold files and an empty buffer pool.
    time_client(db, dump)?;
    time_dbhelper(ctx, db, dump, "bench_warmup")?;
    let mut client_ms = Vec::new();
    let mut seed_ms = Vec::new();
    for i in 0..runs {
        let database = format!("bench_seed_{i}");
        if client_first(i) {
            client_ms.push(time_client(db, dump)?.as_secs_f64() * 1000.0);
            seed_ms.push(time_dbhelper(ctx, db, dump, &database)?.as_secs_f64() * 1000.0);
        } else {
            seed_ms.push(time_dbhelper(ctx, db, dump, &database)?.as_secs_f64() * 1000.0);
            client_ms.push(time_client(db, dump)?.as_secs_f64() * 1000.0);
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
    fn statements_name_their_table() {
        let insert = &b"INSERT INTO `"[..];
        assert_eq!(named(b"INSERT INTO `t00` VALUES (1)", insert).as_deref(), Some("t00"));
        assert_eq!(named(b"INSERT INTO `a b` VALUES (1)", insert).as_deref(), Some("a b"));
        assert_eq!(named(b"CREATE TABLE `t00` (id INT)", insert), None);
        assert_eq!(
            named(b"CREATE TABLE `t00` (id INT)", b"CREATE TABLE `").as_deref(),
            Some("t00")
        );
        assert_eq!(named(b"INSERT INTO `t00", insert), None);
    }

    #[test]
    fn the_order_alternates() {
        let order: Vec<bool> = (0..4).map(client_first).collect();
        assert_eq!(order, [true, false, true, false]);
    }
}
