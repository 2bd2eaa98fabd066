//! A matrix product as a generated kernel (for targets without the library, and to run whole
//! programs from generated code): 16 × 16 output tiles, one thread per output element, `k` in
//! steps of 16 through two shared tiles; batch indices from `blockIdx.y`. Reads every operand
//! through the product's strided views; elements past an edge are read as zero and never
//! written. Its meaning is the library call's (`program::Gemm`): `c = a · b` per batch index,
//! f32 accumulation.
//!
//! Never: fast — it is the correct fallback; the library (cuBLASLt) is the fast path.

use crate::error::Result;
use crate::kbuild::{strided_at, unravel, KernelBuilder};
use crate::kir::{BinOp, Expr, GpuKernel, Scalar, Special};
use crate::program::Gemm;

/// Tile edge.
pub const TILE: usize = 16;

/// The kernel for `g`: parameters `a`, `b`, `c`.
pub fn gemm_kernel(name: &str, doc: Vec<String>, g: &Gemm) -> Result<GpuKernel> {
    let (m, n, k) = (g.m as i64, g.n as i64, g.k as i64);
    let t = TILE as i64;
    let tiles_m = g.m.div_ceil(TILE).max(1);
    let tiles_n = g.n.div_ceil(TILE).max(1);
    let batches: usize = g.views.batch.iter().product::<usize>().max(1);
    let mut b = KernelBuilder::new(
        name,
        doc,
        [(tiles_m * tiles_n) as u32, batches as u32],
        (TILE * TILE) as u32,
    );
    let pa = b.param("a", Scalar::F32, false);
    let pb = b.param("b", Scalar::F32, false);
    let pc = b.param("c", Scalar::F32, true);
    let sa = b.shared(Scalar::F32, TILE * TILE);
    let sb = b.shared(Scalar::F32, TILE * TILE);
    let tid = || Expr::Special(Special::Thread);
    let bi = unravel(&mut b, Expr::Special(Special::BlockY), &g.views.batch);
    let tile = Expr::Special(Special::BlockX);
    let ti = b.let_(Scalar::I64, tid().div(Expr::I64(t)));
    let tj = b.let_(Scalar::I64, tid().rem(Expr::I64(t)));
    let i = b.let_(
        Scalar::I64,
        tile.clone()
            .div(Expr::I64(tiles_n as i64))
            .mul(Expr::I64(t))
            .add(Expr::Var(ti)),
    );
    let j = b.let_(
        Scalar::I64,
        tile.rem(Expr::I64(tiles_n as i64))
            .mul(Expr::I64(t))
            .add(Expr::Var(tj)),
    );
    let acc = b.let_(Scalar::F32, Expr::F32(0.0));
    let inside = |r: Expr, rn: i64, c: Expr, cn: i64| {
        Expr::bin(BinOp::And, r.lt(Expr::I64(rn)), c.lt(Expr::I64(cn)))
    };
    b.for_(Expr::I64(0), Expr::I64(k), Expr::I64(t), |b, k0| {
        // a[i, k0 + tj] and b[k0 + ti, j] into the tiles (zero past the edges).
        let ka = b.let_(Scalar::I64, Expr::Var(k0).add(Expr::Var(tj)));
        let kb = b.let_(Scalar::I64, Expr::Var(k0).add(Expr::Var(ti)));
        let xa = Expr::select(
            inside(Expr::Var(i), m, Expr::Var(ka), k),
            Expr::load(pa, strided_at(&g.views.a, &bi, Expr::Var(i), Expr::Var(ka))),
            Expr::F32(0.0),
        );
        let xb = Expr::select(
            inside(Expr::Var(kb), k, Expr::Var(j), n),
            Expr::load(pb, strided_at(&g.views.b, &bi, Expr::Var(kb), Expr::Var(j))),
            Expr::F32(0.0),
        );
        b.store_shared(sa, tid(), xa);
        b.store_shared(sb, tid(), xb);
        b.sync();
        b.for_(Expr::I64(0), Expr::I64(t), Expr::I64(1), |b, kk| {
            let x = Expr::load_shared(sa, Expr::Var(ti).mul(Expr::I64(t)).add(Expr::Var(kk)));
            let y = Expr::load_shared(sb, Expr::Var(kk).mul(Expr::I64(t)).add(Expr::Var(tj)));
            b.assign(acc, Expr::Var(acc).add(x.mul(y)));
            Ok(())
        })?;
        b.sync();
        Ok(())
    })?;
    b.if_(inside(Expr::Var(i), m, Expr::Var(j), n), |b| {
        b.store(
            pc,
            strided_at(&g.views.c, &bi, Expr::Var(i), Expr::Var(j)),
            Expr::Var(acc),
        );
        Ok(())
    })?;
    Ok(b.finish())
}
