//! `cargo fuzz run safetensors`: see `fuzz/harness.rs` (`harness::safetensors`) and docs/RELIABILITY.md.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::safetensors(data));
