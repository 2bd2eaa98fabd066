//! The README's Rust example is the facade's first doctest (src/lib.rs), so `cargo test`
//! compiles and runs it: every line of the README's ```rust block appears, in order, in the
//! crate docs' first code block.

#[test]
fn the_readme_rust_example_is_a_doctest() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let start = readme.find("```rust\n").expect("a rust block in README.md") + 8;
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let docs: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let first = docs.iter().position(|l| *l == "```").unwrap() + 1;
    let doctest = &docs[first..first + docs[first..].iter().position(|l| *l == "```").unwrap()];
    let mut at = 0;
    for line in block.lines() {
        let found = doctest[at..].iter().position(|l| *l == line);
        assert!(
            found.is_some(),
            "README line not in the doctest (in order): {line}"
        );
        at += found.unwrap() + 1;
    }
}
