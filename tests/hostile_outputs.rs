//! Outputs that must not be written and sources that must not be swapped, through the binary:
//! devices, FIFOs, symlinks, a command's own inputs (also through a hard link), `--force` over a
//! folder with a stranger's file, checkpoints edited in place under an optimised folder, and
//! models whose dimensions would be guessed. Each case was reproduced on the code before these
//! checks (see issue 12) and fails there.

#[path = "support/cli.rs"]
mod cli;
use cli::{attnopt_in, root, stderr};

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A scratch folder holding a copy of `fixtures/bert` as `bert/`.
fn scratch() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = root().join("fixtures/bert");
    std::fs::create_dir(tmp.path().join("bert")).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join("bert").join(f.file_name().unwrap())).unwrap();
    }
    tmp
}

fn refused(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected a refusal, got success");
    let e = stderr(o);
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

fn run_to(dir: &Path, out: &str) -> Output {
    attnopt_in(
        dir,
        &["run", "bert", "-i", "bert/golden.safetensors", "-o", out],
    )
}

#[test]
fn run_refuses_devices_fifos_and_symlinks_as_output() {
    let tmp = scratch();
    let dir = tmp.path();
    // A character device: /dev/null must stay the device it is.
    let before = std::fs::symlink_metadata("/dev/null").unwrap();
    refused(&run_to(dir, "/dev/null"), "is a device");
    let after = std::fs::symlink_metadata("/dev/null").unwrap();
    assert_eq!(before.rdev(), after.rdev());
    assert!(after.file_type().is_char_device());

    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    refused(&run_to(dir, "fifo"), "is a FIFO");

    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("link")).unwrap();
    refused(&run_to(dir, "link"), "is a symbolic link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(dir.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());

    std::fs::create_dir(dir.join("folder")).unwrap();
    refused(&run_to(dir, "folder"), "is a folder");

    // A regular file is replaced, and no temporary is left beside it.
    let o = run_to(dir, "out.safetensors");
    assert!(o.status.success(), "{}", stderr(&o));
    let strays: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(strays.is_empty(), "left behind: {strays:?}");
}

#[test]
fn outputs_never_replace_inputs() {
    let tmp = scratch();
    let dir = tmp.path();
    let golden = std::fs::read(dir.join("bert/golden.safetensors")).unwrap();
    // The input tensor file itself, and a hard link to it.
    refused(
        &run_to(dir, "bert/golden.safetensors"),
        "is one of this command's inputs",
    );
    std::fs::hard_link(dir.join("bert/golden.safetensors"), dir.join("alias")).unwrap();
    refused(
        &run_to(dir, "alias"),
        "(the same file as bert/golden.safetensors)",
    );
    // The --compare file.
    std::fs::copy(dir.join("bert/golden.safetensors"), dir.join("cmp")).unwrap();
    let o = attnopt_in(
        dir,
        &[
            "run",
            "bert",
            "-i",
            "bert/golden.safetensors",
            "--compare",
            "cmp",
            "-o",
            "cmp",
        ],
    );
    refused(&o, "is one of this command's inputs");
    assert_eq!(
        std::fs::read(dir.join("bert/golden.safetensors")).unwrap(),
        golden
    );
    // The checkpoint and its config, through `graph`.
    let ck = std::fs::read(dir.join("bert/model.safetensors")).unwrap();
    for target in ["bert/model.safetensors", "bert/config.json"] {
        for flag in ["--text", "--dot"] {
            refused(
                &attnopt_in(dir, &["graph", "bert", flag, target]),
                "is one of this command's inputs",
            );
        }
    }
    assert_eq!(
        std::fs::read(dir.join("bert/model.safetensors")).unwrap(),
        ck
    );
    // An optimised folder's graph and manifest, and its source's checkpoint.
    let o = attnopt_in(dir, &["optimize", "bert", "-o", "opt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for target in [
        "opt/graph.txt",
        "opt/attnopt.json",
        "bert/model.safetensors",
    ] {
        refused(
            &attnopt_in(dir, &["graph", "opt", "--text", target]),
            "is one of this command's inputs",
        );
    }
}

#[test]
fn force_replaces_only_what_attnopt_wrote() {
    let tmp = scratch();
    let dir = tmp.path();
    assert!(attnopt_in(dir, &["optimize", "bert", "-o", "opt"])
        .status
        .success());
    // Without --force: refused.
    refused(
        &attnopt_in(dir, &["optimize", "bert", "-o", "opt"]),
        "pass --force",
    );
    // A stranger's file in the folder: refused, and the file survives.
    std::fs::write(dir.join("opt/thesis.tex"), "years of work").unwrap();
    refused(
        &attnopt_in(dir, &["optimize", "bert", "-o", "opt", "--force"]),
        "holds `thesis.tex`",
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("opt/thesis.tex")).unwrap(),
        "years of work"
    );
    std::fs::remove_file(dir.join("opt/thesis.tex")).unwrap();
    // A folder that merely has a file named attnopt.json: refused.
    std::fs::create_dir(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/attnopt.json"), "{}").unwrap();
    std::fs::write(dir.join("mine/notes.txt"), "mine").unwrap();
    refused(
        &attnopt_in(dir, &["optimize", "bert", "-o", "mine", "--force"]),
        "is not a folder attnopt wrote",
    );
    assert!(dir.join("mine/notes.txt").exists());
    // A symlink to an attnopt folder as the output: refused, the folder untouched.
    std::os::unix::fs::symlink(dir.join("opt"), dir.join("opt-link")).unwrap();
    refused(
        &attnopt_in(dir, &["optimize", "bert", "-o", "opt-link", "--force"]),
        "is a symbolic link",
    );
    // The exact folder attnopt wrote: replaced, with nothing left beside it.
    let o = attnopt_in(dir, &["optimize", "bert", "-o", "opt", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["bert", "mine", "opt", "opt-link"]);
    // The model folder itself is never an output.
    refused(
        &attnopt_in(dir, &["optimize", "bert", "-o", "bert", "--force"]),
        "is the input model",
    );
}

/// Rewrites every weight byte after the header to `value` while keeping the file's size, inode
/// and modification time: the edit the old size-only check let through.
fn edit_in_place_keeping_metadata(path: &Path, value: f32) {
    let md = std::fs::metadata(path).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for chunk in bytes[8 + header..].chunks_exact_mut(4) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    std::fs::write(path, &bytes).unwrap(); // truncates and rewrites: same inode
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(md.modified().unwrap()).unwrap();
    let after = std::fs::metadata(path).unwrap();
    assert_eq!((after.ino(), after.len()), (md.ino(), md.len()));
    assert_eq!(after.modified().unwrap(), md.modified().unwrap());
}

fn run_opt(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "opt",
        "-i",
        "bert/golden.safetensors",
        "--compare",
        "bert/golden.safetensors",
    ];
    args.extend_from_slice(extra);
    attnopt_in(dir, &args)
}

#[test]
fn a_changed_source_is_refused() {
    let tmp = scratch();
    let dir = tmp.path();
    assert!(attnopt_in(dir, &["optimize", "bert", "-o", "opt"])
        .status
        .success());
    let o = run_opt(dir, &["--verify-source"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Same size, inode and mtime, different weights.
    edit_in_place_keeping_metadata(&dir.join("bert/model.safetensors"), 0.5);
    refused(&run_opt(dir, &[]), "its contents changed");

    // Another checkpoint of the same size put in its place (a new inode).
    std::fs::copy(
        root().join("fixtures/bert/model.safetensors"),
        dir.join("other"),
    )
    .unwrap();
    std::fs::rename(dir.join("other"), dir.join("bert/model.safetensors")).unwrap();
    refused(&run_opt(dir, &[]), "it is another file");

    // The original bytes on a fresh optimisation, then only the modification time changed.
    assert!(
        attnopt_in(dir, &["optimize", "bert", "-o", "opt", "--force"])
            .status
            .success()
    );
    assert!(run_opt(dir, &[]).status.success());
    let f = std::fs::File::options()
        .write(true)
        .open(dir.join("bert/model.safetensors"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    refused(&run_opt(dir, &[]), "modification time changed");
}

#[test]
fn guessed_dimensions_need_consent() {
    let tmp = scratch();
    let dir = tmp.path();
    std::fs::remove_file(dir.join("bert/config.json")).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "bert",
            "-i",
            "bert/golden.safetensors",
            "--compare",
            "bert/golden.safetensors",
        ];
        args.extend_from_slice(extra);
        attnopt_in(dir, &args)
    };
    refused(&run(&[]), "--accept-guesses");
    refused(
        &attnopt_in(dir, &["optimize", "bert", "-o", "opt"]),
        "config.json is missing",
    );
    let o = run(&["--accept-guesses"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = attnopt_in(dir, &["inspect", "bert"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("num_attention_heads not given"));

    // config.json present but without the head count: the guess is named.
    let cfg = std::fs::read_to_string(root().join("fixtures/bert/config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    json.as_object_mut().unwrap().remove("num_attention_heads");
    std::fs::write(dir.join("bert/config.json"), json.to_string()).unwrap();
    refused(&run(&[]), "num_attention_heads not given in config.json");

    // A folder where config.json should be is an error, not a missing file.
    std::fs::remove_file(dir.join("bert/config.json")).unwrap();
    std::fs::create_dir(dir.join("bert/config.json")).unwrap();
    refused(&run(&["--accept-guesses"]), "is not a regular file");
}

#[test]
fn closed_stdout_is_a_quiet_exit() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_attnopt"))
        .args(["graph", "fixtures/llama"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the graph is printed: every write fails with EPIPE.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    assert!(o.status.success(), "exit {:?}: {e}", o.status.code());
}
