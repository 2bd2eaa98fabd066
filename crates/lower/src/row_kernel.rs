//! Recognises row kernels: an elementwise chain, or a reduction over the last axis (LayerNorm
//! with its residual and bias adds, RMSNorm, scale + masks + softmax, L2-normalise) with the
//! elementwise chain below it, becomes one [`KernelKind::Row`] running a [`RowProgram`].
//!
//! A root absorbs its producers while they are elementwise (or masks), private to it
//! ([`Lowering::private`]) and of the root's shape. Causal masks become a per-row valid length
//! where there are no more queries than keys, and `tril` only as a program's root, since its
//! zeros still count in a softmax. A padding mask is read as an additive mask, made once per
//! `attention_mask` by a [`KernelKind::AdditiveMask`] kernel. An elementwise chain whose head
//! is a private matrix product is handed to `matmul.rs` as that product's epilogue.
//!
//! This module never changes what a graph computes and never absorbs a node another kernel or
//! the graph's outputs still need.

use attnopt_ir::{Binary, DType, NodeId, Op, Role, Unary};

use crate::context::Lowering;
use crate::kernel::{Kernel, KernelKind, Value, ValueId, ValueKind};
use crate::matmul::{with_epilogue, EpilogueChain};
use crate::row::{BinaryOp, Expr, InputKind, Reduction, RowProgram, UnaryOp};

