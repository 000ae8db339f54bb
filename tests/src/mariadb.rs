//! A throwaway MariaDB server: its own datadir, socket and port, root password set.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually::eventually_blocking;
use crate::process::{self, free_port, require_program};

const INSTALL: &str = "sudo apt-get install -y mariadb-server mariadb-client";

/// A running `mariadbd` with `root` reachable over TCP on 127.0.0.1 with a password.
#[derive(Debug)]
pub struct MariaDb {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    bind: String,
    root_password: String,
    /// Whether InnoDB flushes its log at every commit (the server's default). The test
    /// servers relax it (`--innodb-flush-log-at-trx-commit=2`) unless started durable.
    durable: bool,
}

impl MariaDb {
    /// Starts a server whose root password is `secret`.
    #[must_use]
    pub fn start() -> MariaDb {
        Self::start_with("secret", "127.0.0.1")
    }

    /// Starts a server with this root password, listening on `bind` (use `0.0.0.0` when
    /// containers must reach it through the Docker bridge).
    #[must_use]
    pub fn start_with(root_password: &str, bind: &str) -> MariaDb {
        Self::start_opts(root_password, bind, false)
    }

    /// Starts a server (root password `secret`, on 127.0.0.1) with the server's default
    /// durability: the InnoDB log is flushed at every commit, as in production. For
    /// benchmarks that compare loaders, where commits per statement must cost what they cost.
    #[must_use]
    pub fn start_durable() -> MariaDb {
        Self::start_opts("secret", "127.0.0.1", true)
    }

    fn start_opts(root_password: &str, bind: &str, durable: bool) -> MariaDb {
        let install = require_program("mariadb-install-db", INSTALL);
        let _ = require_program("mariadbd", INSTALL);
        let dir = tempfile::Builder::new()
            .prefix("testbed-mariadb")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        // A private tmpdir: a starting server deletes every `#sql*` file in its tmpdir, so
        // servers sharing /tmp break each other's bootstrap ("Unknown table 'mysql.tmp_user_sys'").
        std::fs::create_dir(dir.path().join("tmp")).expect("tmp dir");
        let out = Command::new(install)
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "testbed: mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = MariaDb {
            child: None,
            dir,
            port: 0,
            bind: bind.to_owned(),
            root_password: root_password.to_owned(),
            durable,
        };
        db.spawn_on_free_port();
        db.set_root_password();
        db
    }

    fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's unix socket.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    fn spawn_on_free_port(&mut self) {
        for _ in 0..5 {
            self.port = free_port();
            if self.spawn() {
                return;
            }
            if !process::tail(&self.log(), 30).contains("Address already in use") {
                break;
            }
        }
        panic!(
            "testbed: mariadbd did not start; its log:\n{}",
            process::tail(&self.log(), 30)
        );
    }

    /// Starts mariadbd on `self.port`; true once it accepts connections on its socket.
    fn spawn(&mut self) -> bool {
        let mariadbd = require_program("mariadbd", INSTALL);
        let mut cmd = Command::new(mariadbd);
        cmd.arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--tmpdir={}", self.dir.path().join("tmp").display()))
            .arg(format!("--pid-file={}", self.dir.path().join("mysqld.pid").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--bind-address={}", self.bind))
            .arg(format!("--log-error={}", self.log().display()))
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=128M")
            .arg("--max-allowed-packet=64M")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !self.durable {
            cmd.arg("--innodb-flush-log-at-trx-commit=2");
        }
        self.child = Some(process::spawn(cmd).expect("spawn mariadbd"));
        let port = self.port;
        let ready = eventually_blocking("mariadbd accepts connections", Duration::from_secs(30), || {
            if self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                return Some(false);
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
        })
        .ok();
        if ready == Some(true) {
            return true;
        }
        if let Some(mut c) = self.child.take() {
            process::kill(&mut c);
        }
        false
    }

    fn set_root_password(&self) {
        let client = require_program("mariadb", INSTALL);
        let pw = self.root_password.replace('\'', "''");
        let sql = format!(
            "CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{pw}';\
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\
             ALTER USER 'root'@'localhost' IDENTIFIED BY '{pw}';\
             ALTER USER IF EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '{pw}';\
             ALTER USER IF EXISTS 'root'@'::1' IDENTIFIED BY '{pw}';\
             FLUSH PRIVILEGES;"
        );
        let out = Command::new(client)
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-e", &sql])
            .output()
            .expect("run mariadb client");
        assert!(
            out.status.success(),
            "testbed: setting the root password failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The TCP port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root password.
    #[must_use]
    pub fn root_password(&self) -> &str {
        &self.root_password
    }

    /// A `mysql://` URL for `user` over TCP to 127.0.0.1.
    #[must_use]
    pub fn url(&self, user: &str, password: &str, db: Option<&str>) -> String {
        format!("mysql://{user}:{password}@127.0.0.1:{}/{}", self.port, db.unwrap_or(""))
    }

    /// A root connection pool over TCP.
    #[must_use]
    pub fn root_pool(&self) -> mysql_async::Pool {
        let opts = mysql_async::Opts::from_url(&self.url("root", &self.root_password, None)).expect("root url");
        mysql_async::Pool::new(opts)
    }

    /// Runs the `mariadb` command-line client as root with `args`; returns stdout.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> String {
        let client = require_program("mariadb", INSTALL);
        let out = Command::new(client)
            .args(["-h127.0.0.1", &format!("-P{}", self.port), "-uroot"])
            .env("MYSQL_PWD", &self.root_password)
            .args(args)
            .output()
            .expect("run mariadb client");
        assert!(
            out.status.success(),
            "mariadb {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server hard, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            process::kill(&mut c);
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "testbed: mariadbd did not restart:\n{}",
            process::tail(&self.log(), 30)
        );
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}
