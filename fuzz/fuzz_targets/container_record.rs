//! Fuzz target `container_record`: see `sidekick_fuzz::checks::container_record` for the properties it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekick_fuzz::checks::container_record(data));
