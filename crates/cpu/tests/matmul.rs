//! Matrix products: both implementations against a naive f64 triple loop (odd sizes, strided
//! and transposed views, accumulate on/off, prepared weights, batched attention-shaped
//! products), against each other, and every malformed view answered with an `Err`.
//!
//! oneDNN is optional: without `libdnnl.so.2` its checks print why they skip and pass.

#[path = "../../../tests/support/proptest_config.rs"]
mod proptest_config;

use attnopt_cpu::matmul::{
    best_available, best_available_for, Batch, GemmMatMul, MatMul, MatMulChoice, MatMulError,
    MatMut, MatRef, OneDnnMatMul, Precision,
};
use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The project's seeded generator (`ir::rng`), values in [-1, 1).
struct Rng(attnopt_ir::rng::Rng);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(attnopt_ir::rng::Rng::new(seed))
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        self.0.values(n, -1.0, 1.0)
    }
}

fn onednn() -> Option<&'static OneDnnMatMul> {
    static ONE: OnceLock<Result<OneDnnMatMul, String>> = OnceLock::new();
    match ONE.get_or_init(|| OneDnnMatMul::load(2).map_err(|e| e.to_string())) {
        Ok(m) => Some(m),
        Err(why) => {
            // Once per test (each test's output is shown on its own).
            thread_local!(static TOLD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
            if !TOLD.with(|t| t.replace(true)) {
                println!("skipping the oneDNN checks: {why}");
            }
            None
        }
    }
}

fn gemm1() -> &'static GemmMatMul {
    static G: OnceLock<GemmMatMul> = OnceLock::new();
    G.get_or_init(|| GemmMatMul::new(1))
}

/// Two threads and a threshold of 0, so even small products go through gemm's threaded path.
fn gemm2() -> &'static GemmMatMul {
    static G: OnceLock<GemmMatMul> = OnceLock::new();
    G.get_or_init(|| GemmMatMul::with_threshold(2, 0))
}

/// Every implementation available here.
fn impls() -> Vec<&'static dyn MatMul> {
    let mut v: Vec<&'static dyn MatMul> = vec![gemm1(), gemm2()];
    if let Some(d) = onednn() {
        v.push(d);
    }
    v
}

/// A view layout to test: how an m×n logical matrix is stored.
#[derive(Clone, Copy, Debug)]
enum Store {
    /// Dense row-major.
    RowMajor,
    /// Dense column-major (a transposed row-major buffer).
    ColMajor,
    /// Row-major with `pad` unused elements after each row.
    Padded(usize),
    /// Row-major with every second column used (col stride 2).
    Gapped,
}

/// (len, row_stride, col_stride) for an r×c matrix stored as `s`.
fn strides(s: Store, r: usize, c: usize) -> (usize, usize, usize) {
    match s {
        Store::RowMajor => (r * c, c, 1),
        Store::ColMajor => (r * c, 1, r),
        Store::Padded(p) => (r * (c + p), c + p, 1),
        Store::Gapped => (r * 2 * c, 2 * c, 2),
    }
}

fn make(rng: &mut Rng, s: Store, r: usize, c: usize) -> (Vec<f32>, usize, usize) {
    let (len, rs, cs) = strides(s, r, c);
    (rng.vec(len), rs, cs)
}

/// Reference product in f64 (plus the old c when accumulating), and per-element Σ|a||b| for
/// the tolerance. Row-major m×n.
fn reference(a: &MatRef, b: &MatRef, c_old: Option<&MatRef>) -> (Vec<f64>, Vec<f64>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut g) = (0.0f64, 0.0f64);
            for t in 0..k {
                let p = a.get(i, t).unwrap() as f64 * b.get(t, j).unwrap() as f64;
                s += p;
                g += p.abs();
            }
            if let Some(c) = c_old {
                let v = c.get(i, j).unwrap() as f64;
                s += v;
                g += v.abs();
            }
            out[i * n + j] = s;
            mag[i * n + j] = g;
        }
    }
    (out, mag)
}

/// Checks c against the reference with a tolerance scaled by Σ|a||b|.
fn assert_close(what: &str, c: &MatRef, want: &(Vec<f64>, Vec<f64>)) {
    let n = c.cols;
    for i in 0..c.rows {
        for j in 0..n {
            let got = c.get(i, j).unwrap() as f64;
            let (w, g) = (want.0[i * n + j], want.1[i * n + j]);
            let tol = 2e-6 * g.max(1e-3) * (1.0 + (g.max(1.0)).log2());
            assert!(
                (got - w).abs() <= tol,
                "{what}: c[{i},{j}] = {got}, want {w} (tolerance {tol:e})"
            );
        }
    }
}

const SIZES: [usize; 6] = [1, 2, 7, 33, 64, 129];

// ---------------------------------------------------------------------------------------------
// Correctness.

