//! The Hydra attention kernel (`lower`'s [`KernelKind::Hydra`]) on the CPU: two JIT row
//! programs ([`Hydra::kv_step`], [`Hydra::output_row`]) driven over tokens.
//!
//! * Non-causal: pass 1 accumulates `kv_b = Σ_t φ(K_t) ⊙ V_t` per batch, each thread over its
//!   own token range into its own partial sum (summed afterwards); pass 2 writes
//!   `out_t = φ(Q_t) ⊙ kv_b`, rows split across threads. Q, K and V are each read once.
//! * Causal: a chunked scan. Tokens are cut into chunks; the totals of every chunk but the
//!   last are summed in parallel (reading K and V), turned into each chunk's starting prefix,
//!   then every chunk runs the running sum `acc += φ(K_t) ⊙ V_t; out_t = φ(Q_t) ⊙ acc` from its
//!   prefix, in parallel.
//!
//! Q, K and V are read in place as strided rows ([`RowView`]), usually of one fused QKV
//! buffer. Every length is checked before any row is touched, and rows are cut from the
//! slices with bounds-checked indexing; the JIT row functions get only `d`-long slices
//! ([`RowKernel::run_row_in_place`] checks them again). Strided rows are prefetched a few rows
//! ahead (`prefetch`), as the hardware prefetchers lose them. Never: read a row outside its slice,
//! or decide what runs when (the executor's business).
//!
//! [`KernelKind::Hydra`]: attnopt_lower::KernelKind::Hydra

pub use attnopt_lower::{Hydra, RowView};
use rayon::prelude::*;

use crate::jit::{Arg, JitError, JitModule, RowKernel};

/// Below this many elements (`batch · tokens · d`) the kernel runs on the calling thread:
/// ≈ 10 µs of streaming, under the cost of waking a second thread (CPU-NOTES §4).
const PARALLEL_MIN_ELEMENTS: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HydraError {
    #[error(
        "Hydra operand {which} holds {got} elements, but {rows} rows of {d} at stride \
         {row_stride} from offset {offset} need {need}"
    )]
    OperandLen {
        which: &'static str,
        got: usize,
        rows: usize,
        d: usize,
        row_stride: usize,
        offset: usize,
        need: usize,
    },
    #[error("Hydra output holds {got} elements, expected {expected}")]
    OutputLen { got: usize, expected: usize },
    #[error("Hydra shape {batch}×{tokens}×{d} overflows")]
    Overflow {
        batch: usize,
        tokens: usize,
        d: usize,
    },
    #[error(transparent)]
    Jit(#[from] JitError),
}

/// A compiled Hydra kernel for one shape.
pub struct HydraKernel {
    spec: Hydra,
    kv_step: RowKernel,
    output_row: RowKernel,
}

