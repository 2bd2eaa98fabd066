//! Hydra attention, `φ(Q_t) ⊙ Σ_s φ(K_s) ⊙ V_s` (φ = L2-normalise; causal: `s ≤ t`), as two
//! kernels around a scratch area of per-chunk sums, its meaning being the spec's two row
//! programs (`Hydra::kv_step`, `Hydra::output_row`):
//!
//! 1. `sums`: one block per (chunk of tokens, batch): the chunk's `Σ φ(K_s) ⊙ V_s`, one thread
//!    per feature;
//! 2. non-causal `out`: one block per (token, batch): `kv` = the sum of every chunk's sums,
//!    then `φ(Q_t) ⊙ kv`; causal `scan`: one block per (chunk, batch): the sums of the chunks
//!    before it, then its own tokens in order (a chunked prefix scan).
//!
//! Q, K and V are read in place through their row views (the fused QKV buffer).

use attnopt_lower::row::RowProgram;
use attnopt_lower::{Hydra, Kernel, RowView};

use super::row::expr;
use super::Gen;
use crate::error::{GpuError, Result};
use crate::kbuild::{threads_for, Combine, KernelBuilder};
use crate::kir::{Expr, Scalar, Special, Var};

/// Tokens per chunk: at most 64 (one block's sequential work), and small enough that even
/// short sequences are cut into about 8 chunks (blocks to run side by side).
pub fn chunk(tokens: usize) -> usize {
    tokens.div_ceil(8).clamp(1, 64)
}

/// Element `c` of row `row` through `view`.
fn at(param: usize, view: RowView, row: Expr, c: Expr) -> Expr {
    Expr::load(
        param,
        row.mul(Expr::I64(view.row_stride as i64))
            .add(Expr::I64(view.offset as i64))
            .add(c),
    )
}

/// Runs one-reduction row program `prog` for this thread's feature (`tid < d`), its inputs
/// read by `input`; leaves the output in a new variable (0 for idle threads).
fn run_row(
    b: &mut KernelBuilder,
    prog: &RowProgram,
    d: usize,
    input: &dyn Fn(usize) -> Expr,
    scratch: &mut Option<usize>,
) -> Result<Var> {
    let tid = || Expr::Special(Special::Thread);
    let mine = || tid().lt(Expr::I64(d as i64));
    let mut reduced = vec![];
    for red in &prog.reductions {
        let s = b.let_(Scalar::F32, Expr::F32(0.0));
        let done = reduced.clone();
        b.if_(mine(), |b| {
            let x = expr(b, &red.expr, input, &done)?;
            b.assign(s, x);
            Ok(())
        })?;
        b.block_reduce(s, Combine::Sum, scratch);
        reduced.push(s);
    }
    let out = b.let_(Scalar::F32, Expr::F32(0.0));
    b.if_(mine(), |b| {
        let x = expr(b, &prog.output, input, &reduced)?;
        b.assign(out, x);
        Ok(())
    })?;
    Ok(out)
}

