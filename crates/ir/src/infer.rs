//! Shape and dtype inference: the static meaning of every operator.
//!
//! `Graph::add` calls [`infer`] for each new node, so a graph that exists is well-shaped.
//! Errors say which operator and which operand shapes disagree.

use crate::{DType, Dim, Op, Shape, Sym};

/// A value's static type: shape and compute dtype (`F32` or `I64`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Typed {
    pub shape: Shape,
    pub dtype: DType,
}

impl Typed {
    pub fn new(shape: Shape, dtype: DType) -> Typed {
        Typed { shape, dtype }
    }
    pub fn f32(shape: Shape) -> Typed {
        Typed {
            shape,
            dtype: DType::F32,
        }
    }
}

/// An operator applied to operands it cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {msg} (operands: {operands})")]
pub struct ShapeError {
    pub op: String,
    pub msg: String,
    pub operands: String,
}

fn err(op: &Op, ins: &[Typed], msg: impl Into<String>) -> ShapeError {
    let operands = ins
        .iter()
        .map(|t| format!("{} {}", t.shape, t.dtype))
        .collect::<Vec<_>>()
        .join(", ");
    ShapeError {
        op: op.to_string(),
        msg: msg.into(),
        operands: if operands.is_empty() {
            "none".into()
        } else {
            operands
        },
    }
}

/// Broadcasts two dims (NumPy rules; a fixed 1 stretches).
pub fn broadcast_dim(a: Dim, b: Dim) -> Option<Dim> {
    match (a, b) {
        _ if a == b => Some(a),
        (Dim::Fixed(1), _) => Some(b),
        (_, Dim::Fixed(1)) => Some(a),
        _ => None,
    }
}

/// Broadcasts two shapes, aligned on the right.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Option<Shape> {
    let r = a.rank().max(b.rank());
    let get = |s: &Shape, i: usize| {
        if i + s.rank() >= r {
            s.0[i + s.rank() - r]
        } else {
            Dim::Fixed(1)
        }
    };
    (0..r)
        .map(|i| broadcast_dim(get(a, i), get(b, i)))
        .collect::<Option<Vec<_>>>()
        .map(Shape)
}

/// Whether two shapes surely hold the same number of elements.
fn same_numel(a: &Shape, b: &Shape) -> bool {
    let split = |s: &Shape| {
        let mut fixed: u128 = 1;
        let mut syms = Vec::new();
        for d in &s.0 {
            match d {
                Dim::Fixed(n) => fixed = fixed.saturating_mul(*n as u128),
                Dim::Sym(x) => syms.push(*x),
            }
        }
        syms.sort();
        (fixed, syms)
    };
    split(a) == split(b)
}

