//! attnopt's e-graph optimizer.
//!
//! * [`lang`] — the egg language over ir operators (attributes as leaf children);
//! * [`analysis`] — per-class type (shape, dtype) and weight-only facts;
//! * [`rules`] — rule files (`rules/*.rules`) with `file:line` errors; [`condition`] — the
//!   predicates a rule may test; [`checked`] — the applier that type-checks every right side;
//!   [`code_rules`] — rules that need code (Q/K/V fusion);
//! * [`block`] — graphs cut into per-layer blocks, and stamped back;
//! * [`egraph`] — a block as an e-graph problem: prepared, type-checked, costed, built and
//!   saturated (shared by every pass below);
//! * [`cost`] and [`extract`] — the sequence-length-aware cost model and DAG-aware extraction;
//!   [`roles`] — roles of an extracted expression's nodes;
//! * [`optimize`] — the exact optimizer; [`explain`] — how a block was rewritten, rule by rule;
//! * [`approx`] — approximate rules applied per layer; [`report`] — per-layer costs at any N;
//! * [`soundness`] — exact rules checked numerically on a model's own layers (users' rules).
//!
//! Modules depend one way, each on those listed before it (the shared tools' `modcycles` lists
//! any loop): `lang` ← `analysis` ← `egraph` ← `approx` ← `optimize` ← `explain`, `report`;
//! `soundness` uses `egraph` and `approx`.
//!
//! Depends on `attnopt-ir` only.

pub mod analysis;
pub mod approx;
pub mod block;
pub mod checked;
pub mod code_rules;
pub mod condition;
pub mod cost;
pub mod egraph;
pub mod explain;
pub mod extract;
pub mod factored;
pub mod lang;
pub mod optimize;
pub mod report;
pub mod roles;
pub mod rules;
pub mod soundness;

pub use optimize::{optimize, Limits, OptimizeError, Optimized, Options};
pub use rules::{RuleError, RuleSet};
