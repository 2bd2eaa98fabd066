//! The GPU backend's generated kernels, run by its CPU simulator, against the reference
//! interpreter: every fixture, original and exactly optimised, on the fixtures' golden inputs.

use std::collections::HashMap;
use std::path::Path;

use attnopt_gpu::simrun::SimModel;
use attnopt_ir::{interp, Graph, Tensor};
use attnopt_rewrite::{optimize, Options, RuleSet};

fn inputs_of(dir: &Path, g: &Graph) -> HashMap<String, Tensor> {
    let all = attnopt::tensors::read(&dir.join("golden.safetensors")).unwrap();
    let takes: Vec<&str> = g.inputs().iter().map(|(n, _)| n.as_str()).collect();
    all.into_iter()
        .filter(|(k, _)| takes.contains(&k.as_str()))
        .collect()
}

fn check(model: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model);
    let m = attnopt_import::load(&dir).unwrap();
    let rules = RuleSet::embedded().unwrap();
    let opt = optimize(&m.graph, &Options::exact(&rules, 128)).unwrap();
    let inputs = inputs_of(&dir, &m.graph);
    for (label, g) in [("original", m.graph.clone()), ("optimised", opt.graph)] {
        let want = interp::run(&g, &inputs, &[]).unwrap();
        let sim = SimModel::new(&g).unwrap();
        let got = sim
            .run(&inputs)
            .unwrap_or_else(|e| panic!("{model} {label}: {e}"));
        for (name, w) in &want {
            let gt = &got[name];
            let err = gt.max_abs_diff(w).expect("same shape") as f64;
            let scale = (w.max_abs() as f64).max(1e-6);
            println!(
                "{model} {label} {name}: simulated GPU vs interpreter {:.2e} relative",
                err / scale
            );
            assert!(
                err <= 1e-5 * scale,
                "{model} {label} {name}: {err} (scale {scale})"
            );
        }
    }
}

#[test]
fn bert_on_the_simulated_gpu() {
    check("bert");
}

#[test]
fn gpt2_on_the_simulated_gpu() {
    check("gpt2");
}

#[test]
fn gpt2_linear_on_the_simulated_gpu() {
    check("gpt2-linear");
}

#[test]
fn gpt2_sparse_ff_on_the_simulated_gpu() {
    check("gpt2-sparse-ff");
}

#[test]
fn gpt2_sparse_qkv_on_the_simulated_gpu() {
    check("gpt2-sparse-qkv");
}

#[test]
fn llama_on_the_simulated_gpu() {
    check("llama");
}

#[test]
fn vit_on_the_simulated_gpu() {
    check("vit");
}

#[test]
fn vit_hydra_on_the_simulated_gpu() {
    check("vit-hydra");
}

/// `model` with every layer converted to Hydra attention (no budget): non-causal (BERT) and
/// causal (GPT-2), both with the padding mask the rules keep.
fn check_hydra(model: &str, seq: usize) {
    use attnopt::optimize::{optimize, OptimizeOptions};
    use attnopt::Model;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model);
    let m = Model::load(&dir).unwrap();
    let opts = OptimizeOptions {
        allow: vec!["hydra".into()],
        budget: Some(1e9),
        calib: Some(dir.join("golden.safetensors")),
        // Costs at long sequences, where the linear form wins (and the lowering finds it).
        seqs: vec![4096],
        ..OptimizeOptions::default()
    };
    let opt = optimize(&m, &opts, &mut |_| {}).unwrap();
    let g = opt.graph;
    let inputs: HashMap<String, Tensor> = attnopt::calib::calibration_inputs(&m, None, seq, 5)
        .unwrap()
        .into_iter()
        .collect();
    let sim = SimModel::new(&g).unwrap();
    let b = interp::bindings(sim.graph(), &inputs).unwrap();
    let p = sim.program(&b).unwrap();
    let hydra: Vec<&str> = p
        .kernels
        .iter()
        .map(|k| k.name.as_str())
        .filter(|n| n.contains("hydra"))
        .collect();
    // With an attention mask the converted layer keeps a masking product, which the fused
    // Hydra kernel does not take (the kernel itself is tested below on its own graphs).
    println!("{model}: Hydra kernels {hydra:?}");
    let want = interp::run(&g, &inputs, &[]).unwrap();
    let got = sim.execute(&p, &inputs).unwrap();
    for (name, w) in &want {
        let err = got[name].max_abs_diff(w).expect("same shape") as f64;
        let scale = (w.max_abs() as f64).max(1e-6);
        println!("{model} hydra {name}: {:.2e} relative", err / scale);
        assert!(
            err <= 1e-5 * scale,
            "{model} hydra {name}: {err} (scale {scale})"
        );
    }
}

