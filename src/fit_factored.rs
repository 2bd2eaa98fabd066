//! The fit behind `optimize --allow sparse-qkv` on a dense model: a dense product weight
//! `W [d, d_out]` replaced by trax's `FactoredDense` form `Ŵ[i, s·M + m] = G[s, i]·P[i, m]`
//! (`S = d_out / M` modules; docs/SPARSE.md), fitted **to the product's outputs on calibration
//! activations** `X [n, d]`: minimise `‖X·W − X·Ŵ‖²`.
//!
//! Start: each row of `W` seen as `S × M`, its best rank-1 approximation (the weight-only fit,
//! no data). Then alternating least squares, each step exact (with `Σ = XᵀX`,
//! `C = Σ·W`):
//! - `G` given `P`: every module `s` solves `(Σ ∘ P·Pᵀ)·g_s = diag(C_s·Pᵀ)`, one matrix for all;
//! - `P` given `G`: `(Σ ∘ Gᵀ·G)·P = Σ_s diag(g_s)·C_s`.
//!
//! The error before (rank-1 start) and after (ALS) is measured on held-out rows.

use crate::lstsq::{matmul, matmul_tn, spd_solve, transpose};

/// ALS sweeps (each lowers the fitted error; it stops early when a sweep gains < 1e-6).
const SWEEPS: usize = 30;

/// A fitted factored weight and its errors on the held-out rows.
#[derive(Debug, Clone)]
pub struct FactorFit {
    /// `[S, d]`.
    pub gate: Vec<f32>,
    /// `[d, M]`.
    pub proj: Vec<f32>,
    pub modules: usize,
    /// Relative error of `X·Ŵ` against `X·W` on held-out rows: the per-row rank-1 start (no
    /// data), and after alternating least squares on the fitted rows.
    pub error_before: f64,
    pub error_after: f64,
    /// Whether the ALS fit is the one returned: only when it lowers the held-out error (with
    /// few calibration rows it can overfit them), else the rank-1 start is.
    pub kept: bool,
}

/// The factored weight `[d, S·M]` of `(G, P)`.
fn dense(g: &[f64], p: &[f64], d: usize, s: usize, m: usize) -> Vec<f64> {
    let mut w = vec![0f64; d * s * m];
    for i in 0..d {
        for k in 0..s {
            for j in 0..m {
                w[i * s * m + k * m + j] = g[k * d + i] * p[i * m + j];
            }
        }
    }
    w
}

/// `‖X·A − X·B‖ / ‖X·A‖` over the rows of `x [n, d]`.
pub fn relative_output_error(x: &[f64], a: &[f64], b: &[f64], n: usize, d: usize, q: usize) -> f64 {
    let (ya, yb) = (matmul(x, a, n, d, q), matmul(x, b, n, d, q));
    let num: f64 = ya.iter().zip(&yb).map(|(u, v)| (u - v).powi(2)).sum();
    let den: f64 = ya.iter().map(|u| u * u).sum();
    if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    }
}

/// Best rank-1 `(g [S], p [M])` of one row seen as `A [S, M]` (power iteration on `AᵀA`).
fn rank_one(a: &[f64], s: usize, m: usize) -> (Vec<f64>, Vec<f64>) {
    // Start from A's largest row, which is never orthogonal to the leading singular vector
    // unless A is zero.
    let start = (0..s)
        .max_by(|&x, &y| {
            let n = |r: usize| a[r * m..(r + 1) * m].iter().map(|v| v * v).sum::<f64>();
            n(x).total_cmp(&n(y))
        })
        .unwrap_or(0);
    let mut p: Vec<f64> = a[start * m..(start + 1) * m].to_vec();
    let mut g = vec![0f64; s];
    for _ in 0..50 {
        let norm = p.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return (vec![0.0; s], vec![0.0; m]);
        }
        p.iter_mut().for_each(|v| *v /= norm);
        for (k, gk) in g.iter_mut().enumerate() {
            *gk = (0..m).map(|j| a[k * m + j] * p[j]).sum();
        }
        let mut next = vec![0f64; m];
        for (k, &gk) in g.iter().enumerate() {
            for (j, nj) in next.iter_mut().enumerate() {
                *nj += gk * a[k * m + j];
            }
        }
        p = next;
    }
    // A ≈ g ⊗ p̂ with p̂ the unit vector the iteration converged to.
    let norm = p.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm == 0.0 {
        return (vec![0.0; s], vec![0.0; m]);
    }
    let p: Vec<f64> = p.iter().map(|v| v / norm).collect();
    let g = (0..s)
        .map(|k| (0..m).map(|j| a[k * m + j] * p[j]).sum())
        .collect();
    (g, p)
}

