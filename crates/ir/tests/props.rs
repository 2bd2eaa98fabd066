//! Property tests: operators against naive loops and identities on random shapes and data,
//! and random graphs whose statically inferred shapes must equal the interpreter's.

// Tests pass operands as `&[x.clone()]` throughout; `slice::from_ref` would obscure them.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;
#[path = "../../../tests/support/proptest_config.rs"]
mod proptest_config;

use std::collections::HashMap;

use attnopt_ir::interp;
use attnopt_ir::{
    Binary, DType, Dim, Graph, NodeId, Op, Reduce, RopeStyle, Scalar, Shape, Tensor, Unary, Weight,
    BATCH, SEQ,
};
use common::*;
use proptest::prelude::*;

/// A float tensor of `shape` with values drawn from `seed`.
fn data(shape: &[usize], seed: u64) -> Tensor {
    Gen::new(seed).tensor(shape)
}

/// A random permutation of `0..r` from `seed` (Fisher–Yates).
fn perm_from(r: usize, seed: u64) -> Vec<usize> {
    let mut rng = Gen::new(seed);
    let mut p: Vec<usize> = (0..r).collect();
    for i in (1..r).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Shapes `a` and `b` where each axis of `b` (right-aligned) is the same as `a`'s or 1, and
/// either may have fewer axes; sides also swap where the flags say so.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec((1usize..4, 0u8..3), 0..4)
        .prop_flat_map(|axes| {
            let full: Vec<usize> = axes.iter().map(|&(d, _)| d).collect();
            let rank = full.len();
            (Just(full), Just(axes), 0..=rank)
        })
        .prop_map(|(full, axes, drop)| {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for (i, (&d, &(_, flag))) in full.iter().zip(&axes).enumerate() {
                // flag 0: both d; 1: a has 1; 2: b has 1
                a.push(if flag == 1 { 1 } else { d });
                if i >= drop {
                    b.push(if flag == 2 { 1 } else { d });
                }
            }
            (a, b)
        })
}

