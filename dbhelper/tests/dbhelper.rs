//! dbhelper against a real MariaDB (and a real etcd), through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

#[path = "dbhelper/support.rs"]
mod support;

#[path = "dbhelper/equivalence.rs"]
mod equivalence;

#[path = "dbhelper/parallel.rs"]
mod parallel;

#[path = "dbhelper/streaming.rs"]
mod streaming;

use std::time::{Duration, Instant};

use support::{
    OLD_WORLD_VIEW, Proxy, Reader, Trip, WORLD_COUNTS, WORLD_VIEW, dbhelper, old_world, root_sql, run, seed_at, sql,
    user_databases, world_counts, world_dump, write_file,
};
use testbed::MariaDb;

fn dump_arg() -> String {
    world_dump().display().to_string()
}

/// The exact call of the issue (host, port, env passwords), then the app user's own login.
#[test]
fn seeds_the_world_dump_with_counts_latin1_text_and_a_working_app_user() {
    let db = MariaDb::start();
    let port = db.port().to_string();
    let out = run(&mut seed_at(&port, &dump_arg(), &["--log-format", "json"]));
    out.assert_ok();
    // The log contract: one JSON "dump loaded" line with the documented fields.
    let loaded: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "dump loaded")
        .collect();
    assert_eq!(loaded.len(), 1, "{}", out.stderr);
    // Every line of the log is one JSON object, not only the one looked up here.
    for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
    }
    assert_eq!(loaded[0]["database"], "world", "{}", loaded[0]);
    assert_eq!(loaded[0]["tables"], 3, "{}", loaded[0]);
    assert_eq!(loaded[0]["rows"], 4079 + 239 + 984, "{}", loaded[0]);
    assert!(loaded[0]["seconds"].as_f64().is_some_and(|s| s > 0.0), "{}", loaded[0]);
    for line in [
        "world.City: 4079 rows",
        "world.Country: 239 rows",
        "world.CountryLanguage: 984 rows",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?} in:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("seeded from world_innodb.sql"), "{}", out.stdout);

    // `mariadb -h127.0.0.1 -P<port> -uapp -papppw world -e 'SELECT COUNT(*) FROM City'` prints 4079.
    assert_eq!(
        sql(db.port(), "app", "apppw", "SELECT COUNT(*) FROM world.City").unwrap(),
        ["4079"]
    );
    // latin1 bytes stored as latin1, read back correctly as utf8mb4.
    assert_eq!(
        sql(
            db.port(),
            "app",
            "apppw",
            "SELECT Name, HEX(Name) FROM world.City WHERE ID=45"
        )
        .unwrap(),
        ["Béjaïa\t42E96A61EF61"]
    );
    // Foreign keys as the dump declares them, pointing at the live tables.
    assert_eq!(
        root_sql(
            &db,
            "SELECT TABLE_NAME, REFERENCED_TABLE_NAME, UNIQUE_CONSTRAINT_SCHEMA FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA='world' ORDER BY TABLE_NAME"
        ),
        ["City\tCountry\tworld", "CountryLanguage\tCountry\tworld"]
    );
    // The app user may read but is not root: no access to other databases.
    assert!(sql(db.port(), "app", "apppw", "SELECT COUNT(*) FROM mysql.user").is_err());
    // Nothing else left behind: no staging or retired database.
    assert_eq!(user_databases(&db), ["world"]);
    assert_eq!(
        root_sql(
            &db,
            "SELECT table_name, row_count FROM world._dbhelper_seed ORDER BY table_name"
        ),
        ["City\t4079", "Country\t239", "CountryLanguage\t984"]
    );
}

