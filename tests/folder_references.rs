//! Optimised folders refer to their source's tensors instead of copying them: weight-only
//! transformations (Q/K/V concatenation, scale folding) stay graph nodes over the source's
//! tensors and are folded by the backend. `--standalone` folds and copies instead, for folders
//! that move without their source.

#[path = "support/cli.rs"]
mod cli;
use cli::{attnopt_in, root};

use std::path::Path;
use std::process::Output;

fn ok(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{e}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The max-abs error `run --compare` prints for `last_hidden_state`.
fn error_vs_golden(dir: &Path, model: &str, golden: &str, backend: &str) -> f64 {
    let out = ok(&attnopt_in(
        dir,
        &[
            "run",
            model,
            "-i",
            golden,
            "--compare",
            golden,
            "--backend",
            backend,
        ],
    ));
    let line = out
        .lines()
        .find(|l| l.starts_with("last_hidden_state") && l.contains("max-abs error"))
        .unwrap_or_else(|| panic!("no error line: {out}"));
    line.rsplit(": ").next().unwrap().trim().parse().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn exact_folders_hold_no_weights_and_still_match_the_goldens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for model in ["bert", "gpt2", "llama"] {
        let src = root().join("fixtures").join(model);
        let golden = src.join("golden.safetensors");
        let out = format!("{model}-opt");
        ok(&attnopt_in(
            dir,
            &["optimize", src.to_str().unwrap(), "-o", &out],
        ));
        let graph = std::fs::read_to_string(dir.join(&out).join("graph.txt")).unwrap();
        assert!(
            !dir.join(&out).join("weights.safetensors").exists(),
            "{model}: an exact-only folder copies no weights"
        );
        // The fused Q/K/V weight is a concatenation of the source's tensors in the graph
        // (GPT-2's checkpoint stores Q/K/V fused already).
        if model != "gpt2" {
            assert!(graph.contains("concat"), "{model}: {graph}");
        }
        for backend in ["interp", "cpu"] {
            let e = error_vs_golden(dir, &out, golden.to_str().unwrap(), backend);
            assert!(e < 1e-4, "{model} on {backend}: {e}");
        }
    }
}

#[test]
fn standalone_folders_run_without_their_source() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&root().join("fixtures/llama"), &dir.join("llama"));
    std::fs::copy(
        dir.join("llama/golden.safetensors"),
        dir.join("golden.safetensors"),
    )
    .unwrap();
    ok(&attnopt_in(dir, &["optimize", "llama", "-o", "ref"]));
    ok(&attnopt_in(
        dir,
        &["optimize", "llama", "-o", "alone", "--standalone"],
    ));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("alone/attnopt.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["source_files"].as_array().map(Vec::len), Some(0));
    // The source goes away: the referring folder is refused, the standalone one runs.
    std::fs::remove_dir_all(dir.join("llama")).unwrap();
    let o = attnopt_in(
        dir,
        &[
            "run",
            "ref",
            "-i",
            "golden.safetensors",
            "-o",
            "x.safetensors",
        ],
    );
    assert!(!o.status.success());
    let e = error_vs_golden(dir, "alone", "golden.safetensors", "cpu");
    assert!(e < 1e-4, "{e}");
}

/// A LLaMA-3-70B-shaped checkpoint (80 layers, bf16, 140 GB in 30 shards, zeros as sparse
/// files): the exact-only optimised folder is the graph, the manifest and the reports, with no
/// weights. (Time and memory are measured in docs/BENCHMARKS.md, not asserted here.)
#[test]
fn a_70b_shaped_checkpoint_optimises_into_a_small_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("llama70b");
    let spec = attnopt::import::synthetic::llama70b_spec(80);
    attnopt::import::synthetic::write(&spec, &src, 5_000_000_000).unwrap();
    let out = tmp.path().join("opt");
    ok(&attnopt_in(
        tmp.path(),
        &["optimize", "llama70b", "-o", "opt"],
    ));
    let mut bytes = 0;
    for f in std::fs::read_dir(&out).unwrap() {
        let f = f.unwrap();
        assert_ne!(f.file_name(), "weights.safetensors");
        bytes += f.metadata().unwrap().len();
    }
    assert!(bytes < 2_000_000, "{bytes} bytes");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("attnopt.json")).unwrap()).unwrap();
    assert_eq!(manifest["source_files"].as_array().map(Vec::len), Some(30));
    // inspect loads it back (fingerprints checked, graph parsed against 723 source tensors).
    let text = ok(&attnopt_in(tmp.path(), &["inspect", "opt"]));
    assert!(text.contains("layers 80"), "{text}");
}
