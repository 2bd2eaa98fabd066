//! Hand-written declarations for the few oneDNN **2.x** C functions the matmul path uses, and
//! their run-time loading with `libloading` (no link-time dependency on oneDNN).
//!
//! Source of truth: `/usr/include/oneapi/dnnl/dnnl.h` and `dnnl_types.h` of oneDNN 2.6.3
//! (Debian `libdnnl-dev`). In the 2.x line `dnnl_memory_desc_t` and the operation descriptors
//! are caller-allocated *value* structs (696 and 2800 bytes), so their layout is mirrored here
//! and pinned by compile-time size/offset assertions (values printed by a C probe compiled
//! against those headers). oneDNN 3.x made memory descriptors opaque and renamed the functions,
//! so only `libdnnl.so.2` with major version 2 is accepted.
//!
//! The OpenMP thread-count functions are looked up through the oneDNN handle (which finds them
//! in its dependency `libgomp.so.1`), falling back to loading `libgomp.so.1` directly.

#![allow(non_camel_case_types)]

use super::MatMulError;
use libloading::Library;
use std::ffi::{c_char, c_int, c_void};
use std::path::Path;

pub type dnnl_status_t = c_int;
pub type dnnl_dim_t = i64;
pub const DNNL_MAX_NDIMS: usize = 12;
pub type dnnl_dims_t = [dnnl_dim_t; DNNL_MAX_NDIMS];

// dnnl_status_t
pub const DNNL_SUCCESS: dnnl_status_t = 0;
// dnnl_data_type_t
pub const DNNL_BF16: c_int = 2;
pub const DNNL_F32: c_int = 3;
// dnnl_format_tag_t
pub const DNNL_FORMAT_TAG_ANY: c_int = 1;
pub const DNNL_AB: c_int = 3;
pub const DNNL_ABC: c_int = 4;
// dnnl_engine_kind_t
pub const DNNL_CPU: c_int = 1;
// dnnl_stream_flags_t
pub const DNNL_STREAM_DEFAULT_FLAGS: u32 = 1;
// dnnl_query_t
pub const DNNL_QUERY_IMPL_INFO_STR: c_int = 8;
pub const DNNL_QUERY_SRC_MD: c_int = 129;
pub const DNNL_QUERY_WEIGHTS_MD: c_int = 131;
pub const DNNL_QUERY_DST_MD: c_int = 133;
// DNNL_ARG_*
pub const DNNL_ARG_SRC: c_int = 1;
pub const DNNL_ARG_SRC_1: c_int = 2;
pub const DNNL_ARG_BIAS: c_int = 41;
pub const DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE: c_int = 16384;
pub const DNNL_ARG_DST: c_int = 17;
pub const DNNL_ARG_WEIGHTS: c_int = 33;
pub const DNNL_ARG_FROM: c_int = DNNL_ARG_SRC;
pub const DNNL_ARG_TO: c_int = DNNL_ARG_DST;
/// `DNNL_ARG_ATTR_MULTIPLE_POST_OP(idx)`: the argument base of post-op `idx`.
pub const fn arg_post_op(idx: c_int) -> c_int {
    DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE * (idx + 1)
}
// dnnl_alg_kind_t
pub const DNNL_ELTWISE_RELU: c_int = 0x1f;
pub const DNNL_ELTWISE_TANH: c_int = 0x2f;
pub const DNNL_ELTWISE_LOGISTIC: c_int = 0xaf;
pub const DNNL_ELTWISE_GELU_TANH: c_int = 0xcf;
pub const DNNL_ELTWISE_SWISH: c_int = 0xdf;
pub const DNNL_ELTWISE_GELU_ERF: c_int = 0x30;
pub const DNNL_BINARY_ADD: c_int = 0x1fff0;
// dnnl_format_kind_t
pub const DNNL_BLOCKED: c_int = 2;
// cpu_runtime of dnnl_version_t
pub const DNNL_RUNTIME_OMP: u32 = 2;

