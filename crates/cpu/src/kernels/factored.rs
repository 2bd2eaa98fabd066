//! `KernelKind::Factored`: a factored product, `y[r, s, m] = Σ_d x[r, d]·G[s, d]·P[d, m]`.
//!
//! * One row (decoding): reading `G` (kept transposed, `[d, S]`, made once here) and `P` once:
//!   the threads split `d`, each adds `Σ_d (x_d·G[:, d]) ⊗ P[d, :]` into its own `S × M`
//!   partial sum (one register-blocked `VecOps::ger` over its rows), and the partial sums add.
//!   In bf16 precision `P` is read as bfloat16 (a copy made once per weight).
//! * More rows, with `G` and `P` weights: one dense product with the folded weight
//!   `W[d, s·M + m] = G[s, d]·P[d, m]`, made once per `(G, P)` and prepared for the
//!   matrix-product library (bf16 in bf16 precision): the gating pass and the narrow product
//!   become one full-width product. Otherwise row by row as above.

use std::sync::Arc;

use attnopt_lower::{Factored, Kernel, Lowered, FACTORED_ROWS};

use super::sparse_ff::bf16_copy;
use super::{split_sum, transpose, Compiled, Compiler};
use crate::frame::Frame;
use crate::matmul::{MatMut, MatRef, Precision, PreparedWeight};
use crate::vecops::VecOps;

struct FactoredKernel {
    spec: Factored,
    /// `G ⊗ P` as one `[d, S·M]` weight for the library, for more than one row.
    folded: Option<Arc<dyn PreparedWeight>>,
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
    let gid = weight(1).ok_or("a factored kernel's gating must be a weight")?;
    let g = cx.weights.f32(gid);
    let gt = transpose(g, spec.modules, spec.d)?;
    let folded = match weight(2) {
        Some(pid) if spec.rows > FACTORED_ROWS => Some(folded(cx, gid, pid, spec)?),
        _ => None,
    };
    let p_bf16 = match (cx.matmul.precision(), weight(2)) {
        (Precision::Bf16, Some(p)) => Some(bf16_copy(cx, p)),
        _ => None,
    };
    Ok(Box::new(FactoredKernel {
        spec: spec.clone(),
        folded,
        gt,
        p_bf16,
        ops: VecOps::detect(),
    }))
}

/// `W[i, s·M + m] = G[s, i]·P[i, m]` for the weights `(g, p)`, prepared for the library (made
/// once per pair).
fn folded(
    cx: &mut Compiler,
    g: attnopt_ir::WeightId,
    p: attnopt_ir::WeightId,
    s: &Factored,
) -> Result<Arc<dyn PreparedWeight>, String> {
    if let Some(w) = cx.sparse.folded.get(&(g, p)) {
        return Ok(Arc::clone(w));
    }
    let (d, ns, m) = (s.d, s.modules, s.module_dim);
    let (gv, pv) = (cx.weights.f32(g), cx.weights.f32(p));
    if gv.len() != ns * d || pv.len() != d * m {
        return Err(format!("factored weights do not fit {s:?}"));
    }
    let mut w = vec![0f32; d * ns * m];
    for (i, row) in w.chunks_exact_mut(ns * m).enumerate() {
        for (k, part) in row.chunks_exact_mut(m).enumerate() {
            let gk = gv[k * d + i];
            for (o, &x) in part.iter_mut().zip(&pv[i * m..(i + 1) * m]) {
                *o = gk * x;
            }
        }
    }
    let prepared: Arc<dyn PreparedWeight> = cx
        .matmul
        .prepare(MatRef::row_major(&w, d, ns * m))
        .map_err(|e| e.to_string())?
        .into();
    cx.sparse.folded.insert((g, p), Arc::clone(&prepared));
    Ok(prepared)
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
        if let Some(w) = &self.folded {
            return f
                .matmul
                .matmul_prepared(
                    MatRef::row_major(x, s.rows, d),
                    w.as_ref(),
                    MatMut::row_major(out, s.rows, ns * m),
                    false,
                )
                .map(|()| 0.0)
                .map_err(|e| e.to_string());
        }
        let ops = &self.ops;
        for (xr, o) in x
            .chunks_exact(d.max(1))
            .zip(out.chunks_exact_mut((ns * m).max(1)))
        {
            let sum = split_sum(ops, d, ns * m, |share, y| {
                // c[i, s] = x_i·G[s, i] for the share's rows, then y += cᵀ·P[share].
                let mut c = self.gt[share.start * ns..share.end * ns].to_vec();
                for (row, &xi) in c.chunks_exact_mut(ns).zip(&xr[share.clone()]) {
                    row.iter_mut().for_each(|g| *g *= xi);
                }
                match (&self.p_bf16, p32) {
                    (Some(p), _) => (ops.ger_bf16)(&c, ns, &p[share.start * m..share.end * m], y),
                    (None, Some(p)) => (ops.ger)(&c, ns, &p[share.start * m..share.end * m], y),
                    (None, None) => {}
                }
            });
            o.copy_from_slice(&sum);
        }
        Ok(0.0)
    }
}
