//! attnopt's CPU backend (being built): matrix products through oneDNN or the `gemm` crate,
//! everything between them JIT-compiled with Cranelift.

pub mod jit;
pub mod matmul;
