//! The properties every parser of untrusted input must keep, one function per fuzz target.
//!
//! Each function takes raw bytes, feeds them to a parser the way the binaries do, and
//! panics when a property breaks (a panic inside a parser counts too). The fuzz targets in
//! `fuzz_targets/` call them, and so does the test suite (`tests/tests/parsers.rs`), which
//! replays `fuzz/corpus/<target>/` and runs a few thousand `proptest` inputs through them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

/// The input as text lines, bytes that are not UTF-8 replaced (what a label or an env
/// entry from Docker would be after its JSON decoding).
fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data).lines().map(str::to_owned).collect()
}

/// dbhelper's dump splitter: never panics; the pieces cover the input exactly and in
/// order (re-joined they give the input back); each statement is its own slice; an error
/// names a line; the planner takes whatever the splitter gives.
pub fn dump_split(data: &[u8]) {
    match dbhelper::dump::split(data) {
        Ok(pieces) => {
            let mut at = 0;
            for p in &pieces {
                assert_eq!(p.range.start, at, "pieces are contiguous: {p:?}");
                assert!(p.range.end >= p.range.start && p.range.end <= data.len(), "{p:?}");
                at = p.range.end;
            }
            assert_eq!(at, data.len(), "the pieces cover the whole input");
            let joined: Vec<u8> = pieces
                .iter()
                .flat_map(|p| data[p.range.clone()].iter().copied())
                .collect();
            assert_eq!(joined, data, "re-joined pieces give the input back");
            let mut number = 0;
            for (piece, stmt) in dbhelper::dump::statements(data, &pieces) {
                number += 1;
                assert_eq!(
                    piece.statement_number(),
                    Some(number),
                    "statements are numbered in order"
                );
                assert_eq!(stmt, &data[piece.range.clone()]);
            }
            // The planner must refuse or plan, never panic, even with a tiny packet size.
            let _ = dbhelper::plan::plan(data, &pieces, 64, false);
            let _ = dbhelper::plan::plan(data, &pieces, 4 << 20, true);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("line"), "the error names a line: {msg}");
        }
    }
}

/// The announcer's `/etc/environment` parser: never panics; keys are trimmed, non-empty,
/// hold no `=`; a plain `KEY=VALUE` line without quotes or comments comes back as given.
pub fn environment_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = announcer::machine::parse_environment(&text);
    for (k, v) in &parsed {
        assert!(!k.is_empty() && !k.contains('='), "key {k:?}");
        assert_eq!(k.trim(), k, "keys are trimmed");
        assert!(!v.contains('\n'), "one line per value: {v:?}");
    }
}

/// Round trip for generated files: each `KEY=VALUE` written plainly is read back.
pub fn environment_round_trip(pairs: &BTreeMap<String, String>) {
    let text: String = pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let parsed = announcer::machine::parse_environment(&text);
    assert_eq!(&parsed, pairs, "{text}");
}

