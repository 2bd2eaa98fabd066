//! JIT-compiled row kernels: the fused chains between matrix products (bias + GELU, residual
//! add + LayerNorm, scale + mask + softmax, L2-normalise, ...) as one Cranelift function each.
//!
//! A kernel is compiled from the lowering's [`RowProgram`] (re-exported here: one definition
//! for the lowering, this backend and the reference semantics,
//! [`RowProgram::eval_reference`]). Its meaning for one row of length `d`, with `valid ≤ d`:
//!
//! * reduction `k` (a `Sum` or `Max` of its expression) runs over columns `0..valid`, in order,
//!   and may use the scalar results `Reduced(j)` of reductions `j < k`; an empty range gives
//!   `0` for `Sum` and `−∞` for `Max`;
//! * columns `0..valid` of the output get `output`, columns `valid..d` get `fill`;
//! * with `zero_if_all_masked`, reduction 0 must be a `Max`; when it comes out `−∞` (every
//!   valid entry is `−∞`, or `valid == 0`) the whole row is written `fill` and nothing else is
//!   evaluated.
//!
//! **Softmax recipe** (what the lowering emits and `tests/jit.rs` checks): with
//! `x = Input(scores)·Param(scale) + Input(mask)` (the mask a [`InputKind::GroupVector`] of
//! additive `0 / −∞`), reductions `m = Max(x)` and `s = Sum(exp(x − m))`, output
//! `exp(x − m) · Recip(s)`, `fill = 0`, `zero_if_all_masked = true`. Masked entries give
//! exactly 0 because this backend's `exp(−∞)` is exactly 0 (and so is `exp` of anything below
//! −87.34); a row with no unmasked valid entry gives zeros, never NaN (CPU-NOTES §2).
//!
//! Numerics (measured against f64 by `tests/jit.rs`; schemes from CPU-NOTES §2): `exp` ≤ 1 ulp
//! (0 below −87.34, +∞ above 88.38, NaN stays NaN); `tanh`, `sigmoid`, `silu`, `elu` ≤ 2.5 ulp;
//! GELU (erf) relative error ≤ 8.1e-7 on `[−9, 12]`, absolute ≤ 3.9e-7 everywhere; GELU (tanh
//! form) relative ≤ 1.1e-6 on `[−3, 12]`, ≤ 3.9e-6 on `[−6, −3]`, absolute ≤ 5.2e-7. `sqrt`,
//! `Div`, `Recip` and the rest are IEEE (correctly rounded). `Max`/`Min`/`Relu` with a NaN
//! operand, and every function of NaN except `exp`, give unspecified values (NaN or one of the
//! operands). Sums are accumulated in 16 (or 4) partial sums, then combined pairwise.
//!
//! **AVX-512 row primitives**: Cranelift emits at most f32x4. On a CPU with `avx512f` (detected
//! when the [`JitModule`] is created) the softmax's exp pass is a call, once per row, to a
//! precompiled Rust AVX-512 routine (`primitives.rs`; same exp scheme and edge rules; the
//! softmax kernel runs ≈ 2.4× as fast). [`JitOptions::row_primitives`] turns this off (the CLI
//! maps `ATTNOPT_JIT_AVX512=0` to it); the f32x4 code path is then used everywhere, as on CPUs
//! without AVX-512.
//!
//! Ownership: a [`JitModule`] owns one Cranelift `JITModule`; every [`RowKernel`] it compiles
//! holds a share of it, and the code memory is freed (`free_memory`) when the module and all
//! its kernels are gone. Kernels are `Send + Sync` and can be called from any thread.
//!
//! Never: call JIT code before every slice length, the row count and `valid` have been
//! checked against the kernel's program (all in [`RowKernel`]); grow this module into a
//! scheduler (which kernels run when is the runtime's business).

mod codegen;
mod math;
mod primitives;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use attnopt_lower::row::{
    BinaryOp, Expr, InputKind, ReduceKind, Reduction, RowProgram, UnaryOp,
};
use cranelift_codegen::{ir::Function, settings, settings::Configurable, Context};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};
pub use primitives::exp_sub_sum;
use primitives::Primitive;
use rayon::prelude::*;

