//! Transformer blocks as e-graph expressions: cutting a graph into per-layer blocks, turning a
//! block into a `RecExpr` with abstract leaves, and stamping an optimised expression back into a
//! graph for any layer with the same structure.
//!
//! A block is the nodes of one layer (by `NodeMeta::layer`); its leaves are the values it reads
//! from outside (`in:k`, in first-use order) and its weights (`w:k`). Two layers whose
//! expressions and leaf types are equal have the same [`BlockExpr::signature`], so one
//! optimisation serves both.
//!
//! It translates only: it never rewrites or chooses between forms, and it never changes a
//! node's `NodeMeta` other than to stamp the layer it is asked for.

use std::collections::HashMap;

use attnopt_ir::infer::Typed;
use attnopt_ir::{Dim, Graph, GraphError, NodeId, NodeMeta, Op, Role, Shape, Sym};
use egg::{Id, RecExpr};

use crate::lang::{encode, Attr, TensorLang};

/// One layer of a graph.
#[derive(Debug, Clone)]
pub struct Block {
    pub layer: u32,
    /// The layer's nodes, operands first (including any that the output does not need).
    pub nodes: Vec<NodeId>,
    /// Values read from outside the block by the nodes the output needs, in first-use order
    /// (`in:k`).
    pub inputs: Vec<NodeId>,
    /// Weight nodes read by those nodes (`w:k`).
    pub weights: Vec<NodeId>,
    /// The one node whose value leaves the block.
    pub output: NodeId,
}

/// A layer that cannot be treated as a block, and why.
#[derive(Debug, Clone)]
pub struct NotABlock {
    pub layer: u32,
    pub reason: String,
}

/// Cuts `g` into one block per layer.
pub fn blocks(g: &Graph) -> (Vec<Block>, Vec<NotABlock>) {
    let order = g.topo_order();
    let mut by_layer: std::collections::BTreeMap<u32, Vec<NodeId>> = Default::default();
    for &n in &order {
        if let Some(l) = g.node(n).meta.layer {
            if !matches!(g.node(n).op, Op::Weight(_) | Op::Input { .. }) {
                by_layer.entry(l).or_default().push(n);
            }
        }
    }
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (layer, nodes) in by_layer {
        let inside: std::collections::HashSet<NodeId> = nodes.iter().copied().collect();
        let graph_outputs: Vec<NodeId> = g.outputs().iter().map(|&(_, id)| id).collect();
        let outputs: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|&n| {
                graph_outputs.contains(&n) || g.users(n).iter().any(|u| !inside.contains(u))
            })
            .collect();
        let [output] = outputs[..] else {
            bad.push(NotABlock {
                layer,
                reason: format!("{} values leave the layer (one expected)", outputs.len()),
            });
            continue;
        };
        // Leaves of the nodes the output needs (a node nothing uses may read values that come
        // after the output in topological order).
        let needed = needed_by(g, &inside, output);
        let (mut inputs, mut weights) = (Vec::new(), Vec::new());
        for &n in nodes.iter().filter(|n| needed.contains(n)) {
            for o in g.operands(n) {
                if inside.contains(&o) {
                    continue;
                }
                let list = if matches!(g.node(o).op, Op::Weight(_)) {
                    &mut weights
                } else {
                    &mut inputs
                };
                if !list.contains(&o) {
                    list.push(o);
                }
            }
        }
        ok.push(Block {
            layer,
            nodes,
            inputs,
            weights,
            output,
        });
    }
    (ok, bad)
}

/// The nodes of `inside` that `output` depends on (itself included).
fn needed_by(
    g: &Graph,
    inside: &std::collections::HashSet<NodeId>,
    output: NodeId,
) -> std::collections::HashSet<NodeId> {
    let mut needed = std::collections::HashSet::new();
    let mut stack = vec![output];
    while let Some(n) = stack.pop() {
        if inside.contains(&n) && needed.insert(n) {
            stack.extend(g.operands(n));
        }
    }
    needed
}

/// A block as an expression.
pub struct BlockExpr {
    pub expr: RecExpr<TensorLang>,
    /// For each expression node that came from a graph node, that node's role.
    pub roles: Vec<Option<Role>>,
    pub input_types: Vec<Typed>,
    pub weight_types: Vec<Typed>,
}

/// What makes two blocks the same optimisation problem.
pub type Signature = (RecExpr<TensorLang>, Vec<Typed>, Vec<Typed>);

impl BlockExpr {
    /// Identical signatures mean identical optimisation problems: the same expression over
    /// leaves of the same types.
    pub fn signature(&self) -> Signature {
        (
            self.expr.clone(),
            self.input_types.clone(),
            self.weight_types.clone(),
        )
    }
}

