//! `attnopt emit MODEL --target cuda -o DIR`: the GPU backend's program for one batch and
//! sequence size written as a folder that runs without attnopt — one `.cu` per kernel (each
//! compiles with only the folder on its include path), the prelude they include,
//! `launch.json` (every step in order: kernel launches with grid, block and arguments, and the
//! matrix products to hand to cuBLASLt, over one arena; docs/GPU.md describes it), the weights
//! the program reads as f32 (`weights.safetensors`) and its constant tables
//! (`tables.safetensors`).
//!
//! Never: write anything but through `output::write_dir` (a new folder, or one `emit` wrote).

use std::collections::BTreeMap;
use std::path::Path;

use attnopt_gpu::kir::GpuKernel;
use attnopt_gpu::program::{Program, Step};
use attnopt_gpu::simrun::SimModel;
use attnopt_ir::{Bindings, Tensor};
use serde::Serialize;
use serde_json::json;

use crate::error::Error;
use crate::model::Model;
use crate::output::Inputs;

/// The manifest's name, and the `format` it declares (how a folder `emit` wrote is known).
pub const MANIFEST: &str = "launch.json";
pub const FORMAT: &str = "attnopt-cuda-launch";

/// What `emit` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Emitted {
    pub kernels: usize,
    pub launches: usize,
    pub products: usize,
    pub arena_bytes: usize,
    pub weights: usize,
}

/// A kernel as the manifest lists it (its code is in `file`).
fn kernel_entry(k: &GpuKernel) -> serde_json::Value {
    let shared: usize = k
        .shared
        .iter()
        .map(|s| s.len * attnopt_gpu::program::elem_size(s.elem))
        .sum();
    json!({
        "name": k.name,
        "file": format!("{}.cu", k.name),
        "grid": [k.grid[0], k.grid[1], 1],
        "block": [k.block, 1, 1],
        "shared_bytes": shared,
        "params": k.params,
        "implements": k.doc,
    })
}

/// The name a weight has in `weights.safetensors`: its graph name, or `weight.{id}` when two
/// share one.
fn weight_names(p: &Program) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    p.weights
        .iter()
        .map(|w| {
            if seen.insert(w.name.clone()) {
                w.name.clone()
            } else {
                format!("weight.{}", w.id.0)
            }
        })
        .collect()
}

/// The manifest of program `p`.
pub fn manifest(p: &Program, model: &Path, b: &Bindings) -> serde_json::Value {
    let names = weight_names(p);
    let steps: Vec<serde_json::Value> = p
        .steps
        .iter()
        .map(|s| match s {
            Step::Launch(l) => json!({"launch": {
                "kernel": p.kernels.get(l.kernel).map(|k| k.name.as_str()),
                "args": l.args,
            }}),
            Step::Gemm(g) => json!({"gemm": g}),
        })
        .collect();
    json!({
        "format": FORMAT,
        "version": 1,
        "model": model.display().to_string(),
        "batch": b.batch,
        "seq": b.seq,
        "arena_bytes": p.arena_bytes,
        "scratch_bytes": p.scratch_bytes,
        "prelude": attnopt_gpu::cuda::PRELUDE_NAME,
        "inputs": p.inputs,
        "outputs": p.outputs,
        "weights": p.weights.iter().zip(&names).map(|(w, n)| json!({
            "index": w.id.0,
            "name": w.name,
            "shape": w.shape,
            "file": "weights.safetensors",
            "tensor": n,
        })).collect::<Vec<_>>(),
        "tables": p.tables.iter().enumerate().map(|(i, t)| json!({
            "index": i,
            "len": t.len(),
            "file": "tables.safetensors",
            "tensor": format!("table.{i}"),
        })).collect::<Vec<_>>(),
        "kernels": p.kernels.iter().map(kernel_entry).collect::<Vec<_>>(),
        "steps": steps,
    })
}

/// How `emit` writes matrix products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Products {
    /// As `gemm` steps in launch.json, for the library (cuBLASLt).
    #[default]
    Library,
    /// As generated tiled kernels like every other step (slower; no library needed).
    Kernels,
}

