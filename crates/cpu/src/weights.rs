//! A model's weights as the CPU kernels read them: f32 elements zero-copy from the checkpoint
//! when stored as aligned little-endian f32, else an f32 copy made once, on first use; bf16 bit
//! patterns zero-copy when aligned (matrix products and embedding lookups read bf16 directly,
//! so a bf16 weight they alone use is never widened).
//!
//! Never: copy a weight that can be borrowed, or widen one before a kernel asks for f32.

use std::borrow::Cow;
use std::sync::OnceLock;

use attnopt_ir::{DType, Graph, WeightId};

/// The weights of a graph and their lazily made f32 copies (indexed by weight id).
#[derive(Clone, Copy)]
pub(crate) struct Weights<'a> {
    graph: &'a Graph,
    converted: &'a [OnceLock<Vec<f32>>],
}

impl<'a> Weights<'a> {
    /// `converted` holds one slot per weight of `graph`.
    pub(crate) fn new(graph: &'a Graph, converted: &'a [OnceLock<Vec<f32>>]) -> Weights<'a> {
        Weights { graph, converted }
    }

    /// A weight's f32 elements: zero-copy from the checkpoint when stored as aligned f32, else
    /// converted once, on first use.
    pub(crate) fn f32(self, id: WeightId) -> &'a [f32] {
        let w = self.graph.weight_data(id);
        if w.dtype() == DType::F32 {
            if let Some(x) = view_le::<f32>(w.bytes()) {
                return x;
            }
        }
        self.converted[id.0 as usize].get_or_init(|| w.to_f32())
    }

    /// A bf16 weight's bit patterns: zero-copy from the checkpoint when aligned; `None` for
    /// other dtypes.
    pub(crate) fn bf16(self, w: WeightId) -> Option<Cow<'a, [u16]>> {
        let data = self.graph.weight_data(w);
        if data.dtype() != DType::BF16 {
            return None;
        }
        let bytes = data.bytes();
        Some(view_le::<u16>(bytes).map_or_else(
            || {
                Cow::Owned(
                    bytes
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                )
            },
            Cow::Borrowed,
        ))
    }
}

/// Numbers for which every bit pattern is a value, so checkpoint bytes can be read as them.
trait PlainNumber: Copy {}
impl PlainNumber for f32 {}
impl PlainNumber for u16 {}

/// `bytes` (little-endian, as checkpoints store them) viewed as `T`s without a copy: `None`
/// unless the host is little-endian, `bytes` starts aligned for `T` and holds whole `T`s.
fn view_le<T: PlainNumber>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    let aligned = bytes.as_ptr() as usize % std::mem::align_of::<T>() == 0;
    if !cfg!(target_endian = "little") || !aligned || bytes.len() % size != 0 {
        return None;
    }
    // SAFETY: aligned for `T` and a whole number of `T`s (checked); every bit pattern is a valid
    // `T` (`PlainNumber`); the host's byte order is the data's; the result borrows `bytes`.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}
