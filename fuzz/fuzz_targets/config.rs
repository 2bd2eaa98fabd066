//! `cargo fuzz run config`: see `fuzz/harness.rs` (`harness::config`) and docs/RELIABILITY.md.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config(data));
