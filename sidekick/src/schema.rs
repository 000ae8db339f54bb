//! The etcd key layout of the seed system, in one place.
//!
//! The announcer writes records with [`Record::entries`]; lb-sync reads them back with
//! [`decode_service`]; dbhelper reads the `value` layout with [`decode_value`]. Because
//! all three use this module, the writer and the readers cannot disagree on a key name.
//!
//! Three layouts live under a prefix (default `/services`):
//!
//! | layout   | keys                                                                        |
//! |----------|-----------------------------------------------------------------------------|
//! | `fields` | `<prefix>/<service>/<instance>/{unit,host,public_ipv4_addr,private_ipv4_addr,port}`, plain strings (the seed's web records) |
//! | `value`  | `<prefix>/<service>/<instance>` = `{"value": "<private ipv4>"}` (the seed's db record) |
//! | `json`   | `<prefix>/<service>/<instance>` = one JSON object with every field, plus container id and name |
//!
//! Guarantees: encoding never fails (names are validated when a [`Record`] is built with
//! [`validate_name`]); decoding never panics and reports each bad record on its own, so
//! one malformed record never hides the good ones.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The default root of every record.
pub const DEFAULT_PREFIX: &str = "/services";

/// Field names of the `fields` layout (also the JSON keys of the `json` layout).
pub mod field {
    pub const UNIT: &str = "unit";
    pub const HOST: &str = "host";
    pub const PUBLIC_IPV4: &str = "public_ipv4_addr";
    pub const PRIVATE_IPV4: &str = "private_ipv4_addr";
    pub const PORT: &str = "port";
    /// The five keys of a `fields` record, in the order the seed wrote them.
    pub const ALL: [&str; 5] = [UNIT, HOST, PUBLIC_IPV4, PRIVATE_IPV4, PORT];
}

/// How one record is laid out in etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One key per field under `<prefix>/<service>/<instance>/` (the seed's web records).
    Fields,
    /// One key `<prefix>/<service>/<instance>` = `{"value": "<private ipv4>"}` (the seed's db record).
    Value,
    /// One key `<prefix>/<service>/<instance>` holding a JSON object with every field.
    Json,
}

impl Layout {
    /// The names accepted on the command line and in labels.
    pub const NAMES: &'static str = "fields, value, json";
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Fields => "fields",
            Layout::Value => "value",
            Layout::Json => "json",
        })
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fields" => Ok(Layout::Fields),
            "value" => Ok(Layout::Value),
            "json" => Ok(Layout::Json),
            other => Err(format!("unknown layout {other:?} (expected one of {})", Layout::NAMES)),
        }
    }
}

/// Where one container instance lives: everything any layout can hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The service the instance belongs to (`web`, `db`): the second path segment.
    pub service: String,
    /// The instance name (`web01`, `db_private_ip`): the third path segment.
    pub instance: String,
    /// The unit that runs the container (`monweb@01.service` in the seed).
    pub unit: String,
    /// The hostname of the machine running the container; also marks who owns the record.
    pub host: String,
    /// The address clients outside the cluster use; `None` only in the `value` layout.
    #[serde(rename = "public_ipv4_addr", with = "opt_ip")]
    pub public_ipv4: Option<Ipv4Addr>,
    /// The address other machines of the cluster use (the load balancer, the web app).
    #[serde(rename = "private_ipv4_addr")]
    pub private_ipv4: Ipv4Addr,
    /// The host port Docker publishes for the service.
    pub port: u16,
    /// The Docker container id (kept in the `json` layout only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    /// The Docker container name (kept in the `json` layout only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
}

/// registrator's tags (`SERVICE_TAGS`) and attributes (every other `SERVICE_<key>`,
/// key lower-cased) of a record. Only the `json` layout carries them, as the `tags` and
/// `attrs` members of its object (left out when empty, so a record without them is byte
/// for byte what it was); readers of [`Record`] ignore them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Tags, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Attributes by lower-case key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
}

/// `Option<Ipv4Addr>` as a JSON string, `""` for `None`, so the JSON layout always has the key.
mod opt_ip {
    use std::net::Ipv4Addr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ip: &Option<Ipv4Addr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an IPv4 address")))
    }
}

