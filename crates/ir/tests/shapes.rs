//! Shape inference (`infer`, through `Graph::add`) and the interpreter's input checking.

// Tests pass operands as `&[x.clone()]` throughout; `slice::from_ref` would obscure them.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use std::collections::HashMap;

use attnopt_ir::infer::{broadcast_dim, broadcast_shapes, infer, ShapeError, Typed};
use attnopt_ir::interp::{self, InterpError};
use attnopt_ir::{
    Binary, DType, Dim, Graph, GraphError, NodeId, NodeMeta, Op, Reduce, Role, RopeStyle, Scalar,
    Shape, Unary, Weight, BATCH, SEQ,
};
use common::*;

fn s(d: &[Dim]) -> Shape {
    Shape(d.to_vec())
}

const D2: Dim = Dim::Fixed(2);
const D4: Dim = Dim::Fixed(4);
const D8: Dim = Dim::Fixed(8);
const ONE: Dim = Dim::Fixed(1);

/// Asserts the error names `op_name` and its message contains `needle`.
#[track_caller]
fn expect(e: ShapeError, op_name: &str, needle: &str) {
    assert!(
        e.op.starts_with(op_name),
        "error should name `{op_name}`: {e}"
    );
    assert!(
        e.msg.contains(needle),
        "error message should contain `{needle}`: {e}"
    );
    // The rendered error also names the operator and shows the operand types.
    let text = e.to_string();
    assert!(text.starts_with(op_name), "{text}");
    assert!(text.contains("operands:"), "{text}");
}

fn rope() -> Op {
    Op::Rope {
        theta: Scalar::new(10000.0),
        style: RopeStyle::Half,
    }
}

// ---------------------------------------------------------------- broadcasting

#[test]
fn broadcast_dims_and_shapes() {
    assert_eq!(broadcast_dim(ONE, BATCH), Some(BATCH));
    assert_eq!(broadcast_dim(SEQ, ONE), Some(SEQ));
    assert_eq!(broadcast_dim(SEQ, SEQ), Some(SEQ));
    assert_eq!(broadcast_dim(BATCH, SEQ), None);
    assert_eq!(broadcast_dim(BATCH, D4), None);
    assert_eq!(broadcast_dim(D2, D4), None);
    assert_eq!(broadcast_dim(ONE, ONE), Some(ONE));
    assert_eq!(
        broadcast_shapes(&s(&[BATCH, ONE, D4]), &s(&[SEQ, ONE])),
        Some(s(&[BATCH, SEQ, D4]))
    );
    assert_eq!(broadcast_shapes(&s(&[]), &s(&[D2, D4])), Some(s(&[D2, D4])));
    assert_eq!(broadcast_shapes(&s(&[BATCH, SEQ]), &s(&[SEQ, BATCH])), None);
}

#[test]
fn binary_symbolic_broadcasting() {
    let add = || Op::Binary(Binary::Add);
    let ty = shape_ok(add(), &[f(s(&[BATCH, SEQ, D4])), f(s(&[D4]))]);
    assert_eq!(ty, Typed::f32(s(&[BATCH, SEQ, D4])));
    let ty = shape_ok(add(), &[f(s(&[BATCH, ONE, D4])), f(s(&[ONE, SEQ, ONE]))]);
    assert_eq!(ty.shape, s(&[BATCH, SEQ, D4]));
    let ty = shape_ok(add(), &[f(s(&[ONE])), f(s(&[BATCH]))]);
    assert_eq!(ty.shape, s(&[BATCH]));
    expect(
        shape_err(add(), &[f(s(&[BATCH, D4])), f(s(&[Dim::Fixed(3), D4]))]),
        "add",
        "do not broadcast",
    );
    expect(
        shape_err(
            Op::Binary(Binary::Sub),
            &[f(s(&[BATCH, SEQ])), f(s(&[SEQ, BATCH]))],
        ),
        "sub",
        "do not broadcast",
    );
    expect(
        shape_err(add(), &[f(fixed(&[2])), i(fixed(&[2]))]),
        "add",
        "operand 1 must be f32",
    );
}