#[test]
fn second_run_skips_the_load_and_force_reloads_it() {
    let db = MariaDb::start();
    let port = db.port().to_string();
    run(&mut seed_at(&port, &dump_arg(), &[])).assert_ok();

    // A change made after seeding survives a rerun: the rerun loads nothing.
    root_sql(&db, "UPDATE world.City SET Name='Changed' WHERE ID=1");
    let again = run(&mut seed_at(&port, &dump_arg(), &[]));
    again.assert_ok();
    assert!(
        again.stdout.contains("world: already seeded from world_innodb.sql"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("world.City: 4079 rows"), "{}", again.stdout);
    assert_eq!(root_sql(&db, "SELECT Name FROM world.City WHERE ID=1"), ["Changed"]);

    // The app user's password follows APP_PW on every run.
    let mut cmd = seed_at(&port, &dump_arg(), &[]);
    cmd.env("APP_PW", "newpw");
    run(&mut cmd).assert_ok();
    assert!(
        sql(db.port(), "app", "apppw", "SELECT 1").is_err(),
        "old password refused"
    );
    assert_eq!(
        sql(db.port(), "app", "newpw", "SELECT COUNT(*) FROM world.Country").unwrap(),
        ["239"]
    );

    let forced = run(&mut seed_at(&port, &dump_arg(), &["--force"]));
    forced.assert_ok();
    assert!(
        forced.stdout.contains("world: seeded from world_innodb.sql"),
        "{}",
        forced.stdout
    );
    assert_eq!(root_sql(&db, "SELECT Name FROM world.City WHERE ID=1"), ["Kabul"]);
    assert_eq!(world_counts(db.port(), "world").as_deref(), Some(WORLD_COUNTS));
    assert_eq!(user_databases(&db), ["world"]);
}

/// SIGKILL in the middle of the load (the load connection stalled by a proxy once part of
/// the rows are in): readers never see a partial world, the next run drops the leftover
/// staging database and loads it all.
#[test]
fn load_killed_half_way_is_invisible_and_the_next_run_repairs_it() {
    let db = MariaDb::start();
    let proxy = Proxy::start(db.port());
    proxy.trip_after(100 * 1024, Trip::Stall);
    let reader = Reader::start(db.port(), "world");
    let pport = proxy.port.to_string();
    let mut running = support::spawn(&mut seed_at(&pport, &dump_arg(), &["--batch-bytes", "16K"]));
    // Wait until the staging database holds some, not all, of the cities.
    let partial = testbed::eventually_blocking("the proxy trips mid-load", Duration::from_secs(30), || {
        let n = sql(
            db.port(),
            "root",
            "secret",
            "SELECT COUNT(*) FROM world__dbhelper_new.City",
        )
        .ok()?;
        let n: u64 = n.first()?.parse().ok()?;
        (proxy.tripped() && n > 0 && n < 4079).then_some(n)
    })
    .ok();
    assert!(
        partial.is_some(),
        "the load never stalled half-way; stderr:\n{}",
        running.log()
    );
    running.kill();
    let killed = support::finish(&mut running, Duration::from_secs(10));
    assert_eq!(killed.code, None, "killed by a signal");
    proxy.cut_all();
    assert_eq!(
        world_counts(db.port(), "world"),
        None,
        "the live database shows nothing of the killed load"
    );

    let out = run(&mut seed_at(&db.port().to_string(), &dump_arg(), &[]));
    out.assert_ok();
    assert!(out.stderr.contains("leftover of an interrupted run"), "{}", out.stderr);
    assert!(out.stdout.contains("world: seeded from"), "{}", out.stdout);
    let seen = reader.stop();
    assert_eq!(world_counts(db.port(), "world").as_deref(), Some(WORLD_COUNTS));
    assert!(
        seen.keys()
            .all(|view| view.is_none() || view.as_deref() == Some(WORLD_VIEW)),
        "a reader saw a partial world: {seen:?}"
    );
    assert!(seen.contains_key(&None), "the reader looked before the load: {seen:?}");
    assert_eq!(user_databases(&db), ["world"]);
}

/// The load connection drops in the middle of a forced reload: dbhelper fails with the
/// address and statement, the old data stays live (readers never see a mix), and the next
/// run loads the new dump.
#[test]
fn connection_dropped_during_a_reload_keeps_the_old_data_live() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    // The "old" dump: the same world with one value changed in each table, so a reader
    // would see a mix of old and new tables.
    let old = old_world();
    let old_dump = write_file(dir.path(), "old.sql", &old);
    let port = db.port().to_string();
    run(&mut seed_at(&port, old_dump.to_str().unwrap(), &[])).assert_ok();

    let reader = Reader::start(db.port(), "world");
    let proxy = Proxy::start(db.port());
    proxy.trip_after(100 * 1024, Trip::Cut);
    let pport = proxy.port.to_string();
    let failed = run(&mut seed_at(&pport, &dump_arg(), &["--batch-bytes", "16K"]));
    assert!(proxy.tripped());
    assert_eq!(failed.code, Some(1), "{failed:?}");
    let msg = failed.error_line();
    assert!(
        msg.contains(&format!("127.0.0.1:{pport}"))
            && msg.contains("loading statement")
            && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(root_sql(&db, "SELECT Name FROM world.City WHERE ID=1"), ["Old Kabul"]);
    // The control connection survived the cut and dropped the staging database itself.
    assert_eq!(user_databases(&db), ["world"]);

    let out = run(&mut seed_at(&port, &dump_arg(), &[]));
    out.assert_ok();
    assert!(
        out.stdout.contains("world: seeded from"),
        "a different dump reloads without --force: {}",
        out.stdout
    );
    assert_eq!(root_sql(&db, "SELECT Name FROM world.City WHERE ID=1"), ["Kabul"]);
    // Let the reader look at the new world too.
    std::thread::sleep(Duration::from_millis(500));
    let seen = reader.stop();
    assert!(
        seen.contains_key(&Some(OLD_WORLD_VIEW.to_owned())) && seen.contains_key(&Some(WORLD_VIEW.to_owned())),
        "the reader saw the old world, then the new one: {seen:?}"
    );
    assert_eq!(
        seen.len(),
        2,
        "readers only ever saw a whole old or a whole new world: {seen:?}"
    );
}

/// The seed's way: docker-link variables, including `DB_PORT=tcp://ADDR:PORT`, the root
/// password from `DB_ENV_MYSQL_ROOT_PASSWORD`, and the app settings from the environment.
#[test]
fn finds_the_database_through_docker_link_variables() {
    let db = MariaDb::start();
    let port = db.port().to_string();
    let mut cmd = dbhelper(&["seed", "--dump", &dump_arg()]);
    cmd.env("DB_PORT", format!("tcp://127.0.0.1:{port}"))
        .env("DB_PORT_3306_TCP_ADDR", "127.0.0.1")
        .env("DB_PORT_3306_TCP_PORT", &port)
        .env("DB_ENV_MYSQL_ROOT_PASSWORD", "secret")
        .env("APP_DB_NAME", "linked")
        .env("APP_USER", "webapp")
        .env("APP_PW", "webpw");
    let out = run(&mut cmd);
    out.assert_ok();
    assert!(out.stderr.contains("docker link"), "{}", out.stderr);
    assert!(out.stdout.contains("linked.City: 4079 rows"), "{}", out.stdout);
    // The dump says `USE world`, but the tables go where APP_DB_NAME says.
    assert_eq!(user_databases(&db), ["linked"]);
    assert_eq!(
        sql(
            db.port(),
            "webapp",
            "webpw",
            "SELECT COUNT(*) FROM linked.CountryLanguage"
        )
        .unwrap(),
        ["984"]
    );
}

/// `--etcd-key`: dbhelper starts before the key exists, waits, and seeds once the
/// announcer's value appears. The app password comes from a file.
#[test]
fn finds_the_database_through_an_etcd_key_that_appears_later() {
    let db = MariaDb::start();
    let etcd = testbed::Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = write_file(dir.path(), "app_pw", b"filepw\n");
    let key = format!("/services/db/{}", testbed::unique("db_private_ip"));
    let port = db.port().to_string();
    let mut cmd = dbhelper(&[
        "seed",
        "--etcd-key",
        &key,
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--port",
        &port,
        "--dump",
        &dump_arg(),
        "--app-password-file",
        pw_file.to_str().unwrap(),
        "--wait-timeout",
        "60s",
    ]);
    cmd.env("MYSQL_ROOT_PASSWORD", "secret");
    let mut running = support::spawn(&mut cmd);
    running.wait_log_blocking("waiting for etcd key", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    assert!(running.is_running(), "still waiting for the key");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = etcd.client().await;
        client
            .put(
                key.as_str(),
                sidekick::schema::encode_value("127.0.0.1".parse().unwrap()),
                None,
            )
            .await
            .unwrap();
    });
    let out = support::finish(&mut running, Duration::from_secs(60));
    out.assert_ok();
    assert!(out.stderr.contains(&format!("etcd key {key}")), "{}", out.stderr);
    assert!(out.stdout.contains("world.City: 4079 rows"), "{}", out.stdout);
    assert_eq!(
        sql(db.port(), "app", "filepw", "SELECT COUNT(*) FROM world.City").unwrap(),
        ["4079"]
    );
}

