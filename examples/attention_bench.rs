//! Attention alone on the CPU backend, 2 threads, f32: the fused Hydra kernel's bandwidth
//! against memcpy, and attnopt's softmax attention against its Hydra kernel.
//!
//! Run: `cargo run --release --example attention_bench` (numbers go in docs/BENCHMARKS.md;
//! PyTorch SDPA on the same shapes: `python3 bench/peers.py --attention`).
//!
//! 1. Bandwidth at N=4096, D=768, B=1: bytes a run must move (read Q, K, V once, write the
//!    output once: 16·N·D) / time, for Q/K/V as strided slices of one fused `[N, 3D]` QKV
//!    buffer and as three separate buffers, non-causal and causal; against a 2-thread copy
//!    moving the same bytes (read 2·N·D floats, write 2·N·D). Median of interleaved rounds.
//!    `-- --bandwidth-only 4096,16384` runs only this part, at the sizes given.
//! 2. Attention, 12 heads × 64 (D=768), at N=1024, 4096, 16384: attnopt's softmax attention
//!    (the ir builder's `AttentionKind::Softmax`: QKᵀ·scale → softmax → ·V, lowered and run by
//!    `CpuModel`) vs the Hydra kernel alone and the Hydra graph (`Builder::hydra_linear`, one
//!    fused kernel) through `CpuModel::run` on the same Q, K, V. `run` also copies the output
//!    into a fresh `Tensor` (at N=16384 a 50 MB allocation whose page faults cost more than the
//!    kernel). Softmax needs two `12·Nq·N` f32 score tensors (scores and
//!    probabilities): when they do not fit in half the available memory, queries are split into
//!    chunks run one after another against all keys, and the times are added (said in the
//!    output).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use attnopt_cpu::hydra::{Hydra, HydraKernel, RowView};
use attnopt_cpu::jit::JitModule;
use attnopt_cpu::CpuModel;
use attnopt_ir::builder::{Attention, AttentionKind, Builder};
use attnopt_ir::{DType, Dim, Graph, Shape, Tensor};
use rayon::prelude::*;

const THREADS: usize = 2;
const HEADS: usize = 12;
const HEAD_DIM: usize = 64;
const D: usize = HEADS * HEAD_DIM;

