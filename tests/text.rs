//! Text in and sentence embeddings out (`run --text`, `--pool`): the BERT fixture's
//! tokenizer.json (made by fixtures/gen/generate_tokenizer.py) tokenises a batch exactly as
//! transformers' PreTrainedTokenizerFast did (text_golden.json), the pooled embeddings are the
//! mean over the attention mask / the first token of last_hidden_state (computed here
//! independently), optimised folders keep the tokenizer, and a model without one says so.

use std::path::{Path, PathBuf};

use attnopt::run::{run, Input, RunRequest};
use attnopt::text::{encode, Pool};
use attnopt::{Model, RunOptions};

fn bert() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bert")
}

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(bert().join("text_golden.json")).unwrap())
        .unwrap()
}

fn sentences() -> Vec<String> {
    golden()["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tokenises_like_transformers() {
    let model = Model::load(&bert()).unwrap();
    let got = encode(&model, &sentences()).unwrap();
    let g = golden();
    for name in ["input_ids", "attention_mask", "token_type_ids"] {
        let want: Vec<i64> = g[name]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
            .collect();
        assert_eq!(got[name].as_i64().unwrap(), &want[..], "{name}");
    }
}

#[test]
fn pools_mean_over_the_mask_and_the_first_token() {
    let model = Model::load(&bert()).unwrap();
    let texts = sentences();
    let feed = encode(&model, &texts).unwrap();
    let hidden = &model.run(feed.clone(), RunOptions::default()).unwrap()["last_hidden_state"];
    let (h, mask) = (
        hidden.as_f32().unwrap(),
        feed["attention_mask"].as_i64().unwrap(),
    );
    let (b, n, d) = (hidden.shape()[0], hidden.shape()[1], hidden.shape()[2]);
    for (pool, name) in [(Pool::Mean, "mean"), (Pool::Cls, "cls")] {
        let out = run(
            &model,
            &RunRequest {
                input: Input::Text(&texts),
                pool: Some(pool),
                output: None,
                compare: None,
                verify: false,
                opts: RunOptions::default(),
            },
            &mut |_| {},
        )
        .unwrap();
        let e = out.outputs["sentence_embedding"].as_f32().unwrap().to_vec();
        assert_eq!(e.len(), b * d);
        for i in 0..b {
            for j in 0..d {
                let want = match pool {
                    Pool::Cls => h[i * n * d + j] as f64,
                    Pool::Mean => {
                        let rows: Vec<usize> = (0..n).filter(|&t| mask[i * n + t] == 1).collect();
                        rows.iter()
                            .map(|&t| h[(i * n + t) * d + j] as f64)
                            .sum::<f64>()
                            / rows.len() as f64
                    }
                };
                assert!((e[i * d + j] as f64 - want).abs() < 1e-5, "{name} {i} {j}");
            }
        }
    }
}

#[test]
fn optimised_folders_keep_the_tokenizer_and_others_say_they_have_none() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&bert()).unwrap();
    let opt = attnopt::optimize::optimize(&model, &Default::default(), &mut |_| {}).unwrap();
    let out = dir.path().join("o");
    attnopt::save::save(&model, &opt, &out, &Default::default()).unwrap();
    let optimised = Model::load(&out).unwrap();
    assert_eq!(
        encode(&optimised, &sentences()).unwrap()["input_ids"],
        encode(&model, &sentences()).unwrap()["input_ids"]
    );
    let gpt2 = Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gpt2")).unwrap();
    let e = encode(&gpt2, &["hi".to_string()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has no tokenizer.json"), "{e}");
}
