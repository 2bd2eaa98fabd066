//! The graph structure and what is derived from it: topological order, operand order, the
//! text form, DOT export, cost counts, per-layer attention summaries, and `Builder::attention`
//! end to end against a naive attention written here.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use attnopt_ir::builder::{Attention, AttentionKind, Builder, WeightLayout};
use attnopt_ir::cost::{cost_where, node_cost, total_cost, Cost};
use attnopt_ir::interp;
use attnopt_ir::summary::{attention_layers, layer_count};
use attnopt_ir::{
    Binary, Bindings, DType, Dim, Graph, NodeId, NodeMeta, Op, Role, RopeStyle, Scalar, Shape,
    Tensor, Unary, Weight, BATCH, SEQ,
};
use common::*;

fn m(layer: Option<u32>, role: Role) -> NodeMeta {
    NodeMeta { layer, role }
}

fn w(name: &str, shape: &[usize]) -> Weight {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    Weight::from_f32(name, shape.to_vec(), &vals).unwrap()
}

// ---------------------------------------------------------------- structure

#[test]
fn topo_order_puts_operands_first_and_is_deterministic() {
    let mut g = Graph::new();
    let a = g.input("a", DType::F32, fixed(&[2, 2])).unwrap();
    let b = g.input("b", DType::F32, fixed(&[2, 2])).unwrap();
    let c = g.add(Op::Binary(Binary::Sub), &[b, a], meta()).unwrap();
    let wt = g.weight(w("w", &[2, 2]));
    let d = g.add(Op::MatMul, &[c, wt], meta()).unwrap();
    let e = g.add(Op::Binary(Binary::Mul), &[d, a], meta()).unwrap();
    let f2 = g.add(Op::Unary(Unary::Exp), &[b], meta()).unwrap();
    let _ = (e, f2);

    let order = g.topo_order();
    assert_eq!(order.len(), g.node_count());
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    assert_eq!(pos.len(), order.len(), "each node once");
    for &n in &order {
        for o in g.operands(n) {
            assert!(pos[&o] < pos[&n], "operand {o:?} after user {n:?}");
        }
    }
    // Deterministic: same answer twice and on a clone; ties broken by id.
    assert_eq!(order, g.topo_order());
    assert_eq!(order, g.clone().topo_order());
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[test]
fn operands_keep_order_for_non_commutative_ops() {
    let mut g = Graph::new();
    let a = g.input("a", DType::F32, fixed(&[2, 2])).unwrap();
    let b = g.input("b", DType::F32, fixed(&[2, 2])).unwrap();
    // Operands given in reverse id order must stay in the given order.
    let sub = g.add(Op::Binary(Binary::Sub), &[b, a], meta()).unwrap();
    let div = g.add(Op::Binary(Binary::Div), &[b, a], meta()).unwrap();
    let mm = g.add(Op::MatMul, &[b, a], meta()).unwrap();
    let sq = g.add(Op::Binary(Binary::Mul), &[a, a], meta()).unwrap();
    assert_eq!(g.operands(sub), vec![b, a]);
    assert_eq!(g.operands(div), vec![b, a]);
    assert_eq!(g.operands(mm), vec![b, a]);
    assert_eq!(g.operands(sq), vec![a, a]);
    assert_eq!(g.users(a), vec![sub, div, mm, sq], "each user once");
    assert_eq!(g.users(sq), Vec::<NodeId>::new());

    for (name, id) in [("sub", sub), ("div", div), ("mm", mm), ("sq", sq)] {
        g.set_output(name, id).unwrap();
    }
    let inputs = HashMap::from([
        ("a".to_string(), t(&[2, 2], &[1.0, 2.0, 3.0, 4.0])),
        ("b".to_string(), t(&[2, 2], &[8.0, 6.0, 9.0, 2.0])),
    ]);
    let outs = interp::run(&g, &inputs, &[]).unwrap();
    assert_close32(f32s(&outs["sub"]), &[7.0, 4.0, 6.0, -2.0], 0.0);
    assert_close32(f32s(&outs["div"]), &[8.0, 3.0, 3.0, 0.5], 1e-7);
    // b·a = [[8+18, 16+24], [9+6, 18+8]]
    assert_close32(f32s(&outs["mm"]), &[26.0, 40.0, 15.0, 26.0], 0.0);
    assert_close32(f32s(&outs["sq"]), &[1.0, 4.0, 9.0, 16.0], 0.0);
}

#[test]
fn same_weight_name_is_one_node() {
    let mut g = Graph::new();
    let a = g.weight(w("emb", &[3, 2]));
    let b = g.weight(w("emb", &[3, 2]));
    let c = g.weight(w("other", &[3, 2]));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(g.weights().len(), 2);
    assert_eq!(g.node_count(), 2);
}

#[test]
fn intermediate_values_used_twice_and_outputs_used_later() {
    // y = exp(x) is an output and also an operand of z = y * y.
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, fixed(&[2])).unwrap();
    let y = g.add(Op::Unary(Unary::Exp), &[x], meta()).unwrap();
    let z = g.add(Op::Binary(Binary::Mul), &[y, y], meta()).unwrap();
    let u = g.add(Op::Binary(Binary::Add), &[z, y], meta()).unwrap();
    g.set_output("y", y).unwrap();
    g.set_output("u", u).unwrap();
    let outs = interp::run(
        &g,
        &HashMap::from([("x".to_string(), t(&[2], &[0.0, 1.0]))]),
        &[],
    )
    .unwrap();
    let e = std::f64::consts::E;
    assert_close(f32s(&outs["y"]), &[1.0, e], 1e-6);
    assert_close(f32s(&outs["u"]), &[2.0, e * e + e], 1e-6);
}

