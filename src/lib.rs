//! attnopt: a compiler for transformer checkpoints — the library facade (guide: docs/RUST.md).
//!
//! Load a checkpoint folder (safetensors + config.json) or an optimised folder, and run it on
//! named inputs (the reference interpreter by default; [`Backend::Cpu`] for the JIT backend):
//!
//! ```
//! let model = attnopt::Model::load(std::path::Path::new("fixtures/gpt2"))?;
//! let inputs = attnopt::tensors::read(std::path::Path::new("fixtures/gpt2/golden.safetensors"))?
//!     .into_iter().filter(|(k, _)| model.input_names().contains(&k.as_str())).collect();
//! let outputs = model.run(inputs, attnopt::RunOptions { all_layers: true, ..Default::default() })?;
//! assert_eq!(outputs["last_hidden_state"].shape(), &[2, 7, 32]);
//! assert!(outputs.contains_key("layer.1"));
//! # Ok::<(), attnopt::Error>(())
//! ```
//!
//! Optimise it (exact rewrites, and the approximate conversions allowed, within a budget) and
//! write the optimised folder, as `attnopt optimize` does:
//!
//! ```
//! use attnopt::optimize::{optimize, OptimizeOptions};
//! let model = attnopt::Model::load(std::path::Path::new("fixtures/bert"))?;
//! let opts = OptimizeOptions {
//!     allow: vec!["hydra".into()],
//!     budget: Some(f64::INFINITY), // every eligible layer; the default is 1 % error
//!     ..OptimizeOptions::default()
//! };
//! let opt = optimize(&model, &opts, &mut |step| eprintln!("{step}"))?;
//! assert!(opt.report.layers.iter().all(|l| l.converted == ["hydra-padded"]));
//! let dir = tempfile::tempdir().expect("a temporary folder");
//! let out = dir.path().join("bert-hydra");
//! attnopt::save::save(&model, &opt, &out, &Default::default())?;
//! let optimised = attnopt::Model::load(&out)?;
//! assert!(optimised.is_optimised_folder());
//! # Ok::<(), attnopt::Error>(())
//! ```
//!
//! The pieces live in their own crates and are re-exported: [`ir`] (graph, interpreter) and
//! [`import`] (checkpoints). This crate adds the [`Model`] facade, [`inspect`], [`optimize`],
//! the reports and the CLI.

pub mod ab;
pub mod bench;
pub mod bench_decode;
pub mod calib;
pub mod convert;
pub mod decode;
pub mod emit;
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
pub mod sample;
pub mod save;
pub mod tensors;
pub mod text;

pub use attnopt_cpu::matmul::Precision;
pub use attnopt_cpu::{CpuOptions, MatMulChoice};
pub use attnopt_import as import;
pub use attnopt_import::LoadOptions;
pub use attnopt_ir as ir;
pub use attnopt_rewrite as rewrite;
pub use error::Error;
pub use model::{Backend, Model, RunOptions};
