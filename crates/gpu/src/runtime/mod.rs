//! Running programs on an NVIDIA GPU (`--backend cuda`): the driver (`libcuda.so.1`) and NVRTC
//! loaded at run time, every kernel of a program compiled to PTX in one NVRTC call (cached on
//! disk), weights and tables uploaded once per program, and the host side shared with the
//! simulator ([`crate::exec`]), so what runs here is what the simulator checks.
//!
//! Status: matrix products run as generated kernels (`gen/gemm.rs`); cuBLASLt, CUDA graphs and
//! bf16/fp16 weights are not done. Decoding makes one program per past length (each compiled
//! once and cached on disk, weights shared): correct, slow to start. **Not yet run on a GPU** (none was lent while it was
//! written); without one, loading fails with one line naming what is missing.
//!
//! Never: launch with an argument that reaches past its allocation (checked per launch).

pub mod driver;
pub mod nvrtc;

use std::collections::HashMap;
use std::ffi::{c_void, CString};

use std::path::PathBuf;

use attnopt_ir::{interp, Bindings, Data, Graph, Tensor};

use crate::error::{GpuError, Result};
use crate::exec::{Arg, Device, Resident};
use crate::gen::GenOptions;
use crate::kir::GpuKernel;
use crate::program::{elem_size, Gemm, Program};
use driver::{
    CUcontext, CUdevice, CUdeviceptr, CUfunction, CUmodule, Driver, ATTR_CC_MAJOR, ATTR_CC_MINOR,
};
use nvrtc::Nvrtc;

/// Where the runtime finds what it loads, chosen by the caller (the CLI maps flags and
/// variables here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CudaOptions {
    /// `libcuda.so.1` by default.
    pub libcuda: Option<PathBuf>,
    /// The first of `nvrtc::LIBRARIES` that loads by default.
    pub nvrtc: Option<PathBuf>,
    /// Where compiled PTX is kept (none: compile every time).
    pub cache_dir: Option<PathBuf>,
    /// Device ordinal.
    pub device: usize,
}

/// One GPU, its context, the loaded program's functions, and this run's allocations.
pub struct CudaDevice {
    drv: Driver,
    _ctx: CUcontext,
    pub name: String,
    pub capability: (i32, i32),
    functions: Vec<CUfunction>,
    /// The module `functions` come from (unloaded when another replaces it).
    module: Option<CUmodule>,
    /// Every allocation: (pointer, bytes); `None` once freed.
    buffers: Vec<Option<(CUdeviceptr, usize)>>,
}

impl CudaDevice {
    pub fn open(opts: &CudaOptions) -> Result<CudaDevice> {
        let drv = Driver::load(opts.libcuda.as_deref())?;
        // SAFETY: plain driver calls with out-pointers to locals.
        unsafe {
            drv.check("cuInit", (drv.init)(0))?;
            let mut count = 0;
            drv.check("cuDeviceGetCount", (drv.device_get_count)(&mut count))?;
            if opts.device >= count.max(0) as usize {
                return Err(GpuError::Runtime(format!(
                    "no CUDA device {} (this machine has {count})",
                    opts.device
                )));
            }
            let mut dev: CUdevice = 0;
            drv.check(
                "cuDeviceGet",
                (drv.device_get)(&mut dev, opts.device as i32),
            )?;
            let mut ctx: CUcontext = std::ptr::null_mut();
            drv.check(
                "cuDevicePrimaryCtxRetain",
                (drv.primary_ctx_retain)(&mut ctx, dev),
            )?;
            drv.check("cuCtxSetCurrent", (drv.ctx_set_current)(ctx))?;
            let mut name = vec![0u8; 256];
            drv.check(
                "cuDeviceGetName",
                (drv.device_get_name)(name.as_mut_ptr().cast(), 255, dev),
            )?;
            let name = String::from_utf8_lossy(&name)
                .trim_end_matches('\0')
                .to_string();
            let (mut major, mut minor) = (0, 0);
            drv.check(
                "cuDeviceGetAttribute",
                (drv.device_get_attribute)(&mut major, ATTR_CC_MAJOR, dev),
            )?;
            drv.check(
                "cuDeviceGetAttribute",
                (drv.device_get_attribute)(&mut minor, ATTR_CC_MINOR, dev),
            )?;
            Ok(CudaDevice {
                drv,
                _ctx: ctx,
                name,
                capability: (major, minor),
                functions: vec![],
                module: None,
                buffers: vec![],
            })
        }
    }

