//! Fuzz target `etcd_records`: see `sidekick_fuzz::checks::etcd_records` for the properties it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekick_fuzz::checks::etcd_records(data));
