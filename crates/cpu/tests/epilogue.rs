//! Epilogues run inside products (oneDNN post-ops) against the unfused meaning: the product
//! followed by the epilogue's row program (`RowProgram::eval_reference`), and, end to end, the
//! executor against the interpreter with post-ops on and off and with `gemm` (which fuses
//! nothing, so its epilogues run as JIT passes). Odd shapes, every epilogue kind.
//!
//! oneDNN is optional: without `libdnnl.so.2` its checks print why they skip and pass.

use std::collections::HashMap;

use attnopt_cpu::matmul::{
    Activation, Epilogue, EpilogueKind, GemmMatMul, MatMul, MatMulError, MatMut, MatRef,
    OneDnnMatMul,
};
use attnopt_cpu::CpuModel;
use attnopt_ir::builder::{Builder, WeightLayout};
use attnopt_ir::{interp, DType, Dim, Role, Shape, Tensor, Unary, Weight, BATCH, SEQ};
use attnopt_lower::row::{BinaryOp, Expr, InputKind, RowProgram, UnaryOp};

/// The project's seeded generator (`ir::rng`), values in [-scale, scale).
struct Rng(attnopt_ir::rng::Rng);
impl Rng {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        self.0.values(n, -scale, scale)
    }
}

const ACTIVATIONS: [(Activation, UnaryOp, Unary); 6] = [
    (Activation::GeluErf, UnaryOp::Gelu, Unary::Gelu),
    (Activation::GeluTanh, UnaryOp::GeluTanh, Unary::GeluTanh),
    (Activation::Relu, UnaryOp::Relu, Unary::Relu),
    (Activation::Silu, UnaryOp::Silu, Unary::Silu),
    (Activation::Sigmoid, UnaryOp::Sigmoid, Unary::Sigmoid),
    (Activation::Tanh, UnaryOp::Tanh, Unary::Tanh),
];

/// Every epilogue kind: bias / activation / residual, each on or off (not all off).
fn kinds() -> Vec<(bool, Option<usize>, bool)> {
    let mut v = Vec::new();
    for bias in [false, true] {
        for act in std::iter::once(None).chain((0..ACTIVATIONS.len()).map(Some)) {
            for residual in [false, true] {
                if bias || act.is_some() || residual {
                    v.push((bias, act, residual));
                }
            }
        }
    }
    v
}

/// The epilogue's row program over inputs [product, bias, residual].
fn program(bias: bool, act: Option<UnaryOp>, residual: bool) -> RowProgram {
    let mut e = Expr::input(0);
    if bias {
        e = Expr::bin(BinaryOp::Add, e, Expr::input(1));
    }
    if let Some(op) = act {
        e = Expr::un(op, e);
    }
    if residual {
        e = Expr::bin(BinaryOp::Add, e, Expr::input(2));
    }
    RowProgram::elementwise(vec![InputKind::Rows, InputKind::Vector, InputKind::Rows], e)
}

fn onednn() -> Option<OneDnnMatMul> {
    match OneDnnMatMul::load(2) {
        Ok(m) => Some(m),
        Err(e) => {
            println!("skipping the oneDNN checks: {e}");
            None
        }
    }
}

