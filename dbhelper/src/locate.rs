//! Finding the database: flags, then docker-link variables, then an etcd key.
//!
//! [`choose`] decides (pure) where the address comes from:
//! 1. `--host` (`DB_HOST`), with `--port` or 3306;
//! 2. else the docker-link variables `DB_PORT_3306_TCP_ADDR` / `DB_PORT_3306_TCP_PORT`;
//! 3. else `--etcd-key`: the address is read from etcd, waiting for the key to appear.
//!
//! An explicit `--port` always wins. For the etcd key, a JSON value that carries a
//! `port` (the announcer's `json` layout) gives the port when `--port` is absent.
//! Only [`from_etcd`] talks to etcd.

use std::fmt;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use sidekick::bounded::{MAX_VALUE, Oversized};
use sidekick::etcd::EtcdArgs;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The MySQL port when nothing says otherwise.
pub const DEFAULT_PORT: u16 = 3306;

/// Where the address was found, for log lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--host` / `DB_HOST`.
    Flags,
    /// `DB_PORT_3306_TCP_ADDR` (docker link).
    LinkEnv,
    /// An etcd key.
    Etcd {
        /// The key read.
        key: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flags => f.write_str("--host"),
            Source::LinkEnv => f.write_str("docker link DB_PORT_3306_TCP_ADDR"),
            Source::Etcd { key } => write!(f, "etcd key {key}"),
        }
    }
}

/// A database address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Where it came from.
    pub source: Source,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How to find the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The address is known.
    Fixed(Address),
    /// Read it from this etcd key; `port` is the explicit `--port`, if any.
    Etcd {
        /// The key.
        key: String,
        /// `--port`.
        port: Option<u16>,
    },
}

/// Decides where the address comes from.
///
/// # Errors
/// [`Error::Options`] when nothing names a database, or the link port is not a port.
pub fn choose(
    host: Option<&str>,
    port: Option<u16>,
    link_addr: Option<&str>,
    link_port: Option<&str>,
    db_etcd_key: Option<&str>,
) -> Result<Lookup, Error> {
    if let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) {
        return Ok(Lookup::Fixed(Address {
            host: host.to_owned(),
            port: port.unwrap_or(DEFAULT_PORT),
            source: Source::Flags,
        }));
    }
    if let Some(addr) = link_addr.map(str::trim).filter(|a| !a.is_empty()) {
        let link_port = match link_port {
            Some(p) => {
                Some(crate::args::parse_port(p).map_err(|e| Error::Options(format!("DB_PORT_3306_TCP_PORT: {e}")))?)
            }
            None => None,
        };
        return Ok(Lookup::Fixed(Address {
            host: addr.to_owned(),
            port: port.or(link_port).unwrap_or(DEFAULT_PORT),
            source: Source::LinkEnv,
        }));
    }
    if let Some(key) = db_etcd_key {
        return Ok(Lookup::Etcd {
            key: key.to_owned(),
            port,
        });
    }
    Err(Error::Options(
        "no database to find: give --host (DB_HOST), the docker-link variables DB_PORT_3306_TCP_ADDR/DB_PORT_3306_TCP_PORT, or --etcd-key (DB_ETCD_KEY)".into(),
    ))
}