/// Normalises a prefix: one leading `/`, no trailing `/` (`services/` -> `/services`).
#[must_use]
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// How many bytes of a refused value a message quotes.
const SHOWN: usize = 64;

/// `value` quoted for a message, cut after [`SHOWN`] bytes (at a character boundary) with
/// its full length: a refused megabyte is named, never printed.
#[must_use]
pub fn shorten(value: &str) -> String {
    if value.len() <= SHOWN {
        return format!("{value:?}");
    }
    let mut end = SHOWN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

/// Checks that `value` can be one etcd path segment (a service or instance name).
///
/// # Errors
/// [`Error::Name`] when it is empty, longer than 128 bytes, or holds `/`, whitespace or
/// control characters.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), Error> {
    match name_problem(value) {
        Some(reason) => Err(Error::Name {
            what,
            value: shorten(value),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why `value` cannot be one etcd path segment, or `None` when it can.
fn name_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > 128 {
        Some("must be at most 128 bytes")
    } else if value.contains('/') {
        Some("must not contain '/'")
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain whitespace or control characters")
    } else if value == "." || value == ".." {
        Some("must not be '.' or '..'")
    } else {
        None
    }
}

/// An instance name as a message shows it: itself when it is a safe name, else quoted
/// and cut ([`shorten`]), so a name read from etcd cannot forge a log line.
#[must_use]
pub fn shown_name(value: &str) -> String {
    match name_problem(value) {
        None => value.to_owned(),
        Some(_) => shorten(value),
    }
}

/// The key (for `value`/`json`) or directory (for `fields`, with a trailing `/`) of an instance.
///
/// Deleting a `fields` record deletes the range with this prefix; the trailing `/` keeps
/// `web1` from matching `web10`.
#[must_use]
pub fn instance_key(prefix: &str, service: &str, instance: &str, layout: Layout) -> String {
    let base = format!("{}/{service}/{instance}", normalize_prefix(prefix));
    match layout {
        Layout::Fields => base + "/",
        Layout::Value | Layout::Json => base,
    }
}

/// The directory every record of a service lives under, with a trailing `/`.
#[must_use]
pub fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{}/{service}/", normalize_prefix(prefix))
}

impl Record {
    /// The key/value pairs this record becomes in `layout`, written together in one transaction.
    #[must_use]
    pub fn entries(&self, prefix: &str, layout: Layout) -> Vec<(String, String)> {
        let key = instance_key(prefix, &self.service, &self.instance, layout);
        match layout {
            Layout::Fields => {
                let public = self.public_ipv4.map(|ip| ip.to_string()).unwrap_or_default();
                vec![
                    (format!("{key}{}", field::UNIT), self.unit.clone()),
                    (format!("{key}{}", field::HOST), self.host.clone()),
                    (format!("{key}{}", field::PUBLIC_IPV4), public),
                    (format!("{key}{}", field::PRIVATE_IPV4), self.private_ipv4.to_string()),
                    (format!("{key}{}", field::PORT), self.port.to_string()),
                ]
            }
            Layout::Value => vec![(key, encode_value(self.private_ipv4))],
            Layout::Json => {
                // Serialising a struct of strings, integers and addresses cannot fail.
                let json = serde_json::to_string(self).unwrap_or_default();
                vec![(key, json)]
            }
        }
    }

    /// [`Record::entries`] with registrator's tags and attributes in the `json` object
    /// (the other layouts have no place for them).
    #[must_use]
    pub fn entries_with_meta(&self, prefix: &str, layout: Layout, meta: &Meta) -> Vec<(String, String)> {
        #[derive(Serialize)]
        struct Doc<'a> {
            #[serde(flatten)]
            record: &'a Record,
            #[serde(flatten)]
            meta: &'a Meta,
        }
        match layout {
            Layout::Json => {
                let key = instance_key(prefix, &self.service, &self.instance, layout);
                // Serialising strings, integers, addresses and a map of strings cannot fail.
                let json = serde_json::to_string(&Doc { record: self, meta }).unwrap_or_default();
                vec![(key, json)]
            }
            Layout::Fields | Layout::Value => self.entries(prefix, layout),
        }
    }

    /// The address of `kind` (public or private), if the record has it.
    #[must_use]
    pub fn address(&self, kind: AddressField) -> Option<Ipv4Addr> {
        match kind {
            AddressField::Public => self.public_ipv4,
            AddressField::Private => Some(self.private_ipv4),
        }
    }
}

/// Which address of a record a reader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum AddressField {
    /// `public_ipv4_addr`.
    #[value(name = "public_ipv4_addr")]
    Public,
    /// `private_ipv4_addr`.
    #[value(name = "private_ipv4_addr")]
    Private,
}

