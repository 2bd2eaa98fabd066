//! Helpers shared by the ir crate's integration tests: tiny graphs around one operator,
//! tensor constructors and float comparison.

#![allow(dead_code)]

use std::collections::HashMap;

use attnopt_ir::interp::{self, InterpError};
use attnopt_ir::{Bindings, DType, Graph, GraphError, NodeId, NodeMeta, Op, Shape, Tensor};

pub fn meta() -> NodeMeta {
    NodeMeta::default()
}

/// A float tensor (panics on a length mismatch: test data is written by hand).
pub fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::f32(shape.to_vec(), data.to_vec()).expect("test tensor length")
}

/// An integer tensor.
pub fn ti(shape: &[usize], data: &[i64]) -> Tensor {
    Tensor::i64(shape.to_vec(), data.to_vec()).expect("test tensor length")
}

/// `0, 1, 2, ...` as a float tensor of `shape`.
pub fn iota(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    t(shape, &(0..n).map(|i| i as f32).collect::<Vec<_>>())
}

pub fn f32s(x: &Tensor) -> &[f32] {
    x.as_f32().expect("float tensor")
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Multi-index of flat offset `off` in `shape`.
pub fn unravel(mut off: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for ax in (0..shape.len()).rev() {
        if shape[ax] > 0 {
            idx[ax] = off % shape[ax];
            off /= shape[ax];
        }
    }
    idx
}

pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(strides(shape)).map(|(i, s)| i * s).sum()
}

/// Asserts `|got - want| <= tol · max(1, |want|)` elementwise (infinities must match exactly).
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_infinite() || w.is_nan() {
            assert!(
                (g as f64 == w) || (w.is_nan() && g.is_nan()),
                "element {i}: got {g}, want {w} (got {got:?})"
            );
            continue;
        }
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * w.abs().max(1.0),
            "element {i}: got {g}, want {w} (err {err:e}); got {got:?}"
        );
    }
}

#[track_caller]
pub fn assert_close32(got: &[f32], want: &[f32], tol: f64) {
    let w: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    assert_close(got, &w, tol);
}

/// Inputs `a0, a1, ...` (fixed shapes, dtypes from the tensors), then `op` over them.
pub fn graph_for(op: Op, args: &[Tensor]) -> Result<(Graph, NodeId), GraphError> {
    let mut g = Graph::new();
    let ids: Vec<NodeId> = args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            g.input(&format!("a{i}"), a.dtype(), Shape::fixed(a.shape()))
                .expect("fresh input name")
        })
        .collect();
    let y = g.add(op, &ids, meta())?;
    g.set_output("y", y).expect("fresh output");
    Ok((g, y))
}

pub fn named_inputs(args: &[Tensor]) -> HashMap<String, Tensor> {
    args.iter()
        .enumerate()
        .map(|(i, a)| (format!("a{i}"), a.clone()))
        .collect()
}

/// Runs `op` on fixed-shape inputs. Panics if shape inference refuses the operands, and checks
/// that the result has the statically inferred shape and dtype.
pub fn try_run_op(op: Op, args: &[Tensor]) -> Result<Tensor, InterpError> {
    let (g, y) =
        graph_for(op.clone(), args).unwrap_or_else(|e| panic!("{op} refused operands: {e}"));
    let mut outs = interp::run(&g, &named_inputs(args), &[])?;
    let out = outs.remove("y").expect("output y");
    let ty = &g.node(y).ty;
    assert_eq!(
        ty.shape,
        Shape::fixed(out.shape()),
        "{op}: static shape vs run-time shape"
    );
    assert_eq!(
        ty.dtype,
        out.dtype(),
        "{op}: static dtype vs run-time dtype"
    );
    Ok(out)
}

#[track_caller]
pub fn run_op(op: Op, args: &[Tensor]) -> Tensor {
    try_run_op(op.clone(), args).unwrap_or_else(|e| panic!("{op} failed at run time: {e}"))
}

/// The shape-inference error `op` gives on operands of these types (panics if accepted).
#[track_caller]
pub fn shape_err(op: Op, ins: &[(Shape, DType)]) -> attnopt_ir::infer::ShapeError {
    let mut g = Graph::new();
    let ids: Vec<NodeId> = ins
        .iter()
        .enumerate()
        .map(|(i, (s, d))| g.input(&format!("a{i}"), *d, s.clone()).unwrap())
        .collect();
    match g.add(op.clone(), &ids, meta()) {
        Err(GraphError::Shape { source, .. }) => source,
        Err(e) => panic!("{op}: expected a shape error, got {e:?}"),
        Ok(id) => panic!("{op}: accepted, typed {:?}", g.node(id).ty),
    }
}

/// The static shape `op` gets on operands of these types (panics if refused).
#[track_caller]
pub fn shape_ok(op: Op, ins: &[(Shape, DType)]) -> attnopt_ir::infer::Typed {
    let mut g = Graph::new();
    let ids: Vec<NodeId> = ins
        .iter()
        .enumerate()
        .map(|(i, (s, d))| g.input(&format!("a{i}"), *d, s.clone()).unwrap())
        .collect();
    match g.add(op.clone(), &ids, meta()) {
        Ok(id) => g.node(id).ty.clone(),
        Err(e) => panic!("{op}: refused: {e}"),
    }
}

pub fn f(s: Shape) -> (Shape, DType) {
    (s, DType::F32)
}

pub fn i(s: Shape) -> (Shape, DType) {
    (s, DType::I64)
}

pub fn fixed(d: &[usize]) -> Shape {
    Shape::fixed(d)
}

pub fn bind(b: usize, n: usize) -> Bindings {
    Bindings::new(b, n)
}

/// Tiny deterministic generator for test data (xorshift), so no test depends on a seed file.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        t(shape, &(0..n).map(|_| self.unit()).collect::<Vec<_>>())
    }
}
