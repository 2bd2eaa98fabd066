//! `KernelKind::MatMul`: a product `a · b` (batched and broadcast like the interpreter), then
//! its epilogue (bias, activation, residual).
//!
//! * With a weight `b` (rank 2), the weight is prepared for the matrix-product library once per
//!   model (reordered or packed; a bf16 weight goes as bf16, without an f32 copy) and the kernel
//!   holds it.
//! * The epilogue runs inside the product where the library fuses it (oneDNN post-ops), the
//!   product has a prepared weight and dense operands, and [`Compiler::post_ops`] is on;
//!   otherwise as its JIT row program over the output right after the product (its time is the
//!   profile's `epilogue_seconds`).
//! * With strided views (attention heads read and written in place), [`strided_product`].
//!
//! Never: hand the library a slice it has not had checked (every view is cut from the
//! [`Frame`]; the library checks lengths again).

use std::sync::Arc;
use std::time::Instant;

use attnopt_ir::broadcast_strides;
use attnopt_lower::row::UnaryOp;
use attnopt_lower::{Epilogue, Kernel, Lowered, ProductViews, Structured, ValueId, ValueKind};

use super::{Compiled, Compiler};
use crate::frame::{leading, Frame};
use crate::gemv::{gemv, Rows};
use crate::jit::{Arg, RowKernel, Valid};
use crate::matmul::{
    Activation, Batch, EpilogueKind, MatMul, MatMulError, MatMut, MatRef, PreparedWeight,
};
use crate::vecops::VecOps;
use crate::views::strided_product;

/// The product's sizes: `[.., m, k] × [.., k, n]`, `b` read transposed when `b_transposed`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) b_transposed: bool,
}

/// A prepared product.
struct Product {
    ops: VecOps,
    shape: Shape,
    how: How,
    /// The right operand prepared for the library, when it is a weight.
    weight: Option<Arc<dyn PreparedWeight>>,
    /// The epilogue as a JIT pass over the output (`at`: the input that is the product).
    epilogue: Option<(RowKernel, usize)>,
}

/// How the product itself runs.
enum How {
    /// Dense operands, batched and broadcast like the interpreter.
    Dense,
    /// Through strided views of the operands.
    Strided(Box<ProductViews>),
    /// With a prepared weight and its epilogue run inside it by the library.
    Fused(Fused),
    /// One row against a rank-2 weight (batch-1 decoding): [`gemv`], reading the weight as
    /// stored, or as the bf16 copy made for bf16 precision.
    Gemv(Option<Arc<Vec<u16>>>),
}

/// An epilogue the matrix-product library runs: the values of its bias and residual.
struct Fused {
    bias: Option<ValueId>,
    activation: Option<Activation>,
    residual: Option<ValueId>,
}

/// The library's name for an activation of the lowering's structured epilogues.
fn activation(op: UnaryOp) -> Option<Activation> {
    Some(match op {
        UnaryOp::Gelu => Activation::GeluErf,
        UnaryOp::GeluTanh => Activation::GeluTanh,
        UnaryOp::Relu => Activation::Relu,
        UnaryOp::Silu => Activation::Silu,
        UnaryOp::Sigmoid => Activation::Sigmoid,
        UnaryOp::Tanh => Activation::Tanh,
        _ => return None,
    })
}

/// Decides where the epilogue runs, compiles its JIT pass if it runs after the product, and
/// prepares a weight operand (once per model).
pub(super) fn prepare(
    cx: &mut Compiler,
    l: &Lowered,
    k: &Kernel,
    shape: Shape,
    epilogue: Option<&Epilogue>,
    views: Option<&ProductViews>,
) -> Result<Box<dyn Compiled>, String> {
    let mut fused = None;
    let mut pass = None;
    let b = &l.values[k.inputs[1]];
    let one_row = views.is_none()
        && b.shape.len() == 2
        && leading(&l.values[k.output].shape) == 1
        && matches!(b.kind, ValueKind::Weight(_));
    if let Some(e) = epilogue {
        // Library-fused epilogues take dense operands only.
        if views.is_none() && !one_row {
            fused = fused_epilogue(cx, l, k, shape.k, e);
        }
        if fused.is_none() {
            let kernel = cx.jit.compile(&e.program).map_err(|e| e.to_string())?;
            pass = Some((kernel, e.at));
        }
    }
    let tw = Instant::now();
    if let (true, &ValueKind::Weight(w)) = (one_row, &l.values[k.inputs[1]].kind) {
        // bf16 precision over a weight not stored as bf16: a bf16 copy, made once.
        let copy = (cx.matmul.precision() == crate::matmul::Precision::Bf16
            && cx.weights.bf16(w).is_none())
        .then(|| super::sparse_ff::bf16_copy(cx, w));
        cx.weight_time += tw.elapsed();
        return Ok(Box::new(Product {
            ops: VecOps::detect(),
            shape,
            how: How::Gemv(copy),
            weight: None,
            epilogue: pass,
        }));
    }
    let mut weight = None;
    if let ValueKind::Weight(w) = l.values[k.inputs[1]].kind {
        let key = (w, shape.b_transposed);
        let p = match cx.prepared.get(&key) {
            Some(p) => Arc::clone(p),
            None => {
                let s = &l.values[k.inputs[1]].shape;
                let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
                let p: Arc<dyn PreparedWeight> = prepare_weight(cx, w, r, c, shape.b_transposed)
                    .map_err(|e| e.to_string())?
                    .into();
                cx.prepared.insert(key, Arc::clone(&p));
                p
            }
        };
        weight = Some(p);
    }
    cx.weight_time += tw.elapsed();
    let how = match (views, fused) {
        (Some(v), _) => How::Strided(Box::new(v.clone())),
        (None, Some(f)) => How::Fused(f),
        (None, None) => How::Dense,
    };
    Ok(Box::new(Product {
        ops: VecOps::detect(),
        shape,
        how,
        weight,
        epilogue: pass,
    }))
}

