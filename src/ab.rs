//! A/B timing: two ways of running the same thing, timed in alternating rounds in one process
//! so that machine noise (other tenants, frequency changes) hits both alike, summarised as the
//! median of the per-round ratios with a distribution-free confidence interval.
//!
//! The interval is the order-statistic interval for a median: with `n` rounds, the ratios
//! sorted, the `k`-th and `(n−1−k)`-th where `k = ⌊(n − 1.96·√n) / 2⌋`, which holds the true
//! median with about 95 % probability whatever the distribution (normal approximation to the
//! binomial; for n < 6 it is the whole range). Nothing here asserts a time.

/// The summary of an A/B run: B's time ÷ A's time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AbStats {
    pub rounds: usize,
    pub ratio_median: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

impl AbStats {
    /// From per-round ratios (B ÷ A); `None` when there are none.
    pub fn from_ratios(ratios: &[f64]) -> Option<AbStats> {
        let n = ratios.len();
        if n == 0 {
            return None;
        }
        let mut r = ratios.to_vec();
        r.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            r[n / 2]
        } else {
            (r[n / 2 - 1] + r[n / 2]) / 2.0
        };
        let k = ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0)
            .floor()
            .max(0.0) as usize;
        let k = k.min((n - 1) / 2);
        Some(AbStats {
            rounds: n,
            ratio_median: median,
            ci_low: r[k],
            ci_high: r[n - 1 - k],
        })
    }
}

/// Times `a` and `b` in `rounds` alternating rounds (the order flips every round, so neither
/// always runs second) and summarises B ÷ A. Stops at the first error.
pub fn alternate<E>(
    rounds: usize,
    mut a: impl FnMut() -> Result<(), E>,
    mut b: impl FnMut() -> Result<(), E>,
    mut progress: impl FnMut(usize),
) -> Result<Option<AbStats>, E> {
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        progress(round);
        let time = |f: &mut dyn FnMut() -> Result<(), E>| {
            let t = std::time::Instant::now();
            f().map(|()| t.elapsed().as_secs_f64())
        };
        let (ta, tb) = if round % 2 == 0 {
            let ta = time(&mut a)?;
            (ta, time(&mut b)?)
        } else {
            let tb = time(&mut b)?;
            (time(&mut a)?, tb)
        };
        if ta > 0.0 {
            ratios.push(tb / ta);
        }
    }
    Ok(AbStats::from_ratios(&ratios))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_interval_of_known_ratios() {
        let r: Vec<f64> = (1..=25).map(f64::from).collect();
        let s = AbStats::from_ratios(&r).unwrap();
        assert_eq!(s.ratio_median, 13.0);
        // k = floor((25 - 9.8) / 2) = 7: the 8th and 18th of 25.
        assert_eq!((s.ci_low, s.ci_high), (8.0, 18.0));
        let s = AbStats::from_ratios(&[2.0, 1.0]).unwrap();
        assert_eq!((s.ratio_median, s.ci_low, s.ci_high), (1.5, 1.0, 2.0));
        assert!(AbStats::from_ratios(&[]).is_none());
    }

    #[test]
    fn alternation_flips_the_order() {
        let order = std::cell::RefCell::new(Vec::new());
        let s = alternate::<()>(
            4,
            || {
                order.borrow_mut().push('a');
                Ok(())
            },
            || {
                order.borrow_mut().push('b');
                Ok(())
            },
            |_| {},
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.rounds, 4);
        assert_eq!(order.into_inner(), ['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a']);
    }
}
