//! Exact rules whose matching needs code. Rule files reference them by name
//! (`exact qkv-fusion: code`); the optimizer applies each once, before saturation, so they
//! cannot feed on their own results (no fused-of-fused products).
//!
//! A code rule is exact: it never unites classes whose types differ, and never approximates.

use std::collections::{BTreeMap, BTreeSet};

use attnopt_ir::Dim;
use egg::{EGraph, Id, Symbol};

use crate::analysis::TypeAnalysis;
use crate::lang::{Attr, TensorLang};

/// The code rules that exist.
/// `factored` depends on weight values, which the e-graph never sees: it runs as a graph pass
/// before the blocks are cut (`crate::factored`), and does nothing here.
pub const NAMES: &[&str] = &["qkv-fusion", crate::factored::NAME];

/// Classes a code rule united with a new form, grouped so that a group pays off only when all
/// its members take the new node (e.g. the three slices of one fused product): extraction
/// decides per group (see `optimize::phase`).
pub type Groups = Vec<Vec<(Id, TensorLang)>>;

/// Applies code rule `name` to `egraph`; returns the groups of (class, new node) it united.
pub fn apply(name: &str, egraph: &mut EGraph<TensorLang, TypeAnalysis>) -> Groups {
    match name {
        "qkv-fusion" => qkv_fusion(egraph),
        _ => vec![],
    }
}

/// One product `x · w` (optionally `+ b`) that could join a fused group.
#[derive(Debug, Clone)]
struct Member {
    /// The product's class.
    product: Id,
    w: Id,
    /// `(class of product + bias, bias)`, when a weight-only bias is added to the product.
    biased: Option<(Id, Id)>,
    width: usize,
}

/// Classes multiplied by a `block_onehot` mask (a sparse feed-forward's first product, or that
/// product plus a bias): fusing such a product with its siblings would make the fused product
/// compute every unit, where the sparse kernel (`lower`'s `sparse_ff`) reads only the chosen
/// ones; so they stay apart.
fn sparsely_gated(egraph: &EGraph<TensorLang, TypeAnalysis>) -> BTreeSet<Id> {
    let (mul, onehot) = (Symbol::from("mul"), Symbol::from("block_onehot"));
    let is_mask = |c: Id| {
        egraph[c]
            .nodes
            .iter()
            .any(|n| matches!(n, TensorLang::Op(op, _) if *op == onehot))
    };
    let mut gated = BTreeSet::new();
    for class in egraph.classes() {
        for node in &class.nodes {
            if let TensorLang::Op(op, ch) = node {
                if *op == mul && ch.len() == 2 {
                    let (a, b) = (egraph.find(ch[0]), egraph.find(ch[1]));
                    if is_mask(b) {
                        gated.insert(a);
                    }
                    if is_mask(a) {
                        gated.insert(b);
                    }
                }
            }
        }
    }
    // Through a bias add: `mul(add(matmul(h, W1), b1), mask)`.
    let add = Symbol::from("add");
    let mut biased = BTreeSet::new();
    for &c in &gated {
        for node in &egraph[c].nodes {
            if let TensorLang::Op(op, ch) = node {
                if *op == add {
                    biased.extend(ch.iter().map(|&x| egraph.find(x)));
                }
            }
        }
    }
    gated.extend(biased);
    gated
}

