//! Dot products and `o += a·x` over f32 slices with the widest vectors the CPU has, picked once
//! ([`VecOps::detect`]): AVX-512 (16 lanes, FMA), AVX2 with FMA (8 lanes), else portable code
//! (what the compiler vectorises for the baseline target). For kernels that walk rows the
//! matrix-product libraries cannot batch (the sparse feed-forward's chosen units). Results
//! differ from a sequential sum by float rounding only (lanes are summed at the end).

/// The row operations, as plain function pointers chosen for this CPU.
#[derive(Clone, Copy)]
pub(crate) struct VecOps {
    /// `Σ a_i·b_i` over the common length.
    pub(crate) dot: fn(&[f32], &[f32]) -> f32,
    /// `o_i += a·x_i` over the common length.
    pub(crate) axpy: fn(f32, &[f32], &mut [f32]),
    /// [`VecOps::dot`] with the second operand bfloat16 bit patterns.
    pub(crate) dot_bf16: fn(&[f32], &[u16]) -> f32,
    /// [`VecOps::axpy`] with `x` bfloat16 bit patterns.
    pub(crate) axpy_bf16: fn(f32, &[u16], &mut [f32]),
    /// `ger(c, s, p, y)`: `y += cᵀ·p` for `c [rows, s]`, `p [rows, m]`, `y [s, m]` (row-major;
    /// `m = y.len() / s`): a sum of rank-1 updates, register-blocked (four rows of `y` by 16
    /// columns in registers while the rows of `p` stream by).
    pub(crate) ger: fn(&[f32], usize, &[f32], &mut [f32]),
    /// [`VecOps::ger`] with `p` bfloat16 bit patterns.
    pub(crate) ger_bf16: fn(&[f32], usize, &[u16], &mut [f32]),
}

impl VecOps {
    /// The widest implementation this CPU runs.
    pub(crate) fn detect() -> VecOps {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return VecOps {
                    dot: x86::dot512,
                    axpy: x86::axpy512,
                    dot_bf16: x86::dot512_bf16,
                    axpy_bf16: x86::axpy512_bf16,
                    ger: x86::ger512,
                    ger_bf16: x86::ger512_bf16,
                };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return VecOps {
                    dot: x86::dot256,
                    axpy: x86::axpy256,
                    dot_bf16: x86::dot256_bf16,
                    axpy_bf16: x86::axpy256_bf16,
                    ger: x86::ger256,
                    ger_bf16: x86::ger256_bf16,
                };
            }
        }
        VecOps::portable()
    }

    /// The baseline code, on every CPU.
    pub(crate) fn portable() -> VecOps {
        VecOps {
            dot: |a, b| dot_body::<8, false>(a, b),
            axpy: |a, x, o| axpy_body::<false>(a, x, o),
            dot_bf16: |a, b| dot_bf16_body::<8, false>(a, b),
            axpy_bf16: |a, x, o| axpy_bf16_body::<false>(a, x, o),
            ger: |c, s, p, y| ger_body::<false, f32>(c, s, p, y),
            ger_bf16: |c, s, p, y| ger_body::<false, u16>(c, s, p, y),
        }
    }
}

#[inline(always)]
fn dot_body<const L: usize, const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] = if FMA {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_body<const FMA: bool>(a: f32, x: &[f32], o: &mut [f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = if FMA { a.mul_add(x, *o) } else { *o + a * x };
    }
}

/// An element of `p` in [`ger_body`]: f32, or bfloat16 bits widened.
trait Lane: Copy {
    fn f32(self) -> f32;
}

impl Lane for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Lane for u16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        wide(self)
    }
}

/// Columns of `y` per register tile (one AVX-512 register).
const TILE: usize = 16;

