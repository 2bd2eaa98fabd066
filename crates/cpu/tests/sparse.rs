//! Scaling Transformers' sparse layers on the CPU backend against the reference interpreter:
//! the factored Q/K/V product with its three local convolutions, and the sparse feed-forward
//! kernel (one fused kernel reading only the chosen units), on random weights and shapes,
//! one token and many, one thread and two.

use std::collections::HashMap;

use attnopt_cpu::CpuModel;
use attnopt_ir::builder::Builder;
use attnopt_ir::sparse::{LocalConv, SparseFf};
use attnopt_ir::{interp, DType, Dim, Graph, NodeId, Role, Shape, Tensor, Weight, BATCH, SEQ};

fn values(n: usize, seed: u64) -> Vec<f32> {
    attnopt_ir::rng::Rng::new(seed).values(n, -1.0, 1.0)
}

#[derive(Clone, Copy)]
struct Dims {
    d: usize,
    modules: usize,
    units: usize,
    block: usize,
    lowrank: usize,
    /// A converted dense layer's sparse FF: a bias on the first product and GELU (tanh form)
    /// instead of trax's ReLU.
    dense_like: bool,
}

/// A weight node of `shape` with values from `seed`.
fn weight(b: &mut Builder, name: &str, shape: &[usize], seed: u64) -> NodeId {
    let n = shape.iter().product();
    let w = Weight::from_f32(name, shape.to_vec(), &values(n, seed)).unwrap();
    b.graph.weight(w)
}

/// `x [B, N, d]` → sparse Q/K/V (outputs `q`, `k`, `v`) and a sparse FF of `x` (`ff`). With
/// `w1_input`, the FF's `W1` is a run-time input `w1 [d, units]` instead of a weight, and the
/// permuted `W2` is an output too (so the kernel reads that copy, not trax's layout in place).
fn graph(s: &Dims, w1_input: bool) -> Graph {
    let mut b = Builder::new();
    let (d, m) = (s.d, s.d / s.modules);
    let x = b
        .graph
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(d)]))
        .unwrap();
    let g = weight(&mut b, "g", &[s.modules, d], 1);
    let p = weight(&mut b, "p", &[d, m], 2);
    let bias = weight(&mut b, "bias", &[d], 3);
    let u = b
        .factored_dense(x, g, p, bias, (s.modules, m), Role::QkvProj)
        .unwrap();
    for (i, (name, width)) in [("q", 3), ("k", 3), ("v", 1)].into_iter().enumerate() {
        let c = LocalConv {
            kernel: weight(
                &mut b,
                &format!("{name}.k"),
                &[3, width, m, m],
                10 + i as u64,
            ),
            bias: weight(&mut b, &format!("{name}.b"), &[m], 20 + i as u64),
            length: 3,
            width,
        };
        let y = b.local_conv(u, &c, (m, m), Role::QProj).unwrap();
        let y = b.merge_modules(y, d, Role::QProj).unwrap();
        b.graph.set_output(name, y).unwrap();
    }
    let x_blocks = s.units / s.block;
    let w1 = if w1_input {
        let w = b
            .graph
            .input("w1", DType::F32, Shape::fixed(&[d, s.units]))
            .unwrap();
        b.op(
            attnopt_ir::Op::Reshape(Shape::fixed(&[d, x_blocks, s.block])),
            &[w],
            Role::MlpUp,
        )
        .unwrap()
    } else {
        weight(&mut b, "w1", &[d, x_blocks, s.block], 30)
    };
    let f = SparseFf {
        m1: weight(&mut b, "m1", &[d, s.lowrank], 31),
        m2: weight(&mut b, "m2", &[s.lowrank, x_blocks, s.block], 32),
        mb: weight(&mut b, "mb", &[x_blocks, s.block], 33),
        w1,
        w2: weight(&mut b, "w2", &[s.block, x_blocks, d], 34),
        b2: Some(weight(&mut b, "b2", &[d], 35)),
        b1: s.dense_like.then(|| weight(&mut b, "b1", &[s.units], 36)),
        act: match s.dense_like {
            true => attnopt_ir::Unary::GeluTanh,
            false => attnopt_ir::Unary::Relu,
        },
        block: s.block,
        units: s.units,
        lowrank: s.lowrank,
    };
    let ff = b.sparse_ff(x, &f, d).unwrap();
    b.graph.set_output("ff", ff).unwrap();
    if w1_input {
        let permuted = (b.graph.topo_order().into_iter())
            .find(|&n| b.graph.node(n).op == attnopt_ir::Op::Permute(vec![1, 0, 2]))
            .unwrap();
        b.graph.set_output("w2_permuted", permuted).unwrap();
    }
    b.finish()
}

