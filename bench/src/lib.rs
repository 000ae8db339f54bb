//! The benchmark harness: every binary of the suite against the physical limit and against
//! what it replaces, side by side, in one run on this machine (issue 7).
//!
//! ```text
//! scripts/bench [--quick]
//!   └─ bench ── announce.rs  announcer vs a bare etcd transaction (burst, withdraw, footprint)
//!             ├─ shell.rs     the seed's monweb shell loop (bash + etcdctl + curl), for real
//!             ├─ lbsync.rs    lb-sync against the CLB simulator (calls vs the API's minimum)
//!             ├─ dbseed.rs    dbhelper seed vs `mariadb < dump`
//!             ├─ haproxy.rs   lb-sync --provider haproxy: a rolling restart under load, withdrawal to drain
//!             ├─ fleet.rs     100 simulated hosts (the announcer's registry) on a 3-member etcd, lb-sync
//!             │               following their 5,000 records (cliproxy.rs counts its Runtime API commands)
//!             └─ summary.rs / plot.rs  → target/bench/{summary.json, summary.md, announce-latency.png}
//! ```
//!
//! Real servers throughout (testbed's etcd and MariaDB, the Docker engine, the simulator);
//! the binaries measured are the static release builds (`--bin-dir`). Nothing here is a
//! test: speed is measured, never asserted. The pure parts (percentiles, the API's minimum
//! calls, the JSON shape, the plot) have unit tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::json;

pub mod announce;
pub mod cliproxy;
pub mod containers;
pub mod dbseed;
pub mod fleet;
pub mod haproxy;
pub mod lbsync;
pub mod observe;
pub mod plot;
pub mod process;
pub mod shell;
pub mod stats;
pub mod summary;

use summary::{Section, Summary};

/// Command-line options; every flag has an environment twin.
#[derive(Debug, clap::Parser)]
#[command(
    name = "bench",
    about = "Benchmarks announcer, lb-sync and dbhelper against their limits and the seed's shell sidekicks"
)]
pub struct Args {
    /// The short run (under 3 minutes): fewer containers, shorter idle windows, fewer runs.
    #[arg(long, env = "BENCH_QUICK")]
    pub quick: bool,

    /// Directory of the static release binaries measured.
    #[arg(
        long,
        env = "BENCH_BIN_DIR",
        default_value = "target/x86_64-unknown-linux-musl/release"
    )]
    pub bin_dir: PathBuf,

    /// Where summary.json, summary.md, the plot and the logs go.
    #[arg(long, env = "BENCH_OUT", default_value = "target/bench")]
    pub out: PathBuf,

    /// Containers in the announce burst (default 200; quick 30).
    #[arg(long, env = "BENCH_CONTAINERS")]
    pub containers: Option<usize>,

    /// Records announced while the footprint is measured (default 500; quick 60).
    #[arg(long, env = "BENCH_FOOTPRINT_RECORDS")]
    pub footprint_records: Option<usize>,

    /// Idle window of the footprint (default 60s; quick 15s).
    #[arg(long, env = "BENCH_IDLE", value_parser = sidekick::duration::parse_positive)]
    pub idle: Option<Duration>,

    /// Containers announced by the shell loop (default 10; quick 5).
    #[arg(long, env = "BENCH_SHELL_SAMPLE")]
    pub shell_sample: Option<usize>,

    /// Random record changes of the lb-sync churn (default 50; quick 20).
    #[arg(long, env = "BENCH_CHURN")]
    pub churn: Option<usize>,

    /// Timed runs of each loader (default 5; quick 2).
    #[arg(long, env = "BENCH_SEED_RUNS")]
    pub seed_runs: Option<usize>,

    /// Docker calls in flight at once when starting or stopping containers.
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,

    /// The announcer's `--log-filter` (its log is `announcer.log` in the output directory);
    /// `info,announcer=debug` shows every Docker event it handles, for profiling. Keep
    /// `announcer::ops=debug`: its `visible` lines give `announcer_added` and `withdraw_added`.
    #[arg(long, env = "BENCH_ANNOUNCER_LOG", default_value = "info,announcer::ops=debug")]
    pub announcer_log_filter: String,

    /// Extra options for the announcer, separated by spaces (e.g. `--check none`), to see
    /// what a setting costs; the figures of BENCHMARKS.md use none.
    #[arg(long, env = "BENCH_ANNOUNCER_ARGS", default_value = "", allow_hyphen_values = true)]
    pub announcer_args: String,

    /// Only redraw the plot from a `latency-samples.json` of an earlier run (into
    /// `announce-latency.png` beside it) and exit: no server is started.
    #[arg(long, env = "BENCH_REPLOT", value_name = "SAMPLES_JSON")]
    pub replot: Option<std::path::PathBuf>,

    /// Record withdrawals timed to HAProxy no longer routing (default 40; quick 20).
    #[arg(long, env = "BENCH_WITHDRAWALS")]
    pub withdrawals: Option<usize>,

    /// Benchmarks to run, comma-separated: announce, shell, lb_sync, dbhelper, haproxy, fleet (default: all).
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',', value_parser = ["announce", "shell", "lb_sync", "dbhelper", "haproxy", "fleet"])]
    pub only: Vec<String>,

    /// Only the fleet benchmark (issue 18; the same as `--only fleet`): simulated hosts on a
    /// three-member etcd, lb-sync following all their records.
    #[arg(long, env = "BENCH_FLEET", conflicts_with = "only")]
    pub fleet: bool,

    /// Simulated hosts of the fleet (default 100; quick 10; at least 3).
    #[arg(long, env = "BENCH_FLEET_HOSTS")]
    pub fleet_hosts: Option<usize>,

    /// Records per simulated host (default 50).
    #[arg(long, env = "BENCH_FLEET_RECORDS")]
    pub fleet_records: Option<usize>,

    /// The fleet's steady window (default 60s; quick 15s).
    #[arg(long, env = "BENCH_FLEET_STEADY", value_parser = sidekick::duration::parse_positive)]
    pub fleet_steady: Option<Duration>,
}

