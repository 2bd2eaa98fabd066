//! Running a [`Program`] on a [`Device`]: the host side shared by the simulator and the CUDA
//! runtime — memory for the arena, scratch, inputs, weights and tables; every step in order
//! with its arguments resolved to (buffer, byte offset, length); outputs read back. The
//! simulator's runs test this code; a device adds only its own allocation, copies, launches
//! and (optionally) library products.
//!
//! Never: run a step whose arguments it has not resolved against a buffer it allocated.

use std::collections::HashMap;

use attnopt_ir::{DType, Data, Graph, Tensor};

use crate::error::{GpuError, Result};
use crate::kir::GpuKernel;
use crate::program::{Gemm, Memory, Program, Slice, Step};

/// A slice resolved to device memory: buffer `buffer`, `len` elements from `byte_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg<B> {
    pub buffer: B,
    pub byte_offset: usize,
    pub len: usize,
}

/// What a program needs from a device.
pub trait Device {
    /// A buffer handle.
    type Buffer: Copy;
    /// A new zeroed buffer of `bytes` bytes.
    fn alloc(&mut self, bytes: usize) -> Result<Self::Buffer>;
    /// A new buffer holding `data`.
    fn upload(&mut self, data: &Data) -> Result<Self::Buffer>;
    /// Gives back a buffer of this run (arena, scratch, inputs).
    fn free(&mut self, b: Self::Buffer) -> Result<()>;
    /// Runs kernel `index` of the program (`k`) with these arguments.
    fn launch(&mut self, index: usize, k: &GpuKernel, args: &[Arg<Self::Buffer>]) -> Result<()>;
    /// A library product.
    fn gemm(
        &mut self,
        g: &Gemm,
        a: Arg<Self::Buffer>,
        b: Arg<Self::Buffer>,
        c: Arg<Self::Buffer>,
    ) -> Result<()>;
    fn read_f32(&mut self, a: Arg<Self::Buffer>) -> Result<Vec<f32>>;
    fn read_i64(&mut self, a: Arg<Self::Buffer>) -> Result<Vec<i64>>;
}

/// Weight `id` of `g` as the device holds it: i64 for integer weights, else f32.
pub fn weight_data(g: &Graph, id: attnopt_ir::WeightId) -> Data {
    let w = g.weight_data(id);
    match w.dtype() {
        DType::I64 => Data::I64(w.to_i64()),
        _ => Data::F32(w.to_f32()),
    }
}

/// Weights and tables uploaded once, by weight id and table index.
pub struct Resident<B> {
    weights: HashMap<u32, B>,
    tables: Vec<B>,
}

impl<B: Copy> Resident<B> {
    /// Uploads every weight `p` reads (f32, or i64 for integer weights) and its tables.
    pub fn upload<D: Device<Buffer = B>>(dev: &mut D, g: &Graph, p: &Program) -> Result<Self> {
        Self::upload_sharing(dev, g, p, &mut HashMap::new())
    }

    /// As [`Resident::upload`], taking weights already on the device from `known` (and adding
    /// the ones uploaded now): programs of one model at several sizes share their weights.
    pub fn upload_sharing<D: Device<Buffer = B>>(
        dev: &mut D,
        g: &Graph,
        p: &Program,
        known: &mut HashMap<u32, B>,
    ) -> Result<Self> {
        let mut weights = HashMap::new();
        for w in &p.weights {
            let b = match known.get(&w.id.0) {
                Some(&b) => b,
                None => {
                    let b = dev.upload(&weight_data(g, w.id))?;
                    known.insert(w.id.0, b);
                    b
                }
            };
            weights.insert(w.id.0, b);
        }
        let tables = p
            .tables
            .iter()
            .map(|t| dev.upload(&Data::F32(t.clone())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Resident { weights, tables })
    }
}

/// Runs `p` on `dev` with `inputs`; weights and tables from `resident`.
pub fn run<D: Device>(
    dev: &mut D,
    p: &Program,
    resident: &Resident<D::Buffer>,
    inputs: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let arena = dev.alloc(p.arena_bytes)?;
    let scratch = dev.alloc(p.scratch_bytes)?;
    let mut placed_inputs = HashMap::new();
    for port in &p.inputs {
        let t = inputs
            .get(&port.name)
            .ok_or_else(|| GpuError::Input(format!("missing input `{}`", port.name)))?;
        if t.shape() != port.shape.as_slice() || t.dtype() != port.dtype {
            return Err(GpuError::Input(format!(
                "input `{}` is {:?} {:?}; the program was made for {:?} {:?}",
                port.name,
                t.dtype(),
                t.shape(),
                port.dtype,
                port.shape
            )));
        }
        placed_inputs.insert(port.name.clone(), dev.upload(t.data())?);
    }
    let resolve = |s: &Slice| -> Result<Arg<D::Buffer>> {
        let buffer = match &s.memory {
            Memory::Arena => arena,
            Memory::Scratch => scratch,
            Memory::Input(n) => *placed_inputs
                .get(n)
                .ok_or_else(|| GpuError::Input(format!("missing input `{n}`")))?,
            Memory::Weight(w) => *resident
                .weights
                .get(&w.0)
                .ok_or_else(|| GpuError::Lower(format!("weight {} was not uploaded", w.0)))?,
            Memory::Table(t) => *resident
                .tables
                .get(*t)
                .ok_or_else(|| GpuError::Lower(format!("no table {t}")))?,
        };
        Ok(Arg {
            buffer,
            byte_offset: s.byte_offset,
            len: s.len,
        })
    };
    for step in &p.steps {
        match step {
            Step::Launch(l) => {
                let k = p.kernels.get(l.kernel).ok_or_else(|| {
                    GpuError::Lower(format!("a launch of kernel {}, which is missing", l.kernel))
                })?;
                let args = l.args.iter().map(&resolve).collect::<Result<Vec<_>>>()?;
                dev.launch(l.kernel, k, &args)?;
            }
            Step::Gemm(g) => dev.gemm(g, resolve(&g.a)?, resolve(&g.b)?, resolve(&g.c)?)?,
        }
    }
    let mut out = HashMap::new();
    for port in &p.outputs {
        let a = resolve(&port.slice)?;
        let t = match port.dtype {
            DType::I64 => Tensor::i64(port.shape.clone(), dev.read_i64(a)?),
            _ => Tensor::f32(port.shape.clone(), dev.read_f32(a)?),
        }
        .map_err(|e| GpuError::Lower(e.to_string()))?;
        out.insert(port.name.clone(), t);
    }
    dev.free(arena)?;
    dev.free(scratch)?;
    for (_, b) in placed_inputs {
        dev.free(b)?;
    }
    Ok(out)
}
