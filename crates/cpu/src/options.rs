//! [`CpuOptions`]: everything a caller can choose about the CPU backend, in one value handed
//! to [`crate::CpuModel::with_options`].
//!
//! Never: read the environment or parse flags here (or anywhere in this crate). The `attnopt`
//! binary maps its flags and `ATTNOPT_*` variables into this struct; library users build it
//! themselves. `Default` is the backend's behaviour with nothing set.

use std::path::PathBuf;

use crate::matmul::{MatMulChoice, Precision};

/// How the CPU backend runs a graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpuOptions {
    /// Threads (0: all cores).
    pub threads: usize,
    /// Precision of the products against weights ([`Precision::Bf16`] is an approximation).
    pub precision: Precision,
    /// The matrix-product library: the best available (default), or one asked for (an error
    /// when it cannot be used).
    pub matmul: MatMulChoice,
    /// Let the matrix-product library run the epilogues it can fuse (bias, activation,
    /// residual) inside the product; `false` runs every epilogue as a JIT pass after it.
    /// Default: on.
    pub post_ops: bool,
    /// Let JIT kernels call the precompiled AVX-512 row primitives where the CPU has
    /// `avx512f` ([`crate::jit::JitOptions::row_primitives`]). Default: on.
    pub row_primitives: bool,
    /// The oneDNN library file (or soname) to load instead of `libdnnl.so.2`.
    pub onednn_library: Option<PathBuf>,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            threads: 0,
            precision: Precision::F32,
            matmul: MatMulChoice::Auto,
            post_ops: true,
            row_primitives: true,
            onednn_library: None,
        }
    }
}
