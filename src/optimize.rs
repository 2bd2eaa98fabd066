//! `optimize`: exact rewriting of every layer, then — only for approximate rule families the
//! user allows — per-layer conversions whose error is measured on calibration inputs and kept
//! within the budget. Nothing is converted silently: every layer's report says what was done
//! and, when a conversion was not made, why.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use attnopt_ir::summary::attention_layers;
use attnopt_ir::{interp, AttentionFormula, Bindings, Graph, Tensor};
use attnopt_rewrite::approx::Refusal;
use attnopt_rewrite::optimize::Solution;
use attnopt_rewrite::report::costs_at;
use attnopt_rewrite::{Limits, Optimized, Options, RuleSet};

use crate::calib::calibration_inputs;
use crate::convert::{Fitted, Site, SparseSettings};
use crate::report::{ErrorPair, ErrorStat, Fit, LayerReport, Report, WeightBytes};
use crate::{Error, Model};

/// What `optimize` is asked to do.
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    /// Sequence lengths to report costs at; the first is the length extraction optimises for.
    pub seqs: Vec<usize>,
    /// Approximate rule families the user enables (`hydra`).
    pub allow: Vec<String>,
    /// Largest relative error of the final output the approximations may cause; `None` means
    /// [`DEFAULT_BUDGET`], and `f64::INFINITY` converts every eligible layer.
    pub budget: Option<f64>,
    /// Calibration inputs; seeded random ones when absent.
    pub calib: Option<PathBuf>,
    /// Tokens per generated calibration sequence.
    pub calib_seq: usize,
    pub seed: u64,
    /// A rules folder to use instead of the embedded rules.
    pub rules_dir: Option<PathBuf>,
    pub limits: Limits,
    /// Measure the error against the original even when nothing approximate is enabled.
    pub verify: bool,
    /// Refit each converted layer's output projection by least squares on the calibration
    /// activations (`crate::refit`; kept only where it lowers the held-out error).
    pub refit: bool,
    /// Choices for the `sparse-qkv` and `sparse-ff` conversions.
    pub sparse: SparseSettings,
    /// Convert exactly these layers (where a family applies; `--layers`), whether or not the
    /// cost model says it pays; without an explicit budget, whatever the error. `None`: every
    /// layer is a candidate.
    pub layers: Option<Vec<u32>>,
}

/// The largest relative error exact rules may cause (float rounding of reassociations is
/// ~1e-7; more means a rule is wrong).
pub const EXACT_TOLERANCE: f64 = 1e-4;

/// The error budget when none is given: 1 % relative error of the final output. Converting a
/// softmax model that was not trained for it costs far more (0.3–1.1 measured), so by default
/// only conversions that are nearly exact pass; the user raises it knowingly.
pub const DEFAULT_BUDGET: f64 = 1e-2;

impl Default for OptimizeOptions {
    fn default() -> OptimizeOptions {
        OptimizeOptions {
            seqs: vec![128],
            allow: vec![],
            budget: None,
            calib: None,
            calib_seq: 16,
            seed: 0,
            rules_dir: None,
            limits: Limits::default(),
            verify: false,
            refit: true,
            sparse: SparseSettings::default(),
            layers: None,
        }
    }
}

/// The optimised graph (weights not yet folded) and its report.
pub struct Optimization {
    pub graph: Graph,
    pub report: Report,
}

