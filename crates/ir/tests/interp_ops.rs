//! The reference interpreter, one operator at a time, against independently written
//! expectations: hand-computed literals, literals computed with Python/NumPy (marked where
//! used), mathematical identities and naive loops written here.

// Tests pass operands as `&[x.clone()]` throughout; `slice::from_ref` would obscure them.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use std::collections::HashMap;

use attnopt_ir::interp::{self, InterpError};
use attnopt_ir::{
    Binary, DType, Dim, Graph, NodeMeta, Op, Reduce, RopeStyle, Scalar, Shape, Tensor, Unary,
    BATCH, SEQ,
};
use common::*;

// ---------------------------------------------------------------- unary

/// Points every unary function below is evaluated at.
const XS: [f32; 6] = [-2.0, -0.5, 0.0, 0.5, 1.0, 3.0];

fn unary(u: Unary, xs: &[f32]) -> Vec<f32> {
    run_op(Op::Unary(u), &[t(&[xs.len()], xs)])
        .as_f32()
        .unwrap()
        .to_vec()
}

#[test]
fn gelu_erf_known_values() {
    // python3: 0.5*x*(1+math.erf(x/math.sqrt(2)))
    let want = [
        -0.04550026389635842,
        -0.15426876936299344,
        0.0,
        0.34573123063700656,
        0.8413447460685429,
        2.99595030590511,
    ];
    assert_close(&unary(Unary::Gelu, &XS), &want, 1e-6);
}

#[test]
fn gelu_tanh_known_values() {
    // python3: 0.5*x*(1+math.tanh(math.sqrt(2/math.pi)*(x+0.044715*x**3)))
    let want = [
        -0.04540230591222494,
        -0.15428599017485606,
        0.0,
        0.34571400982514394,
        0.8411919906082768,
        2.996362607918227,
    ];
    let got = unary(Unary::GeluTanh, &XS);
    assert_close(&got, &want, 1e-6);
    // The tanh form is an approximation of the erf form, not the same function.
    let exact = unary(Unary::Gelu, &XS);
    assert!((got[4] - exact[4]).abs() > 1e-4);
    for (a, b) in got.iter().zip(&exact) {
        assert!((a - b).abs() < 1e-3);
    }
}

#[test]
fn silu_sigmoid_elu_tanh_exp_known_values() {
    // numpy: x/(1+np.exp(-x)), 1/(1+np.exp(-x)), np.where(x>0,x,np.expm1(x)), np.tanh, np.exp
    let silu = [
        -0.2384058440442351,
        -0.1887703343990727,
        0.0,
        0.3112296656009273,
        0.7310585786300049,
        2.8577223804672998,
    ];
    let sigmoid = [
        0.11920292202211755,
        0.3775406687981454,
        0.5,
        0.6224593312018546,
        0.7310585786300049,
        0.9525741268224334,
    ];
    let elu = [-0.8646647167633873, -0.3934693402873666, 0.0, 0.5, 1.0, 3.0];
    let tanh = [
        -0.9640275800758169,
        -0.46211715726000974,
        0.0,
        0.46211715726000974,
        0.7615941559557649,
        0.9950547536867305,
    ];
    let exp = [
        0.1353352832366127,
        0.6065306597126334,
        1.0,
        1.6487212707001282,
        std::f64::consts::E,
        20.085536923187668,
    ];
    assert_close(&unary(Unary::Silu, &XS), &silu, 1e-6);
    assert_close(&unary(Unary::Sigmoid, &XS), &sigmoid, 1e-6);
    assert_close(&unary(Unary::Elu, &XS), &elu, 1e-6);
    assert_close(&unary(Unary::Tanh, &XS), &tanh, 1e-6);
    assert_close(&unary(Unary::Exp, &XS), &exp, 1e-6);
}

#[test]
fn simple_unary_by_hand() {
    assert_close32(
        &unary(Unary::Neg, &XS),
        &[2.0, 0.5, 0.0, -0.5, -1.0, -3.0],
        0.0,
    );
    assert_close32(
        &unary(Unary::Square, &XS),
        &[4.0, 0.25, 0.0, 0.25, 1.0, 9.0],
        0.0,
    );
    assert_close32(
        &unary(Unary::Relu, &XS),
        &[0.0, 0.0, 0.0, 0.5, 1.0, 3.0],
        0.0,
    );
    let pos = [0.25, 1.0, 4.0, 16.0];
    assert_close32(&unary(Unary::Sqrt, &pos), &[0.5, 1.0, 2.0, 4.0], 1e-7);
    assert_close32(&unary(Unary::Rsqrt, &pos), &[2.0, 1.0, 0.5, 0.25], 1e-7);
    assert_close32(&unary(Unary::Recip, &pos), &[4.0, 1.0, 0.25, 0.0625], 1e-7);
    // IEEE edge cases: 1/0 = inf, sqrt of a negative is NaN.
    let r = unary(Unary::Recip, &[0.0]);
    assert_eq!(r[0], f32::INFINITY);
    assert!(unary(Unary::Sqrt, &[-1.0])[0].is_nan());
}

