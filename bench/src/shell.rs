//! Benchmark 3: the seed's `monweb@N` shell loop, run for real, on a sample of stand-ins.
//!
//! One `bash` loop per container, as the seed's unit ran it (`curl -f` the published port
//! every 10 s; if it answers, five `etcdctl` writes with a TTL of 10 s; otherwise delete
//! the keys), adapted to etcd v3: the seed's `etcdctl set KEY VALUE --ttl 10` becomes one
//! `etcdctl lease grant 10` per round and five `etcdctl put --lease`.
//!
//! The loops run before the containers start, as units do (a container that starts or
//! restarts meets a loop that is already polling), and the starts are spread evenly over
//! one 10 s period, each at a random point of its slice: the loop's phase at a start is
//! uniform, as it is in life. Latency = arrival of the watch message that completes the
//! record (the fifth key) minus Docker's `timeNano` of `start`, exactly as for the
//! announcer. CPU = user + system time of each `bash` and of every process it ran
//! (`cutime`/`cstime`: bash waits for each `curl`, `etcdctl`, `sleep`), over whole periods
//! once every record is visible.

use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bollard::Docker;
use sidekick::schema::field;
use testbed::{Daemon, Start};

use crate::Ctx;
use crate::containers::{self, RUN_LABEL};
use crate::observe::{self, DockerRecorder, EtcdRecorder, ms_between, nanos};
use crate::process;
use crate::stats::Dist;
use crate::summary::Section;

/// The loop's period (`sleep 10`) and TTL (`--ttl 10`), as in the seed.
pub const PERIOD: Duration = Duration::from_secs(10);

