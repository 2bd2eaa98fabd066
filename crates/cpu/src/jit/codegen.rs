//! One [`RowProgram`] as one Cranelift function that processes one row.
//!
//! The function is `extern "C" fn(inputs: *const *const f32, out: *mut f32, d: usize,
//! valid: usize, params: *const f32)`: `inputs[i]` points at the row's slice of input `i` (the
//! caller has already picked the row, the shared vector or the group's vector), `out` at the
//! row's `d` outputs. The body is a sequence of phases, each a counted loop nest over the row:
//!
//! 1. one pass per reduction over columns `0..valid` (f32x4 lanes, unrolled with one accumulator
//!    per copy, then one f32x4 step at a time, then a horizontal combine and a scalar tail);
//! 2. if `zero_if_all_masked` and reduction 0 (a `Max`) is −∞: write `fill` everywhere, return;
//! 3. the output over `0..valid` (same loop shape, storing);
//! 4. `fill` over `valid..d`.
//!
//! Subtrees that do not read an input (parameters, reduced values, constants combined) are
//! computed once per row at scalar type before the loop that needs them and broadcast.
//!
//! When the output is "the last reduction's expression combined with row invariants" (softmax:
//! `exp(x − m) · (1/Σ)`), the reduction pass also stores that expression into `out`, and the
//! output pass reads it back instead of computing it again (one `exp` per element, not two).
//! The output pass then reads no input, so this is also safe when `out` is an input (in place).
//!
//! **Row primitives** ([`super::primitives`], when the target has them): for softmax-shaped
//! programs (the last two reductions `m = Max(X)` and `Sum(e^(X − m))`, that exp stashed as
//! above) the Max pass also stores `X` into `out`, and the Sum pass is one call per row to the
//! AVX-512 routine [`Primitive::ExpSubSum`] (`out[c] = e^(out[c] − m)` in place, returning the
//! sum) instead of an f32x4 loop. Nothing after the Max pass reads an input, so this too is
//! safe in place. Without primitives the same program compiles to the f32x4 loops above.
//!
//! This module trusts its caller: the program is validated ([`super::validate`]) and every
//! pointer checked by [`super::RowKernel`] before the code runs. It must never read past
//! `inputs[i] + d` or write past `out + d`.

use cranelift_codegen::ir::{
    condcodes::{FloatCC, IntCC},
    types, AbiParam, BlockArg, FuncRef, Function, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

use super::math::Math;
use super::primitives::Primitive;
use super::{BinaryOp, Expr, ReduceKind, RowProgram, UnaryOp};

/// What the target offers the generated code, and the loop shape asked for.
#[derive(Clone, Copy)]
pub(super) struct Target {
    pub pointer: Type,
    pub fma: bool,
    pub x86: bool,
    /// Copies of the f32x4 body per main-loop iteration; `None`: [`unroll_for`].
    pub unroll: Option<usize>,
    /// The module imports the [`Primitive`]s (the CPU has avx512f and they were not turned
    /// off), so kernels may call them.
    pub row_primitives: bool,
}

/// Resolves a [`Primitive`] to a callable reference inside the function being built (the
/// module declares the import).
pub(super) type Imports<'a> = dyn FnMut(&mut Function, Primitive) -> FuncRef + 'a;

/// The function's signature: five pointer-sized parameters, no result.
pub(super) fn signature(sig: &mut cranelift_codegen::ir::Signature, pointer: Type) {
    for _ in 0..5 {
        sig.params.push(AbiParam::new(pointer));
    }
}

/// A per-element cost estimate in f32x4 instructions, for choosing the unroll factor and for
/// [`super::RowKernel`]'s threading threshold.
pub(super) fn expr_cost(e: &Expr) -> usize {
    if !reads_input(e) {
        return 1; // computed once per row, then a register.
    }
    match e {
        Expr::Input(_) | Expr::Const(_) | Expr::Reduced(_) | Expr::Param(_) => 1,
        Expr::Unary(op, a) => {
            let own = match op {
                UnaryOp::Neg | UnaryOp::Square | UnaryOp::Relu => 1,
                UnaryOp::Abs => 3,
                UnaryOp::Recip => 5,
                UnaryOp::Sqrt => 6,
                UnaryOp::Exp => 24,
                UnaryOp::Sigmoid | UnaryOp::Silu => 31,
                UnaryOp::Elu => 25,
                UnaryOp::GeluTanh => 34,
                UnaryOp::Tanh => 45,
                UnaryOp::Gelu => 70,
            };
            own + expr_cost(a)
        }
        Expr::Binary(op, a, b) => {
            let own = match op {
                BinaryOp::Div => 5,
                BinaryOp::Max | BinaryOp::Min => 2,
                _ => 1,
            };
            own + expr_cost(a) + expr_cost(b)
        }
    }
}

/// The per-element cost of the whole program (every pass), as compiled for `target`.
pub(super) fn program_cost(prog: &RowProgram, target: Target) -> usize {
    let exp_sum = exp_sub_sum_of(prog, target);
    let last = prog.reductions.len().saturating_sub(1);
    let reductions: usize = prog
        .reductions
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let c = expr_cost(&r.expr);
            // 16 lanes instead of 4.
            if exp_sum.is_some() && k == last {
                c.div_ceil(4)
            } else {
                c
            }
        })
        .sum();
    reductions + expr_cost(&prog.output) + 1
}