/// Why a layer is not converted by an approximate rule. Its `Display` is the `reason` of the
/// report (docs/CLI.md).
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// A softmax layer, but no approximate family was allowed (`families`: those loaded).
    NotAllowed { families: Vec<String> },
    /// Not softmax, and no family was allowed: only exact rules apply.
    ExactOnly { kind: AttentionFormula },
    /// An allowed family has no rule for this layer.
    Refused(Refusal),
    /// The conversion does not make the layer cheaper at the target length.
    DoesNotPay {
        rule: String,
        seq: usize,
        before_s: f64,
        after_s: f64,
    },
    /// A sparse conversion finds nothing to convert in the layer.
    NoSite { why: String },
    /// A sparse conversion would not read fewer weight bytes per token.
    ReadsNoLess { before: u64, after: u64 },
    /// With the layers already chosen, the final error would exceed the budget.
    OverBudget { error: f64, budget: f64 },
    /// `--layers` names other layers.
    NotListed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotAllowed { families } => match &families[..] {
                [] => f.write_str("softmax; no approximate rule is loaded"),
                [one] => write!(
                    f,
                    "softmax; approximate rule {one} not enabled (--allow {one})"
                ),
                [first, ..] => write!(
                    f,
                    "softmax; approximate rules {} not enabled (--allow {first})",
                    families.join(", ")
                ),
            },
            Reason::ExactOnly { kind } => write!(f, "{kind} attention; exact rules only"),
            Reason::Refused(r) => write!(f, "{r}"),
            Reason::DoesNotPay {
                rule,
                seq,
                before_s,
                after_s,
            } => write!(
                f,
                "{rule} does not pay at N={seq} (estimated {:.3} ms → {:.3} ms)",
                before_s * 1e3,
                after_s * 1e3
            ),
            Reason::NoSite { why } => f.write_str(why),
            Reason::NotListed => f.write_str("not in --layers"),
            Reason::ReadsNoLess { before, after } => write!(
                f,
                "would read {after} weight bytes per token instead of {before}: no gain"
            ),
            Reason::OverBudget { error, budget } => write!(
                f,
                "converting it (with the layers already chosen) would make the final error \
                 {error:.3e} > budget {budget:.3e}"
            ),
        }
    }
}

/// Runs `g` on `inputs` and compares every `layer.{i}` and `last_hidden_state` with `reference`.
fn measure(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
    reference: &HashMap<String, Tensor>,
) -> Result<(BTreeMap<u32, ErrorStat>, ErrorStat), Error> {
    let out = interp::run(g, inputs, &[])?;
    let mut per_layer = BTreeMap::new();
    for (name, t) in &out {
        if let Some(l) = name
            .strip_prefix("layer.")
            .and_then(|s| s.parse::<u32>().ok())
        {
            per_layer.insert(l, ErrorStat::between(t, &reference[name]));
        }
    }
    let last = ErrorStat::between(&out["last_hidden_state"], &reference["last_hidden_state"]);
    Ok((per_layer, last))
}

/// `converted` with the output projections of `layers` refitted (`crate::refit`) when
/// `opts.refit`, else as it is.
fn refitted(
    opts: &OptimizeOptions,
    original: &Graph,
    inputs: &HashMap<String, Tensor>,
    converted: Graph,
    layers: &[u32],
) -> Result<(Graph, BTreeMap<u32, crate::report::Fit>), Error> {
    if !opts.refit || inputs.is_empty() {
        return Ok((converted, BTreeMap::new()));
    }
    crate::refit::refit(original, &converted, layers, inputs)
}

/// Optimises `model`; `progress` hears about each step.
/// Weight bytes each layer reads per token: the graph lowered at batch 1 and one token (empty
/// if it cannot be lowered, which the CPU backend would then report itself).
fn weights_read(g: &Graph) -> BTreeMap<Option<u32>, u64> {
    attnopt_lower::lower(g, &Bindings::new(1, 1))
        .map(|l| attnopt_lower::weight_bytes_by_layer(g, &l))
        .unwrap_or_default()
}

