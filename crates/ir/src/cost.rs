//! FLOP and byte counts per node, at concrete batch and sequence sizes.
//!
//! Conventions (kept simple and stated, so ratios are meaningful): a matrix product of
//! `[M, K] × [K, N]` is `2·M·K·N` FLOPs; elementwise operators count one FLOP per output
//! element; normalisations and softmax count the handful of operations each element needs
//! (below); pure data movement counts no FLOPs. Bytes are what a naive one-kernel-per-node
//! execution reads and writes: each operand once (weights at their stored dtype) plus the
//! result; reshapes (and squeeze/unsqueeze) are free views.

use std::ops::{Add, AddAssign};

use crate::{Bindings, Graph, NodeId, Op, Shape};

/// FLOPs and bytes moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            flops: self.flops.saturating_add(o.flops),
            bytes: self.bytes.saturating_add(o.bytes),
        }
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

/// FLOPs per output element for operators that are not matrix products.
fn flops_per_element(op: &Op) -> u64 {
    match op {
        Op::Unary(_) | Op::Binary(_) | Op::Scale(_) | Op::AddScalar(_) => 1,
        Op::CausalMask | Op::Tril | Op::PaddingMask | Op::CumSum { .. } => 1,
        Op::Softmax { .. } => 5,
        Op::L2Normalize { .. } => 4,
        Op::LayerNorm { .. } => 8,
        Op::RmsNorm { .. } => 5,
        Op::Rope { .. } => 3,
        Op::BlockOneHot { .. } => 1,
        _ => 0,
    }
}

/// Cost of applying `op` to operands of the given shapes and element sizes (bytes), giving a
/// result of shape `out.0` and element size `out.1`, under `b` (unbound symbols count as 0).
/// The one place the FLOP and byte conventions live: [`node_cost`] and the rewriter's cost
/// model both call it.
pub fn op_cost(op: &Op, operands: &[(&Shape, usize)], out: (&Shape, usize), b: &Bindings) -> Cost {
    let numel = |s: &Shape| s.numel(b).unwrap_or(0);
    let flops = match op {
        Op::MatMul => {
            let k = operands[0].0.last().eval(b).unwrap_or(0) as u64;
            numel(out.0).saturating_mul(2).saturating_mul(k)
        }
        Op::Reduce { .. } => numel(operands[0].0),
        op => numel(out.0).saturating_mul(flops_per_element(op)),
    };
    let bytes = match op {
        Op::Input { .. }
        | Op::Weight(_)
        | Op::Reshape(_)
        | Op::Unsqueeze { .. }
        | Op::Squeeze { .. } => 0,
        _ => operands.iter().fold(
            numel(out.0).saturating_mul(out.1 as u64),
            |acc, (s, size)| acc.saturating_add(numel(s).saturating_mul(*size as u64)),
        ),
    };
    Cost { flops, bytes }
}

/// Cost of one node under `b` (zero if a symbol is unbound).
pub fn node_cost(g: &Graph, id: NodeId, b: &Bindings) -> Cost {
    let node = g.node(id);
    let operands: Vec<(&Shape, usize)> = g
        .operands(id)
        .into_iter()
        .map(|o| {
            let n = g.node(o);
            let size = match &n.op {
                Op::Weight(w) => g.weight_data(*w).dtype().size(),
                _ => n.ty.dtype.size(),
            };
            (&n.ty.shape, size)
        })
        .collect();
    op_cost(
        &node.op,
        &operands,
        (&node.ty.shape, node.ty.dtype.size()),
        b,
    )
}

/// Sum of [`node_cost`] over the nodes for which `keep` holds.
pub fn cost_where(g: &Graph, b: &Bindings, keep: impl Fn(NodeId) -> bool) -> Cost {
    g.topo_order()
        .into_iter()
        .filter(|&n| keep(n))
        .fold(Cost::default(), |acc, n| acc + node_cost(g, n, b))
}

/// Cost of the whole graph.
pub fn total_cost(g: &Graph, b: &Bindings) -> Cost {
    cost_where(g, b, |_| true)
}

/// The node whose value is largest under `b` and its size in bytes (saturating; weights, which
/// live in the checkpoint, excluded): a lower bound on the memory a run needs, cheap enough to
/// check before anything is allocated.
pub fn largest_value(g: &Graph, b: &Bindings) -> Option<(NodeId, u64)> {
    g.topo_order()
        .into_iter()
        .filter(|&n| !matches!(g.node(n).op, Op::Weight(_)))
        .map(|n| {
            let ty = &g.node(n).ty;
            let numel = ty.shape.numel(b).unwrap_or(0);
            (n, numel.saturating_mul(ty.dtype.size() as u64))
        })
        .max_by_key(|&(_, bytes)| bytes)
}
