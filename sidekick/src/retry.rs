//! The retry policy: exponential backoff with a cap and jitter, defined once.
//!
//! Built on `backon` (the `backoff` crate is unmaintained, RUSTSEC-2025-0012).

use std::time::Duration;

use backon::ExponentialBuilder;

/// Exponential backoff from `min` doubling up to `max`, with full jitter, forever
/// (callers that must give up bound it with `.with_max_times` or a deadline).
#[must_use]
pub fn backoff(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// The policy for reconnecting to a local daemon (the Docker engine): 100 ms up to 1 s,
/// so that with jitter a reconnect comes within 2 s of the daemon's return (a connect to a
/// local socket that is not there fails at once and costs nothing).
#[must_use]
pub fn reconnect() -> ExponentialBuilder {
    backoff(Duration::from_millis(100), Duration::from_secs(1))
}

/// The policy for retrying etcd through an outage (no member reachable, or no quorum):
/// 50 ms up to 500 ms, so that with jitter the next try comes within 1 s of etcd's return.
/// A longer cap bought nothing: a leaderless or unreachable etcd refuses a request at
/// once, while every second of the cap was a second of stale records after the outage
/// (the fault campaign measured up to 4.3 s with a 2 s cap).
#[must_use]
pub fn etcd_outage() -> ExponentialBuilder {
    backoff(Duration::from_millis(50), Duration::from_millis(500))
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let delays: Vec<Duration> = backoff(Duration::from_millis(100), Duration::from_secs(1))
            .build()
            .take(12)
            .collect();
        assert_eq!(delays.len(), 12, "the policy retries forever");
        // Jitter adds at most one more `delay`, so every delay stays below twice the cap.
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)), "{delays:?}");
        assert!(delays[0] >= Duration::from_millis(100), "{delays:?}");
        assert!(
            delays[11] >= Duration::from_secs(1),
            "late delays reach the cap: {delays:?}"
        );
    }

    #[test]
    fn after_an_outage_the_next_try_comes_within_a_second_or_two() {
        let etcd: Vec<Duration> = etcd_outage().build().take(50).collect();
        assert!(etcd.iter().all(|d| *d <= Duration::from_secs(1)), "{etcd:?}");
        let docker: Vec<Duration> = reconnect().build().take(50).collect();
        assert!(docker.iter().all(|d| *d <= Duration::from_secs(2)), "{docker:?}");
    }
}
