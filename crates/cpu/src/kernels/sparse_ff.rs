//! `KernelKind::SparseFf`: the sparse feed-forward core (docs/SPARSE.md) reading only the
//! chosen units: per row and block, the first maximum `u` of the block's logits, then
//! `out += relu(h · W1[:, u]) · W2[u, :]`. `W1` is kept transposed (`[units, d]`, made once per
//! weight and shared by every size's plan) so a unit's column is one contiguous row; `W2`'s
//! rows are read in place. Many rows: a band per thread, blocks outer, so a block's candidate
//! units stay in cache across the band. Fewer rows than threads (decoding): each thread takes
//! a share of the blocks and the partial outputs add.

use std::sync::Arc;

use attnopt_ir::WeightId;
use attnopt_lower::memory::storage_of;
use attnopt_lower::{Kernel, SparseFf, ValueKind};
use rayon::prelude::*;

use super::{Compiled, Compiler};
use crate::frame::Frame;
use crate::ops::first_max;
use crate::vecops::VecOps;

/// The kernel: its shapes, and `W1ᵀ` when `W1` is a weight (else transposed on each run).
struct SparseFfKernel {
    spec: SparseFf,
    w1t: Option<Arc<Vec<f32>>>,
    /// Row dot products and updates with this CPU's widest vectors.
    ops: VecOps,
}

pub(super) fn prepare(
    cx: &mut Compiler,
    l: &attnopt_lower::Lowered,
    k: &Kernel,
    spec: &SparseFf,
) -> Result<Box<dyn Compiled>, String> {
    let w1 = *k
        .inputs
        .get(SparseFf::W1)
        .ok_or("a sparse feed-forward kernel takes W1")?;
    let w1t = match l.values[storage_of(&l.values, w1)].kind {
        ValueKind::Weight(id) => Some(transposed(cx, id, spec)?),
        _ => None,
    };
    Ok(Box::new(SparseFfKernel {
        spec: spec.clone(),
        w1t,
        ops: VecOps::detect(),
    }))
}

/// `W1ᵀ` of weight `id`, made once.
fn transposed(cx: &mut Compiler, id: WeightId, s: &SparseFf) -> Result<Arc<Vec<f32>>, String> {
    if let Some(t) = cx.transposed.get(&id) {
        return Ok(t.clone());
    }
    let w = cx.weights.f32(id);
    let t = Arc::new(transpose(w, s.d, s.units)?);
    cx.transposed.insert(id, t.clone());
    Ok(t)
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>, String> {
    if w.len() != rows * cols {
        return Err(format!("W1 holds {} elements, not {rows}×{cols}", w.len()));
    }
    let mut t = vec![0f32; w.len()];
    for (r, row) in w.chunks_exact(cols.max(1)).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c * rows + r] = x;
        }
    }
    Ok(t)
}

