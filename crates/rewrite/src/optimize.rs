//! The exact optimizer: saturate each distinct block once with the exact rules, extract the
//! cheapest form at the target sequence length, and stamp it into every layer of that shape.
//!
//! Limits (nodes, iterations, time) bound each saturation. Hitting the node or time limit means
//! the rules blew up: the block keeps its original form and the report says why. Hitting the
//! iteration limit is normal for rules that keep finding work; the best form found is used.
//!
//! Only exact rules run here: an approximate conversion is applied before, by
//! [`crate::approx::apply_once`], never inside an e-graph. Building and saturating a block is
//! [`crate::egraph`]'s; explaining a result is [`crate::explain`]'s.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

use attnopt_ir::{Graph, GraphError, NodeId, Role};
use egg::{RecExpr, StopReason};

use crate::analysis::TypeAnalysis;
use crate::block::{self, Block, BlockExpr, Signature};
use crate::cost::CostModel;
pub use crate::egraph::Limits;
use crate::egraph::{expr_cost, prepare, saturate, typecheck, Saturated};
use crate::lang::TensorLang;
use crate::rules::{Kind, RuleSet};

/// What one block's optimisation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockStats {
    /// The first layer with this structure (later ones reuse its result).
    pub first_layer: u32,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub iterations: usize,
    pub stop_reason: String,
    /// Rule name → times applied (code rules included).
    pub rules_fired: BTreeMap<String, usize>,
    pub saturate_ms: f64,
    pub extract_ms: f64,
    /// Estimated seconds at the target length, before and after.
    pub model_cost_before: f64,
    pub model_cost_after: f64,
    /// Why the original form was kept, if it was.
    pub fallback: Option<String>,
    /// The token axis was made symbolic so costs could be evaluated at any length.
    pub tokens_generalised: bool,
}

/// An optimised block, ready to stamp, with the original it came from.
pub struct Solution {
    pub expr: RecExpr<TensorLang>,
    pub roles: Vec<Role>,
    pub original: RecExpr<TensorLang>,
    pub original_roles: Vec<Role>,
    /// Leaf types (with the token axis symbolic when `stats.tokens_generalised`).
    pub leaves: TypeAnalysis,
    pub stats: BlockStats,
}

/// A whole graph, optimised.
pub struct Optimized {
    pub graph: Graph,
    /// Per layer: the solution used (shared by layers with the same structure).
    pub layers: BTreeMap<u32, Rc<Solution>>,
    /// Layers that could not be cut out as a block, with the reason.
    pub skipped: Vec<(u32, String)>,
    /// Per layer: products the `factored` rule rewrote (before the e-graph; not in `layers`'
    /// rule counts, which are per structure).
    pub factored: BTreeMap<u32, usize>,
}

/// Optimisation settings.
pub struct Options<'a> {
    pub rules: &'a RuleSet,
    /// The sequence length extraction optimises for.
    pub seq: usize,
    pub limits: Limits,
    /// Approximate conversions to apply first: layer → approximate rule name.
    pub conversions: BTreeMap<u32, String>,
}

impl<'a> Options<'a> {
    /// Exact rewriting only (no conversions) for length `seq`, with the default limits.
    pub fn exact(rules: &'a RuleSet, seq: usize) -> Options<'a> {
        Options {
            rules,
            seq,
            limits: Limits::default(),
            conversions: BTreeMap::new(),
        }
    }
}

/// Why optimisation failed.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("layer {layer}: approximate rule `{rule}` {why}")]
    Conversion {
        layer: u32,
        rule: String,
        why: String,
    },
}