/// How the library runs `e` for this product kernel, if it fuses it: a product with a
/// prepared (rank-2 weight) right side and k > 0, and a structured epilogue whose every
/// part the library maps.
fn fused_epilogue(
    cx: &Compiler,
    l: &Lowered,
    k: &Kernel,
    kk: usize,
    e: &Epilogue,
) -> Option<Fused> {
    let s: &Structured = e.structured.as_ref()?;
    let b = &l.values[k.inputs[1]];
    if !cx.post_ops || kk == 0 || !matches!(b.kind, ValueKind::Weight(_)) || b.shape.len() != 2 {
        return None;
    }
    let act = match s.activation {
        Some(op) => Some(activation(op)?),
        None => None,
    };
    let kind = EpilogueKind {
        bias: s.bias.is_some(),
        activation: act,
        residual: s.residual.is_some(),
    };
    let value = |i: usize| k.inputs.get(2 + i).copied();
    let fused = Fused {
        bias: match s.bias {
            Some(i) => Some(value(i)?),
            None => None,
        },
        activation: act,
        residual: match s.residual {
            Some(i) => Some(value(i)?),
            None => None,
        },
    };
    cx.matmul.fuses(kind).then_some(fused)
}

/// Prepares the `r × c` weight `w` (transposed: used as `c × r`) for the matrix-product
/// library. A bf16 weight goes to the library as bf16, without an f32 copy.
fn prepare_weight(
    cx: &Compiler,
    w: attnopt_ir::WeightId,
    r: usize,
    c: usize,
    transposed: bool,
) -> Result<Box<dyn PreparedWeight>, MatMulError> {
    if let Some(bits) = cx.weights.bf16(w) {
        let view = MatRef::row_major(&bits, r, c);
        return cx
            .matmul
            .prepare_bf16(if transposed { view.t() } else { view });
    }
    let view = MatRef::row_major(cx.weights.f32(w), r, c);
    cx.matmul.prepare(if transposed { view.t() } else { view })
}

impl Compiled for Product {
    fn run(&self, f: &Frame, k: &Kernel, profile: bool) -> Result<f64, String> {
        let Shape { m, k: kk, n, .. } = self.shape;
        match &self.how {
            How::Strided(views) => {
                let a = f.f32(k.inputs[0])?;
                let b = f.f32(k.inputs[1])?;
                let c = f.dst_f32(k.output)?;
                strided_product(f.activations, a, b, c, m, kk, n, views)?;
            }
            How::Fused(fused) => self.fused(f, k, fused)?,
            How::Dense => self.dense(f, k)?,
            How::Gemv(copy) => {
                let ValueKind::Weight(w) = f.l.values[k.inputs[1]].kind else {
                    return Err("a row product needs a weight operand".into());
                };
                let x = f.f32(k.inputs[0])?;
                let stored = f.weights.bf16(w);
                let rows = match (copy, &stored) {
                    (Some(c), _) => Rows::Bf16(c),
                    (None, Some(bits)) => Rows::Bf16(bits),
                    (None, None) => Rows::F32(f.weights.f32(w)),
                };
                let y = f.dst_f32(k.output)?;
                gemv(&self.ops, x, rows, kk, n, self.shape.b_transposed, y)?;
            }
        }
        let t1 = profile.then(Instant::now);
        let Some((kernel, at)) = &self.epilogue else {
            return Ok(0.0);
        };
        let extra = &k.inputs[2..];
        let mut args = Vec::with_capacity(extra.len());
        for (j, &v) in extra.iter().enumerate() {
            args.push(if j == *at {
                Arg::Out
            } else {
                Arg::Data(f.f32(v)?)
            });
        }
        let out = f.dst_f32(k.output)?;
        kernel
            .run_rows_in_place(&args, out, n, Valid::Full, &[])
            .map_err(|e| e.to_string())?;
        Ok(t1.map_or(0.0, |t| t.elapsed().as_secs_f64()))
    }
}

