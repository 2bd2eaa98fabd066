//! The e-graph analysis: every e-class knows its value's type (via `ir::infer`, the same
//! shape inference the graph uses) and whether it depends on weights only.
//!
//! Merging two classes whose types differ would mean a rule equated tensors of different
//! shapes: that is recorded in [`TypeAnalysis::conflicts`] and makes the optimizer fall back to
//! the original block. Rules cannot normally get there: [`crate::checked`] type-checks every
//! right-hand side before it is added.
//!
//! It never adds nodes or unions classes; it only describes them.

use attnopt_ir::infer::{infer, Typed};
use egg::{Analysis, DidMerge, EGraph, Id};

use crate::lang::{Attr, TensorLang};

/// What an e-class is.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// An attribute leaf.
    Attr(Attr),
    /// A tensor; `weight_only` when it can be computed from weights alone (so it is
    /// precomputed once, not per run).
    Value { ty: Typed, weight_only: bool },
    /// Not a well-typed tensor (never added by a checked rule).
    Invalid(String),
}

impl Data {
    pub fn ty(&self) -> Option<&Typed> {
        match self {
            Data::Value { ty, .. } => Some(ty),
            _ => None,
        }
    }

    pub fn weight_only(&self) -> bool {
        matches!(
            self,
            Data::Value {
                weight_only: true,
                ..
            }
        )
    }

    pub fn attr(&self) -> Option<&Attr> {
        match self {
            Data::Attr(a) => Some(a),
            _ => None,
        }
    }
}

/// The analysis state: types of the block's leaves, and any type conflicts seen.
#[derive(Debug, Clone, Default)]
pub struct TypeAnalysis {
    pub inputs: Vec<Typed>,
    pub weights: Vec<Typed>,
    pub conflicts: Vec<String>,
}

/// The type of `node` given its children's data.
pub fn type_node(an: &TypeAnalysis, node: &TensorLang, child: &dyn Fn(Id) -> Data) -> Data {
    match node {
        TensorLang::Attr(a) => Data::Attr(a.clone()),
        TensorLang::Input(k) => match an.inputs.get(*k as usize) {
            Some(ty) => Data::Value {
                ty: ty.clone(),
                weight_only: false,
            },
            None => Data::Invalid(format!("no input in:{k}")),
        },
        TensorLang::Weight(k) => match an.weights.get(*k as usize) {
            Some(ty) => Data::Value {
                ty: ty.clone(),
                weight_only: true,
            },
            None => Data::Invalid(format!("no weight w:{k}")),
        },
        TensorLang::Op(name, _) => {
            let (op, operands) = match node.decode_op(|c| child(c).attr().cloned()) {
                Ok(decoded) => decoded,
                Err(e) => return Data::Invalid(e.to_string()),
            };
            let mut tys = Vec::with_capacity(operands.len());
            let mut weight_only = true;
            for &c in operands {
                match child(c) {
                    Data::Value { ty, weight_only: w } => {
                        tys.push(ty);
                        weight_only &= w;
                    }
                    _ => return Data::Invalid(format!("{name}: an operand is not a tensor")),
                }
            }
            match infer(&op, &tys) {
                Ok(ty) => Data::Value { ty, weight_only },
                Err(e) => Data::Invalid(e.to_string()),
            }
        }
    }
}

impl Analysis<TensorLang> for TypeAnalysis {
    type Data = Data;

    fn make(egraph: &mut EGraph<TensorLang, Self>, enode: &TensorLang, _id: Id) -> Data {
        type_node(&egraph.analysis, enode, &|c| egraph[c].data.clone())
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        match (&mut *a, b) {
            (x, y) if *x == y => DidMerge(false, false),
            (
                Data::Value {
                    ty: t1,
                    weight_only: w1,
                },
                Data::Value {
                    ty: t2,
                    weight_only: w2,
                },
            ) if *t1 == t2 => {
                let changed = !*w1 && w2;
                *w1 |= w2;
                DidMerge(changed, *w1 != w2)
            }
            (x @ Data::Invalid(_), y) => {
                *x = y;
                DidMerge(true, false)
            }
            (_, Data::Invalid(_)) => DidMerge(false, true),
            (x, y) => {
                self.conflicts.push(format!("merged {x:?} with {y:?}"));
                DidMerge(false, true)
            }
        }
    }
}
