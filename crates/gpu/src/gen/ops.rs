//! Single ir operators that no fused kernel took, one thread per output element (or per line
//! of a reduction or prefix sum): layout copies (permute, head split/merge/repeat, slice,
//! expand, concat, conv windows, reshapes), elementwise operators with broadcasting, masks,
//! casts, reductions, prefix sums, embedding gathers, RoPE (cos/sin from a table made here in
//! f64, as the interpreter computes them) and block one-hots. Their meaning is the
//! interpreter's `eval_op`.
//!
//! Never: guess an operator's meaning; what is not here says `not supported yet`.

use attnopt_ir::{broadcast_strides, strides, Binary, Op, Reduce, RopeStyle, Unary};
use attnopt_lower::row::UnaryOp;
use attnopt_lower::Kernel;

use super::row::unary;
use super::{elem_of, Gen};
use crate::error::{GpuError, Result};
use crate::kbuild::{dot_strides, first_max_step, per_element, unravel, KernelBuilder};
use crate::kir::{BinOp, Expr, Scalar, UnOp, Var};

fn input(k: &Kernel, j: usize) -> Result<usize> {
    k.inputs
        .get(j)
        .copied()
        .ok_or_else(|| GpuError::Lower(format!("{}: missing input {j}", k.name)))
}

/// A kernel writing every output element as `value(b, params, out_index)`; parameters are the
/// kernel's inputs (`in0`, …, with their element types) then `out`.
fn elementwise(
    cx: &mut Gen,
    k: &Kernel,
    value: impl FnOnce(&mut KernelBuilder, &[usize], &[Var]) -> Result<Expr>,
) -> Result<()> {
    let out_shape = cx.shape(k.output).to_vec();
    let numel: usize = out_shape.iter().product();
    let out_elem = elem_of(cx.l.values[k.output].dtype);
    let elems: Vec<Scalar> = k
        .inputs
        .iter()
        .map(|&v| elem_of(cx.l.values[v].dtype))
        .collect();
    let mut params = vec![];
    let b = per_element(&Gen::base_name(k), cx.doc(k), numel, |b, i| {
        params = elems
            .iter()
            .enumerate()
            .map(|(j, &e)| b.param(&format!("in{j}"), e, false))
            .collect();
        let out = b.param("out", out_elem, true);
        let idx = unravel(b, Expr::Var(i), &out_shape);
        let v = value(b, &params, &idx)?;
        b.store(out, Expr::Var(i), v);
        Ok(())
    })?;
    let args = cx.inputs_then_output(k)?;
    cx.launch(b.finish(), args)
}

/// `in0` read at the output index through `strides` (a pure layout operator).
fn copy(cx: &mut Gen, k: &Kernel, strides: Vec<usize>) -> Result<()> {
    elementwise(cx, k, |_, p, idx| {
        Ok(Expr::load(p[0], dot_strides(idx, &strides, 0)))
    })
}

/// Input `j` read at the output index, broadcast (right-aligned, size-1 axes repeated).
fn broadcast(cx: &Gen, k: &Kernel, j: usize) -> Result<Vec<usize>> {
    let rank = cx.shape(k.output).len();
    Ok(broadcast_strides(cx.shape(input(k, j)?), rank))
}

/// `attention_mask` (i64, 1 keeps / 0 masks) to the additive f32 mask (0 / -inf).
pub fn additive_mask(cx: &mut Gen, k: &Kernel) -> Result<()> {
    let shape = cx.shape(input(k, 0)?).to_vec();
    elementwise(cx, k, |_, p, idx| {
        let m = Expr::load(p[0], dot_strides(idx, &strides(&shape), 0));
        Ok(Expr::select(
            Expr::bin(BinOp::Eq, m, Expr::I64(0)),
            Expr::F32(f32::NEG_INFINITY),
            Expr::F32(0.0),
        ))
    })
}

