//! The sparse-layer convention's config sections from strangers: each mistake is one clear
//! error naming the key (or the tensor whose shape disagrees), never a panic.

use std::path::Path;

/// A copy of fixture `model` whose config.json has `key` set to `value` (JSON text).
fn with_config(model: &str, key: &str, value: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(model);
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json[key] = serde_json::from_str(value).unwrap();
    std::fs::write(&cfg, json.to_string()).unwrap();
    dir
}

fn error(model: &str, key: &str, value: &str) -> String {
    let dir = with_config(model, key, value);
    match attnopt_import::load(dir.path()) {
        Ok(_) => panic!("{key} = {value} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sparse_qkv_section_mistakes() {
    let q = "attnopt_sparse_qkv";
    for (value, says) in [
        (r#""x""#, "expected an object"),
        (r#"{}"#, "`attnopt_sparse_qkv.modules` is required"),
        (r#"{"modules": 3}"#, "not divisible"),
        (r#"{"modules": 1}"#, "a dense layer"),
        (r#"{"modules": 4, "foo": 1}"#, "attnopt_sparse_qkv.foo"),
        (
            r#"{"modules": 4, "output": "mult"}"#,
            "\"none\" or \"dense\"",
        ),
        (
            r#"{"modules": 4, "qk_module_kernel": 2}"#,
            "only odd kernels",
        ),
        (
            r#"{"modules": 4, "length_kernel": 100000}"#,
            "between 1 and 255",
        ),
        (r#"{"modules": 4, "length_kernel": 5}"#, "conv_q.weight"),
    ] {
        let e = error("gpt2-sparse-qkv", q, value);
        assert!(e.contains(says), "{value}: {e}");
    }
    // Hydra and sparse QKV do not combine.
    let dir = with_config("gpt2-sparse-qkv", "attnopt_attention", r#""linear_elu""#);
    let e = attnopt_import::load(dir.path()).err().unwrap().to_string();
    assert!(e.contains("non-softmax"), "{e}");
}

#[test]
fn sparse_ff_section_mistakes() {
    let f = "attnopt_sparse_ff";
    for (value, says) in [
        (r#"[1]"#, "expected an object"),
        (r#"{"block": 8}"#, "`attnopt_sparse_ff.lowrank` is required"),
        (r#"{"block": 7, "lowrank": 16}"#, "not divisible"),
        (r#"{"block": 1, "lowrank": 16}"#, "a dense layer"),
        (r#"{"block": 8, "lowrank": 17}"#, "controller.m1"),
        (r#"{"block": 16, "lowrank": 16}"#, "controller.m2"),
    ] {
        let e = error("gpt2-sparse-ff", f, value);
        assert!(e.contains(says), "{value}: {e}");
    }
}
