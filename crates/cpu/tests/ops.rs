//! The CPU backend's native generic kernels against the reference interpreter's meaning of the
//! same operators, on seeded random data and odd shapes.

use attnopt_cpu::ops;
use attnopt_ir::{interp, Bindings, Op, Reduce, RopeStyle, Scalar, Shape, Tensor};

fn data(n: usize, seed: u64) -> Vec<f32> {
    attnopt_ir::rng::Rng::new(seed).values(n, -2.0, 2.0)
}

fn reference(op: &Op, args: &[&Tensor]) -> Vec<f32> {
    interp::eval_op(op, args, &Bindings::new(1, 1))
        .unwrap()
        .as_f32()
        .unwrap()
        .to_vec()
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn reductions_and_prefix_sums_match_the_interpreter() {
    for shape in [
        vec![3usize, 5, 7],
        vec![1, 1, 4],
        vec![2, 9, 1],
        vec![4, 3, 2, 5],
    ] {
        let n: usize = shape.iter().product();
        let x = Tensor::f32(shape.clone(), data(n, 7)).unwrap();
        for axis in 0..shape.len() {
            let (outer, len, inner) = ops::around(&shape, axis);
            for kind in [Reduce::Sum, Reduce::Max, Reduce::Mean] {
                let mut out = vec![0f32; outer * inner];
                ops::reduce(kind, x.as_f32().unwrap(), outer, len, inner, &mut out).unwrap();
                close(
                    &out,
                    &reference(
                        &Op::Reduce {
                            kind,
                            axis,
                            keep_dim: true,
                        },
                        &[&x],
                    ),
                    &format!("{kind:?} axis {axis} of {shape:?}"),
                );
            }
            let mut out = vec![0f32; n];
            ops::cumsum(x.as_f32().unwrap(), outer, len, inner, &mut out).unwrap();
            close(
                &out,
                &reference(&Op::CumSum { axis }, &[&x]),
                &format!("cumsum axis {axis} of {shape:?}"),
            );
        }
    }
}

#[test]
fn rope_and_repeat_heads_match_the_interpreter() {
    for shape in [vec![2usize, 3, 5, 8], vec![1, 1, 1, 2], vec![1, 2, 17, 6]] {
        let n: usize = shape.iter().product();
        let x = Tensor::f32(shape.clone(), data(n, 3)).unwrap();
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            let mut out = vec![0f32; n];
            ops::rope(x.as_f32().unwrap(), &shape, 10000.0, style, 0, &mut out).unwrap();
            close(
                &out,
                &reference(
                    &Op::Rope {
                        theta: Scalar::new(10000.0),
                        style,
                    },
                    &[&x],
                ),
                &format!("rope {style:?} {shape:?}"),
            );
        }
        for times in [1, 3] {
            let mut out = vec![0f32; n * times];
            ops::repeat_heads(x.as_f32().unwrap(), &shape, times, &mut out).unwrap();
            close(
                &out,
                &reference(&Op::RepeatHeads { times }, &[&x]),
                &format!("repeat_heads ×{times} {shape:?}"),
            );
        }
    }
}

#[test]
fn concat_and_expand_match_the_interpreter() {
    let a = Tensor::f32(vec![2, 1, 4], data(8, 1)).unwrap();
    let b = Tensor::f32(vec![2, 3, 4], data(24, 2)).unwrap();
    let mut out = vec![0f32; 32];
    let parts = [
        (a.as_f32().unwrap(), a.shape().to_vec()),
        (b.as_f32().unwrap(), b.shape().to_vec()),
    ];
    ops::concat(&parts, 1, &[2, 4, 4], &mut out).unwrap();
    close(
        &out,
        &reference(&Op::Concat { axis: 1 }, &[&a, &b]),
        "concat axis 1",
    );
    let c = Tensor::f32(vec![1, 1, 4], data(4, 5)).unwrap();
    let mut out = vec![0f32; 24];
    ops::expand(c.as_f32().unwrap(), &[1, 1, 4], &[2, 3, 4], &mut out).unwrap();
    close(
        &out,
        &reference(&Op::Expand(Shape::fixed(&[2, 3, 4])), &[&c]),
        "expand",
    );
}

