//! The text form read back: print → parse → print is the identity (on hand-built graphs that use
//! every operator and on random graphs), parsed graphs compute bit-identical results, and every
//! kind of malformed text is a `ParseError` naming its line.

mod common;
#[path = "../../../tests/support/proptest_config.rs"]
mod proptest_config;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use attnopt_ir::builder::{Attention, AttentionKind, Builder, WeightLayout};
use attnopt_ir::interp;
use attnopt_ir::parse::{parse_graph, ParseError};
use attnopt_ir::{
    Binary, DType, Dim, Graph, NodeId, NodeMeta, Op, Reduce, Role, RopeStyle, Scalar, Shape, Sym,
    Tensor, Unary, Weight, BATCH, SEQ,
};
use common::*;
use proptest::prelude::*;

// ---------------------------------------------------------------- helpers

fn w(name: &str, shape: &[usize]) -> Weight {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    Weight::from_f32(name, shape.to_vec(), &vals).unwrap()
}

/// A weight stored as bf16 (the upper half of each f32).
fn w_bf16(name: &str, shape: &[usize]) -> Weight {
    let n: usize = shape.iter().product();
    let bytes: Vec<u8> = (0..n)
        .flat_map(|i| (((i as f32 * 0.21).cos().to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    let len = bytes.len();
    Weight::new(name, DType::BF16, shape.to_vec(), Arc::new(bytes), 0..len).unwrap()
}

/// A resolver over the weights of `g` (what a checkpoint would hand back).
fn weights_of(g: &Graph) -> HashMap<String, Weight> {
    g.weights()
        .iter()
        .map(|w| (w.name().to_string(), w.clone()))
        .collect()
}

fn parse_with(text: &str, weights: &HashMap<String, Weight>) -> Result<Graph, ParseError> {
    parse_graph(text, &mut |name: &str| {
        weights
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no tensor named `{name}` in the checkpoint"))
    })
}

/// Prints `g`, parses it back and checks the reprint is identical; returns the parsed graph.
#[track_caller]
fn roundtrip(g: &Graph) -> Graph {
    let text = g.to_string();
    let parsed = parse_with(&text, &weights_of(g)).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed.to_string(), text);
    parsed
}

/// Bitwise equality of floats (any NaN equals any NaN: payloads need not survive).
fn same_tensor(a: &Tensor, b: &Tensor) -> bool {
    if a.shape() != b.shape() || a.dtype() != b.dtype() {
        return false;
    }
    match (a.as_f32(), b.as_f32()) {
        (Some(x), Some(y)) => x
            .iter()
            .zip(y)
            .all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())),
        _ => a.as_i64() == b.as_i64(),
    }
}

/// Both graphs give the same outputs (or the same error) on `inputs`.
fn same_results(a: &Graph, b: &Graph, inputs: &HashMap<String, Tensor>) -> Result<(), String> {
    match (interp::run(a, inputs, &[]), interp::run(b, inputs, &[])) {
        (Ok(x), Ok(y)) => {
            if x.len() != y.len() {
                return Err(format!("{} outputs vs {}", x.len(), y.len()));
            }
            for (name, t) in &x {
                let u = y
                    .get(name)
                    .ok_or_else(|| format!("output {name:?} missing"))?;
                if !same_tensor(t, u) {
                    return Err(format!("output {name:?} differs: {t:?} vs {u:?}"));
                }
            }
            Ok(())
        }
        (Err(e), Err(f)) if e.to_string() == f.to_string() => Ok(()),
        (x, y) => Err(format!(
            "one run failed: {:?} vs {:?}",
            x.map(|_| ()),
            y.map(|_| ())
        )),
    }
}

// ---------------------------------------------------------------- every operator

