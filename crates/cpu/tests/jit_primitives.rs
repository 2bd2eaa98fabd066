//! The AVX-512 row primitives and the kernels that call them: `exp` bit for bit against the
//! f32x4 JIT's, and masked, scaled, causal softmax on both code paths (primitives on, and the
//! f32x4 code forced) against the lowering's reference, over odd row lengths, fully masked
//! and empty rows, and small to huge magnitudes. On a CPU without `avx512f` the primitive
//! checks are skipped (the "on" path then compiles to the f32x4 code too).
//!
//! The CLI's `ATTNOPT_JIT_AVX512=0` sets the option off; `tests/cli.rs` checks that mapping.

mod jit_support;

use attnopt_cpu::jit::{
    exp_sub_sum, Arg, BinaryOp, Expr, InputKind, JitModule, JitOptions, ReduceKind, Reduction,
    RowKernel, RowProgram, UnaryOp, Valid,
};
use jit_support::{row_slices, Rng};

const LENGTHS: [usize; 10] = [1, 3, 15, 16, 17, 31, 127, 128, 129, 200];

fn module(row_primitives: bool) -> JitModule {
    JitModule::with_options(JitOptions {
        row_primitives,
        ..JitOptions::default()
    })
    .unwrap()
}

fn compile(p: &RowProgram, row_primitives: bool) -> RowKernel {
    module(row_primitives).compile(p).unwrap()
}

fn x() -> Expr {
    // s·scale + mask
    Expr::bin(
        BinaryOp::Add,
        Expr::bin(BinaryOp::Mul, Expr::Input(0), Expr::Param(0)),
        Expr::Input(1),
    )
}

/// Softmax as the lowering writes it (`e / s`) or as the JIT docs do (`e · (1/s)`).
fn softmax(rows_per_group: usize, divide: bool) -> RowProgram {
    let e = Expr::un(
        UnaryOp::Exp,
        Expr::bin(BinaryOp::Sub, x(), Expr::Reduced(0)),
    );
    let output = if divide {
        Expr::bin(BinaryOp::Div, e.clone(), Expr::Reduced(1))
    } else {
        Expr::bin(
            BinaryOp::Mul,
            e.clone(),
            Expr::un(UnaryOp::Recip, Expr::Reduced(1)),
        )
    };
    RowProgram {
        inputs: vec![InputKind::Rows, InputKind::GroupVector { rows_per_group }],
        params: 1,
        reductions: vec![
            Reduction {
                kind: ReduceKind::Max,
                expr: x(),
            },
            Reduction::sum(e),
        ],
        output,
        fill: 0.0,
        zero_if_all_masked: true,
    }
}

/// `exp` of `xs` by an f32x4 JIT kernel.
fn jit_exp(xs: &[f32], shift: f32) -> Vec<f32> {
    let p = RowProgram {
        params: 1,
        ..RowProgram::elementwise(
            vec![InputKind::Rows],
            Expr::un(
                UnaryOp::Exp,
                Expr::bin(BinaryOp::Sub, Expr::Input(0), Expr::Param(0)),
            ),
        )
    };
    let mut out = vec![f32::NAN; xs.len()];
    compile(&p, false)
        .run_rows_serial(&[xs], &mut out, xs.len(), Valid::Full, &[shift])
        .unwrap();
    out
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn exp_sub_sum_is_bit_identical_to_the_jit_exp() {
    let mut xs: Vec<f32> = (0..=2_000_000)
        .map(|i| -90.0 + 180.0 * i as f32 / 2_000_000.0)
        .collect();
    xs.extend([
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
        -0.0,
        0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        -87.336_54,
        -87.336_55,
        88.376_26,
        88.376_27,
        f32::MAX,
        f32::MIN,
        1e-30,
        -1e-30,
    ]);
    for shift in [0.0f32, 3.5, -2.25] {
        let want = jit_exp(&xs, shift);
        // Odd lengths, so the masked tail runs at every offset.
        for len in LENGTHS.into_iter().chain([xs.len()]) {
            let mut got = xs[xs.len() - len..].to_vec();
            let Some(sum) = exp_sub_sum(&mut got, shift) else {
                eprintln!("no avx512f: the primitive is not checked");
                return;
            };
            let want = &want[xs.len() - len..];
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                assert!(
                    same_bits(g, w),
                    "len {len} shift {shift}: exp({} − shift): primitive {g:e}, JIT {w:e}",
                    xs[xs.len() - len + i]
                );
            }
            let want_sum: f64 = want.iter().map(|&w| w as f64).sum();
            if want_sum.is_finite() {
                let tol = 1e-6 * want_sum.abs() + f32::MIN_POSITIVE as f64;
                assert!(
                    (sum as f64 - want_sum).abs() <= tol,
                    "len {len}: sum {sum}, want {want_sum}"
                );
            } else {
                assert!(sum.is_nan() || sum.is_infinite(), "len {len}: sum {sum}");
            }
        }
    }
    // Nothing past the slice is touched.
    let mut buf = [2.0f32; 40];
    if let Some(sum) = exp_sub_sum(&mut buf[..17], 2.0) {
        assert_eq!(sum, 17.0);
        assert!(buf[..17].iter().all(|&v| v == 1.0));
        assert!(buf[17..].iter().all(|&v| v == 2.0));
    }
    // Masked entries give exact zeros; an empty slice sums to 0.
    let mut m = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
    if let Some(s) = exp_sub_sum(&mut m, 0.0) {
        assert_eq!(m.map(f32::to_bits), [0, 1.0f32.to_bits(), 0]);
        assert_eq!(s, 1.0);
        assert_eq!(exp_sub_sum(&mut [], 5.0), Some(0.0));
    }
}

