//! The sparse layers' operators (`conv_windows`, `block_onehot`) and building blocks
//! (`factored_dense`, `local_conv`, `sparse_ff`) against hand-computed values and naive loops
//! written here from trax's einsums (docs/SPARSE.md), independently of the interpreter's code.

mod common;

use attnopt_ir::builder::Builder;
use attnopt_ir::interp;
use attnopt_ir::sparse::{LocalConv, SparseFf};
use attnopt_ir::{DType, NodeId, Op, Role, Shape, Tensor, BATCH, SEQ};
use common::*;

#[test]
fn conv_windows_by_hand() {
    // x [1, 3 tokens, 3 modules, 1 channel] = 0..9; windows of 2 tokens × 3 modules.
    let y = run_op(
        Op::ConvWindows {
            length: 2,
            width: 3,
        },
        &[iota(&[1, 3, 3, 1])],
    );
    assert_eq!(y.shape(), &[1, 3, 3, 6]);
    // Token 0 has no previous token (first three zero); module 0 has no left neighbour.
    let t0 = [
        [0., 0., 0., 0., 0., 1.],
        [0., 0., 0., 0., 1., 2.],
        [0., 0., 0., 1., 2., 0.],
    ];
    let t2 = [
        [0., 3., 4., 0., 6., 7.],
        [3., 4., 5., 6., 7., 8.],
        [4., 5., 0., 7., 8., 0.],
    ];
    let v = f32s(&y);
    for s in 0..3 {
        assert_eq!(&v[s * 6..s * 6 + 6], &t0[s], "token 0, module {s}");
        assert_eq!(
            &v[(6 + s) * 6..(6 + s) * 6 + 6],
            &t2[s],
            "token 2, module {s}"
        );
    }
}

#[test]
fn block_onehot_by_hand() {
    let x = t(
        &[2, 6],
        &[
            1.0,
            3.0,
            3.0,
            -1.0,
            f32::NAN,
            -2.0, // ties: first; NaN never wins
            f32::NAN,
            0.5,
            0.0,
            5.0,
            5.0,
            5.0,
        ],
    );
    let y = run_op(Op::BlockOneHot { block: 3 }, &[x]);
    assert_eq!(f32s(&y), &[0., 1., 0., 1., 0., 0., 0., 1., 0., 1., 0., 0.]);
}

#[test]
fn new_ops_refuse_bad_shapes() {
    let cw = |length, width| Op::ConvWindows { length, width };
    shape_err(cw(3, 2), &[f(fixed(&[1, 4, 4, 8]))]);
    shape_err(cw(0, 3), &[f(fixed(&[1, 4, 4, 8]))]);
    shape_err(cw(3, 3), &[f(fixed(&[4, 4, 8]))]);
    shape_err(cw(3, 3), &[i(fixed(&[1, 4, 4, 8]))]);
    shape_err(cw(usize::MAX, 3), &[f(fixed(&[1, 4, 4, 8]))]);
    let ok = shape_ok(
        cw(3, 3),
        &[f(Shape(vec![
            BATCH,
            SEQ,
            attnopt_ir::Dim::Fixed(4),
            attnopt_ir::Dim::Fixed(8),
        ]))],
    );
    assert_eq!(ok.shape.0[3], attnopt_ir::Dim::Fixed(72));
    shape_err(Op::BlockOneHot { block: 4 }, &[f(fixed(&[2, 6]))]);
    shape_err(Op::BlockOneHot { block: 0 }, &[f(fixed(&[2, 6]))]);
    shape_ok(Op::BlockOneHot { block: 3 }, &[f(fixed(&[2, 6]))]);
}

fn rand(g: &mut Gen, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    t(shape, &(0..n).map(|_| g.unit()).collect::<Vec<_>>())
}

/// Runs a builder-made graph whose inputs are `args` (named `a0, a1, …`; the first as
/// `[B, N, ..]`).
fn run_built(args: &[Tensor], build: impl FnOnce(&mut Builder, &[NodeId]) -> NodeId) -> Tensor {
    let mut bl = Builder::new();
    let ids: Vec<NodeId> = args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let shape = if i == 0 {
                let mut s = vec![BATCH, SEQ];
                s.extend(a.shape()[2..].iter().map(|&d| attnopt_ir::Dim::Fixed(d)));
                Shape(s)
            } else {
                Shape::fixed(a.shape())
            };
            bl.graph.input(&format!("a{i}"), DType::F32, shape).unwrap()
        })
        .collect();
    let y = build(&mut bl, &ids);
    bl.graph.set_output("y", y).unwrap();
    let g = bl.finish();
    let mut outs = interp::run(&g, &named_inputs(args), &[]).unwrap();
    outs.remove("y").unwrap()
}

