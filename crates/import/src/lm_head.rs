//! The language-model head of a decoder checkpoint, on request (`LoadOptions::logits`): an
//! output `logits = last_hidden_state · Wᵀ` with `W [vocab, d]` the checkpoint's
//! `lm_head.weight`, or, when config.json ties the embeddings (`tie_word_embeddings`, GPT-2's
//! default), the token embedding. Added only when asked, so the base model's graph (what
//! `optimize`, `bench` and the peer comparisons measure) stays the Hugging Face base model's.

use attnopt_ir::{NodeMeta, Op, Role};

use crate::detect::Arch;
use crate::{ImportError, Imported};

/// Adds the `logits` output to `m` (a GPT-2 or LLaMA import).
pub fn add(m: &mut Imported) -> Result<(), ImportError> {
    let unsupported = |msg: String| ImportError::Config {
        file: m.dir.join("config.json"),
        msg,
    };
    let (embedding, tie_default) = match m.detection.arch {
        Arch::Gpt2 => ("wte.weight", true),
        Arch::Llama => ("embed_tokens.weight", false),
        other => {
            return Err(unsupported(format!(
                "logits: a {} model has no language-model head (GPT-2 and LLaMA do)",
                other.name()
            )))
        }
    };
    let tie = crate::config::Config::read(&m.dir)
        .map(|c| c.flag("tie_word_embeddings", tie_default))
        .unwrap_or(tie_default);
    // The tied head is the table the token ids are gathered from (whatever its name).
    let table = || {
        let g = &m.graph;
        g.topo_order().into_iter().find_map(|n| {
            let ops = g.operands(n);
            let ids = matches!(g.node(n).op, Op::Gather)
                && matches!(&g.node(ops[1]).op, Op::Input { name, .. } if name == "input_ids");
            (ids && matches!(g.node(ops[0]).op, Op::Weight(_))).then(|| ops[0])
        })
    };
    let (name, head) = if m.checkpoint.contains("lm_head.weight") {
        let w = m
            .checkpoint
            .weight("lm_head.weight", m.detection.arch.name())?;
        ("lm_head.weight".to_string(), m.graph.weight(w))
    } else if let (true, Some(t)) = (tie, table()) {
        (format!("the token embedding ({embedding})"), t)
    } else {
        return Err(unsupported(
            "logits: the checkpoint has no lm_head.weight and config.json does not tie the \
             embeddings (tie_word_embeddings)"
                .into(),
        ));
    };
    let (vocab, d) = match m.graph.node(head).ty.shape.dims() {
        [v, d] => (v.fixed().unwrap_or(0), d.fixed().unwrap_or(0)),
        _ => {
            return Err(unsupported(format!(
                "logits: {name} is not a [vocab, hidden] matrix"
            )))
        }
    };
    let g = &mut m.graph;
    let y = g
        .output("last_hidden_state")
        .ok_or_else(|| unsupported("logits: the graph has no last_hidden_state".into()))?;
    if g.node(y).ty.shape.dims().last().and_then(|x| x.fixed()) != Some(d) {
        return Err(unsupported(format!(
            "logits: {name} is [{vocab}, {d}], which does not fit the hidden size"
        )));
    }
    let meta = NodeMeta {
        layer: None,
        role: Role::Other,
    };
    let ge = |e: attnopt_ir::GraphError| unsupported(format!("logits: {e}"));
    let t = g.add(Op::Permute(vec![1, 0]), &[head], meta).map_err(ge)?;
    let logits = g.add(Op::MatMul, &[y, t], meta).map_err(ge)?;
    g.set_output("logits", logits).map_err(ge)?;
    Ok(())
}
