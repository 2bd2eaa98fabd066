//! Explanations: how a block was rewritten into its optimised form, one line per rewrite step,
//! each naming the rule that justifies it (egg explanations, EGRAPH-NOTES §6). Used by
//! `optimize --explain` for one layer at a time, since it saturates again with explanations on.
//!
//! It only reports: it never changes the optimised graph, and the optimizer never depends on it.

use std::collections::HashMap;

use crate::analysis::TypeAnalysis;
use crate::block::BlockExpr;
use crate::cost::CostModel;
use crate::egraph::{saturate, Saturated};
use crate::lang::TensorLang;
use crate::optimize::Options;

/// The egg explanation of how block `be` was rewritten into its optimised form, phase by
/// phase: one line per step, each naming the rule that justifies it (code rules included).
/// Saturates again with explanations on, so use it for one layer at a time.
pub fn explain(be: &BlockExpr, an: TypeAnalysis, opts: &Options) -> Result<Vec<String>, String> {
    let model = CostModel::at_seq(opts.seq);
    let mut lines = Vec::new();
    let mut current = BlockExpr {
        expr: be.expr.clone(),
        roles: be.roles.clone(),
        input_types: be.input_types.clone(),
        weight_types: be.weight_types.clone(),
    };
    for (code_rules, title) in [
        (false, "phase 1: pattern rules"),
        (true, "phase 2: code rules, then pattern rules"),
    ] {
        let Saturated {
            mut runner, ids, ..
        } = saturate(&current, &an, opts.rules, opts.limits, code_rules, true);
        let root = *ids.last().ok_or("empty block")?;
        let ex = crate::extract::extract(&runner.egraph, root, &model, &HashMap::new())
            .ok_or("extraction found no acyclic form")?;
        lines.push(format!("# {title}"));
        let mut explanation = runner.explain_equivalence(&current.expr, &ex.expr);
        let flat = explanation.make_flat_explanation().clone();
        for w in flat.windows(2) {
            if let Some((rule, path, forward)) = rewrite_site(&w[1]) {
                let (before, after) = (subterm(&w[0], &path), subterm(&w[1], &path));
                let dir = if forward { "" } else { " (backwards)" };
                lines.push(format!(
                    "{rule}{dir}: {}  =>  {}",
                    shorten(&before),
                    shorten(&after)
                ));
            }
        }
        current.roles = vec![None; ex.expr.len()];
        current.expr = ex.expr;
    }
    Ok(lines)
}

/// The rule, the path (child indices from the root) and the direction of the one rewrite a
/// flat explanation step records.
fn rewrite_site(t: &egg::FlatTerm<TensorLang>) -> Option<(String, Vec<usize>, bool)> {
    if let Some(r) = t.forward_rule {
        return Some((r.to_string(), vec![], true));
    }
    if let Some(r) = t.backward_rule {
        return Some((r.to_string(), vec![], false));
    }
    t.children.iter().enumerate().find_map(|(i, c)| {
        rewrite_site(c).map(|(r, mut p, f)| {
            p.insert(0, i);
            (r, p, f)
        })
    })
}

/// The subterm at `path`, printed without rewrite annotations.
fn subterm(t: &egg::FlatTerm<TensorLang>, path: &[usize]) -> String {
    match path.split_first() {
        Some((&i, rest)) => t
            .children
            .get(i)
            .map_or_else(String::new, |c| subterm(c, rest)),
        None => t.remove_rewrites().to_string(),
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 240;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}
