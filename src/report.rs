//! The optimisation report: per layer, what attention was found, what was done and why, the
//! rules that fired, costs before → after at each sequence length, and measured errors.
//! Serialised as `report.json` (a stable schema for build pipelines) and rendered as text.

use attnopt_ir::AttentionFormula;
use std::collections::BTreeMap;
use std::fmt::Write;

use attnopt_ir::Tensor;
use attnopt_rewrite::report::CostAt;

use crate::inspect::si;

/// Max-abs and relative (‖Δ‖₂ / ‖reference‖₂) error of one tensor.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ErrorStat {
    pub max_abs: f64,
    pub relative: f64,
}

impl ErrorStat {
    /// The error of `got` against `want` (same element count; NaN counts as infinite).
    pub fn between(got: &Tensor, want: &Tensor) -> ErrorStat {
        let (a, b) = (got.to_f32_vec(), want.to_f32_vec());
        let (mut max_abs, mut num, mut den) = (0f64, 0f64, 0f64);
        for (x, y) in a.iter().zip(&b) {
            let d = (*x as f64 - *y as f64).abs();
            max_abs = if d.is_nan() {
                f64::INFINITY
            } else {
                max_abs.max(d)
            };
            num += d * d;
            den += (*y as f64) * (*y as f64);
        }
        let relative = if den > 0.0 {
            (num / den).sqrt()
        } else {
            num.sqrt()
        };
        ErrorStat { max_abs, relative }
    }
}

/// A fit made for a conversion, measured on held-out calibration rows: the output-projection
/// refit (`attn_out_proj`), the factored Q/K/V weights (`sparse-qkv`: the largest relative
/// error of a product's output, per-row rank-1 start → fitted), or the sparse feed-forward
/// (`sparse-ff`: the feed-forward's output error and the controller's hit rate, weight-only
/// construction → calibrated).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Fit {
    pub error_before: f64,
    pub error_after: f64,
    /// `sparse-ff`: the share of block choices equal to the best unit's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hit_rate_before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hit_rate_after: Option<f64>,
    /// Whether the refitted weights were kept (only when they lower the held-out error).
    pub kept: bool,
    /// Calibration rows fitted on and held out.
    pub rows_fit: usize,
    pub rows_held_out: usize,
}

/// Error at a layer's own output and at the model's final output.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ErrorPair {
    pub layer_output: ErrorStat,
    pub final_output: ErrorStat,
}

/// Weight bytes one layer reads per token (its graph lowered at batch 1, one token:
/// `lower::weight_bytes_by_layer`), before and after optimisation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WeightBytes {
    pub before: u64,
    pub after: u64,
}

/// One layer in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    pub layer: u32,
    /// The attention found in the original model (`softmax`, `hydra`, `linear-elu`, ...).
    pub attention: AttentionFormula,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub causal: bool,
    pub padding_mask: bool,
    pub rope: bool,
    /// Whether an allowed approximate rule could convert this layer and it pays.
    pub eligible: bool,
    /// Why it is not eligible, or not converted (per allowed family, named when several are).
    pub reason: Option<String>,
    /// The approximate conversions applied (rule names, `sparse-qkv`, `sparse-ff`).
    pub converted: Vec<String>,
    pub rules_fired: BTreeMap<String, usize>,
    pub saturation: String,
    pub egraph_nodes: usize,
    /// The layer whose optimisation this one reuses (itself if first of its kind).
    pub stamped_from: u32,
    pub fallback: Option<String>,
    pub costs: Vec<CostAt>,
    /// Weight bytes the layer reads per token, in the original and the optimised model.
    pub weights: Option<WeightBytes>,
    /// The fits made for the layer's conversions, by what was fitted (`attn_out_proj`,
    /// `sparse-qkv`, `sparse-ff`), error before and after on held-out calibration rows (in the
    /// final model when converted, else when converted alone).
    pub fit: BTreeMap<String, Fit>,
    /// Error when only this conversion of this layer is made, by family.
    pub error_alone: BTreeMap<String, ErrorPair>,
    /// Error in the final model, at this layer's output and the final output.
    pub error: Option<ErrorPair>,
}

/// The optimisation report (`report.json`; schema documented in docs/CLI.md).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub model: String,
    pub architecture: &'static str,
    pub target_seq: usize,
    pub seqs: Vec<usize>,
    pub allow: Vec<String>,
    pub budget: Option<f64>,
    pub calibration: Option<String>,
    pub rules: String,
    pub optimise_ms: f64,
    pub distinct_blocks: usize,
    pub layers: Vec<LayerReport>,
    pub final_error: Option<ErrorStat>,
    pub warnings: Vec<String>,
}

