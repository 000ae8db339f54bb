//! Leadership between several lb-sync instances, with etcd's election API.
//!
//! Each instance campaigns on `--election-key` with a lease of `--election-ttl`. The
//! leader may apply plans only while its lease is known to be alive: after every
//! keep-alive answer, the lease is alive until `sent + ttl` (etcd restarts the TTL when it
//! receives the keep-alive, which is after it was sent). [`Leadership::may_apply`] is
//! true only while that deadline is more than a margin away, so a leader that stops
//! hearing from etcd stops applying before its lease can expire and before another
//! instance can be elected.
//!
//! A leader that cannot confirm its lease stops applying but does not give the lease up:
//! only etcd saying the lease has expired (a keep-alive answered with TTL 0) ends the
//! term. etcd renews every lease when one of its members becomes leader, so a lease
//! usually outlives an etcd leader election or restart that is longer than our own TTL;
//! giving up at our own deadline would hand leadership to whichever instance campaigned
//! next after every hiccup of etcd (seen: a healed partition's election made the standby
//! resign and the cut-off old leader lead again). Keeping the lease keeps the same
//! instance leading, and is as safe: our key lives exactly as long as our lease.
//!
//! The only key lb-sync ever writes in etcd is its election key (under its lease).

use std::time::{Duration, Instant};

use etcd_client::{Client, ResignOptions};
use sidekick::notify::Heartbeat;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A view of this instance's leadership, cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// `Some(deadline)`: leader, with the lease known alive until the deadline.
    rx: watch::Receiver<Option<Instant>>,
    /// How far from the deadline applying stops.
    margin: Duration,
}

impl Leadership {
    /// Leadership without election: always allowed.
    #[must_use]
    pub fn always() -> Leadership {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (tx, rx) = watch::channel(Some(far));
        // Keep the sender alive forever so `changed` never fires.
        std::mem::forget(tx);
        Leadership {
            rx,
            margin: Duration::ZERO,
        }
    }

    /// Leadership driven by hand (tests): the sender plays the election task.
    #[cfg(test)]
    pub(crate) fn manual(margin: Duration) -> (watch::Sender<Option<Instant>>, Leadership) {
        let (tx, rx) = watch::channel(None);
        (tx, Leadership { rx, margin })
    }

    /// Whether a change may be applied now.
    #[must_use]
    pub fn may_apply(&self) -> bool {
        matches!(*self.rx.borrow(), Some(deadline) if Instant::now() + self.margin < deadline)
    }

