//! What every architecture template shares: fetching named weights with shape checks into a
//! graph under construction, and the model facts a template reports.

use attnopt_ir::builder::{AttentionKind, Builder};
use attnopt_ir::AttentionFormula;
use attnopt_ir::{DType, Graph, GraphError, NodeId, Shape, Unary, BATCH, SEQ};

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::ImportError;

/// Model dimensions as the template read them (after defaults and guesses).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: Option<usize>,
    pub max_positions: Option<usize>,
    /// `(channels, image size, patch size)` for vision models.
    pub image: Option<(usize, usize, usize)>,
    pub activation: String,
    pub norm_eps: f32,
    /// Scaling Transformers' sparse QKV, when config.json turns it on (docs/SPARSE.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_qkv: Option<crate::sparse_spec::SparseQkv>,
    /// Scaling Transformers' sparse feed-forward, when config.json turns it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_ff: Option<crate::sparse_spec::SparseFfSpec>,
}

/// A graph under construction plus the checkpoint it reads weights from.
pub struct Loader<'a> {
    pub ck: &'a Checkpoint,
    pub prefix: &'static str,
    pub arch: &'static str,
    pub b: Builder,
    pub used: Vec<String>,
}

impl<'a> Loader<'a> {
    pub fn new(ck: &'a Checkpoint, prefix: &'static str, arch: &'static str) -> Loader<'a> {
        Loader {
            ck,
            prefix,
            arch,
            b: Builder::new(),
            used: Vec::new(),
        }
    }

    /// Full tensor name for `name` (relative to the architecture's prefix).
    pub fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn has(&self, name: &str) -> bool {
        self.ck.contains(&self.full(name))
    }

    /// Weight `name`, which must have shape `shape`, as a graph node.
    pub fn w(&mut self, name: &str, shape: &[usize]) -> Result<NodeId, ImportError> {
        let full = self.full(name);
        let w = self.ck.weight(&full, self.arch)?;
        if w.shape() != shape {
            return Err(ImportError::ShapeMismatch {
                file: self.ck.file_of(&full).to_path_buf(),
                tensor: full,
                expected: shape.to_vec(),
                got: w.shape().to_vec(),
            });
        }
        self.used.push(full);
        Ok(self.b.graph.weight(w))
    }

    /// The first of `names` that exists (for renamed tensors such as `gamma`/`weight`).
    pub fn w_any(&mut self, names: &[&str], shape: &[usize]) -> Result<NodeId, ImportError> {
        let name = names
            .iter()
            .copied()
            .find(|n| self.has(n))
            .unwrap_or(names[0]);
        self.w(name, shape)
    }
}

/// Wraps graph-construction errors (a template bug or an inconsistent config) with the
/// model folder.
pub fn graph_err(cfg: &Config) -> impl Fn(attnopt_ir::GraphError) -> ImportError {
    let dir = cfg
        .file
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    move |source| ImportError::Graph {
        dir: dir.clone(),
        source,
    }
}

/// The `attention_mask` input `[B, N]` of a model whose attention `kind` takes a padding mask
/// (softmax); `None` for linear attention, which has none yet: such a model takes no
/// attention_mask, and `Model::run` refuses a mask that would pad.
pub fn attention_mask_input(
    g: &mut Graph,
    kind: AttentionKind,
) -> Result<Option<NodeId>, GraphError> {
    match kind {
        AttentionKind::Softmax => g
            .input("attention_mask", DType::I64, Shape(vec![BATCH, SEQ]))
            .map(Some),
        _ => Ok(None),
    }
}

/// config.json's spelling of an attention formula (`attnopt_attention`; absent: softmax).
fn config_name(f: AttentionFormula) -> &'static str {
    match f {
        AttentionFormula::LinearElu => "linear_elu",
        other => other.name(),
    }
}

/// The layer attention formula from config.json's `attnopt_attention` (absent: softmax),
/// refusing formulas the architecture's template does not build.
pub fn attention_kind(
    cfg: &mut Config,
    allowed: &[AttentionFormula],
) -> Result<AttentionKind, ImportError> {
    let name = cfg
        .str("attnopt_attention")
        .unwrap_or(config_name(AttentionFormula::Softmax))
        .to_string();
    let Some(&formula) = allowed.iter().find(|&&f| config_name(f) == name) else {
        let names: Vec<&str> = allowed.iter().map(|&f| config_name(f)).collect();
        return Err(cfg.unsupported(format!(
            "attnopt_attention \"{name}\" for this architecture (it takes: {})",
            names.join(", ")
        )));
    };
    Ok(match formula {
        AttentionFormula::Hydra => AttentionKind::Hydra,
        AttentionFormula::LinearElu => AttentionKind::LinearElu {
            eps: cfg.float("attnopt_linear_eps", 1.0, 1e-6)?,
        },
        AttentionFormula::Softmax | AttentionFormula::Other => AttentionKind::Softmax,
    })
}

/// The IR activation for a Hugging Face `hidden_act` / `activation_function` name.
pub fn activation(cfg: &Config, name: &str) -> Result<Unary, ImportError> {
    Ok(match name {
        "gelu" => Unary::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Unary::GeluTanh,
        "relu" => Unary::Relu,
        "silu" | "swish" => Unary::Silu,
        other => return Err(cfg.unsupported(format!("activation \"{other}\""))),
    })
}
