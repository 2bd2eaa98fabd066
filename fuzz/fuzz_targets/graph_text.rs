//! `cargo fuzz run graph_text`: see `fuzz/harness.rs` (`harness::graph_text`) and docs/RELIABILITY.md.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::graph_text(data));