/// `dnnl_blocking_desc_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct dnnl_blocking_desc_t {
    pub strides: dnnl_dims_t,
    pub inner_nblks: c_int,
    pub inner_blks: dnnl_dims_t,
    pub inner_idxs: dnnl_dims_t,
}

/// The `format_desc` union of `dnnl_memory_desc_t` (blocking, wino or rnn-packed; the largest
/// members are 296 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub union dnnl_format_desc_t {
    pub blocking: dnnl_blocking_desc_t,
    pub raw: [u64; 37],
}

/// `dnnl_memory_extra_desc_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct dnnl_memory_extra_desc_t {
    pub flags: u64,
    pub compensation_mask: c_int,
    pub scale_adjust: f32,
    pub asymm_compensation_mask: c_int,
    pub reserved: [c_char; 60],
}

/// `dnnl_memory_desc_t` (2.x value struct).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct dnnl_memory_desc_t {
    pub ndims: c_int,
    pub dims: dnnl_dims_t,
    pub data_type: c_int,
    pub padded_dims: dnnl_dims_t,
    pub padded_offsets: dnnl_dims_t,
    pub offset0: dnnl_dim_t,
    pub format_kind: c_int,
    pub format_desc: dnnl_format_desc_t,
    pub extra: dnnl_memory_extra_desc_t,
}

impl dnnl_memory_desc_t {
    /// An all-zero descriptor (what the C API calls a zero memory descriptor), to be filled by
    /// an init function.
    pub fn zeroed() -> Self {
        // SAFETY: plain-old-data of integers, floats and arrays; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }

    /// A hashable summary of the layout (dims, type, format, blocking): equal for equal
    /// layouts, used as a cache key for prepared weights.
    pub fn layout_key(&self) -> Vec<i64> {
        let nd = (self.ndims.clamp(0, DNNL_MAX_NDIMS as c_int)) as usize;
        let mut k = vec![
            self.ndims as i64,
            self.data_type as i64,
            self.format_kind as i64,
        ];
        k.extend_from_slice(&self.dims[..nd]);
        k.extend_from_slice(&self.padded_dims[..nd]);
        k.push(self.offset0);
        if self.format_kind == DNNL_BLOCKED {
            // SAFETY: format_kind says the blocking member is the live one.
            let b = unsafe { &self.format_desc.blocking };
            let nb = (b.inner_nblks.clamp(0, DNNL_MAX_NDIMS as c_int)) as usize;
            k.extend_from_slice(&b.strides[..nd]);
            k.push(nb as i64);
            k.extend_from_slice(&b.inner_blks[..nb]);
            k.extend_from_slice(&b.inner_idxs[..nb]);
        }
        k.push(self.extra.flags as i64);
        k
    }
}

/// `dnnl_matmul_desc_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct dnnl_matmul_desc_t {
    pub primitive_kind: c_int,
    pub src_desc: dnnl_memory_desc_t,
    pub weights_desc: dnnl_memory_desc_t,
    pub bias_desc: dnnl_memory_desc_t,
    pub dst_desc: dnnl_memory_desc_t,
    pub accum_data_type: c_int,
}

/// `dnnl_exec_arg_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct dnnl_exec_arg_t {
    pub arg: c_int,
    pub memory: dnnl_memory_t,
}

/// `dnnl_version_t`.
#[repr(C)]
pub struct dnnl_version_t {
    pub major: c_int,
    pub minor: c_int,
    pub patch: c_int,
    pub hash: *const c_char,
    pub cpu_runtime: u32,
    pub gpu_runtime: u32,
}

