//! Recognises matrix products and emits each as one [`KernelKind::MatMul`] kernel, folding in
//! what the product can do itself: a transposing `permute` of its right operand (read
//! transposed), a `repeat_heads` of it (grouped-query attention: each kv head read in place by
//! its query heads), split-head operands and a merged-heads output (strided views found by
//! `views.rs`), and an elementwise chain after it (the epilogue, found by `row_kernel.rs`).
//!
//! A node is folded only when [`Lowering::private`] allows it: a `permute` that another kernel
//! or the graph's outputs still need keeps its own kernel, and the product then reads the
//! permute's operand transposed. This module never changes what a graph computes.

use attnopt_ir::{NodeId, Op};

use crate::context::Lowering;
use crate::epilogue::Epilogue;
use crate::kernel::{KernelKind, ProductViews, Strided, ValueId};
use crate::row::RowProgram;
use crate::views::{heads_view, merged_output};

/// An elementwise chain rooted at `root` whose head is a product: the product's epilogue.
pub(crate) struct EpilogueChain {
    pub root: NodeId,
    /// The chain as a row program (no reductions); its input `at` is the product.
    pub program: RowProgram,
    pub at: usize,
    /// The program's inputs' values (at `at`, the product's own; replaced by the root's).
    pub inputs: Vec<ValueId>,
    /// The chain's nodes, the root among them.
    pub nodes: Vec<NodeId>,
}

/// Emits the product `mm` on its own (operand layouts folded in where they can be).
pub(crate) fn matmul(l: &mut Lowering, mm: NodeId) -> bool {
    if !matches!(l.g.node(mm).op, Op::MatMul) {
        return false;
    }
    emit(l, mm, None, None);
    true
}

/// Emits `merge = merge_heads(p)` as the product `p` writing the merged heads in place, when
/// `p` is a product private to it.
pub(crate) fn merged_heads(l: &mut Lowering, merge: NodeId) -> bool {
    if !matches!(l.g.node(merge).op, Op::MergeHeads) {
        return false;
    }
    let Some((mm, view)) = merged_output(l, merge) else {
        return false;
    };
    emit(l, mm, None, Some((merge, view)));
    true
}

/// Emits the product `mm` with `chain` as its epilogue, the kernel writing `chain.root`.
pub(crate) fn with_epilogue(l: &mut Lowering, mm: NodeId, chain: EpilogueChain) {
    emit(l, mm, Some(chain), None);
}