/// Copies of the f32x4 body per loop iteration: 4 for short expressions (independent chains,
/// one accumulator each), fewer for long ones, which are throughput-bound already and whose
/// copies only spill the 16 xmm registers and lengthen compilation (`examples/jit_bench.rs`:
/// GELU-erf runs at the same speed unrolled 1, 2 or 4 times; residual + LayerNorm gains 20 %
/// from 4).
fn unroll_for(e: &Expr) -> usize {
    match expr_cost(e) {
        0..=40 => 4,
        41..=60 => 2,
        _ => 1,
    }
}

/// Whether `e` reads an input anywhere except inside occurrences of `skip`.
fn reads_input_outside(e: &Expr, skip: &Expr) -> bool {
    if e == skip {
        return false;
    }
    match e {
        Expr::Input(_) => true,
        Expr::Const(_) | Expr::Reduced(_) | Expr::Param(_) => false,
        Expr::Unary(_, a) => reads_input_outside(a, skip),
        Expr::Binary(_, a, b) => reads_input_outside(a, skip) || reads_input_outside(b, skip),
    }
}

fn contains(e: &Expr, part: &Expr) -> bool {
    e == part
        || match e {
            Expr::Unary(_, a) => contains(a, part),
            Expr::Binary(_, a, b) => contains(a, part) || contains(b, part),
            _ => false,
        }
}

/// The expression worth storing into `out` during the last reduction (see the module docs).
fn stash_of(prog: &RowProgram) -> Option<&Expr> {
    let last = &prog.reductions.last()?.expr;
    let worth = reads_input(last) && contains(&prog.output, last);
    (worth && !reads_input_outside(&prog.output, last)).then_some(last)
}

/// Where [`Primitive::ExpSubSum`] serves `prog` (see the module docs): the index of the `Max`
/// reduction whose expression `X` the last reduction, `Sum(e^(X − Reduced(max)))`, exponentiates,
/// that exp being the stash.
fn exp_sub_sum_of(prog: &RowProgram, target: Target) -> Option<usize> {
    if !target.row_primitives {
        return None;
    }
    let stash = stash_of(prog)?;
    let sum = prog.reductions.len().checked_sub(1)?;
    let max = sum.checked_sub(1)?;
    let (mx, sm) = (&prog.reductions[max], &prog.reductions[sum]);
    if mx.kind != ReduceKind::Max || sm.kind != ReduceKind::Sum {
        return None;
    }
    let Expr::Unary(UnaryOp::Exp, arg) = stash else {
        return None;
    };
    match &**arg {
        Expr::Binary(BinaryOp::Sub, x, m) if **m == Expr::Reduced(max) && **x == mx.expr => {
            Some(max)
        }
        _ => None,
    }
}

fn reads_input(e: &Expr) -> bool {
    match e {
        Expr::Input(_) => true,
        Expr::Const(_) | Expr::Reduced(_) | Expr::Param(_) => false,
        Expr::Unary(_, a) => reads_input(a),
        Expr::Binary(_, a, b) => reads_input(a) || reads_input(b),
    }
}

