//! [`OneDnnMatMul`]: matrix products through oneDNN's matmul primitive, loaded at run time.
//!
//! * The library is `libdnnl.so.2` (the 2.x C API; Debian's `libdnnl-dev` 2.6.3), opened with
//!   `libloading`; nothing links against it, so builds and tests work without it.
//! * Primitives are created once per (batch, m, k, n, strides of a/b/c, weight layout,
//!   accumulate) and cached; each call only points the cached memory objects at the caller's
//!   slices (`dnnl_memory_set_data_handle`) and executes.
//! * [`MatMul::prepare`] asks a probe primitive (weights `format_tag_any`) for the weight layout
//!   oneDNN prefers (blocked, e.g. `BA16a64b` for `brg:avx512_core`) and reorders the weight
//!   into it once. That layout does not depend on m (checked for m = 1…1024), so one prepared
//!   weight serves every m.
//! * oneDNN only runs its fast kernels on dense operands: a row-strided `a` (one head of a fused
//!   QKV buffer) or a padded `c` with a blocked weight falls to `ref:any`, which is orders of
//!   magnitude slower. When a primitive comes back as a `ref:` implementation, it is rebuilt
//!   with dense staging copies of the operands that are not dense (copying m×k floats is cheap
//!   next to m×k×n multiply-adds).
//! * `accumulate` is oneDNN's `sum` post-op (scale 1).
//! * Epilogues ([`MatMul::matmul_prepared_epilogue`]): the bias is the matmul's own bias
//!   argument (`DNNL_ARG_BIAS`, a `1 × n` tensor broadcast over rows), the activation an
//!   eltwise post-op (`gelu_erf`, `gelu_tanh`, `relu`, `swish` with α = 1, `logistic`, `tanh`),
//!   the residual a binary `add` post-op reading the full `m × n` residual (so the output is
//!   written once and the residual never copied).
//! * Threads: Debian's build uses OpenMP. Before each execution the calling thread's OpenMP
//!   thread count is set to `threads` (`omp_set_num_threads`, a per-thread setting). Calls are
//!   serialised by a mutex. Do not call from inside a rayon parallel region (module docs).
//!   libgomp's default makes idle OpenMP threads spin after each product, which starved the
//!   rayon threads (and oneDNN itself) 10–60× on a 2-vCPU VM; so [`OneDnnMatMul::load`] sets
//!   `OMP_WAIT_POLICY=PASSIVE` before opening oneDNN unless the variable is already set or
//!   libgomp is already loaded (see [`OneDnnMatMul::wait_policy`]).
//!
//! The pieces: `desc.rs` (operands and memory descriptors), `cache.rs` (the primitive cache's
//! keys and entries), `staging.rs` (dense copies of non-dense operands), `weight.rs` (weights
//! reordered once, f32 or bf16); this file loads the library, builds and runs primitives.

mod cache;
mod desc;
mod staging;
mod threads;
mod weight;

use self::cache::{key2, key_with, BKey, Convert, Entry, Extras, Key, MAX_CACHED};
use self::desc::{eltwise, op2, ops2, same_addressing, Operand};
use self::staging::{stage_in, stage_out};
use self::weight::OneDnnWeight;
use super::epilogue::check_epilogue;
use super::ffi::{self, check, dnnl_memory_desc_t, Api};
use super::{
    check_batched, check_bounds, check_prepared, check_product, trivial_product, Batch, Epilogue,
    EpilogueKind, Layout, MatMul, MatMulError, MatMut, MatRef, Precision, PreparedWeight,
};
use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// m of the probe primitive that decides a prepared weight's layout.
const PROBE_M: i64 = 128;

/// Matrix products through oneDNN. See the module docs.
pub struct OneDnnMatMul {
    shared: Arc<Shared>,
    threads: usize,
    precision: Precision,
    name: String,
    version: String,
}

/// What every handle of one instance shares. Field order is drop order: the cached objects,
/// stream and engine go before the library is unloaded.
struct Shared {
    state: Mutex<State>,
    api: Api,
}

struct State {
    cache: HashMap<Key, Entry>,
    /// Small products' thread counts, measured (`threads.rs`).
    threads: threads::Threads,
    stream: Handle,
    engine: Handle,
}

/// An owned oneDNN object with its destroy function (valid while the library is loaded, which
/// the owner guarantees).
struct Handle {
    ptr: *mut c_void,
    destroy: unsafe extern "C" fn(*mut c_void) -> ffi::dnnl_status_t,
}

