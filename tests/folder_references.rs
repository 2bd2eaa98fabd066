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

/// A dense GPT-2 checkpoint whose block-0 `c_attn` weight is a `FactoredDense` exported dense
/// (every row rank 1 as 12 × 8): `optimize` proves it (`factored`), the folder stores just the
/// two factors, and the folder computes what the source does.
#[test]
fn a_factored_weight_exported_dense_is_found_and_stored_as_its_factors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_dir(&root().join("fixtures/gpt2"), &src);
    let file = src.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (d_in, s, m) = (32usize, 12usize, 8usize);
    let mut r = attnopt_ir::rng::Rng::new(11);
    let (g, p) = (r.values(s * d_in, -0.5, 0.5), r.values(d_in * m, -0.5, 0.5));
    let w: Vec<u8> = (0..d_in * s * m)
        .flat_map(|i| {
            let (d, j) = (i / (s * m), i % (s * m));
            (g[(j / m) * d_in + d] * p[d * m + j % m]).to_le_bytes()
        })
        .collect();
    let name = "h.0.attn.c_attn.weight";
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d_in, s * m], &w);
    tensors.push((name.to_string(), view.unwrap()));
    std::fs::write(&file, safetensors::serialize(tensors, None).unwrap()).unwrap();

    let dir = tmp.path();
    ok(&attnopt_in(dir, &["optimize", "src", "-o", "opt"]));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("opt/report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["layers"][0]["rules_fired"]["factored"], 1,
        "{report}"
    );
    assert!(report["layers"][1]["rules_fired"].get("factored").is_none());
    // The factors read fewer bytes: 32·(12 + 8) against 32·96 floats.
    let w0 = &report["layers"][0]["weights"];
    assert_eq!(
        w0["before"].as_u64().unwrap() - w0["after"].as_u64().unwrap(),
        4 * (32 * 96 - 32 * 20)
    );
    let stored = std::fs::read(dir.join("opt/weights.safetensors")).unwrap();
    let stored = safetensors::SafeTensors::deserialize(&stored).unwrap();
    let mut names: Vec<String> = stored.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "h.0.attn.c_attn.weight.factored.gating",
            "h.0.attn.c_attn.weight.factored.projection"
        ]
    );
    let golden = root().join("fixtures/gpt2/golden.safetensors");
    let golden = golden.to_str().unwrap();
    ok(&attnopt_in(
        dir,
        &["run", "src", "-i", golden, "-o", "want.safetensors"],
    ));
    let out = ok(&attnopt_in(
        dir,
        &["run", "opt", "-i", golden, "--compare", "want.safetensors"],
    ));
    let line = out
        .lines()
        .find(|l| l.starts_with("last_hidden_state") && l.contains("max-abs error"))
        .unwrap_or_else(|| panic!("no error line: {out}"));
    let err: f64 = line.rsplit(": ").next().unwrap().trim().parse().unwrap();
    assert!(err < 1e-4, "{out}");
}
