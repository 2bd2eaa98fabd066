//! Writing an optimised model folder: graph text, new weights, manifest, config and report.
//!
//! The folder is assembled under an unpredictable temporary name beside the target, loaded back
//! as a check, and only then renamed into place ([`crate::output::write_dir`]), so a failure
//! never leaves a half-written model. The input model is never modified. The manifest records a
//! fingerprint of every source file, so a source that changes later is refused on load.

use std::path::{Component, Path, PathBuf};

use attnopt_import::optimized::{Manifest, SourceFile, FORMAT, MANIFEST};

use crate::optimize::Optimization;
use crate::{Error, Model};
use attnopt_ir::fold::fold_weights_keeping_bf16;
use attnopt_ir::{DType, Graph, Op, Weight};

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

/// How [`save`] writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveOptions {
    /// Replace an existing folder, if it holds exactly what attnopt writes.
    pub force: bool,
    /// Fold weight-only transformations here and copy every weight the graph reads into the
    /// folder, so it needs nothing from the source (for moving it to another machine).
    pub standalone: bool,
    /// Record a hash of every byte of the source checkpoint (done anyway when it is at most
    /// [`FULL_HASH_UP_TO`] bytes) so that loading with `verify_source` can check it.
    pub hash_source: bool,
}

/// Source checkpoints up to this many bytes get a hash of every byte without being asked.
pub const FULL_HASH_UP_TO: u64 = 256 << 20;

/// Report files written beside the manifest.
const REPORT_JSON: &str = "report.json";
const REPORT_TXT: &str = "report.txt";
const GRAPH: &str = "graph.txt";
const WEIGHTS: &str = "weights.safetensors";
const CONFIG: &str = "config.json";
/// A folder with approximate conversions is also a transformers model folder: its weights in
/// `model.safetensors` (named as the graph names them, which are the PyTorch model's parameter
/// names), config.json with `auto_map`, and this modeling file (docs/PYTHON.md).
const HF_WEIGHTS: &str = "model.safetensors";
const MODELING: &str = "modeling_attnopt.py";
/// A tokenizer's files, copied along when the source has them.
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];
const MODELING_SOURCE: &str = include_str!("../python/attnopt/modeling_attnopt.py");

/// The checks [`save`] makes before writing that need no optimisation result, so that a
/// command can refuse at once instead of after minutes of work: the source is not itself an
/// optimised folder, `out` is not the source, and an existing `out` is replaced only with
/// `force` and only when attnopt wrote it. `save` checks them again when it writes.
pub fn preflight(model: &Model, out: &Path, force: bool) -> Result<(), Error> {
    let usage = |msg: &str| Error::Usage {
        path: out.to_path_buf(),
        msg: msg.into(),
    };
    let src = &model.imported().dir;
    if src.join(MANIFEST).exists() {
        return Err(Error::NotSupported(
            "optimising an already optimised folder; optimise the original model".into(),
        ));
    }
    if let (Ok(o), Ok(s)) = (out.canonicalize(), src.canonicalize()) {
        if o == s {
            return Err(usage("is the input model; choose another output folder"));
        }
    }
    if std::fs::symlink_metadata(out).is_ok() {
        if !force {
            return Err(usage("already exists; pass --force to replace it"));
        }
        if out.is_dir() {
            written_by_attnopt(out).map_err(|why| {
                usage(&format!(
                    "is not a folder attnopt wrote ({why}); refusing to replace it"
                ))
            })?;
        }
    }
    Ok(())
}

