//! What decoding needs from a checkpoint folder beyond the graph: the end-of-sequence ids
//! (`generation_config.json`'s `eos_token_id`, as transformers' `generate` reads it, else
//! config.json's), an integer or a list of integers.

use std::path::Path;

use serde_json::Value;

use crate::config::{Config, MAX_TABLE};
use crate::ImportError;

/// The ids that end generation (empty when the folder names none).
pub fn eos_token_ids(dir: &Path) -> Result<Vec<i64>, ImportError> {
    let generation = dir.join("generation_config.json");
    if generation.is_file() {
        let json = crate::checkpoint::read_json(&generation)?;
        if let Some(v) = json.get("eos_token_id") {
            return ids(v, &generation);
        }
    }
    let cfg = Config::read(dir)?;
    match cfg.json.get("eos_token_id") {
        Some(v) => ids(v, &cfg.file),
        None => Ok(vec![]),
    }
}

fn ids(v: &Value, file: &Path) -> Result<Vec<i64>, ImportError> {
    let one = |x: &Value| {
        x.as_u64()
            .filter(|&n| n < MAX_TABLE)
            .map(|n| n as i64)
            .ok_or_else(|| ImportError::Config {
                file: file.into(),
                msg: format!(
                    "eos_token_id must be a token id (0..{MAX_TABLE}) or a list of them, got {x}"
                ),
            })
    };
    match v {
        Value::Null => Ok(vec![]),
        Value::Array(xs) => xs.iter().map(one).collect(),
        x => Ok(vec![one(x)?]),
    }
}
