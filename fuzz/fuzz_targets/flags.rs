//! Fuzz target `flags`: see `sidekick_fuzz::checks::flags` for the properties it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekick_fuzz::checks::flags(data));