/// Fits `G [S, d]`, `P [d, M]` to `w [d, d_out]` (`S = d_out / M`) on the activation rows
/// `x_fit [n_fit, d]`, and measures both fits on `x_held [n_held, d]`. `None` when `M` does
/// not divide `d_out` or a system cannot be solved (non-finite data).
pub fn fit(
    w: &[f64],
    d: usize,
    d_out: usize,
    m: usize,
    x_fit: &[f64],
    x_held: &[f64],
) -> Option<FactorFit> {
    if m == 0 || !d_out.is_multiple_of(m) || w.len() != d * d_out {
        return None;
    }
    let s = d_out / m;
    let (n_fit, n_held) = (x_fit.len() / d.max(1), x_held.len() / d.max(1));
    // The weight-only start.
    let (mut g, mut p) = (vec![0f64; s * d], vec![0f64; d * m]);
    for i in 0..d {
        let (gi, pi) = rank_one(&w[i * d_out..(i + 1) * d_out], s, m);
        for k in 0..s {
            g[k * d + i] = gi[k];
        }
        p[i * m..(i + 1) * m].copy_from_slice(&pi);
    }
    let start = dense(&g, &p, d, s, m);
    let (g0, p0) = (g.clone(), p.clone());
    let sigma = matmul_tn(x_fit, x_fit, n_fit, d, d);
    let c = matmul(&sigma, w, d, d, d_out);
    let fitted_error = |g: &[f64], p: &[f64]| {
        // tr((W − Ŵ)ᵀ Σ (W − Ŵ)) through the rows of X: ‖X·(W − Ŵ)‖².
        let diff: Vec<f64> = w
            .iter()
            .zip(dense(g, p, d, s, m))
            .map(|(a, b)| a - b)
            .collect();
        matmul(x_fit, &diff, n_fit, d, d_out)
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
    };
    let mut last = fitted_error(&g, &p);
    // The ridge can make a sweep slightly worse than an already exact start: keep the best.
    let mut best = (last, g.clone(), p.clone());
    for _ in 0..SWEEPS {
        // G given P.
        let ppt = matmul(&p, &transpose(&p, d, m), d, m, d);
        let a: Vec<f64> = sigma.iter().zip(&ppt).map(|(x, y)| x * y).collect();
        let mut rhs = vec![0f64; d * s];
        for i in 0..d {
            for k in 0..s {
                rhs[i * s + k] = (0..m)
                    .map(|j| c[i * d_out + k * m + j] * p[i * m + j])
                    .sum();
            }
        }
        let gt = spd_solve(a, rhs, d, s)?;
        g = transpose(&gt, d, s);
        // P given G.
        let gtg = matmul_tn(&g, &g, s, d, d);
        let a: Vec<f64> = sigma.iter().zip(&gtg).map(|(x, y)| x * y).collect();
        let mut rhs = vec![0f64; d * m];
        for i in 0..d {
            for k in 0..s {
                let gk = g[k * d + i];
                for j in 0..m {
                    rhs[i * m + j] += gk * c[i * d_out + k * m + j];
                }
            }
        }
        p = spd_solve(a, rhs, d, m)?;
        let now = fitted_error(&g, &p);
        if now < best.0 {
            best = (now, g.clone(), p.clone());
        }
        let done = now >= last * (1.0 - 1e-6);
        last = now;
        if done {
            break;
        }
    }
    let (_, g, p) = best;
    let fitted = dense(&g, &p, d, s, m);
    let error_before = relative_output_error(x_held, w, &start, n_held, d, d_out);
    let error_after = relative_output_error(x_held, w, &fitted, n_held, d, d_out);
    let kept = error_after < error_before;
    let (g, p) = if kept { (g, p) } else { (g0, p0) };
    Some(FactorFit {
        gate: g.iter().map(|&v| v as f32).collect(),
        proj: p.iter().map(|&v| v as f32).collect(),
        modules: s,
        error_before,
        error_after,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lstsq::random as values;

    #[test]
    fn an_exactly_factored_weight_is_recovered() {
        let (d, s, m, n) = (12, 3, 4, 60);
        let (g, p) = (values(s * d, 1), values(d * m, 2));
        let w = dense(&g, &p, d, s, m);
        let x = values(n * d, 3);
        let f = fit(&w, d, s * m, m, &x[..40 * d], &x[40 * d..]).unwrap();
        assert!(f.error_before < 1e-9, "{}", f.error_before);
        assert!(f.error_after < 1e-6, "{}", f.error_after);
    }

    #[test]
    fn fitting_to_activations_beats_the_weight_only_start() {
        // A dense weight and activations that use a few directions only: the output fit is
        // better than the best weight-space rank-1 rows, on rows it never saw.
        let (d, s, m, n) = (16, 4, 4, 200);
        let w = values(d * s * m, 5);
        let basis = values(3 * d, 6);
        let coef = values(n * 3, 7);
        let x = matmul(&coef, &basis, n, 3, d);
        let f = fit(&w, d, s * m, m, &x[..150 * d], &x[150 * d..]).unwrap();
        assert!(f.error_before > 0.2, "{}", f.error_before);
        assert!(
            f.error_after < 0.5 * f.error_before,
            "{} → {}",
            f.error_before,
            f.error_after
        );
        assert!(fit(&w, d, s * m, 5, &x, &x).is_none());
    }
}