/// Decodes an etcd value into host and optional port: the `value` layout
/// (`{"value": "10.0.0.5"}`), a bare address, or a JSON record with `private_ipv4_addr`
/// and `port`.
///
/// # Errors
/// A message naming the value when it holds no IPv4 address.
pub fn decode(value: &[u8]) -> Result<(String, Option<u16>), String> {
    let ip = sidekick::schema::decode_value(value)?;
    let port = serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|doc| match doc.get("port")? {
            serde_json::Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .filter(|&p| p != 0);
    Ok((ip.to_string(), port))
}

/// Reads the address from `key`, waiting (watch) until the key exists and holds an
/// address, or `deadline` passes.
///
/// # Errors
/// [`Error::Etcd`] for unusable etcd options, [`Error::EtcdKeyTimeout`] when the key gives
/// no address in time, [`Error::Interrupted`] on a signal.
pub async fn from_etcd(
    etcd: &EtcdArgs,
    key: &str,
    port: Option<u16>,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Address, Error> {
    let started = Instant::now();
    let config = etcd.resolve().await?;
    let endpoints = config.endpoints_display();
    let mut last: Option<String> = None;
    let mut delays = backon::BackoffBuilder::build(sidekick::retry::reconnect());
    let mut announced = false;
    let mut warned: Option<String> = None;

    let timed_out = |last: &Option<String>| Error::EtcdKeyTimeout {
        key: key.to_owned(),
        endpoints: endpoints.clone(),
        waited: crate::wait::millis(started.elapsed()),
        last: last.as_ref().map(|l| format!("; last error: {l}")).unwrap_or_default(),
    };

    loop {
        // Level-triggered: read the key; only if it is not usable, watch for the next change.
        let attempt = async {
            let mut client = match config.connect().await {
                Ok(client) => client,
                // A refused login does not heal by waiting: the password or user is wrong.
                // Say so now rather than at the deadline, minutes later.
                Err(e @ sidekick::Error::Auth { .. }) => return Err(Attempt::Refused(e)),
                Err(e) => return Err(Attempt::Retry(e.to_string())),
            };
            // Boxed: the etcd futures are large, and this one is awaited inside a select.
            let (revision, value) = match Box::pin(client.get(key, None)).await {
                Ok(resp) => (
                    resp.header().map_or(0, |h| h.revision()),
                    resp.kvs().first().map(|kv| Value::of(kv.value())),
                ),
                // A value over the client's 4 MiB: read the key alone for the revision to
                // watch from; the value is never read.
                Err(e) if sidekick::bounded::too_large(&e) => {
                    let resp = Box::pin(client.get(key, Some(GetOptions::new().with_keys_only())))
                        .await
                        .map_err(|e| Attempt::Retry(format!("get {key}: {e}")))?;
                    (resp.header().map_or(0, |h| h.revision()), Some(Value::Oversized(None)))
                }
                Err(e) => return Err(Attempt::Retry(format!("get {key}: {e}"))),
            };
            let problem = match value {
                Some(Value::Usable(v)) => match decode(&v) {
                    Ok(found) => return Ok(Ok(found)),
                    Err(e) => Some(e),
                },
                Some(Value::Oversized(len)) => Some(
                    Oversized {
                        key: key.as_bytes().to_vec(),
                        len,
                    }
                    .to_string(),
                ),
                None => None,
            };
            Ok::<_, Attempt>(Err((client, revision, problem)))
        };
        let outcome = tokio::select! {
            r = attempt => r,
            () = tokio::time::sleep_until(deadline) => return Err(timed_out(&last)),
            () = cancel.cancelled() => return Err(Error::Interrupted { during: "while waiting for the etcd key; nothing was changed".into() }),
        };
        match outcome {
            Ok(Ok((host, record_port))) => {
                let port = port.or(record_port).unwrap_or(DEFAULT_PORT);
                return Ok(Address {
                    host,
                    port,
                    source: Source::Etcd { key: key.to_owned() },
                });
            }
            Ok(Err((mut client, revision, problem))) => {
                // Each problem once: a hostile value is read again after every change.
                if let Some(p) = problem.filter(|p| warned.as_ref() != Some(p)) {
                    tracing::warn!(key, "etcd key holds no usable address: {p}; waiting for a new value");
                    warned = Some(p);
                }
                if !announced {
                    tracing::info!(key, endpoints = %endpoints, "waiting for etcd key to name the database");
                    announced = true;
                }
                let watch = async {
                    let opts = WatchOptions::new().with_start_revision(revision + 1);
                    let mut stream = client
                        .watch(key, Some(opts))
                        .await
                        .map_err(|e| format!("watch {key}: {e}"))?;
                    // The first message confirms the watch; wait for a put after it.
                    loop {
                        match stream.message().await {
                            Ok(Some(resp)) if resp.events().iter().any(|e| e.event_type() == EventType::Put) => {
                                return Ok(());
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => return Err("the watch ended".to_owned()),
                            Err(e) => return Err(format!("watch {key}: {e}")),
                        }
                    }
                };
                // Re-read now and then even without an event (a missed event must not hang us).
                let resync = Instant::now() + Duration::from_secs(10);
                tokio::select! {
                    r = watch => if let Err(e) = r { last = Some(e); backoff(&mut delays, deadline, cancel).await },
                    () = tokio::time::sleep_until(resync.min(deadline)) => {}
                    () = cancel.cancelled() => return Err(Error::Interrupted { during: "while waiting for the etcd key; nothing was changed".into() }),
                }
            }
            Err(Attempt::Refused(e)) => return Err(e.into()),
            Err(Attempt::Retry(e)) => {
                tracing::debug!(key, "etcd not usable yet: {e}");
                last = Some(e);
                backoff(&mut delays, deadline, cancel).await;
            }
        }
        if Instant::now() >= deadline {
            return Err(timed_out(&last));
        }
    }
}

/// The key's value as read: small enough to decode, or left unread for its size.
enum Value {
    /// At most [`MAX_VALUE`] bytes.
    Usable(Vec<u8>),
    /// Longer (its length when it arrived; `None` when over the client's 4 MiB).
    Oversized(Option<usize>),
}

impl Value {
    fn of(v: &[u8]) -> Value {
        if v.len() > MAX_VALUE {
            Value::Oversized(Some(v.len()))
        } else {
            Value::Usable(v.to_vec())
        }
    }
}

/// Why one read of the key did not give an address.
#[derive(Debug)]
enum Attempt {
    /// etcd refused the login: waiting cannot help.
    Refused(sidekick::Error),
    /// etcd is not reachable or not answering yet: retry until the deadline.
    Retry(String),
}

async fn backoff(delays: &mut impl Iterator<Item = Duration>, deadline: Instant, cancel: &CancellationToken) {
    let delay = delays.next().unwrap_or(Duration::from_secs(1));
    tokio::select! {
        () = tokio::time::sleep_until((Instant::now() + delay).min(deadline)) => {}
        () = cancel.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fixed(host: &str, port: u16, source: Source) -> Lookup {
        Lookup::Fixed(Address {
            host: host.into(),
            port,
            source,
        })
    }

    #[test]
    fn choose_table() {
        type Case<'a> = (
            (
                Option<&'a str>,
                Option<u16>,
                Option<&'a str>,
                Option<&'a str>,
                Option<&'a str>,
            ),
            Option<Lookup>,
        );
        const KEY: &str = "/services/db/db_private_ip";
        let key = Some(KEY);
        let cases: &[Case<'_>] = &[
            (
                (Some("db"), None, None, None, None),
                Some(fixed("db", 3306, Source::Flags)),
            ),
            (
                (Some("db"), Some(3307), Some("10.0.0.1"), Some("3308"), key),
                Some(fixed("db", 3307, Source::Flags)),
            ),
            (
                (None, None, Some("10.0.0.1"), Some("3308"), key),
                Some(fixed("10.0.0.1", 3308, Source::LinkEnv)),
            ),
            (
                (None, Some(3307), Some("10.0.0.1"), Some("3308"), None),
                Some(fixed("10.0.0.1", 3307, Source::LinkEnv)),
            ),
            (
                (None, None, Some("10.0.0.1"), None, None),
                Some(fixed("10.0.0.1", 3306, Source::LinkEnv)),
            ),
            (
                (Some("  "), None, None, None, key),
                Some(Lookup::Etcd {
                    key: KEY.into(),
                    port: None,
                }),
            ),
            (
                (None, Some(3307), None, None, key),
                Some(Lookup::Etcd {
                    key: KEY.into(),
                    port: Some(3307),
                }),
            ),
            ((None, None, Some("10.0.0.1"), Some("x"), None), None),
            ((None, None, None, None, None), None),
        ];
        for ((host, port, addr, lport, key), want) in cases {
            assert_eq!(
                choose(*host, *port, *addr, *lport, *key).ok(),
                *want,
                "{host:?} {port:?} {addr:?} {lport:?} {key:?}"
            );
        }
        let err = choose(None, None, None, None, None).unwrap_err().to_string();
        assert!(err.contains("--host") && err.contains("--etcd-key"), "{err}");
    }

    #[test]
    fn decode_table() {
        type Want<'a> = Option<(&'a str, Option<u16>)>;
        let cases: &[(&str, Want<'_>)] = &[
            (r#"{"value": "10.1.2.3"}"#, Some(("10.1.2.3", None))),
            ("10.1.2.3", Some(("10.1.2.3", None))),
            (
                r#"{"private_ipv4_addr":"10.1.2.4","port":3307}"#,
                Some(("10.1.2.4", Some(3307))),
            ),
            (
                r#"{"private_ipv4_addr":"10.1.2.4","port":"3308"}"#,
                Some(("10.1.2.4", Some(3308))),
            ),
            (r#"{"private_ipv4_addr":"10.1.2.4","port":0}"#, Some(("10.1.2.4", None))),
            (r#"{"value": "db.example"}"#, None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = decode(input.as_bytes()).ok();
            let want = want.map(|(h, p)| (h.to_owned(), p));
            assert_eq!(got, want, "input {input:?}");
        }
    }
}
