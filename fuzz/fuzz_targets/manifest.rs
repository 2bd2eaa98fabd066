//! `cargo fuzz run manifest`: see `fuzz/harness.rs` (`harness::manifest`) and docs/RELIABILITY.md.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::manifest(data));
