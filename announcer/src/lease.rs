//! Keeps one lease alive on one etcd member at a time, moving to the next member on silence.
//!
//! etcd-client balances a multi-endpoint [`Client`] over all its members, and a member cut
//! off by a firewall that drops packets still looks connected: a keep-alive stream (or a
//! reopened one) can land on it and hear nothing until the lease runs out. So the
//! keep-alive never goes through a balanced client: [`Members`] builds one client per
//! endpoint, and [`keep`] tries them in order (own member first), each stream judged
//! against the keep-alive period: no answer within one period plus [`margin`] since the
//! last answer means the member is silent, and the next member is tried. A stream is
//! trusted only once it answered (etcd-client's `keep_alive` returns after the first
//! answer); opening it is bounded by one period. The task runs apart from the record
//! writes, so a write hanging on a bad member never delays a keep-alive.
//!
//! Keep-alives write nothing to etcd's key space: an idle announcer creates no revisions.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The etcd members, each reachable through its own, unbalanced client.
#[derive(Clone)]
pub(crate) struct Members {
    urls: Vec<String>,
    options: ConnectOptions,
    timeout: Duration,
}

impl std::fmt::Debug for Members {
    // Hand-written: `options` may hold the etcd password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl Members {
    /// `urls` in order of preference (own member first); `timeout` bounds each connection.
    pub(crate) fn new(urls: Vec<String>, options: ConnectOptions, timeout: Duration) -> Members {
        Members { urls, options, timeout }
    }

    /// How many members there are (at least one: an empty list is refused at start).
    pub(crate) fn len(&self) -> usize {
        self.urls.len().max(1)
    }

    /// The URL of member `i`.
    pub(crate) fn url(&self, i: usize) -> &str {
        self.urls.get(i % self.len()).map_or("", String::as_str)
    }

    /// A client talking to member `i` only (one endpoint: etcd-client's balancer has
    /// nothing to choose from).
    pub(crate) async fn client(&self, i: usize) -> Result<Client, crate::Error> {
        let url = self.url(i).to_owned();
        let connect = Client::connect([url.as_str()], Some(self.options.clone()));
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(source)) => Err(crate::Error::Etcd {
                op: format!("connect to {url}"),
                source,
            }),
            Err(_) => Err(crate::Error::EtcdTimeout {
                op: format!("connect to {url}"),
                timeout: self.timeout,
            }),
        }
    }
}

/// The index of the member after `i`, wrapping around.
pub(crate) fn next_member(i: usize, members: usize) -> usize {
    (i + 1) % members.max(1)
}

/// What the keep-alive task tells the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A stream answered again after a failure (the member or the link was away): the
    /// registry compares with etcd in case something changed meanwhile.
    Back,
    /// etcd says the lease does not exist (it expired or was revoked): the task ended.
    Gone,
    /// The first failure of an outage (the stream went silent, broke, or could not be
    /// opened): etcd, as far as this member goes, is unreachable.
    Failing(&'static str),
}

/// How long after the last answer a keep-alive stream may stay quiet: one period (the
/// next keep-alive is sent then) plus a margin for its round trip.
pub(crate) fn silence_deadline(last_answer: Instant, period: Duration) -> Instant {
    last_answer + period + margin(period)
}

/// Round-trip allowance of one keep-alive: a quarter period (250 ms at a 3 s TTL), short
/// so that a silent member leaves time to reach another before the TTL runs out; a false
/// alarm only costs a new stream on the next member, the lease stays valid.
pub(crate) fn margin(period: Duration) -> Duration {
    period / 4
}

/// Why a stream stopped being used.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// No answer in time, or the stream broke: try the next member.
    Failed(&'static str),
    /// The lease is gone.
    Gone,
}

