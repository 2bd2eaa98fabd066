//! The fit behind `optimize --allow sparse-ff` on a dense model: a feed-forward
//! `y = act(h·W1 + b1)·W2` (`F` units; `act(0) = 0`) becomes trax's `SparseFF` form
//! (docs/SPARSE.md): the units grouped into `F/N` blocks of `N`, a low-rank controller
//! `logits = h·m1·m2 + mb` (`m1 [d, L]`, `m2 [L, F]`) choosing one unit per block (its first
//! maximum), and only the chosen units computed. Nothing is retrained: `W1`, `b1` and `W2` are
//! the dense layer's, with their units reordered into blocks.
//!
//! - **Score of a unit** on a row: `|act(z_u)|·‖W2[u, :]‖` (its contribution's size). The best
//!   choice in a block (the *oracle*) is its highest-scoring unit.
//! - **Blocks**: units that are active together go to different blocks, so that keeping one
//!   per block loses little: greedily, largest total score first, each unit joins the
//!   open block whose members' scores correlate least with its own over the calibration rows.
//! - **Controller**: the least-squares rank-`L` predictor of the scaled pre-activations
//!   `z_u·‖W2[u, :]‖` from `h` (reduced-rank regression: the exact linear map `W1·diag(‖W2‖)`
//!   projected on the leading `L` right singular vectors of the centred fitted values), so its
//!   per-block argmax follows the oracle where a rank-`L` map can.
//!
//! "Before" is the same construction without data: blocks of consecutive units and the rank-`L`
//! SVD of the weights alone. Both are measured on held-out rows: the relative error of `y`
//! (before `b2`) and the *hit rate*, the share of (row, block) choices equal to the oracle's.

use crate::lstsq::{cholesky, matmul, matmul_tn, top_eigenvectors, transpose, RIDGE};

/// A dense feed-forward's weights, `f64`, row-major.
pub struct DenseFf<'a> {
    pub d: usize,
    pub units: usize,
    pub d_out: usize,
    /// `[d, F]`.
    pub w1: &'a [f64],
    /// `[F]`.
    pub b1: &'a [f64],
    /// `[F, d_out]`.
    pub w2: &'a [f64],
    pub act: &'a dyn Fn(f64) -> f64,
}

/// A fitted sparse feed-forward (units in block order) and its measured quality.
#[derive(Debug, Clone)]
pub struct SparseFfFit {
    /// Block-ordered unit `k` is the dense layer's unit `order[k]`.
    pub order: Vec<usize>,
    /// `[d, L]`, `[L, F]`, `[F]` (block order).
    pub m1: Vec<f32>,
    pub m2: Vec<f32>,
    pub mb: Vec<f32>,
    pub rank: usize,
    /// Held-out relative error of `y` and hit rate: weight-only construction, then calibrated.
    pub error_before: f64,
    pub error_after: f64,
    pub hit_rate_before: f64,
    pub hit_rate_after: f64,
    /// Whether the calibrated construction is the one returned: only when it lowers the
    /// held-out error, else the weight-only one is.
    pub kept: bool,
}

/// A controller and block order, in f64.
struct Candidate {
    order: Vec<usize>,
    m1: Vec<f64>,
    m2: Vec<f64>,
    mb: Vec<f64>,
}

