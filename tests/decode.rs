//! Decoding sessions (`attnopt::decode`, the step graph of `ir::incremental`): fed a prompt and
//! then tokens one by one (or a few at a time), every run's last logits equal the full forward
//! of the whole text so far, at every position, for every causal fixture — softmax with learned
//! positions (GPT-2), RoPE and GQA (LLaMA), causal linear attention (gpt2-linear: a cache in
//! the original graph, running sums after exact optimisation) — on the interpreter and the CPU
//! backend; models that are not causal decoders say why.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/models.rs"]
mod models;

use std::collections::BTreeMap;
use std::path::Path;

use attnopt::decode::Session;
use attnopt::ir::incremental::StateKind;
use attnopt::ir::rng::Rng;
use attnopt::ir::Tensor;
use attnopt::{Backend, CpuOptions, LoadOptions, Model, RunOptions};
use models::fixture;

fn load(dir: &Path) -> Model {
    let opts = LoadOptions {
        logits: true,
        ..LoadOptions::default()
    };
    Model::load_with(dir, &opts).unwrap()
}

/// The full forward's logits for the last token of `ids`.
fn full_last(model: &Model, ids: &[i64], backend: &Backend) -> Vec<f32> {
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "input_ids".to_string(),
        Tensor::i64(vec![1, ids.len()], ids.to_vec()).unwrap(),
    );
    let opts = RunOptions {
        all_layers: false,
        backend: backend.clone(),
    };
    let out = model.run(inputs, opts).unwrap();
    let logits = out["logits"].as_f32().unwrap();
    let v = logits.len() / ids.len();
    logits[logits.len() - v..].to_vec()
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = (a.iter().zip(b))
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

/// Feeds random text in random chunks (a prompt, then mostly single tokens) and checks every
/// run's logits against the full forward of everything so far.
fn check_steps(model: &Model, backend: &Backend, seed: u64, tokens: usize, tol: f64) {
    let vocab = {
        let g = model.graph();
        let l = g.output("logits").unwrap();
        g.node(l).ty.shape.last().fixed().unwrap()
    };
    let mut rng = Rng::new(seed);
    let mut s = Session::new(model, backend).unwrap();
    let mut ids: Vec<i64> = vec![];
    while ids.len() < tokens {
        let chunk = if ids.is_empty() {
            1 + rng.below(6)
        } else if rng.below(4) == 0 {
            2 + rng.below(3)
        } else {
            1
        };
        let new: Vec<i64> = (0..chunk).map(|_| rng.below(vocab) as i64).collect();
        let got = s.feed(&new).unwrap();
        ids.extend(&new);
        assert_eq!(s.position(), ids.len());
        let want = full_last(model, &ids, &Backend::Interp);
        let err = relative(&got, &want);
        assert!(
            err <= tol,
            "{}: position {} (chunk of {chunk}): step vs full forward {err:e}",
            model.imported().dir.display(),
            ids.len()
        );
    }
}