/// A loop body: `(builder, i, carried) -> new carried`.
type LoopBody<'a> = dyn FnMut(&mut FunctionBuilder, Value, &[Value]) -> Vec<Value> + 'a;
/// One element group of a row loop: `(builder, type, position, memo, accumulator) -> new
/// accumulator`.
type ElementStep<'a, 'p> =
    dyn FnMut(&mut FunctionBuilder, Type, At, &mut Memo<'p>, Option<Value>) -> Option<Value> + 'a;

/// A row-invariant subtree, computed once per row.
struct Hoisted<'p> {
    expr: &'p Expr,
    scalar: Value,
    vector: Value,
}

/// The element position being computed: byte offset `off` (a value) plus `imm` bytes.
#[derive(Clone, Copy)]
struct At {
    off: Value,
    imm: i32,
}

struct Gen<'p> {
    prog: &'p RowProgram,
    target: Target,
    /// The row's input pointers and scalar parameters, loaded in the entry block.
    inputs: Vec<Value>,
    params: Vec<Value>,
    /// Scalar results of the reductions done so far.
    reduced: Vec<Value>,
    hoisted: Vec<Hoisted<'p>>,
    /// The row's output pointer.
    out: Value,
    /// The expression stored into `out` by the last reduction pass, and whether that pass
    /// has been emitted (from then on `emit` loads it from `out`).
    stash: Option<&'p Expr>,
    stashed: bool,
}

/// Per-copy cache of the values already emitted in one loop body.
struct Memo<'p> {
    values: Vec<(&'p Expr, Value)>,
    /// `inputs[i] + off`, then `out + off`.
    addrs: Vec<Option<Value>>,
}

impl<'p> Memo<'p> {
    /// `inputs`: the program's input count (one more address slot is kept for `out`).
    fn new(inputs: usize) -> Self {
        let inputs = inputs + 1;
        Memo {
            values: Vec::new(),
            addrs: vec![None; inputs],
        }
    }
}

const VEC_FLAGS: MemFlagsData = MemFlagsData::new().with_notrap();

/// Fills `b`'s function with the row kernel for `prog` (validated); `imports` is asked only
/// for primitives when `target.row_primitives` is set.
pub(super) fn build(
    b: &mut FunctionBuilder,
    prog: &RowProgram,
    target: Target,
    imports: &mut Imports,
) {
    let ptr = target.pointer;
    signature(&mut b.func.signature, ptr);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let args = b.block_params(entry).to_vec();
    let (inputs_arg, out, d, valid, params_arg) = (args[0], args[1], args[2], args[3], args[4]);

    let trusted = MemFlagsData::trusted();
    let inputs = (0..prog.inputs.len())
        .map(|i| {
            b.ins()
                .load(ptr, trusted, inputs_arg, (i * ptr.bytes() as usize) as i32)
        })
        .collect();
    let params = (0..prog.params)
        .map(|p| {
            b.ins()
                .load(types::F32, trusted, params_arg, (4 * p) as i32)
        })
        .collect();
    let mut g = Gen {
        prog,
        target,
        inputs,
        params,
        reduced: Vec::new(),
        hoisted: Vec::new(),
        out,
        stash: stash_of(prog),
        stashed: false,
    };

    let exp_sum = exp_sub_sum_of(prog, target);
    for (k, red) in prog.reductions.iter().enumerate() {
        let last = k + 1 == prog.reductions.len();
        let r = match exp_sum {
            Some(max) if last => {
                // `out` holds X (stored by the Max pass): e^(X − m) in place, and its sum.
                let f = imports(&mut *b.func, Primitive::ExpSubSum);
                let call = b.ins().call(f, &[out, valid, g.reduced[max]]);
                b.inst_results(call)[0]
            }
            _ => {
                let store = (last && g.stash.is_some()) || exp_sum == Some(k);
                g.reduce(b, red.kind, &red.expr, valid, store)
            }
        };
        g.reduced.push(r);
        g.stashed = last && g.stash.is_some();
        if k == 0 && prog.zero_if_all_masked {
            // A row whose valid entries are all −∞ (or an empty row): `fill` everywhere.
            let ninf = b.ins().f32const(f32::NEG_INFINITY);
            let masked = b.ins().fcmp(FloatCC::Equal, r, ninf);
            let fill_all = b.create_block();
            let go_on = b.create_block();
            b.set_cold_block(fill_all);
            b.ins().brif(masked, fill_all, &[], go_on, &[]);
            b.switch_to_block(fill_all);
            let zero = b.ins().iconst(ptr, 0);
            g.fill(b, out, zero, d);
            b.ins().return_(&[]);
            b.switch_to_block(go_on);
        }
    }
    g.map(b, &prog.output, valid);
    g.fill(b, out, valid, d);
    b.ins().return_(&[]);
    b.seal_all_blocks();
}

