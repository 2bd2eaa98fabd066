//! Kernels and the values they read and write, at concrete shapes: the plain data a backend
//! consumes, including the specs of the fused kinds (a product's strided views, a Hydra
//! kernel's row views and its two row programs).
//!
//! This module never looks at how a graph is cut into kernels: it depends on nothing that
//! recognises patterns (the lowering context, the driver, the recognisers), so every backend
//! and every recogniser can stand on it.

use attnopt_ir::{DType, NodeId, Op, Role, WeightId};
use serde::Serialize;

use crate::epilogue::Epilogue;
use crate::row::{BinaryOp, Expr, InputKind, Reduction, RowProgram, UnaryOp};

/// Index into [`crate::Lowered::values`].
pub type ValueId = usize;

/// Where a value's elements live.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ValueKind {
    /// A run-time input, by name.
    Input(String),
    /// A checkpoint weight (never in the arena).
    Weight(#[serde(skip)] WeightId),
    /// Computed by a kernel into the arena.
    Temp,
    /// The same elements as another value, reshaped (no copy).
    Alias(ValueId),
}

/// A tensor value: concrete shape, element type, storage.
#[derive(Debug, Clone, Serialize)]
pub struct Value {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub kind: ValueKind,
    /// The graph node it holds (`None` for values the lowering introduces).
    #[serde(skip)]
    pub node: Option<NodeId>,
}

impl Value {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// What a kernel computes.
#[derive(Debug, Clone, Serialize)]
pub enum KernelKind {
    /// `out[i] = a[i] · b[i]` over broadcast batch indices (`[.., m, k] × [.., k, n]`), with
    /// `b` read transposed when `b_transposed` (a `permute` of its last two axes folded in: `b`'s
    /// value then has shape `[.., n, k]`). With an epilogue, the product is then transformed in
    /// place by a row program (no reductions) whose input `epilogue.at` is the product; its
    /// other inputs are the kernel's inputs after `a` and `b`.
    ///
    /// With `views`, `a`, `b` and the output are read and written through those strided views
    /// of the input values 0 and 1 and the output value (heads of a fused QKV buffer, merged
    /// heads; [`ProductViews`]); the values' own shapes are then not the operands' shapes, and
    /// `views.b` already includes the transpose (`b_transposed` only records that one was
    /// folded). Without, every operand is its dense value.
    MatMul {
        m: usize,
        k: usize,
        n: usize,
        b_transposed: bool,
        epilogue: Option<Epilogue>,
        views: Option<Box<ProductViews>>,
    },
    /// A row program over `rows × d`; with `causal = Some(offset)`, row `r` has
    /// `valid = min(d, (r mod nq) + 1 + offset)` where `nq` is the second-to-last output axis.
    Row {
        program: RowProgram,
        rows: usize,
        d: usize,
        causal: Option<usize>,
    },
    /// Hydra attention, `φ(Q) ⊙ Σ_t φ(K_t) ⊙ V_t` (causal: a prefix sum over tokens), inputs
    /// Q, K, V read as strided rows ([`Hydra`]); the output is `[batch, tokens, d]`.
    Hydra(Hydra),
    /// The sparse feed-forward core ([`SparseFf`]).
    SparseFf(SparseFf),
    /// A factored product at one row ([`Factored`]); inputs `[x, G, P]`.
    Factored(Factored),
    /// Softmax attention in one kernel, the score matrix never stored ([`Attention`]; made
    /// only when the caller asks, [`crate::LowerOptions::fuse_attention`]).
    Attention(Box<Attention>),
    /// `attention_mask` (i64, 1 keeps / 0 masks) to an additive f32 mask (0 / -inf).
    AdditiveMask,
    /// The output aliases input 0 (reshape): nothing to do.
    View,
    /// One ir operator, left to the backend's generic kernels.
    Op(#[serde(skip)] Op),
}

/// One kernel: its work, the values it reads, the value it writes, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    pub kind: KernelKind,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
    /// The graph nodes it computes.
    #[serde(skip)]
    pub nodes: Vec<NodeId>,
    pub layer: Option<u32>,
    pub role: Role,
    /// A short name for breakdowns (`matmul+bias+gelu`, `matmul+epilogue`, `row:layer_norm`, `op:permute`, ...).
    pub name: String,
    pub flops: u64,
    pub bytes: u64,
}

// A product's operands and output as strided views (found by `views.rs`).

/// Where the elements of one product operand (or the output) live in its storage value:
/// matrix `(i_0, …, i_{r-1})` element `(row, col)` at
/// `offset + Σ i_j · batch_strides[j] + row · row_stride + col · col_stride` (elements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Strided {
    pub offset: usize,
    /// One stride per batch axis of the product's output (0 on broadcast axes).
    pub batch_strides: Vec<usize>,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strided {
    /// A dense row-major value of `shape` (`[.., rows, cols]`) read as the product operand over
    /// `batch` output batch axes (right-aligned broadcasting, like the interpreter), transposed
    /// (`[.., cols, rows]` read as `rows × cols`) when `transposed`.
    pub fn dense(shape: &[usize], batch: &[usize], transposed: bool) -> Strided {
        let r = shape.len();
        let cols = shape.get(r.wrapping_sub(1)).copied().unwrap_or(1);
        let lead = &shape[..r.saturating_sub(2)];
        let full = attnopt_ir::broadcast_strides(lead, batch.len());
        let mat: usize = shape[r.saturating_sub(2)..].iter().product();
        let batch_strides = full.iter().map(|&s| s * mat).collect();
        let (row_stride, col_stride) = if transposed { (1, cols) } else { (cols, 1) };
        Strided {
            offset: 0,
            batch_strides,
            row_stride,
            col_stride,
        }
    }

    /// `[B, N, width]` storage whose columns `start..start + H·d` are split into `H` heads of
    /// `d`, read as the `[B, H, N, d]` operand (transposed: `[B, H, d, N]`).
    pub(crate) fn heads(
        n: usize,
        width: usize,
        start: usize,
        d: usize,
        transposed: bool,
    ) -> Strided {
        let (row_stride, col_stride) = if transposed { (1, width) } else { (width, 1) };
        Strided {
            offset: start,
            batch_strides: vec![n * width, d],
            row_stride,
            col_stride,
        }
    }
}

/// Strided views of a product's `a` (`m × k`), `b` (`k × n`, any transpose folded in) and
/// output `c` (`m × n`) over the kernel's input values 0 and 1 and its output value, for the
/// output batch axes `batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductViews {
    pub batch: Vec<usize>,
    pub a: Strided,
    pub b: Strided,
    pub c: Strided,
}

