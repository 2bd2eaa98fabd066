//! Generic kernels for operators that are neither matrix products nor row programs.
//!
//! Layout operators (permute, head split/merge, repeat) are native strided copies: they run
//! every layer. The rest (gather, cumsum, rope, concat, reductions over inner axes, ...) fall
//! back to the reference interpreter's `eval_op`, which is correct by definition and slow; the
//! per-kernel breakdown lists them as `op:NAME` so the slow ones are visible.

use attnopt_ir::{broadcast_strides, interp, strides, Bindings, Op, Tensor};

/// `dst` = `src` (of `shape`) with axes reordered: output axis `i` is input axis `perm[i]`.
/// The innermost output axis is copied in runs when it is also innermost in the input.
pub fn permute<T: Copy>(src: &[T], shape: &[usize], perm: &[usize], dst: &mut [T]) {
    let r = shape.len();
    let st = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let n: usize = out_shape.iter().product();
    if n == 0 {
        return;
    }
    let inner = out_shape[r - 1];
    let contiguous = pst[r - 1] == 1;
    let mut idx = vec![0usize; r];
    let mut o = 0;
    while o < n {
        let base: usize = idx[..r - 1]
            .iter()
            .zip(&pst[..r - 1])
            .map(|(i, s)| i * s)
            .sum();
        if contiguous {
            dst[o..o + inner].copy_from_slice(&src[base..base + inner]);
        } else {
            for (j, d) in dst[o..o + inner].iter_mut().enumerate() {
                *d = src[base + j * pst[r - 1]];
            }
        }
        o += inner;
        for ax in (0..r - 1).rev() {
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

/// The permutation and reshape an operator amounts to, if it is pure layout:
/// `(input shape as permuted, perm)`.
pub fn as_permute(op: &Op, in_shape: &[usize]) -> Option<(Vec<usize>, Vec<usize>)> {
    match op {
        Op::Permute(p) => Some((in_shape.to_vec(), p.clone())),
        Op::SplitHeads { heads } => {
            let (b, n, d) = (in_shape[0], in_shape[1], in_shape[2]);
            Some((vec![b, n, *heads, d / heads], vec![0, 2, 1, 3]))
        }
        Op::MergeHeads => Some((in_shape.to_vec(), vec![0, 2, 1, 3])),
        _ => None,
    }
}

/// `out` = rows `ids` of `table` (`rows × d`); an id outside the table is an error.
pub fn gather(
    table: &[f32],
    rows: usize,
    d: usize,
    ids: &[i64],
    out: &mut [f32],
) -> Result<(), String> {
    gather_with(table, rows, d, ids, out, |row, o| o.copy_from_slice(row))
}

/// [`gather`] from a table stored as bfloat16 bits (a bf16 checkpoint's embedding), widening
/// only the rows looked up.
pub fn gather_bf16(
    table: &[u16],
    rows: usize,
    d: usize,
    ids: &[i64],
    out: &mut [f32],
) -> Result<(), String> {
    gather_with(table, rows, d, ids, out, |row, o| {
        for (o, &b) in o.iter_mut().zip(row) {
            *o = crate::matmul::bf16::to_f32(b);
        }
    })
}

fn gather_with<T>(
    table: &[T],
    rows: usize,
    d: usize,
    ids: &[i64],
    out: &mut [f32],
    copy: impl Fn(&[T], &mut [f32]),
) -> Result<(), String> {
    if table.len() != rows * d || out.len() != ids.len() * d {
        return Err(format!(
            "gather: table {} / output {} elements do not fit {rows}×{d} and {} ids",
            table.len(),
            out.len(),
            ids.len()
        ));
    }
    for (o, &id) in out.chunks_exact_mut(d.max(1)).zip(ids) {
        if id < 0 || id as u64 >= rows as u64 {
            return Err(format!("id {id} is outside the table's {rows} rows"));
        }
        let r = id as usize * d;
        copy(&table[r..r + d], o);
    }
    Ok(())
}

/// `out` = `x[.., start..start+len_out, ..]` for `x` seen as `outer × len_in × inner`.
pub fn slice(
    x: &[f32],
    outer: usize,
    len_in: usize,
    inner: usize,
    start: usize,
    len_out: usize,
    out: &mut [f32],
) -> Result<(), String> {
    if start + len_out > len_in {
        return Err(format!("slice {start}..{} of an axis of size {len_in} (is the sequence longer than the model allows?)", start + len_out));
    }
    if x.len() != outer * len_in * inner || out.len() != outer * len_out * inner {
        return Err("slice: operand sizes do not fit".into());
    }
    let run = len_out * inner;
    for o in 0..outer {
        let from = (o * len_in + start) * inner;
        out[o * run..(o + 1) * run].copy_from_slice(&x[from..from + run]);
    }
    Ok(())
}

/// Falls back to the reference meaning of `op`.
pub fn reference(op: &Op, args: &[&Tensor], b: &Bindings) -> Result<Tensor, String> {
    interp::eval_op(op, args, b)
}

/// Splits `shape` around `axis` into (outer, len, inner) element counts.
pub fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got} elements where {want} were planned"))
    }
}

