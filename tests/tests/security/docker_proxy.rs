//! Issue 17, point 7: the announcer behind a read-only Docker socket proxy that allows only
//! the calls SECURITY.md lists (`testbed::docker_filter::ANNOUNCER_RULES`).

use std::time::Duration;

use bollard::query_parameters::CreateContainerOptionsBuilder;
use testbed::docker::{self, Spec};
use testbed::docker_filter::{ANNOUNCER_RULES, FilterProxy};
use testbed::{Daemon, Etcd, eventually, unique};

use crate::support::{self, Binary, args};

/// The value of `key`, if present.
async fn value(client: &etcd_client::Client, key: &str) -> Option<String> {
    let r = client.clone().get(key, None).await.ok()?;
    r.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// A container is announced and withdrawn through the proxy; every call the announcer
/// made was one the proxy allows, and it used each kind it needs (so a proxy that let
/// everything through, or an announcer that made no call, fails the test); a write through
/// the same proxy is refused.
#[tokio::test]
async fn announcer_works_behind_a_read_only_docker_socket_proxy() {
    let etcd = Etcd::start();
    let client = etcd.client().await;
    let proxy = FilterProxy::start("/var/run/docker.sock", ANNOUNCER_RULES);
    let d = docker::connect().await;
    let image = docker::busybox_image(&d).await;
    let service = unique("secproxy");
    let mut a = support::announcer_args(&etcd.endpoint(), &unique("host"));
    a.extend(args(&[
        "--docker-host",
        &proxy.docker_host(),
        "--check",
        "none",
        "host",
    ]));
    let ann = Daemon::start("announcer", support::command(Binary::Announcer, &a, &[]));
    let c = Spec::web(&image)
        .name(&unique("sec-proxy"))
        .label("announce.service", &service)
        .label("announce.instance", "p1")
        .run(&d)
        .await;
    let key = format!("/services/{service}/p1/port");
    if let Err(e) = eventually("the record appears", Duration::from_secs(30), async || {
        value(&client, &key).await
    })
    .await
    {
        ann.fail(format!("{e}; calls: {:?}", proxy.calls()));
    }
    c.stop(1).await;
    if let Err(e) = eventually("the record goes", Duration::from_secs(30), async || {
        value(&client, &key).await.is_none().then_some(())
    })
    .await
    {
        ann.fail(format!("{e}; calls: {:?}", proxy.calls()));
    }

    let calls = proxy.calls();
    println!("the announcer's {} Docker API calls:", calls.len());
    let mut kinds: Vec<String> = calls.iter().map(|c| format!("{} {}", c.method, c.target)).collect();
    kinds.dedup();
    for k in &kinds {
        println!("  {k}");
    }
    let refused: Vec<_> = calls.iter().filter(|c| !c.allowed).collect();
    assert!(
        refused.is_empty(),
        "the proxy refused calls of the announcer: {refused:?}"
    );
    for (method, shape) in [
        ("GET", "/version"),
        ("GET", "/containers/json"),
        ("GET", "/containers/*/json"),
        ("GET", "/events"),
    ] {
        let rule = [testbed::docker_filter::Rule { method, path: shape }];
        assert!(
            calls
                .iter()
                .any(|c| testbed::docker_filter::allows(&rule, &c.method, &c.path)),
            "the announcer never called {method} {shape}: {calls:?}"
        );
    }

    // A write through the same proxy: refused with 403, never forwarded.
    let through =
        bollard::Docker::connect_with_unix(proxy.path().to_str().unwrap(), 10, bollard::API_DEFAULT_VERSION).unwrap();
    let name = unique("sec-proxy-forbidden");
    let body = bollard::models::ContainerCreateBody {
        image: Some(image.clone()),
        labels: Some([(docker::LABEL.to_owned(), "1".to_owned())].into()),
        ..Default::default()
    };
    let created = through
        .create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body)
        .await;
    match created {
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 403, .. }) => {}
        other => panic!("POST /containers/create through the proxy: want 403, got {other:?}"),
    }
    // The announcer keeps calling through the same proxy (an inspect can land after the
    // POST: seen once in a full run), so the POST is looked for, not taken as the last call.
    let calls = proxy.calls();
    let posts: Vec<_> = calls.iter().filter(|c| c.method == "POST").collect();
    assert!(
        posts.len() == 1 && !posts[0].allowed && posts[0].path == "/containers/create",
        "{posts:?}"
    );
    assert!(
        d.inspect_container(&name, None).await.is_err(),
        "the forbidden container exists"
    );
}
