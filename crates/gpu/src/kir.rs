//! The GPU kernel IR: what one CUDA kernel does, as plain data that both the CUDA C printer
//! (`cuda.rs`) and the CPU simulator (`sim.rs`) consume, so the code that runs on a GPU and the
//! code the tests run are the same program.
//!
//! A kernel is launched on a 2-D grid (`grid[0] × grid[1]` blocks) of 1-D blocks of `block`
//! threads (a multiple of the warp size, 32). Each thread runs `body` with its own variables
//! (declared once per kernel with their types, all starting at zero); blocks share nothing but
//! global memory; a block's threads share the `shared` arrays. Buffers (`params`) are global
//! arrays of one element type, bound at launch to a range of device memory whose length is
//! known (every load and store is checked against it by the simulator).
//!
//! Semantics (what the simulator implements, and what the printed CUDA C must mean):
//! * **Types**: `F32` (IEEE single) and `I64` (two's complement, wrapping). Binary operators take
//!   two operands of one type; comparisons and `And`/`Or` give `I64` 0 or 1; `If`, `Select` and
//!   `For` test an `I64` against 0. Conversions are explicit (`ToF32`, `ToI64`: truncation).
//!   Integer `Div`/`Rem` truncate toward zero (C); dividing by zero is an error; `MIN / -1`
//!   and `MIN % -1` wrap (to `MIN` and 0). `ToI64` saturates and maps NaN to 0. A `For`
//!   loop's increment saturates (a loop near `i64::MAX` ends instead of wrapping).
//!   f32 products are never fused with a following addition (no FMA contraction), so the
//!   printed code rounds as the simulator does.
//! * **Control flow** is structured (`If`, `For`); a `For` loop's bounds may differ between
//!   threads.
//! * **Barriers**: `SyncThreads` must be reached by every thread of the block together (not in
//!   code some threads skip); between two barriers, a shared-memory element written by one
//!   thread may not be read or written by another (a data race).
//! * **Warp shuffles**: `ShflXor` reads another lane's variable (`lane ^ lane_mask`, lanes are
//!   `thread % 32`); all 32 lanes of the warp must execute it together.
//! * **Global memory**: within one launch, an element written by one thread may not be read or
//!   written by another thread (there is no grid-wide barrier; stricter than CUDA within a
//!   block, so generators never pass data between threads through global memory); loads and
//!   stores past a buffer's bound are errors. At most 48 KiB of shared memory per block.
//!
//! Never: anything the printer cannot write as plain CUDA C, or the simulator cannot check.

use serde::Serialize;

/// Threads per warp.
pub const WARP: u32 = 32;

/// A scalar's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Scalar {
    F32,
    I64,
}

/// A per-thread variable (index into [`GpuKernel::vars`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Var(pub u32);

/// Launch geometry as each thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Special {
    /// `threadIdx.x`.
    Thread,
    /// `blockIdx.x`, `blockIdx.y`.
    BlockX,
    BlockY,
    /// `blockDim.x`.
    BlockDim,
    /// `gridDim.x`, `gridDim.y`.
    GridX,
    GridY,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum UnOp {
    Neg,
    /// f32 only.
    Exp,
    Sqrt,
    Tanh,
    Erf,
    Abs,
    /// I64 → F32.
    ToF32,
    /// F32 → I64 (truncation toward zero).
    ToI64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// I64 only (C's `%`).
    Rem,
    /// f32: `fmaxf`/`fminf` (a NaN operand loses); I64: the larger/smaller.
    Max,
    Min,
    /// Comparisons (either type) → I64 0/1.
    Lt,
    Le,
    Eq,
    Ne,
    /// I64 only: both/either non-zero → 1, else 0.
    And,
    Or,
}

