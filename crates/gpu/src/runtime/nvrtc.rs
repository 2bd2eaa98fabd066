//! NVRTC, CUDA's run-time compiler, loaded at run time: CUDA C to a CUBIN for the device's
//! architecture (`sm_XY`: machine code, so a driver older than the NVRTC still loads it, which
//! PTX would not). Output is cached on disk by a hash of the source, the options, the NVRTC
//! library's path and version, so a model's kernels compile once per machine.
//!
//! Never: hand the driver PTX from a cache entry whose key does not match (the file name is the
//! hash of everything that made it).

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

use libloading::Library;

use crate::error::{GpuError, Result};

type NvrtcResult = c_int;
type NvrtcProgram = *mut std::ffi::c_void;

/// Names tried in order when no path is given (CUDA 12 and 13 wheels and toolkits).
pub const LIBRARIES: &[&str] = &["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"];

pub struct Nvrtc {
    /// Never unloaded (unloading CUDA libraries while their threads run has crashed processes).
    _lib: std::mem::ManuallyDrop<Library>,
    file: String,
    create: unsafe extern "C" fn(
        *mut NvrtcProgram,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    compile: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> NvrtcResult,
    cubin_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    cubin: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    destroy: unsafe extern "C" fn(*mut NvrtcProgram) -> NvrtcResult,
    error_string: unsafe extern "C" fn(NvrtcResult) -> *const c_char,
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| GpuError::Runtime(format!("a NUL byte in `{s}`")))
}

impl Nvrtc {
    /// Loads NVRTC from `library`, or the first of [`LIBRARIES`] that loads.
    pub fn load(library: Option<&Path>) -> Result<Nvrtc> {
        let candidates: Vec<PathBuf> = match library {
            Some(p) => vec![p.to_path_buf()],
            None => LIBRARIES.iter().map(PathBuf::from).collect(),
        };
        let mut why = vec![];
        for c in &candidates {
            // SAFETY: loading runs NVRTC's initialisers (benign).
            match unsafe { Library::new(c) } {
                Ok(lib) => return Self::from_library(lib, c.display().to_string()),
                Err(e) => why.push(format!("{} ({e})", c.display())),
            }
        }
        Err(GpuError::Runtime(format!(
            "NVRTC (CUDA's run-time compiler) not found: tried {}; name it with --nvrtc",
            why.join(", ")
        )))
    }

    fn from_library(lib: Library, file: String) -> Result<Nvrtc> {
        // SAFETY: each signature is nvrtc.h's.
        unsafe {
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes()).map_err(|e| {
                        GpuError::Runtime(format!("{file} has no `{}` ({e})", $name))
                    })?
                };
            }
            Ok(Nvrtc {
                create: sym!("nvrtcCreateProgram"),
                compile: sym!("nvrtcCompileProgram"),
                cubin_size: sym!("nvrtcGetCUBINSize"),
                cubin: sym!("nvrtcGetCUBIN"),
                version: sym!("nvrtcVersion"),
                log_size: sym!("nvrtcGetProgramLogSize"),
                log: sym!("nvrtcGetProgramLog"),
                destroy: sym!("nvrtcDestroyProgram"),
                error_string: sym!("nvrtcGetErrorString"),
                file,
                _lib: std::mem::ManuallyDrop::new(lib),
            })
        }
    }

    fn check(&self, what: &str, r: NvrtcResult) -> Result<()> {
        if r == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr((self.error_string)(r)) };
        Err(GpuError::Runtime(format!(
            "{what}: {}",
            s.to_string_lossy()
        )))
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> Result<(i32, i32)> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: out-pointers to locals.
        self.check("nvrtcVersion", unsafe {
            (self.version)(&mut major, &mut minor)
        })?;
        Ok((major, minor))
    }

    /// Compiles `source` (which may include the headers `headers`, by name) to a CUBIN with
    /// `options` (which must name an `sm_XY` architecture); from `cache` when it holds this
    /// exact compilation.
    pub fn compile(
        &self,
        source: &str,
        headers: &[(&str, &str)],
        options: &[String],
        cache: Option<&Path>,
    ) -> Result<Vec<u8>> {
        let (major, minor) = self.version()?;
        let mut key = blake3::Hasher::new();
        let version = format!("{major}.{minor}");
        for part in [source, &options.join("\n"), &self.file, &version] {
            key.update(part.as_bytes());
            key.update(&[0]);
        }
        for (n, h) in headers {
            key.update(n.as_bytes());
            key.update(h.as_bytes());
        }
        let cached = cache.map(|d| d.join(format!("{}.cubin", key.finalize().to_hex())));
        if let Some(bin) = cached.as_ref().and_then(|p| std::fs::read(p).ok()) {
            if !bin.is_empty() {
                return Ok(bin);
            }
        }
        let src = cstring(source)?;
        let name = cstring("attnopt.cu")?;
        let hnames: Vec<CString> = headers
            .iter()
            .map(|(n, _)| cstring(n))
            .collect::<Result<_>>()?;
        let htexts: Vec<CString> = headers
            .iter()
            .map(|(_, h)| cstring(h))
            .collect::<Result<_>>()?;
        let hn: Vec<*const c_char> = hnames.iter().map(|c| c.as_ptr()).collect();
        let ht: Vec<*const c_char> = htexts.iter().map(|c| c.as_ptr()).collect();
        let opts: Vec<CString> = options.iter().map(|o| cstring(o)).collect::<Result<_>>()?;
        let op: Vec<*const c_char> = opts.iter().map(|c| c.as_ptr()).collect();
        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: every pointer is a live NUL-terminated string of this scope; counts match.
        unsafe {
            self.check(
                "nvrtcCreateProgram",
                (self.create)(
                    &mut prog,
                    src.as_ptr(),
                    name.as_ptr(),
                    headers.len() as c_int,
                    ht.as_ptr(),
                    hn.as_ptr(),
                ),
            )?;
            let r = (self.compile)(prog, op.len() as c_int, op.as_ptr());
            // Everything read out of the program before it is destroyed, whatever happened.
            let result = if r != 0 {
                let mut n = 0usize;
                (self.log_size)(prog, &mut n);
                let mut log = vec![0u8; n.max(1)];
                (self.log)(prog, log.as_mut_ptr().cast());
                let log = String::from_utf8_lossy(&log)
                    .trim_end_matches('\0')
                    .to_string();
                self.check("nvrtcCompileProgram", r)
                    .map_err(|e| GpuError::Runtime(format!("{e}\n{log}")))
                    .map(|()| Vec::new())
            } else {
                let mut n = 0usize;
                let got = self.check("nvrtcGetCUBINSize", (self.cubin_size)(prog, &mut n));
                let mut bin = vec![0u8; n];
                got.and_then(|()| {
                    self.check("nvrtcGetCUBIN", (self.cubin)(prog, bin.as_mut_ptr().cast()))
                })
                .map(|()| bin)
            };
            (self.destroy)(&mut prog);
            let bin = result?;
            if bin.is_empty() {
                return Err(GpuError::Runtime("NVRTC produced an empty CUBIN".into()));
            }
            if let Some(p) = cached {
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                // A cache write that fails only costs a compile next time.
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &bin).is_ok() {
                    let _ = std::fs::rename(&tmp, &p);
                }
            }
            Ok(bin)
        }
    }
}
