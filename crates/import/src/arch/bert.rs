//! BERT: post-norm encoder (`BertModel` names; `bert.` prefix accepted).

use attnopt_ir::builder::{Attention, WeightLayout::OutIn};
use attnopt_ir::{AttentionFormula, DType, Role, Shape, BATCH, SEQ};

use super::{guess_heads, layers_in_checkpoint, tensor_dim, Built};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, MAX_DIM, MAX_LAYERS, MAX_TABLE};
use crate::template::{activation, attention_kind, graph_err, Dims, Loader};
use crate::ImportError;

pub fn build(
    ck: &Checkpoint,
    cfg: &mut Config,
    prefix: &'static str,
) -> Result<Built, ImportError> {
    let p = |n: &str| format!("{prefix}{n}");
    let d = cfg.dim(
        &["hidden_size"],
        MAX_DIM,
        tensor_dim(ck, &p("embeddings.word_embeddings.weight"), 1),
    )?;
    let layers = cfg.dim(
        &["num_hidden_layers"],
        MAX_LAYERS,
        Some(layers_in_checkpoint(ck, &p("encoder.layer."))),
    )?;
    let heads = cfg.guessed_dim(&["num_attention_heads"], MAX_DIM, guess_heads(d))?;
    cfg.check_divides("num_attention_heads", d, heads, "hidden_size")?;
    let ff = cfg.dim(
        &["intermediate_size"],
        MAX_DIM,
        tensor_dim(ck, &p("encoder.layer.0.intermediate.dense.weight"), 0),
    )?;
    let vocab = cfg.dim(
        &["vocab_size"],
        MAX_TABLE,
        tensor_dim(ck, &p("embeddings.word_embeddings.weight"), 0),
    )?;
    let positions = cfg.dim(
        &["max_position_embeddings"],
        MAX_TABLE,
        tensor_dim(ck, &p("embeddings.position_embeddings.weight"), 0),
    )?;
    let types = cfg.dim(
        &["type_vocab_size"],
        MAX_TABLE,
        tensor_dim(ck, &p("embeddings.token_type_embeddings.weight"), 0),
    )?;
    let eps = cfg.float("layer_norm_eps", 1.0, 1e-12)?;
    let act_name = cfg.string("hidden_act", "gelu");
    let act = activation(cfg, &act_name)?;
    let kind = attention_kind(cfg, &[AttentionFormula::Softmax])?;
    match cfg.str("position_embedding_type") {
        None | Some("absolute") => {}
        Some(other) => return Err(cfg.unsupported(format!("position_embedding_type \"{other}\""))),
    }
    let dh = d / heads;

    let mut l = Loader::new(ck, prefix, "bert");
    let ge = graph_err(cfg);
    let ids =
        l.b.graph
            .input("input_ids", DType::I64, Shape(vec![BATCH, SEQ]))
            .map_err(&ge)?;
    let mask =
        l.b.graph
            .input("attention_mask", DType::I64, Shape(vec![BATCH, SEQ]))
            .map_err(&ge)?;
    let tt =
        l.b.graph
            .input("token_type_ids", DType::I64, Shape(vec![BATCH, SEQ]))
            .map_err(&ge)?;

    let wte = l.w("embeddings.word_embeddings.weight", &[vocab, d])?;
    let wpe = l.w("embeddings.position_embeddings.weight", &[positions, d])?;
    let wtt = l.w("embeddings.token_type_embeddings.weight", &[types, d])?;
    let ln_g = l.w_any(
        &["embeddings.LayerNorm.weight", "embeddings.LayerNorm.gamma"],
        &[d],
    )?;
    let ln_b = l.w_any(
        &["embeddings.LayerNorm.bias", "embeddings.LayerNorm.beta"],
        &[d],
    )?;
    let b = &mut l.b;
    let e = b
        .op(attnopt_ir::Op::Gather, &[wte, ids], Role::Embedding)
        .map_err(&ge)?;
    let t = b
        .op(attnopt_ir::Op::Gather, &[wtt, tt], Role::Embedding)
        .map_err(&ge)?;
    let pos = b.positions(wpe).map_err(&ge)?;
    let e = b.add(e, t, Role::Embedding).map_err(&ge)?;
    let e = b.add(e, pos, Role::Embedding).map_err(&ge)?;
    let mut x = b
        .layer_norm(e, ln_g, ln_b, eps, Role::Embedding)
        .map_err(&ge)?;
    b.graph.set_output("embeddings", x).map_err(&ge)?;

    for i in 0..layers {
        let n = |s: &str| format!("encoder.layer.{i}.{s}");
        l.b.set_layer(Some(i as u32));
        let wq = l.w(&n("attention.self.query.weight"), &[d, d])?;
        let bq = l.w(&n("attention.self.query.bias"), &[d])?;
        let wk = l.w(&n("attention.self.key.weight"), &[d, d])?;
        let bk = l.w(&n("attention.self.key.bias"), &[d])?;
        let wv = l.w(&n("attention.self.value.weight"), &[d, d])?;
        let bv = l.w(&n("attention.self.value.bias"), &[d])?;
        let wo = l.w(&n("attention.output.dense.weight"), &[d, d])?;
        let bo = l.w(&n("attention.output.dense.bias"), &[d])?;
        let g1 = l.w_any(
            &[
                &n("attention.output.LayerNorm.weight"),
                &n("attention.output.LayerNorm.gamma"),
            ],
            &[d],
        )?;
        let b1 = l.w_any(
            &[
                &n("attention.output.LayerNorm.bias"),
                &n("attention.output.LayerNorm.beta"),
            ],
            &[d],
        )?;
        let wi = l.w(&n("intermediate.dense.weight"), &[ff, d])?;
        let bi = l.w(&n("intermediate.dense.bias"), &[ff])?;
        let w2 = l.w(&n("output.dense.weight"), &[d, ff])?;
        let b2 = l.w(&n("output.dense.bias"), &[d])?;
        let g2 = l.w_any(
            &[&n("output.LayerNorm.weight"), &n("output.LayerNorm.gamma")],
            &[d],
        )?;
        let bb2 = l.w_any(
            &[&n("output.LayerNorm.bias"), &n("output.LayerNorm.beta")],
            &[d],
        )?;
        let b = &mut l.b;
        let q = b.linear(x, wq, Some(bq), OutIn, Role::QProj).map_err(&ge)?;
        let k = b.linear(x, wk, Some(bk), OutIn, Role::KProj).map_err(&ge)?;
        let v = b.linear(x, wv, Some(bv), OutIn, Role::VProj).map_err(&ge)?;
        let spec = Attention {
            kind,
            heads,
            kv_heads: heads,
            head_dim: dh,
            causal: false,
            padding_mask: Some(mask),
            rope: None,
            scale: 1.0 / (dh as f32).sqrt(),
        };
        let c = b.attention(q, k, v, &spec).map_err(&ge)?;
        let a = b
            .linear(c, wo, Some(bo), OutIn, Role::AttnOutProj)
            .map_err(&ge)?;
        let r = b.add(a, x, Role::Residual).map_err(&ge)?;
        let h = b.layer_norm(r, g1, b1, eps, Role::Norm).map_err(&ge)?;
        let o = b
            .mlp(h, (wi, Some(bi)), act, (w2, Some(b2)), OutIn)
            .map_err(&ge)?;
        let r = b.add(o, h, Role::Residual).map_err(&ge)?;
        x = b.layer_norm(r, g2, bb2, eps, Role::Norm).map_err(&ge)?;
        b.graph.set_output(&format!("layer.{i}"), x).map_err(&ge)?;
    }
    l.b.graph.set_output("last_hidden_state", x).map_err(&ge)?;
    let dims = Dims {
        hidden: d,
        layers,
        heads,
        kv_heads: heads,
        head_dim: dh,
        intermediate: ff,
        vocab: Some(vocab),
        max_positions: Some(positions),
        image: None,
        activation: act_name,
        norm_eps: eps,
        ..Dims::default()
    };
    Ok(Built {
        graph: l.b.finish(),
        dims,
        used: l.used,
    })
}
