//! Building blocks of transformer graphs: linear layers, norms, attention written out as
//! primitives, MLPs. Import's architecture templates compose these; they know nothing of
//! checkpoint tensor names (that mapping lives in import only).

use crate::{
    Binary, Dim, Graph, GraphError, NodeId, NodeMeta, Op, Reduce, Role, RopeStyle, Scalar, Shape,
    Unary,
};

/// How a checkpoint stores a linear layer's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]` (PyTorch `nn.Linear`): the graph multiplies by its transpose.
    OutIn,
    /// `[in, out]` (GPT-2 `Conv1D`).
    InOut,
}

/// The attention formula of a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttentionKind {
    /// `softmax(q·kᵀ·scale + masks)·v` per head.
    Softmax,
    /// Hydra attention written naively (Bolya et al. 2022): q and k L2-normalised over all
    /// features, then `(q·kᵀ)·v` per head with no scale, softmax or mask. With heads = features
    /// (head dim 1) this is the O(N²·D) form the rewriter collapses to O(N·D).
    Hydra,
    /// Linear attention with the `elu(x)+1` kernel φ, written quadratically per head:
    /// `S = φ(q)·φ(k)ᵀ` (future zeroed when causal), `out = S·v / (rowsum(S) + eps)`.
    LinearElu { eps: f32 },
}

impl AttentionKind {
    /// The formula without its parameters, as [`crate::summary`] recognises it in a graph.
    pub fn formula(&self) -> crate::AttentionFormula {
        match self {
            AttentionKind::Softmax => crate::AttentionFormula::Softmax,
            AttentionKind::Hydra => crate::AttentionFormula::Hydra,
            AttentionKind::LinearElu { .. } => crate::AttentionFormula::LinearElu,
        }
    }
}

/// Self-attention over already-projected `q`, `k`, `v` (`[B, N, ·]`).
#[derive(Debug, Clone, Copy)]
pub struct Attention {
    pub kind: AttentionKind,
    pub heads: usize,
    /// Key/value heads; fewer than `heads` for grouped-query attention.
    pub kv_heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    /// `attention_mask [B, N]` (1 keeps, 0 masks), if the model takes one.
    pub padding_mask: Option<NodeId>,
    /// Rotary embedding `(theta, style)` applied to q and k, if any.
    pub rope: Option<(f32, RopeStyle)>,
    /// Multiplier on `q·kᵀ` (usually `1/√head_dim`).
    pub scale: f32,
}

/// A [`Graph`] plus the layer that new nodes belong to.
#[derive(Debug, Default)]
pub struct Builder {
    pub graph: Graph,
    layer: Option<u32>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// A builder adding to `graph`, new nodes in `layer`.
    pub fn on(graph: Graph, layer: Option<u32>) -> Builder {
        Builder { graph, layer }
    }

    /// New nodes belong to `layer` (`None`: outside the blocks).
    pub fn set_layer(&mut self, layer: Option<u32>) {
        self.layer = layer;
    }

    pub fn finish(self) -> Graph {
        self.graph
    }

    /// Adds `op(args)` with the current layer and `role`.
    pub fn op(&mut self, op: Op, args: &[NodeId], role: Role) -> Result<NodeId, GraphError> {
        self.graph.add(
            op,
            args,
            NodeMeta {
                layer: self.layer,
                role,
            },
        )
    }

    pub fn add(&mut self, a: NodeId, b: NodeId, role: Role) -> Result<NodeId, GraphError> {
        self.op(Op::Binary(Binary::Add), &[a, b], role)
    }

    pub fn mul(&mut self, a: NodeId, b: NodeId, role: Role) -> Result<NodeId, GraphError> {
        self.op(Op::Binary(Binary::Mul), &[a, b], role)
    }

    pub fn unary(&mut self, u: Unary, x: NodeId, role: Role) -> Result<NodeId, GraphError> {
        self.op(Op::Unary(u), &[x], role)
    }

    /// `x · W (+ bias)`, with `W` as the checkpoint stores it.
    pub fn linear(
        &mut self,
        x: NodeId,
        w: NodeId,
        bias: Option<NodeId>,
        layout: WeightLayout,
        role: Role,
    ) -> Result<NodeId, GraphError> {
        let w = match layout {
            WeightLayout::OutIn => self.op(Op::Permute(vec![1, 0]), &[w], role)?,
            WeightLayout::InOut => w,
        };
        let y = self.op(Op::MatMul, &[x, w], role)?;
        match bias {
            Some(b) => self.add(y, b, role),
            None => Ok(y),
        }
    }

