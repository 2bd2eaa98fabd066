//! Sizes from users checked before memory is taken: each case below aborted the process (an
//! allocation of hundreds of GB) or spawned thousands of threads before these checks.

#[path = "support/cli.rs"]
mod cli;
use cli::{attnopt, stderr};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn refused(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected a refusal: {e}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "a clean error exit, not an abort: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "expected `{n}` in: {e}");
    }
}

/// `input_ids` of shape `[1, n]`, all ones.
fn long_ids(dir: &Path, n: usize) -> PathBuf {
    let bytes: Vec<u8> = (0..n).flat_map(|_| 1i64.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1, n], &bytes).unwrap();
    let path = dir.join("long.safetensors");
    std::fs::write(
        &path,
        safetensors::serialize(vec![("input_ids", view)], None).unwrap(),
    )
    .unwrap();
    path
}

#[test]
fn long_inputs_are_refused_with_the_limit_named() {
    let tmp = tempfile::tempdir().unwrap();
    // A million tokens: 16 TB of attention scores, beyond any machine this runs on.
    let ids = long_ids(tmp.path(), 1_000_000);
    let ids = ids.to_str().unwrap();
    let out = tmp.path().join("out.safetensors");
    let out = out.to_str().unwrap();
    // Learned positions: the table's length is the limit, on both executors.
    for backend in ["cpu", "interp"] {
        let o = attnopt(&[
            "run",
            "fixtures/bert",
            "-i",
            ids,
            "-o",
            out,
            "--backend",
            backend,
        ]);
        refused(&o, &["1000000 tokens", "64 positions"]);
        // RoPE has no table: the attention scores alone exceed any machine here.
        let o = attnopt(&[
            "run",
            "fixtures/llama",
            "-i",
            ids,
            "-o",
            out,
            "--backend",
            backend,
        ]);
        refused(
            &o,
            &[
                "one value alone",
                "attn_probs",
                "[1, 4, 1000000, 1000000]",
                "16.0 TB",
            ],
        );
    }
    assert!(!Path::new(out).exists());
}

