//! `scripts/demo`, the README's first command, end to end with three web containers: the
//! real etcd cluster, the db and web images, the announcers, dbhelper, HAProxy fed by
//! `lb-sync --provider haproxy`, the simulator fed by a second lb-sync. It must print what
//! the walkthrough showed, a load balancer URL that answers, requests through HAProxy
//! spread over all three containers, the stopped container's record, HAProxy server and
//! simulated node go away under continuous traffic with no failed request, exit 0, and
//! leave nothing behind; run again after a `--keep` run, it first removes what that one
//! left running.
//!
//! The zero is not given: the demo counts every answer of its traffic and fails on one
//! that is not 2xx. With the web containers started with `STOP_GRACE=0` (nginx quits at
//! SIGTERM, before HAProxy has drained the server), it failed: "11 of 2060 requests
//! through HAProxy failed while web-03 stopped" (HTTP 503).
//!
//! It runs the workspace's own binaries (`cargo build --workspace --bins`, as
//! `scripts/test` does first) with `--no-build`; the images are built here (cached).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const LABEL: &str = "sidekick-demo=1";

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The number after `before` on the first line of `out` that has it (`"sent: 12"` -> 12).
fn number_after(out: &str, before: &str) -> Option<u64> {
    let rest = &out[out.find(before)? + before.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let (ok, out) = run(Command::new("docker").args(args));
    assert!(ok, "docker {args:?}: {out}");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn demo_runs_the_walkthrough_with_three_web_containers_behind_haproxy_and_leaves_nothing_behind() {
    for script in ["images/web/build.sh", "images/db/build.sh"] {
        let (ok, out) = run(Command::new("bash").arg(testbed::repo_root().join(script)));
        assert!(ok, "{script} failed:\n{out}");
    }
    let bin_dir = testbed::bin("announcer").parent().unwrap().to_owned();
    for b in ["announcer", "dbhelper", "lb-sync", "clb-sim"] {
        assert!(
            bin_dir.join(b).exists(),
            "{} is missing: run cargo build --workspace --bins first",
            bin_dir.join(b).display()
        );
    }

    let demo = |extra: &[&str]| {
        run(Command::new("bash")
            .arg(testbed::repo_root().join("scripts/demo"))
            .args(["--web", "3", "--no-build", "--bin-dir"])
            .arg(&bin_dir)
            .args(extra)
            .env_remove("SIDEKICK_DEMO_DIR"))
    };

    // First with --keep: everything stays up, and the output says how to stop it.
    let (ok, out) = demo(&["--keep"]);
    assert!(ok, "scripts/demo --keep failed:\n{out}");
    assert!(out.contains("stop:     scripts/demo --stop"), "{out}");
    let names = docker_lines(&["ps", "--filter", &format!("label={LABEL}"), "--format", "{{.Names}}"]);
    assert!(
        names.contains(&"db".to_owned()) && names.contains(&"web-01".to_owned()),
        "--keep should leave db and web-01 running: {names:?}"
    );
    let health = testbed::http_get(18001, "/health.php").unwrap_or_default();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("PASS\n"),
        "web-01 should still answer PASS after --keep: {health:?}"
    );
    // The load balancer URL the demo printed answers, through HAProxy, from a container.
    let lb_port = number_after(&out, "LB URL: http://127.0.0.1:")
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no \"LB URL: http://127.0.0.1:PORT/\" in the output:\n{out}"));
    assert!(
        out.contains(&format!("curl http://127.0.0.1:{lb_port}/")),
        "--keep should say how to reach the LB:\n{out}"
    );
    let page = testbed::http_get(lb_port, "/").unwrap_or_default();
    assert!(
        page.starts_with("HTTP/1.1 200")
            && page.to_ascii_lowercase().contains("x-lb-server: lb-sync-")
            && page.contains("Served by web-0"),
        "the LB URL http://127.0.0.1:{lb_port}/ should answer 200 from a web container after --keep: {page:?}"
    );

    // Then again, without --keep: it removes the kept demo first, runs, and tears down.
    let (ok, out) = demo(&[]);
    assert!(ok, "scripts/demo failed:\n{out}");

    for fact in [
        "removing what an earlier demo left", // the kept one
        "| started |",                        // three etcd members
        "db_private_ip = {\"value\": \"",     // mondb's record
        "world.City: 4079 rows",              // dbhelper's counts
        "/services/web/web01/unit = monweb@01.service",
        "/services/web/web03/port = 18003",
        "3 node(s)",   // the simulated load balancer before the stop
        "3 server(s)", // HAProxy before the stop
        "ENABLED    ONLINE",
        "lb-sync-haproxy.service",
        "web-01  home.php: host web-01",
        "web-03  home.php: host web-03",
        "world.php: 200 \"World: 4079 cities\", 4079 cities, first: 1 Kabul AFG Kabol 1780000",
        "health.php: PASS 200",
        ": HTTP/1.1 200 OK, X-Lb-Server: lb-sync-", // the LB URL answered
        "30 requests through HAProxy: 30 answered 200, 0 failed; spread over 3 containers",
        "etcd: /services/web/web03/* gone",
        "HAProxy: server lb-sync-",
        "drained and deleted",
        "Cloud Load Balancer: node",
        "ENABLED -> DRAINING",
        "deleted (after the 3 s drain)",
        "docker stop web-03: the container exited",
        "records now under /services/web: web01 web02",
        "2 node(s)",   // after the stop
        "2 server(s)", // after the stop
        "nothing is left running",
    ] {
        assert!(out.contains(fact), "{fact:?} is missing from the demo's output:\n{out}");
    }
    assert_eq!(
        out.matches("health.php: PASS 200").count(),
        3,
        "all three containers should pass:\n{out}"
    );
    // The 30 requests: each container took some, and the counts add up.
    let spread: Vec<u64> = ["web-01", "web-02", "web-03"]
        .iter()
        .map(|c| number_after(&out, &format!("| {c}: ")).unwrap_or(0))
        .collect();
    assert!(
        spread.iter().all(|n| *n > 0) && spread.iter().sum::<u64>() == 30,
        "30 requests should spread over web-01..03: {spread:?}\n{out}"
    );
    // The stop under traffic: real traffic, web-03 among those answering it, and none failed.
    let sent = number_after(&out, "while web-03 stopped: ").unwrap_or(0);
    assert!(
        sent >= 20,
        "too little traffic through the stop ({sent} requests):\n{out}"
    );
    assert!(
        out.contains(&format!(
            "while web-03 stopped: {sent} requests sent through HAProxy, 0 failed"
        )),
        "requests failed while web-03 stopped:\n{out}"
    );
    let web03_in_traffic = out
        .lines()
        .find(|l| l.contains("| web-03: ") && l.contains(" requests (server lb-sync-"))
        .and_then(|l| number_after(l, "| web-03: "));
    assert!(
        web03_in_traffic.is_some_and(|n| n > 0),
        "web-03 should have answered part of the traffic before it was drained:\n{out}"
    );

    assert!(
        docker_lines(&["ps", "-aq", "--filter", &format!("label={LABEL}")]).is_empty(),
        "containers left behind"
    );
    assert!(
        docker_lines(&["volume", "ls", "-q", "--filter", &format!("label={LABEL}")]).is_empty(),
        "volumes left behind"
    );
    let state = std::env::temp_dir().join("sidekick-demo");
    assert!(!state.exists(), "{} left behind", state.display());
}