#[test]
fn elementwise_needs_float() {
    for op in [
        Op::Unary(Unary::Exp),
        Op::Scale(Scalar::new(2.0)),
        Op::AddScalar(Scalar::new(1.0)),
        Op::Softmax { axis: 0 },
        Op::CumSum { axis: 0 },
    ] {
        let name = op.name();
        expect(shape_err(op, &[i(fixed(&[3]))]), name, "must be f32");
    }
    let ty = shape_ok(Op::Unary(Unary::Gelu), &[f(s(&[BATCH, SEQ, D8]))]);
    assert_eq!(ty.shape, s(&[BATCH, SEQ, D8]));
}

#[test]
fn arity_is_checked() {
    expect(
        shape_err(Op::MatMul, &[f(fixed(&[2, 2]))]),
        "matmul",
        "takes 2 operands, got 1",
    );
    expect(
        shape_err(Op::Unary(Unary::Neg), &[f(fixed(&[2])), f(fixed(&[2]))]),
        "neg",
        "takes 1 operands",
    );
    expect(
        shape_err(
            Op::LayerNorm {
                eps: Scalar::new(1e-5),
            },
            &[f(fixed(&[2, 4])), f(fixed(&[4]))],
        ),
        "layer_norm",
        "takes 3 operands",
    );
    expect(
        shape_err(Op::Concat { axis: 0 }, &[]),
        "concat",
        "at least one",
    );
    // Leaf operators cannot be added as computed nodes.
    let e = infer(&Op::Weight(attnopt_ir::WeightId(0)), &[]).unwrap_err();
    expect(e, "weight", "leaf");
}

// ---------------------------------------------------------------- matmul

#[test]
fn matmul_shapes() {
    let ty = shape_ok(Op::MatMul, &[f(s(&[BATCH, SEQ, D8])), f(fixed(&[8, 16]))]);
    assert_eq!(ty.shape, s(&[BATCH, SEQ, Dim::Fixed(16)]));
    // Attention scores and context with symbolic N on both sides.
    let h = Dim::Fixed(3);
    let ty = shape_ok(
        Op::MatMul,
        &[f(s(&[BATCH, h, SEQ, D4])), f(s(&[BATCH, h, D4, SEQ]))],
    );
    assert_eq!(ty.shape, s(&[BATCH, h, SEQ, SEQ]));
    let ty = shape_ok(
        Op::MatMul,
        &[f(s(&[BATCH, h, SEQ, SEQ])), f(s(&[BATCH, h, SEQ, D4]))],
    );
    assert_eq!(ty.shape, s(&[BATCH, h, SEQ, D4]));
    // Batch dims broadcast.
    let ty = shape_ok(
        Op::MatMul,
        &[f(s(&[BATCH, ONE, D2, D4])), f(s(&[h, D4, D8]))],
    );
    assert_eq!(ty.shape, s(&[BATCH, h, D2, D8]));
}

#[test]
fn matmul_rejections() {
    let e = shape_err(Op::MatMul, &[f(fixed(&[2, 3])), f(fixed(&[4, 5]))]);
    expect(e.clone(), "matmul", "inner dimensions differ (3 vs 4)");
    assert_eq!(e.operands, "[2, 3] f32, [4, 5] f32");
    expect(
        shape_err(Op::MatMul, &[f(s(&[BATCH, SEQ, D4])), f(s(&[SEQ, D4]))]),
        "matmul",
        "inner dimensions differ (4 vs N)",
    );
    expect(
        shape_err(Op::MatMul, &[f(fixed(&[4])), f(fixed(&[4, 2]))]),
        "matmul",
        "rank >= 2",
    );
    expect(
        shape_err(Op::MatMul, &[f(fixed(&[2, 3, 4])), f(fixed(&[5, 4, 2]))]),
        "matmul",
        "batch dimensions do not broadcast",
    );
    expect(
        shape_err(Op::MatMul, &[i(fixed(&[2, 2])), f(fixed(&[2, 2]))]),
        "matmul",
        "operand 0 must be f32",
    );
}

// ---------------------------------------------------------------- layout ops

#[test]
fn permute_shapes() {
    let ty = shape_ok(Op::Permute(vec![0, 2, 1]), &[f(s(&[BATCH, SEQ, D4]))]);
    assert_eq!(ty.shape, s(&[BATCH, D4, SEQ]));
    // Integers keep their dtype.
    let ty = shape_ok(Op::Permute(vec![1, 0]), &[i(s(&[BATCH, SEQ]))]);
    assert_eq!(ty, Typed::new(s(&[SEQ, BATCH]), DType::I64));
    for bad in [vec![0, 0, 1], vec![0, 1], vec![0, 1, 3], vec![0, 1, 2, 3]] {
        expect(
            shape_err(Op::Permute(bad), &[f(s(&[BATCH, SEQ, D4]))]),
            "permute",
            "is not a permutation of rank 3",
        );
    }
}