/// The checks on `optimize --report FILE` made before any work: the file's folder exists, and
/// the file is not inside the output folder (which is replaced whole), not inside the source
/// model's folder, and not one of the command's inputs (the model's files, the calibration
/// file, the rule files).
pub fn check_report_target(
    model: &Model,
    out: &Path,
    report: &Path,
    opts: &crate::optimize::OptimizeOptions,
) -> Result<(), Error> {
    let usage = |msg: String| Error::Usage {
        path: report.to_path_buf(),
        msg,
    };
    let name = report
        .file_name()
        .ok_or_else(|| usage("is not a file name".into()))?;
    let parent = match report.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let inside_out = || {
        usage(
            "is inside the output folder, which is replaced whole; write the report beside it"
                .into(),
        )
    };
    // Lexically first (the output folder need not exist yet), then resolved below.
    if let (Ok(r), Ok(o)) = (std::path::absolute(report), std::path::absolute(out)) {
        if r.starts_with(o) {
            return Err(inside_out());
        }
    }
    let folder = parent.canonicalize().map_err(|e| {
        usage(format!(
            "its folder {} cannot be used ({e}); create it first",
            parent.display()
        ))
    })?;
    let resolved = folder.join(name);
    // The output folder may not exist yet: resolve its parent.
    let out_resolved = match (out.parent(), out.file_name()) {
        (Some(p), Some(n)) if !p.as_os_str().is_empty() => p.canonicalize().ok().map(|p| p.join(n)),
        (_, Some(n)) => std::env::current_dir().ok().map(|d| d.join(n)),
        _ => None,
    };
    if out_resolved.is_some_and(|o| resolved.starts_with(o)) {
        return Err(inside_out());
    }
    let source = model.imported().dir.canonicalize().ok();
    if source.is_some_and(|s| resolved.starts_with(s)) {
        return Err(usage(
            "is inside the source model's folder; write the report elsewhere".into(),
        ));
    }
    let mut inputs = model.inputs();
    if let Some(c) = &opts.calib {
        inputs.add(c);
    }
    if let Some(dir) = &opts.rules_dir {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                inputs.add(&e.path());
            }
        }
        if let Ok(d) = dir.canonicalize() {
            if resolved.starts_with(d) {
                return Err(usage(
                    "is inside the --rules folder; write it elsewhere".into(),
                ));
            }
        }
    }
    crate::output::check_file_target(report, &inputs)
}

/// Writes `opt` for `model` to the folder `out` (see [`crate::output::write_dir`]; an existing
/// folder is replaced only with `force`, and only when it holds exactly the files its manifest
/// says attnopt wrote).
pub fn save(
    model: &Model,
    opt: &Optimization,
    out: &Path,
    opts: &SaveOptions,
) -> Result<Saved, Error> {
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
    if out.canonicalize().is_ok_and(|o| o == src_abs) {
        return Err(usage("is the input model; choose another output folder"));
    }
    let name = out
        .file_name()
        .ok_or_else(|| usage("is not a folder name"))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let final_abs = parent.canonicalize().map_err(io(&parent))?.join(name);
    let replaceable = |dir: &Path| {
        if !opts.force {
            return Err(usage("already exists; pass --force to replace it"));
        }
        written_by_attnopt(dir).map_err(|why| {
            usage(&format!(
                "is not a folder attnopt wrote ({why}); refusing to replace it"
            ))
        })
    };
    let check = |tmp: &Path| {
        // Load it back: what cannot be read back must not replace anything.
        let back = attnopt_import::load(tmp)?;
        let text = std::fs::read_to_string(tmp.join(GRAPH)).map_err(io(tmp))?;
        if back.graph.to_string() != text {
            return Err(usage(
                "the written graph does not read back identically (a bug; please report it)",
            ));
        }
        Ok(())
    };
    let saved = crate::output::write_dir(
        out,
        replaceable,
        |tmp| write_into(model, opt, tmp, &src_abs, &final_abs, opts),
        check,
    )?;
    Ok(Saved {
        dir: out.to_path_buf(),
        ..saved
    })
}

/// Whether `dir` holds exactly what attnopt writes: a readable manifest and, besides it, only
/// the regular files it lists (else why not).
fn written_by_attnopt(dir: &Path) -> Result<(), String> {
    let m = Manifest::read(dir).map_err(|e| e.to_string())?;
    let listed: std::collections::BTreeSet<&str> = m.files.iter().map(String::as_str).collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if !regular || !listed.contains(name.as_ref()) {
            return Err(format!("it holds `{name}`, which attnopt did not write"));
        }
        seen += 1;
    }
    if seen != listed.len() {
        return Err("files its manifest lists are missing".into());
    }
    Ok(())
}

