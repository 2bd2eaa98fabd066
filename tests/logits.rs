//! `run --logits` (`LoadOptions::logits`): a decoder's language-model head. On the GPT-2
//! fixture (tied embeddings) the logits are `last_hidden_state · wteᵀ`, with `wte` read here
//! straight from the checkpoint by the safetensors crate; the CPU backend agrees with the
//! interpreter; optimised folders give the same head; encoders say why they have none.

#[path = "support/models.rs"]
mod models;
use attnopt::{Backend, CpuOptions, LoadOptions, Model, RunOptions};
use models::{fixture, golden_inputs};

fn logits_options() -> LoadOptions {
    LoadOptions {
        logits: true,
        ..LoadOptions::default()
    }
}

#[test]
fn gpt2_logits_are_the_tied_embedding_head() {
    let dir = fixture("gpt2");
    let model = Model::load_with(&dir, &logits_options()).unwrap();
    let inputs = golden_inputs(&model, &dir);
    let out = model.run(inputs.clone(), RunOptions::default()).unwrap();
    let (h, logits) = (&out["last_hidden_state"], &out["logits"]);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let wte = st.tensor("wte.weight").unwrap();
    let (vocab, d) = (wte.shape()[0], wte.shape()[1]);
    let w: Vec<f32> = wte
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(logits.shape(), &[h.shape()[0], h.shape()[1], vocab]);
    let (hv, lv) = (h.as_f32().unwrap(), logits.as_f32().unwrap());
    for (r, row) in hv.chunks_exact(d).enumerate() {
        for v in 0..vocab {
            let want: f64 = (0..d).map(|j| row[j] as f64 * w[v * d + j] as f64).sum();
            let got = lv[r * vocab + v] as f64;
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{r} {v}: {got} {want}"
            );
        }
    }
    // The CPU backend computes the same head.
    let cpu = model
        .run(
            inputs,
            RunOptions {
                all_layers: false,
                backend: Backend::Cpu(CpuOptions {
                    threads: 2,
                    ..CpuOptions::default()
                }),
            },
        )
        .unwrap();
    let err = cpu["logits"].max_abs_diff(logits).unwrap();
    assert!(err <= 1e-4 * logits.max_abs().max(1.0), "{err}");
}

#[test]
fn llama_uses_its_lm_head_and_others_say_why_not() {
    let dir = fixture("llama");
    let model = Model::load_with(&dir, &logits_options()).unwrap();
    let out = model
        .run(golden_inputs(&model, &dir), RunOptions::default())
        .unwrap();
    assert_eq!(
        out["logits"].shape()[2],
        model.imported().dims.vocab.unwrap()
    );
    let e = Model::load_with(&fixture("bert"), &logits_options())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has no language-model head"), "{e}");
    // Without the option there is no head (the base model, as benchmarks measure it).
    let plain = Model::load(&fixture("gpt2")).unwrap();
    assert!(plain.graph().output("logits").is_none());
    // Optimised folders keep the base model's graph and take the head on request: the tied
    // embedding of a referring folder, and of a standalone one, gives the original's logits.
    let dir = fixture("gpt2");
    let original = Model::load_with(&dir, &logits_options()).unwrap();
    let inputs = golden_inputs(&original, &dir);
    let want = original.run(inputs.clone(), RunOptions::default()).unwrap()["logits"].clone();
    let tmp = tempfile::tempdir().unwrap();
    let opt = attnopt::optimize::optimize(&plain, &Default::default(), &mut |_| {}).unwrap();
    for standalone in [false, true] {
        let out = tmp.path().join(format!("o{standalone}"));
        let save = attnopt::save::SaveOptions {
            standalone,
            ..Default::default()
        };
        attnopt::save::save(&plain, &opt, &out, &save).unwrap();
        let m = Model::load_with(&out, &logits_options()).unwrap();
        let got = m.run(inputs.clone(), RunOptions::default()).unwrap()["logits"].clone();
        let err = got.max_abs_diff(&want).unwrap();
        assert!(
            err <= 1e-4 * want.max_abs().max(1.0),
            "standalone {standalone}: {err}"
        );
    }
}