#[test]
fn hydra_bert_on_the_simulated_gpu() {
    check_hydra("bert", 64);
}

#[test]
fn causal_hydra_gpt2_on_the_simulated_gpu() {
    check_hydra("gpt2", 64);
}

/// The Hydra graph over `[B, N, D]`: from one `[B, N, 3D]` input sliced V | Q | K (read in
/// place by the kernel), or from three inputs.
fn hydra_graph(d: usize, causal: bool, fused: bool) -> Graph {
    use attnopt_ir::builder::Builder;
    use attnopt_ir::{DType, Dim, Op, Role, Shape, BATCH, SEQ};
    let mut b = Builder::new();
    let (q, k, v) = if fused {
        let x = b
            .graph
            .input(
                "qkv",
                DType::F32,
                Shape(vec![BATCH, SEQ, Dim::Fixed(3 * d)]),
            )
            .unwrap();
        let mut slice = |start: usize| {
            b.op(
                Op::Slice {
                    axis: 2,
                    start,
                    end: Dim::Fixed(start + d),
                },
                &[x],
                Role::QProj,
            )
            .unwrap()
        };
        let (v, q, k) = (slice(0), slice(d), slice(2 * d));
        (q, k, v)
    } else {
        let s = Shape(vec![BATCH, SEQ, Dim::Fixed(d)]);
        let mut input = |n: &str| b.graph.input(n, DType::F32, s.clone()).unwrap();
        (input("q"), input("k"), input("v"))
    };
    let out = b.hydra_linear(q, k, v, causal, 1e-12).unwrap();
    b.graph.set_output("out", out).unwrap();
    b.finish()
}

/// The Hydra kernels (sums per chunk, then outputs or the causal scan) against the interpreter
/// on random shapes: odd widths, several batches, one token, several chunks, rows of zeros
/// (the `eps` path), Q/K/V in place in a fused buffer or separate.
#[test]
fn hydra_kernels_on_random_shapes() {
    let mut rng = attnopt_ir::rng::Rng::new(7);
    for case in 0..24 {
        let d = [1, 5, 32, 33, 70, 130][case % 6];
        let (causal, fused) = (case % 2 == 0, case % 3 != 0);
        let batch = 1 + rng.below(3);
        let tokens = [1, 7, 64, 100][rng.below(4)];
        let g = hydra_graph(d, causal, fused);
        let mut inputs = HashMap::new();
        for (name, _) in g.inputs() {
            let w = if fused { 3 * d } else { d };
            let mut x = rng.values(batch * tokens * w, -1.0, 1.0);
            // Every fifth token all zeros.
            for (r, row) in x.chunks_mut(w).enumerate() {
                if r % 5 == 4 {
                    row.fill(0.0);
                }
            }
            inputs.insert(
                name.clone(),
                Tensor::f32(vec![batch, tokens, w], x).unwrap(),
            );
        }
        let sim = SimModel::new(&g).unwrap();
        let b = interp::bindings(sim.graph(), &inputs).unwrap();
        let p = sim.program(&b).unwrap();
        assert!(
            p.kernels.iter().any(|k| k.name.starts_with("k_hydra")),
            "d={d} causal={causal} fused={fused}: no Hydra kernel"
        );
        let want = interp::run(&g, &inputs, &[]).unwrap();
        let got = sim.execute(&p, &inputs).unwrap();
        let err = got["out"].max_abs_diff(&want["out"]).unwrap() as f64;
        let scale = (want["out"].max_abs() as f64).max(1e-6);
        assert!(
            err <= 1e-5 * scale,
            "d={d} causal={causal} fused={fused} batch={batch} tokens={tokens}: {err} (scale {scale})"
        );
    }
}

