//! The two observers every latency is measured with, and the pure arithmetic on what they saw.
//!
//! - [`EtcdRecorder`] watches key prefixes and stamps each watch message with the wall
//!   clock the moment it arrives: "the record became visible to an etcd watcher".
//! - [`DockerRecorder`] follows Docker's event stream for the containers of this run and
//!   keeps each event's `timeNano` (Docker's own wall-clock time of the event) and the
//!   time it reached the harness.
//!
//! Both clocks are this host's `CLOCK_REALTIME`, so a difference between a Docker event
//! time and a watch arrival is a latency.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bollard::Docker;
use bollard::query_parameters::EventsOptions;
use etcd_client::{EventType, WatchOptions};
use futures::StreamExt;
use tokio::sync::mpsc;

/// Nanoseconds since the epoch of a wall-clock time.
#[must_use]
pub fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Milliseconds from `from_ns` to `to_ns`.
#[must_use]
pub fn ms_between(from_ns: i64, to_ns: i64) -> f64 {
    (to_ns - from_ns) as f64 / 1e6
}

/// One key change seen by the watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    /// When the watch message reached the harness (ns since the epoch).
    pub at_ns: i64,
    /// The key.
    pub key: String,
    /// Put (`true`) or delete.
    pub put: bool,
    /// The revision of the change.
    pub revision: i64,
}

/// Watches prefixes of one etcd and records every change with its arrival time.
#[derive(Debug)]
pub struct EtcdRecorder {
    events: Arc<Mutex<Vec<KeyEvent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EtcdRecorder {
    /// Starts one watch per prefix and returns once every watch is created.
    ///
    /// # Errors
    /// When etcd cannot be reached or refuses a watch.
    pub async fn start(endpoint: &str, prefixes: &[&str]) -> anyhow::Result<EtcdRecorder> {
        let events: Arc<Mutex<Vec<KeyEvent>>> = Arc::default();
        let mut tasks = Vec::new();
        for prefix in prefixes {
            let mut client = etcd_client::Client::connect([endpoint], None)
                .await
                .with_context(|| format!("connect to etcd at {endpoint}"))?;
            let mut stream = client
                .watch(*prefix, Some(WatchOptions::new().with_prefix()))
                .await
                .with_context(|| format!("watch {prefix}"))?;
            // The first message says the watch exists.
            let first = stream.message().await.context("watch created")?;
            anyhow::ensure!(first.is_some_and(|m| m.created()), "watch of {prefix} not created");
            let sink = events.clone();
            tasks.push(tokio::spawn(async move {
                let _client = client;
                while let Ok(Some(msg)) = stream.message().await {
                    let at_ns = nanos(SystemTime::now());
                    let batch: Vec<KeyEvent> = msg
                        .events()
                        .iter()
                        .filter_map(|e| {
                            let kv = e.kv()?;
                            Some(KeyEvent {
                                at_ns,
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                put: e.event_type() == EventType::Put,
                                revision: kv.mod_revision(),
                            })
                        })
                        .collect();
                    if let Ok(mut all) = sink.lock() {
                        all.extend(batch);
                    }
                }
            }));
        }
        Ok(EtcdRecorder { events, tasks })
    }

    /// Everything seen so far, in arrival order.
    #[must_use]
    pub fn events(&self) -> Vec<KeyEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Drop for EtcdRecorder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// When each record of a directory-style (`fields`) layout was complete.
///
/// A record `<dir>/<instance>/` is *visible* from the first moment all of `fields` are
/// present under it, and *gone* from the first moment after that when one of them is
/// deleted. An instance can be visible several times (the shell loop's keys lapse and
/// come back): each visibility is one `(visible_at, gone_at)` interval.
#[must_use]
pub fn record_intervals(events: &[KeyEvent], dir: &str, fields: &[&str]) -> BTreeMap<String, Vec<Interval>> {
    let dir = format!("{}/", dir.trim_end_matches('/'));
    let mut present: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut out: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    for e in events {
        let Some(rest) = e.key.strip_prefix(&dir) else { continue };
        let Some((instance, field)) = rest.split_once('/') else {
            continue;
        };
        if !fields.contains(&field) {
            continue;
        }
        let keys = present.entry(instance.to_owned()).or_default();
        let was_complete = keys.len() == fields.len();
        if e.put {
            keys.insert(field.to_owned());
        } else {
            keys.remove(field);
        }
        let complete = keys.len() == fields.len();
        let intervals = out.entry(instance.to_owned()).or_default();
        if complete && !was_complete {
            intervals.push(Interval {
                visible_ns: e.at_ns,
                gone_ns: None,
            });
        } else if was_complete
            && !complete
            && let Some(last) = intervals.last_mut()
        {
            last.gone_ns = Some(e.at_ns);
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

/// One stretch of time a record was complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    /// Arrival of the watch message that completed it.
    pub visible_ns: i64,
    /// Arrival of the watch message that broke it, if one came.
    pub gone_ns: Option<i64>,
}

/// The first interval that became visible at or after `after_ns`.
#[must_use]
pub fn first_visible_after(intervals: &[Interval], after_ns: i64) -> Option<Interval> {
    intervals.iter().copied().find(|i| i.visible_ns >= after_ns)
}

/// One Docker event of a container of this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerEvent {
    /// Docker's time of the event (`timeNano`).
    pub time_ns: i64,
    /// When it reached the harness.
    pub at_ns: i64,
    /// `start`, `kill`, `die`, `stop`, ...
    pub action: String,
    /// Container name.
    pub name: String,
}

/// Follows Docker's events for containers labelled `label` (`key=value`).
#[derive(Debug)]
pub struct DockerRecorder {
    events: Arc<Mutex<Vec<DockerEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DockerRecorder {
    /// Starts following; every `start` and `kill` event is also sent on `on_start` as
    /// `(action, container name)`.
    ///
    /// The stream begins with events from one second before the call, so nothing that
    /// happens after this returns can be missed.
    pub fn start(
        docker: &Docker,
        label: &str,
        on_start: Option<mpsc::UnboundedSender<(String, String)>>,
    ) -> DockerRecorder {
        let events: Arc<Mutex<Vec<DockerEvent>>> = Arc::default();
        let mut filters = HashMap::new();
        filters.insert("type".to_owned(), vec!["container".to_owned()]);
        filters.insert("label".to_owned(), vec![label.to_owned()]);
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(1))
            .unwrap_or_default();
        let opts = EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        };
        let mut stream = docker.events(Some(opts));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let at_ns = nanos(SystemTime::now());
                let action = msg.action.unwrap_or_default();
                let name = msg
                    .actor
                    .and_then(|a| a.attributes)
                    .and_then(|a| a.get("name").cloned())
                    .unwrap_or_default();
                if (action == "start" || action == "kill")
                    && let Some(tx) = &on_start
                {
                    let _ = tx.send((action.clone(), name.clone()));
                }
                let e = DockerEvent {
                    time_ns: msg.time_nano.unwrap_or_default(),
                    at_ns,
                    action,
                    name,
                };
                if let Ok(mut all) = sink.lock() {
                    all.push(e);
                }
            }
        });
        DockerRecorder { events, task }
    }

    /// Everything seen so far.
    #[must_use]
    pub fn events(&self) -> Vec<DockerEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Drop for DockerRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first event `action` of each container at or after `after_ns` (Docker time).
