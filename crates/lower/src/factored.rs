//! Recognises a factored product (trax's `FactoredDense`, docs/SPARSE.md) at one row and emits
//! it as one [`KernelKind::Factored`] kernel:
//!
//! ```text
//! matmul(mul(unsqueeze{axis = r−1}(x), G), P)        x [.., d], G [S, d], P [d, M]  (mul either order)
//! ```
//!
//! As ordinary kernels that is a gating pass writing `S` copies of every row and a narrow
//! matrix product (`M` columns) the library runs at a fraction of its speed. The kernel does
//! neither: for at most [`FACTORED_ROWS`] rows (decoding) it reads `G` and `P` once, splitting
//! `d` between threads; for more rows a backend may instead run one dense product with the
//! folded weight `W[d, s·M + m] = G[s, d]·P[d, m]` made once (exact up to rounding: the same
//! sum reassociated). Taken when the `mul` is a [`Lowering::private`] f32 value (the
//! `unsqueeze` too, or it is left as the view it is) and `G`, `P` are values of fixed shape. Its meaning is the interpreter's up to f32 rounding.

use attnopt_ir::{Binary, NodeId, Op};

use crate::context::Lowering;
use crate::kernel::{Factored, KernelKind};

/// Rows up to which the fused kernel is used.
pub const FACTORED_ROWS: usize = 1;

/// `(x, G, P, nodes)` of a factored product rooted at `root`.
fn recognise(l: &Lowering, root: NodeId) -> Option<(NodeId, NodeId, NodeId, Vec<NodeId>)> {
    let op = |n: NodeId| &l.g.node(n).op;
    if !matches!(op(root), Op::MatMul) {
        return None;
    }
    let [gated, p] = l.g.operands(root)[..] else {
        return None;
    };
    if !matches!(op(gated), Op::Binary(Binary::Mul)) || !l.private_f32(gated) {
        return None;
    }
    let [a, b] = l.g.operands(gated)[..] else {
        return None;
    };
    let (xu, g) = [(a, b), (b, a)]
        .into_iter()
        .find(|&(u, _)| matches!(op(u), Op::Unsqueeze { .. }))?;
    let x = l.g.operands(xu)[0];
    let (sx, sg, sp) = (l.shape(x), l.shape(g), l.shape(p));
    let Op::Unsqueeze { axis } = *op(xu) else {
        return None;
    };
    let fits = !sx.is_empty()
        && axis + 1 == sx.len()
        && sg.len() == 2
        && sp.len() == 2
        && sg[1] == sx[sx.len() - 1]
        && sp[0] == sg[1];
    // The unsqueeze is a view the kernel reads through: swallowed when private; shared (the
    // Q, K and V products of one input share it once the optimizer has merged them), it stays.
    let mut nodes = vec![root, gated];
    if l.private_f32(xu) {
        nodes.push(xu);
    }
    fits.then_some((x, g, p, nodes))
}

/// Whether `root` is a product this module takes (`row_kernel.rs` leaves it alone then).
pub(crate) fn is_root(l: &Lowering, root: NodeId) -> bool {
    recognise(l, root).is_some()
}

/// Emits the factored kernel rooted at the product `root`, if the pattern is there.
pub(crate) fn factored(l: &mut Lowering, root: NodeId) -> bool {
    let Some((x, g, p, nodes)) = recognise(l, root) else {
        return false;
    };
    let (sx, sg, sp) = (
        l.shape(x).to_vec(),
        l.shape(g).to_vec(),
        l.shape(p).to_vec(),
    );
    let spec = Factored {
        rows: sx[..sx.len() - 1].iter().product(),
        d: sg[1],
        modules: sg[0],
        module_dim: sp[1],
    };
    let (flops, bytes) = (spec.flops(), spec.bytes());
    let inputs = vec![l.value(x), l.value(g), l.value(p)];
    let k = l.emit(
        root,
        KernelKind::Factored(spec),
        inputs,
        nodes,
        "factored".into(),
    );
    k.flops = flops;
    k.bytes = bytes;
    true
}
