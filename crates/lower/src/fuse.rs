//! Fusion: the driver that walks the graph and asks each recogniser which nodes become one
//! kernel.
//!
//! Nodes are visited from the outputs backwards. An unassigned node roots a new kernel: the
//! recognisers below are asked in order, and the first that recognises a kernel rooted there
//! emits it, absorbing the producers it may (each asks `Lowering::private`). A reshape is a
//! view of its operand; what no recogniser takes stays one ir operator for the backend's
//! generic kernels. A new kernel kind is one new recogniser file and one line in
//! `RECOGNISERS`.
//!
//! This module never recognises a pattern itself beyond the trivial view and generic kernels;
//! it only orders the recognisers, then puts the kernels in execution order and plans memory.

use std::collections::{HashMap, HashSet};

use attnopt_ir::{Bindings, Graph, NodeId, Op};

use crate::attention::fuse_attention;
use crate::context::Lowering;
use crate::factored::factored;
use crate::hydra::hydra;
use crate::kernel::{Kernel, KernelKind, Value, ValueId, ValueKind};
use crate::matmul::{matmul, merged_heads};
use crate::memory::{plan, MemoryPlan};
use crate::row_kernel::row_kernel;
use crate::sparse_ff::sparse_ff;

/// A graph lowered at concrete sizes.
#[derive(Debug, Clone)]
pub struct Lowered {
    pub bindings: Bindings,
    pub values: Vec<Value>,
    /// In execution order: every kernel's inputs are computed by earlier kernels (or are inputs
    /// and weights).
    pub kernels: Vec<Kernel>,
    /// Graph outputs by name.
    pub outputs: Vec<(String, ValueId)>,
    pub memory: MemoryPlan,
}

/// Why a graph could not be lowered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    #[error("shape of {0} is not concrete under the given batch and sequence sizes")]
    Unbound(String),
}

/// Each recogniser emits the kernel rooted at a node and says so, or leaves the node alone. The
/// first that takes a node wins, so the order is a priority: Hydra's root is a `mul`, which
/// `row_kernel` would also take, and the sparse feed-forward's root is a product.
const RECOGNISERS: &[fn(&mut Lowering<'_>, NodeId) -> bool] = &[
    view,
    sparse_ff,
    factored,
    matmul,
    merged_heads,
    hydra,
    row_kernel,
];

/// Finds the kernel rooted at `n`, unless `n` is already in one.
fn visit(l: &mut Lowering, n: NodeId) {
    if l.assigned.contains_key(&n) {
        return;
    }
    if matches!(l.g.node(n).op, Op::Input { .. } | Op::Weight(_)) {
        l.value(n);
        l.assigned.insert(n, usize::MAX);
        return;
    }
    for recognise in RECOGNISERS {
        if recognise(l, n) {
            return;
        }
    }
    generic(l, n);
}

/// A reshape: its value aliases its operand's, and its kernel does nothing.
fn view(l: &mut Lowering, n: NodeId) -> bool {
    if !matches!(
        l.g.node(n).op,
        Op::Reshape(_) | Op::Unsqueeze { .. } | Op::Squeeze { .. }
    ) {
        return false;
    }
    let src = l.value(l.g.operands(n)[0]);
    let v = l.value(n);
    l.values[v].kind = ValueKind::Alias(src);
    l.emit(n, KernelKind::View, vec![src], vec![n], "view".into());
    true
}

/// One operator, left to the backend's generic kernels: what no recogniser takes.
fn generic(l: &mut Lowering, n: NodeId) {
    let op = l.g.node(n).op.clone();
    let inputs = l.g.operands(n).into_iter().map(|o| l.value(o)).collect();
    let name = format!("op:{}", op.name());
    l.emit(n, KernelKind::Op(op), inputs, vec![n], name);
}

/// What a backend asks of the lowering beyond the kernels every backend runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LowerOptions {
    /// Fuse `Q·Kᵀ → softmax → P·V` into one [`KernelKind::Attention`] kernel that never stores
    /// the scores (the GPU backend's flash-style kernel); off for the CPU backend.
    pub fuse_attention: bool,
}

/// Lowers `g` at batch and sequence sizes `b`.
pub fn lower(g: &Graph, b: &Bindings) -> Result<Lowered, LowerError> {
    lower_with(g, b, &LowerOptions::default())
}

/// Lowers `g` at batch and sequence sizes `b` as `opts` asks.
pub fn lower_with(g: &Graph, b: &Bindings, opts: &LowerOptions) -> Result<Lowered, LowerError> {
    let order = g.topo_order();
    let mut shapes = HashMap::new();
    let mut users = HashMap::new();
    for &n in &order {
        let s = g
            .node(n)
            .ty
            .shape
            .eval(b)
            .ok_or_else(|| LowerError::Unbound(g.node(n).op.to_string()))?;
        shapes.insert(n, s);
        users.insert(n, g.users(n).len());
    }
    let mut l = Lowering::new(g, *b, shapes, users);
    // Only what the outputs need, roots first.
    let mut needed = HashSet::new();
    let mut stack: Vec<NodeId> = g.outputs().iter().map(|&(_, id)| id).collect();
    while let Some(n) = stack.pop() {
        if needed.insert(n) {
            stack.extend(g.operands(n));
        }
    }
    for &n in order.iter().rev() {
        if needed.contains(&n) {
            visit(&mut l, n);
        }
    }
    // Execution order: by the topological position of each kernel's root (every input's root
    // precedes it), masks before their users.
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut kernels = std::mem::take(&mut l.kernels);
    kernels.sort_by_key(|(root, k)| (pos[root], !matches!(k.kind, KernelKind::AdditiveMask)));
    let kernels: Vec<Kernel> = kernels.into_iter().map(|(_, k)| k).collect();
    let outputs: Vec<(String, ValueId)> = g
        .outputs()
        .iter()
        .map(|(name, id)| {
            let v = l.existing_value(*id);
            (
                name.clone(),
                v.expect("every output's node is computed by a kernel"),
            )
        })
        .collect();
    let kernels = if opts.fuse_attention {
        fuse_attention(&l.values, kernels, &outputs)
    } else {
        kernels
    };
    let memory = plan(&l.values, &kernels, &outputs);
    Ok(Lowered {
        bindings: *b,
        values: l.values,
        kernels,
        outputs,
        memory,
    })
}
