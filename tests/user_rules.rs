//! Rules from users (`optimize --rules DIR`) are checked numerically before they touch a model,
//! and the exactly optimised model is verified against the original before a folder is
//! written. Before these checks, the unsound rule below fired 6 times on fixtures/bert and
//! wrote a model off by 1.34 (max-abs), exit 0.

#[path = "support/cli.rs"]
mod cli;
use cli::{attnopt, root, stderr};

use std::path::{Path, PathBuf};

/// A copy of `rules/` plus `extra` as `zz-user.rules`.
fn rules_with(dir: &Path, extra: &str) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    for f in std::fs::read_dir(root().join("rules")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, rules.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(rules.join("zz-user.rules"), extra).unwrap();
    rules
}

/// `optimize fixtures/bert --rules RULES` into `opt` beside the rules folder.
fn optimize_bert_with(rules: &Path) -> (std::process::Output, PathBuf) {
    let out = rules.with_file_name("opt");
    let o = attnopt(&[
        "optimize",
        "fixtures/bert",
        "-o",
        out.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    (o, out)
}

#[test]
fn an_unsound_user_rule_is_refused_at_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = rules_with(
        tmp.path(),
        "# mine\n\nexact drop-bias: (add ?x ?b) => ?x if weight_only(?b) and not_weight_only(?x)\n",
    );
    let (o, out) = optimize_bert_with(&rules);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("zz-user.rules:3: exact rule `drop-bias` is not an identity"),
        "{e}"
    );
    assert!(e.contains("changes the layer's output by"), "{e}");
    assert!(!out.exists(), "no folder is written");
}

#[test]
fn sound_user_rules_are_verified_and_written() {
    let tmp = tempfile::tempdir().unwrap();
    // A true identity (x · 1 = x), harmless to add.
    let rules = rules_with(tmp.path(), "exact scale-by-one: (scale 1 ?x) => ?x\n");
    let (o, out) = optimize_bert_with(&rules);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("checking the exact rules numerically"), "{e}");
    assert!(
        e.contains("checking the exactly optimised model against the original"),
        "{e}"
    );
    // The report carries the measured error, as with --verify.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rel = report["final_error"]["relative"].as_f64().unwrap();
    assert!(rel < 1e-5, "{rel}");
}
