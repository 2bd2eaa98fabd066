//! Matrix products behind one trait, with two implementations.
//!
//! Every dense product of the CPU backend (projections, the fused QKV product, the two
//! attention products per head, the MLP) goes through [`MatMul`]:
//!
//! * [`OneDnnMatMul`] — oneDNN's matmul primitive, loaded at run time from `libdnnl.so.2`
//!   (the 2.x C API, declared by hand in `ffi.rs`). Weights are reordered once into the
//!   library's blocked layout by [`MatMul::prepare`]; primitives are cached per shape and
//!   layout. It is the fastest choice where the library is installed (CPU-NOTES §7).
//! * [`GemmMatMul`] — the pure-Rust `gemm` 0.19 crate (AVX-512 kernels through its `x86-v4`
//!   feature). Always available; the fallback.
//!
//! [`best_available`] picks what the caller's [`MatMulChoice`] asks for (by default oneDNN when
//! it loads) and says why it picked what it picked. Nothing here reads the environment: the
//! choice and the library's file come from the caller (the CLI maps flags and variables).
//!
//! # Epilogues
//! [`MatMul::matmul_prepared_epilogue`] computes `c = activation(a·W + bias) + residual` with the
//! [`Epilogue`] run inside the product where the implementation can ([`MatMul::fuses`]):
//! oneDNN maps it to the matmul's bias argument and its eltwise and binary post-ops. `gemm`
//! fuses nothing; callers then run the epilogue as a pass of their own.
//!
//! # Views and safety
//! Operands are strided views ([`MatRef`], [`MatMut`]) over plain `f32` slices: element
//! `(r, c)` lives at `data[r * row_stride + c * col_stride]`, so a PyTorch `[out, in]` weight
//! is passed as `Wᵀ` without a copy (`MatRef::row_major(w, out, inp).t()`), and one head of a
//! fused `[S, 3·H·d]` QKV buffer is a view with `row_stride = 3·H·d`.
//! Before any `unsafe` library call, every implementation checks the shapes against each
//! other, the largest index each view can touch against its slice (with overflow-checked
//! arithmetic), and that the output view has no two elements at the same address. A mismatch is
//! an `Err(MatMulError)`, never a panic or a wild read.
//!
//! # Threads
//! `threads` is the most threads one product may use. `gemm` runs on the *current* rayon pool
//! (call it inside the forward pass's `ThreadPool::install`). oneDNN (Debian's build) runs on
//! OpenMP: before each product the calling thread's OpenMP thread count is set to `threads`.
//! **Do not call the oneDNN implementation from inside a rayon parallel region** (`par_iter`,
//! `join`): each calling thread would start its own OpenMP team and the cores would be
//! oversubscribed. Calls on one [`OneDnnMatMul`] are serialised by a lock, so concurrent callers
//! wait rather than oversubscribe.

pub mod bf16;
mod epilogue;
mod ffi;
mod gemm;
mod onednn;

pub use self::epilogue::{Activation, Epilogue, EpilogueKind};
pub use self::gemm::GemmMatMul;
pub use self::onednn::OneDnnMatMul;

use std::any::Any;
use std::path::Path;

/// Errors from a matrix product. Library failures name the function and its status code.
#[derive(Debug, thiserror::Error)]
pub enum MatMulError {
    /// Operand shapes do not fit together (`a` is m×k, `b` k×n, `c` m×n).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A view reaches past the end of its slice, or its index arithmetic overflows.
    #[error("view out of bounds: {0}")]
    Bounds(String),
    /// The output view maps two elements to one address (e.g. a zero stride).
    #[error("output view aliases itself: {0}")]
    Aliasing(String),
    /// A prepared weight made by another implementation (or another instance).
    #[error("prepared weight does not belong to this implementation: {0}")]
    ForeignWeight(String),
    /// A precision or feature this implementation does not provide.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The shared library could not be loaded or lacks a symbol / the expected version.
    #[error("cannot use oneDNN: {0}")]
    Load(String),
    /// oneDNN answered something this code does not expect (a NULL descriptor, a layout that
    /// differs from the view it was built from).
    #[error("unexpected answer from oneDNN: {0}")]
    Internal(String),
    /// A oneDNN C function returned an error status.
    #[error("{function} failed: status {status} ({status_name})")]
    Library {
        /// The C function that failed.
        function: &'static str,
        /// Its `dnnl_status_t` value.
        status: i32,
        /// The status' name from `dnnl_types.h`.
        status_name: &'static str,
    },
}