impl std::fmt::Debug for HydraKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HydraKernel")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl HydraKernel {
    /// Compiles the two row programs of `spec` (≈ 1 ms).
    pub fn compile(jit: &mut JitModule, spec: &Hydra) -> Result<HydraKernel, JitError> {
        Ok(HydraKernel {
            spec: spec.clone(),
            kv_step: jit.compile(&spec.kv_step())?,
            output_row: jit.compile(&spec.output_row())?,
        })
    }

    pub fn spec(&self) -> &Hydra {
        &self.spec
    }

    /// Runs the kernel: `q`, `k`, `v` are the values holding the operands (read through the
    /// spec's [`RowView`]s; they may be the same buffer), `out` is `batch × tokens × d`.
    /// Splits the work across the current rayon pool when it is large enough (call it inside
    /// the runtime's `ThreadPool::install`).
    pub fn run(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) -> Result<(), HydraError> {
        let s = &self.spec;
        let overflow = HydraError::Overflow {
            batch: s.batch,
            tokens: s.tokens,
            d: s.d,
        };
        let rows = s.batch.checked_mul(s.tokens).ok_or(overflow)?;
        let expected = rows.checked_mul(s.d).ok_or(HydraError::Overflow {
            batch: s.batch,
            tokens: s.tokens,
            d: s.d,
        })?;
        if out.len() != expected {
            return Err(HydraError::OutputLen {
                got: out.len(),
                expected,
            });
        }
        for (which, x, view) in [
            ("Q", q, s.views[0]),
            ("K", k, s.views[1]),
            ("V", v, s.views[2]),
        ] {
            check_operand(which, x, view, rows, s.d)?;
        }
        if rows == 0 || s.d == 0 {
            return Ok(());
        }
        let threads = rayon::current_num_threads();
        let parallel = threads > 1 && expected >= PARALLEL_MIN_ELEMENTS;
        let ops = Operands { q, k, v };
        if s.causal {
            self.causal(&ops, out, if parallel { threads * 4 } else { 1 })
        } else {
            self.full(&ops, out, if parallel { threads * 2 } else { 1 })
        }
    }

    /// Non-causal: per-batch `kv` from per-chunk partial sums, then the output rows.
    fn full(&self, x: &Operands, out: &mut [f32], chunks: usize) -> Result<(), HydraError> {
        let s = &self.spec;
        let d = s.d;
        let per_batch = chunks.div_ceil(s.batch).clamp(1, s.tokens);
        let tpc = s.tokens.div_ceil(per_batch);
        let items: Vec<(usize, usize)> = (0..s.batch)
            .flat_map(|b| (0..s.tokens.div_ceil(tpc)).map(move |c| (b, c)))
            .collect();
        let partials = items
            .par_iter()
            .map(|&(b, c)| {
                let mut acc = vec![0f32; d];
                let first = b * s.tokens + c * tpc;
                let last = b * s.tokens + ((c + 1) * tpc).min(s.tokens);
                for r in first..last {
                    self.accumulate(x, r, &mut acc)?;
                }
                Ok((b, acc))
            })
            .collect::<Result<Vec<_>, JitError>>()?;
        let mut kv = vec![0f32; s.batch * d];
        for (b, acc) in partials {
            for (o, a) in kv[b * d..(b + 1) * d].iter_mut().zip(&acc) {
                *o += a;
            }
        }
        let rows_per_chunk = (s.batch * s.tokens).div_ceil(chunks).max(1);
        out.par_chunks_mut(rows_per_chunk * d)
            .enumerate()
            .try_for_each(|(c, o)| {
                for (j, row) in o.chunks_exact_mut(d).enumerate() {
                    let r = c * rows_per_chunk + j;
                    let b = r / s.tokens;
                    self.write(x, r, &kv[b * d..(b + 1) * d], row)?;
                }
                Ok::<(), JitError>(())
            })?;
        Ok(())
    }

    /// Causal: a chunked scan over tokens (see the module docs).
    fn causal(&self, x: &Operands, out: &mut [f32], chunks: usize) -> Result<(), HydraError> {
        let s = &self.spec;
        let d = s.d;
        let per_batch = chunks.div_ceil(s.batch).clamp(1, s.tokens);
        let tpc = s.tokens.div_ceil(per_batch);
        let n_chunks = s.tokens.div_ceil(tpc);
        // Totals of every chunk but each batch's last.
        let items: Vec<(usize, usize)> = (0..s.batch)
            .flat_map(|b| (0..n_chunks - 1).map(move |c| (b, c)))
            .collect();
        let totals = items
            .par_iter()
            .map(|&(b, c)| {
                let mut acc = vec![0f32; d];
                let first = b * s.tokens + c * tpc;
                for r in first..first + tpc {
                    self.accumulate(x, r, &mut acc)?;
                }
                Ok(acc)
            })
            .collect::<Result<Vec<_>, JitError>>()?;
        // Each chunk's starting prefix, and its slice of the output.
        let mut work: Vec<(usize, Vec<f32>, &mut [f32])> = Vec::with_capacity(s.batch * n_chunks);
        for (b, o) in out.chunks_mut(s.tokens * d).enumerate() {
            let mut prefix = vec![0f32; d];
            for (c, piece) in o.chunks_mut(tpc * d).enumerate() {
                work.push((b * s.tokens + c * tpc, prefix.clone(), piece));
                if c + 1 < n_chunks {
                    let t = &totals[b * (n_chunks - 1) + c];
                    for (p, x) in prefix.iter_mut().zip(t) {
                        *p += x;
                    }
                }
            }
        }
        work.into_par_iter()
            .try_for_each(|(first, mut acc, piece)| {
                for (j, row) in piece.chunks_exact_mut(d).enumerate() {
                    self.accumulate(x, first + j, &mut acc)?;
                    self.write(x, first + j, &acc, row)?;
                }
                Ok::<(), JitError>(())
            })?;
        Ok(())
    }

    /// `acc += φ(K_r) ⊙ V_r`.
    fn accumulate(&self, x: &Operands, r: usize, acc: &mut [f32]) -> Result<(), JitError> {
        let (d, [_, kv, vv]) = (self.spec.d, self.spec.views);
        prefetch(x.k, kv, r + PREFETCH_ROWS, d);
        prefetch(x.v, vv, r + PREFETCH_ROWS, d);
        self.kv_step.run_row_in_place(
            &[
                Arg::Data(row(x.k, kv, r, d)),
                Arg::Data(row(x.v, vv, r, d)),
                Arg::Out,
            ],
            acc,
            d,
            &[],
        )
    }

    /// `out_row = φ(Q_r) ⊙ kv`.
    fn write(
        &self,
        x: &Operands,
        r: usize,
        kv: &[f32],
        out_row: &mut [f32],
    ) -> Result<(), JitError> {
        let d = self.spec.d;
        prefetch(x.q, self.spec.views[0], r + PREFETCH_ROWS, d);
        self.output_row.run_row_in_place(
            &[Arg::Data(row(x.q, self.spec.views[0], r, d)), Arg::Data(kv)],
            out_row,
            d,
            &[],
        )
    }
}

struct Operands<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

/// Row `r` of an operand (bounds-checked; [`check_operand`] makes it never fail).
fn row(x: &[f32], view: RowView, r: usize, d: usize) -> &[f32] {
    let start = r * view.row_stride + view.offset;
    &x[start..start + d]
}

/// Rows fetched ahead of the one being computed (see [`prefetch`]).
const PREFETCH_ROWS: usize = 8;

/// Asks the cache to fetch row `r` of an operand, if it exists. Strided rows (Q, K and V of a
/// fused `[N, 3D]` buffer: 3 KB read, 6 KB skipped) defeat the hardware stream prefetchers.
fn prefetch(x: &[f32], view: RowView, r: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    if view.row_stride != d {
        let start = r
            .saturating_mul(view.row_stride)
            .saturating_add(view.offset);
        if let Some(row) = x.get(start..start.saturating_add(d)) {
            for line in row.chunks(16) {
                // SAFETY: a prefetch reads nothing into the program and never faults; the
                // address is inside `x` anyway.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        line.as_ptr() as *const i8,
                    )
                };
            }
        }
    }
}

fn check_operand(
    which: &'static str,
    x: &[f32],
    view: RowView,
    rows: usize,
    d: usize,
) -> Result<(), HydraError> {
    let need = view.needed_len(rows, d);
    if need.is_none_or(|n| n > x.len()) {
        return Err(HydraError::OperandLen {
            which,
            got: x.len(),
            rows,
            d,
            row_stride: view.row_stride,
            offset: view.offset,
            need: need.unwrap_or(usize::MAX),
        });
    }
    Ok(())
}
