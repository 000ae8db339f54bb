//! Who owns a record (pure: no I/O).
//!
//! One owner per record: an announcer writes a record only when its keys are absent,
//! already on its own lease, or its own earlier record (same host, same unit or container:
//! the record of a predecessor that crashed, whose lease still lives for up to a TTL).
//! Anything else is a [`Conflict`]: the record is left alone, the conflict is logged once
//! and reported, and the keys are watched so the announcer takes them over as soon as the
//! other owner's record goes away.
//!
//! Deletion follows the same rule ([`stale`]): only records on our own lease, or records
//! on no lease that name this host (nobody keeps them alive). A record of this host on
//! another live lease is another unit's, or a crashed predecessor's: the first is not
//! ours to delete, the second goes with its lease (or is taken over when its container
//! is announced again), so neither is deleted.

use std::fmt;
use std::net::Ipv4Addr;

use sidekick::schema::{self, Record, field};

/// One key as read back from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Vec<u8>,
    /// Its revision.
    pub mod_revision: i64,
    /// Its lease (0: none).
    pub lease: i64,
}

/// What a stored record says about who wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The `host` field (`fields`, `json`).
    pub host: Option<String>,
    /// The `unit` field (`fields`, `json`).
    pub unit: Option<String>,
    /// The container name (`json`).
    pub container: Option<String>,
    /// The address of a `value` record (it has no host).
    pub value: Option<Ipv4Addr>,
}

impl Identity {
    /// Reads the identity from a record's keys (`fields` keys or the one `value`/`json` key).
    #[must_use]
    pub fn read(keys: &[StoredKey]) -> Identity {
        let mut id = Identity::default();
        for sk in keys {
            // A `value` or `json` record is a JSON object; a `fields` value never is.
            if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&sk.value)
                && doc.is_object()
            {
                let s = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                id.host = s(field::HOST);
                id.unit = s(field::UNIT);
                id.container = s("container_name");
                if doc.get("value").is_some() {
                    id.value = schema::decode_value(&sk.value).ok();
                }
            } else if sk.key.ends_with(&format!("/{}", field::HOST)) {
                id.host = Some(String::from_utf8_lossy(&sk.value).into_owned());
            } else if sk.key.ends_with(&format!("/{}", field::UNIT)) {
                id.unit = Some(String::from_utf8_lossy(&sk.value).into_owned());
            }
        }
        id
    }

    /// Whether this is what `record` would be written by: the same host and the same unit
    /// or container; a `value` record (no host) by its address.
    #[must_use]
    pub fn is(&self, record: &Record) -> bool {
        match (&self.host, self.value) {
            (Some(host), _) => {
                *host == record.host
                    && (self.unit.as_deref() == Some(record.unit.as_str())
                        || self.container.as_deref() == Some(record.container_name.as_str()))
            }
            (None, Some(ip)) => ip == record.private_ipv4,
            (None, None) => false,
        }
    }
}

/// A record held by someone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The record's key (`fields`: its directory, with the trailing `/`).
    pub key: String,
    /// Who holds it, as the record says.
    pub other: Identity,
    /// The other owner's lease (0: none).
    pub lease: i64,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match (&self.other.host, &self.other.unit, self.other.value) {
            (Some(h), Some(u), _) => format!("host {h:?} (unit {u:?})"),
            (Some(h), None, _) => format!("host {h:?}"),
            (None, _, Some(ip)) => format!("the host with address {ip}"),
            (None, _, None) => "an unknown writer".to_owned(),
        };
        let lease = if self.lease == 0 {
            "on no lease".to_owned()
        } else {
            format!("on lease {:x}", self.lease)
        };
        write!(
            f,
            "{} is held by {who} {lease}: not overwriting it; give one of them another instance \
             (--instance, announce.instance or SERVICE_ID), or stop the other; this announcer takes \
             the record over when the other one's goes away",
            self.key
        )
    }
}

/// Who holds a record's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// No key exists.
    Free,
    /// Every key is on our lease.
    Ours,
    /// Our own earlier record (same host and unit or container) on another lease or none.
    OwnEarlier,
    /// Someone else's.
    Other(Conflict),
}

/// Who holds the record `record` would be written as, from its `keys` (pure). `lease`:
/// ours (`None`: `explain`, which holds none).
#[must_use]
pub fn holder(keys: &[StoredKey], key: &str, record: &Record, lease: Option<i64>) -> Holder {
    if keys.is_empty() {
        return Holder::Free;
    }
    if lease.is_some_and(|l| keys.iter().all(|k| k.lease == l)) {
        return Holder::Ours;
    }
    let other = Identity::read(keys);
    if other.is(record) {
        return Holder::OwnEarlier;
    }
    Holder::Other(Conflict {
        key: key.to_owned(),
        other,
        lease: keys
            .iter()
            .map(|k| k.lease)
            .find(|l| Some(*l) != lease)
            .unwrap_or_default(),
    })
}

/// Whose stale records an announcer may delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Me {
    /// `--hostname`.
    pub hostname: String,
    /// This host's private address (`value` records carry only that).
    pub private_ipv4: Ipv4Addr,
}

