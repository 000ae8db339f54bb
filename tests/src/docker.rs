//! The real Docker engine: a client, test images built `FROM scratch`, and containers that
//! are removed when their handle drops.
//!
//! No registry is reachable here, so every image is built from files on this machine:
//! [`busybox_image`] packs Debian's static busybox with a tiny web root whose
//! `/cgi-bin/health` answers 500 until `/tmp/healthy` exists, then 200.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig, PortBinding};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::OnceCell;

/// Every container and image the test bed makes carries this label.
pub const LABEL: &str = "testbed";

const INSTALL: &str = "the Docker engine must run with its socket at /var/run/docker.sock \
     (Debian: sudo apt-get install -y docker.io && sudo service docker start)";

/// A client of the local engine, version-negotiated (the engine here speaks API 1.41).
pub async fn connect() -> Docker {
    let docker =
        Docker::connect_with_unix_defaults().unwrap_or_else(|e| panic!("testbed: cannot reach Docker: {e}; {INSTALL}"));
    let docker = docker
        .negotiate_version()
        .await
        .unwrap_or_else(|e| panic!("testbed: Docker did not answer: {e}; {INSTALL}"));
    docker
        .ping()
        .await
        .unwrap_or_else(|e| panic!("testbed: Docker ping failed: {e}; {INSTALL}"));
    docker
}

/// Runs a future to completion on a fresh thread with its own runtime: for destructors,
/// which may run inside or outside a runtime.
pub fn block_on_thread<F, T>(fut: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fut)
    })
    .join()
    .expect("block_on_thread")
}

const HEALTH_CGI: &str = "#!/bin/sh\n\
if [ -f /tmp/healthy ]; then\n\
  printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nPASS\\n'\n\
else\n\
  printf 'HTTP/1.0 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nFAIL\\n'\n\
fi\n";

const DOCKERFILE: &str = "FROM scratch\n\
COPY busybox /bin/busybox\n\
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
COPY www /www\n\
RUN [\"/bin/busybox\", \"mkdir\", \"-p\", \"/tmp\"]\n\
CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n";

/// Debian's static busybox, or a failure saying how to install it.
#[must_use]
pub fn busybox_binary() -> Vec<u8> {
    let path = crate::require_program("busybox", "sudo apt-get install -y busybox-static");
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .expect("read busybox");
    assert!(
        bytes.len() > 4 && !String::from_utf8_lossy(&bytes).contains("/lib64/ld-linux"),
        "testbed: {} is dynamically linked; install busybox-static",
        path.display()
    );
    bytes
}

/// Builds (once per process, and only when missing) the busybox web image; returns its tag.
///
/// The container serves `/www` with `busybox httpd` on port 80: `/index.html` says hello,
/// `/cgi-bin/health` answers 500 until `/tmp/healthy` exists and 200 after.
pub async fn busybox_image(docker: &Docker) -> String {
    static TAG: OnceCell<String> = OnceCell::const_new();
    TAG.get_or_init(|| async {
        let busybox = busybox_binary();
        let mut files: Vec<(&str, Vec<u8>, u32)> = vec![
            ("Dockerfile", DOCKERFILE.as_bytes().to_vec(), 0o644),
            ("busybox", busybox, 0o755),
            ("www/index.html", b"hello from testbed\n".to_vec(), 0o644),
            ("www/cgi-bin/health", HEALTH_CGI.as_bytes().to_vec(), 0o755),
        ];
        files.sort_by(|a, b| a.0.cmp(b.0));
        let tag = format!("testbed-busybox:{}", content_hash(&files));
        build_image(docker, &tag, &files).await;
        tag
    })
    .await
    .clone()
}

fn content_hash(files: &[(&str, Vec<u8>, u32)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, bytes, mode) in files {
        h.update(name.as_bytes());
        h.update(mode.to_le_bytes());
        h.update(bytes);
    }
    let digest = h.finalize();
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Builds `tag` from an in-memory context of `(path, bytes, mode)` unless it exists.
pub async fn build_image(docker: &Docker, tag: &str, files: &[(&str, Vec<u8>, u32)]) {
    if docker.inspect_image(tag).await.is_ok() {
        return;
    }
    let _lock = build_lock(tag).await;
    if docker.inspect_image(tag).await.is_ok() {
        return; // another test process built it while this one waited
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes.as_slice()).expect("tar entry");
    }
    let body = tar.into_inner().expect("tar");
    let mut labels = HashMap::new();
    labels.insert(LABEL.to_owned(), "1".to_owned());
    let opts = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(body.into())));
    let mut log = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(s) = info.stream {
                    log.push_str(&s);
                }
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    panic!("testbed: building {tag} failed: {e}\n{log}");
                }
            }
            Err(e) => panic!("testbed: building {tag} failed: {e}\n{log}"),
        }
    }
    assert!(
        docker.inspect_image(tag).await.is_ok(),
        "testbed: image {tag} missing after build:\n{log}"
    );
}