#[inline(always)]
fn ger_body<const FMA: bool, P: Lane>(c: &[f32], s: usize, p: &[P], y: &mut [f32]) {
    let s = s.max(1);
    let m = y.len() / s;
    let rows = (c.len() / s).min(if m == 0 { 0 } else { p.len() / m });
    let fma = |a: f32, b: f32, acc: f32| if FMA { a.mul_add(b, acc) } else { acc + a * b };
    // Four rows of y by TILE columns stay in registers while every row of p streams by.
    let mut q0 = 0;
    while q0 < s {
        let nq = (s - q0).min(4);
        let mut j = 0;
        while j < m {
            let w = (m - j).min(TILE);
            let mut acc = [[0f32; TILE]; 4];
            if w == TILE && nq == 4 {
                // Constant-size loops the compiler turns into one register per row of y.
                for i in 0..rows {
                    let pr: &[P; TILE] = p[i * m + j..i * m + j + TILE]
                        .try_into()
                        .expect("TILE elements");
                    let pv: [f32; TILE] = pr.map(P::f32);
                    let ci: &[f32; 4] = c[i * s + q0..i * s + q0 + 4]
                        .try_into()
                        .expect("4 elements");
                    for q in 0..4 {
                        for t in 0..TILE {
                            acc[q][t] = fma(ci[q], pv[t], acc[q][t]);
                        }
                    }
                }
            } else {
                for i in 0..rows {
                    let pr = &p[i * m + j..i * m + j + w];
                    let mut pv = [0f32; TILE];
                    for (v, x) in pv.iter_mut().zip(pr) {
                        *v = x.f32();
                    }
                    let ci = &c[i * s + q0..i * s + q0 + nq];
                    for (a, &cv) in acc.iter_mut().zip(ci) {
                        for t in 0..TILE {
                            a[t] = fma(cv, pv[t], a[t]);
                        }
                    }
                }
            }
            for (q, a) in acc.iter().enumerate().take(nq) {
                let row = &mut y[(q0 + q) * m + j..(q0 + q) * m + j + w];
                for (o, v) in row.iter_mut().zip(a) {
                    *o += v;
                }
            }
            j += w;
        }
        q0 += nq;
    }
}