pub fn hydra(cx: &mut Gen, k: &Kernel, h: &Hydra) -> Result<()> {
    if h.d > 1024 {
        return Err(GpuError::NotSupported(format!(
            "Hydra attention over {} features (at most 1024 per block)",
            h.d
        )));
    }
    if k.inputs.len() != 3 {
        return Err(GpuError::Lower(format!("{}: Hydra takes Q, K, V", k.name)));
    }
    let chunk = chunk(h.tokens);
    let chunks = h.tokens.div_ceil(chunk).max(1);
    let threads = threads_for(h.d, 1024);
    let base = Gen::base_name(k);
    let doc = cx.doc(k);
    let (q, kk, v) = (
        cx.slice(k.inputs[0])?,
        cx.slice(k.inputs[1])?,
        cx.slice(k.inputs[2])?,
    );
    let out = cx.slice(k.output)?;
    let sums = cx.scratch(h.batch * chunks * h.d, Scalar::F32);
    let tid = || Expr::Special(Special::Thread);
    let d = h.d as i64;
    let tokens = h.tokens as i64;
    let kv_step = h.kv_step();
    let output_row = h.output_row();
    let [vq, vk, vv] = h.views;
    // The chunk's token range and the first row of the batch.
    let range = |b: &mut KernelBuilder| {
        let start = b.let_(
            Scalar::I64,
            Expr::Special(Special::BlockX).mul(Expr::I64(chunk as i64)),
        );
        let end = b.let_(
            Scalar::I64,
            Expr::bin(
                crate::kir::BinOp::Min,
                Expr::Var(start).add(Expr::I64(chunk as i64)),
                Expr::I64(tokens),
            ),
        );
        let row0 = b.let_(
            Scalar::I64,
            Expr::Special(Special::BlockY).mul(Expr::I64(tokens)),
        );
        (start, end, row0)
    };
    let chunk_row = |b: Expr, ch: Expr| b.mul(Expr::I64(chunks as i64)).add(ch).mul(Expr::I64(d));

    // 1. Per-chunk sums.
    let mut kb = KernelBuilder::new(
        &format!("{base}_sums"),
        doc.clone(),
        [chunks as u32, h.batch as u32],
        threads,
    );
    let (pk, pv) = (
        kb.param("k", Scalar::F32, false),
        kb.param("v", Scalar::F32, false),
    );
    let ps = kb.param("sums", Scalar::F32, true);
    let (start, end, row0) = range(&mut kb);
    let acc = kb.let_(Scalar::F32, Expr::F32(0.0));
    let mut scratch = None;
    kb.for_(Expr::Var(start), Expr::Var(end), Expr::I64(1), |b, t| {
        let row = Expr::Var(row0).add(Expr::Var(t));
        let input = |i: usize| match i {
            0 => at(pk, vk, row.clone(), tid()),
            1 => at(pv, vv, row.clone(), tid()),
            _ => Expr::Var(acc),
        };
        let next = run_row(b, &kv_step, h.d, &input, &mut scratch)?;
        b.assign(acc, Expr::Var(next));
        Ok(())
    })?;
    kb.if_(tid().lt(Expr::I64(d)), |b| {
        b.store(
            ps,
            chunk_row(
                Expr::Special(Special::BlockY),
                Expr::Special(Special::BlockX),
            )
            .add(tid()),
            Expr::Var(acc),
        );
        Ok(())
    })?;
    cx.launch(kb.finish(), vec![kk.clone(), v.clone(), sums.clone()])?;

    // 2. Outputs.
    let (name, grid) = if h.causal {
        (format!("{base}_scan"), [chunks as u32, h.batch as u32])
    } else {
        (format!("{base}_out"), [h.tokens as u32, h.batch as u32])
    };
    let mut kb = KernelBuilder::new(&name, doc, grid, threads);
    let (pq, pk, pv) = (
        kb.param("q", Scalar::F32, false),
        kb.param("k", Scalar::F32, false),
        kb.param("v", Scalar::F32, false),
    );
    let ps = kb.param("sums", Scalar::F32, false);
    let po = kb.param("out", Scalar::F32, true);
    // kv: the sums of every chunk (non-causal) or of the chunks before this one (causal).
    let kv = kb.let_(Scalar::F32, Expr::F32(0.0));
    let upto = if h.causal {
        Expr::Special(Special::BlockX)
    } else {
        Expr::I64(chunks as i64)
    };
    kb.if_(tid().lt(Expr::I64(d)), |b| {
        b.for_(Expr::I64(0), upto, Expr::I64(1), |b, ch| {
            let x = Expr::load(
                ps,
                chunk_row(Expr::Special(Special::BlockY), Expr::Var(ch)).add(tid()),
            );
            b.assign(kv, Expr::Var(kv).add(x));
            Ok(())
        })
    })?;
    let mut scratch = None;
    let emit_out = |b: &mut KernelBuilder, row: Expr, scratch: &mut Option<usize>| -> Result<()> {
        let input = |i: usize| match i {
            0 => at(pq, vq, row.clone(), tid()),
            _ => Expr::Var(kv),
        };
        let o = run_row(b, &output_row, h.d, &input, scratch)?;
        b.if_(tid().lt(Expr::I64(d)), |b| {
            b.store(po, row.clone().mul(Expr::I64(d)).add(tid()), Expr::Var(o));
            Ok(())
        })
    };
    if h.causal {
        let (start, end, row0) = range(&mut kb);
        kb.for_(Expr::Var(start), Expr::Var(end), Expr::I64(1), |b, t| {
            let row = Expr::Var(row0).add(Expr::Var(t));
            let input = |i: usize| match i {
                0 => at(pk, vk, row.clone(), tid()),
                1 => at(pv, vv, row.clone(), tid()),
                _ => Expr::Var(kv),
            };
            let next = run_row(b, &kv_step, h.d, &input, &mut scratch)?;
            b.assign(kv, Expr::Var(next));
            emit_out(b, row, &mut scratch)
        })?;
    } else {
        let row = Expr::Special(Special::BlockY)
            .mul(Expr::I64(tokens))
            .add(Expr::Special(Special::BlockX));
        emit_out(&mut kb, row, &mut scratch)?;
    }
    cx.launch(kb.finish(), vec![q, kk, v, sums, out])
}