/// A two-layer model plus a tail that uses every operator at least once.
fn every_op_model() -> Graph {
    let mut b = Builder::new();
    let ids = b
        .graph
        .input("input_ids", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let mask = b
        .graph
        .input("attention_mask", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let feats = b
        .graph
        .input("feats", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(8)]))
        .unwrap();
    let emb = b.graph.weight(w_bf16("embed \"tokens\"", &[16, 8]));
    let pos_table = b.graph.weight(w("pos", &[32, 8]));
    let tok = b.op(Op::Gather, &[emb, ids], Role::Embedding).unwrap();
    let pos = b.positions(pos_table).unwrap(); // slice with end=N
    let mut x = b.add(tok, pos, Role::Embedding).unwrap();
    x = b.add(x, feats, Role::Embedding).unwrap();
    let kinds = [
        AttentionKind::Softmax,
        AttentionKind::Softmax,
        AttentionKind::Hydra,
        AttentionKind::LinearElu { eps: 1e-6 },
    ];
    for (layer, kind) in kinds.into_iter().enumerate() {
        let l = layer as u32;
        b.set_layer(Some(l));
        let g = b.graph.weight(w(&format!("l{l}.ln.g"), &[8]));
        let beta = b.graph.weight(w(&format!("l{l}.ln.b"), &[8]));
        let h = b.layer_norm(x, g, beta, 1e-5, Role::Norm).unwrap();
        let wq = b.graph.weight(w(&format!("l{l}.q"), &[8, 8]));
        // Softmax layers use grouped-query attention (kv width 4), the others full width.
        let kv = if matches!(kind, AttentionKind::Softmax) {
            4
        } else {
            8
        };
        let wk = b.graph.weight(w(&format!("l{l}.k"), &[kv, 8]));
        let wv = b.graph.weight(w(&format!("l{l}.v"), &[kv, 8]));
        let bq = b.graph.weight(w(&format!("l{l}.q.bias"), &[8]));
        let q = b
            .linear(h, wq, Some(bq), WeightLayout::InOut, Role::QProj)
            .unwrap();
        let k = b
            .linear(h, wk, None, WeightLayout::OutIn, Role::KProj)
            .unwrap();
        let v = b
            .linear(h, wv, None, WeightLayout::OutIn, Role::VProj)
            .unwrap();
        let (heads, kv_heads, head_dim) = match kind {
            AttentionKind::Softmax => (4, 2, 2),
            _ => (2, 2, 4),
        };
        let att = Attention {
            kind,
            heads,
            kv_heads,
            head_dim,
            causal: layer != 2,
            padding_mask: (layer == 0).then_some(mask),
            rope: match layer {
                0 => Some((10000.0, RopeStyle::Half)),
                1 => Some((500000.0, RopeStyle::Interleaved)),
                _ => None,
            },
            scale: 0.5f32.sqrt(),
        };
        let c = b.attention(q, k, v, &att).unwrap();
        let wo = b.graph.weight(w(&format!("l{l}.o"), &[8, 8]));
        let o = b
            .linear(c, wo, None, WeightLayout::OutIn, Role::AttnOutProj)
            .unwrap();
        x = b.add(x, o, Role::Residual).unwrap();
        let g2 = b.graph.weight(w(&format!("l{l}.ln2.g"), &[8]));
        let h = b.rms_norm(x, g2, 1e-6, Role::Norm).unwrap();
        let up = b.graph.weight(w(&format!("l{l}.up"), &[16, 8]));
        let down = b.graph.weight(w(&format!("l{l}.down"), &[8, 16]));
        let acts = [Unary::Gelu, Unary::Silu, Unary::GeluTanh, Unary::Relu];
        let m = b
            .mlp(
                h,
                (up, None),
                acts[layer],
                (down, None),
                WeightLayout::OutIn,
            )
            .unwrap();
        x = b.add(x, m, Role::Residual).unwrap();
    }

    // The tail: everything the layers did not use, outside the blocks.
    b.set_layer(None);
    let mut outs = vec![("last_hidden_state".to_string(), x)];
    let small = b
        .op(Op::Scale(Scalar::new(0.125)), &[x], Role::Other)
        .unwrap();
    let mut t = small;
    for u in Unary::ALL {
        t = b.unary(u, t, Role::MlpAct).unwrap();
    }
    outs.push(("unaries".into(), t));
    for bin in Binary::ALL {
        let y = b.op(Op::Binary(bin), &[small, x], Role::Other).unwrap();
        outs.push((format!("binary_{bin:?}"), y));
    }
    // Reshape and expand with symbolic dims.
    let r = b
        .op(
            Op::Reshape(Shape(vec![BATCH, SEQ, Dim::Fixed(2), Dim::Fixed(4)])),
            &[x],
            Role::Other,
        )
        .unwrap();
    let r = b
        .op(
            Op::Reshape(Shape(vec![SEQ, BATCH, Dim::Fixed(8)])),
            &[r],
            Role::Other,
        )
        .unwrap();
    outs.push(("reshaped".into(), r));
    let gamma = b.graph.weight(w("final.g", &[8]));
    let e = b
        .expand(gamma, Shape(vec![BATCH, SEQ, Dim::Fixed(8)]), Role::Other)
        .unwrap();
    outs.push(("expanded".into(), e));
    // Casts: to i64 and back, and to a storage dtype.
    let ci = b.op(Op::Cast(DType::I64), &[x], Role::Other).unwrap();
    let cf = b.op(Op::Cast(DType::F32), &[ci], Role::Other).unwrap();
    let cb = b.op(Op::Cast(DType::BF16), &[cf], Role::Other).unwrap();
    outs.push(("cast".into(), cb));
    // Reductions, both keep_dim settings, and scans.
    for (i, kind) in Reduce::ALL.into_iter().enumerate() {
        for keep_dim in [true, false] {
            let y = b
                .op(
                    Op::Reduce {
                        kind,
                        axis: i % 3,
                        keep_dim,
                    },
                    &[x],
                    Role::Other,
                )
                .unwrap();
            outs.push((format!("reduce_{kind:?}_{keep_dim}"), y));
        }
    }
    let cs = b.op(Op::CumSum { axis: 1 }, &[x], Role::Other).unwrap();
    let l2 = b
        .op(
            Op::L2Normalize {
                axis: 2,
                eps: Scalar::new(1e-12),
            },
            &[cs],
            Role::Other,
        )
        .unwrap();
    outs.push(("l2".into(), l2));
    // Concat of three along a fixed axis, then a fixed slice out of it.
    let c3 = b
        .op(Op::Concat { axis: 2 }, &[x, small, l2], Role::Other)
        .unwrap();
    let sl = b
        .op(
            Op::Slice {
                axis: 2,
                start: 5,
                end: Dim::Fixed(19),
            },
            &[c3],
            Role::Other,
        )
        .unwrap();
    outs.push(("concat_slice".into(), sl));
    // The sparse layers' operators: windows of [B, N, 2, 4] and a one-hot over blocks of 4.
    let x4 = b
        .op(
            Op::Reshape(Shape(vec![BATCH, SEQ, Dim::Fixed(2), Dim::Fixed(4)])),
            &[x],
            Role::Other,
        )
        .unwrap();
    let win = b
        .op(
            Op::ConvWindows {
                length: 3,
                width: 3,
            },
            &[x4],
            Role::Other,
        )
        .unwrap();
    outs.push(("conv_windows".into(), win));
    let oh = b
        .op(Op::BlockOneHot { block: 4 }, &[x], Role::Other)
        .unwrap();
    outs.push(("block_onehot".into(), oh));
    // Scalars that must survive bit-exactly.
    for (i, c) in [
        -0.0f32,
        1e-12,
        f32::MIN_POSITIVE,
        1e-45, // subnormal
        f32::MAX,
        0.1,
        -1.0 / 3.0,
        f32::NEG_INFINITY,
    ]
    .into_iter()
    .enumerate()
    {
        let y = b
            .op(Op::AddScalar(Scalar::new(c)), &[small], Role::Other)
            .unwrap();
        outs.push((format!("add_scalar_{i}"), y));
    }
    // Attention pieces on their own: split/merge, repeat, tril, causal and padding masks.
    let sp = b
        .op(Op::SplitHeads { heads: 2 }, &[x], Role::QProj)
        .unwrap();
    let rep = b
        .op(Op::RepeatHeads { times: 3 }, &[sp], Role::KProj)
        .unwrap();
    let pt = b
        .op(Op::Permute(vec![0, 1, 3, 2]), &[rep], Role::AttnScores)
        .unwrap();
    let s = b.op(Op::MatMul, &[rep, pt], Role::AttnScores).unwrap();
    let tr = b.op(Op::Tril, &[s], Role::AttnMask).unwrap();
    let cm = b.op(Op::CausalMask, &[tr], Role::AttnMask).unwrap();
    let pm = b.op(Op::PaddingMask, &[cm, mask], Role::AttnMask).unwrap();
    let sm = b
        .op(Op::Softmax { axis: 3 }, &[pm], Role::AttnProbs)
        .unwrap();
    let ctx = b.op(Op::MatMul, &[sm, rep], Role::AttnContext).unwrap();
    let ctx = b
        .op(Op::Unsqueeze { axis: 3 }, &[ctx], Role::AttnContext)
        .unwrap();
    let ctx = b
        .op(Op::Squeeze { axis: 3 }, &[ctx], Role::AttnContext)
        .unwrap();
    let mh = b.op(Op::MergeHeads, &[ctx], Role::AttnContext).unwrap();
    outs.push(("scores".into(), mh));
    for (name, id) in outs {
        b.graph.set_output(&name, id).unwrap();
    }
    b.finish()
}

