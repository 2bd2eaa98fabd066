//! Shared by the JIT tests: f64 special functions, and an evaluator of row programs that
//! returns, with each value, a bound on the error an f32 implementation may have.
#![allow(dead_code)]

use attnopt_cpu::jit::{BinaryOp, Expr, InputKind, ReduceKind, RowProgram, UnaryOp};

/// erf in f64: Taylor series below 2.5, 1 − erfc (continued fraction) above; ~1e-13 relative.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a < 2.5 {
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -a * a / n;
            let t = term / (2.0 * n + 1.0);
            sum += t;
            if t.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        (2.0 / std::f64::consts::PI.sqrt() * sum).copysign(x)
    } else {
        (1.0 - erfc_cf(a)).copysign(x)
    }
}

/// erfc(x) for x ≥ 2.5 by Lentz's continued fraction.
fn erfc_cf(x: f64) -> f64 {
    // erfc x = e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
    let tiny = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0;
    for k in 1..300 {
        let a = k as f64 / 2.0;
        d = x + a * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = x + a / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

/// erfc for any x, without cancellation for large positive x.
pub fn erfc(x: f64) -> f64 {
    if x >= 2.5 {
        erfc_cf(x)
    } else {
        1.0 - erf(x)
    }
}

pub fn gelu(x: f64) -> f64 {
    // 0.5x(1 + erf(x/√2)) = 0.5x·erfc(−x/√2).
    0.5 * x * erfc(-x / std::f64::consts::SQRT_2)
}

pub fn gelu_tanh(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    // 0.5x(1 + tanh u) = x / (1 + e^{−2u}), free of cancellation.
    x / (1.0 + (-2.0 * u).exp())
}

pub fn unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Square => x * x,
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Elu => {
            if x > 0.0 {
                x
            } else {
                x.exp_m1()
            }
        }
        UnaryOp::Gelu => gelu(x),
        UnaryOp::GeluTanh => gelu_tanh(x),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Abs => x.abs(),
    }
}

pub const ALL_UNARY: [UnaryOp; 13] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Sqrt,
    UnaryOp::Recip,
    UnaryOp::Square,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Elu,
    UnaryOp::Gelu,
    UnaryOp::GeluTanh,
    UnaryOp::Silu,
    UnaryOp::Abs,
];

pub const ALL_BINARY: [BinaryOp; 6] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
];

/// f32 unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// A value and a bound on an f32 implementation's error; `err = ∞` where no bound is claimed
/// (NaN, overflow, a singularity within the error).
#[derive(Clone, Copy, Debug)]
pub struct Approx {
    pub v: f64,
    pub err: f64,
}

impl Approx {
    fn exact(v: f64) -> Self {
        Approx { v, err: 0.0 }
    }
    fn unchecked(v: f64) -> Self {
        Approx {
            v,
            err: f64::INFINITY,
        }
    }
    pub fn checked(&self) -> bool {
        self.err.is_finite() && self.v.is_finite()
    }
    /// Adds the rounding/approximation error `rel` of a result and marks overflow.
    fn rounded(v: f64, err: f64, rel: f64, abs: f64) -> Self {
        let err = err + rel * v.abs() + abs;
        if !v.is_finite() || !err.is_finite() || v.abs() + err > 1e37 {
            Approx::unchecked(v)
        } else {
            Approx { v, err }
        }
    }
}

/// The JIT's documented accuracy per function: (relative, absolute), generous by ~2×.
fn budget(op: UnaryOp) -> (f64, f64) {
    match op {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => (0.0, 0.0),
        UnaryOp::Sqrt | UnaryOp::Recip | UnaryOp::Square => (U, 0.0),
        UnaryOp::Exp => (4.0 * U, 2e-38),
        UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Elu => (10.0 * U, 1e-37),
        // Below x = −88.38 SiLU gives −0 for x·e^x (at most 3.6e-37 in magnitude).
        UnaryOp::Silu => (10.0 * U, 4e-37),
        UnaryOp::Gelu | UnaryOp::GeluTanh => (1e-5, 1e-6),
    }
}

/// Largest |f'| of each function (for propagating an input error), where finite everywhere.
fn lipschitz(op: UnaryOp) -> f64 {
    match op {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Tanh | UnaryOp::Elu => 1.0,
        UnaryOp::Sigmoid => 0.25,
        UnaryOp::Silu => 1.1,
        UnaryOp::Gelu | UnaryOp::GeluTanh => 1.13,
        UnaryOp::Exp | UnaryOp::Sqrt | UnaryOp::Recip | UnaryOp::Square => f64::NAN,
    }
}

pub fn eval_unary(op: UnaryOp, a: Approx) -> Approx {
    if !a.checked() {
        return Approx::unchecked(unary(op, a.v));
    }
    let (x, e) = (a.v, a.err);
    let v = unary(op, x);
    let (rel, abs) = budget(op);
    let propagated = match op {
        UnaryOp::Exp => {
            if x + e > 88.0 {
                return Approx::unchecked(v);
            }
            v * e.exp_m1()
        }
        UnaryOp::Sqrt => {
            if x - e < 0.0 {
                return Approx::unchecked(v);
            }
            (x + e).sqrt() - (x - e).sqrt()
        }
        UnaryOp::Recip => {
            if x.abs() <= e * 1.01 {
                return Approx::unchecked(v);
            }
            e / ((x.abs() - e) * x.abs())
        }
        UnaryOp::Square => 2.0 * x.abs() * e + e * e,
        _ => lipschitz(op) * e,
    };
    // An approximation's relative error applies to the value at the perturbed input too.
    let mag = v.abs() + propagated;
    Approx::rounded(v, propagated, 0.0, rel * mag + abs)
}