pub fn optimize(
    model: &Model,
    opts: &OptimizeOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Optimization, Error> {
    let t0 = Instant::now();
    let g = model.graph();
    let target = *opts
        .seqs
        .first()
        .ok_or_else(|| Error::NotSupported("an empty --seq list".into()))?;
    let (rules, rules_name) = match &opts.rules_dir {
        Some(d) => (RuleSet::load_dir(d)?, d.display().to_string()),
        None => (RuleSet::embedded()?, "embedded".to_string()),
    };
    // A family named twice is allowed once.
    let mut allowed = Vec::new();
    for f in &opts.allow {
        if !allowed.contains(f) {
            allowed.push(f.clone());
        }
    }
    let opts = &OptimizeOptions {
        allow: allowed,
        ..opts.clone()
    };
    let families: Vec<String> = rules
        .approx_families()
        .into_iter()
        .map(String::from)
        .collect();
    for family in &opts.allow {
        let graph_family = crate::convert::FAMILIES.contains(&family.as_str());
        if !graph_family && rules.approx_family(family).is_empty() {
            let mut has = families.clone();
            has.extend(crate::convert::FAMILIES.iter().map(|f| f.to_string()));
            return Err(Error::Usage {
                path: "--allow".into(),
                msg: format!(
                    "unknown approximate family `{family}` (this build has: {})",
                    has.join(", ")
                ),
            });
        }
    }
    let user_rules = opts.rules_dir.is_some();
    if user_rules {
        // A stranger's rule is checked before it touches the model: every exact rule on each
        // of the model's distinct layers it matches.
        progress("checking the exact rules numerically on this model's layers");
        attnopt_rewrite::soundness::check_exact_rules(&rules, g)?;
    }
    let optimize_graph =
        |graph: &Graph, conversions: BTreeMap<u32, String>| -> Result<Optimized, Error> {
            Ok(attnopt_rewrite::optimize(
                graph,
                &Options {
                    rules: &rules,
                    seq: target,
                    limits: opts.limits,
                    conversions,
                },
            )?)
        };
    progress("saturating each distinct block with the exact rules");
    let exact = optimize_graph(g, BTreeMap::new())?;
    let summaries = attention_layers(g, &Bindings::new(1, target));
    if let Some(listed) = &opts.layers {
        let last = summaries.iter().map(|s| s.layer).max();
        if let Some(&l) = listed
            .iter()
            .find(|l| !summaries.iter().any(|s| s.layer == **l))
        {
            return Err(Error::Usage {
                path: model.imported().dir.clone(),
                msg: format!(
                    "--layers {l}: there is no layer {l} (the model's layers are 0 to {})",
                    last.map_or("none".into(), |x| x.to_string())
                ),
            });
        }
    }
    // Layers the user named: converted where a family applies, paying or not.
    let named = |l: u32| opts.layers.as_ref().is_some_and(|v| v.contains(&l));
    let listed = |l: u32| opts.layers.as_ref().is_none_or(|v| v.contains(&l));
    // Without an explicit budget, named layers are converted whatever the error.
    let budget = match (opts.budget, &opts.layers) {
        (Some(b), _) => b,
        (None, Some(_)) => f64::INFINITY,
        (None, None) => DEFAULT_BUDGET,
    };
    // Per layer: why it is not converted when no family is allowed.
    let not_enabled = |s: &attnopt_ir::summary::AttentionSummary| match s.kind {
        AttentionFormula::Softmax => Reason::NotAllowed {
            families: families.clone(),
        },
        kind => Reason::ExactOnly { kind },
    };
    // Per (layer, family): the conversion proposed, or why none is.
    let mut proposed: BTreeMap<Key, Conversion> = BTreeMap::new();
    let mut refused: BTreeMap<Key, Reason> = BTreeMap::new();
    // Per proposal, what it saves: seconds at the target length (rules), bytes per token
    // (sparse conversions); only compared within a family.
    let mut savings: BTreeMap<Key, f64> = BTreeMap::new();
    let mut sites: Vec<(u32, &'static str, Site)> = Vec::new();
    for family in &opts.allow {
        if let Some(&graph_family) = crate::convert::FAMILIES.iter().find(|f| *f == family) {
            for s in &summaries {
                let key = (s.layer, family.clone());
                if !listed(s.layer) {
                    refused.insert(key, Reason::NotListed);
                    continue;
                }
                match crate::convert::site(g, graph_family, s.layer, s.heads, &opts.sparse) {
                    Err(why) => {
                        refused.insert(key, Reason::NoSite { why });
                    }
                    Ok((_, r)) if r.after >= r.before && !named(s.layer) => {
                        refused.insert(
                            key,
                            Reason::ReadsNoLess {
                                before: r.before,
                                after: r.after,
                            },
                        );
                    }
                    Ok((site, r)) => {
                        savings.insert(key.clone(), r.before as f64 - r.after as f64);
                        proposed.insert(key, Conversion::Graph(graph_family));
                        sites.push((s.layer, graph_family, site));
                    }
                }
            }
            continue;
        }
        let candidates = attnopt_rewrite::approx::candidates(g, &rules, family);
        let rule_proposals: BTreeMap<u32, String> = candidates
            .iter()
            .filter(|(l, _)| listed(*l))
            .filter_map(|(l, v)| v.as_ref().ok().map(|r| (*l, r.clone())))
            .collect();
        for (layer, v) in candidates {
            if !listed(layer) {
                refused.insert((layer, family.clone()), Reason::NotListed);
            } else if let Err(r) = v {
                refused.insert((layer, family.clone()), Reason::Refused(r));
            }
        }
        if rule_proposals.is_empty() {
            continue;
        }
        // Keep only conversions that pay at the target length.
        progress(&format!("costing the {family} conversions"));
        let all = optimize_graph(g, rule_proposals.clone())?;
        for (l, rule) in rule_proposals {
            let (before, after) = (
                exact.layers[&l].stats.model_cost_after,
                all.layers[&l].stats.model_cost_after,
            );
            let key = (l, family.clone());
            if after < before || named(l) {
                savings.insert(key.clone(), before - after);
                proposed.insert(key, Conversion::Rule(rule));
            } else {
                refused.insert(
                    key,
                    Reason::DoesNotPay {
                        rule,
                        seq: target,
                        before_s: before,
                        after_s: after,
                    },
                );
            }
        }
    }
    let approx = !opts.allow.is_empty();
    let mut calibration = None;
    let mut fitted: BTreeMap<(u32, &'static str), Fitted> = BTreeMap::new();
    // Fits of each proposal converted alone, and of the final graph.
    let mut alone_fits: BTreeMap<u32, BTreeMap<String, Fit>> = BTreeMap::new();
    let mut final_fits: BTreeMap<u32, BTreeMap<String, Fit>> = BTreeMap::new();
    let mut alone: BTreeMap<Key, ErrorPair> = BTreeMap::new();
    let mut chosen: BTreeMap<Key, Conversion> = BTreeMap::new();
    let mut reference = HashMap::new();
    let mut inputs = HashMap::new();
    // With rules from a user, the exact result is always checked against the original.
    let verify = opts.verify || user_rules;
    if approx || verify {
        inputs = model.prepare_inputs(calibration_inputs(
            model,
            opts.calib.as_deref(),
            opts.calib_seq,
            opts.seed,
        )?)?;
        let budget = crate::limits::memory_available();
        let b = crate::limits::check_feed(model, &inputs, "the calibration inputs", budget)?;
        crate::limits::check_interpreter_memory(g, &b, "the calibration inputs", budget)?;
        // Inputs that measure nothing would make every conversion look free (0/0 error).
        let nothing = |why: &str| Error::Usage {
            path: opts
                .calib
                .clone()
                .unwrap_or_else(|| "calibration inputs".into()),
            msg: format!("{why}: they measure nothing; give inputs with tokens to attend to"),
        };
        if let Some((name, _)) = inputs.iter().find(|(_, t)| t.numel() == 0) {
            return Err(nothing(&format!("`{name}` is empty")));
        }
        if inputs
            .get("attention_mask")
            .and_then(|m| m.as_i64())
            .is_some_and(|m| m.iter().all(|&v| v == 0))
        {
            return Err(nothing("the attention_mask masks every token"));
        }
        calibration = Some(match &opts.calib {
            Some(f) => format!("file {}", f.display()),
            None => format!(
                "seeded random inputs (seed {}, batch {}, {} tokens)",
                opts.seed,
                crate::calib::CALIB_BATCH,
                opts.calib_seq
            ),
        });
        progress("running the original model on the calibration inputs");
        reference = interp::run(g, &inputs, &[])?;
        if user_rules {
            progress("checking the exactly optimised model against the original");
            let (_, last) = measure(&exact.graph, &inputs, &reference)?;
            // NaN fails too.
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            if !(last.relative <= EXACT_TOLERANCE) {
                return Err(Error::Unsound(format!(
                    "with the rules from {rules_name}, the exactly optimised model differs from \
                     the original by {last} on the calibration inputs (more than float rounding, \
                     {EXACT_TOLERANCE:e} relative); no folder is written"
                )));
            }
        }
        if !sites.is_empty() {
            fitted = crate::convert::fit(g, &sites, &inputs, progress)?;
        }
    }
    // A set of conversions as a graph: the sparse fits written in, the rules applied by the
    // optimizer, then the output projections of the converted attention layers refitted.
    let build = |plan: &BTreeMap<Key, Conversion>| -> Result<(Optimized, Fits), Error> {
        let chosen_fits: Vec<&Fitted> = plan
            .iter()
            .filter_map(|((l, _), c)| match c {
                Conversion::Graph(f) => fitted.get(&(*l, *f)),
                Conversion::Rule(_) => None,
            })
            .collect();
        let converted = match chosen_fits.is_empty() {
            true => None,
            false => Some(crate::convert::apply(g, &chosen_fits)?),
        };
        let rules_plan: BTreeMap<u32, String> = plan
            .iter()
            .filter_map(|((l, _), c)| match c {
                Conversion::Rule(r) => Some((*l, r.clone())),
                Conversion::Graph(_) => None,
            })
            .collect();
        let mut o = optimize_graph(converted.as_ref().unwrap_or(g), rules_plan)?;
        let mut fits: Fits = BTreeMap::new();
        for ((l, family), c) in plan {
            if let Conversion::Graph(f) = c {
                if let Some(x) = fitted.get(&(*l, *f)) {
                    fits.entry(*l).or_default().insert(family.clone(), x.fit);
                }
            }
        }
        // Layers whose attention changed: a rule, or factored Q/K/V.
        let mut attention: Vec<u32> = plan
            .iter()
            .filter(|(_, c)| {
                matches!(c, Conversion::Rule(_))
                    || matches!(c, Conversion::Graph(f) if *f == crate::convert::SPARSE_QKV)
            })
            .map(|((l, _), _)| *l)
            .collect();
        attention.dedup();
        let (graph, refits) = refitted(opts, g, &inputs, o.graph, &attention)?;
        for (l, f) in refits {
            fits.entry(l).or_default().insert(REFIT.into(), f);
        }
        o.graph = graph;
        Ok((o, fits))
    };
    if approx && !inputs.is_empty() {
        // Families in the order given, most saving first within each.
        let mut order: Vec<Key> = Vec::new();
        for family in &opts.allow {
            let mut mine: Vec<(&Key, f64)> = savings
                .iter()
                .filter(|(k, _)| &k.1 == family)
                .map(|(k, &v)| (k, v))
                .collect();
            mine.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0 .0.cmp(&b.0 .0)));
            order.extend(mine.into_iter().map(|(k, _)| k.clone()));
        }
        for key in &order {
            progress(&format!(
                "measuring layer {} converted alone ({})",
                key.0, key.1
            ));
            let plan = BTreeMap::from([(key.clone(), proposed[key].clone())]);
            let (o, fits) = build(&plan)?;
            for (l, f) in fits {
                alone_fits.entry(l).or_default().extend(f);
            }
            let (per_layer, last) = measure(&o.graph, &inputs, &reference)?;
            alone.insert(
                key.clone(),
                ErrorPair {
                    layer_output: per_layer[&key.0],
                    final_output: last,
                },
            );
        }
        // Greedy: add a conversion while the final error stays within the budget.
        for key in &order {
            let mut trial = chosen.clone();
            trial.insert(key.clone(), proposed[key].clone());
            let within = match budget {
                f64::INFINITY => true,
                budget => {
                    let err = if trial.len() == 1 {
                        alone[key].final_output.relative
                    } else {
                        progress(&format!(
                            "checking {} conversions against the budget",
                            trial.len()
                        ));
                        measure(&build(&trial)?.0.graph, &inputs, &reference)?
                            .1
                            .relative
                    };
                    if err > budget {
                        refused.insert(key.clone(), Reason::OverBudget { error: err, budget });
                    }
                    err <= budget
                }
            };
            if within {
                chosen = trial;
            }
        }
    }
    progress("building the final graph");
    let fin = if chosen.is_empty() {
        exact
    } else {
        let (fin, fits) = build(&chosen)?;
        final_fits = fits;
        fin
    };
    let (errors, final_error) = if approx || verify {
        let (per_layer, last) = measure(&fin.graph, &inputs, &reference)?;
        let pairs = per_layer
            .into_iter()
            .map(|(l, e)| {
                (
                    l,
                    ErrorPair {
                        layer_output: e,
                        final_output: last,
                    },
                )
            })
            .collect();
        (pairs, Some(last))
    } else {
        (BTreeMap::new(), None)
    };
    let (reads_before, reads_after) = (weights_read(g), weights_read(&fin.graph));
    let mut distinct: Vec<*const Solution> = fin.layers.values().map(Rc::as_ptr).collect();
    distinct.sort();
    distinct.dedup();
    let layers = summaries
        .iter()
        .map(|s| {
            let sol = fin.layers.get(&s.layer);
            let mine = |k: &&Key| k.0 == s.layer;
            // In the order the families were allowed.
            let converted: Vec<String> = opts
                .allow
                .iter()
                .filter_map(|f| chosen.get(&(s.layer, f.clone())))
                .map(|c| c.name().to_string())
                .collect();
            // Why each allowed family did not convert the layer (named when several are).
            let reasons: Vec<String> = opts
                .allow
                .iter()
                .filter(|f| !chosen.contains_key(&(s.layer, (*f).clone())))
                .filter_map(|f| {
                    let r = refused.get(&(s.layer, f.clone()))?;
                    Some(match opts.allow.len() {
                        1 => r.to_string(),
                        _ => format!("{f}: {r}"),
                    })
                })
                .collect();
            let reason = match (approx, reasons.is_empty()) {
                (false, _) => Some(not_enabled(s).to_string()),
                (true, true) => None,
                (true, false) => Some(reasons.join("; ")),
            };
            LayerReport {
                layer: s.layer,
                attention: s.kind,
                heads: s.heads,
                kv_heads: s.kv_heads,
                head_dim: s.head_dim,
                causal: s.causal,
                padding_mask: s.padding_mask,
                rope: s.rope,
                eligible: savings.keys().any(|k| mine(&k)),
                reason,
                converted,
                rules_fired: {
                    let mut fired = sol.map(|x| x.stats.rules_fired.clone()).unwrap_or_default();
                    if let Some(&k) = fin.factored.get(&s.layer) {
                        fired.insert(attnopt_rewrite::factored::NAME.to_string(), k);
                    }
                    fired
                },
                saturation: sol.map(|x| x.stats.stop_reason.clone()).unwrap_or_default(),
                egraph_nodes: sol.map_or(0, |x| x.stats.egraph_nodes),
                stamped_from: sol.map_or(s.layer, |x| x.stats.first_layer),
                fallback: sol.and_then(|x| x.stats.fallback.clone()),
                costs: sol.map(|x| costs_at(x, &opts.seqs)).unwrap_or_default(),
                weights: match (
                    reads_before.get(&Some(s.layer)),
                    reads_after.get(&Some(s.layer)),
                ) {
                    (Some(&before), Some(&after)) => Some(WeightBytes { before, after }),
                    _ => None,
                },
                error_alone: alone
                    .iter()
                    .filter(|(k, _)| mine(k))
                    .map(|(k, e)| (k.1.clone(), *e))
                    .collect(),
                fit: final_fits
                    .get(&s.layer)
                    .or_else(|| alone_fits.get(&s.layer))
                    .cloned()
                    .unwrap_or_default(),
                error: errors.get(&s.layer).copied(),
            }
        })
        .collect();
    let warnings = fin
        .skipped
        .iter()
        .map(|(l, why)| format!("layer {l} left as is: {why}"))
        .collect();
    let report = Report {
        model: model.imported().dir.display().to_string(),
        architecture: model.imported().detection.arch.name(),
        target_seq: target,
        seqs: opts.seqs.clone(),
        allow: opts.allow.clone(),
        budget: Some(budget).filter(|b| b.is_finite()),
        calibration,
        rules: rules_name,
        optimise_ms: t0.elapsed().as_secs_f64() * 1e3,
        distinct_blocks: distinct.len(),
        layers,
        final_error,
        warnings,
    };
    Ok(Optimization {
        graph: fin.graph,
        report,
    })
}

/// A layer and an approximate family (`hydra`, `sparse-qkv`, `sparse-ff`).
type Key = (u32, String);

/// Per layer, the fits made for its conversions, by what was fitted.
type Fits = BTreeMap<u32, BTreeMap<String, Fit>>;

/// The key of the output-projection refit in a layer's fits.
pub const REFIT: &str = "attn_out_proj";

/// One approximate conversion of a layer.
#[derive(Debug, Clone)]
enum Conversion {
    /// An approximate rule, applied to the layer's expression by the optimizer.
    Rule(String),
    /// A sparse conversion fitted to the calibration activations (`crate::convert`).
    Graph(&'static str),
}

impl Conversion {
    fn name(&self) -> &str {
        match self {
            Conversion::Rule(r) => r,
            Conversion::Graph(f) => f,
        }
    }
}

/// The rewrite chain of one layer (exact rules; after `conversion` if one is given), as egg
/// explains it: one line per step, each naming its rule.
pub fn explain(
    model: &Model,
    opts: &OptimizeOptions,
    layer: u32,
    conversion: Option<&str>,
) -> Result<Vec<String>, Error> {
    let g = model.graph();
    let rules = match &opts.rules_dir {
        Some(d) => RuleSet::load_dir(d)?,
        None => RuleSet::embedded()?,
    };
    let target = opts.seqs.first().copied().unwrap_or(128);
    let (blocks, _) = attnopt_rewrite::block::blocks(g);
    let b = blocks
        .iter()
        .find(|b| b.layer == layer)
        .ok_or_else(|| Error::Usage {
            path: model.imported().dir.clone(),
            msg: format!(
                "--explain {layer}: there is no layer {layer} (the model's layers are 0 to {})",
                blocks.len().saturating_sub(1)
            ),
        })?;
    let (mut be, an, _) = attnopt_rewrite::egraph::prepare(g, b);
    if let Some(name) = conversion {
        let rule = rules
            .get(name)
            .ok_or_else(|| Error::NotSupported(format!("no rule named {name}")))?;
        be = attnopt_rewrite::approx::apply_once(rule, &be, &an).ok_or_else(|| {
            Error::NotSupported(format!("rule {name} does not match layer {layer}"))
        })?;
    }
    let o = Options {
        limits: opts.limits,
        ..Options::exact(&rules, target)
    };
    attnopt_rewrite::explain::explain(&be, an, &o)
        .map_err(|e| Error::NotSupported(format!("explaining layer {layer}: {e}")))
}
