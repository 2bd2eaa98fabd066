//! LLaMA-style decoder: RMSNorm, rotary positions (`rotate_half`), SwiGLU MLP,
//! grouped-query attention (`LlamaForCausalLM` names with `model.` prefix, or bare).

use attnopt_ir::builder::{Attention, WeightLayout::OutIn};
use attnopt_ir::{AttentionFormula, DType, Op, Role, RopeStyle, Shape, BATCH, SEQ};

use super::{guess_heads, layers_in_checkpoint, tensor_dim, Built};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, MAX_DIM, MAX_LAYERS, MAX_TABLE};
use crate::template::{activation, attention_kind, attention_mask_input, graph_err, Dims, Loader};
use crate::ImportError;

/// `rope_theta` from the top level (transformers 4) or `rope_parameters` (transformers 5);
/// scaled RoPE variants are refused.
fn rope_theta(cfg: &mut Config) -> Result<f32, ImportError> {
    // Both keys are read: a transformers-5 `rope_parameters` must not hide a `rope_scaling`
    // block that scales the rotary frequencies (Llama 3.1/3.2 ship one).
    let mut theta_from = None;
    for key in ["rope_parameters", "rope_scaling"] {
        let Some(p) = cfg.json.get(key).cloned().filter(|p| !p.is_null()) else {
            continue;
        };
        if !p.is_object() {
            return Err(ImportError::Config {
                file: cfg.file.clone(),
                msg: format!("`{key}` must be an object"),
            });
        }
        let kind = p
            .get("rope_type")
            .or(p.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        if kind != "default" {
            return Err(cfg.unsupported(format!(
                "{key}: rope_type \"{kind}\" (scaled rotary embeddings)"
            )));
        }
        if p.get("rope_theta").is_some() && theta_from.is_none() {
            theta_from = Some(p);
        }
    }
    if let Some(p) = theta_from {
        let mut nested = Config {
            json: p,
            ..cfg.clone()
        };
        return nested.float("rope_theta", 1e12, 10000.0);
    }
    cfg.float("rope_theta", 1e12, 10000.0)
}

pub fn build(
    ck: &Checkpoint,
    cfg: &mut Config,
    prefix: &'static str,
) -> Result<Built, ImportError> {
    let p = |n: &str| format!("{prefix}{n}");
    let d = cfg.dim(
        &["hidden_size"],
        MAX_DIM,
        tensor_dim(ck, &p("embed_tokens.weight"), 1),
    )?;
    let layers = cfg.dim(
        &["num_hidden_layers"],
        MAX_LAYERS,
        Some(layers_in_checkpoint(ck, &p("layers."))),
    )?;
    let heads = cfg.guessed_dim(&["num_attention_heads"], MAX_DIM, guess_heads(d))?;
    let dh = cfg.dim(&["head_dim"], MAX_DIM, Some(d / heads))?;
    let kv_heads = cfg.dim(&["num_key_value_heads"], MAX_DIM, Some(heads))?;
    cfg.check_divides(
        "num_key_value_heads",
        heads,
        kv_heads,
        "num_attention_heads",
    )?;
    let ff = cfg.dim(
        &["intermediate_size"],
        MAX_DIM,
        tensor_dim(ck, &p("layers.0.mlp.up_proj.weight"), 0),
    )?;
    let vocab = cfg.dim(
        &["vocab_size"],
        MAX_TABLE,
        tensor_dim(ck, &p("embed_tokens.weight"), 0),
    )?;
    let eps = cfg.float("rms_norm_eps", 1.0, 1e-6)?;
    let theta = rope_theta(cfg)?;
    let act_name = cfg.string("hidden_act", "silu");
    let act = activation(cfg, &act_name)?;
    let kind = attention_kind(
        cfg,
        &[AttentionFormula::Softmax, AttentionFormula::LinearElu],
    )?;
    let attn_bias = cfg.flag("attention_bias", false);
    let mlp_bias = cfg.flag("mlp_bias", false);
    if dh % 2 != 0 {
        return Err(cfg.unsupported(format!("odd head_dim {dh} with rotary embeddings")));
    }
    let (qd, kvd) = (heads * dh, kv_heads * dh);

    let ge = graph_err(cfg);
    let mut l = Loader::new(ck, prefix, "llama");
    let ids =
        l.b.graph
            .input("input_ids", DType::I64, Shape(vec![BATCH, SEQ]))
            .map_err(&ge)?;
    let mask = attention_mask_input(&mut l.b.graph, kind).map_err(&ge)?;
    let emb = l.w("embed_tokens.weight", &[vocab, d])?;
    let mut x =
        l.b.op(Op::Gather, &[emb, ids], Role::Embedding)
            .map_err(&ge)?;
    l.b.graph.set_output("embeddings", x).map_err(&ge)?;

    for i in 0..layers {
        let n = |s: &str| format!("layers.{i}.{s}");
        l.b.set_layer(Some(i as u32));
        let g1 = l.w(&n("input_layernorm.weight"), &[d])?;
        let proj = |l: &mut Loader,
                    name: &str,
                    out: usize,
                    inp: usize,
                    bias: bool|
         -> Result<_, ImportError> {
            let w = l.w(&n(&format!("{name}.weight")), &[out, inp])?;
            let b = if bias {
                Some(l.w(&n(&format!("{name}.bias")), &[out])?)
            } else {
                None
            };
            Ok((w, b))
        };
        let (wq, bq) = proj(&mut l, "self_attn.q_proj", qd, d, attn_bias)?;
        let (wk, bk) = proj(&mut l, "self_attn.k_proj", kvd, d, attn_bias)?;
        let (wv, bv) = proj(&mut l, "self_attn.v_proj", kvd, d, attn_bias)?;
        let (wo, bo) = proj(&mut l, "self_attn.o_proj", d, qd, attn_bias)?;
        let g2 = l.w(&n("post_attention_layernorm.weight"), &[d])?;
        let (wg, bg) = proj(&mut l, "mlp.gate_proj", ff, d, mlp_bias)?;
        let (wu, bu) = proj(&mut l, "mlp.up_proj", ff, d, mlp_bias)?;
        let (wd, bd) = proj(&mut l, "mlp.down_proj", d, ff, mlp_bias)?;
        let b = &mut l.b;
        let h = b.rms_norm(x, g1, eps, Role::Norm).map_err(&ge)?;
        let q = b.linear(h, wq, bq, OutIn, Role::QProj).map_err(&ge)?;
        let k = b.linear(h, wk, bk, OutIn, Role::KProj).map_err(&ge)?;
        let v = b.linear(h, wv, bv, OutIn, Role::VProj).map_err(&ge)?;
        let spec = Attention {
            kind,
            heads,
            kv_heads,
            head_dim: dh,
            causal: true,
            padding_mask: mask,
            rope: Some((theta, RopeStyle::Half)),
            scale: 1.0 / (dh as f32).sqrt(),
        };
        let c = b.attention(q, k, v, &spec).map_err(&ge)?;
        let a = b.linear(c, wo, bo, OutIn, Role::AttnOutProj).map_err(&ge)?;
        let r = b.add(x, a, Role::Residual).map_err(&ge)?;
        let h = b.rms_norm(r, g2, eps, Role::Norm).map_err(&ge)?;
        let gate = b.linear(h, wg, bg, OutIn, Role::MlpGate).map_err(&ge)?;
        let gate = b.unary(act, gate, Role::MlpAct).map_err(&ge)?;
        let up = b.linear(h, wu, bu, OutIn, Role::MlpUp).map_err(&ge)?;
        let m = b.mul(gate, up, Role::MlpAct).map_err(&ge)?;
        let o = b.linear(m, wd, bd, OutIn, Role::MlpDown).map_err(&ge)?;
        x = b.add(r, o, Role::Residual).map_err(&ge)?;
        b.graph.set_output(&format!("layer.{i}"), x).map_err(&ge)?;
    }
    l.b.set_layer(None);
    let gf = l.w("norm.weight", &[d])?;
    let y = l.b.rms_norm(x, gf, eps, Role::FinalNorm).map_err(&ge)?;
    l.b.graph.set_output("last_hidden_state", y).map_err(&ge)?;
    let max_positions = cfg
        .dim(&["max_position_embeddings"], MAX_TABLE, Some(2048))
        .ok();
    let dims = Dims {
        hidden: d,
        layers,
        heads,
        kv_heads,
        head_dim: dh,
        intermediate: ff,
        vocab: Some(vocab),
        max_positions,
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
