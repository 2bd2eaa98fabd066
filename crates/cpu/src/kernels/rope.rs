//! `KernelKind::Op(Op::Rope)`: rotary embeddings through [`RopeKernel`] (JIT row programs
//! with a cos/sin table), compiled once per (style, shape, base) and shared by every layer.
//! Styles it does not cover fall back to the generic operator kernel.

use std::sync::Arc;

use attnopt_ir::Op;
use attnopt_lower::{Kernel, Lowered};

use super::{Compiled, Compiler};
use crate::frame::Frame;
use crate::rope::RopeKernel;

/// The shared RoPE kernel for `op` if it is a RoPE this kernel covers; `None` otherwise.
pub(super) fn prepare(
    cx: &mut Compiler,
    l: &Lowered,
    k: &Kernel,
    op: &Op,
) -> Result<Option<Box<dyn Compiled>>, String> {
    let Op::Rope { theta, style } = op else {
        return Ok(None);
    };
    if l.bindings.offset() != 0 {
        // A decoding step (positions after a past): its few rows go to the generic kernel
        // rather than a table compiled per position.
        return Ok(None);
    }
    let s = &l.values[k.inputs[0]].shape;
    let (n, d) = (s[s.len() - 2], s[s.len() - 1]);
    let theta = theta.get();
    let key = (*style, n, d, theta.to_bits());
    if let Some(r) = cx.ropes.get(&key) {
        return Ok(Some(Box::new(Arc::clone(r))));
    }
    let Some(r) =
        RopeKernel::compile(cx.jit, *style, n, d, theta as f64).map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let r = Arc::new(r);
    cx.ropes.insert(key, Arc::clone(&r));
    Ok(Some(Box::new(r)))
}

impl Compiled for Arc<RopeKernel> {
    fn run(&self, f: &Frame, k: &Kernel, _profile: bool) -> Result<f64, String> {
        let x = f.f32(k.inputs[0])?;
        let out = f.dst_f32(k.output)?;
        RopeKernel::run(self, x, out)?;
        Ok(0.0)
    }
}
