//! Fuzz harnesses: one function per kind of untrusted input, shared by the `cargo fuzz` targets
//! in `fuzz/fuzz_targets/` and by the corpus replay in `tests/fuzz_corpus.rs` (which runs every
//! file of `fuzz/corpus/TARGET/` through the same function in CI).
//!
//! Each takes arbitrary bytes and must return without panicking, aborting or reading out of
//! bounds; errors are the expected outcome. Inputs that go through files are written to one
//! file per target in a private temporary folder, overwritten on every call.
#![allow(dead_code)] // each fuzz target uses one function of it

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use attnopt::import::{Checkpoint, LoadOptions};
use attnopt::{Backend, Model, RunOptions};

/// The targets, by name (the folder names under `fuzz/corpus/`).
pub const TARGETS: [&str; 6] = [
    "safetensors",
    "config",
    "rules",
    "graph_text",
    "manifest",
    "run_input",
];

/// Runs `target`'s harness on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "safetensors" => safetensors(data),
        "config" => config(data),
        "rules" => rules(data),
        "graph_text" => graph_text(data),
        "manifest" => manifest(data),
        "run_input" => run_input(data),
        _ => panic!("no fuzz target `{target}`"),
    }
}

/// The repository's `fixtures/` folder.
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("fixtures/bert/model.safetensors").is_file())
        .expect("run from inside the attnopt repository")
        .join("fixtures")
}

/// A private scratch folder for this process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("a scratch folder")
    })
    .path()
}

/// A folder of this process holding a copy of `fixtures/bert` (checkpoint and config).
fn bert_copy(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    if !dir.is_dir() {
        std::fs::create_dir(&dir).expect("scratch folder");
        for f in ["model.safetensors", "config.json"] {
            std::fs::copy(fixtures().join("bert").join(f), dir.join(f)).expect("copy fixture");
        }
    }
    dir
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write scratch file");
}

/// A safetensors file: header, offsets, dtypes; every tensor it accepts is read whole.
pub fn safetensors(data: &[u8]) {
    let path = scratch().join("fuzz.safetensors");
    write(&path, data);
    if let Ok(ck) = Checkpoint::from_files(std::slice::from_ref(&path)) {
        for name in ck.tensors().keys() {
            if let Ok(w) = ck.weight(name, "fuzz") {
                let _ = w.to_tensor();
            }
        }
    }
}

/// config.json beside a valid BERT checkpoint.
pub fn config(data: &[u8]) {
    let dir = bert_copy("config");
    write(&dir.join("config.json"), data);
    let opts = LoadOptions {
        accept_guesses: true,
        ..Default::default()
    };
    let _ = attnopt::import::load_with(&dir, &opts);
}

/// A rule file.
pub fn rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let _ = attnopt::rewrite::RuleSet::from_texts([("fuzz.rules".to_string(), text)]);
}

/// The graph text form, weights resolved from the BERT fixture's checkpoint.
pub fn graph_text(data: &[u8]) {
    static CK: OnceLock<Checkpoint> = OnceLock::new();
    let ck = CK.get_or_init(|| {
        Checkpoint::from_files(&[fixtures().join("bert/model.safetensors")]).expect("fixture")
    });
    let text = String::from_utf8_lossy(data);
    let mut resolve = |name: &str| ck.weight(name, "bert").map_err(|e| e.to_string());
    if let Ok(g) = attnopt::ir::parse::parse_graph(&text, &mut resolve) {
        // What parses must print and parse back identically.
        let printed = g.to_string();
        let again = attnopt::ir::parse::parse_graph(&printed, &mut resolve)
            .expect("a printed graph parses");
        assert_eq!(again.to_string(), printed, "text form round trip");
    }
}

/// An optimised folder's manifest (`attnopt.json`) beside a valid graph, the source being a
/// copy of the BERT fixture.
pub fn manifest(data: &[u8]) {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    let dir = FOLDER.get_or_init(|| {
        let src = bert_copy("manifest-source");
        let model = Model::load(&src).expect("fixture loads");
        let opt = attnopt::optimize::optimize(&model, &Default::default(), &mut |_| {})
            .expect("fixture optimises");
        let out = scratch().join("manifest-folder");
        attnopt::save::save(&model, &opt, &out, &Default::default()).expect("save");
        out
    });
    write(&dir.join("attnopt.json"), data);
    let _ = attnopt::import::load(dir);
}

/// A `run` input file, fed to the BERT fixture on the reference interpreter.
pub fn run_input(data: &[u8]) {
    static MODEL: OnceLock<Model> = OnceLock::new();
    let model = MODEL.get_or_init(|| Model::load(&fixtures().join("bert")).expect("fixture"));
    let path = scratch().join("input.safetensors");
    write(&path, data);
    let Ok(all) = attnopt::tensors::read(&path) else {
        return;
    };
    let takes = model.input_names();
    let inputs: BTreeMap<_, _> = all
        .into_iter()
        .filter(|(k, _)| takes.contains(&k.as_str()))
        .collect();
    let _ = model.run(
        inputs,
        RunOptions {
            all_layers: true,
            backend: Backend::Interp,
        },
    );
}
