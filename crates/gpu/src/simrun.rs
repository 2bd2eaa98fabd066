//! A whole model on the simulator (`--backend cuda-sim`): the graph's weight-only parts folded
//! (as the CPU backend does), lowered by `lower` at the inputs' sizes, generated into a
//! [`Program`], and every step executed — kernels by [`crate::sim`], library products by a
//! plain CPU product over the same strided views (the meaning cuBLASLt is asked for).
//!
//! Never: compute anything a generated kernel should compute; the CPU product here stands only
//! for the library call.

use std::collections::HashMap;

use attnopt_ir::{interp, Bindings, DType, Data, Graph, Tensor};

use crate::error::{GpuError, Result};
use crate::program::{Gemm, Memory, Program, Slice, Step};
use crate::sim::{launch, Binding, BufferId, DeviceMemory};

/// A graph ready to run on the simulator.
pub struct SimModel {
    graph: Graph,
    gen: crate::gen::GenOptions,
}

/// Device memory holding everything a program addresses.
struct Placed {
    mem: DeviceMemory,
    arena: BufferId,
    scratch: BufferId,
    inputs: HashMap<String, BufferId>,
    weights: HashMap<u32, BufferId>,
    tables: Vec<BufferId>,
}

impl Placed {
    fn binding(&self, s: &Slice) -> Result<Binding> {
        let buffer = match &s.memory {
            Memory::Arena => self.arena,
            Memory::Scratch => self.scratch,
            Memory::Input(n) => *self
                .inputs
                .get(n)
                .ok_or_else(|| GpuError::Input(format!("missing input `{n}`")))?,
            Memory::Weight(w) => *self
                .weights
                .get(&w.0)
                .ok_or_else(|| GpuError::Lower(format!("weight {} was not uploaded", w.0)))?,
            Memory::Table(t) => *self
                .tables
                .get(*t)
                .ok_or_else(|| GpuError::Lower(format!("no table {t}")))?,
        };
        Ok(Binding {
            buffer,
            byte_offset: s.byte_offset,
            len: s.len,
        })
    }
}

impl SimModel {
    /// Folds `graph`'s weight-only subgraphs once.
    pub fn new(graph: &Graph) -> Result<SimModel> {
        let folded =
            attnopt_ir::fold::fold_weights(graph).map_err(|e| GpuError::Lower(e.to_string()))?;
        Ok(SimModel {
            graph: folded.graph,
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
        let opts = attnopt_lower::LowerOptions {
            fuse_attention: true,
        };
        let l = attnopt_lower::lower_with(&self.graph, b, &opts)
            .map_err(|e| GpuError::Lower(e.to_string()))?;
        crate::gen::program(&self.graph, &l, self.gen)
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
        let mut mem = DeviceMemory::new();
        let arena = mem.alloc(p.arena_bytes);
        let scratch = mem.alloc(p.scratch_bytes);
        let mut placed = Placed {
            mem,
            arena,
            scratch,
            inputs: HashMap::new(),
            weights: HashMap::new(),
            tables: vec![],
        };
        for port in &p.inputs {
            let t = inputs
                .get(&port.name)
                .ok_or_else(|| GpuError::Input(format!("missing input `{}`", port.name)))?;
            if t.shape() != port.shape.as_slice() {
                return Err(GpuError::Input(format!(
                    "input `{}` has shape {:?}, the program was made for {:?}",
                    port.name,
                    t.shape(),
                    port.shape
                )));
            }
            let buf = upload(&mut placed.mem, t.data())?;
            placed.inputs.insert(port.name.clone(), buf);
        }
        for w in &p.weights {
            let data = self.graph.weight_data(w.id);
            let buf = match data.dtype() {
                DType::I64 => upload(&mut placed.mem, &Data::I64(data.to_i64()))?,
                _ => upload(&mut placed.mem, &Data::F32(data.to_f32()))?,
            };
            placed.weights.insert(w.id.0, buf);
        }
        for t in &p.tables {
            let buf = upload(&mut placed.mem, &Data::F32(t.clone()))?;
            placed.tables.push(buf);
        }
        for step in &p.steps {
            match step {
                Step::Launch(l) => {
                    let k = p.kernels.get(l.kernel).ok_or_else(|| {
                        GpuError::Lower(format!(
                            "a launch of kernel {}, which is missing",
                            l.kernel
                        ))
                    })?;
                    let args = l
                        .args
                        .iter()
                        .map(|s| placed.binding(s))
                        .collect::<Result<Vec<_>>>()?;
                    launch(k, &args, &mut placed.mem)?;
                }
                Step::Gemm(g) => gemm(&mut placed, g)?,
            }
        }
        let mut out = HashMap::new();
        for port in &p.outputs {
            let b = placed.binding(&port.slice)?;
            let t = match port.dtype {
                DType::I64 => Tensor::i64(
                    port.shape.clone(),
                    placed.mem.read_i64(b.buffer, b.byte_offset, b.len)?,
                ),
                _ => Tensor::f32(
                    port.shape.clone(),
                    placed.mem.read_f32(b.buffer, b.byte_offset, b.len)?,
                ),
            }
            .map_err(|e| GpuError::Lower(e.to_string()))?;
            out.insert(port.name.clone(), t);
        }
        Ok(out)
    }
}

fn upload(mem: &mut DeviceMemory, d: &Data) -> Result<BufferId> {
    Ok(match d {
        Data::F32(x) => {
            let b = mem.alloc(4 * x.len());
            mem.write_f32(b, 0, x)?;
            b
        }
        Data::I64(x) => {
            let b = mem.alloc(8 * x.len());
            mem.write_i64(b, 0, x)?;
            b
        }
    })
}

/// The library product: every batch index, `c = a · b` through the views, f64 sums rounded
/// once. Every index is checked against its slice.
fn gemm(placed: &mut Placed, g: &Gemm) -> Result<()> {
    let (ba, bb, bc) = (
        placed.binding(&g.a)?,
        placed.binding(&g.b)?,
        placed.binding(&g.c)?,
    );
    let a = placed.mem.read_f32(ba.buffer, ba.byte_offset, ba.len)?;
    let b = placed.mem.read_f32(bb.buffer, bb.byte_offset, bb.len)?;
    let mut c = placed.mem.read_f32(bc.buffer, bc.byte_offset, bc.len)?;
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
    placed.mem.write_f32(bc.buffer, bc.byte_offset, &c)?;
    Ok(())
}
