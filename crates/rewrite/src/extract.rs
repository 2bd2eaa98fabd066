//! DAG-aware greedy extraction: picks one e-node per e-class so that the *shared* cost of the
//! result (each chosen class paid once, however many users it has) is small.
//!
//! egg's `Extractor` is greedy over tree cost, which pays a shared subterm once per use and so
//! never chooses a fused Q/K/V product (EGRAPH-NOTES §5.1). Here a candidate's cost is the sum
//! over the *set* of classes it depends on (the idea of extraction-gym's `faster_greedy_dag`),
//! and a node whose dependency set contains its own class is skipped, so no cycle is extracted.
//! A local search then revisits the extracted DAG one class at a time ([`improve`]), since the
//! greedy pass fixes a class's choice before it knows which values its users will share.
//!
//! Extraction only reads the e-graph: it never adds nodes or unions classes.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use egg::{EGraph, Id, Language, RecExpr};

use crate::analysis::{Data, TypeAnalysis};
use crate::cost::CostModel;
use crate::lang::TensorLang;

/// The chosen node of a class and what choosing it costs.
#[derive(Clone)]
struct Choice {
    node: TensorLang,
    total: f64,
    /// Every class the choice depends on (itself included) with its own node cost.
    deps: Rc<BTreeMap<Id, f64>>,
}

/// The result of extraction: the expression, its root, and for each expression node the e-class
/// it came from.
pub struct Extraction {
    pub expr: RecExpr<TensorLang>,
    pub classes: Vec<Id>,
    pub cost: f64,
}

