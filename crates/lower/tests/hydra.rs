//! The Hydra pattern becomes one kernel reading Q, K, V in place, and does not fuse when an
//! intermediate has another user.

use attnopt_ir::builder::Builder;
use attnopt_ir::{Bindings, DType, Dim, NodeId, Op, Role, Shape, BATCH, SEQ};
use attnopt_lower::memory::check;
use attnopt_lower::{lower, KernelKind, Lowered, RowView};

const D: usize = 5;

/// `x [B, N, 3D]` → slices V | Q | K (the layout of the optimizer's fused QKV) → Hydra.
/// Returns the builder and the (q, k, v) slice nodes.
fn fused(causal: bool) -> (Builder, [NodeId; 3], NodeId) {
    let mut b = Builder::new();
    let x = b
        .graph
        .input("x", DType::F32, Shape(vec![BATCH, SEQ, Dim::Fixed(3 * D)]))
        .unwrap();
    let slice = |b: &mut Builder, start: usize| {
        b.op(
            Op::Slice {
                axis: 2,
                start,
                end: Dim::Fixed(start + D),
            },
            &[x],
            Role::QProj,
        )
        .unwrap()
    };
    let (v, q, k) = (slice(&mut b, 0), slice(&mut b, D), slice(&mut b, 2 * D));
    let out = b.hydra_linear(q, k, v, causal, 1e-12).unwrap();
    (b, [q, k, v], out)
}

fn lowered(b: Builder, out: NodeId, extra: &[(&str, NodeId)]) -> Lowered {
    let mut b = b;
    b.graph.set_output("out", out).unwrap();
    for (name, n) in extra {
        b.graph.set_output(name, *n).unwrap();
    }
    let g = b.finish();
    let l = lower(&g, &Bindings::new(2, 7)).unwrap();
    check(&l.memory, &l.values, &l.kernels, &l.outputs).unwrap();
    l
}

fn names(l: &Lowered) -> Vec<&str> {
    l.kernels.iter().map(|k| k.name.as_str()).collect()
}

#[test]
fn hydra_over_fused_qkv_is_one_kernel() {
    for causal in [false, true] {
        let (b, _, out) = fused(causal);
        let l = lowered(b, out, &[]);
        assert_eq!(l.kernels.len(), 1, "{:?}", names(&l));
        let k = &l.kernels[0];
        let KernelKind::Hydra(h) = &k.kind else {
            panic!("not a Hydra kernel: {:?}", names(&l));
        };
        assert_eq!(
            k.name,
            if causal { "hydra:causal" } else { "hydra" },
            "{:?}",
            names(&l)
        );
        assert_eq!((h.batch, h.tokens, h.d, h.causal), (2, 7, D, causal));
        assert_eq!(h.eps_q, 1e-12);
        let view = |offset| RowView {
            row_stride: 3 * D,
            offset,
        };
        assert_eq!(h.views, [view(D), view(2 * D), view(0)]);
        // All three read the one input buffer; the five ops and three slices are this kernel.
        assert!(k.inputs.iter().all(|&v| v == k.inputs[0]));
        assert_eq!(k.nodes.len(), 8);
        assert_eq!(k.bytes, (16 * 2 * 7 * D) as u64);
    }
}

#[test]
fn hydra_over_separate_values() {
    let mut b = Builder::new();
    let shape = Shape(vec![BATCH, SEQ, Dim::Fixed(D)]);
    let q = b.graph.input("q", DType::F32, shape.clone()).unwrap();
    let k = b.graph.input("k", DType::F32, shape.clone()).unwrap();
    let v = b.graph.input("v", DType::F32, shape).unwrap();
    // Operands of the muls in the other order than the builder writes them.
    let qn = b
        .op(
            Op::L2Normalize {
                axis: 2,
                eps: attnopt_ir::Scalar::new(1e-6),
            },
            &[q],
            Role::QProj,
        )
        .unwrap();
    let kn = b
        .op(
            Op::L2Normalize {
                axis: 2,
                eps: attnopt_ir::Scalar::new(1e-12),
            },
            &[k],
            Role::KProj,
        )
        .unwrap();
    let p = b.mul(v, kn, Role::AttnContext).unwrap();
    let s = b
        .op(
            Op::Reduce {
                kind: attnopt_ir::Reduce::Sum,
                axis: 1,
                keep_dim: true,
            },
            &[p],
            Role::AttnContext,
        )
        .unwrap();
    let out = b.mul(s, qn, Role::AttnContext).unwrap();
    let l = lowered(b, out, &[]);
    assert_eq!(names(&l), ["hydra"]);
    let KernelKind::Hydra(h) = &l.kernels[0].kind else {
        unreachable!()
    };
    assert_eq!((h.eps_q, h.eps_k), (1e-6, 1e-12));
    let dense = RowView {
        row_stride: D,
        offset: 0,
    };
    assert_eq!(h.views, [dense; 3]);
    let ins: Vec<_> = l.kernels[0].inputs.clone();
    assert!(ins[0] != ins[1] && ins[1] != ins[2]);
}

#[test]
fn hydra_does_not_fuse_an_intermediate_used_elsewhere() {
    // Each intermediate in turn is also a graph output: the pattern stays separate kernels.
    for which in 0..4 {
        let (b, _, out) = fused(false);
        let g = &b.graph;
        let phi_q = g.operands(out)[0];
        let kv = g.operands(out)[1];
        let prod = g.operands(kv)[0];
        let phi_k = g.operands(prod)[0];
        let node = [phi_q, kv, prod, phi_k][which];
        let l = lowered(b, out, &[("extra", node)]);
        assert!(
            !names(&l).iter().any(|n| n.starts_with("hydra")),
            "intermediate {which} has another user, yet: {:?}",
            names(&l)
        );
    }
}

#[test]
fn a_shared_slice_is_read_from_its_own_value() {
    // K's slice has a second user: the Hydra kernel still fuses, reading K's computed value.
    let (mut b, [_, k, _], out) = fused(false);
    let twice = b.mul(k, k, Role::AttnContext).unwrap();
    let l = lowered(b, out, &[("k2", twice)]);
    let h = l
        .kernels
        .iter()
        .find_map(|k| match &k.kind {
            KernelKind::Hydra(h) => Some(h),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Hydra kernel: {:?}", names(&l)));
    assert_eq!(
        h.views[1],
        RowView {
            row_stride: D,
            offset: 0
        }
    );
    assert_eq!(h.views[0].row_stride, 3 * D);
    assert!(names(&l).contains(&"op:slice"), "{:?}", names(&l));
}