/// Whether a record that no running container of ours backs may be deleted (pure): it is
/// on our lease, or it names this host and is on no lease (nobody keeps it alive). A
/// record of this host on another live lease may be another unit's (two units for one
/// instance on one host), or our crashed predecessor's for a container that is starting
/// again: it is left to its lease.
#[must_use]
pub fn stale(keys: &[StoredKey], me: &Me, lease: i64) -> bool {
    if keys.is_empty() {
        return false;
    }
    if keys.iter().all(|k| k.lease == lease) {
        return true;
    }
    let id = Identity::read(keys);
    let this_host = match (&id.host, id.value) {
        (Some(h), _) => *h == me.hostname,
        (None, Some(ip)) => ip == me.private_ipv4,
        (None, None) => false,
    };
    if !this_host {
        return false;
    }
    keys.iter().all(|k| k.lease == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            service: "web".into(),
            instance: "w1".into(),
            unit: "monweb@1.service".into(),
            host: "core01".into(),
            public_ipv4: Some(Ipv4Addr::LOCALHOST),
            private_ipv4: Ipv4Addr::new(10, 0, 0, 1),
            port: 1,
            container_id: "id".into(),
            container_name: "web-1".into(),
        }
    }

    fn fields(host: &str, unit: &str, lease: i64) -> Vec<StoredKey> {
        [("host", host), ("unit", unit), ("port", "1")]
            .iter()
            .map(|(f, v)| StoredKey {
                key: format!("/services/web/w1/{f}"),
                value: v.as_bytes().to_vec(),
                mod_revision: 5,
                lease,
            })
            .collect()
    }

    fn whole(value: &str, lease: i64) -> Vec<StoredKey> {
        vec![StoredKey {
            key: "/services/web/w1".into(),
            value: value.as_bytes().to_vec(),
            mod_revision: 5,
            lease,
        }]
    }

    #[test]
    fn holder_table() {
        let mine = 7;
        let key = "/services/web/w1/";
        let other = |host: &str, unit: &str, lease| {
            Holder::Other(Conflict {
                key: key.into(),
                other: Identity {
                    host: Some(host.into()),
                    unit: Some(unit.into()),
                    ..Identity::default()
                },
                lease,
            })
        };
        let json = r#"{"host":"core01","unit":"other","container_name":"web-1"}"#;
        let cases: Vec<(Vec<StoredKey>, Holder)> = vec![
            (vec![], Holder::Free),
            (fields("core01", "monweb@1.service", mine), Holder::Ours),
            // A crashed predecessor: same host and unit, another (still live) lease.
            (fields("core01", "monweb@1.service", 3), Holder::OwnEarlier),
            (fields("core01", "monweb@1.service", 0), Holder::OwnEarlier),
            // Same container name (json), another unit field: still ours.
            (whole(json, 3), Holder::OwnEarlier),
            // Another host with the same instance.
            (
                fields("core02", "monweb@1.service", 3),
                other("core02", "monweb@1.service", 3),
            ),
            // Another unit on this host with the same instance.
            (
                fields("core01", "monweb@2.service", 3),
                other("core01", "monweb@2.service", 3),
            ),
            // The seed's value layout: known by its address.
            (whole(r#"{"value": "10.0.0.1"}"#, 3), Holder::OwnEarlier),
        ];
        for (keys, want) in cases {
            assert_eq!(holder(&keys, key, &record(), Some(mine)), want, "{keys:?}");
        }
        let Holder::Other(c) = holder(
            &whole(r#"{"value": "10.0.0.2"}"#, 0),
            "/services/web/w1",
            &record(),
            Some(mine),
        ) else {
            panic!("a value record of another address is another's")
        };
        let msg = c.to_string();
        assert!(msg.contains("10.0.0.2") && msg.contains("on no lease"), "{msg}");
        let msg = other_msg();
        for fragment in ["/services/web/w1/", "host \"core02\"", "lease 3", "another instance"] {
            assert!(msg.contains(fragment), "{fragment}: {msg}");
        }
    }

    fn other_msg() -> String {
        match holder(&fields("core02", "u", 3), "/services/web/w1/", &record(), Some(7)) {
            Holder::Other(c) => c.to_string(),
            h => panic!("{h:?}"),
        }
    }

    #[test]
    fn stale_table() {
        let me = Me {
            hostname: "core01".into(),
            private_ipv4: Ipv4Addr::new(10, 0, 0, 1),
        };
        let mine = 7;
        // (keys, deletable?)
        let cases: Vec<(Vec<StoredKey>, bool)> = vec![
            (fields("core01", "x", mine), true),
            (fields("core01", "x", 0), true),
            (fields("core02", "x", 0), false),
            (fields("core02", "x", mine), true),
            // Another live lease on this host: another unit's (two units for one instance
            // on one host), or a crashed predecessor's: left to its lease.
            (fields("core01", "monweb@1.service", 3), false),
            (whole(r#"{"value": "10.0.0.1"}"#, 0), true),
            (whole(r#"{"value": "10.0.0.9"}"#, 0), false),
            (whole(r#"{"value": "10.0.0.1"}"#, 3), false),
            (whole(r#"{"host":"core01","unit":"u"}"#, 0), true),
            (vec![], false),
        ];
        for (keys, want) in cases {
            assert_eq!(stale(&keys, &me, mine), want, "{keys:?}");
        }
    }
}
