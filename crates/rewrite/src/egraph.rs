//! A block as an e-graph problem, shared by every pass that works on blocks (the exact
//! optimizer, explanations, approximate rules, soundness checks): the block's expression with
//! the token axis made symbolic where that type-checks ([`prepare`]), its types
//! ([`typecheck`]) and cost ([`expr_cost`]), its e-graph ([`egraph_of`]), and one saturation
//! with the exact rules ([`saturate`]).
//!
//! This module builds and saturates; it never extracts, chooses between forms or applies an
//! approximate rule (an approximation must never become a union in an e-graph).

use std::time::Duration;

use attnopt_ir::Graph;
use egg::{EGraph, Id, Language, RecExpr, Runner};

use crate::analysis::{type_node, Data, TypeAnalysis};
use crate::block::{self, Block, BlockExpr};
use crate::code_rules::Groups;
use crate::cost::CostModel;
use crate::lang::TensorLang;
use crate::rules::{Body, Kind, RuleSet};

/// Bounds on one block's saturation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Limits {
    pub nodes: usize,
    pub iterations: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            nodes: 20_000,
            iterations: 15,
            time: Duration::from_secs(10),
        }
    }
}

/// Types every node of `expr`; `None` if any node is ill-typed.
pub fn typecheck(expr: &RecExpr<TensorLang>, an: &TypeAnalysis) -> Option<Vec<Data>> {
    let mut done: Vec<Data> = Vec::with_capacity(expr.len());
    for node in expr.as_ref() {
        let d = type_node(an, node, &|c: Id| done[usize::from(c)].clone());
        if matches!(d, Data::Invalid(_)) {
            return None;
        }
        done.push(d);
    }
    Some(done)
}

/// Estimated cost of `expr` as it stands (each node once).
pub fn expr_cost(expr: &RecExpr<TensorLang>, data: &[Data], model: &CostModel) -> f64 {
    expr.as_ref()
        .iter()
        .enumerate()
        .map(|(i, n)| model.node_cost(n, &data[i], &|c: Id| data[usize::from(c)].clone()))
        .sum()
}

/// The block's expression and analysis, with the token axis symbolic when that type-checks.
pub fn prepare(g: &Graph, b: &Block) -> (BlockExpr, TypeAnalysis, bool) {
    let analysis = |be: &BlockExpr| TypeAnalysis {
        inputs: be.input_types.clone(),
        weights: be.weight_types.clone(),
        conflicts: vec![],
    };
    let be = block::to_expr(g, b, true);
    let an = analysis(&be);
    let generalised = b
        .inputs
        .iter()
        .zip(&be.input_types)
        .any(|(&i, t)| g.node(i).ty != *t);
    if !generalised || typecheck(&be.expr, &an).is_some() {
        return (be, an, generalised);
    }
    let be = block::to_expr(g, b, false);
    let an = analysis(&be);
    (be, an, false)
}

/// Builds the e-graph of `be`, returning it with the class of each expression node.
pub fn egraph_of(
    be: &BlockExpr,
    an: TypeAnalysis,
    explain: bool,
) -> (EGraph<TensorLang, TypeAnalysis>, Vec<Id>) {
    let mut eg = EGraph::new(an);
    if explain {
        eg = eg.with_explanations_enabled();
    }
    let mut ids: Vec<Id> = Vec::with_capacity(be.expr.len());
    for node in be.expr.as_ref() {
        let n = node.clone().map_children(|c| ids[usize::from(c)]);
        ids.push(eg.add(n));
    }
    eg.rebuild();
    (eg, ids)
}

/// A saturated block: the runner, the class of each expression node, and what each code rule
/// united (by rule name).
pub struct Saturated {
    pub runner: Runner<TensorLang, TypeAnalysis>,
    pub ids: Vec<Id>,
    pub fired: Vec<(String, Groups)>,
}

/// Builds `be`'s e-graph, applies the exact code rules of `rules` (when `code_rules`) and
/// saturates with its exact pattern rules within `limits`.
pub fn saturate(
    be: &BlockExpr,
    an: &TypeAnalysis,
    rules: &RuleSet,
    limits: Limits,
    code_rules: bool,
    explain: bool,
) -> Saturated {
    let (mut eg, ids) = egraph_of(be, an.clone(), explain);
    let mut fired = Vec::new();
    if code_rules {
        for rule in rules
            .rules
            .iter()
            .filter(|r| r.kind == Kind::Exact && matches!(r.body, Body::Code))
        {
            let groups = crate::code_rules::apply(&rule.name, &mut eg);
            if !groups.is_empty() {
                fired.push((rule.name.clone(), groups));
            }
        }
    }
    let runner = Runner::default()
        .with_egraph(eg)
        .with_node_limit(limits.nodes)
        .with_iter_limit(limits.iterations)
        .with_time_limit(limits.time)
        .run(&rules.exact_rewrites());
    Saturated { runner, ids, fired }
}
