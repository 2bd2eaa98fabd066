//! Reads the text form (see `print.rs`) back into a [`Graph`], so an optimised model can be
//! saved as text next to its checkpoint and loaded again.
//!
//! The text comes from a file in a model folder, so nothing here trusts it: every line is
//! checked, every node is rebuilt through [`Graph::add`] / [`Graph::input`] /
//! [`Graph::weight`] (so its type is inferred again and must equal the printed one), and every
//! problem is a [`ParseError`] naming the line. The parser never panics.
//!
//! Grammar, one item per line (spaces between tokens are optional where the printer puts one,
//! blank lines are skipped):
//!
//! ```text
//! node    := '%' N '=' op operands? ':' shape dtype meta
//! op      := 'weight' QUOTED dtype | NAME ('{' attributes '}')?
//! operands:= '%' N (',' '%' N)*
//! meta    := '@L' N role | '@-' role
//! output  := 'output' name '=' '%' N
//! name    := QUOTED | [A-Za-z0-9_.-]+
//! ```

use std::collections::HashMap;

use crate::print::{is_plain_byte, write_quoted};
use crate::{
    DType, Dim, Graph, GraphError, NodeId, NodeMeta, Op, Role, RopeStyle, Scalar, Shape, Sym,
    Weight,
};

/// A line of the text form that could not be read, or a graph the lines do not make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    /// 1-based; one past the last line for problems of the whole text (no nodes, no outputs).
    pub line: usize,
    pub msg: String,
}

/// Parses the text form written by `Display for Graph`. Weight lines (`weight "NAME" DTYPE`) are
/// resolved by `resolve(name)`, which returns the `Weight` (its dtype and shape must agree with
/// the line: dtype as printed, shape as after the colon); every other node is rebuilt with
/// `Graph::add` (so types are re-inferred and must equal the printed type), inputs with
/// `Graph::input`, outputs with `Graph::set_output`.
///
/// Node numbers must be unique and every operand must be defined on an earlier line; they need
/// not be consecutive. A graph needs at least one node and one output.
pub fn parse_graph(
    text: &str,
    resolve: &mut dyn FnMut(&str) -> Result<Weight, String>,
) -> Result<Graph, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    // Where each `%n` is (first) defined, to tell a forward reference from an undefined one.
    let mut defined_at = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        let mut c = Cursor::new(l);
        if c.eat("%") {
            if let Ok(n) = c.uint("") {
                defined_at.entry(n).or_insert(i + 1);
            }
        }
    }
    let mut p = Parser {
        g: Graph::new(),
        resolve,
        nodes: HashMap::new(),
        defined_at,
        weights: HashMap::new(),
        outputs: 0,
    };
    for (i, l) in lines.iter().enumerate() {
        let line = i + 1;
        p.line(l, line).map_err(|msg| ParseError { line, msg })?;
    }
    let end = lines.len() + 1;
    if p.nodes.is_empty() {
        return Err(ParseError {
            line: end,
            msg: "end of text: the graph has no nodes (`%0 = ...` lines)".into(),
        });
    }
    if p.outputs == 0 {
        return Err(ParseError {
            line: end,
            msg: "end of text: the graph has no outputs (`output NAME = %n` lines)".into(),
        });
    }
    Ok(p.g)
}

struct Parser<'r> {
    g: Graph,
    resolve: &'r mut dyn FnMut(&str) -> Result<Weight, String>,
    /// `%n` → node and the line defining it.
    nodes: HashMap<usize, (NodeId, usize)>,
    /// `%n` → the first line whose text defines it (from a pre-pass).
    defined_at: HashMap<usize, usize>,
    /// Weight name → the line that loaded it.
    weights: HashMap<String, usize>,
    outputs: usize,
}

