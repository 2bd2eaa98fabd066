//! Architecture invariants: crates depend one way only (ir at the bottom): reads every
//! crates/*/Cargo.toml and checks its attnopt dependencies against the allowed layering. And
//! library code reads no environment variables: scans the sources for `env::var`.

use std::path::Path;

/// Which attnopt crates each crate may depend on (DESIGN.md's picture).
const ALLOWED: &[(&str, &[&str])] = &[
    ("ir", &[]),
    ("import", &["ir"]),
    ("rewrite", &["ir"]),
    ("lower", &["ir"]),
    ("cpu", &["lower", "ir"]),
    ("gpu", &["lower", "ir"]),
    // The Python package wraps the `attnopt` facade (the root crate), nothing below it.
    ("python", &[]),
];

fn attnopt_deps(manifest: &str) -> Vec<String> {
    manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("attnopt-"))
        .filter_map(|rest| {
            rest.split(|c: char| c == '.' || c == ' ' || c == '=')
                .next()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn crates_depend_one_way_only() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut seen = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let allowed = ALLOWED
            .iter()
            .find(|(c, _)| *c == name)
            .unwrap_or_else(|| panic!("crates/{name} is not in the layering table; add it here and to docs/ARCHITECTURE.md"))
            .1;
        for dep in attnopt_deps(&manifest) {
            assert!(
                allowed.contains(&dep.as_str()),
                "crates/{name} depends on attnopt-{dep}, which the layering forbids"
            );
        }
        seen += 1;
    }
    assert!(seen >= 2, "expected at least ir and import");
}

#[test]
fn dependency_parser_sees_dependencies() {
    let deps = attnopt_deps("[dependencies]\nattnopt-ir.workspace = true\nattnopt-lower = { path = \"../lower\" }\nserde = \"1\"\n");
    assert_eq!(deps, vec!["ir", "lower"]);
}

/// Reads of the process environment that library code may keep, as (file, text on the line):
/// `ffi.rs` looks at OpenMP's own `OMP_WAIT_POLICY` only so as never to overwrite a value the
/// user set before it sets `PASSIVE` (process hygiene before loading oneDNN, not configuration
/// of attnopt).
const ENV_READS_ALLOWED: &[(&str, &str)] = &[(
    "crates/cpu/src/matmul/ffi.rs",
    "std::env::var_os(\"OMP_WAIT_POLICY\")",
)];

/// The lines of `text` (the file `file`, relative to the repository root) that read an
/// environment variable (`env::var`, `env::var_os`, `env::vars`, however imported) and are not
/// allowed; comments are skipped.
fn env_reads(file: &str, text: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//") && l.contains("env::var"))
        .filter(|(_, l)| {
            !ENV_READS_ALLOWED
                .iter()
                .any(|(f, allowed)| *f == file && l.contains(allowed))
        })
        .map(|(i, l)| format!("{file}:{}: {}", i + 1, l.trim()))
        .collect()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Architecture invariant: library code reads no environment variables; only src/main.rs does
/// (it maps flags and `ATTNOPT_*` variables into options structs such as `CpuOptions`).
/// Examples, tests and benchmarks are not library code.
#[test]
fn library_code_reads_no_environment_variables() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        dirs.push(entry.unwrap().path().join("src"));
    }
    let mut files = Vec::new();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        rust_files(d, &mut files);
    }
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "src/main.rs" {
            continue;
        }
        found.extend(env_reads(&rel, &std::fs::read_to_string(f).unwrap()));
    }
    assert!(
        files.len() > 20,
        "expected the library sources, found {}",
        files.len()
    );
    assert!(
        found.is_empty(),
        "library code reads the environment; take an option instead and let src/main.rs map the \
         variable (docs/ARCHITECTURE.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn environment_scan_sees_reads() {
    let text = "// std::env::var in a comment\nlet a = std::env::var(\"X\");\nuse std::env;\nlet b = env::var_os(\"Y\");\nlet c = std::env::var_os(\"OMP_WAIT_POLICY\");\n";
    assert_eq!(env_reads("crates/cpu/src/matmul/ffi.rs", text).len(), 2);
    let elsewhere = env_reads("crates/cpu/src/exec.rs", text);
    assert_eq!(elsewhere.len(), 3, "{elsewhere:?}");
    assert!(
        elsewhere[0].starts_with("crates/cpu/src/exec.rs:2: "),
        "{elsewhere:?}"
    );
}
