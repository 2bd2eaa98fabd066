//! Building GPU kernels: a [`KernelBuilder`] that declares parameters, variables and shared
//! arrays and appends statements (structured: `if_` and `for_` take the body as a closure), and
//! the few patterns every generator uses (a block-wide reduction through warp shuffles and one
//! shared array, the linear thread index of a one-element-per-thread kernel).
//!
//! Never: decide what a kernel computes (the generators in `gen/` do), or emit anything
//! [`GpuKernel::check`] would refuse.

use attnopt_lower::Strided;

use crate::error::Result;
use crate::kir::{BinOp, Expr, GpuKernel, Param, Scalar, Shared, Special, Stmt, UnOp, Var, WARP};

/// Threads per block of the one-element-per-thread kernels.
pub const ELEMENT_BLOCK: u32 = 256;

/// Appends statements to a kernel under construction.
pub struct KernelBuilder {
    k: GpuKernel,
    /// Open bodies: the kernel's, then each `if`/`for` being built.
    stack: Vec<Vec<Stmt>>,
}

/// A reduction a block can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Sum,
    Max,
}

impl Combine {
    pub fn apply(self, a: Expr, b: Expr) -> Expr {
        match self {
            Combine::Sum => a.add(b),
            Combine::Max => Expr::bin(BinOp::Max, a, b),
        }
    }

    pub fn identity(self) -> Expr {
        match self {
            Combine::Sum => Expr::F32(0.0),
            Combine::Max => Expr::F32(f32::NEG_INFINITY),
        }
    }
}

impl KernelBuilder {
    pub fn new(name: &str, doc: Vec<String>, grid: [u32; 2], block: u32) -> KernelBuilder {
        KernelBuilder {
            k: GpuKernel {
                name: name.to_string(),
                doc,
                params: vec![],
                vars: vec![],
                shared: vec![],
                grid,
                block,
                body: vec![],
            },
            stack: vec![vec![]],
        }
    }

    pub fn block(&self) -> u32 {
        self.k.block
    }

    pub fn param(&mut self, name: &str, elem: Scalar, writes: bool) -> usize {
        self.k.params.push(Param {
            name: name.to_string(),
            elem,
            writes,
        });
        self.k.params.len() - 1
    }

    pub fn var(&mut self, ty: Scalar) -> Var {
        self.k.vars.push(ty);
        Var(self.k.vars.len() as u32 - 1)
    }

    pub fn shared(&mut self, elem: Scalar, len: usize) -> usize {
        self.k.shared.push(Shared { elem, len });
        self.k.shared.len() - 1
    }

    fn push(&mut self, s: Stmt) {
        if let Some(top) = self.stack.last_mut() {
            top.push(s);
        }
    }

    pub fn assign(&mut self, var: Var, value: Expr) {
        self.push(Stmt::Assign { var, value });
    }

    /// A new variable holding `value` now.
    pub fn let_(&mut self, ty: Scalar, value: Expr) -> Var {
        let v = self.var(ty);
        self.assign(v, value);
        v
    }

    pub fn store(&mut self, param: usize, index: Expr, value: Expr) {
        self.push(Stmt::Store {
            param,
            index,
            value,
        });
    }

    pub fn store_shared(&mut self, array: usize, index: Expr, value: Expr) {
        self.push(Stmt::StoreShared {
            array,
            index,
            value,
        });
    }

    pub fn sync(&mut self) {
        self.push(Stmt::SyncThreads);
    }

    fn nested(&mut self, body: impl FnOnce(&mut Self) -> Result<()>) -> Result<Vec<Stmt>> {
        self.stack.push(vec![]);
        let r = body(self);
        let stmts = self.stack.pop().unwrap_or_default();
        r.map(|()| stmts)
    }

    pub fn if_(&mut self, cond: Expr, then: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let then = self.nested(then)?;
        self.push(Stmt::If {
            cond,
            then,
            els: vec![],
        });
        Ok(())
    }

    /// `for (var = start; var < end; var += step)`, with a new I64 loop variable.
    pub fn for_(
        &mut self,
        start: Expr,
        end: Expr,
        step: Expr,
        body: impl FnOnce(&mut Self, Var) -> Result<()>,
    ) -> Result<()> {
        let var = self.var(Scalar::I64);
        let body = self.nested(|b| body(b, var))?;
        self.push(Stmt::For {
            var,
            start,
            end,
            step,
            body,
        });
        Ok(())
    }

    /// `for (c = threadIdx.x; c < end; c += blockDim.x)`: a block's threads sharing a row.
    pub fn for_threads(
        &mut self,
        end: Expr,
        body: impl FnOnce(&mut Self, Var) -> Result<()>,
    ) -> Result<()> {
        self.for_(
            Expr::Special(Special::Thread),
            end,
            Expr::Special(Special::BlockDim),
            body,
        )
    }

    /// Combines `v` over the whole block (every thread must get here): afterwards every thread's
    /// `v` holds the result. Warp shuffles, then one partial per warp in a shared array (made
    /// on first use and kept in `scratch`), read by every thread in warp order: deterministic.
    pub fn block_reduce(&mut self, v: Var, op: Combine, scratch: &mut Option<usize>) {
        let warps = (self.k.block / WARP) as usize;
        let t = self.var(Scalar::F32);
        let mut m = WARP / 2;
        while m > 0 {
            self.push(Stmt::ShflXor {
                dst: t,
                src: v,
                lane_mask: m,
            });
            self.assign(v, op.apply(Expr::Var(v), Expr::Var(t)));
            m /= 2;
        }
        if warps == 1 {
            return;
        }
        let sh = *scratch.get_or_insert_with(|| {
            self.k.shared.push(Shared {
                elem: Scalar::F32,
                len: warps,
            });
            self.k.shared.len() - 1
        });
        let tid = Expr::Special(Special::Thread);
        let lane0 = Expr::bin(
            BinOp::Eq,
            tid.clone().rem(Expr::I64(WARP as i64)),
            Expr::I64(0),
        );
        // A body that cannot fail.
        let _ = self.if_(lane0, |b| {
            b.store_shared(sh, tid.clone().div(Expr::I64(WARP as i64)), Expr::Var(v));
            Ok(())
        });
        self.sync();
        self.assign(v, Expr::load_shared(sh, Expr::I64(0)));
        for w in 1..warps {
            self.assign(
                v,
                op.apply(Expr::Var(v), Expr::load_shared(sh, Expr::I64(w as i64))),
            );
        }
        // Before the array is written again.
        self.sync();
    }

