//! Micro-benchmark of the matrix-product implementations (run by hand, not in CI):
//!
//! ```text
//! cargo run -p attnopt-cpu --release --example matmul_bench [-- ROUNDS [THREADS]]
//! ```
//!
//! For BERT-base shapes (m×k×n = 128×768×768, 128×768×3072, 128×3072×768, 128×768×2304 fused
//! QKV) and 1024³, it times each implementation ROUNDS times (default 31), alternating the
//! implementations inside every round, and prints the median GFLOP/s (and the best). Weights
//! are PyTorch-style `[n, k]` buffers, used either as a transposed view (no preparation) or
//! prepared once. Then per-layer attention products (12 heads, S = 128, d = 64, QKᵀ and P·V
//! from a fused QKV buffer) through `batched`. First it measures the machine's f32 FMA peak
//! on THREADS threads (default 2), so the table can state percentages.
//!
//! Everything runs inside one `THREADS`-thread rayon pool (as the forward pass will), and
//! oneDNN's OpenMP team is set to the same count. Timing on a shared VM is noisy: compare
//! columns of one run only.

use attnopt_cpu::matmul::{
    Batch, GemmMatMul, MatMul, MatMut, MatRef, OneDnnMatMul, Precision, PreparedWeight,
};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(31);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cpu}, {cores} logical CPUs; {threads} threads; {rounds} rounds");
    println!(
        "OMP_WAIT_POLICY={}",
        std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "(unset)".into())
    );
    let one = fma_peak(1);
    let peak = fma_peak(threads);
    match (one, peak) {
        (Some(o), Some(p)) => println!(
            "f32 FMA peak (AVX-512 fmadd loop): 1 thread {o:.0} GFLOP/s, {threads} threads {p:.0} GFLOP/s"
        ),
        _ => println!("f32 FMA peak: not measured (no AVX-512F)"),
    }

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    pool.install(|| run(rounds, threads, peak));
    if let Some(p) = fma_peak(threads) {
        println!("f32 FMA peak again after the runs ({threads} threads): {p:.0} GFLOP/s");
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average (other processes compete on a shared machine): {}",
            l.trim()
        );
    }
}

struct Candidate {
    label: String,
    imp: Box<dyn MatMul>,
    prepared: bool,
}