// ---------------------------------------------------------------- text form

#[test]
fn text_form_of_a_tiny_graph() {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(4)]))
        .unwrap();
    let bytes: Vec<u8> = vec![0; 4 * 2 * 2];
    let wq = g.weight(Weight::new("wq", DType::BF16, vec![4, 2], Arc::new(bytes), 0..16).unwrap());
    let gamma = g.weight(w("g", &[2]));
    let q = g
        .add(Op::MatMul, &[x, wq], m(Some(0), Role::QProj))
        .unwrap();
    let s = g
        .add(
            Op::Scale(Scalar::new(0.125)),
            &[q],
            m(Some(0), Role::AttnScores),
        )
        .unwrap();
    let p = g
        .add(Op::Softmax { axis: 2 }, &[s], m(Some(0), Role::AttnProbs))
        .unwrap();
    let n = g
        .add(
            Op::RmsNorm {
                eps: Scalar::new(1e-6),
            },
            &[p, gamma],
            m(None, Role::FinalNorm),
        )
        .unwrap();
    let d = g
        .add(Op::Binary(Binary::Sub), &[n, p], m(None, Role::Other))
        .unwrap();
    g.set_output("probs", p).unwrap();
    g.set_output("out", d).unwrap();
    let want = "\
%0 = input{name=x, dtype=f32, shape=[B, N, 4]} : [B, N, 4] f32 @- input
%1 = weight \"wq\" bf16 : [4, 2] f32 @- weight
%2 = weight \"g\" f32 : [2] f32 @- weight
%3 = matmul %0, %1 : [B, N, 2] f32 @L0 q_proj
%4 = scale{0.125} %3 : [B, N, 2] f32 @L0 attn_scores
%5 = softmax{axis=2} %4 : [B, N, 2] f32 @L0 attn_probs
%6 = rms_norm{eps=1e-6} %5, %2 : [B, N, 2] f32 @- final_norm
%7 = sub %6, %5 : [B, N, 2] f32 @- other
output probs = %5
output out = %7
";
    assert_eq!(g.to_string(), want);
}

