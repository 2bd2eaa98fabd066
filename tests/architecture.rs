//! Architecture invariant: crates depend one way only (ir at the bottom). Reads every
//! crates/*/Cargo.toml and checks its attnopt dependencies against the allowed layering.

use std::path::Path;

/// Which attnopt crates each crate may depend on (DESIGN.md's picture).
const ALLOWED: &[(&str, &[&str])] = &[
    ("ir", &[]),
    ("import", &["ir"]),
    ("rewrite", &["ir"]),
    ("lower", &["ir"]),
    ("cpu", &["lower", "ir"]),
    ("gpu", &["lower", "ir"]),
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