#[must_use]
pub fn first_event(events: &[DockerEvent], action: &str, after_ns: i64) -> BTreeMap<String, DockerEvent> {
    let mut out: BTreeMap<String, DockerEvent> = BTreeMap::new();
    for e in events.iter().filter(|e| e.action == action && e.time_ns >= after_ns) {
        let keep = out.get(&e.name).is_none_or(|old| e.time_ns < old.time_ns);
        if keep {
            out.insert(e.name.clone(), e.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: i64, key: &str, put: bool) -> KeyEvent {
        KeyEvent {
            at_ns: at,
            key: key.to_owned(),
            put,
            revision: at,
        }
    }

    const F: &[&str] = &["a", "b"];

    #[test]
    fn a_record_is_visible_when_its_last_field_arrives_and_gone_at_its_first_delete() {
        let events = vec![
            ev(10, "/s/web/w1/a", true),
            ev(20, "/s/web/w1/b", true),
            ev(25, "/s/web/w1/a", true), // a rewrite changes nothing
            ev(30, "/s/web/w10/a", true),
            ev(30, "/s/web/w10/b", true),
            ev(40, "/s/web/w1/b", false),
            ev(40, "/s/web/w1/a", false),
            ev(50, "/s/web/w1/a", true),
            ev(60, "/s/web/w1/b", true),
            ev(70, "/s/web/w1/other", true), // not a field
            ev(70, "/s/webx/w2/a", true),    // another directory
        ];
        let got = record_intervals(&events, "/s/web", F);
        assert_eq!(
            got["w1"],
            vec![
                Interval {
                    visible_ns: 20,
                    gone_ns: Some(40)
                },
                Interval {
                    visible_ns: 60,
                    gone_ns: None
                }
            ]
        );
        assert_eq!(
            got["w10"],
            vec![Interval {
                visible_ns: 30,
                gone_ns: None
            }]
        );
        assert_eq!(got.len(), 2);
        assert_eq!(first_visible_after(&got["w1"], 21).map(|i| i.visible_ns), Some(60));
        assert_eq!(first_visible_after(&got["w1"], 61), None);
    }

    #[test]
    fn an_incomplete_record_is_never_visible() {
        let events = vec![ev(10, "/s/web/w1/a", true), ev(20, "/s/web/w1/a", false)];
        assert!(record_intervals(&events, "/s/web/", F).is_empty());
    }

    #[test]
    fn first_event_per_container_after_a_time() {
        let d = |t: i64, action: &str, name: &str| DockerEvent {
            time_ns: t,
            at_ns: t + 1,
            action: action.into(),
            name: name.into(),
        };
        let events = vec![
            d(5, "start", "c1"),
            d(15, "start", "c1"),
            d(12, "start", "c2"),
            d(11, "die", "c2"),
            d(20, "start", "c1"),
        ];
        let got = first_event(&events, "start", 10);
        assert_eq!(got["c1"].time_ns, 15);
        assert_eq!(got["c2"].time_ns, 12);
        assert_eq!(got.len(), 2);
        assert_eq!(ms_between(1_000_000, 3_500_000), 2.5);
    }
}
