//! One polling helper for every test: [`eventually`], and its twin for sync code (the
//! servers' start-up in this crate, the sync dbhelper tests): [`eventually_blocking`].

use std::fmt;
use std::time::{Duration, Instant};

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(50);

/// What [`eventually`] returns when the condition never held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotYet {
    /// What was awaited, in the caller's words.
    pub what: String,
    /// How long it was awaited.
    pub within: Duration,
}

impl fmt::Display for NotYet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not happen within {:?}", self.what, self.within)
    }
}

impl std::error::Error for NotYet {}

/// Asks `check` every 50 ms until it gives `Some`, for at most `within`.
///
/// `what` says in words what is awaited ("the records of h2 expire"); it is the message of
/// the error, which a test turns into a failure together with the log excerpts of the
/// processes involved ([`crate::Daemon::fail`], [`crate::fail_with_logs`]). `check` is an
/// async closure, so it may query etcd, Docker or an HTTP endpoint and borrow the test's
/// state; a check is always made once more after the deadline, so a slow check is never
/// cut short.
///
/// # Errors
/// [`NotYet`] when `check` never gave `Some` within `within`.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Result<T, NotYet> {
    let deadline = Instant::now() + within;
    loop {
        let last = Instant::now() >= deadline;
        if let Some(v) = check().await {
            return Ok(v);
        }
        if last {
            return Err(NotYet {
                what: what.to_owned(),
                within,
            });
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// [`eventually`] for sync code: asks the sync `check` every 50 ms, sleeping the thread.
///
/// # Errors
/// [`NotYet`] when `check` never gave `Some` within `within`.
pub fn eventually_blocking<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T, NotYet> {
    let deadline = Instant::now() + within;
    loop {
        let last = Instant::now() >= deadline;
        if let Some(v) = check() {
            return Ok(v);
        }
        if last {
            return Err(NotYet {
                what: what.to_owned(),
                within,
            });
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_the_value_once_the_condition_holds() {
        let mut n = 0;
        let got = eventually("n reaches 3", Duration::from_secs(5), async || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .await;
        assert_eq!(got, Ok(3));
    }

    #[tokio::test]
    async fn says_what_did_not_happen() {
        let started = Instant::now();
        let err = eventually("the impossible", Duration::from_millis(200), async || None::<()>)
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(err.to_string(), "the impossible did not happen within 200ms");
    }

    #[test]
    fn the_blocking_twin_says_the_same() {
        let mut n = 0;
        let got = eventually_blocking("n reaches 2", Duration::from_secs(5), || {
            n += 1;
            (n >= 2).then_some(n)
        });
        assert_eq!(got, Ok(2));
        let err = eventually_blocking("never", Duration::from_millis(100), || None::<()>).unwrap_err();
        assert_eq!(err.to_string(), "never did not happen within 100ms");
    }
}
