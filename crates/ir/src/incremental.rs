//! The decoding step of a causal model, derived from its graph: the same computation for `N`
//! new tokens after `P` tokens already seen, with what the new tokens need of the past carried
//! in **state** (graph inputs `past.{i}`, the updated state as outputs `present.{i}`).
//!
//! Nothing here knows an architecture. A token-mixing operator decides what it needs:
//!
//! - a product whose right operand runs over tokens (`Q·Kᵀ`, `probs·V`) needs that operand for
//!   every token so far: its key/value rows become `concat(past, new rows)` (a **cache**, along
//!   the token axis, taken before layout-only operators such as the transposing permute,
//!   repeated GQA heads or a scale, so the cache holds `kv_heads`); the scores it makes must be
//!   masked causally (`causal_mask`, `tril`: both align the new queries to the last keys);
//! - an inclusive prefix sum over tokens (causal linear and Hydra attention after exact
//!   rewriting) becomes `past + cumsum(new rows)`, its state the **sum** of every row so far:
//!   one size-1 row, whatever the position;
//! - a learned position table sliced to the sequence (`slice(table)[0..N]`) becomes a lookup at
//!   the input `position_ids` (`P..P+N`); RoPE already places token `t` at `P + t`;
//! - inputs a mixing operator reads over all keys (the padding `attention_mask`) take every
//!   token so far (`[B, T]`, `T = P + N`).
//!
//! Anything else that mixes tokens (a reduction over tokens, a product over tokens that is not
//! masked causally, a causal convolution's window) is refused with the node that does it: such
//! a model's earlier outputs would change as text is appended, or its state is not supported
//! yet. With `P = 0` and empty state the step graph computes exactly the original graph, so
//! one graph serves prefill and every step.

use std::collections::HashMap;

use crate::{DType, Dim, Graph, GraphError, NodeId, NodeMeta, Op, Reduce, Role, Shape, Sym};

/// A causal graph's decoding step.
#[derive(Debug, Clone)]
pub struct Incremental {
    /// Inputs: the original's (those read over all keys now `[B, T]`), `position_ids` where a
    /// position table is read, one `past.{i}` per state and `past_length` (`[P, 0]`); outputs:
    /// the original's for the new tokens, then one `present.{i}` per state.
    pub graph: Graph,
    pub states: Vec<State>,
}

/// One piece of state carried from step to step.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The step graph's input holding it before the step (`past.{i}`).
    pub input: String,
    /// The step graph's output holding it after the step (`present.{i}`).
    pub output: String,
    pub kind: StateKind,
    /// Its shape before the step (`P` on a cache's token axis).
    pub shape: Shape,
    /// The layer and role of the value it holds.
    pub meta: NodeMeta,
}

/// How a state grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// Every token's row so far along `axis` (a key or value cache): grows by `N` per step.
    Cache { axis: usize },
    /// The sum of every token's row so far along `axis` (kept as size 1): constant size.
    Sum { axis: usize },
}

/// Why a graph has no decoding step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IncrementalError {
    /// Token mixing that is not causal: earlier outputs would change as tokens are appended.
    #[error("not a causal model: {what} ({meta}), so its outputs for earlier tokens change as tokens are added")]
    NotCausal { what: String, meta: NodeMeta },
    /// Causal, but with a kind of state this pass does not derive.
    #[error("not supported yet: decoding through {what} ({meta})")]
    NotSupported { what: String, meta: NodeMeta },
    /// Nothing carries information between tokens: not a decoder.
    #[error("not a decoder: no operator mixes tokens causally (the graph needs an input over tokens `N` and causal attention)")]
    NoState,
    #[error("deriving the decoding step: {0}")]
    Graph(#[from] GraphError),
}

type R<T> = Result<T, IncrementalError>;

