//! JIT row kernels (being built).