/// A compiled row function (see [`codegen`]): `(inputs, out, d, valid, params)`.
type RowFn = unsafe extern "C" fn(*const *const f32, *mut f32, usize, usize, *const f32);

/// Regions of at least this much estimated work are split across the rayon pool
/// (CPU-NOTES §4/§6: a fork-join costs 0.5–8 µs).
const PARALLEL_MIN_NS: f64 = 20_000.0;
/// Estimated nanoseconds per unit of `codegen::expr_cost` per element, calibrated with
/// `examples/jit_bench.rs` on the 2-vCPU Xeon of CPU-NOTES (one thread: GELU-erf 1.8–2.4 ns
/// per element for cost 75, softmax ≈ 1.0 ns for 40, residual + LayerNorm ≈ 0.4 ns for 22).
const NS_PER_COST: f64 = 0.025;

#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("row program: {0}")]
    InvalidProgram(String),
    #[error("cranelift: {0}")]
    Cranelift(String),
    #[error("row kernel takes {expected} inputs, got {got}")]
    InputCount { expected: usize, got: usize },
    #[error("row kernel input {input} ({kind:?}) has {got} elements, expected {expected}")]
    InputLen {
        input: usize,
        kind: InputKind,
        expected: usize,
        got: usize,
    },
    #[error("row kernel input {input}: {rows} rows do not split into groups of {rows_per_group}")]
    GroupRows {
        input: usize,
        rows: usize,
        rows_per_group: usize,
    },
    #[error("row kernel input {input} is read in place, but only a Rows input can be")]
    InPlaceNotRows { input: usize },
    #[error("row kernel output has {len} elements, not a multiple of the row length {d}")]
    OutputLen { len: usize, d: usize },
    #[error("row kernel takes {expected} parameters, got {got}")]
    ParamCount { expected: usize, got: usize },
    #[error("row {row}: valid length {valid} exceeds the row length {d}")]
    ValidTooLong { row: usize, valid: usize, d: usize },
    #[error("{got} valid lengths given for {rows} rows")]
    ValidCount { rows: usize, got: usize },
    #[error("causal masking needs at least one query per block")]
    ZeroQueries,
}

fn cranelift_err(e: impl std::fmt::Display) -> JitError {
    JitError::Cranelift(e.to_string())
}

/// How many columns of each row are valid (the rest is written `fill`).
#[derive(Debug, Clone, Copy)]
pub enum Valid<'a> {
    /// Every column: `valid = d`.
    Full,
    /// Causal attention: row `r` is query `q = r mod queries` of its block and sees
    /// `valid = min(d, offset + q + 1)` keys (`offset`: keys before the first query, e.g. a
    /// KV cache). The lowering's `causal: Some(offset)` with `queries` its second-to-last axis.
    Causal { queries: usize, offset: usize },
    /// One length per row.
    PerRow(&'a [usize]),
}

impl Valid<'_> {
    fn at(&self, row: usize, d: usize) -> usize {
        match *self {
            Valid::Full => d,
            Valid::Causal { queries, offset } => d.min(offset.saturating_add(row % queries + 1)),
            Valid::PerRow(v) => v[row],
        }
    }
}

/// One kernel input for [`RowKernel::run_rows_in_place`].
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Data(&'a [f32]),
    /// The output buffer itself, read before it is overwritten (a [`InputKind::Rows`] input:
    /// each output element depends only on the same column of this input and on reductions).
    Out,
}