pub fn eval_binary(op: BinaryOp, a: Approx, b: Approx) -> Approx {
    let v = match op {
        BinaryOp::Add => a.v + b.v,
        BinaryOp::Sub => a.v - b.v,
        BinaryOp::Mul => a.v * b.v,
        BinaryOp::Div => a.v / b.v,
        BinaryOp::Max => a.v.max(b.v),
        BinaryOp::Min => a.v.min(b.v),
    };
    if !a.checked() || !b.checked() {
        return Approx::unchecked(v);
    }
    let (ea, eb) = (a.err, b.err);
    let (ma, mb) = (a.v.abs(), b.v.abs());
    match op {
        BinaryOp::Add | BinaryOp::Sub => Approx::rounded(v, ea + eb, U, U * (ea + eb)),
        BinaryOp::Mul => Approx::rounded(
            v,
            ma * eb + mb * ea + ea * eb,
            U,
            U * (ma * eb + mb * ea + ea * eb),
        ),
        BinaryOp::Div => {
            if mb <= eb * 1.01 {
                return Approx::unchecked(v);
            }
            let den = mb - eb;
            let prop = (ea + v.abs() * eb) / den;
            Approx::rounded(v, prop, 0.0, U * (ma + ea) / den)
        }
        BinaryOp::Max | BinaryOp::Min => Approx::rounded(v, ea.max(eb), 0.0, 0.0),
    }
}

/// `e` at one column: `at(i)` is input `i`'s value there.
pub fn eval_expr(
    e: &Expr,
    at: &dyn Fn(usize) -> f32,
    reduced: &[Approx],
    params: &[f32],
) -> Approx {
    match e {
        Expr::Input(i) => Approx::exact(at(*i) as f64),
        Expr::Const(c) => Approx::exact(*c as f64),
        Expr::Param(p) => Approx::exact(params[*p] as f64),
        Expr::Reduced(k) => reduced[*k],
        Expr::Unary(op, a) => eval_unary(*op, eval_expr(a, at, reduced, params)),
        Expr::Binary(op, a, b) => eval_binary(
            *op,
            eval_expr(a, at, reduced, params),
            eval_expr(b, at, reduced, params),
        ),
    }
}

/// One row of `p` with error bounds (the semantics of `RowProgram::eval_reference`).
/// `inputs[i]` is the row's slice of input `i`.
pub fn eval_row(
    p: &RowProgram,
    inputs: &[&[f32]],
    d: usize,
    valid: usize,
    params: &[f32],
) -> Vec<Approx> {
    let mut reduced: Vec<Approx> = Vec::new();
    for r in &p.reductions {
        let vals: Vec<Approx> = (0..valid)
            .map(|c| eval_expr(&r.expr, &|i| inputs[i][c], &reduced, params))
            .collect();
        let acc = match r.kind {
            ReduceKind::Sum => {
                if vals.iter().all(Approx::checked) {
                    let v: f64 = vals.iter().map(|a| a.v).sum();
                    let e: f64 = vals.iter().map(|a| a.err).sum();
                    let mag: f64 = vals.iter().map(|a| a.v.abs() + a.err).sum();
                    Approx::rounded(v, e, 0.0, valid as f64 * U * mag)
                } else {
                    Approx::unchecked(vals.iter().map(|a| a.v).sum())
                }
            }
            ReduceKind::Max => {
                let v = vals.iter().map(|a| a.v).fold(f64::NEG_INFINITY, f64::max);
                if valid == 0 {
                    Approx::exact(f64::NEG_INFINITY)
                } else if vals.iter().all(Approx::checked) {
                    Approx {
                        v,
                        err: vals.iter().map(|a| a.err).fold(0.0, f64::max),
                    }
                } else {
                    Approx::unchecked(v)
                }
            }
        };
        reduced.push(acc);
    }
    if p.zero_if_all_masked && (reduced[0].err.is_infinite() || reduced[0].v.is_nan()) {
        // Whether the row counts as all masked is itself unknown.
        return vec![Approx::unchecked(f64::NAN); d];
    }
    let all_masked = p.zero_if_all_masked && reduced[0].v == f64::NEG_INFINITY;
    (0..d)
        .map(|c| {
            if c >= valid || all_masked {
                Approx::exact(p.fill as f64)
            } else {
                eval_expr(&p.output, &|i| inputs[i][c], &reduced, params)
            }
        })
        .collect()
}

/// The row slices of whole-tensor inputs for row `r`.
pub fn row_slices<'a>(p: &RowProgram, inputs: &[&'a [f32]], d: usize, r: usize) -> Vec<&'a [f32]> {
    inputs
        .iter()
        .zip(&p.inputs)
        .map(|(s, k)| match *k {
            InputKind::Rows => &s[r * d..(r + 1) * d],
            InputKind::Vector => &s[..d],
            InputKind::GroupVector { rows_per_group } => {
                let g = r / rows_per_group;
                &s[g * d..(g + 1) * d]
            }
            InputKind::Cycle { period } => {
                let c = r % period;
                &s[c * d..(c + 1) * d]
            }
        })
        .collect()
}

/// A small deterministic generator (xorshift). Kept apart from `ir::rng` on purpose: the
/// regression cases in `jit_props.proptest-regressions` (and `gelu_of_huge_sum_is_finite`)
/// name seeds whose inputs come from exactly this sequence.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
