//! End-to-end tests of the `attnopt` binary on the bundled fixtures.

#[path = "support/cli.rs"]
mod cli;
use cli::{attnopt, attnopt_env, root, stderr, stdout};

use std::path::{Path, PathBuf};

/// Writes `dir/in.safetensors` holding one `input_ids` tensor of raw little-endian `bytes`.
fn write_input_ids(
    dir: &Path,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: &[u8],
) -> PathBuf {
    let view = safetensors::tensor::TensorView::new(dtype, shape, bytes).unwrap();
    let input = dir.join("in.safetensors");
    std::fs::write(
        &input,
        safetensors::serialize(vec![("input_ids", view)], None).unwrap(),
    )
    .unwrap();
    input
}

/// `run` on the BERT fixture's golden inputs, comparing with its golden outputs.
const RUN_BERT: [&str; 6] = [
    "run",
    "fixtures/bert",
    "-i",
    "fixtures/bert/golden.safetensors",
    "--compare",
    "fixtures/bert/golden.safetensors",
];

fn meta(model: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("fixtures").join(model).join("meta.json"))
        .expect("meta.json");
    serde_json::from_str(&text).expect("meta.json is JSON")
}

/// `inspect --json` reports the architecture, layer count, head counts and parameter counts
/// that the fixture generator recorded (meta.json is written by fixtures/gen/generate.py from
/// the saved files, independently of attnopt).
#[test]
fn inspect_matches_generator_numbers() {
    for model in ["bert", "gpt2", "vit", "llama"] {
        let o = attnopt(&["inspect", &format!("fixtures/{model}"), "--json"]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let got: serde_json::Value =
            serde_json::from_str(&stdout(&o)).expect("inspect --json prints JSON");
        let want = meta(model);
        assert_eq!(got["architecture"], want["architecture"], "{model}");
        assert_eq!(got["dims"]["layers"], want["num_layers"], "{model}");
        assert_eq!(got["dims"]["hidden"], want["hidden_size"], "{model}");
        assert_eq!(got["dims"]["heads"], want["num_heads"], "{model}");
        assert_eq!(got["dims"]["kv_heads"], want["num_kv_heads"], "{model}");
        assert_eq!(got["dims"]["head_dim"], want["head_dim"], "{model}");
        assert_eq!(got["params_total"], want["params_total"], "{model}");
        assert_eq!(got["params_by_dtype"], want["params_by_dtype"], "{model}");
        assert_eq!(got["tensors"], want["tensors"], "{model}");
        let layers = want["num_layers"].as_u64().unwrap() as usize;
        assert_eq!(
            got["attention"].as_array().map(|a| a.len()),
            Some(layers),
            "{model}: one attention row per layer"
        );
        println!(
            "{model}: {} parameters, {layers} layers — as the generator recorded",
            got["params_total"]
        );
    }
}

#[test]
fn inspect_text_names_architecture_and_reason() {
    let o = attnopt(&["inspect", "fixtures/gpt2", "--seq", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("architecture gpt2  (config.json model_type = \"gpt2\")"),
        "{s}"
    );
    assert!(s.contains("at 64 tokens"), "{s}");
    assert!(s.contains("softmax"), "{s}");
}

/// `run` writes last_hidden_state (and every layer with --all-layers) matching the goldens.
#[test]
fn run_writes_outputs_that_match_goldens() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["bert", "vit"] {
        let out = dir.path().join(format!("{model}.safetensors"));
        let golden = format!("fixtures/{model}/golden.safetensors");
        let o = attnopt(&[
            "run",
            &format!("fixtures/{model}"),
            "--input",
            &golden,
            "--output",
            out.to_str().unwrap(),
            "--all-layers",
        ]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let got = attnopt::tensors::read(&out).expect("output readable");
        let want = attnopt::tensors::read(&root().join(&golden)).unwrap();
        for name in ["embeddings", "layer.0", "layer.1", "last_hidden_state"] {
            let err = got[name].max_abs_diff(&want[name]).expect("same shape");
            assert!(err < 1e-4, "{model}/{name}: {err}");
        }
    }
}

/// Without --all-layers only last_hidden_state is written; ids in i32 work and a missing batch
/// axis and a missing attention_mask are filled in.
#[test]
fn run_accepts_i32_ids_without_batch_axis() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let golden = attnopt::tensors::read(&root().join("fixtures/gpt2/golden.safetensors")).unwrap();
    let ids: Vec<i32> = golden["input_ids"].as_i64().unwrap()[..7]
        .iter()
        .map(|&x| x as i32)
        .collect();
    let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    let input = write_input_ids(dir.path(), safetensors::Dtype::I32, vec![7], &bytes);
    let out = dir.path().join("out.safetensors");
    let o = attnopt(&[
        "run",
        "fixtures/gpt2",
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: BTreeMap<_, _> = attnopt::tensors::read(&out).unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["last_hidden_state"]);
    let row0: Vec<f32> = golden["last_hidden_state"].as_f32().unwrap()[..7 * 32].to_vec();
    let mine = got["last_hidden_state"].as_f32().unwrap();
    assert_eq!(got["last_hidden_state"].shape(), &[1, 7, 32]);
    let err = mine
        .iter()
        .zip(&row0)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err < 1e-4,
        "row 0 (unpadded) should match the golden: {err}"
    );
}

#[test]
fn errors_are_one_line_and_nonzero() {
    let o = attnopt(&["inspect", "fixtures/does-not-exist"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.starts_with("error: fixtures/does-not-exist"), "{e}");

    let o = attnopt(&[
        "run",
        "fixtures/bert",
        "--input",
        "fixtures/bert/model.safetensors",
        "--compare",
        "fixtures/bert/golden.safetensors",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("holds none of the model's inputs"),
        "{}",
        stderr(&o)
    );

    let o = attnopt(&[
        "run",
        "fixtures/bert",
        "-i",
        "fixtures/bert/golden.safetensors",
        "--backend",
        "cuda",
        "--precision",
        "bf16",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not supported yet"), "{}", stderr(&o));

    let o = attnopt(&[
        "optimize",
        "fixtures/bert",
        "--allow",
        "sparse-attention",
        "-o",
        "target/never-written",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(
            "unknown approximate family `sparse-attention` (this build has: hydra, sparse-qkv, \
             sparse-ff)"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!root().join("target/never-written").exists());
}

/// A token id past the vocabulary is a clean error naming the operator, and no output file is
/// left behind.
#[test]
fn bad_token_id_fails_cleanly_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = [1i64, 2, 999]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let input = write_input_ids(dir.path(), safetensors::Dtype::I64, vec![1, 3], &bytes);
    let out = dir.path().join("out.safetensors");
    let o = attnopt(&[
        "run",
        "fixtures/bert",
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("id 999 is outside the table's 128 rows"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left behind"
    );
}

#[test]
fn graph_writes_dot_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let dot = dir.path().join("g.dot");
    let text = dir.path().join("g.txt");
    let o = attnopt(&[
        "graph",
        "fixtures/llama",
        "--dot",
        dot.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = std::fs::read_to_string(&dot).unwrap();
    assert!(
        d.starts_with("digraph attnopt {") && d.contains("cluster_layer1") && d.contains("rope"),
        "{d}"
    );
    let t = std::fs::read_to_string(&text).unwrap();
    assert!(t.contains("output last_hidden_state = %"), "{t}");
    assert!(Path::new(&text).exists());
}

/// `bench --json` writes the documented schema; `run --backend cpu` (the default) matches the
/// interpreter.
#[test]
fn bench_json_and_cpu_run() {
    let o = attnopt(&[
        "bench",
        "fixtures/gpt2",
        "--seq",
        "8,16",
        "--reps",
        "2",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("bench --json prints JSON");
    for key in ["model", "threads", "precision", "matmul", "runs"] {
        assert!(v.get(key).is_some(), "missing `{key}`");
    }
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "original and optimised at two lengths");
    for r in runs {
        for key in [
            "graph",
            "seq",
            "median_ms",
            "min_ms",
            "max_ms",
            "compile_ms",
            "kernels",
        ] {
            assert!(r.get(key).is_some(), "run lacks `{key}`: {r}");
        }
        assert!(r["min_ms"].as_f64().unwrap() <= r["median_ms"].as_f64().unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("cpu.safetensors"),
        dir.path().join("interp.safetensors"),
    );
    for (backend, out) in [("cpu", &a), ("interp", &b)] {
        let o = attnopt(&[
            "run",
            "fixtures/llama",
            "-i",
            "fixtures/llama/golden.safetensors",
            "-o",
            out.to_str().unwrap(),
            "--backend",
            backend,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (x, y) = (
        attnopt::tensors::read(&a).unwrap(),
        attnopt::tensors::read(&b).unwrap(),
    );
    let err = x["last_hidden_state"]
        .max_abs_diff(&y["last_hidden_state"])
        .unwrap();
    assert!(err < 1e-4, "cpu vs interp: {err}");
}

/// `--precision bf16`: `run --verify` prints its error against the f32 interpreter per output
/// (without --verify, a note says how to), and `bench --json` carries it per run; the
/// interpreter refuses bf16.
#[test]
fn bf16_runs_report_their_error() {
    let args = [&RUN_BERT[..], &["--precision", "bf16"]].concat();
    let o = attnopt(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("add --verify to measure"),
        "{}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("error vs the f32 interpreter"));
    let o = attnopt(&[&args[..], &["--verify"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.contains("bf16 error vs the f32 interpreter"))
        .unwrap_or_else(|| panic!("no bf16 error line in: {out}"));
    let rel: f64 = line
        .rsplit("relative ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {line}"));
    assert!(rel > 1e-5 && rel < 2e-2, "{line}");

    let o = attnopt(&[
        "bench",
        "fixtures/bert",
        "--seq",
        "8",
        "--reps",
        "1",
        "--no-optimise",
        "--precision",
        "bf16",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["precision"], "bf16");
    let e = &v["runs"][0]["error_vs_f32"]["last_hidden_state"];
    let rel = e["relative"].as_f64().unwrap_or_else(|| panic!("{v}"));
    assert!(rel > 1e-5 && rel < 2e-2, "{e}");

    let o = attnopt(
        &[
            &RUN_BERT[..],
            &["--backend", "interp", "--precision", "bf16"],
        ]
        .concat(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("f32 only"), "{}", stderr(&o));
}

/// `inspect --backend cpu` says which matrix-product library runs and why, and the kernels.
#[test]
fn inspect_backend_cpu_names_the_library_and_kernels() {
    let o = attnopt(&["inspect", "fixtures/bert", "--backend", "cpu", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let cpu = &v["cpu"];
    let lib = cpu["matmul"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(
        lib.starts_with("oneDNN") || lib.starts_with("gemm"),
        "{lib}"
    );
    assert!(!cpu["matmul_reason"].as_str().unwrap().is_empty());
    assert!(!cpu["bf16_reason"].as_str().unwrap().is_empty());
    // Two layers: at least the two MLP products per layer plus attention's.
    let kernels = cpu["kernels"].as_object().unwrap();
    let products: u64 = kernels
        .iter()
        .filter(|(k, _)| k.starts_with("matmul"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert!(products >= 8, "{kernels:?}");
    let o = attnopt(&["inspect", "fixtures/bert"]);
    assert!(
        !stdout(&o).contains("CPU backend"),
        "only with --backend cpu"
    );
}

/// `bench --ab N`: original and optimised timed in N alternating rounds, reported on the
/// optimised run as the median ratio with its interval (values are timings: only their
/// consistency is checked, never their size).
#[test]
fn bench_ab_reports_a_ratio_with_an_interval() {
    let o = attnopt(&[
        "bench",
        "fixtures/bert",
        "--reps",
        "1",
        "--ab",
        "5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert!(
        runs[0].get("ab").is_none(),
        "only the optimised run carries it"
    );
    let ab = &runs[1]["ab"];
    assert_eq!(ab["rounds"], 5);
    let (lo, med, hi) = (
        ab["ci_low"].as_f64().unwrap(),
        ab["ratio_median"].as_f64().unwrap(),
        ab["ci_high"].as_f64().unwrap(),
    );
    assert!(lo > 0.0 && lo <= med && med <= hi, "{ab}");
    let o = attnopt(&["bench", "fixtures/bert", "--ab", "--no-optimise"]);
    assert!(!o.status.success());
}

/// The CPU backend's environment variables still work through the binary (the CLI maps them
/// into the library's options), `--matmul` does the same and wins over them, and asking for
/// oneDNN where it cannot load is a clean error naming why, where `auto` falls back.
#[test]
fn matmul_flag_and_variables_choose_the_library() {
    let bench = [
        "bench",
        "fixtures/bert",
        "--reps",
        "1",
        "--no-optimise",
        "--json",
    ];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { bench.iter().chain(extra).copied().collect() };
    let report = |o: &std::process::Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_str(&stdout(o)).expect("bench --json prints JSON")
    };
    let absent = ("ATTNOPT_ONEDNN_LIBRARY", "libdnnl-absent.so.2");
    for (args, vars) in [
        (with(&[]), vec![("ATTNOPT_MATMUL", "gemm")]),
        (with(&["--matmul", "gemm"]), vec![]),
        (
            with(&["--matmul", "gemm"]),
            vec![("ATTNOPT_MATMUL", "onednn"), absent],
        ),
    ] {
        let v = report(&attnopt_env(&args, &vars));
        let lib = v["matmul"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(lib.starts_with("gemm"), "{args:?} {vars:?}: {lib}");
        assert!(
            v["matmul_reason"]
                .as_str()
                .unwrap()
                .starts_with("gemm requested"),
            "{v}"
        );
    }

    // No oneDNN: `auto` (the default) falls back and says why.
    let v = report(&attnopt_env(&bench, &[absent]));
    assert!(v["matmul"].as_str().unwrap().starts_with("gemm"), "{v}");
    let why = v["matmul_reason"].as_str().unwrap();
    assert!(why.contains("libdnnl-absent.so.2 not found"), "{why}");

    // ... while `--matmul onednn` (or the variable) is an error saying why, for run too.
    for (args, vars) in [
        (with(&["--matmul", "onednn"]), vec![absent]),
        (bench.to_vec(), vec![absent, ("ATTNOPT_MATMUL", "onednn")]),
        (
            [&RUN_BERT[..], &["--matmul", "onednn"]].concat(),
            vec![absent],
        ),
    ] {
        let o = attnopt_env(&args, &vars);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{e}");
        assert!(
            errors[0].contains("cannot use oneDNN: libdnnl-absent.so.2 not found"),
            "{e}"
        );
        assert!(!e.contains("panicked"), "{e}");
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    }

    // A value the CLI does not know is an error, not ignored.
    let o = attnopt_env(&bench, &[("ATTNOPT_MATMUL", "mkl")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ATTNOPT_MATMUL=mkl: expected auto, onednn or gemm"));
    // `--matmul` is the CPU backend's.
    let o = attnopt_env(&["inspect", "fixtures/bert", "--matmul", "gemm"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs --backend cpu"), "{}", stderr(&o));
}

/// `ATTNOPT_POSTOPS=0` and `ATTNOPT_JIT_AVX512=0` still turn fused epilogues and the AVX-512
/// row primitives off, as `inspect --backend cpu` reports.
#[test]
fn postops_and_avx512_variables_reach_the_backend() {
    let args = ["inspect", "fixtures/bert", "--backend", "cpu", "--json"];
    let cpu = |vars: &[(&str, &str)]| -> serde_json::Value {
        let o = attnopt_env(&args, vars);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["cpu"].clone()
    };
    let on = cpu(&[]);
    assert_eq!(on["post_ops"], true, "{on}");
    assert_eq!(
        on["row_primitives"],
        std::arch::is_x86_feature_detected!("avx512f"),
        "{on}"
    );
    let off = cpu(&[("ATTNOPT_POSTOPS", "0"), ("ATTNOPT_JIT_AVX512", "0")]);
    assert_eq!(off["post_ops"], false, "{off}");
    assert_eq!(off["row_primitives"], false, "{off}");
}

/// report.json gives each layer's weight bytes read per token. The sparse FF fixture's layer,
/// counted by hand from its tensors (f32): ln_1 256 + c_attn 12288 + 384 + c_proj 4096 + 128 +
/// ln_2 256 + controller m1 2048 + m2 8192 + bias 512 + one unit per block of W1 and W2
/// (16 blocks × 32 × 4 = 2048 each) + b2 128 = 32384; the dense GPT-2 fixture's layer reads
/// all of its MLP instead (c_fc 16384 + 512, c_proj 16384 + 128).
#[test]
fn report_counts_weight_bytes_read_per_token() {
    let dir = tempfile::tempdir().unwrap();
    for (model, want) in [
        ("gpt2-sparse-ff", 32384u64),
        (
            "gpt2",
            256 + 12288 + 384 + 4096 + 128 + 256 + 16384 + 512 + 16384 + 128,
        ),
    ] {
        let out = dir.path().join(model);
        let o = attnopt(&[
            "optimize",
            &format!("fixtures/{model}"),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("read per token"), "{}", stdout(&o));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        for l in report["layers"].as_array().unwrap() {
            assert_eq!(l["weights"]["before"], want, "{model}: {l}");
            assert_eq!(l["weights"]["after"], want, "{model}: {l}");
        }
        // inspect: both layers, ln_f (256) and one row each of wte and wpe (128 + 128).
        let o = attnopt(&["inspect", &format!("fixtures/{model}"), "--json"]);
        let i: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(i["weight_bytes_per_token"], 2 * want + 512, "{model}");
    }
}

/// `optimize --report FILE` writes the HTML page beside the folder; a report path inside the
/// output folder, or one that is an input, is refused before any work.
#[test]
fn optimize_writes_the_html_report_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (out, page) = (dir.path().join("opt"), dir.path().join("report.html"));
    let o = attnopt(&[
        "optimize",
        "fixtures/gpt2",
        "-o",
        out.to_str().unwrap(),
        "--report",
        page.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg"));
    let inside = dir.path().join("opt2").join("report.html");
    let o = attnopt(&[
        "optimize",
        "fixtures/gpt2",
        "-o",
        dir.path().join("opt2").to_str().unwrap(),
        "--report",
        inside.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is inside the output folder"),
        "{}",
        stderr(&o)
    );
    let o = attnopt(&[
        "optimize",
        "fixtures/gpt2",
        "-o",
        dir.path().join("opt3").to_str().unwrap(),
        "--report",
        "fixtures/gpt2/config.json",
    ]);
    assert!(!o.status.success());
    assert!(!dir.path().join("opt3").exists());
    let config = std::fs::read_to_string(root().join("fixtures/gpt2/config.json")).unwrap();
    assert!(config.starts_with('{'), "the input is untouched");
}

/// A folder with approximate conversions is also a transformers model folder: every weight in
/// model.safetensors, config.json with auto_map and the graph, the modeling file; attnopt
/// still loads it. An exact-only folder is not (and holds no weights).
#[test]
fn converted_folders_are_transformers_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (conv, exact) = (dir.path().join("conv"), dir.path().join("exact"));
    let o = attnopt(&[
        "optimize",
        "fixtures/bert",
        "-o",
        conv.to_str().unwrap(),
        "--allow",
        "hydra",
        "--budget",
        "inf",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "model.safetensors",
        "modeling_attnopt.py",
        "config.json",
        "graph.txt",
    ] {
        assert!(conv.join(f).is_file(), "{f}");
    }
    assert!(!conv.join("weights.safetensors").exists());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(conv.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "attnopt");
    assert_eq!(config["attnopt_source_model_type"], "bert");
    assert_eq!(
        config["auto_map"]["AutoModel"],
        "modeling_attnopt.AttnoptModel"
    );
    assert_eq!(
        config["attnopt_graph"].as_str().unwrap(),
        std::fs::read_to_string(conv.join("graph.txt")).unwrap()
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(conv.join("attnopt.json")).unwrap()).unwrap();
    assert_eq!(manifest["source_files"].as_array().unwrap().len(), 0);
    assert_eq!(config["attnopt_manifest"], manifest);
    let o = attnopt(&["inspect", conv.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = attnopt(&["optimize", "fixtures/bert", "-o", exact.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !exact.join("modeling_attnopt.py").exists() && !exact.join("model.safetensors").exists()
    );
}

/// `distill` runs in Python; without an interpreter that has attnopt and PyTorch it says how to
/// get one, in one line, before doing anything.
#[test]
fn distill_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    let o = attnopt(&[
        "distill",
        "fixtures/bert",
        "--teacher",
        "fixtures/bert",
        "--data",
        "fixtures/bert/golden.safetensors",
        "-o",
        out.to_str().unwrap(),
        "--python",
        "/nonexistent/python3",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("distill runs in Python") && err.contains("pip install torch"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!out.exists());
}
