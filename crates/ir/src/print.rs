//! The stable text form of a graph: one line per node in topological order, diffable, used
//! by snapshots and written next to optimised models; [`crate::parse`] reads it back.
//!
//! ```text
//! %0 = input{name=x, dtype=f32, shape=[B, N, 4]} : [B, N, 4] f32 @- input
//! %1 = weight "wq" bf16 : [4, 2] f32 @- weight
//! %3 = matmul %0, %1 : [B, N, 2] f32 @L0 q_proj
//! output out = %3
//! ```
//!
//! Names: weight names are always quoted; input and output names are written bare when they
//! are plain (ASCII letters, digits, `_`, `.`, `-`), quoted otherwise. Inside quotes `"` and
//! `\` are backslash-escaped, and so are control characters (`\n`, `\r`, `\t`, `\u{1b}`), so
//! every line is one line and every name reads back exactly.

use std::collections::HashMap;
use std::fmt::{self, Write};

use crate::{Graph, Op};

/// Whether `name` can be written without quotes: non-empty ASCII letters, digits, `_`, `.`, `-`.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_plain_byte)
}

pub(crate) fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// `"name"` with `"`, `\` and control characters escaped.
pub(crate) fn write_quoted(f: &mut impl Write, name: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in name.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// `name` bare if it is plain, quoted otherwise.
pub(crate) fn write_name(f: &mut impl Write, name: &str) -> fmt::Result {
    if is_plain_name(name) {
        f.write_str(name)
    } else {
        write_quoted(f, name)
    }
}

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
                    line.push_str("weight ");
                    write_quoted(&mut line, w.name())?;
                    let _ = write!(line, " {}", w.dtype());
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
            f.write_str("output ")?;
            write_name(f, name)?;
            writeln!(f, " = %{}", number[id])?;
        }
        Ok(())
    }
}
