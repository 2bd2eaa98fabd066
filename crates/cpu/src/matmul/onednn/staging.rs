//! Dense staging copies of operands that are not dense, so oneDNN runs its fast kernels
//! instead of `ref:any` (copying m×k floats is cheap next to m×k×n multiply-adds).
//! Every copy goes through checked `MatRef`/`MatMut` views.

use super::desc::Operand;
use crate::matmul::{pack_row_major, unpack_row_major, MatMut, MatRef};

/// Copies every batch entry of a view into a dense buffer.
pub(super) fn stage_in(data: &[f32], op: &Operand, buf: &mut Vec<f32>) {
    buf.clear();
    let mut one = Vec::new();
    for i in 0..op.batch.max(1) {
        let v = MatRef {
            data: &data[i * op.batch_stride..],
            rows: op.l.rows,
            cols: op.l.cols,
            row_stride: op.l.row_stride,
            col_stride: op.l.col_stride,
        };
        pack_row_major(&v, &mut one);
        buf.extend_from_slice(&one);
    }
}

/// Copies a dense buffer back into every batch entry of a view.
pub(super) fn stage_out(buf: &[f32], op: &Operand, data: &mut [f32]) {
    let size = op.l.rows * op.l.cols;
    for i in 0..op.batch.max(1) {
        let mut v = MatMut {
            data: &mut data[i * op.batch_stride..],
            rows: op.l.rows,
            cols: op.l.cols,
            row_stride: op.l.row_stride,
            col_stride: op.l.col_stride,
        };
        unpack_row_major(&buf[i * size..(i + 1) * size], &mut v);
    }
}
