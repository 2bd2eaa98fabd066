//! Exact-only optimisation changes no output: every fixture, optimised at short and long
//! target lengths, evaluates like the original (and like the PyTorch goldens). On the models
//! trained with Hydra and linear attention, the attention rules must fire and pay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use attnopt_ir::{interp, Tensor};
use attnopt_rewrite::report::costs_at;
use attnopt_rewrite::{optimize, Options, RuleSet};

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model)
}

fn golden_inputs(
    m: &attnopt_import::Imported,
    dir: &Path,
) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let all = attnopt::tensors::read(&dir.join("golden.safetensors")).unwrap();
    let takes: Vec<&str> = m.graph.inputs().iter().map(|(n, _)| n.as_str()).collect();
    all.into_iter()
        .partition(|(k, _)| takes.contains(&k.as_str()))
}

/// Optimises `model` at `seq` and checks every output against the original and the goldens.
fn exact_optimisation_keeps_outputs(model: &str, seq: usize) -> attnopt_rewrite::Optimized {
    let rules = RuleSet::embedded().unwrap();
    let dir = fixture(model);
    let m = attnopt_import::load(&dir).unwrap();
    let o = optimize(&m.graph, &Options::exact(&rules, seq)).unwrap();
    let (inputs, golden) = golden_inputs(&m, &dir);
    let before = interp::run(&m.graph, &inputs, &[]).unwrap();
    let after = interp::run(&o.graph, &inputs, &[]).unwrap();
    for (name, want) in &before {
        let got = &after[name];
        let scale = want.max_abs().max(1e-6);
        let err = got.max_abs_diff(want).expect("same shape");
        let gerr = got
            .max_abs_diff(&golden[name])
            .expect("same shape as golden");
        println!("{model} @N={seq} {name}: vs original {err:.2e}, vs PyTorch {gerr:.2e}");
        assert!(
            err <= 1e-5 * scale,
            "{model}/{name} at N={seq}: optimised differs from original by {err}"
        );
        assert!(
            gerr <= 1e-5 * scale,
            "{model}/{name} at N={seq}: optimised differs from PyTorch by {gerr}"
        );
    }
    for (l, s) in &o.layers {
        println!(
            "  layer {l}: {} → {:.3e} s, fired {:?}, fallback {:?}",
            s.stats.stop_reason, s.stats.model_cost_after, s.stats.rules_fired, s.stats.fallback
        );
        assert!(
            s.stats.fallback.is_none(),
            "{model} layer {l}: {:?}",
            s.stats.fallback
        );
    }
    o
}

#[test]
fn exact_rules_keep_every_fixture_output() {
    for model in [
        "bert",
        "gpt2",
        "vit",
        "llama",
        "vit-hydra",
        "gpt2-linear",
        "gpt2-sparse-qkv",
        "gpt2-sparse-ff",
    ] {
        for seq in [128, 4096] {
            exact_optimisation_keeps_outputs(model, seq);
        }
    }
}

/// Softmax-attention fixtures: Q/K/V fusion and the softmax scale folded into the Q weights.
#[test]
fn softmax_models_fuse_qkv_and_fold_the_scale() {
    for model in ["bert", "vit", "llama"] {
        let o = exact_optimisation_keeps_outputs(model, 128);
        for s in o.layers.values() {
            assert!(
                s.stats.rules_fired.contains_key("qkv-fusion"),
                "{model}: {:?}",
                s.stats.rules_fired
            );
        }
        let text = o.graph.to_string();
        // Every remaining scale acts on a weight (fixed shape), none on activations ([B, ...]).
        let scales: Vec<&str> = text.lines().filter(|l| l.contains("scale{")).collect();
        assert!(
            !scales.is_empty() && scales.iter().all(|l| !l.contains("[B")),
            "{model}: a scale acts on activations:\n{text}"
        );
    }
}

/// Hydra-trained ViT: the naive O(N²·D) attention becomes φQ ⊙ Σ φK ⊙ V; the attention core's
/// FLOPs at N = 4096 drop by ≥ 100×, and outputs still match PyTorch.
#[test]
fn hydra_vit_collapses_to_linear_form() {
    let o = exact_optimisation_keeps_outputs("vit-hydra", 4096);
    for (l, s) in &o.layers {
        assert!(
            s.stats.tokens_generalised,
            "layer {l}: the 17-token axis should be generalised to N"
        );
        let c = costs_at(s, &[4096])[0];
        let ratio = c.attention_before.flops as f64 / c.attention_after.flops.max(1) as f64;
        println!(
            "vit-hydra layer {l}: attention FLOPs at N=4096 {} → {} ({ratio:.0}×)",
            c.attention_before.flops, c.attention_after.flops
        );
        assert!(
            ratio >= 100.0,
            "layer {l}: only {ratio:.1}× fewer attention FLOPs"
        );
        for rule in [
            "reassociate-attention",
            "inner-product-dim1",
            "outer-product-dim1",
            "cancel-merge-split",
        ] {
            assert!(
                s.stats.rules_fired.contains_key(rule),
                "layer {l}: {rule} did not fire: {:?}",
                s.stats.rules_fired
            );
        }
    }
    let text = o.graph.to_string();
    assert!(
        !text.contains("split_heads"),
        "the head split should be gone:\n{text}"
    );
}

/// Causal linear attention (elu+1, 4 heads of 8): the quadratic form becomes a prefix sum at
/// long lengths, and stays quadratic where that is cheaper.
#[test]
fn linear_gpt2_uses_prefix_sums_at_long_lengths() {
    let long = exact_optimisation_keeps_outputs("gpt2-linear", 4096);
    for (l, s) in &long.layers {
        assert!(
            s.stats.rules_fired.contains_key("causal-linear-attention"),
            "layer {l}: {:?}",
            s.stats.rules_fired
        );
        let c = costs_at(s, &[4096])[0];
        println!(
            "gpt2-linear layer {l}: attention FLOPs at N=4096 {} → {}",
            c.attention_before.flops, c.attention_after.flops
        );
        assert!(c.attention_after.flops * 10 < c.attention_before.flops);
    }
    assert!(long.graph.to_string().contains("cumsum"));
}