/// Emits the row kernel rooted at `n` (or, for a chain headed by a product, that product with
/// the chain as its epilogue), if `n` roots one.
pub(crate) fn row_kernel(l: &mut Lowering, n: NodeId) -> bool {
    let Some((program, pb, rows, d)) = row_program(l, n) else {
        return false;
    };
    let inputs: Vec<ValueId> = pb.inputs.iter().map(|&(v, _)| v).collect();
    if let Some(mm) = pb.matmul {
        // Only a chain without reductions or a causal mask runs in place after the product.
        if !program.reductions.is_empty() || pb.causal.is_some() {
            return false;
        }
        let at = inputs
            .iter()
            .position(|&v| Some(v) == l.existing_value(mm))
            .unwrap_or(0);
        let chain = EpilogueChain {
            root: n,
            program,
            at,
            inputs,
            nodes: pb.nodes,
        };
        with_epilogue(l, mm, chain);
        return true;
    }
    let name = format!("row:{}", l.g.node(n).op.name());
    let causal = pb.causal.map(|(_, off)| off);
    l.emit(
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
    true
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
    // Ones, then the output's trailing axes: the same rows again for every leading index.
    let q = lead
        .iter()
        .rev()
        .zip(lead_out.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let ones = lead.len() - q;
    if lead[..ones].iter().all(|&x| x == 1) {
        return Some(InputKind::Cycle {
            period: lead_out[ones..].iter().product(),
        });
    }
    None
}

/// A row program under construction.
struct Builder {
    inputs: Vec<(ValueId, InputKind)>,
    nodes: Vec<NodeId>,
    causal: Option<(Op, usize)>,
    /// May a single-use matrix product under the chain become the kernel's head?
    allow_matmul: bool,
    matmul: Option<NodeId>,
    /// How deep the expression being built is nested: absorbing stops at [`MAX_DEPTH`], so a
    /// stranger's graph with a 200,000-deep elementwise chain becomes a chain of kernels, not
    /// a recursion that overflows the stack.
    depth: usize,
}

/// The deepest expression one row program absorbs (the JIT accepts up to 200).
pub const MAX_DEPTH: usize = 64;

/// The additive (0 / -inf) f32 form of the `attention_mask` `m`, computed once by an
/// [`KernelKind::AdditiveMask`] kernel.
fn additive_mask(l: &mut Lowering, m: NodeId) -> ValueId {
    if let Some(&v) = l.additive_masks.get(&m) {
        return v;
    }
    let src = l.value(m);
    let v = l.new_value(Value {
        shape: l.shapes[&m].clone(),
        dtype: DType::F32,
        kind: ValueKind::Temp,
        node: None,
    });
    l.additive_masks.insert(m, v);
    let meta = l.g.node(m).meta;
    let numel = l.values[v].numel() as u64;
    l.kernels.push((
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

/// `x` can join a program over `root_shape` as an absorbed node.
fn absorbable(l: &Lowering, x: NodeId, root_shape: &[usize]) -> bool {
    let node = l.g.node(x);
    l.private_f32(x)
        && l.shapes[&x] == root_shape
        && (is_elementwise(&node.op) || is_causal(&node.op))
}

/// The expression for operand `x` of a program over `root_shape`.
fn operand(
    l: &mut Lowering,
    x: NodeId,
    root_shape: &[usize],
    pb: &mut Builder,
    allow_causal: bool,
) -> Option<Expr> {
    let node = l.g.node(x);
    // Below the root only a causal mask becomes the valid length: its `-inf` entries are
    // what a softmax or padding mask leaves out, while `tril`'s zeros still count there.
    let absorbable = absorbable(l, x, root_shape)
        && (!is_causal(&node.op)
            || (allow_causal
                && matches!(node.op, Op::CausalMask)
                && pb.causal.is_none()
                && causal_offset(root_shape).is_some()));
    if absorbable && pb.depth < MAX_DEPTH {
        pb.nodes.push(x);
        pb.depth += 1;
        let e = expr_of(l, x, root_shape, pb, allow_causal);
        pb.depth -= 1;
        return e;
    }
    // A single-use product under the chain becomes the kernel's head (epilogue form).
    if matches!(node.op, Op::MatMul)
        && pb.allow_matmul
        && pb.matmul.is_none()
        && pb.causal.is_none()
        && l.private(x)
        && l.shapes[&x] == root_shape
        && !crate::sparse_ff::is_root(l, x)
        && !crate::factored::is_root(l, x)
    {
        pb.matmul = Some(x);
        let v = l.value(x);
        pb.inputs.push((v, InputKind::Rows));
        return Some(Expr::Input(pb.inputs.len() - 1));
    }
    let kind = input_kind(&l.shapes[&x].clone(), root_shape)?;
    if node.ty.dtype != DType::F32 {
        return None;
    }
    let v = l.value(x);
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
    l: &mut Lowering,
    x: NodeId,
    root_shape: &[usize],
    pb: &mut Builder,
    allow_causal: bool,
) -> Option<Expr> {
    let op = l.g.node(x).op.clone();
    let ops = l.g.operands(x);
    Some(match op {
        Op::Unary(Unary::Rsqrt) => {
            let a = operand(l, ops[0], root_shape, pb, false)?;
            Expr::rsqrt(a)
        }
        Op::Unary(u) => Expr::un(UnaryOp::of(u)?, operand(l, ops[0], root_shape, pb, false)?),
        Op::Binary(b) => {
            let a = operand(l, ops[0], root_shape, pb, false)?;
            let c = operand(l, ops[1], root_shape, pb, false)?;
            Expr::bin(binary(b), a, c)
        }
        Op::Scale(c) => Expr::bin(
            BinaryOp::Mul,
            operand(l, ops[0], root_shape, pb, false)?,
            Expr::Const(c.get()),
        ),
        Op::AddScalar(c) => Expr::bin(
            BinaryOp::Add,
            operand(l, ops[0], root_shape, pb, false)?,
            Expr::Const(c.get()),
        ),
        Op::PaddingMask => {
            let s = operand(l, ops[0], root_shape, pb, allow_causal)?;
            let m = ops[1];
            let ms = l.shapes[&m].clone();
            // mask [B, Nk] over scores [B, H, Nq, Nk]: one mask row per batch.
            let kind = if ms[0] == 1 {
                InputKind::Vector
            } else {
                InputKind::GroupVector {
                    rows_per_group: root_shape[1..root_shape.len() - 1].iter().product(),
                }
            };
            let v = additive_mask(l, m);
            pb.inputs.push((v, kind));
            Expr::bin(BinaryOp::Add, s, Expr::Input(pb.inputs.len() - 1))
        }
        Op::CausalMask | Op::Tril => {
            let offset = causal_offset(root_shape)?;
            let s = operand(l, ops[0], root_shape, pb, false)?;
            pb.causal = Some((op, offset));
            s
        }
        _ => return None,
    })
}

/// Tries to build the row program rooted at `n`.
fn row_program(l: &mut Lowering, n: NodeId) -> Option<(RowProgram, Builder, usize, usize)> {
    let shape = l.shape(n).to_vec();
    let d = *shape.last()?;
    if d == 0 || l.g.node(n).ty.dtype != DType::F32 {
        return None;
    }
    let rows = shape.iter().product::<usize>() / d;
    let last = shape.len() - 1;
    let op = l.g.node(n).op.clone();
    let elementwise_root = is_elementwise(&op) || is_causal(&op);
    let mut pb = Builder {
        inputs: vec![],
        nodes: vec![n],
        causal: None,
        allow_matmul: elementwise_root,
        matmul: None,
        depth: 0,
    };
    let ops = l.g.operands(n);
    let inv_d = 1.0 / d as f32;
    let (reductions, output, fill, zero_if_all_masked) = match op {
        Op::LayerNorm { eps } => {
            let x = operand(l, ops[0], &shape, &mut pb, false)?;
            let g = operand(l, ops[1], &shape, &mut pb, false)?;
            let b = operand(l, ops[2], &shape, &mut pb, false)?;
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
            let x = operand(l, ops[0], &shape, &mut pb, false)?;
            let g = operand(l, ops[1], &shape, &mut pb, false)?;
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
            let x = operand(l, ops[0], &shape, &mut pb, false)?;
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
            let x = operand(l, ops[0], &shape, &mut pb, true)?;
            let p = RowProgram::softmax(vec![], 0, x);
            (p.reductions, p.output, p.fill, p.zero_if_all_masked)
        }
        ref o if is_elementwise(o) || is_causal(o) => {
            pb.nodes.clear();
            let e = operand_root(l, n, &shape, &mut pb)?;
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
fn operand_root(l: &mut Lowering, n: NodeId, shape: &[usize], pb: &mut Builder) -> Option<Expr> {
    pb.nodes.push(n);
    expr_of(l, n, shape, pb, true)
}
