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

/// The policy for reconnecting to a local daemon (Docker, etcd): 100 ms up to 5 s.
#[must_use]
pub fn reconnect() -> ExponentialBuilder {
    backoff(Duration::from_millis(100), Duration::from_secs(5))
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
}
