//! attnopt: a compiler for transformer checkpoints — the library facade.
//!
//! ```no_run
//! let model = attnopt::Model::load(std::path::Path::new("fixtures/bert"))?;
//! let inputs = attnopt::tensors::read(std::path::Path::new("fixtures/bert/golden.safetensors"))?;
//! let inputs = inputs.into_iter().filter(|(k, _)| model.input_names().contains(&k.as_str())).collect();
//! let outputs = model.run(inputs, attnopt::RunOptions::default())?;
//! # Ok::<(), attnopt::Error>(())
//! ```
//!
//! The pieces live in their own crates and are re-exported: [`ir`] (graph, interpreter) and
//! [`import`] (checkpoints). This crate adds the [`Model`] facade, [`inspect`] and the CLI.

pub mod ab;
pub mod bench;
pub mod calib;
pub mod convert;
mod error;
pub mod fit_factored;
pub mod fit_sparse_ff;
pub mod graph_svg;
pub mod html_report;
pub mod inspect;
pub mod limits;
pub mod lstsq;
mod model;
pub mod optimize;
pub mod output;
pub mod progress;
pub mod refit;
pub mod report;
pub mod run;
pub mod save;
pub mod tensors;

pub use attnopt_cpu::matmul::Precision;
pub use attnopt_cpu::{CpuOptions, MatMulChoice};
pub use attnopt_import as import;
pub use attnopt_import::LoadOptions;
pub use attnopt_ir as ir;
pub use attnopt_rewrite as rewrite;
pub use error::Error;
pub use model::{Backend, Model, RunOptions};