#[test]
fn op_display_attributes() {
    let cases: Vec<(Op, &str)> = vec![
        (Op::Permute(vec![0, 2, 1, 3]), "permute{perm=[0, 2, 1, 3]}"),
        (
            Op::Reshape(Shape(vec![BATCH, SEQ, Dim::Fixed(2)])),
            "reshape{shape=[B, N, 2]}",
        ),
        (Op::SplitHeads { heads: 12 }, "split_heads{heads=12}"),
        (Op::RepeatHeads { times: 4 }, "repeat_heads{times=4}"),
        (Op::MergeHeads, "merge_heads"),
        (
            Op::Reduce {
                kind: attnopt_ir::Reduce::Max,
                axis: 1,
                keep_dim: true,
            },
            "reduce_max{axis=1, keep_dim=true}",
        ),
        (
            Op::Rope {
                theta: Scalar::new(10000.0),
                style: RopeStyle::Interleaved,
            },
            "rope{theta=10000.0, style=Interleaved}",
        ),
        (
            Op::Slice {
                axis: 0,
                start: 0,
                end: SEQ,
            },
            "slice{axis=0, start=0, end=N}",
        ),
        (Op::AddScalar(Scalar::new(-1.5)), "add_scalar{-1.5}"),
        (Op::Unary(Unary::GeluTanh), "gelu_tanh"),
    ];
    for (op, want) in cases {
        assert_eq!(op.to_string(), want);
    }
}

// ---------------------------------------------------------------- DOT

