//! One snapshot per rule of the embedded rule files. Each rule's start graph is a text file,
//! `tests/rule_cases/RULE-NAME.graph`, in the graph text form (`attnopt_ir::parse`): a small
//! graph in layer 0 on which the rule matches, its output named `out`. The rule is applied
//! once (`approx::apply_once`; the `qkv-fusion` code rule through `optimize` with only that
//! rule loaded), the result stamped back into a graph, and both graphs snapshotted
//! (`tests/snapshots/rules__RULE-NAME.snap`).
//!
//! Every exact rule is also checked numerically: the rewritten graph must evaluate like the
//! start graph on seeded random inputs (several heads and tokens, batch 2). Approximate rules
//! must change the values but not the output's type. A rule without a case file, or a case
//! file naming no rule, fails `every_embedded_rule_has_a_case`.
//!
//! The loader tests at the end check that malformed rule files give `file:line` errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use attnopt_ir::parse::{parse_graph, ParseError};
use attnopt_ir::{interp, Bindings, DType, Graph, NodeId, Op, Role, Tensor, Weight};
use attnopt_rewrite::condition::{Condition, Int};
use attnopt_rewrite::rules::{Body, Kind, Rule};
use attnopt_rewrite::{approx, block, egraph, optimize, Options, RuleError, RuleSet};

/// Runtime batch and token count of the numerical checks.
const RUN_BATCH: usize = 2;
const RUN_TOKENS: usize = 5;

/// The project's seeded generator (`ir::rng`), values in [-1, 1).
struct Rng(attnopt_ir::rng::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(attnopt_ir::rng::Rng::new(seed))
    }

    fn f32(&mut self) -> f32 {
        self.0.range(-1.0, 1.0)
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        self.0.values(n, -1.0, 1.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Start graphs as text: `tests/rule_cases/RULE-NAME.graph`.

/// The folder of start graphs, one `RULE-NAME.graph` per rule.
fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rule_cases")
}

/// The rule names that have a start graph in `tests/rule_cases/`, sorted. Any other file there
/// is an error, so a misspelt extension cannot hide a case.
fn case_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(cases_dir()).expect("tests/rule_cases/ is readable") {
        let path = entry.unwrap().path();
        match (path.file_stem(), path.extension()) {
            (Some(stem), Some(ext)) if ext == "graph" => {
                names.push(stem.to_string_lossy().into_owned())
            }
            _ => panic!(
                "{}: tests/rule_cases/ holds only RULE-NAME.graph files",
                path.display()
            ),
        }
    }
    names.sort();
    names
}

/// `NAME → shape` of every weight line (`%n = weight "NAME" f32 : [8, 8] f32 @- weight`) of a
/// start graph. The text form names weights without values; the cases' names are plain.
fn weight_shapes(text: &str) -> HashMap<String, Vec<usize>> {
    text.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("weight \"")?;
            let (name, rest) = rest.split_once('"')?;
            let (_, rest) = rest.split_once('[')?;
            let (dims, _) = rest.split_once(']')?;
            let dims = match dims.trim() {
                "" => Some(Vec::new()),
                d => d.split(',').map(|d| d.trim().parse().ok()).collect(),
            }?;
            Some((name.to_string(), dims))
        })
        .collect()
}

/// Reads a start graph in the graph text form (`attnopt_ir::parse`); lines starting with `#`
/// are comments. Every weight gets seeded random f32 values of its declared shape, drawn from
/// one generator (seed 7) in the order the weight lines appear, so a case's values change only
/// when its weight lines do.
fn parse_case(text: &str) -> Result<Graph, ParseError> {
    let shapes = weight_shapes(text);
    let mut rng = Rng::new(7);
    // Comments become blank lines, so error line numbers stay those of the file.
    let text: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with('#') {
                ""
            } else {
                l
            }
        })
        .collect();
    parse_graph(&text.join("\n"), &mut |name| {
        let dims = shapes
            .get(name)
            .ok_or("the rule test reads a weight's shape from `weight \"NAME\" f32 : [..]`")?;
        let values = match rank_one_rows(name, dims) {
            Some((modules, transposed)) => factored_values(&mut rng, dims, modules, transposed),
            None => rng.vec(dims.iter().product()),
        };
        Weight::from_f32(name, dims.clone(), &values).map_err(|e| e.to_string())
    })
}

