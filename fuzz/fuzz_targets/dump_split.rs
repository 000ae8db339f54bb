//! Fuzz target `dump_split`: see `sidekick_fuzz::checks::dump_split` for the properties it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekick_fuzz::checks::dump_split(data));