/// Runs one of the repository's image build scripts (`images/web/build.sh`,
/// `images/db/build.sh`) with `--tag tag`; a failed build fails the test with its output.
pub fn build_with_script(script: &str, tag: &str) -> std::process::Output {
    let path = crate::repo_root().join(script);
    let out = std::process::Command::new("bash")
        .arg(&path)
        .args(["--tag", tag])
        .output()
        .unwrap_or_else(|e| panic!("testbed: cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds `tag` with `script` twice and asserts that the second build prints the tag last
/// and gives the very same image (the scripts are idempotent: Docker's cache answers).
pub async fn assert_rebuild_gives_the_same_image(docker: &Docker, script: &str, tag: &str) {
    build_with_script(script, tag);
    let first = docker.inspect_image(tag).await.expect("inspect the first build").id;
    let out = build_with_script(script, tag);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        tag,
        "{script} prints the tag last"
    );
    let second = docker.inspect_image(tag).await.expect("inspect the second build").id;
    assert_eq!(first, second, "building with {script} twice should give the same image");
}

/// Serialises the builds of one tag across test processes (nextest runs each test in a
/// process of its own): processes that all find the tag missing would otherwise build it
/// side by side, and every build but the last would stay behind as an untagged image.
/// The lock is an exclusive `flock` on a file in the temp dir, released when the returned
/// file is dropped (or the process dies).
#[allow(unsafe_code)]
async fn build_lock(tag: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let name: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = std::env::temp_dir().join(format!("testbed-build-{name}.lock"));
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("testbed: cannot open the build lock {}: {e}", path.display()));
        // SAFETY: flock(2) on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "testbed: cannot lock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        file
    })
    .await
    .expect("testbed: the build lock task panicked")
}

/// What to run: a builder for [`Container`].
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// Container name; `None` gives a unique `testbed-xxxxxxxx`.
    pub name: Option<String>,
    /// Image tag.
    pub image: String,
    /// Command (`None`: the image's).
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Labels (the `testbed` label is always added).
    pub labels: HashMap<String, String>,
    /// Published ports: (`80/tcp`, host port; 0 lets Docker choose).
    pub publish: Vec<(String, u16)>,
    /// Host IP the published ports bind to (default 127.0.0.1).
    pub host_ip: Option<String>,
    /// A Docker HEALTHCHECK.
    pub healthcheck: Option<Vec<String>>,
    /// The container's host name.
    pub hostname: Option<String>,
    /// `host` for host networking (`None`: the default bridge).
    pub network_mode: Option<String>,
    /// Volumes and bind mounts, `SRC:DST[:ro]`.
    pub binds: Vec<String>,
}

impl Spec {
    /// A busybox web container publishing port 80 on a port Docker chooses.
    #[must_use]
    pub fn web(image: &str) -> Spec {
        Spec {
            image: image.to_owned(),
            publish: vec![("80/tcp".into(), 0)],
            ..Spec::default()
        }
    }

