//! Row programs: fused work along the last axis of a tensor seen as `rows × d`.
//!
//! A row program is what a backend compiles into one kernel (the CPU backend with Cranelift):
//! elementwise expressions over its inputs, reductions over the row (sum, max) whose scalar
//! results later expressions may use, and one output per row. Reductions and the output cover
//! the row's first `valid` columns; the rest of the row is written `fill` (causal masking).
//!
//! [`RowProgram::eval_reference`] is the plain scalar meaning, used to test backends.

use serde::Serialize;

/// How kernel input `i` is addressed for row `r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InputKind {
    /// A full `rows × d` tensor.
    Rows,
    /// One vector of length `d` for every row (bias, γ, β).
    Vector,
    /// Vector `r / rows_per_group` of a `groups × d` tensor (a per-batch mask, a per-batch sum).
    GroupVector { rows_per_group: usize },
    /// Vector `r mod period` of a `period × d` tensor (a `[S, d]` weight under `[B, N, S, d]`
    /// rows: the sparse layers' gating vectors and module biases).
    Cycle { period: usize },
}

/// Elementwise functions (the ir's, plus what the lowering introduces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UnaryOp {
    Neg,
    Exp,
    Sqrt,
    Recip,
    Square,
    Tanh,
    Sigmoid,
    Relu,
    Elu,
    Gelu,
    GeluTanh,
    Silu,
    Abs,
}

impl UnaryOp {
    /// The ir function as one of these (`rsqrt` is two: `recip(sqrt(x))`).
    pub fn of(u: attnopt_ir::Unary) -> Option<UnaryOp> {
        use attnopt_ir::Unary as U;
        Some(match u {
            U::Neg => UnaryOp::Neg,
            U::Exp => UnaryOp::Exp,
            U::Sqrt => UnaryOp::Sqrt,
            U::Rsqrt => return None,
            U::Recip => UnaryOp::Recip,
            U::Square => UnaryOp::Square,
            U::Tanh => UnaryOp::Tanh,
            U::Sigmoid => UnaryOp::Sigmoid,
            U::Relu => UnaryOp::Relu,
            U::Elu => UnaryOp::Elu,
            U::Gelu => UnaryOp::Gelu,
            U::GeluTanh => UnaryOp::GeluTanh,
            U::Silu => UnaryOp::Silu,
        })
    }