// Layout pins, from `sizeof`/`offsetof` against the 2.6.3 headers.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<dnnl_blocking_desc_t>() == 296);
    assert!(size_of::<dnnl_format_desc_t>() == 296);
    assert!(size_of::<dnnl_memory_extra_desc_t>() == 80);
    assert!(size_of::<dnnl_memory_desc_t>() == 696);
    assert!(offset_of!(dnnl_memory_desc_t, dims) == 8);
    assert!(offset_of!(dnnl_memory_desc_t, data_type) == 104);
    assert!(offset_of!(dnnl_memory_desc_t, padded_dims) == 112);
    assert!(offset_of!(dnnl_memory_desc_t, padded_offsets) == 208);
    assert!(offset_of!(dnnl_memory_desc_t, offset0) == 304);
    assert!(offset_of!(dnnl_memory_desc_t, format_kind) == 312);
    assert!(offset_of!(dnnl_memory_desc_t, format_desc) == 320);
    assert!(offset_of!(dnnl_memory_desc_t, extra) == 616);
    assert!(size_of::<dnnl_matmul_desc_t>() == 2800);
    assert!(size_of::<dnnl_exec_arg_t>() == 16);
    assert!(size_of::<dnnl_version_t>() == 32);
};

// Opaque handles.
pub type dnnl_engine_t = *mut c_void;
pub type dnnl_stream_t = *mut c_void;
pub type dnnl_memory_t = *mut c_void;
pub type dnnl_primitive_desc_t = *mut c_void;
pub type dnnl_primitive_t = *mut c_void;
pub type dnnl_primitive_attr_t = *mut c_void;
pub type dnnl_post_ops_t = *mut c_void;