/// Softmax attention over inputs `q [B, N, H·d]`, `k`, `v [B, N, Hkv·d]` (and
/// `attention_mask [B, N]` when `padded`), as the templates build it.
fn attention_graph(heads: usize, kv_heads: usize, d: usize, causal: bool, padded: bool) -> Graph {
    use attnopt_ir::builder::{Attention, AttentionKind, Builder};
    use attnopt_ir::{DType, Dim, Shape, BATCH, SEQ};
    let mut b = Builder::new();
    let mut input = |n: &str, w: usize| {
        b.graph
            .input(n, DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(w)]))
            .unwrap()
    };
    let (q, k, v) = (
        input("q", heads * d),
        input("k", kv_heads * d),
        input("v", kv_heads * d),
    );
    let padding_mask = padded.then(|| {
        b.graph
            .input("attention_mask", DType::I64, Shape(vec![BATCH, SEQ]))
            .unwrap()
    });
    let a = Attention {
        kind: AttentionKind::Softmax,
        heads,
        kv_heads,
        head_dim: d,
        causal,
        padding_mask,
        rope: None,
        scale: 1.0 / (d as f32).sqrt(),
    };
    let out = b.attention(q, k, v, &a).unwrap();
    b.graph.set_output("out", out).unwrap();
    b.finish()
}

/// The fused (flash-style) attention kernel against the interpreter on random shapes: several
/// key tiles (up to 300 keys), causal and not, padding masks with fully masked sequences (rows
/// of zeros), grouped-query heads, odd head widths, several batches.
#[test]
fn fused_attention_on_random_shapes() {
    let mut rng = attnopt_ir::rng::Rng::new(11);
    for case in 0..16 {
        let (causal, padded) = (case % 2 == 0, case % 4 < 2);
        let kv_heads = 1 + rng.below(2);
        let heads = kv_heads * (1 + rng.below(2));
        let d = [1, 7, 16, 40][rng.below(4)];
        let batch = 1 + rng.below(2);
        let tokens = [1, 5, 64, 65, 300][rng.below(5)];
        let g = attention_graph(heads, kv_heads, d, causal, padded);
        let mut inputs = HashMap::new();
        for (name, w) in [("q", heads * d), ("k", kv_heads * d), ("v", kv_heads * d)] {
            let x = rng.values(batch * tokens * w, -2.0, 2.0);
            inputs.insert(
                name.to_string(),
                Tensor::f32(vec![batch, tokens, w], x).unwrap(),
            );
        }
        if padded {
            // The last batch row keeps only its first token, or nothing at all.
            let mut m = vec![1i64; batch * tokens];
            let keep = case % 3;
            for t in keep.min(tokens)..tokens {
                m[(batch - 1) * tokens + t] = 0;
            }
            inputs.insert(
                "attention_mask".into(),
                Tensor::i64(vec![batch, tokens], m).unwrap(),
            );
        }
        let sim = SimModel::new(&g).unwrap();
        let b = interp::bindings(sim.graph(), &inputs).unwrap();
        let p = sim.program(&b).unwrap();
        let label = format!(
            "heads {heads}/{kv_heads} d={d} causal={causal} padded={padded} batch={batch} tokens={tokens}"
        );
        assert!(
            p.kernels.iter().any(|k| k.name.starts_with("k_attention")),
            "{label}: attention was not fused: {:?}",
            p.kernels.iter().map(|k| &k.name).collect::<Vec<_>>()
        );
        let want = interp::run(&g, &inputs, &[]).unwrap();
        let got = sim.execute(&p, &inputs).unwrap();
        let err = got["out"].max_abs_diff(&want["out"]).unwrap() as f64;
        let scale = (want["out"].max_abs() as f64).max(1e-6);
        assert!(err <= 1e-5 * scale, "{label}: {err} (scale {scale})");
    }
}