#[test]
fn reshape_shapes() {
    let x = f(s(&[BATCH, SEQ, D8]));
    let ty = shape_ok(Op::Reshape(s(&[BATCH, SEQ, D2, D4])), &[x.clone()]);
    assert_eq!(ty.shape, s(&[BATCH, SEQ, D2, D4]));
    let ty = shape_ok(Op::Reshape(s(&[SEQ, D4, BATCH, D2])), &[x.clone()]);
    assert_eq!(ty.shape, s(&[SEQ, D4, BATCH, D2]));
    let ty = shape_ok(Op::Reshape(fixed(&[6])), &[i(fixed(&[2, 3]))]);
    assert_eq!(ty.dtype, DType::I64);
    for bad in [
        s(&[BATCH, D8]),
        s(&[BATCH, SEQ, D4]),
        s(&[BATCH, BATCH, D8]),
        s(&[BATCH, SEQ, D8, D2]),
    ] {
        expect(
            shape_err(Op::Reshape(bad), &[x.clone()]),
            "reshape",
            "element counts differ",
        );
    }
    expect(
        shape_err(Op::Reshape(fixed(&[4])), &[f(fixed(&[2, 3]))]),
        "reshape",
        "element counts differ",
    );
}

#[test]
fn expand_shapes() {
    let ty = shape_ok(Op::Expand(s(&[BATCH, ONE, D4])), &[f(s(&[ONE, D4]))]);
    assert_eq!(ty.shape, s(&[BATCH, ONE, D4]));
    let ty = shape_ok(Op::Expand(s(&[BATCH, SEQ, D4])), &[f(s(&[SEQ, ONE]))]);
    assert_eq!(ty.shape, s(&[BATCH, SEQ, D4]));
    expect(
        shape_err(Op::Expand(fixed(&[4])), &[f(fixed(&[1, 4]))]),
        "expand",
        "lower rank",
    );
    expect(
        shape_err(Op::Expand(fixed(&[2, 4])), &[f(fixed(&[3, 4]))]),
        "expand",
        "cannot expand",
    );
    expect(
        shape_err(Op::Expand(s(&[BATCH, D4])), &[f(s(&[SEQ, D4]))]),
        "expand",
        "cannot expand",
    );
}

#[test]
fn split_merge_repeat_heads_shapes() {
    let ty = shape_ok(Op::SplitHeads { heads: 2 }, &[f(s(&[BATCH, SEQ, D8]))]);
    assert_eq!(ty.shape, s(&[BATCH, D2, SEQ, D4]));
    let ty = shape_ok(Op::MergeHeads, &[f(s(&[BATCH, D2, SEQ, D4]))]);
    assert_eq!(ty.shape, s(&[BATCH, SEQ, D8]));
    let ty = shape_ok(Op::RepeatHeads { times: 3 }, &[f(s(&[BATCH, D2, SEQ, D4]))]);
    assert_eq!(ty.shape, s(&[BATCH, Dim::Fixed(6), SEQ, D4]));

    let split = |h| Op::SplitHeads { heads: h };
    expect(
        shape_err(split(3), &[f(s(&[BATCH, SEQ, D8]))]),
        "split_heads",
        "not divisible into 3 heads",
    );
    expect(
        shape_err(split(0), &[f(s(&[BATCH, SEQ, D8]))]),
        "split_heads",
        "not divisible into 0 heads",
    );
    expect(
        shape_err(split(2), &[f(s(&[BATCH, SEQ, SEQ]))]),
        "split_heads",
        "not divisible",
    );
    expect(
        shape_err(split(2), &[f(s(&[SEQ, D8]))]),
        "split_heads",
        "[B, N, H*Dh]",
    );
    expect(
        shape_err(Op::MergeHeads, &[f(s(&[BATCH, SEQ, D4, D2]))]),
        "merge_heads",
        "fixed H and Dh",
    );
    expect(
        shape_err(Op::MergeHeads, &[f(s(&[BATCH, D2, SEQ]))]),
        "merge_heads",
        "[B, H, N, Dh]",
    );
    expect(
        shape_err(Op::RepeatHeads { times: 0 }, &[f(s(&[BATCH, D2, SEQ, D4]))]),
        "repeat_heads",
        "times > 0",
    );
    expect(
        shape_err(
            Op::RepeatHeads { times: 2 },
            &[f(s(&[BATCH, SEQ, SEQ, D4]))],
        ),
        "repeat_heads",
        "fixed Hkv",
    );
}

