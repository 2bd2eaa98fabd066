//! `cargo fuzz run rules`: see `fuzz/harness.rs` (`harness::rules`) and docs/RELIABILITY.md.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::rules(data));
