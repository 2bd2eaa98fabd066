//! Scaling Transformers' sparse layers: the sparse feed-forward core (per row and block of
//! units, the first maximum of the logits picks one unit; only its column of `W1` and row of
//! `W2` are read) and the factored product (`y[r, s, m] = Σ_d x[r, d]·G[s, d]·P[d, m]`).
//! Their meaning is `lower`'s specs (`SparseFf`, `Factored`), hence the interpreter's.
//!
//! Never: read a unit's weights that no row chose.

use attnopt_lower::{Factored, Kernel, SparseFf, W2Layout};

use super::row::unary;
use super::Gen;
use crate::error::{GpuError, Result};
use crate::kbuild::{block_index, first_max_step, grid_for, threads_for, Combine, KernelBuilder};
use crate::kir::{Expr, Scalar, Special};
use crate::program::Slice;

/// `out[r, j] = Σ_i x[r, i]·w[i, j] (+ bias[j])` for `rows × inner` by `inner × cols`: one block
/// per row, threads over the columns (the controller's two small products).
fn row_times_matrix(
    cx: &mut Gen,
    name: &str,
    doc: Vec<String>,
    (rows, inner, cols): (usize, usize, usize),
    args: (Slice, Slice, Option<Slice>, Slice),
) -> Result<()> {
    let mut b = KernelBuilder::new(name, doc, grid_for(rows), threads_for(cols, 256));
    let x = b.param("x", Scalar::F32, false);
    let w = b.param("w", Scalar::F32, false);
    let bias = args.2.as_ref().map(|_| b.param("bias", Scalar::F32, false));
    let out = b.param("out", Scalar::F32, true);
    let r = b.let_(Scalar::I64, block_index());
    b.for_threads(Expr::I64(cols as i64), |b, j| {
        let acc = b.let_(Scalar::F32, Expr::F32(0.0));
        b.for_(
            Expr::I64(0),
            Expr::I64(inner as i64),
            Expr::I64(1),
            |b, i| {
                let xv = Expr::load(
                    x,
                    Expr::Var(r).mul(Expr::I64(inner as i64)).add(Expr::Var(i)),
                );
                let wv = Expr::load(
                    w,
                    Expr::Var(i).mul(Expr::I64(cols as i64)).add(Expr::Var(j)),
                );
                b.assign(acc, Expr::Var(acc).add(xv.mul(wv)));
                Ok(())
            },
        )?;
        let v = match bias {
            Some(p) => Expr::Var(acc).add(Expr::load(p, Expr::Var(j))),
            None => Expr::Var(acc),
        };
        b.store(
            out,
            Expr::Var(r).mul(Expr::I64(cols as i64)).add(Expr::Var(j)),
            v,
        );
        Ok(())
    })?;
    let (xs, ws, bs, os) = args;
    let mut a = vec![xs, ws];
    a.extend(bs);
    a.push(os);
    cx.launch(b.finish(), a)
}