pub fn op(cx: &mut Gen, k: &Kernel, op: &Op) -> Result<()> {
    let in_shape = cx.shape(input(k, 0)?).to_vec();
    let out_shape = cx.shape(k.output).to_vec();
    let st = strides(&in_shape);
    match op {
        Op::Permute(perm) => copy(cx, k, perm.iter().map(|&p| st[p]).collect()),
        Op::SplitHeads { heads } => {
            // [B, N, H·d] → [B, H, N, d]
            let (n, w) = (in_shape[1], in_shape[2]);
            let d = w / heads.max(&1);
            copy(cx, k, vec![n * w, d, w, 1])
        }
        Op::MergeHeads => {
            // [B, H, N, d] → [B, N, H·d]: output (b, t, h·d + j) reads input (b, h, t, j).
            let (h, n, d) = (in_shape[1], in_shape[2], in_shape[3]);
            elementwise(cx, k, |b, p, idx| {
                let hh = b.let_(Scalar::I64, Expr::Var(idx[2]).div(Expr::I64(d as i64)));
                let j = b.let_(Scalar::I64, Expr::Var(idx[2]).rem(Expr::I64(d as i64)));
                let src = dot_strides(&[idx[0], hh, idx[1], j], &[h * n * d, n * d, d, 1], 0);
                Ok(Expr::load(p[0], src))
            })
        }
        Op::Reshape(_) | Op::Unsqueeze { .. } | Op::Squeeze { .. } => {
            elementwise(cx, k, |_, p, idx| {
                Ok(Expr::load(p[0], dot_strides(idx, &strides(&out_shape), 0)))
            })
        }
        Op::Slice { axis, start, .. } => {
            let axis = *axis;
            copy_offset(cx, k, st.clone(), start * st[axis])
        }
        Op::Expand(_) => {
            let s = broadcast(cx, k, 0)?;
            copy(cx, k, s)
        }
        Op::RepeatHeads { times } => {
            // [B, Hkv, N, d] → [B, Hkv·times, N, d]: head h reads head h / times.
            let times = *times as i64;
            elementwise(cx, k, |b, p, idx| {
                let h = b.let_(Scalar::I64, Expr::Var(idx[1]).div(Expr::I64(times)));
                Ok(Expr::load(
                    p[0],
                    dot_strides(&[idx[0], h, idx[2], idx[3]], &st, 0),
                ))
            })
        }
        Op::Concat { axis } => {
            let axis = *axis;
            let parts: Vec<Vec<usize>> = k.inputs.iter().map(|&v| cx.shape(v).to_vec()).collect();
            elementwise(cx, k, |b, p, idx| {
                // The last part first, then nested selects toward the first: only the chosen
                // part is read.
                let mut starts = vec![0usize];
                for s in &parts {
                    starts.push(starts.last().copied().unwrap_or(0) + s[axis]);
                }
                let mut value = Expr::F32(0.0);
                for (j, s) in parts.iter().enumerate().rev() {
                    let mut at = idx.to_vec();
                    at[axis] = b.let_(
                        Scalar::I64,
                        Expr::Var(idx[axis]).sub(Expr::I64(starts[j] as i64)),
                    );
                    let read = Expr::load(p[j], dot_strides(&at, &strides(s), 0));
                    value = if j + 1 == parts.len() {
                        read
                    } else {
                        Expr::select(
                            Expr::Var(idx[axis]).lt(Expr::I64(starts[j + 1] as i64)),
                            read,
                            value,
                        )
                    };
                }
                Ok(value)
            })
        }
        Op::ConvWindows { length, width } => {
            let (nt, ns, nc) = (in_shape[1] as i64, in_shape[2] as i64, in_shape[3] as i64);
            let (length, width) = (*length as i64, *width as i64);
            let half = (width - 1) / 2;
            elementwise(cx, k, |b, p, idx| {
                let f = Expr::Var(idx[3]);
                let i = b.let_(Scalar::I64, f.clone().div(Expr::I64(width * nc)));
                let j = b.let_(
                    Scalar::I64,
                    f.clone().div(Expr::I64(nc)).rem(Expr::I64(width)),
                );
                let c = b.let_(Scalar::I64, f.rem(Expr::I64(nc)));
                let tt = b.let_(
                    Scalar::I64,
                    Expr::Var(idx[1])
                        .add(Expr::Var(i))
                        .sub(Expr::I64(length - 1)),
                );
                let ss = b.let_(
                    Scalar::I64,
                    Expr::Var(idx[2]).add(Expr::Var(j)).sub(Expr::I64(half)),
                );
                let inside = Expr::bin(
                    BinOp::And,
                    Expr::bin(BinOp::Le, Expr::I64(0), Expr::Var(tt)),
                    Expr::bin(
                        BinOp::And,
                        Expr::bin(BinOp::Le, Expr::I64(0), Expr::Var(ss)),
                        Expr::Var(ss).lt(Expr::I64(ns)),
                    ),
                );
                let src = Expr::Var(idx[0])
                    .mul(Expr::I64(nt))
                    .add(Expr::Var(tt))
                    .mul(Expr::I64(ns))
                    .add(Expr::Var(ss))
                    .mul(Expr::I64(nc))
                    .add(Expr::Var(c));
                Ok(Expr::select(inside, Expr::load(p[0], src), Expr::F32(0.0)))
            })
        }
        Op::Unary(u) => {
            let s = broadcast(cx, k, 0)?;
            elementwise(cx, k, |b, p, idx| {
                let x = Expr::load(p[0], dot_strides(idx, &s, 0));
                Ok(match UnaryOp::of(*u) {
                    Some(op) => unary(b, op, x),
                    None => {
                        debug_assert_eq!(*u, Unary::Rsqrt);
                        Expr::F32(1.0).div(Expr::un(UnOp::Sqrt, x))
                    }
                })
            })
        }
        Op::Scale(c) | Op::AddScalar(c) => {
            let (c, mul) = (c.get(), matches!(op, Op::Scale(_)));
            elementwise(cx, k, |_, p, idx| {
                let x = Expr::load(p[0], dot_strides(idx, &st, 0));
                Ok(if mul {
                    x.mul(Expr::F32(c))
                } else {
                    x.add(Expr::F32(c))
                })
            })
        }
        Op::Binary(f) => {
            let (sa, sb) = (broadcast(cx, k, 0)?, broadcast(cx, k, 1)?);
            let f = match f {
                Binary::Add => BinOp::Add,
                Binary::Sub => BinOp::Sub,
                Binary::Mul => BinOp::Mul,
                Binary::Div => BinOp::Div,
                Binary::Max => BinOp::Max,
            };
            elementwise(cx, k, |_, p, idx| {
                Ok(Expr::bin(
                    f,
                    Expr::load(p[0], dot_strides(idx, &sa, 0)),
                    Expr::load(p[1], dot_strides(idx, &sb, 0)),
                ))
            })
        }
        Op::CausalMask | Op::Tril => {
            let fill = if matches!(op, Op::Tril) {
                0.0
            } else {
                f32::NEG_INFINITY
            };
            let r = out_shape.len();
            let (nq, nk) = (out_shape[r - 2] as i64, out_shape[r - 1] as i64);
            elementwise(cx, k, |_, p, idx| {
                let (i, j) = (Expr::Var(idx[r - 2]), Expr::Var(idx[r - 1]));
                let masked = Expr::bin(BinOp::Lt, i.add(Expr::I64(nk)), j.add(Expr::I64(nq)));
                let x = Expr::load(p[0], dot_strides(idx, &st, 0));
                Ok(Expr::select(masked, Expr::F32(fill), x))
            })
        }
        Op::PaddingMask => {
            let m = cx.shape(input(k, 1)?).to_vec();
            let (mb, nk) = (m[0], m[1] as i64);
            if out_shape.len() != 4 || m.len() != 2 || (mb != 1 && mb != out_shape[0]) {
                return Err(GpuError::NotSupported(format!(
                    "a padding mask {m:?} over scores {out_shape:?}"
                )));
            }
            elementwise(cx, k, |_, p, idx| {
                let row = if mb == 1 {
                    Expr::I64(0)
                } else {
                    Expr::Var(idx[0])
                };
                let keep = Expr::load(p[1], row.mul(Expr::I64(nk)).add(Expr::Var(idx[3])));
                let x = Expr::load(p[0], dot_strides(idx, &st, 0));
                Ok(Expr::select(
                    Expr::bin(BinOp::Eq, keep, Expr::I64(0)),
                    Expr::F32(f32::NEG_INFINITY),
                    x,
                ))
            })
        }
        Op::Cast(_) => {
            let (from, to) = (
                elem_of(cx.l.values[input(k, 0)?].dtype),
                elem_of(cx.l.values[k.output].dtype),
            );
            elementwise(cx, k, |_, p, idx| {
                let x = Expr::load(p[0], dot_strides(idx, &st, 0));
                Ok(match (from, to) {
                    (Scalar::I64, Scalar::F32) => Expr::un(UnOp::ToF32, x),
                    (Scalar::F32, Scalar::I64) => Expr::un(UnOp::ToI64, x),
                    _ => x,
                })
            })
        }
        Op::Gather => {
            let d = in_shape[1] as i64;
            elementwise(cx, k, |b, p, idx| {
                let r = out_shape.len();
                let lead = &idx[..r - 1];
                let ids_shape = &out_shape[..r - 1];
                let pos = dot_strides(lead, &strides(ids_shape), 0);
                let id = b.let_(Scalar::I64, Expr::load(p[1], pos));
                Ok(Expr::load(
                    p[0],
                    Expr::Var(id).mul(Expr::I64(d)).add(Expr::Var(idx[r - 1])),
                ))
            })
        }
        Op::Rope { theta, style } => rope(cx, k, theta.get() as f64, *style, &in_shape),
        Op::Reduce { kind, axis, .. } => lines(cx, k, &in_shape, *axis, Line::Reduce(*kind)),
        Op::CumSum { axis } => lines(cx, k, &in_shape, *axis, Line::CumSum),
        Op::Softmax { axis } => lines(cx, k, &in_shape, *axis, Line::Softmax),
        Op::L2Normalize { axis, eps } => lines(cx, k, &in_shape, *axis, Line::L2(eps.get())),
        Op::LayerNorm { eps } => lines(
            cx,
            k,
            &in_shape,
            last_axis(&in_shape),
            Line::LayerNorm(eps.get()),
        ),
        Op::RmsNorm { eps } => lines(
            cx,
            k,
            &in_shape,
            last_axis(&in_shape),
            Line::RmsNorm(eps.get()),
        ),
        Op::BlockOneHot { block } => block_onehot(cx, k, &in_shape, *block),
        other => Err(GpuError::NotSupported(format!(
            "the operator {}",
            other.name()
        ))),
    }
}

