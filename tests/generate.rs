//! `attnopt generate` end to end: greedy decoding equals transformers'
//! `generate(do_sample=False)` token for token (goldens by fixtures/gen/generate_decode.py, 32
//! new tokens, EOS ignored on both sides) on GPT-2 and LLaMA, original and optimised graphs, on
//! the interpreter and the CPU backend in f32; text in and out through the LLaMA fixture's
//! tokenizer.json; a seed reproduces sampling; the end-of-sequence id stops; everyday mistakes
//! get one clear line.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/models.rs"]
mod models;

use std::path::Path;

use attnopt::decode::{generate, GenerateOptions, Session};
use attnopt::sample::Sampling;
use attnopt::{Backend, LoadOptions, Model};
use cli::{attnopt, stderr, stdout};
use models::fixture;

fn golden(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("generate_golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn join(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `generate --json` on `dir`; the parsed object.
fn generate_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["generate", dir.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let o = attnopt(&all);
    assert!(o.status.success(), "{:?}: {}", all, stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn check_goldens(name: &str, dir: &Path, backend: &str) {
    let g = golden(name);
    let n = g["max_new_tokens"].as_u64().unwrap().to_string();
    for case in g["cases"].as_array().unwrap() {
        let prompt = join(&ids(&case["prompt_ids"]));
        let args = [
            "--prompt-ids",
            &prompt,
            "--max-new-tokens",
            &n,
            "--ignore-eos",
            "--greedy",
            "--backend",
            backend,
            "--threads",
            "2",
        ];
        let out = generate_json(dir, &args);
        assert_eq!(
            ids(&out["generated_ids"]),
            ids(&case["generated_ids"]),
            "{name} ({}) on {backend}, prompt {prompt}",
            dir.display()
        );
        assert_eq!(ids(&out["prompt_ids"]), ids(&case["prompt_ids"]));
        let steps = out["per_token_ms"].as_array().unwrap().len();
        assert_eq!(steps + 1, case["generated_ids"].as_array().unwrap().len());
        assert!(out["prefill_ms"].as_f64().unwrap() >= 0.0);
        assert!(out["state_bytes"].as_u64().unwrap() > 0);
    }
}

fn optimised(name: &str, tmp: &Path) -> std::path::PathBuf {
    let out = tmp.join(format!("{name}-opt"));
    let o = attnopt(&[
        "optimize",
        fixture(name).to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn greedy_equals_transformers_on_gpt2_and_llama() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["gpt2", "llama"] {
        let opt = optimised(name, tmp.path());
        for backend in ["cpu", "interp"] {
            check_goldens(name, &fixture(name), backend);
            check_goldens(name, &opt, backend);
        }
    }
}

#[test]
fn text_prompts_are_tokenised_and_text_is_printed_as_transformers_decodes_it() {
    let case = &golden("llama")["text_case"];
    let dir = fixture("llama");
    let prompt = case["prompt"].as_str().unwrap();
    let args = ["--prompt", prompt, "--ignore-eos", "--max-new-tokens", "32"];
    let out = generate_json(&dir, &args);
    assert_eq!(ids(&out["prompt_ids"]), ids(&case["prompt_ids"]));
    assert_eq!(ids(&out["generated_ids"]), ids(&case["generated_ids"]));
    assert_eq!(out["text"], case["text"]);
    // Without --json the text is what is printed (streamed piece by piece).
    let mut all = vec!["generate", dir.to_str().unwrap()];
    all.extend_from_slice(&args);
    let o = attnopt(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim_end_matches('\n'),
        case["text"].as_str().unwrap()
    );
    assert!(
        stderr(&o).contains("32 new tokens after a prompt of 9"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let dir = fixture("llama");
    let run = |seed: &str| {
        let args = [
            "--prompt-ids",
            "1,42,7",
            "--temperature",
            "1.5",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--ignore-eos",
            "--max-new-tokens",
            "24",
        ];
        ids(&generate_json(&dir, &args)["generated_ids"])
    };
    let a = run("5");
    assert_eq!(a, run("5"));
    assert_ne!(a, run("6"), "another seed should give other text");
    assert_eq!(a.len(), 24);
}

#[test]
fn generation_stops_at_the_end_of_sequence_id() {
    let opts = LoadOptions {
        logits: true,
        ..LoadOptions::default()
    };
    let m = Model::load_with(&fixture("gpt2"), &opts).unwrap();
    let mut s = Session::new(&m, &Backend::Interp).unwrap();
    let base = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Greedy,
        eos: vec![],
        ignore_eos: false,
    };
    let free = generate(&mut s, &[5, 17, 99, 3], &base, |_| Ok(())).unwrap();
    assert_eq!(free.generated_ids.len(), 10);
    // Make the third greedy token the end-of-sequence id: generation stops right after it.
    let eos = free.generated_ids[2];
    let first = free.generated_ids.iter().position(|&t| t == eos).unwrap();
    s.reset();
    let opts = GenerateOptions {
        eos: vec![eos],
        ..base.clone()
    };
    let stopped = generate(&mut s, &[5, 17, 99, 3], &opts, |_| Ok(())).unwrap();
    assert_eq!(stopped.generated_ids, free.generated_ids[..=first]);
    s.reset();
    let ignored = GenerateOptions {
        ignore_eos: true,
        ..opts
    };
    let all = generate(&mut s, &[5, 17, 99, 3], &ignored, |_| Ok(())).unwrap();
    assert_eq!(all.generated_ids, free.generated_ids);
    // The fixture's own eos_token_id is read from its config.
    let eos = attnopt::import::generation::eos_token_ids(&fixture("gpt2")).unwrap();
    assert_eq!(eos, vec![127]);
    let eos = attnopt::import::generation::eos_token_ids(&fixture("llama")).unwrap();
    assert_eq!(eos, vec![2]);
}

#[test]
fn everyday_mistakes_get_one_clear_line() {
    let gpt2 = fixture("gpt2");
    let g = gpt2.to_str().unwrap();
    let bert = fixture("bert");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", g, "--prompt", "hello"], "tokenizer"),
        (
            vec!["generate", g, "--prompt-ids", "5,1000"],
            "outside the model's vocabulary",
        ),
        (
            vec![
                "generate",
                g,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "100",
            ],
            "the model has 64",
        ),
        (
            vec!["generate", g, "--prompt-ids", "5", "--temperature", "0"],
            "above 0",
        ),
        (
            vec!["generate", g, "--prompt-ids", "5", "--top-p", "2"],
            "(0, 1]",
        ),
        (
            vec![
                "generate",
                g,
                "--prompt-ids",
                "5",
                "--greedy",
                "--top-k",
                "3",
            ],
            "cannot be used",
        ),
        (vec!["generate", g], "--prompt-ids"),
        (
            vec!["generate", bert.to_str().unwrap(), "--prompt-ids", "1"],
            "language-model head",
        ),
        (
            vec![
                "generate",
                g,
                "--prompt-ids",
                "5",
                "--backend",
                "cuda",
                "--precision",
                "bf16",
            ],
            "not supported yet",
        ),
    ];
    for (args, want) in cases {
        let o = attnopt(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
}