#[test]
fn the_option_chooses_the_path() {
    assert!(!module(false).row_primitives());
    let detected = std::arch::is_x86_feature_detected!("avx512f");
    assert_eq!(module(true).row_primitives(), detected);
    // On by default, whatever the environment holds (the library reads none).
    assert!(JitOptions::default().row_primitives);
    assert_eq!(JitModule::new().unwrap().row_primitives(), detected);
}

/// One asm `call` per softmax row with the primitives, none without; the Cranelift verifier
/// (off in release builds) accepts the call.
#[test]
fn softmax_calls_the_primitive_once_per_row() {
    for row_primitives in [true, false] {
        let mut m = JitModule::with_options(JitOptions {
            row_primitives,
            verifier: true,
            ..JitOptions::default()
        })
        .unwrap();
        let expect = usize::from(m.row_primitives());
        for divide in [true, false] {
            let (_, l) = m.compile_with_listing(&softmax(4, divide)).unwrap();
            let calls = l
                .asm
                .lines()
                .filter(|l| l.trim_start().starts_with("call"))
                .count();
            assert_eq!(calls, expect, "row_primitives {row_primitives}\n{}", l.asm);
        }
    }
}

/// Scores of one magnitude class: `scale` 1 keeps them as they are.
fn scores(rng: &mut Rng, n: usize, class: usize) -> Vec<f32> {
    match class {
        0 => rng.vec(n, -6.0, 6.0),
        1 => rng.vec(n, -1e-3, 1e-3),
        2 => rng.vec(n, -80.0, 80.0),
        3 => rng.vec(n, -1e4, 1e4),
        // Mixed: mostly small, a few huge (one entry dominates, the rest underflow to 0).
        _ => (0..n)
            .map(|i| {
                if i % 7 == 3 {
                    rng.uniform(-3e4, 3e4)
                } else {
                    rng.uniform(-2.0, 2.0)
                }
            })
            .collect(),
    }
}

