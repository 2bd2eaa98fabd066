//! Elementwise math emitted as Cranelift IR, at one type: `f32x4` for the main loops, `f32`
//! for scalar tails and row-invariant values. The same function emits both, so the tail of a
//! row computes with the same polynomials as its body.
//!
//! The schemes and their measured accuracy are in `CPU-NOTES.md` §2; the coefficients were
//! fitted by least squares on Chebyshev nodes (mpmath, 40 digits), rounding one coefficient
//! to f32 at a time and refitting the rest. `tests/jit.rs` measures every function against f64.
//!
//! Nothing here allocates, loops or touches memory except constant-pool loads: every function
//! is straight-line code over its arguments.

use cranelift_codegen::ir::{
    condcodes::FloatCC, types, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

/// `e^r ≈ 1 + r·P(r)` on `|r| ≤ ln2/2`; fit error 4.1e-9 relative.
pub(super) const EXP_P: [f32; 6] = [
    1.0,
    0.5,
    0.166_665_17,
    0.041_666_456,
    0.008_369_089,
    0.001_393_575_8,
];
/// `exp` clamps its argument to this range: `2^n` stays a normal number for `n = round(x·log2 e)`.
pub(super) const EXP_LO: f32 = -87.336_54;
pub(super) const EXP_HI: f32 = 88.376_26;
/// `ln 2 = LN2_HI − LN2_LO`, `LN2_HI` with 9 significant bits so `n·LN2_HI` is exact.
pub(super) const LN2_HI: f32 = 0.693_359_4;
pub(super) const LN2_LO: f32 = 2.121_944_4e-4;

/// `tanh x ≈ x + x³·Q(x²)` for `|x| < TANH_SMALL`; fit error 2.9e-9 relative.
const TANH_Q: [f32; 5] = [
    -0.333_333,
    0.133_319_4,
    -0.053_785_097,
    0.020_800_143,
    -0.005_899_897,
];
const TANH_SMALL: f32 = 0.6;

/// `erf z ≈ z·P(z²)` for `|z| < 1`; fit error 5.4e-8 relative (P(0) is the fitted value, one
/// f32 step below 2/√π).
#[allow(clippy::approx_constant)]
const ERF_P: [f32; 6] = [
    1.128_379_1,
    -0.376_122_92,
    0.112_799_816,
    -0.026_706_64,
    0.004_912_778,
    -0.000_561_377_6,
];
/// `erfc a · e^{a²} ≈ Q(t)`, `t = 1/(1 + a/2)`, fitted on `a ∈ [0.9, 9.3]`; fit error 8.0e-9
/// relative (degree 8; CPU-NOTES used degree 7 at 6.8e-8).
const ERFC_Q: [f32; 9] = [
    -7.188_856e-6,
    0.282_273_62,
    0.280_232_37,
    0.257_268_3,
    0.143_231_05,
    0.137_075_89,
    -0.016_295_92,
    -0.155_032_6,
    0.071_597_47,
];

/// Emits math at one type. `fma`: the target has fused multiply-add (else `mul` + `add`, so
/// no libcall); `x86`: use `x86_cvtt2dq` for the vector float→int conversion.
#[derive(Clone, Copy)]
pub(super) struct Math {
    pub ty: Type,
    pub fma: bool,
    pub x86: bool,
}

/// A lane mask: an all-ones/all-zeros `f32x4` for vectors, an `i8` flag for scalars.
#[derive(Clone, Copy)]
pub(super) struct Mask(Value);

impl Math {
    fn vector(self) -> bool {
        self.ty.is_vector()
    }

    /// A constant, broadcast at vector type.
    pub fn konst(self, b: &mut FunctionBuilder, v: f32) -> Value {
        let s = b.ins().f32const(v);
        self.splat(b, s)
    }

    /// A scalar f32 value at this type.
    pub fn splat(self, b: &mut FunctionBuilder, s: Value) -> Value {
        if self.vector() {
            b.ins().splat(self.ty, s)
        } else {
            s
        }
    }

    /// `a·x + c`, fused where the target can.
    pub fn mul_add(self, b: &mut FunctionBuilder, a: Value, x: Value, c: Value) -> Value {
        if self.fma {
            b.ins().fma(a, x, c)
        } else {
            let p = b.ins().fmul(a, x);
            b.ins().fadd(p, c)
        }
    }

    /// `Σ coeffs[k]·x^k` by Horner's rule.
    fn poly(self, b: &mut FunctionBuilder, x: Value, coeffs: &[f32]) -> Value {
        let (last, rest) = coeffs.split_last().expect("a polynomial has coefficients");
        let mut p = self.konst(b, *last);
        for &c in rest.iter().rev() {
            let c = self.konst(b, c);
            p = self.mul_add(b, p, x, c);
        }
        p
    }

    pub fn cmp(self, b: &mut FunctionBuilder, cc: FloatCC, x: Value, y: Value) -> Mask {
        let m = b.ins().fcmp(cc, x, y);
        if self.vector() {
            // Same lane count: no byte order needed.
            Mask(b.ins().bitcast(types::F32X4, MemFlagsData::new(), m))
        } else {
            Mask(m)
        }
    }

    /// `m ? x : y` lane by lane.
    pub fn select(self, b: &mut FunctionBuilder, m: Mask, x: Value, y: Value) -> Value {
        if self.vector() {
            b.ins().bitselect(m.0, x, y)
        } else {
            b.ins().select(m.0, x, y)
        }
    }

    /// `x < y ? x : y` (one `vminps`; a NaN in either operand gives `y`).
    pub fn min(self, b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
        let m = self.cmp(b, FloatCC::LessThan, x, y);
        self.select(b, m, x, y)
    }

    /// `y < x ? x : y` (one `vmaxps`; a NaN in either operand gives `y`).
    pub fn max(self, b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
        let m = self.cmp(b, FloatCC::LessThan, y, x);
        self.select(b, m, x, y)
    }

    /// Clamps `x` to `[lo, hi]`, letting NaN through (so `exp(NaN)` stays NaN).
    fn clamp(self, b: &mut FunctionBuilder, x: Value, lo: f32, hi: f32) -> Value {
        let lo = self.konst(b, lo);
        let hi = self.konst(b, hi);
        let below = self.cmp(b, FloatCC::LessThan, x, lo);
        let x = self.select(b, below, lo, x);
        // Both selects have the shape x64 turns into one `vmaxps` / `vminps` with `x` second,
        // the operand a NaN passes through.
        let above = self.cmp(b, FloatCC::LessThan, hi, x);
        self.select(b, above, hi, x)
    }

    /// `2^n` for integral `n` in `[-126, 127]` (NaN gives garbage, which the caller's NaN
    /// operand then overrides).
    fn pow2(self, b: &mut FunctionBuilder, n: Value) -> Value {
        if self.vector() {
            let i = if self.x86 {
                b.ins().x86_cvtt2dq(types::I32X4, n)
            } else {
                b.ins().fcvt_to_sint_sat(types::I32X4, n)
            };
            let bias = b.ins().iconst(types::I32, 127);
            let bias = b.ins().splat(types::I32X4, bias);
            let i = b.ins().iadd(i, bias);
            let i = b.ins().ishl_imm_u(i, 23);
            b.ins().bitcast(types::F32X4, MemFlagsData::new(), i)
        } else {
            let i = b.ins().fcvt_to_sint_sat(types::I32, n);
            let i = b.ins().iadd_imm_s(i, 127);
            let i = b.ins().ishl_imm_u(i, 23);
            b.ins().bitcast(types::F32, MemFlagsData::new(), i)
        }
    }

    /// `(s, t)` with `e^x ≈ s·(1 + t)`, `s = 2^n` a power of two, on `x` clamped to
    /// `[EXP_LO, EXP_HI]`.
    fn exp_parts(self, b: &mut FunctionBuilder, x: Value) -> (Value, Value, Value) {
        let xc = self.clamp(b, x, EXP_LO, EXP_HI);
        let log2e = self.konst(b, std::f32::consts::LOG2_E);
        let n = b.ins().fmul(xc, log2e);
        let n = b.ins().nearest(n);
        let hi = self.konst(b, -LN2_HI);
        let lo = self.konst(b, LN2_LO);
        let r = self.mul_add(b, n, hi, xc);
        let r = self.mul_add(b, n, lo, r);
        let p = self.poly(b, r, &EXP_P);
        let s = self.pow2(b, n);
        (s, r, p)
    }

    /// `e^x`: 1 ulp on `[EXP_LO, EXP_HI]`; below it (including −∞) exactly 0, above it +∞.
    pub fn exp(self, b: &mut FunctionBuilder, x: Value) -> Value {
        self.exp_times(b, x, None, true)
    }

    /// `e^x·m` (`m` or 1), exactly 0 for `x < EXP_LO` whatever `m` is (so `m = ∞` there gives
    /// 0, not NaN). `may_overflow`: `x` can exceed `EXP_HI` (then +∞); `false` skips that test.
    fn exp_times(
        self,
        b: &mut FunctionBuilder,
        x: Value,
        m: Option<Value>,
        may_overflow: bool,
    ) -> Value {
        let (s, r, p) = self.exp_parts(b, x);
        let one = self.konst(b, 1.0);
        let e = self.mul_add(b, r, p, one);
        let mut e = b.ins().fmul(e, s);
        if let Some(m) = m {
            e = b.ins().fmul(e, m);
        }
        let lo = self.konst(b, EXP_LO);
        let under = self.cmp(b, FloatCC::LessThan, x, lo);
        let zero = self.konst(b, 0.0);
        let e = self.select(b, under, zero, e);
        if !may_overflow {
            return e;
        }
        let hi = self.konst(b, EXP_HI);
        let over = self.cmp(b, FloatCC::GreaterThan, x, hi);
        let inf = self.konst(b, f32::INFINITY);
        self.select(b, over, inf, e)
    }

    /// `e^x − 1` without cancellation near 0: `s·t + (s − 1)`, exact in `s − 1` and with
    /// `t = r·P(r)`, `r = x` when `|x| < ln2/2`. Saturates at `2^127` above `EXP_HI`; −1 below
    /// `EXP_LO`. Used by ELU only, on `x ≤ 0`.
    fn expm1(self, b: &mut FunctionBuilder, x: Value) -> Value {
        let (s, r, p) = self.exp_parts(b, x);
        let t = b.ins().fmul(r, p);
        let one = self.konst(b, 1.0);
        let sm1 = b.ins().fsub(s, one);
        self.mul_add(b, s, t, sm1)
    }

    /// `1 / (1 + e^{-x})`.
    pub fn sigmoid(self, b: &mut FunctionBuilder, x: Value) -> Value {
        let nx = b.ins().fneg(x);
        let e = self.exp(b, nx);
        let one = self.konst(b, 1.0);
        let den = b.ins().fadd(one, e);
        b.ins().fdiv(one, den)
    }

    /// `x / (1 + e^{-x})`.
    pub fn silu(self, b: &mut FunctionBuilder, x: Value) -> Value {
        let nx = b.ins().fneg(x);
        let e = self.exp(b, nx);
        let one = self.konst(b, 1.0);
        let den = b.ins().fadd(one, e);
        b.ins().fdiv(x, den)
    }

    /// `x` for `x > 0`, `e^x − 1` otherwise.
    pub fn elu(self, b: &mut FunctionBuilder, x: Value) -> Value {
        let zero = self.konst(b, 0.0);
        let neg = self.min(b, x, zero);
        let em1 = self.expm1(b, neg);
        let pos = self.cmp(b, FloatCC::GreaterThan, x, zero);
        self.select(b, pos, x, em1)
    }

    /// `max(x, 0)`.
    pub fn relu(self, b: &mut FunctionBuilder, x: Value) -> Value {
        let zero = self.konst(b, 0.0);
        self.max(b, x, zero)
    }

    /// `x` with the sign of `sign` (`t` must be ≥ 0).
    fn with_sign_of(self, b: &mut FunctionBuilder, t: Value, sign: Value) -> Value {
        let m = self.konst(b, -0.0);
        let s = b.ins().band(sign, m);
        b.ins().bor(t, s)
    }

    /// `tanh x`: odd polynomial for `|x| < 0.6`, else `±(1 − e)/(1 + e)` with `e = e^{−2|x|}`.
    pub fn tanh(self, b: &mut FunctionBuilder, x: Value) -> Value {
        let a = b.ins().fabs(x);
        // Small branch.
        let x2 = b.ins().fmul(x, x);
        let q = self.poly(b, x2, &TANH_Q);
        let x3 = b.ins().fmul(x2, x);
        let small = self.mul_add(b, x3, q, x);
        // Large branch.
        let m2 = self.konst(b, -2.0);
        let ma = b.ins().fmul(a, m2);
        let e = self.exp(b, ma);
        let one = self.konst(b, 1.0);
        let num = b.ins().fsub(one, e);
        let den = b.ins().fadd(one, e);
        let t = b.ins().fdiv(num, den);
        let large = self.with_sign_of(b, t, x);
        let lim = self.konst(b, TANH_SMALL);
        let is_small = self.cmp(b, FloatCC::LessThan, a, lim);
        self.select(b, is_small, small, large)
    }

    /// GELU, tanh form: `0.5x(1 + tanh u) = x / (1 + e^{−2u})`, `u = √(2/π)(x + 0.044715x³)`.
    pub fn gelu_tanh(self, b: &mut FunctionBuilder, x: Value) -> Value {
        const K: f32 = 0.797_884_6; // √(2/π)
        let x2 = b.ins().fmul(x, x);
        let c = self.konst(b, 0.044_715);
        let one = self.konst(b, 1.0);
        let inner = self.mul_add(b, x2, c, one);
        let m2k = self.konst(b, -2.0 * K);
        let xk = b.ins().fmul(x, m2k);
        let m2u = b.ins().fmul(xk, inner);
        let e = self.exp(b, m2u);
        let den = b.ins().fadd(one, e);
        b.ins().fdiv(x, den)
    }

    /// GELU, erf form: `x·Φ(x)`, `Φ(x) = (1 + erf(x/√2))/2`. For `|z| < 1` (`z = x/√2`)
    /// through `erf z = z·P(z²)`; beyond through `erfc |z| = e^{−z²}·Q(t)`, so the negative
    /// tail does not cancel. `z² = x²/2` is taken exactly as `s + e` (`s = x²/2` rounded,
    /// `e` its FMA residual) and `e^{−z²} ≈ e^{−s}(1 − e)`: rounding `z` first would cost
    /// `z²·2⁻²³` relative error in the tail (4.6e-6 at x = −9, CPU-NOTES §2).
    ///
    /// Huge `|x|`: `s` overflows to +∞ from `|x| ≈ 2.6e19` (`x²` did from 1.84e19), where
    /// `e^{−s} = 0` but `1 − e = +∞`; their product is taken inside `exp_times`, whose
    /// underflow select makes it 0 rather than `0·∞ = NaN`, so GELU is `x` (or −0) there.
    pub fn gelu_erf(self, b: &mut FunctionBuilder, x: Value) -> Value {
        let rsqrt2 = self.konst(b, std::f32::consts::FRAC_1_SQRT_2);
        let z = b.ins().fmul(x, rsqrt2);
        let a = b.ins().fabs(z);
        let half = self.konst(b, 0.5);
        let hx = b.ins().fmul(x, half);
        // (x/2)·x rounds exactly as (x·x)/2 (halving is exact), with one product less.
        let s = b.ins().fmul(hx, x);
        // |z| < 1: 0.5x + 0.5x·erf z.
        let p = self.poly(b, s, &ERF_P);
        let erf = b.ins().fmul(z, p);
        let small = self.mul_add(b, hx, erf, hx);
        // |z| ≥ 1: x·(1 − erfc/2) for x > 0, x·erfc/2 for x < 0.
        let one = self.konst(b, 1.0);
        let ns = b.ins().fneg(s);
        // e^{−s}·(1 − e), e = x²/2 − s exactly (the FMA's residual of s = (x/2)·x). Where s
        // overflows, 1 − e is +∞ and e^{−s} 0: `exp_times` makes that product 0. −s ≤ 0, so
        // e^{−s} cannot overflow.
        let one_m_e = self.fma.then(|| {
            let e = b.ins().fma(hx, x, ns);
            b.ins().fsub(one, e)
        });
        let ex = self.exp_times(b, ns, one_m_e, false);
        let two = self.konst(b, 2.0);
        let den = b.ins().fadd(two, a);
        let t = b.ins().fdiv(two, den);
        let q = self.poly(b, t, &ERFC_Q);
        let erfc = b.ins().fmul(ex, q);
        let half_erfc = b.ins().fmul(erfc, half);
        let upper = b.ins().fsub(one, half_erfc);
        let zero = self.konst(b, 0.0);
        let positive = self.cmp(b, FloatCC::LessThan, zero, x);
        let phi = self.select(b, positive, upper, half_erfc);
        let large = b.ins().fmul(x, phi);
        let is_small = self.cmp(b, FloatCC::LessThan, a, one);
        self.select(b, is_small, small, large)
    }

    /// Combines the four lanes of `v` with `op` (lanes swapped by `pshufd`-shaped shuffles)
    /// and returns lane 0 as a scalar.
    pub fn horizontal(
        b: &mut FunctionBuilder,
        v: Value,
        op: impl Fn(&mut FunctionBuilder, Value, Value) -> Value,
    ) -> Value {
        let mut v = v;
        for order in [[2u8, 3, 0, 1], [1, 0, 3, 2]] {
            let bytes: Vec<u8> = order
                .iter()
                .flat_map(|&l| (0..4).map(move |k| 4 * l + k))
                .collect();
            let imm = b.func.dfg.immediates.push(ConstantData::from(bytes));
            let le = MemFlagsData::new().with_endianness(Endianness::Little);
            let bv = b.ins().bitcast(types::I8X16, le, v);
            let sh = b.ins().shuffle(bv, bv, imm);
            let sh = b.ins().bitcast(types::F32X4, le, sh);
            v = op(b, v, sh);
        }
        b.ins().extractlane(v, 0)
    }
}