/// `dbhelper wait` keeps trying until something accepts a login on the port.
#[test]
fn wait_succeeds_once_a_late_database_accepts_logins() {
    let db = MariaDb::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut cmd = dbhelper(&[
        "wait",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--wait-timeout",
        "60s",
    ]);
    cmd.env("MYSQL_ROOT_PASSWORD", "secret");
    let mut running = support::spawn(&mut cmd);
    running.wait_log_blocking("waiting for the database", Duration::from_secs(20));
    let _proxy = Proxy::start_on(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(), db.port());
    let out = support::finish(&mut running, Duration::from_secs(60));
    out.assert_ok();
    assert_eq!(out.stdout.trim(), format!("database at 127.0.0.1:{port} is ready"));
}

#[test]
fn a_database_that_never_comes_up_times_out_naming_host_and_port() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let started = Instant::now();
    let out = run(&mut dbhelper(&[
        "wait",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--wait-timeout",
        "2s",
    ]));
    assert_eq!(out.code, Some(4), "{out:?}");
    let msg = out.error_line();
    assert!(
        msg.contains(&format!("127.0.0.1:{port} is not ready after")) && msg.contains("refused"),
        "{msg}"
    );
    // Gave up at the 2 s timeout, not before it and not at the 120 s default: read from
    // dbhelper's own report ("after 2.003s (7 attempts)"), not from a wall-clock bound on
    // a loaded machine.
    let report = msg.split("is not ready after ").nth(1).unwrap_or_default();
    let waited = report
        .split_whitespace()
        .next()
        .and_then(|d| match d.strip_suffix("ms") {
            Some(ms) => ms.parse::<f64>().ok().map(|v| v / 1000.0),
            None => d.strip_suffix('s')?.parse::<f64>().ok(),
        })
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| panic!("no duration in {msg:?}"));
    let attempts: u32 = report
        .split('(')
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no attempt count in {msg:?}"));
    eprintln!(
        "gave up after {waited:?} ({attempts} attempts); {:?} in all",
        started.elapsed()
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(60),
        "waited {waited:?} for a 2 s timeout"
    );
    assert!(attempts >= 2, "retried until the timeout: {attempts}");
}

