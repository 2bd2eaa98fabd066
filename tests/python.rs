//! The Python package's test suite (python/tests, pytest) against the fixtures' goldens and
//! this build's CLI binary.
//!
//! The package must be installed (`pip install .`, which builds the native module with
//! maturin) in the environment of `ATTNOPT_PYTHON` (default `python3`) with numpy and pytest.
//! `.ci/run` does that and sets `ATTNOPT_REQUIRE_PYTHON=1`, so in CI a missing package fails
//! this test; elsewhere it is skipped with a message saying how to run it. The round trip
//! through PyTorch runs where torch and transformers are importable too (required with
//! `ATTNOPT_REQUIRE_TORCH`).

use std::path::Path;
use std::process::Command;

#[test]
fn python_package_passes_its_pytest_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("ATTNOPT_PYTHON").unwrap_or_else(|_| "python3".into());
    let required = std::env::var_os("ATTNOPT_REQUIRE_PYTHON").is_some();
    let probe = Command::new(&python)
        .args(["-c", "import attnopt, numpy, pytest"])
        .current_dir(std::env::temp_dir())
        .output();
    let ready = probe.as_ref().is_ok_and(|o| o.status.success());
    if !ready {
        let why = match &probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => format!("{python}: {e}"),
        };
        let how = "python3 -m venv .venv && .venv/bin/pip install numpy pytest . && \
                   ATTNOPT_PYTHON=.venv/bin/python cargo test --release --test python";
        assert!(
            !required,
            "the Python package is not importable ({why}); {how}"
        );
        eprintln!("SKIPPED: the Python package is not importable ({why}); to run it: {how}");
        return;
    }
    // From outside the repository, so `import attnopt` finds the installed package (with its
    // native module), not the sources in python/.
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg(root.join("python/tests"))
        .env("ATTNOPT_BIN", env!("CARGO_BIN_EXE_attnopt"))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("pytest runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "pytest failed:\n{text}");
    // Only the PyTorch round trip may be skipped (torch and transformers are optional and
    // heavy); with `ATTNOPT_REQUIRE_TORCH` set, not even that.
    let require_torch = std::env::var_os("ATTNOPT_REQUIRE_TORCH").is_some();
    for line in text.lines().filter(|l| l.starts_with("SKIPPED")) {
        assert!(
            line.contains("torch and transformers are not installed") && !require_torch,
            "pytest skipped a test: {line}\n{text}"
        );
    }
}