fn every_op_inputs(bsz: usize, n: usize, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Gen::new(seed);
    let ids: Vec<i64> = (0..bsz * n).map(|_| (rng.next_u64() % 16) as i64).collect();
    let mask: Vec<i64> = (0..bsz * n)
        .map(|i| {
            if i % n == 0 {
                1
            } else {
                (rng.next_u64() % 2) as i64
            }
        })
        .collect();
    HashMap::from([
        ("input_ids".to_string(), ti(&[bsz, n], &ids)),
        ("attention_mask".to_string(), ti(&[bsz, n], &mask)),
        ("feats".to_string(), rng.tensor(&[bsz, n, 8])),
    ])
}

#[test]
fn every_operator_roundtrips_and_computes_the_same() {
    let g = every_op_model();
    let used: BTreeSet<&str> = g.petgraph().node_weights().map(|n| n.op.name()).collect();
    let all: BTreeSet<&str> = Op::kinds().iter().map(|k| k.name()).collect();
    let missing: Vec<_> = all.difference(&used).collect();
    assert!(missing.is_empty(), "the model does not use {missing:?}");
    let text = g.to_string();
    // Both rope styles, a symbolic slice, symbolic reshape/expand and a 3-way concat are in it.
    for needle in [
        "style=Half",
        "style=Interleaved",
        "end=N}",
        "reshape{shape=[B, N, 2, 4]}",
        "reshape{shape=[N, B, 8]}",
        "expand{shape=[B, N, 8]}",
        "cast{dtype=bf16}",
        "keep_dim=true",
        "keep_dim=false",
        "weight \"embed \\\"tokens\\\"\" bf16 : [16, 8] f32 @- weight",
        "add_scalar{-inf}",
        "add_scalar{1e-45}",
        "add_scalar{-0.0}",
        "l2_normalize{axis=2, eps=1e-12}",
        "conv_windows{length=3, width=3}",
        "block_onehot{block=4}",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("%")
            && l.contains("concat{axis=2} %")
            && l.matches('%').count() == 4),
        "no 3-way concat"
    );

    let p = roundtrip(&g);
    assert_eq!(p.node_count(), g.node_count());
    assert_eq!(p.inputs().len(), g.inputs().len());
    assert_eq!(p.outputs().len(), g.outputs().len());
    // Same operators (scalars compared by bits), types and metas, node for node.
    for (a, b) in g.topo_order().into_iter().zip(p.topo_order()) {
        let (na, nb) = (g.node(a), p.node(b));
        match (&na.op, &nb.op) {
            (Op::Weight(x), Op::Weight(y)) => {
                assert_eq!(g.weight_data(*x).name(), p.weight_data(*y).name())
            }
            (x, y) => assert_eq!(x, y),
        }
        assert_eq!(na.ty, nb.ty);
        assert_eq!(na.meta, nb.meta);
    }
    for (bsz, n, seed) in [(2, 5, 1), (1, 1, 2), (3, 7, 3), (0, 4, 4), (2, 0, 5)] {
        let inputs = every_op_inputs(bsz, n, seed);
        interp::run(&g, &inputs, &[]).unwrap();
        same_results(&g, &p, &inputs).unwrap();
    }
}

#[test]
fn reparsed_text_is_a_fixed_point() {
    let g = every_op_model();
    let p = roundtrip(&g);
    let q = roundtrip(&p);
    assert_eq!(q.to_string(), g.to_string());
}

#[test]
fn awkward_names_are_quoted_and_read_back_exactly() {
    let names = [
        "plain_name-1.2",
        "with space",
        "quote\"inside",
        "back\\slash",
        "comma, brace} bracket]",
        "eq = %3",
        "",
        "new\nline\r\ttab",
        "esc\u{1b}\u{0}\u{7f}",
        "ünïcödé → λ",
        "output",
        "%0",
        "@L0 q_proj",
    ];
    let mut g = Graph::new();
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let x = g.input(name, DType::F32, fixed(&[2])).unwrap();
        let wt = g.weight(w(&format!("{name}#{i}"), &[2]));
        ids.push(g.add(Op::Binary(Binary::Add), &[x, wt], meta()).unwrap());
    }
    for (name, &id) in names.iter().zip(&ids) {
        g.set_output(name, id).unwrap();
    }
    let text = g.to_string();
    // One line per node and output: names cannot break lines.
    assert_eq!(text.lines().count(), 3 * names.len() + names.len());
    assert!(text.contains("input{name=plain_name-1.2, dtype=f32, shape=[2]}"));
    assert!(text.contains("input{name=\"with space\", dtype"));
    assert!(text.contains("input{name=\"quote\\\"inside\""));
    assert!(text.contains("weight \"back\\\\slash#3\" f32"));
    assert!(text.contains("output \"new\\nline\\r\\ttab\" = %"));
    assert!(text.contains("input{name=\"esc\\u{1b}\\u{0}\\u{7f}\""));
    assert!(text.contains("output \"\" = %"));
    let p = roundtrip(&g);
    let got: Vec<&str> = p.inputs().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, names);
    let got: Vec<&str> = p.outputs().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, names);
    let got: Vec<String> = p.weights().iter().map(|w| w.name().to_string()).collect();
    let want: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}#{i}"))
        .collect();
    assert_eq!(got, want);
    // Quoting a plain name is accepted too (and prints back bare).
    let quoted =
        "%0 = input{name=\"x\", dtype=f32, shape=[2]} : [2] f32 @- input\noutput \"y\" = %0\n";
    let p = parse_with(quoted, &HashMap::new()).unwrap();
    assert_eq!(
        p.to_string(),
        "%0 = input{name=x, dtype=f32, shape=[2]} : [2] f32 @- input\noutput y = %0\n"
    );
}

