//! Row primitives: precompiled Rust AVX-512 routines that JIT row kernels call once per row
//! for their exp-heavy work (CPU-NOTES §6). Cranelift 0.135 emits at most 128-bit vectors
//! (f32x4), which runs `exp` at about ¼ of AVX-512 speed; a call per row costs a few
//! nanoseconds and moves that work to 512-bit code compiled by rustc.
//!
//! A kernel uses a primitive only when its [`super::JitModule`] was created on a CPU with
//! `avx512f` (runtime detection) and [`super::JitOptions::row_primitives`] is on; otherwise
//! the code generator emits its own f32x4 code, which stays the portable path and is tested
//! (the option, which the CLI sets from `ATTNOPT_JIT_AVX512=0`, forces it).
//!
//! Each primitive has the C calling convention and works on a slice the kernel hands it:
//! `(ptr, len, scalar…) -> scalar`. The numerics copy the code generator's exactly ([`math`]:
//! the same clamp, reduction, polynomial and edge rules), so both paths give the same values
//! up to summation order.
//!
//! Safety argument: the JIT kernel passes `out` (the row's output, `d` writable elements,
//! checked by [`super::RowKernel`] before any JIT code runs) and a length `valid ≤ d` (also
//! checked there). A primitive touches exactly `ptr[0..len]` (the tail through masked loads
//! and stores, which do not access the masked-off lanes), keeps no pointer, and is registered
//! with the JIT module only when `avx512f` was detected at run time.
//!
//! Never: allocate, panic (unwinding through JIT frames is undefined behaviour), or read or
//! write outside `ptr[0..len]`. New primitives (GELU-erf, SiLU …) go here, one entry each in
//! [`Primitive`].
//!
//! [`math`]: super::math

use cranelift_codegen::ir::{types, AbiParam, Signature, Type};

/// A precompiled routine a row kernel may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Primitive {
    /// `exp_sub_sum(x: *mut f32, len: usize, shift: f32) -> f32`: `x[c] = e^(x[c] − shift)`
    /// for `c < len`, returning the sum of the new values (softmax's exp pass).
    ExpSubSum,
}

impl Primitive {
    pub const ALL: [Primitive; 1] = [Primitive::ExpSubSum];

    /// The name the JIT module imports it by.
    pub fn symbol(self) -> &'static str {
        match self {
            Primitive::ExpSubSum => "attnopt_row_exp_sub_sum_avx512",
        }
    }

    /// The routine's address, where this build has it.
    pub fn address(self) -> Option<*const u8> {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Primitive::ExpSubSum => Some(avx512::exp_sub_sum as *const u8),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// Its Cranelift signature (the platform's C calling convention, as `sig` came).
    pub fn signature(self, sig: &mut Signature, pointer: Type) {
        match self {
            Primitive::ExpSubSum => {
                sig.params.push(AbiParam::new(pointer));
                sig.params.push(AbiParam::new(pointer));
                sig.params.push(AbiParam::new(types::F32));
                sig.returns.push(AbiParam::new(types::F32));
            }
        }
    }
}

/// Whether this CPU runs the primitives (checked once per [`super::JitModule`]).
pub(super) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`Primitive::ExpSubSum`] on a slice, for tests and benchmarks: `None` where the CPU lacks
/// `avx512f`.
pub fn exp_sub_sum(x: &mut [f32], shift: f32) -> Option<f32> {
    if !supported() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `x` has `x.len()` readable and writable elements; avx512f was detected.
        Some(unsafe { avx512::exp_sub_sum(x.as_mut_ptr(), x.len(), shift) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::*;

    use super::super::math::{EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO};

    /// See [`super::Primitive::ExpSubSum`].
    ///
    /// # Safety
    /// `x` points at `len` readable and writable `f32`s, and the CPU has `avx512f`.
    pub(super) unsafe extern "C" fn exp_sub_sum(x: *mut f32, len: usize, shift: f32) -> f32 {
        // SAFETY: forwarded from the caller.
        unsafe { exp_sub_sum_avx512(x, len, shift) }
    }

    /// `e^x` on 16 lanes, the code generator's scheme (`math::Math::exp`) step for step:
    /// 1 ulp on `[EXP_LO, EXP_HI]`, exactly 0 below (−∞ included), +∞ above, NaN stays NaN.
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        // max/min return their second operand when either is NaN, so NaN passes the clamp.
        let xc = _mm512_max_ps(_mm512_set1_ps(EXP_LO), x);
        let xc = _mm512_min_ps(_mm512_set1_ps(EXP_HI), xc);
        let n = _mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(n);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), xc);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        // Horner, highest coefficient first (constant indices: no panic path).
        let mut p = _mm512_set1_ps(EXP_P[EXP_P.len() - 1]);
        for &c in EXP_P[..EXP_P.len() - 1].iter().rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0));
        // 2^n with n in [−126, 127] after the clamp: (n + 127) << 23.
        let i = _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127));
        let s = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(i));
        let e = _mm512_mul_ps(e, s);
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_LO));
        let e = _mm512_mask_mov_ps(e, under, _mm512_setzero_ps());
        let over = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(EXP_HI));
        _mm512_mask_mov_ps(e, over, _mm512_set1_ps(f32::INFINITY))
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn exp_sub_sum_avx512(x: *mut f32, len: usize, shift: f32) -> f32 {
        let m = _mm512_set1_ps(shift);
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        // SAFETY (all pointer arithmetic below): every access is to x[i..i + 16] with
        // i + 16 ≤ len, or masked to the lanes below len.
        unsafe {
            while i + 32 <= len {
                let p = x.add(i);
                let e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), m));
                let e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(16)), m));
                _mm512_storeu_ps(p, e0);
                _mm512_storeu_ps(p.add(16), e1);
                acc0 = _mm512_add_ps(acc0, e0);
                acc1 = _mm512_add_ps(acc1, e1);
                i += 32;
            }
            if i + 16 <= len {
                let p = x.add(i);
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), m));
                _mm512_storeu_ps(p, e);
                acc0 = _mm512_add_ps(acc0, e);
                i += 16;
            }
            let rest = len - i;
            if rest > 0 {
                let k: __mmask16 = ((1u32 << rest) - 1) as __mmask16;
                let p = x.add(i);
                let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p), m));
                _mm512_mask_storeu_ps(p, k, e);
                acc1 = _mm512_mask_add_ps(acc1, k, acc1, e);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }
}
