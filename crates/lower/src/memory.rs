//! The memory plan: every value a kernel computes gets an offset in one activation arena,
//! reused once the value is dead (its last reader has run). Inputs and weights live outside the
//! arena; a view shares its base's bytes and keeps it alive.

use serde::Serialize;

use crate::kernel::{Kernel, KernelKind, Value, ValueId, ValueKind};

/// Alignment of every arena offset (a cache line).
pub const ALIGN: usize = 64;

/// Arena offsets and sizes.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    /// Byte offset of each value in the arena (`None` outside it: inputs, weights, views).
    pub offsets: Vec<Option<usize>>,
    /// Peak arena size: the activation memory a run needs.
    pub arena_bytes: usize,
    /// What a plan without reuse would need (every computed value kept).
    pub naive_bytes: usize,
}

/// The base value whose bytes `v` uses (following views).
pub fn storage_of(values: &[Value], mut v: ValueId) -> ValueId {
    while let ValueKind::Alias(b) = values[v].kind {
        v = b;
    }
    v
}

/// Plans the arena for `kernels` run in order; `outputs` stay live to the end.
pub fn plan(values: &[Value], kernels: &[Kernel], outputs: &[(String, ValueId)]) -> MemoryPlan {
    let n = kernels.len();
    let mut def: Vec<Option<usize>> = vec![None; values.len()];
    let mut last: Vec<usize> = vec![0; values.len()];
    for (i, k) in kernels.iter().enumerate() {
        let out = storage_of(values, k.output);
        if !matches!(k.kind, KernelKind::View) && def[out].is_none() {
            def[out] = Some(i);
        }
        last[out] = last[out].max(i);
        for &v in &k.inputs {
            let s = storage_of(values, v);
            last[s] = last[s].max(i);
        }
    }
    for &(_, v) in outputs {
        last[storage_of(values, v)] = n;
    }
    let size = |v: ValueId| values[v].bytes().div_ceil(ALIGN) * ALIGN;
    let mut offsets = vec![None; values.len()];
    // Free blocks as (offset, size), and the arena's current end.
    let mut free: Vec<(usize, usize)> = Vec::new();
    let mut end = 0usize;
    let mut naive = 0usize;
    let mut live: Vec<ValueId> = Vec::new();
    for i in 0..n {
        // Allocate what kernel i defines.
        for v in
            (0..values.len()).filter(|&v| def[v] == Some(i) && values[v].kind == ValueKind::Temp)
        {
            let s = size(v);
            naive += s;
            let slot = free
                .iter()
                .enumerate()
                .filter(|(_, &(_, fs))| fs >= s)
                .min_by_key(|(_, &(_, fs))| fs)
                .map(|(j, _)| j);
            let off = match slot {
                Some(j) => {
                    let (o, fs) = free[j];
                    if fs == s {
                        free.remove(j);
                    } else {
                        free[j] = (o + s, fs - s);
                    }
                    o
                }
                None => {
                    end += s;
                    end - s
                }
            };
            offsets[v] = Some(off);
            live.push(v);
        }
        // Free what dies after kernel i.
        live.retain(|&v| {
            if last[v] <= i {
                free.push((offsets[v].expect("live values have offsets"), size(v)));
                false
            } else {
                true
            }
        });
        free.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(free.len());
        for (o, s) in free.drain(..) {
            match merged.last_mut() {
                Some((mo, ms)) if *mo + *ms == o => *ms += s,
                _ => merged.push((o, s)),
            }
        }
        free = merged;
    }
    MemoryPlan {
        offsets,
        arena_bytes: end,
        naive_bytes: naive,
    }
}

/// Checks that no two values live at the same time share arena bytes, and that every computed
/// value has an offset. (Tests and debug builds call it; a plan that fails is a bug.)
pub fn check(
    p: &MemoryPlan,
    values: &[Value],
    kernels: &[Kernel],
    outputs: &[(String, ValueId)],
) -> Result<(), String> {
    let n = kernels.len();
    let mut span: Vec<Option<(usize, usize)>> = vec![None; values.len()];
    let mut touch = |v: ValueId, i: usize| {
        let s = storage_of(values, v);
        let e = span[s].get_or_insert((i, i));
        e.0 = e.0.min(i);
        e.1 = e.1.max(i);
    };
    for (i, k) in kernels.iter().enumerate() {
        touch(k.output, i);
        for &v in &k.inputs {
            touch(v, i);
        }
    }
    for &(_, v) in outputs {
        touch(v, n);
    }
    let temps: Vec<ValueId> = (0..values.len())
        .filter(|&v| values[v].kind == ValueKind::Temp && span[v].is_some())
        .collect();
    for &v in &temps {
        let off = p.offsets[v].ok_or(format!("value {v} is computed but has no offset"))?;
        if off + values[v].bytes() > p.arena_bytes {
            return Err(format!("value {v} ends past the arena"));
        }
    }
    for (x, &a) in temps.iter().enumerate() {
        for &b in &temps[x + 1..] {
            let ((sa, ea), (sb, eb)) = (
                span[a].expect("temps have spans"),
                span[b].expect("temps have spans"),
            );
            let live_together = sa <= eb && sb <= ea;
            let (oa, ob) = (p.offsets[a].unwrap_or(0), p.offsets[b].unwrap_or(0));
            let overlap = oa < ob + values[b].bytes() && ob < oa + values[a].bytes();
            if live_together && overlap && values[a].bytes() > 0 && values[b].bytes() > 0 {
                return Err(format!(
                    "values {a} and {b} are live together and overlap in the arena"
                ));
            }
        }
    }
    Ok(())
}
