//! Matrix products: a library call ([`Gemm`], cuBLASLt on a GPU, a CPU product in the
//! simulator) over the strided views `lower` found (or dense operands), then the epilogue, if
//! any, as a row kernel run in place over the product's output.
//!
//! Never: fold an epilogue into the product with a different meaning from its row program.

use attnopt_lower::{Epilogue, Kernel, ProductViews};

use super::row::{row_kernel, Valid};
use super::Gen;
use crate::error::{GpuError, Result};
use crate::program::{Gemm, Step};

/// A product's sizes.
pub struct Shape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub b_transposed: bool,
}

/// The product of kernel `k` (inputs `a`, `b`, then the epilogue's other inputs).
pub fn product(
    cx: &mut Gen,
    k: &Kernel,
    s: Shape,
    epilogue: Option<&Epilogue>,
    views: Option<&ProductViews>,
) -> Result<()> {
    let (a, b) = match k.inputs.as_slice() {
        [a, b, ..] => (*a, *b),
        _ => {
            return Err(GpuError::Lower(format!(
                "{}: a product needs two operands",
                k.name
            )))
        }
    };
    let views = match views {
        Some(v) => v.clone(),
        None => ProductViews::dense(cx.shape(a), cx.shape(b), s.b_transposed, cx.shape(k.output)),
    };
    let gemm = Gemm {
        m: s.m,
        n: s.n,
        k: s.k,
        views,
        a: cx.slice(a)?,
        b: cx.slice(b)?,
        c: cx.slice(k.output)?,
        doc: cx.doc(k).join("; "),
    };
    if cx.opts.generated_products {
        let name = format!("{}_gemm", Gen::base_name(k));
        let kern = super::gemm::gemm_kernel(&name, cx.doc(k), &gemm)?;
        cx.launch(kern, vec![gemm.a, gemm.b, gemm.c])?;
    } else {
        cx.p.steps.push(Step::Gemm(Box::new(gemm)));
    }
    let Some(e) = epilogue else {
        return Ok(());
    };
    // The epilogue's input `at` is the product: the output itself, read and written in place.
    let out = cx.slice(k.output)?;
    let rows = out.len / s.n.max(1);
    // `k_matmul_bias_gelu_epilogue`; a kernel already named `matmul+epilogue` keeps its name.
    let base = Gen::base_name(k);
    let name = if base.ends_with("_epilogue") {
        base
    } else {
        format!("{base}_epilogue")
    };
    let kern = row_kernel(&name, cx.doc(k), &e.program, rows, s.n, Valid::Full)?;
    let mut args = Vec::with_capacity(e.program.inputs.len() + 1);
    for (j, &v) in k.inputs[2..].iter().enumerate() {
        args.push(if j == e.at { out.clone() } else { cx.slice(v)? });
    }
    if args.len() != e.program.inputs.len() {
        return Err(GpuError::Lower(format!(
            "{}: the epilogue takes {} inputs, the kernel has {}",
            k.name,
            e.program.inputs.len(),
            args.len()
        )));
    }
    args.push(out);
    cx.launch(kern, args)
}