#[test]
fn softmax_both_paths_match_the_reference() {
    let mut rng = Rng(0x5eed_a512);
    let (batch, heads) = (4, 2);
    for d in LENGTHS {
        for class in 0..5 {
            let queries = d.min(5);
            let offset = d - queries;
            let rows_per_group = heads * queries;
            let rows = batch * rows_per_group;
            let s = scores(&mut rng, rows * d, class);
            // Batch 0: no padding; 1: right half padded; 2: everything masked; 3: random.
            let mut mask = vec![0.0f32; batch * d];
            for c in 0..d {
                if c >= d.div_ceil(2) {
                    mask[d + c] = f32::NEG_INFINITY;
                }
                mask[2 * d + c] = f32::NEG_INFINITY;
                if rng.below(3) == 0 {
                    mask[3 * d + c] = f32::NEG_INFINITY;
                }
            }
            let scale = if class == 0 { 0.125 } else { 1.0 };
            let causal = Valid::Causal { queries, offset };
            let valids: Vec<usize> = (0..rows).map(|r| d.min(offset + r % queries + 1)).collect();
            for divide in [true, false] {
                let p = softmax(rows_per_group, divide);
                let mut outs = Vec::new();
                for (row_primitives, valid) in [
                    (true, causal),
                    (false, causal),
                    (true, Valid::PerRow(&valids)),
                ] {
                    let mut out = vec![f32::NAN; rows * d];
                    compile(&p, row_primitives)
                        .run_rows(&[&s, &mask], &mut out, d, valid, &[scale])
                        .unwrap();
                    check_against_reference(
                        &p,
                        &s,
                        &mask,
                        &out,
                        d,
                        &valids,
                        scale,
                        &format!("d {d} class {class} divide {divide} primitives {row_primitives}"),
                    );
                    outs.push(out);
                }
                // The two paths differ only in summation order.
                for (i, (&a, &b)) in outs[0].iter().zip(&outs[1]).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-6 * a.abs().max(b.abs()) + 1e-30,
                        "d {d} class {class}: element {i}: {a} vs {b}"
                    );
                }
                assert_eq!(
                    outs[0], outs[2],
                    "Causal and PerRow give the same valid lengths"
                );
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_against_reference(
    p: &RowProgram,
    s: &[f32],
    mask: &[f32],
    out: &[f32],
    d: usize,
    valids: &[usize],
    scale: f32,
    what: &str,
) {
    let mut want = vec![0.0f32; d];
    let rows_per_group = match p.inputs[1] {
        InputKind::GroupVector { rows_per_group } => rows_per_group,
        _ => unreachable!("the softmax's mask is a GroupVector"),
    };
    for (r, &v) in valids.iter().enumerate() {
        let inputs = row_slices(p, &[s, mask], d, r);
        p.eval_reference(&inputs, &mut want, v, &[scale]);
        let got = &out[r * d..(r + 1) * d];
        let g = r / rows_per_group;
        for c in 0..d {
            let (gv, wv) = (got[c], want[c]);
            assert!(!gv.is_nan(), "{what}: row {r} col {c} is NaN");
            assert!(
                (gv - wv).abs() <= 2e-6 * wv.abs() + 1e-7,
                "{what}: row {r} col {c} (valid {v}): got {gv:e}, reference {wv:e}"
            );
            // Exact zeros: past `valid`, under the padding mask, and in fully masked rows.
            if c >= v || mask[g * d + c] == f32::NEG_INFINITY {
                assert_eq!(gv.to_bits(), 0, "{what}: row {r} col {c}");
            }
        }
        let live = (0..v).any(|c| mask[g * d + c] == 0.0);
        let sum: f64 = got.iter().map(|&x| x as f64).sum();
        if live {
            assert!((sum - 1.0).abs() < 1e-5, "{what}: row {r} sums to {sum}");
        } else {
            assert_eq!(sum, 0.0, "{what}: row {r} is fully masked");
        }
    }
}

#[test]
fn softmax_fully_masked_and_empty_rows_are_zero_on_both_paths() {
    let d = 33;
    let s = vec![1.0f32; 4 * d];
    let mut mask = vec![f32::NEG_INFINITY; 4 * d];
    mask[2 * d + 20] = 0.0; // row 2 has one unmasked entry, but only if valid > 20.
    mask[3 * d + 32] = 0.0;
    let valid = [d, 0, 17, d];
    for row_primitives in [true, false] {
        let k = compile(&softmax(1, true), row_primitives);
        let mut out = vec![f32::NAN; 4 * d];
        k.run_rows(&[&s, &mask], &mut out, d, Valid::PerRow(&valid), &[1.0])
            .unwrap();
        assert!(out[..3 * d].iter().all(|&v| v.to_bits() == 0), "{out:?}");
        assert_eq!(out[4 * d - 1], 1.0);
        assert!(out[3 * d..4 * d - 1].iter().all(|&v| v.to_bits() == 0));
    }
}

/// In place (the scores buffer is the output, as in the attention epilogue): the Max pass
/// overwrites the scores with `X`, and nothing reads them after it.
#[test]
fn softmax_in_place_matches_out_of_place_on_both_paths() {
    let mut rng = Rng(77);
    for d in LENGTHS {
        let rows = 6;
        let s = rng.vec(rows * d, -10.0, 10.0);
        let mut mask = vec![0.0f32; d];
        mask[d / 2] = f32::NEG_INFINITY;
        for row_primitives in [true, false] {
            let k = compile(&softmax(rows, true), row_primitives);
            let mut out = vec![f32::NAN; rows * d];
            k.run_rows(&[&s, &mask], &mut out, d, Valid::Full, &[0.5])
                .unwrap();
            let mut io = s.clone();
            k.run_rows_in_place(
                &[Arg::Out, Arg::Data(&mask)],
                &mut io,
                d,
                Valid::Full,
                &[0.5],
            )
            .unwrap();
            assert_eq!(io, out, "d {d} primitives {row_primitives}");
        }
    }
}