impl Parser<'_> {
    fn line(&mut self, text: &str, line: usize) -> Result<(), String> {
        let mut c = Cursor::new(text);
        if c.at_end() {
            return Ok(());
        }
        if c.eat("%") {
            self.node(&mut c, line)
        } else if c.eat_word("output") {
            self.output(&mut c, line)
        } else {
            Err(format!(
                "expected a node (`%n = ...`) or an output (`output NAME = %n`), found {}",
                c.found()
            ))
        }
    }

    /// The node `%n` names, as seen from `line`.
    fn lookup(&self, n: usize, line: usize) -> Result<NodeId, String> {
        if let Some(&(id, _)) = self.nodes.get(&n) {
            return Ok(id);
        }
        Err(match self.defined_at.get(&n) {
            Some(&l) if l == line => format!("`%{n}` is used in its own definition"),
            Some(&l) if l > line => {
                format!("`%{n}` is used before its definition on line {l}")
            }
            _ => format!("`%{n}` is not defined"),
        })
    }

    fn output(&mut self, c: &mut Cursor, line: usize) -> Result<(), String> {
        let name = c.name("an output name")?;
        c.expect("=")?;
        c.expect("%")?;
        let n = c.uint("a node number")?;
        c.end()?;
        let id = self.lookup(n, line)?;
        self.g.set_output(&name, id).map_err(graph_err)?;
        self.outputs += 1;
        Ok(())
    }

    fn node(&mut self, c: &mut Cursor, line: usize) -> Result<(), String> {
        let n = c.uint("a node number after `%`")?;
        if let Some(&(_, l)) = self.nodes.get(&n) {
            return Err(format!("`%{n}` is already defined on line {l}"));
        }
        c.expect("=")?;
        let name = c.word();
        if name.is_empty() {
            return Err(format!("expected an operator name, found {}", c.found()));
        }
        let id = if name == "weight" {
            self.weight(c, line)?
        } else {
            let op = parse_op(c, name).map_err(|e| format!("`{name}`: {e}"))?;
            let leaf = op.arity() == Some(0);
            if leaf && c.peek("%") {
                return Err(format!("`{name}` takes no operands"));
            }
            let mut operands = Vec::new();
            if !leaf && !c.peek("%") {
                return Err(match op.arity() {
                    Some(k) => format!("`{name}` takes {k} operand{}, got 0", plural(k)),
                    None => format!("`{name}` takes at least one operand, got 0"),
                });
            }
            if !leaf {
                loop {
                    c.expect("%")?;
                    let o = c.uint("an operand number after `%`")?;
                    operands.push(self.lookup(o, line)?);
                    if !c.eat(",") {
                        break;
                    }
                }
            }
            let (shape, dtype, meta) = type_and_meta(c)?;
            match op.arity() {
                Some(k) if k != operands.len() => {
                    return Err(format!(
                        "`{name}` takes {k} operand{}, got {}",
                        plural(k),
                        operands.len()
                    ))
                }
                _ => {}
            }
            let id = match op {
                Op::Input {
                    name,
                    dtype: d,
                    shape: s,
                } => {
                    if d != d.compute() {
                        return Err(format!("an input is f32 or i64, not {d}"));
                    }
                    leaf_meta(meta, Role::Input)?;
                    self.g.input(&name, d, s).map_err(graph_err)?
                }
                op => self.g.add(op, &operands, meta).map_err(graph_err)?,
            };
            check_type(&self.g, id, &shape, dtype)?;
            id
        };
        self.nodes.insert(n, (id, line));
        Ok(())
    }

    /// The rest of `weight "NAME" DTYPE : SHAPE DTYPE @- weight`.
    fn weight(&mut self, c: &mut Cursor, line: usize) -> Result<NodeId, String> {
        let name = c.quoted("the weight name")?;
        let stored = c.dtype()?;
        if c.peek("%") {
            return Err("`weight` takes no operands".into());
        }
        let (shape, dtype, meta) = type_and_meta(c)?;
        leaf_meta(meta, Role::Weight)?;
        let q = quote(&name);
        if let Some(l) = self.weights.get(&name) {
            return Err(format!("weight {q} is already loaded on line {l}"));
        }
        let w = (self.resolve)(&name).map_err(|e| format!("weight {q}: {e}"))?;
        if w.name() != name {
            return Err(format!(
                "weight {q}: the checkpoint returned a weight named {}",
                quote(w.name())
            ));
        }
        if w.dtype() != stored {
            return Err(format!(
                "weight {q} is {} in the checkpoint, the line says {stored}",
                w.dtype()
            ));
        }
        let have = Shape::fixed(w.shape());
        if have != shape {
            return Err(format!(
                "weight {q} has shape {have} in the checkpoint, the line says {shape}"
            ));
        }
        let id = self.g.weight(w);
        check_type(&self.g, id, &shape, dtype)?;
        self.weights.insert(name, line);
        Ok(id)
    }
}

fn plural(k: usize) -> &'static str {
    if k == 1 {
        ""
    } else {
        "s"
    }
}

fn quote(name: &str) -> String {
    let mut s = String::new();
    let _ = write_quoted(&mut s, name);
    s
}

fn graph_err(e: GraphError) -> String {
    match e {
        // The meta is on the line already; the shape error names the operator and operands.
        GraphError::Shape { source, .. } => source.to_string(),
        e => e.to_string(),
    }
}

