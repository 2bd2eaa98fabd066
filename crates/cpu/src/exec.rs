//! Running a graph on the CPU: lower it at the run's batch and sequence sizes (once per size),
//! compile each distinct row program once, prepare each weight for the matrix-product library
//! once, then run the kernels in order over one activation arena.
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

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use attnopt_ir::{
    broadcast_strides, Bindings, DType, Data, Dim, Graph, Op, RopeStyle, Sym, Tensor, WeightId,
};
use attnopt_lower::memory::storage_of;
use attnopt_lower::row::UnaryOp;
use attnopt_lower::{lower, Epilogue, Kernel, KernelKind, Lowered, Structured, ValueId, ValueKind};

use crate::hydra::HydraKernel;
use crate::jit::{Arg, JitModule, JitOptions, RowKernel, Valid};
use crate::matmul::{
    best_available_for, Activation, Batch, EpilogueKind, MatMul, MatMut, MatRef, Precision,
    PreparedWeight,
};
use crate::ops;
use crate::options::CpuOptions;
use crate::rope::RopeKernel;
use crate::views::strided_product;

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
}

/// A compiled kernel's executable part.
enum Exec {
    Row(RowKernel),
    Hydra(HydraKernel),
    /// Rotary embeddings as JIT row programs ([`RopeKernel`]), shared by every RoPE kernel
    /// of the same shape.
    Rope(Arc<RopeKernel>),
    /// A product, then its epilogue as a JIT row program over the output.
    Epilogue(RowKernel),
    /// A product with a prepared weight and its epilogue run inside it by the library.
    Fused(Fused),
    None,
}

/// An epilogue the matrix-product library runs: the values of its bias and residual.
struct Fused {
    bias: Option<ValueId>,
    activation: Option<Activation>,
    residual: Option<ValueId>,
}

/// The library's name for an activation of the lowering's structured epilogues.
fn activation(op: UnaryOp) -> Option<Activation> {
    Some(match op {
        UnaryOp::Gelu => Activation::GeluErf,
        UnaryOp::GeluTanh => Activation::GeluTanh,
        UnaryOp::Relu => Activation::Relu,
        UnaryOp::Silu => Activation::Silu,
        UnaryOp::Sigmoid => Activation::Sigmoid,
        UnaryOp::Tanh => Activation::Tanh,
        _ => return None,
    })
}

/// Everything prepared for one (batch, sequence) size.
struct Plan {
    lowered: Lowered,
    execs: Vec<Exec>,
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
    prepared: HashMap<(WeightId, bool), Box<dyn PreparedWeight>>,
    plans: HashMap<(usize, usize), Plan>,
    /// RoPE kernels by (style, positions, features, θ bits).
    ropes: HashMap<(RopeStyle, usize, usize, u32), Arc<RopeKernel>>,
    /// Let the matrix-product library run epilogues it can fuse (else all run as JIT passes).
    post_ops: bool,
}