#[test]
fn products_match_reference_on_odd_shapes_and_layouts() {
    let stores = [
        Store::RowMajor,
        Store::ColMajor,
        Store::Padded(3),
        Store::Gapped,
    ];
    let mut rng = Rng::new(1);
    let mut case = 0usize;
    for imp in impls() {
        for &m in &SIZES {
            for &k in &[1usize, 7, 33, 129] {
                for &n in &[1usize, 7, 33, 129] {
                    case += 1;
                    // Rotate through layouts and accumulate instead of the full product set.
                    let sa = stores[case % 4];
                    let sb = stores[(case / 4) % 4];
                    let sc = stores[(case / 16) % 4];
                    let acc = case % 3 == 1;
                    let (ad, ars, acs) = make(&mut rng, sa, m, k);
                    let (bd, brs, bcs) = make(&mut rng, sb, k, n);
                    let (mut cd, crs, ccs) = make(&mut rng, sc, m, n);
                    if !acc {
                        cd.iter_mut().for_each(|x| *x = f32::NAN); // must not be read
                    }
                    let a = MatRef::new(&ad, m, k, ars, acs);
                    let b = MatRef::new(&bd, k, n, brs, bcs);
                    let old = cd.clone();
                    let old_view = MatRef::new(&old, m, n, crs, ccs);
                    let want = reference(&a, &b, acc.then_some(&old_view));
                    imp.matmul(a, b, MatMut::new(&mut cd, m, n, crs, ccs), acc)
                        .unwrap_or_else(|e| panic!("{}: {e}", imp.name()));
                    let what = format!(
                        "{} {m}x{k}x{n} a {sa:?} b {sb:?} c {sc:?} acc {acc}",
                        imp.name()
                    );
                    assert_close(&what, &MatRef::new(&cd, m, n, crs, ccs), &want);
                    // Padding between rows is never written.
                    if let Store::Padded(p) = sc {
                        for r in 0..m {
                            for x in 0..p {
                                let i = r * (n + p) + n + x;
                                assert!(cd[i].to_bits() == old[i].to_bits(), "{what}: pad written");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bert_shapes_match_reference_sampled() {
    // Full-size products, checked on a sample of entries (the f64 loop over all is slow).
    let mut rng = Rng::new(2);
    for imp in impls() {
        for &(m, k, n) in &[
            (128usize, 768usize, 768usize),
            (33, 3072, 129),
            (128, 768, 2304),
        ] {
            let a_data = rng.vec(m * k);
            // b as a PyTorch [n, k] weight, used transposed.
            let w = rng.vec(n * k);
            let a = MatRef::row_major(&a_data, m, k);
            let b = MatRef::row_major(&w, n, k).t();
            let mut c = vec![0.0; m * n];
            imp.matmul(a, b, MatMut::row_major(&mut c, m, n), false)
                .unwrap();
            for s in 0..200 {
                let (i, j) = ((s * 37) % m, (s * 101) % n);
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for t in 0..k {
                    let p = a_data[i * k + t] as f64 * w[j * k + t] as f64;
                    want += p;
                    mag += p.abs();
                }
                let got = c[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * mag,
                    "{} {m}x{k}x{n} c[{i},{j}] = {got}, want {want}",
                    imp.name()
                );
            }
        }
    }
}

#[test]
fn prepared_weights_match_reference() {
    let mut rng = Rng::new(3);
    for imp in impls() {
        for &(k, n) in &[(33usize, 129usize), (64, 64), (129, 7), (1, 1), (768, 96)] {
            // A PyTorch [n, k] weight passed transposed, a row-major one, a gapped one.
            let torch = rng.vec(n * k);
            let (gd, grs, gcs) = make(&mut rng, Store::Gapped, k, n);
            let weights = [
                MatRef::row_major(&torch, n, k).t(),
                MatRef::new(&gd, k, n, grs, gcs),
            ];
            for (wi, b) in weights.iter().enumerate() {
                let prepared = imp.prepare(*b).unwrap();
                assert_eq!((prepared.k(), prepared.n()), (k, n));
                for &m in &[1usize, 7, 128] {
                    for &(sa, sc, acc) in &[
                        (Store::RowMajor, Store::RowMajor, false),
                        (Store::Padded(5), Store::RowMajor, true), // a = one head of a fused buffer
                        (Store::RowMajor, Store::Padded(2), false),
                        (Store::ColMajor, Store::ColMajor, true),
                    ] {
                        let (ad, ars, acs) = make(&mut rng, sa, m, k);
                        let (mut cd, crs, ccs) = make(&mut rng, sc, m, n);
                        let a = MatRef::new(&ad, m, k, ars, acs);
                        let old = cd.clone();
                        let want =
                            reference(&a, b, acc.then_some(&MatRef::new(&old, m, n, crs, ccs)));
                        imp.matmul_prepared(
                            a,
                            &*prepared,
                            MatMut::new(&mut cd, m, n, crs, ccs),
                            acc,
                        )
                        .unwrap();
                        let what = format!(
                            "{} prepared w{wi} {m}x{k}x{n} a {sa:?} c {sc:?} acc {acc}",
                            imp.name()
                        );
                        assert_close(&what, &MatRef::new(&cd, m, n, crs, ccs), &want);
                    }
                }
            }
        }
    }
}

/// Attention shapes from a fused QKV buffer [S, 3·H·d]: scores_h = Q_h·K_hᵀ into [H, S, S],
/// then context_h = P_h·V_h into the interleaved [S, H·d] output.
#[test]
fn batched_attention_products_match_reference() {
    let mut rng = Rng::new(4);
    for imp in impls() {
        for &(s, h, d) in &[(7usize, 3usize, 8usize), (33, 4, 16), (128, 12, 64)] {
            let hd = h * d;
            let qkv = rng.vec(s * 3 * hd);
            let q = MatRef::new(&qkv, s, d, 3 * hd, 1);
            let k_t = MatRef::new(&qkv[hd..], s, d, 3 * hd, 1).t();
            let mut scores = vec![f32::NAN; h * s * s];
            imp.batched(
                q,
                k_t,
                MatMut::row_major(&mut scores, s, s),
                Batch {
                    count: h,
                    a_stride: d,
                    b_stride: d,
                    c_stride: s * s,
                },
                false,
            )
            .unwrap();
            let v = MatRef::new(&qkv[2 * hd..], s, d, 3 * hd, 1);
            let mut ctx = rng.vec(s * hd);
            let ctx_old = ctx.clone();
            imp.batched(
                MatRef::row_major(&scores, s, s),
                v,
                MatMut::new(&mut ctx, s, d, hd, 1),
                Batch {
                    count: h,
                    a_stride: s * s,
                    b_stride: d,
                    c_stride: d,
                },
                true,
            )
            .unwrap();
            let check_rows = if s > 64 {
                vec![0, 1, 63, 127]
            } else {
                (0..s).collect()
            };
            for head in 0..h {
                let qh = MatRef::new(&qkv[head * d..], s, d, 3 * hd, 1);
                let kh = MatRef::new(&qkv[hd + head * d..], s, d, 3 * hd, 1).t();
                let want = reference(&qh, &kh, None);
                let got = MatRef::row_major(&scores[head * s * s..], s, s);
                let what = format!("{} scores head {head} S={s} d={d}", imp.name());
                for &i in &check_rows {
                    for j in 0..s {
                        let (w, g) = (want.0[i * s + j], want.1[i * s + j]);
                        let x = got.get(i, j).unwrap() as f64;
                        assert!(
                            (x - w).abs() <= 1e-5 * g.max(1e-3),
                            "{what}: [{i},{j}] {x} vs {w}"
                        );
                    }
                }
                let ph = MatRef::row_major(&scores[head * s * s..], s, s);
                let vh = MatRef::new(&qkv[2 * hd + head * d..], s, d, 3 * hd, 1);
                let old = MatRef::new(&ctx_old[head * d..], s, d, hd, 1);
                let want = reference(&ph, &vh, Some(&old));
                let got = MatRef::new(&ctx[head * d..], s, d, hd, 1);
                let what = format!("{} context head {head} S={s} d={d}", imp.name());
                assert_close(&what, &got, &want);
            }
        }
    }
}

#[test]
fn implementations_agree() {
    let Some(d) = onednn() else { return };
    let mut rng = Rng::new(5);
    for &(m, k, n) in &[
        (128usize, 768usize, 768usize),
        (7, 129, 33),
        (1024, 64, 1024),
    ] {
        let a = rng.vec(m * k);
        let w = rng.vec(k * n);
        let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&w, n, k).t());
        let mut c1 = vec![0.0; m * n];
        let mut c2 = vec![0.0; m * n];
        gemm2()
            .matmul(a, b, MatMut::row_major(&mut c1, m, n), false)
            .unwrap();
        let pw = d.prepare(b).unwrap();
        d.matmul_prepared(a, &*pw, MatMut::row_major(&mut c2, m, n), false)
            .unwrap();
        let scale = (k as f32).sqrt();
        for (i, (x, y)) in c1.iter().zip(&c2).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * scale,
                "{m}x{k}x{n} [{i}]: gemm {x} vs oneDNN {y}"
            );
        }
    }
}

#[test]
fn degenerate_sizes() {
    for imp in impls() {
        // m = 0, n = 0: nothing happens.
        let mut c: Vec<f32> = vec![];
        imp.matmul(
            MatRef::row_major(&[], 0, 3),
            MatRef::row_major(&[0.0; 6], 3, 2),
            MatMut::row_major(&mut c, 0, 2),
            false,
        )
        .unwrap();
        imp.matmul(
            MatRef::row_major(&[0.0; 6], 2, 3),
            MatRef::row_major(&[], 3, 0),
            MatMut::row_major(&mut c, 2, 0),
            true,
        )
        .unwrap();
        // k = 0: c = 0, or unchanged when accumulating.
        let mut c = vec![f32::NAN; 6];
        imp.matmul(
            MatRef::row_major(&[], 2, 0),
            MatRef::row_major(&[], 0, 3),
            MatMut::row_major(&mut c, 2, 3),
            false,
        )
        .unwrap();
        assert_eq!(c, vec![0.0; 6], "{}", imp.name());
        let mut c = vec![4.0; 6];
        imp.matmul(
            MatRef::row_major(&[], 2, 0),
            MatRef::row_major(&[], 0, 3),
            MatMut::row_major(&mut c, 2, 3),
            true,
        )
        .unwrap();
        assert_eq!(c, vec![4.0; 6], "{}", imp.name());
        let w = imp.prepare(MatRef::row_major(&[], 0, 3)).unwrap();
        let mut c = vec![f32::NAN; 6];
        imp.matmul_prepared(
            MatRef::row_major(&[], 2, 0),
            &*w,
            MatMut::row_major(&mut c, 2, 3),
            false,
        )
        .unwrap();
        assert_eq!(c, vec![0.0; 6], "{}", imp.name());
        // Batches of zero, and batched k = 0 with offsets past the empty operands.
        let mut c = vec![1.0; 12];
        let bt = Batch {
            count: 0,
            a_stride: 5,
            b_stride: 5,
            c_stride: 6,
        };
        imp.batched(
            MatRef::row_major(&[], 2, 0),
            MatRef::row_major(&[], 0, 3),
            MatMut::row_major(&mut c, 2, 3),
            bt,
            false,
        )
        .unwrap();
        assert_eq!(c, vec![1.0; 12]);
        let bt = Batch {
            count: 2,
            a_stride: 5,
            b_stride: 5,
            c_stride: 6,
        };
        imp.batched(
            MatRef::row_major(&[], 2, 0),
            MatRef::row_major(&[], 0, 3),
            MatMut::row_major(&mut c, 2, 3),
            bt,
            false,
        )
        .unwrap();
        assert_eq!(c, vec![0.0; 12], "{}", imp.name());
        // 1×1×1.
        let mut c = [0.0f32];
        imp.matmul(
            MatRef::row_major(&[3.0], 1, 1),
            MatRef::row_major(&[-2.0], 1, 1),
            MatMut::row_major(&mut c, 1, 1),
            false,
        )
        .unwrap();
        assert_eq!(c[0], -6.0);
    }
}

#[test]
fn results_are_the_same_inside_a_rayon_pool() {
    // gemm runs on the current pool; the product inside `install` equals the one outside.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut rng = Rng::new(6);
    let (m, k, n) = (128, 256, 192);
    let a = rng.vec(m * k);
    let b = rng.vec(k * n);
    let mut outside = vec![0.0; m * n];
    gemm2()
        .matmul(
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            MatMut::row_major(&mut outside, m, n),
            false,
        )
        .unwrap();
    let mut inside = vec![0.0; m * n];
    pool.install(|| {
        gemm2()
            .matmul(
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                MatMut::row_major(&mut inside, m, n),
                false,
            )
            .unwrap();
    });
    assert_eq!(outside, inside);
}

// ---------------------------------------------------------------------------------------------
// Names, selection, precision.

#[test]
fn names_and_selection() {
    assert!(
        gemm1().name().starts_with("gemm 0.19 ("),
        "{}",
        gemm1().name()
    );
    let (best, why) = best_available(2, MatMulChoice::Auto, None).unwrap();
    assert!(!why.is_empty());
    assert_eq!(best.threads(), 2);
    match onednn() {
        Some(d) => {
            assert!(d.name().starts_with("oneDNN 2."), "{}", d.name());
            assert!(best.name().starts_with("oneDNN 2."), "{}", best.name());
            println!("oneDNN: {} from {}", d.name(), d.library_path());
            println!("best_available: {} ({why})", best.name());
        }
        None => assert!(why.contains("using gemm"), "{why}"),
    }
}

/// The caller's choice decides: `Gemm` always gives gemm; with a oneDNN file that does not
/// exist, `Auto` falls back saying why and `OneDnn` is that error.
#[test]
fn the_choice_and_the_library_file_are_explicit() {
    for precision in [Precision::F32, Precision::Bf16] {
        let (m, why) = best_available_for(2, precision, MatMulChoice::Gemm, None).unwrap();
        assert!(m.name().starts_with("gemm"), "{}", m.name());
        assert_eq!(
            m.name().contains("bf16"),
            precision == Precision::Bf16,
            "{}",
            m.name()
        );
        assert!(why.starts_with("gemm requested; using gemm"), "{why}");

        let absent = Path::new("libdnnl-absent.so.2");
        let (m, why) = best_available_for(2, precision, MatMulChoice::Auto, Some(absent)).unwrap();
        assert!(m.name().starts_with("gemm"), "{}", m.name());
        assert!(why.contains("libdnnl-absent.so.2 not found"), "{why}");
        assert!(why.contains("using gemm"), "{why}");

        match best_available_for(2, precision, MatMulChoice::OneDnn, Some(absent)) {
            Err(MatMulError::Load(e)) => assert!(e.contains("libdnnl-absent.so.2"), "{e}"),
            Err(e) => panic!("expected a load error, got {e}"),
            Ok((m, _)) => panic!("{} loaded from a file that does not exist", m.name()),
        }
    }
    if onednn().is_some() {
        let (m, why) = best_available(2, MatMulChoice::OneDnn, None).unwrap();
        assert!(m.name().starts_with("oneDNN 2."), "{} ({why})", m.name());
    }
}

/// The bf16 implementations to test: gemm's emulation always, oneDNN's where the CPU has it.
fn bf16_impls() -> Vec<Box<dyn MatMul>> {
    let mut v: Vec<Box<dyn MatMul>> =
        vec![Box::new(GemmMatMul::with_precision(2, Precision::Bf16))];
    if onednn().is_some() {
        match OneDnnMatMul::load_with(2, Precision::Bf16) {
            Ok(d) => {
                assert_eq!(d.precision(), Precision::Bf16);
                v.push(Box::new(d));
            }
            Err(e) => {
                assert!(matches!(e, MatMulError::NotSupported(_)), "{e}");
                println!("skipping the oneDNN bf16 checks: {e}");
            }
        }
    }
    v
}

/// `x` rounded to bf16 (ties to even), computed here independently of the crate.
fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

#[test]
fn bf16_products_are_bf16_inputs_with_f32_accumulation() {
    let mut rng = Rng::new(7);
    for d in bf16_impls() {
        println!("bf16: {}", d.name());
        for &(m, k, n) in &[
            (1usize, 7usize, 33usize),
            (7, 129, 33),
            (128, 768, 96),
            (33, 64, 1),
            (5, 40, 600),
        ] {
            let torch = rng.vec(n * k);
            let b = MatRef::row_major(&torch, n, k).t();
            let w = d.prepare(b).unwrap();
            assert!(
                w.bytes() >= 2 * k * n,
                "bf16 storage {} for {k}x{n}",
                w.bytes()
            );
            // Native bf16 stores half; the gemm fallback stores the rounded values as f32 (no
            // widening pass per product: f32 speed, f32 memory).
            if k * n >= 768 * 96 && !d.name().starts_with("gemm") {
                assert!(
                    w.bytes() < 4 * k * n,
                    "bf16 storage {} for {k}x{n}",
                    w.bytes()
                );
            }
            let rounded_w: Vec<f32> = torch.iter().map(|&x| bf16_round(x)).collect();
            let b16 = MatRef::row_major(&rounded_w, n, k).t();
            for &(sa, sc, acc) in &[
                (Store::RowMajor, Store::RowMajor, false),
                (Store::Padded(5), Store::Padded(2), true),
                (Store::Gapped, Store::ColMajor, false),
            ] {
                let (ad, ars, acs) = make(&mut rng, sa, m, k);
                let (mut cd, crs, ccs) = make(&mut rng, sc, m, n);
                let a = MatRef::new(&ad, m, k, ars, acs);
                let old = cd.clone();
                let c_old = acc.then_some(MatRef::new(&old, m, n, crs, ccs));
                let (exact, mag) = reference(&a, &b, c_old.as_ref());
                // The same product on bf16-rounded inputs, in f64.
                let ad16: Vec<f32> = ad.iter().map(|&x| bf16_round(x)).collect();
                let a16 = MatRef::new(&ad16, m, k, ars, acs);
                let (want, _) = reference(&a16, &b16, c_old.as_ref());
                d.matmul_prepared(a, &*w, MatMut::new(&mut cd, m, n, crs, ccs), acc)
                    .unwrap();
                let got = MatRef::new(&cd, m, n, crs, ccs);
                let mut worst = 0.0f64;
                for i in 0..m {
                    for j in 0..n {
                        let g = got.get(i, j).unwrap() as f64;
                        // f32 accumulation of the rounded inputs' products.
                        let tol = 2e-6 * (k as f64).sqrt() * mag[i * n + j] + 1e-6;
                        let err = (g - want[i * n + j]).abs();
                        assert!(
                            err <= tol,
                            "{} {m}x{k}x{n} {sa:?}/{sc:?} [{i},{j}]: {err} from the bf16-input product > {tol}",
                            d.name()
                        );
                        worst = worst.max((g - exact[i * n + j]).abs() / mag[i * n + j].max(1e-30));
                    }
                }
                // Not f32 in disguise: some relative error at the bf16 scale shows up.
                if k >= 64 && m * n >= 64 {
                    assert!(
                        worst > 1e-5,
                        "bf16 {m}x{k}x{n}: error {worst} looks like f32"
                    );
                }
            }
        }
        // Products of two activations stay f32.
        let a = rng.vec(33 * 65);
        let b2 = rng.vec(65 * 17);
        let (a, b2) = (
            MatRef::row_major(&a, 33, 65),
            MatRef::row_major(&b2, 65, 17),
        );
        let mut c = vec![0.0; 33 * 17];
        d.matmul(a, b2, MatMut::row_major(&mut c, 33, 17), false)
            .unwrap();
        assert_close(
            "bf16 instance, f32 matmul",
            &MatRef::row_major(&c, 33, 17),
            &reference(&a, &b2, None),
        );
        // f32 and bf16 weights do not mix across instances.
        let f32_w = gemm2().prepare(b2).unwrap();
        let e = d.matmul_prepared(a, &*f32_w, MatMut::row_major(&mut c, 33, 17), false);
        assert!(matches!(e, Err(MatMulError::ForeignWeight(_))), "{e:?}");
    }
}

#[test]
fn bf16_weights_prepare_like_their_f32_values() {
    // A checkpoint's bf16 weight prepared from its bits gives the same products, bit for bit,
    // as the same values prepared from f32, in every implementation and precision.
    let mut rng = Rng::new(8);
    let mut all: Vec<Box<dyn MatMul>> = bf16_impls();
    all.push(Box::new(GemmMatMul::new(2)));
    if onednn().is_some() {
        all.push(Box::new(OneDnnMatMul::load(2).unwrap()));
    }
    for d in &all {
        for &(m, k, n) in &[(3usize, 17usize, 9usize), (64, 96, 300)] {
            let bits: Vec<u16> = rng
                .vec(n * k)
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect();
            let wide: Vec<f32> = bits
                .iter()
                .map(|&b| f32::from_bits((b as u32) << 16))
                .collect();
            // PyTorch layout [n, k], used transposed.
            let w16 = d.prepare_bf16(MatRef::row_major(&bits, n, k).t()).unwrap();
            let w32 = d.prepare(MatRef::row_major(&wide, n, k).t()).unwrap();
            let a = rng.vec(m * k);
            let (mut c16, mut c32) = (vec![0.0; m * n], vec![0.0; m * n]);
            let a = MatRef::row_major(&a, m, k);
            d.matmul_prepared(a, &*w16, MatMut::row_major(&mut c16, m, n), false)
                .unwrap();
            d.matmul_prepared(a, &*w32, MatMut::row_major(&mut c32, m, n), false)
                .unwrap();
            assert_eq!(c16, c32, "{} {m}x{k}x{n}", d.name());
        }
        // A view past the end of its slice is an error, not a read.
        let bits = vec![0u16; 10];
        let e = d
            .prepare_bf16(MatRef::row_major(&bits, 4, 3))
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, MatMulError::Bounds(_)), "{e}");
    }
}

#[test]
fn onednn_uses_fast_kernels_for_model_layouts() {
    let Some(d) = onednn() else { return };
    let a = vec![0.0; 128 * 2304];
    let w = vec![0.0; 768 * 768];
    let mut c = vec![0.0; 128 * 2304];
    // Dense activations and a PyTorch weight used transposed: the brgemm kernel.
    let imp = d
        .implementation_for(
            MatRef::row_major(&a[..128 * 768], 128, 768),
            MatRef::row_major(&w, 768, 768).t(),
            MatMut::row_major(&mut c[..128 * 768], 128, 768),
        )
        .unwrap();
    println!("dense: {imp}");
    assert!(!imp.starts_with("ref"), "{imp}");
    // A zero-stride (broadcast) operand picks oneDNN's reference kernel: staged through a copy.
    let imp = d
        .implementation_for(
            MatRef::row_major(&a[..128 * 768], 128, 768),
            MatRef::new(&w, 768, 768, 0, 1),
            MatMut::row_major(&mut c[..128 * 768], 128, 768),
        )
        .unwrap();
    println!("broadcast b: {imp}");
    assert!(
        !imp.starts_with("ref") || imp.contains("dense copies"),
        "{imp}"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed input: always an Err, never a panic or a wild read.

#[test]
fn mismatches_are_errors() {
    let buf = vec![1.0f32; 64];
    for imp in impls() {
        let mut c = vec![0.0f32; 64];
        let name = imp.name().to_string();
        let shape = |r: Result<(), MatMulError>| {
            assert!(matches!(r, Err(MatMulError::Shape(_))), "{name}: {r:?}")
        };
        // k disagrees.
        shape(imp.matmul(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf, 4, 2),
            MatMut::row_major(&mut c, 2, 2),
            false,
        ));
        // c has the wrong shape.
        shape(imp.matmul(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c, 3, 2),
            false,
        ));
        let bounds = |r: Result<(), MatMulError>| {
            assert!(matches!(r, Err(MatMulError::Bounds(_))), "{name}: {r:?}")
        };
        // One element short, in each operand.
        bounds(imp.matmul(
            MatRef::row_major(&buf[..5], 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c, 2, 2),
            false,
        ));
        bounds(imp.matmul(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf[..5], 3, 2),
            MatMut::row_major(&mut c, 2, 2),
            false,
        ));
        bounds(imp.matmul(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c[..3], 2, 2),
            false,
        ));
        // A stride that reaches past the end, and one whose arithmetic overflows.
        bounds(imp.matmul(
            MatRef::new(&buf, 2, 3, 62, 1),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c, 2, 2),
            false,
        ));
        bounds(imp.matmul(
            MatRef::new(&buf, 2, 3, usize::MAX / 2, 1),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c, 2, 2),
            false,
        ));
        bounds(imp.matmul(
            MatRef::new(&buf, 3, 3, 1 << 62, 1 << 62),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c, 3, 2),
            false,
        ));
        bounds(imp.matmul(
            MatRef::new(&buf, usize::MAX, 3, 0, 1),
            MatRef::row_major(&buf, 3, 2),
            MatMut::new(&mut c, usize::MAX, 2, 0, 1),
            false,
        ));
        // An output with two elements at one address.
        let alias = |r: Result<(), MatMulError>| {
            assert!(matches!(r, Err(MatMulError::Aliasing(_))), "{name}: {r:?}")
        };
        alias(imp.matmul(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::new(&mut c, 2, 2, 0, 1),
            false,
        ));
        alias(imp.matmul(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::new(&mut c, 2, 2, 1, 1),
            false,
        ));
        alias(imp.matmul(
            MatRef::row_major(&buf, 3, 3),
            MatRef::row_major(&buf, 3, 3),
            MatMut::new(&mut c, 3, 3, 2, 1),
            false,
        ));
        // Batches: out of bounds, overlapping outputs.
        let bt = Batch {
            count: 4,
            a_stride: 6,
            b_stride: 0,
            c_stride: 4,
        };
        bounds(imp.batched(
            MatRef::row_major(&buf[..23], 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c, 2, 2),
            bt,
            false,
        ));
        bounds(imp.batched(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c[..15], 2, 2),
            bt,
            false,
        ));
        let bt = Batch {
            count: 2,
            a_stride: 6,
            b_stride: 0,
            c_stride: 2,
        };
        alias(imp.batched(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c, 2, 2),
            bt,
            false,
        ));
        let bt = Batch {
            count: 2,
            a_stride: 0,
            b_stride: 0,
            c_stride: 0,
        };
        alias(imp.batched(
            MatRef::row_major(&buf, 2, 3),
            MatRef::row_major(&buf, 3, 2),
            MatMut::row_major(&mut c, 2, 2),
            bt,
            false,
        ));
        // Prepared weights: wrong k, a weight view out of bounds.
        let w = imp.prepare(MatRef::row_major(&buf, 3, 2)).unwrap();
        shape(imp.matmul_prepared(
            MatRef::row_major(&buf, 2, 4),
            &*w,
            MatMut::row_major(&mut c, 2, 2),
            false,
        ));
        assert!(matches!(
            imp.prepare(MatRef::row_major(&buf, 8, 9)),
            Err(MatMulError::Bounds(_))
        ));
        // The slices were never touched.
        assert!(c.iter().all(|&x| x == 0.0), "{name} wrote on error");
    }
}

