//! Helpers for the dbhelper tests: running the real binary, asking the real server, and a
//! TCP proxy that can stall or cut a connection mid-load.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use testbed::{Daemon, Start};

pub const BIN: &str = env!("CARGO_BIN_EXE_dbhelper");

/// The world dump (outside the repository; `WORLD_DUMP` overrides).
pub fn world_dump() -> PathBuf {
    testbed::world_dump()
}

/// A dbhelper command with a clean environment: only what the test sets reaches it.
pub fn dbhelper(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// The usual seed environment for a testbed server.
pub fn seed_env(cmd: &mut Command) -> &mut Command {
    cmd.env("MYSQL_ROOT_PASSWORD", "secret").env("APP_PW", "apppw")
}

/// `dbhelper seed --host 127.0.0.1 --port PORT --dump DUMP EXTRA...` with the passwords
/// of [`seed_env`].
pub fn seed_at(port: &str, dump: &str, extra: &[&str]) -> Command {
    let mut args = vec!["seed", "--host", "127.0.0.1", "--port", port, "--dump", dump];
    args.extend_from_slice(extra);
    let mut cmd = dbhelper(&args);
    seed_env(&mut cmd);
    cmd
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "dbhelper failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The last line of standard error: the one-line error message on failure.
    pub fn error_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }
}

/// Runs to completion (with a generous timeout against hangs).
pub fn run(cmd: &mut Command) -> Run {
    let mut running = spawn(cmd);
    finish(&mut running, Duration::from_secs(120))
}

/// Starts dbhelper in the background as a [`Daemon`]: stdout (its result) in a file of its
/// own, stderr (the log) in [`Daemon::log`], killed on drop.
pub fn spawn(cmd: &mut Command) -> Daemon {
    // The builder chains of the tests hand a `&mut Command`; the daemon owns it.
    let cmd = std::mem::replace(cmd, Command::new(BIN));
    Start::new("dbhelper").stdout_apart().start(cmd)
}

/// Waits for the exit (the test fails after `within`, quoting the log) and returns what it
/// printed.
pub fn finish(running: &mut Daemon, within: Duration) -> Run {
    let status = running.wait_blocking(within);
    Run {
        code: status.code(),
        stdout: running.stdout(),
        stderr: running.log(),
    }
}

/// Runs SQL with the `mariadb` client as `user` and returns the rows (tab-separated
/// fields), or the client's error.
pub fn sql(port: u16, user: &str, password: &str, query: &str) -> Result<Vec<String>, String> {
    let client = testbed::require_program("mariadb", "sudo apt-get install -y mariadb-client");
    let out = Command::new(client)
        .args(["-h127.0.0.1", &format!("-P{port}"), &format!("-u{user}")])
        .args(["--default-character-set=utf8mb4", "-N", "-B", "-e", query])
        .env("MYSQL_PWD", password)
        .output()
        .expect("run mariadb");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs SQL as root and expects it to work.
pub fn root_sql(db: &testbed::MariaDb, query: &str) -> Vec<String> {
    sql(db.port(), "root", db.root_password(), query).unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// The databases on the server other than the system ones.
pub fn user_databases(db: &testbed::MariaDb) -> Vec<String> {
    root_sql(
        db,
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN \
         ('mysql','information_schema','performance_schema','sys') ORDER BY SCHEMA_NAME",
    )
}

/// The three world counts in one statement, as a reader would see them; `None` when the
/// tables are not there.
pub fn world_counts(port: u16, database: &str) -> Option<String> {
    let q = format!(
        "SELECT (SELECT COUNT(*) FROM `{database}`.City), (SELECT COUNT(*) FROM `{database}`.Country), \
         (SELECT COUNT(*) FROM `{database}`.CountryLanguage)"
    );
    match sql(port, "root", "secret", &q) {
        Ok(rows) => rows.into_iter().next(),
        Err(e) if e.contains("doesn't exist") || e.contains("Unknown database") => None,
        Err(e) => panic!("reader query failed: {e}"),
    }
}

/// The full world, as counted in one statement.
pub const WORLD_COUNTS: &str = "4079\t239\t984";

/// What a reader sees of a world database in one statement: the three counts and, per
/// table, one value that differs between the real dump and [`old_world`]'s, so a view
/// that mixes an old table with a new one shows.
pub fn world_view(port: u16, database: &str) -> Option<String> {
    let q = format!(
        "SELECT (SELECT COUNT(*) FROM `{database}`.City), (SELECT COUNT(*) FROM `{database}`.Country), \
         (SELECT COUNT(*) FROM `{database}`.CountryLanguage), (SELECT Name FROM `{database}`.City WHERE ID=1), \
         (SELECT Name FROM `{database}`.Country WHERE Code='AFG'), \
         (SELECT Percentage FROM `{database}`.CountryLanguage WHERE CountryCode='AFG' AND Language='Dari')"
    );
    match sql(port, "root", "secret", &q) {
        Ok(rows) => rows.into_iter().next(),
        Err(e) if e.contains("doesn't exist") || e.contains("Unknown database") => None,
        Err(e) => panic!("reader query failed: {e}"),
    }
}

/// [`world_view`] of the real world dump.
pub const WORLD_VIEW: &str = "4079\t239\t984\tKabul\tAfghanistan\t32.1";

/// [`world_view`] of [`old_world`].
pub const OLD_WORLD_VIEW: &str = "4079\t239\t984\tOld Kabul\tOld Afghanistan\t99.9";

/// The world dump with one value changed in each of its three tables.
pub fn old_world() -> Vec<u8> {
    let mut dump = std::fs::read(world_dump()).expect("read the world dump");
    for (from, to) in [
        (&b"(1,'Kabul',"[..], &b"(1,'Old Kabul',"[..]),
        (b"('AFG','Afghanistan',", b"('AFG','Old Afghanistan',"),
        (b"('AFG','Dari','T',32.1)", b"('AFG','Dari','T',99.9)"),
    ] {
        let at = dump
            .windows(from.len())
            .position(|w| w == from)
            .expect("the value to change is in the world dump");
        dump.splice(at..at + from.len(), to.iter().copied());
    }
    dump
}

/// A reader that keeps looking at the live database (with [`world_view`]) and records
/// every distinct view.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<HashMap<Option<String>, usize>>>,
}

impl Reader {
    pub fn start(port: u16, database: &str) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let database = database.to_owned();
        let handle = thread::spawn(move || {
            let mut seen: HashMap<Option<String>, usize> = HashMap::new();
            while !flag.load(Ordering::Relaxed) {
                *seen.entry(world_view(port, &database)).or_default() += 1;
            }
            seen
        });
        Reader {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns each view seen with how often.
    pub fn stop(mut self) -> HashMap<Option<String>, usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("reader").join().expect("reader thread")
    }
}

/// What the proxy does to a connection once it has sent more than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trip {
    /// Stop forwarding, keep both sockets open (a hung load, to be killed).
    Stall,
    /// Close both sockets (a dropped connection).
    Cut,
}

