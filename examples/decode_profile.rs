//! Where a decoding step's time goes: prefill a decoder to a position, then time one-token
//! steps on the CPU backend with every kernel timed, and print the kernels by total time.
//!
//! ```text
//! cargo run --release --example decode_profile -- MODEL POSITION [STEPS] [f32|bf16] [THREADS]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use attnopt::decode::Session;
use attnopt::{Backend, CpuOptions, LoadOptions, Model, Precision};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: decode_profile MODEL POSITION [STEPS] [f32|bf16] [THREADS]";
    let dir = PathBuf::from(args.first().expect(usage));
    let position: usize = args.get(1).expect(usage).parse().expect(usage);
    let steps: usize = args.get(2).map_or(5, |s| s.parse().expect(usage));
    let precision = match args.get(3).map(String::as_str) {
        Some("bf16") => Precision::Bf16,
        _ => Precision::F32,
    };
    let threads: usize = args.get(4).map_or(2, |s| s.parse().expect(usage));
    let opts = LoadOptions {
        logits: true,
        ..LoadOptions::default()
    };
    let model = Model::load_with(&dir, &opts).expect("loads");
    let backend = Backend::Cpu(CpuOptions {
        threads,
        precision,
        ..CpuOptions::default()
    });
    let mut s = Session::new(&model, &backend).expect("a decoder");
    let t = Instant::now();
    s.feed(&vec![1; position]).expect("prefill");
    println!(
        "prefill {position}: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    // The prompt again, profiled (everything is prepared now).
    s.reset();
    s.set_profile(true);
    let t = Instant::now();
    s.feed(&vec![1; position]).expect("prefill");
    println!("prefill again: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let mut pre: Vec<_> = s
        .profile()
        .iter()
        .map(|k| (k.seconds * 1e3, k.name.clone()))
        .collect();
    pre.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (ms, name) in pre.iter().take(6) {
        println!("{ms:>10.3} ms {name}");
    }
    s.feed(&[1]).expect("warm step");
    let mut by: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let mut total = 0.0;
    for _ in 0..steps {
        let t = Instant::now();
        s.feed(&[1]).expect("step");
        total += t.elapsed().as_secs_f64() * 1e3;
        for k in s.profile() {
            let e = by.entry(k.name.clone()).or_default();
            e.0 += 1;
            e.1 += k.seconds * 1e3;
        }
    }
    let kernels: f64 = by.values().map(|v| v.1).sum();
    println!(
        "{steps} steps: {:.2} ms per step, of which kernels {:.2} ms",
        total / steps as f64,
        kernels / steps as f64
    );
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    for (name, (count, ms)) in rows.iter().take(20) {
        println!(
            "{:>10.3} ms/step {:>5} × {name}",
            ms / steps as f64,
            count / steps
        );
    }
}
