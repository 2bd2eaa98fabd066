//! One place per kernel kind: each of `lower`'s [`KernelKind`]s is prepared (JIT-compiled,
//! weights handed to the matrix-product library) into a [`Compiled`] kernel that owns what it
//! needs and runs over a [`Frame`]. [`compile`] is the only `match` on the kind; adding a kind
//! is one file here plus one line there.
//!
//! * [`matmul`] — products (dense, strided views, library-fused or JIT epilogues);
//! * [`row`] — JIT row programs; [`hydra`] — Hydra attention; [`rope`] — RoPE as JIT rows;
//! * [`sparse_ff`] — the sparse feed-forward core, reading only the chosen units' weights;
//! * [`factored`] — a factored (gating × projection) product at one row;
//! * [`mask`] — the additive attention mask; [`view`] — reshapes (nothing to run);
//! * [`generic`] — every other operator: native copies, else the reference interpreter.
//!
//! Never: decide the order kernels run in or own the arena (the executor's business), or let a
//! kernel reach a slice other than through the [`Frame`]'s checks.

mod factored;
mod generic;
mod hydra;
mod mask;
mod matmul;
mod rope;
mod row;
mod sparse_ff;
mod view;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use attnopt_ir::{RopeStyle, WeightId};
use attnopt_lower::{Kernel, KernelKind, Lowered};

use crate::frame::Frame;
use crate::jit::JitModule;
use crate::matmul::{MatMul, PreparedWeight};
use crate::rope::RopeKernel;
use crate::weights::Weights;

/// A kernel ready to run: made once per (batch, sequence) size by [`compile`].
pub(crate) trait Compiled: Send + Sync {
    /// Runs the kernel `k` (its inputs and output) over the frame. Returns the seconds of a
    /// JIT epilogue pass after a product when `profile` is on (else 0).
    fn run(&self, f: &Frame, k: &Kernel, profile: bool) -> Result<f64, String>;
}

/// Matrix-product weights prepared for the library, by (weight, used transposed).
pub(crate) type PreparedWeights = HashMap<(WeightId, bool), Arc<dyn PreparedWeight>>;

/// Transposed weights (`W1ᵀ` of sparse feed-forward kernels), by weight.
pub(crate) type TransposedWeights = HashMap<WeightId, Arc<Vec<f32>>>;

/// What the sparse layers' kernels prepare, shared by every size's plan: the sparse
/// feed-forward's unit rows by (`W2`, read block-swapped) and bf16 copies of controller weights
/// (bf16 precision); the factored product's folded dense weight `G ⊗ P` by `(G, P)`, prepared
/// for the matrix-product library (many rows).
#[derive(Default)]
pub(crate) struct SparseFfCaches {
    pub(crate) unit_rows: HashMap<(WeightId, bool), Arc<Vec<u16>>>,
    pub(crate) bf16_copies: HashMap<WeightId, Arc<Vec<u16>>>,
    pub(crate) folded: HashMap<(WeightId, WeightId), Arc<dyn crate::matmul::PreparedWeight>>,
}

/// RoPE kernels by (style, positions, features, θ bits).
pub(crate) type RopeKernels = HashMap<(RopeStyle, usize, usize, u32), Arc<RopeKernel>>;

/// What preparing kernels needs from the model; the caches outlive one (batch, sequence) size.
pub(crate) struct Compiler<'a> {
    pub(crate) jit: &'a mut JitModule,
    pub(crate) matmul: &'a dyn MatMul,
    pub(crate) weights: Weights<'a>,
    pub(crate) prepared: &'a mut PreparedWeights,
    pub(crate) ropes: &'a mut RopeKernels,
    pub(crate) transposed: &'a mut TransposedWeights,
    pub(crate) sparse: &'a mut SparseFfCaches,
    /// Let the matrix-product library run epilogues it can fuse (else all run as JIT passes).
    pub(crate) post_ops: bool,
    /// Time spent preparing weights not prepared before (the rest of [`compile`] is JIT work).
    pub(crate) weight_time: Duration,
}

pub(crate) use crate::gemv::split_sum;

/// `[rows, cols]` → `[cols, rows]` (a weight read by columns).
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>, String> {
    if w.len() != rows * cols {
        return Err(format!(
            "a weight holds {} elements, not {rows}×{cols}",
            w.len()
        ));
    }
    let mut t = vec![0f32; w.len()];
    for (r, row) in w.chunks_exact(cols.max(1)).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c * rows + r] = x;
        }
    }
    Ok(t)
}

/// The weight kernel `k`'s input `j` is (through views), if it is one.
pub(crate) fn weight_input(l: &Lowered, k: &Kernel, j: usize) -> Option<WeightId> {
    let v = *k.inputs.get(j)?;
    match l.values[attnopt_lower::memory::storage_of(&l.values, v)].kind {
        attnopt_lower::ValueKind::Weight(id) => Some(id),
        _ => None,
    }
}

/// Prepares kernel `k` of `l`.
pub(crate) fn compile(
    cx: &mut Compiler,
    l: &Lowered,
    k: &Kernel,
) -> Result<Box<dyn Compiled>, String> {
    Ok(match &k.kind {
        KernelKind::MatMul {
            m,
            k: kk,
            n,
            b_transposed,
            epilogue,
            views,
        } => matmul::prepare(
            cx,
            l,
            k,
            matmul::Shape {
                m: *m,
                k: *kk,
                n: *n,
                b_transposed: *b_transposed,
            },
            epilogue.as_ref(),
            views.as_deref(),
        )?,
        KernelKind::Row {
            program,
            rows,
            d,
            causal,
        } => row::prepare(cx, l, k, program, *rows, *d, *causal)?,
        KernelKind::Hydra(spec) => hydra::prepare(cx, spec)?,
        KernelKind::SparseFf(spec) => sparse_ff::prepare(cx, l, k, spec)?,
        KernelKind::Factored(spec) => factored::prepare(cx, l, k, spec)?,
        // The CPU backend lowers without fused attention (`LowerOptions::default()`).
        KernelKind::Attention(_) => {
            return Err("fused attention is not a CPU kernel (lower without it)".into())
        }
        KernelKind::AdditiveMask => mask::prepare(),
        KernelKind::View => view::prepare(),
        // RoPE through its JIT kernel where that covers the style; else a generic operator.
        KernelKind::Op(op) => match rope::prepare(cx, l, k, op)? {
            Some(r) => r,
            None => generic::prepare(op),
        },
    })
}