    /// Waits until leadership changes (won, lost, or renewed).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Starts campaigning; returns the view the reconcile loop checks.
///
/// `ttl` is the lease's time to live (at least 2 s); keep-alives go every `ttl / 3`; the
/// leader stops applying `ttl / 3` before its lease could expire.
/// The returned task ends after `cancel`, once leadership is resigned and the lease revoked.
pub fn start(
    client: Client,
    key: String,
    ttl: Duration,
    cancel: CancellationToken,
    beat: Heartbeat,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let margin = ttl / 3;
    let task = tokio::spawn(campaign_forever(client, key, ttl, tx, cancel, beat));
    (Leadership { rx, margin }, task)
}

async fn campaign_forever(
    client: Client,
    key: String,
    ttl: Duration,
    tx: watch::Sender<Option<Instant>>,
    cancel: CancellationToken,
    beat: Heartbeat,
) {
    let me = format!(
        "{}-{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
        std::process::id()
    );
    let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(10);
    let mut delays = {
        use backon::BackoffBuilder;
        sidekick::retry::backoff(Duration::from_millis(200), Duration::from_secs(5)).build()
    };
    loop {
        let ended = session(&client, &key, &me, ttl_secs, &tx, &cancel, &beat).await;
        tx.send_replace(None);
        if ended == Ended::Cancelled {
            return;
        }
        let d = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = beat.sleep(d) => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Cancelled,
    Lost,
}

/// One lease: grant, keep alive, campaign, lead until the lease cannot be confirmed.
async fn session(
    client: &Client,
    key: &str,
    me: &str,
    ttl_secs: i64,
    tx: &watch::Sender<Option<Instant>>,
    cancel: &CancellationToken,
    beat: &Heartbeat,
) -> Ended {
    let mut lease_client = client.lease_client();
    let mut election = client.election_client();
    let granted_at = Instant::now();
    let lease = match lease_client.grant(ttl_secs, None).await {
        Ok(l) => l.id(),
        Err(e) => {
            tracing::warn!("election: cannot get a lease: {e}");
            return Ended::Lost;
        }
    };
    let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(10));
    let mut alive_until = granted_at + ttl;
    let (mut keeper, mut stream) = match lease_client.keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("election: cannot keep the lease alive: {e}");
            return Ended::Lost;
        }
    };
    let mut campaign_client = election.clone();
    let name = key.to_owned();
    let value = me.to_owned();
    let campaign = async move { campaign_client.campaign(name, value, lease).await };
    tokio::pin!(campaign);
    let mut leader_key = None;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(key, lease, "election: campaigning");
    let mut alive = beat.interval();
    // When keep-alives started failing (None: answering), and whether the leader's
    // deadline has passed meanwhile (said once).
    let mut failing_since: Option<Instant> = None;
    let mut lapsed = false;
    let ended = loop {
        beat.beat();
        tokio::select! {
            _ = alive.tick() => {}
            res = &mut campaign, if leader_key.is_none() => match res {
                Ok(mut resp) => {
                    leader_key = resp.take_leader();
                    if leader_key.is_none() {
                        tracing::warn!("election: campaign answered without a leader key");
                        break Ended::Lost;
                    }
                    tracing::info!(key, "election: this instance is the leader");
                    tx.send_replace(Some(alive_until));
                }
                Err(e) => {
                    tracing::warn!("election: campaign failed: {e}");
                    break Ended::Lost;
                }
            },
            _ = tick.tick() => {
                let sent = Instant::now();
                let answer = tokio::time::timeout(ttl / 3, async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
                match answer {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                        if let Some(since) = failing_since.take() {
                            tracing::info!(lease, after = ?since.elapsed(), "election: keep-alive answered again; the lease is still ours");
                        }
                        if std::mem::take(&mut lapsed) {
                            tracing::info!(key, "election: lease confirmed again; applying resumes");
                        }
                        alive_until = sent + Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
                        if leader_key.is_some() {
                            tx.send_replace(Some(alive_until));
                        }
                    }
                    Ok(Ok(Some(_))) => {
                        tracing::warn!(lease, "election: etcd says the lease has expired");
                        break Ended::Lost;
                    }
                    other => {
                        let why = match other {
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "no answer in time".into(),
                            _ => "stream ended".into(),
                        };
                        // Once per outage at warn; every retry after that at debug.
                        if failing_since.is_none() {
                            failing_since = Some(sent);
                            tracing::warn!(lease, "election: keep-alive failed ({why}); retrying until etcd answers");
                        } else {
                            tracing::debug!(lease, "election: keep-alive failed again ({why})");
                        }
                        if leader_key.is_some() {
                            // Same deadline, sent again: the reconcile loop re-reads
                            // `may_apply`, which the clock alone has turned false, and
                            // its health says standby while etcd is silent.
                            tx.send_replace(Some(alive_until));
                            if Instant::now() >= alive_until && !lapsed {
                                lapsed = true;
                                tracing::warn!(key, "election: lease not confirmed; applying stopped until etcd answers");
                            }
                        }
                        if let Ok(Ok((k, s))) = tokio::time::timeout(ttl / 3, lease_client.keep_alive(lease)).await {
                            keeper = k;
                            stream = s;
                        }
                    }
                }
            }
            () = cancel.cancelled() => break Ended::Cancelled,
        }
    };
    if leader_key.is_some() {
        tx.send_replace(None);
        if ended == Ended::Lost {
            tracing::warn!(key, "election: leadership lost; applying stopped");
        }
    }
    // Step down quickly so another instance need not wait for the lease to expire.
    if let Some(lk) = leader_key {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            election.resign(Some(ResignOptions::new().with_leader(lk))),
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), lease_client.revoke(lease)).await;
    ended
}