/// One saturation + extraction. `Err` carries why the input should be kept as it is.
fn phase(
    be: &BlockExpr,
    an: &TypeAnalysis,
    code_rules: bool,
    opts: &Options,
    stats: &mut BlockStats,
) -> Result<(RecExpr<TensorLang>, Vec<Option<Role>>, f64), String> {
    let model = CostModel::at_seq(opts.seq);
    let t0 = Instant::now();
    let Saturated { runner, ids, fired } =
        saturate(be, an, opts.rules, opts.limits, code_rules, false);
    for (name, groups) in &fired {
        *stats.rules_fired.entry(name.clone()).or_insert(0) +=
            groups.iter().map(Vec::len).sum::<usize>();
    }
    let root = *ids.last().ok_or("empty block")?;
    stats.saturate_ms += t0.elapsed().as_secs_f64() * 1e3;
    stats.iterations += runner.iterations.len();
    stats.egraph_nodes = stats
        .egraph_nodes
        .max(runner.egraph.total_number_of_nodes());
    stats.egraph_classes = stats.egraph_classes.max(runner.egraph.number_of_classes());
    for it in &runner.iterations {
        for (name, n) in &it.applied {
            *stats.rules_fired.entry(name.to_string()).or_insert(0) += n;
        }
    }
    let stop = runner.stop_reason.clone().unwrap_or(StopReason::Saturated);
    stats.stop_reason = match &stop {
        StopReason::Saturated => "saturated".into(),
        StopReason::IterationLimit(n) => format!("iteration limit ({n})"),
        StopReason::NodeLimit(n) => format!("node limit ({n})"),
        StopReason::TimeLimit(s) => format!("time limit ({s:.1} s)"),
        StopReason::Other(s) => s.clone(),
    };
    if matches!(stop, StopReason::NodeLimit(_) | StopReason::TimeLimit(_)) {
        return Err(format!(
            "saturation hit the {}; kept the original form",
            stats.stop_reason
        ));
    }
    if let Some(c) = runner.egraph.analysis.conflicts.first() {
        return Err(format!(
            "a rule equated values of different types ({c}); kept the original form"
        ));
    }
    let t1 = Instant::now();
    let true_cost = |ex: &crate::extract::Extraction| {
        typecheck(&ex.expr, an).map_or(f64::INFINITY, |d| expr_cost(&ex.expr, &d, &model))
    };
    let mut forced = HashMap::new();
    let mut ex = crate::extract::extract(&runner.egraph, root, &model, &forced)
        .ok_or("extraction found no acyclic form")?;
    let mut cost = true_cost(&ex);
    // Greedy extraction decides class by class, so it never takes a fused product whose payoff
    // is shared by several classes: try each code-rule group as a whole.
    for group in fired.iter().flat_map(|(_, g)| g) {
        let mut trial = forced.clone();
        trial.extend(group.iter().cloned());
        if let Some(t) = crate::extract::extract(&runner.egraph, root, &model, &trial) {
            let c = true_cost(&t);
            if c < cost {
                (ex, cost, forced) = (t, c, trial);
            }
        }
    }
    stats.extract_ms += t1.elapsed().as_secs_f64() * 1e3;
    let roles = crate::roles::infer(&runner.egraph, &ids, &be.roles, &ex);
    Ok((ex.expr, roles, cost))
}

/// Optimises one block expression with the exact rules, in two phases: the pattern rules
/// (clean-up, scale folding, attention identities), then the code rules (Q/K/V fusion) on the
/// result, so that fusion groups the projections as they finally are (the query's with the
/// softmax scale folded in) and cannot feed on its own output.
pub fn solve(
    be: &BlockExpr,
    an: TypeAnalysis,
    first_layer: u32,
    generalised: bool,
    opts: &Options,
) -> Solution {
    let model = CostModel::at_seq(opts.seq);
    let original_data = typecheck(&be.expr, &an);
    let original_roles: Vec<Role> = be.roles.iter().map(|r| r.unwrap_or(Role::Other)).collect();
    let before = original_data
        .as_ref()
        .map_or(f64::INFINITY, |d| expr_cost(&be.expr, d, &model));
    let mut stats = BlockStats {
        first_layer,
        egraph_nodes: 0,
        egraph_classes: 0,
        iterations: 0,
        stop_reason: String::new(),
        rules_fired: BTreeMap::new(),
        saturate_ms: 0.0,
        extract_ms: 0.0,
        model_cost_before: before,
        model_cost_after: before,
        fallback: None,
        tokens_generalised: generalised,
    };
    let solution = |expr: RecExpr<TensorLang>, roles: Vec<Role>, stats: BlockStats| Solution {
        expr,
        roles,
        original: be.expr.clone(),
        original_roles: original_roles.clone(),
        leaves: an.clone(),
        stats,
    };
    if original_data.is_none() {
        stats.fallback = Some("the block does not type-check as an expression".into());
        return solution(be.expr.clone(), original_roles.clone(), stats);
    }
    let mut current = BlockExpr {
        expr: be.expr.clone(),
        roles: be.roles.clone(),
        input_types: be.input_types.clone(),
        weight_types: be.weight_types.clone(),
    };
    let mut cost = before;
    for code_rules in [false, true] {
        match phase(&current, &an, code_rules, opts, &mut stats) {
            Ok((expr, roles, c)) if c < cost => {
                current = BlockExpr {
                    expr,
                    roles,
                    ..current
                };
                cost = c;
            }
            Ok(_) => {}
            Err(why) => {
                stats.fallback = Some(why);
                return solution(be.expr.clone(), original_roles.clone(), stats);
            }
        }
    }
    stats.model_cost_after = cost;
    let roles = current
        .roles
        .iter()
        .map(|r| r.unwrap_or(Role::Other))
        .collect();
    solution(current.expr, roles, stats)
}

