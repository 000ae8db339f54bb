//! What `/proc` says about a process: CPU times from `/proc/PID/stat` in clock ticks,
//! memory from `/proc/PID/status`.
//!
//! The processes themselves are [`testbed::Daemon`]s, as in the tests: started with
//! `PR_SET_PDEATHSIG`, so a harness killed by Ctrl-C or a timeout leaves no announcer,
//! lb-sync or shell loop behind; a shell loop leads a process group of its own
//! ([`testbed::Start::own_group`]), so the `curl`, `etcdctl` and `sleep` it runs are killed
//! with it.

use std::path::Path;

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, which Linux fixes at 100 for
/// what it shows user space, whatever the kernel's own tick rate).
#[must_use]
pub fn clock_ticks_per_second() -> f64 {
    100.0
}

/// CPU times of one process, in clock ticks, from `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// User time of the process itself.
    pub utime: u64,
    /// System time of the process itself.
    pub stime: u64,
    /// User time of its children that it waited for.
    pub cutime: u64,
    /// System time of its children that it waited for.
    pub cstime: u64,
}

impl CpuTicks {
    /// Own CPU time.
    #[must_use]
    pub fn own(&self) -> u64 {
        self.utime + self.stime
    }

    /// Own CPU time plus that of the children it reaped.
    #[must_use]
    pub fn with_children(&self) -> u64 {
        self.own() + self.cutime + self.cstime
    }
}

/// Parses the text of `/proc/PID/stat`; the command name may hold spaces and parentheses.
#[must_use]
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the name: field 3 (state) is f[0], so field k is f[k - 3].
    let n = |k: usize| f.get(k - 3).and_then(|s| s.parse::<u64>().ok());
    Some(CpuTicks {
        utime: n(14)?,
        stime: n(15)?,
        cutime: n(16)?,
        cstime: n(17)?,
    })
}

/// CPU ticks of `pid` now.
#[must_use]
pub fn cpu_ticks(pid: u32) -> Option<CpuTicks> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time `pid`'s threads have run, in nanoseconds: the sum of the first field of each
/// `/proc/PID/task/TID/schedstat`. A short span (one record's change costs lb-sync a few
/// milliseconds) needs this: `/proc/PID/stat` counts in clock ticks of 10 ms. A thread that
/// ended before the reading is not counted.
#[must_use]
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`) in bytes.
#[must_use]
pub fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Resident memory of `pid` in bytes (`VmRSS`).
#[must_use]
pub fn rss_bytes(pid: u32) -> Option<u64> {
    parse_status_kb(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "VmRSS")
}

/// The anonymous (heap, stacks) and file-backed (the binary's pages) parts of the
/// resident memory of `pid`, in bytes (`RssAnon`, `RssFile`).
#[must_use]
pub fn rss_split_bytes(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((parse_status_kb(&text, "RssAnon")?, parse_status_kb(&text, "RssFile")?))
}

/// Peak resident memory of `pid` in bytes (`VmHWM`).
#[must_use]
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    parse_status_kb(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "VmHWM")
}

/// Size of a file in bytes.
#[must_use]
pub fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Total memory of the machine in bytes (`MemTotal`).
#[must_use]
pub fn mem_total_bytes() -> Option<u64> {
    parse_status_kb(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal")
}

/// Available memory of the machine in bytes (`MemAvailable`).
#[must_use]
pub fn mem_available_bytes() -> Option<u64> {
    parse_status_kb(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ns_counts_the_work_of_every_thread() {
        let me = std::process::id();
        let before = cpu_ns(me).expect("schedstat of this process");
        // Another thread runs for 20 ms of its own CPU time (not of the clock: on a loaded
        // machine it gets less than all of it) and stays alive while the process is read.
        let (ran, done) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let own = || -> u64 {
                std::fs::read_to_string("/proc/thread-self/schedstat")
                    .ok()
                    .and_then(|t| t.split_whitespace().next()?.parse().ok())
                    .unwrap_or(u64::MAX)
            };
            let start = own();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while own().saturating_sub(start) < 20_000_000 && std::time::Instant::now() < deadline {
                std::hint::black_box(0u64);
            }
            let _ = ran.send(());
            std::thread::sleep(std::time::Duration::from_millis(200));
        });
        done.recv().expect("the worker ran");
        let spent = cpu_ns(me).expect("schedstat of this process") - before;
        assert!(spent >= 20_000_000, "{spent} ns");
        worker.join().expect("the worker ended");
    }

    #[test]
    fn stat_fields_are_found_after_a_name_with_spaces_and_parentheses() {
        let text = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 37 12 5 3 20 0 1 0 100 1000 200";
        assert_eq!(
            parse_stat(text),
            Some(CpuTicks {
                utime: 37,
                stime: 12,
                cutime: 5,
                cstime: 3
            })
        );
        let t = parse_stat(text).unwrap();
        assert_eq!((t.own(), t.with_children()), (49, 57));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_kb_lines_become_bytes() {
        let text = "Name:\tannouncer\nVmHWM:\t    6120 kB\nVmRSS:\t    5000 kB\n";
        assert_eq!(parse_status_kb(text, "VmRSS"), Some(5_120_000));
        assert_eq!(parse_status_kb(text, "VmHWM"), Some(6_266_880));
        assert_eq!(parse_status_kb(text, "VmSwap"), None);
    }

    #[test]
    fn this_process_has_a_stat_and_an_rss() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(clock_ticks_per_second() > 0.0);
    }
}
