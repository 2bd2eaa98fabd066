//! `cargo fuzz run run_input`: see `fuzz/harness.rs` (`harness::run_input`) and docs/RELIABILITY.md.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run_input(data));
