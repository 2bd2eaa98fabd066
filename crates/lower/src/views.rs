//! Recognises the layout nodes around an attention product that its strided views can replace:
//! operands read in place from the value they were split out of, and an output written in place
//! into merged heads, instead of copying through `split_heads`, `slice` and `merge_heads`
//! kernels. The views themselves ([`Strided`], [`crate::kernel::ProductViews`]) are plain data
//! in `kernel.rs`; `matmul.rs` puts them into its kernel.
//!
//! Around each attention product the graph re-lays-out data three ways: `slice` cuts Q, K or V
//! out of the fused `[B, N, 3D]` QKV product, `split_heads` turns `[B, N, H·d]` into
//! `[B, H, N, d]`, and `merge_heads` turns the context `[B, H, N, d]` back into `[B, N, H·d]`.
//! Each is a pure index map, so a product can read (or write) the unsplit value directly with
//! strides: head `h` of a fused buffer of width `W` starting at column `start` is element
//! `(b, h, s, j)` at `start + b·N·W + s·W + h·d + j`.
//!
//! A layout node is folded into a product only when it is private to it
//! ([`Lowering::private`]: the product is its only user and it is not a graph output), so no
//! value another kernel reads disappears (a shared `split_heads` keeps its copy kernel).
//! Anything else (`repeat_heads`, RoPE, a `scale` between the permute and the product, weights)
//! is left as it is. This module never changes what a graph computes and never emits a kernel.

use attnopt_ir::{DType, NodeId, Op};

use crate::context::Lowering;
use crate::kernel::{Strided, ValueId};

/// An operand read through a view: its storage value, the view, and the layout nodes folded.
pub(crate) struct ViewedOperand {
    pub value: ValueId,
    pub view: Strided,
    pub nodes: Vec<NodeId>,
}

/// `x = split_heads(src)` or `split_heads(slice_last(src))`, with `x` foldable: the product
/// operand `x` (its last two axes swapped when `transposed`) read from `src` in place.
pub(crate) fn heads_view(l: &mut Lowering, x: NodeId, transposed: bool) -> Option<ViewedOperand> {
    let Op::SplitHeads { heads } = l.g.node(x).op else {
        return None;
    };
    if !l.private_f32(x) {
        return None;
    }
    let shape = l.shapes[&x].clone(); // [B, H, N, d]
    let (n, d) = (shape[2], shape[3]);
    if heads == 0 || shape[1] != heads {
        return None;
    }
    let mut nodes = vec![x];
    let mut src = l.g.operands(x)[0];
    let mut start = 0;
    if let Op::Slice { axis, start: s, .. } = l.g.node(src).op {
        let ss = &l.shapes[&src];
        if axis + 1 == ss.len() && l.private_f32(src) {
            nodes.push(src);
            start = s;
            src = l.g.operands(src)[0];
        }
    }
    if matches!(l.g.node(src).op, Op::Weight(_)) || l.g.node(src).ty.dtype != DType::F32 {
        return None;
    }
    let ss = l.shapes[&src].clone(); // [B, N, width]
    if ss.len() != 3 || ss[1] != n || start + heads * d > ss[2] {
        return None;
    }
    let value = l.value(src);
    Some(ViewedOperand {
        value,
        view: Strided::heads(n, ss[2], start, d, transposed),
        nodes,
    })
}

/// `c = merge_heads(p)` where the product `p` has no other user: `p` written into `c`'s value
/// in place, as the view of its `[B, H, N, d]` output.
pub(crate) fn merged_output(l: &Lowering, merge: NodeId) -> Option<(NodeId, Strided)> {
    let p = l.g.operands(merge)[0];
    if !matches!(l.g.node(p).op, Op::MatMul) || !l.private_f32(p) {
        return None;
    }
    let s = &l.shapes[&p]; // [B, H, N, d]
    if s.len() != 4 || l.g.node(merge).ty.dtype != DType::F32 {
        return None;
    }
    let (h, n, d) = (s[1], s[2], s[3]);
    Some((p, Strided::heads(n, h * d, 0, d, false)))
}
