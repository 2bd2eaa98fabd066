//! Calibration inputs for measuring approximations: a user's file (`--calib`), or seeded random
//! inputs of the right kind (token ids within the vocabulary, or pixels).

use std::collections::BTreeMap;
use std::path::Path;

use attnopt_ir::{DType, Dim, Op, Sym, Tensor};

use crate::{tensors, Error, Model};

pub use attnopt_ir::rng::Rng;

/// Whether calibration row (token) `r` is held out of a fit to measure it: every fourth. The
/// one policy of the output-projection refit and the sparse fits.
pub fn held_out(r: usize) -> bool {
    r % 4 == 3
}

/// Batch and token count of generated calibration inputs.
pub const CALIB_BATCH: usize = 2;

/// The inputs from `file` that the model takes, or generated ones: ids uniform over the
/// vocabulary, an all-ones `attention_mask`, zero `token_type_ids`, normal pixels.
pub fn calibration_inputs(
    model: &Model,
    file: Option<&Path>,
    seq: usize,
    seed: u64,
) -> Result<BTreeMap<String, Tensor>, Error> {
    let takes = model.input_names();
    if let Some(f) = file {
        let all = tensors::read(f)?;
        let inputs: BTreeMap<String, Tensor> = all
            .into_iter()
            .filter(|(k, _)| takes.contains(&k.as_str()))
            .collect();
        if inputs.is_empty() {
            return Err(Error::Usage {
                path: f.into(),
                msg: format!("holds none of the model's inputs ({})", takes.join(", ")),
            });
        }
        return Ok(inputs);
    }
    crate::limits::check_run_size(
        model,
        &attnopt_ir::Bindings::new(CALIB_BATCH, seq),
        &format!("calibration inputs of {seq} tokens"),
        crate::limits::memory_available(),
    )?;
    let g = model.graph();
    let vocab = model.imported().dims.vocab.unwrap_or(2).max(1) as u64;
    let mut rng = Rng::new(seed);
    let mut out = BTreeMap::new();
    for (name, id) in g.inputs() {
        let Op::Input { dtype, shape, .. } = &g.node(*id).op else {
            continue;
        };
        let dims: Vec<usize> = shape
            .0
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Sym(Sym::Batch) => CALIB_BATCH,
                Dim::Sym(Sym::Seq | Sym::Total) => seq,
                Dim::Sym(Sym::Past) => 0,
            })
            .collect();
        let n: usize = dims.iter().product();
        let t = match (name.as_str(), dtype) {
            ("attention_mask", _) => Tensor::i64(dims, vec![1; n]),
            ("token_type_ids", _) => Tensor::i64(dims, vec![0; n]),
            (_, DType::I64) => Tensor::i64(
                dims,
                (0..n).map(|_| (rng.next_u64() % vocab) as i64).collect(),
            ),
            _ => Tensor::f32(dims, (0..n).map(|_| rng.normal()).collect()),
        };
        out.insert(
            name.clone(),
            t.expect("lengths match the shapes built above"),
        );
    }
    Ok(out)
}