/// The resolved oneDNN (and OpenMP) entry points. The function pointers stay valid while
/// `_lib` (and `_gomp`) are alive, which is as long as this struct.
pub struct Api {
    pub version: unsafe extern "C" fn() -> *const dnnl_version_t,
    pub engine_create: unsafe extern "C" fn(*mut dnnl_engine_t, c_int, usize) -> dnnl_status_t,
    pub engine_destroy: unsafe extern "C" fn(dnnl_engine_t) -> dnnl_status_t,
    pub stream_create:
        unsafe extern "C" fn(*mut dnnl_stream_t, dnnl_engine_t, u32) -> dnnl_status_t,
    pub stream_wait: unsafe extern "C" fn(dnnl_stream_t) -> dnnl_status_t,
    pub stream_destroy: unsafe extern "C" fn(dnnl_stream_t) -> dnnl_status_t,
    pub memory_desc_init_by_tag: unsafe extern "C" fn(
        *mut dnnl_memory_desc_t,
        c_int,
        *const dnnl_dim_t,
        c_int,
        c_int,
    ) -> dnnl_status_t,
    pub memory_desc_init_by_strides: unsafe extern "C" fn(
        *mut dnnl_memory_desc_t,
        c_int,
        *const dnnl_dim_t,
        c_int,
        *const dnnl_dim_t,
    ) -> dnnl_status_t,
    pub memory_desc_get_size: unsafe extern "C" fn(*const dnnl_memory_desc_t) -> usize,
    pub matmul_desc_init: unsafe extern "C" fn(
        *mut dnnl_matmul_desc_t,
        *const dnnl_memory_desc_t,
        *const dnnl_memory_desc_t,
        *const dnnl_memory_desc_t,
        *const dnnl_memory_desc_t,
    ) -> dnnl_status_t,
    pub primitive_desc_create: unsafe extern "C" fn(
        *mut dnnl_primitive_desc_t,
        *const c_void,
        dnnl_primitive_attr_t,
        dnnl_engine_t,
        dnnl_primitive_desc_t,
    ) -> dnnl_status_t,
    pub primitive_desc_destroy: unsafe extern "C" fn(dnnl_primitive_desc_t) -> dnnl_status_t,
    pub primitive_desc_query:
        unsafe extern "C" fn(dnnl_primitive_desc_t, c_int, c_int, *mut c_void) -> dnnl_status_t,
    pub primitive_desc_query_md:
        unsafe extern "C" fn(dnnl_primitive_desc_t, c_int, c_int) -> *const dnnl_memory_desc_t,
    pub reorder_primitive_desc_create: unsafe extern "C" fn(
        *mut dnnl_primitive_desc_t,
        *const dnnl_memory_desc_t,
        dnnl_engine_t,
        *const dnnl_memory_desc_t,
        dnnl_engine_t,
        dnnl_primitive_attr_t,
    ) -> dnnl_status_t,
    pub memory_create: unsafe extern "C" fn(
        *mut dnnl_memory_t,
        *const dnnl_memory_desc_t,
        dnnl_engine_t,
        *mut c_void,
    ) -> dnnl_status_t,
    pub memory_set_data_handle: unsafe extern "C" fn(dnnl_memory_t, *mut c_void) -> dnnl_status_t,
    pub memory_destroy: unsafe extern "C" fn(dnnl_memory_t) -> dnnl_status_t,
    pub primitive_create:
        unsafe extern "C" fn(*mut dnnl_primitive_t, dnnl_primitive_desc_t) -> dnnl_status_t,
    pub primitive_execute: unsafe extern "C" fn(
        dnnl_primitive_t,
        dnnl_stream_t,
        c_int,
        *const dnnl_exec_arg_t,
    ) -> dnnl_status_t,
    pub primitive_destroy: unsafe extern "C" fn(dnnl_primitive_t) -> dnnl_status_t,
    pub primitive_attr_create: unsafe extern "C" fn(*mut dnnl_primitive_attr_t) -> dnnl_status_t,
    pub primitive_attr_destroy: unsafe extern "C" fn(dnnl_primitive_attr_t) -> dnnl_status_t,
    pub primitive_attr_set_post_ops:
        unsafe extern "C" fn(dnnl_primitive_attr_t, dnnl_post_ops_t) -> dnnl_status_t,
    pub post_ops_create: unsafe extern "C" fn(*mut dnnl_post_ops_t) -> dnnl_status_t,
    pub post_ops_append_sum: unsafe extern "C" fn(dnnl_post_ops_t, f32) -> dnnl_status_t,
    /// `(post_ops, scale, alg_kind, alpha, beta)`.
    pub post_ops_append_eltwise:
        unsafe extern "C" fn(dnnl_post_ops_t, f32, c_int, f32, f32) -> dnnl_status_t,
    pub post_ops_append_binary:
        unsafe extern "C" fn(dnnl_post_ops_t, c_int, *const dnnl_memory_desc_t) -> dnnl_status_t,
    pub post_ops_destroy: unsafe extern "C" fn(dnnl_post_ops_t) -> dnnl_status_t,
    /// `omp_set_num_threads` / `omp_get_max_threads`, when OpenMP is found.
    pub omp: Option<(unsafe extern "C" fn(c_int), unsafe extern "C" fn() -> c_int)>,
    /// The file the library was loaded from (from `/proc/self/maps`), if found.
    pub path: String,
    /// How OpenMP's idle threads wait (see [`set_passive_wait_policy`]).
    pub wait_policy: String,
    _gomp: Option<Library>,
    _lib: Library,
}

/// The soname loaded unless the caller names another file (or soname) to [`Api::load`], e.g. a
/// oneDNN 2.x built under `/opt`; a name that does not exist hides oneDNN (used to test the
/// fallback).
pub const LIBRARY: &str = "libdnnl.so.2";

/// Looks up one symbol and copies the function pointer out.
///
/// # Safety
/// `T` must be the symbol's true C signature.
unsafe fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, MatMulError> {
    lib.get::<T>(name.as_bytes())
        .map(|s| *s)
        .map_err(|e| MatMulError::Load(format!("oneDNN lacks {name}: {e}")))
}

