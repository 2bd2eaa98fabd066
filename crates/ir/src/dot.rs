//! Graphviz DOT export: one box per operator, clustered by transformer layer.

use std::fmt::Write;

use crate::{Graph, Op};

/// The graph in DOT. Weights are drawn small and grey; each layer is a cluster.
pub fn to_dot(g: &Graph) -> String {
    let mut s = String::from("digraph attnopt {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
    let order = g.topo_order();
    let mut layers: std::collections::BTreeMap<Option<u32>, Vec<String>> = Default::default();
    for &n in &order {
        let node = g.node(n);
        let label = match &node.op {
            Op::Weight(w) => format!("{}\\n{}", escape(g.weight_data(*w).name()), node.ty.shape),
            Op::Input { name, .. } => format!("input {}\\n{}", escape(name), node.ty.shape),
            op => format!(
                "{}\\n{} {}\\n{}",
                escape(&op.to_string()),
                node.meta.role,
                node.ty.shape,
                node.ty.dtype
            ),
        };
        let style = match node.op {
            Op::Weight(_) => ", style=filled, fillcolor=\"#eeeeee\", fontsize=8",
            Op::Input { .. } => ", shape=ellipse",
            _ => "",
        };
        layers
            .entry(node.meta.layer)
            .or_default()
            .push(format!("n{} [label=\"{label}\"{style}];", n.index()));
    }
    for (layer, lines) in layers {
        match layer {
            Some(l) => {
                let _ = writeln!(s, "  subgraph cluster_layer{l} {{\n    label=\"layer {l}\";\n    color=\"#8888cc\";");
                for line in lines {
                    let _ = writeln!(s, "    {line}");
                }
                s.push_str("  }\n");
            }
            None => {
                for line in lines {
                    let _ = writeln!(s, "  {line}");
                }
            }
        }
    }
    for &n in &order {
        for (i, o) in g.operands(n).into_iter().enumerate() {
            let _ = writeln!(
                s,
                "  n{} -> n{} [label=\"{i}\", fontsize=8];",
                o.index(),
                n.index()
            );
        }
    }
    for (name, id) in g.outputs() {
        let _ = writeln!(
            s,
            "  out_{0} [label=\"output {1}\", shape=ellipse];\n  n{2} -> out_{0};",
            sanitize(name),
            escape(name),
            id.index()
        );
    }
    s.push_str("}\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