impl Product {
    /// A product with a prepared weight and its epilogue run inside it by the library.
    fn fused(&self, f: &Frame, k: &Kernel, fused: &Fused) -> Result<(), String> {
        let Shape { k: kk, n, .. } = self.shape;
        let a = f.f32(k.inputs[0])?;
        if !matches!(f.l.values[k.inputs[1]].kind, ValueKind::Weight(_)) {
            return Err("a fused epilogue needs a weight operand".into());
        }
        let p = self.weight.as_ref().ok_or("weight not prepared")?;
        let rows = leading(&f.l.values[k.output].shape);
        let bias = match fused.bias {
            Some(v) => Some(f.f32(v)?),
            None => None,
        };
        let residual = match fused.residual {
            Some(v) => Some(MatRef::row_major(f.f32(v)?, rows, n)),
            None => None,
        };
        let c = f.dst_f32(k.output)?;
        let epilogue = crate::matmul::Epilogue {
            bias,
            activation: fused.activation,
            residual,
        };
        f.matmul
            .matmul_prepared_epilogue(
                MatRef::row_major(a, rows, kk),
                p.as_ref(),
                MatMut::row_major(c, rows, n),
                &epilogue,
            )
            .map_err(|e| e.to_string())
    }

    /// A product of dense operands.
    fn dense(&self, f: &Frame, k: &Kernel) -> Result<(), String> {
        let Shape {
            m,
            k: kk,
            n,
            b_transposed,
        } = self.shape;
        let a = f.f32(k.inputs[0])?;
        let (a_shape, b_shape) = (
            &f.l.values[k.inputs[0]].shape,
            &f.l.values[k.inputs[1]].shape,
        );
        let out_shape = f.l.values[k.output].shape.clone();
        let c = f.dst_f32(k.output)?;
        let mm = |e: MatMulError| e.to_string();
        // A weight (rank 2): one product over all rows of `a`.
        if let ValueKind::Weight(_) = f.l.values[k.inputs[1]].kind {
            if b_shape.len() == 2 {
                // From the output: with k = 0, `a` is empty but `c` still has its rows.
                let rows = leading(&out_shape);
                let p = self.weight.as_ref().ok_or("weight not prepared")?;
                return f
                    .matmul
                    .matmul_prepared(
                        MatRef::row_major(a, rows, kk),
                        p.as_ref(),
                        MatMut::row_major(c, rows, n),
                        false,
                    )
                    .map_err(mm);
            }
        }
        let b = f.f32(k.inputs[1])?;
        fn view_b(data: &[f32], kk: usize, n: usize, transposed: bool) -> MatRef<'_> {
            if transposed {
                MatRef::row_major(data, n, kk).t()
            } else {
                MatRef::row_major(data, kk, n)
            }
        }
        // Batch axes: broadcast like the interpreter.
        let rank = out_shape.len();
        let batch_out = &out_shape[..rank - 2];
        let count: usize = batch_out.iter().product();
        let pad = |s: &[usize]| -> Vec<usize> {
            let lead = &s[..s.len() - 2];
            let mut v = vec![1; batch_out.len() - lead.len()];
            v.extend_from_slice(lead);
            v
        };
        let (ab, bb) = (pad(a_shape), pad(b_shape));
        if ab == batch_out && bb == batch_out {
            let batch = Batch {
                count,
                a_stride: m * kk,
                b_stride: kk * n,
                c_stride: m * n,
            };
            return f
                .activations
                .batched(
                    MatRef::row_major(a, m, kk),
                    view_b(b, kk, n, b_transposed),
                    MatMut::row_major(c, m, n),
                    batch,
                    false,
                )
                .map_err(mm);
        }
        if bb.iter().all(|&x| x == 1) {
            // Shared right operand: one tall product.
            return f
                .matmul
                .matmul(
                    MatRef::row_major(a, count * m, kk),
                    view_b(b, kk, n, b_transposed),
                    MatMut::row_major(c, count * m, n),
                    false,
                )
                .map_err(mm);
        }
        // General broadcasting: one product per output batch index.
        let (sa, sb) = (
            broadcast_strides(&ab, ab.len()),
            broadcast_strides(&bb, bb.len()),
        );
        let mut idx = vec![0usize; batch_out.len()];
        for i in 0..count {
            let ia: usize = idx.iter().zip(&sa).map(|(x, s)| x * s).sum();
            let ib: usize = idx.iter().zip(&sb).map(|(x, s)| x * s).sum();
            let a_i = a
                .get(ia * m * kk..(ia + 1) * m * kk)
                .ok_or("a batch out of range")?;
            let b_i = b
                .get(ib * kk * n..(ib + 1) * kk * n)
                .ok_or("b batch out of range")?;
            let c_i = &mut c[i * m * n..(i + 1) * m * n];
            f.matmul
                .matmul(
                    MatRef::row_major(a_i, m, kk),
                    view_b(b_i, kk, n, b_transposed),
                    MatMut::row_major(c_i, m, n),
                    false,
                )
                .map_err(mm)?;
            for ax in (0..idx.len()).rev() {
                idx[ax] += 1;
                if idx[ax] < batch_out[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        Ok(())
    }
}
