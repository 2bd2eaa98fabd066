//! oneDNN memory descriptors: operands as oneDNN sees them ([`Operand`]: dims and strides,
//! outermost first), strided and tagged descriptors, the bias descriptor, the eltwise algorithm
//! of an activation, and the check that a plain descriptor addresses exactly a view's elements.
//! Never: touch data (only shapes and strides).

use std::ffi::c_int;

use super::Shared;
use crate::matmul::ffi::{self, check, dnnl_memory_desc_t};
use crate::matmul::{Activation, Layout, MatMulError, MatMut, MatRef};

/// oneDNN's eltwise algorithm and α for an activation (β is unused by all of them).
pub(super) fn eltwise(a: Activation) -> (c_int, f32) {
    match a {
        Activation::GeluErf => (ffi::DNNL_ELTWISE_GELU_ERF, 0.0),
        Activation::GeluTanh => (ffi::DNNL_ELTWISE_GELU_TANH, 0.0),
        Activation::Relu => (ffi::DNNL_ELTWISE_RELU, 0.0),
        Activation::Silu => (ffi::DNNL_ELTWISE_SWISH, 1.0),
        Activation::Sigmoid => (ffi::DNNL_ELTWISE_LOGISTIC, 0.0),
        Activation::Tanh => (ffi::DNNL_ELTWISE_TANH, 0.0),
    }
}

/// One operand as oneDNN sees it: dims and strides (outermost first), 2 or 3 of them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operand {
    pub(super) ndims: usize,
    pub(super) batch: usize,
    pub(super) batch_stride: usize,
    pub(super) l: Layout,
}

impl Operand {
    pub(super) fn dims(&self) -> [i64; 3] {
        if self.ndims == 3 {
            [self.batch as i64, self.l.rows as i64, self.l.cols as i64]
        } else {
            [self.l.rows as i64, self.l.cols as i64, 0]
        }
    }
    pub(super) fn strides(&self) -> [i64; 3] {
        if self.ndims == 3 {
            [
                self.batch_stride as i64,
                self.l.row_stride as i64,
                self.l.col_stride as i64,
            ]
        } else {
            [self.l.row_stride as i64, self.l.col_stride as i64, 0]
        }
    }
    pub(super) fn key(&self) -> [usize; 3] {
        [self.batch_stride, self.l.row_stride, self.l.col_stride]
    }
    /// Whether oneDNN's fast kernels can read it as is (each matrix dense, batches packed).
    pub(super) fn is_dense(&self) -> bool {
        self.l.is_dense()
            && (self.ndims == 2
                || self.batch <= 1
                || self.batch_stride == self.l.rows * self.l.cols)
    }
    /// Whether two of its elements share an address (a zero or overlapping stride).
    pub(super) fn overlaps(&self) -> bool {
        let mut d = [
            (self.batch, self.batch_stride),
            (self.l.rows, self.l.row_stride),
            (self.l.cols, self.l.col_stride),
        ];
        if self.ndims == 2 {
            d[0].0 = 1;
        }
        crate::matmul::check_no_alias(&d, "").is_err()
    }
    /// The same operand with the strides of size-1 dimensions (never used for addressing)
    /// replaced by ones that make the layout look dense where it can: oneDNN 2.6's
    /// gemm-based matmul accepts e.g. a 1×n `c` with strides (1, 1) at creation but fails at
    /// execution (leading dimension < n).
    pub(super) fn canonical(mut self) -> Operand {
        let l = &mut self.l;
        if l.cols == 1 {
            l.col_stride = 1;
        }
        if l.rows == 1 {
            l.row_stride = if l.col_stride == 1 { l.cols } else { 1 };
        }
        if self.batch == 1 || self.ndims == 2 {
            self.batch_stride = if self.ndims == 2 { 0 } else { l.rows * l.cols };
        }
        self
    }
    /// The same operand, dense row-major with packed batches.
    pub(super) fn dense(&self) -> Operand {
        Operand {
            batch_stride: self.l.rows * self.l.cols,
            l: Layout {
                row_stride: self.l.cols,
                col_stride: 1,
                ..self.l
            },
            ..*self
        }
    }
}