    pub fn finish(mut self) -> GpuKernel {
        self.k.body = self.stack.pop().unwrap_or_default();
        self.k
    }
}

/// `blockIdx.y · gridDim.x + blockIdx.x`: the block's index in a grid of up to 2³¹·65535.
pub fn block_index() -> Expr {
    Expr::Special(Special::BlockY)
        .mul(Expr::Special(Special::GridX))
        .add(Expr::Special(Special::BlockX))
}

/// A grid of `blocks` blocks as `[x, y]` (x at most 65535·… is fine; y only when x overflows).
pub fn grid_for(blocks: usize) -> [u32; 2] {
    let blocks = blocks.max(1);
    let x = blocks.min(i32::MAX as usize);
    [x as u32, blocks.div_ceil(x) as u32]
}

/// The index of this thread among `block`-thread blocks laid out by [`block_index`].
pub fn thread_index(block: u32) -> Expr {
    block_index()
        .mul(Expr::I64(block as i64))
        .add(Expr::Special(Special::Thread))
}

/// The f32 of an integer expression.
pub fn to_f32(e: Expr) -> Expr {
    Expr::un(UnOp::ToF32, e)
}

/// Threads per block for a row of `d` columns: a warp multiple covering `d`, at most `max`.
pub fn threads_for(d: usize, max: u32) -> u32 {
    let want = (d.max(1) as u64).div_ceil(WARP as u64) * WARP as u64;
    want.min(max as u64) as u32
}

/// A one-element-per-thread kernel over `numel` elements: `body(b, i)` runs for each
/// `i < numel` (`i` an I64 variable).
pub fn per_element(
    name: &str,
    doc: Vec<String>,
    numel: usize,
    body: impl FnOnce(&mut KernelBuilder, Var) -> Result<()>,
) -> Result<KernelBuilder> {
    let blocks = numel.div_ceil(ELEMENT_BLOCK as usize);
    let mut b = KernelBuilder::new(name, doc, grid_for(blocks), ELEMENT_BLOCK);
    let i = b.let_(Scalar::I64, thread_index(ELEMENT_BLOCK));
    b.if_(Expr::Var(i).lt(Expr::I64(numel as i64)), |b| body(b, i))?;
    Ok(b)
}

/// The multi-index of linear index `i` in a row-major `shape` (one I64 variable per axis).
pub fn unravel(b: &mut KernelBuilder, i: Expr, shape: &[usize]) -> Vec<Var> {
    let mut rest = b.let_(Scalar::I64, i);
    let mut idx = vec![Var(0); shape.len()];
    for ax in (0..shape.len()).rev() {
        let n = Expr::I64(shape[ax].max(1) as i64);
        idx[ax] = b.let_(Scalar::I64, Expr::Var(rest).rem(n.clone()));
        if ax > 0 {
            rest = b.let_(Scalar::I64, Expr::Var(rest).div(n));
        }
    }
    idx
}

/// `Σ idx[j] · strides[j]` (+ `offset`), constants folded where the stride is 0 or 1.
pub fn dot_strides(idx: &[Var], strides: &[usize], offset: usize) -> Expr {
    let mut e = Expr::I64(offset as i64);
    for (v, &s) in idx.iter().zip(strides) {
        e = match s {
            0 => e,
            1 => e.add(Expr::Var(*v)),
            s => e.add(Expr::Var(*v).mul(Expr::I64(s as i64))),
        };
    }
    e
}

/// One step of a first-maximum search: `(best, best_i)` becomes `(v, i)` when `v` is larger,
/// or `best` is NaN and `v` is not (a NaN never wins; ties keep the first).
pub fn first_max_step(b: &mut KernelBuilder, (best, best_i): (Var, Var), v: Var, i: Expr) {
    let nan = |e: Expr| Expr::bin(BinOp::Ne, e.clone(), e);
    let take = Expr::bin(
        BinOp::Or,
        Expr::bin(BinOp::Lt, Expr::Var(best), Expr::Var(v)),
        Expr::bin(
            BinOp::And,
            nan(Expr::Var(best)),
            Expr::bin(BinOp::Eq, nan(Expr::Var(v)), Expr::I64(0)),
        ),
    );
    let t = b.let_(Scalar::I64, take);
    b.assign(
        best,
        Expr::select(Expr::Var(t), Expr::Var(v), Expr::Var(best)),
    );
    b.assign(best_i, Expr::select(Expr::Var(t), i, Expr::Var(best_i)));
}

/// Element `(row, col)` of the matrix at batch indices `bi` of a product operand's strided
/// view (elements from its slice's start).
pub fn strided_at(s: &Strided, bi: &[Var], row: Expr, col: Expr) -> Expr {
    dot_strides(bi, &s.batch_strides, s.offset)
        .add(row.mul(Expr::I64(s.row_stride as i64)))
        .add(col.mul(Expr::I64(s.col_stride as i64)))
}
