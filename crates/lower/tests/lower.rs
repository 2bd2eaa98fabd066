//! Lowering a BERT-like layer: which kernels fuse what, and a valid, reusing memory plan.

use attnopt_ir::builder::{Attention, AttentionKind, Builder, WeightLayout};
use attnopt_ir::{Bindings, DType, Graph, Op, Role, Scalar, Shape, Unary, Weight, BATCH, SEQ};
use attnopt_lower::memory::check;
use attnopt_lower::{lower, KernelKind, ValueKind};

fn w(b: &mut Builder, name: &str, shape: &[usize]) -> attnopt_ir::NodeId {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01).collect();
    b.graph
        .weight(Weight::from_f32(name, shape.to_vec(), &vals).unwrap())
}

/// Two post-norm encoder layers of width 16 with 2 heads and a padding mask.
fn encoder(layers: u32) -> Graph {
    let d = 16;
    let mut b = Builder::new();
    let x0 = b
        .graph
        .input(
            "x",
            DType::F32,
            Shape(vec![BATCH, SEQ, attnopt_ir::Dim::Fixed(d)]),
        )
        .unwrap();
    let mask = b
        .graph
        .input("attention_mask", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let mut x = x0;
    for l in 0..layers {
        b.set_layer(Some(l));
        let p = |s: &str| format!("l{l}.{s}");
        let (wq, bq) = (w(&mut b, &p("wq"), &[d, d]), w(&mut b, &p("bq"), &[d]));
        let (wk, bk) = (w(&mut b, &p("wk"), &[d, d]), w(&mut b, &p("bk"), &[d]));
        let (wv, bv) = (w(&mut b, &p("wv"), &[d, d]), w(&mut b, &p("bv"), &[d]));
        let (wo, bo) = (w(&mut b, &p("wo"), &[d, d]), w(&mut b, &p("bo"), &[d]));
        let (g1, b1) = (w(&mut b, &p("g1"), &[d]), w(&mut b, &p("b1"), &[d]));
        let (wi, bi) = (w(&mut b, &p("wi"), &[32, d]), w(&mut b, &p("bi"), &[32]));
        let (w2, b2) = (w(&mut b, &p("w2"), &[d, 32]), w(&mut b, &p("b2"), &[d]));
        let (g2, bb2) = (w(&mut b, &p("g2"), &[d]), w(&mut b, &p("bb2"), &[d]));
        let q = b
            .linear(x, wq, Some(bq), WeightLayout::OutIn, Role::QProj)
            .unwrap();
        let k = b
            .linear(x, wk, Some(bk), WeightLayout::OutIn, Role::KProj)
            .unwrap();
        let v = b
            .linear(x, wv, Some(bv), WeightLayout::OutIn, Role::VProj)
            .unwrap();
        let spec = Attention {
            kind: AttentionKind::Softmax,
            heads: 2,
            kv_heads: 2,
            head_dim: 8,
            causal: false,
            padding_mask: Some(mask),
            rope: None,
            scale: 0.35,
        };
        let c = b.attention(q, k, v, &spec).unwrap();
        let a = b
            .linear(c, wo, Some(bo), WeightLayout::OutIn, Role::AttnOutProj)
            .unwrap();
        let r = b.add(a, x, Role::Residual).unwrap();
        let h = b.layer_norm(r, g1, b1, 1e-12, Role::Norm).unwrap();
        let o = b
            .mlp(
                h,
                (wi, Some(bi)),
                Unary::Gelu,
                (w2, Some(b2)),
                WeightLayout::OutIn,
            )
            .unwrap();
        let r = b.add(o, h, Role::Residual).unwrap();
        x = b.layer_norm(r, g2, bb2, 1e-12, Role::Norm).unwrap();
        b.graph.set_output(&format!("layer.{l}"), x).unwrap();
    }
    b.graph.set_output("last_hidden_state", x).unwrap();
    b.finish()
}

#[test]
fn encoder_layer_fuses_as_expected() {
    let g = encoder(1);
    let l = lower(&g, &Bindings::new(2, 5)).unwrap();
    let names: Vec<&str> = l.kernels.iter().map(|k| k.name.as_str()).collect();
    println!("{names:?}");
    // Q, K, V and MLP-up products carry their bias adds (and the GELU) as epilogues, recognised
    // in structured form; the output and MLP-down products' bias and residual adds go into the
    // LayerNorm after them.
    assert_eq!(
        names.iter().filter(|n| **n == "matmul+bias").count(),
        3,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "matmul+bias+gelu").count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "matmul").count(),
        4,
        "{names:?}"
    );
    // The transposed K (permute of the last two axes) is folded into the score product.
    assert!(l.kernels.iter().any(|k| matches!(
        k.kind,
        KernelKind::MatMul {
            b_transposed: true,
            epilogue: None,
            ..
        }
    )));
    // Softmax absorbs the scale and the padding mask; both LayerNorms absorb the residual add.
    let softmax = l
        .kernels
        .iter()
        .find(|k| k.name == "row:softmax")
        .expect("a softmax row kernel");
    assert!(
        softmax.nodes.len() >= 3,
        "scale + mask + softmax: {:?}",
        softmax.nodes
    );
    assert_eq!(names.iter().filter(|n| **n == "row:layer_norm").count(), 2);
    for k in l.kernels.iter().filter(|k| k.name == "row:layer_norm") {
        assert_eq!(
            k.nodes.len(),
            3,
            "layer_norm with its bias and residual adds"
        );
    }
    assert_eq!(names.iter().filter(|n| **n == "additive_mask").count(), 1);
    // Every graph node that needs work is in exactly one kernel.
    let mut seen = std::collections::HashSet::new();
    for k in &l.kernels {
        for &n in &k.nodes {
            assert!(seen.insert(n), "node {n:?} in two kernels");
        }
    }
}

