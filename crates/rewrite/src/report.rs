//! Per-layer cost figures for reports: FLOPs and bytes of a block before and after
//! optimisation at any sequence length, in total and for the attention core (scores through
//! context, i.e. what Hydra replaces; projections are counted in the total only).
//!
//! It only measures: it never changes a solution or the graph.

use attnopt_ir::cost::Cost;
use attnopt_ir::{Bindings, Role};
use egg::{Id, Language, RecExpr};

use crate::analysis::{Data, TypeAnalysis};
use crate::cost::ir_cost;
use crate::egraph::typecheck;
use crate::lang::TensorLang;
use crate::optimize::Solution;

/// Costs at one sequence length (batch 1).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CostAt {
    pub seq: usize,
    pub before: Cost,
    pub after: Cost,
    pub attention_before: Cost,
    pub attention_after: Cost,
}

/// Whether a node belongs to the attention core: an attention node (by role) that does not
/// multiply by or add a weight, i.e. attention minus its Q/K/V and output projections. Decided
/// by structure as well as role, so a projection the optimizer rewrote (say, with the softmax
/// scale folded into its weights) is never counted as attention work.
fn is_attention_core(node: &TensorLang, role: Role, data: &[Data]) -> bool {
    role.is_attention()
        && !node
            .children()
            .iter()
            .any(|&c| data[usize::from(c)].weight_only())
}

/// (total, attention core) cost of `expr` at `b`; weight-only nodes are precomputed and free.
pub fn expr_costs(
    expr: &RecExpr<TensorLang>,
    roles: &[Role],
    leaves: &TypeAnalysis,
    b: &Bindings,
) -> (Cost, Cost) {
    let Some(data) = typecheck(expr, leaves) else {
        return (Cost::default(), Cost::default());
    };
    let (mut total, mut core) = (Cost::default(), Cost::default());
    for (i, node) in expr.as_ref().iter().enumerate() {
        if data[i].weight_only() {
            continue;
        }
        if let Some((_, c)) = ir_cost(node, &data[i], &|c: Id| data[usize::from(c)].clone(), b) {
            total += c;
            if is_attention_core(node, roles[i], &data) {
                core += c;
            }
        }
    }
    (total, core)
}

/// Before/after costs of `sol` at each of `seqs`.
pub fn costs_at(sol: &Solution, seqs: &[usize]) -> Vec<CostAt> {
    seqs.iter()
        .map(|&seq| {
            let b = Bindings::new(1, seq);
            let (before, attention_before) =
                expr_costs(&sol.original, &sol.original_roles, &sol.leaves, &b);
            let (after, attention_after) = expr_costs(&sol.expr, &sol.roles, &sol.leaves, &b);
            CostAt {
                seq,
                before,
                after,
                attention_before,
                attention_after,
            }
        })
        .collect()
}
