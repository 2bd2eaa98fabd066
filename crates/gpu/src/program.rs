//! A GPU program: the kernels of one lowered graph at concrete sizes and the order to run them
//! in — kernel launches with their arguments, and matrix products handed to the library — over
//! named memory (one activation arena, the inputs, the weights, constant tables, a scratch
//! area). What the CUDA runtime replays, what the simulator executes, and what `launch.json`
//! writes down for people who run the kernels without attnopt.
//!
//! Never: refer to memory other than through a [`Slice`] whose length is known.

use attnopt_ir::{DType, WeightId};
use attnopt_lower::ProductViews;
use serde::Serialize;

use crate::kir::{GpuKernel, Scalar};

/// Where a slice lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Memory {
    /// The activation arena (one allocation, [`Program::arena_bytes`]).
    Arena,
    /// A run-time input, by name.
    Input(String),
    /// A weight, by its index in the graph's weights (uploaded once).
    Weight(#[serde(serialize_with = "weight_index")] WeightId),
    /// A constant table made when the program was built ([`Program::tables`]), by index.
    Table(usize),
    /// Scratch space of kernels that need more than their output ([`Program::scratch_bytes`]),
    /// reused by every such kernel (they run one after another).
    Scratch,
}

fn weight_index<S: serde::Serializer>(w: &WeightId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(w.0)
}

/// `len` elements of `elem` starting `byte_offset` bytes into `memory`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Slice {
    pub memory: Memory,
    pub byte_offset: usize,
    pub len: usize,
    pub elem: Scalar,
}

impl Slice {
    pub fn bytes(&self) -> usize {
        self.len * elem_size(self.elem)
    }
}

/// Bytes per element.
pub fn elem_size(s: Scalar) -> usize {
    match s {
        Scalar::F32 => 4,
        Scalar::I64 => 8,
    }
}

/// A kernel launch: kernel `kernel` of the program with `args[i]` as its parameter `i`.
#[derive(Debug, Clone, Serialize)]
pub struct Launch {
    pub kernel: usize,
    pub args: Vec<Slice>,
}

/// A matrix product for the library: for every batch index, `c = a · b` over the strided views
/// of `views` (elements, relative to the slices' starts), f32 in and out, f32 accumulation.
#[derive(Debug, Clone, Serialize)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub views: ProductViews,
    pub a: Slice,
    pub b: Slice,
    pub c: Slice,
    /// What it implements (`layer 2: matmul+bias`).
    pub doc: String,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub enum Step {
    Launch(Launch),
    Gemm(Box<Gemm>),
}

/// A tensor the program reads or writes, by name.
#[derive(Debug, Clone, Serialize)]
pub struct Port {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub slice: Slice,
}

/// A weight the program reads: uploaded once as f32.
#[derive(Debug, Clone, Serialize)]
pub struct WeightUse {
    #[serde(serialize_with = "weight_index")]
    pub id: WeightId,
    pub name: String,
    pub shape: Vec<usize>,
}

/// Everything a run needs.
#[derive(Debug, Clone, Serialize)]
pub struct Program {
    pub kernels: Vec<GpuKernel>,
    pub steps: Vec<Step>,
    pub arena_bytes: usize,
    pub scratch_bytes: usize,
    #[serde(skip)]
    pub tables: Vec<Vec<f32>>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    pub weights: Vec<WeightUse>,
}
