//! `bench --decode`: what decoding costs per token at chosen positions (128, 1k, 8k: those the
//! model holds), for the original graph and the exactly optimised one, on the CPU backend —
//! per-token latency (median of one-token steps after a prefill to that position), the
//! prefill's time, the state held, tokens per second — beside the **bandwidth floor**: the
//! weight bytes one token reads (`lower::weight_bytes_by_layer` at one token, each weight at
//! the narrower of its stored and the precision's size) ÷ the read bandwidth measured in the
//! same run (half the bytes-read-plus-written rate of copying a 1 GiB buffer on the same
//! threads).

use std::time::Instant;

use attnopt_cpu::CpuOptions;
use attnopt_ir::rng::Rng;
use attnopt_ir::{Bindings, Graph};
use attnopt_rewrite::{optimize, Options, RuleSet};

use crate::decode::Session;
use crate::progress::Step;
use crate::{Backend, Error, Model, Precision};

/// What to measure.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Positions to decode at (tokens already held); `None`: 128, 1024 and 8192 where the model
    /// holds them.
    pub positions: Option<Vec<usize>>,
    /// One-token steps timed at each position.
    pub reps: usize,
    /// Also the exactly optimised graph.
    pub optimised: bool,
    pub cpu: CpuOptions,
}

/// One graph at one position.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecodePoint {
    /// `"original"`, `"optimised"` or `"optimised folder"`.
    pub graph: &'static str,
    /// Tokens held before each timed step.
    pub position: usize,
    /// Median of the timed one-token steps, and the fastest.
    pub per_token_ms: f64,
    pub min_ms: f64,
    pub tokens_per_s: f64,
    /// Feeding the `position` tokens of the prompt (in chunks; includes planning each chunk).
    pub prefill_ms: f64,
    /// State held after the prompt.
    pub state_bytes: u64,
    /// `per_token_ms` ÷ the bandwidth floor.
    pub vs_floor: f64,
}

/// The decoding benchmark's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecodeReport {
    /// Weight bytes one token reads at the benchmark's precision.
    pub weight_bytes_per_token: u64,
    /// Read bandwidth measured in this run (GB/s), and the floor it gives (ms per token).
    pub read_gbps: f64,
    pub floor_ms: f64,
    pub points: Vec<DecodePoint>,
}

/// The positions to measure: those asked, else 128, 1k and 8k where the model holds them
/// (with room for the timed steps).
pub fn positions(max: Option<usize>, asked: Option<Vec<usize>>, reps: usize) -> Vec<usize> {
    let fits = |p: usize| max.is_none_or(|m| p + reps < m);
    match asked {
        Some(a) => a,
        None => {
            let p: Vec<usize> = [128, 1024, 8192].into_iter().filter(|&p| fits(p)).collect();
            match (p.is_empty(), max) {
                // A model with fewer positions (a test fixture): half of what it holds.
                (true, Some(m)) if m > reps + 2 => vec![(m - reps) / 2],
                _ => p,
            }
        }
    }
}

/// Benchmarks decoding `model` (loaded with its logits).
pub fn bench_decode(
    model: &Model,
    opts: &DecodeOptions,
    progress: &mut dyn FnMut(Step),
) -> Result<DecodeReport, Error> {
    let max = model.imported().dims.max_positions;
    let positions = positions(max, opts.positions.clone(), opts.reps);
    if let Some(&p) = positions
        .iter()
        .find(|&&p| max.is_some_and(|m| p + opts.reps > m))
    {
        return Err(Error::TooLarge(format!(
            "position {p} and {} timed steps exceed the model's {} positions",
            opts.reps,
            max.unwrap_or(0)
        )));
    }
    let folder = model.is_optimised_folder();
    let mut graphs: Vec<(&'static str, Graph)> = vec![(
        if folder {
            "optimised folder"
        } else {
            "original"
        },
        model.graph().clone(),
    )];
    if opts.optimised && !folder {
        progress(Step::phase("optimising the graph exactly"));
        let rules = RuleSet::embedded()?;
        let seq = crate::limits::default_seq(model);
        graphs.push((
            "optimised",
            optimize(model.graph(), &Options::exact(&rules, seq))?.graph,
        ));
    }
    let weight_bytes = weight_bytes_per_token(model.graph(), opts.cpu.precision)?;
    progress(Step::phase("measuring read bandwidth (copying 1 GiB)"));
    let read_gbps = read_bandwidth(opts.cpu.threads);
    let floor_ms = weight_bytes as f64 / (read_gbps * 1e9) * 1e3;
    let backend = Backend::Cpu(opts.cpu.clone());
    let mut points = Vec::new();
    for (label, graph) in graphs {
        let mut s = Session::from_graph(&graph, max, &backend)?;
        let vocab = {
            let l = graph.output("logits").expect("a session checks for logits");
            graph.node(l).ty.shape.last().fixed().unwrap_or(1)
        };
        let mut rng = Rng::new(1);
        for &position in &positions {
            progress(Step::phase(&format!(
                "{label} graph: prefill to {position}"
            )));
            s.reset();
            let prompt: Vec<i64> = (0..position.max(1))
                .map(|_| rng.below(vocab) as i64)
                .collect();
            let t0 = Instant::now();
            let mut logits = s.feed(&prompt)?;
            let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
            let state_bytes = s.state_bytes();
            progress(Step::phase(&format!(
                "{label} graph: {} steps at {position}",
                opts.reps
            )));
            let mut times = Vec::with_capacity(opts.reps);
            for _ in 0..opts.reps {
                let id = crate::sample::argmax(&logits) as i64;
                let t = Instant::now();
                logits = s.feed(&[id])?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            points.push(DecodePoint {
                graph: label,
                position,
                per_token_ms: median,
                min_ms: times[0],
                tokens_per_s: 1e3 / median,
                prefill_ms,
                state_bytes,
                vs_floor: median / floor_ms,
            });
        }
    }
    Ok(DecodeReport {
        weight_bytes_per_token: weight_bytes,
        read_gbps,
        floor_ms,
        points,
    })
}

/// Weight bytes one token reads: the graph lowered at one token, each weight at the narrower
/// of its stored size and the precision's (bf16: 2 bytes, f32: 4).
fn weight_bytes_per_token(g: &Graph, precision: Precision) -> Result<u64, Error> {
    let l = attnopt_lower::lower(g, &Bindings::new(1, 1))
        .map_err(|e| Error::NotSupported(format!("lowering for the weight count: {e}")))?;
    let stored: u64 = attnopt_lower::weight_bytes_by_layer(g, &l).values().sum();
    // Stored sizes, rescaled by the dtype most of the weight bytes have.
    let big = (g.weights().iter())
        .max_by_key(|w| w.bytes().len())
        .map_or(4, |w| w.dtype().size()) as u64;
    // A product at one row reads a weight as stored (bf16 is exact in f32 arithmetic), or a
    // bf16 copy in bf16 precision: the narrower of the two sizes.
    let want = match precision {
        Precision::Bf16 => 2,
        Precision::F32 => 4,
    };
    Ok(stored / big * want.min(big))
}

/// Read bandwidth in GB/s: half the read-plus-written rate of copying 1 GiB on `threads`
/// threads (0: all), best of three.
pub fn read_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 1 << 30;
    let threads = crate::limits::threads(threads).0.max(1);
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    let chunk = BYTES.div_ceil(threads);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        std::thread::scope(|sc| {
            for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                sc.spawn(move || d.copy_from_slice(s));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    // Read + written = 2 GiB per copy; reads are half of that traffic.
    (BYTES as f64) / best / 1e9
}
