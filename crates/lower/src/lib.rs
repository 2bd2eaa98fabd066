//! attnopt's target-independent lowering: from an ir graph at concrete batch and sequence sizes
//! to a list of kernels over numbered values, with a memory plan for one activation arena.
//!
//! * [`kernel`] — what one kernel computes: a matrix product (optionally with a fused row
//!   epilogue), a row program (elementwise chains and reductions over the last axis, fused), a
//!   view (no work), or a single ir operator left to the backend's generic kernels;
//! * [`epilogue`] — the elementwise work fused after a product, as a row program and, where it
//!   has the shape `act(x + bias) + residual`, in structured form for libraries that fuse it;
//! * [`fuse`] — which ir nodes become one kernel;
//! * [`hydra`] — the Hydra attention pattern as one kernel, and its row programs;
//! * [`views`] — strided views that let attention products read split heads and write merged
//!   heads in place;
//! * [`memory`] — liveness-based offsets in one arena, and the peak it needs.
//!
//! Nothing here knows about a particular target: the CPU backend is the first user, a GPU
//! backend the second. Every kernel carries the concrete shapes its backend must check.

pub mod epilogue;
pub mod fuse;
pub mod hydra;
pub mod kernel;
pub mod memory;
pub mod row;
pub mod views;

pub use epilogue::{Epilogue, Structured};
pub use fuse::{lower, LowerError, Lowered};
pub use kernel::{
    Hydra, Kernel, KernelKind, ProductViews, RowView, Strided, Value, ValueId, ValueKind,
};
pub use memory::MemoryPlan;
pub use row::{Expr, InputKind, ReduceKind, Reduction, RowProgram};
