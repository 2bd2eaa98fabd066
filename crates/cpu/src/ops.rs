//! Generic kernels for operators that are neither matrix products nor row programs.
//!
//! Layout operators (permute, head split/merge, repeat) are native strided copies: they run
//! every layer. The rest (gather, cumsum, rope, concat, reductions over inner axes, ...) fall
//! back to the reference interpreter's `eval_op`, which is correct by definition and slow; the
//! per-kernel breakdown lists them as `op:NAME` so the slow ones are visible.

use attnopt_ir::{interp, Bindings, Op, Tensor};

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

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
        o.copy_from_slice(&table[r..r + d]);
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
