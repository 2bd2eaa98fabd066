//! Optimised model folders (written by `attnopt optimize`): a manifest (`attnopt.json`), the
//! graph in ir's text form (`graph.txt`), and new weights (`weights.safetensors`). Unchanged
//! weights stay in the source checkpoint, which the manifest names with the sizes of its files
//! so a moved or changed source is detected instead of silently mixed in.

use std::path::{Path, PathBuf};

use crate::checkpoint::{read_json, Checkpoint, MAX_JSON_BYTES};
use crate::{Arch, Detection, Dims, ImportError, Imported};

/// The manifest's file name; its presence marks an optimised folder.
pub const MANIFEST: &str = "attnopt.json";
/// The format tag this version writes and reads.
pub const FORMAT: &str = "attnopt-optimized/1";

/// One file of the source checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub bytes: u64,
}

/// `attnopt.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The source model folder, relative to the optimised folder and absolute.
    pub source_relative: String,
    pub source_absolute: String,
    pub source_files: Vec<SourceFile>,
    pub arch: Arch,
    pub detected_by: String,
    pub dims: Dims,
    /// Graph text file name (in the optimised folder).
    pub graph: String,
    /// New weights file name, if any weights were computed.
    pub weights: Option<String>,
    /// The sequence length the graph was optimised for.
    pub target_seq: usize,
}

fn plain_name(name: &str) -> bool {
    let p = Path::new(name);
    p.components().count() == 1
        && matches!(p.components().next(), Some(std::path::Component::Normal(_)))
}

/// Loads an optimised folder.
pub fn load_optimized(dir: &Path) -> Result<Imported, ImportError> {
    let file = dir.join(MANIFEST);
    let bad = |msg: String| ImportError::Config {
        file: file.clone(),
        msg,
    };
    let m: Manifest = serde_json::from_value(read_json(&file)?)
        .map_err(|e| bad(format!("not an attnopt manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!(
            "format `{}` is not `{FORMAT}` (written by another attnopt version?)",
            m.format
        )));
    }
    for name in std::iter::once(&m.graph).chain(m.weights.iter()) {
        if !plain_name(name) {
            return Err(bad(format!(
                "`{name}` is not a plain file name in this folder"
            )));
        }
    }
    let relative = dir.join(&m.source_relative);
    let source: PathBuf = if relative.is_dir() {
        relative
    } else {
        PathBuf::from(&m.source_absolute)
    };
    for f in &m.source_files {
        if !plain_name(&f.name) {
            return Err(bad(format!(
                "source file `{}` is not a plain file name",
                f.name
            )));
        }
        let got = std::fs::metadata(source.join(&f.name))
            .map(|md| md.len())
            .ok();
        if got != Some(f.bytes) {
            return Err(bad(format!(
                "the source checkpoint changed or moved: {} should hold {} bytes ({})",
                source.join(&f.name).display(),
                f.bytes,
                got.map_or("missing".into(), |g| format!("has {g}"))
            )));
        }
    }
    let mut files: Vec<PathBuf> = m
        .source_files
        .iter()
        .map(|f| source.join(&f.name))
        .collect();
    if let Some(w) = &m.weights {
        files.push(dir.join(w));
    }
    let checkpoint = Checkpoint::from_files(&files)?;
    let graph_file = dir.join(&m.graph);
    let len = std::fs::metadata(&graph_file)
        .map_err(|source| ImportError::Io {
            path: graph_file.clone(),
            source,
        })?
        .len();
    if len > MAX_JSON_BYTES {
        return Err(ImportError::Config {
            file: graph_file,
            msg: format!("{len} bytes is too large for a graph file"),
        });
    }
    let text = std::fs::read_to_string(&graph_file).map_err(|source| ImportError::Io {
        path: graph_file.clone(),
        source,
    })?;
    let mut resolve = |name: &str| {
        checkpoint
            .weight(name, m.arch.name())
            .map_err(|e| e.to_string())
    };
    let graph =
        attnopt_ir::parse::parse_graph(&text, &mut resolve).map_err(|e| ImportError::Config {
            file: graph_file.clone(),
            msg: e.to_string(),
        })?;
    let unused = checkpoint.unused_by(graph.weights().iter().map(|w| w.name()));
    Ok(Imported {
        dir: dir.to_path_buf(),
        detection: Detection {
            arch: m.arch,
            reason: format!(
                "optimised by attnopt from {} ({})",
                source.display(),
                m.detected_by
            ),
            prefix: "",
        },
        dims: m.dims,
        graph,
        guesses: vec![],
        checkpoint,
        unused,
    })
}