/// The type of `op` applied to `ins`. Leaf operators (`Input`, `Weight`) are typed by the
/// graph, not here.
pub fn infer(op: &Op, ins: &[Typed]) -> Result<Typed, ShapeError> {
    if let Some(n) = op.arity() {
        if ins.len() != n {
            return Err(err(
                op,
                ins,
                format!("takes {n} operands, got {}", ins.len()),
            ));
        }
    } else if ins.is_empty() {
        return Err(err(op, ins, "needs at least one operand"));
    }
    let need_float = |i: usize| -> Result<(), ShapeError> {
        if ins[i].dtype != DType::F32 {
            return Err(err(
                op,
                ins,
                format!("operand {i} must be f32, is {}", ins[i].dtype),
            ));
        }
        Ok(())
    };
    let axis_ok = |axis: usize, rank: usize| -> Result<(), ShapeError> {
        if axis >= rank {
            return Err(err(
                op,
                ins,
                format!("axis {axis} out of range for rank {rank}"),
            ));
        }
        Ok(())
    };
    let x = ins.first().map(|t| t.shape.clone()).unwrap_or_default();
    let same = |s: Shape| Ok(Typed::f32(s));
    match op {
        Op::Input { .. } | Op::Weight(_) => {
            Err(err(op, ins, "leaf operators are typed by the graph"))
        }
        Op::Unary(_) | Op::Scale(_) | Op::AddScalar(_) => {
            need_float(0)?;
            same(x)
        }
        Op::Binary(_) => {
            need_float(0)?;
            need_float(1)?;
            match broadcast_shapes(&ins[0].shape, &ins[1].shape) {
                Some(s) => same(s),
                None => Err(err(op, ins, "shapes do not broadcast")),
            }
        }
        Op::MatMul => {
            need_float(0)?;
            need_float(1)?;
            let (a, b) = (&ins[0].shape, &ins[1].shape);
            if a.rank() < 2 || b.rank() < 2 {
                return Err(err(op, ins, "operands need rank >= 2"));
            }
            let (m, k1) = (a.0[a.rank() - 2], a.0[a.rank() - 1]);
            let (k2, n) = (b.0[b.rank() - 2], b.0[b.rank() - 1]);
            if k1 != k2 {
                return Err(err(
                    op,
                    ins,
                    format!("inner dimensions differ ({k1} vs {k2})"),
                ));
            }
            let batch = broadcast_shapes(
                &Shape(a.0[..a.rank() - 2].to_vec()),
                &Shape(b.0[..b.rank() - 2].to_vec()),
            )
            .ok_or_else(|| err(op, ins, "batch dimensions do not broadcast"))?;
            let mut out = batch.0;
            out.extend([m, n]);
            same(Shape(out))
        }
        Op::Permute(perm) => {
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank()
                || perm
                    .iter()
                    .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
            {
                return Err(err(
                    op,
                    ins,
                    format!("{perm:?} is not a permutation of rank {}", x.rank()),
                ));
            }
            Ok(Typed::new(
                Shape(perm.iter().map(|&p| x.0[p]).collect()),
                ins[0].dtype,
            ))
        }
        Op::Reshape(target) => {
            if !same_numel(&x, target) {
                return Err(err(
                    op,
                    ins,
                    format!("cannot reshape to {target}: element counts differ"),
                ));
            }
            Ok(Typed::new(target.clone(), ins[0].dtype))
        }
        Op::Expand(target) => {
            if target.rank() < x.rank() {
                return Err(err(
                    op,
                    ins,
                    format!("cannot expand to lower rank {target}"),
                ));
            }
            let off = target.rank() - x.rank();
            for (i, d) in x.0.iter().enumerate() {
                if *d != target.0[off + i] && *d != Dim::Fixed(1) {
                    return Err(err(op, ins, format!("cannot expand to {target}")));
                }
            }
            Ok(Typed::new(target.clone(), ins[0].dtype))
        }
        Op::SplitHeads { heads } => {
            need_float(0)?;
            if x.rank() != 3 {
                return Err(err(op, ins, "needs [B, N, H*Dh]"));
            }
            match x.0[2] {
                Dim::Fixed(d) if *heads > 0 && d % heads == 0 => same(Shape(vec![
                    x.0[0],
                    Dim::Fixed(*heads),
                    x.0[1],
                    Dim::Fixed(d / heads),
                ])),
                _ => Err(err(
                    op,
                    ins,
                    format!("feature dim not divisible into {heads} heads"),
                )),
            }
        }
        Op::MergeHeads => {
            need_float(0)?;
            match (
                x.rank(),
                x.0.get(1).and_then(|d| d.fixed()),
                x.0.get(3).and_then(|d| d.fixed()),
            ) {
                (4, Some(h), Some(dh)) => match h.checked_mul(dh) {
                    Some(d) => same(Shape(vec![x.0[0], x.0[2], Dim::Fixed(d)])),
                    None => Err(err(op, ins, "H·Dh overflows")),
                },
                _ => Err(err(op, ins, "needs [B, H, N, Dh] with fixed H and Dh")),
            }
        }
        Op::RepeatHeads { times } => {
            need_float(0)?;
            match (x.rank(), x.0.get(1).and_then(|d| d.fixed())) {
                (4, Some(h)) if *times > 0 => match h.checked_mul(*times) {
                    Some(d) => same(Shape(vec![x.0[0], Dim::Fixed(d), x.0[2], x.0[3]])),
                    None => Err(err(op, ins, "Hkv·times overflows")),
                },
                _ => Err(err(
                    op,
                    ins,
                    "needs [B, Hkv, N, Dh] with fixed Hkv and times > 0",
                )),
            }
        }
        Op::Unsqueeze { axis } => {
            if *axis > x.rank() {
                return Err(err(
                    op,
                    ins,
                    format!(
                        "axis {axis} out of range for inserting into rank {}",
                        x.rank()
                    ),
                ));
            }
            let mut s = x.0.clone();
            s.insert(*axis, Dim::Fixed(1));
            Ok(Typed::new(Shape(s), ins[0].dtype))
        }
        Op::Squeeze { axis } => {
            axis_ok(*axis, x.rank())?;
            if x.0[*axis] != Dim::Fixed(1) {
                return Err(err(
                    op,
                    ins,
                    format!("axis {axis} has size {}, not 1", x.0[*axis]),
                ));
            }
            let mut s = x.0.clone();
            s.remove(*axis);
            Ok(Typed::new(Shape(s), ins[0].dtype))
        }
        Op::Softmax { axis } | Op::CumSum { axis } | Op::L2Normalize { axis, .. } => {
            need_float(0)?;
            axis_ok(*axis, x.rank())?;
            same(x)
        }
        Op::Cast(d) => Ok(Typed::new(x, d.compute())),
        Op::CausalMask | Op::Tril => {
            need_float(0)?;
            if x.rank() < 2 {
                return Err(err(op, ins, "needs rank >= 2"));
            }
            same(x)
        }
        Op::PaddingMask => {
            need_float(0)?;
            let m = &ins[1].shape;
            if x.rank() != 4 || m.rank() != 2 {
                return Err(err(op, ins, "needs scores [B, H, Nq, Nk] and mask [B, Nk]"));
            }
            if ins[1].dtype != DType::I64 {
                return Err(err(op, ins, "mask must be an integer tensor"));
            }
            if broadcast_dim(x.0[0], m.0[0]) != Some(x.0[0]) || x.0[3] != m.0[1] {
                return Err(err(
                    op,
                    ins,
                    "mask does not match the scores' batch and key axes",
                ));
            }
            same(x)
        }
        Op::Reduce { axis, keep_dim, .. } => {
            need_float(0)?;
            axis_ok(*axis, x.rank())?;
            let mut s = x.0.clone();
            if *keep_dim {
                s[*axis] = Dim::Fixed(1);
            } else {
                s.remove(*axis);
            }
            same(Shape(s))
        }
        Op::LayerNorm { .. } | Op::RmsNorm { .. } => {
            for i in 0..ins.len() {
                need_float(i)?;
            }
            if x.rank() == 0 {
                return Err(err(op, ins, "needs rank >= 1"));
            }
            for p in &ins[1..] {
                if p.shape.0 != [x.last()] {
                    return Err(err(op, ins, "scale/shift must be [D] with D the last axis"));
                }
            }
            same(x)
        }
        Op::Gather => {
            need_float(0)?;
            if ins[1].dtype != DType::I64 {
                return Err(err(op, ins, "ids must be an integer tensor"));
            }
            if x.rank() != 2 {
                return Err(err(op, ins, "table must be [V, D]"));
            }
            let mut s = ins[1].shape.0.clone();
            s.push(x.0[1]);
            same(Shape(s))
        }
        Op::Rope { .. } => {
            need_float(0)?;
            match (x.rank(), x.0.get(3).and_then(|d| d.fixed())) {
                (4, Some(d)) if d % 2 == 0 => same(x),
                _ => Err(err(op, ins, "needs [B, H, N, Dh] with even, fixed Dh")),
            }
        }
        Op::Concat { axis } => {
            for i in 0..ins.len() {
                need_float(i)?;
            }
            axis_ok(*axis, x.rank())?;
            let mut total = 0usize;
            for t in ins {
                if t.shape.rank() != x.rank()
                    || (0..x.rank()).any(|i| i != *axis && t.shape.0[i] != x.0[i])
                {
                    return Err(err(op, ins, "operands differ off the concat axis"));
                }
            }
            let along: Vec<Dim> = ins.iter().map(|t| t.shape.0[*axis]).collect();
            let joined = if along == [Dim::Sym(Sym::Past), Dim::Sym(Sym::Seq)] {
                // A decoding state's rows, then the new ones: every token so far.
                Dim::Sym(Sym::Total)
            } else {
                for d in along {
                    match d {
                        Dim::Fixed(n) => {
                            total = total
                                .checked_add(n)
                                .ok_or_else(|| err(op, ins, "concatenated size overflows"))?
                        }
                        Dim::Sym(_) => {
                            return Err(err(op, ins, "cannot concat along a symbolic axis"))
                        }
                    }
                }
                Dim::Fixed(total)
            };
            let mut s = x.0.clone();
            s[*axis] = joined;
            same(Shape(s))
        }
        Op::ConvWindows { length, width } => {
            need_float(0)?;
            if *length == 0 || width.is_multiple_of(2) {
                return Err(err(
                    op,
                    ins,
                    "needs length >= 1 and an odd width (centred windows)",
                ));
            }
            let c = match (x.rank(), x.0.get(3).and_then(|d| d.fixed())) {
                (4, Some(c)) => c,
                _ => return Err(err(op, ins, "needs [B, N, S, C] with fixed C")),
            };
            let f = length
                .checked_mul(*width)
                .and_then(|w| w.checked_mul(c))
                .ok_or_else(|| err(op, ins, "window size overflows"))?;
            let mut s = x.0.clone();
            s[3] = Dim::Fixed(f);
            same(Shape(s))
        }
        Op::BlockOneHot { block } => {
            need_float(0)?;
            match (x.rank(), x.0.last().and_then(|d| d.fixed())) {
                (r, Some(f)) if r >= 1 && *block >= 1 && f.is_multiple_of(*block) => same(x),
                _ => Err(err(
                    op,
                    ins,
                    format!("needs a fixed last axis that is a multiple of block {block}"),
                )),
            }
        }
        Op::Slice { axis, start, end } => {
            axis_ok(*axis, x.rank())?;
            let len = match (*end, x.0[*axis]) {
                (Dim::Fixed(e), Dim::Fixed(n)) if *start <= e && e <= n => Dim::Fixed(e - start),
                (Dim::Fixed(_), _) => {
                    return Err(err(op, ins, format!("slice {start}..{end} out of range")))
                }
                (Dim::Sym(s), _) if *start == 0 => Dim::Sym(s),
                (Dim::Sym(_), _) => return Err(err(op, ins, "a symbolic slice must start at 0")),
            };
            let mut s = x.0.clone();
            s[*axis] = len;
            Ok(Typed::new(Shape(s), ins[0].dtype))
        }
    }
}
