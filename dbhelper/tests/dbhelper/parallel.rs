//! The parallel load (`--jobs`) against a dump whose tables are wrapped in `LOCK TABLES`,
//! with foreign keys between tables that land on different connections.

use std::fmt::Write as _;
use std::time::Duration;

use testbed::{Daemon, MariaDb};

use super::support::{root_sql, seed_at, write_file};

/// A mysqldump-shaped dump: a parent table with many inserts under `LOCK TABLES … WRITE`,
/// then three child tables with foreign keys to it, each under its own lock. Loaded over
/// four connections, the children are created while the parent's lane still inserts: a
/// lane that replayed the dump's `LOCK TABLES` then failed with "Table 'b_child_1' was not
/// locked with LOCK TABLES" (the server wants a new child locked with its parent).
fn locked_dump(parent_inserts: usize) -> Vec<u8> {
    let mut d = String::from(
        "/*!40101 SET NAMES utf8mb4 */;\n\
         /*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;\n\
         DROP TABLE IF EXISTS `a_parent`;\n\
         CREATE TABLE `a_parent` (`id` INT NOT NULL PRIMARY KEY, `pad` VARCHAR(200)) ENGINE=InnoDB;\n\
         LOCK TABLES `a_parent` WRITE;\n\
         /*!40000 ALTER TABLE `a_parent` DISABLE KEYS */;\n",
    );
    let pad = "x".repeat(150);
    for i in 0..parent_inserts {
        d.push_str("INSERT INTO `a_parent` VALUES ");
        for j in 0..8 {
            let id = i * 8 + j + 1;
            let sep = if j == 0 { "" } else { "," };
            let _ = write!(d, "{sep}({id},'{pad}')");
        }
        d.push_str(";\n");
    }
    d.push_str("/*!40000 ALTER TABLE `a_parent` ENABLE KEYS */;\nUNLOCK TABLES;\n");
    for c in 1..=3 {
        let _ = write!(
            d,
            "DROP TABLE IF EXISTS `b_child_{c}`;\n\
             CREATE TABLE `b_child_{c}` (`id` INT NOT NULL PRIMARY KEY, `parent_id` INT, KEY (`parent_id`), \
               CONSTRAINT `fk_{c}` FOREIGN KEY (`parent_id`) REFERENCES `a_parent` (`id`)) ENGINE=InnoDB;\n\
             LOCK TABLES `b_child_{c}` WRITE;\n\
             INSERT INTO `b_child_{c}` VALUES (1,1),(2,2),({c}0,{c}0);\n\
             UNLOCK TABLES;\n"
        );
    }
    d.push_str("/*!40014 SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS */;\n");
    d.into_bytes()
}

/// Loaded with `--jobs 4` several times (the failure was a race), the dump's tables all
/// arrive, with their rows and foreign keys.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_load_of_a_dump_with_lock_tables_and_foreign_keys() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let inserts = 300;
    let dump = write_file(dir.path(), "locked.sql", &locked_dump(inserts));
    let port = db.port().to_string();
    for round in 1..=4 {
        // Small batches: one round trip per insert, so the parent's lane is still busy
        // when the other lanes create the children.
        let mut cmd = seed_at(
            &port,
            dump.to_str().unwrap(),
            &["--database", "locked", "--jobs", "4", "--batch-bytes", "2K", "--force"],
        );
        cmd.stdin(std::process::Stdio::null());
        let mut run = Daemon::start(&format!("dbhelper-jobs4-{round}"), cmd);
        let status = run.wait(Duration::from_secs(120)).await;
        if !status.success() {
            run.fail(format!("round {round}: dbhelper --jobs 4 exited with {status}"));
        }
        let log = run.log();
        assert!(
            log.contains("connections=4"),
            "round {round}: not a parallel load:\n{log}"
        );
        assert!(
            log.contains(&format!("locked.a_parent: {} rows", inserts * 8)),
            "round {round}:\n{log}"
        );
        for c in 1..=3 {
            assert!(
                log.contains(&format!("locked.b_child_{c}: 3 rows")),
                "round {round}:\n{log}"
            );
        }
    }
    assert_eq!(
        root_sql(
            &db,
            "SELECT TABLE_NAME, REFERENCED_TABLE_NAME, UNIQUE_CONSTRAINT_SCHEMA FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA='locked' ORDER BY TABLE_NAME"
        ),
        [
            "b_child_1\ta_parent\tlocked",
            "b_child_2\ta_parent\tlocked",
            "b_child_3\ta_parent\tlocked"
        ]
    );
}