impl<'p> Gen<'p> {
    fn math(&self, ty: Type) -> Math {
        Math {
            ty,
            fma: self.target.fma,
            x86: self.target.x86,
        }
    }

    /// A counted loop `for i in (start..).step_by(step) while i + step <= end`, carrying
    /// `carried` values; returns the first `i` not taken and the final carried values.
    fn counted_loop(
        &self,
        b: &mut FunctionBuilder,
        start: Value,
        end: Value,
        step: i64,
        carried: Vec<Value>,
        body: &mut LoopBody,
    ) -> (Value, Vec<Value>) {
        let ptr = self.target.pointer;
        let tys: Vec<Type> = carried.iter().map(|&v| b.func.dfg.value_type(v)).collect();
        let header = b.create_block();
        let body_block = b.create_block();
        let exit = b.create_block();
        for blk in [header, exit] {
            b.append_block_param(blk, ptr);
            for &t in &tys {
                b.append_block_param(blk, t);
            }
        }
        let args = |i: Value, c: &[Value]| -> Vec<BlockArg> {
            std::iter::once(i)
                .chain(c.iter().copied())
                .map(BlockArg::Value)
                .collect()
        };
        b.ins().jump(header, &args(start, &carried));

        b.switch_to_block(header);
        let hp = b.block_params(header).to_vec();
        let (i, cur) = (hp[0], hp[1..].to_vec());
        let next = b.ins().iadd_imm_s(i, step);
        let more = b.ins().icmp(IntCC::UnsignedLessThanOrEqual, next, end);
        b.ins().brif(more, body_block, &[], exit, &args(i, &cur));

        b.switch_to_block(body_block);
        let new = body(b, i, &cur);
        b.ins().jump(header, &args(next, &new));

        b.switch_to_block(exit);
        let ep = b.block_params(exit).to_vec();
        (ep[0], ep[1..].to_vec())
    }

    /// Computes every maximal row-invariant subtree of `e` (not a bare constant) at scalar
    /// type in the current block, and its broadcast.
    fn hoist(&mut self, b: &mut FunctionBuilder, e: &'p Expr) {
        if matches!(e, Expr::Const(_)) {
            return;
        }
        if !reads_input(e) {
            if self.hoisted.iter().any(|h| h.expr == e) {
                return;
            }
            // No input is read, so the position is never used.
            let at = At {
                off: b.ins().iconst(self.target.pointer, 0),
                imm: 0,
            };
            let mut memo = Memo::new(0);
            let scalar = self.emit(b, e, types::F32, at, &mut memo);
            let vector = b.ins().splat(types::F32X4, scalar);
            self.hoisted.push(Hoisted {
                expr: e,
                scalar,
                vector,
            });
            return;
        }
        match e {
            Expr::Unary(_, a) => self.hoist(b, a),
            Expr::Binary(_, x, y) => {
                self.hoist(b, x);
                self.hoist(b, y);
            }
            _ => {}
        }
    }

    /// `base + at.off`, computed once per loop body and address slot.
    fn addr(b: &mut FunctionBuilder, memo: &mut Memo, slot: usize, base: Value, at: At) -> Value {
        *memo.addrs[slot].get_or_insert_with(|| b.ins().iadd(base, at.off))
    }

    /// Stores `v` at `out + at`.
    fn store_out(&self, b: &mut FunctionBuilder, memo: &mut Memo, at: At, v: Value) {
        let slot = self.prog.inputs.len();
        let addr = Self::addr(b, memo, slot, self.out, at);
        b.ins().store(VEC_FLAGS, v, addr, at.imm);
    }