/// A product (with, optionally, an epilogue, or written in place into
/// `merged.0 = merge_heads(mm)` through the view `merged.1`). Operands that are split heads
/// (of a slice) of another value are read from that value in place (`views.rs`).
fn emit(
    l: &mut Lowering,
    mm: NodeId,
    epi: Option<EpilogueChain>,
    merged: Option<(NodeId, Strided)>,
) {
    let ops = l.g.operands(mm);
    let (a, mut b) = (ops[0], ops[1]);
    let mut b_transposed = false;
    let mut nodes = vec![mm];
    let mut permute_folded = false;
    if let Op::Permute(p) = &l.g.node(b).op {
        let r = p.len();
        let swap_last: Vec<usize> = (0..r.saturating_sub(2)).chain([r - 1, r - 2]).collect();
        if r >= 2 && *p == swap_last {
            if l.private(b) {
                nodes.push(b);
                permute_folded = true;
            }
            b = l.g.operands(b)[0];
            b_transposed = true;
        }
    }
    let out_shape = l.shape(mm).to_vec();
    let batch = out_shape[..out_shape.len() - 2].to_vec();
    // Grouped-query attention: `repeat_heads(x)` (under the folded permute, if any) read from
    // `x` in place, the head axis split into (kv head, repeat) with the repeat's stride 0 in
    // `x`, instead of a copy of `x` per query head.
    let mut repeat = None;
    if let Op::RepeatHeads { times } = l.g.node(b).op {
        let x = l.g.operands(b)[0];
        let sx = l.shape(x);
        if batch.len() == 2
            && sx.len() == 4
            && sx[0] == batch[0]
            && sx[1] * times == batch[1]
            && (!b_transposed || permute_folded)
            && l.private(b)
        {
            repeat = Some((times, b));
            b = x;
        }
    }
    let sa = l.shape(a).to_vec();
    let sb = l.shape(b).to_vec();
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let n = out_shape[out_shape.len() - 1];
    // Heads read in place: only over the `[B, H]` batch axes of attention, and for `b` only
    // when its transpose (if any) is folded here too (else the permute's kernel needs it).
    let heads_axes = |s: &[usize]| batch.len() == 2 && s.len() == 4 && s[..2] == batch[..];
    let a_view = if heads_axes(&sa) {
        heads_view(l, a, false)
    } else {
        None
    };
    let b_view = if repeat.is_none() && heads_axes(&sb) && (!b_transposed || permute_folded) {
        heads_view(l, b, b_transposed)
    } else {
        None
    };
    let (mut layout_flops, mut layout_bytes) = (0, 0);
    let repeated = repeat.map(|(_, node)| node);
    for x in (a_view.iter().chain(&b_view).flat_map(|v| &v.nodes)).chain(&repeated) {
        if !nodes.contains(x) {
            let c = l.cost(*x);
            layout_flops += c.flops;
            layout_bytes += c.bytes;
            nodes.push(*x);
        }
    }
    let views = (a_view.is_some() || b_view.is_some() || merged.is_some() || repeat.is_some())
        .then(|| {
            let mut v = ProductViews {
                a: a_view
                    .as_ref()
                    .map_or_else(|| Strided::dense(&sa, &batch, false), |v| v.view.clone()),
                b: b_view.as_ref().map_or_else(
                    || match repeat {
                        Some(_) => Strided::dense(&sb, &sb[..2], b_transposed),
                        None => Strided::dense(&sb, &batch, b_transposed),
                    },
                    |v| v.view.clone(),
                ),
                c: merged.as_ref().map_or_else(
                    || Strided::dense(&out_shape, &batch, false),
                    |(_, c)| c.clone(),
                ),
                batch: batch.clone(),
            };
            if let Some((times, _)) = repeat {
                // [B, H] → [B, H / times, times]: query head h = g·times + r reads kv head g.
                let split = |s: &mut Strided| {
                    let h = s.batch_strides[1];
                    s.batch_strides = vec![s.batch_strides[0], h * times, h];
                };
                split(&mut v.a);
                split(&mut v.c);
                v.b.batch_strides.push(0);
                v.batch = vec![batch[0], batch[1] / times, times];
            }
            Box::new(v)
        });
    let av = match &a_view {
        Some(v) => v.value,
        None => l.value(a),
    };
    let bv = match &b_view {
        Some(v) => v.value,
        None => l.value(b),
    };
    match (epi, merged) {
        (None, merged) => {
            let root = match merged {
                Some((merge, _)) => {
                    let c = l.cost(merge);
                    layout_flops += c.flops;
                    layout_bytes += c.bytes;
                    nodes.push(merge);
                    merge
                }
                None => mm,
            };
            l.emit(
                root,
                KernelKind::MatMul {
                    m,
                    k,
                    n,
                    b_transposed,
                    epilogue: None,
                    views,
                },
                vec![av, bv],
                nodes,
                "matmul".into(),
            );
        }
        (
            Some(EpilogueChain {
                root,
                program,
                at,
                inputs: mut extra,
                nodes: chain,
            }),
            _,
        ) => {
            // The product is written into the root's value and transformed there in place,
            // so the epilogue's input `at` is the kernel's own output.
            extra[at] = l.value(root);
            let mut inputs = vec![av, bv];
            inputs.extend(extra);
            nodes.extend(chain);
            let epilogue = Epilogue::new(program, at);
            // Named by what it does where that has a name (`matmul+bias+gelu`), so
            // breakdowns separate the kinds.
            let name = match &epilogue.structured {
                Some(s) => format!("matmul+{}", s.name()),
                None => "matmul+epilogue".to_string(),
            };
            l.emit(
                root,
                KernelKind::MatMul {
                    m,
                    k,
                    n,
                    b_transposed,
                    epilogue: Some(epilogue),
                    views,
                },
                inputs,
                nodes,
                name,
            );
        }
    }
    // What the product moves, not the copies it replaces.
    if let Some((_, k)) = l.kernels.last_mut() {
        k.flops = k.flops.saturating_sub(layout_flops);
        k.bytes = k.bytes.saturating_sub(layout_bytes);
    }
}
