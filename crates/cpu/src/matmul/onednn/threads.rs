//! How many threads a small product runs on, decided by measurement on the machine it runs on.
//!
//! Waking OpenMP's sleeping threads (`OMP_WAIT_POLICY=PASSIVE`, which the module sets for good
//! reasons) costs tens of microseconds on a VM, more than a small product takes on one core:
//! measured on a 2-vCPU Xeon VM, the `[16, 576]·[576, 64]` products of a sparse QKV block at one
//! token took 50 µs on two threads and 30 µs on one in f32, 76 µs and 18 µs in bf16; the
//! 32000-wide LM head, bandwidth-bound, wants both. Which side of that line a shape falls on
//! depends on the host, so it is not a constant: for products of at most [`SMALL_WORK`]
//! multiply-adds, the first runs of each shape alternate between one thread and all of them,
//! and after [`SAMPLES`] timed runs of each (the first of each not counted: it builds the
//! primitive and warms the caches) the shape keeps the faster by median. Larger products always
//! use every thread. Never: build or execute primitives (the parent does).

use std::collections::HashMap;

use super::cache::Key;

/// Products with at most this many multiply-adds (batch · m · k · n) are measured.
pub(super) const SMALL_WORK: usize = 1 << 22;

/// Timed runs per thread count before a shape's choice is made.
pub(super) const SAMPLES: usize = 4;

/// One shape's trial: the seconds of each timed run, on one thread and on all.
#[derive(Debug, Default)]
struct Trial {
    one: Vec<f64>,
    all: Vec<f64>,
    runs: usize,
}

/// A shape's thread count, chosen or still on trial.
#[derive(Debug)]
enum Choice {
    Trial(Trial),
    Chosen(usize),
}

/// Per shape (a cache key without its thread count), the thread count to use.
#[derive(Debug, Default)]
pub(super) struct Threads {
    shapes: HashMap<Key, Choice>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::INFINITY)
}

impl Threads {
    /// The thread count for the next run of `shape` (its key with `threads` 0) when the caller
    /// has `max` threads, and whether that run is to be timed and [`record`](Self::record)ed.
    pub(super) fn next(&mut self, shape: &Key, max: usize) -> (usize, bool) {
        let work = shape
            .batch
            .max(1)
            .saturating_mul(shape.m)
            .saturating_mul(shape.k)
            .saturating_mul(shape.n);
        if max <= 1 || work > SMALL_WORK {
            return (max.max(1), false);
        }
        match self
            .shapes
            .entry(shape.clone())
            .or_insert_with(|| Choice::Trial(Trial::default()))
        {
            Choice::Chosen(t) => (*t, false),
            // Alternate: one thread on even runs, all on odd ones.
            Choice::Trial(t) => (if t.runs % 2 == 0 { 1 } else { max }, true),
        }
    }

    /// Records a timed run of `shape` on `threads` threads (`max`: all of them).
    pub(super) fn record(&mut self, shape: &Key, threads: usize, max: usize, seconds: f64) {
        let Some(Choice::Trial(t)) = self.shapes.get_mut(shape) else {
            return;
        };
        // The first run on each count builds its primitive and warms the caches.
        if t.runs >= 2 {
            if threads == 1 { &mut t.one } else { &mut t.all }.push(seconds);
        }
        t.runs += 1;
        if t.one.len() >= SAMPLES && t.all.len() >= SAMPLES {
            let (one, all) = (median(&mut t.one), median(&mut t.all));
            let chosen = if one < all { 1 } else { max };
            self.shapes.insert(shape.clone(), Choice::Chosen(chosen));
        }
    }
}
