//! Weight bytes read per layer: every weight once at its stored size, weight-only values
//! (views, concatenations) as weights, and a sparse feed-forward only its chosen units' share.

use attnopt_ir::builder::{Builder, WeightLayout::InOut};
use attnopt_ir::sparse::SparseFf;
use attnopt_ir::{Bindings, DType, Dim, NodeId, Op, Role, Shape, Unary, Weight, BATCH, SEQ};
use attnopt_lower::{lower, weight_bytes_by_layer};

fn weight(b: &mut Builder, shape: &[usize], bf16: bool) -> NodeId {
    let n: usize = shape.iter().product();
    let v = vec![0.5f32; n];
    let w = if bf16 {
        Weight::bf16_if_exact(format!("w{}", b.graph.node_count()), shape.to_vec(), &v)
            .expect("0.5 is a bf16")
            .unwrap()
    } else {
        Weight::from_f32(format!("w{}", b.graph.node_count()), shape.to_vec(), &v).unwrap()
    };
    b.graph.weight(w)
}

fn input(b: &mut Builder, d: usize) -> NodeId {
    let s = Shape(vec![BATCH, SEQ, Dim::Fixed(d)]);
    b.graph.input("x", DType::F32, s).unwrap()
}

fn bytes(b: Builder, out: NodeId) -> std::collections::BTreeMap<Option<u32>, u64> {
    let mut b = b;
    b.graph.set_output("y", out).unwrap();
    let g = b.finish();
    let l = lower(&g, &Bindings::new(1, 1)).unwrap();
    weight_bytes_by_layer(&g, &l)
}

#[test]
fn dense_weights_count_once_at_their_stored_size() {
    let (d, f) = (16, 64);
    let mut b = Builder::new();
    let x = input(&mut b, d);
    b.set_layer(Some(3));
    let up = weight(&mut b, &[d, f], true); // bf16: 2 bytes each
    let bias = weight(&mut b, &[f], false);
    let down = weight(&mut b, &[f, d], false);
    let y = b
        .mlp(x, (up, Some(bias)), Unary::Relu, (down, None), InOut)
        .unwrap();
    // Q and K read from one concatenation of two weights: counted once, as f32.
    let (wq, wk) = (
        weight(&mut b, &[d, d], false),
        weight(&mut b, &[d, d], false),
    );
    let cat = b
        .op(Op::Concat { axis: 1 }, &[wq, wk], Role::QkvProj)
        .unwrap();
    let qk = b.op(Op::MatMul, &[y, cat], Role::QkvProj).unwrap();
    let got = bytes(b, qk);
    let want = d * f * 2 + f * 4 + f * d * 4 + 2 * d * d * 4;
    assert_eq!(got.get(&Some(3)).copied(), Some(want as u64), "{got:?}");
}

#[test]
fn a_lookup_reads_the_rows_it_gathers() {
    let (vocab, d) = (1000, 8);
    let mut b = Builder::new();
    let ids = b
        .graph
        .input("ids", DType::I64, Shape(vec![BATCH, SEQ]))
        .unwrap();
    let table = weight(&mut b, &[vocab, d], false);
    let e = b.op(Op::Gather, &[table, ids], Role::Embedding).unwrap();
    let got = bytes(b, e);
    assert_eq!(got.get(&None).copied(), Some((d * 4) as u64), "{got:?}");
}

#[test]
fn sparse_ff_reads_its_chosen_units_only() {
    let (d, block, blocks, rank) = (16, 8, 4, 3);
    let units = block * blocks;
    let mut b = Builder::new();
    let x = input(&mut b, d);
    b.set_layer(Some(0));
    let f = SparseFf {
        m1: weight(&mut b, &[d, rank], false),
        m2: weight(&mut b, &[rank, blocks, block], false),
        mb: weight(&mut b, &[blocks, block], false),
        w1: weight(&mut b, &[d, blocks, block], false),
        w2: weight(&mut b, &[block, blocks, d], false),
        b2: Some(weight(&mut b, &[d], false)),
        b1: None,
        act: attnopt_ir::Unary::Relu,
        block,
        units,
        lowrank: rank,
    };
    let y = b.sparse_ff(x, &f, d).unwrap();
    let got = bytes(b, y);
    let controller = d * rank + rank * units + units;
    // One token: one unit per block, a column of W1 and a row of W2 each.
    let chosen = blocks * (d + d);
    let want = 4 * (controller + chosen + d);
    assert_eq!(got.get(&Some(0)).copied(), Some(want as u64), "{got:?}");
}
