//! Fused softmax attention (`lower`'s `KernelKind::Attention`), flash-style: one block per
//! score row (a batch index and a query), keys in tiles of one per thread; each tile's scores
//! `x(q·k_j)` (the softmax program's argument: scale, masks) are reduced to a running maximum
//! and sum (online softmax, the running output rescaled when the maximum grows), and its
//! probabilities, through shared memory, are accumulated into the output row, one feature per
//! thread. The `nq × nk` scores are never stored. A row with every key masked is zeros (as the
//! softmax row kernel writes it).
//!
//! Never: read a key past the row's valid length (causal rows stop early).

use attnopt_lower::{Attention, Kernel};

use super::row::{expr, input_index};
use super::Gen;
use crate::error::{GpuError, Result};
use crate::kbuild::{
    block_index, grid_for, strided_at, threads_for, unravel, Combine, KernelBuilder,
};
use crate::kir::{BinOp, Expr, Scalar, Special, UnOp, Var};

pub fn attention(cx: &mut Gen, k: &Kernel, a: &Attention) -> Result<()> {
    if a.dv > 1024 || a.d > 8192 {
        return Err(GpuError::NotSupported(format!(
            "fused attention with {} features per query and {} per value",
            a.d, a.dv
        )));
    }
    let threads = threads_for(a.dv.max(32), 1024).max(threads_for(64, 1024));
    let rows = a.rows();
    let mut b = KernelBuilder::new(&Gen::base_name(k), cx.doc(k), grid_for(rows), threads);
    let pq = b.param("q", Scalar::F32, false);
    let pk = b.param("k", Scalar::F32, false);
    let pv = b.param("v", Scalar::F32, false);
    let extra: Vec<usize> = (3..k.inputs.len())
        .map(|i| b.param(&format!("in{i}"), Scalar::F32, false))
        .collect();
    let po = b.param("out", Scalar::F32, true);
    let qs = b.shared(Scalar::F32, a.d.max(1));
    let ps = b.shared(Scalar::F32, threads as usize);
    let tid = || Expr::Special(Special::Thread);
    let (nq, nk) = (a.nq as i64, a.nk as i64);
    let r = b.let_(Scalar::I64, block_index());
    let live = Expr::Var(r).lt(Expr::I64(rows as i64));
    // Blocks past the last row (a grid rounded up) read row 0 and write nothing.
    let rr = b.let_(
        Scalar::I64,
        Expr::select(live.clone(), Expr::Var(r), Expr::I64(0)),
    );
    let bflat = b.let_(Scalar::I64, Expr::Var(rr).div(Expr::I64(nq.max(1))));
    let i = b.let_(Scalar::I64, Expr::Var(rr).rem(Expr::I64(nq.max(1))));
    let bi = unravel(&mut b, Expr::Var(bflat), &a.batch);
    let valid = match a.causal {
        Some(offset) => Expr::bin(
            BinOp::Min,
            Expr::I64(nk),
            Expr::Var(i).add(Expr::I64(1 + offset as i64)),
        ),
        None => Expr::I64(nk),
    };
    let valid = b.let_(Scalar::I64, valid);
    // The query row, once, into shared memory.
    b.for_threads(Expr::I64(a.d as i64), |b, kk| {
        let x = Expr::load(pq, strided_at(&a.q, &bi, Expr::Var(i), Expr::Var(kk)));
        b.store_shared(qs, Expr::Var(kk), x);
        Ok(())
    })?;
    b.sync();
    let m = b.let_(Scalar::F32, Expr::F32(f32::NEG_INFINITY));
    let l = b.let_(Scalar::F32, Expr::F32(0.0));
    let acc = b.let_(Scalar::F32, Expr::F32(0.0));
    let mut scratch = None;
    let t = threads as i64;
    let kinds = a.softmax.inputs.clone();
    b.for_(Expr::I64(0), Expr::Var(valid), Expr::I64(t), |b, j0| {
        let j = b.let_(Scalar::I64, Expr::Var(j0).add(tid()));
        let x = b.let_(Scalar::F32, Expr::F32(f32::NEG_INFINITY));
        b.if_(Expr::Var(j).lt(Expr::Var(valid)), |b| {
            let s = b.let_(Scalar::F32, Expr::F32(0.0));
            b.for_(
                Expr::I64(0),
                Expr::I64(a.d as i64),
                Expr::I64(1),
                |b, kk| {
                    let kv = Expr::load(pk, strided_at(&a.k, &bi, Expr::Var(kk), Expr::Var(j)));
                    b.assign(
                        s,
                        Expr::Var(s).add(Expr::load_shared(qs, Expr::Var(kk)).mul(kv)),
                    );
                    Ok(())
                },
            )?;
            // The softmax program's argument at column j: the scores input is `s`, the others
            // read as the row kernel would (row rr of nk columns).
            let mut other = extra.iter();
            let params: Vec<Option<usize>> = (0..kinds.len())
                .map(|p| {
                    if p == a.scores {
                        None
                    } else {
                        other.next().copied()
                    }
                })
                .collect();
            let input = |p: usize| -> Expr {
                let Some(Some(param)) = params.get(p) else {
                    return Expr::Var(s);
                };
                Expr::load(
                    *param,
                    input_index(kinds[p], Expr::Var(rr), Expr::Var(j), a.nk),
                )
            };
            let arg = expr(b, &a.softmax.reductions[0].expr, &input, &[])?;
            b.assign(x, arg);
            Ok(())
        })?;
        let tmax = b.let_(Scalar::F32, Expr::Var(x));
        b.block_reduce(tmax, Combine::Max, &mut scratch);
        let m_new = b.let_(
            Scalar::F32,
            Expr::bin(BinOp::Max, Expr::Var(m), Expr::Var(tmax)),
        );
        let neg_inf = || Expr::F32(f32::NEG_INFINITY);
        let is_ninf = |v: Var| Expr::bin(BinOp::Eq, Expr::Var(v), neg_inf());
        // exp(x - m_new), 0 for a masked key (and while every key so far is masked).
        let p = b.let_(
            Scalar::F32,
            Expr::select(
                is_ninf(x),
                Expr::F32(0.0),
                Expr::un(UnOp::Exp, Expr::Var(x).sub(Expr::Var(m_new))),
            ),
        );
        let scale = b.let_(
            Scalar::F32,
            Expr::select(
                is_ninf(m),
                Expr::F32(0.0),
                Expr::un(UnOp::Exp, Expr::Var(m).sub(Expr::Var(m_new))),
            ),
        );
        let psum = b.let_(Scalar::F32, Expr::Var(p));
        b.block_reduce(psum, Combine::Sum, &mut scratch);
        b.assign(l, Expr::Var(l).mul(Expr::Var(scale)).add(Expr::Var(psum)));
        b.assign(acc, Expr::Var(acc).mul(Expr::Var(scale)));
        b.assign(m, Expr::Var(m_new));
        b.store_shared(ps, tid(), Expr::Var(p));
        b.sync();
        let tile = Expr::bin(
            BinOp::Min,
            Expr::I64(t),
            Expr::Var(valid).sub(Expr::Var(j0)),
        );
        b.if_(tid().lt(Expr::I64(a.dv as i64)), |b| {
            b.for_(Expr::I64(0), tile, Expr::I64(1), |b, jj| {
                let vv = Expr::load(
                    pv,
                    strided_at(&a.v, &bi, Expr::Var(j0).add(Expr::Var(jj)), tid()),
                );
                b.assign(
                    acc,
                    Expr::Var(acc).add(Expr::load_shared(ps, Expr::Var(jj)).mul(vv)),
                );
                Ok(())
            })
        })?;
        b.sync();
        Ok(())
    })?;
    let mine = Expr::bin(BinOp::And, live, tid().lt(Expr::I64(a.dv as i64)));
    b.if_(mine, |b| {
        let o = Expr::select(
            Expr::bin(BinOp::Eq, Expr::Var(m), Expr::F32(f32::NEG_INFINITY)),
            Expr::F32(0.0),
            Expr::Var(acc).div(Expr::Var(l)),
        );
        b.store(po, strided_at(&a.out, &bi, Expr::Var(i), tid()), o);
        Ok(())
    })?;
    let args = cx.inputs_then_output(k)?;
    cx.launch(b.finish(), args)
}
