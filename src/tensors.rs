//! Reading and writing named tensors as safetensors files (model inputs and outputs).
//!
//! Reading goes through import's validated checkpoint reader, so a stranger's input file gets
//! the same bounds checks as a checkpoint. Writing goes through [`crate::output`]: atomic, never
//! through a symlink, over a device or over one of the command's inputs.

use std::collections::BTreeMap;
use std::path::Path;

use attnopt_ir::{Data, Tensor};

use crate::output::{self, Inputs};
use crate::Error;

/// Every tensor in `path`, integers as i64 and floats as f32.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>, Error> {
    let ck = attnopt_import::Checkpoint::from_files(&[path.to_path_buf()])?;
    let mut out = BTreeMap::new();
    for name in ck.tensors().keys() {
        out.insert(name.clone(), ck.weight(name, "an input file")?.to_tensor());
    }
    Ok(out)
}

/// Writes `tensors` to `path` safely (f32 as F32, i64 as I64), refusing to replace any of
/// `inputs`.
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    inputs: &Inputs,
) -> Result<(), Error> {
    // Refuse a bad target before the work of serialising.
    output::check_file_target(path, inputs)?;
    let bytes: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, raw) = match t.data() {
                Data::F32(v) => (
                    safetensors::Dtype::F32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                Data::I64(v) => (
                    safetensors::Dtype::I64,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
            };
            (name.clone(), dtype, t.shape().to_vec(), raw)
        })
        .collect();
    let err = |msg: String| Error::Output {
        path: path.to_path_buf(),
        msg,
    };
    let views = bytes
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let data = safetensors::serialize(views, None).map_err(|e| err(e.to_string()))?;
    output::write_file(path, &data, inputs)
}