#[test]
fn unary_identities() {
    let xs: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.2).collect();
    let neg: Vec<f32> = xs.iter().map(|x| -x).collect();
    let sig = unary(Unary::Sigmoid, &xs);
    let sig_neg = unary(Unary::Sigmoid, &neg);
    let silu = unary(Unary::Silu, &xs);
    let elu = unary(Unary::Elu, &xs);
    let tanh = unary(Unary::Tanh, &xs);
    let gelu = unary(Unary::Gelu, &xs);
    let gelu_neg = unary(Unary::Gelu, &neg);
    for k in 0..xs.len() {
        let x = xs[k];
        // sigmoid(-x) = 1 - sigmoid(x)
        assert!((sig[k] + sig_neg[k] - 1.0).abs() < 1e-6, "x={x}");
        // silu(x) = x·sigmoid(x)
        assert!((silu[k] - x * sig[k]).abs() < 1e-5, "x={x}");
        // tanh(x) = 2·sigmoid(2x) − 1
        let s2 = 1.0 / (1.0 + (-2.0 * x as f64).exp());
        assert!((tanh[k] as f64 - (2.0 * s2 - 1.0)).abs() < 1e-6, "x={x}");
        // elu is the identity on positives, in (-1, 0] on non-positives
        if x > 0.0 {
            assert_eq!(elu[k], x);
        } else {
            assert!(elu[k] <= 0.0 && elu[k] > -1.0);
        }
        // gelu(x) − gelu(−x) = x
        assert!((gelu[k] - gelu_neg[k] - x).abs() < 1e-5, "x={x}");
    }
}

#[test]
fn unary_keeps_shape() {
    let y = run_op(Op::Unary(Unary::Neg), &[iota(&[2, 3, 1])]);
    assert_eq!(y.shape(), &[2, 3, 1]);
    assert_close32(f32s(&y), &[0.0, -1.0, -2.0, -3.0, -4.0, -5.0], 0.0);
}

// ---------------------------------------------------------------- binary, scalars

#[test]
fn binary_same_shape_by_hand() {
    let a = t(&[2, 2], &[1.0, -2.0, 3.0, 8.0]);
    let b = t(&[2, 2], &[4.0, 5.0, -6.0, 2.0]);
    let bin = |k| run_op(Op::Binary(k), &[a.clone(), b.clone()]);
    assert_close32(f32s(&bin(Binary::Add)), &[5.0, 3.0, -3.0, 10.0], 0.0);
    assert_close32(f32s(&bin(Binary::Sub)), &[-3.0, -7.0, 9.0, 6.0], 0.0);
    assert_close32(f32s(&bin(Binary::Mul)), &[4.0, -10.0, -18.0, 16.0], 0.0);
    assert_close32(f32s(&bin(Binary::Div)), &[0.25, -0.4, -0.5, 4.0], 1e-7);
    assert_close32(f32s(&bin(Binary::Max)), &[4.0, 5.0, 3.0, 8.0], 0.0);
}

#[test]
fn binary_broadcasting_by_hand() {
    // [2, 3] + [3]: the row is added to each row.
    let y = run_op(
        Op::Binary(Binary::Add),
        &[iota(&[2, 3]), t(&[3], &[10.0, 20.0, 30.0])],
    );
    assert_eq!(y.shape(), &[2, 3]);
    assert_close32(f32s(&y), &[10.0, 21.0, 32.0, 13.0, 24.0, 35.0], 0.0);

    // [2, 1] * [1, 3]: outer product.
    let y = run_op(
        Op::Binary(Binary::Mul),
        &[t(&[2, 1], &[2.0, 3.0]), t(&[1, 3], &[1.0, 10.0, 100.0])],
    );
    assert_eq!(y.shape(), &[2, 3]);
    assert_close32(f32s(&y), &[2.0, 20.0, 200.0, 3.0, 30.0, 300.0], 0.0);

    // [3] - [2, 1]: left operand broadcast over rows, order preserved (a - b, not b - a).
    let y = run_op(
        Op::Binary(Binary::Sub),
        &[t(&[3], &[1.0, 2.0, 3.0]), t(&[2, 1], &[10.0, 100.0])],
    );
    assert_eq!(y.shape(), &[2, 3]);
    assert_close32(f32s(&y), &[-9.0, -8.0, -7.0, -99.0, -98.0, -97.0], 0.0);

    // Scalar-shaped [1] against [2, 2]; division order preserved.
    let y = run_op(
        Op::Binary(Binary::Div),
        &[t(&[1], &[12.0]), t(&[2, 2], &[1.0, 2.0, 3.0, 4.0])],
    );
    assert_close32(f32s(&y), &[12.0, 6.0, 4.0, 3.0], 1e-7);
}

#[test]
fn binary_broadcast_symbolic_at_run_time() {
    // x [B, N, 3] + bias [3], bound at run time to B=2, N=2.
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(3)]))
        .unwrap();
    let bias = g.input("bias", DType::F32, fixed(&[1, 1, 3])).unwrap();
    let y = g.add(Op::Binary(Binary::Add), &[x, bias], meta()).unwrap();
    assert_eq!(g.node(y).ty.shape, Shape(vec![BATCH, SEQ, Dim::Fixed(3)]));
    g.set_output("y", y).unwrap();
    let inputs = HashMap::from([
        ("x".to_string(), iota(&[2, 2, 3])),
        ("bias".to_string(), t(&[1, 1, 3], &[100.0, 200.0, 300.0])),
    ]);
    let out = &interp::run(&g, &inputs, &[]).unwrap()["y"];
    assert_eq!(out.shape(), &[2, 2, 3]);
    let want: Vec<f32> = (0..12)
        .map(|i| i as f32 + [100.0, 200.0, 300.0][i % 3])
        .collect();
    assert_close32(f32s(out), &want, 0.0);
}

#[test]
fn scale_and_add_scalar() {
    let x = t(&[2, 2], &[1.0, -2.0, 0.5, 4.0]);
    let y = run_op(Op::Scale(Scalar::new(-3.0)), &[x.clone()]);
    assert_close32(f32s(&y), &[-3.0, 6.0, -1.5, -12.0], 0.0);
    let y = run_op(Op::AddScalar(Scalar::new(0.25)), &[x]);
    assert_close32(f32s(&y), &[1.25, -1.75, 0.75, 4.25], 0.0);
    assert_eq!(y.shape(), &[2, 2]);
}

