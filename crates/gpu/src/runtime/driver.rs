//! The few CUDA driver API functions the runtime uses, loaded from `libcuda.so.1` at run time
//! (nothing CUDA at build time). Declarations follow `cuda.h` (CUDA 12): `CUresult` is an int,
//! `CUdevice` an int, `CUdeviceptr` a 64-bit integer, contexts, modules, functions and streams
//! opaque pointers; the `_v2` entry points are the current ones for memory calls.
//!
//! Never: call into the library with a pointer or length it has not checked (every copy's
//! length is the buffer's), or leave an error code unexplained (`cuGetErrorName`).

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::path::Path;

use libloading::Library;

use crate::error::{GpuError, Result};

pub type CUresult = c_int;
pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
pub type CUcontext = *mut c_void;
pub type CUmodule = *mut c_void;
pub type CUfunction = *mut c_void;
pub type CUstream = *mut c_void;

pub const CUDA_SUCCESS: CUresult = 0;
/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR`, `_MINOR`.
pub const ATTR_CC_MAJOR: c_int = 75;
pub const ATTR_CC_MINOR: c_int = 76;

/// The driver library's default name.
pub const LIBRARY: &str = "libcuda.so.1";

/// The loaded entry points (the library stays loaded as long as this lives).
pub struct Driver {
    /// Never unloaded: `dlclose` of the driver after `cuInit`, with its threads running, is a
    /// known way to crash at exit.
    _lib: std::mem::ManuallyDrop<Library>,
    pub init: unsafe extern "C" fn(c_uint) -> CUresult,
    pub device_get: unsafe extern "C" fn(*mut CUdevice, c_int) -> CUresult,
    pub device_get_count: unsafe extern "C" fn(*mut c_int) -> CUresult,
    pub device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CUdevice) -> CUresult,
    pub device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, CUdevice) -> CUresult,
    pub primary_ctx_retain: unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult,
    pub ctx_set_current: unsafe extern "C" fn(CUcontext) -> CUresult,
    pub ctx_synchronize: unsafe extern "C" fn() -> CUresult,
    pub module_load_data: unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult,
    pub module_unload: unsafe extern "C" fn(CUmodule) -> CUresult,
    pub module_get_function:
        unsafe extern "C" fn(*mut CUfunction, CUmodule, *const c_char) -> CUresult,
    pub mem_alloc: unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult,
    pub mem_free: unsafe extern "C" fn(CUdeviceptr) -> CUresult,
    pub memset_d8: unsafe extern "C" fn(CUdeviceptr, u8, usize) -> CUresult,
    pub memcpy_htod: unsafe extern "C" fn(CUdeviceptr, *const c_void, usize) -> CUresult,
    pub memcpy_dtoh: unsafe extern "C" fn(*mut c_void, CUdeviceptr, usize) -> CUresult,
    #[allow(clippy::type_complexity)]
    pub launch_kernel: unsafe extern "C" fn(
        CUfunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        CUstream,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CUresult,
    pub get_error_name: unsafe extern "C" fn(CUresult, *mut *const c_char) -> CUresult,
}

/// `name` from `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function's C signature.
unsafe fn sym<T: Copy>(lib: &Library, file: &str, name: &str) -> Result<T> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: the caller names the C signature of `name`.
    unsafe {
        lib.get::<T>(bytes.as_slice())
            .map(|s| *s)
            .map_err(|e| GpuError::Runtime(format!("{file} has no `{name}` ({e})")))
    }
}

impl Driver {
    /// Loads the driver from `library` (default [`LIBRARY`]).
    pub fn load(library: Option<&Path>) -> Result<Driver> {
        let file = library.map_or(LIBRARY.to_string(), |p| p.display().to_string());
        // SAFETY: loading runs the driver's initialisers (benign); each `sym` names the C
        // signature declared in cuda.h.
        unsafe {
            let lib = Library::new(library.map_or(Path::new(LIBRARY), |p| p)).map_err(|e| {
                GpuError::Runtime(format!(
                    "{file} not found: no NVIDIA driver on this machine ({e})"
                ))
            })?;
            Ok(Driver {
                init: sym(&lib, &file, "cuInit")?,
                device_get: sym(&lib, &file, "cuDeviceGet")?,
                device_get_count: sym(&lib, &file, "cuDeviceGetCount")?,
                device_get_name: sym(&lib, &file, "cuDeviceGetName")?,
                device_get_attribute: sym(&lib, &file, "cuDeviceGetAttribute")?,
                primary_ctx_retain: sym(&lib, &file, "cuDevicePrimaryCtxRetain")?,
                ctx_set_current: sym(&lib, &file, "cuCtxSetCurrent")?,
                ctx_synchronize: sym(&lib, &file, "cuCtxSynchronize")?,
                module_load_data: sym(&lib, &file, "cuModuleLoadData")?,
                module_unload: sym(&lib, &file, "cuModuleUnload")?,
                module_get_function: sym(&lib, &file, "cuModuleGetFunction")?,
                mem_alloc: sym(&lib, &file, "cuMemAlloc_v2")?,
                mem_free: sym(&lib, &file, "cuMemFree_v2")?,
                memset_d8: sym(&lib, &file, "cuMemsetD8_v2")?,
                memcpy_htod: sym(&lib, &file, "cuMemcpyHtoD_v2")?,
                memcpy_dtoh: sym(&lib, &file, "cuMemcpyDtoH_v2")?,
                launch_kernel: sym(&lib, &file, "cuLaunchKernel")?,
                get_error_name: sym(&lib, &file, "cuGetErrorName")?,
                _lib: std::mem::ManuallyDrop::new(lib),
            })
        }
    }

    /// `Ok` for `CUDA_SUCCESS`, else an error naming the call and the code.
    pub fn check(&self, what: &str, r: CUresult) -> Result<()> {
        if r == CUDA_SUCCESS {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string (or fails).
        let ok = unsafe { (self.get_error_name)(r, &mut name) } == CUDA_SUCCESS;
        let text = if ok && !name.is_null() {
            // SAFETY: a NUL-terminated static string from the driver.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        } else {
            format!("CUresult {r}")
        };
        Err(GpuError::Runtime(format!("{what}: {text}")))
    }
}