/// Session statements go to the server several at a time (`db::exec_batch`): they run in
/// order, and when the server refuses one, the batch names that one, wherever it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_runs_in_order_and_names_the_statement_the_server_refuses() {
    use dbhelper::args::{Credentials, Secret};
    use dbhelper::db::{self, exec_batch};
    use dbhelper::locate::{Address, Source};
    use mysql_async::prelude::Queryable as _;

    let db = MariaDb::start();
    let address = Address {
        host: "127.0.0.1".into(),
        port: db.port(),
        source: Source::Flags,
    };
    let root = Credentials {
        user: "root".into(),
        password: Some(Secret::new(db.root_password())),
    };
    let mut conn = db::connect(db::opts(&address, &root, None), db::CONNECT_TIMEOUT)
        .await
        .unwrap();
    // In order, each seeing the one before; a comment at the end of one does not swallow
    // the next; a string with the separator in it stays a string.
    exec_batch(
        &mut conn,
        &[
            b"SET @a = 1",
            b"SET @b = @a + 1 -- the comment runs to the line's end",
            b"/*!40101 SET @c = @b + 1 */",
            b"SET @d = 'x;\n;y' # and this one too",
            // As a `DELIMITER $$` dump gives it (`SET @e = 5;$$`).
            b"SET @e = 5; \n",
            // And with a comment after that `;` (`SET @f = 6; # note` then `$$`).
            b"SET @f = @e + 1; # note\n",
            b"SET NAMES latin1",
        ],
    )
    .await
    .unwrap();
    let got: Option<(i64, i64, i64, String, i64, i64, String)> = conn
        .query_first("SELECT @a, @b, @c, @d, @e, @f, @@character_set_client")
        .await
        .unwrap();
    assert_eq!(got, Some((1, 2, 3, "x;\n;y".into(), 5, 6, "latin1".into())));
    // A statement that is only a version comment this server skips (as an older server
    // skips mariadb-dump's `/*M!100616 SET … NOTE_VERBOSITY … */`) is an empty statement
    // for it: alone the server takes it, in a batch the `;` after it was a syntax error.
    exec_batch(
        &mut conn,
        &[
            b"SET @v1 = 1",
            b"/*M!999998 SET @v2 = 2 */",
            b"/*!99999 SET @v2 = 2 */",
            b"SET @v3 = 3",
        ],
    )
    .await
    .unwrap();
    let got: Option<(Option<i64>, Option<i64>, Option<i64>)> = conn.query_first("SELECT @v1, @v2, @v3").await.unwrap();
    assert_eq!(got, Some((Some(1), None, Some(3))));
    // A statement that is two for the server (`SET @x = 1; SET @y = 2$$` under a
    // `DELIMITER $$`) runs whole, and the one after it is still named by its own index.
    conn.query_drop("SET @x = 0").await.unwrap();
    let (index, err) = exec_batch(
        &mut conn,
        &[
            b"SET @x = @x + 1; SET @x = @x + 1",
            b"SET @x = @x + 1",
            b"SET @x = no_such_function()",
            b"SET @x = @x + 1",
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(index, 2, "{err}");
    let x: Option<i64> = conn.query_first("SELECT @x").await.unwrap();
    assert_eq!(x, Some(3));
    for bad in 0..4 {
        let mut batch: Vec<&[u8]> = vec![b"SET @x = @x + 1"; 4];
        batch[bad] = b"SET @x = no_such_function()";
        conn.query_drop("SET @x = 0").await.unwrap();
        let (index, err) = exec_batch(&mut conn, &batch).await.unwrap_err();
        assert_eq!(index, bad, "{err}");
        assert!(matches!(&err, mysql_async::Error::Server(e) if e.code == 1305), "{err}");
        // The ones before it ran, none after it; the connection goes on.
        let x: Option<i64> = conn.query_first("SELECT @x").await.unwrap();
        assert_eq!(x, Some(i64::try_from(bad).unwrap()), "refused at {bad}");
    }
    // Each statement is parsed after the ones before it ran, as when sent alone: under the
    // `ANSI_QUOTES` the first sets, "x" is a column, not a string.
    let (index, err) = exec_batch(&mut conn, &[b"SET sql_mode = 'ANSI_QUOTES'", b"SET @q = \"x\""])
        .await
        .unwrap_err();
    assert_eq!(index, 1, "{err}");
    assert!(matches!(&err, mysql_async::Error::Server(e) if e.code == 1054), "{err}");
    conn.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    // A statement that returns rows in the middle is read past.
    exec_batch(
        &mut conn,
        &[b"SET @y = 1", b"SELECT 1, 2 UNION SELECT 3, 4", b"SET @y = 2"],
    )
    .await
    .unwrap();
    let y: Option<i64> = conn.query_first("SELECT @y").await.unwrap();
    assert_eq!(y, Some(2));
    let (index, _) = exec_batch(&mut conn, &[b"SELECT 1", b"SELECT nope FROM nowhere"])
        .await
        .unwrap_err();
    assert_eq!(index, 1);
    let _ = conn.disconnect().await;
}
