//! The exact `factored` rule (docs/SPARSE.md): a dense product weight `W [d_in, d_out]` whose
//! every input row, reshaped `S × M` (`M = d_out / S`, `1 < S < d_out`), is rank 1 is
//! `W[d, s·M + m] = G[s, d]·P[d, m]` — trax's `FactoredDense` exported dense. The product
//! `x · W` then becomes `reshape(matmul(unsqueeze(x) ⊙ G, P))`, which reads `d_in·(S + M)`
//! weights instead of `d_in·d_out`; it is taken only when that is fewer bytes.
//!
//! The rule depends on weight *values*, which the e-graph never sees (two layers of the same
//! structure share one optimisation there), so it runs as a pass over the graph before the
//! blocks are cut, when the rule set holds `exact factored: code`. Each candidate is first
//! tested on a few sampled rows (reading only those), and read whole only when they pass; a
//! weight whose sampled rows are all zero is left alone (nothing to prove, and a checkpoint of
//! zeros should not be read end to end). Acceptance: per row, with `(s₀, m₀)` its largest
//! entry, `|A[s,m] − A[s,m₀]·A[s₀,m]/A[s₀,m₀]| ≤ TOLERANCE·|A[s₀,m₀]|` for every entry; then
//! `P[d, :] = A[s₀, :]` and `G[s, d] = A[s, m₀]/A[s₀, m₀]` (zero rows: zeros). The optimizer's
//! final numerical verification checks the whole result as for every exact rule.

use std::collections::{BTreeMap, HashMap};

use attnopt_ir::{Binary, Graph, GraphError, NodeId, Op, Weight};

/// The rule's name in rule files (`exact factored: code`).
pub const NAME: &str = "factored";

/// Relative tolerance of the rank-1 test (f32 products of trained weights agree to a few ulps).
pub const TOLERANCE: f32 = 1e-5;

/// Rows tested before a weight is read whole.
const SAMPLE_ROWS: usize = 8;

/// Single elements and 2 × 2 minors probed before any row is read (a dense weight that is not
/// factored fails the first minor or two, after a handful of reads).
const PROBES: usize = 16;

/// A graph with its factored products rewritten, and how many per layer.
pub struct Factoring {
    pub graph: Graph,
    pub by_layer: BTreeMap<u32, usize>,
}

/// How a product reads its weight: `W` itself (`[d_in, d_out]`) or its transpose
/// (`permute{[1, 0]}` of an `[d_out, d_in]` weight, PyTorch's `nn.Linear`).
pub struct Candidate<'g> {
    w: &'g Weight,
    transposed: bool,
    pub d_in: usize,
    pub d_out: usize,
}

impl Candidate<'_> {
    fn at(&self, d: usize, j: usize) -> f32 {
        let i = if self.transposed {
            j * self.d_in + d
        } else {
            d * self.d_out + j
        };
        self.w.f32_at(i).unwrap_or(f32::NAN)
    }

    /// Row `d` of `W [d_in, d_out]` (NaN where the weight cannot be read).
    pub fn row(&self, d: usize) -> Vec<f32> {
        (0..self.d_out).map(|j| self.at(d, j)).collect()
    }
}

/// Rewrites every product whose weight is provably factored and reads fewer bytes factored.
pub fn factor_weights(g: &Graph) -> Result<Factoring, GraphError> {
    let mut found: HashMap<NodeId, (Weight, Weight)> = HashMap::new();
    for n in g.topo_order() {
        let Some(c) = candidate(g, n) else { continue };
        if let Some(factors) = factor(&c) {
            found.insert(n, factors);
        }
    }
    replace_products(g, &found)
}

/// `g` with each product `n = matmul(x, W)` of `factors` computed as
/// `reshape(matmul(unsqueeze(x) ⊙ G, P))` from its `(G [S, d_in], P [d_in, M])`, and how many
/// per layer. Also what the `sparse-qkv` conversion writes (with fitted factors).
pub fn replace_products(
    g: &Graph,
    factors: &HashMap<NodeId, (Weight, Weight)>,
) -> Result<Factoring, GraphError> {
    let mut by_layer = BTreeMap::new();
    // Only what the outputs still need: a factored product's dense weight is gone.
    let graph = g.rebuild(
        |n| factors.get(&n).map(|_| vec![g.operands(n)[0]]),
        |out, n, map| {
            if let Some(l) = g.node(n).meta.layer {
                *by_layer.entry(l).or_insert(0) += 1;
            }
            let (gate, proj) = &factors[&n];
            factored_product(out, g, n, map, gate.clone(), proj.clone())
        },
    )?;
    Ok(Factoring { graph, by_layer })
}

