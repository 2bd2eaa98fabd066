//! The value-dependent approximate conversions of a dense model into Scaling Transformers'
//! sparse layers (docs/SPARSE.md), `optimize --allow sparse-qkv` and `--allow sparse-ff`. Unlike
//! Hydra (a rule applied to the expression), they need the weights and calibration activations,
//! so they are graph passes: [`sites`] finds what a family would replace in a layer (or says
//! why nothing), [`fit`] fits every site from one run of the original model on the calibration
//! inputs (`fit_factored`, `fit_sparse_ff`), and [`apply`] rewrites the graph with the fits
//! chosen. The exact optimizer and the CPU backend then treat the result like a checkpoint
//! trained in that form (the `factored` and `sparse_ff` kernels).
//!
//! - **sparse-qkv**: each dense Q, K, V (or fused QKV) product becomes a factored one, `G` and
//!   `P` fitted to the product's outputs. The local convolutions of trax's
//!   `MultiplicativeConvCausalAttention` are *not* added: a dense model has no such mixing of
//!   neighbouring tokens, so there is nothing to fit them to, and they would only cost work.
//!   The output projection stays dense (trax's default has none, but a dense model needs its
//!   own) and is refitted by least squares like every converted layer's (`refit`).
//! - **sparse-ff**: a feed-forward `act(h·W1 + b1)·W2` (with `act(0) = 0`; GELU, ReLU, SiLU)
//!   keeps its weights, reordered into blocks, and gains a fitted controller. Gated
//!   feed-forwards (SwiGLU) are not supported yet.

use std::collections::{BTreeMap, HashMap, HashSet};

use attnopt_ir::builder::Builder;
use attnopt_ir::fold::weight_only;
use attnopt_ir::sparse::SparseFf;
use attnopt_ir::{interp, Binary, Graph, NodeId, Op, Role, Tensor, Unary, Weight};
use attnopt_lower::row::UnaryOp;
use attnopt_rewrite::factored::factored_product;

use crate::report::Fit;
use crate::Error;

pub const SPARSE_QKV: &str = "sparse-qkv";
pub const SPARSE_FF: &str = "sparse-ff";
/// The graph-pass families, in the order `--allow` lists them in help.
pub const FAMILIES: [&str; 2] = [SPARSE_QKV, SPARSE_FF];

/// The user's choices for the sparse conversions.
#[derive(Debug, Clone, Copy)]
pub struct SparseSettings {
    /// Modules `S` per `d` outputs of a Q/K/V product (`M = d / S`); default: the heads.
    pub qkv_modules: Option<usize>,
    /// Units per block `N` of a sparse feed-forward.
    pub ff_block: usize,
    /// The controller's rank `L`; default `F / N` as in trax's configurations.
    pub ff_rank: Option<usize>,
}

