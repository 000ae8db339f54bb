//! The fuzz targets' checks (`checks.rs`), shared with the test suite's replay and
//! property tests (`tests/tests/parsers.rs` includes the same file).

pub mod checks;
