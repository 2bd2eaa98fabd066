//! The GPU backend's errors: what it cannot do yet (said as such), what a simulated run found,
//! and kernels that fail their own checks (bugs).

use crate::kir::Malformed;
use crate::sim::SimError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    /// A kernel kind or operator the generators do not cover.
    #[error("not supported yet on the GPU backend: {0}")]
    NotSupported(String),
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The simulator stopped a kernel (an out-of-bounds access, a race, …).
    #[error("simulated GPU run failed: {0}")]
    Sim(#[from] SimError),
    /// Inputs that do not fit the program (names, shapes, types, values).
    #[error("{0}")]
    Input(String),
    /// The CUDA runtime: a library missing, a driver or compiler error.
    #[error("{0}")]
    Runtime(String),
    #[error("cannot lower the graph: {0}")]
    Lower(String),
}

pub type Result<T> = std::result::Result<T, GpuError>;