/// Cranelift code generation options.
#[derive(Debug, Clone, Copy)]
pub struct JitOptions {
    /// Cranelift's `opt_level`: `"speed"` (default), `"speed_and_size"` or `"none"`.
    pub opt_level: &'static str,
    /// The IR verifier (on in debug builds; costs ~30 % of compile time).
    pub verifier: bool,
    /// Copies of the f32x4 loop body per iteration (one accumulator each in reductions);
    /// `None` (default) picks 4, 2 or 1 by the expression's length.
    pub unroll: Option<usize>,
    /// Let kernels call the precompiled AVX-512 row primitives (softmax's exp pass) when the
    /// CPU has `avx512f`; `false` forces the f32x4 code everywhere. Default: on.
    pub row_primitives: bool,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            opt_level: "speed",
            verifier: cfg!(debug_assertions),
            unroll: None,
            row_primitives: true,
        }
    }
}

/// The code memory shared by a module and its kernels; freed when the last one goes.
struct CodeMemory(Mutex<Option<JITModule>>);

impl Drop for CodeMemory {
    fn drop(&mut self) {
        let m = self
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(m) = m {
            // SAFETY: every RowKernel holding a pointer into this memory holds an Arc to
            // `self`, so none is left.
            unsafe { m.free_memory() };
        }
    }
}

/// A Cranelift JIT module that compiles [`RowProgram`]s into [`RowKernel`]s (one per loaded
/// model, compiled on one thread; CPU-NOTES §6).
pub struct JitModule {
    code: Arc<CodeMemory>,
    ctx: Context,
    fctx: FunctionBuilderContext,
    target: codegen::Target,
    /// The row primitives declared as imports (empty when they are off or unsupported).
    imports: Vec<(Primitive, FuncId)>,
    compiled: usize,
    /// Kernels compiled so far, by the program's `Debug` text (which, unlike `==` on `f32`
    /// constants, tells `-0.0` from `0.0`): a program is compiled once per module.
    cache: HashMap<String, RowKernel>,
}

/// A compiled kernel's listings, for reading and for snapshots.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Cranelift IR as built, before optimisation.
    pub clif: String,
    /// The machine instructions (Cranelift's VCode listing).
    pub asm: String,
}

impl JitModule {
    pub fn new() -> Result<Self, JitError> {
        Self::with_options(JitOptions::default())
    }

    pub fn with_options(options: JitOptions) -> Result<Self, JitError> {
        let mut fb = settings::builder();
        fb.set("opt_level", options.opt_level)
            .map_err(cranelift_err)?;
        fb.set(
            "enable_verifier",
            if options.verifier { "true" } else { "false" },
        )
        .map_err(cranelift_err)?;
        fb.set("is_pic", "false").map_err(cranelift_err)?;
        fb.set("use_colocated_libcalls", "false")
            .map_err(cranelift_err)?;
        let isa = cranelift_native::builder()
            .map_err(cranelift_err)?
            .finish(settings::Flags::new(fb))
            .map_err(cranelift_err)?;
        // Runtime detection: the primitives are registered only where the CPU runs them.
        let row_primitives = options.row_primitives
            && primitives::supported()
            && Primitive::ALL.iter().all(|p| p.address().is_some());
        let target = codegen::Target {
            pointer: isa.pointer_type(),
            fma: isa.has_native_fma(),
            x86: cfg!(target_arch = "x86_64"),
            unroll: options.unroll,
            row_primitives,
        };
        let mut jb = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        if row_primitives {
            for p in Primitive::ALL {
                if let Some(address) = p.address() {
                    jb.symbol(p.symbol(), address);
                }
            }
        }
        let mut module = JITModule::new(jb);
        let mut imports = Vec::new();
        if row_primitives {
            for p in Primitive::ALL {
                let mut sig = module.make_signature();
                p.signature(&mut sig, target.pointer);
                let id = module
                    .declare_function(p.symbol(), Linkage::Import, &sig)
                    .map_err(cranelift_err)?;
                imports.push((p, id));
            }
        }
        let ctx = module.make_context();
        Ok(JitModule {
            code: Arc::new(CodeMemory(Mutex::new(Some(module)))),
            ctx,
            fctx: FunctionBuilderContext::new(),
            target,
            imports,
            compiled: 0,
            cache: HashMap::new(),
        })
    }

