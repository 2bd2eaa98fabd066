//! Fixture models in library tests: one copy of the helpers the optimisation tests share
//! (included with `#[path = "support/models.rs"] mod models;`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attnopt::Model;
use attnopt_ir::Tensor;

/// `fixtures/{model}`.
pub fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model)
}

/// ‖a − b‖₂ / ‖b‖₂, computed here independently of the library's error code.
pub fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.as_f32().unwrap(), b.as_f32().unwrap());
    let num: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
    let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// The inputs of the fixture's `golden.safetensors` that `model` takes.
pub fn golden_inputs(model: &Model, dir: &Path) -> BTreeMap<String, Tensor> {
    let takes = model.input_names();
    attnopt::tensors::read(&dir.join("golden.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(k, _)| takes.contains(&k.as_str()))
        .collect()
}