impl Report {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "model        {} ({})", self.model, self.architecture);
        let allow = if self.allow.is_empty() {
            "none".to_string()
        } else {
            self.allow.join(", ")
        };
        let budget = self.budget.map_or("none".to_string(), |b| format!("{b:e}"));
        let _ = writeln!(s, "optimised    for N={} with exact rules ({}); approximations allowed: {allow}; budget: {budget}", self.target_seq, self.rules);
        if let Some(c) = &self.calibration {
            let _ = writeln!(s, "calibration  {c}");
        }
        let _ = writeln!(
            s,
            "time         {:.1} ms, {} distinct block(s) saturated for {} layer(s)",
            self.optimise_ms,
            self.distinct_blocks,
            self.layers.len()
        );
        for l in &self.layers {
            let _ = writeln!(s);
            let head = match (l.heads, l.kv_heads, l.head_dim) {
                (Some(h), Some(kv), Some(d)) if h != kv => format!("{h} heads ({kv} kv) × {d}"),
                (Some(h), _, Some(d)) => format!("{h} heads × {d}"),
                _ => "heads ?".into(),
            };
            let mut flags = vec![];
            if l.causal {
                flags.push("causal");
            }
            if l.padding_mask {
                flags.push("padding mask");
            }
            if l.rope {
                flags.push("rope");
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(", {}", flags.join(", "))
            };
            let _ = writeln!(
                s,
                "layer {:<3} {} attention, {head}{flags}",
                l.layer, l.attention
            );
            if !l.converted.is_empty() {
                let _ = writeln!(s, "  converted  {} (approximate)", l.converted.join(", "));
            }
            if let Some(why) = &l.reason {
                let _ = writeln!(s, "  not converted: {why}");
            }
            if l.stamped_from != l.layer {
                let _ = writeln!(
                    s,
                    "  same structure as layer {}: its optimisation reused",
                    l.stamped_from
                );
            }
            if let Some(f) = &l.fallback {
                let _ = writeln!(s, "  warning    {f}");
            }
            let fired: Vec<String> = l
                .rules_fired
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect();
            let fired = if fired.is_empty() {
                "none".to_string()
            } else {
                fired.join(", ")
            };
            let _ = writeln!(
                s,
                "  rules      {fired} ({}, {} e-nodes)",
                l.saturation, l.egraph_nodes
            );
            for c in &l.costs {
                let _ = writeln!(
                    s,
                    "  N={:<6} FLOPs {} → {}  bytes {}B → {}B  attention FLOPs {} → {}{}",
                    c.seq,
                    si(c.before.flops as f64),
                    si(c.after.flops as f64),
                    si(c.before.bytes as f64),
                    si(c.after.bytes as f64),
                    si(c.attention_before.flops as f64),
                    si(c.attention_after.flops as f64),
                    ratio(c.attention_before.flops, c.attention_after.flops),
                );
            }
            if let Some(w) = &l.weights {
                let _ = writeln!(
                    s,
                    "  weights  {}B → {}B read per token",
                    si(w.before as f64),
                    si(w.after as f64)
                );
            }
            for (what, f) in &l.fit {
                let what = match what.as_str() {
                    "attn_out_proj" => "output projection refit by least squares",
                    "sparse-qkv" => "sparse-qkv G, P fitted to Q/K/V outputs (rank-1 rows → ALS)",
                    "sparse-ff" => "sparse-ff blocks and controller (weights only → calibrated)",
                    other => other,
                };
                let hits = match (f.hit_rate_before, f.hit_rate_after) {
                    (Some(a), Some(b)) => {
                        format!(
                            ", controller hit rate {:.1}% → {:.1}%",
                            100.0 * a,
                            100.0 * b
                        )
                    }
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "  fit      {what} ({} rows): held-out error {:.3e} → {:.3e}{hits}{}",
                    f.rows_fit,
                    f.error_before,
                    f.error_after,
                    if f.kept { "" } else { " (not kept: no better)" }
                );
            }
            for (family, e) in &l.error_alone {
                let _ = writeln!(
                    s,
                    "  error if only this is converted ({family}): layer output {}, final output {}",
                    e.layer_output, e.final_output
                );
            }
            if let Some(e) = &l.error {
                let _ = writeln!(s, "  error vs original: layer output {}", e.layer_output);
            }
        }
        if let Some(e) = &self.final_error {
            let _ = writeln!(
                s,
                "
final output error vs original: {}",
                e
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

impl std::fmt::Display for ErrorStat {
    /// `max-abs 1.234e-6, relative 5.678e-7`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max-abs {:.3e}, relative {:.3e}",
            self.max_abs, self.relative
        )
    }
}

fn ratio(before: u64, after: u64) -> String {
    if before == after || after == 0 {
        String::new()
    } else {
        format!(" ({:.1}×)", before as f64 / after as f64)
    }
}
