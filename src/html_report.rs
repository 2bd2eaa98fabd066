//! `optimize --report report.html`: the report as one self-contained page (no script, no file
//! or network fetch): the run's facts, the per-layer table (attention, what was done or why
//! not, rules fired, FLOPs and weight bytes before → after, errors), two bar charts drawn as
//! inline SVG (cost per layer before/after at the target length; each layer's error against the
//! budget, log scale), and one layer's graph before and after (`graph_svg`).

use std::fmt::Write;

use crate::graph_svg::escape;
use crate::inspect::si;
use crate::report::{LayerReport, Report};

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:24px;color:#111827;max-width:1400px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d1d5db;padding:4px 8px;\
text-align:left;vertical-align:top}th{background:#f3f4f6}td.num{text-align:right;\
font-variant-numeric:tabular-nums}.conv{color:#065f46;font-weight:600}.why{color:#6b7280}\
.graphs{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}.graphs figure{margin:0;\
overflow:auto;max-width:100%;border:1px solid #e5e7eb;padding:8px}h1{font-size:22px}\
h2{font-size:17px;margin-top:28px}dl{display:grid;grid-template-columns:max-content auto;\
gap:2px 16px}dt{color:#6b7280}dd{margin:0}";

/// The layer whose graph the page draws: the first converted one, else the first.
pub fn featured_layer(r: &Report) -> Option<u32> {
    r.layers
        .iter()
        .find(|l| !l.converted.is_empty())
        .or_else(|| r.layers.first())
        .map(|l| l.layer)
}

fn ratio(before: f64, after: f64) -> String {
    if before > 0.0 && after > 0.0 && (before - after).abs() > f64::EPSILON * before {
        format!(" ({:.2}×)", before / after)
    } else {
        String::new()
    }
}

fn what_was_done(l: &LayerReport) -> String {
    let mut s = String::new();
    if !l.converted.is_empty() {
        let _ = write!(
            s,
            "<span class=\"conv\">converted: {}</span>",
            escape(&l.converted.join(", "))
        );
    }
    if let Some(why) = &l.reason {
        if !s.is_empty() {
            s.push_str("<br>");
        }
        let _ = write!(s, "<span class=\"why\">{}</span>", escape(why));
    }
    if s.is_empty() {
        s.push_str("exact rules only");
    }
    s
}

/// Grouped bars: per layer, FLOPs before and after at the target length.
fn cost_chart(r: &Report) -> String {
    let rows: Vec<(u32, f64, f64)> = r
        .layers
        .iter()
        .filter_map(|l| {
            let c = l.costs.first()?;
            Some((l.layer, c.before.flops as f64, c.after.flops as f64))
        })
        .collect();
    let top = rows
        .iter()
        .map(|r| r.1.max(r.2))
        .fold(0.0, f64::max)
        .max(1.0);
    let (bar, group, h, left, bottom) = (14.0, 40.0, 180.0, 64.0, 24.0);
    let width = (left + rows.len() as f64 * group + 16.0).max(560.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="FLOPs per layer before and after" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="11">"#,
        h + bottom + 24.0
    );
    let _ = write!(
        s,
        r##"<text x="{left}" y="12">FLOPs per layer at N={} (grey: before, blue: after); top = {}</text>"##,
        r.target_seq,
        si(top)
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{:.0}" x2="{width:.0}" y2="{:.0}" stroke="#9ca3af"/>"##,
        h + 20.0,
        h + 20.0
    );
    for (i, (layer, before, after)) in rows.iter().enumerate() {
        let x = left + i as f64 * group;
        for (k, (v, color)) in [(before, "#9ca3af"), (after, "#2563eb")].iter().enumerate() {
            let bh = (*v / top * h).max(1.0);
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar}" height="{bh:.1}" fill="{color}"><title>layer {layer}: {}</title></rect>"#,
                x + k as f64 * bar,
                h + 20.0 - bh,
                si(**v)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{layer}</text>"#,
            x + bar,
            h + 36.0
        );
    }
    s.push_str("</svg>");
    s
}

/// Bars on a log scale: each layer's error (alone when measured, else in the final model)
/// against the budget line.
fn error_chart(r: &Report) -> Option<String> {
    let rows: Vec<(u32, f64)> = r
        .layers
        .iter()
        .filter_map(|l| {
            let alone = l
                .error_alone
                .values()
                .map(|e| e.final_output.relative)
                .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
            let e = alone.or_else(|| l.error.map(|e| e.layer_output.relative))?;
            Some((l.layer, e))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let (lo, hi) = (-9.0f64, 1.0f64);
    let scale = |v: f64| ((v.max(1e-12).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
    let (bar, group, h, left) = (18.0, 40.0, 160.0, 64.0);
    let width = (left + rows.len() as f64 * group + 16.0).max(560.0);
    let base = h + 20.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="error per layer against the budget" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="11">"#,
        base + 24.0
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="12">relative error of the final output, per layer converted alone (log scale, 1e-9 … 10)</text>"#
    );
    for e in [-8, -6, -4, -2, 0] {
        let y = base - scale(10f64.powi(e)) * h;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{width:.0}" y2="{y:.1}" stroke="#e5e7eb"/><text x="{:.0}" y="{:.1}" text-anchor="end">1e{e}</text>"##,
            left - 4.0,
            y + 4.0
        );
    }
    for (i, (layer, e)) in rows.iter().enumerate() {
        let x = left + i as f64 * group;
        let bh = (scale(*e) * h).max(1.0);
        let over = r.budget.is_some_and(|b| *e > b);
        let color = if over { "#dc2626" } else { "#059669" };
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="{bar}" height="{bh:.1}" fill="{color}"><title>layer {layer}: {e:.3e}</title></rect><text x="{:.1}" y="{:.0}" text-anchor="middle">{layer}</text>"#,
            base - bh,
            x + bar / 2.0,
            base + 16.0
        );
    }
    if let Some(b) = r.budget {
        let y = base - scale(b) * h;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{width:.0}" y2="{y:.1}" stroke="#dc2626" stroke-dasharray="4 3"/><text x="{width:.0}" y="{:.1}" text-anchor="end" fill="#dc2626">budget {b:e}</text>"##,
            y - 4.0
        );
    }
    s.push_str("</svg>");
    Some(s)
}

/// The page. `graphs`: the featured layer and its drawings before and after, when drawn.
pub fn render(r: &Report, graphs: Option<(u32, String, String)>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>attnopt report: {}</title><style>{STYLE}</style></head><body>",
        escape(&r.model)
    );
    let _ = write!(s, "<h1>attnopt optimisation report</h1><dl>");
    let allow = if r.allow.is_empty() {
        "none".into()
    } else {
        r.allow.join(", ")
    };
    let facts = [
        ("model", format!("{} ({})", r.model, r.architecture)),
        (
            "optimised for",
            format!("N = {} (rules: {})", r.target_seq, r.rules),
        ),
        ("approximations allowed", allow),
        (
            "budget",
            r.budget.map_or("none".into(), |b| format!("{b:e}")),
        ),
        (
            "calibration",
            r.calibration.clone().unwrap_or_else(|| "none".into()),
        ),
        (
            "final output error",
            r.final_error
                .map_or("not measured".into(), |e| e.to_string()),
        ),
        (
            "time",
            format!(
                "{:.1} ms, {} distinct block(s)",
                r.optimise_ms, r.distinct_blocks
            ),
        ),
    ];
    for (k, v) in facts {
        let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v));
    }
    s.push_str("</dl>");
    let _ = write!(
        s,
        "<h2>Layers</h2><table><thead><tr><th>layer</th><th>attention</th><th>done, or why not</th><th>rules fired</th><th>FLOPs at N={} before → after</th><th>weight bytes per token before → after</th><th>error (layer output / final output)</th></tr></thead><tbody>",
        r.target_seq
    );
    for l in &r.layers {
        let fired: Vec<String> = l
            .rules_fired
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        let flops = l.costs.first().map_or("–".into(), |c| {
            format!(
                "{} → {}{}",
                si(c.before.flops as f64),
                si(c.after.flops as f64),
                ratio(c.before.flops as f64, c.after.flops as f64)
            )
        });
        let weights = l.weights.map_or("–".into(), |w| {
            format!(
                "{}B → {}B{}",
                si(w.before as f64),
                si(w.after as f64),
                ratio(w.before as f64, w.after as f64)
            )
        });
        let error = l.error.map_or("–".into(), |e| {
            format!(
                "{:.2e} / {:.2e}",
                e.layer_output.relative, e.final_output.relative
            )
        });
        let _ = write!(
            s,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            l.layer,
            escape(&l.attention.to_string()),
            what_was_done(l),
            escape(&if fired.is_empty() { "none".into() } else { fired.join(", ") }),
            escape(&flops),
            escape(&weights),
            escape(&error)
        );
    }
    s.push_str("</tbody></table>");
    let _ = write!(s, "<h2>Cost per layer</h2>{}", cost_chart(r));
    if let Some(chart) = error_chart(r) {
        let _ = write!(s, "<h2>Error against the budget</h2>{chart}");
    }
    if let Some((layer, before, after)) = graphs {
        let _ = write!(
            s,
            "<h2>Layer {layer}, before and after</h2><div class=\"graphs\"><figure><figcaption>before</figcaption>{before}</figure><figure><figcaption>after</figcaption>{after}</figure></div>"
        );
    }
    for w in &r.warnings {
        let _ = write!(s, "<p class=\"why\">warning: {}</p>", escape(w));
    }
    s.push_str("</body></html>\n");
    s
}

/// The page for `r`, drawing its featured layer in `original` and in `optimised`.
pub fn page(original: &attnopt_ir::Graph, optimised: &attnopt_ir::Graph, r: &Report) -> String {
    let graphs = featured_layer(r).and_then(|l| {
        let before = crate::graph_svg::layer_svg(original, l, &format!("layer {l} before"))?;
        let after = crate::graph_svg::layer_svg(optimised, l, &format!("layer {l} after"))?;
        Some((l, before, after))
    });
    render(r, graphs)
}
