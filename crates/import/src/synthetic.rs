//! Synthetic checkpoints: models of real shapes without real weights, for benchmarking the
//! optimizer on BERT-base-sized graphs without a 400 MB file. Every tensor is a zero-copy view
//! of one shared zero buffer; the values are meaningless, the shapes and names are exact.

use std::sync::Arc;

use attnopt_ir::DType;

use crate::{Checkpoint, ImportError, Imported};

/// A BERT encoder with the given dimensions (BERT-base: 768 hidden, 12 heads, 3072 inner).
pub fn bert(
    layers: usize,
    hidden: usize,
    heads: usize,
    inner: usize,
) -> Result<Imported, ImportError> {
    let (vocab, positions, types) = (30522, 512, 2);
    let mut t: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![vocab, hidden],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![positions, hidden],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![types, hidden],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![hidden]),
        ("embeddings.LayerNorm.bias".into(), vec![hidden]),
    ];
    for i in 0..layers {
        let p = |s: &str| format!("encoder.layer.{i}.{s}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![hidden, hidden]),
            ("attention.self.query.bias", vec![hidden]),
            ("attention.self.key.weight", vec![hidden, hidden]),
            ("attention.self.key.bias", vec![hidden]),
            ("attention.self.value.weight", vec![hidden, hidden]),
            ("attention.self.value.bias", vec![hidden]),
            ("attention.output.dense.weight", vec![hidden, hidden]),
            ("attention.output.dense.bias", vec![hidden]),
            ("attention.output.LayerNorm.weight", vec![hidden]),
            ("attention.output.LayerNorm.bias", vec![hidden]),
            ("intermediate.dense.weight", vec![inner, hidden]),
            ("intermediate.dense.bias", vec![inner]),
            ("output.dense.weight", vec![hidden, inner]),
            ("output.dense.bias", vec![hidden]),
            ("output.LayerNorm.weight", vec![hidden]),
            ("output.LayerNorm.bias", vec![hidden]),
        ] {
            t.push((p(name), shape));
        }
    }
    let bytes = |s: &[usize]| s.iter().product::<usize>() * 4;
    let largest = t.iter().map(|(_, s)| bytes(s)).max().unwrap_or(0);
    let storage: attnopt_ir::Storage = Arc::new(vec![0u8; largest]);
    let entries = t.into_iter().map(|(n, s)| {
        let len = bytes(&s);
        (n, DType::F32, s, 0..len)
    });
    let ck = Checkpoint::in_memory("synthetic-bert", storage, entries)?;
    let config = serde_json::json!({
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inner,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "type_vocab_size": types,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    });
    crate::load_in_memory(std::path::Path::new("synthetic-bert"), ck, config)
}
