//! `KernelKind::Op`: one ir operator left to generic kernels. Layout operators, embedding
//! lookups, slices, reductions, cumulative sums, interleaved RoPE, repeated heads, expand and
//! concat, conv windows and block one-hots run as native loops ([`crate::ops`]); everything else as the reference interpreter's
//! `eval_op` on copies of its operands (listed as `op:*` in profiles).

use attnopt_ir::{DType, Data, Op, Tensor};
use attnopt_lower::memory::storage_of;
use attnopt_lower::{Kernel, ValueKind};

use super::Compiled;
use crate::frame::{f32_of, Frame, Src};
use crate::ops;

/// The operator this kernel runs.
struct Generic(Op);

pub(super) fn prepare(op: &Op) -> Box<dyn Compiled> {
    Box::new(Generic(op.clone()))
}

impl Compiled for Generic {
    fn run(&self, f: &Frame, k: &Kernel, _profile: bool) -> Result<f64, String> {
        generic(f, k, &self.0)?;
        Ok(0.0)
    }
}

fn generic(f: &Frame, k: &Kernel, op: &Op) -> Result<(), String> {
    let in_shape = f.l.values[k.inputs[0]].shape.clone();
    let out_v = storage_of(&f.l.values, k.output);
    // Layout operators: native strided copies.
    if let Some((shape, perm)) = ops::as_permute(op, &in_shape) {
        match f.src(k.inputs[0])? {
            Src::F32(x) => ops::permute(x, &shape, &perm, f.dst_f32(k.output)?),
            Src::I64(x) => {
                let mut tmp = vec![0i64; x.len()];
                ops::permute(x, &shape, &perm, &mut tmp);
                f.write_i64(out_v, &tmp)?;
            }
        }
        return Ok(());
    }
    // Embedding lookups and slices: native row copies (they run every layer, and the generic
    // path would copy whole embedding tables).
    match op {
        Op::Gather => {
            let Src::I64(ids) = f.src(k.inputs[1])? else {
                return Err("ids must be integers".into());
            };
            let (rows, d) = (in_shape[0], in_shape[1]);
            // A bf16 embedding table is read as bf16: no f32 copy of the whole table.
            if let ValueKind::Weight(w) = f.l.values[storage_of(&f.l.values, k.inputs[0])].kind {
                if let Some(bits) = f.weights.bf16(w) {
                    let out = f.dst_f32(k.output)?;
                    return ops::gather_bf16(&bits, rows, d, ids, out);
                }
            }
            let table = f32_of(f.src(k.inputs[0])?)?;
            let out = f.dst_f32(k.output)?;
            return ops::gather(table, rows, d, ids, out);
        }
        Op::Slice { axis, start, .. } => {
            let out_shape = &f.l.values[k.output].shape;
            let (outer, inner) = (
                in_shape[..*axis].iter().product(),
                in_shape[axis + 1..].iter().product(),
            );
            let (len_in, len_out) = (in_shape[*axis], out_shape[*axis]);
            match f.src(k.inputs[0])? {
                Src::F32(x) => {
                    let out = f.dst_f32(k.output)?;
                    return ops::slice(x, outer, len_in, inner, *start, len_out, out);
                }
                Src::I64(_) => {} // rare: the reference path below
            }
        }
        Op::Reduce { kind, axis, .. } => {
            let x = f32_of(f.src(k.inputs[0])?)?;
            let (outer, len, inner) = ops::around(&in_shape, *axis);
            let out = f.dst_f32(k.output)?;
            return ops::reduce(*kind, x, outer, len, inner, out);
        }
        Op::CumSum { axis } => {
            let x = f32_of(f.src(k.inputs[0])?)?;
            let (outer, len, inner) = ops::around(&in_shape, *axis);
            let out = f.dst_f32(k.output)?;
            return ops::cumsum(x, outer, len, inner, out);
        }
        Op::Rope { theta, style } => {
            let x = f32_of(f.src(k.inputs[0])?)?;
            let out = f.dst_f32(k.output)?;
            let offset = f.l.bindings.offset();
            return ops::rope(x, &in_shape, theta.get() as f64, *style, offset, out);
        }
        Op::ConvWindows { length, width } => {
            let x = f32_of(f.src(k.inputs[0])?)?;
            let out = f.dst_f32(k.output)?;
            return ops::conv_windows(x, &in_shape, *length, *width, out);
        }
        Op::BlockOneHot { block } => {
            let x = f32_of(f.src(k.inputs[0])?)?;
            let out = f.dst_f32(k.output)?;
            return ops::block_onehot(x, *block, out);
        }
        Op::RepeatHeads { times } => {
            let x = f32_of(f.src(k.inputs[0])?)?;
            let out = f.dst_f32(k.output)?;
            return ops::repeat_heads(x, &in_shape, *times, out);
        }
        Op::Expand(_) | Op::Concat { .. }
            if k.inputs.iter().all(|&v| f.l.values[v].dtype == DType::F32) =>
        {
            let out_shape = f.l.values[k.output].shape.clone();
            let mut parts = Vec::with_capacity(k.inputs.len());
            for &v in &k.inputs {
                parts.push((f32_of(f.src(v)?)?, f.l.values[v].shape.clone()));
            }
            let out = f.dst_f32(k.output)?;
            return match op {
                Op::Concat { axis } => ops::concat(&parts, *axis, &out_shape, out),
                _ => ops::expand(parts[0].0, &parts[0].1, &out_shape, out),
            };
        }
        _ => {}
    }
    // Everything else: the reference meaning.
    let mut args = Vec::with_capacity(k.inputs.len());
    for &v in &k.inputs {
        let shape = f.l.values[v].shape.clone();
        let t = match f.src(v)? {
            Src::F32(x) => Tensor::f32(shape, x.to_vec()),
            Src::I64(x) => Tensor::i64(shape, x.to_vec()),
        }
        .map_err(|e| e.to_string())?;
        args.push(t);
    }
    let refs: Vec<&Tensor> = args.iter().collect();
    let t = ops::reference(op, &refs, &f.l.bindings)?;
    if t.shape() != f.l.values[k.output].shape {
        return Err(format!(
            "computed shape {:?}, planned {:?}",
            t.shape(),
            f.l.values[k.output].shape
        ));
    }
    match t.data() {
        Data::F32(x) => f.dst_f32(k.output)?.copy_from_slice(x),
        Data::I64(x) => f.write_i64(out_v, x)?,
    }
    Ok(())
}