#[test]
fn name_tables_invert_their_names() {
    for r in Role::ALL {
        assert_eq!(Role::from_name(r.name()), Some(r));
    }
    assert_eq!(Role::ALL.len(), Role::Other as usize + 1);
    for (i, r) in Role::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "Role::ALL in declaration order");
    }
    assert_eq!(Role::from_name("nope"), None);
    for u in Unary::ALL {
        assert_eq!(Unary::from_name(Op::Unary(u).name()), Some(u));
    }
    assert_eq!(Unary::ALL.len(), Unary::Silu as usize + 1);
    for b in Binary::ALL {
        assert_eq!(Binary::from_name(Op::Binary(b).name()), Some(b));
    }
    assert_eq!(Binary::ALL.len(), Binary::Max as usize + 1);
    for kind in Reduce::ALL {
        let op = Op::Reduce {
            kind,
            axis: 0,
            keep_dim: true,
        };
        assert_eq!(Reduce::from_name(op.name()), Some(kind));
    }
    assert_eq!(Reduce::from_name("sum"), None);
    for s in Sym::ALL {
        assert_eq!(Sym::from_name(s.name()), Some(s));
    }
    let kinds = Op::kinds();
    let names: BTreeSet<&str> = kinds.iter().map(|k| k.name()).collect();
    assert_eq!(names.len(), kinds.len(), "operator names are unique");
    for k in &kinds {
        assert_eq!(Op::from_name(k.name()).map(|o| o.name()), Some(k.name()));
    }
    assert_eq!(Op::from_name("frobnicate"), None);
}