impl fmt::Display for AddressField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressField::Public => field::PUBLIC_IPV4,
            AddressField::Private => field::PRIVATE_IPV4,
        })
    }
}

/// The value-layout document, byte for byte as the seed's `mondb` wrote it.
#[must_use]
pub fn encode_value(ip: Ipv4Addr) -> String {
    format!("{{\"value\": \"{ip}\"}}")
}

/// Reads an address from a `value`-layout key.
///
/// Accepts the seed's `{"value": "<ip>"}`, a `json`-layout object (its private address)
/// and a bare address, so dbhelper can follow any layout the announcer was told to write.
///
/// # Errors
/// A message naming the value when none of these forms holds an IPv4 address.
pub fn decode_value(bytes: &[u8]) -> Result<Ipv4Addr, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "value is not UTF-8".to_owned())?
        .trim();
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|_| format!("value {text:?} is neither an address nor JSON"))?;
    let found = doc
        .get("value")
        .or_else(|| doc.get(field::PRIVATE_IPV4))
        .and_then(|v| v.as_str());
    match found {
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} in {text:?} is not an IPv4 address")),
        None => Err(format!(
            "value {text:?} has no \"value\" or \"{}\" field",
            field::PRIVATE_IPV4
        )),
    }
}

/// Why a stored record could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A `fields` record lacks one of its five keys (a half-written record).
    #[error("record {instance:?} has no {field:?} key")]
    Missing { instance: String, field: &'static str },
    /// A field holds something unusable (`port` = `abc`, an address that is not IPv4).
    #[error("record {instance:?} has a bad {field}: {value:?}")]
    Bad {
        instance: String,
        field: &'static str,
        value: String,
    },
    /// A `json` or `value` record that is not a JSON record object.
    #[error("record {instance:?} is not a JSON record: {reason}")]
    Json { instance: String, reason: String },
    /// An instance name the announcer would never write (NUL, control bytes, whitespace,
    /// `..`, over 128 bytes): someone else wrote it, and it must not reach a log line or
    /// a node's label as it is.
    #[error("record {} has an unsafe instance name: it {reason}", shorten(.instance))]
    Name { instance: String, reason: &'static str },
}

/// Decodes every record of one service from the key/values under [`service_prefix`].
///
/// Keys `<service_prefix><instance>/<field>` are grouped into `fields` records; keys
/// `<service_prefix><instance>` are read as `json` records. Keys outside the prefix,
/// deeper paths and unknown field names are ignored. An instance whose name could not be
/// one safe key segment ([`validate_name`]: NUL, control bytes, `..`, ...) is
/// [`DecodeError::Name`], whatever its value. The result is sorted by instance.
pub fn decode_service<'a, I>(service_prefix: &str, service: &str, kvs: I) -> Vec<(String, Result<Record, DecodeError>)>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut fields: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut whole: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (key, value) in kvs {
        let Ok(key) = std::str::from_utf8(key) else { continue };
        let Some(rest) = key.strip_prefix(service_prefix) else {
            continue;
        };
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(instance), None, None) if !instance.is_empty() => {
                whole.insert(instance.to_owned(), value.to_vec());
            }
            (Some(instance), Some(name), None) if !instance.is_empty() && field::ALL.contains(&name) => {
                let value = String::from_utf8_lossy(value).into_owned();
                fields
                    .entry(instance.to_owned())
                    .or_default()
                    .insert(name.to_owned(), value);
            }
            _ => {}
        }
    }
    let mut out: Vec<(String, Result<Record, DecodeError>)> = Vec::new();
    let refused = |instance: &str| {
        name_problem(instance).map(|reason| DecodeError::Name {
            instance: instance.to_owned(),
            reason,
        })
    };
    for (instance, map) in fields {
        let rec = match refused(&instance) {
            Some(e) => Err(e),
            None => decode_fields(service, &instance, &map),
        };
        out.push((instance, rec));
    }
    for (instance, bytes) in whole {
        let rec = match refused(&instance) {
            Some(e) => Err(e),
            None => decode_json(service, &instance, &bytes),
        };
        out.push((instance, rec));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn decode_fields(service: &str, instance: &str, map: &BTreeMap<String, String>) -> Result<Record, DecodeError> {
    let get = |name: &'static str| {
        map.get(name).map(|s| s.trim()).ok_or_else(|| DecodeError::Missing {
            instance: instance.to_owned(),
            field: name,
        })
    };
    let bad = |name: &'static str, value: &str| DecodeError::Bad {
        instance: instance.to_owned(),
        field: name,
        value: value.to_owned(),
    };
    let unit = get(field::UNIT)?;
    let host = get(field::HOST)?;
    let public = get(field::PUBLIC_IPV4)?;
    let private = get(field::PRIVATE_IPV4)?;
    let port = get(field::PORT)?;
    let public_ipv4 = if public.is_empty() {
        None
    } else {
        Some(public.parse().map_err(|_| bad(field::PUBLIC_IPV4, public))?)
    };
    let private_ipv4 = private.parse().map_err(|_| bad(field::PRIVATE_IPV4, private))?;
    let port = parse_port(port).ok_or_else(|| bad(field::PORT, port))?;
    Ok(Record {
        service: service.to_owned(),
        instance: instance.to_owned(),
        unit: unit.to_owned(),
        host: host.to_owned(),
        public_ipv4,
        private_ipv4,
        port,
        container_id: String::new(),
        container_name: String::new(),
    })
}

