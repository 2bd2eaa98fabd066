//! The sparse-layer convention on GPT-2 blocks (docs/SPARSE.md): config.json's
//! `attnopt_sparse_qkv` and `attnopt_sparse_ff` sections, the tensor names and trax shapes of
//! each layer, and the graph each becomes (`attnopt_ir::sparse`).

use attnopt_ir::sparse::{LocalConv, SparseFf};
use attnopt_ir::{NodeId, Role};

use crate::config::{Config, MAX_DIM};
use crate::sparse_spec::{SparseFfSpec, SparseQkv};
use crate::template::{graph_err, Loader};
use crate::ImportError;

/// Largest convolution kernel extent accepted (tokens or modules).
const MAX_KERNEL: u64 = 255;

/// Reads section `key`, refusing keys it does not know; the section's defaults are recorded
/// in `cfg`'s guesses.
fn section(cfg: &mut Config, key: &str, known: &[&str]) -> Result<Option<Config>, ImportError> {
    let Some(sec) = cfg.section(key)? else {
        return Ok(None);
    };
    let full: Vec<String> = known.iter().map(|k| format!("{key}.{k}")).collect();
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    if let Some(bad) = sec.unknown_keys(&full).first() {
        return Err(cfg.unsupported(format!(
            "config key `{bad}` (known in {key}: {})",
            known.join(", ")
        )));
    }
    Ok(Some(sec))
}

impl SparseQkv {
    /// The section, if config.json has one, checked against the hidden size `d`.
    pub fn read(cfg: &mut Config, d: usize) -> Result<Option<SparseQkv>, ImportError> {
        const KEY: &str = "attnopt_sparse_qkv";
        let known = [
            "modules",
            "length_kernel",
            "qk_module_kernel",
            "v_module_kernel",
            "output",
        ];
        let Some(mut sec) = section(cfg, KEY, &known)? else {
            return Ok(None);
        };
        let modules = sec.dim(&["attnopt_sparse_qkv.modules"], MAX_DIM, None)?;
        sec.check_divides("attnopt_sparse_qkv.modules", d, modules, "n_embd")?;
        if modules < 2 {
            return Err(cfg.unsupported("attnopt_sparse_qkv.modules = 1 (a dense layer)"));
        }
        let length = sec.dim(&["attnopt_sparse_qkv.length_kernel"], MAX_KERNEL, Some(3))?;
        let mut width = |k: &str, default| -> Result<usize, ImportError> {
            let w = sec.dim(&[k], MAX_KERNEL, Some(default))?;
            if w % 2 == 0 {
                return Err(sec.unsupported(format!("{k} = {w} (only odd kernels, as trax)")));
            }
            Ok(w)
        };
        let qk_width = width("attnopt_sparse_qkv.qk_module_kernel", 3)?;
        let v_width = width("attnopt_sparse_qkv.v_module_kernel", 1)?;
        let output = sec.string("attnopt_sparse_qkv.output", "none");
        let output_dense = match output.as_str() {
            "none" => false,
            "dense" => true,
            o => {
                return Err(cfg.unsupported(format!(
                    "attnopt_sparse_qkv.output \"{o}\" (it takes \"none\" or \"dense\")"
                )))
            }
        };
        cfg.guesses.append(&mut sec.guesses);
        Ok(Some(SparseQkv {
            modules,
            module_dim: d / modules,
            length,
            qk_width,
            v_width,
            output_dense,
        }))
    }

    /// Q, K and V `[B, N, d]` of block `i` from its normed input `h`.
    pub fn qkv(
        &self,
        l: &mut Loader,
        cfg: &Config,
        i: usize,
        h: NodeId,
        d: usize,
    ) -> Result<[NodeId; 3], ImportError> {
        let (s, m) = (self.modules, self.module_dim);
        let n = |x: &str| format!("h.{i}.attn.sparse_qkv.{x}");
        let gating = l.w(&n("gating"), &[s, d])?;
        let projection = l.w(&n("projection"), &[d, m])?;
        let bias = l.w(&n("bias"), &[d])?;
        let mut conv = |c: &str, width: usize| -> Result<LocalConv, ImportError> {
            Ok(LocalConv {
                kernel: l.w(&n(&format!("conv_{c}.weight")), &[self.length, width, m, m])?,
                bias: l.w(&n(&format!("conv_{c}.bias")), &[m])?,
                length: self.length,
                width,
            })
        };
        let convs = [
            (conv("q", self.qk_width)?, Role::QProj),
            (conv("k", self.qk_width)?, Role::KProj),
            (conv("v", self.v_width)?, Role::VProj),
        ];
        let ge = graph_err(cfg);
        let b = &mut l.b;
        let u = b
            .factored_dense(h, gating, projection, bias, (s, m), Role::QkvProj)
            .map_err(&ge)?;
        let mut out = [h; 3];
        for (o, (c, role)) in out.iter_mut().zip(convs) {
            let y = b.local_conv(u, &c, (m, m), role).map_err(&ge)?;
            *o = b.merge_modules(y, d, role).map_err(&ge)?;
        }
        Ok(out)
    }
}

impl SparseFfSpec {
    /// The section, if config.json has one, checked against the intermediate size `ff`.
    pub fn read(cfg: &mut Config, ff: usize) -> Result<Option<SparseFfSpec>, ImportError> {
        let Some(mut sec) = section(cfg, "attnopt_sparse_ff", &["block", "lowrank"])? else {
            return Ok(None);
        };
        let block = sec.dim(&["attnopt_sparse_ff.block"], MAX_DIM, None)?;
        sec.check_divides("attnopt_sparse_ff.block", ff, block, "n_inner")?;
        if block < 2 {
            return Err(cfg.unsupported("attnopt_sparse_ff.block = 1 (a dense layer)"));
        }
        let lowrank = sec.dim(&["attnopt_sparse_ff.lowrank"], MAX_DIM, None)?;
        Ok(Some(SparseFfSpec {
            block,
            lowrank,
            units: ff,
        }))
    }

    /// The sparse feed-forward of block `i` on its normed input `h` (`[B, N, d]`).
    pub fn build(
        &self,
        l: &mut Loader,
        cfg: &Config,
        i: usize,
        h: NodeId,
        d: usize,
    ) -> Result<NodeId, ImportError> {
        let (nb, x, r) = (self.block, self.units / self.block, self.lowrank);
        let n = |s: &str| format!("h.{i}.mlp.sparse_ff.{s}");
        let f = SparseFf {
            m1: l.w(&n("controller.m1"), &[d, r])?,
            m2: l.w(&n("controller.m2"), &[r, x, nb])?,
            mb: l.w(&n("controller.bias"), &[x, nb])?,
            w1: l.w(&n("w1"), &[d, x, nb])?,
            w2: l.w(&n("w2"), &[nb, x, d])?,
            b2: Some(l.w(&n("b2"), &[d])?),
            b1: None,
            act: attnopt_ir::Unary::Relu,
            block: nb,
            units: self.units,
            lowrank: r,
        };
        l.b.sparse_ff(h, &f, d).map_err(graph_err(cfg))
    }
}