impl Api {
    /// Loads `library` (default [`LIBRARY`]) and resolves every function; checks the version
    /// is 2.x.
    pub fn load(library: Option<&Path>) -> Result<Api, MatMulError> {
        // SAFETY: loading runs the library's initialisers; oneDNN's are benign (no global state
        // beyond its own). Each `sym` call names the C signature declared in dnnl.h 2.6.
        unsafe {
            let wait_policy = set_passive_wait_policy();
            let file =
                library.map_or_else(|| LIBRARY.to_string(), |p| p.to_string_lossy().into_owned());
            let lib = Library::new(library.map_or(Path::new(LIBRARY), |p| p))
                .map_err(|e| MatMulError::Load(format!("{file} not found ({e})")))?;
            let version: unsafe extern "C" fn() -> *const dnnl_version_t =
                sym(&lib, "dnnl_version")?;
            let v = version();
            if v.is_null() || (*v).major != 2 {
                let major = if v.is_null() { -1 } else { (*v).major };
                return Err(MatMulError::Load(format!(
                    "{file} reports major version {major}; only the 2.x C API is supported"
                )));
            }
            let (omp, gomp) = Self::find_omp(&lib);
            Ok(Api {
                version,
                engine_create: sym(&lib, "dnnl_engine_create")?,
                engine_destroy: sym(&lib, "dnnl_engine_destroy")?,
                stream_create: sym(&lib, "dnnl_stream_create")?,
                stream_wait: sym(&lib, "dnnl_stream_wait")?,
                stream_destroy: sym(&lib, "dnnl_stream_destroy")?,
                memory_desc_init_by_tag: sym(&lib, "dnnl_memory_desc_init_by_tag")?,
                memory_desc_init_by_strides: sym(&lib, "dnnl_memory_desc_init_by_strides")?,
                memory_desc_get_size: sym(&lib, "dnnl_memory_desc_get_size")?,
                matmul_desc_init: sym(&lib, "dnnl_matmul_desc_init")?,
                primitive_desc_create: sym(&lib, "dnnl_primitive_desc_create")?,
                primitive_desc_destroy: sym(&lib, "dnnl_primitive_desc_destroy")?,
                primitive_desc_query: sym(&lib, "dnnl_primitive_desc_query")?,
                primitive_desc_query_md: sym(&lib, "dnnl_primitive_desc_query_md")?,
                reorder_primitive_desc_create: sym(&lib, "dnnl_reorder_primitive_desc_create")?,
                memory_create: sym(&lib, "dnnl_memory_create")?,
                memory_set_data_handle: sym(&lib, "dnnl_memory_set_data_handle")?,
                memory_destroy: sym(&lib, "dnnl_memory_destroy")?,
                primitive_create: sym(&lib, "dnnl_primitive_create")?,
                primitive_execute: sym(&lib, "dnnl_primitive_execute")?,
                primitive_destroy: sym(&lib, "dnnl_primitive_destroy")?,
                primitive_attr_create: sym(&lib, "dnnl_primitive_attr_create")?,
                primitive_attr_destroy: sym(&lib, "dnnl_primitive_attr_destroy")?,
                primitive_attr_set_post_ops: sym(&lib, "dnnl_primitive_attr_set_post_ops")?,
                post_ops_create: sym(&lib, "dnnl_post_ops_create")?,
                post_ops_append_sum: sym(&lib, "dnnl_post_ops_append_sum")?,
                post_ops_append_eltwise: sym(&lib, "dnnl_post_ops_append_eltwise")?,
                post_ops_append_binary: sym(&lib, "dnnl_post_ops_append_binary")?,
                post_ops_destroy: sym(&lib, "dnnl_post_ops_destroy")?,
                omp,
                path: loaded_path("libdnnl.so").unwrap_or_else(|| file.clone()),
                wait_policy,
                _gomp: gomp,
                _lib: lib,
            })
        }
    }

