//! One row times a weight, `y = x · W`: what every product against a weight is at batch-1
//! decoding, where the time is reading `W` once. Matrix-product libraries tune for many rows;
//! here the weight streams through the widest vector dot products or row updates
//! ([`VecOps`]), split between the pool's threads (by output columns for dot products, by
//! blocks of rows with partial sums for row updates: [`split_sum`]), read as stored (a bf16
//! checkpoint as bf16: exact in f32 arithmetic, half the bytes).
//!
//! `W` is either stored `[n, k]` and used transposed (LLaMA's `x · Wᵀ`: each output is a dot
//! product with one stored row) or stored `[k, n]` (GPT-2's Conv1D: each input element scales
//! one stored row into the outputs).

use rayon::prelude::*;

use crate::vecops::VecOps;

/// A weight's elements as stored (or rounded to bf16 once, in bf16 precision): what the row
/// product and the sparse feed-forward kernel read.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

impl Rows<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::F32(x) => x.len(),
            Rows::Bf16(x) => x.len(),
        }
    }

    /// `x · self[range]`.
    pub(crate) fn dot(&self, ops: &VecOps, x: &[f32], range: std::ops::Range<usize>) -> f32 {
        match self {
            Rows::F32(w) => (ops.dot)(x, &w[range]),
            Rows::Bf16(w) => (ops.dot_bf16)(x, &w[range]),
        }
    }

    /// `o += a · self[range]`.
    pub(crate) fn axpy(&self, ops: &VecOps, a: f32, range: std::ops::Range<usize>, o: &mut [f32]) {
        match self {
            Rows::F32(w) => (ops.axpy)(a, &w[range], o),
            Rows::Bf16(w) => (ops.axpy_bf16)(a, &w[range], o),
        }
    }
}

/// `0..n` cut into one share per thread; `part(share, acc)` adds each share's contribution into
/// its own zeroed `len`-vector, the shares run in parallel, and their vectors are added in
/// order (the same sum whatever the scheduling). For the vector-matrix work of one row.
pub(crate) fn split_sum(
    ops: &crate::vecops::VecOps,
    n: usize,
    len: usize,
    part: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads().max(1);
    let share = n.div_ceil(threads).max(1);
    if threads == 1 {
        // One thread: on the caller, without a hand-off to the pool.
        let mut acc = vec![0f32; len];
        part(0..n, &mut acc);
        return acc;
    }
    let parts: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; len];
            part((t * share).min(n)..((t + 1) * share).min(n), &mut acc);
            acc
        })
        .collect();
    let mut sum = vec![0f32; len];
    for p in &parts {
        (ops.axpy)(1.0, p, &mut sum);
    }
    sum
}

/// Fewest outputs per thread's share (smaller shares cost more in wake-ups than they save).
const MIN_SHARE: usize = 64;

/// `y[n] = x[k] · W`, `W` used as `k × n`: stored `[n, k]` when `transposed`, else `[k, n]`.
pub(crate) fn gemv(
    ops: &VecOps,
    x: &[f32],
    w: Rows,
    k: usize,
    n: usize,
    transposed: bool,
    y: &mut [f32],
) -> Result<(), String> {
    if x.len() != k || y.len() != n || w.len() != k * n {
        return Err(format!(
            "row product: x {} / W {} / y {} elements do not fit {k} × {n}",
            x.len(),
            w.len(),
            y.len()
        ));
    }
    if n == 0 {
        return Ok(());
    }
    if !transposed {
        // Each thread streams a contiguous block of rows into its own partial sum (one long
        // sequential read; splitting the columns instead breaks every row into pieces that
        // the hardware prefetcher restarts on, measured 1.6× slower per byte).
        let sum = split_sum(ops, k, n, |rows, acc| {
            for i in rows {
                w.axpy(ops, x[i], i * n..(i + 1) * n, acc);
            }
        });
        y.copy_from_slice(&sum);
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    let share = n.div_ceil(threads).max(MIN_SHARE);
    y.par_chunks_mut(share).enumerate().for_each(|(t, out)| {
        let c0 = t * share;
        for (j, o) in out.iter_mut().enumerate() {
            let r = (c0 + j) * k;
            *o = w.dot(ops, x, r..r + k);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], k: usize, n: usize, transposed: bool) -> Vec<f32> {
        (0..n)
            .map(|j| {
                (0..k)
                    .map(|i| {
                        let wij = if transposed {
                            w[j * k + i]
                        } else {
                            w[i * n + j]
                        };
                        x[i] as f64 * wij as f64
                    })
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn both_layouts_and_dtypes_match_a_plain_sum() {
        let ops = VecOps::detect();
        let mut rng = attnopt_ir::rng::Rng::new(3);
        for (k, n) in [(1, 1), (7, 3), (64, 257), (300, 1000), (33, 0)] {
            let x = rng.values(k, -1.0, 1.0);
            // bf16-exact weights, so both dtypes have the same values.
            let w: Vec<f32> = (rng.values(k * n, -1.0, 1.0).into_iter())
                .map(|v| crate::matmul::bf16::round(v))
                .collect();
            let bits: Vec<u16> = w
                .iter()
                .map(|&v| crate::matmul::bf16::from_f32(v))
                .collect();
            for transposed in [false, true] {
                let want = reference(&x, &w, k, n, transposed);
                for rows in [Rows::F32(&w), Rows::Bf16(&bits)] {
                    let mut y = vec![f32::NAN; n];
                    gemv(&ops, &x, rows, k, n, transposed, &mut y).unwrap();
                    for (a, b) in y.iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{k}×{n}: {a} vs {b}"
                        );
                    }
                }
            }
        }
        let mut y = vec![0.0; 2];
        assert!(gemv(&ops, &[1.0; 3], Rows::F32(&[0.0; 5]), 3, 2, false, &mut y).is_err());
    }
}
