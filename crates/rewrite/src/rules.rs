//! Rule files: rewrite rules as data (`rules/*.rules`), parsed at run time with `file:line`
//! errors, plus the rules whose matching needs code ([`crate::code_rules`]), referenced by name.
//!
//! ```text
//! # comment
//! exact cancel-merge-split: (merge_heads (split_heads ?h ?x)) => ?x
//! exact fold-scale: (matmul (scale ?s ?a) ?b) => (scale ?s (matmul ?a ?b))
//!     if not_weight_only(?a)
//! exact qkv-fusion: code
//! approx hydra: (...) => (...)
//! ```
//! A line starting with whitespace continues the rule above it. The format is described for
//! rule writers in rules/README.md.
//!
//! The parser never runs a rule: it turns text into rules, and refuses duplicates and unknown
//! names with the `file:line` at fault.

use std::path::Path;

use egg::{Pattern, Rewrite};

use crate::analysis::TypeAnalysis;
use crate::checked::Checked;
use crate::condition::Condition;
use crate::lang::TensorLang;

/// Exact rules are identities; approximate ones change the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Exact,
    Approx,
}

/// How a rule matches and applies.
pub enum Body {
    /// A pattern pair with conditions.
    Pattern {
        lhs: Pattern<TensorLang>,
        rhs: Checked,
    },
    /// A rule implemented in Rust (`crate::code_rules`).
    Code,
}

/// One rule, with where it came from.
pub struct Rule {
    pub name: String,
    pub kind: Kind,
    /// `file:line`.
    pub origin: String,
    pub body: Body,
}

impl Rule {
    /// The egg rewrite of a pattern rule (`None` for code rules).
    pub fn rewrite(&self) -> Option<Rewrite<TensorLang, TypeAnalysis>> {
        match &self.body {
            Body::Pattern { lhs, rhs } => {
                Rewrite::new(self.name.as_str(), lhs.clone(), rhs.clone()).ok()
            }
            Body::Code => None,
        }
    }
}

/// A malformed rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

/// All loaded rules.
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

/// The rule files compiled into the binary, for users without a `rules/` folder.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "rules/cleanup.rules",
        include_str!("../../../rules/cleanup.rules"),
    ),
    (
        "rules/fusion.rules",
        include_str!("../../../rules/fusion.rules"),
    ),
    (
        "rules/attention.rules",
        include_str!("../../../rules/attention.rules"),
    ),
    (
        "rules/hydra.rules",
        include_str!("../../../rules/hydra.rules"),
    ),
];

impl RuleSet {
    /// The embedded rule files.
    pub fn embedded() -> Result<RuleSet, RuleError> {
        RuleSet::from_texts(
            EMBEDDED
                .iter()
                .map(|&(f, t)| (f.to_string(), t.to_string())),
        )
    }

    /// Every `*.rules` file in `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleError> {
        let err = |msg: String| RuleError {
            file: dir.display().to_string(),
            line: 0,
            msg,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rules") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(err("no *.rules files".into()));
        }
        let mut texts = Vec::new();
        for f in files {
            let name = f.display().to_string();
            let len = f.metadata().map_err(|e| err(e.to_string()))?.len();
            if len > 1 << 20 {
                return Err(RuleError {
                    file: name,
                    line: 0,
                    msg: format!("{len} bytes is too large for a rule file"),
                });
            }
            let text = std::fs::read_to_string(&f).map_err(|e| RuleError {
                file: name.clone(),
                line: 0,
                msg: e.to_string(),
            })?;
            texts.push((name, text));
        }
        RuleSet::from_texts(texts)
    }

    /// Parses `(file name, text)` pairs; rule names must be unique across all of them.
    pub fn from_texts(
        texts: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RuleSet, RuleError> {
        let mut rules: Vec<Rule> = Vec::new();
        for (file, text) in texts {
            for rule in parse(&file, &text)? {
                if let Some(prev) = rules.iter().find(|r| r.name == rule.name) {
                    let (f, l) = rule.origin.rsplit_once(':').unwrap_or((&file, "0"));
                    return Err(RuleError {
                        file: f.to_string(),
                        line: l.parse().unwrap_or(0),
                        msg: format!("rule `{}` is already defined at {}", rule.name, prev.origin),
                    });
                }
                rules.push(rule);
            }
        }
        Ok(RuleSet { rules })
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The exact pattern rules as egg rewrites.
    pub fn exact_rewrites(&self) -> Vec<Rewrite<TensorLang, TypeAnalysis>> {
        self.rules
            .iter()
            .filter(|r| r.kind == Kind::Exact)
            .filter_map(Rule::rewrite)
            .collect()
    }

    /// Whether an exact code rule named `name` is loaded.
    pub fn has_code_rule(&self, name: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.name == name && matches!(r.body, Body::Code) && r.kind == Kind::Exact)
    }

    /// The approximate rule families loaded (a rule `hydra-causal` is of family `hydra`), in
    /// order of first appearance.
    pub fn approx_families(&self) -> Vec<&str> {
        let mut families: Vec<&str> = Vec::new();
        for r in self.rules.iter().filter(|r| r.kind == Kind::Approx) {
            let family = r.name.split('-').next().unwrap_or(&r.name);
            if !families.contains(&family) {
                families.push(family);
            }
        }
        families
    }

    /// Approximate rules of family `family` (`hydra` covers `hydra`, `hydra-causal`, ...).
    pub fn approx_family(&self, family: &str) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.kind == Kind::Approx)
            .filter(|r| {
                r.name == family
                    || r.name
                        .strip_prefix(family)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
            .collect()
    }
}

