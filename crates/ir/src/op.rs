//! The operator set: primitives that every supported architecture is written in.
//!
//! Attention stays visible as primitives (`matmul`, `scale`, masks, `softmax`, `matmul`) so
//! the rewriter can see `softmax(Q·Kᵀ·s)·V`. Every operator's meaning is defined by the
//! reference interpreter (`interp`), and its shapes by `infer`. Operators are plain data
//! (hashable, ordered, printable) so the e-graph layer can use them as its language.

use std::fmt;

use crate::{DType, Shape, WeightId};

/// An `f32` attribute stored by bit pattern, so operators can be `Eq + Hash + Ord`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scalar(u32);

impl Scalar {
    pub fn new(x: f32) -> Scalar {
        Scalar(x.to_bits())
    }
    pub fn get(self) -> f32 {
        f32::from_bits(self.0)
    }
}

impl fmt::Debug for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.get())
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.get())
    }
}

/// Elementwise functions of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unary {
    Neg,
    Exp,
    Sqrt,
    Rsqrt,
    Recip,
    Square,
    Tanh,
    Sigmoid,
    Relu,
    /// `x if x > 0 else exp(x) - 1` (ELU with α = 1).
    Elu,
    /// `x · Φ(x)` with the exact normal CDF (erf form).
    Gelu,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
    /// `x · sigmoid(x)`.
    Silu,
}

impl Unary {
    /// Every function, in declaration order.
    pub const ALL: [Unary; 13] = [
        Unary::Neg,
        Unary::Exp,
        Unary::Sqrt,
        Unary::Rsqrt,
        Unary::Recip,
        Unary::Square,
        Unary::Tanh,
        Unary::Sigmoid,
        Unary::Relu,
        Unary::Elu,
        Unary::Gelu,
        Unary::GeluTanh,
        Unary::Silu,
    ];

    /// The function whose operator is named `s` (the inverse of [`Op::name`]).
    pub fn from_name(s: &str) -> Option<Unary> {
        Unary::ALL.into_iter().find(|&u| Op::Unary(u).name() == s)
    }
}

/// Elementwise functions of two arguments, with NumPy broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
}

impl Binary {
    /// Every function, in declaration order.
    pub const ALL: [Binary; 5] = [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Max,
    ];

    /// The function whose operator is named `s` (the inverse of [`Op::name`]).
    pub fn from_name(s: &str) -> Option<Binary> {
        Binary::ALL.into_iter().find(|&b| Op::Binary(b).name() == s)
    }
}

/// Reductions over one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reduce {
    Sum,
    Max,
    Mean,
}

impl Reduce {
    /// Every reduction, in declaration order.
    pub const ALL: [Reduce; 3] = [Reduce::Sum, Reduce::Max, Reduce::Mean];

    /// The reduction whose operator is named `s` (`reduce_sum`, ...; the inverse of
    /// [`Op::name`]).
    pub fn from_name(s: &str) -> Option<Reduce> {
        Reduce::ALL.into_iter().find(|&kind| {
            Op::Reduce {
                kind,
                axis: 0,
                keep_dim: false,
            }
            .name()
                == s
        })
    }
}

/// How rotary embeddings pair up features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RopeStyle {
    /// Feature `i` pairs with `i + d/2` (LLaMA / GPT-NeoX `rotate_half`).
    Half,
    /// Feature `2i` pairs with `2i + 1` (GPT-J, original RoFormer).
    Interleaved,
}

impl RopeStyle {
    /// Every style, in declaration order.
    pub const ALL: [RopeStyle; 2] = [RopeStyle::Half, RopeStyle::Interleaved];
}

