//! Per-layer facts derived from a graph's node roles: what attention each layer has and what
//! it costs. Derived on demand (never stored), so it stays true after any rewrite.

use std::collections::BTreeMap;

use crate::cost::{node_cost, Cost};
use crate::{Bindings, Graph, Op, Role};

/// What one layer's self-attention looks like.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttentionSummary {
    pub layer: u32,
    /// `"softmax"` when a softmax produces the attention probabilities; else the kernel:
    /// `"hydra"` (cosine, L2-normalised q and k), `"linear-elu"` (elu+1); else `"other"`.
    pub kind: &'static str,
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
            kind: "other",
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
            (Op::Softmax { .. }, Role::AttnProbs) => s.kind = "softmax",
            (Op::L2Normalize { .. }, _) if s.kind == "other" => s.kind = "hydra",
            (Op::Unary(crate::Unary::Elu), _) if s.kind == "other" => s.kind = "linear-elu",
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
