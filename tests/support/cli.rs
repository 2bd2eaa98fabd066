//! Running the `attnopt` binary from integration tests: one copy of the helpers every CLI test
//! file needs (included with `#[path = "support/cli.rs"] mod cli;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (fixtures, rules).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `attnopt ARGS` run in the repository root.
pub fn attnopt(args: &[&str]) -> Output {
    attnopt_in(&root(), args)
}

/// `attnopt ARGS` run in `dir`.
pub fn attnopt_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnopt"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("binary runs")
}

/// The variables the CLI maps into the CPU backend's options (docs/CLI.md).
pub const CPU_VARIABLES: [&str; 4] = [
    "ATTNOPT_MATMUL",
    "ATTNOPT_POSTOPS",
    "ATTNOPT_JIT_AVX512",
    "ATTNOPT_ONEDNN_LIBRARY",
];

/// `attnopt ARGS` run in the repository root with exactly `vars` of [`CPU_VARIABLES`] set
/// (whatever the test's own environment holds).
pub fn attnopt_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_attnopt"));
    for v in CPU_VARIABLES {
        c.env_remove(v);
    }
    c.envs(vars.iter().copied())
        .args(args)
        .current_dir(root())
        .output()
        .expect("binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
