//! Fuses softmax attention into one [`KernelKind::Attention`] kernel, for backends that ask
//! ([`crate::LowerOptions::fuse_attention`]; the GPU backend's flash-style kernel): after the
//! recognisers have run, a product `S = Q·Kᵀ`, the softmax row kernel over `S`, and the
//! product `P·V` become one kernel, and the `nq × nk` values `S` and `P` are left out of the
//! memory plan.
//!
//! Taken only when nothing else sees `S` or `P`: each is a plain arena value read by exactly
//! the next kernel and by nothing else (no view of it, not an output), the softmax program is
//! exactly [`RowProgram::softmax`] of an argument reading `S` as rows, neither product has an
//! epilogue, and both products run over the same batch axes with `S` and `P` dense. Its meaning
//! is the three kernels' (the interpreter's), up to f32 rounding.

use crate::kernel::{
    Attention, Kernel, KernelKind, ProductViews, Strided, Value, ValueId, ValueKind,
};
use crate::row::{InputKind, ReduceKind, RowProgram};

/// The views of product kernel `k` (dense when it has none).
fn views_of(values: &[Value], k: &Kernel) -> Option<ProductViews> {
    let KernelKind::MatMul {
        b_transposed,
        views,
        ..
    } = &k.kind
    else {
        return None;
    };
    Some(match views {
        Some(v) => (**v).clone(),
        None => ProductViews::dense(
            &values[*k.inputs.first()?].shape,
            &values[*k.inputs.get(1)?].shape,
            *b_transposed,
            &values[k.output].shape,
        ),
    })
}

/// `s` (over batch axes `from`) over the finer batch axes `to`, where each axis of `from` is
/// split row-major into consecutive axes of `to` (`[B, H]` into `[B, Hkv, times]`): `None`
/// when `to` is not such a split.
fn split_batch(s: &Strided, from: &[usize], to: &[usize]) -> Option<Strided> {
    let mut strides = Vec::with_capacity(to.len());
    let mut j = 0;
    for (&n, &stride) in from.iter().zip(&s.batch_strides) {
        let start = j;
        let mut prod = 1usize;
        while prod < n || (n == 1 && j == start) {
            prod = prod.checked_mul(*to.get(j)?)?;
            j += 1;
        }
        // Size-1 axes of `to` after the group belong to the next one.
        if prod != n {
            return None;
        }
        let mut inner = n;
        for &m in &to[start..j] {
            inner /= m.max(1);
            strides.push(stride * inner);
        }
    }
    while j < to.len() {
        if to[j] != 1 {
            return None;
        }
        strides.push(0);
        j += 1;
    }
    Some(Strided {
        batch_strides: strides,
        ..s.clone()
    })
}

/// Both products' views over one set of batch axes (the finer of the two), if one splits the
/// other.
fn common_batch(v1: ProductViews, v2: ProductViews) -> Option<(ProductViews, ProductViews)> {
    if v1.batch == v2.batch {
        return Some((v1, v2));
    }
    let over = |v: &ProductViews, to: &[usize]| -> Option<ProductViews> {
        Some(ProductViews {
            a: split_batch(&v.a, &v.batch, to)?,
            b: split_batch(&v.b, &v.batch, to)?,
            c: split_batch(&v.c, &v.batch, to)?,
            batch: to.to_vec(),
        })
    };
    if v1.batch.len() > v2.batch.len() {
        let v2 = over(&v2, &v1.batch)?;
        Some((v1, v2))
    } else {
        let v1 = over(&v1, &v2.batch)?;
        Some((v1, v2))
    }
}

/// How many kernel inputs and outputs read value `v` (through views), and whether a view of it
/// exists.
fn readers(
    values: &[Value],
    kernels: &[Kernel],
    outputs: &[(String, ValueId)],
    v: ValueId,
) -> Option<usize> {
    if values.iter().any(|x| x.kind == ValueKind::Alias(v)) || outputs.iter().any(|&(_, o)| o == v)
    {
        return None;
    }
    Some(
        kernels
            .iter()
            .map(|k| k.inputs.iter().filter(|&&i| i == v).count())
            .sum(),
    )
}

