//! `KernelKind::Hydra`: Hydra attention through [`crate::hydra::HydraKernel`] (its two JIT row
//! programs driven over tokens), which checks every operand against its row view.

use attnopt_lower::{Hydra, Kernel};

use super::{Compiled, Compiler};
use crate::frame::Frame;
use crate::hydra::HydraKernel;

/// Compiles the Hydra kernel's row programs.
pub(super) fn prepare(cx: &mut Compiler, spec: &Hydra) -> Result<Box<dyn Compiled>, String> {
    let kernel = HydraKernel::compile(cx.jit, spec).map_err(|e| e.to_string())?;
    Ok(Box::new(kernel))
}

impl Compiled for HydraKernel {
    fn run(&self, f: &Frame, k: &Kernel, _profile: bool) -> Result<f64, String> {
        let [q, kk, v] = [0, 1, 2].map(|j| k.inputs.get(j).copied());
        let (Some(q), Some(kk), Some(v)) = (q, kk, v) else {
            return Err("a Hydra kernel takes Q, K and V".into());
        };
        let (q, kk, v) = (f.f32(q)?, f.f32(kk)?, f.f32(v)?);
        let out = f.dst_f32(k.output)?;
        HydraKernel::run(self, q, kk, v, out).map_err(|e| e.to_string())?;
        Ok(0.0)
    }
}
