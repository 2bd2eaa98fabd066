//! One layer of a graph drawn as SVG by attnopt itself (no graphviz): a layered drawing, top to
//! bottom. Each node's rank is its longest path from the layer's sources (values from outside
//! the layer, drawn as small grey boxes, and weights); within a rank nodes are ordered by the
//! mean position of their operands (one barycentre pass per rank), then centred. Edges are
//! curves from an operand's bottom to its user's top. Colours follow the node's role.

use std::collections::HashMap;
use std::fmt::Write;

use attnopt_ir::{Graph, NodeId, Op, Role};

/// Vertical distance between ranks, box height, horizontal gap, pixels per label character.
const RANK_H: f64 = 64.0;
const BOX_H: f64 = 26.0;
const GAP: f64 = 14.0;
const CHAR_W: f64 = 6.6;
const MARGIN: f64 = 12.0;

/// XML-escaped text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A node's label: the operator with its attributes, shortened.
fn label(g: &Graph, n: NodeId) -> String {
    let node = g.node(n);
    let text = match &node.op {
        Op::Weight(w) => {
            let name = g.weight_data(*w).name().to_string();
            let short = name.rsplit('.').take(2).collect::<Vec<_>>();
            format!(
                "w {}",
                short.into_iter().rev().collect::<Vec<_>>().join(".")
            )
        }
        Op::Input { name, .. } => format!("input {name}"),
        op => op.to_string(),
    };
    if text.chars().count() > 34 {
        let cut: String = text.chars().take(32).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn fill(role: Role, outside: bool) -> &'static str {
    if outside {
        return "#e5e7eb";
    }
    match role {
        Role::QkvProj | Role::QProj | Role::KProj | Role::VProj | Role::AttnOutProj => "#bfdbfe",
        Role::AttnScores | Role::AttnMask | Role::AttnProbs | Role::AttnContext => "#fde68a",
        Role::MlpUp | Role::MlpGate | Role::MlpAct | Role::MlpDown => "#bbf7d0",
        Role::Norm | Role::FinalNorm => "#e9d5ff",
        Role::Residual => "#fecaca",
        Role::Weight => "#f3f4f6",
        _ => "#f5f5f4",
    }
}

/// Layer `layer` of `g` as an SVG element (`None` when the layer has no nodes). `title` goes
/// into the drawing's accessible name.
pub fn layer_svg(g: &Graph, layer: u32, title: &str) -> Option<String> {
    let order = g.topo_order();
    let inside: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|&n| g.node(n).meta.layer == Some(layer) && !matches!(g.node(n).op, Op::Weight(_)))
        .collect();
    if inside.is_empty() {
        return None;
    }
    let in_set: std::collections::HashSet<NodeId> = inside.iter().copied().collect();
    // Sources: operands from outside the layer (weights included), in first-use order.
    let mut nodes: Vec<NodeId> = Vec::new();
    let mut outside: std::collections::HashSet<NodeId> = Default::default();
    for &n in &inside {
        for o in g.operands(n) {
            if !in_set.contains(&o) && outside.insert(o) {
                nodes.push(o);
            }
        }
    }
    nodes.extend(&inside);
    let mut rank: HashMap<NodeId, usize> = HashMap::new();
    for &n in &nodes {
        let r = if outside.contains(&n) {
            0
        } else {
            g.operands(n)
                .iter()
                .map(|o| rank.get(o).map_or(0, |r| r + 1))
                .max()
                .unwrap_or(0)
        };
        rank.insert(n, r);
    }
    // Then as late as possible: a node whose users are all drawn sits just above the first of
    // them (weights and their views next to the product that reads them, not at the top).
    let drawn: std::collections::HashSet<NodeId> = nodes.iter().copied().collect();
    for &n in nodes.iter().rev() {
        let users: Vec<usize> = g
            .users(n)
            .into_iter()
            .filter(|u| drawn.contains(u))
            .map(|u| rank[&u])
            .collect();
        if let Some(&first) = users.iter().min() {
            if first > rank[&n] + 1 {
                rank.insert(n, first - 1);
            }
        }
    }
    let ranks = rank.values().copied().max().unwrap_or(0) + 1;
    let mut rows: Vec<Vec<NodeId>> = vec![vec![]; ranks];
    for &n in &nodes {
        rows[rank[&n]].push(n);
    }
    let labels: HashMap<NodeId, String> = nodes.iter().map(|&n| (n, label(g, n))).collect();
    let width = |n: NodeId| labels[&n].chars().count() as f64 * CHAR_W + 16.0;
    // x centre of every node; rows laid out in order, barycentre of the operands placed above.
    let mut x: HashMap<NodeId, f64> = HashMap::new();
    let mut widest: f64 = 0.0;
    for row in &mut rows {
        let key = |n: &NodeId| {
            let ops: Vec<f64> = g
                .operands(*n)
                .iter()
                .filter_map(|o| x.get(o))
                .copied()
                .collect();
            if ops.is_empty() {
                f64::MAX
            } else {
                ops.iter().sum::<f64>() / ops.len() as f64
            }
        };
        let mut keyed: Vec<(f64, NodeId)> = row.iter().map(|n| (key(n), *n)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        *row = keyed.into_iter().map(|(_, n)| n).collect();
        let mut at = MARGIN;
        for &n in row.iter() {
            x.insert(n, at + width(n) / 2.0);
            at += width(n) + GAP;
        }
        widest = widest.max(at);
    }
    // Centre every row on the widest.
    for row in &rows {
        let Some(&last) = row.last() else { continue };
        let used = x[&last] + width(last) / 2.0 + GAP;
        let shift = (widest - used) / 2.0;
        for &n in row {
            *x.get_mut(&n).expect("placed") += shift;
        }
    }
    let y = |n: NodeId| MARGIN + rank[&n] as f64 * RANK_H;
    let height = MARGIN * 2.0 + (ranks - 1) as f64 * RANK_H + BOX_H;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{}" width="{:.0}" height="{:.0}" viewBox="0 0 {:.0} {:.0}" font-family="monospace" font-size="11">"#,
        escape(title),
        widest,
        height,
        widest,
        height
    );
    for &n in &inside {
        for o in g.operands(n) {
            let (x1, y1) = (x[&o], y(o) + BOX_H);
            let (x2, y2) = (x[&n], y(n));
            let mid = (y1 + y2) / 2.0;
            let _ = write!(
                s,
                r##"<path d="M{x1:.1},{y1:.1} C{x1:.1},{mid:.1} {x2:.1},{mid:.1} {x2:.1},{y2:.1}" fill="none" stroke="#6b7280" stroke-width="1"/>"##
            );
        }
    }
    for &n in &nodes {
        let w = width(n);
        let (cx, top) = (x[&n], y(n));
        let out = outside.contains(&n);
        let _ = write!(
            s,
            r##"<g><title>{}</title><rect x="{:.1}" y="{top:.1}" width="{w:.1}" height="{BOX_H}" rx="5" fill="{}" stroke="#374151" stroke-width="{}"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text></g>"##,
            escape(&format!("%{} {}", n.index(), g.node(n).op)),
            cx - w / 2.0,
            fill(g.node(n).meta.role, out),
            if out { "0.5" } else { "1" },
            top + BOX_H / 2.0 + 4.0,
            escape(&labels[&n]),
        );
    }
    s.push_str("</svg>");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_node_and_edge_of_a_layer() {
        let m = crate::Model::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bert"),
        )
        .unwrap();
        let g = m.graph();
        let svg = layer_svg(g, 0, "layer 0 <before>").unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("aria-label=\"layer 0 &lt;before&gt;\""));
        let inside = g
            .topo_order()
            .into_iter()
            .filter(|&n| g.node(n).meta.layer == Some(0) && !matches!(g.node(n).op, Op::Weight(_)))
            .count();
        let edges: usize = g
            .topo_order()
            .into_iter()
            .filter(|&n| g.node(n).meta.layer == Some(0) && !matches!(g.node(n).op, Op::Weight(_)))
            .map(|n| g.operands(n).len())
            .sum();
        assert!(
            svg.matches("<rect").count() > inside,
            "sources are drawn too"
        );
        assert_eq!(svg.matches("<path").count(), edges);
        assert!(
            svg.contains(">softmax{axis=3}<") || svg.contains(">softmax"),
            "{svg}"
        );
        assert!(layer_svg(g, 99, "none").is_none());
    }
}