/// Converts `block` to an expression. With `tokens_symbolic`, a fixed token axis (axis 1 of a
/// `[B, T, D]` input, as in vision models) is made the symbolic `N`, so costs can be evaluated
/// at any sequence length; the caller must check the expression still type-checks. That is
/// only done when every such input has the same `T` and the block does not mention `N`
/// already.
pub fn to_expr(g: &Graph, block: &Block, tokens_symbolic: bool) -> BlockExpr {
    let mut expr = RecExpr::default();
    let mut roles = Vec::new();
    let mut ids: HashMap<NodeId, Id> = HashMap::new();
    let push = |expr: &mut RecExpr<TensorLang>,
                roles: &mut Vec<Option<Role>>,
                n: TensorLang,
                r: Option<Role>| {
        roles.push(r);
        expr.add(n)
    };
    for (k, &i) in block.inputs.iter().enumerate() {
        ids.insert(
            i,
            push(&mut expr, &mut roles, TensorLang::Input(k as u32), None),
        );
    }
    for (k, &w) in block.weights.iter().enumerate() {
        // A weight takes the role of the first node that reads it (the projection it belongs to).
        let role = block
            .nodes
            .iter()
            .find(|&&n| g.operands(n).contains(&w))
            .map(|&n| g.node(n).meta.role);
        ids.insert(
            w,
            push(&mut expr, &mut roles, TensorLang::Weight(k as u32), role),
        );
    }
    // Only the nodes the output needs, so that the output is the expression's root (its last
    // node): an unused node of the layer may come after it in topological order.
    let needed = needed_by(g, &block.nodes.iter().copied().collect(), block.output);
    for &n in block.nodes.iter().filter(|n| needed.contains(n)) {
        let node = g.node(n);
        let (name, attrs) = encode(&node.op);
        let mut children: Vec<Id> = attrs
            .into_iter()
            .map(|a| push(&mut expr, &mut roles, TensorLang::Attr(a), None))
            .collect();
        children.extend(g.operands(n).iter().map(|o| ids[o]));
        let id = push(
            &mut expr,
            &mut roles,
            TensorLang::Op(name.into(), children),
            Some(node.meta.role),
        );
        ids.insert(n, id);
    }
    let ty = |n: &NodeId| g.node(*n).ty.clone();
    let mut input_types: Vec<Typed> = block.inputs.iter().map(ty).collect();
    let tokens = |t: &Typed| {
        (t.shape.rank() == 3 && t.shape.0[0] == Dim::Sym(Sym::Batch))
            .then(|| t.shape.0[1].fixed())
            .flatten()
    };
    // Only when `N` does not occur in the block already (stamping replaces every `N` in
    // attributes by the token count) and all token axes agree (they all become the same `N`).
    let has_seq = |d: &[Dim]| d.contains(&Dim::Sym(Sym::Seq));
    let counts: std::collections::BTreeSet<usize> = input_types.iter().filter_map(tokens).collect();
    let generalise = tokens_symbolic
        && counts.len() == 1
        && !input_types.iter().any(|t| has_seq(&t.shape.0))
        && !expr.as_ref().iter().any(|n| match n {
            TensorLang::Attr(Attr::Dims(d)) => has_seq(d),
            _ => false,
        });
    if generalise {
        for t in &mut input_types {
            if tokens(t).is_some() {
                t.shape = Shape(vec![t.shape.0[0], Dim::Sym(Sym::Seq), t.shape.0[2]]);
            }
        }
    }
    BlockExpr {
        expr,
        roles,
        input_types,
        weight_types: block.weights.iter().map(ty).collect(),
    }
}

/// Adds `expr` to `g` as layer `layer`, with `in:k` bound to `inputs[k]` and `w:k` to
/// `weights[k]`; `roles[i]` is the role of expression node `i`. With `seq`, a symbolic `N` in
/// shape attributes becomes that fixed token count (for blocks optimised with the token axis
/// generalised). Returns the root's node.
pub fn instantiate(
    g: &mut Graph,
    expr: &RecExpr<TensorLang>,
    roles: &[Role],
    layer: u32,
    inputs: &[NodeId],
    weights: &[NodeId],
    seq: Option<usize>,
) -> Result<NodeId, GraphError> {
    let mut made: Vec<Option<NodeId>> = Vec::with_capacity(expr.len());
    let nodes = expr.as_ref();
    for (i, node) in nodes.iter().enumerate() {
        let id = match node {
            TensorLang::Attr(_) => None,
            TensorLang::Input(k) => Some(inputs[*k as usize]),
            TensorLang::Weight(k) => Some(weights[*k as usize]),
            TensorLang::Op(..) => {
                let (op, operands) = node
                    .decode_op(|c| match &nodes[usize::from(c)] {
                        TensorLang::Attr(Attr::Dims(d)) if seq.is_some() => Some(Attr::Dims(
                            d.iter()
                                .map(|&x| match (x, seq) {
                                    (Dim::Sym(Sym::Seq), Some(t)) => Dim::Fixed(t),
                                    _ => x,
                                })
                                .collect(),
                        )),
                        TensorLang::Attr(a) => Some(a.clone()),
                        _ => None,
                    })
                    .expect("extracted operators decode (checked by the analysis)");
                let operands: Vec<NodeId> = operands
                    .iter()
                    .map(|c| made[usize::from(*c)].expect("operands are tensors"))
                    .collect();
                Some(g.add(
                    op,
                    &operands,
                    NodeMeta {
                        layer: Some(layer),
                        role: roles[i],
                    },
                )?)
            }
        };
        made.push(id);
    }
    Ok(made
        .last()
        .copied()
        .flatten()
        .expect("an expression's root is a tensor"))
}
