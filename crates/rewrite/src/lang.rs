//! The e-graph language: ir operators with their attributes as leaf children.
//!
//! egg matches patterns on e-nodes whose only data is an operator symbol, so an operator's
//! attributes (axes, scales, shapes) become leaf e-nodes ([`Attr`]) placed *before* its operands:
//! `Op::Scale(0.125)` applied to `x` is `(scale 0.125 x)`, `Op::Permute([0,1,3,2])` is
//! `(permute d:0.1.3.2 x)`. Rules can then bind attributes to pattern variables and move them.
//! A block's external values are `in:k` leaves and its weights `w:k` leaves.
//!
//! [`encode`] and [`decode`] are the only translation between `ir::Op` and this language, and
//! [`TensorLang::decode_op`] the only place an operator e-node is split into its operator
//! (attributes decoded) and operands.
//!
//! This module knows the language only: it never types, costs or rewrites a node.

use std::fmt;
use std::str::FromStr;

use attnopt_ir::{DType, Dim, Op, RopeStyle, Scalar, Sym};
use egg::{Id, Language, Symbol};

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attr {
    Int(i64),
    Float(Scalar),
    /// A permutation or a shape; printed `d:B.N.32` (`d:` alone for the empty list).
    Dims(Vec<Dim>),
}

/// One e-node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorLang {
    /// An operator (by its ir name) applied to attribute leaves, then operands.
    Op(Symbol, Vec<Id>),
    Attr(Attr),
    /// The block's `k`-th external input.
    Input(u32),
    /// The block's `k`-th weight.
    Weight(u32),
}

impl Language for TensorLang {
    type Discriminant = std::mem::Discriminant<TensorLang>;

    fn discriminant(&self) -> Self::Discriminant {
        std::mem::discriminant(self)
    }

    fn matches(&self, other: &Self) -> bool {
        match (self, other) {
            (TensorLang::Op(a, x), TensorLang::Op(b, y)) => a == b && x.len() == y.len(),
            _ => self == other,
        }
    }

    fn children(&self) -> &[Id] {
        match self {
            TensorLang::Op(_, c) => c,
            _ => &[],
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            TensorLang::Op(_, c) => c,
            _ => &mut [],
        }
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Int(i) => write!(f, "{i}"),
            Attr::Float(x) => {
                let s = format!("{:?}", x.get());
                // Keep floats distinguishable from ints when read back.
                if s.contains(['.', 'e', 'n', 'i']) {
                    f.write_str(&s)
                } else {
                    write!(f, "{s}.0")
                }
            }
            Attr::Dims(d) => {
                f.write_str("d:")?;
                for (i, x) in d.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Attr {
    type Err = String;

    fn from_str(s: &str) -> Result<Attr, String> {
        if let Some(rest) = s.strip_prefix("d:") {
            if rest.is_empty() {
                return Ok(Attr::Dims(vec![]));
            }
            let dims = rest
                .split('.')
                .map(|p| match p.parse::<usize>() {
                    Ok(n) => Ok(Dim::Fixed(n)),
                    Err(_) => Sym::from_name(p)
                        .map(Dim::Sym)
                        .ok_or_else(|| format!("bad dimension `{p}` in `{s}`")),
                })
                .collect::<Result<_, _>>()?;
            return Ok(Attr::Dims(dims));
        }
        if let Ok(i) = s.parse::<i64>() {
            return Ok(Attr::Int(i));
        }
        if s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
            if let Ok(x) = s.parse::<f32>() {
                return Ok(Attr::Float(Scalar::new(x)));
            }
        }
        Err(format!("`{s}` is not an attribute"))
    }
}

impl fmt::Display for TensorLang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorLang::Op(s, _) => write!(f, "{s}"),
            TensorLang::Attr(a) => write!(f, "{a}"),
            TensorLang::Input(k) => write!(f, "in:{k}"),
            TensorLang::Weight(k) => write!(f, "w:{k}"),
        }
    }
}

/// `op` is not an operator or leaf this language knows, or has the wrong number of children.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseNodeError(pub String);

