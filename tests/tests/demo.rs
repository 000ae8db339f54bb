//! `scripts/demo`, the README's first command, end to end with two web containers: the
//! real etcd cluster, the db and web images, the announcers, dbhelper, the simulator and
//! lb-sync. It must print what the walkthrough showed, see the stopped container's record
//! and load balancer node go away, exit 0, and leave nothing behind; run again after a
//! `--keep` run, it first removes what that one left running.
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

fn docker_lines(args: &[&str]) -> Vec<String> {
    let (ok, out) = run(Command::new("docker").args(args));
    assert!(ok, "docker {args:?}: {out}");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn demo_runs_the_walkthrough_with_two_web_containers_and_leaves_nothing_behind() {
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
            .args(["--web", "2", "--no-build", "--bin-dir"])
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

    // Then again, without --keep: it removes the kept demo first, runs, and tears down.
    let (ok, out) = demo(&[]);
    assert!(ok, "scripts/demo failed:\n{out}");

    for fact in [
        "removing what an earlier demo left", // the kept one
        "| started |",                        // three etcd members
        "db_private_ip = {\"value\": \"",     // mondb's record
        "world.City: 4079 rows",              // dbhelper's counts
        "/services/web/web01/unit = monweb@01.service",
        "/services/web/web02/port = 18002",
        "2 node(s)", // the load balancer before the stop
        "ENABLED    ONLINE",
        "web-01  home.php: host web-01",
        "web-02  home.php: host web-02",
        "world.php: 200 \"World: 4079 cities\", 4079 cities, first: 1 Kabul AFG Kabol 1780000",
        "health.php: PASS 200",
        "etcd: /services/web/web02/* gone",
        "load balancer: node",
        "ENABLED -> DRAINING",
        "deleted (after the 3 s drain)",
        "records now under /services/web: web01",
        "1 node(s)", // after the stop
        "nothing is left running",
    ] {
        assert!(out.contains(fact), "{fact:?} is missing from the demo's output:\n{out}");
    }
    assert_eq!(
        out.matches("health.php: PASS 200").count(),
        2,
        "both containers should pass:\n{out}"
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