/// A wrong root password is final at once: one login attempt, no retry storm.
#[test]
fn wrong_root_password_fails_at_once_with_one_attempt() {
    let db = MariaDb::start();
    let denied = |db: &MariaDb| -> u64 {
        root_sql(db, "SHOW GLOBAL STATUS LIKE 'Access_denied_errors'")[0]
            .split('\t')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = denied(&db);
    let mut cmd = dbhelper(&[
        "seed",
        "--host",
        "127.0.0.1",
        "--port",
        &db.port().to_string(),
        "--dump",
        &dump_arg(),
        "--wait-timeout",
        "60s",
    ]);
    cmd.env("MYSQL_ROOT_PASSWORD", "wrong").env("APP_PW", "apppw");
    let out = run(&mut cmd);
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(
        out.error_line().contains("refused the login of \"root\""),
        "{}",
        out.error_line()
    );
    assert!(
        !out.stderr.contains("wrong"),
        "the password is never printed: {}",
        out.stderr
    );
    assert_eq!(denied(&db) - before, 1, "exactly one login attempt");
    assert!(user_databases(&db).is_empty());
}

/// A statement the server rejects (inside a run of merged inserts) is named by number,
/// line and first bytes; nothing is left behind, not even an empty database.
#[test]
fn rejected_statement_is_named_and_nothing_is_left_behind() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let dump = write_file(
        dir.path(),
        "bad.sql",
        b"/*!40101 SET NAMES latin1 */;\nCREATE TABLE t (a int, b char(10));\n\
          INSERT INTO t VALUES (1,'B\xe9ja\xefa');\nINSERT INTO t VALUES (2,'x');\n\
          INSERT INTO t VALUES (3,'y','too many');\nINSERT INTO t VALUES (4,'z');\n",
    );
    let out = run(&mut seed_at(&db.port().to_string(), dump.to_str().unwrap(), &[]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let msg = out.error_line();
    assert!(msg.contains("statement 5 (line 5)"), "{msg}");
    assert!(msg.contains("ERROR 1136"), "{msg}");
    assert!(
        msg.contains("it begins: INSERT INTO t VALUES (3,'y','too many')"),
        "{msg}"
    );
    assert!(user_databases(&db).is_empty(), "{:?}", user_databases(&db));
    assert!(
        sql(db.port(), "app", "apppw", "SELECT 1").is_err(),
        "no app user for a failed seed"
    );

    // A statement refused after the swap (a view on a missing table): the tables are in,
    // the error says what is missing, and the marker says the objects step is not done.
    let dump = write_file(
        dir.path(),
        "view.sql",
        b"CREATE TABLE t (a int);\nINSERT INTO t VALUES (1);\nCREATE VIEW v AS SELECT a FROM missing;\n",
    );
    let out = run(&mut seed_at(&db.port().to_string(), dump.to_str().unwrap(), &[]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let msg = out.error_line();
    assert!(
        msg.contains("statement 3 (line 3) of the dump was rejected after the swap")
            && msg.contains("ERROR 1146")
            && msg.contains("it begins: CREATE VIEW v AS SELECT a FROM missing"),
        "{msg}"
    );
    assert_eq!(
        root_sql(
            &db,
            "SELECT table_name, row_count, objects_done FROM world._dbhelper_seed"
        ),
        ["t\t1\t0"]
    );
}

/// Dumps that cannot be used are refused before anything touches the database.
#[test]
fn unusable_dumps_and_options_are_refused_before_touching_the_database() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let port = db.port().to_string();
    let open_quote = write_file(
        dir.path(),
        "quote.sql",
        b"CREATE TABLE t (a int);\nINSERT INTO t VALUES ('abc);\n",
    );
    let open_comment = write_file(
        dir.path(),
        "comment.sql",
        b"CREATE TABLE t (a int);\n\n/* never closed;\n",
    );
    let system = write_file(dir.path(), "system.sql", b"USE a\nCREATE TABLE t (a int);\nUSE mysql\n");
    let empty = write_file(dir.path(), "empty.sql", b"-- nothing here\n");
    let missing = dir.path().join("missing.sql");
    let cases: [(&std::path::Path, u8, &[&str]); 6] = [
        (&open_quote, 3, &["quote.sql", "'-quoted string that starts at line 2"]),
        (&open_comment, 3, &["comment.sql", "/* comment that starts at line 3"]),
        (
            &system,
            3,
            &[
                "system.sql",
                "system schema \"mysql\" (line 3)",
                "--replay-system-schemas",
            ],
        ),
        (&empty, 3, &["empty.sql", "no SQL statement"]),
        (&missing, 3, &["missing.sql", "cannot read the dump"]),
        (dir.path(), 3, &["cannot read the dump"]),
    ];
    for (path, code, needles) in cases {
        let out = run(&mut seed_at(&port, path.to_str().unwrap(), &[]));
        assert_eq!(out.code, Some(i32::from(code)), "{path:?}: {out:?}");
        for n in needles {
            assert!(
                out.error_line().contains(n),
                "{path:?}: {n:?} not in {}",
                out.error_line()
            );
        }
        assert_eq!(out.stderr.lines().count(), 1, "one line, no progress: {}", out.stderr);
    }
    // No app password: refused, named.
    let mut cmd = dbhelper(&["seed", "--host", "127.0.0.1", "--port", &port, "--dump", &dump_arg()]);
    cmd.env("MYSQL_ROOT_PASSWORD", "secret");
    let out = run(&mut cmd);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.error_line().contains("APP_PW"), "{}", out.error_line());
    // Bad flag values are refused by the parser, naming the value.
    let out = run(&mut dbhelper(&["seed", "--dump", "x", "--database", "a.b"]));
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("\"a.b\""), "{}", out.stderr);
    assert!(user_databases(&db).is_empty());
}

/// SIGTERM while waiting: a prompt, clean exit that says nothing changed.
#[test]
fn sigterm_while_waiting_stops_promptly() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut running = support::spawn(&mut dbhelper(&[
        "wait",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--wait-timeout",
        "120s",
    ]));
    running.wait_log_blocking("waiting for the database", Duration::from_secs(20));
    running.signal(libc::SIGTERM);
    let out = support::finish(&mut running, Duration::from_secs(10));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.error_line().contains("stopped by a signal while waiting"),
        "{}",
        out.error_line()
    );
}

