//! Reading safetensors checkpoints: one file or a sharded set, memory-mapped, validated.
//!
//! Every byte range handed out has been checked by the safetensors crate (header within the
//! file, offsets contiguous and covering the data, lengths = shape × dtype) and again by
//! `Weight::new`, so nothing downstream can read out of bounds. When the safetensors crate
//! rejects a file, [`diagnose`] re-reads the header to name the offending tensor.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use attnopt_ir::{DType, Storage, Weight};
use safetensors::{SafeTensorError, SafeTensors};

use crate::ImportError;

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct Entry {
    pub file: usize,
    /// The safetensors dtype name (kept even for dtypes attnopt cannot compute with).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range inside the file.
    pub range: std::ops::Range<usize>,
}

/// All tensors of a checkpoint, by name.
pub struct Checkpoint {
    files: Vec<(PathBuf, Storage)>,
    tensors: BTreeMap<String, Entry>,
}

/// The largest shard index or config file attnopt reads (they are small JSON files).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// The text of the regular file `path`, at most `cap` bytes. A FIFO, device or folder is
/// refused before it is opened (a FIFO would block, `/dev/zero` would never end), and the
/// opened file is checked again, so a swap between the two checks is caught too.
pub fn read_text_capped(path: &Path, cap: u64, what: &str) -> Result<String, ImportError> {
    use std::io::Read;
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_regular = || ImportError::Config {
        file: path.into(),
        msg: format!("is not a regular file (a {what} must be one)"),
    };
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let md = file.metadata().map_err(io)?;
    if !md.is_file() {
        return Err(not_regular());
    }
    if md.len() > cap {
        return Err(ImportError::Config {
            file: path.into(),
            msg: format!(
                "{} bytes is too large for a {what} (at most {cap})",
                md.len()
            ),
        });
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(ImportError::Config {
            file: path.into(),
            msg: format!("grew past {cap} bytes while being read"),
        });
    }
    String::from_utf8(bytes).map_err(|e| ImportError::Config {
        file: path.into(),
        msg: format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, ImportError> {
    let text = read_text_capped(path, MAX_JSON_BYTES, "JSON file")?;
    serde_json::from_str(&text).map_err(|e| ImportError::Config {
        file: path.into(),
        msg: format!("not valid JSON: {e}"),
    })
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: `model.safetensors.index.json` (sharded),
    /// `model.safetensors`, or the only `*.safetensors` file there. `dir` may also be a
    /// `.safetensors` file.
    pub fn open(dir: &Path) -> Result<Checkpoint, ImportError> {
        if dir.is_file() {
            return Checkpoint::from_files(&[dir.to_path_buf()]);
        }
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            return Checkpoint::open_sharded(dir, &index);
        }
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Checkpoint::from_files(&[single]);
        }
        let io = |source| ImportError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
            .collect();
        found.sort();
        match found.len() {
            1 => Checkpoint::from_files(&found),
            0 if dir.join("pytorch_model.bin").exists() => Err(ImportError::NotSupported {
                path: dir.join("pytorch_model.bin"),
                what: "PyTorch pickle checkpoints; convert to safetensors first".into(),
            }),
            0 => Err(ImportError::NoCheckpoint { dir: dir.into() }),
            _ => Err(ImportError::NotSupported {
                path: dir.into(),
                what: format!(
                    "{} .safetensors files without a model.safetensors.index.json",
                    found.len()
                ),
            }),
        }
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Checkpoint, ImportError> {
        let bad = |msg: String| ImportError::Index {
            file: index.to_path_buf(),
            msg,
        };
        let json = read_json(index).map_err(|e| match e {
            ImportError::Config { msg, .. } => bad(msg),
            e => e,
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        if map.is_empty() {
            return Err(bad("`weight_map` lists no tensors".into()));
        }
        let mut shards: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("tensor `{tensor}`: shard name is not a string")))?;
            let plain = Path::new(file).components().count() == 1
                && matches!(
                    Path::new(file).components().next(),
                    Some(std::path::Component::Normal(_))
                );
            if !plain {
                return Err(bad(format!(
                    "tensor `{tensor}`: shard `{file}` is not a plain file name in this folder"
                )));
            }
            if !dir.join(file).is_file() {
                return Err(bad(format!(
                    "tensor `{tensor}`: shard `{file}` does not exist (or is not a file)"
                )));
            }
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_string());
            }
        }
        shards.sort();
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let ck = Checkpoint::from_files(&paths)?;
        for (tensor, file) in map {
            let want = file.as_str().unwrap_or_default();
            match ck.tensors.get(tensor) {
                Some(e) if ck.files[e.file].0.file_name().is_some_and(|n| n == want) => {}
                Some(e) => {
                    return Err(bad(format!(
                        "tensor `{tensor}` is listed in {want} but stored in {}",
                        ck.files[e.file].0.display()
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "tensor `{tensor}` is listed in {want} but not stored there"
                    )))
                }
            }
        }
        Ok(ck)
    }

    /// Opens and validates each file; a tensor name appearing in two files is an error.
    pub fn from_files(paths: &[PathBuf]) -> Result<Checkpoint, ImportError> {
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for path in paths {
            let io = |source| ImportError::Io {
                path: path.clone(),
                source,
            };
            // A FIFO would block the open and a device has no end: regular files only.
            let regular = |md: std::fs::Metadata| {
                if md.is_file() {
                    Ok(())
                } else {
                    Err(ImportError::Safetensors {
                        file: path.clone(),
                        tensor: None,
                        msg: "is not a regular file".into(),
                    })
                }
            };
            regular(std::fs::metadata(path).map_err(io)?)?;
            let file = File::open(path).map_err(io)?;
            regular(file.metadata().map_err(io)?)?;
            // SAFETY: the map is read-only and private to this process. Another process
            // truncating the file while we run would fault (SIGBUS); that is the accepted cost
            // of zero-copy loading, as in every mmap-based checkpoint loader.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                // The crate names a tensor only for bad offsets, and then whichever one comes
                // second in offset order; our own diagnosis is deterministic and more specific.
                let (tensor, msg) = match e {
                    SafeTensorError::InvalidOffset(name) => (
                        diagnose(&map).or(Some(name)),
                        "data_offsets are reversed, leave the data area, overlap another \
                         tensor or leave a gap"
                            .to_string(),
                    ),
                    e => (
                        diagnose(&map),
                        not_safetensors(&map).unwrap_or_else(|| e.to_string()),
                    ),
                };
                ImportError::Safetensors {
                    file: path.clone(),
                    tensor,
                    msg,
                }
            })?;
            let base = 8 + header_len;
            let idx = files.len();
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let range = base + s..base + e;
                let dtype = format!("{:?}", info.dtype);
                if let Some(prev) = tensors.insert(
                    name.clone(),
                    Entry {
                        file: idx,
                        dtype,
                        shape: info.shape.clone(),
                        range,
                    },
                ) {
                    let other: &PathBuf = &files
                        .get(prev.file)
                        .map(|f: &(PathBuf, Storage)| f.0.clone())
                        .unwrap_or(path.clone());
                    return Err(ImportError::Safetensors {
                        file: path.clone(),
                        tensor: Some(name),
                        msg: format!("also stored in {}", other.display()),
                    });
                }
            }
            files.push((path.clone(), Arc::new(map) as Storage));
        }
        Ok(Checkpoint { files, tensors })
    }

    /// A checkpoint whose tensors are views into one in-memory `storage` (ranges may overlap):
    /// synthetic models for benchmarks and tests. Ranges are checked like a file's.
    pub fn in_memory(
        name: &str,
        storage: Storage,
        tensors: impl IntoIterator<Item = (String, DType, Vec<usize>, std::ops::Range<usize>)>,
    ) -> Result<Checkpoint, ImportError> {
        let path = PathBuf::from(name);
        let mut map = BTreeMap::new();
        for (tensor, dtype, shape, range) in tensors {
            Weight::new(
                tensor.clone(),
                dtype,
                shape.clone(),
                storage.clone(),
                range.clone(),
            )
            .map_err(|e| ImportError::Safetensors {
                file: path.clone(),
                tensor: Some(tensor.clone()),
                msg: e.to_string(),
            })?;
            map.insert(
                tensor,
                Entry {
                    file: 0,
                    dtype: dtype.name().to_string(),
                    shape,
                    range,
                },
            );
        }
        Ok(Checkpoint {
            files: vec![(path, storage)],
            tensors: map,
        })
    }

    pub fn tensors(&self) -> &BTreeMap<String, Entry> {
        &self.tensors
    }

    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }

    /// The file `name` is stored in, or the first file (for errors about absent tensors).
    pub fn file_of(&self, name: &str) -> &Path {
        let i = self.tensors.get(name).map_or(0, |e| e.file);
        &self.files[i].0
    }

    /// Names of the tensors not in `used` (heads, poolers, weights an optimisation replaced).
    pub fn unused_by<'a>(&self, used: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let used: std::collections::HashSet<&str> = used.into_iter().collect();
        self.tensors
            .keys()
            .filter(|k| !used.contains(k.as_str()))
            .cloned()
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A checked zero-copy view of tensor `name`.
    pub fn weight(&self, name: &str, arch: &'static str) -> Result<Weight, ImportError> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| ImportError::MissingTensor {
                file: self.file_of(name).to_path_buf(),
                tensor: name.into(),
                arch,
            })?;
        let file = &self.files[e.file];
        let dtype = DType::from_name(&e.dtype)
            .filter(|d| *d != DType::Bool)
            .ok_or_else(|| ImportError::UnsupportedDtype {
                file: file.0.clone(),
                tensor: name.into(),
                dtype: e.dtype.clone(),
            })?;
        Weight::new(
            name,
            dtype,
            e.shape.clone(),
            file.1.clone(),
            e.range.clone(),
        )
        .map_err(|w| ImportError::Safetensors {
            file: file.0.clone(),
            tensor: Some(name.into()),
            msg: w.to_string(),
        })
    }

    /// Parameter count per dtype name, over every tensor in the checkpoint.
    pub fn params_by_dtype(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for e in self.tensors.values() {
            let n = e
                .shape
                .iter()
                .fold(1u64, |a, &d| a.saturating_mul(d as u64));
            *m.entry(e.dtype.clone()).or_insert(0) += n;
        }
        m
    }
}

