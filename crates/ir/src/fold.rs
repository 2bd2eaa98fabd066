//! Precomputing what depends on weights only (a concatenated Q/K/V weight, a weight with the
//! softmax scale folded in) into new weight tensors, so a run never recomputes it.
//!
//! Pure views of one weight (transposes, reshapes) are left as they are: they cost nothing to
//! keep and folding them would copy every projection matrix of the model. With
//! [`fold_weights_keeping_bf16`], what is computed from bf16 weights alone stays bf16 when every
//! value is exactly a bf16 (a concatenated Q/K/V weight, a power-of-two scale), so a backend
//! running a bf16 checkpoint gains no f32 copy.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{interp, Graph, GraphError, NodeId, Op, Tensor, Weight};

/// Why folding failed (a bug rather than a user error: weight-only values need no inputs).
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("evaluating weights: {0}")]
    Interp(#[from] interp::InterpError),
    #[error("rebuilding the graph: {0}")]
    Graph(#[from] GraphError),
    #[error("making a folded weight: {0}")]
    Weight(#[from] crate::WeightError),
}

/// A graph with weight-only subgraphs replaced by new weights.
pub struct Folded {
    pub graph: Graph,
    /// The new weights by name, as f32 values (whatever the graph stores them as).
    pub weights: BTreeMap<String, Tensor>,
}

fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Permute(_) | Op::Reshape(_) | Op::Unsqueeze { .. } | Op::Squeeze { .. }
    )
}

/// Folds every maximal weight-only subgraph that is more than a view of one weight; the new
/// weights are f32.
pub fn fold_weights(g: &Graph) -> Result<Folded, FoldError> {
    fold(g, false)
}

/// As [`fold_weights`], but a new weight computed from bf16 weights only is stored as bf16
/// when that loses nothing (every value exactly a bf16).
pub fn fold_weights_keeping_bf16(g: &Graph) -> Result<Folded, FoldError> {
    fold(g, true)
}

/// The nodes computable from weights alone: weights, and operators of fixed shape all of whose
/// operands are such (a value shaped by the run, a position-table slice of length N, is not
/// constant). What folding precomputes, and what passes over a graph may treat as constant.
pub fn weight_only(g: &Graph) -> HashSet<NodeId> {
    let mut w = HashSet::new();
    for n in g.topo_order() {
        let node = g.node(n);
        let constant = match node.op {
            Op::Weight(_) => true,
            Op::Input { .. } => false,
            _ => {
                node.ty.shape.0.iter().all(|d| d.fixed().is_some())
                    && g.operands(n).iter().all(|o| w.contains(o))
            }
        };
        if constant {
            w.insert(n);
        }
    }
    w
}

fn fold(g: &Graph, keep_bf16: bool) -> Result<Folded, FoldError> {
    let order = g.topo_order();
    let weight_only = weight_only(g);
    // view[n]: a chain of views of one weight.
    let mut view: HashMap<NodeId, bool> = HashMap::new();
    // Computed from bf16 weights only.
    let mut from_bf16: HashMap<NodeId, bool> = HashMap::new();
    for &n in &order {
        let node = g.node(n);
        let ops = g.operands(n);
        let b = match &node.op {
            Op::Weight(w) => g.weight_data(*w).dtype() == crate::DType::BF16,
            _ => !ops.is_empty() && ops.iter().all(|o| from_bf16[o]),
        };
        from_bf16.insert(n, b);
        let v = match node.op {
            Op::Weight(_) => true,
            Op::Input { .. } => false,
            ref op => weight_only.contains(&n) && is_view(op) && ops.len() == 1 && view[&ops[0]],
        };
        view.insert(n, v);
    }
    let fold: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|&n| weight_only.contains(&n) && !view[&n])
        .filter(|&n| {
            g.users(n).iter().any(|u| !weight_only.contains(u))
                || g.outputs().iter().any(|&(_, o)| o == n)
        })
        .collect();
    let values = interp::run_nodes(g, &HashMap::new(), &fold)?;
    // Names: attnopt.L{layer}.{role}.{k}, stable for a given graph.
    let mut counters: HashMap<String, usize> = HashMap::new();
    let mut replacement: HashMap<NodeId, Weight> = HashMap::new();
    let mut weights = BTreeMap::new();
    for (&n, t) in fold.iter().zip(values) {
        let meta = g.node(n).meta;
        let stem = match meta.layer {
            Some(l) => format!("attnopt.L{l}.{}", meta.role),
            None => format!("attnopt.{}", meta.role),
        };
        let k = counters.entry(stem.clone()).or_insert(0);
        let name = format!("{stem}.{k}");
        *k += 1;
        let data = t
            .as_f32()
            .map(<[f32]>::to_vec)
            .unwrap_or_else(|| t.to_f32_vec());
        let shape = t.shape().to_vec();
        let w = match keep_bf16 && from_bf16[&n] {
            true => Weight::bf16_if_exact(name.clone(), shape.clone(), &data),
            false => None,
        }
        .unwrap_or_else(|| Weight::from_f32(name.clone(), shape, &data))?;
        replacement.insert(n, w);
        weights.insert(name, t);
    }
    // Keep only what the outputs still need once folded nodes are leaves.
    let needed = g.needed(|n| match replacement.contains_key(&n) {
        true => vec![],
        false => g.operands(n),
    });
    let mut out = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for n in order.into_iter().filter(|n| needed.contains(n)) {
        let id = match replacement.remove(&n) {
            Some(w) => out.weight(w),
            None => out.copy_node(g, n, &map)?,
        };
        map.insert(n, id);
    }
    for (name, id) in g.outputs() {
        out.set_output(name, map[id])?;
    }
    Ok(Folded {
        graph: out,
        weights,
    })
}
