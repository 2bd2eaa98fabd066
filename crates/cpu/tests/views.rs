//! Attention products over strided views (heads read from their unsplit value, the context
//! written as merged heads) against the reference interpreter: random shapes with several
//! batches and odd head dims, Q/K/V as separate inputs or slices of one fused buffer, causal
//! and padding masks, grouped-query heads (which keep their copies), one thread and two.

use attnopt_ir::rng::Rng;
use std::collections::HashMap;

use attnopt_cpu::matmul::GemmMatMul;
use attnopt_cpu::views::strided_product;
use attnopt_cpu::CpuModel;
use attnopt_ir::builder::{Attention, AttentionKind, Builder};
use attnopt_ir::{interp, DType, Dim, Graph, Op, Role, Shape, Tensor, BATCH, SEQ};
use attnopt_lower::{KernelKind, ProductViews, Strided};

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    tokens: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    fused: bool,
    causal: bool,
    masked: bool,
}

/// One attention block: Q, K, V either inputs `q`, `k`, `v` or slices K | V | Q of one input
/// `qkv`; output the merged context.
fn graph(c: &Case) -> Graph {
    let (dq, dkv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let mut b = Builder::new();
    let (q, k, v) = if c.fused {
        let x = b
            .graph
            .input(
                "qkv",
                DType::F32,
                Shape(vec![BATCH, SEQ, Dim::Fixed(dq + 2 * dkv)]),
            )
            .unwrap();
        let mut slice = |start: usize, len: usize| {
            b.op(
                Op::Slice {
                    axis: 2,
                    start,
                    end: Dim::Fixed(start + len),
                },
                &[x],
                Role::QProj,
            )
            .unwrap()
        };
        let (k, v, q) = (slice(0, dkv), slice(dkv, dkv), slice(2 * dkv, dq));
        (q, k, v)
    } else {
        let mut input = |n: &str, d: usize| {
            b.graph
                .input(n, DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(d)]))
                .unwrap()
        };
        (input("q", dq), input("k", dkv), input("v", dkv))
    };
    let padding_mask = c.masked.then(|| {
        b.graph
            .input("attention_mask", DType::I64, Shape(vec![BATCH, SEQ]))
            .unwrap()
    });
    let spec = Attention {
        kind: AttentionKind::Softmax,
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        causal: c.causal,
        padding_mask,
        rope: None,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
    };
    let out = b.attention(q, k, v, &spec).unwrap();
    b.graph.set_output("out", out).unwrap();
    b.finish()
}

fn inputs(c: &Case, rng: &mut Rng) -> HashMap<String, Tensor> {
    let (dq, dkv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let (bt, mut m) = (c.batch * c.tokens, HashMap::new());
    let mut put = |name: &str, d: usize, rng: &mut Rng| {
        let t = Tensor::f32(vec![c.batch, c.tokens, d], rng.values(bt * d, -1.0, 1.0)).unwrap();
        m.insert(name.to_string(), t);
    };
    if c.fused {
        put("qkv", dq + 2 * dkv, rng);
    } else {
        put("q", dq, rng);
        put("k", dkv, rng);
        put("v", dkv, rng);
    }
    if c.masked {
        // Each batch keeps at least its first token.
        let mask: Vec<i64> = (0..bt)
            .map(|i| i64::from(i % c.tokens == 0 || rng.below(4) != 0))
            .collect();
        m.insert(
            "attention_mask".into(),
            Tensor::i64(vec![c.batch, c.tokens], mask).unwrap(),
        );
    }
    m
}

fn run_case(c: &Case, threads: usize, rng: &mut Rng) {
    let g = graph(c);
    let ins = inputs(c, rng);
    let want = &interp::run(&g, &ins, &[]).unwrap()["out"];
    let mut cpu = CpuModel::new(g, threads).unwrap();
    let (got, _) = cpu.run(&ins, &[], false).unwrap();
    let err = got["out"].max_abs_diff(want).unwrap();
    let tol = 1e-5 * (c.head_dim as f32).sqrt() * want.max_abs().max(1.0);
    assert!(
        err <= tol,
        "{c:?} threads={threads}: max-abs {err:.2e} > {tol:.1e}"
    );
    let l = cpu.lowered(c.batch, c.tokens).unwrap();
    let names: Vec<&str> = l.kernels.iter().map(|k| k.name.as_str()).collect();
    let viewed = l
        .kernels
        .iter()
        .filter(|k| matches!(k.kind, KernelKind::MatMul { views: Some(_), .. }))
        .count();
    if c.kv_heads == c.heads {
        // Every layout copy folded into the two products.
        assert_eq!(viewed, 2, "{c:?}: {names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n.contains("heads") || *n == "op:slice"),
            "{c:?}: {names:?}"
        );
    } else {
        // Grouped-query K and V: `repeat_heads` read in place (each kv head by its query
        // heads); their split stays a copy. Q and the output are still views.
        assert!(!names.contains(&"op:repeat_heads"), "{names:?}");
        assert_eq!(viewed, 2, "{c:?}: {names:?}");
    }
}

#[test]
fn strided_attention_matches_the_interpreter_on_random_shapes() {
    let mut rng = Rng::new(0x5eed_fa77);
    for i in 0..48 {
        let heads = 1 + rng.below(4);
        let kv_heads = if i % 6 == 5 && heads.is_multiple_of(2) {
            heads / 2
        } else {
            heads
        };
        let c = Case {
            batch: 1 + rng.below(3) + usize::from(i % 2 == 0),
            tokens: 1 + rng.below(19),
            heads,
            kv_heads,
            head_dim: 2 * rng.below(5) + 1,
            fused: i % 3 != 0,
            causal: i % 4 == 1,
            masked: i % 5 < 2,
        };
        run_case(&c, 1 + i % 2, &mut rng);
    }
}

#[test]
fn strided_attention_matches_on_larger_shapes() {
    let mut rng = Rng::new(7);
    for (batch, tokens, heads, head_dim) in [(2, 130, 3, 33), (3, 64, 5, 7)] {
        let c = Case {
            batch,
            tokens,
            heads,
            kv_heads: heads,
            head_dim,
            fused: true,
            causal: false,
            masked: true,
        };
        run_case(&c, 2, &mut rng);
    }
}

#[test]
fn out_of_range_views_are_errors() {
    let mm = GemmMatMul::new(1);
    // Two heads of d = 2 over a [1, 3, 4] value: in range, then one column too far.
    let view = |offset| Strided {
        offset,
        batch_strides: vec![12, 2],
        row_stride: 4,
        col_stride: 1,
    };
    let dense = |rows: usize, cols: usize| Strided {
        offset: 0,
        batch_strides: vec![2 * rows * cols, rows * cols],
        row_stride: cols,
        col_stride: 1,
    };
    let (a, b) = (vec![1.0f32; 12], vec![1.0f32; 12]);
    let mut c = vec![0.0f32; 18];
    let views = |offset| ProductViews {
        batch: vec![1, 2],
        a: view(offset),
        b: dense(2, 3),
        c: dense(3, 3),
    };
    strided_product(&mm, &a, &b, &mut c, 3, 2, 3, &views(0)).unwrap();
    assert!(c.iter().all(|&x| x == 2.0));
    for offset in [1, 12, 1000, usize::MAX] {
        assert!(strided_product(&mm, &a, &b, &mut c, 3, 2, 3, &views(offset)).is_err());
    }
}