#[test]
fn bench_and_optimize_sizes_are_checked_first() {
    refused(
        &attnopt(&["bench", "fixtures/llama", "--seq", "1000000000"]),
        &["--seq 1000000000", "one value alone", "PB"],
    );
    refused(
        &attnopt(&[
            "bench",
            "fixtures/llama",
            "--batch",
            "100000000",
            "--seq",
            "128",
        ]),
        &["--batch 100000000", "one value alone"],
    );
    refused(
        &attnopt(&["bench", "fixtures/bert", "--seq", "16,100000"]),
        &["--seq 100000", "64 positions"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    refused(
        &attnopt(&[
            "optimize",
            "fixtures/llama",
            "-o",
            out.to_str().unwrap(),
            "--verify",
            "--calib-seq",
            "1000000000",
        ]),
        &["calibration inputs of 1000000000 tokens", "one value alone"],
    );
    assert!(!out.exists());
    refused(
        &attnopt(&[
            "inspect",
            "fixtures/llama",
            "--backend",
            "cpu",
            "--seq",
            "1000000000",
        ]),
        &["--seq 1000000000", "one value alone"],
    );
}

#[test]
fn threads_beyond_the_cores_are_clamped_with_a_warning() {
    let golden = "fixtures/bert/golden.safetensors";
    let o = attnopt(&[
        "run",
        "fixtures/bert",
        "-i",
        golden,
        "--compare",
        golden,
        "--threads",
        "10000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--threads 10000 is more than the"),
        "{}",
        stderr(&o)
    );
}

/// Messages that pointed the wrong way before: each names the real problem now.
#[test]
fn everyday_mistakes_get_the_right_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.safetensors");
    let out = out.to_str().unwrap();
    // A ViT given a text model's inputs: the missing pixels, not the mask.
    refused(
        &attnopt(&[
            "run",
            "fixtures/vit",
            "-i",
            "fixtures/bert/golden.safetensors",
            "-o",
            out,
        ]),
        &["needs the input `pixel_values`"],
    );
    // --explain of a layer that does not exist.
    refused(
        &attnopt(&["optimize", "fixtures/bert", "--explain", "7"]),
        &["there is no layer 7", "0 to 1"],
    );
    // A Hub id instead of a folder.
    refused(
        &attnopt(&["inspect", "sentence-transformers/all-MiniLM-L6-v2"]),
        &["reads local model folders", "huggingface-cli download"],
    );
    // A file that is not safetensors at all.
    let npy = tmp.path().join("x.npy");
    std::fs::write(
        &npy,
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False}",
    )
    .unwrap();
    refused(
        &attnopt(&[
            "run",
            "fixtures/bert",
            "-i",
            npy.to_str().unwrap(),
            "-o",
            out,
        ]),
        &["not a safetensors file"],
    );
    // A FIFO as input: refused at once instead of blocking.
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    refused(
        &attnopt(&[
            "run",
            "fixtures/bert",
            "-i",
            fifo.to_str().unwrap(),
            "-o",
            out,
        ]),
        &["is not a regular file"],
    );
    // --budget without --allow does nothing, and says so; --allow without --budget names the
    // default it uses.
    let folder = tmp.path().join("opt");
    let o = attnopt(&[
        "optimize",
        "fixtures/bert",
        "-o",
        folder.to_str().unwrap(),
        "--budget",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--budget does nothing without --allow"),
        "{}",
        stderr(&o)
    );
    let o = attnopt(&[
        "optimize",
        "fixtures/bert",
        "-o",
        folder.to_str().unwrap(),
        "--force",
        "--allow",
        "hydra",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no --budget given"), "{}", stderr(&o));
    // The bundled BERT has 64 positions: bench's default length fits it.
    let o = attnopt(&[
        "bench",
        "fixtures/bert",
        "--reps",
        "1",
        "--no-optimise",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["runs"][0]["seq"], 64);
    // A ViT runs at its own length, labelled as such.
    let o = attnopt(&[
        "bench",
        "fixtures/vit",
        "--seq",
        "4096",
        "--reps",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("fixes its own length (17 tokens"),
        "{}",
        stderr(&o)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["runs"][0]["seq"], 17);
}

/// Files attnopt parses are read only when they are regular files, with a size cap, and a
/// message quotes at most a short escaped piece of them: `graph.txt` as a symlink to
/// `/dev/zero` read 4.2 GB before failing, a FIFO hung, and a symlink to a system file put
/// its first line into the error.
#[test]
fn parsed_files_are_regular_capped_and_not_quoted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("opt");
    let o = attnopt(&["optimize", "fixtures/bert", "-o", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let graph = dir.join("graph.txt");
    let inspect = || attnopt(&["inspect", dir.to_str().unwrap()]);
    std::fs::remove_file(&graph).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &graph).unwrap();
    refused(&inspect(), &["graph.txt: is not a regular file"]);
    std::fs::remove_file(&graph).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&graph)
        .status()
        .unwrap()
        .success());
    refused(&inspect(), &["graph.txt: is not a regular file"]);
    std::fs::remove_file(&graph).unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(
        &secret,
        "password=hunter2-and-the-rest-of-a-long-secret-line\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret, &graph).unwrap();
    let o = inspect();
    refused(&o, &["graph.txt: line 1"]);
    assert!(!stderr(&o).contains("rest-of-a-long"), "{}", stderr(&o));
    // A graph file past the cap is refused by its size, unread.
    std::fs::remove_file(&graph).unwrap();
    let f = std::fs::File::create(&graph).unwrap();
    f.set_len(attnopt::import::checkpoint::MAX_JSON_BYTES + 1)
        .unwrap();
    refused(&inspect(), &["too large for a graph file"]);
}

/// Cost figures are computed with saturating arithmetic; a saturated one says so instead of
/// printing u64::MAX as a number.
#[test]
fn saturated_costs_print_as_overflow() {
    let o = attnopt(&["inspect", "fixtures/llama", "--seq", "4000000000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("overflow"), "{out}");
    assert!(!out.contains("18446744"), "{out}");
}

/// Found by a hostile test pass after the first fixes; each aborted, panicked or gave wrong
/// numbers silently before.
#[test]
fn second_hostile_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = |p: &str| dir.join(p).to_str().unwrap().to_string();
    // The whole activation memory is checked, not only the largest value (this one passed the
    // largest-value check and then aborted allocating the arena).
    // At this batch the largest value (65.5 kB a row) takes about half the available memory
    // and the arena (229.6 kB a row) about twice it.
    let avail_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    let batch = (avail_kb * 1024 / 120_000).to_string();
    refused(
        &attnopt(&[
            "bench",
            "fixtures/bert",
            "--seq",
            "64",
            "--batch",
            &batch,
            "--reps",
            "1",
        ]),
        &["of activation memory, more than the"],
    );
    // A manifest with no source files and no weights: an error, not an index panic.
    let opt = path("opt");
    assert!(attnopt(&["optimize", "fixtures/bert", "-o", &opt])
        .status
        .success());
    let manifest = dir.join("opt/attnopt.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["source_files"] = serde_json::json!([]);
    std::fs::write(&manifest, m.to_string()).unwrap();
    refused(
        &attnopt(&["inspect", &opt]),
        &["lists no source files and no weights file"],
    );
    // Counts and durations that reserve memory or overflow a Duration.
    refused(
        &attnopt(&[
            "optimize",
            "fixtures/bert",
            "-o",
            &path("o2"),
            "--time-limit",
            "1e20",
        ]),
        &["--time-limit"],
    );
    refused(
        &attnopt(&["bench", "fixtures/bert", "--reps", "18446744073709551615"]),
        &["--reps takes at most"],
    );
    refused(
        &attnopt(&["bench", "fixtures/bert", "--ab", "2"]),
        &["--ab takes 5 to"],
    );
    // Calibration inputs that measure nothing must not make every conversion look free.
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1, 0], &[]).unwrap();
    std::fs::write(
        dir.join("empty.safetensors"),
        safetensors::serialize(vec![("input_ids", view)], None).unwrap(),
    )
    .unwrap();
    refused(
        &attnopt(&[
            "optimize",
            "fixtures/bert",
            "-o",
            &path("o3"),
            "--allow",
            "hydra",
            "--calib",
            &path("empty.safetensors"),
        ]),
        &["measure nothing"],
    );
    assert!(!dir.join("o3").exists());
    // rope_scaling beside rope_parameters is refused, not ignored.
    let llama = dir.join("llama");
    std::fs::create_dir(&llama).unwrap();
    for f in std::fs::read_dir(cli::root().join("fixtures/llama")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, llama.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = llama.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
    std::fs::write(&cfg, c.to_string()).unwrap();
    refused(
        &attnopt(&["inspect", llama.to_str().unwrap()]),
        &["rope_type \"llama3\""],
    );
    // Control characters from a manifest are escaped in messages.
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["source_files"] = serde_json::json!([{"name": "model.safetensors", "bytes": 1, "inode": 1,
        "mtime_ns": 1, "header_blake3": "", "sample_blake3": ""}]);
    m["source_relative"] = serde_json::json!("nope");
    m["source_absolute"] = serde_json::json!("/x\n\u{1b}[31mSUCCESS\u{1b}[0m");
    std::fs::write(&manifest, m.to_string()).unwrap();
    let o = attnopt(&["inspect", &opt]);
    refused(&o, &["\\u{1b}[31m"]);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    // One path for two outputs of `graph`.
    refused(
        &attnopt(&[
            "graph",
            "fixtures/bert",
            "--dot",
            &path("g"),
            "--text",
            &path("g"),
        ]),
        &["given for two outputs"],
    );
    assert!(!dir.join("g").exists());
}
