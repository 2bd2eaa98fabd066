//! [`Epilogue`]: elementwise work a matrix-product implementation may run *inside* a product
//! with a prepared weight, `c = activation(a·W + bias) + residual`, so the output is written
//! once instead of being produced and then transformed by a second pass over memory.
//!
//! Which kinds an implementation fuses is its own answer ([`super::MatMul::fuses`]); callers run
//! the others themselves (the executor: as a JIT row program after the product). This module
//! holds the description and the checks every implementation runs before using one; it never
//! computes anything.

use super::{check_bounds, MatMulError, MatMut, MatRef};

/// An activation applied after the bias (names as in PyTorch; the formulas are the ir's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `0.5·x·(1 + erf(x/√2))` (PyTorch's default `gelu`, HF `"gelu"`).
    GeluErf,
    /// `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))` (HF `"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
    /// `x·σ(x)`.
    Silu,
    /// `σ(x) = 1/(1 + e^−x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
}

/// The shape of an epilogue, without its data: what an implementation decides on and caches
/// by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EpilogueKind {
    pub bias: bool,
    pub activation: Option<Activation>,
    pub residual: bool,
}

impl EpilogueKind {
    /// No work at all (a plain product).
    pub fn is_none(&self) -> bool {
        !self.bias && self.activation.is_none() && !self.residual
    }
}

impl std::fmt::Display for EpilogueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.bias {
            parts.push("bias".to_string());
        }
        if let Some(a) = self.activation {
            parts.push(format!("{a:?}").to_lowercase());
        }
        if self.residual {
            parts.push("residual".to_string());
        }
        if parts.is_empty() {
            parts.push("none".to_string());
        }
        f.write_str(&parts.join("+"))
    }
}

/// `c = activation(a·W + bias) + residual` for an m×n output: the data of one epilogue.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// n values, added to every row.
    pub bias: Option<&'a [f32]>,
    pub activation: Option<Activation>,
    /// An m×n view, added last. Must not share memory with `c`.
    pub residual: Option<MatRef<'a>>,
}

impl Epilogue<'_> {
    pub fn kind(&self) -> EpilogueKind {
        EpilogueKind {
            bias: self.bias.is_some(),
            activation: self.activation,
            residual: self.residual.is_some(),
        }
    }
}

/// Checks an epilogue against the output it applies to: the bias holds n values, the residual
/// is an in-bounds m×n view whose memory does not overlap `c`'s.
pub(crate) fn check_epilogue(e: &Epilogue, c: &MatMut) -> Result<(), MatMulError> {
    if let Some(b) = e.bias {
        if b.len() != c.cols {
            return Err(MatMulError::Shape(format!(
                "bias has {} values for an output of {} columns",
                b.len(),
                c.cols
            )));
        }
    }
    if let Some(r) = &e.residual {
        if (r.rows, r.cols) != (c.rows, c.cols) {
            return Err(MatMulError::Shape(format!(
                "residual is {}×{}, the output {}×{}",
                r.rows, r.cols, c.rows, c.cols
            )));
        }
        check_bounds(&r.layout(), r.data.len(), 1, 0, "residual")?;
        let span = |p: *const f32, len: usize| (p as usize, p as usize + len * 4);
        let (r0, r1) = span(r.data.as_ptr(), r.data.len());
        let (c0, c1) = span(c.data.as_ptr(), c.data.len());
        if r0 < c1 && c0 < r1 && !r.data.is_empty() && !c.data.is_empty() {
            return Err(MatMulError::Aliasing(
                "the residual shares memory with the output".into(),
            ));
        }
    }
    Ok(())
}
