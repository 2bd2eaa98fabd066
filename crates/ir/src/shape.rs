//! Shapes with symbolic batch and sequence dimensions.
//!
//! A graph is built once for every batch size and sequence length: those two dimensions stay
//! symbolic (`B`, `N`) until a run binds them. Every other dimension is fixed by the checkpoint.
//! A decoding step's graph (`crate::incremental`) has two more: `P`, the tokens already held in
//! its state (the past), and `T = P + N`, all tokens so far (a key-value cache after the new
//! rows are appended).

use std::fmt;

/// A symbolic dimension, bound per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sym {
    /// Batch size.
    Batch,
    /// Sequence length (tokens).
    Seq,
    /// Tokens before this run, held in a decoding state (0 in a graph without state).
    Past,
    /// `Past + Seq`: every token so far.
    Total,
}

impl Sym {
    pub const ALL: [Sym; 4] = [Sym::Batch, Sym::Seq, Sym::Past, Sym::Total];

    /// The symbol named `s` (`B` or `N`; the inverse of [`Sym::name`]).
    pub fn from_name(s: &str) -> Option<Sym> {
        Sym::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Sym::Batch => "B",
            Sym::Seq => "N",
            Sym::Past => "P",
            Sym::Total => "T",
        }
    }
}

/// One dimension: fixed or symbolic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Fixed(usize),
    Sym(Sym),
}

pub const BATCH: Dim = Dim::Sym(Sym::Batch);
pub const SEQ: Dim = Dim::Sym(Sym::Seq);
pub const PAST: Dim = Dim::Sym(Sym::Past);
pub const TOTAL: Dim = Dim::Sym(Sym::Total);

impl Dim {
    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Sym(_) => None,
        }
    }

    /// The concrete size under `b`; `None` when `b` leaves the symbol unbound.
    pub fn eval(self, b: &Bindings) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Sym(s) => b.get(s),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s.name()),
        }
    }
}

/// A shape: one [`Dim`] per axis, outermost first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn fixed(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The last axis (panics on rank 0; callers check rank first).
    pub fn last(&self) -> Dim {
        self.0[self.0.len() - 1]
    }

    /// Concrete sizes under `b`, or `None` if a symbol is unbound.
    pub fn eval(&self, b: &Bindings) -> Option<Vec<usize>> {
        self.0.iter().map(|d| d.eval(b)).collect()
    }

    /// Element count under `b` (saturating, so absurd shapes cannot overflow).
    pub fn numel(&self, b: &Bindings) -> Option<u64> {
        let mut n: u64 = 1;
        for d in &self.0 {
            n = n.saturating_mul(d.eval(b)? as u64);
        }
        Some(n)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Values of the symbolic dimensions for one run. `Total` is `Past + Seq`: whichever two are
/// bound give the third, and binding a third that disagrees is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bindings {
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    pub past: Option<usize>,
    pub total: Option<usize>,
}

impl Bindings {
    pub fn new(batch: usize, seq: usize) -> Bindings {
        Bindings {
            batch: Some(batch),
            seq: Some(seq),
            past: None,
            total: None,
        }
    }

    /// A decoding step: `seq` new tokens after `past` held in the state.
    pub fn step(batch: usize, seq: usize, past: usize) -> Bindings {
        Bindings {
            past: Some(past),
            ..Bindings::new(batch, seq)
        }
    }

    pub fn get(&self, s: Sym) -> Option<usize> {
        match s {
            Sym::Batch => self.batch,
            Sym::Seq => self.seq.or_else(|| self.total?.checked_sub(self.past?)),
            Sym::Past => self.past.or_else(|| self.total?.checked_sub(self.seq?)),
            Sym::Total => self.total.or_else(|| self.past?.checked_add(self.seq?)),
        }
    }

    /// The tokens before this run: `Past`, 0 when the graph has no state.
    pub fn offset(&self) -> usize {
        self.get(Sym::Past).unwrap_or(0)
    }

    /// Binds `s` to `n`; `Err(old)` if it already has (or the others give it) another value.
    pub fn bind(&mut self, s: Sym, n: usize) -> Result<(), usize> {
        if let Some(old) = self.get(s) {
            return if old == n { Ok(()) } else { Err(old) };
        }
        let slot = match s {
            Sym::Batch => &mut self.batch,
            Sym::Seq => &mut self.seq,
            Sym::Past => &mut self.past,
            Sym::Total => &mut self.total,
        };
        *slot = Some(n);
        Ok(())
    }
}
