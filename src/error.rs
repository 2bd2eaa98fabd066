//! The library facade's error type: everything that can go wrong loading, feeding or running
//! a model, each naming the file and tensor at fault.

use std::path::PathBuf;

/// Why an `attnopt` library call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Import(#[from] attnopt_import::ImportError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: tensor `{tensor}`: {msg}", file.display())]
    Input {
        file: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("running the model: {0}")]
    Run(#[from] attnopt_ir::interp::InterpError),
    #[error("running the model on the CPU backend: {0}")]
    Cpu(#[from] attnopt_cpu::CpuError),
    #[error("{0}")]
    Gpu(#[from] attnopt_gpu::GpuError),
    #[error("{}: writing safetensors: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
    #[error("not supported yet: {0}")]
    NotSupported(String),
    #[error("decoding: {0}")]
    Decode(#[from] attnopt_ir::incremental::IncrementalError),
    #[error("building a graph: {0}")]
    Graph(#[from] attnopt_ir::GraphError),
    #[error(transparent)]
    Rules(#[from] attnopt_rewrite::RuleError),
    #[error("optimising: {0}")]
    Optimize(#[from] attnopt_rewrite::OptimizeError),
    #[error("{}: {msg}", path.display())]
    Usage { path: PathBuf, msg: String },
    #[error("the model needs the input `{name}` (it takes {takes}; given: {given})")]
    MissingInput {
        name: String,
        takes: String,
        given: String,
    },
    /// Exact rewriting changed what the model computes (a user's rule is wrong).
    #[error("{0}")]
    Unsound(String),
    /// A size from the user beyond the model's limits or the memory available.
    #[error("{0}")]
    TooLarge(String),
    /// A setting outside what it may be (a temperature of 0, a token id past the vocabulary).
    #[error("{0}")]
    Invalid(String),
}