proptest! {
    #![proptest_config(proptest_config::config(96))]

    /// matmul equals a naive triple loop over the broadcast batch.
    #[test]
    fn matmul_equals_naive_loop(
        (batch_a, batch_b) in broadcast_pair(),
        swap in any::<bool>(),
        m in 1usize..4, k in 1usize..5, n in 1usize..4,
        seed in any::<u64>(),
    ) {
        let (ba, bb) = if swap { (batch_b, batch_a) } else { (batch_a, batch_b) };
        let mut sa = ba.clone();
        sa.extend([m, k]);
        let mut sb = bb.clone();
        sb.extend([k, n]);
        let (a, b) = (data(&sa, seed), data(&sb, seed ^ 1));
        let y = run_op(Op::MatMul, &[a.clone(), b.clone()]);

        // Independent loop: right-align batch axes, size-1 axes repeat.
        let r = ba.len().max(bb.len());
        let pad = |s: &[usize]| [vec![1; r - s.len()], s.to_vec()].concat();
        let (pa, pb) = (pad(&ba), pad(&bb));
        let batch: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &z)| x.max(z)).collect();
        let mut want_shape = batch.clone();
        want_shape.extend([m, n]);
        prop_assert_eq!(y.shape(), &want_shape[..]);
        let (av, bv, yv) = (f32s(&a), f32s(&b), f32s(&y));
        for (bi, idx) in (0..batch.iter().product::<usize>()).map(|f| (f, unravel(f, &batch))) {
            let ia: Vec<usize> = idx.iter().zip(&pa).map(|(&i, &d)| i % d).collect();
            let ib: Vec<usize> = idx.iter().zip(&pb).map(|(&i, &d)| i % d).collect();
            let (oa, ob) = (ravel(&ia, &pa) * m * k, ravel(&ib, &pb) * k * n);
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0f64;
                    for p in 0..k {
                        s += av[oa + i * k + p] as f64 * bv[ob + p * n + j] as f64;
                    }
                    let got = yv[(bi * m + i) * n + j] as f64;
                    prop_assert!((got - s).abs() < 1e-5, "batch {:?} ({},{}): {} vs {}", idx, i, j, got, s);
                }
            }
        }
    }

    /// Binary ops with broadcasting equal a per-element index computation.
    #[test]
    fn binary_broadcast_equals_index_loop(
        (sa, sb) in broadcast_pair(),
        swap in any::<bool>(),
        kind in 0usize..5,
        seed in any::<u64>(),
    ) {
        let (sa, sb) = if swap { (sb, sa) } else { (sa, sb) };
        let k = [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div, Binary::Max][kind];
        let (a, b) = (data(&sa, seed), data(&sb, seed ^ 7));
        let y = run_op(Op::Binary(k), &[a.clone(), b.clone()]);
        let r = sa.len().max(sb.len());
        let pad = |s: &[usize]| [vec![1; r - s.len()], s.to_vec()].concat();
        let (pa, pb) = (pad(&sa), pad(&sb));
        let os: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &z)| x.max(z)).collect();
        prop_assert_eq!(y.shape(), &os[..]);
        for (f, &got) in f32s(&y).iter().enumerate() {
            let idx = unravel(f, &os);
            let ia: Vec<usize> = idx.iter().zip(&pa).map(|(&i, &d)| i % d).collect();
            let ib: Vec<usize> = idx.iter().zip(&pb).map(|(&i, &d)| i % d).collect();
            let (p, q) = (f32s(&a)[ravel(&ia, &pa)], f32s(&b)[ravel(&ib, &pb)]);
            let want = match k {
                Binary::Add => p + q,
                Binary::Sub => p - q,
                Binary::Mul => p * q,
                Binary::Div => p / q,
                Binary::Max => if p > q { p } else { q },
            };
            prop_assert!(got == want || (got.is_nan() && want.is_nan()), "{:?} at {:?}: {} vs {}", k, idx, got, want);
        }
    }

    /// permute moves element `idx` to `idx ∘ perm`, and the inverse permutation undoes it.
    #[test]
    fn permute_then_inverse_is_identity(
        shape in prop::collection::vec(1usize..4, 1..5),
        pseed in any::<u64>(),
        seed in any::<u64>(),
    ) {
        let perm = perm_from(shape.len(), pseed);
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let x = data(&shape, seed);
        let y = run_op(Op::Permute(perm.clone()), &[x.clone()]);
        let ys: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        prop_assert_eq!(y.shape(), &ys[..]);
        for (f, &v) in f32s(&y).iter().enumerate() {
            let oi = unravel(f, &ys);
            let mut ii = vec![0; shape.len()];
            for (i, &p) in perm.iter().enumerate() {
                ii[p] = oi[i];
            }
            prop_assert_eq!(v, f32s(&x)[ravel(&ii, &shape)]);
        }
        let back = run_op(Op::Permute(inv), &[y]);
        prop_assert_eq!(back, x);
    }

    /// split_heads and merge_heads are inverse, and split_heads is reshape + permute.
    #[test]
    fn split_merge_heads(
        b in 1usize..3, n in 1usize..4, h in 1usize..4, dh in 1usize..4,
        seed in any::<u64>(),
    ) {
        let x = data(&[b, n, h * dh], seed);
        let split = run_op(Op::SplitHeads { heads: h }, &[x.clone()]);
        prop_assert_eq!(split.shape(), &[b, h, n, dh][..]);
        let merged = run_op(Op::MergeHeads, &[split.clone()]);
        prop_assert_eq!(&merged, &x);
        let r = run_op(Op::Reshape(fixed(&[b, n, h, dh])), &[x.clone()]);
        let p = run_op(Op::Permute(vec![0, 2, 1, 3]), &[r]);
        prop_assert_eq!(&p, &split);
        // And merge of any [B, H, N, Dh] tensor splits back.
        let y = data(&[b, h, n, dh], seed ^ 3);
        let again = run_op(Op::SplitHeads { heads: h }, &[run_op(Op::MergeHeads, &[y.clone()])]);
        prop_assert_eq!(again, y);
    }

    /// repeat_heads: output head h is input head h / times.
    #[test]
    fn repeat_heads_interleaves(
        b in 1usize..3, hkv in 1usize..4, n in 1usize..3, dh in 1usize..4, times in 1usize..4,
        seed in any::<u64>(),
    ) {
        let x = data(&[b, hkv, n, dh], seed);
        let y = run_op(Op::RepeatHeads { times }, &[x.clone()]);
        prop_assert_eq!(y.shape(), &[b, hkv * times, n, dh][..]);
        for (f, &v) in f32s(&y).iter().enumerate() {
            let [bi, hi, ni, di] = unravel(f, y.shape())[..] else { unreachable!() };
            prop_assert_eq!(v, f32s(&x)[ravel(&[bi, hi / times, ni, di], x.shape())]);
        }
    }

    /// Softmax rows sum to 1, lie in [0, 1], and adding a constant to a row changes nothing.
    #[test]
    fn softmax_rows_sum_to_one_and_shift_invariant(
        shape in prop::collection::vec(1usize..5, 1..4),
        axis_seed in any::<usize>(),
        c in -50.0f32..50.0,
        seed in any::<u64>(),
    ) {
        let axis = axis_seed % shape.len();
        let mut rng = Gen::new(seed);
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| rng.unit() * 8.0).collect();
        let x = t(&shape, &vals);
        let xs = t(&shape, &vals.iter().map(|v| v + c).collect::<Vec<_>>());
        let y = run_op(Op::Softmax { axis }, &[x]);
        let ys = run_op(Op::Softmax { axis }, &[xs]);
        prop_assert!(f32s(&y).iter().all(|&p| (0.0..=1.0).contains(&p)));
        for (a, b) in f32s(&y).iter().zip(f32s(&ys)) {
            prop_assert!((a - b).abs() < 1e-5, "{} vs {}", a, b);
        }
        // Sum along the axis is 1 everywhere.
        let sums = run_op(Op::Reduce { kind: Reduce::Sum, axis, keep_dim: false }, &[y]);
        prop_assert!(f32s(&sums).iter().all(|&s| (s - 1.0).abs() < 1e-5));
    }

    /// cumsum's last entry is the sum; mean is sum / len; max is attained.
    #[test]
    fn reductions_agree(
        shape in prop::collection::vec(1usize..5, 1..4),
        axis_seed in any::<usize>(),
        seed in any::<u64>(),
    ) {
        let axis = axis_seed % shape.len();
        let x = data(&shape, seed);
        let red = |kind| run_op(Op::Reduce { kind, axis, keep_dim: true }, &[x.clone()]);
        let (sum, mean, max) = (red(Reduce::Sum), red(Reduce::Mean), red(Reduce::Max));
        let cs = run_op(Op::CumSum { axis }, &[x.clone()]);
        let len = shape[axis];
        let last = run_op(
            Op::Slice { axis, start: len - 1, end: Dim::Fixed(len) },
            &[cs],
        );
        prop_assert_eq!(last.shape(), sum.shape());
        for ((l, s), mn) in f32s(&last).iter().zip(f32s(&sum)).zip(f32s(&mean)) {
            prop_assert!((l - s).abs() < 1e-5);
            prop_assert!((mn * len as f32 - s).abs() < 1e-5);
        }
        // max ≥ every element along the axis: max − x ≥ 0 (broadcast back over the axis).
        let diff = run_op(Op::Binary(Binary::Sub), &[max.clone(), x.clone()]);
        prop_assert!(f32s(&diff).iter().all(|&d| d >= 0.0));
        let hits = f32s(&diff).iter().filter(|&&d| d == 0.0).count();
        prop_assert!(hits >= f32s(&max).len());
    }

    /// Rotary embeddings: equal to the explicit rotation, identity at position 0, and every
    /// rotated pair keeps its norm.
    #[test]
    fn rope_rotates_pairs(
        b in 1usize..3, h in 1usize..3, n in 1usize..5, half in 1usize..4,
        interleaved in any::<bool>(),
        theta in 2.0f32..20000.0,
        seed in any::<u64>(),
    ) {
        let d = 2 * half;
        let style = if interleaved { RopeStyle::Interleaved } else { RopeStyle::Half };
        let x = data(&[b, h, n, d], seed);
        let y = run_op(Op::Rope { theta: Scalar::new(theta), style }, &[x.clone()]);
        let (xv, yv) = (f32s(&x), f32s(&y));
        for r in 0..b * h * n {
            let pos = (r % n) as f64;
            for i in 0..half {
                let (p, q) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                let (x1, x2) = (xv[r * d + p] as f64, xv[r * d + q] as f64);
                let (y1, y2) = (yv[r * d + p] as f64, yv[r * d + q] as f64);
                let ang = pos * (theta as f64).powf(-2.0 * i as f64 / d as f64);
                prop_assert!((y1 - (x1 * ang.cos() - x2 * ang.sin())).abs() < 1e-5);
                prop_assert!((y2 - (x2 * ang.cos() + x1 * ang.sin())).abs() < 1e-5);
                prop_assert!((x1.hypot(x2) - y1.hypot(y2)).abs() < 1e-5);
                if pos == 0.0 {
                    prop_assert_eq!((x1, x2), (y1, y2));
                }
            }
        }
    }

    /// concat then slicing each part back out returns the parts.
    #[test]
    fn concat_then_slice_roundtrip(
        shape in prop::collection::vec(1usize..4, 1..4),
        axis_seed in any::<usize>(),
        extra in 1usize..4,
        seed in any::<u64>(),
    ) {
        let axis = axis_seed % shape.len();
        let a = data(&shape, seed);
        let mut sb = shape.clone();
        sb[axis] = extra;
        let b = data(&sb, seed ^ 5);
        let c = run_op(Op::Concat { axis }, &[a.clone(), b.clone()]);
        let len = shape[axis];
        let pa = run_op(Op::Slice { axis, start: 0, end: Dim::Fixed(len) }, &[c.clone()]);
        let pb = run_op(Op::Slice { axis, start: len, end: Dim::Fixed(len + extra) }, &[c]);
        prop_assert_eq!(pa, a);
        prop_assert_eq!(pb, b);
    }

    /// Causal mask: exactly the entries with j > i + (Nk − Nq) become −inf, at any batch shape.
    #[test]
    fn causal_mask_pattern(
        lead in prop::collection::vec(1usize..3, 0..3),
        nq in 1usize..5, nk in 1usize..5,
        seed in any::<u64>(),
    ) {
        let mut shape = lead.clone();
        shape.extend([nq, nk]);
        let x = data(&shape, seed);
        let y = run_op(Op::CausalMask, &[x.clone()]);
        for (f, (&xv, &yv)) in f32s(&x).iter().zip(f32s(&y)).enumerate() {
            let (i, j) = ((f / nk) % nq, f % nk);
            let masked = (j as i64) > i as i64 + nk as i64 - nq as i64;
            if masked {
                prop_assert_eq!(yv, f32::NEG_INFINITY);
            } else {
                prop_assert_eq!(yv, xv);
            }
        }
    }
}

