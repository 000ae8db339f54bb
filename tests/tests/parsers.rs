//! Every parser of untrusted input, under the fuzz targets' property checks: each target's
//! corpus (`fuzz/corpus/<target>/`, the seeds plus any input a fuzz run found worth
//! keeping) is replayed, and `proptest` generates a few thousand more inputs per parser.
//! Long fuzz runs are `scripts/fuzz` (see SECURITY.md); this file keeps the suite at seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::collections::BTreeMap;

use proptest::prelude::*;

/// Replays every file of `fuzz/corpus/<target>/` through `check`; the corpus must exist.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = testbed::repo_root().join("fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(
            result.is_ok(),
            "{target}: the corpus file {} breaks a property",
            path.display()
        );
        n += 1;
    }
    assert!(n > 0, "{target}: the corpus {} is empty", dir.display());
}

#[test]
fn corpora_replay_without_a_broken_property() {
    replay("dump_split", checks::dump_split);
    replay("environment_file", checks::environment_file);
    replay("container_record", checks::container_record);
    replay("etcd_records", checks::etcd_records);
    replay("clb_answers", checks::clb_answers);
    replay("identity_token", checks::identity_token);
    replay("flags", checks::flags);
    replay("haproxy_answers", checks::haproxy_answers);
}

/// Bytes that look like SQL more often than random bytes do: quotes, comments, delimiters.
fn sqlish() -> impl Strategy<Value = Vec<u8>> {
    let atom = prop_oneof![
        Just(b"'".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"`".to_vec()),
        Just(b"\\".to_vec()),
        Just(b";".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"-- ".to_vec()),
        Just(b"#".to_vec()),
        Just(b"/*".to_vec()),
        Just(b"*/".to_vec()),
        Just(b"/*!40101 ".to_vec()),
        Just(b"DELIMITER ;;\n".to_vec()),
        Just(b"DELIMITER ;\n".to_vec()),
        Just(b";;".to_vec()),
        Just(b"USE world\n".to_vec()),
        Just(b"INSERT INTO t VALUES (1,'a'),(2,'b');".to_vec()),
        Just(b"CREATE TABLE t (id int);".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(atom, 0..40).prop_map(|parts| parts.concat())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn dump_split_keeps_its_properties(data in sqlish()) {
        checks::dump_split(&data);
    }

    #[test]
    fn dump_split_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        checks::dump_split(&data);
    }

    #[test]
    fn environment_file_keeps_its_properties(text in "(([ \t]*(export )?[A-Za-z_#\"' =]{0,12}=?[^\n]{0,16})\n){0,12}") {
        checks::environment_file(text.as_bytes());
    }

    #[test]
    fn environment_file_reads_back_what_was_written(
        pairs in proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,15}", "[A-Za-z0-9./:_-]{0,20}", 0..10)
    ) {
        checks::environment_round_trip(&pairs);
    }

    #[test]
    fn container_record_keeps_keys_under_the_prefix(
        lines in proptest::collection::vec(
            prop_oneof![
                "L announce\\.(service|instance|port|layout|check|unit)=[^\n]{0,24}",
                "(SERVICE_NAME|SERVICE_ID|SERVICE_IGNORE|SERVICE_80_NAME|SERVICE_TAGS)=[^\n]{0,24}",
                "L [^\n]{0,24}",
                "P [0-9]{1,5} [0-9]{1,5} (tcp|udp|sctp|x)",
                "[^\n]{0,24}",
            ],
            0..8,
        )
    ) {
        checks::container_record(lines.join("\n").as_bytes());
    }

    #[test]
    fn etcd_records_keep_their_properties(
        lines in proptest::collection::vec(
            prop_oneof![
                "web[0-9]{1,2}/(host|port|unit|private_ipv4_addr|public_ipv4_addr) [^\n]{0,20}",
                "web[0-9]{1,2} \\{\"private_ipv4_addr\":\"10\\.0\\.0\\.[0-9]{1,3}\",\"port\":[0-9]{1,6}\\}",
                "(\\.\\.|/|%00|web\u{0}1)[^\n ]{0,10} [^\n]{0,12}",
                "![^\n]{0,24}",
            ],
            0..10,
        )
    ) {
        checks::etcd_records(lines.join("\n").as_bytes());
    }

    #[test]
    fn etcd_records_take_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        checks::etcd_records(&data);
    }

    #[test]
    fn clb_answers_keep_their_properties(
        body in prop_oneof![
            "[0-9]{0,25}\n\\{\"overLimit\":\\{\"retryAfter\":\"20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z\",\"message\":\"[^\"]{0,20}\"\\}\\}",
            "\\{\"nodes\":\\[\\{\"id\":[0-9]{1,20},\"address\":\"[^\"]{0,15}\",\"port\":[0-9]{1,6},\"condition\":\"[A-Z]{0,9}\"\\}\\]\\}",
            "\\{\"validationErrors\":\\{\"messages\":\\[\"[^\"]{0,30}\"\\]\\},\"message\":\"Node ids [0-9, ]{0,20} are not a part\"\\}",
            "\\{\"loadBalancer\":\\{\"id\":[0-9]{1,5},\"status\":\"[A-Z_]{0,15}\",\"nodes\":\\[\\]\\}\\}",
            "[^\n]{0,64}",
        ]
    ) {
        checks::clb_answers(body.as_bytes());
    }

    #[test]
    fn identity_token_answers_keep_their_properties(
        body in prop_oneof![
            "\\{\"access\":\\{\"token\":\\{\"id\":\"[a-z0-9]{0,16}\",\"expires\":\"20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,12}(Z|[+-][0-9]{2}:[0-9]{2})\",\"tenant\":\\{\"id\":\"[0-9]{0,8}\"\\}\\},\"serviceCatalog\":\\[\\{\"type\":\"rax:load-balancer\",\"endpoints\":\\[\\{\"region\":\"(ORD|LON|)\",\"publicURL\":\"[^\"]{0,30}\"\\}\\]\\}\\]\\}\\}",
            "[^\n]{0,64}",
        ]
    ) {
        checks::identity_token(body.as_bytes());
    }

    #[test]
    fn flags_keep_their_properties(
        text in prop_oneof![
            "[0-9]{0,22}(ns|us|ms|s|m|h|d|w|y|min|sec)?( ?[0-9]{1,5}(ms|s|m|h))?",
            "(https?://|ftp://|)[a-z0-9.\\[\\]:]{0,20}(:[0-9]{0,6})?/?",
            "[^\n]{0,24}",
        ]
    ) {
        checks::flags(text.as_bytes());
    }

    #[test]
    fn haproxy_answers_keep_their_properties(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("1".to_owned()),
                Just("# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_check_result srv_check_state srv_port".to_owned()),
                "3 web [0-9]{1,11} [a-z0-9.:-]{0,12} [0-9.]{0,15} [0-9]{1,3} [0-9]{1,3} [0-9]{1,2} [0-9]{1,2} [0-9]{1,6}",
                Just("# pxname,svname,qcur,qmax,scur,smax".to_owned()),
                "(web|other),[A-Za-z0-9.:-]{0,12},0,0,[0-9]{0,21},[0-9]{0,3}",
                "[^\n]{0,24}",
            ],
            0..8,
        )
    ) {
        checks::haproxy_answers(lines.join("\n").as_bytes());
    }
}

/// The round trip over a fixed table too, so a regression shows a readable case.
#[test]
fn environment_round_trip_table() {
    let mut pairs = BTreeMap::new();
    pairs.insert("COREOS_PUBLIC_IPV4".to_owned(), "203.0.113.7".to_owned());
    pairs.insert("COREOS_PRIVATE_IPV4".to_owned(), "10.0.0.7".to_owned());
    checks::environment_round_trip(&pairs);
}