#[test]
fn onednn_post_ops_match_product_then_row_program() {
    let Some(d) = onednn() else { return };
    let mut rng = Rng(attnopt_ir::rng::Rng::new(0x5eed));
    for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (130, 77, 65)] {
        // Products of order ±3, so the activations see both tails.
        let a = rng.vec(m * k, 1.0);
        let w = rng.vec(n * k, 6.0 / (k as f32).sqrt()); // PyTorch layout [n, k]
        let bias = rng.vec(n, 1.0);
        let res = rng.vec(m * n, 2.0);
        let p = d.prepare(MatRef::row_major(&w, n, k).t()).unwrap();
        // The plain product, f32, from the same library: the epilogue's input.
        let mut prod = vec![0.0; m * n];
        d.matmul_prepared(
            MatRef::row_major(&a, m, k),
            &*p,
            MatMut::row_major(&mut prod, m, n),
            false,
        )
        .unwrap();
        for (b, act, r) in kinds() {
            let e = Epilogue {
                bias: b.then_some(&bias[..]),
                activation: act.map(|i| ACTIVATIONS[i].0),
                residual: r.then(|| MatRef::row_major(&res, m, n)),
            };
            assert!(d.fuses(e.kind()));
            let mut got = vec![f32::NAN; m * n];
            d.matmul_prepared_epilogue(
                MatRef::row_major(&a, m, k),
                &*p,
                MatMut::row_major(&mut got, m, n),
                &e,
            )
            .unwrap_or_else(|err| panic!("{m}×{k}×{n} {}: {err}", e.kind()));
            let prog = program(b, act.map(|i| ACTIVATIONS[i].1), r);
            let mut want = vec![0.0; m * n];
            for row in 0..m {
                let rows = |x: &[f32]| x[row * n..(row + 1) * n].to_vec();
                let ins = [rows(&prod), bias.clone(), rows(&res)];
                let ins: Vec<&[f32]> = ins.iter().map(|v| &v[..]).collect();
                prog.eval_reference(&ins, &mut want[row * n..(row + 1) * n], n, &[]);
            }
            let scale = want.iter().fold(1e-6f32, |s, x| s.max(x.abs()));
            let (mut worst, mut at) = (0f32, 0);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let diff = (g - w).abs();
                if diff > worst || diff.is_nan() {
                    (worst, at) = (if diff.is_nan() { f32::INFINITY } else { diff }, i);
                }
            }
            println!(
                "{m}×{k}×{n} {:<22} max err {worst:.2e} (scale {scale:.2}) at {}: {} vs {}",
                e.kind().to_string(),
                at,
                got[at],
                want[at]
            );
            assert!(
                worst <= 1e-5 * scale,
                "{m}×{k}×{n} {}: fused {} vs unfused {} at {at}",
                e.kind(),
                got[at],
                want[at]
            );
        }
    }
}

#[test]
fn epilogue_data_is_checked() {
    let Some(d) = onednn() else { return };
    let (a, w, res) = (vec![0.5; 6], vec![0.25; 12], vec![1.0; 8]);
    let p = d.prepare(MatRef::row_major(&w, 3, 4)).unwrap();
    let mut c = vec![0.0; 8];
    let short_bias = [1.0; 3];
    let mut run = |e: Epilogue| {
        d.matmul_prepared_epilogue(
            MatRef::row_major(&a, 2, 3),
            &*p,
            MatMut::row_major(&mut c, 2, 4),
            &e,
        )
    };
    let r = run(Epilogue {
        bias: Some(&short_bias),
        ..Default::default()
    });
    assert!(matches!(r, Err(MatMulError::Shape(_))), "{r:?}");
    let r = run(Epilogue {
        residual: Some(MatRef::row_major(&res, 4, 2)),
        ..Default::default()
    });
    assert!(matches!(r, Err(MatMulError::Shape(_))), "{r:?}");
    let r = run(Epilogue {
        residual: Some(MatRef::row_major(&res[..7], 2, 4)),
        ..Default::default()
    });
    assert!(matches!(r, Err(MatMulError::Bounds(_))), "{r:?}");
}

#[test]
fn gemm_fuses_nothing_but_the_empty_epilogue() {
    let g = GemmMatMul::new(2);
    let (a, w) = (vec![0.5; 6], vec![0.25; 12]);
    let p = g.prepare(MatRef::row_major(&w, 3, 4)).unwrap();
    let mut c = vec![f32::NAN; 8];
    assert!(g.fuses(EpilogueKind::default()));
    g.matmul_prepared_epilogue(
        MatRef::row_major(&a, 2, 3),
        &*p,
        MatMut::row_major(&mut c, 2, 4),
        &Epilogue::default(),
    )
    .unwrap();
    assert!(c.iter().all(|&x| (x - 0.375).abs() < 1e-6), "{c:?}");
    let bias = [1.0; 4];
    let e = Epilogue {
        bias: Some(&bias),
        activation: Some(Activation::GeluErf),
        residual: None,
    };
    assert!(!g.fuses(e.kind()));
    let r = g.matmul_prepared_epilogue(
        MatRef::row_major(&a, 2, 3),
        &*p,
        MatMut::row_major(&mut c, 2, 4),
        &e,
    );
    assert!(matches!(r, Err(MatMulError::NotSupported(_))), "{r:?}");
}

