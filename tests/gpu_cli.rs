//! The GPU backend from the command line: `emit --target cuda` (and how it refuses outputs it
//! must not write), `--backend cuda-sim` for `run` and `generate`, and `--backend cuda` saying
//! what is not supported yet.

#[path = "support/cli.rs"]
mod cli;
use cli::{attnopt, attnopt_env, stderr, stdout};

#[test]
fn run_on_the_simulator_matches_the_goldens() {
    let o = attnopt(&[
        "run",
        "fixtures/gpt2",
        "-i",
        "fixtures/gpt2/golden.safetensors",
        "--compare",
        "fixtures/gpt2/golden.safetensors",
        "--backend",
        "cuda-sim",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let err: f64 = out
        .lines()
        .find_map(|l| l.split("golden.safetensors: ").nth(1))
        .expect("a comparison line")
        .trim()
        .parse()
        .unwrap();
    assert!(err < 1e-4, "{out}");
    assert!(stderr(&o).contains("simulator"), "{}", stderr(&o));
}

#[test]
fn generate_on_the_simulator_equals_the_cpu_backend() {
    let args = |backend: &'static str| {
        vec![
            "generate",
            "fixtures/gpt2",
            "--prompt-ids",
            "1,2,3",
            "--max-new-tokens",
            "6",
            "--greedy",
            "--ignore-eos",
            "--backend",
            backend,
        ]
    };
    let sim = attnopt(&args("cuda-sim"));
    let cpu = attnopt(&args("cpu"));
    assert!(sim.status.success(), "{}", stderr(&sim));
    assert!(cpu.status.success(), "{}", stderr(&cpu));
    assert_eq!(stdout(&sim), stdout(&cpu));
    assert_eq!(stdout(&sim).split(',').count(), 6, "{}", stdout(&sim));
}

/// Without the driver (as on every CI machine), `--backend cuda` says in one line what is
/// missing; a library named in the environment is the one it looks for.
#[test]
fn cuda_backend_names_what_is_missing() {
    let args = [
        "run",
        "fixtures/bert",
        "-i",
        "fixtures/bert/golden.safetensors",
        "--compare",
        "fixtures/bert/golden.safetensors",
        "--backend",
        "cuda",
    ];
    let o = attnopt_env(&args, &[("ATTNOPT_LIBCUDA", "/nonexistent/libcuda.so.1")]);
    assert!(!o.status.success());
    let e = stderr(&o);
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(
        errors[0].contains("/nonexistent/libcuda.so.1 not found: no NVIDIA driver"),
        "{e}"
    );
    let has_driver = std::process::Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q 'libcuda.so.1 '"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_driver {
        let o = attnopt(&args);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("libcuda.so.1 not found"),
            "{}",
            stderr(&o)
        );
    }
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
    assert!(stderr(&o).contains("not supported yet"), "{}", stderr(&o));
    let o = attnopt(&[
        "run",
        "fixtures/bert",
        "-i",
        "fixtures/bert/golden.safetensors",
        "--backend",
        "cuda-sim",
        "--precision",
        "bf16",
    ]);
    assert!(stderr(&o).contains("f32 only"), "{}", stderr(&o));
}

#[test]
fn emit_writes_a_folder_and_refuses_what_it_must_not_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bert-cuda");
    let out_s = out.to_str().unwrap();
    let emit = |extra: &[&str]| {
        let mut a = vec!["emit", "fixtures/bert", "-o", out_s];
        a.extend_from_slice(extra);
        if !extra.contains(&"--seq") {
            a.extend(["--seq", "8"]);
        }
        attnopt(&a)
    };
    let o = emit(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("CUDA kernels"), "{}", stdout(&o));
    assert!(out.join("launch.json").is_file());
    assert!(out.join("attnopt_prelude.cuh").is_file());
    // Again: refused without --force, replaced with it.
    let o = emit(&[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = emit(&["--force", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(j["kernels"].as_u64().unwrap() > 0);
    // A folder emit did not write is never replaced, even with --force.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let o = attnopt(&[
        "emit",
        "fixtures/bert",
        "-o",
        other.to_str().unwrap(),
        "--force",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a folder `emit` wrote"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(other.join("keep.txt")).unwrap(),
        "mine"
    );
    // A symlink or a file as the output: refused, nothing written through it.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&other, &link).unwrap();
    let o = attnopt(&[
        "emit",
        "fixtures/bert",
        "-o",
        link.to_str().unwrap(),
        "--force",
    ]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let o = attnopt(&["emit", "fixtures/bert", "-o", file.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    // The model folder itself.
    let o = attnopt(&["emit", "fixtures/bert", "-o", "fixtures/bert", "--force"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("input model"), "{}", stderr(&o));
    // Empty and oversized programs are refused before anything is built.
    for (batch, seq) in [("0", "8"), ("1", "0")] {
        let o = emit(&["--force", "--batch", batch, "--seq", seq]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    }
    let o = attnopt(&[
        "emit",
        "fixtures/bert",
        "-o",
        out_s,
        "--force",
        "--seq",
        "100000",
    ]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

/// `inspect --backend cuda-sim` describes the GPU program `emit` would write.
#[test]
fn inspect_describes_the_gpu_program() {
    let o = attnopt(&[
        "inspect",
        "fixtures/gpt2",
        "--backend",
        "cuda-sim",
        "--seq",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("GPU backend (batch 1, 8 tokens"), "{out}");
    assert!(out.contains("2 attention layers fused"), "{out}");
    let o = attnopt(&["inspect", "fixtures/gpt2", "--backend", "cuda", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(j["gpu"]["launches"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["gpu"]["fused_attention"], 2, "{j}");
}
