//! The CPU backend against the reference interpreter and the PyTorch goldens, on every fixture,
//! for the original and the exactly optimised graph; and its bf16 precision's error against the
//! f32 interpreter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use attnopt::report::ErrorStat;
use attnopt_cpu::matmul::{GemmMatMul, MatMul, Precision};
use attnopt_cpu::CpuModel;
use attnopt_import::Imported;
use attnopt_ir::{interp, Graph, Tensor};
use attnopt_rewrite::{optimize, Options, RuleSet};

/// A fixture's folder, its import, and its original and exactly optimised graphs.
fn fixture(model: &str) -> (PathBuf, Imported, [(&'static str, Graph); 2]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model);
    let m = attnopt_import::load(&dir).unwrap();
    let rules = RuleSet::embedded().unwrap();
    let opt = optimize(&m.graph, &Options::exact(&rules, 128)).unwrap();
    let graphs = [("original", m.graph.clone()), ("optimised", opt.graph)];
    (dir, m, graphs)
}

fn check(model: &str) {
    let (dir, m, graphs) = fixture(model);
    let all = attnopt::tensors::read(&dir.join("golden.safetensors")).unwrap();
    let takes: Vec<&str> = m.graph.inputs().iter().map(|(n, _)| n.as_str()).collect();
    let inputs: HashMap<String, Tensor> = all
        .iter()
        .filter(|(k, _)| takes.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (label, graph) in graphs {
        let want = interp::run(&graph, &inputs, &[]).unwrap();
        // The best library here (oneDNN when installed) with epilogues fused into its products
        // and as JIT passes, and the pure-Rust fallback.
        let gemm: Box<dyn attnopt_cpu::matmul::MatMul> =
            Box::new(attnopt_cpu::matmul::GemmMatMul::new(2));
        let mut jit_epilogues = CpuModel::new(graph.clone(), 2).unwrap();
        jit_epilogues.set_post_ops(false);
        for mut cpu in [
            CpuModel::new(graph.clone(), 2).unwrap(),
            jit_epilogues,
            CpuModel::with_matmul(graph.clone(), 2, gemm, "forced".into()).unwrap(),
        ] {
            let (got, _) = cpu.run(&inputs, &[], false).unwrap();
            for (name, w) in &want {
                let g = &got[name];
                let scale = w.max_abs().max(1e-6);
                let err = g.max_abs_diff(w).expect("same shape");
                let gerr = g.max_abs_diff(&all[name]).expect("same shape as golden");
                println!(
                    "{model} {label} {name}: cpu vs interp {err:.2e}, vs PyTorch {gerr:.2e} ({}, post-ops {})",
                    cpu.matmul_name().0,
                    cpu.post_ops()
                );
                assert!(
                    err <= 1e-5 * scale,
                    "{model} {label} {name}: cpu differs from the interpreter by {err}"
                );
                assert!(
                    gerr <= 1e-5 * scale,
                    "{model} {label} {name}: cpu differs from PyTorch by {gerr}"
                );
            }
        }
        // bf16: oneDNN's native kernels where the CPU has them, and gemm's emulation.
        let gemm16: Box<dyn MatMul> = Box::new(GemmMatMul::with_precision(2, Precision::Bf16));
        for mut cpu in [
            CpuModel::with_precision(graph.clone(), 2, Precision::Bf16).unwrap(),
            CpuModel::with_matmul(graph.clone(), 2, gemm16, "forced".into()).unwrap(),
        ] {
            let (got, _) = cpu.run(&inputs, &[], false).unwrap();
            let mut worst = 0f64;
            for (name, w) in &want {
                let e = ErrorStat::between(&got[name], w);
                println!(
                    "{model} {label} {name}: bf16 vs the f32 interpreter: max-abs {:.2e}, relative {:.2e} ({})",
                    e.max_abs,
                    e.relative,
                    cpu.matmul_name().0
                );
                // bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operand);
                // over a few layers the error stays at that scale.
                assert!(
                    e.relative <= 2e-2,
                    "{model} {label} {name}: bf16 relative error {}",
                    e.relative
                );
                worst = worst.max(e.relative);
            }
            // Not f32 in disguise.
            assert!(
                worst > 1e-5,
                "{model} {label}: bf16 error {worst} looks like f32"
            );
            // Weights used only by products, and embedding tables, are never widened to f32.
            let widened = cpu.widened_weights();
            assert!(
                !widened
                    .iter()
                    .any(|n| n.ends_with("proj.weight") || n.contains("embed_tokens")),
                "{model} {label}: f32 copies of product weights: {widened:?}"
            );
        }
    }
}

#[test]
fn bert_on_cpu() {
    check("bert");
}

#[test]
fn gpt2_on_cpu() {
    check("gpt2");
}

#[test]
fn vit_on_cpu() {
    check("vit");
}

#[test]
fn llama_on_cpu() {
    check("llama");
}

#[test]
fn vit_hydra_on_cpu() {
    check("vit-hydra");
}

#[test]
fn gpt2_linear_on_cpu() {
    check("gpt2-linear");
}

#[test]
fn gpt2_sparse_qkv_on_cpu() {
    check("gpt2-sparse-qkv");
}

/// Also: in the original and the optimised graph alike, the sparse feed-forward is one kernel
/// per layer that reads only the chosen units (the optimizer must not fuse its first product
/// with the controller's).
#[test]
fn gpt2_sparse_ff_on_cpu() {
    check("gpt2-sparse-ff");
    let (_, m, graphs) = fixture("gpt2-sparse-ff");
    for (label, graph) in graphs {
        let mut cpu = CpuModel::new(graph, 2).unwrap();
        let ins = HashMap::from([
            (
                "input_ids".to_string(),
                Tensor::i64(vec![1, 3], vec![1, 2, 3]).unwrap(),
            ),
            (
                "attention_mask".to_string(),
                Tensor::i64(vec![1, 3], vec![1; 3]).unwrap(),
            ),
        ]);
        cpu.run(&ins, &[], false).unwrap();
        let names: Vec<String> = (cpu.lowered(1, 3).unwrap().kernels.iter())
            .map(|k| k.name.clone())
            .collect();
        assert_eq!(
            names.iter().filter(|n| *n == "sparse_ff").count(),
            m.dims.layers,
            "{label}: {names:?}"
        );
    }
}

/// Zero tokens: wherever the interpreter answers, every CPU configuration answers the same
/// (empty) shapes; none panics (views over an empty QKV buffer, RoPE, bf16 panels).
#[test]
fn zero_tokens_behave_like_the_interpreter() {
    for model in [
        "bert",
        "gpt2",
        "llama",
        "gpt2-linear",
        "gpt2-sparse-qkv",
        "gpt2-sparse-ff",
    ] {
        let (_, m, graphs) = fixture(model);
        let mut inputs = HashMap::new();
        for (name, _) in m.graph.inputs() {
            inputs.insert(name.clone(), Tensor::i64(vec![1, 0], vec![]).unwrap());
        }
        for (label, graph) in graphs {
            let want = interp::run(&graph, &inputs, &[]);
            let gemm16: Box<dyn MatMul> = Box::new(GemmMatMul::with_precision(2, Precision::Bf16));
            for mut cpu in [
                CpuModel::new(graph.clone(), 2).unwrap(),
                CpuModel::with_precision(graph.clone(), 2, Precision::Bf16).unwrap(),
                CpuModel::with_matmul(graph.clone(), 2, gemm16, "forced".into()).unwrap(),
            ] {
                let got = cpu.run(&inputs, &[], false);
                match (&want, &got) {
                    (Ok(w), Ok((g, _))) => {
                        for (name, t) in w {
                            assert_eq!(g[name].shape(), t.shape(), "{model} {label} {name}");
                        }
                    }
                    (Err(_), Err(_)) => {}
                    (w, g) => panic!(
                        "{model} {label} ({}): interpreter {:?} but cpu {:?}",
                        cpu.matmul_name().0,
                        w.as_ref().map(|_| ()),
                        g.as_ref().map(|_| ())
                    ),
                }
            }
        }
    }
}