/// The program of `model` at batch `batch` and `seq` tokens.
pub fn program(
    model: &Model,
    batch: usize,
    seq: usize,
    products: Products,
) -> Result<(SimModel, Program, Bindings), Error> {
    if batch == 0 || seq == 0 {
        return Err(Error::Invalid(format!(
            "a program for batch {batch} × {seq} tokens computes nothing; both must be at least 1"
        )));
    }
    let b = Bindings::new(batch, seq);
    crate::limits::check_run_size(
        model,
        &b,
        "the emitted program",
        crate::limits::memory_available(),
    )?;
    let gen = attnopt_gpu::gen::GenOptions {
        generated_products: products == Products::Kernels,
    };
    let sim = SimModel::new(model.graph())?.with_gen(gen);
    let p = sim.program(&b)?;
    Ok((sim, p, b))
}

/// Writes the folder for `model` at `batch × seq` to `out`, products as `products` says;
/// `force` replaces a folder `emit` wrote before (and nothing else).
pub fn emit(
    model: &Model,
    out: &Path,
    (batch, seq): (usize, usize),
    products: Products,
    force: bool,
) -> Result<Emitted, Error> {
    let (sim, p, b) = program(model, batch, seq, products)?;
    let usage = |msg: String| Error::Usage {
        path: out.to_path_buf(),
        msg,
    };
    let src = &model.imported().dir;
    if out
        .canonicalize()
        .ok()
        .is_some_and(|o| src.canonicalize().ok() == Some(o))
    {
        return Err(usage(
            "is the input model; choose another output folder".into(),
        ));
    }
    let replaceable = |dir: &Path| {
        if !force {
            return Err(usage("already exists; pass --force to replace it".into()));
        }
        let text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap_or_default();
        let ours = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .is_some_and(|v| v["format"] == FORMAT);
        if ours {
            Ok(())
        } else {
            Err(usage(format!(
                "is not a folder `emit` wrote (no {MANIFEST} of format {FORMAT}); refusing to replace it"
            )))
        }
    };
    let fill = |dir: &Path| -> Result<Emitted, Error> {
        let none = Inputs::new();
        let write =
            |name: &str, data: &[u8]| crate::output::write_file(&dir.join(name), data, &none);
        write(
            attnopt_gpu::cuda::PRELUDE_NAME,
            attnopt_gpu::cuda::prelude().as_bytes(),
        )?;
        for k in &p.kernels {
            let text = attnopt_gpu::cuda::print(k).map_err(attnopt_gpu::GpuError::from)?;
            write(&format!("{}.cu", k.name), text.as_bytes())?;
        }
        let names = weight_names(&p);
        let mut weights = BTreeMap::new();
        for (w, n) in p.weights.iter().zip(&names) {
            let data = attnopt_gpu::exec::weight_data(sim.graph(), w.id);
            let t = Tensor::new(w.shape.clone(), data)
                .map_err(|e| Error::NotSupported(format!("weight `{}`: {e}", w.name)))?;
            weights.insert(n.clone(), t);
        }
        crate::tensors::write(&dir.join("weights.safetensors"), &weights, &none)?;
        if !p.tables.is_empty() {
            let mut tables = BTreeMap::new();
            for (i, t) in p.tables.iter().enumerate() {
                let t = Tensor::f32(vec![t.len()], t.clone())
                    .map_err(|e| Error::NotSupported(e.to_string()))?;
                tables.insert(format!("table.{i}"), t);
            }
            crate::tensors::write(&dir.join("tables.safetensors"), &tables, &none)?;
        }
        let m = manifest(&p, src, &b);
        let text =
            serde_json::to_string_pretty(&m).map_err(|e| Error::NotSupported(e.to_string()))?;
        write(MANIFEST, text.as_bytes())?;
        Ok(Emitted {
            kernels: p.kernels.len(),
            launches: p
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Launch(_)))
                .count(),
            products: p
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Gemm(_)))
                .count(),
            arena_bytes: p.arena_bytes,
            weights: p.weights.len(),
        })
    };
    crate::output::write_dir(out, replaceable, fill, |_| Ok(()))
}