fn last_axis(shape: &[usize]) -> usize {
    shape.len().saturating_sub(1)
}

/// `in0` read through `strides` plus a constant offset (a slice).
fn copy_offset(cx: &mut Gen, k: &Kernel, strides: Vec<usize>, offset: usize) -> Result<()> {
    elementwise(cx, k, |_, p, idx| {
        Ok(Expr::load(p[0], dot_strides(idx, &strides, offset)))
    })
}

/// RoPE over `[B, H, N, d]`: pairs `(p, q)` rotated by the angle of position `P + t`.
fn rope(cx: &mut Gen, k: &Kernel, theta: f64, style: RopeStyle, shape: &[usize]) -> Result<()> {
    if shape.len() != 4 {
        return Err(GpuError::NotSupported(format!("RoPE over {shape:?}")));
    }
    let (n, d) = (shape[2], shape[3]);
    let half = d / 2;
    let offset = cx.l.bindings.offset();
    let mut table = Vec::with_capacity(n * half * 2);
    for t in 0..n {
        for i in 0..half {
            let angle = (offset + t) as f64 * theta.powf(-(2.0 * i as f64) / d as f64);
            let (s, c) = angle.sin_cos();
            table.push(c as f32);
            table.push(s as f32);
        }
    }
    let table = cx.table(table);
    let st = strides(shape);
    let out_shape = cx.shape(k.output).to_vec();
    let numel: usize = out_shape.iter().product();
    let b = per_element(&Gen::base_name(k), cx.doc(k), numel, |b, e| {
        let px = b.param("x", Scalar::F32, false);
        let pt = b.param("table", Scalar::F32, false);
        let po = b.param("out", Scalar::F32, true);
        let idx = unravel(b, Expr::Var(e), shape);
        let j = idx[3];
        let (i, first, partner) = match style {
            RopeStyle::Half => (
                Expr::Var(j).rem(Expr::I64(half.max(1) as i64)),
                Expr::Var(j).lt(Expr::I64(half as i64)),
                Expr::select(
                    Expr::Var(j).lt(Expr::I64(half as i64)),
                    Expr::Var(j).add(Expr::I64(half as i64)),
                    Expr::Var(j).sub(Expr::I64(half as i64)),
                ),
            ),
            RopeStyle::Interleaved => (
                Expr::Var(j).div(Expr::I64(2)),
                Expr::bin(BinOp::Eq, Expr::Var(j).rem(Expr::I64(2)), Expr::I64(0)),
                Expr::select(
                    Expr::bin(BinOp::Eq, Expr::Var(j).rem(Expr::I64(2)), Expr::I64(0)),
                    Expr::Var(j).add(Expr::I64(1)),
                    Expr::Var(j).sub(Expr::I64(1)),
                ),
            ),
        };
        let i = b.let_(Scalar::I64, i);
        let first = b.let_(Scalar::I64, first);
        let partner = b.let_(Scalar::I64, partner);
        let row = dot_strides(&idx[..3], &st[..3], 0);
        let row = b.let_(Scalar::I64, row);
        let x = b.let_(
            Scalar::F32,
            Expr::load(px, Expr::Var(row).add(Expr::Var(j))),
        );
        let paired = Expr::Var(j).lt(Expr::I64(2 * half as i64));
        let at = Expr::Var(idx[2])
            .mul(Expr::I64(half as i64))
            .add(Expr::Var(i))
            .mul(Expr::I64(2));
        let res = b.let_(Scalar::F32, Expr::Var(x));
        b.if_(paired, |b| {
            let c = b.let_(Scalar::F32, Expr::load(pt, at.clone()));
            let s = b.let_(Scalar::F32, Expr::load(pt, at.add(Expr::I64(1))));
            let y = Expr::load(px, Expr::Var(row).add(Expr::Var(partner)));
            let rotated = Expr::select(
                Expr::Var(first),
                Expr::Var(x)
                    .mul(Expr::Var(c))
                    .sub(y.clone().mul(Expr::Var(s))),
                Expr::Var(x).mul(Expr::Var(c)).add(y.mul(Expr::Var(s))),
            );
            b.assign(res, rotated);
            Ok(())
        })?;
        b.store(po, Expr::Var(e), Expr::Var(res));
        Ok(())
    })?;
    let args = vec![cx.slice(input(k, 0)?)?, table, cx.slice(k.output)?];
    cx.launch(b.finish(), args)
}