    /// Sets the name.
    #[must_use]
    pub fn name(mut self, name: &str) -> Spec {
        self.name = Some(name.to_owned());
        self
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, k: &str, v: &str) -> Spec {
        self.labels.insert(k.to_owned(), v.to_owned());
        self
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, kv: &str) -> Spec {
        self.env.push(kv.to_owned());
        self
    }

    /// Adds several `KEY=VALUE` environment variables.
    #[must_use]
    pub fn envs(mut self, kvs: impl IntoIterator<Item = String>) -> Spec {
        self.env.extend(kvs);
        self
    }

    /// Sets the container's host name.
    #[must_use]
    pub fn hostname(mut self, hostname: &str) -> Spec {
        self.hostname = Some(hostname.to_owned());
        self
    }

    /// Uses the host's network (the container reaches servers on 127.0.0.1).
    #[must_use]
    pub fn host_network(mut self) -> Spec {
        self.network_mode = Some("host".to_owned());
        self
    }

    /// Mounts a volume or a host path: `SRC:DST[:ro]`.
    #[must_use]
    pub fn bind(mut self, spec: &str) -> Spec {
        self.binds.push(spec.to_owned());
        self
    }

    /// Publishes `container_port` (`80/tcp`) on `host_port` (0: Docker chooses).
    #[must_use]
    pub fn publish(mut self, container_port: &str, host_port: u16) -> Spec {
        self.publish.push((container_port.to_owned(), host_port));
        self
    }

    /// Creates the container (not started).
    pub async fn create(self, docker: &Docker) -> Container {
        let name = self.name.clone().unwrap_or_else(|| crate::unique("testbed"));
        let mut labels = self.labels.clone();
        labels.insert(LABEL.to_owned(), "1".to_owned());
        let host_ip = self.host_ip.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut exposed: Vec<String> = Vec::new();
        for (cport, hport) in &self.publish {
            let host_port = if *hport == 0 { String::new() } else { hport.to_string() };
            bindings.insert(
                cport.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(host_ip.clone()),
                    host_port: Some(host_port),
                }]),
            );
            exposed.push(cport.clone());
        }
        let healthcheck = self.healthcheck.clone().map(|test| HealthConfig {
            test: Some(test),
            interval: Some(500_000_000),
            timeout: Some(1_000_000_000),
            retries: Some(1),
            start_period: Some(0),
            start_interval: None,
        });
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: self.cmd.clone(),
            env: Some(self.env.clone()),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            healthcheck,
            hostname: self.hostname.clone(),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                network_mode: self.network_mode.clone(),
                binds: (!self.binds.is_empty()).then(|| self.binds.clone()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let res = docker
            .create_container(Some(opts), body)
            .await
            .unwrap_or_else(|e| panic!("testbed: creating container {name} failed: {e}"));
        Container {
            docker: docker.clone(),
            id: res.id,
            name,
        }
    }

    /// Creates and starts the container.
    pub async fn run(self, docker: &Docker) -> Container {
        let c = self.create(docker).await;
        c.start().await;
        c
    }
}

/// A container of the test; force-removed when dropped.
#[derive(Debug)]
pub struct Container {
    docker: Docker,
    /// Full container id.
    pub id: String,
    /// Container name (without the leading `/`).
    pub name: String,
}

impl Container {
    /// `docker start`.
    pub async fn start(&self) {
        self.docker
            .start_container(&self.id, None::<StartContainerOptions>)
            .await
            .unwrap_or_else(|e| panic!("testbed: starting {} failed: {e}", self.name));
    }

    /// `docker stop -t secs`.
    pub async fn stop(&self, secs: i32) {
        let opts = StopContainerOptionsBuilder::new().t(secs).build();
        self.docker
            .stop_container(&self.id, Some(opts))
            .await
            .unwrap_or_else(|e| panic!("stop {}: {e}", self.name));
    }