/// The announcer's container labels and env into a record (host mode reads
/// `announce.*` labels and registrator's `SERVICE_*` env; container mode the flags): never
/// panics; a record it makes has names that are single safe key segments, so every key of
/// the record stays under its service's prefix (no `..`, `/`, NUL or control bytes).
pub fn container_record(data: &[u8]) {
    use announcer::docker::{ContainerFacts, PublishedPort, State};
    use announcer::record::{Mode, Rules};
    let mut facts = ContainerFacts {
        id: "0123456789ab".into(),
        name: "fuzzed".into(),
        state: State::Running,
        health: None,
        labels: Vec::new(),
        env: Vec::new(),
        ports: vec![PublishedPort {
            container_port: 80,
            proto: "tcp".into(),
            host_ip: None,
            host_port: 32768,
        }],
        networks: vec![("bridge".into(), Ipv4Addr::new(172, 17, 0, 2))],
        exposed: vec![announcer::record::PortSpec {
            port: 80,
            proto: "tcp".into(),
        }],
        network_mode: "bridge".into(),
        stop_signal: 15,
        started_at: String::new(),
    };
    for line in lines(data) {
        if let Some(rest) = line.strip_prefix("L ") {
            let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
            facts.labels.push((k.to_owned(), v.to_owned()));
        } else if let Some(rest) = line.strip_prefix("P ") {
            let mut it = rest.split_whitespace();
            let container_port = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let host_port = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let proto = it.next().unwrap_or("tcp").to_owned();
            facts.ports.push(PublishedPort {
                container_port,
                proto,
                host_ip: None,
                host_port,
            });
        } else {
            facts.env.push(line);
        }
    }
    let machine = announcer::machine::Machine {
        hostname: "core01".into(),
        public_ipv4: Some(Ipv4Addr::new(203, 0, 113, 1)),
        private_ipv4: Ipv4Addr::new(10, 0, 0, 1),
        public_source: "fuzz".into(),
        private_source: "fuzz".into(),
    };
    for layout in [
        sidekick::schema::Layout::Fields,
        sidekick::schema::Layout::Value,
        sidekick::schema::Layout::Json,
    ] {
        let rules = Rules {
            mode: Mode::Host(announcer::record::HostRule { layout, internal: None }),
            check: announcer::health::Check::Tcp,
        };
        match announcer::record::record_for(&facts, &machine, &rules) {
            Ok(decision) => {
                for planned in decision.planned() {
                    let r = &planned.record;
                    for (what, name) in [("service", &r.service), ("instance", &r.instance)] {
                        assert!(
                            sidekick::schema::validate_name(what, name).is_ok(),
                            "an unsafe {what} {name:?} made a record"
                        );
                    }
                    let service_prefix = sidekick::schema::service_prefix("/services", &r.service);
                    for (key, _) in r.entries("/services", planned.layout) {
                        assert!(key.starts_with(&service_prefix), "{key} is outside {service_prefix}");
                        assert!(!key.contains("/../") && !key.contains('\0'), "{key:?}");
                    }
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// lb-sync's reading of etcd records written by anyone: never panics; a record that
/// decodes has a safe instance name; the desired set only holds addresses some record
/// under the prefix gave.
pub fn etcd_records(data: &[u8]) {
    let mut kvs: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // Lines `KEY VALUE`; keys are put under the prefix unless they start with `!`, so the
    // fuzzer reaches both the prefix's records and arbitrary keys.
    for line in data.split(|b| *b == b'\n') {
        let (k, v) = match line.iter().position(|b| *b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let key = match k.strip_prefix(b"!") {
            Some(raw) => raw.to_vec(),
            None => [b"/services/web/".as_slice(), k].concat(),
        };
        kvs.insert(key, v.to_vec());
    }
    let decoded = sidekick::schema::decode_service(
        "/services/web/",
        "web",
        kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    );
    for (instance, result) in &decoded {
        if let Ok(record) = result {
            assert!(
                sidekick::schema::validate_name("instance", &record.instance).is_ok(),
                "{instance:?}"
            );
        }
    }
    for field in [
        sidekick::schema::AddressField::Private,
        sidekick::schema::AddressField::Public,
    ] {
        let source = lb_sync::records::Source::new("/services/web", field, None);
        let desired = lb_sync::records::Builder::default().build(&source, &kvs, true, 1);
        let _ = format!("{desired:?}");
    }
}

/// The Cloud Load Balancers answers lb-sync decodes: never panic; a `Retry-After` wait is
/// capped at ten minutes; a message is bounded; node ids are what the text lists.
pub fn clb_answers(data: &[u8]) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let text = String::from_utf8_lossy(data);
    let header = text.lines().next();
    let wait = lb_sync::clb::retry_after(header, data, now);
    assert!(wait <= Duration::from_secs(600), "retry-after capped: {wait:?}");
    let _ = lb_sync::clb::is_over_limit(data);
    let msg = lb_sync::clb::api_message(data);
    // The non-JSON and whole-document fallbacks are cut at 300 characters; joined
    // messages come from the answer itself, so they are at most as long as it.
    assert!(msg.chars().count() <= data.len().max(300), "message bounded");
    if let Some(ids) = lb_sync::clb::unknown_node_ids(&text) {
        assert!(!ids.is_empty());
    }
    let _ = lb_sync::clb::parse_nodes(data);
    let _ = lb_sync::clb::parse_load_balancer(data);
}

/// The Identity v2.0 token answer: never panics; a session it accepts has a token and an
/// endpoint for the asked region.
pub fn identity_token(data: &[u8]) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for region in ["ORD", "LON"] {
        // Accepted or refused, it must not panic; `Session` holds the token and shows
        // nothing of it.
        let _ = lb_sync::clb::session_from(data, region, now).is_ok();
    }
}

/// The duration and address flags: never panic; an accepted duration reads back the same
/// when printed; an accepted endpoint is `scheme://host:port` and normalizing it again
/// changes nothing; a refusal names the value.
pub fn flags(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match sidekick::duration::parse(&text) {
        Ok(d) => {
            let printed = humantime::format_duration(d).to_string();
            assert_eq!(sidekick::duration::parse(&printed), Ok(d), "{text:?} -> {printed}");
        }
        Err(e) => assert!(e.contains("invalid duration"), "{e}"),
    }
    let _ = sidekick::duration::parse_positive(&text);
    match sidekick::etcd::normalize_endpoint(&text) {
        Ok(url) => {
            assert!(url.starts_with("http://") || url.starts_with("https://"), "{url}");
            assert_eq!(
                sidekick::etcd::normalize_endpoint(&url).ok().as_deref(),
                Some(url.as_str())
            );
        }
        Err(e) => assert!(e.to_string().contains("invalid etcd endpoint"), "{e}"),
    }
}

/// lb-sync's reading of HAProxy Runtime API answers (`show servers state`, `show stat`
/// CSV): never panics; every server read is one line of the answer (its name and address
/// are words of the text, its name is one word); an error says something; `show stat`
/// gives sessions only for named servers of the asked backend, never its totals.
pub fn haproxy_answers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match lb_sync::haproxy::parse_servers_state(&text) {
        Ok(servers) => {
            assert!(servers.len() <= text.lines().count(), "one server per line");
            for s in &servers {
                assert!(!s.name.is_empty() && !s.name.contains(char::is_whitespace), "{s:?}");
                // An IP address is read, so its text may be written otherwise (`0::1`).
                let address_shown = match &s.address {
                    lb_sync::plan::Address::Other(t) => text.contains(t.as_str()),
                    lb_sync::plan::Address::Ip(a) => text
                        .split_ascii_whitespace()
                        .any(|w| w.parse::<std::net::IpAddr>() == Ok(*a)),
                };
                assert!(text.contains(s.name.as_str()) && address_shown, "{s:?}");
                let (node, name) = s.clone().into_node("lb-sync-", Some(1));
                assert!(node.id == s.id && node.address == s.address && name == s.name, "{s:?}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    for name in lb_sync::haproxy::parse_stat_sessions(&text, "web").keys() {
        assert!(name != "BACKEND" && name != "FRONTEND", "{name}");
        assert!(text.contains(name.as_str()), "{name:?}");
    }
}
