//! The condition predicates a rule may put after `if`: a fixed vocabulary over the analysis
//! data of matched variables (documented in rules/README.md).
//!
//! A condition only reads the e-graph: it never adds nodes or unions classes.

use egg::{EGraph, Id, Subst, Var};

use crate::analysis::TypeAnalysis;
use crate::lang::{Attr, TensorLang};
use attnopt_ir::Dim;

/// An integer argument: a literal or a variable bound to an integer attribute.
#[derive(Debug, Clone)]
pub enum Int {
    Lit(i64),
    Var(Var),
}

/// One predicate.
#[derive(Debug, Clone)]
pub enum Condition {
    /// `dim(?x, axis, n)`: axis `axis` of `?x` (negative counts from the end) is the fixed size `n`.
    Dim { x: Var, axis: i64, n: Int },
    /// `rank(?x, n)`.
    Rank { x: Var, n: i64 },
    /// `weight_only(?x)`: `?x` is computed from weights alone.
    WeightOnly(Var),
    /// `not_weight_only(?x)`.
    NotWeightOnly(Var),
    /// `inverse_perm(?p, ?q)`: the permutations compose to the identity.
    InversePerm(Var, Var),
    /// `identity_perm(?p)`.
    IdentityPerm(Var),
    /// `same_type(?a, ?b)`: equal shapes and dtypes.
    SameType(Var, Var),
    /// `has_shape(?x, ?s)`: `?x`'s shape is the shape attribute `?s`.
    HasShape(Var, Var),
}

fn var(s: &str) -> Result<Var, String> {
    if !s.starts_with('?') {
        return Err(format!(
            "`{s}` is not a pattern variable (those start with `?`)"
        ));
    }
    s.parse().map_err(|e| format!("bad variable `{s}`: {e}"))
}

fn int(s: &str) -> Result<Int, String> {
    if s.starts_with('?') {
        return var(s).map(Int::Var);
    }
    s.parse()
        .map(Int::Lit)
        .map_err(|_| format!("`{s}` is not an integer"))
}

fn lit(s: &str) -> Result<i64, String> {
    s.parse().map_err(|_| format!("`{s}` is not an integer"))
}

impl Condition {
    /// Parses `name(arg, ...)`.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let text = text.trim();
        let (name, rest) = text
            .split_once('(')
            .ok_or_else(|| format!("`{text}`: expected name(arguments)"))?;
        let args = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("`{text}`: missing `)`"))?;
        let args: Vec<&str> = args
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        let want = |n: usize| -> Result<(), String> {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "`{}` takes {n} argument(s), got {}",
                    name.trim(),
                    args.len()
                ))
            }
        };
        Ok(match name.trim() {
            "dim" => {
                want(3)?;
                Condition::Dim { x: var(args[0])?, axis: lit(args[1])?, n: int(args[2])? }
            }
            "rank" => {
                want(2)?;
                Condition::Rank { x: var(args[0])?, n: lit(args[1])? }
            }
            "weight_only" => {
                want(1)?;
                Condition::WeightOnly(var(args[0])?)
            }
            "not_weight_only" => {
                want(1)?;
                Condition::NotWeightOnly(var(args[0])?)
            }
            "inverse_perm" => {
                want(2)?;
                Condition::InversePerm(var(args[0])?, var(args[1])?)
            }
            "identity_perm" => {
                want(1)?;
                Condition::IdentityPerm(var(args[0])?)
            }
            "same_type" => {
                want(2)?;
                Condition::SameType(var(args[0])?, var(args[1])?)
            }
            "has_shape" => {
                want(2)?;
                Condition::HasShape(var(args[0])?, var(args[1])?)
            }
            other => {
                return Err(format!(
                    "unknown condition `{other}` (known: dim, rank, weight_only, not_weight_only, inverse_perm, identity_perm, same_type, has_shape)"
                ))
            }
        })
    }

    pub fn vars(&self) -> Vec<Var> {
        match self {
            Condition::Dim {
                x, n: Int::Var(v), ..
            } => vec![*x, *v],
            Condition::Dim { x, .. } | Condition::Rank { x, .. } => vec![*x],
            Condition::WeightOnly(x) | Condition::NotWeightOnly(x) | Condition::IdentityPerm(x) => {
                vec![*x]
            }
            Condition::InversePerm(a, b)
            | Condition::SameType(a, b)
            | Condition::HasShape(a, b) => vec![*a, *b],
        }
    }

    /// Whether the predicate holds for the match `subst`.
    pub fn holds(&self, egraph: &EGraph<TensorLang, TypeAnalysis>, subst: &Subst) -> bool {
        let data = |v: &Var| subst.get(*v).map(|&id: &Id| &egraph[id].data);
        let perm = |v: &Var| match data(v).and_then(|d| d.attr()) {
            Some(Attr::Dims(d)) => d.iter().map(|x| x.fixed()).collect::<Option<Vec<usize>>>(),
            _ => None,
        };
        let int_of = |i: &Int| match i {
            Int::Lit(n) => Some(*n),
            Int::Var(v) => match data(v).and_then(|d| d.attr()) {
                Some(Attr::Int(n)) => Some(*n),
                _ => None,
            },
        };
        match self {
            Condition::Dim { x, axis, n } => {
                let (Some(ty), Some(n)) = (data(x).and_then(|d| d.ty()), int_of(n)) else {
                    return false;
                };
                let r = ty.shape.rank() as i64;
                let a = if *axis < 0 { r + axis } else { *axis };
                (0..r).contains(&a) && n >= 0 && ty.shape.0[a as usize] == Dim::Fixed(n as usize)
            }
            Condition::Rank { x, n } => data(x)
                .and_then(|d| d.ty())
                .is_some_and(|t| t.shape.rank() as i64 == *n),
            Condition::WeightOnly(x) => data(x).is_some_and(|d| d.weight_only()),
            Condition::NotWeightOnly(x) => {
                data(x).is_some_and(|d| d.ty().is_some() && !d.weight_only())
            }
            Condition::InversePerm(p, q) => match (perm(p), perm(q)) {
                // permute(q) of permute(p): output axis i is input axis p[q[i]].
                (Some(p), Some(q)) if p.len() == q.len() => {
                    (0..p.len()).all(|i| q.get(i).and_then(|&j| p.get(j)) == Some(&i))
                }
                _ => false,
            },
            Condition::IdentityPerm(p) => {
                perm(p).is_some_and(|p| p.iter().enumerate().all(|(i, &x)| i == x))
            }
            Condition::HasShape(x, s) => {
                match (data(x).and_then(|d| d.ty()), data(s).and_then(|d| d.attr())) {
                    (Some(t), Some(Attr::Dims(d))) => t.shape.0 == *d,
                    _ => false,
                }
            }
            Condition::SameType(a, b) => {
                match (data(a).and_then(|d| d.ty()), data(b).and_then(|d| d.ty())) {
                    (Some(x), Some(y)) => x == y,
                    _ => false,
                }
            }
        }
    }
}