// ---------------------------------------------------------------- matmul

#[test]
fn matmul_2d_by_hand() {
    // [[1,2,3],[4,5,6]] × [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
    let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = t(&[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let y = run_op(Op::MatMul, &[a.clone(), b.clone()]);
    assert_eq!(y.shape(), &[2, 2]);
    assert_close32(f32s(&y), &[58.0, 64.0, 139.0, 154.0], 0.0);
    // Not commutative: b × a is [3, 3].
    let y = run_op(Op::MatMul, &[b, a]);
    assert_eq!(y.shape(), &[3, 3]);
    // row 0 of b·a: [7·1+8·4, 7·2+8·5, 7·3+8·6]
    assert_close32(&f32s(&y)[..3], &[39.0, 54.0, 69.0], 0.0);
}

#[test]
fn matmul_batched_by_hand() {
    // batch 0: I × [[1,2],[3,4]];  batch 1: [[0,1],[1,0]] × [[5,6],[7,8]] (row swap)
    let a = t(&[2, 2, 2], &[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
    let b = t(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let y = run_op(Op::MatMul, &[a, b]);
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_close32(f32s(&y), &[1.0, 2.0, 3.0, 4.0, 7.0, 8.0, 5.0, 6.0], 0.0);
}

/// Naive `[.., M, K] × [.., K, N]` with NumPy batch broadcasting, written independently.
fn naive_matmul(a: &Tensor, b: &Tensor) -> (Vec<usize>, Vec<f64>) {
    let (sa, sb) = (a.shape(), b.shape());
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let n = sb[sb.len() - 1];
    let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let r = ba.len().max(bb.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; r - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(ba), pad(bb));
    let batch: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let nb: usize = batch.iter().product();
    let (av, bv) = (f32s(a), f32s(b));
    let mut out = Vec::new();
    for flat in 0..nb {
        let idx = unravel(flat, &batch);
        let ia: Vec<usize> = idx
            .iter()
            .zip(&pa)
            .map(|(&i, &d)| if d == 1 { 0 } else { i })
            .collect();
        let ib: Vec<usize> = idx
            .iter()
            .zip(&pb)
            .map(|(&i, &d)| if d == 1 { 0 } else { i })
            .collect();
        let oa = ravel(&ia, &pa) * m * k;
        let ob = ravel(&ib, &pb) * k * n;
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += av[oa + i * k + p] as f64 * bv[ob + p * n + j] as f64;
                }
                out.push(s);
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (shape, out)
}

#[test]
fn matmul_broadcast_batch_dims() {
    let mut rng = Gen::new(7);
    // [2, 1, 3, 4] × [3, 4, 2] → [2, 3, 3, 2]; rank-2 × rank-3 → batch of the right.
    for (sa, sb) in [
        (vec![2, 1, 3, 4], vec![3, 4, 2]),
        (vec![3, 4], vec![2, 4, 5]),
        (vec![2, 2, 3], vec![3, 1]),
        (vec![1, 2, 3], vec![4, 1, 3, 2]),
    ] {
        let (a, b) = (rng.tensor(&sa), rng.tensor(&sb));
        let y = run_op(Op::MatMul, &[a.clone(), b.clone()]);
        let (shape, want) = naive_matmul(&a, &b);
        assert_eq!(y.shape(), &shape[..], "{sa:?} x {sb:?}");
        assert_close(f32s(&y), &want, 1e-6);
    }
}

// ---------------------------------------------------------------- permute, reshape, expand

#[test]
fn permute_by_hand() {
    let y = run_op(Op::Permute(vec![1, 0]), &[iota(&[2, 3])]);
    assert_eq!(y.shape(), &[3, 2]);
    assert_close32(f32s(&y), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0], 0.0);

    // Output axis i is input axis perm[i]: out[a, b, c] = in[b, c, a] for perm [2, 0, 1].
    let x = iota(&[2, 3, 4]);
    let y = run_op(Op::Permute(vec![2, 0, 1]), &[x.clone()]);
    assert_eq!(y.shape(), &[4, 2, 3]);
    for a in 0..4 {
        for b in 0..2 {
            for c in 0..3 {
                assert_eq!(f32s(&y)[a * 6 + b * 3 + c], f32s(&x)[b * 12 + c * 4 + a]);
            }
        }
    }
}

#[test]
fn permute_keeps_integers() {
    let y = run_op(Op::Permute(vec![1, 0]), &[ti(&[2, 2], &[1, 2, 3, 4])]);
    assert_eq!(y.as_i64().unwrap(), &[1, 3, 2, 4]);
}

#[test]
fn reshape_fixed_and_integer() {
    let y = run_op(Op::Reshape(fixed(&[3, 2])), &[iota(&[2, 3])]);
    assert_eq!(y.shape(), &[3, 2]);
    assert_eq!(f32s(&y), f32s(&iota(&[6])));
    let y = run_op(Op::Reshape(fixed(&[4])), &[ti(&[2, 2], &[5, 6, 7, 8])]);
    assert_eq!(y.as_i64().unwrap(), &[5, 6, 7, 8]);
}

#[test]
fn reshape_with_symbolic_dims_bound_at_run_time() {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(6)]))
        .unwrap();
    let target = Shape(vec![BATCH, SEQ, Dim::Fixed(2), Dim::Fixed(3)]);
    let y = g.add(Op::Reshape(target.clone()), &[x], meta()).unwrap();
    assert_eq!(g.node(y).ty.shape, target);
    // Symbols may also be reordered: [B, N, 6] → [N, B·6] is not expressible, but [N, B, 6] is.
    let z = g
        .add(
            Op::Reshape(Shape(vec![SEQ, BATCH, Dim::Fixed(6)])),
            &[x],
            meta(),
        )
        .unwrap();
    g.set_output("y", y).unwrap();
    g.set_output("z", z).unwrap();
    for (b, n) in [(1, 1), (2, 3), (3, 2)] {
        let xin = iota(&[b, n, 6]);
        let outs = interp::run(&g, &HashMap::from([("x".to_string(), xin.clone())]), &[]).unwrap();
        assert_eq!(outs["y"].shape(), &[b, n, 2, 3]);
        assert_eq!(f32s(&outs["y"]), f32s(&xin));
        assert_eq!(outs["z"].shape(), &[n, b, 6]);
        assert_eq!(f32s(&outs["z"]), f32s(&xin));
    }
}

#[test]
fn expand_by_hand() {
    let y = run_op(Op::Expand(fixed(&[2, 3])), &[t(&[1, 3], &[1.0, 2.0, 3.0])]);
    assert_close32(f32s(&y), &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0], 0.0);
    let y = run_op(Op::Expand(fixed(&[2, 3])), &[t(&[2, 1], &[7.0, 8.0])]);
    assert_close32(f32s(&y), &[7.0, 7.0, 7.0, 8.0, 8.0, 8.0], 0.0);
    // New axes on the left.
    let y = run_op(Op::Expand(fixed(&[2, 2, 2])), &[t(&[2], &[1.0, 2.0])]);
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_close32(f32s(&y), &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0], 0.0);
}

