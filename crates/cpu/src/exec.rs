//! Running a graph on the CPU: lower it at the run's batch and sequence sizes (once per size),
//! compile each distinct row program once, prepare each weight for the matrix-product library
//! once, then run the kernels in order over one activation arena. `CpuModel` owns the plan
//! cache, the arena and the run loop; what each kernel kind prepares and runs lives in
//! [`crate::kernels`] (one file per kind).
//!
//! A product's epilogue (bias, activation, residual: `attnopt_lower::Epilogue`) runs inside the
//! product where the matrix-product library fuses it (oneDNN post-ops) and the product has a
//! prepared weight; otherwise as its JIT row program over the output right after the product.
//! [`CpuOptions::post_ops`] off (or [`CpuModel::set_post_ops`]) keeps every epilogue on the JIT
//! path, to compare the two.
//!
//! Safety: every kernel's slices are cut from the arena, the inputs or the weights after
//! checking their bounds; the memory plan guarantees that values live at the same time do not
//! overlap (checked in debug builds); JIT code and library calls check lengths again.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use attnopt_ir::{Bindings, Dim, Graph, Op, Sym, Tensor};
use attnopt_lower::{lower, Lowered};

use crate::frame::{Frame, Src};
use crate::jit::{JitModule, JitOptions};
use crate::kernels::{
    self, Compiled, Compiler, PreparedWeights, RopeKernels, SparseFfCaches, TransposedWeights,
};
use crate::matmul::{best_available_for, MatMul, Precision};
use crate::options::CpuOptions;
use crate::weights::Weights;

/// Why a CPU run failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("input `{0}` is missing")]
    MissingInput(String),
    #[error("input `{name}`: {msg}")]
    BadInput { name: String, msg: String },
    #[error("lowering: {0}")]
    Lower(#[from] attnopt_lower::LowerError),
    #[error("kernel {kernel} ({name}): {msg}")]
    Kernel {
        kernel: usize,
        name: String,
        msg: String,
    },
    #[error("no output named `{0}`")]
    UnknownOutput(String),
    #[error("thread pool: {0}")]
    Threads(String),
    #[error("precomputing weight-only values: {0}")]
    Fold(String),
    #[error("matrix products: {0}")]
    MatMul(#[from] crate::matmul::MatMulError),
    #[error(
        "at batch {batch} × {seq} tokens a run needs {:.1} GB of activation memory, more than \
         the {:.1} GB available; use shorter or fewer inputs",
        *arena as f64 / 1e9,
        *budget as f64 / 1e9
    )]
    OverBudget {
        batch: usize,
        seq: usize,
        arena: u64,
        budget: u64,
    },
}

/// Everything prepared for one (batch, sequence) size.
struct Plan {
    lowered: Lowered,
    /// One per kernel of `lowered`, in order.
    kernels: Vec<Box<dyn Compiled>>,
    arena: Vec<u64>,
    compile_time: Duration,
    times: PrepareTimes,
}

/// Where [`CpuModel::prepare`]'s time went for one (batch, sequence) size.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrepareTimes {
    /// Lowering: fusion, schedule and memory plan.
    pub lower: Duration,
    /// Cranelift compilation of the row kernels not compiled before (identical programs are
    /// compiled once per model).
    pub jit: Duration,
    /// Matrix-product weight preparation (reorder/packing) not done before.
    pub weights: Duration,
}

/// Time spent per kernel in the last profiled run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelTime {
    pub index: usize,
    pub name: String,
    pub layer: Option<u32>,
    pub seconds: f64,
    /// Of `seconds`, the time of a JIT epilogue pass after the product (0 when fused or none).
    pub epilogue_seconds: f64,
    pub flops: u64,
    pub bytes: u64,
}

