//! Approximate rules, applied as recorded per-layer transformations — never as unions in the
//! exact e-graph (a union asserts equality, and congruence and explanations would then treat
//! the approximation as exact; EGRAPH-NOTES §5.9).
//!
//! [`apply_once`] finds the first match of a rule's left side in a block expression and
//! returns a new expression with that subterm replaced by the instantiated right side. The
//! converted block is then optimised with the exact rules like any other.

use std::collections::HashMap;

use attnopt_ir::{AttentionFormula, Role};
use egg::{ENodeOrVar, Id, Language, RecExpr, Searcher};

use crate::analysis::{Data, TypeAnalysis};
use crate::block::BlockExpr;
use crate::checked::type_instantiation;
use crate::egraph::{egraph_of, prepare};
use crate::lang::TensorLang;
use crate::rules::{Body, Rule};

/// A block expression with one subterm replaced by `rule`'s right side, or `None` if the rule
/// does not match (or its conditions or types refuse every match).
pub fn apply_once(rule: &Rule, be: &BlockExpr, leaves: &TypeAnalysis) -> Option<BlockExpr> {
    let Body::Pattern { lhs, rhs } = &rule.body else {
        return None;
    };
    let (eg, ids) = egraph_of(be, leaves.clone(), false);
    // Each class's first expression node (the e-graph of a plain expression has one class per
    // distinct subterm).
    let mut first: HashMap<Id, usize> = HashMap::new();
    for (i, &c) in ids.iter().enumerate() {
        first.entry(eg.find(c)).or_insert(i);
    }
    let mut matches = lhs.search(&eg);
    matches.sort_by_key(|m| first.get(&eg.find(m.eclass)).copied().unwrap_or(usize::MAX));
    for m in matches {
        let target = first[&eg.find(m.eclass)];
        let want = eg[m.eclass].data.ty().cloned();
        for subst in &m.substs {
            if !rhs.conditions.iter().all(|c| c.holds(&eg, subst)) {
                continue;
            }
            match type_instantiation(&eg, &rhs.rhs.ast, subst) {
                Data::Value { ty, .. } if Some(&ty) == want.as_ref() => {}
                _ => continue,
            }
            // Rebuild: nodes before the target are copied; the target becomes the right side,
            // whose variables point at the copies of their classes' first nodes.
            let role = be.roles[target];
            let mut expr: RecExpr<TensorLang> = RecExpr::default();
            let mut roles = Vec::new();
            let mut remap: Vec<Option<Id>> = vec![None; be.expr.len()];
            for (i, node) in be.expr.as_ref().iter().enumerate() {
                if i == target {
                    let mut made: Vec<Id> = Vec::new();
                    for pnode in rhs.rhs.ast.as_ref() {
                        let id = match pnode {
                            ENodeOrVar::Var(v) => remap[first[&eg.find(*subst.get(*v)?)]]?,
                            ENodeOrVar::ENode(n) => {
                                roles.push(role.or(Some(Role::AttnContext)));
                                expr.add(n.clone().map_children(|c| made[usize::from(c)]))
                            }
                        };
                        made.push(id);
                    }
                    remap[i] = made.last().copied();
                    continue;
                }
                let n = node
                    .clone()
                    .map_children(|c| remap[usize::from(c)].expect("children come first"));
                remap[i] = Some(expr.add(n));
                roles.push(be.roles[i]);
            }
            // The root is the target's replacement when the target was the root (a bare
            // variable on the right side adds no node, so it need not come last).
            let root = remap[be.expr.len() - 1].expect("the root is rebuilt");
            let (expr, roles) = compact_at(&expr, &roles, root);
            return Some(BlockExpr {
                expr,
                roles,
                input_types: be.input_types.clone(),
                weight_types: be.weight_types.clone(),
            });
        }
    }
    None
}

