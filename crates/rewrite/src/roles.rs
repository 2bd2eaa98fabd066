//! Roles (`ir::Role`) for the nodes of an extracted expression, so reports and summaries keep
//! saying which node is a projection, a score or a context after rewriting.
//!
//! A role is metadata: this module never changes what a node computes, and never decides what
//! is extracted.

use std::collections::HashMap;

use attnopt_ir::Role;
use egg::{EGraph, Id, Language};

use crate::analysis::TypeAnalysis;
use crate::extract::Extraction;
use crate::lang::TensorLang;

/// The role of each node of `ex`, extracted from `eg`, whose classes `ids` hold the original
/// expression's nodes with roles `original`.
///
/// A class holding an original node keeps its role. A new node computed from weights takes its
/// first operand's role; one with such an operand (a projection) takes that role; anything else
/// takes its user's role.
pub fn infer(
    eg: &EGraph<TensorLang, TypeAnalysis>,
    ids: &[Id],
    original: &[Option<Role>],
    ex: &Extraction,
) -> Vec<Option<Role>> {
    let mut class_role: HashMap<Id, Role> = HashMap::new();
    for (i, &c) in ids.iter().enumerate() {
        if let Some(r) = original[i] {
            class_role.entry(eg.find(c)).or_insert(r);
        }
    }
    let nodes = ex.expr.as_ref();
    let weight_only: Vec<bool> = ex
        .classes
        .iter()
        .map(|c| eg[*c].data.weight_only())
        .collect();
    let mut roles: Vec<Option<Role>> = ex
        .classes
        .iter()
        .map(|c| class_role.get(&eg.find(*c)).copied())
        .collect();
    for i in 0..nodes.len() {
        if roles[i].is_none() && matches!(nodes[i], TensorLang::Op(..)) {
            let children = nodes[i].children();
            roles[i] = if weight_only[i] {
                // Weights of several projections joined (fused Q/K/V) belong to all of them.
                let mut rs: Vec<Role> = children
                    .iter()
                    .filter_map(|&c| roles[usize::from(c)])
                    .collect();
                rs.dedup();
                let qkv =
                    |r: &Role| matches!(r, Role::QProj | Role::KProj | Role::VProj | Role::QkvProj);
                if rs.len() > 1 && rs.iter().all(qkv) {
                    Some(Role::QkvProj)
                } else {
                    rs.first().copied()
                }
            } else {
                children
                    .iter()
                    .filter(|&&c| weight_only[usize::from(c)])
                    .find_map(|&c| roles[usize::from(c)])
            };
        }
    }
    for i in (0..nodes.len()).rev() {
        let r = roles[i];
        for &c in nodes[i].children() {
            let slot = &mut roles[usize::from(c)];
            if slot.is_none() && matches!(nodes[usize::from(c)], TensorLang::Op(..)) {
                *slot = r;
            }
        }
    }
    roles
}
