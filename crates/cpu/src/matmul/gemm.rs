//! [`GemmMatMul`]: matrix products through the pure-Rust `gemm` 0.19 crate.
//!
//! Always available. Built with gemm's `x86-v4` feature, it picks AVX-512 micro-kernels at run
//! time where the CPU has them, else AVX2/FMA ones. Facts it relies on (CPU-NOTES §3):
//! * `gemm::gemm` takes each operand's **column stride before its row stride**, and computes
//!   `dst := alpha·dst + beta·lhs·rhs` (the reverse of BLAS naming; `alpha` only matters when
//!   `read_dst` is true). We pass `alpha = beta = 1` and `read_dst = accumulate`.
//! * `Parallelism::Rayon(n)` runs on the *current* rayon pool; small products run with
//!   `Parallelism::None`, where the fork/join would cost more than it saves.
//! * A row-major `B` is as fast or faster than the transposed (PyTorch `[out, in]`) layout for
//!   the BERT shapes, so [`MatMul::prepare`] copies the weight into a dense row-major `k × n`.
//!
//! Batched products run one product per task over at most `threads` rayon tasks, each product
//! single-threaded (faster than threading inside one attention head, CPU-NOTES §3).
//!
//! **bf16** ([`Precision::Bf16`], the fallback where oneDNN or native bf16 is missing): prepared
//! weights are rounded to bf16 once and stored widened to `f32` (exact), and each product rounds
//! its activations to bf16, then multiplies in `f32`. The numbers are those of a native bf16
//! product with `f32` accumulation; the speed is `f32`'s (plus one rounding pass over the
//! activations), and so is the memory: without native bf16 there is nothing to gain from bf16
//! storage but a widening pass over the weight in every product, which made bf16 ~1.5× slower
//! than f32 (BERT-base 200 ms against 131 ms).

use super::{
    bf16, check_batched, check_prepared, check_product, pack_row_major, trivial_product, Batch,
    MatMul, MatMulError, MatMut, MatRef, Precision, PreparedWeight,
};
use gemm::Parallelism;
use rayon::prelude::*;
use std::any::Any;

/// Products with fewer multiply-adds than this (m·n·k) run single-threaded.
const DEFAULT_PAR_THRESHOLD: usize = 1 << 20;

/// Matrix products through the `gemm` crate. See the module docs.
#[derive(Debug, Clone)]
pub struct GemmMatMul {
    threads: usize,
    par_threshold: usize,
    precision: Precision,
    name: String,
}

/// A weight copied into dense row-major `k × n` for [`GemmMatMul`].
struct GemmWeight {
    data: WeightData,
    k: usize,
    n: usize,
}

/// A prepared weight's elements: `f32`, or for [`Precision::Bf16`] values that are exactly
/// bf16, stored as `f32`.
enum WeightData {
    F32(Vec<f32>),
    Bf16Widened(Vec<f32>),
}