#[test]
fn memory_plan_is_valid_and_reuses() {
    for layers in [1, 4] {
        for (b, n) in [(1, 1), (2, 5), (3, 64)] {
            let g = encoder(layers);
            let l = lower(&g, &Bindings::new(b, n)).unwrap();
            check(&l.memory, &l.values, &l.kernels, &l.outputs).unwrap();
            println!(
                "{layers} layers B={b} N={n}: arena {} B, naive {} B",
                l.memory.arena_bytes, l.memory.naive_bytes
            );
            if layers == 4 {
                assert!(
                    l.memory.arena_bytes < l.memory.naive_bytes / 2,
                    "reuse should at least halve memory"
                );
            }
        }
    }
}

#[test]
fn kernels_run_after_their_inputs() {
    let g = encoder(2);
    let l = lower(&g, &Bindings::new(2, 7)).unwrap();
    let mut ready: Vec<bool> = l
        .values
        .iter()
        .map(|v| matches!(v.kind, ValueKind::Input(_) | ValueKind::Weight(_)))
        .collect();
    for k in &l.kernels {
        for &v in &k.inputs {
            assert!(
                ready[v] || v == k.output,
                "{} reads value {v} before it is computed",
                k.name
            );
        }
        ready[k.output] = true;
    }
    for (_, v) in &l.outputs {
        assert!(ready[*v]);
    }
}

/// One attention block over a fused QKV product, as the optimizer leaves it: `[B, N, 3D]`, Q,
/// K and V sliced out of it and split into heads, scores, softmax, context, merged heads. With
/// `share_q`, Q's split heads are also a graph output (a second user that needs the copy).
fn fused_qkv_attention(share_q: bool) -> Graph {
    let (d, heads) = (12, 3);
    let mut b = Builder::new();
    let x = b
        .graph
        .input(
            "x",
            DType::F32,
            Shape(vec![BATCH, SEQ, attnopt_ir::Dim::Fixed(d)]),
        )
        .unwrap();
    let wqkv = w(&mut b, "wqkv", &[d, 3 * d]);
    let qkv = b.op(Op::MatMul, &[x, wqkv], Role::QkvProj).unwrap();
    let part = |b: &mut Builder, i: usize, role| {
        let s = b
            .op(
                Op::Slice {
                    axis: 2,
                    start: i * d,
                    end: attnopt_ir::Dim::Fixed((i + 1) * d),
                },
                &[qkv],
                role,
            )
            .unwrap();
        b.op(Op::SplitHeads { heads }, &[s], role).unwrap()
    };
    let q = part(&mut b, 0, Role::QProj);
    let k = part(&mut b, 1, Role::KProj);
    let v = part(&mut b, 2, Role::VProj);
    let kt = b
        .op(Op::Permute(vec![0, 1, 3, 2]), &[k], Role::AttnScores)
        .unwrap();
    let s = b.op(Op::MatMul, &[q, kt], Role::AttnScores).unwrap();
    let s = b
        .op(Op::Scale(Scalar::new(0.5)), &[s], Role::AttnScores)
        .unwrap();
    let p = b
        .op(Op::Softmax { axis: 3 }, &[s], Role::AttnProbs)
        .unwrap();
    let c = b.op(Op::MatMul, &[p, v], Role::AttnContext).unwrap();
    let m = b.op(Op::MergeHeads, &[c], Role::AttnContext).unwrap();
    b.graph.set_output("last_hidden_state", m).unwrap();
    if share_q {
        b.graph.set_output("q_heads", q).unwrap();
    }
    b.finish()
}

fn layout_copies(l: &attnopt_lower::Lowered) -> Vec<&str> {
    l.kernels
        .iter()
        .map(|k| k.name.as_str())
        .filter(|n| ["op:split_heads", "op:merge_heads", "op:slice", "op:permute"].contains(n))
        .collect()
}