fn decode_json(service: &str, instance: &str, bytes: &[u8]) -> Result<Record, DecodeError> {
    let json_err = |reason: String| DecodeError::Json {
        instance: instance.to_owned(),
        reason,
    };
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| json_err(e.to_string()))?;
    let obj = doc.as_object().ok_or_else(|| json_err("not an object".to_owned()))?;
    if obj.contains_key("value") && !obj.contains_key(field::PORT) {
        return Err(json_err("a value-layout record (an address only, no port)".to_owned()));
    }
    let text = |name: &'static str| -> Result<String, DecodeError> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Err(DecodeError::Missing {
                instance: instance.to_owned(),
                field: name,
            }),
            Some(serde_json::Value::String(s)) => Ok(s.trim().to_owned()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(DecodeError::Bad {
                instance: instance.to_owned(),
                field: name,
                value: other.to_string(),
            }),
        }
    };
    let bad = |name: &'static str, value: &str| DecodeError::Bad {
        instance: instance.to_owned(),
        field: name,
        value: value.to_owned(),
    };
    let public = text(field::PUBLIC_IPV4).unwrap_or_default();
    let private = text(field::PRIVATE_IPV4)?;
    let port = text(field::PORT)?;
    let optional = |name: &str| obj.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    Ok(Record {
        service: service.to_owned(),
        instance: instance.to_owned(),
        unit: optional(field::UNIT),
        host: optional(field::HOST),
        public_ipv4: if public.is_empty() {
            None
        } else {
            Some(public.parse().map_err(|_| bad(field::PUBLIC_IPV4, &public))?)
        },
        private_ipv4: private.parse().map_err(|_| bad(field::PRIVATE_IPV4, &private))?,
        port: parse_port(&port).ok_or_else(|| bad(field::PORT, &port))?,
        container_id: optional("container_id"),
        container_name: optional("container_name"),
    })
}