    /// The value of `e` at type `ty` (F32 or F32X4) at element position `at`.
    fn emit(
        &self,
        b: &mut FunctionBuilder,
        e: &'p Expr,
        ty: Type,
        at: At,
        memo: &mut Memo<'p>,
    ) -> Value {
        if let Some(h) = self.hoisted.iter().find(|h| h.expr == e) {
            return if ty.is_vector() { h.vector } else { h.scalar };
        }
        if let Some(&(_, v)) = memo.values.iter().find(|(m, _)| *m == e) {
            return v;
        }
        if self.stashed && self.stash == Some(e) {
            let slot = self.prog.inputs.len();
            let addr = Self::addr(b, memo, slot, self.out, at);
            let v = b.ins().load(ty, VEC_FLAGS, addr, at.imm);
            memo.values.push((e, v));
            return v;
        }
        let m = self.math(ty);
        let v = match e {
            Expr::Input(i) => {
                let addr = Self::addr(b, memo, *i, self.inputs[*i], at);
                b.ins().load(ty, VEC_FLAGS, addr, at.imm)
            }
            Expr::Const(c) => m.konst(b, *c),
            Expr::Param(p) => m.splat(b, self.params[*p]),
            Expr::Reduced(k) => m.splat(b, self.reduced[*k]),
            Expr::Unary(op, a) => {
                let x = self.emit(b, a, ty, at, memo);
                match op {
                    UnaryOp::Neg => b.ins().fneg(x),
                    UnaryOp::Exp => m.exp(b, x),
                    UnaryOp::Sqrt => b.ins().sqrt(x),
                    UnaryOp::Recip => {
                        let one = m.konst(b, 1.0);
                        b.ins().fdiv(one, x)
                    }
                    UnaryOp::Square => b.ins().fmul(x, x),
                    UnaryOp::Tanh => m.tanh(b, x),
                    UnaryOp::Sigmoid => m.sigmoid(b, x),
                    UnaryOp::Relu => m.relu(b, x),
                    UnaryOp::Elu => m.elu(b, x),
                    UnaryOp::Gelu => m.gelu_erf(b, x),
                    UnaryOp::GeluTanh => m.gelu_tanh(b, x),
                    UnaryOp::Silu => m.silu(b, x),
                    UnaryOp::Abs => b.ins().fabs(x),
                }
            }
            Expr::Binary(op, x, y) => {
                let x = self.emit(b, x, ty, at, memo);
                let y = self.emit(b, y, ty, at, memo);
                match op {
                    BinaryOp::Add => b.ins().fadd(x, y),
                    BinaryOp::Sub => b.ins().fsub(x, y),
                    BinaryOp::Mul => b.ins().fmul(x, y),
                    BinaryOp::Div => b.ins().fdiv(x, y),
                    BinaryOp::Max => m.max(b, x, y),
                    BinaryOp::Min => m.min(b, x, y),
                }
            }
        };
        if !matches!(e, Expr::Const(_)) {
            memo.values.push((e, v));
        }
        v
    }

    fn combine(
        &self,
        b: &mut FunctionBuilder,
        kind: ReduceKind,
        ty: Type,
        acc: Value,
        v: Value,
    ) -> Value {
        match kind {
            ReduceKind::Sum => b.ins().fadd(acc, v),
            ReduceKind::Max => self.math(ty).max(b, acc, v),
        }
    }

    /// The loop nest over `0..valid` shared by reductions and the output: `unroll` f32x4
    /// copies per iteration (one carried accumulator each), then one f32x4 at a time, then
    /// scalars. `step` emits one element group and returns its new accumulator (if any);
    /// `merge` combines two f32x4 accumulators, `to_scalar` reduces the last to a scalar.
    #[allow(clippy::too_many_arguments)]
    fn row_loops(
        &self,
        b: &mut FunctionBuilder,
        valid: Value,
        unroll: usize,
        init: Option<Value>,
        step: &mut ElementStep<'_, 'p>,
        merge: &mut dyn FnMut(&mut FunctionBuilder, Value, Value) -> Value,
        to_scalar: &mut dyn FnMut(&mut FunctionBuilder, Value) -> Value,
    ) -> Option<Value> {
        let n = self.prog.inputs.len();
        let mut i = b.ins().iconst(self.target.pointer, 0);
        let mut acc = init;
        let carried = |acc: Option<Value>, k: usize| acc.map(|a| vec![a; k]).unwrap_or_default();
        if unroll > 1 {
            let (i_end, accs) = self.counted_loop(
                b,
                i,
                valid,
                4 * unroll as i64,
                carried(acc, unroll),
                &mut |b, i, accs| {
                    let off = b.ins().ishl_imm_u(i, 2);
                    // The copies share their address computations (`base + off`).
                    let mut addrs = vec![None; n + 1];
                    let mut new = Vec::new();
                    for u in 0..unroll {
                        let mut memo = Memo {
                            values: Vec::new(),
                            addrs,
                        };
                        let at = At {
                            off,
                            imm: 16 * u as i32,
                        };
                        new.extend(step(b, types::F32X4, at, &mut memo, accs.get(u).copied()));
                        addrs = memo.addrs;
                    }
                    new
                },
            );
            i = i_end;
            // Pairwise: (a0 ∘ a1) ∘ (a2 ∘ a3).
            let mut level = accs;
            while level.len() > 1 {
                level = level
                    .chunks(2)
                    .map(|c| {
                        if c.len() == 2 {
                            merge(b, c[0], c[1])
                        } else {
                            c[0]
                        }
                    })
                    .collect();
            }
            acc = level.first().copied();
        }
        let (i_end, accs) =
            self.counted_loop(b, i, valid, 4, carried(acc, 1), &mut |b, i, accs| {
                let off = b.ins().ishl_imm_u(i, 2);
                let at = At { off, imm: 0 };
                step(
                    b,
                    types::F32X4,
                    at,
                    &mut Memo::new(n),
                    accs.first().copied(),
                )
                .into_iter()
                .collect()
            });
        let s = accs.first().map(|&a| to_scalar(b, a));
        let (_, s) = self.counted_loop(
            b,
            i_end,
            valid,
            1,
            s.into_iter().collect(),
            &mut |b, i, s| {
                let off = b.ins().ishl_imm_u(i, 2);
                let at = At { off, imm: 0 };
                step(b, types::F32, at, &mut Memo::new(n), s.first().copied())
                    .into_iter()
                    .collect()
            },
        );
        s.first().copied()
    }