/// Inputs and weights always carry `@- input` / `@- weight` (the graph sets it).
fn leaf_meta(meta: NodeMeta, role: Role) -> Result<(), String> {
    let want = NodeMeta { layer: None, role };
    if meta != want {
        return Err(format!(
            "{role} nodes are always `{want}`, the line says `{meta}`"
        ));
    }
    Ok(())
}

fn check_type(g: &Graph, id: NodeId, shape: &Shape, dtype: DType) -> Result<(), String> {
    let ty = &g.node(id).ty;
    if ty.shape != *shape || ty.dtype != dtype {
        return Err(format!(
            "the line says the type is `{shape} {dtype}`, but it is `{} {}`",
            ty.shape, ty.dtype
        ));
    }
    Ok(())
}

/// `: SHAPE DTYPE META` and the end of the line.
fn type_and_meta(c: &mut Cursor) -> Result<(Shape, DType, NodeMeta), String> {
    c.expect(":")?;
    let shape = c.shape()?;
    let dtype = c.dtype()?;
    let meta = c.meta()?;
    c.end()?;
    Ok((shape, dtype, meta))
}

/// An operator and its `{attributes}`, from its name.
fn parse_op(c: &mut Cursor, name: &str) -> Result<Op, String> {
    let kind = Op::from_name(name).ok_or_else(|| "unknown operator".to_string())?;
    // Display writes `{...}` exactly for the operators that have attributes.
    if kind.to_string() == kind.name() {
        if c.peek("{") {
            return Err("takes no attributes".into());
        }
        return Ok(kind);
    }
    if !c.eat("{") {
        return Err(format!(
            "expected attributes `{{...}}`, found {}",
            c.found()
        ));
    }
    // Exhaustive on purpose: a new operator must say how its attributes read.
    let op = match kind {
        Op::Input { .. } => {
            c.key("name")?;
            let name = c.name("an input name")?;
            c.expect(",")?;
            c.key("dtype")?;
            let dtype = c.dtype()?;
            c.expect(",")?;
            c.key("shape")?;
            let shape = c.shape()?;
            Op::Input { name, dtype, shape }
        }
        Op::Weight(_) => return Err("weights are written `weight \"NAME\" DTYPE`".into()),
        Op::Scale(_) => Op::Scale(c.float()?),
        Op::AddScalar(_) => Op::AddScalar(c.float()?),
        Op::Permute(_) => {
            c.key("perm")?;
            Op::Permute(c.uint_list()?)
        }
        Op::Reshape(_) => {
            c.key("shape")?;
            Op::Reshape(c.shape()?)
        }
        Op::Expand(_) => {
            c.key("shape")?;
            Op::Expand(c.shape()?)
        }
        Op::SplitHeads { .. } => Op::SplitHeads {
            heads: c.uint_attr("heads")?,
        },
        Op::RepeatHeads { .. } => Op::RepeatHeads {
            times: c.uint_attr("times")?,
        },
        Op::Softmax { .. } => Op::Softmax {
            axis: c.uint_attr("axis")?,
        },
        Op::CumSum { .. } => Op::CumSum {
            axis: c.uint_attr("axis")?,
        },
        Op::Unsqueeze { .. } => Op::Unsqueeze {
            axis: c.uint_attr("axis")?,
        },
        Op::Squeeze { .. } => Op::Squeeze {
            axis: c.uint_attr("axis")?,
        },
        Op::Concat { .. } => Op::Concat {
            axis: c.uint_attr("axis")?,
        },
        Op::Reduce { kind, .. } => {
            let axis = c.uint_attr("axis")?;
            c.expect(",")?;
            c.key("keep_dim")?;
            let keep_dim = match c.word() {
                "true" => true,
                "false" => false,
                w => return Err(format!("keep_dim is `true` or `false`, not `{w}`")),
            };
            Op::Reduce {
                kind,
                axis,
                keep_dim,
            }
        }
        Op::L2Normalize { .. } => {
            let axis = c.uint_attr("axis")?;
            c.expect(",")?;
            c.key("eps")?;
            Op::L2Normalize {
                axis,
                eps: c.float()?,
            }
        }
        Op::LayerNorm { .. } => {
            c.key("eps")?;
            Op::LayerNorm { eps: c.float()? }
        }
        Op::RmsNorm { .. } => {
            c.key("eps")?;
            Op::RmsNorm { eps: c.float()? }
        }
        Op::Rope { .. } => {
            c.key("theta")?;
            let theta = c.float()?;
            c.expect(",")?;
            c.key("style")?;
            let w = c.word();
            let style = RopeStyle::ALL
                .into_iter()
                .find(|s| format!("{s:?}") == w)
                .ok_or_else(|| format!("unknown rope style `{w}` (Half or Interleaved)"))?;
            Op::Rope { theta, style }
        }
        Op::Cast(_) => {
            c.key("dtype")?;
            Op::Cast(c.dtype()?)
        }
        Op::Slice { .. } => {
            let axis = c.uint_attr("axis")?;
            c.expect(",")?;
            let start = c.uint_attr("start")?;
            c.expect(",")?;
            c.key("end")?;
            Op::Slice {
                axis,
                start,
                end: c.dim()?,
            }
        }
        Op::ConvWindows { .. } => {
            let length = c.uint_attr("length")?;
            c.expect(",")?;
            Op::ConvWindows {
                length,
                width: c.uint_attr("width")?,
            }
        }
        Op::BlockOneHot { .. } => Op::BlockOneHot {
            block: c.uint_attr("block")?,
        },
        Op::Unary(_)
        | Op::Binary(_)
        | Op::MatMul
        | Op::MergeHeads
        | Op::CausalMask
        | Op::Tril
        | Op::PaddingMask
        | Op::Gather => kind,
    };
    c.expect("}")?;
    Ok(op)
}