/// A two-layer toy model: embeddings, then per layer a norm and attention, final norm.
fn two_layer_model() -> Graph {
    let mut b = Builder::new();
    let ids = b
        .graph
        .input("input_ids", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let mask = b
        .graph
        .input("attention_mask", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let emb = b.graph.weight(w("embed \"tokens\"", &[10, 8]));
    let mut x = b.op(Op::Gather, &[emb, ids], Role::Embedding).unwrap();
    for layer in 0..2u32 {
        b.set_layer(Some(layer));
        let g = b.graph.weight(w(&format!("l{layer}.ln.g"), &[8]));
        let beta = b.graph.weight(w(&format!("l{layer}.ln.b"), &[8]));
        let h = b.layer_norm(x, g, beta, 1e-5, Role::Norm).unwrap();
        let wq = b.graph.weight(w(&format!("l{layer}.q"), &[8, 8]));
        let wk = b.graph.weight(w(&format!("l{layer}.k"), &[4, 8]));
        let wv = b.graph.weight(w(&format!("l{layer}.v"), &[4, 8]));
        let q = b
            .linear(h, wq, None, WeightLayout::InOut, Role::QProj)
            .unwrap();
        let k = b
            .linear(h, wk, None, WeightLayout::OutIn, Role::KProj)
            .unwrap();
        let v = b
            .linear(h, wv, None, WeightLayout::OutIn, Role::VProj)
            .unwrap();
        let att = if layer == 0 {
            Attention {
                kind: AttentionKind::Softmax,
                heads: 4,
                kv_heads: 2,
                head_dim: 2,
                causal: true,
                padding_mask: Some(mask),
                rope: Some((10000.0, RopeStyle::Half)),
                scale: 0.5f32.sqrt(),
            }
        } else {
            Attention {
                kind: AttentionKind::Softmax,
                heads: 2,
                kv_heads: 1,
                head_dim: 4,
                causal: false,
                padding_mask: None,
                rope: None,
                scale: 0.5,
            }
        };
        let c = b.attention(q, k, v, &att).unwrap();
        let wo = b.graph.weight(w(&format!("l{layer}.o"), &[8, 8]));
        let o = b
            .linear(c, wo, None, WeightLayout::OutIn, Role::AttnOutProj)
            .unwrap();
        x = b.add(x, o, Role::Residual).unwrap();
    }
    b.set_layer(None);
    let g = b.graph.weight(w("final.g", &[8]));
    let y = b.rms_norm(x, g, 1e-6, Role::FinalNorm).unwrap();
    b.graph.set_output("last_hidden_state", y).unwrap();
    b.graph.set_output("embeds-0", x).unwrap();
    b.finish()
}

/// Strips double-quoted strings (with `\"` escapes), failing on an unterminated one.
fn strip_quoted(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            loop {
                match chars.next() {
                    Some('\\') => {
                        chars.next().expect("escape at end of input");
                    }
                    Some('"') => break,
                    Some(_) => {}
                    None => panic!("unterminated string in DOT"),
                }
            }
            out.push_str("\"\"");
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn dot_export_is_clustered_and_well_formed() {
    let g = two_layer_model();
    let dot = attnopt_ir::dot::to_dot(&g);
    assert!(dot.starts_with("digraph attnopt {\n"));
    assert!(dot.ends_with("}\n"));
    assert_eq!(dot.matches("subgraph cluster_layer0 {").count(), 1);
    assert_eq!(dot.matches("subgraph cluster_layer1 {").count(), 1);
    assert_eq!(dot.matches("subgraph cluster_").count(), 2);
    assert!(dot.contains("label=\"layer 1\""));
    // The weight name with quotes is escaped.
    assert!(dot.contains("embed \\\"tokens\\\""));

    // Braces balance outside quoted labels, and never go negative.
    let bare = strip_quoted(&dot);
    let mut depth = 0i32;
    for c in bare.chars() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                assert!(depth >= 0, "unbalanced braces");
            }
            _ => {}
        }
    }
    assert_eq!(depth, 0);

    // Every node is declared once; every edge joins declared nodes; one edge per operand.
    let mut declared = HashSet::new();
    let mut edges = 0;
    let mut operand_edges = 0;
    for line in bare.lines().map(str::trim) {
        if let Some((from, rest)) = line.split_once(" -> ") {
            let to: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                declared.contains(from),
                "edge from undeclared {from}: {line}"
            );
            assert!(declared.contains(&to), "edge to undeclared {to}: {line}");
            edges += 1;
            if !to.starts_with("out_") {
                operand_edges += 1;
            }
        } else if let Some((id, _)) = line.split_once(" [label=") {
            assert!(declared.insert(id.to_string()), "{id} declared twice");
        }
    }
    let total_operands: usize = g.topo_order().iter().map(|&n| g.operands(n).len()).sum();
    assert_eq!(operand_edges, total_operands);
    assert_eq!(edges, total_operands + g.outputs().len());
    assert_eq!(declared.len(), g.node_count() + g.outputs().len());
    // Output names are sanitised into identifiers.
    assert!(declared.contains("out_embeds_0"));

    // Nodes of layer 1 are inside layer 1's cluster.
    let start = dot.find("subgraph cluster_layer1").unwrap();
    let cluster = &dot[start..start + dot[start..].find("\n  }\n").unwrap()];
    for n in g.topo_order() {
        let decl = format!("n{} [label=", n.index());
        let inside = cluster.contains(&decl);
        assert_eq!(inside, g.node(n).meta.layer == Some(1), "node {n:?}");
    }
}

// ---------------------------------------------------------------- cost

#[test]
fn cost_matmul_is_2mkn_and_counts_bytes() {
    let mut g = Graph::new();
    let a = g.input("a", DType::F32, fixed(&[2, 3])).unwrap();
    let b = g.input("b", DType::F32, fixed(&[3, 5])).unwrap();
    let c = g.add(Op::MatMul, &[a, b], meta()).unwrap();
    let none = Bindings::default();
    assert_eq!(
        node_cost(&g, c, &none),
        Cost {
            flops: 2 * 2 * 3 * 5,
            bytes: (6 + 15 + 10) * 4,
        }
    );
    // Leaves cost nothing.
    assert_eq!(node_cost(&g, a, &none), Cost::default());
}