fn values(n: usize, seed: u64) -> Vec<f32> {
    attnopt::ir::rng::Rng::new(seed).values(n, -1.0, 1.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Available memory in bytes (`MemAvailable` of /proc/meminfo), if readable.
fn mem_available() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bandwidth(pool: &rayon::ThreadPool, n: usize) {
    let bytes = (16 * n * D) as f64;
    println!("## Hydra kernel bandwidth, N={n}, D={D}, B=1, {THREADS} threads");
    println!(
        "bytes moved per run: {:.1} MB (read Q, K, V; write out)",
        bytes / 1e6
    );
    let qkv = values(n * 3 * D, 1);
    let sep: Vec<Vec<f32>> = (0..3).map(|i| values(n * D, 10 + i)).collect();
    let src = values(2 * n * D, 7);
    let mut dst = vec![0f32; 2 * n * D];
    let mut out = vec![0f32; n * D];
    let mut jit = JitModule::new().expect("jit");
    let view = |offset| RowView {
        row_stride: 3 * D,
        offset,
    };
    let dense = RowView {
        row_stride: D,
        offset: 0,
    };
    let spec = |causal, views| Hydra {
        batch: 1,
        tokens: n,
        d: D,
        causal,
        eps_q: 1e-12,
        eps_k: 1e-12,
        views,
    };
    let kernels: Vec<(&str, HydraKernel, bool)> = vec![
        (
            "hydra, fused QKV [N,3D]",
            HydraKernel::compile(&mut jit, &spec(false, [view(D), view(2 * D), view(0)]))
                .expect("compiles"),
            true,
        ),
        (
            "hydra, separate Q,K,V",
            HydraKernel::compile(&mut jit, &spec(false, [dense; 3])).expect("compiles"),
            false,
        ),
        (
            "hydra causal, fused QKV",
            HydraKernel::compile(&mut jit, &spec(true, [view(D), view(2 * D), view(0)]))
                .expect("compiles"),
            true,
        ),
        (
            "hydra causal, separate",
            HydraKernel::compile(&mut jit, &spec(true, [dense; 3])).expect("compiles"),
            false,
        ),
    ];
    let rounds = 15;
    let mut copy_t = Vec::new();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kernels.len()];
    for round in 0..rounds + 2 {
        let t0 = Instant::now();
        pool.install(|| {
            dst.par_chunks_mut(n * D)
                .zip(src.par_chunks(n * D))
                .for_each(|(d, s)| d.copy_from_slice(s))
        });
        let tc = t0.elapsed().as_secs_f64();
        for (i, (_, k, fused)) in kernels.iter().enumerate() {
            let t0 = Instant::now();
            pool.install(|| {
                if *fused {
                    k.run(&qkv, &qkv, &qkv, &mut out)
                } else {
                    k.run(&sep[0], &sep[1], &sep[2], &mut out)
                }
            })
            .expect("runs");
            if round >= 2 {
                times[i].push(t0.elapsed().as_secs_f64());
            }
        }
        if round >= 2 {
            copy_t.push(tc);
        }
    }
    let copy = median(copy_t);
    let copy_bw = bytes / copy / 1e9;
    println!("| kernel | median ms | GB/s | vs memcpy |");
    println!("|---|---:|---:|---:|");
    println!(
        "| memcpy (2 threads, same bytes) | {:.3} | {copy_bw:.1} | 100 % |",
        copy * 1e3
    );
    for ((name, _, _), t) in kernels.iter().zip(times) {
        let t = median(t);
        let bw = bytes / t / 1e9;
        println!(
            "| {name} | {:.3} | {bw:.1} | {:.0} % |",
            t * 1e3,
            100.0 * bw / copy_bw
        );
    }
    println!();
}

/// `q [1, nq, D]`, `k`, `v` `[1, nk, D]` (fixed sizes) → softmax attention, 12 heads × 64.
fn softmax_graph(nq: usize, nk: usize) -> Graph {
    let mut b = Builder::new();
    let shape = |n| Shape(vec![Dim::Fixed(1), Dim::Fixed(n), Dim::Fixed(D)]);
    let q = b.graph.input("q", DType::F32, shape(nq)).expect("input");
    let k = b.graph.input("k", DType::F32, shape(nk)).expect("input");
    let v = b.graph.input("v", DType::F32, shape(nk)).expect("input");
    let spec = Attention {
        kind: AttentionKind::Softmax,
        heads: HEADS,
        kv_heads: HEADS,
        head_dim: HEAD_DIM,
        causal: false,
        padding_mask: None,
        rope: None,
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
    };
    let c = b.attention(q, k, v, &spec).expect("attention");
    b.graph.set_output("out", c).expect("output");
    b.finish()
}

fn hydra_graph(n: usize) -> Graph {
    let mut b = Builder::new();
    let shape = Shape(vec![Dim::Fixed(1), Dim::Fixed(n), Dim::Fixed(D)]);
    let q = b
        .graph
        .input("q", DType::F32, shape.clone())
        .expect("input");
    let k = b
        .graph
        .input("k", DType::F32, shape.clone())
        .expect("input");
    let v = b.graph.input("v", DType::F32, shape).expect("input");
    let out = b.hydra_linear(q, k, v, false, 1e-12).expect("hydra");
    b.graph.set_output("out", out).expect("output");
    b.finish()
}

/// Median time of `reps` runs of `graph` (after one untimed run), and the kernel names.
fn time_graph(
    graph: Graph,
    inputs: &HashMap<String, Tensor>,
    reps: usize,
) -> (Duration, Vec<String>) {
    let mut cpu = CpuModel::new(graph, THREADS).expect("model");
    cpu.run(inputs, &[], false).expect("runs");
    let mut t = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        cpu.run(inputs, &[], false).expect("runs");
        t.push(t0.elapsed().as_secs_f64());
    }
    let names = cpu
        .lowered(1, 1)
        .map(|l| l.kernels.iter().map(|k| k.name.clone()).collect())
        .unwrap_or_default();
    (Duration::from_secs_f64(median(t)), names)
}

