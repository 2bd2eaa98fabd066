//! attnopt's intermediate representation: the tensor graph every other crate works on.
//!
//! * [`Graph`] — operators ([`Op`]) on petgraph nodes, each with an inferred type and its
//!   transformer layer/role ([`NodeMeta`]);
//! * [`Weight`] — zero-copy, bounds-checked views of checkpoint bytes;
//! * [`infer`] — shape inference; [`cost`] — FLOP/byte counts; [`dot`] — Graphviz export;
//! * [`interp`] — the reference interpreter, which defines what every operator means;
//! * [`parse`] — reads the text form (`Display for Graph`) back into a graph.
//!
//! This crate is the bottom of the dependency graph: it depends on no other attnopt crate.

pub mod builder;
pub mod cost;
pub mod dot;
mod dtype;
pub mod fold;
mod graph;
pub mod incremental;
pub mod infer;
pub mod interp;
mod meta;
mod op;
pub mod parse;
mod print;
pub mod rng;
mod shape;
pub mod sparse;
pub mod summary;
mod tensor;
mod weight;

pub use dtype::DType;
pub use graph::{Graph, GraphError, Node, NodeId, WeightId};
pub use meta::{NodeMeta, Role};
pub use op::{Binary, Op, Reduce, RopeStyle, Scalar, Unary};
pub use shape::{Bindings, Dim, Shape, Sym, BATCH, PAST, SEQ, TOTAL};
pub use summary::AttentionFormula;
pub use tensor::{broadcast_strides, strides, Data, LenMismatch, Tensor};
pub use weight::{Storage, Weight, WeightError};
