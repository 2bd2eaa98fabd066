//! What a node is *for*: its transformer layer and its role in the block.
//!
//! Import stamps every node with these so reports can speak per layer ("layer 3: softmax
//! attention, 12 heads") and the rewriter can find attention without re-deriving structure.
//! They never change what a node computes.

use std::fmt;

/// A node's role in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Input,
    Weight,
    /// Token/position/patch embeddings and their sum.
    Embedding,
    /// One product computing Q, K and V together (GPT-2 `c_attn`).
    QkvProj,
    QProj,
    KProj,
    VProj,
    /// Attention internals: scores, masks, probabilities, context.
    AttnScores,
    AttnMask,
    AttnProbs,
    AttnContext,
    AttnOutProj,
    Residual,
    Norm,
    MlpUp,
    MlpGate,
    MlpAct,
    MlpDown,
    FinalNorm,
    #[default]
    Other,
}

impl Role {
    /// Every role, in declaration order (`Other`, the default, last).
    pub const ALL: [Role; 20] = [
        Role::Input,
        Role::Weight,
        Role::Embedding,
        Role::QkvProj,
        Role::QProj,
        Role::KProj,
        Role::VProj,
        Role::AttnScores,
        Role::AttnMask,
        Role::AttnProbs,
        Role::AttnContext,
        Role::AttnOutProj,
        Role::Residual,
        Role::Norm,
        Role::MlpUp,
        Role::MlpGate,
        Role::MlpAct,
        Role::MlpDown,
        Role::FinalNorm,
        Role::Other,
    ];

    /// The role named `s` (the inverse of [`Role::name`]).
    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Weight => "weight",
            Role::Embedding => "embedding",
            Role::QkvProj => "qkv_proj",
            Role::QProj => "q_proj",
            Role::KProj => "k_proj",
            Role::VProj => "v_proj",
            Role::AttnScores => "attn_scores",
            Role::AttnMask => "attn_mask",
            Role::AttnProbs => "attn_probs",
            Role::AttnContext => "attn_context",
            Role::AttnOutProj => "attn_out_proj",
            Role::Residual => "residual",
            Role::Norm => "norm",
            Role::MlpUp => "mlp_up",
            Role::MlpGate => "mlp_gate",
            Role::MlpAct => "mlp_act",
            Role::MlpDown => "mlp_down",
            Role::FinalNorm => "final_norm",
            Role::Other => "other",
        }
    }

    /// True for the nodes that make up self-attention (projections through output).
    pub fn is_attention(self) -> bool {
        matches!(
            self,
            Role::QkvProj
                | Role::QProj
                | Role::KProj
                | Role::VProj
                | Role::AttnScores
                | Role::AttnMask
                | Role::AttnProbs
                | Role::AttnContext
                | Role::AttnOutProj
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Layer and role of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NodeMeta {
    /// Transformer block index, `None` outside the blocks (embeddings, final norm).
    pub layer: Option<u32>,
    pub role: Role,
}

impl fmt::Display for NodeMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.layer {
            Some(l) => write!(f, "@L{l} {}", self.role),
            None => write!(f, "@- {}", self.role),
        }
    }
}