#[test]
fn cost_with_symbolic_dims_and_half_precision_weights() {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(8)]))
        .unwrap();
    let bytes = vec![0u8; 8 * 16 * 2];
    let wt = g.weight(Weight::new("w", DType::F16, vec![8, 16], Arc::new(bytes), 0..256).unwrap());
    let y = g.add(Op::MatMul, &[x, wt], meta()).unwrap();
    let r = g
        .add(
            Op::Reshape(Shape(vec![BATCH, SEQ, Dim::Fixed(4), Dim::Fixed(4)])),
            &[y],
            meta(),
        )
        .unwrap();
    let p = g.add(Op::Permute(vec![0, 2, 1, 3]), &[r], meta()).unwrap();
    let e = g.add(Op::Unary(Unary::Gelu), &[p], meta()).unwrap();
    let sm = g.add(Op::Softmax { axis: 3 }, &[e], meta()).unwrap();
    let rd = g
        .add(
            Op::Reduce {
                kind: attnopt_ir::Reduce::Sum,
                axis: 3,
                keep_dim: false,
            },
            &[sm],
            meta(),
        )
        .unwrap();
    let b = bind(2, 3);
    // M = B·N = 6 rows, K = 8, N = 16.
    assert_eq!(
        node_cost(&g, y, &b),
        Cost {
            flops: 2 * 6 * 8 * 16,
            // x in f32, the weight at its stored 2 bytes, the result in f32
            bytes: 6 * 8 * 4 + 8 * 16 * 2 + 6 * 16 * 4,
        }
    );
    assert_eq!(
        node_cost(&g, r, &b),
        Cost::default(),
        "reshape is a free view"
    );
    assert_eq!(
        node_cost(&g, p, &b),
        Cost {
            flops: 0,
            bytes: 2 * 96 * 4
        }
    );
    assert_eq!(node_cost(&g, e, &b).flops, 96);
    assert_eq!(node_cost(&g, sm, &b).flops, 5 * 96);
    assert_eq!(
        node_cost(&g, rd, &b).flops,
        96,
        "one FLOP per input element"
    );
    assert_eq!(node_cost(&g, rd, &b).bytes, (96 + 24) * 4);
    // Unbound symbols: zero.
    assert_eq!(node_cost(&g, y, &Bindings::default()).flops, 0);
    // Totals are sums.
    let total = total_cost(&g, &b);
    let sum = g
        .topo_order()
        .into_iter()
        .fold(Cost::default(), |acc, n| acc + node_cost(&g, n, &b));
    assert_eq!(total, sum);
    assert_eq!(
        cost_where(&g, &b, |n| n == y || n == e),
        node_cost(&g, y, &b) + node_cost(&g, e, &b)
    );
}

// ---------------------------------------------------------------- summary

#[test]
fn attention_summary_of_builder_graph() {
    let g = two_layer_model();
    let b = bind(2, 5);
    let layers = attention_layers(&g, &b);
    assert_eq!(layers.len(), 2);
    let (l0, l1) = (&layers[0], &layers[1]);
    assert_eq!(l0.layer, 0);
    assert_eq!(l0.kind, attnopt_ir::AttentionFormula::Softmax);
    assert_eq!(
        (l0.heads, l0.kv_heads, l0.head_dim),
        (Some(4), Some(2), Some(2))
    );
    assert!(l0.causal && l0.padding_mask && l0.rope);
    assert_eq!(l1.layer, 1);
    assert_eq!(l1.kind, attnopt_ir::AttentionFormula::Softmax);
    assert_eq!(
        (l1.heads, l1.kv_heads, l1.head_dim),
        (Some(2), Some(1), Some(4))
    );
    assert!(!l1.causal && !l1.padding_mask && !l1.rope);
    // Costs: exactly the layer's attention-role nodes.
    for s in &layers {
        let want = cost_where(&g, &b, |n| {
            let mm = g.node(n).meta;
            mm.layer == Some(s.layer) && mm.role.is_attention()
        });
        assert_eq!(s.cost, want);
        assert!(s.cost.flops > 0);
    }
    // Q projection 8→8 plus K, V 8→4 and output 8→8, at B·N = 10 rows: at least these FLOPs.
    assert!(l0.cost.flops >= 2 * 10 * 8 * (8 + 4 + 4 + 8));
    assert_eq!(layer_count(&g), 2);
}

