//! Fuzz target `haproxy_answers`: see `sidekick_fuzz::checks::haproxy_answers` for the properties it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekick_fuzz::checks::haproxy_answers(data));
