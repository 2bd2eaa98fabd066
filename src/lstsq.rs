//! Least squares for calibration fits: `min ‖A·X − Y‖² + λ‖X‖²` through the normal equations
//! and a Cholesky factorisation, in f64. Small and dense (the unknowns are one layer's
//! projection, `p ≤` a few thousand rows), so a direct solve is exact enough and needs no
//! linear-algebra dependency; `λ` is a tiny ridge (relative to `AᵀA`'s mean diagonal) that keeps
//! rank-deficient calibration data (fewer rows than features, constant features) solvable.

/// Relative ridge: `λ = RIDGE · trace(AᵀA) / p`.
pub const RIDGE: f64 = 1e-6;

/// `X [p, q]` minimising `‖A·X − Y‖² + λ‖X‖²` for `A [n, p]`, `Y [n, q]` (row-major); `None`
/// when the shapes disagree or the system is not positive definite even with the ridge (NaN or
/// infinite data).
pub fn solve(a: &[f64], y: &[f64], n: usize, p: usize, q: usize) -> Option<Vec<f64>> {
    if a.len() != n.checked_mul(p)? || y.len() != n.checked_mul(q)? || p == 0 {
        return None;
    }
    // G = AᵀA, B = AᵀY.
    let mut g = vec![0f64; p * p];
    let mut b = vec![0f64; p * q];
    for r in 0..n {
        let (ar, yr) = (&a[r * p..(r + 1) * p], &y[r * q..(r + 1) * q]);
        for i in 0..p {
            let ai = ar[i];
            if ai == 0.0 {
                continue;
            }
            for (gij, &aj) in g[i * p..i * p + i + 1].iter_mut().zip(&ar[..=i]) {
                *gij += ai * aj;
            }
            for (bij, &yj) in b[i * q..(i + 1) * q].iter_mut().zip(yr) {
                *bij += ai * yj;
            }
        }
    }
    let trace: f64 = (0..p).map(|i| g[i * p + i]).sum();
    let lambda = RIDGE * (trace / p as f64).max(f64::MIN_POSITIVE);
    for i in 0..p {
        g[i * p + i] += lambda;
    }
    // Cholesky: G = L·Lᵀ, L in the lower triangle of g.
    for j in 0..p {
        let mut d = g[j * p + j];
        for k in 0..j {
            d -= g[j * p + k] * g[j * p + k];
        }
        // Not positive (or NaN): not positive definite.
        if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        g[j * p + j] = d;
        for i in j + 1..p {
            let mut s = g[i * p + j];
            for k in 0..j {
                s -= g[i * p + k] * g[j * p + k];
            }
            g[i * p + j] = s / d;
        }
    }
    // L·Z = B, then Lᵀ·X = Z, column block by column block (all q at once).
    for i in 0..p {
        for k in 0..i {
            let l = g[i * p + k];
            if l != 0.0 {
                let (done, rest) = b.split_at_mut(i * q);
                for (x, &z) in rest[..q].iter_mut().zip(&done[k * q..(k + 1) * q]) {
                    *x -= l * z;
                }
            }
        }
        let d = g[i * p + i];
        b[i * q..(i + 1) * q].iter_mut().for_each(|x| *x /= d);
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            let l = g[k * p + i];
            if l != 0.0 {
                let (head, tail) = b.split_at_mut(k * q);
                for (x, &z) in head[i * q..(i + 1) * q].iter_mut().zip(&tail[..q]) {
                    *x -= l * z;
                }
            }
        }
        let d = g[i * p + i];
        b[i * q..(i + 1) * q].iter_mut().for_each(|x| *x /= d);
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_linear_map() {
        // Y = A·X₀ with 40 rows, 5 features, 3 outputs: the fit returns X₀ (the ridge is tiny).
        let mut r = attnopt_ir::rng::Rng::new(3);
        let (n, p, q) = (40, 5, 3);
        let a: Vec<f64> = (0..n * p).map(|_| r.range(-1.0, 1.0) as f64).collect();
        let x0: Vec<f64> = (0..p * q).map(|_| r.range(-2.0, 2.0) as f64).collect();
        let mut y = vec![0f64; n * q];
        for i in 0..n {
            for j in 0..q {
                y[i * q + j] = (0..p).map(|k| a[i * p + k] * x0[k * q + j]).sum();
            }
        }
        let x = solve(&a, &y, n, p, q).unwrap();
        for (got, want) in x.iter().zip(&x0) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    #[test]
    fn residual_is_orthogonal_to_the_features() {
        // Noisy data: the least-squares residual R = Y − A·X satisfies AᵀR ≈ λX.
        let mut r = attnopt_ir::rng::Rng::new(4);
        let (n, p, q) = (30, 4, 2);
        let a: Vec<f64> = (0..n * p).map(|_| r.range(-1.0, 1.0) as f64).collect();
        let y: Vec<f64> = (0..n * q).map(|_| r.range(-1.0, 1.0) as f64).collect();
        let x = solve(&a, &y, n, p, q).unwrap();
        for k in 0..p {
            for j in 0..q {
                let dot: f64 = (0..n)
                    .map(|i| {
                        let fit: f64 = (0..p).map(|m| a[i * p + m] * x[m * q + j]).sum();
                        a[i * p + k] * (y[i * q + j] - fit)
                    })
                    .sum();
                assert!(dot.abs() < 1e-4, "{dot}");
            }
        }
    }

    #[test]
    fn rank_deficient_and_bad_data() {
        // A constant zero feature: still solvable (the ridge); NaN: refused.
        let a = vec![1.0, 0.0, 2.0, 0.0, 3.0, 0.0];
        let y = vec![2.0, 4.0, 6.0];
        let x = solve(&a, &y, 3, 2, 1).unwrap();
        assert!((x[0] - 2.0).abs() < 1e-4 && x[1].abs() < 1e-9);
        assert!(solve(&[f64::NAN, 1.0], &[1.0], 1, 2, 1).is_none());
        assert!(solve(&a, &y, 3, 3, 1).is_none());
    }
}
