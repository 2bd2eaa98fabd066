//! Checkpoint import: a safetensors checkpoint (+ config.json) becomes an ir [`Graph`].
//!
//! * [`checkpoint`] — memory-mapped, validated safetensors files (single or sharded);
//! * [`config`] — config.json with plausibility bounds;
//! * [`detect`] — which architecture, and why;
//! * `arch` — one template per architecture (BERT, GPT-2, ViT, LLaMA-style).
//!
//! **All checkpoint tensor names are mapped here and nowhere else.** Nothing in this crate
//! panics on a bad file: every failure is an [`ImportError`] naming the file and tensor.

mod arch;
pub mod checkpoint;
pub mod config;
pub mod detect;
mod error;
pub mod optimized;
pub mod synthetic;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attnopt_ir::Graph;

pub use checkpoint::Checkpoint;
pub use detect::{Arch, Detection};
pub use error::ImportError;
pub use template::Dims;

/// An imported model: its graph plus what import learned on the way.
pub struct Imported {
    pub dir: PathBuf,
    pub detection: Detection,
    pub dims: Dims,
    pub graph: Graph,
    /// Defaults and guesses taken because config.json was missing or incomplete.
    pub guesses: Vec<String>,
    pub checkpoint: Checkpoint,
    /// Checkpoint tensors the graph does not use (heads, poolers, ...).
    pub unused: Vec<String>,
}

impl Imported {
    /// Parameters in the checkpoint, per safetensors dtype name.
    pub fn params_by_dtype(&self) -> BTreeMap<String, u64> {
        self.checkpoint.params_by_dtype()
    }
}

/// Imports the model at `path` (a folder, or a `.safetensors` file with config.json beside it).
pub fn load(path: &Path) -> Result<Imported, ImportError> {
    if !path.exists() {
        return Err(ImportError::Io {
            path: path.into(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    if path.join(optimized::MANIFEST).is_file() {
        return optimized::load_optimized(path);
    }
    let dir = if path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        path.to_path_buf()
    };
    let checkpoint = Checkpoint::open(path)?;
    let cfg = config::Config::read(&dir)?;
    import(dir, checkpoint, cfg)
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
    Ok(Imported {
        dir,
        detection,
        dims: built.dims,
        graph: built.graph,
        guesses: cfg.guesses,
        checkpoint,
        unused,
    })
}
