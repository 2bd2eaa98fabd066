//! The primitive cache's pieces: what a primitive is specialised on ([`Key`]), what it
//! computes besides the product ([`Extras`]), and a cached primitive with its memory objects
//! and staging buffers ([`Entry`]). Never: create or execute oneDNN objects (the parent does).

use super::desc::{op2, Operand};
use super::Handle;
use crate::matmul::{Activation, Epilogue, EpilogueKind};

/// Most primitives kept in the cache before it is emptied.
pub(super) const MAX_CACHED: usize = 256;

/// Cache key: everything a primitive is specialised on.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) struct Key {
    pub(super) ndims: u8,
    pub(super) batch: usize,
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    /// (batch, row, column) strides.
    pub(super) a: [usize; 3],
    pub(super) b: BKey,
    pub(super) c: [usize; 3],
    pub(super) accumulate: bool,
    pub(super) epilogue: EpilogueKind,
    /// The residual's (batch, row, column) strides.
    pub(super) residual: Option<[usize; 3]>,
    /// The OpenMP thread count it was built for (oneDNN partitions the work at creation); 0 in
    /// a shape key (`threads.rs`).
    pub(super) threads: usize,
}

/// What a primitive computes besides the product.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Extras {
    /// `c += a·b`: the `sum` post-op.
    pub(super) accumulate: bool,
    /// The matmul's bias argument, `1 × n`.
    pub(super) bias: bool,
    /// An eltwise post-op.
    pub(super) activation: Option<Activation>,
    /// A binary `add` post-op reading this operand.
    pub(super) residual: Option<Operand>,
}

impl Extras {
    pub(super) fn of(accumulate: bool, e: &Epilogue) -> Extras {
        Extras {
            accumulate,
            bias: e.bias.is_some(),
            activation: e.activation,
            residual: e.residual.map(|r| op2(r.layout())),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) enum BKey {
    Strides([usize; 3]),
    Prepared(Vec<i64>),
}

/// A cached primitive with its memory objects (data handles set per call).
pub(super) struct Entry {
    pub(super) prim: Handle,
    pub(super) src: Handle,
    /// `None` for prepared weights: their own memory object is passed.
    pub(super) wei: Option<Handle>,
    pub(super) dst: Handle,
    /// The bias and residual memory objects of an epilogue.
    pub(super) bias: Option<Handle>,
    pub(super) residual: Option<Handle>,
    pub(super) stage_a: bool,
    pub(super) stage_b: bool,
    pub(super) stage_c: bool,
    /// Built after an execution failure, with every non-dense operand staged.
    pub(super) forced: bool,
    pub(super) buf_a: Vec<f32>,
    pub(super) buf_b: Vec<f32>,
    pub(super) buf_c: Vec<f32>,
    /// bf16 weights: the f32 → bf16 conversion of `a` (into `buf_a16`, which `src` reads).
    pub(super) convert: Option<Convert>,
    pub(super) buf_a16: Vec<u16>,
    pub(super) impl_name: String,
}

/// A reorder primitive converting the f32 activations to the matmul's bf16 source layout.
pub(super) struct Convert {
    pub(super) reorder: Handle,
    pub(super) from: Handle,
}

pub(super) fn key2(a: &Operand, b: BKey, c: &Operand, accumulate: bool) -> Key {
    key_with(a, b, c, accumulate, &Epilogue::default())
}

pub(super) fn key_with(a: &Operand, b: BKey, c: &Operand, accumulate: bool, e: &Epilogue) -> Key {
    Key {
        ndims: a.ndims as u8,
        batch: a.batch,
        m: a.l.rows,
        k: a.l.cols,
        n: c.l.cols,
        a: a.key(),
        b,
        c: c.key(),
        accumulate,
        epilogue: e.kind(),
        residual: e.residual.map(|r| op2(r.layout()).key()),
        threads: 0,
    }
}