#[test]
fn expand_to_symbolic_batch() {
    // The ViT pattern: a [1, D] class token expanded to [B, 1, D].
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, Shape(vec![BATCH, Dim::Fixed(2)]))
        .unwrap();
    let cls = g.input("cls", DType::F32, fixed(&[1, 2])).unwrap();
    let e = g
        .add(
            Op::Expand(Shape(vec![BATCH, Dim::Fixed(1), Dim::Fixed(2)])),
            &[cls],
            meta(),
        )
        .unwrap();
    g.set_output("e", e).unwrap();
    let _ = x;
    let inputs = HashMap::from([
        ("x".to_string(), iota(&[3, 2])),
        ("cls".to_string(), t(&[1, 2], &[4.0, 5.0])),
    ]);
    let out = &interp::run(&g, &inputs, &[]).unwrap()["e"];
    assert_eq!(out.shape(), &[3, 1, 2]);
    assert_close32(f32s(out), &[4.0, 5.0, 4.0, 5.0, 4.0, 5.0], 0.0);
}

#[test]
fn expand_integers() {
    // Shape inference keeps the operand's dtype for expand (like permute/reshape/slice), so
    // the interpreter must be able to expand an integer tensor too.
    let y = run_op(Op::Expand(fixed(&[2, 3])), &[ti(&[1, 3], &[1, 0, 1])]);
    assert_eq!(y.as_i64().unwrap(), &[1, 0, 1, 1, 0, 1]);
}

// ---------------------------------------------------------------- heads

#[test]
fn split_heads_by_hand() {
    // x[b, n, h·Dh + d] → out[b, h, n, d]; x = 0..8 as [1, 2, 4], 2 heads of 2.
    let y = run_op(Op::SplitHeads { heads: 2 }, &[iota(&[1, 2, 4])]);
    assert_eq!(y.shape(), &[1, 2, 2, 2]);
    assert_close32(f32s(&y), &[0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0], 0.0);
    let back = run_op(Op::MergeHeads, &[y]);
    assert_eq!(back.shape(), &[1, 2, 4]);
    assert_eq!(f32s(&back), f32s(&iota(&[1, 2, 4])));
}

#[test]
fn repeat_heads_by_hand() {
    // Two kv heads [a, b] (each [N=1, Dh=2]) repeated twice in place: [a, a, b, b].
    let y = run_op(
        Op::RepeatHeads { times: 2 },
        &[t(&[1, 2, 1, 2], &[1.0, 2.0, 3.0, 4.0])],
    );
    assert_eq!(y.shape(), &[1, 4, 1, 2]);
    assert_close32(f32s(&y), &[1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0], 0.0);
}

