//! `KernelKind::AdditiveMask`: an `attention_mask` (i64, 1 keeps / 0 masks) to the additive
//! f32 mask (0 / -inf) that attention scores add.

use attnopt_lower::Kernel;

use super::Compiled;
use crate::frame::{Frame, Src};

struct AdditiveMask;

pub(super) fn prepare() -> Box<dyn Compiled> {
    Box::new(AdditiveMask)
}

impl Compiled for AdditiveMask {
    fn run(&self, f: &Frame, k: &Kernel, _profile: bool) -> Result<f64, String> {
        let Src::I64(m) = f.src(k.inputs[0])? else {
            return Err("mask must be an integer tensor".into());
        };
        let out = f.dst_f32(k.output)?;
        for (o, &x) in out.iter_mut().zip(m) {
            *o = if x == 0 { f32::NEG_INFINITY } else { 0.0 };
        }
        Ok(0.0)
    }
}