/// Views, triggers and routines are created right after the swap; a run killed inside
/// that step (its connection stalled by a proxy, then SIGKILL) leaves the tables in place
/// and the marker saying the step is not done, and the next run completes it without
/// loading the tables again.
#[test]
fn objects_step_killed_half_way_is_completed_by_the_next_run() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    // The objects step sends far more than the tables step: only its connection trips.
    let body = "x".repeat(300 * 1024);
    let dump = format!(
        "CREATE TABLE t (a int PRIMARY KEY, b varchar(10));\nINSERT INTO t VALUES (1,'one'),(2,'two');\n\
         CREATE TABLE log (n int);\n\
         CREATE VIEW v AS SELECT a, b FROM t;\n\
         DELIMITER ;;\n\
         CREATE TRIGGER t_ai AFTER INSERT ON t FOR EACH ROW BEGIN INSERT INTO log VALUES (NEW.a); END ;;\n\
         CREATE PROCEDURE big() BEGIN SELECT '{body}'; END ;;\n\
         CREATE FUNCTION after_big() RETURNS INT DETERMINISTIC RETURN 7 ;;\n\
         DELIMITER ;\n"
    );
    let dump = write_file(dir.path(), "objects.sql", dump.as_bytes());
    let proxy = Proxy::start(db.port());
    proxy.trip_after(100 * 1024, Trip::Stall);
    let mut running = support::spawn(&mut seed_at(&proxy.port.to_string(), dump.to_str().unwrap(), &[]));
    running.wait_log_blocking("swapped the loaded tables in", Duration::from_secs(60));
    let stalled = testbed::eventually_blocking("the proxy stalls the load", Duration::from_secs(30), || {
        proxy.tripped().then_some(())
    })
    .ok();
    assert!(stalled.is_some(), "the objects step never stalled: {}", running.log());
    running.kill();
    let killed = support::finish(&mut running, Duration::from_secs(10));
    assert_eq!(killed.code, None, "killed by a signal");
    proxy.cut_all();

    // The tables are in, the objects step is recorded as not done, the last function missing.
    assert_eq!(
        root_sql(&db, "SELECT a, b FROM world.t ORDER BY a"),
        ["1\tone", "2\ttwo"]
    );
    assert_eq!(
        root_sql(&db, "SELECT DISTINCT objects_done FROM world._dbhelper_seed"),
        ["0"]
    );
    assert!(
        root_sql(
            &db,
            "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='world'"
        )
        .iter()
        .all(|r| r != "after_big")
    );
    // A change to the data in between: the completing run must not reload the tables.
    root_sql(&db, "UPDATE world.t SET b='changed' WHERE a=1");

    let out = run(&mut seed_at(&db.port().to_string(), dump.to_str().unwrap(), &[]));
    out.assert_ok();
    assert!(
        out.stdout
            .contains("completed the views, triggers, routines and events"),
        "{}",
        out.stdout
    );
    assert_eq!(root_sql(&db, "SELECT b FROM world.t WHERE a=1"), ["changed"]);
    assert_eq!(
        root_sql(&db, "SELECT DISTINCT objects_done FROM world._dbhelper_seed"),
        ["1"]
    );
    assert_eq!(
        root_sql(
            &db,
            "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='world' ORDER BY 1"
        ),
        ["after_big", "big"]
    );
    assert_eq!(
        root_sql(&db, "SELECT world.after_big(), COUNT(*) FROM world.v"),
        ["7\t2"]
    );
    // The trigger works (created once, not twice).
    root_sql(&db, "INSERT INTO world.t VALUES (3,'three')");
    assert_eq!(root_sql(&db, "SELECT n FROM world.log"), ["3"]);
    assert_eq!(user_databases(&db), ["world"]);

    // A third run loads nothing.
    let again = run(&mut seed_at(&db.port().to_string(), dump.to_str().unwrap(), &[]));
    again.assert_ok();
    assert!(again.stdout.contains("world: already seeded"), "{}", again.stdout);

    // A forced reload replaces tables that have triggers (dropped just before the swap:
    // a table with triggers cannot be renamed to another database) and creates them anew.
    let forced = run(&mut seed_at(
        &db.port().to_string(),
        dump.to_str().unwrap(),
        &["--force"],
    ));
    forced.assert_ok();
    assert_eq!(
        root_sql(&db, "SELECT a, b FROM world.t ORDER BY a"),
        ["1\tone", "2\ttwo"]
    );
    root_sql(&db, "INSERT INTO world.t VALUES (4,'four')");
    assert_eq!(root_sql(&db, "SELECT n FROM world.log"), ["4"]);
    assert_eq!(user_databases(&db), ["world"]);
}

