//! Sizes that come from users — input shapes, `--seq`, `--batch`, `--calib-seq`, `--threads` —
//! checked against the model's limits and a memory budget before anything is allocated for
//! them, so one long input is an error naming the limit, not an aborted process.
//!
//! The memory check is a lower bound: the largest single value the graph computes at those
//! sizes (attention scores, usually) must fit in the memory the system says is available. A
//! run that passes may still need more (several values are alive at once), but a run that fails
//! could never have worked.

use attnopt_import::Arch;
use attnopt_ir::cost::largest_value;
use std::collections::HashMap;

use attnopt_ir::{interp, Bindings, Graph, Sym, Tensor};

use crate::{Error, Model};

/// Bytes of memory available to a run: `MemAvailable` from `/proc/meminfo`, or `None` where
/// that cannot be read (then only overflow is checked).
pub fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The longest sequence the model can take, where it has a learned position table.
pub fn max_tokens(model: &Model) -> Option<usize> {
    let m = model.imported();
    match m.detection.arch {
        Arch::Bert | Arch::Gpt2 => m.dims.max_positions,
        _ => None,
    }
}

/// The length commands use when none is given: the model's own where it fixes one (a ViT),
/// else 128 tokens, or fewer where the model has fewer positions.
pub fn default_seq(model: &Model) -> usize {
    model
        .fixed_tokens()
        .unwrap_or_else(|| max_tokens(model).map_or(128, |m| m.min(128)))
}

fn gb(bytes: u64) -> String {
    let x = bytes as f64;
    match bytes {
        u64::MAX => "more than 18 EB".into(),
        _ if x >= 1e15 => format!("{:.1} PB", x / 1e15),
        _ if x >= 1e12 => format!("{:.1} TB", x / 1e12),
        _ => format!("{:.1} GB", x / 1e9),
    }
}

/// Checks that `model` can run at the sizes in `b` (`what` names where they came from, e.g.
/// "the input" or "--seq 4096") with `budget` bytes of memory (`None`: only overflow is
/// refused).
pub fn check_run_size(
    model: &Model,
    b: &Bindings,
    what: &str,
    budget: Option<u64>,
) -> Result<(), Error> {
    let seq = b.get(Sym::Seq);
    if let (Some(n), Some(max)) = (seq, max_tokens(model)) {
        if n > max {
            return Err(Error::TooLarge(format!(
                "{what}: {n} tokens is more than this model's {max} positions \
                 (max_position_embeddings)"
            )));
        }
    }
    // The largest single value, which also keeps absurd sizes away from the lowering. The
    // whole activation memory is checked where it is planned: the CPU backend's `prepare`
    // (`CpuModel::set_memory_budget`), and `check_interpreter_memory` for the interpreter.
    let g = model.graph();
    let Some((node, bytes)) = largest_value(g, b) else {
        return Ok(());
    };
    let limit = budget.unwrap_or(u64::MAX - 1);
    if bytes > limit {
        let n = g.node(node);
        let sizes = format!(
            "batch {} × {} tokens",
            b.get(Sym::Batch).unwrap_or(1),
            seq.map_or("the model's".into(), |s| s.to_string())
        );
        return Err(Error::TooLarge(format!(
            "{what}: at {sizes} one value alone (`{}` of {}, shape {}) takes {}, more than \
             the {} of memory available; use shorter or fewer inputs",
            n.op.name(),
            n.meta,
            n.ty.shape
                .eval(b)
                .map_or_else(|| n.ty.shape.to_string(), |d| format!("{d:?}")),
            gb(bytes),
            budget.map_or("addressable amount".into(), gb),
        )));
    }
    Ok(())
}

/// For a run on the interpreter, which plans nothing: the CPU backend's arena for `g` at `b`,
/// planned by `lower` without allocating it (the interpreter's peak is of the same order),
/// against `budget`.
pub fn check_interpreter_memory(
    g: &Graph,
    b: &Bindings,
    what: &str,
    budget: Option<u64>,
) -> Result<(), Error> {
    let seq = b.get(Sym::Seq);
    if let Some(budget) = budget {
        // A graph the lowering refuses is the backend's to report.
        if let Ok(plan) = attnopt_lower::lower(g, b) {
            let arena = plan.memory.arena_bytes as u64;
            if arena > budget {
                return Err(Error::TooLarge(format!(
                    "{what}: at batch {} × {} tokens a run needs {} of activation memory, more \
                     than the {} available; use shorter or fewer inputs",
                    b.get(Sym::Batch).unwrap_or(1),
                    seq.map_or("the model's".into(), |s| s.to_string()),
                    gb(arena),
                    gb(budget),
                )));
            }
        }
    }
    Ok(())
}

/// [`check_run_size`] for the sizes a prepared feed gives the model (its shapes and dtypes
/// checked too); returns those sizes.
pub fn check_feed(
    model: &Model,
    feed: &HashMap<String, Tensor>,
    what: &str,
    budget: Option<u64>,
) -> Result<Bindings, Error> {
    let b = interp::bindings(model.graph(), feed)?;
    check_run_size(model, &b, what, budget)?;
    Ok(b)
}

/// Threads to use for a request of `n` (0: all cores), and a warning when `n` is more than
/// the machine has (it is clamped: more threads than cores only slows a run down).
pub fn threads(n: usize) -> (usize, Option<String>) {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n > cores {
        (
            cores,
            Some(format!(
                "--threads {n} is more than the {cores} this machine has; using {cores}"
            )),
        )
    } else {
        (n, None)
    }
}
