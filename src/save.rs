//! Writing an optimised model folder: graph text, new weights, manifest, config and report.
//!
//! The folder is assembled under a temporary name beside the target, loaded back as a check,
//! and only then renamed into place, so a failure never leaves a half-written model. The input
//! model is never modified.

use std::path::{Component, Path, PathBuf};

use attnopt_import::optimized::{Manifest, SourceFile, FORMAT, MANIFEST};

use crate::optimize::Optimization;
use crate::{tensors, Error, Model};
use attnopt_ir::fold::fold_weights;

/// What was written.
#[derive(Debug, Clone)]
pub struct Saved {
    pub dir: PathBuf,
    pub new_weights: usize,
    pub graph_nodes: usize,
}

/// `to` relative to the directory `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Writes `opt` for `model` to the folder `out` (replacing an existing one only with `force`).
pub fn save(model: &Model, opt: &Optimization, out: &Path, force: bool) -> Result<Saved, Error> {
    let usage = |msg: &str| Error::Usage {
        path: out.to_path_buf(),
        msg: msg.into(),
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    };
    let src = &model.imported().dir;
    if src.join(MANIFEST).exists() {
        return Err(Error::NotSupported(
            "optimising an already optimised folder; optimise the original model".into(),
        ));
    }
    let src_abs = src.canonicalize().map_err(io(src))?;
    if out.exists() {
        if out.canonicalize().map_err(io(out))? == src_abs {
            return Err(usage("is the input model; choose another output folder"));
        }
        if !force {
            return Err(usage("already exists; pass --force to replace it"));
        }
        if !out.join(MANIFEST).is_file() {
            return Err(usage(
                "exists and is not an attnopt output folder; refusing to replace it",
            ));
        }
    }
    let name = out
        .file_name()
        .ok_or_else(|| usage("is not a folder name"))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let parent_abs = parent.canonicalize().map_err(io(&parent))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let result = write_into(model, opt, &tmp, &src_abs, &parent_abs.join(name)).and_then(|saved| {
        // Load it back: what cannot be read back must not replace anything.
        let back = attnopt_import::load(&tmp)?;
        if back.graph.to_string()
            != std::fs::read_to_string(tmp.join("graph.txt")).map_err(io(&tmp))?
        {
            return Err(usage(
                "the written graph does not read back identically (a bug; please report it)",
            ));
        }
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(io(out))?;
        }
        std::fs::rename(&tmp, out).map_err(io(out))?;
        Ok(Saved {
            dir: out.to_path_buf(),
            ..saved
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_into(
    model: &Model,
    opt: &Optimization,
    dir: &Path,
    src_abs: &Path,
    final_abs: &Path,
) -> Result<Saved, Error> {
    let io = |path: PathBuf| {
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    };
    let folded = fold_weights(&opt.graph)
        .map_err(|e| Error::NotSupported(format!("precomputing weights: {e}")))?;
    let graph_text = folded.graph.to_string();
    std::fs::write(dir.join("graph.txt"), &graph_text).map_err(io(dir.join("graph.txt")))?;
    let weights = if folded.weights.is_empty() {
        None
    } else {
        tensors::write(&dir.join("weights.safetensors"), &folded.weights)?;
        Some("weights.safetensors".to_string())
    };
    let m = model.imported();
    let mut source_files = Vec::new();
    for f in m.checkpoint.files() {
        let name = f
            .strip_prefix(&m.dir)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::metadata(f).map_err(io(f.to_path_buf()))?.len();
        source_files.push(SourceFile { name, bytes });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        source_relative: relative(final_abs, src_abs).to_string_lossy().into_owned(),
        source_absolute: src_abs.to_string_lossy().into_owned(),
        source_files,
        arch: m.detection.arch,
        detected_by: m.detection.reason.clone(),
        dims: m.dims.clone(),
        graph: "graph.txt".into(),
        weights,
        target_seq: opt.report.target_seq,
    };
    std::fs::write(dir.join(MANIFEST), pretty(&manifest)).map_err(io(dir.join(MANIFEST)))?;
    std::fs::write(dir.join("report.json"), pretty(&opt.report))
        .map_err(io(dir.join("report.json")))?;
    std::fs::write(dir.join("report.txt"), opt.report.render())
        .map_err(io(dir.join("report.txt")))?;
    let config = m.dir.join("config.json");
    if config.is_file() {
        std::fs::copy(&config, dir.join("config.json")).map_err(io(config.clone()))?;
    }
    Ok(Saved {
        dir: dir.to_path_buf(),
        new_weights: folded.weights.len(),
        graph_nodes: folded.graph.node_count(),
    })
}

/// Pretty JSON (serialising these plain structs cannot fail).
fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("plain data serialises")
}
