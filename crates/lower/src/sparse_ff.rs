//! Recognises the sparse feed-forward core (trax's `SparseFF`, docs/SPARSE.md) and emits it as
//! one [`KernelKind::SparseFf`] kernel that reads only the chosen units' weights:
//!
//! ```text
//! matmul(act(mul(matmul(h, W1) [+ b1], block_onehot{block}(logits))), W2)   (mul either order)
//! ```
//!
//! with `act` any function that maps 0 to 0 (trax's ReLU; the GELU of a dense layer that
//! `optimize --allow sparse-ff` converted, which also keeps its bias `b1 [F]`),
//! `W1 [d, F]` and `W2 [F, d_out]` two-dimensional, or `W2` as trax stores it,
//! `reshape{[F, d_out]}(permute{[1, 0, 2]}(w2 [N, F/N, d_out]))`, which the kernel then reads in
//! place ([`W2Layout::BlockSwapped`]) instead of a permuted copy made on every run. As
//! ordinary kernels this reads all of
//! `W1` and `W2` per token; the fused kernel reads, per row and block, one column of `W1` and
//! one row of `W2`. Taken only when the activation, the `mul`, the first product (and its bias
//! add) and the one-hot are [`Lowering::private`] f32 values. Its meaning is the interpreter's up to f32 rounding,
//! except that unchosen units are never read (so a NaN or infinity there does not reach the
//! output, where the dense form's `0 · inf` would).

use attnopt_ir::{Binary, NodeId, Op};

use crate::context::Lowering;
use crate::kernel::{KernelKind, SparseFf, W2Layout};
use crate::row::UnaryOp;

/// The controller's products run inside the kernel for at most this many rows (decoding: a
/// vector-matrix product is bandwidth-bound, and the kernel splits it between threads); more
/// rows keep them as matrix products for the library.
pub const CONTROLLER_ROWS: usize = 1;

/// The matched pattern: `(h, logits, W1, W2, block, nodes)`.
struct Match {
    h: NodeId,
    logits: NodeId,
    /// `logits = (h·m1)·m2 + mb` taken into the kernel: `(m1, m2, mb)` and the rank.
    controller: Option<([NodeId; 3], usize)>,
    w1: NodeId,
    /// `b1 [F]`, added to the first product before the gating.
    b1: Option<NodeId>,
    act: UnaryOp,
    w2: NodeId,
    /// The product's own `W2` operand (`w2` itself, or the view of it read in place).
    root_w2: NodeId,
    w2_layout: W2Layout,
    block: usize,
    nodes: Vec<NodeId>,
}

/// Whether `root` is a sparse feed-forward core this module would take (the epilogue search in
/// `row_kernel.rs` leaves such a product alone, so that it is found here).
pub(crate) fn is_root(l: &Lowering, root: NodeId) -> bool {
    recognise(l, root).is_some()
}

/// Emits the sparse feed-forward kernel rooted at the product `root`, if the pattern is there.
pub(crate) fn sparse_ff(l: &mut Lowering, root: NodeId) -> bool {
    let Some(m) = recognise(l, root) else {
        return false;
    };
    let (sh, sw1, sw2) = (l.shape(m.h).to_vec(), l.shape(m.w1), l.shape(m.root_w2));
    let spec = SparseFf {
        rows: sh[..sh.len() - 1].iter().product(),
        d: sw1[0],
        units: sw1[1],
        block: m.block,
        d_out: sw2[1],
        w2_layout: m.w2_layout,
        controller: m.controller.map(|(_, r)| r),
        act: m.act,
        bias: m.b1.is_some(),
    };
    let mut inputs = vec![l.value(m.h), l.value(m.w1), l.value(m.w2)];
    match m.controller {
        Some((weights, _)) => inputs.extend(weights.map(|w| l.value(w))),
        None => inputs.push(l.value(m.logits)),
    }
    inputs.extend(m.b1.map(|b| l.value(b)));
    let (flops, bytes) = (spec.flops(), spec.bytes());
    let k = l.emit(
        root,
        KernelKind::SparseFf(spec),
        inputs,
        m.nodes,
        "sparse_ff".into(),
    );
    // What the kernel does and moves, not the dense nodes it replaces.
    k.flops = flops;
    k.bytes = bytes;
    true
}