/// One operator. Operand order and meaning are documented per variant; shapes use `B`
/// (batch), `N` (tokens), `H` (heads), `D` (features).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// A run-time input, named like the Hugging Face forward argument. Float inputs are f32,
    /// integer inputs (ids, masks) i64.
    Input {
        name: String,
        dtype: DType,
        shape: Shape,
    },
    /// A checkpoint weight (see `Graph::weight`).
    Weight(WeightId),
    /// `f(x)` elementwise.
    Unary(Unary),
    /// `f(a, b)` elementwise with broadcasting.
    Binary(Binary),
    /// `x · c`.
    Scale(Scalar),
    /// `x + c`.
    AddScalar(Scalar),
    /// `[.., M, K] × [.., K, N] → [.., M, N]`; leading axes broadcast.
    MatMul,
    /// Reorders axes: output axis `i` is input axis `perm[i]`.
    Permute(Vec<usize>),
    /// Same elements, new shape (row-major); may use `B` and `N`.
    Reshape(Shape),
    /// Broadcasts to a shape (size-1 axes stretch; new axes on the left).
    Expand(Shape),
    /// `[B, N, H·Dh] → [B, H, N, Dh]`.
    SplitHeads { heads: usize },
    /// `[B, H, N, Dh] → [B, N, H·Dh]`.
    MergeHeads,
    /// Grouped-query attention: `[B, Hkv, N, Dh] → [B, Hkv·times, N, Dh]`, each head repeated
    /// `times` times in place (`repeat_interleave` on axis 1).
    RepeatHeads { times: usize },
    /// Softmax over `axis`. A row whose entries are all `-inf` (fully masked) becomes zeros.
    Softmax { axis: usize },
    /// Scores `[.., Nq, Nk]`: entry (i, j) becomes `-inf` when key `j` lies in query `i`'s
    /// future, i.e. `j > i + (Nk − Nq)`.
    CausalMask,
    /// Scores `[.., Nq, Nk]`: entry (i, j) becomes `0` where [`Op::CausalMask`] would put
    /// `-inf` (causal *linear* attention, which has no softmax).
    Tril,
    /// `(scores [B, H, Nq, Nk], mask [B, Nk])`: entry (b, ·, ·, j) becomes `-inf` where
    /// `mask[b, j] == 0` (Hugging Face `attention_mask` convention: 1 keeps, 0 masks).
    PaddingMask,
    /// Reduction over `axis`; `keep_dim` leaves a size-1 axis.
    Reduce {
        kind: Reduce,
        axis: usize,
        keep_dim: bool,
    },
    /// Inclusive prefix sum over `axis`.
    CumSum { axis: usize },
    /// `x / max(‖x‖₂, eps)` over `axis`.
    L2Normalize { axis: usize, eps: Scalar },
    /// `(x, γ, β)`: `(x − mean)/√(var + eps)·γ + β` over the last axis (biased variance).
    LayerNorm { eps: Scalar },
    /// `(x, γ)`: `x / √(mean(x²) + eps) · γ` over the last axis.
    RmsNorm { eps: Scalar },
    /// `(table [V, D], ids [..])` → `[.., D]`: row lookup. An id outside `0..V` is an error.
    Gather,
    /// Rotary position embedding on `[B, H, N, Dh]`, position of token `t` being `P + t`
    /// (`P`: the tokens held in a decoding state before this run, `Sym::Past`; 0 in a graph
    /// without state), frequencies `theta^(−2i/Dh)`.
    Rope { theta: Scalar, style: RopeStyle },
    /// Inserts a size-1 axis at position `axis` (`0..=rank`).
    Unsqueeze { axis: usize },
    /// Removes the size-1 axis `axis`.
    Squeeze { axis: usize },
    /// Converts elements to `dtype`'s compute type (`F32` or `I64`; floats truncate toward 0).
    Cast(DType),
    /// Joins operands along `axis`.
    Concat { axis: usize },
    /// `x[.., start..end, ..]` along `axis`.
    Slice {
        axis: usize,
        start: usize,
        end: crate::Dim,
    },
    /// `[B, N, S, C] → [B, N, S, length·width·C]`: the zero-padded windows of a convolution
    /// over tokens (causal: the `length` rows ending at the token) and modules (centred:
    /// `width` odd). Output feature `(i·width + j)·C + c` of `(b, t, s)` is
    /// `x[b, t + i − (length − 1), s + j − (width − 1)/2, c]`, or 0 outside the input
    /// (`im2col`; trax's `LocallyConvDense`, docs/SPARSE.md).
    ConvWindows { length: usize, width: usize },
    /// `[.., F] → [.., F]`: 1 at the first maximum of every block of `block` consecutive
    /// entries of the last axis, 0 elsewhere (`F` a multiple of `block`; a NaN entry never
    /// wins). The sparse feed-forward controller's choice (trax's `SparseFF`, docs/SPARSE.md).
    BlockOneHot { block: usize },
}