/// Sum, max or mean over the middle axis of `x` seen as `outer × len × inner` (f64 sums).
pub fn reduce(
    kind: attnopt_ir::Reduce,
    x: &[f32],
    outer: usize,
    len: usize,
    inner: usize,
    out: &mut [f32],
) -> Result<(), String> {
    check_len("reduce input", x.len(), outer * len * inner)?;
    check_len("reduce output", out.len(), outer * inner)?;
    for o in 0..outer {
        let dst = &mut out[o * inner..(o + 1) * inner];
        match kind {
            attnopt_ir::Reduce::Max => {
                dst.fill(f32::NEG_INFINITY);
                for l in 0..len {
                    let row = &x[(o * len + l) * inner..(o * len + l + 1) * inner];
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d = d.max(v);
                    }
                }
            }
            _ => {
                let mut acc = vec![0f64; inner];
                for l in 0..len {
                    let row = &x[(o * len + l) * inner..(o * len + l + 1) * inner];
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v as f64;
                    }
                }
                let scale = if kind == attnopt_ir::Reduce::Mean {
                    1.0 / len.max(1) as f64
                } else {
                    1.0
                };
                for (d, a) in dst.iter_mut().zip(acc) {
                    *d = (a * scale) as f32;
                }
            }
        }
    }
    Ok(())
}

/// Inclusive prefix sum over the middle axis (f64 running sums, like the interpreter).
pub fn cumsum(
    x: &[f32],
    outer: usize,
    len: usize,
    inner: usize,
    out: &mut [f32],
) -> Result<(), String> {
    check_len("cumsum input", x.len(), outer * len * inner)?;
    check_len("cumsum output", out.len(), x.len())?;
    let mut acc = vec![0f64; inner];
    for o in 0..outer {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for l in 0..len {
            let at = (o * len + l) * inner;
            for (i, a) in acc.iter_mut().enumerate() {
                *a += x[at + i] as f64;
                out[at + i] = *a as f32;
            }
        }
    }
    Ok(())
}

/// Rotary embedding on `[B, H, N, Dh]`: position of row `t` is `offset + t` (see `Op::Rope`).
pub fn rope(
    x: &[f32],
    shape: &[usize],
    theta: f64,
    style: attnopt_ir::RopeStyle,
    offset: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let (n, d) = (shape[2], shape[3]);
    check_len("rope", x.len(), shape.iter().product())?;
    check_len("rope output", out.len(), x.len())?;
    let half = d / 2;
    // One table of (cos, sin) per position and pair, shared by every head.
    let mut table = Vec::with_capacity(n * half);
    for t in offset..offset + n {
        for i in 0..half {
            let (s, c) = (t as f64 * theta.powf(-(2.0 * i as f64) / d as f64)).sin_cos();
            table.push((c, s));
        }
    }
    for (r, (row, o)) in x
        .chunks_exact(d.max(1))
        .zip(out.chunks_exact_mut(d.max(1)))
        .enumerate()
    {
        let t = r % n.max(1);
        for i in 0..half {
            let (c, s) = table[t * half + i];
            let (p, q) = match style {
                attnopt_ir::RopeStyle::Half => (i, i + half),
                attnopt_ir::RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            };
            let (x1, x2) = (row[p] as f64, row[q] as f64);
            o[p] = (x1 * c - x2 * s) as f32;
            o[q] = (x2 * c + x1 * s) as f32;
        }
    }
    Ok(())
}

