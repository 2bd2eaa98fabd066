//! Checkpoint import: a safetensors checkpoint (+ config.json) becomes an ir [`Graph`].
//!
//! * [`checkpoint`] — memory-mapped, validated safetensors files (single or sharded);
//! * [`config`] — config.json with plausibility bounds;
//! * [`detect`] — which architecture, and why;
//! * [`optimized`] — optimised folders, and [`fingerprint`] — how they recognise their source;
//! * `arch` — one template per architecture (BERT, GPT-2, ViT, LLaMA-style).
//!
//! **All checkpoint tensor names are mapped here and nowhere else.** Nothing in this crate
//! panics on a bad file: every failure is an [`ImportError`] naming the file and tensor.

mod arch;
pub mod checkpoint;
pub mod config;
pub mod detect;
mod error;
pub mod fingerprint;
pub mod generation;
pub mod lm_head;
pub mod optimized;
mod sparse_spec;
pub mod synthetic;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attnopt_ir::Graph;

pub use checkpoint::Checkpoint;
pub use detect::{Arch, Detection};
pub use error::ImportError;
pub use sparse_spec::{SparseFfSpec, SparseQkv};
pub use template::Dims;

/// An imported model: its graph plus what import learned on the way.
pub struct Imported {
    pub dir: PathBuf,
    pub detection: Detection,
    pub dims: Dims,
    pub graph: Graph,
    /// Defaults and guesses taken because config.json was missing or incomplete.
    pub guesses: Vec<String>,
    /// The guesses nothing in the checkpoint confirms and that change what the model computes
    /// (see [`config::Config::unconfirmed`]); [`load_with`] refuses them unless accepted.
    pub unconfirmed: Vec<String>,
    pub checkpoint: Checkpoint,
    /// Checkpoint tensors the graph does not use (heads, poolers, ...).
    pub unused: Vec<String>,
    /// Every file import read (checkpoint, config, shard index, manifest, graph text): what an
    /// output must never replace.
    pub files_read: Vec<PathBuf>,
}

impl Imported {
    /// Parameters in the checkpoint, per safetensors dtype name.
    pub fn params_by_dtype(&self) -> BTreeMap<String, u64> {
        self.checkpoint.params_by_dtype()
    }
}

/// How much checking [`load_with`] does beyond what is always done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// For an optimised folder: hash every byte of the source checkpoint and compare it with
    /// the hash recorded when the folder was written (the default checks metadata, the
    /// header and sampled blocks only).
    pub verify_source: bool,
    /// Accept a model whose dimensions had to be guessed ([`Imported::unconfirmed`]); without
    /// it such a model is refused, since a wrong guess gives wrong numbers silently.
    pub accept_guesses: bool,
    /// Add a decoder's language-model head as the output `logits` ([`lm_head`]).
    pub logits: bool,
}

/// Imports the model at `path` (a folder, or a `.safetensors` file with config.json beside it).
pub fn load(path: &Path) -> Result<Imported, ImportError> {
    load_with(path, &LoadOptions::default())
}

/// [`load`] with options.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Imported, ImportError> {
    if !path.exists() {
        return Err(ImportError::NotFound {
            path: path.into(),
            hint: not_found_hint(path),
        });
    }
    if path.join(optimized::MANIFEST).is_file() {
        let mut m = optimized::load_optimized(path, opts)?;
        if opts.logits && m.graph.output("logits").is_none() {
            lm_head::add(&mut m)?;
        }
        return Ok(m);
    }
    let dir = if path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        path.to_path_buf()
    };
    let checkpoint = Checkpoint::open(path)?;
    let cfg = config::Config::read(&dir)?;
    let mut imported = import(dir, checkpoint, cfg)?;
    if opts.logits {
        lm_head::add(&mut imported)?;
    }
    if !opts.accept_guesses && !imported.unconfirmed.is_empty() {
        return Err(ImportError::Guessed {
            dir: imported.dir,
            guesses: imported.unconfirmed.join("; "),
        });
    }
    Ok(imported)
}

/// What to say about a model path that does not exist: a Hugging Face Hub id (`org/name`)
/// gets how to download it, since attnopt reads local folders only.
fn not_found_hint(path: &Path) -> String {
    let text = path.to_string_lossy();
    let hub_like = !text.starts_with(['.', '/', '~'])
        && text.matches('/').count() <= 1
        && !text.ends_with(".safetensors")
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if hub_like {
        format!(
            "no such folder. attnopt reads local model folders; if `{text}` is a Hugging Face \
             Hub id, download it first (`huggingface-cli download {text} --local-dir DIR`), \
             then pass DIR"
        )
    } else {
        "no such file or folder".into()
    }
}

/// Imports a checkpoint already in memory with the given config.json contents (`dir` names the
/// model in messages). For synthetic models in benchmarks and tests; [`load`] is the usual entry.
pub fn load_in_memory(
    dir: &Path,
    checkpoint: Checkpoint,
    config: serde_json::Value,
) -> Result<Imported, ImportError> {
    let cfg = config::Config {
        file: dir.join("config.json"),
        json: config,
        present: true,
        guesses: vec![],
        unconfirmed: vec![],
    };
    import(dir.to_path_buf(), checkpoint, cfg)
}

fn import(
    dir: PathBuf,
    checkpoint: Checkpoint,
    mut cfg: config::Config,
) -> Result<Imported, ImportError> {
    let detection =
        detect::detect(&cfg, &checkpoint).map_err(|msg| ImportError::UnknownArchitecture {
            dir: dir.clone(),
            msg,
        })?;
    let built = arch::build(detection.arch, &checkpoint, &mut cfg, detection.prefix)?;
    let unused = checkpoint.unused_by(built.used.iter().map(String::as_str));
    let index = dir.join("model.safetensors.index.json");
    let files_read = checkpoint
        .files()
        .into_iter()
        .map(Path::to_path_buf)
        .chain(cfg.present.then(|| cfg.file.clone()))
        .chain(index.is_file().then_some(index))
        .collect();
    Ok(Imported {
        dir,
        detection,
        dims: built.dims,
        graph: built.graph,
        guesses: cfg.guesses,
        unconfirmed: cfg.unconfirmed,
        checkpoint,
        unused,
        files_read,
    })
}
