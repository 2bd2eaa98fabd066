//! After an approximate conversion, refit the converted layer's output projection by least
//! squares so the layer reproduces the original layer's attention output on calibration
//! activations (the inputs of the projection in the converted model against the outputs of the
//! projection, bias included, in the original one).
//!
//! Every fourth calibration row is held out of the fit; the report gives the error before and
//! after on those rows, and the refit is kept only when it lowers that error. Layers are
//! refitted together from one run of each model (a later layer's activations are those of the
//! model before any refit). The new weight is stored `[in, out]` and read directly; the bias is
//! refitted with it when the layer has one.

use std::collections::{BTreeMap, HashMap, HashSet};

use attnopt_ir::fold::weight_only;
use attnopt_ir::{interp, Binary, Graph, NodeId, NodeMeta, Op, Role, Tensor, Weight};

use crate::report::{ErrorStat, Fit};
use crate::Error;

/// A layer's output projection: `matmul(x, W)` (+ `bias`), its last node `out`.
struct OutProj {
    matmul: NodeId,
    x: NodeId,
    /// The `add` of a weight-only bias to the product, and the bias operand.
    bias: Option<(NodeId, NodeId)>,
    out: NodeId,
}

/// The product of role `AttnOutProj` in `layer` whose right operand depends on weights only
/// (`weight_only`: `ir::fold::weight_only` of `g`), and its bias add if it has one.
fn out_proj(g: &Graph, weight_only: &HashSet<NodeId>, layer: u32) -> Option<OutProj> {
    let matmul = g.topo_order().into_iter().find(|&n| {
        let node = g.node(n);
        node.meta.layer == Some(layer)
            && node.meta.role == Role::AttnOutProj
            && matches!(node.op, Op::MatMul)
            && weight_only.contains(&g.operands(n)[1])
    })?;
    let x = g.operands(matmul)[0];
    let users = g.users(matmul);
    let bias = match users[..] {
        [u] if matches!(g.node(u).op, Op::Binary(Binary::Add)) => {
            let ops = g.operands(u);
            let other = if ops[0] == matmul { ops[1] } else { ops[0] };
            (weight_only.contains(&other) && g.node(other).ty.shape.rank() == 1)
                .then_some((u, other))
        }
        _ => None,
    };
    let out = bias.map_or(matmul, |(add, _)| add);
    Some(OutProj {
        matmul,
        x,
        bias,
        out,
    })
}

/// Rows (`[.., d]` flattened) of a tensor as f64.
fn rows(t: &Tensor) -> (Vec<f64>, usize) {
    let d = t.shape().last().copied().unwrap_or(1).max(1);
    (t.to_f32_vec().into_iter().map(f64::from).collect(), d)
}