// SAFETY: oneDNN objects are not tied to the creating thread; every use of a `Handle` happens
// under the instance's mutex (or in Drop, when no one else can hold it).
unsafe impl Send for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: created by the matching create function, destroyed exactly once.
            unsafe { (self.destroy)(self.ptr) };
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave oneDNN objects half-built (each is owned by a
    // Handle), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A matmul primitive descriptor with the bias and post-ops `x` asks for.
    fn matmul_pd(
        &self,
        engine: &Handle,
        a: &dnnl_memory_desc_t,
        b: &dnnl_memory_desc_t,
        c: &dnnl_memory_desc_t,
        x: &Extras,
    ) -> Result<Handle, MatMulError> {
        let api = &self.api;
        let mut desc: ffi::dnnl_matmul_desc_t = unsafe { std::mem::zeroed() };
        let bias_md = if x.bias { Some(self.bias_md(c)?) } else { None };
        // SAFETY: all descriptors are initialised; bias NULL disables the bias term.
        check("dnnl_matmul_desc_init", unsafe {
            (api.matmul_desc_init)(
                &mut desc,
                a,
                b,
                bias_md.as_ref().map_or(std::ptr::null(), |m| m as *const _),
                c,
            )
        })?;
        let residual_md = match &x.residual {
            Some(r) => Some(self.md_strided(r)?),
            None => None,
        };
        let attr = if x.accumulate || x.activation.is_some() || residual_md.is_some() {
            let mut po = std::ptr::null_mut();
            // SAFETY: out-pointers; each created object is owned by a Handle at once.
            check("dnnl_post_ops_create", unsafe {
                (api.post_ops_create)(&mut po)
            })?;
            let po = Handle {
                ptr: po,
                destroy: api.post_ops_destroy,
            };
            if x.accumulate {
                check("dnnl_post_ops_append_sum", unsafe {
                    (api.post_ops_append_sum)(po.ptr, 1.0)
                })?;
            }
            if let Some(act) = x.activation {
                let (alg, alpha) = eltwise(act);
                // SAFETY: live post-ops object; scale 1 leaves the result unscaled.
                check("dnnl_post_ops_append_eltwise", unsafe {
                    (api.post_ops_append_eltwise)(po.ptr, 1.0, alg, alpha, 0.0)
                })?;
            }
            if let Some(md) = &residual_md {
                // SAFETY: live post-ops object; the descriptor is copied.
                check("dnnl_post_ops_append_binary", unsafe {
                    (api.post_ops_append_binary)(po.ptr, ffi::DNNL_BINARY_ADD, md)
                })?;
            }
            let mut attr = std::ptr::null_mut();
            check("dnnl_primitive_attr_create", unsafe {
                (api.primitive_attr_create)(&mut attr)
            })?;
            let attr = Handle {
                ptr: attr,
                destroy: api.primitive_attr_destroy,
            };
            check("dnnl_primitive_attr_set_post_ops", unsafe {
                (api.primitive_attr_set_post_ops)(attr.ptr, po.ptr)
            })?;
            Some(attr)
        } else {
            None
        };
        let mut pd = std::ptr::null_mut();
        // SAFETY: `desc` is an initialised matmul descriptor; attr may be NULL; the pd copies
        // the attributes, so they can go afterwards.
        let s = unsafe {
            (api.primitive_desc_create)(
                &mut pd,
                (&desc as *const ffi::dnnl_matmul_desc_t).cast(),
                attr.as_ref().map_or(std::ptr::null_mut(), |a| a.ptr),
                engine.ptr,
                std::ptr::null_mut(),
            )
        };
        check("dnnl_primitive_desc_create(matmul)", s)?;
        Ok(Handle {
            ptr: pd,
            destroy: api.primitive_desc_destroy,
        })
    }

    fn impl_name(&self, pd: &Handle) -> String {
        let mut p: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: impl_info_str answers a `const char *` owned by the pd.
        let s = unsafe {
            (self.api.primitive_desc_query)(
                pd.ptr,
                ffi::DNNL_QUERY_IMPL_INFO_STR,
                0,
                (&mut p as *mut *const std::ffi::c_char).cast(),
            )
        };
        if s != ffi::DNNL_SUCCESS || p.is_null() {
            return "unknown".into();
        }
        // SAFETY: NUL-terminated string valid while the pd lives (copied here).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// A copy of one of the pd's memory descriptors.
    fn query_md(
        &self,
        pd: &Handle,
        what: c_int,
        name: &'static str,
    ) -> Result<dnnl_memory_desc_t, MatMulError> {
        // SAFETY: valid pd; the answer points into it and is copied at once.
        let p = unsafe { (self.api.primitive_desc_query_md)(pd.ptr, what, 0) };
        if p.is_null() {
            return Err(MatMulError::Internal(format!(
                "dnnl_primitive_desc_query_md({name}) returned NULL"
            )));
        }
        // SAFETY: non-null pointer to a descriptor owned by the live pd.
        Ok(unsafe { *p })
    }

    fn memory(
        &self,
        engine: &Handle,
        md: &dnnl_memory_desc_t,
        handle: *mut c_void,
    ) -> Result<Handle, MatMulError> {
        let mut mem = std::ptr::null_mut();
        // SAFETY: valid descriptor and engine; handle is NULL (set later), the library's
        // ALLOCATE marker, or a buffer of at least the descriptor's size.
        check("dnnl_memory_create", unsafe {
            (self.api.memory_create)(&mut mem, md, engine.ptr, handle)
        })?;
        Ok(Handle {
            ptr: mem,
            destroy: self.api.memory_destroy,
        })
    }

    fn primitive(&self, pd: &Handle) -> Result<Handle, MatMulError> {
        let mut p = std::ptr::null_mut();
        // SAFETY: valid pd; the primitive keeps its own copy of it.
        check("dnnl_primitive_create", unsafe {
            (self.api.primitive_create)(&mut p, pd.ptr)
        })?;
        Ok(Handle {
            ptr: p,
            destroy: self.api.primitive_destroy,
        })
    }

    /// Sets the calling thread's OpenMP thread count (a per-thread setting) when it differs.
    fn set_threads(&self, threads: usize) {
        if let Some((set, get)) = self.api.omp {
            let t = threads.min(c_int::MAX as usize) as c_int;
            // SAFETY: plain OpenMP runtime calls.
            unsafe {
                if get() != t {
                    set(t);
                }
            }
        }
    }

    fn execute(
        &self,
        stream: &Handle,
        prim: &Handle,
        args: &[ffi::dnnl_exec_arg_t],
    ) -> Result<(), MatMulError> {
        // SAFETY: the caller set every memory object's handle to a buffer that holds every
        // element its descriptor names (checked views or staging buffers of the dense size).
        check("dnnl_primitive_execute", unsafe {
            (self.api.primitive_execute)(prim.ptr, stream.ptr, args.len() as c_int, args.as_ptr())
        })?;
        check("dnnl_stream_wait", unsafe {
            (self.api.stream_wait)(stream.ptr)
        })
    }

    /// Builds the cached primitive for `a · b = c`; `b` is strided (`Err` side) or a prepared
    /// descriptor.
    fn build(
        &self,
        engine: &Handle,
        a: &Operand,
        b: Result<&dnnl_memory_desc_t, &Operand>,
        c: &Operand,
        x: &Extras,
        force_staging: bool,
    ) -> Result<Entry, MatMulError> {
        let b_op = b.err();
        // bf16 weights take bf16 activations: `a` is converted into a dense bf16 buffer.
        let bf16 = matches!(b, Ok(md) if md.data_type == ffi::DNNL_BF16);
        let mds = |sa: bool, sb: bool, sc: bool| -> Result<_, MatMulError> {
            let pick = |o: &Operand, stage: bool| if stage { o.dense() } else { *o };
            let a_md = if bf16 {
                let dims = [a.l.rows as i64, a.l.cols as i64];
                self.md_tag(&dims, ffi::DNNL_BF16, ffi::DNNL_AB)?
            } else {
                self.md_strided(&pick(a, sa))?
            };
            let b_md = match b {
                Ok(md) => *md,
                Err(o) => self.md_strided(&pick(o, sb))?,
            };
            let c_md = self.md_strided(&pick(c, sc))?;
            Ok((a_md, b_md, c_md))
        };
        let attempt = |sa: bool, sb: bool, sc: bool| -> Result<_, MatMulError> {
            let (a_md, b_md, c_md) = mds(sa, sb, sc)?;
            let pd = self.matmul_pd(engine, &a_md, &b_md, &c_md, x)?;
            Ok((pd, [a_md, b_md, c_md], (sa, sb, sc)))
        };
        let want = (
            !a.is_dense(),
            b_op.is_some_and(|o| !o.is_dense()),
            !c.is_dense(),
        );
        // Inputs that read one element twice (zero or overlapping strides) are always copied:
        // oneDNN's fast kernels do not take them and its gemm-based one may fail on them.
        let initial = if force_staging {
            want
        } else {
            (a.overlaps(), b_op.is_some_and(|o| o.overlaps()), false)
        };
        let first = attempt(initial.0, initial.1, initial.2);
        // Rejected layouts and reference kernels: try dense copies of every operand that is
        // not dense.
        let slow = match &first {
            Ok((pd, ..)) => self.impl_name(pd).starts_with("ref"),
            Err(_) => true,
        };
        let (pd, [a_md, b_md, c_md], (mut sa, sb, sc)) = if slow && want != initial {
            match attempt(want.0, want.1, want.2) {
                Ok(staged) => staged,
                // Staging did not help: keep the first (slow but working) choice.
                Err(e) => first.map_err(|_| e)?,
            }
        } else {
            first?
        };
        let impl_name = self.impl_name(&pd);
        // Memory objects must carry the descriptors the pd settled on (it may canonicalise
        // strides of size-1 dimensions, e.g. a 1×n column-major `c`), and those must address
        // exactly the elements our views name.
        let pick = |o: &Operand, stage: bool| if stage { o.dense() } else { *o };
        let src_md = self.query_md(&pd, ffi::DNNL_QUERY_SRC_MD, "src")?;
        let (mut convert, mut buf_a16) = (None, Vec::new());
        if bf16 {
            // SAFETY: initialised descriptor.
            let bytes = unsafe { (self.api.memory_desc_get_size)(&src_md) };
            buf_a16 = vec![0u16; bytes.div_ceil(2)];
            let reorder = |stage: bool| -> Result<_, MatMulError> {
                let from_md = self.md_strided(&pick(a, stage))?;
                let mut rpd = std::ptr::null_mut();
                // SAFETY: initialised descriptors, one engine, no attributes.
                check("dnnl_reorder_primitive_desc_create", unsafe {
                    (self.api.reorder_primitive_desc_create)(
                        &mut rpd,
                        &from_md,
                        engine.ptr,
                        &src_md,
                        engine.ptr,
                        std::ptr::null_mut(),
                    )
                })?;
                let rpd = Handle {
                    ptr: rpd,
                    destroy: self.api.primitive_desc_destroy,
                };
                Ok(Convert {
                    reorder: self.primitive(&rpd)?,
                    from: self.memory(engine, &from_md, std::ptr::null_mut())?,
                })
            };
            convert = Some(match reorder(sa) {
                Ok(cv) => cv,
                Err(_) if !sa => {
                    sa = true;
                    reorder(true)?
                }
                Err(e) => return Err(e),
            });
        } else {
            same_addressing(&src_md, &pick(a, sa), "src")?;
        }
        let dst_md = self.query_md(&pd, ffi::DNNL_QUERY_DST_MD, "dst")?;
        same_addressing(&dst_md, &pick(c, sc), "dst")?;
        let wei = match b_op {
            None => None,
            Some(o) => {
                let md = self.query_md(&pd, ffi::DNNL_QUERY_WEIGHTS_MD, "weights")?;
                same_addressing(&md, &pick(o, sb), "weights")?;
                Some(self.memory(engine, &md, std::ptr::null_mut())?)
            }
        };
        let bias = if x.bias {
            // The fully specified descriptor the pd was created with.
            let md = self.bias_md(&dst_md)?;
            Some(self.memory(engine, &md, std::ptr::null_mut())?)
        } else {
            None
        };
        let residual = match &x.residual {
            Some(r) => {
                let md = self.md_strided(r)?;
                Some(self.memory(engine, &md, std::ptr::null_mut())?)
            }
            None => None,
        };
        let _ = (a_md, b_md, c_md);
        let prim = self.primitive(&pd)?;
        Ok(Entry {
            prim,
            src: self.memory(engine, &src_md, std::ptr::null_mut())?,
            wei,
            dst: self.memory(engine, &dst_md, std::ptr::null_mut())?,
            bias,
            residual,
            stage_a: sa,
            stage_b: sb,
            stage_c: sc,
            forced: force_staging,
            buf_a: Vec::new(),
            buf_b: Vec::new(),
            buf_c: Vec::new(),
            convert,
            buf_a16,
            impl_name,
        })
    }
}

fn set_handle(api: &Api, mem: &Handle, ptr: *const c_void) -> Result<(), MatMulError> {
    // SAFETY: `mem` is a live memory object; oneDNN only reads source buffers, so casting away
    // const for a/b is sound; the buffer covers the descriptor (checked by the caller).
    check("dnnl_memory_set_data_handle", unsafe {
        (api.memory_set_data_handle)(mem.ptr, ptr.cast_mut())
    })
}

impl OneDnnMatMul {
    /// Loads `libdnnl.so.2`, creates a CPU engine and stream, and runs a small self-test
    /// product. `threads` is the OpenMP thread count used for every product.
    pub fn load(threads: usize) -> Result<Self, MatMulError> {
        Self::load_with(threads, Precision::F32)
    }

    /// Like [`OneDnnMatMul::load`] for a precision. With [`Precision::Bf16`], *prepared* weights
    /// are stored in bf16 and each product converts its activations to bf16 (round to
    /// nearest even; oneDNN reorder), accumulating and writing f32: the weight projections run
    /// in bf16. Products of two activations ([`MatMul::matmul`], [`MatMul::batched`], e.g.
    /// attention) stay f32. Fails with [`MatMulError::NotSupported`] where oneDNN has no native
    /// bf16 kernel (needs AVX512-BF16 or AMX; emulated bf16 would be slower than f32).
    pub fn load_with(threads: usize, precision: Precision) -> Result<Self, MatMulError> {
        Self::load_from(None, threads, precision)
    }

    /// Like [`OneDnnMatMul::load_with`], from the file (or soname) `library` instead of
    /// `libdnnl.so.2` when given.
    pub fn load_from(
        library: Option<&Path>,
        threads: usize,
        precision: Precision,
    ) -> Result<Self, MatMulError> {
        let threads = threads.max(1);
        let api = Api::load(library)?;
        let (major, minor, patch, runtime) = api.version_info();
        let mut engine = std::ptr::null_mut();
        // SAFETY: out-pointer; CPU engine 0 always exists in a CPU-enabled build.
        check("dnnl_engine_create", unsafe {
            (api.engine_create)(&mut engine, ffi::DNNL_CPU, 0)
        })?;
        let engine = Handle {
            ptr: engine,
            destroy: api.engine_destroy,
        };
        let mut stream = std::ptr::null_mut();
        check("dnnl_stream_create", unsafe {
            (api.stream_create)(&mut stream, engine.ptr, ffi::DNNL_STREAM_DEFAULT_FLAGS)
        })?;
        let stream = Handle {
            ptr: stream,
            destroy: api.stream_destroy,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                cache: HashMap::new(),
                threads: threads::Threads::default(),
                stream,
                engine,
            }),
            api,
        });
        let version = format!("oneDNN {major}.{minor}.{patch}");
        let dt = match precision {
            Precision::F32 => ffi::DNNL_F32,
            Precision::Bf16 => ffi::DNNL_BF16,
        };
        // The kernel a BERT-sized projection with prepared weights gets names the
        // implementation.
        let kernel = {
            let st = lock(&shared.state);
            shared.set_threads(threads);
            let a = shared.md_tag(&[PROBE_M, 768], dt, ffi::DNNL_AB)?;
            let b = shared.md_tag(&[768, 768], dt, ffi::DNNL_FORMAT_TAG_ANY)?;
            let c = shared.md_tag(&[PROBE_M, 768], ffi::DNNL_F32, ffi::DNNL_AB)?;
            let pd = shared.matmul_pd(&st.engine, &a, &b, &c, &Extras::default());
            pd.map(|pd| shared.impl_name(&pd))
        };
        let kernel = match (precision, kernel) {
            (Precision::F32, k) => k?,
            (Precision::Bf16, Ok(k)) if k.contains("bf16") || k.contains("amx") => k,
            (Precision::Bf16, k) => {
                return Err(MatMulError::NotSupported(format!(
                    "bf16: oneDNN has no native bf16 kernel on this CPU (it picked {})",
                    k.unwrap_or_else(|e| e.to_string())
                )))
            }
        };
        let bf16_note = if precision == Precision::Bf16 {
            ", bf16 weights"
        } else {
            ""
        };
        let omp_note = match (runtime, shared.api.omp.is_some()) {
            (ffi::DNNL_RUNTIME_OMP, false) => ", OpenMP thread control not found",
            _ => "",
        };
        let m = OneDnnMatMul {
            name: format!("{version} ({kernel}{bf16_note}{omp_note})"),
            shared,
            threads,
            version,
            precision,
        };
        m.self_test()?;
        Ok(m)
    }

    /// The precision of products with prepared weights.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn weight_type(&self) -> c_int {
        match self.precision {
            Precision::F32 => ffi::DNNL_F32,
            Precision::Bf16 => ffi::DNNL_BF16,
        }
    }

    /// "oneDNN 2.6.3".
    pub fn version_string(&self) -> &str {
        &self.version
    }

    /// The file the library was loaded from.
    pub fn library_path(&self) -> &str {
        &self.shared.api.path
    }

    /// How OpenMP's idle threads wait, e.g. `"OMP_WAIT_POLICY=PASSIVE (set by attnopt)"`.
    pub fn wait_policy(&self) -> &str {
        &self.shared.api.wait_policy
    }

    /// The implementation oneDNN picked for products of this shape and layout (e.g.
    /// `brg:avx512_core`, `gemm:jit`), creating and caching the primitive if needed.
    pub fn implementation_for(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: MatMut<'_>,
    ) -> Result<String, MatMulError> {
        check_product(&a, &b, &c)?;
        let (ao, bo, co) = ops2(&a, &b, &c);
        let key = key2(&ao, BKey::Strides(bo.key()), &co, false);
        let mut st = lock(&self.shared.state);
        let st = &mut *st;
        if !st.cache.contains_key(&key) {
            let e = self
                .shared
                .build(&st.engine, &ao, Err(&bo), &co, &Extras::default(), false)?;
            st.cache.insert(key.clone(), e);
        }
        let e = &st.cache[&key];
        let staged = [(e.stage_a, "a"), (e.stage_b, "b"), (e.stage_c, "c")]
            .iter()
            .filter(|s| s.0)
            .map(|s| s.1)
            .collect::<Vec<_>>();
        Ok(if staged.is_empty() {
            e.impl_name.clone()
        } else {
            format!("{} (dense copies of {})", e.impl_name, staged.join(", "))
        })
    }

    /// A prepared weight of this instance, or [`MatMulError::ForeignWeight`].
    fn own_weight<'w>(&self, b: &'w dyn PreparedWeight) -> Result<&'w OneDnnWeight, MatMulError> {
        let w = b.as_any().downcast_ref::<OneDnnWeight>().ok_or_else(|| {
            MatMulError::ForeignWeight(format!(
                "{} was given a weight prepared by another implementation",
                self.name
            ))
        })?;
        if !Arc::ptr_eq(&w.shared, &self.shared) {
            return Err(MatMulError::ForeignWeight(
                "the weight was prepared by another oneDNN instance (engine)".into(),
            ));
        }
        Ok(w)
    }

    /// Number of cached primitives.
    pub fn cached_primitives(&self) -> usize {
        lock(&self.shared.state).cache.len()
    }

    /// Checks a 3×5 · 5×4 product against plain Rust, to catch ABI mismatches at load.
    fn self_test(&self) -> Result<(), MatMulError> {
        let a: Vec<f32> = (0..15).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..20).map(|i| (i % 7) as f32 - 2.0).collect();
        // The values are exact in bf16 too, so both paths must match to f32 rounding.
        let mut c = vec![f32::NAN; 12];
        self.matmul(
            MatRef::row_major(&a, 3, 5),
            MatRef::row_major(&b, 5, 4),
            MatMut::row_major(&mut c, 3, 4),
            false,
        )?;
        self.check_self_test(&a, &b, &c)?;
        let w = self.prepare(MatRef::row_major(&b, 5, 4))?;
        let mut c = vec![f32::NAN; 12];
        self.matmul_prepared(
            MatRef::row_major(&a, 3, 5),
            &*w,
            MatMut::row_major(&mut c, 3, 4),
            false,
        )?;
        self.check_self_test(&a, &b, &c)?;
        drop(w);
        // The cached self-test primitives are of no further use.
        lock(&self.shared.state).cache.clear();
        Ok(())
    }

    fn check_self_test(&self, a: &[f32], b: &[f32], c: &[f32]) -> Result<(), MatMulError> {
        for r in 0..3 {
            for j in 0..4 {
                let want: f32 = (0..5).map(|t| a[r * 5 + t] * b[t * 4 + j]).sum();
                if (c[r * 4 + j] - want).abs() > 1e-4 {
                    return Err(MatMulError::Load(format!(
                        "{} self-test gave {} for {want} at ({r},{j}): ABI mismatch?",
                        self.version,
                        c[r * 4 + j]
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs the cached primitive for `key` (building it first if needed) on the given buffers.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        key: Key,
        a: (&[f32], Operand),
        b: Result<(&OneDnnWeight, &dnnl_memory_desc_t), (&[f32], Operand)>,
        c: (&mut [f32], Operand),
        accumulate: bool,
        epilogue: &Epilogue,
    ) -> Result<(), MatMulError> {
        let sh = &*self.shared;
        let mut guard = lock(&sh.state);
        let State {
            cache,
            stream,
            engine,
            threads: tuner,
        } = &mut *guard;
        // Small products may run on one thread (measured per shape, `threads.rs`); the key
        // names the count, since oneDNN sizes its work partition by the thread count it sees
        // at creation (so it is set before building too).
        let shape = key;
        let (threads, timed) = tuner.next(&shape, self.threads);
        let key = Key {
            threads,
            ..shape.clone()
        };
        sh.set_threads(threads);
        let (c_data, c_op) = c;
        for forced in [false, true] {
            if forced {
                cache.remove(&key);
            }
            if !cache.contains_key(&key) {
                if cache.len() >= MAX_CACHED {
                    // Models use a handful of shapes; an ever-growing key set means a caller
                    // iterating over shapes, where starting afresh is fine.
                    cache.clear();
                }
                let b_arg = match &b {
                    Ok((_, md)) => Ok(*md),
                    Err((_, o)) => Err(o),
                };
                let x = Extras::of(accumulate, epilogue);
                let e = sh.build(engine, &a.1, b_arg, &c_op, &x, forced)?;
                cache.insert(key.clone(), e);
            }
            let e = cache.get_mut(&key).expect("just inserted");
            let c = (&mut *c_data, c_op);
            let t0 = std::time::Instant::now();
            match self.execute_entry(e, stream, a, &b, c, accumulate, epilogue) {
                Ok(()) => {
                    if timed {
                        tuner.record(&shape, threads, self.threads, t0.elapsed().as_secs_f64());
                    }
                    return Ok(());
                }
                // oneDNN 2.6 accepts some layouts at creation that its gemm-based kernel then
                // rejects at execution: rebuild once with dense copies, unless the failed run
                // may have already added into the caller's `c`.
                Err(err) if !e.forced && (!accumulate || e.stage_c) => {
                    let _ = err;
                }
                Err(err) => return Err(err),
            }
        }
        unreachable!("the forced build returns")
    }

    /// Points the entry's memory objects at the operands (or staging copies) and executes.
    fn execute_entry(
        &self,
        e: &mut Entry,
        stream: &Handle,
        a: (&[f32], Operand),
        b: &Result<(&OneDnnWeight, &dnnl_memory_desc_t), (&[f32], Operand)>,
        c: (&mut [f32], Operand),
        accumulate: bool,
        epilogue: &Epilogue,
    ) -> Result<(), MatMulError> {
        let sh = &*self.shared;
        let a_ptr = if e.stage_a {
            stage_in(a.0, &a.1, &mut e.buf_a);
            e.buf_a.as_ptr()
        } else {
            a.0.as_ptr()
        };
        if let Some(cv) = &e.convert {
            // f32 activations → the bf16 buffer the matmul reads (sized by its descriptor).
            set_handle(&sh.api, &cv.from, a_ptr.cast())?;
            set_handle(&sh.api, &e.src, e.buf_a16.as_ptr().cast())?;
            let args = [
                ffi::dnnl_exec_arg_t {
                    arg: ffi::DNNL_ARG_FROM,
                    memory: cv.from.ptr,
                },
                ffi::dnnl_exec_arg_t {
                    arg: ffi::DNNL_ARG_TO,
                    memory: e.src.ptr,
                },
            ];
            sh.execute(stream, &cv.reorder, &args)?;
        } else {
            set_handle(&sh.api, &e.src, a_ptr.cast())?;
        }
        let wei_ptr = match b {
            Ok((w, _)) => w.mem.as_ref().expect("non-empty weight").ptr,
            Err((data, op)) => {
                let p = if e.stage_b {
                    stage_in(data, op, &mut e.buf_b);
                    e.buf_b.as_ptr()
                } else {
                    data.as_ptr()
                };
                let wei = e
                    .wei
                    .as_ref()
                    .expect("strided weights have a memory object");
                set_handle(&sh.api, wei, p.cast())?;
                wei.ptr
            }
        };
        let (c_data, c_op) = c;
        let c_ptr = if e.stage_c {
            if accumulate {
                stage_in(c_data, &c_op, &mut e.buf_c);
            } else {
                e.buf_c.clear();
                e.buf_c
                    .resize(c_op.batch.max(1) * c_op.l.rows * c_op.l.cols, 0.0);
            }
            e.buf_c.as_mut_ptr()
        } else {
            c_data.as_mut_ptr()
        };
        set_handle(&sh.api, &e.dst, c_ptr.cast_const().cast())?;
        let mut args = vec![
            ffi::dnnl_exec_arg_t {
                arg: ffi::DNNL_ARG_SRC,
                memory: e.src.ptr,
            },
            ffi::dnnl_exec_arg_t {
                arg: ffi::DNNL_ARG_WEIGHTS,
                memory: wei_ptr,
            },
            ffi::dnnl_exec_arg_t {
                arg: ffi::DNNL_ARG_DST,
                memory: e.dst.ptr,
            },
        ];
        // The entry was built for this epilogue's kind (it is part of the cache key), so the
        // memory objects and the data agree; check_epilogue sized the data.
        match (&e.bias, epilogue.bias) {
            (Some(mem), Some(bias)) => {
                set_handle(&sh.api, mem, bias.as_ptr().cast())?;
                args.push(ffi::dnnl_exec_arg_t {
                    arg: ffi::DNNL_ARG_BIAS,
                    memory: mem.ptr,
                });
            }
            (None, None) => {}
            _ => {
                return Err(MatMulError::Internal(
                    "bias without its memory object".into(),
                ))
            }
        }
        match (&e.residual, &epilogue.residual) {
            (Some(mem), Some(r)) => {
                set_handle(&sh.api, mem, r.data.as_ptr().cast())?;
                let idx = c_int::from(epilogue.activation.is_some());
                args.push(ffi::dnnl_exec_arg_t {
                    arg: ffi::arg_post_op(idx) | ffi::DNNL_ARG_SRC_1,
                    memory: mem.ptr,
                });
            }
            (None, None) => {}
            _ => {
                return Err(MatMulError::Internal(
                    "residual without its memory object".into(),
                ))
            }
        }
        sh.execute(stream, &e.prim, &args)?;
        if e.stage_c {
            stage_out(&e.buf_c, &c_op, c_data);
        }
        Ok(())
    }
}

impl MatMul for OneDnnMatMul {
    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn matmul(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        mut c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<(), MatMulError> {
        check_product(&a, &b, &c)?;
        if trivial_product(a.cols, &mut c, accumulate) {
            return Ok(());
        }
        let (ao, bo, co) = ops2(&a, &b, &c);
        let key = key2(&ao, BKey::Strides(bo.key()), &co, accumulate);
        self.run(
            key,
            (a.data, ao),
            Err((b.data, bo)),
            (c.data, co),
            accumulate,
            &Epilogue::default(),
        )
    }

    fn prepare(&self, b: MatRef<'_>) -> Result<Box<dyn PreparedWeight>, MatMulError> {
        check_bounds(&b.layout(), b.data.len(), 1, 0, "b")?;
        self.prepare_from(b.layout(), ffi::DNNL_F32, b.data.as_ptr().cast())
    }

    fn prepare_bf16(&self, b: MatRef<'_, u16>) -> Result<Box<dyn PreparedWeight>, MatMulError> {
        // The reorder reads the bf16 bits directly (and widens them for an f32 instance).
        check_bounds(&b.layout(), b.data.len(), 1, 0, "b")?;
        self.prepare_from(b.layout(), ffi::DNNL_BF16, b.data.as_ptr().cast())
    }
    fn matmul_prepared(
        &self,
        a: MatRef<'_>,
        b: &dyn PreparedWeight,
        mut c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<(), MatMulError> {
        let w = self.own_weight(b)?;
        check_prepared(&a, w.k, w.n, &c)?;
        if trivial_product(a.cols, &mut c, accumulate) {
            return Ok(());
        }
        let ao = op2(a.layout());
        let co = op2(c.layout());
        let key = key2(&ao, BKey::Prepared(w.key.clone()), &co, accumulate);
        let none = Epilogue::default();
        self.run(
            key,
            (a.data, ao),
            Ok((w, &w.md)),
            (c.data, co),
            accumulate,
            &none,
        )
    }

    fn fuses(&self, _kind: EpilogueKind) -> bool {
        // Every activation has an eltwise algorithm; bias and residual always map.
        true
    }

    fn matmul_prepared_epilogue(
        &self,
        a: MatRef<'_>,
        b: &dyn PreparedWeight,
        c: MatMut<'_>,
        epilogue: &Epilogue<'_>,
    ) -> Result<(), MatMulError> {
        let w = self.own_weight(b)?;
        check_prepared(&a, w.k, w.n, &c)?;
        check_epilogue(epilogue, &c)?;
        if c.rows == 0 || c.cols == 0 {
            return Ok(());
        }
        if a.cols == 0 {
            // oneDNN has no product to fuse into; callers run such epilogues themselves.
            return Err(MatMulError::NotSupported(
                "an epilogue on an empty product (k = 0)".into(),
            ));
        }
        let ao = op2(a.layout());
        let co = op2(c.layout());
        let key = key_with(&ao, BKey::Prepared(w.key.clone()), &co, false, epilogue);
        self.run(
            key,
            (a.data, ao),
            Ok((w, &w.md)),
            (c.data, co),
            false,
            epilogue,
        )
    }

    fn batched(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: MatMut<'_>,
        batch: Batch,
        accumulate: bool,
    ) -> Result<(), MatMulError> {
        check_batched(&a, &b, &c, &batch)?;
        if batch.count == 0 || c.rows == 0 || c.cols == 0 {
            return Ok(());
        }
        if batch.count == 1 || a.cols == 0 {
            // Plain products (k = 0 zeroes each c_i without touching a or b).
            return super::each_product(self, a, b, c, batch, accumulate);
        }
        let op3 = |l: Layout, s: usize| {
            Operand {
                ndims: 3,
                batch: batch.count,
                batch_stride: s,
                l,
            }
            .canonical()
        };
        let ao = op3(a.layout(), batch.a_stride);
        let bo = op3(b.layout(), batch.b_stride);
        let co = op3(c.layout(), batch.c_stride);
        let key = key2(&ao, BKey::Strides(bo.key()), &co, accumulate);
        self.run(
            key,
            (a.data, ao),
            Err((b.data, bo)),
            (c.data, co),
            accumulate,
            &Epilogue::default(),
        )
    }
}