#[test]
fn foreign_weights_are_errors() {
    let buf = vec![1.0f32; 16];
    let mut c = vec![0.0f32; 16];
    let gw = gemm1().prepare(MatRef::row_major(&buf, 2, 2)).unwrap();
    // gemm weights are plain data: any gemm instance may use them.
    gemm2()
        .matmul_prepared(
            MatRef::row_major(&buf, 2, 2),
            &*gw,
            MatMut::row_major(&mut c, 2, 2),
            false,
        )
        .unwrap();
    let Some(d) = onednn() else { return };
    let e = d.matmul_prepared(
        MatRef::row_major(&buf, 2, 2),
        &*gw,
        MatMut::row_major(&mut c, 2, 2),
        false,
    );
    assert!(matches!(e, Err(MatMulError::ForeignWeight(_))), "{e:?}");
    let dw = d.prepare(MatRef::row_major(&buf, 2, 2)).unwrap();
    let e = gemm1().matmul_prepared(
        MatRef::row_major(&buf, 2, 2),
        &*dw,
        MatMut::row_major(&mut c, 2, 2),
        false,
    );
    assert!(matches!(e, Err(MatMulError::ForeignWeight(_))), "{e:?}");
    // A weight from another oneDNN instance (another engine).
    let other = OneDnnMatMul::load(1).unwrap();
    let e = other.matmul_prepared(
        MatRef::row_major(&buf, 2, 2),
        &*dw,
        MatMut::row_major(&mut c, 2, 2),
        false,
    );
    assert!(matches!(e, Err(MatMulError::ForeignWeight(_))), "{e:?}");
    // The weight outlives its instance's other handles.
    drop(other);
    let ow = OneDnnMatMul::load(1)
        .unwrap()
        .prepare(MatRef::row_major(&buf, 2, 2))
        .unwrap();
    assert_eq!(ow.k(), 2);
    drop(ow);
}

