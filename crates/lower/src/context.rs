//! The lowering context: the graph at concrete sizes, who uses what, the values and kernels made
//! so far, and the one test of what a kernel may swallow ([`Lowering::private`]).
//!
//! Recognisers (`matmul.rs`, `views.rs`, `hydra.rs`, `row_kernel.rs`) stand on this module and
//! on `kernel.rs`; the driver (`fuse.rs`) walks the graph with it. This module never recognises
//! a pattern and never decides what fuses: it only answers questions about the graph, hands
//! out values and records kernels.

use std::collections::HashMap;

use attnopt_ir::cost::{node_cost, Cost};
use attnopt_ir::{Bindings, DType, Graph, NodeId, Op};

use crate::kernel::{Kernel, KernelKind, Value, ValueId, ValueKind};

pub(crate) struct Lowering<'g> {
    pub(crate) g: &'g Graph,
    b: Bindings,
    /// Every node's concrete shape.
    pub(crate) shapes: HashMap<NodeId, Vec<usize>>,
    /// How many nodes read each node (graph outputs are not users).
    users: HashMap<NodeId, usize>,
    /// The kernel (index into `kernels`) each node is computed by; inputs and weights map to
    /// `usize::MAX`.
    pub(crate) assigned: HashMap<NodeId, usize>,
    pub(crate) values: Vec<Value>,
    value_of: HashMap<NodeId, ValueId>,
    /// The additive (f32) mask made from each `attention_mask`, made once.
    pub(crate) additive_masks: HashMap<NodeId, ValueId>,
    /// Kernels with the node whose topological position orders them.
    pub(crate) kernels: Vec<(NodeId, Kernel)>,
}

impl<'g> Lowering<'g> {
    pub(crate) fn new(
        g: &'g Graph,
        b: Bindings,
        shapes: HashMap<NodeId, Vec<usize>>,
        users: HashMap<NodeId, usize>,
    ) -> Self {
        Lowering {
            g,
            b,
            shapes,
            users,
            assigned: HashMap::new(),
            values: vec![],
            value_of: HashMap::new(),
            additive_masks: HashMap::new(),
            kernels: vec![],
        }
    }

    pub(crate) fn shape(&self, n: NodeId) -> &[usize] {
        &self.shapes[&n]
    }

    /// What node `n` costs at these sizes (`ir::cost`).
    pub(crate) fn cost(&self, n: NodeId) -> Cost {
        node_cost(self.g, n, &self.b)
    }

    /// The value a node's result lives in, created on first use.
    pub(crate) fn value(&mut self, n: NodeId) -> ValueId {
        if let Some(&v) = self.value_of.get(&n) {
            return v;
        }
        let node = self.g.node(n);
        let kind = match &node.op {
            Op::Input { name, .. } => ValueKind::Input(name.clone()),
            Op::Weight(w) => ValueKind::Weight(*w),
            _ => ValueKind::Temp,
        };
        let v = self.values.len();
        self.values.push(Value {
            shape: self.shapes[&n].clone(),
            dtype: node.ty.dtype,
            kind,
            node: Some(n),
        });
        self.value_of.insert(n, v);
        v
    }

    /// The value node `n` already has, if any.
    pub(crate) fn existing_value(&self, n: NodeId) -> Option<ValueId> {
        self.value_of.get(&n).copied()
    }

    /// A value no graph node holds (one the lowering introduces).
    pub(crate) fn new_value(&mut self, value: Value) -> ValueId {
        self.values.push(value);
        self.values.len() - 1
    }

    /// `x` may disappear into the kernel of its only user: not yet in a kernel, used once, and
    /// not a graph output. Every recogniser asks this before folding a node into its kernel.
    pub(crate) fn private(&self, x: NodeId) -> bool {
        !self.assigned.contains_key(&x)
            && self.users.get(&x) == Some(&1)
            && !self.g.outputs().iter().any(|&(_, o)| o == x)
    }

    /// [`Self::private`], and an `f32` value (what fused kernels compute in).
    pub(crate) fn private_f32(&self, x: NodeId) -> bool {
        self.private(x) && self.g.node(x).ty.dtype == DType::F32
    }

    /// Records the kernel computing `nodes` into `root`'s value; its cost is the sum of the
    /// nodes' costs (callers that move less correct it on the returned kernel).
    pub(crate) fn emit(
        &mut self,
        root: NodeId,
        kind: KernelKind,
        inputs: Vec<ValueId>,
        nodes: Vec<NodeId>,
        name: String,
    ) -> &mut Kernel {
        let out = self.value(root);
        let meta = self.g.node(root).meta;
        let (mut flops, mut bytes) = (0, 0);
        for &n in &nodes {
            let c = self.cost(n);
            flops += c.flops;
            bytes += c.bytes;
        }
        let k = self.kernels.len();
        for &n in &nodes {
            self.assigned.insert(n, k);
        }
        self.kernels.push((
            root,
            Kernel {
                kind,
                inputs,
                output: out,
                nodes,
                layer: meta.layer,
                role: meta.role,
                name,
                flops,
                bytes,
            },
        ));
        &mut self.kernels.last_mut().expect("just pushed").1
    }
}