fn optimised(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(format!("{name}-opt"));
    let o = cli::attnopt(&[
        "optimize",
        fixture(name).to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", cli::stderr(&o));
    (tmp, out)
}

const CAUSAL: [&str; 3] = ["gpt2", "llama", "gpt2-linear"];

#[test]
fn interpreter_steps_equal_the_full_forward_at_every_position() {
    for (i, name) in CAUSAL.into_iter().enumerate() {
        let m = load(&fixture(name));
        for seed in 0..3 {
            check_steps(&m, &Backend::Interp, 100 * i as u64 + seed, 24, 1e-5);
        }
    }
}

#[test]
fn optimised_graphs_decode_with_the_same_steps() {
    for (i, name) in CAUSAL.into_iter().enumerate() {
        let (_tmp, dir) = optimised(name);
        let m = load(&dir);
        check_steps(&m, &Backend::Interp, 7 + i as u64, 20, 1e-5);
    }
}

#[test]
fn cpu_backend_steps_equal_the_full_forward() {
    let cpu = Backend::Cpu(CpuOptions {
        threads: 2,
        ..CpuOptions::default()
    });
    for (i, name) in CAUSAL.into_iter().enumerate() {
        check_steps(&load(&fixture(name)), &cpu, 40 + i as u64, 16, 1e-4);
        let (_tmp, dir) = optimised(name);
        check_steps(&load(&dir), &cpu, 50 + i as u64, 16, 1e-4);
    }
}

#[test]
fn states_are_kv_heads_caches_or_constant_sums() {
    // LLaMA fixture: 2 layers, 4 heads, 2 kv heads of 8: a K and a V cache per layer holding
    // kv heads, not heads.
    let m = load(&fixture("llama"));
    let s = Session::new(&m, &Backend::Interp).unwrap();
    let states = &s.step_graph().states;
    assert_eq!(states.len(), 4);
    for st in states {
        assert!(matches!(st.kind, StateKind::Cache { axis: 2 }), "{st:?}");
        assert_eq!(st.dims(1, 5), vec![1, 2, 5, 8]);
    }
    assert_eq!(s.state_bytes_per_token(), 2 * 2 * (2 * 8) * 4);
    // gpt2-linear after exact optimisation: the prefix-sum form, whose state does not grow.
    let (_tmp, dir) = optimised("gpt2-linear");
    let mut s = Session::new(&load(&dir), &Backend::Interp).unwrap();
    assert!(s
        .step_graph()
        .states
        .iter()
        .all(|st| matches!(st.kind, StateKind::Sum { .. })));
    assert_eq!(s.state_bytes_per_token(), 0);
    s.feed(&[1, 2, 3]).unwrap();
    let at3 = s.state_bytes();
    for t in 0..10 {
        s.feed(&[t]).unwrap();
    }
    assert_eq!(s.state_bytes(), at3);
    assert!(at3 > 0);
}

#[test]
fn models_that_are_not_causal_decoders_say_why() {
    let m = Model::load_with(&fixture("bert"), &LoadOptions::default()).unwrap();
    let e = Session::new(&m, &Backend::Interp)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("language-model head"), "{e}");
    // The incremental derivation itself, on graphs without a head.
    let bert = attnopt::ir::incremental::incremental(m.graph())
        .unwrap_err()
        .to_string();
    assert!(bert.contains("not a causal model"), "{bert}");
    let vit = Model::load(&fixture("vit")).unwrap();
    let e = attnopt::ir::incremental::incremental(vit.graph()).unwrap_err();
    assert!(e.to_string().contains("not a decoder"), "{e}");
}

#[test]
fn positions_past_the_table_are_refused_before_running() {
    let m = load(&fixture("gpt2")); // 64 positions
    let mut s = Session::new(&m, &Backend::Interp).unwrap();
    s.feed(&vec![3; 60]).unwrap();
    let e = s.feed(&[1, 2, 3, 4, 5]).unwrap_err().to_string();
    assert!(e.contains("65 tokens") && e.contains("64 positions"), "{e}");
    assert_eq!(s.position(), 60, "a refused feed changes nothing");
    assert!(s.feed(&[]).is_err());
}

#[test]
fn hydra_converted_decoders_carry_constant_state_and_equal_their_full_forward() {
    // GPT-2 with every layer converted to causal Hydra attention (an approximation of the
    // original, so the reference is the converted model's own full forward).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gpt2-hydra");
    let o = cli::attnopt(&[
        "optimize",
        fixture("gpt2").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--allow",
        "hydra",
        "--budget",
        "inf",
    ]);
    assert!(o.status.success(), "{}", cli::stderr(&o));
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(report.contains("hydra"), "{report}");
    let m = load(&out);
    let s = Session::new(&m, &Backend::Interp).unwrap();
    let kinds: Vec<StateKind> = s.step_graph().states.iter().map(|st| st.kind).collect();
    assert!(
        kinds.iter().any(|k| matches!(k, StateKind::Sum { .. })),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().all(|k| matches!(k, StateKind::Sum { .. })),
        "every layer converted: no cache left, {kinds:?}"
    );
    check_steps(&m, &Backend::Interp, 77, 20, 1e-5);
    let cpu = Backend::Cpu(CpuOptions {
        threads: 2,
        ..CpuOptions::default()
    });
    check_steps(&m, &cpu, 78, 12, 1e-4);
}

/// A tiny LLaMA-shaped checkpoint with seeded random f32 weights and `config_extra` merged into
/// its config.json (names and shapes from `import::synthetic::llama_spec`).
fn random_llama(dir: &Path, config_extra: serde_json::Value) {
    use attnopt::import::synthetic::{llama_spec, LlamaShape};
    let spec = llama_spec(&LlamaShape {
        layers: 2,
        hidden: 32,
        heads: 4,
        kv_heads: 2,
        ff: 64,
        vocab: 64,
        positions: 96,
        rope_theta: 10000.0,
    });
    let mut rng = Rng::new(21);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = (spec.tensors.iter())
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            // Norm gains 1, everything else N(0, 0.3²).
            let norm = name.contains("norm");
            let bytes = (0..n)
                .flat_map(|_| (if norm { 1.0 } else { 0.3 * rng.normal() }).to_le_bytes())
                .collect();
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = (data.iter())
        .map(|(name, shape, bytes)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (name.clone(), v)
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let mut config = spec.config.clone();
    config["torch_dtype"] = "float32".into();
    for (k, v) in config_extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn llama_with_causal_linear_attention_and_rope_decodes_with_running_sums_once_optimised() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llama-linear");
    random_llama(&dir, serde_json::json!({"attnopt_attention": "linear_elu"}));
    let m = load(&dir);
    assert!(
        !m.input_names().contains(&"attention_mask"),
        "linear attention takes no mask"
    );
    // The original (quadratic, `tril`) form: a cache; every step equals the full forward.
    check_steps(&m, &Backend::Interp, 5, 20, 1e-5);
    let opt = tmp.path().join("llama-linear-opt");
    let o = cli::attnopt(&[
        "optimize",
        dir.to_str().unwrap(),
        "-o",
        opt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", cli::stderr(&o));
    let m = load(&opt);
    let s = Session::new(&m, &Backend::Interp).unwrap();
    assert!(
        (s.step_graph().states.iter()).all(|st| matches!(st.kind, StateKind::Sum { .. })),
        "{:?}",
        s.step_graph().states
    );
    check_steps(&m, &Backend::Interp, 6, 20, 1e-5);
    let cpu = Backend::Cpu(CpuOptions {
        threads: 2,
        ..CpuOptions::default()
    });
    check_steps(&m, &cpu, 7, 12, 1e-4);
}