/// `{:?}` of an f32 parses back to the same bits; special values do not panic.
#[test]
fn debug_floats_roundtrip_bit_exactly() {
    let mut rng = Gen::new(99);
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        1e-12,
        0.125,
        1e-6,
        1e-5,
        10000.0,
        500000.0,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::EPSILON,
        1e-45,
        f32::from_bits(1),
        f32::from_bits(0x007f_ffff),
        16777217.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    xs.extend((0..20000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    for x in xs {
        let s = format!("{x:?}");
        let y: f32 = s.parse().unwrap();
        if x.is_nan() {
            assert!(y.is_nan());
        } else {
            assert_eq!(x.to_bits(), y.to_bits(), "{s}");
            assert_eq!(Scalar::new(x).to_string(), s);
        }
    }
}

// ---------------------------------------------------------------- random graphs

type Step = (u8, u32, u32, u32);

/// Names that stress the printer's quoting.
const POOL: [&str; 9] = [
    "x", "in put", "a\"b", "c\\d", "e,f}", "g = %1", "", "ü\nλ", "ids",
];

fn perm_from(r: usize, seed: u64) -> Vec<usize> {
    let mut rng = Gen::new(seed);
    let mut p: Vec<usize> = (0..r).collect();
    for i in (1..r).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Like `props.rs`'s generator, plus tril, cast, symbolic slices, 3-way concat, norms, raw
/// scalar bit patterns, random metas and awkward names. Returns the graph and its input names
/// `[x, y, ids, h]`.
fn random_graph(steps: &[Step], naming: usize) -> (Graph, [String; 4]) {
    let name = |i: usize| POOL[(naming + i) % POOL.len()].to_string();
    let names = [name(0), name(1), name(2), name(3)];
    let mut g = Graph::new();
    let x = g
        .input(
            &names[0],
            DType::F32,
            Shape(vec![BATCH, SEQ, Dim::Fixed(4)]),
        )
        .unwrap();
    let y = g
        .input(&names[1], DType::F32, Shape(vec![SEQ, Dim::Fixed(4)]))
        .unwrap();
    let ids = g
        .input(&names[2], DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let h = g
        .input(
            &names[3],
            DType::F32,
            Shape(vec![BATCH, Dim::Fixed(2), SEQ, Dim::Fixed(4)]),
        )
        .unwrap();
    let mut nodes = vec![x, y, ids, h];
    for &(kind, a, b, c) in steps {
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
        let wname = |g: &Graph| format!("{}.{}", POOL[c as usize % POOL.len()], g.node_count());
        let (op, args): (Op, Vec<NodeId>) = match kind % 30 {
            0 => (Op::Unary(Unary::ALL[b as usize % 13]), vec![na]),
            1 => (Op::Binary(Binary::ALL[c as usize % 5]), vec![na, nb]),
            2 => (Op::Scale(Scalar::new(0.5)), vec![na]),
            3 => (Op::AddScalar(Scalar::new(-1.0)), vec![na]),
            4 => (Op::MatMul, vec![na, nb]),
            5 => {
                let Some(k) = fixed_last else { continue };
                let cols = 1 + c as usize % 4;
                let vals: Vec<f32> = (0..k * cols).map(|i| (i as f32).cos()).collect();
                let wt = g.weight(Weight::from_f32(wname(&g), vec![k, cols], &vals).unwrap());
                (Op::MatMul, vec![na, wt])
            }
            6 => (Op::Permute(perm_from(r, c as u64)), vec![na]),
            7 => {
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
                            _ => d.extend([q, p]),
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
            12 => (
                Op::Reduce {
                    kind: Reduce::ALL[b as usize % 3],
                    axis: ax,
                    keep_dim: c % 2 == 0,
                },
                vec![na],
            ),
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
                    style: RopeStyle::ALL[c as usize % 2],
                },
                vec![na],
            ),
            19 => (Op::Concat { axis: ax }, vec![na, nb]),
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
            21 => {
                let table = g.weight(
                    Weight::from_f32("table", vec![3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap(),
                );
                (Op::Gather, vec![table, na])
            }
            22 => (Op::Tril, vec![na]),
            23 => {
                let d = [DType::I64, DType::F32, DType::BF16, DType::I8, DType::F16];
                (Op::Cast(d[b as usize % d.len()]), vec![na])
            }
            24 => {
                // A symbolic slice along a symbolic axis.
                let Some(Dim::Sym(s)) = sh.0.get(ax).copied() else {
                    continue;
                };
                (
                    Op::Slice {
                        axis: ax,
                        start: 0,
                        end: Dim::Sym(s),
                    },
                    vec![na],
                )
            }
            25 => (Op::Concat { axis: ax }, vec![na, nb, na]),
            26 => (Op::Scale(Scalar::new(f32::from_bits(b))), vec![na]),
            27 => (Op::AddScalar(Scalar::new(f32::from_bits(b))), vec![na]),
            28 => {
                let Some(d) = fixed_last else { continue };
                let gamma = g.weight(w(&wname(&g), &[d]));
                if b % 2 == 0 {
                    let beta = g.weight(w_bf16(&format!("{}b", wname(&g)), &[d]));
                    (
                        Op::LayerNorm {
                            eps: Scalar::new(1e-5),
                        },
                        vec![na, gamma, beta],
                    )
                } else {
                    (
                        Op::RmsNorm {
                            eps: Scalar::new(f32::from_bits(c)),
                        },
                        vec![na, gamma],
                    )
                }
            }
            _ => {
                // Reshape to a layout with the symbols swapped in front.
                if !sh
                    .0
                    .iter()
                    .all(|d| matches!(d, Dim::Sym(_)) || d.fixed().is_some())
                {
                    continue;
                }
                let mut d = sh.0.clone();
                d.reverse();
                (Op::Reshape(Shape(d)), vec![na])
            }
        };
        let m = NodeMeta {
            layer: match a % 4 {
                0 => None,
                1 => Some(u32::MAX),
                _ => Some(a % 13),
            },
            role: Role::ALL[b as usize % Role::ALL.len()],
        };
        if let Ok(id) = g.add(op, &args, m) {
            nodes.push(id);
        }
    }
    for (i, &n) in nodes.iter().enumerate() {
        let out = format!("{}{i}", POOL[(naming + i) % POOL.len()]);
        g.set_output(&out, n).unwrap();
    }
    (g, names)
}

proptest! {
    #![proptest_config(proptest_config::config(384))]

    /// print → parse → print is the identity on random graphs, and the parsed graph computes
    /// exactly what the original does.
    #[test]
    fn random_graphs_roundtrip(
        steps in prop::collection::vec((any::<u8>(), any::<u32>(), any::<u32>(), any::<u32>()), 1..14),
        naming in 0usize..POOL.len(),
        bsz in 0usize..3,
        n in 0usize..4,
        seed in any::<u64>(),
    ) {
        let (g, names) = random_graph(&steps, naming);
        let text = g.to_string();
        let p = parse_with(&text, &weights_of(&g))
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(p.to_string(), text);
        let mut rng = Gen::new(seed);
        let inputs = HashMap::from([
            (names[0].clone(), rng.tensor(&[bsz, n, 4])),
            (names[1].clone(), rng.tensor(&[n, 4])),
            (names[3].clone(), rng.tensor(&[bsz, 2, n, 4])),
            (
                names[2].clone(),
                ti(&[bsz, n], &(0..bsz * n).map(|_| (rng.next_u64() % 3) as i64).collect::<Vec<_>>()),
            ),
        ]);
        same_results(&g, &p, &inputs).map_err(TestCaseError::fail)?;
    }

    /// A scalar attribute survives print → parse bit for bit (NaN stays NaN).
    #[test]
    fn scalar_attributes_are_bit_exact(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        let mut g = Graph::new();
        let i = g.input("x", DType::F32, fixed(&[2])).unwrap();
        let a = g.add(Op::Scale(Scalar::new(x)), &[i], meta()).unwrap();
        let b = g.add(Op::LayerNorm { eps: Scalar::new(x) }, &[a, i, i], meta());
        let b = b.unwrap_or(a);
        g.set_output("y", b).unwrap();
        let p = roundtrip(&g);
        let got = match &p.node(p.output("y").unwrap()).op {
            Op::LayerNorm { eps } => eps.get(),
            Op::Scale(c) => c.get(),
            op => panic!("{op}"),
        };
        prop_assert!(got.to_bits() == x.to_bits() || (got.is_nan() && x.is_nan()));
    }

    /// Random edits of a valid text never panic the parser; what still parses prints stably.
    #[test]
    fn mangled_text_never_panics(
        edits in prop::collection::vec((any::<u8>(), any::<u32>(), any::<char>()), 1..6),
        which in 0usize..3,
    ) {
        let g = match which {
            0 => every_op_model(),
            1 => random_graph(&[(4, 1, 3, 0), (9, 0, 0, 2), (25, 0, 0, 2), (28, 0, 1, 1)], 1).0,
            _ => small_graph(),
        };
        let weights = weights_of(&g);
        let mut text: Vec<char> = g.to_string().chars().collect();
        for (kind, at, ch) in edits {
            if text.is_empty() {
                break;
            }
            let at = at as usize % text.len();
            match kind % 5 {
                0 => { text.remove(at); }
                1 => text.insert(at, ch),
                2 => text[at] = ch,
                3 => text.truncate(at),
                _ => {
                    // Replace a digit run start with a huge number.
                    let s: String = "99999999999999999999999".into();
                    for (k, c) in s.chars().enumerate() {
                        text.insert(at + k, c);
                    }
                }
            }
        }
        let text: String = text.into_iter().collect();
        if let Ok(p) = parse_with(&text, &weights) {
            let again = p.to_string();
            let q = parse_with(&again, &weights_of(&p)).unwrap();
            prop_assert_eq!(q.to_string(), again);
        }
    }
}

// ---------------------------------------------------------------- malformed text

fn small_graph() -> Graph {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(4)]))
        .unwrap();
    let wt = g.weight(w("w", &[4, 4]));
    let q = g
        .add(
            Op::MatMul,
            &[x, wt],
            NodeMeta {
                layer: Some(0),
                role: Role::QProj,
            },
        )
        .unwrap();
    let p = g
        .add(
            Op::Softmax { axis: 2 },
            &[q],
            NodeMeta {
                layer: Some(0),
                role: Role::AttnProbs,
            },
        )
        .unwrap();
    g.set_output("y", p).unwrap();
    g
}

const BASE: &str = "\
%0 = input{name=x, dtype=f32, shape=[B, N, 4]} : [B, N, 4] f32 @- input
%1 = weight \"w\" f32 : [4, 4] f32 @- weight
%2 = matmul %0, %1 : [B, N, 4] f32 @L0 q_proj
%3 = softmax{axis=2} %2 : [B, N, 4] f32 @L0 attn_probs
output y = %3
";

fn base_weights() -> HashMap<String, Weight> {
    HashMap::from([
        ("w".to_string(), w("w", &[4, 4])),
        ("w16".to_string(), w_bf16("w16", &[4, 4])),
        ("g".to_string(), w("g", &[4])),
    ])
}

/// `BASE` with line `line` (1-based) replaced by `text`.
fn with_line(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    lines[line - 1] = text;
    lines.join("\n") + "\n"
}

/// Parsing `text` fails on `line` with a message containing `msg`.
#[track_caller]
fn fails(text: &str, line: usize, msg: &str) {
    match parse_with(text, &base_weights()) {
        Ok(g) => panic!("parsed:\n{text}\nas\n{g}"),
        Err(e) => {
            assert_eq!(e.line, line, "{e}\n{text}");
            assert!(e.msg.contains(msg), "`{}` lacks `{msg}`\n{text}", e.msg);
            assert!(e.to_string().starts_with(&format!("line {line}: ")));
        }
    }
}

#[test]
fn base_text_is_what_the_printer_writes() {
    assert_eq!(small_graph().to_string(), BASE);
    let g = parse_with(BASE, &base_weights()).unwrap();
    assert_eq!(g.to_string(), BASE);
}

#[test]
fn error_unknown_operator() {
    fails(
        &with_line(4, "%3 = frobnicate %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "`frobnicate`: unknown operator",
    );
    fails(
        &with_line(4, "%3 = : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "expected an operator name, found `: [B, N, 4]",
    );
}

#[test]
fn error_wrong_attribute() {
    fails(
        &with_line(4, "%3 = softmax{axes=2} %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "`softmax`: expected `axis=`, found `axes=2}",
    );
    fails(
        &with_line(4, "%3 = softmax %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "`softmax`: expected attributes `{...}`, found `%2",
    );
    fails(
        &with_line(
            4,
            "%3 = softmax{axis=2, eps=1.0} %2 : [B, N, 4] f32 @L0 attn_probs",
        ),
        4,
        "`softmax`: expected `}`, found `, eps=1.0}",
    );
    fails(
        &with_line(3, "%2 = matmul{axis=1} %0, %1 : [B, N, 4] f32 @L0 q_proj"),
        3,
        "`matmul`: takes no attributes",
    );
    fails(
        &with_line(
            4,
            "%3 = reduce_sum{axis=2, keep_dim=yes} %2 : [B, N] f32 @L0 attn_probs",
        ),
        4,
        "keep_dim is `true` or `false`, not `yes`",
    );
    fails(
        &with_line(
            4,
            "%3 = rope{theta=10000.0, style=Sideways} %2 : [B, N, 4] f32 @- other",
        ),
        4,
        "unknown rope style `Sideways`",
    );
    fails(
        &with_line(4, "%3 = cast{dtype=q4} %2 : [B, N, 4] f32 @- other"),
        4,
        "unknown dtype `q4`",
    );
    fails(
        &with_line(4, "%3 = softmax{axis=2 %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "expected `}`, found `%2",
    );
    // An attribute the operator accepts syntactically but shape inference refuses.
    fails(
        &with_line(4, "%3 = softmax{axis=7} %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "axis 7 out of range for rank 3",
    );
}

#[test]
fn error_undefined_reference() {
    fails(
        &with_line(4, "%3 = softmax{axis=2} %9 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "`%9` is not defined",
    );
    fails(&with_line(5, "output y = %7"), 5, "`%7` is not defined");
}

#[test]
fn error_forward_reference() {
    fails(
        &with_line(3, "%2 = matmul %0, %3 : [B, N, 4] f32 @L0 q_proj"),
        3,
        "`%3` is used before its definition on line 4",
    );
    fails(
        &with_line(4, "%3 = softmax{axis=2} %3 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "`%3` is used in its own definition",
    );
    let text = "output y = %0\n%0 = input{name=x, dtype=f32, shape=[2]} : [2] f32 @- input\n";
    fails(text, 1, "`%0` is used before its definition on line 2");
}

#[test]
fn error_wrong_operand_count() {
    fails(
        &with_line(3, "%2 = matmul %0 : [B, N, 4] f32 @L0 q_proj"),
        3,
        "`matmul` takes 2 operands, got 1",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1, %1 : [B, N, 4] f32 @L0 q_proj"),
        3,
        "`matmul` takes 2 operands, got 3",
    );
    fails(
        &with_line(4, "%3 = softmax{axis=2} : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "`softmax` takes 1 operand, got 0",
    );
    fails(
        &with_line(4, "%3 = concat{axis=2} : [B, N, 4] f32 @- other"),
        4,
        "`concat` takes at least one operand, got 0",
    );
    fails(
        &with_line(2, "%1 = weight \"w\" f32 %0 : [4, 4] f32 @- weight"),
        2,
        "`weight` takes no operands",
    );
    fails(
        &with_line(
            1,
            "%0 = input{name=x, dtype=f32, shape=[B, N, 4]} %1 : [B, N, 4] f32 @- input",
        ),
        1,
        "`input` takes no operands",
    );
    fails(
        &with_line(3, "%2 = matmul %0 %1 : [B, N, 4] f32 @L0 q_proj"),
        3,
        "expected `:`, found `%1",
    );
}

#[test]
fn error_type_disagrees_with_inference() {
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 5] f32 @L0 q_proj"),
        3,
        "the line says the type is `[B, N, 5] f32`, but it is `[B, N, 4] f32`",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] i64 @L0 q_proj"),
        3,
        "the line says the type is `[B, N, 4] i64`, but it is `[B, N, 4] f32`",
    );
    fails(
        &with_line(
            1,
            "%0 = input{name=x, dtype=f32, shape=[B, N, 4]} : [B, 4] f32 @- input",
        ),
        1,
        "the line says the type is `[B, 4] f32`, but it is `[B, N, 4] f32`",
    );
    fails(
        &with_line(2, "%1 = weight \"w\" f32 : [4, 4] i64 @- weight"),
        2,
        "the line says the type is `[4, 4] i64`, but it is `[4, 4] f32`",
    );
    // Operands inference refuses.
    fails(
        &with_line(3, "%2 = matmul %1, %0 : [B, N, 4] f32 @L0 q_proj"),
        3,
        "matmul: inner dimensions differ",
    );
}

