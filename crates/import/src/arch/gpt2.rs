//! GPT-2: pre-norm causal decoder with Conv1D (`[in, out]`) weights and one fused c_attn
//! product (`GPT2Model` names; `transformer.` prefix accepted).

use attnopt_ir::builder::{Attention, AttentionKind, WeightLayout::InOut};
use attnopt_ir::{AttentionFormula, DType, Dim, Op, Role, Shape, BATCH, SEQ};

use super::{guess_heads, layers_in_checkpoint, tensor_dim, Built};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, MAX_DIM, MAX_LAYERS, MAX_TABLE};
use crate::sparse_spec::{SparseFfSpec, SparseQkv};
use crate::template::{activation, attention_kind, attention_mask_input, graph_err, Dims, Loader};
use crate::ImportError;

pub fn build(
    ck: &Checkpoint,
    cfg: &mut Config,
    prefix: &'static str,
) -> Result<Built, ImportError> {
    let p = |n: &str| format!("{prefix}{n}");
    let d = cfg.dim(
        &["n_embd", "hidden_size"],
        MAX_DIM,
        tensor_dim(ck, &p("wte.weight"), 1),
    )?;
    let layers = cfg.dim(
        &["n_layer", "num_hidden_layers"],
        MAX_LAYERS,
        Some(layers_in_checkpoint(ck, &p("h."))),
    )?;
    let heads = cfg.guessed_dim(&["n_head", "num_attention_heads"], MAX_DIM, guess_heads(d))?;
    cfg.check_divides("n_head", d, heads, "n_embd")?;
    let ff = cfg.dim(&["n_inner"], MAX_DIM, Some(4 * d))?;
    let vocab = cfg.dim(
        &["vocab_size"],
        MAX_TABLE,
        tensor_dim(ck, &p("wte.weight"), 0),
    )?;
    let positions = cfg.dim(
        &["n_positions", "max_position_embeddings"],
        MAX_TABLE,
        tensor_dim(ck, &p("wpe.weight"), 0),
    )?;
    let eps = cfg.float("layer_norm_epsilon", 1.0, 1e-5)?;
    let mut act_name = cfg.string("activation_function", "gelu_new");
    let act = activation(cfg, &act_name)?;
    let kind = attention_kind(
        cfg,
        &[AttentionFormula::Softmax, AttentionFormula::LinearElu],
    )?;
    let sparse_qkv = SparseQkv::read(cfg, d)?;
    let sparse_ff = SparseFfSpec::read(cfg, ff)?;
    if sparse_ff.is_some() {
        // The sparse feed-forward replaces the MLP and its activation with trax's ReLU.
        act_name = "relu".into();
    }
    if sparse_qkv.is_some() && kind != AttentionKind::Softmax {
        return Err(cfg.unsupported("attnopt_sparse_qkv with a non-softmax attnopt_attention"));
    }
    if cfg.flag("scale_attn_by_inverse_layer_idx", false) {
        return Err(cfg.unsupported("scale_attn_by_inverse_layer_idx = true"));
    }
    let dh = d / heads;
    let scale = if cfg.flag("scale_attn_weights", true) {
        1.0 / (dh as f32).sqrt()
    } else {
        1.0
    };

    let ge = graph_err(cfg);
    let mut l = Loader::new(ck, prefix, "gpt2");
    let ids =
        l.b.graph
            .input("input_ids", DType::I64, Shape(vec![BATCH, SEQ]))
            .map_err(&ge)?;
    let mask = attention_mask_input(&mut l.b.graph, kind).map_err(&ge)?;
    let wte = l.w("wte.weight", &[vocab, d])?;
    let wpe = l.w("wpe.weight", &[positions, d])?;
    let b = &mut l.b;
    let e = b
        .op(Op::Gather, &[wte, ids], Role::Embedding)
        .map_err(&ge)?;
    let pos = b.positions(wpe).map_err(&ge)?;
    let mut x = b.add(e, pos, Role::Embedding).map_err(&ge)?;
    b.graph.set_output("embeddings", x).map_err(&ge)?;

    for i in 0..layers {
        let n = |s: &str| format!("h.{i}.{s}");
        l.b.set_layer(Some(i as u32));
        let g1 = l.w(&n("ln_1.weight"), &[d])?;
        let b1 = l.w(&n("ln_1.bias"), &[d])?;
        let h = l.b.layer_norm(x, g1, b1, eps, Role::Norm).map_err(&ge)?;
        let [q, k, v] = match &sparse_qkv {
            Some(sq) => sq.qkv(&mut l, cfg, i, h, d)?,
            None => {
                let wqkv = l.w(&n("attn.c_attn.weight"), &[d, 3 * d])?;
                let bqkv = l.w(&n("attn.c_attn.bias"), &[3 * d])?;
                let b = &mut l.b;
                let qkv = b
                    .linear(h, wqkv, Some(bqkv), InOut, Role::QkvProj)
                    .map_err(&ge)?;
                let mut part = |k: usize, role| {
                    b.op(
                        Op::Slice {
                            axis: 2,
                            start: k * d,
                            end: Dim::Fixed((k + 1) * d),
                        },
                        &[qkv],
                        role,
                    )
                    .map_err(&ge)
                };
                [
                    part(0, Role::QProj)?,
                    part(1, Role::KProj)?,
                    part(2, Role::VProj)?,
                ]
            }
        };
        let spec = Attention {
            kind,
            heads,
            kv_heads: heads,
            head_dim: dh,
            causal: true,
            padding_mask: mask,
            rope: None,
            scale,
        };
        let c = l.b.attention(q, k, v, &spec).map_err(&ge)?;
        let a = if sparse_qkv.is_some_and(|sq| !sq.output_dense) {
            c
        } else {
            let wo = l.w(&n("attn.c_proj.weight"), &[d, d])?;
            let bo = l.w(&n("attn.c_proj.bias"), &[d])?;
            l.b.linear(c, wo, Some(bo), InOut, Role::AttnOutProj)
                .map_err(&ge)?
        };
        let g2 = l.w(&n("ln_2.weight"), &[d])?;
        let b2 = l.w(&n("ln_2.bias"), &[d])?;
        let r = l.b.add(x, a, Role::Residual).map_err(&ge)?;
        let h = l.b.layer_norm(r, g2, b2, eps, Role::Norm).map_err(&ge)?;
        let o = match &sparse_ff {
            Some(sf) => sf.build(&mut l, cfg, i, h, d)?,
            None => {
                let wfc = l.w(&n("mlp.c_fc.weight"), &[d, ff])?;
                let bfc = l.w(&n("mlp.c_fc.bias"), &[ff])?;
                let wp = l.w(&n("mlp.c_proj.weight"), &[ff, d])?;
                let bp = l.w(&n("mlp.c_proj.bias"), &[d])?;
                l.b.mlp(h, (wfc, Some(bfc)), act, (wp, Some(bp)), InOut)
                    .map_err(&ge)?
            }
        };
        let b = &mut l.b;
        x = b.add(r, o, Role::Residual).map_err(&ge)?;
        b.graph.set_output(&format!("layer.{i}"), x).map_err(&ge)?;
    }
    l.b.set_layer(None);
    let gf = l.w("ln_f.weight", &[d])?;
    let bf = l.w("ln_f.bias", &[d])?;
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
        vocab: Some(vocab),
        max_positions: Some(positions),
        image: None,
        activation: act_name,
        norm_eps: eps,
        sparse_qkv,
        sparse_ff,
    };
    Ok(Built {
        graph: l.b.finish(),
        dims,
        used: l.used,
    })
}
