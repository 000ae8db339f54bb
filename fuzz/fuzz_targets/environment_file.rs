//! Fuzz target `environment_file`: see `sidekick_fuzz::checks::environment_file` for the properties it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekick_fuzz::checks::environment_file(data));