    /// The function's value at `x` (f64 arithmetic): its reference meaning.
    pub fn apply(self, x: f64) -> f64 {
        match self {
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
            UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            UnaryOp::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            UnaryOp::Silu => x / (1.0 + (-x).exp()),
            UnaryOp::Abs => x.abs(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

/// An expression at one column of the row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Expr {
    Input(usize),
    Const(f32),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// The scalar result of reduction `k`.
    Reduced(usize),
    /// Per-call scalar parameter `p`.
    Param(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReduceKind {
    Sum,
    Max,
}

/// A reduction over the row's valid columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reduction {
    pub kind: ReduceKind,
    pub expr: Expr,
}

impl Reduction {
    pub fn sum(expr: Expr) -> Reduction {
        Reduction {
            kind: ReduceKind::Sum,
            expr,
        }
    }
}

/// One fused row kernel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowProgram {
    pub inputs: Vec<InputKind>,
    pub params: usize,
    /// In order; reduction `k` may use `Reduced(j)` for `j < k`.
    pub reductions: Vec<Reduction>,
    pub output: Expr,
    /// Written to columns at or past `valid`.
    pub fill: f32,
    /// Softmax safety: when true and reduction 0 is a `Max` that came out `-inf` (every valid
    /// entry masked), the whole row is written `fill` instead of NaN.
    pub zero_if_all_masked: bool,
}

impl RowProgram {
    /// `output` at every column, from `inputs`: no reductions, no parameters, `fill = 0`.
    pub fn elementwise(inputs: Vec<InputKind>, output: Expr) -> RowProgram {
        RowProgram {
            inputs,
            params: 0,
            reductions: vec![],
            output,
            fill: 0.0,
            zero_if_all_masked: false,
        }
    }

    /// The numerically safe softmax of `x` along the row, as the lowering emits it:
    /// `m = Max(x)`, `s = Sum(exp(x − m))`, output `exp(x − m) / s`, `fill = 0`, and a row
    /// with no unmasked valid entry written as zeros (`zero_if_all_masked`), never NaN.
    pub fn softmax(inputs: Vec<InputKind>, params: usize, x: Expr) -> RowProgram {
        let shifted = Expr::un(
            UnaryOp::Exp,
            Expr::bin(BinaryOp::Sub, x.clone(), Expr::Reduced(0)),
        );
        RowProgram {
            inputs,
            params,
            reductions: vec![
                Reduction {
                    kind: ReduceKind::Max,
                    expr: x,
                },
                Reduction::sum(shifted.clone()),
            ],
            output: Expr::bin(BinaryOp::Div, shifted, Expr::Reduced(1)),
            fill: 0.0,
            zero_if_all_masked: true,
        }
    }
}

impl Expr {
    pub fn input(i: usize) -> Expr {
        Expr::Input(i)
    }
    pub fn un(op: UnaryOp, a: Expr) -> Expr {
        Expr::Unary(op, Box::new(a))
    }
    pub fn bin(op: BinaryOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }
    /// `1 / sqrt(a)` (there is no rsqrt instruction to aim for).
    pub fn rsqrt(a: Expr) -> Expr {
        Expr::un(UnaryOp::Recip, Expr::un(UnaryOp::Sqrt, a))
    }

    /// Scalar value at column `c` (f64 arithmetic).
    fn eval(&self, at: &dyn Fn(usize) -> f64, reduced: &[f64], params: &[f32]) -> f64 {
        match self {
            Expr::Input(i) => at(*i),
            Expr::Const(c) => *c as f64,
            Expr::Reduced(k) => reduced[*k],
            Expr::Param(p) => params[*p] as f64,
            Expr::Unary(op, a) => op.apply(a.eval(at, reduced, params)),
            Expr::Binary(op, a, b) => {
                let (x, y) = (a.eval(at, reduced, params), b.eval(at, reduced, params));
                match op {
                    BinaryOp::Add => x + y,
                    BinaryOp::Sub => x - y,
                    BinaryOp::Mul => x * y,
                    BinaryOp::Div => x / y,
                    BinaryOp::Max => x.max(y),
                    BinaryOp::Min => x.min(y),
                }
            }
        }
    }
}

fn erf(x: f64) -> f64 {
    libm::erf(x)
}

impl RowProgram {
    /// The plain meaning of the program on one row: `inputs[i]` is the row's slice of input `i`
    /// (already selected for this row), `out` has length `d`.
    pub fn eval_reference(&self, inputs: &[&[f32]], out: &mut [f32], valid: usize, params: &[f32]) {
        let d = out.len();
        let valid = valid.min(d);
        let mut reduced: Vec<f64> = Vec::with_capacity(self.reductions.len());
        for r in &self.reductions {
            let mut acc = match r.kind {
                ReduceKind::Sum => 0.0,
                ReduceKind::Max => f64::NEG_INFINITY,
            };
            for c in 0..valid {
                let v = r.expr.eval(&|i| inputs[i][c] as f64, &reduced, params);
                acc = match r.kind {
                    ReduceKind::Sum => acc + v,
                    ReduceKind::Max => acc.max(v),
                };
            }
            reduced.push(acc);
        }
        let all_masked = self.zero_if_all_masked && reduced.first() == Some(&f64::NEG_INFINITY);
        for (c, o) in out.iter_mut().enumerate() {
            *o = if c >= valid || all_masked {
                self.fill
            } else {
                self.output.eval(&|i| inputs[i][c] as f64, &reduced, params) as f32
            };
        }
    }
}