#[test]
fn error_duplicate_node_number() {
    fails(
        &with_line(3, "%1 = matmul %0, %1 : [B, N, 4] f32 @L0 q_proj"),
        3,
        "`%1` is already defined on line 2",
    );
}

#[test]
fn error_bad_number() {
    fails(
        &with_line(
            4,
            "%3 = softmax{axis=two} %2 : [B, N, 4] f32 @L0 attn_probs",
        ),
        4,
        "expected a number for `axis`, found `two}",
    );
    fails(
        &with_line(4, "%3 = softmax{axis=-1} %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "expected a number for `axis`, found `-1}",
    );
    fails(
        &with_line(4, "%3 = scale{1.2.3} %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "bad number `1.2.3`",
    );
    fails(
        &with_line(4, "%3 = scale{} %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "expected a number, found `} %2",
    );
    fails(
        &with_line(4, "%x = softmax{axis=2} %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "expected a node number after `%`, found `x = ",
    );
    fails(
        &with_line(4, "%3 = permute{perm=[0, x]} %2 : [B, N, 4] f32 @- other"),
        4,
        "expected a number, found `x]}",
    );
}

#[test]
fn error_huge_numbers() {
    fails(
        &with_line(
            4,
            "%3 = softmax{axis=99999999999999999999999} %2 : [B, N, 4] f32 @L0 attn_probs",
        ),
        4,
        "number `99999999999999999999999` is too large",
    );
    fails(
        &with_line(
            4,
            "%99999999999999999999999 = softmax{axis=2} %2 : [B, N, 4] f32 @L0 attn_probs",
        ),
        4,
        "is too large",
    );
    fails(
        &with_line(
            4,
            "%3 = softmax{axis=2} %2 : [B, N, 4] f32 @L4294967296 attn_probs",
        ),
        4,
        "layer number `4294967296` is too large",
    );
    fails(
        &with_line(4, "%3 = scale{1e39} %2 : [B, N, 4] f32 @L0 attn_probs"),
        4,
        "number `1e39` is out of range for f32",
    );
    fails(
        &with_line(1, "%0 = input{name=x, dtype=f32, shape=[B, N, 18446744073709551616]} : [B, N, 4] f32 @- input"),
        1,
        "number `18446744073709551616` is too large",
    );
    // Sizes that fit a usize but overflow when multiplied are refused, not wrapped.
    let max = usize::MAX;
    let text = format!(
        "%0 = input{{name=x, dtype=f32, shape=[B, {max}, N, {max}]}} : [B, {max}, N, {max}] f32 @- input\n\
         %1 = merge_heads %0 : [B, N, 1] f32 @- other\noutput y = %1\n"
    );
    fails(&text, 2, "H·Dh overflows");
    let text = format!(
        "%0 = input{{name=x, dtype=f32, shape=[B, {max}, N, 2]}} : [B, {max}, N, 2] f32 @- input\n\
         %1 = repeat_heads{{times=2}} %0 : [B, 1, N, 2] f32 @- other\noutput y = %1\n"
    );
    fails(&text, 2, "Hkv·times overflows");
    let text = format!(
        "%0 = input{{name=x, dtype=f32, shape=[{max}]}} : [{max}] f32 @- input\n\
         %1 = concat{{axis=0}} %0, %0 : [1] f32 @- other\noutput y = %1\n"
    );
    fails(&text, 2, "concatenated size overflows");
}

