//! Small hand-built graphs run by `CpuModel` (lowering, fused row kernels, generic operators)
//! against the reference interpreter on the same graph: one pattern per test, each a case the
//! pipeline's differential property test (`tests/pipeline_props.rs`) once found to disagree.

use std::collections::HashMap;

use attnopt_cpu::CpuModel;
use attnopt_ir::builder::Builder;
use attnopt_ir::{interp, DType, Dim, NodeId, Op, Role, Shape, Tensor, Unary, BATCH, SEQ};

/// Input `x` of `shape` (`Dim::Sym` allowed), the chain `ops` applied one after another.
fn chain(shape: Vec<Dim>, ops: &[Op]) -> attnopt_ir::Graph {
    let mut b = Builder::new();
    let x = b.graph.input("x", DType::F32, Shape(shape)).unwrap();
    b.set_layer(Some(0));
    let mut v: NodeId = x;
    for op in ops {
        v = b.op(op.clone(), &[v], Role::Other).unwrap();
    }
    let mut g = b.finish();
    g.set_output("out", v).unwrap();
    g
}

/// Runs `g` on `x` (seeded values of `shape`) with the interpreter and the CPU backend and
/// checks they agree.
fn agree(g: &attnopt_ir::Graph, shape: &[usize], what: &str) {
    let n: usize = shape.iter().product();
    let values = attnopt_ir::rng::Rng::new(5).values(n, -1.0, 1.0);
    let inputs = HashMap::from([(
        "x".to_string(),
        Tensor::f32(shape.to_vec(), values).unwrap(),
    )]);
    let want = interp::run(g, &inputs, &[]).unwrap();
    let mut cpu = CpuModel::new(g.clone(), 1).unwrap();
    let (got, _) = cpu.run(&inputs, &["out"], false).unwrap();
    let (want, got) = (&want["out"], &got["out"]);
    let err = got.max_abs_diff(want).expect("same shape");
    let scale = want.max_abs().max(1e-3);
    assert!(
        err <= 1e-5 * scale,
        "{what}: CPU differs from the interpreter by {err} (values up to {scale})\n{g}"
    );
}

const F: fn(usize) -> Dim = Dim::Fixed;

#[test]
fn softmax_over_a_leading_axis() {
    for axis in 0..3 {
        let g = chain(vec![BATCH, SEQ, F(8)], &[Op::Softmax { axis }]);
        agree(&g, &[2, 5, 8], &format!("softmax axis {axis}"));
    }
}

/// `tril` / `causal_mask` on scores with more queries than keys (`Nq = 5 > Nk = 4`): query
/// `i` sees keys `j ≤ i − 1`, so the first query sees none.
#[test]
fn causal_masks_with_more_queries_than_keys() {
    let heads = Op::SplitHeads { heads: 2 };
    let shape = vec![BATCH, SEQ, F(8)];
    for (what, ops) in [
        ("tril", vec![heads.clone(), Op::Tril]),
        (
            "tanh(tril)",
            vec![heads.clone(), Op::Tril, Op::Unary(Unary::Tanh)],
        ),
        (
            "softmax(causal_mask)",
            vec![heads.clone(), Op::CausalMask, Op::Softmax { axis: 3 }],
        ),
        (
            "softmax(tril)",
            vec![heads.clone(), Op::Tril, Op::Softmax { axis: 3 }],
        ),
    ] {
        let g = chain(shape.clone(), &ops);
        agree(&g, &[2, 5, 8], what);
    }
}

/// `tril` zeroes the future, it does not remove it: a softmax (or a padding mask) after it
/// still sees those zeros, so there it is no per-row valid length.
#[test]
fn softmax_after_tril() {
    let g = chain(
        vec![BATCH, SEQ, F(8)],
        &[Op::Unary(Unary::Tanh), Op::Tril, Op::Softmax { axis: 2 }],
    );
    agree(&g, &[2, 5, 8], "softmax(tril)");
}