/// The first SIGTERM during the load stops at the next statement boundary: the run ends
/// promptly, says nothing changed, and drops its staging database.
#[test]
fn sigterm_during_the_load_stops_at_a_statement_boundary_and_drops_the_staging_database() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let mut dump = String::from("CREATE TABLE t (a int);\n");
    for n in 0..100 {
        dump.push_str(&format!("DO SLEEP(0.1);\nINSERT INTO t VALUES ({n});\n"));
    }
    let dump = write_file(dir.path(), "slow.sql", dump.as_bytes());
    let mut running = support::spawn(&mut seed_at(&db.port().to_string(), dump.to_str().unwrap(), &[]));
    let started = testbed::eventually_blocking("the load gets going", Duration::from_secs(60), || {
        let n = sql(
            db.port(),
            "root",
            "secret",
            "SELECT COUNT(*) FROM world__dbhelper_new.t",
        )
        .ok()?;
        (n.first()?.parse::<u64>().ok()? > 2).then_some(())
    })
    .ok();
    assert!(started.is_some(), "the load never got going: {}", running.log());
    running.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let out = support::finish(&mut running, Duration::from_secs(30));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "stopped within a statement or two"
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.error_line()
            .contains("stopped by a signal during the load; nothing was changed in database \"world\""),
        "{}",
        out.error_line()
    );
    assert!(user_databases(&db).is_empty(), "{:?}", user_databases(&db));
}

