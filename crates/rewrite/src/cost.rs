//! The cost model extraction minimises: estimated seconds on the CPU at a given batch and
//! sequence length, from `ir::cost` FLOP and byte counts.
//!
//! Per operator: `max(FLOPs / peak, bytes / bandwidth) + launch overhead`. Layout operators
//! (permute, split/merge heads, concat, expand, repeat) are assumed mostly fused into their
//! neighbours by the backend: a quarter of their bytes and no overhead; reshapes and slices are
//! strided views and cost nothing. Anything computed
//! from weights alone is precomputed once per model, so it costs a token epsilon (not zero, so
//! extraction still prefers fewer weight-only nodes). Constants are this project's measured CPU
//! facts (see docs/ARCHITECTURE.md); only ratios matter for extraction.
//!
//! It prices nodes only: it never looks at the e-graph's structure or decides what is extracted.

use attnopt_ir::cost::{op_cost, Cost};
use attnopt_ir::{Bindings, Op};
use egg::Id;

use crate::analysis::Data;
use crate::lang::TensorLang;

/// CPU constants (2 threads, f32): ~200 GFLOP/s in matrix products, ~15 GB/s from RAM.
#[derive(Debug, Clone, Copy)]
pub struct CostModel {
    pub bindings: Bindings,
    pub flops_per_s: f64,
    pub bytes_per_s: f64,
    pub overhead_s: f64,
}

/// Cost of a node computed from weights only.
pub const WEIGHT_ONLY: f64 = 1e-12;

impl CostModel {
    /// The model at batch 1 and `seq` tokens.
    pub fn at_seq(seq: usize) -> CostModel {
        CostModel {
            bindings: Bindings::new(1, seq),
            flops_per_s: 200e9,
            bytes_per_s: 15e9,
            overhead_s: 2e-6,
        }
    }

    /// Estimated seconds for `node`, whose class data is `own`, children's data via `child`.
    pub fn node_cost(&self, node: &TensorLang, own: &Data, child: &dyn Fn(Id) -> Data) -> f64 {
        if !matches!(node, TensorLang::Op(..)) {
            return 0.0;
        }
        if own.weight_only() {
            return WEIGHT_ONLY;
        }
        let Some((op, c)) = ir_cost(node, own, child, &self.bindings) else {
            return f64::INFINITY;
        };
        let (flops, bytes) = (c.flops as f64, c.bytes as f64);
        match op {
            // Reshapes and slices are views in a strided backend.
            Op::Reshape(_) | Op::Unsqueeze { .. } | Op::Squeeze { .. } | Op::Slice { .. } => 0.0,
            Op::Permute(_)
            | Op::SplitHeads { .. }
            | Op::MergeHeads
            | Op::Concat { .. }
            | Op::Expand(_)
            | Op::RepeatHeads { .. } => 0.25 * bytes / self.bytes_per_s,
            _ => (flops / self.flops_per_s).max(bytes / self.bytes_per_s) + self.overhead_s,
        }
    }
}

/// The ir operator of an operator node and its FLOP/byte count under `b` (`ir::cost`
/// conventions); `None` for leaves and ill-typed nodes.
pub fn ir_cost(
    node: &TensorLang,
    own: &Data,
    child: &dyn Fn(Id) -> Data,
    b: &Bindings,
) -> Option<(Op, Cost)> {
    let ty = own.ty()?;
    let (op, operands) = node.decode_op(|c| child(c).attr().cloned()).ok()?;
    let operands: Vec<Data> = operands.iter().map(|&c| child(c)).collect();
    let operands: Vec<_> = operands
        .iter()
        .filter_map(|d| d.ty())
        .map(|t| (&t.shape, t.dtype.size()))
        .collect();
    let c = op_cost(&op, &operands, (&ty.shape, ty.dtype.size()), b);
    Some((op, c))
}
