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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(model);
    let m = attnopt_import::load(&dir).unwrap();
    let rules = RuleSet::embedded().unwrap();
    let opt = optimize(&m.graph, &Options::exact(&rules, 128)).unwrap();
    let inputs = inputs_of(&dir, &m.graph);
    for (label, g) in [("original", m.graph.clone()), ("optimised", opt.graph)] {
        let want = interp::run(&g, &inputs, &[]).unwrap();
        let sim = SimModel::new(&g).unwrap();
        let got = sim.run(&inputs).unwrap_or_else(|e| panic!("{model} {label}: {e}"));
        for (name, w) in &want {
            let gt = &got[name];
            let err = gt.max_abs_diff(w).expect("same shape") as f64;
            let scale = (w.max_abs() as f64).max(1e-6);
            println!("{model} {label} {name}: simulated GPU vs interpreter {:.2e} relative", err / scale);
            assert!(err <= 1e-5 * scale, "{model} {label} {name}: {err} (scale {scale})");
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
