//! attnopt's CPU backend (being built): matrix products through oneDNN or the `gemm` crate,
//! everything between them JIT-compiled with Cranelift.

pub mod exec;
pub mod jit;
pub mod matmul;
pub mod ops;

pub use exec::{CpuError, CpuModel, KernelTime};