/// The numbers of one run, from `--quick` and the explicit options.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// Containers in the announce burst.
    pub containers: usize,
    /// Records during the footprint measurement.
    pub footprint_records: usize,
    /// Idle window.
    pub idle: Duration,
    /// Shell loop sample.
    pub shell_sample: usize,
    /// lb-sync churn changes.
    pub churn: usize,
    /// Runs per loader.
    pub seed_runs: usize,
    /// Withdrawals timed through HAProxy.
    pub withdrawals: usize,
    /// Docker calls in flight.
    pub concurrency: usize,
    /// The announcer's log filter.
    pub announcer_log_filter: String,
    /// Extra announcer options.
    pub announcer_args: Vec<String>,
    /// The fleet benchmark's numbers.
    pub fleet: fleet::Settings,
}

impl Settings {
    /// Resolves the defaults of the mode, then the explicit options.
    #[must_use]
    pub fn from_args(a: &Args) -> Settings {
        let (mode, containers, records, idle, sample, churn, runs, withdrawals) = if a.quick {
            ("quick", 30, 60, Duration::from_secs(15), 5, 20, 2, 20)
        } else {
            ("full", 200, 500, Duration::from_secs(60), 10, 50, 5, 40)
        };
        let (hosts, steady, changes) = if a.quick {
            (10, Duration::from_secs(15), 3)
        } else {
            (100, Duration::from_secs(60), 5)
        };
        let containers = a.containers.unwrap_or(containers).max(1);
        Settings {
            mode,
            containers,
            footprint_records: a.footprint_records.unwrap_or(records).max(containers),
            idle: a.idle.unwrap_or(idle),
            shell_sample: a.shell_sample.unwrap_or(sample).max(1),
            churn: a.churn.unwrap_or(churn),
            seed_runs: a.seed_runs.unwrap_or(runs).max(1),
            withdrawals: a.withdrawals.unwrap_or(withdrawals).max(1),
            concurrency: a.concurrency.max(1),
            announcer_log_filter: a.announcer_log_filter.clone(),
            announcer_args: a.announcer_args.split_whitespace().map(String::from).collect(),
            fleet: fleet::Settings {
                hosts: a.fleet_hosts.unwrap_or(hosts).max(3),
                records_per_host: a.fleet_records.unwrap_or(50).max(1),
                steady: a.fleet_steady.unwrap_or(steady),
                changes,
            },
        }
    }
}