fn case(s: &Dims, batch: usize, tokens: usize, threads: usize, w1_input: bool) {
    let g = graph(s, w1_input);
    let mut ins = HashMap::from([(
        "x".to_string(),
        Tensor::f32(vec![batch, tokens, s.d], values(batch * tokens * s.d, 99)).unwrap(),
    )]);
    if w1_input {
        let w1 = Tensor::f32(vec![s.d, s.units], values(s.d * s.units, 30)).unwrap();
        ins.insert("w1".into(), w1);
    }
    let want = interp::run(&g, &ins, &[]).unwrap();
    let mut cpu = CpuModel::new(g, threads).unwrap();
    let (got, _) = cpu.run(&ins, &[], false).unwrap();
    let names: Vec<String> = cpu
        .lowered(batch, tokens)
        .unwrap()
        .kernels
        .iter()
        .map(|k| k.name.clone())
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "sparse_ff").count(),
        1,
        "one sparse feed-forward kernel: {names:?}"
    );
    let lowered = cpu.lowered(batch, tokens).unwrap();
    let spec = lowered.kernels.iter().find_map(|k| match &k.kind {
        attnopt_lower::KernelKind::SparseFf(s) => Some(s.clone()),
        _ => None,
    });
    let layout = spec.as_ref().map(|s| s.w2_layout);
    // One row (decoding): the controller's products run inside the kernel.
    let rows = batch * tokens;
    let inside = (rows <= attnopt_lower::SPARSE_FF_CONTROLLER_ROWS).then_some(s.lowrank);
    assert_eq!(spec.and_then(|s| s.controller), inside, "rows {rows}");
    // The shared factored product is one kernel (at one row reading G and P; at more, one
    // product with the folded weight).
    let factored = names.iter().filter(|n| *n == "factored").count();
    assert_eq!(factored, 1, "{names:?}");
    let expected = if w1_input {
        attnopt_lower::W2Layout::Units
    } else {
        attnopt_lower::W2Layout::BlockSwapped
    };
    assert_eq!(layout, Some(expected));
    for name in ["q", "k", "v", "ff"] {
        let (g, w) = (&got[name], &want[name]);
        let err = g.max_abs_diff(w).unwrap();
        let tol = 1e-5 * w.max_abs().max(1.0);
        println!("{name} B={batch} N={tokens} threads={threads}: max-abs {err:.2e}");
        assert!(
            err <= tol,
            "{name} B={batch} N={tokens} threads={threads}: {err}"
        );
    }
}

#[test]
fn sparse_layers_match_the_interpreter() {
    let small = Dims {
        d: 16,
        modules: 4,
        units: 32,
        block: 4,
        lowrank: 3,
        dense_like: false,
    };
    let wide = Dims {
        d: 64,
        modules: 8,
        units: 256,
        block: 8,
        lowrank: 8,
        dense_like: false,
    };
    let converted = Dims {
        dense_like: true,
        ..small
    };
    for s in [&small, &wide, &converted] {
        for &(batch, tokens) in &[(1, 1), (1, 2), (2, 5), (1, 19)] {
            for threads in [1, 2] {
                case(s, batch, tokens, threads, false);
            }
        }
    }
    case(&small, 2, 3, 2, true);
    case(&wide, 1, 1, 2, true);
}

/// bf16 precision: the sparse kernel reads its unit rows (and, at one row, its controller) as
/// bfloat16; the error against the f32 interpreter is bf16-sized, not f32-sized and not wrong.
#[test]
fn sparse_ff_in_bf16_is_a_bf16_approximation() {
    let s = Dims {
        d: 64,
        modules: 8,
        units: 256,
        block: 8,
        lowrank: 8,
        dense_like: false,
    };
    for &(batch, tokens) in &[(1, 1), (2, 9)] {
        let g = graph(&s, false);
        let ins = HashMap::from([(
            "x".to_string(),
            Tensor::f32(vec![batch, tokens, s.d], values(batch * tokens * s.d, 99)).unwrap(),
        )]);
        let want = interp::run(&g, &ins, &[]).unwrap();
        let mut cpu = CpuModel::with_precision(g, 2, attnopt_cpu::matmul::Precision::Bf16).unwrap();
        let (got, _) = cpu.run(&ins, &[], false).unwrap();
        let (g, w) = (&got["ff"], &want["ff"]);
        let num: f64 = (g.as_f32().unwrap().iter().zip(w.as_f32().unwrap()))
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = w
            .as_f32()
            .unwrap()
            .iter()
            .map(|b| (*b as f64).powi(2))
            .sum();
        let rel = (num / den).sqrt();
        println!("bf16 sparse FF B={batch} N={tokens}: relative error {rel:.2e}");
        assert!(rel > 1e-5 && rel < 3e-2, "B={batch} N={tokens}: {rel}");
    }
}