    /// Reduction `kind` of `e` over columns `0..valid`, as a scalar; with `store`, `e` is also
    /// written to `out` (the stash, or `X` for a row primitive; see the module docs).
    fn reduce(
        &mut self,
        b: &mut FunctionBuilder,
        kind: ReduceKind,
        e: &'p Expr,
        valid: Value,
        store: bool,
    ) -> Value {
        self.hoist(b, e);
        let identity = match kind {
            ReduceKind::Sum => 0.0,
            ReduceKind::Max => f32::NEG_INFINITY,
        };
        let init = self.math(types::F32X4).konst(b, identity);
        let unroll = self.target.unroll.unwrap_or_else(|| unroll_for(e)).max(1);
        let this = &*self;
        let r = this.row_loops(
            b,
            valid,
            unroll,
            Some(init),
            &mut |b, ty, at, memo, acc| {
                let v = this.emit(b, e, ty, at, memo);
                if store {
                    this.store_out(b, memo, at, v);
                }
                Some(this.combine(
                    b,
                    kind,
                    ty,
                    acc.expect("a reduction carries its accumulator"),
                    v,
                ))
            },
            &mut |b, x, y| this.combine(b, kind, types::F32X4, x, y),
            &mut |b, v| Math::horizontal(b, v, |b, x, y| this.combine(b, kind, types::F32X4, x, y)),
        );
        r.expect("a reduction has a result")
    }

    /// `out[c] = e(c)` for `c` in `0..valid`.
    fn map(&mut self, b: &mut FunctionBuilder, e: &'p Expr, valid: Value) {
        self.hoist(b, e);
        let unroll = self.target.unroll.unwrap_or_else(|| unroll_for(e)).max(1);
        let this = &*self;
        this.row_loops(
            b,
            valid,
            unroll,
            None,
            &mut |b, ty, at, memo, _| {
                let v = this.emit(b, e, ty, at, memo);
                this.store_out(b, memo, at, v);
                None
            },
            &mut |_, x, _| x,
            &mut |_, v| v,
        );
    }

    /// `out[c] = fill` for `c` in `from..d`.
    fn fill(&self, b: &mut FunctionBuilder, out: Value, from: Value, d: Value) {
        let fill = b.ins().f32const(self.prog.fill);
        let fill4 = b.ins().splat(types::F32X4, fill);
        let store = |b: &mut FunctionBuilder, i: Value, v: Value| {
            let off = b.ins().ishl_imm_u(i, 2);
            let addr = b.ins().iadd(out, off);
            b.ins().store(VEC_FLAGS, v, addr, 0);
        };
        let (i, _) = self.counted_loop(b, from, d, 4, vec![], &mut |b, i, _| {
            store(b, i, fill4);
            vec![]
        });
        self.counted_loop(b, i, d, 1, vec![], &mut |b, i, _| {
            store(b, i, fill);
            vec![]
        });
    }
}
