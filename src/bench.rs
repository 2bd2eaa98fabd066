//! `bench`: latency of a model on the CPU backend — the original graph and the exactly
//! optimised one, at each sequence length — with compile time, the per-kernel breakdown,
//! GFLOP/s and GB/s. Timings are medians over repetitions; nothing here asserts a time.
//! In bf16 each run also reports its error against the f32 reference interpreter.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use attnopt_cpu::{CpuModel, CpuOptions};
use attnopt_ir::cost::total_cost;
use attnopt_ir::{interp, Bindings, Tensor};
use attnopt_rewrite::{optimize, Options, RuleSet};

use crate::calib::calibration_inputs;
use crate::progress::Step;
use crate::report::ErrorStat;
use crate::{Error, Model, Precision};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub seqs: Vec<usize>,
    pub batch: usize,
    pub reps: usize,
    /// Also measure the exactly optimised graph.
    pub optimised: bool,
    /// The CPU backend: threads, precision of the products against weights, matrix-product
    /// library.
    pub cpu: CpuOptions,
    /// Also time the original and the optimised graph in this many alternating rounds
    /// (0: not), reported on the optimised run as `ab` (optimised ÷ original).
    pub ab_rounds: usize,
}

/// Time of one kind of kernel in one run, summed over its instances.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelStat {
    pub name: String,
    pub count: usize,
    pub ms: f64,
    /// Of `ms`, the JIT epilogue passes run after products (0 where the matrix-product
    /// library fused the epilogue, or there is none).
    pub epilogue_ms: f64,
    pub share: f64,
    pub gflops: f64,
    pub gbps: f64,
}

/// One graph at one length.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRun {
    /// `"original"`, `"optimised"` (the original, exactly optimised here), or
    /// `"optimised folder"` (a folder written by `optimize`, run as it is).
    pub graph: &'static str,
    pub seq: usize,
    pub batch: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Lowering, JIT compilation and weight preparation for this size ...
    pub compile_ms: f64,
    /// ... of which lowering (fusion, schedule, memory plan),
    pub lower_ms: f64,
    /// Cranelift compilation of the distinct row kernels,
    pub jit_ms: f64,
    /// and matrix-product weight preparation (reorders, packing).
    pub weights_ms: f64,
    /// Model FLOPs (ir cost counts) per run, and the rate at the median.
    pub gflop: f64,
    pub gflops: f64,
    pub arena_bytes: usize,
    pub kernels: Vec<KernelStat>,
    /// bf16 only: the error of `last_hidden_state` against the f32 reference interpreter on
    /// the benchmark's input, by output name (absent in f32, which is exact within rounding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_vs_f32: Option<BTreeMap<String, ErrorStat>>,
    /// With `ab_rounds`, on the optimised run: its time ÷ the original's, in alternating rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ab: Option<crate::ab::AbStats>,
}

/// The `bench --json` object (schema in docs/CLI.md).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    pub precision: &'static str,
    pub matmul: String,
    pub matmul_reason: String,
    pub runs: Vec<BenchRun>,
}