fn write_into(
    model: &Model,
    opt: &Optimization,
    dir: &Path,
    src_abs: &Path,
    final_abs: &Path,
    opts: &SaveOptions,
) -> Result<Saved, Error> {
    let io = |path: PathBuf| {
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    };
    let m = model.imported();
    // By default the folder refers to the source's tensors: weight-only transformations (Q/K/V
    // concatenation, scale folding, transposes) stay graph nodes over them, folded when a
    // backend prepares the weights, so an exact-only folder holds no weights at all. With
    // `standalone` they are folded here and every weight the graph reads is copied in.
    // Converted models go back to PyTorch for fine-tuning: such a folder is also a
    // transformers model folder, holding every weight it needs.
    let transformers = opt.report.layers.iter().any(|l| !l.converted.is_empty());
    let standalone = opts.standalone || transformers;
    let weights_file = if transformers { HF_WEIGHTS } else { WEIGHTS };
    let graph = if standalone {
        fold_weights_keeping_bf16(&opt.graph)
            .map_err(|e| Error::NotSupported(format!("precomputing weights: {e}")))?
            .graph
    } else {
        opt.graph.clone()
    };
    let graph_text = graph.to_string();
    // `dir` is a fresh private folder of our own (made with O_EXCL by `output::write_dir`), so
    // plain writes into it are safe.
    let mut files = vec![
        MANIFEST.to_string(),
        GRAPH.into(),
        REPORT_JSON.into(),
        REPORT_TXT.into(),
    ];
    std::fs::write(dir.join(GRAPH), &graph_text).map_err(io(dir.join(GRAPH)))?;
    let to_write: Vec<&Weight> = used_weights(&graph)
        .into_iter()
        .filter(|w| standalone || !m.checkpoint.contains(w.name()))
        .collect();
    let weights = if to_write.is_empty() {
        None
    } else {
        write_weights(&dir.join(weights_file), &to_write)?;
        // safetensors creates its file owner-only; give it the mode (umask applied) the other
        // files got.
        let mode = std::fs::metadata(dir.join(GRAPH)).map_err(io(dir.join(GRAPH)))?;
        std::fs::set_permissions(dir.join(weights_file), mode.permissions())
            .map_err(io(dir.join(weights_file)))?;
        files.push(weights_file.into());
        Some(weights_file.to_string())
    };
    let mut total = 0u64;
    for f in m.checkpoint.files() {
        total += std::fs::metadata(f).map_err(io(f.to_path_buf()))?.len();
    }
    let full = opts.hash_source || total <= FULL_HASH_UP_TO;
    let mut source_files = Vec::new();
    // A standalone folder needs nothing from its source.
    let sources = if standalone {
        vec![]
    } else {
        m.checkpoint.files()
    };
    for f in sources {
        let name = f
            .strip_prefix(&m.dir)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        let fingerprint = attnopt_import::fingerprint::Fingerprint::of(f, full)?;
        source_files.push(SourceFile { name, fingerprint });
    }
    let config = m.dir.join(CONFIG);
    if config.is_file() || transformers {
        files.push(CONFIG.into());
    }
    if transformers {
        files.push(MODELING.into());
    }
    // The tokenizer travels with the model (text input, transformers' AutoTokenizer).
    let tokenizer_files: Vec<&str> = TOKENIZER_FILES
        .iter()
        .copied()
        .filter(|f| m.dir.join(f).is_file())
        .collect();
    files.extend(tokenizer_files.iter().map(|f| f.to_string()));
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
        files,
    };
    std::fs::write(dir.join(MANIFEST), pretty(&manifest)).map_err(io(dir.join(MANIFEST)))?;
    std::fs::write(dir.join(REPORT_JSON), pretty(&opt.report))
        .map_err(io(dir.join(REPORT_JSON)))?;
    std::fs::write(dir.join(REPORT_TXT), opt.report.render()).map_err(io(dir.join(REPORT_TXT)))?;
    for f in &tokenizer_files {
        std::fs::copy(m.dir.join(f), dir.join(f)).map_err(io(m.dir.join(f)))?;
    }
    if transformers {
        let json = transformers_config(&config, &graph_text, &manifest)?;
        std::fs::write(dir.join(CONFIG), json).map_err(io(dir.join(CONFIG)))?;
        std::fs::write(dir.join(MODELING), MODELING_SOURCE).map_err(io(dir.join(MODELING)))?;
    } else if config.is_file() {
        std::fs::copy(&config, dir.join(CONFIG)).map_err(io(config.clone()))?;
    }
    Ok(Saved {
        dir: dir.to_path_buf(),
        new_weights: to_write.len(),
        graph_nodes: graph.node_count(),
    })
}