/// Extracts the cheapest DAG for `root` under `model`; `None` if no acyclic choice exists.
/// A class in `forced` may only choose the given node (children compared canonically).
pub fn extract(
    egraph: &EGraph<TensorLang, TypeAnalysis>,
    root: Id,
    model: &CostModel,
    forced: &HashMap<Id, TensorLang>,
) -> Option<Extraction> {
    let forced: HashMap<Id, TensorLang> = forced
        .iter()
        .map(|(c, n)| (egraph.find(*c), n.clone().map_children(|x| egraph.find(x))))
        .collect();
    let mut best: HashMap<Id, Choice> = HashMap::new();
    let data = |c: Id| -> Data { egraph[c].data.clone() };
    // Each pass can only lower totals; stop when a pass changes nothing.
    loop {
        let mut changed = false;
        for class in egraph.classes() {
            for node in &class.nodes {
                if forced
                    .get(&class.id)
                    .is_some_and(|f| *f != node.clone().map_children(|x| egraph.find(x)))
                {
                    continue;
                }
                let mut deps: BTreeMap<Id, f64> = BTreeMap::new();
                let mut ok = true;
                for &c in node.children() {
                    let c = egraph.find(c);
                    match best.get(&c) {
                        Some(ch) if !ch.deps.contains_key(&class.id) => {
                            for (&k, &v) in ch.deps.iter() {
                                deps.insert(k, v);
                            }
                        }
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok {
                    continue;
                }
                let own = model.node_cost(node, &class.data, &data);
                if !own.is_finite() {
                    continue;
                }
                deps.insert(class.id, own);
                let total: f64 = deps.values().sum();
                let better = match best.get(&class.id) {
                    None => true,
                    Some(cur) => total < cur.total * (1.0 - 1e-9) - 1e-18,
                };
                if better {
                    best.insert(
                        class.id,
                        Choice {
                            node: node.clone(),
                            total,
                            deps: Rc::new(deps),
                        },
                    );
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let root = egraph.find(root);
    best.get(&root)?;
    let cost = improve(egraph, root, model, &forced, &mut best)?;
    let mut expr = RecExpr::default();
    let mut classes = Vec::new();
    let mut memo: HashMap<Id, Id> = HashMap::new();
    build(egraph, &best, root, &mut expr, &mut classes, &mut memo)?;
    Some(Extraction {
        expr,
        classes,
        cost,
    })
}

/// Local search after the greedy pass, which fixes each class's choice before its users are
/// seen and so can pay twice for a shared value (GPT-2: a second, scaled copy of the fused
/// Q/K/V product rather than a scale on the key slice of the one already computed). Switches
/// one class of the extracted DAG at a time to another of its nodes when that lowers the
/// DAG's shared cost, until no switch does. Returns that cost.
fn improve(
    egraph: &EGraph<TensorLang, TypeAnalysis>,
    root: Id,
    model: &CostModel,
    forced: &HashMap<Id, TensorLang>,
    best: &mut HashMap<Id, Choice>,
) -> Option<f64> {
    let data = |c: Id| -> Data { egraph[c].data.clone() };
    let mut own: HashMap<(Id, TensorLang), f64> = HashMap::new();
    let mut chosen: HashMap<Id, TensorLang> = best
        .iter()
        .map(|(&c, ch)| (c, ch.node.clone().map_children(|x| egraph.find(x))))
        .collect();
    let (mut cost, mut reached) = dag_cost(egraph, &chosen, root, model, &mut own)?;
    // Each accepted switch lowers the cost; the bound only guards against float noise.
    for _ in 0..100 {
        let mut improved = false;
        // In class order, so that ties resolve the same way every run.
        let mut order: Vec<Id> = reached.iter().copied().collect();
        order.sort();
        for class in order {
            if forced.contains_key(&class) || !reached.contains(&class) {
                continue;
            }
            for node in &egraph[class].nodes {
                let node = node.clone().map_children(|x| egraph.find(x));
                if node == chosen[&class]
                    || !node.children().iter().all(|c| chosen.contains_key(c))
                    || !model
                        .node_cost(&node, &egraph[class].data, &data)
                        .is_finite()
                {
                    continue;
                }
                let old = chosen.insert(class, node);
                match dag_cost(egraph, &chosen, root, model, &mut own) {
                    Some((c, r)) if c < cost * (1.0 - 1e-9) - 1e-18 => {
                        (cost, reached) = (c, r);
                        improved = true;
                    }
                    _ => {
                        chosen.insert(class, old.expect("chosen classes have a node"));
                    }
                }
            }
        }
        if !improved {
            break;
        }
    }
    for (c, node) in chosen {
        if let Some(ch) = best.get_mut(&c) {
            ch.node = node;
        }
    }
    Some(cost)
}

/// The shared cost of the DAG `chosen` picks under `root` and the classes in it; `None` if
/// the choice is cyclic.
fn dag_cost(
    egraph: &EGraph<TensorLang, TypeAnalysis>,
    chosen: &HashMap<Id, TensorLang>,
    root: Id,
    model: &CostModel,
    own: &mut HashMap<(Id, TensorLang), f64>,
) -> Option<(f64, std::collections::HashSet<Id>)> {
    let data = |c: Id| -> Data { egraph[c].data.clone() };
    let mut done = std::collections::HashSet::new();
    let mut open = std::collections::HashSet::new();
    let mut total = 0.0;
    // Iterative depth-first walk: (class, children already pushed).
    let mut stack = vec![(root, false)];
    while let Some((c, expanded)) = stack.pop() {
        if expanded {
            open.remove(&c);
            done.insert(c);
            continue;
        }
        if done.contains(&c) {
            continue;
        }
        if !open.insert(c) {
            return None;
        }
        let node = chosen.get(&c)?;
        total += *own
            .entry((c, node.clone()))
            .or_insert_with(|| model.node_cost(node, &egraph[c].data, &data));
        stack.push((c, true));
        for &ch in node.children() {
            if open.contains(&ch) {
                return None;
            }
            if !done.contains(&ch) {
                stack.push((ch, false));
            }
        }
    }
    Some((total, done))
}

fn build(
    egraph: &EGraph<TensorLang, TypeAnalysis>,
    best: &HashMap<Id, Choice>,
    class: Id,
    expr: &mut RecExpr<TensorLang>,
    classes: &mut Vec<Id>,
    memo: &mut HashMap<Id, Id>,
) -> Option<Id> {
    let class = egraph.find(class);
    if let Some(&i) = memo.get(&class) {
        return Some(i);
    }
    let choice = best.get(&class)?;
    let mut node = choice.node.clone();
    for c in node.children_mut() {
        *c = build(egraph, best, *c, expr, classes, memo)?;
    }
    let i = expr.add(node);
    classes.push(class);
    memo.insert(class, i);
    Some(i)
}