// ---------------------------------------------------------------- attention ops

#[test]
fn softmax_and_masks_shapes() {
    let scores = f(s(&[BATCH, D2, SEQ, SEQ]));
    assert_eq!(
        shape_ok(Op::Softmax { axis: 3 }, &[scores.clone()]).shape,
        scores.0
    );
    expect(
        shape_err(Op::Softmax { axis: 4 }, &[scores.clone()]),
        "softmax",
        "axis 4 out of range for rank 4",
    );
    assert_eq!(shape_ok(Op::CausalMask, &[scores.clone()]).shape, scores.0);
    expect(
        shape_err(Op::CausalMask, &[f(s(&[SEQ]))]),
        "causal_mask",
        "rank >= 2",
    );
    let mask = i(s(&[BATCH, SEQ]));
    assert_eq!(
        shape_ok(Op::PaddingMask, &[scores.clone(), mask.clone()]).shape,
        scores.0
    );
    // A batch-1 mask broadcasts.
    shape_ok(Op::PaddingMask, &[scores.clone(), i(s(&[ONE, SEQ]))]);
    expect(
        shape_err(Op::PaddingMask, &[scores.clone(), f(s(&[BATCH, SEQ]))]),
        "padding_mask",
        "mask must be an integer tensor",
    );
    expect(
        shape_err(Op::PaddingMask, &[scores.clone(), i(s(&[BATCH, D4]))]),
        "padding_mask",
        "batch and key axes",
    );
    expect(
        shape_err(Op::PaddingMask, &[scores.clone(), i(s(&[D2, SEQ]))]),
        "padding_mask",
        "batch and key axes",
    );
    expect(
        shape_err(Op::PaddingMask, &[scores, i(s(&[SEQ]))]),
        "padding_mask",
        "mask [B, Nk]",
    );
    expect(
        shape_err(Op::PaddingMask, &[f(s(&[BATCH, SEQ, SEQ])), mask]),
        "padding_mask",
        "scores [B, H, Nq, Nk]",
    );
}

#[test]
fn reduce_cumsum_l2_shapes() {
    let x = f(s(&[BATCH, SEQ, D4]));
    let red = |axis, keep_dim| Op::Reduce {
        kind: Reduce::Mean,
        axis,
        keep_dim,
    };
    assert_eq!(
        shape_ok(red(2, false), &[x.clone()]).shape,
        s(&[BATCH, SEQ])
    );
    assert_eq!(
        shape_ok(red(1, true), &[x.clone()]).shape,
        s(&[BATCH, ONE, D4])
    );
    expect(
        shape_err(red(3, false), &[x.clone()]),
        "reduce_mean",
        "axis 3 out of range",
    );
    expect(
        shape_err(Op::CumSum { axis: 3 }, &[x.clone()]),
        "cumsum",
        "out of range",
    );
    expect(
        shape_err(
            Op::L2Normalize {
                axis: 5,
                eps: Scalar::new(1e-12),
            },
            &[x],
        ),
        "l2_normalize",
        "out of range",
    );
}

#[test]
fn norm_shapes() {
    let x = f(s(&[BATCH, SEQ, D4]));
    let ln = Op::LayerNorm {
        eps: Scalar::new(1e-5),
    };
    let rms = Op::RmsNorm {
        eps: Scalar::new(1e-6),
    };
    assert_eq!(
        shape_ok(ln.clone(), &[x.clone(), f(fixed(&[4])), f(fixed(&[4]))]).shape,
        x.0
    );
    assert_eq!(
        shape_ok(rms.clone(), &[x.clone(), f(fixed(&[4]))]).shape,
        x.0
    );
    expect(
        shape_err(ln.clone(), &[x.clone(), f(fixed(&[4])), f(fixed(&[8]))]),
        "layer_norm",
        "scale/shift must be [D]",
    );
    expect(
        shape_err(rms.clone(), &[x.clone(), f(fixed(&[1, 4]))]),
        "rms_norm",
        "scale/shift must be [D]",
    );
    expect(
        shape_err(rms.clone(), &[x, i(fixed(&[4]))]),
        "rms_norm",
        "operand 1 must be f32",
    );
    expect(
        shape_err(rms, &[f(fixed(&[])), f(fixed(&[4]))]),
        "rms_norm",
        "rank >= 1",
    );
}