/// config.json of a transformers folder: the source's settings (if it has a config.json), the
/// auto classes of [`MODELING`], the graph text and attnopt's manifest (which the PyTorch
/// model's `save_pretrained` writes back as graph.txt and attnopt.json).
fn transformers_config(source: &Path, graph: &str, manifest: &Manifest) -> Result<String, Error> {
    let mut config = if source.is_file() {
        let text = std::fs::read_to_string(source).map_err(|e| Error::Io {
            path: source.to_path_buf(),
            source: e,
        })?;
        serde_json::from_str::<serde_json::Value>(&text).map_err(|e| Error::Usage {
            path: source.to_path_buf(),
            msg: format!("not JSON: {e}"),
        })?
    } else {
        serde_json::json!({})
    };
    let Some(obj) = config.as_object_mut() else {
        return Err(Error::Usage {
            path: source.to_path_buf(),
            msg: "is not a JSON object".into(),
        });
    };
    if let Some(t) = obj.remove("model_type") {
        obj.insert("attnopt_source_model_type".into(), t);
    }
    obj.insert("model_type".into(), "attnopt".into());
    obj.insert("architectures".into(), serde_json::json!(["AttnoptModel"]));
    obj.insert(
        "auto_map".into(),
        serde_json::json!({
            "AutoConfig": "modeling_attnopt.AttnoptConfig",
            "AutoModel": "modeling_attnopt.AttnoptModel",
        }),
    );
    obj.insert("attnopt_graph".into(), graph.into());
    // Through its text, so f32 fields read back as attnopt.json spells them (1e-12, not the
    // f64 widening 9.99…e-13).
    let manifest: serde_json::Value = serde_json::from_str(&pretty(manifest))
        .map_err(|e| Error::NotSupported(format!("the manifest as JSON: {e}")))?;
    obj.insert("attnopt_manifest".into(), manifest);
    Ok(pretty(&config))
}

/// The weights `g`'s nodes read, each once.
fn used_weights(g: &Graph) -> Vec<&Weight> {
    let mut seen = std::collections::BTreeSet::new();
    g.topo_order()
        .into_iter()
        .filter_map(|n| match &g.node(n).op {
            Op::Weight(id) if seen.insert(*id) => Some(g.weight_data(*id)),
            _ => None,
        })
        .collect()
}

/// Writes `weights` with their own dtypes (bf16 stays bf16) as one safetensors file, streamed
/// from their storage (the source's mmap), into the private folder being assembled.
fn write_weights(path: &Path, weights: &[&Weight]) -> Result<(), Error> {
    let err = |msg: String| Error::Output {
        path: path.to_path_buf(),
        msg,
    };
    let views = weights
        .iter()
        .map(|w| {
            let dtype = match w.dtype() {
                DType::F64 => safetensors::Dtype::F64,
                DType::F32 => safetensors::Dtype::F32,
                DType::F16 => safetensors::Dtype::F16,
                DType::BF16 => safetensors::Dtype::BF16,
                DType::I64 => safetensors::Dtype::I64,
                DType::I32 => safetensors::Dtype::I32,
                DType::I16 => safetensors::Dtype::I16,
                DType::I8 => safetensors::Dtype::I8,
                DType::U8 => safetensors::Dtype::U8,
                DType::Bool => safetensors::Dtype::BOOL,
            };
            safetensors::tensor::TensorView::new(dtype, w.shape().to_vec(), w.bytes())
                .map(|v| (w.name().to_string(), v))
                .map_err(|e| err(format!("tensor `{}`: {e}", w.name())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| err(e.to_string()))
}

/// Pretty JSON (serialising these plain structs cannot fail).
fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("plain data serialises")
}