// ---------------------------------------------------------------- Builder::attention, end to end

/// Naive grouped-query attention with rotary embeddings, causal and padding masks, written
/// independently of the interpreter: q `[B, N, H·Dh]`, k/v `[B, N, Hkv·Dh]`.
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &[i64],
    heads: usize,
    kv_heads: usize,
    dh: usize,
    theta: f64,
    scale: f64,
) -> Vec<f64> {
    let s = q.shape();
    let (bsz, n) = (s[0], s[1]);
    let (qv, kv, vv) = (f32s(q), f32s(k), f32s(v));
    // Half-style rotation of one head vector at position `pos`.
    let rot = |x: &[f32], pos: usize| -> Vec<f64> {
        let mut o: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        for i in 0..dh / 2 {
            let ang = pos as f64 * theta.powf(-2.0 * i as f64 / dh as f64);
            let (a, b) = (x[i] as f64, x[i + dh / 2] as f64);
            o[i] = a * ang.cos() - b * ang.sin();
            o[i + dh / 2] = b * ang.cos() + a * ang.sin();
        }
        o
    };
    let group = heads / kv_heads;
    let mut out = vec![0f64; bsz * n * heads * dh];
    for b in 0..bsz {
        for h in 0..heads {
            let hk = h / group;
            for i in 0..n {
                let qo = (b * n + i) * heads * dh + h * dh;
                let qi = rot(&qv[qo..qo + dh], i);
                let mut scores = vec![f64::NEG_INFINITY; n];
                for (j, sc) in scores.iter_mut().enumerate() {
                    if j > i || mask[b * n + j] == 0 {
                        continue;
                    }
                    let ko = (b * n + j) * kv_heads * dh + hk * dh;
                    let kj = rot(&kv[ko..ko + dh], j);
                    *sc = scale * qi.iter().zip(&kj).map(|(x, y)| x * y).sum::<f64>();
                }
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if mx == f64::NEG_INFINITY {
                    continue; // fully masked: zeros
                }
                let e: Vec<f64> = scores.iter().map(|&x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let vo = (b * n + j) * kv_heads * dh + hk * dh;
                    for d in 0..dh {
                        out[(b * n + i) * heads * dh + h * dh + d] += ej / z * vv[vo + d] as f64;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn builder_attention_matches_naive_attention() {
    let (heads, kv_heads, dh) = (4, 2, 4);
    let mut b = Builder::new();
    b.set_layer(Some(0));
    let sym = |d: usize| Shape(vec![BATCH, SEQ, Dim::Fixed(d)]);
    let q = b.graph.input("q", DType::F32, sym(heads * dh)).unwrap();
    let k = b.graph.input("k", DType::F32, sym(kv_heads * dh)).unwrap();
    let v = b.graph.input("v", DType::F32, sym(kv_heads * dh)).unwrap();
    let mask = b
        .graph
        .input("mask", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let scale = 0.5f32;
    let c = b
        .attention(
            q,
            k,
            v,
            &Attention {
                kind: AttentionKind::Softmax,
                heads,
                kv_heads,
                head_dim: dh,
                causal: true,
                padding_mask: Some(mask),
                rope: Some((100.0, RopeStyle::Half)),
                scale,
            },
        )
        .unwrap();
    b.graph.set_output("ctx", c).unwrap();
    let g = b.finish();
    assert_eq!(g.node(c).ty.shape, sym(heads * dh));

    let mut rng = Gen::new(21);
    let (bsz, n) = (2, 4);
    let (qt, kt, vt) = (
        rng.tensor(&[bsz, n, heads * dh]),
        rng.tensor(&[bsz, n, kv_heads * dh]),
        rng.tensor(&[bsz, n, kv_heads * dh]),
    );
    // Batch 0: left padding (token 0 masked, so query 0 sees nothing); batch 1: right padding.
    let mask_v = vec![0, 1, 1, 1, 1, 1, 1, 0];
    let inputs = HashMap::from([
        ("q".to_string(), qt.clone()),
        ("k".to_string(), kt.clone()),
        ("v".to_string(), vt.clone()),
        ("mask".to_string(), ti(&[bsz, n], &mask_v)),
    ]);
    let got = &interp::run(&g, &inputs, &[]).unwrap()["ctx"];
    assert_eq!(got.shape(), &[bsz, n, heads * dh]);
    let want = naive_attention(
        &qt,
        &kt,
        &vt,
        &mask_v,
        heads,
        kv_heads,
        dh,
        100.0,
        scale as f64,
    );
    assert_close(f32s(got), &want, 1e-5);
    // The fully masked query row is exactly zero.
    assert!(f32s(got)[..heads * dh].iter().all(|&x| x == 0.0));
}

// ---------------------------------------------------------------- folding

#[test]
fn folding_keeps_bf16_only_when_nothing_is_lost() {
    // Two bf16 weights concatenated (exact) and scaled by 0.125 (exact) stay bf16; a scale by
    // 0.3 rounds, so that one is f32. Mixed with an f32 weight it is f32 too.
    let bf16 = |name: &str, vals: &[f32]| {
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let len = bytes.len();
        Weight::new(name, DType::BF16, vec![vals.len()], Arc::new(bytes), 0..len).unwrap()
    };
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, fixed(&[6])).unwrap();
    let a = g.weight(bf16("a", &[1.5, -2.0, 0.375]));
    let b = g.weight(bf16("b", &[3.0, 0.1, -7.0]));
    let f = g.weight(w("f", &[6]));
    let cat = g.add(Op::Concat { axis: 0 }, &[a, b], meta()).unwrap();
    let exact = g
        .add(Op::Scale(Scalar::new(0.125)), &[cat], meta())
        .unwrap();
    let lossy = g.add(Op::Scale(Scalar::new(0.3)), &[cat], meta()).unwrap();
    let mixed = g.add(Op::Binary(Binary::Add), &[cat, f], meta()).unwrap();
    let mut outs = vec![];
    for (i, v) in [exact, lossy, mixed].into_iter().enumerate() {
        let o = g.add(Op::Binary(Binary::Mul), &[x, v], meta()).unwrap();
        g.set_output(&format!("o{i}"), o).unwrap();
        outs.push(o);
    }
    let dtypes = |folded: &Graph| -> Vec<DType> {
        let mut d: Vec<(String, DType)> = folded
            .weights()
            .iter()
            .filter(|w| w.name().starts_with("attnopt."))
            .map(|w| (w.name().to_string(), w.dtype()))
            .collect();
        d.sort();
        d.into_iter().map(|(_, t)| t).collect()
    };
    let kept = attnopt_ir::fold::fold_weights_keeping_bf16(&g).unwrap();
    let plain = attnopt_ir::fold::fold_weights(&g).unwrap();
    assert_eq!(kept.weights.len(), 3);
    let mut got = dtypes(&kept.graph);
    got.sort_by_key(|d| d.size());
    assert_eq!(got, vec![DType::BF16, DType::F32, DType::F32]);
    assert!(dtypes(&plain.graph).iter().all(|&d| d == DType::F32));
    // Both compute the same outputs as the unfolded graph.
    let feed = HashMap::from([(
        "x".to_string(),
        Tensor::f32(vec![6], vec![1.0, 2.0, -1.0, 0.5, 4.0, 3.0]).unwrap(),
    )]);
    let want = interp::run(&g, &feed, &[]).unwrap();
    for folded in [&kept.graph, &plain.graph] {
        let got = interp::run(folded, &feed, &[]).unwrap();
        for (name, t) in &want {
            assert_eq!(got[name].max_abs_diff(t).unwrap(), 0.0, "{name}");
        }
    }
}