/// A graph ready to run on the CPU.
pub struct CpuModel {
    graph: Graph,
    matmul: Box<dyn MatMul>,
    matmul_why: String,
    /// Products of two activations (attention scores and context, per head): the `gemm` crate,
    /// which measured faster than oneDNN on these small batched shapes (CPU-NOTES §4).
    activations: crate::matmul::GemmMatMul,
    jit: JitModule,
    pool: rayon::ThreadPool,
    threads: usize,
    /// f32 copies of weights stored in another dtype (or unaligned), made on first use by a
    /// kernel that reads f32: a bf16 weight used only by matrix products is never widened.
    /// Indexed by weight id.
    converted: Vec<OnceLock<Vec<f32>>>,
    prepared: PreparedWeights,
    /// By (batch, sequence) size; a decoding step's plan also by its past length, and only
    /// the latest such plan is kept (a step is planned per position).
    plans: HashMap<PlanKey, Plan>,
    /// RoPE kernels by (style, positions, features, θ bits).
    ropes: RopeKernels,
    /// `W1ᵀ` of sparse feed-forward kernels, by weight.
    transposed: TransposedWeights,
    /// Sparse feed-forward kernels' bf16 unit rows and controller copies.
    sparse: SparseFfCaches,
    /// Let the matrix-product library run epilogues it can fuse (else all run as JIT passes).
    post_ops: bool,
    /// The most activation memory (arena bytes) a new size may need; `None`: no limit.
    memory_budget: Option<u64>,
}