/// Refits the output projection of each of `layers` in `converted` against `original` on
/// `inputs`. Returns the graph (with the kept refits) and each layer's fit.
pub fn refit(
    original: &Graph,
    converted: &Graph,
    layers: &[u32],
    inputs: &HashMap<String, Tensor>,
) -> Result<(Graph, BTreeMap<u32, Fit>), Error> {
    let (wo, wc) = (weight_only(original), weight_only(converted));
    let found: Vec<(u32, OutProj, OutProj)> = layers
        .iter()
        .filter_map(|&l| Some((l, out_proj(original, &wo, l)?, out_proj(converted, &wc, l)?)))
        .collect();
    if found.is_empty() {
        return Ok((converted.clone(), BTreeMap::new()));
    }
    let targets = interp::run_nodes(
        original,
        inputs,
        &found.iter().map(|(_, o, _)| o.out).collect::<Vec<_>>(),
    )?;
    let mut wanted = Vec::new();
    for (_, _, c) in &found {
        wanted.extend([c.x, c.out]);
    }
    let acts = interp::run_nodes(converted, inputs, &wanted)?;
    let mut fits = BTreeMap::new();
    let mut replace: HashMap<NodeId, (Weight, Option<Weight>)> = HashMap::new();
    for (i, ((l, _, c), y)) in found.iter().zip(&targets).enumerate() {
        let (x, before) = (&acts[2 * i], &acts[2 * i + 1]);
        let (xs, p) = rows(x);
        let (ys, q) = rows(y);
        let (now, _) = rows(before);
        let n = xs.len() / p;
        if ys.len() != n * q || now.len() != n * q {
            continue;
        }
        let held = crate::calib::held_out;
        let with_bias = c.bias.is_some();
        let pa = p + with_bias as usize;
        let (mut a, mut yf) = (Vec::new(), Vec::new());
        for r in (0..n).filter(|&r| !held(r)) {
            a.extend_from_slice(&xs[r * p..(r + 1) * p]);
            if with_bias {
                a.push(1.0);
            }
            yf.extend_from_slice(&ys[r * q..(r + 1) * q]);
        }
        let n_fit = yf.len() / q.max(1);
        let Some(w) = crate::lstsq::solve(&a, &yf, n_fit, pa, q) else {
            continue;
        };
        // Held-out error of the layer as converted, and as refitted.
        let (mut want, mut was, mut refit) = (vec![], vec![], vec![]);
        for r in (0..n).filter(|&r| held(r)) {
            want.extend(ys[r * q..(r + 1) * q].iter().map(|&v| v as f32));
            was.extend(now[r * q..(r + 1) * q].iter().map(|&v| v as f32));
            for j in 0..q {
                let mut v = if with_bias { w[p * q + j] } else { 0.0 };
                for k in 0..p {
                    v += xs[r * p + k] * w[k * q + j];
                }
                refit.push(v as f32);
            }
        }
        let t = |v: Vec<f32>| Tensor::f32(vec![v.len()], v);
        let (want, was, refit) = match (t(want), t(was), t(refit)) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => continue,
        };
        let before = ErrorStat::between(&was, &want).relative;
        let after = ErrorStat::between(&refit, &want).relative;
        let kept = after < before;
        fits.insert(
            *l,
            Fit {
                error_before: before,
                error_after: after,
                hit_rate_before: None,
                hit_rate_after: None,
                kept,
                rows_fit: n_fit,
                rows_held_out: want.numel() / q.max(1),
            },
        );
        if !kept {
            continue;
        }
        let stem = format!("attnopt.L{l}.attn_out_proj.refit");
        let weight: Vec<f32> = w[..p * q].iter().map(|&v| v as f32).collect();
        let weight = Weight::from_f32(format!("{stem}.weight"), vec![p, q], &weight)
            .map_err(|e| Error::NotSupported(format!("a refitted weight: {e}")))?;
        let bias = match with_bias {
            true => {
                let b: Vec<f32> = w[p * q..].iter().map(|&v| v as f32).collect();
                Some(
                    Weight::from_f32(format!("{stem}.bias"), vec![q], &b)
                        .map_err(|e| Error::NotSupported(format!("a refitted bias: {e}")))?,
                )
            }
            false => None,
        };
        replace.insert(c.matmul, (weight, bias));
    }
    Ok((rebuild(converted, &found, replace)?, fits))
}

/// `g` with each refitted product reading its new weight (and its add the new bias); nodes
/// nothing needs any more are dropped.
fn rebuild(
    g: &Graph,
    found: &[(u32, OutProj, OutProj)],
    replace: HashMap<NodeId, (Weight, Option<Weight>)>,
) -> Result<Graph, Error> {
    if replace.is_empty() {
        return Ok(g.clone());
    }
    let bias_add: HashMap<NodeId, NodeId> = found
        .iter()
        .filter(|(_, _, c)| replace.contains_key(&c.matmul))
        .filter_map(|(_, _, c)| c.bias.map(|(add, _)| (add, c.matmul)))
        .collect();
    let mut new_bias: HashMap<NodeId, NodeId> = HashMap::new();
    Ok(g.rebuild(
        |n| {
            if replace.contains_key(&n) {
                Some(vec![g.operands(n)[0]])
            } else {
                bias_add.get(&n).map(|&mm| vec![mm])
            }
        },
        |out, n, map| {
            let meta: NodeMeta = g.node(n).meta;
            if let Some((w, b)) = replace.get(&n).cloned() {
                let w = out.weight(w);
                if let Some(b) = b {
                    new_bias.insert(n, out.weight(b));
                }
                return out.add(Op::MatMul, &[map[&g.operands(n)[0]], w], meta);
            }
            let mm = bias_add[&n];
            out.add(Op::Binary(Binary::Add), &[map[&mm], new_bias[&mm]], meta)
        },
    )?)
}