impl Op {
    /// Short lower-case name, as used in the text form and DOT export.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Weight(_) => "weight",
            Op::Unary(u) => match u {
                Unary::Neg => "neg",
                Unary::Exp => "exp",
                Unary::Sqrt => "sqrt",
                Unary::Rsqrt => "rsqrt",
                Unary::Recip => "recip",
                Unary::Square => "square",
                Unary::Tanh => "tanh",
                Unary::Sigmoid => "sigmoid",
                Unary::Relu => "relu",
                Unary::Elu => "elu",
                Unary::Gelu => "gelu",
                Unary::GeluTanh => "gelu_tanh",
                Unary::Silu => "silu",
            },
            Op::Binary(b) => match b {
                Binary::Add => "add",
                Binary::Sub => "sub",
                Binary::Mul => "mul",
                Binary::Div => "div",
                Binary::Max => "max",
            },
            Op::Scale(_) => "scale",
            Op::AddScalar(_) => "add_scalar",
            Op::MatMul => "matmul",
            Op::Permute(_) => "permute",
            Op::Reshape(_) => "reshape",
            Op::Expand(_) => "expand",
            Op::SplitHeads { .. } => "split_heads",
            Op::MergeHeads => "merge_heads",
            Op::RepeatHeads { .. } => "repeat_heads",
            Op::Softmax { .. } => "softmax",
            Op::CausalMask => "causal_mask",
            Op::Tril => "tril",
            Op::Cast(_) => "cast",
            Op::PaddingMask => "padding_mask",
            Op::Reduce { kind, .. } => match kind {
                Reduce::Sum => "reduce_sum",
                Reduce::Max => "reduce_max",
                Reduce::Mean => "reduce_mean",
            },
            Op::CumSum { .. } => "cumsum",
            Op::Unsqueeze { .. } => "unsqueeze",
            Op::Squeeze { .. } => "squeeze",
            Op::L2Normalize { .. } => "l2_normalize",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Gather => "gather",
            Op::Rope { .. } => "rope",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::ConvWindows { .. } => "conv_windows",
            Op::BlockOneHot { .. } => "block_onehot",
        }
    }

    /// One operator of every name, attributes defaulted (`axis=0`, `eps=0.0`, ...): the
    /// operator set as data, so that the reverse of [`Op::name`] is derived from it rather than
    /// written out a second time. A new variant must be added here (the text-form parser looks
    /// names up in this list, and its tests check every name round-trips).
    pub fn kinds() -> Vec<Op> {
        let zero = Scalar::new(0.0);
        let mut v = vec![
            Op::Input {
                name: String::new(),
                dtype: DType::F32,
                shape: Shape::default(),
            },
            Op::Weight(WeightId(0)),
        ];
        v.extend(Unary::ALL.map(Op::Unary));
        v.extend(Binary::ALL.map(Op::Binary));
        v.extend([
            Op::Scale(zero),
            Op::AddScalar(zero),
            Op::MatMul,
            Op::Permute(Vec::new()),
            Op::Reshape(Shape::default()),
            Op::Expand(Shape::default()),
            Op::SplitHeads { heads: 0 },
            Op::MergeHeads,
            Op::RepeatHeads { times: 0 },
            Op::Softmax { axis: 0 },
            Op::CausalMask,
            Op::Tril,
            Op::PaddingMask,
        ]);
        v.extend(Reduce::ALL.map(|kind| Op::Reduce {
            kind,
            axis: 0,
            keep_dim: false,
        }));
        v.extend([
            Op::CumSum { axis: 0 },
            Op::Unsqueeze { axis: 0 },
            Op::Squeeze { axis: 0 },
            Op::L2Normalize { axis: 0, eps: zero },
            Op::LayerNorm { eps: zero },
            Op::RmsNorm { eps: zero },
            Op::Gather,
            Op::Rope {
                theta: zero,
                style: RopeStyle::Half,
            },
            Op::Cast(DType::F32),
            Op::Concat { axis: 0 },
            Op::Slice {
                axis: 0,
                start: 0,
                end: crate::Dim::Fixed(0),
            },
            Op::ConvWindows {
                length: 0,
                width: 0,
            },
            Op::BlockOneHot { block: 0 },
        ]);
        v
    }

    /// The operator named `s`, attributes defaulted as in [`Op::kinds`].
    pub fn from_name(s: &str) -> Option<Op> {
        // Built once: the graph parser asks for every node of a model (80-layer models have
        // tens of thousands), and `kinds` allocates its whole list.
        static BY_NAME: std::sync::OnceLock<std::collections::HashMap<&'static str, Op>> =
            std::sync::OnceLock::new();
        BY_NAME
            .get_or_init(|| {
                let mut m = std::collections::HashMap::new();
                for op in Op::kinds() {
                    m.entry(op.name()).or_insert(op);
                }
                m
            })
            .get(s)
            .cloned()
    }

    /// How many operands the operator takes; `None` for variadic (`concat`).
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Op::Input { .. } | Op::Weight(_) => 0,
            Op::Binary(_) | Op::MatMul | Op::PaddingMask | Op::RmsNorm { .. } | Op::Gather => 2,
            Op::LayerNorm { .. } => 3,
            Op::Concat { .. } => return None,
            _ => 1,
        })
    }
}