// ---------------------------------------------------------------- random graphs

/// One random construction step: an operator kind and three raw choices.
type Step = (u8, u32, u32, u32);

const UNARIES: [Unary; 13] = [
    Unary::Neg,
    Unary::Exp,
    Unary::Sqrt,
    Unary::Rsqrt,
    Unary::Recip,
    Unary::Square,
    Unary::Tanh,
    Unary::Sigmoid,
    Unary::Relu,
    Unary::Elu,
    Unary::Gelu,
    Unary::GeluTanh,
    Unary::Silu,
];

/// Builds a graph from `steps` over inputs `x [B, N, 4]`, `y [N, 4]`, `ids [B, N]`,
/// `h [B, 2, N, 4]` and a few weights. Each step proposes an operator; proposals that shape inference refuses are
/// dropped (that is its job), everything it accepts is kept and marked as an output.
fn random_graph(steps: &[Step]) -> (Graph, Vec<NodeId>) {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(4)]))
        .unwrap();
    let y = g
        .input("y", DType::F32, Shape(vec![SEQ, Dim::Fixed(4)]))
        .unwrap();
    let ids = g.input("ids", DType::I64, Shape(vec![BATCH, SEQ])).unwrap();
    let h = g
        .input(
            "h",
            DType::F32,
            Shape(vec![BATCH, Dim::Fixed(2), SEQ, Dim::Fixed(4)]),
        )
        .unwrap();
    let mut nodes = vec![x, y, ids, h];
    for &(kind, a, b, c) in steps {
        // Half the time the newest node, so that chains of operators form.
        let pick = |k: u32, nodes: &Vec<NodeId>| {
            if k & 1 == 0 {
                nodes[nodes.len() - 1]
            } else {
                nodes[(k / 2) as usize % nodes.len()]
            }
        };
        let na = pick(a, &nodes);
        let nb = pick(b, &nodes);
        let sh = g.node(na).ty.shape.clone();
        let r = sh.rank();
        let fixed_last = if r > 0 { sh.last().fixed() } else { None };
        let ax = if r > 0 { c as usize % r } else { 0 };
        let (op, args): (Op, Vec<NodeId>) = match kind % 22 {
            0 => (Op::Unary(UNARIES[b as usize % UNARIES.len()]), vec![na]),
            1 => {
                let k = [
                    Binary::Add,
                    Binary::Sub,
                    Binary::Mul,
                    Binary::Div,
                    Binary::Max,
                ];
                (Op::Binary(k[c as usize % 5]), vec![na, nb])
            }
            2 => (Op::Scale(Scalar::new(0.5)), vec![na]),
            3 => (Op::AddScalar(Scalar::new(-1.0)), vec![na]),
            4 => (Op::MatMul, vec![na, nb]),
            5 => {
                // x · W with a fresh weight [K, 1..4]
                let Some(k) = fixed_last else { continue };
                let cols = 1 + c as usize % 4;
                let vals: Vec<f32> = (0..k * cols).map(|i| (i as f32).cos()).collect();
                let w = g.weight(
                    Weight::from_f32(format!("w{}", g.node_count()), vec![k, cols], &vals).unwrap(),
                );
                (Op::MatMul, vec![na, w])
            }
            6 => (Op::Permute(perm_from(r, c as u64)), vec![na]),
            7 => {
                // Split the last axis in two, or merge the last two.
                let mut d = sh.0.clone();
                match (fixed_last, c % 2) {
                    (Some(l), 0) if l % 2 == 0 && l > 0 => {
                        d.pop();
                        d.extend([Dim::Fixed(2), Dim::Fixed(l / 2)]);
                    }
                    _ if r >= 2 => {
                        let (p, q) = (d[r - 2], d[r - 1]);
                        d.truncate(r - 2);
                        match (p, q) {
                            (Dim::Fixed(p), Dim::Fixed(q)) => d.push(Dim::Fixed(p * q)),
                            _ => d.extend([q, p]), // a swap of the two sizes: same numel
                        }
                    }
                    _ => continue,
                }
                (Op::Reshape(Shape(d)), vec![na])
            }
            8 => {
                if r >= 5 {
                    continue;
                }
                let mut d = vec![Dim::Fixed(1 + c as usize % 2)];
                d.extend(
                    sh.0.iter()
                        .map(|&x| if x == Dim::Fixed(1) { BATCH } else { x }),
                );
                (Op::Expand(Shape(d)), vec![na])
            }
            9 => (Op::Softmax { axis: ax }, vec![na]),
            10 => (Op::CumSum { axis: ax }, vec![na]),
            11 => (
                Op::L2Normalize {
                    axis: ax,
                    eps: Scalar::new(1e-6),
                },
                vec![na],
            ),
            12 => {
                let kinds = [Reduce::Sum, Reduce::Max, Reduce::Mean];
                (
                    Op::Reduce {
                        kind: kinds[b as usize % 3],
                        axis: ax,
                        keep_dim: c % 2 == 0,
                    },
                    vec![na],
                )
            }
            13 => (
                Op::SplitHeads {
                    heads: 1 + b as usize % 2,
                },
                vec![na],
            ),
            14 => (Op::MergeHeads, vec![na]),
            15 => (
                Op::RepeatHeads {
                    times: 1 + b as usize % 3,
                },
                vec![na],
            ),
            16 => (Op::CausalMask, vec![na]),
            17 => (Op::PaddingMask, vec![na, ids]),
            18 => (
                Op::Rope {
                    theta: Scalar::new(10000.0),
                    style: if c % 2 == 0 {
                        RopeStyle::Half
                    } else {
                        RopeStyle::Interleaved
                    },
                },
                vec![na],
            ),
            19 => (Op::Concat { axis: ax }, vec![na, na]),
            20 => {
                let Some(Dim::Fixed(len)) = sh.0.get(ax).copied() else {
                    continue;
                };
                let start = b as usize % (len + 1);
                let end = start + c as usize % (len - start + 1);
                (
                    Op::Slice {
                        axis: ax,
                        start,
                        end: Dim::Fixed(end),
                    },
                    vec![na],
                )
            }
            _ => {
                // Embedding lookup of ids (or of whatever integer node was picked).
                let table = g.weight(
                    Weight::from_f32("table", vec![3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap(),
                );
                (Op::Gather, vec![table, na])
            }
        };
        if let Ok(id) = g.add(op, &args, meta()) {
            nodes.push(id);
        }
    }
    for (i, &n) in nodes.iter().enumerate() {
        g.set_output(&format!("n{i}"), n).unwrap();
    }
    (g, nodes)
}

proptest! {
    #![proptest_config(proptest_config::config(512))]

    /// For every node of a random graph that shape inference accepted, the interpreter runs
    /// and produces exactly the static shape and dtype under the run's bindings — including
    /// empty batches and sequences.
    #[test]
    fn inferred_shapes_match_interpreter(
        steps in prop::collection::vec((any::<u8>(), any::<u32>(), any::<u32>(), any::<u32>()), 1..12),
        bsz in 0usize..4,
        n in 0usize..4,
        seed in any::<u64>(),
    ) {
        let (g, nodes) = random_graph(&steps);
        let mut rng = Gen::new(seed);
        let inputs = HashMap::from([
            ("x".to_string(), rng.tensor(&[bsz, n, 4])),
            ("y".to_string(), rng.tensor(&[n, 4])),
            ("h".to_string(), rng.tensor(&[bsz, 2, n, 4])),
            (
                "ids".to_string(),
                ti(&[bsz, n], &(0..bsz * n).map(|_| (rng.next_u64() % 3) as i64).collect::<Vec<_>>()),
            ),
        ]);
        let outs = interp::run(&g, &inputs, &[])
            .map_err(|e| TestCaseError::fail(format!("run failed: {e}\n{g}")))?;
        let b = bind(bsz, n);
        for (i, &id) in nodes.iter().enumerate() {
            let ty = &g.node(id).ty;
            let v = &outs[&format!("n{i}")];
            let want = ty.shape.eval(&b).expect("all symbols bound");
            prop_assert_eq!(v.shape(), &want[..], "node %{} {}\n{}", i, g.node(id).op, g);
            prop_assert_eq!(v.dtype(), ty.dtype, "node %{} {}", i, g.node(id).op);
        }
    }
}