    /// Compiles every kernel of `p` (one NVRTC call for the device's `sm_XY`, cached) and loads
    /// them, replacing the program loaded before.
    pub fn load(
        &mut self,
        p: &Program,
        nvrtc: &Nvrtc,
        cache: Option<&std::path::Path>,
    ) -> Result<()> {
        let mut source = String::new();
        for k in &p.kernels {
            source += &crate::cuda::print(k)?;
            source += "\n";
        }
        let (major, minor) = self.capability;
        let options = vec![format!("--gpu-architecture=sm_{major}{minor}")];
        let cubin = nvrtc.compile(
            &source,
            &[(crate::cuda::PRELUDE_NAME, crate::cuda::prelude())],
            &options,
            cache,
        )?;
        let mut module: CUmodule = std::ptr::null_mut();
        // SAFETY: `cubin` is a whole CUBIN image from NVRTC; out-pointers are locals; the old
        // module's functions are dropped before it is unloaded.
        unsafe {
            self.drv.check(
                "cuModuleLoadData",
                (self.drv.module_load_data)(&mut module, cubin.as_ptr().cast()),
            )?;
            self.functions.clear();
            if let Some(old) = self.module.replace(module) {
                (self.drv.module_unload)(old);
            }
            for k in &p.kernels {
                let name = CString::new(k.name.as_str())
                    .map_err(|_| GpuError::Runtime(format!("kernel name `{}`", k.name)))?;
                let mut f: CUfunction = std::ptr::null_mut();
                self.drv.check(
                    "cuModuleGetFunction",
                    (self.drv.module_get_function)(&mut f, module, name.as_ptr()),
                )?;
                self.functions.push(f);
            }
        }
        Ok(())
    }

    fn buffer(&self, b: usize) -> Result<(CUdeviceptr, usize)> {
        self.buffers
            .get(b)
            .copied()
            .flatten()
            .ok_or_else(|| GpuError::Runtime(format!("buffer {b} is not allocated")))
    }

    /// The device address of `a` after checking `len` elements of `size` bytes fit.
    fn address(&self, a: Arg<usize>, size: usize) -> Result<CUdeviceptr> {
        let (ptr, bytes) = self.buffer(a.buffer)?;
        let end = a
            .len
            .checked_mul(size)
            .and_then(|n| n.checked_add(a.byte_offset));
        match end {
            Some(e) if e <= bytes => Ok(ptr + a.byte_offset as u64),
            _ => Err(GpuError::Runtime(format!(
                "an argument of {} elements at byte {} past a buffer of {bytes} bytes",
                a.len, a.byte_offset
            ))),
        }
    }

    fn sync(&self) -> Result<()> {
        // SAFETY: no arguments.
        self.drv
            .check("cuCtxSynchronize", unsafe { (self.drv.ctx_synchronize)() })
    }

    fn read<T: Copy + Default>(&mut self, a: Arg<usize>) -> Result<Vec<T>> {
        let size = std::mem::size_of::<T>();
        let addr = self.address(a, size)?;
        self.sync()?;
        let mut out = vec![T::default(); a.len];
        // SAFETY: `out` holds `len · size` bytes; the source range was checked above.
        self.drv.check("cuMemcpyDtoH", unsafe {
            (self.drv.memcpy_dtoh)(out.as_mut_ptr().cast(), addr, a.len * size)
        })?;
        Ok(out)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        for (ptr, _) in self.buffers.drain(..).flatten() {
            // SAFETY: a pointer this device allocated and has not freed.
            unsafe { (self.drv.mem_free)(ptr) };
        }
    }
}

impl Device for CudaDevice {
    type Buffer = usize;

    fn alloc(&mut self, bytes: usize) -> Result<usize> {
        let mut ptr: CUdeviceptr = 0;
        // SAFETY: an out-pointer to a local; then a memset of exactly what was allocated.
        unsafe {
            self.drv
                .check("cuMemAlloc", (self.drv.mem_alloc)(&mut ptr, bytes.max(1)))?;
            self.buffers.push(Some((ptr, bytes)));
            self.drv
                .check("cuMemsetD8", (self.drv.memset_d8)(ptr, 0, bytes.max(1)))?;
        }
        Ok(self.buffers.len() - 1)
    }

    fn upload(&mut self, d: &Data) -> Result<usize> {
        let (src, bytes): (*const c_void, usize) = match d {
            Data::F32(x) => (x.as_ptr().cast(), 4 * x.len()),
            Data::I64(x) => (x.as_ptr().cast(), 8 * x.len()),
        };
        let b = self.alloc(bytes)?;
        let (ptr, _) = self.buffer(b)?;
        // SAFETY: `src` holds `bytes` bytes; the buffer was allocated with `bytes`.
        self.drv.check("cuMemcpyHtoD", unsafe {
            (self.drv.memcpy_htod)(ptr, src, bytes)
        })?;
        Ok(b)
    }