/// What every benchmark needs.
#[derive(Debug)]
pub struct Ctx {
    /// The numbers of this run.
    pub settings: Settings,
    /// The announcer binary measured.
    pub announcer: PathBuf,
    /// The lb-sync binary measured.
    pub lb_sync: PathBuf,
    /// The dbhelper binary measured.
    pub dbhelper: PathBuf,
    /// Output directory (logs go here too).
    pub out: PathBuf,
    /// A short random id: container names and the `bench.run` label.
    pub run_id: String,
}

impl Ctx {
    /// A log file path in the output directory.
    #[must_use]
    pub fn log(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
}

/// Runs the benchmarks selected; writes `summary.json`, `summary.md` and the plot.
///
/// # Errors
/// When the binaries are missing or the output cannot be written. A benchmark that fails
/// is reported in the summary (`meta.errors`) and makes the run fail at the end, after
/// everything else has run.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(samples) = &args.replot {
        return replot(samples);
    }
    sidekick::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("install the SIGTERM handler")?;
        tokio::select! {
            r = run_all(&args) => r,
            // Dropping the run future drops every container handle and child process.
            _ = tokio::signal::ctrl_c() => {
                anyhow::bail!("interrupted (SIGINT): containers and processes of this run are being removed")
            }
            _ = term.recv() => {
                anyhow::bail!("interrupted (SIGTERM): containers and processes of this run are being removed")
            }
        }
    })
}

fn which(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    anyhow::ensure!(
        p.is_file(),
        "{} is missing: build the static binaries first (scripts/bench does: cargo build --release --locked \
         --target x86_64-unknown-linux-musl -p announcer -p lb-sync -p dbhelper)",
        p.display()
    );
    Ok(p.canonicalize().unwrap_or(p))
}