/// A weight named `NAME.rank1xS` (`[d_in, d_out]`) has every row rank 1 as `S × d_out/S`, as a
/// value-dependent rule (`factored`) needs; `NAME.rank1xS.t` is stored transposed
/// (`[d_out, d_in]`, PyTorch's layout). `(S, transposed)`.
fn rank_one_rows(name: &str, dims: &[usize]) -> Option<(usize, bool)> {
    let (stem, transposed) = match name.strip_suffix(".t") {
        Some(s) => (s, true),
        None => (name, false),
    };
    let s: usize = stem.rsplit_once(".rank1x")?.1.parse().ok()?;
    (dims.len() == 2).then_some((s, transposed))
}

/// `W[d, s·M + m] = g[s, d]·p[d, m]` with seeded `g`, `p`, laid out as `dims`.
fn factored_values(rng: &mut Rng, dims: &[usize], s: usize, transposed: bool) -> Vec<f32> {
    let (d_in, d_out) = if transposed {
        (dims[1], dims[0])
    } else {
        (dims[0], dims[1])
    };
    let m = d_out / s;
    let (g, p) = (rng.vec(s * d_in), rng.vec(d_in * m));
    let mut w = vec![0f32; d_in * d_out];
    for d in 0..d_in {
        for j in 0..d_out {
            let v = g[(j / m) * d_in + d] * p[d * m + j % m];
            let at = if transposed {
                j * d_in + d
            } else {
                d * d_out + j
            };
            w[at] = v;
        }
    }
    w
}

