//! Optimised model folders (written by `attnopt optimize`): a manifest (`attnopt.json`), the
//! graph in ir's text form (`graph.txt`), and new weights (`weights.safetensors`). Unchanged
//! weights stay in the source checkpoint, which the manifest names with a [`Fingerprint`] of
//! each of its files, so a moved or changed source is refused instead of silently mixed in.

use std::path::{Path, PathBuf};

use crate::checkpoint::{read_json, Checkpoint, MAX_JSON_BYTES};
use crate::fingerprint::{Depth, Fingerprint};
use crate::{Arch, Detection, Dims, ImportError, Imported, LoadOptions};

/// The manifest's file name; its presence marks an optimised folder.
pub const MANIFEST: &str = "attnopt.json";
/// The format tag this version writes and reads.
pub const FORMAT: &str = "attnopt-optimized/2";

/// One file of the source checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    pub name: String,
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
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
    /// Every file attnopt wrote into the folder, this manifest included; `optimize --force`
    /// replaces only a folder that holds exactly these.
    pub files: Vec<String>,
}

impl Manifest {
    /// Reads and checks `dir/attnopt.json` (format and plain file names).
    pub fn read(dir: &Path) -> Result<Manifest, ImportError> {
        let file = dir.join(MANIFEST);
        let bad = |msg: String| ImportError::Config {
            file: file.clone(),
            msg,
        };
        let json = read_json(&file)?;
        if let Some(format) = json.get("format").and_then(|f| f.as_str()) {
            if format != FORMAT {
                return Err(bad(format!(
                    "format `{format}` is not `{FORMAT}` (written by another attnopt version; \
                     optimise the source model again)"
                )));
            }
        }
        let m: Manifest = serde_json::from_value(json)
            .map_err(|e| bad(format!("not an attnopt manifest: {e}")))?;
        let names = m.files.iter().chain(m.source_files.iter().map(|f| &f.name));
        for name in names
            .chain(std::iter::once(&m.graph))
            .chain(m.weights.iter())
        {
            if !plain_name(name) {
                return Err(bad(format!(
                    "`{name}` is not a plain file name in this folder"
                )));
            }
        }
        Ok(m)
    }
}

fn plain_name(name: &str) -> bool {
    let p = Path::new(name);
    p.components().count() == 1
        && matches!(p.components().next(), Some(std::path::Component::Normal(_)))
}

/// Loads an optimised folder, refusing it when its source checkpoint changed.
pub fn load_optimized(dir: &Path, opts: &LoadOptions) -> Result<Imported, ImportError> {
    let file = dir.join(MANIFEST);
    let m = Manifest::read(dir)?;
    let graph_file = dir.join(&m.graph);
    let relative = dir.join(&m.source_relative);
    let source: PathBuf = if relative.is_dir() {
        relative
    } else {
        PathBuf::from(&m.source_absolute)
    };
    let depth = if opts.verify_source {
        Depth::Full
    } else {
        Depth::Sampled
    };
    for f in &m.source_files {
        let path = source.join(&f.name);
        f.fingerprint
            .check(&path, depth)
            .map_err(|why| ImportError::SourceChanged {
                manifest: file.clone(),
                file: path,
                why: why.0,
            })?;
    }
    let mut files: Vec<PathBuf> = m
        .source_files
        .iter()
        .map(|f| source.join(&f.name))
        .collect();
    if let Some(w) = &m.weights {
        files.push(dir.join(w));
    }
    if files.is_empty() {
        return Err(ImportError::Config {
            file: file.clone(),
            msg: "lists no source files and no weights file: there is nothing to read weights from"
                .into(),
        });
    }
    let checkpoint = Checkpoint::from_files(&files)?;
    let text = crate::checkpoint::read_text_capped(&graph_file, MAX_JSON_BYTES, "graph file")?;
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
    let files_read = checkpoint
        .files()
        .into_iter()
        .map(Path::to_path_buf)
        .chain([file.clone(), graph_file.clone()])
        .collect();
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
        unconfirmed: vec![],
        checkpoint,
        unused,
        files_read,
    })
}
