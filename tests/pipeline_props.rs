//! Differential property test of the whole pipeline: a random small graph is optimised with the
//! exact rules, lowered and run by the CPU backend (JIT row kernels, oneDNN or gemm products),
//! and must agree with the reference interpreter on the *original* graph. The rewrite crate's
//! own property test checks the optimizer alone; the CPU tests check kernels on fixtures; this
//! checks that their combination keeps meaning on graphs nobody wrote by hand.
//!
//! Deterministic in CI (fixed seed plus regressions); `ATTNOPT_PROPTEST_SEED=random` and
//! `PROPTEST_CASES=N` for fuzzing with fresh cases.

#[path = "support/proptest_config.rs"]
mod proptest_config;

#[path = "support/random_graph.rs"]
mod random_graph;

use attnopt_cpu::CpuModel;
use attnopt_ir::{interp, Graph};
use attnopt_rewrite::{optimize, Options, RuleSet};
use proptest::prelude::*;
use random_graph::{agree, build, inputs_mode, random_inputs, step, Inputs, Step};

/// Optimises `g`, runs it on the CPU backend, compares with the interpreter on `g`.
fn check(g: &Graph, seq: usize, rules: &RuleSet) -> Result<(), String> {
    let o = optimize(g, &Options::exact(rules, seq))
        .map_err(|e| format!("optimize failed: {e}\n{g}"))?;
    let inputs = random_inputs(g, 11);
    let want = interp::run(g, &inputs, &[]).map_err(|e| format!("original: {e}\n{g}"))?;
    let mut cpu = CpuModel::new(o.graph.clone(), 1)
        .map_err(|e| format!("CPU backend refused it: {e}\n{}", o.graph))?;
    let (got, _) = cpu
        .run(&inputs, &["out"], false)
        .map_err(|e| format!("CPU run: {e}\n{g}\noptimised:\n{}", o.graph))?;
    agree(&want["out"], &got["out"]).map_err(|why| {
        format!(
            "N={seq}: CPU backend on the optimised graph {why}\n{g}\noptimised:\n{}",
            o.graph
        )
    })
}

proptest! {
    #![proptest_config(proptest_config::config(96))]

    #[test]
    fn optimised_graphs_on_the_cpu_match_the_interpreter(
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

/// Cases the property test found, kept as plain tests: `(inputs, steps, seq, seed)`.
#[test]
fn regressions() {
    let rules = RuleSet::embedded().unwrap();
    let cases: Vec<(Inputs, Vec<Step>, usize, u64)> = vec![
        // `tril` on `[B, 2, N, 4]` with N = 5 > 4 keys: the lowering turned it into a per-row
        // valid length with the offset `Nk − Nq` clamped to 0, so the first query kept a key.
        (
            Inputs::OneToken,
            vec![
                Step::Softmax(0, 0),
                Step::Unary(0, 0),
                Step::SplitHeads(0, 124),
                Step::Tril(0),
                Step::Softmax(0, 0),
                Step::Attention(0, 0, 0, 0, false, false),
            ],
            1,
            0,
        ),
        // softmax(tril(x)): the lowering took `tril` for a per-row valid length under the
        // softmax, leaving its zeros out of the sum.
        (
            Inputs::Symbolic,
            vec![Step::Unary(0, 0), Step::Tril(0), Step::Softmax(0, 68)],
            1,
            0,
        ),
        // A product of an empty slice `[B, 1, 0]` by a weight `[0, 2]` (k = 0): the backend
        // counted `a`'s rows as `a.len() / k`, so zero rows, and left the output unwritten.
        (
            Inputs::Mixed,
            vec![
                Step::MatMulT(5, 5),
                Step::Idiom(44, 3, 0, 0),
                Step::Permute(0, 0),
                Step::Softmax(0, 0),
                Step::Unary(0, 0),
                Step::Attention(4, 3, 0, 26, false, false),
            ],
            1,
            0,
        ),
        // Attention over a value whose last axis is empty (an `Idiom` slice of a one-wide
        // axis): the generator divided by a head count of 0.
        (
            Inputs::Symbolic,
            vec![
                Step::ReduceSum(0, 233, true),
                Step::Softmax(0, 0),
                Step::Tril(4),
                Step::Idiom(8, 0, 0, 0),
                Step::Softmax(4, 0),
                Step::Slice(0),
                Step::Attention(0, 0, 0, 0, false, false),
                Step::Attention(3, 0, 0, 77, false, false),
            ],
            1,
            0,
        ),
    ];
    for (inputs, steps, seq, seed) in cases {
        let g = build(inputs, &steps, seed);
        if let Err(e) = check(&g, seq, &rules) {
            panic!("{e}");
        }
    }
}