impl PreparedWeight for GemmWeight {
    fn k(&self) -> usize {
        self.k
    }
    fn n(&self) -> usize {
        self.n
    }
    fn bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(v) | WeightData::Bf16Widened(v) => v.len() * 4,
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A raw pointer that may cross to rayon tasks. Sound only because the regions the tasks write
/// are disjoint (checked by `check_batched`'s no-alias test before any task starts).
#[derive(Clone, Copy)]
struct SendPtr<T>(T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Operand pointers and strides of one checked product (strides in elements).
#[derive(Clone, Copy)]
struct Raw {
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
}

impl Raw {
    fn new(a: &MatRef, b: &MatRef, c: &mut MatMut) -> Self {
        Raw {
            m: a.rows,
            n: b.cols,
            k: a.cols,
            a: a.data.as_ptr(),
            a_rs: a.row_stride as isize,
            a_cs: a.col_stride as isize,
            b: b.data.as_ptr(),
            b_rs: b.row_stride as isize,
            b_cs: b.col_stride as isize,
            c: c.data.as_mut_ptr(),
            c_rs: c.row_stride as isize,
            c_cs: c.col_stride as isize,
        }
    }

    /// # Safety
    /// The views this was made from passed `check_product`/`check_prepared`/`check_batched`
    /// (every touched index inside its slice, `c` free of aliasing), m, n, k > 0, the slices
    /// outlive the call, and no other thread touches the `c` elements meanwhile.
    unsafe fn run(&self, accumulate: bool, par: Parallelism) {
        gemm::gemm(
            self.m, self.n, self.k, self.c, self.c_cs, // column stride first
            self.c_rs, accumulate, // read_dst
            self.a, self.a_cs, self.a_rs, self.b, self.b_cs, self.b_rs,
            1.0, // alpha: scales the old dst (read only when accumulating)
            1.0, // beta: scales a·b
            false, false, false, par,
        );
    }
}

impl GemmMatMul {
    /// An implementation using at most `threads` threads (of the current rayon pool) per call.
    pub fn new(threads: usize) -> Self {
        Self::with_threshold(threads, DEFAULT_PAR_THRESHOLD)
    }

    /// Like [`GemmMatMul::new`], for a given precision ([`Precision::Bf16`] is emulated: see
    /// the module docs).
    pub fn with_precision(threads: usize, precision: Precision) -> Self {
        let mut m = Self::new(threads);
        if precision == Precision::Bf16 {
            m.precision = precision;
            m.name = format!("{} bf16 (weights widened once, no native bf16)", m.name);
        }
        m
    }

    /// Like [`GemmMatMul::new`], with products of fewer than `par_threshold` multiply-adds
    /// (m·n·k) run single-threaded.
    pub fn with_threshold(threads: usize, par_threshold: usize) -> Self {
        let threads = threads.max(1);
        GemmMatMul {
            threads,
            par_threshold,
            precision: Precision::F32,
            name: format!("gemm 0.19 ({})", kernel_isa()),
        }
    }

    fn parallelism(&self, m: usize, n: usize, k: usize) -> Parallelism {
        if self.threads > 1 && m.saturating_mul(n).saturating_mul(k) >= self.par_threshold {
            Parallelism::Rayon(self.threads)
        } else {
            Parallelism::None
        }
    }
}

/// Which of gemm's kernel families runs on this CPU.
fn kernel_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
    }
    "generic"
}