/// A TCP port as stored: decimal 1-65535.
fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web01() -> Record {
        Record {
            service: "web".into(),
            instance: "web01".into(),
            unit: "monweb@01.service".into(),
            host: "core01".into(),
            public_ipv4: Some(Ipv4Addr::new(162, 242, 255, 73)),
            private_ipv4: Ipv4Addr::new(10, 208, 201, 226),
            port: 18001,
            container_id: "abc123".into(),
            container_name: "web-01".into(),
        }
    }

    fn kv(entries: &[(String, String)]) -> Vec<(&[u8], &[u8])> {
        entries.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect()
    }

    // The tests below were written to kill mutants that scripts/mutants found alive
    // (TESTING.md): each names the behaviour that no other test pinned down.

    #[test]
    fn layouts_and_address_fields_print_the_names_their_parsers_and_readers_use() {
        for (layout, name) in [
            (Layout::Fields, "fields"),
            (Layout::Value, "value"),
            (Layout::Json, "json"),
        ] {
            assert_eq!(layout.to_string(), name);
            assert_eq!(name.parse::<Layout>(), Ok(layout));
        }
        assert_eq!(AddressField::Public.to_string(), "public_ipv4_addr");
        assert_eq!(AddressField::Private.to_string(), "private_ipv4_addr");
    }

    #[test]
    fn a_record_picks_the_address_a_reader_asks_for() {
        let rec = web01();
        assert_eq!(
            rec.address(AddressField::Public),
            Some(Ipv4Addr::new(162, 242, 255, 73))
        );
        assert_eq!(
            rec.address(AddressField::Private),
            Some(Ipv4Addr::new(10, 208, 201, 226))
        );
        let no_public = Record {
            public_ipv4: None,
            ..web01()
        };
        assert_eq!(no_public.address(AddressField::Public), None);
    }

    #[test]
    fn a_record_round_trips_through_serde_with_and_without_a_public_address() {
        for rec in [
            web01(),
            Record {
                public_ipv4: None,
                ..web01()
            },
        ] {
            let json = serde_json::to_string(&rec).unwrap();
            let back: Record = serde_json::from_str(&json).unwrap();
            assert_eq!(back, rec, "{json}");
        }
        let bad = serde_json::to_string(&web01())
            .unwrap()
            .replace("162.242.255.73", "not-an-ip");
        let err = serde_json::from_str::<Record>(&bad).unwrap_err().to_string();
        assert!(err.contains("\"not-an-ip\" is not an IPv4 address"), "{err}");
    }

    #[test]
    fn names_may_be_128_bytes_long_and_no_longer() {
        assert!(validate_name("instance", &"a".repeat(127)).is_ok());
        assert!(validate_name("instance", &"a".repeat(128)).is_ok());
        let err = validate_name("instance", &"a".repeat(129)).unwrap_err().to_string();
        assert!(err.contains("at most 128 bytes"), "{err}");
    }

    /// Found by `scripts/fuzz` (etcd_records): a key `/services/web/` + `w`, five NULs, `02`
    /// holding a good JSON record decoded to a record named with NUL bytes.
    #[test]
    fn instances_with_unsafe_names_are_refused_whatever_their_value() {
        let long = "a".repeat(129);
        for name in [
            "w\x00\x00\x00\x00\x0002",
            "..",
            ".",
            "web 01",
            "web\n01",
            "web\u{7f}",
            long.as_str(),
        ] {
            for layout in [Layout::Fields, Layout::Json] {
                let rec = Record {
                    instance: name.into(),
                    ..web01()
                };
                let entries = rec.entries("/services", layout);
                let got = decode_service("/services/web/", "web", kv(&entries));
                assert_eq!(got.len(), 1, "{name:?} {layout}: {got:?}");
                assert_eq!(got[0].0, name);
                let err = got[0].1.clone().unwrap_err();
                assert!(matches!(err, DecodeError::Name { .. }), "{name:?} {layout}: {err:?}");
                let msg = err.to_string();
                assert!(msg.contains(&shorten(name)), "{msg}");
                assert!(!msg.chars().any(char::is_control), "{msg:?}");
                assert_eq!(shown_name(name), shorten(name));
            }
        }
        assert_eq!(shown_name("web01"), "web01");
    }

    #[test]
    fn empty_instances_and_unknown_fields_are_not_records() {
        let mut entries = web01().entries("/services", Layout::Fields);
        entries.push(("/services/web/".into(), "{}".into()));
        entries.push(("/services/web//port".into(), "18002".into()));
        entries.push(("/services/web/web02/bogus".into(), "x".into()));
        let got = decode_service("/services/web/", "web", kv(&entries));
        let instances: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(instances, vec!["web01"], "{got:?}");
        assert_eq!(
            got[0].1.as_ref().unwrap(),
            &Record {
                container_id: String::new(),
                container_name: String::new(),
                ..web01()
            }
        );
    }

    #[test]
    fn a_json_record_may_carry_a_value_key_beside_its_port() {
        let mut doc: serde_json::Value =
            serde_json::from_str(&web01().entries("/services", Layout::Json)[0].1).unwrap();
        doc["value"] = serde_json::json!("10.208.201.226");
        let entries = vec![("/services/web/web01".to_owned(), doc.to_string())];
        let got = decode_service("/services/web/", "web", kv(&entries));
        assert_eq!(got[0].1.as_ref().unwrap(), &web01());
        // Without a port it is the value layout's db record, not a web record.
        let entries = vec![("/services/web/web01".to_owned(), encode_value(Ipv4Addr::LOCALHOST))];
        assert!(decode_service("/services/web/", "web", kv(&entries))[0].1.is_err());
    }

    #[test]
    fn fields_layout_is_the_seeds_five_keys() {
        let got = web01().entries("/services", Layout::Fields);
        let want: Vec<(String, String)> = [
            ("/services/web/web01/unit", "monweb@01.service"),
            ("/services/web/web01/host", "core01"),
            ("/services/web/web01/public_ipv4_addr", "162.242.255.73"),
            ("/services/web/web01/private_ipv4_addr", "10.208.201.226"),
            ("/services/web/web01/port", "18001"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn json_layout_carries_registrator_tags_and_attributes_and_readers_ignore_them() {
        let rec = web01();
        let empty = rec.entries_with_meta("/services", Layout::Json, &Meta::default());
        assert_eq!(
            empty,
            rec.entries("/services", Layout::Json),
            "no meta: byte for byte as before"
        );
        let meta = Meta {
            tags: vec!["www".into(), "a,b".into()],
            attrs: BTreeMap::from([("region".to_owned(), "us2".to_owned())]),
        };
        let got = rec.entries_with_meta("/services", Layout::Json, &meta);
        let doc: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
        assert_eq!(doc["tags"], serde_json::json!(["www", "a,b"]));
        assert_eq!(doc["attrs"]["region"], "us2");
        assert_eq!(doc["port"], 18001);
        let back = decode_service("/services/web/", "web", kv(&got));
        assert_eq!(back[0].1.as_ref().unwrap(), &rec);
        // The other layouts have no place for them.
        assert_eq!(
            rec.entries_with_meta("/services", Layout::Fields, &meta),
            rec.entries("/services", Layout::Fields)
        );
    }

    #[test]
    fn value_layout_is_the_seeds_db_record() {
        let mut rec = web01();
        rec.service = "db".into();
        rec.instance = "db_private_ip".into();
        let got = rec.entries("/services/", Layout::Value);
        assert_eq!(
            got,
            vec![(
                "/services/db/db_private_ip".to_owned(),
                "{\"value\": \"10.208.201.226\"}".to_owned()
            )]
        );
        assert_eq!(decode_value(got[0].1.as_bytes()), Ok(Ipv4Addr::new(10, 208, 201, 226)));
    }

    #[test]
    fn json_layout_round_trips() {
        let rec = web01();
        let entries = rec.entries("/services", Layout::Json);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "/services/web/web01");
        let doc: serde_json::Value = serde_json::from_str(&entries[0].1).unwrap();
        assert_eq!(doc["port"], 18001);
        assert_eq!(doc["private_ipv4_addr"], "10.208.201.226");
        assert_eq!(doc["container_name"], "web-01");
        let back = decode_service("/services/web/", "web", kv(&entries));
        assert_eq!(back, vec![("web01".to_owned(), Ok(rec))]);
    }

    #[test]
    fn fields_round_trip_and_web1_is_not_web10() {
        let mut a = web01();
        a.instance = "web1".into();
        let mut b = web01();
        b.instance = "web10".into();
        b.port = 18010;
        let mut all = a.entries("/services", Layout::Fields);
        all.extend(b.entries("/services", Layout::Fields));
        // A key of another service and a deeper key are ignored.
        all.push(("/services/db/db_private_ip".into(), "{\"value\": \"10.0.0.1\"}".into()));
        all.push(("/services/web/web1/extra/deep".into(), "x".into()));
        let got = decode_service("/services/web/", "web", kv(&all));
        let strip = |mut r: Record| {
            r.container_id.clear();
            r.container_name.clear();
            r
        };
        assert_eq!(got, vec![("web1".into(), Ok(strip(a))), ("web10".into(), Ok(strip(b)))]);
        assert_eq!(
            instance_key("/services", "web", "web1", Layout::Fields),
            "/services/web/web1/"
        );
        assert_eq!(service_prefix("services/", "web"), "/services/web/");
    }

    #[test]
    fn bad_records_are_reported_one_by_one() {
        let good = web01().entries("/services", Layout::Fields);
        let mut kvs: Vec<(String, String)> = good.clone();
        let set = |kvs: &mut Vec<(String, String)>, key: &str, value: &str| {
            kvs.push((key.to_owned(), value.to_owned()));
        };
        // web02: no port (half a record); web03: port abc; web04: address not an IP.
        for (k, v) in &good {
            if !k.ends_with("/port") {
                set(&mut kvs, &k.replace("web01", "web02"), v);
            }
            let v3 = if k.ends_with("/port") { "abc" } else { v };
            set(&mut kvs, &k.replace("web01", "web03"), v3);
            let v4 = if k.ends_with("/private_ipv4_addr") {
                "not-an-ip"
            } else {
                v
            };
            set(&mut kvs, &k.replace("web01", "web04"), v4);
        }
        set(&mut kvs, "/services/web/web05", "{not json");
        set(&mut kvs, "/services/web/web06", "{\"value\": \"10.0.0.1\"}");
        set(
            &mut kvs,
            "/services/web/web07",
            "{\"private_ipv4_addr\":\"10.0.0.7\",\"port\":0}",
        );
        let got = decode_service("/services/web/", "web", kv(&kvs));
        let names: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(names, ["web01", "web02", "web03", "web04", "web05", "web06", "web07"]);
        assert!(got[0].1.is_ok());
        assert_eq!(
            got[1].1,
            Err(DecodeError::Missing {
                instance: "web02".into(),
                field: "port"
            })
        );
        assert_eq!(
            got[2].1,
            Err(DecodeError::Bad {
                instance: "web03".into(),
                field: "port",
                value: "abc".into()
            })
        );
        assert_eq!(
            got[3].1,
            Err(DecodeError::Bad {
                instance: "web04".into(),
                field: "private_ipv4_addr",
                value: "not-an-ip".into()
            })
        );
        assert!(matches!(got[4].1, Err(DecodeError::Json { .. })));
        assert!(matches!(got[5].1, Err(DecodeError::Json { .. })));
        assert!(matches!(got[6].1, Err(DecodeError::Bad { field: "port", .. })));
    }

    #[test]
    fn decode_value_forms() {
        let cases: &[(&str, Option<Ipv4Addr>)] = &[
            ("{\"value\": \"10.1.2.3\"}", Some(Ipv4Addr::new(10, 1, 2, 3))),
            ("{\"value\":\"10.1.2.3\"}", Some(Ipv4Addr::new(10, 1, 2, 3))),
            ("10.1.2.3\n", Some(Ipv4Addr::new(10, 1, 2, 3))),
            (
                "{\"private_ipv4_addr\":\"10.1.2.4\",\"port\":3306}",
                Some(Ipv4Addr::new(10, 1, 2, 4)),
            ),
            ("{\"value\": \"db.example\"}", None),
            ("{\"other\": 1}", None),
            ("", None),
            ("\u{0}\u{1}", None),
        ];
        for (input, want) in cases {
            assert_eq!(decode_value(input.as_bytes()).ok(), *want, "input {input:?}");
        }
        assert!(decode_value(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn names_table() {
        let cases: &[(&str, bool)] = &[
            ("web01", true),
            ("db_private_ip", true),
            ("web-01.example", true),
            ("", false),
            ("a/b", false),
            ("a b", false),
            ("..", false),
            ("tab\there", false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate_name("instance", name).is_ok(), *ok, "{name:?}");
        }
        let err = validate_name("instance", "web/01").unwrap_err().to_string();
        assert_eq!(err, "invalid instance \"web/01\": must not contain '/'");
    }

    #[test]
    fn layout_parse_and_prefix_normalisation() {
        assert_eq!("fields".parse::<Layout>(), Ok(Layout::Fields));
        assert!("yaml".parse::<Layout>().unwrap_err().contains("\"yaml\""));
        assert_eq!(normalize_prefix("/services/"), "/services");
        assert_eq!(normalize_prefix("services"), "/services");
        assert_eq!(normalize_prefix("/a/b/"), "/a/b");
        assert_eq!(normalize_prefix("/"), "");
    }
}