impl CpuModel {
    /// Prepares `graph` to run as `options` say: threads, precision, the matrix-product library
    /// ([`CpuModel::matmul_name`]; an error only when one that cannot be used is asked for),
    /// fused epilogues and JIT row primitives.
    pub fn with_options(graph: Graph, options: &CpuOptions) -> Result<CpuModel, CpuError> {
        let threads = if options.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            options.threads
        };
        let (matmul, why) = best_available_for(
            threads,
            options.precision,
            options.matmul,
            options.onednn_library.as_deref(),
        )?;
        CpuModel::build(graph, threads, matmul, why, options)
    }

    /// Prepares `graph` to run with `threads` threads (0: all cores) and the default options:
    /// matrix products use oneDNN when `libdnnl.so.2` loads, else the `gemm` crate.
    pub fn new(graph: Graph, threads: usize) -> Result<CpuModel, CpuError> {
        CpuModel::with_precision(graph, threads, Precision::F32)
    }

    /// As [`CpuModel::new`], with products against weights in `precision`. With
    /// [`Precision::Bf16`] the weights are stored in bf16 and the products' activations rounded
    /// to bf16, accumulating in `f32` (oneDNN's native bf16 kernels, or `gemm` widening bf16 on
    /// the fly); products of two activations (attention) and everything else stay `f32`.
    pub fn with_precision(
        graph: Graph,
        threads: usize,
        precision: Precision,
    ) -> Result<CpuModel, CpuError> {
        let options = CpuOptions {
            threads,
            precision,
            ..CpuOptions::default()
        };
        CpuModel::with_options(graph, &options)
    }

    /// As [`CpuModel::new`] with a given matrix-product implementation (`why`: how it was chosen).
    pub fn with_matmul(
        graph: Graph,
        threads: usize,
        matmul: Box<dyn MatMul>,
        matmul_why: String,
    ) -> Result<CpuModel, CpuError> {
        CpuModel::build(graph, threads, matmul, matmul_why, &CpuOptions::default())
    }

    /// The constructors' common part; of `options`, only `post_ops` and `row_primitives` are
    /// read (threads and the library are decided by the caller).
    fn build(
        graph: Graph,
        threads: usize,
        matmul: Box<dyn MatMul>,
        matmul_why: String,
        options: &CpuOptions,
    ) -> Result<CpuModel, CpuError> {
        let threads = threads.max(1);
        // What depends on weights only (fused Q/K/V weights, scaled weights) is computed once here.
        let graph = attnopt_ir::fold::fold_weights_keeping_bf16(&graph)
            .map_err(|e| CpuError::Fold(e.to_string()))?
            .graph;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| CpuError::Threads(e.to_string()))?;
        let jit = JitModule::with_options(JitOptions {
            row_primitives: options.row_primitives,
            ..JitOptions::default()
        })
        .map_err(|e| CpuError::Kernel {
            kernel: 0,
            name: "jit".into(),
            msg: e.to_string(),
        })?;
        let converted = graph.weights().iter().map(|_| OnceLock::new()).collect();
        Ok(CpuModel {
            graph,
            matmul,
            matmul_why,
            activations: crate::matmul::GemmMatMul::new(threads),
            jit,
            pool,
            threads,
            converted,
            prepared: HashMap::new(),
            plans: HashMap::new(),
            ropes: HashMap::new(),
            transposed: HashMap::new(),
            sparse: SparseFfCaches::default(),
            post_ops: options.post_ops,
            memory_budget: None,
        })
    }

    /// Names of the weights this model has widened to f32 copies so far (bf16 or unaligned
    /// weights read by a kernel other than a matrix product against a weight).
    pub fn widened_weights(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .converted
            .iter()
            .zip(self.graph.weights())
            .filter(|(c, _)| c.get().is_some())
            .map(|(_, w)| w.name().to_string())
            .collect();
        v.sort();
        v
    }

    /// Whether epilogues the matrix-product library can fuse run inside the product (the
    /// default, unless [`CpuOptions::post_ops`] is off), or every epilogue runs as a JIT pass
    /// after it.
    /// Changing it drops the prepared plans (they are rebuilt on the next run).
    pub fn set_post_ops(&mut self, on: bool) {
        if on != self.post_ops {
            self.post_ops = on;
            self.plans.clear();
        }
    }

    /// The most activation memory a size prepared from now on may need (the arena the lowering
    /// plans, checked before it is allocated); `None` (the default) sets no limit. Sizes
    /// already prepared keep their arenas.
    pub fn set_memory_budget(&mut self, bytes: Option<u64>) {
        self.memory_budget = bytes;
    }

    /// See [`CpuModel::set_post_ops`].
    pub fn post_ops(&self) -> bool {
        self.post_ops
    }

    /// Whether JIT kernels call the AVX-512 row primitives: asked for and the CPU has them.
    pub fn row_primitives(&self) -> bool {
        self.jit.row_primitives()
    }

    /// The matrix-product library in use and why.
    pub fn matmul_name(&self) -> (&str, &str) {
        (self.matmul.name(), &self.matmul_why)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Where the preparation of `(batch, seq)` spent its time (after [`CpuModel::prepare`]).
    pub fn prepare_times(&self, batch: usize, seq: usize) -> Option<PrepareTimes> {
        self.plans
            .get(&PlanKey::new(batch, seq, None))
            .map(|p| p.times)
    }

    /// Lowers and compiles for `(batch, seq)` if not done yet; returns the compile time spent.
    pub fn prepare(&mut self, batch: usize, seq: usize) -> Result<Duration, CpuError> {
        self.prepare_key(PlanKey::new(batch, seq, None))
    }

    /// [`CpuModel::prepare`] for a decoding step's graph: `seq` new tokens after `past`.
    pub fn prepare_step(
        &mut self,
        batch: usize,
        seq: usize,
        past: usize,
    ) -> Result<Duration, CpuError> {
        self.prepare_key(PlanKey::new(batch, seq, Some(past)))
    }

    fn prepare_key(&mut self, key: PlanKey) -> Result<Duration, CpuError> {
        if let Some(p) = self.plans.get(&key) {
            return Ok(p.compile_time);
        }
        let (batch, seq) = (key.batch, key.seq);
        let t0 = Instant::now();
        let lowered = lower(&self.graph, &key.bindings())?;
        let arena = lowered.memory.arena_bytes as u64;
        if let Some(budget) = self.memory_budget.filter(|&b| arena > b) {
            return Err(CpuError::OverBudget {
                batch,
                seq,
                arena,
                budget,
            });
        }
        let mut times = PrepareTimes {
            lower: t0.elapsed(),
            ..PrepareTimes::default()
        };
        #[cfg(debug_assertions)]
        attnopt_lower::memory::check(
            &lowered.memory,
            &lowered.values,
            &lowered.kernels,
            &lowered.outputs,
        )
        .map_err(|msg| CpuError::Kernel {
            kernel: 0,
            name: "memory plan".into(),
            msg,
        })?;
        let mut cx = Compiler {
            jit: &mut self.jit,
            matmul: self.matmul.as_ref(),
            weights: Weights::new(&self.graph, &self.converted),
            prepared: &mut self.prepared,
            ropes: &mut self.ropes,
            transposed: &mut self.transposed,
            sparse: &mut self.sparse,
            post_ops: self.post_ops,
            weight_time: Duration::ZERO,
        };
        let tc = Instant::now();
        let compiled = (lowered.kernels.iter().enumerate())
            .map(|(i, k)| {
                kernels::compile(&mut cx, &lowered, k).map_err(|msg| CpuError::Kernel {
                    kernel: i,
                    name: k.name.clone(),
                    msg,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Weight preparation is timed inside `compile`; the rest of it is JIT work.
        times.weights = cx.weight_time;
        times.jit = tc.elapsed().saturating_sub(times.weights);
        let words = lowered.memory.arena_bytes.div_ceil(8);
        // A decoding step replaces the previous step's plan and takes over its arena (grown
        // as needed), so steps do not fault in fresh pages every time.
        let mut arena = Vec::new();
        if key.past.is_some() {
            let old: Vec<PlanKey> = self
                .plans
                .keys()
                .filter(|k| k.past.is_some())
                .copied()
                .collect();
            for k in old {
                if let Some(p) = self.plans.remove(&k) {
                    arena = p.arena;
                }
            }
        }
        arena.resize(words, 0);
        let plan = Plan {
            lowered,
            kernels: compiled,
            arena,
            compile_time: t0.elapsed(),
            times,
        };
        let ct = plan.compile_time;
        self.plans.insert(key, plan);
        Ok(ct)
    }

    /// Runs the graph; returns the named outputs (all if `wanted` is empty) and, with
    /// `profile`, the time of every kernel.
    pub fn run(
        &mut self,
        inputs: &HashMap<String, Tensor>,
        wanted: &[&str],
        profile: bool,
    ) -> Result<(HashMap<String, Tensor>, Vec<KernelTime>), CpuError> {
        let key = self.bind(inputs)?;
        self.prepare_key(key)?;
        let mut plan = self.plans.remove(&key).expect("prepared above");
        let result = self
            .pool
            .install(|| self.execute(&mut plan, inputs, wanted, profile));
        self.plans.insert(key, plan);
        result
    }

    /// Batch and sequence sizes (and a decoding state's past length) from the inputs, checked
    /// against the graph's declared inputs.
    fn bind(&self, inputs: &HashMap<String, Tensor>) -> Result<PlanKey, CpuError> {
        let mut b = Bindings::default();
        for (name, id) in self.graph.inputs() {
            let Op::Input { shape, dtype, .. } = &self.graph.node(*id).op else {
                continue;
            };
            let t = inputs
                .get(name)
                .ok_or_else(|| CpuError::MissingInput(name.clone()))?;
            let bad = |msg: String| CpuError::BadInput {
                name: name.clone(),
                msg,
            };
            if t.dtype() != *dtype {
                return Err(bad(format!("must be {dtype}, got {}", t.dtype())));
            }
            if t.rank() != shape.rank() {
                return Err(bad(format!(
                    "has shape {:?}, the model expects {shape}",
                    t.shape()
                )));
            }
            for (d, &n) in shape.0.iter().zip(t.shape()) {
                match d {
                    Dim::Fixed(f) if *f != n => {
                        return Err(bad(format!(
                            "has shape {:?}, the model expects {shape}",
                            t.shape()
                        )))
                    }
                    Dim::Sym(s) => b.bind(*s, n).map_err(|old| {
                        bad(format!(
                            "{} = {n} contradicts {old} set by another input",
                            s.name()
                        ))
                    })?,
                    _ => {}
                }
            }
        }
        let past = b.get(Sym::Past);
        let seq = b.get(Sym::Seq).unwrap_or(1);
        Ok(PlanKey::new(b.get(Sym::Batch).unwrap_or(1), seq, past))
    }

    fn execute(
        &self,
        plan: &mut Plan,
        inputs: &HashMap<String, Tensor>,
        wanted: &[&str],
        profile: bool,
    ) -> Result<(HashMap<String, Tensor>, Vec<KernelTime>), CpuError> {
        let lowered = &plan.lowered;
        let arena_len = plan.arena.len() * 8;
        let base = plan.arena.as_mut_ptr() as *mut u8;
        // SAFETY (for the kernels' slices): the frame cuts them from disjoint live values of
        // the arena (memory plan), bounds-checked against the arena's length.
        let f = Frame {
            l: lowered,
            inputs,
            weights: Weights::new(&self.graph, &self.converted),
            matmul: self.matmul.as_ref(),
            activations: &self.activations,
            base,
            arena_len,
        };
        let mut times = Vec::new();
        for (i, (k, compiled)) in lowered.kernels.iter().zip(&plan.kernels).enumerate() {
            let t0 = profile.then(Instant::now);
            let err = |msg: String| CpuError::Kernel {
                kernel: i,
                name: k.name.clone(),
                msg,
            };
            let epilogue_seconds = compiled.run(&f, k, profile).map_err(err)?;
            if let Some(t0) = t0 {
                times.push(KernelTime {
                    index: i,
                    name: k.name.clone(),
                    layer: k.layer,
                    seconds: t0.elapsed().as_secs_f64(),
                    epilogue_seconds,
                    flops: k.flops,
                    bytes: k.bytes,
                });
            }
        }
        let mut out = HashMap::new();
        for (name, v) in &lowered.outputs {
            if !wanted.is_empty() && !wanted.contains(&name.as_str()) {
                continue;
            }
            let shape = lowered.values[*v].shape.clone();
            let t = match f.src(*v).map_err(|msg| CpuError::Kernel {
                kernel: usize::MAX,
                name: name.clone(),
                msg,
            })? {
                Src::F32(s) => Tensor::f32(shape, s.to_vec()),
                Src::I64(s) => Tensor::i64(shape, s.to_vec()),
            }
            .expect("value lengths match their shapes");
            out.insert(name.clone(), t);
        }
        for w in wanted {
            if !out.contains_key(*w) {
                return Err(CpuError::UnknownOutput(w.to_string()));
            }
        }
        Ok((out, times))
    }

    /// Peak activation memory of the plan for `(batch, seq)`, if prepared.
    pub fn arena_bytes(&self, batch: usize, seq: usize) -> Option<usize> {
        self.plans
            .get(&PlanKey::new(batch, seq, None))
            .map(|p| p.lowered.memory.arena_bytes)
    }

    /// The lowered kernels for `(batch, seq)`, if prepared.
    pub fn lowered(&self, batch: usize, seq: usize) -> Option<&Lowered> {
        self.plans
            .get(&PlanKey::new(batch, seq, None))
            .map(|p| &p.lowered)
    }
}

/// What a plan is for: its sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    batch: usize,
    seq: usize,
    /// A decoding step's tokens held in the state before it (`None`: a graph without state).
    past: Option<usize>,
}

impl PlanKey {
    fn new(batch: usize, seq: usize, past: Option<usize>) -> PlanKey {
        PlanKey { batch, seq, past }
    }

    fn bindings(&self) -> Bindings {
        match self.past {
            Some(p) => Bindings::step(self.batch, self.seq, p),
            None => Bindings::new(self.batch, self.seq),
        }
    }
}