    fn free(&mut self, b: usize) -> Result<()> {
        if let Some(slot) = self.buffers.get_mut(b) {
            if let Some((ptr, _)) = slot.take() {
                // SAFETY: a pointer this device allocated, freed once (the slot is emptied).
                self.drv
                    .check("cuMemFree", unsafe { (self.drv.mem_free)(ptr) })?;
            }
        }
        Ok(())
    }

    fn launch(&mut self, index: usize, k: &GpuKernel, args: &[Arg<usize>]) -> Result<()> {
        let f = *self
            .functions
            .get(index)
            .ok_or_else(|| GpuError::Runtime(format!("kernel {} is not loaded", k.name)))?;
        if args.len() != k.params.len() {
            return Err(GpuError::Runtime(format!(
                "{}: wrong argument count",
                k.name
            )));
        }
        let mut ptrs: Vec<CUdeviceptr> = Vec::with_capacity(args.len());
        for (a, p) in args.iter().zip(&k.params) {
            ptrs.push(self.address(*a, elem_size(p.elem))?);
        }
        let mut params: Vec<*mut c_void> = ptrs
            .iter_mut()
            .map(|p| (p as *mut CUdeviceptr).cast())
            .collect();
        // SAFETY: `params` points at one device pointer per kernel parameter (all pointers,
        // as the printed signature declares), alive for the call; shared memory is static.
        self.drv
            .check(&format!("cuLaunchKernel {}", k.name), unsafe {
                (self.drv.launch_kernel)(
                    f,
                    k.grid[0],
                    k.grid[1],
                    1,
                    k.block,
                    1,
                    1,
                    0,
                    std::ptr::null_mut(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            })
    }

    fn gemm(&mut self, _g: &Gemm, _a: Arg<usize>, _b: Arg<usize>, _c: Arg<usize>) -> Result<()> {
        Err(GpuError::NotSupported(
            "library products (cuBLASLt) on the GPU; the runtime generates its products".into(),
        ))
    }

    fn read_f32(&mut self, a: Arg<usize>) -> Result<Vec<f32>> {
        self.read(a)
    }

    fn read_i64(&mut self, a: Arg<usize>) -> Result<Vec<i64>> {
        self.read(a)
    }
}

/// Batch, sequence and past length (as bound by a run's inputs).
type SizeKey = (Option<usize>, Option<usize>, usize);

/// A graph on a GPU: programs made, compiled and loaded per size.
pub struct CudaModel {
    graph: Graph,
    opts: CudaOptions,
    dev: CudaDevice,
    nvrtc: Nvrtc,
    /// The program, its resident weights, per (batch, sequence, past) size; the device holds
    /// the functions of the last one loaded.
    programs: HashMap<SizeKey, (Program, Resident<usize>)>,
    /// Weights on the device, shared by every size's program.
    weights: HashMap<u32, usize>,
    loaded: Option<SizeKey>,
}

impl CudaModel {
    /// Opens the device and NVRTC (the first errors a machine without a GPU gives).
    pub fn new(graph: &Graph, opts: &CudaOptions) -> Result<CudaModel> {
        let dev = CudaDevice::open(opts)?;
        let nvrtc = Nvrtc::load(opts.nvrtc.as_deref())?;
        Ok(CudaModel {
            graph: crate::gen::folded(graph)?,
            opts: opts.clone(),
            dev,
            nvrtc,
            programs: HashMap::new(),
            weights: HashMap::new(),
            loaded: None,
        })
    }

    /// The device's name and compute capability.
    pub fn device(&self) -> (String, (i32, i32)) {
        (self.dev.name.clone(), self.dev.capability)
    }

    pub fn run(&mut self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let b =
            interp::bindings(&self.graph, inputs).map_err(|e| GpuError::Input(e.to_string()))?;
        let key = (b.batch, b.seq, b.offset());
        if !self.programs.contains_key(&key) {
            let p = self.program(&b)?;
            let resident =
                Resident::upload_sharing(&mut self.dev, &self.graph, &p, &mut self.weights)?;
            self.programs.insert(key, (p, resident));
        }
        let (p, resident) = &self.programs[&key];
        if self.loaded != Some(key) {
            self.dev
                .load(p, &self.nvrtc, self.opts.cache_dir.as_deref())?;
            self.loaded = Some(key);
        }
        crate::exec::run(&mut self.dev, p, resident, inputs)
    }

    fn program(&self, b: &Bindings) -> Result<Program> {
        // Products as generated kernels until cuBLASLt is there.
        let gen = GenOptions {
            generated_products: true,
        };
        crate::gen::program_at(&self.graph, b, gen)
    }
}
