//! Fusion: which ir nodes become one kernel.
//!
//! Nodes are visited from the outputs backwards. An unassigned node roots a new kernel, which
//! then absorbs its producers while they are elementwise (or masks), have no other user, and
//! have the root's shape: the absorbed chain becomes one [`RowProgram`]. Reductions over the
//! last axis (LayerNorm, RMSNorm, softmax, L2-normalise) root row programs of their own kind; a
//! single-use matrix product under an elementwise chain becomes a product with that chain as
//! its epilogue; a transpose of a product's right operand is folded into the product, and so are
//! `split_heads` / `slice` copies of its operands and a `merge_heads` of its output, as strided
//! views ([`crate::views`]); the Hydra
//! attention pattern becomes one kernel ([`crate::hydra`]). What
//! fits none of these stays one ir operator for the backend's generic kernels.

use std::collections::HashMap;

use attnopt_ir::cost::node_cost;
use attnopt_ir::{Binary, Bindings, DType, Graph, NodeId, Op, Role, Unary};

use crate::epilogue::Epilogue;
use crate::kernel::{Kernel, KernelKind, ProductViews, Strided, Value, ValueId, ValueKind};
use crate::memory::{plan, MemoryPlan};
use crate::row::{BinaryOp, Expr, InputKind, Reduction, RowProgram, UnaryOp};

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

fn unary(u: Unary) -> UnaryOp {
    match u {
        Unary::Neg => UnaryOp::Neg,
        Unary::Exp => UnaryOp::Exp,
        Unary::Sqrt => UnaryOp::Sqrt,
        Unary::Rsqrt => UnaryOp::Recip, // combined with Sqrt below
        Unary::Recip => UnaryOp::Recip,
        Unary::Square => UnaryOp::Square,
        Unary::Tanh => UnaryOp::Tanh,
        Unary::Sigmoid => UnaryOp::Sigmoid,
        Unary::Relu => UnaryOp::Relu,
        Unary::Elu => UnaryOp::Elu,
        Unary::Gelu => UnaryOp::Gelu,
        Unary::GeluTanh => UnaryOp::GeluTanh,
        Unary::Silu => UnaryOp::Silu,
    }
}

fn binary(b: Binary) -> BinaryOp {
    match b {
        Binary::Add => BinaryOp::Add,
        Binary::Sub => BinaryOp::Sub,
        Binary::Mul => BinaryOp::Mul,
        Binary::Div => BinaryOp::Div,
        Binary::Max => BinaryOp::Max,
    }
}

/// Elementwise operators a row program can absorb.
fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_) | Op::Binary(_) | Op::Scale(_) | Op::AddScalar(_) | Op::PaddingMask
    )
}

fn is_causal(op: &Op) -> bool {
    matches!(op, Op::CausalMask | Op::Tril)
}

/// The keys before the first query (`Nk − Nq`) of scores `[.., Nq, Nk]`, when a row kernel's
/// per-row valid length can express its causal mask: `None` when there are more queries than
/// keys (the first queries then see no key at all, a negative offset), which stays a generic
/// operator.
fn causal_offset(shape: &[usize]) -> Option<usize> {
    let r = shape.len();
    let (nq, nk) = (*shape.get(r.checked_sub(2)?)?, *shape.get(r - 1)?);
    nk.checked_sub(nq)
}

/// How an operand of shape `s` is read by a kernel over `out` (right-aligned broadcasting).
fn input_kind(s: &[usize], out: &[usize]) -> Option<InputKind> {
    let d = *out.last()?;
    if s.last().copied().unwrap_or(1) != d {
        return None;
    }
    let lead_out = &out[..out.len() - 1];
    let mut lead: Vec<usize> = vec![1; lead_out.len().saturating_sub(s.len().saturating_sub(1))];
    lead.extend_from_slice(&s[..s.len().saturating_sub(1)]);
    if lead.len() != lead_out.len() {
        return None;
    }
    if lead == lead_out {
        return Some(InputKind::Rows);
    }
    if lead.iter().all(|&x| x == 1) {
        return Some(InputKind::Vector);
    }
    let p = lead
        .iter()
        .zip(lead_out)
        .take_while(|(a, b)| a == b)
        .count();
    if lead[p..].iter().all(|&x| x == 1) {
        return Some(InputKind::GroupVector {
            rows_per_group: lead_out[p..].iter().product(),
        });
    }
    None
}