impl DenseFf<'_> {
    /// `z = h·W1 + b1` for rows `h [n, d]`.
    fn pre(&self, h: &[f64], n: usize) -> Vec<f64> {
        let mut z = matmul(h, self.w1, n, self.d, self.units);
        for row in z.chunks_exact_mut(self.units.max(1)) {
            for (v, b) in row.iter_mut().zip(self.b1) {
                *v += b;
            }
        }
        z
    }

    fn w2_norms(&self) -> Vec<f64> {
        (0..self.units)
            .map(|u| {
                let r = &self.w2[u * self.d_out..(u + 1) * self.d_out];
                r.iter().map(|v| v * v).sum::<f64>().sqrt()
            })
            .collect()
    }

    /// `|act(z)|·‖W2[u]‖` per row and unit.
    fn scores(&self, z: &[f64], norms: &[f64]) -> Vec<f64> {
        z.chunks_exact(self.units.max(1))
            .flat_map(|row| {
                row.iter()
                    .zip(norms)
                    .map(|(&v, &n)| (self.act)(v).abs() * n)
            })
            .collect()
    }

    /// The rank-`rank` controller predicting `z·‖W2‖` from `h`, fitted on `h [n, d]` (or, with
    /// no rows, from the weights alone), its columns in dense unit order.
    fn controller(&self, h: &[f64], n: usize, rank: usize, norms: &[f64]) -> Option<Candidate> {
        let (d, f) = (self.d, self.units);
        // W1' = W1·diag(‖W2‖), b1' likewise: predicting these ranks units by contribution.
        let w1s: Vec<f64> = (0..d * f).map(|i| self.w1[i] * norms[i % f]).collect();
        let b1s: Vec<f64> = (0..f).map(|u| self.b1[u] * norms[u]).collect();
        if rank >= d {
            // A rank-d map is the exact one: m1 = [I | 0], m2 = [W1'; 0].
            let mut m1 = vec![0f64; d * rank];
            let mut m2 = vec![0f64; rank * f];
            for i in 0..d {
                m1[i * rank + i] = 1.0;
            }
            m2[..d * f].copy_from_slice(&w1s);
            return Some(Candidate {
                order: (0..f).collect(),
                m1,
                m2,
                mb: b1s,
            });
        }
        // Centred rows: μ and the Cholesky factor of Σ = Hcᵀ·Hc (identity without data).
        let mut mu = vec![0f64; d];
        let mut lc = vec![0f64; d * d];
        if n == 0 {
            for i in 0..d {
                lc[i * d + i] = 1.0;
            }
        } else {
            for row in h.chunks_exact(d) {
                for (m, v) in mu.iter_mut().zip(row) {
                    *m += v / n as f64;
                }
            }
            let hc: Vec<f64> = h.iter().enumerate().map(|(i, v)| v - mu[i % d]).collect();
            let mut sigma = matmul_tn(&hc, &hc, n, d, d);
            let trace: f64 = (0..d).map(|i| sigma[i * d + i]).sum();
            let lambda = RIDGE * (trace / d as f64).max(f64::MIN_POSITIVE);
            for i in 0..d {
                sigma[i * d + i] += lambda;
            }
            if !cholesky(&mut sigma, d) {
                return None;
            }
            for i in 0..d {
                for j in 0..=i {
                    lc[i * d + j] = sigma[i * d + j];
                }
            }
        }
        // Right singular vectors of Lcᵀ·W1' (whose Gram matrix is W1'ᵀ·Σ·W1') from the
        // eigenvectors U of Q = Lcᵀ·(W1'·W1'ᵀ)·Lc: V = W1'ᵀ·Lc·U·diag(1/σ).
        let k = matmul(&w1s, &transpose(&w1s, d, f), d, f, d);
        let lct = transpose(&lc, d, d);
        let q = matmul(&matmul(&lct, &k, d, d, d), &lc, d, d, d);
        let (u, values) = top_eigenvectors(&q, d, rank, 17);
        let r = values.len();
        let lu = matmul(&lc, &u, d, d, r);
        let mut v = matmul_tn(&w1s, &lu, d, f, r); // [F, r]
        let top = values.first().copied().unwrap_or(0.0).max(0.0);
        for c in 0..r {
            let sv = values[c].max(0.0).sqrt();
            let scale = if sv > 1e-9 * top.sqrt() && sv > 0.0 {
                1.0 / sv
            } else {
                0.0
            };
            for row in 0..f {
                v[row * r + c] *= scale;
            }
        }
        // m1 = W1'·V [d, r] (padded to `rank` columns), m2 = Vᵀ, mb = b1' + μW1'(I − V·Vᵀ).
        let m1r = matmul(&w1s, &v, d, f, r);
        let (mut m1, mut m2) = (vec![0f64; d * rank], vec![0f64; rank * f]);
        for i in 0..d {
            m1[i * rank..i * rank + r].copy_from_slice(&m1r[i * r..(i + 1) * r]);
        }
        for c in 0..r {
            for row in 0..f {
                m2[c * f + row] = v[row * r + c];
            }
        }
        let muw = matmul(&mu, &w1s, 1, d, f);
        let muwv = matmul(&muw, &v, 1, f, r);
        let back = matmul(&muwv, &transpose(&v, f, r), 1, r, f);
        let mb = (0..f).map(|u| b1s[u] + muw[u] - back[u]).collect();
        Some(Candidate {
            order: (0..f).collect(),
            m1,
            m2,
            mb,
        })
    }

    /// `(relative error of y, hit rate)` of `c` on rows `h [n, d]` (`z`, `scores` theirs).
    fn measure(
        &self,
        c: &Candidate,
        block: usize,
        h: &[f64],
        z: &[f64],
        scores: &[f64],
    ) -> (f64, f64) {
        let (d, f, rank) = (self.d, self.units, c.m2.len() / self.units.max(1));
        let n = h.len() / d.max(1);
        let low = matmul(h, &c.m1, n, d, rank);
        let logits = matmul(&low, &c.m2, n, rank, f);
        let (mut num, mut den, mut hits, mut total) = (0f64, 0f64, 0usize, 0usize);
        for r in 0..n {
            let (zr, sr, lr) = (
                &z[r * f..(r + 1) * f],
                &scores[r * f..(r + 1) * f],
                &logits[r * f..(r + 1) * f],
            );
            let mut dense = vec![0f64; self.d_out];
            let mut sparse = vec![0f64; self.d_out];
            for u in 0..f {
                let a = (self.act)(zr[u]);
                for (o, w) in dense.iter_mut().zip(&self.w2[u * self.d_out..]) {
                    *o += a * w;
                }
            }
            for b in 0..f / block {
                let units = &c.order[b * block..(b + 1) * block];
                // The kernel's choice: the first maximum of the block's logits.
                let pick = first_max(units.iter().map(|&u| lr[u] + c.mb[u]));
                let oracle = first_max(units.iter().map(|&u| sr[u]));
                hits += usize::from(pick == oracle);
                total += 1;
                let u = units[pick];
                let a = (self.act)(zr[u]);
                for (o, w) in sparse.iter_mut().zip(&self.w2[u * self.d_out..]) {
                    *o += a * w;
                }
            }
            num += dense
                .iter()
                .zip(&sparse)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>();
            den += dense.iter().map(|a| a * a).sum::<f64>();
        }
        let err = if den > 0.0 {
            (num / den).sqrt()
        } else {
            num.sqrt()
        };
        (err, hits as f64 / total.max(1) as f64)
    }
}

