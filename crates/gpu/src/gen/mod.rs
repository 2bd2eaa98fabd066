//! From `lower`'s kernels to a GPU [`Program`]: [`program`] walks the lowered kernels in order
//! and hands each to the generator of its kind (the only `match` on `KernelKind`); each
//! generator builds its GPU kernels with [`crate::kbuild`] and adds launches (or a library
//! product) through the [`Gen`] context, which knows where every value lives.
//!
//! * [`row`] — row programs and products' epilogues; [`matmul`] — products (library calls,
//!   or [`gemm`]'s generated tiled kernel);
//! * [`attention`] — softmax attention, flash-style (the scores never stored);
//! * [`hydra`] — Hydra attention (token sums in chunks, then outputs; causal: a chunked scan);
//! * [`sparse`] — the sparse feed-forward core and the factored product;
//! * [`ops`] — single operators: layout copies, elementwise with broadcasting, masks,
//!   reductions, prefix sums, gathers, RoPE (its cos/sin as a table), block one-hots.
//!
//! Never: cut the graph differently from `lower` (the CPU and GPU backends share one lowering).

pub mod attention;
pub mod gemm;
pub mod hydra;
pub mod matmul;
pub mod ops;
pub mod row;
pub mod sparse;

use std::collections::HashMap;

use attnopt_ir::{DType, Graph};
use attnopt_lower::memory::storage_of;
use attnopt_lower::{Kernel, KernelKind, Lowered, ValueId, ValueKind};

use crate::error::{GpuError, Result};
use crate::kir::{GpuKernel, Scalar};
use crate::program::{Launch, Memory, Port, Program, Slice, Step, WeightUse};

/// How a program is generated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenOptions {
    /// Matrix products as generated kernels ([`gemm`]) instead of library calls.
    pub generated_products: bool,
}

/// The generators' context: the lowered graph and the program being built.
pub struct Gen<'a> {
    pub l: &'a Lowered,
    pub g: &'a Graph,
    pub opts: GenOptions,
    pub p: Program,
    /// Kernels already made, by their text without the name (identical kernels are shared).
    known: HashMap<String, usize>,
    /// Kernels made per base name (for unique names).
    names: HashMap<String, usize>,
}

/// The element type a value of `dtype` has on the device (weights are uploaded as f32).
pub fn elem_of(dtype: DType) -> Scalar {
    match dtype {
        DType::I64 => Scalar::I64,
        _ => Scalar::F32,
    }
}

impl<'a> Gen<'a> {
    /// Where value `v` lives (through views), as a slice of its storage.
    pub fn slice(&self, v: ValueId) -> Result<Slice> {
        let s = storage_of(&self.l.values, v);
        let value = &self.l.values[s];
        let elem = elem_of(self.l.values[v].dtype);
        let (memory, byte_offset) = match &value.kind {
            ValueKind::Temp => (
                Memory::Arena,
                self.l.memory.offsets[s].ok_or_else(|| {
                    GpuError::Lower(format!("value {s} is computed but has no arena offset"))
                })?,
            ),
            ValueKind::Input(name) => (Memory::Input(name.clone()), 0),
            ValueKind::Weight(w) => (Memory::Weight(*w), 0),
            ValueKind::Alias(_) => {
                return Err(GpuError::Lower(format!("value {s} is a view of a view")))
            }
        };
        Ok(Slice {
            memory,
            byte_offset,
            len: value.numel(),
            elem,
        })
    }

    /// Kernel `k`'s inputs, then its output, as slices: the arguments of a kernel whose
    /// parameters mirror the lowered kernel's values.
    pub fn inputs_then_output(&self, k: &Kernel) -> Result<Vec<Slice>> {
        let mut args = k
            .inputs
            .iter()
            .map(|&v| self.slice(v))
            .collect::<Result<Vec<_>>>()?;
        args.push(self.slice(k.output)?);
        Ok(args)
    }

    /// The shape of value `v`.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.l.values[v].shape
    }

    /// Adds kernel `k` (or finds an identical one) and returns its index.
    pub fn kernel(&mut self, mut k: GpuKernel) -> Result<usize> {
        k.check()?;
        let base = k.name.clone();
        let key = {
            let mut anon = k.clone();
            anon.name.clear();
            anon.doc.clear();
            serde_json::to_string(&anon).map_err(|e| GpuError::Lower(e.to_string()))?
        };
        if let Some(&i) = self.known.get(&key) {
            for d in k.doc {
                if !self.p.kernels[i].doc.contains(&d) {
                    self.p.kernels[i].doc.push(d);
                }
            }
            return Ok(i);
        }
        let n = self.names.entry(base.clone()).or_insert(0);
        k.name = format!("{base}_{n}");
        *n += 1;
        self.p.kernels.push(k);
        self.known.insert(key, self.p.kernels.len() - 1);
        Ok(self.p.kernels.len() - 1)
    }

    /// Adds kernel `k` and a launch of it with `args`.
    pub fn launch(&mut self, k: GpuKernel, args: Vec<Slice>) -> Result<()> {
        if k.params.len() != args.len() {
            return Err(GpuError::Lower(format!(
                "kernel {} takes {} arguments, given {}",
                k.name,
                k.params.len(),
                args.len()
            )));
        }
        let kernel = self.kernel(k)?;
        self.p.steps.push(Step::Launch(Launch { kernel, args }));
        Ok(())
    }

    /// Scratch space for `len` elements of `elem` (shared by every kernel that asks).
    pub fn scratch(&mut self, len: usize, elem: Scalar) -> Slice {
        let s = Slice {
            memory: Memory::Scratch,
            byte_offset: 0,
            len,
            elem,
        };
        self.p.scratch_bytes = self.p.scratch_bytes.max(s.bytes());
        s
    }

    /// A constant f32 table (an identical one is shared: RoPE's for Q and K).
    pub fn table(&mut self, data: Vec<f32>) -> Slice {
        let bits = |t: &[f32]| t.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let index = self
            .p
            .tables
            .iter()
            .position(|t| bits(t) == bits(&data))
            .unwrap_or(self.p.tables.len());
        let s = Slice {
            memory: Memory::Table(index),
            byte_offset: 0,
            len: data.len(),
            elem: Scalar::F32,
        };
        if index == self.p.tables.len() {
            self.p.tables.push(data);
        }
        s
    }

    /// What kernel `k` implements, for its `doc`.
    pub fn doc(&self, k: &Kernel) -> Vec<String> {
        let layer = k
            .layer
            .map_or("model".to_string(), |l| format!("layer {l}"));
        let nodes: Vec<String> = k
            .nodes
            .iter()
            .map(|&n| self.g.node(n).op.name().to_string())
            .collect();
        vec![format!("{layer}: {} ({})", k.name, nodes.join(", "))]
    }

    /// A C identifier for kernel `k`'s name (`row:layer_norm` → `row_layer_norm`).
    pub fn base_name(k: &Kernel) -> String {
        let s: String = k
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("k_{s}")
    }
}