#[test]
fn gather_shapes() {
    let ty = shape_ok(Op::Gather, &[f(fixed(&[100, 8])), i(s(&[BATCH, SEQ]))]);
    assert_eq!(ty, Typed::f32(s(&[BATCH, SEQ, D8])));
    expect(
        shape_err(Op::Gather, &[f(fixed(&[100, 8])), f(s(&[BATCH, SEQ]))]),
        "gather",
        "ids must be an integer tensor",
    );
    expect(
        shape_err(Op::Gather, &[f(fixed(&[2, 100, 8])), i(s(&[BATCH, SEQ]))]),
        "gather",
        "table must be [V, D]",
    );
}

#[test]
fn rope_shapes() {
    let x = f(s(&[BATCH, D2, SEQ, D8]));
    assert_eq!(shape_ok(rope(), &[x.clone()]).shape, x.0);
    expect(
        shape_err(rope(), &[f(s(&[BATCH, D2, SEQ, Dim::Fixed(5)]))]),
        "rope",
        "even, fixed Dh",
    );
    expect(
        shape_err(rope(), &[f(s(&[BATCH, D2, D4, SEQ]))]),
        "rope",
        "even, fixed Dh",
    );
    expect(
        shape_err(rope(), &[f(s(&[BATCH, SEQ, D8]))]),
        "rope",
        "[B, H, N, Dh]",
    );
}

#[test]
fn concat_shapes() {
    let ty = shape_ok(
        Op::Concat { axis: 1 },
        &[f(s(&[BATCH, ONE, D4])), f(s(&[BATCH, Dim::Fixed(3), D4]))],
    );
    assert_eq!(ty.shape, s(&[BATCH, D4, D4]));
    expect(
        shape_err(
            Op::Concat { axis: 1 },
            &[f(s(&[BATCH, SEQ, D4])), f(s(&[BATCH, ONE, D4]))],
        ),
        "concat",
        "symbolic axis",
    );
    expect(
        shape_err(
            Op::Concat { axis: 1 },
            &[f(s(&[BATCH, ONE, D4])), f(s(&[BATCH, ONE, D8]))],
        ),
        "concat",
        "differ off the concat axis",
    );
    expect(
        shape_err(Op::Concat { axis: 0 }, &[f(fixed(&[1, 4])), f(fixed(&[4]))]),
        "concat",
        "differ off the concat axis",
    );
    expect(
        shape_err(Op::Concat { axis: 2 }, &[f(fixed(&[1, 4]))]),
        "concat",
        "out of range",
    );
}

#[test]
fn slice_shapes() {
    let sl = |axis, start, end| Op::Slice { axis, start, end };
    let ty = shape_ok(sl(0, 0, SEQ), &[f(fixed(&[512, 8]))]);
    assert_eq!(ty.shape, s(&[SEQ, D8]));
    let ty = shape_ok(sl(1, 1, Dim::Fixed(3)), &[i(s(&[BATCH, D4]))]);
    assert_eq!(ty, Typed::new(s(&[BATCH, D2]), DType::I64));
    expect(
        shape_err(sl(1, 0, Dim::Fixed(5)), &[f(s(&[BATCH, D4]))]),
        "slice",
        "0..5 out of range",
    );
    expect(
        shape_err(sl(1, 3, Dim::Fixed(2)), &[f(s(&[BATCH, D4]))]),
        "slice",
        "out of range",
    );
    expect(
        shape_err(sl(0, 1, SEQ), &[f(fixed(&[512, 8]))]),
        "slice",
        "must start at 0",
    );
    expect(
        shape_err(sl(2, 0, SEQ), &[f(fixed(&[512, 8]))]),
        "slice",
        "axis 2 out of range",
    );
}

