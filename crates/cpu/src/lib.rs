//! attnopt's CPU backend: matrix products through oneDNN (loaded at run time) or the `gemm`
//! crate, everything between them JIT-compiled with Cranelift from `lower`'s row programs, run
//! over one activation arena.
//!
//! * [`matmul`] — the `MatMul` trait and its two implementations;
//! * [`jit`] — row-kernel compilation and the safe calling API;
//! * [`exec`] — `CpuModel`: lowering, compilation and execution of a graph;
//! * [`options`] — `CpuOptions`, the caller's choices (this crate reads no environment);
//! * [`hydra`] — the fused Hydra attention kernel (two JIT row programs over tokens);
//! * [`ops`] — native kernels for layout and other generic operators;
//! * [`views`] — products over strided views (attention heads read and written in place).
//!
//! Depends on `attnopt-lower` and `attnopt-ir` only; never on a GPU crate.

pub mod exec;
pub mod hydra;
pub mod jit;
pub mod matmul;
pub mod ops;
pub mod options;
pub mod rope;
pub mod views;

pub use exec::{CpuError, CpuModel, KernelTime, PrepareTimes};
pub use matmul::MatMulChoice;
pub use options::CpuOptions;
