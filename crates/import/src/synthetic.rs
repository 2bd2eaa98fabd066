//! Synthetic checkpoints: models of real shapes without real weights, for benchmarking the
//! optimizer and the whole pipeline on BERT-base- to LLaMA-70B-sized graphs without the real
//! files. A [`Spec`] is the tensor names, shapes and config.json of one such model; it is
//! either loaded in memory (every tensor a zero-copy view of one shared zero buffer) or written
//! to disk as a sharded checkpoint whose data are sparse files (zeros that take no disk
//! space). The values are meaningless; the shapes and names are exact.

use std::path::Path;
use std::sync::Arc;

use attnopt_ir::DType;

use crate::{Checkpoint, ImportError, Imported};

/// A synthetic model: tensors (name, shape) of one dtype, and its config.json.
pub struct Spec {
    pub name: String,
    pub dtype: DType,
    pub tensors: Vec<(String, Vec<usize>)>,
    pub config: serde_json::Value,
}

/// A BERT encoder with the given dimensions (BERT-base: 768 hidden, 12 heads, 3072 inner), f32.
pub fn bert_spec(layers: usize, hidden: usize, heads: usize, inner: usize) -> Spec {
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
    Spec {
        name: "synthetic-bert".into(),
        dtype: DType::F32,
        tensors: t,
        config: serde_json::json!({
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
        }),
    }
}

/// The dimensions of a LLaMA-style decoder (bf16, untied LM head, RoPE).
#[derive(Debug, Clone, Copy)]
pub struct LlamaShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ff: usize,
    pub vocab: usize,
    pub positions: usize,
    pub rope_theta: f64,
}

impl LlamaShape {
    /// LLaMA-3-70B: 80 layers, hidden 8192, 64 heads (8 KV heads), FF 28672, vocabulary 128256.
    pub const LLAMA3_70B: LlamaShape = LlamaShape {
        layers: 80,
        hidden: 8192,
        heads: 64,
        kv_heads: 8,
        ff: 28672,
        vocab: 128256,
        positions: 8192,
        rope_theta: 500000.0,
    };
    /// LLaMA-7B (LLaMA 1/2): 32 layers, hidden 4096, 32 heads, FF 11008, vocabulary 32000.
    pub const LLAMA_7B: LlamaShape = LlamaShape {
        layers: 32,
        hidden: 4096,
        heads: 32,
        kv_heads: 32,
        ff: 11008,
        vocab: 32000,
        positions: 4096,
        rope_theta: 10000.0,
    };
    /// A 1B LLaMA shape (Llama-3.2-1B's): 16 layers, hidden 2048, 32 heads (8 KV heads), FF
    /// 8192, vocabulary 128256.
    pub const LLAMA3_1B: LlamaShape = LlamaShape {
        layers: 16,
        hidden: 2048,
        heads: 32,
        kv_heads: 8,
        ff: 8192,
        vocab: 128256,
        positions: 131072,
        rope_theta: 500000.0,
    };
}

/// A LLaMA-3-70B-shaped decoder in bf16 ([`LlamaShape::LLAMA3_70B`]); `layers` may be fewer
/// for quick runs.
pub fn llama70b_spec(layers: usize) -> Spec {
    let mut spec = llama_spec(&LlamaShape {
        layers,
        ..LlamaShape::LLAMA3_70B
    });
    spec.name = "synthetic-llama70b".into();
    spec
}

/// A LLaMA-style decoder of `shape` in bf16, with an untied LM head.
pub fn llama_spec(shape: &LlamaShape) -> Spec {
    let (d, heads, kv, ff, vocab) = (
        shape.hidden,
        shape.heads,
        shape.kv_heads,
        shape.ff,
        shape.vocab,
    );
    let layers = shape.layers;
    let dh = d / heads;
    let mut t: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, d])];
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![heads * dh, d]),
            ("self_attn.k_proj.weight", vec![kv * dh, d]),
            ("self_attn.v_proj.weight", vec![kv * dh, d]),
            ("self_attn.o_proj.weight", vec![d, heads * dh]),
            ("post_attention_layernorm.weight", vec![d]),
            ("mlp.gate_proj.weight", vec![ff, d]),
            ("mlp.up_proj.weight", vec![ff, d]),
            ("mlp.down_proj.weight", vec![d, ff]),
        ] {
            t.push((p(name), shape));
        }
    }
    t.push(("model.norm.weight".into(), vec![d]));
    t.push(("lm_head.weight".into(), vec![vocab, d]));
    Spec {
        name: "synthetic-llama".into(),
        dtype: DType::BF16,
        tensors: t,
        config: serde_json::json!({
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": d,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "intermediate_size": ff,
            "vocab_size": vocab,
            "max_position_embeddings": shape.positions,
            "rms_norm_eps": 1e-5,
            "rope_theta": shape.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        }),
    }
}

fn bytes(dtype: DType, shape: &[usize]) -> usize {
    shape.iter().product::<usize>() * dtype.size()
}

/// Loads `spec` in memory: every tensor a view of one shared zero buffer.
pub fn load(spec: &Spec) -> Result<Imported, ImportError> {
    let largest = spec
        .tensors
        .iter()
        .map(|(_, s)| bytes(spec.dtype, s))
        .max()
        .unwrap_or(0);
    let storage: attnopt_ir::Storage = Arc::new(vec![0u8; largest]);
    let entries = spec.tensors.iter().map(|(n, s)| {
        let len = bytes(spec.dtype, s);
        (n.clone(), spec.dtype, s.clone(), 0..len)
    });
    let ck = Checkpoint::in_memory(&spec.name, storage, entries)?;
    crate::load_in_memory(Path::new(&spec.name), ck, spec.config.clone())
}

/// A BERT encoder in memory (see [`bert_spec`]).
pub fn bert(
    layers: usize,
    hidden: usize,
    heads: usize,
    inner: usize,
) -> Result<Imported, ImportError> {
    load(&bert_spec(layers, hidden, heads, inner))
}

/// Writes `spec` into the folder `dir` (which must not exist) as a checkpoint: config.json,
/// and one `model.safetensors` or, when the data exceed `shard_bytes`, shards of at most that
/// size (a tensor larger than it gets a shard of its own) with `model.safetensors.index.json`.
/// Data are zeros written as holes, so a 140 GB checkpoint takes a few MB of disk.
pub fn write(spec: &Spec, dir: &Path, shard_bytes: u64) -> std::io::Result<()> {
    std::fs::create_dir(dir)?;
    let mut shards: Vec<Vec<&(String, Vec<usize>)>> = vec![vec![]];
    let mut used = 0u64;
    for t in &spec.tensors {
        let b = bytes(spec.dtype, &t.1) as u64;
        if used > 0 && used + b > shard_bytes {
            shards.push(vec![]);
            used = 0;
        }
        shards.last_mut().expect("one shard at least").push(t);
        used += b;
    }
    let dtype = match spec.dtype {
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        _ => "F32",
    };
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (name, shape) in shard {
            let len = bytes(spec.dtype, shape);
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
            );
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
            offset += len;
        }
        let mut text = serde_json::Value::Object(header).to_string().into_bytes();
        // safetensors pads the header with spaces to 8-byte alignment.
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let f = std::fs::File::create(dir.join(&file))?;
        use std::io::Write;
        let mut w = std::io::BufWriter::new(&f);
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(&text)?;
        w.flush()?;
        drop(w);
        f.set_len((8 + text.len() + offset) as u64)?;
    }
    if n > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())?;
    }
    std::fs::write(dir.join("config.json"), spec.config.to_string())
}