    /// The two-layer MLP `down(act(up(x)))`, weights as the checkpoint stores them.
    pub fn mlp(
        &mut self,
        x: NodeId,
        up: (NodeId, Option<NodeId>),
        act: Unary,
        down: (NodeId, Option<NodeId>),
        layout: WeightLayout,
    ) -> Result<NodeId, GraphError> {
        let u = self.linear(x, up.0, up.1, layout, Role::MlpUp)?;
        let u = self.unary(act, u, Role::MlpAct)?;
        self.linear(u, down.0, down.1, layout, Role::MlpDown)
    }

    pub fn layer_norm(
        &mut self,
        x: NodeId,
        g: NodeId,
        b: NodeId,
        eps: f32,
        role: Role,
    ) -> Result<NodeId, GraphError> {
        self.op(
            Op::LayerNorm {
                eps: Scalar::new(eps),
            },
            &[x, g, b],
            role,
        )
    }

    pub fn rms_norm(
        &mut self,
        x: NodeId,
        g: NodeId,
        eps: f32,
        role: Role,
    ) -> Result<NodeId, GraphError> {
        self.op(
            Op::RmsNorm {
                eps: Scalar::new(eps),
            },
            &[x, g],
            role,
        )
    }

    /// Multi-head (or grouped-query) attention as primitives; returns the merged context
    /// `[B, N, heads·head_dim]` before the output projection.
    pub fn attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        a: &Attention,
    ) -> Result<NodeId, GraphError> {
        match a.kind {
            AttentionKind::Softmax => self.softmax_attention(q, k, v, a),
            AttentionKind::Hydra => self.hydra_attention(q, k, v, a),
            AttentionKind::LinearElu { eps } => self.linear_attention(q, k, v, a, eps),
        }
    }

    /// Hydra attention in its linear form over `[B, N, D]` (what `rules/hydra.rules` produces):
    /// `φ(q) ⊙ Σ_t φ(k)_t ⊙ v_t`, with `φ = l2_normalize` over the features; `causal` takes a
    /// prefix sum over tokens (`cumsum`) instead of the total (`reduce_sum`).
    pub fn hydra_linear(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        causal: bool,
        eps: f32,
    ) -> Result<NodeId, GraphError> {
        let norm = Op::L2Normalize {
            axis: 2,
            eps: Scalar::new(eps),
        };
        let q = self.op(norm.clone(), &[q], Role::QProj)?;
        let k = self.op(norm, &[k], Role::KProj)?;
        let kv = self.mul(k, v, Role::AttnContext)?;
        let sum = if causal {
            Op::CumSum { axis: 1 }
        } else {
            Op::Reduce {
                kind: Reduce::Sum,
                axis: 1,
                keep_dim: true,
            }
        };
        let kv = self.op(sum, &[kv], Role::AttnContext)?;
        self.mul(q, kv, Role::AttnContext)
    }

    fn hydra_attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        a: &Attention,
    ) -> Result<NodeId, GraphError> {
        let norm = Op::L2Normalize {
            axis: 2,
            eps: Scalar::new(1e-12),
        };
        let q = self.op(norm.clone(), &[q], Role::QProj)?;
        let k = self.op(norm, &[k], Role::KProj)?;
        let q = self.op(Op::SplitHeads { heads: a.heads }, &[q], Role::QProj)?;
        let k = self.op(Op::SplitHeads { heads: a.kv_heads }, &[k], Role::KProj)?;
        let v = self.op(Op::SplitHeads { heads: a.kv_heads }, &[v], Role::VProj)?;
        let kt = self.op(Op::Permute(vec![0, 1, 3, 2]), &[k], Role::AttnScores)?;
        let s = self.op(Op::MatMul, &[q, kt], Role::AttnScores)?;
        let c = self.op(Op::MatMul, &[s, v], Role::AttnContext)?;
        self.op(Op::MergeHeads, &[c], Role::AttnContext)
    }

    fn linear_attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        a: &Attention,
        eps: f32,
    ) -> Result<NodeId, GraphError> {
        let (q, k, v) = self.heads(q, k, v, a)?;
        let phi = |b: &mut Self, x: NodeId, role: Role| -> Result<NodeId, GraphError> {
            let e = b.op(Op::Unary(Unary::Elu), &[x], role)?;
            b.op(Op::AddScalar(Scalar::new(1.0)), &[e], role)
        };
        let q = phi(self, q, Role::QProj)?;
        let k = phi(self, k, Role::KProj)?;
        let kt = self.op(Op::Permute(vec![0, 1, 3, 2]), &[k], Role::AttnScores)?;
        let mut s = self.op(Op::MatMul, &[q, kt], Role::AttnScores)?;
        if a.causal {
            s = self.op(Op::Tril, &[s], Role::AttnMask)?;
        }
        let num = self.op(Op::MatMul, &[s, v], Role::AttnContext)?;
        let den = self.op(
            Op::Reduce {
                kind: crate::Reduce::Sum,
                axis: 3,
                keep_dim: true,
            },
            &[s],
            Role::AttnProbs,
        )?;
        let den = self.op(Op::AddScalar(Scalar::new(eps)), &[den], Role::AttnProbs)?;
        let c = self.op(Op::Binary(Binary::Div), &[num, den], Role::AttnContext)?;
        self.op(Op::MergeHeads, &[c], Role::AttnContext)
    }

    /// Q, K, V `[B, N, H·d]` split into heads, RoPE on Q and K where the model has it, and K
    /// and V repeated to the query heads (grouped-query attention).
    fn heads(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        a: &Attention,
    ) -> Result<(NodeId, NodeId, NodeId), GraphError> {
        let mut q = self.op(Op::SplitHeads { heads: a.heads }, &[q], Role::QProj)?;
        let mut k = self.op(Op::SplitHeads { heads: a.kv_heads }, &[k], Role::KProj)?;
        let mut v = self.op(Op::SplitHeads { heads: a.kv_heads }, &[v], Role::VProj)?;
        if let Some((theta, style)) = a.rope {
            let rope = Op::Rope {
                theta: Scalar::new(theta),
                style,
            };
            q = self.op(rope.clone(), &[q], Role::QProj)?;
            k = self.op(rope, &[k], Role::KProj)?;
        }
        if a.kv_heads != a.heads {
            let times = a.heads / a.kv_heads.max(1);
            k = self.op(Op::RepeatHeads { times }, &[k], Role::KProj)?;
            v = self.op(Op::RepeatHeads { times }, &[v], Role::VProj)?;
        }
        Ok((q, k, v))
    }

    /// Softmax attention; see [`AttentionKind::Softmax`].
    fn softmax_attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        a: &Attention,
    ) -> Result<NodeId, GraphError> {
        let (q, k, v) = self.heads(q, k, v, a)?;
        let kt = self.op(Op::Permute(vec![0, 1, 3, 2]), &[k], Role::AttnScores)?;
        let s = self.op(Op::MatMul, &[q, kt], Role::AttnScores)?;
        let mut s = self.op(Op::Scale(Scalar::new(a.scale)), &[s], Role::AttnScores)?;
        if a.causal {
            s = self.op(Op::CausalMask, &[s], Role::AttnMask)?;
        }
        if let Some(m) = a.padding_mask {
            s = self.op(Op::PaddingMask, &[s, m], Role::AttnMask)?;
        }
        let p = self.op(Op::Softmax { axis: 3 }, &[s], Role::AttnProbs)?;
        let c = self.op(Op::MatMul, &[p, v], Role::AttnContext)?;
        self.op(Op::MergeHeads, &[c], Role::AttnContext)
    }

    /// Rows `0..N` of a position table `[P, D]`: `[N, D]`, an error at run time if `N > P`.
    pub fn positions(&mut self, table: NodeId) -> Result<NodeId, GraphError> {
        self.op(
            Op::Slice {
                axis: 0,
                start: 0,
                end: Dim::Sym(crate::Sym::Seq),
            },
            &[table],
            Role::Embedding,
        )
    }

    /// Broadcasts `x` to `shape`.
    pub fn expand(&mut self, x: NodeId, shape: Shape, role: Role) -> Result<NodeId, GraphError> {
        self.op(Op::Expand(shape), &[x], role)
    }
}