    /// `docker kill -s SIGNAL`.
    pub async fn kill(&self, signal: &str) {
        let opts = KillContainerOptionsBuilder::new().signal(signal).build();
        self.docker
            .kill_container(&self.id, Some(opts))
            .await
            .unwrap_or_else(|e| panic!("kill {}: {e}", self.name));
    }

    /// `docker pause`.
    pub async fn pause(&self) {
        self.docker
            .pause_container(&self.id)
            .await
            .unwrap_or_else(|e| panic!("pause {}: {e}", self.name));
    }

    /// `docker unpause`.
    pub async fn unpause(&self) {
        self.docker
            .unpause_container(&self.id)
            .await
            .unwrap_or_else(|e| panic!("unpause {}: {e}", self.name));
    }

    /// `docker restart -t secs`.
    pub async fn restart(&self, secs: i32) {
        let opts = bollard::query_parameters::RestartContainerOptionsBuilder::new()
            .t(secs)
            .build();
        self.docker
            .restart_container(&self.id, Some(opts))
            .await
            .unwrap_or_else(|e| panic!("restart {}: {e}", self.name));
    }

    /// `docker rm -f`, now.
    pub async fn remove(&self) {
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        let _ = self.docker.remove_container(&self.id, Some(opts)).await;
    }

    /// `docker inspect`.
    pub async fn inspect(&self) -> bollard::models::ContainerInspectResponse {
        self.docker
            .inspect_container(&self.id, None::<InspectContainerOptions>)
            .await
            .expect("inspect")
    }

    /// The container's state (running, exit code, health...).
    pub async fn state(&self) -> bollard::models::ContainerState {
        self.inspect().await.state.expect("state")
    }

    /// Everything the container wrote to stdout and stderr so far.
    pub async fn logs(&self) -> String {
        let opts = bollard::query_parameters::LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .build();
        let mut out = String::new();
        let mut logs = self.docker.logs(&self.id, Some(opts));
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    /// `(uid, command line)` of every process in the container (`docker top`).
    pub async fn processes(&self) -> Vec<(String, String)> {
        // Docker needs the pid column to map host processes to the container.
        let opts = bollard::query_parameters::TopOptionsBuilder::new()
            .ps_args("-o pid,uid,args")
            .build();
        let top = self
            .docker
            .top_processes(&self.id, Some(opts))
            .await
            .expect("docker top");
        top.processes
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.get(1).cloned().unwrap_or_default(),
                    p.get(2).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The host port Docker published for `container_port` (`80/tcp`).
    pub async fn host_port(&self, container_port: &str) -> u16 {
        let info = self
            .docker
            .inspect_container(&self.id, None::<InspectContainerOptions>)
            .await
            .expect("inspect");
        let ports = info.network_settings.and_then(|n| n.ports).unwrap_or_default();
        ports
            .get(container_port)
            .and_then(|b| b.as_ref())
            .and_then(|b| b.first())
            .and_then(|b| b.host_port.as_deref())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{} publishes no {container_port}", self.name))
    }

    /// Runs `cmd` inside the container and waits for it; returns its output.
    pub async fn exec(&self, cmd: &[&str]) -> String {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let exec = self
            .docker
            .create_exec(
                &self.id,
                CreateExecOptions {
                    cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..CreateExecOptions::default()
                },
            )
            .await
            .expect("create exec");
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await.expect("start exec")
        {
            while let Some(Ok(chunk)) = output.next().await {
                out.push_str(&chunk.to_string());
            }
        }
        out
    }

    /// Waits until `GET http://127.0.0.1:{port}{path}` answers at all (any status).
    pub async fn wait_http(&self, port: u16, path: &str) {
        let path = path.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            crate::eventually_blocking("the container answers HTTP", Duration::from_secs(10), || {
                crate::process::http_get(port, &path)
            })
            .ok()
        })
        .await
        .expect("join");
        assert!(
            ok.is_some(),
            "container {} does not answer HTTP on port {port}",
            self.name
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let id = self.id.clone();
        block_on_thread(async move {
            let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            let _ = docker.remove_container(&id, Some(opts)).await;
        });
    }
}