/// A position in one line. Every token reader skips the spaces before it.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Cursor<'a> {
        Cursor { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start_matches([' ', '\t', '\r']).len();
    }

    fn at_end(&mut self) -> bool {
        self.ws();
        self.pos == self.s.len()
    }

    /// What comes next, for messages: at most 24 characters, escaped, so a message never
    /// carries more of a file than that (a graph path can be a symlink to anything).
    fn found(&self) -> String {
        let r = self.rest().trim_start();
        if r.is_empty() {
            return "the end of the line".into();
        }
        let head: String = r.chars().take(24).flat_map(char::escape_debug).collect();
        if r.chars().count() > 24 {
            format!("`{head}…`")
        } else {
            format!("`{head}`")
        }
    }

    fn peek(&mut self, tok: &str) -> bool {
        self.ws();
        self.rest().starts_with(tok)
    }

    fn eat(&mut self, tok: &str) -> bool {
        if self.peek(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Result<(), String> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(format!("expected `{tok}`, found {}", self.found()))
        }
    }

    fn end(&mut self) -> Result<(), String> {
        if self.at_end() {
            Ok(())
        } else {
            Err(format!(
                "unexpected {} at the end of the line",
                self.found()
            ))
        }
    }

    /// The longest run of bytes satisfying `f` (ASCII only, so `pos` stays on a char boundary).
    fn take(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        self.ws();
        let r = self.rest();
        let n = r.bytes().take_while(|&b| b.is_ascii() && f(b)).count();
        self.pos += n;
        &r[..n]
    }

    /// `[A-Za-z0-9_]*`.
    fn word(&mut self) -> &'a str {
        self.take(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    /// Consumes `w` if it is the next whole word.
    fn eat_word(&mut self, w: &str) -> bool {
        let save = self.pos;
        if self.word() == w {
            return true;
        }
        self.pos = save;
        false
    }

    /// `key=`.
    fn key(&mut self, key: &str) -> Result<(), String> {
        let save = self.pos;
        if self.word() != key {
            self.pos = save;
            return Err(format!("expected `{key}=`, found {}", self.found()));
        }
        self.expect("=")
    }

    fn uint(&mut self, what: &str) -> Result<usize, String> {
        let digits = self.take(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err(format!("expected {what}, found {}", self.found()));
        }
        digits
            .parse()
            .map_err(|_| format!("number `{digits}` is too large"))
    }

    /// `key=N`.
    fn uint_attr(&mut self, key: &str) -> Result<usize, String> {
        self.key(key)?;
        self.uint(&format!("a number for `{key}`"))
    }

    /// `[N, N, ...]`.
    fn uint_list(&mut self) -> Result<Vec<usize>, String> {
        self.expect("[")?;
        let mut v = Vec::new();
        if self.eat("]") {
            return Ok(v);
        }
        loop {
            v.push(self.uint("a number")?);
            if !self.eat(",") {
                break;
            }
        }
        self.expect("]")?;
        Ok(v)
    }

    /// An `f32` as `{:?}` writes it (`0.125`, `1e-12`, `-inf`, `NaN`).
    fn float(&mut self) -> Result<Scalar, String> {
        let tok = self.take(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'));
        if tok.is_empty() {
            return Err(format!("expected a number, found {}", self.found()));
        }
        let x: f32 = tok.parse().map_err(|_| format!("bad number `{tok}`"))?;
        if x.is_infinite() && !tok.to_ascii_lowercase().contains("inf") {
            return Err(format!("number `{tok}` is out of range for f32"));
        }
        Ok(Scalar::new(x))
    }

    /// A dtype as the text form writes it (`f32`, `bf16`, ...).
    fn dtype(&mut self) -> Result<DType, String> {
        let w = self.word();
        if w.is_empty() {
            return Err(format!("expected a dtype, found {}", self.found()));
        }
        DType::from_name(&w.to_ascii_uppercase())
            .filter(|d| d.to_string() == w)
            .ok_or_else(|| format!("unknown dtype `{w}`"))
    }

    /// `B`, `N` or a number.
    fn dim(&mut self) -> Result<Dim, String> {
        if self.peek_digit() {
            return Ok(Dim::Fixed(self.uint("a dimension")?));
        }
        let w = self.word();
        Sym::from_name(w).map(Dim::Sym).ok_or_else(|| {
            if w.is_empty() {
                format!(
                    "expected a dimension (a number, `B` or `N`), found {}",
                    self.found()
                )
            } else {
                format!("unknown dimension `{w}` (a number, `B` or `N`)")
            }
        })
    }

    fn peek_digit(&mut self) -> bool {
        self.ws();
        self.rest()
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit())
    }

    /// `[d, d, ...]`.
    fn shape(&mut self) -> Result<Shape, String> {
        self.expect("[")?;
        let mut v = Vec::new();
        if self.eat("]") {
            return Ok(Shape(v));
        }
        loop {
            v.push(self.dim()?);
            if !self.eat(",") {
                break;
            }
        }
        self.expect("]")?;
        Ok(Shape(v))
    }

    /// `@L3 role` or `@- role`.
    fn meta(&mut self) -> Result<NodeMeta, String> {
        self.expect("@")?;
        let layer = if self.rest().starts_with('-') {
            self.pos += 1;
            None
        } else if self.rest().starts_with('L') {
            self.pos += 1;
            let n = self.uint("a layer number after `@L`")?;
            Some(u32::try_from(n).map_err(|_| format!("layer number `{n}` is too large"))?)
        } else {
            return Err(format!(
                "expected `@L<layer>` or `@-`, found {}",
                self.found()
            ));
        };
        let w = self.word();
        if w.is_empty() {
            return Err(format!("expected a role, found {}", self.found()));
        }
        let role = Role::from_name(w).ok_or_else(|| format!("unknown role `{w}`"))?;
        Ok(NodeMeta { layer, role })
    }

    /// A quoted string with `\"`, `\\`, `\n`, `\r`, `\t`, `\0` and `\u{..}` escapes.
    fn quoted(&mut self, what: &str) -> Result<String, String> {
        if !self.eat("\"") {
            return Err(format!("expected {what} in quotes, found {}", self.found()));
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        let unterminated = || "unterminated string: no closing `\"`".to_string();
        loop {
            let (i, ch) = chars.next().ok_or_else(unterminated)?;
            match ch {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => {
                    let (_, e) = chars.next().ok_or_else(unterminated)?;
                    out.push(match e {
                        '"' => '"',
                        '\\' => '\\',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        '0' => '\0',
                        'u' => {
                            let bad = || "bad `\\u{...}` escape".to_string();
                            if chars.next().map(|(_, c)| c) != Some('{') {
                                return Err(bad());
                            }
                            let mut hex = String::new();
                            loop {
                                match chars.next().ok_or_else(bad)?.1 {
                                    '}' => break,
                                    h if h.is_ascii_hexdigit() && hex.len() < 6 => hex.push(h),
                                    _ => return Err(bad()),
                                }
                            }
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(bad)?
                        }
                        e => return Err(format!("unknown escape `\\{e}` in a quoted name")),
                    });
                }
                c => out.push(c),
            }
        }
    }

    /// An input or output name: quoted, or bare (`[A-Za-z0-9_.-]+`).
    fn name(&mut self, what: &str) -> Result<String, String> {
        if self.peek("\"") {
            return self.quoted(what);
        }
        let w = self.take(is_plain_byte);
        if w.is_empty() {
            return Err(format!("expected {what}, found {}", self.found()));
        }
        Ok(w.to_string())
    }
}