#[test]
fn error_bad_shape() {
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4 f32 @L0 q_proj"),
        3,
        "expected `]`, found `f32 @L0",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, Q, 4] f32 @L0 q_proj"),
        3,
        "unknown dimension `Q` (a number, `B` or `N`)",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : B, N, 4 f32 @L0 q_proj"),
        3,
        "expected `[`, found `B, N, 4",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, , 4] f32 @L0 q_proj"),
        3,
        "expected a dimension (a number, `B` or `N`), found `, 4]",
    );
    fails(
        &with_line(
            4,
            "%3 = reshape{shape=[B, N, 3]} %2 : [B, N, 3] f32 @- other",
        ),
        4,
        "cannot reshape to [B, N, 3]: element counts differ",
    );
}

#[test]
fn error_unknown_role_or_meta() {
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] f32 @L0 banana"),
        3,
        "unknown role `banana`",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] f32 L0 q_proj"),
        3,
        "expected `@`, found `L0 q_proj`",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] f32 @X0 q_proj"),
        3,
        "expected `@L<layer>` or `@-`, found `X0 q_proj`",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] f32 @L0"),
        3,
        "expected a role, found the end of the line",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] f32"),
        3,
        "expected `@`, found the end of the line",
    );
    fails(
        &with_line(
            1,
            "%0 = input{name=x, dtype=f32, shape=[B, N, 4]} : [B, N, 4] f32 @L0 input",
        ),
        1,
        "input nodes are always `@- input`, the line says `@L0 input`",
    );
    fails(
        &with_line(2, "%1 = weight \"w\" f32 : [4, 4] f32 @- other"),
        2,
        "weight nodes are always `@- weight`, the line says `@- other`",
    );
}

