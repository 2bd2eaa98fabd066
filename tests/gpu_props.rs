//! Differential property test of the GPU backend: a random small graph is optimised with the
//! exact rules, lowered, generated into GPU kernels and run by the simulator (every block and
//! thread, bounds, races and barriers checked), and must agree with the reference interpreter
//! on the original graph. Random shapes for every kernel kind the random graphs reach (row
//! programs, epilogues, layout and elementwise operators, reductions, masks, products over
//! strided views).
//!
//! Deterministic in CI (fixed seed); `ATTNOPT_PROPTEST_SEED=random` and `PROPTEST_CASES=N` for
//! fuzzing with fresh cases.

#[path = "support/proptest_config.rs"]
mod proptest_config;

#[path = "support/random_graph.rs"]
mod random_graph;

use attnopt_gpu::simrun::SimModel;
use attnopt_ir::{interp, Graph};
use attnopt_rewrite::{optimize, Options, RuleSet};
use proptest::prelude::*;
use random_graph::{agree, build, inputs_mode, random_inputs, step};

fn check(g: &Graph, seq: usize, rules: &RuleSet) -> Result<(), String> {
    let o = optimize(g, &Options::exact(rules, seq))
        .map_err(|e| format!("optimize failed: {e}\n{g}"))?;
    let inputs = random_inputs(g, 11);
    let want = interp::run(g, &inputs, &[]).map_err(|e| format!("original: {e}\n{g}"))?;
    // Products as library calls or, on odd sequence lengths, as generated kernels.
    let gen = attnopt_gpu::gen::GenOptions {
        generated_products: seq % 2 == 1,
    };
    let sim = SimModel::new(&o.graph)
        .map_err(|e| format!("{e}\n{}", o.graph))?
        .with_gen(gen);
    let got = sim
        .run(&inputs)
        .map_err(|e| format!("simulated GPU run: {e}\n{g}\noptimised:\n{}", o.graph))?;
    agree(&want["out"], &got["out"]).map_err(|why| {
        format!(
            "N={seq}: the simulated GPU on the optimised graph {why}\n{g}\noptimised:\n{}",
            o.graph
        )
    })
}

proptest! {
    #![proptest_config(proptest_config::config(64))]

    #[test]
    fn optimised_graphs_on_the_simulated_gpu_match_the_interpreter(
        inputs in inputs_mode(),
        steps in prop::collection::vec(step(), 1..9),
        seq in prop_oneof![Just(1usize), Just(16), Just(33), Just(40)],
        seed in any::<u64>(),
    ) {
        let rules = RuleSet::embedded().unwrap();
        let g = build(inputs, &steps, seed);
        if let Err(e) = check(&g, seq, &rules) {
            prop_assert!(false, "{}", e);
        }
    }
}