/// Products `x · w_i (+ b_i)` sharing the activation `x`, with weight-only `w_i` of rank 2, become
/// `x · concat(w_1, …)` (+ `concat(b_1, …)`) and one slice per member. The slices are united with
/// the original products, so extraction decides whether the fused form is cheaper.
fn qkv_fusion(egraph: &mut EGraph<TensorLang, TypeAnalysis>) -> Groups {
    let matmul = Symbol::from("matmul");
    let add = Symbol::from("add");
    let gated = sparsely_gated(egraph);
    // Products by activation class.
    let mut products: BTreeMap<Id, Vec<Member>> = BTreeMap::new();
    let mut by_class: BTreeMap<Id, (Id, usize)> = BTreeMap::new();
    for class in egraph.classes() {
        for node in &class.nodes {
            let TensorLang::Op(op, ch) = node else {
                continue;
            };
            if *op != matmul || ch.len() != 2 || gated.contains(&class.id) {
                continue;
            }
            let (x, w) = (egraph.find(ch[0]), egraph.find(ch[1]));
            let (dx, dw) = (&egraph[x].data, &egraph[w].data);
            let Some(tw) = dw.ty() else { continue };
            if !dw.weight_only() || dx.weight_only() || tw.shape.rank() != 2 {
                continue;
            }
            let Some(width) = tw.shape.0[1].fixed() else {
                continue;
            };
            let list = products.entry(x).or_default();
            if !list.iter().any(|m| m.w == w) {
                list.push(Member {
                    product: class.id,
                    w,
                    biased: None,
                    width,
                });
                by_class.insert(class.id, (x, list.len() - 1));
            }
        }
    }
    // Biases added directly to a product.
    for class in egraph.classes() {
        for node in &class.nodes {
            let TensorLang::Op(op, ch) = node else {
                continue;
            };
            if *op != add || ch.len() != 2 {
                continue;
            }
            let (m, b) = (egraph.find(ch[0]), egraph.find(ch[1]));
            let db = &egraph[b].data;
            let Some(&(x, i)) = by_class.get(&m) else {
                continue;
            };
            let width = products[&x][i].width;
            if db.weight_only() && db.ty().is_some_and(|t| t.shape.0 == [Dim::Fixed(width)]) {
                let member = &mut products.get_mut(&x).expect("grouped above")[i];
                if member.biased.is_none() {
                    member.biased = Some((class.id, b));
                }
            }
        }
    }
    let mut groups = Groups::new();
    for (x, members) in products {
        if members.len() < 2 {
            continue;
        }
        let with_bias = members.iter().all(|m| m.biased.is_some());
        let attr = |g: &mut EGraph<TensorLang, TypeAnalysis>, a: Attr| g.add(TensorLang::Attr(a));
        let one = attr(egraph, Attr::Int(1));
        let mut wcat = vec![one];
        wcat.extend(members.iter().map(|m| m.w));
        let wcat = egraph.add(TensorLang::Op("concat".into(), wcat));
        let mut y = egraph.add(TensorLang::Op("matmul".into(), vec![x, wcat]));
        if with_bias {
            let zero = attr(egraph, Attr::Int(0));
            let mut bcat = vec![zero];
            bcat.extend(members.iter().filter_map(|m| m.biased.map(|(_, b)| b)));
            let bcat = egraph.add(TensorLang::Op("concat".into(), bcat));
            y = egraph.add(TensorLang::Op("add".into(), vec![y, bcat]));
        }
        let Some(rank) = egraph[y].data.ty().map(|t| t.shape.rank()) else {
            continue;
        };
        let axis = attr(egraph, Attr::Int(rank as i64 - 1));
        let mut start = 0;
        let mut group = Vec::new();
        for m in &members {
            let s = attr(egraph, Attr::Int(start as i64));
            let e = attr(egraph, Attr::Dims(vec![Dim::Fixed(start + m.width)]));
            let node = TensorLang::Op("slice".into(), vec![axis, s, e, y]);
            let slice = egraph.add(node.clone());
            start += m.width;
            let target = match (with_bias, m.biased) {
                (true, Some((sum, _))) => sum,
                _ => m.product,
            };
            if egraph[slice].data.ty() == egraph[target].data.ty() {
                egraph.union_trusted(target, slice, "qkv-fusion");
                group.push((target, node));
            }
        }
        if group.len() > 1 {
            groups.push(group);
        }
    }
    egraph.rebuild();
    groups
}