impl Shared {
    pub(super) fn md_strided(&self, op: &Operand) -> Result<dnnl_memory_desc_t, MatMulError> {
        self.md_strided_typed(op, ffi::DNNL_F32)
    }

    pub(super) fn md_strided_typed(
        &self,
        op: &Operand,
        data_type: c_int,
    ) -> Result<dnnl_memory_desc_t, MatMulError> {
        let mut md = dnnl_memory_desc_t::zeroed();
        let (dims, strides) = (op.dims(), op.strides());
        // SAFETY: `md` is a valid out-pointer; dims/strides hold at least `ndims` entries.
        let s = unsafe {
            (self.api.memory_desc_init_by_strides)(
                &mut md,
                op.ndims as c_int,
                dims.as_ptr(),
                data_type,
                strides.as_ptr(),
            )
        };
        check("dnnl_memory_desc_init_by_strides", s)?;
        Ok(md)
    }

    pub(super) fn md_tag(
        &self,
        dims: &[i64],
        data_type: c_int,
        tag: c_int,
    ) -> Result<dnnl_memory_desc_t, MatMulError> {
        let mut md = dnnl_memory_desc_t::zeroed();
        // SAFETY: valid out-pointer; `dims` has `dims.len()` entries.
        let s = unsafe {
            (self.api.memory_desc_init_by_tag)(
                &mut md,
                dims.len() as c_int,
                dims.as_ptr(),
                data_type,
                tag,
            )
        };
        check("dnnl_memory_desc_init_by_tag", s)?;
        Ok(md)
    }

    /// The `1 × n` (or `1 × 1 × n`) f32 bias descriptor for an output descriptor.
    pub(super) fn bias_md(
        &self,
        c: &dnnl_memory_desc_t,
    ) -> Result<dnnl_memory_desc_t, MatMulError> {
        let nd = c.ndims.clamp(2, 3) as usize;
        let mut dims = [1i64; 3];
        dims[nd - 1] = c.dims[nd - 1];
        let tag = if nd == 3 { ffi::DNNL_ABC } else { ffi::DNNL_AB };
        self.md_tag(&dims[..nd], ffi::DNNL_F32, tag)
    }
}

/// Checks that a plain (blocked, no inner blocks) descriptor from oneDNN names the same
/// elements as the operand: same dims, zero offset, equal strides wherever a dim exceeds 1.
pub(super) fn same_addressing(
    md: &dnnl_memory_desc_t,
    op: &Operand,
    name: &str,
) -> Result<(), MatMulError> {
    let (dims, strides) = (op.dims(), op.strides());
    let nd = op.ndims;
    let mut ok = md.ndims as usize == nd
        && md.format_kind == ffi::DNNL_BLOCKED
        && md.offset0 == 0
        && md.dims[..nd] == dims[..nd];
    if ok {
        // SAFETY: format_kind is blocked, so `blocking` is the live member.
        let b = unsafe { &md.format_desc.blocking };
        ok = b.inner_nblks == 0 && (0..nd).all(|i| dims[i] <= 1 || b.strides[i] == strides[i]);
    }
    if ok {
        Ok(())
    } else {
        Err(MatMulError::Internal(format!(
            "the matmul's {name} descriptor does not address the view's elements ({op:?})"
        )))
    }
}

pub(super) fn op2(l: Layout) -> Operand {
    Operand {
        ndims: 2,
        batch: 1,
        batch_stride: 0,
        l,
    }
    .canonical()
}

pub(super) fn ops2(a: &MatRef, b: &MatRef, c: &MatMut) -> (Operand, Operand, Operand) {
    (op2(a.layout()), op2(b.layout()), op2(c.layout()))
}