/// In a [`Graph::rebuild`] of `g`, the product `n = matmul(x, W)` as
/// `reshape(matmul(unsqueeze(x) ⊙ G, P))` (its `x` already in `map`).
pub fn factored_product(
    out: &mut Graph,
    g: &Graph,
    n: NodeId,
    map: &HashMap<NodeId, NodeId>,
    gate: Weight,
    proj: Weight,
) -> Result<NodeId, GraphError> {
    let meta = g.node(n).meta;
    let x = map[&g.operands(n)[0]];
    let rank = out.node(x).ty.shape.rank();
    let (gate, proj) = (out.weight(gate), out.weight(proj));
    let xu = out.add(Op::Unsqueeze { axis: rank - 1 }, &[x], meta)?;
    let gated = out.add(Op::Binary(Binary::Mul), &[xu, gate], meta)?;
    let y = out.add(Op::MatMul, &[gated, proj], meta)?;
    // Back to the product's own shape, `[.., d_out]`.
    out.add(Op::Reshape(g.node(n).ty.shape.clone()), &[y], meta)
}

/// `n = matmul(x, W)` with `x` an activation of rank ≥ 2 and `W` a float weight `[d_in,
/// d_out]`, directly or as the transpose of an `[d_out, d_in]` weight.
pub fn candidate(g: &Graph, n: NodeId) -> Option<Candidate<'_>> {
    if !matches!(g.node(n).op, Op::MatMul) {
        return None;
    }
    let ops = g.operands(n);
    let (x, b) = (ops[0], ops[1]);
    let (w, transposed) = match &g.node(b).op {
        Op::Weight(w) => (g.weight_data(*w), false),
        Op::Permute(p) if p[..] == [1, 0] => match g.node(g.operands(b)[0]).op {
            Op::Weight(w) => (g.weight_data(w), true),
            _ => return None,
        },
        _ => return None,
    };
    let shape = w.shape();
    if shape.len() != 2 || !w.dtype().is_float() || g.node(x).ty.shape.rank() < 2 {
        return None;
    }
    if matches!(g.node(x).op, Op::Weight(_)) {
        return None;
    }
    let (d_in, d_out) = if transposed {
        (shape[1], shape[0])
    } else {
        (shape[0], shape[1])
    };
    Some(Candidate {
        w,
        transposed,
        d_in,
        d_out,
    })
}

/// Module counts `S` (with `M = d_out / S`) whose factored form reads fewer bytes than `W`,
/// fewest weights first.
fn module_counts(c: &Candidate) -> Vec<usize> {
    let stored = (c.d_in * c.d_out * c.w.dtype().size()) as u64;
    let mut v: Vec<usize> = (2..c.d_out)
        .filter(|&s| c.d_out.is_multiple_of(s))
        .filter(|&s| ((c.d_in * (s + c.d_out / s)) as u64) * 4 < stored)
        .collect();
    v.sort_by_key(|&s| s + c.d_out / s);
    v
}