enum Line {
    Reduce(Reduce),
    CumSum,
    Softmax,
    L2(f32),
    /// LayerNorm (inputs `x, γ, β`) and RMSNorm (`x, γ`) along the last axis.
    LayerNorm(f32),
    RmsNorm(f32),
}

/// Operators along one axis — reductions, prefix sums, softmax and normalisations — one thread
/// per (outer, inner) line, in passes over the line like the interpreter's.
fn lines(cx: &mut Gen, k: &Kernel, shape: &[usize], axis: usize, what: Line) -> Result<()> {
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis] as i64;
    let inner: usize = shape[axis + 1..].iter().product();
    let b = per_element(&Gen::base_name(k), cx.doc(k), outer * inner, |b, e| {
        let px = b.param("x", Scalar::F32, false);
        let pg = match what {
            Line::LayerNorm(_) | Line::RmsNorm(_) => Some(b.param("gamma", Scalar::F32, false)),
            _ => None,
        };
        let pb = match what {
            Line::LayerNorm(_) => Some(b.param("beta", Scalar::F32, false)),
            _ => None,
        };
        let po = b.param("out", Scalar::F32, true);
        let o = b.let_(Scalar::I64, Expr::Var(e).div(Expr::I64(inner as i64)));
        let i = b.let_(Scalar::I64, Expr::Var(e).rem(Expr::I64(inner as i64)));
        let at = |l: Expr| {
            Expr::Var(o)
                .mul(Expr::I64(len))
                .add(l)
                .mul(Expr::I64(inner as i64))
                .add(Expr::Var(i))
        };
        let x = |l: Var| Expr::load(px, at(Expr::Var(l)));
        // A pass: `acc = f(acc, l)` over the line.
        let pass = |b: &mut KernelBuilder, init: Expr, f: &dyn Fn(Expr, Var) -> Expr| {
            let acc = b.let_(Scalar::F32, init);
            b.for_(Expr::I64(0), Expr::I64(len), Expr::I64(1), |b, l| {
                b.assign(acc, f(Expr::Var(acc), l));
                Ok(())
            })?;
            Ok::<Var, GpuError>(acc)
        };
        let write = |b: &mut KernelBuilder, f: &dyn Fn(Var) -> Expr| {
            b.for_(Expr::I64(0), Expr::I64(len), Expr::I64(1), |b, l| {
                b.store(po, at(Expr::Var(l)), f(l));
                Ok(())
            })
        };
        let n = Expr::F32(len as f32);
        match what {
            Line::Reduce(kind) => {
                let acc = match kind {
                    Reduce::Max => pass(b, Expr::F32(f32::NEG_INFINITY), &|a, l| {
                        Expr::bin(BinOp::Max, a, x(l))
                    })?,
                    _ => pass(b, Expr::F32(0.0), &|a, l| a.add(x(l)))?,
                };
                let v = match kind {
                    Reduce::Mean => Expr::Var(acc).div(n),
                    _ => Expr::Var(acc),
                };
                b.store(po, Expr::Var(e), v);
            }
            Line::CumSum => {
                let acc = b.let_(Scalar::F32, Expr::F32(0.0));
                b.for_(Expr::I64(0), Expr::I64(len), Expr::I64(1), |b, l| {
                    b.assign(acc, Expr::Var(acc).add(x(l)));
                    b.store(po, at(Expr::Var(l)), Expr::Var(acc));
                    Ok(())
                })?;
            }
            Line::Softmax => {
                let m = pass(b, Expr::F32(f32::NEG_INFINITY), &|a, l| {
                    Expr::bin(BinOp::Max, a, x(l))
                })?;
                let shifted = |l: Var| Expr::un(UnOp::Exp, x(l).sub(Expr::Var(m)));
                let s = pass(b, Expr::F32(0.0), &|a, l| a.add(shifted(l)))?;
                let dead = Expr::bin(BinOp::Eq, Expr::Var(m), Expr::F32(f32::NEG_INFINITY));
                write(b, &|l| {
                    Expr::select(dead.clone(), Expr::F32(0.0), shifted(l).div(Expr::Var(s)))
                })?;
            }
            Line::L2(eps) => {
                let ss = pass(b, Expr::F32(0.0), &|a, l| a.add(x(l).mul(x(l))))?;
                let norm = b.let_(
                    Scalar::F32,
                    Expr::bin(
                        BinOp::Max,
                        Expr::un(UnOp::Sqrt, Expr::Var(ss)),
                        Expr::F32(eps),
                    ),
                );
                write(b, &|l| x(l).div(Expr::Var(norm)))?;
            }
            Line::LayerNorm(eps) | Line::RmsNorm(eps) => {
                let layer = matches!(what, Line::LayerNorm(_));
                let mean = if layer {
                    let s = pass(b, Expr::F32(0.0), &|a, l| a.add(x(l)))?;
                    b.let_(Scalar::F32, Expr::Var(s).div(n.clone()))
                } else {
                    b.let_(Scalar::F32, Expr::F32(0.0))
                };
                let centred = |l: Var| x(l).sub(Expr::Var(mean));
                let sq = pass(b, Expr::F32(0.0), &|a, l| a.add(centred(l).mul(centred(l))))?;
                let inv = b.let_(
                    Scalar::F32,
                    Expr::F32(1.0).div(Expr::un(
                        UnOp::Sqrt,
                        Expr::Var(sq).div(n).add(Expr::F32(eps)),
                    )),
                );
                write(b, &|l| {
                    let y = centred(l)
                        .mul(Expr::Var(inv))
                        .mul(Expr::load(pg.unwrap_or(px), Expr::Var(l)));
                    match pb {
                        Some(p) => y.add(Expr::load(p, Expr::Var(l))),
                        None => y,
                    }
                })?;
            }
        }
        Ok(())
    })?;
    let args = cx.inputs_then_output(k)?;
    cx.launch(b.finish(), args)
}