async fn run_all(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = Settings::from_args(args);
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let ctx = Ctx {
        announcer: which(&args.bin_dir, "announcer")?,
        lb_sync: which(&args.bin_dir, "lb-sync")?,
        dbhelper: which(&args.bin_dir, "dbhelper")?,
        out: args.out.canonicalize().unwrap_or_else(|_| args.out.clone()),
        run_id: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
        settings,
    };
    let selected = |name: &str| {
        if args.fleet {
            name == "fleet"
        } else {
            args.only.is_empty() || args.only.iter().any(|o| o == name)
        }
    };
    eprintln!(
        "bench: {} run {} ({} containers, {} records, idle {:?}); output in {}",
        ctx.settings.mode,
        ctx.run_id,
        ctx.settings.containers,
        ctx.settings.footprint_records,
        ctx.settings.idle,
        ctx.out.display()
    );

    let mut summary = Summary {
        meta: machine_meta(&ctx).await,
        ..Summary::default()
    };
    let mut errors: Vec<String> = Vec::new();
    let mut plot = plot::Series::default();

    let docker = testbed::docker::connect().await;
    // Only a run that makes containers clears those of an earlier one: a fleet run (no
    // container) must not remove the containers of another harness running meanwhile.
    if ["announce", "shell", "haproxy"].iter().any(|b| selected(b)) {
        let leftovers = containers::remove_leftovers(&docker).await;
        if leftovers > 0 {
            eprintln!("bench: removed {leftovers} container(s) an interrupted earlier run left behind");
        }
    }

    let mut footprint = Section::new("footprint");
    for (name, path) in [
        ("binary_bytes_announcer", &ctx.announcer),
        ("binary_bytes_lb_sync", &ctx.lb_sync),
        ("binary_bytes_dbhelper", &ctx.dbhelper),
    ] {
        footprint.add(name, process::file_size(path).map(|b| b as f64));
    }

    let mut announce_p50: Option<f64> = None;
    let mut announcer_cpu_per_container_min: Option<f64> = None;
    if selected("announce") {
        eprintln!("bench: [1/6] announce, withdraw, footprint ...");
        match announce::run(&ctx, &docker, &mut footprint).await {
            Ok(out) => {
                announce_p50 = out.announce.get("announce_p50_ms");
                announcer_cpu_per_container_min = footprint.get("announcer_cpu_ms_per_container_min");
                plot.ours = out.ours_ms;
                plot.bare = out.bare_ms;
                summary.sections.push(out.announce);
                summary.sections.push(out.withdraw);
            }
            Err(e) => errors.push(format!("announce: {e:#}")),
        }
    }
    if selected("shell") {
        eprintln!("bench: [2/6] the seed's monweb shell loop ...");
        match shell::run(&ctx, &docker).await {
            Ok(mut out) => {
                if let (Some(shell), Some(ours)) = (out.section.get("shell_announce_p50_ms"), announce_p50) {
                    out.section.add("speedup_p50", stats::ratio(shell, ours));
                }
                if let (Some(shell), Some(ours)) = (
                    out.section.get("shell_cpu_ms_per_container_min"),
                    announcer_cpu_per_container_min,
                ) {
                    out.section.add("announcer_cpu_ms_per_container_min", ours);
                    out.section.add("shell_over_announcer_cpu", stats::ratio(shell, ours));
                }
                plot.shell = out.shell_ms;
                summary.sections.push(out.section);
            }
            Err(e) => errors.push(format!("shell: {e:#}")),
        }
    }
    // A fleet run measures no binary of its own beside lb-sync: its table holds the fleet.
    if !args.fleet {
        summary.sections.push(footprint);
    }
    if selected("lb_sync") {
        eprintln!("bench: [3/6] lb-sync against the simulator ...");
        match lbsync::run(&ctx).await {
            Ok(s) => summary.sections.push(s),
            Err(e) => errors.push(format!("lb_sync: {e:#}")),
        }
    }
    if selected("dbhelper") {
        eprintln!("bench: [4/6] dbhelper seed vs the mariadb client ...");
        match dbseed::run(&ctx).await {
            Ok(s) => summary.sections.push(s),
            Err(e) => errors.push(format!("dbhelper: {e:#}")),
        }
    }

    if selected("haproxy") {
        eprintln!("bench: [5/6] lb-sync --provider haproxy: a rolling restart under load, withdrawal to drain ...");
        let settings = haproxy::Settings {
            withdrawals: ctx.settings.withdrawals,
        };
        match haproxy::run(&ctx, &docker, settings).await {
            Ok(s) => summary.sections.push(s),
            Err(e) => errors.push(format!("haproxy: {e:#}")),
        }
    }

    if selected("fleet") {
        let f = ctx.settings.fleet;
        eprintln!(
            "bench: [6/6] a fleet of {} simulated hosts, {} records, on a three-member etcd, lb-sync --provider haproxy ...",
            f.hosts,
            f.records()
        );
        let (section, result) = Box::pin(fleet::run(&ctx, f)).await;
        summary.sections.push(section);
        if let Err(e) = result {
            errors.push(format!("fleet: {e:#}"));
        }
    }

    let elapsed = started.elapsed();
    summary.meta.insert("wall_time_s".into(), json!(elapsed.as_secs()));
    summary.meta.insert("errors".into(), json!(errors));
    let png = ctx.out.join("announce-latency.png");
    let samples = json!({"ours_ms": plot.ours, "bare_ms": plot.bare, "shell_ms": plot.shell});
    std::fs::write(ctx.out.join("latency-samples.json"), samples.to_string() + "\n")?;
    if !(plot.ours.is_empty() && plot.bare.is_empty() && plot.shell.is_empty()) {
        match plot::draw(&plot, &png) {
            Ok(text) => {
                summary.meta.insert("plot".into(), json!(png.display().to_string()));
                summary.meta.insert("plot_text".into(), json!(text.describe()));
            }
            Err(e) => errors.push(format!("plot: {e:#}")),
        }
    }
    let json_path = ctx.out.join("summary.json");
    let doc = serde_json::to_string_pretty(&summary.to_json())?;
    std::fs::write(&json_path, doc + "\n").with_context(|| format!("write {}", json_path.display()))?;
    std::fs::write(ctx.out.join("summary.md"), summary.markdown())?;
    println!("{}", summary.table());
    for s in &summary.sections {
        for n in &s.notes {
            println!("note ({}): {n}", s.name);
        }
    }
    println!(
        "bench: {} run finished in {}s; figures in {}",
        ctx.settings.mode,
        elapsed.as_secs(),
        json_path.display()
    );
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("bench: FAILED {e}");
        }
        anyhow::bail!("{} benchmark(s) failed", errors.len());
    }
    Ok(())
}