impl Compiled for SparseFfKernel {
    fn run(&self, f: &Frame, k: &Kernel, _profile: bool) -> Result<f64, String> {
        let s = &self.spec;
        let input = |j: usize| -> Result<&[f32], String> {
            let v = k
                .inputs
                .get(j)
                .ok_or("a sparse feed-forward kernel lacks an input")?;
            f.f32(*v)
        };
        let (h, w1, w2) = (input(SparseFf::H)?, SparseFf::W1, input(SparseFf::W2)?);
        let w1 = k.inputs[w1];
        let computed;
        let logits: &[f32] = match s.controller {
            Some(rank) => {
                let m1 = input(SparseFf::LOGITS_OR_M1)?;
                let m2 = input(SparseFf::LOGITS_OR_M1 + 1)?;
                let mb = input(SparseFf::LOGITS_OR_M1 + 2)?;
                computed = self.controller(h, m1, m2, mb, rank)?;
                &computed
            }
            None => input(SparseFf::LOGITS_OR_M1)?,
        };
        let out = f.dst_f32(k.output)?;
        let fresh;
        let w1t: &[f32] = match &self.w1t {
            Some(t) => t,
            None => {
                fresh = transpose(f.f32(w1)?, s.d, s.units)?;
                &fresh
            }
        };
        let fits = s.block > 0
            && s.units.is_multiple_of(s.block)
            && h.len() == s.rows * s.d
            && logits.len() == s.rows * s.units
            && w1t.len() == s.d * s.units
            && w2.len() == s.units * s.d_out
            && out.len() == s.rows * s.d_out;
        if !fits {
            return Err(format!("sparse feed-forward operands do not fit {s:?}"));
        }
        let row = |r: usize, blocks: std::ops::Range<usize>, o: &mut [f32]| {
            let (hr, lr) = (
                &h[r * s.d..(r + 1) * s.d],
                &logits[r * s.units..(r + 1) * s.units],
            );
            // The chosen units first, so their weight rows can be fetched ahead of use (each is
            // a fresh stream the hardware prefetchers would only find late).
            let units: Vec<usize> = blocks
                .map(|b| b * s.block + first_max(&lr[b * s.block..(b + 1) * s.block]))
                .collect();
            for (i, &u) in units.iter().enumerate() {
                if let Some(&next) = units.get(i + AHEAD) {
                    prefetch(&w1t[next * s.d..(next + 1) * s.d]);
                    let w = s.w2_row(next);
                    prefetch(&w2[w * s.d_out..(w + 1) * s.d_out]);
                }
                let a = (self.ops.dot)(hr, &w1t[u * s.d..(u + 1) * s.d]);
                if a > 0.0 {
                    let w = s.w2_row(u);
                    (self.ops.axpy)(a, &w2[w * s.d_out..(w + 1) * s.d_out], o);
                }
            }
        };
        let blocks = s.blocks();
        let threads = rayon::current_num_threads().max(1);
        if s.rows >= threads || threads == 1 || s.d_out == 0 {
            // A band of rows per thread, blocks outer: a block's few candidate units (their
            // `W1ᵀ` and `W2` rows) stay in cache while every row of the band uses them, instead
            // of each row fetching its own units from memory.
            let band = s.rows.div_ceil(threads).max(1);
            out.par_chunks_mut(band * s.d_out.max(1))
                .enumerate()
                .for_each(|(t, o)| {
                    o.fill(0.0);
                    let n = o.len() / s.d_out.max(1);
                    for b in 0..blocks {
                        for (j, oj) in o.chunks_exact_mut(s.d_out.max(1)).take(n).enumerate() {
                            let r = t * band + j;
                            let lr = &logits[r * s.units + b * s.block..][..s.block];
                            let u = b * s.block + first_max(lr);
                            let a = (self.ops.dot)(
                                &h[r * s.d..(r + 1) * s.d],
                                &w1t[u * s.d..(u + 1) * s.d],
                            );
                            if a > 0.0 {
                                let w = s.w2_row(u);
                                (self.ops.axpy)(a, &w2[w * s.d_out..(w + 1) * s.d_out], oj);
                            }
                        }
                    }
                });
        } else {
            // Few rows: each thread takes a share of every row's blocks, then the shares add.
            let share = blocks.div_ceil(threads);
            for (r, o) in out.chunks_mut(s.d_out).enumerate() {
                let parts: Vec<Vec<f32>> = (0..threads)
                    .into_par_iter()
                    .map(|t| {
                        let mut p = vec![0f32; s.d_out];
                        row(r, t * share..((t + 1) * share).min(blocks), &mut p);
                        p
                    })
                    .collect();
                o.fill(0.0);
                for p in &parts {
                    (self.ops.axpy)(1.0, p, o);
                }
            }
        }
        Ok(0.0)
    }
}

impl SparseFfKernel {
    /// The logits of one row, `(h·m1)·m2 + mb`, as two vector-matrix products split between
    /// the threads (each streams its share of the weight once): `h·m1` by ranges of `h`'s
    /// entries (partial sums added), `·m2` by ranges of the output columns.
    fn controller(
        &self,
        h: &[f32],
        m1: &[f32],
        m2: &[f32],
        mb: &[f32],
        rank: usize,
    ) -> Result<Vec<f32>, String> {
        let (d, units) = (self.spec.d, self.spec.units);
        if self.spec.rows == 0 {
            return Ok(vec![]);
        }
        if self.spec.rows != 1
            || h.len() != d
            || m1.len() != d * rank
            || m2.len() != rank * units
            || mb.len() != units
        {
            return Err(format!(
                "sparse feed-forward controller operands do not fit {:?}",
                self.spec
            ));
        }
        let threads = rayon::current_num_threads().max(1);
        let share = d.div_ceil(threads).max(1);
        let low = (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut p = vec![0f32; rank];
                for i in (t * share).min(d)..((t + 1) * share).min(d) {
                    (self.ops.axpy)(h[i], &m1[i * rank..(i + 1) * rank], &mut p);
                }
                p
            })
            .reduce(
                || vec![0f32; rank],
                |mut a, b| {
                    (self.ops.axpy)(1.0, &b, &mut a);
                    a
                },
            );
        let mut logits = mb.to_vec();
        let cols = units.div_ceil(threads).max(1);
        logits
            .par_chunks_mut(cols)
            .enumerate()
            .for_each(|(t, out)| {
                let c0 = t * cols;
                for (r, &lr) in low.iter().enumerate() {
                    (self.ops.axpy)(lr, &m2[r * units + c0..r * units + c0 + out.len()], out);
                }
            });
        Ok(logits)
    }
}

/// How many chosen units ahead their weight rows are prefetched.
const AHEAD: usize = 8;

/// Asks the cache for every line of `x` (a hint: reads nothing into the program).
fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        // SAFETY: a prefetch never faults and the address is inside `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
}
