//! The weight bytes each layer reads in one run of a lowered graph: what bounds batch-1
//! decoding, where every weight is read once per token. Lower a graph at batch 1 and one token
//! and ask [`weight_bytes_by_layer`].
//!
//! A value computed from weights only (a concatenated Q/K/V weight, a permuted view) counts as
//! a weight (backends fold it once), at the widest storage size among the weights it comes
//! from. A kernel counts each weight input once, at its stored size (bf16: 2 bytes); a sparse
//! feed-forward kernel only the chosen units' share of `W1` and `W2`, an embedding lookup only
//! the rows it gathers.

use std::collections::BTreeMap;

use attnopt_ir::{Graph, Op};

use crate::fuse::Lowered;
use crate::kernel::{KernelKind, SparseFf, ValueKind};

/// Weight bytes read per layer (`None`: outside the blocks) in one run of `l`, lowered from `g`.
pub fn weight_bytes_by_layer(g: &Graph, l: &Lowered) -> BTreeMap<Option<u32>, u64> {
    // Bytes per element of each weight-only value; `None` for values that depend on inputs.
    let mut size: Vec<Option<usize>> = l
        .values
        .iter()
        .map(|v| match v.kind {
            ValueKind::Weight(w) => Some(g.weight_data(w).dtype().size()),
            _ => None,
        })
        .collect();
    // Aliases point at earlier values; kernels come in execution order.
    for v in 0..l.values.len() {
        if let ValueKind::Alias(s) = l.values[v].kind {
            size[v] = size[s];
        }
    }
    let mut out: BTreeMap<Option<u32>, u64> = BTreeMap::new();
    for k in &l.kernels {
        let sizes: Vec<Option<usize>> = k.inputs.iter().map(|&v| size[v]).collect();
        if !sizes.is_empty() && sizes.iter().all(Option::is_some) {
            // Weight-only: folded once, read by its users.
            size[k.output] = sizes.iter().flatten().max().copied();
            continue;
        }
        let mut seen = Vec::new();
        let mut bytes = 0u64;
        for (j, &v) in k.inputs.iter().enumerate() {
            let Some(s) = size[v] else { continue };
            if seen.contains(&v) {
                continue;
            }
            seen.push(v);
            let full = (l.values[v].numel() * s) as u64;
            bytes += match &k.kind {
                KernelKind::SparseFf(f) if j == SparseFf::W1 || j == SparseFf::W2 => {
                    let chosen = (f.rows * f.blocks()).min(f.units) as u64;
                    full * chosen / f.units.max(1) as u64
                }
                // A lookup reads the rows it gathers, not the table.
                KernelKind::Op(Op::Gather) if j == 0 => {
                    full.min((l.values[k.output].numel() * s) as u64)
                }
                _ => full,
            };
        }
        *out.entry(k.layer).or_default() += bytes;
    }
    out
}