pub(crate) struct Lowering<'g> {
    pub(crate) g: &'g Graph,
    b: Bindings,
    pub(crate) shapes: HashMap<NodeId, Vec<usize>>,
    pub(crate) users: HashMap<NodeId, usize>,
    pub(crate) assigned: HashMap<NodeId, usize>,
    values: Vec<Value>,
    value_of: HashMap<NodeId, ValueId>,
    additive_masks: HashMap<NodeId, ValueId>,
    kernels: Vec<(NodeId, Kernel)>,
}

/// A row program under construction.
struct Builder {
    inputs: Vec<(ValueId, InputKind)>,
    nodes: Vec<NodeId>,
    causal: Option<(Op, usize)>,
    /// May a single-use matrix product under the chain become the kernel's head?
    allow_matmul: bool,
    matmul: Option<NodeId>,
}

impl<'g> Lowering<'g> {
    fn shape(&self, n: NodeId) -> &[usize] {
        &self.shapes[&n]
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

    fn additive_mask(&mut self, m: NodeId) -> ValueId {
        if let Some(&v) = self.additive_masks.get(&m) {
            return v;
        }
        let src = self.value(m);
        let v = self.values.len();
        self.values.push(Value {
            shape: self.shapes[&m].clone(),
            dtype: DType::F32,
            kind: ValueKind::Temp,
            node: None,
        });
        self.additive_masks.insert(m, v);
        let meta = self.g.node(m).meta;
        let numel = self.values[v].numel() as u64;
        self.kernels.push((
            m,
            Kernel {
                kind: KernelKind::AdditiveMask,
                inputs: vec![src],
                output: v,
                nodes: vec![],
                layer: meta.layer,
                role: Role::AttnMask,
                name: "additive_mask".into(),
                flops: numel,
                bytes: numel * 12,
            },
        ));
        v
    }

    /// `x` may disappear into the kernel of its only user: not yet in a kernel, used once, and
    /// not a graph output.
    pub(crate) fn private(&self, x: NodeId) -> bool {
        !self.assigned.contains_key(&x)
            && self.users.get(&x) == Some(&1)
            && !self.g.outputs().iter().any(|&(_, o)| o == x)
    }

    /// [`Self::private`], and an `f32` value (what fused kernels compute in).
    pub(crate) fn private_f32(&self, x: NodeId) -> bool {
        self.private(x) && self.g.node(x).ty.dtype == DType::F32
    }

    fn absorbable(&self, x: NodeId, root_shape: &[usize]) -> bool {
        let node = self.g.node(x);
        self.private_f32(x)
            && self.shapes[&x] == root_shape
            && (is_elementwise(&node.op) || is_causal(&node.op))
    }

    /// The expression for operand `x` of a program over `root_shape`.
    fn operand(
        &mut self,
        x: NodeId,
        root_shape: &[usize],
        pb: &mut Builder,
        allow_causal: bool,
    ) -> Option<Expr> {
        let node = self.g.node(x);
        // Below the root only a causal mask becomes the valid length: its `-inf` entries are
        // what a softmax or padding mask leaves out, while `tril`'s zeros still count there.
        let absorbable = self.absorbable(x, root_shape)
            && (!is_causal(&node.op)
                || (allow_causal
                    && matches!(node.op, Op::CausalMask)
                    && pb.causal.is_none()
                    && causal_offset(root_shape).is_some()));
        if absorbable {
            pb.nodes.push(x);
            return self.expr_of(x, root_shape, pb, allow_causal);
        }
        // A single-use product under the chain becomes the kernel's head (epilogue form).
        if matches!(node.op, Op::MatMul)
            && pb.allow_matmul
            && pb.matmul.is_none()
            && pb.causal.is_none()
            && self.private(x)
            && self.shapes[&x] == root_shape
        {
            pb.matmul = Some(x);
            let v = self.value(x);
            pb.inputs.push((v, InputKind::Rows));
            return Some(Expr::Input(pb.inputs.len() - 1));
        }
        let kind = input_kind(&self.shapes[&x].clone(), root_shape)?;
        if node.ty.dtype != DType::F32 {
            return None;
        }
        let v = self.value(x);
        let i = match pb.inputs.iter().position(|&(w, k)| w == v && k == kind) {
            Some(i) => i,
            None => {
                pb.inputs.push((v, kind));
                pb.inputs.len() - 1
            }
        };
        Some(Expr::Input(i))
    }

    /// The expression computed by absorbed node `x`.
    fn expr_of(
        &mut self,
        x: NodeId,
        root_shape: &[usize],
        pb: &mut Builder,
        allow_causal: bool,
    ) -> Option<Expr> {
        let op = self.g.node(x).op.clone();
        let ops = self.g.operands(x);
        Some(match op {
            Op::Unary(Unary::Rsqrt) => {
                let a = self.operand(ops[0], root_shape, pb, false)?;
                Expr::rsqrt(a)
            }
            Op::Unary(u) => Expr::un(unary(u), self.operand(ops[0], root_shape, pb, false)?),
            Op::Binary(b) => {
                let a = self.operand(ops[0], root_shape, pb, false)?;
                let c = self.operand(ops[1], root_shape, pb, false)?;
                Expr::bin(binary(b), a, c)
            }
            Op::Scale(c) => Expr::bin(
                BinaryOp::Mul,
                self.operand(ops[0], root_shape, pb, false)?,
                Expr::Const(c.get()),
            ),
            Op::AddScalar(c) => Expr::bin(
                BinaryOp::Add,
                self.operand(ops[0], root_shape, pb, false)?,
                Expr::Const(c.get()),
            ),
            Op::PaddingMask => {
                let s = self.operand(ops[0], root_shape, pb, allow_causal)?;
                let m = ops[1];
                let ms = self.shapes[&m].clone();
                // mask [B, Nk] over scores [B, H, Nq, Nk]: one mask row per batch.
                let kind = if ms[0] == 1 {
                    InputKind::Vector
                } else {
                    InputKind::GroupVector {
                        rows_per_group: root_shape[1..root_shape.len() - 1].iter().product(),
                    }
                };
                let v = self.additive_mask(m);
                pb.inputs.push((v, kind));
                Expr::bin(BinaryOp::Add, s, Expr::Input(pb.inputs.len() - 1))
            }
            Op::CausalMask | Op::Tril => {
                let offset = causal_offset(root_shape)?;
                let s = self.operand(ops[0], root_shape, pb, false)?;
                pb.causal = Some((op, offset));
                s
            }
            _ => return None,
        })
    }

    /// Tries to build the row program rooted at `n`.
    fn row_program(&mut self, n: NodeId) -> Option<(RowProgram, Builder, usize, usize)> {
        let shape = self.shape(n).to_vec();
        let d = *shape.last()?;
        if d == 0 || self.g.node(n).ty.dtype != DType::F32 {
            return None;
        }
        let rows = shape.iter().product::<usize>() / d;
        let last = shape.len() - 1;
        let op = self.g.node(n).op.clone();
        let elementwise_root = is_elementwise(&op) || is_causal(&op);
        let mut pb = Builder {
            inputs: vec![],
            nodes: vec![n],
            causal: None,
            allow_matmul: elementwise_root,
            matmul: None,
        };
        let ops = self.g.operands(n);
        let inv_d = 1.0 / d as f32;
        let (reductions, output, fill, zero_if_all_masked) = match op {
            Op::LayerNorm { eps } => {
                let x = self.operand(ops[0], &shape, &mut pb, false)?;
                let g = self.operand(ops[1], &shape, &mut pb, false)?;
                let b = self.operand(ops[2], &shape, &mut pb, false)?;
                let mean = Expr::bin(BinaryOp::Mul, Expr::Reduced(0), Expr::Const(inv_d));
                let centred = Expr::bin(BinaryOp::Sub, x.clone(), mean);
                let var = Expr::bin(BinaryOp::Mul, Expr::Reduced(1), Expr::Const(inv_d));
                let inv = Expr::rsqrt(Expr::bin(BinaryOp::Add, var, Expr::Const(eps.get())));
                let out = Expr::bin(
                    BinaryOp::Add,
                    Expr::bin(
                        BinaryOp::Mul,
                        Expr::bin(BinaryOp::Mul, centred.clone(), inv),
                        g,
                    ),
                    b,
                );
                let reds = vec![
                    Reduction::sum(x),
                    Reduction::sum(Expr::un(UnaryOp::Square, centred)),
                ];
                (reds, out, 0.0, false)
            }
            Op::RmsNorm { eps } => {
                let x = self.operand(ops[0], &shape, &mut pb, false)?;
                let g = self.operand(ops[1], &shape, &mut pb, false)?;
                let ms = Expr::bin(BinaryOp::Mul, Expr::Reduced(0), Expr::Const(inv_d));
                let inv = Expr::rsqrt(Expr::bin(BinaryOp::Add, ms, Expr::Const(eps.get())));
                let out = Expr::bin(BinaryOp::Mul, Expr::bin(BinaryOp::Mul, x.clone(), inv), g);
                (
                    vec![Reduction::sum(Expr::un(UnaryOp::Square, x))],
                    out,
                    0.0,
                    false,
                )
            }
            Op::L2Normalize { axis, eps } if axis == last => {
                let x = self.operand(ops[0], &shape, &mut pb, false)?;
                let norm = Expr::bin(
                    BinaryOp::Max,
                    Expr::un(UnaryOp::Sqrt, Expr::Reduced(0)),
                    Expr::Const(eps.get()),
                );
                let out = Expr::bin(BinaryOp::Div, x.clone(), norm);
                (
                    vec![Reduction::sum(Expr::un(UnaryOp::Square, x))],
                    out,
                    0.0,
                    false,
                )
            }
            Op::Softmax { axis } if axis == last => {
                let x = self.operand(ops[0], &shape, &mut pb, true)?;
                let p = RowProgram::softmax(vec![], 0, x);
                (p.reductions, p.output, p.fill, p.zero_if_all_masked)
            }
            ref o if is_elementwise(o) || is_causal(o) => {
                pb.nodes.clear();
                let e = self.operand_root(n, &shape, &mut pb)?;
                let fill = match &pb.causal {
                    Some((Op::CausalMask, _)) => f32::NEG_INFINITY,
                    _ => 0.0,
                };
                (vec![], e, fill, false)
            }
            _ => return None,
        };
        let program = RowProgram {
            inputs: pb.inputs.iter().map(|&(_, k)| k).collect(),
            params: 0,
            reductions,
            output,
            fill,
            zero_if_all_masked,
        };
        Some((program, pb, rows, d))
    }

    /// The root itself as an absorbed elementwise node (the program's output).
    fn operand_root(&mut self, n: NodeId, shape: &[usize], pb: &mut Builder) -> Option<Expr> {
        pb.nodes.push(n);
        self.expr_of(n, shape, pb, true)
    }

    fn emit(
        &mut self,
        root: NodeId,
        kind: KernelKind,
        inputs: Vec<ValueId>,
        nodes: Vec<NodeId>,
        name: String,
    ) {
        let out = self.value(root);
        let meta = self.g.node(root).meta;
        let (mut flops, mut bytes) = (0, 0);
        for &n in &nodes {
            let c = node_cost(self.g, n, &self.b);
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
    }

    fn visit(&mut self, n: NodeId) {
        if self.assigned.contains_key(&n) {
            return;
        }
        let op = self.g.node(n).op.clone();
        if matches!(op, Op::Input { .. } | Op::Weight(_)) {
            self.value(n);
            self.assigned.insert(n, usize::MAX);
            return;
        }
        let ops = self.g.operands(n);
        match &op {
            Op::Reshape(_) | Op::Unsqueeze { .. } | Op::Squeeze { .. } => {
                let src = self.value(ops[0]);
                let v = self.value(n);
                self.values[v].kind = ValueKind::Alias(src);
                self.emit(n, KernelKind::View, vec![src], vec![n], "view".into());
                return;
            }
            Op::MatMul => {
                self.emit_matmul(n, None, None);
                return;
            }
            Op::MergeHeads => {
                if let Some(merged) = self.merged_output(n) {
                    self.emit_matmul(merged.0, None, Some((n, merged.1)));
                    return;
                }
            }
            _ => {}
        }
        if let Some(h) = self.hydra(n) {
            let name = if h.spec.causal {
                "hydra:causal"
            } else {
                "hydra"
            };
            // What the fused kernel moves, not the sum of the nodes it replaces.
            let bytes = h.spec.bytes();
            self.emit(n, KernelKind::Hydra(h.spec), h.inputs, h.nodes, name.into());
            if let Some((_, k)) = self.kernels.last_mut() {
                k.bytes = bytes;
            }
            return;
        }
        if let Some((program, pb, rows, d)) = self.row_program(n) {
            if let Some(mm) = pb.matmul {
                let at = pb
                    .inputs
                    .iter()
                    .position(|&(v, _)| Some(v) == self.value_of.get(&mm).copied())
                    .unwrap_or(0);
                if program.reductions.is_empty() && pb.causal.is_none() {
                    let inputs: Vec<ValueId> = pb.inputs.iter().map(|&(v, _)| v).collect();
                    self.emit_matmul(mm, Some((n, program, at, inputs, pb.nodes)), None);
                    return;
                }
            } else {
                let inputs = pb.inputs.iter().map(|&(v, _)| v).collect();
                let name = format!("row:{}", self.g.node(n).op.name());
                let causal = pb.causal.map(|(_, off)| off);
                self.emit(
                    n,
                    KernelKind::Row {
                        program,
                        rows,
                        d,
                        causal,
                    },
                    inputs,
                    pb.nodes,
                    name,
                );
                return;
            }
        }
        // A generic kernel for one operator.
        let inputs = ops.iter().map(|&o| self.value(o)).collect();
        let name = format!("op:{}", op.name());
        self.emit(n, KernelKind::Op(op), inputs, vec![n], name);
    }

    /// A product (with, optionally, an epilogue rooted at `epi.0`, or written in place into
    /// `merged.0 = merge_heads(mm)` through the view `merged.1`). Operands that are split heads
    /// (of a slice) of another value are read from that value in place ([`crate::views`]).
    fn emit_matmul(
        &mut self,
        mm: NodeId,
        epi: Option<(NodeId, RowProgram, usize, Vec<ValueId>, Vec<NodeId>)>,
        merged: Option<(NodeId, Strided)>,
    ) {
        let ops = self.g.operands(mm);
        let (a, mut b) = (ops[0], ops[1]);
        let mut b_transposed = false;
        let mut nodes = vec![mm];
        let mut permute_folded = false;
        if let Op::Permute(p) = &self.g.node(b).op {
            let r = p.len();
            let swap_last: Vec<usize> = (0..r.saturating_sub(2)).chain([r - 1, r - 2]).collect();
            if r >= 2 && *p == swap_last {
                if self.private(b) {
                    nodes.push(b);
                    permute_folded = true;
                }
                b = self.g.operands(b)[0];
                b_transposed = true;
            }
        }
        let sa = self.shape(a).to_vec();
        let sb = self.shape(b).to_vec();
        let out_shape = self.shape(mm).to_vec();
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let n = out_shape[out_shape.len() - 1];
        // Heads read in place: only over the `[B, H]` batch axes of attention, and for `b` only
        // when its transpose (if any) is folded here too (else the permute's kernel needs it).
        let batch = out_shape[..out_shape.len() - 2].to_vec();
        let heads_axes = |s: &[usize]| batch.len() == 2 && s.len() == 4 && s[..2] == batch[..];
        let a_view = if heads_axes(&sa) {
            self.heads_view(a, false)
        } else {
            None
        };
        let b_view = if heads_axes(&sb) && (!b_transposed || permute_folded) {
            self.heads_view(b, b_transposed)
        } else {
            None
        };
        let (mut layout_flops, mut layout_bytes) = (0, 0);
        for x in a_view.iter().chain(&b_view).flat_map(|v| &v.nodes) {
            if !nodes.contains(x) {
                let c = node_cost(self.g, *x, &self.b);
                layout_flops += c.flops;
                layout_bytes += c.bytes;
                nodes.push(*x);
            }
        }
        let views = (a_view.is_some() || b_view.is_some() || merged.is_some()).then(|| {
            Box::new(ProductViews {
                a: a_view
                    .as_ref()
                    .map_or_else(|| Strided::dense(&sa, &batch, false), |v| v.view.clone()),
                b: b_view.as_ref().map_or_else(
                    || Strided::dense(&sb, &batch, b_transposed),
                    |v| v.view.clone(),
                ),
                c: merged.as_ref().map_or_else(
                    || Strided::dense(&out_shape, &batch, false),
                    |(_, c)| c.clone(),
                ),
                batch: batch.clone(),
            })
        });
        let av = match &a_view {
            Some(v) => v.value,
            None => self.value(a),
        };
        let bv = match &b_view {
            Some(v) => v.value,
            None => self.value(b),
        };
        match (epi, merged) {
            (None, merged) => {
                let root = match merged {
                    Some((merge, _)) => {
                        let c = node_cost(self.g, merge, &self.b);
                        layout_flops += c.flops;
                        layout_bytes += c.bytes;
                        nodes.push(merge);
                        merge
                    }
                    None => mm,
                };
                self.emit(
                    root,
                    KernelKind::MatMul {
                        m,
                        k,
                        n,
                        b_transposed,
                        epilogue: None,
                        views,
                    },
                    vec![av, bv],
                    nodes,
                    "matmul".into(),
                )
            }
            (Some((root, program, at, mut extra, chain)), _) => {
                // The product is written into the root's value and transformed there in place,
                // so the epilogue's input `at` is the kernel's own output.
                extra[at] = self.value(root);
                let mut inputs = vec![av, bv];
                inputs.extend(extra);
                nodes.extend(chain);
                let epilogue = Epilogue::new(program, at);
                // Named by what it does where that has a name (`matmul+bias+gelu`), so
                // breakdowns separate the kinds.
                let name = match &epilogue.structured {
                    Some(s) => format!("matmul+{}", s.name()),
                    None => "matmul+epilogue".to_string(),
                };
                self.emit(
                    root,
                    KernelKind::MatMul {
                        m,
                        k,
                        n,
                        b_transposed,
                        epilogue: Some(epilogue),
                        views,
                    },
                    inputs,
                    nodes,
                    name,
                );
            }
        }
        // What the product moves, not the copies it replaces.
        if let Some((_, k)) = self.kernels.last_mut() {
            k.flops = k.flops.saturating_sub(layout_flops);
            k.bytes = k.bytes.saturating_sub(layout_bytes);
        }
    }
}

/// Lowers `g` at batch and sequence sizes `b`.
pub fn lower(g: &Graph, b: &Bindings) -> Result<Lowered, LowerError> {
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
    let mut l = Lowering {
        g,
        b: *b,
        shapes,
        users,
        assigned: HashMap::new(),
        values: vec![],
        value_of: HashMap::new(),
        additive_masks: HashMap::new(),
        kernels: vec![],
    };
    // Only what the outputs need, roots first.
    let mut needed = std::collections::HashSet::new();
    let mut stack: Vec<NodeId> = g.outputs().iter().map(|&(_, id)| id).collect();
    while let Some(n) = stack.pop() {
        if needed.insert(n) {
            stack.extend(g.operands(n));
        }
    }
    for &n in order.iter().rev() {
        if needed.contains(&n) {
            l.visit(n);
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
        .map(|(name, id)| (name.clone(), l.value_of[id]))
        .collect();
    let memory = plan(&l.values, &kernels, &outputs);
    Ok(Lowered {
        bindings: *b,
        values: l.values,
        kernels,
        outputs,
        memory,
    })
}
