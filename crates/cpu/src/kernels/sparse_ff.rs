//! `KernelKind::SparseFf`: the sparse feed-forward core (docs/SPARSE.md) reading only the
//! chosen units: per row and block, the first maximum `u` of the block's logits, then
//! `out += act(h · W1[:, u] + b1[u]) · W2[u, :]` (ReLU and no `b1` in trax). `W1` is kept transposed (`[units, d]`, made once per
//! weight and shared by every size's plan) so a unit's column is one contiguous row; `W2`'s
//! rows are read in place. Many rows: a band per thread, blocks outer, so a block's candidate
//! units stay in cache across the band. Fewer rows than threads (decoding): each thread takes
//! a share of the blocks and the partial outputs add.

use std::sync::Arc;

use attnopt_ir::WeightId;
use attnopt_lower::memory::storage_of;
use attnopt_lower::row::UnaryOp;
use attnopt_lower::{Kernel, SparseFf, ValueKind};
use rayon::prelude::*;

use super::{split_sum, transpose, Compiled, Compiler};
use crate::frame::Frame;
use crate::matmul::{bf16, Precision};
use crate::ops::first_max;
use crate::vecops::VecOps;

/// The kernel: its shapes, and `W1ᵀ` when `W1` is a weight (else transposed on each run).
struct SparseFfKernel {
    spec: SparseFf,
    w1t: Option<Arc<Vec<f32>>>,
    /// In bf16 precision, with `W1` and `W2` weights: per unit `u` (in unit order) `W1[:, u]`
    /// then `u`'s row of `W2`, as bfloat16 (half the bytes, one contiguous read per unit).
    unit_rows: Option<Arc<Vec<u16>>>,
    /// In bf16 precision, the controller's `m1` and `m2` as bfloat16, when they are weights.
    controller_bf16: Option<[Arc<Vec<u16>>; 2]>,
    /// Row dot products and updates with this CPU's widest vectors.
    ops: VecOps,
}

/// A matrix a kernel reads: f32, or bfloat16 bit patterns (the row product's).
type Mat<'a> = crate::gemv::Rows<'a>;

/// Asks the cache for `m[range]`.
fn prefetch_rows(m: &Mat, range: std::ops::Range<usize>) {
    match m {
        Mat::F32(x) => prefetch(&x[range]),
        Mat::Bf16(x) => prefetch(&x[range]),
    }
}

/// Where a chosen unit's two rows are: `W1ᵀ` and `W2` (f32), or one bf16 row of both.
struct Units<'a> {
    w1: Mat<'a>,
    w2: Mat<'a>,
    /// Element offsets: unit `u`'s `W1` row at `u·stride1`, its `W2` row at
    /// `w2_row(u)·stride2 + off2`.
    stride1: usize,
    stride2: usize,
    off2: usize,
    /// Whether `W2` rows are found by unit (bf16 rows, already in unit order) or through
    /// `w2_row`.
    by_unit: bool,
}

impl Units<'_> {
    fn w1(&self, s: &SparseFf, u: usize) -> std::ops::Range<usize> {
        u * self.stride1..u * self.stride1 + s.d
    }

    fn w2(&self, s: &SparseFf, u: usize) -> std::ops::Range<usize> {
        let r = if self.by_unit { u } else { s.w2_row(u) };
        r * self.stride2 + self.off2..r * self.stride2 + self.off2 + s.d_out
    }
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
    let weight = |j: usize| super::weight_input(l, k, j);
    let bf16 = cx.matmul.precision() == Precision::Bf16;
    let unit_rows = match (bf16, w1t.as_ref(), weight(SparseFf::W2)) {
        (true, Some(w1t), Some(w2)) => Some(unit_rows(cx, w1t, w2, spec)?),
        _ => None,
    };
    let controller_bf16 = match (bf16, spec.controller) {
        (true, Some(_)) => match (
            weight(SparseFf::LOGITS_OR_M1),
            weight(SparseFf::LOGITS_OR_M1 + 1),
        ) {
            (Some(m1), Some(m2)) => Some([bf16_copy(cx, m1), bf16_copy(cx, m2)]),
            _ => None,
        },
        _ => None,
    };
    Ok(Box::new(SparseFfKernel {
        spec: spec.clone(),
        w1t,
        unit_rows,
        controller_bf16,
        ops: VecOps::detect(),
    }))
}