/// `y = act(x · Wᵀ + bias) + r` as a graph, x: [B, N, k], r: [B, N, n].
fn graph(
    k: usize,
    n: usize,
    bias: bool,
    act: Option<Unary>,
    residual: bool,
    rng: &mut Rng,
) -> attnopt_ir::Graph {
    let mut b = Builder::new();
    let x = b
        .graph
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(k)]))
        .unwrap();
    let r = b
        .graph
        .input("r", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(n)]))
        .unwrap();
    let w = Weight::from_f32("w", vec![n, k], &rng.vec(n * k, 6.0 / (k as f32).sqrt())).unwrap();
    let w = b.graph.weight(w);
    let bv = if bias {
        Some(
            b.graph
                .weight(Weight::from_f32("b", vec![n], &rng.vec(n, 1.0)).unwrap()),
        )
    } else {
        None
    };
    let mut y = b
        .linear(x, w, bv, WeightLayout::OutIn, Role::MlpUp)
        .unwrap();
    if let Some(u) = act {
        y = b.unary(u, y, Role::MlpAct).unwrap();
    }
    if residual {
        y = b.add(y, r, Role::Residual).unwrap();
    }
    b.graph.set_output("y", y).unwrap();
    b.finish()
}

#[test]
fn executor_epilogues_match_interpreter_with_and_without_post_ops() {
    let mut rng = Rng(attnopt_ir::rng::Rng::new(0xe91));
    let (batch, seq, k, n) = (2, 7, 19, 23);
    let inputs: HashMap<String, Tensor> = [("x", vec![batch, seq, k]), ("r", vec![batch, seq, n])]
        .into_iter()
        .map(|(name, shape)| {
            let len = shape.iter().product();
            (
                name.to_string(),
                Tensor::f32(shape, rng.vec(len, 1.0)).unwrap(),
            )
        })
        .collect();
    for (bias, act, residual) in kinds() {
        let act = act.map(|i| ACTIVATIONS[i].2);
        let g = graph(k, n, bias, act, residual, &mut rng);
        let want = &interp::run(&g, &inputs, &[]).unwrap()["y"];
        let gemm: Box<dyn MatMul> = Box::new(GemmMatMul::new(2));
        let mut runs = vec![(
            "gemm",
            CpuModel::with_matmul(g.clone(), 2, gemm, "test".into()).unwrap(),
        )];
        for on in [true, false] {
            let mut m = CpuModel::new(g.clone(), 2).unwrap();
            m.set_post_ops(on);
            runs.push((if on { "best, post-ops" } else { "best, JIT" }, m));
        }
        for (label, mut m) in runs {
            let (got, profile) = m.run(&inputs, &[], true).unwrap();
            let err = got["y"].max_abs_diff(want).unwrap();
            let scale = want.max_abs().max(1e-6);
            let product = profile
                .iter()
                .find(|t| t.name.starts_with("matmul"))
                .unwrap();
            println!(
                "{} {label} ({}): err {err:.2e}, JIT epilogue {:.1} µs",
                product.name,
                m.matmul_name().0,
                product.epilogue_seconds * 1e6
            );
            // The lowering recognised the structured form (the kernel is named by it).
            assert_ne!(product.name, "matmul+epilogue");
            assert!(err <= 1e-5 * scale, "{} {label}: {err}", product.name);
            // Which path ran: the library fuses only with post-ops on and oneDNN loaded.
            let fused = label == "best, post-ops" && m.matmul_name().0.starts_with("oneDNN");
            assert_eq!(product.epilogue_seconds == 0.0, fused, "{label}");
        }
    }
}
