//! The reference interpreter: what every operator *means*.
//!
//! Plain, obviously-correct f32 code (sums accumulate in f64). It is slow on purpose: every
//! optimised graph, JIT kernel and GPU kernel is checked against it, and it is checked against
//! PyTorch goldens. Never make it clever. Never panic on user data: bad inputs (wrong shapes,
//! ids out of range, sequences longer than the position table) are [`InterpError`]s.

use std::collections::HashMap;

use crate::infer::broadcast_shapes;
use crate::op::{Binary, Reduce, RopeStyle, Unary};
use crate::tensor::Data;
use crate::tensor::{broadcast_strides, checked_numel, strides};
use crate::{Bindings, DType, Dim, Graph, NodeId, NodeMeta, Op, Shape, Tensor};

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpError {
    #[error("missing input `{name}` (the model takes: {expected})")]
    MissingInput { name: String, expected: String },
    #[error("unknown input `{name}` (the model takes: {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("input `{name}` must be {expected}, got {got}")]
    InputDtype {
        name: String,
        expected: DType,
        got: DType,
    },
    #[error("input `{name}` has shape {got:?}, the model expects {expected}")]
    InputShape {
        name: String,
        expected: Shape,
        got: Vec<usize>,
    },
    #[error(
        "input `{name}` axis {axis}: size {got} contradicts {sym}={bound} set by another input"
    )]
    InconsistentDim {
        name: String,
        axis: usize,
        sym: &'static str,
        bound: usize,
        got: usize,
    },
    #[error("no output named `{0}`")]
    UnknownOutput(String),
    #[error("{meta} {op}: {msg}")]
    Runtime {
        meta: NodeMeta,
        op: String,
        msg: String,
    },
}

