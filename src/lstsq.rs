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
    spd_solve(g, b, p, q)
}

/// `X [p, q]` solving `(G + λI)·X = B` for a symmetric positive semi-definite `G [p, p]`
/// (row-major; only its lower triangle is read), `λ = RIDGE · trace(G) / p`; `None` when it is
/// not positive definite even so (NaN or infinite data).
pub fn spd_solve(mut g: Vec<f64>, mut b: Vec<f64>, p: usize, q: usize) -> Option<Vec<f64>> {
    if g.len() != p.checked_mul(p)? || b.len() != p.checked_mul(q)? || p == 0 {
        return None;
    }
    let trace: f64 = (0..p).map(|i| g[i * p + i]).sum();
    let lambda = RIDGE * (trace / p as f64).max(f64::MIN_POSITIVE);
    for i in 0..p {
        g[i * p + i] += lambda;
    }
    // Cholesky: G = L·Lᵀ, L in the lower triangle of g.
    if !cholesky(&mut g, p) {
        return None;
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

/// The Cholesky factor `L` (`G = L·Lᵀ`) in place of `G [p, p]`'s lower triangle (the upper
/// one is left as it was); false when `G` is not positive definite.
pub fn cholesky(g: &mut [f64], p: usize) -> bool {
    for j in 0..p {
        let mut d = g[j * p + j];
        for k in 0..j {
            d -= g[j * p + k] * g[j * p + k];
        }
        // Not positive (or NaN): not positive definite.
        if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !d.is_finite() {
            return false;
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
    true
}

/// `a [n, k] · b [k, m]` (row-major).
pub fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut c = vec![0f64; n * m];
    for (i, ci) in c.chunks_exact_mut(m.max(1)).enumerate().take(n) {
        for (kk, &aik) in a[i * k..(i + 1) * k].iter().enumerate() {
            if aik != 0.0 {
                for (x, &y) in ci.iter_mut().zip(&b[kk * m..(kk + 1) * m]) {
                    *x += aik * y;
                }
            }
        }
    }
    c
}

/// `aᵀ · b` for `a [n, k]`, `b [n, m]`: `[k, m]`.
pub fn matmul_tn(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut c = vec![0f64; k * m];
    for r in 0..n {
        let (ar, br) = (&a[r * k..(r + 1) * k], &b[r * m..(r + 1) * m]);
        for (i, &x) in ar.iter().enumerate() {
            if x != 0.0 {
                for (o, &y) in c[i * m..(i + 1) * m].iter_mut().zip(br) {
                    *o += x * y;
                }
            }
        }
    }
    c
}

/// `a [r, c]` transposed.
pub fn transpose(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut t = vec![0f64; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = a[i * c + j];
        }
    }
    t
}

/// Iterations of [`top_eigenvectors`]' subspace iteration.
const SUBSPACE_ITERATIONS: usize = 60;

/// The `k` leading eigenvectors of a symmetric positive semi-definite `q [p, p]`, as the
/// columns of a `[p, k]` matrix, largest eigenvalue first, with their eigenvalues: subspace
/// (orthogonal) iteration from a seeded start, then a Rayleigh–Ritz step (Jacobi on the
/// `k × k` projection). Approximate where eigenvalues are close, which is all a fit needs.
pub fn top_eigenvectors(q: &[f64], p: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let k = k.min(p);
    let mut rng = attnopt_ir::rng::Rng::new(seed);
    let mut u: Vec<f64> = (0..p * k).map(|_| rng.range(-1.0, 1.0) as f64).collect();
    orthonormalise(&mut u, p, k);
    for _ in 0..SUBSPACE_ITERATIONS {
        u = matmul(q, &u, p, p, k);
        orthonormalise(&mut u, p, k);
    }
    // Rayleigh–Ritz: T = Uᵀ·Q·U, T = Z·Λ·Zᵀ, U ← U·Z.
    let qu = matmul(q, &u, p, p, k);
    let mut t = matmul_tn(&u, &qu, p, k, k);
    let (z, values) = jacobi_eigen(&mut t, k);
    let u = matmul(&u, &z, p, k, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut out = vec![0f64; p * k];
    for (j, &c) in order.iter().enumerate() {
        for i in 0..p {
            out[i * k + j] = u[i * k + c];
        }
    }
    (out, order.iter().map(|&c| values[c]).collect())
}

/// Modified Gram–Schmidt on the columns of `u [p, k]` (a column that vanishes becomes zero).
fn orthonormalise(u: &mut [f64], p: usize, k: usize) {
    for j in 0..k {
        for c in 0..j {
            let dot: f64 = (0..p).map(|i| u[i * k + j] * u[i * k + c]).sum();
            for i in 0..p {
                u[i * k + j] -= dot * u[i * k + c];
            }
        }
        let norm = (0..p).map(|i| u[i * k + j].powi(2)).sum::<f64>().sqrt();
        for i in 0..p {
            u[i * k + j] = if norm > 0.0 { u[i * k + j] / norm } else { 0.0 };
        }
    }
}

/// Eigenvectors (columns of the returned `[k, k]`) and eigenvalues of a symmetric `t [k, k]`
/// by cyclic Jacobi rotations (`t` is destroyed).
fn jacobi_eigen(t: &mut [f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut z = vec![0f64; k * k];
    for i in 0..k {
        z[i * k + i] = 1.0;
    }
    for _sweep in 0..50 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| t[i * k + j].powi(2))
            .sum();
        let diag: f64 = (0..k).map(|i| t[i * k + i].powi(2)).sum();
        if off <= 1e-24 * diag.max(f64::MIN_POSITIVE) {
            break;
        }
        for a in 0..k {
            for b in a + 1..k {
                let tab = t[a * k + b];
                if tab == 0.0 {
                    continue;
                }
                let theta = (t[b * k + b] - t[a * k + a]) / (2.0 * tab);
                let tt = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let tt = if theta == 0.0 { 1.0 } else { tt };
                let c = 1.0 / (tt * tt + 1.0).sqrt();
                let s = tt * c;
                for i in 0..k {
                    let (x, y) = (t[i * k + a], t[i * k + b]);
                    t[i * k + a] = c * x - s * y;
                    t[i * k + b] = s * x + c * y;
                }
                for j in 0..k {
                    let (x, y) = (t[a * k + j], t[b * k + j]);
                    t[a * k + j] = c * x - s * y;
                    t[b * k + j] = s * x + c * y;
                }
                for i in 0..k {
                    let (x, y) = (z[i * k + a], z[i * k + b]);
                    z[i * k + a] = c * x - s * y;
                    z[i * k + b] = s * x + c * y;
                }
            }
        }
    }
    let values = (0..k).map(|i| t[i * k + i]).collect();
    (z, values)
}

/// `n` seeded values uniform in [−1, 1) (test data for the fits).
#[cfg(test)]
pub(crate) fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut r = attnopt_ir::rng::Rng::new(seed);
    (0..n).map(|_| r.range(-1.0, 1.0) as f64).collect()
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
    fn top_eigenvectors_of_a_known_spectrum() {
        // Q = V·diag(9, 4, 1, 0.5, 0.1)·Vᵀ with V a rotation: the two leading eigenpairs back.
        let p = 5;
        let mut r = attnopt_ir::rng::Rng::new(7);
        let mut v: Vec<f64> = (0..p * p).map(|_| r.range(-1.0, 1.0) as f64).collect();
        orthonormalise(&mut v, p, p);
        let lam = [9.0, 4.0, 1.0, 0.5, 0.1];
        let mut q = vec![0f64; p * p];
        for i in 0..p {
            for j in 0..p {
                q[i * p + j] = (0..p).map(|c| v[i * p + c] * lam[c] * v[j * p + c]).sum();
            }
        }
        let (u, values) = top_eigenvectors(&q, p, 2, 1);
        assert!(
            (values[0] - 9.0).abs() < 1e-6 && (values[1] - 4.0).abs() < 1e-6,
            "{values:?}"
        );
        for c in 0..2 {
            let dot: f64 = (0..p).map(|i| u[i * 2 + c] * v[i * p + c]).sum();
            assert!((dot.abs() - 1.0).abs() < 1e-6, "column {c}: {dot}");
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