/// Optimises every block of `g` with the exact rules, one saturation per distinct structure.
pub fn optimize(g: &Graph, opts: &Options) -> Result<Optimized, OptimizeError> {
    // Value-dependent exact rules first (the e-graph shares one solution between layers of one
    // structure, whatever their weights hold).
    let factoring = match opts.rules.get(crate::factored::NAME) {
        Some(r) if r.kind == Kind::Exact => Some(crate::factored::factor_weights(g)?),
        _ => None,
    };
    let g = factoring.as_ref().map_or(g, |f| &f.graph);
    let (blocks, not_blocks) = block::blocks(g);
    let mut cache: HashMap<Signature, Rc<Solution>> = HashMap::new();
    let mut layers: BTreeMap<u32, Rc<Solution>> = BTreeMap::new();
    let mut tokens: BTreeMap<u32, Option<usize>> = BTreeMap::new();
    for b in &blocks {
        let (mut be, an, generalised) = prepare(g, b);
        let (original, original_roles) = (be.expr.clone(), be.roles.clone());
        if let Some(name) = opts.conversions.get(&b.layer) {
            let err = |why: &str| OptimizeError::Conversion {
                layer: b.layer,
                rule: name.clone(),
                why: why.into(),
            };
            let rule = opts
                .rules
                .get(name)
                .filter(|r| r.kind == Kind::Approx)
                .ok_or_else(|| err("is not a loaded approximate rule"))?;
            be = crate::approx::apply_once(rule, &be, &an)
                .ok_or_else(|| err("does not match this layer"))?;
        }
        let sig = be.signature();
        let sol = match cache.get(&sig) {
            Some(s) => s.clone(),
            None => {
                let mut s = solve(&be, an, b.layer, generalised, opts);
                // Costs in reports are measured against the layer as it was, before any
                // approximate conversion.
                s.original = original;
                s.original_roles = original_roles
                    .into_iter()
                    .map(|r| r.unwrap_or(Role::Other))
                    .collect();
                let s = Rc::new(s);
                cache.insert(sig, s.clone());
                s
            }
        };
        // A generalised block is stamped back with its real token count.
        let t = generalised
            .then(|| {
                b.inputs
                    .iter()
                    .find_map(|&i| g.node(i).ty.shape.0.get(1).and_then(|d| d.fixed()))
            })
            .flatten();
        tokens.insert(b.layer, t);
        layers.insert(b.layer, sol);
    }
    let graph = rebuild(g, &blocks, &layers, &tokens)?;
    Ok(Optimized {
        graph,
        layers,
        factored: factoring.map(|f| f.by_layer).unwrap_or_default(),
        skipped: not_blocks
            .into_iter()
            .map(|nb| (nb.layer, nb.reason))
            .collect(),
    })
}

/// A new graph: everything outside the blocks copied, each block replaced by its solution.
pub fn rebuild(
    g: &Graph,
    blocks: &[Block],
    layers: &BTreeMap<u32, Rc<Solution>>,
    tokens: &BTreeMap<u32, Option<usize>>,
) -> Result<Graph, GraphError> {
    let by_output: HashMap<NodeId, &Block> = blocks.iter().map(|b| (b.output, b)).collect();
    let inside: std::collections::HashSet<NodeId> = blocks
        .iter()
        .flat_map(|b| b.nodes.iter().copied())
        .collect();
    let mut out = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for n in g.topo_order() {
        if let Some(b) = by_output.get(&n) {
            let sol = &layers[&b.layer];
            let ins: Vec<NodeId> = b.inputs.iter().map(|i| map[i]).collect();
            let ws: Vec<NodeId> = b.weights.iter().map(|w| map[w]).collect();
            let seq = tokens.get(&b.layer).copied().flatten();
            let id = block::instantiate(&mut out, &sol.expr, &sol.roles, b.layer, &ins, &ws, seq)?;
            map.insert(n, id);
            continue;
        }
        if inside.contains(&n) {
            continue;
        }
        let id = out.copy_node(g, n, &map)?;
        map.insert(n, id);
    }
    for (name, id) in g.outputs() {
        out.set_output(name, map[id])?;
    }
    Ok(out)
}
