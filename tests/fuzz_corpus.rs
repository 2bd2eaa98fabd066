//! Replays every fuzz corpus and regression file (`fuzz/corpus/TARGET/*`,
//! `fuzz/regressions/TARGET/*`) through the same harness the `cargo fuzz` targets run, so an
//! input that once crashed attnopt fails CI if it crashes again. The fuzzers themselves run by
//! hand (`fuzz/run.sh`; figures in docs/RELIABILITY.md).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

#[test]
fn every_corpus_file_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for target in harness::TARGETS {
        let mut n = 0;
        for kind in ["corpus", "regressions"] {
            let dir = root.join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).unwrap();
                let outcome = std::panic::catch_unwind(|| harness::run(target, &data));
                if outcome.is_err() {
                    failures.push(f.display().to_string());
                }
                n += 1;
            }
        }
        assert!(n > 0, "fuzz target `{target}` has no corpus");
        counts.push(format!("{target} {n}"));
    }
    println!("replayed: {}", counts.join(", "));
    assert!(failures.is_empty(), "panicked on: {failures:?}");
}