#[derive(Default)]
struct ProxyState {
    limit: AtomicU64,
    trip: Mutex<Option<Trip>>,
    tripped: AtomicBool,
    stop: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

/// A TCP proxy on 127.0.0.1 in front of a server port.
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

impl Proxy {
    /// Listens on a free port.
    pub fn start(backend: u16) -> Proxy {
        Proxy::start_on(TcpListener::bind("127.0.0.1:0").expect("bind proxy"), backend)
    }

    /// Listens on `listener`.
    pub fn start_on(listener: TcpListener, backend: u16) -> Proxy {
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ProxyState {
            limit: AtomicU64::new(u64::MAX),
            ..ProxyState::default()
        });
        let st = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if st.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                    continue;
                };
                {
                    let mut socks = st.sockets.lock().unwrap();
                    socks.push(client.try_clone().expect("clone"));
                    socks.push(server.try_clone().expect("clone"));
                }
                let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let st_up = st.clone();
                thread::spawn(move || upstream(client, server, &st_up));
                thread::spawn(move || downstream(s2, c2));
            }
        });
        Proxy { port, state }
    }

    /// From now on, a connection that has sent more than `bytes` to the server trips.
    pub fn trip_after(&self, bytes: u64, trip: Trip) {
        *self.state.trip.lock().unwrap() = Some(trip);
        self.state.limit.store(bytes, Ordering::SeqCst);
    }

    /// Whether a connection has tripped.
    pub fn tripped(&self) -> bool {
        self.state.tripped.load(Ordering::SeqCst)
    }

    /// Closes every connection (the server sees them drop).
    pub fn cut_all(&self) {
        for s in self.state.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.cut_all();
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn upstream(mut client: TcpStream, mut server: TcpStream, st: &ProxyState) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent: u64 = 0;
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        sent += n as u64;
        if sent > st.limit.load(Ordering::SeqCst) {
            st.tripped.store(true, Ordering::SeqCst);
            match *st.trip.lock().unwrap() {
                Some(Trip::Cut) | None => break,
                Some(Trip::Stall) => {
                    while !st.stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(20));
                    }
                    break;
                }
            }
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

fn downstream(mut server: TcpStream, mut client: TcpStream) {
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Writes a file in a temp dir and returns its path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write file");
    p
}

/// `mariadb-dump OPTS > file` from `db`.
pub fn mariadb_dump(db: &testbed::MariaDb, opts: &[&str], file: &Path) {
    let dump = testbed::require_program("mariadb-dump", "sudo apt-get install -y mariadb-client");
    let out = Command::new(dump)
        .args(["-h127.0.0.1", &format!("-P{}", db.port()), "-uroot"])
        .args(opts)
        .env("MYSQL_PWD", db.root_password())
        .output()
        .expect("run mariadb-dump");
    assert!(
        out.status.success(),
        "mariadb-dump {opts:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(file, &out.stdout).expect("write dump");
}
