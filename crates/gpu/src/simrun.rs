//! A whole model on the simulator (`--backend cuda-sim`): the graph's weight-only parts folded
//! (as the CPU backend does), lowered by `lower` at the inputs' sizes, generated into a
//! [`Program`], and every step executed — kernels by [`crate::sim`], library products by a
//! plain CPU product over the same strided views (the meaning cuBLASLt is asked for).
//!
//! Never: compute anything a generated kernel should compute; the CPU product here stands only
//! for the library call.

use std::collections::HashMap;

use attnopt_ir::{interp, Bindings, Data, Graph, Tensor};

use crate::error::{GpuError, Result};
use crate::exec::{Arg, Device, Resident};
use crate::kir::GpuKernel;
use crate::program::{Gemm, Program};
use crate::sim::{launch, Binding, BufferId, DeviceMemory};

/// A graph ready to run on the simulator.
pub struct SimModel {
    graph: Graph,
    gen: crate::gen::GenOptions,
}

/// The simulator as a [`Device`]: simulated memory, kernels run by [`launch`], library
/// products as a CPU loop.
#[derive(Default)]
pub struct SimDevice {
    mem: DeviceMemory,
}

fn binding(a: Arg<BufferId>) -> Binding {
    Binding {
        buffer: a.buffer,
        byte_offset: a.byte_offset,
        len: a.len,
    }
}

impl Device for SimDevice {
    type Buffer = BufferId;

    fn alloc(&mut self, bytes: usize) -> Result<BufferId> {
        Ok(self.mem.alloc(bytes))
    }

    fn upload(&mut self, d: &Data) -> Result<BufferId> {
        Ok(match d {
            Data::F32(x) => {
                let b = self.mem.alloc(4 * x.len());
                self.mem.write_f32(b, 0, x)?;
                b
            }
            Data::I64(x) => {
                let b = self.mem.alloc(8 * x.len());
                self.mem.write_i64(b, 0, x)?;
                b
            }
        })
    }

    fn free(&mut self, _b: BufferId) -> Result<()> {
        // Simulated memory lives as long as the device.
        Ok(())
    }

    fn launch(&mut self, _index: usize, k: &GpuKernel, args: &[Arg<BufferId>]) -> Result<()> {
        let args: Vec<Binding> = args.iter().map(|&a| binding(a)).collect();
        Ok(launch(k, &args, &mut self.mem)?)
    }

    fn gemm(
        &mut self,
        g: &Gemm,
        a: Arg<BufferId>,
        b: Arg<BufferId>,
        c: Arg<BufferId>,
    ) -> Result<()> {
        gemm(&mut self.mem, g, binding(a), binding(b), binding(c))
    }

    fn read_f32(&mut self, a: Arg<BufferId>) -> Result<Vec<f32>> {
        Ok(self.mem.read_f32(a.buffer, a.byte_offset, a.len)?)
    }

    fn read_i64(&mut self, a: Arg<BufferId>) -> Result<Vec<i64>> {
        Ok(self.mem.read_i64(a.buffer, a.byte_offset, a.len)?)
    }
}

impl SimModel {
    /// Folds `graph`'s weight-only subgraphs once.
    pub fn new(graph: &Graph) -> Result<SimModel> {
        Ok(SimModel {
            graph: crate::gen::folded(graph)?,
            gen: Default::default(),
        })
    }

    /// Generates programs with `opts` (e.g. products as generated kernels).
    pub fn with_gen(mut self, opts: crate::gen::GenOptions) -> SimModel {
        self.gen = opts;
        self
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The program for `inputs`' sizes.
    pub fn program(&self, b: &Bindings) -> Result<Program> {
        crate::gen::program_at(&self.graph, b, self.gen)
    }

    /// Runs the graph on `inputs`; returns every output.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let b =
            interp::bindings(&self.graph, inputs).map_err(|e| GpuError::Input(e.to_string()))?;
        let p = self.program(&b)?;
        self.execute(&p, inputs)
    }

    /// Runs program `p` (made by [`SimModel::program`]) on `inputs`.
    pub fn execute(
        &self,
        p: &Program,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>> {
        let mut dev = SimDevice::default();
        let resident = Resident::upload(&mut dev, &self.graph, p)?;
        crate::exec::run(&mut dev, p, &resident, inputs)
    }
}

/// The library product: every batch index, `c = a · b` through the views, f64 sums rounded
/// once. Every index is checked against its slice.
fn gemm(mem: &mut DeviceMemory, g: &Gemm, ba: Binding, bb: Binding, bc: Binding) -> Result<()> {
    let a = mem.read_f32(ba.buffer, ba.byte_offset, ba.len)?;
    let b = mem.read_f32(bb.buffer, bb.byte_offset, bb.len)?;
    let mut c = mem.read_f32(bc.buffer, bc.byte_offset, bc.len)?;
    let v = &g.views;
    let batches: usize = v.batch.iter().product();
    let oob = |what: &str, i: usize, len: usize| {
        GpuError::Lower(format!(
            "{}: the product's {what} view reaches element {i} of {len}",
            g.doc
        ))
    };
    for flat in 0..batches {
        let (mut oa, mut ob, mut oc) = (v.a.offset, v.b.offset, v.c.offset);
        let mut rest = flat;
        for ax in (0..v.batch.len()).rev() {
            let i = rest % v.batch[ax].max(1);
            rest /= v.batch[ax].max(1);
            oa += i * v.a.batch_strides[ax];
            ob += i * v.b.batch_strides[ax];
            oc += i * v.c.batch_strides[ax];
        }
        for i in 0..g.m {
            for j in 0..g.n {
                let mut acc = 0f64;
                for kk in 0..g.k {
                    let ia = oa + i * v.a.row_stride + kk * v.a.col_stride;
                    let ib = ob + kk * v.b.row_stride + j * v.b.col_stride;
                    let xa = *a.get(ia).ok_or_else(|| oob("a", ia, a.len()))?;
                    let xb = *b.get(ib).ok_or_else(|| oob("b", ib, b.len()))?;
                    acc += xa as f64 * xb as f64;
                }
                let ic = oc + i * v.c.row_stride + j * v.c.col_stride;
                let len = c.len();
                *c.get_mut(ic).ok_or_else(|| oob("c", ic, len))? = acc as f32;
            }
        }
    }
    mem.write_f32(bc.buffer, bc.byte_offset, &c)?;
    Ok(())
}
