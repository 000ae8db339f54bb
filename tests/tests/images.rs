//! The three `FROM scratch` images of our binaries, run for real: they hold one static
//! binary, run unprivileged, and do their job from inside a container: the announcer
//! through the mounted Docker socket, dbhelper with the dump mounted, lb-sync against the
//! simulator. `scripts/build-images` (run by `scripts/test`) builds them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;

use etcd_client::GetOptions;
use testbed::clb_sim::{ClbSim, SimConfig};
use testbed::docker::{self, Spec};
use testbed::{Etcd, MariaDb};

const BINARIES: [&str; 3] = ["announcer", "lb-sync", "dbhelper"];

fn docker_cli(args: &[&str]) -> Output {
    let docker = testbed::require_program("docker", "sudo apt-get install -y docker.io");
    Command::new(docker).args(args).output().expect("run docker")
}

fn image(bin: &str) -> String {
    let tag = format!("sidekick/{bin}:latest");
    let out = docker_cli(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    assert!(
        out.status.success(),
        "image {tag} is missing: build it with scripts/build-images (scripts/test does it before the tests)"
    );
    tag
}

fn inspect(tag: &str, format: &str) -> String {
    let out = docker_cli(&["image", "inspect", "--format", format, tag]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A container name that is removed on drop, for `docker run` started from the CLI.
struct Named(String);

impl Drop for Named {
    fn drop(&mut self) {
        let _ = docker_cli(&["rm", "-f", &self.0]);
    }
}

#[test]
fn binary_images_hold_one_static_binary_and_run_unprivileged() {
    for bin in BINARIES {
        let tag = image(bin);
        assert_eq!(inspect(&tag, "{{.Config.User}}"), "65534:65534", "{tag} runs as nobody");
        assert_eq!(
            inspect(&tag, "{{json .Config.Entrypoint}}"),
            format!("[\"/usr/local/bin/{bin}\"]")
        );
        let size: u64 = inspect(&tag, "{{.Size}}").parse().unwrap();
        assert!(
            size < 12 * 1024 * 1024,
            "{tag} is {size} bytes: more than one small binary inside"
        );
        // Runs with no libc in the image at all: the binary is static.
        let out = docker_cli(&["run", "--rm", &tag, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains("Usage:") && help.contains("[env: ETCD_ENDPOINTS="),
            "{tag} --help:\n{help}"
        );
    }
    assert!(
        inspect("sidekick/lb-sync:latest", "{{json .Config.Env}}")
            .contains("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
        "lb-sync's image carries the CA bundle for the real API"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcer_image_announces_through_the_mounted_socket_and_revokes_on_docker_stop() {
    let tag = image("announcer");
    let etcd = Etcd::start();
    let d = docker::connect().await;
    let web = Spec::web(&docker::busybox_image(&d).await).run(&d).await;
    let port = web.host_port("80/tcp").await;

    let gid = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .unwrap();
    let name = Named(testbed::unique("img-announcer"));
    let out = docker_cli(&[
        "run",
        "-d",
        "--name",
        &name.0,
        "--label",
        "testbed=1",
        "--network",
        "host",
        "--group-add",
        &gid.to_string(),
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-e",
        &format!("ETCD_ENDPOINTS={}", etcd.endpoint()),
        &tag,
        "--public-ipv4",
        "127.0.0.1",
        "--private-ipv4",
        "127.0.0.1",
        "--ttl",
        "30s",
        "container",
        &web.name,
        "--service",
        "web",
        "--instance",
        "img01",
    ]);
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut c = etcd.client().await;
    let key = "/services/web/img01/port";
    let seen = testbed::eventually(
        "the image's announcer writes its record",
        Duration::from_secs(20),
        async || {
            let r = c.get(key, None).await.unwrap();
            r.kvs().first().map(|kv| kv.value_str().unwrap().to_owned())
        },
    )
    .await;
    let logs = || String::from_utf8_lossy(&docker_cli(&["logs", &name.0]).stderr).into_owned();
    assert_eq!(
        seen.as_deref().ok(),
        Some(port.to_string().as_str()),
        "no record from the image; logs:\n{}",
        logs()
    );

    // `docker stop` sends SIGTERM: the lease is revoked and the record vanishes at once,
    // long before its 30 s TTL.
    let out = docker_cli(&["stop", "-t", "10", &name.0]);
    assert!(out.status.success());
    let all = c
        .get("/services/web/img01/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.count(), 0, "records left after docker stop; logs:\n{}", logs());
    assert_eq!(
        docker_cli(&["inspect", "--format", "{{.State.ExitCode}}", &name.0]).stdout,
        b"0\n"
    );
}

#[test]
fn dbhelper_image_seeds_the_mounted_dump() {
    let tag = image("dbhelper");
    let db = MariaDb::start();
    let dump = testbed::world_dump();
    let name = Named(testbed::unique("img-dbhelper"));
    let out = docker_cli(&[
        "run",
        "--name",
        &name.0,
        "--label",
        "testbed=1",
        "--network",
        "host",
        "-v",
        &format!("{}:/data/world_innodb.sql:ro", dump.display()),
        "-e",
        "MYSQL_ROOT_PASSWORD=secret",
        "-e",
        "APP_PW=img-app-pw",
        "-e",
        "WORLD_DUMP=/data/world_innodb.sql",
        &tag,
        "seed",
        "--host",
        "127.0.0.1",
        "--port",
        &db.port().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dbhelper image failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("City: 4079 rows"), "{stdout}");
    let count = db.cli(&["-N", "-e", "SELECT COUNT(*) FROM world.Country"]);
    assert_eq!(count.trim(), "239");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_sync_image_plans_against_the_simulator() {
    let tag = image("lb-sync");
    let etcd = Etcd::start();
    let sim = ClbSim::start(SimConfig::default());
    let mut c = etcd.client().await;
    for (i, ip) in ["10.0.0.1", "10.0.0.2"].iter().enumerate() {
        let rec = sidekick::schema::Record {
            service: "web".into(),
            instance: format!("web0{}", i + 1),
            unit: format!("monweb@0{}.service", i + 1),
            host: "core01".into(),
            public_ipv4: Some("203.0.113.10".parse().unwrap()),
            private_ipv4: ip.parse().unwrap(),
            port: 18001 + u16::try_from(i).unwrap(),
            container_id: String::new(),
            container_name: String::new(),
        };
        let ops: Vec<etcd_client::TxnOp> = rec
            .entries("/services", sidekick::schema::Layout::Fields)
            .into_iter()
            .map(|(k, v)| etcd_client::TxnOp::put(k, v, None))
            .collect();
        c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
    }
    let name = Named(testbed::unique("img-lbsync"));
    let out = docker_cli(&[
        "run",
        "--name",
        &name.0,
        "--label",
        "testbed=1",
        "--network",
        "host",
        "-e",
        "RACKSPACE_API_KEY=k",
        "-e",
        &format!("ETCD_ENDPOINTS={}", etcd.endpoint()),
        &tag,
        "--identity-url",
        &sim.identity_url(),
        "--username",
        "u",
        "--region",
        "ORD",
        "--load-balancer-id",
        "1",
        "plan",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lb-sync image failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("add     10.0.0.1:18001") && stdout.contains("add     10.0.0.2:18002"),
        "{stdout}"
    );
    assert!(sim.nodes(1).is_empty(), "plan changes nothing");
}