/// The seed's monweb loop, adapted to etcd v3. Its environment gives what the unit file
/// gave it: `N` (the instance number, `%i`), `PORT` (the published port, 180N in the
/// seed), `HOST` (`%H`), `COREOS_PUBLIC_IPV4`, `COREOS_PRIVATE_IPV4`, and `ETCDCTL_API=3`,
/// `ETCDCTL_ENDPOINTS` for etcdctl.
pub const MONWEB: &str = r#"
while true; do
  if curl -sf -o /dev/null "http://${COREOS_PUBLIC_IPV4}:${PORT}/"; then
    lease=$(etcdctl lease grant 10)
    lease=${lease#lease }
    lease=${lease%% *}
    etcdctl put --lease="$lease" "/services/web/web${N}/unit" "monweb@${N}.service" >/dev/null
    etcdctl put --lease="$lease" "/services/web/web${N}/host" "${HOST}" >/dev/null
    etcdctl put --lease="$lease" "/services/web/web${N}/public_ipv4_addr" "${COREOS_PUBLIC_IPV4}" >/dev/null
    etcdctl put --lease="$lease" "/services/web/web${N}/private_ipv4_addr" "${COREOS_PRIVATE_IPV4}" >/dev/null
    etcdctl put --lease="$lease" "/services/web/web${N}/port" "${PORT}" >/dev/null
  else
    etcdctl del --prefix "/services/web/web${N}/" >/dev/null
  fi
  sleep 10
done
"#;

/// What the shell benchmark hands back.
#[derive(Debug)]
pub struct Outcome {
    /// Its figures.
    pub section: Section,
    /// Announce latencies of the shell loop (ms), for the plot.
    pub shell_ms: Vec<f64>,
}

/// When container `i` of `k` starts, after the loops: slice `i` of one period, at `u` in it.
#[must_use]
pub fn start_offset(i: usize, k: usize, u: f64, lead: Duration) -> Duration {
    lead + PERIOD.mul_f64((i as f64 + u.clamp(0.0, 1.0)) / k.max(1) as f64)
}

/// Starts one monweb loop under `bash` in a process group of its own, so the `curl`,
/// `etcdctl` and `sleep` it runs are signalled and killed with it.
fn spawn_loop(endpoint: &str, n: &str, port: u16, log: &std::path::Path) -> anyhow::Result<Daemon> {
    let bash = testbed::require_program("bash", "apt-get install -y bash");
    let mut cmd = Command::new(bash);
    cmd.args(["-c", MONWEB])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("N", n)
        .env("PORT", port.to_string())
        .env("HOST", "core01")
        .env("COREOS_PUBLIC_IPV4", "127.0.0.1")
        .env("COREOS_PRIVATE_IPV4", "127.0.0.1")
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", endpoint);
    Start::new(&format!("monweb@{n}"))
        .log_to(log)
        .own_group()
        .try_start(cmd)
        .context("start a monweb loop")
}

/// Runs benchmark 3.
///
/// # Errors
/// When etcd, bash, curl or etcdctl are missing, or Docker refuses a container.
pub async fn run(ctx: &Ctx, docker: &Docker) -> anyhow::Result<Outcome> {
    let _ = testbed::require_program("etcdctl", "apt-get install -y etcd-client");
    let _ = testbed::require_program("curl", "apt-get install -y curl");
    let k = ctx.settings.shell_sample;
    let etcd = testbed::Etcd::start();
    let endpoint = etcd.endpoint();
    let image = testbed::docker::busybox_image(docker).await;
    let run_label = format!("{RUN_LABEL}={}", ctx.run_id);
    let watcher = EtcdRecorder::start(&endpoint, &["/services/web/"]).await?;
    let events = DockerRecorder::start(docker, &run_label, None);

    // Fixed host ports, as the seed's 18001..18010: the loop must know its port before
    // the container exists.
    // Distinct: separate free_port calls can give the same port twice (a full run failed
    // with "Bind for 127.0.0.1:40627 failed: port is already allocated").
    let ports: Vec<u16> = testbed::free_ports(k);
    let n_of = |i: usize| format!("{:02}", i + 1);
    let name_of = |i: usize| format!("bench-{}-sh{}", ctx.run_id, n_of(i));
    let specs = (0..k)
        .map(|i| containers::web_spec(&image, &ctx.run_id, &name_of(i), ports[i], &[]))
        .collect();
    let all = containers::create_all(docker, specs, 4).await;

    let mut loops = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let log = ctx.log(&format!("monweb-{}.log", n_of(i)));
        loops.push(spawn_loop(&endpoint, &n_of(i), *port, &log)?);
    }
    let loops_from = tokio::time::Instant::now();
    eprintln!(
        "bench:   {k} monweb loops polling; starting {k} containers spread over one {:?} period ...",
        PERIOD
    );
    let lead = Duration::from_secs(1);
    let mut started = Ok(());
    for (i, c) in all.iter().enumerate() {
        let at = loops_from + start_offset(i, k, rand::random::<f64>(), lead);
        tokio::time::sleep_until(at).await;
        if let Err(e) = containers::start_all(docker, std::slice::from_ref(c), 1).await {
            started = Err(e);
            break;
        }
    }
    let dir = "/services/web";
    let wanted: Vec<String> = (0..k).map(|i| format!("web{}", n_of(i))).collect();
    let visible = |w: &EtcdRecorder| {
        let iv = observe::record_intervals(&w.events(), dir, &field::ALL);
        wanted.iter().all(|n| iv.contains_key(n))
    };
    let all_seen = started.is_ok()
        && testbed::eventually("every loop announces its container", PERIOD * 3, async || {
            visible(&watcher).then_some(())
        })
        .await
        .is_ok();

    // CPU over whole periods of steady state (every container up and announced).
    let window = PERIOD * if ctx.settings.mode == "quick" { 1 } else { 2 };
    let cpu = |loops: &[Daemon]| -> u64 {
        loops
            .iter()
            .filter_map(|l| process::cpu_ticks(l.pid()))
            .map(|t| t.with_children())
            .sum()
    };
    let cpu_a = cpu(&loops);
    let t_a = nanos(SystemTime::now());
    tokio::time::sleep(window).await;
    let cpu_b = cpu(&loops);
    let t_b = nanos(SystemTime::now());
    for l in &loops {
        l.signal(libc::SIGKILL);
    }
    drop(loops);

    let starts = observe::first_event(&events.events(), "start", 0);
    let intervals = observe::record_intervals(&watcher.events(), dir, &field::ALL);
    let mut shell_ms = Vec::new();
    for i in 0..k {
        let (Some(start), Some(iv)) = (starts.get(&name_of(i)), intervals.get(&format!("web{}", n_of(i)))) else {
            continue;
        };
        if let Some(v) = observe::first_visible_after(iv, start.time_ns) {
            shell_ms.push(ms_between(start.time_ns, v.visible_ns));
        }
    }
    let tck = process::clock_ticks_per_second();
    let minutes = (t_b - t_a) as f64 / 1e9 / 60.0;
    let cpu_ms = cpu_b.saturating_sub(cpu_a) as f64 / tck * 1000.0;

    let mut section = Section::new("shell");
    section.add("shell_containers", k as f64);
    section.add("shell_announced", shell_ms.len() as f64);
    if let Some(d) = Dist::of(&shell_ms) {
        section.add("shell_announce_p50_ms", d.p50);
        section.add("shell_announce_p99_ms", d.p99);
        section.add("shell_announce_min_ms", d.min);
        section.add("shell_announce_max_ms", d.max);
    }
    section.add("shell_cpu_ms_per_container_min", cpu_ms / k as f64 / minutes);
    section.note(format!(
        "the seed's monweb loop (bash: curl -f, etcdctl lease grant 10 + 5 x etcdctl put --lease, sleep 10) on {k} \
         busybox containers whose starts are spread evenly over one 10 s period; latency measured like the \
         announcer's (watch arrival of the fifth key - Docker's timeNano of `start`)"
    ));
    section.note(format!(
        "shell CPU = utime+stime of each bash and the processes it waited for, over {:.0} s of steady state; \
         announcer CPU per container = its idle CPU per minute / records (footprint)",
        minutes * 60.0
    ));
    if !all_seen {
        section.note(format!("only {} of {k} shell records became visible", shell_ms.len()));
    }
    drop(events);
    drop(watcher);
    containers::remove_all(docker, all, 4).await;
    started?;
    Ok(Outcome { section, shell_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_spread_over_one_period_one_slice_each() {
        let lead = Duration::from_secs(1);
        assert_eq!(start_offset(0, 10, 0.0, lead), Duration::from_secs(1));
        assert_eq!(start_offset(9, 10, 1.0, lead), Duration::from_secs(11));
        assert_eq!(start_offset(4, 10, 0.5, lead), Duration::from_millis(5500));
        assert_eq!(start_offset(0, 1, 2.0, lead), Duration::from_secs(11), "u is clamped");
    }

    #[test]
    fn the_loop_writes_the_seeds_five_keys_with_a_ttl_and_deletes_them_when_the_check_fails() {
        for key in field::ALL {
            assert!(MONWEB.contains(&format!("/services/web/web${{N}}/{key}\"")), "{key}");
        }
        assert_eq!(MONWEB.matches("etcdctl put --lease=").count(), 5);
        assert!(MONWEB.contains("etcdctl lease grant 10"));
        assert!(MONWEB.contains("curl -sf"));
        assert!(MONWEB.contains("etcdctl del --prefix"));
        assert!(MONWEB.contains("sleep 10"));
    }
}
