//! Dense host tensors: the values the reference interpreter computes with.
//!
//! Deliberately plain: row-major, contiguous, owned. Floats are `f32`, integers `i64`.

use crate::DType;

/// The elements of a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A contiguous row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

/// `Tensor::new` was given a buffer whose length does not match the shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tensor of shape {shape:?} needs {expected} elements, got {got}")]
pub struct LenMismatch {
    pub shape: Vec<usize>,
    pub expected: usize,
    pub got: usize,
}

/// Number of elements of `shape`, or `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Row-major strides of `shape`, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Element strides of a row-major `shape` broadcast to rank `rank` (right-aligned): 0 on the
/// axes it lacks and on its size-1 axes, so index · strides addresses the broadcast element.
pub fn broadcast_strides(shape: &[usize], rank: usize) -> Vec<usize> {
    let st = strides(shape);
    (0..rank)
        .map(|i| match (i + shape.len()).checked_sub(rank) {
            Some(k) if shape[k] != 1 => st[k],
            _ => 0,
        })
        .collect()
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor, LenMismatch> {
        let got = match &data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        };
        let expected = checked_numel(&shape).unwrap_or(usize::MAX);
        if expected != got {
            return Err(LenMismatch {
                shape,
                expected,
                got,
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, LenMismatch> {
        Tensor::new(shape, Data::F32(data))
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Tensor, LenMismatch> {
        Tensor::new(shape, Data::I64(data))
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = checked_numel(&shape).expect("zeros: shape overflows usize");
        Tensor {
            shape,
            data: Data::F32(vec![0.0; n]),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::I64(_) => DType::I64,
        }
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    pub fn into_data(self) -> Data {
        self.data
    }

    /// The f32 elements, or `None` for an integer tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            Data::I64(_) => None,
        }
    }

    /// The i64 elements, or `None` for a float tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            Data::F32(_) => None,
        }
    }

    /// Elements as f32 whatever the dtype (ids and masks become floats).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Largest absolute elementwise difference; `None` if the shapes differ.
    pub fn max_abs_diff(&self, other: &Tensor) -> Option<f32> {
        if self.shape != other.shape {
            return None;
        }
        let (a, b) = (self.to_f32_vec(), other.to_f32_vec());
        Some(a.iter().zip(&b).fold(0.0f32, |m, (x, y)| {
            let d = (x - y).abs();
            if d.is_nan() || d > m {
                if d.is_nan() {
                    f32::INFINITY
                } else {
                    d
                }
            } else {
                m
            }
        }))
    }

    /// Largest absolute element (0 for an empty tensor).
    pub fn max_abs(&self) -> f32 {
        self.to_f32_vec().iter().fold(0.0f32, |m, x| m.max(x.abs()))
    }
}