// ---------------------------------------------------------------- graph-level errors

#[test]
fn shape_error_carries_node_meta() {
    let mut g = Graph::new();
    let a = g.input("a", DType::F32, fixed(&[2, 3])).unwrap();
    let b = g.input("b", DType::F32, fixed(&[4, 5])).unwrap();
    let meta = NodeMeta {
        layer: Some(7),
        role: Role::AttnScores,
    };
    let e = g.add(Op::MatMul, &[a, b], meta).unwrap_err();
    match &e {
        GraphError::Shape { meta: m, source } => {
            assert_eq!(*m, meta);
            assert_eq!(source.op, "matmul");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "@L7 attn_scores: matmul: inner dimensions differ (3 vs 4) (operands: [2, 3] f32, [4, 5] f32)"
    );
    // A refused node is not added.
    assert_eq!(g.node_count(), 2);
}

#[test]
fn graph_edit_errors() {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, fixed(&[2])).unwrap();
    assert_eq!(
        g.input("x", DType::F32, fixed(&[3])).unwrap_err(),
        GraphError::DuplicateInput("x".into())
    );
    let ghost = NodeId::new(42);
    assert_eq!(
        g.add(Op::Unary(Unary::Neg), &[x, ghost], meta())
            .unwrap_err(),
        GraphError::UnknownNode(ghost)
    );
    assert_eq!(
        g.set_output("y", ghost).unwrap_err(),
        GraphError::UnknownNode(ghost)
    );
    g.set_output("y", x).unwrap();
    assert_eq!(
        g.set_output("y", x).unwrap_err(),
        GraphError::DuplicateOutput("y".into())
    );
    // Inputs compute in F32/I64 whatever dtype they are declared with.
    let h = g.input("h", DType::F16, fixed(&[2])).unwrap();
    assert_eq!(g.node(h).ty.dtype, DType::F32);
    let m = g.input("m", DType::Bool, fixed(&[2])).unwrap();
    assert_eq!(g.node(m).ty.dtype, DType::I64);
}

#[test]
fn weights_are_typed_in_compute_dtype() {
    let mut g = Graph::new();
    let bytes: Vec<u8> = vec![0; 12];
    let w = Weight::new(
        "w16",
        DType::BF16,
        vec![2, 3],
        std::sync::Arc::new(bytes),
        0..12,
    )
    .unwrap();
    let id = g.weight(w);
    assert_eq!(g.node(id).ty, Typed::f32(fixed(&[2, 3])));
}

// ---------------------------------------------------------------- interpreter input checks

/// Inputs `x [B, N, 4]` f32 and `mask [B, N]` i64; outputs `y = x + 1` and
/// `mt = permute(mask)`, so both inputs are reached.
fn two_input_graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, s(&[BATCH, SEQ, D4])).unwrap();
    let m = g.input("mask", DType::I64, s(&[BATCH, SEQ])).unwrap();
    let y = g
        .add(Op::AddScalar(Scalar::new(1.0)), &[x], meta())
        .unwrap();
    let mt = g.add(Op::Permute(vec![1, 0]), &[m], meta()).unwrap();
    g.set_output("y", y).unwrap();
    g.set_output("mt", mt).unwrap();
    g
}

fn ins(x: attnopt_ir::Tensor, m: attnopt_ir::Tensor) -> HashMap<String, attnopt_ir::Tensor> {
    HashMap::from([("x".to_string(), x), ("mask".to_string(), m)])
}

#[test]
fn interp_accepts_consistent_inputs() {
    let g = two_input_graph();
    let outs = interp::run(
        &g,
        &ins(iota(&[2, 3, 4]), ti(&[2, 3], &[1, 2, 3, 4, 5, 6])),
        &[],
    )
    .unwrap();
    assert_eq!(outs["y"].shape(), &[2, 3, 4]);
    assert_eq!(outs["mt"].as_i64().unwrap(), &[1, 4, 2, 5, 3, 6]);
    // Asking for one output computes (and returns) only that one; the unreached input may be
    // missing.
    let only_x = HashMap::from([("x".to_string(), iota(&[1, 1, 4]))]);
    let outs = interp::run(&g, &only_x, &["y"]).unwrap();
    assert_eq!(outs.len(), 1);
    assert_close32(f32s(&outs["y"]), &[1.0, 2.0, 3.0, 4.0], 0.0);
}