#[test]
fn error_bad_dtype() {
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] f33 @L0 q_proj"),
        3,
        "unknown dtype `f33`",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] F32 @L0 q_proj"),
        3,
        "unknown dtype `F32`",
    );
    fails(
        &with_line(
            1,
            "%0 = input{name=x, dtype=bf16, shape=[B, N, 4]} : [B, N, 4] f32 @- input",
        ),
        1,
        "an input is f32 or i64, not bf16",
    );
}

#[test]
fn error_empty_text() {
    fails("", 1, "the graph has no nodes");
    fails("\n  \n", 3, "the graph has no nodes");
    fails("output y = %0\n", 1, "`%0` is not defined");
}

#[test]
fn error_missing_outputs() {
    let text: String = BASE.lines().take(4).map(|l| format!("{l}\n")).collect();
    fails(&text, 5, "the graph has no outputs");
    fails(&with_line(5, ""), 6, "the graph has no outputs");
}

#[test]
fn error_weights() {
    fails(
        &with_line(2, "%1 = weight \"nope\" f32 : [4, 4] f32 @- weight"),
        2,
        "weight \"nope\": no tensor named `nope` in the checkpoint",
    );
    fails(
        &with_line(2, "%1 = weight \"w\" bf16 : [4, 4] f32 @- weight"),
        2,
        "weight \"w\" is f32 in the checkpoint, the line says bf16",
    );
    fails(
        &with_line(2, "%1 = weight \"w16\" f32 : [4, 4] f32 @- weight"),
        2,
        "weight \"w16\" is bf16 in the checkpoint, the line says f32",
    );
    fails(
        &with_line(2, "%1 = weight \"g\" f32 : [4, 4] f32 @- weight"),
        2,
        "weight \"g\" has shape [4] in the checkpoint, the line says [4, 4]",
    );
    fails(
        &with_line(2, "%1 = weight w f32 : [4, 4] f32 @- weight"),
        2,
        "expected the weight name in quotes, found `w f32",
    );
    let dup = BASE.replace(
        "%2 = matmul",
        "%9 = weight \"w\" f32 : [4, 4] f32 @- weight\n%2 = matmul",
    );
    fails(&dup, 3, "weight \"w\" is already loaded on line 2");
    // A resolver that returns a different tensor than asked for.
    let err = parse_graph(BASE, &mut |_: &str| Ok(w("other", &[4, 4]))).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(
        err.msg.contains("returned a weight named \"other\""),
        "{err}"
    );
}

#[test]
fn error_quoted_names() {
    fails(
        &with_line(2, "%1 = weight \"w f32 : [4, 4] f32 @- weight"),
        2,
        "unterminated string: no closing `\"`",
    );
    fails(
        &with_line(2, "%1 = weight \"w\\q\" f32 : [4, 4] f32 @- weight"),
        2,
        "unknown escape `\\q` in a quoted name",
    );
    fails(
        &with_line(2, "%1 = weight \"w\\u{110000}\" f32 : [4, 4] f32 @- weight"),
        2,
        "bad `\\u{...}` escape",
    );
    fails(
        &with_line(2, "%1 = weight \"w\\u{d800}\" f32 : [4, 4] f32 @- weight"),
        2,
        "bad `\\u{...}` escape",
    );
    fails(
        &with_line(5, "output y z = %3"),
        5,
        "expected `=`, found `z = %3`",
    );
    fails(
        &with_line(5, "output = %3"),
        5,
        "expected an output name, found `= %3`",
    );
    fails(
        &with_line(
            1,
            "%0 = input{name=, dtype=f32, shape=[B, N, 4]} : [B, N, 4] f32 @- input",
        ),
        1,
        "expected an input name, found `, dtype=f32",
    );
}

#[test]
fn error_duplicate_names() {
    let text = BASE.replace(
        "%1 = weight",
        "%7 = input{name=x, dtype=i64, shape=[B]} : [B] i64 @- input\n%1 = weight",
    );
    fails(&text, 2, "two inputs are named `x`");
    let text = format!("{BASE}output y = %2\n");
    fails(&text, 6, "two outputs are named `y`");
}

#[test]
fn error_garbage_lines() {
    fails(
        &with_line(3, "hello world"),
        3,
        "expected a node (`%n = ...`) or an output (`output NAME = %n`), found `hello world`",
    );
    fails(
        &with_line(5, "outputs y = %3"),
        5,
        "expected a node (`%n = ...`) or an output",
    );
    fails(
        &with_line(3, "%2 = matmul %0, %1 : [B, N, 4] f32 @L0 q_proj trailing"),
        3,
        "unexpected `trailing` at the end of the line",
    );
    fails(
        &with_line(5, "output y = %3 %4"),
        5,
        "unexpected `%4` at the end",
    );
    fails(
        &with_line(3, "%2 matmul %0, %1"),
        3,
        "expected `=`, found `matmul %0",
    );
}

#[test]
fn whitespace_and_line_endings_are_forgiven() {
    let text = BASE.replace('\n', "\r\n").replace(" : ", "  :  ") + "\n\n";
    let g = parse_with(&text, &base_weights()).unwrap();
    assert_eq!(g.to_string(), BASE);
}

#[test]
fn node_numbers_need_not_be_consecutive() {
    let text = "\
%10 = input{name=x, dtype=f32, shape=[2]} : [2] f32 @- input
%4 = neg %10 : [2] f32 @L2 other
output y = %4
";
    let g = parse_with(text, &HashMap::new()).unwrap();
    assert_eq!(
        g.to_string(),
        "%0 = input{name=x, dtype=f32, shape=[2]} : [2] f32 @- input\n\
         %1 = neg %0 : [2] f32 @L2 other\noutput y = %1\n"
    );
}

/// Any byte soup: an error, never a panic.
#[test]
fn random_bytes_never_panic() {
    let mut rng = Gen::new(7);
    let alphabet: Vec<char> = "%=,:{}[]\"\\@L- 0123456789BNabcdefghijklmnopqrstuvwxyz_.\n\tü"
        .chars()
        .collect();
    for _ in 0..5000 {
        let len = (rng.next_u64() % 120) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
            .collect();
        let _ = parse_with(&s, &base_weights());
        let with_prefix = format!("{BASE}{s}");
        let _ = parse_with(&with_prefix, &base_weights());
    }
}
