//! What config.json's sparse-layer sections say (docs/SPARSE.md), as plain data: the model
//! facts `Dims` carries and `inspect` shows. Reading them and the tensors they name is
//! `arch/sparse.rs`'s business.

/// `attnopt_sparse_qkv`: a shared `FactoredDense` then three `LocallyConvDense` (Q, K, V).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SparseQkv {
    pub modules: usize,
    pub module_dim: usize,
    pub length: usize,
    pub qk_width: usize,
    pub v_width: usize,
    /// `output: "dense"`: GPT-2's `attn.c_proj` follows; `"none"` (trax's default): nothing.
    pub output_dense: bool,
}

/// `attnopt_sparse_ff`: one unit per block of `block` chosen by a rank-`lowrank` controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SparseFfSpec {
    pub block: usize,
    pub lowrank: usize,
    pub units: usize,
}