    /// Whether kernels compiled here call the AVX-512 row primitives (the option is on and
    /// the CPU has `avx512f`).
    pub fn row_primitives(&self) -> bool {
        self.target.row_primitives
    }

    /// Compiles `p` into a callable kernel (≈ 0.2–2 ms), or returns the kernel this module
    /// already compiled for the same program (sharing its code).
    pub fn compile(&mut self, p: &RowProgram) -> Result<RowKernel, JitError> {
        let key = format!("{p:?}");
        if let Some(k) = self.cache.get(&key) {
            return Ok(k.clone());
        }
        let (k, _) = self.compile_inner(p, false)?;
        self.cache.insert(key, k.clone());
        Ok(k)
    }

    /// Compiles `p` and returns its listings too.
    pub fn compile_with_listing(
        &mut self,
        p: &RowProgram,
    ) -> Result<(RowKernel, Listing), JitError> {
        self.compile_inner(p, true)
            .map(|(k, l)| (k, l.expect("listing requested")))
    }

    fn compile_inner(
        &mut self,
        p: &RowProgram,
        listing: bool,
    ) -> Result<(RowKernel, Option<Listing>), JitError> {
        let start = Instant::now();
        validate(p)?;
        let mut guard = self.code.0.lock().unwrap_or_else(PoisonError::into_inner);
        let module = guard.as_mut().expect("a live JitModule owns its JITModule");
        module.clear_context(&mut self.ctx);
        {
            let imports = &self.imports;
            let mut import = |func: &mut Function, prim: Primitive| {
                let (_, id) = imports
                    .iter()
                    .find(|(q, _)| *q == prim)
                    .expect("codegen asks only for primitives the module declared");
                module.declare_func_in_func(*id, func)
            };
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            codegen::build(&mut b, p, self.target, &mut import);
            b.finalize(module.target_config());
        }
        let clif = listing.then(|| self.ctx.func.display().to_string());
        self.ctx.set_disasm(listing);
        let name = format!("row_kernel_{}", self.compiled);
        let id = module
            .declare_function(&name, Linkage::Local, &self.ctx.func.signature)
            .map_err(cranelift_err)?;
        let defined = module.define_function(id, &mut self.ctx);
        let asm = self.ctx.compiled_code().and_then(|c| c.vcode.clone());
        module.clear_context(&mut self.ctx);
        defined.map_err(|e| JitError::Cranelift(format!("{e:?}")))?;
        module.finalize_definitions().map_err(cranelift_err)?;
        let code = module.get_finalized_function(id);
        drop(guard);
        self.compiled += 1;
        // SAFETY: the function was built by `codegen::build` with exactly this signature
        // (five pointer-sized arguments, no result, the platform's C calling convention).
        // A call it makes to a row primitive passes only `out` and `valid ≤ d`, which every
        // entry point of RowKernel checks (safety argument in primitives.rs).
        let f = unsafe { std::mem::transmute::<*const u8, RowFn>(code) };
        let passes = codegen::program_cost(p, self.target);
        let kernel = RowKernel {
            f,
            inputs: p.inputs.clone(),
            params: p.params,
            ns_per_element: passes as f64 * NS_PER_COST,
            compile_time: start.elapsed(),
            _code: Arc::clone(&self.code),
        };
        let listing = clif.map(|clif| Listing {
            clif,
            asm: asm.unwrap_or_default(),
        });
        Ok((kernel, listing))
    }
}

/// A compiled row program. All entry points check every length before running JIT code.
/// Clones share the compiled code.
#[derive(Clone)]
pub struct RowKernel {
    f: RowFn,
    inputs: Vec<InputKind>,
    params: usize,
    ns_per_element: f64,
    compile_time: Duration,
    _code: Arc<CodeMemory>,
}

impl std::fmt::Debug for RowKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowKernel")
            .field("inputs", &self.inputs)
            .field("params", &self.params)
            .field("compile_time", &self.compile_time)
            .finish_non_exhaustive()
    }
}

