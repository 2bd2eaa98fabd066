//! Strided views of a matrix product's operands and output: attention products that read heads
//! in place and write merged heads in place, instead of copying through `split_heads`, `slice`
//! and `merge_heads` kernels.
//!
//! Around each attention product the graph re-lays-out data three ways: `slice` cuts Q, K or V
//! out of the fused `[B, N, 3D]` QKV product, `split_heads` turns `[B, N, H·d]` into
//! `[B, H, N, d]`, and `merge_heads` turns the context `[B, H, N, d]` back into `[B, N, H·d]`.
//! Each is a pure index map, so a product can read (or write) the unsplit value directly with
//! strides: head `h` of a fused buffer of width `W` starting at column `start` is element
//! `(b, h, s, j)` at `start + b·N·W + s·W + h·d + j`.
//!
//! A layout node is folded into a product only when the product is its only user and it is not
//! a graph output, so no value another kernel reads disappears (a shared `split_heads` keeps its
//! copy kernel). Anything else (`repeat_heads`, RoPE, a `scale` between the permute and the
//! product, weights) is left as it is. This module never changes what a graph computes.

use attnopt_ir::{DType, NodeId, Op};
use serde::Serialize;

use crate::fuse::Lowering;
use crate::kernel::ValueId;

/// Where the elements of one product operand (or the output) live in its storage value:
/// matrix `(i_0, …, i_{r-1})` element `(row, col)` at
/// `offset + Σ i_j · batch_strides[j] + row · row_stride + col · col_stride` (elements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Strided {
    pub offset: usize,
    /// One stride per batch axis of the product's output (0 on broadcast axes).
    pub batch_strides: Vec<usize>,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strided {
    /// A dense row-major value of `shape` (`[.., rows, cols]`) read as the product operand over
    /// `batch` output batch axes (right-aligned broadcasting, like the interpreter), transposed
    /// (`[.., cols, rows]` read as `rows × cols`) when `transposed`.
    pub fn dense(shape: &[usize], batch: &[usize], transposed: bool) -> Strided {
        let r = shape.len();
        let cols = shape.get(r.wrapping_sub(1)).copied().unwrap_or(1);
        let lead = &shape[..r.saturating_sub(2)];
        let full = attnopt_ir::broadcast_strides(lead, batch.len());
        let mat: usize = shape[r.saturating_sub(2)..].iter().product();
        let batch_strides = full.iter().map(|&s| s * mat).collect();
        let (row_stride, col_stride) = if transposed { (1, cols) } else { (cols, 1) };
        Strided {
            offset: 0,
            batch_strides,
            row_stride,
            col_stride,
        }
    }

    /// `[B, N, width]` storage whose columns `start..start + H·d` are split into `H` heads of
    /// `d`, read as the `[B, H, N, d]` operand (transposed: `[B, H, d, N]`).
    fn heads(n: usize, width: usize, start: usize, d: usize, transposed: bool) -> Strided {
        let (row_stride, col_stride) = if transposed { (1, width) } else { (width, 1) };
        Strided {
            offset: start,
            batch_strides: vec![n * width, d],
            row_stride,
            col_stride,
        }
    }
}

/// Strided views of a product's `a` (`m × k`), `b` (`k × n`, any transpose folded in) and
/// output `c` (`m × n`) over the kernel's input values 0 and 1 and its output value, for the
/// output batch axes `batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductViews {
    pub batch: Vec<usize>,
    pub a: Strided,
    pub b: Strided,
    pub c: Strided,
}

impl ProductViews {
    /// The batch axes as `(size, [a, b, c] strides)`, size-1 axes dropped and neighbours merged
    /// where all three operands step uniformly across them: `[B, H]` over dense values is one
    /// axis of `B·H`; heads of a `[B, N, 3D]` buffer stay two axes.
    pub fn batch_axes(&self) -> Vec<(usize, [usize; 3])> {
        let mut out: Vec<(usize, [usize; 3])> = Vec::new();
        for (i, &size) in self.batch.iter().enumerate() {
            if size == 1 {
                continue;
            }
            let s = [
                self.a.batch_strides[i],
                self.b.batch_strides[i],
                self.c.batch_strides[i],
            ];
            match out.last_mut() {
                Some((n, prev)) if (0..3).all(|j| prev[j] == s[j] * size) => {
                    *n *= size;
                    *prev = s;
                }
                _ => out.push((size, s)),
            }
        }
        out
    }
}

/// An operand read through a view: its storage value, the view, and the layout nodes folded.
pub(crate) struct ViewedOperand {
    pub value: ValueId,
    pub view: Strided,
    pub nodes: Vec<NodeId>,
}

impl Lowering<'_> {
    /// `x = split_heads(src)` or `split_heads(slice_last(src))`, with `x` foldable: the product
    /// operand `x` (its last two axes swapped when `transposed`) read from `src` in place.
    pub(crate) fn heads_view(&mut self, x: NodeId, transposed: bool) -> Option<ViewedOperand> {
        let Op::SplitHeads { heads } = self.g.node(x).op else {
            return None;
        };
        if !self.private_f32(x) {
            return None;
        }
        let shape = self.shapes[&x].clone(); // [B, H, N, d]
        let (n, d) = (shape[2], shape[3]);
        if heads == 0 || shape[1] != heads {
            return None;
        }
        let mut nodes = vec![x];
        let mut src = self.g.operands(x)[0];
        let mut start = 0;
        if let Op::Slice { axis, start: s, .. } = self.g.node(src).op {
            let ss = &self.shapes[&src];
            if axis + 1 == ss.len() && self.private_f32(src) {
                nodes.push(src);
                start = s;
                src = self.g.operands(src)[0];
            }
        }
        if matches!(self.g.node(src).op, Op::Weight(_)) || self.g.node(src).ty.dtype != DType::F32 {
            return None;
        }
        let ss = self.shapes[&src].clone(); // [B, N, width]
        if ss.len() != 3 || ss[1] != n || start + heads * d > ss[2] {
            return None;
        }
        let value = self.value(src);
        Some(ViewedOperand {
            value,
            view: Strided::heads(n, ss[2], start, d, transposed),
            nodes,
        })
    }

    /// `c = merge_heads(p)` where the product `p` has no other user: `p` written into `c`'s
    /// value in place, as the view of its `[B, H, N, d]` output.
    pub(crate) fn merged_output(&self, merge: NodeId) -> Option<(NodeId, Strided)> {
        let p = self.g.operands(merge)[0];
        if !matches!(self.g.node(p).op, Op::MatMul) || !self.private_f32(p) {
            return None;
        }
        let s = &self.shapes[&p]; // [B, H, N, d]
        if s.len() != 4 || self.g.node(merge).ty.dtype != DType::F32 {
            return None;
        }
        let (h, n, d) = (s[1], s[2], s[3]);
        Some((p, Strided::heads(n, h * d, 0, d, false)))
    }
}
