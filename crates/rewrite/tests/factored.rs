//! The value-dependent `factored` rule: which weights it proves factored, which it leaves, and
//! that the rewritten graph computes what the original did.

use std::collections::HashMap;

use attnopt_ir::{interp, DType, Graph, NodeMeta, Op, Shape, Tensor, Weight, BATCH, SEQ};
use attnopt_rewrite::factored::{factor_weights, rank_one, TOLERANCE};

fn rng(seed: u64) -> attnopt_ir::rng::Rng {
    attnopt_ir::rng::Rng::new(seed)
}

/// `[d_in, S·M]` with every row `g[:, d] ⊗ p[d, :]`.
fn factored(d_in: usize, s: usize, m: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let (g, p) = (r.values(s * d_in, -1.0, 1.0), r.values(d_in * m, -1.0, 1.0));
    let mut w = vec![0f32; d_in * s * m];
    for d in 0..d_in {
        for k in 0..s {
            for j in 0..m {
                w[d * s * m + k * m + j] = g[k * d_in + d] * p[d * m + j];
            }
        }
    }
    w
}

/// `x [B, N, d_in] · W` for each weight, outputs `y0, y1, …`.
fn graph(d_in: usize, weights: Vec<Weight>) -> Graph {
    let mut g = Graph::new();
    let s = Shape(vec![BATCH, SEQ, attnopt_ir::Dim::Fixed(d_in)]);
    let x = g.input("x", DType::F32, s).unwrap();
    for (i, w) in weights.into_iter().enumerate() {
        let w = g.weight(w);
        let meta = NodeMeta {
            layer: Some(0),
            ..NodeMeta::default()
        };
        let y = g.add(Op::MatMul, &[x, w], meta).unwrap();
        g.set_output(&format!("y{i}"), y).unwrap();
    }
    g
}

fn outputs(g: &Graph, d_in: usize) -> HashMap<String, Tensor> {
    let x = Tensor::f32(vec![2, 3, d_in], rng(5).values(6 * d_in, -1.0, 1.0)).unwrap();
    interp::run(g, &HashMap::from([("x".to_string(), x)]), &[]).unwrap()
}

#[test]
fn rank_one_rows() {
    let row = factored(1, 4, 8, 1);
    let (g, p) = rank_one(&row, 4).expect("rank 1 as 4 × 8");
    for k in 0..4 {
        for j in 0..8 {
            assert!((g[k] * p[j] - row[k * 8 + j]).abs() <= 1e-6);
        }
    }
    // Not rank 1 as 8 × 4 or 2 × 16 (for generic values).
    assert!(rank_one(&row, 8).is_none());
    assert!(rank_one(&row, 2).is_none());
    // A change well above the tolerance breaks it; zeros are rank 1; NaN never is.
    let mut bent = row.clone();
    bent[13] += 100.0 * TOLERANCE * row.iter().fold(0f32, |a, x| a.max(x.abs()));
    assert!(rank_one(&bent, 4).is_none());
    assert_eq!(rank_one(&[0.0; 8], 2), Some((vec![0.0; 2], vec![0.0; 4])));
    let mut nan = row;
    nan[0] = f32::NAN;
    assert!(rank_one(&nan, 4).is_none());
}

#[test]
fn factored_weights_are_rewritten_and_keep_the_values() {
    let (d_in, s, m) = (16, 4, 8);
    let w = |name: &str, v: &[f32]| Weight::from_f32(name, vec![d_in, s * m], v).unwrap();
    let good = factored(d_in, s, m, 2);
    // Broken in row 5, which the sample (every second row) skips: the full check must see it.
    let mut unsampled = factored(d_in, s, m, 3);
    unsampled[5 * s * m + 3] += 0.5;
    let random = rng(4).values(d_in * s * m, -1.0, 1.0);
    let zeros = vec![0f32; d_in * s * m];
    let g = graph(
        d_in,
        vec![
            w("good", &good),
            w("unsampled", &unsampled),
            w("random", &random),
            w("zeros", &zeros),
        ],
    );
    let f = factor_weights(&g).unwrap();
    assert_eq!(f.by_layer.get(&0), Some(&1), "only `good` is factored");
    let names: Vec<&str> = f.graph.weights().iter().map(|w| w.name()).collect();
    assert!(names.contains(&"good.factored.gating") && !names.contains(&"good"));
    assert!(names.contains(&"unsampled") && names.contains(&"random") && names.contains(&"zeros"));
    let (a, b) = (outputs(&g, d_in), outputs(&f.graph, d_in));
    for (k, t) in &a {
        let err = t.max_abs_diff(&b[k]).unwrap();
        assert!(err <= 1e-5 * t.max_abs().max(1.0), "{k}: {err}");
    }
}

#[test]
fn only_when_fewer_bytes() {
    // 2 × 2 modules: 2 + 2 weights per row against 4 dense, no saving.
    let w = Weight::from_f32("w", vec![8, 4], &factored(8, 2, 2, 6)).unwrap();
    assert!(factor_weights(&graph(8, vec![w]))
        .unwrap()
        .by_layer
        .is_empty());
}
