//! Stand-in web containers in bulk: created, started, stopped and removed with bounded
//! concurrency, every one labelled `testbed` (by testbed) and `bench.run=<run id>`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use bollard::Docker;
use bollard::query_parameters::{RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder};
use futures::StreamExt;
use testbed::docker::{Container, Spec};

/// The label every container of one run carries: `bench.run=<run id>`.
pub const RUN_LABEL: &str = "bench.run";

/// The stand-in's command: busybox httpd on port 80, behind a shell that exits on SIGTERM
/// (as a real server does), so `docker stop` ends it at once instead of after the grace
/// period (a process 1 without a handler ignores SIGTERM).
#[must_use]
pub fn web_cmd() -> Vec<String> {
    ["/bin/sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
        .map(String::from)
        .to_vec()
}

/// A stand-in web container of run `run`, publishing port 80 on `host_port` (0: Docker
/// chooses) of 127.0.0.1, with extra `labels`.
#[must_use]
pub fn web_spec(image: &str, run: &str, name: &str, host_port: u16, labels: &[(&str, &str)]) -> Spec {
    let mut spec = Spec {
        cmd: Some(web_cmd()),
        publish: vec![("80/tcp".to_owned(), host_port)],
        ..Spec::web(image)
    }
    .name(name)
    .label(RUN_LABEL, run);
    for (k, v) in labels {
        spec = spec.label(k, v);
    }
    spec
}

/// Creates every spec (not started), `concurrency` at a time, in the order given.
pub async fn create_all(docker: &Docker, specs: Vec<Spec>, concurrency: usize) -> Vec<Container> {
    let mut made: Vec<(usize, Container)> = futures::stream::iter(specs.into_iter().enumerate())
        .map(|(i, s)| async move { (i, s.create(docker).await) })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    made.sort_by_key(|(i, _)| *i);
    made.into_iter().map(|(_, c)| c).collect()
}

/// Starts every container, `concurrency` at a time.
///
/// # Errors
/// The first container Docker refused to start.
pub async fn start_all(docker: &Docker, containers: &[Container], concurrency: usize) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(containers)
        .map(|c| async move {
            docker
                .start_container(&c.id, None::<StartContainerOptions>)
                .await
                .with_context(|| format!("start container {}", c.name))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Stops every container (`docker stop -t grace`), `concurrency` at a time.
///
/// # Errors
/// The first container Docker could not stop.
pub async fn stop_all(docker: &Docker, containers: &[Container], grace: i32, concurrency: usize) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(containers)
        .map(|c| async move {
            let opts = StopContainerOptionsBuilder::new().t(grace).build();
            match docker.stop_container(&c.id, Some(opts)).await {
                Ok(()) => Ok(()),
                // 304: already stopped.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
                Err(e) => Err(e).with_context(|| format!("stop container {}", c.name)),
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Removes every container (`docker rm -f`), `concurrency` at a time; errors are ignored
/// (the handles' own drop tries again).
pub async fn remove_all(docker: &Docker, containers: Vec<Container>, concurrency: usize) {
    let removing = futures::stream::iter(&containers).for_each_concurrent(concurrency, |c| async move {
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        let _ = docker.remove_container(&c.id, Some(opts)).await;
    });
    let patience =
        Duration::from_secs(60) + Duration::from_millis(200) * u32::try_from(containers.len()).unwrap_or(1000);
    if tokio::time::timeout(patience, removing).await.is_err() {
        eprintln!(
            "bench: Docker did not remove {} containers within {patience:?}; the next run removes what is left",
            containers.len()
        );
        // Their drop would wait on Docker again, forever if it hangs.
        std::mem::forget(containers);
        return;
    }
    // The handles remove again on drop (a quick 404 now); drop them off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(containers)).await;
}

/// Removes the containers a killed earlier run of the harness left behind (label
/// `bench.run`, whatever its value). Other containers are never touched.
pub async fn remove_leftovers(docker: &Docker) -> usize {
    let mut filters = HashMap::new();
    filters.insert("label".to_owned(), vec![RUN_LABEL.to_owned()]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = docker.list_containers(Some(opts)).await else {
        return 0;
    };
    let ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
    let n = ids.len();
    futures::stream::iter(ids)
        .for_each_concurrent(8, |id| async move {
            let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            let _ = docker.remove_container(&id, Some(opts)).await;
        })
        .await;
    n
}
