//! attnopt's CPU backend: matrix products through oneDNN (loaded at run time) or the `gemm`
//! crate, everything between them JIT-compiled with Cranelift from `lower`'s row programs, run
//! over one activation arena.
//!
//! * [`matmul`] — the `MatMul` trait and its two implementations;
//! * [`jit`] — row-kernel compilation and the safe calling API;
//! * [`exec`] — `CpuModel`: lowering, the plan cache, the arena and the run loop;
//! * `kernels` — one file per kernel kind: what it prepares and how it runs;
//! * `frame` — a run's checked view of its values; `weights` — weights as kernels read them;
//! * [`options`] — `CpuOptions`, the caller's choices (this crate reads no environment);
//! * [`hydra`] — the fused Hydra attention kernel (two JIT row programs over tokens);
//! * [`ops`] — native kernels for layout and other generic operators;
//! * [`views`] — products over strided views (attention heads read and written in place).
//!
//! Depends on `attnopt-lower` and `attnopt-ir` only; never on a GPU crate.

pub mod exec;
mod frame;
mod gemv;
pub mod hydra;
pub mod jit;
mod kernels;
pub mod matmul;
pub mod ops;
pub mod options;
pub mod rope;
mod vecops;
pub mod views;
mod weights;

pub use exec::{CpuError, CpuModel, KernelTime, PrepareTimes};
pub use matmul::MatMulChoice;
pub use options::CpuOptions;
