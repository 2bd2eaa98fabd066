//! The fused Hydra kernel against the reference interpreter: random shapes (odd feature
//! widths, several batches, causal and not, zero rows that take the `eps` path), operands
//! sliced in place from a fused QKV buffer or given as separate inputs, on one thread and two.

use std::collections::HashMap;

use attnopt_cpu::hydra::{HydraError, HydraKernel};
use attnopt_cpu::jit::JitModule;
use attnopt_cpu::CpuModel;
use attnopt_ir::builder::Builder;
use attnopt_ir::{interp, DType, Dim, Graph, Op, Role, Shape, Tensor, BATCH, SEQ};
use attnopt_lower::{Hydra, RowView};

/// Deterministic values in [-1, 1) from a seed.
fn values(n: usize, seed: u64) -> Vec<f32> {
    attnopt_ir::rng::Rng::new(seed).values(n, -1.0, 1.0)
}

/// The Hydra graph over `[B, N, D]`: from one `[B, N, 3D]` input sliced V | Q | K, or from
/// three inputs `q`, `k`, `v`.
fn graph(d: usize, causal: bool, fused: bool) -> Graph {
    let mut b = Builder::new();
    let (q, k, v) = if fused {
        let x = b
            .graph
            .input(
                "qkv",
                DType::F32,
                Shape(vec![BATCH, SEQ, Dim::Fixed(3 * d)]),
            )
            .unwrap();
        let mut slice = |start: usize| {
            b.op(
                Op::Slice {
                    axis: 2,
                    start,
                    end: Dim::Fixed(start + d),
                },
                &[x],
                Role::QProj,
            )
            .unwrap()
        };
        let (v, q, k) = (slice(0), slice(d), slice(2 * d));
        (q, k, v)
    } else {
        let s = Shape(vec![BATCH, SEQ, Dim::Fixed(d)]);
        let mut input = |n: &str| b.graph.input(n, DType::F32, s.clone()).unwrap();
        (input("q"), input("k"), input("v"))
    };
    let out = b.hydra_linear(q, k, v, causal, 1e-12).unwrap();
    b.graph.set_output("out", out).unwrap();
    b.finish()
}

/// Inputs for `graph(d, _, fused)` at `batch × tokens`; every `zero_every`-th token's Q and K
/// rows are zero (the `eps` path).
fn inputs(
    batch: usize,
    tokens: usize,
    d: usize,
    fused: bool,
    zero_every: usize,
    seed: u64,
) -> HashMap<String, Tensor> {
    let rows = batch * tokens;
    let mut m = HashMap::new();
    if fused {
        let mut x = values(rows * 3 * d, seed);
        for r in (0..rows).filter(|r| r % zero_every == 0) {
            x[r * 3 * d + d..r * 3 * d + 3 * d].fill(0.0);
        }
        m.insert(
            "qkv".into(),
            Tensor::f32(vec![batch, tokens, 3 * d], x).unwrap(),
        );
    } else {
        for (i, name) in ["q", "k", "v"].into_iter().enumerate() {
            let mut x = values(rows * d, seed + i as u64);
            if name != "v" {
                for r in (0..rows).filter(|r| r % zero_every == 0) {
                    x[r * d..(r + 1) * d].fill(0.0);
                }
            }
            m.insert(name.into(), Tensor::f32(vec![batch, tokens, d], x).unwrap());
        }
    }
    m
}

/// Runs one case on the CPU backend with `threads` and compares with the interpreter.
fn case(batch: usize, tokens: usize, d: usize, causal: bool, fused: bool, threads: usize) {
    let g = graph(d, causal, fused);
    let ins = inputs(
        batch,
        tokens,
        d,
        fused,
        5,
        (batch * 1000 + tokens * 10 + d) as u64,
    );
    let want = &interp::run(&g, &ins, &[]).unwrap()["out"];
    let mut cpu = CpuModel::new(g, threads).unwrap();
    let (got, _) = cpu.run(&ins, &[], false).unwrap();
    let lowered = cpu.lowered(batch, tokens).unwrap();
    let kernels: Vec<&str> = lowered.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        kernels,
        [if causal { "hydra:causal" } else { "hydra" }],
        "the pattern is one kernel"
    );
    let got = &got["out"];
    let err = got.max_abs_diff(want).unwrap();
    // φ(Q) has entries ≤ 1 and kv sums `tokens` products of entries ≤ 1 in f32.
    let tol = 2e-6 * (tokens as f32).sqrt().max(1.0) * want.max_abs().max(1e-3);
    println!(
        "B={batch} N={tokens} D={d} causal={causal} fused={fused} threads={threads}: max-abs {err:.2e} (tol {tol:.1e})"
    );
    assert!(
        err <= tol,
        "B={batch} N={tokens} D={d} causal={causal} fused={fused} threads={threads}: {err}"
    );
    // The zero rows give exactly zero outputs (0 · 1/eps), as in the interpreter.
    let g = got.as_f32().unwrap();
    for r in (0..batch * tokens).filter(|r| r % 5 == 0) {
        assert!(g[r * d..(r + 1) * d].iter().all(|&x| x == 0.0), "row {r}");
    }
}

#[test]
fn hydra_matches_the_interpreter_on_small_shapes() {
    for &(batch, tokens, d) in &[
        (1, 1, 1),
        (1, 3, 4),
        (2, 7, 5),
        (3, 17, 13),
        (1, 33, 16),
        (2, 9, 37),
        (1, 64, 64),
    ] {
        for causal in [false, true] {
            for fused in [true, false] {
                case(batch, tokens, d, causal, fused, 1);
                case(batch, tokens, d, causal, fused, 2);
            }
        }
    }
}

#[test]
fn hydra_matches_the_interpreter_when_split_across_threads() {
    // Large enough to split (≥ 32 Ki elements): partial sums, chunked scans, uneven chunks.
    for &(batch, tokens, d) in &[(1, 517, 67), (2, 301, 61), (3, 150, 96), (1, 1031, 33)] {
        for causal in [false, true] {
            case(batch, tokens, d, causal, true, 2);
            case(batch, tokens, d, causal, false, 2);
        }
    }
}

#[test]
fn hydra_kernel_rejects_short_operands() {
    let spec = Hydra {
        batch: 2,
        tokens: 3,
        d: 4,
        causal: false,
        eps_q: 1e-12,
        eps_k: 1e-12,
        views: [RowView {
            row_stride: 12,
            offset: 4,
        }; 3],
    };
    let mut jit = JitModule::new().unwrap();
    let h = HydraKernel::compile(&mut jit, &spec).unwrap();
    // Rows 0..6 at stride 12 from offset 4 need 5·12 + 4 + 4 = 68 elements.
    let ok = vec![0.5f32; 68];
    let short = vec![0.5f32; 67];
    let mut out = vec![0f32; 24];
    h.run(&ok, &ok, &ok, &mut out).unwrap();
    assert!(matches!(
        h.run(&ok, &short, &ok, &mut out),
        Err(HydraError::OperandLen { which: "K", .. })
    ));
    assert!(matches!(
        h.run(&ok, &ok, &ok, &mut out[..23]),
        Err(HydraError::OutputLen { .. })
    ));
}