impl BinOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Lt | BinOp::Le | BinOp::Eq | BinOp::Ne | BinOp::And | BinOp::Or
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Expr {
    F32(f32),
    I64(i64),
    Var(Var),
    Special(Special),
    /// Element `index` of buffer parameter `param`.
    Load {
        param: usize,
        index: Box<Expr>,
    },
    /// Element `index` of shared array `array`.
    LoadShared {
        array: usize,
        index: Box<Expr>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `cond != 0 ? then : els`: only the chosen side is evaluated (as C's `?:`), so
    /// `Select(i < n, Load(i), 0)` is a guarded load.
    Select {
        cond: Box<Expr>,
        then: Box<Expr>,
        els: Box<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Stmt {
    Assign {
        var: Var,
        value: Expr,
    },
    Store {
        param: usize,
        index: Expr,
        value: Expr,
    },
    StoreShared {
        array: usize,
        index: Expr,
        value: Expr,
    },
    If {
        cond: Expr,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
    /// `for (var = start; var < end; var += step) body` (I64; `step` > 0). `start`, `end` and
    /// `step` are evaluated once, before the first iteration.
    For {
        var: Var,
        start: Expr,
        end: Expr,
        step: Expr,
        body: Vec<Stmt>,
    },
    /// `__syncthreads()`.
    SyncThreads,
    /// `dst = src` of lane `lane ^ lane_mask` (`__shfl_xor_sync(0xffffffff, src, lane_mask)`).
    ShflXor {
        dst: Var,
        src: Var,
        lane_mask: u32,
    },
}

/// A buffer parameter: a global array of `elem`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Param {
    /// A C identifier.
    pub name: String,
    pub elem: Scalar,
    /// Whether the kernel stores to it (`const` in C otherwise).
    pub writes: bool,
}

/// A shared-memory array of one block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shared {
    pub elem: Scalar,
    pub len: usize,
}

/// One GPU kernel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuKernel {
    /// A C identifier, unique within a program.
    pub name: String,
    /// What it implements, for people: the graph nodes (`layer 3: softmax`, ...).
    pub doc: Vec<String>,
    pub params: Vec<Param>,
    /// The type of each variable (`Var(i)` is `vars[i]`).
    pub vars: Vec<Scalar>,
    pub shared: Vec<Shared>,
    /// Blocks along x and y.
    pub grid: [u32; 2],
    /// Threads per block (a multiple of [`WARP`]).
    pub block: u32,
    pub body: Vec<Stmt>,
}

/// A malformed kernel: a bug in the code that built it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel {kernel}: {what}")]
pub struct Malformed {
    pub kernel: String,
    pub what: String,
}

impl GpuKernel {
    /// The type of `e`, checking operand types, variables, parameters and arrays.
    pub fn type_of(&self, e: &Expr) -> Result<Scalar, Malformed> {
        let bad = |what: String| Malformed {
            kernel: self.name.clone(),
            what,
        };
        Ok(match e {
            Expr::F32(_) => Scalar::F32,
            Expr::I64(_) | Expr::Special(_) => Scalar::I64,
            Expr::Var(v) => *self
                .vars
                .get(v.0 as usize)
                .ok_or_else(|| bad(format!("variable v{} is not declared", v.0)))?,
            Expr::Load { param, index } => {
                self.int(index)?;
                self.params
                    .get(*param)
                    .ok_or_else(|| bad(format!("no parameter {param}")))?
                    .elem
            }
            Expr::LoadShared { array, index } => {
                self.int(index)?;
                self.shared
                    .get(*array)
                    .ok_or_else(|| bad(format!("no shared array {array}")))?
                    .elem
            }
            Expr::Unary(op, a) => {
                let t = self.type_of(a)?;
                match (op, t) {
                    (UnOp::ToF32, Scalar::I64) => Scalar::F32,
                    (UnOp::ToI64, Scalar::F32) => Scalar::I64,
                    (UnOp::Neg | UnOp::Abs, t) => t,
                    (UnOp::Exp | UnOp::Sqrt | UnOp::Tanh | UnOp::Erf, Scalar::F32) => Scalar::F32,
                    _ => return Err(bad(format!("{op:?} of {t:?}"))),
                }
            }
            Expr::Binary(op, a, b) => {
                let (ta, tb) = (self.type_of(a)?, self.type_of(b)?);
                if ta != tb {
                    return Err(bad(format!("{op:?} of {ta:?} and {tb:?}")));
                }
                match op {
                    BinOp::Rem | BinOp::And | BinOp::Or if ta != Scalar::I64 => {
                        return Err(bad(format!("{op:?} of {ta:?}")))
                    }
                    op if op.is_comparison() => Scalar::I64,
                    _ => ta,
                }
            }
            Expr::Select { cond, then, els } => {
                self.int(cond)?;
                let (ta, tb) = (self.type_of(then)?, self.type_of(els)?);
                if ta != tb {
                    return Err(bad(format!("select of {ta:?} and {tb:?}")));
                }
                ta
            }
        })
    }

    fn int(&self, e: &Expr) -> Result<(), Malformed> {
        match self.type_of(e)? {
            Scalar::I64 => Ok(()),
            t => Err(Malformed {
                kernel: self.name.clone(),
                what: format!("an index or condition of type {t:?}"),
            }),
        }
    }

    /// Checks the whole kernel: types, declarations, stores only to written parameters,
    /// geometry. Both consumers call it first.
    pub fn check(&self) -> Result<(), Malformed> {
        let bad = |what: String| Malformed {
            kernel: self.name.clone(),
            what,
        };
        if self.block == 0 || !self.block.is_multiple_of(WARP) || self.block > 1024 {
            return Err(bad(format!(
                "{} threads per block (a multiple of 32, at most 1024)",
                self.block
            )));
        }
        if self.grid.contains(&0) {
            return Err(bad("an empty grid".into()));
        }
        if !is_identifier(&self.name) {
            return Err(bad("the name is not a C identifier".into()));
        }
        for p in &self.params {
            if !is_identifier(&p.name) {
                return Err(bad(format!("parameter `{}` is not a C identifier", p.name)));
            }
        }
        self.check_block(&self.body)
    }

    fn check_block(&self, body: &[Stmt]) -> Result<(), Malformed> {
        let bad = |what: String| Malformed {
            kernel: self.name.clone(),
            what,
        };
        for s in body {
            match s {
                Stmt::Assign { var, value } => {
                    let (tv, te) = (self.type_of(&Expr::Var(*var))?, self.type_of(value)?);
                    if tv != te {
                        return Err(bad(format!("v{} ({tv:?}) assigned {te:?}", var.0)));
                    }
                }
                Stmt::Store {
                    param,
                    index,
                    value,
                } => {
                    let p = self
                        .params
                        .get(*param)
                        .ok_or_else(|| bad(format!("no parameter {param}")))?;
                    if !p.writes {
                        return Err(bad(format!("a store to read-only `{}`", p.name)));
                    }
                    self.int(index)?;
                    if self.type_of(value)? != p.elem {
                        return Err(bad(format!("a store of the wrong type to `{}`", p.name)));
                    }
                }
                Stmt::StoreShared {
                    array,
                    index,
                    value,
                } => {
                    let a = self
                        .shared
                        .get(*array)
                        .ok_or_else(|| bad(format!("no shared array {array}")))?;
                    self.int(index)?;
                    if self.type_of(value)? != a.elem {
                        return Err(bad(format!("a store of the wrong type to shared {array}")));
                    }
                }
                Stmt::If { cond, then, els } => {
                    self.int(cond)?;
                    self.check_block(then)?;
                    self.check_block(els)?;
                }
                Stmt::For {
                    var,
                    start,
                    end,
                    step,
                    body,
                } => {
                    self.int(&Expr::Var(*var))?;
                    self.int(start)?;
                    self.int(end)?;
                    self.int(step)?;
                    self.check_block(body)?;
                }
                Stmt::SyncThreads => {}
                Stmt::ShflXor {
                    dst,
                    src,
                    lane_mask,
                } => {
                    let (td, ts) = (
                        self.type_of(&Expr::Var(*dst))?,
                        self.type_of(&Expr::Var(*src))?,
                    );
                    if td != ts || *lane_mask >= WARP {
                        return Err(bad("a malformed shuffle".into()));
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

// Building expressions. (Named methods rather than operator traits: `a.add(b)` builds an
// IR node; it computes nothing.)

#[allow(clippy::should_implement_trait)]
impl Expr {
    pub fn var(v: Var) -> Expr {
        Expr::Var(v)
    }
    pub fn un(op: UnOp, a: Expr) -> Expr {
        Expr::Unary(op, Box::new(a))
    }
    pub fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }
    pub fn load(param: usize, index: Expr) -> Expr {
        Expr::Load {
            param,
            index: Box::new(index),
        }
    }
    pub fn load_shared(array: usize, index: Expr) -> Expr {
        Expr::LoadShared {
            array,
            index: Box::new(index),
        }
    }
    pub fn select(cond: Expr, then: Expr, els: Expr) -> Expr {
        Expr::Select {
            cond: Box::new(cond),
            then: Box::new(then),
            els: Box::new(els),
        }
    }
    pub fn add(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Add, self, b)
    }
    pub fn sub(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Sub, self, b)
    }
    pub fn mul(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Mul, self, b)
    }
    pub fn div(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Div, self, b)
    }
    pub fn rem(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Rem, self, b)
    }
    pub fn lt(self, b: Expr) -> Expr {
        Expr::bin(BinOp::Lt, self, b)
    }
}
