//! Epilogues inside the product (oneDNN post-ops) against epilogues as JIT passes after it, in
//! one process: two CPU models of one checkpoint, one with [`CpuModel::set_post_ops`] off,
//! timed in alternating rounds so machine noise hits both alike. Run by hand (numbers go in
//! docs/BENCHMARKS.md):
//!
//! ```text
//! cargo run --release --example postops_ab -- CHECKPOINT_DIR [SEQ=128] [ROUNDS=21] [THREADS=2]
//! ```
//!
//! Prints the median whole-model time of each, the median time per kernel kind (ms, GFLOP/s,
//! and of it the JIT epilogue passes), and the largest difference between their outputs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use attnopt::ir::{Data, Tensor};
use attnopt::Model;
use attnopt_cpu::CpuModel;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: postops_ab CHECKPOINT_DIR [SEQ] [ROUNDS] [THREADS]"),
    );
    let seq: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(128);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(21);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let model = Model::load(&dir).expect("checkpoint loads");
    // Batch 1: the first row of the generated (batch-2) inputs.
    let inputs = attnopt::calib::calibration_inputs(&model, None, seq, 0).expect("inputs");
    let inputs = inputs
        .into_iter()
        .map(|(k, t)| {
            let mut shape = t.shape().to_vec();
            let per = t.numel() / shape[0];
            shape[0] = 1;
            let t = match t.data() {
                Data::F32(x) => Tensor::f32(shape, x[..per].to_vec()),
                Data::I64(x) => Tensor::i64(shape, x[..per].to_vec()),
            }
            .expect("lengths match");
            (k, t)
        })
        .collect();
    let feed: HashMap<String, Tensor> = model.prepare_inputs(inputs).expect("inputs fit");
    let out = ["last_hidden_state"];
    let mut models = Vec::new();
    for on in [true, false] {
        let mut cpu = CpuModel::new(model.graph().clone(), threads).expect("CPU model");
        cpu.set_post_ops(on);
        cpu.prepare(1, seq).expect("prepares");
        cpu.run(&feed, &out, false).expect("warm-up");
        models.push(cpu);
    }
    println!(
        "{} · seq {seq} · {threads} threads · {rounds} alternating rounds · {}",
        dir.display(),
        models[0].matmul_name().0
    );
    // Every run is profiled (one clock read per kernel), so each kernel kind gets a median too.
    let mut times = [Vec::new(), Vec::new()];
    type Kinds = BTreeMap<String, (usize, Vec<f64>, Vec<f64>, u64)>;
    let mut kinds: [Kinds; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut outputs = Vec::new();
    for round in 0..rounds {
        for (i, m) in models.iter_mut().enumerate() {
            let t = Instant::now();
            let (o, profile) = m.run(&feed, &out, true).expect("runs");
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
            let mut sums: BTreeMap<&str, (usize, f64, f64, u64)> = BTreeMap::new();
            for k in &profile {
                let e = sums.entry(&k.name).or_default();
                e.0 += 1;
                e.1 += k.seconds;
                e.2 += k.epilogue_seconds;
                e.3 += k.flops;
            }
            for (name, (n, s, epi, f)) in sums {
                let e = kinds[i].entry(name.to_string()).or_default();
                (e.0, e.3) = (n, f);
                e.1.push(s * 1e3);
                e.2.push(epi * 1e3);
            }
            if round == 0 {
                outputs.push(o);
            }
        }
    }
    let label = ["post-ops (fused)", "JIT epilogues (ATTNOPT_POSTOPS=0)"];
    for i in 0..2 {
        let lo = times[i].iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "\n{}: median {:.2} ms, min {lo:.2} ms",
            label[i],
            median(&mut times[i])
        );
        let mut rows: Vec<_> = kinds[i]
            .iter_mut()
            .map(|(name, (n, s, epi, f))| (name.clone(), *n, median(s), median(epi), *f))
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        for (name, n, ms, epi, f) in rows.iter().take(6) {
            println!(
                "  {name:<20} ×{n:<3} {ms:>8.3} ms {:>7.1} GFLOP/s  JIT epilogue {epi:>6.3} ms",
                *f as f64 / ms / 1e6
            );
        }
    }
    let (a, b) = (&outputs[0][out[0]], &outputs[1][out[0]]);
    if let (Data::F32(x), Data::F32(y)) = (a.data(), b.data()) {
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let scale = y.iter().map(|q| q.abs()).fold(0f32, f32::max);
        println!("\nmax |fused − JIT| = {diff:.2e} (max |JIT| = {scale:.2e})");
    }
}
