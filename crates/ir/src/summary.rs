//! Per-layer facts derived from a graph's node roles: what attention each layer has and what
//! it costs. Derived on demand (never stored), so it stays true after any rewrite.

use std::collections::BTreeMap;
use std::fmt;

use crate::cost::{node_cost, Cost};
use crate::{Bindings, Graph, Op, Role};

/// Which attention formula a layer computes: recognised from its nodes here, asked for by
/// config.json at import ([`crate::builder::AttentionKind::formula`]), and carried as this type
/// through rewriting and reports. Its text (`Display`, JSON) is the one spelling users see:
/// `softmax`, `hydra`, `linear-elu`, `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttentionFormula {
    /// A softmax produces the attention probabilities.
    Softmax,
    /// Cosine kernel: q and k L2-normalised, no softmax.
    Hydra,
    /// Linear attention with the `elu(x)+1` kernel.
    LinearElu,
    /// Attention nodes, but none of the above.
    Other,
}

impl AttentionFormula {
    /// The name in reports (`linear-elu`, not config.json's `linear_elu`).
    pub fn name(self) -> &'static str {
        match self {
            AttentionFormula::Softmax => "softmax",
            AttentionFormula::Hydra => "hydra",
            AttentionFormula::LinearElu => "linear-elu",
            AttentionFormula::Other => "other",
        }
    }
}

impl serde::Serialize for AttentionFormula {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for AttentionFormula {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What one layer's self-attention looks like.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttentionSummary {
    pub layer: u32,
    /// Softmax when a softmax produces the attention probabilities; else the kernel: Hydra
    /// (cosine, L2-normalised q and k), linear-elu (elu+1); else other.
    pub kind: AttentionFormula,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub causal: bool,
    pub padding_mask: bool,
    pub rope: bool,
    /// Cost of the layer's attention nodes (projections through output projection).
    pub cost: Cost,
}

/// One [`AttentionSummary`] per layer that has attention nodes, in layer order.
pub fn attention_layers(g: &Graph, b: &Bindings) -> Vec<AttentionSummary> {
    let mut by_layer: BTreeMap<u32, AttentionSummary> = BTreeMap::new();
    for n in g.topo_order() {
        let node = g.node(n);
        let (Some(layer), true) = (node.meta.layer, node.meta.role.is_attention()) else {
            continue;
        };
        let s = by_layer.entry(layer).or_insert_with(|| AttentionSummary {
            layer,
            kind: AttentionFormula::Other,
            heads: None,
            kv_heads: None,
            head_dim: None,
            causal: false,
            padding_mask: false,
            rope: false,
            cost: Cost::default(),
        });
        match (&node.op, node.meta.role) {
            (Op::SplitHeads { heads }, Role::QProj) => {
                s.heads = Some(*heads);
                s.head_dim = node.ty.shape.last().fixed();
            }
            (Op::SplitHeads { heads }, Role::KProj) => s.kv_heads = Some(*heads),
            (Op::Softmax { .. }, Role::AttnProbs) => s.kind = AttentionFormula::Softmax,
            (Op::L2Normalize { .. }, _) if s.kind == AttentionFormula::Other => {
                s.kind = AttentionFormula::Hydra
            }
            (Op::Unary(crate::Unary::Elu), _) if s.kind == AttentionFormula::Other => {
                s.kind = AttentionFormula::LinearElu
            }
            (Op::CausalMask | Op::Tril, _) => s.causal = true,
            (Op::PaddingMask, _) => s.padding_mask = true,
            (Op::Rope { .. }, _) => s.rope = true,
            _ => {}
        }
    }
    // One pass over the nodes (not one per layer: that made 80-layer models quadratic).
    for n in g.topo_order() {
        let m = g.node(n).meta;
        if let (Some(layer), true) = (m.layer, m.role.is_attention()) {
            if let Some(s) = by_layer.get_mut(&layer) {
                s.cost += node_cost(g, n, b);
            }
        }
    }
    by_layer.into_values().collect()
}

/// Number of transformer layers (distinct layer indices on nodes).
pub fn layer_count(g: &Graph) -> usize {
    let mut layers: Vec<u32> = g
        .topo_order()
        .into_iter()
        .filter_map(|n| g.node(n).meta.layer)
        .collect();
    layers.sort_unstable();
    layers.dedup();
    layers.len()
}
