//! The `db` image: MariaDB `FROM scratch`, built by `images/db/build.sh` from this machine's
//! Debian packages and run by the real Docker engine. Root logs in over TCP with the
//! password given at the first start (from a file or the environment), the password is
//! nowhere in the image or the container's configuration, the server runs as a non-root
//! user and stops cleanly, and a second start on the same volume keeps the data without
//! initialising again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::RemoveVolumeOptions;
use mysql_async::prelude::Queryable;
use testbed::docker::{Container, Spec};

const IMAGE: &str = "sidekick/db:latest";
const SECRET_MOUNT: &str = "/run/secrets/root_pw";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `images/db/build.sh` (idempotent: a second run is answered by Docker's cache).
fn build_image() {
    testbed::docker::build_with_script("images/db/build.sh", IMAGE);
}

/// A password with the characters that break naive quoting.
fn tricky_password() -> String {
    format!("it's a \"pw\" \\ %_{}", testbed::unique("x"))
}

/// A named volume for the datadir; removed on drop (after the containers that use it).
struct Volume {
    docker: Docker,
    name: String,
}

impl Volume {
    async fn create(docker: &Docker) -> Volume {
        let name = testbed::unique("db-test-data");
        let opts = bollard::models::VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some([(testbed::docker::LABEL.to_owned(), "1".to_owned())].into()),
            ..Default::default()
        };
        docker.create_volume(opts).await.expect("create volume");
        Volume {
            docker: docker.clone(),
            name,
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let name = self.name.clone();
        testbed::docker::block_on_thread(async move {
            let _ = docker.remove_volume(&name, None::<RemoveVolumeOptions>).await;
        });
    }
}

/// A container of the db image with the volume on /var/lib/mysql and 3306 published on
/// 127.0.0.1 (a port Docker chooses); force-removed on drop (it is a testbed `Container`).
struct DbContainer(Container);

impl std::ops::Deref for DbContainer {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.0
    }
}

impl DbContainer {
    async fn run(docker: &Docker, volume: &Volume, env: Vec<String>, secret: Option<&Path>) -> DbContainer {
        let mut spec = Spec {
            image: IMAGE.to_owned(),
            ..Spec::default()
        }
        .name(&testbed::unique("db-test"))
        .envs(env)
        .bind(&format!("{}:/var/lib/mysql", volume.name))
        .publish("3306/tcp", 0);
        if let Some(file) = secret {
            spec = spec.bind(&format!("{}:{SECRET_MOUNT}:ro", file.display()));
        }
        DbContainer(spec.run(docker).await)
    }

    async fn port(&self) -> u16 {
        self.host_port("3306/tcp").await
    }

    /// Waits (up to 60 s) until root logs in with `password` over TCP; returns the
    /// connection, or fails with the container's logs.
    async fn wait_for_root(&self, password: &str) -> mysql_async::Conn {
        let port = self.port().await;
        let mut last = String::new();
        // A container that exited ends the wait at once (`Err`): it will not start later.
        let got = testbed::eventually(
            "root logs in over TCP",
            Duration::from_secs(60),
            async || match connect(port, password).await {
                Ok(conn) => Some(Ok(conn)),
                Err(e) => {
                    last = e.to_string();
                    (self.state().await.running != Some(true)).then_some(Err(()))
                }
            },
        )
        .await;
        match got {
            Ok(Ok(conn)) => conn,
            outcome => panic!(
                "root cannot log in to {} ({last}; {}); state {:?}, logs:\n{}",
                self.name,
                outcome
                    .err()
                    .map_or_else(|| "the container stopped".to_owned(), |e| e.to_string()),
                self.state().await.status,
                self.logs().await
            ),
        }
    }

    /// Waits (up to 30 s) until the container has exited; returns its exit code.
    async fn wait_exit(&self) -> i64 {
        let exited = testbed::eventually("the container exits", Duration::from_secs(30), async || {
            let s = self.state().await;
            (s.running == Some(false)).then(|| s.exit_code.unwrap_or(-1))
        })
        .await;
        match exited {
            Ok(code) => code,
            Err(e) => panic!("{}: {e}; logs:\n{}", self.name, self.logs().await),
        }
    }
}

/// Root over TCP to 127.0.0.1:port (never through a unix socket).
async fn connect(port: u16, password: &str) -> Result<mysql_async::Conn, mysql_async::Error> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .pass(Some(password))
        .prefer_socket(false);
    tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::new(opts))
        .await
        .unwrap_or_else(|_| Err(mysql_async::Error::Other("connect timed out".into())))
}

fn password_file(dir: &Path, password: &str) -> PathBuf {
    let file = dir.join("root_pw");
    std::fs::write(&file, format!("{password}\n")).expect("write password file");
    file
}

