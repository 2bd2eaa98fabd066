//! config.json: typed reads with plausibility checks.
//!
//! Values come from strangers. Every dimension read here is bounded ([`MAX_DIM`] and
//! friends) before anything is sized from it, and a missing key either takes the
//! architecture's documented default (recorded, so `inspect` can say so) or is an error.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ImportError;

/// Largest plausible hidden/intermediate size.
pub const MAX_DIM: u64 = 1 << 17;
/// Largest plausible layer count.
pub const MAX_LAYERS: u64 = 4096;
/// Largest plausible vocabulary or position table.
pub const MAX_TABLE: u64 = 1 << 24;

/// A parsed config.json (or an empty one when the folder has none).
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub json: Value,
    pub present: bool,
    /// Human-readable notes on every default or guess taken.
    pub guesses: Vec<String>,
    /// The guesses that may change what the model computes and that nothing in the checkpoint
    /// confirms (config.json missing, a head count not given): a subset of `guesses` that
    /// `run` and `optimize` refuse unless the user accepts them.
    pub unconfirmed: Vec<String>,
}

impl Config {
    /// Reads `dir/config.json`; a missing file gives an empty config (`present == false`), and
    /// anything there that is not a regular file is an error.
    pub fn read(dir: &Path) -> Result<Config, ImportError> {
        let file = dir.join("config.json");
        if std::fs::symlink_metadata(&file).is_err() {
            let note = "config.json is missing: every setting is a default or a guess".to_string();
            return Ok(Config {
                file,
                json: Value::Object(Default::default()),
                present: false,
                guesses: vec![note.clone()],
                unconfirmed: vec![note],
            });
        }
        let json = crate::checkpoint::read_json(&file)?;
        if !json.is_object() {
            return Err(ImportError::Config {
                file,
                msg: "config.json must hold a JSON object".into(),
            });
        }
        Ok(Config {
            file,
            json,
            present: true,
            guesses: vec![],
            unconfirmed: vec![],
        })
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(|v| v.as_str())
    }

    /// `architectures[0]`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|v| v.as_str())
    }

    fn bad(&self, key: &str, v: &Value, why: &str) -> ImportError {
        // The value as JSON, shortened: a message quotes a stranger's file only briefly.
        let text = v.to_string();
        let value = if text.chars().count() > 40 {
            format!("{}…", text.chars().take(40).collect::<String>())
        } else {
            text
        };
        ImportError::BadDim {
            file: self.file.clone(),
            key: key.into(),
            value,
            why: why.into(),
        }
    }

    /// The first of `keys` present, as an integer in `1..=max`; else `default` (recorded as a
    /// guess, and held to the same bounds), else an error.
    pub fn dim(
        &mut self,
        keys: &[&str],
        max: u64,
        default: Option<usize>,
    ) -> Result<usize, ImportError> {
        for key in keys {
            if let Some(v) = self.json.get(*key) {
                if v.is_null() {
                    continue;
                }
                let n = v
                    .as_u64()
                    .ok_or_else(|| self.bad(key, v, "expected a positive integer"))?;
                if n == 0 || n > max {
                    return Err(self.bad(key, v, &format!("must be between 1 and {max}")));
                }
                return Ok(n as usize);
            }
        }
        match default {
            // Guesses come from checkpoint shapes and names, which are as untrusted as config.json.
            Some(d) if d == 0 || d as u64 > max => Err(ImportError::BadDim {
                file: self.file.clone(),
                key: keys[0].into(),
                value: d.to_string(),
                why: format!(
                    "not given, and the value guessed from the checkpoint is not between 1 and {max}"
                ),
            }),
            Some(d) => {
                self.guesses
                    .push(format!("{} not given; assumed {d}", keys[0]));
                Ok(d)
            }
            None => Err(ImportError::Config {
                file: self.file.clone(),
                msg: format!("`{}` is required", keys[0]),
            }),
        }
    }

    /// Like [`Config::dim`] with a guess that nothing in the checkpoint confirms (a head count):
    /// taking it is recorded as unconfirmed too.
    pub fn guessed_dim(
        &mut self,
        keys: &[&str],
        max: u64,
        guess: usize,
    ) -> Result<usize, ImportError> {
        let before = self.guesses.len();
        let n = self.dim(keys, max, Some(guess))?;
        if self.guesses.len() > before && self.present {
            self.unconfirmed.push(format!(
                "{} not given in config.json; guessed {n} from the hidden size",
                keys[0]
            ));
        }
        Ok(n)
    }

    /// A float setting in `(0, max]`, with a default.
    pub fn float(&mut self, key: &str, max: f64, default: f64) -> Result<f32, ImportError> {
        match self.json.get(key) {
            None | Some(Value::Null) => {
                self.guesses
                    .push(format!("{key} not given; assumed {default}"));
                Ok(default as f32)
            }
            Some(v) => {
                let x = v
                    .as_f64()
                    .ok_or_else(|| self.bad(key, v, "expected a number"))?;
                if !(x > 0.0 && x <= max) {
                    return Err(self.bad(key, v, &format!("must be in (0, {max}]")));
                }
                Ok(x as f32)
            }
        }
    }

    /// A boolean setting with a default.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        self.json
            .get(key)
            .and_then(|v| v.as_bool())
            .unwrap_or(default)
    }

    /// A string setting with a default (recorded when taken).
    pub fn string(&mut self, key: &str, default: &str) -> String {
        match self.str(key) {
            Some(s) => s.to_string(),
            None => {
                self.guesses
                    .push(format!("{key} not given; assumed \"{default}\""));
                default.to_string()
            }
        }
    }

    /// The object under `key` as a config of its own whose keys read `key.name` (so every
    /// message names the full key); `None` when `key` is absent or null.
    pub fn section(&self, key: &str) -> Result<Option<Config>, ImportError> {
        let v = match self.json.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| self.bad(key, v, "expected an object"))?;
        let flat = obj
            .iter()
            .map(|(k, v)| (format!("{key}.{k}"), v.clone()))
            .collect();
        Ok(Some(Config {
            file: self.file.clone(),
            json: Value::Object(flat),
            present: true,
            guesses: vec![],
            unconfirmed: vec![],
        }))
    }

    /// Keys of this config that are not in `known` (a section's typos).
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<String> {
        self.json
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !known.contains(&k.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Error for a setting attnopt cannot express yet.
    pub fn unsupported(&self, what: impl Into<String>) -> ImportError {
        ImportError::NotSupported {
            path: self.file.clone(),
            what: what.into(),
        }
    }

    /// `a` must divide into `b` parts, reported against `key`.
    pub fn check_divides(
        &self,
        key: &str,
        whole: usize,
        parts: usize,
        what: &str,
    ) -> Result<(), ImportError> {
        if parts == 0 || whole % parts != 0 {
            let v = self
                .json
                .get(key)
                .cloned()
                .unwrap_or(Value::from(parts as u64));
            return Err(self.bad(key, &v, &format!("{what} {whole} is not divisible by it")));
        }
        Ok(())
    }
}
