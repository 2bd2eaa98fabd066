//! The stable text form of a graph: one line per node in topological order, diffable, used
//! by snapshots and written next to optimised models.
//!
//! ```text
//! %3 = matmul %1, %2 : [B, N, 32] f32 @L0 q_proj
//! ```

use std::collections::HashMap;
use std::fmt::{self, Write};

use crate::{Graph, Op};

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = self.topo_order();
        let number: HashMap<_, _> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        for &n in &order {
            let node = self.node(n);
            let mut line = format!("%{} = ", number[&n]);
            match &node.op {
                Op::Weight(w) => {
                    let w = self.weight_data(*w);
                    let _ = write!(line, "weight \"{}\" {}", w.name(), w.dtype());
                }
                op => {
                    let _ = write!(line, "{op}");
                }
            }
            let operands: Vec<String> = self
                .operands(n)
                .iter()
                .map(|o| format!("%{}", number[o]))
                .collect();
            if !operands.is_empty() {
                let _ = write!(line, " {}", operands.join(", "));
            }
            writeln!(
                f,
                "{line} : {} {} {}",
                node.ty.shape, node.ty.dtype, node.meta
            )?;
        }
        for (name, id) in self.outputs() {
            writeln!(f, "output {name} = %{}", number[id])?;
        }
        Ok(())
    }
}