pub fn sparse_ff(cx: &mut Gen, k: &Kernel, s: &SparseFf) -> Result<()> {
    let slot = |j: usize| {
        k.inputs
            .get(j)
            .copied()
            .ok_or_else(|| GpuError::Lower(format!("{}: missing input {j}", k.name)))
    };
    let base = Gen::base_name(k);
    let doc = cx.doc(k);
    let (h, w1, w2) = (
        cx.slice(slot(SparseFf::H)?)?,
        cx.slice(slot(SparseFf::W1)?)?,
        cx.slice(slot(SparseFf::W2)?)?,
    );
    let b1 = match s.b1() {
        Some(j) => Some(cx.slice(slot(j)?)?),
        None => None,
    };
    let out = cx.slice(k.output)?;
    // The logits: an input, or the controller's `(h·m1)·m2 + mb` into scratch.
    let logits = match s.controller {
        None => cx.slice(slot(SparseFf::LOGITS_OR_M1)?)?,
        Some(rank) => {
            let j = SparseFf::LOGITS_OR_M1;
            let (m1, m2, mb) = (
                cx.slice(slot(j)?)?,
                cx.slice(slot(j + 1)?)?,
                cx.slice(slot(j + 2)?)?,
            );
            let all = cx.scratch(s.rows * (rank + s.units), Scalar::F32);
            let low = Slice {
                len: s.rows * rank,
                ..all.clone()
            };
            let logits = Slice {
                byte_offset: all.byte_offset + 4 * s.rows * rank,
                len: s.rows * s.units,
                ..all
            };
            row_times_matrix(
                cx,
                &format!("{base}_low"),
                doc.clone(),
                (s.rows, s.d, rank),
                (h.clone(), m1, None, low.clone()),
            )?;
            row_times_matrix(
                cx,
                &format!("{base}_logits"),
                doc.clone(),
                (s.rows, rank, s.units),
                (low, m2, Some(mb), logits.clone()),
            )?;
            logits
        }
    };
    let mut b = KernelBuilder::new(
        &base,
        doc,
        grid_for(s.rows),
        threads_for(s.d_out.max(s.d), 256),
    );
    let ph = b.param("h", Scalar::F32, false);
    let pw1 = b.param("w1", Scalar::F32, false);
    let pw2 = b.param("w2", Scalar::F32, false);
    let pl = b.param("logits", Scalar::F32, false);
    let pb1 = b1.as_ref().map(|_| b.param("b1", Scalar::F32, false));
    let po = b.param("out", Scalar::F32, true);
    let r = b.let_(Scalar::I64, block_index());
    let (d, units, d_out, block) = (
        s.d as i64,
        s.units as i64,
        s.d_out as i64,
        s.block.max(1) as i64,
    );
    let blocks = s.blocks() as i64;
    b.for_threads(Expr::I64(d_out), |b, c| {
        b.store(
            po,
            Expr::Var(r).mul(Expr::I64(d_out)).add(Expr::Var(c)),
            Expr::F32(0.0),
        );
        Ok(())
    })?;
    let mut scratch = None;
    b.for_(Expr::I64(0), Expr::I64(blocks), Expr::I64(1), |b, x| {
        // The first maximum of the block's logits (a NaN never wins), every thread alike.
        let first = Expr::Var(r)
            .mul(Expr::I64(units))
            .add(Expr::Var(x).mul(Expr::I64(block)));
        let best = b.let_(Scalar::F32, Expr::load(pl, first.clone()));
        let best_i = b.let_(Scalar::I64, Expr::I64(0));
        b.for_(Expr::I64(1), Expr::I64(block), Expr::I64(1), |b, i| {
            let v = b.let_(Scalar::F32, Expr::load(pl, first.clone().add(Expr::Var(i))));
            first_max_step(b, (best, best_i), v, Expr::Var(i));
            Ok(())
        })?;
        let u = b.let_(
            Scalar::I64,
            Expr::Var(x).mul(Expr::I64(block)).add(Expr::Var(best_i)),
        );
        // h · W1[:, u], over the block.
        let dot = b.let_(Scalar::F32, Expr::F32(0.0));
        b.for_threads(Expr::I64(d), |b, i| {
            let hv = Expr::load(ph, Expr::Var(r).mul(Expr::I64(d)).add(Expr::Var(i)));
            let wv = Expr::load(pw1, Expr::Var(i).mul(Expr::I64(units)).add(Expr::Var(u)));
            b.assign(dot, Expr::Var(dot).add(hv.mul(wv)));
            Ok(())
        })?;
        b.block_reduce(dot, Combine::Sum, &mut scratch);
        let pre = match pb1 {
            Some(p) => Expr::Var(dot).add(Expr::load(p, Expr::Var(u))),
            None => Expr::Var(dot),
        };
        let a = unary(b, s.act, pre);
        let a = b.let_(Scalar::F32, a);
        let w2_row = match s.w2_layout {
            W2Layout::Units => Expr::Var(u),
            W2Layout::BlockSwapped => Expr::Var(best_i).mul(Expr::I64(blocks)).add(Expr::Var(x)),
        };
        let w2_row = b.let_(Scalar::I64, w2_row);
        b.for_threads(Expr::I64(d_out), |b, c| {
            let o = Expr::Var(r).mul(Expr::I64(d_out)).add(Expr::Var(c));
            let w = Expr::load(
                pw2,
                Expr::Var(w2_row).mul(Expr::I64(d_out)).add(Expr::Var(c)),
            );
            b.store(po, o.clone(), Expr::load(po, o).add(Expr::Var(a).mul(w)));
            Ok(())
        })
    })?;
    let mut args = vec![h, w1, w2, logits];
    args.extend(b1);
    args.push(out);
    cx.launch(b.finish(), args)
}

pub fn factored(cx: &mut Gen, k: &Kernel, f: &Factored) -> Result<()> {
    let [x, g, p] = k.inputs.as_slice() else {
        return Err(GpuError::Lower(format!(
            "{}: a factored product takes x, G, P",
            k.name
        )));
    };
    let args = vec![
        cx.slice(*x)?,
        cx.slice(*g)?,
        cx.slice(*p)?,
        cx.slice(k.output)?,
    ];
    let (d, s_, m) = (f.d as i64, f.modules as i64, f.module_dim as i64);
    let mut b = KernelBuilder::new(
        &Gen::base_name(k),
        cx.doc(k),
        [f.modules as u32, f.rows as u32],
        threads_for(f.module_dim, 256),
    );
    let (px, pg, pp) = (
        b.param("x", Scalar::F32, false),
        b.param("g", Scalar::F32, false),
        b.param("p", Scalar::F32, false),
    );
    let po = b.param("out", Scalar::F32, true);
    let (s, r) = (
        Expr::Special(Special::BlockX),
        Expr::Special(Special::BlockY),
    );
    b.for_threads(Expr::I64(m), |b, j| {
        let acc = b.let_(Scalar::F32, Expr::F32(0.0));
        b.for_(Expr::I64(0), Expr::I64(d), Expr::I64(1), |b, i| {
            let xv = Expr::load(px, r.clone().mul(Expr::I64(d)).add(Expr::Var(i)));
            let gv = Expr::load(pg, s.clone().mul(Expr::I64(d)).add(Expr::Var(i)));
            let pv = Expr::load(pp, Expr::Var(i).mul(Expr::I64(m)).add(Expr::Var(j)));
            b.assign(acc, Expr::Var(acc).add(xv.mul(gv).mul(pv)));
            Ok(())
        })?;
        let o = r
            .clone()
            .mul(Expr::I64(s_))
            .add(s.clone())
            .mul(Expr::I64(m))
            .add(Expr::Var(j));
        b.store(po, o, Expr::Var(acc));
        Ok(())
    })?;
    cx.launch(b.finish(), args)
}
