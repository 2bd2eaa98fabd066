//! `--allow sparse-qkv` and `--allow sparse-ff` on dense fixtures: the layers that can be
//! converted are (with `--budget inf`), the written folder reads fewer weight bytes per token and
//! runs the fused sparse kernels, the CPU backend agrees with the interpreter on it, the
//! report's errors agree with an independent run of the folder, and what cannot be converted
//! says why.

use std::collections::BTreeMap;

use attnopt::optimize::{optimize, OptimizeOptions};
use attnopt::{Backend, CpuOptions, Model, RunOptions};
use attnopt_ir::Tensor;

#[path = "support/models.rs"]
mod models;
use models::{fixture, golden_inputs, relative};

fn options(allow: &[&str], budget: Option<f64>) -> OptimizeOptions {
    let mut o = OptimizeOptions {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        budget,
        calib_seq: 64,
        ..OptimizeOptions::default()
    };
    o.sparse.ff_block = 8;
    o
}

fn cpu() -> RunOptions {
    RunOptions {
        all_layers: false,
        backend: Backend::Cpu(CpuOptions {
            threads: 2,
            ..CpuOptions::default()
        }),
    }
}

/// Converts `name` with both families and every layer allowed; checks the report and the folder.
fn converts_every_layer(name: &str) {
    let dir = fixture(name);
    let model = Model::load(&dir).unwrap();
    let opt = optimize(
        &model,
        &options(&["sparse-qkv", "sparse-ff"], Some(f64::INFINITY)),
        &mut |_| {},
    )
    .unwrap();
    for l in &opt.report.layers {
        assert_eq!(
            l.converted,
            ["sparse-qkv", "sparse-ff"].map(String::from).to_vec(),
            "{name} layer {}: {:?}",
            l.layer,
            l.reason
        );
        let w = l.weights.expect("weight bytes are reported");
        assert!(w.after < w.before, "{name} layer {}: {w:?}", l.layer);
        let ff = l.fit["sparse-ff"];
        let (hb, ha) = (ff.hit_rate_before.unwrap(), ff.hit_rate_after.unwrap());
        assert!((0.0..=1.0).contains(&hb) && (0.0..=1.0).contains(&ha));
        assert!(ff.rows_held_out > 0 && ff.rows_fit > ff.rows_held_out);
        let qkv = l.fit["sparse-qkv"];
        assert!(qkv.error_before.is_finite() && qkv.error_after.is_finite());
        assert!(
            l.error_alone.contains_key("sparse-ff") && l.error_alone.contains_key("sparse-qkv")
        );
    }
    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("sparse");
    attnopt::save::save(&model, &opt, &folder, &Default::default()).unwrap();
    let converted = Model::load(&folder).unwrap();
    let inputs = golden_inputs(&model, &dir);
    let want = converted
        .run(inputs.clone(), RunOptions::default())
        .unwrap();
    let got = converted.run(inputs.clone(), cpu()).unwrap();
    let err = relative(&got["last_hidden_state"], &want["last_hidden_state"]);
    assert!(err < 1e-5, "{name}: CPU backend vs interpreter {err}");
    // One token: the sparse layers run as the fused kernels that read only what they use.
    let one: BTreeMap<String, Tensor> = inputs
        .iter()
        .map(|(k, t)| {
            let v = t.as_i64().unwrap()[..1].to_vec();
            (k.clone(), Tensor::i64(vec![1, 1], v).unwrap())
        })
        .collect();
    let want = converted.run(one.clone(), RunOptions::default()).unwrap();
    let got = converted.run(one, cpu()).unwrap();
    let err = relative(&got["last_hidden_state"], &want["last_hidden_state"]);
    assert!(err < 1e-5, "{name}: one token, CPU vs interpreter {err}");
    let lowered =
        attnopt_lower::lower(converted.graph(), &attnopt_ir::Bindings::new(1, 1)).unwrap();
    let kinds: Vec<&str> = lowered.kernels.iter().map(|k| k.name.as_str()).collect();
    let layers = opt.report.layers.len();
    assert_eq!(
        kinds.iter().filter(|k| **k == "sparse_ff").count(),
        layers,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| **k == "factored").count() >= layers,
        "{kinds:?}"
    );
    // The report's final error is the folder's, measured independently on the calibration
    // inputs' kind of data: here on the golden inputs, which the fit never saw, it is finite
    // and the conversion is visibly approximate (these fixtures were trained dense).
    let original = model.run(inputs.clone(), RunOptions::default()).unwrap();
    let now = converted.run(inputs, RunOptions::default()).unwrap();
    let e = relative(&now["last_hidden_state"], &original["last_hidden_state"]);
    assert!(e.is_finite() && e > 1e-3, "{name}: {e}");
}

#[test]
fn gpt2_converts_to_sparse_qkv_and_sparse_ff() {
    converts_every_layer("gpt2");
}

#[test]
fn bert_converts_to_sparse_qkv_and_sparse_ff() {
    // Separate Q, K and V products with PyTorch's [out, in] weights, erf GELU.
    converts_every_layer("bert");
}

#[test]
fn the_default_budget_converts_nothing_here_and_says_why() {
    let model = Model::load(&fixture("gpt2")).unwrap();
    let opt = optimize(&model, &options(&["sparse-ff"], None), &mut |_| {}).unwrap();
    for l in &opt.report.layers {
        assert!(l.converted.is_empty(), "layer {}", l.layer);
        let why = l.reason.as_deref().unwrap_or("");
        assert!(why.contains("budget"), "layer {}: {why}", l.layer);
        assert!(l.eligible);
    }
}

#[test]
fn what_cannot_be_converted_says_why() {
    // LLaMA's feed-forward is gated (SwiGLU); its Q/K/V products factor (RoPE and grouped
    // K/V heads come after them), the factors stored bf16 like the weights they replace.
    let model = Model::load(&fixture("llama")).unwrap();
    let opt = optimize(
        &model,
        &options(&["sparse-ff", "sparse-qkv"], Some(f64::INFINITY)),
        &mut |_| {},
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    attnopt::save::save(&model, &opt, &dir.path().join("o"), &Default::default()).unwrap();
    let back = Model::load(&dir.path().join("o")).unwrap();
    let factors = back
        .graph()
        .weights()
        .iter()
        .filter(|w| w.name().ends_with(".gating") || w.name().ends_with(".projection"))
        .map(|w| w.dtype())
        .collect::<Vec<_>>();
    assert!(!factors.is_empty() && factors.iter().all(|d| *d == attnopt_ir::DType::BF16));
    for l in &opt.report.layers {
        assert_eq!(l.converted, ["sparse-qkv".to_string()], "layer {}", l.layer);
        let why = l.reason.as_deref().unwrap_or("");
        assert!(
            why.contains("sparse-ff: not supported yet: a gated feed-forward"),
            "layer {}: {why}",
            l.layer
        );
    }
    // Blocks that do not divide the units.
    let mut o = options(&["sparse-ff"], Some(f64::INFINITY));
    o.sparse.ff_block = 7;
    let opt = optimize(&Model::load(&fixture("gpt2")).unwrap(), &o, &mut |_| {}).unwrap();
    for l in &opt.report.layers {
        let why = l.reason.as_deref().unwrap_or("");
        assert!(why.contains("blocks of 7 units do not divide"), "{why}");
    }
}