impl egg::FromOp for TensorLang {
    type Error = ParseNodeError;

    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, Self::Error> {
        if children.is_empty() {
            if let Some(k) = op.strip_prefix("in:") {
                return k
                    .parse()
                    .map(TensorLang::Input)
                    .map_err(|_| ParseNodeError(format!("bad input leaf `{op}`")));
            }
            if let Some(k) = op.strip_prefix("w:") {
                return k
                    .parse()
                    .map(TensorLang::Weight)
                    .map_err(|_| ParseNodeError(format!("bad weight leaf `{op}`")));
            }
            if let Ok(a) = op.parse::<Attr>() {
                return Ok(TensorLang::Attr(a));
            }
        }
        let Some((attrs, operands)) = signature(op) else {
            return Err(ParseNodeError(format!("unknown operator `{op}`")));
        };
        let ok = match operands {
            Some(n) => children.len() == attrs + n,
            None => children.len() > attrs,
        };
        if !ok {
            let want = match operands {
                Some(n) => format!("{attrs} attribute(s) then {n} operand(s)"),
                None => format!("{attrs} attribute(s) then one or more operands"),
            };
            return Err(ParseNodeError(format!(
                "`{op}` takes {want}, got {} children",
                children.len()
            )));
        }
        Ok(TensorLang::Op(Symbol::from(op), children))
    }
}

/// Why an e-node is not a decodable ir operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("not an operator")]
    Leaf,
    #[error("unknown operator {0}")]
    Unknown(Symbol),
    #[error("{0}: an attribute position holds a tensor")]
    AttrIsTensor(Symbol),
    #[error("{0}: attributes do not fit")]
    AttrsMisfit(Symbol),
}

impl TensorLang {
    /// An operator e-node as its ir operator (attributes decoded) and its operand children.
    /// `attr(c)` is the value of attribute child `c`, or `None` if `c` is not an attribute.
    pub fn decode_op(&self, attr: impl Fn(Id) -> Option<Attr>) -> Result<(Op, &[Id]), NodeError> {
        let TensorLang::Op(name, children) = self else {
            return Err(NodeError::Leaf);
        };
        let (n_attrs, _) = signature(name.as_str()).ok_or(NodeError::Unknown(*name))?;
        let (attr_ids, operands) = children
            .split_at_checked(n_attrs)
            .ok_or(NodeError::AttrsMisfit(*name))?;
        let attrs = attr_ids
            .iter()
            .map(|&c| attr(c).ok_or(NodeError::AttrIsTensor(*name)))
            .collect::<Result<Vec<_>, _>>()?;
        let op = decode(name.as_str(), &attrs).ok_or(NodeError::AttrsMisfit(*name))?;
        Ok((op, operands))
    }
}

/// `(attribute count, operand count)` of the operator named `name` (`None` operands: variadic).
pub fn signature(name: &str) -> Option<(usize, Option<usize>)> {
    let op = Op::from_name(name)?;
    if matches!(op, Op::Input { .. } | Op::Weight(_)) {
        return None;
    }
    Some((encode(&op).1.len(), op.arity()))
}

const F32_CODE: i64 = 0;
const I64_CODE: i64 = 1;

/// An ir operator as (name, attribute leaves). Leaves (`Input`, `Weight`) have no encoding.
pub fn encode(op: &Op) -> (&'static str, Vec<Attr>) {
    let int = |x: usize| Attr::Int(x as i64);
    let attrs = match op {
        Op::Scale(c) | Op::AddScalar(c) => vec![Attr::Float(*c)],
        Op::Permute(p) => vec![Attr::Dims(p.iter().map(|&x| Dim::Fixed(x)).collect())],
        Op::Reshape(s) | Op::Expand(s) => vec![Attr::Dims(s.0.clone())],
        Op::SplitHeads { heads: n } | Op::RepeatHeads { times: n } => vec![int(*n)],
        Op::Softmax { axis }
        | Op::CumSum { axis }
        | Op::Concat { axis }
        | Op::Unsqueeze { axis }
        | Op::Squeeze { axis } => vec![int(*axis)],
        Op::Reduce { axis, keep_dim, .. } => vec![int(*axis), Attr::Int(*keep_dim as i64)],
        Op::L2Normalize { axis, eps } => vec![int(*axis), Attr::Float(*eps)],
        Op::LayerNorm { eps } | Op::RmsNorm { eps } => vec![Attr::Float(*eps)],
        Op::Rope { theta, style } => vec![
            Attr::Float(*theta),
            Attr::Int((*style == RopeStyle::Interleaved) as i64),
        ],
        Op::Cast(d) => vec![Attr::Int(if d.compute() == DType::F32 {
            F32_CODE
        } else {
            I64_CODE
        })],
        Op::Slice { axis, start, end } => vec![int(*axis), int(*start), Attr::Dims(vec![*end])],
        Op::ConvWindows { length, width } => vec![int(*length), int(*width)],
        Op::BlockOneHot { block } => vec![int(*block)],
        _ => vec![],
    };
    (op.name(), attrs)
}