/// A bfloat16 bit pattern as f32 (exact: bf16 is f32's upper half).
#[inline(always)]
fn wide(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

#[inline(always)]
fn dot_bf16_body<const L: usize, const FMA: bool>(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(x, &y)| x * wide(y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            let y = wide(y[i]);
            acc[i] = if FMA {
                x[i].mul_add(y, acc[i])
            } else {
                acc[i] + x[i] * y
            };
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_bf16_body<const FMA: bool>(a: f32, x: &[u16], o: &mut [f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        let x = wide(x);
        *o = if FMA { a.mul_add(x, *o) } else { *o + a * x };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{axpy_bf16_body, axpy_body, dot_bf16_body, dot_body, ger_body};

    #[target_feature(enable = "avx512f")]
    fn dot512_impl(a: &[f32], b: &[f32]) -> f32 {
        dot_body::<32, true>(a, b)
    }

    #[target_feature(enable = "avx512f")]
    fn axpy512_impl(a: f32, x: &[f32], o: &mut [f32]) {
        axpy_body::<true>(a, x, o)
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot256_impl(a: &[f32], b: &[f32]) -> f32 {
        dot_body::<16, true>(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    fn axpy256_impl(a: f32, x: &[f32], o: &mut [f32]) {
        axpy_body::<true>(a, x, o)
    }

    #[target_feature(enable = "avx512f")]
    fn dot512_bf16_impl(a: &[f32], b: &[u16]) -> f32 {
        dot_bf16_body::<32, true>(a, b)
    }

    #[target_feature(enable = "avx512f")]
    fn axpy512_bf16_impl(a: f32, x: &[u16], o: &mut [f32]) {
        axpy_bf16_body::<true>(a, x, o)
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot256_bf16_impl(a: &[f32], b: &[u16]) -> f32 {
        dot_bf16_body::<16, true>(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    fn axpy256_bf16_impl(a: f32, x: &[u16], o: &mut [f32]) {
        axpy_bf16_body::<true>(a, x, o)
    }

    pub(super) fn dot512_bf16(a: &[f32], b: &[u16]) -> f32 {
        unsafe { dot512_bf16_impl(a, b) }
    }
    pub(super) fn axpy512_bf16(a: f32, x: &[u16], o: &mut [f32]) {
        unsafe { axpy512_bf16_impl(a, x, o) }
    }
    pub(super) fn dot256_bf16(a: &[f32], b: &[u16]) -> f32 {
        unsafe { dot256_bf16_impl(a, b) }
    }
    pub(super) fn axpy256_bf16(a: f32, x: &[u16], o: &mut [f32]) {
        unsafe { axpy256_bf16_impl(a, x, o) }
    }

    #[target_feature(enable = "avx512f")]
    fn ger512_impl(c: &[f32], s: usize, p: &[f32], y: &mut [f32]) {
        ger_body::<true, f32>(c, s, p, y)
    }

    #[target_feature(enable = "avx512f")]
    fn ger512_bf16_impl(c: &[f32], s: usize, p: &[u16], y: &mut [f32]) {
        ger_body::<true, u16>(c, s, p, y)
    }

    #[target_feature(enable = "avx2,fma")]
    fn ger256_impl(c: &[f32], s: usize, p: &[f32], y: &mut [f32]) {
        ger_body::<true, f32>(c, s, p, y)
    }

    #[target_feature(enable = "avx2,fma")]
    fn ger256_bf16_impl(c: &[f32], s: usize, p: &[u16], y: &mut [f32]) {
        ger_body::<true, u16>(c, s, p, y)
    }

    pub(super) fn ger512(c: &[f32], s: usize, p: &[f32], y: &mut [f32]) {
        unsafe { ger512_impl(c, s, p, y) }
    }
    pub(super) fn ger512_bf16(c: &[f32], s: usize, p: &[u16], y: &mut [f32]) {
        unsafe { ger512_bf16_impl(c, s, p, y) }
    }
    pub(super) fn ger256(c: &[f32], s: usize, p: &[f32], y: &mut [f32]) {
        unsafe { ger256_impl(c, s, p, y) }
    }
    pub(super) fn ger256_bf16(c: &[f32], s: usize, p: &[u16], y: &mut [f32]) {
        unsafe { ger256_bf16_impl(c, s, p, y) }
    }

    // SAFETY (all twelve): `VecOps::detect` hands these out only after detecting the features
    // their `_impl` is compiled for; the bodies are safe slice code.
    pub(super) fn dot512(a: &[f32], b: &[f32]) -> f32 {
        unsafe { dot512_impl(a, b) }
    }
    pub(super) fn axpy512(a: f32, x: &[f32], o: &mut [f32]) {
        unsafe { axpy512_impl(a, x, o) }
    }
    pub(super) fn dot256(a: &[f32], b: &[f32]) -> f32 {
        unsafe { dot256_impl(a, b) }
    }
    pub(super) fn axpy256(a: f32, x: &[f32], o: &mut [f32]) {
        unsafe { axpy256_impl(a, x, o) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every implementation this CPU runs agrees with an f64 reference on odd lengths.
    #[test]
    fn dot_and_axpy_match_f64() {
        let mut r = attnopt_ir::rng::Rng::new(9);
        for ops in [VecOps::portable(), VecOps::detect()] {
            for n in [0, 1, 7, 16, 33, 100, 1027] {
                let (a, b) = (r.values(n, -1.0, 1.0), r.values(n, -1.0, 1.0));
                let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
                let got = (ops.dot)(&a, &b) as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (n as f64).max(1.0),
                    "{n}: {got} {want}"
                );
                let mut o = b.clone();
                (ops.axpy)(0.5, &a, &mut o);
                for i in 0..n {
                    let w = b[i] as f64 + 0.5 * a[i] as f64;
                    assert!((o[i] as f64 - w).abs() <= 1e-6, "{n}/{i}");
                }
                // bf16 second operands: exact widening, so the same references on b's bits.
                let bits: Vec<u16> = b.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
                let bw: Vec<f32> = bits
                    .iter()
                    .map(|&x| f32::from_bits((x as u32) << 16))
                    .collect();
                let want: f64 = a.iter().zip(&bw).map(|(x, y)| *x as f64 * *y as f64).sum();
                let got = (ops.dot_bf16)(&a, &bits) as f64;
                assert!((got - want).abs() <= 1e-5 * (n as f64).max(1.0), "bf16 {n}");
                let mut o = a.clone();
                (ops.axpy_bf16)(2.0, &bits, &mut o);
                for i in 0..n {
                    let w = a[i] as f64 + 2.0 * bw[i] as f64;
                    assert!((o[i] as f64 - w).abs() <= 1e-6, "bf16 {n}/{i}");
                }
                // y += cᵀ·p over two rows, c [2, 5] (more than a tile of four y rows), p the
                // two halves of b (n/2 columns, odd widths), f32 and bf16 p.
                let (s, m) = (5, n / 2);
                let c = r.values(2 * s, -1.0, 1.0);
                let mut y = vec![1f32; s * m];
                let mut y16 = y.clone();
                (ops.ger)(&c, s, &b[..2 * m], &mut y);
                (ops.ger_bf16)(&c, s, &bits[..2 * m], &mut y16);
                for q in 0..s {
                    for j in 0..m {
                        let w = 1.0 + c[q] as f64 * b[j] as f64 + c[s + q] as f64 * b[m + j] as f64;
                        assert!((y[q * m + j] as f64 - w).abs() <= 1e-5, "ger {n}");
                        let w =
                            1.0 + c[q] as f64 * bw[j] as f64 + c[s + q] as f64 * bw[m + j] as f64;
                        assert!((y16[q * m + j] as f64 - w).abs() <= 1e-5, "ger bf16 {n}");
                    }
                }
            }
        }
    }
}