/// Per unit, `W1[:, u]` then `u`'s `W2` row, rounded to bfloat16 (made once per weight pair).
fn unit_rows(
    cx: &mut Compiler,
    w1t: &[f32],
    w2: WeightId,
    s: &SparseFf,
) -> Result<Arc<Vec<u16>>, String> {
    let key = (w2, s.w2_layout == attnopt_lower::W2Layout::BlockSwapped);
    if let Some(t) = cx.sparse.unit_rows.get(&key) {
        return Ok(t.clone());
    }
    let w2v = cx.weights.f32(w2);
    if w1t.len() != s.units * s.d || w2v.len() != s.units * s.d_out {
        return Err(format!("sparse feed-forward weights do not fit {s:?}"));
    }
    let width = s.d + s.d_out;
    let mut rows = vec![0u16; s.units * width];
    for (u, row) in rows.chunks_exact_mut(width.max(1)).enumerate() {
        let w = s.w2_row(u);
        let (a, b) = row.split_at_mut(s.d);
        for (o, &x) in a.iter_mut().zip(&w1t[u * s.d..(u + 1) * s.d]) {
            *o = bf16::from_f32(x);
        }
        for (o, &x) in b.iter_mut().zip(&w2v[w * s.d_out..(w + 1) * s.d_out]) {
            *o = bf16::from_f32(x);
        }
    }
    let rows = Arc::new(rows);
    cx.sparse.unit_rows.insert(key, rows.clone());
    Ok(rows)
}

