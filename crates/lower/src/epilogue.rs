//! Epilogues of matrix products: the elementwise work fused after a product, as a row program,
//! and — where the program has the common shape `act(x + bias) + residual` — the same work in
//! structured form, which a backend may hand to its matrix-product library (oneDNN post-ops)
//! instead of running the program as an extra pass over the output.
//!
//! The row program is always the meaning; the structured form is only recognised from it
//! ([`Structured::of`]), never built separately, so the two cannot disagree. Nothing here knows
//! which backend or library will use it.

use serde::Serialize;

use crate::row::{BinaryOp, Expr, InputKind, RowProgram, UnaryOp};

/// What runs on a product's output: row program `program`, whose input `at` is the product
/// itself (its other inputs are the kernel's inputs after `a` and `b`, in order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Epilogue {
    pub program: RowProgram,
    pub at: usize,
    /// `program` as `act(x + bias) + residual`, when it has that shape.
    pub structured: Option<Structured>,
}

/// `out = activation(x + bias) + residual`, each part optional, `x` being the product. Indices
/// name inputs of the epilogue's row program (and so the kernel's inputs after `a` and `b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Structured {
    /// A vector of length n ([`InputKind::Vector`]) added to every row first.
    pub bias: Option<usize>,
    /// An activation applied next: one of [`Structured::ACTIVATIONS`].
    pub activation: Option<UnaryOp>,
    /// A full `rows × n` tensor ([`InputKind::Rows`]) added last.
    pub residual: Option<usize>,
}

impl Epilogue {
    /// An epilogue with its structured form recognised.
    pub fn new(program: RowProgram, at: usize) -> Epilogue {
        let structured = Structured::of(&program, at);
        Epilogue {
            program,
            at,
            structured,
        }
    }
}

impl Structured {
    /// The unary operators recognised as the activation.
    pub const ACTIVATIONS: [UnaryOp; 6] = [
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Relu,
        UnaryOp::Silu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
    ];

    /// The structured form of `program` (with input `at` the product), if it has exactly the
    /// shape `act(x + bias) + residual` with the additions in that order (either operand order
    /// of each addition). A program without reductions, parameters or causal fill only.
    pub fn of(program: &RowProgram, at: usize) -> Option<Structured> {
        if !program.reductions.is_empty() || program.params != 0 || program.fill != 0.0 {
            return None;
        }
        let kind = |e: &Expr, want: InputKind| match e {
            Expr::Input(i) if *i != at && program.inputs.get(*i) == Some(&want) => Some(*i),
            _ => None,
        };
        // x + bias, or x.
        let biased = |e: &Expr| -> Option<Option<usize>> {
            match e {
                Expr::Input(i) if *i == at => Some(None),
                Expr::Binary(BinaryOp::Add, l, r) => {
                    let (x, b) = if matches!(**l, Expr::Input(i) if i == at) {
                        (l, r)
                    } else {
                        (r, l)
                    };
                    if !matches!(**x, Expr::Input(i) if i == at) {
                        return None;
                    }
                    Some(Some(kind(b, InputKind::Vector)?))
                }
                _ => None,
            }
        };
        // act(x + bias), or x + bias.
        let activated = |e: &Expr| -> Option<(Option<usize>, Option<UnaryOp>)> {
            match e {
                Expr::Unary(op, inner) if Self::ACTIVATIONS.contains(op) => {
                    Some((biased(inner)?, Some(*op)))
                }
                _ => Some((biased(e)?, None)),
            }
        };
        let s = match activated(&program.output) {
            Some((bias, activation)) => Structured {
                bias,
                activation,
                residual: None,
            },
            None => {
                let Expr::Binary(BinaryOp::Add, l, r) = &program.output else {
                    return None;
                };
                let (body, residual) = match (activated(l), kind(r, InputKind::Rows)) {
                    (Some(body), Some(res)) => (body, res),
                    _ => (activated(r)?, kind(l, InputKind::Rows)?),
                };
                Structured {
                    bias: body.0,
                    activation: body.1,
                    residual: Some(residual),
                }
            }
        };
        // The bare product is no epilogue at all (and would not have been fused).
        (s.bias.is_some() || s.activation.is_some() || s.residual.is_some()).then_some(s)
    }

    /// A short name for breakdowns: `bias`, `bias+gelu`, `bias+residual`, ...
    pub fn name(&self) -> String {
        let mut parts = Vec::new();
        if self.bias.is_some() {
            parts.push("bias".to_string());
        }
        if let Some(a) = self.activation {
            parts.push(format!("{a:?}").to_lowercase());
        }
        if self.residual.is_some() {
            parts.push("residual".to_string());
        }
        parts.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_bias_activation_residual() {
        use InputKind::{Rows, Vector};
        let x = || Expr::input(0);
        let add = |a, b| Expr::bin(BinaryOp::Add, a, b);
        let p = RowProgram::elementwise(vec![Rows, Vector], add(x(), Expr::input(1)));
        assert_eq!(
            Structured::of(&p, 0),
            Some(Structured {
                bias: Some(1),
                activation: None,
                residual: None
            })
        );
        let p = RowProgram::elementwise(
            vec![Vector, Rows],
            Expr::un(UnaryOp::Gelu, add(Expr::input(0), Expr::input(1))),
        );
        let s = Structured::of(&p, 1).unwrap();
        assert_eq!((s.bias, s.activation), (Some(0), Some(UnaryOp::Gelu)));
        assert_eq!(s.name(), "bias+gelu");
        let p = RowProgram::elementwise(
            vec![Rows, Vector, Rows],
            add(Expr::input(2), add(x(), Expr::input(1))),
        );
        let s = Structured::of(&p, 0).unwrap();
        assert_eq!((s.bias, s.residual), (Some(1), Some(2)));
        assert_eq!(s.name(), "bias+residual");
        let p = RowProgram::elementwise(vec![Rows, Rows], add(x(), Expr::input(1)));
        let s = Structured::of(&p, 0).unwrap();
        assert_eq!((s.bias, s.activation, s.residual), (None, None, Some(1)));
    }

    #[test]
    fn rejects_other_shapes() {
        use InputKind::{Rows, Vector};
        let add = |a, b| Expr::bin(BinaryOp::Add, a, b);
        // A "bias" that is a full tensor, a residual that is a vector, a scaled product, the
        // additions in the other order, and an exponential (not an activation).
        for (inputs, out) in [
            (
                vec![Rows, Rows],
                Expr::un(UnaryOp::Gelu, add(Expr::input(0), Expr::input(1))),
            ),
            (
                vec![Rows, Vector],
                add(Expr::un(UnaryOp::Relu, Expr::input(0)), Expr::input(1)),
            ),
            (
                vec![Rows],
                Expr::bin(BinaryOp::Mul, Expr::input(0), Expr::Const(2.0)),
            ),
            (
                vec![Rows, Rows, Vector],
                Expr::un(
                    UnaryOp::Gelu,
                    add(add(Expr::input(0), Expr::input(1)), Expr::input(2)),
                ),
            ),
            (vec![Rows], Expr::un(UnaryOp::Exp, Expr::input(0))),
        ] {
            let p = RowProgram::elementwise(inputs, out);
            assert_eq!(Structured::of(&p, 0), None, "{:?}", p.output);
        }
    }
}