#[test]
fn attention_products_read_and_write_heads_in_place() {
    for g in [encoder(2), fused_qkv_attention(false)] {
        for (batch, n) in [(1, 1), (2, 5), (3, 17)] {
            let l = lower(&g, &Bindings::new(batch, n)).unwrap();
            assert_eq!(layout_copies(&l), Vec::<&str>::new());
            check(&l.memory, &l.values, &l.kernels, &l.outputs).unwrap();
            let viewed: Vec<_> = l
                .kernels
                .iter()
                .filter_map(|k| match &k.kind {
                    KernelKind::MatMul {
                        views: Some(v),
                        b_transposed,
                        ..
                    } => Some((k, v, *b_transposed)),
                    _ => None,
                })
                .collect();
            assert!(viewed.len() >= 2, "scores and context per layer");
            assert_eq!(viewed.len() % 2, 0, "scores and context per layer");
            for (k, v, transposed) in viewed {
                assert_eq!(v.batch[0], batch);
                if k.role == Role::AttnScores {
                    // K read transposed: consecutive rows of Kᵀ are consecutive features.
                    assert!(transposed);
                    assert_eq!(v.b.row_stride, 1);
                } else {
                    // The context is written as merged heads: row stride H·d, head stride d.
                    let out = &l.values[k.output].shape;
                    assert_eq!(out.len(), 3, "written into merge_heads' [B, N, H·d]");
                    assert_eq!(v.c.row_stride, out[2]);
                    assert_eq!(v.c.batch_strides[0], out[1] * out[2]);
                }
            }
        }
    }
    // The fused case reads Q, K and V out of the one QKV value: row stride 3D, offsets 0, D, 2D.
    let g = fused_qkv_attention(false);
    let l = lower(&g, &Bindings::new(2, 5)).unwrap();
    let scores = l
        .kernels
        .iter()
        .find(|k| k.role == Role::AttnScores && k.name == "matmul")
        .unwrap();
    let KernelKind::MatMul { views: Some(v), .. } = &scores.kind else {
        panic!("scores product without views");
    };
    assert_eq!(scores.inputs[0], scores.inputs[1], "Q and K from one value");
    assert_eq!(l.values[scores.inputs[0]].shape, vec![2, 5, 36]);
    assert_eq!((v.a.offset, v.a.row_stride, v.a.col_stride), (0, 36, 1));
    assert_eq!((v.b.offset, v.b.row_stride, v.b.col_stride), (12, 1, 36));
    assert_eq!(v.a.batch_strides, vec![5 * 36, 4]);
    assert_eq!(v.c.batch_strides, vec![3 * 25, 25]);
}

#[test]
fn shared_split_heads_keep_their_copy() {
    let g = fused_qkv_attention(true);
    let l = lower(&g, &Bindings::new(2, 5)).unwrap();
    check(&l.memory, &l.values, &l.kernels, &l.outputs).unwrap();
    // Q's split (an output too) and its slice stay; K and V are still read in place.
    let copies = layout_copies(&l);
    assert_eq!(copies, vec!["op:slice", "op:split_heads"], "{copies:?}");
    let scores = l
        .kernels
        .iter()
        .find(|k| k.role == Role::AttnScores && k.name == "matmul")
        .unwrap();
    let KernelKind::MatMul { views: Some(v), .. } = &scores.kind else {
        panic!("K should still be read in place");
    };
    assert_eq!(
        l.values[scores.inputs[0]].shape,
        vec![2, 3, 5, 4],
        "Q's own heads"
    );
    assert_eq!(v.a.batch_strides, vec![3 * 5 * 4, 5 * 4], "Q read densely");
}

/// `t = permute(x)` swapping the last two axes is both a graph output and the right operand of
/// `out = x · t`, its only user: the product may read `x` transposed, but `t` must keep its own
/// kernel, since the output needs its value.
#[test]
fn transposing_permute_that_is_an_output_keeps_its_kernel() {
    let mut b = Builder::new();
    let x = b
        .graph
        .input(
            "x",
            DType::F32,
            Shape(vec![BATCH, SEQ, attnopt_ir::Dim::Fixed(8)]),
        )
        .unwrap();
    let t = b.op(Op::Permute(vec![0, 2, 1]), &[x], Role::Other).unwrap();
    let p = b.op(Op::MatMul, &[x, t], Role::Other).unwrap();
    let mut g = b.finish();
    g.set_output("t", t).unwrap();
    g.set_output("out", p).unwrap();
    let l = lower(&g, &Bindings::new(2, 5)).unwrap();
    check(&l.memory, &l.values, &l.kernels, &l.outputs).unwrap();
    let (_, tv) = l.outputs.iter().find(|(name, _)| name == "t").unwrap();
    let writer = l.kernels.iter().find(|k| k.output == *tv);
    assert_eq!(writer.map(|k| k.name.as_str()), Some("op:permute"));
    assert_eq!(l.values[*tv].shape, vec![2, 8, 5]);
}