/// After the safetensors crate rejected `bytes`, find the tensor at fault: one whose dtype is
/// unknown, whose byte length does not match its shape, or whose offsets leave the data area
/// or overlap another. `None` if the header itself is unreadable.
/// Why `bytes` is not a safetensors file at all (rather than a damaged one), if that is the
/// case: the message a user who passed a `.bin`, `.pt` or `.npy` file needs.
fn not_safetensors(bytes: &[u8]) -> Option<String> {
    const HINT: &str = "attnopt reads safetensors files (convert .bin/.pt checkpoints with \
                        transformers' save_pretrained(..., safe_serialization=True))";
    let Some(n) = bytes.get(..8) else {
        return Some(format!(
            "not a safetensors file: only {} bytes; {HINT}",
            bytes.len()
        ));
    };
    let n = u64::from_le_bytes(n.try_into().ok()?);
    let rest = bytes.len() as u64 - 8;
    if n > rest {
        return Some(format!(
            "not a safetensors file: its first 8 bytes give a header of {n} bytes, but only \
             {rest} follow; {HINT}"
        ));
    }
    if bytes.get(8) != Some(&b'{') {
        return Some(format!(
            "not a safetensors file: the header is not JSON; {HINT}"
        ));
    }
    None
}

fn diagnose(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let data_len = (bytes.len() - 8 - header.len()) as u128;
    let mut spans: Vec<(u128, u128, &str)> = Vec::new();
    for (name, info) in &json {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .and_then(DType::from_name);
        let shape: Option<Vec<u128>> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(u128::from)).collect());
        let offs: Option<Vec<u128>> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(u128::from)).collect());
        let known = info
            .get("dtype")
            .is_some_and(|d| serde_json::from_value::<safetensors::Dtype>(d.clone()).is_ok());
        let (Some(shape), Some(offs), true) = (shape, offs, known) else {
            return Some(name.clone());
        };
        let [s, e] = offs[..] else {
            return Some(name.clone());
        };
        if e < s || e > data_len {
            return Some(name.clone());
        }
        if let Some(d) = dtype {
            let want = shape
                .iter()
                .fold(d.size() as u128, |a, &x| a.saturating_mul(x));
            if want != e - s {
                return Some(name.clone());
            }
        }
        spans.push((s, e, name));
    }
    spans.sort();
    spans
        .windows(2)
        .find(|w| w[1].0 < w[0].1)
        .map(|w| w[1].2.to_string())
}
