//! Fuzz target `identity_token`: see `sidekick_fuzz::checks::identity_token` for the properties it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekick_fuzz::checks::identity_token(data));
