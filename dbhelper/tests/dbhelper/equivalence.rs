//! "Loaded by dbhelper" equals "loaded by `mariadb < dump`": the same tables, rows, bytes,
//! views, triggers, routines and events, on dumps written by the real `mariadb-dump`
//! under several option sets, on the world dump and on hand-written edge cases.
//!
//! Each test uses two servers: the client loads into `client`, dbhelper into `helper`,
//! and [`state`] reads both the same way. Definers are compared too, except where the
//! dump names an account that does not exist (the corpus's `gone`@`%`): there the client
//! keeps the dangling definer and dbhelper rewrites it to the loading user, by design.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use testbed::MariaDb;

use super::support::{mariadb_dump, root_sql, run, seed_at, write_file};

/// The databases the tests create (everything else on the servers is left out of the
/// comparison).
const SKIP: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

fn client() -> std::path::PathBuf {
    testbed::require_program("mariadb", "sudo apt-get install -y mariadb-client")
}

/// `mariadb [database] < file` as root, with the connection character set the dbhelper
/// connection has (utf8mb4; the 10.11 client's own default under `C.UTF-8` is utf8mb3,
/// which only a dump without `SET NAMES` would show).
fn client_load(db: &MariaDb, database: Option<&str>, file: &Path) {
    let mut cmd = Command::new(client());
    cmd.args(["-h127.0.0.1", &format!("-P{}", db.port()), "-uroot"])
        .arg("--default-character-set=utf8mb4")
        .env("MYSQL_PWD", db.root_password())
        .stdin(std::fs::File::open(file).expect("open dump"))
        .stdout(Stdio::null());
    if let Some(d) = database {
        cmd.arg(d);
    }
    let out = cmd.output().expect("run mariadb");
    assert!(
        out.status.success(),
        "mariadb < {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops every database the tests made.
fn reset(db: &MariaDb) {
    for name in user_dbs(db) {
        root_sql(db, &format!("DROP DATABASE `{}`", name.replace('`', "``")));
    }
}

fn user_dbs(db: &MariaDb) -> Vec<String> {
    root_sql(
        db,
        "SELECT HEX(SCHEMA_NAME) FROM information_schema.SCHEMATA ORDER BY 1",
    )
    .into_iter()
    .map(|h| unhex(&h))
    .filter(|n| !SKIP.contains(&n.as_str()))
    .collect()
}

fn unhex(h: &str) -> String {
    let bytes: Vec<u8> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
        .collect();
    String::from_utf8(bytes).expect("utf-8 name")
}

fn q(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Everything a reader can observe of the user databases, as `what -> description`.
fn state(db: &MariaDb) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in user_dbs(db) {
        let d = q(&name);
        let l = lit(&name);
        out.insert(
            format!("database {name}"),
            root_sql(db, &format!("SHOW CREATE DATABASE {d}")).join("\n"),
        );
        let tables = root_sql(
            db,
            &format!(
                "SELECT HEX(TABLE_NAME), TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {l} \
                 AND TABLE_NAME <> '_dbhelper_seed' ORDER BY TABLE_NAME"
            ),
        );
        out.insert(format!("tables of {name}"), tables.join("\n"));
        for row in tables {
            let (hex, kind) = row.split_once('\t').expect("two columns");
            let t = unhex(hex);
            let qt = format!("{d}.{}", q(&t));
            if kind == "VIEW" {
                out.insert(
                    format!("view {name}.{t}"),
                    root_sql(db, &format!("SHOW CREATE VIEW {qt}")).join("\n"),
                );
                continue;
            }
            out.insert(
                format!("table {name}.{t}"),
                root_sql(db, &format!("SHOW CREATE TABLE {qt}")).join("\n"),
            );
            out.insert(
                format!("rows {name}.{t}"),
                root_sql(db, &format!("SELECT COUNT(*) FROM {qt}")).join(""),
            );
            let checksum = if kind == "SYSTEM VERSIONED" {
                // CHECKSUM TABLE reads each row's hidden row_start and row_end: when it was
                // loaded, not what it holds. The columns a reader sees instead.
                let cols: Vec<String> = root_sql(
                    db,
                    &format!(
                        "SELECT HEX(COLUMN_NAME) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {l} \
                         AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
                        lit(&t)
                    ),
                )
                .iter()
                .map(|h| format!("IFNULL(HEX({}), '-')", q(&unhex(h))))
                .collect();
                let row = format!("CONCAT_WS(',', {})", cols.join(", "));
                root_sql(
                    db,
                    &format!(
                        "SET SESSION group_concat_max_len = 1073741824; \
                         SELECT MD5(GROUP_CONCAT({row} ORDER BY {row} SEPARATOR '|')) FROM {qt}"
                    ),
                )
            } else {
                root_sql(db, &format!("CHECKSUM TABLE {qt}"))
            };
            out.insert(format!("checksum {name}.{t}"), checksum.join(""));
            let strings = root_sql(
                db,
                &format!(
                    "SELECT HEX(COLUMN_NAME) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {l} AND TABLE_NAME = {} \
                     AND DATA_TYPE IN ('char','varchar','tinytext','text','mediumtext','longtext','binary','varbinary',\
                     'tinyblob','blob','mediumblob','longblob','enum','set') ORDER BY ORDINAL_POSITION",
                    lit(&t)
                ),
            );
            if !strings.is_empty() {
                let cols: Vec<String> = strings
                    .iter()
                    .map(|h| format!("IFNULL(HEX({}), '-')", q(&unhex(h))))
                    .collect();
                let row = format!("CONCAT_WS(',', {})", cols.join(", "));
                out.insert(
                    format!("string bytes {name}.{t}"),
                    root_sql(
                        db,
                        &format!(
                            "SET SESSION group_concat_max_len = 1073741824; \
                             SELECT MD5(GROUP_CONCAT({row} ORDER BY {row} SEPARATOR '|')), SUM(LENGTH({row})) FROM {qt}"
                        ),
                    )
                    .join(""),
                );
            }
        }
        let objects = root_sql(
            db,
            &format!(
                "SELECT 'PROCEDURE', HEX(ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {l} AND ROUTINE_TYPE = 'PROCEDURE' \
                 UNION ALL SELECT 'FUNCTION', HEX(ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {l} AND ROUTINE_TYPE = 'FUNCTION' \
                 UNION ALL SELECT 'TRIGGER', HEX(TRIGGER_NAME) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {l} \
                 UNION ALL SELECT 'EVENT', HEX(EVENT_NAME) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {l} ORDER BY 1, 2"
            ),
        );
        out.insert(format!("objects of {name}"), objects.join("\n"));
        for row in objects {
            let (kind, hex) = row.split_once('\t').expect("two columns");
            let o = unhex(hex);
            let mut shown = root_sql(db, &format!("SHOW CREATE {kind} {d}.{}", q(&o)));
            if kind == "TRIGGER" {
                // The last column is the creation time.
                shown = shown
                    .into_iter()
                    .map(|r| r.rsplit_once('\t').map_or(r.clone(), |(a, _)| a.to_owned()))
                    .collect();
            }
            out.insert(format!("{kind} {name}.{o}"), shown.join("\n"));
        }
    }
    out
}

/// `DEFINER=`u`@`h`` replaced by `DEFINER=?`.
fn without_definer(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("DEFINER=`") {
        out.push_str(&rest[..at]);
        out.push_str("DEFINER=?");
        let after = &rest[at + "DEFINER=".len()..];
        // `user`@`host`
        let end = after.match_indices('`').nth(3).map_or(after.len(), |(i, _)| i + 1);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Compares the two servers; objects whose client-side definer is the missing `gone`
/// account are compared without definers, after checking dbhelper did not keep it.
fn assert_same(client: &MariaDb, helper: &MariaDb, what: &str) {
    let want = state(client);
    let got = state(helper);
    assert!(
        want.keys().any(|k| k.starts_with("table ")),
        "{what}: the client loaded no table: {want:?}"
    );
    let keys: Vec<&String> = want.keys().collect();
    assert_eq!(keys, got.keys().collect::<Vec<_>>(), "{what}: the same things exist");
    for (key, w) in &want {
        let g = &got[key];
        if w.contains("`gone`@`%`") {
            assert!(
                !g.contains("`gone`"),
                "{what}: {key}: the missing definer was kept: {g}"
            );
            assert_eq!(without_definer(w), without_definer(g), "{what}: {key}");
        } else {
            assert_eq!(w, g, "{what}: {key}");
        }
    }
}

/// Loads `dump` both ways, on clean servers, and compares. `database`: the database of a
/// dump that names none (created empty beforehand for the client, `--database` for
/// dbhelper).
fn load_both_and_compare(
    client: &MariaDb,
    helper: &MariaDb,
    dump: &Path,
    database: Option<&str>,
    what: &str,
) -> String {
    reset(client);
    reset(helper);
    if let Some(d) = database {
        root_sql(client, &format!("CREATE DATABASE {}", q(d)));
    }
    client_load(client, database, dump);
    let mut extra = vec![];
    if let Some(d) = database {
        extra = vec!["--database", d];
    }
    let out = run(&mut seed_at(&helper.port().to_string(), dump.to_str().unwrap(), &extra));
    out.assert_ok();
    assert_same(client, helper, what);
    out.stderr
}

/// The corpus (`corpus.sql`: tables with foreign keys, binary and multi-byte data, odd
/// identifiers, views on views, a cross-database view, triggers, procedures, functions,
/// an event, an `ANSI_QUOTES` routine, objects of a missing definer) dumped by the real
/// `mariadb-dump` under each option set the issue names, then loaded both ways.
#[test]
fn equivalence_mariadb_dump_option_sets() {
    let client = MariaDb::start();
    let helper = MariaDb::start();
    client_load(
        &client,
        None,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dbhelper/corpus.sql"),
    );
    let dir = tempfile::tempdir().unwrap();
    let all = ["--routines", "--triggers", "--events"];
    let dbs = ["--databases", "c1", "c 2"];
    let sets: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        ("one-database", [&all[..], &["c1"]].concat(), Some("c1")),
        ("databases", [&all[..], &dbs[..]].concat(), None),
        (
            "skip-extended-insert",
            [&all[..], &["--skip-extended-insert"], &dbs[..]].concat(),
            None,
        ),
        ("hex-blob", [&all[..], &["--hex-blob"], &dbs[..]].concat(), None),
        ("compact", [&all[..], &["--compact"], &dbs[..]].concat(), None),
        (
            "single-transaction",
            [&all[..], &["--single-transaction"], &dbs[..]].concat(),
            None,
        ),
        // Raw latin1 bytes in the string literals (and `?` for what latin1 cannot hold).
        (
            "latin1",
            [&all[..], &["--default-character-set=latin1"], &dbs[..]].concat(),
            None,
        ),
    ];
    // Every dump first, from the corpus as built.
    let mut dumps = Vec::new();
    for (name, opts, database) in &sets {
        let file = dir.path().join(format!("{name}.sql"));
        mariadb_dump(&client, opts, &file);
        dumps.push((*name, file, *database));
    }
    let latin1 = std::fs::read(&dumps[6].1).unwrap();
    assert!(
        latin1.windows(5).any(|w| w == b"B\xe9j\xefa"),
        "the latin1 dump holds raw latin1 bytes"
    );
    for (name, file, database) in &dumps {
        let started = std::time::Instant::now();
        let log = load_both_and_compare(&client, &helper, file, *database, name);
        let orphans = std::fs::read(file).unwrap().windows(6).any(|w| w == b"`gone`");
        assert_eq!(
            log.contains("does not exist on this server: created with the loading user"),
            orphans,
            "{name}: the definer rewrite is logged when the dump has a missing definer: {log}"
        );
        // The window of the objects step, as dbhelper logged it (for the README).
        let window = log
            .lines()
            .find_map(|l| l.split("window=").nth(1))
            .and_then(|w| w.split_whitespace().next())
            .unwrap_or("-");
        println!(
            "equivalence {name}: same state ({:?}); swap + objects step took {window}",
            started.elapsed()
        );
    }

    // --all-databases writes the system schema `mysql`: refused, naming it and the option.
    let file = dir.path().join("all-databases.sql");
    mariadb_dump(&client, &["--all-databases", "--routines", "--events"], &file);
    reset(&helper);
    let out = run(&mut seed_at(&helper.port().to_string(), file.to_str().unwrap(), &[]));
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.error_line().contains("system schema \"mysql\"") && out.error_line().contains("--replay-system-schemas"),
        "{}",
        out.error_line()
    );
    assert!(user_dbs(&helper).is_empty());

    // --system=users writes the accounts (CREATE USER, GRANT, and a temporary role it sets
    // and drops): refused, naming the statement and the option; with the option, replayed
    // after the swap in dump order, as the client runs them (the role exists when set).
    root_sql(
        &client,
        "CREATE USER reader@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON c1.* TO reader@'%'; \
         CREATE DEFINER = reader@'%' VIEW c1.v_reader AS SELECT id FROM c1.owner",
    );
    // mariadb-install-db's accounts at the machine's hostname: under --skip-name-resolve
    // mariadb-dump cannot read them back ("SHOW CREATE USER 'root'@'vm'" fails).
    for account in root_sql(
        &client,
        "SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.user \
         WHERE Host NOT IN ('localhost', '127.0.0.1', '::1', '%')",
    ) {
        root_sql(&client, &format!("DROP USER {account}"));
    }
    let file = dir.path().join("users.sql");
    mariadb_dump(&client, &["--system=users", "--insert-ignore", "c1"], &file);
    let out = run(&mut seed_at(
        &helper.port().to_string(),
        file.to_str().unwrap(),
        &["--database", "c1"],
    ));
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.error_line()
            .contains("changes the server's accounts (CREATE USER on line")
            && out.error_line().contains("--replay-system-schemas"),
        "{}",
        out.error_line()
    );
    assert!(user_dbs(&helper).is_empty());
    let out = run(&mut seed_at(
        &helper.port().to_string(),
        file.to_str().unwrap(),
        &["--database", "c1", "--replay-system-schemas"],
    ));
    out.assert_ok();
    assert_eq!(
        root_sql(&helper, "SHOW GRANTS FOR reader@'%'"),
        root_sql(&client, "SHOW GRANTS FOR reader@'%'")
    );
    // A view whose definer the dump creates keeps it (it is not rewritten to the loading
    // user for being missing when the objects step starts).
    assert_eq!(
        root_sql(&helper, "SHOW CREATE VIEW c1.v_reader"),
        root_sql(&client, "SHOW CREATE VIEW c1.v_reader")
    );
    assert!(!out.stderr.contains("does not exist on this server"), "{}", out.stderr);
    assert_eq!(
        root_sql(&helper, "SELECT COUNT(*) FROM c1.owner"),
        root_sql(&client, "SELECT COUNT(*) FROM c1.owner")
    );
}

/// The world dump, and a hand-written dump of the edge cases of the client's rules: the
/// sandbox line, `DELIMITER` in any case with `//`, `$$` and a word, a `;` inside a version
/// comment's string, `--` followed by 0x7f, a `USE` whose backquoted name spans lines,
/// raw latin1 bytes, names with backticks and semicolons, a `SET` that ends in `;` before
/// its `DELIMITER` (dbhelper sends session statements several at a time).
#[test]
fn equivalence_world_and_hand_written_dumps() {
    let client = MariaDb::start();
    let helper = MariaDb::start();
    load_both_and_compare(&client, &helper, &testbed::world_dump(), None, "world");

    let dir = tempfile::tempdir().unwrap();
    let hand = write_file(
        dir.path(),
        "hand.sql",
        b"/*M!999999\\- enable the sandbox mode */ \n\
          /*!40101 SET NAMES latin1 */;\n\
          /*!40101 SET @note='a;b' */;\n\
          /*M!999998 SET @later = 1 */;\n\
          CREATE DATABASE IF NOT EXISTS `hand\nmade` /*!40100 DEFAULT CHARACTER SET latin1 */;\n\
          USE `hand\nmade`;\n\
          CREATE TABLE `t``x; y` (id INT PRIMARY KEY, s VARBINARY(20), l VARCHAR(20)) DEFAULT CHARSET=latin1;\n\
          INSERT INTO `t``x; y` VALUES (1,'a;b\\0\xff','B\xe9ja\xefa');\n\
          INSERT INTO `t``x; y` VALUES (2,0x00FF3B,'--\x7f;');\n\
          INSERT INTO `t``x; y` VALUES (3,NULL,'x') --\x7f;\n\
          delimiter //\n\
          CREATE PROCEDURE p() BEGIN SELECT ';'; SELECT @note; END//\n\
          DeLiMiTeR $$END\n\
          SET @n = 3;$$END\n\
          SET @m = 4; # a note after the ';'\n\
          $$END\n\
          SET @a1 = 1; SET @b1 = 2$$END\n\
          CREATE FUNCTION f() RETURNS INT DETERMINISTIC BEGIN RETURN 1; END $$END\n\
          DELIMITER ;;\n\
          CREATE TRIGGER trg BEFORE INSERT ON `t``x; y` FOR EACH ROW BEGIN SET NEW.l = UPPER(NEW.l); END;;\n\
          DELIMITER ;\n\
          CREATE VIEW `v;1` AS SELECT id, l FROM `t``x; y`;\n\
          CREATE DATABASE `other`;\n\
          USE other\n\
          CREATE TABLE u (a INT);\n\
          INSERT INTO u VALUES (1),(2);\n",
    );
    load_both_and_compare(&client, &helper, &hand, None, "hand-written");
    assert_eq!(
        root_sql(&helper, "SELECT HEX(l) FROM `hand\nmade`.`t``x; y` WHERE id = 1"),
        ["42E96A61EF61"]
    );
}