/// Keeps `lease` alive every `period`, starting on member `first`, until etcd says the
/// lease is gone (then sends [`Event::Gone`] and returns) or the task is aborted.
pub(crate) async fn keep(
    members: Members,
    lease: i64,
    period: Duration,
    first: usize,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut at = first % members.len();
    let mut failures = 0usize;
    loop {
        let stop = match open(&members, at, lease, period).await {
            Ok((keeper, stream)) => {
                tracing::debug!(member = members.url(at), "keep-alive stream open");
                if failures > 0 {
                    tracing::info!(member = members.url(at), "keep-alive answered again");
                    failures = 0;
                    let _ = events.send(Event::Back);
                }
                serve(keeper, stream, period).await
            }
            Err(stop) => stop,
        };
        match stop {
            Stop::Gone => {
                let _ = events.send(Event::Gone);
                return;
            }
            Stop::Failed(why) => {
                let next = next_member(at, members.len());
                if failures == 0 {
                    let _ = events.send(Event::Failing(why));
                    tracing::info!(
                        member = members.url(at),
                        next = members.url(next),
                        why,
                        "keep-alive stream failed: moving to the next etcd member"
                    );
                } else {
                    tracing::debug!(member = members.url(at), why, "keep-alive still failing");
                }
                failures += 1;
                at = next;
                // Every member failed in a row (etcd away): pause before the next round
                // rather than spinning on refused connections.
                if failures.is_multiple_of(members.len()) {
                    tokio::time::sleep(period / 4).await;
                }
            }
        }
    }
}

/// Opens a keep-alive stream on member `at`, bounded by one `period`; etcd-client returns
/// only after the first answer, so an open stream is a confirmed one.
async fn open(
    members: &Members,
    at: usize,
    lease: i64,
    period: Duration,
) -> Result<(LeaseKeeper, LeaseKeepAliveStream), Stop> {
    let attempt = async {
        let mut client = members.client(at).await.map_err(|_| Stop::Failed("cannot connect"))?;
        client.lease_keep_alive(lease).await.map_err(|e| match e {
            // etcd-client 0.21 raises this variant when opening only for a first answer of
            // TTL 0, etcd's way of saying the lease does not exist.
            etcd_client::Error::LeaseKeepAliveError(_) => Stop::Gone,
            _ => Stop::Failed("open refused"),
        })
    };
    tokio::time::timeout(period, attempt)
        .await
        .unwrap_or(Err(Stop::Failed("no answer to the opening keep-alive")))
}

/// Sends a keep-alive every `period` and reads the answers until the stream fails.
async fn serve(mut keeper: LeaseKeeper, mut stream: LeaseKeepAliveStream, period: Duration) -> Stop {
    let mut last_answer = Instant::now();
    let mut tick = tokio::time::interval_at(last_answer + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if keeper.keep_alive().await.is_err() {
                    return Stop::Failed("cannot send");
                }
            }
            msg = stream.message() => match msg {
                Ok(Some(r)) if r.ttl() > 0 => last_answer = Instant::now(),
                Ok(Some(_)) => return Stop::Gone,
                Ok(None) => return Stop::Failed("stream closed"),
                Err(_) => return Stop::Failed("stream broke"),
            },
            () = tokio::time::sleep_until(silence_deadline(last_answer, period)) => {
                return Stop::Failed("silent");
            }
        }
    }
}

/// The keep-alive task of one lease; dropping it stops the keep-alives.
#[derive(Debug)]
pub(crate) struct Task(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_judged_against_the_period_not_the_ttl() {
        let t0 = Instant::now();
        // TTL 3 s: period 1 s; a stream quiet for 1.25 s is silent, leaving 1.75 s to
        // reach another member (the old rule, 2/3 of the TTL, left 1 s minus the reopen).
        let period = Duration::from_secs(1);
        assert_eq!(silence_deadline(t0, period), t0 + Duration::from_millis(1250));
        let ttl = period * 3;
        assert!(silence_deadline(t0, period) + period < t0 + ttl);
    }

    #[test]
    fn members_are_tried_in_order_and_wrap_around() {
        assert_eq!(next_member(0, 3), 1);
        assert_eq!(next_member(2, 3), 0);
        assert_eq!(next_member(0, 1), 0);
        assert_eq!(next_member(0, 0), 0);
    }

    #[test]
    fn member_urls_wrap_and_never_panic() {
        let m = Members::new(
            vec!["http://a:2379".into(), "http://b:2379".into()],
            ConnectOptions::new(),
            Duration::from_secs(1),
        );
        assert_eq!(m.url(0), "http://a:2379");
        assert_eq!(m.url(3), "http://b:2379");
        let empty = Members::new(Vec::new(), ConnectOptions::new(), Duration::from_secs(1));
        assert_eq!(empty.len(), 1);
        assert_eq!(empty.url(0), "");
    }
}