fn recognise(l: &Lowering, root: NodeId) -> Option<Match> {
    let op = |n: NodeId| &l.g.node(n).op;
    let operands = |n: NodeId| l.g.operands(n);
    if !matches!(op(root), Op::MatMul) {
        return None;
    }
    let [act, w2] = operands(root)[..] else {
        return None;
    };
    let Op::Unary(u) = *op(act) else {
        return None;
    };
    let act_op = UnaryOp::of(u).filter(|f| f.apply(0.0) == 0.0)?;
    if !l.private_f32(act) {
        return None;
    }
    let gated = operands(act)[0];
    if !matches!(op(gated), Op::Binary(Binary::Mul)) || !l.private_f32(gated) {
        return None;
    }
    let [x, y] = operands(gated)[..] else {
        return None;
    };
    let (mid, choice) = [(x, y), (y, x)].into_iter().find(|&(m, c)| {
        matches!(op(m), Op::MatMul | Op::Binary(Binary::Add))
            && matches!(op(c), Op::BlockOneHot { .. })
    })?;
    let Op::BlockOneHot { block } = *op(choice) else {
        return None;
    };
    if !l.private_f32(choice) {
        return None;
    }
    let (product, b1) = biased_product(l, mid)?;
    let [h, w1] = operands(product)[..] else {
        return None;
    };
    let logits = operands(choice)[0];
    let (sh, sl, sw1, sw2) = (l.shape(h), l.shape(logits), l.shape(w1), l.shape(w2));
    let (&[d, units], &[units2, _]) = (sw1, sw2) else {
        return None;
    };
    let lead = |s: &[usize]| s[..s.len().saturating_sub(1)].to_vec();
    let fits = b1.is_none_or(|b| l.shape(b) == [units])
        && sh.last() == Some(&d)
        && sl.last() == Some(&units)
        && units2 == units
        && lead(sh) == lead(sl)
        && l.shape(root)[..l.shape(root).len() - 1] == lead(sh)[..]
        && block > 0
        && units.is_multiple_of(block);
    if !fits {
        return None;
    }
    let mut nodes = vec![root, act, gated, product, choice];
    if b1.is_some() {
        nodes.push(mid);
    }
    let rows: usize = lead(sh).iter().product();
    let controller = match rows <= CONTROLLER_ROWS {
        true => controller(l, logits, h, units),
        false => None,
    };
    if let Some((_, _, ref inner)) = controller {
        nodes.extend(inner);
    }
    let (stored, w2_layout) = match swapped_view(l, w2, block) {
        Some((w, views)) => {
            nodes.extend(views);
            (w, W2Layout::BlockSwapped)
        }
        None => (w2, W2Layout::Units),
    };
    Some(Match {
        h,
        logits,
        controller: controller.map(|(w, r, _)| (w, r)),
        w1,
        b1,
        act: act_op,
        w2: stored,
        root_w2: w2,
        w2_layout,
        block,
        nodes,
    })
}

/// `mid = matmul(h, W1)`, or `add(matmul(h, W1), b1)` (either order) with `b1` rank 1: the
/// product and `b1`, both private f32 values.
fn biased_product(l: &Lowering, mid: NodeId) -> Option<(NodeId, Option<NodeId>)> {
    if !l.private_f32(mid) {
        return None;
    }
    match &l.g.node(mid).op {
        Op::MatMul => Some((mid, None)),
        Op::Binary(Binary::Add) => {
            let [a, b] = l.g.operands(mid)[..] else {
                return None;
            };
            let (p, bias) = [(a, b), (b, a)].into_iter().find(|&(p, bias)| {
                matches!(l.g.node(p).op, Op::MatMul) && l.shape(bias).len() == 1
            })?;
            l.private_f32(p).then_some((p, Some(bias)))
        }
        _ => None,
    }
}

/// `w2 = reshape{[F, d_out]}(permute{[1, 0, 2]}(w [block, F/block, d_out]))` with both views
/// private: `(w, [reshape, permute])`.
fn swapped_view(l: &Lowering, w2: NodeId, block: usize) -> Option<(NodeId, [NodeId; 2])> {
    if !matches!(l.g.node(w2).op, Op::Reshape(_)) || !l.private_f32(w2) {
        return None;
    }
    let p = l.g.operands(w2)[0];
    match &l.g.node(p).op {
        Op::Permute(perm) if perm[..] == [1, 0, 2] && l.private_f32(p) => {}
        _ => return None,
    }
    let w = l.g.operands(p)[0];
    match l.shape(w) {
        &[n, _, _] if n == block => Some((w, [w2, p])),
        _ => None,
    }
}

/// `logits = add((h·m1)·m2, mb)` (either order) with every node private, `m1 [d, L]`,
/// `m2 [L, units]` and `mb [units]`: `([m1, m2, mb], L, [add, product, product])`.
#[allow(clippy::type_complexity)]
fn controller(
    l: &Lowering,
    logits: NodeId,
    h: NodeId,
    units: usize,
) -> Option<([NodeId; 3], usize, [NodeId; 3])> {
    let op = |n: NodeId| &l.g.node(n).op;
    if !matches!(op(logits), Op::Binary(Binary::Add)) || !l.private_f32(logits) {
        return None;
    }
    let [a, b] = l.g.operands(logits)[..] else {
        return None;
    };
    let (outer, mb) = [(a, b), (b, a)]
        .into_iter()
        .find(|&(p, _)| matches!(op(p), Op::MatMul))?;
    let [low, m2] = l.g.operands(outer)[..] else {
        return None;
    };
    if !matches!(op(low), Op::MatMul) || !l.private_f32(outer) || !l.private_f32(low) {
        return None;
    }
    let [h2, m1] = l.g.operands(low)[..] else {
        return None;
    };
    let (sm1, sm2, smb) = (l.shape(m1), l.shape(m2), l.shape(mb));
    let fits = h2 == h
        && sm1.len() == 2
        && sm1[0] == *l.shape(h).last()?
        && sm2 == [sm1[1], units]
        && smb == [units];
    fits.then(|| ([m1, m2, mb], sm1[1], [logits, outer, low]))
}