/// The index of the first maximum (NaN never wins; all NaN: 0).
fn first_max(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Blocks of `block` units with the least co-activation (see the module docs), as an order.
fn co_activation_blocks(scores: &[f64], n: usize, units: usize, block: usize) -> Vec<usize> {
    let blocks = units / block;
    let total: Vec<f64> = (0..units)
        .map(|u| (0..n).map(|r| scores[r * units + u]).sum())
        .collect();
    let mut by_size: Vec<usize> = (0..units).collect();
    by_size.sort_by(|&a, &b| total[b].total_cmp(&total[a]).then(a.cmp(&b)));
    let mut members: Vec<Vec<usize>> = vec![Vec::with_capacity(block); blocks];
    let mut sums = vec![0f64; blocks * n];
    for u in by_size {
        let col: Vec<f64> = (0..n).map(|r| scores[r * units + u]).collect();
        let best = (0..blocks)
            .filter(|&b| members[b].len() < block)
            .min_by(|&a, &b| {
                let cost = |x: usize| -> f64 {
                    sums[x * n..(x + 1) * n]
                        .iter()
                        .zip(&col)
                        .map(|(s, c)| s * c)
                        .sum()
                };
                cost(a)
                    .total_cmp(&cost(b))
                    .then(members[a].len().cmp(&members[b].len()))
                    .then(a.cmp(&b))
            })
            .unwrap_or(0);
        members[best].push(u);
        for (s, c) in sums[best * n..(best + 1) * n].iter_mut().zip(&col) {
            *s += c;
        }
    }
    members.into_iter().flatten().collect()
}

/// Fits a sparse feed-forward with blocks of `block` units and a rank-`rank` controller on
/// `h_fit`, measured on `h_held` (rows `[n, d]`). `None` when `block` does not divide the
/// units or the data cannot be fitted (non-finite values).
pub fn fit(
    ff: &DenseFf,
    block: usize,
    rank: usize,
    h_fit: &[f64],
    h_held: &[f64],
) -> Option<SparseFfFit> {
    let (d, f) = (ff.d, ff.units);
    if block == 0 || !f.is_multiple_of(block) || rank == 0 || d == 0 {
        return None;
    }
    let (n_fit, n_held) = (h_fit.len() / d, h_held.len() / d);
    let norms = ff.w2_norms();
    let (z_fit, z_held) = (ff.pre(h_fit, n_fit), ff.pre(h_held, n_held));
    let (s_fit, s_held) = (ff.scores(&z_fit, &norms), ff.scores(&z_held, &norms));
    // Before: consecutive blocks, controller from the weights alone.
    let before = ff.controller(&[], 0, rank, &norms)?;
    let (error_before, hit_rate_before) = ff.measure(&before, block, h_held, &z_held, &s_held);
    // After: co-activation blocks, controller fitted to the calibration rows.
    let mut after = ff.controller(h_fit, n_fit, rank, &norms)?;
    after.order = co_activation_blocks(&s_fit, n_fit, f, block);
    let (error_after, hit_rate_after) = ff.measure(&after, block, h_held, &z_held, &s_held);
    let kept = error_after < error_before;
    let after = if kept { after } else { before };
    // Columns of m2 and mb into block order.
    let m2: Vec<f32> = (0..rank)
        .flat_map(|c| after.order.iter().map(move |&u| (c, u)))
        .map(|(c, u)| after.m2[c * f + u] as f32)
        .collect();
    Some(SparseFfFit {
        m1: after.m1.iter().map(|&v| v as f32).collect(),
        m2,
        mb: after.order.iter().map(|&u| after.mb[u] as f32).collect(),
        order: after.order,
        rank,
        error_before,
        error_after,
        hit_rate_before,
        hit_rate_after,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lstsq::random as values;

    fn relu(x: f64) -> f64 {
        x.max(0.0)
    }

    #[test]
    fn a_full_rank_controller_follows_the_oracle() {
        // rank ≥ d: the controller is the exact scaled pre-activation, so with ReLU (whose
        // score is monotone in it where positive) every block's choice is the oracle's unless
        // the whole block is inactive.
        let (d, f, block, n) = (6, 24, 4, 80);
        let (w1, b1, w2) = (values(d * f, 1), values(f, 2), values(f * d, 3));
        let ff = DenseFf {
            d,
            units: f,
            d_out: d,
            w1: &w1,
            b1: &b1,
            w2: &w2,
            act: &relu,
        };
        let h = values(n * d, 4);
        let fit = fit(&ff, block, d, &h[..60 * d], &h[60 * d..]).unwrap();
        assert!(fit.hit_rate_after > 0.9, "{}", fit.hit_rate_after);
        let mut sorted = fit.order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..f).collect::<Vec<_>>(), "a permutation");
    }

    #[test]
    fn one_active_unit_per_block_is_exact() {
        // Units that never fire together, grouped by the fit so that each block holds one
        // active unit per row: the sparse layer equals the dense one.
        let (d, f, block, n) = (4, 8, 4, 40);
        // Unit u fires on rows of class u % 4, zero elsewhere; h is the class one-hot.
        let mut w1 = vec![-1.0; d * f];
        for u in 0..f {
            w1[(u % 4) * f + u] = 1.0 + u as f64;
        }
        let b1 = vec![0.0; f];
        let w2 = values(f * d, 9);
        let h: Vec<f64> = (0..n)
            .flat_map(|r| (0..d).map(move |i| f64::from(u8::from(i == r % 4))))
            .collect();
        let ff = DenseFf {
            d,
            units: f,
            d_out: d,
            w1: &w1,
            b1: &b1,
            w2: &w2,
            act: &relu,
        };
        let fit = fit(&ff, block, d, &h[..32 * d], &h[32 * d..]).unwrap();
        assert!(fit.error_after < 1e-9, "{}", fit.error_after);
        assert!((fit.hit_rate_after - 1.0).abs() < 1e-12);
        // Consecutive blocks hold units 0..4 (classes 0..3, one active per row): exact too,
        // and the co-activation blocks must not be worse.
        assert!(fit.error_after <= fit.error_before + 1e-12);
        assert!(super::fit(&ff, 3, d, &h, &h).is_none());
    }
}