/// The machine and versions, for BENCHMARKS.md.
async fn machine_meta(ctx: &Ctx) -> std::collections::BTreeMap<String, serde_json::Value> {
    let first_line = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let docker = testbed::docker::connect().await;
    let docker_version = docker.version().await.ok().and_then(|v| v.version).unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let s = &ctx.settings;
    std::collections::BTreeMap::from([
        (
            "date".to_owned(),
            json!(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
        ),
        ("mode".to_owned(), json!(s.mode)),
        ("run_id".to_owned(), json!(ctx.run_id)),
        ("nproc".to_owned(), json!(nproc)),
        ("cpu".to_owned(), json!(cpu)),
        ("mem_total_bytes".to_owned(), json!(process::mem_total_bytes())),
        ("kernel".to_owned(), json!(kernel)),
        ("docker".to_owned(), json!(docker_version)),
        ("etcd".to_owned(), json!(first_line("etcd", "--version"))),
        ("mariadb".to_owned(), json!(first_line("mariadbd", "--version"))),
        (
            "settings".to_owned(),
            json!({
                "containers": s.containers,
                "footprint_records": s.footprint_records,
                "idle_s": s.idle.as_secs_f64(),
                "shell_sample": s.shell_sample,
                "churn": s.churn,
                "seed_runs": s.seed_runs,
                "withdrawals": s.withdrawals,
                "concurrency": s.concurrency,
                "announcer_args": s.announcer_args,
                "fleet_hosts": s.fleet.hosts,
                "fleet_records_per_host": s.fleet.records_per_host,
                "fleet_steady_s": s.fleet.steady.as_secs_f64(),
                "fleet_changes": s.fleet.changes,
            }),
        ),
        (
            "binaries".to_owned(),
            json!([&ctx.announcer, &ctx.lb_sync, &ctx.dbhelper].map(|p| p.display().to_string())),
        ),
    ])
}

/// `--replot`: the plot again from the samples an earlier run wrote.
fn replot(samples: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(samples).with_context(|| format!("read {}", samples.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parse {}", samples.display()))?;
    let list = |name: &str| -> Vec<f64> {
        doc.get(name)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let series = plot::Series {
        ours: list("ours_ms"),
        bare: list("bare_ms"),
        shell: list("shell_ms"),
    };
    let png = samples.with_file_name("announce-latency.png");
    let font = plot::draw(&series, &png)?;
    println!("{} ({})", png.display(), font.describe());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn quick_and_full_defaults_and_overrides() {
        let full = Settings::from_args(&Args::try_parse_from(["bench"]).unwrap());
        assert_eq!(
            (full.mode, full.containers, full.footprint_records, full.idle.as_secs()),
            ("full", 200, 500, 60)
        );
        assert_eq!(
            (full.shell_sample, full.churn, full.seed_runs, full.withdrawals),
            (10, 50, 5, 40)
        );
        let quick = Settings::from_args(&Args::try_parse_from(["bench", "--quick"]).unwrap());
        assert_eq!((quick.mode, quick.containers, quick.idle.as_secs()), ("quick", 30, 15));
        let custom = Settings::from_args(
            &Args::try_parse_from(["bench", "--quick", "--containers", "80", "--idle", "5s"]).unwrap(),
        );
        // The footprint holds at least the burst's containers.
        assert_eq!(
            (custom.containers, custom.footprint_records, custom.idle.as_secs()),
            (80, 80, 5)
        );
        assert!(Args::try_parse_from(["bench", "--only", "announce,nonsense"]).is_err());
        let only = Args::try_parse_from(["bench", "--only", "announce,lb_sync"]).unwrap();
        assert_eq!(only.only, ["announce", "lb_sync"]);
        assert_eq!(
            (
                full.fleet.hosts,
                full.fleet.records(),
                full.fleet.steady.as_secs(),
                full.fleet.changes
            ),
            (100, 5000, 60, 5)
        );
        assert_eq!((quick.fleet.hosts, quick.fleet.steady.as_secs()), (10, 15));
        let fleet = Args::try_parse_from(["bench", "--fleet", "--fleet-hosts", "25", "--fleet-steady", "30s"]).unwrap();
        assert!(fleet.fleet);
        let f = Settings::from_args(&fleet).fleet;
        assert_eq!((f.hosts, f.records_per_host, f.steady.as_secs()), (25, 50, 30));
        // A fleet needs a host that dies beside the others.
        let tiny = Settings::from_args(&Args::try_parse_from(["bench", "--fleet-hosts", "1"]).unwrap());
        assert_eq!(tiny.fleet.hosts, 3);
        assert!(Args::try_parse_from(["bench", "--fleet", "--only", "announce"]).is_err());
        assert!(Args::try_parse_from(["bench", "--only", "fleet"]).is_ok());
    }
}