/// Evaluates the named outputs of `graph` on `inputs`; all outputs if `wanted` is empty.
/// Only the nodes the outputs need are computed, and each value is freed after its last use.
pub fn run(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    wanted: &[&str],
) -> Result<HashMap<String, Tensor>, InterpError> {
    let expected = || {
        graph
            .inputs()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for name in inputs.keys() {
        if !graph.inputs().iter().any(|(n, _)| n == name) {
            return Err(InterpError::UnknownInput {
                name: name.clone(),
                expected: expected(),
            });
        }
    }
    let outs: Vec<(String, NodeId)> = if wanted.is_empty() {
        graph.outputs().to_vec()
    } else {
        wanted
            .iter()
            .map(|w| {
                graph
                    .output(w)
                    .map(|id| (w.to_string(), id))
                    .ok_or_else(|| InterpError::UnknownOutput(w.to_string()))
            })
            .collect::<Result<_, _>>()?
    };
    let ids: Vec<NodeId> = outs.iter().map(|&(_, id)| id).collect();
    let values = run_nodes(graph, inputs, &ids)?;
    Ok(outs.into_iter().map(|(name, _)| name).zip(values).collect())
}

/// Evaluates the nodes `wanted` (in that order) on `inputs`, computing only what they need.
pub fn run_nodes(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    wanted: &[NodeId],
) -> Result<Vec<Tensor>, InterpError> {
    // The nodes the outputs need, and how many uses each has among them (outputs count as
    // one use, so they are never freed).
    let mut reached_set = std::collections::HashSet::new();
    let mut stack: Vec<NodeId> = wanted.to_vec();
    while let Some(n) = stack.pop() {
        if reached_set.insert(n) {
            stack.extend(graph.operands(n));
        }
    }
    let reached: Vec<NodeId> = graph
        .topo_order()
        .into_iter()
        .filter(|n| reached_set.contains(n))
        .collect();
    let mut uses: HashMap<NodeId, usize> = reached.iter().map(|&n| (n, 0)).collect();
    for &n in &reached {
        for o in graph.operands(n) {
            *uses
                .get_mut(&o)
                .expect("operand of a reached node is reached") += 1;
        }
    }
    for id in wanted {
        *uses.get_mut(id).expect("output is reached") += 1;
    }

    let bindings = bind_inputs(graph, inputs, &reached)?;
    let mut values: HashMap<NodeId, Tensor> = HashMap::new();
    for &n in &reached {
        let node = graph.node(n);
        let ops = graph.operands(n);
        let args: Vec<&Tensor> = ops.iter().map(|o| &values[o]).collect();
        let v = eval(graph, &node.op, &args, &bindings, inputs).map_err(|msg| {
            InterpError::Runtime {
                meta: node.meta,
                op: node.op.to_string(),
                msg,
            }
        })?;
        values.insert(n, v);
        for o in ops {
            let u = uses.get_mut(&o).expect("operand counted");
            *u -= 1;
            if *u == 0 {
                values.remove(&o);
            }
        }
    }
    Ok(wanted.iter().map(|id| values[id].clone()).collect())
}

/// The batch and sequence sizes `inputs` give `graph`, with each given input checked against
/// its declaration (dtype, rank, fixed dims, agreeing symbols); inputs not given are skipped.
/// Cheap: reads shapes only, so sizes can be checked before anything is allocated for a run.
pub fn bindings(graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Bindings, InterpError> {
    bind_inputs(graph, inputs, &[])
}

/// Checks inputs against the graph's declared inputs and binds `B` and `N`.
fn bind_inputs(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    reached: &[NodeId],
) -> Result<Bindings, InterpError> {
    let mut b = Bindings::default();
    let expected = || {
        graph
            .inputs()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, id) in graph.inputs() {
        let Op::Input { dtype, shape, .. } = &graph.node(*id).op else {
            unreachable!("inputs are Input nodes")
        };
        let Some(t) = inputs.get(name) else {
            if reached.contains(id) {
                return Err(InterpError::MissingInput {
                    name: name.clone(),
                    expected: expected(),
                });
            }
            continue;
        };
        if t.dtype() != *dtype {
            return Err(InterpError::InputDtype {
                name: name.clone(),
                expected: *dtype,
                got: t.dtype(),
            });
        }
        if t.rank() != shape.rank() {
            return Err(InterpError::InputShape {
                name: name.clone(),
                expected: shape.clone(),
                got: t.shape().to_vec(),
            });
        }
        for (axis, (d, &n)) in shape.0.iter().zip(t.shape()).enumerate() {
            match d {
                Dim::Fixed(f) if *f != n => {
                    return Err(InterpError::InputShape {
                        name: name.clone(),
                        expected: shape.clone(),
                        got: t.shape().to_vec(),
                    })
                }
                Dim::Fixed(_) => {}
                Dim::Sym(s) => b
                    .bind(*s, n)
                    .map_err(|bound| InterpError::InconsistentDim {
                        name: name.clone(),
                        axis,
                        sym: s.name(),
                        bound,
                        got: n,
                    })?,
            }
        }
    }
    Ok(b)
}

type R<T> = Result<T, String>;

fn f32s(t: &Tensor) -> R<&[f32]> {
    t.as_f32()
        .ok_or_else(|| "expected a float operand".to_string())
}

fn out(shape: Vec<usize>, data: Vec<f32>) -> R<Tensor> {
    Tensor::f32(shape, data).map_err(|e| e.to_string())
}

fn concrete(s: &Shape, b: &Bindings) -> R<Vec<usize>> {
    let v = s
        .eval(b)
        .ok_or_else(|| format!("shape {s} has an unbound symbol"))?;
    checked_numel(&v).ok_or_else(|| format!("shape {v:?} is too large"))?;
    Ok(v)
}

/// Splits `shape` around `axis` into (outer, len, inner) element counts.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// The reference meaning of one operator (not `Input` or `Weight`) applied to `args` under
/// `b`: what a backend's generic kernels fall back to, and what its own kernels are tested
/// against. `Err` carries a message about the operands.
pub fn eval_op(op: &Op, args: &[&Tensor], b: &Bindings) -> Result<Tensor, String> {
    if matches!(op, Op::Input { .. } | Op::Weight(_)) {
        return Err(format!("{op} is a leaf, not an operator"));
    }
    eval(&Graph::new(), op, args, b, &HashMap::new())
}

fn eval(
    graph: &Graph,
    op: &Op,
    a: &[&Tensor],
    b: &Bindings,
    inputs: &HashMap<String, Tensor>,
) -> R<Tensor> {
    match op {
        Op::Input { name, .. } => inputs
            .get(name)
            .cloned()
            .ok_or_else(|| format!("input `{name}` missing")),
        Op::Weight(id) => Ok(graph.weight_data(*id).to_tensor()),
        Op::Unary(u) => out(
            a[0].shape().to_vec(),
            f32s(a[0])?.iter().map(|&x| unary(*u, x)).collect(),
        ),
        Op::Scale(c) => out(
            a[0].shape().to_vec(),
            f32s(a[0])?.iter().map(|&x| x * c.get()).collect(),
        ),
        Op::AddScalar(c) => out(
            a[0].shape().to_vec(),
            f32s(a[0])?.iter().map(|&x| x + c.get()).collect(),
        ),
        Op::Binary(k) => binary(*k, a[0], a[1]),
        Op::MatMul => matmul(a[0], a[1]),
        Op::Permute(p) => Ok(permute(a[0], p)),
        Op::Reshape(s) => {
            let shape = concrete(s, b)?;
            if checked_numel(&shape) != Some(a[0].numel()) {
                return Err(format!("cannot reshape {:?} to {shape:?}", a[0].shape()));
            }
            Tensor::new(shape, a[0].data().clone()).map_err(|e| e.to_string())
        }
        Op::Expand(s) => expand(a[0], &concrete(s, b)?),
        Op::SplitHeads { heads } => {
            let s = a[0].shape();
            let x = Tensor::new(vec![s[0], s[1], *heads, s[2] / heads], a[0].data().clone())
                .map_err(|e| e.to_string())?;
            Ok(permute(&x, &[0, 2, 1, 3]))
        }
        Op::MergeHeads => {
            let x = permute(a[0], &[0, 2, 1, 3]);
            let s = x.shape().to_vec();
            Tensor::new(vec![s[0], s[1], s[2] * s[3]], x.into_data()).map_err(|e| e.to_string())
        }
        Op::RepeatHeads { times } => {
            let s = a[0].shape();
            let x = f32s(a[0])?;
            let per_head = s[2] * s[3];
            let mut v = Vec::with_capacity(x.len() * times);
            // `max(1)`: an empty head (N = 0) must not become a zero chunk size.
            for head in x.chunks(per_head.max(1)) {
                for _ in 0..*times {
                    v.extend_from_slice(head);
                }
            }
            out(vec![s[0], s[1] * times, s[2], s[3]], v)
        }
        Op::Softmax { axis } => along(a[0], *axis, |row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            if m == f32::NEG_INFINITY {
                return vec![0.0; row.len()];
            }
            let e: Vec<f64> = row.iter().map(|&x| ((x - m) as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|&x| (x / s) as f32).collect()
        }),
        Op::Unsqueeze { axis } => {
            let mut shape = a[0].shape().to_vec();
            shape.insert(*axis, 1);
            Tensor::new(shape, a[0].data().clone()).map_err(|e| e.to_string())
        }
        Op::Squeeze { axis } => {
            let mut shape = a[0].shape().to_vec();
            shape.remove(*axis);
            Tensor::new(shape, a[0].data().clone()).map_err(|e| e.to_string())
        }
        Op::CumSum { axis } => along(a[0], *axis, |row| {
            let mut acc = 0f64;
            row.iter()
                .map(|&x| {
                    acc += x as f64;
                    acc as f32
                })
                .collect()
        }),
        Op::L2Normalize { axis, eps } => along(a[0], *axis, |row| {
            let n = row
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt()
                .max(eps.get() as f64);
            row.iter().map(|&x| (x as f64 / n) as f32).collect()
        }),
        Op::CausalMask | Op::Tril => {
            let fill = if matches!(op, Op::Tril) {
                0.0
            } else {
                f32::NEG_INFINITY
            };
            let s = a[0].shape();
            let (nq, nk) = (s[s.len() - 2], s[s.len() - 1]);
            let mut v = f32s(a[0])?.to_vec();
            for (idx, x) in v.iter_mut().enumerate() {
                let (i, j) = ((idx / nk) % nq, idx % nk);
                if j + nq > i + nk {
                    *x = fill;
                }
            }
            out(s.to_vec(), v)
        }
        Op::Cast(d) => {
            let shape = a[0].shape().to_vec();
            match (d.compute(), a[0].data()) {
                (DType::F32, Data::I64(v)) => out(shape, v.iter().map(|&x| x as f32).collect()),
                (DType::I64, Data::F32(v)) => {
                    Tensor::i64(shape, v.iter().map(|&x| x as i64).collect())
                        .map_err(|e| e.to_string())
                }
                _ => Ok(a[0].clone()),
            }
        }
        Op::PaddingMask => {
            let s = a[0].shape();
            let m = a[1].as_i64().ok_or("mask must be integer")?;
            let (mb, nk) = (a[1].shape()[0], a[1].shape()[1]);
            if nk != s[3] || (mb != s[0] && mb != 1) {
                return Err(format!("mask {:?} does not fit scores {s:?}", a[1].shape()));
            }
            let mut v = f32s(a[0])?.to_vec();
            let per_batch = s[1] * s[2] * s[3];
            for (idx, x) in v.iter_mut().enumerate() {
                let (bi, j) = (idx / per_batch, idx % nk);
                let row = if mb == 1 { 0 } else { bi };
                if m[row * nk + j] == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
            out(s.to_vec(), v)
        }
        Op::Reduce {
            kind,
            axis,
            keep_dim,
        } => {
            let s = a[0].shape();
            let (outer, len, inner) = around(s, *axis);
            let x = f32s(a[0])?;
            let mut v = vec![0f32; outer * inner];
            for o in 0..outer {
                for i in 0..inner {
                    let items = (0..len).map(|l| x[(o * len + l) * inner + i] as f64);
                    v[o * inner + i] = match kind {
                        Reduce::Sum => items.sum::<f64>() as f32,
                        Reduce::Mean => (items.sum::<f64>() / len as f64) as f32,
                        Reduce::Max => items.fold(f64::NEG_INFINITY, f64::max) as f32,
                    };
                }
            }
            let mut shape = s.to_vec();
            if *keep_dim {
                shape[*axis] = 1;
            } else {
                shape.remove(*axis);
            }
            out(shape, v)
        }
        Op::LayerNorm { eps } => {
            let (g, beta) = (f32s(a[1])?, f32s(a[2])?);
            along(a[0], a[0].rank() - 1, |row| {
                let n = row.len() as f64;
                let mean = row.iter().map(|&x| x as f64).sum::<f64>() / n;
                let var = row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv = 1.0 / (var + eps.get() as f64).sqrt();
                row.iter()
                    .enumerate()
                    .map(|(i, &x)| ((x as f64 - mean) * inv * g[i] as f64 + beta[i] as f64) as f32)
                    .collect()
            })
        }
        Op::RmsNorm { eps } => {
            let g = f32s(a[1])?;
            along(a[0], a[0].rank() - 1, |row| {
                let ms = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / row.len() as f64;
                let inv = 1.0 / (ms + eps.get() as f64).sqrt();
                row.iter()
                    .enumerate()
                    .map(|(i, &x)| (x as f64 * inv * g[i] as f64) as f32)
                    .collect()
            })
        }
        Op::Gather => {
            let (table, ids) = (f32s(a[0])?, a[1].as_i64().ok_or("ids must be integer")?);
            let (vocab, d) = (a[0].shape()[0], a[0].shape()[1]);
            let mut v = Vec::with_capacity(ids.len() * d);
            for &id in ids {
                if id < 0 || id as u64 >= vocab as u64 {
                    return Err(format!("id {id} is outside the table's {vocab} rows"));
                }
                v.extend_from_slice(&table[id as usize * d..(id as usize + 1) * d]);
            }
            let mut shape = a[1].shape().to_vec();
            shape.push(d);
            out(shape, v)
        }
        Op::Rope { theta, style } => rope(a[0], theta.get() as f64, *style, b.offset()),
        Op::ConvWindows { length, width } => conv_windows(a[0], *length, *width),
        Op::BlockOneHot { block } => along(a[0], a[0].rank() - 1, |row| block_onehot(row, *block)),
        Op::Concat { axis } => concat(a, *axis),
        Op::Slice { axis, start, end } => {
            let s = a[0].shape();
            let end = end.eval(b).ok_or("slice end is unbound")?;
            if *start > end || end > s[*axis] {
                return Err(format!("slice {start}..{end} of an axis of size {} (is the sequence longer than the model allows?)", s[*axis]));
            }
            let (outer, len, inner) = around(s, *axis);
            let _ = len;
            let mut v = Vec::new();
            match a[0].data() {
                Data::F32(x) => {
                    for o in 0..outer {
                        v.extend_from_slice(
                            &x[(o * s[*axis] + start) * inner..(o * s[*axis] + end) * inner],
                        );
                    }
                    let mut shape = s.to_vec();
                    shape[*axis] = end - start;
                    out(shape, v)
                }
                Data::I64(x) => {
                    let mut w = Vec::new();
                    for o in 0..outer {
                        w.extend_from_slice(
                            &x[(o * s[*axis] + start) * inner..(o * s[*axis] + end) * inner],
                        );
                    }
                    let mut shape = s.to_vec();
                    shape[*axis] = end - start;
                    Tensor::i64(shape, w).map_err(|e| e.to_string())
                }
            }
        }
    }
}

fn unary(u: Unary, x: f32) -> f32 {
    let y = x as f64;
    (match u {
        Unary::Neg => -y,
        Unary::Exp => y.exp(),
        Unary::Sqrt => y.sqrt(),
        Unary::Rsqrt => 1.0 / y.sqrt(),
        Unary::Recip => 1.0 / y,
        Unary::Square => y * y,
        Unary::Tanh => y.tanh(),
        Unary::Sigmoid => 1.0 / (1.0 + (-y).exp()),
        Unary::Relu => y.max(0.0),
        Unary::Elu => {
            if y > 0.0 {
                y
            } else {
                y.exp_m1()
            }
        }
        Unary::Gelu => 0.5 * y * (1.0 + libm::erf(y / std::f64::consts::SQRT_2)),
        Unary::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * y * (1.0 + (c * (y + 0.044715 * y * y * y)).tanh())
        }
        Unary::Silu => y / (1.0 + (-y).exp()),
    }) as f32
}

/// Offset of every element of `out_shape` in a tensor of `shape` broadcast to it.
fn broadcast_offsets(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    offsets_with(out_shape, &broadcast_strides(shape, out_shape.len()))
}

fn binary(k: Binary, x: &Tensor, y: &Tensor) -> R<Tensor> {
    let (xs, ys) = (Shape::fixed(x.shape()), Shape::fixed(y.shape()));
    let os = broadcast_shapes(&xs, &ys)
        .ok_or_else(|| format!("{:?} and {:?} do not broadcast", x.shape(), y.shape()))?;
    let os: Vec<usize> = os.0.iter().map(|d| d.fixed().unwrap_or(0)).collect();
    let (xv, yv) = (f32s(x)?, f32s(y)?);
    let (xo, yo) = (
        broadcast_offsets(x.shape(), &os),
        broadcast_offsets(y.shape(), &os),
    );
    let v = xo
        .iter()
        .zip(&yo)
        .map(|(&i, &j)| {
            let (p, q) = (xv[i], yv[j]);
            match k {
                Binary::Add => p + q,
                Binary::Sub => p - q,
                Binary::Mul => p * q,
                Binary::Div => p / q,
                Binary::Max => p.max(q),
            }
        })
        .collect();
    out(os, v)
}

/// Broadcasts `x` to `target` (works for both dtypes, as shape inference allows).
fn expand(x: &Tensor, target: &[usize]) -> R<Tensor> {
    let offs = broadcast_offsets(x.shape(), target);
    let data = match x.data() {
        Data::F32(v) => Data::F32(offs.iter().map(|&o| v[o]).collect()),
        Data::I64(v) => Data::I64(offs.iter().map(|&o| v[o]).collect()),
    };
    Tensor::new(target.to_vec(), data).map_err(|e| e.to_string())
}

fn matmul(x: &Tensor, y: &Tensor) -> R<Tensor> {
    let (xs, ys) = (x.shape(), y.shape());
    let (m, k) = (xs[xs.len() - 2], xs[xs.len() - 1]);
    let (k2, n) = (ys[ys.len() - 2], ys[ys.len() - 1]);
    if k != k2 {
        return Err(format!("inner dimensions differ: {xs:?} x {ys:?}"));
    }
    let bx = Shape::fixed(&xs[..xs.len() - 2]);
    let by = Shape::fixed(&ys[..ys.len() - 2]);
    let batch: Vec<usize> = broadcast_shapes(&bx, &by)
        .ok_or("batch dimensions do not broadcast")?
        .0
        .iter()
        .map(|d| d.fixed().unwrap_or(0))
        .collect();
    // Offsets of each batch's matrix, via broadcasting over matrix-sized "elements".
    let xo = broadcast_offsets(&xs[..xs.len() - 2], &batch);
    let yo = broadcast_offsets(&ys[..ys.len() - 2], &batch);
    let (xv, yv) = (f32s(x)?, f32s(y)?);
    let mut v = Vec::with_capacity(xo.len() * m * n);
    let mut acc = vec![0f64; n];
    for (&bx, &by) in xo.iter().zip(&yo) {
        let (a, b) = (
            &xv[bx * m * k..(bx + 1) * m * k],
            &yv[by * k * n..(by + 1) * k * n],
        );
        for i in 0..m {
            acc.iter_mut().for_each(|s| *s = 0.0);
            for p in 0..k {
                let aip = a[i * k + p] as f64;
                for (j, s) in acc.iter_mut().enumerate() {
                    *s += aip * b[p * n + j] as f64;
                }
            }
            v.extend(acc.iter().map(|&s| s as f32));
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    out(shape, v)
}

/// General axis permutation (works for both dtypes).
fn permute(x: &Tensor, perm: &[usize]) -> Tensor {
    let s = x.shape();
    let st = strides(s);
    let os: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let offs = offsets_with(&os, &pst);
    let data = match x.data() {
        Data::F32(v) => Data::F32(offs.iter().map(|&o| v[o]).collect()),
        Data::I64(v) => Data::I64(offs.iter().map(|&o| v[o]).collect()),
    };
    Tensor::new(os, data).expect("permutation keeps the element count")
}

/// Offsets of every index of `shape` under explicit `strides`.
fn offsets_with(shape: &[usize], st: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let mut offs = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        offs.push(idx.iter().zip(st).map(|(i, s)| i * s).sum());
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    offs
}

/// Applies `f` to every 1-D line along `axis`.
fn along(x: &Tensor, axis: usize, f: impl Fn(&[f32]) -> Vec<f32>) -> R<Tensor> {
    let s = x.shape();
    let (outer, len, inner) = around(s, axis);
    let xv = f32s(x)?;
    let mut v = vec![0f32; xv.len()];
    let mut line = vec![0f32; len];
    for o in 0..outer {
        for i in 0..inner {
            for (l, slot) in line.iter_mut().enumerate() {
                *slot = xv[(o * len + l) * inner + i];
            }
            for (l, y) in f(&line).into_iter().enumerate() {
                v[(o * len + l) * inner + i] = y;
            }
        }
    }
    out(s.to_vec(), v)
}

fn rope(x: &Tensor, theta: f64, style: RopeStyle, offset: usize) -> R<Tensor> {
    let s = x.shape();
    let (n, d) = (s[2], s[3]);
    let xv = f32s(x)?;
    let mut v = xv.to_vec();
    let half = d / 2;
    for (row_idx, row) in xv.chunks(d.max(1)).enumerate() {
        let t = (offset + row_idx % n) as f64;
        let o = &mut v[row_idx * d..(row_idx + 1) * d];
        for i in 0..half {
            let angle = t * theta.powf(-(2.0 * i as f64) / d as f64);
            let (sin, cos) = angle.sin_cos();
            let (p, q) = match style {
                RopeStyle::Half => (i, i + half),
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            };
            let (x1, x2) = (row[p] as f64, row[q] as f64);
            o[p] = (x1 * cos - x2 * sin) as f32;
            o[q] = (x2 * cos + x1 * sin) as f32;
        }
    }
    out(s.to_vec(), v)
}

fn concat(xs: &[&Tensor], axis: usize) -> R<Tensor> {
    let s0 = xs[0].shape();
    let outer: usize = s0[..axis].iter().product();
    let inner: usize = s0[axis + 1..].iter().product();
    let mut v = Vec::new();
    for o in 0..outer {
        for x in xs {
            let len = x.shape()[axis];
            v.extend_from_slice(&f32s(x)?[o * len * inner..(o + 1) * len * inner]);
        }
    }
    let mut shape = s0.to_vec();
    shape[axis] = xs.iter().map(|x| x.shape()[axis]).sum();
    out(shape, v)
}

/// `Op::ConvWindows`: `[B, N, S, C] → [B, N, S, length·width·C]`, zero outside the input.
fn conv_windows(x: &Tensor, length: usize, width: usize) -> R<Tensor> {
    let &[nb, nt, ns, nc] = x.shape() else {
        return Err(format!(
            "conv_windows needs [B, N, S, C], not {:?}",
            x.shape()
        ));
    };
    if length == 0 || width.is_multiple_of(2) {
        return Err(format!(
            "conv_windows needs length >= 1 and an odd width, not {length}, {width}"
        ));
    }
    let xs = f32s(x)?;
    let f = length * width * nc;
    let half = (width - 1) / 2;
    let mut v = vec![0f32; nb * nt * ns * f];
    for b in 0..nb {
        for t in 0..nt {
            for s in 0..ns {
                let o = ((b * nt + t) * ns + s) * f;
                for i in 0..length {
                    // Token t + i − (length − 1); skip rows before the first token.
                    let Some(tt) = (t + i).checked_sub(length - 1) else {
                        continue;
                    };
                    for j in 0..width {
                        let Some(ss) = (s + j).checked_sub(half).filter(|&ss| ss < ns) else {
                            continue;
                        };
                        let src = ((b * nt + tt) * ns + ss) * nc;
                        let dst = o + (i * width + j) * nc;
                        v[dst..dst + nc].copy_from_slice(&xs[src..src + nc]);
                    }
                }
            }
        }
    }
    out(vec![nb, nt, ns, f], v)
}

/// `Op::BlockOneHot` on one row: 1 at the first maximum of each block (NaN never wins).
fn block_onehot(row: &[f32], block: usize) -> Vec<f32> {
    let mut v = vec![0f32; row.len()];
    for (k, chunk) in row.chunks(block.max(1)).enumerate() {
        let mut best = 0;
        for (i, &x) in chunk.iter().enumerate() {
            if x > chunk[best] || chunk[best].is_nan() && !x.is_nan() {
                best = i;
            }
        }
        v[k * block + best] = 1.0;
    }
    v
}
