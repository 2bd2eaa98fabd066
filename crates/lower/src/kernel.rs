//! Kernels and the values they read and write, at concrete shapes.

use attnopt_ir::{DType, NodeId, Op, Role, WeightId};
use serde::Serialize;

use crate::epilogue::Epilogue;
use crate::hydra::Hydra;
use crate::row::RowProgram;
use crate::views::ProductViews;

/// Index into [`crate::Lowered::values`].
pub type ValueId = usize;

/// Where a value's elements live.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ValueKind {
    /// A run-time input, by name.
    Input(String),
    /// A checkpoint weight (never in the arena).
    Weight(#[serde(skip)] WeightId),
    /// Computed by a kernel into the arena.
    Temp,
    /// The same elements as another value, reshaped (no copy).
    Alias(ValueId),
}

/// A tensor value: concrete shape, element type, storage.
#[derive(Debug, Clone, Serialize)]
pub struct Value {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub kind: ValueKind,
    /// The graph node it holds (`None` for values the lowering introduces).
    #[serde(skip)]
    pub node: Option<NodeId>,
}

impl Value {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// What a kernel computes.
#[derive(Debug, Clone, Serialize)]
pub enum KernelKind {
    /// `out[i] = a[i] · b[i]` over broadcast batch indices (`[.., m, k] × [.., k, n]`), with
    /// `b` read transposed when `b_transposed` (a `permute` of its last two axes folded in: `b`'s
    /// value then has shape `[.., n, k]`). With an epilogue, the product is then transformed in
    /// place by a row program (no reductions) whose input `epilogue.at` is the product; its
    /// other inputs are the kernel's inputs after `a` and `b`.
    ///
    /// With `views`, `a`, `b` and the output are read and written through those strided views
    /// of the input values 0 and 1 and the output value (heads of a fused QKV buffer, merged
    /// heads; [`crate::views`]); the values' own shapes are then not the operands' shapes, and
    /// `views.b` already includes the transpose (`b_transposed` only records that one was
    /// folded). Without, every operand is its dense value.
    MatMul {
        m: usize,
        k: usize,
        n: usize,
        b_transposed: bool,
        epilogue: Option<Epilogue>,
        views: Option<Box<ProductViews>>,
    },
    /// A row program over `rows × d`; with `causal = Some(offset)`, row `r` has
    /// `valid = min(d, (r mod nq) + 1 + offset)` where `nq` is the second-to-last output axis.
    Row {
        program: RowProgram,
        rows: usize,
        d: usize,
        causal: Option<usize>,
    },
    /// Hydra attention, `φ(Q) ⊙ Σ_t φ(K_t) ⊙ V_t` (causal: a prefix sum over tokens), inputs
    /// Q, K, V read as strided rows ([`crate::hydra`]); the output is `[batch, tokens, d]`.
    Hydra(Hydra),
    /// `attention_mask` (i64, 1 keeps / 0 masks) to an additive f32 mask (0 / -inf).
    AdditiveMask,
    /// The output aliases input 0 (reshape): nothing to do.
    View,
    /// One ir operator, left to the backend's generic kernels.
    Op(#[serde(skip)] Op),
}

/// One kernel: its work, the values it reads, the value it writes, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    pub kind: KernelKind,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
    /// The graph nodes it computes.
    #[serde(skip)]
    pub nodes: Vec<NodeId>,
    pub layer: Option<u32>,
    pub role: Role,
    /// A short name for breakdowns (`matmul+bias+gelu`, `matmul+epilogue`, `row:layer_norm`, `op:permute`, ...).
    pub name: String,
    pub flops: u64,
    pub bytes: u64,
}