/// Numeric precision of the products an implementation runs. Inputs and outputs are `f32`
/// either way; `Bf16` means weights and activations rounded to bfloat16 with `f32` accumulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Plain `f32` products.
    F32,
    /// bfloat16 multiplies, `f32` accumulation and output, for products with *prepared*
    /// weights. Implemented by oneDNN where the CPU has native bf16 (AVX512-BF16 or AMX; see
    /// [`OneDnnMatMul::load_with`]); `gemm` answers [`MatMulError::NotSupported`].
    Bf16,
}

/// A read-only strided matrix view: element `(r, c)` at
/// `data[r * row_stride + c * col_stride]`. `data` starts at element `(0, 0)`. The elements are
/// `f32`, or bfloat16 bit patterns (`u16`) for weights a checkpoint stores in bf16
/// ([`MatMul::prepare_bf16`]).
#[derive(Debug)]
pub struct MatRef<'a, T = f32> {
    /// The backing slice; must hold every element the view names.
    pub data: &'a [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in elements between `(r, c)` and `(r + 1, c)`.
    pub row_stride: usize,
    /// Distance in elements between `(r, c)` and `(r, c + 1)`.
    pub col_stride: usize,
}

/// A writable strided `f32` matrix view, laid out as [`MatRef`]. Its elements must be distinct
/// (checked before use).
#[derive(Debug)]
pub struct MatMut<'a> {
    /// The backing slice; must hold every element the view names.
    pub data: &'a mut [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in elements between `(r, c)` and `(r + 1, c)`.
    pub row_stride: usize,
    /// Distance in elements between `(r, c)` and `(r, c + 1)`.
    pub col_stride: usize,
}

impl<T> Clone for MatRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for MatRef<'_, T> {}

