//! systemd's service notifications (`sd_notify(3)`): readiness, a status line, stopping, and a
//! watchdog that pings only while every loop of the binary is alive.
//!
//! The protocol itself is the `sd-notify` crate's (a datagram to `$NOTIFY_SOCKET`; no-op when
//! the variable is unset, as outside systemd). What is ours is the watchdog's rule:
//!
//! - each long-running loop holds a [`Heartbeat`] and calls [`Heartbeat::beat`] every time
//!   it comes round (a loop idle in `select!` beats from a ticker arm:
//!   [`Heartbeat::interval`]);
//! - a loop waiting out a backoff calls [`Heartbeat::sleep`]: it is alive until the sleep
//!   ends, however long (systemd must not restart an announcer because etcd is down);
//! - [`Notifier::watchdog`] sends `WATCHDOG=1` every half `WATCHDOG_USEC`, but only while
//!   every heartbeat is fresh. A loop stuck in a call that never returns stops beating, the
//!   pings stop, and systemd restarts the unit after `WatchdogSec=`.
//!
//! A loop is fresh when it beat within the watchdog period (or is inside a declared sleep).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// How often a loop beats at least when it is idle; well under any sensible `WatchdogSec=`.
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// Without systemd's watchdog, loops are still tracked (for `stalled`), with this period.
const DEFAULT_PERIOD: Duration = Duration::from_secs(30);

/// The binary's link to its service manager. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    /// `WATCHDOG_USEC` when systemd asked for pings (for this very process).
    watchdog: Option<Duration>,
    loops: Mutex<Vec<Arc<LoopState>>>,
}

#[derive(Debug)]
struct LoopState {
    name: &'static str,
    /// Milliseconds since `Inner::start` until which the loop counts as alive.
    alive_until_ms: AtomicU64,
}

/// One loop's proof of life. Dropping it unregisters the loop (a loop that ended on purpose
/// does not hold the watchdog back).
#[derive(Debug)]
pub struct Heartbeat {
    inner: Arc<Inner>,
    state: Arc<LoopState>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::from_env()
    }
}

impl Notifier {
    /// Reads `WATCHDOG_USEC`/`WATCHDOG_PID` from the environment; `NOTIFY_SOCKET` is read at
    /// every notification (unset: every notification is a no-op).
    #[must_use]
    pub fn from_env() -> Self {
        Self::with_watchdog(sd_notify::watchdog_enabled())
    }

    /// A notifier with the given watchdog period (tests; `None`: no pings).
    #[must_use]
    pub fn with_watchdog(watchdog: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                start: Instant::now(),
                watchdog,
                loops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The period after which a loop that has not beaten counts as stuck.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.inner.watchdog.unwrap_or(DEFAULT_PERIOD)
    }

    /// Registers a loop; it counts as alive for one period from now.
    #[must_use]
    pub fn heartbeat(&self, name: &'static str) -> Heartbeat {
        let state = Arc::new(LoopState {
            name,
            alive_until_ms: AtomicU64::new(0),
        });
        self.inner
            .loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&state));
        let beat = Heartbeat {
            inner: Arc::clone(&self.inner),
            state,
        };
        beat.beat();
        beat
    }

    /// The names of the loops that have not beaten within the period, now.
    #[must_use]
    pub fn stalled(&self) -> Vec<&'static str> {
        let now = self.inner.now_ms();
        self.inner
            .loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|l| l.alive_until_ms.load(Ordering::Relaxed) < now)
            .map(|l| l.name)
            .collect()
    }

    /// `READY=1` with a status line (the first full sync is done).
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=<line>`, shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1` (graceful shutdown has begun).
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Pings systemd's watchdog every half period while no loop is stalled, until `stop`.
    /// Returns at once when systemd asked for no watchdog. Logs (once per stall) which loop
    /// holds the pings back.
    pub async fn watchdog(self, stop: CancellationToken) {
        let Some(period) = self.inner.watchdog else {
            return;
        };
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held_back = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stalled = self.stalled();
            if stalled.is_empty() {
                if held_back {
                    tracing::info!("every loop is alive again: watchdog pings resume");
                    held_back = false;
                }
                send(&[NotifyState::Watchdog]);
            } else if !held_back {
                tracing::error!(
                    stalled = ?stalled,
                    "a loop has not come round for {}: watchdog pings stop, systemd will restart this unit",
                    humantime::format_duration(period)
                );
                held_back = true;
            }
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn period(&self) -> Duration {
        self.watchdog.unwrap_or(DEFAULT_PERIOD)
    }
}

