//! Row programs (`lower::RowProgram`) as GPU kernels: one block per row, the block's threads
//! striding over the row's columns; each reduction a block-wide reduction; the output written
//! `fill` past the row's valid length. Used for `KernelKind::Row` and for products' epilogues
//! (in place over the product's output). [`expr`] translates a row expression for any
//! addressing of its inputs (the Hydra kernels reuse it for their row programs).
//!
//! Never: change a program's meaning (`RowProgram::eval_reference` is it).

use attnopt_lower::row::{BinaryOp, Expr as RowExpr, InputKind, ReduceKind, RowProgram, UnaryOp};

use crate::error::{GpuError, Result};
use crate::kbuild::{block_index, grid_for, threads_for, Combine, KernelBuilder};
use crate::kir::{BinOp, Expr, Scalar, UnOp, Var};

/// Which columns of row `r` are valid.
#[derive(Debug, Clone, Copy)]
pub enum Valid {
    /// All `d`.
    Full,
    /// `min(d, (r mod queries) + 1 + offset)` (causal attention rows).
    Causal { queries: usize, offset: usize },
}

/// The kernel for `program` over `rows × d`: parameters `in0..` (one per program input), then
/// `out`. An epilogue binds its product input and `out` to the same memory (each thread reads
/// and writes only its own elements).
pub fn row_kernel(
    name: &str,
    doc: Vec<String>,
    program: &RowProgram,
    rows: usize,
    d: usize,
    valid: Valid,
) -> Result<crate::kir::GpuKernel> {
    if program.params > 0 {
        return Err(GpuError::NotSupported(
            "row programs with run-time parameters".into(),
        ));
    }
    let mut b = KernelBuilder::new(name, doc, grid_for(rows), threads_for(d, 256));
    let ins: Vec<usize> = (0..program.inputs.len())
        .map(|i| b.param(&format!("in{i}"), Scalar::F32, false))
        .collect();
    let out = b.param("out", Scalar::F32, true);
    let r = b.let_(Scalar::I64, block_index());
    // Blocks past the last row (a grid rounded up in y) do nothing.
    let live = Expr::Var(r).lt(Expr::I64(rows as i64));
    let mut scratch = None;
    let kinds = program.inputs.clone();
    let addr = move |i: usize, c: Expr| -> Expr {
        Expr::load(ins[i], input_index(kinds[i], Expr::Var(r), c, d))
    };
    // Every thread runs the reductions (barriers need the whole block); a block past the last
    // row computes with row 0's addresses clamped away by `valid = 0`.
    let valid_e = match valid {
        Valid::Full => Expr::I64(d as i64),
        Valid::Causal { queries, offset } => Expr::bin(
            BinOp::Min,
            Expr::I64(d as i64),
            Expr::Var(r)
                .rem(Expr::I64(queries.max(1) as i64))
                .add(Expr::I64(1 + offset as i64)),
        ),
    };
    let nvalid = b.let_(
        Scalar::I64,
        Expr::select(live.clone(), valid_e, Expr::I64(0)),
    );
    let mut reduced: Vec<Var> = Vec::new();
    for red in &program.reductions {
        let op = match red.kind {
            ReduceKind::Sum => Combine::Sum,
            ReduceKind::Max => Combine::Max,
        };
        let acc = b.let_(Scalar::F32, op.identity());
        let mut done = reduced.clone();
        let red_expr = hoist(&mut b, &red.expr, &mut done)?;
        b.for_threads(Expr::Var(nvalid), |b, c| {
            let x = expr(b, &red_expr, &|i| addr(i, Expr::Var(c)), &done)?;
            b.assign(acc, op.apply(Expr::Var(acc), x));
            Ok(())
        })?;
        b.block_reduce(acc, op, &mut scratch);
        reduced.push(acc);
    }
    let all_masked = if program.zero_if_all_masked && !reduced.is_empty() {
        Expr::bin(
            BinOp::Eq,
            Expr::Var(reduced[0]),
            Expr::F32(f32::NEG_INFINITY),
        )
    } else {
        Expr::I64(0)
    };
    let masked = b.let_(Scalar::I64, all_masked);
    let fill = program.fill;
    // What depends only on the row (`1 / sqrt(var + eps)`), once per row, not per column.
    let output = hoist(&mut b, &program.output, &mut reduced)?;
    b.if_(live, |b| {
        b.for_threads(Expr::I64(d as i64), |b, c| {
            let keep = Expr::bin(
                BinOp::And,
                Expr::Var(c).lt(Expr::Var(nvalid)),
                Expr::bin(BinOp::Eq, Expr::Var(masked), Expr::I64(0)),
            );
            let res = b.let_(Scalar::F32, Expr::F32(fill));
            b.if_(keep, |b| {
                let x = expr(b, &output, &|i| addr(i, Expr::Var(c)), &reduced)?;
                b.assign(res, x);
                Ok(())
            })?;
            b.store(
                out,
                Expr::Var(r).mul(Expr::I64(d as i64)).add(Expr::Var(c)),
                Expr::Var(res),
            );
            Ok(())
        })
    })?;
    Ok(b.finish())
}

/// Where a row program's input of kind `kind` holds its element for row `r`, column `c`, in
/// rows of `d` columns (the addressing `InputKind` defines).
pub fn input_index(kind: InputKind, r: Expr, c: Expr, d: usize) -> Expr {
    let row = |x: Expr| x.mul(Expr::I64(d as i64)).add(c.clone());
    match kind {
        InputKind::Rows => row(r),
        InputKind::Vector => c.clone(),
        InputKind::GroupVector { rows_per_group } => {
            row(r.div(Expr::I64(rows_per_group.max(1) as i64)))
        }
        InputKind::Cycle { period } => row(r.rem(Expr::I64(period.max(1) as i64))),
    }
}