/// The decoding step of `g` (see the module documentation).
pub fn incremental(g: &Graph) -> R<Incremental> {
    let mut d = Deriver {
        g,
        out: Graph::new(),
        new: HashMap::new(),
        all: HashMap::new(),
        inputs: HashMap::new(),
        states: Vec::new(),
        presents: Vec::new(),
    };
    for n in g.topo_order() {
        if matches!(g.node(n).op, Op::Input { .. }) {
            continue; // made on first use, over new rows or over every token
        }
        let id = d.step_node(n)?;
        d.new.insert(n, id);
    }
    if d.states.is_empty() {
        return Err(IncrementalError::NoState);
    }
    let mut out = d.out;
    for (name, id) in g.outputs() {
        let Some(&nid) = d.new.get(id) else {
            continue; // an output that is an input: nothing to compute
        };
        out.set_output(name, nid)?;
    }
    for (state, id) in d.states.iter().zip(&d.presents) {
        out.set_output(&state.output, *id)?;
    }
    // Drop what the step does not need (e.g. a key's new rows seen through a permute).
    let mut graph = out.rebuild(|_| None, |_, _, _| unreachable!("nothing is replaced"))?;
    // `P` must be bound even where no state has a token axis (running sums only): RoPE reads
    // it. An input of shape `[P, 0]` carries it without data.
    graph.input(
        PAST_LENGTH,
        DType::I64,
        Shape(vec![Dim::Sym(Sym::Past), Dim::Fixed(0)]),
    )?;
    Ok(Incremental {
        graph,
        states: d.states,
    })
}

struct Deriver<'g> {
    g: &'g Graph,
    out: Graph,
    /// Each original node's value over the new tokens.
    new: HashMap<NodeId, NodeId>,
    /// Each original node's value over every token so far (only where a mixer asks).
    all: HashMap<NodeId, NodeId>,
    /// Inputs made so far, and whether over every token.
    inputs: HashMap<NodeId, (NodeId, bool)>,
    states: Vec<State>,
    presents: Vec<NodeId>,
}

fn has(shape: &Shape, s: Sym) -> bool {
    shape.0.contains(&Dim::Sym(s))
}