/// `graph` with its weight-only subgraphs computed once (as every backend runs it): what the
/// GPU backend lowers.
pub fn folded(graph: &Graph) -> Result<Graph> {
    attnopt_ir::fold::fold_weights(graph)
        .map(|f| f.graph)
        .map_err(|e| GpuError::Lower(e.to_string()))
}

/// The GPU program of `g` (already [`folded`]) at sizes `b`: lowered as the GPU backend asks
/// (softmax attention fused), then generated.
pub fn program_at(g: &Graph, b: &attnopt_ir::Bindings, opts: GenOptions) -> Result<Program> {
    let lowering = attnopt_lower::LowerOptions {
        fuse_attention: true,
    };
    let l =
        attnopt_lower::lower_with(g, b, &lowering).map_err(|e| GpuError::Lower(e.to_string()))?;
    program(g, &l, opts)
}

/// The GPU program of `l` (lowered from `g`).
pub fn program(g: &Graph, l: &Lowered, opts: GenOptions) -> Result<Program> {
    let mut cx = Gen {
        l,
        g,
        opts,
        p: Program {
            kernels: vec![],
            steps: vec![],
            arena_bytes: l.memory.arena_bytes,
            scratch_bytes: 0,
            tables: vec![],
            inputs: vec![],
            outputs: vec![],
            weights: vec![],
        },
        known: HashMap::new(),
        names: HashMap::new(),
    };
    for k in &l.kernels {
        kernel(&mut cx, k)?;
    }
    for (v, value) in l.values.iter().enumerate() {
        match &value.kind {
            ValueKind::Input(name) => cx.p.inputs.push(Port {
                name: name.clone(),
                shape: value.shape.clone(),
                dtype: value.dtype,
                slice: cx.slice(v)?,
            }),
            ValueKind::Weight(id) if !cx.p.weights.iter().any(|w| w.id == *id) => {
                let w = g.weight_data(*id);
                cx.p.weights.push(WeightUse {
                    id: *id,
                    name: w.name().to_string(),
                    shape: w.shape().to_vec(),
                });
            }
            _ => {}
        }
    }
    for (name, v) in &l.outputs {
        cx.p.outputs.push(Port {
            name: name.clone(),
            shape: l.values[*v].shape.clone(),
            dtype: l.values[*v].dtype,
            slice: cx.slice(*v)?,
        });
    }
    Ok(cx.p)
}

/// The GPU work of one lowered kernel.
fn kernel(cx: &mut Gen, k: &Kernel) -> Result<()> {
    match &k.kind {
        KernelKind::MatMul {
            m,
            k: kk,
            n,
            b_transposed,
            epilogue,
            views,
        } => matmul::product(
            cx,
            k,
            matmul::Shape {
                m: *m,
                k: *kk,
                n: *n,
                b_transposed: *b_transposed,
            },
            epilogue.as_ref(),
            views.as_deref(),
        ),
        KernelKind::Row {
            program,
            rows,
            d,
            causal,
        } => {
            let valid = match causal {
                Some(offset) => {
                    let s = cx.shape(k.output);
                    row::Valid::Causal {
                        queries: s[s.len().saturating_sub(2)].max(1),
                        offset: *offset,
                    }
                }
                None => row::Valid::Full,
            };
            let kern = row::row_kernel(&Gen::base_name(k), cx.doc(k), program, *rows, *d, valid)?;
            let args = cx.inputs_then_output(k)?;
            cx.launch(kern, args)
        }
        KernelKind::Attention(spec) => attention::attention(cx, k, spec),
        KernelKind::Hydra(spec) => hydra::hydra(cx, k, spec),
        KernelKind::SparseFf(spec) => sparse::sparse_ff(cx, k, spec),
        KernelKind::Factored(spec) => sparse::factored(cx, k, spec),
        KernelKind::AdditiveMask => ops::additive_mask(cx, k),
        KernelKind::View => Ok(()),
        KernelKind::Op(op) => ops::op(cx, k, op),
    }
}
