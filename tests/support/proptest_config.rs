//! The configuration of every property test in the workspace: a fixed seed by default, so a
//! test run (CI included) draws the same cases every time and a failure is never a roll of
//! the dice; the `*.proptest-regressions` files next to the tests are replayed first as usual.
//!
//! Each test crate includes this one file (there is no shared test crate):
//! `#[path = "<up to the root>/tests/support/proptest_config.rs"] mod proptest_config;`
//! and writes `#![proptest_config(proptest_config::config(N))]`.
//!
//! Fuzzing: `ATTNOPT_PROPTEST_SEED=random` draws a fresh seed per test (a failure is saved to
//! the regression file, as proptest always does); a number fixes another seed.
//! `PROPTEST_CASES` overrides the number of cases; proptest's own `PROPTEST_RNG_SEED` is used
//! when `ATTNOPT_PROPTEST_SEED` is unset.
#![allow(dead_code)]

use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

/// The environment variable that picks the seed: unset (the fixed [`DEFAULT_SEED`]),
/// `random`, or a `u64`.
pub const SEED_ENV: &str = "ATTNOPT_PROPTEST_SEED";

/// The seed every property test uses unless [`SEED_ENV`] says otherwise.
pub const DEFAULT_SEED: u64 = 0x0a77_0e57_5eed_0001;

/// The seed asked for by the environment (see the module documentation).
pub fn seed() -> RngSeed {
    match std::env::var(SEED_ENV) {
        Err(_) => match Config::default().rng_seed {
            RngSeed::Random => RngSeed::Fixed(DEFAULT_SEED),
            from_proptest_env => from_proptest_env,
        },
        Ok(v) if v.trim().eq_ignore_ascii_case("random") => RngSeed::Random,
        Ok(v) => RngSeed::Fixed(v.trim().parse().unwrap_or_else(|_| {
            panic!("{SEED_ENV}={v:?}: expected `random` or an unsigned 64-bit number")
        })),
    }
}

/// `cases` cases (unless `PROPTEST_CASES` is set), ChaCha (the algorithm the regression files
/// are written for) seeded by [`seed`].
pub fn config(cases: u32) -> Config {
    let cases = match std::env::var("PROPTEST_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PROPTEST_CASES={v:?}: expected a number")),
        Err(_) => cases,
    };
    Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: seed(),
        ..Config::default()
    }
}
