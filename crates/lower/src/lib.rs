//! attnopt's target-independent lowering: from an ir graph at concrete batch and sequence sizes
//! to a list of kernels over numbered values, with a memory plan for one activation arena.
//!
//! What a backend consumes (plain data, no graph matching):
//!
//! * [`kernel`] — what one kernel computes: a matrix product (optionally with a fused row
//!   epilogue and strided views of its operands), a row program (elementwise chains and
//!   reductions over the last axis, fused), a Hydra attention kernel (its spec and its two row
//!   programs), a sparse feed-forward kernel that reads only the chosen units' weights, an
//!   additive-mask conversion, a view (no work), or a single ir operator left to
//!   the backend's generic kernels;
//! * [`row`] — `RowProgram`, the small language of fused row kernels, and its reference meaning;
//! * [`epilogue`] — the elementwise work fused after a product, as a row program and, where it
//!   has the shape `act(x + bias) + residual`, in structured form for libraries that fuse it;
//! * [`memory`] — liveness-based offsets in one arena, and the peak it needs;
//! * [`weight_reads`] — the weight bytes each layer reads per run (per token at batch 1).
//!
//! How a graph is cut into kernels (private; imports point one way, down this list):
//!
//! * [`fuse`] — the driver: walks the graph from the outputs and asks each recogniser in turn,
//!   then orders the kernels and plans memory ([`lower`]);
//! * `matmul`, `row_kernel`, `hydra`, `sparse_ff` — one recogniser per kernel kind: each finds its pattern
//!   rooted at a node and emits the kernel; `views` finds the strided operand views `matmul`
//!   folds in, and `row_kernel` hands a chain headed by a product to `matmul` as its epilogue;
//! * `attention` — after the recognisers, for backends that ask: `Q·Kᵀ → softmax → P·V` as
//!   one kernel (the scores never stored);
//! * `context` — the lowering context every recogniser stands on: the graph at concrete sizes,
//!   users, values, emitted kernels, and `private()`, the one test of what a kernel may swallow
//!   (used once, not yet in a kernel, not a graph output).
//!
//! A new kernel kind is a variant in [`kernel`], one recogniser file, and one line in the
//! driver's list.
//!
//! Nothing here knows about a particular target: the CPU backend is the first user, a GPU
//! backend the second. Every kernel carries the concrete shapes its backend must check.

mod attention;
mod context;
pub mod epilogue;
mod factored;
pub mod fuse;
mod hydra;
pub mod kernel;
mod matmul;
pub mod memory;
pub mod row;
mod row_kernel;
mod sparse_ff;
mod views;
pub mod weight_reads;

pub use epilogue::{Epilogue, Structured};
pub use factored::FACTORED_ROWS;
pub use fuse::{lower, lower_with, LowerError, LowerOptions, Lowered};
pub use kernel::{
    Attention, Factored, Hydra, Kernel, KernelKind, ProductViews, RowView, SparseFf, Strided,
    Value, ValueId, ValueKind, W2Layout,
};
pub use memory::MemoryPlan;
pub use row::{Expr, InputKind, ReduceKind, Reduction, RowProgram};
pub use row_kernel::MAX_DEPTH as MAX_ROW_DEPTH;
pub use sparse_ff::CONTROLLER_ROWS as SPARSE_FF_CONTROLLER_ROWS;
pub use weight_reads::weight_bytes_by_layer;
