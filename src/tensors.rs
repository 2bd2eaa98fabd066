//! Reading and writing named tensors as safetensors files (model inputs and outputs).
//!
//! Reading goes through import's validated checkpoint reader, so a stranger's input file gets
//! the same bounds checks as a checkpoint. Writing is atomic: a temporary file in the target
//! folder, then a rename, so a failed run never leaves a half-written output.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use attnopt_ir::{Data, Tensor};

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

/// Writes `tensors` to `path` atomically (f32 as F32, i64 as I64).
pub fn write(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<(), Error> {
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
    write_atomic(path, &data)
}

/// Writes `data` to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Output {
        path: path.into(),
        msg: "not a file path".into(),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