/// Elements of a value during a run.
enum Src<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
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
            post_ops: options.post_ops,
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

    /// See [`CpuModel::set_post_ops`].
    pub fn post_ops(&self) -> bool {
        self.post_ops
    }

    /// Whether JIT kernels call the AVX-512 row primitives: asked for and the CPU has them.
    pub fn row_primitives(&self) -> bool {
        self.jit.row_primitives()
    }

    /// How the library runs `e` for this product kernel, if it fuses it: a product with a
    /// prepared (rank-2 weight) right side and k > 0, and a structured epilogue whose every
    /// part the library maps.
    fn fused_epilogue(&self, l: &Lowered, k: &Kernel, kk: usize, e: &Epilogue) -> Option<Fused> {
        let s: &Structured = e.structured.as_ref()?;
        let b = &l.values[k.inputs[1]];
        if !self.post_ops
            || kk == 0
            || !matches!(b.kind, ValueKind::Weight(_))
            || b.shape.len() != 2
        {
            return None;
        }
        let act = match s.activation {
            Some(op) => Some(activation(op)?),
            None => None,
        };
        let kind = EpilogueKind {
            bias: s.bias.is_some(),
            activation: act,
            residual: s.residual.is_some(),
        };
        let value = |i: usize| k.inputs.get(2 + i).copied();
        let fused = Fused {
            bias: match s.bias {
                Some(i) => Some(value(i)?),
                None => None,
            },
            activation: act,
            residual: match s.residual {
                Some(i) => Some(value(i)?),
                None => None,
            },
        };
        self.matmul.fuses(kind).then_some(fused)
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

    /// A weight's f32 elements: zero-copy from the checkpoint when stored as aligned f32, else
    /// converted once, on first use.
    fn weight(&self, id: WeightId) -> &[f32] {
        let w = self.graph.weight_data(id);
        if w.dtype() == DType::F32 {
            if let Some(x) = view_le::<f32>(w.bytes()) {
                return x;
            }
        }
        self.converted[id.0 as usize].get_or_init(|| w.to_f32())
    }

    /// A bf16 weight's bit patterns: zero-copy from the checkpoint when aligned; `None` for
    /// other dtypes.
    fn weight_bf16(&self, w: WeightId) -> Option<Cow<'_, [u16]>> {
        let data = self.graph.weight_data(w);
        if data.dtype() != DType::BF16 {
            return None;
        }
        let bytes = data.bytes();
        Some(view_le::<u16>(bytes).map_or_else(
            || {
                Cow::Owned(
                    bytes
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                )
            },
            Cow::Borrowed,
        ))
    }

    /// Prepares the `r × c` weight `w` (transposed: used as `c × r`) for the matrix-product
    /// library. A bf16 weight goes to the library as bf16, without an f32 copy.
    fn prepare_weight(
        &self,
        w: WeightId,
        r: usize,
        c: usize,
        transposed: bool,
    ) -> Result<Box<dyn PreparedWeight>, crate::matmul::MatMulError> {
        if let Some(bits) = self.weight_bf16(w) {
            let view = MatRef::row_major(&bits, r, c);
            return self
                .matmul
                .prepare_bf16(if transposed { view.t() } else { view });
        }
        let view = MatRef::row_major(self.weight(w), r, c);
        self.matmul
            .prepare(if transposed { view.t() } else { view })
    }

    /// The RoPE kernel for this shape and base, compiled (with its cos/sin table) once per
    /// model and shared by every layer; `None` for styles it does not cover.
    fn rope(
        &mut self,
        style: RopeStyle,
        n: usize,
        d: usize,
        theta: f32,
    ) -> Result<Option<Arc<RopeKernel>>, crate::jit::JitError> {
        let key = (style, n, d, theta.to_bits());
        if let Some(r) = self.ropes.get(&key) {
            return Ok(Some(Arc::clone(r)));
        }
        let Some(r) = RopeKernel::compile(&mut self.jit, style, n, d, theta as f64)? else {
            return Ok(None);
        };
        let r = Arc::new(r);
        self.ropes.insert(key, Arc::clone(&r));
        Ok(Some(r))
    }

    /// Where the preparation of `(batch, seq)` spent its time (after [`CpuModel::prepare`]).
    pub fn prepare_times(&self, batch: usize, seq: usize) -> Option<PrepareTimes> {
        self.plans.get(&(batch, seq)).map(|p| p.times)
    }

    /// Lowers and compiles for `(batch, seq)` if not done yet; returns the compile time spent.
    pub fn prepare(&mut self, batch: usize, seq: usize) -> Result<Duration, CpuError> {
        if let Some(p) = self.plans.get(&(batch, seq)) {
            return Ok(p.compile_time);
        }
        let t0 = Instant::now();
        let lowered = lower(&self.graph, &Bindings::new(batch, seq))?;
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
        let mut execs = Vec::with_capacity(lowered.kernels.len());
        for (i, k) in lowered.kernels.iter().enumerate() {
            let err = |msg: String| CpuError::Kernel {
                kernel: i,
                name: k.name.clone(),
                msg,
            };
            let mut fused = None;
            let program = match &k.kind {
                KernelKind::Row { program, .. } => Some((program, false)),
                KernelKind::MatMul {
                    k: kk,
                    epilogue: Some(e),
                    views,
                    ..
                } => {
                    // Library-fused epilogues take dense operands only.
                    if views.is_none() {
                        fused = self.fused_epilogue(&lowered, k, *kk, e);
                    }
                    Some((&e.program, true)).filter(|_| fused.is_none())
                }
                _ => None,
            };
            let tj = Instant::now();
            execs.push(match (program, &k.kind) {
                (None, KernelKind::Hydra(spec)) => Exec::Hydra(
                    HydraKernel::compile(&mut self.jit, spec).map_err(|e| err(e.to_string()))?,
                ),
                (None, KernelKind::Op(Op::Rope { theta, style })) => {
                    let s = &lowered.values[k.inputs[0]].shape;
                    let (n, d) = (s[s.len() - 2], s[s.len() - 1]);
                    self.rope(*style, n, d, theta.get())
                        .map_err(|e| err(e.to_string()))?
                        .map_or(Exec::None, Exec::Rope)
                }
                (Some((p, epi)), _) => {
                    let kernel = self.jit.compile(p).map_err(|e| err(e.to_string()))?;
                    if epi {
                        Exec::Epilogue(kernel)
                    } else {
                        Exec::Row(kernel)
                    }
                }
                (None, _) => fused.map_or(Exec::None, Exec::Fused),
            });
            times.jit += tj.elapsed();
            let tw = Instant::now();
            if let KernelKind::MatMul { b_transposed, .. } = k.kind {
                if let ValueKind::Weight(w) = lowered.values[k.inputs[1]].kind {
                    if !self.prepared.contains_key(&(w, b_transposed)) {
                        let shape = &lowered.values[k.inputs[1]].shape;
                        let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                        let p = self
                            .prepare_weight(w, r, c, b_transposed)
                            .map_err(|e| err(e.to_string()))?;
                        self.prepared.insert((w, b_transposed), p);
                    }
                }
            }
            times.weights += tw.elapsed();
        }
        let words = lowered.memory.arena_bytes.div_ceil(8);
        let plan = Plan {
            lowered,
            execs,
            arena: vec![0u64; words],
            compile_time: t0.elapsed(),
            times,
        };
        let ct = plan.compile_time;
        self.plans.insert((batch, seq), plan);
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
        let (batch, seq) = self.bind(inputs)?;
        self.prepare(batch, seq)?;
        let mut plan = self.plans.remove(&(batch, seq)).expect("prepared above");
        let result = self
            .pool
            .install(|| self.execute(&mut plan, inputs, wanted, profile));
        self.plans.insert((batch, seq), plan);
        result
    }

    /// Batch and sequence sizes from the inputs, checked against the graph's declared inputs.
    fn bind(&self, inputs: &HashMap<String, Tensor>) -> Result<(usize, usize), CpuError> {
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
        Ok((b.get(Sym::Batch).unwrap_or(1), b.get(Sym::Seq).unwrap_or(1)))
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
        let f = Frame {
            model: self,
            l: lowered,
            inputs,
            base,
            arena_len,
        };
        let mut times = Vec::new();
        for (i, k) in lowered.kernels.iter().enumerate() {
            let t0 = profile.then(Instant::now);
            let mut epilogue_seconds = 0.0;
            let err = |msg: String| CpuError::Kernel {
                kernel: i,
                name: k.name.clone(),
                msg,
            };
            // SAFETY (for `src` and `dst`): slices come from disjoint live values of the arena
            // (memory plan), bounds-checked against the arena's length.
            let src = |v: ValueId| -> Result<Src, CpuError> { f.src(v).map_err(err) };
            match &k.kind {
                KernelKind::View => {}
                KernelKind::AdditiveMask => {
                    let Src::I64(m) = src(k.inputs[0])? else {
                        return Err(err("mask must be an integer tensor".into()));
                    };
                    let out = f.dst_f32(k.output).map_err(err)?;
                    for (o, &x) in out.iter_mut().zip(m) {
                        *o = if x == 0 { f32::NEG_INFINITY } else { 0.0 };
                    }
                }
                KernelKind::Row {
                    rows, d, causal, ..
                } => {
                    let Exec::Row(kernel) = &plan.execs[i] else {
                        return Err(err("row kernel not compiled".into()));
                    };
                    let ins = k
                        .inputs
                        .iter()
                        .map(|&v| f32_of(src(v)?).map_err(err))
                        .collect::<Result<Vec<_>, _>>()?;
                    let out = f.dst_f32(k.output).map_err(err)?;
                    let valid = match causal {
                        Some(offset) => {
                            let s = &lowered.values[k.output].shape;
                            Valid::Causal {
                                queries: s[s.len().saturating_sub(2)].max(1),
                                offset: *offset,
                            }
                        }
                        None => Valid::Full,
                    };
                    if out.len() != rows * d {
                        return Err(err(format!(
                            "output holds {} elements, not {rows}×{d}",
                            out.len()
                        )));
                    }
                    kernel
                        .run_rows(&ins, out, *d, valid, &[])
                        .map_err(|e| err(e.to_string()))?;
                }
                KernelKind::MatMul {
                    m,
                    k: kk,
                    n,
                    b_transposed,
                    epilogue,
                    views,
                } => {
                    if let Some(views) = views {
                        let a = f32_of(src(k.inputs[0])?).map_err(err)?;
                        let b = f32_of(src(k.inputs[1])?).map_err(err)?;
                        let c = f.dst_f32(k.output).map_err(err)?;
                        strided_product(&self.activations, a, b, c, *m, *kk, *n, views)
                            .map_err(err)?;
                    } else if let Exec::Fused(fused) = &plan.execs[i] {
                        self.matmul_fused(&f, k, *kk, *n, *b_transposed, fused)
                            .map_err(err)?;
                    } else {
                        self.matmul(&f, k, *m, *kk, *n, *b_transposed)
                            .map_err(err)?;
                    }
                    let t1 = profile.then(Instant::now);
                    if let (Some(Epilogue { at, .. }), Exec::Epilogue(kernel)) =
                        (epilogue, &plan.execs[i])
                    {
                        let extra = &k.inputs[2..];
                        let mut args = Vec::with_capacity(extra.len());
                        for (j, &v) in extra.iter().enumerate() {
                            args.push(if j == *at {
                                Arg::Out
                            } else {
                                Arg::Data(f32_of(src(v)?).map_err(err)?)
                            });
                        }
                        let out = f.dst_f32(k.output).map_err(err)?;
                        kernel
                            .run_rows_in_place(&args, out, *n, Valid::Full, &[])
                            .map_err(|e| err(e.to_string()))?;
                        epilogue_seconds = t1.map_or(0.0, |t| t.elapsed().as_secs_f64());
                    }
                }
                KernelKind::Hydra(_) => {
                    let Exec::Hydra(kernel) = &plan.execs[i] else {
                        return Err(err("Hydra kernel not compiled".into()));
                    };
                    let [q, kk, v] = [0, 1, 2].map(|j| k.inputs.get(j).copied());
                    let (Some(q), Some(kk), Some(v)) = (q, kk, v) else {
                        return Err(err("a Hydra kernel takes Q, K and V".into()));
                    };
                    let (q, kk, v) = (
                        f32_of(src(q)?).map_err(err)?,
                        f32_of(src(kk)?).map_err(err)?,
                        f32_of(src(v)?).map_err(err)?,
                    );
                    let out = f.dst_f32(k.output).map_err(err)?;
                    kernel.run(q, kk, v, out).map_err(|e| err(e.to_string()))?;
                }
                KernelKind::Op(op) => match &plan.execs[i] {
                    Exec::Rope(rope) => {
                        let x = f32_of(src(k.inputs[0])?).map_err(err)?;
                        let out = f.dst_f32(k.output).map_err(err)?;
                        rope.run(x, out).map_err(err)?;
                    }
                    _ => self.generic(&f, k, op).map_err(err)?,
                },
            }
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

    /// A product with a prepared weight and its epilogue run inside it by the library.
    fn matmul_fused(
        &self,
        f: &Frame,
        k: &Kernel,
        kk: usize,
        n: usize,
        b_transposed: bool,
        fused: &Fused,
    ) -> Result<(), String> {
        let a = f32_of(f.src(k.inputs[0])?)?;
        let ValueKind::Weight(w) = f.l.values[k.inputs[1]].kind else {
            return Err("a fused epilogue needs a weight operand".into());
        };
        let p = self
            .prepared
            .get(&(w, b_transposed))
            .ok_or("weight not prepared")?;
        let rows = leading(&f.l.values[k.output].shape);
        let bias = match fused.bias {
            Some(v) => Some(f32_of(f.src(v)?)?),
            None => None,
        };
        let residual = match fused.residual {
            Some(v) => Some(MatRef::row_major(f32_of(f.src(v)?)?, rows, n)),
            None => None,
        };
        let c = f.dst_f32(k.output)?;
        let epilogue = crate::matmul::Epilogue {
            bias,
            activation: fused.activation,
            residual,
        };
        self.matmul
            .matmul_prepared_epilogue(
                MatRef::row_major(a, rows, kk),
                p.as_ref(),
                MatMut::row_major(c, rows, n),
                &epilogue,
            )
            .map_err(|e| e.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        f: &Frame,
        k: &Kernel,
        m: usize,
        kk: usize,
        n: usize,
        b_transposed: bool,
    ) -> Result<(), String> {
        let a = f32_of(f.src(k.inputs[0])?)?;
        let (a_shape, b_shape) = (
            &f.l.values[k.inputs[0]].shape,
            &f.l.values[k.inputs[1]].shape,
        );
        let out_shape = f.l.values[k.output].shape.clone();
        let c = f.dst_f32(k.output)?;
        let mm = |e: crate::matmul::MatMulError| e.to_string();
        // A weight (rank 2): one product over all rows of `a`.
        if let ValueKind::Weight(w) = f.l.values[k.inputs[1]].kind {
            if b_shape.len() == 2 {
                // From the output: with k = 0, `a` is empty but `c` still has its rows.
                let rows = leading(&out_shape);
                let p = self
                    .prepared
                    .get(&(w, b_transposed))
                    .ok_or("weight not prepared")?;
                return self
                    .matmul
                    .matmul_prepared(
                        MatRef::row_major(a, rows, kk),
                        p.as_ref(),
                        MatMut::row_major(c, rows, n),
                        false,
                    )
                    .map_err(mm);
            }
        }
        let b = f32_of(f.src(k.inputs[1])?)?;
        fn view_b(data: &[f32], kk: usize, n: usize, transposed: bool) -> MatRef<'_> {
            if transposed {
                MatRef::row_major(data, n, kk).t()
            } else {
                MatRef::row_major(data, kk, n)
            }
        }
        // Batch axes: broadcast like the interpreter.
        let rank = out_shape.len();
        let batch_out = &out_shape[..rank - 2];
        let count: usize = batch_out.iter().product();
        let pad = |s: &[usize]| -> Vec<usize> {
            let lead = &s[..s.len() - 2];
            let mut v = vec![1; batch_out.len() - lead.len()];
            v.extend_from_slice(lead);
            v
        };
        let (ab, bb) = (pad(a_shape), pad(b_shape));
        if ab == batch_out && bb == batch_out {
            let batch = Batch {
                count,
                a_stride: m * kk,
                b_stride: kk * n,
                c_stride: m * n,
            };
            return self
                .activations
                .batched(
                    MatRef::row_major(a, m, kk),
                    view_b(b, kk, n, b_transposed),
                    MatMut::row_major(c, m, n),
                    batch,
                    false,
                )
                .map_err(mm);
        }
        if bb.iter().all(|&x| x == 1) {
            // Shared right operand: one tall product.
            return self
                .matmul
                .matmul(
                    MatRef::row_major(a, count * m, kk),
                    view_b(b, kk, n, b_transposed),
                    MatMut::row_major(c, count * m, n),
                    false,
                )
                .map_err(mm);
        }
        // General broadcasting: one product per output batch index.
        let (sa, sb) = (
            broadcast_strides(&ab, ab.len()),
            broadcast_strides(&bb, bb.len()),
        );
        let mut idx = vec![0usize; batch_out.len()];
        for i in 0..count {
            let ia: usize = idx.iter().zip(&sa).map(|(x, s)| x * s).sum();
            let ib: usize = idx.iter().zip(&sb).map(|(x, s)| x * s).sum();
            let a_i = a
                .get(ia * m * kk..(ia + 1) * m * kk)
                .ok_or("a batch out of range")?;
            let b_i = b
                .get(ib * kk * n..(ib + 1) * kk * n)
                .ok_or("b batch out of range")?;
            let c_i = &mut c[i * m * n..(i + 1) * m * n];
            self.matmul
                .matmul(
                    MatRef::row_major(a_i, m, kk),
                    view_b(b_i, kk, n, b_transposed),
                    MatMut::row_major(c_i, m, n),
                    false,
                )
                .map_err(mm)?;
            for ax in (0..idx.len()).rev() {
                idx[ax] += 1;
                if idx[ax] < batch_out[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        Ok(())
    }

    fn generic(&self, f: &Frame, k: &Kernel, op: &Op) -> Result<(), String> {
        let in_shape = f.l.values[k.inputs[0]].shape.clone();
        let out_v = storage_of(&f.l.values, k.output);
        // Layout operators: native strided copies.
        if let Some((shape, perm)) = ops::as_permute(op, &in_shape) {
            match f.src(k.inputs[0])? {
                Src::F32(x) => ops::permute(x, &shape, &perm, f.dst_f32(k.output)?),
                Src::I64(x) => {
                    let mut tmp = vec![0i64; x.len()];
                    ops::permute(x, &shape, &perm, &mut tmp);
                    f.write_i64(out_v, &tmp)?;
                }
            }
            return Ok(());
        }
        // Embedding lookups and slices: native row copies (they run every layer, and the generic
        // path would copy whole embedding tables).
        match op {
            Op::Gather => {
                let Src::I64(ids) = f.src(k.inputs[1])? else {
                    return Err("ids must be integers".into());
                };
                let (rows, d) = (in_shape[0], in_shape[1]);
                // A bf16 embedding table is read as bf16: no f32 copy of the whole table.
                if let ValueKind::Weight(w) = f.l.values[storage_of(&f.l.values, k.inputs[0])].kind
                {
                    if let Some(bits) = self.weight_bf16(w) {
                        let out = f.dst_f32(k.output)?;
                        return ops::gather_bf16(&bits, rows, d, ids, out);
                    }
                }
                let table = f32_of(f.src(k.inputs[0])?)?;
                let out = f.dst_f32(k.output)?;
                return ops::gather(table, rows, d, ids, out);
            }
            Op::Slice { axis, start, .. } => {
                let out_shape = &f.l.values[k.output].shape;
                let (outer, inner) = (
                    in_shape[..*axis].iter().product(),
                    in_shape[axis + 1..].iter().product(),
                );
                let (len_in, len_out) = (in_shape[*axis], out_shape[*axis]);
                match f.src(k.inputs[0])? {
                    Src::F32(x) => {
                        let out = f.dst_f32(k.output)?;
                        return ops::slice(x, outer, len_in, inner, *start, len_out, out);
                    }
                    Src::I64(_) => {} // rare: the reference path below
                }
            }
            Op::Reduce { kind, axis, .. } => {
                let x = f32_of(f.src(k.inputs[0])?)?;
                let (outer, len, inner) = ops::around(&in_shape, *axis);
                let out = f.dst_f32(k.output)?;
                return ops::reduce(*kind, x, outer, len, inner, out);
            }
            Op::CumSum { axis } => {
                let x = f32_of(f.src(k.inputs[0])?)?;
                let (outer, len, inner) = ops::around(&in_shape, *axis);
                let out = f.dst_f32(k.output)?;
                return ops::cumsum(x, outer, len, inner, out);
            }
            Op::Rope { theta, style } => {
                let x = f32_of(f.src(k.inputs[0])?)?;
                let out = f.dst_f32(k.output)?;
                return ops::rope(x, &in_shape, theta.get() as f64, *style, out);
            }
            Op::RepeatHeads { times } => {
                let x = f32_of(f.src(k.inputs[0])?)?;
                let out = f.dst_f32(k.output)?;
                return ops::repeat_heads(x, &in_shape, *times, out);
            }
            Op::Expand(_) | Op::Concat { .. }
                if k.inputs.iter().all(|&v| f.l.values[v].dtype == DType::F32) =>
            {
                let out_shape = f.l.values[k.output].shape.clone();
                let mut parts = Vec::with_capacity(k.inputs.len());
                for &v in &k.inputs {
                    parts.push((f32_of(f.src(v)?)?, f.l.values[v].shape.clone()));
                }
                let out = f.dst_f32(k.output)?;
                return match op {
                    Op::Concat { axis } => ops::concat(&parts, *axis, &out_shape, out),
                    _ => ops::expand(parts[0].0, &parts[0].1, &out_shape, out),
                };
            }
            _ => {}
        }
        // Everything else: the reference meaning.
        let mut args = Vec::with_capacity(k.inputs.len());
        for &v in &k.inputs {
            let shape = f.l.values[v].shape.clone();
            let t = match f.src(v)? {
                Src::F32(x) => Tensor::f32(shape, x.to_vec()),
                Src::I64(x) => Tensor::i64(shape, x.to_vec()),
            }
            .map_err(|e| e.to_string())?;
            args.push(t);
        }
        let refs: Vec<&Tensor> = args.iter().collect();
        let t = ops::reference(op, &refs, &f.l.bindings)?;
        if t.shape() != f.l.values[k.output].shape {
            return Err(format!(
                "computed shape {:?}, planned {:?}",
                t.shape(),
                f.l.values[k.output].shape
            ));
        }
        match t.data() {
            Data::F32(x) => f.dst_f32(k.output)?.copy_from_slice(x),
            Data::I64(x) => f.write_i64(out_v, x)?,
        }
        Ok(())
    }

    /// Peak activation memory of the plan for `(batch, seq)`, if prepared.
    pub fn arena_bytes(&self, batch: usize, seq: usize) -> Option<usize> {
        self.plans
            .get(&(batch, seq))
            .map(|p| p.lowered.memory.arena_bytes)
    }

    /// The lowered kernels for `(batch, seq)`, if prepared.
    pub fn lowered(&self, batch: usize, seq: usize) -> Option<&Lowered> {
        self.plans.get(&(batch, seq)).map(|p| &p.lowered)
    }
}

/// Numbers for which every bit pattern is a value, so checkpoint bytes can be read as them.
trait PlainNumber: Copy {}
impl PlainNumber for f32 {}
impl PlainNumber for u16 {}

/// `bytes` (little-endian, as checkpoints store them) viewed as `T`s without a copy: `None`
/// unless the host is little-endian, `bytes` starts aligned for `T` and holds whole `T`s.
fn view_le<T: PlainNumber>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    let aligned = bytes.as_ptr() as usize % std::mem::align_of::<T>() == 0;
    if !cfg!(target_endian = "little") || !aligned || bytes.len() % size != 0 {
        return None;
    }
    // SAFETY: aligned for `T` and a whole number of `T`s (checked); every bit pattern is a valid
    // `T` (`PlainNumber`); the host's byte order is the data's; the result borrows `bytes`.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// The rows of a row-major value seen as `rows × last axis`.
fn leading(shape: &[usize]) -> usize {
    shape[..shape.len().saturating_sub(1)].iter().product()
}

fn f32_of(s: Src<'_>) -> Result<&[f32], String> {
    match s {
        Src::F32(x) => Ok(x),
        Src::I64(_) => Err("expected an f32 operand, got integers".into()),
    }
}

/// One run's view of its values: the plan, the inputs, the arena, and the model's weights.
struct Frame<'a> {
    model: &'a CpuModel,
    l: &'a Lowered,
    inputs: &'a HashMap<String, Tensor>,
    base: *mut u8,
    arena_len: usize,
}

impl<'a> Frame<'a> {
    /// The elements of value `v`.
    fn src(&self, v: ValueId) -> Result<Src<'a>, String> {
        let s = storage_of(&self.l.values, v);
        let value = &self.l.values[v];
        let numel = value.numel();
        match &self.l.values[s].kind {
            ValueKind::Input(name) => match self.inputs.get(name).map(|t| t.data()) {
                Some(Data::F32(x)) if x.len() == numel => Ok(Src::F32(x)),
                Some(Data::I64(x)) if x.len() == numel => Ok(Src::I64(x)),
                _ => Err(format!("input `{name}` does not hold {numel} elements")),
            },
            ValueKind::Weight(w) => {
                let x = self.model.weight(*w);
                if x.len() != numel {
                    return Err(format!(
                        "weight holds {} elements, expected {numel}",
                        x.len()
                    ));
                }
                Ok(Src::F32(x))
            }
            ValueKind::Temp => {
                let off = self.l.memory.offsets[s].ok_or("value has no arena offset")?;
                let size = self.l.values[s].dtype.size();
                if off + numel * size > self.arena_len {
                    return Err("value reaches past the arena".into());
                }
                // SAFETY: in bounds (checked), aligned (offsets are multiples of 64), and not
                // written while read (the memory plan keeps live values disjoint).
                Ok(unsafe {
                    match self.l.values[s].dtype {
                        DType::I64 => Src::I64(std::slice::from_raw_parts(
                            self.base.add(off) as *const i64,
                            numel,
                        )),
                        _ => Src::F32(std::slice::from_raw_parts(
                            self.base.add(off) as *const f32,
                            numel,
                        )),
                    }
                })
            }
            ValueKind::Alias(_) => unreachable!("storage_of follows aliases"),
        }
    }

    /// Writable f32 elements of the arena value `v`.
    #[allow(clippy::mut_from_ref)]
    fn dst_f32(&self, v: ValueId) -> Result<&'a mut [f32], String> {
        let s = storage_of(&self.l.values, v);
        let numel = self.l.values[v].numel();
        if self.l.values[s].kind != ValueKind::Temp || self.l.values[s].dtype != DType::F32 {
            return Err("the output is not an f32 arena value".into());
        }
        let off = self.l.memory.offsets[s].ok_or("value has no arena offset")?;
        if off + numel * 4 > self.arena_len {
            return Err("value reaches past the arena".into());
        }
        // SAFETY: as in `src`; the plan gives the output bytes no other live value.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.base.add(off) as *mut f32, numel) })
    }

    fn write_i64(&self, v: ValueId, x: &[i64]) -> Result<(), String> {
        let off = self.l.memory.offsets[v].ok_or("value has no arena offset")?;
        if self.l.values[v].dtype != DType::I64
            || self.l.values[v].numel() != x.len()
            || off + x.len() * 8 > self.arena_len
        {
            return Err("i64 output does not fit its arena slot".into());
        }
        // SAFETY: bounds checked above; aligned; no other live value shares the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off) as *mut i64, x.len()) }
            .copy_from_slice(x);
        Ok(())
    }
}
