//! Text in: sentences tokenised with the model folder's `tokenizer.json` through HF's own
//! `tokenizers` crate, into the inputs a transformers model takes (`input_ids`,
//! `attention_mask`, `token_type_ids`, padded to the longest sentence as a transformers batch
//! would be); and sentence embeddings out: `last_hidden_state` pooled by the mean over the
//! attention mask or by the first token (`sentence_embedding`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use attnopt_ir::Tensor;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer};

use crate::{Error, Model};

/// The tokenizer file a model folder may hold.
pub const TOKENIZER: &str = "tokenizer.json";

/// How `--pool` makes one vector per sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The mean of `last_hidden_state` over the attention mask (sentence-transformers').
    Mean,
    /// The first token's (BERT's `[CLS]`).
    Cls,
}

fn tokenizer_of(model: &Model) -> Result<(Tokenizer, PathBuf), Error> {
    let path = model.imported().dir.join(TOKENIZER);
    if !path.is_file() {
        return Err(Error::Usage {
            path: model.imported().dir.clone(),
            msg: format!("has no {TOKENIZER}; text input needs the model's tokenizer"),
        });
    }
    let tok = Tokenizer::from_file(&path).map_err(|e| Error::Usage {
        path: path.clone(),
        msg: format!("not a tokenizer this version reads: {e}"),
    })?;
    Ok((tok, path))
}

/// The padding token's id: the tokenizer's own padding setting, else `[PAD]`/`<pad>`, else 0.
fn pad_of(tok: &Tokenizer) -> (u32, String) {
    if let Some(p) = tok.get_padding() {
        return (p.pad_id, p.pad_token.clone());
    }
    for t in ["[PAD]", "<pad>", "<|endoftext|>"] {
        if let Some(id) = tok.token_to_id(t) {
            return (id, t.to_string());
        }
    }
    (0, String::new())
}

/// The model's inputs for `texts` (one sequence each, special tokens added, padded to the
/// longest on the right).
pub fn encode(model: &Model, texts: &[String]) -> Result<BTreeMap<String, Tensor>, Error> {
    if texts.is_empty() {
        return Err(Error::NotSupported("an empty list of texts".into()));
    }
    let (mut tok, path) = tokenizer_of(model)?;
    let (pad_id, pad_token) = pad_of(&tok);
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..PaddingParams::default()
    }));
    let encodings = tok
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| Error::Usage {
            path: path.clone(),
            msg: format!("tokenising the text: {e}"),
        })?;
    let (b, n) = (encodings.len(), encodings[0].get_ids().len());
    let collect = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<i64>| -> Result<Tensor, Error> {
        let v: Vec<i64> = encodings.iter().flat_map(f).collect();
        Tensor::i64(vec![b, n], v).map_err(|e| Error::NotSupported(e.to_string()))
    };
    let widen = |x: &[u32]| x.iter().map(|&v| i64::from(v)).collect::<Vec<_>>();
    let mut out = BTreeMap::new();
    let takes = model.input_names();
    if takes.contains(&"input_ids") {
        out.insert("input_ids".into(), collect(&|e| widen(e.get_ids()))?);
    }
    if takes.contains(&"attention_mask") {
        out.insert(
            "attention_mask".into(),
            collect(&|e| widen(e.get_attention_mask()))?,
        );
    }
    if takes.contains(&"token_type_ids") {
        out.insert(
            "token_type_ids".into(),
            collect(&|e| widen(e.get_type_ids()))?,
        );
    }
    if out.is_empty() {
        return Err(Error::NotSupported(format!(
            "text input for a model that takes {}",
            takes.join(", ")
        )));
    }
    Ok(out)
}

/// `hidden [B, N, d]` pooled to `[B, d]` (`mask [B, N]`, 1 for real tokens; none: all).
pub fn pool(hidden: &Tensor, mask: Option<&Tensor>, how: Pool) -> Result<Tensor, Error> {
    let &[b, n, d] = hidden.shape() else {
        return Err(Error::NotSupported(format!(
            "pooling a tensor of shape {:?}",
            hidden.shape()
        )));
    };
    let h = hidden.to_f32_vec();
    let m: Vec<i64> = match mask.and_then(Tensor::as_i64) {
        Some(m) if m.len() == b * n => m.to_vec(),
        _ => vec![1; b * n],
    };
    let mut out = vec![0f32; b * d];
    for i in 0..b {
        let o = &mut out[i * d..(i + 1) * d];
        match how {
            Pool::Cls => o.copy_from_slice(&h[i * n * d..i * n * d + d]),
            Pool::Mean => {
                let mut acc = vec![0f64; d];
                let mut count = 0f64;
                for t in 0..n {
                    if m[i * n + t] != 0 {
                        count += 1.0;
                        for (a, &x) in acc.iter_mut().zip(&h[(i * n + t) * d..(i * n + t + 1) * d])
                        {
                            *a += f64::from(x);
                        }
                    }
                }
                for (x, a) in o.iter_mut().zip(acc) {
                    *x = (a / count.max(1.0)) as f32;
                }
            }
        }
    }
    Tensor::f32(vec![b, d], out).map_err(|e| Error::NotSupported(e.to_string()))
}

/// A model's tokenizer for generation: a prompt in, generated ids out as text.
pub struct Codec {
    tok: Tokenizer,
    path: PathBuf,
}

impl Codec {
    /// The model folder's tokenizer.json (an error naming the folder when it has none).
    pub fn of(model: &Model) -> Result<Codec, Error> {
        let (tok, path) = tokenizer_of(model)?;
        Ok(Codec { tok, path })
    }

    /// `text`'s ids, special tokens added as the tokenizer's post-processor says (as
    /// transformers' `tokenizer(text)` does).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, Error> {
        let e = self.tok.encode(text, true).map_err(|e| Error::Usage {
            path: self.path.clone(),
            msg: format!("tokenising the prompt: {e}"),
        })?;
        Ok(e.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// The text of `ids` (special tokens kept; an id the vocabulary lacks is an error).
    pub fn decode(&self, ids: &[i64]) -> Result<String, Error> {
        let ids: Vec<u32> = (ids.iter())
            .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        self.tok.decode(&ids, false).map_err(|e| Error::Usage {
            path: self.path.clone(),
            msg: format!("decoding generated ids: {e}"),
        })
    }
}

/// Text as it is generated: each call gives what the ids so far add to the text printed
/// before, holding back a piece that ends in an unfinished character (a byte-level token
/// that splits a UTF-8 sequence decodes to U+FFFD until the rest arrives).
pub struct Stream<'c> {
    codec: &'c Codec,
    ids: Vec<i64>,
    shown: String,
}

impl<'c> Stream<'c> {
    pub fn new(codec: &'c Codec) -> Stream<'c> {
        Stream {
            codec,
            ids: vec![],
            shown: String::new(),
        }
    }

    /// Adds `id`; returns the new text to print (possibly empty).
    pub fn push(&mut self, id: i64) -> Result<String, Error> {
        self.ids.push(id);
        let text = self.codec.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = match text.strip_prefix(self.shown.as_str()) {
            Some(rest) => rest.to_string(),
            // A later token changed earlier text (a decoder that merges): print the rest only.
            None => text.chars().skip(self.shown.chars().count()).collect(),
        };
        self.shown = text;
        Ok(new)
    }
}