impl<'a, T> MatRef<'a, T> {
    /// A general strided view (not checked here; every product checks it).
    pub fn new(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A dense row-major `rows × cols` view.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, without a copy (swaps the shape and the strides).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Element `(r, c)`, or `None` when it lies outside the shape or the slice.
    pub fn get(&self, r: usize, c: usize) -> Option<T>
    where
        T: Copy,
    {
        if r >= self.rows || c >= self.cols {
            return None;
        }
        let i = r
            .checked_mul(self.row_stride)?
            .checked_add(c.checked_mul(self.col_stride)?)?;
        self.data.get(i).copied()
    }

    fn layout(&self) -> Layout {
        Layout {
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

impl<'a> MatMut<'a> {
    /// A general strided view (not checked here; every product checks it).
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A dense row-major `rows × cols` view.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, without a copy.
    pub fn t(self) -> Self {
        MatMut {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// A shorter-lived copy of this view (so it can be passed on and used again).
    pub fn rb_mut(&mut self) -> MatMut<'_> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    fn layout(&self) -> Layout {
        Layout {
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

/// `count` products `a_i · b_i` (+ `c_i`) of identical shapes. Matrix `i` of each operand is
/// the operand's view shifted by `i ×` its batch stride (in elements) into the same slice:
/// e.g. per-head attention scores with `a` = one head of Q (`a_stride` = head dim), `b` = that
/// head of Kᵀ, `c` = one `[S, S]` score block (`c_stride` = S·S).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Number of products.
    pub count: usize,
    /// Offset between consecutive `a_i`, in elements.
    pub a_stride: usize,
    /// Offset between consecutive `b_i`, in elements.
    pub b_stride: usize,
    /// Offset between consecutive `c_i`, in elements.
    pub c_stride: usize,
}

/// A constant right-hand side (weights, `k × n`) prepared once by [`MatMul::prepare`] for
/// repeated products `x · W`: packed or reordered as the implementation prefers. It can only be
/// used with the implementation instance that made it.
pub trait PreparedWeight: Send + Sync {
    /// Rows of the weight (the inner dimension of the product).
    fn k(&self) -> usize;
    /// Columns of the weight (the output width).
    fn n(&self) -> usize;
    /// Bytes the prepared copy occupies.
    fn bytes(&self) -> usize;
    /// For downcasting by the implementation that made it.
    fn as_any(&self) -> &dyn Any;
}

/// Matrix products `c = a · b` (`+ c` when accumulating) on strided `f32` views.
///
/// Shapes: `a` is m×k, `b` k×n, `c` m×n. With `accumulate = false` the old contents of `c` are
/// never read (NaN in `c` does not leak into the result). m, n or k may be 0.
///
/// Implementations are `Send + Sync`; see the module docs for the threading rules (notably: do
/// not call the oneDNN implementation from inside a rayon parallel region).
pub trait MatMul: Send + Sync {
    /// Library, version and kernel, e.g. `"oneDNN 2.6.3 (brg:avx512_core)"`,
    /// `"gemm 0.19 (avx512f)"`.
    fn name(&self) -> &str;

    /// The most threads one product may use.
    fn threads(&self) -> usize;

    /// The precision of its products against prepared weights (kernels that read weights
    /// themselves follow it).
    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// `c = a · b` (`c += a · b` if `accumulate`). Every shape, stride and length is checked
    /// against the slices before any unsafe call; a mismatch is an `Err`.
    fn matmul(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<(), MatMulError>;

    /// Prepares a constant right-hand side of shape k×n, given as a view, so a PyTorch
    /// `[out, in]` weight can be passed transposed via strides without a copy.
    fn prepare(&self, b: MatRef<'_>) -> Result<Box<dyn PreparedWeight>, MatMulError>;

    /// Like [`MatMul::prepare`] for a weight stored as bfloat16 (bit patterns), e.g. straight
    /// from a bf16 checkpoint's memory map. Implementations that read bf16 keep no `f32` copy;
    /// the default widens to `f32` and calls [`MatMul::prepare`].
    fn prepare_bf16(&self, b: MatRef<'_, u16>) -> Result<Box<dyn PreparedWeight>, MatMulError> {
        check_bounds(&b.layout(), b.data.len(), 1, 0, "b")?;
        let wide = bf16::widen_row_major(&b);
        self.prepare(MatRef::row_major(&wide, b.rows, b.cols))
    }

    /// `c = a · W` (`+ c` if `accumulate`) with a weight from [`MatMul::prepare`] of this
    /// instance.
    fn matmul_prepared(
        &self,
        a: MatRef<'_>,
        b: &dyn PreparedWeight,
        c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<(), MatMulError>;

    /// Whether [`MatMul::matmul_prepared_epilogue`] runs epilogues of this kind inside the
    /// product. The default fuses only the empty epilogue.
    fn fuses(&self, kind: EpilogueKind) -> bool {
        kind.is_none()
    }

    /// `c = activation(a · W + bias) + residual` with a weight from [`MatMul::prepare`], the
    /// epilogue run inside the product. Kinds [`MatMul::fuses`] refuses, and non-empty
    /// epilogues on empty products (k = 0), answer [`MatMulError::NotSupported`]: the caller
    /// runs those epilogues itself. The default does the empty epilogue only.
    fn matmul_prepared_epilogue(
        &self,
        a: MatRef<'_>,
        b: &dyn PreparedWeight,
        c: MatMut<'_>,
        epilogue: &Epilogue<'_>,
    ) -> Result<(), MatMulError> {
        let kind = epilogue.kind();
        if kind.is_none() {
            return self.matmul_prepared(a, b, c, false);
        }
        Err(MatMulError::NotSupported(format!(
            "{} does not fuse a {kind} epilogue",
            self.name()
        )))
    }

    /// `batch.count` products `c_i = a_i · b_i` (`+ c_i`) of identical shapes (see [`Batch`]).
    /// All the `c_i` together must not alias one another. The default loops over
    /// [`MatMul::matmul`]; implementations may parallelise.
    fn batched(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: MatMut<'_>,
        batch: Batch,
        accumulate: bool,
    ) -> Result<(), MatMulError> {
        check_batched(&a, &b, &c, &batch)?;
        if c.rows == 0 || c.cols == 0 {
            return Ok(());
        }
        each_product(self, a, b, c, batch, accumulate)
    }
}

/// Which matrix-product implementation the caller asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatMulChoice {
    /// oneDNN when the library loads (and, for bf16, has native kernels on this CPU), else
    /// `gemm`, the reason given.
    #[default]
    Auto,
    /// oneDNN or an error saying why it cannot be used.
    OneDnn,
    /// The pure-Rust `gemm` crate.
    Gemm,
}

/// Picks the matrix-product implementation: what `choice` asks for, oneDNN loaded from
/// `onednn_library` (default `libdnnl.so.2`). The string says why, e.g.
/// `"oneDNN 2.6.3 found at /usr/lib/…/libdnnl.so.2.6; …"` or
/// `"cannot use oneDNN: libdnnl.so.2 not found (…); using gemm"`.
///
/// [`MatMulChoice::Auto`] never fails: where oneDNN does not load it falls back to `gemm`;
/// [`MatMulChoice::OneDnn`] returns that failure instead.
pub fn best_available(
    threads: usize,
    choice: MatMulChoice,
    onednn_library: Option<&Path>,
) -> Result<(Box<dyn MatMul>, String), MatMulError> {
    best_available_for(threads, Precision::F32, choice, onednn_library)
}

/// Like [`best_available`], asking for a precision. With [`Precision::Bf16`]: oneDNN in bf16
/// where the library loads and the CPU has native bf16 (AVX512-BF16 or AMX), else `gemm` with
/// bf16-rounded weights widened to `f32` once (same numbers, `f32` speed and memory).
pub fn best_available_for(
    threads: usize,
    precision: Precision,
    choice: MatMulChoice,
    onednn_library: Option<&Path>,
) -> Result<(Box<dyn MatMul>, String), MatMulError> {
    let threads = threads.max(1);
    let gemm = |why: &str| -> (Box<dyn MatMul>, String) {
        let how = match precision {
            Precision::F32 => "using gemm",
            Precision::Bf16 => "using gemm with bf16 weights widened to f32 once (no native bf16)",
        };
        (
            Box::new(GemmMatMul::with_precision(threads, precision)),
            format!("{why}; {how}"),
        )
    };
    if choice == MatMulChoice::Gemm {
        return Ok(gemm("gemm requested"));
    }
    match OneDnnMatMul::load_from(onednn_library, threads, precision) {
        Ok(m) => {
            let bf16 = if precision == Precision::Bf16 {
                "; bf16 weights"
            } else {
                ""
            };
            let why = format!(
                "{} found at {}{bf16}; {}",
                m.version_string(),
                m.library_path(),
                m.wait_policy()
            );
            Ok((Box::new(m), why))
        }
        Err(e) if choice == MatMulChoice::OneDnn => Err(e),
        Err(e) => Ok(gemm(&e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks shared by both implementations.

/// Shape and strides of one view, without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Layout {
    /// Dense row-major (unit column stride, rows packed) or dense column-major.
    pub(crate) fn is_dense(&self) -> bool {
        let row_major = (self.cols <= 1 || self.col_stride == 1)
            && (self.rows <= 1 || self.row_stride == self.cols);
        let col_major = (self.rows <= 1 || self.row_stride == 1)
            && (self.cols <= 1 || self.col_stride == self.rows);
        row_major || col_major
    }
}

/// Largest index the view touches, or `None` for an empty view. Errors on overflow.
fn max_index(l: &Layout, what: &str) -> Result<Option<usize>, MatMulError> {
    if l.rows == 0 || l.cols == 0 {
        return Ok(None);
    }
    let overflow = || MatMulError::Bounds(format!("{what}: index arithmetic overflows"));
    let r = (l.rows - 1)
        .checked_mul(l.row_stride)
        .ok_or_else(overflow)?;
    let c = (l.cols - 1)
        .checked_mul(l.col_stride)
        .ok_or_else(overflow)?;
    Ok(Some(r.checked_add(c).ok_or_else(overflow)?))
}

/// Checks that every element of `batch` copies of the view, `batch_stride` apart, lies inside
/// a slice of `len` elements; also that the strides fit in `isize`/`i64`.
pub(crate) fn check_bounds(
    l: &Layout,
    len: usize,
    count: usize,
    batch_stride: usize,
    what: &str,
) -> Result<(), MatMulError> {
    for s in [
        l.rows,
        l.cols,
        count,
        l.row_stride,
        l.col_stride,
        batch_stride,
    ] {
        if s > isize::MAX as usize / 2 {
            return Err(MatMulError::Bounds(format!(
                "{what}: size or stride {s} too large"
            )));
        }
    }
    let Some(last) = max_index(l, what)? else {
        return Ok(());
    };
    if count == 0 {
        return Ok(());
    }
    let last = (count - 1)
        .checked_mul(batch_stride)
        .and_then(|o| o.checked_add(last))
        .ok_or_else(|| MatMulError::Bounds(format!("{what}: index arithmetic overflows")))?;
    if last >= len {
        return Err(MatMulError::Bounds(format!(
            "{what}: a {}×{} view with strides ({}, {}){} reaches index {last}, but the slice has {len} elements",
            l.rows,
            l.cols,
            l.row_stride,
            l.col_stride,
            if count > 1 { format!(" repeated {count}× every {batch_stride}") } else { String::new() },
        )));
    }
    Ok(())
}

/// Checks that no two elements of the output (all batches) share an address. Sufficient test:
/// sorted by stride, each dimension of size > 1 has a stride at least the extent of the
/// smaller ones (covers row-major, column-major, padded and interleaved-head layouts).
fn check_no_alias(dims: &[(usize, usize)], what: &str) -> Result<(), MatMulError> {
    if dims.iter().any(|&(n, _)| n == 0) {
        return Ok(()); // no elements at all
    }
    let mut d: Vec<(usize, usize)> = dims.iter().copied().filter(|&(n, _)| n > 1).collect();
    d.sort_by_key(|&(_, s)| s);
    let mut extent = 1usize; // elements spanned by the smaller dimensions
    for &(n, s) in &d {
        if s < extent {
            return Err(MatMulError::Aliasing(format!(
                "{what}: (size, stride) pairs {dims:?} put two elements at one address"
            )));
        }
        extent = s
            .checked_mul(n)
            .ok_or_else(|| MatMulError::Bounds(format!("{what}: index arithmetic overflows")))?;
    }
    Ok(())
}

fn check_shapes(a: &Layout, b: &Layout, c: &Layout) -> Result<(), MatMulError> {
    if a.cols != b.rows || a.rows != c.rows || b.cols != c.cols {
        return Err(MatMulError::Shape(format!(
            "a is {}×{}, b is {}×{}, c is {}×{} (need m×k · k×n = m×n)",
            a.rows, a.cols, b.rows, b.cols, c.rows, c.cols
        )));
    }
    Ok(())
}

/// All checks for one product `c = a·b`.
/// `batch.count` plain products, one [`MatMul::matmul`] call each: the default of
/// [`MatMul::batched`], and the fallback of implementations that batch otherwise. The caller has
/// run [`check_batched`].
pub(crate) fn each_product<M: MatMul + ?Sized>(
    mm: &M,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    batch: Batch,
    accumulate: bool,
) -> Result<(), MatMulError> {
    for i in 0..batch.count {
        // Empty operands (k = 0) may have offsets past their slice: `get` keeps that safe.
        let ai = MatRef {
            data: a.data.get(i * batch.a_stride..).unwrap_or(&[]),
            ..a
        };
        let bi = MatRef {
            data: b.data.get(i * batch.b_stride..).unwrap_or(&[]),
            ..b
        };
        let ci = MatMut {
            data: &mut c.data[i * batch.c_stride..],
            rows: c.rows,
            cols: c.cols,
            row_stride: c.row_stride,
            col_stride: c.col_stride,
        };
        mm.matmul(ai, bi, ci, accumulate)?;
    }
    Ok(())
}

pub(crate) fn check_product(a: &MatRef, b: &MatRef, c: &MatMut) -> Result<(), MatMulError> {
    let (la, lb, lc) = (a.layout(), b.layout(), c.layout());
    check_shapes(&la, &lb, &lc)?;
    check_bounds(&la, a.data.len(), 1, 0, "a")?;
    check_bounds(&lb, b.data.len(), 1, 0, "b")?;
    check_bounds(&lc, c.data.len(), 1, 0, "c")?;
    check_no_alias(&[(lc.rows, lc.row_stride), (lc.cols, lc.col_stride)], "c")
}

/// All checks for a product with a prepared `k × n` weight.
pub(crate) fn check_prepared(
    a: &MatRef,
    k: usize,
    n: usize,
    c: &MatMut,
) -> Result<(), MatMulError> {
    let (la, lc) = (a.layout(), c.layout());
    let lb = Layout {
        rows: k,
        cols: n,
        row_stride: n,
        col_stride: 1,
    };
    check_shapes(&la, &lb, &lc)?;
    check_bounds(&la, a.data.len(), 1, 0, "a")?;
    check_bounds(&lc, c.data.len(), 1, 0, "c")?;
    check_no_alias(&[(lc.rows, lc.row_stride), (lc.cols, lc.col_stride)], "c")
}

/// All checks for a batch of products.
pub(crate) fn check_batched(
    a: &MatRef,
    b: &MatRef,
    c: &MatMut,
    batch: &Batch,
) -> Result<(), MatMulError> {
    let (la, lb, lc) = (a.layout(), b.layout(), c.layout());
    check_shapes(&la, &lb, &lc)?;
    check_bounds(&la, a.data.len(), batch.count, batch.a_stride, "a")?;
    check_bounds(&lb, b.data.len(), batch.count, batch.b_stride, "b")?;
    check_bounds(&lc, c.data.len(), batch.count, batch.c_stride, "c")?;
    check_no_alias(
        &[
            (lc.rows, lc.row_stride),
            (lc.cols, lc.col_stride),
            (batch.count, batch.c_stride),
        ],
        "c (all batches)",
    )
}

/// Handles the degenerate products every implementation shares: m or n = 0 (nothing to do) and
/// k = 0 (c = 0, or unchanged when accumulating). Returns true when the product is done.
pub(crate) fn trivial_product(k: usize, c: &mut MatMut, accumulate: bool) -> bool {
    if c.rows == 0 || c.cols == 0 {
        return true;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..c.rows {
                for j in 0..c.cols {
                    c.data[r * c.row_stride + j * c.col_stride] = 0.0;
                }
            }
        }
        return true;
    }
    false
}

/// Copies a view into a dense row-major buffer.
pub(crate) fn pack_row_major<T: Copy>(src: &MatRef<'_, T>, dst: &mut Vec<T>) {
    dst.clear();
    dst.reserve(src.rows * src.cols);
    for r in 0..src.rows {
        let base = r * src.row_stride;
        if src.col_stride == 1 {
            dst.extend_from_slice(&src.data[base..base + src.cols]);
        } else {
            dst.extend((0..src.cols).map(|j| src.data[base + j * src.col_stride]));
        }
    }
}

/// Copies a dense row-major buffer into a (checked) view.
pub(crate) fn unpack_row_major(src: &[f32], dst: &mut MatMut) {
    for r in 0..dst.rows {
        let row = &src[r * dst.cols..(r + 1) * dst.cols];
        let base = r * dst.row_stride;
        if dst.col_stride == 1 {
            dst.data[base..base + dst.cols].copy_from_slice(row);
        } else {
            for (j, &v) in row.iter().enumerate() {
                dst.data[base + j * dst.col_stride] = v;
            }
        }
    }
}
