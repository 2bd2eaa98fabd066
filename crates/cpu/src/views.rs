//! Running a product whose operands and output are strided views of their values
//! (`attnopt_lower::ProductViews`: attention heads read from the fused QKV buffer, the context
//! written straight into merged heads).
//!
//! The batch axes are merged where every operand steps uniformly across them; the last one
//! becomes one [`MatMul::batched`] call and any before it a loop. This module computes only the
//! start of each batched call (overflow-checked, inside the slice or an error): every other
//! bound is checked by the [`MatMul`] implementation before its unsafe call. It must never cut
//! a slice it has not checked.

use attnopt_lower::ProductViews;

use crate::matmul::{Batch, MatMul, MatMut, MatRef};

/// `c = a · b` through `views` (`a` is `m × k`, `b` `k × n`, `c` `m × n` per batch index),
/// with `a`, `b`, `c` the whole storage values the views index.
#[allow(clippy::too_many_arguments)]
pub fn strided_product(
    mm: &dyn MatMul,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    views: &ProductViews,
) -> Result<(), String> {
    let rank = views.batch.len();
    if [&views.a, &views.b, &views.c]
        .iter()
        .any(|v| v.batch_strides.len() != rank)
    {
        return Err(format!(
            "a view's batch strides do not match the {rank} batch axes"
        ));
    }
    let mut axes = views.batch_axes();
    if views.batch.contains(&0) || m == 0 || n == 0 {
        return Ok(()); // no products, or empty ones (zero tokens): nothing to write
    }
    let (count, inner) = axes.pop().unwrap_or((1, [0; 3]));
    let outer_total: usize = axes.iter().map(|&(s, _)| s).product();
    let mut idx = vec![0usize; axes.len()];
    for _ in 0..outer_total {
        // Start of this batched call in each operand, checked.
        let mut off = [views.a.offset, views.b.offset, views.c.offset];
        for (&i, &(_, s)) in idx.iter().zip(&axes) {
            for j in 0..3 {
                off[j] = i
                    .checked_mul(s[j])
                    .and_then(|x| x.checked_add(off[j]))
                    .ok_or("view offset overflows")?;
            }
        }
        let a_i = a.get(off[0]..).ok_or("a view starts past its value")?;
        let b_i = b.get(off[1]..).ok_or("b view starts past its value")?;
        let c_i = c.get_mut(off[2]..).ok_or("c view starts past its value")?;
        mm.batched(
            MatRef::new(a_i, m, k, views.a.row_stride, views.a.col_stride),
            MatRef::new(b_i, k, n, views.b.row_stride, views.b.col_stride),
            MatMut::new(c_i, m, n, views.c.row_stride, views.c.col_stride),
            Batch {
                count,
                a_stride: inner[0],
                b_stride: inner[1],
                c_stride: inner[2],
            },
            false,
        )
        .map_err(|e| e.to_string())?;
        for ax in (0..idx.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < axes[ax].0 {
                break;
            }
            idx[ax] = 0;
        }
    }
    Ok(())
}