#[test]
fn first_start_takes_the_password_file_and_a_restart_keeps_the_data_without_initialising_again() {
    let rt = runtime();
    build_image();
    rt.block_on(async {
        let docker = testbed::docker::connect().await;
        let image = docker.inspect_image(IMAGE).await.expect("inspect image");
        let image_env = image.config.and_then(|c| c.env).unwrap_or_default();
        assert!(
            !image_env.iter().any(|e| e.contains("PASSWORD")),
            "the image's env mentions a password: {image_env:?}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let password = tricky_password();
        let file = password_file(dir.path(), &password);
        let volume = Volume::create(&docker).await;
        let db = DbContainer::run(
            &docker,
            &volume,
            vec![format!("MARIADB_ROOT_PASSWORD_FILE={SECRET_MOUNT}")],
            Some(&file),
        )
        .await;

        let mut conn = db.wait_for_root(&password).await;
        let version: String = conn.query_first("SELECT VERSION()").await.unwrap().unwrap();
        assert!(version.contains("MariaDB"), "{version}");
        let who: String = conn.query_first("SELECT CURRENT_USER()").await.unwrap().unwrap();
        assert_eq!(who, "root@%", "root logs in from another host as 'root'@'%'");
        let port = db.port().await;
        let wrong = connect(port, "not-the-password").await;
        assert!(
            wrong.as_ref().is_err_and(|e| e.to_string().contains("Access denied")),
            "a wrong password must be refused: {wrong:?}"
        );
        let anonymous: i64 = conn
            .query_first("SELECT COUNT(*) FROM mysql.global_priv WHERE User = ''")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(anonymous, 0, "no anonymous accounts");

        // The password is in no configuration Docker shows, no command line, no log.
        let config_env = db.inspect().await.config.and_then(|c| c.env).unwrap_or_default();
        assert!(
            !config_env.iter().any(|e| e.contains(&password)),
            "the container's env holds the password: {config_env:?}"
        );
        let procs = db.processes().await;
        assert!(
            procs
                .iter()
                .any(|(uid, cmd)| uid == "999" && cmd.starts_with("mariadbd")),
            "mariadbd should run as uid 999 (mysql): {procs:?}"
        );
        assert!(
            procs.iter().all(|(uid, _)| uid != "0"),
            "nothing should run as root: {procs:?}"
        );
        assert!(!procs.iter().any(|(_, cmd)| cmd.contains(&password)), "{procs:?}");
        let logs = db.logs().await;
        assert!(logs.contains("db-entrypoint: initialising the empty datadir"), "{logs}");
        assert!(!logs.contains(&password), "the password reached the logs:\n{logs}");

        conn.query_drop(
            "CREATE DATABASE kept; CREATE TABLE kept.t (v VARCHAR(20)); INSERT INTO kept.t VALUES ('survives')",
        )
        .await
        .unwrap();
        conn.disconnect().await.unwrap();

        // docker stop: SIGTERM reaches mariadbd (PID 1), which shuts down and exits 0;
        // had it been ignored, Docker would have killed it after 30 s (exit 137).
        db.stop(30).await;
        assert_eq!(db.wait_exit().await, 0, "{}", db.logs().await);
        assert!(db.logs().await.contains("Shutdown complete"), "{}", db.logs().await);
        drop(db);

        // Same volume, no password given: the data is there, nothing is initialised again.
        let again = DbContainer::run(&docker, &volume, vec![], None).await;
        let mut conn = again.wait_for_root(&password).await;
        let kept: Option<String> = conn.query_first("SELECT v FROM kept.t").await.unwrap();
        assert_eq!(kept.as_deref(), Some("survives"));
        conn.disconnect().await.unwrap();
        let logs = again.logs().await;
        assert!(logs.contains("is initialised: starting"), "{logs}");
        assert!(
            !logs.contains("initialising the empty datadir"),
            "initialised twice:\n{logs}"
        );
    });
}

#[test]
fn first_start_without_a_password_refuses_and_leaves_the_datadir_empty_for_a_later_start() {
    let rt = runtime();
    build_image();
    rt.block_on(async {
        let docker = testbed::docker::connect().await;
        let volume = Volume::create(&docker).await;

        let refused = DbContainer::run(&docker, &volume, vec![], None).await;
        assert_eq!(refused.wait_exit().await, 1);
        let logs = refused.logs().await;
        assert!(
            logs.contains("no root password is given: set MARIADB_ROOT_PASSWORD_FILE"),
            "{logs}"
        );
        drop(refused);

        // Both a variable and its _FILE twin: refused, naming them.
        let both = DbContainer::run(
            &docker,
            &volume,
            vec![
                "MYSQL_ROOT_PASSWORD=a".into(),
                "MYSQL_ROOT_PASSWORD_FILE=/nonexistent".into(),
            ],
            None,
        )
        .await;
        assert_eq!(both.wait_exit().await, 1);
        let logs = both.logs().await;
        assert!(
            logs.contains("both MYSQL_ROOT_PASSWORD and MYSQL_ROOT_PASSWORD_FILE are set"),
            "{logs}"
        );
        drop(both);

        // The refusals left nothing behind: the seed's variable initialises the same volume.
        let password = tricky_password();
        let db = DbContainer::run(&docker, &volume, vec![format!("MYSQL_ROOT_PASSWORD={password}")], None).await;
        let mut conn = db.wait_for_root(&password).await;
        let one: i64 = conn.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
        conn.disconnect().await.unwrap();
        let logs = db.logs().await;
        assert!(logs.contains("db-entrypoint: initialising the empty datadir"), "{logs}");
        assert!(!logs.contains(&password), "the password reached the logs:\n{logs}");
    });
}

#[test]
fn rebuilding_the_db_image_gives_the_same_image() {
    let rt = runtime();
    let docker = rt.block_on(testbed::docker::connect());
    rt.block_on(testbed::docker::assert_rebuild_gives_the_same_image(
        &docker,
        "images/db/build.sh",
        IMAGE,
    ));
}
