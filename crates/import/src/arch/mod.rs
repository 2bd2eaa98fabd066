//! Architecture templates: checkpoint tensor names and config keys → ir graph.
//!
//! Each template reads its dimensions from config.json, fetches every weight it needs with a
//! shape check, and writes the forward pass with `attnopt_ir::builder`. Graph outputs are
//! named `embeddings` (input of block 0), `layer.{i}` (output of block i) and
//! `last_hidden_state` (as the Hugging Face base model returns it).

mod bert;
mod gpt2;
mod llama;
mod sparse;
mod vit;

use attnopt_ir::Graph;

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::detect::Arch;
use crate::template::Dims;
use crate::ImportError;

/// What a template produced.
pub struct Built {
    pub graph: Graph,
    pub dims: Dims,
    /// Full names of the checkpoint tensors the graph uses.
    pub used: Vec<String>,
}

pub fn build(
    arch: Arch,
    ck: &Checkpoint,
    cfg: &mut Config,
    prefix: &'static str,
) -> Result<Built, ImportError> {
    match arch {
        Arch::Bert => bert::build(ck, cfg, prefix),
        Arch::Gpt2 => gpt2::build(ck, cfg, prefix),
        Arch::Vit => vit::build(ck, cfg, prefix),
        Arch::Llama => llama::build(ck, cfg, prefix),
    }
}

/// Counts `{layer_prefix}{i}.` tensor groups: the layer count seen in the checkpoint.
pub(crate) fn layers_in_checkpoint(ck: &Checkpoint, layer_prefix: &str) -> usize {
    let mut max = None;
    for name in ck.tensors().keys() {
        if let Some(rest) = name.strip_prefix(layer_prefix) {
            if let Some(i) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok()) {
                max = Some(max.map_or(i, |m: usize| m.max(i)));
            }
        }
    }
    max.map_or(0, |m| m + 1)
}

/// The width of tensor `name` along `axis`, used to guess dims when config.json lacks them.
pub(crate) fn tensor_dim(ck: &Checkpoint, name: &str, axis: usize) -> Option<usize> {
    ck.tensors()
        .get(name)
        .and_then(|e| e.shape.get(axis).copied())
}

/// Guesses the head count for a width: head dim 64 when it divides, else one head.
pub(crate) fn guess_heads(hidden: usize) -> usize {
    if hidden % 64 == 0 {
        hidden / 64
    } else {
        1
    }
}