/// The start graph of rule `name`, from `tests/rule_cases/NAME.graph`; its output is `out`.
fn load_case(name: &str) -> Graph {
    let path = cases_dir().join(format!("{name}.graph"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no case for rule `{name}`: {}: {e}", path.display()));
    let g =
        parse_case(&text).unwrap_or_else(|e| panic!("{}:{}: {}", path.display(), e.line, e.msg));
    assert!(
        g.output("out").is_some(),
        "{}: the start graph's output must be named `out`",
        path.display()
    );
    g
}

/// Seeded random values for every input of `g` at batch 2, 5 tokens. Padding masks keep the
/// first three tokens of every row and drop some of the rest.
fn random_inputs(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Rng::new(seed);
    let b = Bindings::new(RUN_BATCH, RUN_TOKENS);
    g.inputs()
        .iter()
        .map(|(name, id)| {
            let ty = &g.node(*id).ty;
            let shape = ty.shape.eval(&b).unwrap();
            let n = shape.iter().product();
            let t = match ty.dtype {
                DType::I64 => {
                    let v = (0..n)
                        .map(|i| i64::from(i % RUN_TOKENS < 3 || rng.f32() > 0.0))
                        .collect();
                    Tensor::i64(shape, v).unwrap()
                }
                _ => Tensor::f32(shape, rng.vec(n)).unwrap(),
            };
            (name.clone(), t)
        })
        .collect()
}

/// Runs `g` on `inputs`; the one output.
fn eval(g: &Graph, inputs: &HashMap<String, Tensor>) -> Tensor {
    let mut out = interp::run(g, inputs, &[]).unwrap();
    out.remove("out").unwrap()
}

/// `(max-abs difference, max-abs of the start values)` between two graphs' outputs on three
/// seeded inputs.
fn compare(start: &Graph, result: &Graph) -> (f32, f32) {
    let (mut err, mut scale) = (0.0f32, 0.0f32);
    for seed in 1..=3 {
        let inputs = random_inputs(start, seed);
        let (a, b) = (eval(start, &inputs), eval(result, &inputs));
        assert_eq!(a.shape(), b.shape(), "the rewrite changed the output shape");
        err = err.max(b.max_abs_diff(&a).unwrap());
        scale = scale.max(a.max_abs());
    }
    (err, scale)
}

/// `rule` applied once to the single block of `g`, stamped back into a copy of `g`'s leaves.
/// Returns the rewritten block expression and the new graph.
fn apply_pattern_rule(rule: &Rule, g: &Graph) -> (String, String, Graph) {
    let (blocks, bad) = block::blocks(g);
    assert!(bad.is_empty() && blocks.len() == 1, "one block expected");
    let b = &blocks[0];
    let (be, an, generalised) = egraph::prepare(g, b);
    assert!(!generalised, "start graphs use symbolic token axes");
    let new = approx::apply_once(rule, &be, &an)
        .unwrap_or_else(|| panic!("rule `{}` does not match its start graph", rule.name));
    assert!(
        egraph::typecheck(&new.expr, &an).is_some(),
        "the rewritten expression does not type-check"
    );
    // The graph outside the block (inputs and weights only), then the block.
    let mut out = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for n in g.topo_order() {
        let id = match &g.node(n).op {
            Op::Input { name, dtype, shape } => out.input(name, *dtype, shape.clone()).unwrap(),
            Op::Weight(w) => out.weight(g.weight_data(*w).clone()),
            _ => continue,
        };
        map.insert(n, id);
    }
    let ins: Vec<NodeId> = b.inputs.iter().map(|i| map[i]).collect();
    let ws: Vec<NodeId> = b.weights.iter().map(|w| map[w]).collect();
    let roles: Vec<Role> = new.roles.iter().map(|r| r.unwrap_or(Role::Other)).collect();
    let root = block::instantiate(&mut out, &new.expr, &roles, b.layer, &ins, &ws, None).unwrap();
    out.set_output("out", root).unwrap();
    (be.expr.to_string(), new.expr.to_string(), out)
}

/// `g` optimised with a rule set holding only `rule` (seq 128).
fn optimize_with_only(rule: &Rule, g: &Graph) -> Graph {
    let kind = match rule.kind {
        Kind::Exact => "exact",
        Kind::Approx => "approx",
    };
    let text = format!("{kind} {}: code\n", rule.name);
    let rules = RuleSet::from_texts([("one.rules".to_string(), text)]).unwrap();
    let o = optimize(g, &Options::exact(&rules, 128)).unwrap();
    for (l, s) in &o.layers {
        assert!(s.stats.fallback.is_none(), "{:?}", s.stats.fallback);
        // Value-dependent rules run before the e-graph and are counted apart.
        assert!(
            s.stats.rules_fired.contains_key(&rule.name) || o.factored.contains_key(l),
            "`{}` did not fire: {:?}",
            rule.name,
            s.stats.rules_fired
        );
    }
    o.graph
}

/// A condition as rule files write it.
fn condition(c: &Condition) -> String {
    let int = |i: &Int| match i {
        Int::Lit(n) => n.to_string(),
        Int::Var(v) => v.to_string(),
    };
    match c {
        Condition::Dim { x, axis, n } => format!("dim({x}, {axis}, {})", int(n)),
        Condition::Rank { x, n } => format!("rank({x}, {n})"),
        Condition::WeightOnly(x) => format!("weight_only({x})"),
        Condition::NotWeightOnly(x) => format!("not_weight_only({x})"),
        Condition::InversePerm(p, q) => format!("inverse_perm({p}, {q})"),
        Condition::IdentityPerm(p) => format!("identity_perm({p})"),
        Condition::SameType(a, b) => format!("same_type({a}, {b})"),
        Condition::HasShape(x, s) => format!("has_shape({x}, {s})"),
    }
}

/// Applies rule `name` to its start graph, snapshots start and result, and checks the values.
fn check_rule(name: &str) {
    let rules = RuleSet::embedded().unwrap();
    let rule = rules
        .get(name)
        .unwrap_or_else(|| panic!("no embedded rule `{name}`"));
    let start = load_case(name);
    let kind = match rule.kind {
        Kind::Exact => "exact",
        Kind::Approx => "approx",
    };
    let mut text = format!("rule: {kind} {name}\norigin: {}\n", rule.origin);
    let result = match &rule.body {
        Body::Pattern { lhs, rhs } => {
            let (before, after, result) = apply_pattern_rule(rule, &start);
            let conds: Vec<String> = rhs.conditions.iter().map(condition).collect();
            let conds = match conds.len() {
                0 => String::new(),
                _ => format!("\n    if {}", conds.join(" and ")),
            };
            text += &format!(
                "pattern: {lhs}\n    => {}{conds}\n\nstart block:\n  {before}\nrewritten block:\n  {after}\n",
                rhs.rhs
            );
            result
        }
        Body::Code => optimize_with_only(rule, &start),
    };
    text += &format!("\nstart graph:\n{start}\nresult graph:\n{result}");
    let (err, scale) = compare(&start, &result);
    match rule.kind {
        Kind::Exact => assert!(
            err <= 1e-5 * scale.max(1e-6),
            "exact rule `{name}` changed the values: max-abs error {err:e} (values up to {scale:e})\n{text}"
        ),
        Kind::Approx => assert!(
            err > 1e-3 * scale,
            "approximate rule `{name}` left the values unchanged ({err:e})\n{text}"
        ),
    }
    let out_ty = |g: &Graph| g.node(g.output("out").unwrap()).ty.clone();
    assert_eq!(
        out_ty(&start),
        out_ty(&result),
        "`{name}` changed the output type"
    );
    insta::assert_snapshot!(name, text);
}

/// Every case in `tests/rule_cases/`: each is checked even when one before it fails, and the
/// failing rules are named at the end (their messages are printed above).
#[test]
fn every_rule_case() {
    let failed: Vec<String> = case_names()
        .into_iter()
        .filter(|name| catch_unwind(AssertUnwindSafe(|| check_rule(name))).is_err())
        .collect();
    assert!(failed.is_empty(), "rule cases failed: {failed:?}");
}

#[test]
fn every_embedded_rule_has_a_case() {
    let rules = RuleSet::embedded().unwrap();
    let embedded: BTreeSet<String> = rules.rules.iter().map(|r| r.name.clone()).collect();
    let cases: BTreeSet<String> = case_names().into_iter().collect();
    let missing: Vec<&String> = embedded.difference(&cases).collect();
    let stray: Vec<&String> = cases.difference(&embedded).collect();
    assert!(
        missing.is_empty() && stray.is_empty(),
        "every embedded rule needs tests/rule_cases/RULE-NAME.graph, and every file there must \
         name an embedded rule\n  rules without a case: {missing:?}\n  cases naming no rule: {stray:?}"
    );
}

/// Rule kinds: the approximate rules are exactly the Hydra family, every code rule is known.
#[test]
fn embedded_rule_kinds() {
    let rules = RuleSet::embedded().unwrap();
    let kinds: BTreeMap<&str, (Kind, bool)> = rules
        .rules
        .iter()
        .map(|r| (r.name.as_str(), (r.kind, matches!(r.body, Body::Code))))
        .collect();
    let approx: Vec<&str> = rules
        .approx_family("hydra")
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        approx,
        [
            "hydra",
            "hydra-padded",
            "hydra-causal",
            "hydra-causal-padded"
        ]
    );
    // The families `optimize --allow` offers come from the loaded rules.
    assert_eq!(rules.approx_families(), ["hydra"]);
    for (name, (kind, code)) in kinds {
        assert_eq!(kind == Kind::Approx, name.starts_with("hydra"), "{name}");
        if code {
            assert!(rules.has_code_rule(name), "{name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rule-file loader errors.

fn load(files: &[(&str, &str)]) -> Result<RuleSet, RuleError> {
    RuleSet::from_texts(files.iter().map(|&(f, t)| (f.to_string(), t.to_string())))
}

/// Loads `text` as `bad.rules` after a valid first rule, expecting an error at `line` whose
/// message contains every one of `words`.
fn bad(text: &str, line: usize, words: &[&str]) -> RuleError {
    let text = format!("# header\nexact ok: (neg (neg ?x)) => ?x\n{text}");
    let e = match load(&[("rules/bad.rules", &text)]) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(e.file, "rules/bad.rules", "{e}");
    assert_eq!(e.line, line, "{e}");
    for w in words {
        assert!(e.msg.contains(w), "`{e}` should mention `{w}`");
    }
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("rules/bad.rules:{line}: ")),
        "{shown}"
    );
    e
}

#[test]
fn rule_without_kind() {
    bad(
        "fast f: (neg ?x) => ?x",
        3,
        &["`exact` or `approx`", "fast"],
    );
    bad("f: (neg ?x) => ?x", 3, &["`exact` or `approx`"]);
}

#[test]
fn rule_without_colon() {
    bad("exact f (neg ?x) => ?x", 3, &["exact NAME:"]);
}

#[test]
fn rule_with_bad_name() {
    bad("exact two words: (neg ?x) => ?x", 3, &["bad rule name"]);
    bad("exact f.g: (neg ?x) => ?x", 3, &["bad rule name"]);
    bad("exact : (neg ?x) => ?x", 3, &["bad rule name"]);
}

#[test]
fn rule_with_unknown_operator() {
    bad(
        "exact f: (frobnicate ?x) => ?x",
        3,
        &["left side", "frobnicate"],
    );
    bad(
        "exact f: (neg ?x) => (frobnicate ?x)",
        3,
        &["right side", "frobnicate"],
    );
}

#[test]
fn rule_with_wrong_child_count() {
    bad(
        "exact f: (neg ?x ?y) => ?x",
        3,
        &["neg", "1 operand", "got 2"],
    );
    bad(
        "exact f: (softmax ?x) => ?x",
        3,
        &["softmax", "1 attribute", "got 1"],
    );
    bad(
        "exact f: (neg ?x) => (matmul ?x)",
        3,
        &["right side", "matmul", "2 operand"],
    );
}

#[test]
fn rule_with_unbound_variable() {
    bad("exact f: (neg ?x) => ?y", 3, &["?y", "not bound"]);
    bad(
        "exact f: (neg ?x) => (neg ?x) if weight_only(?z)",
        3,
        &["?z", "not bound"],
    );
}

#[test]
fn rule_with_unknown_condition() {
    bad(
        "exact f: (neg ?x) => (neg ?x) if shiny(?x)",
        3,
        &["unknown condition `shiny`", "weight_only"],
    );
    bad(
        "exact f: (neg ?x) => (neg ?x) if dim(?x, 1)",
        3,
        &["dim", "3 argument"],
    );
}

#[test]
fn rule_without_arrow() {
    bad("exact f: (neg ?x) ?x", 3, &["LHS => RHS"]);
}

#[test]
fn unknown_code_rule() {
    bad(
        "exact f: code",
        3,
        &["no code rule named `f`", "qkv-fusion"],
    );
}

#[test]
fn continuation_lines_report_the_first_line() {
    // The error is in the third physical line of a rule that starts on line 4.
    bad(
        "\n# a comment\nexact f: (neg ?x)\n    => (neg ?x)\n    if shiny(?x)\nexact g: (neg ?x) => ?x",
        5,
        &["shiny"],
    );
    // Comments and blank lines between continuation lines do not break the rule.
    let ok = load(&[(
        "a.rules",
        "exact f: (neg ?x)   # trailing comment\n\n    => (neg ?x)\n    if rank(?x, 3)\n",
    )])
    .unwrap();
    assert_eq!(ok.rules[0].origin, "a.rules:1");
}

#[test]
fn duplicate_rule_names_across_files() {
    let e = load(&[
        ("rules/a.rules", "exact f: (neg (neg ?x)) => ?x\n"),
        (
            "rules/b.rules",
            "# other\nexact g: (neg ?x) => (neg ?x)\nexact f: (neg ?x) => (neg ?x)\n",
        ),
    ])
    .err()
    .expect("duplicate accepted");
    assert_eq!((e.file.as_str(), e.line), ("rules/b.rules", 3), "{e}");
    assert!(
        e.msg.contains("`f`") && e.msg.contains("rules/a.rules:1"),
        "{e}"
    );
}

#[test]
fn the_embedded_rules_load_and_have_origins() {
    let rules = RuleSet::embedded().unwrap();
    for r in &rules.rules {
        let (file, line) = r.origin.rsplit_once(':').unwrap();
        assert!(
            file.starts_with("rules/") && file.ends_with(".rules"),
            "{}",
            r.origin
        );
        assert!(line.parse::<usize>().unwrap() > 0, "{}", r.origin);
    }
}

/// A bare-variable right side at the root of a block: the result is that variable's value,
/// not whatever node happened to come last before the matched root.
#[test]
fn apply_once_with_a_bare_variable_at_the_root() {
    let rules = RuleSet::from_texts([(
        "t.rules".to_string(),
        "approx unwrap: (neg (scale ?c ?x)) => ?x\n".to_string(),
    )])
    .unwrap();
    let g = parse_case(
        "%0 = input{name=x, dtype=f32, shape=[B, N, 8]} : [B, N, 8] f32 @- input
         %1 = tanh %0 : [B, N, 8] f32 @L0 other
         %2 = scale{2.0} %1 : [B, N, 8] f32 @L0 other
         %3 = neg %2 : [B, N, 8] f32 @L0 other
         output out = %3",
    )
    .unwrap();
    let (_, after, result) = apply_pattern_rule(rules.get("unwrap").unwrap(), &g);
    assert_eq!(after, "(tanh in:0)");
    let inputs = random_inputs(&g, 1);
    let want: Vec<f32> = inputs["x"].to_f32_vec().iter().map(|v| v.tanh()).collect();
    let got = eval(&result, &inputs).to_f32_vec();
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
}

/// The same with the variable bound to a block input that is not the last leaf.
#[test]
fn apply_once_with_a_block_input_as_the_result() {
    let rules = RuleSet::from_texts([(
        "t.rules".to_string(),
        "approx first: (add ?x ?y) => ?x\n".to_string(),
    )])
    .unwrap();
    let g = parse_case(
        "%0 = input{name=x, dtype=f32, shape=[B, N, 8]} : [B, N, 8] f32 @- input
         %1 = input{name=y, dtype=f32, shape=[B, N, 8]} : [B, N, 8] f32 @- input
         %2 = add %0, %1 : [B, N, 8] f32 @L0 other
         output out = %2",
    )
    .unwrap();
    let (_, after, result) = apply_pattern_rule(rules.get("first").unwrap(), &g);
    assert_eq!(after, "in:0");
    let inputs = random_inputs(&g, 1);
    assert_eq!(
        eval(&result, &inputs).to_f32_vec(),
        inputs["x"].to_f32_vec()
    );
}

/// Every loader error above as the user sees it, for review.
#[test]
fn loader_error_messages() {
    let cases = [
        "fast f: (neg ?x) => ?x",
        "exact f (neg ?x) => ?x",
        "exact two words: (neg ?x) => ?x",
        "exact f: (frobnicate ?x) => ?x",
        "exact f: (neg ?x) => (frobnicate ?x)",
        "exact f: (neg ?x ?y) => ?x",
        "exact f: (softmax ?x) => ?x",
        "exact f: (neg ?x) => ?y",
        "exact f: (neg ?x) => (neg ?x) if weight_only(?z)",
        "exact f: (neg ?x) => (neg ?x) if shiny(?x)",
        "exact f: (neg ?x) => (neg ?x) if dim(?x, 1)",
        "exact f: (neg ?x) ?x",
        "exact f: code",
        "exact f: (neg ?x)\n    => (neg ?x)\n    if shiny(?x)",
        "exact ok: (neg ?x) => (neg ?x)",
    ];
    let mut text = String::new();
    for case in cases {
        let file = format!("# header\nexact ok: (neg (neg ?x)) => ?x\n{case}\n");
        let shown = match load(&[("rules/bad.rules", &file)]) {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string(),
        };
        text += &format!("{}\n  {shown}\n", case.replace('\n', "\n  | "));
    }
    insta::assert_snapshot!("loader_errors", text);
}

/// A pattern nested 20,000 levels deep (120 KB) overflowed the stack of egg's recursive parser
/// and aborted the process; it is refused by depth first, at its line.
#[test]
fn deeply_nested_patterns_are_refused_not_a_stack_overflow() {
    let deep = |n: usize| format!("{}?x{}", "(neg ".repeat(n), ")".repeat(n));
    let e = bad(
        &format!("exact deep: {} => ?x", deep(20_000)),
        3,
        &["left side", "20000 levels", "more than the 64"],
    );
    assert!(e.msg.len() < 300, "the message does not quote the pattern");
    bad(
        &format!("exact deep: (neg ?x) => {}", deep(65)),
        3,
        &["right side", "65 levels"],
    );
    // At the limit, a pattern still loads.
    load(&[("ok.rules", &format!("exact deep64: {} => ?x", deep(64)))]).unwrap();
}