fn run(rounds: usize, threads: usize, peak: Option<f64>) {
    let mut cands = vec![
        Candidate {
            label: "gemm Wᵀ view".into(),
            imp: Box::new(GemmMatMul::new(threads)),
            prepared: false,
        },
        Candidate {
            label: "gemm prepared".into(),
            imp: Box::new(GemmMatMul::new(threads)),
            prepared: true,
        },
    ];
    match OneDnnMatMul::load(threads) {
        Ok(_) => {
            let d = OneDnnMatMul::load(threads).unwrap();
            println!(
                "oneDNN: {} from {}; {}",
                d.name(),
                d.library_path(),
                d.wait_policy()
            );
            cands.push(Candidate {
                label: "oneDNN Wᵀ view".into(),
                imp: Box::new(d),
                prepared: false,
            });
            let d = OneDnnMatMul::load(threads).unwrap();
            cands.push(Candidate {
                label: "oneDNN prepared".into(),
                imp: Box::new(d),
                prepared: true,
            });
            match OneDnnMatMul::load_with(threads, Precision::Bf16) {
                Ok(d) => {
                    println!("oneDNN bf16: {}", d.name());
                    cands.push(Candidate {
                        label: "oneDNN bf16 prepared".into(),
                        imp: Box::new(d),
                        prepared: true,
                    });
                }
                Err(e) => println!("oneDNN bf16 not measured: {e}"),
            }
        }
        Err(e) => println!("oneDNN not measured: {e}"),
    }
    println!("gemm: {}", cands[0].imp.name());
    println!();

    let shapes = [
        (128usize, 768usize, 768usize, "attn out"),
        (128, 768, 3072, "FFN up"),
        (128, 3072, 768, "FFN down"),
        (128, 768, 2304, "fused QKV"),
        (1024, 1024, 1024, "1024³"),
    ];
    print!("{:<22}", "m×k×n");
    for c in &cands {
        print!(" | {:>22}", c.label);
    }
    println!();
    print!("{:-<22}", "");
    for _ in &cands {
        print!("-|-{:-<22}", "");
    }
    println!();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for &(m, k, n, what) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|_| rand()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rand()).collect(); // PyTorch [n, k]
        let b = MatRef::row_major(&w, n, k).t();
        let mut c = vec![0.0f32; m * n];
        let prepared: Vec<Option<Box<dyn PreparedWeight>>> = cands
            .iter()
            .map(|cd| cd.prepared.then(|| cd.imp.prepare(b).expect("prepare")))
            .collect();
        let rounds = if m * k * n > 1 << 28 {
            rounds.div_ceil(3)
        } else {
            rounds
        };
        let mut times = vec![Vec::with_capacity(rounds); cands.len()];
        for round in 0..rounds + 2 {
            for i in 0..cands.len() {
                // Alternate the order between rounds.
                let i = if round % 2 == 0 {
                    i
                } else {
                    cands.len() - 1 - i
                };
                let cd = &cands[i];
                let t = Instant::now();
                let cm = MatMut::row_major(&mut c, m, n);
                let am = MatRef::row_major(&a, m, k);
                match &prepared[i] {
                    Some(p) => cd.imp.matmul_prepared(am, &**p, cm, false),
                    None => cd.imp.matmul(am, b, cm, false),
                }
                .expect("matmul");
                if round >= 2 {
                    // Two warm-up rounds (primitive creation, packing buffers, page faults).
                    times[i].push(t.elapsed().as_secs_f64());
                }
            }
        }
        print!("{:<22}", format!("{m}×{k}×{n} {what}"));
        for t in &mut times {
            t.sort_by(|x, y| x.partial_cmp(y).unwrap());
            let flop = 2.0 * (m * k * n) as f64;
            let med = flop / t[t.len() / 2] / 1e9;
            let best = flop / t[0] / 1e9;
            let pct = peak.map_or(String::new(), |p| format!(" {:>3.0}%", 100.0 * med / p));
            print!(" | {:>22}", format!("{med:>6.1} ({best:>5.1}){pct}"));
        }
        println!();
    }
    println!("(median GFLOP/s, best in brackets, median as % of the measured FMA peak)");
    println!();

    // Attention products of one BERT-base layer from a fused QKV buffer [S, 3·H·d].
    let (s, h, d) = (128usize, 12usize, 64usize);
    let hd = h * d;
    let qkv: Vec<f32> = (0..s * 3 * hd).map(|_| rand()).collect();
    let mut scores = vec![0.0f32; h * s * s];
    let mut ctx = vec![0.0f32; s * hd];
    let impls: Vec<&Candidate> = cands.iter().filter(|c| !c.prepared).collect();
    let mut times = vec![Vec::new(); impls.len()];
    for round in 0..rounds + 2 {
        for (i, cd) in impls.iter().enumerate() {
            let t = Instant::now();
            cd.imp
                .batched(
                    MatRef::new(&qkv, s, d, 3 * hd, 1),
                    MatRef::new(&qkv[hd..], s, d, 3 * hd, 1).t(),
                    MatMut::row_major(&mut scores, s, s),
                    Batch {
                        count: h,
                        a_stride: d,
                        b_stride: d,
                        c_stride: s * s,
                    },
                    false,
                )
                .expect("scores");
            cd.imp
                .batched(
                    MatRef::row_major(&scores, s, s),
                    MatRef::new(&qkv[2 * hd..], s, d, 3 * hd, 1),
                    MatMut::new(&mut ctx, s, d, hd, 1),
                    Batch {
                        count: h,
                        a_stride: s * s,
                        b_stride: d,
                        c_stride: d,
                    },
                    false,
                )
                .expect("context");
            if round >= 2 {
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
    }
    let flop = 2.0 * 2.0 * (h * s * s * d) as f64;
    println!("attention QKᵀ + P·V, {h} heads, S={s}, d={d}, batched from a fused QKV buffer:");
    for (t, cd) in times.iter_mut().zip(&impls) {
        t.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let med = t[t.len() / 2];
        println!(
            "  {:<40} {:>7.1} µs median ({:>5.1} GFLOP/s), best {:>7.1} µs",
            cd.imp.name(),
            med * 1e6,
            flop / med / 1e9,
            t[0] * 1e6
        );
    }
}

/// f32 FMA throughput of `threads` threads running independent AVX-512 fmadd chains.
fn fma_peak(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        const ITERS: u64 = 20_000_000;
        let mut best = 0.0f64;
        for _ in 0..3 {
            let t = Instant::now();
            let sum: f32 = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..threads)
                    .map(|i| sc.spawn(move || unsafe { fma_loop(ITERS, i as f32) }))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(sum);
            // 12 chains × 16 lanes × 2 FLOP per iteration.
            let gflops = (threads as u64 * ITERS * 12 * 16 * 2) as f64 / secs / 1e9;
            best = best.max(gflops);
        }
        Some(best)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

/// # Safety
/// The CPU must support AVX-512F (checked by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); 12];
    for (i, x) in acc.iter_mut().enumerate() {
        *x = _mm512_add_ps(*x, _mm512_set1_ps(i as f32));
    }
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    _mm512_reduce_add_ps(s)
}