/// trax's `FactoredDense` then `LocallyConvDense`, as loops over explicitly padded arrays
/// (pad, then a VALID cross-correlation with an HWIO kernel).
#[test]
fn factored_then_local_conv_match_trax_loops() {
    let mut g = Gen::new(7);
    let (nb, nt, d, s, m, l, k) = (2, 5, 12, 3, 4, 3, 3);
    let x = rand(&mut g, &[nb, nt, d]);
    let gate = rand(&mut g, &[s, d]);
    let proj = rand(&mut g, &[d, m]);
    let bias = rand(&mut g, &[d]);
    let kern = rand(&mut g, &[l, k, m, m]);
    let kb = rand(&mut g, &[m]);
    let got = run_built(
        &[
            x.clone(),
            gate.clone(),
            proj.clone(),
            bias.clone(),
            kern.clone(),
            kb.clone(),
        ],
        |b, a| {
            let u = b
                .factored_dense(a[0], a[1], a[2], a[3], (s, m), Role::QkvProj)
                .unwrap();
            let c = LocalConv {
                kernel: a[4],
                bias: a[5],
                length: l,
                width: k,
            };
            let y = b.local_conv(u, &c, (m, m), Role::QProj).unwrap();
            b.merge_modules(y, d, Role::QProj).unwrap()
        },
    );
    let (x, gate, proj, bias, kern, kb) = (
        f32s(&x),
        f32s(&gate),
        f32s(&proj),
        f32s(&bias),
        f32s(&kern),
        f32s(&kb),
    );
    // u = einsum('...d,nd,dm->...nm') + bias, in f64.
    let mut u = vec![0f64; nb * nt * s * m];
    for bt in 0..nb * nt {
        for si in 0..s {
            for mi in 0..m {
                let mut acc = 0f64;
                for di in 0..d {
                    acc +=
                        x[bt * d + di] as f64 * gate[si * d + di] as f64 * proj[di * m + mi] as f64;
                }
                u[(bt * s + si) * m + mi] = acc + bias[si * m + mi] as f64;
            }
        }
    }
    // Pad tokens by l−1 at the front, modules by (k−1)/2 both sides.
    let (pt, ps) = (nt + l - 1, s + k - 1);
    let mut up = vec![0f64; nb * pt * ps * m];
    for bi in 0..nb {
        for ti in 0..nt {
            for si in 0..s {
                for mi in 0..m {
                    up[((bi * pt + ti + l - 1) * ps + si + (k - 1) / 2) * m + mi] =
                        u[((bi * nt + ti) * s + si) * m + mi];
                }
            }
        }
    }
    let mut want = vec![0f64; nb * nt * d];
    for bi in 0..nb {
        for ti in 0..nt {
            for si in 0..s {
                for o in 0..m {
                    let mut acc = kb[o] as f64;
                    for a in 0..l {
                        for c in 0..k {
                            for mi in 0..m {
                                acc += up[((bi * pt + ti + a) * ps + si + c) * m + mi]
                                    * kern[((a * k + c) * m + mi) * m + o] as f64;
                            }
                        }
                    }
                    want[(bi * nt + ti) * d + si * m + o] = acc;
                }
            }
        }
    }
    assert_close(f32s(&got), &want, 1e-5);
}

/// trax's `SparseFF` in eval mode, as loops: `'bd,dl,lxy->bxy'` + mb, argmax over y,
/// `'bd,dxy->bxy'` masked, relu, `'bxy,yxd->bd'` + b2.
#[test]
fn sparse_ff_matches_trax_loops() {
    let mut g = Gen::new(11);
    let (nb, nt, d, lr, xb, ny) = (1, 4, 8, 3, 5, 4);
    let x = rand(&mut g, &[nb, nt, d]);
    let m1 = rand(&mut g, &[d, lr]);
    let m2 = rand(&mut g, &[lr, xb, ny]);
    let mb = rand(&mut g, &[xb, ny]);
    let w1 = rand(&mut g, &[d, xb, ny]);
    let w2 = rand(&mut g, &[ny, xb, d]);
    let b2 = rand(&mut g, &[d]);
    let args = [x, m1, m2, mb, w1, w2, b2];
    let got = run_built(&args, |b, a| {
        let f = SparseFf {
            m1: a[1],
            m2: a[2],
            mb: a[3],
            w1: a[4],
            w2: a[5],
            b2: Some(a[6]),
            b1: None,
            act: attnopt_ir::Unary::Relu,
            block: ny,
            units: xb * ny,
            lowrank: lr,
        };
        b.sparse_ff(a[0], &f, d).unwrap()
    });
    let v: Vec<&[f32]> = args.iter().map(f32s).collect();
    let [x, m1, m2, mb, w1, w2, b2] = v[..] else {
        unreachable!()
    };
    let mut want = vec![0f64; nb * nt * d];
    for r in 0..nb * nt {
        let row = &x[r * d..(r + 1) * d];
        let low: Vec<f64> = (0..lr)
            .map(|l| (0..d).map(|i| row[i] as f64 * m1[i * lr + l] as f64).sum())
            .collect();
        for xi in 0..xb {
            let logit = |y: usize| {
                (0..lr)
                    .map(|l| low[l] * m2[(l * xb + xi) * ny + y] as f64)
                    .sum::<f64>()
                    + mb[xi * ny + y] as f64
            };
            let best = (0..ny).fold(0, |b, y| if logit(y) > logit(b) { y } else { b });
            let mid: f64 = (0..d)
                .map(|i| row[i] as f64 * w1[(i * xb + xi) * ny + best] as f64)
                .sum();
            let h = mid.max(0.0);
            for o in 0..d {
                want[r * d + o] += h * w2[(best * xb + xi) * d + o] as f64;
            }
        }
        for o in 0..d {
            want[r * d + o] += b2[o] as f64;
        }
    }
    assert_close(f32s(&got), &want, 1e-5);
}