/// A second SIGTERM exits at once with 130. The first one waits for the statement in
/// flight to end (a statement boundary): here the dump's `DO SLEEP(30)`.
#[test]
fn a_second_sigterm_during_the_load_exits_130_at_once() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let dump = "CREATE TABLE t (a int);\nINSERT INTO t VALUES (1);\nDO SLEEP(30);\nINSERT INTO t VALUES (2);\n";
    let dump = write_file(dir.path(), "sleepy.sql", dump.as_bytes());
    let mut running = support::spawn(&mut seed_at(&db.port().to_string(), dump.to_str().unwrap(), &[]));
    let sleeping = testbed::eventually_blocking("the load is in DO SLEEP(30)", Duration::from_secs(60), || {
        let n = sql(
            db.port(),
            "root",
            "secret",
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'DO SLEEP(30)%'",
        )
        .ok()?;
        (n.first()?.as_str() != "0").then_some(())
    });
    if let Err(e) = sleeping {
        running.fail(e);
    }
    running.signal(libc::SIGTERM);
    running.wait_log_blocking("SIGTERM received: stopping gracefully", Duration::from_secs(30));
    assert!(running.is_running(), "the first SIGTERM waits for the statement to end");
    let second = Instant::now();
    running.signal(libc::SIGTERM);
    let out = support::finish(&mut running, Duration::from_secs(60));
    eprintln!("MEASURED second SIGTERM -> exit: {:?}", second.elapsed());
    assert_eq!(out.code, Some(130), "{out:?}");
    assert!(out.stderr.contains("second signal: exiting now"), "{}", out.stderr);
}

/// Two runs at once for the same database: one loads, the other waits for its lock and
/// then finds the dump already loaded.
#[test]
fn concurrent_runs_for_the_same_database_are_serialised() {
    let db = MariaDb::start();
    let port = db.port().to_string();
    let mut first = support::spawn(&mut seed_at(&port, &dump_arg(), &[]));
    let mut second = support::spawn(&mut seed_at(&port, &dump_arg(), &[]));
    let (a, b) = (
        support::finish(&mut first, Duration::from_secs(120)),
        support::finish(&mut second, Duration::from_secs(120)),
    );
    a.assert_ok();
    b.assert_ok();
    let loaded = [&a, &b]
        .iter()
        .filter(|r| r.stdout.contains("world: seeded from"))
        .count();
    let skipped = [&a, &b]
        .iter()
        .filter(|r| r.stdout.contains("world: already seeded"))
        .count();
    assert_eq!(
        (loaded, skipped),
        (1, 1),
        "one load, one skip:\n{}\n{}",
        a.stdout,
        b.stdout
    );
    assert_eq!(world_counts(db.port(), "world").as_deref(), Some(WORLD_COUNTS));
    assert_eq!(user_databases(&db), ["world"]);
}

/// A backup of a database dbhelper seeded (`mariadb-dump world`, as a backup job takes it)
/// holds dbhelper's marker table: seeding another database from it leaves that table out,
/// says so, and writes this load's own marker (it was refused: "it creates a table named
/// _dbhelper_seed").
#[test]
fn a_backup_of_a_seeded_database_seeds_another() {
    let db = MariaDb::start();
    let port = db.port().to_string();
    run(&mut seed_at(&port, &dump_arg(), &[])).assert_ok();
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.sql");
    support::mariadb_dump(&db, &["--routines", "--triggers", "world"], &backup);
    let written = std::fs::read_to_string(&backup).unwrap();
    assert!(written.contains("CREATE TABLE `_dbhelper_seed`"));
    let out = run(&mut seed_at(&port, backup.to_str().unwrap(), &["--database", "copy"]));
    out.assert_ok();
    assert!(
        out.stderr
            .contains("the dump holds dbhelper's marker table \"_dbhelper_seed\""),
        "{}",
        out.stderr
    );
    assert_eq!(world_counts(db.port(), "copy").as_deref(), Some(WORLD_COUNTS));
    let shas = |d: &str| root_sql(&db, &format!("SELECT DISTINCT dump_sha256 FROM {d}._dbhelper_seed"));
    let (world, copy) = (shas("world"), shas("copy"));
    assert_eq!(copy.len(), 1, "{copy:?}");
    assert_ne!(world, copy, "the copy's marker is its own load's");
    // And it is a marker dbhelper reads: the same backup again loads nothing.
    let again = run(&mut seed_at(&port, backup.to_str().unwrap(), &["--database", "copy"]));
    again.assert_ok();
    assert!(again.stdout.contains("already seeded"), "{}", again.stdout);
}