/// Grouped-query attention: each head of `[B, Hkv, N, Dh]` repeated `times` times in place.
pub fn repeat_heads(
    x: &[f32],
    shape: &[usize],
    times: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let per_head = shape[2] * shape[3];
    check_len("repeat_heads output", out.len(), x.len() * times)?;
    if per_head == 0 {
        return Ok(());
    }
    for (h, head) in x.chunks_exact(per_head).enumerate() {
        for r in 0..times {
            let at = (h * times + r) * per_head;
            out[at..at + per_head].copy_from_slice(head);
        }
    }
    Ok(())
}

/// Joins `parts` (data, shape) along `axis` into `out` of `out_shape`.
pub fn concat(
    parts: &[(&[f32], Vec<usize>)],
    axis: usize,
    out_shape: &[usize],
    out: &mut [f32],
) -> Result<(), String> {
    check_len("concat output", out.len(), out_shape.iter().product())?;
    let outer: usize = out_shape[..axis].iter().product();
    let inner: usize = out_shape[axis + 1..].iter().product();
    let mut at = 0;
    for o in 0..outer {
        for (data, shape) in parts {
            let run = shape[axis] * inner;
            check_len("concat part", data.len(), outer * run)?;
            out[at..at + run].copy_from_slice(&data[o * run..(o + 1) * run]);
            at += run;
        }
    }
    Ok(())
}

/// Broadcasts `x` of `shape` to `out_shape` (size-1 axes stretch; new axes on the left).
pub fn expand(
    x: &[f32],
    shape: &[usize],
    out_shape: &[usize],
    out: &mut [f32],
) -> Result<(), String> {
    check_len("expand output", out.len(), out_shape.iter().product())?;
    check_len("expand input", x.len(), shape.iter().product())?;
    let r = out_shape.len();
    let bst = broadcast_strides(shape, r);
    let mut idx = vec![0usize; r];
    for o in out.iter_mut() {
        *o = x[idx.iter().zip(&bst).map(|(i, s)| i * s).sum::<usize>()];
        for ax in (0..r).rev() {
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    Ok(())
}

/// `Op::ConvWindows` on `x [b, n, s, c]` (`shape`): every output row of `length·width·c`
/// elements is the window's rows copied, or zeros where the window leaves the input.
pub fn conv_windows(
    x: &[f32],
    shape: &[usize],
    length: usize,
    width: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let &[nb, nt, ns, nc] = shape else {
        return Err(format!("conv_windows needs [B, N, S, C], not {shape:?}"));
    };
    if length == 0 || width.is_multiple_of(2) {
        return Err("conv_windows needs length >= 1 and an odd width".into());
    }
    let f = length * width * nc;
    check_len("conv_windows input", x.len(), nb * nt * ns * nc)?;
    check_len("conv_windows output", out.len(), nb * nt * ns * f)?;
    let half = width / 2;
    for (r, o) in out.chunks_exact_mut(f.max(1)).enumerate() {
        let (bt, s) = (r / ns, r % ns);
        let (b, t) = (bt / nt, bt % nt);
        for (i, window_row) in o.chunks_exact_mut(width * nc).enumerate() {
            // Token t − (length − 1 − i), if it exists.
            let back = length - 1 - i;
            if back > t {
                window_row.fill(0.0);
                continue;
            }
            let row0 = (b * nt + t - back) * ns;
            for (j, dst) in window_row.chunks_exact_mut(nc).enumerate() {
                match (s + j).checked_sub(half).filter(|&m| m < ns) {
                    Some(m) => dst.copy_from_slice(&x[(row0 + m) * nc..(row0 + m + 1) * nc]),
                    None => dst.fill(0.0),
                }
            }
        }
    }
    Ok(())
}

/// `Op::BlockOneHot` over rows of `x`: 1 at the first maximum of every `block` entries (a NaN
/// never wins), 0 elsewhere.
pub fn block_onehot(x: &[f32], block: usize, out: &mut [f32]) -> Result<(), String> {
    check_len("block_onehot output", out.len(), x.len())?;
    if block == 0 || !x.len().is_multiple_of(block) {
        return Err(format!(
            "block_onehot: {} entries are not blocks of {block}",
            x.len()
        ));
    }
    for (xs, o) in x.chunks_exact(block).zip(out.chunks_exact_mut(block)) {
        o.fill(0.0);
        o[first_max(xs)] = 1.0;
    }
    Ok(())
}

/// Index of the first maximum of `xs` (non-empty), NaNs skipped unless all are NaN.
pub fn first_max(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate().skip(1) {
        if v > xs[best] || (xs[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}
