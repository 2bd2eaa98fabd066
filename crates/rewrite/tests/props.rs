//! Property: exact-only optimisation never changes what a graph computes. Random small graphs
//! built from the op set (elementwise, products with weights, layout, head split/merge,
//! softmax / Hydra / linear attention written out as primitives, normalisation, masks,
//! prefix sums, reductions), all in layer 0 with one output, are optimised with the embedded
//! rules at a random target length and must evaluate like the original on random inputs.

#[path = "../../../tests/support/proptest_config.rs"]
mod proptest_config;

#[path = "../../../tests/support/random_graph.rs"]
mod random_graph;

use attnopt_ir::{interp, Graph};
use attnopt_rewrite::{optimize, Options, RuleSet};
use proptest::prelude::*;
use random_graph::{agree, build, inputs_mode, random_inputs, step, Inputs, Step};

/// Checks one graph; `Err` describes a difference.
fn check(g: &Graph, seq: usize, rules: &RuleSet) -> Result<(), String> {
    let o = optimize(g, &Options::exact(rules, seq))
        .map_err(|e| format!("optimize failed: {e}\n{g}"))?;
    let inputs = random_inputs(g, 11);
    let want = interp::run(g, &inputs, &[]).map_err(|e| format!("original: {e}\n{g}"))?;
    let got = interp::run(&o.graph, &inputs, &[])
        .map_err(|e| format!("optimised: {e}\n{g}\noptimised:\n{}", o.graph))?;
    agree(&want["out"], &got["out"]).map_err(|why| {
        let fired: Vec<_> = o
            .layers
            .values()
            .flat_map(|s| s.stats.rules_fired.keys().cloned())
            .collect();
        format!(
            "N={seq}: the optimised graph {why}; fired {fired:?}\n{g}\noptimised:\n{}",
            o.graph
        )
    })
}

proptest! {
    #![proptest_config(proptest_config::config(128))]

    #[test]
    fn exact_optimisation_keeps_values(
        inputs in inputs_mode(),
        steps in prop::collection::vec(step(), 1..9),
        seq in prop_oneof![Just(1usize), Just(16), Just(4096)],
        seed in any::<u64>(),
    ) {
        let rules = RuleSet::embedded().unwrap();
        let g = build(inputs, &steps, seed);
        if let Err(e) = check(&g, seq, &rules) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Cases the property test found, kept as plain tests.
#[test]
fn regressions() {
    let rules = RuleSet::embedded().unwrap();
    let cases: Vec<(Inputs, Vec<Step>, usize)> = vec![
        // A dead node after the output in topological order (the root was taken to be the
        // last node of the layer).
        (
            Inputs::Symbolic,
            vec![
                Step::Unary(0, 0),
                Step::MatMulT(0, 0),
                Step::Permute(0, 0),
                Step::MatMulT(0, 1),
            ],
            1,
        ),
        // A block with a symbolic input and a one-token input (the token axis was generalised
        // and `N` in reshape attributes stamped back as 1).
        (
            Inputs::OneToken,
            vec![
                Step::Softmax(2, 0),
                Step::SplitHeads(2, 0),
                Step::MatMulT(0, 0),
                Step::Unary(0, 0),
                Step::Reshape(3),
            ],
            1,
        ),
        // The same, with block inputs read only by unused nodes (which came after the output
        // in topological order, and were looked up before they were copied).
        (
            Inputs::Symbolic,
            vec![
                Step::Unary(0, 0),
                Step::MatMulT(0, 0),
                Step::Permute(0, 0),
                Step::Attention(2, 5, 0, 0, false, false),
            ],
            1,
        ),
        // Causal linear attention from N queries to one key: the prefix-sum rules broadcast
        // the key to every query, while `tril` keeps it for the last query only.
        (
            Inputs::OneToken,
            vec![Step::Attention(0, 1, 2, 2, true, false)],
            4096,
        ),
        (
            Inputs::OneToken,
            vec![Step::Attention(0, 1, 2, 1, true, false)],
            4096,
        ),
        // Queries with 3 tokens, keys with 1: the token axes must not both become `N`.
        (
            Inputs::Mixed,
            vec![Step::Attention(0, 1, 2, 1, true, false)],
            4096,
        ),
    ];
    for (inputs, steps, seq) in cases {
        let g = build(inputs, &steps, 0);
        if let Err(e) = check(&g, seq, &rules) {
            panic!("{e}");
        }
    }
}