#[test]
fn repeat_heads_output_head_h_is_input_head_h_div_times() {
    let mut rng = Gen::new(3);
    let (b, hkv, n, dh, times) = (2, 3, 2, 4, 3);
    let x = rng.tensor(&[b, hkv, n, dh]);
    let y = run_op(Op::RepeatHeads { times }, &[x.clone()]);
    assert_eq!(y.shape(), &[b, hkv * times, n, dh]);
    for bi in 0..b {
        for h in 0..hkv * times {
            for ni in 0..n {
                for d in 0..dh {
                    let o = ravel(&[bi, h, ni, d], y.shape());
                    let i = ravel(&[bi, h / times, ni, d], x.shape());
                    assert_eq!(f32s(&y)[o], f32s(&x)[i]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- softmax and masks

#[test]
fn softmax_by_hand() {
    // numpy: e = np.exp(x - x.max()); e / e.sum() for x = [1, 2, 3]
    let y = run_op(Op::Softmax { axis: 0 }, &[t(&[3], &[1.0, 2.0, 3.0])]);
    assert_close(f32s(&y), &[0.0900305732, 0.2447284711, 0.6652409558], 1e-6);
    // Huge logits do not overflow.
    let y = run_op(Op::Softmax { axis: 0 }, &[t(&[2], &[1000.0, 1000.0])]);
    assert_close32(f32s(&y), &[0.5, 0.5], 1e-7);
}

#[test]
fn softmax_masked_rows() {
    let inf = f32::NEG_INFINITY;
    // Row 0 fully masked → zeros (not NaN); row 1 partly masked → masked entries are 0.
    let x = t(&[2, 3], &[inf, inf, inf, 0.0, inf, 0.0]);
    let y = run_op(Op::Softmax { axis: 1 }, &[x]);
    assert_close32(f32s(&y), &[0.0, 0.0, 0.0, 0.5, 0.0, 0.5], 0.0);
    assert!(f32s(&y).iter().all(|v| !v.is_nan()));
}

#[test]
fn softmax_over_a_leading_axis() {
    // Softmax over axis 0 of [2, 3]: each column sums to 1; equal entries share equally.
    let x = t(&[2, 3], &[0.0, 1.0, 5.0, 0.0, 3.0, 5.0]);
    let y = run_op(Op::Softmax { axis: 0 }, &[x]);
    let v = f32s(&y);
    for c in 0..3 {
        assert!((v[c] + v[3 + c] - 1.0).abs() < 1e-6);
    }
    assert_close32(&[v[0], v[3], v[2], v[5]], &[0.5, 0.5, 0.5, 0.5], 1e-7);
    // column 1: softmax([1, 3]) = [1/(1+e²), e²/(1+e²)]
    let e2 = (2.0f64).exp();
    assert_close(&[v[1], v[4]], &[1.0 / (1.0 + e2), e2 / (1.0 + e2)], 1e-6);
}

fn mask_pattern(y: &Tensor) -> Vec<u8> {
    f32s(y)
        .iter()
        .map(|&v| if v == f32::NEG_INFINITY { 0 } else { 1 })
        .collect()
}

#[test]
fn causal_mask_square() {
    let y = run_op(Op::CausalMask, &[Tensor::zeros(vec![3, 3])]);
    assert_eq!(mask_pattern(&y), [1, 0, 0, 1, 1, 0, 1, 1, 1]);
    // Kept entries keep their values.
    let y = run_op(Op::CausalMask, &[iota(&[2, 2])]);
    assert_eq!(f32s(&y)[0], 0.0);
    assert_eq!(f32s(&y)[2], 2.0);
    assert_eq!(f32s(&y)[3], 3.0);
}

#[test]
fn causal_mask_fewer_queries_than_keys() {
    // Nq = 2 queries are the last 2 of Nk = 4 keys: key j is masked for query i iff j > i + 2.
    let y = run_op(Op::CausalMask, &[Tensor::zeros(vec![2, 4])]);
    assert_eq!(mask_pattern(&y), [1, 1, 1, 0, 1, 1, 1, 1]);
    // Nq = 1: the single (last) query sees every key.
    let y = run_op(Op::CausalMask, &[Tensor::zeros(vec![1, 3])]);
    assert_eq!(mask_pattern(&y), [1, 1, 1]);
}

#[test]
fn causal_mask_more_queries_than_keys() {
    // Nq = 3, Nk = 2: masked iff j > i − 1, so query 0 sees nothing.
    let y = run_op(Op::CausalMask, &[Tensor::zeros(vec![3, 2])]);
    assert_eq!(mask_pattern(&y), [0, 0, 1, 0, 1, 1]);
}

#[test]
fn causal_mask_batched_repeats_pattern() {
    let y = run_op(Op::CausalMask, &[Tensor::zeros(vec![2, 3, 2, 2])]);
    assert_eq!(y.shape(), &[2, 3, 2, 2]);
    let p = mask_pattern(&y);
    for chunk in p.chunks(4) {
        assert_eq!(chunk, [1, 0, 1, 1]);
    }
}

#[test]
fn tril_zeroes_the_future() {
    // Entries kept by the causal mask keep their values; the rest become 0 (not -inf).
    let y = run_op(Op::Tril, &[iota(&[3, 3])]);
    assert_eq!(f32s(&y), [0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 6.0, 7.0, 8.0]);
    // Nq = 2 of Nk = 3 keys: query 0 sees keys 0..=1.
    let y = run_op(Op::Tril, &[iota(&[2, 3])]);
    assert_eq!(f32s(&y), [0.0, 1.0, 0.0, 3.0, 4.0, 5.0]);
}

#[test]
fn unsqueeze_and_squeeze_move_no_data() {
    let x = iota(&[2, 3]);
    let y = run_op(Op::Unsqueeze { axis: 1 }, &[x.clone()]);
    assert_eq!(y.shape(), &[2, 1, 3]);
    assert_eq!(f32s(&y), f32s(&x));
    let y = run_op(Op::Unsqueeze { axis: 2 }, &[x.clone()]);
    assert_eq!(y.shape(), &[2, 3, 1]);
    let z = run_op(Op::Squeeze { axis: 2 }, &[y]);
    assert_eq!(z, x);
    // Integer tensors too (masks).
    let m = run_op(Op::Unsqueeze { axis: 2 }, &[ti(&[1, 2], &[1, 0])]);
    assert_eq!(m.shape(), &[1, 2, 1]);
    assert_eq!(m.as_i64().unwrap(), [1, 0]);
}

#[test]
fn squeeze_of_a_wide_axis_is_refused() {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, Shape::fixed(&[2, 3])).unwrap();
    let e = g
        .add(Op::Squeeze { axis: 1 }, &[x], NodeMeta::default())
        .unwrap_err();
    assert!(e.to_string().contains("axis 1 has size 3, not 1"), "{e}");
    let e = g
        .add(Op::Unsqueeze { axis: 3 }, &[x], NodeMeta::default())
        .unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}

#[test]
fn cast_between_ids_and_floats() {
    let y = run_op(Op::Cast(DType::F32), &[ti(&[3], &[0, 1, -7])]);
    assert_eq!(f32s(&y), [0.0, 1.0, -7.0]);
    let y = run_op(Op::Cast(DType::I64), &[t(&[3], &[1.9, -1.9, 0.0])]);
    assert_eq!(y.as_i64().unwrap(), [1, -1, 0]);
    // Casting to the dtype a value already has is the identity.
    let y = run_op(Op::Cast(DType::BF16), &[t(&[2], &[0.5, 2.0])]);
    assert_eq!(f32s(&y), [0.5, 2.0]);
}

#[test]
fn padding_mask_by_hand() {
    // scores [B=2, H=2, Nq=1, Nk=3]; mask rows [1,1,0] and [0,1,1].
    let y = run_op(
        Op::PaddingMask,
        &[iota(&[2, 2, 1, 3]), ti(&[2, 3], &[1, 1, 0, 0, 1, 1])],
    );
    assert_eq!(mask_pattern(&y), [1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1]);
    assert_eq!(f32s(&y)[4], 4.0);
    // A mask with batch 1 applies to every batch; any non-zero keeps.
    let y = run_op(
        Op::PaddingMask,
        &[Tensor::zeros(vec![2, 1, 2, 3]), ti(&[1, 3], &[0, 2, 1])],
    );
    assert_eq!(mask_pattern(&y), [0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1]);
}

// ---------------------------------------------------------------- reductions, cumsum, norms

#[test]
fn reductions_by_hand() {
    // x = [[1, 5, 3], [4, 2, 6]]
    let x = t(&[2, 3], &[1.0, 5.0, 3.0, 4.0, 2.0, 6.0]);
    let red = |kind, axis, keep_dim| {
        run_op(
            Op::Reduce {
                kind,
                axis,
                keep_dim,
            },
            &[x.clone()],
        )
    };
    let y = red(Reduce::Sum, 0, false);
    assert_eq!(y.shape(), &[3]);
    assert_close32(f32s(&y), &[5.0, 7.0, 9.0], 0.0);
    let y = red(Reduce::Sum, 1, true);
    assert_eq!(y.shape(), &[2, 1]);
    assert_close32(f32s(&y), &[9.0, 12.0], 0.0);
    let y = red(Reduce::Mean, 1, false);
    assert_eq!(y.shape(), &[2]);
    assert_close32(f32s(&y), &[3.0, 4.0], 1e-7);
    let y = red(Reduce::Max, 0, true);
    assert_eq!(y.shape(), &[1, 3]);
    assert_close32(f32s(&y), &[4.0, 5.0, 6.0], 0.0);
    let y = red(Reduce::Max, 1, false);
    assert_close32(f32s(&y), &[5.0, 6.0], 0.0);
    // Max of negatives is not clamped at zero.
    let y = run_op(
        Op::Reduce {
            kind: Reduce::Max,
            axis: 0,
            keep_dim: false,
        },
        &[t(&[2], &[-3.0, -2.0])],
    );
    assert_close32(f32s(&y), &[-2.0], 0.0);
}

#[test]
fn reduce_middle_axis_matches_loop() {
    let mut rng = Gen::new(11);
    let x = rng.tensor(&[2, 3, 4]);
    let y = run_op(
        Op::Reduce {
            kind: Reduce::Sum,
            axis: 1,
            keep_dim: false,
        },
        &[x.clone()],
    );
    assert_eq!(y.shape(), &[2, 4]);
    let mut want = vec![0f64; 8];
    for a in 0..2 {
        for b in 0..3 {
            for c in 0..4 {
                want[a * 4 + c] += f32s(&x)[a * 12 + b * 4 + c] as f64;
            }
        }
    }
    assert_close(f32s(&y), &want, 1e-6);
}

#[test]
fn cumsum_by_hand() {
    let x = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let y = run_op(Op::CumSum { axis: 1 }, &[x.clone()]);
    assert_close32(f32s(&y), &[1.0, 3.0, 6.0, 4.0, 9.0, 15.0], 0.0);
    let y = run_op(Op::CumSum { axis: 0 }, &[x]);
    assert_close32(f32s(&y), &[1.0, 2.0, 3.0, 5.0, 7.0, 9.0], 0.0);
}

#[test]
fn l2_normalize_by_hand() {
    let eps = Scalar::new(1e-12);
    let y = run_op(
        Op::L2Normalize { axis: 1, eps },
        &[t(&[2, 2], &[3.0, 4.0, 0.0, -2.0])],
    );
    assert_close32(f32s(&y), &[0.6, 0.8, 0.0, -1.0], 1e-7);
    // Over axis 0: columns [3, 4] and [0, 0] (the zero column stays zero, no NaN).
    let y = run_op(
        Op::L2Normalize { axis: 0, eps },
        &[t(&[2, 2], &[3.0, 0.0, 4.0, 0.0])],
    );
    assert_close32(f32s(&y), &[0.6, 0.0, 0.8, 0.0], 1e-7);
    // The norm is clamped below by eps: ‖[0.001, 0]‖ = 0.001 < 1 → divided by 1.
    let y = run_op(
        Op::L2Normalize {
            axis: 0,
            eps: Scalar::new(1.0),
        },
        &[t(&[2], &[0.001, 0.0])],
    );
    assert_close32(f32s(&y), &[0.001, 0.0], 1e-7);
}

#[test]
fn layer_norm_by_hand() {
    // numpy: (x - x.mean())/np.sqrt(x.var() + 1e-5)*g + b
    let x = t(&[1, 4], &[1.0, 2.0, 3.0, 4.0]);
    let g = t(&[4], &[1.0, 2.0, 0.5, 1.0]);
    let b = t(&[4], &[0.0, 0.0, 1.0, -1.0]);
    let y = run_op(
        Op::LayerNorm {
            eps: Scalar::new(1e-5),
        },
        &[x, g, b],
    );
    assert_close(
        f32s(&y),
        &[-1.34163542, -0.8944236133, 1.2236059033, 0.34163542],
        1e-6,
    );
}

#[test]
fn layer_norm_unit_affine_gives_zero_mean_unit_variance() {
    let mut rng = Gen::new(5);
    let x = rng.tensor(&[3, 8]);
    let y = run_op(
        Op::LayerNorm {
            eps: Scalar::new(0.0),
        },
        &[x, t(&[8], &[1.0; 8]), t(&[8], &[0.0; 8])],
    );
    for row in f32s(&y).chunks(8) {
        let mean: f64 = row.iter().map(|&v| v as f64).sum::<f64>() / 8.0;
        let var: f64 = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 8.0;
        assert!(mean.abs() < 1e-6, "mean {mean}");
        assert!((var - 1.0).abs() < 1e-5, "var {var}");
    }
}

#[test]
fn rms_norm_by_hand() {
    // numpy: x/np.sqrt((x*x).mean() + 1e-6)*g
    let y = run_op(
        Op::RmsNorm {
            eps: Scalar::new(1e-6),
        },
        &[
            t(&[1, 1, 4], &[1.0, 2.0, 3.0, 4.0]),
            t(&[4], &[1.0, 1.0, 2.0, 1.0]),
        ],
    );
    assert_eq!(y.shape(), &[1, 1, 4]);
    assert_close(
        f32s(&y),
        &[0.3651483473, 0.7302966947, 2.190890084, 1.4605933893],
        1e-6,
    );
}

// ---------------------------------------------------------------- gather

#[test]
fn gather_by_hand() {
    // table rows: [0, 1], [10, 11], [20, 21]
    let table = t(&[3, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
    let y = run_op(Op::Gather, &[table, ti(&[2, 2], &[2, 0, 1, 1])]);
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_close32(
        f32s(&y),
        &[20.0, 21.0, 0.0, 1.0, 10.0, 11.0, 10.0, 11.0],
        0.0,
    );
}

#[test]
fn gather_out_of_range_ids_are_runtime_errors() {
    let table = t(&[3, 2], &[0.0; 6]);
    for bad in [3, 100, -1, i64::MIN, i64::MAX] {
        match try_run_op(Op::Gather, &[table.clone(), ti(&[1, 2], &[0, bad])]) {
            Err(InterpError::Runtime { op, msg, .. }) => {
                assert!(op.starts_with("gather"), "{op}");
                assert!(msg.contains(&bad.to_string()), "{msg}");
            }
            other => panic!("id {bad}: expected a runtime error, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- rope

/// Independent rotary embedding: position t rotates pair (p, q) by t·theta^(−2i/d).
fn naive_rope(x: &Tensor, theta: f64, style: RopeStyle) -> Vec<f64> {
    let s = x.shape();
    let (n, d) = (s[2], s[3]);
    let xv = f32s(x);
    let mut out: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
    for (r, row) in xv.chunks(d).enumerate() {
        let pos = (r % n) as f64;
        for i in 0..d / 2 {
            let ang = pos / theta.powf(2.0 * i as f64 / d as f64);
            let (p, q) = match style {
                RopeStyle::Half => (i, i + d / 2),
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            };
            // [x_p', x_q'] = [[cos, -sin], [sin, cos]] · [x_p, x_q]
            out[r * d + p] = ang.cos() * row[p] as f64 - ang.sin() * row[q] as f64;
            out[r * d + q] = ang.sin() * row[p] as f64 + ang.cos() * row[q] as f64;
        }
    }
    out
}

#[test]
fn rope_known_values() {
    // Rows at positions 0, 1, 2 of [1, 1, 3, 4]; theta = 100 so frequencies are 1 and 0.1.
    // Literals computed with python3/numpy: inv = 100.0**(-np.arange(0, 4, 2)/4), then the
    // half (x[:2], x[2:]) or interleaved (x[0::2], x[1::2]) rotation of [5, 6, 7, 8] by t·inv.
    let x = t(
        &[1, 1, 3, 4],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 5.0, 6.0, 7.0, 8.0],
    );
    let theta = Scalar::new(100.0);
    let half = run_op(
        Op::Rope {
            theta,
            style: RopeStyle::Half,
        },
        &[x.clone()],
    );
    assert_close(
        f32s(&half),
        &[
            1.0,
            2.0,
            3.0,
            4.0,
            -3.1887853643,
            5.1713576585,
            7.9894710651,
            8.5590338221,
            -8.4458161705,
            4.2910448207,
            1.6334592783,
            9.0325486075,
        ],
        1e-6,
    );
    let inter = run_op(
        Op::Rope {
            theta,
            style: RopeStyle::Interleaved,
        },
        &[x],
    );
    assert_close(
        f32s(&inter),
        &[
            1.0,
            2.0,
            3.0,
            4.0,
            -2.3473143795,
            7.4491687592,
            6.1663618238,
            8.6588672388,
            -7.5365187437,
            2.0496061148,
            5.2711113985,
            9.2312179383,
        ],
        1e-6,
    );
}

#[test]
fn rope_matches_rotation_formula_and_preserves_pair_norms() {
    let mut rng = Gen::new(9);
    let x = rng.tensor(&[2, 3, 5, 6]);
    for style in [RopeStyle::Half, RopeStyle::Interleaved] {
        let y = run_op(
            Op::Rope {
                theta: Scalar::new(10000.0),
                style,
            },
            &[x.clone()],
        );
        assert_close(f32s(&y), &naive_rope(&x, 10000.0, style), 1e-5);
        let (xv, yv) = (f32s(&x), f32s(&y));
        for r in 0..xv.len() / 6 {
            // position 0 (every 5th row) is the identity
            if r % 5 == 0 {
                assert_eq!(&xv[r * 6..r * 6 + 6], &yv[r * 6..r * 6 + 6]);
            }
            for i in 0..3 {
                let (p, q) = match style {
                    RopeStyle::Half => (i, i + 3),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let nx = (xv[r * 6 + p] as f64).hypot(xv[r * 6 + q] as f64);
                let ny = (yv[r * 6 + p] as f64).hypot(yv[r * 6 + q] as f64);
                assert!((nx - ny).abs() < 1e-6, "row {r} pair {i}: {nx} vs {ny}");
            }
        }
    }
}

// ---------------------------------------------------------------- concat, slice

#[test]
fn concat_by_hand() {
    let a = t(&[2, 1], &[1.0, 2.0]);
    let b = t(&[2, 2], &[3.0, 4.0, 5.0, 6.0]);
    let y = run_op(Op::Concat { axis: 1 }, &[a.clone(), b.clone(), a.clone()]);
    assert_eq!(y.shape(), &[2, 4]);
    assert_close32(f32s(&y), &[1.0, 3.0, 4.0, 1.0, 2.0, 5.0, 6.0, 2.0], 0.0);
    let y = run_op(
        Op::Concat { axis: 0 },
        &[b.clone(), t(&[1, 2], &[7.0, 8.0])],
    );
    assert_eq!(y.shape(), &[3, 2]);
    assert_close32(f32s(&y), &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 0.0);
    // One operand: identity.
    let y = run_op(Op::Concat { axis: 0 }, &[b.clone()]);
    assert_eq!(f32s(&y), f32s(&b));
}

#[test]
fn slice_fixed_by_hand() {
    let y = run_op(
        Op::Slice {
            axis: 1,
            start: 1,
            end: Dim::Fixed(3),
        },
        &[iota(&[2, 4])],
    );
    assert_eq!(y.shape(), &[2, 2]);
    assert_close32(f32s(&y), &[1.0, 2.0, 5.0, 6.0], 0.0);
    let y = run_op(
        Op::Slice {
            axis: 0,
            start: 1,
            end: Dim::Fixed(2),
        },
        &[ti(&[3, 2], &[1, 2, 3, 4, 5, 6])],
    );
    assert_eq!(y.as_i64().unwrap(), &[3, 4]);
    // Empty slice.
    let y = run_op(
        Op::Slice {
            axis: 1,
            start: 2,
            end: Dim::Fixed(2),
        },
        &[iota(&[2, 4])],
    );
    assert_eq!(y.shape(), &[2, 0]);
}

/// ids [B, N] and a position table [4, 2] sliced to rows 0..N.
fn positions_graph() -> Graph {
    let mut b = attnopt_ir::builder::Builder::new();
    b.graph
        .input("input_ids", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let w = attnopt_ir::Weight::from_f32(
        "pos",
        vec![4, 2],
        &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0],
    )
    .unwrap();
    let table = b.graph.weight(w);
    let p = b.positions(table).unwrap();
    assert_eq!(b.graph.node(p).ty.shape, Shape(vec![SEQ, Dim::Fixed(2)]));
    b.graph.set_output("pos", p).unwrap();
    b.finish()
}

#[test]
fn slice_symbolic_end_within_table() {
    let g = positions_graph();
    let ids = HashMap::from([("input_ids".to_string(), ti(&[1, 3], &[0, 0, 0]))]);
    let out = &interp::run(&g, &ids, &[]).unwrap()["pos"];
    assert_eq!(out.shape(), &[3, 2]);
    assert_close32(f32s(out), &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0], 0.0);
}

#[test]
fn slice_symbolic_end_beyond_table_is_a_clean_error() {
    let g = positions_graph();
    let ids = HashMap::from([("input_ids".to_string(), ti(&[1, 5], &[0; 5]))]);
    match interp::run(&g, &ids, &[]) {
        Err(InterpError::Runtime { op, msg, .. }) => {
            assert!(op.starts_with("slice"), "{op}");
            assert!(msg.contains("0..5"), "{msg}");
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- zero-length sequences

#[test]
fn empty_sequence_does_not_panic() {
    // N = 0 is legal user data ([1, 0] input ids); every operator must cope with empty tensors.
    let x0 = Tensor::zeros(vec![1, 2, 0, 4]);
    for op in [
        Op::RepeatHeads { times: 2 },
        Op::Rope {
            theta: Scalar::new(10000.0),
            style: RopeStyle::Half,
        },
        Op::Softmax { axis: 3 },
        Op::CausalMask,
        Op::MergeHeads,
        Op::CumSum { axis: 2 },
    ] {
        let y = run_op(op.clone(), &[x0.clone()]);
        assert_eq!(y.numel(), 0, "{op}");
    }
    // Shape inference accepts an (even) head dim of 0 for rope and repeat_heads too.
    let empty_heads = Tensor::zeros(vec![1, 2, 3, 0]);
    for op in [
        Op::RepeatHeads { times: 2 },
        Op::Rope {
            theta: Scalar::new(10000.0),
            style: RopeStyle::Interleaved,
        },
    ] {
        assert_eq!(run_op(op, &[empty_heads.clone()]).numel(), 0);
    }
    let y = run_op(Op::SplitHeads { heads: 2 }, &[Tensor::zeros(vec![1, 0, 4])]);
    assert_eq!(y.shape(), &[1, 2, 0, 2]);
    let y = run_op(Op::Gather, &[t(&[2, 3], &[0.0; 6]), ti(&[1, 0], &[])]);
    assert_eq!(y.shape(), &[1, 0, 3]);
}