impl Heartbeat {
    /// The loop came round: alive for one more period.
    pub fn beat(&self) {
        self.alive_for(Duration::ZERO);
    }

    /// Sleeps for `d` (a backoff), counting as alive throughout and for a period after.
    pub async fn sleep(&self, d: Duration) {
        self.alive_for(d);
        tokio::time::sleep(d).await;
        self.beat();
    }

    /// The loop enters a call bounded by its own timeout `limit` (a wait for a remote
    /// system to settle): alive until `limit` has passed, and a period after. A call that
    /// overruns its own bound is stuck.
    pub fn busy(&self, limit: Duration) {
        self.alive_for(limit);
    }

    /// A ticker for an idle loop's `select!`: beat on each tick.
    #[must_use]
    pub fn interval(&self) -> tokio::time::Interval {
        let mut tick = tokio::time::interval(BEAT_EVERY.min(self.inner.period() / 4));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    }

    /// The loop's latest word wins: a beat after a long `busy` call returned ends that
    /// call's allowance (one task drives one heartbeat, so there is no race to lose).
    fn alive_for(&self, extra: Duration) {
        let until =
            self.inner.now_ms() + u64::try_from((extra + self.inner.period()).as_millis()).unwrap_or(u64::MAX / 2);
        self.state.alive_until_ms.store(until, Ordering::Relaxed);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.inner
            .loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|l| !Arc::ptr_eq(l, &self.state));
    }
}

/// Notifications are best effort: a service manager that went away is no reason to stop.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn freshness_follows_the_wall_clock() {
        let n = Notifier::with_watchdog(Some(Duration::from_millis(200)));
        let beat = n.heartbeat("loop");
        let asleep = n.heartbeat("backoff");
        asleep.alive_for(Duration::from_secs(10));
        assert!(n.stalled().is_empty());
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(n.stalled(), vec!["loop"], "only the loop that stopped beating");
        beat.beat();
        assert!(n.stalled().is_empty());
        // A bounded call: alive for its bound, stalled once it overran it.
        beat.busy(Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(350));
        assert!(n.stalled().is_empty(), "within its bound and a period");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(n.stalled(), vec!["loop"], "past its bound and a period");
    }

    /// One test for everything that goes through `NOTIFY_SOCKET` (an environment variable:
    /// one process-wide value).
    #[tokio::test]
    async fn notifications_and_watchdog_pings_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: set before this test starts any thread that reads it; no other test of
        // this crate reads NOTIFY_SOCKET.
        unsafe {
            std::env::set_var("NOTIFY_SOCKET", &path);
        }
        let plain = Notifier::with_watchdog(None);
        plain.ready("announced 3 records");
        let mut buf = [0u8; 256];
        let len = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=announced 3 records\n");
        plain.stopping();
        let len = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping\n");

        sock.set_nonblocking(true).unwrap();
        let n = Notifier::with_watchdog(Some(Duration::from_millis(200)));
        let beat = n.heartbeat("loop");
        let stop = CancellationToken::new();
        let pings = |sock: &UnixDatagram| {
            let mut n = 0;
            let mut buf = [0u8; 64];
            while let Ok(len) = sock.recv(&mut buf) {
                if &buf[..len] == b"WATCHDOG=1\n" {
                    n += 1;
                }
            }
            n
        };
        let task = tokio::spawn(n.clone().watchdog(stop.clone()));
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            beat.beat();
        }
        let while_alive = pings(&sock);
        // The loop is now stuck: no beat for several periods.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = pings(&sock);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let while_stuck = pings(&sock);
        stop.cancel();
        task.await.unwrap();
        assert!(while_alive >= 1, "pings while the loop beats: {while_alive}");
        assert_eq!(while_stuck, 0, "no ping while the loop is stuck");
    }
}
