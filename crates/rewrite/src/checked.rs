//! The applier every data rule uses: it checks the rule's conditions, then type-checks the
//! right-hand side *before* adding anything (as Tensat's `CheckApply` does) and refuses an
//! instantiation whose type differs from the matched class's. An unsound or ill-shaped rule
//! therefore cannot put a wrong equality into the e-graph.
//!
//! It never adds a node before the whole right side has type-checked.

use egg::{Applier, EGraph, ENodeOrVar, Id, Pattern, PatternAst, Subst, Symbol, Var};

use crate::analysis::{type_node, Data, TypeAnalysis};
use crate::condition::Condition;
use crate::lang::TensorLang;

/// A right-hand side with its conditions.
#[derive(Debug, Clone)]
pub struct Checked {
    pub rhs: Pattern<TensorLang>,
    pub conditions: Vec<Condition>,
}

/// The data the instantiation of `ast` under `subst` would have, computed without adding it.
pub fn type_instantiation(
    egraph: &EGraph<TensorLang, TypeAnalysis>,
    ast: &PatternAst<TensorLang>,
    subst: &Subst,
) -> Data {
    let mut done: Vec<Data> = Vec::with_capacity(ast.len());
    for node in ast.as_ref() {
        let d = match node {
            ENodeOrVar::Var(v) => match subst.get(*v) {
                Some(&id) => egraph[id].data.clone(),
                None => Data::Invalid(format!("unbound {v}")),
            },
            ENodeOrVar::ENode(n) => {
                type_node(&egraph.analysis, n, &|c: Id| done[usize::from(c)].clone())
            }
        };
        done.push(d);
    }
    done.pop().unwrap_or(Data::Invalid("empty pattern".into()))
}

impl Applier<TensorLang, TypeAnalysis> for Checked {
    fn apply_one(
        &self,
        egraph: &mut EGraph<TensorLang, TypeAnalysis>,
        eclass: Id,
        subst: &Subst,
        searcher_ast: Option<&PatternAst<TensorLang>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        if !self.conditions.iter().all(|c| c.holds(egraph, subst)) {
            return vec![];
        }
        let want = egraph[eclass].data.ty().cloned();
        match type_instantiation(egraph, &self.rhs.ast, subst) {
            Data::Value { ty, .. } if Some(&ty) == want.as_ref() => {}
            _ => return vec![],
        }
        self.rhs
            .apply_one(egraph, eclass, subst, searcher_ast, rule_name)
    }

    fn vars(&self) -> Vec<Var> {
        let mut v = self.rhs.vars();
        for c in &self.conditions {
            for x in c.vars() {
                if !v.contains(&x) {
                    v.push(x);
                }
            }
        }
        v
    }
}
