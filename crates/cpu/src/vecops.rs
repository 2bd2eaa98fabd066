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
    /// `y[i, :] += c_i · p` for every `i` (`y` is `c.len() × p.len()`, row-major): a rank-1
    /// update in one call.
    pub(crate) ger: fn(&[f32], &[f32], &mut [f32]),
    /// [`VecOps::ger`] with `p` bfloat16 bit patterns.
    pub(crate) ger_bf16: fn(&[f32], &[u16], &mut [f32]),
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
            ger: |c, p, y| ger_body::<false>(c, p, y),
            ger_bf16: |c, p, y| ger_bf16_body::<false>(c, p, y),
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

#[inline(always)]
fn ger_body<const FMA: bool>(c: &[f32], p: &[f32], y: &mut [f32]) {
    for (&ci, row) in c.iter().zip(y.chunks_exact_mut(p.len().max(1))) {
        axpy_body::<FMA>(ci, p, row);
    }
}

#[inline(always)]
fn ger_bf16_body<const FMA: bool>(c: &[f32], p: &[u16], y: &mut [f32]) {
    for (&ci, row) in c.iter().zip(y.chunks_exact_mut(p.len().max(1))) {
        axpy_bf16_body::<FMA>(ci, p, row);
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
    use super::{axpy_bf16_body, axpy_body, dot_bf16_body, dot_body, ger_bf16_body, ger_body};

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
    fn ger512_impl(c: &[f32], p: &[f32], y: &mut [f32]) {
        ger_body::<true>(c, p, y)
    }

    #[target_feature(enable = "avx512f")]
    fn ger512_bf16_impl(c: &[f32], p: &[u16], y: &mut [f32]) {
        ger_bf16_body::<true>(c, p, y)
    }

    #[target_feature(enable = "avx2,fma")]
    fn ger256_impl(c: &[f32], p: &[f32], y: &mut [f32]) {
        ger_body::<true>(c, p, y)
    }

    #[target_feature(enable = "avx2,fma")]
    fn ger256_bf16_impl(c: &[f32], p: &[u16], y: &mut [f32]) {
        ger_bf16_body::<true>(c, p, y)
    }

    pub(super) fn ger512(c: &[f32], p: &[f32], y: &mut [f32]) {
        unsafe { ger512_impl(c, p, y) }
    }
    pub(super) fn ger512_bf16(c: &[f32], p: &[u16], y: &mut [f32]) {
        unsafe { ger512_bf16_impl(c, p, y) }
    }
    pub(super) fn ger256(c: &[f32], p: &[f32], y: &mut [f32]) {
        unsafe { ger256_impl(c, p, y) }
    }
    pub(super) fn ger256_bf16(c: &[f32], p: &[u16], y: &mut [f32]) {
        unsafe { ger256_bf16_impl(c, p, y) }
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
                // Rank-1 updates: y[i, :] += c_i · p, f32 and bf16 p.
                let c = [0.5f32, -1.0, 2.0];
                let mut y = vec![1f32; 3 * n];
                let mut y16 = y.clone();
                (ops.ger)(&c, &b, &mut y);
                (ops.ger_bf16)(&c, &bits, &mut y16);
                for i in 0..3 {
                    for j in 0..n {
                        let w = 1.0 + c[i] as f64 * b[j] as f64;
                        assert!((y[i * n + j] as f64 - w).abs() <= 1e-6, "ger {n}");
                        let w = 1.0 + c[i] as f64 * bw[j] as f64;
                        assert!((y16[i * n + j] as f64 - w).abs() <= 1e-6, "ger bf16 {n}");
                    }
                }
            }
        }
    }
}
