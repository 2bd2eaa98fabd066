//! The tensor graph: operators as petgraph nodes, operands as ordered edges.
//!
//! Invariants: every node's type was inferred from its operands when it was added (so a graph
//! that exists is well-shaped); edges point from operand to user and carry the operand's
//! position; the graph is acyclic because a node can only take existing nodes as operands.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::infer::{infer, ShapeError, Typed};
use crate::{DType, NodeMeta, Op, Role, Shape, Weight};

/// A node handle.
pub type NodeId = NodeIndex<u32>;

/// Index into [`Graph::weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeightId(pub u32);

/// One operator application with its inferred type and its layer/role.
#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub ty: Typed,
    pub meta: NodeMeta,
}

/// Why a graph edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("{meta}: {source}")]
    Shape { meta: NodeMeta, source: ShapeError },
    #[error("operand {0:?} is not a node of this graph")]
    UnknownNode(NodeId),
    #[error("two inputs are named `{0}`")]
    DuplicateInput(String),
    #[error("two outputs are named `{0}`")]
    DuplicateOutput(String),
}

/// A model as a dataflow graph over weights and run-time inputs.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u32>,
    weights: Vec<Weight>,
    weight_nodes: HashMap<String, NodeId>,
    inputs: Vec<(String, NodeId)>,
    outputs: Vec<(String, NodeId)>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a run-time input (ids and masks are `I64`, floats `F32`).
    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> Result<NodeId, GraphError> {
        if self.inputs.iter().any(|(n, _)| n == name) {
            return Err(GraphError::DuplicateInput(name.into()));
        }
        let dtype = dtype.compute();
        let op = Op::Input {
            name: name.into(),
            dtype,
            shape: shape.clone(),
        };
        let meta = NodeMeta {
            layer: None,
            role: Role::Input,
        };
        let id = self.g.add_node(Node {
            op,
            ty: Typed::new(shape, dtype),
            meta,
        });
        self.inputs.push((name.into(), id));
        Ok(id)
    }

    /// Adds a weight leaf; the same weight name always yields the same node.
    pub fn weight(&mut self, w: Weight) -> NodeId {
        if let Some(&id) = self.weight_nodes.get(w.name()) {
            return id;
        }
        let wid = WeightId(self.weights.len() as u32);
        let ty = Typed::new(Shape::fixed(w.shape()), w.dtype().compute());
        let name = w.name().to_string();
        self.weights.push(w);
        let meta = NodeMeta {
            layer: None,
            role: Role::Weight,
        };
        let id = self.g.add_node(Node {
            op: Op::Weight(wid),
            ty,
            meta,
        });
        self.weight_nodes.insert(name, id);
        id
    }

    /// Adds `op(operands)`, inferring its type; refuses operands of the wrong shape.
    pub fn add(
        &mut self,
        op: Op,
        operands: &[NodeId],
        meta: NodeMeta,
    ) -> Result<NodeId, GraphError> {
        let mut tys = Vec::with_capacity(operands.len());
        for &o in operands {
            tys.push(
                self.g
                    .node_weight(o)
                    .ok_or(GraphError::UnknownNode(o))?
                    .ty
                    .clone(),
            );
        }
        let ty = infer(&op, &tys).map_err(|source| GraphError::Shape { meta, source })?;
        let id = self.g.add_node(Node { op, ty, meta });
        for (i, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, id, i as u32);
        }
        Ok(id)
    }

    /// Adds a copy of node `n` of `src` (an input, a weight or an operator), its operands
    /// mapped through `map`, which must already hold them. The building block of every pass
    /// that rebuilds a graph.
    pub fn copy_node(
        &mut self,
        src: &Graph,
        n: NodeId,
        map: &HashMap<NodeId, NodeId>,
    ) -> Result<NodeId, GraphError> {
        let node = src.node(n);
        match &node.op {
            Op::Input { name, dtype, shape } => self.input(name, *dtype, shape.clone()),
            Op::Weight(w) => Ok(self.weight(src.weight_data(*w).clone())),
            op => {
                let operands: Vec<NodeId> = src
                    .operands(n)
                    .iter()
                    .map(|o| map.get(o).copied().ok_or(GraphError::UnknownNode(*o)))
                    .collect::<Result<_, _>>()?;
                self.add(op.clone(), &operands, node.meta)
            }
        }
    }

    /// Names `id` as a graph output.
    pub fn set_output(&mut self, name: &str, id: NodeId) -> Result<(), GraphError> {
        if self.outputs.iter().any(|(n, _)| n == name) {
            return Err(GraphError::DuplicateOutput(name.into()));
        }
        if self.g.node_weight(id).is_none() {
            return Err(GraphError::UnknownNode(id));
        }
        self.outputs.push((name.into(), id));
        Ok(())
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// Operands of `id`, in order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut e: Vec<(u32, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        e.sort_unstable();
        e.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that take `id` as an operand (each once).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut u: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        u.sort_unstable();
        u.dedup();
        u
    }

    /// The nodes the outputs and inputs still need when node `n` reads `operands(n)` (a pass
    /// that replaces nodes says which operands a replacement keeps): what a rebuilt graph
    /// copies.
    pub fn needed(&self, operands: impl Fn(NodeId) -> Vec<NodeId>) -> HashSet<NodeId> {
        let mut needed = HashSet::new();
        let mut stack: Vec<NodeId> = self.outputs.iter().map(|&(_, id)| id).collect();
        stack.extend(self.inputs.iter().map(|&(_, id)| id));
        while let Some(n) = stack.pop() {
            if needed.insert(n) {
                stack.extend(operands(n));
            }
        }
        needed
    }

    /// A copy of the graph in which some nodes are replaced: `kept(n)` is `Some(operands)` for
    /// a node to replace (the operands its replacement still reads), and `make(out, n, map)`
    /// builds that replacement in `out` from the mapped operands. Everything else is copied
    /// ([`Graph::copy_node`]); what the outputs no longer need is dropped. The one surgery
    /// every value-dependent pass (factored weights, refits, conversions) goes through.
    pub fn rebuild(
        &self,
        kept: impl Fn(NodeId) -> Option<Vec<NodeId>>,
        mut make: impl FnMut(&mut Graph, NodeId, &HashMap<NodeId, NodeId>) -> Result<NodeId, GraphError>,
    ) -> Result<Graph, GraphError> {
        let needed = self.needed(|n| kept(n).unwrap_or_else(|| self.operands(n)));
        let mut out = Graph::new();
        let mut map: HashMap<NodeId, NodeId> = HashMap::new();
        for n in self.topo_order().into_iter().filter(|n| needed.contains(n)) {
            let id = match kept(n) {
                Some(_) => make(&mut out, n, &map)?,
                None => out.copy_node(self, n, &map)?,
            };
            map.insert(n, id);
        }
        for (name, id) in self.outputs() {
            out.set_output(name, map[id])?;
        }
        Ok(out)
    }

    /// All nodes, operands before users, ties broken by id (deterministic).
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut indeg: HashMap<NodeId, usize> = self
            .g
            .node_indices()
            .map(|n| (n, self.g.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: std::collections::BTreeSet<NodeId> = indeg
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| n)
            .collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indeg.get_mut(&e.target()).expect("edge target is a node");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        order
    }

    pub fn weights(&self) -> &[Weight] {
        &self.weights
    }

    pub fn weight_data(&self, id: WeightId) -> &Weight {
        &self.weights[id.0 as usize]
    }

    pub fn inputs(&self) -> &[(String, NodeId)] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
    }

    /// The underlying petgraph graph (read-only), for algorithms and export.
    pub fn petgraph(&self) -> &StableDiGraph<Node, u32> {
        &self.g
    }
}
