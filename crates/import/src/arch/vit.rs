//! ViT: patch embedding (a stride-p convolution, written as patchify + product), CLS token,
//! learned positions, pre-norm encoder (`ViTModel` names; `vit.` prefix accepted).

use attnopt_ir::builder::{Attention, WeightLayout::OutIn};
use attnopt_ir::{AttentionFormula, DType, Dim, Op, Role, Shape, BATCH};

use super::{guess_heads, layers_in_checkpoint, tensor_dim, Built};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, MAX_DIM, MAX_LAYERS};
use crate::template::{activation, attention_kind, graph_err, Dims, Loader};
use crate::ImportError;

pub fn build(
    ck: &Checkpoint,
    cfg: &mut Config,
    prefix: &'static str,
) -> Result<Built, ImportError> {
    let p = |n: &str| format!("{prefix}{n}");
    let proj = p("embeddings.patch_embeddings.projection.weight");
    let d = cfg.dim(&["hidden_size"], MAX_DIM, tensor_dim(ck, &proj, 0))?;
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
    let channels = cfg.dim(&["num_channels"], 64, tensor_dim(ck, &proj, 1))?;
    let patch = cfg.dim(&["patch_size"], 4096, tensor_dim(ck, &proj, 2))?;
    let image = cfg.dim(&["image_size"], 1 << 15, Some(224))?;
    cfg.check_divides("patch_size", image, patch, "image_size")?;
    let eps = cfg.float("layer_norm_eps", 1.0, 1e-12)?;
    let act_name = cfg.string("hidden_act", "gelu");
    let act = activation(cfg, &act_name)?;
    let kind = attention_kind(cfg, &[AttentionFormula::Softmax, AttentionFormula::Hydra])?;
    let qkv_bias = cfg.flag("qkv_bias", true);
    let dh = d / heads;
    let g = image / patch;
    let tokens = g * g + 1;
    let fixed = |v: &[usize]| {
        Shape(
            std::iter::once(BATCH)
                .chain(v.iter().map(|&n| Dim::Fixed(n)))
                .collect(),
        )
    };

    let ge = graph_err(cfg);
    let mut l = Loader::new(ck, prefix, "vit");
    let px =
        l.b.graph
            .input("pixel_values", DType::F32, fixed(&[channels, image, image]))
            .map_err(&ge)?;
    let w = l.w(
        "embeddings.patch_embeddings.projection.weight",
        &[d, channels, patch, patch],
    )?;
    let wb = l.w("embeddings.patch_embeddings.projection.bias", &[d])?;
    let cls = l.w("embeddings.cls_token", &[1, 1, d])?;
    let pos = l.w("embeddings.position_embeddings", &[1, tokens, d])?;
    let b = &mut l.b;
    let e = Role::Embedding;
    // [B, C, g·p, g·p] → [B, g·g, C·p·p], in the (c, y, x) order the conv weight flattens to.
    let t = b
        .op(
            Op::Reshape(fixed(&[channels, g, patch, g, patch])),
            &[px],
            e,
        )
        .map_err(&ge)?;
    let t = b
        .op(Op::Permute(vec![0, 2, 4, 1, 3, 5]), &[t], e)
        .map_err(&ge)?;
    let t = b
        .op(
            Op::Reshape(fixed(&[g * g, channels * patch * patch])),
            &[t],
            e,
        )
        .map_err(&ge)?;
    let w2 = b
        .op(
            Op::Reshape(Shape::fixed(&[d, channels * patch * patch])),
            &[w],
            e,
        )
        .map_err(&ge)?;
    let t = b.linear(t, w2, Some(wb), OutIn, e).map_err(&ge)?;
    let c = b.expand(cls, fixed(&[1, d]), e).map_err(&ge)?;
    let t = b.op(Op::Concat { axis: 1 }, &[c, t], e).map_err(&ge)?;
    let mut x = b.add(t, pos, e).map_err(&ge)?;
    b.graph.set_output("embeddings", x).map_err(&ge)?;

    for i in 0..layers {
        let n = |s: &str| format!("encoder.layer.{i}.{s}");
        l.b.set_layer(Some(i as u32));
        let g1 = l.w(&n("layernorm_before.weight"), &[d])?;
        let b1 = l.w(&n("layernorm_before.bias"), &[d])?;
        let mut qkv = Vec::new();
        for which in ["query", "key", "value"] {
            let w = l.w(&n(&format!("attention.attention.{which}.weight")), &[d, d])?;
            let bias = if qkv_bias {
                Some(l.w(&n(&format!("attention.attention.{which}.bias")), &[d])?)
            } else {
                None
            };
            qkv.push((w, bias));
        }
        let wo = l.w(&n("attention.output.dense.weight"), &[d, d])?;
        let bo = l.w(&n("attention.output.dense.bias"), &[d])?;
        let g2 = l.w(&n("layernorm_after.weight"), &[d])?;
        let b2 = l.w(&n("layernorm_after.bias"), &[d])?;
        let wi = l.w(&n("intermediate.dense.weight"), &[ff, d])?;
        let bi = l.w(&n("intermediate.dense.bias"), &[ff])?;
        let w2 = l.w(&n("output.dense.weight"), &[d, ff])?;
        let bb2 = l.w(&n("output.dense.bias"), &[d])?;
        let b = &mut l.b;
        let h = b.layer_norm(x, g1, b1, eps, Role::Norm).map_err(&ge)?;
        let q = b
            .linear(h, qkv[0].0, qkv[0].1, OutIn, Role::QProj)
            .map_err(&ge)?;
        let k = b
            .linear(h, qkv[1].0, qkv[1].1, OutIn, Role::KProj)
            .map_err(&ge)?;
        let v = b
            .linear(h, qkv[2].0, qkv[2].1, OutIn, Role::VProj)
            .map_err(&ge)?;
        let spec = Attention {
            kind,
            heads,
            kv_heads: heads,
            head_dim: dh,
            causal: false,
            padding_mask: None,
            rope: None,
            scale: 1.0 / (dh as f32).sqrt(),
        };
        let c = b.attention(q, k, v, &spec).map_err(&ge)?;
        let a = b
            .linear(c, wo, Some(bo), OutIn, Role::AttnOutProj)
            .map_err(&ge)?;
        let r = b.add(a, x, Role::Residual).map_err(&ge)?;
        let h = b.layer_norm(r, g2, b2, eps, Role::Norm).map_err(&ge)?;
        let o = b
            .mlp(h, (wi, Some(bi)), act, (w2, Some(bb2)), OutIn)
            .map_err(&ge)?;
        x = b.add(o, r, Role::Residual).map_err(&ge)?;
        b.graph.set_output(&format!("layer.{i}"), x).map_err(&ge)?;
    }
    l.b.set_layer(None);
    let gf = l.w("layernorm.weight", &[d])?;
    let bf = l.w("layernorm.bias", &[d])?;
    let y =
        l.b.layer_norm(x, gf, bf, eps, Role::FinalNorm)
            .map_err(&ge)?;
    l.b.graph.set_output("last_hidden_state", y).map_err(&ge)?;
    let dims = Dims {
        hidden: d,
        layers,
        heads,
        kv_heads: heads,
        head_dim: dh,
        intermediate: ff,
        vocab: None,
        max_positions: Some(tokens),
        image: Some((channels, image, patch)),
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
