//! Recognises the Hydra attention pattern and emits it as one [`KernelKind::Hydra`] kernel (the
//! kernel's spec and its two row programs are plain data in `kernel.rs`).
//!
//! After the optimizer's Hydra rewrite (rules/hydra.rules) a layer's attention is
//!
//! ```text
//! out = mul(l2_normalize{axis=2}(Q), reduce_sum{axis=1, keep_dim}(mul(l2_normalize{axis=2}(K), V)))
//! ```
//!
//! over `[B, N, D]` tensors, or with `cumsum{axis=1}` in place of the `reduce_sum` (causal).
//! Q, K and V are usually slices of the last axis of one fused `[B, N, 3D]` product. As
//! separate kernels this is five passes over memory; as one [`KernelKind::Hydra`] it is one
//! pass over K and V accumulating `kv = Σ_t φ(K_t) ⊙ V_t` and one pass over Q writing
//! `φ(Q_t) ⊙ kv` (causal: a running prefix sum), reading Q, K and V in place as strided rows
//! of the fused buffer.
//!
//! The match is taken only when every intermediate (φ(Q), φ(K), the product, kv) has no other
//! user and is not a graph output; a slice is read in place only under the same condition
//! (otherwise its own value is read). This module never changes what a graph computes: the
//! kernel's meaning is the interpreter's, up to f32 rounding
//! (`φ(x) = x · 1/max(‖x‖₂, eps)`, the same `max` as `l2_normalize`). It never folds a node
//! [`Lowering::private`] does not allow.

use attnopt_ir::{Binary, DType, NodeId, Op, Reduce};

use crate::context::Lowering;
use crate::kernel::{Hydra, KernelKind, RowView, ValueId};

/// Emits the Hydra kernel rooted at `root` (the final `mul`) if the pattern is all there.
pub(crate) fn hydra(l: &mut Lowering, root: NodeId) -> bool {
    let Some(h) = recognise(l, root) else {
        return false;
    };
    let name = if h.spec.causal {
        "hydra:causal"
    } else {
        "hydra"
    };
    // What the fused kernel moves, not the sum of the nodes it replaces.
    let bytes = h.spec.bytes();
    l.emit(
        root,
        KernelKind::Hydra(h.spec),
        h.inputs,
        h.nodes,
        name.into(),
    )
    .bytes = bytes;
    true
}

/// A recognised Hydra pattern: the kernel, its inputs, and the graph nodes it computes.
struct Match {
    spec: Hydra,
    inputs: Vec<ValueId>,
    nodes: Vec<NodeId>,
}

/// `l2_normalize{axis=2}(x)` with `x` private: `(x, eps)`.
fn normalized(l: &Lowering, n: NodeId) -> Option<(NodeId, f32)> {
    match l.g.node(n).op {
        Op::L2Normalize { axis: 2, eps } if l.private_f32(n) => {
            Some((l.g.operands(n)[0], eps.get()))
        }
        _ => None,
    }
}

/// The two operands of a binary `mul`, in both orders.
fn mul_operands(l: &Lowering, n: NodeId) -> Option<[(NodeId, NodeId); 2]> {
    match l.g.node(n).op {
        Op::Binary(Binary::Mul) => {
            let o = l.g.operands(n);
            Some([(o[0], o[1]), (o[1], o[0])])
        }
        _ => None,
    }
}

/// How operand `x` (shape `[B, N, D]`) is read: in place from the sliced value when `x`
/// is a private last-axis slice, else from its own value.
fn row_view(l: &mut Lowering, x: NodeId, nodes: &mut Vec<NodeId>) -> Option<(ValueId, RowView)> {
    if l.g.node(x).ty.dtype != DType::F32 {
        return None;
    }
    let d = *l.shapes[&x].last()?;
    if let Op::Slice { axis: 2, start, .. } = l.g.node(x).op {
        let src = l.g.operands(x)[0];
        let s = &l.shapes[&src];
        if l.private_f32(x) && s.len() == 3 && start + d <= s[2] {
            let row_stride = s[2];
            nodes.push(x);
            let v = l.value(src);
            return Some((
                v,
                RowView {
                    row_stride,
                    offset: start,
                },
            ));
        }
    }
    Some((
        l.value(x),
        RowView {
            row_stride: d,
            offset: 0,
        },
    ))
}

/// The Hydra kernel rooted at `root` (the final `mul`), if the pattern is all there.
fn recognise(l: &mut Lowering, root: NodeId) -> Option<Match> {
    let shape = l.shapes[&root].clone();
    let &[batch, tokens, d] = shape.as_slice() else {
        return None;
    };
    if d == 0 || l.g.node(root).ty.dtype != DType::F32 || l.assigned.contains_key(&root) {
        return None;
    }
    let same = |l: &Lowering, x: NodeId| l.shapes[&x] == shape;
    for (phi_q, kv) in mul_operands(l, root)? {
        let Some((q, eps_q)) = normalized(l, phi_q) else {
            continue;
        };
        let causal = match l.g.node(kv).op {
            Op::Reduce {
                kind: Reduce::Sum,
                axis: 1,
                keep_dim: true,
            } => false,
            Op::CumSum { axis: 1 } => true,
            _ => continue,
        };
        if !l.private_f32(kv) || !same(l, q) {
            continue;
        }
        let prod = l.g.operands(kv)[0];
        if !l.private_f32(prod) || !same(l, prod) {
            continue;
        }
        let Some((phi_k, v, k, eps_k)) =
            mul_operands(l, prod)?.into_iter().find_map(|(phi_k, v)| {
                let (k, eps) = normalized(l, phi_k)?;
                Some((phi_k, v, k, eps))
            })
        else {
            continue;
        };
        if !same(l, k) || !same(l, v) {
            continue;
        }
        let mut nodes = vec![root, phi_q, kv, prod, phi_k];
        let (qv, q_view) = row_view(l, q, &mut nodes)?;
        let (kv_, k_view) = row_view(l, k, &mut nodes)?;
        let (vv, v_view) = row_view(l, v, &mut nodes)?;
        return Some(Match {
            spec: Hydra {
                batch,
                tokens,
                d,
                causal,
                eps_q,
                eps_k,
                views: [q_view, k_view, v_view],
            },
            inputs: vec![qv, kv_, vv],
            nodes,
        });
    }
    None
}
