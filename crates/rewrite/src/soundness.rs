//! Numeric soundness checks of `exact` rules on a model's own layers, for rule files that come
//! from users (`optimize --rules DIR`): an exact rule is an identity, so applying it once to a
//! layer must leave the layer's value unchanged, up to float rounding, on random inputs.
//!
//! The instances of a rule's left side are the places it matches in the model's distinct
//! blocks (a rule that never matches the model cannot change it). Each is rebuilt as a small
//! graph — the block's inputs as graph inputs, its weights as they are — holding both the
//! original block and the block with the rule applied once, and the reference interpreter
//! evaluates both on seeded random inputs at batch 2 and 5 tokens. The embedded rules pass the
//! same check in the test suite on hand-made start graphs (`tests/rules.rs`).
//!
//! This module never decides whether a rule is *useful*, only whether it keeps values.

use std::collections::HashMap;

use attnopt_ir::rng::Rng;
use attnopt_ir::{interp, Bindings, DType, Graph, Role, Tensor};

use crate::approx::apply_once;
use crate::block::{self, Block, BlockExpr};
use crate::egraph::{prepare, typecheck};
use crate::rules::{Body, Kind, Rule, RuleError, RuleSet};

/// Batch and token count of the checks.
const BATCH: usize = 2;
const TOKENS: usize = 5;
/// Largest max-abs difference allowed, relative to the largest value: float rounding of a
/// reassociation is ~1e-7 relative; a wrong rule is off by far more.
pub const TOLERANCE: f32 = 1e-4;

/// What a check found on one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The first layer of the block the rule matched in.
    pub layer: u32,
    /// Max-abs difference between the block's value before and after the rule.
    pub max_abs: f32,
    /// Max-abs of the block's value before it.
    pub scale: f32,
}

/// Checks every exact pattern rule of `rules` on `g`'s layers; the first unsound one is an
/// error at its `file:line` with the measured difference.
pub fn check_exact_rules(rules: &RuleSet, g: &Graph) -> Result<(), RuleError> {
    for rule in &rules.rules {
        if rule.kind != Kind::Exact || !matches!(rule.body, Body::Pattern { .. }) {
            continue;
        }
        if let Err(why) = check_rule(rule, g) {
            let (file, line) = rule.origin.rsplit_once(':').unwrap_or((&rule.origin, "0"));
            return Err(RuleError {
                file: file.to_string(),
                line: line.parse().unwrap_or(0),
                msg: format!("exact rule `{}` is not an identity: {why}", rule.name),
            });
        }
    }
    Ok(())
}

/// Checks `rule` on each distinct block of `g` it matches: the instances checked, or why it
/// is unsound.
pub fn check_rule(rule: &Rule, g: &Graph) -> Result<Vec<Measured>, String> {
    let (blocks, _) = block::blocks(g);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for b in &blocks {
        let (be, an, _) = prepare(g, b);
        if !seen.insert(be.signature()) {
            continue;
        }
        let Some(new) = apply_once(rule, &be, &an) else {
            continue;
        };
        if typecheck(&new.expr, &an).is_none() {
            continue; // the checked applier never adds it
        }
        let m = measure(g, b, &be, &new)?;
        // Written so that NaN (a rule that makes NaN) fails too.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(m.max_abs <= TOLERANCE * m.scale.max(1e-6)) {
            return Err(format!(
                "applied once to layer {} it changes the layer's output by {:.3e} (max-abs; \
                 the output's max-abs is {:.3e}) on random inputs",
                m.layer, m.max_abs, m.scale
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// Both forms of one block in one graph (outputs `before` and `after`), evaluated on three
/// seeded random inputs.
fn measure(
    g: &Graph,
    blk: &Block,
    before: &BlockExpr,
    after: &BlockExpr,
) -> Result<Measured, String> {
    let layer = blk.layer;
    let mut h = Graph::new();
    let ins = before
        .input_types
        .iter()
        .enumerate()
        .map(|(k, t)| h.input(&format!("in{k}"), t.dtype, t.shape.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let ws: Vec<_> = blk
        .weights
        .iter()
        .map(|&w| match &g.node(w).op {
            attnopt_ir::Op::Weight(id) => Ok(h.weight(g.weight_data(*id).clone())),
            _ => Err("a block weight that is not a weight".to_string()),
        })
        .collect::<Result<_, _>>()?;
    let mut root = |be: &BlockExpr| {
        let roles: Vec<Role> = be.roles.iter().map(|r| r.unwrap_or(Role::Other)).collect();
        block::instantiate(&mut h, &be.expr, &roles, layer, &ins, &ws, None)
            .map_err(|e| e.to_string())
    };
    let (r0, r1) = (root(before)?, root(after)?);
    h.set_output("before", r0).map_err(|e| e.to_string())?;
    h.set_output("after", r1).map_err(|e| e.to_string())?;
    let (mut max_abs, mut scale) = (0f32, 0f32);
    for seed in 1..=3 {
        let inputs = random_inputs(&h, seed)?;
        let out = interp::run(&h, &inputs, &["before", "after"])
            .map_err(|e| format!("the interpreter cannot evaluate it: {e}"))?;
        let (a, b) = (&out["before"], &out["after"]);
        max_abs = max_abs.max(
            b.max_abs_diff(a)
                .ok_or("the rule changed the layer's output shape")?,
        );
        scale = scale.max(a.max_abs());
    }
    Ok(Measured {
        layer,
        max_abs,
        scale,
    })
}

/// Seeded inputs at batch 2 and 5 tokens: floats uniform in [-1, 1); integer inputs are
/// padding masks keeping the first three tokens of each row and some of the rest.
fn random_inputs(g: &Graph, seed: u64) -> Result<HashMap<String, Tensor>, String> {
    let mut rng = Rng::new(seed);
    let b = Bindings::new(BATCH, TOKENS);
    g.inputs()
        .iter()
        .map(|(name, id)| {
            let ty = &g.node(*id).ty;
            let shape = ty.shape.eval(&b).ok_or("an input with an unknown size")?;
            let n: usize = shape.iter().product();
            let t = match ty.dtype {
                DType::I64 => Tensor::i64(
                    shape,
                    (0..n)
                        .map(|i| i64::from(i % TOKENS < 3 || rng.uniform() > 0.5))
                        .collect(),
                ),
                _ => Tensor::f32(shape, rng.values(n, -1.0, 1.0)),
            }
            .map_err(|e| e.to_string())?;
            Ok((name.clone(), t))
        })
        .collect()
}