fn reads_inputs(e: &RowExpr) -> bool {
    match e {
        RowExpr::Input(_) | RowExpr::Param(_) => true,
        RowExpr::Const(_) | RowExpr::Reduced(_) => false,
        RowExpr::Unary(_, a) => reads_inputs(a),
        RowExpr::Binary(_, a, c) => reads_inputs(a) || reads_inputs(c),
    }
}

/// `e` with every largest subexpression that reads no input (only constants and reduction
/// results) computed now, into a new variable appended to `reduced`, and replaced by a
/// `Reduced` reference to it: per-row work done once per row.
pub fn hoist(b: &mut KernelBuilder, e: &RowExpr, reduced: &mut Vec<Var>) -> Result<RowExpr> {
    Ok(match e {
        RowExpr::Unary(..) | RowExpr::Binary(..) if !reads_inputs(e) => {
            let x = expr(b, e, &|_| Expr::F32(0.0), reduced)?;
            reduced.push(b.let_(Scalar::F32, x));
            RowExpr::Reduced(reduced.len() - 1)
        }
        RowExpr::Unary(op, a) => RowExpr::Unary(*op, Box::new(hoist(b, a, reduced)?)),
        RowExpr::Binary(op, a, c) => RowExpr::Binary(
            *op,
            Box::new(hoist(b, a, reduced)?),
            Box::new(hoist(b, c, reduced)?),
        ),
        leaf => leaf.clone(),
    })
}

/// `e` at one column, inputs read by `input(i)`, reduction results in `reduced`. Operands used
/// twice are held in a variable first, so the expression never grows exponentially.
pub fn expr(
    b: &mut KernelBuilder,
    e: &RowExpr,
    input: &dyn Fn(usize) -> Expr,
    reduced: &[Var],
) -> Result<Expr> {
    Ok(match e {
        RowExpr::Input(i) => input(*i),
        RowExpr::Const(c) => Expr::F32(*c),
        RowExpr::Reduced(k) => Expr::Var(*reduced.get(*k).ok_or_else(|| {
            GpuError::NotSupported(format!("a row expression reading reduction {k} early"))
        })?),
        RowExpr::Param(_) => {
            return Err(GpuError::NotSupported(
                "row programs with run-time parameters".into(),
            ))
        }
        RowExpr::Unary(op, a) => {
            let x = expr(b, a, input, reduced)?;
            unary(b, *op, x)
        }
        RowExpr::Binary(op, l, r) => {
            let (x, y) = (expr(b, l, input, reduced)?, expr(b, r, input, reduced)?);
            let op = match op {
                BinaryOp::Add => BinOp::Add,
                BinaryOp::Sub => BinOp::Sub,
                BinaryOp::Mul => BinOp::Mul,
                BinaryOp::Div => BinOp::Div,
                BinaryOp::Max => BinOp::Max,
                BinaryOp::Min => BinOp::Min,
            };
            Expr::bin(op, x, y)
        }
    })
}

/// One elementwise function of the lowering's vocabulary, in the IR's operations.
pub fn unary(b: &mut KernelBuilder, op: UnaryOp, x: Expr) -> Expr {
    let one = || Expr::F32(1.0);
    let mut held = || Expr::Var(b.let_(Scalar::F32, x.clone()));
    match op {
        UnaryOp::Neg => Expr::un(UnOp::Neg, x),
        UnaryOp::Exp => Expr::un(UnOp::Exp, x),
        UnaryOp::Sqrt => Expr::un(UnOp::Sqrt, x),
        UnaryOp::Recip => one().div(x),
        UnaryOp::Square => {
            let v = held();
            v.clone().mul(v)
        }
        UnaryOp::Tanh => Expr::un(UnOp::Tanh, x),
        UnaryOp::Sigmoid => one().div(one().add(Expr::un(UnOp::Exp, Expr::un(UnOp::Neg, x)))),
        UnaryOp::Relu => Expr::bin(BinOp::Max, x, Expr::F32(0.0)),
        UnaryOp::Elu => {
            let v = held();
            Expr::select(
                Expr::bin(BinOp::Lt, Expr::F32(0.0), v.clone()),
                v.clone(),
                Expr::un(UnOp::Exp, v).sub(one()),
            )
        }
        UnaryOp::Gelu => {
            let v = held();
            Expr::F32(0.5).mul(v.clone()).mul(one().add(Expr::un(
                UnOp::Erf,
                v.mul(Expr::F32(std::f32::consts::FRAC_1_SQRT_2)),
            )))
        }
        UnaryOp::GeluTanh => {
            let v = held();
            let c = (2.0f64 / std::f64::consts::PI).sqrt() as f32;
            let cube = v.clone().mul(v.clone()).mul(v.clone());
            let inner = Expr::F32(c).mul(v.clone().add(Expr::F32(0.044715).mul(cube)));
            Expr::F32(0.5)
                .mul(v)
                .mul(one().add(Expr::un(UnOp::Tanh, inner)))
        }
        UnaryOp::Silu => {
            let v = held();
            v.clone()
                .div(one().add(Expr::un(UnOp::Exp, Expr::un(UnOp::Neg, v))))
        }
        UnaryOp::Abs => Expr::un(UnOp::Abs, x),
    }
}