/// A database of the dump without tables (only a routine) gets a marker too, and a second
/// run finds the load complete (it read the marker's placeholder row as a missing table
/// named "" and loaded everything again, every run).
#[test]
fn a_database_without_tables_is_seeded_once() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let dump = write_file(
        dir.path(),
        "two.sql",
        b"CREATE DATABASE a;\nUSE a;\nCREATE TABLE t (x INT);\nINSERT INTO t VALUES (1);\n\
          CREATE DATABASE b;\nUSE b;\nCREATE PROCEDURE p() SELECT 1;\n",
    );
    let port = db.port().to_string();
    run(&mut seed_at(&port, dump.to_str().unwrap(), &[])).assert_ok();
    let again = run(&mut seed_at(&port, dump.to_str().unwrap(), &[]));
    again.assert_ok();
    assert!(!again.stderr.contains("missing: loading again"), "{}", again.stderr);
    assert_eq!(again.stdout.matches("already seeded").count(), 2, "{}", again.stdout);
    assert_eq!(
        root_sql(
            &db,
            "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'b'"
        ),
        ["1"]
    );
}

/// A view just under `max_allowed_packet` is created after the swap: its `DROP … IF EXISTS`
/// goes to the server on its own, since with it the packet would be over the limit (the
/// server refuses such a packet and closes the connection: the objects step would stop
/// with the tables already swapped in).
#[test]
fn a_view_just_under_max_allowed_packet_is_created_with_its_drop_sent_apart() {
    let db = MariaDb::start();
    let packet = 16384;
    root_sql(&db, &format!("SET GLOBAL max_allowed_packet = {packet}"));
    let dir = tempfile::tempdir().unwrap();
    let (head, tail) = ("CREATE VIEW `v` AS SELECT '", "' AS s");
    // With its command byte, 8 bytes under the limit: alone it fits, with the 25 bytes of
    // `DROP VIEW IF EXISTS `v`` and the separator it does not.
    let long = "x".repeat(packet - 8 - 1 - head.len() - tail.len());
    let dump = write_file(
        dir.path(),
        "long-view.sql",
        format!("CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1);\n{head}{long}{tail};\n").as_bytes(),
    );
    let out = run(&mut seed_at(
        &db.port().to_string(),
        &dump.display().to_string(),
        &["--database", "app"],
    ));
    out.assert_ok();
    assert_eq!(
        root_sql(&db, "SELECT LENGTH(s), (SELECT COUNT(*) FROM app.t) FROM app.v"),
        [format!("{}\t1", long.len())]
    );
}

/// With a small `max_allowed_packet` the merged inserts stay under it (the server would
/// refuse a larger packet), and tables and views of the database that the dump does not
/// hold are left alone.
#[test]
fn batches_stay_under_max_allowed_packet_and_other_tables_are_left_alone() {
    let db = MariaDb::start();
    root_sql(&db, "SET GLOBAL max_allowed_packet = 16384");
    root_sql(
        &db,
        "CREATE DATABASE world; CREATE TABLE world.extra (a int); INSERT INTO world.extra VALUES (1),(2); \
         CREATE VIEW world.extra_v AS SELECT COUNT(*) AS n FROM world.extra",
    );
    let out = run(&mut seed_at(&db.port().to_string(), &dump_arg(), &[]));
    out.assert_ok();
    let trips: usize = out
        .stderr
        .lines()
        .find_map(|l| l.split("round_trips=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the load logs its round trips");
    // The rows in batches of at most 15 KiB: twice the round trips of 4M batches (13; 28
    // when written: the session statements go with the statement after them).
    assert!(trips >= 24, "{trips} round trips");
    assert_eq!(world_counts(db.port(), "world").as_deref(), Some(WORLD_COUNTS));
    assert_eq!(root_sql(&db, "SELECT n FROM world.extra_v"), ["2"]);
}
