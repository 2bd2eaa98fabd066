//! How the optimizer's time grows with depth: BERT-base-shaped synthetic models (768 wide,
//! 12 heads) of 1, 12, 24 and 48 layers, optimised with the exact rules at N=128.
//! Run: `cargo run --release --example optimizer_scaling` (numbers go in docs/BENCHMARKS.md).

use std::time::Instant;

use attnopt_rewrite::{optimize, Options, RuleSet};

fn main() {
    let rules = RuleSet::embedded().expect("embedded rules load");
    println!("layers  import_ms  optimise_ms  distinct_blocks  nodes_before  nodes_after");
    let mut base = None;
    for layers in [1usize, 12, 24, 48] {
        let t0 = Instant::now();
        let m = attnopt_import::synthetic::bert(layers, 768, 12, 3072)
            .expect("synthetic model imports");
        let import_ms = t0.elapsed().as_secs_f64() * 1e3;
        // Best of three, so one noisy run does not decide the ratio.
        let mut best = f64::INFINITY;
        let mut result = None;
        for _ in 0..3 {
            let t1 = Instant::now();
            let o = optimize(&m.graph, &Options::exact(&rules, 128)).expect("optimises");
            best = best.min(t1.elapsed().as_secs_f64() * 1e3);
            result = Some(o);
        }
        let o = result.expect("ran");
        let mut distinct: Vec<_> = o.layers.values().map(std::rc::Rc::as_ptr).collect();
        distinct.sort();
        distinct.dedup();
        println!(
            "{layers:>6}  {import_ms:>9.1}  {best:>11.1}  {:>15}  {:>12}  {:>11}",
            distinct.len(),
            m.graph.node_count(),
            o.graph.node_count()
        );
        if layers == 12 {
            base = Some(best);
        }
        if layers == 48 {
            if let Some(b) = base {
                println!("48 layers / 12 layers = {:.2}×", best / b);
            }
        }
    }
}
