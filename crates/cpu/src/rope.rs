//! Rotary position embeddings (RoPE, `ir`'s `Op::Rope`) on the CPU as JIT row programs.
//!
//! For [`RopeStyle::Half`] (Hugging Face's `rotate_half`), each row of `d` is two halves
//! `x₁ = x[..h]`, `x₂ = x[h..2h]` (`h = d / 2`; an odd last column passes through unchanged, as
//! in the interpreter) at position `t = row mod n`, and
//! `out₁ = x₁·cos − x₂·sin`, `out₂ = x₂·cos + x₁·sin`, with `cos`/`sin` of
//! `t · θ^(−2i/d)` from a table computed once per shape (in f64, rounded to f32). The two halves
//! are two compiled row programs, called once per half-row. [`RopeStyle::Interleaved`] (pairs
//! `2i, 2i+1`) is not a contiguous half-row and stays a native loop ([`crate::ops::rope`]).
//!
//! Every slice is cut with checked lengths before the JIT code sees it ([`RowKernel::run_row`]
//! checks them again).

use attnopt_ir::RopeStyle;
use attnopt_lower::row::{BinaryOp, Expr, InputKind, RowProgram};
use rayon::prelude::*;

use crate::jit::{JitError, JitModule, RowKernel};

/// Below this many elements the kernel runs on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 16 * 1024;

/// A compiled RoPE for `n` positions of `d` features.
pub struct RopeKernel {
    n: usize,
    d: usize,
    /// `cos`, `sin` of position `t`, pair `i` at `t·h + i`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    first: RowKernel,
    second: RowKernel,
}

/// `a·b ∓ c·e` over inputs `(x₁, x₂, cos, sin)`.
fn half_program(first: bool) -> RowProgram {
    let mul = |a, b| Expr::bin(BinaryOp::Mul, Expr::input(a), Expr::input(b));
    let output = if first {
        Expr::bin(BinaryOp::Sub, mul(0, 2), mul(1, 3))
    } else {
        Expr::bin(BinaryOp::Add, mul(1, 2), mul(0, 3))
    };
    RowProgram::elementwise(vec![InputKind::Rows; 4], output)
}

impl RopeKernel {
    /// Compiles RoPE of `style` over rows of `d` at `n` positions with base `theta`; `None`
    /// for the styles this kernel does not cover (see the module docs).
    pub fn compile(
        jit: &mut JitModule,
        style: RopeStyle,
        n: usize,
        d: usize,
        theta: f64,
    ) -> Result<Option<RopeKernel>, JitError> {
        if style != RopeStyle::Half {
            return Ok(None);
        }
        let h = d / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(n * h), Vec::with_capacity(n * h));
        for t in 0..n {
            for i in 0..h {
                let (s, c) = (t as f64 * theta.powf(-(2.0 * i as f64) / d as f64)).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Ok(Some(RopeKernel {
            n,
            d,
            cos,
            sin,
            first: jit.compile(&half_program(true))?,
            second: jit.compile(&half_program(false))?,
        }))
    }

    /// `out` = RoPE of `x`, both `rows × d` with `rows` a multiple of `n` (row `r` at position
    /// `r mod n`). Splits rows across the current rayon pool when large enough.
    pub fn run(&self, x: &[f32], out: &mut [f32]) -> Result<(), String> {
        let (n, d, h) = (self.n, self.d, self.d / 2);
        if x.is_empty() && out.is_empty() {
            return Ok(()); // zero tokens (or heads, or features): nothing to rotate
        }
        if x.len() != out.len() || d == 0 || n == 0 || x.len() % (n * d) != 0 {
            return Err(format!(
                "rope: {} input / {} output elements are not whole blocks of {n} positions × {d}",
                x.len(),
                out.len()
            ));
        }
        let row = |r: usize, xr: &[f32], o: &mut [f32]| -> Result<(), JitError> {
            let t = r % n;
            let (c, s) = (&self.cos[t * h..(t + 1) * h], &self.sin[t * h..(t + 1) * h]);
            let (x1, x2) = (&xr[..h], &xr[h..2 * h]);
            let (o1, rest) = o.split_at_mut(h);
            let (o2, tail) = rest.split_at_mut(h);
            self.first.run_row(&[x1, x2, c, s], o1, h, &[])?;
            self.second.run_row(&[x1, x2, c, s], o2, h, &[])?;
            tail.copy_from_slice(&xr[2 * h..]); // an odd last column is not rotated
            Ok(())
        };
        let rows = x.len() / d;
        let result = if rayon::current_num_threads() > 1 && x.len() >= PARALLEL_MIN_ELEMENTS {
            let per = rows.div_ceil(rayon::current_num_threads() * 2).max(1);
            out.par_chunks_mut(per * d)
                .zip(x.par_chunks(per * d))
                .enumerate()
                .try_for_each(|(c, (o, xs))| {
                    for (j, (oo, xr)) in o.chunks_exact_mut(d).zip(xs.chunks_exact(d)).enumerate() {
                        row(c * per + j, xr, oo)?;
                    }
                    Ok(())
                })
        } else {
            out.chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .enumerate()
                .try_for_each(|(r, (o, xr))| row(r, xr, o))
        };
        result.map_err(|e| e.to_string())
    }
}