#[test]
fn gather_refuses_ids_outside_the_table() {
    let table = data(12, 9);
    let mut out = vec![0f32; 6];
    assert!(ops::gather(&table, 4, 3, &[0, 3], &mut out).is_ok());
    assert_eq!(&out[3..], &table[9..12]);
    let e = ops::gather(&table, 4, 3, &[0, 4], &mut out).unwrap_err();
    assert!(e.contains("id 4 is outside the table's 4 rows"), "{e}");
    assert!(ops::gather(&table, 4, 3, &[-1, 0], &mut out).is_err());
    assert!(
        ops::slice(&table, 1, 12, 1, 10, 5, &mut vec![0f32; 5]).is_err(),
        "a slice past the axis is an error"
    );
}

#[test]
fn gather_from_bf16_matches_the_widened_table() {
    // A bf16 embedding table gathers the same rows as its f32 widening, and checks ids alike.
    let table = data(35, 10);
    let bits: Vec<u16> = table.iter().map(|&x| ops_bf16(x)).collect();
    let wide: Vec<f32> = bits
        .iter()
        .map(|&b| f32::from_bits((b as u32) << 16))
        .collect();
    let ids = [4i64, 0, 6, 4];
    let (mut a, mut b) = (vec![0f32; 20], vec![1f32; 20]);
    ops::gather(&wide, 7, 5, &ids, &mut a).unwrap();
    ops::gather_bf16(&bits, 7, 5, &ids, &mut b).unwrap();
    assert_eq!(a, b);
    assert!(ops::gather_bf16(&bits, 7, 5, &[7], &mut b[..5]).is_err());
    assert!(ops::gather_bf16(&bits[..34], 7, 5, &[0], &mut b[..5]).is_err());
}

fn ops_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[test]
fn jit_rope_matches_the_interpreter() {
    // Half style (rotate_half) as JIT row programs, on odd and even head dims, on one thread
    // and split across a pool; interleaved is left to the native loop (None).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut jit = attnopt_cpu::jit::JitModule::new().unwrap();
    for &(b, h, n, d) in &[
        (1usize, 1usize, 1usize, 2usize),
        (1, 2, 5, 7),
        (2, 3, 9, 8),
        (1, 4, 17, 64),
        (2, 8, 128, 64), // large enough to split across threads
        (1, 2, 33, 130),
    ] {
        let shape = vec![b, h, n, d];
        let x = Tensor::f32(shape.clone(), data(b * h * n * d, d as u64)).unwrap();
        for theta in [10000.0f32, 500000.0] {
            let op = Op::Rope {
                theta: Scalar::new(theta),
                style: RopeStyle::Half,
            };
            let want = reference(&op, &[&x]);
            let k = attnopt_cpu::rope::RopeKernel::compile(
                &mut jit,
                RopeStyle::Half,
                n,
                d,
                theta as f64,
            )
            .unwrap()
            .expect("half style is compiled");
            let mut got = vec![f32::NAN; want.len()];
            k.run(x.as_f32().unwrap(), &mut got).unwrap();
            close(&got, &want, &format!("rope {shape:?} θ={theta}"));
            let mut par = vec![f32::NAN; want.len()];
            pool.install(|| k.run(x.as_f32().unwrap(), &mut par))
                .unwrap();
            assert_eq!(got, par, "threads change nothing");
            // Lengths that are not whole blocks of n × d are errors.
            assert!(k.run(&x.as_f32().unwrap()[1..], &mut got[1..]).is_err());
        }
    }
    let none = attnopt_cpu::rope::RopeKernel::compile(&mut jit, RopeStyle::Interleaved, 4, 8, 1e4)
        .unwrap();
    assert!(none.is_none());
}
