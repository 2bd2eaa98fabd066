//! Whole-block snapshots: each fixture architecture optimised with the embedded exact rules at
//! N = 128, showing layer 0 (`@L0`) and the outputs. Every layer of a fixture has the same
//! structure, so layer 0 stands for all of them; a change to a rule, the cost model or
//! extraction shows up here as a reviewable diff.

use std::path::Path;

use attnopt_rewrite::{optimize, Options, RuleSet};

fn optimised_layer0(model: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model);
    let m = attnopt_import::load(&dir).unwrap();
    let rules = RuleSet::embedded().unwrap();
    let o = optimize(&m.graph, &Options::exact(&rules, 128)).unwrap();
    assert!(o.skipped.is_empty(), "{model}: {:?}", o.skipped);
    for (l, s) in &o.layers {
        assert!(
            s.stats.fallback.is_none(),
            "{model} layer {l}: {:?}",
            s.stats.fallback
        );
    }
    o.graph
        .to_string()
        .lines()
        .filter(|l| l.contains(" @L0 ") || l.starts_with("output "))
        .map(|l| format!("{l}\n"))
        .collect()
}

macro_rules! fixtures {
    ($($test:ident => $model:literal;)*) => {
        $(
            #[test]
            fn $test() {
                insta::assert_snapshot!($model, optimised_layer0($model));
            }
        )*
    };
}

fixtures! {
    bert => "bert";
    gpt2 => "gpt2";
    vit => "vit";
    llama => "llama";
    vit_hydra => "vit-hydra";
    gpt2_linear => "gpt2-linear";
    gpt2_sparse_qkv => "gpt2-sparse-qkv";
    gpt2_sparse_ff => "gpt2-sparse-ff";
}