impl RowKernel {
    /// Time [`JitModule::compile`] took for this kernel (validation, codegen, finalize).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// One row: `inputs[i]` is already this row's slice of input `i` (the row, the shared
    /// vector, or the group's vector), each of length `d = out.len()`.
    pub fn run_row(
        &self,
        inputs: &[&[f32]],
        out: &mut [f32],
        valid: usize,
        params: &[f32],
    ) -> Result<(), JitError> {
        let d = out.len();
        self.check_counts(inputs.len(), params)?;
        for (i, (s, &kind)) in inputs.iter().zip(&self.inputs).enumerate() {
            if s.len() != d {
                return Err(JitError::InputLen {
                    input: i,
                    kind,
                    expected: d,
                    got: s.len(),
                });
            }
        }
        if valid > d {
            return Err(JitError::ValidTooLong { row: 0, valid, d });
        }
        let ptrs: Vec<*const f32> = inputs.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: every input has d readable elements, out has d writable ones, valid ≤ d,
        // params has as many elements as the program reads.
        unsafe { (self.f)(ptrs.as_ptr(), out.as_mut_ptr(), d, valid, params.as_ptr()) };
        Ok(())
    }

    /// One row where inputs given as [`Arg::Out`] are read from `io` itself (an accumulator:
    /// `acc = acc + f(row)`). Each [`Arg::Data`] is already this row's slice of length
    /// `d = io.len()`. Allocates nothing (it runs once per token in the Hydra kernel).
    pub fn run_row_in_place(
        &self,
        inputs: &[Arg],
        io: &mut [f32],
        valid: usize,
        params: &[f32],
    ) -> Result<(), JitError> {
        const MAX: usize = 8;
        let d = io.len();
        self.check_counts(inputs.len(), params)?;
        if inputs.len() > MAX {
            return Err(JitError::InputCount {
                expected: MAX,
                got: inputs.len(),
            });
        }
        if valid > d {
            return Err(JitError::ValidTooLong { row: 0, valid, d });
        }
        let io_ptr = io.as_mut_ptr();
        let mut ptrs = [std::ptr::null::<f32>(); MAX];
        for (i, (arg, &kind)) in inputs.iter().zip(&self.inputs).enumerate() {
            ptrs[i] = match *arg {
                Arg::Out if kind != InputKind::Rows => {
                    return Err(JitError::InPlaceNotRows { input: i })
                }
                Arg::Out => io_ptr as *const f32,
                Arg::Data(s) if s.len() != d => {
                    return Err(JitError::InputLen {
                        input: i,
                        kind,
                        expected: d,
                        got: s.len(),
                    })
                }
                Arg::Data(s) => s.as_ptr(),
            };
        }
        // SAFETY: every input pointer has d readable elements (an `Out` input is `io`, read
        // column by column before that column is stored), io has d writable ones, valid ≤ d,
        // and params has as many elements as the program reads.
        unsafe { (self.f)(ptrs.as_ptr(), io_ptr, d, valid, params.as_ptr()) };
        Ok(())
    }

    /// Every row of `out` (`rows = out.len() / d`), from whole tensors: a `Rows` input has
    /// `rows·d` elements, a `Vector` `d`, a `GroupVector { rows_per_group }`
    /// `rows / rows_per_group · d`. Splits the rows across the current rayon pool when the
    /// estimated work is ≥ 20 µs (call it inside the runtime's `ThreadPool::install`).
    pub fn run_rows(
        &self,
        inputs: &[&[f32]],
        out: &mut [f32],
        d: usize,
        valid: Valid,
        params: &[f32],
    ) -> Result<(), JitError> {
        let args: Vec<Arg> = inputs.iter().map(|&s| Arg::Data(s)).collect();
        self.run(&args, out, d, valid, params, true)
    }

    /// [`Self::run_rows`] on the calling thread only.
    pub fn run_rows_serial(
        &self,
        inputs: &[&[f32]],
        out: &mut [f32],
        d: usize,
        valid: Valid,
        params: &[f32],
    ) -> Result<(), JitError> {
        let args: Vec<Arg> = inputs.iter().map(|&s| Arg::Data(s)).collect();
        self.run(&args, out, d, valid, params, false)
    }

