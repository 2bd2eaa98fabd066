//! The reference interpreter against PyTorch/transformers goldens (fixtures/*/golden.safetensors,
//! made by fixtures/gen/generate.py). Prints the max-abs error of every output per model.

use std::collections::HashMap;
use std::path::Path;

use attnopt_ir::{interp, Tensor};

/// Max-abs error relative to the largest golden magnitude. Tighter than the 1e-4 the issue
/// asks for: the linear-attention fixture's eps and scale mistakes move outputs by ~1e-4.
const TOLERANCE: f32 = 1e-5;

fn check(model: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model);
    let m = attnopt_import::load(&dir).unwrap_or_else(|e| panic!("{model}: import failed: {e}"));
    let golden =
        attnopt::tensors::read(&dir.join("golden.safetensors")).expect("golden file reads");
    let inputs: HashMap<String, Tensor> = golden
        .iter()
        .filter(|(k, _)| m.graph.inputs().iter().any(|(n, _)| n == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let outs =
        interp::run(&m.graph, &inputs, &[]).unwrap_or_else(|e| panic!("{model}: run failed: {e}"));
    let mut worst = 0f32;
    let mut names: Vec<&String> = outs.keys().collect();
    names.sort();
    for name in names {
        let got = &outs[name];
        let want = golden
            .get(name)
            .unwrap_or_else(|| panic!("{model}: golden has no `{name}`"));
        let err = got.max_abs_diff(want).unwrap_or_else(|| {
            panic!(
                "{model}/{name}: shape {:?} vs golden {:?}",
                got.shape(),
                want.shape()
            )
        });
        let scale = want.max_abs().max(1e-6);
        println!(
            "{model:6} {name:18} max-abs error {err:.3e} (relative to max |golden| {:.3e}: {:.3e})",
            scale,
            err / scale
        );
        assert!(
            err / scale <= TOLERANCE,
            "{model}/{name}: max-abs error {err} exceeds {TOLERANCE} × {scale}"
        );
        worst = worst.max(err);
    }
    println!("{model:6} worst max-abs error {worst:.3e}");
}

#[test]
fn bert_matches_pytorch() {
    check("bert");
}

#[test]
fn gpt2_matches_pytorch() {
    check("gpt2");
}

#[test]
fn vit_matches_pytorch() {
    check("vit");
}

#[test]
fn llama_matches_pytorch() {
    check("llama");
}

#[test]
fn hydra_vit_matches_pytorch() {
    check("vit-hydra");
}

#[test]
fn linear_gpt2_matches_pytorch() {
    check("gpt2-linear");
}

#[test]
fn sparse_qkv_gpt2_matches_pytorch() {
    check("gpt2-sparse-qkv");
}

#[test]
fn sparse_ff_gpt2_matches_pytorch() {
    check("gpt2-sparse-ff");
}