/// Drops the nodes the root does not reach (keeping leaves, whose positions name block inputs).
pub fn compact(
    expr: &RecExpr<TensorLang>,
    roles: &[Option<Role>],
) -> (RecExpr<TensorLang>, Vec<Option<Role>>) {
    match expr.as_ref().len() {
        0 => (RecExpr::default(), vec![]),
        n => compact_at(expr, roles, Id::from(n - 1)),
    }
}

/// [`compact`] with `root` as the root, which ends up last (a leaf root is repeated at the end).
pub fn compact_at(
    expr: &RecExpr<TensorLang>,
    roles: &[Option<Role>],
    root: Id,
) -> (RecExpr<TensorLang>, Vec<Option<Role>>) {
    let nodes = expr.as_ref();
    let mut live = vec![false; nodes.len()];
    live[usize::from(root)] = true;
    for i in (0..nodes.len()).rev() {
        let leaf = matches!(nodes[i], TensorLang::Input(_) | TensorLang::Weight(_));
        if live[i] || leaf {
            live[i] = true;
            for &c in nodes[i].children() {
                live[usize::from(c)] = true;
            }
        }
    }
    let mut out = RecExpr::default();
    let mut out_roles = Vec::new();
    let mut remap: Vec<Option<Id>> = vec![None; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if live[i] {
            remap[i] = Some(
                out.add(
                    n.clone()
                        .map_children(|c| remap[usize::from(c)].expect("live children are kept")),
                ),
            );
            out_roles.push(roles[i]);
        }
    }
    let r = usize::from(root);
    if remap[r].map(usize::from) != Some(out.as_ref().len() - 1) {
        out.add(
            nodes[r]
                .clone()
                .map_children(|c| remap[usize::from(c)].expect("kept")),
        );
        out_roles.push(roles[r]);
    }
    (out, out_roles)
}

/// Why no rule of an approximate family converts a layer. Its `Display` is the reason the
/// report gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the layer is not a single-output block")]
    NotABlock,
    #[error("no approximate rule named {family} or {family}-* is loaded")]
    NoRule { family: String },
    #[error("{kind} attention, not softmax: nothing to approximate")]
    NotSoftmax { kind: AttentionFormula },
    #[error("softmax with rotary embeddings: no {family} rule expresses it")]
    Rotary { family: String },
    #[error("grouped-query attention: no {family} rule expresses it")]
    GroupedQuery { family: String },
    #[error("softmax attention in a layout no {family} rule matches")]
    NoMatch { family: String },
}

/// For each layer with attention: the name of the first rule of `family` that applies, or why
/// none does.
pub fn candidates(
    g: &attnopt_ir::Graph,
    rules: &crate::RuleSet,
    family: &str,
) -> Vec<(u32, Result<String, Refusal>)> {
    let summaries = attnopt_ir::summary::attention_layers(g, &attnopt_ir::Bindings::new(1, 1));
    let family_rules = rules.approx_family(family);
    let (blocks, _) = crate::block::blocks(g);
    let family = || family.to_string();
    let mut out = Vec::new();
    for s in summaries {
        let Some(b) = blocks.iter().find(|b| b.layer == s.layer) else {
            out.push((s.layer, Err(Refusal::NotABlock)));
            continue;
        };
        let verdict = if family_rules.is_empty() {
            Err(Refusal::NoRule { family: family() })
        } else if s.kind != AttentionFormula::Softmax {
            Err(Refusal::NotSoftmax { kind: s.kind })
        } else if s.rope {
            Err(Refusal::Rotary { family: family() })
        } else if s.kv_heads != s.heads {
            Err(Refusal::GroupedQuery { family: family() })
        } else {
            let (be, an, _) = prepare(g, b);
            family_rules
                .iter()
                .find(|r| apply_once(r, &be, &an).is_some())
                .map(|r| r.name.clone())
                .ok_or_else(|| Refusal::NoMatch { family: family() })
        };
        out.push((s.layer, verdict));
    }
    out
}