/// The lengths to measure: those asked for, checked against the model, or by default 128
/// tokens (fewer where the model has fewer positions). A model that fixes its own length (a
/// ViT) runs at that length whatever was asked, and the returned notes say so.
pub fn resolve_seqs(model: &Model, asked: Option<Vec<usize>>) -> (Vec<usize>, Vec<String>) {
    let mut notes = Vec::new();
    if let Some(fixed) = model.fixed_tokens() {
        if asked.as_ref().is_some_and(|a| a != &[fixed]) {
            notes.push(format!(
                "this model fixes its own length ({fixed} tokens, from its image and patch \
                 size); --seq is ignored"
            ));
        }
        return (vec![fixed], notes);
    }
    (
        asked.unwrap_or_else(|| vec![crate::limits::default_seq(model)]),
        notes,
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Benchmarks `model`; `progress` hears about each step.
pub fn bench(
    model: &Model,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(Step),
) -> Result<BenchReport, Error> {
    // Every size first, so a bad one fails before minutes of measuring the others.
    let memory = crate::limits::memory_available();
    for &seq in &opts.seqs {
        crate::limits::check_run_size(
            model,
            &Bindings::new(opts.batch, seq),
            &format!("--seq {seq} --batch {}", opts.batch),
            memory,
        )?;
    }
    let rules = RuleSet::embedded()?;
    let mut runs = Vec::new();
    let (mut matmul, mut matmul_reason, mut threads) =
        (String::new(), String::new(), opts.cpu.threads);
    for &seq in &opts.seqs {
        let folder = model.is_optimised_folder();
        let label = if folder {
            "optimised folder"
        } else {
            "original"
        };
        let mut graphs = vec![(label, model.graph().clone())];
        if opts.optimised && !folder {
            let o = optimize(model.graph(), &Options::exact(&rules, seq))?;
            graphs.push(("optimised", o.graph));
        }
        let mut inputs = calibration_inputs(model, None, seq, 0)?;
        // Generated inputs have batch 2; re-make them at the requested batch.
        for t in inputs.values_mut() {
            let mut shape = t.shape().to_vec();
            if shape.first() == Some(&crate::calib::CALIB_BATCH) {
                let per = t.numel() / crate::calib::CALIB_BATCH;
                shape[0] = opts.batch;
                *t = match t.data() {
                    attnopt_ir::Data::F32(x) => Tensor::f32(
                        shape,
                        (0..opts.batch * per).map(|i| x[i % x.len()]).collect(),
                    ),
                    attnopt_ir::Data::I64(x) => Tensor::i64(
                        shape,
                        (0..opts.batch * per).map(|i| x[i % x.len()]).collect(),
                    ),
                }
                .expect("lengths match");
            }
        }
        let feed: HashMap<String, Tensor> = model.prepare_inputs(inputs)?;
        let reference = if opts.cpu.precision == Precision::Bf16 {
            progress(Step::phase(&format!(
                "N={seq}: f32 reference interpreter, to measure the bf16 error"
            )));
            crate::limits::check_interpreter_memory(
                model.graph(),
                &Bindings::new(opts.batch, seq),
                &format!("--seq {seq} --batch {}", opts.batch),
                memory,
            )?;
            Some(interp::run(model.graph(), &feed, &["last_hidden_state"])?)
        } else {
            None
        };
        let mut cpus = Vec::new();
        for (label, graph) in graphs {
            progress(Step::phase(&format!("{label} graph, N={seq}: compiling")));
            let b = Bindings::new(opts.batch, seq);
            let flops = total_cost(&graph, &b).flops as f64;
            let mut cpu = CpuModel::with_options(graph, &opts.cpu)?;
            cpu.set_memory_budget(memory);
            (matmul, matmul_reason) = (
                cpu.matmul_name().0.to_string(),
                cpu.matmul_name().1.to_string(),
            );
            threads = cpu.threads();
            let t0 = Instant::now();
            cpu.prepare(opts.batch, seq)?;
            let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
            let pt = cpu.prepare_times(opts.batch, seq).unwrap_or_default();
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            cpu.run(&feed, &["last_hidden_state"], false)?; // warm-up
            let mut times = Vec::with_capacity(opts.reps);
            let what = format!("{label} graph, N={seq}: timed runs");
            for r in 0..opts.reps {
                progress(Step {
                    what: &what,
                    count: Some((r, opts.reps)),
                });
                let t = Instant::now();
                cpu.run(&feed, &["last_hidden_state"], false)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            progress(Step {
                what: &what,
                count: Some((opts.reps, opts.reps)),
            });
            let (outs, profile) = cpu.run(&feed, &["last_hidden_state"], true)?;
            let error_vs_f32 = reference
                .as_ref()
                .map(|r| crate::run::errors_against(&outs.into_iter().collect(), r));
            let total: f64 = profile.iter().map(|k| k.seconds).sum();
            let mut by_name: BTreeMap<String, (usize, f64, f64, u64, u64)> = BTreeMap::new();
            for k in &profile {
                let e = by_name.entry(k.name.clone()).or_insert((0, 0.0, 0.0, 0, 0));
                e.0 += 1;
                e.1 += k.seconds;
                e.2 += k.epilogue_seconds;
                e.3 += k.flops;
                e.4 += k.bytes;
            }
            let mut kernels: Vec<KernelStat> = by_name
                .into_iter()
                .map(|(name, (count, s, epi, f, by))| KernelStat {
                    name,
                    count,
                    ms: s * 1e3,
                    epilogue_ms: epi * 1e3,
                    share: if total > 0.0 { s / total } else { 0.0 },
                    gflops: if s > 0.0 { f as f64 / s / 1e9 } else { 0.0 },
                    gbps: if s > 0.0 { by as f64 / s / 1e9 } else { 0.0 },
                })
                .collect();
            kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            let (min_ms, max_ms) = times
                .iter()
                .fold((f64::INFINITY, 0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
            let median_ms = median(&mut times);
            runs.push(BenchRun {
                graph: label,
                seq,
                batch: opts.batch,
                median_ms,
                min_ms,
                max_ms,
                compile_ms,
                lower_ms: ms(pt.lower),
                jit_ms: ms(pt.jit),
                weights_ms: ms(pt.weights),
                gflop: flops / 1e9,
                gflops: flops / (median_ms / 1e3) / 1e9,
                arena_bytes: cpu.arena_bytes(opts.batch, seq).unwrap_or(0),
                kernels,
                error_vs_f32,
                ab: None,
            });
            cpus.push(cpu);
        }
        if let ([original, optimised], true) = (&mut cpus[..], opts.ab_rounds > 0) {
            let what = format!("N={seq}: original and optimised in alternating rounds");
            let wanted = ["last_hidden_state"];
            let ab = crate::ab::alternate(
                opts.ab_rounds,
                || original.run(&feed, &wanted, false).map(drop),
                || optimised.run(&feed, &wanted, false).map(drop),
                |r| {
                    progress(Step {
                        what: &what,
                        count: Some((r, opts.ab_rounds)),
                    })
                },
            )?;
            if let Some(run) = runs.last_mut() {
                run.ab = ab;
            }
        }
    }
    Ok(BenchReport {
        model: model.imported().dir.display().to_string(),
        threads,
        precision: match opts.cpu.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        },
        matmul,
        matmul_reason,
        runs,
    })
}

impl BenchReport {
    /// The human-readable table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "model    {}", self.model);
        let _ = writeln!(
            s,
            "threads  {}, precision {}, matrix products: {} ({})",
            self.threads, self.precision, self.matmul, self.matmul_reason
        );
        let _ = writeln!(
            s,
            "\ngraph       N      batch  median ms   min ms   max ms  compile ms  GFLOP/s  arena"
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "{:<10}  {:<5}  {:>5}  {:>9.3}  {:>7.3}  {:>7.3}  {:>10.1}  {:>7.1}  {}",
                r.graph,
                r.seq,
                r.batch,
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.compile_ms,
                r.gflops,
                crate::inspect::si(r.arena_bytes as f64) + "B"
            );
        }
        let _ = writeln!(
            s,
            "\ncompile ms = lowering + JIT (distinct row kernels) + weight preparation:"
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "  {} N={}: {:.1} = {:.1} + {:.1} + {:.1}",
                r.graph, r.seq, r.compile_ms, r.lower_ms, r.jit_ms, r.weights_ms
            );
        }
        for r in &self.runs {
            if let Some(ab) = &r.ab {
                let _ = writeln!(
                    s,
                    "A/B N={}: optimised ÷ original = {:.3} (median of {} alternating rounds; \
                     95% interval {:.3}–{:.3})",
                    r.seq, ab.ratio_median, ab.rounds, ab.ci_low, ab.ci_high
                );
            }
        }
        for r in &self.runs {
            for (name, e) in r.error_vs_f32.iter().flatten() {
                let _ = writeln!(
                    s,
                    "{} graph, N={}: {name} bf16 error vs the f32 interpreter: {e}",
                    r.graph, r.seq
                );
            }
        }
        for r in &self.runs {
            let _ = writeln!(
                s,
                "\nkernels of the {} graph at N={} (one profiled run):",
                r.graph, r.seq
            );
            for k in r.kernels.iter().take(12) {
                let _ = writeln!(
                    s,
                    "  {:<20} ×{:<4} {:>9.3} ms  {:>5.1}%  {:>7.1} GFLOP/s  {:>6.1} GB/s{}",
                    k.name,
                    k.count,
                    k.ms,
                    100.0 * k.share,
                    k.gflops,
                    k.gbps,
                    if k.epilogue_ms > 0.0 {
                        format!("  (JIT epilogue {:.3} ms)", k.epilogue_ms)
                    } else {
                        String::new()
                    }
                );
            }
        }
        s
    }
}