/// The attribute part of the text form, e.g. `softmax{axis=3}`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Op::Input { name, dtype, shape } => {
                f.write_str("{name=")?;
                crate::print::write_name(f, name)?;
                write!(f, ", dtype={dtype}, shape={shape}}}")
            }
            Op::Weight(id) => write!(f, "{{id={}}}", id.0),
            Op::Scale(c) | Op::AddScalar(c) => write!(f, "{{{c}}}"),
            Op::Permute(p) => write!(f, "{{perm={p:?}}}"),
            Op::Reshape(s) | Op::Expand(s) => write!(f, "{{shape={s}}}"),
            Op::SplitHeads { heads } => write!(f, "{{heads={heads}}}"),
            Op::Cast(d) => write!(f, "{{dtype={d}}}"),
            Op::RepeatHeads { times } => write!(f, "{{times={times}}}"),
            Op::Softmax { axis }
            | Op::CumSum { axis }
            | Op::Concat { axis }
            | Op::Unsqueeze { axis }
            | Op::Squeeze { axis } => {
                write!(f, "{{axis={axis}}}")
            }
            Op::Reduce { axis, keep_dim, .. } => write!(f, "{{axis={axis}, keep_dim={keep_dim}}}"),
            Op::L2Normalize { axis, eps } => write!(f, "{{axis={axis}, eps={eps}}}"),
            Op::LayerNorm { eps } | Op::RmsNorm { eps } => write!(f, "{{eps={eps}}}"),
            Op::Rope { theta, style } => write!(f, "{{theta={theta}, style={style:?}}}"),
            Op::Slice { axis, start, end } => {
                write!(f, "{{axis={axis}, start={start}, end={end}}}")
            }
            Op::ConvWindows { length, width } => write!(f, "{{length={length}, width={width}}}"),
            Op::BlockOneHot { block } => write!(f, "{{block={block}}}"),
            _ => Ok(()),
        }
    }
}