impl ProductViews {
    /// The batch axes as `(size, [a, b, c] strides)`, size-1 axes dropped and neighbours merged
    /// where all three operands step uniformly across them: `[B, H]` over dense values is one
    /// axis of `B·H`; heads of a `[B, N, 3D]` buffer stay two axes.
    pub fn batch_axes(&self) -> Vec<(usize, [usize; 3])> {
        let mut out: Vec<(usize, [usize; 3])> = Vec::new();
        for (i, &size) in self.batch.iter().enumerate() {
            if size == 1 {
                continue;
            }
            let s = [
                self.a.batch_strides[i],
                self.b.batch_strides[i],
                self.c.batch_strides[i],
            ];
            match out.last_mut() {
                Some((n, prev)) if (0..3).all(|j| prev[j] == s[j] * size) => {
                    *n *= size;
                    *prev = s;
                }
                _ => out.push((size, s)),
            }
        }
        out
    }
}

impl ProductViews {
    /// The views of a dense product: `a` `[.., m, k]`, `b` `[.., k, n]` (`[.., n, k]` read
    /// transposed when `b_transposed`), output `[.., m, n]`, batch axes the output's.
    pub fn dense(a: &[usize], b: &[usize], b_transposed: bool, out: &[usize]) -> ProductViews {
        let batch = out[..out.len().saturating_sub(2)].to_vec();
        ProductViews {
            a: Strided::dense(a, &batch, false),
            b: Strided::dense(b, &batch, b_transposed),
            c: Strided::dense(out, &batch, false),
            batch,
        }
    }
}

// Fused softmax attention (found by `attention.rs`).

