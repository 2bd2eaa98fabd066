//! Choosing the next token from logits: greedy (the first maximum, as `argmax` in PyTorch), or
//! sampling as transformers' `generate(do_sample=True)` defines it — logits divided by the
//! temperature, then top-k, then top-p (nucleus) filtering, then one draw from the softmax —
//! with attnopt's seeded generator, so a seed reproduces a run (not PyTorch's draws).

use attnopt_ir::rng::Rng;

use crate::Error;

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the most likely token.
    Greedy,
    /// A random draw from the filtered distribution.
    Random {
        /// Logits are divided by it (> 0; below 1 sharpens, above 1 flattens).
        temperature: f32,
        /// Keep only the `k` most likely tokens (`None`: all).
        top_k: Option<usize>,
        /// Keep the most likely tokens whose probabilities first reach `p` (`None`: all).
        top_p: Option<f32>,
        seed: u64,
    },
}

impl Sampling {
    /// Checks the settings (a temperature above 0, top-k at least 1, top-p in (0, 1]).
    pub fn check(&self) -> Result<(), Error> {
        if let Sampling::Random {
            temperature,
            top_k,
            top_p,
            ..
        } = *self
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::Invalid(format!(
                    "temperature {temperature}: it must be a number above 0 (greedy decoding is the limit 0)"
                )));
            }
            if top_k == Some(0) {
                return Err(Error::NotSupported(
                    "top-k 0: keep at least one token".into(),
                ));
            }
            if let Some(p) = top_p {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(Error::Invalid(format!("top-p {p}: it must lie in (0, 1]")));
                }
            }
        }
        Ok(())
    }
}

/// Picks tokens one after another (the generator's state carries over).
#[derive(Debug, Clone)]
pub struct Sampler {
    how: Sampling,
    rng: Rng,
}

impl Sampler {
    pub fn new(how: Sampling) -> Result<Sampler, Error> {
        how.check()?;
        let seed = match how {
            Sampling::Random { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Ok(Sampler {
            how,
            rng: Rng::new(seed),
        })
    }

    /// The next token given its logits (a NaN logit is never chosen).
    pub fn pick(&mut self, logits: &[f32]) -> usize {
        let Sampling::Random {
            temperature,
            top_k,
            top_p,
            ..
        } = self.how
        else {
            return argmax(logits);
        };
        // Candidates, most likely first (ties by id, as a stable sort keeps them).
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        if order.is_empty() {
            return 0;
        }
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = top_k {
            order.truncate(k.max(1));
        }
        let top = logits[order[0]] as f64 / temperature as f64;
        let mut probs: Vec<f64> = (order.iter())
            .map(|&i| (logits[i] as f64 / temperature as f64 - top).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = top_p {
            // The smallest head whose mass reaches p (at least one token).
            let mut mass = 0.0;
            let keep = (probs.iter())
                .position(|&q| {
                    mass += q;
                    mass >= p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.uniform() as f64 * total;
        for (i, q) in probs.iter().enumerate() {
            if u < *q {
                return order[i];
            }
            u -= q;
        }
        order[probs.len() - 1]
    }
}

/// The index of the first maximum (NaN never wins; 0 for an empty or all-NaN row).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best: Option<usize> = None;
    for (i, &x) in xs.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|b| x > xs[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Sampler {
        Sampler::new(Sampling::Random {
            temperature,
            top_k,
            top_p,
            seed,
        })
        .unwrap()
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    }

    #[test]
    fn a_seed_reproduces_a_run_and_another_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = random(1.0, None, None, seed);
            (0..40).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_head() {
        let logits = [0.0, 5.0, 4.0, 1.0, 4.5];
        let mut s = random(1.0, Some(2), None, 3);
        for _ in 0..200 {
            assert!(matches!(s.pick(&logits), 1 | 4));
        }
        // p(1) ≈ 0.50, p(4) ≈ 0.30, p(2) ≈ 0.18: a nucleus of 0.7 is {1, 4}.
        let mut s = random(1.0, None, Some(0.7), 3);
        let picks: Vec<usize> = (0..300).map(|_| s.pick(&logits)).collect();
        assert!(picks.iter().all(|&t| t == 1 || t == 4));
        assert!(picks.contains(&1) && picks.contains(&4));
    }

    #[test]
    fn a_low_temperature_is_nearly_greedy_and_frequencies_follow_the_softmax() {
        let logits = [0.0, 1.0, 2.0];
        let mut s = random(0.01, None, None, 1);
        assert!((0..100).all(|_| s.pick(&logits) == 2));
        let mut s = random(1.0, None, None, 11);
        let n = 20000;
        let mut count = [0usize; 3];
        for _ in 0..n {
            count[s.pick(&logits)] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, c) in count.iter().enumerate() {
            let want = (logits[i] as f64).exp() / z;
            let got = *c as f64 / n as f64;
            assert!((got - want).abs() < 0.02, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        for (t, k, p) in [
            (0.0, None, None),
            (f32::NAN, None, None),
            (1.0, Some(0), None),
            (1.0, None, Some(0.0)),
            (1.0, None, Some(1.5)),
        ] {
            assert!(Sampler::new(Sampling::Random {
                temperature: t,
                top_k: k,
                top_p: p,
                seed: 0
            })
            .is_err());
        }
    }
}
