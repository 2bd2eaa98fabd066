//! `KernelKind::Factored`: a factored product at one row, `y[s, m] = Σ_d x_d·G[s, d]·P[d, m]`,
//! reading `G` (kept transposed, `[d, S]`, made once here) and `P` once: the threads split
//! `d`, each adds `Σ_d (x_d·G[:, d]) ⊗ P[d, :]` into its own `S × M` partial sum (one
//! register-blocked `VecOps::ger` over its rows), and the partial sums add. In bf16 precision `P` is read as bfloat16 (a copy made once per weight).

use std::sync::Arc;

use attnopt_lower::{Factored, Kernel, Lowered};

use super::sparse_ff::bf16_copy;
use super::{split_sum, transpose, Compiled, Compiler};
use crate::frame::Frame;
use crate::matmul::Precision;
use crate::vecops::VecOps;

struct FactoredKernel {
    spec: Factored,
    /// `Gᵀ` `[d, S]`.
    gt: Vec<f32>,
    /// `P` as bfloat16, in bf16 precision when it is a weight.
    p_bf16: Option<Arc<Vec<u16>>>,
    ops: VecOps,
}

pub(super) fn prepare(
    cx: &mut Compiler,
    l: &Lowered,
    k: &Kernel,
    spec: &Factored,
) -> Result<Box<dyn Compiled>, String> {
    let weight = |j: usize| super::weight_input(l, k, j);
    let g = weight(1).ok_or("a factored kernel's gating must be a weight")?;
    let g = cx.weights.f32(g);
    let gt = transpose(g, spec.modules, spec.d)?;
    let p_bf16 = match (cx.matmul.precision(), weight(2)) {
        (Precision::Bf16, Some(p)) => Some(bf16_copy(cx, p)),
        _ => None,
    };
    Ok(Box::new(FactoredKernel {
        spec: spec.clone(),
        gt,
        p_bf16,
        ops: VecOps::detect(),
    }))
}

impl Compiled for FactoredKernel {
    fn run(&self, f: &Frame, k: &Kernel, _profile: bool) -> Result<f64, String> {
        let s = &self.spec;
        let (d, ns, m) = (s.d, s.modules, s.module_dim);
        let x = f.f32(*k.inputs.first().ok_or("a factored kernel takes x")?)?;
        let p32 = match &self.p_bf16 {
            Some(_) => None,
            None => Some(f.f32(*k.inputs.get(2).ok_or("a factored kernel takes P")?)?),
        };
        let out = f.dst_f32(k.output)?;
        let p_len = self
            .p_bf16
            .as_ref()
            .map_or_else(|| p32.map_or(0, <[f32]>::len), |p| p.len());
        if x.len() != s.rows * d || out.len() != s.rows * ns * m || p_len != d * m {
            return Err(format!("factored operands do not fit {s:?}"));
        }
        if s.rows == 0 || out.is_empty() {
            return Ok(0.0);
        }
        let ops = &self.ops;
        let sum = split_sum(ops, d, ns * m, |share, y| {
            // c[i, s] = x_i·G[s, i] for the share's rows, then y += cᵀ·P[share].
            let mut c = self.gt[share.start * ns..share.end * ns].to_vec();
            for (row, &xi) in c.chunks_exact_mut(ns).zip(&x[share.clone()]) {
                row.iter_mut().for_each(|g| *g *= xi);
            }
            match (&self.p_bf16, p32) {
                (Some(p), _) => (ops.ger_bf16)(&c, ns, &p[share.start * m..share.end * m], y),
                (None, Some(p)) => (ops.ger)(&c, ns, &p[share.start * m..share.end * m], y),
                (None, None) => {}
            }
        });
        out.copy_from_slice(&sum);
        Ok(0.0)
    }
}