/// Joins continuation lines; yields (first line number, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
                continue;
            }
        }
        out.push((i + 1, line.trim().to_string()));
    }
    out
}

/// Parses one rule file.
/// The deepest pattern nesting a rule may have. egg's pattern parser recurses once per level,
/// so this bounds its stack use on a stranger's rule file (20,000 levels overflowed it).
pub const MAX_PATTERN_DEPTH: usize = 64;

/// How deeply parentheses nest in `text` (unbalanced text is egg's to report).
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

pub fn parse(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    for (line, text) in logical_lines(text) {
        let err = |msg: String| RuleError {
            file: file.to_string(),
            line,
            msg,
        };
        let (head, body) = text
            .split_once(':')
            .ok_or_else(|| err("expected `exact NAME: ...` or `approx NAME: ...`".into()))?;
        let mut words = head.split_whitespace();
        let kind = match words.next() {
            Some("exact") => Kind::Exact,
            Some("approx") => Kind::Approx,
            other => {
                return Err(err(format!(
                    "a rule starts with `exact` or `approx`, not `{}`",
                    other.unwrap_or("")
                )))
            }
        };
        let name = match (words.next(), words.next()) {
            (Some(n), None)
                if n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                n.to_string()
            }
            _ => {
                return Err(err(format!(
                    "bad rule name in `{head}` (letters, digits, `-`, `_`)"
                )))
            }
        };
        let origin = format!("{file}:{line}");
        let body = body.trim();
        if body == "code" {
            if !crate::code_rules::NAMES.contains(&name.as_str()) {
                return Err(err(format!(
                    "no code rule named `{name}` (known: {})",
                    crate::code_rules::NAMES.join(", ")
                )));
            }
            rules.push(Rule {
                name,
                kind,
                origin,
                body: Body::Code,
            });
            continue;
        }
        let (lhs, rest) = body
            .split_once("=>")
            .ok_or_else(|| err("expected `LHS => RHS`".into()))?;
        let (rhs, conds) = match rest.split_once(" if ") {
            Some((r, c)) => (r, Some(c)),
            None => (rest, None),
        };
        for (side, text) in [("left", lhs), ("right", rhs)] {
            let depth = nesting_depth(text);
            if depth > MAX_PATTERN_DEPTH {
                return Err(err(format!(
                    "{side} side: patterns nest {depth} levels deep, more than the {MAX_PATTERN_DEPTH} \
                     attnopt reads (a rule matches a few operators, not a whole model)"
                )));
            }
        }
        let lhs: Pattern<TensorLang> = lhs
            .trim()
            .parse()
            .map_err(|e| err(format!("left side: {e}")))?;
        let rhs_pat: Pattern<TensorLang> = rhs
            .trim()
            .parse()
            .map_err(|e| err(format!("right side: {e}")))?;
        let conditions = match conds {
            Some(c) => c
                .split(" and ")
                .map(Condition::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?,
            None => vec![],
        };
        let bound = lhs.vars();
        for v in rhs_pat
            .vars()
            .into_iter()
            .chain(conditions.iter().flat_map(|c| c.vars()))
        {
            if !bound.contains(&v) {
                return Err(err(format!("{v} is used but not bound by the left side")));
            }
        }
        let rule = Rule {
            name,
            kind,
            origin,
            body: Body::Pattern {
                lhs,
                rhs: Checked {
                    rhs: rhs_pat,
                    conditions,
                },
            },
        };
        if rule.rewrite().is_none() {
            return Err(err("egg refused the rule".into()));
        }
        rules.push(rule);
    }
    Ok(rules)
}