/// Weight `id` rounded to bfloat16 (made once per weight).
pub(super) fn bf16_copy(cx: &mut Compiler, id: WeightId) -> Arc<Vec<u16>> {
    if let Some(t) = cx.sparse.bf16_copies.get(&id) {
        return t.clone();
    }
    let t: Arc<Vec<u16>> = Arc::new(match cx.weights.bf16(id) {
        Some(bits) => bits.to_vec(),
        None => cx
            .weights
            .f32(id)
            .iter()
            .map(|&x| bf16::from_f32(x))
            .collect(),
    });
    cx.sparse.bf16_copies.insert(id, t.clone());
    t
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
        let h = input(SparseFf::H)?;
        let computed;
        let logits: &[f32] = match s.controller {
            Some(rank) => {
                let mb = input(SparseFf::LOGITS_OR_M1 + 2)?;
                let [m1, m2] = match &self.controller_bf16 {
                    Some([a, b]) => [Mat::Bf16(a), Mat::Bf16(b)],
                    None => [
                        Mat::F32(input(SparseFf::LOGITS_OR_M1)?),
                        Mat::F32(input(SparseFf::LOGITS_OR_M1 + 1)?),
                    ],
                };
                computed = self.controller(h, m1, m2, mb, rank)?;
                &computed
            }
            None => input(SparseFf::LOGITS_OR_M1)?,
        };
        let out = f.dst_f32(k.output)?;
        let fresh;
        let units = match &self.unit_rows {
            Some(rows) => Units {
                w1: Mat::Bf16(rows),
                w2: Mat::Bf16(rows),
                stride1: s.d + s.d_out,
                stride2: s.d + s.d_out,
                off2: s.d,
                by_unit: true,
            },
            None => {
                let w1t: &[f32] = match &self.w1t {
                    Some(t) => t,
                    None => {
                        fresh = transpose(input(SparseFf::W1)?, s.d, s.units)?;
                        &fresh
                    }
                };
                Units {
                    w1: Mat::F32(w1t),
                    w2: Mat::F32(input(SparseFf::W2)?),
                    stride1: s.d,
                    stride2: s.d_out,
                    off2: 0,
                    by_unit: false,
                }
            }
        };
        let weights_fit = match &self.unit_rows {
            Some(rows) => rows.len() == s.units * (s.d + s.d_out),
            None => units.w1.len() == s.d * s.units && units.w2.len() == s.units * s.d_out,
        };
        let fits = s.block > 0
            && s.units.is_multiple_of(s.block)
            && h.len() == s.rows * s.d
            && logits.len() == s.rows * s.units
            && weights_fit
            && out.len() == s.rows * s.d_out;
        if !fits {
            return Err(format!("sparse feed-forward operands do not fit {s:?}"));
        }
        let b1 = match s.b1() {
            Some(j) => Some(input(j)?).filter(|b| b.len() == s.units),
            None => None,
        };
        if s.bias && b1.is_none() {
            return Err(format!("sparse feed-forward bias does not fit {s:?}"));
        }
        let ops = &self.ops;
        // One chosen unit of one row: `o += act(h · W1[:, u] + b1[u]) · W2[u, :]`.
        let apply = |hr: &[f32], u: usize, o: &mut [f32]| {
            let z = units.w1.dot(ops, hr, units.w1(s, u)) + b1.map_or(0.0, |b| b[u]);
            let a = match s.act {
                UnaryOp::Relu => z.max(0.0),
                f => f.apply(z as f64) as f32,
            };
            if a != 0.0 {
                units.w2.axpy(ops, a, units.w2(s, u), o);
            }
        };
        let row = |r: usize, blocks: std::ops::Range<usize>, o: &mut [f32]| {
            let (hr, lr) = (
                &h[r * s.d..(r + 1) * s.d],
                &logits[r * s.units..(r + 1) * s.units],
            );
            // The chosen units first, so their weight rows can be fetched ahead of use (each is
            // a fresh stream the hardware prefetchers would only find late).
            let chosen: Vec<usize> = blocks
                .map(|b| b * s.block + first_max(&lr[b * s.block..(b + 1) * s.block]))
                .collect();
            for (i, &u) in chosen.iter().enumerate() {
                if let Some(&next) = chosen.get(i + AHEAD) {
                    prefetch_rows(&units.w1, units.w1(s, next));
                    prefetch_rows(&units.w2, units.w2(s, next));
                }
                apply(hr, u, o);
            }
        };
        let blocks = s.blocks();
        let threads = rayon::current_num_threads().max(1);
        if s.rows >= threads || threads == 1 || s.d_out == 0 {
            // A band of rows per thread, blocks outer: a block's few candidate units (their
            // weight rows) stay in cache while every row of the band uses them, instead of each
            // row fetching its own units from memory.
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
                            apply(&h[r * s.d..(r + 1) * s.d], u, oj);
                        }
                    }
                });
        } else {
            // Few rows: each thread takes a share of every row's blocks, then the shares add.
            for (r, o) in out.chunks_mut(s.d_out).enumerate() {
                o.copy_from_slice(&split_sum(ops, blocks, s.d_out, |b, p| row(r, b, p)));
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
        m1: Mat,
        m2: Mat,
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
        let low = split_sum(&self.ops, d, rank, |share, p| {
            for i in share {
                m1.axpy(&self.ops, h[i], i * rank..(i + 1) * rank, p);
            }
        });
        let threads = rayon::current_num_threads().max(1);
        let mut logits = mb.to_vec();
        let cols = units.div_ceil(threads).max(1);
        logits
            .par_chunks_mut(cols)
            .enumerate()
            .for_each(|(t, out)| {
                let c0 = t * cols;
                for (r, &lr) in low.iter().enumerate() {
                    m2.axpy(
                        &self.ops,
                        lr,
                        r * units + c0..r * units + c0 + out.len(),
                        out,
                    );
                }
            });
        Ok(logits)
    }
}

/// How many chosen units ahead their weight rows are prefetched.
const AHEAD: usize = 8;

/// Asks the cache for every 64-byte line of `x` (a hint: reads nothing into the program).
fn prefetch<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks((64 / std::mem::size_of::<T>().max(1)).max(1)) {
        // SAFETY: a prefetch never faults and the address is inside `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
}