    /// [`Self::run_rows`] where inputs given as [`Arg::Out`] are read from `io` itself (a
    /// matrix product's epilogue transforms the product in place).
    pub fn run_rows_in_place(
        &self,
        inputs: &[Arg],
        io: &mut [f32],
        d: usize,
        valid: Valid,
        params: &[f32],
    ) -> Result<(), JitError> {
        self.run(inputs, io, d, valid, params, true)
    }

    fn check_counts(&self, inputs: usize, params: &[f32]) -> Result<(), JitError> {
        if inputs != self.inputs.len() {
            return Err(JitError::InputCount {
                expected: self.inputs.len(),
                got: inputs,
            });
        }
        if params.len() != self.params {
            return Err(JitError::ParamCount {
                expected: self.params,
                got: params.len(),
            });
        }
        Ok(())
    }

    /// Checks everything `run_chunk` relies on; returns the row count.
    fn check(
        &self,
        inputs: &[Arg],
        out_len: usize,
        d: usize,
        valid: &Valid,
        params: &[f32],
    ) -> Result<usize, JitError> {
        self.check_counts(inputs.len(), params)?;
        let rows = out_len.checked_div(d).unwrap_or(0);
        if rows * d != out_len {
            return Err(JitError::OutputLen { len: out_len, d });
        }
        for (i, (arg, &kind)) in inputs.iter().zip(&self.inputs).enumerate() {
            let expected = match kind {
                InputKind::Rows => rows * d,
                InputKind::Vector => d,
                InputKind::GroupVector { rows_per_group } => {
                    if rows.checked_rem(rows_per_group).is_none_or(|r| r != 0) {
                        return Err(JitError::GroupRows {
                            input: i,
                            rows,
                            rows_per_group,
                        });
                    }
                    rows / rows_per_group * d
                }
                InputKind::Cycle { period } => {
                    if rows.checked_rem(period).is_none_or(|r| r != 0) {
                        return Err(JitError::GroupRows {
                            input: i,
                            rows,
                            rows_per_group: period,
                        });
                    }
                    period * d
                }
            };
            match *arg {
                Arg::Out if kind != InputKind::Rows => {
                    return Err(JitError::InPlaceNotRows { input: i })
                }
                Arg::Out => {}
                Arg::Data(s) if s.len() != expected => {
                    return Err(JitError::InputLen {
                        input: i,
                        kind,
                        expected,
                        got: s.len(),
                    });
                }
                Arg::Data(_) => {}
            }
        }
        match *valid {
            Valid::Full => {}
            Valid::Causal { queries, .. } => {
                if queries == 0 {
                    return Err(JitError::ZeroQueries);
                }
            }
            Valid::PerRow(v) => {
                if v.len() != rows {
                    return Err(JitError::ValidCount { rows, got: v.len() });
                }
                if let Some((row, &valid)) = v.iter().enumerate().find(|(_, &v)| v > d) {
                    return Err(JitError::ValidTooLong { row, valid, d });
                }
            }
        }
        Ok(rows)
    }

    fn run(
        &self,
        inputs: &[Arg],
        out: &mut [f32],
        d: usize,
        valid: Valid,
        params: &[f32],
        parallel: bool,
    ) -> Result<(), JitError> {
        let rows = self.check(inputs, out.len(), d, &valid, params)?;
        if rows == 0 {
            return Ok(());
        }
        let work_ns = (rows * d) as f64 * self.ns_per_element;
        let threads = rayon::current_num_threads();
        if parallel && threads > 1 && rows > 1 && work_ns >= PARALLEL_MIN_NS {
            // A few chunks per thread, so causal rows of unequal length balance out, but none
            // much under the threshold.
            let chunks = (threads * 4)
                .min((work_ns / (PARALLEL_MIN_NS / 4.0)) as usize)
                .clamp(2, rows);
            let chunk_rows = rows.div_ceil(chunks);
            out.par_chunks_mut(chunk_rows * d)
                .enumerate()
                .for_each(|(c, o)| {
                    self.run_chunk(inputs, o, c * chunk_rows, d, &valid, params);
                });
        } else {
            self.run_chunk(inputs, out, 0, d, &valid, params);
        }
        Ok(())
    }

