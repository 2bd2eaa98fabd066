//! Random small graphs for property tests, shared by `crates/rewrite/tests/props.rs` (exact
//! optimisation keeps values, on the interpreter) and `tests/pipeline_props.rs` (the whole
//! pipeline: exact optimisation, then the CPU backend, against the interpreter on the
//! original). Built from the op set (elementwise, products with weights, layout, head
//! split/merge, softmax / Hydra / linear attention written out as primitives, normalisation,
//! masks, prefix sums, reductions), all in layer 0 with one output named `out`.
#![allow(dead_code)]

use std::collections::HashMap;

use attnopt_ir::builder::{Attention, AttentionKind, Builder};
use attnopt_ir::{
    Binary, Bindings, DType, Dim, Graph, NodeId, Op, Reduce, Role, RopeStyle, Scalar, Shape, Sym,
    Tensor, Unary, Weight,
};
use proptest::prelude::*;

pub const B: Dim = Dim::Sym(Sym::Batch);
pub const N: Dim = Dim::Sym(Sym::Seq);

/// SplitMix64 for weight and input values.
pub struct Rng(u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The graph's run-time inputs.
#[derive(Debug, Clone, Copy)]
pub enum Inputs {
    /// `x`, `y`: `[B, N, 8]`.
    Symbolic,
    /// `x`, `y`: `[B, 3, 8]` (a fixed token axis, which the optimizer generalises).
    Fixed,
    /// `x`: `[B, 3, 8]`, `y`: `[B, 1, 8]` (different fixed token counts).
    Mixed,
    /// `x`: `[B, N, 8]`, `y`: `[B, 1, 8]` (a single-token second input).
    OneToken,
}

/// One construction step; `usize` fields pick operands among the values made so far
/// (0 = the latest), other fields pick attributes.
#[derive(Debug, Clone)]
pub enum Step {
    Unary(usize, u8),
    Binary(usize, usize, u8),
    Scale(usize, u8),
    AddScalar(usize),
    /// `x · W` with a new weight `[D, 4 or 8]`.
    Linear(usize, bool),
    /// `x + b` with a new weight of the last dim, or of the whole trailing fixed shape.
    AddWeight(usize, bool),
    MatMul(usize, usize),
    /// `a · bᵀ` over the last two axes.
    MatMulT(usize, usize),
    Permute(usize, u8),
    /// Splits the last axis in two, or merges the last two.
    Reshape(usize),
    SplitHeads(usize, u8),
    MergeHeads(usize),
    Softmax(usize, u8),
    L2Normalize(usize, u8),
    Tril(usize),
    CausalMask(usize),
    CumSum(usize, u8),
    ReduceSum(usize, u8, bool),
    Unsqueeze(usize, u8),
    Slice(usize),
    /// Attention with queries from one value and keys/values from another: kind (softmax,
    /// Hydra, linear), heads choice, causal, rope.
    Attention(usize, usize, u8, u8, bool, bool),
    /// A short chain that some rule rewrites (split then merge, a permutation and its
    /// inverse, two biases, ...): which one, operands, and an attribute choice.
    Idiom(u8, usize, usize, u8),
}

pub fn step() -> impl Strategy<Value = Step> {
    let v = || 0usize..6;
    let a = any::<u8>;
    prop_oneof![
        1 => (v(), a()).prop_map(|(x, k)| Step::Unary(x, k)),
        1 => (v(), v(), a()).prop_map(|(x, y, k)| Step::Binary(x, y, k)),
        1 => (v(), a()).prop_map(|(x, k)| Step::Scale(x, k)),
        1 => v().prop_map(Step::AddScalar),
        1 => (v(), any::<bool>()).prop_map(|(x, w)| Step::Linear(x, w)),
        1 => (v(), any::<bool>()).prop_map(|(x, f)| Step::AddWeight(x, f)),
        1 => (v(), v()).prop_map(|(x, y)| Step::MatMul(x, y)),
        1 => (v(), v()).prop_map(|(x, y)| Step::MatMulT(x, y)),
        1 => (v(), a()).prop_map(|(x, k)| Step::Permute(x, k)),
        1 => v().prop_map(Step::Reshape),
        1 => (v(), a()).prop_map(|(x, k)| Step::SplitHeads(x, k)),
        1 => v().prop_map(Step::MergeHeads),
        1 => (v(), a()).prop_map(|(x, k)| Step::Softmax(x, k)),
        1 => (v(), a()).prop_map(|(x, k)| Step::L2Normalize(x, k)),
        1 => v().prop_map(Step::Tril),
        1 => v().prop_map(Step::CausalMask),
        1 => (v(), a()).prop_map(|(x, k)| Step::CumSum(x, k)),
        1 => (v(), a(), any::<bool>()).prop_map(|(x, k, d)| Step::ReduceSum(x, k, d)),
        1 => (v(), a()).prop_map(|(x, k)| Step::Unsqueeze(x, k)),
        1 => v().prop_map(Step::Slice),
        3 => (v(), v(), a(), a(), any::<bool>(), any::<bool>())
            .prop_map(|(q, kv, k, h, c, r)| Step::Attention(q, kv, k, h, c, r)),
        5 => (a(), v(), v(), a()).prop_map(|(i, x, y, k)| Step::Idiom(i, x, y, k)),
    ]
}

/// Builds graphs step by step; a step whose operands do not fit is skipped.
pub struct Gen {
    b: Builder,
    rng: Rng,
    values: Vec<NodeId>,
    weights: usize,
}

impl Gen {
    pub fn pick(&self, i: usize) -> NodeId {
        self.values[self.values.len() - 1 - i % self.values.len()]
    }

    pub fn dims(&self, x: NodeId) -> Vec<Dim> {
        self.b.graph.node(x).ty.shape.0.clone()
    }

    pub fn weight(&mut self, dims: &[usize]) -> NodeId {
        let n: usize = dims.iter().product();
        let s = 1.0 / (*dims.first().unwrap_or(&1) as f32).sqrt();
        let values: Vec<f32> = (0..n).map(|_| s * self.rng.f32()).collect();
        self.weights += 1;
        let name = format!("w{}", self.weights);
        self.b
            .graph
            .weight(Weight::from_f32(name, dims.to_vec(), &values).unwrap())
    }

    pub fn op(&mut self, op: Op, args: &[NodeId]) -> Option<NodeId> {
        self.b.op(op, args, Role::Other).ok()
    }

    pub fn last_fixed(&self, x: NodeId) -> Option<usize> {
        self.dims(x).last().and_then(|d| d.fixed())
    }

    pub fn axis(&self, x: NodeId, k: u8) -> usize {
        k as usize % self.dims(x).len().max(1)
    }

    /// Applies `s`; the value it made, if it fit.
    pub fn apply(&mut self, s: &Step) -> Option<NodeId> {
        let unary = [
            Unary::Tanh,
            Unary::Sigmoid,
            Unary::Relu,
            Unary::Neg,
            Unary::Elu,
            Unary::Gelu,
            Unary::Silu,
            Unary::Square,
        ];
        let binary = [Binary::Add, Binary::Sub, Binary::Mul, Binary::Max];
        let scales = [0.5f32, -2.0, 0.125, 3.0];
        match *s {
            Step::Unary(x, k) => {
                let u = unary[k as usize % unary.len()];
                self.op(Op::Unary(u), &[self.pick(x)])
            }
            Step::Binary(x, y, k) => {
                let f = binary[k as usize % binary.len()];
                self.op(Op::Binary(f), &[self.pick(x), self.pick(y)])
            }
            Step::Scale(x, k) => {
                let c = scales[k as usize % scales.len()];
                self.op(Op::Scale(Scalar::new(c)), &[self.pick(x)])
            }
            Step::AddScalar(x) => self.op(Op::AddScalar(Scalar::new(1.0)), &[self.pick(x)]),
            Step::Linear(x, wide) => {
                let x = self.pick(x);
                let d = self.last_fixed(x)?;
                let w = self.weight(&[d, if wide { 8 } else { 4 }]);
                self.op(Op::MatMul, &[x, w])
            }
            Step::AddWeight(x, full) => {
                let x = self.pick(x);
                let dims = self.dims(x);
                let fixed: Vec<usize> = dims.iter().rev().map_while(|d| d.fixed()).collect();
                let shape: Vec<usize> = if full {
                    fixed.into_iter().rev().collect()
                } else {
                    fixed.first().copied().into_iter().collect()
                };
                if shape.is_empty() {
                    return None;
                }
                let b = self.weight(&shape);
                self.op(Op::Binary(Binary::Add), &[x, b])
            }
            Step::MatMul(x, y) => self.op(Op::MatMul, &[self.pick(x), self.pick(y)]),
            Step::MatMulT(x, y) => {
                let y = self.pick(y);
                let r = self.dims(y).len();
                if r < 2 {
                    return None;
                }
                let mut p: Vec<usize> = (0..r).collect();
                p.swap(r - 2, r - 1);
                let yt = self.op(Op::Permute(p), &[y])?;
                self.op(Op::MatMul, &[self.pick(x), yt])
            }
            Step::Permute(x, k) => {
                let x = self.pick(x);
                let r = self.dims(x).len();
                let mut p: Vec<usize> = (0..r).collect();
                // A random permutation from k (Fisher–Yates on its bits).
                let mut bits = k as usize;
                for i in (1..r).rev() {
                    p.swap(i, bits % (i + 1));
                    bits /= i + 1;
                }
                self.op(Op::Permute(p), &[x])
            }
            Step::Reshape(x) => {
                let x = self.pick(x);
                let mut dims = self.dims(x);
                let r = dims.len();
                match dims.last().and_then(|d| d.fixed()) {
                    Some(d) if d % 2 == 0 && d > 2 => {
                        dims[r - 1] = Dim::Fixed(2);
                        dims.push(Dim::Fixed(d / 2));
                    }
                    _ if r >= 2 => {
                        let (a, b) = (dims[r - 2].fixed()?, dims[r - 1].fixed()?);
                        dims.truncate(r - 2);
                        dims.push(Dim::Fixed(a * b));
                    }
                    _ => return None,
                }
                self.op(Op::Reshape(Shape(dims)), &[x])
            }
            Step::SplitHeads(x, k) => {
                let x = self.pick(x);
                let d = self.last_fixed(x)?;
                let heads = [1, 2, d][k as usize % 3];
                self.op(Op::SplitHeads { heads }, &[x])
            }
            Step::MergeHeads(x) => self.op(Op::MergeHeads, &[self.pick(x)]),
            Step::Softmax(x, k) => {
                let x = self.pick(x);
                let axis = self.axis(x, k);
                self.op(Op::Softmax { axis }, &[x])
            }
            Step::L2Normalize(x, k) => {
                let x = self.pick(x);
                let axis = self.axis(x, k);
                let eps = Scalar::new(1e-12);
                self.op(Op::L2Normalize { axis, eps }, &[x])
            }
            Step::Tril(x) => self.op(Op::Tril, &[self.pick(x)]),
            Step::CausalMask(x) => {
                // Masked scores feed a softmax, as in attention (a fully masked row is zeros).
                let m = self.op(Op::CausalMask, &[self.pick(x)])?;
                let axis = self.dims(m).len() - 1;
                self.op(Op::Softmax { axis }, &[m])
            }
            Step::CumSum(x, k) => {
                let x = self.pick(x);
                let axis = self.axis(x, k);
                self.op(Op::CumSum { axis }, &[x])
            }
            Step::ReduceSum(x, k, keep_dim) => {
                let x = self.pick(x);
                let axis = self.axis(x, k);
                let kind = Reduce::Sum;
                self.op(
                    Op::Reduce {
                        kind,
                        axis,
                        keep_dim,
                    },
                    &[x],
                )
            }
            Step::Unsqueeze(x, k) => {
                let x = self.pick(x);
                let axis = k as usize % (self.dims(x).len() + 1);
                self.op(Op::Unsqueeze { axis }, &[x])
            }
            Step::Slice(x) => {
                let x = self.pick(x);
                let d = self.last_fixed(x)?;
                if d < 2 {
                    return None;
                }
                let axis = self.dims(x).len() - 1;
                let (start, end) = (d / 4, d / 4 + d / 2);
                self.op(
                    Op::Slice {
                        axis,
                        start,
                        end: Dim::Fixed(end),
                    },
                    &[x],
                )
            }
            Step::Idiom(which, x, y, k) => self.idiom(which, self.pick(x), self.pick(y), k),
            Step::Attention(qi, kvi, kind, h, causal, rope) => {
                let (xq, xkv) = (self.pick(qi), self.pick(kvi));
                // Not over an empty feature axis (no head count divides it).
                let d = self.last_fixed(xq).filter(|&d| d > 0)?;
                if self.dims(xq).len() != 3 || self.dims(xkv).len() != 3 {
                    return None;
                }
                let heads = [1, 2, d][h as usize % 3];
                let kind = match kind % 3 {
                    0 => AttentionKind::Softmax,
                    1 => AttentionKind::Hydra,
                    _ => AttentionKind::LinearElu { eps: 1e-6 },
                };
                let proj = |g: &mut Gen, x: NodeId| {
                    let dx = g.last_fixed(x)?;
                    let w = g.weight(&[dx, d]);
                    g.op(Op::MatMul, &[x, w])
                };
                let q = proj(self, xq)?;
                let k = proj(self, xkv)?;
                let v = proj(self, xkv)?;
                let a = Attention {
                    kind,
                    heads,
                    kv_heads: heads,
                    head_dim: d / heads,
                    causal,
                    padding_mask: None,
                    rope: (rope && (d / heads) % 2 == 0 && kind == AttentionKind::Softmax)
                        .then_some((10000.0, RopeStyle::Half)),
                    scale: 1.0 / ((d / heads) as f32).sqrt(),
                };
                self.b.attention(q, k, v, &a).ok()
            }
        }
    }
}

impl Gen {
    /// See [`Step::Idiom`].
    pub fn idiom(&mut self, which: u8, x: NodeId, y: NodeId, k: u8) -> Option<NodeId> {
        let dims = self.dims(x);
        let r = dims.len();
        let d = self.last_fixed(x);
        let heads = d.map(|d| [1, 2, d][k as usize % 3]);
        match which % 9 {
            0 => {
                let h = self.op(Op::SplitHeads { heads: heads? }, &[x])?;
                self.op(Op::MergeHeads, &[h])
            }
            1 => {
                let heads = dims.get(1)?.fixed()?;
                let m = self.op(Op::MergeHeads, &[x])?;
                self.op(Op::SplitHeads { heads }, &[m])
            }
            2 => {
                // A rotation of the axes and its inverse.
                let s = 1 + k as usize % r.saturating_sub(1).max(1);
                let p: Vec<usize> = (0..r).map(|i| (i + s) % r).collect();
                let mut inv = vec![0; r];
                for (i, &j) in p.iter().enumerate() {
                    inv[j] = i;
                }
                let a = self.op(Op::Permute(p), &[x])?;
                self.op(Op::Permute(inv), &[a])
            }
            3 => {
                let d = d?;
                let b1 = self.weight(&[d]);
                let b2 = self.weight(&[1, d]);
                let a = self.op(Op::Binary(Binary::Add), &[x, b1])?;
                self.op(Op::Binary(Binary::Add), &[a, b2])
            }
            4 => {
                let mut s1 = dims.clone();
                let d = d.filter(|d| d % 2 == 0 && *d > 2)?;
                s1[r - 1] = Dim::Fixed(2);
                s1.push(Dim::Fixed(d / 2));
                let mut s2 = dims.clone();
                s2[r - 1] = Dim::Fixed(d / 2);
                s2.push(Dim::Fixed(2));
                let a = self.op(Op::Reshape(Shape(s1)), &[x])?;
                let b = self.op(Op::Reshape(Shape(s2)), &[a])?;
                let back = if k & 1 == 0 { dims } else { self.dims(b) };
                self.op(Op::Reshape(Shape(back)), &[b])
            }
            5 => {
                let w = self.weight(&[d?, 4]);
                let m = self.op(Op::MatMul, &[x, w])?;
                self.op(Op::Scale(Scalar::new(0.25)), &[m])
            }
            6 => {
                let h = self.op(Op::SplitHeads { heads: heads? }, &[x])?;
                let op = if k & 1 == 0 {
                    Op::CumSum { axis: 2 }
                } else {
                    Op::Reduce {
                        kind: Reduce::Sum,
                        axis: 2,
                        keep_dim: true,
                    }
                };
                let s = self.op(op, &[h])?;
                self.op(Op::MergeHeads, &[s])
            }
            7 => {
                let heads = heads?;
                let a = self.op(Op::SplitHeads { heads }, &[x])?;
                let b = self.op(Op::SplitHeads { heads }, &[y])?;
                let m = self.op(Op::Binary(Binary::Mul), &[a, b])?;
                self.op(Op::MergeHeads, &[m])
            }
            _ => {
                let b = self.weight(&[d?]);
                let a = self.op(Op::Binary(Binary::Add), &[x, b])?;
                let s = self.op(Op::Scale(Scalar::new(-0.5)), &[a])?;
                let e = d? / 2;
                self.op(
                    Op::Slice {
                        axis: r - 1,
                        start: 0,
                        end: Dim::Fixed(e),
                    },
                    &[s],
                )
            }
        }
    }
}

/// The graph of `steps` over `inputs`, all in layer 0, its output named `out`.
pub fn build(inputs: Inputs, steps: &[Step], seed: u64) -> Graph {
    let mut b = Builder::new();
    let (tx, ty) = match inputs {
        Inputs::Symbolic => (N, N),
        Inputs::Fixed => (Dim::Fixed(3), Dim::Fixed(3)),
        Inputs::Mixed => (Dim::Fixed(3), Dim::Fixed(1)),
        Inputs::OneToken => (N, Dim::Fixed(1)),
    };
    let x = b
        .graph
        .input("x", DType::F32, Shape(vec![B, tx, Dim::Fixed(8)]))
        .unwrap();
    let y = b
        .graph
        .input("y", DType::F32, Shape(vec![B, ty, Dim::Fixed(8)]))
        .unwrap();
    b.set_layer(Some(0));
    let mut g = Gen {
        b,
        rng: Rng(seed),
        values: vec![y, x],
        weights: 0,
    };
    let mut made = false;
    for s in steps {
        if let Some(v) = g.apply(s) {
            g.values.push(v);
            made = true;
        }
    }
    let mut out = *g.values.last().unwrap();
    if !made {
        out = g.op(Op::Unary(Unary::Tanh), &[out]).unwrap();
    }
    let mut graph = g.b.finish();
    graph.set_output("out", out).unwrap();
    graph
}

/// Random values for `g`'s inputs: batch 2, 5 tokens where the token axis is symbolic.
pub fn random_inputs(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Rng(seed);
    let b = Bindings::new(2, 5);
    g.inputs()
        .iter()
        .map(|(name, id)| {
            let shape = g.node(*id).ty.shape.eval(&b).unwrap();
            let n = shape.iter().product();
            let v = (0..n).map(|_| rng.f32()).collect();
            (name.clone(), Tensor::f32(shape, v).unwrap())
        })
        .collect()
}

pub fn inputs_mode() -> impl Strategy<Value = Inputs> {
    prop_oneof![
        Just(Inputs::Symbolic),
        Just(Inputs::Fixed),
        Just(Inputs::Mixed),
        Just(Inputs::OneToken),
    ]
}

/// Whether `got` agrees with `want` (the interpreter's value of `out`) within the tolerance
/// the property tests use: max-abs difference ≤ 1e-4 of the larger of `want`'s max-abs and
/// 1e-3, NaN never agreeing. The error says how it differs.
pub fn agree(want: &Tensor, got: &Tensor) -> Result<(), String> {
    let err = got
        .max_abs_diff(want)
        .ok_or_else(|| "shapes differ".to_string())?;
    let scale = want.max_abs();
    if err.is_nan() || err > 1e-4 * scale.max(1e-3) {
        return Err(format!("differs by {err:e} (values up to {scale:e})"));
    }
    Ok(())
}
