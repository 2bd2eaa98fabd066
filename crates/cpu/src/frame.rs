//! One run's view of its values ([`Frame`]): the lowered plan, the caller's inputs, the
//! activation arena, the model's weights and its matrix-product libraries. Kernels take every
//! operand and output slice from it.
//!
//! Safety: every slice is cut after checking its bounds against the arena (or the input or
//! weight it comes from); the memory plan guarantees that values live at the same time do not
//! overlap (checked in debug builds). Never: hand out a slice of a value without those checks.

use std::collections::HashMap;

use attnopt_ir::{DType, Data, Tensor};
use attnopt_lower::memory::storage_of;
use attnopt_lower::{Lowered, ValueId, ValueKind};

use crate::matmul::{GemmMatMul, MatMul};
use crate::weights::Weights;

/// Elements of a value during a run.
pub(crate) enum Src<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// One run's view of its values: the plan, the inputs, the arena, the model's weights and the
/// libraries its products call.
pub(crate) struct Frame<'a> {
    pub(crate) l: &'a Lowered,
    pub(crate) inputs: &'a HashMap<String, Tensor>,
    pub(crate) weights: Weights<'a>,
    /// Products against weights (oneDNN or `gemm`).
    pub(crate) matmul: &'a dyn MatMul,
    /// Products of two activations (attention scores and context, per head): the `gemm` crate,
    /// which measured faster than oneDNN on these small batched shapes (CPU-NOTES §4).
    pub(crate) activations: &'a GemmMatMul,
    pub(crate) base: *mut u8,
    pub(crate) arena_len: usize,
}

impl<'a> Frame<'a> {
    /// The elements of value `v`.
    pub(crate) fn src(&self, v: ValueId) -> Result<Src<'a>, String> {
        let s = storage_of(&self.l.values, v);
        let value = &self.l.values[v];
        let numel = value.numel();
        match &self.l.values[s].kind {
            ValueKind::Input(name) => match self.inputs.get(name).map(|t| t.data()) {
                Some(Data::F32(x)) if x.len() == numel => Ok(Src::F32(x)),
                Some(Data::I64(x)) if x.len() == numel => Ok(Src::I64(x)),
                _ => Err(format!("input `{name}` does not hold {numel} elements")),
            },
            ValueKind::Weight(w) => {
                let x = self.weights.f32(*w);
                if x.len() != numel {
                    return Err(format!(
                        "weight holds {} elements, expected {numel}",
                        x.len()
                    ));
                }
                Ok(Src::F32(x))
            }
            ValueKind::Temp => {
                let off = self.l.memory.offsets[s].ok_or("value has no arena offset")?;
                let size = self.l.values[s].dtype.size();
                if off + numel * size > self.arena_len {
                    return Err("value reaches past the arena".into());
                }
                // SAFETY: in bounds (checked), aligned (offsets are multiples of 64), and not
                // written while read (the memory plan keeps live values disjoint).
                Ok(unsafe {
                    match self.l.values[s].dtype {
                        DType::I64 => Src::I64(std::slice::from_raw_parts(
                            self.base.add(off) as *const i64,
                            numel,
                        )),
                        _ => Src::F32(std::slice::from_raw_parts(
                            self.base.add(off) as *const f32,
                            numel,
                        )),
                    }
                })
            }
            ValueKind::Alias(_) => unreachable!("storage_of follows aliases"),
        }
    }

    /// The f32 elements of value `v` (an error for integers).
    pub(crate) fn f32(&self, v: ValueId) -> Result<&'a [f32], String> {
        f32_of(self.src(v)?)
    }

    /// Writable f32 elements of the arena value `v`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn dst_f32(&self, v: ValueId) -> Result<&'a mut [f32], String> {
        let s = storage_of(&self.l.values, v);
        let numel = self.l.values[v].numel();
        if self.l.values[s].kind != ValueKind::Temp || self.l.values[s].dtype != DType::F32 {
            return Err("the output is not an f32 arena value".into());
        }
        let off = self.l.memory.offsets[s].ok_or("value has no arena offset")?;
        if off + numel * 4 > self.arena_len {
            return Err("value reaches past the arena".into());
        }
        // SAFETY: as in `src`; the plan gives the output bytes no other live value.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.base.add(off) as *mut f32, numel) })
    }

    pub(crate) fn write_i64(&self, v: ValueId, x: &[i64]) -> Result<(), String> {
        let off = self.l.memory.offsets[v].ok_or("value has no arena offset")?;
        if self.l.values[v].dtype != DType::I64
            || self.l.values[v].numel() != x.len()
            || off + x.len() * 8 > self.arena_len
        {
            return Err("i64 output does not fit its arena slot".into());
        }
        // SAFETY: bounds checked above; aligned; no other live value shares the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off) as *mut i64, x.len()) }
            .copy_from_slice(x);
        Ok(())
    }
}

/// The rows of a row-major value seen as `rows × last axis`.
pub(crate) fn leading(shape: &[usize]) -> usize {
    shape[..shape.len().saturating_sub(1)].iter().product()
}

pub(crate) fn f32_of(s: Src<'_>) -> Result<&[f32], String> {
    match s {
        Src::F32(x) => Ok(x),
        Src::I64(_) => Err("expected an f32 operand, got integers".into()),
    }
}
