//! `KernelKind::Row`: one JIT-compiled row program over `rows × d` (causal rows see only
//! their valid prefix). The JIT's `RowKernel` checks every slice length again.

use attnopt_lower::row::RowProgram;
use attnopt_lower::{Kernel, Lowered};

use super::{Compiled, Compiler};
use crate::frame::Frame;
use crate::jit::{RowKernel, Valid};

/// A compiled row program and the rows it runs over.
struct Row {
    kernel: RowKernel,
    rows: usize,
    d: usize,
    valid: Valid<'static>,
}

/// Compiles `program` (identical programs are compiled once per model).
pub(super) fn prepare(
    cx: &mut Compiler,
    l: &Lowered,
    k: &Kernel,
    program: &RowProgram,
    rows: usize,
    d: usize,
    causal: Option<usize>,
) -> Result<Box<dyn Compiled>, String> {
    let kernel = cx.jit.compile(program).map_err(|e| e.to_string())?;
    let valid = match causal {
        Some(offset) => {
            let s = &l.values[k.output].shape;
            Valid::Causal {
                queries: s[s.len().saturating_sub(2)].max(1),
                offset,
            }
        }
        None => Valid::Full,
    };
    Ok(Box::new(Row {
        kernel,
        rows,
        d,
        valid,
    }))
}

impl Compiled for Row {
    fn run(&self, f: &Frame, k: &Kernel, _profile: bool) -> Result<f64, String> {
        let ins = k
            .inputs
            .iter()
            .map(|&v| f.f32(v))
            .collect::<Result<Vec<_>, _>>()?;
        let out = f.dst_f32(k.output)?;
        let (rows, d) = (self.rows, self.d);
        if out.len() != rows * d {
            return Err(format!(
                "output holds {} elements, not {rows}×{d}",
                out.len()
            ));
        }
        self.kernel
            .run_rows(&ins, out, d, self.valid, &[])
            .map_err(|e| e.to_string())?;
        Ok(0.0)
    }
}