#[test]
fn interp_missing_input() {
    let g = two_input_graph();
    let only_x = HashMap::from([("x".to_string(), iota(&[1, 1, 4]))]);
    match interp::run(&g, &only_x, &[]) {
        Err(InterpError::MissingInput { name, expected }) => {
            assert_eq!(name, "mask");
            assert_eq!(expected, "x, mask");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn interp_unknown_input_and_output() {
    let g = two_input_graph();
    let mut i = ins(iota(&[1, 1, 4]), ti(&[1, 1], &[1]));
    i.insert("tokens".into(), ti(&[1], &[0]));
    assert!(matches!(
        interp::run(&g, &i, &[]),
        Err(InterpError::UnknownInput { name, .. }) if name == "tokens"
    ));
    let i = ins(iota(&[1, 1, 4]), ti(&[1, 1], &[1]));
    assert_eq!(
        interp::run(&g, &i, &["logits"]).unwrap_err(),
        InterpError::UnknownOutput("logits".into())
    );
}

#[test]
fn interp_wrong_dtype() {
    let g = two_input_graph();
    let err = interp::run(&g, &ins(iota(&[1, 1, 4]), iota(&[1, 1])), &[]).unwrap_err();
    assert_eq!(
        err,
        InterpError::InputDtype {
            name: "mask".into(),
            expected: DType::I64,
            got: DType::F32,
        }
    );
}

#[test]
fn interp_wrong_rank_and_fixed_dim() {
    let g = two_input_graph();
    let err = interp::run(&g, &ins(iota(&[1, 4]), ti(&[1, 1], &[1])), &[]).unwrap_err();
    assert!(
        matches!(&err, InterpError::InputShape { name, got, .. } if name == "x" && got == &[1, 4]),
        "{err:?}"
    );
    let err = interp::run(&g, &ins(iota(&[1, 1, 5]), ti(&[1, 1], &[1])), &[]).unwrap_err();
    assert_eq!(
        err,
        InterpError::InputShape {
            name: "x".into(),
            expected: s(&[BATCH, SEQ, D4]),
            got: vec![1, 1, 5],
        }
    );
}

#[test]
fn interp_inconsistent_symbol_binding() {
    let g = two_input_graph();
    // x binds B=2, N=3; the mask says N=4.
    let err = interp::run(&g, &ins(iota(&[2, 3, 4]), ti(&[2, 4], &[1; 8])), &[]).unwrap_err();
    assert_eq!(
        err,
        InterpError::InconsistentDim {
            name: "mask".into(),
            axis: 1,
            sym: "N",
            bound: 3,
            got: 4,
        }
    );
    // Within one input: a symbol used twice must agree with itself.
    let mut g = Graph::new();
    let sq = g.input("sq", DType::F32, s(&[SEQ, SEQ])).unwrap();
    g.set_output("sq", sq).unwrap();
    let one = |t| HashMap::from([("sq".to_string(), t)]);
    assert!(matches!(
        interp::run(&g, &one(iota(&[2, 3])), &[]),
        Err(InterpError::InconsistentDim {
            axis: 1,
            sym: "N",
            bound: 2,
            got: 3,
            ..
        })
    ));
    assert!(interp::run(&g, &one(iota(&[3, 3])), &[]).is_ok());
}

#[test]
fn interp_runtime_error_names_node() {
    // A reshape whose symbols no input binds fails at run time, with the node's meta and op.
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, fixed(&[4])).unwrap();
    let meta = NodeMeta {
        layer: Some(2),
        role: Role::MlpUp,
    };
    g.add(Op::Reshape(s(&[SEQ, D4])), &[x], meta)
        .expect_err("N·4 ≠ 4 elements");
    let e = g.add(Op::Expand(s(&[SEQ, D4])), &[x], meta).unwrap();
    g.set_output("e", e).unwrap();
    let err = interp::run(&g, &HashMap::from([("x".to_string(), iota(&[4]))]), &[]).unwrap_err();
    match &err {
        InterpError::Runtime { meta: m, op, msg } => {
            assert_eq!(*m, meta);
            assert!(op.starts_with("expand"));
            assert!(msg.contains("unbound"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("@L2 mlp_up expand"), "{err}");
}