    /// Finds OpenMP's thread-count functions: first through oneDNN's own handle (dlsym searches
    /// its dependencies), then in `libgomp.so.1`.
    #[allow(clippy::type_complexity)]
    unsafe fn find_omp(
        lib: &Library,
    ) -> (
        Option<(unsafe extern "C" fn(c_int), unsafe extern "C" fn() -> c_int)>,
        Option<Library>,
    ) {
        let get = |l: &Library| -> Option<(unsafe extern "C" fn(c_int), unsafe extern "C" fn() -> c_int)> {
            let set = l.get::<unsafe extern "C" fn(c_int)>(b"omp_set_num_threads").ok()?;
            let max = l.get::<unsafe extern "C" fn() -> c_int>(b"omp_get_max_threads").ok()?;
            Some((*set, *max))
        };
        if let Some(f) = get(lib) {
            return (Some(f), None);
        }
        match Library::new("libgomp.so.1") {
            Ok(g) => match get(&g) {
                Some(f) => (Some(f), Some(g)),
                None => (None, None),
            },
            Err(_) => (None, None),
        }
    }

    /// Returns `(major, minor, patch, cpu_runtime)`.
    pub fn version_info(&self) -> (i32, i32, i32, u32) {
        // SAFETY: checked non-null at load; the struct is static inside the library.
        unsafe {
            let v = &*(self.version)();
            (v.major, v.minor, v.patch, v.cpu_runtime)
        }
    }
}

/// Makes OpenMP's idle threads sleep instead of spin, unless the user chose otherwise.
///
/// libgomp reads `OMP_WAIT_POLICY` once, when it is loaded (here: as a dependency of oneDNN).
/// Its default spins for a while after every parallel region; measured on a 2-vCPU VM,
/// oneDNN products alternating with rayon work (the forward pass) then ran 10–60× slower
/// (128×768×768: 19 instead of 250 GFLOP/s; attention: 15.7 ms instead of 0.24 ms), as
/// spinning OpenMP threads and rayon workers took the CPUs from the threads doing work.
/// So, if `OMP_WAIT_POLICY` is unset and libgomp is not loaded yet, it is set to `PASSIVE`
/// before oneDNN is opened. (Setting an environment variable races with C code reading the
/// environment on other threads; this happens once, before oneDNN exists, and Rust's own
/// readers are locked.) Returns a description for reports.
fn set_passive_wait_policy() -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SET_HERE: AtomicBool = AtomicBool::new(false);
    if SET_HERE.load(Ordering::Relaxed) {
        return "OMP_WAIT_POLICY=PASSIVE (set by attnopt)".into();
    }
    // Not user configuration of attnopt (library code reads none; see `tests/architecture.rs`):
    // OpenMP's own variable, read only so that a value the user set is never overwritten.
    if let Some(v) = std::env::var_os("OMP_WAIT_POLICY") {
        return format!(
            "OMP_WAIT_POLICY={} (from the environment)",
            v.to_string_lossy()
        );
    }
    if loaded_path("libgomp").is_some() {
        return "OMP_WAIT_POLICY unset and libgomp already loaded: OpenMP threads spin".into();
    }
    std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
    SET_HERE.store(true, Ordering::Relaxed);
    "OMP_WAIT_POLICY=PASSIVE (set by attnopt)".into()
}

/// The path of the first mapped file whose name contains `needle`.
fn loaded_path(needle: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next().is_some_and(|f| f.contains(needle)))
        .map(str::to_string)
}

/// The name of a `dnnl_status_t` value.
pub fn status_name(s: dnnl_status_t) -> &'static str {
    match s {
        0 => "dnnl_success",
        1 => "dnnl_out_of_memory",
        2 => "dnnl_invalid_arguments",
        3 => "dnnl_unimplemented",
        4 => "dnnl_iterator_ends",
        5 => "dnnl_runtime_error",
        6 => "dnnl_not_required",
        _ => "unknown status",
    }
}

/// Turns a status into `Ok` or a [`MatMulError::Library`] naming `function`.
pub fn check(function: &'static str, status: dnnl_status_t) -> Result<(), MatMulError> {
    if status == DNNL_SUCCESS {
        Ok(())
    } else {
        Err(MatMulError::Library {
            function,
            status,
            status_name: status_name(status),
        })
    }
}