/// `out = softmax(x(Q·Kᵀ, …)) · V` for every batch index and query row, where `x` is the
/// softmax row program's argument (scale, additive masks) and the program is exactly
/// [`RowProgram::softmax`]: the two products and the softmax row kernel `lower` would have
/// made, fused so that the `nq × nk` scores are never stored. Inputs: `[Q, K, V, the
/// program's other inputs…]`; the views are those of the two products (`q` and `k` of the
/// first, `v` and `out` of the second), over inputs 0, 1, 2 and the output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attention {
    pub batch: Vec<usize>,
    pub nq: usize,
    pub nk: usize,
    /// Features of a query/key, and of a value.
    pub d: usize,
    pub dv: usize,
    pub q: Strided,
    /// K as the first product's right operand (`d × nk`, the transpose folded in).
    pub k: Strided,
    pub v: Strided,
    pub out: Strided,
    /// The softmax over the scores' rows (`rows = Π batch · nq`, `d = nk`), its input
    /// `scores` being the product `Q·Kᵀ`; its other inputs are the kernel's inputs after V,
    /// in order.
    pub softmax: RowProgram,
    pub scores: usize,
    /// As `KernelKind::Row`'s: row `r` sees keys `0..min(nk, (r mod nq) + 1 + offset)`.
    pub causal: Option<usize>,
}

impl Attention {
    /// Score rows (batch indices × queries).
    pub fn rows(&self) -> usize {
        self.batch.iter().product::<usize>() * self.nq
    }
}

// The Hydra kernel (found by `hydra.rs`): how it reads Q, K, V, and its two row programs, which
// are its meaning.

/// Where one operand's rows live in its value: row `r = b·tokens + t` is the `d` elements
/// starting at `r·row_stride + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RowView {
    pub row_stride: usize,
    pub offset: usize,
}

impl RowView {
    /// Elements the value must hold for `rows` rows of `d` (0 when there are no rows).
    pub fn needed_len(&self, rows: usize, d: usize) -> Option<usize> {
        if rows == 0 {
            return Some(0);
        }
        (rows - 1)
            .checked_mul(self.row_stride)?
            .checked_add(self.offset)?
            .checked_add(d)
    }
}

/// The shapes and constants of one Hydra kernel; its inputs are the values holding Q, K, V.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hydra {
    pub batch: usize,
    pub tokens: usize,
    pub d: usize,
    /// `cumsum` over tokens (out_t sees tokens `0..=t`) instead of `reduce_sum`.
    pub causal: bool,
    /// The `eps` of the two `l2_normalize`s.
    pub eps_q: f32,
    pub eps_k: f32,
    /// How Q, K and V (kernel inputs 0, 1, 2) are read.
    pub views: [RowView; 3],
}

impl Hydra {
    /// `acc += φ(K_t) ⊙ V_t` for one token: inputs `[K row, V row, acc]` (all
    /// [`InputKind::Rows`]; the accumulator is read and written in place).
    pub fn kv_step(&self) -> RowProgram {
        let k = Expr::Input(0);
        let phi = Expr::bin(BinaryOp::Mul, k.clone(), inv_norm(self.eps_k));
        RowProgram {
            inputs: vec![InputKind::Rows; 3],
            params: 0,
            reductions: vec![Reduction::sum(Expr::un(UnaryOp::Square, k))],
            output: Expr::bin(
                BinaryOp::Add,
                Expr::Input(2),
                Expr::bin(BinaryOp::Mul, phi, Expr::Input(1)),
            ),
            fill: 0.0,
            zero_if_all_masked: false,
        }
    }

    /// `out_t = φ(Q_t) ⊙ kv`: inputs `[Q row, kv]` (a row and a [`InputKind::Vector`]).
    pub fn output_row(&self) -> RowProgram {
        let q = Expr::Input(0);
        let phi = Expr::bin(BinaryOp::Mul, q.clone(), inv_norm(self.eps_q));
        RowProgram {
            inputs: vec![InputKind::Rows, InputKind::Vector],
            params: 0,
            reductions: vec![Reduction::sum(Expr::un(UnaryOp::Square, q))],
            output: Expr::bin(BinaryOp::Mul, phi, Expr::Input(1)),
            fill: 0.0,
            zero_if_all_masked: false,
        }
    }

    /// Bytes a run must move at least: Q, K and V read once, the output written once.
    pub fn bytes(&self) -> u64 {
        (4 * 4 * self.batch * self.tokens * self.d) as u64
    }
}

/// `1 / max(√Reduced(0), eps)`: `l2_normalize`'s divisor, inverted once per row.
fn inv_norm(eps: f32) -> Expr {
    Expr::un(
        UnaryOp::Recip,
        Expr::bin(
            BinaryOp::Max,
            Expr::un(UnaryOp::Sqrt, Expr::Reduced(0)),
            Expr::Const(eps),
        ),
    )
}

// The sparse feed-forward kernel (found by `sparse_ff.rs`).