impl GemmMatMul {
    /// `c = bf16(a) · W` (`+ c`) for a checked product with a dense row-major `k × n` weight
    /// whose values are bf16.
    fn matmul_bf16(
        &self,
        a: MatRef<'_>,
        w: &[f32],
        k: usize,
        n: usize,
        mut c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<(), MatMulError> {
        // Nothing to multiply (m, n or k = 0): c stays or becomes zero.
        if trivial_product(a.cols, &mut c, accumulate) {
            return Ok(());
        }
        let mut a16 = Vec::new();
        pack_row_major(&a, &mut a16);
        a16.iter_mut().for_each(|x| *x = bf16::round(*x));
        let a16 = MatRef::row_major(&a16, a.rows, a.cols);
        self.matmul(a16, MatRef::row_major(w, k, n), c, accumulate)
    }
}

impl MatMul for GemmMatMul {
    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn matmul(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        mut c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<(), MatMulError> {
        check_product(&a, &b, &c)?;
        if trivial_product(a.cols, &mut c, accumulate) {
            return Ok(());
        }
        let raw = Raw::new(&a, &b, &mut c);
        // SAFETY: checked above; m, n, k > 0 (trivial_product); `c` is borrowed mutably.
        unsafe { raw.run(accumulate, self.parallelism(raw.m, raw.n, raw.k)) };
        Ok(())
    }

    fn prepare(&self, b: MatRef<'_>) -> Result<Box<dyn PreparedWeight>, MatMulError> {
        super::check_bounds(&b.layout(), b.data.len(), 1, 0, "b")?;
        let mut data = Vec::new();
        pack_row_major(&b, &mut data);
        let data = match self.precision {
            Precision::F32 => WeightData::F32(data),
            Precision::Bf16 => WeightData::Bf16Widened(data.into_iter().map(bf16::round).collect()),
        };
        Ok(Box::new(GemmWeight {
            data,
            k: b.rows,
            n: b.cols,
        }))
    }

    fn prepare_bf16(&self, b: MatRef<'_, u16>) -> Result<Box<dyn PreparedWeight>, MatMulError> {
        super::check_bounds(&b.layout(), b.data.len(), 1, 0, "b")?;
        let data = match self.precision {
            Precision::F32 => WeightData::F32(bf16::widen_row_major(&b)),
            Precision::Bf16 => WeightData::Bf16Widened(bf16::widen_row_major(&b)),
        };
        Ok(Box::new(GemmWeight {
            data,
            k: b.rows,
            n: b.cols,
        }))
    }

    fn matmul_prepared(
        &self,
        a: MatRef<'_>,
        b: &dyn PreparedWeight,
        c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<(), MatMulError> {
        let w = b.as_any().downcast_ref::<GemmWeight>().ok_or_else(|| {
            MatMulError::ForeignWeight(format!(
                "{} was given a weight prepared by another implementation",
                self.name
            ))
        })?;
        let precision = match w.data {
            WeightData::F32(_) => Precision::F32,
            WeightData::Bf16Widened(_) => Precision::Bf16,
        };
        if precision != self.precision {
            return Err(MatMulError::ForeignWeight(format!(
                "a {precision:?} weight given to {}",
                self.name
            )));
        }
        check_prepared(&a, w.k, w.n, &c)?;
        match &w.data {
            WeightData::F32(data) => {
                self.matmul(a, MatRef::row_major(data, w.k, w.n), c, accumulate)
            }
            WeightData::Bf16Widened(data) => self.matmul_bf16(a, data, w.k, w.n, c, accumulate),
        }
    }

    fn batched(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        mut c: MatMut<'_>,
        batch: Batch,
        accumulate: bool,
    ) -> Result<(), MatMulError> {
        check_batched(&a, &b, &c, &batch)?;
        if batch.count == 0 || c.rows == 0 || c.cols == 0 {
            return Ok(());
        }
        if a.cols == 0 {
            // Each c_i is zeroed (or kept); offsets are in bounds as c is non-empty.
            for i in 0..batch.count {
                let mut ci = MatMut {
                    data: &mut c.data[i * batch.c_stride..],
                    rows: c.rows,
                    cols: c.cols,
                    row_stride: c.row_stride,
                    col_stride: c.col_stride,
                };
                trivial_product(0, &mut ci, accumulate);
            }
            return Ok(());
        }
        let raw = Raw::new(&a, &b, &mut c);
        let one = |i: usize, par: Parallelism| {
            let r = Raw {
                a: raw.a.wrapping_add(i * batch.a_stride),
                b: raw.b.wrapping_add(i * batch.b_stride),
                c: raw.c.wrapping_add(i * batch.c_stride),
                ..raw
            };
            // SAFETY: check_batched proved every element of every batch entry in bounds and
            // all c_i mutually disjoint; m, n, k > 0; `c` stays mutably borrowed until all
            // tasks have joined, and task `i` alone writes c_i.
            unsafe { r.run(accumulate, par) };
        };
        let tasks = self.threads.min(batch.count);
        if tasks <= 1 {
            let par = self.parallelism(raw.m, raw.n, raw.k);
            (0..batch.count).for_each(|i| one(i, par));
        } else {
            let shared = SendPtr(&one);
            (0..tasks).into_par_iter().for_each(|t| {
                let one = shared;
                let lo = t * batch.count / tasks;
                let hi = (t + 1) * batch.count / tasks;
                for i in lo..hi {
                    (one.0)(i, Parallelism::None);
                }
            });
        }
        Ok(())
    }
}
