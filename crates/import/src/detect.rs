//! Which architecture a checkpoint is: from config.json (`model_type`, `architectures`), else
//! from tensor names. The answer carries *why*, so `inspect` can say it.

use crate::checkpoint::Checkpoint;
use crate::config::Config;

/// The architecture templates attnopt has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Post-norm encoder (BERT, RoBERTa-like without its position offset).
    Bert,
    /// Pre-norm causal decoder with Conv1D weights.
    Gpt2,
    /// Vision transformer: patch embedding, CLS token, pre-norm encoder.
    Vit,
    /// LLaMA-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention.
    Llama,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::Gpt2 => "gpt2",
            Arch::Vit => "vit",
            Arch::Llama => "llama",
        }
    }

    /// A tensor (without prefix) that every checkpoint of this architecture has, and the
    /// prefixes that wrapper classes (`BertForMaskedLM`, `LlamaForCausalLM`, ...) add.
    fn marker(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Arch::Bert => (
                "encoder.layer.0.attention.self.query.weight",
                &["", "bert."],
            ),
            Arch::Gpt2 => ("h.0.ln_1.weight", &["", "transformer."]),
            Arch::Vit => (
                "embeddings.patch_embeddings.projection.weight",
                &["", "vit."],
            ),
            Arch::Llama => ("layers.0.self_attn.q_proj.weight", &["model.", ""]),
        }
    }

    /// The name prefix this checkpoint uses for the architecture, if its marker is present.
    pub fn prefix_in(self, ck: &Checkpoint) -> Option<&'static str> {
        let (marker, prefixes) = self.marker();
        prefixes
            .iter()
            .copied()
            .find(|p| ck.contains(&format!("{p}{marker}")))
    }
}

const ALL: [Arch; 4] = [Arch::Bert, Arch::Gpt2, Arch::Vit, Arch::Llama];

/// The detected architecture and how it was decided.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Detection {
    pub arch: Arch,
    /// E.g. `config.json model_type = "bert"`.
    pub reason: String,
    /// Name prefix of the tensors (`""`, `"model."`, ...).
    pub prefix: &'static str,
}

fn from_model_type(t: &str) -> Option<Arch> {
    Some(match t {
        "bert" => Arch::Bert,
        "gpt2" => Arch::Gpt2,
        "vit" => Arch::Vit,
        "llama" | "mistral" => Arch::Llama,
        _ => return None,
    })
}

fn from_class(c: &str) -> Option<Arch> {
    [
        ("Bert", Arch::Bert),
        ("GPT2", Arch::Gpt2),
        ("ViT", Arch::Vit),
        ("Llama", Arch::Llama),
        ("Mistral", Arch::Llama),
    ]
    .into_iter()
    .find(|(p, _)| c.starts_with(p))
    .map(|(_, a)| a)
}

/// Detects the architecture; `Err` carries a message for `ImportError::UnknownArchitecture`.
pub fn detect(cfg: &Config, ck: &Checkpoint) -> Result<Detection, String> {
    let by_names = ALL.iter().find_map(|&a| a.prefix_in(ck).map(|p| (a, p)));
    let claimed = cfg
        .str("model_type")
        .and_then(|t| from_model_type(t).map(|a| (a, format!("config.json model_type = \"{t}\""))))
        .or_else(|| {
            cfg.architecture().and_then(|c| {
                from_class(c).map(|a| (a, format!("config.json architectures = [\"{c}\"]")))
            })
        });
    match (claimed, by_names) {
        (Some((arch, reason)), _) => match arch.prefix_in(ck) {
            Some(prefix) => Ok(Detection { arch, reason, prefix }),
            None => Err(format!(
                "{reason}, but the checkpoint has no `{}` tensor (under any of the prefixes {:?})",
                arch.marker().0,
                arch.marker().1
            )),
        },
        (None, Some((arch, prefix))) => {
            let why = match cfg.str("model_type") {
                Some(t) => format!("config.json model_type \"{t}\" is not one attnopt knows; "),
                None if cfg.present => "config.json names no model_type; ".into(),
                None => "no config.json; ".into(),
            };
            Ok(Detection {
                arch,
                reason: format!("{why}guessed from tensor `{prefix}{}`", arch.marker().0),
                prefix,
            })
        }
        (None, None) => Err(match cfg.str("model_type") {
            Some(t) => format!("model_type \"{t}\" is not supported yet, and no tensor name matches bert, gpt2, vit or llama"),
            None => "no model_type in config.json, and no tensor name matches bert, gpt2, vit or llama".into(),
        }),
    }
}