/// Median time of the Hydra kernel alone on separate `q`, `k`, `v` of `n × D` (output buffer
/// allocated once, as in the executor's arena).
fn time_kernel(pool: &rayon::ThreadPool, inputs: &HashMap<String, Tensor>, n: usize) -> Duration {
    let mut jit = JitModule::new().expect("jit");
    let dense = RowView {
        row_stride: D,
        offset: 0,
    };
    let spec = Hydra {
        batch: 1,
        tokens: n,
        d: D,
        causal: false,
        eps_q: 1e-12,
        eps_k: 1e-12,
        views: [dense; 3],
    };
    let k = HydraKernel::compile(&mut jit, &spec).expect("compiles");
    let x = |name: &str| inputs[name].as_f32().expect("f32");
    let mut out = vec![0f32; n * D];
    let mut t = Vec::new();
    for i in 0..8 {
        let t0 = Instant::now();
        pool.install(|| k.run(x("q"), x("k"), x("v"), &mut out))
            .expect("runs");
        if i >= 1 {
            t.push(t0.elapsed().as_secs_f64());
        }
    }
    Duration::from_secs_f64(median(t))
}

fn attention(pool: &rayon::ThreadPool) {
    println!("## Attention alone, {HEADS} heads × {HEAD_DIM} (D={D}), f32, {THREADS} threads");
    println!(
        "| N | attnopt softmax (ms) | Hydra kernel (ms) | Hydra via CpuModel::run (ms) | \
         softmax / Hydra kernel | softmax / Hydra via run | note |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    let avail = mem_available().unwrap_or(8 << 30);
    for n in [1024usize, 4096, 16384] {
        let t = |name: &str, seed| {
            Tensor::f32(vec![1, n, D], values(n * D, seed)).map(|t| (name.to_string(), t))
        };
        let full: HashMap<String, Tensor> = [t("q", 1), t("k", 2), t("v", 3)]
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("tensors");
        let reps = if n <= 1024 { 7 } else { 3 };
        let (hydra, names) = time_graph(hydra_graph(n), &full, reps.max(5));
        let kernel = time_kernel(pool, &full, n);
        assert_eq!(names, ["hydra"], "the Hydra graph lowers to one kernel");
        // Scores and probabilities, 12·nq·n f32 each, must fit in half of what is available.
        let mut chunks = 1;
        while 2 * HEADS * (n / chunks) * n * 4 > avail / 2 && chunks < n {
            chunks *= 2;
        }
        let nq = n / chunks;
        let mut softmax = Duration::ZERO;
        let reps = if chunks > 1 { 1 } else { reps };
        for c in 0..chunks {
            let mut ins = full.clone();
            let q = &full["q"].as_f32().expect("f32")[c * nq * D..(c + 1) * nq * D];
            ins.insert(
                "q".into(),
                Tensor::f32(vec![1, nq, D], q.to_vec()).expect("tensor"),
            );
            softmax += time_graph(softmax_graph(nq, n), &ins, reps).0;
        }
        let note = if chunks > 1 {
            format!(
                "softmax: {chunks} query chunks of {nq} run one after another (the {:.1} GB of scores \
                 for all queries would not fit in {:.1} GB available)",
                (2 * HEADS * n * n * 4) as f64 / 1e9,
                avail as f64 / 1e9
            )
        } else {
            String::new()
        };
        println!(
            "| {n} | {:.1} | {:.3} | {:.3} | {:.0}× | {:.0}× | {note} |",
            softmax.as_secs_f64() * 1e3,
            kernel.as_secs_f64() * 1e3,
            hydra.as_secs_f64() * 1e3,
            softmax.as_secs_f64() / kernel.as_secs_f64(),
            softmax.as_secs_f64() / hydra.as_secs_f64()
        );
    }
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build()
        .expect("thread pool");
    // `-- --bandwidth-only N1,N2,..`: part 1 at other sizes (e.g. past the L3 cache) and exit.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bandwidth-only") {
        let sizes = args.get(i + 1).map(String::as_str).unwrap_or("4096");
        for n in sizes.split(',').filter_map(|x| x.parse().ok()) {
            bandwidth(&pool, n);
        }
        return;
    }
    bandwidth(&pool, 4096);
    attention(&pool);
}