/// `(G [S, d_in], P [d_in, M])` when every row of `W` passes the rank-1 test for some `S`.
fn factor(c: &Candidate) -> Option<(Weight, Weight)> {
    let counts = module_counts(c);
    if counts.is_empty() || c.d_in == 0 {
        return None;
    }
    // Probes read a few scattered elements and rows of what may be a huge memory-mapped
    // weight: without the kernel's read-ahead, so they cost pages, not megabytes.
    let counts = c.w.without_readahead(|| passing_counts(c, counts))?;
    for s in counts {
        let m = c.d_out / s;
        let (mut gate, mut proj) = (vec![0f32; s * c.d_in], vec![0f32; c.d_in * m]);
        let mut ok = true;
        for d in 0..c.d_in {
            match rank_one(&c.row(d), s) {
                Some((gr, pr)) => {
                    for (k, v) in gr.into_iter().enumerate() {
                        gate[k * c.d_in + d] = v;
                    }
                    proj[d * m..(d + 1) * m].copy_from_slice(&pr);
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let name = c.w.name();
        let g = Weight::from_f32(format!("{name}.factored.gating"), vec![s, c.d_in], &gate);
        let p = Weight::from_f32(
            format!("{name}.factored.projection"),
            vec![c.d_in, m],
            &proj,
        );
        return Some((g.ok()?, p.ok()?));
    }
    None
}

/// The module counts (of `counts`) that a few probes cannot rule out: `None` when the sampled
/// elements are all zero (nothing to prove; a checkpoint of zeros is not read further), else
/// those whose spread 2 × 2 minors vanish and whose sampled rows are rank 1.
fn passing_counts(c: &Candidate, counts: Vec<usize>) -> Option<Vec<usize>> {
    let n = c.d_in * c.d_out;
    let probe = |i: usize| {
        let k = (i.wrapping_mul(0x9E37_79B9) ^ (i >> 3)) % n.max(1);
        c.at(k / c.d_out, k % c.d_out)
    };
    if (0..PROBES).all(|i| probe(i) == 0.0) {
        return None;
    }
    let counts: Vec<usize> = counts
        .into_iter()
        .filter(|&s| minors_vanish(c, s))
        .collect();
    if counts.is_empty() {
        return None;
    }
    let sample: Vec<usize> = (0..SAMPLE_ROWS.min(c.d_in))
        .map(|i| i * c.d_in / SAMPLE_ROWS.min(c.d_in))
        .collect();
    let rows: Vec<Vec<f32>> = sample.iter().map(|&d| c.row(d)).collect();
    Some(
        counts
            .into_iter()
            .filter(|&s| rows.iter().all(|r| rank_one(r, s).is_some()))
            .collect(),
    )
}

/// Whether [`PROBES`] spread 2 × 2 minors `A[s,m]·A[s',m'] − A[s,m']·A[s',m]` of rows seen as
/// `S × M` vanish (leniently: this only rejects; [`rank_one`] decides).
fn minors_vanish(c: &Candidate, s: usize) -> bool {
    let m = c.d_out / s;
    (0..PROBES).all(|i| {
        let h = i
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(s.wrapping_mul(0x85EB_CA6B));
        let d = h % c.d_in;
        let (s1, s2) = (h % s, (h / 7 + 1 + h % s) % s);
        let (m1, m2) = ((h / 13) % m, (h / 13 + 1 + (h / 131) % (m - 1).max(1)) % m);
        let at = |a: usize, b: usize| c.at(d, a * m + b) as f64;
        let (a, b, e, f) = (at(s1, m1), at(s1, m2), at(s2, m1), at(s2, m2));
        let big = a.abs().max(b.abs()).max(e.abs()).max(f.abs());
        (a * f - b * e).abs() <= 1e-4 * big * big
    })
}

/// A row `[S·M]` seen as `A [S, M]`: `(g [S], p [M])` with `A = g ⊗ p` to [`TOLERANCE`],
/// or `None`. Non-finite entries never pass.
pub fn rank_one(row: &[f32], s: usize) -> Option<(Vec<f32>, Vec<f32>)> {
    if s == 0 || !row.len().is_multiple_of(s) || row.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let m = row.len() / s;
    let (pivot, &big) = row
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))?;
    if big == 0.0 {
        return Some((vec![0.0; s], vec![0.0; m]));
    }
    let (s0, m0) = (pivot / m, pivot % m);
    let p: Vec<f32> = row[s0 * m..(s0 + 1) * m].to_vec();
    let g: Vec<f32> = (0..s).map(|k| row[k * m + m0] / big).collect();
    let tol = TOLERANCE * big.abs();
    for k in 0..s {
        for j in 0..m {
            let want = g[k] as f64 * p[j] as f64;
            if (row[k * m + j] as f64 - want).abs() > tol as f64 {
                return None;
            }
        }
    }
    Some((g, p))
}
