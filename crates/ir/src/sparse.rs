//! Building blocks of Scaling Transformers' sparse layers (Jaszczur et al. 2021; trax's
//! `sparsity.py`), written with primitives so every backend and the rewriter see them:
//! `FactoredDense` (gating × projection), `LocallyConvDense` (`conv_windows` then a product)
//! and `SparseFF` (a low-rank controller's `block_onehot` choice masking a ReLU MLP).
//! Shapes and meaning: docs/SPARSE.md. Knows nothing of checkpoint tensor names.

use crate::builder::Builder;
use crate::{Dim, GraphError, NodeId, Op, Role, Shape, Unary, BATCH, SEQ};

/// A `LocallyConvDense`'s weights: kernel `[length, width, C, O]` (trax's HWIO) and bias `[O]`.
#[derive(Debug, Clone, Copy)]
pub struct LocalConv {
    pub kernel: NodeId,
    pub bias: NodeId,
    pub length: usize,
    pub width: usize,
}

/// A `SparseFF`'s weights (trax's shapes; `F = X·N` units in `X` blocks of `N`).
#[derive(Debug, Clone, Copy)]
pub struct SparseFf {
    /// Controller `[d, L]`, `[L, X, N]`, `[X, N]`.
    pub m1: NodeId,
    pub m2: NodeId,
    pub mb: NodeId,
    /// `[d, X, N]`.
    pub w1: NodeId,
    /// `[N, X, d]` (block and element axes swapped).
    pub w2: NodeId,
    /// `[d]` (trax's; `None`: the caller adds the output bias itself, as a converted dense
    /// layer, whose bias add stays where it was).
    pub b2: Option<NodeId>,
    /// A bias `[F]` on the first product: none in trax; a dense layer converted by attnopt
    /// keeps its own.
    pub b1: Option<NodeId>,
    /// The activation: ReLU in trax; a converted dense layer keeps its own. It must map 0 to 0
    /// (an unchosen unit contributes nothing).
    pub act: Unary,
    pub block: usize,
    pub units: usize,
    pub lowrank: usize,
}

impl Builder {
    /// `FactoredDense` without its merge: `x [B, N, d]`, gating `[S, d]`, projection
    /// `[d, M]`, bias `[S·M]` → `[B, N, S, M]` with `y[s, m] = Σ_d x_d·G[s, d]·P[d, m] + bias`.
    pub fn factored_dense(
        &mut self,
        x: NodeId,
        gating: NodeId,
        projection: NodeId,
        bias: NodeId,
        (modules, module_dim): (usize, usize),
        role: Role,
    ) -> Result<NodeId, GraphError> {
        let xu = self.op(Op::Unsqueeze { axis: 2 }, &[x], role)?;
        let gated = self.mul(xu, gating, role)?;
        let y = self.op(Op::MatMul, &[gated, projection], role)?;
        let b = self.op(
            Op::Reshape(Shape(vec![Dim::Fixed(modules), Dim::Fixed(module_dim)])),
            &[bias],
            role,
        )?;
        self.add(y, b, role)
    }

    /// `LocallyConvDense`'s convolution on `u [B, N, S, C]` → `[B, N, S, O]`: the windows
    /// (`conv_windows`, causal over tokens, centred over modules) times the kernel, plus bias.
    pub fn local_conv(
        &mut self,
        u: NodeId,
        c: &LocalConv,
        (channels, out): (usize, usize),
        role: Role,
    ) -> Result<NodeId, GraphError> {
        let w = self.op(
            Op::ConvWindows {
                length: c.length,
                width: c.width,
            },
            &[u],
            role,
        )?;
        let rows = c.length * c.width * channels;
        let k = self.op(
            Op::Reshape(Shape(vec![Dim::Fixed(rows), Dim::Fixed(out)])),
            &[c.kernel],
            role,
        )?;
        let y = self.op(Op::MatMul, &[w, k], role)?;
        self.add(y, c.bias, role)
    }

    /// `[B, N, S, M] → [B, N, S·M]`.
    pub fn merge_modules(&mut self, x: NodeId, d: usize, role: Role) -> Result<NodeId, GraphError> {
        self.op(
            Op::Reshape(Shape(vec![BATCH, SEQ, Dim::Fixed(d)])),
            &[x],
            role,
        )
    }

    /// `SparseFF` at inference on `h [B, N, d]`:
    /// `act((h·W1 + b1) ⊙ block_onehot(h·m1·m2 + mb))·W2 + b2` with `W1 = w1` as `[d, F]`,
    /// `W2 = w2` permuted `(1, 0, 2)` as `[F, d]`, `act` ReLU and no `b1` in trax.
    pub fn sparse_ff(&mut self, h: NodeId, f: &SparseFf, d: usize) -> Result<NodeId, GraphError> {
        let flat = |b: &mut Self, w: NodeId, rows: usize, cols: usize, role| {
            b.op(
                Op::Reshape(Shape(vec![Dim::Fixed(rows), Dim::Fixed(cols)])),
                &[w],
                role,
            )
        };
        let low = self.op(Op::MatMul, &[h, f.m1], Role::MlpGate)?;
        let m2 = flat(self, f.m2, f.lowrank, f.units, Role::MlpGate)?;
        let logits = self.op(Op::MatMul, &[low, m2], Role::MlpGate)?;
        let mb = self.op(
            Op::Reshape(Shape(vec![Dim::Fixed(f.units)])),
            &[f.mb],
            Role::MlpGate,
        )?;
        let logits = self.add(logits, mb, Role::MlpGate)?;
        let choice = self.op(Op::BlockOneHot { block: f.block }, &[logits], Role::MlpGate)?;
        let w1 = flat(self, f.w1, d, f.units, Role::MlpUp)?;
        let mut mid = self.op(Op::MatMul, &[h, w1], Role::MlpUp)?;
        if let Some(b1) = f.b1 {
            mid = self.add(mid, b1, Role::MlpUp)?;
        }
        let mid = self.mul(mid, choice, Role::MlpAct)?;
        let act = self.unary(f.act, mid, Role::MlpAct)?;
        let w2 = self.op(Op::Permute(vec![1, 0, 2]), &[f.w2], Role::MlpDown)?;
        let w2 = flat(self, w2, f.units, d, Role::MlpDown)?;
        let y = self.op(Op::MatMul, &[act, w2], Role::MlpDown)?;
        match f.b2 {
            Some(b2) => self.add(y, b2, Role::MlpDown),
            None => Ok(y),
        }
    }
}
