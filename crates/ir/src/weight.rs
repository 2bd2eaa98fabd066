//! Weights: zero-copy views of checkpoint bytes (usually a memory-mapped file).
//!
//! The graph never copies a checkpoint. A [`Weight`] is a dtype, a shape and a byte range
//! inside shared storage; its constructor checks that the range lies inside the storage and
//! that its length is exactly `numel × dtype size`, so no later reader can run out of bounds.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use crate::tensor::checked_numel;
use crate::{DType, Tensor};

/// Bytes that weights point into: a memory map, or an owned buffer.
pub type Storage = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One named weight tensor.
#[derive(Clone)]
pub struct Weight {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    storage: Storage,
    range: Range<usize>,
}

/// Why a weight view could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    #[error("weight `{name}`: byte range {start}..{end} lies outside its {len}-byte storage")]
    OutOfBounds {
        name: String,
        start: usize,
        end: usize,
        len: usize,
    },
    #[error(
        "weight `{name}`: shape {shape:?} of {dtype} needs {expected} bytes, the range holds {got}"
    )]
    LengthMismatch {
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        expected: u128,
        got: usize,
    },
    #[error("weight `{name}`: dtype {dtype} is not a number type attnopt reads")]
    Unsupported { name: String, dtype: DType },
}

impl Weight {
    /// A view of `storage[range]` as a `dtype` tensor of `shape`, checked.
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        storage: Storage,
        range: Range<usize>,
    ) -> Result<Weight, WeightError> {
        let name = name.into();
        let len = (*storage).as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(WeightError::OutOfBounds {
                name,
                start: range.start,
                end: range.end,
                len,
            });
        }
        if dtype == DType::Bool {
            return Err(WeightError::Unsupported { name, dtype });
        }
        let expected = shape.iter().fold(dtype.size() as u128, |acc, &d| {
            acc.saturating_mul(d as u128)
        });
        if expected != range.len() as u128 {
            return Err(WeightError::LengthMismatch {
                name,
                dtype,
                shape,
                expected,
                got: range.len(),
            });
        }
        Ok(Weight {
            name,
            dtype,
            shape,
            storage,
            range,
        })
    }

    /// A weight that owns its f32 values (for tests and computed tensors).
    pub fn from_f32(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Result<Weight, WeightError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let len = bytes.len();
        Weight::new(name, DType::F32, shape, Arc::new(bytes), 0..len)
    }

    /// A weight that owns `values` rounded to bfloat16 (to nearest, ties to even): for
    /// computed weights that replace bf16 ones, at the size of what they replace.
    pub fn bf16_rounded(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Result<Weight, WeightError> {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let len = bytes.len();
        Weight::new(name, DType::BF16, shape, Arc::new(bytes), 0..len)
    }

    /// A weight that owns `values` stored as bfloat16, or `None` when some value is not
    /// exactly a bfloat16 (nothing is rounded). Folding uses it so that what is computed from
    /// bf16 weights by exact operations (concatenation, a power-of-two scale) stays bf16.
    pub fn bf16_if_exact(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Option<Result<Weight, WeightError>> {
        let mut bytes = Vec::with_capacity(values.len() * 2);
        for v in values {
            let b = half::bf16::from_f32(*v);
            if b.to_f32().to_bits() != v.to_bits() {
                return None;
            }
            bytes.extend_from_slice(&b.to_le_bytes());
        }
        let len = bytes.len();
        Some(Weight::new(
            name,
            DType::BF16,
            shape,
            Arc::new(bytes),
            0..len,
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        // Checked at construction: numel × size equals the range length, which fits in usize.
        checked_numel(&self.shape).unwrap_or(0)
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &(*self.storage).as_ref()[self.range.clone()]
    }

    /// The values converted to f32 (bf16/f16/f64/ints upcast or cast).
    pub fn to_f32(&self) -> Vec<f32> {
        // One arm per dtype, so each loop decodes with a constant dtype.
        let all = |d: DType| -> Vec<f32> {
            (self.bytes().chunks_exact(d.size()))
                .map(|c| float_of(d, c))
                .collect()
        };
        match self.dtype {
            DType::F32 => all(DType::F32),
            DType::F16 => all(DType::F16),
            DType::BF16 => all(DType::BF16),
            DType::F64 => all(DType::F64),
            _ => self.to_i64().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// Runs `f`, during which reading this weight's bytes brings in only the pages touched: the
    /// kernel's read-ahead (often megabytes per fault on a memory-mapped checkpoint) is off for
    /// its range and restored to the default after. For probing a few scattered elements of a
    /// large weight ([`Weight::f32_at`]); advice only, so a failure changes nothing.
    pub fn without_readahead<R>(&self, f: impl FnOnce() -> R) -> R {
        let advise = |advice| {
            #[cfg(unix)]
            {
                let bytes = self.bytes();
                // SAFETY: sysconf reads a constant of the system.
                let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
                    .unwrap_or(4096)
                    .max(1);
                let start = bytes.as_ptr() as usize;
                let aligned = start - start % page;
                let len = bytes.len() + (start - aligned);
                if len > 0 {
                    // SAFETY: madvise only advises the kernel about pages of our own mapping
                    // (or heap); the range covers this weight's bytes rounded out to pages,
                    // and neither MADV_RANDOM nor MADV_NORMAL changes their contents.
                    unsafe { libc::madvise(aligned as *mut libc::c_void, len, advice) };
                }
            }
            #[cfg(not(unix))]
            let _ = advice;
        };
        advise(MADV_RANDOM);
        let r = f();
        advise(MADV_NORMAL);
        r
    }

    /// Element `i` (row-major) of a floating-point weight as f32, without converting the rest;
    /// `None` for integer weights or an index past the end.
    pub fn f32_at(&self, i: usize) -> Option<f32> {
        if !self.dtype.is_float() {
            return None;
        }
        let size = self.dtype.size();
        let start = i.checked_mul(size)?;
        let bytes = self.bytes().get(start..start.checked_add(size)?)?;
        Some(float_of(self.dtype, bytes))
    }

    /// The values as i64 (floats truncate).
    pub fn to_i64(&self) -> Vec<i64> {
        let b = self.bytes();
        match self.dtype {
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            DType::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            DType::U8 | DType::Bool => b.iter().map(|&x| x as i64).collect(),
            _ => self.to_f32().into_iter().map(|x| x as i64).collect(),
        }
    }

    /// The weight as an interpreter tensor in its compute dtype.
    pub fn to_tensor(&self) -> Tensor {
        let shape = self.shape.clone();
        let t = if self.dtype.is_float() {
            Tensor::f32(shape, self.to_f32())
        } else {
            Tensor::i64(shape, self.to_i64())
        };
        t.expect("weight length checked at construction")
    }
}

#[cfg(unix)]
const MADV_RANDOM: i32 = libc::MADV_RANDOM;
#[cfg(unix)]
const MADV_NORMAL: i32 = libc::MADV_NORMAL;
#[cfg(not(unix))]
const MADV_RANDOM: i32 = 0;
#[cfg(not(unix))]
const MADV_NORMAL: i32 = 0;

/// One little-endian float of `dtype` (`bytes` holds exactly its size) as f32.
#[inline(always)]
fn float_of(dtype: DType, c: &[u8]) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
        DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        DType::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
        _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
    }
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Weight({} {} {:?})", self.name, self.dtype, self.shape)
    }
}