#[test]
fn padding_mask_after_tril() {
    // padding_mask(tril(x)) with x [B, 1, N, N] and a mask that keeps only key 0 of batch 1.
    let mut b = Builder::new();
    let x = b
        .graph
        .input("x", DType::F32, Shape(vec![BATCH, F(1), SEQ, SEQ]))
        .unwrap();
    let m = b
        .graph
        .input("attention_mask", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    b.set_layer(Some(0));
    let t = b.op(Op::Tril, &[x], Role::Other).unwrap();
    let p = b.op(Op::PaddingMask, &[t, m], Role::Other).unwrap();
    let mut g = b.finish();
    g.set_output("out", p).unwrap();
    let values = attnopt_ir::rng::Rng::new(5).values(2 * 5 * 5, -1.0, 1.0);
    let mask = vec![1, 1, 1, 1, 1, 1, 0, 0, 0, 0];
    let inputs = HashMap::from([
        (
            "x".to_string(),
            Tensor::f32(vec![2, 1, 5, 5], values).unwrap(),
        ),
        (
            "attention_mask".to_string(),
            Tensor::i64(vec![2, 5], mask).unwrap(),
        ),
    ]);
    let want = interp::run(&g, &inputs, &[]).unwrap();
    let (got, _) = CpuModel::new(g.clone(), 1)
        .unwrap()
        .run(&inputs, &["out"], false)
        .unwrap();
    assert_eq!(
        got["out"].as_f32().unwrap(),
        want["out"].as_f32().unwrap(),
        "padding_mask(tril)\n{g}"
    );
}

/// The first case `pipeline_props` reported, before any optimisation.
#[test]
fn softmax_tanh_split_tril_softmax() {
    let g = chain(
        vec![BATCH, SEQ, F(8)],
        &[
            Op::Softmax { axis: 0 },
            Op::Unary(Unary::Tanh),
            Op::SplitHeads { heads: 2 },
            Op::Tril,
            Op::Softmax { axis: 0 },
        ],
    );
    agree(&g, &[2, 5, 8], "pipeline_props case 1");
}

/// Products over an empty inner axis (`k = 0`, here from an empty slice) are zeros, whatever
/// the arena held before, with the right side a weight or an activation, alone or with an
/// epilogue.
#[test]
fn products_over_an_empty_inner_axis_are_zero() {
    for (what, weight, epilogue) in [
        ("x[.., 0:0] · W", true, false),
        ("x[.., 0:0] · W, then scale", true, true),
        ("x[.., 0:0] · x[.., 0:0]ᵀ", false, false),
    ] {
        let mut b = Builder::new();
        let x = b
            .graph
            .input("x", DType::F32, Shape(vec![BATCH, SEQ, F(8)]))
            .unwrap();
        b.set_layer(Some(0));
        // Something big and non-zero first, dead before the product, so its memory is reused.
        let t = b.op(Op::Unary(Unary::Tanh), &[x], Role::Other).unwrap();
        let t = b
            .op(
                Op::AddScalar(attnopt_ir::Scalar::new(3.0)),
                &[t],
                Role::Other,
            )
            .unwrap();
        let s = b
            .op(
                Op::Slice {
                    axis: 2,
                    start: 0,
                    end: F(0),
                },
                &[t],
                Role::Other,
            )
            .unwrap();
        let rhs = if weight {
            let w = attnopt_ir::Weight::from_f32("w", vec![0, 8], &[]).unwrap();
            b.graph.weight(w)
        } else {
            b.op(Op::Permute(vec![0, 2, 1]), &[s], Role::Other).unwrap()
        };
        let mut out = b.op(Op::MatMul, &[s, rhs], Role::Other).unwrap();
        if epilogue {
            out = b
                .op(Op::Scale(attnopt_ir::Scalar::new(2.0)), &[out], Role::Other)
                .unwrap();
        }
        let mut g = b.finish();
        g.set_output("out", out).unwrap();
        agree(&g, &[2, 5, 8], what);
    }
}

/// `t = permute(x)` (last two axes swapped) is a graph output and also the right operand of
/// `out = x · t`, its only user: the product reads `x` transposed, and `t` keeps its own value.
#[test]
fn transposing_permute_that_is_an_output() {
    let mut b = Builder::new();
    let x = b
        .graph
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, F(8)]))
        .unwrap();
    let t = b.op(Op::Permute(vec![0, 2, 1]), &[x], Role::Other).unwrap();
    let p = b.op(Op::MatMul, &[x, t], Role::Other).unwrap();
    let mut g = b.finish();
    g.set_output("t", t).unwrap();
    g.set_output("out", p).unwrap();
    let shape = [2, 5, 8];
    let values = attnopt_ir::rng::Rng::new(5).values(shape.iter().product(), -1.0, 1.0);
    let inputs = HashMap::from([(
        "x".to_string(),
        Tensor::f32(shape.to_vec(), values).unwrap(),
    )]);
    let want = interp::run(&g, &inputs, &[]).unwrap();
    let mut cpu = CpuModel::new(g.clone(), 1).unwrap();
    let (got, _) = cpu.run(&inputs, &["t", "out"], false).unwrap();
    for name in ["t", "out"] {
        let err = got[name].max_abs_diff(&want[name]).expect("same shape");
        assert!(
            err <= 1e-5 * want[name].max_abs().max(1e-3),
            "{name}: off by {err}\n{g}"
        );
    }
}

/// A 100,000-deep elementwise chain (a stranger's graph text can hold one): the lowering
/// absorbed it into one row program by recursion and overflowed the stack, aborting `run`.
/// Programs now stop absorbing at `MAX_DEPTH`, so it becomes a chain of kernels.
#[test]
fn a_very_deep_elementwise_chain_is_cut_into_kernels() {
    let ops: Vec<Op> = (0..100_000)
        .map(|i| Op::Unary(if i % 2 == 0 { Unary::Tanh } else { Unary::Neg }))
        .collect();
    let g = chain(vec![BATCH, F(8)], &ops);
    agree(&g, &[2, 8], "100,000-deep chain");
    let lowered = attnopt_lower::lower(&g, &attnopt_ir::Bindings::new(2, 1)).unwrap();
    assert!(
        // Each kernel: its root plus at most MAX_ROW_DEPTH absorbed nodes.
        lowered.kernels.len() * (attnopt_lower::MAX_ROW_DEPTH + 1) >= 100_000,
        "{} kernels",
        lowered.kernels.len()
    );
}