/// The ir operator named `name` with attribute values `attrs`; `None` if they do not fit.
pub fn decode(name: &str, attrs: &[Attr]) -> Option<Op> {
    let op = Op::from_name(name)?;
    let uint = |a: &Attr| match a {
        Attr::Int(i) if *i >= 0 => Some(*i as usize),
        _ => None,
    };
    let float = |a: &Attr| match a {
        Attr::Float(x) => Some(*x),
        _ => None,
    };
    let dims = |a: &Attr| match a {
        Attr::Dims(d) => Some(d.clone()),
        _ => None,
    };
    let fixed = |d: Vec<Dim>| {
        d.into_iter()
            .map(|x| x.fixed())
            .collect::<Option<Vec<usize>>>()
    };
    let flag = |a: &Attr| match a {
        Attr::Int(0) => Some(false),
        Attr::Int(1) => Some(true),
        _ => None,
    };
    let n = encode(&op).1.len();
    if attrs.len() != n {
        return None;
    }
    Some(match op {
        Op::Scale(_) => Op::Scale(float(&attrs[0])?),
        Op::AddScalar(_) => Op::AddScalar(float(&attrs[0])?),
        Op::Permute(_) => Op::Permute(fixed(dims(&attrs[0])?)?),
        Op::Reshape(_) => Op::Reshape(attnopt_ir::Shape(dims(&attrs[0])?)),
        Op::Expand(_) => Op::Expand(attnopt_ir::Shape(dims(&attrs[0])?)),
        Op::SplitHeads { .. } => Op::SplitHeads {
            heads: uint(&attrs[0])?,
        },
        Op::RepeatHeads { .. } => Op::RepeatHeads {
            times: uint(&attrs[0])?,
        },
        Op::Softmax { .. } => Op::Softmax {
            axis: uint(&attrs[0])?,
        },
        Op::CumSum { .. } => Op::CumSum {
            axis: uint(&attrs[0])?,
        },
        Op::Concat { .. } => Op::Concat {
            axis: uint(&attrs[0])?,
        },
        Op::Unsqueeze { .. } => Op::Unsqueeze {
            axis: uint(&attrs[0])?,
        },
        Op::Squeeze { .. } => Op::Squeeze {
            axis: uint(&attrs[0])?,
        },
        Op::Reduce { kind, .. } => Op::Reduce {
            kind,
            axis: uint(&attrs[0])?,
            keep_dim: flag(&attrs[1])?,
        },
        Op::L2Normalize { .. } => Op::L2Normalize {
            axis: uint(&attrs[0])?,
            eps: float(&attrs[1])?,
        },
        Op::LayerNorm { .. } => Op::LayerNorm {
            eps: float(&attrs[0])?,
        },
        Op::RmsNorm { .. } => Op::RmsNorm {
            eps: float(&attrs[0])?,
        },
        Op::Rope { .. } => Op::Rope {
            theta: float(&attrs[0])?,
            style: if flag(&attrs[1])? {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Half
            },
        },
        Op::Cast(_) => Op::Cast(match attrs[0] {
            Attr::Int(F32_CODE) => DType::F32,
            Attr::Int(I64_CODE) => DType::I64,
            _ => return None,
        }),
        Op::Slice { .. } => {
            let end = dims(&attrs[2])?;
            let [end] = end[..] else { return None };
            Op::Slice {
                axis: uint(&attrs[0])?,
                start: uint(&attrs[1])?,
                end,
            }
        }
        Op::ConvWindows { .. } => Op::ConvWindows {
            length: uint(&attrs[0])?,
            width: uint(&attrs[1])?,
        },
        Op::BlockOneHot { .. } => Op::BlockOneHot {
            block: uint(&attrs[0])?,
        },
        Op::Input { .. } | Op::Weight(_) => return None,
        other => other,
    })
}
