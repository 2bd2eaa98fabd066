//! A small deterministic random generator (xorshift64*): seeded calibration inputs, and the
//! seeded random data of differential tests and benchmarks, reproducible by seed on every
//! machine. Not for anything that needs statistical quality or secrecy.

/// xorshift64* with a scrambled, never-zero seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn values(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }

    /// Uniform in `0..n` (`n > 0`; slightly biased for huge `n`, fine for tests).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn seeded_and_in_range() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        let (x, y) = (a.values(100, -2.0, 2.0), b.values(100, -2.0, 2.0));
        assert_eq!(x, y, "same seed, same values");
        assert!(x.iter().all(|v| (-2.0..2.0).contains(v)));
        assert_ne!(x, Rng::new(4).values(100, -2.0, 2.0));
        assert!((0..1000).all(|_| a.below(7) < 7));
    }
}