impl SparseSettings {
    /// Values no model can use: modules and blocks below 2, a rank of 0.
    pub fn check(&self) -> Result<(), String> {
        if self.qkv_modules.is_some_and(|s| s < 2) {
            return Err("the sparse-qkv module count must be at least 2".into());
        }
        if self.ff_block < 2 {
            return Err("the sparse-ff block must hold at least 2 units".into());
        }
        if self.ff_rank == Some(0) {
            return Err("the sparse-ff controller rank must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for SparseSettings {
    fn default() -> Self {
        SparseSettings {
            qkv_modules: None,
            ff_block: 32,
            ff_rank: None,
        }
    }
}

/// What a family replaces in one layer.
#[derive(Debug, Clone)]
pub enum Site {
    /// Dense Q/K/V products `x·W` (`W [d_in, d_out]` weight-only), each to be factored with
    /// module width `m`.
    Qkv { products: Vec<NodeId>, m: usize },
    /// `down = matmul(act(pre), w2)` with `pre = h·w1 (+ b1)`.
    Ff {
        h: NodeId,
        w1: NodeId,
        b1: Option<NodeId>,
        act: Unary,
        down: NodeId,
        w2: NodeId,
        units: usize,
        block: usize,
        rank: usize,
    },
}

/// Weight bytes per token a site reads as it is and as converted (f32).
#[derive(Debug, Clone, Copy)]
pub struct Reads {
    pub before: u64,
    pub after: u64,
}

/// Bytes per element of the weight behind the weight-only value `n` (through views and
/// other one-operand operators); 4 when it is computed from several.
fn element_bytes(g: &Graph, n: NodeId) -> u64 {
    let mut at = n;
    loop {
        match &g.node(at).op {
            Op::Weight(w) => return g.weight_data(*w).dtype().size() as u64,
            _ => match g.operands(at)[..] {
                [one] => at = one,
                _ => return 4,
            },
        }
    }
}

/// Bytes per element of a fitted weight replacing one of `source` bytes: bf16 (2) stays
/// bf16, anything else is stored f32.
fn stored_bytes(source: u64) -> u64 {
    if source == 2 {
        2
    } else {
        4
    }
}

fn dims2(g: &Graph, n: NodeId) -> Option<(usize, usize)> {
    match g.node(n).ty.shape.dims() {
        [a, b] => Some((a.fixed()?, b.fixed()?)),
        _ => None,
    }
}

/// What `family` would replace in `layer` (`heads`: the layer's attention heads), with the
/// bytes it reads before and after; or why nothing.
pub fn site(
    g: &Graph,
    family: &str,
    layer: u32,
    heads: Option<usize>,
    settings: &SparseSettings,
) -> Result<(Site, Reads), String> {
    let constant = weight_only(g);
    let in_layer = |n: NodeId| g.node(n).meta.layer == Some(layer);
    let weight_product = |n: NodeId| {
        matches!(g.node(n).op, Op::MatMul)
            && constant.contains(&g.operands(n)[1])
            && !constant.contains(&g.operands(n)[0])
            && dims2(g, g.operands(n)[1]).is_some()
    };
    match family {
        SPARSE_QKV => {
            let products: Vec<NodeId> = g
                .topo_order()
                .into_iter()
                .filter(|&n| in_layer(n) && weight_product(n))
                .filter(|&n| {
                    matches!(
                        g.node(n).meta.role,
                        Role::QkvProj | Role::QProj | Role::KProj | Role::VProj
                    )
                })
                .collect();
            let Some(&first) = products.first() else {
                return Err("no dense Q/K/V product with a weight to factor".into());
            };
            let (d_in, _) = dims2(g, g.operands(first)[1]).ok_or("not a matrix")?;
            let s = settings
                .qkv_modules
                .or(heads)
                .ok_or("the layer's head count is unknown; give --sparse-qkv-modules")?;
            if s < 2 || !d_in.is_multiple_of(s) {
                return Err(format!(
                    "{s} modules do not divide the hidden size {d_in} into modules of 2 or more"
                ));
            }
            let m = d_in / s;
            let mut reads = Reads {
                before: 0,
                after: 0,
            };
            for &p in &products {
                let (di, d_out) = dims2(g, g.operands(p)[1]).ok_or("not a matrix")?;
                if !d_out.is_multiple_of(m) || di != d_in {
                    return Err(format!(
                        "a Q/K/V product [{di}, {d_out}] does not split into modules of {m}"
                    ));
                }
                // The fitted G and P are stored like the weight they replace (bf16 or f32).
                let elem = element_bytes(g, g.operands(p)[1]);
                reads.before += elem * (di * d_out) as u64;
                reads.after += stored_bytes(elem) * (di * (d_out / m + m)) as u64;
            }
            Ok((Site::Qkv { products, m }, reads))
        }
        SPARSE_FF => {
            let act_node = g
                .topo_order()
                .into_iter()
                .find(|&n| {
                    in_layer(n)
                        && g.node(n).meta.role == Role::MlpAct
                        && matches!(g.node(n).op, Op::Unary(_))
                })
                .ok_or("no feed-forward activation found")?;
            let Op::Unary(act) = g.node(act_node).op else {
                return Err("no feed-forward activation found".into());
            };
            if UnaryOp::of(act).is_none_or(|f| f.apply(0.0) != 0.0) {
                return Err(format!("activation {act:?} does not map 0 to 0"));
            }
            let users = g.users(act_node);
            let down = match users[..] {
                [u] if weight_product(u) && g.operands(u)[0] == act_node => u,
                [u] if matches!(g.node(u).op, Op::Binary(Binary::Mul)) => {
                    return Err(
                        "not supported yet: a gated feed-forward (SwiGLU/GeGLU) as sparse-ff"
                            .into(),
                    )
                }
                _ => return Err("the activation does not feed one dense product".into()),
            };
            let pre = g.operands(act_node)[0];
            let (product, b1) = match g.node(pre).op {
                Op::MatMul => (pre, None),
                Op::Binary(Binary::Add) => {
                    let [a, b] = g.operands(pre)[..] else {
                        return Err("unexpected bias add".into());
                    };
                    let rank1 = |n: NodeId| g.node(n).ty.shape.rank() == 1 && constant.contains(&n);
                    match (matches!(g.node(a).op, Op::MatMul), rank1(b), rank1(a)) {
                        (true, true, _) => (a, Some(b)),
                        (false, _, true) if matches!(g.node(b).op, Op::MatMul) => (b, Some(a)),
                        _ => return Err("the first product's bias is not a vector".into()),
                    }
                }
                _ => return Err("the activation's operand is not a product (+ bias)".into()),
            };
            if !weight_product(product) {
                return Err("the first product has no weight".into());
            }
            let (h, w1, w2) = (
                g.operands(product)[0],
                g.operands(product)[1],
                g.operands(down)[1],
            );
            let ((d, units), (units2, d_out)) = (
                dims2(g, w1).ok_or("W1 is not a matrix")?,
                dims2(g, w2).ok_or("W2 is not a matrix")?,
            );
            if units != units2 {
                return Err("W1 and W2 disagree on the units".into());
            }
            let block = settings.ff_block;
            if block < 2 || !units.is_multiple_of(block) || units / block < 1 {
                return Err(format!(
                    "blocks of {block} units do not divide the {units} units (--sparse-ff-block)"
                ));
            }
            // A rank of d or more is the exact predictor already (fit_sparse_ff): no larger.
            let rank = settings.ff_rank.unwrap_or(units / block).clamp(1, d.max(1));
            let blocks = units / block;
            // The reordered weights and the controller are stored like W1 (bf16 or f32).
            let elem = stored_bytes(element_bytes(g, w1));
            let reads = Reads {
                before: element_bytes(g, w1) * (d * units) as u64
                    + b1.map_or(0, |b| element_bytes(g, b) * units as u64)
                    + element_bytes(g, w2) * (units * d_out) as u64,
                after: elem * (d * rank + rank * units + units + blocks * (d + 1 + d_out)) as u64,
            };
            Ok((
                Site::Ff {
                    h,
                    w1,
                    b1,
                    act,
                    down,
                    w2,
                    units,
                    block,
                    rank,
                },
                reads,
            ))
        }
        other => Err(format!("{other} is not a graph conversion")),
    }
}

/// A fitted site: what [`apply`] writes, and the fit's report.
#[derive(Debug, Clone)]
pub struct Fitted {
    replacement: Replacement,
    pub fit: Fit,
}

#[derive(Debug, Clone)]
enum Replacement {
    /// Product node → `(G, P)`.
    Factors(Vec<(NodeId, Weight, Weight)>),
    /// The down product → the sparse feed-forward of `h`.
    SparseFf {
        down: NodeId,
        h: NodeId,
        act: Unary,
        /// `m1, m2, mb, w1, w2, b1` in trax's shapes.
        weights: Box<[Weight; 6]>,
        block: usize,
        units: usize,
        rank: usize,
        d: usize,
    },
}

/// `t`'s rows `[.., d]` split into fitted and held-out ones, as f64.
fn split_rows(t: &Tensor) -> (Vec<f64>, Vec<f64>, usize) {
    let d = t.shape().last().copied().unwrap_or(1).max(1);
    let v = t.to_f32_vec();
    let (mut fit, mut held_out) = (Vec::new(), Vec::new());
    for (r, row) in v.chunks_exact(d).enumerate() {
        let dst = if crate::calib::held_out(r) {
            &mut held_out
        } else {
            &mut fit
        };
        dst.extend(row.iter().map(|&x| f64::from(x)));
    }
    (fit, held_out, d)
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f32_vec().into_iter().map(f64::from).collect()
}

/// A fitted weight, stored bf16 when what it replaces is (`bf16`), else f32.
fn weight(name: String, shape: Vec<usize>, v: &[f32], bf16: bool) -> Result<Weight, Error> {
    let w = match bf16 {
        true => Weight::bf16_rounded(name, shape, v),
        false => Weight::from_f32(name, shape, v),
    };
    w.map_err(|e| Error::NotSupported(format!("a fitted weight: {e}")))
}

/// Fits every site from one run of `g` on `inputs`; `progress` hears about each.
pub fn fit(
    g: &Graph,
    sites: &[(u32, &'static str, Site)],
    inputs: &HashMap<String, Tensor>,
    progress: &mut dyn FnMut(&str),
) -> Result<BTreeMap<(u32, &'static str), Fitted>, Error> {
    let mut wanted: Vec<NodeId> = Vec::new();
    for (_, _, s) in sites {
        match s {
            Site::Qkv { products, .. } => {
                for &p in products {
                    wanted.extend(g.operands(p));
                }
            }
            Site::Ff { h, w1, b1, w2, .. } => {
                wanted.extend([*h, *w1, *w2]);
                wanted.extend(*b1);
            }
        }
    }
    let mut uniq = HashSet::new();
    wanted.retain(|n| uniq.insert(*n));
    let index: HashMap<NodeId, usize> = wanted.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let values = interp::run_nodes(g, inputs, &wanted)?;
    // Every fourth token is held out: fewer than four leave nothing to measure the fits on.
    let tokens: usize = inputs
        .values()
        .find(|t| t.as_i64().is_some())
        .map_or(usize::MAX, |t| t.numel());
    if tokens < 4 {
        return Err(Error::Usage {
            path: "calibration inputs".into(),
            msg: format!(
                "{tokens} token(s): the sparse fits hold out every fourth token, so they need at \
                 least 4 (raise --calib-seq, or give a longer --calib file)"
            ),
        });
    }
    let value = |n: NodeId| &values[index[&n]];
    let mut out = BTreeMap::new();
    for (layer, family, s) in sites {
        progress(&format!("fitting {family} for layer {layer}"));
        let fitted = match s {
            Site::Qkv { products, m } => {
                let mut factors = Vec::new();
                let (mut worst_before, mut worst_after) = (0f64, 0f64);
                let mut rows = (0, 0);
                let mut kept = true;
                for &p in products {
                    let (x, w) = (value(g.operands(p)[0]), value(g.operands(p)[1]));
                    let (x_fit, x_held, d) = split_rows(x);
                    rows = (x_fit.len() / d, x_held.len() / d);
                    let d_out = w.shape()[1];
                    let f = crate::fit_factored::fit(&f64s(w), d, d_out, *m, &x_fit, &x_held)
                        .ok_or_else(|| {
                            Error::NotSupported(format!(
                                "fitting {family} for layer {layer}: the calibration \
                                 activations or weights are not finite"
                            ))
                        })?;
                    worst_before = worst_before.max(f.error_before);
                    worst_after = worst_after.max(f.error_after);
                    kept &= f.kept;
                    let stem = format!("attnopt.L{layer}.{}", role_name(g.node(p).meta.role));
                    let bf16 = element_bytes(g, g.operands(p)[1]) == 2;
                    factors.push((
                        p,
                        weight(format!("{stem}.gating"), vec![f.modules, d], &f.gate, bf16)?,
                        weight(format!("{stem}.projection"), vec![d, *m], &f.proj, bf16)?,
                    ));
                }
                Fitted {
                    replacement: Replacement::Factors(factors),
                    fit: Fit {
                        error_before: worst_before,
                        error_after: worst_after,
                        kept,
                        rows_fit: rows.0,
                        rows_held_out: rows.1,
                        hit_rate_before: None,
                        hit_rate_after: None,
                    },
                }
            }
            Site::Ff {
                h,
                w1,
                b1,
                act,
                down,
                w2,
                units,
                block,
                rank,
            } => {
                let (h_fit, h_held, d) = split_rows(value(*h));
                let (w1v, w2v) = (f64s(value(*w1)), f64s(value(*w2)));
                let b1v = b1.map_or(vec![0.0; *units], |b| f64s(value(b)));
                let d_out = value(*w2).shape()[1];
                let f = UnaryOp::of(*act)
                    .ok_or("activation")
                    .map_err(|e| Error::NotSupported(e.into()))?;
                let apply = move |x: f64| f.apply(x);
                let dense = crate::fit_sparse_ff::DenseFf {
                    d,
                    units: *units,
                    d_out,
                    w1: &w1v,
                    b1: &b1v,
                    w2: &w2v,
                    act: &apply,
                };
                let fit = crate::fit_sparse_ff::fit(&dense, *block, *rank, &h_fit, &h_held)
                    .ok_or_else(|| {
                        Error::NotSupported(format!(
                            "fitting {family} for layer {layer}: the calibration activations \
                             or weights are not finite"
                        ))
                    })?;
                let (x, n) = (units / block, *block);
                let o = &fit.order;
                // Unit k = x·N + y in block order is dense unit o[k].
                let w1n: Vec<f32> = (0..d)
                    .flat_map(|i| o.iter().map(move |&u| (i, u)))
                    .map(|(i, u)| w1v[i * units + u] as f32)
                    .collect();
                let mut w2n = vec![0f32; units * d_out];
                for y in 0..n {
                    for b in 0..x {
                        let u = o[b * n + y];
                        for j in 0..d_out {
                            w2n[(y * x + b) * d_out + j] = w2v[u * d_out + j] as f32;
                        }
                    }
                }
                let b1n: Vec<f32> = o.iter().map(|&u| b1v[u] as f32).collect();
                let stem = format!("attnopt.L{layer}.sparse_ff");
                let bf16 = element_bytes(g, *w1) == 2;
                let weights = Box::new([
                    weight(
                        format!("{stem}.controller.m1"),
                        vec![d, *rank],
                        &fit.m1,
                        bf16,
                    )?,
                    weight(
                        format!("{stem}.controller.m2"),
                        vec![*rank, x, n],
                        &fit.m2,
                        bf16,
                    )?,
                    weight(format!("{stem}.controller.bias"), vec![x, n], &fit.mb, bf16)?,
                    weight(format!("{stem}.w1"), vec![d, x, n], &w1n, bf16)?,
                    weight(format!("{stem}.w2"), vec![n, x, d_out], &w2n, bf16)?,
                    weight(format!("{stem}.b1"), vec![*units], &b1n, bf16)?,
                ]);
                Fitted {
                    replacement: Replacement::SparseFf {
                        down: *down,
                        h: *h,
                        act: *act,
                        weights,
                        block: *block,
                        units: *units,
                        rank: *rank,
                        d,
                    },
                    fit: Fit {
                        error_before: fit.error_before,
                        error_after: fit.error_after,
                        kept: fit.kept,
                        rows_fit: h_fit.len() / d.max(1),
                        rows_held_out: h_held.len() / d.max(1),
                        hit_rate_before: Some(fit.hit_rate_before),
                        hit_rate_after: Some(fit.hit_rate_after),
                    },
                }
            }
        };
        out.insert((*layer, *family), fitted);
    }
    Ok(out)
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::QkvProj => "qkv",
        Role::QProj => "q",
        Role::KProj => "k",
        Role::VProj => "v",
        _ => "proj",
    }
}

/// `g` with the fitted sites `chosen` written in (one rebuild: node ids are `g`'s).
pub fn apply(g: &Graph, chosen: &[&Fitted]) -> Result<Graph, Error> {
    let mut factors: HashMap<NodeId, (&Weight, &Weight)> = HashMap::new();
    let mut ffs: HashMap<NodeId, &Replacement> = HashMap::new();
    for f in chosen {
        match &f.replacement {
            Replacement::Factors(v) => {
                for (n, gate, proj) in v {
                    factors.insert(*n, (gate, proj));
                }
            }
            r @ Replacement::SparseFf { down, .. } => {
                ffs.insert(*down, r);
            }
        }
    }
    let graph = g.rebuild(
        |n| match (factors.get(&n), ffs.get(&n)) {
            (Some(_), _) => Some(vec![g.operands(n)[0]]),
            (_, Some(Replacement::SparseFf { h, .. })) => Some(vec![*h]),
            _ => None,
        },
        |out, n, map| {
            if let Some((gate, proj)) = factors.get(&n) {
                return factored_product(out, g, n, map, (*gate).clone(), (*proj).clone());
            }
            let Some(Replacement::SparseFf {
                h,
                act,
                weights,
                block,
                units,
                rank,
                d,
                ..
            }) = ffs.get(&n)
            else {
                unreachable!("rebuild asks only for the nodes `kept` named")
            };
            let meta = g.node(n).meta;
            let mut b = Builder::on(std::mem::take(out), meta.layer);
            let [m1, m2, mb, w1, w2, b1] = (**weights).clone().map(|w| b.graph.weight(w));
            let f = SparseFf {
                m1,
                m2,
                mb,
                w1,
                w2,
                b2: None,
                b1: Some(b1),
                act: *act,
                block: *block,
                units: *units,
                lowrank: *rank,
            };
            let y = b.sparse_ff(map[h], &f, *d);
            *out = b.finish();
            y
        },
    )?;
    Ok(graph)
}