/// The fused kernel for products `k1` (`Q·Kᵀ`), row kernel `r` (softmax) and product `k2`
/// (`P·V`), if they form one.
fn fuse(
    values: &[Value],
    kernels: &[Kernel],
    outputs: &[(String, ValueId)],
    k1: &Kernel,
    r: &Kernel,
    k2: &Kernel,
) -> Option<Kernel> {
    let KernelKind::MatMul {
        m: nq,
        k: d,
        n: nk,
        epilogue: None,
        ..
    } = k1.kind
    else {
        return None;
    };
    let KernelKind::MatMul {
        m: nq2,
        k: nk2,
        n: dv,
        epilogue: None,
        ..
    } = k2.kind
    else {
        return None;
    };
    let KernelKind::Row {
        program,
        rows,
        d: row_d,
        causal,
    } = &r.kind
    else {
        return None;
    };
    let (s, p) = (k1.output, r.output);
    if (nq, nk) != (nq2, nk2) || *row_d != nk || k2.inputs.first() != Some(&p) {
        return None;
    }
    if values[s].kind != ValueKind::Temp || values[p].kind != ValueKind::Temp {
        return None;
    }
    if readers(values, kernels, outputs, s)? != 1 || readers(values, kernels, outputs, p)? != 1 {
        return None;
    }
    // The program: a softmax of an argument that reads S as rows, S read once.
    let scores = r.inputs.iter().position(|&v| v == s)?;
    if r.inputs.iter().filter(|&&v| v == s).count() != 1
        || program.inputs.get(scores) != Some(&InputKind::Rows)
        || program.params != 0
        || program.reductions.first().map(|x| x.kind) != Some(ReduceKind::Max)
    {
        return None;
    }
    let x = program.reductions[0].expr.clone();
    if *program != RowProgram::softmax(program.inputs.clone(), 0, x) {
        return None;
    }
    let (v1, v2) = common_batch(views_of(values, k1)?, views_of(values, k2)?)?;
    // S and P row-major over the products' batch axes (which may split a head axis, GQA), so
    // score row `r` is batch index `r / nq`, query `r mod nq`, as the row kernel reads it.
    let mut dims = v1.batch.clone();
    dims.extend([nq, nk]);
    let dense = Strided::dense(&dims, &v1.batch, false);
    // A size-1 batch axis's stride never matters.
    let same = |x: &Strided| {
        x.offset == dense.offset
            && (x.row_stride, x.col_stride) == (dense.row_stride, dense.col_stride)
            && v1
                .batch
                .iter()
                .zip(x.batch_strides.iter().zip(&dense.batch_strides))
                .all(|(&n, (a, b))| n == 1 || a == b)
    };
    if v1.batch != v2.batch
        || !same(&v1.c)
        || !same(&v2.a)
        || *rows != v1.batch.iter().product::<usize>() * nq
    {
        return None;
    }
    let mut inputs = vec![k1.inputs[0], k1.inputs[1], *k2.inputs.get(1)?];
    inputs.extend(
        r.inputs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != scores)
            .map(|(_, &v)| v),
    );
    let mut nodes = k1.nodes.clone();
    nodes.extend(&r.nodes);
    nodes.extend(&k2.nodes);
    let spec = Attention {
        batch: v1.batch.clone(),
        nq,
        nk,
        d,
        dv,
        q: v1.a,
        k: v1.b,
        v: v2.b,
        out: v2.c,
        softmax: program.clone(),
        scores,
        causal: *causal,
    };
    // Q, K, V read once per query row block at most, the output written once: the scores'
    // traffic is gone.
    let bytes = (k1.bytes + k2.bytes).saturating_sub(2 * 4 * (spec.rows() * nk) as u64);
    Some(Kernel {
        name: if causal.is_some() {
            "attention:causal".into()
        } else {
            "attention".into()
        },
        kind: KernelKind::Attention(Box::new(spec)),
        inputs,
        output: k2.output,
        nodes,
        layer: k2.layer,
        role: k2.role,
        flops: k1.flops + r.flops + k2.flops,
        bytes,
    })
}

/// `kernels` (in execution order) with every fusable `Q·Kᵀ → softmax → P·V` triple replaced by
/// one attention kernel at the position of its last kernel.
pub(crate) fn fuse_attention(
    values: &[Value],
    kernels: Vec<Kernel>,
    outputs: &[(String, ValueId)],
) -> Vec<Kernel> {
    let producer = |v: ValueId| kernels.iter().position(|k| k.output == v);
    let mut fused: Vec<(usize, Kernel, [usize; 2])> = vec![];
    for (i2, k2) in kernels.iter().enumerate() {
        if !matches!(k2.kind, KernelKind::MatMul { .. }) {
            continue;
        }
        let Some(ir) = k2.inputs.first().and_then(|&p| producer(p)) else {
            continue;
        };
        let r = &kernels[ir];
        if !matches!(r.kind, KernelKind::Row { .. }) {
            continue;
        }
        // The product among the row kernel's inputs.
        let Some(i1) = r
            .inputs
            .iter()
            .filter_map(|&v| producer(v))
            .find(|&i| matches!(kernels[i].kind, KernelKind::MatMul { .. }))
        else {
            continue;
        };
        if let Some(k) = fuse(values, &kernels, outputs, &kernels[i1], r, k2) {
            fused.push((i2, k, [i1, ir]));
        }
    }
    let mut gone = vec![false; kernels.len()];
    let mut at: Vec<Option<Kernel>> = vec![None; kernels.len()];
    for (i2, k, [i1, ir]) in fused {
        gone[i1] = true;
        gone[ir] = true;
        at[i2] = Some(k);
    }
    kernels
        .into_iter()
        .zip(at)
        .zip(gone)
        .filter(|(_, gone)| !gone)
        .map(|((k, f), _)| f.unwrap_or(k))
        .collect()
}