impl Deriver<'_> {
    fn shape(&self, old: NodeId) -> &Shape {
        &self.g.node(old).ty.shape
    }

    fn new_shape(&self, id: NodeId) -> &Shape {
        &self.out.node(id).ty.shape
    }

    fn meta(&self, old: NodeId) -> NodeMeta {
        self.g.node(old).meta
    }

    /// `old`'s value over the new tokens.
    fn new_of(&mut self, old: NodeId) -> R<NodeId> {
        if let Op::Input { .. } = self.g.node(old).op {
            return self.input(old, false);
        }
        Ok(self.new[&old])
    }

    /// Makes the original input `old`, over new tokens or over every token (`[.., T, ..]`).
    fn input(&mut self, old: NodeId, every: bool) -> R<NodeId> {
        if let Some(&(id, e)) = self.inputs.get(&old) {
            if e != every {
                return Err(IncrementalError::NotSupported {
                    what: format!(
                        "an input read both for the new tokens and for all tokens so far (`{}`)",
                        input_name(self.g, old)
                    ),
                    meta: self.meta(old),
                });
            }
            return Ok(id);
        }
        let Op::Input { name, dtype, shape } = &self.g.node(old).op else {
            unreachable!("called on inputs only")
        };
        let shape = if every {
            Shape(
                (shape.0.iter())
                    .map(|&d| {
                        if d == Dim::Sym(Sym::Seq) {
                            Dim::Sym(Sym::Total)
                        } else {
                            d
                        }
                    })
                    .collect(),
            )
        } else {
            shape.clone()
        };
        let id = self.out.input(name, *dtype, shape)?;
        self.inputs.insert(old, (id, every));
        Ok(id)
    }

    /// `old`'s value over every token so far, for a mixing operator.
    fn all_of(&mut self, old: NodeId) -> R<NodeId> {
        if let Some(&id) = self.all.get(&old) {
            return Ok(id);
        }
        let node = self.g.node(old);
        let id = if !has(&node.ty.shape, Sym::Seq) {
            self.new_of(old)?
        } else if let Op::Input { .. } = node.op {
            self.input(old, true)?
        } else if let Some(src) = self.layout_source(old) {
            // Layout-only: the same operator over every token of its operand, so the cache
            // sits before it (fewer heads, natural layout).
            let inner = self.all_of(src)?;
            let operands: Vec<NodeId> = (self.g.operands(old).into_iter())
                .map(|o| if o == src { Ok(inner) } else { self.new_of(o) })
                .collect::<R<_>>()?;
            self.out.add(node.op.clone(), &operands, node.meta)?
        } else {
            self.cache(old)?
        };
        self.all.insert(old, id);
        Ok(id)
    }

    /// For an operator that only rearranges or rescales each token's values (a permute,
    /// repeated heads, a scale, a cast) the one operand that runs over tokens.
    fn layout_source(&self, old: NodeId) -> Option<NodeId> {
        let layout = matches!(
            self.g.node(old).op,
            Op::Permute(_) | Op::RepeatHeads { .. } | Op::Scale(_) | Op::AddScalar(_) | Op::Cast(_)
        );
        let ops = self.g.operands(old);
        (layout && ops.len() == 1).then(|| ops[0])
    }

    /// A key/value cache: `concat(past, new rows)` along the token axis.
    fn cache(&mut self, old: NodeId) -> R<NodeId> {
        let shape = self.shape(old).clone();
        let meta = self.meta(old);
        let axes: Vec<usize> = (0..shape.rank())
            .filter(|&i| shape.0[i] == Dim::Sym(Sym::Seq))
            .collect();
        let [axis] = axes[..] else {
            return Err(IncrementalError::NotSupported {
                what: format!(
                    "a value with {} token axes read over all tokens",
                    axes.len()
                ),
                meta,
            });
        };
        let new = self.new_of(old)?;
        let mut past_shape = shape.clone();
        past_shape.0[axis] = Dim::Sym(Sym::Past);
        let i = self.states.len();
        let past = self
            .out
            .input(&format!("past.{i}"), DType::F32, past_shape.clone())?;
        let joined = self.out.add(Op::Concat { axis }, &[past, new], meta)?;
        self.push_state(StateKind::Cache { axis }, past_shape, meta, joined);
        Ok(joined)
    }

    fn push_state(&mut self, kind: StateKind, shape: Shape, meta: NodeMeta, present: NodeId) {
        let i = self.states.len();
        self.states.push(State {
            input: format!("past.{i}"),
            output: format!("present.{i}"),
            kind,
            shape,
            meta,
        });
        self.presents.push(present);
    }

    /// The step's node for the original operator `n`.
    fn step_node(&mut self, n: NodeId) -> R<NodeId> {
        let node = self.g.node(n);
        let meta = node.meta;
        let ops = self.g.operands(n);
        let op = node.op.clone();
        match &op {
            Op::Weight(w) => return Ok(self.out.weight(self.g.weight_data(*w).clone())),
            Op::MatMul => return self.matmul(n, ops[0], ops[1]),
            Op::PaddingMask => {
                let scores = self.new_of(ops[0])?;
                let mask = self.all_of(ops[1])?;
                return Ok(self.out.add(op, &[scores, mask], meta)?);
            }
            Op::CumSum { axis } => {
                let x = self.new_of(ops[0])?;
                if self.new_shape(x).0[*axis] == Dim::Sym(Sym::Seq) {
                    return self.running_sum(n, x, *axis);
                }
            }
            Op::Reduce { axis, .. } | Op::Softmax { axis } | Op::L2Normalize { axis, .. } => {
                let x = self.new_of(ops[0])?;
                if self.new_shape(x).0[*axis] == Dim::Sym(Sym::Seq) {
                    let what = match op {
                        Op::Reduce {
                            kind: Reduce::Mean, ..
                        } => "a mean over tokens (pooling)".to_string(),
                        _ => format!("`{}` over the token axis", op.name()),
                    };
                    return Err(IncrementalError::NotCausal { what, meta });
                }
            }
            Op::Slice {
                axis,
                start: 0,
                end,
            } if *end == Dim::Sym(Sym::Seq) => {
                let table = ops[0];
                if *axis == 0 && self.shape(table).rank() == 2 && !has(self.shape(table), Sym::Seq)
                {
                    return self.positions(table, meta);
                }
                return Err(IncrementalError::NotSupported {
                    what: "a slice to the sequence length".into(),
                    meta,
                });
            }
            Op::ConvWindows { .. } => {
                return Err(IncrementalError::NotSupported {
                    what: "a causal convolution over tokens (sparse QKV's `conv_windows`)".into(),
                    meta,
                })
            }
            _ => {}
        }
        let operands: Vec<NodeId> = ops.iter().map(|&o| self.new_of(o)).collect::<R<_>>()?;
        Ok(self.out.add(op, &operands, meta)?)
    }

    /// `a · b`: a right operand over tokens (keys or values) is read for every token so far.
    fn matmul(&mut self, n: NodeId, a: NodeId, b: NodeId) -> R<NodeId> {
        let meta = self.meta(n);
        let bs = self.shape(b).clone();
        let r = bs.rank();
        let keys_in_columns = r >= 2 && bs.0[r - 1] == Dim::Sym(Sym::Seq);
        let keys_in_rows = r >= 2 && bs.0[r - 2] == Dim::Sym(Sym::Seq);
        let na = self.new_of(a)?;
        if !(keys_in_columns || keys_in_rows) {
            let nb = self.new_of(b)?;
            return Ok(self.out.add(Op::MatMul, &[na, nb], meta)?);
        }
        if keys_in_rows {
            // `probs · V`: the left operand's columns must already be every key so far, i.e.
            // the masked scores; a product over new tokens only would be a non-causal mix.
            let ash = self.new_shape(na);
            if ash.0.last() != Some(&Dim::Sym(Sym::Total)) {
                return Err(IncrementalError::NotCausal {
                    what: "a product summing over tokens without a causal mask".into(),
                    meta,
                });
            }
        } else if !self.masked_causally(n) {
            return Err(IncrementalError::NotCausal {
                what: "attention scores that are not masked causally".into(),
                meta,
            });
        }
        let nb = self.all_of(b)?;
        Ok(self.out.add(Op::MatMul, &[na, nb], meta)?)
    }

    /// Whether every use of the scores `n` passes through a causal mask (through scales,
    /// additive constants and padding masks only).
    fn masked_causally(&self, n: NodeId) -> bool {
        let mut stack = vec![n];
        while let Some(x) = stack.pop() {
            let users = self.g.users(x);
            if users.is_empty() {
                return false; // the raw scores are an output
            }
            for u in users {
                match self.g.node(u).op {
                    Op::CausalMask | Op::Tril => {}
                    Op::Scale(_) | Op::AddScalar(_) | Op::PaddingMask | Op::Cast(_) => {
                        stack.push(u)
                    }
                    _ => return false,
                }
            }
        }
        true
    }

    /// `cumsum` over new tokens after `past` (the sum of every earlier row): `past + cumsum(x)`;
    /// the state after the step is `past + Σ x`.
    fn running_sum(&mut self, n: NodeId, x: NodeId, axis: usize) -> R<NodeId> {
        let meta = self.meta(n);
        let mut shape = self.new_shape(x).clone();
        shape.0[axis] = Dim::Fixed(1);
        let i = self.states.len();
        let past = self
            .out
            .input(&format!("past.{i}"), DType::F32, shape.clone())?;
        let sum = self.out.add(Op::CumSum { axis }, &[x], meta)?;
        let out = self
            .out
            .add(Op::Binary(crate::Binary::Add), &[sum, past], meta)?;
        let total = self.out.add(
            Op::Reduce {
                kind: Reduce::Sum,
                axis,
                keep_dim: true,
            },
            &[x],
            meta,
        )?;
        let present = self
            .out
            .add(Op::Binary(crate::Binary::Add), &[total, past], meta)?;
        self.push_state(StateKind::Sum { axis }, shape, meta, present);
        Ok(out)
    }

    /// A learned position table's rows for the new tokens: `gather(table, position_ids)`.
    fn positions(&mut self, table: NodeId, meta: NodeMeta) -> R<NodeId> {
        let t = self.new_of(table)?;
        let ids = match self.out.inputs().iter().find(|(n, _)| n == POSITION_IDS) {
            Some(&(_, id)) => id,
            None => self
                .out
                .input(POSITION_IDS, DType::I64, Shape(vec![Dim::Sym(Sym::Seq)]))?,
        };
        Ok(self.out.add(Op::Gather, &[t, ids], meta)?)
    }
}

/// The step graph's input that says how many tokens the state holds: shape `[P, 0]` (no
/// elements), so every run binds `P` (see `Op::Rope`).
pub const PAST_LENGTH: &str = "past_length";

/// The step graph's input of absolute positions (`P..P+N`) where the model reads a position
/// table (Hugging Face's `position_ids`, here one row shared by the batch).
pub const POSITION_IDS: &str = "position_ids";

fn input_name(g: &Graph, id: NodeId) -> String {
    match &g.node(id).op {
        Op::Input { name, .. } => name.clone(),
        _ => String::new(),
    }
}

impl State {
    /// Its concrete shape holding `past` tokens (a cache's token axis; a sum is constant).
    pub fn dims(&self, batch: usize, past: usize) -> Vec<usize> {
        let b = crate::Bindings::step(batch, 0, past);
        (self.shape.0.iter())
            .map(|d| d.eval(&b).unwrap_or(0))
            .collect()
    }

    /// The role of the value it holds (`k_proj`, `attn_context`, ...), for reports.
    pub fn role(&self) -> Role {
        self.meta.role
    }
}