/// 1 at the first maximum of each block of the last axis (a NaN never wins), 0 elsewhere: one
/// thread per block.
fn block_onehot(cx: &mut Gen, k: &Kernel, shape: &[usize], block: usize) -> Result<()> {
    let last = *shape.last().unwrap_or(&1);
    let block = block.max(1);
    let numel: usize = shape.iter().product();
    let per_row = last.div_ceil(block);
    let rows = numel / last.max(1);
    let b = per_element(&Gen::base_name(k), cx.doc(k), rows * per_row, |b, e| {
        let px = b.param("x", Scalar::F32, false);
        let po = b.param("out", Scalar::F32, true);
        let r = b.let_(Scalar::I64, Expr::Var(e).div(Expr::I64(per_row as i64)));
        let x0 = b.let_(
            Scalar::I64,
            Expr::Var(e)
                .rem(Expr::I64(per_row as i64))
                .mul(Expr::I64(block as i64)),
        );
        let end = b.let_(
            Scalar::I64,
            Expr::bin(
                BinOp::Min,
                Expr::Var(x0).add(Expr::I64(block as i64)),
                Expr::I64(last as i64),
            ),
        );
        let base = b.let_(Scalar::I64, Expr::Var(r).mul(Expr::I64(last as i64)));
        let best = b.let_(
            Scalar::F32,
            Expr::load(px, Expr::Var(base).add(Expr::Var(x0))),
        );
        let best_i = b.let_(Scalar::I64, Expr::Var(x0));
        b.for_(
            Expr::Var(x0).add(Expr::I64(1)),
            Expr::Var(end),
            Expr::I64(1),
            |b, i| {
                let v = b.let_(
                    Scalar::F32,
                    Expr::load(px, Expr::Var(base).add(Expr::Var(i))),
                );
                first_max_step(b, (best, best_i), v, Expr::Var(i));
                Ok(())
            },
        )?;
        b.for_(Expr::Var(x0), Expr::Var(end), Expr::I64(1), |b, i| {
            let one = Expr::select(
                Expr::bin(BinOp::Eq, Expr::Var(i), Expr::Var(best_i)),
                Expr::F32(1.0),
                Expr::F32(0.0),
            );
            b.store(po, Expr::Var(base).add(Expr::Var(i)), one);
            Ok(())
        })
    })?;
    let args = vec![cx.slice(input(k, 0)?)?, cx.slice(k.output)?];
    cx.launch(b.finish(), args)
}