    /// Rows `first..first + out.len() / d`, after [`Self::check`].
    fn run_chunk(
        &self,
        inputs: &[Arg],
        out: &mut [f32],
        first: usize,
        d: usize,
        valid: &Valid,
        params: &[f32],
    ) {
        let mut ptrs: Vec<*const f32> = vec![std::ptr::null(); inputs.len()];
        for (j, row) in out.chunks_exact_mut(d).enumerate() {
            let r = first + j;
            let out_ptr = row.as_mut_ptr();
            for (p, (arg, kind)) in ptrs.iter_mut().zip(inputs.iter().zip(&self.inputs)) {
                *p = match (*arg, *kind) {
                    (Arg::Out, _) => out_ptr as *const f32,
                    (Arg::Data(s), InputKind::Rows) => s[r * d..(r + 1) * d].as_ptr(),
                    (Arg::Data(s), InputKind::Vector) => s.as_ptr(),
                    (Arg::Data(s), InputKind::GroupVector { rows_per_group }) => {
                        let g = r / rows_per_group;
                        s[g * d..(g + 1) * d].as_ptr()
                    }
                    (Arg::Data(s), InputKind::Cycle { period }) => {
                        let c = r % period;
                        s[c * d..(c + 1) * d].as_ptr()
                    }
                };
            }
            let v = valid.at(r, d);
            // SAFETY: `check` established that every pointer has d readable elements (an
            // `Out` input reads the row it writes, column by column before the store), the
            // row has d writable ones, v ≤ d, and params matches the program.
            unsafe { (self.f)(ptrs.as_ptr(), out_ptr, d, v, params.as_ptr()) };
        }
    }
}

/// Index and structure checks the code generator relies on.
fn validate(p: &RowProgram) -> Result<(), JitError> {
    fn expr(
        e: &Expr,
        p: &RowProgram,
        reduced: usize,
        depth: usize,
        place: &str,
    ) -> Result<(), JitError> {
        let bad = |what: String| Err(JitError::InvalidProgram(format!("{place}: {what}")));
        if depth > 200 {
            return bad("expression nested deeper than 200".into());
        }
        match e {
            Expr::Input(i) if *i >= p.inputs.len() => {
                bad(format!("Input({i}) of {} inputs", p.inputs.len()))
            }
            Expr::Param(i) if *i >= p.params => {
                bad(format!("Param({i}) of {} parameters", p.params))
            }
            Expr::Reduced(k) if *k >= reduced => bad(format!("Reduced({k}) before it is computed")),
            Expr::Unary(_, a) => expr(a, p, reduced, depth + 1, place),
            Expr::Binary(_, a, b) => {
                expr(a, p, reduced, depth + 1, place)?;
                expr(b, p, reduced, depth + 1, place)
            }
            _ => Ok(()),
        }
    }
    for (k, r) in p.reductions.iter().enumerate() {
        expr(&r.expr, p, k, 0, &format!("reduction {k}"))?;
    }
    expr(&p.output, p, p.reductions.len(), 0, "output")?;
    if p.zero_if_all_masked && p.reductions.first().map(|r| r.kind) != Some(ReduceKind::Max) {
        return Err(JitError::InvalidProgram(
            "zero_if_all_masked needs reduction 0 to be a Max".into(),
        ));
    }
    for (i, k) in p.inputs.iter().enumerate() {
        if *k == (InputKind::GroupVector { rows_per_group: 0 }) {
            return Err(JitError::InvalidProgram(format!(
                "input {i}: a GroupVector of 0 rows per group"
            )));
        }
    }
    Ok(())
}