/// Trax's `SparseFF` without its output bias: inputs `h` (`rows × d`), `W1` (`d × units`),
/// `W2` (`units × d_out` rows, laid out as `w2_layout` says), then either the `logits`
/// (`rows × units`) or, with `controller = Some(L)`, the controller's weights `m1` (`d × L`),
/// `m2` (`L × units`) and `mb` (`units`), the logits being `(h·m1)·m2 + mb`; last, with
/// `bias`, `b1` (`units`). Output `rows × d_out`. For each row and each block of `block`
/// consecutive units, `u` is the first maximum of the row's logits in the block (a NaN never
/// wins) and `out += act(h · W1[:, u] + b1[u]) · W2[u, :]`; `act` maps 0 to 0 (ReLU in trax;
/// a dense layer converted by attnopt keeps its GELU), so unchosen units add nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SparseFf {
    pub rows: usize,
    pub d: usize,
    pub units: usize,
    pub block: usize,
    pub d_out: usize,
    pub w2_layout: W2Layout,
    /// The controller's rank when its two products run inside the kernel (one row: decoding,
    /// where they are bandwidth-bound vector-matrix products).
    pub controller: Option<usize>,
    /// The activation of a chosen unit (`act(0) = 0`).
    pub act: UnaryOp,
    /// Whether a bias `b1` is added before the activation (the last input).
    pub bias: bool,
}

/// Kernel input positions of a [`SparseFf`].
impl SparseFf {
    pub const H: usize = 0;
    pub const W1: usize = 1;
    pub const W2: usize = 2;
    /// The logits, or (with a controller) `m1`, then `m2` and `mb` after it.
    pub const LOGITS_OR_M1: usize = 3;

    /// The position of `b1`, when there is one.
    pub fn b1(&self) -> Option<usize> {
        let after = Self::LOGITS_OR_M1 + if self.controller.is_some() { 3 } else { 1 };
        self.bias.then_some(after)
    }
}

/// Where unit `u = x·block + y` (block `x`, element `y`) finds its row of `W2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum W2Layout {
    /// Row `u` of a `units × d_out` value.
    Units,
    /// Row `y·blocks + x` of trax's `[block, blocks, d_out]` value (its block and element axes
    /// swapped), read in place instead of permuted on every run.
    BlockSwapped,
}

impl SparseFf {
    /// Chosen units per row.
    pub fn blocks(&self) -> usize {
        self.units / self.block.max(1)
    }

    /// The row of `W2`'s value that unit `u` reads.
    pub fn w2_row(&self, u: usize) -> usize {
        match self.w2_layout {
            W2Layout::Units => u,
            W2Layout::BlockSwapped => {
                let block = self.block.max(1);
                (u % block) * self.blocks() + u / block
            }
        }
    }

    /// Multiply-adds ×2 of the chosen units (and one compare per logit), plus the controller's
    /// products when they run inside.
    pub fn flops(&self) -> u64 {
        let controller = self.controller.map_or(0, |r| 2 * r * (self.d + self.units));
        (self.rows * (self.blocks() * 2 * (self.d + self.d_out) + self.units + controller)) as u64
    }

    /// `h`, the logits and the output once, plus the chosen weights: at most every unit's
    /// column of `W1` and row of `W2` (f32), and the controller's weights when inside.
    pub fn bytes(&self) -> u64 {
        let chosen = (self.rows * self.blocks()).min(self.units);
        let controller = self
            .controller
            .map_or(0, |r| r * (self.d + self.units) + self.units);
        let b1 = if self.bias { chosen } else { 0 };
        (4 * (self.rows * (self.d + self.units + self.d_out)
            + chosen * (self.d + self.d_out)
            + b1
            + controller)) as u64
    }
}

// The factored product kernel (found by `factored.rs`).

/// Trax's `FactoredDense` product without its bias: inputs `x` (`rows × d`), gating `G`
/// (`modules × d`) and projection `P` (`d × module_dim`); output `rows × modules × module_dim`
/// with `y[r, s, m] = Σ_d x[r, d]·G[s, d]·P[d, m]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Factored {
    pub rows: usize,
    pub d: usize,
    pub modules: usize,
    pub module_dim: usize,
}

impl Factored {
    pub fn flops(&self) -> u64 {
        (2 * self.rows * self.d * self.modules * (self.module_dim + 1)) as u64
    }

    /// `x`, `G`, `P` and the output once (f32).
    pub fn bytes(&self) -> u64 {
        let out = self.rows * self.modules * self.module_dim;
        (4 * (self.rows * self.d + self.d * (self.modules + self.module_dim) + out)) as u64
    }
}