/// Whether a view (or batch of views) lies in its slice: the spec the checks implement.
fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// Whether an output view names distinct elements (exact, by enumeration; small views).
fn distinct(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    let mut seen = std::collections::HashSet::new();
    (0..rows).all(|r| (0..cols).all(|c| seen.insert(r * rs + c * cs)))
}

proptest! {
    // PROPTEST_CASES overrides the number of cases (e.g. 5000 for a long run).
    #![proptest_config(proptest_config::config(200))]

    /// Random small views with random strides and slice lengths: Ok with the right numbers
    /// exactly when the views fit and c is alias-free (under the documented sufficient test),
    /// else an Err, never a panic.
    #[test]
    fn random_views_are_checked(
        m in 0usize..5, k in 0usize..5, n in 0usize..5,
        ars in 0usize..7, acs in 0usize..7, brs in 0usize..7, bcs in 0usize..7,
        crs in 0usize..7, ccs in 0usize..7,
        alen in 0usize..30, blen in 0usize..30, clen in 0usize..30,
        acc in any::<bool>(), onednn_too in any::<bool>(),
    ) {
        let mut rng = Rng::new((m * 31 + k * 7 + n) as u64);
        let ad = rng.vec(alen);
        let bd = rng.vec(blen);
        let c0 = rng.vec(clen);
        let ok_bounds = fits(alen, m, k, ars, acs) && fits(blen, k, n, brs, bcs) && fits(clen, m, n, crs, ccs);
        let mut imps: Vec<&dyn MatMul> = vec![gemm1(), gemm2()];
        if onednn_too {
            if let Some(d) = onednn() { imps.push(d); }
        }
        for imp in imps {
            let mut cd = c0.clone();
            let a = MatRef::new(&ad, m, k, ars, acs);
            let b = MatRef::new(&bd, k, n, brs, bcs);
            let r = imp.matmul(a, b, MatMut::new(&mut cd, m, n, crs, ccs), acc);
            if !ok_bounds {
                prop_assert!(matches!(r, Err(MatMulError::Bounds(_))), "{}: {:?}", imp.name(), r);
                prop_assert!(cd == c0);
                continue;
            }
            match r {
                Ok(()) => {
                    prop_assert!(distinct(m, n, crs, ccs), "accepted an aliasing c");
                    if m > 0 && n > 0 {
                        let old = MatRef::new(&c0, m, n, crs, ccs);
                        let want = reference(&a, &b, acc.then_some(&old));
                        assert_close(imp.name(), &MatRef::new(&cd, m, n, crs, ccs), &want);
                    }
                }
                Err(MatMulError::Aliasing(_)) => {
                    // Either truly aliasing, or a layout the sufficient test does not cover.
                    prop_assert!(cd == c0);
                }
                Err(e) => prop_assert!(false, "{}: unexpected {e}", imp.name()),
            }
        }
    }
}

#[test]
fn bf16_degenerate_sizes() {
    // m = 0 with more columns than one widening panel, and k = 0 (c zeroed), on every bf16
    // implementation: no panic, no read.
    for d in bf16_impls() {
        let w = d
            .prepare(MatRef::row_major(&vec![0.5; 4 * 600], 4, 600))
            .unwrap();
        let mut c: Vec<f32> = vec![];
        d.matmul_prepared(
            MatRef::row_major(&[], 0, 4),
            &*w,
            MatMut::row_major(&mut c, 0, 600),
            false,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", d.name()));
        let w0 = d.prepare(MatRef::row_major(&[], 0, 600)).unwrap();
        let mut c = vec![7.0f32; 3 * 600];
        d.matmul_prepared(
            MatRef::row_major(&[], 3, 0),
            &*w0,
            MatMut::row_major(&mut c, 3, 600),
            false,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", d.name()));
        assert!(
            c.iter().all(|&x| x == 0.0),
            "{}: k = 0 must zero c",
            d.name()
        );
    }
}
